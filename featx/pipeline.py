"""YAML pipelines: several backbones x several heads on one dataset, ending in a report.

Every stage is cached: embeddings live in the store, so a rerun that changes only the
heads does no extraction. Relative data paths are read from the directory featx runs in.

    name: hymenoptera
    data:
      train: ../shared/datasets/hymenoptera.tar:hymenoptera/train
      test: ../shared/datasets/hymenoptera.tar:hymenoptera/val
      # val: SRC            optional; else a stratified val_fraction of train
      # test_fraction: 0.25 used when there is no test source: held out of train
      # per_class: {train: 500, test: 200}   a seeded random subset of each split
    backbones: [efficientnet_lite0, pixels]
    extract: {image_size: 224, batch_size: 64, precision: auto, device: auto, decode: cpu, workers: 2,
              on_error: skip}   # skip: record a bad file and go on; fail: stop at the first
    # (image_size is the networks' input; the pixels baseline stays at 32 x 32)
    heads: [logreg, linear_svm, knn]
    seed: 0
    val_fraction: 0.2
    report:
      efficiency: {shots: [1, 2, 5, 10, 25], draws: 5, heads: [logreg, knn, nearest_centroid]}
    sweep: {n_jobs: 4, backend: loky}   # optional: sweeps as 4 joblib tasks; dask or ray
                                        # (address: their scheduler) fan out over a cluster
    finetune:                # optional: train the networks themselves, same splits
      strategies: [lp_ft]    # lp_ft, full, last_k, head
      epochs: 10
      shots: [5, 20]         # also fine-tuned on this many images per class (one draw each)
      # backbones, batch_size, accumulate, optimizer, lr, last_k, patience, image_size, precision
    scratch: {}              # optional: the same network from random weights; every setting
                             # it does not name is the finetune stage's
"""
from __future__ import annotations

import difflib
import os
import platform
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import train_test_split

from . import __version__, distributed, models, store
from .errors import FeatxError
from .heads import HEADS
from .report import method_label, write_report
from .sweeps import sweep_backend

CHEAP_HEADS = ("logreg", "knn", "nearest_centroid", "ridge")  # fast enough for many small fits


class PipelineError(FeatxError):
    """A pipeline file that cannot be read or does not follow the schema."""


_TRAINING = {"backbones": [str], "epochs": int, "batch_size": int, "accumulate": int, "optimizer": ("adamw", "sgd"),
             "lr": float, "patience": int, "image_size": int, "precision": ("auto", "fp32", "bf16", "fp16"),
             "shots": [int]}
_SCHEMA = {
    "name": str,
    "data": {"train": str, "val": str, "test": str, "test_fraction": float,
             "per_class": {"train": int, "val": int, "test": int}},
    "backbones": [str],
    "extract": {"image_size": int, "batch_size": int, "precision": ("auto", "fp32", "bf16", "fp16"),
                "device": ("auto", "cpu", "cuda"), "decode": ("cpu", "gpu"), "workers": int,
                "on_error": ("skip", "fail")},
    "heads": [str],
    "seed": int,
    "val_fraction": float,
    "report": {"efficiency": {"shots": [int], "draws": int, "heads": [str]}},
    "sweep": {"n_jobs": int, "backend": ("loky", "dask", "ray"), "address": str},
    "finetune": {**_TRAINING, "strategies": [("lp_ft", "full", "last_k", "head")], "last_k": int},
    "scratch": _TRAINING,
}
_REQUIRED = {"": ("name", "data", "backbones", "heads"), "data": ("train",)}
_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number"}


@dataclass
class Pipeline:
    name: str
    train: str
    backbones: list[str]
    heads: list[str]
    val: str | None = None
    test: str | None = None
    test_fraction: float = 0.25
    extract: dict = field(default_factory=dict)
    seed: int = 0
    val_fraction: float = 0.2
    shots: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 25])
    draws: int = 5
    efficiency_heads: list[str] | None = None  # None: the cheap ones among ``heads``
    per_class: dict = field(default_factory=dict)  # split -> images per class (a seeded subset)
    finetune: dict | None = None  # the finetune stage's settings, None: no fine-tuning
    scratch: dict | None = None  # the scratch stage's own settings (the rest: finetune's)
    sweep: dict = field(default_factory=dict)  # n_jobs, backend, address: where the heads' sweeps run


