"""The ``logreg`` head's cross-validated sweep: every fold solved at once, on torch.

Cross-validation fits ``folds x C values`` logistic regressions. Fitted one by one (the
single sweep's way, :mod:`.logreg`), each fold pays for its own standardisation, its own
rotation (an eigendecomposition of the features' covariance) and its own pass over the
rows for every L-BFGS step. Here:

- **one factorisation.** All rows are standardised and rotated onto their principal
  axes once. A fold's own standardisation (scikit-learn's ``StandardScaler`` fitted on
  the fold's training rows, as the pipeline ``StandardScaler -> LogisticRegression``
  does) differs from the global one by a per-feature scale and shift; the scale enters
  the penalty, the shift the intercept, so each fold's objective is exactly its own:

      mean over the fold's training rows of cross-entropy + ||W_f||^2 / (2 C n_f),

  W_f in the fold's standardised features. Its optimum is the one-by-one fit's.
- **folds batched.** The folds' weights sit side by side: one product of the rows with
  all folds' weights gives every fold's logits (each fold reads its training rows
  through a mask), one product gives every gradient. The rows are read once per step
  for all folds, not once per fold; one L-BFGS runs the sum of the folds' objectives,
  which are independent, and stops when every fold meets scikit-learn's rule (largest
  gradient component at most ``tol``).
- **warm starts shared along the path.** Each C starts from the previous C's solution
  of every fold.

The held-out rows of each fold are scored (accuracy, log loss) with its weights.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from .base import proba_scores
from .logreg import residuals

SPREAD = 1.5  # the most a fold's feature scale may differ from all rows' (either way)


def batchable(X: np.ndarray, folds) -> bool:
    """Whether the folds are solved well together: each has at least as many training rows
    as features, and its features' scales are within ``SPREAD`` of all rows' (the shared
    rotation then preconditions every fold's penalty almost as well as its own would)."""
    if min(len(tr) for tr, _ in folds) < X.shape[1]:
        return False
    glob = StandardScaler().fit(X).scale_
    return all(np.all(np.abs(np.log(glob / StandardScaler().fit(X[tr]).scale_)) <= np.log(SPREAD))
               for tr, _ in folds)


class _Folds:
    """All rows standardised and rotated once; each fold's scale, shift and mask."""

    def __init__(self, X: np.ndarray, y: np.ndarray, folds, dev: torch.device):
        self.dev = dev
        self.classes, yi = np.unique(y, return_inverse=True)
        k = len(self.classes)
        self.cols = 1 if k == 2 else k
        glob = StandardScaler().fit(X)
        G = torch.as_tensor(glob.transform(X), dtype=torch.float32, device=dev)
        n, d = G.shape
        self.n, self.d, self.F = n, d, len(folds)
        cov = (G.T @ G).double() / n
        var, R = torch.linalg.eigh(cov)  # one factorisation for every fold and C
        self.var, self.R = var.clamp_min(0), R.float()
        self.Z = G @ self.R  # (n, d): every row in the principal axes
        self.y = torch.as_tensor(yi, device=dev)
        one_hot = torch.nn.functional.one_hot(self.y, max(self.cols, 2)).float()
        # row i of fold f at i * F + f, as the logits (n, F, cols) flatten
        self.y_rep = self.y.repeat_interleave(len(folds))
        self.one_hot_rep = one_hot.repeat_interleave(len(folds), 0)
        self.mask = torch.zeros(n, self.F, dtype=torch.float32, device=dev)
        a, c, counts = [], [], []
        for f, (tr, _) in enumerate(folds):
            own = StandardScaler().fit(X[tr])
            self.mask[tr, f] = 1.0
            a.append(glob.scale_ / own.scale_)  # fold-standardised = global * a + c
            c.append((glob.mean_ - own.mean_) / own.scale_)
            counts.append(len(tr))
        self.a = torch.as_tensor(np.array(a), dtype=torch.float32, device=dev)  # (F, d)
        self.c = torch.as_tensor(np.array(c), dtype=torch.float32, device=dev)
        self.n_f = torch.as_tensor(counts, dtype=torch.float64, device=dev)
        self.folds = folds

    def logits(self, V: torch.Tensor, b: torch.Tensor, rows=slice(None)) -> torch.Tensor:
        """(rows, F, cols): each fold's logits of the rows, V (F, d, cols) in the principal axes."""
        F, d, cols = V.shape
        return (self.Z[rows] @ V.permute(1, 0, 2).reshape(d, F * cols)).view(-1, F, cols) + b

    def penalty_matrix(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(||W_f||^2 per fold, d||W_f||^2/dV_f / 2): W_f = (R V_f) / a_f in the fold's own
        standardised features."""
        F, d, cols = V.shape
        RV = (self.R @ V.permute(1, 0, 2).reshape(d, F * cols)).view(d, F, cols)
        W = RV / self.a.T[:, :, None]
        sq = (W.double() ** 2).sum(dim=(0, 2))
        back = (self.R.T @ (W / self.a.T[:, :, None]).reshape(d, F * cols)).view(d, F, cols).permute(1, 0, 2)
        return sq, back


def sweep(X: np.ndarray, y: np.ndarray, folds, Cs, *, tol: float = 1e-4, max_iter: int = 1000,
          dev: torch.device = torch.device("cpu")) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, log loss), each (folds, C values): every fold's logistic regression at
    every C (in order, each warm-started from the last), scored on its held-out rows."""
    data = _Folds(X, y, folds, dev)
    F, d, cols = data.F, data.d, data.cols
    acc, loss = np.zeros((F, len(Cs))), np.zeros((F, len(Cs)))
    V = torch.zeros(F, d, cols, dtype=torch.float32, device=dev)
    b = torch.zeros(F, cols, dtype=torch.float32, device=dev)
    for j, C in enumerate(Cs):
        V, b = _solve(data, float(C), (V, b), tol=tol, max_iter=max_iter)
        for f, (_, va) in enumerate(folds):
            acc[f, j], loss[f, j] = _score(data, V[f:f + 1], b[f:f + 1], va)
    return acc, loss


def _score(data: _Folds, V: torch.Tensor, b: torch.Tensor, rows: np.ndarray) -> tuple[float, float]:
    """(accuracy, log loss) of one fold's weights on its held-out rows."""
    logit = data.logits(V, b, rows=torch.as_tensor(rows, device=data.dev))[:, 0].double()
    if data.cols == 1:  # scikit-learn's binomial model: the second class's logit
        logit = torch.cat([torch.zeros_like(logit), logit], 1)
    p = torch.softmax(logit, 1).cpu().numpy()
    return proba_scores(p, np.arange(len(data.classes)), data.y[rows].cpu().numpy())


def _solve(data: _Folds, C: float, start: tuple[torch.Tensor, torch.Tensor], *, tol: float, max_iter: int):
    """Every fold's weights (F, d, cols) in the principal axes and intercepts (F, cols) at
    ``C``, from ``start`` (the last C's)."""
    F, d, cols, dev = data.F, data.d, data.cols, data.dev
    lam = 1.0 / (C * data.n_f)  # (F,): each fold's l2 strength for its mean loss
    curv = 1.0 / max(cols, 2)
    scale = (1.0 / torch.sqrt(curv * data.var[None, :] + lam[:, None])).float()  # (F, d)
    bscale = float(1.0 / np.sqrt(curv))
    last = {"theta": None, "gmax": np.inf}

    def unpack(theta):
        t = torch.as_tensor(theta, device=dev, dtype=torch.float32)
        return t[: F * d * cols].view(F, d, cols), t[F * d * cols:].view(F, cols)

    def objective(theta):
        u, c = unpack(theta)
        V, b = scale[:, :, None] * u, bscale * c
        logits = data.logits(V, b)  # (n, F, cols)
        n = logits.shape[0]
        ce, G = residuals(logits.reshape(n * F, cols), data.y_rep, data.one_hot_rep, cols, 1)
        weight = data.mask / data.n_f.float()  # (n, F): each fold's mean over its training rows
        G = G.view(n, F, cols) * weight[:, :, None]
        ce_f = (ce.view(n, F) * weight.double()).sum(0)
        gV = (G.reshape(n, F * cols).T @ data.Z).view(F, cols, d).permute(0, 2, 1)  # (F, d, cols)
        gb = G.sum(0)  # (F, cols)
        sq, back = data.penalty_matrix(V)
        total = ce_f + 0.5 * lam * sq
        gV = gV + lam.float()[:, None, None] * back
        _stopping(data, gV, gb, theta, last)
        grad = torch.cat([(scale[:, :, None] * gV).ravel(), (bscale * gb).ravel()])
        return float(total.sum()), grad.double().cpu().numpy()

    def converged(intermediate_result):
        if last["gmax"] <= tol and np.array_equal(intermediate_result.x, last["theta"]):
            raise StopIteration

    theta0 = torch.cat([(start[0] / scale[:, :, None]).ravel(), (start[1] / bscale).ravel()])
    theta0 = theta0.double().cpu().numpy()
    with threadpool_limits(1, user_api="blas"):
        res = minimize(objective, theta0, jac=True, method="L-BFGS-B", callback=converged,
                       options={"maxiter": max_iter, "maxls": 50, "gtol": 0.0,
                                "ftol": 64 * np.finfo(float).eps})
    u, c = unpack(res.x)
    return scale[:, :, None] * u, bscale * c


def _stopping(data: _Folds, gV: torch.Tensor, gb: torch.Tensor, theta, last: dict) -> None:
    """scikit-learn's stopping rule, fold by fold: the largest gradient component in the
    fold's own standardised features and intercept (W_f = (R V_f) / a_f, b_f = b' - c_f W_f)."""
    F, d, cols = gV.shape
    gW = (data.R @ gV.permute(1, 0, 2).reshape(d, F * cols)).view(d, F, cols) * data.a.T[:, :, None]
    gW = gW + data.c.T[:, :, None] * gb[None, :, :]  # the intercept moves with W through c
    last["theta"] = theta.copy()
    last["gmax"] = float(max(gW.abs().max(), gb.abs().max()))
