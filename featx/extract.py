"""Batched extraction: source -> decode/resize in DataLoader workers -> backbone -> store.

Only images whose (key, stamp) is not already in the store or in the journal of an
interrupted run are decoded and embedded. Batches are formed from that to-do list in
source order and committed whole, so a resumed run forms the same batches as an
uninterrupted one and produces the same features.

Workers hand over slices of a batch as one shared-memory tensor each; the main process
joins them on the device, normalises, runs the model (eager under autocast, or the
frozen graph of :mod:`featx.frozen`), and commits to the journal on a background
thread. The store is then written block by block from the journal and the old store.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from . import __version__, distributed, store
from .backbones import Backbone, load_backbone
from .errors import FeatxError, SourceError, StoreError, WriteError
from .files import remove_stale_temporaries
from .frozen import frozen_embed, use_frozen
from .gpu_decode import gpu_ready
from .images import ImageDecodeError
from .preprocess import Preprocessing
from .sources import Item, Source, open_source
from .store import (
    DEFAULT_LAYER,
    Journal,
    Rows,
    Taken,
    check_provenance,
    digest,
    read_rows,
    store_path_for,
    write_lock,
    write_store,
)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise FeatxError(f"--device {device}: choose auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise FeatxError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bfloat16 where the hardware runs it natively (not emulated), else fp16
    on CUDA and fp32 on the CPU: the fastest precision whose linear-probe accuracy stays
    within 0.3 points of fp32's (benchmarks/precision_fidelity.py; RESULTS.md)."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return "bf16" if native else "fp32"
    if precision not in PRECISIONS:
        raise FeatxError(f"--precision {precision}: choose auto, fp32, bf16 or fp16")
    return precision


WORKER_MEMORY = 512 << 20  # what one decoding process may come to hold, prefetched batches included


def default_workers(dev: torch.device | None = None) -> int:
    """Decoding processes: one per core (at most 8) beside a CPU model, which needs the
    cores itself; all cores but two (the main process and its copy thread, at most 32)
    when a GPU runs the model and decoding is what limits the speed. Never more than
    half the available memory holds at ``WORKER_MEMORY`` each."""
    cores = max(1, len(os.sched_getaffinity(0)) // distributed.world().local_size)  # shared by a node's processes
    wanted = max(1, min(32, cores - 2)) if dev is not None and dev.type == "cuda" else min(8, cores)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not on this system: trust the cores
        return wanted
    return max(1, min(wanted, available // 2 // WORKER_MEMORY // distributed.world().local_size))


def default_batch_size(dev: torch.device) -> int:
    """64 on the CPU (larger batches are no faster there); 256 on CUDA, where small
    batches leave the GPU idle between kernel launches."""
    return 256 if dev.type == "cuda" else 64


class _Decoded(Dataset):
    """Reads and decodes one image per call; runs inside DataLoader workers."""

    def __init__(self, source: Source, items: list[Item], pre: Preprocessing):
        self.source, self.items, self.pre = source, items, pre

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            data = self.source.read(self.items[i])
        except OSError as exc:
            return i, None, f"cannot read: {exc.strerror or exc}", ""
        sha = hashlib.sha256(data).hexdigest()
        if self.pre.decoder == "gpu" and gpu_ready(data):
            return i, data, "", sha  # decoded with its batch on the GPU
        try:
            return i, self.pre.decode(data), "", sha
        except ImageDecodeError as exc:
            return i, None, str(exc), sha


def _collate(samples):
    """(index and hash of each decoded sample, failed samples, the decoded images stacked,
    samples still as JPEG bytes).

    The images travel to the main process as one tensor that ``default_collate`` builds
    in shared memory: not one shared segment per image, which costs more than decoding.
    """
    images = [s[1] for s in samples if isinstance(s[1], torch.Tensor)]
    ok = [(s[0], s[3]) for s in samples if isinstance(s[1], torch.Tensor)]
    batch = default_collate(images) if images else None
    raw = [s for s in samples if isinstance(s[1], bytes)]
    return ok, [s for s in samples if s[1] is None], batch, raw


def identity(backbone: Backbone, pre: Preprocessing) -> dict:
    """The backbone's identity with the preprocessing an extraction actually uses."""
    return {**backbone.identity(), "preprocessing": pre.to_dict()}


