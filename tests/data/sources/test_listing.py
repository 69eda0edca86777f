"""A source's items as compact arrays: what a listing of many images costs, and that
it behaves as the list of Items it replaces."""
from __future__ import annotations

import pickle

import numpy as np

from featx.data.sources import ImageFolderSource, Item
from featx.data.sources.listing import Listing


def test_a_folder_listing_holds_arrays_of_a_few_dozen_bytes_per_image(tmp_path):
    for c in range(4):
        (tmp_path / f"class{c}").mkdir()
        for i in range(2500):
            (tmp_path / f"class{c}" / f"img_{i:06d}.png").write_bytes(b"x")
    src = ImageFolderSource(tmp_path)
    assert isinstance(src.items, Listing) and len(src.items) == 10_000
    assert src.items.keys.dtype.kind == "S" and src.items.labels.dtype == np.int32
    assert src.items.nbytes() / len(src.items) < 60  # 'class0/img_000000.png', its stamp and label
    assert src.items[2500] == Item("class1/img_000000.png", 1, src.items[2500].stamp)
    assert [it.key for it in src.items][:2] == ["class0/img_000000.png", "class0/img_000001.png"]


def test_a_listing_behaves_as_the_list_of_items_it_holds():
    items = [Item("b/2.jpg", 1, "9:9"), Item("a/1.jpg", 0, "1:2"), Item("caf\u00e9/\udcff.jpg", -1, "3:4")]
    listing = Listing.of(items)
    assert list(listing) == items and listing == items and len(listing) == 3
    assert listing[1] == items[1] and list(listing[1:]) == items[1:]
    assert [it.key for it in listing.sorted()] == ["a/1.jpg", "b/2.jpg", "caf\u00e9/\udcff.jpg"]
    assert list(listing.take(np.array([2, 0]))) == [items[2], items[0]]
    assert pickle.loads(pickle.dumps(listing)) == listing
