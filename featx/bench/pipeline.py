"""YAML pipelines: what a pipeline file may say, checked key by key (runs: :mod:`.run`).

Relative data paths are read from the directory featx runs in.

    name: hymenoptera
    data:
      train: ../shared/datasets/hymenoptera.tar:hymenoptera/train
      test: ../shared/datasets/hymenoptera.tar:hymenoptera/val
      # val: SRC            optional; else a stratified val_fraction of train
      # test_fraction: 0.25 used when there is no test source: held out of train
      # per_class: {train: 500, test: 200}   a seeded random subset of each split
    backbones: [efficientnet_lite0, pixels]
    extract: {image_size: 224, batch_size: 64, precision: auto, device: auto, decode: cpu, workers: 2,
              on_error: skip,   # skip: record a bad file and go on; fail: stop at the first
              commit_rows: 2048}  # images per journal commit: a killed run loses at most this many
    # (image_size is the networks' input; the pixels baseline stays at 32 x 32)
    heads: [logreg, linear_svm, knn]
    search: auto             # optional: feature recipes fitted beside the backbones (docs/recipes.md):
                             # auto, or a list such as [{backbone: efficientnet_lite0, tta: flip},
                             # {stack: [efficientnet_lite0, efficientnet_lite1]}]
    seed: 0
    val_fraction: 0.2        # the held-out share of train when there is no val source, from cv_below rows
    cv_folds: 5              # below cv_below training rows (and without a val source), heads and the
    cv_below: 20000          # best method are chosen by stratified cv_folds-fold cross-validation
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
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..core.errors import FeatxError
from ..heads import HEADS


class PipelineError(FeatxError):
    """A pipeline file that cannot be read or does not follow the schema."""


_TRAINING = {"backbones": [str], "epochs": int, "batch_size": int, "accumulate": int,
             "optimizer": ("adamw", "sgd"),
             "lr": float, "patience": int, "image_size": int, "precision": ("auto", "fp32", "bf16", "fp16"),
             "shots": [int]}
_SCHEMA = {
    "name": str,
    "data": {"train": str, "val": str, "test": str, "test_fraction": float,
             "per_class": {"train": int, "val": int, "test": int}},
    "backbones": [str],
    "extract": {"image_size": int, "batch_size": int, "precision": ("auto", "fp32", "bf16", "fp16"),
                "device": ("auto", "cpu", "cuda"), "decode": ("auto", "cpu", "gpu"), "workers": int,
                "on_error": ("skip", "fail"), "commit_rows": int},
    "heads": [str],
    "seed": int,
    "val_fraction": float,
    "cv_folds": int,
    "cv_below": int,
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
    cv_folds: int = 5  # cross-validation below cv_below training rows (heads.base.SweptHead)
    cv_below: int = 20_000
    shots: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 25])
    draws: int = 5
    efficiency_heads: list[str] | None = None  # None: the cheap ones among ``heads``
    per_class: dict = field(default_factory=dict)  # split -> images per class (a seeded subset)
    finetune: dict | None = None  # the finetune stage's settings, None: no fine-tuning
    scratch: dict | None = None  # the scratch stage's own settings (the rest: finetune's)
    sweep: dict = field(default_factory=dict)  # n_jobs, backend, address: where the heads' sweeps run
    search: list | str | None = None  # "auto" or recipes (featx.extraction.recipes), beside the backbones


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
    search = raw.get("search") if isinstance(raw, dict) else None
    if isinstance(raw, dict) and "search" in raw:  # a list or "auto": checked by _search
        raw = {k: v for k, v in raw.items() if k != "search"}
    d = _check(raw, _SCHEMA, "", origin)
    for name in d["heads"] + d.get("report", {}).get("efficiency", {}).get("heads", []):
        if name not in HEADS:
            near = difflib.get_close_matches(name, list(HEADS), n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"choose from {', '.join(HEADS)}"
            raise PipelineError(f"{origin}: unknown head {name!r} ({hint})")
    data, eff = d["data"], d.get("report", {}).get("efficiency", {})
    stray = [h for h in eff.get("heads", []) if h not in d["heads"]]
    if stray:
        raise PipelineError(f"{origin}: report.efficiency.heads names {', '.join(stray)}, "
                            "which heads does not list")
    for where, v in (("data.test_fraction", data.get("test_fraction")),
                     ("val_fraction", d.get("val_fraction"))):
        if v is not None and not 0 < v < 1:
            raise PipelineError(f"{origin}: {where} must lie between 0 and 1, got {v}")
    for key, v in [*d.get("extract", {}).items(), *data.get("per_class", {}).items(),
                   ("report.efficiency.draws", eff.get("draws", 1)),
                   *(("report.efficiency.shots", s) for s in eff.get("shots", [])),
                   *((f"{st}.{k}", v) for st in ("finetune", "scratch") for k, v in (d.get(st) or {}).items()
                     if k != "lr"),
                   *((f"{st}.shots", v) for st in ("finetune", "scratch")
                     for v in (d.get(st) or {}).get("shots", []))]:
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
    p.cv_folds, p.cv_below = d.get("cv_folds", p.cv_folds), d.get("cv_below", p.cv_below)
    if p.cv_folds < 2:
        raise PipelineError(f"{origin}: cv_folds must be at least 2, got {p.cv_folds}")
    p.per_class = data.get("per_class", {})
    p.shots = sorted(set(eff.get("shots", p.shots)))
    p.draws = eff.get("draws", p.draws)
    p.finetune, p.scratch = d.get("finetune"), d.get("scratch")
    p.sweep = d.get("sweep") or {}
    p.search = _search(search, origin)
    for stage in ("finetune", "scratch"):
        for name in (d.get(stage) or {}).get("backbones", []):
            if name not in p.backbones:
                raise PipelineError(f"{origin}: {stage}.backbones names {name!r}, "
                                    "which backbones does not list")
    return p


def _search(search, origin: str):
    """The ``search:`` section checked: ``auto`` (built when the pipeline runs, from its
    backbones) or a list of recipes, each as :func:`featx.extraction.recipes.parse` reads it."""
    if search is None or search == "auto":
        return search
    from ..extraction.recipes import RecipeError, candidates

    try:
        candidates(search, [])
    except RecipeError as exc:
        raise PipelineError(f"{origin}: {exc}") from None
    return search


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
