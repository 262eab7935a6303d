"""The package's shape: subpackages as floors of the pipeline, no import circle, no module
importing from a higher floor, every module importable on its own, no module over 650 lines.

Imports are read from the source (every ``import`` / ``from`` statement, also those inside
functions), so a lazy import cannot hide a circle or an upward dependency.
"""
import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fire_reg"
FLOORS = ("config", "io", "geometry", "imaging", "data", "learn", "register", "montage", "evaluate",
          "cli")
"""Low to high: a module may import from its own floor or a lower one."""
MAX_LINES = 650


def _modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The fire_reg modules ``name`` imports (a ``from pkg import module`` counts as the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("fire_reg"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fire_reg"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    found.discard(name)
    return {module for module in found if module in MODULES}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _floor(name: str) -> int | None:
    """Index of a module's floor in FLOORS; None for the package itself (its lazy public API)."""
    parts = name.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 1 else None


def test_every_module_belongs_to_a_floor():
    strays = [name for name in MODULES if name != "fire_reg" and name.split(".")[1] not in FLOORS]
    assert not strays, f"modules outside the floors {FLOORS}: {strays}"


def test_no_import_circle():
    state, path = {}, []

    def visit(name):
        state[name] = "open"
        path.append(name)
        for child in sorted(GRAPH[name]):
            if state.get(child) == "open":
                cycle = path[path.index(child):] + [child]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if child not in state:
                visit(child)
        path.pop()
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_no_import_from_a_higher_floor():
    upward = [f"{name} imports {child}" for name, children in GRAPH.items() for child in children
              if _floor(name) is not None and _floor(child) is not None
              and _floor(child) > _floor(name)]
    assert not upward, "imports from a higher floor:\n" + "\n".join(sorted(upward))


def test_no_module_over_the_line_limit():
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def _import_alone(name: str) -> str | None:
    """None when ``import name`` succeeds in a fresh interpreter, else its last error line."""
    done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True,
                          text=True, timeout=300)
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]


def test_every_module_imports_cleanly_in_a_fresh_interpreter():
    """Each module is imported in its own interpreter, as a user's first import sees it."""
    names = [name for name in MODULES if not name.endswith("__main__")]
    with ThreadPoolExecutor(4) as pool:
        errors = dict(zip(names, pool.map(_import_alone, names)))
    broken = {name: error for name, error in errors.items() if error}
    assert not broken, f"modules that do not import on their own: {broken}"
