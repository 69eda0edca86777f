"""What featx's own code may call when it reads files or runs commands: checked in its
source, so that a new call that could run code from a file fails here."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "featx"


def _calls():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                yield f"{path.relative_to(PACKAGE).as_posix()}:{node.lineno}", ast.unparse(node.func), node


def test_every_torch_load_reads_weights_only():
    loads = [(where, node) for where, name, node in _calls() if name == "torch.load"]
    assert loads, "featx reads checkpoints with torch.load"
    for where, node in loads:
        flags = {k.arg: ast.unparse(k.value) for k in node.keywords}
        assert flags.get("weights_only") == "True", where


def test_no_unsafe_yaml_pickle_or_shell():
    forbidden = {"yaml.load", "yaml.unsafe_load", "yaml.full_load", "pickle.load", "pickle.loads",
                 "os.system", "os.popen", "subprocess.run", "subprocess.Popen", "subprocess.call",
                 "subprocess.check_call", "subprocess.check_output", "eval", "exec"}
    assert [(where, name) for where, name, _ in _calls() if name in forbidden] == []
    safe = [where for where, name, _ in _calls() if name == "yaml.safe_load"]
    assert safe, "pipelines are read with yaml.safe_load"


def test_joblib_loads_only_bytes_whose_digest_was_checked():
    loads = [(where, node) for where, name, node in _calls() if name == "joblib.load"]
    assert [w.split(":")[0] for w, _ in loads] == ["heads/bundle.py"]
    assert all(ast.unparse(node.args[0]) == "io.BytesIO(data)" for _, node in loads)
