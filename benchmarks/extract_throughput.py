"""End-to-end extraction speed, three ways side by side in one process, on one folder:

- ``featx``: ``featx.extract`` (files in, store written), precision ``auto``;
- ``tutorial``: the loop of the PyTorch transfer-learning tutorial: torchvision
  ``ImageFolder`` with Resize / CenterCrop / ToTensor / Normalize, a ``DataLoader``
  (batch 64, one worker per core), the model in fp32, features appended to a list and
  saved with numpy;
- ``bound``: random tensors through the same model at featx's precision, memory
  layout, batch size and runtime (eager, or the frozen graph that featx uses for large
  jobs on the CPU, see featx.extraction.frozen): the forward pass alone, what extraction cannot beat.

Each dataset's images are unpacked into a temporary ImageFolder first, so all three
read the same files. Prints JSON.

    python benchmarks/extract_throughput.py [--datasets hymenoptera,cifar10-test] [--limit N]
        [--device cuda --decode cpu,gpu]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from featx import store
from featx.backbones import load_backbone
from featx.core.devices import PRECISIONS, resolve_device, resolve_precision
from featx.extraction import extract
from featx.extraction.frozen import frozen_embed, use_frozen
from featx.extraction.loader import default_batch_size

# the shared datasets beside the project, or FEATX_DATASETS (on a machine without them)
DATASETS = Path(os.environ.get("FEATX_DATASETS",
                               Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))
LAYOUT = {"hymenoptera": ("hymenoptera.tar", "hymenoptera/val"),
          "cifar10-test": ("cifar10-test.tar", "cifar10/test")}


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


def bound(backbone, device: torch.device, precision: str, images: int, frozen: bool = False) -> float:
    """Images/s of the forward pass alone on random batches of featx's batch size (one
    warm-up batch), run as featx runs it: eager under autocast, or the frozen graph."""
    size, batch = backbone.preprocessing.image_size, default_batch_size(device)
    model = backbone.model.to(device, memory_format=torch.channels_last).eval()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    dtype = PRECISIONS[precision]
    run = frozen_embed(backbone, batch) if frozen else model
    batches = max(3, -(-images // batch))
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype,
                                                enabled=dtype is not None and not frozen):
        run(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            run(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batch * batches / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", default="hymenoptera,cifar10-test")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--limit", type=int, default=0, help="images per dataset, a seeded draw (0: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--decode", default="cpu",
                   help="featx's decoders to time, comma-separated: cpu, gpu (CUDA only)")
    args = p.parse_args()
    dev = resolve_device(args.device)
    prec = resolve_precision("auto", dev)
    if dev.type == "cuda":  # load CUDA and its kernels before any timing: no contender pays for it
        bound(load_backbone(args.backbone), dev, prec, 1)
        bound(load_backbone(args.backbone), dev, "fp32", 1)
    results = {"backbone": args.backbone, "device": dev.type, "precision": prec,
               "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__, "datasets": {}}
    for name in args.datasets.split(","):
        with tempfile.TemporaryDirectory(prefix="featx-bench-") as tmp:
            folder = unpack(name, Path(tmp) / name, args.limit or None)
            images = sum(1 for _ in folder.rglob("*.jp*g"))
            featx_ips, stores = {}, {}
            for decode in args.decode.split(","):
                bb = load_backbone(args.backbone)  # built outside the timing, as the tutorial's model is
                start = time.perf_counter()
                r = extract(str(folder), bb, Path(tmp) / "cache", precision="auto", device=args.device,
                            decode=decode)
                featx_ips[decode] = r.rows / (time.perf_counter() - start)
                stores[decode] = store.load(r.path)[0]
            tut_ips = tutorial(folder, load_backbone(args.backbone), dev, Path(tmp) / "features.npy")
            frozen = use_frozen(dev, prec, images)
            bound_ips = bound(load_backbone(args.backbone), dev, prec, images, frozen)
        row = {"images": images, "runtime": "torchscript-frozen" if frozen else "eager",
               "tutorial_images_per_second": round(tut_ips, 1),
               "bound_images_per_second": round(bound_ips, 1)}
        for decode, ips in featx_ips.items():
            tag = "featx" if decode == "cpu" else f"featx_{decode}_decode"
            row.update({f"{tag}_images_per_second": round(ips, 1),
                        f"{tag}_over_tutorial": round(ips / tut_ips, 2),
                        f"{tag}_over_bound": round(ips / bound_ips, 3)})
        if "gpu" in stores and "cpu" in stores:  # how far the GPU decoder moves the features
            a, b = stores["cpu"], stores["gpu"]
            row["gpu_decode_mean_cosine_to_cpu_decode"] = round(float(np.mean(
                np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))), 5)
        results["datasets"][name] = row
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
