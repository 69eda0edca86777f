"""Peak memory of an extraction against its size: CIFAR-10 training images, a seeded
subset of each size, each extracted by a fresh process into an empty cache. Reports the
peak resident set of the main process and of its largest decoding worker. Prints JSON.

    python benchmarks/extract_memory.py [--sizes 10000,50000] [--backbone efficientnet_lite0]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DATASETS = Path(os.environ.get("FEATX_DATASETS",
                               Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))

CHILD = """
import json, resource, sys, time
from featx.data.sources import SubsetSource, open_source
from featx.extraction import extract
src = open_source(sys.argv[1])
if int(sys.argv[2]) < len(src.items):
    src = SubsetSource(src, int(sys.argv[2]) // len(src.classes), seed=0)
start = time.perf_counter()
r = extract(src, sys.argv[3], sys.argv[4])
seconds = round(time.perf_counter() - start, 1)
peak = {who: round(resource.getrusage(which).ru_maxrss / 1024, 1)
        for who, which in (("main", resource.RUSAGE_SELF), ("worker", resource.RUSAGE_CHILDREN))}
print(json.dumps({"images": r.rows, "seconds": seconds, "precision": r.precision,
                  "main_peak_rss_mb": peak["main"], "worker_peak_rss_mb": peak["worker"]}))
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10000,50000")
    p.add_argument("--backbone", default="efficientnet_lite0")
    args = p.parse_args()
    data = f"{DATASETS / 'cifar10-train.tar'}:cifar10/train"
    runs = []
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="featx-mem-") as cache:
            out = subprocess.run([sys.executable, "-c", CHILD, data, str(n), args.backbone, cache],
                                 check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
    first, last = runs[0], runs[-1]
    print(json.dumps({
        "backbone": args.backbone, "runs": runs,
        "main_peak_ratio": round(last["main_peak_rss_mb"] / first["main_peak_rss_mb"], 3),
        "worker_peak_ratio": round(last["worker_peak_rss_mb"] / first["worker_peak_rss_mb"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
