"""Out-of-core heads against in-memory ones on CIFAR-10's 50,000 training features.

Both fit the same head by the same protocol (C, alpha or k chosen on the same seeded
validation split of the training rows, then refit on all of them) and are scored once on
the 10,000 test images. The streaming fit reads the store's features by blocks under a
memory cap below their size (``--max-memory``, default a quarter of it); the in-memory fit
holds them whole. Prints JSON: each accuracy with its 95 % Wilson interval, their
difference, the share of test predictions that agree, the chosen hyper-parameter, the
seconds of each fit and the rows the streaming fit read.

    python benchmarks/outofcore_heads.py [--heads logreg ridge knn] [--image-size 112]

Features: ``efficientnet_lite0`` at ``--image-size`` (112 by default: four times cheaper
to extract than 224 on a CPU; 1,280 floats per image either way).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import featx
from featx.heads import make_head
from featx.heads.fitting import align_labels
from featx.heads.streaming import fit_streaming, predict_streaming
from featx.heads.streaming_blocks import Tally

DATASETS = Path(os.environ.get("FEATX_DATASETS",
                               Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))


def wilson(correct: int, n: int, z: float = 1.96) -> list[float]:
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(float(centre - half), 4), round(float(centre + half), 4)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--heads", nargs="+", default=["logreg", "ridge", "knn"])
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--max-memory", type=int, default=0, help="bytes (default: a quarter of the features)")
    p.add_argument("--cache", default="cache")
    args = p.parse_args()
    paths = [featx.extract(f"{DATASETS / f'cifar10-{s}.tar'}:cifar10/{s}", "efficientnet_lite0", args.cache,
                           image_size=args.image_size).path for s in ("train", "test")]
    train, test = featx.load(paths[0]), featx.load(paths[1])
    lazy = featx.load(paths[0], lazy=True)
    y_test = align_labels(test.y, test.classes, train.classes, "test")
    cap = args.max_memory or train.X.nbytes // 4
    out = {"features_bytes": int(train.X.nbytes), "max_memory": cap, "train_rows": len(train.y),
           "test_rows": len(y_test), "heads": {}}
    for head in args.heads:
        t = time.perf_counter()
        memory = make_head(head).fit(train.X, train.y)
        t_mem = time.perf_counter() - t
        tally = Tally()
        t = time.perf_counter()
        streamed = fit_streaming(lazy.X, lazy.y, head, max_memory=cap)
        t_stream = time.perf_counter() - t
        a = memory.predict(test.X)
        b = predict_streaming(streamed, featx.load(paths[1], lazy=True).X, max_memory=cap, tally=tally)
        ca, cb = int(np.sum(a == y_test)), int(np.sum(b == y_test))
        out["heads"][head] = {
            "in_memory": {"accuracy": ca / len(y_test), "ci95": wilson(ca, len(y_test)),
                          "chosen": memory.best_params_, "fit_seconds": round(t_mem, 1)},
            "streaming": {"accuracy": cb / len(y_test), "ci95": wilson(cb, len(y_test)),
                          "chosen": streamed.best_params_, "fit_seconds": round(t_stream, 1)},
            "accuracy_difference_points": round(100 * (cb - ca) / len(y_test), 3),
            "predictions_agree": float(np.mean(a == b)),
        }
        print(json.dumps({head: out["heads"][head]}), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
