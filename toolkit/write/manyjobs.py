"""Many independent jobs writing one dataset: appends and partition overwrites.

Each job validates its data against the store first (nothing is written on
bad input), then asks the store's commit log (:mod:`toolkit.coordination.commitlog`)
where its rows go, then writes them. Every job has an identity (``job_id=``,
or one derived from the request and its data), and a lease
(``.toolkit/coord/leases/jobs/<id>.json``) that it renews while it runs.

- :func:`append`: the job reserves ``n`` rows along ``dim`` and writes them
  *hidden*, beyond the length the arrays' metadata shows readers
  (:mod:`toolkit.io.extent`). Once its data has landed it *publishes* them: it
  grows the arrays' stored length with conditional writes. Rows become
  visible in the order they were reserved, so a job waits for the jobs before
  it that still run. Readers never see reserved rows that hold no data.
- :func:`overwrite_partitions`: the job's rows are grouped by the labels of a
  partition coordinate. Labels already in the store keep their rows (the job
  must bring as many) and are rewritten in place, under a lock per partition
  and a write record that readers refuse while it is there; new labels get
  new rows, written hidden and published like an append's.

Under kills:

- a job killed before its rows were published leaves nothing visible. If
  jobs after it publish, the first one to find it dead (its lease expired)
  marks its rows in the store with a record naming it (readers refuse the
  store until the job is rerun); a dead job whose rows are the last ones
  handed out is released instead, and its rows handed out again;
- rerunning a job (the same ``job_id``, or the same call) finishes it: it
  finds its reservation or its record and writes exactly those rows. A rerun
  of a job that landed writes nothing and says so (``placement["landed"]``).

Every write unit shared with another job's rows is read-modify-written
conditionally (:mod:`toolkit.io.rmw`): no update is ever lost.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from dask.delayed import delayed
from zarr.abc.store import Store
from zarr.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from toolkit import runtime
from toolkit._util import Background, backoff
from toolkit.cluster.executor import detached
from toolkit.coordination.claim import CreationClaim
from toolkit.coordination.commitlog import Batch, CommitLog, CommitStats, log_head_key
from toolkit.coordination.leases import (
    Coordinator,
    Lease,
    LockSet,
    holder_dead,
    supports_atomic_create,
)
from toolkit.coordination.manifest import write_fragment
from toolkit.coordination.records import WriteRecord, read_record, record_key, write_hole
from toolkit.coordination.rows import decide_rows, outstanding, partition_problem, runs_of
from toolkit.errors import AppendError, CoordinationError, LeaseTimeoutError, PartitionError
from toolkit.io.digests import checksum
from toolkit.io.extent import (
    Extents,
    ExtentStore,
    consolidated_key,
    covering_length,
    open_settled,
    publish,
    read_extents,
)
from toolkit.io.groups import RESERVED_PREFIX, array_dims, open_group
from toolkit.io.metrics import IOMetrics
from toolkit.io.snapshot import SnapshotStore
from toolkit.io.stores import StoreLike, describe_store, resolve_store, store_label, unwrap
from toolkit.io.throttle import Throttle, resolve_throttle
from toolkit.io.wrappers import wrap_store
from toolkit.runtime import Slot
from toolkit.upstream import sync
from toolkit.write.execute import execute, write_dataset
from toolkit.write.plan import WritePlan, plan_write
from toolkit.write.report import WriteReport

__all__ = ["append", "commit_log", "derive_job_id", "overwrite_partitions", "rows_along"]

_log = logging.getLogger(__name__)

_MAX_RUNS = 4096
_PLAN_KEYS = (
    "encoding",
    "zarr_format",
    "throttle",
    "consolidated",
    "max_task_bytes",
    "write_empty_chunks",
)
_RUN_KEYS = ("progress", "compute")  # execute's; the rest are the plan's
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
    return runs_of([_label(v) for v in values])


def derive_job_id(kind: str, store: StoreLike, group: str | None, what: str, ds: Any) -> str:
    """A job's identity from its request: the same call with the same data gets the same id.

    ``ds`` is hashed by dask's ``tokenize`` (its values when in memory, its
    graph's names when dask-backed: the same source files give the same id).
    """
    token = tokenize(kind, _location(store), (group or "").strip("/"), what, ds)
    return f"{kind}-{what}-{token[:20]}"[:80].replace("/", "_")


def _location(store: StoreLike) -> str:
    """Where ``store`` is, the same for a path, its ``file://`` URL and its LocalStore."""
    if isinstance(store, Store):
        base = unwrap(store)
        if isinstance(base, LocalStore):
            return f"file://{Path(base.root).resolve()}"
        return describe_store(base)
    label = store_label(store)
    if "://" not in label or label.startswith("file://"):
        return f"file://{Path(label.removeprefix('file://')).resolve()}"
    return label


def _stored_partitions(
    store: Store, group: str | None, coord: str, dim: str
) -> dict[str, list[int]]:
    """Each label's rows in the stored (visible) coordinate ``coord``.

    ``[start, stop]``, or several such runs for a label whose rows are not
    together (which no partition overwrite may take: :func:`partition_problem`).
    """
    ds = open_settled(store, group, consolidated=False, chunks=None)
    if coord not in ds.variables or ds[coord].ndim != 1:
        raise PartitionError(f"the store has no 1-D coordinate {coord!r} to partition by")
    out: dict[str, list[int]] = {}
    start = 0
    for lab, n in _runs(ds[coord].values):
        out[lab] = [*out.get(lab, []), start, start + n]
        start += n
    return out


def _longest(store: Store, group: str | None, dim: str) -> int:
    """The greatest stored length along ``dim``: every row below it landed.

    Above the visible length (the least) while a publication is under way or
    was cut short; a job that publishes next grows every array to it.
    """
    grp = open_group(store, group)  # mode "r"
    return max(
        (arr.shape[dims.index(dim)] for _, arr in grp.arrays() if dim in (dims := array_dims(arr))),
        default=0,
    )


