"""Write the intersphinx inventories that the docs link through (``docs/_inventories/*.inv``).

Why these files exist: the site is built without network access (developers' machines
and CI reach only package registries), so ``sphinx.ext.intersphinx`` cannot download
each library's ``objects.inv``. These files stand in for them: ``docs/conf.py`` maps
each library's documentation URL to the file here, and Sphinx reads the file instead.

Each inventory lists the library's public API, found by introspecting the package
installed in this environment, at the address where that library's documentation site
puts it. The layouts below were read from each project's documentation sources (its
autosummary/autodoc listings, or zarr's mkdocs navigation) as of their 2026 releases:

- xarray (autosummary page per name): ``generated/xarray.Dataset.to_zarr.html``
- dask: top-level functions on ``api.html``, ``dask.delayed`` on ``delayed-api.html``,
  ``dask.array`` names one page each, ``generated/dask.array.Array.rechunk.html``
- distributed (autodoc on one page): ``api.html#distributed.Client``
- zarr (mkdocs + mkdocstrings): a page per top-level function,
  ``api/zarr/functions/open_array/``; ``zarr.Array`` on ``api/zarr/array/``; one page
  per module, anchored by full name: ``api/zarr/storage/#zarr.storage.ObjectStore``
- numpy: ``reference/generated/numpy.histogram.html``; scalar types on
  ``reference/arrays.scalars.html``
- Python: ``library/functions.html``, ``library/stdtypes.html``,
  ``library/exceptions.html``, ``library/<module>.html#<name>``, ``glossary.html``
- fsspec (autodoc on one page): ``api.html#fsspec.open``

A name the sites do not document (a few introspected members) only makes a link that
lands on the right page without an anchor. Rerun after upgrading one of these libraries
(from the repository: ``.venv/bin/python docs/_inventories/make.py``); the output is
deterministic, so an unchanged API leaves the files byte-identical.

The format is Sphinx's inventory version 2: four header lines, then ``name domain:role
priority uri display`` lines, zlib-compressed. It is written here directly (no
dependency): ``python -m sphinx.ext.intersphinx docs/_inventories/xarray.inv`` lists
one back.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import re
import sys
import types
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

Entry = tuple[str, str, str, str]  # name, domain:role, uri, display ("-": the name)


def _role(value: Any) -> str:
    if inspect.isclass(value):
        return "py:exception" if issubclass(value, BaseException) else "py:class"
    if inspect.ismodule(value):
        return "py:module"
    if callable(value):
        return "py:function"
    return "py:data"


def _public(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("_"))


def _members(cls: type, owners: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """A class's public methods and properties (``(name, role)``) defined in ``owners``."""
    for name in _public(dir(cls)):
        try:
            raw = inspect.getattr_static(cls, name)
        except AttributeError:
            continue
        home = next((k for k in cls.__mro__ if name in vars(k)), None)
        if home is None or not home.__module__.startswith(owners):
            continue  # inherited from object, typing, the standard library...
        if isinstance(raw, property | types.GetSetDescriptorType | types.MemberDescriptorType):
            yield name, "py:property"
        elif isinstance(raw, classmethod | staticmethod) or inspect.isroutine(raw):
            yield name, "py:method"
        elif type(raw).__name__ == "cached_property":
            yield name, "py:property"


def _with_members(
    name: str, cls: type, page: str, owners: tuple[str, ...], member_page: str | None = None
) -> Iterator[Entry]:
    """The class at ``page#name``; its members at ``member_page`` (``{}``: the member)."""
    yield name, _role(cls), f"{page}#{name}", "-"
    for member, role in _members(cls, owners):
        full = f"{name}.{member}"
        uri = member_page.format(full) if member_page else page
        yield full, role, f"{uri}#{full}", "-"


# --------------------------------------------------------------------------- xarray

