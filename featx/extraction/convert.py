"""Stores of earlier featx versions, taken over by the next update without rewriting them.

A format-1 or format-2 store (one HDF5 file) becomes the first shard of a format-3 store
(a hard link; the manifest then replaces the file's name), and the journal chunks an
interrupted run of such a version left become commits.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from ..data.sources.listing import decode, encode
from ..store import Journal, shards, snapshot
from ..store.snapshot import Part, Snapshot


def encoded(a) -> np.ndarray:
    return encode(np.asarray(a)) if len(a) else np.zeros(0, "S1")



def commit_entries(rows) -> shards.Entries:
    """What a commit holds of embedded rows, features aside: unlabelled (labels are the
    listing's, given when the rows are copied into the store's shards)."""
    return shards.Entries(encoded(rows.keys), encoded(rows.stamps), np.full(len(rows), -1, np.int32), [],
                          encoded(rows.skipped_keys), encoded(rows.skipped_stamps),
                          np.asarray(rows.skipped_reasons, str), {})


def convert_earlier(path: Path, folder: Path) -> None:
    """Make a format-1 or format-2 store (one file) the first shard of a format-3 one,
    and an interrupted earlier run's journal chunks commits; nothing is rewritten."""
    journal = Journal(path)
    for chunk in journal.chunks():
        try:
            rows = journal._lazy(chunk)
        except Exception:
            chunk.unlink()
            continue
        folder.mkdir(parents=True, exist_ok=True)
        feats = {n: x.take(np.arange(x.shape[0])) for n, x in rows.features.items()}
        shards.write(folder / shards.new_name(), commit_entries(rows), feats, rows.sha256)
        chunk.unlink()
    journal.clear()
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            if fmt not in (1, 2):
                return
            classes = decode(f["classes"][()]).tolist()
            rows, skipped = int(f["keys"].shape[0]), int(f["skipped/keys"].shape[0])
            provenance = json.loads(f.attrs["provenance"])
            dims = {n: int(f["features"][n].shape[1]) for n in f["features"]}
    except (OSError, KeyError):
        return
    folder.mkdir(parents=True, exist_ok=True)
    name = shards.new_name()
    try:
        os.link(path, folder / name)  # the old file itself becomes the shard
    except OSError:
        shutil.copy2(path, folder / name)
    part = Part(name, rows, skipped, shards.recorded_digest(folder / name))
    snapshot.write(path, Snapshot([part], [], classes, [], provenance, "", dims, rows, skipped))