def store_key(source: Source, backbone: Backbone, precision: str, pre: Preprocessing | None = None,
              frozen: bool = False) -> str:
    ident = identity(backbone, pre or backbone.preprocessing)
    ident.pop("name")  # the same network and weights under another name share a store
    ident.pop("weights")
    key = {"source": source.spec, "backbone": ident, "precision": precision}
    if frozen:  # see featx.frozen: other kernels, features not bit-identical to eager ones
        key["runtime"] = "frozen"
    return digest(key)


def _manifest(source: Source) -> str:
    return digest({
        "source": source.spec,
        "items": [(it.key, it.stamp, it.label) for it in source.items],
        "classes": source.classes,
        "problems": source.problems,
    })


def extract(
    data: str | Source,
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
    progress: bool = False,
) -> ExtractResult:
    """Embed every image of ``data`` with ``backbone`` into a store under ``cache_dir``.

    Returns where the store is and how much work was done. Images already embedded
    (same key and stamp, in the store or the journal of an interrupted run) are reused.
    ``batch_size`` defaults to :func:`default_batch_size`; ``decode="gpu"`` decodes
    JPEGs on the CUDA device (see :mod:`featx.gpu_decode`), into a store of its own.

    A file that cannot be used is recorded with its reason and skipped; with
    ``on_error="fail"`` the first one stops the run instead (:class:`SourceError` naming
    it), after committing the batches embedded before it.
    """
    source = data if isinstance(data, Source) else open_source(data)
    if not source.items:
        raise SourceError(f"{source.spec.split(':', 1)[1] or source.spec}: no images found "
                          f"({len(source.problems)} other files)")
    if isinstance(backbone, str):
        backbone = load_backbone(backbone, weights=weights, layers=layers, image_size=image_size)
    w = distributed.world()
    dev = resolve_device(device)
    if dev.type == "cuda" and w.size > 1:  # under torchrun: the GPU of this process's local rank
        dev = torch.device("cuda", w.local_rank)
    prec = resolve_precision(precision, dev)
    if decode not in ("cpu", "gpu"):
        raise FeatxError(f"--decode {decode}: choose cpu or gpu")
    if decode == "gpu" and dev.type != "cuda":
        raise FeatxError("--decode gpu: decoding on the GPU needs a CUDA device (use --decode cpu)")
    pre = replace(backbone.preprocessing, decoder=decode)
    if batch_size is None:
        batch_size = default_batch_size(dev)
    if batch_size < 1:
        raise FeatxError(f"--batch-size {batch_size}: must be at least 1")
    if on_error not in ("skip", "fail"):
        raise FeatxError(f"--on-error {on_error}: choose skip or fail")
    if on_error == "fail" and source.problems:
        key, reason = source.problems[0]
        raise SourceError(f"{source.where(key)}: {reason}")
    frozen = use_frozen(dev, prec, len(source.items))
    path = store_path_for(cache_dir, source.name, backbone.architecture, store_key(source, backbone, prec, pre, frozen))
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(source)

    with distributed.job_lock(lambda: write_lock(path)):
        if w.is_main:
            remove_stale_temporaries(path)  # left by a run killed mid-write
        journal = Journal(path, f"rank{w.rank:03d}" if w.size > 1 else "")
        wanted = {"backbone": identity(backbone, pre), "precision": prec,
                  "runtime": "torchscript-frozen" if frozen else "eager", "source": source.spec}
        if not journal.chunks() and store.manifest(path) == manifest:  # nothing changed
            done = store.info(path)
            _check_provenance(path, done["provenance"], wanted, backbone)
            if not (on_error == "fail" and done["skipped"]):  # else: found and reported below
                return ExtractResult(path, done["rows"], 0, done["rows"], len(done["skipped"]), 0.0, prec, dev.type)
        old = None
        if path.exists():
            try:
                old = read_rows(path, lazy=True)
            except StoreError:
                pass  # unreadable: rebuilt below and replaced atomically
        if old:
            _check_provenance(path, old[3], wanted, backbone)
        names = [DEFAULT_LAYER, *backbone.layers]
        journaled = journal.read()
        pool = Rows.concat(([old[0]] if old else []) + journaled, names, backbone.dims)
        todo = _plan(source, pool)
        if on_error == "fail":
            _fail_on_known(source, pool)
        distributed.barrier()  # every process has read the journal before any writes to it

        start = time.perf_counter()
        error, new_parts = None, []
        try:
            new_parts = _embed(source, shard(todo, batch_size, w), backbone, pre, frozen, journal, dev, prec,
                               batch_size, default_workers(dev) if workers is None else workers,
                               commit_rows, commit_seconds, on_error, progress and w.is_main)
        except WriteError as exc:
            error = WriteError(f"{exc}; the batches committed before it are kept in {journal.dir} "
                               "and the next run resumes from them")
        except FeatxError as exc:
            error = exc
        error = distributed.all_ok(error)
        if error is not None:
            raise error
        seconds = time.perf_counter() - start
        embedded = sum(len(p) for p in new_parts)
        if w.size > 1:  # the main process joins everyone's commits into the store
            counts = distributed.gather((embedded, seconds))
            embedded, seconds = sum(c[0] for c in counts), max(c[1] for c in counts)
            if not w.is_main:
                result, problem = distributed.broadcast(None)
                if problem:
                    raise FeatxError(f"process 0 of this featx job failed: {problem}")
                return result
            journaled, new_parts = journal.read(), []
            pool = Rows.concat(([old[0]] if old else []) + journaled, names, backbone.dims)

        try:
            result = _finish(path, source, old, pool, new_parts, journaled, embedded, seconds, names, backbone,
                             wanted, manifest, journal, dev, prec)
        except FeatxError as exc:
            if w.size > 1:
                distributed.broadcast((None, str(exc)))
            raise
        if w.size > 1:
            distributed.broadcast((result, None))
    return result


