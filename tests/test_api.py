"""``import featx``: a small public API, imported lazily, documented parameter by
parameter, taking what the command line takes; errors that name the parameter; messages
through the featx logger, nothing printed by the library."""
from __future__ import annotations

import inspect
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featx
from featx.cli import main
from featx.core.errors import FeatxError, ParameterError
from support.imagegen import make_folder

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return out.stdout.strip()


def test_importing_featx_imports_none_of_the_heavy_libraries():
    heavy = _python("import sys, featx\nheavy = ('torch', 'numpy', 'sklearn', 'h5py', 'timm')\n"
                    "print(sorted(m for m in heavy if m in sys.modules))")
    assert heavy == "[]"


@pytest.mark.parametrize("argv",
                         [["--help"], ["--version"], ["extract", "--help"], ["extract", "--precision", "x"]])
def test_the_command_line_answers_help_version_and_argument_errors_without_torch(argv):
    code = ("import sys\nfrom featx.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)" % argv)
    assert _python(code).splitlines()[-1] == "False"


def test_every_public_name_resolves_and_documents_every_parameter():
    assert set(featx.__all__) <= set(dir(featx))
    for name in featx.__all__:
        obj = getattr(featx, name)
        if name == "__version__":
            assert re.fullmatch(r"\d+\.\d+\.\d+", obj)
            continue
        doc = inspect.getdoc(obj)
        params = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters
        for p in params:
            if p == "self":
                continue
            spelt = f"**{p}" if params[p].kind is inspect.Parameter.VAR_KEYWORD else p
            documented = re.search(rf"^{re.escape(spelt)}( :|$)", doc, re.M)
            assert documented, f"featx.{name}: {spelt} is not documented"


def test_a_wrong_value_is_named_by_its_parameter_in_python_and_by_its_flag_on_the_command_line(tmp_path,
                                                                                               capsys):
    with pytest.raises(ParameterError, match=r"^device='tpu': choose auto, cpu or cuda$"):
        featx.extract("sample", "pixels", tmp_path, device="tpu")
    with pytest.raises(ValueError):  # a ParameterError is a ValueError too
        featx.extract("sample", "pixels", tmp_path, on_error="ignore")
    assert main(["extract", "--data", "sample", "--backbone", "efficientnet_lite0", "--image-size", "4",
                 "--cache", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == "featx: error: --image-size 4: too small (at least 8 pixels)"


def test_a_misspelt_backbone_or_head_gets_a_suggestion():
    with pytest.raises(FeatxError,
                       match=r"unknown backbone 'efficientnet_lite'.*did you mean 'efficientnet_lite0'"):
        featx.extract("sample", "efficientnet_lite")
    with pytest.raises(FeatxError, match=r"did you mean 'timm:resnet50' or 'torchvision:resnet50'\?"):
        featx.extract("sample", "resnet50")
    with pytest.raises(FeatxError, match=r"unknown head 'logregg': did you mean 'logreg'\?"):
        featx.make_head("logregg")


def test_the_public_functions_take_what_the_command_line_takes(tmp_path, capsys, caplog):
    data = make_folder(tmp_path / "data", {"a": 6, "b": 6})
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="featx"):
        result = featx.extract(str(data), "pixels", cache, workers=0)
    assert capsys.readouterr() == ("", "")  # the library prints nothing, draws no bar ...
    assert any(getattr(r, "extract_result", None) == result for r in caplog.records)  # ... it logs
    name = result.path.name[:16]  # a store by its name in the cache, as featx train takes it
    features = featx.load(name, cache_dir=cache)
    assert features.classes == ["a", "b"] and all(type(c) is str for c in features.classes)
    assert features.provenance["backbone"]["name"] == "pixels" and features.X.shape == (12, 3072)
    bundle = featx.train(name, "nearest_centroid", out=tmp_path / "m.skops", cache_dir=cache)
    assert (tmp_path / "m.skops").is_file() and bundle.classes == ["a", "b"]
    got = featx.predict(tmp_path / "m.skops", str(data), out=tmp_path / "p.csv", cache_dir=cache, workers=0)
    assert got.accuracy == 1.0 and (tmp_path / "p.csv").read_text().startswith("path,label,probability")
    (tmp_path / "p.yaml").write_text(f"name: api\ndata: {{train: {data}, test_fraction: 0.5}}\n"
                                     "backbones: [pixels]\nheads: [nearest_centroid]\n"
                                     "report: {efficiency: {shots: [1], draws: 1}}\n")
    report = featx.run_pipeline(str(tmp_path / "p.yaml"), out=tmp_path / "out", cache_dir=cache)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["results"] == report["results"]


def test_features_unpack_and_index_as_the_tuple_earlier_versions_returned(tmp_path):
    result = featx.extract("sample", "pixels", tmp_path, workers=0)
    f = featx.load(result.path)
    X, y, keys, classes = f
    assert X is f.X and f[1] is y and f[2] is keys and classes == ["china", "flower"]
    assert np.array_equal(np.bincount(y), [16, 16])
