"""The frozen bfloat16 graph of CPU extractions, and its cache."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from featx import store
from featx.extraction import extract, frozen, runtimes
from featx.extraction.frozen import frozen_embed
from support.imagegen import make_folder


def test_frozen_graph_gives_the_eager_features_at_any_batch_size(lite0_small):
    run = frozen_embed(lite0_small, batch_size=8)
    assert run is not None
    gen = torch.Generator().manual_seed(0)  # on noise, bf16 moves some images' features by 0.01
    x = torch.randn(3, 3, 64, 64, generator=gen).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():  # 3: not the traced batch size
        got, want = run(x), lite0_small.embed(x)
    cos = torch.nn.functional.cosine_similarity(got["embedding"].float(), want["embedding"])
    assert got["embedding"].shape == (3, 1280) and cos.min() > 0.98


def test_an_untraceable_network_runs_eagerly(lite0_small, monkeypatch):
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    assert frozen_embed(lite0_small, batch_size=4) is None


def test_without_openvino_a_bf16_job_runs_it_into_a_store_of_its_own(tmp_path, lite0_small, monkeypatch):
    monkeypatch.setattr(runtimes, "openvino_available", lambda: False)
    root = make_folder(tmp_path / "img", {"a": 4, "b": 4})
    eager = extract(str(root), lite0_small, tmp_path / "c", precision="fp32", device="cpu", batch_size=4)
    fast = extract(str(root), lite0_small, tmp_path / "c", precision="bf16", device="cpu", batch_size=4)
    assert fast.path != eager.path and fast.embedded == 8
    assert store.info(fast.path)["provenance"]["runtime"] == "torchscript-frozen"
    assert store.info(eager.path)["provenance"]["runtime"] == "eager"
    Xe, Xf = store.load(eager.path)[0], store.load(fast.path)[0]
    cos = np.sum(Xe * Xf, 1) / np.linalg.norm(Xe, axis=1) / np.linalg.norm(Xf, axis=1)
    assert cos.min() > 0.99


def test_the_graph_is_built_once_and_loaded_after(tmp_path, lite0_small, monkeypatch):
    built = frozen_embed(lite0_small, batch_size=4, graphs=tmp_path / "graphs")
    path = frozen.graph_path(tmp_path / "graphs", lite0_small, 4)
    assert path.is_file()
    monkeypatch.setattr(frozen, "_build", lambda *a: pytest.fail("built again"))
    loaded = frozen_embed(lite0_small, batch_size=4, graphs=tmp_path / "graphs")
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(built(x)["embedding"], loaded(x)["embedding"])


def test_the_key_is_the_weights_and_the_batch_size_not_the_name(tmp_path, lite0_small):
    from featx.backbones import load_backbone

    random = load_backbone("efficientnet_lite0", image_size=64, pretrained=False)
    key = frozen.graph_path(tmp_path / "graphs", lite0_small, 4)
    assert frozen.graph_path(tmp_path / "graphs", random, 4) != key  # same architecture, other weights
    assert frozen.graph_path(tmp_path / "graphs", lite0_small, 8) != key
    renamed = copy.copy(lite0_small)
    renamed.name = "another-name"
    assert frozen.graph_path(tmp_path / "graphs", renamed, 4) == key


def test_a_damaged_cached_graph_is_rebuilt(tmp_path, lite0_small, caplog):
    path = frozen.graph_path(tmp_path / "graphs", lite0_small, 4)
    path.parent.mkdir()
    path.write_bytes(b"not a graph")
    assert frozen_embed(lite0_small, batch_size=4, graphs=tmp_path / "graphs") is not None
    assert "cannot load the cached graph" in caplog.text
    assert frozen._load(path) is not None  # replaced by a good one


def test_an_unwritable_cache_costs_only_the_build(tmp_path, lite0_small, caplog):
    (tmp_path / "graphs").write_text("a file where the folder goes")
    assert frozen_embed(lite0_small, batch_size=4, graphs=tmp_path / "graphs") is not None
    assert "cannot cache the frozen graph" in caplog.text


def test_the_key_takes_weights_of_any_dtype(tmp_path, lite0_small):
    half = copy.deepcopy(lite0_small)
    half.model = copy.deepcopy(lite0_small.model).to(torch.bfloat16)
    assert frozen.graph_path(tmp_path, half, 4) != frozen.graph_path(tmp_path, lite0_small, 4)


def test_the_weights_digest_is_computed_once_per_state_and_follows_every_change(lite0_small, monkeypatch):
    model = copy.deepcopy(lite0_small.model)
    first = frozen.weights_sha256(model)
    saved = copy.deepcopy(model.state_dict())
    hashes, sha256 = [], frozen.hashlib.sha256
    monkeypatch.setattr(frozen.hashlib, "sha256", lambda *a: hashes.append(1) or sha256(*a))
    assert frozen.weights_sha256(model) == first and not hashes  # unchanged: not hashed again
    with torch.no_grad():
        next(model.parameters()).mul_(2)  # in place
    assert frozen.weights_sha256(model) != first and len(hashes) == 1
    model.load_state_dict(saved)  # copied back in place
    assert frozen.weights_sha256(model) == first
    model.bfloat16()  # new tensors
    assert frozen.weights_sha256(model) != first