def commit_log(
    store: Store,
    group: str | None = None,
    policy: Throttle | None = None,
    known: Mapping[str, dict[str, list[int]]] | None = None,
) -> CommitLog:
    """The dataset's commit log (reservations and partitions).

    ``policy`` gives the retries of its requests (and of the reads its
    decisions make): the write's own. ``known``: a partition coordinate's
    stored labels as the job read them (its snapshot), which a decision that
    meets the coordinate for the first time takes instead of opening the store,
    when they cover the rows visible then (see :func:`decide_rows`).
    """
    base = wrap_store(unwrap(store), policy)
    read = dict(known or {})

    def stored(coord: str, dim: str, visible: int) -> dict[str, list[int]]:
        labels = read.get(coord)
        # The snapshot only if nothing was published since it was read: an append
        # published in between has left the log's reservations, and its labels
        # would be lost (its rows then taken for new partitions: rows twice).
        if labels is not None and max((r[-1] for r in labels.values()), default=0) == visible:
            return {lab: list(rows) for lab, rows in labels.items()}  # a copy: decisions add
        return _stored_partitions(base, group, coord, dim)

    def dead(longest: dict[str, int], r: Mapping[str, Any]) -> bool:
        # A job that ended on this host: its rows are free again only if no array shows
        # any of them. One that published (or began to) before it ended has rows readers
        # see, though the log still holds them: the request's visible length may have
        # been read before that publication. Handing them out again wrote over them.
        # The store is read once per dimension and decision (``longest``), not per job.
        if not holder_dead(r):
            return False
        dim = str(r["dim"])
        try:
            if dim not in longest:
                longest[dim] = _longest(base, group, dim)
        except Exception:  # unknown: kept (a later job publishes past it, or marks it)
            return False
        return longest[dim] <= int(r["start"])

    def decide(state: dict[str, Any], requests: list[dict[str, Any]]) -> Any:
        new, answers = decide_rows(state, requests, stored, dead=functools.partial(dead, {}))
        return Batch(new, answers)

    return CommitLog(Coordinator(store, group, policy), decide)


def rows_along(ds: xr.Dataset, dim: str) -> xr.Dataset:
    """What a job writes into its rows along ``dim``: every variable on ``dim``.

    The coordinate values are included, as a plain variable (region writes skip indexes).
    """
    along = ds.drop_vars([v for v in ds.variables if dim not in ds[v].dims])
    return along.drop_indexes(dim) if dim in along.indexes else along


# --------------------------------------------------------------------------- the store's side


@dataclass
class _Dataset:
    """A dataset's store as many jobs see it: its arrays along ``dim``, the log, the leases."""

    store: Store  # the resolved store (what plans write through)
    group: str | None
    dim: str
    paths: dict[str, int]  # array path -> axis of dim
    zarr_format: int
    consolidated: str | None  # the consolidated document readers open (consolidated_key)
    policy: Throttle | None = None  # the retries (and budget) of its requests
    # Its metadata as the job found it: documents a write plans from, read once.
    reads: Store | None = None
    coord: Coordinator = field(init=False)
    log: CommitLog = field(init=False)
    # Requests the job need not wait for in turn: sent beside the next ones (settle()).
    background: Background = field(init=False)

    def __post_init__(self) -> None:
        self.coord = Coordinator(self.store, self.group, self.policy)
        self.log = commit_log(self.store, self.group, self.policy)
        self.background = Background("publish")

    def settle(self, raise_errors: bool = True) -> None:
        """Wait for the requests sent in the background (manifest fragments, the log's head)."""
        self.log.settle()
        self.background.settle(raise_errors=raise_errors)

    @classmethod
    def open(
        cls,
        store: Store,
        group: str | None,
        dim: str,
        policy: Throttle | None = None,
        snapshot: SnapshotStore | None = None,
    ) -> _Dataset:
        reading = wrap_store(snapshot or store, policy)
        grp = open_group(reading, group, use_consolidated=None)
        root = f"{group.strip('/')}/" if group and group.strip("/") else ""
        paths = {}
        for name, arr in grp.arrays():
            dims = array_dims(arr)
            if dim in dims:
                paths[f"{root}{name}"] = dims.index(dim)
        own = getattr(grp.metadata, "consolidated_metadata", None) is not None
        reads = snapshot.metadata_only() if snapshot is not None else None
        fmt = grp.metadata.zarr_format
        consolidated = consolidated_key(reading, group, fmt, own)
        return cls(store, group, dim, paths, fmt, consolidated, policy, reads)

    def extents(self) -> Extents:
        ext = sync(
            read_extents(
                self.coord.cas,
                self.group,
                self.paths,
                self.dim,
                self.zarr_format,
                self.consolidated,
            )
        )
        if ext.copy_lags:
            # A publication killed before its last step: its rows are in every
            # array but not yet in the consolidated copy readers may open.
            ext = self.publish(ext, ext.visible)
        return ext

    def publish(self, ext: Extents, length: int) -> Extents:
        out = sync(publish(self.coord.cas, ext, length, self.group))
        if out.written:
            # The metadata documents it grew, in the manifest (a fragment of their own),
            # sent beside the job's next request (its lease's release, when it is done):
            # the job waits for it before it returns (settle()).
            objects = {k: (len(b), checksum(b)) for k, b in out.written.items()}
            stack = wrap_store(self.store, self.policy)
            name = f"publish-{uuid.uuid4().hex}"
            self.background.run(lambda: write_fragment(stack, self.group, name, objects))
        return out


