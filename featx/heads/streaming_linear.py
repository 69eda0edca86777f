"""Logistic regression and ridge fitted on rows streamed by blocks (out of core).

Both heads standardise the features, and both need of the rows only what a few passes
can sum up, in float64:

- one pass gives, for the training rows and for the validation rows, the count, the sums
  ``S1 = sum(x - c)`` and ``S2 = sum((x - c)(x - c)^T)`` about a shift ``c`` (the first
  block's mean, so no precision is lost to large means) and, for ridge, each class's sum.
  From them: the StandardScaler of either subset and of both (their sums add), and the
  d x d covariance of the standardised rows (``scatter / (n s s^T)``).
- ridge: X^T X and X^T Y of the standardised rows, Y the +-1 coding of
  ``RidgeClassifier`` (one column for two classes), come from those sums; one
  eigendecomposition of X^T X solves every alpha of the sweep; one pass over the
  validation rows scores them all, one more gives the chosen model's decision values for
  the temperature. The final model is solved from the sums of all rows.
- logistic regression: the covariance's eigenvectors are the principal axes that
  :func:`featx.heads.logreg._solve` rotates onto; :class:`StreamBasis` gives ``_solve``
  the loss and gradient of the same objective summed over blocks (each block
  standardised, its logits ``Z @ (axes @ W)``: the rotation folded into the weights),
  so the same preconditioned L-BFGS, warm starts along the C path and stopping rule run
  on it. One pass per objective evaluation; one pass over the validation rows per C.

The fitted models are the in-memory heads' own pipelines (StandardScaler with its
statistics set, then TorchLogisticRegression or RidgeClassifier), saved like any other.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.preprocessing import LabelBinarizer, StandardScaler

from .base import _fit_temperature, _indices, proba_scores
from .logreg import TorchLogisticRegression, residuals
from .streaming_blocks import WORKING_COPIES, Job, choose, settle


@dataclass
class Moments:
    """Sums over a subset of rows about a shift ``c``: count, S1, S2 and class sums."""

    shift: torch.Tensor  # (d,) float64
    n: int
    s1: torch.Tensor  # (d,)
    s2: torch.Tensor  # (d, d)
    class_sums: torch.Tensor | None  # (k, d): sum of (x - c) over each class's rows
    counts: np.ndarray  # (k,) rows per class

    @classmethod
    def empty(cls, shift: torch.Tensor, k: int | None) -> Moments:
        d, f64 = len(shift), dict(dtype=torch.float64, device=shift.device)
        sums = None if k is None else torch.zeros(k, d, **f64)
        counts = np.zeros(k or 0, np.int64)
        return cls(shift, 0, torch.zeros(d, **f64), torch.zeros(d, d, **f64), sums, counts)

    def add(self, xs: torch.Tensor, yk: np.ndarray | None) -> None:
        self.n += len(xs)
        self.s1 += xs.sum(0)
        self.s2.addmm_(xs.T, xs)
        if self.class_sums is not None:
            self.class_sums.index_add_(0, torch.as_tensor(yk, device=xs.device), xs)
            self.counts += np.bincount(yk, minlength=len(self.counts))

    def __add__(self, other: Moments) -> Moments:
        sums = None if self.class_sums is None else self.class_sums + other.class_sums
        return Moments(self.shift, self.n + other.n, self.s1 + other.s1, self.s2 + other.s2, sums,
                       self.counts + other.counts)

    @property
    def delta(self) -> torch.Tensor:
        return self.s1 / self.n  # mean - shift

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.delta

    def scatter(self) -> torch.Tensor:
        """sum((x - mean)(x - mean)^T)."""
        return self.s2 - self.n * torch.outer(self.delta, self.delta)


def moments(job: Job, masks: list[np.ndarray], classes: np.ndarray | None = None) -> list[Moments]:
    """One pass: the :class:`Moments` of each subset of rows ``masks`` selects (with class
    sums over ``classes`` when given)."""
    union = np.logical_or.reduce(masks)
    subs = [m[union] for m in masks]
    yk = None if classes is None else np.searchsorted(classes, job.y[union])
    out = None
    for offset, rows in job.masked(union):
        x = torch.as_tensor(rows, device=job.device).double()
        if out is None:
            out = [Moments.empty(x.mean(0), None if classes is None else len(classes)) for _ in masks]
        x -= out[0].shift
        span = slice(offset, offset + len(rows))
        for mom, sub in zip(out, subs):
            pick = sub[span]
            if pick.all():
                mom.add(x, None if yk is None else yk[span])
            elif pick.any():
                mom.add(x[torch.as_tensor(pick, device=job.device)], None if yk is None else yk[span][pick])
    return out


def fitted_scaler(m: Moments, scaler: StandardScaler | None = None) -> StandardScaler:
    """``scaler`` (a new one by default) with the statistics StandardScaler.fit finds on
    the rows of ``m``: population variance, near-constant features scaled by 1."""
    scaler = StandardScaler() if scaler is None else scaler
    mean = m.mean.cpu().numpy()
    var = np.maximum(torch.diagonal(m.scatter()).cpu().numpy() / m.n, 0.0)
    eps = np.finfo(np.float64).eps
    constant = var <= m.n * eps * var + (m.n * mean * eps) ** 2  # scikit-learn's _is_constant_feature
    scaler.n_features_in_, scaler.n_samples_seen_ = len(mean), m.n
    scaler.mean_, scaler.var_, scaler.scale_ = mean, var, np.where(constant, 1.0, np.sqrt(var))
    return scaler


def standardised_gram(m: Moments, scaler: StandardScaler) -> torch.Tensor:
    """X^T X of the rows of ``m`` standardised by their own ``scaler`` (centred)."""
    scale = torch.as_tensor(scaler.scale_, dtype=torch.float64, device=m.shift.device)
    return m.scatter() / torch.outer(scale, scale)


class StreamBasis:
    """The rows a mask selects, standardised by ``scaler`` and seen on their principal
    axes, for :func:`featx.heads.logreg._solve`: their statistics in memory, the rows
    streamed for each loss and gradient."""

    def __init__(self, job: Job, mask: np.ndarray, scaler: StandardScaler, m: Moments):
        self.job, self.mask, self.scaler = job, mask, scaler
        self.n, self.d, self.dev = m.n, job.d, job.device
        scale = torch.as_tensor(scaler.scale_, dtype=torch.float64, device=self.dev)
        self.mean = (m.mean - torch.as_tensor(scaler.mean_, device=self.dev)) / scale  # zero: own scaler
        self.var, self.axes = torch.linalg.eigh(standardised_gram(m, scaler) / m.n)
        self.var = self.var.clamp_min(0)

    def targets(self, y: np.ndarray, cols: int) -> torch.Tensor:
        return torch.as_tensor(y, device=self.dev)  # class index of each selected row, in order

    def cross_entropy(self, W: torch.Tensor, b: torch.Tensor, y: torch.Tensor, cols: int):
        """The mean cross-entropy and its gradient in ``W`` (rotated basis) and ``b``."""
        V = (self.axes @ W.double()).float()  # the weights on the standardised features
        f64 = dict(dtype=torch.float64, device=self.dev)
        loss, gX, gb = torch.zeros((), **f64), torch.zeros(self.d, cols, **f64), torch.zeros(cols, **f64)
        centre = self.mean.float()
        for offset, rows in self.job.masked(self.mask):
            Z = torch.as_tensor(self.scaler.transform(rows), dtype=torch.float32, device=self.dev) - centre
            yb = y[offset:offset + len(rows)]
            ce, G = residuals(Z @ V + b, yb, torch.nn.functional.one_hot(yb, max(cols, 2)).float(), cols,
                              self.n)
            loss += ce.sum()
            gX += (G.T @ Z).T.double()
            gb += G.sum(0).double()
        return loss / self.n, self.axes.T @ gX, gb


def _labels(job: Job, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes, class index of each selected row) of the rows ``mask`` selects."""
    return np.unique(job.y[mask], return_inverse=True)


