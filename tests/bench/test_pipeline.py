"""YAML pipelines: validated with clear errors, cached stages, and the report files."""
from __future__ import annotations

import json
import logging

import jsonschema
import pytest

from featx import store
from featx.bench import pipeline
from featx.bench.report import SCHEMA, summary
from featx.bench.run import run as run_pipeline
from featx.cli import main
from featx.core.errors import FeatxError
from featx.heads import validation_split
from support.imagegen import make_folder

GOOD = """\
name: tiny
data:
  train: {train}
  test: {test}
backbones: [efficientnet_lite0, pixels]
extract: {{image_size: 64, workers: 0}}
heads: [{heads}]
report:
  efficiency: {{shots: [1, 2], draws: 2}}
"""


def _write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    return (make_folder(tmp / "train", {"a": 6, "b": 6}, start_seed=0),
            make_folder(tmp / "test", {"a": 4, "b": 4}, start_seed=100))


@pytest.mark.parametrize(("text", "message"), [
    ("name: x\ndata: {train: t}\nbackbones: [pixels]\nhedas: [logreg]\n",
     r"unknown key 'hedas' in the top level \(did you mean 'heads'\?\)"),
    ("name: x\ndata: {train: t, tset: u}\nbackbones: [pixels]\nheads: [logreg]\n",
     r"unknown key 'tset' in data \(did you mean 'test'\?\)"),
    ("name: x\ndata: {train: t}\nbackbones: [pixels]\nheads: [logreg]\nextract: {batch_size: sixty}\n",
     r"extract.batch_size must be an integer, got 'sixty'"),
    ("name: x\ndata: {train: t}\nbackbones: pixels\nheads: [logreg]\n",
     r"backbones must be a non-empty list, got 'pixels'"),
    ("name: x\ndata: {train: t}\nbackbones: [pixels]\nheads: [logred]\n",
     r"unknown head 'logred' \(did you mean 'logreg'\?\)"),
    ("name: x\ndata: {test: t}\nbackbones: [pixels]\nheads: [logreg]\n", r"data needs the key 'train'"),
    ("name: x\ndata: {train: t}\nbackbones: [pixels]\nheads: [logreg]\nseed: true\n",
     r"seed must be an integer"),
    ("name: x\ndata: {train: t, test_fraction: 1.5}\nbackbones: [pixels]\nheads: [logreg]\n",
     r"test_fraction must lie between 0 and 1"),
    ("name: !!python/object/apply:os.system [echo hi]\n",
     r"not valid YAML: could not determine a constructor"),
    ("name: [unclosed\n", r"line \d+ not valid YAML"),
])
def test_bad_pipelines_fail_with_a_message_naming_the_problem(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(pipeline.PipelineError, match=message) as info:
        pipeline.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_cli_reports_a_pipeline_typo_in_one_line(tmp_path, capsys):
    path = _write(tmp_path, "name: x\ndata: {train: t}\nbackbones: [pixels]\nheads: [logreg]\nextrct: {}\n")
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"featx: error: {path}: unknown key 'extrct' in the top level (did you mean 'extract'?)"


def test_shipped_pipelines_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "pipelines"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {"hymenoptera.yaml", "cifar10.yaml"} <= set(names)
    for name in names:
        p = pipeline.load(root / name)
        assert p.backbones and p.heads


def test_run_writes_the_report_and_a_head_only_change_does_no_extraction(tmp_path, folders, lite0_small):
    train, test = folders
    cache = tmp_path / "cache"
    p = pipeline.load(_write(tmp_path, GOOD.format(train=train, test=test, heads="logreg, knn")))
    report = run_pipeline(p, tmp_path / "out", cache)
    for name in ("report.json", "report.md", "report.html", "confusion.png", "efficiency.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    jsonschema.validate(on_disk, SCHEMA)
    assert [(r["backbone"], r["method"]) for r in on_disk["results"]] == [
        ("efficientnet_lite0", "logreg"), ("efficientnet_lite0", "knn"), ("pixels", "logreg"),
        ("pixels", "knn")]
    assert sum(r["best"] for r in on_disk["results"]) == 1
    assert all(e["embedded_this_run"] == 20 and e["images"] == 20 for e in report["extraction"])
    assert all(e["images_per_second"] > 0 for e in report["extraction"])
    # image_size is the network's input; the raw-pixel baseline stays 32 x 32 x 3
    assert [e["dim"] for e in report["extraction"]] == [1280, 3072]
    r0 = on_disk["results"][0]
    assert r0["n_train"] == 12 and 0 <= r0["test_accuracy"] <= 1
    # 12 training images: chosen by cross-validation; every accuracy with its interval, every
    # other method tested against the best on the same test images
    assert on_disk["data"]["validation"].startswith("stratified 5-fold cross-validation")
    assert all(r["selection"] == "5-fold cross-validation" and len(r["cv"]["fold_accuracies"]) == 5
               for r in on_disk["results"])
    for r in on_disk["results"]:
        lo, hi = r["test_interval95"]
        assert lo <= r["test_accuracy"] <= hi and hi - lo > 0.2  # 8 test images: a wide interval
        assert ("vs_best" in r) != r["best"] and (r["best"] or 0 <= r["vs_best"]["p_value"] <= 1)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "95 % interval" in md and "p vs best" in md
    if any(r["vs_best"]["p_value"] >= 0.05 for r in on_disk["results"] if not r["best"]):
        assert "Within noise of the best" in md
    curve = on_disk["efficiency"][0]
    assert [pt["per_class"] for pt in curve["points"]] == [1, 2, 6.0]
    assert len(curve["points"][0]["draws"]) == 2
    html = (tmp_path / "out" / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert "<table>" in html and "★" in (tmp_path / "out" / "report.md").read_text()
    assert sorted(x.name for x in (tmp_path / "out" / "models").iterdir() if x.suffix == ".joblib") == [
        "efficientnet_lite0__knn.joblib", "efficientnet_lite0__logreg.joblib",
        "pixels__knn.joblib", "pixels__logreg.joblib"]

    p2 = pipeline.load(_write(tmp_path, GOOD.format(train=train, test=test, heads="nearest_centroid"),
                              "p2.yaml"))
    again = run_pipeline(p2, tmp_path / "out2", cache)
    assert all(e["embedded_this_run"] == 0 for e in again["extraction"])
    assert again["extraction"][0]["images_per_second"] == report["extraction"][0]["images_per_second"]
    assert [r["method"] for r in again["results"]] == ["nearest_centroid"] * 2


def test_without_a_test_source_a_stratified_share_of_train_is_held_out(tmp_path, folders):
    train, _ = folders
    text = (f"name: held\ndata: {{train: {train}, test_fraction: 0.25}}\nbackbones: [pixels]\n"
            "heads: [nearest_centroid]\nextract: {workers: 0}\n")
    report = run_pipeline(pipeline.load(_write(tmp_path, text)), tmp_path / "out", tmp_path / "cache")
    assert report["data"]["n_test"] == 3 and report["data"]["n_train"] == 9  # 25 % of 12
    assert sum(map(sum, report["best"]["confusion_matrix"])) == 3
    assert {sum(row) for row in report["best"]["confusion_matrix"]} == {1, 2}  # stratified: both classes


def test_per_class_subset_is_seeded_and_per_class(tmp_path):
    from featx.data.sources import SubsetSource, open_source

    folder = make_folder(tmp_path / "f", {"a": 7, "b": 5})
    base = open_source(str(folder))
    s1, s2 = SubsetSource(base, 3, seed=1), SubsetSource(base, 3, seed=1)
    assert [i.key for i in s1.items] == [i.key for i in s2.items]
    assert sorted(i.label for i in s1.items) == [0, 0, 0, 1, 1, 1]
    assert [i.key for i in SubsetSource(base, 3, seed=2).items] != [i.key for i in s1.items]
    assert s1.spec != base.spec and s1.read(s1.items[0]) == base.read(s1.items[0])


def test_hymenoptera_pipeline_logreg_reaches_94_percent_and_predict_agrees(hymenoptera, tmp_path):
    from pathlib import Path

    from featx.heads.bundle import load as load_model
    from featx.heads.predict import predict

    p = pipeline.load(Path(__file__).resolve().parents[2] / "pipelines" / "hymenoptera.yaml")
    assert p.test.endswith("hymenoptera.tar:hymenoptera/val") and p.val is None  # C is chosen inside train
    p.train, p.test = f"{hymenoptera}:hymenoptera/train", f"{hymenoptera}:hymenoptera/val"
    p.backbones, p.heads, p.efficiency_heads = ["efficientnet_lite0"], ["logreg"], []
    p.finetune = p.scratch = None  # the trained networks: see the slow test below
    report = run_pipeline(p, tmp_path / "out", tmp_path / "cache")
    row = report["results"][0]
    assert row["test_accuracy"] >= 0.94 and row["n_train"] == 244
    assert report["data"]["n_test"] == 153
    assert row["val_accuracy"] is not None  # chosen on a split of train, not on val
    b = load_model(tmp_path / "out" / row["model"])
    pred = predict(b, p.test, tmp_path / "cache")
    assert pred.accuracy == row["test_accuracy"]


def test_finetune_and_scratch_stages_join_the_heads_in_one_report(tmp_path, folders, lite0_small, caplog):
    train, test = folders
    text = GOOD.format(train=train, test=test, heads="logreg") + (
        "finetune: {strategies: [lp_ft, head], epochs: 2, batch_size: 4, shots: [2]}\nscratch: {epochs: 1}\n")
    p = pipeline.load(_write(tmp_path, text))
    report = run_pipeline(p, tmp_path / "out", tmp_path / "cache")
    jsonschema.validate(json.loads((tmp_path / "out" / "report.json").read_text()), SCHEMA)
    nets = [r for r in report["results"] if r["method"] in ("finetune", "scratch")]
    _, y, keys, _ = store.load(report["extraction"][0]["stores"]["train"])
    heads_val = keys[validation_split(y, p.val_fraction, p.seed)[1]].tolist()  # what SweptHead holds out
    assert [(r["backbone"], r["method"], r.get("strategy")) for r in nets] == [
        ("efficientnet_lite0", "finetune", "lp_ft"), ("efficientnet_lite0", "finetune", "head"),
        ("efficientnet_lite0", "scratch", None)]  # not the raw-pixel baseline: it has no network
    assert [r["epochs_run"] for r in nets] == [2, 2, 1]  # scratch's own epochs, the rest from finetune
    for r in nets:
        assert r["n_train"] == 12 and r["image_size"] == 64 and r["train_images_per_second"] > 0
        metrics = json.loads((tmp_path / "out" / r["model"]).with_name("metrics.json").read_text())
        assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (10, 2, 8)
        assert metrics["val_keys"] == heads_val  # the very images the heads chose their C on
        assert metrics["test"]["test_accuracy"] == r["test_accuracy"]
    curves = {(c["method"], c.get("strategy")): [pt["per_class"] for pt in c["points"]]
              for c in report["efficiency"]}
    assert curves[("finetune", "lp_ft")] == curves[("scratch", None)] == [2, 6.0]
    top = summary(report)[0]
    lp = nets[0]
    assert top.startswith("efficientnet_lite0, frozen features + logreg: ")
    assert f"fine-tuning (lp_ft): {100 * lp['test_accuracy']:.1f} %" in top
    assert f"from scratch: {100 * nets[2]['test_accuracy']:.1f} %" in top
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Trained networks" in md and "finetune (lp_ft)" in md

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="featx"):
        again = run_pipeline(p, tmp_path / "out", tmp_path / "cache")
    # 3 runs on all images, 3 at 2 per class: none retrained
    assert sum("already done" in m for m in caplog.messages) == 6
    assert [r["test_accuracy"] for r in again["results"]] == [r["test_accuracy"] for r in report["results"]]


@pytest.mark.slow
def test_hymenoptera_lp_ft_reaches_94_percent_and_scratch_stays_far_below(hymenoptera, tmp_path):
    """The issue's figure: the shipped pipeline's finetune and scratch stages (about 8 min on 2 cores)."""
    from pathlib import Path

    p = pipeline.load(Path(__file__).resolve().parents[2] / "pipelines" / "hymenoptera.yaml")
    p.train, p.test = f"{hymenoptera}:hymenoptera/train", f"{hymenoptera}:hymenoptera/val"
    p.backbones, p.heads, p.efficiency_heads = ["efficientnet_lite0"], ["logreg"], []
    report = run_pipeline(p, tmp_path / "out", tmp_path / "cache")
    rows = {(r["method"], r.get("strategy")): r for r in report["results"]}
    ft, scratch = rows[("finetune", "lp_ft")], rows[("scratch", None)]
    assert ft["epochs_run"] <= 10 and scratch["epochs_run"] <= 10 and ft["image_size"] == 224
    assert ft["test_accuracy"] >= 0.94 and ft["val_accuracy"] is not None  # the epoch chosen on train's share
    assert scratch["test_accuracy"] <= ft["test_accuracy"] - 0.2
    assert all(r["fit_seconds"] > 0 and r["train_images_per_second"] > 0 for r in (ft, scratch))
    line = summary(report)[0]
    assert f"fine-tuning (lp_ft): {100 * ft['test_accuracy']:.1f} %" in line
    assert f"from scratch: {100 * scratch['test_accuracy']:.1f} %" in line


def test_finetune_stage_errors_are_one_line(tmp_path):
    one = make_folder(tmp_path / "one", {"a": 1, "b": 3})
    text = (f"name: x\ndata: {{train: {one}, test: {one}}}\n"
            "backbones: [efficientnet_lite0]\nheads: [logreg]\n"
            "extract: {image_size: 32, workers: 0}\nfinetune: {epochs: 1, lr: 1e-3}\n")
    p = pipeline.load(_write(tmp_path, text))
    assert p.finetune["lr"] == 0.001  # YAML reads 1e-3 (no dot) as a string; the schema takes it as a number
    with pytest.raises(FeatxError,
                       match=r"too few images per class to hold out a validation split for fine-tuning"):
        run_pipeline(p, tmp_path / "out", tmp_path / "cache")
    bad = text.replace("lr: 1e-3", "lr: fast")
    with pytest.raises(pipeline.PipelineError, match="finetune.lr must be a number, got 'fast'"):
        pipeline.load(_write(tmp_path, bad, "bad.yaml"))
