"""From a validated plan to one dask graph.

Each write task owns whole write units (the plan proves it) and writes them in
zarr calls that zarr runs concurrently on its own event loop: one call, or as
many at once as keep the task's share of requests in flight (zarr caps each
call at its ``async.concurrency``, which toolkit never changes). I/O concurrency
is per task, not the number of dask threads. The graph is assembled layer by
layer as plain dicts (no optimisation pass over the whole array graph), so
building it costs about as much as enumerating the tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.task_spec import DataNode, List, Task, TaskRef
from zarr.abc.store import Store
from zarr.buffer.cpu import Buffer

from toolkit import grid, runtime
from toolkit._util import backoff, collector_paused, settle_zarr_calls
from toolkit.cluster.coordinator import remote_budget_for
from toolkit.cluster.executor import in_task
from toolkit.cluster.metrics import publish
from toolkit.coordination.records import task_marker
from toolkit.io.calls import local_slices, zarr_parts
from toolkit.io.conditional import ConditionalStore
from toolkit.io.digests import WrittenStore
from toolkit.io.metrics import IOMetrics, live_metrics
from toolkit.io.rmw import ConditionalUnits, UnitConflict
from toolkit.io.stores import describe_store, redact, unwrap
from toolkit.io.throttle import Throttle
from toolkit.io.wrappers import GateStore, find_wrapper, rebind, wrap_store, writing_empty_chunks
from toolkit.runtime import Registry, Runtime, Slot
from toolkit.upstream import sync
from toolkit.write.plan import VariablePlan, WritePlan

__all__ = [
    "IDLE_TIMEOUT",
    "WriteIO",
    "WriteSource",
    "build_write_graph",
    "partial_units",
    "unit_key",
    "write_block",
]

_STAT_KEYS = ("tasks", "units", "nbytes")
_FAN_IN = 16  # results per node of the tree merging Icechunk forks


@dataclass(frozen=True)
class WriteSource:
    """What one variable's tasks read from and write to.

    Attributes
    ----------
    plan : VariablePlan
        The variable's plan.
    data : dask.array.Array
        The encoded values (as xarray would store them), any chunking.
    target : zarr.Array[Any]
        The created or opened array, bound to the plain (unwrapped) store.
    """

    plan: VariablePlan
    data: da.Array
    target: zarr.Array[Any]


@dataclass(frozen=True)
class WriteIO:
    """How every task of one write reaches the store (small; shipped once).

    Attributes
    ----------
    token : str
        The write's identity: tasks of a failed write stop early.
    throttle : Throttle or None
        This process's share of the budget (already split among workers).
    concurrency : int
        Requests one task keeps in flight (in as many concurrent zarr calls as
        zarr's ``async.concurrency`` per call needs).
    distributed : bool
        Whether the tasks run on a ``distributed`` cluster (a failing task then
        tells every worker to skip the write's remaining tasks).
    resume_prefix : str, optional
        Where a resumable write's tasks put their completion markers
        (:class:`toolkit.coordination.records.ResumeLog`).
    cas : ConditionalStore, optional
        For region writes: the store's conditional operations, through which
        the write units a task covers only partly are read-modify-written
        (another job's region may share them; a conditional write never loses
        its values, see :mod:`toolkit.io.rmw`).
    owner : str
        The job writing.
    transactional : bool
        The target is an Icechunk fork: on a cluster each task returns its
        worker's copy of the fork, and the copies are merged in a tree.
    """

    token: str
    throttle: Throttle | None
    concurrency: int
    distributed: bool
    resume_prefix: str | None = None
    cas: ConditionalStore | None = None
    owner: str = ""
    transactional: bool = False


#: The writes (by token) whose tasks are to stop, in the current runtime: a write's
#: token is dropped by its last task (:func:`summarize`).
_ABORTED: Slot[Registry[str, None]] = Slot("write.graph.aborted", Registry)


def _mark_aborted(token: str) -> None:
    runtime.current().get(_ABORTED).put(token, None)


def _forget_aborted(token: str) -> None:
    runtime.current().get(_ABORTED).pop(token)


def _aborted(io: WriteIO) -> bool:
    return io.token in runtime.current().get(_ABORTED)


def _abort(io: WriteIO) -> None:
    """Stop the write's tasks that have not started, in every process.

    Costs nothing while the write succeeds: only a failing task tells the other
    workers, once.
    """
    _mark_aborted(io.token)
    if io.distributed:
        with contextlib.suppress(Exception):  # the scheduler gone: the write fails anyway
            in_task().tell(_mark_aborted, io.token)


def unit_key(target: zarr.Array[Any], unit: tuple[int, ...]) -> str:
    """The store key of one write unit (chunk, or shard) of ``target``."""
    key = target.metadata.encode_chunk_key(unit)
    return f"{target.path}/{key}" if target.path else key


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.]+", "_", name)[:60] or "var"


def partial_units(
    target: zarr.Array[Any], region: tuple[slice, ...], units: tuple[tuple[int, int], ...]
) -> list[tuple[int, ...]]:
    """The units among ``units`` that ``region`` covers only partly (read-modify-writes)."""
    size = target.shards or target.chunks
    per_axis = []
    for sl, (a, b), c, n in zip(region, units, size, target.shape, strict=True):
        partial = set()
        for u in (a, b - 1):
            if sl.start > u * c or sl.stop < min((u + 1) * c, n):
                partial.add(u)
        per_axis.append(partial)
    if not any(per_axis):
        return []
    return [
        u
        for u in itertools.product(*(range(a, b) for a, b in units))
        if any(x in p for x, p in zip(u, per_axis, strict=True))
    ]


_RMW_ATTEMPTS = 32
IDLE_TIMEOUT = 120.0  # seconds a failed task waits for its requests to come back


def _write_units(
    block: np.ndarray,
    target: zarr.Array[Any],
    region: tuple[slice, ...],
    units: tuple[tuple[int, int], ...],
    stack: Store,
    io: WriteIO,
) -> None:
    """``target[region] = block`` through ``stack``; shared units conditionally, retried.

    A unit ``region`` covers only partly is read, merged and written back only
    if nobody wrote it in between; otherwise the whole call runs again on what
    is there now (every unit it writes holds the same values again).
    """
    partial = partial_units(target, region, units) if io.cas is not None else []
    if not partial:
        _set_in_parts(rebind(target, stack), region, block, io.concurrency)
        return
    assert io.cas is not None
    record = stack.written if isinstance(stack, WrittenStore) else None
    shared = ConditionalUnits(stack, io.cas, [unit_key(target, u) for u in partial], record)
    # A shared unit that became all fill value is written, never deleted: a delete
    # cannot be conditional on every store.
    array = writing_empty_chunks(rebind(target, shared))
    for attempt in range(_RMW_ATTEMPTS):
        try:
            _set_in_parts(array, region, block, io.concurrency)
            return
        except UnitConflict:
            if attempt + 1 == _RMW_ATTEMPTS:
                raise
            shared.forget()
            time.sleep(backoff(attempt, base=0.005, cap=0.5))


def _set_in_parts(
    array: zarr.Array[Any], region: tuple[slice, ...], block: np.ndarray, inflight: int
) -> None:
    """``array[region] = block`` in concurrent zarr calls keeping ``inflight`` requests going.

    (:func:`toolkit.io.calls.zarr_parts`: zarr's own cap per call is never raised.)
    Every call runs to its end before this returns or raises, so that none
    writes on behind a retry or an abort. A store's error is raised before a
    shared unit's conflict (which only asks for the whole region again).
    """
    parts = zarr_parts(array, region, inflight)
    if len(parts) == 1:
        array[region] = block
        return

    async def every() -> list[BaseException | None]:
        calls = (array.async_array.setitem(p, block[local_slices(p, region)]) for p in parts)
        return await asyncio.gather(*calls, return_exceptions=True)

    errors = [e for e in sync(every()) if isinstance(e, BaseException)]
    errors.sort(key=lambda e: isinstance(e, UnitConflict))
    if errors:
        raise errors[0]


def write_block(
    block: np.ndarray,
    target: zarr.Array[Any],
    region: tuple[slice, ...],
    units: tuple[tuple[int, int], ...],
    io: WriteIO,
    rt: Runtime | None = None,
) -> dict[str, Any]:
    """Write one task's block: whole units, one concurrent zarr call.

    Never raises for a store failure. Instead it stops every request of its
    own, waits until none is in flight, and returns which of its units were
    written and which are missing. The write's last task then raises with the
    record of the whole write, and nothing of it is still running by then.
    Returns the task's measured figures (requests, bytes, latency, retries).
    Runs in ``rt``, the runtime the graph was built in (a worker process's
    own on a cluster), the current one if None.
    """
    with runtime.using(rt or runtime.current()):
        return _write_block(block, target, region, units, io)


def _write_block(
    block: np.ndarray,
    target: zarr.Array[Any],
    region: tuple[slice, ...],
    units: tuple[tuple[int, int], ...],
    io: WriteIO,
) -> dict[str, Any]:
    nunits = math.prod(b - a for a, b in units)
    out: dict[str, Any] = {
        "variable": target.basename,
        "tasks": 1,
        "units": nunits,
        "nbytes": int(block.nbytes),
        "error": None,
    }

    def all_units() -> list[tuple[int, ...]]:
        return list(itertools.product(*(range(a, b) for a, b in units)))

    if _aborted(io):
        out.update(units=0, nbytes=0, missing=all_units(), written=[], skipped=True, io={})
        return out
    metrics = live_metrics(describe_store(target.store))
    stack = wrap_store(target.store, io.throttle, metrics, gate=True, remote=remote_budget_for)
    gate = find_wrapper(stack, GateStore)
    assert gate is not None
    # What the task puts in the store, for the write's manifest fragment.
    recorded = WrittenStore(stack)
    out["objects"] = {}
    try:
        _write_units(block, target, region, units, recorded, io)
        if io.resume_prefix is not None:
            # After every unit landed: a resumed run skips this task. The marker
            # holds the units' sizes and checksums, from which the manifest is made.
            marker = f"{io.resume_prefix}{target.basename}/{task_marker(units)}"
            body = json.dumps(recorded.written.as_lists(), sort_keys=True).encode()
            sync(stack.set(marker, Buffer.from_bytes(body)))
        out["objects"] = recorded.written.as_lists()
    except Exception as e:
        gate.abort()
        idle = gate.wait_idle(timeout=IDLE_TIMEOUT)
        # Not in flight, but queued in zarr's loop: they would outlive the task.
        idle = settle_zarr_calls(IDLE_TIMEOUT) and idle
        _abort(io)
        landed = [unit_key(target, u) in gate.landed for u in all_units()]
        out.update(
            units=sum(landed),
            written=[u for u, ok in zip(all_units(), landed, strict=True) if ok],
            missing=[u for u, ok in zip(all_units(), landed, strict=True) if not ok],
            error=f"{type(e).__name__}: {redact(str(e), target.store)}",
            error_type=type(e).__name__,
            exception=_portable(e),
            # A request that did not come back in time may still land: say so.
            still_running=0 if idle else gate.inflight,
        )
    out["io"] = metrics.as_dict()
    publish(out["io"])
    if io.transactional and io.distributed:
        # This worker's copy of the fork holds the task's chunk references.
        out["fork"] = getattr(unwrap(target.store), "session")  # noqa: B009  (IcechunkStore)
    return out


def _portable(e: BaseException) -> BaseException | None:
    """``e`` if it survives pickling (to be raised as the cause on the client), else None."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
    except Exception:
        return None
    return e


def _flat(parts: Sequence[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in parts:
        out.extend(_flat(p) if isinstance(p, list) else [p])
    return out


def merge_results(*parts: Any) -> list[dict[str, Any]]:
    """One node of the tree merging write results: their Icechunk forks become one."""
    flat: list[dict[str, Any]] = []
    for p in parts:
        flat.extend(p if isinstance(p, list) else [p])
    forks = [r.pop("fork") for r in flat if "fork" in r]
    if forks:
        forks[0].merge(*forks[1:])
        flat[0]["fork"] = forks[0]
    return flat


def summarize(
    results: Sequence[Any],
    started: float,
    io: WriteIO | None = None,
    rt: Runtime | None = None,
) -> dict[str, Any]:
    """Add up the figures of every write task (runs as the graph's last task).

    Every task of the write has ended by then: its abort gate is dropped, here
    and, if a task tripped it on a cluster, on every worker.
    """
    if io is not None:
        with runtime.using(rt or runtime.current()):
            _forget_aborted(io.token)
        if io.distributed and any(r.get("error") or r.get("skipped") for r in _flat(results)):
            with contextlib.suppress(Exception):  # the scheduler gone: nothing to forget
                in_task().tell(_forget_aborted, io.token)
    results = merge_results(*results)
    out: dict[str, Any] = dict.fromkeys(_STAT_KEYS, 0)
    out["forks"] = [r.pop("fork") for r in results if "fork" in r]
    failures: list[Mapping[str, Any]] = []
    for r in results:
        for k in _STAT_KEYS:
            out[k] += r[k]
        if "missing" in r:
            failures.append(r)
    out["io"] = IOMetrics.merged(r["io"] for r in results).as_dict()
    out["failures"] = failures
    # What the tasks put in the store (for the write's manifest fragment).
    out["objects"] = {k: v for r in results for k, v in (r.get("objects") or {}).items()}
    out["finished"] = time.time()
    out["started"] = started
    return out


@collector_paused()  # a million new objects for 100,000 tasks
def build_write_graph(
    plan: WritePlan,
    sources: Sequence[WriteSource],
    io: WriteIO,
    skip: Mapping[str, set[str]] | None = None,
) -> Delayed:
    """One graph writing every variable of ``plan``; computes to the summed figures.

    Parameters
    ----------
    plan : WritePlan
        A validated plan.
    sources : sequence of WriteSource
        One per planned variable.
    io : WriteIO
        How the tasks reach the store.
    skip : mapping of str to set of str, optional
        Per variable, the completion markers of tasks to leave out (they landed
        in an earlier run of a resumable write). Their source blocks are not read.
    """
    # dask's task spec (dask.task_spec), not tuples: dask would convert a tuple graph
    # task by task when it runs it, 10 s for 100,000 write tasks before the first byte.
    layers: dict[str, Any] = {}
    deps: dict[str, set[str]] = {}
    write_keys: list[tuple[Any, ...]] = []
    token = io.token
    iokey = f"toolkit-io-{token}"
    layers[iokey] = {iokey: DataNode(iokey, io)}
    deps[iokey] = set()
    # The runtime the tasks run in: this one in this process; pickled to a worker, the
    # worker's own (a Runtime arrives as the receiving process's current runtime).
    rtkey = f"toolkit-runtime-{token}"
    io_ref, rt_ref = TaskRef(iokey), TaskRef(rtkey)
    layers[rtkey] = {rtkey: DataNode(rtkey, runtime.current())}
    deps[rtkey] = set()
    for src in sources:
        vp = src.plan
        data = src.data
        if data.chunks != vp.task_chunks:
            data = data.rechunk(vp.task_chunks)
        hlg = data.__dask_graph__()
        assert isinstance(hlg, HighLevelGraph)
        layers.update(hlg.layers)
        deps.update(hlg.dependencies)

        name = f"toolkit-write-{_safe(vp.name)}-{token}"
        tkey = f"toolkit-target-{_safe(vp.name)}-{token}"
        # The target is its own key: shipped to each worker once, not once per task.
        layers[tkey] = {tkey: DataNode(tkey, src.target)}
        deps[tkey] = set()
        target = TaskRef(tkey)
        own = vp._ownership
        # Per axis, each block's slice and unit range, as plain ints: the loop below
        # runs once per task (100k+), so it only picks from these.
        slices = [
            [slice(a, b) for a, b in itertools.pairwise((grid.edges(c) + o).tolist())]
            for c, o in zip(vp.task_chunks, vp.offset, strict=True)
        ]
        ranges = [list(zip(a.first.tolist(), a.stop.tolist(), strict=True)) for a in own]
        done = (skip or {}).get(vp.name)
        layer: dict[Any, Any] = {}
        blocks = zip(
            itertools.product(*(range(n) for n in data.numblocks)),
            itertools.product(*slices),
            itertools.product(*ranges),
            strict=True,
        )
        for idx, region, units in blocks:
            if done and task_marker(units) in done:
                continue
            key = (name, *idx)
            block = TaskRef((data.name, *idx))
            layer[key] = Task(key, write_block, block, target, region, units, io_ref, rt_ref)
            write_keys.append(key)
        layers[name] = layer
        deps[name] = {data.name, tkey, iokey, rtkey}

    fin = f"toolkit-finalize-{token}"
    tops: list[Any] = list(write_keys)
    below = {s for s in layers if s.startswith("toolkit-write-")}
    level = 0
    while io.transactional and io.distributed and len(tops) > _FAN_IN:
        name = f"toolkit-merge-{level}-{token}"
        layers[name] = {
            (name, i): Task((name, i), merge_results, *map(TaskRef, tops[j : j + _FAN_IN]))
            for i, j in enumerate(range(0, len(tops), _FAN_IN))
        }
        deps[name] = below
        tops, below, level = list(layers[name]), {name}, level + 1
    results = List(*map(TaskRef, tops))
    layers[fin] = {fin: Task(fin, summarize, results, time.time(), io_ref, rt_ref)}
    deps[fin] = below | {iokey, rtkey}
    return Delayed(fin, HighLevelGraph(layers, deps), layer=fin)
