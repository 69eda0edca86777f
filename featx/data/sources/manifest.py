"""A CSV manifest with columns ``path,label``."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path, PurePosixPath

from ...core.errors import SourceError
from .base import Item, Source, stamp


class CsvSource(Source):
    """A manifest with columns ``path,label``; paths are relative to the CSV's folder."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"{path}: no such CSV manifest")
        super().__init__(spec=f"csv:{path.resolve()}", name=path.stem)
        self.base = path.resolve().parent
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"{path}: cannot read manifest ({exc})") from None
        reader = csv.DictReader(io.StringIO(text))
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in columns:
            raise SourceError(f"{path}: manifest needs a 'path' column (found {columns or 'no header'})")
        rows, problems, seen = [], [], set()
        for lineno, row in enumerate(reader, start=2):
            # csv puts surplus fields under the key None (as a list) and missing ones as None.
            row = {k.strip(): (v or "").strip() for k, v in row.items() if isinstance(k, str)}
            key = PurePosixPath(row.get("path", "").replace("\\", "/")).as_posix()
            if not row.get("path"):
                problems.append((f"{path.name}:{lineno}", "blank path"))
                continue
            if key in seen:
                problems.append((key, f"duplicate row (line {lineno})"))
                continue
            seen.add(key)
            try:
                st = os.stat(self.base / key)
            except OSError as exc:
                problems.append((key, f"cannot open: {exc.strerror}"))
                continue
            rows.append((key, row.get("label", ""), stamp(st)))
        rows.sort()
        self.classes = sorted({lab for _, lab, _ in rows if lab})
        index = {c: i for i, c in enumerate(self.classes)}
        self.items = [Item(k, index.get(lab, -1), s) for k, lab, s in rows]
        self.problems = problems

    def read(self, item: Item) -> bytes:
        with open(self.base / item.key, "rb") as fh:
            return fh.read()

    def where(self, key: str) -> str:
        return str(self.base / key)

