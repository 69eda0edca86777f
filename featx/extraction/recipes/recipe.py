"""What a recipe is: which backbones, read how, make the features a head is fitted on.

A recipe is one or more parts whose features are concatenated (stacking); a part is one
backbone read one way:

- ``layers``: intermediate stages, pooled, appended to the embedding (multi-layer);
- ``image_size``: the resolution the images are read at (default: the weights');
- ``tta: flip``: the features of each image averaged with those of its mirror image
  (test-time augmentation; both views are cached stores).

Written in a pipeline's ``search:`` (or given to :class:`featx.ImageEmbedder`) as::

    efficientnet_lite0                                   # one backbone as it is
    {backbone: efficientnet_lite0, layers: [blocks.4, blocks.5], image_size: 288, tta: flip}
    {stack: [efficientnet_lite0, {backbone: efficientnet_lite1, tta: flip}]}

Its name says the same in one line: ``efficientnet_lite0[blocks.4,blocks.5]@288+flip``,
the parts of a stack joined by `` + ``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from ...core.errors import FeatxError

TTA = ("none", "flip")
_PART_KEYS = ("backbone", "layers", "image_size", "tta")


class RecipeError(FeatxError):
    """A recipe that cannot be read."""


@dataclass(frozen=True)
class Part:
    """One backbone, read one way."""

    backbone: str
    layers: tuple[str, ...] = ()
    image_size: int | None = None  # None: the weights' own resolution (or the pipeline's)
    tta: str = "none"

    @property
    def name(self) -> str:
        layers = f"[{','.join(self.layers)}]" if self.layers else ""
        size = f"@{self.image_size}" if self.image_size else ""
        return f"{self.backbone}{layers}{size}{'+flip' if self.tta == 'flip' else ''}"

    @property
    def views(self) -> tuple[bool, ...]:
        """Whether each view the part averages is the mirror image."""
        return (False, True) if self.tta == "flip" else (False,)

    def to_dict(self) -> dict:
        return {"backbone": self.backbone, "layers": list(self.layers), "image_size": self.image_size,
                "tta": self.tta}


@dataclass(frozen=True)
class Recipe:
    """Parts whose features are concatenated, in order."""

    parts: tuple[Part, ...]

    @classmethod
    def of(cls, backbone: str, image_size: int | None = None) -> Recipe:
        """A backbone as it is: the features its store holds."""
        return cls((Part(backbone, image_size=image_size),))

    @property
    def name(self) -> str:
        return " + ".join(p.name for p in self.parts)

    @property
    def plain(self) -> bool:
        """One backbone's embedding, one view: no store beyond the backbone's own."""
        return len(self.parts) == 1 and not self.parts[0].layers and self.parts[0].tta == "none"

    def to_dict(self) -> dict:
        return {"parts": [p.to_dict() for p in self.parts]}

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        """The recipe :meth:`to_dict` wrote (a model bundle's, a store's)."""
        return cls(tuple(Part(p["backbone"], tuple(p.get("layers", ())), p.get("image_size"),
                              p.get("tta", "none")) for p in d["parts"]))


def parse(spec, where: str = "recipe") -> Recipe:
    """A recipe from its written form (a backbone name, a part's mapping, or ``{stack: [...]}``)."""
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, dict) and set(spec) == {"parts"}:
        return Recipe.from_dict(spec)
    if isinstance(spec, dict) and "stack" in spec:
        if set(spec) != {"stack"}:
            raise RecipeError(f"{where}: a stack takes no other key than 'stack', got {sorted(spec)}")
        items = spec["stack"]
        if not isinstance(items, list) or len(items) < 2:
            raise RecipeError(f"{where}: stack must list at least two parts, got {items!r}")
        return Recipe(tuple(_part(item, f"{where}.stack[{i}]") for i, item in enumerate(items)))
    return Recipe((_part(spec, where),))


def _part(spec, where: str) -> Part:
    if isinstance(spec, str) and spec:
        return Part(spec)
    if not isinstance(spec, dict):
        raise RecipeError(f"{where}: a part is a backbone name or a mapping with the key 'backbone', "
                          f"got {spec!r}")
    for key in spec:
        if key not in _PART_KEYS:
            near = difflib.get_close_matches(str(key), _PART_KEYS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; known keys: {', '.join(_PART_KEYS)}"
            raise RecipeError(f"{where}: unknown key {key!r}{hint}")
    backbone, layers = spec.get("backbone"), spec.get("layers", [])
    size, tta = spec.get("image_size"), spec.get("tta", "none")
    if not isinstance(backbone, str) or not backbone:
        raise RecipeError(f"{where}: needs the key 'backbone' (a backbone's name)")
    if not isinstance(layers, list) or not all(isinstance(x, str) and x for x in layers):
        raise RecipeError(f"{where}.layers must be a list of layer names, got {layers!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
        raise RecipeError(f"{where}.image_size must be an integer of at least 8, got {size!r}")
    if tta not in TTA:
        raise RecipeError(f"{where}.tta must be one of {', '.join(TTA)}, got {tta!r}")
    return Part(backbone, tuple(dict.fromkeys(layers)), size, tta)
