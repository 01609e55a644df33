"""No import cycle inside ``lightning_ep``: the graph of runtime imports between its modules, top-level and
function-level (lazy) imports alike, ``if TYPE_CHECKING:`` blocks excluded, is acyclic."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "lightning_ep"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, from its ``__init__.py``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module anywhere (functions and classes included) except in the body of an
    ``if TYPE_CHECKING:`` (its ``else:`` branch runs, so it counts)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at runtime. ``from a import b`` is an edge to ``a.b`` when that is
    a module, else to ``a`` (a name defined in ``a``, its ``__init__`` for a package). The implicit import of the
    parent packages is left out (``a.b`` always runs ``a/__init__``; a cycle through that alone is not one the
    code closes)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None (depth-first search)."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                return [*path[path.index(nxt):], nxt]
            if nxt not in done and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_lightning_ep_has_no_import_cycle():
    graph = import_graph(module_names())
    assert "lightning_ep.network" in graph and "lightning_ep.dynamics" in graph["lightning_ep.ep"]  # it parsed
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return module_names(root, "pkg")


@pytest.mark.parametrize("lazy", [False, True])
def test_the_check_finds_a_cycle_top_level_or_lazy(tmp_path, lazy):
    b = "def f():\n    from pkg.a import x\n" if lazy else "from pkg.a import x\n"
    modules = _write(tmp_path / "pkg", {"__init__.py": "", "a.py": "from pkg.b import f\nx = 1\n", "b.py": b})
    assert find_cycle(import_graph(modules)) == ["pkg.a", "pkg.b", "pkg.a"]


def test_the_check_skips_type_checking_blocks_and_follows_relative_imports(tmp_path):
    files = {
        "__init__.py": "from .a import x\n",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import f\nx = 1\n",
        "b.py": "from . import a\nimport pkg.sub.c\n",
        "sub/__init__.py": "",
        "sub/c.py": "from .. import b\n",
    }
    graph = import_graph(_write(tmp_path / "pkg", files))
    assert graph["pkg"] == {"pkg.a"} and graph["pkg.a"] == set() and graph["pkg.b"] == {"pkg.a", "pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.b"}
    assert find_cycle(graph) == ["pkg.b", "pkg.sub.c", "pkg.b"]
