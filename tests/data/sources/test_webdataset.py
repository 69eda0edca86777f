"""WebDataset tar shards (featx.data.sources.webdataset): real photos repacked by the
test, shard patterns, samples that cannot be used, stamps, and what a listing costs."""
from __future__ import annotations

import io
import json
import os
import pickle
import random
import tarfile

import pytest

from featx.core.errors import SourceError
from featx.data.sources import ImageFolderSource, TarSource, WebDatasetSource, open_source
from featx.data.sources.webdataset import expand_braces, short_name
from support.imagegen import jpeg_bytes, photo


def write_shard(path, members) -> None:
    """A tar of ``(name, bytes)`` pairs, in that order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def raw_shard(path, members) -> None:
    """The same, its ustar headers written by hand: tarfile takes 20 us a member."""
    with open(path, "wb") as fh:
        for name, data in members:
            head = bytearray(512)
            head[:len(name)] = name.encode()
            # mode, uid, gid, size, mtime, the checksum's place (blank while it is summed), type
            head[100:157] = (b"0000644\0" b"0000000\0" b"0000000\0" + b"%011o\0" % len(data)
                             + b"00000000000\0" + b" " * 8 + b"0")
            head[257:265] = b"ustar\x0000"
            head[148:156] = b"%06o\0 " % sum(head)
            fh.write(head + data + b"\0" * (-len(data) % 512))
        fh.write(b"\0" * 1024)


@pytest.fixture(scope="module")
def val_folder(hymenoptera_val):
    """hymenoptera/val unpacked (tests/conftest.py): the reference compared with."""
    return hymenoptera_val


def sample_key(folder_key: str) -> str:
    """A folder key as a WebDataset sample key: no dot in its base name."""
    return folder_key.removesuffix(".jpg").replace(".", "_")


def repack(folder: ImageFolderSource, where, n_shards: int, label_member) -> None:
    """The folder's images shuffled into ``n_shards`` shards, each with a label member."""
    items = list(folder.items)
    random.Random(0).shuffle(items)
    for s in range(n_shards):
        members = []
        for it in items[s::n_shards]:
            key = sample_key(it.key)
            members += [(f"{key}.jpg", folder.read(it)), label_member(key, folder.classes[it.label]),
                        (f"{key}.txt", b"a caption, not a label")]
        write_shard(where / f"val-{s:06d}.tar", members)


def assert_same_as_folder(wds: WebDatasetSource, folder: ImageFolderSource) -> None:
    assert wds.problems == []
    assert wds.classes == folder.classes
    assert len(wds) == len(folder) == 153
    by_key = {it.key: it for it in wds.items}
    assert len(by_key) == len(folder)  # one sample per image, keys unique
    for it in folder.items:
        got = by_key[sample_key(it.key)]
        assert wds.read(got) == folder.read(it)
        assert wds.classes[got.label] == folder.classes[it.label]
    assert [it.key for it in wds.items] == sorted(by_key)


def test_hymenoptera_in_shards_with_cls_labels_matches_the_folder(val_folder, tmp_path):
    repack(val_folder, tmp_path, 4, lambda key, cls: (f"{key}.cls", cls.encode()))
    wds = open_source(f"{tmp_path}/val-{{000000..000003}}.tar")
    assert isinstance(wds, WebDatasetSource)
    assert wds.name == "val" and wds.spec == f"wds:{tmp_path}/val-{{000000..000003}}.tar"
    assert_same_as_folder(wds, val_folder)
    assert open_source(f"{tmp_path}/*.tar").items == wds.items  # a glob names the same shards


def test_hymenoptera_in_shards_with_json_labels_matches_the_folder(val_folder, tmp_path):
    def meta(key, cls):
        return f"{key}.json", json.dumps({"label": cls, "width": 0, "source": "hymenoptera"}).encode()

    repack(val_folder, tmp_path, 3, meta)
    assert_same_as_folder(open_source(f"{tmp_path}/val-{{000000,000001,000002}}.tar"), val_folder)


