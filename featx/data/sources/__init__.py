"""Image sources: an ImageFolder directory, a tar archive read in place, WebDataset tar
shards read in place, a CSV or Parquet manifest (read in chunks), the built-in sample,
files named one by one, and parts of any of them (see :mod:`.base` for what a source is).
"""
from __future__ import annotations

import os
import re

from ...core.errors import SourceError
from .base import Item, Source
from .files import FilesSource
from .folder import ImageFolderSource
from .manifest import CsvSource, ParquetSource
from .subsets import KeysSource, SubsetSource
from .tar import TAR_SPEC, TarSource
from .webdataset import SHARDS_SPEC, WebDatasetSource

__all__ = ["CsvSource", "FilesSource", "ImageFolderSource", "Item", "KeysSource", "ParquetSource", "Source",
           "SubsetSource", "TarSource", "WebDatasetSource", "open_source"]


def open_source(spec: str | os.PathLike) -> Source:
    """Open a data source from its command-line spelling.

    ``sample`` (the built-in sample), a directory, ``archive.tar[:prefix]``, WebDataset
    shards (``shards/train-{000000..000099}.tar``, ``shards/*.tar``, or ``wds:shard.tar``
    for a single one), ``file.csv`` or ``file.parquet``.
    """
    text = os.fspath(spec)
    if text == "sample":
        from .sample import SampleSource

        return SampleSource()
    if text.startswith("wds:"):
        return WebDatasetSource(text[4:])
    if text.endswith(".tar") and SHARDS_SPEC.search(text) and not os.path.isfile(text):
        return WebDatasetSource(text)
    m = TAR_SPEC.match(text)
    if m:
        return TarSource(m.group("path"), m.group("prefix") or "")
    if re.search(r"\.(tar\.gz|tgz|tar\.bz2|tar\.xz|zip)(:|$)", text):
        raise SourceError(f"{text}: compressed archives are not read in place; "
                          "use an uncompressed .tar or a folder")
    if text.lower().endswith(".csv"):
        return CsvSource(text)
    if text.lower().endswith(".parquet"):
        return ParquetSource(text)
    if os.path.isdir(text):
        return ImageFolderSource(text)
    raise SourceError(f"{text}: no such directory, tar archive or CSV manifest")
