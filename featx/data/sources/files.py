"""Image files named one by one: the source behind :class:`featx.ImageEmbedder`."""
from __future__ import annotations

import os
from pathlib import Path

from ..images import is_image_name
from .base import Item, Source, stamp


class FilesSource(Source):
    """Unlabelled image files given by path; each file's key is its absolute path.

    Its store *accumulates*: rows of files named by earlier calls stay in it, so that any
    list of images already embedded, in any order or subset, embeds nothing again. A
    file that is missing or has no image extension is listed in ``problems``.
    """

    accumulates = True

    def __init__(self, paths):
        super().__init__(spec="files:", name="files")
        entries, problems = {}, []
        for key in self.keys_of(paths):
            if key in entries:
                continue
            if not is_image_name(key):
                problems.append((key, f"not an image file extension ({Path(key).suffix or 'none'})"))
                continue
            try:
                entries[key] = stamp(os.stat(key))
            except OSError as exc:
                problems.append((key, f"cannot open: {exc.strerror}"))
        self.items = [Item(k, -1, s) for k, s in sorted(entries.items())]
        self.problems = problems

    @staticmethod
    def keys_of(paths) -> list[str]:
        """Each path's key: its absolute path, '/'-separated."""
        return [Path(os.path.abspath(os.fspath(p))).as_posix() for p in paths]

    def read(self, item: Item) -> bytes:
        with open(item.key, "rb") as fh:
            return fh.read()
