"""Batched extraction: source -> decode/resize in DataLoader workers -> backbone -> store.

:func:`extract` checks its settings into a :class:`~.plan.Plan`, takes the store with a
:class:`~.writer.StoreWriter` (lock, journal, the rows already embedded), embeds what is
still to do (:mod:`.embed`), and writes the store block by block from the old store,
the journal and this run's commits. SIGTERM or Ctrl-C stops it with
:class:`~featx.core.errors.Interrupted` once the batches already embedded are committed.
"""
from __future__ import annotations

import logging
import os
import time

from ..backbones import Backbone
from ..core import distributed, signals
from ..core.errors import FeatxError, Interrupted, WriteError
from ..data.sources import Source
from .embed import embed
from .plan import make_plan, shard
from .writer import ExtractResult, StoreWriter

log = logging.getLogger(__name__)


@signals.stopping()  # SIGTERM and SIGINT raise Interrupted while it runs (see featx.core.signals)
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
    decode: str = "auto",
    workers: int | None = None,
    commit_rows: int = 2048,
    commit_seconds: float = 30.0,
    on_error: str = "skip",
) -> ExtractResult:
    """Embed every image of a source into a store in the cache; images already there
    (same key and stamp, in the store or the journal of an interrupted run) are reused.

    Parameters
    ----------
    data : path, str or Source
        A folder in ImageFolder layout (``root/<class>/<image>``), an uncompressed tar
        holding one (``archive.tar[:prefix]``, read in place), a CSV manifest with columns
        ``path,label``, ``"sample"`` (the built-in sample), or a source object.
    backbone : str or Backbone
        The network by name (:func:`featx.list_backbones`: ``efficientnet_lite0``,
        ``pixels``, ``timm:<model>``, ``torchvision:<model>[:<weights>]``), or one loaded.
    cache_dir : path
        The cache folder; the store is named after the source, the network and a digest
        of everything that determines the features.
    weights : path, optional
        A local state dict for the backbone's architecture; its SHA-256 joins the identity.
    layers : tuple of str
        Named stages (``"blocks.3"``) whose outputs are stored too, each globally pooled,
        beside the pooled penultimate ``embedding``.
    image_size : int, optional
        Input resolution (default: the weights'); the crop fraction is kept.
    batch_size : int, optional
        Images per batch (default: 64 on the CPU; on CUDA what fits the GPU, 64 to 1024).
    precision : str
        ``auto`` (bfloat16 where the hardware runs it natively, else fp16 on CUDA and fp32
        on the CPU), ``fp32``, ``bf16`` or ``fp16``.
    device : str
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    decode : str
        ``auto`` (on CUDA the GPU, else the CPU), ``cpu`` (decoding processes) or ``gpu``
        (JPEGs decoded in batches on the CUDA device with nvJPEG; its pixels differ
        slightly from the CPU decoder's, so its stores are its own).
    workers : int, optional
        Decoding processes (default: one per core up to 8; beside a GPU all cores but two).
    commit_rows : int
        Images per journal commit: a killed run loses at most this many.
    commit_seconds : float
        Commit at least this often, whatever the number of images.
    on_error : str
        ``skip`` records a file that cannot be used, with its reason, and goes on;
        ``fail`` stops at the first one (:class:`~featx.core.errors.SourceError` naming it),
        after committing the batches embedded before it.

    SIGTERM (a cluster preempting the job) or SIGINT (Ctrl-C) stops the run with
    :class:`~featx.core.errors.Interrupted` (a ``KeyboardInterrupt``) once the batches
    already embedded are committed; its message says how many images of this run are kept
    for the next one. featx handles these signals only during the call, in the main thread,
    and only where their handlers are Python's defaults.

    Returns
    -------
    ExtractResult
        The store's ``path``, its ``rows``, and what this run did: ``embedded``,
        ``reused``, ``skipped``, ``seconds``, ``images_per_second``.
    """
    plan = make_plan(data, backbone, cache_dir, weights=weights, layers=layers, image_size=image_size,
                     batch_size=batch_size, precision=precision, device=device, decode=decode,
                     workers=workers, commit_rows=commit_rows, commit_seconds=commit_seconds,
                     on_error=on_error)
    with StoreWriter(plan) as writer:
        done = writer.unchanged()
        if done is not None:
            return _reported(done)
        todo = shard(writer.todo(), plan.batch_size, writer.world)
        start = time.perf_counter()
        error, parts = None, []
        try:
            try:
                embed(plan, todo, writer.commit, parts)
            except WriteError as exc:
                error = WriteError(f"{exc}; the batches committed before it are kept in {writer.folder} "
                                   "and the next run resumes from them")
            except FeatxError as exc:
                error = exc
            error = distributed.all_ok(error)  # not on Interrupted: each process stops at once
            if error is not None:
                raise error
            return _reported(writer.finish(parts, time.perf_counter() - start))
        except Interrupted as exc:
            _kept(exc, writer, parts)
            raise


def _kept(exc: Interrupted, writer: StoreWriter, parts: list) -> None:
    """Say in ``exc`` what this process keeps of its run (``parts``, all committed), and where."""
    exc.count(parts)
    w = writer.world
    exc.kept_in, exc.process = writer.folder, f" (process {w.rank} of {w.size})" if w.size > 1 else ""


def _reported(result: ExtractResult) -> ExtractResult:
    speed = f" at {result.images_per_second:.1f} images/s" if result.embedded else ""
    log.info("%d images in the store: %d embedded%s, %d reused, %d skipped (%s on %s)", result.rows,
             result.embedded, speed, result.reused, result.skipped, result.precision, result.device,
             extra={"extract_result": result})
    return result
