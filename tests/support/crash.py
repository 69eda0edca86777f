"""Helpers for the kill tests: run featx in a child process, SIGKILL it, check what it
left behind, and compare stores."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from featx import store
from featx.store import read

ROOT = Path(__file__).resolve().parents[2]


def featx_process(args: list[str], cwd: Path, prelude: str = "") -> subprocess.Popen:
    """``featx ARGS`` in a child process; ``prelude`` runs first (to plant a fault)."""
    code = f"{prelude}\nimport sys\nfrom featx.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_featx(args: list[str], cwd: Path, prelude: str = "") -> tuple[int, str, str, float]:
    """(exit status, stdout, stderr, seconds) of ``featx ARGS`` run to its end."""
    start = time.monotonic()
    proc = featx_process(args, cwd, prelude)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err, time.monotonic() - start


# A long extraction commits every 2,048 images; the small jobs of the tests commit every
# batch, so that a kill can land between commits.
COMMIT_EVERY_BATCH = ["--commit-rows", "1"]


def kill_after(args: list[str], cwd: Path, seconds: float, prelude: str = "", once=None) -> bool:
    """Start ``featx ARGS`` and SIGKILL it ``seconds`` later, or ``seconds`` after
    ``once()`` first holds; False if it ended first."""
    proc = featx_process(args, cwd, prelude)
    try:
        while once is not None and proc.poll() is None and not once():
            time.sleep(0.005)
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return True
    finally:
        proc.stdout.close()
        proc.stderr.close()


def commits(cache: Path, rank: int | None = None) -> list[Path]:
    """The commits of unfinished extractions in ``cache``: shard files that no store's
    manifest names yet (of process ``rank`` only, under torchrun, when given)."""
    from featx.store import shards, snapshot, update

    found = []
    for folder in cache.glob("*.h5.d"):
        path = folder.with_name(folder.name.removesuffix(".d"))
        try:
            snap = snapshot.read(path) if path.exists() else None
        except Exception:
            snap = None
        found += update.pending_files(path, snap)
    prefix = None if rank is None else shards.rank_prefix(rank)
    return sorted(p for p in found if prefix is None or p.name.startswith(prefix))


def committed(cache: Path) -> int:
    """Images (rows and skipped files) in the commits of unfinished extractions in ``cache``."""
    from featx.store import shards

    return sum(shards.read_entries(p).size for p in commits(cache))


def work_window(args: list[str], cwd: Path, cache: Path, prelude: str = "") -> tuple[float, float, str]:
    """Run ``featx ARGS`` to its end, watching ``cache``: (seconds until its first journal
    chunk, seconds until its store was in place plus 0.2 s, its last line of output).
    Kills aimed between the two land in the work itself rather than in Python's start-up
    or shut-down."""
    start = time.monotonic()
    proc = featx_process(args, cwd, prelude)
    first = stored = None
    while proc.poll() is None:
        now = time.monotonic() - start
        if first is None and commits(cache):
            first = now
        if stored is None and list(cache.glob("*.h5")):
            stored = now
        time.sleep(0.005)
    out, err = proc.communicate()
    assert proc.returncode == 0 and first is not None and stored is not None, err
    return first, stored + 0.2, out.splitlines()[-1]


def phase(cache: Path) -> str:
    """What an extraction had got to when it was killed, from what it left in ``cache``."""
    chunks = commits(cache)
    if list(cache.glob(".*.h5.tmp-*")):
        return "writing the manifest"
    if list(cache.glob("*.h5")):
        return "store written" + (", commits not yet removed" if chunks else "")
    if chunks:
        return "embedding, commits on disk"
    if list(cache.glob("*.h5.d")):
        return "embedding, first commit in progress"
    return "starting up"


def assert_intact(*folders: Path) -> None:
    """Every file featx left is readable; temporaries are only hidden ``.*.tmp-<pid>`` files."""
    from featx.training import load_checkpoint

    for folder in folders:
        for p in folder.rglob("*"):
            if not p.is_file() or p.name.endswith(".lock") or ".tmp-" in p.name and p.name.startswith("."):
                continue
            if p.suffix == ".h5" and p.parent.name.endswith(".h5.d"):  # a shard or tombstone file
                from featx.store import shards

                assert shards.verify(p, shards.recorded_digest(p)) == [], p
            elif p.suffix == ".h5":
                assert store.verify(p) == [], p
            elif p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    [z[k] for k in z.files]
            elif p.suffix == ".pt" and p.parent.name == "graphs":  # a cached frozen graph
                from featx.extraction import frozen

                assert frozen._load(p) is not None, p
            elif p.suffix == ".pt":
                load_checkpoint(p)
            elif p.suffix in (".md", ".html"):
                p.read_text()
            elif p.suffix == ".png":
                assert p.read_bytes().startswith(b"\x89PNG")


def store_equal(a: Path, b: Path) -> None:
    """Same rows, order, labels, classes, skipped files and bit-identical features."""
    a, b = read(a), read(b)
    (ra, la, ca), (rb, lb, cb) = (a.rows, a.labels, a.classes), (b.rows, b.labels, b.classes)
    assert ca == cb and np.array_equal(la, lb)
    assert list(ra.keys) == list(rb.keys) and list(ra.sha256) == list(rb.sha256)
    assert list(ra.skipped_keys) == list(rb.skipped_keys)
    assert list(ra.skipped_reasons) == list(rb.skipped_reasons)
    assert set(ra.features) == set(rb.features)
    for name in ra.features:
        assert np.array_equal(ra.features[name], rb.features[name]), name
