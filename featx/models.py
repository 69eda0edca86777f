"""Fitted models: a head trained on a store's features, saved with what it needs to predict.

A bundle holds the fitted head, the backbone's identity (name, weights SHA-256,
preprocessing), the layer and precision of the features, the class names and the
validation metrics. Beside it, ``<file>.json`` records the file's SHA-256 and the same
facts in readable form.

Two formats, chosen by the file's suffix:

- joblib (any other suffix): loading a joblib file runs code, so ``load`` refuses one
  without a sidecar or whose bytes do not match it, and unpickles the very bytes it
  checked.
- skops (``.skops``): loading runs no code from the file; only the types of featx's
  heads (and the few scikit-learn parts they hold) are built, so a file from someone
  else loads safely, sidecar or not (a sidecar that does not match is still refused).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np

from . import __version__, store
from .errors import FeatxError
from .files import atomic_path, write_bytes
from .heads import make_head
from .store import DEFAULT_LAYER

FORMAT = 1


class ModelError(FeatxError):
    """A model file that is missing, altered or not a featx model."""


def align_labels(y: np.ndarray, classes: list[str], to: list[str], what: str) -> np.ndarray:
    """Re-index labels ``y`` (into ``classes``) into the class list ``to``."""
    index = {c: i for i, c in enumerate(to)}
    unknown = sorted({classes[k] for k in np.unique(y) if k >= 0} - set(index))
    if unknown:
        raise FeatxError(f"{what}: classes not in the training data: {', '.join(unknown)}")
    lookup = np.array([index[c] for c in classes] + [-1], dtype=np.int64)
    return lookup[y]  # -1 (unlabelled) maps to the appended -1


def fit(X, y, head: str, *, val_mask=None, val_fraction: float = 0.2, seed: int = 0, n_jobs: int | None = None):
    """Fit a head by name; returns (fitted head, validation metrics, fit seconds). With
    ``n_jobs`` its sweep runs as that many joblib tasks (see featx.sweeps)."""
    labelled = y >= 0
    if not labelled.all():
        X, y = X[labelled], y[labelled]
        val_mask = None if val_mask is None else np.asarray(val_mask)[labelled]
    start = time.perf_counter()
    try:
        model = make_head(head, val_fraction=val_fraction, random_state=seed, n_jobs=n_jobs).fit(X, y, val_mask=val_mask)
    except ValueError as exc:  # e.g. a single class
        raise FeatxError(f"{head}: cannot fit ({exc})") from None
    seconds = time.perf_counter() - start
    metrics = {
        "val_accuracy": model.val_accuracy_,
        "selected_on_validation": model.selected_on_validation_,
        "best_params": {k: _plain(v) for k, v in model.best_params_.items()},
        "val_scores": [{k: _plain(v) for k, v in s.items()} for s in model.val_scores_],
        "n_train": len(y),
    }
    return model, metrics, seconds


def classification_metrics(y_true, y_pred) -> dict:
    """Test accuracy, balanced accuracy and macro-F1 of predictions."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    return {
        "test_accuracy": float(np.mean(y_true == y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def bundle(model, head: str, provenance: dict, classes: list[str], layer: str, metrics: dict) -> dict:
    """Everything ``predict`` needs, from a fitted head and its training store's provenance."""
    return {
        "format": FORMAT,
        "featx": __version__,
        "head": head,
        "model": model,
        "backbone": provenance["backbone"],
        "precision": provenance["precision"],
        "layer": layer,
        "classes": list(classes),
        "metrics": metrics,
    }


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


SKOPS_SUFFIX = ".skops"

# What a skops bundle may build besides plain data: featx's heads and the parts of
# scikit-learn they hold that skops does not trust by default. Nothing else.
SKOPS_TRUSTED = {
    "featx.heads.LogRegHead", "featx.heads.LinearSVMHead", "featx.heads.RidgeHead", "featx.heads.KNNHead",
    "featx.heads.NearestCentroidHead", "featx.heads.MLPHead", "featx.heads.HGBHead", "featx.heads._RowSpan",
    "featx.heads._CosineCentroids", "featx.logreg.TorchLogisticRegression", "featx.knn.CosineKNN",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
}


def _is_skops(path: Path) -> bool:
    return path.suffix == SKOPS_SUFFIX


def save(b: dict, path: str | os.PathLike) -> Path:
    """Write a bundle (skops for a ``.skops`` file, else joblib) and its sidecar, each
    atomically (the sidecar last)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _is_skops(path):
        import skops.io

        data = skops.io.dumps(b)
    else:
        buf = io.BytesIO()
        joblib.dump(b, buf)
        data = buf.getvalue()
    write_bytes(path, data)
    facts = {k: v for k, v in b.items() if k != "model"}
    write_bytes(_sidecar(path), (json.dumps({"sha256": hashlib.sha256(data).hexdigest(), **facts}, indent=2)
                                 + "\n").encode())
    return path


def load(path: str | os.PathLike) -> dict:
    """Read a bundle, after checking its bytes against the SHA-256 in its sidecar."""
    from .finetune import is_model_file, load_model

    if is_model_file(path):  # a fine-tuned network: its own classifier on its features
        return load_model(path)
    path = Path(path)
    side = _sidecar(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file ({exc.strerror or exc})") from None
    try:
        expected = json.loads(side.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        if not _is_skops(path) or side.exists():
            raise ModelError(f"{path}: no valid sidecar {side.name} recording its SHA-256; refusing to load it "
                             "(a joblib file runs code when loaded; a .skops file does not need one)") from None
        expected = None
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ModelError(f"{path}: SHA-256 does not match {side.name}; the file was altered, refusing to load it")
    b = _load_skops(path, data) if _is_skops(path) else joblib.load(io.BytesIO(data))  # the bytes checked
    if not isinstance(b, dict) or b.get("format") != FORMAT:
        raise ModelError(f"{path}: not a featx model bundle (format {FORMAT})")
    return b


def _load_skops(path: Path, data: bytes) -> dict:
    import skops.io

    try:
        untrusted = set(skops.io.get_untrusted_types(data=data))
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file fails in many ways
        raise ModelError(f"{path}: not a readable skops file ({exc})") from None
    foreign = sorted(untrusted - SKOPS_TRUSTED)
    if foreign:
        raise ModelError(f"{path}: holds types featx does not build from a file ({', '.join(foreign)}); "
                         "refusing to load it")
    try:
        return skops.io.loads(data, trusted=sorted(untrusted))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: not a readable skops file ({exc})") from None


def train(features: str | os.PathLike, head: str, *, val: str | os.PathLike | None = None,
          layer: str = DEFAULT_LAYER, val_fraction: float = 0.2, seed: int = 0, n_jobs: int | None = None) -> dict:
    """A bundle fitted on a store (and on a validation store, when given)."""
    X, y, _, classes = store.load(features, layer)
    provenance = store.info(features)["provenance"]
    val_mask = None
    if val is not None:
        Xv, yv, _, vclasses = store.load(val, layer)
        vprov = store.info(val)["provenance"]
        if (vprov["backbone"], vprov["precision"]) != (provenance["backbone"], provenance["precision"]):
            raise FeatxError(f"{val}: features come from another backbone or precision than {features}")
        yv = align_labels(yv, vclasses, classes, str(val))
        X, y = np.concatenate([X, Xv]), np.concatenate([y, yv])
        val_mask = np.r_[np.zeros(len(y) - len(yv), bool), np.ones(len(yv), bool)]
    try:
        model, metrics, seconds = fit(X, y, head, val_mask=val_mask, val_fraction=val_fraction, seed=seed,
                                      n_jobs=n_jobs)
    except FeatxError as exc:
        raise FeatxError(f"{features}: {exc}") from None
    metrics["fit_seconds"] = round(seconds, 3)
    return bundle(model, head, provenance, classes, layer, metrics)


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
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "probability", "top_k", "true_label", "error"])
            for i, key in enumerate(self.keys):
                top = ";".join(f"{self.classes[j]}:{self.proba[i, j]:.4f}" for j in order[i])
                w.writerow([key, self.labels[i], f"{self.proba[i].max():.4f}", top, self.true[i], ""])
            for key, reason in self.skipped:
                w.writerow([key, "", "", "", "", reason])
        return path


def predict(b: dict, data, cache_dir: str | os.PathLike = "cache", *, weights: str | None = None,
            batch_size: int | None = None, device: str = "auto", workers: int | None = None,
            on_error: str = "skip", progress: bool = False) -> Predictions:
    """Classify every image of ``data`` with a bundle: backbone (through the store), then head."""
    from .backbones import load_backbone
    from .extract import extract

    ident = b["backbone"]
    weights = weights or b.get("weights_file")
    backbone = load_backbone(ident["name"], weights=weights, layers=ident["layers"],
                             image_size=ident["preprocessing"]["image_size"])
    if backbone.identity()["weights_sha256"] != ident["weights_sha256"]:
        raise FeatxError(
            f"{ident['name']}: these weights (SHA-256 {backbone.weights_sha256[:12]}) are not the ones the model "
            f"was trained on ({ident['weights']}, {ident['weights_sha256'][:12]}); pass that file with --weights"
        )
    result = extract(data, backbone, cache_dir, batch_size=batch_size, precision=b["precision"],
                     device=device, workers=workers, on_error=on_error, progress=progress)
    X, y, keys, classes = store.load(result.path, b["layer"])
    skipped = [(s["key"], s["reason"]) for s in store.info(result.path)["skipped"]]
    model, names = b["model"], b["classes"]
    proba = np.zeros((len(X), len(names)), np.float64)
    if len(X):
        proba[:, model.classes_] = model.predict_proba(X)
    return Predictions(
        keys=list(keys), labels=[names[k] for k in proba.argmax(axis=1)], proba=proba, classes=names,
        true=[classes[k] if k >= 0 else "" for k in y], skipped=skipped, store=result.path,
    )
