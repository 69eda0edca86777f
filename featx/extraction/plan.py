"""What one extraction will do, decided before anything runs: the source, the backbone
and how it runs, the store it writes, and which images still need the network.

Only images whose (key, stamp) is not already in the store or in the journal of an
interrupted run are decoded and embedded. Batches are formed from that to-do list in
source order and committed whole, so a resumed run forms the same batches as an
uninterrupted one and produces the same features.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..backbones import Backbone, load_backbone
from ..core import distributed
from ..core.devices import native_bf16, resolve_device, resolve_precision
from ..core.errors import ParameterError, SourceError
from ..core.hashing import digest
from ..core.names import DEFAULT_LAYER
from ..data.preprocess import Preprocessing
from ..data.sources import Source, open_source
from ..data.sources.listing import Listing
from ..store import store_path_for
from .frozen import graph_cache
from .loader import default_batch_size, default_workers
from .runtimes import AOTI, EAGER, FROZEN, OPENVINO, choose, settle


@dataclass
class Plan:
    source: Source
    backbone: Backbone
    preprocessing: Preprocessing  # the backbone's, with the chosen decoder
    device: torch.device
    precision: str  # fp32, bf16 or fp16
    runtime: str  # eager, openvino, torchscript-frozen or aotinductor (see .runtimes)
    batch_size: int
    workers: int  # decoding processes
    on_error: str  # skip or fail
    commit_rows: int  # images per journal commit...
    commit_seconds: float  # ... or this long since the last one, whichever comes first
    path: Path  # the store
    manifest: str  # digest of the source listing

    @property
    def layers(self) -> list[str]:
        return [DEFAULT_LAYER, *self.backbone.layers]

    def wanted(self) -> dict:
        """The provenance the store must have: what determines its features."""
        return {"backbone": identity(self.backbone, self.preprocessing), "precision": self.precision,
                "runtime": self.runtime, "source": self.source.spec}


def make_plan(data: str | os.PathLike | Source, backbone: str | Backbone, cache_dir: str | os.PathLike, *,
              weights: str | None, layers: tuple[str, ...], image_size: int | None, batch_size: int | None,
              precision: str, device: str, decode: str, workers: int | None, commit_rows: int,
              commit_seconds: float, on_error: str) -> Plan:
    """Check every setting and decide everything an extraction needs (see featx.extract)."""
    source = data if isinstance(data, Source) else open_source(data)
    if not source.items:
        raise SourceError(f"{source.spec.split(':', 1)[1] or source.spec}: no images found "
                          f"({len(source.problems)} other files)")
    if isinstance(backbone, str):
        backbone = load_backbone(backbone, weights=weights, layers=layers, image_size=image_size)
    w = distributed.world()
    dev = resolve_device(device)
    if dev.type == "cuda" and w.size > 1:  # under torchrun: the GPU of this process's local rank
        dev = torch.device("cuda", w.local_rank)
    prec = resolve_precision(precision, dev)
    if decode not in ("auto", "cpu", "gpu"):
        raise ParameterError("decode", decode, "choose auto, cpu or gpu")
    if decode == "auto":  # nvJPEG on a GPU: 2.6x CPU decoding on the H200 (benchmarks/RESULTS.md)
        decode = "gpu" if dev.type == "cuda" else "cpu"
    if decode == "gpu" and dev.type != "cuda":
        raise ParameterError("decode", decode, "decoding on the GPU needs a CUDA device (choose cpu)")
    if batch_size is None:  # under torchrun, the first process's: all must form the same batches
        batch_size = default_batch_size(dev, backbone, prec)
        if w.size > 1:
            batch_size = distributed.broadcast(batch_size)
    if batch_size < 1:
        raise ParameterError("batch_size", batch_size, "must be at least 1")
    if on_error not in ("skip", "fail"):
        raise ParameterError("on_error", on_error, "choose skip or fail")
    if on_error == "fail" and source.problems:
        key, reason = source.problems[0]
        raise SourceError(f"{source.where(key)}: {reason}")
    pre = replace(backbone.preprocessing, decoder=decode)
    rt = choose(dev, prec, backbone, source.accumulates, native_bf16())
    if rt != EAGER:  # its graph built now if it is not cached: the store names what runs
        rt = settle(rt, backbone, prec, dev, batch_size, graph_cache(cache_dir))
    key = store_key(source, backbone, prec, pre, rt)
    return Plan(source, backbone, pre, dev, prec, rt, batch_size,
                default_workers(dev) if workers is None else workers, on_error, commit_rows, commit_seconds,
                store_path_for(cache_dir, source.name, backbone.architecture, key), source_manifest(source))


def identity(backbone: Backbone, pre: Preprocessing) -> dict:
    """The backbone's identity with the preprocessing an extraction actually uses."""
    return {**backbone.identity(), "preprocessing": pre.to_dict()}


def store_key(source: Source, backbone: Backbone, precision: str, pre: Preprocessing | None = None,
              runtime: str = "eager") -> str:
    ident = identity(backbone, pre or backbone.preprocessing)
    ident.pop("name")  # the same network and weights under another name share a store
    ident.pop("weights")
    key = {"source": source.spec, "backbone": ident, "precision": precision}
    if runtime != EAGER:  # other kernels: features not bit-identical to eager ones
        key["runtime"] = {FROZEN: "frozen", OPENVINO: "openvino", AOTI: "aotinductor"}[runtime]
    return digest(key)


def source_manifest(source: Source) -> str:
    """A digest of the source listing, from its arrays: what a store matches when nothing changed."""
    items = Listing.of(source.items)
    h = hashlib.sha256(digest({"source": source.spec, "classes": source.classes,
                               "problems": source.problems}).encode())
    for a in (items.keys, items.stamps, items.labels):
        h.update(str(a.dtype).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def shard(todo: Listing, batch_size: int, w: distributed.World) -> Listing:
    """This process's share of ``todo``: every ``w.size``-th batch of it, starting at its
    rank. The batches are those a single process would form, so each image is embedded
    in the same company and gets the same features."""
    if w.size == 1:
        return todo
    starts = np.arange(w.rank * batch_size, len(todo), w.size * batch_size)
    rows = (starts[:, None] + np.arange(batch_size)[None, :]).ravel()
    return todo.take(rows[rows < len(todo)])
