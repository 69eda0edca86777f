"""``featx train --max-memory``: logreg, ridge and knn fitted on a store read by blocks
give the in-memory fit's model; a knn trained so reads its store again to predict."""
from __future__ import annotations

import numpy as np
import pytest

import featx
from featx.cli import main
from featx.heads.bundle import load as load_bundle
from support.imagegen import make_folder


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ooc")
    data = make_folder(tmp / "data", {"a": 30, "b": 30, "c": 30})
    val = make_folder(tmp / "val", {"a": 8, "b": 8, "c": 8}, start_seed=500)
    opts = {"image_size": 8, "workers": 0, "batch_size": 32}
    return tmp, data, featx.extract(data, "pixels", tmp / "cache", **opts).path, \
        featx.extract(val, "pixels", tmp / "cache", **opts).path


@pytest.mark.parametrize("head", ["logreg", "ridge", "knn"])
def test_a_capped_fit_reads_by_blocks_and_equals_the_in_memory_fit(stores, head):
    tmp, data, train, val = stores
    X = featx.load(train).X
    whole = featx.train(train, head, val=val)
    capped = featx.train(train, head, val=val, max_memory=X.nbytes // 4)
    assert "streamed" not in whole.metrics
    streamed = capped.metrics["streamed"]
    assert streamed["rows_per_block"] < len(X) and streamed["rows_read"] > len(X)  # several passes
    assert capped.metrics["best_params"] == whole.metrics["best_params"]
    assert capped.metrics["val_accuracy"] == pytest.approx(whole.metrics["val_accuracy"], abs=1 / 24)
    if head == "knn":
        assert capped.metrics["training_stores"] == [str(train.resolve()), str(val.resolve())]
        return
    np.testing.assert_array_equal(capped.model.predict(X), whole.model.predict(X))


@pytest.mark.parametrize("suffix", [".joblib", ".skops"])
def test_a_knn_trained_out_of_core_is_saved_detached_and_predicts_from_its_store(stores, suffix):
    tmp, data, train, val = stores
    out = tmp / f"knn{suffix}"
    rc = main(["train", "--features", str(train), "--head", "knn", "--max-memory", "8K", "--out", str(out),
               "--cache", str(tmp / "cache")])
    assert rc == 0
    bundle = load_bundle(out)
    assert "X_" not in bundle.model.model_.__dict__  # the training rows stay in the store
    got = featx.predict(out, data, cache_dir=tmp / "cache", workers=0)
    reference = featx.predict(featx.train(train, "knn"), data, cache_dir=tmp / "cache", workers=0)
    assert got.labels == reference.labels
    np.testing.assert_allclose(got.proba, reference.proba, atol=1e-9)


def test_max_memory_takes_sizes(stores, capsys):
    tmp, data, train, val = stores
    with pytest.raises(SystemExit):
        main(["train", "--features", str(train), "--head", "logreg", "--max-memory", "lots"])
    assert "'lots' is not a size" in capsys.readouterr().err
