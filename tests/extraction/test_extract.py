import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from featx.extraction import extract
from featx.extraction.forward import Forward
from featx.store import Journal, info, load, read, remove, shards, snapshot, verify
from support.crash import commits, committed, store_equal
from support.imagegen import jpeg_bytes, make_folder, photo

ROOT = Path(__file__).resolve().parents[2]


class ForwardCounter:
    """Batches through the network, whatever runs it (eager, or the frozen graph)."""

    def __init__(self, backbone):
        self.calls, original = 0, Forward.__call__

        def counted(forward, staged):
            self.calls += 1
            return original(forward, staged)

        Forward.__call__ = counted
        self.handle = SimpleNamespace(remove=lambda: setattr(Forward, "__call__", original))


def test_hymenoptera_val_full_resolution(hymenoptera, lite0, tmp_path):
    r = extract(f"{hymenoptera}:hymenoptera/val", lite0, tmp_path)
    X, y, keys, classes = load(r.path)
    assert X.shape == (153, 1280) and X.dtype == np.float32
    assert classes == ["ants", "bees"]
    assert (y == 0).sum() == 70 and (y == 1).sum() == 83
    assert keys[0].startswith("ants/") and keys[-1].startswith("bees/")
    assert np.isfinite(X).all() and X.std() > 0.1
    prov = info(r.path)["provenance"]
    assert prov["backbone"]["weights_sha256"] == lite0.weights_sha256
    assert prov["backbone"]["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert {"featx", "torch", "timm", "precision", "device", "created", "source"} <= set(prov)


def test_cache_hit_does_no_forward_pass(tmp_path, lite0_small):
    make_folder(tmp_path / "data", {"a": 3, "b": 3})
    first = extract(tmp_path / "data", lite0_small, tmp_path / "cache", workers=0)
    assert first.embedded == 6
    mtime = first.path.stat().st_mtime_ns
    counter = ForwardCounter(lite0_small)
    try:
        again = extract(tmp_path / "data", lite0_small, tmp_path / "cache", workers=0)
    finally:
        counter.handle.remove()
    assert counter.calls == 0
    assert (again.path, again.embedded, again.reused) == (first.path, 0, 6)
    assert again.path.stat().st_mtime_ns == mtime  # not even rewritten


def test_only_new_or_changed_images_are_embedded(tmp_path, lite0_small):
    data = make_folder(tmp_path / "data", {"a": 4, "b": 4})
    first = extract(data, lite0_small, tmp_path / "cache", workers=0)
    X0, _, keys0, _ = load(first.path)
    (data / "a" / "00.jpg").write_bytes(jpeg_bytes(photo(500)))  # changed
    (data / "b" / "new1.jpg").write_bytes(jpeg_bytes(photo(501)))  # added
    (data / "c").mkdir()
    (data / "c" / "new2.jpg").write_bytes(jpeg_bytes(photo(502)))  # added, new class
    (data / "b" / "03.jpg").unlink()  # removed
    counter = ForwardCounter(lite0_small)
    try:
        second = extract(data, lite0_small, tmp_path / "cache", workers=0)
    finally:
        counter.handle.remove()
    assert (second.embedded, second.reused, counter.calls) == (3, 6, 1)  # 8 - changed - removed = 6
    X1, y1, keys1, classes1 = load(second.path)
    assert classes1 == ["a", "b", "c"]
    assert list(keys1) == ["a/00.jpg", "a/01.jpg", "a/02.jpg", "a/03.jpg", "b/00.jpg", "b/01.jpg", "b/02.jpg",
                           "b/new1.jpg", "c/new2.jpg"]
    assert list(y1) == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    old = dict(zip(keys0, X0))
    for k, x in zip(keys1, X1):
        if k in ("a/01.jpg", "a/02.jpg", "b/00.jpg"):
            assert np.array_equal(x, old[k])  # reused exactly
    assert not np.allclose(X1[0], old["a/00.jpg"])


def test_modes_embed_and_broken_files_are_recorded(tmp_path, lite0_small):
    d = tmp_path / "data" / "x"
    d.mkdir(parents=True)
    base = photo(11)
    base.convert("L").save(d / "gray.png")
    base.convert("RGBA").save(d / "rgba.png")
    base.convert("P").save(d / "palette.png", transparency=0)
    base.convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257).save(d / "gray16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    base.save(d / "exif.jpg", exif=exif.tobytes())
    (d / "truncated.jpg").write_bytes(jpeg_bytes(base)[:150])
    (d / "text.jpg").write_text("hello")
    (d / "empty.jpg").write_bytes(b"")
    r = extract(tmp_path / "data", lite0_small, tmp_path / "cache", batch_size=4)
    _, _, keys, _ = load(r.path)
    assert sorted(keys) == ["x/cmyk.jpg", "x/exif.jpg", "x/gray.png", "x/gray16.png", "x/palette.png",
                            "x/rgba.png"]
    skipped = {s["key"]: s["reason"] for s in info(r.path)["skipped"]}
    assert set(skipped) == {"x/truncated.jpg", "x/text.jpg", "x/empty.jpg"}
    assert skipped["x/empty.jpg"] == "empty file"
    assert "not a recognised image format" in skipped["x/text.jpg"]
    # A rerun after one new image embeds that image only: failed files are not retried.
    (d / "new.jpg").write_bytes(jpeg_bytes(photo(12)))
    again = extract(tmp_path / "data", lite0_small, tmp_path / "cache", batch_size=4)
    assert (again.embedded, again.skipped) == (1, 3)


def test_layers_are_stored_under_their_names(tmp_path):
    from featx.backbones import load_backbone

    bb = load_backbone("efficientnet_lite0", layers=["blocks.3", "conv_head"], image_size=64)
    make_folder(tmp_path / "data", {"a": 2})
    r = extract(tmp_path / "data", bb, tmp_path / "cache", workers=0)
    assert info(r.path)["features"] == {"embedding": [2, 1280], "blocks.3": [2, 80], "conv_head": [2, 1280]}
    X, *_ = load(r.path, layer="blocks.3")
    assert X.shape == (2, 80)


def test_sigkilled_extraction_resumes_to_an_identical_store(hymenoptera, tmp_path):
    data = f"{hymenoptera}:hymenoptera/val"
    job = (
        "import sys; from featx.extraction import extract; "
        f"extract({data!r}, 'efficientnet_lite0', sys.argv[1], image_size=96, batch_size=8, commit_rows=8, "
        "workers=1)"
    )
    cache = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", job, str(cache)], cwd=ROOT)
    deadline = time.monotonic() + 120
    found = []
    while time.monotonic() < deadline and proc.poll() is None:
        found = commits(cache)
        if len(found) >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(found) >= 3, "the run ended before it could be killed"
    assert not list(cache.glob("*.h5")), "killed before finishing: no store yet"
    kept = committed(cache)

    resumed = extract(data, "efficientnet_lite0", cache, image_size=96, batch_size=8, commit_rows=8,
                      workers=1)
    assert (resumed.reused, resumed.embedded) == (kept, 153 - kept) and kept >= 24
    assert not commits(cache)

    clean = extract(data, "efficientnet_lite0", tmp_path / "clean", image_size=96, batch_size=8, workers=1)
    assert clean.embedded == 153
    store_equal(resumed.path, clean.path)


def test_a_source_without_images_is_an_error(tmp_path, lite0_small):
    import pytest

    from featx.core.errors import SourceError

    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "readme.txt").write_text("no pictures here")
    with pytest.raises(SourceError, match=r"data: no images found \(1 other files\)"):
        extract(tmp_path / "data", lite0_small, tmp_path / "cache")


