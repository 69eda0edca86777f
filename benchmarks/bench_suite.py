"""``featx bench`` over the two datasets in ../shared/datasets, as a user would run it:
``featx datasets get`` takes the shared archives (``--archive``), then one bench over
hymenoptera (whole) and a CIFAR-10 subset (500 training and 200 test images per class,
a seeded draw) with efficientnet_lite0 and efficientnet_lite1, the linear probe and kNN.
Prints the suite's results as JSON; the report is written under --out.

    python benchmarks/bench_suite.py [--root DIR] [--out DIR] [--cache DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(os.environ.get("FEATX_DATASETS",
                             Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))


def featx(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "featx", *args], check=True,
                   stdout=sys.stderr)  # stdout: the JSON only


def readme_protocol(out: Path, dataset: str, backbone: str) -> dict:
    """The shared README's own probe (standardised LogisticRegressionCV, C by 5-fold
    cross-validation on train) on the bench's very stores: tells a gap to its published
    figure that comes from the draw of images from one that comes from featx's probe."""
    import warnings

    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from featx import store
    from featx.heads.fitting import align_labels

    report = json.loads((out / dataset / "report.json").read_text())
    stores = next(e["stores"] for e in report["extraction"] if e["backbone"] == backbone)
    Xtr, ytr, _, classes = store.load(stores["train"])
    Xte, yte, _, test_classes = store.load(stores["test"])
    yte = align_labels(yte, test_classes, classes, stores["test"])
    model = make_pipeline(StandardScaler(),
                          LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), cv=5, max_iter=1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(Xtr, ytr)
    return {"dataset": dataset, "backbone": backbone, "C": float(model[-1].C_[0]),
            "test_accuracy": float(np.mean(model.predict(Xte) == yte))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", default="data")
    p.add_argument("--out", default="reports/bench")
    p.add_argument("--cache", default="cache")
    p.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1")
    args = p.parse_args()

    featx("datasets", "get", "hymenoptera", "--root", args.root, "--archive", str(SHARED / "hymenoptera.tar"))
    featx("datasets", "get", "cifar10", "--root", args.root, "--archive", str(SHARED / "cifar10-train.tar"),
          "--archive", str(SHARED / "cifar10-test.tar"))
    start = time.perf_counter()
    featx("bench", "--datasets", "hymenoptera,cifar10", "--backbones", args.backbones, "--heads",
          "logreg,knn", "--per-class", "train=500,test=200", "--root", args.root, "--out", args.out,
          "--cache", args.cache)
    seconds = time.perf_counter() - start
    suite = json.loads((Path(args.out) / "report.json").read_text())
    print(json.dumps({
        "seconds": round(seconds, 1),
        "report": str(Path(args.out) / "report.html"),
        "datasets": [{k: d[k] for k in ("dataset", "subset", "n_train", "n_val", "n_test")}
                     for d in suite["datasets"]],
        "results": [{k: r[k] for k in ("dataset", "backbone", "method", "test_accuracy", "balanced_accuracy",
                                       "fit_seconds", "reference")} for r in suite["results"]],
        "means": suite["means"],
        "readme_protocol_on_these_stores": [readme_protocol(Path(args.out), d, "efficientnet_lite0")
                                            for d in ("hymenoptera", "cifar10")],
        "extraction": suite["extraction"],
        "environment": {k: suite["environment"][k] for k in ("cpu", "cores", "device", "torch")},
    }, indent=2))


if __name__ == "__main__":
    main()
