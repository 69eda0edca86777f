"""The store an extraction writes, owned while it runs: the lock, the scan of what is
already embedded, the commits, and the new snapshot.

Commits are shard files the manifest does not name yet (a killed run leaves them for
the next one to use). :meth:`StoreWriter.finish` writes what changed, and only that,
into new shards (the images embedded by this run and by interrupted ones, rows whose
file was touched but not changed, rows whose label changed), tombstones for the entries
no longer wanted, and then the manifest. Under ``torchrun`` every process commits its
own shard files and writes its part of the new shards; the first process writes the
manifest. The store then reads the same as one process's.
"""
from __future__ import annotations

import hashlib
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import torch

from .. import store
from ..core import distributed
from ..core.errors import FeatxError, SourceError, StoreError, WriteError
from ..core.files import remove_stale_temporaries
from ..core.version import __version__
from ..data.sources.listing import Listing, decode, text
from ..store import Journal, Rows, shards, snapshot
from ..store.snapshot import Part, Snapshot
from ..store.update import NONE, RESTAMP, SKIPPED, STALE, TRANSIENT, Scan, pending_files, remove_unnamed
from .convert import commit_entries
from .convert import convert_earlier as _convert
from .plan import Plan


@dataclass
class ExtractResult:
    path: Path
    rows: int  # images in the store
    embedded: int  # images put through the network in this run
    reused: int  # images whose features came from the store or an interrupted run
    skipped: int  # files recorded as not embedded, with their reasons
    seconds: float  # wall time of the embedding loop
    precision: str
    device: str

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


