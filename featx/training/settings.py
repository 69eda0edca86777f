"""What a fine-tune does: its strategy, schedule and precision, checked in one place."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..core.devices import PRECISIONS, resolve_precision
from ..core.errors import FeatxError, ParameterError

STRATEGIES = ("lp_ft", "full", "last_k", "head")


class FinetuneError(FeatxError):
    """Settings, data or a run folder that a fine-tune cannot use."""


class SettingError(ParameterError, FinetuneError):
    """A fine-tuning setting with a value it cannot take."""


@dataclass(frozen=True)
class Settings:
    strategy: str = "lp_ft"
    pretrained: bool = True  # False: random initialisation, every stage trains (from scratch)
    epochs: int = 10
    batch_size: int = 32
    accumulate: int = 1  # batches per optimizer step: the effective batch is their product
    optimizer: str = "adamw"  # or "sgd" (momentum 0.9, Nesterov)
    lr: float | None = None  # the classifier's rate; default 1e-3 (AdamW) or 1e-2 (SGD), a tenth of that
    # for lp_ft, whose classifier starts fitted (Kumar et al. fine-tune with a small rate)
    backbone_lr: float = 0.1  # the top stage's rate as a share of the classifier's
    layer_decay: float = 0.8  # each earlier stage's rate as a share of the next one's
    weight_decay: float | None = None  # default 0.05 (AdamW) or 5e-4 (SGD)
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to zero
    patience: int = 3  # stop after this many epochs without a better validation accuracy
    last_k: int = 2  # stages trained by ``last_k``
    image_size: int | None = None  # default: the weights' resolution
    precision: str = "auto"
    val_fraction: float = 0.2  # carved out of train (stratified) when there is no val source
    seed: int = 0

    def check(self) -> Settings:
        """The settings with their defaults filled in; a :class:`SettingError` naming the
        first setting that cannot be used."""
        if self.strategy not in STRATEGIES:
            raise SettingError("strategy", self.strategy, f"choose {', '.join(STRATEGIES)}")
        if self.optimizer not in ("adamw", "sgd"):
            raise SettingError("optimizer", self.optimizer, "choose adamw or sgd")
        if self.precision not in ("auto", *PRECISIONS):
            raise SettingError("precision", self.precision, f"choose auto, {', '.join(PRECISIONS)}")
        for name in ("epochs", "batch_size", "accumulate", "patience", "last_k"):
            if getattr(self, name) < 1:
                raise SettingError(name, getattr(self, name), "must be at least 1")
        if not 0 < self.val_fraction < 1:
            raise SettingError("val_fraction", self.val_fraction, "must lie between 0 and 1")
        for name in ("lr", "backbone_lr", "layer_decay"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise SettingError(name, v, "must be positive")
        for name in ("weight_decay", "warmup_epochs"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise SettingError(name, v, "must not be negative")
        if self.image_size is not None and self.image_size < 8:
            raise SettingError("image_size", self.image_size, "too small (at least 8 pixels)")
        adamw = self.optimizer == "adamw"
        lr = (1e-3 if adamw else 1e-2) * (0.1 if self.pretrained and self.strategy == "lp_ft" else 1.0)
        return replace(self, lr=self.lr or lr,
                       weight_decay=(self.weight_decay if self.weight_decay is not None
                                     else 0.05 if adamw else 5e-4))

    @property
    def method(self) -> str:
        return self.strategy if self.pretrained else "scratch"


def training_precision(precision: str, device: torch.device, frozen_network: bool) -> str:
    """``auto``: bf16 (or fp16) on CUDA. On the CPU, bf16 autocast speeds up the forward
    pass but slows the backward one, so bf16 only when no gradient flows through the
    network (``head``), else fp32 (see benchmarks/finetune_precision.py)."""
    if precision != "auto":
        return resolve_precision(precision, device)
    if device.type == "cuda":
        return resolve_precision("auto", device)
    return resolve_precision("auto", device) if frozen_network else "fp32"