def _finish(path, source, old, pool, new_parts, journaled, embedded, seconds, names, backbone, wanted, manifest,
            journal, dev, prec) -> ExtractResult:
    """Write the store from the old one, the journal and this run's parts; clear the journal."""
    rows, labels, transient = _assemble(source, [pool, *new_parts], names, backbone.dims)
    before = old[3].get("throughput", {}) if old else {}
    provenance = {
        **wanted,
        "featx": __version__,
        "torch": torch.__version__,
        "timm": _version("timm"),
        "torchvision": _version("torchvision"),
        "device": dev.type,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # every image this store's runs embedded, and the time it took: its speed
        "throughput": {"images": before.get("images", 0) + embedded,
                       "seconds": round(before.get("seconds", 0.0) + seconds, 3)},
    }
    # Files that could not be read this time are retried by the next run, so the
    # store does not claim to match the listing while any remain; when retrying
    # changed nothing, the store is left as it is.
    stored_manifest = "" if transient else manifest
    if not (old and not journaled and not embedded and _same(old, rows, labels, source.classes, stored_manifest)):
        try:
            write_store(path, rows, labels, source.classes, provenance, stored_manifest)
        except WriteError as exc:
            raise WriteError(f"{exc}; {path.name} is unchanged, and the images embedded in this run "
                             f"are kept in {journal.dir} for the next run") from None
    journal.clear()
    return ExtractResult(path, len(rows), embedded, len(rows) - embedded, len(rows.skipped_keys), seconds, prec, dev.type)


def shard(todo: list[Item], batch_size: int, w: distributed.World) -> list[Item]:
    """This process's share of ``todo``: every ``w.size``-th batch of it, starting at its
    rank. The batches are those a single process would form, so each image is embedded
    in the same company and gets the same features."""
    if w.size == 1:
        return todo
    starts = range(w.rank * batch_size, len(todo), w.size * batch_size)
    return [it for s in starts for it in todo[s:s + batch_size]]


def _same(old, rows: Rows, labels: np.ndarray, classes: list[str], manifest: str) -> bool:
    """Whether a store read with read_rows already holds exactly this content."""
    o_rows, o_labels, o_classes, _, o_manifest = old
    return (
        o_manifest == manifest and o_classes == classes and np.array_equal(o_labels, labels)
        and all(np.array_equal(getattr(o_rows, a), getattr(rows, a))
                for a in ("keys", "stamps", "sha256", "skipped_keys", "skipped_stamps", "skipped_reasons"))
    )


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return ""


