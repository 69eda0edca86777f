"""20 SIGKILLs at random moments of an append to a 100,000-image store: every rerun
completes and reads the same rows as an uninterrupted append (slow: ``-m slow``)."""
from __future__ import annotations

import io
import json
import random
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from support.crash import assert_intact, commits, kill_after, run_featx, store_equal

BASE, ADDED = 100_000, 4_000
ARGS = ["extract", "--backbone", "pixels", "--image-size", "8", "--batch-size", "256", "--workers", "1"]


def _write(data, start: int, count: int) -> None:
    rng = np.random.default_rng(start)
    blobs = []
    for _ in range(32):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    for i in range(start, start + count):
        folder = data / f"c{i % 50:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:07d}.png").write_bytes(blobs[i % len(blobs)])


def _landed(cache, manifest, inode: int) -> str:
    """Where a kill of an append landed, from what it left."""
    if manifest.stat().st_ino != inode:
        return "manifest replaced" + (", commits not yet removed" if commits(cache) else "")
    if list(cache.rglob(".*.tmp-*")):
        return "writing a commit, a shard or the manifest"
    return "embedding, commits on disk" if commits(cache) else "listing, scanning or the first batch"


@pytest.mark.slow
def test_twenty_kills_of_an_append_to_a_large_store_resume_to_the_uninterrupted_store(tmp_path):
    data, base = tmp_path / "data", tmp_path / "base"
    _write(data, 0, BASE)
    rc, out, err, _ = run_featx([*ARGS, "--data", str(data), "--cache", str(base)], tmp_path)
    assert rc == 0, err
    _write(data, BASE, ADDED)
    reference = tmp_path / "reference"
    shutil.copytree(base, reference)
    rc, out, err, seconds = run_featx([*ARGS, "--data", str(data), "--cache", str(reference)], tmp_path)
    assert rc == 0 and f"{ADDED} embedded" in err, err
    ref_path = out.splitlines()[-1]
    rng, landed = random.Random(17), Counter()
    for t in range(20):
        cache = tmp_path / f"k{t}"
        shutil.copytree(base, cache)
        args = [*ARGS, "--data", str(data), "--cache", str(cache)]
        manifest = next(cache.glob("*.h5"))
        before = manifest.stat().st_ino
        killed = kill_after([*args, "--commit-rows", "256"], tmp_path, rng.uniform(0.5, seconds + 1))
        landed[_landed(cache, manifest, before) if killed else "finished before the kill"] += 1
        assert_intact(cache)
        rc, out, err, _ = run_featx(args, tmp_path)
        assert rc == 0, err
        store_equal(out.splitlines()[-1], ref_path)
        assert not commits(cache)
        shutil.rmtree(cache)
    print(json.dumps({"kills": 20, "append_seconds": round(seconds, 2), "landed": dict(landed)}))
    assert landed["finished before the kill"] <= 10
