"""Reading a format-3 store: its live rows, in key order, over all its shards.

The manifest names the shards and tombstone files; an entry named by a tombstone is not
live. Rows are returned in key order (the order every source lists its items in), so a
store reads the same whatever history of runs, processes and shard sizes wrote it;
``shard`` and ``local`` map each row to where its features are.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import StoreError
from ..data.sources.listing import joined
from . import shards, snapshot
from .snapshot import Snapshot


@dataclass
class View:
    path: Path
    snap: Snapshot
    paths: list[Path]  # the live shards' files
    keys: np.ndarray  # bytes, in key order
    stamps: np.ndarray  # bytes
    labels: np.ndarray  # int64, indexing snap.classes
    shard: np.ndarray  # int32: index into paths
    local: np.ndarray  # int32: row within that shard
    skipped_keys: np.ndarray  # bytes: decode failures, then the listing's problems
    skipped_stamps: np.ndarray
    skipped_reasons: np.ndarray  # str

    def features(self, layer: str) -> shards.ShardFeatures:
        return shards.ShardFeatures(self.paths, layer, self.shard, self.local, self.snap.dims[layer])

    def sha256(self) -> np.ndarray:
        """Every row's SHA-256 (read from the shards)."""
        out = np.empty(len(self.keys), dtype="S64")
        for s, path in enumerate(self.paths):
            sel = np.flatnonzero(self.shard == s)
            order = np.argsort(self.local[sel])
            out[sel[order]] = shards.read_column(path, "sha256", self.local[sel][order])
        return out


def consistent(path: Path, f, read):
    """``read(snapshot)`` of the manifest open as ``f``; when a writer replaced the
    manifest meanwhile and removed a shard it named, again with the new one."""
    snap = snapshot.read(path, f)
    for _ in range(10):
        try:
            return read(snap)
        except (StoreError, OSError):
            try:
                newer = snapshot.read(path)
            except StoreError:
                raise
            if newer == snap:
                raise
            snap = newer
    return read(snap)


def dead_entries(path: Path, snap: Snapshot) -> dict[str, np.ndarray]:
    """Shard name -> its entries named by the manifest's tombstone files."""
    where = shards.folder(path)
    found: dict[str, list] = {}
    for part in snap.dead:
        names, entries = shards.read_dead(where / part.name)
        for name in np.unique(names):
            found.setdefault(name.decode(), []).append(entries[names == name])
    return {k: np.unique(np.concatenate(v)) for k, v in found.items()}


def open_view(path: Path, snap: Snapshot | None = None) -> View:
    snap = snap or snapshot.read(path)
    where, dead = shards.folder(path), dead_entries(path, snap)
    index = {c: i for i, c in enumerate(snap.classes)}
    parts = {a: [] for a in ("keys", "stamps", "labels", "shard", "local", "sk", "ss", "sr")}
    for s, part in enumerate(snap.shards):
        e = shards.read_entries(where / part.name)
        live = np.ones(e.size, bool)
        live[dead.get(part.name, np.zeros(0, np.int64))] = False
        rows = np.flatnonzero(live[:e.rows])
        lookup = np.array([index.get(c, -1) for c in e.classes] + [-1], dtype=np.int64)
        parts["keys"].append(e.keys[rows])
        parts["stamps"].append(e.stamps[rows])
        parts["labels"].append(lookup[e.labels[rows]])
        parts["shard"].append(np.full(len(rows), s, np.int32))
        parts["local"].append(rows.astype(np.int32))
        sk = live[e.rows:]
        parts["sk"].append(e.skipped_keys[sk])
        parts["ss"].append(e.skipped_stamps[sk])
        parts["sr"].append(e.skipped_reasons[sk].astype(str))
    keys = joined(parts["keys"])
    order = np.argsort(keys, kind="stable")

    def cat(name, dtype):
        return np.concatenate(parts[name]) if parts[name] else np.zeros(0, dtype)

    problem_keys, problem_reasons = _problems(snap)
    sk = joined(parts["sk"] + [problem_keys])
    ss = np.concatenate([joined(parts["ss"]), np.zeros(len(problem_keys), "S1")])
    sr = np.concatenate([cat("sr", str).astype(str), problem_reasons])
    return View(path, snap, [where / p.name for p in snap.shards], keys[order],
                joined(parts["stamps"])[order], cat("labels", np.int64)[order],
                cat("shard", np.int32)[order], cat("local", np.int32)[order], sk, ss, sr)


def live_skipped(path: Path, snap: Snapshot) -> tuple[np.ndarray, np.ndarray]:
    """(keys as bytes, reasons) of the store's skipped files, problems included, read
    without its rows: what ``featx cache info`` lists."""
    where, dead = shards.folder(path), dead_entries(path, snap)
    keys, reasons = [], []
    for part in snap.shards:
        if not part.skipped:
            continue
        k = shards.read_column(where / part.name, "skipped/keys", np.arange(part.skipped))
        r = shards.read_column(where / part.name, "skipped/reasons", np.arange(part.skipped))
        live = np.ones(part.skipped, bool)
        gone = dead.get(part.name, np.zeros(0, np.int64)) - part.rows
        live[gone[gone >= 0]] = False
        keys.append(k[live])
        reasons.append(r[live].astype(str) if r.dtype.kind != "S" else np.char.decode(r[live], "utf-8"))
    problem_keys, problem_reasons = _problems(snap)
    return joined(keys + [problem_keys]), np.concatenate(reasons + [problem_reasons])


def _problems(snap: Snapshot) -> tuple[np.ndarray, np.ndarray]:
    """The listing's problems: keys as bytes, reasons."""
    problems = np.array(snap.problems, dtype=str).reshape(-1, 2)
    keys = np.char.encode(problems[:, 0], "utf-8", "surrogateescape") if len(problems) else np.zeros(0, "S1")
    return keys, problems[:, 1]
