"""Batched extraction: source -> decode/resize in DataLoader workers -> backbone -> store.

:func:`extract` checks its settings into a :class:`~.plan.Plan`, takes the store with a
:class:`~.writer.StoreWriter` (lock, journal, the rows already embedded), embeds what is
still to do (:mod:`.embed`), and writes the store block by block from the old store,
the journal and this run's commits.
"""
from __future__ import annotations

import os
import time

from ..backbones import Backbone
from ..core import distributed
from ..core.errors import FeatxError, WriteError
from ..data.sources import Source
from .embed import embed
from .plan import make_plan, shard
from .writer import ExtractResult, StoreWriter


def extract(
    data: str | os.PathLike | Source,
    backbone: str | Backbone,
    cache_dir: str | os.PathLike = "cache",
    *,
    weights: str | None = None,
    layers: tuple[str, ...] = (),
    image_size: int | None = None,
    batch_size: int | None = None,
    precision: str = "auto",
    device: str = "auto",
    decode: str = "cpu",
    workers: int | None = None,
    commit_rows: int = 2048,
    commit_seconds: float = 30.0,
    on_error: str = "skip",
) -> ExtractResult:
    """Embed every image of ``data`` with ``backbone`` into a store under ``cache_dir``.

    Returns where the store is and how much work was done. Images already embedded
    (same key and stamp, in the store or the journal of an interrupted run) are reused.
    ``batch_size`` defaults to 64 on the CPU and 256 on CUDA; ``decode="gpu"`` decodes
    JPEGs on the CUDA device (see :mod:`featx.extraction.gpu_decode`), into a store of
    its own.

    A file that cannot be used is recorded with its reason and skipped; with
    ``on_error="fail"`` the first one stops the run instead (:class:`SourceError` naming
    it), after committing the batches embedded before it.
    """
    plan = make_plan(data, backbone, cache_dir, weights=weights, layers=layers, image_size=image_size,
                     batch_size=batch_size, precision=precision, device=device, decode=decode, workers=workers,
                     commit_rows=commit_rows, commit_seconds=commit_seconds, on_error=on_error)
    with StoreWriter(plan) as writer:
        done = writer.unchanged()
        if done is not None:
            return done
        todo = shard(writer.todo(), plan.batch_size, writer.world)
        start = time.perf_counter()
        error, parts = None, []
        try:
            parts = embed(plan, todo, writer.commit)
        except WriteError as exc:
            error = WriteError(f"{exc}; the batches committed before it are kept in {writer.journal.dir} "
                               "and the next run resumes from them")
        except FeatxError as exc:
            error = exc
        error = distributed.all_ok(error)
        if error is not None:
            raise error
        return writer.finish(parts, time.perf_counter() - start)