def _proba_scores(job: Job, mask: np.ndarray, model, scaler: StandardScaler) -> tuple[float, float]:
    """(accuracy, log loss) of ``model`` on the standardised rows ``mask`` selects."""
    y, correct, loss = job.y[mask], 0, 0.0
    for offset, rows in job.masked(mask):
        a, ll = proba_scores(model.predict_proba(scaler.transform(rows)), model.classes_,
                             y[offset:offset + len(rows)])
        correct, loss = correct + round(a * len(rows)), loss + ll * len(rows)
    return correct / len(y), loss / len(y)


def _moments(job: Job, classes=None) -> tuple[Moments, Moments | None]:
    masks = [job.train] + ([job.val] if job.val is not None else [])
    found = moments(job, masks, classes)
    return found[0], (found[1] if len(found) > 1 else None)


def fit_logreg(job: Job):
    """A fitted :class:`~featx.heads.LogRegHead` from streamed rows: C swept on the
    validation rows, warm-started along the path, then refit on all labelled rows."""
    head = job.head
    train, val = _moments(job)
    candidates, scores = head._candidates(None), None
    best = min(head.default_index, len(candidates) - 1)
    if val is not None:
        scaler = fitted_scaler(train)
        basis = StreamBasis(job, job.train, scaler, train)
        classes, y_idx = _labels(job, job.train)
        model = TorchLogisticRegression(max_iter=head.max_iter, warm_start=True, device=head.device)
        model.n_features_in_ = job.d
        scores = [_proba_scores(job, job.val, model.set_params(**p).fit_basis(basis, y_idx, classes), scaler)
                  for p in candidates]
        best = choose(scores)
    whole = train if val is None else train + val
    pipe = head._build(**candidates[best])
    scaler = fitted_scaler(whole, pipe[0])
    pipe[1].basis_, pipe[1].n_features_in_ = None, job.d  # _RowSpan: as many rows as features or more
    classes, y_idx = _labels(job, job.labelled)
    pipe[-1].fit_basis(StreamBasis(job, job.labelled, scaler, whole), y_idx, classes)
    pipe[-1].n_features_in_ = job.d
    head.model_, head.n_iter_ = pipe, pipe[-1].n_iter_
    return settle(head, job, candidates, scores, best)


