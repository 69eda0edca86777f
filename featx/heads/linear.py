"""Linear heads on standardised features: logistic regression, linear SVM, ridge."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted, validate_data

from ..core.devices import resolve_device
from .base import SweptHead, score
from .logreg import TorchLogisticRegression

C_GRID = np.logspace(-6, 2, 25)  # 3 values per decade (Kornblith et al. sweep 45 over a wider range)


class _RowSpan(TransformerMixin, BaseEstimator):
    """Coordinates in an orthonormal basis of the training rows' span, when there are
    fewer rows than features; otherwise the features as they are.

    An L2-regularised linear model's optimum lies in that span (w = -C X^T r), so fitting
    on these coordinates gives exactly the same predictions with n instead of d features:
    much faster when examples are few.
    """

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        self.basis_ = np.linalg.svd(X, full_matrices=False)[2].T if X.shape[0] < X.shape[1] else None
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return X if self.basis_ is None else X @ self.basis_


class LogRegHead(SweptHead):
    """Standardised features, multinomial L2 logistic regression, C swept.

    scikit-learn's model and objective, solved by a preconditioned L-BFGS on torch (see
    :mod:`featx.heads.logreg`); ``device`` ``auto`` uses CUDA when present.
    """

    default_index = 12  # C = 1e-2

    def __init__(self, val_fraction=0.2, random_state=0, n_jobs=None, *, cv_folds=5, cv_below=20_000,
                 max_iter=1000, device="auto"):
        super().__init__(val_fraction, random_state, n_jobs, cv_folds=cv_folds, cv_below=cv_below)
        self.max_iter = max_iter
        self.device = device

    def _candidates(self, y):
        return [{"C": float(c)} for c in C_GRID]

    def _build(self, C):
        return make_pipeline(StandardScaler(), _RowSpan(),
                             TorchLogisticRegression(C=C, max_iter=self.max_iter, device=self.device))

    def _sweep(self, candidates, Xt, yt, Xv, yv):
        # Along the regularisation path, each fit starts from the previous solution.
        prep = make_pipeline(StandardScaler(), _RowSpan()).fit(Xt)
        Xt, Xv = prep.transform(Xt), prep.transform(Xv)
        model = TorchLogisticRegression(max_iter=self.max_iter, warm_start=True, device=self.device)
        return [score(model.set_params(**p).fit(Xt, yt), Xv, yv) for p in candidates]

    def _sweep_folds(self, candidates, X, y, folds):
        # k folds: solved together on one factorisation (featx.heads.logreg_folds) where it
        # preconditions them well; joblib parts (n_jobs), a single split, and folds of fewer
        # rows than features (solved fast one by one in their rows' span) keep the plain sweep
        from .logreg_folds import batchable, sweep

        if len(folds) < 2 or self.n_jobs not in (None, 1) or not batchable(X, folds):
            return super()._sweep_folds(candidates, X, y, folds)

        return sweep(X, y, folds, [p["C"] for p in candidates], max_iter=self.max_iter,
                     dev=resolve_device(self.device))

    def fit(self, X, y, val_mask=None):
        super().fit(X, y, val_mask)
        self.n_iter_ = self.model_[-1].n_iter_
        return self


class LinearSVMHead(SweptHead):
    """Standardised features, linear SVM (one-vs-rest, squared hinge), C swept."""

    default_index = 12  # C = 1e-3

    def _candidates(self, y):
        # Optima on standardised embeddings lie far below C = 0.1; above it liblinear
        # crawls on nearly separable data without changing the predictions.
        return [{"C": float(c)} for c in np.logspace(-6, -1, 21)]

    def _build(self, C):
        return make_pipeline(StandardScaler(), _RowSpan(),
                             LinearSVC(C=C, dual=True, max_iter=1000, random_state=self.random_state))


class RidgeHead(SweptHead):
    """Standardised features, ridge regression on one-hot targets, alpha swept."""

    default_index = 10  # alpha = 1e3

    def _candidates(self, y):
        return [{"alpha": float(a)} for a in np.logspace(-2, 6, 25)]

    def _build(self, alpha):
        return make_pipeline(StandardScaler(), RidgeClassifier(alpha=alpha))

