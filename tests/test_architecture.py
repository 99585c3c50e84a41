"""The package's layering: what import-linter checks, and what it cannot.

import-linter (``./dev lint``, contracts in pyproject.toml) keeps each layer to
the layers below it. These tests add the rules it has no contract for: no
import cycle anywhere in the package, toolkit modules imported inside functions
only where an optional extra is dispatched (the dashboard's Bokeh page) or for
the CLI's start-up time, private names used only inside their own subpackage,
and nothing done to the process by importing toolkit.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import toolkit

ROOT = Path(toolkit.__file__).parent
FUNCTION_LEVEL_ALLOWED = {"toolkit.cli", "toolkit.dashboard", "toolkit.dashboard.plugins"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(name: str, path: Path):
    """(imported module, imported names, inside a function) for each toolkit import."""
    tree = ast.parse(path.read_text())
    parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom | ast.Import):
            continue
        up, in_function = node, False
        while up in parents:
            up = parents[up]
            in_function |= isinstance(up, ast.FunctionDef | ast.AsyncFunctionDef)
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("toolkit"):
                    yield a.name, [], in_function
        elif node.module and node.module.startswith("toolkit") and node.level == 0:
            yield node.module, [a.name for a in node.names], in_function


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, names, _ in _imports(name, path):
            for n in names or [""]:
                full = f"{target}.{n}"
                dep = full if full in mods else target
                if dep in mods and dep != name and not (name.startswith(dep + ".")):
                    graph[name].add(dep)
    return graph


def test_the_package_has_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*path[path.index(d) :], d])
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_toolkit_modules_are_imported_inside_functions_only_where_allowed():
    late = [
        f"{name} imports {target}"
        for name, path in _modules().items()
        for target, _, in_function in _imports(name, path)
        if in_function and name not in FUNCTION_LEVEL_ALLOWED
    ]
    assert late == []


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_private_names_stay_inside_their_subpackage():
    crossing = [
        f"{name} uses {target}.{n}"
        for name, path in _modules().items()
        for target, names, _ in _imports(name, path)
        for n in names
        if n.startswith("_") and _subpackage(target) != _subpackage(name)
    ]
    assert crossing == []


def test_importing_toolkit_changes_no_process_state():
    code = (
        "import warnings, zarr, xarray, dask, distributed, numcodecs, fsspec\n"
        "filters = list(warnings.filters)\n"
        "import dask.config as c; cfg = repr(c.config)\n"
        "import zarr as z; zcfg = repr(z.config.config)\n"
        "import toolkit\n"
        "assert list(warnings.filters) == filters, 'a warnings filter'\n"
        "assert repr(z.config.config) == zcfg, 'zarr config'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
