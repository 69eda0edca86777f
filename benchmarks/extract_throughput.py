"""End-to-end extraction speed: every contender side by side in one run, three repeats
(interleaved, so that the machine's drift hits all alike), medians and every repeat.

On each dataset (its images unpacked into a temporary ImageFolder first, so that every
contender reads the same files):

- ``featx``: ``featx.extract`` with its defaults (files in, store written), into an
  empty cache; its graph (OpenVINO's or the frozen one) already cached, as on any run
  but a machine's first;
- ``featx_<runtime>``: the same with each other runtime featx has for this device
  (CPU: ``openvino``, ``torchscript-frozen``, ``eager``; CUDA: the decoders ``--decode``);
- ``tutorial``: the loop of the PyTorch transfer-learning tutorial: torchvision
  ``ImageFolder`` with Resize / CenterCrop / ToTensor / Normalize, a ``DataLoader``
  (batch 64, one worker per core), the model in fp32, features saved with numpy;
- ``bound_<runtime>``: random batches through the network alone, as featx runs it
  (same runtime, precision and batch size): what extraction cannot beat;
- ``decode``: one core reading and decoding the files with featx's preprocessing, and
  from it the ceiling of the default runtime, 1 / (1 / bound + decode time / cores).

```--processes N`` adds the whole-process comparison on the CPU: ``featx extract`` and
the tutorial as fresh Python processes (start-up included) on N images of
``--processes-on`` (CIFAR-10 test).

    python benchmarks/extract_throughput.py [--datasets hymenoptera,cifar10-test] [--limit N]
        [--repeats 3] [--processes 5000] [--tutorial-limit 2000] [--device cuda]

The process runs with the thread settings the ``featx`` command makes (passive
waiting, see docs/throughput.md), the tutorial loop included; the whole processes of
``--processes`` start as from a user's shell (the featx command sets its own).

Prints JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from unittest import mock

from featx.core import threads

threads.prepare()  # the thread settings the featx command makes, before torch loads (docs/throughput.md)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from featx.backbones import load_backbone  # noqa: E402
from featx.core.devices import resolve_device, resolve_precision  # noqa: E402
from featx.extraction import extract, plan  # noqa: E402
from featx.extraction.forward import Forward  # noqa: E402
from featx.extraction.loader import default_batch_size  # noqa: E402

# the shared datasets beside the project, or FEATX_DATASETS (on a machine without them)
DATASETS = Path(os.environ.get("FEATX_DATASETS",
                               Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))
LAYOUT = {"hymenoptera": ("hymenoptera.tar", "hymenoptera/val"),
          "cifar10-test": ("cifar10-test.tar", "cifar10/test")}
ROOT = Path(__file__).resolve().parents[1]


def unpack(name: str, dest: Path, limit: int | None, seed: int = 0) -> Path:
    """The split's JPEGs (at most ``limit``, a seeded draw) as ``dest/<class>/<file>``."""
    tar_name, prefix = LAYOUT[name]
    with tarfile.open(DATASETS / tar_name) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix + "/")
                   and m.name.lower().endswith((".jpg", ".jpeg"))]
        if limit and limit < len(members):
            members = sorted(random.Random(seed).sample(members, limit), key=lambda m: m.name)
        for m in members:
            m.name = m.name[len(prefix) + 1:]
        tar.extractall(dest, members=members, filter="data")
    return dest


def forced(runtime: str | None):
    """featx's extractions run ``runtime`` (eager, torchscript-frozen, openvino) inside the block."""
    if runtime is None:
        return contextlib.nullcontext()
    return mock.patch.object(plan, "choose", lambda *a, **k: runtime)


def tutorial(folder: Path, backbone, device: torch.device, out: Path) -> float:
    """Images/s of the tutorial loop, saving its features with numpy."""
    from torchvision import datasets, transforms
    from torchvision.transforms import InterpolationMode

    pre = backbone.preprocessing
    tf = transforms.Compose([
        transforms.Resize(pre.resize_size, interpolation=InterpolationMode(pre.interpolation)),
        transforms.CenterCrop(pre.image_size), transforms.ToTensor(),
        transforms.Normalize(pre.mean, pre.std)])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(folder, tf), batch_size=64,
                                         num_workers=len(os.sched_getaffinity(0)))
    model = backbone.model.to(device).float().eval()
    start = time.perf_counter()
    feats = []
    with torch.no_grad():
        for x, _ in loader:
            feats.append(model(x.to(device)).cpu().numpy())
    np.save(out, np.concatenate(feats))
    return sum(len(f) for f in feats) / (time.perf_counter() - start)


