"""The standard transfer datasets: where to get them, what they must be, and their splits.

``featx datasets get NAME`` downloads a dataset's official archives (resuming, checked
against their SHA-256 before anything is unpacked), or takes copies handed over with
``--archive``, and converts the authors' own splits into ``ROOT/NAME/{train,val,test}/
<class>/<image>``. A finished dataset carries ``featx-dataset.json``; a second ``get``
then does nothing.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .converters import (
    caltech101,
    cifar,
    dtd,
    flowers102,
    folders,
    food101,
    pets,
    seeded_split,
)
from .download import Remote, fetch, is_verified
from .errors import FeatxError
from .files import fsync_dir, pid_alive, sha256_file, write_bytes, write_lock

MARKER = "featx-dataset.json"
DOWNLOADS = "downloads"
SPLITS = ("train", "val", "test")


class DatasetError(FeatxError):
    """A dataset that is unknown, or cannot be fetched or converted."""


@dataclass(frozen=True)
class Packaging:
    """One way a dataset is distributed: its files, and how they become featx's layout."""

    name: str
    files: tuple[Remote, ...]
    convert: Callable  # (files by name, scratch folder, folder to fill) -> None

    @property
    def downloadable(self) -> bool:
        return all(f.url for f in self.files)


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    homepage: str
    splits: str  # where the splits come from, in a line
    packagings: tuple[Packaging, ...]  # the first one is downloaded; any may be handed over

    @property
    def download_bytes(self) -> int:
        return sum(f.size for f in self.packagings[0].files)


_CIFAR10_BIN = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"]