def _publish_timeout() -> float:
    """Seconds a job waits for earlier jobs that still run: ``TOOLKIT_PUBLISH_TIMEOUT``, or 3600."""
    return float(os.environ.get("TOOLKIT_PUBLISH_TIMEOUT", "3600"))


def _publish_rows(
    ds: _Dataset, job: str, start: int, stop: int, known: Extents | None = None
) -> dict[str, Any]:
    """Make rows ``[start, stop)`` visible, once every row before them is.

    Rows before ``start`` handed out to other jobs are waited for while their
    job runs (its lease is renewed). A job found dead leaves its rows: if its
    data landed (its job document says so) they are published as they are;
    otherwise they are marked with a record naming the job (readers refuse the
    store until its rerun) and published past. Returns what it had to do.
    """
    deadline = time.monotonic() + _publish_timeout()
    watch: dict[str, Lease] = {}
    holes: list[str] = []
    attempt = 0
    while True:
        # First at the lengths the job read (``known``): when nobody published since,
        # the conditional replaces land without reading the documents again; when
        # someone did, they fail and the documents are read.
        ext, known = (known, None) if known is not None else (ds.extents(), None)
        v, top = ext.visible, ext.longest
        if v >= stop:
            if top > v or ext.consolidated_key is not None:
                ds.publish(ext, top)  # finish a publication cut short; bring the copy along
            return {"waited_for": sorted(watch), "holes": holes}
        if top > v:
            # A publication under way, or cut short: every row below `top` landed.
            ds.publish(ext, top)
            continue
        if v == start:
            if ds.publish(ext, stop).visible >= stop:
                # Every array and the consolidated copy grown: no need to read them again.
                return {"waited_for": sorted(watch), "holes": holes}
            continue
        # Rows [v, start) belong to jobs before this one: whose are they?
        _, state = ds.log.head()
        before = [r for r in outstanding(state, ds.dim) if r["start"] <= v < r["stop"]]
        if before:
            r = before[0]
            lease = watch.setdefault(r["id"], Lease(ds.coord, r["lease"], owner=job))
            view = lease.observe()
            if view.gone:
                landed = ds.coord.get(f"jobs/{_safe(r['job'])}.json") or {}
                if not (landed.get("landed") and landed.get("stop") == r["stop"]):
                    write_hole(ds.store, ds.group, r, found_by=job, lease=view.state)
                    holes.append(r["job"])
                ds.publish(ext, r["stop"])
                attempt = 0
                continue
        if time.monotonic() > deadline:
            who = (
                f"job {before[0]['job']} (rows {before[0]['start']}-{before[0]['stop']})"
                if before
                else "an earlier job"
            )
            raise CoordinationError(
                f"rows {start}-{stop} of {ds.dim!r} landed but stay hidden: {who} "
                f"has not finished within {_publish_timeout():g} s. They become visible when it "
                f"does; rerun this job (same job_id) to wait again"
            )
        time.sleep(backoff(attempt, base=0.02, cap=1.0))
        attempt += 1


def _safe(job: str) -> str:
    return job.replace("/", "_")


def _hold_job(ds: _Dataset, job: str, ttl: float | None = None) -> LockSet:
    """Take the job's lease: a rerun never runs beside a live run of the same job."""
    locks = LockSet(ds.coord, [f"jobs/{_safe(job)}"], job, ttl=ttl, fresh=True)
    try:
        locks.start(timeout=max(5.0, locks.ttl * 1.5))
    except LeaseTimeoutError as e:
        holder = locks.leases[0].observe()
        raise CoordinationError(
            f"job {job} is running now ({holder.holder()}); a job runs once at a time. Wait "
            "for it, or give this call another job_id"
        ) from e
    return locks


@contextlib.contextmanager
def _job_held(ds: _Dataset, locks: LockSet) -> Iterator[None]:
    """The job's lease given back, and its requests in the background settled, however it ends.

    The lease's release goes out beside the background requests (the last
    manifest fragment): one round trip for both. Their errors are raised when
    the job succeeded; a job that failed raises its own.
    """
    try:
        yield
    except BaseException:
        locks.stop()
        ds.settle(raise_errors=False)
        raise
    locks.stop()
    ds.settle()


def _request(ds: _Dataset, locks: LockSet, visible: int, **kw: Any) -> dict[str, Any]:
    lease = locks.leases[0]
    return {
        "dim": ds.dim,
        "visible": visible,
        "lease": lease.name,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **kw,
    }


def _landed_key(group: str | None, job: str) -> str:
    """The key of the job's landed document (see :func:`_land`), for reads outside the log."""
    root = f"{group.strip('/')}/" if group and group.strip("/") else ""
    return f"{root}{RESERVED_PREFIX}/coord/jobs/{_safe(job)}.json"


def _log_prefix(group: str | None) -> str:
    """The commit log's prefix (listed in the snapshot's first round): its head's folder."""
    return log_head_key(group).rsplit("/", 1)[0] + "/"


def _log_head(snap: SnapshotStore, group: str | None, policy: Throttle | None) -> Any:
    """The log's head as the snapshot found it, for :meth:`CommitLog.submit` (None: unknown).

    Its copy when there is one; an empty log when the listing found no entry
    (a store's first many-jobs write). Either may be stale by now: the entry
    after it is then taken, its create fails, and the log is read forward.
    """
    head = _read_json(wrap_store(snap, policy), log_head_key(group))
    if head:
        return head
    entries = snap.listed(_log_prefix(group))
    if entries is not None and not [e for e in entries if e != "HEAD.json"]:
        return {"seq": 0, "state": {}}
    return None


def _read_json(store: Store, key: str) -> dict[str, Any]:
    buf = sync(store.get(key, default_buffer_prototype()))
    doc = json.loads(buf.to_bytes()) if buf is not None else {}
    return doc if isinstance(doc, dict) else {}


