"""``featx bench``: several datasets x several backbones x several methods, one report.

Each dataset is fetched (:mod:`featx.data.datasets`) and run as an ordinary pipeline over its
official splits, so every number follows the pipeline's protocol: hyper-parameters chosen
on the dataset's validation split (or a stratified share of train when it has none), the
chosen model refit, the test split scored once. Each dataset's own report is kept under
``OUT/<dataset>/``; the suite report (``OUT/report.{json,md,html}``) puts them in one
table with the mean over datasets, the extraction speed on each, and published figures
for the same backbone, dataset and protocol beside ours.
"""
from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..core import distributed
from ..core.files import write_bytes
from ..data import datasets
from .pipeline import Pipeline, from_dict
from .references import reference_for
from .report import environment_table, html_page, markdown, method_label
from .run import environment, run

log = logging.getLogger(__name__)

PROTOCOL = ("each dataset's official splits; heads: hyper-parameters chosen on the validation split (the "
            "dataset's own, else a stratified share of train), refit on train + validation, the test split "
            "scored "
            "once; fine-tuning: LP-FT, the epoch chosen on the validation split")


def pipeline_for(name: str, folder: Path, *, backbones: list[str], heads: list[str], finetune: dict | None,
                 extract: dict, per_class: dict, seed: int, search: str | None = None) -> Pipeline:
    """The pipeline that benchmarks one prepared dataset (checked like a pipeline file)."""
    data = {"train": str(folder / "train"), "test": str(folder / "test")}
    if (folder / "val").is_dir():
        data["val"] = str(folder / "val")
    if per_class:
        data["per_class"] = dict(per_class)
    raw = {"name": name, "data": data, "backbones": backbones, "heads": heads, "extract": dict(extract),
           "seed": seed}
    if finetune is not None:
        raw["finetune"] = finetune
    if search is not None:
        raw["search"] = search
    p = from_dict(raw, origin="featx bench")
    p.efficiency_heads = []  # the suite compares whole-data results; curves belong to a dataset's own run
    return p


def run_bench(names: list[str], backbones: list[str], heads: list[str], out_dir: str | os.PathLike, *,
              root: str | os.PathLike = "data", cache_dir: str | os.PathLike = "cache",
              finetune: dict | None = None,
              extract: dict | None = None, per_class: dict | None = None, seed: int = 0,
              search: str | None = None) -> dict:
    """Run the suite; writes every dataset's report and the suite report; returns the latter."""
    started = time.perf_counter()
    out = Path(out_dir)
    folders = {name: datasets.get(name, root) for name in names}
    rows, speeds, data = [], [], []
    for name, folder in folders.items():
        log.info("bench: %s", name)
        cuts = _cutting(folder, per_class or {})
        p = pipeline_for(name, folder, backbones=backbones, heads=heads, finetune=finetune,
                         extract=extract or {}, per_class=cuts, seed=seed, search=search)
        report = run(p, out / name, cache_dir)
        d = report["data"]
        n_train, n_test = d["n_train"] + d["n_val"], d["n_test"]
        data.append({"dataset": name, "subset": cuts or None, "classes": len(d["classes"]),
                     "n_train": d["n_train"], "n_val": d["n_val"], "n_test": n_test,
                     "validation": d["validation"],
                     "splits": datasets.dataset(name).splits, "report": f"{name}/report.html"})
        for r in report["results"]:
            ref = reference_for(name, r["backbone"], r["method"], n_train, n_test, subset=bool(cuts))
            rows.append({"dataset": name, "backbone": r["backbone"], "method": method_label(r),
                         "test_accuracy": r["test_accuracy"], "balanced_accuracy": r["balanced_accuracy"],
                         "macro_f1": r["macro_f1"], "val_accuracy": r["val_accuracy"],
                         "fit_seconds": r["fit_seconds"], "reference": None if ref is None else {
                             "metric": ref.metric, "value": ref.value, "ours": r[ref.metric],
                             "source": ref.source}})
        speeds += [{"dataset": name, "backbone": e["backbone"], "images": e["images"],
                    "images_per_second": e["images_per_second"], "device": e["device"],
                    "precision": e["precision"], "image_size": e["image_size"]} for e in report["extraction"]]
    suite = {
        "name": "bench", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1), "datasets": data, "backbones": backbones,
        "protocol": PROTOCOL, "subset": per_class or None, "results": rows, "means": _means(rows, names),
        "extraction": speeds, "environment": environment(speeds[0]["device"], speeds[0]["precision"]),
    }
    if distributed.world().is_main:
        write_suite(suite, out)
    return suite


