"""Fetching a standard transfer dataset: its archives downloaded and checked, then converted.

``featx datasets get NAME`` downloads a dataset's official archives (resuming, checked
against their SHA-256 before anything is unpacked), or takes copies handed over with
``--archive``, and converts the authors' own splits into ``ROOT/NAME/{train,val,test}/
<class>/<image>``. A finished dataset carries ``featx-dataset.json``; a second ``get``
then does nothing.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ...core.files import fsync_dir, pid_alive, write_bytes, write_lock
from ...core.hashing import sha256_file
from ...core.version import __version__
from .catalog import Dataset, DatasetError, Packaging, dataset
from .download import fetch, is_verified

log = logging.getLogger(__name__)

MARKER = "featx-dataset.json"
DOWNLOADS = "downloads"
SPLITS = ("train", "val", "test")


def prepared(root: str | os.PathLike, name: str) -> dict | None:
    """The record of a finished ``get`` of ``name`` under ``root``, or None."""
    try:
        return json.loads((Path(root) / name / MARKER).read_text())
    except (OSError, ValueError):
        return None


def get(name: str | Dataset, root: str | os.PathLike = "data",
        archives: list[str | os.PathLike] = ()) -> Path:
    """``ROOT/NAME`` in featx's layout, downloaded (or taken from ``archives``) and
    converted unless a finished copy is already there."""
    ds = name if isinstance(name, Dataset) else dataset(name)
    root = Path(root)
    target = root / ds.name
    done = prepared(root, ds.name)
    if done is not None:
        log.info(f"{target}: already there ({done['images']:,} images)")
        return target
    if target.exists():
        raise DatasetError(f"{target}: exists but was not made by featx datasets get (no {MARKER}); "
                           f"move it away or choose another --root")
    root.mkdir(parents=True, exist_ok=True)
    with write_lock(target, f"{target}: another featx process is preparing it; wait for it to finish",
                    DatasetError):
        if prepared(root, ds.name) is not None:  # another get finished it since the check above
            return target
        packaging, files = _archives(ds, root / DOWNLOADS, [Path(a) for a in archives])
        _remove_leftovers(root, ds.name)
        work, tmp = (root / f".{ds.name}.{kind}-{os.getpid()}" for kind in ("unpack", "tmp"))
        try:
            log.info(f"{ds.name}: converting {', '.join(files)} into {target}")
            packaging.convert(files, work, tmp)
            record = _record(ds, packaging, tmp)
            write_bytes(tmp / MARKER, json.dumps(record, indent=2).encode())
            os.replace(tmp, target)  # whole, with its marker, or not there at all
            fsync_dir(root)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(tmp, ignore_errors=True)
    counts = ", ".join(f"{s} {n:,}" for s, n in record["splits"].items())
    log.info(f"{target}: {record['images']:,} images, {counts}")
    return target


def _archives(ds: Dataset, downloads: Path, given: list[Path]):
    """The packaging to convert, and its verified files by name."""
    if not given:
        packaging = ds.packagings[0]
        hint = (". Without network, download {url} elsewhere and hand it over: "
                f"featx datasets get {ds.name} --archive FILE")
        files = {}
        for remote in packaging.files:
            log.info(f"{ds.name}: {remote.filename} from {remote.url}")
            files[remote.filename] = fetch(remote, downloads, hint.format(url=remote.url))
        return packaging, files
    known = {(r.size, r.sha256): (p, r) for p in ds.packagings for r in p.files}
    found = {}
    for path in given:
        if not path.is_file():
            raise DatasetError(f"{path}: no such file")
        log.info(f"{ds.name}: checking {path}")
        key = (path.stat().st_size, sha256_file(path))
        if key not in known:
            expected = "; ".join(f"{r.filename} ({r.size:,} bytes, SHA-256 {r.sha256})"
                                 for p in ds.packagings for r in p.files)
            raise DatasetError(f"{path}: not an archive of {ds.name} that featx knows (SHA-256 {key[1]}); "
                               f"expected one of: {expected}")
        packaging, remote = known[key]
        found[remote.filename] = (packaging, path)
    packaging = next(iter(found.values()))[0]
    files = {}
    for remote in packaging.files:
        if remote.filename in found and found[remote.filename][0] is packaging:
            files[remote.filename] = found[remote.filename][1]
        elif is_verified(downloads / remote.filename, remote):
            files[remote.filename] = downloads / remote.filename
        else:
            raise DatasetError(f"{ds.name}: {packaging.name} also needs {remote.filename} "
                               f"({remote.size:,} bytes, SHA-256 {remote.sha256}); "
                               "pass it with another --archive")
    return packaging, files


def _remove_leftovers(root: Path, name: str) -> None:
    """Scratch folders of killed ``get`` runs (never those of live ones)."""
    for leftover in root.glob(f".{name}.*-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _record(ds: Dataset, packaging: Packaging, folder: Path) -> dict:
    splits = {}
    classes = set()
    for split in SPLITS:
        if (folder / split).is_dir():
            cls = [c for c in (folder / split).iterdir() if c.is_dir()]
            classes.update(c.name for c in cls)
            splits[split] = sum(1 for c in cls for f in c.iterdir() if f.is_file())
    if "train" not in splits or "test" not in splits:
        missing = "train" if "train" not in splits else "test"
        raise DatasetError(f"{ds.name}: the archives gave no {missing} split")
    return {"dataset": ds.name, "featx": __version__, "packaging": packaging.name,
            "archives": {r.filename: r.sha256 for r in packaging.files},
            "splits": splits, "images": sum(splits.values()), "classes": len(classes),
            "split_source": ds.splits}
