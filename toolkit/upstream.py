"""Every use toolkit makes of its upstream libraries' private names, in one place.

toolkit writes through xarray's own Zarr backend (so that what it writes is what
xarray writes), wraps zarr's stores, and speaks to object stores through s3fs and
Icechunk. A few things it needs have no public name upstream. Each is used here
alone, as a small function or a re-export with what it stands for, since when
upstream has it, and why toolkit needs it; the rest of the package imports it
from here. ``tests/test_architecture.py`` fails when any other module imports an
upstream private name or reaches for a private attribute of an upstream object,
and ``tests/test_upstream.py`` fails, naming the upstream change, when a name
below disappears, changes its signature or behaves otherwise on a small example.
``pyproject.toml`` bounds the upstream versions these tests passed with, and
``./dev upstream`` (CI, allowed to fail) runs xarray's routed Zarr suite against
xarray's and zarr's newest releases when they are newer than those.

A private *function* is looked up when it is called: a release that removed it
leaves toolkit importable, and the call raises an :class:`ImportError` naming the
name, the installed release and this module. Classes, constants and ``sync``
are re-exported at import.

xarray (its documented API is the ``xarray`` namespace; ``xarray.backends``'s
submodules and ``xarray.conventions`` are internal):

- :func:`writable_zarr_store`: ``xarray.backends.writers.get_writable_zarr_store``
  (xarray 2025.9.1; before, in ``xarray.backends.api``)
- :func:`dump_to_store`: ``xarray.backends.writers.dump_to_store`` (2025.9.1)
- :func:`xarray_to_zarr`: ``xarray.backends.writers.to_zarr`` (2025.9.1)
- :func:`autodetect_region`: ``ZarrStore._validate_and_autodetect_region`` (2024.5)
- :func:`determine_zarr_chunks`: ``xarray.backends.zarr._determine_zarr_chunks`` (< 2024)
- :func:`extract_zarr_variable_encoding`, :func:`encode_zarr_attr_value`: the
  functions of these names in ``xarray.backends.zarr`` (< 2024)
- :func:`encode_variable_name`: ``xarray.backends.common._encode_variable_name`` (< 2024)
- :class:`ArrayWriter`: ``xarray.backends.common.ArrayWriter`` (< 2024)
- ``DATAARRAY_NAME``, ``DATAARRAY_VARIABLE``: ``xarray.backends.api``'s (< 2024)
- :func:`decode_cf_variable`: ``xarray.conventions.decode_cf_variable`` (< 2024)

zarr (all of ``zarr.core`` is private, zarr 3.1's release notes say; its buffers
are public as ``zarr.buffer`` and ``zarr.abc.buffer``, which toolkit uses):

- :func:`sync`: ``zarr.core.sync.sync`` (zarr 3.0)
- :func:`normalize_byte_range`: ``zarr.storage._utils._normalize_byte_range_index`` (3.0)
- :func:`store_supports_sync_io`: ``zarr.abc.store._store_supports_sync_io`` (3.3)
- :func:`get_many_through_get`: ``zarr.abc.store.Store._get_many`` (3.0)
- :func:`wrapped_store`: ``zarr.storage.WrapperStore._store`` (3.0)
- :func:`memory_store_dict`: ``zarr.storage.MemoryStore._store_dict`` (3.0)
- :func:`async_group`: ``zarr.Group._async_group`` (3.0)
- :func:`is_zarr_chunk_task`: the name of ``zarr.core.common.concurrent_iter`` (3.3)
- ``STORE_HOOKS``: the private methods of zarr's ``Store`` and ``WrapperStore`` that
  toolkit's wrappers override (``_with_store`` 3.2, ``_supports_sync_io`` 3.3,
  ``_get_many`` and ``_set_many`` 3.0)

fsspec and s3fs:

- :func:`call_s3`: ``s3fs.S3FileSystem._call_s3`` (s3fs < 2024)
- :func:`pipe_file_create`: ``_pipe_file(path, data, mode="create")`` (fsspec's async
  API; ``mode="create"`` in s3fs 2024.12)

Icechunk:

- :func:`session_bytes`: ``Session._session.as_bytes()`` (icechunk 1.0)
- :func:`fork_from_bytes`: ``icechunk._icechunk_python.PySession.from_bytes`` (1.0)
- ``ICECHUNK_SESSION_FIELDS``, ``ICECHUNK_FORK_FIELDS``: the layout of a serialized
  session (icechunk 2.3)

Each function's docstring says why toolkit needs the name. numpy's private
``_lerp`` is only cited (``toolkit.stats.aggregations`` repeats its formula).

This module imports upstream libraries only, never another toolkit module
(``pyproject.toml``'s layers), so that every layer may use it.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
from collections.abc import AsyncGenerator, Hashable, Iterable, Mapping, MutableMapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

# Re-exported at import (toolkit subclasses ArrayWriter, and calls sync everywhere):
# a release without them makes ``import toolkit`` fail, naming them.
from xarray.backends.api import DATAARRAY_NAME, DATAARRAY_VARIABLE
from xarray.backends.common import ArrayWriter
from zarr.abc.store import Store
from zarr.core.sync import sync

if TYPE_CHECKING:
    import xarray as xr
    import zarr
    from zarr.abc.buffer import Buffer, BufferPrototype
    from zarr.abc.store import ByteRequest
    from zarr.storage import MemoryStore, WrapperStore

__all__ = [
    "DATAARRAY_NAME",
    "DATAARRAY_VARIABLE",
    "ICECHUNK_FORK_FIELDS",
    "ICECHUNK_SESSION_FIELDS",
    "STORE_HOOKS",
    "ArrayWriter",
    "async_group",
    "autodetect_region",
    "call_s3",
    "decode_cf_variable",
    "determine_zarr_chunks",
    "dump_to_store",
    "encode_variable_name",
    "encode_zarr_attr_value",
    "extract_zarr_variable_encoding",
    "fork_from_bytes",
    "get_many_through_get",
    "is_zarr_chunk_task",
    "memory_store_dict",
    "normalize_byte_range",
    "pipe_file_create",
    "session_bytes",
    "store_supports_sync_io",
    "sync",
    "wrapped_store",
    "writable_zarr_store",
    "xarray_to_zarr",
]


def _changed(what: str, error: BaseException) -> ImportError:
    """The error for a private name that the installed upstream release no longer has."""
    dist = what.partition(".")[0]
    try:
        release = f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        release = dist
    return ImportError(
        f"toolkit relies on {what}, which {release} does not have ({error}); toolkit is "
        f"tested with the {dist} releases its pyproject.toml allows (see toolkit.upstream)"
    )


def _private(module: str, name: str) -> Any:
    """``module.name``, or an :class:`ImportError` saying that upstream changed."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise _changed(f"{module}.{name}", e) from None


