"""``featx cache export``: a store's rows for other tools, written a block at a time.

- ``npy``: ``<layer>.npy`` (float32, one row per image), ``labels.npy`` (int64 into
  ``classes``), ``keys.npy`` (str) and ``classes.json``, rows in the store's order;
- ``parquet``: ``<layer>.parquet`` with columns ``key``, ``label`` (the class name, null
  when unlabelled) and ``<layer>`` (a fixed-size list of float32).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..core.errors import ParameterError
from ..core.files import atomic_path
from ..core.names import DEFAULT_LAYER
from .hdf5 import iter_batches, load

BLOCK = 65536  # rows per block read and written


def export(path: str | os.PathLike, out: str | os.PathLike, fmt: str,
           layer: str = DEFAULT_LAYER) -> list[Path]:
    """Write the store's rows of ``layer`` into the folder ``out``; returns the files."""
    if fmt not in ("npy", "parquet"):
        raise ParameterError("format", fmt, "choose npy or parquet")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return _npy(path, out, layer) if fmt == "npy" else [_parquet(path, out, layer)]


def _npy(path, out: Path, layer: str) -> list[Path]:
    lazy = load(path, layer, lazy=True)
    target = out / f"{layer}.npy"
    with atomic_path(target) as tmp:
        X = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=lazy.X.shape)
        for start in range(0, lazy.X.shape[0], BLOCK):
            X[start:start + BLOCK] = lazy.X[start:start + BLOCK]
        X.flush()
        del X
    files = [target]
    for name, arr in (("labels", np.asarray(lazy.y, np.int64)), ("keys", np.asarray(lazy.keys, str))):
        with atomic_path(out / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr)
        files.append(out / f"{name}.npy")
    with atomic_path(out / "classes.json") as tmp:
        tmp.write_text(json.dumps(lazy.classes))
    return files + [out / "classes.json"]


def _parquet(path, out: Path, layer: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = out / f"{layer}.parquet"
    with atomic_path(target) as tmp:
        writer = None
        try:
            for batch in iter_batches(path, BLOCK, layer):
                names = np.array(batch.classes + [None], dtype=object)
                X = np.ascontiguousarray(batch.X, np.float32)
                vectors = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
                table = pa.table({"key": pa.array(batch.keys.tolist(), pa.string()),
                                  "label": pa.array(names[batch.y].tolist(), pa.string()), layer: vectors})
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
    return target
