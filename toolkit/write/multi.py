"""Many independent jobs writing one dataset: appends and partition overwrites.

Each job validates its data against the store first (nothing is written on
bad input), then asks the store's commit log (:mod:`toolkit.state.commitlog`) where
its rows go, then writes them as a region write in which every write unit it
only partly covers is updated under a per-unit lock (:class:`WriteIO.locks`).

- :func:`append`: the job reserves ``n`` rows along ``dim``. The committer
  hands out consecutive ranges in the order of the requests and grows every
  array along ``dim`` before answering, so the arrays only ever grow, and each
  job writes its data *and* its coordinate values into its own range.
- :func:`overwrite_partitions`: the job's rows are grouped by the labels of a
  partition coordinate. Labels already in the store keep their rows (the job
  must bring as many); new labels get new rows at the end. The job holds a lock
  per partition while it writes them, so two jobs overwriting one partition
  write it one after the other and one of them wins whole.

On a plain Zarr store readers may see a write in progress (rows still at their
fill value); :func:`toolkit.open_zarr` refuses the store while a write record
is present unless ``incomplete="ignore"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
import warnings
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import xarray as xr
import zarr
from zarr.abc.store import Store

from toolkit.errors import AppendError, PartitionError
from toolkit.io.groups import array_dims, open_group
from toolkit.io.stores import StoreLike, unwrap
from toolkit.state.commitlog import Batch, CommitLog, CommitStats
from toolkit.state.leases import Coordinator, Lease, LockSet, job_id, supports_atomic_create
from toolkit.write.execute import execute, write_dataset
from toolkit.write.plan import plan_write

__all__ = ["append", "overwrite_partitions"]

_MAX_RUNS = 4096
_PLAN_KEYS = ("encoding", "zarr_format", "throttle", "consolidated", "max_task_bytes")
_CREATE_ONLY = ("encoding", "zarr_format", "consolidated")


def _label(value: Any) -> str:
    """A partition label as a JSON key, the same in every job for equal values."""
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value, unit="ns"))
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def _runs(values: np.ndarray) -> list[tuple[str, int]]:
    """Consecutive runs of equal labels: [(label, length), ...]."""
    out: list[tuple[str, int]] = []
    for v in values:
        lab = _label(v)
        if out and out[-1][0] == lab:
            out[-1] = (lab, out[-1][1] + 1)
        else:
            out.append((lab, 1))
    return out


def _arrays_along(
    store: Store, group: str | None, dim: str, mode: Literal["r", "r+"] = "r"
) -> list[tuple[zarr.Array[Any], int]]:
    grp = open_group(store, group, mode)
    out = []
    for _, arr in grp.arrays():
        dims = array_dims(arr)
        if dim in dims:
            out.append((arr, dims.index(dim)))
    return out


def _length(store: Store, group: str | None, dim: str) -> int:
    return max((a.shape[ax] for a, ax in _arrays_along(store, group, dim)), default=0)


def _grow(store: Store, group: str | None, dim: str, length: int) -> None:
    """Grow every array along ``dim`` to ``length`` (never shrinks; idempotent)."""
    grown = False
    for arr, ax in _arrays_along(store, group, dim, "r+"):
        if arr.shape[ax] < length:
            shape = list(arr.shape)
            shape[ax] = length
            arr.resize(tuple(shape))
            grown = True
    if grown:
        fmt = arr.metadata.zarr_format
        try:
            grp = zarr.open_group(store, path=group or "", mode="r", zarr_format=fmt)
        except (ValueError, FileNotFoundError):
            return
        if grp.metadata.consolidated_metadata is not None:
            with warnings.catch_warnings():
                # zarr warns that v3 consolidated metadata is an extension; xarray chose it.
                warnings.filterwarnings("ignore", "Consolidated metadata", category=UserWarning)
                zarr.consolidate_metadata(store, path=group or "", zarr_format=fmt)


def _stored_partitions(store: Store, group: str | None, coord: str) -> dict[str, list[int]]:
    ds = xr.open_zarr(store, group=group, consolidated=False, chunks=None)
    if coord not in ds.variables or ds[coord].ndim != 1:
        raise PartitionError(f"the store has no 1-D coordinate {coord!r} to partition by")
    out: dict[str, list[int]] = {}
    start = 0
    for lab, n in _runs(ds[coord].values):
        if lab in out:
            raise PartitionError(
                f"partition {lab!r} of {coord!r} is not one contiguous run of rows in the "
                "store; overwrite-partitions needs each label's rows together"
            )
        out[lab] = [start, start + n]
        start += n
    return out


def decide_rows(
    state: dict[str, Any],
    requests: list[dict[str, Any]],
    read: Callable[[], Store],
    group: str | None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Place the rows of a batch of ``reserve`` and ``partitions`` requests.

    Returns the new state (``dims``: length per dimension; ``partitions``: per
    coordinate, each label's rows) and an answer per request. ``read()`` gives
    the store holding the dataset as committed, consulted the first time a
    dimension or partition coordinate is met. Requests of other kinds are left
    unanswered.
    """
    dims: dict[str, int] = dict(state.get("dims", {}))
    parts: dict[str, Any] = {k: dict(v) for k, v in state.get("partitions", {}).items()}
    answers: dict[str, dict[str, Any]] = {}
    store = None
    for req in requests:
        if req["kind"] not in ("reserve", "partitions"):
            continue
        store = store or read()
        dim = req["dim"]
        if dim not in dims:
            dims[dim] = _length(store, group, dim)
        if req["kind"] == "reserve":
            start = dims[dim]
            dims[dim] = start + int(req["n"])
            answers[req["job"]] = {"start": start, "stop": dims[dim]}
            # Labels of tracked partition coordinates arrive with appends too.
            for coord, runs in req.get("runs", {}).items():
                if coord in parts and parts[coord]["dim"] == dim:
                    labels = dict(parts[coord]["labels"])
                    pos = start
                    for lab, n in runs:
                        labels[lab] = [pos, pos + n]
                        pos += n
                    parts[coord] = {"dim": dim, "labels": labels}
            continue
        coord = req["coord"]
        try:
            if coord not in parts:
                parts[coord] = {
                    "dim": dim,
                    "labels": _stored_partitions(store, group, coord),
                }
        except PartitionError as e:
            answers[req["job"]] = {"error": str(e)}
            continue
        labels = dict(parts[coord]["labels"])
        ranges, end, bad = [], dims[dim], []
        for lab, n in req["runs"]:
            if lab in labels:
                a, b = labels[lab]
                if b - a != n:
                    bad.append(f"{lab!r} has {b - a} rows in the store, the job brings {n}")
                ranges.append([lab, a, b])
            else:
                ranges.append([lab, end, end + n])
                end += n
        if bad:
            answers[req["job"]] = {
                "error": "partitions cannot change size in place: "
                + "; ".join(bad)
                + f". Bring exactly the stored rows of each {coord!r} partition"
            }
            continue
        for lab, a, b in ranges:
            labels[lab] = [a, b]
        parts[coord] = {"dim": dim, "labels": labels}
        dims[dim] = end
        answers[req["job"]] = {"ranges": ranges}
    return {**state, "dims": dims, "partitions": parts}, answers