class StoreWriter:
    """``with StoreWriter(plan) as writer:`` holds the store's lock (one writer per store;
    under torchrun the first process holds it for the job)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.world = distributed.world()
        self.folder = shards.folder(plan.path)
        self.snap: Snapshot | None = None
        self.listing = _in_key_order(plan.source.items)
        self._stack = ExitStack()

    def __enter__(self) -> StoreWriter:
        self.plan.path.parent.mkdir(parents=True, exist_ok=True)
        # an accumulating store is shared by every call that names files: they queue
        wait = self.plan.source.accumulates
        self._stack.enter_context(distributed.job_lock(lambda: store.write_lock(self.plan.path, wait=wait)))
        if self.world.is_main:
            remove_stale_temporaries(self.plan.path)  # left by a run killed mid-write
            if self.folder.is_dir():
                for tmp in self.folder.glob(".*.tmp-*"):
                    remove_stale_temporaries(tmp.with_name(tmp.name.split(".tmp-")[0][1:]))
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._stack.__exit__(*exc)

    def unchanged(self) -> ExtractResult | None:
        """The store as it is, when the source listing has not changed since it was
        written and no interrupted run left work behind; else None."""
        plan = self.plan
        snap = self._snapshot()  # the manifest alone: nothing read in proportion to the store
        if snap is None or snap.listing != plan.manifest or pending_files(plan.path, snap) \
                or Journal(plan.path).chunks():
            return None
        self._check(snap.provenance)
        if plan.on_error == "fail" and snap.skipped + len(snap.problems):
            return None  # todo() finds the skipped file and stops on it
        return self._result(snap, 0, 0.0)

    def _snapshot(self) -> Snapshot | None:
        try:
            with h5py.File(self.plan.path, "r") as f:
                return snapshot.read(self.plan.path, f) if snapshot.is_manifest(f) else None
        except (OSError, StoreError):
            return None

    def todo(self) -> Listing:
        """Scan what is already embedded; returns the items still to embed, in key order."""
        plan = self.plan
        problem = None
        if self.world.is_main:
            try:
                _convert(plan.path, self.folder)
            except Exception as exc:  # every process stops, none waits at the next collective
                problem = exc
        problem = distributed.all_ok(problem) if self.world.size > 1 else problem
        if problem is not None:
            raise problem
        self.snap = self._snapshot()
        if self.snap:
            self._check(self.snap.provenance)
        scan = self.scan = self._scan()
        stale, restamped = scan.stale(), None
        if len(stale) and self.world.is_main:  # hashed once; every process takes the answer
            same = [_same_bytes(plan.source, self.listing[int(p)], sha)
                    for p, sha in zip(stale, scan.sha256(stale))]
            restamped = stale[np.asarray(same, bool)]
        if len(stale):
            scan.kind[distributed.broadcast(restamped)] = RESTAMP
        if plan.on_error == "fail":
            _fail_on_known(plan.source, scan)
        positions = scan.todo()
        if self.world.size > 1 and len(set(distributed.gather(_digest(positions)))) > 1:
            raise StoreError(f"{plan.path}: the processes of this job read the store differently (a file "
                             "that some could not read); nothing was changed: run the job again")
        return self.listing.take(positions)

    def _scan(self) -> Scan:
        source = self.plan.source
        return Scan(self.plan.path, self.snap, self.listing, source.classes, source.accumulates,
                    source.problems)

    def commit(self, rows: Rows) -> Rows:
        """Commit embedded rows as a shard file no manifest names yet; a killed run's
        commits are used by the next run. Returns what the caller keeps of them: their
        count (one placeholder byte per row) and their skipped files; their data are
        in the file, so a run's memory does not grow with what it embeds."""
        self.folder.mkdir(parents=True, exist_ok=True)
        n = len(rows)
        entries = commit_entries(rows)
        prefix = shards.rank_prefix(self.world.rank) if self.world.size > 1 else ""
        shards.write(self.folder / shards.new_name(prefix=prefix), entries, rows.features, rows.sha256,
                     in_memory=True)
        none = np.zeros(0, "S1")
        return Rows(np.zeros(n, "S1"), none, none, {}, rows.skipped_keys, rows.skipped_stamps,
                    rows.skipped_reasons)

    def finish(self, new_parts: list[Rows], seconds: float) -> ExtractResult:
        """Write what changed into new shards, tombstones and a new manifest."""
        embedded = sum(len(p) for p in new_parts)
        counts = distributed.gather((embedded, seconds)) if self.world.size > 1 else [(embedded, seconds)]
        embedded, seconds = sum(c[0] for c in counts), max(c[1] for c in counts)
        try:
            result, problem = self._write(embedded, seconds), None
        except FeatxError as exc:
            result, problem = None, exc
        if self.world.size > 1:
            result, text_ = distributed.broadcast((result, str(problem) if problem else None))
            if text_ and problem is None:
                raise FeatxError(f"process 0 of this featx job failed: {text_}")
        if problem is not None:
            raise problem
        return result

    def _write(self, embedded: int, seconds: float) -> ExtractResult:
        plan = self.plan
        distributed.barrier()  # every commit is on disk
        scan = self.scan
        scan.add_commits()  # the store and earlier commits were scanned by todo()
        distributed.barrier()  # every process has listed the commits before new shards appear
        copies = scan.copies()
        # An accumulating store matches no single listing; one with files that could not
        # be read this time, or without an entry for every listed image, is rechecked by
        # the next run.
        holes = np.isin(scan.kind, (NONE, STALE, TRANSIENT)).any()
        listing_digest = "" if holes or plan.source.accumulates else plan.manifest
        parts = self._write_shards(scan, copies)
        if not self.world.is_main:
            return None
        old = self.snap
        if old and not scan.changed() and old.listing == listing_digest \
                and old.classes == plan.source.classes and old.problems == _problems(plan.source):
            remove_unnamed(plan.path, old)
            return self._result(old, embedded, seconds)
        snap = self._snapshot_after(old, scan, parts, listing_digest, embedded, seconds)
        try:
            snapshot.write(plan.path, snap)
        except WriteError as exc:
            raise WriteError(f"{exc}; {plan.path.name} is unchanged, and the images embedded in this run "
                             f"are kept in {self.folder} for the next run") from None
        remove_unnamed(plan.path, snap)
        return self._result(snap, embedded, seconds)

    def _write_shards(self, scan: Scan, copies: np.ndarray) -> list[Part]:
        """Every process writes its share of the new shards, when all agree on what to
        write (else the first writes them all); a failure anywhere stops every process."""
        world, share = self.world, self.world
        if world.size > 1 and len(set(distributed.gather(_digest(copies, scan)))) > 1:
            share = distributed.World(0, 1) if world.is_main else None
        parts, problem = [], None
        try:
            parts = _write_copies(scan, copies, self.plan, share) if share else []
        except Exception as exc:
            problem = exc
        if world.size > 1:
            gathered = distributed.gather((parts, None if problem is None else str(problem)))
            parts = [p for ps, _ in gathered for p in ps]
            other = next((m for _, m in gathered if m), None)
            if problem is None and other:
                problem = FeatxError(f"another process of this featx job failed: {other}")
        if isinstance(problem, WriteError):
            raise WriteError(f"{problem}; {self.plan.path.name} is unchanged, and the images embedded in "
                             f"this run are kept in {self.folder} for the next run") from None
        if problem is not None:
            raise problem
        return parts

    def _snapshot_after(self, old: Snapshot | None, scan: Scan, parts: list[Part], listing_digest: str,
                        embedded: int, seconds: float) -> Snapshot:
        plan = self.plan
        names, entries = scan.tombstones()
        dead_count = {n: int(c) for n, c in zip(*np.unique(names, return_counts=True))} if len(names) else {}
        kept, dead_parts = [], list(old.dead) if old else []
        before = store.view.dead_entries(plan.path, old) if old else {}
        for p in old.shards if old else []:  # a shard with no live entry left is dropped
            if dead_count.get(p.name.encode(), 0) + len(before.get(p.name, ())) < p.rows + p.skipped:
                kept.append(p)
        if len(names):
            name = shards.new_name(shards.DEAD)
            digest = shards.write_dead(self.folder / name, names, entries)
            dead_parts.append(Part(name, len(names), 0, digest))
        live = {p.name for p in kept}
        dead_parts = [d for d in dead_parts if _names_any(self.folder / d.name, live)]
        shards_after = kept + parts
        provenance = self._provenance(old, embedded, seconds)
        snap = Snapshot(shards_after, dead_parts, list(plan.source.classes), _problems(plan.source),
                        provenance, listing_digest, dict(plan.backbone.dims))
        snap.rows, snap.skipped = _live_counts(kept, before, names, entries)
        snap.rows += sum(p.rows for p in parts)
        snap.skipped += sum(p.skipped for p in parts)
        return snap

    def _provenance(self, old: Snapshot | None, embedded: int, seconds: float) -> dict:
        plan = self.plan
        before = old.provenance.get("throughput", {}) if old else {}
        return {
            **plan.wanted(),
            "featx": __version__,
            "torch": torch.__version__,
            "timm": _version("timm"),
            "torchvision": _version("torchvision"),
            "device": plan.device.type,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            # every image this store's runs embedded, and the time it took: its speed
            "throughput": {"images": before.get("images", 0) + embedded,
                           "seconds": round(before.get("seconds", 0.0) + seconds, 3)},
        }

    def _result(self, snap: Snapshot, embedded: int, seconds: float) -> ExtractResult:
        plan = self.plan
        return ExtractResult(plan.path, snap.rows, embedded, snap.rows - embedded,
                             snap.skipped + len(snap.problems), seconds, plan.precision, plan.device.type)

    def _check(self, provenance: dict) -> None:
        """Refuse a store written by another network, weights, preprocessing, precision,
        runtime or source than planned. The backbone's name is not part of that: the same
        network and weights under another name share a store."""
        bb = self.plan.backbone
        found = {**provenance,
                 "backbone": {**provenance.get("backbone", {}), "name": bb.name, "weights": bb.weights}}
        store.check_provenance(self.plan.path, found, self.plan.wanted())


