"""The demo: the whole pipeline offline, on generated textures or the user's images."""
from __future__ import annotations

import json

from featx.bench.demo import DEMO_BACKBONES, demo_pipeline
from featx.cli import main
from featx.data.textures import generate
from support.imagegen import make_folder


def test_default_demo_data_is_generated_once_into_the_cache(tmp_path):
    p = demo_pipeline(tmp_path / "cache")
    root = tmp_path / "cache" / "demo-textures"
    assert p.train == str(root / "train") and p.test == str(root / "test") and p.val is None
    assert p.backbones == DEMO_BACKBONES and "pixels" in p.backbones  # the no-transfer baseline
    # a short fine-tune, and the same from scratch
    assert p.finetune["strategies"] == ["lp_ft"] and p.scratch == {}
    assert p.extract["image_size"] == 96  # the textures' own size
    stamp = (root / "train" / "stripes" / "stripes_000.png").stat().st_mtime_ns
    demo_pipeline(tmp_path / "cache")
    assert (root / "train" / "stripes" / "stripes_000.png").stat().st_mtime_ns == stamp


def test_demo_on_user_data_with_train_and_test_folders(tmp_path, capsys):
    data = generate(tmp_path / "tex", train_per_class=4, test_per_class=2, size=64)
    out = tmp_path / "report"
    assert main(["demo", "--data", str(data), "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == f"report: {out / 'report.html'}"
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["n_train"] == 40 and report["data"]["n_test"] == 20
    assert {r["backbone"] for r in report["results"]} == {"efficientnet_lite0", "pixels"}
    assert [(r["method"], r["image_size"]) for r in report["results"] if "epochs_run" in r] == [
        ("finetune", 224), ("scratch", 224)]  # your images at the weights' own resolution
    assert "Best (by cross-validated accuracy)" in captured.err


def test_demo_on_a_plain_folder_holds_out_a_test_quarter(tmp_path):
    folder = make_folder(tmp_path / "imgs", {"a": 8, "b": 8})
    p = demo_pipeline(tmp_path / "cache", str(folder))
    assert p.train == str(folder) and p.test is None and p.test_fraction == 0.25
