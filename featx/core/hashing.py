"""SHA-256 of files and of JSON-able values: the identities featx keys its files on."""
from __future__ import annotations

import hashlib
import json
import os


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(obj) -> str:
    """SHA-256 of ``obj`` as canonical JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
