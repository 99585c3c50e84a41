"""The package's layering: what import-linter checks, and what it cannot.

import-linter (``./dev lint``, contracts in pyproject.toml) keeps each layer to
the layers below it. These tests add the rules it has no contract for: no
import cycle anywhere in the package, toolkit modules imported inside functions
only where an optional extra is dispatched (the dashboard's Bokeh page) or for
the CLI's start-up time, private names used only inside their own subpackage,
upstream libraries' private names used only in toolkit.upstream, and nothing done
to the process by importing toolkit.
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


def _imports(name: str, path: Path, annotations: bool = True):
    """(imported module, imported names, inside a function) for each toolkit import.

    ``annotations=False``: without those under ``if TYPE_CHECKING:``, which never run
    (names for annotations only, e.g. a plan's type in the module that renders it).
    """
    tree = ast.parse(path.read_text())
    parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom | ast.Import):
            continue
        up, in_function, typing_only = node, False, False
        while up in parents:
            up = parents[up]
            in_function |= isinstance(up, ast.FunctionDef | ast.AsyncFunctionDef)
            typing_only |= isinstance(up, ast.If) and ast.unparse(up.test) == "TYPE_CHECKING"
        if typing_only and not annotations:
            continue
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
        for target, names, _ in _imports(name, path, annotations=False):
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
        "dict",
        "list",
        "set",
        "bytearray",
        "defaultdict",
        "OrderedDict",
        "Counter",
        "deque",
        "ChainMap",
        "WeakKeyDictionary",
        "WeakValueDictionary",
        "WeakSet",
        "Lock",
        "RLock",
        "Condition",
        "Semaphore",
        "BoundedSemaphore",
        "Event",
        "Barrier",
        "local",
        "count",
        "ContextVar",
        "Queue",
        "SimpleQueue",
        "LifoQueue",
        "PriorityQueue",
        "Runtime",
        "Registry",
    }
)

#: The module-level bindings of a mutable object that stay, each with why. Nothing
#: here may be mutated by its module (checked below).
MODULE_STATE_ALLOWED = {
    # The one piece of process state: the process's runtime and the context variable
    # naming the runtime of a context. Everything else toolkit keeps lives in them.
    ("toolkit.runtime", "_CURRENT"): "the context variable naming the current runtime",
    ("toolkit.runtime", "_PROCESS"): "the process's own runtime (the context's default)",
}

_MUTATING_METHODS = frozenset(
    {
        "add",
        "append",
        "clear",
        "discard",
        "extend",
        "insert",
        "pop",
        "popitem",
        "remove",
        "setdefault",
        "update",
        "difference_update",
        "intersection_update",
        "symmetric_difference_update",
    }
)


def _mutable(value: ast.expr, own: frozenset[str] = frozenset()) -> bool:
    """Whether evaluating ``value`` makes a mutable object (looking inside tuples).

    ``own``: the module's classes whose instances are mutable (all but frozen
    dataclasses): an instance of one made at import is state too.
    """
    if isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp):
        return True
    if isinstance(value, ast.Tuple):
        return any(_mutable(e, own) for e in value.elts)
    if isinstance(value, ast.BinOp):
        return _mutable(value.left, own) or _mutable(value.right, own)
    if isinstance(value, ast.Call):
        f = value.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        return name in MUTABLE_CALLS or name in own
    return False


def _mutable_classes(tree: ast.Module) -> frozenset[str]:
    """The module's own classes, but frozen dataclasses."""

    def frozen(c: ast.ClassDef) -> bool:
        return any(
            isinstance(d, ast.Call)
            and any(k.arg == "frozen" and ast.unparse(k.value) == "True" for k in d.keywords)
            for d in c.decorator_list
        )

    return frozenset(n.name for n in tree.body if isinstance(n, ast.ClassDef) and not frozen(n))


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
    own = _mutable_classes(tree)
    found = []
    for s in _module_statements(tree.body):
        if isinstance(s, ast.Assign | ast.AnnAssign | ast.AugAssign) and s.value is not None:
            targets = s.targets if isinstance(s, ast.Assign) else [s.target]
            if isinstance(s, ast.AugAssign) or _mutable(s.value, own):
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
                    isinstance(t, ast.Subscript)
                    and isinstance(t.value, ast.Name)
                    and t.value.id == bound
                    for t in (n.targets if isinstance(n, ast.Assign | ast.Delete) else [n.target])
                )
            )
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
@dataclass(frozen=True)
class Frozen:
    a: int = 1
