"""Broken and hostile inputs (tests/support/hostile.py): each is embedded or skipped with a
one-line reason, the run completes, ``--on-error fail`` stops at the first with its
name, and nothing is written outside the cache and output folders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featx import store
from featx.core.errors import SourceError
from featx.extraction import extract
from support.crash import committed
from support.hostile import PWNED, make_corpus, outcomes
from support.imagegen import jpeg_bytes, make_folder, photo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return root, make_corpus(root)


def test_every_case_is_embedded_or_skipped_with_its_reason(corpus, lite0_small, tmp_path):
    root, cases = corpus
    results = outcomes(root, cases, lite0_small, tmp_path / "cache")
    wrong = [r for r in results if not r["as_expected"]]
    assert not wrong, wrong
    assert len(results) == len(cases) >= 30
    assert all("\n" not in r["reason"] for r in results)
    assert not (root / PWNED).exists(), "a !!python tag ran code"
    # the two copies of one image get one and the same features
    path = extract(root / "folder", lite0_small, tmp_path / "cache", workers=1).path
    X, _, keys, _ = store.load(path)
    row = {k: i for i, k in enumerate(keys.tolist())}
    np.testing.assert_array_equal(X[row["b/duplicate_1.jpg"]], X[row["b/duplicate_2.jpg"]])
    assert np.isfinite(X).all()


def _tree(top: Path, skip: tuple[Path, ...]) -> dict:
    """Every path under ``top`` (outside ``skip``) with its size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def _featx(*args, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "featx", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def test_cli_completes_reports_the_skipped_files_and_writes_only_its_folders(corpus, tmp_path):
    root, cases = corpus
    home = tmp_path / "home"
    home.mkdir()
    cache, out = tmp_path / "cache", tmp_path / "out"
    (tmp_path / "p.yaml").write_text(
        f"name: hostile\ndata: {{train: {root / 'folder'}, test_fraction: 0.3}}\n"
        "backbones: [efficientnet_lite0]\nextract: {image_size: 64, workers: 1}\nheads: [logreg]\n"
        "report: {efficiency: {shots: [2], draws: 1}}\n")
    before = _tree(tmp_path, (cache, out, home)) | _tree(root, ())

    failed = _featx("extract", "--data", str(root / "folder"), "--backbone", "efficientnet_lite0",
                    "--image-size", "64", "--cache", str(cache), "--on-error", "fail", cwd=tmp_path,
                    home=home)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == \
        f"featx: error: {root / 'folder' / 'a' / 'animated.gif'}: not an image file extension (.gif)"

    done = _featx("extract", "--data", str(root / "folder"), "--backbone", "efficientnet_lite0",
                  "--image-size", "64", "--cache", str(cache), cwd=tmp_path, home=home)
    assert done.returncode == 0, done.stderr
    info = json.loads(_featx("cache", "info", done.stdout.splitlines()[-1], "--cache", str(cache), "--json",
                             cwd=tmp_path, home=home).stdout)
    skipped = {s["key"]: s["reason"] for s in info["skipped"]}
    expected = {store.printable(c.key) for c in cases if c.input == "folder" and c.expect == "skipped"}
    assert expected == set(skipped)

    run = _featx("run", str(tmp_path / "p.yaml"), "--out", str(out), "--cache", str(cache), cwd=tmp_path,
                 home=home)
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    assert {s["key"] for s in report["skipped"] if s["split"] == "train"} == expected
    md = (out / "report.md").read_text()
    assert all(f"{key}: {reason}" in md for key, reason in skipped.items())

    after = _tree(tmp_path, (cache, out, home)) | _tree(root, ())
    assert sorted(set(after) - set(before)) + sorted(p for p in before if after.get(p) != before[p]) == []
    # in the user's home only matplotlib's own font cache and config folder
    written = {p.relative_to(home).parts[:2] for p in home.rglob("*") if p.is_file() or not any(p.iterdir())}
    assert written <= {(".cache", "matplotlib"), (".config", "matplotlib")}


def test_on_error_fail_stops_at_the_first_bad_file_and_keeps_the_batches_before_it(tmp_path, lite0_small):
    data = make_folder(tmp_path / "data", {"a": 12})
    (data / "a" / "08_broken.jpg").write_bytes(jpeg_bytes(photo(50))[:500])
    with pytest.raises(SourceError) as err:
        extract(data, lite0_small, tmp_path / "cache", batch_size=4, commit_rows=4, workers=1,
                on_error="fail")
    assert str(err.value).startswith(f"{data / 'a' / '08_broken.jpg'}: cannot decode: ")
    assert "\n" not in str(err.value)
    assert committed(tmp_path / "cache") == 8  # the two whole batches before the one holding the bad file

    skipped = extract(data, lite0_small, tmp_path / "cache", batch_size=4, commit_rows=4, workers=1)
    assert skipped.skipped == 1  # recorded; and a later run that asks to fail still finds it
    with pytest.raises(SourceError, match="08_broken.jpg: cannot decode"):
        extract(data, lite0_small, tmp_path / "cache", batch_size=4, commit_rows=4, workers=1,
                on_error="fail")

    (data / "a" / "08_broken.jpg").unlink()
    fixed = extract(data, lite0_small, tmp_path / "cache", batch_size=4, commit_rows=4, workers=1,
                    on_error="fail")
    assert (fixed.reused, fixed.embedded, fixed.skipped) == (12, 0, 0)
