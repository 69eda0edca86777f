"""Staging: the decoded slices of a batch as the network's input."""
from __future__ import annotations

import torch

from featx.data.preprocess import Preprocessing
from featx.extraction.staging import Staging

CPU = torch.device("cpu")


def _slabs(sizes, seed=0):
    """HWC uint8 slabs as the decoding processes fill them, and their NCHW views (what the loader yields)."""
    g = torch.Generator().manual_seed(seed)
    hwc = [torch.randint(0, 256, (n, 8, 8, 3), dtype=torch.uint8, generator=g) for n in sizes]
    return hwc, [s.permute(0, 3, 1, 2) for s in hwc]


def test_a_graph_that_normalises_gets_one_slice_without_a_copy():
    hwc, views = _slabs([5])
    staging = Staging(Preprocessing(image_size=8), CPU, normalise=False)
    x = staging.batch(staging.stage(views))
    assert x.dtype == torch.uint8 and x.shape == (5, 8, 8, 3)
    assert x.data_ptr() == hwc[0].data_ptr()  # the workers' shared memory itself


def test_a_graph_that_normalises_gets_slices_joined_in_order_in_a_reused_buffer():
    staging = Staging(Preprocessing(image_size=8), CPU, normalise=False)
    hwc, views = _slabs([3, 4, 2])
    first = staging.batch(staging.stage(views))
    assert torch.equal(first, torch.cat(hwc))
    hwc, views = _slabs([2, 2], seed=1)
    second = staging.batch(staging.stage(views))
    assert torch.equal(second, torch.cat(hwc)) and second.data_ptr() == first.data_ptr()


def test_other_runtimes_get_the_normalised_float_batch():
    pre = Preprocessing(image_size=8)
    staging = Staging(pre, CPU)
    hwc, views = _slabs([3, 2])
    x = staging.batch(staging.stage(views))
    assert x.dtype == torch.float32 and x.shape == (5, 3, 8, 8)
    assert torch.equal(x, pre.normalize(torch.cat(hwc).permute(0, 3, 1, 2)))
