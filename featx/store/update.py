"""What an update of a format-3 store must do, found without one object per image.

:class:`Scan` matches a source listing (in key order) against every entry of the
store's live shards and of the shard files no manifest names yet (commits of this run
or of an interrupted one), one shard at a time, with ``np.searchsorted``. For every
listed image it records where a usable entry is (``file``, ``entry``) and of what
``kind``; for every live entry that is no longer wanted, a tombstone. Memory: the
listing plus 9 bytes per listed image, whatever the store's size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.sources.listing import Listing, encode
from . import shards, view
from .snapshot import Snapshot

NONE, ROW, SKIPPED, STALE, RELABEL, RESTAMP, TRANSIENT = range(7)
_RANK = np.array([0, 3, 3, 1, 3, 3, 2], np.int8)  # a better entry replaces a worse one
# ROW / SKIPPED: usable as it is; STALE: the key with another stamp (usable if the file's
# bytes still match, then RESTAMP); RELABEL: a row whose label changed; TRANSIENT: a file
# that could not be read this run (recorded, retried next run)


def pending_files(path: Path, snap: Snapshot | None) -> list[Path]:
    """Shard files in the store's folder that its manifest does not name."""
    where = shards.folder(path)
    if not where.is_dir():
        return []
    named = {p.name for p in (snap.shards + snap.dead)} if snap else set()
    return sorted(p for p in where.iterdir() if p.suffix == ".h5" and not p.name.endswith(shards.DEAD)
                  and not p.name.startswith(".") and p.name not in named)


