"""The layering holds, read from the code's own imports (the AST, nothing is imported).

Walls and cycles count every import, wherever it is written: at module level, inside a
function, or under `if TYPE_CHECKING:`. A type-only import still couples the layers, and a
function-level import that closes a cycle only hides it: the two modules still cannot be
read, tested or moved one without the other. Importing `a.b.c` also runs the packages `a`
and `a.b`; those implicit edges are left out (Python loads a parent package before its
children, so they cannot form a cycle of partly initialised modules).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "videoserve"

# (layer, layers it must never import); a layer is a subpackage of videoserve. Downwards:
# services/ (may import jobs/ and db/) > jobs/ (may import db/) > db/ (see DB_MAY_IMPORT).
WALLS: list[tuple[str, tuple[str, ...]]] = [
    ("services", ("api", "worker", "webhooks")),
    ("jobs", ("services", "api", "worker", "webhooks")),
    ("api", ("worker",)),
    ("models", ("db", "jobs", "services", "api")),
    ("media", ("db", "jobs", "services", "api")),
    ("storage", ("db", "jobs", "services", "api")),
    ("webhooks", ("services", "api", "worker")),
    ("observability", ("api", "worker")),
]
# The database layer knows the drivers and nothing above them: only leaf modules besides its own.
DB_MAY_IMPORT = ("videoserve.db", "videoserve.errors", "videoserve.clock", "videoserve.settings")
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
    return _walk(source, ast.parse(MODULES[source].read_text(), filename=str(MODULES[source])))


def _walk(source: str, tree: ast.AST) -> list[Import]:
    """Every import of a videoserve module in `tree` (the code of module `source`)."""
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
    assert {
        "videoserve.db.database",
        "videoserve.jobs.store",
        "videoserve.services.jobs",
        "videoserve.api.app",
        "videoserve.client",
    } <= set(MODULES)
    assert any(_in(i.source, "api") and _in(i.target, "services") for i in ALL_IMPORTS)
    assert any(_in(i.source, "services") and _in(i.target, "jobs") for i in ALL_IMPORTS)
    assert any(_in(i.source, "jobs") and _in(i.target, "db") for i in ALL_IMPORTS)
    assert any(not i.eager for i in ALL_IMPORTS)


@pytest.mark.parametrize(("layer", "forbidden"), WALLS, ids=[layer for layer, _ in WALLS])
def test_layer_walls(layer: str, forbidden: tuple[str, ...]) -> None:
    breaches = [
        _where(i)
        for i in ALL_IMPORTS
        if _in(i.source, layer) and any(_in(i.target, wall) for wall in forbidden)
    ]
    assert breaches == []


def _outside(found: Import, layer: str, allowed: tuple[str, ...]) -> bool:
    return _in(found.source, layer) and not any(
        found.target == m or found.target.startswith(m + ".") for m in allowed
    )


def test_the_database_layer_imports_only_leaf_modules() -> None:
    assert any(_in(i.source, "db") for i in ALL_IMPORTS)  # the walk sees db/ at all
    assert [_where(i) for i in ALL_IMPORTS if _outside(i, "db", DB_MAY_IMPORT)] == []


def test_client_imports_nothing_of_the_server() -> None:
    assert [_where(i) for i in ALL_IMPORTS if _outside(i, "client", CLIENT_MAY_IMPORT)] == []


def test_importing_the_api_loads_no_worker_module() -> None:
    # The walls above read the code; this runs it: `api.app` builds the runtime, and a
    # runtime that starts no embedded worker must not have loaded one (an API-only install).
    code = (
        "import sys, videoserve.api.app\n"
        "print(sorted(m for m in sys.modules if m.startswith('videoserve.worker')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    assert loaded == "[]"


def import_graph(imports: list[Import]) -> dict[str, set[str]]:
    """Module -> the modules it imports anywhere (lazy and type-only imports included)."""
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for i in imports:
        if i.target in MODULES and i.target != i.source:
            graph[i.source].add(i.target)
    return graph


def cycles_of(graph: dict[str, set[str]]) -> list[list[str]]:
    return [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]


def test_no_import_cycles() -> None:
    cycles = cycles_of(import_graph(ALL_IMPORTS))
    where = [
        _where(i)
        for cycle in cycles
        for i in ALL_IMPORTS
        if i.source in cycle and i.target in cycle and i.source != i.target
    ]
    assert cycles == [], where


def test_a_lazy_or_type_only_import_closes_a_cycle() -> None:
    # Guards the test itself: an import inside a function or under TYPE_CHECKING counts.
    a, b = "videoserve.jobs.store", "videoserve.jobs.states"
    for eager in (False, True):
        extra = Import(source=b, target=a, line=1, eager=eager)
        assert any({a, b} <= set(c) for c in cycles_of(import_graph([*ALL_IMPORTS, extra])))


def test_the_walk_reads_imports_inside_functions_and_type_checking() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from videoserve.jobs import store\n"
        "def f():\n    import videoserve.api.app\n"
        "class C:\n    def g(self):\n        from videoserve.worker import runner\n"
    )
    found = {(i.target, i.eager) for i in _walk("videoserve.models.grid", tree)}
    assert found == {
        ("videoserve.jobs.store", False),
        ("videoserve.api.app", False),
        ("videoserve.worker.runner", False),
    }


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


DRIVERS = ("asyncpg", "aiosqlite", "sqlite3", "psycopg", "psycopg2")


def _driver_imports(source: str) -> list[str]:
    tree = ast.parse(MODULES[source].read_text(), filename=str(MODULES[source]))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.append(node.module)
    return [n for n in names if n.split(".")[0] in DRIVERS]


def test_only_the_database_layer_imports_a_driver() -> None:
    outside = {
        source: found
        for source in MODULES
        if not _in(source, "db") and (found := _driver_imports(source))
    }
    assert outside == {}, outside
    assert _driver_imports("videoserve.db.failures"), "the walk must see db/'s own imports"
