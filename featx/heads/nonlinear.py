"""Non-linear heads: a one-hidden-layer perceptron and histogram gradient boosting."""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .base import SweptHead


def _can_hold_out(y) -> bool:
    """Whether an estimator's own 10 % early-stopping split holds every class."""
    return np.unique(y, return_counts=True)[1].min() >= 10


class MLPHead(SweptHead):
    """Standardised features, one hidden layer of 256, early stopping; L2 penalty swept."""

    default_index = 1

    def _candidates(self, y):
        return [{"alpha": a, "early_stopping": _can_hold_out(y)} for a in (1e-4, 1e-2, 1.0)]

    def _build(self, alpha, early_stopping):
        return make_pipeline(StandardScaler(), MLPClassifier(
            hidden_layer_sizes=(256,), alpha=alpha, early_stopping=early_stopping, n_iter_no_change=10,
            max_iter=200, random_state=self.random_state))


class HGBHead(SweptHead):
    """Histogram gradient boosting with early stopping; learning rate swept."""

    default_index = 0

    def _candidates(self, y):
        return [{"learning_rate": r, "early_stopping": _can_hold_out(y)} for r in (0.1, 0.3)]

    def _build(self, learning_rate, early_stopping):
        return HistGradientBoostingClassifier(
            learning_rate=learning_rate, max_iter=200, early_stopping=early_stopping, n_iter_no_change=10,
            random_state=self.random_state)