class Scan:
    """The listing matched against a store's entries (see the module docstring)."""

    def __init__(self, path: Path, snap: Snapshot | None, listing: Listing, classes: list[str],
                 accumulates: bool = False, problems=()):
        self.path, self.snap, self.listing, self.accumulates = path, snap, listing, accumulates
        # an accumulating store keeps the rows of files it does not list, except those
        # listed as problems now (a file that is gone)
        self.gone = np.sort(encode([k for k, _ in problems])) if accumulates else np.zeros(0, "S1")
        self.live = [shards.folder(path) / p.name for p in snap.shards] if snap else []
        self.files: list[Path] = []
        n = len(listing)
        self.file = np.full(n, -1, np.int32)
        self.entry = np.zeros(n, np.int32)
        self.kind = np.zeros(n, np.int8)
        self.dead: dict[int, list[np.ndarray]] = {}  # live shard -> entries to tombstone
        self.index = {c: i for i, c in enumerate(classes)}
        self.rows_in: list[int] = []  # rows of each file (its skipped files follow)
        self._transient: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._add(self.live, view.dead_entries(path, snap) if snap else {})
        self.add_commits()

    def add_commits(self) -> None:
        """Match the commits written since the scan (this run's): only they are read."""
        seen = set(self.files)
        self._add([f for f in pending_files(self.path, self.snap) if f not in seen], {})

    def _add(self, files: list[Path], dead: dict[str, np.ndarray]) -> None:
        for f in files:
            i = len(self.files)
            self.files.append(f)
            self.rows_in.append(0)
            try:
                e = shards.read_entries(f)
            except Exception:  # an unreadable uncommitted file is recomputed, not trusted
                if i < len(self.live):
                    raise
                continue
            self.rows_in[i] = e.rows
            live = np.ones(e.size, bool)
            if i < len(self.live):
                live[dead.get(f.name, np.zeros(0, np.int64))] = False
            self._rows(i, e, live[:e.rows])
            self._skipped(i, e, live[e.rows:])
        self._settle()

    def _settle(self) -> None:
        """Bury the store's records of read failures that something better replaced."""
        for i, pos, entries in self._transient:
            self._bury(i, entries[(self.file[pos] != i) | (self.entry[pos] != entries)])

    def _match(self, keys: np.ndarray, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys_l = self.listing.keys
        pos = np.minimum(np.searchsorted(keys_l, keys), max(len(keys_l) - 1, 0))
        hit = (keys_l[pos] == keys) if len(keys_l) else np.zeros(len(keys), bool)
        exact = hit & (self.listing.stamps[pos] == stamps)
        return pos, hit, exact

    def _take(self, i: int, pos: np.ndarray, entries: np.ndarray, kind, mask: np.ndarray) -> np.ndarray:
        """Record ``kind`` for listed positions ``pos[mask]`` that have nothing better yet;
        returns the mask of those recorded."""
        kind = np.broadcast_to(np.asarray(kind, np.int8), pos.shape)
        free = mask & (_RANK[self.kind[pos]] < _RANK[kind])
        free[free] = _first(pos[free])  # one entry per listed image
        self.file[pos[free]], self.entry[pos[free]], self.kind[pos[free]] = i, entries[free], kind[free]
        return free

    def _rows(self, i: int, e: shards.Entries, live: np.ndarray) -> None:
        pos, hit, exact = self._match(e.keys, e.stamps)
        entries = np.arange(e.rows)
        lookup = np.array([self.index.get(c, -2) for c in e.classes] + [-1], np.int32)
        same_label = lookup[e.labels] == self.listing.labels[pos]
        kind = np.where(same_label, ROW, RELABEL)
        kept = self._take(i, pos, entries, kind, live & exact)
        self._take(i, pos, entries, STALE, live & hit & ~exact)
        if i < len(self.live):  # a live row stays only as the listed image's entry, unchanged
            self._bury(i, entries[live & ~(kept & same_label) & (hit | self._unlisted(e.keys, hit))])

    def _skipped(self, i: int, e: shards.Entries, live: np.ndarray) -> None:
        pos, hit, exact = self._match(e.skipped_keys, e.skipped_stamps)
        entries = e.rows + np.arange(len(e.skipped_keys))
        final = e.skipped_stamps != b""  # a decode failure is final for this content
        kept = self._take(i, pos, entries, SKIPPED, live & exact & final)
        # a read failure is recorded and retried; the store's own record stays while
        # retrying fails again, and goes once the file reads (see _settle)
        failed = live & hit & ~final
        self._take(i, pos, entries, TRANSIENT, failed)
        if i < len(self.live):
            self._bury(i, entries[live & ~kept & ~failed & (hit | self._unlisted(e.skipped_keys, hit))])
            self._transient.append((i, pos[failed], entries[failed]))

    def _unlisted(self, keys: np.ndarray, hit: np.ndarray) -> np.ndarray:
        """Entries that are no longer wanted because their key is not listed."""
        if not self.accumulates:
            return ~hit
        return np.isin(keys, self.gone) if len(self.gone) else np.zeros(len(keys), bool)

    def _bury(self, i: int, entries: np.ndarray) -> None:
        if len(entries):
            self.dead.setdefault(i, []).append(entries)

    def stale(self) -> np.ndarray:
        """Listed positions whose only entry has another stamp: to check by content."""
        return np.flatnonzero(self.kind == STALE)

    def sha256(self, positions: np.ndarray) -> np.ndarray:
        """The recorded SHA-256 of the entries at listed ``positions`` (rows)."""
        out = np.empty(len(positions), "S64")
        for f in np.unique(self.file[positions]):
            sel = np.flatnonzero(self.file[positions] == f)
            rows = self.entry[positions[sel]]
            order = np.argsort(rows)
            out[sel[order]] = shards.read_column(self.files[f], "sha256", rows[order])
        return out

    def todo(self) -> np.ndarray:
        """Listed positions with nothing usable: to embed."""
        return np.flatnonzero((self.kind == NONE) | (self.kind == STALE) | (self.kind == TRANSIENT))

    def copies(self) -> np.ndarray:
        """Listed positions whose entry must be written into a new shard."""
        moved = self.file >= len(self.live)
        return np.flatnonzero(((self.kind != NONE) & (self.kind != STALE))
                              & (moved | (self.kind == RELABEL) | (self.kind == RESTAMP)))

    def tombstones(self) -> tuple[np.ndarray, np.ndarray]:
        """(shard names, entries) of the live entries no longer wanted."""
        names, entries = [], []
        for i, parts in sorted(self.dead.items()):
            e = np.unique(np.concatenate(parts))
            names.append(np.full(len(e), self.live[i].name.encode()))
            entries.append(e)
        if not names:
            return np.zeros(0, "S1"), np.zeros(0, np.int64)
        return np.concatenate(names), np.concatenate(entries)

    def changed(self) -> bool:
        return bool(len(self.copies()) or self.dead)


def _first(pos: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of each value of ``pos``."""
    first = np.zeros(len(pos), bool)
    first[np.unique(pos, return_index=True)[1]] = True
    return first


def remove_unnamed(path: Path, snap: Snapshot) -> None:
    """Delete files in the store's folder that its manifest does not name."""
    where = shards.folder(path)
    named = {p.name for p in snap.shards + snap.dead}
    for p in where.iterdir() if where.is_dir() else []:
        if p.name not in named and not p.name.startswith("."):
            p.unlink(missing_ok=True)
