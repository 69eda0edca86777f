"""Local weights: a state dict file for any family's architecture, read without running
code (safetensors, or ``torch.load(weights_only=True)``) and fitted name by name, or
position by position when the names differ."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..core.errors import BackboneError


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict without running code: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BackboneError(f"{path}: no such weights file") from None
    except Exception as exc:  # unpickling errors come in many types
        raise BackboneError(f"{path}: not a loadable state dict ({first_line(exc)})") from None
    for wrapper in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BackboneError(f"{path}: does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def fit_state_dict(model: nn.Module, sd: dict, origin: str, classifier: str, positional: bool = False):
    """Load ``sd`` into ``model``; a classifier of another size is left out, nothing else may differ."""
    own = model.state_dict()
    if positional and set(sd) != set(own):  # other names: match tensors by position
        if len(sd) != len(own) or any(a.shape != b.shape for a, b in zip(sd.values(), own.values())):
            raise BackboneError(f"{origin}: its tensors do not line up with {type(model).__name__}")
        sd = dict(zip(own, sd.values()))

    def in_head(k: str) -> bool:
        return bool(classifier) and (k == classifier or k.startswith(classifier + "."))

    sd = {k: v for k, v in sd.items() if not (in_head(k) and k in own and own[k].shape != v.shape)}
    missing = [k for k in own if k not in sd and not in_head(k)]
    removed = tuple(f"{n}." for n, m in model._modules.items() if m is None)  # e.g. googlenet's aux1
    unexpected = [k for k in sd if k not in own and not (removed and k.startswith(removed))]
    wrong = [k for k in sd if k in own and own[k].shape != sd[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise BackboneError(f"{origin}: does not fit {type(model).__name__} ({detail})")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def finetuned_image_size(weights: str) -> int | None:
    """The resolution a fine-tuned ``model.pt`` was trained at, from its sidecar."""
    try:
        facts = json.loads(Path(weights + ".json").read_text())
        return int(facts["preprocessing"]["image_size"]) if facts.get("kind") == "finetuned" else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
