"""Running a pipeline: several backbones x several heads (and optionally the networks
trained themselves) on one dataset, ending in a report.

Every stage is cached: embeddings live in the store, so a rerun that changes only the
heads does no extraction.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import train_test_split

from .. import store
from ..backbones import PIXELS
from ..core import distributed
from ..core.names import DEFAULT_LAYER
from ..core.version import __version__
from ..data.sources import SubsetSource, open_source
from ..extraction.recipes import Recipe, candidates, networks, recipe_store
from ..heads import CHEAP_HEADS
from ..heads.bundle import Bundle, save
from ..heads.fitting import align_labels, fit
from ..heads.metrics import classification_metrics
from ..heads.sweeps import sweep_backend
from .pipeline import Pipeline, PipelineError
from .report import method_label, write_report
from .stats import mcnemar, wilson

log = logging.getLogger(__name__)

PROTOCOL = ("heads: hyper-parameters chosen by stratified k-fold cross-validation on train below the "
            "pipeline's cv_below training rows (else on the validation split; on the val source when the "
            "pipeline names one), the chosen model refit on all training rows; trained networks: the epoch "
            "chosen on the validation split, trained on train only; the test split scored once; best = "
            "highest cross-validated (or validation) accuracy")


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
class Split:
    X: np.ndarray
    y: np.ndarray
    keys: np.ndarray


@dataclass
class BackboneFeatures:
    """One backbone's features of every split, labels in the train classes."""

    splits: dict[str, Split]  # train, test, and val when the pipeline names one
    classes: list[str]
    extraction: dict  # the report's extraction row
    skipped: list[dict]  # files not embedded, per split
    provenance: dict  # of the train store
    blocks: tuple[int, ...] = ()  # a recipe's block widths (BlockScaler weighs them alike)

    def training_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(X, y, val_mask): train and val stacked, val marked; no mask without a val split."""
        tr = self.splits["train"]
        if "val" not in self.splits:
            return tr.X, tr.y, None
        va = self.splits["val"]
        return (np.concatenate([tr.X, va.X]), np.concatenate([tr.y, va.y]),
                np.r_[np.zeros(len(tr.y), bool), np.ones(len(va.y), bool)])


def extract_options(p: Pipeline) -> dict:
    """The pipeline's ``extract:`` settings that :func:`featx.extraction.extract` takes."""
    return {k: v for k, v in p.extract.items()
            if k in ("batch_size", "precision", "device", "decode", "workers", "on_error", "commit_rows")}


def _features(p: Pipeline, sources: dict, recipe: Recipe, cache_dir, name: str) -> BackboneFeatures:
    """Every split embedded with one recipe (through the cache): a backbone's own store,
    or the store its recipe composes from its parts' stores; ``name``: the report's."""
    nets = networks(recipe)
    results, arrays, skipped = {}, {}, []
    for split, src in sources.items():
        made = recipe_store(recipe, src, cache_dir, nets=nets, **extract_options(p))
        arrays[split] = store.load(made.path)
        results[split] = (made, store.info(made.path))
        skipped += [{"split": split, "backbone": name, **s} for s in results[split][1]["skipped"]]
    classes = arrays["train"].classes
    splits = {}
    for split, (X, y, keys, cls) in arrays.items():
        y = align_labels(y, cls, classes, sources[split].spec) if split != "train" else y
        keep = y >= 0
        splits[split] = Split(X[keep], y[keep], keys[keep])
    if "test" not in splits:
        splits["train"], splits["test"] = _hold_out_test(p, splits["train"])
    return BackboneFeatures(splits, classes, _extraction_row(name, recipe, results, splits), skipped,
                            results["train"][1]["provenance"], results["train"][0].blocks)


def recipes_of(p: Pipeline) -> list[tuple[str, Recipe]]:
    """(name, recipe): the pipeline's backbones, each as it is, then the recipes its
    ``search:`` adds, named as written; in the recipe a network without a resolution of
    its own reads the pipeline's ``image_size`` (the pixels baseline stays at 32 px)."""
    size = p.extract.get("image_size")
    listed = [Recipe.of(b) for b in p.backbones]
    searched = candidates(p.search, p.backbones, size) if p.search else []
    out = []
    for r in dict.fromkeys(listed + searched):
        parts = tuple(part if part.backbone == PIXELS or part.image_size else replace(part, image_size=size)
                      for part in r.parts)
        out.append((r.name, Recipe(parts)))
    return out


