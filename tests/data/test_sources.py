import csv
import io
import tarfile

import pytest

from featx.core.errors import SourceError
from featx.data.sources import CsvSource, ImageFolderSource, TarSource, open_source
from support.imagegen import jpeg_bytes, make_folder, photo


def test_image_folder_order_keys_classes_and_problems(tmp_path):
    make_folder(tmp_path, {"zebra": 2, "ant": 3})
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "loose.jpg").write_bytes(jpeg_bytes(photo(99)))
    src = open_source(tmp_path)
    assert isinstance(src, ImageFolderSource)
    assert src.classes == ["ant", "zebra"]
    assert [it.key for it in src.items] == [
        "ant/00.jpg", "ant/01.jpg", "ant/02.jpg", "loose.jpg", "zebra/00.jpg", "zebra/01.jpg",
    ]
    assert [it.label for it in src.items] == [0, 0, 0, -1, 1, 1]
    assert src.problems == [("ant/notes.txt", "not an image file extension (.txt)")]
    assert src.read(src.items[0]) == (tmp_path / "ant" / "00.jpg").read_bytes()


def test_a_split_folder_is_named_with_its_dataset(tmp_path):
    """Stores of data/cifar10/train and data/pets/train must not both be called "train"."""
    for folder in ("cifar10/train", "cifar10/Test", "photos"):
        make_folder(tmp_path / folder, {"a": 1})
    assert ImageFolderSource(tmp_path / "cifar10" / "train").name == "cifar10-train"
    assert ImageFolderSource(tmp_path / "cifar10" / "Test").name == "cifar10-Test"
    assert ImageFolderSource(tmp_path / "photos").name == "photos"


def test_stamp_changes_when_a_file_changes(tmp_path):
    make_folder(tmp_path, {"a": 1})
    before = open_source(tmp_path).items[0].stamp
    (tmp_path / "a" / "00.jpg").write_bytes(jpeg_bytes(photo(7)))
    assert open_source(tmp_path).items[0].stamp != before


def test_tar_is_read_in_place(hymenoptera, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = open_source(f"{hymenoptera}:hymenoptera/val")
    assert isinstance(src, TarSource)
    assert src.classes == ["ants", "bees"]
    assert len(src) == 153
    assert sum(it.label == 0 for it in src.items) == 70
    assert src.items[0].key.startswith("ants/")
    with tarfile.open(hymenoptera) as tar:
        member = tar.getmember(f"hymenoptera/val/{src.items[5].key}")
        assert src.read(src.items[5]) == tar.extractfile(member).read()
    assert list(tmp_path.iterdir()) == []  # nothing unpacked


def test_hymenoptera_train_lists_the_gif_placeholder_as_a_problem(hymenoptera):
    src = open_source(f"{hymenoptera}:hymenoptera/train")
    assert len(src) == 244
    assert src.problems == [("ants/imageNotFound.gif", "not an image file extension (.gif)")]


def test_tar_unsafe_and_special_members_are_reported(tmp_path):
    path = tmp_path / "t.tar"
    data = jpeg_bytes(photo(1))
    with tarfile.open(path, "w") as tar:
        for name in ("root/a/ok.jpg", "root/../evil.jpg", "/abs/x.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("root/a/link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    src = TarSource(path, "root")
    assert [it.key for it in src.items] == ["a/ok.jpg"]
    assert ("a/link.jpg", "not a regular file") in src.problems
    assert ("root/../evil.jpg", "unsafe member name (absolute or '..')") in src.problems
    # Whole archive: the absolute name is refused too.
    assert ("/abs/x.jpg", "unsafe member name (absolute or '..')") in TarSource(path).problems


def test_tar_member_written_twice_means_its_last_copy(tmp_path):
    path = tmp_path / "t.tar"
    first, last = jpeg_bytes(photo(1)), jpeg_bytes(photo(2))
    with tarfile.open(path, "w") as tar:
        for name, data in (("a/x.jpg", first), ("a/y.jpg", first), ("./a/x.jpg", last)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    src = TarSource(path)
    assert [it.key for it in src.items] == ["a/x.jpg", "a/y.jpg"]
    assert src.read(src.items[0]) == last


def test_csv_manifest(tmp_path):
    make_folder(tmp_path / "imgs", {"x": 2})
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([["imgs/x/01.jpg", "cat"], ["imgs/x/00.jpg", "dog"], ["imgs/missing.jpg", "cat"],
                     ["imgs/x/00.jpg", "dog"]])
    src = open_source(manifest)
    assert isinstance(src, CsvSource)
    assert src.classes == ["cat", "dog"]
    assert [(it.key, it.label) for it in src.items] == [("imgs/x/00.jpg", 1), ("imgs/x/01.jpg", 0)]
    reasons = dict(src.problems)
    assert reasons["imgs/missing.jpg"].startswith("cannot open")
    assert reasons["imgs/x/00.jpg"].startswith("duplicate row")


def test_csv_blank_label_is_unlabelled(tmp_path):
    make_folder(tmp_path, {"x": 1})
    (tmp_path / "m.csv").write_text("path,label\nx/00.jpg,\n")
    assert [it.label for it in open_source(tmp_path / "m.csv").items] == [-1]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nowhere/at/all", "no such directory, tar archive or CSV manifest"),
        ("data.tar.gz", "compressed archives are not read in place"),
        ("missing.tar:x", "no such tar archive"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(SourceError, match=message):
        open_source(spec)


def test_csv_without_path_column(tmp_path):
    (tmp_path / "m.csv").write_text("file,class\na.jpg,x\n")
    with pytest.raises(SourceError, match=r"m.csv: manifest needs a 'path' column"):
        open_source(tmp_path / "m.csv")


def test_csv_rows_with_surplus_or_missing_fields(tmp_path):
    make_folder(tmp_path, {"x": 2})
    (tmp_path / "m.csv").write_text("path,label\nx/00.jpg,cat,extra\nx/01.jpg\n")
    src = open_source(tmp_path / "m.csv")
    assert [(it.key, it.label) for it in src.items] == [("x/00.jpg", 0), ("x/01.jpg", -1)]
