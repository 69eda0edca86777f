"""The logistic-regression sweep: featx's ``logreg`` head against a naive loop of fresh
scikit-learn ``LogisticRegression`` fits over the same C grid, the same validation
split and the same selection rule, in one process, on CIFAR-10 features. Both choose
C on the validation split, refit on all training rows and are scored once on the test
split. Then featx's cross-validated sweep (5 folds, what featx does below 20,000 rows)
on the same rows, timed against its single sweep. Prints JSON.

    python benchmarks/heads_sweep.py [--rows N] [--cache DIR]

``--rows`` takes a stratified, seeded subset of the 50,000 training rows (0: all).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from featx import store
from featx.core.devices import resolve_device
from featx.extraction import extract
from featx.heads import C_GRID, make_head, validation_split
from featx.heads.base import score as _score
from featx.heads.fitting import align_labels

# the shared datasets beside the project, or FEATX_DATASETS (on a machine without them)
DATASETS = Path(os.environ.get("FEATX_DATASETS",
                               Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))


def naive(X, y, seed: int):
    """A fresh fit per C (no warm start, no row-span basis), chosen like featx chooses."""
    tr, va = validation_split(y, 0.2, seed)
    scaler = StandardScaler().fit(X[tr])
    Xt, Xv = scaler.transform(X[tr]), scaler.transform(X[va])
    scores = [_score(LogisticRegression(C=c, max_iter=1000).fit(Xt, y[tr]), Xv, y[va]) for c in C_GRID]
    best = max(range(len(scores)), key=lambda i: (scores[i][0], -scores[i][1]))
    scaler = StandardScaler().fit(X)
    model = LogisticRegression(C=C_GRID[best], max_iter=1000).fit(scaler.transform(X), y)
    return float(C_GRID[best]), lambda Z: model.predict(scaler.transform(Z))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=0,
                   help="training rows, a stratified seeded subset (0: all 50,000)")
    p.add_argument("--cache", default="cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="where featx's sweep runs: auto, cpu or cuda")
    args = p.parse_args()
    paths = [extract(f"{DATASETS / f'cifar10-{s}.tar'}:cifar10/{s}", "efficientnet_lite0", args.cache).path
             for s in ("train", "test")]
    print(f"features ready: {[str(p) for p in paths]}", file=sys.stderr, flush=True)
    (X, y, _, classes), (Xte, yte, _, tclasses) = (store.load(path) for path in paths)
    yte = align_labels(yte, tclasses, classes, "cifar10 test")
    if args.rows and args.rows < len(y):
        keep, _ = train_test_split(np.arange(len(y)), train_size=args.rows, stratify=y,
                                   random_state=args.seed)
        X, y = X[np.sort(keep)], y[np.sort(keep)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        head = make_head("logreg", random_state=args.seed, device=args.device, cv_below=0).fit(X, y)
        t_featx = time.perf_counter() - start
        print(f"featx sweep: {t_featx:.1f} s", file=sys.stderr, flush=True)
        start = time.perf_counter()
        c_naive, predict = naive(X, y, args.seed)
        t_naive = time.perf_counter() - start
        start = time.perf_counter()
        cv = make_head("logreg", random_state=args.seed, device=args.device, cv_below=len(y) + 1).fit(X, y)
        t_cv = time.perf_counter() - start
    acc_featx = float(np.mean(head.predict(Xte) == yte))
    acc_naive = float(np.mean(predict(Xte) == yte))
    print(json.dumps({
        "featx_device": resolve_device(args.device).type, "cores": len(os.sched_getaffinity(0)),
        "train_rows": len(y), "dim": X.shape[1], "test_rows": len(yte), "grid": len(C_GRID),
        "featx_seconds": round(t_featx, 1), "naive_seconds": round(t_naive, 1),
        "speedup": round(t_naive / t_featx, 2),
        "featx_C": head.best_params_["C"], "naive_C": c_naive,
        "featx_test_accuracy": acc_featx, "naive_test_accuracy": acc_naive,
        "accuracy_difference_points": round(100 * (acc_featx - acc_naive), 2),
        "featx_cv_seconds": round(t_cv, 1), "cv_over_single_sweep": round(t_cv / t_featx, 2),
        "featx_cv_C": cv.best_params_["C"], "featx_cv_accuracy": cv.val_accuracy_,
        "featx_cv_accuracy_std": cv.cv_["accuracy_std"],
        "featx_cv_test_accuracy": float(np.mean(cv.predict(Xte) == yte)),
    }, indent=2))


if __name__ == "__main__":
    main()