def _attribute(obj: Any, name: str, what: str) -> Any:
    """``obj.name`` (``what`` names it upstream), or an :class:`ImportError` saying so."""
    try:
        return getattr(obj, name)
    except AttributeError as e:
        raise _changed(what, e) from None


# --------------------------------------------------------------------------- xarray


def writable_zarr_store(store: Any, **kwargs: Any) -> Any:
    """The ``ZarrStore`` xarray writes to: ``xarray.backends.writers.get_writable_zarr_store``.

    What ``Dataset.to_zarr`` opens before it writes (``mode``, ``group``,
    ``append_dim``, ``region``, ``zarr_format``, ...: its keywords). toolkit writes
    its metadata round through it so that the arrays are created, resized and
    encoded exactly as xarray creates them. In ``xarray.backends.api`` before
    2025.9.1 (xarray#10771 moved it).
    """
    return _private("xarray.backends.writers", "get_writable_zarr_store")(store, **kwargs)


def dump_to_store(
    dataset: xr.Dataset, store: Any, writer: Any, *, encoding: Mapping[Hashable, Any]
) -> None:
    """Encode ``dataset`` into xarray's ``store`` through ``writer``: ``xarray.backends.writers``.

    The step of ``Dataset.to_zarr`` between opening the store and computing:
    CF encoding, array creation, attributes, and ``writer.add(source, target)``
    for each variable's data. toolkit's writer (an :class:`ArrayWriter`) keeps
    the dask sources for its own graph. 2025.9.1 (before: ``xarray.backends.api``).
    """
    fn = _private("xarray.backends.writers", "dump_to_store")
    fn(dataset, store, writer, encoding=dict(encoding))


