"""Preprocessing that travels with a backbone's weights: resize, crop, mean and std.

Images are resized and cropped on uint8 in the data-loading workers; the float
conversion and normalisation happen on the device, batched (see :func:`normalize`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..core.errors import ParameterError
from .images import decode_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Eval-time preprocessing: resize the shorter side, centre-crop, normalise."""

    image_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    decoder: str = "cpu"  # "gpu": JPEGs decoded and resized on CUDA (see featx.extraction.gpu_decode)
    flip: bool = False  # the mirror image (left to right): the second view of flip test-time augmentation

    @property
    def resize_size(self) -> int:
        # timm's eval transform: scale to floor(image_size / crop_pct), then crop.
        # (The epsilon keeps 224 / (224 / 256) from flooring to 255.)
        return math.floor(self.image_size / self.crop_pct + 1e-6)

    def with_image_size(self, image_size: int | None) -> "Preprocessing":
        """The same preprocessing at another resolution, keeping the crop fraction."""
        if image_size is None or image_size == self.image_size:
            return self
        if image_size < 8:
            raise ParameterError("image_size", image_size, "too small (at least 8 pixels)")
        return replace(self, image_size=int(image_size))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["resize_size"] = self.resize_size
        # part of what determines the features: PIL with DCT scaling (see decode()), or
        # nvJPEG and torch's resize on the GPU
        d["decode"] = {"cpu": "jpeg-dct-scaled", "gpu": "nvjpeg"}[d.pop("decoder")]
        if not d.pop("flip"):  # named only when set: stores written before flip existed keep their keys
            return d
        d["flip"] = True
        return d

    def decode(self, data: bytes) -> torch.Tensor:
        """Image bytes -> uint8 tensor (3, image_size, image_size). A large JPEG is decoded
        at a reduced size that still covers the resize (see images.decode_rgb)."""
        return self.decode_hwc(data).permute(2, 0, 1)

    def decode_hwc(self, data: bytes) -> torch.Tensor:
        """Image bytes -> uint8 tensor (image_size, image_size, 3), as PIL lays it out."""
        return torch.from_numpy(self.decode_array(data).copy())

    def decode_array(self, data: bytes) -> np.ndarray:
        """Image bytes -> read-only uint8 array (image_size, image_size, 3) over PIL's own
        bytes: what the decoding processes copy, once, into shared memory."""
        mode = InterpolationMode(self.interpolation)
        image = TF.resize(decode_rgb(data, min_side=self.resize_size), self.resize_size, interpolation=mode,
                          antialias=True)
        image = TF.center_crop(image, [self.image_size, self.image_size])
        if self.flip:
            image = TF.hflip(image)
        return np.asarray(image, dtype=np.uint8)

    def to_uint8(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """RGB PIL image, or uint8 tensor (..., 3, H, W) on any device -> uint8 tensor
        (..., 3, image_size, image_size)."""
        mode = InterpolationMode(self.interpolation)
        image = TF.resize(image, self.resize_size, interpolation=mode, antialias=True)
        image = TF.center_crop(image, [self.image_size, self.image_size])
        if self.flip:
            image = TF.hflip(image)
        return image if isinstance(image, torch.Tensor) else TF.pil_to_tensor(image)

    def normalize(self, batch: torch.Tensor, dtype: torch.dtype = torch.float32,
                  out: torch.Tensor | None = None, affine: tuple | None = None) -> torch.Tensor:
        """uint8 batch (N, 3, H, W) on any device -> normalised float batch
        ``x * (1 / (255 std)) - mean / std``, written into ``out`` when given (a contiguous
        buffer of the batch's shape on its device, reused batch after batch). Three
        vectorised passes (cast, scale, shift) in float32: a fused ``addcmul`` from uint8
        does not vectorise and cost the CPU six times as much. ``affine``: this device's
        :meth:`affine`, made once by a caller that normalises batch after batch (making
        it copies to the device, which waits for the device's queue)."""
        scale, shift = affine or self.affine(batch.device)
        if out is None:
            out = torch.empty(batch.shape, dtype=torch.float32, device=batch.device)
        out.copy_(batch).mul_(scale).add_(shift)
        return out if dtype == torch.float32 else out.to(dtype)

    def affine(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (1, 3, 1, 1) float32 on ``device``: normalised = uint8 * scale + shift."""
        mean = torch.tensor(self.mean, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float64).view(1, 3, 1, 1)
        return (1 / (255 * std)).float().to(device), (-mean / std).float().to(device)
