"""JPEG decoding on the GPU against featx's CPU decoder: speed and fidelity, side by side
in one process, on the same bytes held in memory:

- ``cpu``: featx's own ``Preprocessing.decode`` (PIL with DCT scaling, resize of the
  shorter side, centre crop) on one core (torch on one thread, as in a worker);
- ``nvjpeg``: torchvision's batched nvJPEG decode, then torch's resize and crop on the
  GPU, exactly as featx does with ``decode="gpu"`` (featx.extraction.gpu_decode.decode_batch);
- ``dali``: an NVIDIA DALI pipeline fed from an external source of the same bytes:
  ``fn.decoders.image(device="mixed")`` (DALI's default ``hw_decoder_load``, so the
  hardware JPEG decoder takes its share where the GPU has one, as the H100 and H200 do),
  resize of the shorter side to the backbone's ``resize_size`` (cubic, antialiased),
  centre crop to ``image_size``, CHW, copied into a torch tensor;
- ``dali_no_hw``: the same pipeline with ``hw_decoder_load=0`` (CUDA decoding only).

The images are the plain JPEGs (RGB or grayscale, no EXIF rotation:
featx.extraction.gpu_decode.gpu_ready) of each split, a seeded draw of ``--limit`` of
them as in extract_throughput.py; any other file would be decoded on the CPU by featx
anyway and is left out (their number is reported). The GPU rates are whole batches
(featx's batch size on CUDA) from host bytes to uint8 tensors on the GPU, timed with
``torch.cuda.synchronize()``; each GPU contender first runs one untimed pass, whose
output is compared with the CPU's: mean absolute pixel difference (uint8 units) and
mean cosine of the backbone's embeddings (fp32, on the GPU) to those of the CPU-decoded
images. Three timed passes per contender; medians are reported with every repeat.

A contender that cannot run (no CUDA device, DALI not installed, a decoder failing)
is reported as ``{"skipped": reason}``; without CUDA only ``cpu`` runs. Prints JSON.

    python benchmarks/gpu_decoders.py [--datasets hymenoptera,cifar10-test] [--limit N]
        [--repeats 3] [--no-embed]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import statistics
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from featx.backbones import load_backbone
from featx.data.preprocess import Preprocessing
from featx.extraction.gpu_decode import decode_batch, gpu_ready
from featx.extraction.loader import default_batch_size

# the shared datasets beside the project, or FEATX_DATASETS (on a machine without them)
DATASETS = Path(os.environ.get("FEATX_DATASETS",
                               Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))
LAYOUT = {"hymenoptera": ("hymenoptera.tar", "hymenoptera/val"),
          "cifar10-test": ("cifar10-test.tar", "cifar10/test")}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def read_jpegs(name: str, limit: int | None, seed: int = 0) -> list[bytes]:
    """The split's JPEG files as bytes, sorted by name: at most ``limit``, the same
    seeded draw as extract_throughput.unpack."""
    tar_name, prefix = LAYOUT[name]
    with tarfile.open(DATASETS / tar_name) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix + "/")
                   and m.name.lower().endswith((".jpg", ".jpeg"))]
        if limit and limit < len(members):
            members = random.Random(seed).sample(members, limit)
        members = sorted(members, key=lambda m: m.name)
        return [tar.extractfile(m).read() for m in members]


def batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def summary(rates: list[float]) -> dict:
    return {"images_per_second": round(statistics.median(rates), 1), "repeats": [round(r, 1) for r in rates]}


# --- contenders --------------------------------------------------------------------------

def cpu_decode(datas: list[bytes], pre: Preprocessing, repeats: int,
               keep: bool) -> tuple[list[float], torch.Tensor | None]:
    """Images/s of each pass of featx's CPU decoder on one core; the images of the last
    pass, stacked (N, 3, S, S) uint8, when ``keep``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rates, images = [], None
        for rep in range(repeats):
            start = time.perf_counter()
            out = [pre.decode(d) for d in datas]
            rates.append(len(datas) / (time.perf_counter() - start))
            if keep and rep == repeats - 1:
                images = torch.stack(out)
        return rates, images
    finally:
        torch.set_num_threads(threads)


