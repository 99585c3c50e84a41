"""Aligned reads: dask chunks in whole write units, and bounded-parallel streaming.

:func:`open_zarr` gives each variable dask chunks that are whole multiples of its
write unit (the shard, else the chunk), near a target size, so no two tasks fetch
the same stored object and each task fetches its objects in one concurrent zarr
call. :func:`iter_chunks` and :func:`map_chunks` stream blocks with a bounded
number in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextvars
import functools
import itertools
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from zarr.abc.store import Store
from zarr.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from toolkit.cluster.budgets import cluster_share
from toolkit.cluster.coordinator import remote_budget_for
from toolkit.cluster.executor import executor
from toolkit.coordination.records import aread_records, read_records
from toolkit.errors import CorruptChunkError, IncompleteStoreError, ToolkitError
from toolkit.io.buffer import MetadataBuffer
from toolkit.io.calls import local_slices, zarr_parts
from toolkit.io.clients import list_page
from toolkit.io.extent import consistent_view
from toolkit.io.groups import RESERVED_PREFIX, ExistingGroup, array_dims, open_existing
from toolkit.io.stores import StoreLike, describe_store, resolve_store, store_label, unwrap
from toolkit.io.throttle import Throttle, resolve_throttle
from toolkit.io.wrappers import InterceptStore, wrap_store
from toolkit.upstream import decode_cf_variable, sync

__all__ = [
    "DEFAULT_READ_TASK_BYTES",
    "aligned_chunks",
    "iter_chunks",
    "map_chunks",
    "open_datatree",
    "open_zarr",
]

DEFAULT_READ_TASK_BYTES = 128 * 2**20
"""Default target size of one read task (128 MiB)."""

T = TypeVar("T")
Block = Any


def aligned_chunks(
    shape: Sequence[int], unit: Sequence[int], itemsize: int, target_bytes: int
) -> tuple[tuple[int, ...], ...]:
    """Dask chunks in whole units of ``unit``, each block near ``target_bytes``.

    Blocks grow from the last (fastest-varying) axis outward, so that a block is
    as contiguous as possible; a unit larger than the target is one block.
    """
    mult = [1] * len(shape)
    nunits = [max(1, -(-n // u)) for n, u in zip(shape, unit, strict=True)]
    block = itemsize * math.prod(min(u, n) for u, n in zip(unit, shape, strict=True))
    for axis in reversed(range(len(shape))):
        if block * nunits[axis] <= target_bytes:
            mult[axis] = nunits[axis]
            block *= nunits[axis]
            continue
        mult[axis] = max(1, target_bytes // max(block, 1))
        break
    out = []
    for n, u, m in zip(shape, unit, mult, strict=True):
        step = u * m
        sizes = [step] * (n // step) + ([n % step] if n % step else [])
        out.append(tuple(sizes) or (0,))
    return tuple(out)


def open_zarr(
    store: StoreLike,
    *,
    group: str | None = None,
    consolidated: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
    target_task_bytes: int = DEFAULT_READ_TASK_BYTES,
    throttle: Throttle | Literal[False] | None = None,
    incomplete: Literal["raise", "warn", "ignore"] = "raise",
    chunks: Any = "aligned",
    **open_kwargs: Any,
) -> xr.Dataset:
    """Open a Zarr store lazily, chunked in whole write units.

    Reads go through toolkit's store stack: the throttle's budget (enforced
    for the whole cluster under an active ``distributed`` client), its
    retries, and I/O metrics. The metrics add up per process, and
    :func:`toolkit.io_metrics` gathers them. With a throttle, each aligned read task
    keeps up to the in-flight cap of requests going (in as many concurrent zarr
    calls as zarr's own cap per call, ``async.concurrency``, needs), so that two
    dask threads still keep many requests in flight.

    Parameters
    ----------
    store : str, os.PathLike or zarr Store
        Path, URL or store.
    group : str, optional
        Group inside the store.
    consolidated : bool, optional
        As in :func:`xarray.open_zarr`.
    storage_options : dict, optional
        fsspec options for URLs.
    target_task_bytes : int
        Target size of one read task (default 128 MiB).
    throttle : Throttle, False or None
        Request budget: ``None`` takes the URL's defaults (none for local
        paths), ``False`` none.
    incomplete : {"raise", "warn", "ignore"}
        What to do when the store holds the record of an unfinished write
        (failed, or still running): raise
        :class:`~toolkit.errors.IncompleteStoreError` (default), warn, or
        read anyway. Missing units read as fill values.
    chunks : "aligned", None, dict, int or "auto"
        ``"aligned"`` (default): dask chunks of whole write units (shards, else
        chunks), about ``target_task_bytes`` each, named ``toolkit-read-<variable>``
        and a token that changes when the store is rewritten (the arrays' metadata,
        the writes toolkit recorded as landed and, in a directory, the metadata
        documents' modification times), so that a persisted collection or
        distributed's cache never answers for a later open.
        Anything else means what it means to :func:`xarray.open_dataset`: ``None``
        lazily indexed numpy-backed variables, ``{}`` the store's own chunks,
        ``"auto"`` dask's choice. Every choice reads through the same budget,
        retries and metrics.
    **open_kwargs
        Passed to :func:`xarray.open_zarr` (``decode_times``, ``drop_variables``, ...).

    Returns
    -------
    xarray.Dataset
        Dask-backed in aligned chunks unless ``chunks`` says otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> import xarray as xr
    >>> import toolkit
    >>> ds = xr.Dataset(
    ...     {"t2m": (("time", "x"), np.arange(48.0).reshape(12, 4))},
    ...     coords={"time": np.arange(12)},
    ... ).chunk({"time": 5})
    >>> _ = toolkit.to_zarr(ds, "example.zarr", encoding={"t2m": {"chunks": (4, 4)}})
    >>> toolkit.open_zarr("example.zarr").t2m.chunks  # whole stored chunks per task
    ((12,), (4,))
    >>> toolkit.open_zarr("example.zarr", chunks={}).t2m.chunks  # one task per chunk
    ((4, 4, 4), (4,))
    """
    if incomplete not in ("raise", "warn", "ignore"):
        raise ValueError(f"incomplete= must be 'raise', 'warn' or 'ignore', got {incomplete!r}")
    policy = resolve_throttle(throttle, store_label(store))
    plain = resolve_store(store, storage_options=storage_options, throttle=policy)
    scope = describe_store(plain)
    share = cluster_share(policy, executor())
    # Metadata read to plan the chunks is not read again by xarray's open.
    zstore = MetadataBuffer(wrap_store(plain, share, scope=scope, remote=remote_budget_for))
    aligned = isinstance(chunks, str) and chunks == "aligned"
    with cf.ThreadPoolExecutor(3, thread_name_prefix="toolkit-open") as pool:
        # The group, the write records and the written history are independent: one
        # round trip, not three.
        opening = pool.submit(open_existing, zstore, group)
        records = pool.submit(read_records, zstore, group) if incomplete != "ignore" else None
        history = pool.submit(_written_history, zstore, group) if aligned else None
        existing = opening.result()
        if existing is None:
            raise FileNotFoundError(f"no Zarr group at {scope}")
        if records is not None:
            _check_complete(records.result(), scope, incomplete)
        written = history.result() if history is not None else ()
    # The format is known now: xarray need not probe the other one's keys (.zgroup,
    # .zattrs, .zmetadata for a v3 group), which costs a round trip.
    open_kwargs = {"zarr_format": existing.zarr_format, **open_kwargs}
    if aligned:
        open_kwargs = {"cache": False, **open_kwargs}

    def opened(where: Store) -> xr.Dataset:
        return xr.open_dataset(
            where,  # type: ignore[arg-type]  # xarray's zarr engine takes zarr stores
            engine="zarr",
            group=group,
            consolidated=consolidated,
            chunks=None if aligned else chunks,
            **open_kwargs,
        )

    try:
        try:
            ds = opened(zstore)
        except ValueError as e:
            if "conflicting sizes" not in str(e):
                raise
            # Appended rows being published (or a publication cut short by a kill):
            # wait a moment for it, then show the rows every array has.
            ds = _settled(
                opened,
                lambda: wrap_store(plain, share, scope=scope, remote=remote_budget_for),
                group,
            )
    except ToolkitError:
        raise
    except Exception as e:
        # xarray decodes dimension coordinates while it opens (for their indexes),
        # and the first and last times of each variable: a damaged chunk of one
        # fails here, and is named like any other.
        bad = _undecodable_on_open(zstore, group, consolidated, open_kwargs, existing)
        if not bad:
            raise
        raise _corrupt(bad, e) from e
    if not aligned:
        return ds
    return _aligned(ds, existing, written, plain, scope, group, target_task_bytes, share)


def _aligned(
    ds: xr.Dataset,
    existing: ExistingGroup,
    written: tuple[str, ...],
    plain: Store,
    scope: str,
    group: str | None,
    target_task_bytes: int,
    share: Throttle | None,
) -> xr.Dataset:
    """``ds`` (opened lazily, without dask) in dask chunks of whole write units."""
    # What changes when the stored values do, so that a reopened store's tasks are
    # not taken for the old ones (a persisted collection, distributed's cache).
    token = tokenize(scope, group, target_task_bytes, written)
    stamps = _array_stamps(plain, existing)
    out = {}
    for name, var in ds.variables.items():
        if name in ds.indexes:
            continue
        arr = existing.arrays.get(str(name))
        if arr is None or var.ndim == 0:
            continue
        unit = arr.shards or arr.chunks
        chunks = aligned_chunks(var.shape, unit, var.dtype.itemsize, target_task_bytes)
        data = da.from_array(
            _NamedChunkErrors(var, arr, share.max_inflight if share is not None else 0),
            chunks=chunks,
            name=f"toolkit-read-{name}-{tokenize(token, name, chunks, stamps.get(str(name)))}",
            meta=np.empty((0,) * var.ndim, dtype=var.dtype),
        )
        out[name] = var.copy(deep=False, data=data)
    return ds.assign({str(k): v for k, v in out.items() if k in ds.data_vars}).assign_coords(
        {str(k): v for k, v in out.items() if k in ds.coords}
    )


# Where toolkit's writes leave their checksum fragments and the folded manifest
# (toolkit.coordination.manifest): every write that lands adds a fragment named after it.
_HISTORY = f"{RESERVED_PREFIX}/manifest"


def open_datatree(
    store: StoreLike,
    *,
    group: str | None = None,
    consolidated: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
    target_task_bytes: int = DEFAULT_READ_TASK_BYTES,
    throttle: Throttle | Literal[False] | None = None,
    incomplete: Literal["raise", "warn", "ignore"] = "raise",
    chunks: Any = "aligned",
    **open_kwargs: Any,
) -> xr.DataTree:
    """Open every group of a Zarr store as an :class:`xarray.DataTree`, as :func:`open_zarr` does.

    The tree equals ``xr.open_datatree(store, engine="zarr")``; each node is
    opened by :func:`open_zarr` (aligned dask chunks of whole write units, the
    request budget, a refusal of groups with unfinished writes), all nodes at
    once: the groups are found from the metadata (consolidated when the store
    has it), then every node's open runs concurrently. The parameters are
    :func:`open_zarr`'s; ``group`` is the tree's root group.

    Examples
    --------
    >>> import numpy as np
    >>> import xarray as xr
    >>> import toolkit
    >>> root = xr.Dataset({"a": ("x", np.arange(4.0))})
    >>> tree = xr.DataTree.from_dict({"/": root, "/fine": xr.Dataset({"b": ("y", [1, 2])})})
    >>> _ = toolkit.to_zarr(tree, "tree.zarr", mode="w", progress=False)
    >>> toolkit.open_datatree("tree.zarr").groups
    ('/', '/fine')
    """
    if incomplete not in ("raise", "warn", "ignore"):
        raise ValueError(f"incomplete= must be 'raise', 'warn' or 'ignore', got {incomplete!r}")
    policy = resolve_throttle(throttle, store_label(store))
    plain = resolve_store(store, storage_options=storage_options, throttle=policy)
    share = cluster_share(policy, executor())
    scope = describe_store(plain)
    stack = wrap_store(plain, share, scope=scope, remote=remote_budget_for)
    # One buffer for the whole tree: a document read once is never read again.
    zstore = MetadataBuffer(stack)
    root = (group or "").strip("/")
    with cf.ThreadPoolExecutor(1, thread_name_prefix="toolkit-open") as pool:
        # Beside the root's documents, the tree's first page of keys: a small tree's
        # records and histories, all of them, in the same round trip.
        first = (
            pool.submit(
                contextvars.copy_context().run, sync, _apage(stack, f"{root}/" if root else "")
            )
            if stack.supports_listing and (incomplete != "ignore" or chunks == "aligned")
            else None
        )
        found = zarr.open_group(zstore, path=root, mode="r", use_consolidated=consolidated)
        page = first.result() if first is not None else None
    groups = sorted(
        name
        for name, member in found.members(max_depth=None)
        if isinstance(member, zarr.Group) and RESERVED_PREFIX not in name.split("/")
    )
    paths = ["", *groups]
    options = {
        "consolidated": consolidated,
        "target_task_bytes": target_task_bytes,
        "incomplete": incomplete,
        "chunks": chunks,
        **open_kwargs,
    }
    if found.metadata.consolidated_metadata is not None:
        tree = _open_consolidated_tree(
            found, paths, zstore, plain, root, share, scope, options, page
        )
        if tree is not None:
            return tree

    def open_node(rel: str) -> xr.Dataset:
        return open_zarr(
            plain,
            group="/".join(p for p in (root, rel) if p) or None,
            throttle=policy if policy is not None else False,
            **options,
        )

    with cf.ThreadPoolExecutor(min(16, len(paths)), thread_name_prefix="toolkit-open") as pool:
        # Each in a copy of this thread's context (toolkit's runtime goes along).
        futures = [pool.submit(contextvars.copy_context().run, open_node, p) for p in paths]
        datasets = [f.result() for f in futures]
    return xr.DataTree.from_dict({"/" + rel: ds for rel, ds in zip(paths, datasets, strict=True)})


def _open_consolidated_tree(
    found: zarr.Group,
    paths: Sequence[str],
    zstore: Store,
    plain: Store,
    root: str,
    share: Throttle | None,
    scope: str,
    options: Mapping[str, Any],
    page: tuple[list[str], bool] | None,
) -> xr.DataTree | None:
    """The tree of a consolidated store in one more round trip; None to open node by node.

    Every node's metadata is in the root's consolidated document (read already):
    xarray opens all groups from it (:func:`xarray.open_groups`, as
    ``xr.open_datatree`` does) while every node's write records and written
    history are listed, all at once. Anything xarray's open raises (appended
    rows being published, a damaged coordinate chunk, an option it does not
    take) sends the caller to the node-by-node open, which waits, names or
    raises as :func:`open_zarr` does.
    """
    chunks = options["chunks"]
    incomplete = options["incomplete"]
    target_task_bytes = options["target_task_bytes"]
    aligned = isinstance(chunks, str) and chunks == "aligned"
    rest = {k: v for k, v in options.items() if k not in ("target_task_bytes", "incomplete")}
    rest["chunks"] = None if aligned else chunks
    rest = {"zarr_format": found.metadata.zarr_format, **rest}
    if aligned:
        rest = {"cache": False, **rest}
    groups = ["/".join(p for p in (root, rel) if p) or None for rel in paths]

    def opened() -> dict[str, xr.Dataset]:
        return xr.open_groups(zstore, engine="zarr", group=root or None, **rest)  # type: ignore[arg-type]

    async def listed() -> list[tuple[list[dict[str, Any]], tuple[str, ...]]]:
        # Every node's records and history: from the tree's first page of keys when it
        # held them all (no request unless a record is there), else listed at once.
        keys = page[0] if page is not None and page[1] else None
        want = {"records": incomplete != "ignore", "history": aligned}
        states = [_anode_state(zstore, g, listed=keys, **want) for g in groups]
        return list(await asyncio.gather(*states))

    with cf.ThreadPoolExecutor(1, thread_name_prefix="toolkit-open") as pool:
        # xarray's open, beside the listings (in a copy of this thread's context).
        opening = pool.submit(contextvars.copy_context().run, opened)
        states = sync(listed())
        for records, _ in states:
            _check_complete(records, scope, incomplete)
        try:
            datasets = opening.result()
        except ToolkitError:
            raise
        except Exception:
            return None
    # xarray names the groups from the tree's root: "/", "/child" ("." for a group's own).
    by_path = {("" if k.strip("/") == "." else k.strip("/")): ds for k, ds in datasets.items()}
    out = {}
    for rel, g, (_, done) in zip(paths, groups, states, strict=True):
        ds = by_path[rel]
        if aligned:
            node = found[rel] if rel else found
            assert isinstance(node, zarr.Group)
            arrays = {name: a for name, a in node.arrays() if isinstance(a, zarr.Array)}
            existing = ExistingGroup(
                zarr_format=found.metadata.zarr_format,
                arrays=arrays,
                dims={k: array_dims(a) for k, a in arrays.items()},
            )
            ds = _aligned(ds, existing, done, plain, scope, g, target_task_bytes, share)
        out["/" + rel] = ds
    return xr.DataTree.from_dict(out)


async def _anode_state(
    store: Store,
    group: str | None,
    *,
    records: bool,
    history: bool,
    listed: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """A group's unfinished write records and written history, from one listing.

    One LIST of the group's ``.toolkit/`` (LISTs are paced: one per group, not
    two), or ``listed`` (a whole listing of the group, or of a tree holding it),
    then the records found fetched at once (none in a finished store).
    """
    if not (records or history) or (listed is None and not store.supports_listing):
        return [], ()
    top = f"{group.strip('/')}/" if group and group.strip("/") else ""
    keys = (
        [k async for k in store.list_prefix(f"{top}{RESERVED_PREFIX}/")]
        if listed is None
        else [k for k in listed if k.startswith(f"{top}{RESERVED_PREFIX}/")]
    )
    written = tuple(sorted(k for k in keys if k.startswith(top + _HISTORY))) if history else ()
    return (await aread_records(store, group, listed=keys) if records else []), written


async def _apage(store: Store, prefix: str) -> tuple[list[str], bool]:
    """One LIST request's keys under ``prefix`` and whether that is all (through ``store``)."""
    if isinstance(store, InterceptStore):
        return await store.list_page(prefix)
    return await list_page(store, prefix)