def _write_copies(scan: Scan, copies: np.ndarray, plan: Plan, world) -> list[Part]:
    """This process's share of the new shards: chunks of ``SHARD_ROWS`` copied entries,
    every ``world.size``-th chunk starting at its rank."""
    parts = []
    chunks = [copies[s:s + shards.SHARD_ROWS] for s in range(0, len(copies), shards.SHARD_ROWS)]
    for chunk in chunks[world.rank::world.size]:
        parts.append(_write_shard(scan, chunk, plan))
    return parts


def _write_shard(scan: Scan, positions: np.ndarray, plan: Plan) -> Part:
    listing, kind = scan.listing, scan.kind[positions]
    skip = np.isin(kind, (SKIPPED, TRANSIENT))
    rows, skipped = positions[~skip], positions[skip]
    reasons = np.empty(len(skipped), dtype=object)
    for f in np.unique(scan.file[skipped]):
        sel = np.flatnonzero(scan.file[skipped] == f)
        at = scan.entry[skipped[sel]] - scan.rows_in[f]
        order = np.argsort(at)
        reasons[sel[order]] = decode(shards.read_column(scan.files[f], "skipped/reasons", at[order]))
    stamps = np.where(kind[skip] == TRANSIENT, b"", listing.stamps[skipped]).astype(listing.stamps.dtype)
    entries = shards.Entries(listing.keys[rows], listing.stamps[rows], listing.labels[rows],
                             list(plan.source.classes), listing.keys[skipped], stamps,
                             reasons.astype(str), dict(plan.backbone.dims))
    feats = {n: shards.ShardFeatures(scan.files, n, scan.file[rows], scan.entry[rows], d)
             for n, d in plan.backbone.dims.items() if n in plan.layers}
    w = distributed.world()
    name = shards.new_name(prefix=shards.rank_prefix(w.rank) if w.size > 1 else "")  # who wrote it
    digest = shards.write(shards.folder(scan.path) / name, entries, feats, scan.sha256(rows))
    return Part(name, len(rows), len(skipped), digest)