def _check(value, schema, where: str, origin: str):
    """Raise PipelineError naming the first key that does not follow ``schema``."""
    label = where or "the top level"
    if isinstance(schema, dict):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise PipelineError(f"{origin}: {label} must be a mapping of keys, got {type(value).__name__}")
        for key in value:
            if not isinstance(key, str) or key not in schema:
                near = difflib.get_close_matches(str(key), list(schema), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else f"; known keys: {', '.join(schema)}"
                raise PipelineError(f"{origin}: unknown key {key!r} in {label}{hint}")
        for key in _REQUIRED.get(where, ()):
            if key not in value:
                raise PipelineError(f"{origin}: {label} needs the key {key!r}")
        return {k: _check(v, schema[k], f"{where}.{k}".lstrip("."), origin) for k, v in value.items()}
    if isinstance(schema, list):
        if not isinstance(value, list) or not value:
            raise PipelineError(f"{origin}: {where} must be a non-empty list, got {value!r}")
        return [_check(v, schema[0], f"{where}[{i}]", origin) for i, v in enumerate(value)]
    if isinstance(schema, tuple):
        if value not in schema:
            raise PipelineError(f"{origin}: {where} must be one of {', '.join(schema)}, got {value!r}")
        return value
    ok = isinstance(value, schema) and not isinstance(value, bool)
    if schema is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if schema is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            ok, value = True, float(value)
        except ValueError:
            pass
    if not ok:
        raise PipelineError(f"{origin}: {where} must be {_TYPE_WORDS[schema]}, got {value!r}")
    return value


def from_dict(raw, origin: str = "pipeline") -> Pipeline:
    """A validated Pipeline from parsed YAML (``origin`` names it in errors)."""
    d = _check(raw, _SCHEMA, "", origin)
    for name in d["heads"] + d.get("report", {}).get("efficiency", {}).get("heads", []):
        if name not in HEADS:
            near = difflib.get_close_matches(name, list(HEADS), n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"choose from {', '.join(HEADS)}"
            raise PipelineError(f"{origin}: unknown head {name!r} ({hint})")
    data, eff = d["data"], d.get("report", {}).get("efficiency", {})
    stray = [h for h in eff.get("heads", []) if h not in d["heads"]]
    if stray:
        raise PipelineError(f"{origin}: report.efficiency.heads names {', '.join(stray)}, which heads does not list")
    for where, v in (("data.test_fraction", data.get("test_fraction")), ("val_fraction", d.get("val_fraction"))):
        if v is not None and not 0 < v < 1:
            raise PipelineError(f"{origin}: {where} must lie between 0 and 1, got {v}")
    for key, v in [*d.get("extract", {}).items(), *data.get("per_class", {}).items(), ("report.efficiency.draws", eff.get("draws", 1)),
                   *(("report.efficiency.shots", s) for s in eff.get("shots", [])),
                   *((f"{st}.{k}", v) for st in ("finetune", "scratch") for k, v in (d.get(st) or {}).items()
                     if k != "lr"),
                   *((f"{st}.shots", v) for st in ("finetune", "scratch") for v in (d.get(st) or {}).get("shots", []))]:
        if isinstance(v, int) and v < (0 if key == "workers" else 1):
            raise PipelineError(f"{origin}: {key} must be at least {0 if key == 'workers' else 1}, got {v}")
    for st in ("finetune", "scratch"):
        lr = (d.get(st) or {}).get("lr")
        if lr is not None and not lr > 0:
            raise PipelineError(f"{origin}: {st}.lr must be positive, got {lr}")
    if not re.fullmatch(r"[\w.-]+", d["name"]):
        raise PipelineError(f"{origin}: name {d['name']!r} may hold only letters, digits, '_', '.' and '-'")
    p = Pipeline(name=d["name"], train=data["train"], val=data.get("val"), test=data.get("test"),
                 backbones=list(dict.fromkeys(d["backbones"])), heads=list(dict.fromkeys(d["heads"])),
                 extract=d.get("extract", {}), seed=d.get("seed", 0), val_fraction=d.get("val_fraction", 0.2),
                 efficiency_heads=eff.get("heads"))
    p.test_fraction = data.get("test_fraction", p.test_fraction)
    p.per_class = data.get("per_class", {})
    p.shots = sorted(set(eff.get("shots", p.shots)))
    p.draws = eff.get("draws", p.draws)
    p.finetune, p.scratch = d.get("finetune"), d.get("scratch")
    p.sweep = d.get("sweep") or {}
    for stage in ("finetune", "scratch"):
        for name in (d.get(stage) or {}).get("backbones", []):
            if name not in p.backbones:
                raise PipelineError(f"{origin}: {stage}.backbones names {name!r}, which backbones does not list")
    return p


def load(path: str | os.PathLike) -> Pipeline:
    """Read and validate a pipeline file (YAML through ``safe_load``: no tags run code)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PipelineError(f"{path}:{where} not valid YAML: {problem}") from None
    return from_dict(raw, str(path))


# --- running -----------------------------------------------------------------------------


def environment(device: str, precision: str) -> dict:
    import sklearn
    import timm
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    return {
        "featx": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "timm": timm.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__,
        "platform": platform.platform(), "cpu": cpu, "cores": len(os.sched_getaffinity(0)),
        "device": device, "gpu": gpu, "precision": precision,
    }


@dataclass
class _Split:
    X: np.ndarray
    y: np.ndarray
    keys: np.ndarray


def _extract_options(p: Pipeline) -> dict:
    """The pipeline's ``extract:`` settings that ``featx.extract.extract`` takes."""
    return {k: v for k, v in p.extract.items() if k in ("batch_size", "precision", "device", "decode", "workers", "on_error")}


def _features(p: Pipeline, sources: dict, backbone: str, cache_dir, progress: bool):
    """Train (+ val) and test arrays for one backbone, labels in the train classes."""
    from .backbones import PIXELS, load_backbone
    from .extract import extract

    size = None if backbone == PIXELS else p.extract.get("image_size")  # the baseline stays at 32 px
    bb = load_backbone(backbone, image_size=size)
    ex = _extract_options(p)
    results, arrays, skipped = {}, {}, []
    for split, src in sources.items():
        r = extract(src, bb, cache_dir, progress=progress, **ex)
        X, y, keys, classes = store.load(r.path)
        results[split] = (r, store.info(r.path))
        arrays[split] = (X, y, keys, classes)
        skipped += [{"split": split, "backbone": backbone, **s} for s in results[split][1]["skipped"]]
    classes = arrays["train"][3]
    splits = {}
    for split, (X, y, keys, cls) in arrays.items():
        y = models.align_labels(y, cls, classes, sources[split].spec) if split != "train" else y
        keep = y >= 0
        splits[split] = _Split(X[keep], y[keep], keys[keep])
    if "test" not in splits:  # hold a stratified share of train out as the test split
        tr = splits["train"]
        idx = np.arange(len(tr.y))
        try:
            a, b = train_test_split(idx, test_size=p.test_fraction, stratify=tr.y, random_state=p.seed)
        except ValueError as exc:
            raise PipelineError(f"{p.train}: cannot hold out a stratified test split ({exc})") from None
        a, b = np.sort(a), np.sort(b)
        splits["train"], splits["test"] = (_Split(tr.X[i], tr.y[i], tr.keys[i]) for i in (a, b))
    images = sum(info["rows"] for _, info in results.values())
    made = [info["provenance"].get("throughput", {}) for _, info in results.values()]
    secs = sum(t.get("seconds", 0.0) for t in made)
    r0, info0 = results["train"]
    extraction = {
        "backbone": backbone, "images": images,
        "images_per_second": round(sum(t.get("images", 0) for t in made) / secs, 2) if secs else None,
        "embedded_this_run": sum(r.embedded for r, _ in results.values()),
        "precision": r0.precision, "device": r0.device, "dim": int(splits["train"].X.shape[1]),
        "image_size": info0["provenance"]["backbone"]["preprocessing"]["image_size"],
        "stores": {s: str(r.path) for s, (r, _) in results.items()},
    }
    return splits, classes, extraction, skipped, info0["provenance"]


def _efficiency(p: Pipeline, backbone: str, head: str, X, y, test: _Split, main: dict) -> dict:
    """Test accuracy against labelled examples per class, several random draws each."""
    counts = np.bincount(y)
    points = []
    for n in p.shots:
        if n >= counts.min():
            continue
        accs = []
        for draw in range(p.draws):
            rng = np.random.default_rng([p.seed, n, draw])
            idx = np.concatenate([rng.choice(np.flatnonzero(y == k), n, replace=False) for k in range(len(counts))])
            model, _, _ = models.fit(X[idx], y[idx], head, val_fraction=p.val_fraction, seed=p.seed)
            accs.append(float(np.mean(model.predict(test.X) == test.y)))
        points.append({"per_class": n, "mean": float(np.mean(accs)), "std": float(np.std(accs)), "draws": accs})
    points.append({"per_class": round(len(y) / len(counts), 1), "mean": main["test_accuracy"], "std": 0.0,
                   "draws": [main["test_accuracy"]], "all": True})
    return {"backbone": backbone, "method": head, "points": points}


def run(p: Pipeline, out_dir: str | os.PathLike, cache_dir: str | os.PathLike = "cache",
        progress: bool = False, log=lambda message: None) -> dict:
    """Run a pipeline; writes the fitted models and the report files under ``out_dir``.

    Under ``torchrun`` every process runs the pipeline: the extraction is shared (see
    featx.extract), the fine-tune and scratch stages train together (DDP), every process
    fits the heads (the same fits), and the main process writes the models and the report.
    """
    from .sources import SubsetSource, open_source

    out = Path(out_dir)
    started = time.perf_counter()
    sources = {s: open_source(spec) for s, spec in (("train", p.train), ("val", p.val), ("test", p.test)) if spec}
    for split, n in p.per_class.items():
        if split in sources:
            sources[split] = SubsetSource(sources[split], n, p.seed)
    eff_heads = p.efficiency_heads if p.efficiency_heads is not None else [h for h in p.heads if h in CHEAP_HEADS]
    results, extraction, efficiency, skipped, details = [], [], [], [], {}
    data = None
    for backbone in p.backbones:
        log(f"{backbone}: embedding")
        splits, classes, ex, sk, provenance = _features(p, sources, backbone, cache_dir, progress)
        extraction.append(ex)
        skipped += sk
        tr, te = splits["train"], splits["test"]
        X, y = tr.X, tr.y
        val_mask = None
        if "val" in splits:
            X, y = np.concatenate([X, splits["val"].X]), np.concatenate([y, splits["val"].y])
            val_mask = np.r_[np.zeros(len(tr.y), bool), np.ones(len(splits["val"].y), bool)]
        data = data or {
            "train": p.train, "val": p.val, "test": p.test or f"{p.test_fraction:.0%} of train, stratified, seed {p.seed}",
            "classes": classes, "n_train": len(tr.y), "n_val": int(val_mask.sum()) if val_mask is not None else 0,
            "n_test": len(te.y),
            "validation": "the val source" if p.val else f"a stratified {p.val_fraction:.0%} of train, seed {p.seed}",
        }
        for head in p.heads:
            log(f"{backbone}: fitting {head}")
            with sweep_backend(p.sweep.get("backend", "loky"), p.sweep.get("address")):
                model, vm, seconds = models.fit(X, y, head, val_mask=val_mask, val_fraction=p.val_fraction,
                                                seed=p.seed, n_jobs=p.sweep.get("n_jobs"))
            y_pred = model.predict(te.X)
            model_file = out / "models" / f"{store.slug(backbone)}__{head}.joblib"
            if distributed.world().is_main:
                models.save(models.bundle(model, head, provenance, classes, store.DEFAULT_LAYER,
                                          {**vm, "fit_seconds": round(seconds, 3)}), model_file)
            row = {"dataset": p.name, "backbone": backbone, "method": head, "n_train": vm["n_train"],
                   **models.classification_metrics(te.y, y_pred), "fit_seconds": round(seconds, 3), "val_accuracy": vm["val_accuracy"],
                   "best_params": vm["best_params"], "model": str(model_file.relative_to(out))}
            results.append(row)
            details[(backbone, head)] = (te.y, y_pred)
            if head in eff_heads:
                log(f"{backbone}: data efficiency of {head}")
                efficiency.append(_efficiency(p, backbone, head, X, y, te, row))
        if p.finetune is not None or p.scratch is not None:
            from .pipeline_finetune import run_stages

            ex_opts = _extract_options(p)
            rows, curves, more = run_stages(p, backbone, sources, splits, out, cache_dir, ex_opts, progress, log)
            results += rows
            efficiency += curves
            details.update(more)
    best = max(results, key=lambda r: -1.0 if r["val_accuracy"] is None else r["val_accuracy"])
    for r in results:
        r["best"] = r is best
    y_true, y_best = details[(best["backbone"], method_label(best))]
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_best, labels=range(len(classes)), zero_division=0)
    report = {
        "name": p.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "data": data,
        "protocol": ("heads: hyper-parameters chosen on the validation split, the chosen model refit on train + "
                     "validation; trained networks: the epoch chosen on the validation split, trained on train only; "
                     "the test split scored once; best = highest validation accuracy"),
        "results": results,
        "best": {"backbone": best["backbone"], "method": method_label(best),
                 "confusion_matrix": confusion_matrix(y_true, y_best, labels=range(len(classes))).tolist(),
                 "per_class": [{"class": c, "precision": float(a), "recall": float(b), "f1": float(f),
                                "support": int(s)} for c, a, b, f, s in zip(classes, prec, rec, f1, support)]},
        "efficiency": efficiency,
        "extraction": extraction,
        "skipped": skipped,
        "environment": environment(extraction[0]["device"], extraction[0]["precision"]),
    }
    if distributed.world().is_main:
        write_report(report, out)
    return report