def _hold_out_test(p: Pipeline, tr: Split) -> tuple[Split, Split]:
    """A stratified share of train held out as the test split."""
    try:
        a, b = train_test_split(np.arange(len(tr.y)), test_size=p.test_fraction, stratify=tr.y,
                                random_state=p.seed)
    except ValueError as exc:
        raise PipelineError(f"{p.train}: cannot hold out a stratified test split ({exc})") from None
    a, b = np.sort(a), np.sort(b)
    return Split(tr.X[a], tr.y[a], tr.keys[a]), Split(tr.X[b], tr.y[b], tr.keys[b])


def _extraction_row(name: str, recipe: Recipe, results: dict, splits: dict[str, Split]) -> dict:
    made = [r for rs, _ in results.values() for views in rs.parts for r in views]
    throughput = [t for rs, _ in results.values() for t in rs.throughput]
    secs = sum(t.get("seconds", 0.0) for t in throughput)
    rs0, _ = results["train"]
    first = rs0.parts[0][0]
    row = {
        "backbone": name, "images": sum(info["rows"] for _, info in results.values()),
        "images_per_second": round(sum(t.get("images", 0) for t in throughput) / secs, 2) if secs else None,
        "embedded_this_run": sum(r.embedded for r in made),
        "precision": first.precision, "device": first.device, "dim": int(splits["train"].X.shape[1]),
        "image_size": rs0.image_size,
        "ms_per_image": rs0.ms_per_image,
        "stores": {s: str(rs.path) for s, (rs, _) in results.items()},
    }
    if not recipe.plain:
        row["recipe"] = recipe.to_dict()
    return row


def _efficiency(p: Pipeline, backbone: str, head: str, *, X, y, test: Split, main: dict) -> dict:
    """Test accuracy against labelled examples per class, several random draws each."""
    counts = np.bincount(y)
    points = []
    for n in p.shots:
        if n >= counts.min():
            continue
        accs = []
        for draw in range(p.draws):
            rng = np.random.default_rng([p.seed, n, draw])
            idx = np.concatenate([rng.choice(np.flatnonzero(y == k), n, replace=False)
                                  for k in range(len(counts))])
            model, _, _ = fit(X[idx], y[idx], head, val_fraction=p.val_fraction, seed=p.seed,
                              cv_folds=p.cv_folds, cv_below=p.cv_below)
            accs.append(float(np.mean(model.predict(test.X) == test.y)))
        points.append({"per_class": n, "mean": float(np.mean(accs)), "std": float(np.std(accs)),
                       "draws": accs})
    points.append({"per_class": round(len(y) / len(counts), 1), "mean": main["test_accuracy"], "std": 0.0,
                   "draws": [main["test_accuracy"]], "all": True})
    return {"backbone": backbone, "method": head, "points": points}


def _fit_heads(p: Pipeline, backbone: str, feats: BackboneFeatures, out: Path):
    """Each head fitted (its model saved), scored once on test; (result rows, efficiency
    curves, (y_true, y_pred) per row's method)."""
    X, y, val_mask = feats.training_rows()
    te = feats.splits["test"]
    eff_heads = p.efficiency_heads
    if eff_heads is None:
        eff_heads = [h for h in p.heads if h in CHEAP_HEADS]
    rows, curves, details = [], [], {}
    for head in p.heads:
        log.info("%s: fitting %s", backbone, head)
        with sweep_backend(p.sweep.get("backend", "loky"), p.sweep.get("address")):
            model, vm, seconds = fit(X, y, head, val_mask=val_mask, val_fraction=p.val_fraction, seed=p.seed,
                                     n_jobs=p.sweep.get("n_jobs"), cv_folds=p.cv_folds, cv_below=p.cv_below,
                                     blocks=feats.blocks)
        y_pred = model.predict(te.X)
        model_file = out / "models" / f"{store.slug(backbone)}__{head}.joblib"
        if distributed.world().is_main:
            save(Bundle.fitted(model, head, feats.provenance, feats.classes, DEFAULT_LAYER,
                               {**vm, "fit_seconds": round(seconds, 3)}), model_file)
        row = {"dataset": p.name, "backbone": backbone, "method": head, "n_train": vm["n_train"],
               **classification_metrics(te.y, y_pred), "fit_seconds": round(seconds, 3),
               "val_accuracy": vm["val_accuracy"], "selection": vm["selection"], "cv": vm["cv"],
               "best_params": vm["best_params"],
               "features": int(X.shape[1]), "extract_ms_per_image": feats.extraction["ms_per_image"],
               "model": str(model_file.relative_to(out))}
        if "recipe" in feats.extraction:
            row["recipe"] = feats.extraction["recipe"]
        rows.append(row)
        details[(backbone, head)] = (te.y, y_pred)
        if head in eff_heads and "recipe" not in feats.extraction:  # curves: the backbones as they are
            log.info("%s: data efficiency of %s", backbone, head)
            curves.append(_efficiency(p, backbone, head, X=X, y=y, test=te, main=row))
    return rows, curves, details


