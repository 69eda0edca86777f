"""Linear probe on hymenoptera: featx's stores for train and val, then a standardised
logistic regression with C chosen by 5-fold cross-validation on train only, scored once
on val. Prints JSON. Reference (shared/datasets/README.md): 94.1 % with efficientnet_lite0.

    python benchmarks/hymenoptera_probe.py [--backbone efficientnet_lite0] [--cache DIR]
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from featx.extraction import extract
from featx.store import load

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--cache", default="cache")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--tar", default=str(DATASETS / "hymenoptera.tar"))
    args = p.parse_args()

    runs = {}
    for split in ("train", "val"):
        r = extract(f"{args.tar}:hymenoptera/{split}", args.backbone, args.cache, precision=args.precision)
        runs[split] = r
    Xtr, ytr, _, classes = load(runs["train"].path)
    Xva, yva, _, classes_va = load(runs["val"].path)
    assert classes == classes_va, (classes, classes_va)
    warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's notices about future defaults
    start = time.perf_counter()
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), cv=5, max_iter=5000, scoring="accuracy"),
    ).fit(Xtr, ytr)
    fit_seconds = time.perf_counter() - start
    print(json.dumps({
        "backbone": args.backbone,
        "train_images": int(len(ytr)),
        "val_images": int(len(yva)),
        "feature_dim": int(Xtr.shape[1]),
        "train_skipped": runs["train"].skipped,
        "precision": runs["train"].precision,
        "chosen_C": float(clf[-1].C_[0]),
        "val_accuracy": float((clf.predict(Xva) == yva).mean()),
        "fit_seconds": round(fit_seconds, 2),
        # Images embedded by this run and their rate (0 and null when the stores were cached).
        "extract": {s: {"embedded": r.embedded,
                        "images_per_second": round(r.images_per_second, 1) if r.embedded else None}
                    for s, r in runs.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
