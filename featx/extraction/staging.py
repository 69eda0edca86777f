"""Batches on their way to the network and features on their way back.

In: a batch arrives as uint8 slices (one per decoding process's share, see
:mod:`.loader`). A runtime that normalises inside its own graph (OpenVINO's, see
:mod:`.openvino_graph`) takes them as they are, uint8 HWC: a batch of one slice is the
workers' shared memory itself, more slices are joined into a reused uint8 buffer, and the
main process touches no pixel otherwise. For the other runtimes they are normalised
straight from the workers' shared memory into one contiguous float32 buffer that is
reused batch after batch: no joined copy and no fresh 38 MB allocation per batch (at
224 px, batch 64), whose page faults cost the main process more than decoding did. The
buffer is NCHW, not channels-last: a
per-channel scale over a channels-last tensor does not vectorise (6 times slower here),
and the network's first convolution takes either layout at the same speed. On CUDA the
slices arrive in pinned memory; their copy to the GPU is issued on a side stream as soon
as the batch is ready, so it overlaps the network's work on the batch before; the
normalisation runs on the GPU.

Out: on CUDA a batch's features are copied to pinned host memory without waiting; the
loop reads them (:meth:`Staging.host`) one batch later, while the GPU works on the next.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.preprocess import Preprocessing


@dataclass
class Staged:
    """A batch's slices, on (or on their way to) the device."""

    slices: list[torch.Tensor]
    ready: torch.cuda.Event | None = None  # CUDA: recorded on the side stream after the copies


@dataclass
class Returning:
    """A batch's features, on (or on their way to) the host."""

    features: dict[str, torch.Tensor]
    ready: torch.cuda.Event | None = None  # CUDA: recorded after the copies to pinned memory


class Staging:
    """uint8 slices in, one batch on ``dev`` out: normalised float32 NCHW, or with
    ``normalise=False`` (a runtime that normalises in its graph) uint8 NHWC as decoded."""

    def __init__(self, pre: Preprocessing, dev: torch.device, normalise: bool = True):
        self.pre, self.dev, self.normalise = pre, dev, normalise
        self.affine = pre.affine(dev)  # once: each copy to a GPU would wait for its queue
        self.stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        self.buffer: torch.Tensor | None = None

    def stage(self, slices: list[torch.Tensor]) -> Staged:
        """Start moving ``slices`` to the device: on CUDA a side stream copies them."""
        if self.stream is None or all(s.device == self.dev for s in slices):
            return Staged(slices)
        with torch.cuda.stream(self.stream):
            on_device = [s.to(self.dev, non_blocking=True) for s in slices]
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return Staged(on_device, ready)

    def batch(self, staged: Staged) -> torch.Tensor:
        """The staged slices as one normalised batch on the device, in the reused buffer."""
        if staged.ready is not None:
            main = torch.cuda.current_stream(self.dev)
            main.wait_event(staged.ready)
            for s in staged.slices:  # allocated on the side stream, used on this one
                s.record_stream(main)
        if not self.normalise:
            return self._joined([s.permute(0, 2, 3, 1) for s in staged.slices])  # NCHW views of HWC
        start, n = 0, sum(len(s) for s in staged.slices)
        self._reserve(n, staged.slices[0].shape[1:], torch.float32)
        for s in staged.slices:
            self.pre.normalize(s, out=self.buffer[start:start + len(s)], affine=self.affine)
            start += len(s)
        return self.buffer[:n]

    def _joined(self, slices: list[torch.Tensor]) -> torch.Tensor:
        if len(slices) == 1 and slices[0].is_contiguous():
            return slices[0]
        n = sum(len(s) for s in slices)
        self._reserve(n, slices[0].shape[1:], slices[0].dtype)
        return torch.cat(slices, out=self.buffer[:n])

    def _reserve(self, n: int, size: torch.Size, dtype: torch.dtype) -> None:
        b = self.buffer
        if b is None or len(b) < n or b.shape[1:] != size or b.dtype != dtype:
            self.buffer = torch.empty((n, *size), dtype=dtype, device=self.dev)

    def send_back(self, features: dict[str, torch.Tensor]) -> Returning:
        """Start copying ``features`` (float32) to the host; on CUDA into pinned memory, not waiting."""
        if self.dev.type != "cuda":  # a network that returns a view of its input (pixels) is copied
            return Returning({n: t.float().clone() if self._aliases(t) else t.float()
                              for n, t in features.items()})
        host = {}
        for n, t in features.items():
            host[n] = torch.empty(t.shape, dtype=torch.float32, pin_memory=True)
            host[n].copy_(t.float(), non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.dev))
        return Returning(host, ready)

    def _aliases(self, t: torch.Tensor) -> bool:
        if self.buffer is None:
            return False
        return t.untyped_storage().data_ptr() == self.buffer.untyped_storage().data_ptr()

    @staticmethod
    def host(returning: Returning) -> dict[str, np.ndarray]:
        """The features as numpy arrays, once their copy has arrived."""
        if returning.ready is not None:
            returning.ready.synchronize()
        return {n: t.numpy() for n, t in returning.features.items()}
