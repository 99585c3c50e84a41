"""A write's metadata round: arrays created or resized, small variables written, at once.

Through xarray's own Zarr backend (so that stores written here open in xarray
like any other), into a :class:`~toolkit.io.buffer.MetadataBuffer` that
sends every document in one concurrent round, after the write's record: the
dask sources of the data variables are handed to toolkit's graph instead
(:func:`write_metadata`). A region write's shared units are merged
conditionally, and its arrays' last units along an appended dimension are
seen through an :class:`~toolkit.io.extent.ExtentStore` (:func:`edge_store`).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask.array as da
import xarray as xr
import zarr
from dask.base import tokenize
from zarr.abc.store import Store
from zarr.buffer import default_buffer_prototype

from toolkit._util import backoff
from toolkit.coordination.claim import (
    clear_group,
    doomed_keys,
    drop_keys,
    group_contents,
    remove_strays,
)
from toolkit.coordination.commitlog import HEAD as LOG_HEAD
from toolkit.coordination.commitlog import log_head_key
from toolkit.coordination.leases import Coordinator
from toolkit.coordination.records import ResumeLog, WriteRecord
from toolkit.errors import (
    ExistingStoreError,
    WriteError,
)
from toolkit.io.buffer import MetadataBuffer
from toolkit.io.conditional import conditional_store, supports_conditional
from toolkit.io.digests import WrittenStore
from toolkit.io.extent import ArrayExtent, Extents, ExtentStore, covering_length
from toolkit.io.groups import array_dims
from toolkit.io.rmw import ConditionalUnits, UnitConflict
from toolkit.io.stores import (
    display_location,
    is_icechunk,
)
from toolkit.io.wrappers import rebind, wrap_store, writing_empty_chunks
from toolkit.upstream import (
    ArrayWriter,
    autodetect_region,
    dump_to_store,
    sync,
    writable_zarr_store,
)
from toolkit.write.graph import (
    WriteSource,
    partial_units,
    unit_key,
)
from toolkit.write.plan import WritePlan

__all__ = [
    "MetadataRound",
    "eager_regions",
    "edge_store",
    "metadata_round",
    "prepare_group",
    "unit_ranges",
    "write_metadata",
]


class _CapturingWriter(ArrayWriter):
    """xarray's writer, except that dask sources are captured, not stored.

    In-memory sources (coordinates) are written by xarray as usual.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.captured: dict[str, tuple[da.Array, zarr.Array[Any]]] = {}

    def add(self, source: Any, target: Any, region: Any = None) -> None:
        if isinstance(source, da.Array):
            self.captured[target.basename] = (source, target)
        else:
            super().add(source, target, region)  # type: ignore[no-untyped-call]