def _digest(positions: np.ndarray, scan: Scan | None = None) -> str:
    """What a process plans to do, to compare with the others'."""
    h = hashlib.sha256(np.ascontiguousarray(positions).tobytes())
    if scan is not None:
        for a in (scan.kind[positions], scan.entry[positions]):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update("\n".join(scan.files[f].name for f in np.unique(scan.file[positions])).encode())
    return h.hexdigest()


def _live_counts(kept: list[Part], before: dict[str, np.ndarray], names: np.ndarray,
                 entries: np.ndarray) -> tuple[int, int]:
    """Live rows and skipped files of the shards kept, after the old and new tombstones."""
    rows = skipped = 0
    for p in kept:
        dead = np.union1d(before.get(p.name, np.zeros(0, np.int64)), entries[names == p.name.encode()])
        dead_rows = int(np.sum(dead < p.rows))
        rows += p.rows - dead_rows
        skipped += p.skipped - (len(dead) - dead_rows)
    return rows, skipped


def _names_any(dead_file: Path, live: set[str]) -> bool:
    names, _ = shards.read_dead(dead_file)
    return any(n.decode() in live for n in np.unique(names))


def _problems(source) -> list[list[str]]:
    return [[k, r] for k, r in source.problems]


def _in_key_order(items) -> Listing:
    listing = Listing.of(items)
    keys = listing.keys
    return listing if len(keys) < 2 or bool(np.all(keys[1:] >= keys[:-1])) else listing.sorted()


def _same_bytes(source, item, sha: bytes) -> bool:
    try:
        return hashlib.sha256(source.read(item)).hexdigest().encode() == sha
    except OSError:
        return False


def _fail_on_known(source, scan: Scan) -> None:
    """For ``on_error="fail"``: stop on a current file that an earlier run skipped."""
    known = np.flatnonzero(scan.kind == SKIPPED)
    if len(known):
        p = int(known[0])
        f = int(scan.file[p])
        reason = shards.read_column(scan.files[f], "skipped/reasons",
                                    np.array([scan.entry[p] - scan.rows_in[f]]))[0]
        raise SourceError(f"{source.where(text(scan.listing.keys[p]))}: {text(reason)}")


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return ""
