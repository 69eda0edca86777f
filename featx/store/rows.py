"""Rows in memory: what a batch group, a journal chunk or a store holds, with features
that may stay on disk until the rows are written (array-likes with ``shape`` and
``take(rows)``), so a store of any size is written block by block."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Rows:
    """Embedded rows (and skipped files) held in memory: what a batch group or store holds."""

    keys: np.ndarray  # str
    stamps: np.ndarray  # str
    sha256: np.ndarray  # str
    features: dict[str, np.ndarray]
    skipped_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    skipped_stamps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    skipped_reasons: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def concat(parts: list["Rows"], names: list[str], dims: dict[str, int]) -> "Rows":
        if len(parts) == 1:  # nothing to join: no copy of the features
            return parts[0]
        def cat(attr):
            arrays = [np.asarray(getattr(p, attr), dtype=str) for p in parts]
            return np.concatenate(arrays) if arrays else np.zeros(0, dtype=str)

        def stack(n):
            xs = [p.features[n] for p in parts]
            if not xs:
                return np.zeros((0, dims[n]), np.float32)
            return np.concatenate(xs) if all(isinstance(x, np.ndarray) for x in xs) else Stacked(xs)

        feats = {n: stack(n) for n in names}
        return Rows(cat("keys"), cat("stamps"), cat("sha256"), feats,
                    cat("skipped_keys"), cat("skipped_stamps"), cat("skipped_reasons"))



# --- features read only when written ----------------------------------------------------
# An extraction's rows come from the old store, the journal and this run; the new store
# is written from them block by block, so memory does not grow with the number of rows.
# Each array-like has ``shape`` and ``take(rows)`` (an int array, any order).

WRITE_BLOCK = 8192  # rows per block when a store is written from array-likes


def take(x, rows: np.ndarray) -> np.ndarray:
    return x[rows] if isinstance(x, np.ndarray) else x.take(rows)


class Stacked:
    """Array-likes one after another, as one."""

    def __init__(self, parts: list):
        self.parts = parts
        self.offsets = np.cumsum([0] + [p.shape[0] for p in parts])
        self.shape = (int(self.offsets[-1]), parts[0].shape[1])
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        rows = np.arange(self.shape[0])[index]
        return self.take(np.atleast_1d(rows)) if np.ndim(rows) else self.take(rows[None])[0]

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.shape[1]), np.float32)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for i in np.unique(which):
            mask = which == i
            out[mask] = take(self.parts[i], rows[mask] - self.offsets[i])
        return out


class Taken:
    """The rows ``sel`` of an array-like, in that order."""

    def __init__(self, x, sel: np.ndarray):
        self.x, self.sel = x, sel
        self.shape = (len(sel), x.shape[1])
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        return take(self.x, self.sel[index])

    def take(self, rows: np.ndarray) -> np.ndarray:
        return take(self.x, self.sel[rows])
