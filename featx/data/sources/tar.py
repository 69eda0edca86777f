"""An uncompressed tar archive holding an ImageFolder tree, read in place."""
from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path, PurePosixPath

from ...core.errors import SourceError
from ..images import is_image_name
from .base import Item, Source, label_items

TAR_SPEC = re.compile(r"^(?P<path>.+?\.tar)(?::(?P<prefix>.*))?$")


class TarSource(Source):
    """An uncompressed tar holding an ImageFolder tree, ``file.tar[:prefix]``.

    Members are read in place by offset: nothing is extracted to disk.
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
        self._offsets: dict[str, tuple[int, int]] = {}
        entries, problems = {}, []
        base = self._base = f"{prefix}/" if prefix else ""
        # Member mtimes have one-second resolution and archives are often built with a
        # fixed one, so the archive's own size and mtime are part of every stamp; when the
        # archive is rewritten, unchanged members are recognised by their content hash.
        archive = os.stat(path)
        tar_stamp = f"{archive.st_size}:{archive.st_mtime_ns}"
        try:
            with tarfile.open(path, mode="r:") as tar:
                for m in tar:
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
                    # A name that occurs twice (an appended update) means its last copy,
                    # as when the archive is unpacked.
                    self._offsets[rel] = (m.offset_data, m.size)
                    entries[rel] = f"{m.size}:{int(m.mtime)}:{tar_stamp}"
        except tarfile.ReadError as exc:
            raise SourceError(f"{path}: not a readable uncompressed tar archive ({exc})") from None
        if not entries and not problems:
            raise SourceError(f"{path}: no files under prefix {prefix!r}")
        self.classes, self.items = label_items(list(entries), list(entries.values()))
        self.problems = problems

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fh"] = state["_fh_pid"] = None  # each worker opens its own handle
        return state

    def read(self, item: Item) -> bytes:
        if self._fh is None or self._fh_pid != os.getpid():
            self._fh = open(self.path, "rb")
            self._fh_pid = os.getpid()
        offset, size = self._offsets[item.key]
        self._fh.seek(offset)
        return self._fh.read(size)

    def where(self, key: str) -> str:
        return f"{self.path}:{self._base}{key}"

