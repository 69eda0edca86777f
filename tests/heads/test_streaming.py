"""Heads fitted out of core: rows read from an HDF5 file by blocks under a memory cap reach
the same models as the in-memory heads (same hyper-parameter, same predictions)."""
from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
from sklearn.datasets import make_classification

from featx.core.errors import FeatxError
from featx.heads import make_head
from featx.heads.bundle import Bundle
from featx.heads.bundle import load as load_model
from featx.heads.bundle import save as save_model
from featx.heads.knn import CosineKNN
from featx.heads.streaming import (
    StreamingCosineKNN,
    blocks,
    default_max_memory,
    fit_streaming,
    predict_proba_streaming,
    predict_streaming,
    rows_per_block,
)

N_TRAIN, N_TEST, D = 20000, 5000, 256


class Recording:
    """A lazy array that reads through ``h5py`` and records every read; it refuses anything
    but a plain slice (no fancy indexing of the whole matrix)."""

    def __init__(self, dataset):
        self.dataset, self.shape, self.dtype = dataset, dataset.shape, dataset.dtype
        self.reads: list[int] = []

    def __getitem__(self, key):
        assert isinstance(key, slice) and key.step is None, f"read with {key!r}, not a slice"
        rows = self.dataset[key]
        self.reads.append(len(rows))
        return rows


def _features(n, d, classes, seed):
    """Features with real class structure: clusters per class, redundant and noisy
    dimensions, unequal scales and offsets (as a network's pooled features have)."""
    X, y = make_classification(n, d, n_informative=min(40, d // 2), n_redundant=min(20, d // 4),
                               n_classes=classes, n_clusters_per_class=2, class_sep=2.0, flip_y=0.02,
                               random_state=seed)
    rng = np.random.default_rng(seed)
    X = X * rng.uniform(0.2, 5.0, d) + rng.normal(0, 10, d)
    return X.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """20,000 training and 5,000 test rows of 256 float32 features in an HDF5 file."""
    X, y = _features(N_TRAIN + N_TEST, D, 10, seed=0)
    path = tmp_path_factory.mktemp("streaming") / "features.h5"
    with h5py.File(path, "w") as f:
        f["train"], f["test"] = X[:N_TRAIN], X[N_TRAIN:]
    with h5py.File(path, "r") as f:
        yield f, X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]


def _kw(name):
    return {} if name == "ridge" else {"device": "cpu"}


def test_blocks_read_every_row_once_by_slices():
    X = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
    seen = list(blocks(X, 5))
    assert [s for s, _ in seen] == [0, 5, 10, 15, 20]
    np.testing.assert_array_equal(np.concatenate([b for _, b in seen]), X)
    assert rows_per_block(6 * 3 * 4 * 10, 3) == 10 and rows_per_block(1, 3) == 1
    assert default_max_memory() >= 1 << 24


@pytest.mark.parametrize("name", ["logreg", "ridge", "knn"])
def test_streamed_head_chooses_and_predicts_as_the_in_memory_head(store, name):
    f, Xtr, ytr, Xte, yte = store
    lazy = Recording(f["train"])
    cap = Xtr.nbytes // 2  # below the data: many blocks
    memory = make_head(name, **_kw(name)).fit(Xtr, ytr)
    streamed = fit_streaming(lazy, ytr, name, max_memory=cap, **_kw(name))

    assert streamed.best_params_ == memory.best_params_
    assert streamed.selected_on_validation_ and memory.selected_on_validation_
    n_val = round(0.2 * N_TRAIN)
    assert [s["accuracy"] for s in streamed.val_scores_] == pytest.approx(
        [s["accuracy"] for s in memory.val_scores_], abs=2 / n_val)  # a row or two at most
    assert streamed.val_accuracy_ == pytest.approx(memory.val_accuracy_, abs=1 / n_val)
    np.testing.assert_array_equal(streamed.classes_, memory.classes_)

    # the cap: several blocks, each (with its working copies) within it
    assert len(lazy.reads) > 1 and streamed.tally_.blocks > 1
    assert max(lazy.reads) * D * 4 <= cap

    # the test rows, read lazily too
    test = Recording(f["test"])
    ours, theirs = streamed.predict(test), memory.predict(Xte)
    assert abs(np.mean(ours == yte) - np.mean(theirs == yte)) <= 0.001
    assert np.mean(ours == theirs) >= 0.999
    assert max(test.reads) * D * 4 <= cap and len(test.reads) > 1
    some = Xte[:1000]
    np.testing.assert_allclose(streamed.predict_proba(some), memory.predict_proba(some), atol=0.02)


