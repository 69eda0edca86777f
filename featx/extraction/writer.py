"""The store an extraction writes, owned while it runs: the lock, the journal, and the
rows already embedded (the old store, the journal of an interrupted run).

Under ``torchrun`` every process commits its own journal chunks; the first process
holds the lock and joins everyone's commits into the store, which is then bit for bit
the store one process writes.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import store
from ..core import distributed
from ..core.errors import FeatxError, StoreError, WriteError
from ..core.files import remove_stale_temporaries
from ..core.version import __version__
from ..data.sources import Item, Source
from ..store import Journal, Rows, StoreContents, Taken
from .plan import Plan, fail_on_known, still_to_embed


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
        self.journal = Journal(plan.path, f"rank{self.world.rank:03d}" if self.world.size > 1 else "")
        self.old: StoreContents | None = None
        self.journaled: list[Rows] = []
        self.restamped: dict[tuple[str, str], str] = {}  # (key, old stamp) -> the file's stamp now
        self._stack = ExitStack()

    def __enter__(self) -> StoreWriter:
        self.plan.path.parent.mkdir(parents=True, exist_ok=True)
        # an accumulating store is shared by every call that names files: they queue
        wait = self.plan.source.accumulates
        self._stack.enter_context(distributed.job_lock(lambda: store.write_lock(self.plan.path, wait=wait)))
        if self.world.is_main:
            remove_stale_temporaries(self.plan.path)  # left by a run killed mid-write
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._stack.__exit__(*exc)

    def unchanged(self) -> ExtractResult | None:
        """The store as it is, when the source listing has not changed since it was
        written and no interrupted run left work behind; else None."""
        plan = self.plan
        if self.journal.chunks() or store.manifest(plan.path) != plan.manifest:
            return None
        done = store.info(plan.path)
        self._check(done["provenance"])
        if plan.on_error == "fail" and done["skipped"]:
            return None  # todo() finds the skipped file and stops on it
        return ExtractResult(plan.path, done["rows"], 0, done["rows"], len(done["skipped"]), 0.0,
                             plan.precision, plan.device.type)

    def todo(self) -> list[Item]:
        """Read what is already embedded; returns the items still to embed."""
        plan = self.plan
        if plan.path.exists():
            try:
                self.old = store.read(plan.path, lazy=True)
            except StoreError:
                pass  # unreadable: rebuilt and replaced atomically
        if self.old:
            self._check(self.old.provenance)
        self.journaled = self.journal.read()
        read = self._pool()
        todo, self.restamped = still_to_embed(plan.source, read)
        pool = self._restamp(read)
        if plan.on_error == "fail":
            fail_on_known(plan.source, pool)
        self.pool = pool
        distributed.barrier()  # every process has read the journal before any writes to it
        return todo

    def commit(self, rows: Rows) -> Rows:
        """Commit embedded rows to the journal; returns them with features left on disk."""
        return self.journal.commit(rows)

    def finish(self, new_parts: list[Rows], seconds: float) -> ExtractResult:
        """Write the store from the old one, the journal and this run's parts; clear the journal."""
        embedded = sum(len(p) for p in new_parts)
        if self.world.size > 1:  # the main process joins everyone's commits into the store
            counts = distributed.gather((embedded, seconds))
            embedded, seconds = sum(c[0] for c in counts), max(c[1] for c in counts)
            if not self.world.is_main:
                result, problem = distributed.broadcast(None)
                if problem:
                    raise FeatxError(f"process 0 of this featx job failed: {problem}")
                return result
            self.journaled, new_parts = self.journal.read(), []
            self.pool = self._pool()
        try:
            result = self._write(new_parts, embedded, seconds)
        except FeatxError as exc:
            if self.world.size > 1:
                distributed.broadcast((None, str(exc)))
            raise
        if self.world.size > 1:
            distributed.broadcast((result, None))
        return result

    def _pool(self) -> Rows:
        """The rows already embedded: the old store's and the journal's, with the stamps of
        files found unchanged but touched. A new record: the old store's rows stay as they
        were read, so that a store whose only change is a stamp is written again."""
        old = [self.old.rows] if self.old else []
        return self._restamp(Rows.concat(old + self.journaled, self.plan.layers, self.plan.backbone.dims))

    def _restamp(self, pool: Rows) -> Rows:
        if not self.restamped:
            return pool
        pairs = zip(pool.keys.tolist(), pool.stamps.tolist())
        return replace(pool, stamps=np.array([self.restamped.get(ks, ks[1]) for ks in pairs], dtype=str))

    def _check(self, provenance: dict) -> None:
        """Refuse a store written by another network, weights, preprocessing, precision,
        runtime or source than planned. The backbone's name is not part of that: the same
        network and weights under another name share a store."""
        bb = self.plan.backbone
        found = {**provenance,
                 "backbone": {**provenance.get("backbone", {}), "name": bb.name, "weights": bb.weights}}
        store.check_provenance(self.plan.path, found, self.plan.wanted())

    def _write(self, new_parts: list[Rows], embedded: int, seconds: float) -> ExtractResult:
        plan, old = self.plan, self.old
        rows, labels, transient = _assemble(plan.source, [self.pool, *new_parts], plan.layers,
                                            plan.backbone.dims)
        before = old.provenance.get("throughput", {}) if old else {}
        provenance = {
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
        # Files that could not be read this time are retried by the next run, so the
        # store does not claim to match the listing while any remain; when retrying
        # changed nothing, the store is left as it is. An accumulating store matches no
        # single listing.
        manifest = "" if transient or plan.source.accumulates else plan.manifest
        if not (old and not self.journaled and not embedded and _same(old, rows, labels, plan.source.classes,
                                                                      manifest)):
            try:
                store.write_store(plan.path, rows, labels, plan.source.classes, provenance, manifest)
            except WriteError as exc:
                raise WriteError(f"{exc}; {plan.path.name} is unchanged, and the images embedded in this run "
                                 f"are kept in {self.journal.dir} for the next run") from None
        self.journal.clear()
        return ExtractResult(plan.path, len(rows), embedded, len(rows) - embedded, len(rows.skipped_keys),
                             seconds, plan.precision, plan.device.type)


def _same(old: StoreContents, rows: Rows, labels: np.ndarray, classes: list[str], manifest: str) -> bool:
    """Whether a store already holds exactly this content."""
    return (
        old.manifest == manifest and old.classes == classes and np.array_equal(old.labels, labels)
        and all(np.array_equal(getattr(old.rows, a), getattr(rows, a))
                for a in ("keys", "stamps", "sha256", "skipped_keys", "skipped_stamps", "skipped_reasons"))
    )


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return ""


def _assemble(source: Source, parts: list[Rows], names: list[str],
              dims: dict[str, int]) -> tuple[Rows, np.ndarray, int]:
    """Rows for the source's current items, in source order, from old and new parts, and
    how many files failed to be read (rather than decoded) this time."""
    pool = Rows.concat(parts, names, dims)
    row_of = {ks: i for i, ks in enumerate(zip(pool.keys.tolist(), pool.stamps.tolist()))}
    reason_of = dict(zip(zip(pool.skipped_keys.tolist(), pool.skipped_stamps.tolist()),
                         pool.skipped_reasons.tolist()))
    sel, labels, skipped, transient = [], [], [(k, "", r) for k, r in source.problems], 0
    for it in source.items:
        i = row_of.get((it.key, it.stamp))
        if i is not None:
            sel.append(i)
            labels.append(it.label)
        elif (it.key, it.stamp) in reason_of:  # failed to decode: final for this content
            skipped.append((it.key, it.stamp, reason_of[(it.key, it.stamp)]))
        elif (it.key, "") in reason_of:  # failed to read: retried next run
            skipped.append((it.key, "", reason_of[(it.key, "")]))
            transient += 1
    if source.accumulates:
        sel, labels, skipped = _with_unlisted(source, pool, sel, skipped)
    sel = np.asarray(sel, dtype=np.int64)
    sk = np.array(skipped, dtype=str).reshape(-1, 3)
    rows = Rows(pool.keys[sel], pool.stamps[sel], pool.sha256[sel],
                {n: Taken(pool.features[n], sel) for n in names}, sk[:, 0], sk[:, 1], sk[:, 2])
    return rows, np.asarray(labels, dtype=np.int64), transient


def _with_unlisted(source: Source, pool: Rows, sel: list[int],
                   skipped: list[tuple]) -> tuple[list, list, list]:
    """For an accumulating source: its rows and skipped files joined with those of every
    file it does not list (from earlier runs), ordered by key, so that a store written
    for any subset of its files is the same store. Its files are unlabelled."""
    listed = {it.key for it in source.items} | {key for key, _ in source.problems}
    keys = pool.keys.tolist()
    kept = {k: i for i, k in enumerate(keys) if k not in listed}  # one row per key in the old store
    rows = sorted([*((keys[i], i) for i in sel), *kept.items()])
    listed_skips = {s[0] for s in skipped}
    earlier = zip(pool.skipped_keys.tolist(), pool.skipped_stamps.tolist(), pool.skipped_reasons.tolist())
    skipped = skipped + [s for s in earlier if s[0] not in listed and s[0] not in listed_skips]
    return [i for _, i in rows], [-1] * len(rows), sorted(skipped)
