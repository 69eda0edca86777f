"""The package's shape, read from its source with ``ast``: each layer imports only from
the layers below it, no module imports itself round a cycle, and modules, functions and
signatures stay small enough to read (docs/architecture.md draws the layers)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "featx"
# bottom to top; a module may import its own layer and the layers before it
LAYERS = ("core", "data", "backbones", "store", "extraction", "heads", "training", "bench", "api", "cli",
          "featx")
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_POSITIONAL = 400, 60, 6


def _module_name(path: Path) -> str:
    parts = ["featx", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "featx"


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> set[str]:
    """The featx modules ``module`` imports, at its top or inside functions."""
    path = MODULES[module]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path, node)
            for a in node.names:  # "from pkg import mod" names a module; "from mod import name" the module
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_belongs_to_a_layer():
    assert {layer(m) for m in MODULES} == set(LAYERS)
    assert [m for m in MODULES if m.count(".") == 1 and layer(m) == "featx"] == ["featx.__main__"]


def test_each_layer_imports_only_from_the_layers_below_it():
    upward = [f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets
              if LAYERS.index(layer(t)) > LAYERS.index(layer(m))]
    assert upward == []


def test_no_module_imports_itself_round_a_cycle():
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(GRAPH[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_checks_above_would_see_an_upward_import_and_a_cycle():
    assert "featx.core.errors" in GRAPH["featx.store.cache"]  # a relative import, resolved
    assert layer("featx.training.loop") == "training" and layer("featx.cli.parser") == "cli"
    assert LAYERS.index(layer("featx.heads.bundle")) > LAYERS.index(layer("featx.store.hdf5"))


def _code_lines(node: ast.FunctionDef) -> int:
    """A function's lines, its docstring not counted (documenting every parameter is not length)."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value,
                                                                                            str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_functions_and_signatures_stay_small(module):
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert _code_lines(node) <= MAX_FUNCTION_LINES, f"{node.name} is too long"
            positional = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self",
                                                                                                 "cls")]
            assert len(positional) <= MAX_POSITIONAL, f"{node.name}: make the later parameters keyword-only"