@pytest.mark.parametrize("pattern, expanded", [
    ("a-{000000..000002}.tar", ["a-000000.tar", "a-000001.tar", "a-000002.tar"]),
    ("a-{8..10}.tar", ["a-8.tar", "a-9.tar", "a-10.tar"]),
    ("a-{08..10}.tar", ["a-08.tar", "a-09.tar", "a-10.tar"]),
    ("a-{3..1}.tar", ["a-3.tar", "a-2.tar", "a-1.tar"]),
    ("{train,val}/{0..1}.tar", ["train/0.tar", "train/1.tar", "val/0.tar", "val/1.tar"]),
    ("x{a,b{1..2}}y", ["xay", "xb1y", "xb2y"]),
    ("plain.tar", ["plain.tar"]),
    ("odd{}{x}{.tar", ["odd{}{x}{.tar"]),
])
def test_brace_expansion(pattern, expanded):
    assert expand_braces(pattern) == expanded


def test_short_names():
    assert short_name("shards/train-{000000..000099}.tar") == "train"
    assert short_name("data/shards/*.tar") == "shards"
    assert short_name("{a,b}.tar") == "webdataset"


def shards(where, n, per_shard=2, extra=None) -> None:
    """part-<s>.tar: samples s<s>_<i> with a picture and a .cls each, and ``extra[s]``'s members."""
    for s in range(n):
        members = [(f"s{s}_{i}.jpg", jpeg_bytes(photo(10 * s + i, (16, 12)))) for i in range(per_shard)]
        write_shard(where / f"part-{s}.tar", members + [(f"s{s}_{i}.cls", b"x") for i in range(per_shard)]
                    + list((extra or {}).get(s, [])))


def test_patterns_name_shards_and_a_missing_one_is_an_error(tmp_path):
    shards(tmp_path, 3)
    by_braces = open_source(f"{tmp_path}/part-{{0..2}}.tar")
    assert len(by_braces) == 6 and by_braces.shards == [f"{tmp_path}/part-{s}.tar" for s in range(3)]
    assert open_source(f"{tmp_path}/part-[0-2].tar").items == by_braces.items
    assert open_source(f"{tmp_path}/part-?.tar").items == by_braces.items
    with pytest.raises(SourceError, match=r"part-3.tar: no such tar shard \(named by .*part-\{0..3\}.tar\)"):
        open_source(f"{tmp_path}/part-{{0..3}}.tar")
    with pytest.raises(SourceError, match=r"nothing-\*.tar: no tar shards match"):
        open_source(f"{tmp_path}/nothing-*.tar")
    # a single shard, named outright
    assert len(open_source(f"wds:{tmp_path}/part-0.tar")) == 2
    # a plain tar is still an ImageFolder archive
    assert isinstance(open_source(f"{tmp_path}/part-0.tar"), TarSource)


def test_samples_that_cannot_be_used_are_problems(tmp_path):
    img = jpeg_bytes(photo(1, (16, 12)))
    write_shard(tmp_path / "s.tar", [
        ("d/ok.jpg", img), ("d/ok.cls", b" 10\n"),
        ("d/two.jpg", img), ("d/int.json", b'{"label": 3}'), ("d/int.png", img),
        ("d/two.png", img), ("d/two.cls", b"2"),
        ("d/caption_only.txt", b"no picture"),
        ("d/badjson.webp", img), ("d/badjson.json", b"{not json"),
        ("d/latin.jpeg", img), ("d/latin.cls", "é".encode("latin-1")),
        ("d/lines.jpg", img), ("d/lines.cls", b"a\nb"),
        ("d/float.jpg", img), ("d/float.json", b'{"label": 1.5}'),
        ("d/unlabelled.jpg", img), ("d/meta.jpg", img), ("d/meta.json", b'{"width": 16}'),
        ("d/.hidden.jpg", img), ("__key__.txt", b"x"), ("d/two_cls.jpg", img), ("d/two_cls.cls", b"2"),
    ])
    src = open_source(f"wds:{tmp_path}/s.tar")
    assert [it.key for it in src.items] == ["d/int", "d/meta", "d/ok", "d/two_cls", "d/unlabelled"]
    assert src.classes == ["10", "2", "3"]  # integer labels are their text, sorted as text
    named = [src.classes[it.label] if it.label >= 0 else None for it in src.items]
    assert named == ["3", None, "10", "2", None]
    assert dict(src.problems) == {
        "d/two": "2 image members; a sample holds one",
        "d/caption_only": "no image member (.jpg, .jpeg, .png or .webp)",
        "d/badjson": "unreadable .json (not JSON)",
        "d/latin": "label in .cls is not UTF-8 text",
        "d/lines": "label in .cls spans more than one line",
        "d/float": "label in .json is not an integer or a class name (1.5)",
    }
    assert len(src.problems) == 6
    assert src.where("d/int") == f"{tmp_path}/s.tar:d/int.png"
    assert src.read(src.items[0]) == img


