"""Shard files of a format-3 store: immutable HDF5 files of rows, written once.

A shard holds, for its rows, the same datasets a format-2 store file holds (``keys``,
``stamps``, ``sha256``, ``labels`` indexing its own ``classes``, ``features/<name>``, and
``skipped/{keys,stamps,reasons}``), each with the SHA-256 of its bytes, so a store file
of an earlier version is itself a valid shard. Its *entries* are its rows, then its
skipped files: entry ``i`` is row ``i`` for ``i < rows``, else skipped file ``i - rows``.

A tombstone file (``*.dead.h5``) names entries that are no longer live: ``shard`` (file
names) and ``entry`` (indices). Shards and tombstones live in the store's folder
``<store>.d/``; the manifest (:mod:`.snapshot`) says which of them are part of the store.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..core.errors import StoreError
from ..core.files import atomic_path
from ..data.sources.listing import decode, encode
from .rows import WRITE_BLOCK, take

# rows per shard written by an extraction (~650 MB of 1,280 float32); FEATX_SHARD_ROWS
# sets another size (smaller shards: more files, finer compaction and parallel writing)
SHARD_ROWS = int(os.environ.get("FEATX_SHARD_ROWS", 1 << 17))
DEAD = ".dead.h5"


def folder(store_path: Path) -> Path:
    """The folder holding a store's shards and tombstones."""
    return store_path.with_name(store_path.name + ".d")


def new_name(suffix: str = ".h5", prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex[:20] + suffix


def rank_prefix(rank: int) -> str:
    """How the commits of one process of a torchrun job are named."""
    return f"rank{rank:03d}-"


def put(group, name: str, data: np.ndarray) -> str:
    """A dataset with the SHA-256 of its bytes in its ``sha256`` attribute."""
    group[name] = data
    digest = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
    group[name].attrs["sha256"] = digest
    return digest


def put_features(group, name: str, x) -> str:
    """An array-like of any size written block by block (contiguous layout), with its SHA-256."""
    ds = group.create_dataset(name, shape=x.shape, dtype=np.float32)
    h = hashlib.sha256()
    for start in range(0, x.shape[0], WRITE_BLOCK):
        block = np.ascontiguousarray(take(x, np.arange(start, min(start + WRITE_BLOCK, x.shape[0]))),
                                     dtype=np.float32)
        ds[start:start + len(block)] = block
        h.update(block.tobytes())
    ds.attrs["sha256"] = h.hexdigest()
    return ds.attrs["sha256"]


def digest_of(sums: dict[str, str]) -> str:
    """A shard's digest: of its datasets' recorded checksums (names sorted)."""
    return hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()


@dataclass
class Entries:
    """What a shard holds, features aside: rows and skipped files."""

    keys: np.ndarray  # bytes
    stamps: np.ndarray  # bytes
    labels: np.ndarray  # int32, indexing ``classes``; -1: unlabelled
    classes: list[str]
    skipped_keys: np.ndarray  # bytes
    skipped_stamps: np.ndarray
    skipped_reasons: np.ndarray  # str
    dims: dict[str, int]

    @property
    def rows(self) -> int:
        return len(self.keys)

    @property
    def size(self) -> int:  # entries: rows, then skipped files
        return len(self.keys) + len(self.skipped_keys)


def write(path: Path, entries: Entries, features: dict, sha256: np.ndarray, in_memory: bool = False) -> str:
    """Write a shard atomically; returns its digest. ``in_memory`` (for the small shards
    of commits) builds the file in memory and writes its bytes at once, so a full disk is
    one clean ``OSError`` rather than HDF5 failing halfway through its own flushes."""
    sums = {}
    with atomic_path(path) as tmp:
        if in_memory:
            buf = io.BytesIO()
            with h5py.File(buf, "w", libver="v108") as f:
                _fill(f, entries, features, sha256, sums)
            with open(tmp, "wb") as fh:
                fh.write(buf.getbuffer())
            return digest_of(sums)
        f = h5py.File(tmp, "w", libver="v108")
        try:
            _fill(f, entries, features, sha256, sums)
            f.close()
        except BaseException:
            # HDF5 flushes when the file closes; after a failed write (a full disk) that
            # flush fails too. Emptying the temporary file first gives it room; it is
            # deleted anyway.
            os.truncate(tmp, 0)
            f.close()
            raise
    return digest_of(sums)


def _fill(f: h5py.File, entries: Entries, features: dict, sha256: np.ndarray, sums: dict) -> None:
    f.attrs["format"], f.attrs["kind"] = 3, "shard"
    for name, data in (("keys", entries.keys), ("stamps", entries.stamps), ("sha256", encode(sha256)),
                       ("labels", np.asarray(entries.labels, np.int32)),
                       ("classes", encode(entries.classes)), ("skipped/keys", entries.skipped_keys),
                       ("skipped/stamps", entries.skipped_stamps),
                       ("skipped/reasons", encode(entries.skipped_reasons))):
        sums[name] = put(f, name, _bytes(data))
    for name, x in features.items():
        sums[f"features/{name}"] = put_features(f, f"features/{name}", x)


def _bytes(data) -> np.ndarray:
    data = np.asarray(data)
    if data.dtype.kind in "US" or data.dtype == object or data.size == 0 and data.dtype.kind == "f":
        return encode(data) if data.size else np.zeros(0, "S1")
    return data


def read_entries(path: Path) -> Entries:
    """A shard's keys, stamps, labels and skipped files (not its features)."""
    with _open(path) as f:
        return Entries(_b(f["keys"]), _b(f["stamps"]), f["labels"][()].astype(np.int32),
                       decode(_b(f["classes"])).tolist(), _b(f["skipped/keys"]), _b(f["skipped/stamps"]),
                       decode(_b(f["skipped/reasons"])),
                       {n: f["features"][n].shape[1] for n in f["features"]})


def _b(ds) -> np.ndarray:
    a = ds[()]
    return a if a.dtype.kind == "S" else encode(a)


def read_column(path: Path, name: str, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted) of one dataset of a shard, e.g. ``sha256``."""
    with _open(path) as f:
        return f[name][()][rows] if len(rows) else f[name][:0]


def recorded_digest(path: Path) -> str:
    """The shard's digest from the checksums its datasets record (no data read)."""
    with _open(path) as f:
        sums = {}
        f.visititems(lambda name, obj: sums.__setitem__(name, obj.attrs.get("sha256", ""))
                     if isinstance(obj, h5py.Dataset) else None)
        return digest_of(sums)


class _Open:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        try:
            self.f = h5py.File(self.path, "r")
        except (OSError, FileNotFoundError) as exc:
            raise StoreError(f"{self.path}: not a readable shard ({str(exc).splitlines()[0]})") from None
        return self.f

    def __exit__(self, *exc):
        self.f.close()
        if exc[0] is KeyError:
            raise StoreError(f"{self.path}: shard is missing {exc[1]}") from None


_open = _Open


class ShardFeatures:
    """One layer of some shards' rows, read when taken: global row ``r`` is row
    ``local[r]`` of shard ``paths[shard[r]]``."""

    def __init__(self, paths: list[Path], name: str, shard: np.ndarray, local: np.ndarray, dim: int):
        self.paths, self.name, self.shard, self.local = paths, name, shard, local
        self.shape = (len(shard), dim)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.take(np.arange(*index.indices(self.shape[0])))
        return self.take(np.asarray(index, dtype=np.int64))

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.shape[1]), np.float32)
        which = self.shard[rows]
        for s in np.unique(which):
            sel = np.flatnonzero(which == s)
            out[sel] = read_rows(self.paths[s], f"features/{self.name}", self.local[rows[sel]])
        return out


