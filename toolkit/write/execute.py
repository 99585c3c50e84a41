"""Writes: plan, then graph, then execute.

:func:`to_zarr` is the one-call form; :func:`execute` runs a plan made by
:func:`toolkit.plan_write`. Array metadata, CF encoding and in-memory coordinates
go through xarray's own Zarr backend, so stores written here open in xarray like
any other; the chunk data goes through toolkit's graph, one task per group of
whole write units.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import sys
import time
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Literal

import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed

from toolkit._util import Background
from toolkit.cluster.budgets import cluster_share
from toolkit.cluster.executor import Executor, executor
from toolkit.cluster.progress import progress_bar
from toolkit.coordination.claim import (
    CreationClaim,
    listing_is_free,
    take_claim,
)
from toolkit.coordination.leases import job_id
from toolkit.coordination.records import ResumeLog
from toolkit.errors import (
    PlanError,
    SourceChangedError,
    UnknownOptionError,
)
from toolkit.io.conditional import conditional_store, supports_conditional
from toolkit.io.metrics import live_metrics
from toolkit.io.stores import (
    StoreLike,
    describe_store,
    display_location,
    is_icechunk,
    resolve_store,
    store_label,
)
from toolkit.io.throttle import Throttle, resolve_throttle
from toolkit.io.wrappers import wrap_store
from toolkit.upstream import (
    DATAARRAY_NAME,
    DATAARRAY_VARIABLE,
    sync,
)
from toolkit.write.graph import (
    WriteIO,
    build_write_graph,
)
from toolkit.write.metadata import edge_store, metadata_round
from toolkit.write.plan import DEFAULT_MAX_TASK_BYTES, WriteMode, WritePlan, plan_write
from toolkit.write.report import WriteReport, then_report

_DEFAULT_CONCURRENCY = 10  # zarr's own default, for unthrottled stores

__all__ = [
    "as_dataset",
    "execute",
    "plan_resumable",
    "reject_unknown",
    "small_write_threads",
    "write_dataset",
    "write_io",
]


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
        plan_write,
        ds,
        store,
        zarr_format=zarr_format,
        max_task_bytes=max_task_bytes,
        throttle=policy,
    )
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


def write_resumable(
    ds: xr.Dataset, target: StoreLike, *, progress: bool = True, **options: Any
) -> WriteReport:
    """A write that resumes (a copy's, an ingest's): :func:`plan_resumable`, then :func:`execute`.

    ``options`` are :func:`plan_resumable`'s.
    """
    plan, log = plan_resumable(ds, target, **options)
    report = execute(plan, progress=progress, resume=log)
    assert isinstance(report, WriteReport)  # computed: not a Delayed
    return report


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
        :func:`toolkit.commands.copy` pass one).
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
            + (
                "; a DataTree's plan runs with toolkit.execute_tree(plan)"
                if hasattr(plan, "nodes")
                else ""
            )
        )
    plan.validate()
    t0 = time.time()
    meta_io = live_metrics(describe_store(plan.store))
    # A region write's metadata round reads the documents its plan read (it writes no
    # array metadata). Others read the store: a creation checks that it is still
    # empty, and a write that adds arrays lists the group to consolidate it.
    reads = plan.reads if plan.mode == "r+" else None
    direct = wrap_store(edge_store(plan, reads), plan.throttle, meta_io)
    owner = job_id()
    transactional = is_icechunk(plan.store)
    # A creation (and the resumption of one) holds the group's creation lease
    # until its last object landed: two creators never mix (toolkit.coordination.claim).
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
        meta = metadata_round(
            plan, direct, resume, creating, transactional, t0, job, record, empty=empty
        )
    except BaseException:
        if own_claim is not None:
            own_claim.release()
        raise
    # Each run's own token: its tasks' keys and abort gate are never another run's.
    runner = executor()
    io = write_io(plan, tokenize(meta.token, owner, t0), resume, owner, runner)
    meta_seconds = time.time() - t0
    graph = build_write_graph(plan, meta.sources, io, skip=meta.done)
    report = then_report(
        graph,
        plan=plan,
        t0=t0,
        meta=meta_seconds,
        meta_io=meta_io,
        write_record=meta.write_record,
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
            own_claim.release_when_done(meta.write_record, report)
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
            threads=small_write_threads(plan.nbytes, plan.ntasks),
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


def small_write_threads(nbytes: int, ntasks: int) -> int | None:
    """Threads for a small write on the local scheduler: one per task (None: one per core).

    An append of one step of 12 variables is 13 tasks of a few dozen KiB each.
    With one thread per core they go out two at a time, six round trips in a
    row over a slow link; with one thread per task, in one round. The tasks
    wait on the network with the GIL released, and their memory is the whole
    write's, which is small: big writes keep one thread per core.
    """
    if nbytes > _SMALL_WRITE_BYTES or ntasks <= (os.cpu_count() or 1):
        return None
    return min(ntasks, _SMALL_WRITE_THREADS)


def derive_write_id(plan: WritePlan) -> str:
    """A write's identity from its request: the same target, region and data give the same id."""
    region = {k: (v.start, v.stop) for k, v in (plan.region or {}).items()}
    token = tokenize(plan.target, plan.group, plan.mode, sorted(region.items()), plan.dataset)
    return f"write-{token[:24]}"


def write_io(
    plan: WritePlan, token: str, resume: ResumeLog | None, owner: str, runner: Executor
) -> WriteIO:
    """What every write task needs: this process's share of the budget, markers, shared units."""
    share = cluster_share(plan.throttle, runner)
    # Any region write may share units: with other regions at its edges, and with an
    # append's hidden rows in the last unit (see edge_store).
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
