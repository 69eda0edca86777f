"""The network as an extraction runs it: a staged batch in, its features on their way to the host out.

Eager under autocast, or a graph: on CUDA the AOTInductor-compiled network
(:mod:`.compiled`), on the CPU OpenVINO's (:mod:`.openvino_graph`) or the frozen
TorchScript one (:mod:`.frozen`), as the plan settled (:mod:`.runtimes`). The input batch is
normalised into a float32 buffer by :class:`~.staging.Staging`, unless the graph
normalises it itself (a run with ``normalises = True``, OpenVINO's): it then gets the
uint8 NHWC batch as the workers decoded it.
"""
from __future__ import annotations

import contextlib

import torch

from ..core.devices import autocast
from .frozen import graph_cache
from .plan import Plan
from .runtimes import load
from .staging import Returning, Staged, Staging


class Forward:
    def __init__(self, plan: Plan):
        bb, dev = plan.backbone, plan.device
        bb.model.to(dev, memory_format=torch.channels_last)  # in place; the eager path runs it
        run = load(plan.runtime, bb, plan.precision, dev, plan.batch_size, graph_cache(plan.path.parent))
        # eager under autocast, or a graph with its own precision
        self.context = autocast(dev, plan.precision) if run is None else contextlib.nullcontext()
        self.run = run or bb.embed
        self.layers = plan.layers
        self.staging = Staging(plan.preprocessing, dev, normalise=not getattr(self.run, "normalises", False))

    def stage(self, slices: list[torch.Tensor]) -> Staged:
        return self.staging.stage(slices)

    def __call__(self, staged: Staged) -> Returning:
        """Run the network on a staged batch; its features start back to the host."""
        x = self.staging.batch(staged)
        with self.context:
            out = self.run(x)
        return self.staging.send_back({n: out[n] for n in self.layers})
