"""JPEG decoding on a CUDA device, in batches (nvJPEG through torchvision).

With ``decode="gpu"`` the data-loading workers only read the files and look at their
headers: a plain JPEG (RGB or grayscale, upright) travels as its bytes, and the main
process decodes a whole batch of them on the GPU, then resizes and crops there with
torch. Any other file (PNG, CMYK or EXIF-rotated JPEG...) is decoded on the CPU by the
same :class:`~featx.data.preprocess.Preprocessing`, as without this option, and so is a JPEG
that nvJPEG refuses.
"""
from __future__ import annotations

import io
import warnings

import torch
from PIL import Image

from ..data.images import ImageDecodeError
from ..data.preprocess import Preprocessing

_ORIENTATION = 0x0112


def gpu_ready(data: bytes) -> bool:
    """Whether nvJPEG can decode ``data`` to the same upright RGB image PIL would give:
    a baseline or progressive JPEG in RGB or grayscale, without EXIF rotation."""
    if data[:3] != b"\xff\xd8\xff":
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            return im.format == "JPEG" and im.mode in ("RGB", "L") and im.getexif().get(_ORIENTATION, 1) == 1
    except Exception:  # noqa: BLE001 - whatever is wrong, the CPU decoder says why
        return False


def decode_batch(datas: list[bytes], pre: Preprocessing, device: torch.device) -> list[torch.Tensor | str]:
    """Each JPEG as a uint8 tensor (3, image_size, image_size) on ``device``, or the
    one-line reason it could not be decoded."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 flags its decoders as deprecated
        try:
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: decode one by one
            images = []
            for e in encoded:
                try:
                    images.append(decode_jpeg(e, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    images.append(None)
    out: list[torch.Tensor | str | None] = [None] * len(datas)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, (data, image) in enumerate(zip(datas, images)):
        if image is None:
            try:
                out[i] = pre.decode(data).to(device)
            except ImageDecodeError as exc:
                out[i] = str(exc)
        else:
            by_size.setdefault(tuple(image.shape[-2:]), []).append(i)
    for idx in by_size.values():  # images of one size are resized together
        resized = pre.to_uint8(torch.stack([images[i] for i in idx]))
        for i, image in zip(idx, resized):
            out[i] = image
    return out
