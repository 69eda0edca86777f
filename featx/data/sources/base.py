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


@dataclass(frozen=True)
class Item:
    key: str  # stable relative path, '/'-separated; unique within the source
    label: int  # index into the source's classes, -1 when unlabelled
    stamp: str  # changes when the file changes (size and modification time)


@dataclass
class Source:
    """Base class: ``spec`` identifies the source, ``name`` is a short readable label."""

    spec: str
    name: str
    classes: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    # A store of an accumulating source keeps the rows of images it no longer lists
    # (see FilesSource); any other store holds exactly what its source lists.
    accumulates: ClassVar[bool] = False

    def read(self, item: Item) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def where(self, key: str) -> str:
        """Where the file of ``key`` is, as a user would find it (for messages)."""
        return key

    def __len__(self) -> int:
        return len(self.items)


def stamp(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


def label_items(entries: list[tuple[str, str]]) -> tuple[list[str], list[Item]]:
    """(key, stamp) pairs -> classes from each key's first folder, and sorted items."""
    entries = sorted(entries)
    classes = sorted({k.split("/", 1)[0] for k, _ in entries if "/" in k})
    index = {c: i for i, c in enumerate(classes)}
    items = [Item(k, index[k.split("/", 1)[0]] if "/" in k else -1, s) for k, s in entries]
    return classes, items