def bound(backbone, device: torch.device, precision: str, images: int, runtime: str = "eager",
          graphs: Path | None = None) -> float:
    """Images/s of the forward pass alone on random batches of featx's batch size (one
    warm-up batch), through featx's own :class:`Forward` with ``runtime``."""
    size, batch = backbone.preprocessing.image_size, default_batch_size(device)
    fake = plan.Plan(None, backbone, backbone.preprocessing, device, precision, runtime, batch, 0, "skip",
                     0, 0.0, Path(graphs or tempfile.mkdtemp(prefix="featx-graphs-")) / "x.h5", "")
    # (the graph cache: $FEATX_GRAPH_CACHE when set, else graphs/ beside that path)
    forward = Forward(fake)
    # uint8 NCHW views of HWC images, as the decoding processes hand them over
    x = [torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)]
    batches = max(3, -(-images // batch))
    with torch.inference_mode():
        forward.staging.host(forward(forward.stage(x)))
        start = time.perf_counter()
        for _ in range(batches):
            out = forward(forward.stage(x))
        forward.staging.host(out)
    return batch * batches / (time.perf_counter() - start)


def decode_seconds(folder: Path, pre, repeats: int = 3) -> float:
    """Seconds of one core per image reading and decoding the folder with featx's preprocessing."""
    files, threads = sorted(folder.rglob("*.jp*g")), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for f in files:
                pre.decode(f.read_bytes())
            times.append((time.perf_counter() - start) / len(files))
        return statistics.median(times)
    finally:
        torch.set_num_threads(threads)


def contenders(dev: torch.device, args) -> dict[str, dict]:
    """featx's contenders on ``dev``: name -> extract() keyword arguments and forced runtime."""
    if dev.type == "cuda":
        decoders = args.decode.split(",")
        return {("featx" if d == "auto" else f"featx_decode_{d}"): {"decode": d} for d in decoders}
    others = {f"featx_{r}": {"runtime": r} for r in args.runtimes.split(",") if r}
    return {"featx": {}, **others}


def featx_rate(folder: Path, backbone: str, cache: Path, device: str, options: dict) -> tuple[float, str]:
    """Images/s of one featx.extract into the empty ``cache`` (its backbone built outside
    the timing, as the tutorial's model is), and the runtime it ran."""
    from featx import store

    bb = load_backbone(backbone)
    options = dict(options)
    with forced(options.pop("runtime", None)):
        start = time.perf_counter()
        r = extract(str(folder), bb, cache, device=device, **options)
        seconds = time.perf_counter() - start
    return r.rows / seconds, store.info(r.path)["provenance"]["runtime"]


def one_repeat(folder: Path, tmp: Path, args, dev: torch.device, rep: int) -> dict[str, float]:
    """Every contender once on ``folder``; images/s by contender."""
    prec, images = resolve_precision("auto", dev), sum(1 for _ in folder.rglob("*.jp*g"))
    rates, ran = {}, {}
    for name, options in contenders(dev, args).items():
        rates[name], ran[name] = featx_rate(folder, args.backbone, tmp / f"cache-{name}-{rep}", args.device,
                                            options)
    for name, runtime in ran.items():
        key = f"bound_{runtime}"
        if key not in rates:
            rates[key] = bound(load_backbone(args.backbone), dev, prec, images, runtime)
    tut = tmp / "tutorial"
    if not tut.exists():
        unpack(args.current, tut, args.tutorial_limit or args.limit or None)
    rates["tutorial"] = tutorial(tut, load_backbone(args.backbone), dev, tmp / "features.npy")
    rates["_runtime"] = ran["featx"]
    return rates


def summary(runs: list[dict], decode: float, cores: int) -> dict:
    """Medians, repeats and the ratios the targets name."""
    names = [k for k in runs[0] if not k.startswith("_")]
    row = {"runtime": runs[0]["_runtime"], "decode_ms_per_image_one_core": round(decode * 1000, 2)}
    med = {n: statistics.median(r[n] for r in runs) for n in names}
    for n in names:
        row[f"{n}_images_per_second"] = round(med[n], 1)
        row[f"{n}_repeats"] = [round(r[n], 1) for r in runs]
    bound_default = med[f"bound_{row['runtime']}"]
    ceiling = 1 / (1 / bound_default + decode / cores)
    row["ceiling_images_per_second"] = round(ceiling, 1)
    row["featx_over_bound"] = round(med["featx"] / bound_default, 3)
    row["featx_over_ceiling"] = round(med["featx"] / ceiling, 3)
    row["featx_over_tutorial"] = round(med["featx"] / med["tutorial"], 2)
    return row


TUTORIAL_PROCESS = """
import sys, torch
sys.path.insert(0, sys.argv[3])
from extract_throughput import tutorial
from featx.backbones import load_backbone
from pathlib import Path
tutorial(Path(sys.argv[1]), load_backbone("efficientnet_lite0"), torch.device("cpu"), Path(sys.argv[2]))
"""


def processes(folder: Path, tmp: Path, repeats: int) -> dict:
    """Seconds of ``featx extract`` and of the tutorial as whole processes (start-up
    included), after one untimed featx run that caches the graph, as any run but a
    machine's first finds it."""
    featx = [sys.executable, "-m", "featx", "extract", "--data", str(folder), "--backbone",
             "efficientnet_lite0", "--device", "cpu"]
    env = {**{k: v for k, v in os.environ.items() if k not in threads.environment()},  # as a user's shell
           "PYTHONPATH": str(ROOT), "FEATX_GRAPH_CACHE": str(tmp / "graphs")}
    subprocess.run([*featx, "--cache", str(tmp / "warm")], env=env, check=True, capture_output=True)
    times = {"featx": [], "tutorial": []}
    for rep in range(repeats):
        for name, cmd in (("featx", [*featx, "--cache", str(tmp / f"proc-{rep}")]),
                          ("tutorial", [sys.executable, "-c", TUTORIAL_PROCESS, str(folder),
                                        str(tmp / "t.npy"), str(Path(__file__).parent)])):
            start = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"images": sum(1 for _ in folder.rglob("*.jp*g")),
            **{f"{k}_seconds": round(v, 1) for k, v in med.items()},
            **{f"{k}_repeats": [round(x, 1) for x in v] for k, v in times.items()},
            "featx_speedup_over_tutorial": round(med["tutorial"] / med["featx"], 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", default="hymenoptera,cifar10-test")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--limit", type=int, default=0, help="images per dataset, a seeded draw (0: all)")
    p.add_argument("--tutorial-limit", type=int, default=0,
                   help="images for the in-process tutorial loop, a seeded draw (0: as --limit)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--processes", type=int, default=0, metavar="N",
                   help="also time whole processes on the CPU on N images of --processes-on (0: not)")
    p.add_argument("--processes-on", default="cifar10-test", choices=sorted(LAYOUT))
    p.add_argument("--device", default="auto")
    p.add_argument("--decode", default="auto,cpu,gpu", help="CUDA only: featx's decoders to time")
    p.add_argument("--runtimes", default="torchscript-frozen,eager",
                   help="CPU only: featx's other runtimes to time beside its default")
    p.add_argument("--process-repeats", type=int, help="repeats of --processes (default: --repeats)")
    args = p.parse_args()
    dev = resolve_device(args.device)
    if dev.type == "cuda":  # load CUDA and its kernels before any timing: no contender pays for it
        bound(load_backbone(args.backbone), dev, resolve_precision("auto", dev), 1)
    cores = len(os.sched_getaffinity(0))
    results = {"backbone": args.backbone, "device": dev.type, "precision": resolve_precision("auto", dev),
               "cores": cores, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
               "datasets": {}}
    graphs = tempfile.TemporaryDirectory(prefix="featx-graphs-")
    os.environ["FEATX_GRAPH_CACHE"] = graphs.name  # one graph cache for every contender, as on a machine
    for name in args.datasets.split(","):
        args.current = name
        with tempfile.TemporaryDirectory(prefix="featx-bench-") as tmp:
            folder = unpack(name, Path(tmp) / name, args.limit or None)
            decode = decode_seconds(folder, load_backbone(args.backbone).preprocessing)
            warm = unpack(name, Path(tmp) / "warm", 2)  # each runtime's graph built, untimed
            for options in contenders(dev, args).values():
                featx_rate(warm, args.backbone, Path(tmp) / "warm-cache", args.device, options)
            runs = [one_repeat(folder, Path(tmp), args, dev, rep) for rep in range(args.repeats)]
            results["datasets"][name] = {"images": sum(1 for _ in folder.rglob("*.jp*g")),
                                         **summary(runs, decode, cores)}
            if args.processes and name == args.processes_on:
                few = unpack(name, Path(tmp) / "processes", args.processes)
                results["processes"] = {"dataset": name,
                                        **processes(few, Path(tmp), args.process_repeats or args.repeats)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
