"""Manifests with columns ``path,label``: a CSV file or a Parquet table.

Both are read in chunks with pyarrow (a streaming CSV reader, a Parquet file's record
batches), each chunk's rows becoming arrays at once: a manifest of millions of rows is
never held as Python lists. Each named file is still ``os.stat``-ed for its stamp; that
is the listing's cost.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np

from ...core.errors import SourceError
from .base import Item, Source
from .listing import Listing, encode, text
from .tar import BLOCK, numbered

# a path that PurePosixPath would write differently: '//', a '.' part, a trailing '/'
UNTIDY = r"//|(^|/)\.(/|$)|/$"


class ManifestSource(Source):
    """What CSV and Parquet manifests share: paths are relative to the manifest's folder
    (or absolute), labels are text, sorted as text to make the classes; a blank path, a
    path listed twice and a missing file are problems, not errors."""

    kind: ClassVar[str] = ""  # the spec's prefix
    what: ClassVar[str] = "manifest"
    row_word: ClassVar[str] = "line"  # how a problem names the row it is on
    first_row: ClassVar[int] = 2  # the number of the first row of data

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"{path}: no such {self.what}")
        super().__init__(spec=f"{self.kind}:{path.resolve()}", name=path.stem)
        self.base = path.resolve().parent
        import pyarrow as pa

        rows = Rows(str(self.base))
        try:
            self._read(path, rows)
        except (OSError, UnicodeDecodeError, pa.ArrowException) as exc:
            raise SourceError(f"{path}: cannot read manifest ({exc})") from None
        self.classes, self.items, self.problems = rows.finish(path.name, self.row_word, self.first_row)

    def _read(self, path: Path, rows: Rows) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _columns(path: Path, names: list[str]) -> dict[str, str]:
        """The ``path`` and ``label`` columns' names as spelt in the file (spaces around a
        name do not count)."""
        raw = {n.strip(): n for n in names}
        if "path" not in raw:
            found = [n.strip() for n in names] or "no header"
            raise SourceError(f"{path}: manifest needs a 'path' column (found {found})")
        return {c: raw[c] for c in ("path", "label") if c in raw}

    def read(self, item: Item) -> bytes:
        with open(self.base / item.key, "rb") as fh:
            return fh.read()

    def where(self, key: str) -> str:
        return str(self.base / key)


class CsvSource(ManifestSource):
    """A CSV manifest with a header naming columns ``path`` and ``label`` (others are
    ignored); rows with fields missing or to spare are read as the csv module reads them."""

    kind, what = "csv", "CSV manifest"
    block_bytes: ClassVar[int] = 1 << 22  # how much of the file one chunk parses

    def _read(self, path: Path, rows: Rows) -> None:
        import pyarrow as pa
        from pyarrow import csv as pv

        with open(path, encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), [])
        self._columns(path, header)
        # columns by place, as csv.DictReader takes them: of two with one name, the last
        at = {name.strip(): i for i, name in enumerate(header)}
        wanted = {c: f"c{at[c]}" for c in ("path", "label") if c in at}
        apart: list[tuple[int, str]] = []  # rows of another field count: read below

        def keep_apart(row) -> str:
            apart.append((row.number or 0, row.text))
            if len(apart) >= BLOCK:  # a manifest whose every row is ragged is read a block at a time
                self._add_apart(rows, header, apart)
                apart.clear()
            return "skip"

        reader = pv.open_csv(
            path, read_options=pv.ReadOptions(use_threads=False, block_size=self.block_bytes,
                                              column_names=[f"c{i}" for i in range(len(header))],
                                              skip_rows_after_names=1),
            parse_options=pv.ParseOptions(newlines_in_values=True, invalid_row_handler=keep_apart),
            convert_options=pv.ConvertOptions(
                column_types={c: pa.string() for c in wanted.values()}, include_columns=list(wanted.values()),
                strings_can_be_null=False, quoted_strings_can_be_null=False))
        for batch in reader:
            rows.add(batch.column(wanted["path"]),
                     batch.column(wanted["label"]) if "label" in wanted else None)
        if apart:
            self._add_apart(rows, header, apart)

    @staticmethod
    def _add_apart(rows: Rows, header: list[str], apart: list[tuple[int, str]]) -> None:
        """Rows with fields missing (read as blank) or to spare (ignored), as DictReader reads them."""
        import pyarrow as pa

        at = {name.strip(): i for i, name in enumerate(header)}
        paths, labels = [], []
        for _, line in apart:
            fields = next(csv.reader(io.StringIO(line)), [])
            paths.append(fields[at["path"]] if at["path"] < len(fields) else "")
            labels.append(fields[at["label"]] if at.get("label", len(fields)) < len(fields) else "")
        rows.add(pa.array(paths, pa.string()), pa.array(labels, pa.string()),
                 numbers=np.array([n for n, _ in apart], np.int64))


class ParquetSource(ManifestSource):
    """A Parquet manifest with columns ``path`` and ``label`` (others are ignored); a
    numeric label column's classes are its values' text. Problems name rows by number,
    the first row being 1."""

    kind, what, row_word, first_row = "parquet", "Parquet manifest", "row", 1
    batch_rows: ClassVar[int] = 65536

    def _read(self, path: Path, rows: Rows) -> None:
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as table:
            wanted = self._columns(path, table.schema_arrow.names)
            for batch in table.iter_batches(batch_size=self.batch_rows, columns=list(wanted.values())):
                rows.add(batch.column(wanted["path"]),
                         batch.column(wanted["label"]) if "label" in wanted else None)


class Rows:
    """A manifest's rows, gathered a chunk at a time as arrays: key, label, stamp,
    whether the file is there, and the row's number."""

    def __init__(self, base: str):
        self.base = base
        self.parts: list[dict[str, np.ndarray]] = []
        self.errors: dict[int, str] = {}  # row (in the order added) -> why its file cannot be opened
        self.count = self.in_turn = 0  # rows added; rows numbered by their place among the others

    def add(self, paths, labels, numbers: np.ndarray | None = None) -> None:
        """One chunk: pyarrow arrays of paths and labels (None: no labels); ``numbers``
        gives its rows' numbers, else they follow the rows added before without them."""
        keys = _keys(_tidy(paths))
        n = len(keys)
        size, mtime, ok = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, bool)
        for i, key in enumerate(keys.tolist()):
            if not key:
                continue
            try:
                st = os.stat(os.path.join(self.base, key))
            except OSError as exc:
                self.errors[self.count + i] = exc.strerror or str(exc)
                continue
            size[i], mtime[i], ok[i] = st.st_size, st.st_mtime_ns, True
        label = np.zeros(n, "S1") if labels is None else encode(_tidy(labels).to_numpy(zero_copy_only=False))
        stamp = numbered(size, b":", mtime)
        placed = numbers is not None
        if not placed:
            numbers = np.arange(self.in_turn, self.in_turn + n, dtype=np.int64)
            self.in_turn += n
        self.parts.append({"key": encode(keys), "label": label, "stamp": stamp, "ok": ok,
                           "number": numbers, "placed": np.full(n, placed)})
        self.count += n

    def finish(self, name: str, word: str, first: int) -> tuple[list[str], Listing, list[tuple[str, str]]]:
        """The classes, the items in key order and the problems in row order."""
        if not self.parts:
            return [], Listing.empty(), []
        cols = {k: np.concatenate([p[k] for p in self.parts])
                for k in ("key", "label", "stamp", "ok", "number", "placed")}
        key, number, ok = cols["key"], cols["number"], cols["ok"]
        # Rows read apart from their chunk have their own numbers; the others take the
        # numbers left between them: the v-th is first + v + (how many of those come before).
        given = np.sort(number[cols["placed"] & (number > 0)])
        turn = ~cols["placed"]
        number[turn] += first
        number[turn] += np.searchsorted(given - np.arange(len(given)), number[turn], side="right")
        blank = key == b""
        order = np.lexsort((number, key))  # a path's first row comes first
        dup = np.zeros(len(key), bool)
        dup[order[1:]] = (key[order][1:] == key[order][:-1]) & ~blank[order][1:]
        problems = []
        for i in np.flatnonzero(blank | dup | ~ok):
            k, at = text(key[i]), int(number[i])
            why = (f"duplicate row ({word} {at})" if dup[i] else f"cannot open: {self.errors.get(i, '')}")
            problems.append((at, (f"{name}:{at}", "blank path") if blank[i] else (k, why)))
        kept = ok & ~dup
        names = np.unique(cols["label"][kept])
        names = names[names != b""]
        labels = np.searchsorted(names, cols["label"][kept]).astype(np.int32)
        labels[cols["label"][kept] == b""] = -1
        items = Listing(key[kept], cols["stamp"][kept], labels).sorted()
        return [text(n) for n in names], items, [p for _, p in sorted(problems, key=lambda p: p[0])]


def _tidy(values):
    """Text with the spaces around it trimmed, a missing value blank."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.utf8_trim_whitespace(pc.fill_null(values.cast(pa.string()), ""))


def _keys(paths) -> np.ndarray:
    """Paths as keys: '/'-separated and written as PurePosixPath writes them."""
    import pyarrow.compute as pc

    paths = pc.replace_substring(paths, "\\", "/")
    keys = paths.to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(pc.match_substring_regex(paths, UNTIDY).to_numpy(zero_copy_only=False)):
        keys[i] = PurePosixPath(keys[i]).as_posix()
    return keys
