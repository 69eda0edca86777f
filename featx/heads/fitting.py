"""Fitting a head by name on features, and on a store (the ``featx train`` step)."""
from __future__ import annotations

import os
import time
from typing import NamedTuple

import numpy as np

from .. import store
from ..core.errors import FeatxError
from ..core.names import DEFAULT_LAYER
from .bundle import Bundle
from .catalog import make_head


class Fitted(NamedTuple):
    model: object  # the fitted head
    metrics: dict  # validation accuracy, chosen and swept hyper-parameters, training rows
    seconds: float  # wall time of the fit, sweep included


def align_labels(y: np.ndarray, classes: list[str], to: list[str], what: str) -> np.ndarray:
    """Re-index labels ``y`` (into ``classes``) into the class list ``to``."""
    index = {c: i for i, c in enumerate(to)}
    unknown = sorted({classes[k] for k in np.unique(y) if k >= 0} - set(index))
    if unknown:
        raise FeatxError(f"{what}: classes not in the training data: {', '.join(unknown)}")
    lookup = np.array([index[c] for c in classes] + [-1], dtype=np.int64)
    return lookup[y]  # -1 (unlabelled) maps to the appended -1


def fit(X, y, head: str, *, val_mask=None, val_fraction: float = 0.2, seed: int = 0,
        n_jobs: int | None = None) -> Fitted:
    """Fit a head by name on the labelled rows. With ``n_jobs`` its sweep runs as that
    many joblib tasks (see :mod:`featx.heads.sweeps`)."""
    labelled = y >= 0
    if not labelled.all():
        X, y = X[labelled], y[labelled]
        val_mask = None if val_mask is None else np.asarray(val_mask)[labelled]
    start = time.perf_counter()
    try:
        model = make_head(head, val_fraction=val_fraction, random_state=seed,
                          n_jobs=n_jobs).fit(X, y, val_mask=val_mask)
    except ValueError as exc:  # e.g. a single class
        raise FeatxError(f"{head}: cannot fit ({exc})") from None
    seconds = time.perf_counter() - start
    metrics = {
        "val_accuracy": model.val_accuracy_,
        "selected_on_validation": model.selected_on_validation_,
        "best_params": {k: _plain(v) for k, v in model.best_params_.items()},
        "val_scores": [{k: _plain(v) for k, v in s.items()} for s in model.val_scores_],
        "n_train": len(y),
    }
    return Fitted(model, metrics, seconds)


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def train(features: str | os.PathLike, head: str, *, val: str | os.PathLike | None = None,
          layer: str = DEFAULT_LAYER, val_fraction: float = 0.2, seed: int = 0,
          n_jobs: int | None = None) -> Bundle:
    """A bundle fitted on a store (and on a validation store, when given)."""
    X, y, _, classes = store.load(features, layer)
    provenance = store.info(features)["provenance"]
    val_mask = None
    if val is not None:
        Xv, yv, _, vclasses = store.load(val, layer)
        vprov = store.info(val)["provenance"]
        if (vprov["backbone"], vprov["precision"]) != (provenance["backbone"], provenance["precision"]):
            raise FeatxError(f"{val}: features come from another backbone or precision than {features}")
        yv = align_labels(yv, vclasses, classes, str(val))
        X, y = np.concatenate([X, Xv]), np.concatenate([y, yv])
        val_mask = np.r_[np.zeros(len(y) - len(yv), bool), np.ones(len(yv), bool)]
    try:
        model, metrics, seconds = fit(X, y, head, val_mask=val_mask, val_fraction=val_fraction, seed=seed,
                                      n_jobs=n_jobs)
    except FeatxError as exc:
        raise FeatxError(f"{features}: {exc}") from None
    metrics["fit_seconds"] = round(seconds, 3)
    return Bundle.fitted(model, head, provenance, classes, layer, metrics)
