"""What every classifier head does: its hyper-parameter chosen on a validation split, then refit.

Every head follows one protocol (Kornblith, Shlens and Le 2019): its hyper-parameter is
chosen on data held out of the training data, then the chosen model is refit on all of
it. ``fit(X, y, val_mask=...)`` marks the user's own validation rows, which are then the
held-out data. Without them, fewer than ``cv_below`` rows (default 20,000) are scored by
stratified ``cv_folds``-fold cross-validation (default 5, seeded with ``random_state``):
on small data one validation split is too noisy to choose by (160 validation images
differ by 0.6 points per image); more rows hold out a stratified split of ``val_fraction``.
When the data are too small to split (a class with fewer than two examples), the head
uses its default hyper-parameter and records that no selection took place.

Heads are real estimators (``get_params``, ``clone``, ``Pipeline``, ``cross_val_score``).
Margin classifiers (``linear_svm``, ``ridge``) give probabilities by a softmax of their
decision values with one temperature fitted on the validation split (Guo et al. 2017),
which leaves their predictions unchanged.
"""
from __future__ import annotations

import warnings

import joblib
import numpy as np
from scipy.linalg import LinAlgWarning
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


class SweptHead(ClassifierMixin, BaseEstimator):
    """Base class: subclasses name their candidates and build one model per candidate."""

    default_index = 0
    cv_folds, cv_below = 5, 20_000  # class defaults too: heads pickled before these parameters load

    def __init__(self, val_fraction: float = 0.2, random_state: int = 0, n_jobs: int | None = None, *,
                 cv_folds: int = 5, cv_below: int = 20_000):
        self.val_fraction = val_fraction
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.cv_folds = cv_folds
        self.cv_below = cv_below

    # -- what subclasses provide ------------------------------------------------------
    def _candidates(self, y) -> list[dict]:
        """Hyper-parameter settings to try, for training labels ``y``."""
        raise NotImplementedError

    def _build(self, **params):
        raise NotImplementedError

    def _sweep(self, candidates, Xt, yt, Xv, yv) -> list[tuple[float, float]]:
        """(accuracy, log loss) on the validation rows for each candidate."""
        return [score(clone(self._build(**p)).fit(Xt, yt), Xv, yv) for p in candidates]

    # -- the protocol -----------------------------------------------------------------
    def fit(self, X, y, val_mask=None):
        # Solvers stop at their iteration caps on nearly separable data, as intended.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", LinAlgWarning)  # ridge at its weakest penalties
            return self._fit(X, y, val_mask)

    def _fit(self, X, y, val_mask):
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; y has only 1 class")
        folds = self._folds(y, val_mask)
        candidates = self._candidates(y if not folds else y[min((tr for tr, _ in folds), key=len)])
        self.selection_ = "none" if not folds else "validation split" if len(folds) == 1 else \
            f"{len(folds)}-fold cross-validation"
        self.selected_on_validation_ = bool(folds) and len(candidates) > 1
        self.temperature_ = 1.0
        self.val_scores_, self.val_accuracy_, self.cv_ = [], None, None
        best = min(self.default_index, len(candidates) - 1)
        if folds:
            best = self._select(candidates, X, y, folds)
        self.best_params_ = candidates[best]
        self.model_ = self._build(**self.best_params_).fit(X, y)
        return self

    def _select(self, candidates, X, y, folds) -> int:
        """The best candidate by its mean accuracy over ``folds`` (ties: the lower mean
        log loss, then the first); sets the validation attributes."""
        acc = np.zeros((len(folds), len(candidates)))
        loss = np.zeros_like(acc)
        if len(candidates) > 1:
            acc, loss = self._sweep_folds(candidates, X, y, folds)
        mean = acc.mean(0)
        best = 0 if len(candidates) == 1 else max(range(len(candidates)),
                                                  key=lambda i: (mean[i], -loss[:, i].mean()))
        if len(candidates) > 1:
            self.val_scores_ = [{**p, "accuracy": float(mean[i]), **self._spread(acc[:, i])}
                                for i, p in enumerate(candidates)]
        chosen = self._build(**candidates[best])
        if len(candidates) > 1 and hasattr(chosen, "predict_proba"):
            self.val_accuracy_ = float(mean[best])  # the sweep already scored the chosen model
        else:  # refit on each fold's training rows: for its accuracy, or to calibrate a margin
            right, scores, truth = [], [], []
            for tr, va in folds:
                model = clone(chosen).fit(X[tr], y[tr])
                right.append(np.mean(model.predict(X[va]) == y[va]))
                if not hasattr(model, "predict_proba"):
                    scores.append(decision_2d(model, X[va]))
                    truth.append(_indices(model.classes_, y[va]))
            acc[:, best] = right
            self.val_accuracy_ = float(np.mean(right))
            if scores:
                self.temperature_ = _fit_temperature(np.concatenate(scores), np.concatenate(truth))
        if len(folds) > 1:
            self.cv_ = {"folds": len(folds), "accuracy": self.val_accuracy_, **self._spread(acc[:, best])}
        return best

    def _sweep_folds(self, candidates, X, y, folds) -> tuple[np.ndarray, np.ndarray]:
        """(accuracy, log loss), each (folds, candidates): the sweep on every fold."""
        scores = [self._sweep_in_parts(candidates, X[tr], y[tr], X[va], y[va]) for tr, va in folds]
        arr = np.array(scores, dtype=np.float64)  # (folds, candidates, 2)
        return arr[:, :, 0], arr[:, :, 1]

    @staticmethod
    def _spread(fold_accuracies: np.ndarray) -> dict:
        if len(fold_accuracies) < 2:
            return {}
        return {"accuracy_std": float(np.std(fold_accuracies, ddof=1)),
                "fold_accuracies": [float(a) for a in fold_accuracies]}

    def _folds(self, y, val_mask) -> list[tuple[np.ndarray, np.ndarray]]:
        """(training rows, held-out rows) per fold: the user's validation rows, k folds
        below ``cv_below`` rows, else one stratified split; none when a class is too small."""
        if val_mask is not None:
            return [self._split(y, val_mask)]
        _, counts = np.unique(y, return_counts=True)
        k = min(self.cv_folds, counts.min())  # (class defaults serve heads pickled before)
        if len(y) < self.cv_below and k >= 2:
            cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.random_state)
            return list(cv.split(np.zeros(len(y)), y))
        split = self._split(y, None)
        return [] if split is None else [split]

    def _sweep_in_parts(self, candidates, Xt, yt, Xv, yv) -> list[tuple[float, float]]:
        """The sweep, in ``n_jobs`` contiguous parts of the candidate list run as joblib
        tasks: on the backend the caller configured (loky by default; dask or ray to fan
        out over a cluster, see :mod:`featx.heads.sweeps`). The parts depend only on
        ``n_jobs``, so every backend gives the same scores."""
        parts = 1
        if self.n_jobs not in (None, 1):
            parts = min(joblib.effective_n_jobs(self.n_jobs), len(candidates))
        if parts == 1:
            return self._sweep(candidates, Xt, yt, Xv, yv)
        chunks = np.array_split(np.arange(len(candidates)), parts)
        scored = joblib.Parallel(n_jobs=parts)(
            joblib.delayed(self._sweep)([candidates[i] for i in c], Xt, yt, Xv, yv) for c in chunks)
        return [s for part in scored for s in part]

    def _split(self, y, val_mask):
        if val_mask is not None:
            val_mask = np.asarray(val_mask, dtype=bool)
            if val_mask.shape != y.shape:
                raise ValueError(f"val_mask has shape {val_mask.shape}, y has {y.shape}")
            if not val_mask.any() or val_mask.all():
                raise ValueError("val_mask must mark some rows, not all, as validation")
            if len(np.unique(y[~val_mask])) < 2:
                raise ValueError("the training rows (outside val_mask) hold fewer than 2 classes")
            return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
        return validation_split(y, self.val_fraction, self.random_state)

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self.model_.predict(X)

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        if hasattr(self.model_, "predict_proba"):
            return self.model_.predict_proba(X)
        return softmax(decision_2d(self.model_, X) / self.temperature_, axis=1)


