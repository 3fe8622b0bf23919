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
    modules = sorted(graph.modules)
    # Tarjan's strongly connected components over the direct imports: a component of two or more
    # modules is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
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

    for module in modules:
        if module not in index:
            visit(module)
    assert cycles == []


def test_every_module_lives_on_a_floor():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert loose == []


@pytest.mark.parametrize("init", sorted(p.relative_to(ROOT).as_posix() for p in PACKAGE.glob("*/__init__.py")))
def test_a_floors_init_imports_nothing(init):
    tree = ast.parse((ROOT / init).read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
