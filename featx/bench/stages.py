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

import logging
from dataclasses import fields
from pathlib import Path

import numpy as np

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
    known = {f.name for f in fields(Settings)}
    named = {k: v for k, v in conf.items() if k in known}  # the rest: Settings' defaults
    s = Settings(**{**named, "strategy": strategy if stage == "finetune" else "full",
                    "pretrained": stage == "finetune",
                    "image_size": conf.get("image_size", p.extract.get("image_size")),
                    "val_fraction": p.val_fraction, "seed": p.seed})
    return s, sorted(set(conf.get("shots", DEFAULT_SHOTS)))


def stage_backbones(p, stage: str) -> list[str]:
    conf = {**(p.finetune or {}), **((p.scratch or {}) if stage == "scratch" else {})}
    return conf.get("backbones") or [b for b in p.backbones if b != PIXELS]


def run_stages(p, backbone: str, *, sources: dict, splits: dict, out: Path, cache_dir,
               extract_options: dict) -> tuple[list[dict], list[dict], dict]:
    """Result rows, efficiency curves and (y_true, y_pred) per row label for one backbone."""
    runs = _Runs(p, backbone, sources, splits, out=out, cache_dir=cache_dir, extract_options=extract_options)
    rows, curves, details = [], [], {}
    stages = []
    if p.finetune is not None:
        stages = [("finetune", s) for s in p.finetune.get("strategies", ["lp_ft"])]
    if p.scratch is not None:
        stages.append(("scratch", "full"))
    for stage, strategy in stages:
        if backbone not in stage_backbones(p, stage):
            continue
        settings, shots = settings_for(p, stage, strategy)
        label = settings.method if stage == "scratch" else f"finetune ({strategy})"
        main = runs.train(KeysSource(runs.train_src, runs.train_keys.tolist(), "train"), runs.val_src, "all",
                          settings, label)
        row = _row(p, backbone, stage, strategy, main, out)
        rows.append(row)
        details[(backbone, label)] = (np.array(main.test["y_true"]), np.array(main.test["y_pred"]))
        curves.append({"backbone": backbone, "method": row["method"], "strategy": row.get("strategy"),
                       "points": runs.points(settings, label, shots, row)})
    return rows, curves, details


class _Runs:
    """The training runs of one backbone: the heads' splits, and a run folder per run."""

    def __init__(self, p, backbone: str, sources: dict, splits: dict, *, out: Path, cache_dir,
                 extract_options: dict):
        self.p, self.backbone, self.out = p, backbone, out
        self.cache_dir, self.extract_options = cache_dir, extract_options
        tr, te = splits["train"], splits["test"]
        self.train_src = sources["train"]
        self.test_src = KeysSource(sources.get("test", self.train_src), te.keys.tolist(), "test")
        if "val" in splits:
            self.val_src = KeysSource(sources["val"], splits["val"].keys.tolist(), "val")
            keep = np.arange(len(tr.y))
        else:  # the heads' own rule on the same rows: the same validation images
            cut = validation_split(tr.y, p.val_fraction, p.seed)
            if cut is None:
                raise FinetuneError(f"{p.train}: too few images per class to hold out a validation split for "
                                    "fine-tuning (at least 2 per class)")
            self.val_src = KeysSource(self.train_src, tr.keys[cut[1]].tolist(), "val")
            keep = cut[0]
        self.train_keys, self.y_pool = tr.keys[keep], tr.y[keep]  # the images a run trains on

    def train(self, train, val, tag: str, settings: Settings, label: str) -> FinetuneResult:
        name = f"{self.backbone}__{settings.method}__{tag}"
        # one folder per settings and data (keys and stamps): a changed pipeline starts a new run
        data = [(s.spec, [(it.key, it.stamp) for it in s.items])
                for s in (train, val, self.test_src) if s is not None]
        folder = self.out / "finetune" / f"{slug(name)}-{digest([name, repr(settings), data])[:8]}"
        log.info("%s: %s, %s", self.backbone, label, tag)
        return finetune(train, self.backbone, folder, val=val, test=self.test_src, settings=settings,
                        cache_dir=self.cache_dir, extract_options=self.extract_options,
                        device=self.p.extract.get("device", "auto"), workers=self.p.extract.get("workers"),
                        resume=True)

    def points(self, settings: Settings, label: str, shots: list[int], row: dict) -> list[dict]:
        """The data-efficiency curve: one run per number of images per class, then all of them."""
        p, points = self.p, []
        counts = np.bincount(self.y_pool)
        for n in shots:
            if n >= counts.min() or n < 2:
                continue
            rng = np.random.default_rng([p.seed, n, 0])
            keys = np.concatenate([rng.choice(self.train_keys[self.y_pool == k], n, replace=False)
                                   for k in range(len(counts))])
            r = self.train(KeysSource(self.train_src, keys.tolist(), f"{n}pc-seed{p.seed}"), None, f"{n}pc",
                           settings, label)
            acc = r.test["test_accuracy"]
            points.append({"per_class": n, "mean": acc, "std": 0.0, "draws": [acc]})
        skipped = [str(n) for n in shots if n not in [q["per_class"] for q in points]]
        if skipped:
            log.info("%s: %s at %s images per class skipped: the train split holds %d images of its "
                     "smallest class", self.backbone, label, ", ".join(skipped), counts.min())
        points.append({"per_class": round(row["n_train"] / len(counts), 1), "mean": row["test_accuracy"],
                       "std": 0.0, "draws": [row["test_accuracy"]], "all": True})
        return points


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
