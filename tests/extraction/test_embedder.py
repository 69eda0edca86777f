"""featx.ImageEmbedder: image paths in, features out, through the cache, as a
scikit-learn transformer."""
from __future__ import annotations

import logging
import os
import pickle
import tarfile

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from featx import ImageEmbedder, extract, load
from featx.core.errors import SourceError
from featx.extraction import runtimes
from support.imagegen import make_folder


def _embedded(caplog) -> list[int]:
    """Images put through the network, per extraction, from featx's log records."""
    return [r.extract_result.embedded for r in caplog.records if hasattr(r, "extract_result")]


def _paths(root, split):
    paths = sorted(str(p) for p in (root / split).glob("*/*.jpg"))
    return paths, [p.split("/")[-2] for p in paths]


def test_a_pipeline_on_image_paths_scores_the_hymenoptera_tutorial_and_refits_from_the_cache(
        hymenoptera, tmp_path, caplog):
    with tarfile.open(hymenoptera) as tf:
        tf.extractall(tmp_path, filter="data")
    root = tmp_path / "hymenoptera"
    (X_train, y_train), (X_val, y_val) = _paths(root, "train"), _paths(root, "val")
    clf = make_pipeline(ImageEmbedder("efficientnet_lite0", cache_dir=tmp_path / "cache"),
                        LogisticRegression(max_iter=2000))
    with caplog.at_level(logging.INFO, logger="featx"):
        clf.fit(X_train, y_train)
        score = clf.score(X_val, y_val)
        assert _embedded(caplog) == [len(X_train), len(X_val)]
        caplog.clear()
        clone(clf).fit(X_train, y_train)
    print(f"hymenoptera val accuracy: {score:.4f} ({len(X_train)} train, {len(X_val)} val images)")
    assert score >= 0.93
    assert _embedded(caplog) == [0]  # the second fit embeds nothing


@pytest.fixture()
def photos(tmp_path):
    return [str(p) for p in sorted(make_folder(tmp_path / "photos", {"a": 6, "b": 6}).glob("*/*.jpg"))]


def test_rows_follow_the_paths_whatever_their_order_subset_or_repeats(photos, tmp_path, caplog, monkeypatch):
    emb = ImageEmbedder("efficientnet_lite0", cache_dir=tmp_path / "cache", image_size=64, layers=("blocks.3",
                                                                                                   ))
    everything = emb.fit_transform(photos)
    assert everything.shape == (12, 1280 + 80) and len(emb.get_feature_names_out()) == 1280 + 80
    store = next((tmp_path / "cache").glob("*.h5"))
    written = store.stat().st_mtime_ns
    order = [5, 0, 0, 11, 3]
    with caplog.at_level(logging.INFO, logger="featx"):
        again = emb.transform([photos[i] for i in order])
    assert _embedded(caplog) == [0] and store.stat().st_mtime_ns == written  # nothing embedded or rewritten
    np.testing.assert_array_equal(again, everything[order])
    # the features are those featx extract computes for the same images when it too runs
    # eagerly (on the CPU it runs OpenVINO, see featx.extraction.runtimes)
    fp32 = ImageEmbedder("efficientnet_lite0", cache_dir=tmp_path / "cache", image_size=64, precision="fp32")
    monkeypatch.setattr(runtimes, "openvino_available", lambda: False)  # else OpenVINO runs fp32 extractions
    result = extract(str(tmp_path / "photos"), fp32._network(), tmp_path / "other", workers=0,
                     precision="fp32")
    X, _, keys, _ = load(result.path)
    np.testing.assert_allclose(fp32.transform(photos), X, atol=1e-4)


def test_it_survives_clone_params_pickling_and_a_grid_search(photos, tmp_path, caplog):
    emb = ImageEmbedder("efficientnet_lite0", cache_dir=tmp_path / "cache", image_size=64)
    assert clone(emb).get_params() == emb.get_params()
    assert emb.set_params(image_size=64).get_params()["image_size"] == 64
    X = emb.transform(photos)
    back = pickle.loads(pickle.dumps(emb))
    assert "_cached_backbone" not in back.__dict__
    np.testing.assert_array_equal(back.transform(photos), X)
    y = [p.split("/")[-2] for p in photos]
    search = GridSearchCV(make_pipeline(emb, LogisticRegression(max_iter=500)),
                          {"logisticregression__C": [0.1, 1.0]}, cv=2)
    with caplog.at_level(logging.INFO, logger="featx"):
        search.fit(photos, y)
    assert set(_embedded(caplog)) == {0}  # every fold and refit read the cache


def test_an_unreadable_file_stops_with_one_line_naming_it(photos, tmp_path):
    broken = tmp_path / "photos" / "a" / "broken.jpg"
    broken.write_bytes(b"not a picture")
    emb = ImageEmbedder("efficientnet_lite0", cache_dir=tmp_path / "cache", image_size=64)
    with pytest.raises(SourceError, match=rf"^{broken}: "):
        emb.transform([*photos, str(broken)])
    with pytest.raises(SourceError, match=rf"^{tmp_path / 'nowhere.jpg'}: cannot open"):
        emb.transform([str(tmp_path / "nowhere.jpg")])
    assert emb.transform(photos).shape == (12, 1280)  # the good ones were kept


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_parallel_cross_validation_in_processes_or_threads_shares_one_cache(photos, tmp_path, backend):
    """joblib's workers (processes, whose start method is loky's own, or threads) fit
    their folds at once: each gets every row, the store is written whole."""
    from joblib import parallel_config
    from sklearn.model_selection import cross_val_score

    from featx import store

    y = [p.split("/")[-2] for p in photos]
    clf = make_pipeline(ImageEmbedder("pixels", cache_dir=tmp_path / "cache"),
                        LogisticRegression(max_iter=500))
    with parallel_config(backend=backend):
        scores = cross_val_score(clf, photos, y, cv=3, n_jobs=3, error_score="raise")
    assert len(scores) == 3 and np.isfinite(scores).all()
    (path,) = (tmp_path / "cache").glob("*.h5")
    assert store.verify(path) == [] and store.info(path)["rows"] == 12
    np.testing.assert_array_equal(ImageEmbedder("pixels", cache_dir=tmp_path / "cache").transform(photos),
                                  ImageEmbedder("pixels", cache_dir=tmp_path / "other").transform(photos))


def test_a_touched_file_is_restamped_in_the_store_and_a_vanished_one_leaves_it(photos, tmp_path):
    from featx import store
    from featx.data.sources import FilesSource

    emb = ImageEmbedder("pixels", cache_dir=tmp_path / "cache")
    before = emb.transform(photos)
    (path,) = (tmp_path / "cache").glob("*.h5")
    touched = photos[3]
    st = os.stat(touched)
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    np.testing.assert_array_equal(emb.transform(photos), before)
    rows = store.read(path).rows
    stamps = dict(zip(rows.keys.tolist(), rows.stamps.tolist()))
    assert stamps[FilesSource.keys_of([touched])[0]] == f"{st.st_size}:{st.st_mtime_ns + 10**9}"

    gone = photos[5]
    os.remove(gone)
    extract(FilesSource(photos), "pixels", tmp_path / "cache")
    info = store.info(path)
    assert info["rows"] == 11 and [s["key"] for s in info["skipped"]] == FilesSource.keys_of([gone])