def _land(ds: _Dataset, job: str, start: int, stop: int) -> None:
    """Say in the store that the job's rows landed (a publisher finding it dead publishes them)."""
    ds.coord.put(
        f"jobs/{_safe(job)}.json",
        {"job": job, "dim": ds.dim, "start": start, "stop": stop, "landed": True},
    )


def _hidden_write(
    plan: WritePlan,
    part: xr.Dataset,
    ds: _Dataset,
    ext: Extents,
    start: int,
    stop: int,
    kwargs: Mapping[str, Any],
) -> Any:
    """Write rows ``[start, stop)`` beyond the stored length (no record: nobody sees them).

    The job's plan placed at its rows: its metadata comes from the documents
    the job read at its start, the lengths from ``ext`` (the ExtentStore).
    """
    length = covering_length(stop, ext.units())
    hidden = ExtentStore(ds.reads or ds.store, ext, length, ds.group)
    return execute(
        plan.at_rows(part, start, hidden, length),
        record=False,
        **{k: v for k, v in kwargs.items() if k in _RUN_KEYS},
    )


def _landed_report(plan: WritePlan, placement: dict[str, Any]) -> Any:
    _log.info("toolkit: job %s landed before; nothing written", placement.get("job"))
    report = WriteReport.nothing(plan.target, plan)
    return _placed(report, {**placement, "landed": True}, None)


# --------------------------------------------------------------------------- checks


def _check_append(ds: xr.Dataset, store: Store, group: str | None, dim: str) -> None:
    """What xarray's append would get wrong: variables left out, other labels on other dims."""
    stored = open_settled(store, group, consolidated=None, chunks=None)
    missing = sorted(
        str(n) for n, v in stored.variables.items() if dim in v.dims and n not in ds.variables
    )
    if missing:
        raise AppendError(
            f"the append along {dim!r} leaves out {missing}, which the store holds along "
            f"{dim!r}; they would read as fill values. Include them in the dataset"
        )
    for name, var in ds.variables.items():
        if dim in var.dims:
            continue
        what = "coordinate" if name in ds.coords else "variable"
        if name not in stored.variables:
            if what == "coordinate":
                continue  # an index of a new dimension: checked with the variables on it
            # xarray would create it beside the append; these jobs only add rows.
            raise AppendError(
                f"variable {str(name)!r} is not in the store and has no {dim!r} dimension: an "
                f"append along {dim!r} only adds rows. Write it first (mode='a' without "
                f"append_dim), or drop it"
            )
        old = stored[name]
        if old.shape != var.shape or not _same(old.values, var.values):
            # xarray would overwrite it for every row, older ones included.
            raise AppendError(
                f"{what} {str(name)!r} differs from the stored one (stored "
                f"{_brief(old.values)}, given {_brief(var.values)}); an append along {dim!r} "
                f"must bring the same {str(name)!r}: select or reindex it first, or write "
                f"it apart (mode='a' without append_dim)"
            )


def _same(a: Any, b: Any) -> bool:
    """Equal values, NaN equal to NaN where the dtype has it."""
    a, b = np.asarray(a), np.asarray(b)
    try:
        return bool(np.array_equal(a, b, equal_nan=True))
    except TypeError:  # strings, objects: no NaN to compare
        return bool(np.array_equal(a, b))


def _brief(values: Any) -> str:
    a = np.asarray(values).ravel()
    return f"[{', '.join(map(str, a[:4]))}{', ...' if a.size > 4 else ''}]"


# --------------------------------------------------------------------------- appends


def append(
    ds: xr.Dataset,
    store: StoreLike,
    dim: Hashable,
    *,
    group: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    job_id: str | None = None,
    **kwargs: Any,
) -> Any:
    """Append ``ds`` along ``dim``, safely beside any number of concurrent appenders.

    The job reserves its rows through the store's commit log, writes its data
    and coordinates into them beyond the stored length, then makes them
    visible (in the order the rows were reserved). Concurrent appends all
    land; readers never see a reserved row without its data. A store that
    does not exist yet is created by the first job.

    Calls from several threads of one process to the same target at about the
    same time are written together (one log entry, one write), each call
    keeping its own identity and rows.

    Parameters
    ----------
    ds : xarray.Dataset
        The rows to add. Every variable the store holds along ``dim`` must be
        there; other coordinates must equal the stored ones.
    store : str, os.PathLike or zarr Store
        A local path, an S3 or Azure URL, or a store (it needs conditional writes).
    dim : str
        The dimension to grow.
    group, storage_options : optional
        As in :func:`toolkit.to_zarr`.
    job_id : str, optional
        The job's identity. A rerun with the same id finishes a job that was
        killed and writes nothing for one that landed. By default it is
        derived from the store, ``dim`` and the data (the same call gives the
        same id).
    **kwargs
        Passed on to :func:`toolkit.to_zarr` (``throttle``, ``progress``, ...).

    Returns
    -------
    WriteReport
        With ``placement``: the rows written, the job id, what committing cost,
        and ``landed=True`` for a rerun of a job that had landed.

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
    >>> toolkit.append(later, "log.zarr", "time", progress=False).placement["landed"]
    True
    """
    dim = str(dim)
    job = job_id or derive_job_id("append", store, group, dim, ds)
    if kwargs.get("compute", True) is False:
        return _append_one(ds, store, dim, group, storage_options, kwargs, job)
    key = _batch_key("append", store, group, dim, storage_options, kwargs)
    return _coalesce(
        key, ds, job, lambda batch: _append_batch(batch, store, dim, group, storage_options, kwargs)
    )


