"""Fitted model bundles: saved with their digest, refused when altered, and used by
``featx predict`` end to end."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from featx.cli import main
from featx.extraction import extract
from featx.heads.bundle import ModelError
from featx.heads.bundle import load as load_model
from featx.heads.bundle import save as save_model
from featx.heads.fitting import train as train_head
from featx.heads.predict import predict
from featx.store import load
from support.imagegen import make_folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lite0_small):
    """A small two-class folder, its store, and a logreg bundle fitted on it."""
    tmp = tmp_path_factory.mktemp("models")
    folder = make_folder(tmp / "imgs", {"cats": 12, "dogs": 12})
    # make the classes separable: dogs are much brighter
    from PIL import Image

    for path in (folder / "dogs").iterdir():
        im = Image.open(path).point(lambda v: min(255, v + 120))
        im.save(path, quality=95)
    result = extract(str(folder), lite0_small, tmp / "cache", workers=0)
    bundle = train_head(result.path, "logreg")
    path = save_model(bundle, tmp / "out" / "m.joblib")
    return tmp, folder, result.path, path


def test_bundle_records_what_prediction_needs(trained):
    path = trained[3]
    b = load_model(path)
    assert b.classes == ["cats", "dogs"] and b.head == "logreg"
    assert b.backbone["name"] == "efficientnet_lite0" and len(b.backbone["weights_sha256"]) == 64
    assert b.backbone["preprocessing"]["image_size"] == 64
    assert b.metrics["val_accuracy"] is not None and b.metrics["n_train"] == 24
    side = json.loads(path.with_name(path.name + ".json").read_text())
    assert side["classes"] == ["cats", "dogs"] and len(side["sha256"]) == 64


def test_a_tampered_model_file_is_refused(trained, tmp_path):
    _, _, _, path = trained
    copy = tmp_path / "m.joblib"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    (tmp_path / "m.joblib.json").write_bytes(path.with_name(path.name + ".json").read_bytes())
    with pytest.raises(ModelError, match="SHA-256 does not match"):
        load_model(copy)


def test_a_model_without_its_sidecar_is_refused(trained, tmp_path):
    _, _, _, path = trained
    lone = tmp_path / "lone.joblib"
    lone.write_bytes(path.read_bytes())
    with pytest.raises(ModelError, match="no valid sidecar"):
        load_model(lone)


def test_predict_end_to_end_matches_the_head_on_stored_features(trained):
    tmp, folder, store_path, path = trained
    b = load_model(path)
    result = predict(b, str(folder), tmp / "cache", workers=0)
    assert result.store == store_path  # the embedding store is reused
    X, y, keys, classes = load(store_path)
    assert list(result.keys) == list(keys)
    assert result.labels == [classes[k] for k in b.model.predict(X)]
    assert result.accuracy == pytest.approx(np.mean(b.model.predict(X) == y))


def test_train_and_predict_commands(trained, tmp_path, capsys):
    tmp, folder, store_path, _ = trained
    model = tmp_path / "knn.joblib"
    assert main(["train", "--features", str(store_path), "--head", "knn", "--out", str(model)]) == 0
    assert capsys.readouterr().out.strip() == str(model)
    (folder / "cats" / "notes.txt").write_text("not an image")
    out_csv = tmp_path / "pred.csv"
    try:
        assert main(["predict", "--model", str(model), "--data", str(folder), "--out", str(out_csv),
                     "--cache", str(tmp / "cache"), "--workers", "0", "--top-k", "2"]) == 0
    finally:
        (folder / "cats" / "notes.txt").unlink()
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == str(out_csv)
    rows = list(csv.DictReader(out_csv.open()))
    images = [r for r in rows if not r["error"]]
    assert len(images) == 24
    for r in images:
        assert r["label"] in ("cats", "dogs") and 0.5 <= float(r["probability"]) <= 1
        assert len(r["top_k"].split(";")) == 2 and r["top_k"].startswith(r["label"] + ":")
    acc = np.mean([r["label"] == r["true_label"] for r in images])
    assert f"accuracy against their folder labels {100 * acc:.2f} %" in captured.err
    assert [r["path"] for r in rows if r["error"]] == ["cats/notes.txt"]


def test_predict_refuses_a_tampered_model_in_one_line(trained, tmp_path, capsys):
    _, folder, _, path = trained
    copy = tmp_path / "m.joblib"
    copy.write_bytes(path.read_bytes() + b"\0")
    (tmp_path / "m.joblib.json").write_bytes(path.with_name(path.name + ".json").read_bytes())
    assert main(["predict", "--model", str(copy), "--data", str(folder), "--out",
                 str(tmp_path / "p.csv")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "refusing to load" in err and str(copy) in err
    assert not (tmp_path / "p.csv").exists()


def test_a_skops_bundle_loads_without_its_sidecar_and_predicts_the_same(trained, tmp_path):
    _, _, store_path, path = trained
    b = load_model(path)
    shared = save_model(b, tmp_path / "m.skops")
    shared.with_name("m.skops.json").unlink()  # a file received from someone else
    again = load_model(shared)
    X = load(store_path)[0]
    np.testing.assert_array_equal(again.model.predict_proba(X), b.model.predict_proba(X))
    assert again.classes == b.classes and again.backbone == b.backbone


class Planted:  # a type no featx model holds
    def __reduce__(self):
        return (print, ("ran code",))


def test_a_skops_file_holding_other_types_or_altered_is_refused(trained, tmp_path):
    import skops.io

    b = load_model(trained[3])
    planted = tmp_path / "planted.skops"
    planted.write_bytes(skops.io.dumps({**b.to_dict(), "model": Planted()}))
    with pytest.raises(ModelError, match=r"holds types featx does not build from a file \(.*Planted"):
        load_model(planted)
    path = save_model(b, tmp_path / "m.skops")
    data = bytearray(path.read_bytes())
    data[-30] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256 does not match"):
        load_model(path)
    path.with_name("m.skops.json").unlink()
    with pytest.raises(ModelError, match="not a readable skops file"):
        load_model(path)