# Introspected names that xarray's site has no page for (checked against its sources).
XARRAY_UNDOCUMENTED = {
    "DataArray.cumulative_integrate", "DataArray.dt", "DataArray.reset_encoding",
    "DataArray.set_close", "DataTree.close", "DataTree.count", "DataTree.prune",
    "DataTree.reduce", "DataTree.set_close", "Dataset.cumulative_integrate", "Dataset.plot",
    "Dataset.reset_encoding", "Dataset.to_array", "NamedArray", "Variable.as_numpy",
    "Variable.broadcast_to", "Variable.chunksizes", "Variable.coarsen_reshape",
    "Variable.expand_dims", "Variable.permute_dims", "Variable.reset_encoding",
    "Variable.to_numpy", "testing.assert_duckarray_allclose", "testing.assert_duckarray_equal",
    "coders.CFTimedeltaCoder", "indexes.Index",
}  # fmt: skip


def xarray_entries() -> Iterator[Entry]:
    """xarray: every name in ``xarray.__all__``, the classes' members, ``xarray.testing``."""
    for entry in _xarray_entries():
        if entry[0].removeprefix("xarray.") not in XARRAY_UNDOCUMENTED:
            yield entry


def _xarray_entries() -> Iterator[Entry]:
    import xarray

    def page(full: str) -> str:
        return f"generated/{full}.html"

    yield "xarray", "py:module", "index.html#module-xarray", "-"
    for name in xarray.__all__:
        value = getattr(xarray, name)
        if (
            name.startswith("_")
            or inspect.ismodule(value)
            or not (inspect.isclass(value) or callable(value))
        ):
            continue
        full = f"xarray.{name}"
        yield full, _role(value), f"{page(full)}#{full}", "-"
    for name in ("Dataset", "DataArray", "Variable", "DataTree", "Coordinates"):
        full = f"xarray.{name}"
        cls = getattr(xarray, name)
        yield from _with_members(full, cls, page(full), ("xarray",), "generated/{}.html")
    # The submodules: a reference page each, a generated page per name.
    for sub, api_page in (
        ("coders", "api/encoding.html"), ("groupers", "api/groupby.html#grouper-objects"),
        ("indexes", "api/indexes.html"), ("testing", "api/testing.html"),
        ("ufuncs", "api/ufuncs.html"),
    ):  # fmt: skip
        module = getattr(xarray, sub)
        yield f"xarray.{sub}", "py:module", api_page, "-"
        for name in _public(module.__all__):
            full = f"xarray.{sub}.{name}"
            yield full, _role(getattr(module, name)), f"{page(full)}#{full}", "-"


# --------------------------------------------------------------------------- dask

# dask.array names without a page: numpy's scalar types and helpers it re-exports.
DASK_ARRAY_UNDOCUMENTED = {
    "PerformanceWarning", "array_expr_enabled", "assert_eq", "atop", "compute", "ndim",
    "optimize", "unify_chunks",
}  # fmt: skip
DASK_GUFUNC = {"apply_gufunc", "as_gufunc", "gufunc"}  # documented as dask.array.gufunc.*


def dask_entries() -> Iterator[Entry]:
    """dask: the top-level functions, ``dask.delayed``, ``dask.array`` and ``dask.config``."""
    import dask
    import dask.array
    import dask.config
    import dask.delayed

    for name in ("annotate", "compute", "is_dask_collection", "optimize", "persist", "visualize"):
        yield f"dask.{name}", "py:function", f"api.html#dask.{name}", "-"
    yield "dask.delayed", "py:module", "delayed-api.html", "-"
    yield "dask.delayed.delayed", "py:function", "delayed-api.html#dask.delayed.delayed", "-"
    yield "dask.delayed.Delayed", "py:class", "delayed-api.html#dask.delayed.Delayed", "-"
    yield "dask.array", "py:module", "array-api.html", "-"
    for name in _public(dask.array.__all__):
        value = getattr(dask.array, name, None)
        if (
            value is None
            or inspect.ismodule(value)
            or not callable(value)
            or name in DASK_ARRAY_UNDOCUMENTED
            or (inspect.isclass(value) and value.__module__.startswith("numpy"))
        ):
            continue
        full = f"dask.array.{name}"
        if name in DASK_GUFUNC:
            page = f"generated/dask.array.gufunc.{name}.html"
            yield full, _role(value), f"{page}#dask.array.gufunc.{name}", "-"
        elif name == "Array":
            yield from _with_members(
                full, value, f"generated/{full}.html", ("dask",), "generated/{}.html"
            )
        else:
            yield full, _role(value), f"generated/{full}.html#{full}", "-"
    for name in ("get", "set", "merge", "update", "collect", "refresh", "ensure_file"):
        yield f"dask.config.{name}", "py:function", f"configuration.html#dask.config.{name}", "-"


