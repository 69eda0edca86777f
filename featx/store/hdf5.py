"""The HDF5 store file: writing it whole and atomically, reading it back, checking it.

A store is one HDF5 file, always written whole to a temporary name and renamed into
place, so a reader never sees a half-written store (work in progress lives in the
journal, :mod:`.journal`). Its layout is in the package's docstring (:mod:`featx.store`).
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..core.errors import StoreError
from ..core.files import atomic_path
from ..core.names import DEFAULT_LAYER
from . import shards, snapshot, view
from .rows import WRITE_BLOCK, Rows, Taken

FORMAT = 3  # 3: shards and a manifest (featx.store.snapshot); 2: one file, a checksum on
FORMATS = (1, 2, 3)  # every dataset and on the attributes; 1: on the features only


# --- strings in HDF5: fixed-length UTF-8 bytes, converted without per-row Python ----------


def _encode(strings) -> np.ndarray:
    arr = np.asarray(list(strings), dtype=object)
    if arr.size == 0:
        return np.zeros(0, dtype="S1")
    return np.char.encode(arr.astype(str), "utf-8", "surrogateescape")


def _decode(arr: np.ndarray) -> np.ndarray:
    if arr.size == 0:
        return np.zeros(0, dtype=str)
    try:
        return arr.astype(str)  # a C-level cast when every key is ASCII, the common case
    except UnicodeDecodeError:
        return np.char.decode(arr, "utf-8", "surrogateescape")


def printable(name: str) -> str:
    """A file name for display: bytes that are not UTF-8 shown as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _StoreFeatures(path: Path, name: str, shape: tuple[int, int]) -> shards.ShardFeatures:
    """A single-file store's features, read from the file when their rows are needed: the
    file read as the one shard of its rows."""
    n = shape[0]
    return shards.ShardFeatures([path], name, np.zeros(n, np.int32), np.arange(n, dtype=np.int32), shape[1])


