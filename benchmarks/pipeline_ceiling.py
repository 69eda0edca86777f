"""How close featx's data path comes to its decoding ceiling, with a network that costs nothing.

featx's whole data path (listing, reading, decoding in worker processes, handover,
batching, store commits and the store's write) runs with a model that pools the batch
and nothing more, so what is measured is everything but the network. It runs the way
each kind of runtime takes its input: ``uint8`` as OpenVINO's graph (featx's CPU
default), which normalises the decoded uint8 batch itself, so that the main process
only joins the slices; ``float`` as the frozen graph and eager torch, for which the main
process normalises the batch into a float32 buffer first.
Its ceiling is the single-core decode rate of featx's own ``Preprocessing.decode``
(read, decode, resize, crop to the backbone's size), measured in this process on the
same files, times the number of workers. Each dataset's images are unpacked into a
temporary ImageFolder first (see extract_throughput.unpack).

For each dataset and each worker count, three repeats, interleaved, each into an empty
cache; medians are reported with every repeat.

    python benchmarks/pipeline_ceiling.py [--datasets cifar10-test,hymenoptera] [--workers 1,2]
        [--inputs uint8,float]

The process runs with the thread settings the ``featx`` command makes (passive waiting).

Prints JSON: ``featx_images_per_second``, ``ceiling_images_per_second`` and their ratio
``over_ceiling`` (target: at least 0.85).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

from featx.core import threads

threads.prepare()  # the thread settings the featx command makes, before torch loads

import torch  # noqa: E402
from extract_throughput import decode_seconds, unpack  # noqa: E402
from torch import nn  # noqa: E402

from featx.backbones import Backbone, load_backbone  # noqa: E402
from featx.extraction import extract, forward  # noqa: E402


class Pool(nn.Module):
    """The batch pooled per channel, over every 16th pixel: a network that costs nothing."""

    def forward(self, x):
        return x[:, :, ::16, ::16].float().mean(dim=(2, 3))


def pool_uint8(x):
    """The free network as a graph that normalises its input itself: the uint8 (N, H, W, 3) batch pooled."""
    return {"embedding": x[:, ::16, ::16, :].float().mean(dim=(1, 2))}


pool_uint8.normalises = True  # featx's Staging then hands over the decoded batch, as to OpenVINO's graph


def taking(kind: str):
    """Run the free network as a runtime taking ``kind`` input ("uint8" or "float", see the
    module's doc); "float": eagerly, on the batch the main process normalised."""
    if kind == "float":
        return contextlib.nullcontext()
    return mock.patch.object(forward, "load", lambda *args, **kwargs: pool_uint8)


def free_backbone(like: str) -> Backbone:
    """The free network with the preprocessing of ``like``: the images are decoded and
    batched exactly as for it."""
    pre = load_backbone(like, pretrained=False).preprocessing
    return Backbone(name="free", architecture="free", model=Pool(), preprocessing=pre,
                    weights="none", weights_sha256="")


def featx_rate(folder: Path, bb: Backbone, workers: int, cache: Path, kind: str) -> float:
    """Images/s of ``featx.extract`` into an empty cache, listing and store write included."""
    with taking(kind):
        start = time.perf_counter()
        r = extract(str(folder), bb, cache, workers=workers, device="cpu", precision="fp32")
        seconds = time.perf_counter() - start
    assert r.embedded == r.rows, r
    return r.rows / seconds


def measure(name: str, tmp: Path, args) -> dict:
    folder = unpack(name, tmp / name, args.limit or None)
    files = sorted(folder.rglob("*.jp*g"))
    bb = free_backbone(args.like)
    per_core = 1 / decode_seconds(folder, bb.preprocessing, args.repeats)
    runs: dict[tuple, list[float]] = {(k, w): [] for k in args.inputs for w in args.workers}
    for rep in range(args.repeats):  # interleaved: drift hits every contender alike
        for k, w in runs:
            runs[k, w].append(featx_rate(folder, bb, w, tmp / f"cache-{k}-{w}-{rep}", k))
    row = {"images": len(files), "decode_images_per_second_one_core": round(per_core, 1), "inputs": {}}
    for (k, w), rates in runs.items():
        featx, ceiling = statistics.median(rates), per_core * w
        row["inputs"].setdefault(k, {})[str(w)] = {"featx_images_per_second": round(featx, 1),
                                  "repeats": [round(r, 1) for r in rates],
                                  "ceiling_images_per_second": round(ceiling, 1),
                                  "over_ceiling": round(featx / ceiling, 3)}
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", default="cifar10-test,hymenoptera")
    p.add_argument("--workers", default="1,2", type=lambda s: [int(w) for w in s.split(",")])
    p.add_argument("--inputs", default="uint8,float", type=lambda s: s.split(","),
                   help="as which runtime takes its input: uint8 (OpenVINO's graph), float (the others)")
    p.add_argument("--like", default="efficientnet_lite0", help="the backbone whose preprocessing is used")
    p.add_argument("--limit", type=int, default=0, help="images per dataset, a seeded draw (0: all)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    out = {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
           "torch": torch.__version__, "datasets": {}}
    for name in args.datasets.split(","):
        with tempfile.TemporaryDirectory(prefix="featx-ceiling-") as tmp:
            out["datasets"][name] = measure(name, Path(tmp), args)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
