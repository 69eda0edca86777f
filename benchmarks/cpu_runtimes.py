"""How to run the network on the CPU for a large job: eager bfloat16 autocast, the frozen
TorchScript graph featx uses (featx.extraction.frozen), or ``torch.compile``. For each: seconds to
build (first call included; torch.compile with an empty inductor cache unless
``--warm-cache``) and forward images/s on random batches, side by side in one process,
with the number of images above which it beats eager. Prints JSON.

    python benchmarks/cpu_runtimes.py [--batches 8] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from featx.backbones import load_backbone
from featx.extraction.frozen import frozen_embed


def rate(run, x, batches: int) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        run(x)
    return len(x) * batches / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--warm-cache", action="store_true",
                   help="let torch.compile reuse inductor's on-disk cache from earlier runs "
                        "(default: a cold, empty one)")
    args = p.parse_args()
    if not args.warm_cache:  # what a first run on a machine pays
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="featx-inductor-")
    bb = load_backbone(args.backbone)
    size = bb.preprocessing.image_size
    x = torch.randn(args.batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
    model = bb.model.to(memory_format=torch.channels_last)

    def autocast(f):
        def run(t):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return f(t)
        return run

    results = {}
    for name, build in [
        ("eager_bf16", lambda: autocast(model)),
        ("frozen_bf16", lambda: frozen_embed(bb, args.batch_size)),
        ("compile_bf16", lambda: autocast(torch.compile(model))),
    ]:
        start = time.perf_counter()
        run = build()
        run(x)  # the first call: compiling happens here
        built = time.perf_counter() - start
        results[name] = {"build_seconds": round(built, 1),
                         "images_per_second": round(rate(run, x, args.batches), 1)}
    eager = results["eager_bf16"]["images_per_second"]
    for r in results.values():
        gain = 1 / eager - 1 / r["images_per_second"]  # seconds saved per image
        r["speed_over_eager"] = round(r["images_per_second"] / eager, 2)
        r["pays_above_images"] = round(r["build_seconds"] / gain) if gain > 0 else None
    print(json.dumps({"backbone": args.backbone, "threads": torch.get_num_threads(),
                      "batch_size": args.batch_size, "runtimes": results}, indent=2))


if __name__ == "__main__":
    main()