def distributed_entries() -> Iterator[Entry]:
    """distributed: the client API (one autodoc page, ``api.html``)."""
    import distributed

    for name in ("Client", "Future"):
        yield from _with_members(
            f"distributed.{name}", getattr(distributed, name), "api.html", ("distributed",)
        )
    for name in (
        "LocalCluster", "SpecCluster", "Event", "Lock", "MultiLock", "Semaphore", "Queue",
        "Variable", "as_completed", "wait", "fire_and_forget", "futures_of", "worker_client",
        "get_worker", "get_client", "secede", "rejoin", "performance_report", "get_task_stream",
    ):  # fmt: skip
        full = f"distributed.{name}"
        yield full, _role(getattr(distributed, name)), f"api.html#{full}", "-"


# --------------------------------------------------------------------------- zarr

# The top-level functions with a page of their own (zarr's mkdocs navigation); the
# deprecated copy, copy_all, copy_store and tree have none.
ZARR_FUNCTIONS = (
    "array", "consolidate_metadata", "create", "create_array", "create_group",
    "create_hierarchy", "empty", "empty_like", "from_array", "full", "full_like", "group",
    "load", "ones", "ones_like", "open", "open_array", "open_consolidated", "open_group",
    "open_like", "print_debug_info", "save", "save_array", "save_group", "zeros", "zeros_like",
)  # fmt: skip
# Modules documented whole on one page each (``::: zarr.storage``).
ZARR_MODULES = (
    "zarr.abc.buffer", "zarr.abc.codec", "zarr.abc.metadata", "zarr.abc.store",
    "zarr.api.asynchronous", "zarr.api.synchronous", "zarr.buffer", "zarr.codecs",
    "zarr.dtype", "zarr.errors", "zarr.registry", "zarr.storage",
)  # fmt: skip


def zarr_entries() -> Iterator[Entry]:
    """Zarr 3 (mkdocs): functions, ``Array`` and ``Group``, and one page per module."""
    import zarr

    yield "zarr", "py:module", "api/zarr/#zarr", "-"
    for name in ZARR_FUNCTIONS:
        if hasattr(zarr, name):
            full = f"zarr.{name}"
            yield full, "py:function", f"api/zarr/functions/{name}/#{full}", "-"
    for name in ("Array", "AsyncArray", "Group", "AsyncGroup"):
        page = "api/zarr/array/" if name.endswith("Array") else "api/zarr/group/"
        yield from _with_members(f"zarr.{name}", getattr(zarr, name), page, ("zarr",))
    yield "zarr.config", "py:data", "api/zarr/config/#zarr.config", "-"  # an object, not a module
    for module_name in ZARR_MODULES:
        module = importlib.import_module(module_name)
        page = "api/" + module_name.replace(".", "/") + "/"  # docs/api/zarr/storage.md
        yield module_name, "py:module", f"{page}#{module_name}", "-"
        names = getattr(module, "__all__", None) or [
            n for n, v in vars(module).items() if getattr(v, "__module__", "") == module_name
        ]
        for name in _public(names):
            value = getattr(module, name, None)
            if value is None or inspect.ismodule(value):
                continue
            full = f"{module_name}.{name}"
            if inspect.isclass(value):
                yield from _with_members(full, value, page, ("zarr",))
            else:
                yield full, _role(value), f"{page}#{full}", "-"


# --------------------------------------------------------------------------- numpy


