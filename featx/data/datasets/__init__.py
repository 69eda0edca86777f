"""The standard transfer datasets: a catalog of where to get each one and what it must
be (:mod:`.catalog`), resuming checked downloads (:mod:`.download`), safe unpacking
(:mod:`.unpack`) and converters from the authors' own split files (:mod:`.converters`)
into ``ROOT/NAME/{train,val,test}/<class>/<image>`` (:mod:`.prepare`)."""
from __future__ import annotations

from .catalog import CATALOG, Dataset, DatasetError, Packaging, dataset
from .prepare import MARKER, get, prepared

__all__ = ["CATALOG", "MARKER", "Dataset", "DatasetError", "Packaging", "dataset", "get", "prepared"]