M = L()
N = Frozen()
"""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.py"
        p.write_text(source)
        bound = sorted({b for b, _ in _module_state("m", p)})
    assert bound == ["A", "B", "C", "D", "E", "F", "K", "M", "shared"]


# ------------------------------------------------------------------- upstream's private names

#: The upstream libraries whose private names only ``toolkit.upstream`` may use.
UPSTREAM = frozenset(
    {
        "xarray",
        "zarr",
        "fsspec",
        "s3fs",
        "obstore",
        "icechunk",
        "numpy",
        "pandas",
        "dask",
        "distributed",
        "numcodecs",
        "botocore",
        "aiobotocore",
        "bokeh",
    }
)

#: Upstream modules that are private though no part of their name starts with "_": all
#: of ``zarr.core`` (zarr 3.1's release notes), and xarray's internals (its API is the
#: ``xarray`` namespace and a few public submodules; ``xarray.backends`` is public, its
#: submodules are not).
PRIVATE_MODULES = (
    "zarr.core",
    "xarray.core",
    "xarray.coding",
    "xarray.conventions",
    "xarray.namedarray",
    "xarray.structure",
    "xarray.computation",
)

#: Private attribute names that are upstream's *and* names toolkit uses for its own (so
#: not told apart by toolkit defining them): upstream's on anything but ``self``, ``cls``,
#: and the ``other`` and ``clone`` of toolkit's own wrappers' ``__eq__`` and ``_with_store``.
SHADOWED = frozenset({"_store", "_session", "_get_many", "_set_many"})
_OWN_BASES = frozenset({"self", "cls", "other", "clone"})

#: Private names of the standard library used by toolkit, each with why it is fine.
STDLIB_PRIVATE = {"os._exit": "documented: exit at once, without cleanup (the CLI's child)"}

#: Upstream private names still used outside toolkit.upstream, each with the name it is to
#: become (then dropped here). None left: read, write.tree and coordination.records moved too.
UPSTREAM_PRIVATE_PENDING: dict[tuple[str, str], str] = {}


def _private_module(module: str) -> bool:
    parts = module.split(".")
    return (
        any(p.startswith("_") for p in parts)
        or any(module == m or module.startswith(m + ".") for m in PRIVATE_MODULES)
        or (len(parts) > 2 and parts[:2] == ["xarray", "backends"])
    )


def _defined_names(paths: list[Path]) -> set[str]:
    """Every name toolkit gives anything: functions, classes, attributes, variables, keys."""
    out: set[str] = set()
    for path in paths:
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                out.add(n.name)
            elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
                out.add(n.attr)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                out.add(n.id)
            elif isinstance(n, ast.arg):
                out.add(n.arg)
            elif isinstance(n, ast.alias):
                out.add(n.asname or n.name.split(".")[0])
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                out.add(n.value)  # attributes set through a class body or __dict__
    return out


def _upstream_private_uses(path: Path, defined: set[str]) -> list[tuple[str, int]]:
    """(the upstream private name, line) for each use in the module at ``path``."""
    found = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            if n.module.split(".")[0] not in UPSTREAM:
                continue
            for a in n.names:
                if _private_module(n.module) or a.name.startswith("_"):
                    found.append((f"{n.module}.{a.name}", n.lineno))
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split(".")[0] in UPSTREAM and _private_module(a.name):
                    found.append((a.name, n.lineno))
        elif isinstance(n, ast.Attribute) and n.attr.startswith("_"):
            if n.attr.startswith("__"):
                continue
            base = n.value.id if isinstance(n.value, ast.Name) else "<expression>"
            if base in _OWN_BASES or f"{base}.{n.attr}" in STDLIB_PRIVATE:
                continue
            if n.attr in SHADOWED or n.attr not in defined:
                found.append((f"{base}.{n.attr}", n.lineno))
    return found


def _all_upstream_private_uses() -> dict[tuple[str, str], int]:
    mods = _modules()
    defined = _defined_names(list(mods.values()))
    return {
        (name, what): line
        for name, path in mods.items()
        if name != "toolkit.upstream"
        for what, line in _upstream_private_uses(path, defined)
    }


def test_only_toolkit_upstream_uses_upstream_private_names():
    """xarray's, zarr's, s3fs's, Icechunk's private names are used in toolkit.upstream alone.

    Each has a function there saying what it stands for and why, and a test in
    tests/test_upstream.py that fails when upstream changes it.
    """
    found = [
        f"{name}:{line} uses {what}"
        for (name, what), line in sorted(_all_upstream_private_uses().items())
        if (name, what) not in UPSTREAM_PRIVATE_PENDING
    ]
    assert found == [], (
        "an upstream private name outside toolkit.upstream: add a function there (with a "
        "test in tests/test_upstream.py) and call it"
    )


def test_what_is_pending_is_still_there():
    uses = _all_upstream_private_uses()
    for (name, what), instead in UPSTREAM_PRIVATE_PENDING.items():
        assert (name, what) in uses, f"{name} no longer uses {what}: drop it from the list"
        assert instead


def test_the_upstream_check_sees_private_names():
    """The rule itself: what it flags and what it lets through."""
    source = """
import os
import zarr.core.sync
from zarr.core.buffer import default_buffer_prototype
from zarr.storage._utils import _normalize_byte_range_index
from zarr.abc.store import Store, _store_supports_sync_io
from zarr.buffer import default_buffer_prototype
from xarray.backends.writers import dump_to_store
from xarray.backends import BackendEntrypoint
from toolkit._util import backoff
class W:
    def _with_store(self, store):
        clone = object()
        clone._store = store
        return self._store == store._store