def write_store(path: Path, rows: Rows, labels: np.ndarray, classes: list[str], provenance: dict,
                manifest: str) -> None:
    """Write a complete store atomically (temporary file, fsync, rename).

    Every dataset records the SHA-256 of its bytes, and the file its attributes', so
    :func:`verify` finds a truncated or bit-flipped store; HDF5's own metadata carries
    checksums too (file format of HDF5 1.8 and later).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        f = h5py.File(tmp, "w", libver="v108")
        try:
            _fill(f, rows, labels, classes, provenance, manifest)
            f.close()
        except BaseException:
            # HDF5 flushes when the file closes; after a failed write (a full disk) that
            # flush fails too and the library crashes the process at exit. Emptying the
            # temporary file first gives the flush room, and it is deleted anyway.
            os.truncate(tmp, 0)
            f.close()
            raise


def _attrs_digest(provenance: str, manifest: str) -> str:
    return hashlib.sha256(json.dumps([provenance, manifest]).encode()).hexdigest()


def _fill(f, rows: Rows, labels, classes, provenance: dict, manifest: str) -> None:
    f.attrs["format"] = 2  # the single-file layout (format 3 is written by featx.store.snapshot)
    f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
    f.attrs["manifest"] = manifest
    f.attrs["sha256"] = _attrs_digest(f.attrs["provenance"], manifest)
    shards.put(f, "keys", _encode(rows.keys))
    shards.put(f, "stamps", _encode(rows.stamps))
    shards.put(f, "sha256", _encode(rows.sha256))
    shards.put(f, "labels", np.asarray(labels, dtype=np.int64))
    shards.put(f, "classes", _encode(classes))
    for name, x in rows.features.items():
        shards.put_features(f, f"features/{name}", x)  # block by block, as a shard's
    shards.put(f, "skipped/keys", _encode(rows.skipped_keys))
    shards.put(f, "skipped/stamps", _encode(rows.skipped_stamps))
    shards.put(f, "skipped/reasons", _encode(rows.skipped_reasons))


@contextmanager
def _open(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such store")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise StoreError(f"{path}: not a readable HDF5 store ({exc})") from None
    try:
        if f.attrs.get("format") not in FORMATS or f.attrs.get("kind", "manifest") != "manifest":
            raise StoreError(f"{path}: not a featx store (format {f.attrs.get('format')!r})")
        yield f
    except KeyError as exc:
        raise StoreError(f"{path}: store is missing {exc}") from None
    finally:
        f.close()


@dataclass
class StoreContents:
    """Everything a store holds."""

    rows: Rows  # keys, stamps, hashes and features of the embedded images; the skipped files
    labels: np.ndarray  # int64, one per row, indexing ``classes`` (-1: unlabelled)
    classes: list[str]
    provenance: dict  # what wrote the features: backbone identity, precision, versions, ...
    manifest: str  # digest of the source listing it was written from ("" when it must be rechecked)


def read(path: str | os.PathLike, lazy: bool = False) -> StoreContents:
    """Everything in a store. With ``lazy`` the features stay in the file until their
    rows are taken."""
    with _open(path) as f:
        if f.attrs["format"] == 3:
            return view.consistent(Path(path), f,
                                   lambda snap: _contents(view.open_view(Path(path), snap), lazy))
        feats = {name: (_StoreFeatures(Path(path), name, f["features"][name].shape) if lazy
                        else f["features"][name][()]) for name in f["features"]}
        rows = Rows(
            _decode(f["keys"][()]), _decode(f["stamps"][()]), _decode(f["sha256"][()]), feats,
            _decode(f["skipped/keys"][()]), _decode(f["skipped/stamps"][()]),
            _decode(f["skipped/reasons"][()]),
        )
        return StoreContents(rows, f["labels"][()], _decode(f["classes"][()]).tolist(),
                             json.loads(f.attrs["provenance"]), str(f.attrs["manifest"]))


@dataclass
class Features:
    """One layer of a store's features, with what they describe. Unpacks (and indexes)
    as the tuple ``X, y, keys, classes`` that earlier versions returned."""

    X: np.ndarray  # float32 (rows, dim)
    y: np.ndarray  # int64 labels indexing ``classes``; -1: unlabelled
    keys: np.ndarray  # str: each row's image, as its source names it
    classes: list[str]
    provenance: dict
    layer: str = DEFAULT_LAYER
    path: Path | None = None

    def __iter__(self):
        return iter((self.X, self.y, self.keys, self.classes))

    def __getitem__(self, i):
        return (self.X, self.y, self.keys, self.classes)[i]


def load(path: str | os.PathLike, layer: str = DEFAULT_LAYER, *, rows=None, lazy: bool = False) -> Features:
    """A store's features of ``layer``: float32 ``X``, int64 ``y``, str ``keys``, and its
    ``classes`` and ``provenance``. ``rows`` (a slice, or an array of row indices or a
    boolean mask) reads only those rows; with ``lazy``, ``X`` stays on disk: an array-like
    with ``shape`` whose slices (``X[a:b]``) and ``take(rows)`` read just those rows."""
    with _open(path) as f:
        if f.attrs["format"] == 3:  # read within one snapshot (a writer may replace it meanwhile)
            return view.consistent(Path(path), f, lambda snap: _select(view.open_view(Path(path), snap), path,
                                                                        layer, rows, lazy))
        dims = {n: f["features"][n].shape[1] for n in f["features"]}
        shape = f["features"][layer].shape if layer in dims else None
        v = view.View(Path(path), snapshot.Snapshot(classes=_decode(f["classes"][()]).tolist(),
                                                     provenance=json.loads(f.attrs["provenance"]), dims=dims),
                      [], f["keys"][()], f["stamps"][:0], f["labels"][()], None, None, None, None, None)
    return _select(v, path, layer, rows, lazy, _StoreFeatures(Path(path), layer, shape) if shape else None)


def _select(v: view.View, path, layer: str, rows, lazy: bool, X=None) -> Features:
    """The rows ``rows`` of a store's layer, read now or (``lazy``) when taken."""
    if layer not in v.snap.dims:
        raise StoreError(f"{path}: no layer {layer!r} (has {', '.join(v.snap.dims)})")
    X = v.features(layer) if X is None else X
    sel = np.arange(len(v.labels))
    if rows is not None:
        sel = sel[rows]
        if not isinstance(rows, slice):
            sel = np.asarray(sel, np.int64).reshape(-1)
    if not lazy:
        X = X.take(sel)
    elif rows is not None:
        X = Taken(X, sel)
    return Features(X, v.labels[sel], _decode(v.keys[sel]), v.snap.classes, v.snap.provenance, layer,
                    Path(path))


