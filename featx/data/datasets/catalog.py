"""The standard transfer datasets: where to get them, what they must be, and how their
archives become featx's layout (see :mod:`.converters`)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...core.errors import FeatxError
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
from .download import Remote


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


_CIFAR10_BIN = [f"data_batch_{i}.bin" for i in range(1, 6)]

CATALOG: dict[str, Dataset] = {d.name: d for d in (
    Dataset("hymenoptera", "Ants and bees (the PyTorch transfer-learning tutorial)",
            "https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html",
            "the tutorial's train and val folders; its val folder is the test split (no separate val)",
            (Packaging("official", (
                Remote("https://download.pytorch.org/tutorial/hymenoptera_data.zip", 47286322,
                       "fbc41b31d544714d18dd1230b1e2b455e1557766e13e67f9f5a7a23af7c02209"),),
                folders({"hymenoptera_data/train": "train", "hymenoptera_data/val": "test"})),
             Packaging("tar of the same folders", (
                 Remote("", 47697920, "14a85638f2c8747250361ce798e971ffb8e26e4fd5ee747e65d44c45e15d2a38",
                        "hymenoptera.tar"),),
                 folders({"hymenoptera/train": "train", "hymenoptera/val": "test"})))),
    Dataset("cifar10", "CIFAR-10", "https://www.cs.toronto.edu/~kriz/cifar.html",
            "the official 50,000 training and 10,000 test images (no separate val)",
            (Packaging("official", (
                Remote("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", 170052171,
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
            (Packaging("official", (
                Remote("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", 168513733,
                       "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"),),
                cifar({"train": ["train.bin"], "test": ["test.bin"]}, "fine_label_names.txt", 2)),)),
    Dataset("dtd", "Describable Textures (47 classes)", "https://www.robots.ox.ac.uk/~vgg/data/dtd/",
            "the first of the ten official splits (labels/train1.txt, val1.txt, test1.txt)",
            (Packaging("official", (
                Remote("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz", 625239812,
                       "e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205"),), dtd),)),
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
            (Packaging("official", (
                Remote("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", 4996278331,
                       "d97d15e438b7f4498f96086a4f7e2fa42a32f2712e87d3295441b2b6314053a4"),), food101),)),
    Dataset("caltech101", "Caltech-101 (101 object classes, without BACKGROUND_Google)",
            "https://data.caltech.edu/records/mzrjq-6wc02",
            "no official split: featx's seeded draw of 30 training images per class (seed 0), the rest test, "
            "as Kornblith et al. 2019",
            (Packaging("official", (
                Remote("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip", 137414764,
                       "331234750fc7f77520e50d9565e8b6907b03565e30320da1401130db08c61f91"),), caltech101),)),
    Dataset("eurosat", "EuroSAT RGB (10 land-use classes)", "https://github.com/phelber/EuroSAT",
            "no official split: featx's seeded 60/20/20 split of each class (seed 0), as VTAB's proportions",
            (Packaging("official", (
                Remote("http://madm.dfki.de/files/sentinel/EuroSAT.zip", 94280567,
                       "8ebea626349354c5328b142b96d0430e647051f26efc2dc974c843f25ecf70bd"),),
                seeded_split("2750", {"train": 0.6, "val": 0.2, "test": 0.2})),)),
)}


def dataset(name: str) -> Dataset:
    try:
        return CATALOG[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; featx datasets list shows the {len(CATALOG)} "
                           f"supported: {', '.join(CATALOG)}") from None
