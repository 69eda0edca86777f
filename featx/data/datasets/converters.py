"""From each dataset's official archives to the layout featx reads, ``<split>/<class>/<image>``.

Each converter takes the verified archives (by file name), a scratch folder and the
folder to fill, and uses the split files the dataset's authors publish. Images are
moved, not copied, out of the unpacked archives; CIFAR's raw pixel records become
lossless PNG files.
"""
from __future__ import annotations

import io
import os
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from ...core.errors import FeatxError
from .unpack import unpack


class ConvertError(FeatxError):
    """Archives whose contents are not laid out as the dataset's authors publish them."""


def _place(src: Path, out: Path, split: str, cls: str, name: str | None = None) -> None:
    if not src.is_file():
        raise ConvertError(f"{src}: named by the dataset's split files but not in its archive")
    dst = out / split / cls / (name or src.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def _unpack_all(files: dict[str, Path], work: Path) -> Path:
    for path in files.values():
        unpack(path, work)
    return work


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ConvertError(f"{path}: split file missing from the archive")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def folders(mapping: dict[str, str]):
    """Archives that already hold class folders: ``mapping`` takes each folder of
    splits inside them (e.g. ``hymenoptera_data/val``) to featx's split (``test``)."""

    def convert(files: dict[str, Path], work: Path, out: Path) -> None:
        _unpack_all(files, work)
        for inside, split in mapping.items():
            top = work / inside
            if not top.is_dir():
                raise ConvertError(f"{', '.join(files)}: no folder {inside}/ inside")
            for cls in sorted(p for p in top.iterdir() if p.is_dir()):
                for img in sorted(f for f in cls.iterdir() if f.is_file()):
                    _place(img, out, split, cls.name)
    return convert


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def cifar(batches: dict[str, list[str]], names: str, label_bytes: int):
    """CIFAR's binary version, read straight from the tar: records of ``label_bytes``
    label bytes (the last one is the class) and 3,072 pixel bytes; ``batches`` lists
    the members of each split, ``names`` the file of class names."""
    record = label_bytes + 3072

    def convert(files: dict[str, Path], work: Path, out: Path) -> None:
        (archive,) = files.values()
        with tarfile.open(archive) as tf:
            by_name = {m.name.rsplit("/", 1)[-1]: m for m in tf.getmembers() if m.isfile()}

            def read(name: str) -> bytes:
                if name not in by_name:
                    raise ConvertError(f"{archive}: no member {name} inside")
                return tf.extractfile(by_name[name]).read()

            classes = [n.strip() for n in read(names).decode().splitlines() if n.strip()]
            for split, members in batches.items():
                index = 0
                for member in members:
                    raw = np.frombuffer(read(member), dtype=np.uint8)
                    if raw.size % record:
                        raise ConvertError(f"{archive}: {member} is not a whole number of "
                                           f"{record}-byte records")
                    raw = raw.reshape(-1, record)
                    images = raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                    for pixels, label in zip(images, raw[:, label_bytes - 1]):
                        dst = out / split / classes[label] / f"{index:05d}.png"
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        dst.write_bytes(_png(pixels))
                        index += 1
    return convert


def dtd(files: dict[str, Path], work: Path, out: Path) -> None:
    """DTD: the first of the ten official splits, ``labels/{train,val,test}1.txt``."""
    root = _unpack_all(files, work) / "dtd"
    for split in ("train", "val", "test"):
        for line in _lines(root / "labels" / f"{split}1.txt"):
            cls, name = line.split("/", 1)
            _place(root / "images" / line, out, split, cls, name)


def flowers102(files: dict[str, Path], work: Path, out: Path) -> None:
    """Oxford Flowers-102: ``setid.mat`` (trnid, valid, tstid) and ``imagelabels.mat``;
    classes are the official numbers 1-102, as folders 001-102."""
    from scipy.io import loadmat

    _unpack_all({k: v for k, v in files.items() if k.endswith(".tgz")}, work)
    labels = loadmat(files["imagelabels.mat"])["labels"].ravel()
    ids = loadmat(files["setid.mat"])
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        for i in ids[key].ravel():
            _place(work / "jpg" / f"image_{int(i):05d}.jpg", out, split, f"{int(labels[int(i) - 1]):03d}")


def pets(files: dict[str, Path], work: Path, out: Path) -> None:
    """Oxford-IIIT Pets: ``annotations/{trainval,test}.txt``, 37 breeds; trainval is
    the training split (the authors publish no separate validation split)."""
    _unpack_all(files, work)
    for split, listing in (("train", "trainval.txt"), ("test", "test.txt")):
        for line in _lines(work / "annotations" / listing):
            if line.startswith("#"):
                continue
            name = line.split()[0]
            _place(work / "images" / f"{name}.jpg", out, split, name.rsplit("_", 1)[0])


def food101(files: dict[str, Path], work: Path, out: Path) -> None:
    """Food-101: ``meta/{train,test}.txt``, one ``class/id`` per line."""
    root = _unpack_all(files, work) / "food-101"
    for split in ("train", "test"):
        for line in _lines(root / "meta" / f"{split}.txt"):
            cls, name = line.split("/", 1)
            _place(root / "images" / f"{line}.jpg", out, split, cls, f"{name}.jpg")


def caltech101(files: dict[str, Path], work: Path, out: Path) -> None:
    """Caltech-101: the zip holds ``caltech-101/101_ObjectCategories.tar.gz``; 30 images
    of each class (a seeded draw) train, the rest test; BACKGROUND_Google is left out."""
    inner = _unpack_all(files, work) / "caltech-101" / "101_ObjectCategories.tar.gz"
    if not inner.is_file():
        raise ConvertError(f"{', '.join(files)}: no caltech-101/101_ObjectCategories.tar.gz inside")
    unpack(inner, work)
    top = work / "101_ObjectCategories"
    if not top.is_dir():
        raise ConvertError(f"{inner.name}: no folder 101_ObjectCategories/ inside")
    for k, cls in enumerate(sorted(p for p in top.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google")):
        imgs = sorted(f for f in cls.iterdir() if f.is_file())
        train = set(np.random.default_rng([0, k]).permutation(len(imgs))[:30].tolist())
        for i, img in enumerate(imgs):
            _place(img, out, "train" if i in train else "test", cls.name)


def seeded_split(folder: str, fractions: dict[str, float], seed: int = 0):
    """For datasets whose authors publish no split: each class's files, sorted by name,
    dealt to the splits in the given fractions after a seeded shuffle (featx's split,
    the same on every machine)."""

    def convert(files: dict[str, Path], work: Path, out: Path) -> None:
        top = _unpack_all(files, work) / folder
        if not top.is_dir():
            raise ConvertError(f"{', '.join(files)}: no folder {folder}/ inside")
        by_class = defaultdict(list)
        for cls in sorted(p for p in top.iterdir() if p.is_dir()):
            by_class[cls.name] = sorted(f for f in cls.iterdir() if f.is_file())
        for k, (cls, imgs) in enumerate(by_class.items()):
            order = np.random.default_rng([seed, k]).permutation(len(imgs))
            edges = np.round(np.cumsum(list(fractions.values())) * len(imgs)).astype(int)
            for split, chunk in zip(fractions, np.split(order, edges[:-1])):
                for i in chunk:
                    _place(imgs[i], out, split, cls)
    return convert