def iter_batches(path: str | os.PathLike, rows_per_batch: int, layer: str = DEFAULT_LAYER):
    """The store's rows of ``layer`` as :class:`Features` of at most ``rows_per_batch``
    rows each, in order: a store of any size read in bounded memory."""
    lazy = load(path, layer, lazy=True)
    for start in range(0, len(lazy.y), rows_per_batch):
        stop = min(start + rows_per_batch, len(lazy.y))
        yield Features(lazy.X[start:stop], lazy.y[start:stop], lazy.keys[start:stop], lazy.classes,
                       lazy.provenance, layer, lazy.path)


def manifest(path: str | os.PathLike) -> str | None:
    """The digest of the source listing a store was written from; None if unreadable."""
    try:
        with _open(path) as f:
            return str(f.attrs["manifest"])
    except StoreError:
        return None


def info(path: str | os.PathLike) -> dict:
    """Provenance, sizes and the skipped files of a store, without loading features."""
    with _open(path) as f:
        if f.attrs["format"] == 3:
            return view.consistent(Path(path), f, lambda snap: _info3(Path(path), snap))
        return {
            "path": str(path),
            "rows": int(f["keys"].shape[0]),
            "classes": _decode(f["classes"][()]).tolist(),
            "features": {n: list(f["features"][n].shape) for n in f["features"]},
            "skipped": [
                {"key": printable(k), "reason": r}
                for k, r in zip(_decode(f["skipped/keys"][()]).tolist(),
                                _decode(f["skipped/reasons"][()]).tolist())
            ],
            "provenance": json.loads(f.attrs["provenance"]),
            "bytes": Path(path).stat().st_size,
        }


def verify(path: str | os.PathLike) -> list[str]:
    """Problems found in a store (an empty list means it is sound): every dataset against
    its recorded checksum, the attributes against theirs, row counts and label range."""
    problems = []
    try:
        with _open(path) as f:
            if f.attrs["format"] == 3:
                return view.consistent(Path(path), f, lambda snap: _verify3(Path(path), snap))
            strict = f.attrs["format"] >= 2
            if strict and f.attrs.get("sha256") != _attrs_digest(f.attrs["provenance"], f.attrs["manifest"]):
                problems.append("provenance or manifest does not match its recorded checksum")
            n = f["keys"].shape[0]
            for name in ("stamps", "sha256", "labels"):
                if f[name].shape[0] != n:
                    problems.append(f"{name} has {f[name].shape[0]} rows, keys has {n}")
            names = ["keys", "stamps", "sha256", "labels", "classes", "skipped/keys", "skipped/stamps",
                     "skipped/reasons"] if strict else []
            for name in names:
                recorded = f[name].attrs.get("sha256")
                if recorded != hashlib.sha256(np.ascontiguousarray(f[name][()]).tobytes()).hexdigest():
                    problems.append(f"{name} does not match its recorded checksum")
            n_classes = f["classes"].shape[0]
            labels = f["labels"][()]
            if labels.size and (labels.min() < -1 or labels.max() >= n_classes):
                problems.append("labels point outside the class list")
            for name in f["features"]:
                problems += _verify_features(f["features"][name], name, n)
    except StoreError as exc:
        problems.append(str(exc))
    except (OSError, RuntimeError) as exc:  # damage that h5py finds only when reading data
        problems.append(f"{path}: unreadable ({str(exc).splitlines()[0]})")
    return problems