def test_a_key_in_a_later_shard_is_a_problem_and_the_first_is_read(tmp_path):
    shards(tmp_path, 2, extra={1: [("s0_1.jpg", b"not the first copy")]})
    src = open_source(f"{tmp_path}/part-*.tar")
    assert len(src) == 4
    assert src.problems == [("s0_1", f"duplicate sample key, also in {tmp_path}/part-0.tar; "
                                     f"the copy in {tmp_path}/part-1.tar is skipped")]
    first = next(it for it in src.items if it.key == "s0_1")
    assert src.read(first) == jpeg_bytes(photo(1, (16, 12)))


def test_stamps_change_when_a_shard_is_rewritten(tmp_path):
    shards(tmp_path, 2)
    before = {it.key: it.stamp for it in open_source(f"{tmp_path}/part-{{0,1}}.tar").items}
    shards(tmp_path, 1, extra={0: [("s0_9.jpg", b"one more")]})  # part-0 rewritten, one sample added
    after = {it.key: it.stamp for it in open_source(f"{tmp_path}/part-{{0,1}}.tar").items}
    assert after.keys() - before.keys() == {"s0_9"}
    assert all(after[k] != before[k] for k in ("s0_0", "s0_1"))
    assert all(after[k] == before[k] for k in ("s1_0", "s1_1"))  # part-1 untouched
    st = os.stat(tmp_path / "part-1.tar")
    os.utime(tmp_path / "part-1.tar", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = {it.key: it.stamp for it in open_source(f"{tmp_path}/part-{{0,1}}.tar").items}
    assert touched["s1_0"] != after["s1_0"] and touched["s0_0"] == after["s0_0"]


def test_workers_read_through_their_own_handles(tmp_path):
    shards(tmp_path, 3)
    src = open_source(f"{tmp_path}/part-{{0..2}}.tar")
    expected = [src.read(it) for it in src.items]
    copy = pickle.loads(pickle.dumps(src))  # what a DataLoader worker gets
    assert [copy.read(it) for it in reversed(src.items)] == expected[::-1]
    assert len(src._handles) == 3


def test_a_listing_of_200k_samples_holds_under_200_bytes_each(tmp_path):
    n_shards, per_shard = 4, 50_000
    for s in range(n_shards):
        members = []
        for i in range(per_shard):
            members.append((f"train/{s:02d}{i:06d}.jpg", b"\xff\xd8\xff\xd9"))  # never decoded
            if i % 8 == 0:
                members.append((f"train/{s:02d}{i:06d}.cls", str(i % 10).encode()))
        raw_shard(tmp_path / f"big-{s:06d}.tar", members)
    src = open_source(f"{tmp_path}/big-{{000000..000003}}.tar")
    assert len(src) == n_shards * per_shard and src.problems == []
    assert src.classes == [str(c) for c in range(0, 10, 2)]
    assert src.nbytes() == (src.items.nbytes() + src._offset.nbytes + src._size.nbytes + src._shard.nbytes
                            + src._suffix.nbytes)
    assert src.nbytes() / len(src) < 200, src.nbytes() / len(src)
    assert src.read(src.items[-1]) == b"\xff\xd8\xff\xd9"
    # the plain tar source keeps where its members lie as arrays too
    tar = TarSource(tmp_path / "big-000000.tar")
    assert len(tar) == per_shard and tar.nbytes() / len(tar) < 200
