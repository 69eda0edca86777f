"""Reading a feature matrix larger than memory by blocks of rows, under a memory cap.

The rows come from any array-like ``X`` with ``X.shape == (n, d)``, a ``dtype`` and
``X[a:b]`` giving an in-memory array (an ``h5py.Dataset``, a ``np.memmap``, a lazy store
reader). Nothing here indexes ``X`` with anything but a slice: subsets of rows (training,
validation, labelled) are boolean masks held in memory and applied to each block.

The cap, ``max_memory`` bytes, bounds what a block costs while it is worked on: the
block read from ``X`` and the working copies made of it (a float64 copy, a masked copy,
standardised rows, unit rows), counted as :data:`WORKING_COPIES` copies of the block as
read. It does not count what the fit keeps whatever the block size: O(d^2) statistics
(a d x d covariance, its eigenvectors), O(n) labels and masks, and the model itself.
Without a cap, :func:`default_max_memory` takes a quarter of the memory available now
(psutil), or 1 GiB where psutil is not installed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

DEFAULT_FRACTION = 0.25  # of the memory available when the fit starts
FALLBACK_MAX_MEMORY = 1 << 30  # without psutil
MIN_MAX_MEMORY = 1 << 24  # a default cap never below 16 MiB
WORKING_COPIES = 6  # a block's cost while worked on, in copies of the block as read


def default_max_memory() -> int:
    """The cap without one given: a quarter of the memory available (psutil), else 1 GiB."""
    try:
        import psutil
    except ImportError:
        return FALLBACK_MAX_MEMORY
    return max(MIN_MAX_MEMORY, int(psutil.virtual_memory().available * DEFAULT_FRACTION))


def resolve_max_memory(max_memory: int | None) -> int:
    if max_memory is None:
        return default_max_memory()
    if int(max_memory) <= 0:
        raise ValueError(f"max_memory must be a positive number of bytes, not {max_memory!r}")
    return int(max_memory)


def rows_per_block(max_memory: int, d: int, itemsize: int = 4, *, copies: float = WORKING_COPIES) -> int:
    """The most rows of ``d`` features (``itemsize`` bytes each) whose block, with
    ``copies`` copies of it, fits in ``max_memory`` bytes; at least one row."""
    return max(1, int(max_memory // (copies * max(1, d) * itemsize)))


@dataclass
class Tally:
    """What was read: blocks, rows, and the largest block (rows)."""

    blocks: int = 0
    rows: int = 0
    largest: int = 0

    def add(self, rows: int) -> None:
        self.blocks += 1
        self.rows += rows
        self.largest = max(self.largest, rows)


def blocks(X, rows_per_block: int, *, tally: Tally | None = None):
    """``(start, rows)`` for consecutive blocks of at most ``rows_per_block`` rows of ``X``,
    each read with one slice ``X[start:start + rows_per_block]``."""
    n = X.shape[0]
    for start in range(0, n, max(1, int(rows_per_block))):
        rows = np.asarray(X[start:start + rows_per_block])
        if tally is not None:
            tally.add(len(rows))
        yield start, rows


def masked_blocks(X, rows_per_block: int, mask: np.ndarray, *, tally: Tally | None = None):
    """``(offset, rows)``: the rows of each block that ``mask`` selects, in order, and
    how many selected rows came before them; blocks that select none are not read."""
    offset, n, step = 0, X.shape[0], max(1, int(rows_per_block))
    for start in range(0, n, step):
        m = mask[start:start + step]
        count = int(np.count_nonzero(m))
        if not count:
            continue
        rows = np.asarray(X[start:start + step])
        if tally is not None:
            tally.add(len(rows))
        yield offset, (rows if count == len(rows) else rows[m])
        offset += count


def gathered(X, size: int, mask: np.ndarray, *, tally: Tally | None = None):
    """``(offset, rows)`` like :func:`masked_blocks`, but ``size`` selected rows at a time
    (the last fewer), gathered over as many blocks of ``size`` rows as it takes."""
    pieces, held, offset = [], 0, 0
    for _, rows in masked_blocks(X, size, mask, tally=tally):
        pieces.append(rows)
        held += len(rows)
        while held >= size:
            joined = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
            yield offset, joined[:size]
            offset += size
            pieces, held = ([joined[size:]] if held > size else []), held - size
    if held:
        yield offset, pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


@dataclass
class Job:
    """One streamed fit: the rows, the labels and the split, as masks over all rows."""

    X: object  # the lazy (n, d) rows
    y: np.ndarray  # (n,) labels; negative: unlabelled, not used
    labelled: np.ndarray  # (n,) bool: the rows the final model is fitted on
    train: np.ndarray  # (n,) bool: the rows the sweep fits on (all labelled rows without a split)
    val: np.ndarray | None  # (n,) bool: the validation rows; None: no split, the default candidate
    head: object  # the unfitted in-memory head: its parameters, candidates, default
    max_memory: int
    device: torch.device
    tally: Tally = field(default_factory=Tally)

    @property
    def d(self) -> int:
        return int(self.X.shape[1])

    def rows_per_block(self, copies: float = WORKING_COPIES) -> int:
        return rows_per_block(self.max_memory, self.d, np.dtype(self.X.dtype).itemsize, copies=copies)

    def masked(self, mask: np.ndarray, copies: float = WORKING_COPIES):
        return masked_blocks(self.X, self.rows_per_block(copies), mask, tally=self.tally)


def choose(scores: list[tuple[float, float]]) -> int:
    """The best candidate as :class:`~featx.heads.base.SweptHead` picks it: highest
    validation accuracy, then lowest log loss, then the first."""
    return max(range(len(scores)), key=lambda i: (scores[i][0], -scores[i][1]))


def settle(head, job: Job, candidates: list[dict], scores, best: int):
    """Record on ``head`` what its in-memory fit records about the sweep."""
    head.classes_ = np.unique(job.y[job.labelled])
    head.n_features_in_ = job.d
    head.selected_on_validation_ = job.val is not None and len(candidates) > 1
    head.selection_ = "validation split" if job.val is not None else "none"  # out of core: no folds
    head.cv_ = None
    head.val_scores_ = ([{**p, "accuracy": a} for p, (a, _) in zip(candidates, scores)]
                        if scores is not None and len(candidates) > 1 else [])
    head.val_accuracy_ = None if scores is None else scores[best][0]
    head.best_params_ = candidates[best]
    head.temperature_ = getattr(head, "temperature_", 1.0)
    return head
