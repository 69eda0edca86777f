"""``search: auto``: a sensible set of recipes built from a pipeline's backbones."""
from __future__ import annotations

from torch import nn

from ...backbones import PIXELS, load_backbone
from .recipe import Part, Recipe, RecipeError, parse


def candidates(search, backbones: list[str], image_size: int | None = None) -> list[Recipe]:
    """The recipes a pipeline's ``search:`` asks for: its list parsed, or for ``auto``
    each network's embedding with flip TTA, with its two stages before the last pooled
    beside it, and read at a larger resolution; and, given several networks, their
    embeddings stacked, with and without flip TTA."""
    if search == "auto":
        return auto(backbones, image_size)
    if not isinstance(search, list) or not search:
        raise RecipeError(f"search must be 'auto' or a non-empty list of recipes, got {search!r}")
    return list(dict.fromkeys(parse(s, f"search[{i}]") for i, s in enumerate(search)))


def auto(backbones: list[str], image_size: int | None = None) -> list[Recipe]:
    nets = [b for b in backbones if b != PIXELS]
    out = []
    for name in nets:
        bb = load_backbone(name, image_size=image_size)
        size = bb.preprocessing.image_size
        out += [Recipe((Part(name, tta="flip"),)),
                Recipe((Part(name, layers=late_stages(bb.model)),)),
                Recipe((Part(name, image_size=larger(size)),))]
    if len(nets) > 1:
        out += [Recipe(tuple(Part(n) for n in nets)), Recipe(tuple(Part(n, tta="flip") for n in nets))]
    return [r for r in dict.fromkeys(out) if r.parts[0].layers != ("",)]


def larger(size: int) -> int:
    """A resolution about a quarter larger, a multiple of 32 (224 -> 288)."""
    return max(size + 32, round(size * 1.25 / 32) * 32)


def late_stages(model: nn.Module) -> tuple[str, ...]:
    """The two stages before the network's last: its top-level stages at -3 and -2 when
    it has three or more (``layer2`` and ``layer3`` of a ResNet), else the children at -3
    and -2 of its longest sequence (``blocks.4`` and ``blocks.5`` of an EfficientNet)."""
    top = [n for n, m in model.named_children() if isinstance(m, (nn.Sequential, nn.ModuleList))]
    if len(top) >= 3:
        return tuple(top[-3:-1])
    best, length = None, 0
    for name, module in model.named_modules():
        if isinstance(module, (nn.Sequential, nn.ModuleList)) and name and len(module) > length:
            best, length = name, len(module)
    if best is not None and length >= 4:
        return tuple(f"{best}.{i}" for i in (length - 3, length - 2))
    return ("",)  # no stages to read: auto leaves the multi-layer recipe out
