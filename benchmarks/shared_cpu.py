"""featx beside another busy process: is the slowdown the fair share, or many times worse?

Two jobs, each a whole ``featx`` process as a user runs it, on the demo's 600 training
textures (96 px):

- ``train``: ``featx train --head logreg`` on their lite0 features (the store is built
  once, untimed);
- ``extract``: ``featx extract`` of the same images with lite0, into an empty cache.

Each job runs alone and beside a competitor: another process multiplying matrices with
torch at its default settings (two threads here, as a second job a user starts would).
The slowdown is the median time beside it over the median time alone (three repeats,
interleaved); the fair share of 2 cores with a 2-thread neighbour is about 2x.
``--before REV`` runs the same jobs with featx as it was at a git revision (its
``featx/`` taken with ``git archive``, the same Python environment), side by side.

    python benchmarks/shared_cpu.py [--before aefe81d] [--repeats 3]

Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPETITOR = "import torch\nx = torch.randn(2048, 2048)\nwhile True:\n    x @ x\n"
# variables the jobs must not inherit from whoever runs the benchmark
THREAD_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT")


def clean_env(pythonpath: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = str(pythonpath)
    return env


def featx_tree(rev: str | None, dest: Path) -> Path:
    """The folder to put on PYTHONPATH: this checkout, or ``featx/`` at ``rev``."""
    if rev is None:
        return ROOT
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "featx"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def jobs(work: Path, store: str) -> dict:
    featx = [sys.executable, "-m", "featx"]
    return {
        "train": lambda run: featx + ["train", "--features", store, "--head", "logreg", "--cache",
                                      str(work / "cache"), "--out", str(work / f"model-{run}.joblib")],
        "extract": lambda run: featx + ["extract", "--data", str(work / "textures" / "train"),
                                        "--backbone", "efficientnet_lite0", "--image-size", "96",
                                        "--cache", str(work / f"cache-{run}")],
    }


def setup(work: Path) -> str:
    """The demo textures and their lite0 store (what ``train`` reads); returns the store's path."""
    from featx import extract
    from featx.data.textures import generate

    generate(work / "textures", size=96)
    return str(extract(str(work / "textures" / "train"), "efficientnet_lite0", work / "cache",
                       image_size=96).path)


def measure(work: Path, trees: dict[str, Path], repeats: int) -> dict:
    times: dict = {}
    commands = jobs(work, setup(work))
    run = 0
    for _ in range(repeats):
        for shared in (False, True):
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=clean_env(ROOT)) \
                if shared else None
            try:
                time.sleep(1.0 if shared else 0)  # the competitor at full speed first
                for job, cmd in commands.items():
                    for version, tree in trees.items():
                        run += 1
                        key = (job, version, "shared" if shared else "alone")
                        times.setdefault(key, []).append(timed(cmd(run), clean_env(tree)))
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--before", metavar="REV", help="also run featx as it was at this git revision")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="featx-shared-") as tmp:
        work = Path(tmp)
        trees = {"now": ROOT}
        if args.before:
            trees[f"before ({args.before})"] = featx_tree(args.before, work / "before")
        times = measure(work, trees, args.repeats)
    out = {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
           "competitor": "torch matmul 2048 x 2048, default threads", "jobs": {}}
    for (job, version, where), t in sorted(times.items()):
        out["jobs"].setdefault(job, {}).setdefault(version, {})[where] = {
            "median_seconds": round(statistics.median(t), 2), "seconds": [round(x, 2) for x in t]}
    for versions in out["jobs"].values():
        for v in versions.values():
            v["slowdown"] = round(v["shared"]["median_seconds"] / v["alone"]["median_seconds"], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
