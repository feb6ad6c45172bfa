"""The package's modules import each other without circles.

Every module of ``gcnshrink`` is parsed with ``ast`` (nothing is imported), including imports
inside functions: a lazy import still makes two modules depend on each other, it only hides the
circle from Python until the wrong module is imported first.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "gcnshrink"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# Circles known and owned elsewhere, each with what resolves it. The test fails on any other
# circle, and on a listed one that is gone (so the list only shrinks).


def module_names() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source.

    ``import a.b`` and ``from a.b import c`` depend on ``a.b``; ``from a import b`` where ``a.b``
    is a module depends on ``a.b`` only: it loads that submodule, not names ``a`` re-exports.
    """
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def describe(cycle: list[str], graph: dict[str, set[str]]) -> str:
    """One circle through the component, as "a -> b -> a", for the failure message."""
    members = set(cycle)
    path, seen = [cycle[0]], {cycle[0]}
    while True:
        nxt = sorted(graph[path[-1]] & members)
        back = [m for m in nxt if m == cycle[0]]
        if back and len(path) > 1:
            return " -> ".join([*path, cycle[0]])
        fresh = [m for m in nxt if m not in seen]
        if not fresh:
            return " <-> ".join(cycle)
        path.append(fresh[0])
        seen.add(fresh[0])


def test_the_graph_sees_lazy_and_package_imports():
    graph = import_graph()
    assert "gcnshrink.gate.budgets" in graph["gcnshrink.gate"]  # a package's re-exports
    assert "gcnshrink.measure" in graph["gcnshrink.gate"]  # an import inside run_gate
    assert "gcnshrink.prune" in graph["gcnshrink.sweep"]


def test_find_cycles_reports_each_circle_once():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert describe(["a", "b", "c"], graph) == "a -> b -> c -> a"


def test_no_import_cycles():
    graph = import_graph()
    cycles = [describe(c, graph) for c in find_cycles(graph)]
    assert not cycles, "import circles: " + "; ".join(cycles)
