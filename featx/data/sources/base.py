"""What every image source is: a deterministic list of :class:`Item` records (a stable
key, the label index, a cheap change stamp) and a way to read any item's bytes on
demand, so DataLoader workers can share it. Files that are present but cannot be used
(a non-image extension, an unsafe tar member, a CSV row naming a missing file) are
listed in ``problems`` with a one-line reason instead of stopping the run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .listing import Item, Listing, text


@dataclass
class Source:
    """Base class: ``spec`` identifies the source, ``name`` is a short readable label."""

    spec: str
    name: str
    classes: list[str] = field(default_factory=list)
    items: Listing = field(default_factory=Listing.empty)  # list[Item] is accepted and converted
    problems: list[tuple[str, str]] = field(default_factory=list)
    # A store of an accumulating source keeps the rows of images it no longer lists
    # (see FilesSource); any other store holds exactly what its source lists.
    accumulates: ClassVar[bool] = False

    def __setattr__(self, name, value):
        if name == "items" and not isinstance(value, Listing):
            value = Listing.of(value)
        super().__setattr__(name, value)

    def read(self, item: Item) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def where(self, key: str) -> str:
        """Where the file of ``key`` is, as a user would find it (for messages)."""
        return key

    def __len__(self) -> int:
        return len(self.items)


def stamp(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


def label_items(keys, stamps) -> tuple[list[str], Listing]:
    """Keys and stamps -> classes from each key's first folder, and the items in key order."""
    listing = Listing(keys, stamps, np.zeros(len(keys), np.int32)).sorted()
    keys = listing.keys
    slash = np.char.find(keys, b"/")
    folder = np.where(slash >= 0, _prefix(keys, slash), b"")
    names, labels = np.unique(folder, return_inverse=True)
    classes = [text(n) for n in names if n]
    shift = 1 if len(names) and names[0] == b"" else 0  # unlabelled rows sort first
    labels = labels.astype(np.int32) - shift
    labels[slash < 0] = -1
    return classes, Listing(keys, listing.stamps, labels)


def _prefix(keys: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each key cut to its length in ``lengths`` (negative: the whole key)."""
    out = np.empty(len(keys), dtype=keys.dtype)
    for n in np.unique(lengths):  # one vectorised cut per distinct folder-name length
        sel = lengths == n
        out[sel] = keys[sel].astype(f"S{max(int(n), 1)}") if n > 0 else b""
    return out
