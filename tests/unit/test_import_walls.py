"""The layering holds, read from the code's own imports (the AST, nothing is imported).

Walls count every import, wherever it is written: at module level, inside a function, or under
`if TYPE_CHECKING:` (a type-only import still couples the layers). Cycles count only the
imports that run when a module is first imported: module level, outside `if TYPE_CHECKING:`;
a function-level import runs later, once every module has loaded. Importing `a.b.c` also runs
the packages `a` and `a.b`; those implicit edges are left out (Python loads a parent package
before its children, so they cannot form a cycle of partly initialised modules).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "videoserve"

# (layer, layers it must never import); a layer is a subpackage of videoserve.
WALLS: list[tuple[str, tuple[str, ...]]] = [
    ("jobs", ("api", "worker", "webhooks")),
    ("api", ("worker",)),
    ("models", ("jobs", "api")),
    ("media", ("jobs", "api")),
    ("storage", ("jobs", "api")),
]
# The client may share only the exception hierarchy with the server.
CLIENT_MAY_IMPORT = ("videoserve.client", "videoserve.errors", "videoserve._version")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a name imported from a module resolves to the module)
    line: int
    eager: bool  # runs when `source` is first imported (module level, not TYPE_CHECKING)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(source: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = source if MODULES[source].name == "__init__.py" else source.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(source: str) -> list[Import]:
    tree = ast.parse(MODULES[source].read_text(), filename=str(MODULES[source]))
    found: list[Import] = []

    def visit(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(source, alias.name, child.lineno, eager))
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(source, child)
                for alias in child.names:
                    submodule = f"{base}.{alias.name}"
                    target = submodule if submodule in MODULES else base
                    found.append(Import(source, target, child.lineno, eager))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.body:
                    visit(ast.Module(body=[statement], type_ignores=[]), False)
                for statement in child.orelse:
                    visit(ast.Module(body=[statement], type_ignores=[]), eager)
            else:
                visit(child, eager)

    visit(tree, True)
    return [i for i in found if i.target == PACKAGE or i.target.startswith(PACKAGE + ".")]


ALL_IMPORTS = [i for source in MODULES for i in imports_of(source)]


def _in(module: str, layer: str) -> bool:
    prefix = f"{PACKAGE}.{layer}"
    return module == prefix or module.startswith(prefix + ".")


def _where(found: Import) -> str:
    return f"{found.source} (line {found.line}) imports {found.target}"


def test_the_walk_sees_the_code() -> None:
    # Guards the test itself: a resolver that found nothing would pass every wall.
    assert {"videoserve.jobs.store", "videoserve.api.app", "videoserve.client"} <= set(MODULES)
    assert any(_in(i.source, "api") and _in(i.target, "jobs") for i in ALL_IMPORTS)
    assert any(not i.eager for i in ALL_IMPORTS)


@pytest.mark.parametrize(("layer", "forbidden"), WALLS, ids=[layer for layer, _ in WALLS])
def test_layer_walls(layer: str, forbidden: tuple[str, ...]) -> None:
    breaches = [
        _where(i)
        for i in ALL_IMPORTS
        if _in(i.source, layer) and any(_in(i.target, wall) for wall in forbidden)
    ]
    assert breaches == []


def test_client_imports_nothing_of_the_server() -> None:
    breaches = [
        _where(i)
        for i in ALL_IMPORTS
        if _in(i.source, "client")
        and not any(i.target == m or i.target.startswith(m + ".") for m in CLIENT_MAY_IMPORT)
    ]
    assert breaches == []


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for i in ALL_IMPORTS:
        if i.eager and i.target in MODULES and i.target != i.source:
            graph[i.source].add(i.target)
    cycles = [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]
    assert cycles == []


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively (the graph has a few hundred nodes)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components
