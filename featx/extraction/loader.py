"""Reading and decoding images in DataLoader workers, handed over in slices of a batch.

Workers hand over slices of a batch, so that many workers share even one batch and the
first batch is ready sooner: each slice's images (HWC, as PIL lays them out: copied
without a transposition) go into one of a ring of shared-memory slabs allocated once
(:func:`_slabs`), and only the slab's number travels. The main process makes the
slices of each batch the network's input (:mod:`.staging`). On CUDA a slice is one
tensor (in shared memory, as the DataLoader sends it), which the DataLoader copies to
pinned memory.
"""
from __future__ import annotations

import functools
import hashlib
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

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


def default_batch_size(dev: torch.device, backbone=None, precision: str = "fp32") -> int:
    """64 on the CPU (larger batches are no faster there). On CUDA, where small batches
    leave the GPU idle between kernel launches, the most that :func:`batch_for_memory`
    allows the network (256 when no network is given)."""
    if dev.type != "cuda":
        return 64
    if backbone is None:
        return 256
    total = torch.cuda.get_device_properties(dev).total_memory
    return batch_for_memory(_bytes_per_image(backbone, dev, precision), total)


def batch_for_memory(bytes_per_image: float, total: int, smallest: int = 64, largest: int = 1024) -> int:
    """The largest power of two from ``smallest`` to ``largest`` whose activations take at
    most an eighth of the device's ``total`` memory (of its total, not what is free now,
    so that a resumed run forms the same batches on the same kind of GPU)."""
    n = largest
    while n > smallest and n * bytes_per_image > total / 8:
        n //= 2
    return n


def _bytes_per_image(backbone, dev: torch.device, precision: str, probe: int = 16) -> float:
    """Peak memory of a forward pass per image, measured on a batch of ``probe`` images."""
    from ..core.devices import autocast

    size = backbone.preprocessing.image_size
    backbone.model.to(dev)
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode(), autocast(dev, precision):
        backbone.embed(torch.zeros(probe, 3, size, size, device=dev))
    return (torch.cuda.max_memory_allocated(dev) - base) / probe


class DecodedImages(Dataset):
    """Reads and decodes one image per call; runs inside DataLoader workers. Each sample
    is (index, uint8 HWC array | JPEG bytes for the GPU | None, failure reason, SHA-256)."""

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
            return i, self.pre.decode_array(data), "", sha
        except ImageDecodeError as exc:
            return i, None, str(exc), sha


def _collate(samples, slabs: list[torch.Tensor] | None = None, part: int = 0):
    """(index and hash of each decoded sample, failed samples, the decoded images (HWC)
    stacked, samples still as JPEG bytes). With ``slabs``, the images go into the slab of
    this slice, named by its number, instead of a new shared-memory tensor."""
    images = [s[1] for s in samples if isinstance(s[1], np.ndarray)]
    ok = [(s[0], s[3]) for s in samples if isinstance(s[1], np.ndarray)]
    batch = None
    if images and slabs is not None:
        k = samples[0][0] // part % len(slabs)
        np.stack(images, out=slabs[k][:len(images)].numpy())
        batch = (k, len(images))
    elif images:
        batch = torch.empty((len(images), *images[0].shape), dtype=torch.uint8)
        if get_worker_info() is not None:  # as default_collate: made in shared memory, sent without a copy
            batch.share_memory_()
        np.stack(images, out=batch.numpy())
    raw = [s for s in samples if isinstance(s[1], bytes)]
    return ok, [s for s in samples if s[1] is None], batch, raw


def batches(source: Source, todo: list[Item], pre: Preprocessing, batch_size: int, workers: int,
            dev: torch.device):
    """Whole batches of ``todo`` in order (see :func:`_whole_batches`); on CUDA the
    slices come in pinned memory, ready for a non-blocking copy."""
    part = batch_size // 8 if batch_size % 8 == 0 else batch_size
    group, workers = batch_size // part, min(workers, -(-len(todo) // part))
    # enough slices in flight for the next two batches to decode while one computes
    prefetch = max(2, -(-2 * group // workers)) if workers else None
    slabs = _slabs(prefetch * workers + group + 2, part, pre.image_size) if workers and dev.type == "cpu" \
        else None
    loader = DataLoader(
        DecodedImages(source, todo, pre), batch_size=part, shuffle=False,
        collate_fn=functools.partial(_collate, slabs=slabs, part=part), num_workers=workers,
        pin_memory=dev.type == "cuda", multiprocessing_context=start_method(workers),
        prefetch_factor=prefetch,
    )
    return _whole_batches(iter(loader), group, slabs)  # iter(): the workers start now


def _slabs(count: int, part: int, size: int) -> list[torch.Tensor]:
    """``count`` shared-memory slabs of ``part`` HWC images, their pages touched once here.

    A new shared-memory tensor per slice (what ``default_collate`` makes in a worker) cost
    the workers a fifth of their time in page faults on CIFAR-10; slabs are reused in
    turn instead: slice ``n`` goes into slab ``n % count``. The DataLoader hands out at
    most ``prefetch x workers`` slices beyond the last one it returned, and the main
    process holds at most a batch's ``group`` slices until it has normalised them, so
    with ``count`` above their sum no slab is written while it is read."""
    return [torch.zeros((part, size, size, 3), dtype=torch.uint8).share_memory_() for _ in range(count)]


def _whole_batches(loader, group: int, slabs: list[torch.Tensor] | None = None):
    """Every ``group`` consecutive slices from ``loader`` as one batch (fewer at the end):
    (decoded (index, sha256) pairs, failed samples, the decoded images as a list of uint8
    NCHW slices (views of the workers' HWC images), samples left as JPEG bytes). The
    slices are not joined here: the network's input buffer takes them one by one (see
    :mod:`.staging`)."""
    slices = []

    def images(batch):
        if isinstance(batch, tuple):  # (slab, count)
            batch = slabs[batch[0]][:batch[1]]
        return batch.permute(0, 3, 1, 2)

    def join():
        return ([s for sl in slices for s in sl[0]], [s for sl in slices for s in sl[1]],
                [images(sl[2]) for sl in slices if sl[2] is not None], [s for sl in slices for s in sl[3]])

    for sl in loader:
        slices.append(sl)
        if len(slices) == group:
            yield join()
            slices = []
    if slices:
        yield join()
