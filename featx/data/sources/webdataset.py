"""WebDataset tar shards: many uncompressed tars whose members are grouped into samples
by key, read in place.

``shards/train-{000000..000099}.tar`` (brace ranges, zero padding kept, and lists
``{a,b}``) or a glob (``shards/*.tar``) names the shards. Member ``dir/s0001.jpg`` belongs
to sample ``dir/s0001`` (the path up to the first dot of the base name), as WebDataset
groups them; the sample's image is its ``.jpg``, ``.jpeg``, ``.png`` or ``.webp`` member,
its label the text of a ``.cls`` member or ``label`` in a ``.json`` one.
"""
from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ...core.errors import SourceError
from .base import Item, Source
from .listing import Listing, encode, joined, text
from .tar import Columns, find, members, numbered

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
IMAGE, CLS, JSON, OTHER = 0, 1, 2, 3  # member kinds, in the order a sample's members are sorted
SHARDS_SPEC = re.compile(r"[{*?\[]")  # what makes a .tar spelling a pattern of shards
MAX_LABEL_BYTES = 1 << 20
OPEN_SHARDS = 16  # file handles a process keeps open at once
META = re.compile(r"__[^/]*__\.")  # WebDataset's own files: __key__.txt, __index__.json


def expand_braces(pattern: str) -> list[str]:
    """Bash-style brace expansion: ``a{1..3}`` (zero padding kept: ``{08..10}``),
    ``{x,y}``, nested; braces that are neither stay as they are."""
    start = pattern.find("{")
    end = _closing(pattern, start) if start >= 0 else -1
    if end < 0:
        return [pattern]
    alternatives = _alternatives(pattern[start + 1:end])
    if alternatives is None:  # literal braces: expand what follows the '{'
        return [pattern[:start + 1] + rest for rest in expand_braces(pattern[start + 1:])]
    tails = expand_braces(pattern[end + 1:])
    return [pattern[:start] + a + t for alt in alternatives for a in expand_braces(alt) for t in tails]


def _closing(s: str, start: int) -> int:
    depth = 0
    for i in range(start, len(s)):
        depth += {"{": 1, "}": -1}.get(s[i], 0)
        if depth == 0:
            return i
    return -1


def _alternatives(body: str) -> list[str] | None:
    m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if m:
        a, b = m.groups()
        width = max(len(a), len(b)) if re.match(r"-?0\d", a) or re.match(r"-?0\d", b) else 0
        lo, hi = int(a), int(b)
        step = 1 if hi >= lo else -1
        return [f"{n:0{width}d}" for n in range(lo, hi + step, step)]
    parts, depth, last = [], 0, 0
    for i, c in enumerate(body):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if c == "," and depth == 0:
            parts.append(body[last:i])
            last = i + 1
    return parts + [body[last:]] if parts else None


def shard_paths(pattern: str) -> list[str]:
    """The shards a pattern names, in its order (each glob's matches sorted), once each.
    A shard named outright must exist; a glob must match something."""
    found: dict[str, None] = {}
    for p in expand_braces(pattern):
        if glob.has_magic(p):
            matches = sorted(glob.glob(p))
            if not matches:
                raise SourceError(f"{p}: no tar shards match")
            found.update(dict.fromkeys(matches))
        elif not os.path.isfile(p):
            raise SourceError(f"{p}: no such tar shard" + (f" (named by {pattern})" if p != pattern else ""))
        else:
            found[p] = None
    if not found:
        raise SourceError(f"{pattern}: no tar shards match")
    return list(found)


def short_name(pattern: str) -> str:
    """``shards/train-{000000..000099}.tar`` -> ``train``; ``shards/*.tar`` -> ``shards``."""
    parts = [p for p in Path(pattern.removesuffix(".tar")).parts if p not in ("/", ".", "..")]
    for part in reversed(parts):
        name = SHARDS_SPEC.split(part, 1)[0].rstrip("-_. ")
        if name:
            return name
    return "webdataset"


