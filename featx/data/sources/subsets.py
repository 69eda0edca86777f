"""Sources made of part of another source: a seeded per-class draw, or a list of keys."""
from __future__ import annotations

import hashlib
import random

from .base import Item, Source


class SubsetSource(Source):
    """At most ``per_class`` images of each class of another source, drawn with ``seed``
    (the same draw every time); unlabelled images are left out."""

    def __init__(self, base: Source, per_class: int, seed: int = 0):
        super().__init__(spec=f"{base.spec}#per_class={per_class},seed={seed}",
                         name=f"{base.name}-{per_class}pc", classes=list(base.classes),
                         problems=list(base.problems))
        self.base = base
        rng = random.Random(f"{seed}:{per_class}")
        chosen = set()
        for label in range(len(base.classes)):
            keys = [it.key for it in base.items if it.label == label]
            chosen.update(rng.sample(keys, min(per_class, len(keys))))
        self.items = [it for it in base.items if it.key in chosen]

    def read(self, item: Item) -> bytes:
        return self.base.read(item)

    def where(self, key: str) -> str:
        return self.base.where(key)


class KeysSource(Source):
    """The items of another source whose keys are listed, in the base's order: one split of
    it. ``tag`` names the split in ``spec``, which also holds a digest of the keys."""

    def __init__(self, base: Source, keys, tag: str):
        wanted = set(keys)
        chosen = hashlib.sha256("\n".join(sorted(wanted)).encode()).hexdigest()[:12]
        super().__init__(spec=f"{base.spec}#{tag}={chosen}", name=f"{base.name}-{tag}",
                         classes=list(base.classes))
        self.base = base
        self.items = [it for it in base.items if it.key in wanted]

    def read(self, item: Item) -> bytes:
        return self.base.read(item)

    def where(self, key: str) -> str:
        return self.base.where(key)

