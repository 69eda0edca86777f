"""The embedding store: one HDF5 file per (source, network and weights, preprocessing,
layers, precision) in the cache folder, written atomically, with a journal that lets a
killed extraction resume.

Layout of a store file (:mod:`.hdf5`)::

    keys, stamps, sha256, labels      one row per embedded image, in source order
    classes                           class names; labels index into them (-1: none)
    features/<name>                   float32 (rows, dim); "embedding" is the default
    skipped/{keys,stamps,reasons}     files that were not embedded, and why
    attrs: provenance (JSON), manifest (digest of the source listing), format, sha256

Every dataset holds the SHA-256 of its bytes in its ``sha256`` attribute (format 2).
"""
from __future__ import annotations

from ..core.names import DEFAULT_LAYER
from . import shards, snapshot, update, view
from .cache import SUFFIX, list_stores, remove, resolve, slug, store_path_for, write_lock
from .hdf5 import (
    FORMAT,
    FORMATS,
    Features,
    StoreContents,
    check_provenance,
    info,
    iter_batches,
    load,
    manifest,
    printable,
    read,
    verify,
    write_store,
)
from .journal import Journal
from .rows import Rows, Stacked, Taken

__all__ = ["DEFAULT_LAYER", "FORMAT", "FORMATS", "SUFFIX", "Features", "Journal", "Rows", "Stacked",
           "StoreContents", "Taken", "check_provenance", "info", "iter_batches", "list_stores", "load",
           "manifest", "printable", "read", "remove", "resolve", "shards", "slug", "snapshot",
           "store_path_for", "update", "verify", "view", "write_lock", "write_store"]
