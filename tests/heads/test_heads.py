"""The heads: real scikit-learn estimators that follow the validation protocol."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx.core.errors import FeatxError
from featx.heads import C_GRID, HEADS, LogRegHead, _RowSpan, make_head


# two folds: the cross-validated path, at a fraction of five folds' cost over some 300 checks
@parametrize_with_checks([cls(cv_folds=2) for cls in HEADS.values()])
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def _data(n=300, d=40, classes=3, seed=0):
    return make_classification(n, d, n_informative=10, n_classes=classes, random_state=seed)


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_drops_into_pipeline_and_cross_val_score(name):
    X, y = _data()
    scores = cross_val_score(make_pipeline(StandardScaler(), make_head(name)), X, y, cv=3)
    assert scores.mean() > 0.6  # well above chance (1/3) on learnable data


def test_logreg_sweeps_at_least_20_values_and_picks_the_best_on_the_validation_rows():
    X, y = _data()
    val = np.zeros(len(y), bool)
    val[200:] = True
    head = LogRegHead().fit(X, y, val_mask=val)
    assert len(head.val_scores_) >= 20 and len(C_GRID) >= 20
    # The same sweep done by hand: fresh scikit-learn fits on the training rows, scored on val.
    scaler = StandardScaler().fit(X[~val])
    accs = [np.mean(LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(X[~val]), y[~val])
                    .predict(scaler.transform(X[val])) == y[val]) for c in C_GRID]
    assert [s["accuracy"] for s in head.val_scores_] == pytest.approx(accs, abs=0.011)
    assert head.val_accuracy_ == pytest.approx(max(accs), abs=0.011)
    assert head.best_params_["C"] in [c for c, a in zip(C_GRID, accs) if a >= max(accs) - 0.011]
    assert head.selected_on_validation_


def test_the_chosen_model_is_refit_on_train_and_validation():
    X, y = _data()
    val = np.r_[np.zeros(200, bool), np.ones(100, bool)]
    head = make_head("knn").fit(X, y, val_mask=val)
    assert head.model_.X_.shape[0] == len(y)


def test_without_a_val_mask_a_seeded_stratified_split_is_used():
    X, y = _data()
    a = make_head("logreg", random_state=3).fit(X, y)
    b = make_head("logreg", random_state=3).fit(X, y)
    c = make_head("logreg", random_state=4).fit(X, y)
    assert a.val_scores_ == b.val_scores_
    assert a.val_scores_ != c.val_scores_


def test_too_few_examples_to_split_use_the_default_and_say_so():
    X = np.random.default_rng(0).normal(size=(3, 5))
    head = make_head("logreg").fit(X, np.array([0, 1, 2]))  # one example per class
    assert not head.selected_on_validation_ and head.val_accuracy_ is None
    assert head.best_params_ == {"C": float(C_GRID[LogRegHead.default_index])}


def test_row_span_projection_gives_the_same_model_with_fewer_features():
    X, y = _data(n=60, d=500)
    Xs = StandardScaler().fit_transform(X)
    full = LogisticRegression(C=0.1, max_iter=5000, tol=1e-8).fit(Xs, y)
    span = make_pipeline(_RowSpan(), LogisticRegression(C=0.1, max_iter=5000, tol=1e-8)).fit(Xs, y)
    assert span[0].basis_.shape == (500, 60)
    Xn = np.random.default_rng(1).normal(size=(20, 500))
    np.testing.assert_allclose(span.predict_proba(Xn), full.predict_proba(Xn), atol=1e-4)


@pytest.mark.parametrize("name", ["linear_svm", "ridge", "nearest_centroid"])
def test_margin_heads_give_calibrated_probabilities_without_changing_predictions(name):
    X, y = _data()
    head = make_head(name).fit(X, y)
    p = head.predict_proba(X)
    assert np.allclose(p.sum(axis=1), 1)
    assert np.array_equal(head.classes_[p.argmax(axis=1)], head.predict(X))
    assert head.temperature_ != 1.0  # fitted on the validation rows


def test_unknown_head_names_the_choices():
    with pytest.raises(FeatxError, match="unknown head 'logregg'.*logreg"):
        make_head("logregg")


def test_a_sweep_in_parts_gives_the_same_choice_on_loky_and_on_a_dask_cluster():
    pytest.importorskip("dask.distributed")
    from sklearn.datasets import make_classification

    from featx.heads import make_head
    from featx.heads.sweeps import sweep_backend

    X, y = make_classification(600, 40, n_informative=12, n_classes=3, random_state=0)
    X_test, y_test = X[450:], y[450:]
    fits = {}
    for backend in ("loky", "dask"):
        with sweep_backend(backend, workers=2):
            fits[backend] = make_head("logreg", n_jobs=2, device="cpu").fit(X[:450], y[:450])
    loky, dask = fits["loky"], fits["dask"]
    assert loky.best_params_ == dask.best_params_
    assert [s["accuracy"] for s in loky.val_scores_] == [s["accuracy"] for s in dask.val_scores_]
    assert loky.score(X_test, y_test) == dask.score(X_test, y_test)
    # and the parts add up to the whole grid that one process sweeps
    alone = make_head("logreg", device="cpu").fit(X[:450], y[:450])
    assert len(loky.val_scores_) == len(alone.val_scores_) == 25


def test_an_unknown_or_missing_sweep_backend_is_one_clear_error(monkeypatch):
    import builtins

    from featx.core.errors import FeatxError
    from featx.heads.sweeps import sweep_backend

    unknown = "sweep_backend='spark': choose loky, dask, ray"
    with pytest.raises(FeatxError, match=unknown), sweep_backend("spark"):
        pass
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a,
                        **k: (_ for _ in ()).throw(ImportError(name)) if name.startswith("ray")
                        else real(name, *a, **k))
    with pytest.raises(FeatxError, match=r"ray is not installed \(pip install ray\)"), sweep_backend("ray"):
        pass
