"""A fine-tune's run folder: what it holds, and where a run stands.

``DIR/model.pt`` holds the best epoch's weights under the architecture's own parameter
names (the classifier included), so it loads as the backbone's ``weights``;
``DIR/model.pt.json`` records its SHA-256, classes and preprocessing; ``DIR/metrics.json``
the finished run. ``DIR/last.pt``, written atomically after every epoch, holds a
:class:`TrainState` with the network, optimizer and scaler, so an interrupted run
resumes; every file loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..backbones import Backbone
from ..core.hashing import digest, sha256_file
from ..core.torchio import load_weights_only, save_torch, write_json
from ..core.version import __version__
from .settings import FinetuneError, Settings
from .splits import Splits

FORMAT = 1
CHECKPOINT, MODEL, METRICS = "last.pt", "model.pt", "metrics.json"


@dataclass
class TrainState:
    """Where a run stands after an epoch; a checkpoint holds these fields by name."""

    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    history: list[dict] = field(default_factory=list)  # one row per epoch (epoch 0: LP-FT's linear probe)
    best_epoch: int = 0
    best_val: float = -1.0  # the best epoch's validation accuracy...
    best_loss: float = math.inf  # ... and loss, which breaks ties
    bad_epochs: int = 0  # epochs since the last better one (early stopping)
    train_seconds: float = 0.0
    train_images: int = 0
    probe: dict | None = None  # LP-FT's linear probe: its C and validation accuracy
    prior_seconds: float = 0.0  # wall time of the run until the last checkpoint

    def checkpoint(self, run_id: str, model: dict, optimizer: dict, scaler: dict) -> dict:
        return {"format": FORMAT, "run": run_id, **asdict(self), "model": model, "optimizer": optimizer,
                "scaler": scaler}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> TrainState:
        return cls(**{f.name: ckpt[f.name] for f in fields(cls)})


@dataclass
class FinetuneResult:
    out: Path
    model: Path
    method: str  # the strategy, or "scratch"
    epochs_run: int
    best_epoch: int
    val_accuracy: float
    test: dict | None  # accuracy, balanced_accuracy, macro_f1, y_true, y_pred
    seconds: float  # wall time of the whole run (including the linear probe of lp_ft)
    train_seconds: float
    train_images_per_second: float
    n_train: int
    metrics: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_metrics(cls, out: Path, m: dict) -> FinetuneResult:
        """The result a run folder's ``metrics.json`` records."""
        return cls(out=out, model=out / MODEL, method=m["method"], epochs_run=m["epochs_run"],
                   best_epoch=m["best_epoch"], val_accuracy=m["val_accuracy"], test=m["test"],
                   seconds=m["seconds"], train_seconds=m["train_seconds"],
                   train_images_per_second=m["train_images_per_second"],
                   n_train=m["n_train"], metrics=m)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint or model file, read with ``weights_only=True`` (no code runs)."""
    return load_weights_only(path, FinetuneError)


def run_digest(settings: Settings, backbone: Backbone, splits: Splits) -> str:
    """What identifies a run: its settings, network and weights, and data (keys and stamps)."""
    data = {name: digest([(it.key, it.stamp) for it in s.items]) + s.source.spec
            for name, s in (("train", splits.train), ("val", splits.val),
                            ("test", splits.test)) if s is not None}
    return digest({"settings": asdict(settings),
                   "backbone": {k: v for k, v in backbone.identity().items() if k != "weights"},
                   "data": data, "classes": splits.classes})


def finished(out: Path, run_id: str, resume: bool) -> FinetuneResult | None:
    """A finished run with these settings, or None when there is work to do; refuses to
    overwrite another run's files or, without ``resume``, an interrupted one."""
    metrics_file, ckpt = out / METRICS, out / CHECKPOINT
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        if not isinstance(state, dict) or state.get("run") != run_id:
            raise FinetuneError(f"{ckpt}: an interrupted fine-tune with other settings or data; "
                                "choose another --out (or delete the folder)")
        if resume:
            return None
        raise FinetuneError(f"{out}: holds an interrupted fine-tune (epoch {state.get('epoch', '?')} done); "
                            "pass --resume to continue it, or choose another --out")
    if metrics_file.exists():
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError):
            metrics = {}
        if metrics.get("run") == run_id and metrics.get("finished") and (out / MODEL).exists():
            return FinetuneResult.from_metrics(out, metrics)
        raise FinetuneError(f"{out}: holds a fine-tune with other settings or data; choose another --out")
    return None


def resume_state(out: Path) -> tuple[TrainState, dict, bool] | None:
    """The state an interrupted run left, its checkpoint (network, optimizer and scaler
    state dicts), and whether ``model.pt`` must be rewritten from it; None to start afresh."""
    ckpt = out / CHECKPOINT
    if not ckpt.exists():
        return None
    saved = load_checkpoint(ckpt)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise FinetuneError(f"{ckpt}: not a featx checkpoint")
    state = TrainState.from_checkpoint(saved)
    side = out / (MODEL + ".json")
    try:
        saved_epoch = json.loads(side.read_text()).get("epoch")
    except (OSError, ValueError):
        saved_epoch = None
    # Killed between the checkpoint and model.pt: the checkpoint's weights are the best.
    stale = saved_epoch != state.best_epoch
    if stale and state.best_epoch != state.epoch:
        raise FinetuneError(f"{out}: {MODEL} does not match {CHECKPOINT}; delete the folder and start again")
    return state, saved, stale


def save_checkpoint(out: Path, state: TrainState, run_id: str, net, optimizer, scaler) -> None:
    save_torch(state.checkpoint(run_id, net.state_dict(), optimizer.state_dict(), scaler.state_dict()),
               out / CHECKPOINT)


def save_model(net, out: Path, bb: Backbone, *, classes: list[str], settings: Settings, precision: str,
               run_id: str, epoch: int) -> None:
    """model.pt (the epoch's weights, under the architecture's names) and its sidecar."""
    save_torch({k: v.detach().cpu() for k, v in net.state_dict().items()}, out / MODEL)
    write_json({
        "sha256": sha256_file(out / MODEL), "kind": "finetuned", "format": FORMAT, "featx": __version__,
        "run": run_id, "epoch": epoch, "method": settings.method, "backbone": bb.name,
        "architecture": bb.architecture, "base_weights": bb.weights, "base_weights_sha256": bb.weights_sha256,
        "preprocessing": bb.preprocessing.to_dict(), "classifier": bb.classifier, "classes": list(classes),
        "precision": precision,
    }, out / (MODEL + ".json"))


def annotate_model(out: Path, metrics: dict) -> None:
    """Add the finished run's headline metrics to model.pt's sidecar."""
    side = out / (MODEL + ".json")
    facts = json.loads(side.read_text())
    facts["metrics"] = {k: metrics[k] for k in ("val_accuracy", "best_epoch", "epochs_run", "n_train")}
    if metrics["test"]:
        facts["metrics"]["test_accuracy"] = metrics["test"]["test_accuracy"]
    write_json(facts, side)
