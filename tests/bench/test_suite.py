"""``featx bench``: two small datasets served from 127.0.0.1, fetched, converted and run as
pipelines (heads and a one-epoch LP-FT fine-tune), then one suite report with means,
extraction speed and published figures."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from featx.bench import suite as bench
from featx.bench.references import ACCURACY, reference_for
from featx.bench.report import method_label
from featx.core.errors import FeatxError
from featx.data.datasets import Dataset, Packaging
from featx.data.datasets import catalog as catalog_module
from featx.data.datasets.converters import folders
from featx.data.datasets.download import Remote
from support.httpserver import FileServer
from support.imagegen import image_tree, tar_bytes


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    with FileServer() as server, pytest.MonkeyPatch.context() as mp:
        catalog = {}
        for name, top, n in (("hymenoptera", "hymenoptera_data", {"train": 12, "val": 6}),
                             ("tiny", "tiny", {"train": 10, "val": 5})):
            data = tar_bytes(image_tree(top, n))
            server.files[f"/{name}.tar.gz"] = data
            r = Remote(f"{server.url}/{name}.tar.gz", len(data), hashlib.sha256(data).hexdigest())
            catalog[name] = Dataset(name, name, "https://example.org", "its train and val folders",
                                    (Packaging("official", (r,), folders({f"{top}/train": "train",
                                                                          f"{top}/val": "test"})),))
        mp.setattr(catalog_module, "CATALOG", catalog)
        report = bench.run_bench(["hymenoptera", "tiny"], ["efficientnet_lite0"], ["logreg", "knn"],
                                 tmp / "out", root=tmp / "data", cache_dir=tmp / "cache",
                                 finetune={"strategies": ["lp_ft"], "epochs": 1, "batch_size": 8,
                                           "image_size": 64},
                                 extract={"image_size": 64, "batch_size": 16, "device": "cpu", "workers": 0})
        requests = list(server.requests)
    return tmp, report, requests


def test_one_report_holds_every_dataset_backbone_and_method(suite):
    tmp, report, requests = suite
    assert sorted(p for p, _ in requests) == ["/hymenoptera.tar.gz", "/tiny.tar.gz"]
    assert sorted((r["dataset"], r["method"]) for r in report["results"]) == [
        ("hymenoptera", "finetune (lp_ft)"), ("hymenoptera", "knn"), ("hymenoptera", "logreg"),
        ("tiny", "finetune (lp_ft)"), ("tiny", "knn"), ("tiny", "logreg")]
    saved = json.loads((tmp / "out" / "report.json").read_text())
    assert saved["results"] == report["results"]
    for name in ("hymenoptera", "tiny"):  # each dataset's own pipeline report, the numbers the suite shows
        own = json.loads((tmp / "out" / name / "report.json").read_text())
        for r in own["results"]:
            row = next(x for x in report["results"] if (x["dataset"], x["method"]) == (name, method_label(r)))
            assert row["test_accuracy"] == r["test_accuracy"]
        assert own["data"]["n_test"] == 12 if name == "hymenoptera" else 10
    for m in report["means"]:
        accs = [r["test_accuracy"] for r in report["results"] if r["method"] == m["method"]]
        assert m["mean_test_accuracy"] == pytest.approx(np.mean(accs)) and m["datasets"] == 2
    assert [(e["dataset"], e["images"]) for e in report["extraction"]] == [("hymenoptera", 36), ("tiny", 30)]
    assert all(e["images_per_second"] > 0 for e in report["extraction"])


def test_a_published_figure_stands_beside_ours_for_the_same_backbone_dataset_and_protocol(suite):
    tmp, report, _ = suite
    ref = {(r["dataset"], r["method"]): r["reference"] for r in report["results"]}
    logreg = next(r for r in report["results"] if (r["dataset"], r["method"]) == ("hymenoptera", "logreg"))
    assert ref[("hymenoptera", "logreg")] == {"metric": ACCURACY, "value": 0.941,
                                              "ours": logreg["test_accuracy"],
                                              "source": ref[("hymenoptera", "logreg")]["source"]}
    assert "shared/datasets/README.md" in ref[("hymenoptera", "logreg")]["source"]
    assert ref[("hymenoptera", "knn")] is None and ref[("tiny", "logreg")] is None
    md = (tmp / "out" / "report.md").read_text()
    assert "## Published figures beside ours" in md
    ours = f"{100 * logreg['test_accuracy']:.1f}"
    assert f"| hymenoptera | efficientnet_lite0 | logreg | test accuracy | {ours} | 94.1 |" in md
    html = (tmp / "out" / "report.html").read_text()
    assert "Test accuracy (%)" in html and "Extraction speed" in html


def test_a_reference_for_a_subset_matches_only_a_run_of_that_size():
    def ref(*args):
        r = reference_for("cifar10", "efficientnet_lite0", "logreg", *args)
        return None if r is None else r.value

    assert ref(5000, 2000, True) == 0.784
    assert ref(4000, 2000, True) is None and ref(50000, 10000, False) is None
    whole = ("logreg", 50000, 10000, False)
    assert reference_for("cifar10", "torchvision:resnet50:IMAGENET1K_V1", *whole).value == 0.9142
    assert reference_for("cifar10", "torchvision:resnet50", *whole) is None  # other weights


def test_only_a_per_class_limit_that_leaves_images_out_makes_a_subset(tmp_path):
    for split, n in (("train", 5), ("test", 2)):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                (tmp_path / split / cls / f"{i}.jpg").write_bytes(b"")
    assert bench._cutting(tmp_path, {"train": 500, "test": 200}) == {}
    assert bench._cutting(tmp_path, {"train": 3, "test": 200}) == {"train": 3}


def test_bad_requests_are_one_line(tmp_path, capsys, monkeypatch):
    from featx.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--datasets", "cifar10", "--backbones", "efficientnet_lite0", "--epochs", "2"]) == 1
    said = capsys.readouterr().err.strip()
    assert said == "featx: error: --epochs sets the fine-tuning's epochs; add --finetune"
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--datasets", "cifar10", "--backbones", "efficientnet_lite0", "--per-class",
              "train=500,tset=200"])
    assert exit_.value.code == 2
    assert "expected SPLIT=N with SPLIT train, val or test, got 'tset=200'" in capsys.readouterr().err
    assert main(["bench", "--datasets", "nosuch", "--backbones", "efficientnet_lite0"]) == 1
    assert capsys.readouterr().err.strip().startswith("featx: error: unknown dataset 'nosuch'")
    assert list(tmp_path.iterdir()) == []  # nothing fetched, nothing written
    with pytest.raises(FeatxError, match="featx bench: unknown head 'logistic'"):
        bench.pipeline_for("x", tmp_path, backbones=["efficientnet_lite0"], heads=["logistic"], finetune=None,
                           extract={}, per_class={}, seed=0)
