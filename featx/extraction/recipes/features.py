"""A recipe's features of a source: each part's views extracted into stores of their own
(through the cache, like any extraction), then composed into one store of the recipe.

The composed store holds, per image, each part's features (its embedding, then each of
its layers, pooled) averaged over the part's views, the parts side by side: plain
concatenation, no scaling (:class:`~featx.heads.BlockScaler` weighs the blocks
when a head is fitted). Its provenance names the recipe, each part's backbone and the
stores it was composed from; it is rewritten only when one of those changed. An image
missing from any part's store (a file one view could not use) is left out, and listed
among the skipped files with the reason its store gives.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ... import store
from ...backbones import Backbone, load_backbone
from ...core.errors import FeatxError
from ...core.hashing import digest
from ...core.names import DEFAULT_LAYER
from ...data.sources import Source, open_source
from ...store.rows import take
from ..run import extract
from .recipe import Recipe

FORMAT = 1  # of the composed stores' provenance


@dataclass
class RecipeStore:
    """Where a recipe's features of one source are, and what they cost."""

    path: Path
    blocks: tuple[int, ...]  # the width of each block, in column order
    parts: list  # the ExtractResult of each part's views, in order
    throughput: list[dict]  # each view's store's record: the images its runs embedded, their seconds
    image_size: int  # the first part's

    @property
    def dim(self) -> int:
        return sum(self.blocks)

    @property
    def ms_per_image(self) -> float | None:
        """The parts' extraction time per image, summed over views, as each store measured it."""
        if not all(t.get("images") for t in self.throughput):
            return None
        return round(sum(1000.0 * t["seconds"] / t["images"] for t in self.throughput), 3)


def networks(recipe: Recipe) -> list[list[Backbone]]:
    """Each part's backbone, loaded once, as each of its views reads the images."""
    out = []
    for part in recipe.parts:
        bb = load_backbone(part.backbone, layers=part.layers, image_size=part.image_size)
        views = []
        for flipped in part.views:
            view = copy.copy(bb) if flipped else bb  # the same network, another preprocessing
            if flipped:
                view.preprocessing = replace(bb.preprocessing, flip=True)
            views.append(view)
        out.append(views)
    return out


def block_widths(recipe: Recipe, nets: list[list[Backbone]]) -> tuple[int, ...]:
    """The width of each block of the recipe's rows: each part's embedding, then its layers."""
    return tuple(views[0].dims[layer] for part, views in zip(recipe.parts, nets)
                 for layer in (DEFAULT_LAYER, *part.layers))


def recipe_store(recipe: Recipe, data, cache_dir: str | os.PathLike = "cache", *,
                 nets: list[list[Backbone]] | None = None, **options) -> RecipeStore:
    """The recipe's features of ``data`` (any source :func:`featx.extract` takes), as a
    store; ``options`` are :func:`featx.extract`'s. A plain recipe is its backbone's store."""
    source = data if isinstance(data, Source) else open_source(data)
    nets = nets or networks(recipe)
    results = [[extract(source, view, cache_dir, **options) for view in views] for views in nets]
    throughput = [store.info(r.path)["provenance"].get("throughput", {}) for views in results for r in views]
    size = nets[0][0].preprocessing.image_size
    if recipe.plain:
        return RecipeStore(results[0][0].path, (nets[0][0].embed_dim,), results, throughput, size)
    blocks = block_widths(recipe, nets)
    paths = [r.path for views in results for r in views]
    key = digest({"format": FORMAT, "recipe": recipe.to_dict(), "stores": [_stamp(p) for p in paths]})
    path = store.store_path_for(cache_dir, source.name, "recipe", key)
    if not path.is_file():
        with store.write_lock(path, wait=True):
            if not path.is_file():
                _compose(recipe, nets, paths, path, {"key": key, "blocks": list(blocks)})
    return RecipeStore(path, blocks, results, throughput, size)


def _stamp(path: Path) -> list:
    """What changes when a store is rewritten or updated (its file, or its manifest)."""
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


class _Composed:
    """The recipe's rows as an array-like the store writer reads block by block: each
    block's rows taken from every view's store, averaged over a part's views, the parts
    side by side. Memory stays one block's, whatever the number of images."""

    def __init__(self, parts: list[list[list]]):
        self.parts = parts  # per part, per view: its layers' rows (array-likes, in key order)
        self.shape = (parts[0][0][0].shape[0], sum(x.shape[1] for views in parts for x in views[0]))
        self.dtype = np.dtype(np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        blocks = []
        for views in self.parts:
            per_view = [np.hstack([take(x, rows) for x in layers]) for layers in views]
            blocks.append(per_view[0] if len(per_view) == 1 else
                          np.mean(per_view, axis=0, dtype=np.float64).astype(np.float32))
        return np.hstack(blocks)


def _compose(recipe: Recipe, nets, paths: list[Path], out: Path, facts: dict) -> None:
    contents = [store.read(p, lazy=True) for p in paths]
    first = contents[0]
    present = set(first.rows.keys.tolist())
    for c in contents[1:]:
        present &= set(c.rows.keys.tolist())
    keep = np.array([k in present for k in first.rows.keys.tolist()], dtype=bool)
    keys = first.rows.keys[keep]
    parts, i = [], 0
    for part, views in zip(recipe.parts, nets):
        parts.append([])
        for _ in views:
            sel = _rows_of(contents[i], keys, paths[i])
            parts[-1].append([store.Taken(contents[i].rows.features[layer], sel)
                              for layer in (DEFAULT_LAYER, *part.layers)])
            i += 1
    skipped = _skipped(contents, present)
    rows = store.Rows(keys, first.rows.stamps[keep], first.rows.sha256[keep],
                      {DEFAULT_LAYER: _Composed(parts)}, *skipped)
    idents = [views[0].identity() for views in nets]
    provenance = {
        "format": FORMAT, **facts, "recipe": recipe.to_dict(),
        "backbone": {"name": recipe.name, "architecture": "recipe", "recipe": recipe.to_dict(),
                     "parts": idents, "weights": "; ".join(i["weights"] for i in idents),
                     "weights_sha256": digest([i["weights_sha256"] for i in idents]),
                     "preprocessing": idents[0]["preprocessing"], "layers": []},
        "precision": first.provenance.get("precision"),
        "stores": [str(p) for p in paths],
        "throughput": {"images": 0, "seconds": 0.0},
    }
    store.write_store(out, rows, first.labels[keep], first.classes, provenance, first.manifest)


def _rows_of(c, keys: np.ndarray, path: Path) -> np.ndarray:
    where = {k: j for j, k in enumerate(c.rows.keys.tolist())}
    try:
        return np.array([where[k] for k in keys.tolist()], dtype=np.int64)
    except KeyError as exc:
        raise FeatxError(f"{path}: no row for {exc.args[0]}") from None


def _skipped(contents, present: set) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The files any part's store skipped or lacks, each once, with the first reason."""
    seen: dict[str, tuple[str, str]] = {}
    for c in contents:
        r = c.rows
        for k, s, why in zip(r.skipped_keys.tolist(), r.skipped_stamps.tolist(), r.skipped_reasons.tolist()):
            seen.setdefault(k, (s, why))
        for k, s in zip(r.keys.tolist(), r.stamps.tolist()):
            if k not in present:
                seen.setdefault(k, (s, "not embedded in every view of the recipe"))
    keys = list(seen)
    return (np.array(keys, dtype=str), np.array([seen[k][0] for k in keys], dtype=str),
            np.array([seen[k][1] for k in keys], dtype=str))
