"""The storage package's modules import one another without a cycle.

Read from the source with ``ast``, so every import counts: at the top, inside functions and
under ``if TYPE_CHECKING:`` alike (a cycle hidden from the interpreter is still one for a
reader).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import igbutton_server.storage

PACKAGE = "igbutton_server.storage"
ROOT = Path(igbutton_server.storage.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def imported_names(tree: ast.Module, name: str, is_package: bool) -> Iterator[str]:
    """Every module name the tree imports, relative imports resolved (``from a import b``
    yields ``a`` and ``a.b``: b may be a module)."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def storage_graph() -> dict[str, set[str]]:
    """Module -> the storage modules it imports."""
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = imported_names(tree, name, path.name == "__init__.py")
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that returns to its start, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            found = visit(target)
            if found is not None:
                return found
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start)
        if found is not None:
            return found
    return None


def test_the_graph_sees_every_storage_module_and_its_imports() -> None:
    graph = storage_graph()
    assert f"{PACKAGE}.backends" in graph
    assert f"{PACKAGE}.postbacks" in graph[f"{PACKAGE}.sqlite.postbacks"]
    assert f"{PACKAGE}.nats.postbacks" in graph[f"{PACKAGE}.backends"]  # imported in a function


def test_storage_modules_import_each_other_without_a_cycle() -> None:
    cycle = find_cycle(storage_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_find_cycle_reports_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
