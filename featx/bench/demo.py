"""The offline demo: the whole pipeline on generated textures, or on the user's images."""
from __future__ import annotations

import os
from pathlib import Path

from ..data.textures import generate
from .pipeline import Pipeline

DEMO_BACKBONES = ["efficientnet_lite0", "pixels"]  # frozen ImageNet features, and the raw-pixel baseline
DEMO_HEADS = ["logreg", "knn", "nearest_centroid"]
# A short fine-tune and the same budget from scratch, small enough for two CPU cores.
DEMO_FINETUNE = {"strategies": ["lp_ft"], "epochs": 3, "shots": [5, 20]}
TEXTURE_SIZE = 96  # the generated textures' own size: the networks see them unscaled


def demo_pipeline(cache_dir: str | os.PathLike = "cache", data: str | None = None) -> Pipeline:
    """The demo's pipeline. Without ``data``, a generated texture dataset in the cache
    (made once; the same bytes every time). A folder with ``train/`` and ``test/`` (and
    optionally ``val/``) inside is used as those splits; any other source has a
    stratified quarter held out as the test split."""
    extract = {}  # your images: at the weights' own resolution
    if data is None:
        root = generate(Path(cache_dir) / "demo-textures", size=TEXTURE_SIZE)
        train, val, test = str(root / "train"), None, str(root / "test")
        extract = {"image_size": TEXTURE_SIZE}
    elif all(os.path.isdir(os.path.join(data, split)) for split in ("", "train", "test")):
        train, test = os.path.join(data, "train"), os.path.join(data, "test")
        val = os.path.join(data, "val") if os.path.isdir(os.path.join(data, "val")) else None
    else:
        train, val, test = data, None, None
    return Pipeline(name="demo", train=train, val=val, test=test, backbones=list(DEMO_BACKBONES),
                    heads=list(DEMO_HEADS), shots=[1, 2, 5, 10, 25], draws=5, extract=extract,
                    finetune=dict(DEMO_FINETUNE), scratch={})
