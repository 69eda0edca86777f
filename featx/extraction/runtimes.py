"""What runs the network of an extraction, decided before the store is named.

:func:`choose` picks the fastest runtime for the device and precision; :func:`settle`
makes sure its graph is in the graph cache (building it now if it is not) and, when it
cannot be built, falls back to the next runtime, so that the runtime a store's identity
names is the one that runs. :func:`load` then gives the graph to the batch loop.
"""
from __future__ import annotations

import logging
import os

import torch

from ..backbones import Backbone
from .compiled import compiled_embed, package_path
from .frozen import frozen_embed, graph_path
from .openvino_graph import HINTS, model_path, openvino_embed
from .openvino_graph import available as openvino_available

log = logging.getLogger(__name__)

# as stores record them
EAGER, FROZEN, OPENVINO, AOTI = "eager", "torchscript-frozen", "openvino", "aotinductor"

_BUILT: dict = {}  # graphs built by settle() in this process, for load() to take


def choose(dev: torch.device, precision: str, backbone: Backbone, accumulates: bool,
           native_bf16: bool = True) -> str:
    """On CUDA the AOTInductor-compiled network in bf16 or fp32 (:mod:`.compiled`); on the
    CPU OpenVINO where it is installed (:mod:`.openvino_graph`; in bf16 only where the CPU
    runs bf16 natively, as OpenVINO silently runs fp32 elsewhere), else in bf16 the frozen
    TorchScript graph (:mod:`.frozen`); otherwise eager torch. An accumulating store
    serves any subset of its images, whose features must not depend on how many came
    together: it always runs eagerly, and so does a network without parameters
    (``pixels``: nothing to gain)."""
    if accumulates or not any(True for _ in backbone.model.parameters()):
        return EAGER
    if dev.type == "cuda":
        return AOTI if precision in ("bf16", "fp32") else EAGER
    if precision in HINTS and openvino_available() and (precision == "fp32" or native_bf16):
        return OPENVINO
    return FROZEN if precision == "bf16" else EAGER


def settle(runtime: str, backbone: Backbone, precision: str, dev: torch.device, batch_size: int,
           graphs: str | os.PathLike) -> str:
    """``runtime`` when its graph is cached or can be built now (it is then cached), else
    the first of its fallbacks that can: OpenVINO -> the frozen graph (bf16) -> eager."""
    for candidate in _fallbacks(runtime, precision):
        if candidate == EAGER or _path(candidate, backbone, precision, dev, batch_size, graphs).is_file():
            return candidate
        try:
            run = _build(candidate, backbone, precision, dev, batch_size, graphs)
        except Exception as exc:  # noqa: BLE001 - a runtime that does not work here: the next one
            log.info("%s: %s does not run here (%s)", backbone.name, candidate, str(exc).splitlines()[0])
            run = None
        if run is not None:
            _BUILT[(candidate, _path(candidate, backbone, precision, dev, batch_size, graphs))] = run
            return candidate
        log.info("%s: cannot build its %s graph; trying the next runtime", backbone.name, candidate)
    return EAGER


def load(runtime: str, backbone: Backbone, precision: str, dev: torch.device, batch_size: int,
         graphs: str | os.PathLike):
    """The settled runtime's graph (``x -> {layer: features}``), or None for eager."""
    if runtime == EAGER:
        return None
    path = _path(runtime, backbone, precision, dev, batch_size, graphs)
    run = _BUILT.pop((runtime, path), None) or _build(runtime, backbone, precision, dev, batch_size, graphs)
    if run is None:
        raise RuntimeError(f"{backbone.name}: its {runtime} graph could be built before and cannot now")
    return run


def _fallbacks(runtime: str, precision: str) -> list[str]:
    if runtime == OPENVINO:
        return [OPENVINO, FROZEN, EAGER] if precision == "bf16" else [OPENVINO, EAGER]
    return [runtime, EAGER] if runtime != EAGER else [EAGER]


def _path(runtime: str, backbone: Backbone, precision: str, dev: torch.device, batch_size: int, graphs):
    if runtime == OPENVINO:
        return model_path(graphs, backbone)
    if runtime == FROZEN:
        return graph_path(graphs, backbone, batch_size)
    return package_path(graphs, backbone, precision, dev, batch_size)


def _build(runtime: str, backbone: Backbone, precision: str, dev: torch.device, batch_size: int, graphs):
    if runtime == OPENVINO:
        return openvino_embed(backbone, precision, graphs)
    if runtime == FROZEN:
        return frozen_embed(backbone, batch_size, graphs)
    return compiled_embed(backbone, precision, dev, batch_size, graphs)
