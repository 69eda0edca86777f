"""L2-regularised logistic regression solved with torch: scikit-learn's model, fitted faster.

:class:`TorchLogisticRegression` is scikit-learn's ``LogisticRegression`` (multinomial
for three or more classes, binomial for two, unpenalised intercept) with only ``fit``
replaced. It minimises exactly the same objective,

    mean(cross-entropy) + ||W||^2 / (2 C n),

so it reaches the same optimum, but much faster on wide embeddings:

- the features are centred and rotated onto the principal axes of the training rows
  (an orthogonal change of basis: the penalty and the predictions are unchanged), and
  each axis is rescaled by the inverse square root of its approximate curvature, so
  L-BFGS sees a nearly isotropic problem and needs tens of iterations, not hundreds;
- the loss and gradient are matrix products in float32 on torch (CPU or CUDA), while
  SciPy's L-BFGS-B (the solver scikit-learn itself uses) steps in float64;
- with ``warm_start``, a sweep along the regularisation path starts each fit from the
  previous solution and reuses the rotation of the same rows.

Predictions, probabilities, pickling and ``coef_`` / ``intercept_`` are scikit-learn's.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data
from threadpoolctl import threadpool_limits

from ..core.devices import resolve_device


class TorchLogisticRegression(LogisticRegression):
    """``LogisticRegression(C, max_iter, tol, warm_start)`` fitted by a preconditioned
    L-BFGS on torch; ``device`` is ``auto`` (CUDA when present), ``cpu`` or ``cuda``."""

    def __init__(self, C=1.0, *, tol=1e-4, max_iter=1000, warm_start=False, device="auto"):
        super().__init__(C=C, tol=tol, max_iter=max_iter, warm_start=warm_start)
        self.device = device

    def fit(self, X, y, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("TorchLogisticRegression does not take sample weights")
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        classes, y_idx = np.unique(y, return_inverse=True)
        dev = resolve_device(self.device)
        return self.fit_basis(self._basis(X, dev), torch.as_tensor(y_idx, device=dev), classes)

    def fit_basis(self, basis, y, classes: np.ndarray):
        """Fit on rows given as a basis: :class:`_Basis` (rows in memory), or one that
        streams its rows by blocks (:mod:`featx.heads.streaming_linear`); ``y`` indexes
        ``classes`` row by row, in the form the basis reads (its ``targets``)."""
        self.classes_ = classes
        k = len(self.classes_)
        if k < 2:
            raise ValueError(f"needs samples of at least 2 classes; y has only {k} class")
        cols = 1 if k == 2 else k  # two classes: scikit-learn's binomial model, one column
        start = None
        previous = getattr(self, "coef_", None)
        if self.warm_start and previous is not None and previous.shape == (cols, basis.d):
            start = (self.coef_, self.intercept_)
        W, b, self.n_iter_ = _solve(basis, y, cols, float(self.C), tol=self.tol, max_iter=self.max_iter,
                                    start=start)
        self.coef_, self.intercept_ = W.T, b
        return self

    def _basis(self, X: np.ndarray, dev: torch.device) -> _Basis:
        """The rotated training rows; reused while warm-starting on the same rows."""
        cached = getattr(self, "_basis_cache", None)
        if self.warm_start and cached is not None and cached.matches(X, dev):
            return cached
        self._basis_cache = _Basis(X, dev) if self.warm_start else None
        return self._basis_cache or _Basis(X, dev)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_basis_cache", None)  # rows on a device: not part of the model
        return state


class _Basis:
    """Training rows centred and rotated onto their principal axes, in float32 on ``dev``.

    What :func:`_solve` reads of a basis: ``n``, ``d``, ``dev``, ``mean`` (the rows'
    mean), ``var`` and ``axes`` (eigenvalues and eigenvectors of their covariance, all
    float64), ``targets(y, cols)`` and ``cross_entropy(W, b, targets, cols)``.
    """

    def __init__(self, X: np.ndarray, dev: torch.device):
        self.shape, self.dev = X.shape, dev
        self.n, self.d = X.shape
        self.fingerprint = _fingerprint(X)
        Xt = torch.as_tensor(X, device=dev, dtype=torch.float32)
        self.mean = Xt.double().mean(0)
        Xc = Xt - self.mean.float()
        cov = (Xc.T @ Xc).double() / len(X)
        self.var, self.axes = torch.linalg.eigh(cov)  # float64, ascending
        self.var = self.var.clamp_min(0)
        self.Z = Xc @ self.axes.float()  # (n, d): the rows in the principal-axis basis

    def matches(self, X: np.ndarray, dev: torch.device) -> bool:
        return X.shape == self.shape and dev == self.dev and _fingerprint(X) == self.fingerprint

    def targets(self, y: torch.Tensor, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        return y, torch.nn.functional.one_hot(y, max(cols, 2)).float()

    def cross_entropy(self, W: torch.Tensor, b: torch.Tensor, targets, cols: int):
        """The mean cross-entropy (float64) of the rows with weights ``W`` (d, cols) and
        intercepts ``b`` in the rotated basis, and its gradient in ``W`` and ``b``."""
        y, one_hot = targets
        ce, G = residuals(self.Z @ W + b, y, one_hot, cols, self.n)
        return ce.mean(), (G.T @ self.Z).T, G.sum(0)  # G.T @ Z: faster than Z.T @ G for a tall Z


def residuals(logits: torch.Tensor, y: torch.Tensor, one_hot: torch.Tensor, cols: int, n: int):
    """Per-row cross-entropy (float64) of ``logits`` (rows, cols) against class indices
    ``y``, and the residuals ``(softmax - one_hot) / n`` whose products with the rows give
    the gradient of the mean over ``n`` rows; one column: scikit-learn's binomial model."""
    if cols == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], 1)
    lse = torch.logsumexp(logits, 1, keepdim=True)
    ce = (lse - logits.gather(1, y[:, None])).double()
    G = (torch.exp(logits - lse) - one_hot) / n
    return ce, (G[:, 1:] if cols == 1 else G)


