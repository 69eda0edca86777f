"""Fine-tuning and training from scratch: what each strategy trains, LP-FT's start,
checkpoints, resume, and the fine-tuned network reused as a backbone."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from featx import training as ft
from featx.backbones import load_backbone
from featx.cli import main
from featx.core.errors import FeatxError
from featx.training import state as ft_state
from featx.training.probe import frozen_features, linear_probe_weights
from featx.training.splits import make_splits
from support.imagegen import make_folder

TINY = "timm:test_efficientnet"  # timm's 0.36 M-parameter EfficientNet, random weights saved by the test


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft")
    torch.manual_seed(1234)  # not the fine-tune's seed: its random initialisation differs
    import timm

    weights = tmp / "tiny.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), weights)
    train = make_folder(tmp / "train", {"a": 10, "b": 10}, start_seed=0)
    test = make_folder(tmp / "test", {"a": 4, "b": 4}, start_seed=200)
    return train, test, weights


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


SETTINGS = {"epochs": 1, "image_size": 32, "batch_size": 8}


@pytest.mark.parametrize("strategy", ["head", "last_k", "full", "lp_ft", "scratch"])
def test_each_strategy_changes_exactly_the_parameters_it_should(tmp_path, data, strategy):
    train, test, weights = data
    scratch = strategy == "scratch"
    settings = ft.Settings(strategy="full" if scratch else strategy, pretrained=not scratch, **SETTINGS)
    r = ft.finetune(train, TINY, tmp_path / "run", test=test, settings=settings,
                    weights=None if scratch else weights, cache_dir=tmp_path / "cache", workers=0)
    assert r.best_epoch == 1 and r.epochs_run == 1
    after = _state(r.model)
    if scratch:
        torch.manual_seed(0)
        before = load_backbone(TINY, image_size=32, pretrained=False).model.state_dict()
    else:
        before = load_backbone(TINY, weights=weights, image_size=32).model.state_dict()
    net = load_backbone(TINY, weights=weights, image_size=32)
    params = {n for n, _ in net.model.named_parameters()}
    # timm's stages of this network: conv_stem + bn1, blocks.0 ... blocks.3, blocks.4 + conv_head + bn2
    last_two = {n for n in params if n.startswith(("blocks.3.", "blocks.4.", "conv_head.", "bn2."))}
    trained = {"head": set(), "last_k": last_two}.get(strategy, params)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed & params == trained  # every trained parameter moved, no frozen one did
    assert "conv_stem.weight" in params and ("conv_stem.weight" in changed) == (strategy not in ("head",
                                                                                                 "last_k"))
    buffers = {k for k in before if k not in params and before[k].is_floating_point()}
    # BatchNorm statistics: a pretrained network keeps its own; from scratch they are learnt
    assert bool(changed & buffers) == scratch
    # the new classifier, in the network's own slot
    assert after["classifier.weight"].shape == (2, net.embed_dim)
    if scratch:
        assert not any(torch.equal(before[k], _state(weights)[k]) for k in params if before[k].ndim > 1)


def test_lp_ft_classifier_starts_from_the_logistic_regression(tmp_path, data):
    from featx.heads import make_head

    train, test, weights = data
    # A learning rate of 1e-12 leaves the weights where training started, to float precision.
    r = ft.finetune(train, TINY, tmp_path / "run", test=test, settings=ft.Settings(lr=1e-12, **SETTINGS),
                    weights=weights, cache_dir=tmp_path / "cache", workers=0)
    assert r.metrics["history"][0]["epoch"] == 0  # the probe's own validation accuracy, recorded
    sd = _state(r.model)
    original = load_backbone(TINY, weights=weights, image_size=32).model.state_dict()
    for k, v in original.items():
        torch.testing.assert_close(sd[k], v, rtol=1e-6, atol=1e-9)

    tr, _, _, _ = make_splits(str(train), seed=0)
    X, y = frozen_features(tr, load_backbone(TINY, weights=weights, image_size=32), tmp_path / "cache", {})
    lr = make_head("logreg")._build(C=r.metrics["linear_probe"]["C"]).fit(X, y)
    W, b = linear_probe_weights(lr, 2)
    np.testing.assert_allclose(sd["classifier.weight"].numpy(), W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sd["classifier.bias"].numpy(), b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("n_rows", [12, 400])  # fewer rows than features (row-span basis) and more
def test_linear_probe_weights_reproduce_the_pipeline_exactly(n_classes, n_rows):
    from scipy.special import softmax

    from featx.heads import make_head

    rng = np.random.default_rng(n_rows)
    y = np.arange(n_rows) % n_classes
    X = rng.normal(size=(n_rows, 64)) * rng.uniform(0.1, 5, 64) + rng.normal(size=64) + y[:, None] * 0.3
    model = make_head("logreg")._build(C=0.1).fit(X, y)
    W, b = linear_probe_weights(model, n_classes)
    Xt = rng.normal(size=(50, 64)) * 2
    np.testing.assert_allclose(softmax(Xt @ W.T + b, axis=1), model.predict_proba(Xt), atol=1e-9)


def test_checkpoints_load_without_running_code(tmp_path, data):
    train, _, weights = data
    r = ft.finetune(train, TINY, tmp_path / "run", settings=ft.Settings(strategy="head", **SETTINGS),
                    weights=weights, cache_dir=tmp_path / "cache", workers=0)
    assert all(isinstance(v, torch.Tensor) for v in torch.load(r.model, weights_only=True).values())
    evil = tmp_path / "evil.pt"

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo planted > " + str(tmp_path / "ran"),))

    torch.save({"model": Boom()}, evil)
    with pytest.raises(FeatxError, match="not a loadable checkpoint"):
        ft.load_checkpoint(evil)
    assert not (tmp_path / "ran").exists()


def _cli(*args):
    return [sys.executable, "-m", "featx", "finetune", *args]


def test_resume_after_a_kill_mid_epoch_ends_like_an_uninterrupted_run(tmp_path, data):
    train, test, weights = data
    common = ["--data", str(train), "--test", str(test), "--backbone", TINY, "--weights", str(weights),
              "--epochs", "4", "--patience", "9", "--image-size", "64", "--batch-size", "4", "--workers", "0",
              "--cache", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(*common, "--out", str(tmp_path / "whole")), check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*common, "--out", str(run)), env=env, stderr=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    epoch_seconds = json.loads((tmp_path / "whole" / "metrics.json").read_text())["history"][2]["seconds"]
    time.sleep(epoch_seconds / 2)  # halfway through the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "last.pt").exists(), "the run wrote no checkpoint before the kill"
    done = _state(run / "last.pt")["epoch"]
    assert 1 <= done < 4 and not (run / "metrics.json").exists()

    again = subprocess.run(_cli(*common, "--out", str(run)), env=env, capture_output=True, text=True,
                           check=False)
    assert again.returncode == 1 and "pass --resume to continue it" in again.stderr
    resumed = subprocess.run(_cli(*common, "--out", str(run), "--resume"), env=env, capture_output=True,
                             text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {done} of 4" in resumed.stderr

    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("whole", "killed"))
    assert [h["epoch"] for h in a["history"]] == [h["epoch"] for h in b["history"]] == [0, 1, 2, 3, 4]
    assert [h["val_loss"] for h in a["history"]] == pytest.approx([h["val_loss"] for h in b["history"]],
                                                                  rel=1e-4)
    assert b["best_epoch"] == a["best_epoch"]
    assert a["test"] == b["test"]  # on the CPU a resumed run repeats the same crops, flips and shuffles
    whole, resumed = _state(tmp_path / "whole" / "model.pt"), _state(run / "model.pt")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not (run / "last.pt").exists()


def test_a_kill_between_the_checkpoint_and_model_pt_is_mended_on_resume(tmp_path, data, monkeypatch):
    train, test, weights = data
    kw = {"test": test,
          "settings": ft.Settings(strategy="full", epochs=2, patience=9, image_size=32, batch_size=8),
          "weights": weights, "cache_dir": tmp_path / "cache", "workers": 0}
    whole = ft.finetune(train, TINY, tmp_path / "whole", **kw)

    def killed(*args, **kwargs):  # epoch 1 (always the best so far) is checkpointed, then the run dies
        raise KeyboardInterrupt

    monkeypatch.setattr(ft_state, "save_model", killed)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(train, TINY, tmp_path / "run", **kw)
    monkeypatch.undo()
    assert _state(tmp_path / "run" / "last.pt")["epoch"] == 1 and not (tmp_path / "run" / "model.pt").exists()
    resumed = ft.finetune(train, TINY, tmp_path / "run", resume=True, **kw)
    same = ("epoch", "val_accuracy", "val_loss", "train_loss")
    def history(r):
        return [[h[k] for k in same] for h in r.metrics["history"]]

    assert history(resumed) == history(whole)
    assert resumed.best_epoch == whole.best_epoch and resumed.test == whole.test
    a, b = _state(whole.model), _state(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_fine_tuned_network_is_a_backbone_for_extract_heads_and_predict(tmp_path, data):
    from featx import store
    from featx.extraction import extract
    from featx.heads.bundle import load as load_model
    from featx.heads.fitting import train as train_head
    from featx.heads.predict import predict

    train, test, weights = data
    r = ft.finetune(train, TINY, tmp_path / "run", test=test,
                    settings=ft.Settings(strategy="full", **SETTINGS), weights=weights,
                    cache_dir=tmp_path / "cache", workers=0)
    digest = hashlib.sha256(r.model.read_bytes()).hexdigest()
    ex = extract(str(test), TINY, tmp_path / "cache", weights=str(r.model), image_size=32, workers=0)
    assert store.info(ex.path)["provenance"]["backbone"]["weights_sha256"] == digest
    X = store.load(ex.path)[0]
    original = extract(str(test), TINY, tmp_path / "cache", weights=str(weights), image_size=32, workers=0)
    X0 = store.load(original.path)[0]
    # the fine-tuned network's features, not the original's
    assert X.shape == X0.shape and not np.allclose(X, X0)

    b = train_head(extract(str(train), TINY, tmp_path / "cache", weights=str(r.model), image_size=32,
                             workers=0).path, "logreg")
    assert b.backbone["weights_sha256"] == digest

    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(r.model), "--data", str(test), "--out", str(out),
                 "--cache", str(tmp_path / "cache"), "--workers", "0"]) == 0
    pred = predict(load_model(r.model), str(test), tmp_path / "cache", workers=0)
    assert len(pred.keys) == 8 and abs(pred.accuracy - r.test["test_accuracy"]) <= 1 / 8

    side = r.model.with_name("model.pt.json")
    facts = json.loads(side.read_text())
    side.write_text(json.dumps({**facts, "sha256": "0" * 64}))
    with pytest.raises(FeatxError, match="SHA-256 does not match"):
        load_model(r.model)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"strategy": "lp-ft"}, "strategy='lp-ft': choose lp_ft, full, last_k, head"),
    ({"epochs": 0}, "epochs=0: must be at least 1"),
    ({"optimizer": "adam"}, "optimizer='adam': choose adamw or sgd"),
])
def test_bad_settings_fail_in_one_line(kwargs, message):
    with pytest.raises(FeatxError, match=message):
        ft.Settings(**kwargs).check()


def test_a_run_folder_is_never_overwritten_by_other_settings(tmp_path, data):
    train, _, weights = data
    kw = {"weights": weights, "cache_dir": tmp_path / "cache", "workers": 0}
    first = ft.finetune(train, TINY, tmp_path / "run", settings=ft.Settings(strategy="head", **SETTINGS),
                        **kw)
    before = first.model.read_bytes()
    again = ft.finetune(train, TINY, tmp_path / "run", settings=ft.Settings(strategy="head", **SETTINGS),
                        **kw)
    assert again.metrics == first.metrics  # the same run: read back, not trained again
    with pytest.raises(FeatxError, match="holds a fine-tune with other settings"):
        ft.finetune(train, TINY, tmp_path / "run", settings=ft.Settings(strategy="full", **SETTINGS), **kw)
    assert first.model.read_bytes() == before
    with pytest.raises(FeatxError, match="pixels: has no network to fine-tune"):
        ft.finetune(train, "pixels", tmp_path / "px", settings=ft.Settings(**SETTINGS),
                    cache_dir=tmp_path / "cache")


def test_gradient_accumulation_matches_one_large_batch(tmp_path, data):
    train, _, weights = data
    kw = {"weights": weights, "cache_dir": tmp_path / "cache", "workers": 0}
    common = {"strategy": "head", "epochs": 1, "image_size": 32, "optimizer": "sgd", "warmup_epochs": 0}
    big = ft.finetune(train, TINY, tmp_path / "big", settings=ft.Settings(batch_size=8, **common), **kw)
    acc = ft.finetune(train, TINY, tmp_path / "acc",
                      settings=ft.Settings(batch_size=4, accumulate=2, **common), **kw)
    assert acc.metrics["effective_batch_size"] == big.metrics["effective_batch_size"] == 8
    a, b = _state(big.model), _state(acc.model)
    torch.testing.assert_close(a["classifier.weight"], b["classifier.weight"], rtol=1e-4, atol=1e-6)
    # while batches of 4 without accumulation take twice the steps and end elsewhere
    small = ft.finetune(train, TINY, tmp_path / "small", settings=ft.Settings(batch_size=4, **common), **kw)
    assert not torch.allclose(_state(small.model)["classifier.weight"], a["classifier.weight"], rtol=1e-4,
                              atol=1e-6)


def test_cli_refuses_a_strategy_with_scratch_and_a_second_trainer_on_one_folder(tmp_path, data, capsys):
    train, _, weights = data
    assert main(["finetune", "--data", str(train), "--backbone", TINY, "--out", str(tmp_path / "r"),
                 "--scratch", "--strategy", "head"]) == 1
    assert capsys.readouterr().err == ("featx: error: --strategy head: scratch trains the whole network from "
                                       "random weights, so it takes no strategy\n")
    (tmp_path / "busy").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from featx.store import write_lock\n"
        "with write_lock(Path(sys.argv[1]) / 'run'):\n    print('locked', flush=True); time.sleep(60)"),
        str(tmp_path / "busy")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FeatxError, match="another featx process is training in this folder"):
            ft.finetune(train, TINY, tmp_path / "busy", settings=ft.Settings(strategy="head", **SETTINGS),
                        weights=weights, cache_dir=tmp_path / "cache", workers=0)
    finally:
        holder.kill()
        holder.wait()


def test_a_fine_tuned_model_is_read_at_the_resolution_it_was_trained_at(tmp_path, data):
    train, _, weights = data
    r = ft.finetune(train, TINY, tmp_path / "run", settings=ft.Settings(strategy="head", **SETTINGS),
                    weights=weights, cache_dir=tmp_path / "cache", workers=0)
    assert load_backbone(TINY, weights=str(r.model)).preprocessing.image_size == 32  # from model.pt.json
    assert load_backbone(TINY, weights=str(weights)).preprocessing.image_size == 160  # the architecture's own
    assert load_backbone(TINY, weights=str(r.model), image_size=48).preprocessing.image_size == 48