def xarray_to_zarr(dataset: xr.Dataset, store: Any, **kwargs: Any) -> Any:
    """The write of ``Dataset.to_zarr`` without the method: ``xarray.backends.writers.to_zarr``.

    Not the method: a user may have replaced ``xarray.Dataset.to_zarr`` by
    toolkit's, and toolkit's probe writes (:func:`toolkit.plan_write`'s encoding
    checks, in memory) must not come back into toolkit. Takes ``zarr_format``,
    which its typing overloads leave out. 2025.9.1 (before: ``xarray.backends.api``).
    """
    return _private("xarray.backends.writers", "to_zarr")(dataset, store, **kwargs)


def autodetect_region(zstore: Any, dataset: xr.Dataset) -> xr.Dataset:
    """``dataset`` as xarray writes it into ``zstore``: its ``_validate_and_autodetect_region``.

    xarray's ``ZarrStore._validate_and_autodetect_region`` resolves ``region="auto"``
    (and per-dimension ``"auto"``) against the stored index coordinates and drops
    the variables a region write leaves alone, as ``Dataset.to_zarr`` does before
    it writes. xarray 2024.5 (a method of ``ZarrStore`` since).
    """
    what = "xarray.backends.zarr.ZarrStore._validate_and_autodetect_region"
    out: xr.Dataset = _attribute(zstore, "_validate_and_autodetect_region", what)(dataset)
    return out


def determine_zarr_chunks(
    enc_chunks: Any, var_chunks: Any, ndim: int, name: Hashable
) -> tuple[int, ...] | None:
    """A variable's ``encoding["chunks"]`` checked and normalized as xarray does it.

    ``xarray.backends.zarr._determine_zarr_chunks``: an int becomes one per
    dimension; chunks of the wrong length are dropped (then the dask chunks',
    ``var_chunks``, or None: zarr's own); a wrong type raises
    :class:`TypeError`, uneven dask chunks :class:`ValueError`. toolkit plans
    with the chunks xarray would write, and refuses what xarray refuses, before
    anything is written. xarray < 2024.
    """
    fn = _private("xarray.backends.zarr", "_determine_zarr_chunks")
    out: tuple[int, ...] | None = fn(enc_chunks, var_chunks, ndim, name)
    return out


def extract_zarr_variable_encoding(
    variable: xr.Variable, *, raise_on_invalid: bool, name: Hashable, zarr_format: int
) -> dict[str, Any]:
    """The Zarr encoding xarray keeps of ``variable``'s: ``xarray.backends.zarr``'s function.

    With ``raise_on_invalid``, unknown keys raise :class:`ValueError` as
    ``encoding=`` does in ``Dataset.to_zarr``. toolkit runs it at plan time so
    that a bad encoding fails before anything is written. xarray < 2024
    (``zarr_format`` keyword since 2024.10).
    """
    fn = _private("xarray.backends.zarr", "extract_zarr_variable_encoding")
    out: dict[str, Any] = fn(
        variable, raise_on_invalid=raise_on_invalid, name=name, zarr_format=zarr_format
    )
    return out


def encode_zarr_attr_value(value: Any) -> Any:
    """``value`` as xarray stores it in Zarr's JSON attributes: ``xarray.backends.zarr``'s.

    numpy scalars become numbers, arrays lists. toolkit checks every attribute
    at plan time with exactly what the write will store. xarray < 2024.
    """
    return _private("xarray.backends.zarr", "encode_zarr_attr_value")(value)


def encode_variable_name(name: Hashable) -> Hashable:
    """The name a variable is stored under: ``xarray.backends.common._encode_variable_name``.

    A variable named ``None`` is stored as ``"__values__"`` and read back as
    ``None``; toolkit renames it so before planning, as xarray does while
    writing. xarray < 2024.
    """
    out: Hashable = _private("xarray.backends.common", "_encode_variable_name")(name)
    return out


