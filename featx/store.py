"""The HDF5 embedding store, and the journal that makes writing it crash-safe.

A store is one HDF5 file, always written whole to a temporary name and renamed into
place, so a reader never sees a half-written store. Work in progress goes to a journal
folder beside it (``<store>.journal/``): each committed batch group is an ``.npz`` file,
itself written to a temporary name, fsynced and renamed (its members carry zip CRCs, so
a damaged chunk is found and recomputed). A killed run loses at most the batches after
its last commit; the next run reads the journal and embeds only the rest.

Layout of a store::

    keys, stamps, sha256, labels      one row per embedded image, in source order
    classes                           class names; labels index into them (-1: none)
    features/<name>                   float32 (rows, dim); "embedding" is the default
    skipped/{keys,stamps,reasons}     files that were not embedded, and why
    attrs: provenance (JSON), manifest (digest of the source listing), format, sha256

Every dataset holds the SHA-256 of its bytes in its ``sha256`` attribute (format 2).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import files
from .errors import StoreError
from .files import atomic_path

FORMAT = 2  # 2: a checksum on every dataset and on the attributes; 1: on the features only
FORMATS = (1, 2)  # what this version reads
DEFAULT_LAYER = "embedding"  # the pooled penultimate features; other layers by their names
SUFFIX = ".h5"


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


@dataclass
class Rows:
    """Embedded rows (and skipped files) held in memory: what a batch group or store holds."""

    keys: np.ndarray  # str
    stamps: np.ndarray  # str
    sha256: np.ndarray  # str
    features: dict[str, np.ndarray]
    skipped_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    skipped_stamps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    skipped_reasons: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def concat(parts: list["Rows"], names: list[str], dims: dict[str, int]) -> "Rows":
        if len(parts) == 1:  # nothing to join: no copy of the features
            return parts[0]
        def cat(attr):
            arrays = [np.asarray(getattr(p, attr), dtype=str) for p in parts]
            return np.concatenate(arrays) if arrays else np.zeros(0, dtype=str)

        def stack(n):
            xs = [p.features[n] for p in parts]
            if not xs:
                return np.zeros((0, dims[n]), np.float32)
            return np.concatenate(xs) if all(isinstance(x, np.ndarray) for x in xs) else Stacked(xs)

        feats = {n: stack(n) for n in names}
        return Rows(cat("keys"), cat("stamps"), cat("sha256"), feats,
                    cat("skipped_keys"), cat("skipped_stamps"), cat("skipped_reasons"))


# --- features read only when written ----------------------------------------------------
# An extraction's rows come from the old store, the journal and this run; the new store
# is written from them block by block, so memory does not grow with the number of rows.
# Each array-like has ``shape`` and ``take(rows)`` (an int array, any order).

WRITE_BLOCK = 8192  # rows per block when a store is written from array-likes


def take(x, rows: np.ndarray) -> np.ndarray:
    return x[rows] if isinstance(x, np.ndarray) else x.take(rows)


class Stacked:
    """Array-likes one after another, as one."""

    def __init__(self, parts: list):
        self.parts = parts
        self.offsets = np.cumsum([0] + [p.shape[0] for p in parts])
        self.shape = (int(self.offsets[-1]), parts[0].shape[1])

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.shape[1]), np.float32)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for i in np.unique(which):
            mask = which == i
            out[mask] = take(self.parts[i], rows[mask] - self.offsets[i])
        return out


class Taken:
    """The rows ``sel`` of an array-like, in that order."""

    def __init__(self, x, sel: np.ndarray):
        self.x, self.sel = x, sel
        self.shape = (len(sel), x.shape[1])

    def take(self, rows: np.ndarray) -> np.ndarray:
        return take(self.x, self.sel[rows])


class _NpzMember:
    """One array of a journal chunk, loaded when its rows are needed."""

    def __init__(self, path: Path, key: str, shape: tuple[int, int]):
        self.path, self.key, self.shape = path, key, shape

    def take(self, rows: np.ndarray) -> np.ndarray:
        with np.load(self.path, allow_pickle=False) as z:
            return z[self.key][rows]


class _StoreFeatures:
    """A store's features, read from the file when their rows are needed."""

    def __init__(self, path: Path, name: str, shape: tuple[int, int]):
        self.path, self.name, self.shape = path, name, shape

    def take(self, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros((0, self.shape[1]), np.float32)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        with h5py.File(self.path, "r") as f:
            ds = f["features"][self.name]
            if hi - lo <= 4 * len(rows) + WRITE_BLOCK:  # one contiguous read
                return ds[lo:hi][rows - lo]
            order = np.argsort(rows)
            uniq, inverse = np.unique(rows[order], return_inverse=True)
            out = np.empty((len(rows), self.shape[1]), np.float32)
            out[order] = ds[uniq][inverse]
            return out


# --- the journal -------------------------------------------------------------------------


class Journal:
    """Committed batch groups of an unfinished extraction, one ``.npz`` file each.

    Under ``torchrun`` every process commits its own chunks (``writer`` names them, e.g.
    ``rank001-00000003.npz``); :meth:`read` returns everyone's.
    """

    def __init__(self, store_path: Path, writer: str = ""):
        self.dir = store_path.with_name(store_path.name + ".journal")
        self.prefix = f"{writer}-" if writer else ""

    def chunks(self) -> list[Path]:
        return sorted(self.dir.glob("*.npz")) if self.dir.is_dir() else []

    def commit(self, rows: Rows) -> Rows:
        """Write ``rows`` as this writer's next chunk; returns them with features left on disk."""
        self.dir.mkdir(parents=True, exist_ok=True)
        mine = [p for p in self.chunks() if p.stem.removeprefix(self.prefix).isdigit()
                and p.name.startswith(self.prefix)]
        seq = int(mine[-1].stem.removeprefix(self.prefix)) + 1 if mine else 0
        arrays = {
            "keys": rows.keys, "stamps": rows.stamps, "sha256": rows.sha256,
            "skipped_keys": rows.skipped_keys, "skipped_stamps": rows.skipped_stamps,
            "skipped_reasons": rows.skipped_reasons,
        }
        arrays.update({f"features/{n}": f for n, f in rows.features.items()})
        chunk = self.dir / f"{self.prefix}{seq:08d}.npz"
        with atomic_path(chunk) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
        feats = {n: _NpzMember(chunk, f"features/{n}", f.shape) for n, f in rows.features.items()}
        return Rows(rows.keys, rows.stamps, rows.sha256, feats, rows.skipped_keys, rows.skipped_stamps,
                    rows.skipped_reasons)

    def read(self) -> list[Rows]:
        """The committed chunks, their features left on disk until needed."""
        parts = []
        for chunk in self.chunks():
            try:
                parts.append(self._lazy(chunk))
            except Exception:  # a chunk that cannot be read is recomputed, not trusted
                continue
        return parts

    @staticmethod
    def _lazy(chunk: Path) -> Rows:
        with np.load(chunk, allow_pickle=False) as z:
            feats = {}
            for k in z.files:
                if k.startswith("features/"):
                    x = z[k]  # read once: a damaged chunk fails here, not while writing the store
                    feats[k.split("/", 1)[1]] = _NpzMember(chunk, k, x.shape)
            return Rows(z["keys"], z["stamps"], z["sha256"], feats,
                        z["skipped_keys"], z["skipped_stamps"], z["skipped_reasons"])

    def clear(self) -> None:
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                p.unlink()
            self.dir.rmdir()


@contextmanager
def write_lock(store_path: Path, busy: str | None = None):
    """One writer per store: a second process fails at once with a clear message
    (``busy``, when given, replaces the store's); see :func:`featx.files.write_lock`."""
    with files.write_lock(store_path, busy or f"{store_path}: another featx process is writing this store; "
                          "wait for it to finish", StoreError):
        yield


# --- whole stores ---------------------------------------------------------------------------


def slug(name: str) -> str:
    """``name`` made safe as a file name: runs of other characters become one '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "x"


def store_path_for(cache_dir: str | os.PathLike, source_name: str, backbone_name: str, key: str) -> Path:
    return Path(cache_dir) / f"{slug(source_name)}__{slug(backbone_name)}__{key[:12]}{SUFFIX}"


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def write_store(path: Path, rows: Rows, labels: np.ndarray, classes: list[str], provenance: dict, manifest: str) -> None:
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


def _put(group, name: str, data: np.ndarray) -> None:
    group[name] = data
    group[name].attrs["sha256"] = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def _attrs_digest(provenance: str, manifest: str) -> str:
    return hashlib.sha256(json.dumps([provenance, manifest]).encode()).hexdigest()


def _fill(f, rows: Rows, labels, classes, provenance: dict, manifest: str) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
    f.attrs["manifest"] = manifest
    f.attrs["sha256"] = _attrs_digest(f.attrs["provenance"], manifest)
    _put(f, "keys", _encode(rows.keys))
    _put(f, "stamps", _encode(rows.stamps))
    _put(f, "sha256", _encode(rows.sha256))
    _put(f, "labels", np.asarray(labels, dtype=np.int64))
    _put(f, "classes", _encode(classes))
    for name, x in rows.features.items():
        # contiguous layout (no chunk padding), filled block by block
        ds = f.create_dataset(f"features/{name}", shape=x.shape, dtype=np.float32)
        h = hashlib.sha256()
        for start in range(0, x.shape[0], WRITE_BLOCK):
            block = np.ascontiguousarray(take(x, np.arange(start, min(start + WRITE_BLOCK, x.shape[0]))),
                                         dtype=np.float32)
            ds[start:start + len(block)] = block
            h.update(block.tobytes())
        ds.attrs["sha256"] = h.hexdigest()
    _put(f, "skipped/keys", _encode(rows.skipped_keys))
    _put(f, "skipped/stamps", _encode(rows.skipped_stamps))
    _put(f, "skipped/reasons", _encode(rows.skipped_reasons))


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
        if f.attrs.get("format") not in FORMATS:
            raise StoreError(f"{path}: not a featx store (format {f.attrs.get('format')!r})")
        yield f
    except KeyError as exc:
        raise StoreError(f"{path}: store is missing {exc}") from None
    finally:
        f.close()


def read_rows(path: str | os.PathLike, lazy: bool = False) -> tuple[Rows, np.ndarray, list[str], dict, str]:
    """Everything in a store: (rows, labels, classes, provenance, manifest). With ``lazy``
    the features stay in the file until their rows are taken."""
    with _open(path) as f:
        feats = {name: (_StoreFeatures(Path(path), name, f["features"][name].shape) if lazy
                        else f["features"][name][()]) for name in f["features"]}
        rows = Rows(
            _decode(f["keys"][()]), _decode(f["stamps"][()]), _decode(f["sha256"][()]), feats,
            _decode(f["skipped/keys"][()]), _decode(f["skipped/stamps"][()]), _decode(f["skipped/reasons"][()]),
        )
        return rows, f["labels"][()], list(_decode(f["classes"][()])), json.loads(f.attrs["provenance"]), str(f.attrs["manifest"])


def load(path: str | os.PathLike, layer: str = DEFAULT_LAYER) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(X, y, keys, classes)`` of a store: float32 features, int64 labels, str keys."""
    with _open(path) as f:
        if layer not in f["features"]:
            raise StoreError(f"{path}: no layer {layer!r} (has {', '.join(f['features'])})")
        return f["features"][layer][()], f["labels"][()], _decode(f["keys"][()]), list(_decode(f["classes"][()]))


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
        return {
            "path": str(path),
            "rows": int(f["keys"].shape[0]),
            "classes": list(_decode(f["classes"][()])),
            "features": {n: list(f["features"][n].shape) for n in f["features"]},
            "skipped": [
                {"key": printable(k), "reason": r}
                for k, r in zip(_decode(f["skipped/keys"][()]), _decode(f["skipped/reasons"][()]))
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


def list_stores(cache_dir: str | os.PathLike) -> list[Path]:
    cache_dir = Path(cache_dir)
    return sorted(cache_dir.glob(f"*{SUFFIX}")) if cache_dir.is_dir() else []


def resolve(cache_dir: str | os.PathLike, name: str) -> Path:
    """A store given by path, or by file name (or unique prefix) in the cache folder."""
    p = Path(name)
    if p.is_file():
        return p
    matches = [s for s in list_stores(cache_dir) if s.name.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise StoreError(f"{name}: no such store (in {cache_dir} or as a path)")
    raise StoreError(f"{name}: matches {len(matches)} stores in {cache_dir}; give more of the name")


def remove(path: Path) -> None:
    """Delete a store with its journal and lock file; refused while a run is writing it."""
    with write_lock(path):
        Journal(path).clear()
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".lock").unlink(missing_ok=True)
