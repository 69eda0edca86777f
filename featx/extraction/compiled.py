"""The GPU's fast path: the network compiled ahead of time by AOTInductor, and cached.

``torch.export`` captures the network (in the plan's precision, at the batch size), and
``torch._inductor.aoti_compile_and_package`` compiles it into one ``.pt2`` file of
kernels, saved in the graph cache (:func:`.frozen.graph_cache`) keyed like the CPU's
graphs plus the precision, batch size and device name. Building costs about a minute
(44 s for lite0 at 32 px on 2 CPU cores); loading the file takes a fraction of a second,
with no tracing or compiling left, so every later job pays nothing (``torch.compile``'s
own artefact cache still re-traces the network on every run: 29 of its 34 s here).

Every batch is padded to the batch size, so one compiled graph serves the whole job and
an image's features do not depend on how full its batch was. A network that cannot be
exported or compiled runs eagerly.
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from ..backbones import Backbone
from ..core.devices import PRECISIONS
from ..core.files import atomic_path
from .frozen import _Embed, graph_key

log = logging.getLogger(__name__)


def package_path(graphs: str | os.PathLike, backbone: Backbone, precision: str, dev: torch.device,
                 batch_size: int) -> Path:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    key = graph_key(backbone, {"runtime": "aotinductor", "precision": precision, "batch_size": batch_size,
                               "device": name})
    return Path(graphs) / f"{backbone.architecture}-aoti-{precision}-b{batch_size}-{key[:16]}.pt2"


def compiled_embed(backbone: Backbone, precision: str, dev: torch.device, batch_size: int,
                   graphs: str | os.PathLike | None = None):
    """``x -> {layer: features}`` through the compiled network, or None when it cannot be
    compiled. With ``graphs``, the compiled package is loaded from there when an earlier
    run saved it, else built and saved."""
    dtype = PRECISIONS[precision] or torch.float32
    path = package_path(graphs, backbone, precision, dev, batch_size) if graphs is not None else None
    graph = _load(path) if path is not None and path.is_file() else None
    if graph is None:
        graph = _build(backbone, dtype, dev, batch_size, path)
        if graph is None:
            return None

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(x)
        if n < batch_size:  # the last batch: padded, one graph serves all
            x = torch.cat([x, x.new_zeros((batch_size - n, *x.shape[1:]))])
        out = graph(x.to(dtype))
        return {k: v[:n] for k, v in out.items()}

    return run


def _build(backbone: Backbone, dtype: torch.dtype, dev: torch.device, batch_size: int, path: Path | None):
    """Export and compile into a temporary folder, load it, then cache it (best effort:
    a graph cache that cannot be written costs the next run the compile, nothing more)."""
    size = backbone.preprocessing.image_size
    model = copy.deepcopy(backbone.model).to(dev, dtype).eval()
    example = torch.zeros(batch_size, 3, size, size, dtype=dtype, device=dev)
    with tempfile.TemporaryDirectory(prefix="featx-aoti-") as tmp:
        package = Path(tmp) / "network.pt2"
        try:
            log.info("%s: compiling it for %s (once: the package is cached)", backbone.name, dev)
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                exported = torch.export.export(_Embed(backbone, model), (example,), strict=False)
                torch._inductor.aoti_compile_and_package(exported, package_path=str(package))
                graph = torch._inductor.aoti_load_package(str(package))
        except Exception as exc:  # noqa: BLE001 - any export or compile failure: another runtime
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            log.info("%s: cannot compile it (%s)", backbone.name, reason)
            return None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as target:
                    shutil.copyfile(package, target)
            except Exception as exc:  # noqa: BLE001 - a cache that cannot be written costs only a compile
                log.warning("%s: cannot cache the compiled network (%s)", path, str(exc).splitlines()[0])
    return graph


def _load(path: Path):
    try:
        return torch._inductor.aoti_load_package(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged file is compiled again, not trusted
        log.warning("%s: cannot load the compiled network (%s); compiling it again", path, exc)
        return None
