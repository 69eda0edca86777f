"""Model files: a fitted head saved with what it needs to predict.

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

On disk a bundle is a plain dict (format 1), whatever the Python record looks like.
A fine-tuned network's ``model.pt`` loads as a bundle of its own classifier.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np

from ..core.errors import FeatxError
from ..core.files import write_bytes
from ..core.hashing import sha256_file
from ..core.names import DEFAULT_LAYER
from ..core.torchio import load_weights_only
from ..core.version import __version__

FORMAT = 1


class ModelError(FeatxError):
    """A model file that is missing, altered or not a featx model."""


@dataclass
class Bundle:
    """A fitted classifier and what it needs to predict from images."""

    head: str  # the head's name, or "finetuned (<method>)" for a fine-tuned network's own classifier
    model: object  # the fitted estimator (predict_proba, classes_)
    backbone: dict  # identity of the features' backbone: name, layers, weights, weights_sha256, preprocessing
    precision: str  # of the features
    layer: str  # which stored features the head reads
    classes: list[str]
    metrics: dict  # validation metrics, chosen hyper-parameters, fit time
    featx: str | None = __version__  # the version that fitted it
    weights_file: str | None = None  # a fine-tuned network: its model.pt holds the backbone's weights

    @classmethod
    def fitted(cls, model, head: str, provenance: dict, classes: list[str], layer: str,
               metrics: dict) -> Bundle:
        """A bundle of a head fitted on a store with this ``provenance``."""
        return cls(head, model, provenance["backbone"], provenance["precision"], layer, list(classes),
                   metrics)

    def to_dict(self) -> dict:
        d = {"format": FORMAT, "featx": self.featx, "head": self.head, "model": self.model,
             "backbone": self.backbone, "precision": self.precision, "layer": self.layer,
             "classes": self.classes, "metrics": self.metrics}
        if self.weights_file is not None:
            d["weights_file"] = self.weights_file
        return d

    @classmethod
    def from_dict(cls, d, path: Path) -> Bundle:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ModelError(f"{path}: not a featx model bundle (format {FORMAT})")
        return cls(d["head"], d["model"], d["backbone"], d["precision"], d["layer"], list(d["classes"]),
                   d["metrics"], d.get("featx"), d.get("weights_file"))


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


SKOPS_SUFFIX = ".skops"

# Where featx 0.1 defined two of the classes a model holds, as files written then name
# them; they now live in featx.heads, which every newer file names.
LEGACY_MODULES = {"featx.logreg": "featx.heads", "featx.knn": "featx.heads"}

# What a skops bundle may build besides plain data: featx's heads and the parts of
# scikit-learn they hold that skops does not trust by default. Nothing else.
SKOPS_TRUSTED = {
    *(f"featx.heads.{name}" for name in (
        "BlockScaler", "LogRegHead", "LinearSVMHead", "RidgeHead", "KNNHead", "NearestCentroidHead",
        "MLPHead", "HGBHead", "_RowSpan", "_CosineCentroids", "TorchLogisticRegression", "CosineKNN",
        "StreamingCosineKNN")),
    "featx.logreg.TorchLogisticRegression", "featx.knn.CosineKNN",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
}


def _is_skops(path: Path) -> bool:
    return path.suffix == SKOPS_SUFFIX


def save(b: Bundle, path: str | os.PathLike) -> Path:
    """Write a bundle (skops for a ``.skops`` file, else joblib) and its sidecar, each
    atomically (the sidecar last)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = b.to_dict()
    if _is_skops(path):
        import skops.io

        data = skops.io.dumps(d)
    else:
        buf = io.BytesIO()
        joblib.dump(d, buf)
        data = buf.getvalue()
    write_bytes(path, data)
    facts = {k: v for k, v in d.items() if k != "model"}
    write_bytes(_sidecar(path), (json.dumps({"sha256": hashlib.sha256(data).hexdigest(), **facts}, indent=2)
                                 + "\n").encode())
    return path


def load(path: str | os.PathLike) -> Bundle:
    """Read a bundle, after checking its bytes against the SHA-256 in its sidecar; a
    fine-tuned network's ``model.pt`` gives a bundle of its own classifier."""
    if is_model_file(path):
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
            raise ModelError(f"{path}: no valid sidecar {side.name} recording its SHA-256; refusing to "
                             "load it (a joblib file runs code when loaded; a .skops file does not need one)"
                             ) from None
        expected = None
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ModelError(f"{path}: SHA-256 does not match {side.name}; the file was altered, "
                         "refusing to load it")
    _alias_legacy_modules()
    d = _load_skops(path, data) if _is_skops(path) else joblib.load(io.BytesIO(data))  # the bytes checked
    return Bundle.from_dict(d, path)


def _alias_legacy_modules() -> None:
    """Make the module paths that old files name resolve to where the classes are now."""
    for old, new in LEGACY_MODULES.items():
        if old not in sys.modules:
            sys.modules[old] = importlib.import_module(new)


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


# --- a fine-tuned network's model.pt ------------------------------------------------------


class NetworkClassifier:
    """A fine-tuned network's own classifier, applied to its pooled features (what the
    store holds for ``model.pt``): softmax(x W^T + b)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.weight, self.bias = weight, bias
        self.classes_ = np.arange(len(bias))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = X.astype(np.float64) @ self.weight.T + self.bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)


def is_model_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix == ".pt"


def load_model(path: str | os.PathLike) -> Bundle:
    """A bundle of a fine-tuned ``model.pt``'s own classifier, after checking the file
    against the SHA-256 in its sidecar; the file is the backbone's weights."""
    path = Path(path)
    side = path.with_name(path.name + ".json")
    try:
        facts = json.loads(side.read_text())
        expected = facts["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelError(f"{path}: no valid sidecar {side.name} recording its SHA-256; "
                         "refusing to load it") from None
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    if sha256_file(path) != expected:
        raise ModelError(f"{path}: SHA-256 does not match {side.name}; the file was altered, "
                         "refusing to load it")
    sd = load_weights_only(path, ModelError)
    cls = facts["classifier"]
    try:
        weight, bias = sd[f"{cls}.weight"].float().numpy(), sd[f"{cls}.bias"].float().numpy()
    except KeyError:
        raise ModelError(f"{path}: holds no classifier {cls!r}") from None
    backbone = {"name": facts["backbone"], "layers": [], "weights": str(path), "weights_sha256": expected,
                "preprocessing": facts["preprocessing"]}
    return Bundle(f"finetuned ({facts['method']})", NetworkClassifier(weight, bias), backbone,
                  facts["precision"], DEFAULT_LAYER, facts["classes"], facts.get("metrics", {}),
                  facts.get("featx"), str(path))