def decode_cf_variable(name: Hashable, var: xr.Variable, **kwargs: Any) -> xr.Variable:
    """``var`` CF-decoded as xarray's readers decode it: ``xarray.conventions.decode_cf_variable``.

    (Not in xarray's API reference.) For reads that decode one variable at a
    time, as ``open_zarr`` would. xarray < 2024.
    """
    out: xr.Variable = _private("xarray.conventions", "decode_cf_variable")(name, var, **kwargs)
    return out


# --------------------------------------------------------------------------- zarr

#: zarr's private hooks that toolkit's ``Store`` wrappers override, and why. zarr
#: calls them on a wrapper; ``tests/test_upstream.py`` checks that it still does.
STORE_HOOKS: Mapping[str, str] = MappingProxyType(
    {
        # zarr 3.2: WrapperStore.with_read_only and __enter__ rebuild the wrapper with it.
        "_with_store": "a copy of the wrapper (its settings kept) around another store",
        # zarr 3.3: read by zarr.abc.store._store_supports_sync_io before a sync fast path.
        "_supports_sync_io": "False: zarr's synchronous fast paths would bypass the wrapper",
        # zarr 3.0: WrapperStore forwards batch reads and writes to the wrapped store.
        "_get_many": "batch reads as the wrapper's own gets (not the wrapped store's)",
        "_set_many": "batch writes as the wrapper's own sets (not the wrapped store's)",
    }
)


def normalize_byte_range(data: Buffer, byte_range: ByteRequest | None) -> tuple[int, int]:
    """``(start, stop)`` of ``byte_range`` in ``data``, as zarr's stores answer a ranged read.

    ``zarr.storage._utils._normalize_byte_range_index`` (``None``, a range, an
    offset, a suffix): toolkit's wrappers that answer a ``get`` from bytes they
    hold answer it the same way. ``stop`` may be past the end. zarr 3.0.
    """
    fn = _private("zarr.storage._utils", "_normalize_byte_range_index")
    start, stop = fn(data, byte_range)
    return int(start), int(stop)


def store_supports_sync_io(store: Store) -> bool:
    """Whether zarr may use ``store``'s synchronous fast path: ``_store_supports_sync_io``.

    ``zarr.abc.store._store_supports_sync_io``, which reads a store's
    ``_supports_sync_io`` (absent: capable). A wrapper of toolkit's that is
    transparent (metrics) says what the store it wraps says. zarr 3.3.
    """
    return bool(_private("zarr.abc.store", "_store_supports_sync_io")(store))


def get_many_through_get(
    store: Store, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
) -> AsyncGenerator[tuple[str, Buffer | None], None]:
    """``store``'s batch read as one ``store.get`` per request: zarr's base ``Store._get_many``.

    ``WrapperStore._get_many`` forwards a batch to the wrapped store, past the
    wrapper; toolkit's wrappers send each request through their own ``get``
    (budget, retries, metrics) instead. zarr 3.0.
    """
    what = "zarr.abc.store.Store._get_many"
    out: AsyncGenerator[tuple[str, Buffer | None], None] = _attribute(Store, "_get_many", what)(
        store, requests
    )
    return out


def wrapped_store(store: WrapperStore[Any]) -> Store:
    """The store a zarr ``WrapperStore`` wraps: its ``_store``.

    To walk a stack of wrappers (toolkit's and other libraries') down to the
    client store at the bottom. Toolkit's own wrappers subclass
    ``WrapperStore`` and keep the wrapped store there too. zarr 3.0.
    """
    out: Store = _attribute(store, "_store", "zarr.storage.WrapperStore._store")
    return out


def memory_store_dict(store: MemoryStore) -> MutableMapping[str, Buffer]:
    """The dict behind a zarr ``MemoryStore``: its ``_store_dict``.

    The only way to check a key and write it in one step (toolkit's conditional
    writes to memory stores, under one lock per dict): the store's own methods
    are separate awaits. zarr 3.0.
    """
    out: MutableMapping[str, Buffer] = _attribute(
        store, "_store_dict", "zarr.storage.MemoryStore._store_dict"
    )
    return out