def validation_split(y, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(train rows, validation rows): a stratified ``fraction`` of ``y`` drawn with ``seed``,
    at least one row per class; None when a class has fewer than two rows."""
    y = np.asarray(y)
    _, counts = np.unique(y, return_counts=True)
    n_val = max(len(counts), round(fraction * len(y)))
    if counts.min() < 2 or len(y) - n_val < len(counts):
        return None
    tr, va = train_test_split(np.arange(len(y)), test_size=n_val, stratify=y, random_state=seed)
    return np.sort(tr), np.sort(va)


def _indices(classes, y) -> np.ndarray:
    return np.searchsorted(classes, y)


def decision_2d(model, X) -> np.ndarray:
    d = model.decision_function(X)
    return np.column_stack([-d / 2, d / 2]) if d.ndim == 1 else d


def score(model, Xv, yv) -> tuple[float, float]:
    if not hasattr(model, "predict_proba"):
        return float(np.mean(model.predict(Xv) == yv)), 0.0
    return proba_scores(model.predict_proba(Xv), model.classes_, yv)


def proba_scores(p, classes, yv) -> tuple[float, float]:
    """(accuracy, log loss) of class probabilities ``p`` (columns ``classes``) against ``yv``."""
    accuracy = float(np.mean(classes[np.argmax(p, axis=1)] == yv))
    cols = np.searchsorted(classes, yv)
    known = (cols < len(classes)) & (classes[np.minimum(cols, len(classes) - 1)] == yv)
    picked = np.where(known, p[np.arange(len(yv)), np.minimum(cols, p.shape[1] - 1)], 0.0)
    return accuracy, float(-np.mean(np.log(np.clip(picked, 1e-12, None))))


def _fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the validation log loss of softmax(scores / T)."""
    rows = np.arange(len(y))

    def nll(log_t):
        return -log_softmax(scores / np.exp(log_t), axis=1)[rows, y].mean()

    return float(np.exp(minimize_scalar(nll, bounds=(-6, 6), method="bounded").x))

