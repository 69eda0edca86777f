"""A corpus of broken and hostile inputs, made on the spot, with what featx must do with each.

``make_corpus(root)`` writes the files and returns the cases. Each case says where its
file is and its expected outcome:

- ``embedded``: processed correctly, a row in the store;
- ``skipped``: not embedded, recorded with a one-line reason matching ``reason``;
- ``refused``: the whole input is refused with a one-line error matching ``reason``.

Used by tests/data/test_hostile.py and by benchmarks/hostile_inputs.py (which prints the table).
"""
from __future__ import annotations

import csv
import io
import os
import re
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .imagegen import jpeg_bytes, photo


@dataclass(frozen=True)
class Case:
    name: str  # what the case is
    input: str  # which input holds it: "folder", "single", "tar", "csv:<file>", "yaml:<file>"
    key: str  # its key in the source ("" for a whole input)
    expect: str  # embedded | skipped | refused
    reason: str = ""  # regex the recorded reason or the error must match


NON_UTF8 = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 file name: not valid UTF-8


def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _bomb_png() -> bytes:
    """A tiny PNG whose header claims 50,000 x 50,000 pixels."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    ihdr = bytearray(data[12:29])  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", 50_000, 50_000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    return jpeg_bytes(photo(7, size=(80, 40)), exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [photo(s, size=(32, 32)).convert("P") for s in (1, 2, 3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _files() -> list[tuple[str, bytes | None, str, str]]:
    """(key, bytes, expect, reason) for the files of the folder input."""
    sixteen = Image.fromarray((np.linspace(0, 65535, 48 * 48).reshape(48, 48)).astype(np.uint16))
    palette = photo(4, size=(40, 40)).convert("P", palette=Image.ADAPTIVE, colors=16)
    dup = jpeg_bytes(photo(5))
    return [
        ("a/zero_bytes.jpg", b"", "skipped", r"^empty file$"),
        ("a/truncated.jpg", jpeg_bytes(photo(1))[:700], "skipped", r"^cannot decode: .*truncated"),
        ("a/png_named.jpg", _png(photo(2)), "embedded", ""),
        ("a/text_named.jpg", b"this is not an image\n", "skipped", r"^not a recognised image format$"),
        ("a/animated.gif", _animated_gif(), "skipped", r"^not an image file extension \(\.gif\)$"),
        ("a/sixteen_bit.png", _png(sixteen), "embedded", ""),
        ("a/palette_transparent.png", _png(palette, transparency=0), "embedded", ""),
        ("a/cmyk.jpg", jpeg_bytes(photo(6).convert("CMYK")), "embedded", ""),
        ("a/exif_rotated.jpg", _exif_rotated(), "embedded", ""),
        ("a/one_pixel.png", _png(Image.new("RGB", (1, 1), (200, 10, 10))), "embedded", ""),
        ("a/bomb_50000x50000.png", _bomb_png(), "skipped", r"^cannot decode: .*decompression bomb"),
        ("a/unreadable.jpg", jpeg_bytes(photo(8)), "unreadable", r"^cannot read: Permission denied$"),
        ("a/loop_1.jpg", None, "skipped", r"^cannot stat: Too many levels of symbolic links$"),
        ("a/loop_2.jpg", None, "skipped", r"^cannot stat: Too many levels of symbolic links$"),
        (f"b/{NON_UTF8}", jpeg_bytes(photo(9)), "embedded", ""),
        ("b/duplicate_1.jpg", dup, "embedded", ""),
        ("b/duplicate_2.jpg", dup, "embedded", ""),
        ("b/back_to_root/", None, "skipped", r"^folder link leads to a folder already listed"),
        ("empty_class/", None, "skipped", r"^class folder holds no files$"),
    ]


def can_read_unreadable() -> bool:
    """Whether this process reads a file whose permissions forbid it (root does)."""
    return os.geteuid() == 0


def make_corpus(root: Path, good_per_class: int = 6) -> list[Case]:
    """Write every hostile input under ``root``; returns the cases."""
    cases = []
    folder = root / "folder"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(good_per_class):
            (folder / cls / f"good_{i}.jpg").write_bytes(jpeg_bytes(photo(100 * (cls == "b") + i)))
    (folder / "empty_class").mkdir()
    for key, data, expect, reason in _files():
        path = folder / key
        if data is not None:
            path.write_bytes(data)
        if expect == "unreadable":
            path.chmod(0)
            expect, reason = ("embedded", "") if can_read_unreadable() else ("skipped", reason)
        cases.append(Case(key.rstrip("/"), "folder", key, expect, reason))
    os.symlink("loop_2.jpg", folder / "a" / "loop_1.jpg")
    os.symlink("loop_1.jpg", folder / "a" / "loop_2.jpg")
    os.symlink("..", folder / "b" / "back_to_root")

    single = root / "single"
    (single / "only").mkdir(parents=True)
    for i in range(8):
        (single / "only" / f"{i}.jpg").write_bytes(jpeg_bytes(photo(200 + i)))
    cases.append(Case("single-class dataset", "single", "", "refused", r"single class|one class|2 classes"))

    cases += _tar(root / "members.tar")
    cases += _csvs(root)
    cases += _yamls(root)
    return cases


def _tar(path: Path) -> list[Case]:
    data = jpeg_bytes(photo(300))
    with tarfile.open(path, "w") as tar:
        for name in ("root/a/ok.jpg", "root/b/ok.jpg", "root/../escape.jpg", "/root/a/absolute.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("root/a/symlink.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        dev = tarfile.TarInfo("root/a/device.jpg")
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
        tar.addfile(dev)
    unsafe = r"^unsafe member name \(absolute or '\.\.'\)$"
    return [
        Case("tar member with '..'", "tar", "root/../escape.jpg", "skipped", unsafe),
        Case("tar member with an absolute name", "tar", "/root/a/absolute.jpg", "skipped", unsafe),
        Case("tar symlink member", "tar", "a/symlink.jpg", "skipped", r"^not a regular file$"),
        Case("tar device member", "tar", "a/device.jpg", "skipped", r"^not a regular file$"),
    ]


def _csvs(root: Path) -> list[Case]:
    imgs = root / "csv_images"
    imgs.mkdir()
    for i in range(4):
        (imgs / f"{i}.jpg").write_bytes(jpeg_bytes(photo(400 + i)))
    rows = [["path", "label"], ["csv_images/0.jpg", "cat"], ["csv_images/1.jpg", "dog"],
            ["csv_images/missing.jpg", "cat"], ["csv_images/2.jpg", ""], ["", "dog"]]
    with open(root / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with open(root / "wrong_columns.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["file", "class"], ["csv_images/0.jpg", "cat"]])
    return [
        Case("CSV row naming a missing file", "csv:manifest.csv", "csv_images/missing.jpg", "skipped",
             r"^cannot open: No such file or directory$"),
        Case("CSV row with a blank label", "csv:manifest.csv", "csv_images/2.jpg", "embedded", ""),
        Case("CSV row with a blank path", "csv:manifest.csv", "manifest.csv:6", "skipped", r"^blank path$"),
        Case("CSV with wrong columns", "csv:wrong_columns.csv", "", "refused", r"needs a 'path' column"),
    ]


PWNED = "pwned-by-yaml"  # the file a !!python tag would create if YAML ran code


def _yamls(root: Path) -> list[Case]:
    base = "name: hostile\ndata: {train: folder}\nbackbones: [pixels]\nheads: [logreg]\n"
    (root / "unknown_key.yaml").write_text(base + "heads_typo: [knn]\n")
    (root / "wrong_type.yaml").write_text(base.replace("heads: [logreg]", "heads: logreg") + "seed: many\n")
    marker = root / PWNED
    (root / "python_tag.yaml").write_text(
        base + f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    return [
        Case("pipeline YAML with an unknown key", "yaml:unknown_key.yaml", "", "refused",
             r"unknown key 'heads_typo'"),
        Case("pipeline YAML with a wrong type", "yaml:wrong_type.yaml", "", "refused",
             r"heads must be a non-empty list"),
        Case("pipeline YAML with a !!python tag", "yaml:python_tag.yaml", "", "refused",
             r"not valid YAML|could not determine a constructor"),
    ]


def outcomes(root: Path, cases: list[Case], backbone, cache: Path) -> list[dict]:
    """Run featx on every input of the corpus; for each case what happened: ``embedded``,
    ``skipped`` (with its recorded reason) or ``refused`` (with the error), else ``missing``."""
    from featx import store
    from featx.bench import pipeline
    from featx.core.errors import FeatxError
    from featx.extraction import extract
    from featx.heads.fitting import train as train_head

    specs = {"folder": str(root / "folder"), "single": str(root / "single"),
             "tar": f"{root / 'members.tar'}:root"}
    results = []
    for inp in dict.fromkeys(c.input for c in cases):
        mine = [c for c in cases if c.input == inp]
        kind, _, name = inp.partition(":")
        error, keys, skipped = None, set(), {}
        try:
            if kind == "yaml":
                pipeline.load(root / name)
            else:
                path = extract(specs.get(inp, str(root / name)), backbone, cache, workers=1).path
                keys = set(store.load(path)[2].tolist())
                skipped = {s["key"]: s["reason"] for s in store.info(path)["skipped"]}
                if kind == "single":
                    train_head(path, "logreg")
        except FeatxError as exc:
            error = str(exc)
        for c in mine:
            shown = store.printable(c.key)
            if c.expect == "refused" or (error and not keys):
                outcome, reason = ("refused", error) if error else ("accepted", "")
            elif c.key in keys:
                outcome, reason = "embedded", ""
            elif shown in skipped:
                outcome, reason = "skipped", skipped[shown]
            else:
                outcome, reason = "missing", ""
            results.append({"case": store.printable(c.name), "input": inp, "expected": c.expect,
                            "outcome": outcome, "reason": reason,
                            "as_expected": outcome == c.expect and bool(re.search(c.reason, reason))})
    return results
