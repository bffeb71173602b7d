"""The import graph keeps its layers: no cycles, and no edge from a lower layer to a higher one.

Layers, lowest first::

    stores                         the Store strategies; nothing of Docker, nothing above
    mini_ipam                      the driver: protocol, allocator, app, operations ...
    mini_ipam.commands             the command line (and ``python -m mini_ipam``)
    bench, tests                   on top, side by side: neither imports the other

Inside ``stores``, the backends import ``stores.base`` (and each other), never the
``stores`` package itself, which is the door above them. Every import counts,
including those inside functions: a lazy import cannot hide an upward edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP = ("stores", "mini_ipam", "tests")


def _modules() -> dict[str, Path]:
    """Every module of the project by dotted name; bench's scripts and support package live under ``bench.``."""
    found: dict[str, Path] = {}
    for top in (*TOP, "bench"):
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str, importer: str) -> str | None:
    """The project module ``name`` means when ``importer`` imports it, or None for a module from elsewhere."""
    if importer.startswith("bench.") and name.split(".")[0] == "support":
        name = f"bench.{name}"  # bench's scripts run with bench/ first on sys.path
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> Iterator[str]:
    """The project modules ``module`` imports, anywhere in its body."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # ``from package import submodule`` imports the submodule; ``from module import name`` the module.
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, module)
            if target is not None and target != module:
                yield target


GRAPH = {module: sorted(set(_imports(module))) for module in MODULES}


def layer(module: str) -> tuple[int, str]:
    """The module's layer: its height, and for the top layer which side (bench or tests)."""
    if module == "stores" or module.startswith("stores."):
        return 0, ""
    if module in ("mini_ipam.commands", "mini_ipam.__main__") or module.startswith("mini_ipam.commands."):
        return 2, ""
    if module == "mini_ipam" or module.startswith("mini_ipam."):
        return 1, ""
    return 3, module.split(".")[0]


def test_the_graph_was_read() -> None:
    assert {"stores.base", "mini_ipam.allocator", "mini_ipam.commands.flags", "bench.support.stats"} <= set(GRAPH)
    assert "stores.base" in GRAPH["mini_ipam.allocator"] or "stores" in GRAPH["mini_ipam.allocator"]


def test_no_edge_goes_up_a_layer() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if layer(target)[0] > layer(module)[0]
    ]
    assert upward == []


def test_bench_and_tests_do_not_import_each_other() -> None:
    across = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if layer(module)[0] == layer(target)[0] == 3 and layer(module)[1] != layer(target)[1]
    ]
    assert across == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("stores.")))
def test_store_backends_build_on_the_ground_floor_only(module: str) -> None:
    assert "stores" not in GRAPH[module], f"{module} imports the stores package, the door above it"


def test_there_is_no_import_cycle() -> None:
    cycles = [component for component in _strongly_connected(GRAPH) if len(component) > 1]
    assert cycles == []


def _strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (the graph is a few hundred modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(graph.get(child, []))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components