def _written_history(store: Store, group: str | None) -> tuple[str, ...]:
    """The keys of the writes the group's manifest has recorded (one LIST request).

    Each toolkit write that lands leaves a fragment named after the write (a
    write of other values has another name), so this changes with every
    rewrite, whole or of a region, whatever the store.
    """
    return sync(_awritten_history(store, group))


async def _awritten_history(store: Store, group: str | None) -> tuple[str, ...]:
    if not store.supports_listing:
        return ()
    root = f"{group.strip('/')}/" if group and group.strip("/") else ""
    return tuple(sorted([k async for k in store.list_prefix(root + _HISTORY)]))


def _array_stamps(store: Store, existing: ExistingGroup) -> dict[str, tuple[Any, ...]]:
    """Per array, what changes when it is rewritten, known without a request.

    Its metadata document (shape, layout, attributes: an append changes it),
    and in a directory store the document's modification time, size and inode
    (every write that creates or resizes the array rewrites it, whatever wrote it).
    """
    base = unwrap(store)
    root = Path(base.root) if isinstance(base, LocalStore) else None
    out: dict[str, tuple[Any, ...]] = {}
    for name, arr in existing.arrays.items():
        docs = arr.metadata.to_buffer_dict(default_buffer_prototype())
        stamp: list[Any] = [(k, v.to_bytes()) for k, v in sorted(docs.items())]
        if root is not None:
            for key in sorted(docs):
                try:
                    st = (root / arr.path / key).stat()
                except OSError:
                    continue
                stamp.append((key, st.st_mtime_ns, st.st_size, st.st_ino))
        out[name] = tuple(stamp)
    return out


