"""The heads by name."""
from __future__ import annotations

import difflib

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
    """A fresh, unfitted head: a scikit-learn classifier that chooses its hyper-parameter
    on a validation split when fitted, then refits on all its rows.

    Parameters
    ----------
    name : str
        The head (:func:`list_heads`): ``logreg``, ``linear_svm``, ``ridge``, ``knn``,
        ``nearest_centroid``, ``mlp`` or ``hgb``.
    **params
        The head's own parameters: ``val_fraction`` (default 0.2), ``random_state`` (the
        split's seed), ``n_jobs`` (the sweep as parallel tasks), and ``device`` for
        ``logreg`` and ``knn`` (``auto``, ``cpu`` or ``cuda``).

    Returns
    -------
    featx.heads.SweptHead
        ``fit(X, y, val_mask=None)``, ``predict``, ``predict_proba``; after fitting,
        ``best_params_``, ``val_accuracy_`` and ``val_scores_``.
    """
    if name not in HEADS:
        near = difflib.get_close_matches(name, list(HEADS), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise FeatxError(f"unknown head {name!r}: {hint}choose from {', '.join(HEADS)}")
    return HEADS[name](**params)


def list_heads() -> list[str]:
    """The heads' names, for :func:`make_head` and ``featx train --head``."""
    return list(HEADS)