def numpy_entries() -> Iterator[Entry]:
    """numpy: the top-level routines and ufuncs, ``ndarray``, ``dtype``, scalars, typing."""
    import numpy as np
    import numpy.random
    import numpy.typing

    ref = "reference/generated/{}.html"
    yield "numpy", "py:module", "reference/index.html#module-numpy", "-"
    for name in _public(np.__all__):
        value = getattr(np, name, None)
        full = f"numpy.{name}"
        if value is None or inspect.ismodule(value):
            continue
        if inspect.isclass(value) and issubclass(value, np.generic):
            yield full, "py:class", f"reference/arrays.scalars.html#{full}", "-"
        elif name in ("ndarray", "dtype"):
            yield from _with_members(full, value, ref.format(full), ("numpy",), ref)
        elif inspect.isclass(value):
            yield full, _role(value), f"{ref.format(full)}#{full}", "-"
        elif callable(value):
            yield full, "py:function", f"{ref.format(full)}#{full}", "-"
    for name in ("nan", "inf", "pi", "e", "newaxis"):
        yield f"numpy.{name}", "py:data", f"reference/constants.html#numpy.{name}", "-"
    for name in ("ArrayLike", "DTypeLike", "NDArray"):
        full = f"numpy.typing.{name}"
        yield full, "py:data", f"reference/typing.html#{full}", "-"
    gen = "reference/random/generator.html"
    yield "numpy.random.default_rng", "py:function", f"{gen}#numpy.random.default_rng", "-"
    yield from _with_members(
        "numpy.random.Generator", numpy.random.Generator, gen, ("numpy",),
        "reference/random/generated/{}.html",
    )  # fmt: skip
    yield "array_like", "std:term", "glossary.html#term-array_like", "array_like"
    yield "arrays.scalars", "std:label", "reference/arrays.scalars.html#arrays-scalars", "Scalars"


# --------------------------------------------------------------------------- Python

# The builtin types documented in library/stdtypes.html (the rest are in functions.html).
STDTYPES = {
    "bytearray", "bytes", "dict", "frozenset", "list", "memoryview", "range", "set", "str",
    "tuple",
}  # fmt: skip
PY_MODULES = (
    "abc", "argparse", "collections", "collections.abc", "concurrent.futures", "contextlib",
    "dataclasses", "datetime", "difflib", "enum", "functools", "hashlib", "inspect", "io",
    "itertools", "json", "logging", "math", "numbers", "operator", "os", "os.path", "pathlib",
    "queue", "random", "re", "shutil", "statistics", "subprocess", "sys", "tempfile",
    "threading", "time", "types", "typing", "uuid", "warnings", "weakref",
)  # fmt: skip
PY_TERMS = (
    "annotation", "asynchronous iterable", "awaitable", "bytes-like object", "callable",
    "context manager", "coroutine", "decorator", "dictionary", "file object", "generator",
    "hashable", "immutable", "iterable", "iterator", "keyword argument", "mapping", "mutable",
    "path-like object", "positional argument", "sequence", "type hint",
)  # fmt: skip


def python_entries() -> Iterator[Entry]:
    """Python: builtins, exceptions, constants, common modules and glossary terms."""
    for name in _public(dir(builtins)):
        value = getattr(builtins, name)
        if name in ("None", "True", "False", "NotImplemented", "Ellipsis"):
            yield name, "py:data", f"library/constants.html#{name}", "-"
        elif inspect.isclass(value) and issubclass(value, BaseException):
            yield name, "py:exception", f"library/exceptions.html#{name}", "-"
        elif name in STDTYPES:
            yield name, "py:class", f"library/stdtypes.html#{name}", "-"
            for member, role in _members(value, ("builtins",)):
                full = f"{name}.{member}"
                yield full, role, f"library/stdtypes.html#{full}", "-"
        elif inspect.isclass(value):
            yield name, "py:class", f"library/functions.html#{name}", "-"
        elif callable(value):
            yield name, "py:function", f"library/functions.html#{name}", "-"
    for module_name in PY_MODULES:
        module = importlib.import_module(module_name)
        page = f"library/{module_name}.html"
        yield module_name, "py:module", f"{page}#module-{module_name}", "-"
        exported = set(getattr(module, "__all__", ()))  # os.PathLike is not in os.__all__
        for name in _public(dir(module)):
            value = getattr(module, name, None)
            if value is None or inspect.ismodule(value):
                continue
            home = getattr(value, "__module__", None) or ""
            if name not in exported and not (
                home == module_name or home.lstrip("_") == module_name.split(".")[-1]
            ):
                continue  # an import of the module's own, not its API
            full = f"{module_name}.{name}"
            if inspect.isclass(value):
                owners = (module_name, home or module_name, "_" + module_name)
                yield from _with_members(full, value, page, owners)
            else:
                yield full, _role(value), f"{page}#{full}", "-"
    for term in PY_TERMS:
        anchor = "term-" + re.sub(r"[^a-z0-9]+", "-", term.lower()).strip("-")
        yield term, "std:term", f"glossary.html#{anchor}", term
    label = "bltin-boolean-values"  # numpydoc links "bool" to it
    yield label, "std:label", f"library/stdtypes.html#{label}", "Boolean Type - bool"


