"""Classifier heads on frozen features: scikit-learn estimators looked up by name
(:mod:`.catalog`), each choosing its hyper-parameter on a validation split and refit
(:mod:`.base`); the torch solvers behind logreg and kNN (:mod:`.logreg`, :mod:`.knn`);
where sweeps run (:mod:`.sweeps`); fitting on a store (:mod:`.fitting`); model files
(:mod:`.bundle`, a fine-tuned ``model.pt`` included) and prediction (:mod:`.predict`).

The classes a saved model holds are named ``featx.heads.<Class>`` inside the file,
whichever module defines them, so files keep loading when modules move.
"""
from __future__ import annotations

from .base import SweptHead, validation_split
from .blocks import BlockScaler
from .catalog import CHEAP_HEADS, HEADS, list_heads, make_head
from .knn import CosineKNN
from .linear import C_GRID, LinearSVMHead, LogRegHead, RidgeHead, _RowSpan
from .logreg import TorchLogisticRegression
from .neighbours import KNNHead, NearestCentroidHead, _CosineCentroids
from .nonlinear import HGBHead, MLPHead
from .streaming_knn import StreamingCosineKNN

for _cls in (SweptHead, BlockScaler, LogRegHead, LinearSVMHead, RidgeHead, KNNHead, NearestCentroidHead,
             MLPHead, HGBHead, _RowSpan, _CosineCentroids, TorchLogisticRegression, CosineKNN,
             StreamingCosineKNN):
    _cls.__module__ = __name__
del _cls

__all__ = ["C_GRID", "CHEAP_HEADS", "HEADS", "BlockScaler", "CosineKNN", "HGBHead", "KNNHead",
           "LinearSVMHead", "LogRegHead", "MLPHead", "NearestCentroidHead", "RidgeHead", "SweptHead",
           "TorchLogisticRegression", "list_heads", "make_head", "validation_split"]
