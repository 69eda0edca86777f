"""Below ``cv_below`` rows the heads choose by stratified k-fold cross-validation."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.metrics import log_loss
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from featx.heads import make_head
from featx.heads.fitting import fit


def _data(n=240, seed=0):
    return make_classification(n, 30, n_informative=6, n_classes=3, flip_y=0.1, random_state=seed)


def _folds(y, k=5, seed=0):
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def test_a_margin_head_chooses_what_grid_search_chooses_on_the_same_folds():
    X, y = _data()
    head = make_head("ridge", random_state=0).fit(X, y)
    alphas = [c["alpha"] for c in head._candidates(y)]
    grid = GridSearchCV(head._build(alphas[0]), {"ridgeclassifier__alpha": alphas}, cv=_folds(y),
                        scoring="accuracy").fit(X, y)
    assert head.best_params_["alpha"] == grid.best_params_["ridgeclassifier__alpha"]
    assert head.val_accuracy_ == pytest.approx(grid.best_score_)
    assert head.cv_["fold_accuracies"] == pytest.approx(
        [grid.cv_results_[f"split{f}_test_score"][grid.best_index_] for f in range(5)])
    assert head.selection_ == "5-fold cross-validation"


def test_a_probabilistic_head_breaks_ties_by_log_loss_as_a_matching_grid_search_does():
    X, y = _data(seed=1)
    head = make_head("knn", random_state=0, device="cpu").fit(X, y)
    ks = [c["n_neighbors"] for c in head._candidates(y[_folds(y)[0][0]])]

    def accuracy_then_loss(model, Xv, yv):  # accuracy first; among equal accuracies the lower log loss
        p = model.predict_proba(Xv)
        return np.mean(model.classes_[p.argmax(1)] == yv) - 1e-9 * log_loss(yv, p, labels=model.classes_)

    grid = GridSearchCV(head._build(ks[0]), {"n_neighbors": ks}, cv=_folds(y),
                        scoring=accuracy_then_loss).fit(X, y)
    assert head.best_params_["n_neighbors"] == grid.best_params_["n_neighbors"]
    assert head.val_accuracy_ == pytest.approx(grid.best_score_, abs=1e-6)


def test_from_cv_below_rows_or_with_a_validation_source_one_split_is_used():
    X, y = _data()
    assert make_head("ridge", cv_below=200).fit(X, y).selection_ == "validation split"
    val = np.zeros(len(y), bool)
    val[::4] = True
    head = make_head("ridge").fit(X, y, val_mask=val)
    assert head.selection_ == "validation split" and head.cv_ is None
    assert make_head("ridge", cv_folds=3).fit(X, y).cv_["folds"] == 3


def test_the_metrics_say_how_the_head_was_chosen_with_the_spread_across_folds():
    X, y = _data()
    metrics = fit(X, y, "nearest_centroid").metrics  # one candidate: its accuracy across folds
    assert metrics["selection"] == "5-fold cross-validation"
    cv = metrics["cv"]
    assert len(cv["fold_accuracies"]) == 5 and cv["accuracy"] == pytest.approx(np.mean(cv["fold_accuracies"]))
    assert cv["accuracy_std"] == pytest.approx(np.std(cv["fold_accuracies"], ddof=1))


def test_a_margin_head_is_calibrated_on_out_of_fold_decisions():
    X, y = _data()
    head = make_head("linear_svm").fit(X, y)
    p = head.predict_proba(X)
    assert head.temperature_ != 1.0 and np.allclose(p.sum(1), 1)
    assert (head.classes_[p.argmax(1)] == head.predict(X)).all()  # calibration leaves predictions alone


@pytest.mark.parametrize("classes", [3, 2])
def test_logregs_folds_solved_together_score_what_each_fold_fitted_alone_scores(classes):
    """The batched sweep (one factorisation, every fold in one L-BFGS) against scikit-learn's
    own StandardScaler -> LogisticRegression fitted fold by fold: the same accuracies, the
    same log losses to the solvers' tolerance, and so the same chosen C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from featx.heads import C_GRID
    from featx.heads.logreg_folds import batchable, sweep

    X, y = make_classification(500, 20, n_informative=8, n_classes=classes, flip_y=0.05, random_state=3)
    X = X * np.linspace(0.5, 40, 20)  # features on very different scales, as embeddings are
    folds = _folds(y)
    assert batchable(X, folds)
    Cs = C_GRID[6:20]
    acc, loss = sweep(X, y, folds, Cs)
    for f, (tr, va) in enumerate(folds):
        for j, C in enumerate(Cs):
            ref = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-10, max_iter=10_000))
            p = ref.fit(X[tr], y[tr]).predict_proba(X[va])
            assert acc[f, j] == pytest.approx(np.mean(p.argmax(1) == y[va]), abs=1 / len(va) + 1e-9)
            assert loss[f, j] == pytest.approx(log_loss(y[va], p), rel=2e-3)
    head = make_head("logreg", random_state=0, device="cpu").fit(X, y)
    plain = make_head("logreg", random_state=0, device="cpu")
    plain._sweep_folds = lambda c, X_, y_, f: type(plain).__mro__[1]._sweep_folds(plain, c, X_, y_, f)
    plain.fit(X, y)
    assert head.best_params_ == plain.best_params_
    assert head.cv_["fold_accuracies"] == pytest.approx(plain.cv_["fold_accuracies"], abs=0.011)


def test_folds_too_small_or_too_unlike_all_rows_are_swept_one_by_one():
    from featx.heads.logreg_folds import batchable

    X, y = _data()  # 192 training rows per fold, 30 features
    folds = _folds(y)
    assert batchable(X, folds)
    assert not batchable(np.hstack([X] * 8), folds)  # 240 features: more than a fold's rows
    skewed = X.copy()
    skewed[folds[0][1], 0] *= 40  # the rows fold 0 holds out: its training rows' scale differs
    assert not batchable(skewed, folds)
