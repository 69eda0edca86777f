"""A source's items held as compact arrays, not one Python object per image.

A listing of millions of images costs what its bytes cost: each key as UTF-8 bytes
(``surrogateescape`` for names that are not UTF-8), each stamp as bytes, each label as
an int32. Indexing or iterating it gives :class:`~.base.Item` records made on demand, so
code that walks ``source.items`` works unchanged; code that handles every image at once
(the extraction's bookkeeping) uses the arrays.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Item:
    key: str  # stable relative path, '/'-separated; unique within the source
    label: int  # index into the source's classes, -1 when unlabelled
    stamp: str  # changes when the file changes (size and modification time)


def encode(strings) -> np.ndarray:
    """Strings as fixed-width UTF-8 bytes (``surrogateescape``), the form listings and
    stores keep keys in."""
    if isinstance(strings, np.ndarray) and strings.dtype.kind == "S":
        return strings
    arr = np.asarray(list(strings) if not isinstance(strings, np.ndarray) else strings, dtype=object)
    if arr.size == 0:
        return np.zeros(0, dtype="S1")
    try:
        return arr.astype("S")  # a C-level cast when every string is ASCII, the common case
    except UnicodeEncodeError:
        return np.char.encode(arr.astype(str), "utf-8", "surrogateescape")


def decode(arr: np.ndarray) -> np.ndarray:
    """Fixed-width UTF-8 bytes back to strings."""
    if arr.size == 0:
        return np.zeros(0, dtype=str)
    try:
        return arr.astype(str)
    except UnicodeDecodeError:
        return np.char.decode(arr, "utf-8", "surrogateescape")


def joined(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Byte-string arrays one after another (widened to the widest)."""
    return np.concatenate(parts) if parts else np.zeros(0, "S1")


def text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


class Listing(Sequence):
    """Items as arrays: ``keys`` and ``stamps`` (bytes), ``labels`` (int32)."""

    __slots__ = ("keys", "stamps", "labels")

    def __init__(self, keys: np.ndarray, stamps: np.ndarray, labels: np.ndarray):
        self.keys, self.stamps = encode(keys), encode(stamps)
        self.labels = np.asarray(labels, dtype=np.int32)
        if not len(self.keys) == len(self.stamps) == len(self.labels):
            raise ValueError("keys, stamps and labels differ in length")

    @classmethod
    def of(cls, items: Iterable) -> Listing:
        """From :class:`~.base.Item` records (or another listing)."""
        if isinstance(items, Listing):
            return items
        items = list(items)
        return cls(encode([it.key for it in items]), encode([it.stamp for it in items]),
                   np.array([it.label for it in items], dtype=np.int32))

    @classmethod
    def empty(cls) -> Listing:
        return cls(np.zeros(0, "S1"), np.zeros(0, "S1"), np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Listing(self.keys[i], self.stamps[i], self.labels[i])
        return Item(text(self.keys[i]), int(self.labels[i]), text(self.stamps[i]))

    def __iter__(self) -> Iterator:
        for start in range(0, len(self), 4096):  # strings decoded a block at a time
            stop = start + 4096
            for k, lab, s in zip(decode(self.keys[start:stop]).tolist(), self.labels[start:stop].tolist(),
                                 decode(self.stamps[start:stop]).tolist()):
                yield Item(k, lab, s)

    def __eq__(self, other) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, Listing):
            other = Listing.of(other)
        return (isinstance(other, Listing) and np.array_equal(self.keys, other.keys)
                and np.array_equal(self.stamps, other.stamps) and np.array_equal(self.labels, other.labels))

    def __repr__(self) -> str:
        return f"Listing({len(self)} items)"

    def take(self, rows) -> Listing:
        """The items at positions ``rows`` (an index array or a boolean mask)."""
        return Listing(self.keys[rows], self.stamps[rows], self.labels[rows])

    def sorted(self) -> Listing:
        """In key order (byte order of UTF-8, which is code point order)."""
        return self.take(np.argsort(self.keys, kind="stable"))

    def nbytes(self) -> int:
        return self.keys.nbytes + self.stamps.nbytes + self.labels.nbytes


def concat(parts: Sequence[Listing]) -> Listing:
    if not parts:
        return Listing.empty()
    return Listing(np.concatenate([p.keys for p in parts]), np.concatenate([p.stamps for p in parts]),
                   np.concatenate([p.labels for p in parts]))