# Keywords of xarray's open that say how variables are decoded.
_DECODING = (
    "mask_and_scale",
    "decode_times",
    "decode_timedelta",
    "use_cftime",
    "concat_characters",
)


def _undecodable_on_open(
    store: Store,
    group: str | None,
    consolidated: bool | None,
    open_kwargs: Mapping[str, Any],
    existing: ExistingGroup,
) -> list[str]:
    """Keys of damaged chunks among those xarray reads while it opens.

    xarray loads each dimension coordinate whole (for its index) and decodes
    the first and last values of every variable with times. Those chunks are
    read again one by one, undecoded, then decoded as xarray decodes them (a
    chunk of garbage may be bytes zarr decodes, as times that overflow).
    Empty if the store cannot be opened even undecoded (another failure).
    """
    decode: dict[str, Any] = {"stack_char_dim": False}
    if open_kwargs.get("decode_cf") is False:
        decode.update(dict.fromkeys(_DECODING, False), use_cftime=None)
    else:
        decode.update({k: v for k, v in open_kwargs.items() if k in _DECODING and v is not None})
    rest = {k: v for k, v in open_kwargs.items() if k not in (*_DECODING, "decode_cf")}
    try:
        raw = xr.open_dataset(
            store,  # type: ignore[arg-type]  # xarray's zarr engine takes zarr stores
            engine="zarr",
            group=group,
            consolidated=consolidated,
            chunks=None,
            decode_cf=False,
            **{**rest, "cache": False, "create_default_indexes": False},
        )
    except Exception:
        return []
    bad: list[str] = []
    for name, var in raw.variables.items():
        arr = existing.arrays.get(str(name))
        if arr is None or var.size == 0:
            continue

        def read(sel: tuple[slice, ...], name: Any = name, var: xr.Variable = var) -> None:
            np.asarray(decode_cf_variable(name, var[sel], **decode).values)

        regions: list[tuple[slice, ...]]
        if var.dims == (name,):
            regions = [(slice(None),)]  # the index's values: all of them
        else:
            regions = [
                tuple(slice(0, 1) for _ in var.shape),
                tuple(slice(n - 1, n) for n in var.shape),
            ]
        # Chunks whose bytes zarr cannot decode are damaged. Chunks that only
        # xarray cannot decode are, if others of the variable decode: when none
        # does, the variable's encoding (or the open's options) is at fault.
        decoded: set[str] = set()
        failed: set[str] = set()
        for region in regions:
            keys = _chunk_keys(arr, region)
            try:
                read(region)
            except ToolkitError:
                raise
            except Exception:
                damaged = undecodable_chunks(arr, region)
                bad += [k for k in damaged if k not in bad]
                failed |= set(undecodable_chunks(arr, region, read=read)) - set(damaged)
                decoded |= set(keys) - failed - set(damaged)
            else:
                decoded |= set(keys)
        if failed and decoded:
            bad += sorted(failed - set(bad))
    return bad