def async_group(group: zarr.Group) -> zarr.AsyncGroup:
    """The ``AsyncGroup`` behind a ``zarr.Group``: its ``_async_group``.

    To read a group's member documents concurrently with ``AsyncGroup.getitem``
    and tell a damaged one from a missing one (``Group.arrays()`` skips both).
    zarr 3.0.
    """
    out: zarr.AsyncGroup = _attribute(group, "_async_group", "zarr.Group._async_group")
    return out


def is_zarr_chunk_task(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is one of the per-chunk tasks of zarr's ``concurrent_map``.

    Told by its coroutine's name (``zarr.core.common.concurrent_iter``'s inner
    function): ``concurrent_map`` gathers them without cancelling them, and
    toolkit waits for the ones a failed call leaves behind before a write ends
    (else Python prints "Task was destroyed but it is pending"). zarr 3.3 (before,
    ``concurrent_map``'s own inner function).
    """
    return "concurrent_iter" in getattr(task.get_coro(), "__qualname__", "")


# --------------------------------------------------------------------------- fsspec, s3fs


async def call_s3(fs: Any, method: str, **kwargs: Any) -> Any:
    """One S3 request ``method`` (botocore's name) through an s3fs filesystem: ``_call_s3``.

    s3fs's own client, session and options, for the requests s3fs has no
    method for: conditional ``put_object`` (``IfMatch``, ``IfNoneMatch``) and
    ``get_object`` with its ETag, and one plain ``list_objects_v2`` per page.
    s3fs < 2024.
    """
    what = "s3fs.S3FileSystem._call_s3"
    return await _attribute(fs, "_call_s3", what)(method, **kwargs)


async def pipe_file_create(fs: Any, path: str, data: bytes) -> None:
    """Create ``path`` with ``data`` unless it exists: ``_pipe_file(path, data, mode="create")``.

    fsspec's async method (its async API is the underscored one); s3fs sends
    ``If-None-Match: *`` for ``mode="create"`` and raises
    :class:`FileExistsError` when the key is there. s3fs 2024.12.
    """
    what = "fsspec.asyn.AsyncFileSystem._pipe_file"
    await _attribute(fs, "_pipe_file", what)(path, data, mode="create")


# --------------------------------------------------------------------------- icechunk

# A serialized Icechunk session (``Session::as_bytes``) is a MessagePack array of
# ten fields: the repository's configuration, storage settings and storage
# (twice), the virtual chunk resolver, the read-only flag, the branch, the
# snapshot id, the change set and the default commit metadata (icechunk 2.3). The
# storage fields may hold a credential fetcher that Icechunk unpickles: toolkit
# takes only the snapshot id and the change set from a fork read from shared
# storage (toolkit.write.icechunk).

#: The number of fields of a serialized Icechunk session.
ICECHUNK_SESSION_FIELDS = 10
#: The fields a fork contributes (its snapshot id and its change set).
ICECHUNK_FORK_FIELDS = (7, 8)


def session_bytes(session: Any) -> bytes:
    """An Icechunk ``Session`` (or ``ForkSession``) serialized: ``session._session.as_bytes()``.

    What ``ForkSession.__getstate__`` pickles; toolkit writes it to shared
    storage without pickle, so that a committer never unpickles what another
    job wrote. icechunk 1.0.
    """
    inner = _attribute(session, "_session", "icechunk.Session._session")
    return bytes(inner.as_bytes())


def fork_from_bytes(data: bytes) -> Any:
    """An Icechunk ``ForkSession`` from :func:`session_bytes`'s bytes.

    ``ForkSession(icechunk._icechunk_python.PySession.from_bytes(data))``, what
    ``ForkSession.__setstate__`` does, without pickle. icechunk 1.0.
    """
    import icechunk

    py_session = _private("icechunk._icechunk_python", "PySession")
    return icechunk.ForkSession(py_session.from_bytes(data))