def _ridge_system(m: Moments, scaler: StandardScaler, classes: np.ndarray):
    """(classes present, X^T X, X^T Y, mean of Y) of the standardised rows of ``m``, Y
    coded as RidgeClassifier codes it: +-1, one column per class, one for two classes."""
    present = np.flatnonzero(m.counts)
    cols = present[1:] if len(present) == 2 else present
    scale = torch.as_tensor(scaler.scale_, dtype=torch.float64, device=m.shift.device)
    counts = torch.as_tensor(m.counts[cols], dtype=torch.float64, device=m.shift.device)
    centred = m.class_sums[torch.as_tensor(cols, device=m.shift.device)] - counts[:, None] * m.delta
    XtY = 2 * centred.T / scale[:, None]  # sum of x_s (2 onehot - 1)^T = 2 sum of x_s onehot^T: x_s centred
    return classes[present], standardised_gram(m, scaler), XtY, 2 * counts / m.n - 1


def _decisions(job: Job, mask: np.ndarray, scaler: StandardScaler, W: torch.Tensor, b: torch.Tensor):
    """``(offset, decision values)`` of the standardised rows ``mask`` selects, block by block."""
    copies = WORKING_COPIES + 2 * W.shape[1] / job.d  # the float64 decision values of a block
    for offset, rows in job.masked(mask, copies):
        yield offset, torch.as_tensor(scaler.transform(rows), device=job.device).double() @ W + b


def _ridge_sweep(job: Job, head, train: Moments, alphas: np.ndarray) -> tuple[list, int]:
    """Validation accuracy of every alpha (one eigendecomposition, one pass), the best,
    and the chosen model's temperature (a second pass) set on ``head``."""
    classes_all = np.unique(job.y[job.labelled])
    scaler = fitted_scaler(train)
    classes, A, B, ybar = _ridge_system(train, scaler, classes_all)
    lam, Q = torch.linalg.eigh(A)
    QtB = Q.T @ B
    coefs = [Q @ (QtB / (lam[:, None] + a)) for a in alphas]  # (d, cols) each
    cols = B.shape[1]
    yv, correct = job.y[job.val], np.zeros(len(alphas), np.int64)
    for offset, dec in _decisions(job, job.val, scaler, torch.cat(coefs, 1), ybar.repeat(len(alphas))):
        dec = dec.view(len(dec), len(alphas), cols)
        picked = (dec[..., 0] > 0).long() if cols == 1 else dec.argmax(2)
        correct += (classes[picked.cpu().numpy()] == yv[offset:offset + len(dec), None]).sum(0)
    scores = [(float(c) / len(yv), 0.0) for c in correct]
    best = choose(scores)
    dec = torch.cat([d for _, d in _decisions(job, job.val, scaler, coefs[best], ybar)]).cpu().numpy()
    dec = np.column_stack([-dec[:, 0] / 2, dec[:, 0] / 2]) if cols == 1 else dec
    head.temperature_ = _fit_temperature(dec, _indices(classes, yv))
    return scores, best


def fit_ridge(job: Job):
    """A fitted :class:`~featx.heads.RidgeHead` from streamed rows: alpha swept on the
    validation rows, then refit on all labelled rows."""
    head = job.head
    classes_all = np.unique(job.y[job.labelled])
    train, val = _moments(job, classes_all)
    candidates, scores = head._candidates(None), None
    best = min(head.default_index, len(candidates) - 1)
    if val is not None:
        scores, best = _ridge_sweep(job, head, train, np.array([p["alpha"] for p in candidates]))
    whole = train if val is None else train + val
    pipe = head._build(**candidates[best])
    scaler = fitted_scaler(whole, pipe[0])
    classes, A, B, ybar = _ridge_system(whole, scaler, classes_all)
    A.diagonal().add_(pipe[-1].alpha)
    coef = torch.linalg.solve(A, B).T.cpu().numpy()  # (cols, d)
    ridge = pipe[-1]
    ridge.coef_ = coef[0] if len(coef) == 1 else coef  # scikit-learn keeps one row as a vector
    ridge.intercept_ = ybar.cpu().numpy()
    ridge.classes_, ridge.n_features_in_, ridge.n_iter_, ridge.solver_ = classes, job.d, None, "cholesky"
    ridge._label_binarizer = LabelBinarizer(pos_label=1, neg_label=-1).fit(classes)
    head.model_ = pipe
    return settle(head, job, candidates, scores, best)