def _append_batch(
    batch: list[_Waiting],
    store: StoreLike,
    dim: str,
    group: str | None,
    storage_options: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
) -> None:
    """Append the calls of ``batch`` as one write, each keeping its identity and rows."""

    def alone(w: _Waiting) -> None:
        _settle([w], lambda: [_append_one(w.ds, store, dim, group, storage_options, kwargs, w.job)])

    if len(batch) == 1:
        alone(batch[0])
        return

    members = [(w.job, int(w.ds.sizes[dim])) for w in batch]
    batch_job = derive_job_id("batch", store, group, dim, sorted(m for m, _ in members))
    try:
        combined = xr.concat([w.ds for w in batch], dim, join="outer")
        validated = _validated(combined, store, dim, group, storage_options, kwargs, batch_job)
    except Exception:
        # Bad input somewhere: nothing was written; each call gets its own verdict.
        for w in batch:
            alone(w)
        return
    try:
        report = _append_one(
            combined,
            store,
            dim,
            group,
            storage_options,
            kwargs,
            batch_job,
            members=members,
            validated=validated,
        )
    except _MembersAgain:
        # Some calls run again (their rows were reserved before): each alone, to find them.
        for w in batch:
            alone(w)
        return
    except Exception as e:
        failed = e
        _settle(batch, lambda: _raise(failed))
        return
    _settle(batch, lambda: _split(report, members))


class _MembersAgain(Exception):
    """Calls of a batch whose rows were reserved before: they go one by one."""


def _raise(e: BaseException) -> Any:
    raise e


def _snapshot(
    store: StoreLike,
    storage_options: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
    group: str | None,
    extra: Sequence[str] = (),
    listings: Sequence[str] = (),
) -> SnapshotStore:
    """The target resolved, with its metadata and coordinates read in three concurrent rounds.

    ``extra``: keys the job reads early (its record, its landed document, the
    log's head), read in the first round; ``listings``: prefixes listed then
    too (the log's entries).
    """
    policy = resolve_throttle(kwargs.get("throttle"), store_label(store))
    plain = (
        store
        if isinstance(store, Store)
        else resolve_store(store, storage_options=storage_options, throttle=policy)
    )
    snap = SnapshotStore(plain)
    sync(snap.prefetch(group, extra, listings))
    return snap


def _validated(
    ds: xr.Dataset,
    store: StoreLike,
    dim: str,
    group: str | None,
    storage_options: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
    job: str | None = None,
) -> tuple[WritePlan, SnapshotStore]:
    """Plan the append against the visible store and check it (raises on bad input).

    Planning and the checks read the store through one snapshot of its
    metadata and coordinates (:class:`~toolkit.io.snapshot.SnapshotStore`),
    taken in three concurrent rounds, and the plan then writes to the store
    itself. The snapshot is returned too, for the job's other reads of what
    the store held when it began.
    """
    extra = [record_key(group, job), _landed_key(group, job), log_head_key(group)] if job else []
    lists = [_log_prefix(group)] if job else []
    snap = (
        store
        if isinstance(store, SnapshotStore)
        else _snapshot(store, storage_options, kwargs, group, extra, lists)
    )
    plan = plan_write(
        ds,
        snap,
        mode="a",
        append_dim=dim,
        group=group,
        **{k: v for k, v in kwargs.items() if k in _PLAN_KEYS},
    )
    if plan.mode != "w-":
        _check_append(ds, snap, group, dim)
    return replace(plan, store=snap.inner), snap


def _append_one(
    ds: xr.Dataset,
    store: StoreLike,
    dim: str,
    group: str | None,
    storage_options: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
    job: str,
    members: Sequence[tuple[str, int]] | None = None,
    validated: tuple[WritePlan, SnapshotStore] | None = None,
) -> Any:
    """One append job: planned (``validated``: already), rows reserved, written, published."""
    plan, snap = validated or _validated(ds, store, dim, group, storage_options, kwargs, job)
    base = plan.store
    if not supports_atomic_create(base):
        # A store without conditional writes (Icechunk, fsspec's other stores):
        # one writer at a time, as plain xarray.
        return execute(plan, **{k: v for k, v in kwargs.items() if k in _RUN_KEYS})
    if kwargs.get("compute", True) is False:
        now = {**kwargs, "compute": True}
        return _deferred(
            functools.partial(_append_one, ds, store, dim, group, storage_options, now, job)
        )
    if plan.mode == "w-":
        created = _create_first(plan, job, kwargs)
        if created is not None:
            return created
        plan, snap = _validated(ds, base, dim, group, None, kwargs, job)  # another job created it
    if ds.sizes[dim] == 0:
        raise AppendError(f"nothing to append: the dataset has no rows along {dim!r}")
    n = ds.sizes[dim]
    runs = {
        str(name): r
        for name, var in ds.coords.items()
        if var.dims == (dim,) and len(r := _runs(var.values)) <= _MAX_RUNS
    }
    target = _Dataset.open(base, group, dim, plan.throttle, snap)
    kw = {k: v for k, v in kwargs.items() if k not in _CREATE_ONLY}
    part = rows_along(ds, dim)
    # A record of this job (a dead run's rows published past by another job): fill it.
    # Read in the snapshot's first round. A record written since (a publisher that
    # found a dead run of this job) is found by the next rerun: the data is written.
    record = read_record(wrap_store(snap, plan.throttle), group, job)
    if record is not None and record.get("rows") and record.get("dim") == dim:
        return _fill_record(part, target, job, record, kw)
    # The lengths are read while the job's lease is taken: one round trip, not two
    # (reading them first is as good as after: publication reads them again).
    with ThreadPoolExecutor(1, thread_name_prefix="toolkit-extents") as pool:
        lengths = pool.submit(contextvars.copy_context().run, target.extents)
        locks = _hold_job(target, job)
    with _job_held(target, locks):
        ext = lengths.result()
        batched = {"members": [list(m) for m in members]} if members else {}
        request = _request(target, locks, ext.visible, kind="reserve", n=n, runs=runs, **batched)
        # The log's head as the snapshot found it: the entry after it is created
        # without reading the head again (a head moved since costs one failed create).
        head = _log_head(snap, group, plan.throttle)
        answer = target.log.submit(request, job=job, head=head)
        if "again" in answer:
            raise _MembersAgain(answer["again"])
        placement = {"dim": dim, "start": answer["start"], "stop": answer["stop"], "job": job}
        if answer.get("landed"):
            # Landed before: published, or waiting for the jobs before it.
            _publish_rows(target, job, answer["start"], answer["stop"])
            return _landed_report(plan, placement)
        start, stop = answer["start"], answer["stop"]
        # From the snapshot: only an earlier run of this job writes it, and one that
        # wrote it since the snapshot only makes this run write the same rows again.
        landed = _read_json(wrap_store(snap, plan.throttle), _landed_key(group, job))
        landing = Background("landed")
        if landed.get("landed") and landed.get("start") == start:
            report = _landed_report(plan, placement)  # its data landed; it was not yet visible
        else:
            try:
                report = _hidden_write(plan, part, target, ext, start, stop, kwargs)
            except BaseException:
                # Nothing of it is visible: if its rows are the last handed out, hand
                # them out again; else they wait for this job's rerun (same job_id).
                ids = list(answer.get("members") or [job])
                with contextlib.suppress(Exception):
                    target.log.submit({"kind": "release", "ids": ids}, job=f"{job}-release")
                raise
            # Its data landed: said in the store beside the publication's first round.
            # The document matters only while the rows are not visible, if the job
            # dies (a publisher finding it dead then publishes them as they are).
            for m, (a, b) in (answer.get("members") or {job: [start, stop]}).items():
                landing.run(functools.partial(_land, target, m, a, b))
        locks.check()  # fenced: a job that lost its lease publishes nothing
        try:
            placement["publish"] = _publish_rows(target, job, start, stop, ext)
        finally:
            # Before the lease is given back: a publisher that finds the job gone
            # then finds the document too. Its errors are nobody's: once the rows
            # are visible it is never read, and a job that failed says so itself
            # (its rerun, or the hole a publisher leaves, finishes it).
            landing.settle(raise_errors=False)
        return _placed(report, placement, target.log)


