"""WebDataset shards and a Parquet manifest of a real dataset (hymenoptera's val split,
repacked by the test) give the same features and labels as the folder."""
from __future__ import annotations

import io
import random
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import featx


@pytest.fixture(scope="module")
def val(hymenoptera_val, tmp_path_factory):
    root, folder = tmp_path_factory.mktemp("embedded"), hymenoptera_val
    result = featx.extract(folder, "pixels", root / "cache", workers=0, batch_size=16)
    return root, folder, featx.load(result.path)


def _by_key(features, key=lambda k: k):
    rows = zip(features.keys.tolist(), features.X, features.y)
    return {key(k): (x, features.classes[y]) for k, x, y in rows}


def test_webdataset_shards_embed_to_the_folders_features_and_labels(val, tmp_path):
    root, folder, reference = val
    items = list(folder.items)
    random.Random(1).shuffle(items)
    for s in range(3):  # three shards, samples shuffled across them
        with tarfile.open(tmp_path / f"val-{s:06d}.tar", "w") as tar:
            for it in items[s::3]:
                key = it.key.removesuffix(".jpg").replace(".", "_")
                label = folder.classes[it.label].encode()
                for name, data in ((f"{key}.jpg", folder.read(it)), (f"{key}.cls", label)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    result = featx.extract(str(tmp_path / "val-{000000..000002}.tar"), "pixels", tmp_path / "cache",
                           workers=0, batch_size=16)
    assert (result.rows, result.skipped) == (153, 0)
    got = _by_key(featx.load(result.path))
    want = _by_key(reference, key=lambda k: k.removesuffix(".jpg").replace(".", "_"))
    assert got.keys() == want.keys()
    for k, (x, label) in want.items():
        assert got[k][1] == label
        np.testing.assert_array_equal(got[k][0], x)


def test_a_parquet_manifest_embeds_to_the_folders_features_and_labels(val):
    root, folder, reference = val
    items = list(folder.items)[::-1]
    manifest = folder.root / "val.parquet"
    table = pa.table({"path": [it.key for it in items], "label": [folder.classes[it.label] for it in items]})
    pq.write_table(table, manifest, row_group_size=40)
    result = featx.extract(manifest, "pixels", root / "cache-parquet", workers=0, batch_size=16)
    got = featx.load(result.path)
    assert got.keys.tolist() == reference.keys.tolist() and got.classes == reference.classes
    np.testing.assert_array_equal(got.y, reference.y)
    np.testing.assert_array_equal(got.X, reference.X)
