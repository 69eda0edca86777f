"""Heads fitted on feature matrices larger than memory: ``logreg``, ``ridge`` and ``knn``,
their rows streamed by blocks under a memory cap.

``fit_streaming(X, y, head, max_memory=...)`` follows the protocol of the in-memory heads
(:class:`~featx.heads.SweptHead`): the same validation split (``val_mask``, or a stratified
``val_fraction`` drawn with ``seed``), the same candidates and choice, the same refit on
all labelled rows, and it reaches the same models (the same objective, solved in float64
where the in-memory fit sums in float32). ``X`` is any array-like with ``shape`` (n, d),
a ``dtype`` and ``X[a:b]`` giving an in-memory array: an ``h5py.Dataset``, a
``np.memmap``, a lazy store reader. It is only ever sliced; subsets of rows are masks.
``y`` is in memory: integer classes, negative for unlabelled rows (left out).

What it costs, in passes over ``X``:

- ``ridge``: 3 (sums, then two over the validation rows), whatever the size;
- ``logreg``: 1 for the sums, then one per objective evaluation of L-BFGS (tens per C,
  fewer with the warm starts along the C path) and one per C to score the validation
  rows, then the same again for the final fit on all rows;
- ``knn``: for each chunk of validation (or query) rows, one pass over the training rows.

The memory cap (:mod:`featx.heads.streaming_blocks`) bounds the blocks and their working
copies; without one, a quarter of the available memory (psutil) or 1 GiB.

The result, a :class:`StreamedHead`, carries what :func:`featx.heads.fitting.fit` reads
(``val_accuracy_``, ``selected_on_validation_``, ``best_params_``, ``val_scores_``,
``classes_``) and predicts on lazy arrays by blocks too. For ``logreg`` and ``ridge``
its ``head_`` is an ordinary fitted :class:`~featx.heads.LogRegHead` /
:class:`~featx.heads.RidgeHead` (StandardScaler + solver pipeline) that saves like any
other (``to_head()``). For ``knn`` the model keeps a reference to ``X``, not a copy
(:class:`~featx.heads.streaming_knn.StreamingCosineKNN`): it predicts only while that
array is readable, and saving it means saving where it is.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
from scipy.linalg import LinAlgWarning
from sklearn.exceptions import ConvergenceWarning

from ..core.devices import resolve_device
from ..core.errors import FeatxError
from .catalog import make_head
from .streaming_blocks import (
    Job,
    Tally,
    blocks,
    default_max_memory,
    masked_blocks,
    resolve_max_memory,
    rows_per_block,
)
from .streaming_knn import StreamingCosineKNN, fit_knn
from .streaming_linear import fit_logreg, fit_ridge

STREAMING_HEADS = {"logreg": fit_logreg, "ridge": fit_ridge, "knn": fit_knn}

__all__ = ["STREAMING_HEADS", "StreamedHead", "StreamingCosineKNN", "Tally", "blocks", "default_max_memory",
           "fit_streaming", "predict_proba_streaming", "predict_streaming", "rows_per_block"]


def fit_streaming(X, y, head: str, *, max_memory: int | None = None, val_mask=None, val_fraction: float = 0.2,
                  seed: int = 0, device: str = "auto", max_iter: int = 1000) -> StreamedHead:
    """Fit ``head`` (``logreg``, ``ridge`` or ``knn``) on rows ``X`` read by blocks.

    Parameters
    ----------
    X : array-like, shape (n, d)
        Sliced as ``X[a:b]`` only (h5py dataset, memmap, lazy store reader).
    y : ndarray of int, shape (n,)
        Classes; negative values mark unlabelled rows, which are left out.
    head : str
        ``logreg``, ``ridge`` or ``knn``.
    max_memory : int, optional
        Bytes the blocks and their working copies may take; default
        :func:`~featx.heads.streaming_blocks.default_max_memory`.
    val_mask : array of bool, shape (n,), optional
        The validation rows; without it a stratified ``val_fraction`` drawn with ``seed``.
    device : str
        ``auto``, ``cpu`` or ``cuda``, for the solvers as in the in-memory heads.
    max_iter : int
        L-BFGS iterations per fit (``logreg``).
    """
    if head not in STREAMING_HEADS:
        raise FeatxError(f"head {head!r} cannot stream its rows: choose from {', '.join(STREAMING_HEADS)}")
    params = {"logreg": {"device": device, "max_iter": max_iter}, "knn": {"device": device}}.get(head, {})
    proto = make_head(head, val_fraction=val_fraction, random_state=seed, **params)
    job = _job(X, y, proto, val_mask, max_memory)
    job.device = resolve_device(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", LinAlgWarning)
        if head == "logreg" and np.count_nonzero(job.train) < job.d:
            fitted = _in_memory(job)  # fewer rows than features: they fit, and the row span needs them
        else:
            fitted = STREAMING_HEADS[head](job)
    return StreamedHead(fitted, head, job)


def _job(X, y, proto, val_mask, max_memory) -> Job:
    """The rows, labels and split of a fit, as :func:`fitting.fit` and the head make them."""
    y = np.asarray(y)
    if len(X.shape) != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X has shape {tuple(X.shape)}, y {y.shape}: expected (n, d) and (n,)")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer classes (negative: unlabelled), not {y.dtype}")
    labelled = y >= 0
    k = len(np.unique(y[labelled]))
    if k < 2:
        raise ValueError(f"{type(proto).__name__} needs samples of at least 2 classes; y has only {k} class")
    if val_mask is not None:
        val_mask = np.asarray(val_mask, dtype=bool)
        if val_mask.shape != y.shape:
            raise ValueError(f"val_mask has shape {val_mask.shape}, y has {y.shape}")
        val_mask = val_mask[labelled]
    split = proto._split(y[labelled], val_mask)
    train, val = labelled.copy(), None
    if split is not None:
        where = np.flatnonzero(labelled)
        train, val = np.zeros(len(y), bool), np.zeros(len(y), bool)
        train[where[split[0]]], val[where[split[1]]] = True, True
    return Job(X, y, labelled, train, val, proto, resolve_max_memory(max_memory), resolve_device("cpu"))


def _in_memory(job: Job):
    """The in-memory head on the labelled rows, read by blocks, with the same split."""
    rows = np.concatenate([r for _, r in masked_blocks(job.X, job.rows_per_block(), job.labelled,
                                                       tally=job.tally)])
    val = None if job.val is None else job.val[job.labelled]
    return job.head.fit(rows, job.y[job.labelled], val_mask=val)


class StreamedHead:
    """A head fitted by :func:`fit_streaming`: the fitted attributes of the in-memory
    head it stands for (``head_``), and ``predict`` / ``predict_proba`` that read lazy
    arrays by blocks. ``tally_`` counts the blocks read, fit and predictions included."""

    FITTED = ("classes_", "n_features_in_", "best_params_", "val_scores_", "val_accuracy_",
              "selected_on_validation_", "selection_", "cv_", "temperature_", "model_", "n_iter_")

    def __init__(self, head_, name: str, job: Job):
        self.head_, self.name = head_, name
        self.max_memory, self.tally_ = job.max_memory, job.tally
        self.rows_per_block_ = job.rows_per_block()
        for attr in self.FITTED:
            if hasattr(head_, attr):
                setattr(self, attr, getattr(head_, attr))

    def predict_proba(self, X) -> np.ndarray:
        return predict_proba_streaming(self.head_, X, max_memory=self.max_memory, tally=self.tally_)

    def predict(self, X) -> np.ndarray:
        return predict_streaming(self.head_, X, max_memory=self.max_memory, tally=self.tally_)

    def score(self, X, y) -> float:
        return float(np.mean(self.predict(X) == np.asarray(y)))

    def to_head(self):
        """The fitted in-memory head, to save like any other (``featx.heads.bundle``); for
        ``knn`` a copy holding its training rows in memory (they must fit)."""
        if isinstance(getattr(self.head_, "model_", None), StreamingCosineKNN):
            head = copy.copy(self.head_)
            head.model_ = self.head_.model_.to_cosine_knn()
            return head
        return self.head_

    def __repr__(self) -> str:
        return f"StreamedHead({self.name!r}, best_params_={getattr(self, 'best_params_', None)})"


def _streaming_knn(model):
    if isinstance(model, StreamedHead):
        model = model.head_
    inner = getattr(model, "model_", model)
    return inner if isinstance(inner, StreamingCosineKNN) else None


def _by_blocks(method, model, X, max_memory, tally):
    d = getattr(model, "n_features_in_", X.shape[1])
    if len(X.shape) != 2 or X.shape[1] != d:
        raise ValueError(f"X has shape {tuple(X.shape)}; the model takes {d} features")
    step = rows_per_block(resolve_max_memory(max_memory), d, np.dtype(X.dtype).itemsize)
    parts = [getattr(model, method)(rows) for _, rows in blocks(X, step, tally=tally)]
    if not parts:
        return np.zeros((0, len(model.classes_))) if method == "predict_proba" else model.classes_[:0]
    return np.concatenate(parts)


def predict_proba_streaming(model, X, *, max_memory: int | None = None, tally: Tally | None = None):
    """``model.predict_proba`` on a lazy ``X``, by blocks: for any fitted head (a loaded
    bundle's included) and for :class:`StreamedHead`."""
    knn = _streaming_knn(model)
    if knn is not None:
        return knn.predict_proba(X)
    if isinstance(model, StreamedHead):
        model = model.head_
    return _by_blocks("predict_proba", model, X, max_memory, tally)


def predict_streaming(model, X, *, max_memory: int | None = None, tally: Tally | None = None):
    """``model.predict`` on a lazy ``X``, by blocks (see :func:`predict_proba_streaming`)."""
    knn = _streaming_knn(model)
    if knn is not None:
        return knn.predict(X)
    if isinstance(model, StreamedHead):
        model = model.head_
    return _by_blocks("predict", model, X, max_memory, tally)
