"""The train, validation and test images of a fine-tune, with labels in one class list."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..data.sources import Item, KeysSource, Source, open_source
from ..heads import validation_split
from .settings import FinetuneError


@dataclass
class Split:
    """The images of one split, with labels indexing the training classes."""

    source: Source
    items: list[Item]
    labels: np.ndarray


class Splits(NamedTuple):
    train: Split
    val: Split
    test: Split | None
    classes: list[str]  # the training classes; every split's labels index into them


def _labelled(source: Source, classes: list[str]) -> Split:
    """The labelled items of ``source`` with labels re-indexed into ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({source.classes[it.label] for it in source.items if it.label >= 0} - set(index))
    if unknown:
        raise FinetuneError(f"{source.spec}: classes not in the training data: {', '.join(unknown)}")
    items = [it for it in source.items if it.label >= 0]
    return Split(source, items, np.array([index[source.classes[it.label]] for it in items], dtype=np.int64))


def make_splits(train, val=None, test=None, *, val_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Train, val and test splits from sources (or their command-line spellings).

    Without ``val``, a stratified ``val_fraction`` of ``train`` is held out with ``seed``
    (the rule the heads use)."""
    train = train if isinstance(train, Source) else open_source(train)
    classes = list(train.classes)
    if len(classes) < 2:
        raise FinetuneError(f"{train.spec}: fine-tuning needs at least 2 classes, found {len(classes)}")
    tr = _labelled(train, classes)
    if val is None:
        cut = validation_split(tr.labels, val_fraction, seed)
        if cut is None:
            raise FinetuneError(f"{train.spec}: too few images per class to hold out a validation split")
        keys = [it.key for it in tr.items]
        val = KeysSource(train, [keys[i] for i in cut[1]], f"val{val_fraction:g}-seed{seed}")
        train = KeysSource(train, [keys[i] for i in cut[0]], f"train{1 - val_fraction:g}-seed{seed}")
        tr = _labelled(train, classes)
    va = _labelled(val if isinstance(val, Source) else open_source(val), classes)
    te = None if test is None else _labelled(test if isinstance(test, Source) else open_source(test), classes)
    for name, split in (("train", tr), ("val", va), ("test", te)):
        if split is not None and not split.items:
            raise FinetuneError(f"{split.source.spec}: the {name} split holds no labelled images")
    return Splits(tr, va, te, classes)