def test_a_second_writer_is_refused_while_the_first_holds_the_store(tmp_path, lite0_small):
    import pytest

    from featx.core.errors import StoreError

    make_folder(tmp_path / "data", {"a": 2})
    path = extract(tmp_path / "data", lite0_small, tmp_path / "cache", workers=0).path
    (tmp_path / "data" / "a" / "new.jpg").write_bytes(jpeg_bytes(photo(77)))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from featx.store import write_lock\n"
         "with write_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match="another featx process is writing this store"):
            extract(tmp_path / "data", lite0_small, tmp_path / "cache", workers=0)
        with pytest.raises(StoreError, match="another featx process is writing this store"):
            remove(path)  # cache rm waits its turn too
        assert path.exists()
    finally:
        holder.kill()
        holder.wait()
    assert extract(tmp_path / "data", lite0_small, tmp_path / "cache", workers=0).embedded == 1


@pytest.mark.parametrize("leftover", ["commit", "journal of an earlier version"])
def test_a_store_with_leftover_commits_and_temp_file_is_finished_without_model_work(tmp_path, lite0_small,
                                                                                      leftover):
    """The windows between renaming the manifest into place and removing the commits it
    made shards of, and between creating the temporary manifest and renaming it; and a
    journal that an interrupted run of featx 0.1 (single-file stores) left."""
    data = make_folder(tmp_path / "data", {"a": 3})
    first = extract(data, lite0_small, tmp_path / "cache", workers=0)
    rows = read(first.path).rows
    if leftover == "commit":  # as if killed right after the rename
        shard = next(shards.folder(first.path).glob("*.h5"))
        shutil.copy2(shard, shard.with_name("leftover.h5"))
    else:
        Journal(first.path).commit(rows)
    stale = first.path.with_name(f".{first.path.name}.tmp-99999")
    stale.write_bytes(b"half a store")
    before = read(first.path)
    counter = ForwardCounter(lite0_small)
    try:
        again = extract(data, lite0_small, tmp_path / "cache", workers=0)
    finally:
        counter.handle.remove()
    assert (counter.calls, again.embedded, again.rows) == (0, 0, 3)
    assert not Journal(first.path).dir.exists() and not stale.exists() and not commits(tmp_path / "cache")
    after = read(first.path)
    assert list(after.rows.keys) == list(before.rows.keys)
    assert np.array_equal(after.rows.features["embedding"], before.rows.features["embedding"])


