"""Cosine k-nearest neighbours by batched matrix products on torch.

:class:`CosineKNN` gives the predictions of scikit-learn's
``make_pipeline(Normalizer(), KNeighborsClassifier(k, weights="distance"))``: on
L2-normalised rows the Euclidean distance is ``sqrt(2 - 2 cos)``, so the nearest
neighbours are those of highest cosine similarity, found with one matrix product per
block of queries and ``topk``. A sweep over k needs the neighbours only once, for the
largest k (:func:`neighbours`, :func:`vote`).
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ..core.devices import resolve_device

BLOCK_ELEMENTS = 1 << 24  # similarities held at once: 128 MB of float64
EXACT = 1e-7  # distances below float64's resolution of sqrt(2 - 2 cos) count as zero


def unit_rows(X, dev: torch.device) -> torch.Tensor:
    """Rows scaled to unit length, in float64: the distances of coinciding rows come out
    as zero, and a row's neighbours do not depend on which other rows share its batch."""
    t = torch.as_tensor(np.asarray(X, dtype=np.float64), device=dev)
    return torch.nn.functional.normalize(t, dim=1)


def neighbours(train: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Euclidean distances between unit vectors, indices) of each query's ``k`` nearest
    training rows, nearest first; both (n_queries, k)."""
    k = min(k, len(train))
    step = max(1, BLOCK_ELEMENTS // max(1, len(train)))
    sims, idx = [], []
    for start in range(0, len(queries), step):
        s, i = torch.topk(queries[start:start + step] @ train.T, k, dim=1)
        sims.append(s.cpu())
        idx.append(i.cpu())
    s = torch.cat(sims).numpy() if sims else np.zeros((0, k))
    dist = np.sqrt(np.clip(2.0 - 2.0 * s, 0.0, None))
    dist[dist < EXACT] = 0.0
    return dist, (torch.cat(idx).numpy() if idx else np.zeros((0, k), dtype=np.int64))


def vote(dist: np.ndarray, idx: np.ndarray, y: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """Class probabilities from the first ``k`` neighbours, weighted by inverse distance
    (scikit-learn's ``weights="distance"``: a query that coincides with training rows
    takes their votes alone)."""
    dist, idx = dist[:, :k], idx[:, :k]
    with np.errstate(divide="ignore"):
        w = 1.0 / dist
    exact = ~np.isfinite(w)
    rows = exact.any(axis=1)
    w[rows] = exact[rows].astype(float)
    proba = np.zeros((len(idx), n_classes))
    np.add.at(proba, (np.repeat(np.arange(len(idx)), idx.shape[1]), y[idx].ravel()), w.ravel())
    return proba / proba.sum(axis=1, keepdims=True)


class CosineKNN(ClassifierMixin, BaseEstimator):
    """k nearest neighbours by cosine similarity, votes weighted by inverse distance."""

    def __init__(self, n_neighbors: int = 10, device: str = "auto"):
        self.n_neighbors = n_neighbors
        self.device = device

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        self.classes_, self.y_ = np.unique(y, return_inverse=True)
        self.X_ = X
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        dev = resolve_device(self.device)
        dist, idx = neighbours(unit_rows(self.X_, dev), unit_rows(X, dev), self.n_neighbors)
        return vote(dist, idx, self.y_, len(self.classes_), self.n_neighbors)

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
