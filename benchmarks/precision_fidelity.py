"""How far each reduced precision's features are from fp32's: mean cosine similarity of
the same images' features, and the linear probe's test accuracy (featx's logreg head,
C chosen on a validation share of train) with each precision, on hymenoptera and a
seeded CIFAR-10 subset. Prints JSON.

    python benchmarks/precision_fidelity.py [--cifar-per-class 100] [--precisions bf16]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from featx import models, store
from featx.backbones import load_backbone
from featx.extract import extract
from featx.sources import SubsetSource, open_source

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _splits(name: str, per_class: int):
    if name == "hymenoptera":
        tar = DATASETS / "hymenoptera.tar"
        return open_source(f"{tar}:hymenoptera/train"), open_source(f"{tar}:hymenoptera/val")
    train = SubsetSource(open_source(f"{DATASETS / 'cifar10-train.tar'}:cifar10/train"), per_class, seed=0)
    test = SubsetSource(open_source(f"{DATASETS / 'cifar10-test.tar'}:cifar10/test"), max(1, per_class // 2), seed=0)
    return train, test


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--precisions", default="bf16", help="compared with fp32, comma-separated")
    p.add_argument("--cifar-per-class", type=int, default=100, help="training images per class (test: half)")
    p.add_argument("--cache", default="cache")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    bb = load_backbone(args.backbone)
    out = {"backbone": args.backbone, "datasets": {}}
    for name in ("hymenoptera", "cifar10"):
        train, test = _splits(name, args.cifar_per_class)
        result = {}
        for prec in ["fp32", *args.precisions.split(",")]:
            stores = [extract(s, bb, args.cache, precision=prec, device=args.device).path for s in (train, test)]
            (Xtr, ytr, ktr, classes), (Xte, yte, kte, tclasses) = (store.load(s) for s in stores)
            yte = models.align_labels(yte, tclasses, classes, test.spec)
            model, vm, _ = models.fit(Xtr, ytr, "logreg")
            result[prec] = {"X": np.concatenate([Xtr, Xte]), "keys": np.concatenate([ktr, kte]),
                            "accuracy": float(np.mean(model.predict(Xte) == yte)), "C": vm["best_params"]["C"]}
        ref = result["fp32"]
        row = {"images": len(ref["keys"]), "fp32_accuracy": ref["accuracy"], "fp32_C": ref["C"]}
        for prec in args.precisions.split(","):
            r = result[prec]
            assert np.array_equal(r["keys"], ref["keys"])
            a, b = ref["X"].astype(np.float64), r["X"].astype(np.float64)
            cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            row[prec] = {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6),
                         "accuracy": r["accuracy"], "C": r["C"],
                         "accuracy_minus_fp32_points": round(100 * (r["accuracy"] - ref["accuracy"]), 2)}
        out["datasets"][name] = row
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
