"""Shared fixtures: the real datasets beside the project, small images made on the spot,
and the real efficientnet_lite0 backbone loaded once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

DATASETS = Path(os.environ.get("FEATX_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.is_file():
        pytest.skip(f"{path} is not here (set FEATX_DATASETS to the folder holding the shared datasets)")
    return path


@pytest.fixture(scope="session", autouse=True)
def shared_graph_cache(tmp_path_factory):
    """One folder of converted and frozen graphs for the whole session (and the featx
    processes tests start), as on a user's machine: each network is converted once, not
    once per test's cache folder. Tests of that cache pass folders of their own."""
    folder = tmp_path_factory.mktemp("graphs")
    before = os.environ.get("FEATX_GRAPH_CACHE")
    os.environ["FEATX_GRAPH_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("FEATX_GRAPH_CACHE", None)
    else:
        os.environ["FEATX_GRAPH_CACHE"] = before


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    return dataset("hymenoptera.tar")


@pytest.fixture(scope="session")
def hymenoptera_val(hymenoptera, tmp_path_factory):
    """hymenoptera/val unpacked to a folder: 153 photos of ants and bees, as an
    ImageFolderSource (what repacked copies of it are compared with)."""
    import tarfile

    from featx.data.sources import ImageFolderSource

    root = tmp_path_factory.mktemp("hymenoptera")
    with tarfile.open(hymenoptera) as tar:
        tar.extractall(root, members=[m for m in tar if m.name.startswith("hymenoptera/val/")], filter="data")
    return ImageFolderSource(root / "hymenoptera" / "val")


@pytest.fixture(scope="session")
def lite0():
    from featx.backbones import load_backbone

    return load_backbone("efficientnet_lite0")


@pytest.fixture(scope="session")
def lite0_small():
    """The real network at 64 px: fast enough for tests that run it many times."""
    from featx.backbones import load_backbone

    return load_backbone("efficientnet_lite0", image_size=64)
