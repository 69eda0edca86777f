"""The README stays short, its Python tour runs as written, and CI runs the test command
it gives."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_is_a_five_minute_read_whose_links_lead_somewhere():
    assert len(README.splitlines()) <= 150
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        assert target.startswith("http") or (ROOT / target).exists(), target


def test_ci_runs_the_quick_starts_test_command():
    setup_and_test = re.findall(r"^python3\.11 .*$", _section("Quick start"), re.M)
    assert len(setup_and_test) == 2  # the demo, and the tests
    ci = (ROOT / ".ci" / "run").read_text()
    for step in setup_and_test[1].split(" && "):
        assert step in ci, step


def test_the_python_tour_runs_as_written(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", _section("From Python"), re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)  # the tour writes cache/ and models/ where it runs
    namespace, printed = {}, io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)
    lines = printed.getvalue().splitlines()
    assert lines[0] == "(32, 1280) ['china', 'flower']"  # what the tour's comment says it prints
    assert list(namespace["clf"].predict(namespace["photos"])) == ["temple", "flower"]
    assert (tmp_path / "models" / "sample.joblib").is_file()
