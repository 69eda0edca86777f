"""Image sources: an ImageFolder directory, a tar archive read in place, a CSV manifest.

A source lists its images in a deterministic order as :class:`Item` records (a stable
key, the label index, a cheap change stamp) and reads any item's bytes on demand, so
DataLoader workers can share it. Files that are present but cannot be used (a
non-image extension, an unsafe tar member, a CSV row naming a missing file) are listed
in ``problems`` with a one-line reason instead of stopping the run.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import SourceError
from .images import is_image_name


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

    def read(self, item: Item) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def where(self, key: str) -> str:
        """Where the file of ``key`` is, as a user would find it (for messages)."""
        return key

    def __len__(self) -> int:
        return len(self.items)


def _stamp(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


def _label_items(entries: list[tuple[str, str]]) -> tuple[list[str], list[Item]]:
    """(key, stamp) pairs -> classes from each key's first folder, and sorted items."""
    entries = sorted(entries)
    classes = sorted({k.split("/", 1)[0] for k, _ in entries if "/" in k})
    index = {c: i for i, c in enumerate(classes)}
    items = [Item(k, index[k.split("/", 1)[0]] if "/" in k else -1, s) for k, s in entries]
    return classes, items


SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


class ImageFolderSource(Source):
    """``root/<class>/<image>``; images directly in ``root`` are unlabelled."""

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        if not root.is_dir():
            raise SourceError(f"{root}: not a directory")
        real = root.resolve()
        # a split folder is named with its dataset's: data/cifar10/train -> cifar10-train
        name = f"{real.parent.name}-{real.name}" if real.name.lower() in SPLIT_NAMES and real.parent.name else real.name
        super().__init__(spec=f"dir:{real}", name=name)
        self.root = root
        entries, problems, seen = [], [], set()
        # Symlinked folders are followed, each real folder listed once: a link that loops
        # back is reported, not walked forever.
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=None):
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:
                problems.append((rel_dir + "/", "folder link leads to a folder already listed (not read twice)"))
                dirnames[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if rel_dir != "." and "/" not in rel_dir and not dirnames and all(f.startswith(".") for f in filenames):
                problems.append((rel_dir + "/", "class folder holds no files"))
            for fn in sorted(filenames):
                if fn.startswith("."):
                    continue
                key = fn if rel_dir == "." else f"{rel_dir}/{fn}"
                if not is_image_name(fn):
                    problems.append((key, f"not an image file extension ({Path(fn).suffix or 'none'})"))
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, fn))
                except OSError as exc:
                    problems.append((key, f"cannot stat: {exc.strerror}"))
                    continue
                entries.append((key, _stamp(st)))
        self.classes, self.items = _label_items(entries)
        self.problems = problems

    def read(self, item: Item) -> bytes:
        with open(self.root / item.key, "rb") as fh:
            return fh.read()

    def where(self, key: str) -> str:
        return str(self.root / key)


_TAR_RE = re.compile(r"^(?P<path>.+?\.tar)(?::(?P<prefix>.*))?$")


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
                        problems.append((rel, f"not an image file extension ({PurePosixPath(rel).suffix or 'none'})"))
                        continue
                    # A name that occurs twice (an appended update) means its last copy,
                    # as when the archive is unpacked.
                    self._offsets[rel] = (m.offset_data, m.size)
                    entries[rel] = f"{m.size}:{int(m.mtime)}:{tar_stamp}"
        except tarfile.ReadError as exc:
            raise SourceError(f"{path}: not a readable uncompressed tar archive ({exc})") from None
        if not entries and not problems:
            raise SourceError(f"{path}: no files under prefix {prefix!r}")
        self.classes, self.items = _label_items(list(entries.items()))
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
            rows.append((key, row.get("label", ""), _stamp(st)))
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


class SubsetSource(Source):
    """At most ``per_class`` images of each class of another source, drawn with ``seed``
    (the same draw every time); unlabelled images are left out."""

    def __init__(self, base: Source, per_class: int, seed: int = 0):
        super().__init__(spec=f"{base.spec}#per_class={per_class},seed={seed}",
                         name=f"{base.name}-{per_class}pc", classes=list(base.classes), problems=list(base.problems))
        self.base = base
        rng = random.Random(f"{seed}:{per_class}")
        chosen = set()
        for label in range(len(base.classes)):
            keys = [it.key for it in base.items if it.label == label]
            chosen.update(rng.sample(keys, min(per_class, len(keys))))
        self.items = [it for it in base.items if it.key in chosen]

    def read(self, item: Item) -> bytes:
        return self.base.read(item)

    def where(self, key: str) -> str:
        return self.base.where(key)


class KeysSource(Source):
    """The items of another source whose keys are listed, in the base's order: one split of
    it. ``tag`` names the split in ``spec``, which also holds a digest of the keys."""

    def __init__(self, base: Source, keys, tag: str):
        wanted = set(keys)
        chosen = hashlib.sha256("\n".join(sorted(wanted)).encode()).hexdigest()[:12]
        super().__init__(spec=f"{base.spec}#{tag}={chosen}", name=f"{base.name}-{tag}", classes=list(base.classes))
        self.base = base
        self.items = [it for it in base.items if it.key in wanted]

    def read(self, item: Item) -> bytes:
        return self.base.read(item)

    def where(self, key: str) -> str:
        return self.base.where(key)


def open_source(spec: str | os.PathLike) -> Source:
    """Open a data source from its command-line spelling.

    ``sample`` (the built-in sample), a directory, ``archive.tar[:prefix]`` or ``file.csv``.
    """
    text = os.fspath(spec)
    if text == "sample":
        from .sample import SampleSource

        return SampleSource()
    m = _TAR_RE.match(text)
    if m:
        return TarSource(m.group("path"), m.group("prefix") or "")
    if re.search(r"\.(tar\.gz|tgz|tar\.bz2|tar\.xz|zip)(:|$)", text):
        raise SourceError(f"{text}: compressed archives are not read in place; use an uncompressed .tar or a folder")
    if text.lower().endswith(".csv"):
        return CsvSource(text)
    if os.path.isdir(text):
        return ImageFolderSource(text)
    raise SourceError(f"{text}: no such directory, tar archive or CSV manifest")