def _chunk_keys(arr: zarr.Array[Any], region: tuple[slice, ...]) -> list[str]:
    """The keys of the stored objects (shards, else chunks) that ``region`` of ``arr`` touches."""
    unit = arr.shards or arr.chunks
    ranges = []
    for sl, n, u in zip(region, arr.shape, unit, strict=True):
        start, stop, _ = sl.indices(n)
        ranges.append(range(start // u, -(-stop // u)))
    keys = [arr.metadata.encode_chunk_key(idx) for idx in itertools.product(*ranges)]
    return [f"{arr.path}/{k}" if arr.path else k for k in keys]


def _corrupt(bad: Sequence[str], e: BaseException, where: str = "") -> CorruptChunkError:
    shown = ", ".join(repr(k) for k in bad[:5]) + (" ..." if len(bad) > 5 else "")
    return CorruptChunkError(
        f"stored chunk(s) {shown}{where} cannot be decoded ({type(e).__name__}: {e}); the "
        "object is damaged: rewrite it (rerun the write, or toolkit copy from the source), "
        "or delete it to read fill values",
        bad,
    )


def _settled(
    opened: Callable[[Store], xr.Dataset], stack: Callable[[], Store], group: str | None
) -> xr.Dataset:
    """Open again while a publication settles; then through a consistent view."""
    delay, deadline = 0.01, time.monotonic() + 2.0
    while time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(0.5, delay * 2)
        try:
            return opened(MetadataBuffer(stack()))
        except ValueError as e:
            if "conflicting sizes" not in str(e):
                raise
    return opened(MetadataBuffer(consistent_view(stack(), group)))


class _NamedChunkErrors:
    """A variable's lazily decoded values that name the stored chunk that fails to decode.

    A damaged object otherwise surfaces as a codec's traceback naming no key.
    Store errors (throttling, access, ...) pass through as they are.
    """

    def __init__(self, var: xr.Variable, arr: zarr.Array[Any], concurrency: int = 0) -> None:
        self.var, self.arr, self.concurrency = var, arr, concurrency
        self.shape, self.dtype, self.ndim = var.shape, var.dtype, var.ndim

    def _values(self, key: tuple[slice, ...]) -> np.ndarray[Any, Any]:
        return np.asarray(self.var[key].values)

    def _in_parts(
        self, key: tuple[slice, ...], parts: list[tuple[slice, ...]]
    ) -> np.ndarray[Any, Any]:
        """``key``'s values read in concurrent calls, one a part (``zarr_parts``).

        A thread a part, since xarray's decoding reads synchronously; each runs
        in the caller's context (its runtime: budgets, metrics). Every read has
        ended when this returns or raises.
        """
        shape = tuple(len(range(*sl.indices(n))) for sl, n in zip(key, self.shape, strict=True))
        out: np.ndarray[Any, Any] | None = None
        with cf.ThreadPoolExecutor(len(parts), thread_name_prefix="toolkit-read") as pool:
            futures = [pool.submit(contextvars.copy_context().run, self._values, p) for p in parts]
            for part, future in zip(parts, futures, strict=True):
                values = future.result()
                if out is None:
                    out = np.empty(shape, dtype=values.dtype)
                out[local_slices(part, key)] = values
        assert out is not None
        return out

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray[Any, Any]:
        try:
            # As many requests in flight as the budget allows (zarr's 10 a call otherwise).
            parts = zarr_parts(self.arr, key, self.concurrency)
            if len(parts) == 1:
                return self._values(key)
            return self._in_parts(key, parts)
        except ToolkitError:
            raise
        except Exception as e:
            bad = undecodable_chunks(self.arr, _box(key, self.shape), read=self._values)
            if not bad:
                raise
            raise _corrupt(bad, e, f" of {self.arr.path!r}") from e


def _box(key: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The box of the array that ``key`` reads from.

    dask folds a selection of a block (an integer, a step) into the block's read.
    """
    if len(key) != len(shape):
        return tuple(slice(0, n) for n in shape)
    out = []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, slice):
            start, stop, _ = k.indices(n)
            out.append(slice(start, max(start, stop)))
        elif isinstance(k, (int, np.integer)):
            i = range(n)[k]
            out.append(slice(i, i + 1))
        else:
            out.append(slice(0, n))
    return tuple(out)


def undecodable_chunks(
    arr: zarr.Array[Any],
    region: tuple[slice, ...],
    limit: int = 4096,
    *,
    read: Callable[[tuple[slice, ...]], Any] | None = None,
) -> list[str]:
    """Keys of the stored objects in ``region`` of ``arr`` whose chunks fail to decode.

    Each chunk is read alone; at most ``limit`` chunks are tried. With
    ``read`` (which reads a selection of the array through xarray, say), each
    chunk is read through it, so that values zarr decodes but xarray cannot
    (garbage whose times overflow) count too.
    """
    ranges = []
    for sl, n, c in zip(region, arr.shape, arr.chunks, strict=True):
        start, stop, _ = sl.indices(n)
        ranges.append(range(start // c, -(-stop // c)))
    unit = arr.shards or arr.chunks
    bad: list[str] = []
    for idx in itertools.islice(itertools.product(*ranges), limit):
        sel = tuple(
            slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, arr.chunks, arr.shape)
        )
        try:
            if read is None:
                arr[sel]
            else:
                read(sel)
        except ToolkitError:
            raise
        except Exception:
            obj = tuple(i * c // u for i, c, u in zip(idx, arr.chunks, unit, strict=True))
            key = arr.metadata.encode_chunk_key(obj)
            full = f"{arr.path}/{key}" if arr.path else key
            if full not in bad:
                bad.append(full)
    return bad


def _check_complete(records: list[dict[str, Any]], scope: str, how: str) -> None:
    if not records:
        return
    parts = []
    for r in records:
        job = r.get("job") or str(r.get("key", "")).rsplit("/", 1)[-1].removesuffix(".json")
        missing = {k: len(v["missing"]) for k, v in (r.get("units") or {}).items() if v["missing"]}
        if r.get("state") == "failed":
            parts.append(
                f"write {job} (started {r.get('started')}) failed with "
                + ", ".join(f"{n} units of {k!r}" for k, n in missing.items())
                + " missing"
            )
        elif r.get("state") == "abandoned":
            a, b = r.get("rows") or ("?", "?")
            parts.append(
                f"rows {a}-{b} of {r.get('dim')!r} were reserved by job {job} ({r.get('kind')}), "
                f"which stopped before writing them (its lease {r.get('lease')}); later jobs "
                "made them visible"
            )
        elif r.get("state") == "unreadable":
            parts.append(f"the write record {r.get('key')} is unreadable (damaged)")
        else:
            parts.append(
                f"write {job} (started {r.get('started')}) has not finished: it is running, "
                "or was killed"
            )
    jobs = [
        r.get("job") or str(r.get("key", "")).rsplit("/", 1)[-1].removesuffix(".json")
        for r in records
    ]
    msg = (
        f"{scope} is incomplete: " + "; ".join(parts) + ". Missing parts would read as fill "
        "values. Rerun the job (the same call, or the same job_id=, finishes it and removes "
        "its record), or read anyway with incomplete='warn' or 'ignore'. To accept the rows "
        "as they are: toolkit.coordination.records.clear_records(store, job="
        + repr(jobs[0])
        + ")"
        + (f" for each of {jobs}" if len(jobs) > 1 else "")
        + "."
    )
    if how == "raise":
        raise IncompleteStoreError(msg, records)
    warnings.warn(msg, UserWarning, stacklevel=4)


def _as_dask(obj: xr.DataArray | da.Array) -> da.Array:
    data = obj.data if isinstance(obj, xr.DataArray) else obj
    if not isinstance(data, da.Array):
        raise TypeError(
            f"iter_chunks needs a dask-backed DataArray or a dask array, got "
            f"{type(data).__name__}; open it with toolkit.open_zarr or call .chunk()"
        )
    return data


def _block_getter(obj: xr.DataArray | da.Array, index: tuple[int, ...]) -> Any:
    data = _as_dask(obj)
    if isinstance(obj, da.Array):
        return data.blocks[index]
    e = [np.cumsum((0, *c)) for c in data.chunks]
    sel = {
        d: slice(int(e[a][i]), int(e[a][i + 1]))
        for a, (d, i) in enumerate(zip(obj.dims, index, strict=True))
    }
    return obj.isel(sel)


def _run[T](
    obj: xr.DataArray | da.Array,
    func: Callable[[Block], T] | None,
    *,
    ordered: bool,
    filter: Callable[[tuple[int, ...]], bool] | None,
    max_inflight: int | None,
    progress: Callable[[int, int], None] | None,
) -> Iterator[tuple[tuple[int, ...], Any]]:
    data = _as_dask(obj)
    indices = [i for i in np.ndindex(*data.numblocks) if filter is None or filter(i)]
    total = len(indices)
    limit = max_inflight or max(2, (os.cpu_count() or 2) * 2)
    if limit < 1:
        raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
    blocks = executor().stream(
        indices, functools.partial(_block_getter, obj), func, limit=limit, ordered=ordered
    )
    try:
        for done, (index, result) in enumerate(blocks, 1):
            if progress is not None:
                progress(done, total)
            yield index, result
    finally:
        blocks.close()


def iter_chunks(
    obj: xr.DataArray | da.Array,
    *,
    ordered: bool = True,
    filter: Callable[[tuple[int, ...]], bool] | None = None,
    max_inflight: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[tuple[int, ...], Any]]:
    """Stream ``(block_index, block)`` pairs with at most ``max_inflight`` in flight.

    Parameters
    ----------
    obj : xarray.DataArray or dask.array.Array
        Dask-backed data (e.g. a variable of :func:`open_zarr`).
    ordered : bool
        Yield in C order of the block grid (True) or as blocks arrive (False).
    filter : callable, optional
        ``filter(block_index) -> bool``; blocks for which it is False are skipped
        without being read.
    max_inflight : int, optional
        Blocks being fetched at once (default twice the CPU count). Memory is
        bounded by this many blocks.
    progress : callable, optional
        Called as ``progress(done, total)`` after each block.

    Yields
    ------
    tuple
        ``(index, block)``: a DataArray with its coordinates for DataArray input,
        else a numpy array.

    Examples
    --------
    >>> import numpy as np
    >>> import xarray as xr
    >>> import toolkit
    >>> ds = xr.Dataset(
    ...     {"t2m": (("time", "x"), np.arange(48.0).reshape(12, 4))},
    ...     coords={"time": np.arange(12)},
    ... ).chunk({"time": 5})
    >>> _ = toolkit.to_zarr(ds, "example.zarr", encoding={"t2m": {"chunks": (4, 4)}})
    >>> stored = toolkit.open_zarr("example.zarr", chunks={})
    >>> for index, block in toolkit.iter_chunks(stored.t2m, max_inflight=2):
    ...     print(index, block.shape, float(block.time[0]))
    (0, 0) (4, 4) 0.0
    (1, 0) (4, 4) 4.0
    (2, 0) (4, 4) 8.0
    """
    yield from _run(
        obj, None, ordered=ordered, filter=filter, max_inflight=max_inflight, progress=progress
    )


def map_chunks[T](
    func: Callable[[Block], T],
    obj: xr.DataArray | da.Array,
    *,
    ordered: bool = True,
    filter: Callable[[tuple[int, ...]], bool] | None = None,
    max_inflight: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[tuple[int, ...], T]]:
    """Like :func:`iter_chunks`, yielding ``(block_index, func(block))``.

    ``func`` runs where the block was read (a pool thread, or a worker when a
    ``distributed`` client is active), so only its results travel.

    Examples
    --------
    >>> import numpy as np
    >>> import xarray as xr
    >>> import toolkit
    >>> ds = xr.Dataset(
    ...     {"t2m": (("time", "x"), np.arange(48.0).reshape(12, 4))},
    ...     coords={"time": np.arange(12)},
    ... ).chunk({"time": 5})
    >>> _ = toolkit.to_zarr(ds, "example.zarr", encoding={"t2m": {"chunks": (4, 4)}})
    >>> stored = toolkit.open_zarr("example.zarr", chunks={})
    >>> dict(toolkit.map_chunks(lambda block: float(block.sum()), stored.t2m))
    {(0, 0): 120.0, (1, 0): 376.0, (2, 0): 632.0}
    """
    yield from _run(
        obj, func, ordered=ordered, filter=filter, max_inflight=max_inflight, progress=progress
    )