def _check_provenance(path: Path, provenance: dict, wanted: dict, backbone: Backbone) -> None:
    """Refuse a store written by another network, weights, preprocessing, precision,
    runtime or source than requested. The backbone's name is not part of that: the same
    network and weights under another name share a store."""
    found = {**provenance, "backbone": {**provenance.get("backbone", {}), "name": backbone.name,
                                        "weights": backbone.weights}}
    check_provenance(path, found, wanted)


def _fail_on_known(source: Source, pool: Rows) -> None:
    """For ``on_error="fail"``: stop on a current file that an earlier run skipped."""
    current = {(it.key, it.stamp) for it in source.items}
    keys = {it.key for it in source.items}
    for k, st, reason in zip(pool.skipped_keys.tolist(), pool.skipped_stamps.tolist(), pool.skipped_reasons.tolist()):
        if (k, st) in current or (not st and k in keys):
            raise SourceError(f"{source.where(k)}: {reason}")


def _embed(source, todo, backbone, pre, frozen, journal, dev, prec, batch_size, workers, commit_rows, commit_seconds,
           on_error, progress):
    """Embed ``todo`` in batches, committing whole batches to the journal as it goes.

    Commits run on a background thread, overlapped with the next batches' compute; at
    most one is in flight, and all have finished when this returns.
    """
    if not todo:
        return []
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    backbone.model.to(dev, memory_format=torch.channels_last)  # in place; embed() runs it
    # Workers hand over slices of a batch, so that many workers share even one batch
    # and the first batch is ready sooner; the model still sees whole batches, formed
    # from the to-do list in order as before.
    part = batch_size // 8 if batch_size % 8 == 0 else batch_size
    group, workers = batch_size // part, min(workers, -(-len(todo) // part))
    loader = DataLoader(
        _Decoded(source, todo, pre), batch_size=part, shuffle=False, collate_fn=_collate,
        num_workers=workers, pin_memory=dev.type == "cuda",
        # enough slices in flight for the next two batches to decode while one computes
        prefetch_factor=max(2, -(-2 * group // workers)) if workers else None,
    )
    dtype = PRECISIONS[prec]
    autocast = torch.autocast(dev.type, dtype=dtype) if dtype else contextlib.nullcontext()
    run = frozen_embed(backbone, batch_size) if frozen else None
    if run is None:  # eager, under autocast
        run = backbone.embed
    else:  # the frozen graph is bfloat16 throughout
        autocast = contextlib.nullcontext()
    names = [DEFAULT_LAYER, *backbone.layers]
    parts, pending, last_commit, in_flight = [], [], time.monotonic(), None
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featx-commit")

    def commit():
        nonlocal pending, last_commit, in_flight
        if in_flight is not None:
            parts.append(in_flight.result())  # re-raises a failed write
            in_flight = None
        if pending:  # features stay on disk once written
            in_flight = writer.submit(journal.commit, Rows.concat(pending, names, backbone.dims))
        pending, last_commit = [], time.monotonic()

    bar = tqdm(total=len(todo), unit="img", desc=backbone.name, disable=not progress, file=sys.stderr, smoothing=0.1)
    try:
        with torch.inference_mode():
            for ok, failed, batch, raw in _whole_batches(loader, group, dev):
                if raw:  # JPEGs left for the GPU (decode="gpu")
                    from .gpu_decode import decode_batch

                    images = decode_batch([s[1] for s in raw], pre, dev)
                    failed = failed + [(i, None, r, sha) for (i, _, _, sha), r in zip(raw, images) if isinstance(r, str)]
                    good = [(s, im) for s, im in zip(raw, images) if not isinstance(im, str)]
                    ok = ok + [s for s, _ in good]
                    on_dev = ([batch.to(dev, non_blocking=True)] if batch is not None else []) + [im[None] for _, im in good]
                    batch = torch.cat(on_dev) if on_dev else None
                if failed and on_error == "fail":  # keep the batches before this one, then stop
                    commit()
                    commit()
                    i, _, reason, _ = min(failed, key=lambda s: s[0])
                    raise SourceError(f"{source.where(todo[i].key)}: {reason}")
                feats = {n: np.zeros((0, backbone.dims[n]), np.float32) for n in names}
                if batch is not None:
                    x = pre.normalize(batch.to(dev, non_blocking=True)).contiguous(memory_format=torch.channels_last)
                    with autocast:
                        out = run(x)
                    feats = {n: out[n].float().cpu().numpy() for n in names}
                pending.append(Rows(
                    keys=np.array([todo[i].key for i, *_ in ok], dtype=str),
                    stamps=np.array([todo[i].stamp for i, *_ in ok], dtype=str),
                    sha256=np.array([s[-1] for s in ok], dtype=str),
                    features=feats,
                    skipped_keys=np.array([todo[i].key for i, *_ in failed], dtype=str),
                    # a read failure (no bytes, no hash) may be transient: no stamp, retried
                    skipped_stamps=np.array([todo[i].stamp if sha else "" for i, _, _, sha in failed], dtype=str),
                    skipped_reasons=np.array([s[2] for s in failed], dtype=str),
                ))
                bar.update(len(ok) + len(failed))
                if sum(len(p) for p in pending) >= commit_rows or time.monotonic() - last_commit >= commit_seconds:
                    commit()
        commit()
        commit()  # waits for the last write
    finally:
        writer.shutdown(wait=True)
        bar.close()
    return parts


def _whole_batches(loader, group: int, dev: torch.device):
    """Join every ``group`` consecutive slices from ``loader`` into one batch (fewer at
    the end), the images already on ``dev``."""
    slices = []

    def join():
        images = [b.to(dev, non_blocking=True) for _, _, b, _ in slices if b is not None]
        return ([s for sl in slices for s in sl[0]], [s for sl in slices for s in sl[1]],
                (torch.cat(images) if len(images) > 1 else images[0]) if images else None,
                [s for sl in slices for s in sl[3]])

    for sl in loader:
        slices.append(sl)
        if len(slices) == group:
            yield join()
            slices = []
    if slices:
        yield join()


def _plan(source: Source, pool: Rows) -> list[Item]:
    """The items still to embed, in source order.

    An item is done when the pool holds its key with its current stamp, as a row or as a
    file that failed to decode. When only the stamp differs (a touched file, a rewritten
    tar), the file is hashed: if its bytes still match the row's SHA-256 the row is kept
    and re-stamped in ``pool``.
    """
    keys, stamps = pool.keys.tolist(), pool.stamps.tolist()
    done = set(zip(keys, stamps))
    done |= {(k, s) for k, s in zip(pool.skipped_keys.tolist(), pool.skipped_stamps.tolist()) if s}
    row_of = {k: i for i, k in enumerate(keys)}
    todo, restamped = [], False
    for it in source.items:
        if (it.key, it.stamp) in done:
            continue
        i = row_of.get(it.key)
        if i is not None:
            try:
                same = hashlib.sha256(source.read(it)).hexdigest() == pool.sha256[i]
            except OSError:
                same = False
            if same:
                stamps[i], restamped = it.stamp, True
                continue
        todo.append(it)
    if restamped:
        pool.stamps = np.array(stamps, dtype=str)
    return todo


def _assemble(source: Source, parts: list[Rows], names: list[str], dims: dict[str, int]) -> tuple[Rows, np.ndarray, int]:
    """Rows for the source's current items, in source order, from old and new parts, and
    how many files failed to be read (rather than decoded) this time."""
    pool = Rows.concat(parts, names, dims)
    row_of = {ks: i for i, ks in enumerate(zip(pool.keys.tolist(), pool.stamps.tolist()))}
    reason_of = dict(zip(zip(pool.skipped_keys.tolist(), pool.skipped_stamps.tolist()), pool.skipped_reasons.tolist()))
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
    sel = np.asarray(sel, dtype=np.int64)
    sk = np.array(skipped, dtype=str).reshape(-1, 3)
    rows = Rows(pool.keys[sel], pool.stamps[sel], pool.sha256[sel], {n: Taken(pool.features[n], sel) for n in names},
                sk[:, 0], sk[:, 1], sk[:, 2])
    return rows, np.asarray(labels, dtype=np.int64), transient
