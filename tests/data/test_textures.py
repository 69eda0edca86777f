"""The generated textures dataset: layout, determinism, atomic and idempotent writing,
and that its classes live in the texture, not in the colour."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx.data import textures
from featx.data.textures import CLASSES, generate

SMALL = {"train_per_class": 3, "test_per_class": 2, "size": 32}


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_complete(root: Path, train: int, test: int, size: int) -> None:
    for split, count in (("train", train), ("test", test)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASSES)
        for name in CLASSES:
            files = sorted(p.name for p in (root / split / name).iterdir())
            assert files == [f"{name}_{i:03d}.png" for i in range(count)]
            with Image.open(root / split / name / files[-1]) as im:
                assert im.mode == "RGB" and im.size == (size, size)
    assert (root / ".featx-textures.json").is_file()


class Interrupt(BaseException):
    """Stands in for Ctrl-C (a BaseException, like KeyboardInterrupt) without stopping pytest."""


def fail_rendering(monkeypatch, after: int) -> None:
    calls = []

    def render(*args):
        calls.append(1)
        if len(calls) > after:
            raise Interrupt
        return real(*args)

    real = textures._render
    monkeypatch.setattr(textures, "_render", render)


def test_classes():
    assert len(CLASSES) == 10 and len(set(CLASSES)) == 10


def test_layout_and_images(tmp_path):
    root = generate(tmp_path / "data", train_per_class=4, test_per_class=2, size=48)
    assert root == tmp_path / "data"
    assert_complete(root, 4, 2, 48)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary folder left
    for path in root.rglob("*.png"):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (48, 48)
    train = {h for k, h in digests(root).items() if k.startswith("train/")}
    test = {h for k, h in digests(root).items() if k.startswith("test/")}
    assert len(train) == 40 and len(test) == 20 and not train & test  # all distinct


def test_same_arguments_give_identical_files(tmp_path):
    a = digests(generate(tmp_path / "a", **SMALL))
    b = digests(generate(tmp_path / "b", **SMALL))
    assert len(a) == 10 * 5 + 1 and a == b
    c = digests(generate(tmp_path / "c", **SMALL, seed=1))
    assert all(c[k] != a[k] for k in a if k.endswith(".png"))


def test_images_do_not_depend_on_how_many_are_made(tmp_path):
    few = digests(generate(tmp_path / "few", **SMALL))
    more = digests(generate(tmp_path / "more", **{**SMALL, "train_per_class": 5}))
    assert {k: more[k] for k in few if k.endswith(".png")} == {k: few[k] for k in few if k.endswith(".png")}


def test_second_call_does_not_rewrite(tmp_path, monkeypatch):
    root = generate(tmp_path / "data", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    fail_rendering(monkeypatch, after=0)
    assert generate(tmp_path / "data", **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_other_arguments_replace_the_dataset(tmp_path):
    root = generate(tmp_path / "data", **SMALL)
    generate(root, train_per_class=2, test_per_class=1, size=40, seed=3)
    assert_complete(root, 2, 1, 40)
    assert json.loads((root / ".featx-textures.json").read_text())["seed"] == 3
    with Image.open(root / "train" / "dots" / "dots_000.png") as im:
        assert im.size == (40, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    fail_rendering(monkeypatch, after=7)
    with pytest.raises(Interrupt):
        generate(tmp_path / "data", **SMALL)
    assert list(tmp_path.iterdir()) == []  # neither root nor the temporary folder
    monkeypatch.undo()
    assert_complete(generate(tmp_path / "data", **SMALL), 3, 2, 32)


def test_interrupted_replacement_keeps_the_old_dataset(tmp_path, monkeypatch):
    root = generate(tmp_path / "data", **SMALL)
    before = digests(root)
    fail_rendering(monkeypatch, after=7)
    with pytest.raises(Interrupt):
        generate(root, **SMALL, seed=5)
    assert digests(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_leftovers_of_a_killed_run_are_not_complete(tmp_path):
    # A run killed outright leaves its temporary sibling; a partial root lacks the marker.
    stale = tmp_path / ".data.0123abcd.tmp"
    (stale / "train" / "stripes").mkdir(parents=True)
    (stale / ".featx-textures.json").write_text("{}")
    root = tmp_path / "data"
    (root / "train" / "stripes").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(root / "train" / "stripes" / "stripes_000.png")
    generate(root, **SMALL)
    assert_complete(root, 3, 2, 32)
    with Image.open(root / "train" / "stripes" / "stripes_000.png") as im:
        assert np.asarray(im).std() > 0  # regenerated, not the black partial file


def test_refuses_to_replace_a_folder_it_did_not_make(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        generate(root, **SMALL)
    assert [p.name for p in root.iterdir()] == ["holiday.jpg"]


def fourier_features(gray: np.ndarray, rings: int = 8) -> np.ndarray:
    """Rotation-invariant texture features: the power spectrum's angular harmonics 0, 2, 4
    and 6 (one, two or three orientations), pooled over rings of spatial frequency."""
    gray = (gray - gray.mean()) / (gray.std() + 1e-8)
    power = np.abs(np.fft.fftshift(np.fft.fft2(gray))) ** 2
    k = np.arange(gray.shape[0]) - gray.shape[0] // 2
    ky, kx = np.meshgrid(k, k, indexing="ij")
    ring = np.minimum(np.hypot(kx, ky) / (gray.shape[0] / 2) * rings, rings).astype(int).ravel()
    theta = np.arctan2(ky, kx)
    feats = []
    for h in (0, 2, 4, 6):
        w = (power * np.exp(1j * h * theta)).ravel()
        pooled = np.bincount(ring, w.real, rings + 1) + 1j * np.bincount(ring, w.imag, rings + 1)
        feats.append(np.abs(pooled[:rings]))
    feats = np.array(feats)
    return np.log(feats / feats[0].sum() + 1e-6).ravel()


def test_texture_not_colour_tells_the_classes_apart(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = generate(tmp_path / "data", train_per_class=20, test_per_class=10, size=64)
    data = {}
    for split in ("train", "test"):
        paths = [(p, label) for label, name in enumerate(CLASSES)
                 for p in sorted((root / split / name).glob("*.png"))]
        images = np.array([np.asarray(Image.open(p), dtype=np.float64) / 255 for p, _ in paths])
        data[split] = images, np.array([label for _, label in paths])

    def accuracy(features) -> float:
        (train, y_train), (test, y_test) = data["train"], data["test"]
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(np.array([features(a) for a in train]), y_train)
        return model.score(np.array([features(a) for a in test]), y_test)

    colour = accuracy(lambda a: a.mean(axis=(0, 1)))
    texture = accuracy(lambda a: fourier_features(a @ np.array([0.299, 0.587, 0.114])))
    assert colour < 0.30, colour  # chance is 0.10
    assert texture > 0.50, texture
