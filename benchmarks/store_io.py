"""Write and read throughput of the embedding store (MB/s of features), against numpy's
own ``np.save`` / ``np.load`` of the same array on the same disk, in one process.

The store's write includes what featx does for every store: the per-dataset SHA-256,
the keys and stamps, fsync and the atomic rename. Prints JSON.

    python benchmarks/store_io.py [--rows 100000] [--dim 1280] [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from featx import store
from featx.store import DEFAULT_LAYER, Rows


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--dir", default=None, help="where to write (default: the system's temporary folder)")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    keys = np.array([f"class{i % 10}/{i:07d}.jpg" for i in range(args.rows)], dtype=str)
    rows = Rows(keys, np.array(["1:1"] * args.rows, dtype=str), np.array(["0" * 64] * args.rows, dtype=str),
                {DEFAULT_LAYER: X}, *(np.array([], dtype=str),) * 3)
    labels = np.arange(args.rows) % 10
    mb = X.nbytes / 1e6
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="featx-io-") as tmp:
        tmp = Path(tmp)
        path = tmp / "bench.h5"

        def np_save():
            with open(tmp / "raw.npy", "wb") as fh:
                np.save(fh, X)
                fh.flush()
                os.fsync(fh.fileno())

        t_np_write = _timed(np_save)
        t_np_read = _timed(lambda: np.load(tmp / "raw.npy"))
        t_write = _timed(lambda: store.write_store(path, rows, labels, [f"class{i}" for i in range(10)],
                                                   {"backbone": {}, "precision": "fp32"}, ""))
        loaded = {}
        t_read = _timed(lambda: loaded.update(X=store.load(path)[0]))
        assert np.array_equal(loaded["X"], X)
        t_verify = _timed(lambda: store.verify(path))
    print(json.dumps({
        "rows": args.rows, "dim": args.dim, "feature_mb": round(mb, 1),
        "store_write_mb_per_s": round(mb / t_write, 1), "store_read_mb_per_s": round(mb / t_read, 1),
        "store_verify_mb_per_s": round(mb / t_verify, 1),
        "numpy_write_mb_per_s": round(mb / t_np_write, 1), "numpy_read_mb_per_s": round(mb / t_np_read, 1),
        "write_over_numpy": round(t_np_write / t_write, 3), "read_over_numpy": round(t_np_read / t_read, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
