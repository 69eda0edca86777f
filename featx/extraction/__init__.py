"""Embedding images into the store: a plan of what to embed (:mod:`.plan`), decoding
workers (:mod:`.loader`), the batch loop (:mod:`.embed`), the store writer that owns the
lock, journal and old rows (:mod:`.writer`), :func:`extract`, which runs them, and
:class:`ImageEmbedder`, a scikit-learn transformer on top (:mod:`.embedder`)."""
from __future__ import annotations

from .embedder import ImageEmbedder
from .run import extract
from .writer import ExtractResult

__all__ = ["ExtractResult", "ImageEmbedder", "extract"]
