"""An uncompressed tar archive holding an ImageFolder tree, read in place."""
from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from ...core.errors import SourceError
from ..images import is_image_name
from .base import Item, Source, label_items
from .listing import encode

TAR_SPEC = re.compile(r"^(?P<path>.+?\.tar)(?::(?P<prefix>.*))?$")
BLOCK = 65536  # rows gathered as Python values before they become arrays


class Columns:
    """Rows appended one at a time, kept as numpy arrays a block at a time: listing a
    source of millions of members holds no Python object per member. ``dtypes`` maps each
    column's name to its dtype, ``"S"`` for strings (kept as UTF-8 bytes)."""

    def __init__(self, **dtypes):
        self.dtypes = dtypes
        self._rows: list[tuple] = []
        self._blocks: list[list[np.ndarray]] = []

    def add(self, *values) -> None:
        self._rows.append(values)
        if len(self._rows) >= BLOCK:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            cols = zip(*self._rows)
            self._blocks.append([encode(c) if t == "S" else np.array(c, dtype=t)
                                 for c, t in zip(cols, self.dtypes.values())])
            self._rows = []

    def arrays(self) -> dict[str, np.ndarray]:
        self._flush()
        out = {}
        for i, (name, t) in enumerate(self.dtypes.items()):
            parts = [b[i] for b in self._blocks]
            out[name] = np.concatenate(parts) if parts else np.zeros(0, "S1" if t == "S" else t)
        return out


def members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The archive's members one by one, without the list of every member that iterating
    a ``TarFile`` keeps."""
    while (m := tar.next()) is not None:
        yield m
        if len(tar.members) >= 1024:
            del tar.members[:]


def numbered(*parts) -> np.ndarray:
    """Stamps as bytes, joined from integer arrays and byte strings, each as wide as its
    longest: ``numbered(sizes, b":", mtimes)``."""
    out = np.zeros(len(next(p for p in parts if isinstance(p, np.ndarray))), "S1")
    for part in parts:
        out = np.char.add(out, part.astype("S") if isinstance(part, np.ndarray) else part)
    return out.astype(f"S{max(int(np.char.str_len(out).max(initial=1)), 1)}")


def find(keys: np.ndarray, key: str) -> int:
    """The row of ``key`` in ``keys`` (sorted UTF-8 bytes); KeyError when it is not there."""
    k = key.encode("utf-8", "surrogateescape")
    i = int(np.searchsorted(keys, k))
    if i == len(keys) or keys[i] != k:
        raise KeyError(key)
    return i


class TarSource(Source):
    """An uncompressed tar holding an ImageFolder tree, ``file.tar[:prefix]``.

    Members are read in place by offset: nothing is extracted to disk. Where each one is
    lies in arrays beside the listing (its keys, sorted), not in one object per member.
    """

    def __init__(self, path: str | os.PathLike, prefix: str = ""):
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"{path}: no such tar archive")
        prefix = prefix.strip("/")
        stem, leaf = path.name.removesuffix(".tar"), prefix.rsplit("/", 1)[-1]
        super().__init__(
            spec=f"tar:{path.resolve()}:{prefix}",
            name=stem if not leaf or stem.endswith(leaf) else f"{stem}-{leaf}",
        )
        self.path = path
        self._fh = None
        self._fh_pid = None
        self._base = f"{prefix}/" if prefix else ""
        try:
            cols, problems = self._scan(path)
        except tarfile.ReadError as exc:
            raise SourceError(f"{path}: not a readable uncompressed tar archive ({exc})") from None
        if not len(cols["key"]) and not problems:
            raise SourceError(f"{path}: no files under prefix {prefix!r}")
        # A name that occurs twice (an appended update) means its last copy, as when the
        # archive is unpacked: the first of each name in the reversed rows, in key order.
        keys, last = np.unique(cols["key"][::-1], return_index=True)
        rows = len(cols["key"]) - 1 - last
        # Member mtimes have one-second resolution and archives are often built with a
        # fixed one, so the archive's own size and mtime are part of every stamp; when the
        # archive is rewritten, unchanged members are recognised by their content hash.
        archive = os.stat(path)
        tail = f":{archive.st_size}:{archive.st_mtime_ns}".encode()
        stamps = numbered(cols["size"][rows], b":", cols["mtime"][rows], tail)
        self.classes, self.items = label_items(keys, stamps)  # keys are sorted: rows stay in step
        self._keys, self._offset, self._size = self.items.keys, cols["offset"][rows], cols["size"][rows]
        self.problems = problems

    def _scan(self, path: Path) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
        """The image members under the prefix, in archive order, and the problems."""
        base, problems = self._base, []
        cols = Columns(key="S", offset=np.int64, size=np.int64, mtime=np.int64)
        with tarfile.open(path, mode="r:") as tar:
            for m in members(tar):
                name = m.name.removeprefix("./")
                if base and not name.lstrip("/").startswith(base):  # an absolute name is reported below
                    continue
                rel = name.lstrip("/")[len(base):]
                parts = PurePosixPath(rel).parts
                if name.startswith("/") or ".." in parts:
                    problems.append((name, "unsafe member name (absolute or '..')"))
                    continue
                if not rel or m.isdir():
                    continue
                if not m.isreg():
                    problems.append((rel, "not a regular file"))
                    continue
                if any(p.startswith(".") for p in parts):
                    continue
                if not is_image_name(rel):
                    suffix = PurePosixPath(rel).suffix or "none"
                    problems.append((rel, f"not an image file extension ({suffix})"))
                    continue
                cols.add(rel, m.offset_data, m.size, int(m.mtime))
        return cols.arrays(), problems

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fh"] = state["_fh_pid"] = None  # each worker opens its own handle
        return state

    def read(self, item: Item) -> bytes:
        if self._fh is None or self._fh_pid != os.getpid():
            self._fh = open(self.path, "rb")
            self._fh_pid = os.getpid()
        i = find(self._keys, item.key)
        self._fh.seek(int(self._offset[i]))
        return self._fh.read(int(self._size[i]))

    def where(self, key: str) -> str:
        return f"{self.path}:{self._base}{key}"

    def nbytes(self) -> int:
        """Bytes this source holds for its images: the listing and where each member lies."""
        return self.items.nbytes() + self._offset.nbytes + self._size.nbytes