async def f(fs, g, session, s):
    await fs._call_s3("get_object")
    g._async_group, session._session, W._with_store, Store._get_many(s, [])
    os._exit(0)
"""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.py"
        p.write_text(source)
        found = sorted({what for what, _ in _upstream_private_uses(p, _defined_names([p]))})
    assert found == [
        "Store._get_many",
        "fs._call_s3",
        "g._async_group",
        "session._session",
        "store._store",
        "xarray.backends.writers.dump_to_store",
        "zarr.abc.store._store_supports_sync_io",
        "zarr.core.buffer.default_buffer_prototype",
        "zarr.core.sync",
        "zarr.storage._utils._normalize_byte_range_index",
    ]


def test_upstream_hooks_that_toolkit_overrides_are_listed():
    """A toolkit class overriding a private method of an upstream base names it in STORE_HOOKS.

    (zarr calls those hooks on toolkit's wrappers; tests/test_upstream.py checks it still does.)
    """
    import importlib
    import inspect
    import pkgutil

    from toolkit.upstream import STORE_HOOKS

    overridden: dict[str, set[str]] = {}
    for info in pkgutil.walk_packages(toolkit.__path__, "toolkit."):
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            for attr in vars(cls):
                if not attr.startswith("_") or attr.startswith("__") or attr == "_abc_impl":
                    continue
                for base in cls.__mro__[1:]:
                    if base.__module__.split(".")[0] in UPSTREAM and attr in vars(base):
                        overridden.setdefault(attr, set()).add(cls.__qualname__)
    assert set(overridden) <= set(STORE_HOOKS), {
        k: v for k, v in overridden.items() if k not in STORE_HOOKS
    }
    assert set(overridden) == set(STORE_HOOKS), "a hook in STORE_HOOKS nobody overrides"


#: Where the question "where do tasks run?" may be asked: the executor answers it for
#: everyone (toolkit.cluster.executor); the client query it asks, and the coordinator's
#: "which worker am I" (a worker's own budget) beside it, in the cluster layer.
WHERE_TASKS_RUN = {
    "active_client": {"toolkit.cluster.client", "toolkit.cluster.executor"},
    "default_client": {"toolkit.cluster.client"},
    "get_client": {"toolkit.cluster.executor"},
    "get_worker": {
        "toolkit.cluster.client",
        "toolkit.cluster.executor",
        "toolkit.cluster.coordinator",
    },
    "worker_client": set(),
}


def _cluster_lookups(path: Path) -> list[tuple[str, int]]:
    found = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom) and n.module in ("distributed", "toolkit.cluster.client"):
            found += [(a.name, n.lineno) for a in n.names if a.name in WHERE_TASKS_RUN]
        elif (
            isinstance(n, ast.Attribute)
            and n.attr in WHERE_TASKS_RUN
            and isinstance(n.value, ast.Name)
            and n.value.id == "distributed"
        ):
            found.append((n.attr, n.lineno))
    return found


def test_only_the_executor_decides_where_tasks_run():
    """No job asks for itself whether it runs on a cluster (issue 33: it was 8 places).

    Each asks ``toolkit.cluster.executor.executor()`` (or ``in_task()`` from a task)
    and uses what it answers: how many processes, run everywhere, on the scheduler.
    """
    found = [
        f"{name}:{line} looks up {what}"
        for name, path in sorted(_modules().items())
        for what, line in _cluster_lookups(path)
        if name not in WHERE_TASKS_RUN[what]
    ]
    assert found == [], "ask toolkit.cluster.executor.executor() instead"
    assert _cluster_lookups(ROOT / "cluster" / "executor.py")  # the check sees them


def _process_settings(path: Path) -> list[tuple[str, int]]:
    """Calls in ``path`` that change a setting of the whole process: zarr's
    configuration, or a warnings filter outside a ``warnings.catch_warnings()`` block."""
    tree = ast.parse(path.read_text())
    parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name.startswith("zarr.config.") and name.split(".")[-1] in ("set", "update", "refresh"):
            found.append((name, node.lineno))
        elif name in ("warnings.filterwarnings", "warnings.simplefilter"):
            up, scoped = node, False
            while up in parents and not scoped:
                up = parents[up]
                scoped = isinstance(up, ast.With) and any(
                    ast.unparse(i.context_expr).startswith("warnings.catch_warnings")
                    for i in up.items
                )
            if not scoped:
                found.append((name, node.lineno))
    return found


def test_no_module_changes_a_setting_of_the_whole_process():
    """Issue 33: zarr's ``async.concurrency`` was raised while write tasks ran, and a
    warnings filter for ``.toolkit`` installed at run time; other code in the process
    relies on both."""
    found = [
        f"{name}:{line} calls {what}"
        for name, path in sorted(_modules().items())
        if not name.startswith("toolkit.testing")
        for what, line in _process_settings(path)
    ]
    assert found == []


def test_the_process_settings_check_sees_them(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import warnings, zarr\n"
        "zarr.config.set({'async.concurrency': 64})\n"
        "warnings.filterwarnings('ignore')\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore')\n"
    )
    assert [line for _, line in _process_settings(probe)] == [2, 3]
