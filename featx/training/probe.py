"""LP-FT's starting classifier: a logistic regression on frozen features (Kumar et al. 2022)."""
from __future__ import annotations

import numpy as np

from .. import store
from ..backbones import Backbone
from ..data.sources import KeysSource
from ..extraction import extract
from ..heads import make_head
from .settings import Settings
from .splits import Split


def linear_probe_weights(model, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) with ``x @ W.T + b`` equal to the decision values of featx's logreg
    pipeline (StandardScaler, row-span basis, LogisticRegression) on raw features x."""
    scaler, span, lr = model[0], model[1], model[-1]
    coef = lr.coef_ if span.basis_ is None else lr.coef_ @ span.basis_.T
    W = coef / scaler.scale_
    b = lr.intercept_ - W @ scaler.mean_
    if W.shape[0] == 1:  # binary: softmax([-z/2, z/2]) = sigmoid(z)
        W, b = np.vstack([-W / 2, W / 2]), np.array([-b[0] / 2, b[0] / 2])
    full_W = np.zeros((n_classes, W.shape[1]))
    full_b = np.full(n_classes, (b.min() - 10.0) if len(b) else 0.0)  # a class absent from train
    full_W[lr.classes_], full_b[lr.classes_] = W, b
    return full_W, full_b


def frozen_features(split: Split, backbone: Backbone, cache_dir,
                    extract_options: dict) -> tuple[np.ndarray, np.ndarray]:
    """Store features of a split's images (through the cache) and their labels; a split
    carved out of a source reads that source's store."""
    src = split.source
    while isinstance(src, KeysSource):
        src = src.base
    X, _, keys, _ = store.load(extract(src, backbone, cache_dir, **extract_options).path)
    row = {k: i for i, k in enumerate(keys.tolist())}
    have = [i for i, it in enumerate(split.items) if it.key in row]
    return X[[row[split.items[i].key] for i in have]], split.labels[have]


def linear_probe(tr: Split, va: Split, backbone: Backbone, n_classes: int, *, cache_dir,
                 extract_options: dict, settings: Settings):
    """LP-FT's starting classifier: logreg on frozen features, C chosen on the val split,
    fitted on the train split. Returns (W, b, details)."""
    Xt, yt = frozen_features(tr, backbone, cache_dir, extract_options)
    Xv, yv = frozen_features(va, backbone, cache_dir, extract_options)
    head = make_head("logreg", random_state=settings.seed)
    mask = np.r_[np.zeros(len(yt), bool), np.ones(len(yv), bool)]
    head.fit(np.concatenate([Xt, Xv]), np.concatenate([yt, yv]), val_mask=mask)
    model = head._build(**head.best_params_).fit(Xt, yt)
    W, b = linear_probe_weights(model, n_classes)
    return W, b, {"C": head.best_params_["C"], "val_accuracy": head.val_accuracy_}
