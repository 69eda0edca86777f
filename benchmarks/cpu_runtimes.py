"""How to run the network on the CPU for a large job: eager bfloat16 autocast, the frozen
TorchScript graph featx uses (featx.extraction.frozen), ``torch.compile``, or another
runtime: OpenVINO (fp32, and bf16 through its CPU plugin's ``INFERENCE_PRECISION_HINT``) and
ONNX Runtime (fp32 only: its CPU provider has no general bfloat16 kernels), both fed the
network exported with ``torch.onnx.export`` (dynamic batch). For each: seconds to build
(export, compile and first call; torch.compile with an empty inductor cache unless
``--warm-cache``) and forward images/s on random batches, side by side in one process, with
the number of images above which it beats eager.

Every runtime is built once, then timed ``--repeats`` times, the runtimes taking turns batch
by batch within each repeat so that drift in the machine's load hits all of them alike; the
median is reported, and each runtime's speed over eager and over frozen is the median of the
repeats' paired ratios. The torch runtimes get channels-last batches (as featx feeds them),
the others plain NCHW (what featx's normalisation gives). On cores shared with other work,
run it as featx's command line runs (``OMP_WAIT_POLICY=PASSIVE``, see featx.core.threads):
spinning OpenMP threads slow torch down there; ONNX Runtime's threads are told not to spin
either. OpenVINO's report says the precision its convolutions really ran in; ``saved`` gives
the size of each exported runtime's compiled model on disk and the seconds to load it (and
make a first call). A runtime whose package is missing is reported as "not installed".
Prints JSON.

    python benchmarks/cpu_runtimes.py [--batches 8] [--batch-size 64] [--repeats 3]
        [--runtimes eager_bf16,frozen_bf16,openvino_bf16]
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import statistics
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from featx.backbones import load_backbone
from featx.extraction.frozen import frozen_embed
from featx.extraction.openvino_graph import _openvino

RUNTIMES = ("eager_bf16", "frozen_bf16", "compile_bf16", "openvino_fp32", "openvino_bf16",
            "onnxruntime_fp32", "onnxruntime_fp32_extended")
# name prefix -> packages; torch.onnx.export (dynamo=False) needs onnx
NEEDS = {"openvino": ("openvino", "onnx"), "onnxruntime": ("onnxruntime", "onnx")}
TORCH = ("eager_bf16", "frozen_bf16", "compile_bf16")  # fed channels-last batches


def missing(name: str) -> str | None:
    """The packages a runtime needs that are not installed, or None."""
    absent = [p for p in NEEDS.get(name.split("_")[0], ()) if importlib.util.find_spec(p) is None]
    return ", ".join(absent) or None


def autocast(f):
    def run(t):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return f(t)
    return run


def export_onnx(model: torch.nn.Module, size: int) -> bytes:
    """The fp32 network as ONNX bytes, batch axis dynamic. The TorchScript-based exporter
    (``dynamo=False``) needs only the ``onnx`` package, not onnxscript."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), buf, dynamo=False,
                          input_names=["x"], output_names=["embedding"], opset_version=17,
                          dynamic_axes={"x": {0: "n"}, "embedding": {0: "n"}})
    return buf.getvalue()


def openvino_config(precision: str, threads: int) -> dict:
    # one stream on all the threads torch uses; no pinning, as torch does not pin either
    return {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False}


def openvino_runtime(model: torch.nn.Module, size: int, precision: str, threads: int):
    """``x -> (N, D) ndarray`` through OpenVINO's CPU plugin, the compiled model, and a
    report of what it really runs (precision, threads, streams, convolutions by precision)."""
    ov = _openvino()  # without its usage reports (featx.extraction.openvino_graph)

    core = ov.Core()
    compiled = core.compile_model(core.read_model(export_onnx(model, size)), "CPU",
                                  openvino_config(precision, threads))
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> np.ndarray:
        return request.infer({0: x.numpy()}, share_inputs=True)[0]

    convs = Counter(op.get_rt_info()["runtimePrecision"].astype(str)
                    for op in compiled.get_runtime_model().get_ordered_ops()
                    if op.get_rt_info()["layerType"].astype(str) == "Convolution")
    report = {"inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
              "threads": compiled.get_property("INFERENCE_NUM_THREADS"),
              "streams": compiled.get_property("NUM_STREAMS"),
              "pinning": compiled.get_property("ENABLE_CPU_PINNING"),
              "convolutions_by_runtime_precision": dict(convs)}
    return run, compiled, report


def onnxruntime_runtime(model: torch.nn.Module, size: int, level: str, threads: int,
                        save: str | None = None):
    """``x -> (N, D) ndarray`` through ONNX Runtime's CPU provider at graph optimisation
    ``level`` (ORT_ENABLE_ALL adds the NCHWc layout transform to ORT_ENABLE_EXTENDED's
    fusions); ``save`` writes the optimised model there."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    # idle threads sleep rather than spin, as featx's command line asks of OpenMP
    # (OMP_WAIT_POLICY=PASSIVE): beside another busy process spinning takes the cores
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if save:
        opts.optimized_model_filepath = save
    session = ort.InferenceSession(export_onnx(model, size), opts,
                                   providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {"x": x.numpy()})[0]

    return run, {"graph_optimization_level": level, "threads": threads, "spinning": False}


def builder(name: str, bb, batch_size: int):
    """A function building runtime ``name``: it returns ``(run, report)``. ``bb.model``
    must already be channels-last (as featx runs it)."""
    model, size, threads = bb.model, bb.preprocessing.image_size, torch.get_num_threads()
    return {
        "eager_bf16": lambda: (autocast(model), {}),
        "frozen_bf16": lambda: (frozen_embed(bb, batch_size), {}),
        "compile_bf16": lambda: (autocast(torch.compile(model)), {}),
        "openvino_fp32": lambda: openvino_runtime(model, size, "f32", threads)[::2],
        "openvino_bf16": lambda: openvino_runtime(model, size, "bf16", threads)[::2],
        "onnxruntime_fp32": lambda: onnxruntime_runtime(model, size, "ORT_ENABLE_ALL", threads),
        "onnxruntime_fp32_extended": lambda: onnxruntime_runtime(model, size, "ORT_ENABLE_EXTENDED",
                                                                 threads),
    }[name]


def features(out) -> np.ndarray:
    """Any runtime's output (tensor, ``{"embedding": tensor}`` or ndarray) -> float32 (N, D)."""
    if isinstance(out, dict):
        out = out["embedding"]
    if isinstance(out, torch.Tensor):
        out = out.float().numpy()
    return np.asarray(out, dtype=np.float32)


