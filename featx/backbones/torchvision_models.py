"""The ``torchvision:<model>[:<weights enum>]`` family: torchvision's architectures with
its weights (default ``DEFAULT``), downloaded into torch.hub's cache, each with the
transforms its weights name."""
from __future__ import annotations

from pathlib import Path
from unittest import mock

from torch import nn

from ..core.errors import BackboneError
from ..core.hashing import sha256_file
from ..data.preprocess import Preprocessing
from .backbone import RANDOM_INIT, Network
from .hub import fetch_url
from .weights import fit_state_dict, load_state_dict_file

PREFIX = "torchvision:"


def knows(name: str) -> bool:
    return name.startswith(PREFIX)


def names() -> list[str]:
    """Every torchvision classification model with weights, as featx names it."""
    import torchvision

    return [PREFIX + n for n in torchvision.models.list_models(torchvision.models)]


def build(name: str, weights: str | None, pretrained: bool) -> Network:
    import torchvision
    from torchvision.transforms import InterpolationMode

    arch, _, enum_name = name.removeprefix(PREFIX).partition(":")
    if arch not in torchvision.models.list_models():
        raise BackboneError(f"torchvision:{arch}: torchvision has no such model")
    enum = torchvision.models.get_model_weights(arch)
    try:
        tv_weights = enum[enum_name or "DEFAULT"]
    except KeyError:
        raise BackboneError(
            f"{name}: no weights named {enum_name!r}; choose from {', '.join(enum.__members__)}"
        ) from None
    model = _tv_build(arch, tv_weights)
    head = _last_linear(model)
    if not pretrained:
        path, origin, digest = None, RANDOM_INIT, ""
    elif weights:
        path, origin = Path(weights), str(weights)
    else:
        path = fetch_url(tv_weights.url, f"torchvision:{arch}")
        origin = f"torchvision {tv_weights}"
    if path is not None:
        fit_state_dict(model, load_state_dict_file(path), origin, head)
        digest = sha256_file(path)
    parent, _, attr = head.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    t = tv_weights.transforms()
    crop, resize = t.crop_size[0], t.resize_size[0]
    interp = t.interpolation.value if isinstance(t.interpolation, InterpolationMode) else "bilinear"
    pre = Preprocessing(crop, crop / resize, interp, tuple(t.mean), tuple(t.std))
    return Network(model, arch, pre, origin, digest, head)


def _tv_build(arch: str, tv_weights) -> nn.Module:
    """torchvision's builder with the settings these weights need (googlenet's
    transform_input, a SWAG ViT's image size...), minus its own loading: that would
    torch.load without weights_only, and featx loads (and checks) the weights itself."""
    import torchvision
    from torchvision.models import _api as tv_api

    with mock.patch.object(tv_api, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(nn.Module, "load_state_dict", lambda self, *a, **k: None):
        return torchvision.models.get_model(arch, weights=tv_weights)


def _last_linear(model: nn.Module) -> str:
    """The classifier of a torchvision network: its last Linear layer."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise BackboneError(f"{type(model).__name__}: has no Linear classifier to take the features before")
    return names[-1]
