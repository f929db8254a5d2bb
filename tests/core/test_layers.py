"""Every import in ``src/taskapp`` points down the layers, and ``core/`` has no circle.

The layers, lowest first (docs/architecture.md draws them)::

    core      imports only core (and ``taskapp._version``)
    relay     imports core and relay
    plugins   imports core, relay and plugins
    the rest  (cli, optimize, evaluation, examples, ``taskapp/__init__``, ``__main__``)
              may import anything below

The walk is over the source text (``ast``), so it sees every import: at module level,
inside functions, and under ``if TYPE_CHECKING:`` alike. The self-tests at the end run
the same checker on a synthetic tree with an upward arrow and a circle added, to show it
fails when it should.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

#: Which top-level parts of the package each layer may import.
ALLOWED: Mapping[str, frozenset[str]] = {
    "_version": frozenset({"_version"}),
    "core": frozenset({"_version", "core"}),
    "relay": frozenset({"_version", "core", "relay"}),
    "plugins": frozenset({"_version", "core", "relay", "plugins"}),
}


@dataclasses.dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    typing_only: bool = False
    """Under ``if TYPE_CHECKING:``: points like any import, but closes no circle at run time."""

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line})"


def module_names(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``package`` under ``src``."""
    modules: dict[str, Path] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_edges(src: Path, package: str) -> list[Edge]:
    """Every import of a module of ``package`` from a module of ``package``.

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``;
    relative imports are resolved against the importing module's package.
    """
    modules = module_names(src, package)
    edges: list[Edge] = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for stmt in node.body
            for inner in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    stem = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    stem = node.module or ""
                for alias in node.names:
                    child = f"{stem}.{alias.name}"
                    targets.append(child if child in modules else stem)
            for target in targets:
                if target == package or target.startswith(package + "."):
                    line = getattr(node, "lineno", 0)
                    edges.append(Edge(name, target, line, id(node) in typing_only))
    return edges


def part_of(module: str) -> str:
    """The layer of a dotted module name: its second component (``taskapp`` itself: '')."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(edges: Iterable[Edge]) -> list[Edge]:
    """The edges that leave a layer for one it may not import."""
    bad = []
    for edge in edges:
        allowed = ALLOWED.get(part_of(edge.source))
        if allowed is not None and part_of(edge.target) not in allowed:
            bad.append(edge)
    return bad


def circles(edges: Iterable[Edge], within: str) -> list[list[str]]:
    """Strongly connected components of more than one module among modules under ``within``
    (Tarjan's algorithm), each sorted; a self-import counts too. Imports under ``if
    TYPE_CHECKING:`` are left out: they never run."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if edge.typing_only:
            continue
        if edge.source.startswith(within) and edge.target.startswith(within):
            graph.setdefault(edge.source, set()).add(edge.target)
            graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# -- the real tree ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    found = import_edges(SRC, "taskapp")
    assert len(found) > 100, "the walk found suspiciously few imports"
    return found


def test_every_import_points_down(edges: list[Edge]) -> None:
    bad = upward_imports(edges)
    assert not bad, "imports that point up a layer:\n" + "\n".join(map(str, bad))


def test_core_has_no_import_circle(edges: list[Edge]) -> None:
    found = circles(edges, "taskapp.core")
    assert not found, f"import circles in core/: {found}"


def test_no_import_circle_anywhere(edges: list[Edge]) -> None:
    found = circles(edges, "taskapp")
    assert not found, f"import circles: {found}"


def test_the_version_has_one_source() -> None:
    import taskapp
    from taskapp._version import __version__

    assert taskapp.__version__ == __version__
    text = (SRC.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in text
    assert 'path = "src/taskapp/_version.py"' in text
    # Nothing else in the package spells the version out.
    for path in (SRC / "taskapp").rglob("*.py"):
        if path.name != "_version.py":
            assert f'"{__version__}"' not in path.read_text(encoding="utf-8"), path


# -- the checker itself -----------------------------------------------------------------


def _write(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


GOOD_TREE = {
    "taskapp/__init__.py": "from taskapp.core import a\n",
    "taskapp/_version.py": "__version__ = '0'\n",
    "taskapp/core/__init__.py": "",
    "taskapp/core/a.py": "from taskapp._version import __version__\nfrom . import b\n",
    "taskapp/core/b.py": "import json\n",
    "taskapp/relay/__init__.py": "",
    "taskapp/relay/r.py": "from taskapp.core.b import x\n",
    "taskapp/plugins/__init__.py": "",
    "taskapp/plugins/p.py": "from taskapp.relay import r\nfrom ..core import a\n",
    "taskapp/cli/__init__.py": "from taskapp.plugins import p\n",
}


def test_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    _write(tmp_path, GOOD_TREE)
    found = import_edges(tmp_path, "taskapp")
    assert Edge("taskapp.core.a", "taskapp.core.b", 2) in found
    assert Edge("taskapp.plugins.p", "taskapp.core.a", 2) in found
    assert upward_imports(found) == []
    assert circles(found, "taskapp.core") == []


@pytest.mark.parametrize(
    ("rel", "extra", "expected"),
    [
        ("taskapp/core/b.py", "from taskapp.plugins import p\n", "taskapp.plugins.p"),
        ("taskapp/core/b.py", "def f():\n    import taskapp.cli\n", "taskapp.cli"),
        ("taskapp/core/b.py", "import taskapp\n", "taskapp"),
        ("taskapp/relay/r.py", "from ..plugins.p import y\n", "taskapp.plugins.p"),
        (
            "taskapp/plugins/p.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from taskapp.cli import z\n",
            "taskapp.cli",
        ),
    ],
)
def test_checker_catches_an_upward_import(
    tmp_path: Path, rel: str, extra: str, expected: str
) -> None:
    tree = dict(GOOD_TREE)
    tree[rel] += extra
    _write(tmp_path, tree)
    bad = upward_imports(import_edges(tmp_path, "taskapp"))
    assert [edge.target for edge in bad] == [expected]


def test_checker_catches_a_circle_closed_inside_a_function(tmp_path: Path) -> None:
    tree = dict(GOOD_TREE)
    tree["taskapp/core/c.py"] = "from taskapp.core import a\n"
    tree["taskapp/core/b.py"] += "def late():\n    from taskapp.core import c\n"
    _write(tmp_path, tree)
    found = circles(import_edges(tmp_path, "taskapp"), "taskapp.core")
    assert found == [["taskapp.core.a", "taskapp.core.b", "taskapp.core.c"]]


def test_checker_ignores_type_checking_imports_for_circles(tmp_path: Path) -> None:
    tree = dict(GOOD_TREE)
    tree["taskapp/core/b.py"] += (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from taskapp.core import a\n"
    )
    _write(tmp_path, tree)
    found = import_edges(tmp_path, "taskapp")
    assert Edge("taskapp.core.b", "taskapp.core.a", 4, typing_only=True) in found
    assert circles(found, "taskapp.core") == []