def _cutting(folder: Path, per_class: dict) -> dict:
    """The entries of ``per_class`` that leave out images of this dataset: a split whose
    classes all hold fewer images is run whole (and is the whole dataset's split)."""
    def largest(split: Path) -> int:
        return max((sum(1 for f in c.iterdir() if f.is_file()) for c in split.iterdir() if c.is_dir()),
                   default=0)

    return {s: n for s, n in per_class.items() if (folder / s).is_dir() and largest(folder / s) > n}


def _means(rows: list[dict], names: list[str]) -> list[dict]:
    """Mean test accuracy over the datasets, for each backbone and method run on all of them."""
    by = {}
    for r in rows:
        by.setdefault((r["backbone"], r["method"]), {})[r["dataset"]] = r["test_accuracy"]
    return [{"backbone": b, "method": m, "mean_test_accuracy": float(np.mean([accs[n] for n in names])),
             "datasets": len(names)} for (b, m), accs in by.items() if set(accs) == set(names)]


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _sections(suite: dict) -> list[tuple[str, str, object]]:
    names = [d["dataset"] for d in suite["datasets"]]
    cells = {(r["dataset"], r["backbone"], r["method"]): r for r in suite["results"]}
    methods = list(dict.fromkeys((r["backbone"], r["method"]) for r in suite["results"]))
    means = {(m["backbone"], m["method"]): m["mean_test_accuracy"] for m in suite["means"]}
    table = [["backbone", "method", *names, "mean"]]
    for b, m in methods:
        accs = [_pct(cells[(n, b, m)]["test_accuracy"]) if (n, b, m) in cells else "-" for n in names]
        table.append([b, m, *accs, _pct(means.get((b, m)))])
    refs = [["dataset", "backbone", "method", "metric", "ours", "published", "difference", "source"]]
    for r in suite["results"]:
        ref = r["reference"]
        if ref:
            refs.append([r["dataset"], r["backbone"], r["method"], ref["metric"].replace("_", " "),
                         _pct(ref["ours"]), _pct(ref["value"]),
                         f"{100 * (ref['ours'] - ref['value']):+.1f} points", ref["source"]])
    speed = [["dataset", "backbone", "images", "images/s", "device", "precision", "image size"]]
    speed += [[s["dataset"], s["backbone"], str(s["images"]),
               "-" if s["images_per_second"] is None else f"{s['images_per_second']:.1f}", s["device"],
               s["precision"], str(s["image_size"])] for s in suite["extraction"]]
    data = [["dataset", "classes", "train", "val", "test", "validation", "splits", "report"]]
    data += [[d["dataset"], str(d["classes"]), str(d["n_train"]), str(d["n_val"]), str(d["n_test"]),
              d["validation"], d["splits"], d["report"]] for d in suite["datasets"]]
    notes = [suite["protocol"]]
    for d in suite["datasets"]:
        if d["subset"]:
            limits = ", ".join(f"{n} {split}" for split, n in d["subset"].items())
            notes.append(f"{d['dataset']}: a seeded subset, at most {limits} images per class")
    out = [("Test accuracy (%)", "table", table), ("Protocol", "text", notes)]
    none = ("no published figure for these backbones, datasets and protocol "
            "(featx.bench.references lists those it knows)")
    out.append(("Published figures beside ours", "table", refs) if len(refs) > 1 else
               ("Published figures beside ours", "text", [none]))
    out += [("Extraction speed", "table", speed), ("Datasets", "table", data),
            ("Environment", "table", environment_table(suite))]
    return out


def summary(suite: dict) -> list[str]:
    """A few lines for the terminal: each backbone and method's mean over the datasets."""
    lines = [f"{m['backbone']} + {m['method']}: mean test accuracy {100 * m['mean_test_accuracy']:.1f} % "
             f"over {m['datasets']} datasets" for m in suite["means"]]
    lines += [f"{r['dataset']}, {r['backbone']} + {r['method']}: ours {100 * r['reference']['ours']:.1f} %, "
              f"published {100 * r['reference']['value']:.1f} %" for r in suite["results"] if r["reference"]]
    return lines


def write_suite(suite: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    subtitle = f"{suite['created']}, {suite['seconds']} s"
    sections = _sections(suite)
    files = {"report.json": (json.dumps(suite, indent=2) + "\n").encode(),
             "report.md": markdown("featx benchmark", subtitle, sections).encode(),
             "report.html": html_page("featx benchmark", subtitle, sections, {}).encode()}
    return {name: write_bytes(out / name, data) for name, data in files.items()}