def test_a_touched_file_is_recognised_by_its_content(tmp_path, lite0_small):
    data = make_folder(tmp_path / "data", {"a": 2})
    extract(data, lite0_small, tmp_path / "cache", workers=0)
    os.utime(data / "a" / "00.jpg", ns=(1, 1))  # new mtime, same bytes
    assert extract(data, lite0_small, tmp_path / "cache", workers=0).embedded == 0
    r = extract(data, lite0_small, tmp_path / "cache", workers=0)  # re-stamped: a plain cache hit
    assert (r.embedded, r.seconds) == (0, 0.0)


def test_a_rewritten_tar_reembeds_only_members_whose_bytes_changed(tmp_path, lite0_small):
    """Same sizes and a fixed member mtime (as reproducible builds write): only the
    archive's own stamp and the content hashes can tell what changed."""
    import io
    import tarfile

    def build(seeds):
        with tarfile.open(tmp_path / "d.tar", "w") as tar:
            for i, seed in enumerate(seeds):
                buf = io.BytesIO()
                photo(seed, size=(40, 40)).save(buf, format="BMP")  # fixed size for any pixels
                info = tarfile.TarInfo(f"./top/c{i % 2}/{i}.bmp")
                info.size, info.mtime = len(buf.getvalue()), 0
                tar.addfile(info, io.BytesIO(buf.getvalue()))

    build([1, 2, 3, 4])
    first = extract(f"{tmp_path / 'd.tar'}:top", lite0_small, tmp_path / "cache", workers=0)
    X0, _, keys, classes = load(first.path)
    assert classes == ["c0", "c1"] and list(keys) == ["c0/0.bmp", "c0/2.bmp", "c1/1.bmp", "c1/3.bmp"]
    build([1, 2, 30, 4])
    second = extract(f"{tmp_path / 'd.tar'}:top", lite0_small, tmp_path / "cache", workers=0)
    X1, *_ = load(second.path)
    assert second.embedded == 1
    assert np.array_equal(X1[[0, 2, 3]], X0[[0, 2, 3]]) and not np.allclose(X1[1], X0[1])  # c0/2.bmp changed


def test_a_file_that_could_not_be_read_is_retried(tmp_path, lite0_small):
    from featx.data.sources import ImageFolderSource

    class FlakyOnce(ImageFolderSource):
        failed = False

        def read(self, item):
            if item.key == "a/01.jpg" and not FlakyOnce.failed:
                FlakyOnce.failed = True
                raise OSError(5, "Input/output error")
            return super().read(item)

    data = make_folder(tmp_path / "data", {"a": 3})
    first = extract(FlakyOnce(data), lite0_small, tmp_path / "cache", workers=0)
    assert (first.rows, first.skipped) == (2, 1)
    assert info(first.path)["skipped"] == [{"key": "a/01.jpg", "reason": "cannot read: Input/output error"}]
    second = extract(FlakyOnce(data), lite0_small, tmp_path / "cache", workers=0)
    assert (second.embedded, second.rows, second.skipped) == (1, 3, 0)


def test_a_file_that_never_reads_is_retried_without_rewriting_the_store(tmp_path, lite0_small):
    from featx.data.sources import ImageFolderSource

    class Locked(ImageFolderSource):
        attempts = 0

        def read(self, item):
            if item.key == "a/00.jpg":
                Locked.attempts += 1
                raise PermissionError(13, "Permission denied")
            return super().read(item)

    data = make_folder(tmp_path / "data", {"a": 2})
    first = extract(Locked(data), lite0_small, tmp_path / "cache", workers=0)
    mtime = first.path.stat().st_mtime_ns
    again = extract(Locked(data), lite0_small, tmp_path / "cache", workers=0)
    assert Locked.attempts == 2 and (again.rows, again.skipped, again.embedded) == (1, 1, 0)
    assert first.path.stat().st_mtime_ns == mtime


