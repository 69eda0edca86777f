"""The torch logistic regression reaches scikit-learn's optimum; batched kNN gives
scikit-learn's neighbours and votes."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer

from featx.heads import C_GRID, make_head
from featx.heads.knn import CosineKNN
from featx.heads.logreg import TorchLogisticRegression


def blobs(n=600, d=40, k=4, seed=0, spread=2.0):
    """Overlapping Gaussian classes with correlated features (an ill-conditioned problem)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, spread / np.sqrt(d), (k, d))
    y = rng.integers(0, k, n)
    mix = rng.normal(size=(d, d)) * np.logspace(0, -2, d)  # very unequal feature scales
    return (rng.normal(size=(n, d)) + centres[y] * np.sqrt(d)) @ mix, y


def _logits(model, X):
    z = X @ model.coef_.T + model.intercept_
    return np.hstack([np.zeros_like(z), z]) if z.shape[1] == 1 else z


def objective(model, X, y):
    """scikit-learn's objective, in float64: mean cross-entropy + ||W||^2 / (2 C n)."""
    z = _logits(model, X)
    picked = z[np.arange(len(y)), np.searchsorted(model.classes_, y)]
    return np.mean(logsumexp(z, axis=1) - picked) + (model.coef_ ** 2).sum() / (2 * model.C * len(y))


def largest_gradient(model, X, y):
    """The largest component of the objective's gradient (weights and intercept), in
    float64: what scikit-learn's L-BFGS stopping rule compares with ``tol``."""
    z = _logits(model, X)
    G = (softmax(z, axis=1) - np.eye(z.shape[1])[np.searchsorted(model.classes_, y)]) / len(y)
    if model.coef_.shape[0] == 1:  # binomial: one column, the second class's
        G = G[:, 1:]
    return max(np.abs(G.T @ X + model.coef_ / (model.C * len(y))).max(), np.abs(G.sum(0)).max())


# Our solver evaluates its gradient in float32; recomputed in float64 it may differ by
# rounding, so the stopping rule is checked with this much room.
FLOAT32_ROOM = 1.1


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("C", [1e-3, 1.0, 100.0])
def test_gets_at_least_as_close_to_the_optimum_as_scikit_learn(k, C):
    X, y = blobs(k=k, spread=1.0)
    optimum = LogisticRegression(C=C, tol=1e-10, max_iter=20000).fit(X, y)  # converged tightly
    sk = LogisticRegression(C=C, max_iter=1000).fit(X, y)  # the same tolerance as ours
    ours = TorchLogisticRegression(C=C, device="cpu").fit(X, y)
    assert ours.coef_.shape == optimum.coef_.shape == ((1 if k == 2 else k), X.shape[1])
    # Closeness in the objective, the quantity both solvers minimise, not in probabilities:
    # at C = 100 the classes are nearly separable and the probabilities saturate, so two
    # points equally close to the optimum may differ there by more than any fixed bound.
    assert objective(optimum, X, y) <= objective(ours, X, y) <= objective(sk, X, y) + 1e-9
    # ... and it stopped where scikit-learn's own rule lets it stop.
    assert largest_gradient(ours, X, y) <= FLOAT32_ROOM * ours.tol
    assert largest_gradient(sk, X, y) <= FLOAT32_ROOM * sk.tol  # the rule, checked on scikit-learn itself


def test_warm_start_along_the_path_matches_fresh_fits():
    X, y = blobs(k=3, seed=1, spread=1.0)
    warm = TorchLogisticRegression(warm_start=True, device="cpu")
    for C in C_GRID[8:20:3]:
        warm.set_params(C=C).fit(X, y)
        fresh = TorchLogisticRegression(C=C, device="cpu").fit(X, y)
        assert objective(warm, X, y) == pytest.approx(objective(fresh, X, y), rel=1e-3)
        assert largest_gradient(warm, X, y) <= FLOAT32_ROOM * warm.tol


