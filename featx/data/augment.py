"""Training-time images: a random resized crop and a horizontal flip at the backbone's
resolution and interpolation, drawn from a generator seeded by (seed, epoch, index).

The draws do not depend on the number of DataLoader workers or on where a run was
resumed, so an interrupted fine-tune repeats exactly the images it would have seen.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .images import ImageDecodeError, decode_rgb
from .preprocess import Preprocessing
from .sources.base import Item, Source

SCALE = (0.25, 1.0)  # share of the image area a crop covers (timm's default starts at 0.08)
RATIO = (3 / 4, 4 / 3)


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop, by torchvision's RandomResizedCrop rule."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height  # fallback: the largest centred crop within the ratio range
    if aspect < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif aspect > RATIO[1]:
        w, h = round(height * RATIO[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class Labelled(Dataset):
    """(uint8 image tensor, label) per item, or (None, label) when the file cannot be used.

    ``augment`` selects the training transform for ``epoch``; otherwise the backbone's
    eval transform (resize, centre crop).
    """

    def __init__(self, source: Source, items: list[Item], labels: np.ndarray, pre: Preprocessing, *,
                 augment: bool = False, seed: int = 0, epoch: int = 0):
        self.source, self.items, self.labels, self.pre = source, items, labels, pre
        self.augment, self.seed, self.epoch = augment, seed, epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        label = int(self.labels[i])
        try:
            data = self.source.read(self.items[i])
            if not self.augment:  # the eval transform, decoded as extraction decodes it
                return self.pre.decode(data), label
            image = decode_rgb(data)  # full resolution: a random crop may take a small part
        except (OSError, ImageDecodeError):
            return None, label
        rng = np.random.default_rng([self.seed, self.epoch, i])
        top, left, h, w = crop_box(image.width, image.height, rng)
        size = self.pre.image_size
        image = TF.resized_crop(image, top, left, h, w, [size, size],
                                interpolation=InterpolationMode(self.pre.interpolation), antialias=True)
        if rng.random() < 0.5:
            image = TF.hflip(image)
        return TF.pil_to_tensor(image), label


def collate(samples):
    """Stack the usable samples; returns (uint8 batch or None, labels, count left out)."""
    ok = [s for s in samples if s[0] is not None]
    if not ok:
        return None, torch.zeros(0, dtype=torch.long), len(samples)
    return torch.stack([s[0] for s in ok]), torch.tensor([s[1] for s in ok]), len(samples) - len(ok)
