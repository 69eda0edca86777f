"""The CPU's fastest runtime: the network converted to OpenVINO, converted once and cached.

OpenVINO's CPU plugin runs lite0 in bfloat16 at about 2.2 times the speed of featx's
frozen TorchScript graph on 2 cores, and in fp32 at 1.15 times (benchmarks/cpu_runtimes.py;
its features' fidelity: benchmarks/runtime_fidelity.py, both in benchmarks/RESULTS.md).
Converting a network (``openvino.convert_model`` traces it) costs 10 to 20 s, so the
converted model (OpenVINO IR, ``.xml`` + ``.bin``) is saved in the cache folder
(``graphs/``, see :func:`.frozen.graph_cache`), keyed as the frozen graph is
(:func:`.frozen.graph_key`); a later run reads it and compiles it for the CPU, and
OpenVINO keeps the compiled form too (``graphs/openvino-compiled``, its own cache, keyed
by the model and the settings), which the run after loads in 0.02 s. A network OpenVINO
cannot convert runs as the frozen graph in bf16, eagerly in fp32 (:mod:`.runtimes`, which
decides before the store is named).

The converted model takes the batch as the decoding processes hand it over, uint8 NHWC:
OpenVINO's preprocessing (casting, the weights' mean and std, the layout) is built into
it and runs in its threads, so the main process does not touch the pixels (on CIFAR-10
it had spent a tenth of a core normalising them) and passes the workers' shared memory
without a copy.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..backbones import Backbone
from ..core.files import atomic_path
from ..core.names import DEFAULT_LAYER
from .frozen import _Embed, graph_key

log = logging.getLogger(__name__)

HINTS = {"bf16": "bf16", "fp32": "f32"}  # featx precision -> OpenVINO's inference precision


def available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _openvino():
    """``import openvino``, without its usage reports: on import (and on every conversion)
    OpenVINO sends usage events to Google Analytics and writes ``~/intel`` unless its
    telemetry package cannot be imported, when it uses its own no-op stub. featx sends
    nothing and writes nothing outside its folders, so that package is hidden from
    OpenVINO's first import (only then: an OpenVINO already loaded is left as it is)."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