def nvjpeg_decode(datas: list[bytes], pre: Preprocessing, device: torch.device, batch: int,
                  repeats: int) -> tuple[list[float], list[torch.Tensor]]:
    """Images/s of each timed pass of featx's GPU decoder; the untimed first pass's
    images, one (n, 3, S, S) uint8 tensor per batch on the device."""
    chunks = batches(datas, batch)
    first = []
    for chunk in chunks:  # warm-up (nvJPEG's handles, the resize kernels), kept for fidelity
        out = decode_batch(chunk, pre, device)
        bad = [o for o in out if isinstance(o, str)]
        if bad:
            raise RuntimeError(f"{len(bad)} images not decoded, e.g. {bad[0]}")
        first.append(torch.stack(out))
    torch.cuda.synchronize(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for chunk in chunks:
            decode_batch(chunk, pre, device)
        torch.cuda.synchronize(device)
        rates.append(len(datas) / (time.perf_counter() - start))
    return rates, first


def dali_decode(datas: list[bytes], pre: Preprocessing, device: torch.device, batch: int, repeats: int,
                hw_decoder_load: float | None) -> tuple[list[float], list[torch.Tensor], dict]:
    """Images/s of each timed pass of a DALI pipeline (decode on the GPU, resize, crop),
    its output copied into torch tensors; the untimed first pass's images per batch."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import feed_ndarray

    chunks = batches([np.frombuffer(d, dtype=np.uint8) for d in datas], batch)
    size = pre.image_size
    interp = {"bicubic": types.INTERP_CUBIC, "bilinear": types.INTERP_LINEAR,
              "nearest": types.INTERP_NN}[pre.interpolation]
    decoder_args = {} if hw_decoder_load is None else {"hw_decoder_load": hw_decoder_load}

    @pipeline_def(batch_size=batch, num_threads=min(8, len(os.sched_getaffinity(0))),
                  device_id=device.index or 0, prefetch_queue_depth=2)
    def pipeline():
        # one batch per iteration, pass after pass (the prefetching runs ahead over passes)
        jpegs = fn.external_source(source=itertools.cycle(chunks), batch=True, dtype=types.UINT8)
        images = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB, **decoder_args)
        images = fn.resize(images, resize_shorter=pre.resize_size, interp_type=interp, antialias=True)
        images = fn.crop(images, crop=(size, size), crop_pos_x=0.5, crop_pos_y=0.5)
        return fn.transpose(images, perm=[2, 0, 1])

    pipe = pipeline()
    pipe.build()
    stream = torch.cuda.current_stream(device)

    def one_pass(pipe, keep: bool) -> list[torch.Tensor]:
        kept = []
        for _ in chunks:
            (out,) = pipe.run()
            tensor = out.as_tensor()
            dst = torch.empty(tensor.shape(), dtype=torch.uint8, device=device)
            feed_ndarray(tensor, dst, cuda_stream=stream)
            if keep:
                kept.append(dst)
        torch.cuda.synchronize(device)
        return kept

    first = one_pass(pipe, True)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        one_pass(pipe, False)
        rates.append(len(datas) / (time.perf_counter() - start))
    info = {"hw_decoder_load": "default" if hw_decoder_load is None else hw_decoder_load}
    del pipe
    return rates, first, info


# --- fidelity ----------------------------------------------------------------------------

def embed_all(bb, images: list[torch.Tensor], device: torch.device, batch: int = 256) -> torch.Tensor:
    """The backbone's fp32 embeddings (N, D) of uint8 image batches, on ``device``."""
    pre, out = bb.preprocessing, []
    with torch.inference_mode():
        for part in images:
            for i in range(0, len(part), batch):
                x = pre.normalize(part[i:i + batch].to(device))
                out.append(bb.embed(x)["embedding"].float())
    return torch.cat(out)


def fidelity(reference: torch.Tensor, images: list[torch.Tensor], bb, ref_emb: torch.Tensor | None,
             device: torch.device) -> dict:
    """How far ``images`` (per batch, on the device) are from the CPU decoder's ``reference``."""
    got = torch.cat(images).to(device)
    ref = reference.to(device)
    if got.shape != ref.shape:
        return {"shape_mismatch": [list(got.shape), list(ref.shape)]}
    diff = (got.int() - ref.int()).abs().float()
    per_image = diff.mean(dim=(1, 2, 3))
    row = {"mean_abs_pixel_difference": round(float(per_image.mean()), 3),
           "worst_image_mean_abs_pixel_difference": round(float(per_image.max()), 3),
           "share_of_pixels_off_by_more_than_8": round(float((diff > 8).float().mean()), 5)}
    if ref_emb is not None:
        emb = embed_all(bb, [got], device)
        cos = torch.nn.functional.cosine_similarity(emb, ref_emb, dim=1)
        row.update({"mean_cosine_to_cpu_decode": round(float(cos.mean()), 5),
                    "min_cosine_to_cpu_decode": round(float(cos.min()), 5)})
    return row


# --- driver ------------------------------------------------------------------------------

def dali_version() -> tuple[str | None, str | None]:
    try:
        import nvidia.dali as dali
    except Exception as exc:  # noqa: BLE001 - ImportError, or a library it cannot load
        return None, f"nvidia.dali not installed ({first_line(exc)})"
    return getattr(dali, "__version__", "unknown"), None


def measure(name: str, args, bb, device: torch.device | None, dali_skip: str | None) -> dict:
    pre = bb.preprocessing
    everything = read_jpegs(name, args.limit or None)
    datas = [d for d in everything if gpu_ready(d)]
    row: dict = {"images": len(datas), "left_out_not_plain_jpeg": len(everything) - len(datas),
                 "mean_bytes": round(sum(map(len, datas)) / max(1, len(datas)))}
    if not datas:
        row["skipped"] = "no plain JPEGs"
        return row
    rates, reference = cpu_decode(datas, pre, args.repeats, keep=device is not None)
    per_core = statistics.median(rates)
    row["cpu"] = {**summary(rates), "cores": len(os.sched_getaffinity(0)),
                  "images_per_second_times_cores": round(per_core * len(os.sched_getaffinity(0)), 1)}
    contenders = ["nvjpeg", "dali", "dali_no_hw"]
    if device is None:
        row.update({c: {"skipped": "no CUDA"} for c in contenders})
        return row
    ref_emb = None
    if args.embed:
        try:
            ref_emb = embed_all(bb, [reference], device)
        except Exception as exc:  # noqa: BLE001 - report, and compare pixels only
            row["embedding_error"] = first_line(exc)
    for contender in contenders:
        if contender.startswith("dali") and dali_skip:
            row[contender] = {"skipped": dali_skip}
            continue
        try:
            if contender == "nvjpeg":
                rates, first = nvjpeg_decode(datas, pre, device, args.batch, args.repeats)
                extra = {}
            else:
                hw = None if contender == "dali" else 0.0
                rates, first, extra = dali_decode(datas, pre, device, args.batch, args.repeats, hw)
        except Exception as exc:  # noqa: BLE001 - one contender failing must not stop the others
            row[contender] = {"skipped": f"failed: {first_line(exc)}"}
            torch.cuda.synchronize(device)
            continue
        ips = statistics.median(rates)
        cores = len(os.sched_getaffinity(0))
        row[contender] = {**summary(rates), **extra, "over_cpu_one_core": round(ips / per_core, 2),
                          "over_cpu_times_cores": round(ips / (per_core * cores), 3),
                          **fidelity(reference, first, bb, ref_emb, device)}
        del first
        torch.cuda.empty_cache()
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", default="hymenoptera,cifar10-test")
    p.add_argument("--backbone", default="efficientnet_lite0",
                   help="whose preprocessing (and network) is used")
    p.add_argument("--limit", type=int, default=0, help="images per dataset, a seeded draw (0: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=0, help="GPU batch size (0: featx's on CUDA)")
    p.add_argument("--device", default="cuda", help="the CUDA device for the GPU contenders")
    p.add_argument("--no-embed", dest="embed", action="store_false",
                   help="compare pixels only, not the backbone's embeddings")
    args = p.parse_args()
    device = torch.device(args.device) if torch.cuda.is_available() else None
    if device is not None and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    args.batch = args.batch or default_batch_size(torch.device("cuda"))
    bb = load_backbone(args.backbone)
    if device is not None:
        bb.model.to(device).float().eval()
    dali, dali_skip = dali_version()
    if device is None:
        dali_skip = "no CUDA"
    pre = bb.preprocessing
    import torchvision

    out = {"backbone": args.backbone, "image_size": pre.image_size, "resize_size": pre.resize_size,
           "interpolation": pre.interpolation, "cuda": device is not None,
           "gpu": torch.cuda.get_device_name(device) if device is not None else None,
           "cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
           "torch": torch.__version__, "torchvision": torchvision.__version__, "dali": dali,
           "batch_size": args.batch, "repeats": args.repeats, "datasets": {}}
    for name in args.datasets.split(","):
        start = time.perf_counter()
        out["datasets"][name] = measure(name, args, bb, device, dali_skip)
        out["datasets"][name]["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
