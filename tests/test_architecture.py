"""The house: every module sits on a floor (a subpackage), imports point down the floors, no module
imports itself back through a cycle, and a floor's __init__ imports nothing."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gradlab"


def test_the_floors_contract_holds():
    """import-linter's layers contract of pyproject.toml ([tool.importlinter])."""
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[dev]')")
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    result = subprocess.run([command], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_no_import_cycle():
    grimp = pytest.importorskip("grimp", reason="grimp (import-linter's graph) is not installed")
    graph = grimp.build_graph("gradlab")
    imports = {module: sorted(graph.find_modules_directly_imported_by(module)) for module in graph.modules}
    assert strongly_connected_cycles(imports) == []


def strongly_connected_cycles(imports: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of two or more modules (each holds a cycle), by Tarjan's
    algorithm with an explicit stack (no recursion limit to raise)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(imports):
        if root in index:
            continue
        work = [(root, iter(imports.get(root, ())))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(imports.get(child, ()))))
                elif child in on_stack:
                    low[module] = min(low[module], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected_cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert strongly_connected_cycles({"a": ["b"], "b": [], "c": ["a"]}) == []


def test_every_module_lives_on_a_floor():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert loose == []


@pytest.mark.parametrize("init", sorted(p.relative_to(ROOT).as_posix() for p in PACKAGE.glob("*/__init__.py")))
def test_a_floors_init_imports_nothing(init):
    tree = ast.parse((ROOT / init).read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
