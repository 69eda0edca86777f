"""Small images made by the tests themselves."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def photo(seed: int, size=(96, 72)) -> Image.Image:
    """A smooth random RGB picture: distinct per seed, compresses like a photo."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BICUBIC)


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def make_folder(root: Path, per_class: dict[str, int], start_seed: int = 0) -> Path:
    """root/<class>/<nn>.jpg with distinct pictures."""
    seed = start_seed
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / cls / f"{i:02d}.jpg").write_bytes(jpeg_bytes(photo(seed)))
            seed += 1
    return root
