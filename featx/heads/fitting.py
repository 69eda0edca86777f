"""Fitting a head by name on features, and on a store (the ``featx train`` step)."""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.pipeline import Pipeline

from .. import store
from ..core.errors import FeatxError
from ..core.names import DEFAULT_LAYER
from ..store import Stacked
from .blocks import BlockScaler
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
        n_jobs: int | None = None, cv_folds: int = 5, cv_below: int = 20_000, blocks=None) -> Fitted:
    """Fit a head by name on the labelled rows, its hyper-parameter chosen as
    :class:`~featx.heads.base.SweptHead` says (``cv_folds``-fold cross-validation below
    ``cv_below`` rows without ``val_mask``). With ``n_jobs`` its sweep runs as that many
    joblib tasks (see :mod:`featx.heads.sweeps`). ``blocks`` (the widths of a recipe's
    blocks, two or more): the model is a scikit-learn ``Pipeline`` of a
    :class:`~featx.heads.BlockScaler` fitted on all the rows, then the head."""
    labelled = y >= 0
    if not labelled.all():
        X, y = X[labelled], y[labelled]
        val_mask = None if val_mask is None else np.asarray(val_mask)[labelled]
    start = time.perf_counter()
    model = make_head(head, val_fraction=val_fraction, random_state=seed, n_jobs=n_jobs,
                      cv_folds=cv_folds, cv_below=cv_below)
    whole = model
    if blocks is not None and len(blocks) > 1:
        whole = Pipeline([("blocks", BlockScaler(tuple(blocks))), ("head", model)])
    try:
        whole.fit(X, y, **{"head__val_mask" if whole is not model else "val_mask": val_mask})
    except ValueError as exc:  # e.g. a single class
        raise FeatxError(f"{head}: cannot fit ({exc})") from None
    seconds = time.perf_counter() - start
    metrics = {
        "val_accuracy": model.val_accuracy_,
        "selected_on_validation": model.selected_on_validation_,
        "best_params": {k: _plain(v) for k, v in model.best_params_.items()},
        "val_scores": [{k: _plain(v) for k, v in s.items()} for s in model.val_scores_],
        **selection(model),
        "n_train": len(y),
    }
    return Fitted(whole, metrics, seconds)


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def selection(model) -> dict:
    """How the head chose its hyper-parameter: ``selection`` ("5-fold cross-validation",
    "validation split" or "none") and, for cross-validation, the chosen setting's mean
    accuracy, its standard deviation and each fold's (``cv``)."""
    return {"selection": getattr(model, "selection_", "validation split" if model.selected_on_validation_
                                 else "none"),
            "cv": getattr(model, "cv_", None)}


def train(features: str | os.PathLike, head: str, *, val: str | os.PathLike | None = None,
          layer: str = DEFAULT_LAYER, val_fraction: float = 0.2, seed: int = 0,
          n_jobs: int | None = None, max_memory: int | None = None) -> Bundle:
    """A bundle fitted on a store (and on a validation store, when given).

    ``logreg``, ``ridge`` and ``knn`` stream the store's rows by blocks
    (:mod:`featx.heads.streaming`) when ``max_memory`` (bytes) is given or when the
    features are larger than the automatic cap (a quarter of the available memory); the
    other heads, and smaller stores, are fitted in memory."""
    from .streaming import STREAMING_HEADS
    from .streaming_blocks import default_max_memory

    lazy = store.load(features, layer, lazy=True)
    provenance = lazy.provenance
    stores = [Path(features).resolve()]
    X, y, classes, val_mask = lazy.X, lazy.y, lazy.classes, None
    if val is not None:
        lv = store.load(val, layer, lazy=True)
        vprov = lv.provenance
        if (vprov["backbone"], vprov["precision"]) != (provenance["backbone"], provenance["precision"]):
            raise FeatxError(f"{val}: features come from another backbone or precision than {features}")
        yv = align_labels(lv.y, lv.classes, classes, str(val))
        X, y = Stacked([X, lv.X]), np.concatenate([y, yv])
        val_mask = np.r_[np.zeros(len(y) - len(yv), bool), np.ones(len(yv), bool)]
        stores.append(Path(val).resolve())
    size = X.shape[0] * X.shape[1] * 4
    stream = head in STREAMING_HEADS and (max_memory is not None or size > default_max_memory())
    try:
        if stream:
            model, metrics, seconds = _fit_streaming(X, y, head, stores, max_memory=max_memory,
                                                     val_mask=val_mask, val_fraction=val_fraction, seed=seed)
        else:
            model, metrics, seconds = fit(X.take(np.arange(X.shape[0])), y, head, val_mask=val_mask,
                                          val_fraction=val_fraction, seed=seed, n_jobs=n_jobs,
                                          blocks=provenance.get("blocks"))  # a recipe's store
    except FeatxError as exc:
        raise FeatxError(f"{features}: {exc}") from None
    metrics["fit_seconds"] = round(seconds, 3)
    return Bundle.fitted(model, head, provenance, classes, layer, metrics)


def _fit_streaming(X, y, head: str, stores: list[Path], *, max_memory, val_mask, val_fraction: float,
                   seed: int) -> Fitted:
    """:func:`fit` for a store read by blocks; a streamed ``knn`` is saved detached from
    its training rows, with the stores they are in (``training_stores``)."""
    from .streaming import fit_streaming
    from .streaming_knn import StreamingCosineKNN

    start = time.perf_counter()
    try:
        streamed = fit_streaming(X, y, head, max_memory=max_memory, val_mask=val_mask,
                                 val_fraction=val_fraction, seed=seed)
    except ValueError as exc:
        raise FeatxError(f"{head}: cannot fit ({exc})") from None
    seconds = time.perf_counter() - start
    model = streamed.head_
    metrics = {
        "val_accuracy": model.val_accuracy_,
        "selected_on_validation": model.selected_on_validation_,
        "best_params": {k: _plain(v) for k, v in model.best_params_.items()},
        "val_scores": [{k: _plain(v) for k, v in s.items()} for s in model.val_scores_],
        **selection(model),
        "n_train": int(np.sum(y >= 0)),
        "streamed": {"max_memory": streamed.max_memory, "rows_per_block": streamed.rows_per_block_,
                     "rows_read": int(streamed.tally_.rows)},
    }
    if isinstance(model.model_, StreamingCosineKNN):
        model = copy.copy(model)
        model.model_ = model.model_.detached()
        metrics["training_stores"] = [str(p) for p in stores]
    return Fitted(model, metrics, seconds)


def attach_training_rows(b: Bundle) -> None:
    """Give a streamed ``knn`` bundle its training rows again, from the stores it names."""
    from .streaming_knn import StreamingCosineKNN

    inner = getattr(b.model, "model_", None)
    if isinstance(inner, StreamingCosineKNN) and "X_" not in inner.__dict__:
        parts = [store.load(p, b.layer, lazy=True).X for p in b.metrics.get("training_stores", [])]
        if not parts:
            raise FeatxError("this knn model was trained out of core but does not say on which stores")
        inner.attach(parts[0] if len(parts) == 1 else Stacked(parts))