def _deferred(job: Callable[[], Any]) -> Any:
    """A job that runs when its result is computed (``compute=False``), checked already.

    Not xarray's split (metadata now, data when computed): the rows a job
    reserves become visible only with their data, so a job whose data waits
    reserves nothing yet. Run in a task, the job plans the store it finds
    then; on a cluster its graph runs there while its task steps aside.
    """
    return delayed(functools.partial(detached, job), pure=False)()


def _fill_record(
    part: xr.Dataset, target: _Dataset, job: str, record: Mapping[str, Any], kw: Mapping[str, Any]
) -> Any:
    """A rerun of a job whose rows were published past while it was dead: write them in place."""
    start, stop = record["rows"]
    if part.sizes[target.dim] != stop - start:
        raise AppendError(
            f"job {job} reserved {stop - start} rows of {target.dim!r} ({start}-{stop}); this "
            f"rerun brings {part.sizes[target.dim]}: rerun it with the same data"
        )
    locks = _hold_job(target, job)
    try:
        # In place, visible rows: the record (this job's) keeps readers out until the end.
        # Planned against the store as it is now, not placed from the job's plan: the
        # lengths its snapshot read are older than the publication that passed its rows.
        report = write_dataset(
            part,
            target.store,
            mode="r+",
            region={target.dim: slice(start, stop)},
            group=target.group,
            job=job,
            **kw,
        )
    finally:
        locks.stop()
    return _placed(
        report, {"dim": target.dim, "start": start, "stop": stop, "job": job, "filled": True}, None
    )


def _create_first(plan: WritePlan, job: str, kwargs: Mapping[str, Any]) -> Any:
    """Run the job's plan (a creation) under the creation claim; None if another job created it.

    The plan was made from the empty store the job found; under the claim, a
    store still without arrays is one that plan holds for.
    """
    claim = CreationClaim(plan.store, plan.group, job, plan.throttle)
    claim.acquire(wait=True)
    try:
        if _has_arrays(plan.store, plan.group):
            return None
        return execute(plan, claim=claim, **{k: v for k, v in kwargs.items() if k in _RUN_KEYS})
    finally:
        claim.release()


def _has_arrays(store: Store, group: str | None) -> bool:
    try:
        grp = open_group(store, group)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return False
    return any(True for _ in grp.array_keys())


# --------------------------------------------------------------------------- partitions


