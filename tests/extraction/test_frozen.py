"""The frozen bfloat16 graph for large CPU extractions."""
from __future__ import annotations

import numpy as np
import torch

from featx import store
from featx.extraction import extract, frozen
from featx.extraction.frozen import frozen_embed, use_frozen
from support.imagegen import make_folder


def test_only_large_bf16_jobs_on_the_cpu_use_it():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_frozen(cpu, "bf16", frozen.MIN_IMAGES)
    assert not use_frozen(cpu, "bf16", frozen.MIN_IMAGES - 1)
    assert not use_frozen(cpu, "fp32", 10**6)
    assert not use_frozen(cuda, "bf16", 10**6)


def test_frozen_graph_gives_the_eager_features_at_any_batch_size(lite0_small):
    run = frozen_embed(lite0_small, batch_size=8)
    assert run is not None
    x = torch.randn(3, 3, 64, 64).contiguous(memory_format=torch.channels_last)  # not the traced batch size
    with torch.inference_mode():
        got, want = run(x), lite0_small.embed(x)
    cos = torch.nn.functional.cosine_similarity(got["embedding"].float(), want["embedding"])
    assert got["embedding"].shape == (3, 1280) and cos.min() > 0.99


def test_an_untraceable_network_runs_eagerly(lite0_small, monkeypatch):
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    assert frozen_embed(lite0_small, batch_size=4) is None


def test_a_large_job_gets_a_store_of_its_own(tmp_path, lite0_small, monkeypatch):
    root = make_folder(tmp_path / "img", {"a": 4, "b": 4})
    eager = extract(str(root), lite0_small, tmp_path / "c", precision="bf16", device="cpu", batch_size=4)
    monkeypatch.setattr(frozen, "MIN_IMAGES", 8)  # this folder counts as large
    fast = extract(str(root), lite0_small, tmp_path / "c", precision="bf16", device="cpu", batch_size=4)
    assert fast.path != eager.path and fast.embedded == 8
    assert store.info(fast.path)["provenance"]["runtime"] == "torchscript-frozen"
    assert store.info(eager.path)["provenance"]["runtime"] == "eager"
    Xe, Xf = store.load(eager.path)[0], store.load(fast.path)[0]
    cos = np.sum(Xe * Xf, 1) / np.linalg.norm(Xe, axis=1) / np.linalg.norm(Xf, axis=1)
    assert cos.min() > 0.99
