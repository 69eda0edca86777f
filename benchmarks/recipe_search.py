"""The recipe search on a real dataset: a pipeline with ``search: auto`` over
EfficientNet-Lite0/1/2 (their embeddings, flip TTA, two more stages, a larger
resolution, the three stacked), every recipe x head chosen by cross-validation on train
(or, from 20,000 training rows, on a validation split of train), the test split scored
once. Prints JSON: the chosen recipe and head with its interval, each recipe's cost
(feature width, extraction milliseconds per image) beside its best head's accuracy, and
the paired tests against the chosen one.

    python benchmarks/recipe_search.py hymenoptera           # 244 / 153 images: minutes
    python benchmarks/recipe_search.py cifar10 --full        # 50,000 / 10,000: hours on 2 cores

``--backbones`` and ``--heads`` change the search; ``--cache`` keeps the stores (a rerun
extracts nothing, and reports the extraction times measured when they were made).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import featx

DATASETS = Path(os.environ.get("FEATX_DATASETS",
                               Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))
DATA = {
    "hymenoptera": {"train": f"{DATASETS / 'hymenoptera.tar'}:hymenoptera/train",
                    "test": f"{DATASETS / 'hymenoptera.tar'}:hymenoptera/val"},
    "cifar10": {"train": f"{DATASETS / 'cifar10-train.tar'}:cifar10/train",
                "test": f"{DATASETS / 'cifar10-test.tar'}:cifar10/test"},
}
LITES = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"


def main() -> None:
    a = argparse.ArgumentParser()
    a.add_argument("dataset", choices=sorted(DATA))
    a.add_argument("--full", action="store_true", help="CIFAR-10: all 50,000 / 10,000 images "
                   "(default: 500 / 200 per class)")
    a.add_argument("--backbones", default=LITES)
    a.add_argument("--heads", default="logreg,linear_svm,ridge,knn,nearest_centroid")
    a.add_argument("--search", default="auto", help="auto, or a JSON list of recipes")
    a.add_argument("--cache", default="cache")
    a.add_argument("--out", default=None, help="report folder (default: reports/recipes-<dataset>)")
    args = a.parse_args()
    data = dict(DATA[args.dataset])
    if args.dataset == "cifar10" and not args.full:
        data["per_class"] = {"train": 500, "test": 200}
    p = {"name": f"recipes-{args.dataset}", "data": data, "backbones": args.backbones.split(","),
         "heads": args.heads.split(","), "extract": {"batch_size": 64},
         "search": args.search if args.search == "auto" else json.loads(args.search),
         "report": {"efficiency": {"shots": [10], "draws": 2, "heads": ["logreg"]}}}  # curves: not the point
    started = time.perf_counter()
    report = featx.run_pipeline(p, out=args.out or f"reports/recipes-{args.dataset}", cache_dir=args.cache)
    print(json.dumps(summarise(report, time.perf_counter() - started), indent=1))


def summarise(report: dict, seconds: float) -> dict:
    rows = report["results"]
    best = next(r for r in rows if r.get("best"))
    recipes = []
    for e in report["extraction"]:
        mine = [r for r in rows if r["backbone"] == e["backbone"]]
        top = max(mine, key=lambda r: r["val_accuracy"])
        recipes.append({"recipe": e["backbone"], "dims": e["dim"], "extract_ms_per_image": e["ms_per_image"],
                        "best_head": top["method"], "cv_accuracy": top["val_accuracy"],
                        "cv_std": (top.get("cv") or {}).get("accuracy_std"),
                        "test_accuracy": top["test_accuracy"], "test_interval95": top["test_interval95"]})
    return {
        "dataset": report["name"], "n_train": report["data"]["n_train"], "n_test": report["data"]["n_test"],
        "selection": report["data"]["validation"],
        "chosen": {k: best.get(k) for k in ("backbone", "method", "val_accuracy", "cv", "test_accuracy",
                                            "test_interval95", "best_params", "features",
                                            "extract_ms_per_image", "fit_seconds")},
        "best_test_in_table": max(r["test_accuracy"] for r in rows),
        "recipes": recipes,
        "paired_vs_chosen": [{"row": f"{r['backbone']} + {r['method']}", "test_accuracy": r["test_accuracy"],
                              **r["vs_best"]} for r in rows if r.get("vs_best")],
        "seconds": round(seconds, 1),
        "machine": {"cpu": report["environment"]["cpu"], "cores": report["environment"]["cores"],
                    "python": platform.python_version()},
    }


if __name__ == "__main__":
    sys.exit(main())