def write_metadata(
    plan: WritePlan, store: Store, mode: str, *, shared: bool = False
) -> list[WriteSource]:
    """Create or resize arrays and write small variables, through xarray, into ``store``.

    ``mode`` is xarray's: ``"w-"`` for a group :func:`execute` has just cleared.
    ``shared``: some units the small variables cover partly are shared with other
    jobs (merged conditionally): they are written even when they hold only fill
    values, since zarr would delete them unconditionally. The tasks' arrays keep
    the plan's ``write_empty_chunks``.
    """
    ds = plan.dataset
    # In-memory data variables become dask arrays chunked as their tasks, so that
    # they are written in parallel like the rest.
    for vp in plan.variables:
        var = ds.variables[vp.name].transpose(*vp.dims)
        if var.chunks is None:
            var = var.chunk(dict(zip(vp.dims, vp.task_chunks, strict=True)))
        ds = ds.assign_coords({vp.name: var}) if vp.name in ds.coords else ds.assign({vp.name: var})
    # What xarray writes itself (strings, objects, small variables) is written now,
    # from memory: a dask-backed one is computed first.
    lazy = [n for n in plan.eager if ds.variables[n].chunks is not None]
    if lazy:
        ds = ds.copy(deep=False)
        for name in lazy:
            if ds.variables[name].dtype.kind == "O":
                warnings.warn(  # xarray's own words: its users filter on them
                    f"variable {name} has data in the form of a dask array with "
                    "dtype=object, which means it is being loaded into memory "
                    "to determine a data type that can be safely stored on disk. "
                    "To avoid this, coerce this variable to a fixed-size dtype "
                    "with astype() before saving it.",
                    xr.SerializationWarning,
                    stacklevel=4,
                )
            ds.variables[name].data = ds.variables[name].compute().data
    zstore = writable_zarr_store(
        store,
        mode=mode,
        group=plan.group,
        consolidated=plan.consolidated,
        append_dim=plan.append_dim,
        region=dict(plan.region) if plan.region is not None else None,
        safe_chunks=False,  # toolkit's plan makes every task own whole units
        zarr_format=plan.zarr_format,
        write_empty_chunks=True if shared else plan.write_empty_chunks,
    )
    ds = autodetect_region(zstore, ds)
    writer = _CapturingWriter()
    with warnings.catch_warnings():
        # zarr warns that v3 consolidated metadata is an extension; xarray chose it.
        warnings.filterwarnings("ignore", "Consolidated metadata", category=UserWarning)
        dump_to_store(ds, zstore, writer, encoding=plan.encoding)
    out = []
    for vp in plan.variables:
        source, target = writer.captured[vp.name]
        # A region may find the arrays grown by concurrent appenders: harmless while
        # the region still fits (tasks lock units by the array's actual shape).
        fits = plan.region is not None and all(
            o + n <= s for o, n, s in zip(vp.offset, vp.shape, target.shape, strict=True)
        )
        if (target.shape != vp.array_shape and not fits) or tuple(target.chunks) != vp.chunks:
            raise WriteError(
                f"{vp.name!r}: the store changed between planning and writing "
                f"(shape {target.shape}, chunks {target.chunks}; planned {vp.array_shape}, "
                f"{vp.chunks}); another writer is active. Plan again."
            )
        if shared:
            target = writing_empty_chunks(target, plan.write_empty_chunks)
        out.append(WriteSource(vp, source, rebind(target, plan.store)))
    return out


@dataclass(frozen=True)
class MetadataRound:
    """What the metadata round leaves for the data phase."""

    sources: list[WriteSource]
    token: str
    write_record: WriteRecord | None  # None on a transactional store, or without a record
    done: Mapping[str, Any]  # tasks an earlier run of a resumable write landed
    written: Mapping[str, Any]  # what the round put in the store (key -> [size, checksum])
    # Hidden rows' small variables, still to be sent (beside the data's round).
    unsent: MetadataBuffer | None = None


