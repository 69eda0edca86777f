"""OpenVINO as the CPU's runtime: chosen by the plan, converted once and cached, and
falling back to the frozen graph (or eager torch) where it cannot run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from featx import store
from featx.extraction import extract, openvino_graph, runtimes
from featx.extraction.openvino_graph import model_path, openvino_embed
from support.imagegen import make_folder

if not openvino_graph.available():
    pytest.skip("openvino is not installed", allow_module_level=True)
CPU = torch.device("cpu")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_plan_runs_openvino_on_the_cpu_where_it_gains(lite0_small, monkeypatch):
    choose = runtimes.choose
    assert choose(CPU, "bf16", lite0_small, accumulates=False) == runtimes.OPENVINO
    assert choose(CPU, "fp32", lite0_small, accumulates=False) == runtimes.OPENVINO
    assert choose(CPU, "bf16", lite0_small, accumulates=False, native_bf16=False) == runtimes.FROZEN
    assert choose(CPU, "fp16", lite0_small, accumulates=False) == runtimes.EAGER
    assert choose(CPU, "bf16", lite0_small, accumulates=True) == runtimes.EAGER  # any subset, same features
    assert choose(torch.device("cuda"), "bf16", lite0_small, accumulates=False) == runtimes.AOTI
    assert choose(torch.device("cuda"), "fp16", lite0_small, accumulates=False) == runtimes.EAGER
    monkeypatch.setattr(runtimes, "openvino_available", lambda: False)
    assert choose(CPU, "bf16", lite0_small, accumulates=False) == runtimes.FROZEN
    assert choose(CPU, "fp32", lite0_small, accumulates=False) == runtimes.EAGER


def test_its_features_and_layers_match_eager_fp32(lite0_small, tmp_path):
    from featx.backbones import load_backbone

    bb = load_backbone("efficientnet_lite0", image_size=64, layers=("blocks.3",))
    images = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # the graph takes the images as decoded (NHWC) and normalises them
        want = bb.embed(bb.preprocessing.normalize(images.permute(0, 3, 1, 2)))
    got32 = openvino_embed(bb, "fp32", tmp_path)(images)
    got16 = openvino_embed(bb, "bf16", tmp_path)(images)
    for layer in ("embedding", "blocks.3"):
        assert got32[layer].shape == want[layer].shape == got16[layer].shape
        assert _cosines(got32[layer].numpy(), want[layer].numpy()).min() > 0.9999
        assert _cosines(got16[layer].numpy(), want[layer].numpy()).min() > 0.98


def test_a_batch_split_over_streams_keeps_its_images_in_order(lite0_small, tmp_path):
    x = torch.randint(0, 256, (7, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    whole = openvino_embed(lite0_small, "fp32", tmp_path, threads=1)(x)["embedding"]
    split = openvino_embed(lite0_small, "fp32", tmp_path, threads=3)(x)["embedding"]  # parts of 2, 2, 3
    assert split.shape == whole.shape and _cosines(split.numpy(), whole.numpy()).min() > 0.99999
    one = openvino_embed(lite0_small, "fp32", tmp_path, threads=3)(x[:1])["embedding"]  # fewer than streams
    assert _cosines(one.numpy(), whole[:1].numpy()).min() > 0.99999


def test_the_model_is_converted_once_and_read_after(lite0_small, tmp_path, monkeypatch):
    first = openvino_embed(lite0_small, "bf16", tmp_path)
    path = model_path(tmp_path, lite0_small)
    assert path.is_file() and path.with_suffix(".bin").is_file()
    monkeypatch.setattr(openvino_graph, "_convert", lambda *a: pytest.fail("converted again"))
    again = openvino_embed(lite0_small, "bf16", tmp_path)
    x = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first(x)["embedding"], again(x)["embedding"])


def test_its_compiled_form_is_cached_too_and_a_damaged_one_costs_a_compile(lite0_small, tmp_path):
    x = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    want = openvino_embed(lite0_small, "bf16", tmp_path)(x)["embedding"]
    blobs = list((tmp_path / "openvino-compiled").glob("*.blob"))
    assert len(blobs) == 1
    blobs[0].write_bytes(b"damaged" * 100)
    assert torch.equal(openvino_embed(lite0_small, "bf16", tmp_path)(x)["embedding"], want)  # compiled again


def test_a_damaged_cached_model_is_converted_again(lite0_small, tmp_path, caplog):
    path = model_path(tmp_path, lite0_small)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<not a model")
    assert openvino_embed(lite0_small, "bf16", tmp_path) is not None
    assert "cannot read the cached OpenVINO model" in caplog.text
    assert path.read_text().startswith("<?xml")


def test_a_bf16_extraction_records_openvino_and_matches_eager(tmp_path, lite0_small):
    root = make_folder(tmp_path / "img", {"a": 5, "b": 5})
    fast = extract(str(root), lite0_small, tmp_path / "c", precision="bf16", device="cpu", batch_size=4)
    assert store.info(fast.path)["provenance"]["runtime"] == "openvino"
    eager = extract(str(root), lite0_small, tmp_path / "c", precision="fp16", device="cpu", batch_size=4)
    assert eager.path != fast.path and store.info(eager.path)["provenance"]["runtime"] == "eager"
    assert _cosines(store.load(fast.path)[0], store.load(eager.path)[0]).min() > 0.99


def test_an_fp32_extraction_through_openvino_gives_eager_torchs_features(tmp_path, lite0_small, monkeypatch):
    root = make_folder(tmp_path / "img", {"a": 11, "b": 9})  # batches of 8 slices of 2, from 2 workers
    fast = extract(str(root), lite0_small, tmp_path / "c", precision="fp32", device="cpu", batch_size=16,
                   workers=2)
    monkeypatch.setattr(runtimes, "openvino_available", lambda: False)
    eager = extract(str(root), lite0_small, tmp_path / "d", precision="fp32", device="cpu", batch_size=16)
    runtime = {r.path: store.info(r.path)["provenance"]["runtime"] for r in (fast, eager)}
    assert (runtime[fast.path], runtime[eager.path]) == ("openvino", "eager")
    a, b = store.load(fast.path), store.load(eager.path)
    assert list(a.keys) == list(b.keys) and _cosines(a.X, b.X).min() > 0.99999


def test_a_network_openvino_cannot_convert_runs_the_frozen_graph_and_its_store_says_so(tmp_path, lite0_small,
                                                                                       monkeypatch):
    ov = openvino_graph._openvino()

    def refuse(*a, **k):
        raise RuntimeError("not this one")

    monkeypatch.setattr(ov, "convert_model", refuse)
    monkeypatch.setenv("FEATX_GRAPH_CACHE", str(tmp_path / "graphs"))
    root = make_folder(tmp_path / "img", {"a": 3, "b": 3})
    bf16 = extract(str(root), lite0_small, tmp_path / "c", precision="bf16", device="cpu", batch_size=4)
    fp32 = extract(str(root), lite0_small, tmp_path / "c", precision="fp32", device="cpu", batch_size=4)
    assert bf16.embedded == fp32.embedded == 6
    assert store.info(bf16.path)["provenance"]["runtime"] == "torchscript-frozen"
    assert store.info(fp32.path)["provenance"]["runtime"] == "eager"


def test_openvino_sends_no_usage_reports_and_writes_nothing_home(tmp_path):
    """OpenVINO reports usage on import unless its telemetry package is missing; featx
    hides it, so nothing is written to ~/intel (HOME is a fresh folder here)."""
    import os
    import subprocess
    import sys

    from support.crash import ROOT

    code = ("import sys\nfrom featx.backbones import load_backbone\n"
            "from featx.extraction.openvino_graph import openvino_embed\n"
            "openvino_embed(load_backbone('efficientnet_lite0', image_size=32), 'bf16', sys.argv[1])\n"
            "print(sys.modules['openvino_telemetry'])")
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    (tmp_path / "home").mkdir()
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "graphs")], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "None" and list((tmp_path / "home").iterdir()) == []


def test_a_process_started_after_openvino_ran_here_does_not_crash_this_one():
    """Last in this module, after its other tests dropped their runtimes: when the last
    OpenVINO runtime was released (unloading its CPU plugin), the next fork crashed the
    test process (SIGSEGV); featx keeps one runtime for the process."""
    import gc
    import subprocess
    import sys

    gc.collect()
    assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, text=True,
                          check=True).stdout == "1\n"
