"""The network boundary: weights downloaded into torch.hub's and Hugging Face Hub's own
caches, with one clear line when the host cannot be reached."""
from __future__ import annotations

import os
import re
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..core.errors import BackboneError
from .weights import first_line


def _check_reachable(url: str, what: str, cache_dir: str | os.PathLike, timeout: float = 5.0) -> None:
    """Fail fast, with one clear line, when the download host (or proxy) cannot be reached."""
    parsed = urlparse(url)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(parsed.hostname or ""):
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError:
        raise BackboneError(
            f"cannot download the weights of {what}: {urlparse(url).hostname} is unreachable "
            f"and they are not in the cache ({cache_dir}); connect once to fill the cache, "
            f"or pass a local state dict with --weights FILE"
        ) from None


def _download_failed(what: str, cache_dir, exc: BaseException) -> BackboneError:
    return BackboneError(
        f"cannot download the weights of {what} into {cache_dir} ({first_line(exc)}); "
        f"pass a local state dict with --weights FILE"
    )


def _torch_hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def fetch_url(url: str, what: str) -> Path:
    """A torch.hub-cached download; the file name's hash prefix is checked when present."""
    dst = _torch_hub_dir() / os.path.basename(urlparse(url).path)
    if not dst.exists():
        _check_reachable(url, what, dst.parent)
        match = re.search(r"-([a-f0-9]{8,})\.", dst.name)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(dst), match.group(1) if match else None, progress=False)
        except Exception as exc:  # urllib, hash mismatch, disk
            raise _download_failed(what, dst.parent, exc) from None
    return dst


def fetch_timm(cfg, what: str) -> Path:
    """timm weights: Hugging Face Hub cache first, then torch.hub's; download if neither."""
    if cfg.hf_hub_id:
        import huggingface_hub
        from huggingface_hub import constants

        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for fn in names:
            cached = huggingface_hub.try_to_load_from_cache(cfg.hf_hub_id, fn)
            if isinstance(cached, str):
                return Path(cached)
        _check_reachable(constants.ENDPOINT, what, constants.HF_HUB_CACHE)
        last: BaseException | None = None
        for fn in names:
            try:
                return Path(huggingface_hub.hf_hub_download(cfg.hf_hub_id, fn))
            except Exception as exc:  # a missing file name, then the next one
                last = exc
        raise _download_failed(what, constants.HF_HUB_CACHE, last)
    if cfg.url:
        return fetch_url(cfg.url, what)
    raise BackboneError(f"{what}: timm has no pretrained weights for it; pass --weights FILE")