@pytest.mark.parametrize("name", ["logreg", "ridge", "knn"])
def test_two_classes_a_validation_mask_and_unlabelled_rows(name):
    X, y = _features(3000, 64, 2, seed=1)
    X = X.astype(np.float64)  # read as they are stored; the solvers' precision as in memory
    y[::7] = -1  # unlabelled: left out, as featx.heads.fitting.fit leaves them out
    val = np.zeros(len(y), bool)
    val[2200:] = True
    known = y >= 0
    memory = make_head(name, **_kw(name)).fit(X[known], y[known], val_mask=val[known])
    streamed = fit_streaming(X, y, name, max_memory=X.nbytes, val_mask=val, **_kw(name))  # 6+ blocks
    assert streamed.best_params_ == memory.best_params_
    assert streamed.val_accuracy_ == pytest.approx(memory.val_accuracy_, abs=1 / val[known].sum())
    assert np.mean(streamed.predict(X) == memory.predict(X)) >= 0.999
    if name == "ridge":  # the margin's temperature, fitted on the validation rows
        assert streamed.temperature_ == pytest.approx(memory.temperature_, rel=1e-3)


@pytest.mark.parametrize("name", ["logreg", "ridge", "knn"])
def test_too_few_rows_to_split_use_the_default(name):
    X, y = _features(60, 20, 2, seed=2)
    y[0] = 2  # one row of class 2: no stratified split
    memory = make_head(name, **_kw(name)).fit(X, y)
    streamed = fit_streaming(X, y, name, max_memory=X.nbytes // 3, **_kw(name))
    assert not streamed.selected_on_validation_ and streamed.val_accuracy_ is None
    assert streamed.best_params_ == memory.best_params_
    np.testing.assert_array_equal(streamed.predict(X), memory.predict(X))


@pytest.mark.parametrize("name", ["logreg", "ridge"])
@pytest.mark.parametrize("suffix", [".joblib", ".skops"])
def test_linear_heads_save_as_ordinary_bundles(tmp_path, name, suffix):
    X, y = _features(2000, 30, 3, seed=3)
    streamed = fit_streaming(X, y, name, max_memory=X.nbytes, **_kw(name))
    head = streamed.to_head()
    assert type(head) is type(make_head(name))  # the in-memory head, its pipeline fitted
    provenance = {"backbone": {"name": "test"}, "precision": "fp32"}
    bundle = Bundle.fitted(head, name, provenance, ["a", "b", "c"], "pooled", {})
    path = save_model(bundle, tmp_path / f"m{suffix}")
    loaded = load_model(path).model
    np.testing.assert_array_equal(loaded.predict(X), streamed.predict(X))
    np.testing.assert_allclose(loaded.predict_proba(X), streamed.predict_proba(X))
    lazy = Recording(X)
    np.testing.assert_allclose(predict_proba_streaming(loaded, lazy, max_memory=X.nbytes),
                               streamed.predict_proba(X))
    assert len(lazy.reads) > 1


def test_knn_keeps_a_reference_to_its_rows_not_a_copy(store):
    f, Xtr, ytr, Xte, _ = store
    rows = slice(0, 3000)
    with h5py.File(f.filename, "r") as g:
        lazy = Recording(g["train"])
        y = np.full(N_TRAIN, -1)
        y[rows] = ytr[rows]
        streamed = fit_streaming(lazy, y, "knn", max_memory=Xtr[rows].nbytes, device="cpu")
        model = streamed.model_
        assert isinstance(model, StreamingCosineKNN) and model.X_ is lazy and model.rows_.sum() == 3000
        with pytest.raises(TypeError, match="training rows"):
            pickle.dumps(model)
        saved = pickle.loads(pickle.dumps(model.detached()))  # saved beside the store's path
        assert not hasattr(saved, "X_")
        with pytest.raises(ValueError, match="attach"):
            saved.predict(Xte[:5])
        with pytest.raises(ValueError, match="shape"):
            saved.attach(Xte)
        np.testing.assert_array_equal(saved.attach(lazy).predict(Xte[:200]), model.predict(Xte[:200]))
        in_memory = streamed.to_head().model_
        assert isinstance(in_memory, CosineKNN) and in_memory.X_.shape == (3000, D)
        queries = Xte[:500]
        np.testing.assert_array_equal(predict_streaming(streamed, queries), in_memory.predict(queries))
        np.testing.assert_array_equal(streamed.predict(queries), in_memory.predict(queries))


def test_refuses_heads_that_do_not_stream_and_bad_inputs():
    X, y = _features(200, 10, 2, seed=4)
    with pytest.raises(FeatxError, match="cannot stream"):
        fit_streaming(X, y, "hgb")
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_streaming(X, np.zeros(200, np.int64), "ridge")
    with pytest.raises(ValueError, match="val_mask"):
        fit_streaming(X, y, "ridge", val_mask=np.ones(5, bool))
    with pytest.raises(ValueError, match="integer"):
        fit_streaming(X, y.astype(float), "ridge")
