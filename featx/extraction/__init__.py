"""Embedding images into the store: a plan of what to embed (:mod:`.plan`), decoding
workers (:mod:`.loader`), the batch loop (:mod:`.embed`), the store writer that owns the
lock, journal and old rows (:mod:`.writer`), and :func:`extract`, which runs them."""
from __future__ import annotations

from .extract import extract
from .writer import ExtractResult

__all__ = ["ExtractResult", "extract"]