def _verify_features(ds, name: str, n: int) -> list[str]:
    """Checksum and finiteness of one features dataset, read block by block."""
    problems = []
    if ds.shape[0] != n:
        problems.append(f"features/{name} has {ds.shape[0]} rows, keys has {n}")
    h, finite = hashlib.sha256(), True
    for start in range(0, ds.shape[0], WRITE_BLOCK):
        block = np.ascontiguousarray(ds[start:start + WRITE_BLOCK])
        h.update(block.tobytes())
        finite = finite and bool(np.isfinite(block).all())
    if h.hexdigest() != ds.attrs.get("sha256"):
        problems.append(f"features/{name} does not match its recorded checksum")
    if not finite:
        problems.append(f"features/{name} holds NaN or infinite values")
    return problems


def check_provenance(path: str | os.PathLike, found: dict, wanted: dict) -> None:
    """Refuse a store whose provenance ``found`` differs from ``wanted`` in any of the
    keys ``wanted`` gives (backbone identity, precision, runtime, source)."""
    differs = [k for k in wanted if found.get(k) != wanted[k]]
    if differs:
        raise StoreError(f"{path}: was written with other {', '.join(differs)} than requested "
                         f"(it holds {json.dumps({k: found.get(k) for k in differs}, sort_keys=True)}); "
                         f"refusing to use it: remove it with `featx cache rm {Path(path).name}`")



# --- format 3: a manifest and shards ---------------------------------------------------


def _contents(v: view.View, lazy: bool) -> StoreContents:
    feats = {n: v.features(n) for n in v.snap.dims}
    if not lazy:
        feats = {n: x.take(np.arange(x.shape[0])) for n, x in feats.items()}
    rows = Rows(_decode(v.keys), _decode(v.stamps), _decode(v.sha256()), feats, _decode(v.skipped_keys),
                _decode(v.skipped_stamps), v.skipped_reasons.astype(str))
    return StoreContents(rows, v.labels, v.snap.classes, v.snap.provenance, v.snap.listing)


def _info3(path: Path, snap: snapshot.Snapshot) -> dict:
    """From the manifest, and the shards' skipped files only: nothing in proportion to the rows."""
    keys, reasons = view.live_skipped(path, snap)
    where = shards.folder(path)
    size = path.stat().st_size + sum((where / p.name).stat().st_size for p in snap.shards + snap.dead)
    return {
        "path": str(path),
        "rows": snap.rows,
        "classes": snap.classes,
        "features": {n: [snap.rows, d] for n, d in snap.dims.items()},
        "skipped": [{"key": printable(k), "reason": r}
                    for k, r in zip(_decode(keys).tolist(), reasons.tolist())],
        "provenance": snap.provenance,
        "bytes": size,
        "shards": len(snap.shards),
        "dead": int(sum(p.rows for p in snap.dead)),
    }


def _verify3(path: Path, snap: snapshot.Snapshot) -> list[str]:
    where, problems = shards.folder(path), []
    for part in snap.shards + snap.dead:
        if not (where / part.name).is_file():  # a writer may have just replaced the manifest
            raise StoreError(f"{path}: {part.name} named by the manifest is missing")
        problems += shards.verify(where / part.name, part.digest)
    if not problems:
        v = view.open_view(path, snap)
        if len(v.keys) != snap.rows:
            problems.append(f"{path}: {len(v.keys)} live rows, the manifest says {snap.rows}")
        if len(v.labels) and (v.labels.min() < -1 or v.labels.max() >= len(snap.classes)):
            problems.append("labels point outside the class list")
    return problems