class _Outputs(nn.Module):
    """The backbone's pooled outputs as a tuple, in ``names`` order (what OpenVINO converts)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.embed = _Embed(backbone, backbone.model)
        self.names = [DEFAULT_LAYER, *backbone.layers]

    def forward(self, x):
        out = self.embed(x)
        return tuple(out[n] for n in self.names)


def model_path(graphs: str | os.PathLike, backbone: Backbone) -> Path:
    """Where in the folder ``graphs`` the converted model of ``backbone`` is cached (its
    ``.xml``; the ``.bin`` beside it)."""
    pre = backbone.preprocessing
    key = graph_key(backbone, {"runtime": "openvino", "openvino": _version(), "input": "uint8-nhwc",
                               "mean": list(pre.mean), "std": list(pre.std)})
    return Path(graphs) / f"{backbone.architecture}-openvino-{key[:16]}.xml".replace("/", "-")


def openvino_embed(backbone: Backbone, precision: str, graphs: str | os.PathLike | None = None,
                   threads: int | None = None):
    """``x -> {layer: features}`` through OpenVINO at ``precision`` (bf16 or fp32), ``x``
    a uint8 batch (N, H, W, 3) as decoded (the graph normalises it), or None when the
    network cannot be converted. With ``graphs`` (a folder, see
    :func:`.frozen.graph_cache`), the converted model is read from there when an earlier
    run saved it, else converted and saved."""
    core, path = _core(), model_path(graphs, backbone) if graphs is not None else None
    streams = max(1, threads or torch.get_num_threads())  # one thread each (see _run)
    config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "THROUGHPUT",
              "NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": streams, "ENABLE_CPU_PINNING": False}
    compiled_cache = _writable(Path(graphs) / "openvino-compiled") if graphs is not None else None
    if compiled_cache is not None:  # OpenVINO's own cache of compiled models: 0.02 s to load instead of 0.13
        config["CACHE_DIR"] = str(compiled_cache)
    compiled = _compiled(core, path, config) if path is not None and path.is_file() else None
    if compiled is None:
        model = _convert(backbone)
        if model is None:
            return None
        if path is not None:  # compiled from the file, so that OpenVINO's cache serves the next run
            _save(model, path)
        compiled = (path is not None and path.is_file() and _compiled(core, path, config)) or \
            core.compile_model(model, "CPU", config)
    return _run(compiled, streams, [DEFAULT_LAYER, *backbone.layers])


def _run(compiled, streams: int, names: list[str]):
    """The batch split into ``streams`` parts, run at once, one thread each: beside the
    decoding processes, which take the same cores now and then, this ran 1.1 to 1.3 times
    as fast as the whole batch on all threads (whose threads wait for one another at
    every layer when one of them is descheduled); alone, 1.03 times."""
    requests = [compiled.create_infer_request() for _ in range(streams)]

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        images = np.ascontiguousarray(x.numpy())
        bounds = np.linspace(0, len(images), min(streams, len(images)) + 1).astype(int)
        running = requests[:len(bounds) - 1]
        for r, a, b in zip(running, bounds[:-1], bounds[1:]):
            r.start_async({0: images[a:b]}, share_inputs=True)
        for r in running:
            r.wait()
        return {n: torch.from_numpy(np.concatenate([r.get_output_tensor(i).data for r in running]))
                for i, n in enumerate(names)}

    run.normalises = True  # Staging hands it the uint8 batch
    return run


@functools.cache
def _core():
    """One OpenVINO runtime for the process, never released: releasing the last one
    unloads OpenVINO's CPU plugin, and the next ``fork`` (a subprocess, DataLoader
    workers) then crashed the process in the test suite."""
    return _openvino().Core()


def _convert(backbone: Backbone):
    ov = _openvino()

    size = backbone.preprocessing.image_size
    example = torch.zeros(2, 3, size, size)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python values in the graph
            model = ov.convert_model(_Outputs(backbone).eval(), example_input=example,
                                     input=[ov.PartialShape([-1, 3, size, size])])
            return _taking_uint8(model, backbone.preprocessing)
    except Exception as exc:  # noqa: BLE001 - any conversion failure means: another runtime
        log.info("%s: OpenVINO cannot convert it (%s); running the frozen graph", backbone.name,
                 str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None


def _taking_uint8(model, pre):
    """``model`` (float NCHW in) taking uint8 NHWC: OpenVINO's preprocessing casts, applies
    the weights' mean and std, ``(x - 255 mean) / (255 std)``, and transposes."""
    ov = _openvino()
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input(0).tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input(0).model().set_layout(ov.Layout("NCHW"))
    ppp.input(0).preprocess().convert_element_type(ov.Type.f32) \
        .mean([255 * m for m in pre.mean]).scale([255 * s for s in pre.std])
    return ppp.build()


def _writable(folder: Path) -> Path | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def _compiled(core, path: Path, config: dict):
    """The cached model at ``path`` compiled for the CPU; with ``CACHE_DIR`` OpenVINO
    loads its compiled form instead when it has it (compiling again if that is damaged)."""
    try:
        return core.compile_model(str(path), "CPU", config)
    except Exception as exc:  # noqa: BLE001 - a damaged file is converted again, not trusted
        log.warning("%s: cannot read the cached OpenVINO model (%s); converting it again", path,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None


def _save(model, path: Path) -> None:
    """Save the .bin then the .xml, each atomically: an .xml on disk always has its .bin."""
    ov = _openvino()

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.parent / f".{path.stem}.tmp-{os.getpid()}"
        staging.mkdir(exist_ok=True)
        try:
            ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)
            with atomic_path(path.with_suffix(".bin")) as tmp:
                shutil.copyfile(staging / "model.bin", tmp)
            with atomic_path(path) as tmp:  # an .xml reads the .bin of its own name
                shutil.copyfile(staging / "model.xml", tmp)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except Exception as exc:  # noqa: BLE001 - a cache that cannot be written costs the next run the convert
        log.warning("%s: cannot cache the OpenVINO model (%s)", path, exc)


@functools.cache
def _version() -> str:
    from importlib.metadata import version

    return version("openvino")