def build(name: str, bb, batch_size: int, x: torch.Tensor):
    """``(run, result)``: the runtime and its build seconds (first call included)."""
    start = time.perf_counter()
    run, report = builder(name, bb, batch_size)()
    run(x)  # the first call: compiling happens here
    return run, {"build_seconds": round(time.perf_counter() - start, 1), **report}


def saved(bb, threads: int) -> dict:
    """Bytes on disk of each exported runtime's compiled model, and the seconds to load it
    and make the first call (instead of building it again)."""
    out, size = {}, bb.preprocessing.image_size
    x = torch.zeros(1, 3, size, size)
    with tempfile.TemporaryDirectory() as d:
        if not missing("openvino"):
            ov = _openvino()  # without its usage reports (featx.extraction.openvino_graph)
            for prec in ("f32", "bf16"):
                blob = openvino_runtime(bb.model, size, prec, threads)[1].export_model()
                blob = blob.getvalue() if hasattr(blob, "getvalue") else blob  # BytesIO in 2026
                start = time.perf_counter()
                ov.Core().import_model(blob, "CPU", openvino_config(prec, threads))(x.numpy())
                out[f"openvino_{prec}_export_model"] = {
                    "bytes": len(blob), "load_seconds": round(time.perf_counter() - start, 2)}
        if not missing("onnxruntime"):
            import onnxruntime as ort

            path = os.path.join(d, "optimised.onnx")
            onnxruntime_runtime(bb.model, size, "ORT_ENABLE_EXTENDED", threads, save=path)
            start = time.perf_counter()
            ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
            out["onnxruntime_extended_optimised_onnx"] = {
                "bytes": Path(path).stat().st_size,
                "load_seconds": round(time.perf_counter() - start, 2),
                "note": "saved after ORT_ENABLE_EXTENDED's fusions: ORT_ENABLE_ALL's NCHWc "
                        "layout is machine-specific, and loading at the default level redoes it"}
    return out


def measure(runs: dict, inputs: dict, batches: int, repeats: int) -> dict:
    """Images/s of each runtime in each repeat, the runtimes taking turns batch by batch
    so that a change in the machine's load hits all of them alike."""
    rates = {name: [] for name in runs}
    for _ in range(repeats):
        seconds = dict.fromkeys(runs, 0.0)
        for _ in range(batches):
            for name, run in runs.items():
                start = time.perf_counter()
                run(inputs[name])
                seconds[name] += time.perf_counter() - start
        for name in runs:
            rates[name].append(len(inputs[name]) * batches / seconds[name])
    return rates


def summarise(results: dict, rates: dict) -> None:
    """Add each timed runtime's speed over eager and over frozen (the median of the
    repeats' ratios: each repeat's runtimes ran side by side), and break-even size."""
    for name, each in rates.items():
        r = results[name]
        r["images_per_second"] = round(statistics.median(each), 1)
        r["images_per_second_each_repeat"] = [round(v, 1) for v in each]
        for base in ("eager_bf16", "frozen_bf16"):
            if base in rates:
                ratio = statistics.median(v / b for v, b in zip(each, rates[base]))
                r[f"speed_over_{base.split('_')[0]}"] = round(ratio, 2)
        if "eager_bf16" in rates:
            gain = 1 / results["eager_bf16"]["images_per_second"] - 1 / r["images_per_second"]
            r["pays_above_images"] = round(r["build_seconds"] / gain) if gain > 0 else None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1,
                   help="time every runtime this many times, interleaved; report the median")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated")
    p.add_argument("--warm-cache", action="store_true",
                   help="let torch.compile reuse inductor's on-disk cache from earlier runs "
                        "(default: a cold, empty one)")
    args = p.parse_args()
    if not args.warm_cache:  # what a first run on a machine pays
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="featx-inductor-")
    bb = load_backbone(args.backbone)
    size = bb.preprocessing.image_size
    x = torch.randn(args.batch_size, 3, size, size)
    bb.model.to(memory_format=torch.channels_last)
    results, runs, inputs = {}, {}, {}
    for name in args.runtimes.split(","):
        if missing(name):
            results[name] = {"skipped": f"{missing(name)} not installed"}
            continue
        inputs[name] = x.contiguous(memory_format=torch.channels_last) if name in TORCH else x
        runs[name], results[name] = build(name, bb, args.batch_size, inputs[name])
    summarise(results, measure(runs, inputs, args.batches, args.repeats))
    print(json.dumps({"backbone": args.backbone, "threads": torch.get_num_threads(),
                      "batch_size": args.batch_size, "batches": args.batches,
                      "repeats": args.repeats, "load_average": os.getloadavg(),
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
                      "runtimes": results, "saved": saved(bb, torch.get_num_threads())},
                     indent=2, default=str))


if __name__ == "__main__":
    main()
