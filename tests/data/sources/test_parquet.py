"""Manifests read in chunks with pyarrow (featx.data.sources.manifest): a Parquet
manifest of real photos, the problems both kinds report, and CSV read the csv module's
way whatever the chunks."""
from __future__ import annotations

import csv

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featx.core.errors import SourceError
from featx.data.sources import CsvSource, ParquetSource, open_source
from support.imagegen import make_folder


@pytest.fixture(scope="module")
def val_folder(hymenoptera_val):
    """hymenoptera/val unpacked (tests/conftest.py): the reference compared with."""
    return hymenoptera_val


def write_parquet(where, **columns) -> None:
    pq.write_table(pa.table(columns), where, row_group_size=50)


def test_hymenoptera_parquet_manifest_matches_the_folder(val_folder, monkeypatch):
    monkeypatch.setattr(ParquetSource, "batch_rows", 32)  # several chunks, across row groups
    items = list(val_folder.items)[::-1]  # rows in any order
    manifest = val_folder.root / "manifest.parquet"
    write_parquet(manifest, path=[it.key for it in items],
                  label=[val_folder.classes[it.label] for it in items], width=list(range(len(items))))
    src = open_source(manifest)
    assert isinstance(src, ParquetSource)
    assert src.spec == f"parquet:{manifest.resolve()}" and src.name == "manifest"
    assert src.problems == [] and src.classes == val_folder.classes == ["ants", "bees"]
    assert [(it.key, it.label) for it in src.items] == [(it.key, it.label) for it in val_folder.items]
    assert all(src.read(a) == val_folder.read(b) for a, b in zip(src.items, val_folder.items))
    assert src.items == val_folder.items  # the same stamps too: each file is stat-ed


def test_parquet_absolute_paths_and_numeric_labels(val_folder, tmp_path):
    items = list(val_folder.items)[::8]  # both classes
    paths = [str(val_folder.root.resolve() / it.key) for it in items]
    write_parquet(tmp_path / "m.parquet", path=paths, label=[10 if it.label else 2 for it in items])
    src = open_source(tmp_path / "m.parquet")
    assert src.classes == ["10", "2"]  # a number's text, sorted as text
    assert [it.key for it in src.items] == sorted(paths)
    assert all(src.read(it) == open(it.key, "rb").read() for it in src.items)


def test_parquet_rows_that_cannot_be_used_are_problems(tmp_path, monkeypatch):
    make_folder(tmp_path, {"x": 3})
    monkeypatch.setattr(ParquetSource, "batch_rows", 2)
    write_parquet(tmp_path / "m.parquet",
                  path=["x/02.jpg", None, "x/00.jpg", "x/missing.jpg", "  ", "x//02.jpg", "./x/01.jpg"],
                  label=["b", "a", None, "a", "a", "c", " a "])
    src = ParquetSource(tmp_path / "m.parquet")
    assert src.classes == ["a", "b"]
    assert [(it.key, it.label) for it in src.items] == [("x/00.jpg", -1), ("x/01.jpg", 0), ("x/02.jpg", 1)]
    assert src.problems == [("m.parquet:2", "blank path"),
                            ("x/missing.jpg", "cannot open: No such file or directory"),
                            ("m.parquet:5", "blank path"),
                            ("x/02.jpg", "duplicate row (row 6)")]


def test_manifests_without_a_path_column_or_unreadable(tmp_path):
    write_parquet(tmp_path / "m.parquet", file=["a.jpg"], label=["x"])
    with pytest.raises(SourceError, match=r"m.parquet: manifest needs a 'path' column \(found \['file'"):
        open_source(tmp_path / "m.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SourceError, match=r"bad.parquet: cannot read manifest"):
        open_source(tmp_path / "bad.parquet")
    with pytest.raises(SourceError, match=r"no such Parquet manifest"):
        open_source(tmp_path / "none.parquet")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SourceError, match=r"needs a 'path' column \(found no header\)"):
        open_source(tmp_path / "empty.csv")
    (tmp_path / "latin.csv").write_bytes("path,label\nx.jpg,caf\xe9\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"latin.csv: cannot read manifest"):
        open_source(tmp_path / "latin.csv")


def test_csv_in_small_chunks_reads_as_the_csv_module_does(tmp_path, monkeypatch):
    make_folder(tmp_path, {"x": 12})
    rows = []
    for i in range(12):
        rows.append([f"x/{i:02d}.jpg", f"c{i % 3}"] + (["surplus"] if i % 5 == 0 else []))
        if i % 4 == 1:
            rows.append([f"x/{i:02d}.jpg", "again"])  # a duplicate row
        if i % 4 == 2:
            rows += [[], [f"x/{i:02d}.jpg"]]  # a blank line, then a duplicate with a field missing
        if i == 7:
            rows.append(['x/"quoted\nnewline".jpg', "q"])
    rows.insert(3, ["", "blank"])
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8-sig") as fh:  # with a byte-order mark
        csv.writer(fh).writerows([["path", " label "]] + rows)
    whole = CsvSource(manifest)
    monkeypatch.setattr(CsvSource, "block_bytes", 48)
    chunked = CsvSource(manifest)
    assert (chunked.items, chunked.classes, chunked.problems) == (whole.items, whole.classes, whole.problems)
    assert [it.key for it in whole.items] == [f"x/{i:02d}.jpg" for i in range(12)]
    assert whole.classes == ["c0", "c1", "c2"]
    # the problems, and the line each is on, as csv.DictReader counts lines
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        lines = [(n, row["path"]) for n, row in enumerate(csv.DictReader(fh), start=2)]
    seen, expected = set(), []
    for n, path in lines:
        if not path:
            expected.append((f"m.csv:{n}", "blank path"))
        elif path in seen:
            expected.append((path, f"duplicate row (line {n})"))
        elif path.startswith('x/"'):
            expected.append((path, "cannot open: No such file or directory"))
        seen.add(path)
    assert whole.problems == expected and len(expected) == 8


def test_csv_and_parquet_manifests_of_the_same_rows_list_the_same(tmp_path):
    make_folder(tmp_path, {"a": 2, "b": 2})
    paths = ["b/01.jpg", "a/00.jpg", "a/01.jpg", "gone.jpg", "b/00.jpg"]
    labels = ["bee", "ant", "", "ant", "bee"]
    write_parquet(tmp_path / "m.parquet", path=paths, label=labels)
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label"], *zip(paths, labels)])
    p, c = open_source(tmp_path / "m.parquet"), open_source(tmp_path / "m.csv")
    assert p.items == c.items and p.classes == c.classes == ["ant", "bee"]
    assert p.problems == c.problems == [("gone.jpg", "cannot open: No such file or directory")]
