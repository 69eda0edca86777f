"""SIGKILL at any moment: every file featx wrote stays readable (or is cleanly absent),
and the rerun finishes with the result an uninterrupted run gives.

The default suite kills an extraction at two random moments and at each critical
step of writing (a commit, a shard, the manifest, removing the commits), a pipeline run and a
head fit once each; ``pytest -m slow`` kills an extraction 50 times and prints where
the kills landed.
"""
from __future__ import annotations

import json
import random
import shutil
from collections import Counter

import pytest

from featx.heads.bundle import load as load_model
from support.crash import (
    COMMIT_EVERY_BATCH,
    assert_intact,
    commits,
    kill_after,
    phase,
    run_featx,
    store_equal,
    work_window,
)
from support.imagegen import jpeg_bytes, make_folder, photo

EXTRACT = ["extract", "--backbone", "efficientnet_lite0", "--image-size", "64", "--batch-size", "8",
           "--workers", "1"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A folder of 192 images (two broken); the store an uninterrupted run makes of it,
    and the seconds from that run's first commit to its store being in place."""
    tmp = tmp_path_factory.mktemp("crash")
    data = make_folder(tmp / "data", {"a": 96, "b": 94})
    (data / "a" / "broken.jpg").write_bytes(jpeg_bytes(photo(1))[:600])
    (data / "b" / "empty.jpg").write_bytes(b"")
    cache = tmp / "reference"
    args = [*EXTRACT, "--data", str(data), "--cache", str(cache), *COMMIT_EVERY_BATCH]
    first, end, path = work_window(args, tmp, cache)
    return tmp, data, path, (first, end)


def _kill_and_rerun(job, tmp_path, seconds: float, after_first_commit: bool) -> str:
    """Kill an extraction ``seconds`` after its start (or after its first commit), check
    what it left, rerun it and compare with the reference; returns where the kill landed."""
    root, data, reference, _ = job
    cache = tmp_path / "cache"
    args = [*EXTRACT, "--data", str(data), "--cache", str(cache)]
    committed = (lambda: bool(commits(cache))) if after_first_commit else None
    killed = kill_after([*args, *COMMIT_EVERY_BATCH], root, seconds, once=committed)
    where = phase(cache) if killed else "finished before the kill"
    assert_intact(cache)
    rc, out, err, _ = run_featx(args, root)
    assert rc == 0, err
    result = out.splitlines()[-1]
    store_equal(result, reference)
    assert not commits(cache) and not list(cache.glob(".*.tmp-*")), list(cache.iterdir())
    return where


def test_extraction_killed_at_random_moments_resumes_to_the_reference_store(job, tmp_path):
    rng = random.Random(0)
    first, end = job[3]
    _kill_and_rerun(job, tmp_path / "0", rng.uniform(0, end), after_first_commit=False)
    _kill_and_rerun(job, tmp_path / "1", rng.uniform(0, end - first), after_first_commit=True)


@pytest.mark.slow
def test_extraction_killed_fifty_times_always_resumes_to_the_reference_store(job, tmp_path):
    """10 kills at any moment of the run, 40 at a moment after its first commit."""
    rng = random.Random(1)
    first, end = job[3]
    anywhere = Counter(_kill_and_rerun(job, tmp_path / str(t), rng.uniform(0, end), False) for t in range(10))
    working = Counter(_kill_and_rerun(job, tmp_path / str(t), rng.uniform(0, end - first), True)
                      for t in range(10, 50))
    reference = {"first_commit": round(first, 2), "store_in_place": round(end - 0.2, 2)}
    print(json.dumps({"kills": 50, "reference_seconds": reference, "landed_anywhere": dict(anywhere),
                      "landed_after_first_commit": dict(working), "reruns_equal_to_reference": 50}))
    assert working["finished before the kill"] <= 10


# Faults planted in the child: SIGKILL exactly at one critical step of writing.
_KILL = "import os, signal\ndef _die(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
STEPS = {
    # the fourth commit fully written to its temporary name, not yet renamed
    "commit before its rename": _KILL + (
        "import featx.core.files as F\n_r, _n = F.os.replace, [0]\n"
        "def rep(a, b):\n    _n[0] += '.h5.d' in str(b)\n    return _die() if _n[0] == 4 else _r(a, b)\n"
        "F.os.replace = rep\n"),
    # a new shard of the finishing run partly written under its temporary name
    "shard partly written": _KILL + (
        "import featx.store.shards as S, featx.extraction.writer as W\nS.WRITE_BLOCK = 32\n"
        "_t, _n = S.take, [0]\n"
        "def take(x, rows):\n    _n[0] += _n[0] > 0\n    return _die() if _n[0] == 3 else _t(x, rows)\n"
        "S.take = take\n_w = W.StoreWriter._write\n"
        "def write(self, *a):\n    _n[0] = 1\n    return _w(self, *a)\nW.StoreWriter._write = write\n"),
    # the manifest complete under its temporary name, not yet renamed
    "manifest before its rename": _KILL + (
        "import featx.core.files as F\n_r = F.os.replace\n"
        "F.os.replace = lambda a, b: _die() if str(b).endswith('.h5') and '.h5.d' not in str(b) "
        "else _r(a, b)\n"),
    # the manifest in place, the commits it made shards of not yet removed
    "commits before they are removed": _KILL + (
        "import featx.extraction.writer as W\nW.remove_unnamed = _die\n"),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_kill_at_each_step_of_writing_leaves_readable_files_and_the_rerun_equals_the_reference(job,
                                                                                                 tmp_path,
                                                                                                 step):
    root, data, reference, _ = job
    cache = tmp_path / "cache"
    if step == "commits before they are removed":  # an older store is updated: it must survive the kill
        shutil.copytree(root / "reference", cache)
        (data / "a" / "new.jpg").write_bytes(jpeg_bytes(photo(999)))
    args = [*EXTRACT, "--data", str(data), "--cache", str(cache), "--on-error", "skip"]
    try:
        rc, _, _, _ = run_featx([*args, *COMMIT_EVERY_BATCH], root, prelude=STEPS[step])
        assert rc == -9, "the planted kill did not happen"
        assert_intact(cache)
        rc, out, err, _ = run_featx(args, root)
        assert rc == 0, err
        if step == "commits before they are removed":
            clean = tmp_path / "clean"
            rc, ref, err, _ = run_featx([*EXTRACT, "--data", str(data), "--cache", str(clean)], root)
            store_equal(out.splitlines()[-1], ref.splitlines()[-1])
        else:
            store_equal(out.splitlines()[-1], reference)
        assert not commits(cache) and not list(cache.glob(".*.tmp-*"))
    finally:
        (data / "a" / "new.jpg").unlink(missing_ok=True)


def test_a_killed_pipeline_run_leaves_readable_files_and_reruns_to_the_same_report(tmp_path):
    data = make_folder(tmp_path / "data", {"a": 20, "b": 20, "c": 20})
    (data / "a" / "broken.jpg").write_bytes(b"not a picture")
    (tmp_path / "p.yaml").write_text(
        f"name: crash\ndata: {{train: {data}, test_fraction: 0.3}}\nbackbones: [pixels]\n"
        "heads: [logreg, knn, ridge]\nreport: {efficiency: {shots: [2, 5], draws: 2}}\n")
    ref = ["run", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "ref"), "--cache",
           str(tmp_path / "refcache")]
    rc, _, err, seconds = run_featx(ref, tmp_path)
    assert rc == 0, err
    args = ["run", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "out"), "--cache",
            str(tmp_path / "cache")]
    for fraction in (0.75,):
        kill_after(args, tmp_path, fraction * seconds)
        assert_intact(tmp_path / "out", tmp_path / "cache")
    rc, _, err, _ = run_featx(args, tmp_path)
    assert rc == 0, err

    def results(folder):
        report = json.loads((folder / "report.json").read_text())
        return [{k: v for k, v in r.items() if "seconds" not in k and k != "extract_ms_per_image"}  # times
                for r in report["results"]]

    assert results(tmp_path / "out") == results(tmp_path / "ref")


def test_a_killed_head_fit_leaves_no_model_or_a_whole_one(tmp_path, job):
    root, _, reference, _ = job
    out = tmp_path / "m.joblib"
    args = ["train", "--features", reference, "--head", "logreg", "--out", str(out)]
    rc, _, err, seconds = run_featx(args, root)
    assert rc == 0, err
    out.unlink()
    out.with_name("m.joblib.json").unlink()
    for fraction in (0.6, 0.9):
        kill_after(args, root, fraction * seconds)
        if out.exists() and out.with_name("m.joblib.json").exists():
            load_model(out)  # a model that is there is whole: its digest matches
    rc, _, err, _ = run_featx(args, root)
    assert rc == 0, err
    assert load_model(out).head == "logreg"