def overwrite_partitions(
    ds: xr.Dataset,
    store: StoreLike,
    partition: Hashable,
    *,
    group: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    lock_timeout: float = 600.0,
    job_id: str | None = None,
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
    job_id : str, optional
        The job's identity (see :func:`append`); derived from the call by default.
    **kwargs
        Passed on to :func:`toolkit.to_zarr`.

    Returns
    -------
    WriteReport
        The last write's report, with ``placement`` listing every partition's rows.

    Raises
    ------
    toolkit.errors.PartitionError
        Before anything is written, when a label's rows are not together in
        ``ds`` or in the store (an append added rows of it after other labels'
        rows), or a stored partition has another number of rows.

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
    job = job_id or derive_job_id("partitions", store, group, coord, ds)

    def overwrite_alone(w: _Waiting) -> Any:
        return _overwrite_one(
            w.ds, store, coord, group, storage_options, lock_timeout, kwargs, w.job
        )

    if kwargs.get("compute", True) is False:
        return overwrite_alone(_Waiting(ds, job))
    key = _batch_key("partitions", store, group, coord, storage_options, kwargs)

    def run(batch: list[_Waiting]) -> None:
        # Each call is its own job (partition overwrites are not merged): they share
        # only the batching window, and each gets its own answer or error.
        for w in batch:
            _settle([w], functools.partial(lambda w: [overwrite_alone(w)], w))

    return _coalesce(key, ds, job, run)


def _overwrite_one(
    ds: xr.Dataset,
    store: StoreLike,
    coord: str,
    group: str | None,
    storage_options: Mapping[str, Any] | None,
    lock_timeout: float,
    kwargs: Mapping[str, Any],
    job: str,
) -> Any:
    dim = str(ds[coord].dims[0])
    runs = _partition_runs(ds, coord)
    plan, snap = _validated(ds, store, dim, group, storage_options, kwargs, job)
    base = plan.store
    if kwargs.get("compute", True) is False:
        if plan.mode != "w-":  # refused now, as the job would refuse it
            _check_sizes(
                _stored_partitions(wrap_store(snap, plan.throttle), group, coord, dim), runs, coord
            )
        now = {**kwargs, "compute": True}
        return _deferred(
            functools.partial(
                _overwrite_one, ds, store, coord, group, storage_options, lock_timeout, now, job
            )
        )
    if plan.mode == "w-":
        created = _create_first(plan, job, kwargs)
        if created is not None:
            return created
        plan, snap = _validated(ds, base, dim, group, None, kwargs, job)
    stored = _stored_partitions(wrap_store(snap, plan.throttle), group, coord, dim)
    _check_sizes(stored, runs, coord)
    target = _Dataset.open(base, group, dim, plan.throttle, snap)
    # The labels just read serve the log's first decision on this coordinate.
    target.log = commit_log(base, group, plan.throttle, known={coord: stored})
    kw = {k: v for k, v in kwargs.items() if k not in _CREATE_ONLY}
    # The lengths are read while the job's lease is taken (as an append's).
    with ThreadPoolExecutor(1, thread_name_prefix="toolkit-extents") as pool:
        lengths = pool.submit(contextvars.copy_context().run, target.extents)
        locks = _hold_job(target, job)
    parts: LockSet | None = None
    with _job_held(target, locks):
        try:
            ext = lengths.result()
            answer = target.log.submit(
                _request(target, locks, ext.visible, kind="partitions", coord=coord, runs=runs),
                job=job,
                head=_log_head(snap, group, plan.throttle),
            )
            if "error" in answer:
                raise PartitionError(answer["error"])
            # Rows that another job's unfinished reservation holds are not ours to write
            # in place until that job made them visible: waited for before taking any
            # partition lock (that job may need one of them to finish).
            _wait_visible(target, job, answer)
            names = [f"partitions/{coord}/{lab}" for lab, _, _ in answer["ranges"]]
            parts = LockSet(target.coord, names, job, fresh=True)
            parts.start(timeout=lock_timeout)
            spans, new_parts = _placed_ranges(answer)
            report: Any = None
            if new_parts:
                report = _write_new_labels(plan, ds, dim, target, job, answer, new_parts, kwargs)
            placement: dict[str, Any] = {
                "dim": dim,
                "coord": coord,
                "job": job,
                "partitions": {lab: [a, b] for lab, a, b in answer["ranges"]},
            }
            # Rows readers can see change from here on: one record of the job for the
            # whole of it (partitions replaced in place, new ones published), so that
            # a reader never finds half of the job.
            write_record = None
            if spans:
                write_record = WriteRecord(base, group, job, plan.throttle)
                what = {
                    "job": job,
                    "kind": "partitions",
                    "dim": dim,
                    "coord": coord,
                    "labels": [lab for lab, _, _ in answer["ranges"]],
                }
                write_record.begin(what, wrap_store(base, plan.throttle))
            if new_parts:
                locks.check()  # fenced: a job that lost its lease publishes nothing
                placement["publish"] = _publish_rows(target, job, answer["start"], answer["stop"])
            if spans:
                report = _replace_in_place(ds, dim, base, group, job, spans, kw)
            if write_record is not None:
                write_record.done(IOMetrics())
            if report is None:
                report = _landed_report(plan, placement)
            return _placed(report, placement, target.log)
        finally:
            if parts is not None:
                # Given back beside the job's own lease (see _job_held).
                target.background.run(parts.stop)


def _partition_runs(ds: xr.Dataset, coord: str) -> list[tuple[str, int]]:
    """The job's runs of rows, a label each; refused when a label has two runs."""
    runs = _runs(ds[coord].values)
    seen: set[str] = set()
    for lab, _ in runs:
        if lab in seen:
            raise PartitionError(
                f"partition {lab!r} of {coord!r} appears in more than one run of rows; "
                f"sort the dataset first: ds.sortby({coord!r})"
            )
        seen.add(lab)
    return runs


def _placed_ranges(
    answer: Mapping[str, Any],
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """Where the log put the job's partitions: replaced in place, and new labels.

    In place: merged spans of stored rows ``(start, stop, the job's first row)``.
    New: ``(stored start, the job's first row, rows)`` in stored order; the log
    places new labels one after the other at the end, in the order of the job's
    runs, wherever they are in the job's data.
    """
    new = answer.get("id") is not None
    pos = 0
    in_place, new_parts = [], []
    for _, a, b in answer["ranges"]:
        if new and a >= answer["start"]:
            new_parts.append((a, pos, b - a))
        else:
            in_place.append((a, b, pos))
        pos += b - a
    return _merged(in_place), sorted(new_parts)


def _write_new_labels(
    plan: WritePlan,
    ds: xr.Dataset,
    dim: str,
    target: _Dataset,
    job: str,
    answer: Mapping[str, Any],
    new_parts: Sequence[tuple[int, int, int]],
    kwargs: Mapping[str, Any],
) -> Any:
    """The rows of labels new to the store, written hidden where the log put them.

    Once: a rerun of a job whose rows landed there skips them (None).
    """
    landed = target.coord.get(f"jobs/{_safe(job)}.json") or {}
    if landed.get("landed") and landed.get("start") == answer["start"]:
        return None
    ext = target.extents()
    rows = xr.concat([ds.isel({dim: slice(at, at + n)}) for _, at, n in new_parts], dim)
    report = _hidden_write(
        plan, rows_along(rows, dim), target, ext, answer["start"], answer["stop"], kwargs
    )
    _land(target, job, answer["start"], answer["stop"])
    return report


def _replace_in_place(
    ds: xr.Dataset,
    dim: str,
    base: Store,
    group: str | None,
    job: str,
    spans: Sequence[tuple[int, int, int]],
    kw: Mapping[str, Any],
) -> Any:
    """The job's rows of stored partitions written over them; the last span's report.

    Planned afresh: the job's snapshot can be stale by now (a publication cut
    short that this job finished, rows other jobs published since).
    """
    report = None
    for a, b, at in spans:
        rows = ds.isel({dim: slice(at, at + b - a)})
        report = write_dataset(
            rows_along(rows, dim),
            base,
            mode="r+",
            region={dim: slice(a, b)},
            group=group,
            job=job,
            record=False,
            **kw,
        )
    return report


def _check_sizes(
    stored: Mapping[str, list[int]], runs: Sequence[tuple[str, int]], coord: str
) -> None:
    """Refuse, before anything is written, partitions that cannot be replaced in place.

    The log decides again under its own state (labels reserved meanwhile by
    other jobs count there too); this catches bad input with the store untouched.
    """
    problem = partition_problem(stored, runs, coord)
    if problem is not None:
        raise PartitionError(problem)


def _merged(spans: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Consecutive ranges (also consecutive in the job's rows) as one region write."""
    out: list[list[int]] = []
    for a, b, at in spans:
        if out and out[-1][1] == a and out[-1][2] + (out[-1][1] - out[-1][0]) == at:
            out[-1][1] = b
        else:
            out.append([a, b, at])
    return [(a, b, at) for a, b, at in out]


def _wait_visible(target: _Dataset, job: str, answer: Mapping[str, Any]) -> None:
    """Wait until the reservations ``answer`` names as holding this job's labels are visible."""
    waits = set(answer.get("waits") or ())
    if not waits:
        return
    deadline = time.monotonic() + _publish_timeout()
    watch: dict[str, Lease] = {}
    attempt = 0
    while True:
        _, state = target.log.head()
        pending = [r for r in outstanding(state, target.dim) if r["id"] in waits]
        ext = target.extents()
        pending = [r for r in pending if r["stop"] > ext.visible]
        if not pending:
            return
        r = pending[0]
        view = watch.setdefault(r["id"], Lease(target.coord, r["lease"], owner=job)).observe()
        if view.gone or time.monotonic() > deadline:
            raise PartitionError(
                f"partitions of this job were added by job {r['job']}, whose rows "
                f"{r['start']}-{r['stop']} are not visible yet and whose lease is {view.state}: "
                f"rerun job {r['job']} (same job_id) first, then this one"
            )
        time.sleep(backoff(attempt, base=0.02, cap=1.0))
        attempt += 1


# --------------------------------------------------------------------------- batching


@dataclass
class _Waiting:
    """One call waiting in a batch."""

    ds: xr.Dataset
    job: str
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class _Batches:
    """The calls waiting, per batch key, and the keys whose batch has a leader.

    A key is dropped once its leader finds its queue empty: a finished target
    leaves nothing behind.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queues: dict[str, list[_Waiting]] = {}
        self.leaders: set[str] = set()


#: In the current runtime: the calls of one process's threads batch together.
_BATCHES: Slot[_Batches] = Slot("write.manyjobs.batches", _Batches)
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


def _coalesce(key: str, ds: xr.Dataset, job: str, run: Callable[[list[_Waiting]], None]) -> Any:
    """Join the batch for ``key``; the first caller leads, running batches until none is left."""
    me = _Waiting(ds, job)
    batches = runtime.current().get(_BATCHES)
    with batches.lock:
        batches.queues.setdefault(key, []).append(me)
        lead = key not in batches.leaders
        batches.leaders.add(key)
    if lead:
        while True:
            time.sleep(_WINDOW)
            with batches.lock:
                batch = batches.queues.pop(key, [])
                if not batch:
                    batches.leaders.discard(key)
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


def _settle(batch: list[_Waiting], fn: Callable[[], Any]) -> None:
    """Run ``fn`` for ``batch``: its results (one per call, in order), or its error to each."""
    try:
        results = fn()
    except Exception as e:
        for w in batch:
            w.error = e
            w.done.set()
        return
    for w, result in zip(batch, results, strict=True):
        w.result = result
        w.done.set()


def _split(report: Any, members: Sequence[tuple[str, int]]) -> list[Any]:
    """Each call's own rows of an append written for a batch (one report per member)."""
    placement = getattr(report, "placement", None)
    if placement is None or "start" not in placement:
        return [report] * len(members)  # the batch created the dataset
    out, start = [], placement["start"]
    for job, n in members:
        mine = {
            **placement,
            "start": start,
            "stop": start + n,
            "job": job,
            "batched_calls": len(members),
        }
        out.append(dataclasses.replace(report, placement=mine))
        start += n
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
            "direct": stats.direct,
            "seconds": round(stats.seconds, 4),
        }
    with contextlib.suppress(AttributeError, TypeError):
        object.__setattr__(report, "placement", placement)
    return report
