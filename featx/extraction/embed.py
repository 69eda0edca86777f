"""The batch loop: decoded batches through the network, committed to the journal.

The main process stages each batch's slices one batch ahead (on CUDA: copied on a side
stream), normalises them into the network's input buffer, runs the network
(:mod:`.forward`), reads the features of each batch one batch later (on CUDA they travel
while the GPU works on the next), and commits whole batch groups to the journal on a
background thread, overlapped with the next batches' compute; at most one commit is in
flight. When the loop stops early (SIGTERM or Ctrl-C in particular, see
:mod:`featx.core.signals`), the batches already embedded are committed before the error
leaves; only the batch in flight is lost.
"""
from __future__ import annotations

import collections
import itertools
import signal
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ..core import progress, signals
from ..core.errors import Interrupted, SourceError
from ..data.sources import Item
from ..store import Rows
from .forward import Forward
from .loader import batches
from .plan import Plan
from .staging import Staging


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
    decoded = _decoded(plan, todo)  # the decoding processes start first (see _decoded)
    try:
        loop = _Loop(plan, todo, _Committer(plan, commit, parts))
    except BaseException:
        decoded.close()
        raise
    decoded = _ahead(loop.forward, decoded)
    try:
        with torch.inference_mode():
            loop.run(decoded)
        with signals.held():
            return loop.committer.drain()
    except BaseException as exc:
        stop = _stopped(loop, decoded, exc)
        if stop is exc:
            raise
        raise stop
    finally:
        loop.committer.close()
        loop.bar.close()


class _Loop:
    """The batch loop. A batch's features are read one batch later (:attr:`waiting`), so
    that on CUDA the GPU works on the next batch while they travel to the host. A batch
    leaves :attr:`waiting` only once the committer has it, so that whatever stops the
    loop, every batch the network finished is handed over (:func:`_stopped`)."""

    def __init__(self, plan: Plan, todo: list[Item], committer: _Committer):
        self.plan, self.todo, self.committer = plan, todo, committer
        self.forward = Forward(plan)
        self.bar = progress.bar(len(todo), plan.backbone.name)
        self.waiting: collections.deque = collections.deque()  # (ok, failed, Returning or None)

    def run(self, decoded) -> None:
        for ok, failed, staged in decoded:
            signals.check()  # a stop signal that some code on its way swallowed
            if failed and self.plan.on_error == "fail":  # the batches before this one are kept (_stopped)
                self.hand_over()
                i, _, reason, _ = min(failed, key=lambda s: s[0])
                raise SourceError(f"{self.plan.source.where(self.todo[i].key)}: {reason}")
            self.waiting.append((ok, failed, self.forward(staged) if staged is not None else None))
            self.hand_over(keep=1)
        self.hand_over()

    def hand_over(self, keep: int = 0) -> None:
        """The waiting batches' rows to the committer, but the last ``keep``; a signal is
        raised after a batch is handed over, not halfway."""
        with signals.held():
            while len(self.waiting) > keep:
                ok, failed, returning = self.waiting[0]
                dims = self.plan.backbone.dims
                feats = Staging.host(returning) if returning is not None else \
                    {n: np.zeros((0, dims[n]), np.float32) for n in self.plan.layers}
                self.waiting.popleft()  # the committer has the rows from here, even if add() raises
                self.committer.add(_rows(self.todo, ok, failed, feats))
                self.bar.update(len(ok) + len(failed))


def _ahead(forward: Forward, decoded):
    """The batches of ``decoded``, staged: on CUDA each one batch ahead, so that its copy
    to the GPU overlaps the network's work on the batch before (on the CPU, where staging
    is nothing, a batch goes on as soon as it is decoded)."""
    previous = None
    for ok, failed, slices in decoded:
        staged = forward.stage(slices) if slices else None
        if forward.staging.stream is None:
            yield ok, failed, staged
            continue
        if previous is not None:
            yield previous
        previous = ok, failed, staged
    if previous is not None:
        yield previous


def _stopped(loop: _Loop, decoded, exc: BaseException) -> BaseException:
    """What to raise when the batch loop ended with ``exc``, once every batch already
    embedded is committed (undisturbed by further signals): ``exc``, or, when a stop
    signal or Ctrl-C ended it, :class:`Interrupted` with the images of this run committed."""
    failure, committer = None, loop.committer
    with signals.held(then_raise=False):
        try:
            loop.hand_over()  # the batches the network finished, when their features are whole
        except Exception:  # noqa: BLE001 - what failed is the error being raised
            pass
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
    """(decoded (index, sha256) pairs, failed samples, the decoded images as uint8 slices)
    per batch; JPEGs left for the GPU (decode="gpu") are decoded here, as one more slice.
    The decoding processes start now, before the network is loaded, so that they decode
    the first batches while it loads (and fork a process without the runtime's threads)."""
    with signals.held():  # the decoding processes start untorn
        loader = batches(plan.source, todo, plan.preprocessing, plan.batch_size, plan.workers, plan.device)
    return _gpu_decoded(plan, loader)


def _gpu_decoded(plan: Plan, loader):
    with signals.held():  # a signal waits for the first batch
        first = next(loader, None)
    for ok, failed, slices, raw in itertools.chain([first] if first is not None else [], loader):
        if raw:
            from .gpu_decode import decode_batch

            images = decode_batch([s[1] for s in raw], plan.preprocessing, plan.device)
            failed = failed + [(i, None, r, sha) for (i, _, _, sha), r in zip(raw, images)
                               if isinstance(r, str)]
            good = [(s, im) for s, im in zip(raw, images) if not isinstance(im, str)]
            ok = ok + [(s[0], s[3]) for s, _ in good]
            slices = slices + ([torch.stack([im for _, im in good])] if good else [])
        yield ok, failed, slices


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
