"""The batch loop: decoded batches through the network, committed to the journal.

The main process joins each batch's slices on the device, normalises them, runs the
model (eager under autocast, or the frozen graph of :mod:`.frozen`), and commits whole
batch groups to the journal on a background thread, overlapped with the next batches'
compute; at most one commit is in flight. When the loop stops early (SIGTERM or Ctrl-C
in particular, see :mod:`featx.core.signals`), the batches already embedded are
committed before the error leaves; only the batch in flight is lost.
"""
from __future__ import annotations

import contextlib
import itertools
import signal
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ..core import progress, signals
from ..core.devices import autocast
from ..core.errors import Interrupted, SourceError
from ..data.sources import Item
from ..store import Rows
from .frozen import frozen_embed
from .loader import batches
from .plan import Plan


class _Committer:
    """Rows pending for the journal, committed on a background thread every
    ``plan.commit_rows`` rows or ``plan.commit_seconds`` seconds."""

    def __init__(self, plan: Plan, commit: Callable[[Rows], Rows], parts: list[Rows]):
        self.plan, self.commit = plan, commit
        self.parts = parts  # committed, their features on disk
        self.pending: list[Rows] = []
        self.last = time.monotonic()
        self.in_flight: Future | None = None
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featx-commit")

    def add(self, rows: Rows) -> None:
        self.pending.append(rows)
        if (sum(len(p) for p in self.pending) >= self.plan.commit_rows
                or time.monotonic() - self.last >= self.plan.commit_seconds):
            self.flush()

    def flush(self) -> None:
        """Wait for the commit in flight (re-raising a failed write), then start the next."""
        if self.in_flight is not None:
            self.parts.append(self.in_flight.result())
            self.in_flight = None
        if self.pending:
            rows = Rows.concat(self.pending, self.plan.layers, self.plan.backbone.dims)
            self.in_flight = self.thread.submit(self.commit, rows)
        self.pending, self.last = [], time.monotonic()

    def drain(self) -> list[Rows]:
        """Commit what is pending and wait for every write."""
        self.flush()
        self.flush()
        return self.parts

    def close(self) -> None:
        self.thread.shutdown(wait=True)


def embed(plan: Plan, todo: list[Item], commit: Callable[[Rows], Rows],
          parts: list[Rows] | None = None) -> list[Rows]:
    """Embed ``todo`` in batches, committing whole batches with ``commit`` as it goes;
    returns the committed parts, each added to ``parts`` (when given) once committed, so
    that the caller knows them however the loop ends."""
    parts = [] if parts is None else parts
    if not todo:
        return parts
    bb, dev = plan.backbone, plan.device
    bb.model.to(dev, memory_format=torch.channels_last)  # in place; embed() runs it
    run = frozen_embed(bb, plan.batch_size) if plan.frozen else None
    # eager under autocast, or the frozen graph, which is bfloat16 throughout
    context = autocast(dev, plan.precision) if run is None else contextlib.nullcontext()
    run = run or bb.embed
    committer = _Committer(plan, commit, parts)
    bar = progress.bar(len(todo), bb.name)
    decoded = _decoded(plan, todo)
    try:
        with torch.inference_mode():
            for ok, failed, batch in decoded:
                signals.check()  # a stop signal that some code on its way swallowed
                if failed and plan.on_error == "fail":  # the batches before this one are kept (_stopped)
                    i, _, reason, _ = min(failed, key=lambda s: s[0])
                    raise SourceError(f"{plan.source.where(todo[i].key)}: {reason}")
                feats = {n: np.zeros((0, bb.dims[n]), np.float32) for n in plan.layers}
                if batch is not None:
                    x = plan.preprocessing.normalize(batch.to(dev, non_blocking=True))
                    x = x.contiguous(memory_format=torch.channels_last)
                    with context:
                        out = run(x)
                    feats = {n: out[n].float().cpu().numpy() for n in plan.layers}
                rows = _rows(todo, ok, failed, feats)
                with signals.held():  # a signal is raised after the batch is handed over, not halfway
                    committer.add(rows)
                bar.update(len(ok) + len(failed))
        with signals.held():
            return committer.drain()
    except BaseException as exc:
        stop = _stopped(committer, decoded, exc)
        if stop is exc:
            raise
        raise stop
    finally:
        committer.close()
        bar.close()


def _stopped(committer: _Committer, decoded, exc: BaseException) -> BaseException:
    """What to raise when the batch loop ended with ``exc``, once every batch already
    embedded is committed (undisturbed by further signals): ``exc``, or, when a stop
    signal or Ctrl-C ended it, :class:`Interrupted` with the images of this run committed."""
    failure = None
    with signals.held(then_raise=False):
        try:
            committer.drain()
        except Exception as err:  # noqa: BLE001 - a commit failed; those before it are kept
            failure = err
        decoded.close()  # the decoding processes stop
        signum = signals.received() or (signal.SIGINT if isinstance(exc, KeyboardInterrupt) else None)
        if signum is None:
            return failure or exc
        chain: BaseException | None = exc
        while chain is not None:  # and so do those of a loader that the traceback's frames hold
            traceback.clear_frames(chain.__traceback__)
            chain = chain.__context__
    return Interrupted(signum).count(committer.parts)


def _decoded(plan: Plan, todo: list[Item]):
    """(decoded (index, sha256) pairs, failed samples, uint8 batch on the device or None)
    per batch; JPEGs left for the GPU (decode="gpu") are decoded here."""
    loader = batches(plan.source, todo, plan.preprocessing, plan.batch_size, plan.workers, plan.device)
    with signals.held():  # the decoding processes start untorn; a signal waits for the first batch
        first = next(loader, None)
    for ok, failed, batch, raw in itertools.chain([first] if first is not None else [], loader):
        if raw:
            from .gpu_decode import decode_batch

            images = decode_batch([s[1] for s in raw], plan.preprocessing, plan.device)
            failed = failed + [(i, None, r, sha) for (i, _, _, sha), r in zip(raw, images)
                               if isinstance(r, str)]
            good = [(s, im) for s, im in zip(raw, images) if not isinstance(im, str)]
            ok = ok + [(s[0], s[3]) for s, _ in good]
            on_dev = [batch.to(plan.device, non_blocking=True)] if batch is not None else []
            on_dev += [im[None] for _, im in good]
            batch = torch.cat(on_dev) if on_dev else None
        yield ok, failed, batch


def _rows(todo: list[Item], ok: list, failed: list, feats: dict[str, np.ndarray]) -> Rows:
    return Rows(
        keys=np.array([todo[i].key for i, _ in ok], dtype=str),
        stamps=np.array([todo[i].stamp for i, _ in ok], dtype=str),
        sha256=np.array([sha for _, sha in ok], dtype=str),
        features=feats,
        skipped_keys=np.array([todo[i].key for i, *_ in failed], dtype=str),
        # a read failure (no bytes, no hash) may be transient: no stamp, retried
        skipped_stamps=np.array([todo[i].stamp if sha else "" for i, _, _, sha in failed], dtype=str),
        skipped_reasons=np.array([s[2] for s in failed], dtype=str),
    )
