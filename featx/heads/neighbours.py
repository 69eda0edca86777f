"""Heads by similarity to the training rows: cosine k-nearest neighbours, nearest class mean."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import Normalizer

from ..core.devices import resolve_device
from . import knn
from .base import SweptHead, decision_2d, proba_scores
from .knn import CosineKNN


class KNNHead(SweptHead):
    """Cosine k-nearest neighbours (L2-normalised features), distance-weighted votes, k swept."""

    default_index = 3  # k = 10
    K_GRID = (1, 3, 5, 10, 20, 50, 100, 200)

    def _candidates(self, y):
        return [{"n_neighbors": k} for k in self.K_GRID if k <= len(y)]

    def __init__(self, val_fraction=0.2, random_state=0, n_jobs=None, *, cv_folds=5, cv_below=20_000,
                 device="auto"):
        super().__init__(val_fraction, random_state, n_jobs, cv_folds=cv_folds, cv_below=cv_below)
        self.device = device

    def _build(self, n_neighbors):
        return CosineKNN(n_neighbors, device=self.device)

    def _sweep(self, candidates, Xt, yt, Xv, yv):
        # One matrix product for the largest k; each smaller k reads its first columns.
        classes, y_idx = np.unique(yt, return_inverse=True)
        dev = resolve_device(self.device)
        dist, idx = knn.neighbours(knn.unit_rows(Xt, dev), knn.unit_rows(Xv, dev),
                                   max(p["n_neighbors"] for p in candidates))
        return [proba_scores(knn.vote(dist, idx, y_idx, len(classes), p["n_neighbors"]), classes, yv)
                for p in candidates]


class NearestCentroidHead(SweptHead):
    """Nearest class mean of L2-normalised features (nothing to tune)."""

    def _candidates(self, y):
        return [{}]

    def _build(self):
        return _CosineCentroids()


class _CosineCentroids(ClassifierMixin, BaseEstimator):
    """Class means of L2-normalised features; decision values are cosine similarities."""

    def fit(self, X, y):
        self.classes_, y = np.unique(y, return_inverse=True)
        X = _l2(X)
        self.centroids_ = _l2(np.stack([X[y == k].mean(axis=0) for k in range(len(self.classes_))]))
        return self

    def decision_function(self, X):
        d = _l2(X) @ self.centroids_.T
        return d[:, 1] - d[:, 0] if len(self.classes_) == 2 else d

    def predict(self, X):
        return self.classes_[np.argmax(decision_2d(self, X), axis=1)]


def _l2(X):
    return Normalizer().transform(X)

