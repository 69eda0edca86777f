"""The manifest of a format-3 store: which shards and tombstones make the store now.

The store's path (``<name>.h5``) holds the manifest: a small HDF5 file whose one
dataset is a JSON document (shards with their row counts and digests, tombstone files,
class names, the files the source listing could not use, provenance), and whose
attributes repeat its format and the digest of the source listing. A run writes its new
shards and tombstones first and the manifest last, by rename, so a reader always sees
one consistent snapshot and a killed run leaves the previous one intact. Its size grows
with the number of shards (about 150 bytes each), not with the number of images.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..core.errors import StoreError
from ..core.files import atomic_path

FORMAT = 3


@dataclass
class Part:
    """A shard (or tombstone file) named by the manifest."""

    name: str
    rows: int
    skipped: int
    digest: str


@dataclass
class Snapshot:
    shards: list[Part] = field(default_factory=list)
    dead: list[Part] = field(default_factory=list)  # tombstone files (rows: entries they name)
    classes: list[str] = field(default_factory=list)
    problems: list[list[str]] = field(default_factory=list)  # [key, reason]: listed files not used
    provenance: dict = field(default_factory=dict)
    listing: str = ""  # digest of the source listing written from ("": recheck next run)
    dims: dict[str, int] = field(default_factory=dict)  # features per layer
    rows: int = 0  # live rows
    skipped: int = 0  # live skipped files (decode failures), problems aside

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        d = json.loads(text)
        d["shards"] = [Part(**p) for p in d["shards"]]
        d["dead"] = [Part(**p) for p in d["dead"]]
        return cls(**d)


def is_manifest(f: h5py.File) -> bool:
    return f.attrs.get("format") == FORMAT and f.attrs.get("kind") == "manifest"


def write(path: Path, snap: Snapshot) -> None:
    """Replace the manifest atomically."""
    text = snap.to_json().encode()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver="v108") as f:
            f.attrs["format"], f.attrs["kind"] = FORMAT, "manifest"
            f.attrs["manifest"] = snap.listing
            f.attrs["sha256"] = hashlib.sha256(text).hexdigest()
            f["manifest.json"] = np.frombuffer(text, dtype=np.uint8)


def read(path: Path, f: h5py.File | None = None) -> Snapshot:
    """The manifest of the store at ``path`` (an open file ``f`` is used when given)."""
    if f is None:
        try:
            with h5py.File(path, "r") as g:
                return read(path, g)
        except OSError as exc:
            raise StoreError(f"{path}: not a readable HDF5 store ({exc})") from None
    raw = f["manifest.json"][()].tobytes()
    if hashlib.sha256(raw).hexdigest() != f.attrs.get("sha256"):
        raise StoreError(f"{path}: the manifest does not match its recorded checksum")
    return Snapshot.from_json(raw.decode())
