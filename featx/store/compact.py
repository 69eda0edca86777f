"""``featx cache compact``: rewrite the shards that are mostly dead, and only those."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import shards, snapshot, view
from .cache import write_lock
from .snapshot import Part

DEAD_FRACTION = 0.25  # a shard is rewritten once this much of it is dead


def compact(path: Path, dead_fraction: float = DEAD_FRACTION) -> dict:
    """Copy the live entries of every shard whose dead fraction reaches ``dead_fraction``
    into one new shard per ``SHARD_ROWS`` rows, drop the old shards and the tombstones
    that named only them; returns what was done."""
    path = Path(path)
    with write_lock(path):
        snap = snapshot.read(path)
        where, dead = shards.folder(path), view.dead_entries(path, snap)
        chosen = [p for p in snap.shards
                  if len(dead.get(p.name, ())) >= dead_fraction * max(p.rows + p.skipped, 1)]
        if not chosen:
            return {"rewritten": 0, "written": 0, "freed_entries": 0}
        kept = [p for p in snap.shards if p not in chosen]
        sub = snapshot.Snapshot(chosen, snap.dead, snap.classes, [], snap.provenance, "", snap.dims)
        v = view.open_view(path, sub)
        parts, sha = [], v.sha256()
        for start in range(0, max(len(v.keys), 1), shards.SHARD_ROWS):
            rows = np.arange(start, min(start + shards.SHARD_ROWS, len(v.keys)))
            skipped = np.arange(len(v.skipped_keys)) if start == 0 else np.zeros(0, np.int64)
            parts.append(_write(where, v, rows, skipped, sha[rows]))
        live = {p.name for p in kept + parts}
        dead_parts = [d for d in snap.dead if any(n.decode() in live
                                                  for n in np.unique(shards.read_dead(where / d.name)[0]))]
        new = snapshot.Snapshot(kept + parts, dead_parts, snap.classes, snap.problems, snap.provenance,
                                snap.listing, snap.dims, snap.rows, snap.skipped)
        snapshot.write(path, new)
        named = {p.name for p in new.shards + new.dead}
        for p in chosen + snap.dead:  # only what it replaced: an interrupted run's commits stay
            if p.name not in named:
                (where / p.name).unlink(missing_ok=True)
        freed = sum(len(dead.get(p.name, ())) for p in chosen)
        return {"rewritten": len(chosen), "written": len(parts), "freed_entries": freed}


def _write(where: Path, v: view.View, rows: np.ndarray, skipped: np.ndarray, sha: np.ndarray) -> Part:
    snap = v.snap
    entries = shards.Entries(v.keys[rows], v.stamps[rows], v.labels[rows].astype(np.int32), snap.classes,
                             v.skipped_keys[skipped], v.skipped_stamps[skipped], v.skipped_reasons[skipped],
                             dict(snap.dims))
    feats = {n: shards.ShardFeatures(v.paths, n, v.shard[rows], v.local[rows], d)
             for n, d in snap.dims.items()}
    name = shards.new_name()
    return Part(name, len(rows), len(skipped), shards.write(where / name, entries, feats, sha))