# --------------------------------------------------------------------------- fsspec

FSSPEC_NAMES = (
    "fsspec.available_compressions", "fsspec.available_protocols", "fsspec.filesystem",
    "fsspec.get_filesystem_class", "fsspec.get_mapper", "fsspec.open", "fsspec.open_files",
    "fsspec.open_local", "fsspec.FSMap", "fsspec.core.OpenFile", "fsspec.core.OpenFiles",
    "fsspec.core.get_fs_token_paths", "fsspec.core.url_to_fs",
    "fsspec.registry.register_implementation", "fsspec.spec.AbstractBufferedFile",
    "fsspec.spec.Transaction", "fsspec.implementations.local.LocalFileSystem",
    "fsspec.implementations.memory.MemoryFileSystem", "fsspec.callbacks.Callback",
)  # fmt: skip


def fsspec_entries() -> Iterator[Entry]:
    """fsspec: the API page's functions and classes (one autodoc page, ``api.html``)."""
    import fsspec.spec

    yield "fsspec", "py:module", "api.html#module-fsspec", "-"
    for full in FSSPEC_NAMES:
        module_name, _, name = full.rpartition(".")
        value = getattr(importlib.import_module(module_name), name)
        yield full, _role(value), f"api.html#{full}", "-"
    yield from _with_members(
        "fsspec.spec.AbstractFileSystem", fsspec.spec.AbstractFileSystem, "api.html", ("fsspec",)
    )


# --------------------------------------------------------------------------- writing

INVENTORIES = {
    "python": ("Python", python_entries),
    "numpy": ("NumPy", numpy_entries),
    "xarray": ("xarray", xarray_entries),
    "dask": ("Dask", dask_entries),
    "distributed": ("Dask.Distributed", distributed_entries),
    "zarr": ("zarr", zarr_entries),
    "fsspec": ("fsspec", fsspec_entries),
}
DIST = {"python": None, "numpy": "numpy", "xarray": "xarray", "dask": "dask",
        "distributed": "distributed", "zarr": "zarr", "fsspec": "fsspec"}  # fmt: skip


def _version(key: str) -> str:
    from importlib.metadata import version

    dist = DIST[key]
    return version(dist) if dist else ".".join(map(str, sys.version_info[:2]))


def inventory(project: str, version: str, entries: Iterable[Entry]) -> bytes:
    """Sphinx's inventory format version 2, one line per distinct (name, role)."""
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for name, role, uri, display in entries:
        seen.setdefault((name, role), (uri, display))
    lines = []
    for (name, role), (uri, display) in sorted(seen.items()):
        if uri.endswith("#" + name):
            uri = uri[: -len(name)] + "$"  # the format's shorthand for "the name"
        lines.append(f"{name} {role} 1 {uri} {display}\n")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    return header.encode() + zlib.compress("".join(lines).encode(), 9)


def main(argv: list[str]) -> int:
    """Write every inventory (or those named in ``argv``); print what each holds."""
    for key in argv or list(INVENTORIES):
        project, entries = INVENTORIES[key]
        version = _version(key)
        data = inventory(project, version, entries())
        path = HERE / f"{key}.inv"
        path.write_bytes(data)
        count = zlib.decompress(data.split(b"zlib.\n", 1)[1]).count(b"\n")
        print(f"{path.relative_to(HERE.parent.parent)}: {project} {version}, {count} names")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