def _fingerprint(X: np.ndarray) -> tuple:
    # cheap identity for "the same rows as last time" within a sweep
    return (X.ctypes.data, float(np.asarray(X[:: max(1, len(X) // 64)], dtype=np.float64).sum()))


def _solve(basis: _Basis, y, cols: int, C: float, *, tol: float, max_iter: int, start):
    n, d = basis.n, basis.d
    dev = basis.dev
    lam = 1.0 / (C * n)  # scikit-learn's l2_reg_strength for the mean loss
    # Curvature of the mean cross-entropy along axis j is about (1/k) * var_j; the scale
    # makes every coordinate's curvature near 1 (preconditioning by a change of variables).
    curv = 1.0 / max(cols, 2)
    scale = (1.0 / torch.sqrt(curv * basis.var + lam)).float()  # (d,)
    bscale = float(1.0 / np.sqrt(curv))
    targets = basis.targets(y, cols)

    def unpack(theta):
        t = torch.as_tensor(theta, device=dev, dtype=torch.float32)
        return t[: d * cols].view(d, cols), t[d * cols:]

    def objective(theta):
        u, c = unpack(theta)
        W, b = scale[:, None] * u, bscale * c  # the weights in the rotated basis
        loss, gW, gb = basis.cross_entropy(W, b, targets, cols)
        loss = loss + 0.5 * lam * (W.double() ** 2).sum()
        gW = gW + lam * W
        # scikit-learn's stopping rule looks at the gradient in the features' own axes
        g_orig = basis.axes @ gW.double() + basis.mean[:, None] * gb.double()[None, :]
        last["theta"], last["gmax"] = theta.copy(), float(max(g_orig.abs().max(), gb.abs().max()))
        grad = torch.cat([(scale[:, None] * gW).ravel(), bscale * gb])
        return float(loss), grad.double().cpu().numpy()

    last = {"theta": None, "gmax": np.inf}

    def converged(intermediate_result):
        # L-BFGS-B evaluates last at the point it accepts; stop where scikit-learn would
        if last["gmax"] <= tol and np.array_equal(intermediate_result.x, last["theta"]):
            raise StopIteration

    theta0 = np.zeros(d * cols + cols)
    if start is not None:
        W0, b0 = (torch.as_tensor(a, device=dev, dtype=torch.float64) for a in start)
        Wr = basis.axes.T @ W0.T  # (d, cols) in the rotated basis
        b0 = b0 + basis.mean @ W0.T
        theta0 = torch.cat([(Wr / scale.double()[:, None]).ravel(), b0 / bscale]).cpu().numpy()
    # SciPy's BLAS threads would spin against torch's for the same cores
    with threadpool_limits(1, user_api="blas"):
        res = minimize(objective, theta0, jac=True, method="L-BFGS-B", callback=converged,
                       options={"maxiter": max_iter, "maxls": 50, "gtol": 0.0,
                                "ftol": 64 * np.finfo(float).eps})
    u, c = (torch.as_tensor(a, device=dev, dtype=torch.float64)
            for a in (res.x[: d * cols], res.x[d * cols:]))
    Wr = scale.double()[:, None] * u.view(d, cols)
    W = basis.axes @ Wr  # back to the features' own axes
    b = bscale * c - basis.mean @ W
    return W.cpu().numpy(), b.cpu().numpy(), np.array([res.nit])
