"""A pipeline's ``finetune`` and ``scratch`` stages: the networks trained on the very
splits the heads used (the same train, validation and test images), each run in its
own folder under ``OUT/finetune/`` so that a rerun reuses or resumes it.

The data-efficiency points draw ``shots`` images per class from the train split (one
seeded draw each, since every point is a whole training run); as for the heads, a
validation share is carved out of those images, so a point's label count is all the
labelled data that run saw. (With a separate val source the heads' points draw from
train and val together; the networks' from train only, keeping val for the epoch.)
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np

import logging

from ..backbones import PIXELS
from ..core.hashing import digest
from ..data.sources import KeysSource
from ..heads import validation_split
from ..store import slug
from ..training import FinetuneError, FinetuneResult, Settings, finetune

log = logging.getLogger(__name__)

DEFAULT_SHOTS = [5, 20]


def settings_for(p, stage: str, strategy: str) -> tuple[Settings, list[int]]:
    """A stage's Settings (scratch inherits what it does not name from finetune) and shots."""
    conf = dict(p.finetune or {})
    if stage == "scratch":
        conf.update(p.scratch or {})
    named = {k: v for k, v in conf.items() if k in {f.name for f in fields(Settings)}}  # the rest: Settings' defaults
    s = Settings(**{**named, "strategy": strategy if stage == "finetune" else "full", "pretrained": stage == "finetune",
                    "image_size": conf.get("image_size", p.extract.get("image_size")),
                    "val_fraction": p.val_fraction, "seed": p.seed})
    return s, sorted(set(conf.get("shots", DEFAULT_SHOTS)))


def stage_backbones(p, stage: str) -> list[str]:
    conf = {**(p.finetune or {}), **((p.scratch or {}) if stage == "scratch" else {})}
    return conf.get("backbones") or [b for b in p.backbones if b != PIXELS]


def run_stages(p, backbone: str, *, sources: dict, splits: dict, out: Path, cache_dir,
               extract_options: dict) -> tuple[list[dict], list[dict], dict]:
    """Result rows, efficiency curves and (y_true, y_pred) per row label for one backbone."""
    tr, te = splits["train"], splits["test"]
    train_src = sources["train"]
    test_src = KeysSource(sources.get("test", train_src), te.keys.tolist(), "test")
    if "val" in splits:
        val_src = KeysSource(sources["val"], splits["val"].keys.tolist(), "val")
        train_keys = tr.keys
    else:  # the heads' own rule on the same rows: the same validation images
        cut = validation_split(tr.y, p.val_fraction, p.seed)
        if cut is None:
            raise FinetuneError(f"{p.train}: too few images per class to hold out a validation split for "
                                "fine-tuning (at least 2 per class)")
        val_src = KeysSource(train_src, tr.keys[cut[1]].tolist(), "val")
        train_keys = tr.keys[cut[0]]
    y_pool = tr.y if "val" in splits else tr.y[cut[0]]  # the labels of train_keys
    rows, curves, details = [], [], {}
    stages = [("finetune", s) for s in (p.finetune or {}).get("strategies", ["lp_ft"])] if p.finetune is not None else []
    if p.scratch is not None:
        stages.append(("scratch", "full"))
    for stage, strategy in stages:
        if backbone not in stage_backbones(p, stage):
            continue
        settings, shots = settings_for(p, stage, strategy)
        label = settings.method if stage == "scratch" else f"finetune ({strategy})"

        def one(train, val, tag, settings=settings, label=label):
            name = f"{backbone}__{settings.method}__{tag}"
            # one folder per settings and data (keys and stamps): a changed pipeline starts a new run
            data = [(s.spec, [(it.key, it.stamp) for it in s.items]) for s in (train, val, test_src) if s is not None]
            folder = out / "finetune" / f"{slug(name)}-{digest([name, repr(settings), data])[:8]}"
            log.info("%s: %s, %s", backbone, label, tag)
            return finetune(train, backbone, folder, val=val, test=test_src, settings=settings, cache_dir=cache_dir,
                            extract_options=extract_options, device=p.extract.get("device", "auto"),
                            workers=p.extract.get("workers"), resume=True)

        main = one(KeysSource(train_src, train_keys.tolist(), "train"), val_src, "all")
        row = _row(p, backbone, stage, strategy, main, out)
        rows.append(row)
        details[(backbone, label)] = (np.array(main.test["y_true"]), np.array(main.test["y_pred"]))
        points = []
        counts = np.bincount(y_pool)
        for n in shots:
            if n >= counts.min() or n < 2:
                continue
            rng = np.random.default_rng([p.seed, n, 0])
            keys = np.concatenate([rng.choice(train_keys[y_pool == k], n, replace=False) for k in range(len(counts))])
            r = one(KeysSource(train_src, keys.tolist(), f"{n}pc-seed{p.seed}"), None, f"{n}pc")
            acc = r.test["test_accuracy"]
            points.append({"per_class": n, "mean": acc, "std": 0.0, "draws": [acc]})
        skipped = [str(n) for n in shots if n not in [q["per_class"] for q in points]]
        if skipped:
            log.info("%s: %s at %s images per class skipped: the train split holds %d images of its smallest class",
                     backbone, label, ", ".join(skipped), counts.min())
        points.append({"per_class": round(row["n_train"] / len(counts), 1), "mean": row["test_accuracy"], "std": 0.0,
                       "draws": [row["test_accuracy"]], "all": True})
        curves.append({"backbone": backbone, "method": row["method"], "strategy": row.get("strategy"), "points": points})
    return rows, curves, details


def _row(p, backbone: str, stage: str, strategy: str, r: FinetuneResult, out: Path) -> dict:
    m = r.metrics
    row = {"dataset": p.name, "backbone": backbone, "method": stage, "n_train": m["n_train"] + m["n_val"],
           "test_accuracy": r.test["test_accuracy"], "balanced_accuracy": r.test["balanced_accuracy"],
           "macro_f1": r.test["macro_f1"], "fit_seconds": r.seconds, "val_accuracy": r.val_accuracy,
           "train_seconds": r.train_seconds, "train_images_per_second": r.train_images_per_second,
           "epochs_run": r.epochs_run, "best_epoch": r.best_epoch, "precision": m["precision"]["training"],
           "image_size": m["backbone"]["preprocessing"]["image_size"], "model": str(r.model.relative_to(out))}
    if stage == "finetune":
        row["strategy"] = strategy
    return row
