"""How far each reduced precision's features are from fp32's, and how fast each runs.

For each precision: mean cosine similarity of the same images' features with fp32's,
the linear probe's test accuracy (featx's logreg head, C chosen on a validation share
of train) on hymenoptera and a seeded CIFAR-10 training subset (scored on the whole test
split), and the forward pass's images/s (random batches, as benchmarks/extract_throughput.py's
bound). ``bf16-frozen`` is
bfloat16 through the frozen TorchScript graph that featx ran on the CPU before OpenVINO
(featx.extraction.frozen), forced here on these small sets. Prints JSON.

    python benchmarks/precision_fidelity.py [--cifar-per-class 500] [--precisions bf16,bf16-frozen,fp16]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from extract_throughput import bound, forced

from featx import store
from featx.backbones import load_backbone
from featx.core.devices import resolve_device
from featx.data.sources import SubsetSource, open_source
from featx.extraction import extract, runtimes
from featx.heads import LogRegHead
from featx.heads.fitting import align_labels, fit

# the shared datasets beside the project, or FEATX_DATASETS (on a machine without them)
DATASETS = Path(os.environ.get("FEATX_DATASETS",
                               Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))


def _splits(name: str, per_class: int):
    if name == "hymenoptera":
        tar = DATASETS / "hymenoptera.tar"
        return open_source(f"{tar}:hymenoptera/train"), open_source(f"{tar}:hymenoptera/val")
    train = SubsetSource(open_source(f"{DATASETS / 'cifar10-train.tar'}:cifar10/train"), per_class, seed=0)
    return train, open_source(f"{DATASETS / 'cifar10-test.tar'}:cifar10/test")  # all 10,000: 0.01 points each


def _runtime(prec: str) -> str:
    return runtimes.FROZEN if prec.endswith("-frozen") else runtimes.EAGER


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--precisions", default="bf16,bf16-frozen,fp16",
                   help="compared with fp32, comma-separated")
    p.add_argument("--cifar-per-class", type=int, default=500,
                   help="training images per class (test: all 10,000)")
    p.add_argument("--cache", default="cache")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    bb = load_backbone(args.backbone)
    dev = resolve_device(args.device)
    out = {"backbone": args.backbone, "device": dev.type, "images_per_second": {}, "datasets": {}}
    for prec in ["fp32", *args.precisions.split(",")]:
        out["images_per_second"][prec] = round(bound(load_backbone(args.backbone), dev,
                                                     prec.removesuffix("-frozen"), 384, _runtime(prec)), 1)
    for name in ("hymenoptera", "cifar10"):
        train, test = _splits(name, args.cifar_per_class)
        result = {}
        for prec in ["fp32", *args.precisions.split(",")]:
            with forced(_runtime(prec)):  # each row runs as it says
                stores = [extract(s, bb, args.cache, precision=prec.removesuffix("-frozen"),
                                  device=args.device).path for s in (train, test)]
            (Xtr, ytr, ktr, classes), (Xte, yte, kte, tclasses) = (store.load(s) for s in stores)
            yte = align_labels(yte, tclasses, classes, test.spec)
            model, vm, _ = fit(Xtr, ytr, "logreg")
            result[prec] = {"X": np.concatenate([Xtr, Xte]), "keys": np.concatenate([ktr, kte]),
                            "accuracy": float(np.mean(model.predict(Xte) == yte)),
                            "C": vm["best_params"]["C"], "train": (Xtr, ytr), "test": (Xte, yte)}
        ref = result["fp32"]
        row = {"images": len(ref["keys"]), "fp32_accuracy": ref["accuracy"], "fp32_C": ref["C"]}
        for prec in args.precisions.split(","):
            r = result[prec]
            assert np.array_equal(r["keys"], ref["keys"])
            a, b = ref["X"].astype(np.float64), r["X"].astype(np.float64)
            cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            # the same probe at fp32's C: the features' own effect, without the noise of
            # choosing C again on a small validation split
            fixed = LogRegHead()._build(ref["C"]).fit(*r["train"])
            at_ref_c = float(np.mean(fixed.predict(r["test"][0]) == r["test"][1]))
            row[prec] = {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6),
                         "accuracy": r["accuracy"], "C": r["C"],
                         "accuracy_minus_fp32_points": round(100 * (r["accuracy"] - ref["accuracy"]), 2),
                         "accuracy_at_fp32_C_minus_fp32_points": round(100 * (at_ref_c - ref["accuracy"]), 2)}
        out["datasets"][name] = row
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
