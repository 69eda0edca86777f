"""Textures: the generated image-classification dataset that ``featx demo`` runs on.

No dataset ships with featx's dependencies, so the offline demo makes its own: ten
classes of procedurally rendered patterns, each image with random colours, scale,
rotation, position, lighting, blur and noise. The colours are drawn independently of the
class, so mean colour and raw pixels say little about it, while features from an
ImageNet CNN, which respond to texture and shape, separate the classes well.

:func:`generate` writes an ImageFolder tree, ``root/{train,test}/<class>/<class>_<nnn>.png``,
byte-identical for the same arguments. It is built in a temporary sibling folder and
renamed into place, with a marker file written last, so an interrupted run never leaves
a dataset that looks complete, and a finished one is not made twice.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("stripes", "checkerboard", "dots", "rings", "waves",
           "grid", "zigzag", "spiral", "triangles", "blobs")
_VERSION = 1
_MARKER = ".featx-textures.json"
_TAU = 2 * np.pi


def _wrap(t):
    """Signed offset from the nearest integer, in [-0.5, 0.5]."""
    return t - np.round(t)


def _wave(t, p, level):
    """Signed distance (in pixels, near the edges) inside the bands where sin(2 pi t / p) > level."""
    return (np.sin(_TAU * t / p) - level) * p / _TAU


def _xor(*fields):
    """Foreground where an odd number of ``fields`` are negative; distance to the nearest edge."""
    return np.min(np.abs(fields), axis=0) * np.prod(np.sign(fields), axis=0)


def _pattern(name, x, y, p, rng):
    """The signed distance field of pattern ``name``: > 0 is foreground.

    ``x, y`` are centred, rotated pixel coordinates and ``p`` the period in pixels.
    """
    level = rng.uniform(-0.4, 0.4)  # the foreground's share of each period
    if name == "stripes":
        return _wave(x, p, level)
    if name == "checkerboard":
        return _xor(_wave(x, p, 0), _wave(y, p, 0))
    if name == "dots":
        return p * (rng.uniform(0.2, 0.4) - np.hypot(_wrap(x / p), _wrap(y / p)))
    if name == "rings":
        return _wave(np.hypot(x, y), p, level)
    if name in ("waves", "zigzag"):
        wavelength, amplitude = p * rng.uniform(2, 4), p * rng.uniform(0.3, 0.7)
        phase = x / wavelength
        shape = np.sin(_TAU * phase) if name == "waves" else 4 * np.abs(_wrap(phase)) - 1
        return _wave(y + amplitude * shape, p, level)
    if name == "grid":
        return p * (rng.uniform(0.06, 0.15) - np.minimum(np.abs(_wrap(x / p)), np.abs(_wrap(y / p))))
    if name == "spiral":
        arms = rng.integers(1, 4)
        return _wave(np.hypot(x, y) + arms * p * np.arctan2(y, x) / _TAU, p, level)
    if name == "triangles":  # three families of lines 60 degrees apart through one point
        return _xor(*(_wave(x * np.cos(a) + y * np.sin(a), 2 * p, 0) for a in (0, np.pi / 3, 2 * np.pi / 3)))
    if name == "blobs":  # white noise low-passed in the Fourier domain
        f = np.fft.fftfreq(x.shape[0])
        gain = np.exp(-((f[:, None] ** 2 + f[None, :] ** 2) * (p / 2.5) ** 2) * _TAU)
        field = np.fft.ifft2(np.fft.fft2(rng.standard_normal(x.shape)) * gain).real
        return (field / field.std() - level) * p / _TAU
    raise ValueError(f"unknown texture class {name!r}")


def _render(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size`` x ``size`` RGB uint8 image of class ``name``, drawn from ``rng``."""
    fg, bg = rng.uniform(0, 1, (2, 3))
    luma = np.array([0.299, 0.587, 0.114])
    while abs((fg - bg) @ luma) < 0.2:  # keep the pattern visible in grayscale too
        fg, bg = rng.uniform(0, 1, (2, 3))
    period = size * np.exp(rng.uniform(np.log(1 / 10), np.log(1 / 4)))
    angle, shift = rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3, 2) * size
    rows, cols = np.mgrid[:size, :size] - (size - 1) / 2
    cx, cy = cols - shift[0], rows - shift[1]
    x, y = cx * np.cos(angle) + cy * np.sin(angle), cy * np.cos(angle) - cx * np.sin(angle)
    d = _pattern(name, x, y, period, rng)
    mask = np.clip(0.5 + d / rng.uniform(1.0, 2.5), 0, 1)[..., None]  # soft edge: antialias, blur
    tilt = rng.uniform(0, _TAU)
    light = 1 + rng.uniform(0, 0.25) * (cols * np.cos(tilt) + rows * np.sin(tilt)) / size  # uneven lighting
    noise = rng.normal(0, rng.uniform(0.01, 0.06), (size, size, 3))
    image = (bg + mask * (fg - bg)) * light[..., None] + noise
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _marker(root: Path):
    try:
        return json.loads((root / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def generate(root, *, train_per_class=60, test_per_class=30, size=96, seed=0) -> Path:
    """Write the textures dataset under ``root`` (unless it is already there) and return ``root``.

    A folder at ``root`` made for other arguments, or left without its marker, is replaced;
    a folder holding anything else raises :class:`FileExistsError`.
    """
    root = Path(root)
    args = {"version": _VERSION, "classes": list(CLASSES), "train_per_class": train_per_class,
            "test_per_class": test_per_class, "size": size, "seed": seed}
    if _marker(root) == args:
        return root
    ours = root.is_dir() and (_marker(root) or set(os.listdir(root)) <= {"train", "test"})
    if root.exists() and not ours:
        raise FileExistsError(f"{root} exists and is not a textures dataset; not replacing it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.{uuid.uuid4().hex}.tmp"
    try:
        for split_index, (split, count) in enumerate((("train", train_per_class), ("test", test_per_class))):
            for label, name in enumerate(CLASSES):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for i in range(count):
                    rng = np.random.default_rng([seed, split_index, label, i])
                    Image.fromarray(_render(name, size, rng)).save(folder / f"{name}_{i:03d}.png",
                                                                   format="PNG", compress_level=6)
        (tmp / _MARKER).write_text(json.dumps(args, sort_keys=True) + "\n")
        if _marker(root) != args:  # another process may have just finished the same dataset
            if root.exists():
                os.replace(root, tmp.with_suffix(".old"))
            os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp.with_suffix(".old"), ignore_errors=True)
    return root
