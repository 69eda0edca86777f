"""A CPU fast path for large extractions: the network traced and frozen in bfloat16.

TorchScript's ``freeze`` folds batch norms into the convolutions and hands the graph to
oneDNN's fused kernels. On 2 CPU cores this ran lite0 at 1.4 to 1.7 times the speed of
eager bfloat16 autocast, after about 7 s of building; ``torch.compile`` gave 1.2 to 1.4
times after about a minute of compiling on a machine's first run (benchmarks/RESULTS.md).
It pays only for large jobs, so :func:`use_frozen` decides from the size of the whole
source (not the part still to do, so a resumed run decides as the first one did). The
frozen graph's features are not bit-identical to eager autocast's, so it is part of a
store's identity. A network that cannot be traced runs eagerly.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ..backbones import Backbone

MIN_IMAGES = 4096  # building costs ~7 s on 2 cores; the gain is ~3 ms per image


def use_frozen(dev: torch.device, precision: str, images: int) -> bool:
    return dev.type == "cpu" and precision == "bf16" and images >= MIN_IMAGES


class _Embed(nn.Module):
    def __init__(self, backbone: Backbone, model: nn.Module):
        super().__init__()
        self.backbone, self.model = backbone, model

    def forward(self, x):
        return self.backbone.embed(x, self.model)


def frozen_embed(backbone: Backbone, batch_size: int):
    """``x -> {layer: features}`` through a frozen bfloat16 copy of the network, or None
    when the network cannot be traced."""
    size = backbone.preprocessing.image_size
    model = copy.deepcopy(backbone.model).to(torch.bfloat16).eval()
    example = torch.zeros(batch_size, 3, size, size, dtype=torch.bfloat16)
    example = example.contiguous(memory_format=torch.channels_last)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python values in the graph
            graph = torch.jit.freeze(torch.jit.trace(_Embed(backbone, model), example, strict=False).eval())
            graph(example)  # the first two calls optimise the graph
            graph(example)
    except Exception:  # noqa: BLE001 - any tracing failure means: run eagerly
        return None

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return graph(x.to(torch.bfloat16))

    return run
