"""End-to-end extraction speed, three ways side by side in one process, on one folder:

- ``featx``: ``featx.extract.extract`` (files in, store written), precision ``auto``;
- ``tutorial``: the loop of the PyTorch transfer-learning tutorial: torchvision
  ``ImageFolder`` with Resize / CenterCrop / ToTensor / Normalize, a ``DataLoader``
  (batch 64, one worker per core), the model in fp32, features appended to a list and
  saved with numpy;
- ``bound``: random tensors through the same model at featx's precision and memory
  layout: the forward pass alone, what extraction cannot beat.

Each dataset's images are unpacked into a temporary ImageFolder first, so all three
read the same files. Prints JSON.

    python benchmarks/extract_throughput.py [--datasets hymenoptera,cifar10-test] [--limit N]
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

from featx.backbones import load_backbone
from featx.extract import (
    PRECISIONS,
    default_workers,
    extract,
    resolve_device,
    resolve_precision,
)

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
LAYOUT = {"hymenoptera": ("hymenoptera.tar", "hymenoptera/val"), "cifar10-test": ("cifar10-test.tar", "cifar10/test")}


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
        transforms.CenterCrop(pre.image_size), transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(folder, tf), batch_size=64,
                                         num_workers=default_workers())
    model = backbone.model.to(device).float().eval()
    start = time.perf_counter()
    feats = []
    with torch.no_grad():
        for x, _ in loader:
            feats.append(model(x.to(device)).cpu().numpy())
    np.save(out, np.concatenate(feats))
    return sum(len(f) for f in feats) / (time.perf_counter() - start)


def bound(backbone, device: torch.device, precision: str, images: int) -> float:
    """Images/s of the forward pass alone on random batches of 64 (one warm-up batch)."""
    size = backbone.preprocessing.image_size
    model = backbone.model.to(device, memory_format=torch.channels_last).eval()
    x = torch.randn(64, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    dtype = PRECISIONS[precision]
    batches = max(2, -(-images // 64))
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 64 * batches / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", default="hymenoptera,cifar10-test")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--limit", type=int, default=2000, help="images per dataset, a seeded draw (0: all)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    dev = resolve_device(args.device)
    prec = resolve_precision("auto", dev)
    results = {"backbone": args.backbone, "device": dev.type, "precision": prec, "cores": len(os.sched_getaffinity(0)),
               "torch": torch.__version__, "datasets": {}}
    for name in args.datasets.split(","):
        with tempfile.TemporaryDirectory(prefix="featx-bench-") as tmp:
            folder = unpack(name, Path(tmp) / name, args.limit or None)
            images = sum(1 for _ in folder.rglob("*.jp*g"))
            bb = load_backbone(args.backbone)  # built outside the timing, as the tutorial's model is
            start = time.perf_counter()
            r = extract(str(folder), bb, Path(tmp) / "cache", precision="auto", device=args.device)
            featx_ips = r.rows / (time.perf_counter() - start)
            tut_ips = tutorial(folder, load_backbone(args.backbone), dev, Path(tmp) / "features.npy")
            bound_ips = bound(load_backbone(args.backbone), dev, prec, images)
        results["datasets"][name] = {
            "images": images, "featx_images_per_second": round(featx_ips, 1),
            "tutorial_images_per_second": round(tut_ips, 1), "bound_images_per_second": round(bound_ips, 1),
            "featx_over_tutorial": round(featx_ips / tut_ips, 2), "featx_over_bound": round(featx_ips / bound_ips, 3),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
