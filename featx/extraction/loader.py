"""Reading and decoding images in DataLoader workers, handed over in slices of a batch.

Workers hand over slices of a batch as one shared-memory tensor each (``default_collate``
builds it in shared memory: not one segment per image, which costs more than decoding),
so that many workers share even one batch and the first batch is ready sooner; the
main process joins the slices into whole batches on the device.
"""
from __future__ import annotations

import hashlib
import os

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..core import distributed
from ..core.workers import start_method
from ..data.images import ImageDecodeError
from ..data.preprocess import Preprocessing
from ..data.sources import Item, Source
from .gpu_decode import gpu_ready

WORKER_MEMORY = 512 << 20  # what one decoding process may come to hold, prefetched batches included


def default_workers(dev: torch.device | None = None) -> int:
    """Decoding processes: one per core (at most 8) beside a CPU model, which needs the
    cores itself; all cores but two (the main process and its copy thread, at most 32)
    when a GPU runs the model and decoding is what limits the speed. Never more than
    half the available memory holds at ``WORKER_MEMORY`` each."""
    sharing = distributed.world().local_size  # a node's processes share its cores and memory
    cores = max(1, len(os.sched_getaffinity(0)) // sharing)
    wanted = max(1, min(32, cores - 2)) if dev is not None and dev.type == "cuda" else min(8, cores)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not on this system: trust the cores
        return wanted
    return max(1, min(wanted, available // 2 // WORKER_MEMORY // distributed.world().local_size))


def default_batch_size(dev: torch.device) -> int:
    """64 on the CPU (larger batches are no faster there); 256 on CUDA, where small
    batches leave the GPU idle between kernel launches."""
    return 256 if dev.type == "cuda" else 64


class DecodedImages(Dataset):
    """Reads and decodes one image per call; runs inside DataLoader workers. Each sample
    is (index, uint8 image | JPEG bytes for the GPU | None, failure reason, SHA-256)."""

    def __init__(self, source: Source, items: list[Item], pre: Preprocessing):
        self.source, self.items, self.pre = source, items, pre

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            data = self.source.read(self.items[i])
        except OSError as exc:
            return i, None, f"cannot read: {exc.strerror or exc}", ""
        sha = hashlib.sha256(data).hexdigest()
        if self.pre.decoder == "gpu" and gpu_ready(data):
            return i, data, "", sha  # decoded with its batch on the GPU
        try:
            return i, self.pre.decode(data), "", sha
        except ImageDecodeError as exc:
            return i, None, str(exc), sha


def _collate(samples):
    """(index and hash of each decoded sample, failed samples, the decoded images stacked,
    samples still as JPEG bytes)."""
    images = [s[1] for s in samples if isinstance(s[1], torch.Tensor)]
    ok = [(s[0], s[3]) for s in samples if isinstance(s[1], torch.Tensor)]
    batch = default_collate(images) if images else None
    raw = [s for s in samples if isinstance(s[1], bytes)]
    return ok, [s for s in samples if s[1] is None], batch, raw


def batches(source: Source, todo: list[Item], pre: Preprocessing, batch_size: int, workers: int,
            dev: torch.device):
    """Whole batches of ``todo`` in order, as (decoded (index, sha256) pairs, failed
    samples, the decoded images on ``dev`` or None, samples left as JPEG bytes)."""
    part = batch_size // 8 if batch_size % 8 == 0 else batch_size
    group, workers = batch_size // part, min(workers, -(-len(todo) // part))
    loader = DataLoader(
        DecodedImages(source, todo, pre), batch_size=part, shuffle=False, collate_fn=_collate,
        num_workers=workers, pin_memory=dev.type == "cuda", multiprocessing_context=start_method(workers),
        # enough slices in flight for the next two batches to decode while one computes
        prefetch_factor=max(2, -(-2 * group // workers)) if workers else None,
    )
    return _whole_batches(loader, group, dev)


def _whole_batches(loader, group: int, dev: torch.device):
    """Join every ``group`` consecutive slices from ``loader`` into one batch (fewer at
    the end), the images already on ``dev``."""
    slices = []

    def join():
        images = [b.to(dev, non_blocking=True) for _, _, b, _ in slices if b is not None]
        return ([s for sl in slices for s in sl[0]], [s for sl in slices for s in sl[1]],
                (torch.cat(images) if len(images) > 1 else images[0]) if images else None,
                [s for sl in slices for s in sl[3]])

    for sl in loader:
        slices.append(sl)
        if len(slices) == group:
            yield join()
            slices = []
    if slices:
        yield join()
