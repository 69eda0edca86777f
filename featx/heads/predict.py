"""Labelling images end-to-end with a model file: backbone (through the store), then head."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import store
from ..backbones import load_backbone
from ..core.errors import FeatxError
from ..core.files import atomic_path
from ..extraction import extract
from .bundle import Bundle
from .fitting import attach_training_rows


@dataclass
class Predictions:
    keys: list[str]
    labels: list[str]  # predicted class names
    proba: np.ndarray  # (n, classes) in the bundle's class order
    classes: list[str]
    true: list[str]  # the source's label per row, "" when unlabelled
    skipped: list[tuple[str, str]]  # (key, reason)
    store: Path

    @property
    def accuracy(self) -> float | None:
        """Accuracy on the rows whose label the model knows; None if there are none."""
        known = [(t, p) for t, p in zip(self.true, self.labels) if t in self.classes]
        return sum(t == p for t, p in known) / len(known) if known else None

    def write_csv(self, path: str | os.PathLike, top_k: int = 3) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        order = np.argsort(-self.proba, axis=1, kind="stable")[:, :top_k]
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                            errors="surrogateescape") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "probability", "top_k", "true_label", "error"])
            for i, key in enumerate(self.keys):
                top = ";".join(f"{self.classes[j]}:{self.proba[i, j]:.4f}" for j in order[i])
                w.writerow([key, self.labels[i], f"{self.proba[i].max():.4f}", top, self.true[i], ""])
            for key, reason in self.skipped:
                w.writerow([key, "", "", "", "", reason])
        return path


def predict(b: Bundle, data, cache_dir: str | os.PathLike = "cache", *, weights: str | None = None,
            batch_size: int | None = None, device: str = "auto", workers: int | None = None,
            on_error: str = "skip") -> Predictions:
    """Classify every image of ``data`` with a bundle: backbone (through the store), then
    head; a bundle fitted on a recipe's features (:mod:`featx.extraction.recipes`) embeds the images
    with every part of its recipe."""
    options = {"batch_size": batch_size, "precision": b.precision, "device": device, "workers": workers,
               "on_error": on_error}
    if b.backbone.get("recipe"):
        path = _recipe_store(b, data, cache_dir, weights, options)
    else:
        path = extract(data, _backbone(b, weights or b.weights_file), cache_dir, **options).path
    X, y, keys, classes = store.load(path, b.layer)
    skipped = [(s["key"], s["reason"]) for s in store.info(path)["skipped"]]
    names = b.classes
    proba = np.zeros((len(X), len(names)), np.float64)
    if len(X):
        attach_training_rows(b)  # a knn trained out of core reads its training store
        proba[:, b.model.classes_] = b.model.predict_proba(X)
    return Predictions(
        keys=list(keys), labels=[names[k] for k in proba.argmax(axis=1)], proba=proba, classes=names,
        true=[classes[k] if k >= 0 else "" for k in y], skipped=skipped, store=path,
    )


def _backbone(b: Bundle, weights: str | None):
    """The bundle's backbone, refused when its weights are not the ones the head was fitted on."""
    ident = b.backbone
    backbone = load_backbone(ident["name"], weights=weights, layers=ident["layers"],
                             image_size=ident["preprocessing"]["image_size"])
    _same_weights(backbone, ident, "with --weights")
    return backbone


def _same_weights(backbone, ident: dict, how: str) -> None:
    if backbone.identity()["weights_sha256"] != ident["weights_sha256"]:
        raise FeatxError(
            f"{ident['name']}: these weights (SHA-256 {backbone.weights_sha256[:12]}) are not the ones the "
            f"model was trained on ({ident['weights']}, {ident['weights_sha256'][:12]}); pass that file "
            f"{how}"
        )


def _recipe_store(b: Bundle, data, cache_dir, weights: str | None, options: dict) -> Path:
    from ..extraction.recipes import Recipe, networks, recipe_store

    if weights is not None:
        raise FeatxError(f"{b.backbone['name']}: a recipe's networks take their weights from their names; "
                         "this model takes no weights file")
    recipe = Recipe.from_dict(b.backbone["recipe"])
    nets = networks(recipe)
    for views, ident in zip(nets, b.backbone["parts"]):
        _same_weights(views[0], ident, "(the recipe's networks must be the ones it was fitted on)")
    return recipe_store(recipe, data, cache_dir, nets=nets, **options).path
