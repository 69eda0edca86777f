"""The CPU's fast path: the network traced and frozen in bfloat16, built once and cached.

TorchScript's ``freeze`` folds batch norms into the convolutions and hands the graph to
oneDNN's fused kernels. On 2 CPU cores this ran lite0 at 1.4 to 1.7 times the speed of
eager bfloat16 autocast (benchmarks/RESULTS.md). Building it costs about 7 s, so the
graph is saved in the cache folder (``graphs/``, see :func:`graph_cache`), keyed by the network's architecture
and the SHA-256 of its weights, the input size, the batch size and the torch version;
every later extraction with the same network loads it. It is what runs a CPU extraction
in bfloat16 where OpenVINO, faster still, is not installed or cannot convert the network
(:func:`.plan.runtime`).

The frozen graph's features are not bit-identical to eager autocast's, so it is part of a
store's identity. A network that cannot be traced runs eagerly. An accumulating store
serves any subset of its images, whose features must not depend on the batch they came
in, and never uses it (:mod:`.plan`).
"""
from __future__ import annotations

import copy
import hashlib
import logging
import os
import platform
import warnings
import weakref
from pathlib import Path

import torch
from torch import nn

from ..backbones import Backbone
from ..core.files import atomic_path
from ..core.hashing import digest

log = logging.getLogger(__name__)

FORMAT = 1  # of the saved graphs: a change makes earlier files unused, never misread


def graph_cache(cache_dir: str | os.PathLike) -> Path:
    """The folder of cached graphs: ``$FEATX_GRAPH_CACHE`` when set (say, a folder on the
    machine's own disk when the cache folder is shared by machines of several kinds),
    else ``graphs/`` in the cache folder."""
    return Path(os.environ.get("FEATX_GRAPH_CACHE") or Path(cache_dir) / "graphs")


class _Embed(nn.Module):
    def __init__(self, backbone: Backbone, model: nn.Module):
        super().__init__()
        self.backbone, self.model = backbone, model

    def forward(self, x):
        return self.backbone.embed(x, self.model)


def graph_key(backbone: Backbone, runtime: dict) -> str:
    """What a cached graph of ``backbone`` is keyed on: its architecture, the SHA-256 of
    its weights (not its name), its layers and input size, the torch version, the machine
    and ``runtime`` (how it is built)."""
    return digest({"format": FORMAT, "architecture": backbone.architecture,
                   "weights": weights_sha256(backbone.model),
                   "layers": list(backbone.layers), "image_size": backbone.preprocessing.image_size,
                   "torch": torch.__version__, "machine": platform.machine(), **runtime})


_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (versions, digest)


def weights_sha256(model: nn.Module) -> str:
    """The SHA-256 of ``model``'s state (names and bytes), computed once per state: the
    tensors' version counters, which every in-place change bumps, tell when it changed
    (lite0's 19 MB took 15 to 30 ms a time, and an extraction asks three times)."""
    state = model.state_dict()
    versions = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
    known = _DIGESTS.get(model)
    if known is not None and known[0] == versions:
        return known[1]
    weights = hashlib.sha256()
    for name, t in state.items():
        weights.update(name.encode())
        weights.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    _DIGESTS[model] = (versions, weights.hexdigest())
    return weights.hexdigest()


def graph_path(graphs: str | os.PathLike, backbone: Backbone, batch_size: int) -> Path:
    """Where in the folder ``graphs`` the frozen graph of ``backbone`` at ``batch_size`` is cached."""
    key = graph_key(backbone, {"precision": "bf16", "batch_size": batch_size})
    name = f"{backbone.architecture}-bf16-b{batch_size}-{key[:16]}.pt".replace("/", "-").replace(":", "-")
    return Path(graphs) / name


def frozen_embed(backbone: Backbone, batch_size: int, graphs: str | os.PathLike | None = None):
    """``x -> {layer: features}`` through a frozen bfloat16 copy of the network, or None
    when the network cannot be traced. With ``graphs`` (a folder, see :func:`graph_cache`),
    the graph is loaded from there when an earlier run saved it, else built and saved."""
    size = backbone.preprocessing.image_size
    # channels-last throughout: the layout oneDNN's fused kernels run fastest in
    example = torch.zeros(batch_size, 3, size, size, dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    path = graph_path(graphs, backbone, batch_size) if graphs is not None else None
    graph = _load(path) if path is not None and path.is_file() else None
    if graph is None:
        graph = _build(backbone, example)
        if graph is None:
            return None
        if path is not None:
            _save(graph, path)
    with torch.no_grad():
        graph(example)  # the first two calls optimise the graph
        graph(example)

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return graph(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))

    return run


def _build(backbone: Backbone, example: torch.Tensor):
    model = copy.deepcopy(backbone.model).to(torch.bfloat16, memory_format=torch.channels_last).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python values in the graph
            return torch.jit.freeze(torch.jit.trace(_Embed(backbone, model), example, strict=False).eval())
    except Exception:  # noqa: BLE001 - any tracing failure means: run eagerly
        return None


def _load(path: Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still fast here
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - a damaged file is rebuilt, not trusted
        log.warning("%s: cannot load the cached graph (%s); building it again", path, exc)
        return None


def _save(graph, path: Path) -> None:
    """Save atomically; a cache that cannot be written costs the next run the build, nothing more."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(graph, str(tmp))
    except Exception as exc:  # noqa: BLE001 - a full disk surfaces as RuntimeError from torch's writer
        log.warning("%s: cannot cache the frozen graph (%s)", path, str(exc).splitlines()[0])
