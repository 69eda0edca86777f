"""The cache folder: where a store lives, finding one by name, one writer per store, removing one."""
from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..core import files
from ..core.errors import StoreError
from .journal import Journal

SUFFIX = ".h5"


@contextmanager
def write_lock(store_path: Path, busy: str | None = None, wait: bool = False):
    """One writer per store: a second process fails at once with a clear message
    (``busy``, when given, replaces the store's), or with ``wait`` waits its turn; see
    :func:`featx.core.files.write_lock`."""
    with files.write_lock(store_path, busy or f"{store_path}: another featx process is writing this store; "
                          "wait for it to finish", StoreError, wait):
        yield


def slug(name: str) -> str:
    """``name`` made safe as a file name: runs of other characters become one '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "x"


def store_path_for(cache_dir: str | os.PathLike, source_name: str, backbone_name: str, key: str) -> Path:
    return Path(cache_dir) / f"{slug(source_name)}__{slug(backbone_name)}__{key[:12]}{SUFFIX}"


def list_stores(cache_dir: str | os.PathLike) -> list[Path]:
    cache_dir = Path(cache_dir)
    return sorted(cache_dir.glob(f"*{SUFFIX}")) if cache_dir.is_dir() else []


def resolve(cache_dir: str | os.PathLike, name: str) -> Path:
    """A store given by path, or by file name (or unique prefix) in the cache folder."""
    p = Path(name)
    if p.is_file():
        return p
    matches = [s for s in list_stores(cache_dir) if s.name.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise StoreError(f"{name}: no such store (in {cache_dir} or as a path)")
    raise StoreError(f"{name}: matches {len(matches)} stores in {cache_dir}; give more of the name")


def remove(path: Path) -> None:
    """Delete a store with its journal and lock file; refused while a run is writing it."""
    with write_lock(path):
        Journal(path).clear()
        path.unlink(missing_ok=True)  # the manifest first: never one naming missing shards
        shutil.rmtree(path.with_name(path.name + ".d"), ignore_errors=True)
        path.with_name(path.name + ".lock").unlink(missing_ok=True)
