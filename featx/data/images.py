"""Decoding image bytes into upright 8-bit RGB, whatever the file's mode."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The extensions torchvision's ImageFolder accepts; other files are reported, not read.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Transparent pixels are composited onto this colour rather than exposing whatever RGB
# values happen to sit under them.
BACKGROUND = (255, 255, 255)


class ImageDecodeError(ValueError):
    """The bytes are not an image featx can read; the message says why in one line."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_rgb(data: bytes, min_side: int | None = None) -> Image.Image:
    """Decode ``data`` to an upright ``RGB`` image (EXIF orientation applied).

    Grayscale, 16-bit, palette, alpha and CMYK images are all converted; an image that
    cannot be decoded raises :class:`ImageDecodeError` with a one-line reason.

    With ``min_side``, a JPEG is decoded at reduced size by libjpeg's DCT scaling (1/2,
    1/4 or 1/8; PIL's ``draft``) as long as its shorter side stays at least
    ``min_side``: far less work for a photo that is resized down afterwards anyway.
    """
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about EXIF and palette quirks
            # Image.open refuses a header claiming over 2 * MAX_IMAGE_PIXELS (about
            # 179 M) pixels before decoding any of them: the decompression-bomb guard.
            im = Image.open(io.BytesIO(data))
            if min_side and im.format == "JPEG" and min(im.size) >= 2 * min_side:
                scale = min_side / min(im.size)
                im.draft(im.mode, (max(1, int(im.width * scale)), max(1, int(im.height * scale))))
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode: {exc}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # PIL's own conversion clips wide values at 255; scale the full range instead.
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info
    ):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("RGB")
