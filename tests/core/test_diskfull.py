"""A full disk while writing a store, a journal chunk, a checkpoint or a report: one clear
error, and everything committed before it stays valid and is used by the next run.

Two ways to run out of room, both real failures of ``write(2)``: a size limit on the
files the child process may write (``RLIMIT_FSIZE``, EFBIG; works anywhere), and, where
the tests may mount one, a small tmpfs that fills up (ENOSPC).
"""
from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from support.crash import COMMIT_EVERY_BATCH, assert_intact, committed, run_featx, store_equal
from support.imagegen import make_folder

EXTRACT = ["extract", "--backbone", "efficientnet_lite0", "--image-size", "64", "--batch-size", "8",
           "--workers", "1"]


def limit(nbytes: int) -> str:
    """A prelude that lets the child write no file past ``nbytes`` (writes fail with EFBIG)."""
    return ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({nbytes}, {nbytes}))\n")


def _one_line_error(rc: int, err: str) -> str:
    assert rc == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("featx: error: ") and "Traceback" not in err, err
    return last


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diskfull")
    data = make_folder(tmp / "data", {"a": 40, "b": 40})
    rc, out, err, _ = run_featx([*EXTRACT, "--data", str(data), "--cache", str(tmp / "reference")], tmp)
    assert rc == 0, err
    return tmp, data, out.splitlines()[-1]


def test_a_store_that_cannot_be_written_keeps_the_old_store_and_the_journal(job, tmp_path):
    root, data, reference = job
    cache = tmp_path / "cache"
    args = [*EXTRACT, "--data", str(data), "--cache", str(cache)]
    # commits (8 images, 41 kB each) fit; the store's shard (80 images, 410 kB) does not
    rc, _, err, _ = run_featx([*args, *COMMIT_EVERY_BATCH], root, prelude=limit(200_000))
    line = _one_line_error(rc, err)
    assert "cannot write it, the file grew past the size this process may write" in line
    assert "the images embedded in this run are kept in" in line
    assert_intact(cache)
    assert committed(cache) == 80
    rc, out, err, _ = run_featx(args, root)
    assert rc == 0 and "80 images in the store: 0 embedded" in err, err
    store_equal(out.splitlines()[-1], reference)


def test_a_checkpoint_that_cannot_be_written_is_one_clear_error(tmp_path):
    data = make_folder(tmp_path / "data", {"a": 6, "b": 6})
    out = tmp_path / "run"
    rc, _, err, _ = run_featx(["finetune", "--data", str(data), "--backbone", "efficientnet_lite0",
                               "--image-size", "64", "--epochs", "1", "--strategy", "full", "--batch-size",
                               "4", "--workers", "0", "--out", str(out), "--cache",
                               str(tmp_path / "cache")], tmp_path,
                              prelude=limit(1_000_000))
    line = _one_line_error(rc, err)
    assert f"{out}/" in line and "cannot write it, the file grew past" in line
    assert_intact(out)


def test_a_report_that_cannot_be_written_is_one_clear_error(tmp_path):
    data = make_folder(tmp_path / "data", {"a": 10, "b": 10})
    (tmp_path / "p.yaml").write_text(f"name: full\ndata: {{train: {data}, test_fraction: 0.3}}\n"
                                     "backbones: [pixels]\nheads: [logreg]\n")
    args = ["run", str(tmp_path / "p.yaml"), "--cache", str(tmp_path / "cache")]
    rc, _, err, _ = run_featx([*args, "--out", str(tmp_path / "ref")], tmp_path)
    assert rc == 0, err
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "ref").iterdir() if p.is_file()}
    cap = max(sizes.values()) - 1  # every file fits but the largest
    rc, _, err, _ = run_featx([*args, "--out", str(tmp_path / "out")], tmp_path, prelude=limit(cap))
    line = _one_line_error(rc, err)
    assert f"{tmp_path / 'out'}/" in line and "cannot write it" in line
    assert_intact(tmp_path / "out")
    largest = max(sizes, key=sizes.get)
    assert not (tmp_path / "out" / largest).exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 200 kB tmpfs (grown by remounting); skipped where this process may not mount
    one (not root)."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], capture_output=True,
                      check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the RLIMIT_FSIZE tests cover the same failures")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_during_journal_commits_and_the_store_write_loses_nothing(job, small_disk):
    root, data, reference = job
    args = [*EXTRACT, "--data", str(data), "--cache", str(small_disk)]
    rc, _, err, _ = run_featx([*args, *COMMIT_EVERY_BATCH], root)  # 200 kB: fills while the journal grows
    line = _one_line_error(rc, err)
    assert "cannot write it, the disk is full (No space left on device)" in line
    assert "the batches committed before it are kept in" in line
    assert_intact(small_disk)
    kept = committed(small_disk)
    assert 8 <= kept < 80

    subprocess.run(["mount", "-o", "remount,size=600k", str(small_disk)], check=True)
    rc, _, err, _ = run_featx([*args, *COMMIT_EVERY_BATCH], root)  # the journal fits now, the store does not
    line = _one_line_error(rc, err)
    assert "No space left on device" in line and "the images embedded in this run are kept in" in line
    assert_intact(small_disk)

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    rc, out, err, _ = run_featx(args, root)
    assert rc == 0 and "0 embedded" in err, err
    store_equal(out.splitlines()[-1], reference)
    assert json.loads(run_featx(["cache", "info", out.splitlines()[-1], "--json"], root)[1])["rows"] == 80