def label_text(ext: str, data: bytes) -> str:
    """A ``.cls`` or ``.json`` member's label as text ('' when it has none); ValueError
    with a one-line reason when it cannot be read."""
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"label in .{ext} is not UTF-8 text") from None
    if ext == "json":
        try:
            meta = json.loads(value)
        except ValueError:
            raise ValueError("unreadable .json (not JSON)") from None
        if not isinstance(meta, dict):
            raise ValueError("unreadable .json (not a JSON object)")
        value = meta.get("label")
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"label in .json is not an integer or a class name ({json.dumps(value)[:40]})")
        value = str(value)
    value = value.strip()
    if "\n" in value or "\r" in value:
        raise ValueError(f"label in .{ext} spans more than one line")
    return value


class WebDatasetSource(Source):
    """Tar shards in WebDataset layout (see the module's docstring), read in place.

    A sample with no image member, with more than one, or whose label cannot be read is
    a problem; so is a key already listed from an earlier shard. Samples without a label
    member are unlabelled (-1). Class names are the label texts, sorted as text.
    """

    def __init__(self, pattern: str | os.PathLike):
        pattern = os.fspath(pattern)
        super().__init__(spec=f"wds:{os.path.abspath(pattern)}", name=short_name(pattern))
        self.shards = shard_paths(pattern)
        self._exts: list[str] = []  # image member suffixes as spelt in the shards
        self._handles, self._pid = OrderedDict(), os.getpid()
        parts, problems = [], []
        for index, shard in enumerate(self.shards):
            part, bad = self._scan(shard)
            parts.append({**part, "shard": np.full(len(part["key"]), index, np.int32)})
            problems += bad
        if not any(len(p["key"]) for p in parts) and not problems:
            raise SourceError(f"{pattern}: no samples in {len(self.shards)} shard(s)")
        self._combine(parts, problems)

    def _scan(self, shard: str) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
        """One shard's samples (arrays) and problems."""
        cols = Columns(key="S", kind=np.int8, offset=np.int64, size=np.int64, ext=np.uint8, label="S")
        reasons: dict[int, str] = {}  # member row -> why its label cannot be read
        row = 0  # members kept so far
        try:
            st = os.stat(shard)
            with open(shard, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
                for m in members(tar):
                    split = _split(m.name.removeprefix("./")) if m.isreg() else None
                    if split is None:
                        continue
                    key, suffix = split
                    ext = suffix.lower()
                    kind = IMAGE if ext in IMAGE_EXTS else {"cls": CLS, "json": JSON}.get(ext, OTHER)
                    label = ""
                    if kind in (CLS, JSON):
                        try:
                            label = self._label(fh, m, ext)
                        except ValueError as exc:
                            reasons[row] = str(exc)
                    cols.add(key, kind, m.offset_data, m.size, self._ext(suffix, kind), label)
                    row += 1
        except tarfile.ReadError as exc:
            raise SourceError(f"{shard}: not a readable uncompressed tar archive ({exc})") from None
        except OSError as exc:
            raise SourceError(f"{shard}: cannot read tar shard ({exc.strerror or exc})") from None
        return _samples(cols.arrays(), reasons, f":{st.st_size}:{st.st_mtime_ns}".encode())

    @staticmethod
    def _label(fh, m: tarfile.TarInfo, ext: str) -> str:
        if m.size > MAX_LABEL_BYTES:
            raise ValueError(f"label member .{ext} is over {MAX_LABEL_BYTES >> 20} MiB")
        fh.seek(m.offset_data)  # tarfile seeks back to the next header itself
        return label_text(ext, fh.read(m.size))

    def _ext(self, suffix: str, kind: int) -> int:
        if kind != IMAGE:
            return 0
        if suffix not in self._exts:
            self._exts.append(suffix)
        return self._exts.index(suffix)

    def _combine(self, parts: list[dict[str, np.ndarray]], problems: list[tuple[str, str]]) -> None:
        """All shards' samples in key order, a key seen in an earlier shard a problem."""
        cols = {k: joined([p[k] for p in parts]) if k in ("key", "stamp", "label")
                else np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.argsort(cols["key"], kind="stable")  # shard order within one key
        cols = {k: v[order] for k, v in cols.items()}
        keys = cols["key"]
        dup = np.zeros(len(keys), bool)
        dup[1:] = keys[1:] == keys[:-1]
        first = np.maximum.accumulate(np.where(dup, 0, np.arange(len(keys))))
        for i in np.flatnonzero(dup):
            kept, skipped = self.shards[cols["shard"][first[i]]], self.shards[cols["shard"][i]]
            why = f"duplicate sample key, also in {kept}; the copy in {skipped} is skipped"
            problems.append((text(keys[i]), why))
        cols = {k: v[~dup] for k, v in cols.items()}
        names = np.unique(cols["label"])
        names = names[names != b""]
        labels = np.searchsorted(names, cols["label"]).astype(np.int32)
        labels[cols["label"] == b""] = -1
        self.classes = [text(n) for n in names]
        self.items = Listing(cols["key"], cols["stamp"], labels)
        self._keys, self._offset, self._size = self.items.keys, cols["offset"], cols["size"]
        self._shard, self._suffix = cols["shard"], cols["ext"]
        self.problems = problems

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"], state["_pid"] = OrderedDict(), None  # each worker opens its own
        return state

    def _handle(self, shard: int):
        if self._pid != os.getpid():  # a forked copy: its parent's handles share file offsets
            self._handles, self._pid = OrderedDict(), os.getpid()
        fh = self._handles.pop(shard, None) or open(self.shards[shard], "rb")
        self._handles[shard] = fh
        while len(self._handles) > OPEN_SHARDS:
            self._handles.popitem(last=False)[1].close()
        return fh

    def read(self, item: Item) -> bytes:
        i = find(self._keys, item.key)
        fh = self._handle(int(self._shard[i]))
        fh.seek(int(self._offset[i]))
        return fh.read(int(self._size[i]))

    def where(self, key: str) -> str:
        try:
            i = find(self._keys, key)
        except KeyError:
            return f"{self.spec.removeprefix('wds:')}:{key}"
        return f"{self.shards[self._shard[i]]}:{key}.{self._exts[self._suffix[i]]}"

    def nbytes(self) -> int:
        """Bytes this source holds for its samples: the listing and where each image lies."""
        where = (self._offset, self._size, self._shard, self._suffix)
        return self.items.nbytes() + sum(a.nbytes for a in where)


def _split(name: str) -> tuple[str, str] | None:
    """A member's sample key and suffix: ``d/s1.seg.png`` -> ``(d/s1, seg.png)``; None for
    a name without a suffix, a hidden one, or WebDataset's ``__meta__`` files."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot <= slash + 1 or name.startswith(".") or "/." in name or META.match(name, slash + 1):
        return None
    return name[:dot], name[dot + 1:]


def _samples(cols: dict[str, np.ndarray], reasons: dict[int, str],
             tail: bytes) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """One shard's members grouped into samples: those with one image and a readable (or
    no) label, and a problem for each of the others. ``tail`` ends every stamp."""
    n = len(cols["key"])
    by_kind = np.argsort(cols["kind"], kind="stable")
    order = by_kind[np.argsort(cols["key"][by_kind], kind="stable")]  # by key, then kind, then archive order
    key, kind = cols["key"][order], cols["kind"][order]
    start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if n else np.zeros(0, np.int64)
    end = np.r_[start[1:], n].astype(np.int64)
    images = np.add.reduceat((kind == IMAGE).astype(np.int64), start) if n else np.zeros(0, np.int64)
    first_label = np.minimum(start + images, max(n - 1, 0))  # images sort first, then .cls, then .json
    labelled = (start + images < end) & (kind[first_label] <= JSON)
    position = np.empty(n, np.int64)
    position[order] = np.arange(n)
    bad = np.zeros(n, bool)
    bad[position[list(reasons)]] = True
    good = (images == 1) & ~(labelled & bad[first_label])
    problems = []
    for s in np.flatnonzero(~good):
        why = (reasons[int(order[first_label[s]])] if images[s] == 1
               else "no image member (.jpg, .jpeg, .png or .webp)" if images[s] == 0
               else f"{images[s]} image members; a sample holds one")
        problems.append((text(key[start[s]]), why))
    img = order[start[good]]
    label = np.where(labelled[good], cols["label"][order[first_label[good]]], b"")
    stamp = numbered(cols["size"][img], tail)
    return {"key": key[start[good]], "stamp": stamp, "label": encode(label), "offset": cols["offset"][img],
            "size": cols["size"][img], "ext": cols["ext"][img]}, problems
