"""The heads by name."""
from __future__ import annotations

from ..core.errors import FeatxError
from .base import SweptHead
from .linear import LinearSVMHead, LogRegHead, RidgeHead
from .neighbours import KNNHead, NearestCentroidHead
from .nonlinear import HGBHead, MLPHead

HEADS: dict[str, type[SweptHead]] = {
    "logreg": LogRegHead,
    "linear_svm": LinearSVMHead,
    "ridge": RidgeHead,
    "knn": KNNHead,
    "nearest_centroid": NearestCentroidHead,
    "mlp": MLPHead,
    "hgb": HGBHead,
}

CHEAP_HEADS = ("logreg", "knn", "nearest_centroid", "ridge")  # fast enough for many small fits


def make_head(name: str, **params) -> SweptHead:
    """A fresh, unfitted head by its name."""
    try:
        return HEADS[name](**params)
    except KeyError:
        raise FeatxError(f"unknown head {name!r}: choose from {', '.join(HEADS)}") from None


def list_heads() -> list[str]:
    """The heads' names, in the order the README's table lists them."""
    return list(HEADS)