CATALOG: dict[str, Dataset] = {d.name: d for d in (
    Dataset("hymenoptera", "Ants and bees (the PyTorch transfer-learning tutorial)",
            "https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html",
            "the tutorial's train and val folders; its val folder is the test split (no separate val)",
            (Packaging("official", (Remote("https://download.pytorch.org/tutorial/hymenoptera_data.zip",
                                           47286322, "fbc41b31d544714d18dd1230b1e2b455e1557766e13e67f9f5a7a23af7c02209"),),
                       folders({"hymenoptera_data/train": "train", "hymenoptera_data/val": "test"})),
             Packaging("tar of the same folders", (Remote("", 47697920,
                                                          "14a85638f2c8747250361ce798e971ffb8e26e4fd5ee747e65d44c45e15d2a38",
                                                          "hymenoptera.tar"),),
                       folders({"hymenoptera/train": "train", "hymenoptera/val": "test"})))),
    Dataset("cifar10", "CIFAR-10", "https://www.cs.toronto.edu/~kriz/cifar.html",
            "the official 50,000 training and 10,000 test images (no separate val)",
            (Packaging("official", (Remote("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", 170052171,
                                           "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),),
                       cifar({"train": _CIFAR10_BIN, "test": ["test_batch.bin"]}, "batches.meta.txt", 1)),
             Packaging("JPEG re-encoding, one tar per split", (
                 Remote("", 77240320, "8d58943f6e44a359ae6f0430fb8c63fa2e4c72d68547af81238871306f326345",
                        "cifar10-train.tar"),
                 Remote("", 15462400, "13b3d0ff7aae4644baf98b9a8a2e2412c71c23bdf31fa4dbbbc2381dffe2400d",
                        "cifar10-test.tar")),
                       folders({"cifar10/train": "train", "cifar10/test": "test"})))),
    Dataset("cifar100", "CIFAR-100 (fine labels)", "https://www.cs.toronto.edu/~kriz/cifar.html",
            "the official 50,000 training and 10,000 test images (no separate val)",
            (Packaging("official", (Remote("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", 168513733,
                                           "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"),),
                       cifar({"train": ["train.bin"], "test": ["test.bin"]}, "fine_label_names.txt", 2)),)),
    Dataset("dtd", "Describable Textures (47 classes)", "https://www.robots.ox.ac.uk/~vgg/data/dtd/",
            "the first of the ten official splits (labels/train1.txt, val1.txt, test1.txt)",
            (Packaging("official", (Remote("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
                                           625239812, "e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205"),), dtd),)),
    Dataset("flowers102", "Oxford Flowers-102", "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
            "the official setid.mat (trnid, valid, tstid); classes are the official numbers 001-102",
            (Packaging("official", (
                Remote("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz", 344862509,
                       "2d01ecc807db462958cfe3d92f57a8c252b4abd240eb955770201e45f783b246"),
                Remote("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat", 502,
                       "4903e94206bac23bf772aadf06451916df56b58fc483a62db32a97b82656651d"),
                Remote("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat", 14989,
                       "46b8678f91fd95d3c8f4feab80d271a6c834a1dd896fe29fd3e6ad9ce5c8dccd")), flowers102),)),
    Dataset("pets", "Oxford-IIIT Pets (37 breeds)", "https://www.robots.ox.ac.uk/~vgg/data/pets/",
            "the official trainval.txt (train) and test.txt (test); no separate val",
            (Packaging("official", (
                Remote("https://thor.robots.ox.ac.uk/~vgg/data/pets/images.tar.gz", 791918971,
                       "67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d"),
                Remote("https://thor.robots.ox.ac.uk/~vgg/data/pets/annotations.tar.gz", 19173078,
                       "52425fb6de5c424942b7626b428656fcbd798db970a937df61750c0f1d358e91")), pets),)),
    Dataset("food101", "Food-101", "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
            "the official meta/train.txt and meta/test.txt; no separate val",
            (Packaging("official", (Remote("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", 4996278331,
                                           "d97d15e438b7f4498f96086a4f7e2fa42a32f2712e87d3295441b2b6314053a4"),),
                       food101),)),
    Dataset("caltech101", "Caltech-101 (101 object classes, without BACKGROUND_Google)",
            "https://data.caltech.edu/records/mzrjq-6wc02",
            "no official split: featx's seeded draw of 30 training images per class (seed 0), the rest test, "
            "as Kornblith et al. 2019",
            (Packaging("official", (Remote("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
                                           137414764,
                                           "331234750fc7f77520e50d9565e8b6907b03565e30320da1401130db08c61f91"),),
                       caltech101),)),
    Dataset("eurosat", "EuroSAT RGB (10 land-use classes)", "https://github.com/phelber/EuroSAT",
            "no official split: featx's seeded 60/20/20 split of each class (seed 0), as VTAB's proportions",
            (Packaging("official", (Remote("http://madm.dfki.de/files/sentinel/EuroSAT.zip", 94280567,
                                           "8ebea626349354c5328b142b96d0430e647051f26efc2dc974c843f25ecf70bd"),),
                       seeded_split("2750", {"train": 0.6, "val": 0.2, "test": 0.2})),)),
)}


def dataset(name: str) -> Dataset:
    try:
        return CATALOG[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; featx datasets list shows the {len(CATALOG)} supported: "
                           f"{', '.join(CATALOG)}") from None


def prepared(root: str | os.PathLike, name: str) -> dict | None:
    """The record of a finished ``get`` of ``name`` under ``root``, or None."""
    try:
        return json.loads((Path(root) / name / MARKER).read_text())
    except (OSError, ValueError):
        return None


def get(name: str | Dataset, root: str | os.PathLike = "data", archives: list[str | os.PathLike] = (),
        progress: bool = False, log=lambda message: None) -> Path:
    """``ROOT/NAME`` in featx's layout, downloaded (or taken from ``archives``) and
    converted unless a finished copy is already there."""
    ds = name if isinstance(name, Dataset) else dataset(name)
    root = Path(root)
    target = root / ds.name
    done = prepared(root, ds.name)
    if done is not None:
        log(f"{target}: already there ({done['images']:,} images)")
        return target
    if target.exists():
        raise DatasetError(f"{target}: exists but was not made by featx datasets get (no {MARKER}); "
                           f"move it away or choose another --root")
    root.mkdir(parents=True, exist_ok=True)
    with write_lock(target, f"{target}: another featx process is preparing it; wait for it to finish", DatasetError):
        if prepared(root, ds.name) is not None:  # another get finished it since the check above
            return target
        packaging, files = _archives(ds, root / DOWNLOADS, [Path(a) for a in archives], progress, log)
        _remove_leftovers(root, ds.name)
        work, tmp = (root / f".{ds.name}.{kind}-{os.getpid()}" for kind in ("unpack", "tmp"))
        try:
            log(f"{ds.name}: converting {', '.join(files)} into {target}")
            packaging.convert(files, work, tmp)
            record = _record(ds, packaging, tmp)
            write_bytes(tmp / MARKER, json.dumps(record, indent=2).encode())
            os.replace(tmp, target)  # whole, with its marker, or not there at all
            fsync_dir(root)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"{target}: {record['images']:,} images, " + ", ".join(f"{s} {n:,}" for s, n in record["splits"].items()))
    return target


def _archives(ds: Dataset, downloads: Path, given: list[Path], progress: bool, log):
    """The packaging to convert, and its verified files by name."""
    if not given:
        packaging = ds.packagings[0]
        hint = (f". Without network, download {{url}} elsewhere and hand it over: featx datasets get {ds.name} "
                f"--archive FILE")
        files = {}
        for remote in packaging.files:
            log(f"{ds.name}: {remote.filename} from {remote.url}")
            files[remote.filename] = fetch(remote, downloads, progress, hint.format(url=remote.url))
        return packaging, files
    known = {(r.size, r.sha256): (p, r) for p in ds.packagings for r in p.files}
    found = {}
    for path in given:
        if not path.is_file():
            raise DatasetError(f"{path}: no such file")
        log(f"{ds.name}: checking {path}")
        key = (path.stat().st_size, sha256_file(path))
        if key not in known:
            expected = "; ".join(f"{r.filename} ({r.size:,} bytes, SHA-256 {r.sha256})"
                                 for p in ds.packagings for r in p.files)
            raise DatasetError(f"{path}: not an archive of {ds.name} that featx knows (SHA-256 {key[1]}); "
                               f"expected one of: {expected}")
        packaging, remote = known[key]
        found[remote.filename] = (packaging, path)
    packaging = next(iter(found.values()))[0]
    files = {}
    for remote in packaging.files:
        if remote.filename in found and found[remote.filename][0] is packaging:
            files[remote.filename] = found[remote.filename][1]
        elif is_verified(downloads / remote.filename, remote):
            files[remote.filename] = downloads / remote.filename
        else:
            raise DatasetError(f"{ds.name}: {packaging.name} also needs {remote.filename} ({remote.size:,} bytes, "
                               f"SHA-256 {remote.sha256}); pass it with another --archive")
    return packaging, files


def _remove_leftovers(root: Path, name: str) -> None:
    """Scratch folders of killed ``get`` runs (never those of live ones)."""
    for leftover in root.glob(f".{name}.*-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _record(ds: Dataset, packaging: Packaging, folder: Path) -> dict:
    splits = {}
    classes = set()
    for split in SPLITS:
        if (folder / split).is_dir():
            cls = [c for c in (folder / split).iterdir() if c.is_dir()]
            classes.update(c.name for c in cls)
            splits[split] = sum(1 for c in cls for f in c.iterdir() if f.is_file())
    if "train" not in splits or "test" not in splits:
        raise DatasetError(f"{ds.name}: the archives gave no {'train' if 'train' not in splits else 'test'} split")
    return {"dataset": ds.name, "featx": __version__, "packaging": packaging.name,
            "archives": {r.filename: r.sha256 for r in packaging.files},
            "splits": splits, "images": sum(splits.values()), "classes": len(classes), "split_source": ds.splits}
