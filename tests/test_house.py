"""The shape of the code base: backend packages with the same roles, no import cycles, one row schema
shared with the front end, one recipe vocabulary."""
import ast
import re
from pathlib import Path

import pytest

from nbopt.recipes import RECIPES
from nbopt.schema import COLUMN_NAMES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nbopt"
ROLES = ("backend", "recipes", "runner", "convert", "reports")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """nbopt modules that ``path`` imports: ``from . import x`` counts as x, not as the package."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names} & modules
            found |= subs or ({target} & modules)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names} & modules
    return found - {name}


def import_cycles() -> list[list[str]]:
    """Strongly connected components of more than one module in nbopt's import graph (Tarjan)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _imports(p, set(files)) for m, p in files.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert import_cycles() == []


def test_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: two modules that import each other are reported."""
    pkg = tmp_path / "nbopt"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("from .a import y\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    assert import_cycles() == [["nbopt.a", "nbopt.b"]]


@pytest.mark.parametrize("name", ["torch", "onnx", "tflite", "coreml", "gguf", "genai"])
def test_backend_is_a_package_with_the_same_roles(name):
    folder = PACKAGE / "backends" / name
    missing = [r for r in ROLES if not (folder / f"{r}.py").exists()]
    assert folder.is_dir() and not missing, f"{name} lacks {missing}"


def test_no_framework_imported_at_module_level_outside_backends():
    """Nothing outside a backend imports its framework (and then only lazily)."""
    heavy = ("torch", "tensorflow", "onnx", "onnxruntime", "executorch", "coremltools", "keras")
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not any(n.split(".")[0] in heavy for n in names), (path.name, names)


def test_typescript_row_lists_the_schema_columns():
    source = (ROOT / "js" / "src" / "logic.ts").read_text()
    body = re.search(r"export interface Row \{(.*?)\n\}", source, re.S).group(1)
    fields = re.findall(r"^\s+(\w+)\??:", body, re.M)
    assert sorted(fields) == sorted([*COLUMN_NAMES, "id"])


def test_shared_parameters_have_one_name_on_every_backend():
    """A backend's own parameter never shadows a shared one, and what a backend honours is a subset of
    the shared choices."""
    from nbopt.backends import get_backend, installed_backends

    for name in installed_backends():
        backend = get_backend(name)
        for recipe, spec in backend.handlers.items():
            shared = RECIPES[recipe].params
            assert not set(spec.own) & set(shared), (name, recipe)
            for key, values in spec.honours.items():
                assert set(values) <= set(shared[key].choices), (name, recipe, key)
