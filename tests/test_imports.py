"""No import cycles in cim/ and route/.

Every import counts, wherever it is: at the top, under ``if TYPE_CHECKING:`` (the
guard only hides a cycle until a name is needed at run time), or inside a function
(it runs later, but the modules still depend on each other). Importing
``a.b.c`` first runs ``a/__init__.py`` and ``a/b/__init__.py``, so the importer
depends on those packages too; a package's own modules do not (they run while it
is being imported), which is why a package importing its submodules is no cycle.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A Cython module's Python-level imports (``cimport`` is compile-time, and the rest
# of the file is not Python): one statement, parenthesized names included.
PYX_IMPORT = re.compile(r"^[ \t]*(from[ \t]+[\w.]+[ \t]+import[ \t]+(?:\([^)]*\)|[^\n]*)|import[ \t]+[^\n]*)", re.MULTILINE)


@dataclass(frozen=True)
class Import:
    """Why ``importer`` depends on ``target``: the statement, and whether it reaches
    ``target`` only as a parent package of the module it names."""

    importer: str
    target: str
    path: Path
    line: int
    statement: str
    via_parent: bool

    def __str__(self) -> str:
        parent = f" (which first runs {self.target})" if self.via_parent else ""
        return f"{self.path}:{self.line}: {self.statement}{parent}"


Graph = dict[str, dict[str, Import]]  # importer -> target -> the first statement for that edge


def find_modules(root: Path, packages: list[str]) -> dict[str, Path]:
    """Every module of ``packages`` (Python and Cython sources), by dotted name."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*")):
            if path.suffix in (".py", ".pyx"):
                parts = path.relative_to(root).with_suffix("").parts
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _statements(path: Path) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in a module, at any depth."""
    source = path.read_text()
    if path.suffix == ".pyx":
        found = []
        for match in PYX_IMPORT.finditer(source):
            statement = ast.parse(match.group(1)).body[0]
            assert isinstance(statement, ast.Import | ast.ImportFrom)
            ast.increment_lineno(statement, source.count("\n", 0, match.start(1)))
            found.append(statement)
        return found
    return [node for node in ast.walk(ast.parse(source, str(path))) if isinstance(node, ast.Import | ast.ImportFrom)]


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The modules a statement names: ``from x import y`` names ``x.y`` when that is a module, else ``x``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = importer if is_package else importer.rpartition(".")[0]
        anchor = package.rsplit(".", node.level - 1)[0]  # one dot: this package; each more: one up
        base = f"{anchor}.{base}" if base else anchor
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]


def import_graph(root: Path, packages: list[str]) -> Graph:
    """Who imports whom among the modules of ``packages``; other imports are left out."""
    modules = find_modules(root, packages)
    graph: Graph = {name: {} for name in modules}
    for importer, path in modules.items():
        is_package = path.stem == "__init__"
        for node in _statements(path):
            for target in _targets(node, importer, is_package, modules):
                parts = target.split(".")
                for depth in range(1, len(parts) + 1):
                    needed = ".".join(parts[:depth])
                    via_parent = depth < len(parts)
                    # The importer's own packages are already running when it runs.
                    if needed not in modules or needed == importer or (via_parent and importer.startswith(needed + ".")):
                        continue
                    graph[importer].setdefault(
                        needed, Import(importer, needed, path.relative_to(root), node.lineno, ast.unparse(node), via_parent)
                    )
    return graph


def _components(graph: Graph) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _cycles_through(graph: Graph, start: str, allowed: set[str]) -> list[list[Import]]:
    """The elementary cycles from ``start`` back to it through ``allowed`` modules only."""
    cycles = []
    path: list[Import] = []

    def walk(node: str) -> None:
        for target, edge in sorted(graph[node].items()):
            if target == start:
                cycles.append([*path, edge])
            elif target in allowed and all(step.importer != target for step in path):
                path.append(edge)
                walk(target)
                path.pop()

    walk(start)
    return cycles


def find_cycles(graph: Graph) -> list[list[Import]]:
    """Every elementary cycle, each once: it starts at its alphabetically first module."""
    cycles = [
        cycle
        for component in _components(graph)
        for start in sorted(component)
        for cycle in _cycles_through(graph, start, {node for node in component if node > start})
    ]
    return sorted(cycles, key=lambda cycle: [edge.importer for edge in cycle])


def describe(cycle: list[Import]) -> str:
    modules = " -> ".join([edge.importer for edge in cycle] + [cycle[0].importer])
    return "\n    ".join([modules, *map(str, cycle)])


def test_cim_and_route_have_no_import_cycles() -> None:
    cycles = find_cycles(import_graph(ROOT, ["cim", "route"]))
    if cycles:
        pytest.fail(f"{len(cycles)} import cycles:\n" + "\n".join(map(describe, cycles)), pytrace=False)


# -- the graph and cycle finder on small packages written for the purpose -----------


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def edges(graph: Graph) -> set[tuple[str, str]]:
    return {(importer, target) for importer, targets in graph.items() for target in targets}


def test_imports_resolve_to_modules_and_their_packages(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "a/__init__.py": "import os\nfrom . import b\n",  # a package importing its own module
        "a/b.py": "from .c import NAME\nfrom typing import TYPE_CHECKING\n",
        "a/c.py": "import a.d.e\nNAME = 1\n",
        "a/d/__init__.py": "",
        "a/d/e.py": "from .. import c\nfrom ..b import *\n",
        "a/f.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from a.d import e\n"
            "def later() -> None:\n    from a.b import NAME\n"
        ),
        "a/g.pyx": "from cpython.bytes cimport PyBytes_AS_STRING\nfrom a.c import (\n    NAME,\n)\ncdef int x = NAME\n",
        "z/__init__.py": "from a.d.e import NAME\n",
    })
    graph = import_graph(tmp_path, ["a", "z"])
    assert edges(graph) == {
        ("a", "a.b"),
        ("a.b", "a.c"),
        ("a.c", "a.d"), ("a.c", "a.d.e"),  # not "a": a.c runs inside it
        ("a.d.e", "a.c"), ("a.d.e", "a.b"),
        ("a.f", "a.d"), ("a.f", "a.d.e"), ("a.f", "a.b"),
        ("a.g", "a.c"),
        ("z", "a"), ("z", "a.d"), ("z", "a.d.e"),  # from outside, a and a.d run first
    }
    assert str(graph["a.g"]["a.c"]) == f"{Path('a/g.pyx')}:2: from a.c import NAME"
    assert str(graph["z"]["a"]) == f"{Path('z/__init__.py')}:1: from a.d.e import NAME (which first runs a)"


def test_every_cycle_is_found_once(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "s/__init__.py": "from s import leaf\n",  # no cycle: s's own module
        "s/leaf.py": "",
        "s/config.py": "from s.backends.base import Base\n",
        "s/backends/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from s.config import Config\n",
        "s/backends/base.py": "",
        "s/node.py": "def serve() -> None:\n    from s.tcp import Protocol\n",
        "s/tcp.py": "from s.node import Node\n",
        "s/x.py": "import s.y\nimport s.z\n",
        "s/y.py": "from s import x\n",
        "s/z.py": "from s.x import X\n",
    })
    cycles = find_cycles(import_graph(tmp_path, ["s"]))
    assert [[edge.importer for edge in cycle] for cycle in cycles] == [
        ["s.backends", "s.config"],
        ["s.node", "s.tcp"],
        ["s.x", "s.y"],
        ["s.x", "s.z"],
    ]
    assert describe(cycles[0]) == (
        "s.backends -> s.config -> s.backends\n"
        f"    {Path('s/backends/__init__.py')}:3: from s.config import Config\n"
        f"    {Path('s/config.py')}:1: from s.backends.base import Base (which first runs s.backends)"
    )
