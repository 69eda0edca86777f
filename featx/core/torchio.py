"""Torch files written atomically and read without running code."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch

from .errors import FeatxError
from .files import write_bytes


def save_torch(obj, path: Path) -> None:
    """``torch.save`` to ``path`` atomically. Serialised in memory first: torch.save
    reports a full disk only as an opaque RuntimeError, a plain write as the OSError it is."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getbuffer())


def write_json(obj, path: Path) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def load_weights_only(path: str | os.PathLike, error: type[FeatxError] = FeatxError):
    """A checkpoint or model file, read with ``weights_only=True`` (no code runs);
    ``error`` is raised, in one line, when it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise error(f"{path}: no such checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - unpickling fails in many types (code refused, torn file)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise error(f"{path}: not a loadable checkpoint ({first})") from None
