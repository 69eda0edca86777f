"""The one type every backbone is: a frozen network whose forward pass returns pooled
features, with the preprocessing its weights were trained with and its identity."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.errors import BackboneError
from ..core.names import DEFAULT_LAYER
from ..data.preprocess import Preprocessing
from .weights import first_line

RANDOM_INIT = "random initialisation"  # the weights of a network built with pretrained=False


@dataclass(frozen=True)
class Network:
    """What a family's resolver builds: the network without its classifier, and where
    its weights and preprocessing come from. :func:`featx.backbones.load_backbone`
    makes it a :class:`Backbone`."""

    model: nn.Module
    architecture: str
    preprocessing: Preprocessing
    weights: str  # where the weights came from, in words
    weights_sha256: str  # "" for a random initialisation or no weights at all
    classifier: str  # where the network's classifier sat (now an identity); "" if it has none


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
                raise BackboneError(f"{self.name}: cannot run at {size} px ({first_line(exc)})") from None
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