def test_a_source_where_nothing_decodes_gives_an_empty_store(tmp_path, lite0_small):
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "x.jpg").write_text("not a picture")
    r = extract(tmp_path / "data", lite0_small, tmp_path / "cache", workers=0)
    X, y, keys, classes = load(r.path)
    assert X.shape == (0, 1280) and (r.rows, r.skipped) == (0, 1)


def test_workers_hand_over_slices_but_the_model_sees_whole_batches(tmp_path, lite0_small, monkeypatch):
    from featx.extraction import runtimes

    monkeypatch.setattr(runtimes, "openvino_available", lambda: False)  # eager: the hook sees the batches
    make_folder(tmp_path / "data", {"a": 10, "b": 10})
    sizes = []
    handle = lite0_small.model.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    try:
        parallel = extract(tmp_path / "data", lite0_small, tmp_path / "c1", batch_size=8, workers=2,
                           precision="fp32")
        inline = extract(tmp_path / "data", lite0_small, tmp_path / "c2", batch_size=8, workers=0,
                         precision="fp32")
    finally:
        handle.remove()
    assert sizes == [8, 8, 4] * 2  # slices of one image each, joined into batches of 8
    np.testing.assert_array_equal(load(parallel.path)[0], load(inline.path)[0])


def test_slabs_reused_many_times_over_never_mix_images(tmp_path, monkeypatch):
    """120 slices of one image through a ring of 26 slabs, the network slower than the
    workers (so that they run as far ahead as the DataLoader lets them): the store equals
    the one decoded in the main process."""
    make_folder(tmp_path / "data", {"a": 60, "b": 60})
    inline = extract(tmp_path / "data", "pixels", tmp_path / "c1", batch_size=8, workers=0)
    call = Forward.__call__

    def slow(forward, staged):
        time.sleep(0.02)
        return call(forward, staged)

    monkeypatch.setattr(Forward, "__call__", slow)
    parallel = extract(tmp_path / "data", "pixels", tmp_path / "c2", batch_size=8, workers=2)
    np.testing.assert_array_equal(load(parallel.path)[0], load(inline.path)[0])


def test_default_workers_follow_cores_device_and_memory(monkeypatch):
    from featx.extraction import loader as ex

    monkeypatch.setattr(ex.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(ex.os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096}.get(name, (64 << 30) // 4096))
    assert ex.default_workers(torch.device("cpu")) == 8
    assert ex.default_workers(torch.device("cuda")) == 14
    monkeypatch.setattr(ex.os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096}.get(name, (3 << 30) // 4096))
    assert ex.default_workers(torch.device("cuda")) == 3  # 1.5 GB for workers of 512 MB


def test_the_chosen_precision_is_the_one_computed(tmp_path, lite0_small):
    make_folder(tmp_path / "data", {"a": 3, "b": 3})
    stores = {p: extract(tmp_path / "data", lite0_small, tmp_path / "c", precision=p, device="cpu").path
              for p in ("fp32", "bf16")}
    X = {prec: load(path).X for prec, path in stores.items()}
    norms = np.linalg.norm(X["fp32"], axis=1) * np.linalg.norm(X["bf16"], axis=1)
    cos = np.sum(X["fp32"] * X["bf16"], 1) / norms
    assert not np.array_equal(X["fp32"], X["bf16"])  # bfloat16 really ran
    assert cos.min() > 0.99


def test_a_store_whose_provenance_does_not_match_the_request_is_refused(tmp_path, lite0_small):
    import h5py
    import pytest

    from featx.core.errors import StoreError

    make_folder(tmp_path / "data", {"a": 3})
    path = extract(tmp_path / "data", lite0_small, tmp_path / "cache", workers=0).path
    snap = snapshot.read(path)  # as if another network's store had been put under this name
    snap.provenance["backbone"]["weights_sha256"] = "0" * 64
    snapshot.write(path, snap)
    with pytest.raises(StoreError, match=r"was written with other backbone than requested .*featx cache rm"):
        extract(tmp_path / "data", lite0_small, tmp_path / "cache", workers=0)  # the images are the same
    (tmp_path / "data" / "a" / "new.jpg").write_bytes(jpeg_bytes(photo(99)))
    with pytest.raises(StoreError, match=r"was written with other backbone than requested .*featx cache rm"):
        extract(tmp_path / "data", lite0_small, tmp_path / "cache", workers=0)  # and with one more
    with h5py.File(path, "r+") as f:  # a manifest changed behind its checksum's back
        raw = f["manifest.json"][()]
        raw[raw.tobytes().index(b"0000")] = ord("1")
        f["manifest.json"][...] = raw
    assert verify(path) == [f"{path}: the manifest does not match its recorded checksum"]