def _decider(store: Store, group: str | None) -> Callable[..., Batch]:
    """The committer's decision for a batch on a plain Zarr store: place, then grow."""

    def decide(state: dict[str, Any], requests: list[dict[str, Any]]) -> Batch:
        new, answers = decide_rows(state, requests, lambda: store, group)

        def effect() -> None:
            for dim, length in new["dims"].items():
                _grow(store, group, dim, length)
            return None

        return Batch(new, answers, effect)

    return decide


def commit_log(store: Store, group: str | None = None) -> CommitLog:
    """The dataset's commit log (reservations and partitions)."""
    base = unwrap(store)
    return CommitLog(Coordinator(base, group), _decider(base, group))


@contextlib.contextmanager
def _creating(store: Store, group: str | None, owner: str, maybe_empty: bool) -> Iterator[bool]:
    """Hold the ``create`` lease while the dataset does not exist yet; yields whether it is empty.

    ``maybe_empty``: planning found no arrays (else nothing is checked again).
    """
    if not maybe_empty:
        yield False
        return
    lease = Lease(Coordinator(store, group), "create", owner)
    lease.acquire()
    try:
        yield not _has_arrays(store, group)
    finally:
        lease.release()


def _has_arrays(store: Store, group: str | None) -> bool:
    try:
        grp = open_group(store, group)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return False
    return any(True for _ in grp.array_keys())


def _region_write(
    ds: xr.Dataset, store: Store, dim: str, start: int, stop: int, kw: Mapping[str, Any]
) -> Any:

    return write_dataset(
        rows_along(ds, dim), store, mode="r+", region={dim: slice(start, stop)}, **kw
    )


def rows_along(ds: xr.Dataset, dim: str) -> xr.Dataset:
    """What a job writes into its rows along ``dim``: every variable on ``dim``.

    The coordinate values are included, as a plain variable (region writes skip indexes).
    """
    along = ds.drop_vars([v for v in ds.variables if dim not in ds[v].dims])
    return along.drop_indexes(dim) if dim in along.indexes else along


