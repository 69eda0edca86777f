"""The ``timm:<model>`` family: timm's architectures with its pretrained weights, read
from Hugging Face Hub's cache (or torch.hub's), downloaded when neither has them."""
from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

from ..core.errors import BackboneError
from ..core.hashing import sha256_file
from ..data.preprocess import Preprocessing
from .backbone import RANDOM_INIT, Network
from .hub import fetch_timm
from .weights import fit_state_dict, load_state_dict_file

PREFIX = "timm:"


def preprocessing(model: nn.Module) -> Preprocessing:
    """The eval preprocessing a timm model's pretrained config names."""
    cfg = model.pretrained_cfg
    return Preprocessing(
        image_size=int(cfg["input_size"][-1]),
        crop_pct=float(cfg.get("crop_pct") or 0.875),
        interpolation=cfg.get("interpolation") or "bicubic",
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
    )


def knows(name: str) -> bool:
    return name.startswith(PREFIX)


def names() -> list[str]:
    """Every timm model with pretrained weights, as featx names it."""
    import timm

    return [PREFIX + n for n in timm.list_models(pretrained=True)]


def build(name: str, weights: str | None, pretrained: bool) -> Network:
    import timm
    from timm.models import get_pretrained_cfg

    arch = name.removeprefix(PREFIX)
    if not timm.is_model(arch):
        raise BackboneError(f"{name}: timm has no such model (see timm.list_models())")
    model = timm.create_model(arch, pretrained=False)
    classifier = model.pretrained_cfg.get("classifier") or ""
    if not pretrained:
        model.reset_classifier(0)
        return Network(model, arch, preprocessing(model), RANDOM_INIT, "", classifier)
    if weights:
        path, origin = Path(weights), str(weights)
    else:
        path = fetch_timm(get_pretrained_cfg(arch), name)
        origin = f"timm pretrained ({path.name})"
    sd = load_state_dict_file(path)
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None and not weights:
        sd = filter_fn(sd, model)
    fit_state_dict(model, sd, origin, classifier)
    model.reset_classifier(0)
    return Network(model, arch, preprocessing(model), origin, sha256_file(path), classifier)
