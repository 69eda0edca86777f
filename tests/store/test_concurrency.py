"""Two featx processes on one store: the second refuses with a clear message (or finds the
work done), they never interleave writes, and a reader sees only whole stores."""
from __future__ import annotations

import time

from featx import store
from support.crash import featx_process, run_featx, store_equal
from support.imagegen import make_folder

EXTRACT = ["extract", "--backbone", "efficientnet_lite0", "--image-size", "64", "--batch-size", "8",
           "--workers", "1"]


def test_two_extractions_on_one_store_both_finish_or_one_refuses(tmp_path):
    data = make_folder(tmp_path / "data", {"a": 30, "b": 30})
    rc, ref, err, _ = run_featx([*EXTRACT, "--data", str(data), "--cache", str(tmp_path / "ref")], tmp_path)
    assert rc == 0, err
    outcomes = set()
    for trial, stagger in enumerate((0.0, 2.0)):
        cache = tmp_path / f"cache{trial}"
        args = [*EXTRACT, "--data", str(data), "--cache", str(cache)]
        first = featx_process(args, tmp_path)
        time.sleep(stagger)
        second = featx_process(args, tmp_path)
        results = [(p.wait(timeout=600), *p.communicate()) for p in (first, second)]
        for rc, out, err in results:
            if rc == 0:
                outcomes.add("finished")
                store_equal(out.splitlines()[-1], ref.splitlines()[-1])
            else:
                assert rc == 1 and err.strip().splitlines()[-1].endswith(
                    "another featx process is writing this store; wait for it to finish"), err
                outcomes.add("refused")
        assert any(rc == 0 for rc, *_ in results)
        for path in store.list_stores(cache):
            assert store.verify(path) == []
    assert "finished" in outcomes


def test_a_reader_during_a_write_sees_the_old_store_or_the_new_one(tmp_path):
    data = make_folder(tmp_path / "data", {"a": 20, "b": 20})
    args = [*EXTRACT, "--data", str(data), "--cache", str(tmp_path / "cache")]
    rc, out, err, _ = run_featx(args, tmp_path)
    assert rc == 0, err
    path = out.splitlines()[-1]
    make_folder(data, {"a": 20, "b": 20}, start_seed=1000)  # overwrites: 40 changed images
    make_folder(data, {"c": 24}, start_seed=2000)  # and 24 new ones
    writer = featx_process(args, tmp_path)
    seen = []
    while writer.poll() is None:
        _, _, keys, classes = store.load(path)
        seen.append((len(keys), tuple(classes)))
        assert store.verify(path) == []
    _, err = writer.communicate()
    assert writer.returncode == 0, err
    seen.append((len(store.load(path)[2]), tuple(store.load(path)[3])))
    assert set(seen) <= {(40, ("a", "b")), (64, ("a", "b", "c"))}, set(seen)
    assert seen[0] == (40, ("a", "b")) and seen[-1] == (64, ("a", "b", "c"))
