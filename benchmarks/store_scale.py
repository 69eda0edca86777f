"""Store updates at scale: what a rerun costs when nothing, 10, 1,000 images change.

For each size N (default 10,000, 100,000 and 1,000,000), the script writes a folder of
N tiny PNGs (100 class folders), then runs ``featx extract`` with the ``pixels``
backbone at 8 x 8 (192 floats per image: the network costs nothing, the store's
bookkeeping is what is measured), each run in a fresh process as a user would:

- ``build``: the whole store from nothing;
- ``unchanged``: a rerun with nothing changed;
- ``add10`` / ``add1000``: reruns after adding 10, then 1,000 images;
- ``remove10``: a rerun after removing 10 images.

Each run reports its wall time, the images it embedded, the peak resident memory of
its main process (``ru_maxrss``) and the bytes of the store on disk. Derived figures:
the time of the +10 update beyond the unchanged rerun, at every N, and the main
process's peak memory per listed image between the two largest N.

    python benchmarks/store_scale.py --root /tmp/store_scale [--sizes 10000 100000 1000000]

Prints JSON (and writes it to ``--out``).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = """
import json, resource, sys, time
from featx import extract
t = time.perf_counter()
r = extract(sys.argv[1], "pixels", sys.argv[2], image_size=8, batch_size=512)
s = time.perf_counter() - t
print(json.dumps({"seconds": s, "embedded": r.embedded, "rows": r.rows,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def pngs(count: int = 64) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def write_images(data: Path, start: int, count: int, blobs: list[bytes]) -> None:
    for i in range(start, start + count):
        folder = data / f"c{i % 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:08d}.png").write_bytes(blobs[i % len(blobs)])


def run(data: Path, cache: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(data), str(cache)], capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["store_bytes"] = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    return result


def one_size(root: Path, n: int, blobs: list[bytes]) -> dict:
    data, cache = root / f"n{n}" / "data", root / f"n{n}" / "cache"
    shutil.rmtree(root / f"n{n}", ignore_errors=True)
    t = time.perf_counter()
    write_images(data, 0, n, blobs)
    runs = {"generate_seconds": time.perf_counter() - t, "build": run(data, cache)}
    runs["unchanged"] = run(data, cache)
    write_images(data, n, 10, blobs)
    runs["add10"] = run(data, cache)
    write_images(data, n + 10, 1000, blobs)
    runs["add1000"] = run(data, cache)
    for i in range(10):
        (data / f"c{i % 100:02d}" / f"{i:08d}.png").unlink()
    runs["remove10"] = run(data, cache)
    runs["build"]["images_per_second"] = n / runs["build"]["seconds"]
    runs["add10_beyond_unchanged_seconds"] = runs["add10"]["seconds"] - runs["unchanged"]["seconds"]
    shutil.rmtree(root / f"n{n}", ignore_errors=True)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="scratch folder (needs ~4 KB per image)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    blobs = pngs()
    results = {"machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
               "sizes": {}}
    for n in args.sizes:
        results["sizes"][str(n)] = one_size(args.root, n, blobs)
        print(json.dumps({n: results["sizes"][str(n)]}), file=sys.stderr, flush=True)
    sizes = sorted(args.sizes)
    s = results["sizes"]
    if len(sizes) > 1:
        lo, hi = sizes[-2], sizes[-1]
        results["peak_bytes_per_image"] = {
            run: (s[str(hi)][run]["peak_mb"] - s[str(lo)][run]["peak_mb"]) * 2**20 / (hi - lo)
            for run in ("build", "unchanged", "add10", "add1000", "remove10")}
        results["add10_beyond_unchanged_ratio_largest_to_smallest"] = (
            s[str(hi)]["add10_beyond_unchanged_seconds"] / s[str(sizes[0])]["add10_beyond_unchanged_seconds"])
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
