"""The catalogue's converters on miniature archives built in each dataset's official
layout (the real archives are hundreds of MB and need a network); the shared archives
through ``featx datasets get --archive``."""
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx.data.datasets import CATALOG, MARKER, prepared
from support.imagegen import jpeg_bytes, photo


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _jpg(seed: int) -> bytes:
    return jpeg_bytes(photo(seed, (24, 16)))


def _convert(name: str, files: dict[str, Path], tmp: Path) -> Path:
    packaging = CATALOG[name].packagings[0]
    assert sorted(files) == sorted(r.filename for r in packaging.files)  # the official file names
    out = tmp / "out"
    packaging.convert(files, tmp / "work", out)
    return out


def _tree(out: Path) -> dict[str, list[str]]:
    """split/class -> sorted file names."""
    tree = {}
    for f in sorted(out.rglob("*")):
        if f.is_file():
            split, cls, name = f.relative_to(out).parts
            tree.setdefault(f"{split}/{cls}", []).append(name)
    return tree


@pytest.mark.parametrize("name, label_bytes", [("cifar10", 1), ("cifar100", 2)])
def test_cifar_binary_records_become_lossless_pngs_in_their_class(tmp_path, name, label_bytes):
    rng = np.random.default_rng(0)
    classes = ["apple", "bee", "cup"]

    def records(labels):
        pix = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        lab = np.array([[7] * (label_bytes - 1) + [k] for k in labels], dtype=np.uint8)  # coarse label first
        return np.concatenate([lab, pix], 1).tobytes(), pix

    if name == "cifar10":
        top, names, train_files, test_files = "cifar-10-batches-bin", "batches.meta.txt", \
            [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"]
    else:
        top, names = "cifar-100-binary", "fine_label_names.txt"
        train_files, test_files = ["train.bin"], ["test.bin"]
    members = {f"{top}/{names}": ("\n".join(classes) + "\n\n").encode()}
    expected = {}
    for split, files in (("train", train_files), ("test", test_files)):
        index = 0
        for f in files:
            data, pix = records([0, 2, 1])
            members[f"{top}/{f}"] = data
            for k, p in zip([0, 2, 1], pix):
                expected[f"{split}/{classes[k]}/{index:05d}.png"] = p
                index += 1
    filename = CATALOG[name].packagings[0].files[0].filename
    out = _convert(name, {filename: _tar(tmp_path / filename, members)}, tmp_path)
    assert sorted(str(f.relative_to(out)) for f in out.rglob("*.png")) == sorted(expected)
    for rel, pix in expected.items():
        got = np.asarray(Image.open(out / rel))
        assert got.shape == (32, 32, 3)
        assert np.array_equal(got, pix.reshape(3, 32, 32).transpose(1, 2, 0))  # lossless, channels in order


def test_dtd_uses_the_first_official_split(tmp_path):
    members, lists = {}, {"train1": [], "val1": [], "test1": [], "train2": []}
    for i, (cls, split) in enumerate([("banded", "train1"), ("banded", "val1"), ("banded", "test1"),
                                      ("dotted", "train1"), ("dotted", "val1"), ("dotted", "test1")]):
        members[f"dtd/images/{cls}/{cls}_{i:04d}.jpg"] = _jpg(i)
        lists[split].append(f"{cls}/{cls}_{i:04d}.jpg")
        lists["train2"].append(f"{cls}/{cls}_{i:04d}.jpg")  # another split: not used
    members.update({f"dtd/labels/{k}.txt": ("\n".join(v) + "\n").encode() for k, v in lists.items()})
    out = _convert("dtd", {"dtd-r1.0.1.tar.gz": _tar(tmp_path / "dtd-r1.0.1.tar.gz", members)}, tmp_path)
    assert _tree(out) == {"test/banded": ["banded_0002.jpg"], "test/dotted": ["dotted_0005.jpg"],
                          "train/banded": ["banded_0000.jpg"], "train/dotted": ["dotted_0003.jpg"],
                          "val/banded": ["banded_0001.jpg"], "val/dotted": ["dotted_0004.jpg"]}
    assert (out / "train/banded/banded_0000.jpg").read_bytes() == members["dtd/images/banded/banded_0000.jpg"]


def test_flowers_follow_setid_and_imagelabels(tmp_path):
    from scipy.io import savemat

    labels = [3, 3, 17, 17, 3, 17]  # image 1..6
    jpgs = {f"jpg/image_{i:05d}.jpg": _jpg(i) for i in range(1, 7)}
    savemat(tmp_path / "imagelabels.mat", {"labels": np.array([labels])})
    savemat(tmp_path / "setid.mat", {"trnid": np.array([[1, 3]]), "valid": np.array([[2, 4]]),
                                     "tstid": np.array([[5, 6]])})
    files = {"102flowers.tgz": _tar(tmp_path / "102flowers.tgz", jpgs),
             "imagelabels.mat": tmp_path / "imagelabels.mat", "setid.mat": tmp_path / "setid.mat"}
    out = _convert("flowers102", files, tmp_path)
    assert _tree(out) == {"train/003": ["image_00001.jpg"], "train/017": ["image_00003.jpg"],
                          "val/003": ["image_00002.jpg"], "val/017": ["image_00004.jpg"],
                          "test/003": ["image_00005.jpg"], "test/017": ["image_00006.jpg"]}


def test_pets_take_the_breed_from_the_image_name(tmp_path):
    names = ["Abyssinian_1", "Abyssinian_2", "great_pyrenees_10", "great_pyrenees_11"]
    images = _tar(tmp_path / "images.tar.gz", {f"images/{n}.jpg": _jpg(i) for i, n in enumerate(names)})
    annotations = _tar(tmp_path / "annotations.tar.gz", {
        "annotations/trainval.txt": b"Abyssinian_1 1 1 1\ngreat_pyrenees_10 21 2 9\n",
        "annotations/test.txt": b"Abyssinian_2 1 1 1\ngreat_pyrenees_11 21 2 9\n"})
    out = _convert("pets", {"images.tar.gz": images, "annotations.tar.gz": annotations}, tmp_path)
    assert _tree(out) == {"train/Abyssinian": ["Abyssinian_1.jpg"],
                          "train/great_pyrenees": ["great_pyrenees_10.jpg"],
                          "test/Abyssinian": ["Abyssinian_2.jpg"],
                          "test/great_pyrenees": ["great_pyrenees_11.jpg"]}


def test_food101_follows_its_meta_lists(tmp_path):
    members = {f"food-101/images/{c}/{i}.jpg": _jpg(i) for c in ("apple_pie", "ramen") for i in (11, 12, 13)}
    members["food-101/meta/train.txt"] = b"apple_pie/11\napple_pie/12\nramen/11\n"
    members["food-101/meta/test.txt"] = b"apple_pie/13\nramen/12\nramen/13\n"
    out = _convert("food101", {"food-101.tar.gz": _tar(tmp_path / "food-101.tar.gz", members)}, tmp_path)
    assert _tree(out) == {"train/apple_pie": ["11.jpg", "12.jpg"], "train/ramen": ["11.jpg"],
                          "test/apple_pie": ["13.jpg"], "test/ramen": ["12.jpg", "13.jpg"]}


def test_a_split_file_naming_a_missing_image_is_one_line(tmp_path):
    from featx.data.datasets.converters import ConvertError

    members = {"food-101/images/ramen/1.jpg": _jpg(1), "food-101/meta/train.txt": b"ramen/1\nramen/2\n",
               "food-101/meta/test.txt": b""}
    with pytest.raises(ConvertError,
                       match=r"ramen/2\.jpg: named by the dataset's split files but not in its archive"):
        _convert("food101", {"food-101.tar.gz": _tar(tmp_path / "food-101.tar.gz", members)}, tmp_path)


def test_caltech101_draws_30_training_images_per_class_and_drops_the_background(tmp_path):
    inner = {f"101_ObjectCategories/{c}/image_{i:04d}.jpg": _jpg(i) for c in ("accordion",
                                                                              "BACKGROUND_Google",
                                                                              "yin_yang") for i in range(1,
                                                                                                         36)}
    inner_tar = _tar(tmp_path / "inner.tar.gz", inner).read_bytes()
    files = {"caltech-101.zip": _zip(tmp_path / "caltech-101.zip",
                                     {"caltech-101/101_ObjectCategories.tar.gz": inner_tar})}
    out = _convert("caltech101", files, tmp_path)
    tree = _tree(out)
    assert sorted(tree) == ["test/accordion", "test/yin_yang", "train/accordion", "train/yin_yang"]
    assert [len(tree[k]) for k in sorted(tree)] == [5, 5, 30, 30]
    again = _convert("caltech101", files, tmp_path / "again")
    assert _tree(again) == tree  # the same draw every time


def test_eurosat_is_split_60_20_20_in_every_class_the_same_way_each_time(tmp_path):
    members = {f"2750/{c}/{c}_{i}.jpg": _jpg(i) for c in ("Forest", "River") for i in range(1, 11)}
    files = {"EuroSAT.zip": _zip(tmp_path / "EuroSAT.zip", members)}
    out = _convert("eurosat", files, tmp_path)
    tree = _tree(out)
    assert {k: len(v) for k, v in tree.items()} == {f"{s}/{c}": n for s, n in (("train", 6), ("val", 2),
                                                                               ("test", 2))
                                                    for c in ("Forest", "River")}
    assert _tree(_convert("eurosat", files, tmp_path / "again")) == tree


def test_hymenoptera_official_zip_makes_its_val_folder_the_test_split(tmp_path):
    members = {f"hymenoptera_data/{s}/{c}/{i}.jpg": _jpg(i) for s in ("train", "val") for c in ("ants",
                                                                                                "bees")
               for i in range(2)}
    out = _convert("hymenoptera", {"hymenoptera_data.zip": _zip(tmp_path / "h.zip", members)}, tmp_path)
    assert sorted(_tree(out)) == ["test/ants", "test/bees", "train/ants", "train/bees"]


def test_every_catalogue_entry_names_its_official_files_and_their_checksums():
    for ds in CATALOG.values():
        official = ds.packagings[0]
        assert official.downloadable, ds.name
        for r in official.files:
            assert r.url.startswith(("https://", "http://")) and r.size > 0 and len(r.sha256) == 64, (ds.name,
                                                                                                      r)
        assert ds.splits and ds.homepage.startswith("https://")


def test_the_shared_archives_are_taken_with_archive(tmp_path, hymenoptera, capsys):
    from featx.cli import main

    root = tmp_path / "data"
    assert main(["datasets", "get", "hymenoptera", "--root", str(root), "--archive", str(hymenoptera)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(root / "hymenoptera")
    record = prepared(root, "hymenoptera")
    assert record["packaging"] == "tar of the same folders" and record["splits"] == {"train": 245,
                                                                                     "test": 153}
    assert sorted(p.name for p in (root / "hymenoptera").iterdir()) == [MARKER, "test", "train"]
    assert len(list((root / "hymenoptera" / "test" / "bees").iterdir())) == 83
    assert main(["datasets", "list", "--root", str(root)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert any(line.startswith("hymenoptera") and "398 images" in line for line in listed)
    # a file that is not an archive featx knows, for this dataset: one line, naming it
    assert main(["datasets", "get", "cifar10", "--root", str(root), "--archive", str(hymenoptera)]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("featx: error:")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0]
    assert errors[0].startswith(f"featx: error: {hymenoptera}: not an archive of cifar10 that featx knows")
    assert not (root / "cifar10").exists()
