"""Stacked features weighed alike: each block standardised on the training rows (a
recipe's blocks, featx.extraction.recipes)."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data


class BlockScaler(TransformerMixin, BaseEstimator):
    """Each block of columns (``blocks``: their widths, in order) centred and divided by
    its root-mean-square norm on the training rows: every block then has a mean squared
    norm of 1, so a wide or large-valued block (a second backbone, an intermediate stage)
    weighs no more than the others in a distance or a penalty. Labels are not used."""

    def __init__(self, blocks: tuple[int, ...] = ()):
        self.blocks = blocks

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        widths = tuple(int(b) for b in self.blocks) or (X.shape[1],)
        if sum(widths) != X.shape[1] or min(widths) < 1:
            raise ValueError(f"blocks {widths} do not cover the {X.shape[1]} features")
        self.mean_ = X.mean(axis=0, dtype=np.float64)
        self.scale_ = np.empty(X.shape[1])
        start = 0
        for w in widths:
            centred = X[:, start:start + w] - self.mean_[start:start + w]
            rms = float(np.sqrt(np.mean(np.sum(np.square(centred, dtype=np.float64), axis=1))))
            self.scale_[start:start + w] = 1.0 / rms if rms > 0 else 1.0
            start += w
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return ((X - self.mean_) * self.scale_).astype(X.dtype, copy=False)
