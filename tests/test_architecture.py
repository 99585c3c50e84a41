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


# --------------------------------------------------------------------------- module state

#: Calls that make a mutable object (or a lock, a counter, a context variable).
MUTABLE_CALLS = frozenset(
    {
        "dict", "list", "set", "bytearray", "defaultdict", "OrderedDict", "Counter", "deque",
        "ChainMap", "WeakKeyDictionary", "WeakValueDictionary", "WeakSet", "Lock", "RLock",
        "Condition", "Semaphore", "BoundedSemaphore", "Event", "Barrier", "local", "count",
        "ContextVar", "Queue", "SimpleQueue", "LifoQueue", "PriorityQueue", "Runtime",
        "Registry",
    }
)  # fmt: skip

#: The module-level bindings of a mutable object that stay, each with why. Nothing
#: here may be mutated by its module (checked below).
MODULE_STATE_ALLOWED = {
    # The one piece of process state: the process's runtime and the context variable
    # naming the runtime of a context. Everything else toolkit keeps lives in them.
    ("toolkit.runtime", "_CURRENT"): "the context variable naming the current runtime",
    ("toolkit.runtime", "_PROCESS"): "the process's own runtime (the context's default)",
    # Constants written as set/dict displays in modules other sessions own at the time
    # of writing (never mutated: checked below); frozenset / MappingProxyType them when
    # those modules are next edited.
    ("toolkit.write.plan", "_LAYOUT_KEYS"): "a constant set (owned elsewhere)",
    ("toolkit.write.plan", "_ZARR_KEYS"): "a constant set (owned elsewhere)",
    ("toolkit.write.plan", "_CF_KEYS"): "a constant set (owned elsewhere)",
    ("toolkit.write.plan", "_V3_ONLY_KEYS"): "a constant set (owned elsewhere)",
    ("toolkit.stats.aggregations", "STATISTICS"): "a constant table (owned elsewhere)",
}

_MUTATING_METHODS = frozenset(
    {
        "add", "append", "clear", "discard", "extend", "insert", "pop", "popitem", "remove",
        "setdefault", "update", "difference_update", "intersection_update",
        "symmetric_difference_update",
    }
)  # fmt: skip


def _mutable(value: ast.expr) -> bool:
    """Whether evaluating ``value`` makes a mutable object (looking inside tuples)."""
    if isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp):
        return True
    if isinstance(value, ast.Tuple):
        return any(_mutable(e) for e in value.elts)
    if isinstance(value, ast.BinOp):
        return _mutable(value.left) or _mutable(value.right)
    if isinstance(value, ast.Call):
        f = value.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        return name in MUTABLE_CALLS
    return False


def _module_statements(body: list[ast.stmt]):
    """The statements run at import: the module's, its if/try/with blocks' and class bodies'.

    (A class attribute holding a mutable object is state shared by every instance.)
    """
    for s in body:
        if isinstance(s, ast.ClassDef):
            yield from _module_statements(s.body)
        elif isinstance(s, ast.If | ast.Try | ast.With):
            yield from _module_statements(s.body)
            yield from _module_statements(getattr(s, "orelse", []))
            yield from _module_statements(getattr(s, "finalbody", []))
            for h in getattr(s, "handlers", []):
                yield from _module_statements(h.body)
        else:
            yield s


def _module_state(name: str, path: Path) -> list[tuple[str, str]]:
    """(name bound, where) for each mutable object bound at import, and each ``global``."""
    tree = ast.parse(path.read_text())
    found = []
    for s in _module_statements(tree.body):
        if isinstance(s, ast.Assign | ast.AnnAssign | ast.AugAssign) and s.value is not None:
            targets = s.targets if isinstance(s, ast.Assign) else [s.target]
            if isinstance(s, ast.AugAssign) or _mutable(s.value):
                for t in targets:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name) and n.id != "__all__":
                            found.append((n.id, f"{name}:{s.lineno}"))
    for n in ast.walk(tree):
        if isinstance(n, ast.Global):
            found += [(g, f"{name}:{n.lineno} (global)") for g in n.names]
    return found


def test_no_module_keeps_mutable_state_at_import_level():
    """State lives in a toolkit.runtime.Runtime; modules bind constants only."""
    found = [
        f"{where} binds {bound}"
        for name, path in _modules().items()
        for bound, where in _module_state(name, path)
        if (name, bound) not in MODULE_STATE_ALLOWED
    ]
    assert found == [], "module-level state (keep it in the runtime: toolkit.runtime.Slot)"


def test_what_is_allowed_at_import_level_is_there_and_never_mutated():
    mods = _modules()
    for (name, bound), why in MODULE_STATE_ALLOWED.items():
        assert why
        tree = ast.parse(mods[name].read_text())
        assert any(b == bound for b, _ in _module_state(name, mods[name])), f"{name}.{bound}"
        if name == "toolkit.runtime":
            continue
        for n in ast.walk(tree):
            mutated = (
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and isinstance(n.func.value, ast.Name)
                and n.func.value.id == bound
                and n.func.attr in _MUTATING_METHODS
            ) or (
                isinstance(n, ast.Assign | ast.AugAssign | ast.Delete)
                and any(
                    isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)
                    and t.value.id == bound
                    for t in (n.targets if isinstance(n, ast.Assign | ast.Delete) else [n.target])
                )
            )  # fmt: skip
            assert not mutated, f"{name} mutates {bound} (line {n.lineno})"


def test_the_checks_see_module_state():
    """The rule itself: what it flags and what it lets through."""
    source = """
import re, threading, weakref, logging
from types import MappingProxyType
A = {}
B = [1]
C = {1}
D = weakref.WeakKeyDictionary()
E = threading.Lock()
F = (1, [2])
G = frozenset({1})
H = MappingProxyType({"a": 1})
I = re.compile("x")
J = (1, "a")
K = 3
logger = logging.getLogger(__name__)
__all__ = ["A"]
def f():
    global K
class L:
    shared = []
    fine = ("a",)
"""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.py"
        p.write_text(source)
        bound = sorted({b for b, _ in _module_state("m", p)})
    assert bound == ["A", "B", "C", "D", "E", "F", "K", "shared"]
