"""Image files to features, as a scikit-learn transformer."""
from __future__ import annotations

import logging
import os

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .. import store
from ..backbones import Backbone, load_backbone
from ..core.errors import SourceError
from ..core.names import DEFAULT_LAYER
from ..data.sources.files import FilesSource
from .run import extract

log = logging.getLogger(__name__)


class ImageEmbedder(TransformerMixin, BaseEstimator):
    """Image files to features, through the embedding cache: a scikit-learn transformer.

    ``transform(X)`` takes a list (or 1-D array) of image file paths and returns one row
    of features per path, in the same order: the backbone's pooled embedding, followed by
    each of ``layers``, pooled. Every image is embedded once: its features are cached in
    the store under ``cache_dir``, keyed by the file's absolute path, size and
    modification time, so refitting (in ``GridSearchCV`` or ``cross_val_score``) embeds
    nothing twice. Nothing is learnt: ``fit`` returns the transformer as it is.

    The network runs eagerly, never as a cached graph (OpenVINO, the frozen TorchScript
    graph or the compiled one, see featx.extraction.runtimes): an image's features must
    not depend on how many images came with it. A file that cannot be read or decoded
    raises :class:`~featx.core.errors.SourceError` naming it (a transformer owes one row
    per input).

    Parameters
    ----------
    backbone : str
        The network, any name :func:`featx.extract` takes (:func:`featx.list_backbones`).
    cache_dir : path
        The cache folder.
    layers : tuple of str
        Named stages of the network whose pooled outputs are appended to the embedding.
    image_size : int, optional
        Input resolution (default: the weights').
    precision : str
        ``auto``, ``fp32``, ``bf16`` or ``fp16``.
    device : str
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    recipe : str, dict or featx.extraction.recipes.Recipe, optional
        A feature recipe (:mod:`featx.extraction.recipes`: stacked backbones, intermediate stages,
        flip TTA, another resolution) instead of ``backbone``, ``layers`` and
        ``image_size``: each row is the recipe's store's, its blocks side by side
        unscaled; put ``featx.heads.BlockScaler(embedder.blocks())`` before a
        classifier to weigh them alike, as featx's pipelines do.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", *, cache_dir: str | os.PathLike = "cache",
                 layers: tuple[str, ...] = (), image_size: int | None = None, precision: str = "auto",
                 device: str = "auto", recipe=None):
        self.backbone = backbone
        self.cache_dir = cache_dir
        self.layers = layers
        self.image_size = image_size
        self.precision = precision
        self.device = device
        self.recipe = recipe

    def fit(self, X, y=None):
        return self

    def transform(self, X) -> np.ndarray:
        paths = _paths(X)
        source = FilesSource(paths)
        if source.problems:
            key, reason = source.problems[0]
            raise SourceError(f"{key}: {reason}")
        if self.recipe is not None:
            return self._recipe_rows(source, paths)
        result = extract(source, self._network(), self.cache_dir, precision=self.precision,
                         device=self.device, on_error="fail")
        log.info("%s: %d images, %d embedded, %d from the cache", self.backbone, len(paths), result.embedded,
                 len(paths) - result.embedded)
        blocks, keys = [], None
        for layer in (DEFAULT_LAYER, *self.layers):
            X_layer, _, stored, _ = store.load(result.path, layer)
            if keys is None:
                row = {k: i for i, k in enumerate(stored.tolist())}
                keys = [row[item] for item in FilesSource.keys_of(paths)]
            blocks.append(X_layer[keys])
        return np.hstack(blocks)

    def _recipe_rows(self, source: FilesSource, paths: list[str]) -> np.ndarray:
        from .recipes import recipe_store

        recipe, nets = self._recipe()
        made = recipe_store(recipe, source, self.cache_dir, nets=nets, precision=self.precision,
                            device=self.device, on_error="fail")
        X, _, stored, _ = store.load(made.path)
        row = {k: i for i, k in enumerate(stored.tolist())}
        return X[[row[item] for item in FilesSource.keys_of(paths)]]

    def _recipe(self):
        """The recipe and its networks, loaded once per recipe (not part of a pickle)."""
        from .recipes import networks, parse

        recipe = parse(self.recipe)
        cached = self.__dict__.get("_cached_recipe")
        if cached is None or cached[0] != recipe:
            cached = (recipe, networks(recipe))
            self.__dict__["_cached_recipe"] = cached
        return cached

    def blocks(self) -> tuple[int, ...]:
        """The width of each block of a row: the embedding, then each layer (of each part
        of the recipe, in order)."""
        if self.recipe is None:
            dims = self._network().dims
            return tuple(dims[layer] for layer in (DEFAULT_LAYER, *self.layers))
        from .recipes import block_widths

        return block_widths(*self._recipe())

    def _network(self) -> Backbone:
        """The backbone, loaded once per set of parameters (not part of a pickle)."""
        wanted = (self.backbone, tuple(self.layers), self.image_size)
        cached = self.__dict__.get("_cached_backbone")
        if cached is None or cached[0] != wanted:
            network = load_backbone(self.backbone, layers=tuple(self.layers), image_size=self.image_size)
            cached = (wanted, network)
            self.__dict__["_cached_backbone"] = cached
        return cached[1]

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_cached_backbone", None)
        state.pop("_cached_recipe", None)
        return state

    def __sklearn_is_fitted__(self) -> bool:
        return True  # nothing to learn

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        if self.recipe is not None:
            recipe, _ = self._recipe()
            layers = [f"{part.name}:{layer}" for part in recipe.parts
                      for layer in (DEFAULT_LAYER, *part.layers)]
            names = [f"{name}_{i}" for name, w in zip(layers, self.blocks()) for i in range(w)]
            return np.array(names, dtype=object)
        dims = self._network().dims
        names = [f"{layer}_{i}" for layer in (DEFAULT_LAYER, *self.layers) for i in range(dims[layer])]
        return np.array(names, dtype=object)


def _paths(X) -> list[str]:
    """Image paths from a list, a 1-D array or a one-column 2-D array."""
    arr = np.asarray(X, dtype=object)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"ImageEmbedder takes a list of image file paths, got an array of shape {arr.shape}")
    return [os.fspath(p) for p in arr]
