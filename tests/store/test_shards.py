"""Format 3: immutable shards and a manifest. An update writes what changed and only
that; readers see one snapshot; old single-file stores convert on their next update."""
from __future__ import annotations

import os
import shutil
import time

import h5py
import numpy as np
import pytest

import featx
from featx import store
from featx.store import shards, snapshot
from featx.store.compact import compact
from featx.store.hdf5 import write_store
from support.imagegen import make_folder

OPTS = {"batch_size": 8, "workers": 0}


def _files(path):
    """Every file of a store but its manifest: name -> (inode, mtime_ns, size)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in shards.folder(path).iterdir()}


def _same(a, b):
    fa, fb = store.load(a), store.load(b)
    np.testing.assert_array_equal(fa.X, fb.X)
    np.testing.assert_array_equal(fa.y, fb.y)
    assert fa.keys.tolist() == fb.keys.tolist() and fa.classes == fb.classes
    assert store.info(a)["skipped"] == store.info(b)["skipped"]


@pytest.fixture
def built(tmp_path):
    data = make_folder(tmp_path / "data", {"ants": 30, "bees": 25})
    r = featx.extract(data, "pixels", tmp_path / "cache", **OPTS)
    return tmp_path, data, r.path


def test_an_update_writes_only_what_changed_and_reads_as_a_fresh_build(built):
    tmp, data, path = built
    before = _files(path)
    assert snapshot.read(path).shards and len(before) == 1  # one shard, commits merged into it
    make_folder(data, {"wasps": 4}, start_seed=50)  # 4 new images of a new class
    removed = sorted((data / "ants").iterdir())[:3]
    for p in removed:
        p.unlink()
    r = featx.extract(data, "pixels", tmp / "cache", **OPTS)
    assert (r.embedded, r.rows) == (4, 56)
    after = _files(path)
    assert {k: after[k] for k in before} == before  # the old shard untouched: same inode, time, size
    new = set(after) - set(before)
    assert len(new) == 2 and sum(n.endswith(shards.DEAD) for n in new) == 1  # a shard and a tombstone file
    snap = snapshot.read(path)
    assert [p.rows for p in snap.shards] == [55, 4] and [p.rows for p in snap.dead] == [3]
    fresh = featx.extract(data, "pixels", tmp / "fresh", **OPTS).path
    _same(path, fresh)
    assert store.verify(path) == []


def test_a_touched_file_is_restamped_without_the_network_and_a_relabel_copies_its_row(built):
    tmp, data, path = built
    f = sorted((data / "bees").iterdir())[0]
    os.utime(f, ns=(time.time_ns() + 10**10, time.time_ns() + 10**10))
    r = featx.extract(data, "pixels", tmp / "cache", **OPTS)
    assert r.embedded == 0 and r.rows == 55
    fa = store.load(path)
    i = fa.keys.tolist().index(f"bees/{f.name}")
    assert store.read(path).rows.stamps[i] == f"{f.stat().st_size}:{f.stat().st_mtime_ns}"
    # the same file under another class: a new key, so embedded; the old row is dead
    (data / "wasps").mkdir()
    shutil.move(f, data / "wasps" / f.name)
    r = featx.extract(data, "pixels", tmp / "cache", **OPTS)
    assert r.embedded == 1
    _same(path, featx.extract(data, "pixels", tmp / "fresh", **OPTS).path)


def test_a_csv_relabel_copies_the_row_without_embedding_it(tmp_path):
    data = make_folder(tmp_path / "data", {"a": 6, "b": 6})
    manifest = tmp_path / "data" / "m.csv"
    rows = [f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(data.glob("*/*.jpg"))]
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    path = featx.extract(manifest, "pixels", tmp_path / "cache", **OPTS).path
    rows[0] = rows[0].replace(",a", ",b")
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    r = featx.extract(manifest, "pixels", tmp_path / "cache", **OPTS)
    assert r.embedded == 0 and store.load(path).y[0] == 1
    _same(path, featx.extract(manifest, "pixels", tmp_path / "fresh", **OPTS).path)


def test_an_unchanged_rerun_writes_nothing(built):
    tmp, data, path = built
    manifest_before = path.stat().st_mtime_ns, path.stat().st_ino
    files = _files(path)
    r = featx.extract(data, "pixels", tmp / "cache", **OPTS)
    assert r.embedded == 0 and (path.stat().st_mtime_ns, path.stat().st_ino) == manifest_before
    assert _files(path) == files


def test_verify_finds_a_flipped_byte_in_a_shard_and_a_swapped_shard(built):
    tmp, data, path = built
    shard = shards.folder(path) / snapshot.read(path).shards[0].name
    with h5py.File(shard, "r") as f:
        offset = f["features/embedding"].id.get_offset()
    raw = bytearray(shard.read_bytes())
    raw[offset + 100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    problems = store.verify(path)
    assert any("features/embedding does not match its recorded checksum" in p for p in problems), problems


def test_compact_rewrites_only_mostly_dead_shards(built):
    tmp, data, path = built
    make_folder(data, {"wasps": 5}, start_seed=50)
    featx.extract(data, "pixels", tmp / "cache", **OPTS)
    for p in sorted((data / "ants").iterdir())[:20]:  # 20 of the big shard's 55 rows die
        p.unlink()
    featx.extract(data, "pixels", tmp / "cache", **OPTS)
    small = snapshot.read(path).shards[1].name
    assert compact(path, dead_fraction=0.5) == {"rewritten": 0, "written": 0, "freed_entries": 0}
    done = compact(path, dead_fraction=0.3)
    assert done == {"rewritten": 1, "written": 1, "freed_entries": 20}
    snap = snapshot.read(path)
    assert small in [p.name for p in snap.shards] and snap.dead == []
    assert sorted(p.name for p in shards.folder(path).iterdir()) == sorted(p.name for p in snap.shards)
    assert store.verify(path) == []
    _same(path, featx.extract(data, "pixels", tmp / "fresh", **OPTS).path)


def test_a_single_file_store_of_an_earlier_version_reads_and_converts_on_its_next_update(built):
    tmp, data, path = built
    old = store.read(path)
    shutil.rmtree(shards.folder(path))
    path.unlink()
    write_store(path, old.rows, old.labels, old.classes, old.provenance, "")  # format 2, one file
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == 2
    fresh = featx.extract(data, "pixels", tmp / "fresh", **OPTS).path
    _same(path, fresh)  # still reads
    r = featx.extract(data, "pixels", tmp / "cache", **OPTS)
    assert r.embedded == 0 and snapshot.read(path).shards  # converted, nothing embedded again
    _same(path, fresh)
    assert store.verify(path) == []


def test_a_killed_run_leaves_its_commits_for_the_next_which_uses_them(built):
    tmp, data, path = built
    make_folder(data, {"wasps": 9}, start_seed=50)
    snap = snapshot.read(path)
    from featx.extraction import writer as W

    real = W.StoreWriter._write
    W.StoreWriter._write = lambda self, *a: (_ for _ in ()).throw(KeyboardInterrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            featx.extract(data, "pixels", tmp / "cache", commit_rows=1, **OPTS)
    finally:
        W.StoreWriter._write = real
    assert snapshot.read(path) == snap  # the snapshot readers see is the old one
    assert len(store.update.pending_files(path, snap)) == 2  # a commit per batch of 8
    r = featx.extract(data, "pixels", tmp / "cache", **OPTS)
    assert r.embedded == 0 and r.rows == 64
    _same(path, featx.extract(data, "pixels", tmp / "fresh", **OPTS).path)


def test_rows_lazy_batches_and_export_read_the_same_rows(built, tmp_path):
    tmp, data, path = built
    make_folder(data, {"wasps": 5}, start_seed=50)
    featx.extract(data, "pixels", tmp / "cache", **OPTS)  # two shards, read in key order
    full = featx.load(path)
    part = featx.load(path, rows=np.array([59, 0, 31]))
    np.testing.assert_array_equal(part.X, full.X[[59, 0, 31]])
    assert part.keys.tolist() == full.keys[[59, 0, 31]].tolist()
    assert part.y.tolist() == full.y[[59, 0, 31]].tolist()
    lazy = featx.load(path, lazy=True)
    assert not isinstance(lazy.X, np.ndarray) and lazy.X.shape == full.X.shape
    np.testing.assert_array_equal(lazy.X[10:50], full.X[10:50])
    batches = list(featx.iter_batches(path, 16))
    assert [len(b.y) for b in batches] == [16, 16, 16, 12]
    np.testing.assert_array_equal(np.concatenate([b.X for b in batches]), full.X)
    with pytest.raises(featx.core.errors.ParameterError):
        featx.iter_batches(path, 0)

    from featx.cli import main

    assert main(["cache", "export", str(path), "--format", "npy", "--out", str(tmp_path / "npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "embedding.npy"), full.X)
    assert np.load(tmp_path / "npy" / "keys.npy").tolist() == full.keys.tolist()
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "labels.npy"), full.y)
    assert main(["cache", "export", str(path), "--format", "parquet", "--out", str(tmp_path / "pq")]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "pq" / "embedding.parquet")
    assert table.column("key").to_pylist() == full.keys.tolist()
    assert table.column("label").to_pylist() == [full.classes[i] for i in full.y]
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), np.float32), full.X)