def read_rows(path: Path, name: str, rows: np.ndarray) -> np.ndarray:
    """Rows of a 2-D dataset in any order, read with as few HDF5 calls as possible."""
    with _open(path) as f:
        ds = f[name]
        if not len(rows):
            return np.zeros((0, ds.shape[1]), np.float32)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo <= 4 * len(rows) + WRITE_BLOCK:  # one contiguous read
            return ds[lo:hi][rows - lo]
        uniq, inverse = np.unique(rows, return_inverse=True)
        return ds[uniq][inverse]


def write_dead(path: Path, shards: np.ndarray, entries: np.ndarray) -> str:
    """A tombstone file: entry ``entries[i]`` of shard ``shards[i]`` is dead. Returns its digest."""
    sums = {}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver="v108") as f:
            f.attrs["format"], f.attrs["kind"] = 3, "dead"
            sums["shard"] = put(f, "shard", encode(shards) if len(shards) else np.zeros(0, "S1"))
            sums["entry"] = put(f, "entry", np.asarray(entries, np.int64))
    return digest_of(sums)


def read_dead(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with _open(path) as f:
        return f["shard"][()], f["entry"][()]


def verify(path: Path, digest: str) -> list[str]:
    """Problems of one shard or tombstone file: every dataset against its recorded
    checksum, the checksums against the manifest's ``digest``, finite features."""
    problems, sums = [], {}
    try:
        with _open(path) as f:
            def check(name, obj):
                if not isinstance(obj, h5py.Dataset):
                    return
                sums[name] = obj.attrs.get("sha256", "")
                h, finite = hashlib.sha256(), True
                for start in range(0, max(obj.shape[0], 1), WRITE_BLOCK):
                    block = np.ascontiguousarray(obj[start:start + WRITE_BLOCK])
                    h.update(block.tobytes())
                    finite = finite and (block.dtype.kind != "f" or bool(np.isfinite(block).all()))
                if sums[name] and h.hexdigest() != sums[name]:
                    problems.append(f"{path.name}: {name} does not match its recorded checksum")
                if not finite:
                    problems.append(f"{path.name}: {name} holds NaN or infinite values")
            f.visititems(check)
    except StoreError as exc:
        return [str(exc)]
    except (OSError, RuntimeError) as exc:
        return [f"{path.name}: unreadable ({str(exc).splitlines()[0]})"]
    if digest_of(sums) != digest:
        problems.append(f"{path.name}: its checksums differ from those the manifest recorded")
    return problems