def metadata_round(
    plan: WritePlan,
    direct: Store,
    resume: ResumeLog | None,
    creating: bool,
    transactional: bool,
    t0: float,
    job: str | None,
    record: bool,
    *,
    empty: bool = False,
) -> MetadataRound:
    """Prepare the group, put the write's record, and send all metadata in one round.

    ``empty``: the group was seen empty under the creation claim
    (:func:`~toolkit.coordination.claim.take_claim`): nothing to check, clear or read.

    A region write's variables written with the metadata may share write units
    with other jobs' regions: those units are read-modify-written
    conditionally, and the round is sent again if another job changed one in
    between (it only writes chunks then, never array metadata).
    """
    # A replacing creation with a record puts the record beside the listing of what
    # to clear (records are left; the old ones go when this write is done), and
    # deletes only once the record landed: a kill never leaves the old dataset torn
    # without a record. A new target (nothing to delete) saves a round trip.
    beside = creating and plan.mode == "w" and resume is None and record and not transactional
    if creating and not beside and not empty:
        prepare_group(direct, plan.mode, plan.group, plan.target)
    # Read after the clear: a replacing run starts over, whatever an old log says.
    done = resume.done_tasks() if resume is not None else {}
    if resume is not None and creating:
        # First object of the write: a store holding begin.json holds only this write.
        resume.begin(direct, {"target": plan.target})
    shared = _eager_shared_units(plan, direct)
    write_record: WriteRecord | None = None
    # What the round puts in the store, for the write's manifest fragment.
    recorded = WrittenStore(direct)
    for attempt in range(_RMW_ATTEMPTS):
        below: Store = recorded
        if shared:
            cas = conditional_store(plan.store, plan.throttle)
            below = ConditionalUnits(recorded, cas, shared, recorded.written)
            sync(below.prefetch())  # every shared unit in one round
        # The group is known to be empty now: the buffer answers its probes itself.
        fresh = (plan.group or "") if creating or plan.mode == "w-" else None
        buffer = MetadataBuffer(below, empty_prefix=fresh)
        # zarr deletes a chunk that became all fill value; a shared unit is never deleted
        # (a conditional delete would be needed, which not every store has): it is
        # written, fill values and all. ``write_empty_chunks`` saves storage only.
        sources = write_metadata(
            plan, buffer, mode="w-" if creating else plan.mode, shared=bool(shared)
        )
        planned = [(s.plan, s.data.name) for s in sources]
        token = job or tokenize(plan.target, plan.mode, planned, t0)
        # A transactional store (Icechunk) shows readers nothing before the commit:
        # it needs no record of the write, and accepts only Zarr keys.
        if write_record is None and record and not transactional:
            write_record = WriteRecord(plan.store, plan.group, token, plan.throttle)
            # Landed before any array metadata is sent: no reader can find this
            # write's arrays without its record.
            resume_id = resume.id if resume is not None else None
            if beside and empty:
                write_record.begin(plan.record_summary(), direct, replaces=True, alone=True)
            elif beside:
                with ThreadPoolExecutor(1, thread_name_prefix="toolkit-clear") as pool:
                    listing = pool.submit(doomed_keys, direct, plan.group, records=False)
                    write_record.begin(plan.record_summary(), direct, replaces=True)
                    drop_keys(direct, listing.result())
            else:
                write_record.begin(plan.record_summary(), direct, resume=resume_id, alone=empty)
        if not record and not creating and not shared and resume is None:
            # Rows no reader sees (an append's hidden rows): what xarray writes with
            # the metadata (the appended labels) may land in any order with the
            # data, so it is sent beside the data's round (see execute), not before.
            for key, value in buffer.pending.items():
                if value is None:
                    recorded.written.deleted(key)
                else:
                    recorded.written.put(key, value.to_bytes())
            return MetadataRound(
                sources, token, write_record, done, recorded.written.as_lists(), buffer
            )
        try:
            sync(buffer.flush())  # metadata and small variables, in one concurrent round
        except UnitConflict:
            if attempt + 1 == _RMW_ATTEMPTS:
                raise
            time.sleep(backoff(attempt, base=0.01, cap=0.5))
            continue
        break
    if resume is not None and creating:
        resume.metadata_done(direct, recorded.written.as_lists())
    return MetadataRound(sources, token, write_record, done, recorded.written.as_lists())


_RMW_ATTEMPTS = 32


def prepare_group(
    store: Store, mode: str, group: str | None, target: str, strays: Store | None = None
) -> None:
    """Under the creation claim: replace the group (``"w"``) or prove it empty (``"w-"``).

    ``target`` names the store in the refusal; ``strays``: where killed runs'
    temporary files are removed (``store`` by default).
    """
    if mode == "w":
        clear_group(store, group)
        return
    found = group_contents(store, group)
    if found:
        raise ExistingStoreError(
            f"{display_location(target)} holds data since this write was planned "
            f"({found[0]!r}; another job created it) and mode='w-' never overwrites; use "
            "mode='w' to replace it"
        )
    remove_strays(strays if strays is not None else store, group)


