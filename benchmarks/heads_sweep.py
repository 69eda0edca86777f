"""The logistic-regression sweep: featx's ``logreg`` head against a naive loop of fresh
scikit-learn ``LogisticRegression`` fits over the same C grid, the same validation
split and the same selection rule, in one process, on CIFAR-10 features. Both choose
C on the validation split, refit on all training rows and are scored once on the test
split. Then featx's cross-validated sweep (5 folds, what featx does below 20,000 rows)
on the same rows, timed against its single sweep: the folds solved together on one
factorisation (featx.heads.logreg_folds, where the folds allow it) and, as the
baseline, one by one (the single sweep's way, fold after fold). Prints JSON.

    python benchmarks/heads_sweep.py [--rows N] [--cache DIR] [--no-naive]

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
from unittest import mock

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.preprocessing import StandardScaler

from featx import store
from featx.core.devices import resolve_device
from featx.extraction import extract
from featx.heads import C_GRID, make_head, validation_split
from featx.heads.base import SweptHead
from featx.heads.base import score as _score
from featx.heads.fitting import align_labels
from featx.heads.logreg_folds import batchable

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
    p.add_argument("--no-naive", action="store_true",
                   help="skip scikit-learn's loop (an hour at 50,000 rows)")
    args = p.parse_args()
    paths = [extract(f"{DATASETS / f'cifar10-{s}.tar'}:cifar10/{s}", "efficientnet_lite0", args.cache,
                     batch_size=64).path  # the stores recipe_search.py makes
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
        t_naive, c_naive, predict = None, None, None
        if not args.no_naive:
            start = time.perf_counter()
            c_naive, predict = naive(X, y, args.seed)
            t_naive = time.perf_counter() - start
        cv, t_cv = _cv(X, y, args, batched=True)
        print(f"featx cross-validated sweep: {t_cv:.1f} s", file=sys.stderr, flush=True)
        alone, t_alone = _cv(X, y, args, batched=False)
    acc_featx = float(np.mean(head.predict(Xte) == yte))
    out = {
        "featx_device": resolve_device(args.device).type, "cores": len(os.sched_getaffinity(0)),
        "cpu": _cpu(), "train_rows": len(y), "dim": X.shape[1], "test_rows": len(yte), "grid": len(C_GRID),
        "featx_seconds": round(t_featx, 1), "featx_C": head.best_params_["C"],
        "featx_test_accuracy": acc_featx,
        "featx_cv_seconds": round(t_cv, 1), "cv_over_single_sweep": round(t_cv / t_featx, 2),
        "cv_folds_batched": batchable(X, _folds(y, args.seed)),
        "featx_cv_C": cv.best_params_["C"], "featx_cv_accuracy": cv.val_accuracy_,
        "featx_cv_accuracy_std": cv.cv_["accuracy_std"],
        "featx_cv_test_accuracy": float(np.mean(cv.predict(Xte) == yte)),
        "one_by_one_cv_seconds": round(t_alone, 1),
        "one_by_one_cv_over_single_sweep": round(t_alone / t_featx, 2),
        "one_by_one_cv_C": alone.best_params_["C"], "one_by_one_cv_accuracy": alone.val_accuracy_,
    }
    if predict is not None:
        acc_naive = float(np.mean(predict(Xte) == yte))
        out.update({"naive_seconds": round(t_naive, 1), "speedup": round(t_naive / t_featx, 2),
                    "naive_C": c_naive, "naive_test_accuracy": acc_naive,
                    "accuracy_difference_points": round(100 * (acc_featx - acc_naive), 2)})
    print(json.dumps(out, indent=2))


def _cv(X, y, args, *, batched: bool):
    """featx's 5-fold cross-validated sweep and its seconds; ``batched=False``: the folds one
    by one (SweptHead's own fold loop, what LogRegHead did before it batched them)."""
    head = make_head("logreg", random_state=args.seed, device=args.device, cv_below=len(y) + 1)
    start = time.perf_counter()
    if batched:
        head.fit(X, y)
    else:
        with mock.patch.object(type(head), "_sweep_folds", SweptHead._sweep_folds):
            head.fit(X, y)
    return head, time.perf_counter() - start


def _folds(y, seed: int):
    return list(StratifiedKFold(5, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return ""


if __name__ == "__main__":
    main()
