"""Files written by an earlier featx (tests/fixtures/v1, see its README) still load and
still mean what they meant: the store, joblib and skops model bundles, and a fine-tune's
model, sidecar, metrics and resumable checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.write_fixtures import write_images

from featx import store
from featx.backbones import load_backbone
from featx.extraction import extract
from featx.heads.bundle import SKOPS_TRUSTED
from featx.heads.bundle import load as load_model
from featx.heads.predict import predict
from featx.training import network as ft_network
from featx.training import state as ft_state
from featx.training.settings import Settings

V1 = Path(__file__).resolve().parent / "fixtures" / "v1"
EXPECTED = json.loads((V1 / "expected.json").read_text())
BUNDLES = sorted(EXPECTED["bundles"])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("fixtures") / "tiny")


def test_the_store_verifies_loads_and_holds_the_features_featx_computes_today(images, tmp_path):
    path = V1 / "store" / EXPECTED["store"]
    assert store.verify(path) == []
    X, y, keys, classes = store.load(path)
    assert list(keys) == EXPECTED["keys"] and list(classes) == ["ants", "bees"]
    assert y.tolist() == [0] * 6 + [1] * 6
    again = store.load(extract(str(images), "pixels", tmp_path, image_size=8, workers=0).path)
    np.testing.assert_allclose(X, again[0], atol=1e-6)


@pytest.mark.parametrize("name", BUNDLES)
def test_each_model_bundle_loads_and_predicts_as_when_it_was_written(name):
    X, *_ = store.load(V1 / "store" / EXPECTED["store"])
    bundle = load_model(V1 / "models" / name)
    assert bundle.classes == ["ants", "bees"] and bundle.head == name.split(".")[0]
    np.testing.assert_allclose(bundle.model.predict_proba(X), EXPECTED["bundles"][name], atol=1e-6)


@pytest.mark.parametrize("name", [n for n in BUNDLES if n.endswith(".skops")])
def test_skops_bundles_name_the_class_paths_they_were_written_with(name):
    import skops.io

    names = set(skops.io.get_untrusted_types(file=V1 / "models" / name))
    assert names and names <= SKOPS_TRUSTED
    assert any(n.startswith("featx.heads.") for n in names)


def test_the_fine_tuned_model_predicts_as_when_it_was_written(images, tmp_path):
    bundle = load_model(V1 / "finetune" / "model.pt")
    assert bundle.classes == ["ants", "bees"]
    got = predict(bundle, str(images), tmp_path, device="cpu", workers=0)
    assert list(got.keys) == EXPECTED["finetune"]["keys"]
    np.testing.assert_allclose(got.proba, EXPECTED["finetune"]["proba"], atol=1e-4)


def test_the_fine_tuned_model_loads_as_backbone_weights():
    bb = load_backbone("timm:test_efficientnet", weights=V1 / "finetune" / "model.pt")
    assert bb.preprocessing.image_size == 32  # read from the sidecar, as the run trained it
    assert bb.embed_dim == 256


def test_the_metrics_of_the_finished_run_read_back():
    metrics = json.loads((V1 / "finetune" / "metrics.json").read_text())
    result = ft_state.FinetuneResult.from_metrics(V1 / "finetune", metrics)
    assert (result.method, result.epochs_run, result.n_train) == ("head", 2, metrics["n_train"])
    assert result.test is None and 0 <= result.val_accuracy <= 1


def test_the_checkpoint_of_an_interrupted_run_resumes_into_todays_network_and_optimizer():
    saved = ft_state.load_checkpoint(V1 / "finetune" / "last.pt")
    finished = json.loads((V1 / "finetune" / "metrics.json").read_text())
    assert (saved["format"], saved["run"]) == (ft_state.FORMAT, finished["run"])
    state = ft_state.TrainState.from_checkpoint(saved)
    assert (state.epoch, state.best_epoch, [h["epoch"] for h in state.history]) == (1, 1, [1])
    again = state.checkpoint(saved["run"], saved["model"], saved["optimizer"], saved["scaler"])
    assert again.keys() == saved.keys()
    settings = Settings(strategy="head", epochs=2, batch_size=4, image_size=32, patience=5).check()
    bb = load_backbone("timm:test_efficientnet", weights=V1 / "finetune" / "model.pt")
    net = ft_network.network(bb, 2)
    groups, _ = ft_network.trainable(net, bb.classifier, settings)
    optimizer = ft_network.optimizer(groups, settings)
    net.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    assert torch.equal(net.get_submodule(bb.classifier).weight, saved["model"][f"{bb.classifier}.weight"])
