"""The built-in sample: two classes of real photographs, available offline everywhere.

scikit-learn ships two JPEG photographs (``china.jpg``, a temple, and ``flower.jpg``).
The sample cuts each into overlapping crops at several scales, one class per photo, so
featx can show a complete run on a fresh machine without downloading a dataset.
"""
from __future__ import annotations

import io
from pathlib import Path

import sklearn
from PIL import Image

from .base import Item, Source

CROPS_PER_CLASS = 16


def _photos() -> dict[str, Path]:
    folder = Path(sklearn.__file__).parent / "datasets" / "images"
    return {"china": folder / "china.jpg", "flower": folder / "flower.jpg"}


def _crop_box(index: int, width: int, height: int) -> tuple[int, int, int, int]:
    # Four scales x a 2x2 grid of positions: deterministic, varied framing.
    scale = (0.45, 0.6, 0.75, 0.9)[index // 4]
    cw, ch = int(width * scale), int(height * scale)
    col, row = index % 2, (index // 2) % 2
    left = (width - cw) * col
    top = (height - ch) * row
    return left, top, left + cw, top + ch


class SampleSource(Source):
    def __init__(self):
        super().__init__(spec=f"sample:sklearn-{sklearn.__version__}", name="sample")
        self.classes = sorted(_photos())
        self.items = [
            Item(f"{cls}/{i:02d}.jpg", label, f"sklearn-{sklearn.__version__}")
            for label, cls in enumerate(self.classes)
            for i in range(CROPS_PER_CLASS)
        ]

    def read(self, item: Item) -> bytes:
        cls, name = item.key.split("/")
        with Image.open(_photos()[cls]) as photo:
            crop = photo.convert("RGB").crop(_crop_box(int(name[:2]), *photo.size))
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=92)
        return buf.getvalue()
