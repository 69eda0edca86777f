"""Small images (and archives of them) made by the tests themselves."""
from __future__ import annotations

import io
import tarfile
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


def tar_bytes(members: dict[str, bytes], special: tuple = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in special:
            tf.addfile(info)
    return buf.getvalue()


def image_tree(top: str, per_split: dict[str, int]) -> dict[str, bytes]:
    """``top/<split>/<class>/<n>.jpg`` with distinct small photos."""
    out, seed = {}, 0
    for split, n in per_split.items():
        for cls in ("ants", "bees"):
            for i in range(n):
                out[f"{top}/{split}/{cls}/{i}.jpg"] = jpeg_bytes(photo(seed, (40, 30)))
                seed += 1
    return out