def edge_store(plan: WritePlan, reads: Store | None = None) -> Store:
    """The store a region write goes through: its arrays' last units merged, not replaced.

    Along a dimension that jobs append to through the dataset's commit log,
    the last write unit of an array may hold rows beyond its stored length,
    written by an append that has not published them yet. A region reaching
    the end would take that unit for complete and overwrite it whole; seen
    through an :class:`~toolkit.io.extent.ExtentStore`, the unit is read,
    merged and written back conditionally like any shared unit.

    ``reads``: the plan's snapshot of the metadata (``plan.reads``), which the
    metadata round reads through (writes go through it to the store).
    """
    if (
        plan.region is None
        or isinstance(plan.store, ExtentStore)
        or is_icechunk(plan.store)
        or not supports_conditional(plan.store)
    ):
        return plan.store if reads is None else reads
    if reads is not None:  # the head as the plan found it (read with its metadata)
        buf = sync(
            wrap_store(reads, plan.throttle).get(
                log_head_key(plan.group), default_buffer_prototype()
            )
        )
        head = json.loads(buf.to_bytes()) if buf is not None else {}
    else:
        head = Coordinator(plan.store, plan.group, plan.throttle).get(LOG_HEAD) or {}
    appended = set((head.get("state") or {}).get("dims") or ())
    store = plan.store if reads is None else reads
    root = f"{plan.group.strip('/')}/" if plan.group and plan.group.strip("/") else ""
    meta = "zarr.json" if plan.zarr_format == 3 else ".zarray"
    # Each array along the dimension: (path, axis, write unit, stored length).
    along: dict[str, list[tuple[str, int, int, int]]] = {}
    for vp in plan.variables:
        for axis, dim in enumerate(vp.dims):
            if dim in appended:
                along.setdefault(dim, []).append(
                    (vp.name, axis, vp.write_unit[axis], vp.array_shape[axis])
                )
    for arr, _ in eager_regions(plan, reads) if plan.eager else ():
        for axis, dim in enumerate(array_dims(arr)):
            if dim in appended:
                unit = (arr.shards or arr.chunks)[axis]
                along.setdefault(dim, []).append((arr.basename, axis, unit, arr.shape[axis]))
    ckey = f"{root}zarr.json" if plan.zarr_format == 3 else f"{root}.zmetadata"
    for dim, arrays in sorted(along.items()):
        stored = max(n for _, _, _, n in arrays)
        length = covering_length(stored, [u for _, _, u, _ in arrays])
        ext = Extents(
            dim,
            [ArrayExtent(f"{root}{n}", f"{root}{n}/{meta}", ax, size) for n, ax, _, size in arrays],
            ckey,
            plan.zarr_format,
        )
        store = ExtentStore(store, ext, length, plan.group)
    return store


def _eager_shared_units(plan: WritePlan, store: Store) -> list[str]:
    """Keys of the units that a region write's variables written with the metadata cover partly.

    Those variables (dimension coordinates, times, strings) are written by
    xarray in the metadata round; their partly covered units may be shared
    with another job's region, so they are read-modify-written conditionally.
    """
    if plan.region is None or not plan.eager or is_icechunk(plan.store):
        return []
    if not supports_conditional(plan.store):
        return []
    keys = []
    for arr, region in eager_regions(plan, store):
        keys += [unit_key(arr, u) for u in partial_units(arr, region, unit_ranges(arr, region))]
    return keys


def eager_regions(
    plan: WritePlan, store: Store | None = None
) -> list[tuple[zarr.Array[Any], tuple[slice, ...]]]:
    """A region write's variables written with the metadata: each array and its region."""
    assert plan.region is not None
    out = []
    for name in plan.eager:
        path = f"{plan.group.strip('/')}/{name}" if plan.group else name
        arr = zarr.open_array(store or plan.store, path=path, mode="r")
        dims = array_dims(arr)
        out.append(
            (
                arr,
                tuple(
                    plan.region.get(d, slice(0, n)) for d, n in zip(dims, arr.shape, strict=True)
                ),
            )
        )
    return out


def unit_ranges(arr: zarr.Array[Any], region: tuple[slice, ...]) -> tuple[tuple[int, int], ...]:
    """Per axis, the write units (shards, else chunks) of ``arr`` that ``region`` touches."""
    size = arr.shards or arr.chunks
    return tuple((sl.start // c, -(-sl.stop // c)) for sl, c in zip(region, size, strict=True))
