"""Stores written block by block from features that stay on disk until needed."""
from __future__ import annotations

import h5py
import numpy as np

from featx import store
from featx.store import Journal, Rows, Stacked, Taken, read, shards, write_store


def rows(n, start=0, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    keys = np.array([f"k{i:05d}" for i in range(start, start + n)])
    return Rows(keys, keys, keys, {"embedding": rng.normal(size=(n, dim)).astype(np.float32)})


def test_lazy_parts_take_the_same_rows_as_arrays(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "WRITE_BLOCK", 7)  # many blocks, some rows far apart
    a, b, c = rows(30, 0, seed=1), rows(20, 30, seed=2), rows(25, 50, seed=3)
    write_store(tmp_path / "old.h5", a, np.zeros(30, int), ["x"], {}, "")
    old = read(tmp_path / "old.h5", lazy=True).rows
    journal = Journal(tmp_path / "new.h5")
    lazy_b, lazy_c = journal.commit(b), journal.commit(c)
    assert not isinstance(lazy_b.features["embedding"], np.ndarray)  # left on disk
    pool = Rows.concat([old, lazy_b, lazy_c], ["embedding"], {"embedding": 5})
    assert isinstance(pool.features["embedding"], Stacked)
    eager = np.concatenate([r.features["embedding"] for r in (a, b, c)])
    sel = np.random.default_rng(0).permutation(75)[:60]
    np.testing.assert_array_equal(Taken(pool.features["embedding"], sel).take(np.arange(60)), eager[sel])
    np.testing.assert_array_equal(pool.features["embedding"].take(np.array([74, 0, 31, 0, 52])),
                                  eager[[74, 0, 31, 0, 52]])


def test_a_store_written_in_blocks_equals_one_written_at_once(tmp_path, monkeypatch):
    parts = [rows(40, 0, seed=4), rows(33, 40, seed=5)]
    journal = Journal(tmp_path / "s.h5")
    lazy = Rows.concat([journal.commit(p) for p in parts], ["embedding"], {"embedding": 5})
    sel = np.arange(73)[::-1].copy()
    eager = Rows.concat(parts, ["embedding"], {"embedding": 5})
    labels = np.zeros(73, int)
    monkeypatch.setattr(shards, "WRITE_BLOCK", 16)
    write_store(tmp_path / "blocks.h5", Rows(lazy.keys[sel], lazy.stamps[sel], lazy.sha256[sel],
                                            {"embedding": Taken(lazy.features["embedding"], sel)}),
                labels, ["x"], {}, "m")
    write_store(tmp_path / "whole.h5", Rows(eager.keys[sel], eager.stamps[sel], eager.sha256[sel],
                                           {"embedding": eager.features["embedding"][sel]}),
                labels, ["x"], {}, "m")
    with h5py.File(tmp_path / "blocks.h5") as f, h5py.File(tmp_path / "whole.h5") as g:
        np.testing.assert_array_equal(f["features/embedding"][()], g["features/embedding"][()])
        assert f["features/embedding"].attrs["sha256"] == g["features/embedding"].attrs["sha256"]
    assert store.verify(tmp_path / "blocks.h5") == []


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def _offset(path, name):
    """Where the middle byte of a dataset lies in the file."""
    with h5py.File(path, "r") as f:
        return f[name].id.get_offset() + f[name].id.get_storage_size() // 2


def test_verify_finds_a_flipped_bit_in_any_dataset_and_a_truncated_file(tmp_path):
    import shutil

    good = tmp_path / "good.h5"
    r = rows(50, dim=16)
    r.skipped_keys, r.skipped_stamps = np.array(["bad.jpg"]), np.array(["1:2"])
    r.skipped_reasons = np.array(["empty"])
    write_store(good, r, np.arange(50) % 3, ["a", "b", "c"], {"backbone": {"name": "x"}}, "m")
    assert store.verify(good) == []
    for name in ("features/embedding", "keys", "stamps", "sha256", "labels", "classes", "skipped/keys",
                 "skipped/reasons"):
        bad = tmp_path / "bad.h5"
        shutil.copy(good, bad)
        _flip(bad, _offset(bad, name))
        problems = store.verify(bad)
        assert any(p.startswith(name) for p in problems), (name, problems)
    # the provenance lives in HDF5's object header, which carries its own checksum
    bad = tmp_path / "bad.h5"
    shutil.copy(good, bad)
    data = bad.read_bytes()
    _flip(bad, data.index(b'{"backbone"') + 3)
    assert store.verify(bad) != []
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert len(store.verify(truncated)) == 1
    problem = store.verify(truncated)[0]
    assert "not a readable HDF5 store" in problem or "unreadable" in problem


def test_stores_of_the_first_format_still_read_and_verify(tmp_path):
    path = tmp_path / "old.h5"
    write_store(path, rows(5), np.zeros(5, int), ["x"], {}, "")
    with h5py.File(path, "r+") as f:  # what format 1 wrote: a checksum on the features only
        f.attrs["format"] = 1
        del f.attrs["sha256"]
        del f["keys"].attrs["sha256"]
    assert store.verify(path) == [] and len(read(path).rows) == 5
