"""Writes: plan, then graph, then execute.

:func:`to_zarr` is the one-call form; :func:`execute` runs a plan made by
:func:`toolkit.plan_write`. Array metadata, CF encoding and in-memory coordinates
go through xarray's own Zarr backend, so stores written here open in xarray like
any other; the chunk data goes through toolkit's graph, one task per group of
whole write units.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import json
import os
import sys
import time
import warnings
from collections.abc import Hashable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import dask.array as da
import xarray as xr
import zarr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.utils import format_bytes
from zarr.abc.store import Store
from zarr.buffer import default_buffer_prototype

from toolkit._render import html_table, text_table
from toolkit._util import Background, backoff
from toolkit.cluster.budgets import cluster_share
from toolkit.cluster.executor import Executor, executor
from toolkit.cluster.progress import progress_bar
from toolkit.errors import (
    CleanupWarning,
    ExistingStoreError,
    PlanError,
    SourceChangedError,
    StoreError,
    UnknownOptionError,
    WriteError,
)
from toolkit.io.conditional import conditional_store, supports_conditional
from toolkit.io.digests import WrittenStore
from toolkit.io.extent import ArrayExtent, Extents, ExtentStore, covering_length
from toolkit.io.groups import array_dims
from toolkit.io.metrics import IOMetrics, live_metrics
from toolkit.io.rmw import ConditionalUnits, UnitConflict
from toolkit.io.stores import (
    StoreLike,
    describe_store,
    display_location,
    is_icechunk,
    resolve_store,
    store_label,
)
from toolkit.io.throttle import Throttle, resolve_throttle
from toolkit.io.wrappers import MetadataBuffer, rebind, wrap_store
from toolkit.state.claim import (
    CreationClaim,
    clear_group,
    doomed_keys,
    drop_keys,
    group_contents,
    listing_is_free,
    remove_strays,
    take_claim,
)
from toolkit.state.commitlog import HEAD as LOG_HEAD
from toolkit.state.commitlog import log_head_key
from toolkit.state.leases import Coordinator, job_id
from toolkit.state.manifest import objects_of_lists, write_fragment
from toolkit.state.records import ResumeLog, WriteJournal
from toolkit.upstream import (
    DATAARRAY_NAME,
    DATAARRAY_VARIABLE,
    ArrayWriter,
    autodetect_region,
    dump_to_store,
    sync,
    writable_zarr_store,
)
from toolkit.write.graph import (
    WriteIO,
    WriteSource,
    build_write_graph,
    partial_units,
    unit_key,
)
from toolkit.write.plan import DEFAULT_MAX_TASK_BYTES, WriteMode, WritePlan, plan_write

_DEFAULT_CONCURRENCY = 10  # zarr's own default, for unthrottled stores

__all__ = [
    "WriteReport",
    "as_dataset",
    "execute",
    "plan_resumable",
    "reject_unknown",
    "write_dataset",
]


@dataclass(frozen=True)
class WriteReport:
    """What a write did, measured.

    Attributes
    ----------
    target : str
        Secret-free store description (the plan's ``target``; the report prints a
        local store's path without its ``file://``).
    variables : tuple of str
        Variables written by tasks.
    tasks, units : int
        Write tasks run and write units written.
    nbytes : int
        Uncompressed bytes written.
    stored_bytes : int
        Bytes sent to the store for chunk data (after compression).
    seconds, metadata_seconds : float
        Wall time in all, and of it the metadata phase.
    requests : dict
        Data requests measured by kind (gets, sets, deletes, lists).
    io : IOMetrics
        Everything the store stack measured for the data and metadata phases:
        requests by kind (every attempt), bytes, latency histogram, throttling
        answers, errors, retries, time backing off and waiting for the budget.
    plan : WritePlan
        The plan that ran.
    """

    target: str
    variables: tuple[str, ...]
    tasks: int
    units: int
    nbytes: int
    stored_bytes: int
    seconds: float
    metadata_seconds: float
    requests: Mapping[str, int]
    io: IOMetrics = field(repr=False, compare=False, default_factory=IOMetrics)
    plan: WritePlan = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    placement: Mapping[str, Any] | None = field(repr=False, compare=False, default=None)
    forks: tuple[Any, ...] = field(repr=False, compare=False, default=())
    resumed: int = field(compare=False, default=0)
    """Write tasks an interrupted run of the same write had finished, not run again."""

    @property
    def throughput(self) -> float:
        """Uncompressed bytes per second."""
        return self.nbytes / self.seconds if self.seconds > 0 else float("inf")

    def _rows(self) -> list[dict[str, str]]:
        ratio = self.nbytes / self.stored_bytes if self.stored_bytes else float("nan")
        return [
            {"": "target", "value": display_location(self.target)},
            {"": "variables", "value": ", ".join(self.variables) or "-"},
            {"": "tasks / units", "value": f"{self.tasks:,} / {self.units:,}"},
            {
                "": "bytes",
                "value": f"{format_bytes(self.nbytes)} "
                f"({format_bytes(self.stored_bytes)} stored, {ratio:.2f}x)",
            },
            {
                "": "time",
                "value": f"{self.seconds:.2f} s ({self.metadata_seconds:.2f} s "
                f"metadata), {format_bytes(int(self.throughput))}/s",
            },
            *({"": k, "value": v} for k, v in self.io.summary().items()),
            *(
                [{"": "resumed", "value": f"{self.resumed:,} tasks were written by an earlier run"}]
                if self.resumed
                else []
            ),
        ]

    def __repr__(self) -> str:
        return "WriteReport\n" + text_table(self._rows())

    def _repr_html_(self) -> str:
        return "<div><b>WriteReport</b>" + html_table(self._rows()) + "</div>"


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


def _write_metadata(plan: WritePlan, store: Store, mode: str) -> list[WriteSource]:
    """Create or resize arrays and write small variables, through xarray, into ``store``.

    ``mode`` is xarray's: ``"w-"`` for a group :func:`execute` has just cleared.
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
        write_empty_chunks=plan.write_empty_chunks,
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
        out.append(WriteSource(vp, source, rebind(target, plan.store)))
    return out


def plan_resumable(
    ds: xr.Dataset,
    target: StoreLike,
    *,
    write_id: str | None,
    mode: WriteMode,
    encoding: Mapping[Hashable, Mapping[str, Any]] | None,
    zarr_format: Literal[2, 3] | None = None,
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES,
    storage_options: Mapping[str, Any] | None = None,
    throttle: Throttle | Literal[False] | None = None,
    source: Mapping[str, str] | None = None,
) -> tuple[WritePlan, ResumeLog | None]:
    """Plan a write that resumes where an earlier run with the same ``write_id`` stopped.

    The decision is made from what the target holds. When it holds that run's
    log and the log says its metadata round landed, the plan rewrites into the
    arrays it created (mode ``"r+"``), and :func:`execute` with the log skips
    its landed tasks. When the run was stopped earlier, the target holds
    nothing but that run's (the log is its first object), so the write starts
    again (mode ``"w"``). In mode ``"w"`` the write always starts over, and
    the old log goes with the old group. Without ``write_id``, a plain plan.

    ``source`` lists every object of the write's sources
    (:func:`toolkit.io.stores.source_objects`). The first run keeps it in its
    log; a later run whose sources differ in any object is refused with
    :class:`~toolkit.errors.SourceChangedError` naming them (what landed holds
    the old values), unless ``mode="w"`` starts it over.
    """
    policy = resolve_throttle(throttle, store_label(target))
    store = resolve_store(target, storage_options=storage_options, throttle=policy)
    planned = functools.partial(
        plan_write, ds, store, zarr_format=zarr_format, max_task_bytes=max_task_bytes,
        throttle=policy,
    )  # fmt: skip
    if write_id is None:
        return planned(mode=mode, encoding=encoding), None
    log = ResumeLog(store, None, write_id, policy, source=source)
    if mode == "w" or not log.started():
        return planned(mode=mode, encoding=encoding), log
    changed = log.source_changes()
    if changed:
        shown = "; ".join(changed[:5]) + (
            f"; and {len(changed) - 5} more" if len(changed) > 5 else ""
        )
        raise SourceChangedError(
            f"the source of the interrupted write into {store_label(target)} changed since its "
            f"first run began ({len(changed)} objects: {shown}). What that run wrote holds the "
            "old values, so it is not resumed: rerun with mode='w' (CLI: --overwrite) to "
            "write the target again from the start",
            changed,
        )
    if not log.metadata_landed():
        # Killed in its metadata round: begin.json landed first, on an empty group,
        # so everything here is that run's, and some arrays may be missing.
        return planned(mode="w", encoding=encoding), log
    try:
        return planned(mode="r+", encoding=None), log
    except PlanError:
        return planned(mode="w", encoding=encoding), log


def execute(
    plan: WritePlan,
    *,
    compute: bool = True,
    progress: bool = True,
    resume: ResumeLog | None = None,
    job: str | None = None,
    record: bool = True,
    claim: CreationClaim | None = None,
) -> WriteReport | Delayed:
    """Run a plan: validate it, write metadata, then the data graph.

    While the data is being written, the store holds a record of the write
    under ``.toolkit/writes/``. It is removed when the write succeeds. When the
    write fails, it is rewritten with the units written and missing, and
    :func:`toolkit.open_zarr` refuses to read the store until it is cleared.

    Parameters
    ----------
    plan : WritePlan
        From :func:`toolkit.plan_write`.
    compute : bool
        If False, write metadata now and return a dask ``Delayed`` that writes
        the data and computes to the :class:`WriteReport`.
    progress : bool
        Show a progress bar (tqdm, or distributed's when a client is active).
    resume : ResumeLog, optional
        Make the write resumable: each task marks its units as landed in the
        store, tasks marked by an earlier run of the same write are skipped,
        and the marks are deleted at the end (:func:`toolkit.ingest` and
        :func:`toolkit.jobs.copy` pass one).
    job : str, optional
        The write's identity: its record is ``.toolkit/writes/<job>.json``, so
        that a rerun of a killed write (the same ``job``) takes over its record
        and removes it when it is done. By default, for a write into existing
        arrays, derived from the target, the region and the data.
    record : bool
        Keep a record of the write in the store while it runs (default).
        False only for rows readers cannot see (an append's hidden rows).
    claim : CreationClaim, optional
        The group's creation claim, when the caller took it already (an
        append that creates its dataset): the write runs under it and leaves
        releasing it to the caller.

    Raises
    ------
    toolkit.errors.WriteError
        When the data phase failed; ``err.record`` says which write units of
        which variables were written and which are missing. No request of the
        write is still running when it is raised.

    Examples
    --------
    >>> import numpy as np
    >>> import xarray as xr
    >>> import toolkit
    >>> ds = xr.Dataset(
    ...     {"t2m": (("time", "x"), np.arange(48.0).reshape(12, 4))},
    ...     coords={"time": np.arange(12)},
    ... ).chunk({"time": 5})
    >>> plan = toolkit.plan_write(ds, "example.zarr")
    >>> report = toolkit.execute(plan, progress=False)
    >>> report.units == plan.nunits
    True
    """
    if not isinstance(plan, WritePlan):
        raise TypeError(
            f"execute() runs a WritePlan, got {type(plan).__name__}"
            + ("; a DataTree's plan runs with toolkit.execute_tree(plan)" if hasattr(plan, "nodes")
               else "")
        )  # fmt: skip
    plan.validate()
    t0 = time.time()
    meta_io = live_metrics(describe_store(plan.store))
    # A region write's metadata round reads the documents its plan read (it writes no
    # array metadata). Others read the store: a creation checks that it is still
    # empty, and a write that adds arrays lists the group to consolidate it.
    reads = plan.reads if plan.mode == "r+" else None
    direct = wrap_store(_edge_store(plan, reads), plan.throttle, meta_io)
    owner = job_id()
    transactional = is_icechunk(plan.store)
    # A creation (and the resumption of one) holds the group's creation lease
    # until its last object landed: two creators never mix (toolkit.state.claim).
    creating = plan.mode in ("w", "w-") and not transactional
    own_claim: CreationClaim | None = None
    if claim is None and (
        creating or (resume is not None and plan.mode == "r+" and not transactional)
    ):
        own_claim = CreationClaim(plan.store, plan.group, owner, plan.throttle)
    # Mode "w" replaces a Zarr store only (refuse_foreign): a local target was checked by
    # the plan; an object store's is listed here, beside the lease's request, which it
    # would otherwise wait for (one round trip). Refused, the lease it took is withdrawn.
    guard = creating and plan.mode == "w" and not listing_is_free(plan.store)
    empty = take_claim(own_claim, direct, plan.group, mode=plan.mode, guard=guard)
    if job is None and not creating and resume is None:
        job = derive_write_id(plan)
    try:
        meta = _metadata_round(
            plan, direct, resume, creating, transactional, t0, job, record, empty=empty
        )
    except BaseException:
        if own_claim is not None:
            own_claim.release()
        raise
    # Each run's own token: its tasks' keys and abort gate are never another run's.
    runner = executor()
    io = _write_io(plan, tokenize(meta.token, owner, t0), resume, owner, runner)
    meta_seconds = time.time() - t0
    graph = build_write_graph(plan, meta.sources, io, skip=meta.done)
    report = _with_report(
        graph,
        plan=plan,
        t0=t0,
        meta=meta_seconds,
        meta_io=meta_io,
        journal=meta.journal,
        resume=resume,
        strays_before=t0 if (own_claim or claim) is not None else None,
        meta_written=meta.written,
        token=meta.token,
        resumed=sum(len(v) for v in meta.done.values()),
    )
    eager = Background("eager")
    if meta.unsent is not None:
        if compute:
            eager.run(functools.partial(sync, meta.unsent.flush()))
        else:  # the caller runs the graph when it likes: sent now
            sync(meta.unsent.flush())
    if not compute:
        if own_claim is not None:
            own_claim.release_when_done(meta.journal, report)
        return report
    landed = sum(len(v) for v in meta.done.values())
    if landed and progress:
        # Said before the bar, so that a rerun after an interrupt shows it resumed.
        print(
            f"resuming: {landed:,} of {plan.ntasks:,} write tasks already written, "
            f"{plan.ntasks - landed:,} to go ({display_location(plan.target)})",
            file=sys.stderr,
        )
    try:
        result: WriteReport = runner.compute(
            report,
            callbacks=progress_bar(
                progress, plan.ntasks - landed, "toolkit write", "toolkit-write-"
            ),
            threads=_small_write_threads(plan),
        )
    except BaseException:
        eager.settle(raise_errors=False)  # no request of the write outlives it
        raise
    finally:
        if own_claim is not None:
            own_claim.release()
    eager.settle()
    return result


#: A write this small sends all its tasks at once: its cost is round trips, not CPU.
_SMALL_WRITE_BYTES = 64 * 2**20
_SMALL_WRITE_THREADS = 32


def _small_write_threads(plan: WritePlan) -> int | None:
    """Threads for a small write on the local scheduler: one per task (None: one per core).

    An append of one step of 12 variables is 13 tasks of a few dozen KiB each.
    With one thread per core they go out two at a time, six round trips in a
    row over a slow link; with one thread per task, in one round. The tasks
    wait on the network with the GIL released, and their memory is the whole
    write's, which is small: big writes keep one thread per core.
    """
    if plan.nbytes > _SMALL_WRITE_BYTES or plan.ntasks <= (os.cpu_count() or 1):
        return None
    return min(plan.ntasks, _SMALL_WRITE_THREADS)


def derive_write_id(plan: WritePlan) -> str:
    """A write's identity from its request: the same target, region and data give the same id."""
    region = {k: (v.start, v.stop) for k, v in (plan.region or {}).items()}
    token = tokenize(plan.target, plan.group, plan.mode, sorted(region.items()), plan.dataset)
    return f"write-{token[:24]}"


@dataclass(frozen=True)
class _Metadata:
    """What the metadata round leaves for the data phase."""

    sources: list[WriteSource]
    token: str
    journal: WriteJournal | None  # None on a transactional store, or without a record
    done: Mapping[str, Any]  # tasks an earlier run of a resumable write landed
    written: Mapping[str, Any]  # what the round put in the store (key -> [size, checksum])
    # Hidden rows' small variables, still to be sent (beside the data's round).
    unsent: MetadataBuffer | None = None


def _metadata_round(
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
) -> _Metadata:
    """Prepare the group, put the write's record, and send all metadata in one round.

    ``empty``: the group was seen empty under the creation claim
    (:func:`~toolkit.state.claim.take_claim`): nothing to check, clear or read.

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
        _prepare_group(plan, direct)
    # Read after the clear: a replacing run starts over, whatever an old log says.
    done = resume.done_tasks() if resume is not None else {}
    if resume is not None and creating:
        # First object of the write: a store holding begin.json holds only this write.
        resume.begin(direct, {"target": plan.target})
    shared = _eager_shared_units(plan, direct)
    journal: WriteJournal | None = None
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
        sources = _write_metadata(plan, buffer, mode="w-" if creating else plan.mode)
        token = job or tokenize(plan.target, plan.mode, [(s.plan, s.data.name) for s in sources],
                                t0)  # fmt: skip
        # A transactional store (Icechunk) shows readers nothing before the commit:
        # it needs no record of the write, and accepts only Zarr keys.
        if journal is None and record and not transactional:
            journal = WriteJournal(plan.store, plan.group, token, plan.throttle)
            # Landed before any array metadata is sent: no reader can find this
            # write's arrays without its record.
            resume_id = resume.id if resume is not None else None
            if beside and empty:
                journal.begin(plan.record_summary(), direct, replaces=True, alone=True)
            elif beside:
                with ThreadPoolExecutor(1, thread_name_prefix="toolkit-clear") as pool:
                    listing = pool.submit(doomed_keys, direct, plan.group, records=False)
                    journal.begin(plan.record_summary(), direct, replaces=True)
                    drop_keys(direct, listing.result())
            else:
                journal.begin(plan.record_summary(), direct, resume=resume_id, alone=empty)
        if not record and not creating and not shared and resume is None:
            # Rows no reader sees (an append's hidden rows): what xarray writes with
            # the metadata (the appended labels) may land in any order with the
            # data, so it is sent beside the data's round (see execute), not before.
            for key, value in buffer.pending.items():
                if value is None:
                    recorded.written.deleted(key)
                else:
                    recorded.written.put(key, value.to_bytes())
            return _Metadata(sources, token, journal, done, recorded.written.as_lists(), buffer)
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
    return _Metadata(sources, token, journal, done, recorded.written.as_lists())


_RMW_ATTEMPTS = 32


def _write_io(
    plan: WritePlan, token: str, resume: ResumeLog | None, owner: str, runner: Executor
) -> WriteIO:
    """What every write task needs: this process's share of the budget, markers, shared units."""
    share = cluster_share(plan.throttle, runner)
    # Any region write may share units: with other regions at its edges, and with an
    # append's hidden rows in the last unit (see _edge_store).
    cas = None
    if plan.region is not None and supports_conditional(plan.store) and not is_icechunk(plan.store):
        cas = conditional_store(plan.store, plan.throttle)
    return WriteIO(
        token=token,
        throttle=share,
        concurrency=share.max_inflight if share is not None else _DEFAULT_CONCURRENCY,
        distributed=runner.distributed,
        resume_prefix=resume.prefix if resume is not None else None,
        cas=cas,
        owner=owner,
        transactional=is_icechunk(plan.store),
    )


def _with_report(graph: Delayed, *, plan: WritePlan, meta_io: IOMetrics, **report: Any) -> Delayed:
    """``graph`` followed by one task that turns its figures into a :class:`WriteReport`."""
    # Built by hand: dask's delayed() would traverse the plan, find the source
    # dataset in it, and gather all of it into one task just to hand it over.
    light = replace(plan, dataset=xr.Dataset())
    key = f"toolkit-report-{graph.key}"
    task = (
        functools.partial(_report, plan=light, meta_io=meta_io.as_dict(), **report),
        graph.key,
    )
    base = graph.__dask_graph__()
    assert isinstance(base, HighLevelGraph)
    hlg = HighLevelGraph({**base.layers, key: {key: task}}, {**base.dependencies, key: {graph.key}})
    return Delayed(key, hlg, layer=key)


def _prepare_group(plan: WritePlan, store: Store) -> None:
    """Under the creation lease: replace the group (``"w"``) or prove it empty (``"w-"``)."""
    if plan.mode == "w":
        clear_group(store, plan.group)
        return
    found = group_contents(store, plan.group)
    if found:
        raise ExistingStoreError(
            f"{display_location(plan.target)} holds data since this write was planned "
            f"({found[0]!r}; another job created it) and mode='w-' never overwrites; use "
            "mode='w' to replace it"
        )
    remove_strays(store, plan.group)


def _edge_store(plan: WritePlan, reads: Store | None = None) -> Store:
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


def _report(
    stats: Mapping[str, Any],
    plan: WritePlan,
    t0: float,
    meta: float,
    meta_io: Mapping[str, Any],
    journal: WriteJournal | None,
    resume: ResumeLog | None = None,
    strays_before: float | None = None,
    meta_written: Mapping[str, Any] | None = None,
    token: str = "",
    resumed: int = 0,
) -> WriteReport:
    io = IOMetrics.merged([plan.io, meta_io, stats["io"]])
    if stats["failures"]:
        record = _record(plan, stats)
        if journal is not None:
            with contextlib.suppress(Exception):  # the error below matters more
                journal.fail(record, io)
        failures = stats["failures"]
        cause = next((f["exception"] for f in failures if f.get("exception")), None)
        running = sum(int(f.get("still_running") or 0) for f in failures)
        raise WriteError(_failure_message(plan, record, io, running, journal), record) from cause
    # The bookkeeping's requests count in the running totals as they happen (the
    # dashboard's figures end at the report's), and in the report.
    tail = live_metrics(describe_store(plan.store))
    try:
        # The manifest before the record: a kill in between leaves a store that
        # readers still refuse and a rerun finishes (every task is marked).
        if not is_icechunk(plan.store):
            written = {**(meta_written or {}), **stats.get("objects", {})}
            write_fragment(wrap_store(plan.store, plan.throttle, tail), plan.group, token,
                           objects_of_lists(written))  # fmt: skip
        if resume is not None:
            resume.seal(tail)
        if strays_before is not None:
            # Under the creation lease: temporary files of killed runs are nobody's.
            remove_strays(plan.store, plan.group, older_than=strays_before)
        if journal is not None:
            journal.done(tail, plan.unit_spans())
        if resume is not None:
            resume.clear(tail)
    except StoreError as e:
        # Every unit landed; only the bookkeeping failed. The record stays, so
        # readers refuse the store until it is removed: say so, do not fail.
        warnings.warn(
            f"every write unit of {display_location(plan.target)} landed, but removing the "
            f"write's record failed ({e}); readers refuse the store until it is gone. Rerun the "
            "write, or remove it with toolkit.state.records.clear_records(store)",
            CleanupWarning,
            stacklevel=2,
        )
    io.merge(tail)
    return WriteReport(
        target=plan.target,
        variables=tuple(v.name for v in plan.variables),
        tasks=int(stats["tasks"]),
        units=int(stats["units"]),
        nbytes=int(stats["nbytes"]),
        stored_bytes=int(stats["io"]["bytes_written"]),
        seconds=time.time() - t0,
        metadata_seconds=meta,
        requests={k: int(stats["io"][k]) for k in ("gets", "sets", "deletes", "lists")},
        io=io,
        plan=plan,
        forks=tuple(stats.get("forks", ())),
        resumed=resumed,
    )


def _record(plan: WritePlan, stats: Mapping[str, Any]) -> dict[str, Any]:
    """Per variable: units planned and written, and every missing unit's index.

    A unit not listed as missing was written (a failed task lists its own
    written and missing units; the other tasks wrote all theirs).
    """
    out: dict[str, Any] = {
        v.name: {"units": v.nunits, "written": v.nunits, "missing": [], "errors": []}
        for v in plan.variables
    }
    for f in stats["failures"]:
        v = out[f["variable"]]
        v["missing"].extend(list(u) for u in f["missing"])
        v["written"] -= len(f["missing"])
        if f.get("error") and f["error"] not in v["errors"]:
            v["errors"].append(f["error"])
    for v in out.values():
        v["missing"].sort()
    return out


def _failure_message(
    plan: WritePlan,
    record: Mapping[str, Any],
    io: IOMetrics,
    running: int = 0,
    journal: WriteJournal | None = None,
) -> str:
    missing = sum(len(v["missing"]) for v in record.values())
    errors = [e for v in record.values() for e in v["errors"]]
    still = (
        "No request of this write is still running."
        if not running
        else f"{running} request(s) of this write had not come back {_IDLE_WAIT:g} s after the "
        "failure and may still land."
    )
    where = (
        f"in the store as {journal.key}; readers refuse the store until the write is redone "
        "(rerun it: the same call finishes it) or the record is cleared"
        if journal is not None
        else "nowhere else: these rows were not visible to readers"
    )
    lines = [
        f"writing {display_location(plan.target)} failed: {missing:,} of {plan.nunits:,} "
        "write units are missing "
        f"({', '.join(f'{k}: {len(v["missing"])}' for k, v in record.items() if v['missing'])}).",
        f"Cause: {errors[0] if errors else 'unknown'}",
        f"Requests: {io.total:,} sent, {io.throttled:,} throttled, {io.errors:,} failed, "
        f"{io.retries:,} retried.",
        f"{still} The record of written and missing units is in err.record and {where}.",
    ]
    return "\n".join(lines)


_IDLE_WAIT = 120.0


def as_dataset(obj: xr.Dataset | xr.DataArray) -> xr.Dataset:
    """``obj`` as the dataset xarray writes for it (``DataArray.to_zarr``'s naming)."""
    if isinstance(obj, xr.Dataset):
        return obj
    if not isinstance(obj, xr.DataArray):
        raise TypeError(f"to_zarr needs an xarray Dataset or DataArray, got {type(obj).__name__}")
    if obj.name is None:
        return obj.to_dataset(name=DATAARRAY_VARIABLE)
    if obj.name in obj.coords or obj.name in obj.dims:
        # The netCDF data model has no variable named like a coordinate: xarray
        # renames it and keeps the old name, which open_dataarray restores.
        out = obj.to_dataset(name=DATAARRAY_VARIABLE)
        out.attrs[DATAARRAY_NAME] = obj.name
        return out
    return obj.to_dataset()


def reject_unknown(unknown: Iterable[str], options: Iterable[str], caller: str) -> None:
    """Raise :class:`~toolkit.errors.UnknownOptionError` naming the closest of ``options``."""
    unknown, options = list(unknown), list(options)
    if not unknown:
        return
    msgs = []
    for k in unknown:
        close = difflib.get_close_matches(k, options, 1)
        msgs.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise UnknownOptionError(f"{caller}() got unknown options: " + "; ".join(msgs))


def write_dataset(
    ds: xr.Dataset | xr.DataArray,
    store: StoreLike,
    *,
    compute: bool = True,
    progress: bool = True,
    job: str | None = None,
    record: bool = True,
    claim: CreationClaim | None = None,
    **options: Any,
) -> WriteReport | Delayed:
    """One job's write: :func:`~toolkit.plan_write`, then :func:`execute`.

    What :func:`toolkit.to_zarr` does when it is neither an append nor a
    partition overwrite (which coordinate with other jobs first); ``options``
    are :func:`~toolkit.plan_write`'s; ``job``, ``record`` and ``claim`` are
    :func:`execute`'s.
    """
    known = [p for p in inspect.signature(plan_write).parameters if p not in ("ds", "store")]
    reject_unknown(
        (k for k in options if k not in known), [*known, "compute", "progress"], "to_zarr"
    )
    plan = plan_write(as_dataset(ds), store, **options)
    return execute(plan, compute=compute, progress=progress, job=job, record=record, claim=claim)