def _data(p: Pipeline, feats: BackboneFeatures) -> dict:
    """The report's description of the splits."""
    n_val = len(feats.splits["val"].y) if "val" in feats.splits else 0
    return {
        "train": p.train, "val": p.val,
        "test": p.test or f"{p.test_fraction:.0%} of train, stratified, seed {p.seed}",
        "classes": feats.classes, "n_train": len(feats.splits["train"].y), "n_val": n_val,
        "n_test": len(feats.splits["test"].y),
        "validation": _validation(p, len(feats.splits["train"].y)),
    }


def _validation(p: Pipeline, n_train: int) -> str:
    """How the heads' hyper-parameters and the best method were chosen, in words."""
    if p.val:
        return "the val source"
    if n_train < p.cv_below:
        return f"stratified {p.cv_folds}-fold cross-validation on train, seed {p.seed}"
    return f"a stratified {p.val_fraction:.0%} of train, seed {p.seed}"


def _best(results: list[dict], details: dict, classes: list[str]) -> dict:
    """Mark the result with the best validation accuracy; its confusion matrix and per-class scores."""
    best = max(results, key=lambda r: -1.0 if r["val_accuracy"] is None else r["val_accuracy"])
    for r in results:
        r["best"] = r is best
    y_true, y_best = details[(best["backbone"], method_label(best))]
    labels = range(len(classes))
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_best, labels=labels, zero_division=0)
    return {"backbone": best["backbone"], "method": method_label(best),
            "confusion_matrix": confusion_matrix(y_true, y_best, labels=labels).tolist(),
            "per_class": [{"class": c, "precision": float(a), "recall": float(b), "f1": float(f),
                           "support": int(s)}
                          for c, a, b, f, s in zip(classes, prec, rec, f1, support)]}


def _statistics(results: list[dict], details: dict) -> None:
    """Each row's 95 % interval on its test accuracy, and the best row compared with each
    other row on the same test images (McNemar's exact test)."""
    right = {}
    for r in results:
        y_true, y_pred = details[(r["backbone"], method_label(r))]
        right[id(r)] = np.asarray(y_true) == np.asarray(y_pred)
        r["test_interval95"] = list(wilson(int(right[id(r)].sum()), len(y_true)))
    best = next(r for r in results if r.get("best"))
    for r in results:
        if r is not best and len(right[id(r)]) == len(right[id(best)]):
            m = mcnemar(right[id(best)], right[id(r)])
            r["vs_best"] = {"p_value": m["p_value"], "only_best_right": m["only_first_right"],
                            "only_this_right": m["only_second_right"]}


def run(p: Pipeline, out_dir: str | os.PathLike, cache_dir: str | os.PathLike = "cache") -> dict:
    """Run a pipeline; writes the fitted models and the report files under ``out_dir``.

    Under ``torchrun`` every process runs the pipeline: the extraction is shared (see
    featx.extraction), the fine-tune and scratch stages train together (DDP), every
    process fits the heads (the same fits), and the main process writes the models and
    the report.
    """
    out = Path(out_dir)
    started = time.perf_counter()
    specs = {"train": p.train, "val": p.val, "test": p.test}
    sources = {split: open_source(spec) for split, spec in specs.items() if spec}
    for split, n in p.per_class.items():
        if split in sources:
            sources[split] = SubsetSource(sources[split], n, p.seed)
    results, extraction, efficiency, skipped, details, data = [], [], [], [], {}, None
    for backbone, recipe in recipes_of(p):
        log.info("%s: embedding", backbone)
        feats = _features(p, sources, recipe, cache_dir, backbone)
        extraction.append(feats.extraction)
        skipped += feats.skipped
        data = data or _data(p, feats)
        rows, curves, more = _fit_heads(p, backbone, feats, out)
        if recipe.plain and (p.finetune is not None or p.scratch is not None):
            from .stages import run_stages

            trained = run_stages(p, recipe.parts[0].backbone, sources=sources, splits=feats.splits, out=out,
                                 cache_dir=cache_dir, extract_options=extract_options(p))
            rows, curves, more = rows + trained[0], curves + trained[1], {**more, **trained[2]}
        results += rows
        efficiency += curves
        details.update(more)
    best = _best(results, details, data["classes"])
    _statistics(results, details)
    report = {
        "name": p.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "data": data,
        "protocol": PROTOCOL,
        "results": results,
        "best": best,
        "efficiency": efficiency,
        "extraction": extraction,
        "skipped": skipped,
        "environment": environment(extraction[0]["device"], extraction[0]["precision"]),
    }
    if distributed.world().is_main:
        write_report(report, out)
    return report
