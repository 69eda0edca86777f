"""Downloads and unpacking against a local HTTP server (127.0.0.1) serving archives the
tests build: a wrong checksum is refused, a broken download resumes, unsafe members stop
the unpacking, a verified copy is not fetched twice, and no network gives a clear way out."""
from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import zipfile
from pathlib import Path

import pytest

from featx.data import datasets
from featx.data.datasets import Dataset, DatasetError, Packaging
from featx.data.datasets.converters import folders
from featx.data.datasets.download import DownloadError, Remote, fetch
from featx.data.datasets.unpack import UnpackError, unpack
from support.httpserver import FileServer
from support.imagegen import image_tree, tar_bytes


def remote(server: FileServer, path: str, data: bytes, sha256: str | None = None) -> Remote:
    server.files[path] = data
    return Remote(server.url + path, len(data), sha256 or hashlib.sha256(data).hexdigest())


@pytest.fixture
def server():
    with FileServer() as s:
        yield s


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once it is closed


def test_a_download_is_verified_and_a_verified_copy_is_not_fetched_again(server, tmp_path):
    data = bytes(range(256)) * 5000
    r = remote(server, "/a.bin", data)
    path = fetch(r, tmp_path)
    assert path == tmp_path / "a.bin" and path.read_bytes() == data
    assert fetch(r, tmp_path) == path
    assert len(server.requests) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_a_checksum_mismatch_is_refused_and_nothing_is_kept(server, tmp_path):
    data = b"x" * 10_000
    r = remote(server, "/a.bin", data, sha256="0" * 64)
    with pytest.raises(DownloadError,
                       match=r"a\.bin: not the expected file \(expected 10,000 bytes with SHA-256 0{64}, "
                                            r"got SHA-256 [0-9a-f]{64}\); the download was deleted"):
        fetch(r, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_dropped_connection_resumes_where_it_stopped(server, tmp_path):
    data = bytes(range(256)) * 4000
    r = remote(server, "/a.bin", data)
    server.drops["/a.bin"] = [300_000]
    assert fetch(r, tmp_path).read_bytes() == data
    assert server.requests == [("/a.bin", None), ("/a.bin", "bytes=300000-")]


def test_a_download_that_keeps_breaking_stops_and_the_next_run_resumes_it(server, tmp_path):
    data = bytes(range(256)) * 4000
    r = remote(server, "/a.bin", data)
    server.drops["/a.bin"] = [100_000] * 3  # every connection of this run breaks
    dropped = (r"^http://127\.0\.0\.1:\d+/a\.bin: the connection dropped after 300,000 of 1,024,000 bytes "
               r"\(.*\); run the same command again to resume$")
    with pytest.raises(DownloadError, match=dropped):
        fetch(r, tmp_path)
    assert (tmp_path / "a.bin.part").read_bytes() == data[:300_000]
    server.requests.clear()
    assert fetch(r, tmp_path).read_bytes() == data  # the next run
    assert server.requests == [("/a.bin", "bytes=300000-")]
    assert not (tmp_path / "a.bin.part").exists()


def test_a_server_that_ignores_ranges_gets_the_whole_file_again(server, tmp_path):
    data = bytes(range(256)) * 4000
    r = remote(server, "/a.bin", data)
    (tmp_path / "a.bin.part").write_bytes(data[:1000])
    server.ranges = False
    assert fetch(r, tmp_path).read_bytes() == data


def test_no_network_names_the_url_and_how_to_hand_the_archive_over(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/hymenoptera_data.zip"
    ds = Dataset("ants", "t", "", "", (Packaging("official", (Remote(url, 10, "0" * 64),), folders({})),))
    with pytest.raises(DownloadError) as err:
        datasets.get(ds, tmp_path / "data")
    message = str(err.value)
    assert message.startswith(f"cannot download {url} (") and "\n" not in message
    assert f"download {url} elsewhere and hand it over: featx datasets get ants --archive FILE" in message


def test_a_missing_file_on_the_server_is_one_line(server, tmp_path):
    r = Remote(server.url + "/gone.zip", 10, "0" * 64)
    with pytest.raises(DownloadError,
                       match=r"^cannot download http://127\.0\.0\.1:\d+/gone\.zip \(HTTP 404 Not Found\)$"):
        fetch(r, tmp_path)


def _dataset(server, archive: bytes, name="ants", top="ants") -> Dataset:
    r = remote(server, f"/{name}.tar.gz", archive)
    return Dataset(name, "t", "", "", (Packaging("official", (r,), folders({f"{top}/train": "train",
                                                                          f"{top}/val": "test"})),))


def test_get_converts_once_and_a_second_get_does_nothing(server, tmp_path):
    ds = _dataset(server, tar_bytes(image_tree("ants", {"train": 3, "val": 2})))
    (tmp_path / "data" / ".ants.unpack-99999999" / "ants").mkdir(parents=True)  # left by a killed get
    out = datasets.get(ds, tmp_path / "data")
    assert out == tmp_path / "data" / "ants"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg")) == sorted(
        f"{s}/{c}/{i}.jpg" for s, n in (("train", 3), ("test", 2)) for c in ("ants", "bees")
        for i in range(n))
    record = datasets.prepared(tmp_path / "data", "ants")
    assert record["splits"] == {"train": 6, "test": 4} and record["classes"] == 2 and record["images"] == 10
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["ants", "ants.lock", "downloads"]
    datasets.get(ds, tmp_path / "data")
    assert len(server.requests) == 1


def test_get_takes_a_handed_over_archive_and_refuses_an_unknown_one(server, tmp_path):
    archive = tar_bytes(image_tree("ants", {"train": 2, "val": 1}))
    ds = _dataset(server, archive)
    (tmp_path / "ants.tar.gz").write_bytes(archive)
    (tmp_path / "other.tar.gz").write_bytes(archive + b"\0")
    with pytest.raises(DatasetError,
                       match=r"other\.tar\.gz: not an archive of ants that featx knows \(SHA-256 "):
        datasets.get(ds, tmp_path / "data", archives=[tmp_path / "other.tar.gz"])
    out = datasets.get(ds, tmp_path / "data", archives=[tmp_path / "ants.tar.gz"])
    assert len(list(out.rglob("*.jpg"))) == 6 and server.requests == []


@pytest.mark.parametrize("member", ["../evil.jpg", "/tmp/evil.jpg", "ants/train/ants/../../../../evil.jpg"])
def test_a_member_outside_the_folder_stops_the_unpacking_before_anything_is_written(server, tmp_path, member):
    tree = image_tree("ants", {"train": 2, "val": 1})
    ds = _dataset(server, tar_bytes({**tree, member: b"evil"}))
    unsafe = rf"ants\.tar\.gz: unsafe member '{member}' \((an absolute name|a name that leaves the folder)"
    with pytest.raises(UnpackError, match=unsafe):
        datasets.get(ds, tmp_path / "root" / "data")
    assert not list(tmp_path.rglob("evil.jpg")) and not Path("/tmp/evil.jpg").exists()
    assert sorted(p.name for p in (tmp_path / "root" / "data").iterdir()) == ["ants.lock", "downloads"]


def test_links_and_devices_in_a_tar_and_links_in_a_zip_are_refused(tmp_path):
    link = tarfile.TarInfo("top/link.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    dev = tarfile.TarInfo("top/dev")
    dev.type = tarfile.CHRTYPE
    for info, kind in ((link, "symbolic link"), (dev, "device or other special entry")):
        (tmp_path / "a.tar").write_bytes(tar_bytes({"top/ok.jpg": b"1"}, (info,)))
        with pytest.raises(UnpackError,
                           match=f"unsafe member '{info.name}' \\(a {kind}, not a file or folder\\)"):
            unpack(tmp_path / "a.tar", tmp_path / "out")
        assert not (tmp_path / "out" / "top").exists()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("top/ok.jpg", b"1")
        zi = zipfile.ZipInfo("top/link.jpg")
        zi.external_attr = 0o120777 << 16
        zf.writestr(zi, "/etc/passwd")
    (tmp_path / "a.zip").write_bytes(buf.getvalue())
    with pytest.raises(UnpackError, match="unsafe member 'top/link.jpg' \\(a symbolic link"):
        unpack(tmp_path / "a.zip", tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as zf:
        zf.writestr("../evil.jpg", b"1")
    with pytest.raises(UnpackError, match="unsafe member '../evil.jpg' \\(a name that leaves the folder\\)"):
        unpack(tmp_path / "b.zip", tmp_path / "out")
    assert not list(tmp_path.rglob("evil.jpg"))


def test_a_truncated_archive_is_one_line_and_the_dataset_is_not_created(tmp_path):
    good = tar_bytes(image_tree("ants", {"train": 2, "val": 1}))
    (tmp_path / "cut.tar.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(UnpackError, match=r"cut\.tar\.gz: cannot unpack \("):
        unpack(tmp_path / "cut.tar.gz", tmp_path / "out")


def test_a_folder_featx_did_not_make_is_left_alone(server, tmp_path):
    ds = _dataset(server, tar_bytes(image_tree("ants", {"train": 1, "val": 1})))
    (tmp_path / "data" / "ants").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"data/ants: exists but was not made by featx datasets get"):
        datasets.get(ds, tmp_path / "data")
    assert server.requests == []


def test_an_archive_with_the_wrong_checksum_is_never_unpacked(server, tmp_path):
    data = tar_bytes(image_tree("ants", {"train": 1, "val": 1}))
    r = remote(server, "/ants.tar.gz", data, sha256=hashlib.sha256(data + b"!").hexdigest())
    ds = Dataset("ants", "t", "", "", (Packaging("official", (r,), folders({"ants/train": "train"})),))
    with pytest.raises(DownloadError, match=r"ants\.tar\.gz: not the expected file"):
        datasets.get(ds, tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data").rglob("*")) == ["ants.lock", "downloads"]