def append(
    ds: xr.Dataset,
    store: StoreLike,
    dim: Hashable,
    *,
    group: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Append ``ds`` along ``dim``, safely beside any number of concurrent appenders.

    The job reserves its rows through the store's commit log, the arrays grow
    before it writes, and it writes its data and coordinates into its own
    range. Concurrent appends all land, in the order their reservations were
    committed. A store that does not exist yet is created by the first job.

    Calls from several threads of one process to the same target at about the
    same time are written as one job (concatenated along ``dim``), and each
    call still gets its own rows back: many small writers cost a few log
    entries and a few writes, not one each. A batch that fails is retried call
    by call, so that each error reaches the call that caused it.

    Parameters
    ----------
    ds : xarray.Dataset
        The rows to add (variables without ``dim`` must already be stored).
    store : str, os.PathLike or zarr Store
        A local path, an S3 URL, or a store (it needs atomic creates).
    dim : str
        The dimension to grow.
    group, storage_options : optional
        As in :func:`toolkit.to_zarr`.
    **kwargs
        Passed on to :func:`toolkit.to_zarr` (``throttle``, ``progress``, ...).

    Returns
    -------
    WriteReport
        With ``placement``: the range written and what committing cost.

    Raises
    ------
    toolkit.errors.AppendError
        Before anything is written, when the data does not fit the store.

    Examples
    --------
    >>> import numpy as np
    >>> import xarray as xr
    >>> import toolkit
    >>> ds = xr.Dataset(
    ...     {"t2m": (("time", "x"), np.arange(48.0).reshape(12, 4))},
    ...     coords={"time": np.arange(12)},
    ... ).chunk({"time": 5})
    >>> _ = toolkit.to_zarr(ds, "log.zarr", progress=False)
    >>> later = ds.assign_coords(time=ds.time + 12)
    >>> report = toolkit.append(later, "log.zarr", "time", progress=False)
    >>> report.placement["start"], report.placement["stop"]  # the rows it reserved
    (12, 24)
    """
    dim = str(dim)
    if kwargs.get("compute", True) is False:
        return _append_one(ds, store, dim, group, storage_options, kwargs)
    key = _batch_key("append", store, group, dim, storage_options, kwargs)

    def run(batch: list[_Waiting]) -> None:
        _run_batch(batch, dim, lambda d: _append_one(d, store, dim, group, storage_options, kwargs),
                   _split_rows)  # fmt: skip

    return _coalesce(key, ds, run)


def _append_one(
    ds: xr.Dataset,
    store: StoreLike,
    dim: str,
    group: str | None,
    storage_options: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
) -> Any:
    plan = plan_write(
        ds,
        store,
        mode="a",
        append_dim=dim,
        group=group,
        storage_options=storage_options,
        **{k: v for k, v in kwargs.items() if k in _PLAN_KEYS},
    )
    base = plan.store
    owner = job_id()
    if not supports_atomic_create(base):
        return execute(plan, **{k: v for k, v in kwargs.items() if k in ("progress", "compute")})
    with _creating(base, group, owner, plan.mode == "w-") as empty:
        if empty:
            return write_dataset(ds, base, mode="a", group=group, **kwargs)
    n = ds.sizes[dim]
    if n == 0:
        raise AppendError(f"nothing to append: the dataset has no rows along {dim!r}")
    runs = {
        str(name): r
        for name, var in ds.coords.items()
        if var.dims == (dim,) and len(r := _runs(var.values)) <= _MAX_RUNS
    }
    log = commit_log(base, group)
    answer = log.submit({"kind": "reserve", "dim": dim, "n": n, "runs": runs}, job=owner)
    kw = {k: v for k, v in kwargs.items() if k not in _CREATE_ONLY}
    report = _region_write(ds, base, dim, answer["start"], answer["stop"], {"group": group, **kw})
    return _placed(report, {"dim": dim, "start": answer["start"], "stop": answer["stop"]}, log)


def overwrite_partitions(
    ds: xr.Dataset,
    store: StoreLike,
    partition: Hashable,
    *,
    group: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    lock_timeout: float = 600.0,
    **kwargs: Any,
) -> Any:
    """Replace exactly the partitions present in ``ds`` (Iceberg's dynamic overwrite).

    Parameters
    ----------
    ds : xarray.Dataset
        The new rows; its ``partition`` coordinate labels them, each label's
        rows together.
    store : str, os.PathLike or zarr Store
        The dataset (created by the first job if it does not exist).
    partition : str
        A 1-D coordinate (or a dimension) whose labels name the partitions.
    group, storage_options : optional
        As in :func:`toolkit.to_zarr`.
    lock_timeout : float
        Seconds to wait for another job's lock on one of the partitions.
    **kwargs
        Passed on to :func:`toolkit.to_zarr`.

    Returns
    -------
    WriteReport
        The last partition range's report, with ``placement`` listing every
        partition's rows.

    Raises
    ------
    toolkit.errors.PartitionError
        Before anything is written, when a label's rows are not together in
        ``ds`` or a stored partition has another number of rows.

    Examples
    --------
    >>> import numpy as np
    >>> import xarray as xr
    >>> import toolkit
    >>> days = xr.Dataset(
    ...     {"v": ("row", np.arange(6.0))}, coords={"day": ("row", ["mon"] * 3 + ["tue"] * 3)}
    ... )
    >>> _ = toolkit.to_zarr(days, "days.zarr", progress=False)
    >>> tue = xr.Dataset({"v": ("row", np.full(3, -1.0))}, coords={"day": ("row", ["tue"] * 3)})
    >>> wed = xr.Dataset({"v": ("row", np.full(2, 9.0))}, coords={"day": ("row", ["wed"] * 2)})
    >>> _ = toolkit.overwrite_partitions(xr.concat([tue, wed], "row"), "days.zarr", "day")
    >>> toolkit.open_zarr("days.zarr").v.values  # mon untouched, tue replaced, wed appended
    array([ 0.,  1.,  2., -1., -1., -1.,  9.,  9.])
    """
    coord = str(partition)
    if coord not in ds.variables or ds[coord].ndim != 1:
        raise PartitionError(
            f"partition={coord!r} must name a 1-D coordinate or dimension of the dataset "
            f"(it has coordinates {sorted(map(str, ds.coords))})"
        )
    dim = str(ds[coord].dims[0])
    if kwargs.get("compute", True) is False:
        return _overwrite_one(ds, store, coord, group, storage_options, lock_timeout, kwargs)
    key = _batch_key("partitions", store, group, coord, storage_options, kwargs)

    def one(d: xr.Dataset) -> Any:
        return _overwrite_one(d, store, coord, group, storage_options, lock_timeout, kwargs)

    def run(batch: list[_Waiting]) -> None:
        # Calls replacing the same partition go in different groups: one after the other.
        groups: list[tuple[set[str], list[_Waiting]]] = []
        for w in batch:
            labels = {lab for lab, _ in _runs(w.ds[coord].values)}
            for taken, members in groups:
                if not taken & labels:
                    taken |= labels
                    members.append(w)
                    break
            else:
                groups.append((labels, [w]))
        for _, members in groups:
            _run_batch(members, dim, one, _split_partitions)

    return _coalesce(key, ds, run)


def _overwrite_one(
    ds: xr.Dataset,
    store: StoreLike,
    coord: str,
    group: str | None,
    storage_options: Mapping[str, Any] | None,
    lock_timeout: float,
    kwargs: Mapping[str, Any],
) -> Any:
    dim = str(ds[coord].dims[0])
    runs = _runs(ds[coord].values)
    seen: set[str] = set()
    for lab, _ in runs:
        if lab in seen:
            raise PartitionError(
                f"partition {lab!r} of {coord!r} appears in more than one run of rows; "
                f"sort the dataset first: ds.sortby({coord!r})"
            )
        seen.add(lab)
    sel = {k: v for k, v in kwargs.items() if k in _PLAN_KEYS}
    plan = plan_write(
        ds, store, mode="a", append_dim=dim, group=group, storage_options=storage_options, **sel
    )
    base = plan.store
    owner = job_id()

    with _creating(base, group, owner, plan.mode == "w-") as empty:
        if empty:
            return write_dataset(ds, base, mode="a", group=group, **kwargs)
    log = commit_log(base, group)
    answer = log.submit({"kind": "partitions", "dim": dim, "coord": coord, "runs": runs}, job=owner)
    if "error" in answer:
        raise PartitionError(answer["error"])
    kw = {k: v for k, v in kwargs.items() if k not in _CREATE_ONLY}
    names = [f"partitions/{coord}/{lab}" for lab, _, _ in answer["ranges"]]
    # Consecutive ranges (new partitions, above all) are one region write.
    spans: list[list[int]] = []
    pos = 0
    for _, a, b in answer["ranges"]:
        if spans and spans[-1][1] == a:
            spans[-1][1] = b
        else:
            spans.append([a, b, pos])
        pos += b - a
    report: Any = None
    with LockSet(Coordinator(base, group), names, owner).hold(timeout=lock_timeout):
        for a, b, at in spans:
            rows = ds.isel({dim: slice(at, at + b - a)})
            report = _region_write(rows, base, dim, a, b, {"group": group, **kw})
    placement = {
        "dim": dim,
        "coord": coord,
        "partitions": {lab: [a, b] for lab, a, b in answer["ranges"]},
    }
    return _placed(report, placement, log)


@dataclass
class _Waiting:
    """One call waiting in a batch."""

    ds: xr.Dataset
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


_QUEUES: dict[str, list[_Waiting]] = {}
_LEADERS: set[str] = set()
_QUEUE_LOCK = threading.Lock()
_WINDOW = 0.02  # seconds a batch leader waits for company


def _batch_key(
    kind: str,
    store: StoreLike,
    group: str | None,
    what: str,
    storage_options: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
) -> str:
    # Paths batch by their text; store objects (and dicts) by identity.
    where = str(store) if isinstance(store, str | os.PathLike) else f"id:{id(store)}"
    opts = sorted((storage_options or {}).items(), key=str)
    return repr((kind, where, group, what, opts, sorted(kwargs.items(), key=str)))


def _coalesce(key: str, ds: xr.Dataset, run: Callable[[list[_Waiting]], None]) -> Any:
    """Join the batch for ``key``; the first caller leads, running batches until none is left."""
    me = _Waiting(ds)
    with _QUEUE_LOCK:
        _QUEUES.setdefault(key, []).append(me)
        lead = key not in _LEADERS
        _LEADERS.add(key)
    if lead:
        while True:
            time.sleep(_WINDOW)
            with _QUEUE_LOCK:
                batch = _QUEUES.pop(key, [])
                if not batch:
                    _LEADERS.discard(key)
                    break
            try:
                run(batch)
            except BaseException as e:  # hand it to every waiting call, then go on
                for w in batch:
                    if not w.done.is_set():
                        w.error = e
                        w.done.set()
    me.done.wait()
    if me.error is not None:
        raise me.error
    return me.result


def _run_batch(
    batch: list[_Waiting],
    dim: str,
    one: Callable[[xr.Dataset], Any],
    split: Callable[[Any, list[_Waiting], str], list[Any]],
) -> None:
    """Write ``batch`` as one job; on failure, call by call (each error to its call)."""
    if len(batch) > 1:
        try:
            combined = xr.concat([w.ds for w in batch], dim, join="outer")
            report = one(combined)
        except Exception:
            pass  # below, one by one: the culprit gets its own error
        else:
            for w, result in zip(batch, split(report, batch, dim), strict=True):
                w.result = result
                w.done.set()
            return
    for w in batch:
        try:
            w.result = one(w.ds)
        except Exception as e:
            w.error = e
        w.done.set()


def _split_rows(report: Any, batch: list[_Waiting], dim: str) -> list[Any]:
    """Each call's own rows of an append written for the whole batch."""
    if getattr(report, "placement", None) is None:
        return [report] * len(batch)  # the batch created the dataset
    out, start = [], report.placement["start"]
    for w in batch:
        n = w.ds.sizes[dim]
        mine = {**report.placement, "start": start, "stop": start + n, "batched_calls": len(batch)}
        out.append(dataclasses.replace(report, placement=mine))
        start += n
    return out


def _split_partitions(report: Any, batch: list[_Waiting], dim: str) -> list[Any]:
    """Each call's own partitions of an overwrite written for the whole batch."""
    if getattr(report, "placement", None) is None:
        return [report] * len(batch)  # the batch created the dataset
    out = []
    for w in batch:
        labels = {lab for lab, _ in _runs(w.ds[report.placement["coord"]].values)}
        mine = {
            **report.placement,
            "partitions": {k: v for k, v in report.placement["partitions"].items() if k in labels},
            "batched_calls": len(batch),
        }
        out.append(dataclasses.replace(report, placement=mine))
    return out


def _placed(report: Any, placement: dict[str, Any], log: CommitLog | None) -> Any:
    """Attach ``placement`` (and what committing cost) to ``report``."""
    if log is not None:
        stats: CommitStats = log.stats
        placement["commit"] = {
            "entry": stats.entry,
            "attempts": stats.attempts,
            "commits": stats.commits,
            "batched": stats.batched,
            "seconds": round(stats.seconds, 4),
        }
    with contextlib.suppress(AttributeError, TypeError):
        object.__setattr__(report, "placement", placement)
    return report