def test_the_rotation_is_not_part_of_a_saved_model():
    X, y = blobs()
    m = TorchLogisticRegression(C=0.1, warm_start=True, device="cpu").fit(X, y)
    assert m._basis_cache is not None
    back = pickle.loads(pickle.dumps(m))
    assert not hasattr(back, "_basis_cache") or back._basis_cache is None
    np.testing.assert_array_equal(back.predict_proba(X), m.predict_proba(X))
    assert len(pickle.dumps(m)) < X.nbytes  # the rows are not saved with it


def test_logreg_head_chooses_the_same_C_as_fresh_scikit_learn_fits():
    X, y = blobs(n=800, d=60, k=5, seed=2, spread=1.0)
    head = make_head("logreg", device="cpu", cv_below=0).fit(X, y)  # on one validation split
    tr, va = np.flatnonzero(~np.isin(np.arange(len(y)), _val_rows(head, y))), _val_rows(head, y)
    from sklearn.preprocessing import StandardScaler
    s = StandardScaler().fit(X[tr])
    accs = [np.mean(LogisticRegression(C=c, tol=1e-8, max_iter=5000).fit(s.transform(X[tr]), y[tr])
                    .predict(s.transform(X[va])) == y[va]) for c in C_GRID]
    ours = [row["accuracy"] for row in head.val_scores_]
    assert np.abs(np.array(ours) - np.array(accs)).max() <= 2 / len(va)  # a row or two at most
    near_best = np.flatnonzero(np.array(accs) >= max(accs) - 1 / len(va))
    assert head.best_params_["C"] in {float(C_GRID[i]) for i in near_best}


def _val_rows(head, y):
    from featx.heads import validation_split
    return validation_split(y, head.val_fraction, head.random_state)[1]


def test_fewer_rows_than_features_still_reaches_the_optimum():
    X, y = blobs(n=40, d=200, k=3, seed=3)
    sk = LogisticRegression(C=0.05, max_iter=1000).fit(X, y)
    ours = TorchLogisticRegression(C=0.05, device="cpu").fit(X, y)
    assert objective(ours, X, y) <= objective(sk, X, y) + 1e-9


def test_refuses_a_single_class():
    with pytest.raises(ValueError, match="at least 2 classes"):
        TorchLogisticRegression().fit(np.ones((4, 2)), np.zeros(4))


# -- kNN -------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 5, 50])
def test_cosine_knn_matches_scikit_learn(k):
    X, y = blobs(n=500, d=30, k=4, seed=4)
    Xq, _ = blobs(n=200, d=30, k=4, seed=5)
    ref = make_pipeline(Normalizer(), KNeighborsClassifier(k, weights="distance", algorithm="brute")).fit(X,
                                                                                                          y)
    ours = CosineKNN(k, device="cpu").fit(X, y)
    np.testing.assert_array_equal(ours.predict(Xq), ref.predict(Xq))
    np.testing.assert_allclose(ours.predict_proba(Xq), ref.predict_proba(Xq), atol=1e-5)


def test_cosine_knn_query_on_a_training_row_takes_its_label():
    X, y = blobs(n=300, d=20, k=3, seed=6)
    ours = CosineKNN(20, device="cpu").fit(X, y)
    np.testing.assert_array_equal(ours.predict(X), y)


def test_knn_head_sweep_scores_equal_one_fit_per_k():
    X, y = blobs(n=400, d=25, k=3, seed=7, spread=0.7)
    head = make_head("knn", device="cpu", cv_below=0).fit(X, y)  # on one validation split
    va = _val_rows(head, y)
    tr = np.setdiff1d(np.arange(len(y)), va)
    for row in head.val_scores_:
        m = CosineKNN(row["n_neighbors"], device="cpu").fit(X[tr], y[tr])
        assert row["accuracy"] == pytest.approx(np.mean(m.predict(X[va]) == y[va]))
