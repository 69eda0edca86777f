"""Cosine k-nearest neighbours with the training rows streamed by blocks (out of core).

The queries are taken a chunk at a time; for each chunk the training rows stream past in
blocks, and each query keeps its running ``k`` most similar rows: the ``topk`` of a
block's similarities merged with the ``topk`` kept so far, which is the ``topk`` over all
rows read. The similarities are those of :class:`~featx.heads.CosineKNN` (unit rows in
float64), and so are the distances and the inverse-distance votes.

:class:`StreamingCosineKNN` keeps a reference to its training rows, not a copy: it
predicts only while the array (an open ``h5py.Dataset``, a ``np.memmap``, a store
reader) is still readable. Pickling it is refused (it would copy the whole array):
save :meth:`~StreamingCosineKNN.detached` with where the rows are (``X_``; ``rows_``, the
mask of the rows it learnt from), and :meth:`~StreamingCosineKNN.attach` them after
loading. :meth:`~StreamingCosineKNN.to_cosine_knn` gives the in-memory model, when the
rows fit in memory.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from ..core.devices import resolve_device
from .base import proba_scores
from .knn import EXACT, CosineKNN, unit_rows, vote
from .streaming_blocks import Job, Tally, choose, gathered, masked_blocks, resolve_max_memory, settle

# Shares of the cap: the training block and its copies (raw, selected, float64, unit);
# the chunk of queries (raw, selected, gathered, unit, running top k); the similarities.
TRAIN_SHARE, QUERY_SHARE, SIMILARITY_SHARE = 0.25, 0.5, 0.25
TRAIN_COPIES, QUERY_COPIES = 7, 9  # in float32 copies of the block as read


def plan(max_memory: int, d: int, k: int, itemsize: int = 4) -> tuple[int, int]:
    """(training rows per block, queries per chunk) under ``max_memory`` bytes."""
    train = max(1, int(TRAIN_SHARE * max_memory // (TRAIN_COPIES * d * itemsize)))
    queries = max(1, int(QUERY_SHARE * max_memory // (QUERY_COPIES * d * itemsize + 32 * k)))
    return train, queries


def nearest(source, queries: np.ndarray, k: int, *, max_memory: int, device, tally: Tally | None = None):
    """(distances, indices) of each query's ``k`` nearest rows of ``source`` (``(X,
    mask)``: the rows ``mask`` selects), nearest first; indices count selected rows."""
    X, mask = source
    dev = resolve_device(device) if isinstance(device, str) else device
    train_rows, _ = plan(max_memory, X.shape[1], k, np.dtype(X.dtype).itemsize)
    q = unit_rows(queries, dev)
    if not len(q):
        return np.zeros((0, k)), np.zeros((0, k), np.int64)
    best_s = torch.empty(len(q), 0, dtype=torch.float64, device=dev)
    best_i = torch.empty(len(q), 0, dtype=torch.int64, device=dev)
    for offset, rows in masked_blocks(X, train_rows, mask, tally=tally):
        t = unit_rows(rows, dev)
        # a query's similarities (and topk's copy of them), then the merge of its top k
        step = max(1, int(SIMILARITY_SHARE * max_memory // (16 * len(t) + 64 * k)))
        for a in range(0, len(q), step):
            s, i = torch.topk(q[a:a + step] @ t.T, min(k, len(t)), dim=1)
            s, i = torch.cat([best_s[a:a + step], s], 1), torch.cat([best_i[a:a + step], i + offset], 1)
            keep = torch.topk(s, min(k, s.shape[1]), dim=1)
            if a == 0:
                new_s = torch.empty(len(q), keep.values.shape[1], dtype=torch.float64, device=dev)
                new_i = torch.empty(len(q), keep.values.shape[1], dtype=torch.int64, device=dev)
            new_s[a:a + step], new_i[a:a + step] = keep.values, i.gather(1, keep.indices)
        best_s, best_i = new_s, new_i
    dist = np.sqrt(np.clip(2.0 - 2.0 * best_s.cpu().numpy(), 0.0, None))
    dist[dist < EXACT] = 0.0
    return dist, best_i.cpu().numpy()


def sweep_knn(job: Job, candidates: list[dict]) -> list[tuple[float, float]]:
    """(accuracy, log loss) on the validation rows of each k, the neighbours found once
    for the largest k, as :class:`~featx.heads.KNNHead` does."""
    classes, y_idx = np.unique(job.y[job.train], return_inverse=True)
    kmax = max(p["n_neighbors"] for p in candidates)
    _, chunk = plan(job.max_memory, job.d, kmax, np.dtype(job.X.dtype).itemsize)
    yv = job.y[job.val]
    correct, loss = np.zeros(len(candidates), np.int64), np.zeros(len(candidates))
    for offset, queries in gathered(job.X, chunk, job.val, tally=job.tally):
        dist, idx = nearest((job.X, job.train), queries, kmax, max_memory=job.max_memory, device=job.device,
                            tally=job.tally)
        yq = yv[offset:offset + len(queries)]
        for j, p in enumerate(candidates):
            a, ll = proba_scores(vote(dist, idx, y_idx, len(classes), p["n_neighbors"]), classes, yq)
            correct[j] += round(a * len(yq))
            loss[j] += ll * len(yq)
    return [(float(c) / len(yv), float(ll) / len(yv)) for c, ll in zip(correct, loss)]


def fit_knn(job: Job):
    """A fitted :class:`~featx.heads.KNNHead` whose model streams its training rows."""
    head = job.head
    candidates = head._candidates(job.y[job.train if job.val is not None else job.labelled])
    scores, best = None, min(head.default_index, len(candidates) - 1)
    if job.val is not None:
        scores = sweep_knn(job, candidates)
        best = choose(scores)
    head.model_ = StreamingCosineKNN(device=head.device, max_memory=job.max_memory, **candidates[best])
    head.model_.fit(job.X, job.y, rows=job.labelled, tally=job.tally)
    return settle(head, job, candidates, scores, best)


class StreamingCosineKNN(ClassifierMixin, BaseEstimator):
    """:class:`~featx.heads.CosineKNN` whose training rows stay where they are: ``fit``
    keeps a reference to ``X`` (and the mask ``rows`` of the rows to learn from), and
    ``predict_proba`` streams both those rows and the queries, under ``max_memory``
    bytes (None: :func:`~featx.heads.streaming_blocks.default_max_memory`)."""

    def __init__(self, n_neighbors: int = 10, device: str = "auto", max_memory: int | None = None):
        self.n_neighbors = n_neighbors
        self.device = device
        self.max_memory = max_memory

    def fit(self, X, y, rows=None, tally: Tally | None = None):
        y = np.asarray(y)
        if len(X.shape) != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X has shape {X.shape}, y {y.shape}: expected (n, d) and (n,)")
        self.rows_ = np.ones(len(y), bool) if rows is None else np.asarray(rows, bool)
        self.classes_, self.y_ = np.unique(y[self.rows_], return_inverse=True)
        self.X_, self.n_features_in_ = X, int(X.shape[1])
        self.tally_ = Tally() if tally is None else tally
        return self

    def detached(self) -> StreamingCosineKNN:
        """A copy without the reference to the training rows, which pickles: save it with
        where the rows are, and :meth:`attach` them again after loading."""
        copy = clone(self)
        copy.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("X_", "tally_")})
        return copy

    def attach(self, X) -> StreamingCosineKNN:
        """Give a detached model its training rows again (the same array it was fitted on)."""
        if tuple(X.shape) != (len(self.rows_), self.n_features_in_):
            raise ValueError(f"X has shape {tuple(X.shape)}; this model learnt from an array of shape "
                             f"{(len(self.rows_), self.n_features_in_)}")
        self.X_, self.tally_ = X, Tally()
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        if "X_" not in self.__dict__:
            raise ValueError("this model is detached from its training rows: attach(X) them first")
        if len(X.shape) != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has shape {X.shape}; this model takes {self.n_features_in_} features")
        cap = resolve_max_memory(self.max_memory)
        _, chunk = plan(cap, self.n_features_in_, self.n_neighbors, np.dtype(X.dtype).itemsize)
        out = np.zeros((X.shape[0], len(self.classes_)))
        everything = np.ones(X.shape[0], bool)
        for offset, queries in gathered(X, chunk, everything, tally=self.tally_):
            dist, idx = nearest((self.X_, self.rows_), queries, self.n_neighbors, max_memory=cap,
                                device=self.device, tally=self.tally_)
            out[offset:offset + len(queries)] = vote(dist, idx, self.y_, len(self.classes_), self.n_neighbors)
        return out

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def to_cosine_knn(self) -> CosineKNN:
        """The in-memory model: the training rows read into memory (they must fit)."""
        check_is_fitted(self)
        rows = np.concatenate([r for _, r in gathered(self.X_, 1 << 16, self.rows_)])
        model = CosineKNN(self.n_neighbors, device=self.device)
        model.classes_, model.y_, model.X_, model.n_features_in_ = self.classes_, self.y_, rows, rows.shape[1]
        return model

    def __getstate__(self):
        if "X_" in self.__dict__ and type(self.X_) is not np.ndarray:
            raise TypeError(f"StreamingCosineKNN refers to its training rows in a {type(self.X_).__name__}; "
                            "save where those rows are (X_, rows_), or the in-memory model (to_cosine_knn())")
        return super().__getstate__()
