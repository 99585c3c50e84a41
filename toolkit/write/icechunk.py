"""Many jobs, one Icechunk repository: every job all-or-nothing, commits batched.

Icechunk makes each commit a snapshot that readers see whole or not at all, and
leaves it to its users to keep concurrent writers from paying for each other.
Committed independently, N writers cost about N²/2 retries; on a local file
system (no atomic conditional writes) concurrent commits can be lost. Here:

- each job writes into a *fork* of a session at the branch head, with
  :func:`toolkit.to_zarr`'s tasks, and does not commit it itself. On a
  ``distributed`` cluster each task writes into its worker's copy of the fork
  and the copies come back merged in a tree (:func:`toolkit.write.graph.merge_results`);
- it hands the fork (pickled, into the coordination prefix beside the
  repository) to the store's group-committed log (:mod:`toolkit.state.commitlog`). The
  elected committer merges every pending fork into one session and makes *one*
  commit for the batch, so commits are serialized by the log's lease and atomic
  create on every storage, local file systems included;
- conflicts are detected, never resolved: a job whose write units were changed
  by a commit made since its fork was taken (or by an earlier job of the same
  batch) is answered "conflict" and rewrites on the new head, with jittered
  backoff, a bounded number of times, then raises
  :class:`~toolkit.errors.CommitConflictError` naming the arrays and chunks;
- every job checks that its snapshot is in the branch's history before it
  returns.

Appends and new partitions get their rows from the same log
(:func:`toolkit.write.multi.decide_rows`); the committer grows the arrays in a
commit of its own before answering, so a reader can see reserved rows at their
fill value until their job commits. Existing rows never show a partial job.
"""

from __future__ import annotations

import itertools
import pickle
import time
from collections.abc import Hashable, Mapping
from typing import Any

import dask
import xarray as xr
import zarr
from zarr.abc.store import Store

from toolkit._util import backoff
from toolkit.errors import CommitConflictError, PartitionError, PlanError, WriteError
from toolkit.io.groups import array_dims
from toolkit.io.stores import resolve_store
from toolkit.state.commitlog import Batch, CommitLog
from toolkit.state.leases import Coordinator, Lease, job_id
from toolkit.write.execute import eager_regions, unit_ranges, write_dataset
from toolkit.write.multi import _has_arrays, _placed, _runs, decide_rows, rows_along
from toolkit.write.plan import plan_write

__all__ = ["Repository", "to_icechunk"]

_HISTORY = 256


class Repository:
    """An Icechunk repository at a local path or S3 URL, with its coordination prefix.

    Parameters
    ----------
    target : str
        A local directory or ``s3://bucket/prefix``.
    storage_options : mapping, optional
        For S3: ``key``, ``secret``, ``endpoint_url``, ``client_kwargs.region_name``
        (fsspec's names, as for every other toolkit call).
    branch : str
        The branch jobs commit to.
    """

    def __init__(
        self, target: str, storage_options: Mapping[str, Any] | None = None, branch: str = "main"
    ) -> None:
        import icechunk

        self.target, self.branch = target, branch
        self.storage_options = dict(storage_options or {})
        self.storage = _storage(target, self.storage_options)
        self.coord = Coordinator(resolve_store(target, storage_options=storage_options or None))
        owner = job_id()
        if not icechunk.Repository.exists(self.storage):
            lease = Lease(self.coord, "create", owner)
            lease.acquire()
            try:
                if not icechunk.Repository.exists(self.storage):
                    # Our coordination prefix may already be there: not a foreign repo.
                    icechunk.Repository.create(self.storage, check_clean_root=False)
            finally:
                lease.release()
        self.repo = icechunk.Repository.open(self.storage)
        self.log = CommitLog(self.coord, self._decide)

    def __repr__(self) -> str:
        return f"toolkit.write.icechunk.Repository({self.target!r}, branch={self.branch!r})"

    def readonly(self) -> Store:
        """The branch head, for readers (a snapshot: never a partial commit)."""
        store: Store = self.repo.readonly_session(branch=self.branch).store
        return store

    def history(self, n: int = 1000) -> list[str]:
        """The latest ``n`` snapshot ids of the branch, newest first."""
        out = []
        for info in self.repo.ancestry(branch=self.branch):
            out.append(info.id)
            if len(out) >= n:
                break
        return out

    # -- the committer's side ---------------------------------------------

    def _decide(self, state: dict[str, Any], requests: list[dict[str, Any]]) -> Batch:
        new, answers = decide_rows(state, requests, self.readonly, None)
        grows = new.get("dims", {}) != state.get("dims", {})
        history: list[dict[str, Any]] = list(state.get("history", []))
        order = {h["snapshot"]: i for i, h in enumerate(history)}
        accepted: list[dict[str, Any]] = []
        for req in requests:
            if req["kind"] != "commit":
                continue
            # Commits since the job's fork was taken, and the batch's earlier jobs.
            since = history[order[req["base"]] + 1 :] if req["base"] in order else history
            others = [h["touched"] for h in since] + [r["touched"] for r in accepted]
            clash: dict[str, set[str]] = {}
            for a, keys in req["touched"].items():
                for other in others:
                    clash.setdefault(a, set()).update(set(keys) & set(other.get(a, ())))
            clash = {a: k for a, k in clash.items() if k}
            if clash:
                answers[req["job"]] = {"conflict": {a: sorted(k) for a, k in clash.items()}}
                continue
            accepted.append(req)
            answers[req["job"]] = {}

        def effect() -> dict[str, Any] | None:
            if not accepted and not grows:
                return None
            snapshot = self._commit(accepted, new.get("dims", {}) if grows else {})
            touched_all: dict[str, list[str]] = {}
            for req in accepted:
                for a, keys in req["touched"].items():
                    touched_all.setdefault(a, []).extend(keys)
            # Every snapshot a job may fork from is recorded (growing commits touch
            # no chunk): a job's base found here is compared with later commits only.
            if not history or history[-1]["snapshot"] != snapshot:
                history.append({"snapshot": snapshot, "touched": touched_all})
            new["history"] = history[-_HISTORY:]
            for req in requests:
                if req["kind"] == "commit":
                    self.coord.delete(req["fork"])
            return {"snapshot": snapshot}

        return Batch(new, answers, effect)

    def _commit(self, accepted: list[dict[str, Any]], dims: Mapping[str, int]) -> str:
        """Merge the accepted forks, grow arrays to ``dims``, commit once, check the history."""
        from icechunk import ConflictDetector

        session = self.repo.writable_session(self.branch)
        forks = [f for r in accepted for f in pickle.loads(self.coord.get_bytes(r["fork"]))]
        if forks:
            session.merge(*forks)
        if dims:
            grp = zarr.open_group(session.store, mode="r+", zarr_format=3)
            for _, arr in grp.arrays():
                names = array_dims(arr)
                shape = tuple(max(n, dims.get(d, 0)) for d, n in zip(names, arr.shape, strict=True))
                if shape != arr.shape:
                    arr.resize(shape)
        if not session.has_uncommitted_changes:
            return str(session.snapshot_id)  # the arrays were already as large
        jobs = [r["job"] for r in accepted]
        message = f"toolkit: {len(jobs)} job(s)" + (" and new rows" if dims else "")
        snapshot: str = session.commit(
            message, metadata={"toolkit_jobs": jobs}, rebase_with=ConflictDetector()
        )
        if snapshot not in self.history(64):
            raise WriteError(
                f"snapshot {snapshot} was reported committed but is not in the history of "
                f"branch {self.branch!r}"
            )
        return snapshot


def _storage(target: str, opts: Mapping[str, Any]) -> Any:
    import icechunk

    if target.startswith(("s3://", "s3a://")):
        bucket, _, prefix = target.split("://", 1)[1].partition("/")
        endpoint = opts.get("endpoint_url")
        region = (opts.get("client_kwargs") or {}).get("region_name") or opts.get("region")
        return icechunk.s3_storage(
            bucket=bucket,
            prefix=prefix or None,
            region=region,
            endpoint_url=endpoint,
            allow_http=bool(endpoint and endpoint.startswith("http://")),
            access_key_id=opts.get("key"),
            secret_access_key=opts.get("secret"),
            force_path_style=bool(endpoint),
            from_env=None if opts.get("key") else True,
        )
    if "://" in target and not target.startswith("file://"):
        raise PlanError(f"Icechunk targets are local paths or s3:// URLs, got {target!r}")
    return icechunk.local_filesystem_storage(target.removeprefix("file://"))


def _touched(report: Any) -> dict[str, list[str]]:
    """The chunk keys a region write changed (the units of every variable it wrote)."""
    plan = report.plan
    arrays = {
        vp.name: [
            (o // u, -(-(o + n) // u))
            for o, n, u in zip(vp.offset, vp.shape, vp.write_unit, strict=True)
        ]
        for vp in plan.variables
    }
    for arr, region in eager_regions(plan):
        arrays[arr.basename] = list(unit_ranges(arr, region))
    return {
        name: [".".join(map(str, idx)) for idx in itertools.product(*(range(a, b) for a, b in r))]
        for name, r in arrays.items()
    }


def to_icechunk(
    ds: xr.Dataset,
    target: str | Repository,
    *,
    region: Mapping[Hashable, slice] | None = None,
    append_dim: Hashable | None = None,
    partition: Hashable | None = None,
    storage_options: Mapping[str, Any] | None = None,
    branch: str = "main",
    retries: int = 8,
    progress: bool = False,
    **kwargs: Any,
) -> Any:
    """Write ``ds`` into an Icechunk repository as one all-or-nothing job.

    Exactly one of ``region``, ``append_dim``, ``partition`` says where the
    rows go; with none, the repository must be empty and ``ds`` creates it.

    Parameters
    ----------
    ds : xarray.Dataset
        The job's data.
    target : str or Repository
        A local directory or ``s3://bucket/prefix`` (created if missing).
    region : dict of dim to slice, optional
        Overwrite these rows (as :func:`toolkit.to_zarr`).
    append_dim : str, optional
        Append along this dimension (rows reserved through the log).
    partition : str, optional
        Overwrite the partitions labelled by this coordinate (new labels are appended).
    storage_options : mapping, optional
        For S3 targets (fsspec's names).
    branch : str
        The branch to commit to.
    retries : int
        Attempts after a conflict before :class:`~toolkit.errors.CommitConflictError`.
    progress : bool
        Show progress of the data writes.
    **kwargs
        Passed on to :func:`toolkit.to_zarr` for the data (``encoding`` on creation, ...).

    Returns
    -------
    WriteReport
        Of the last attempt, with ``placement``: rows, ``snapshot``, attempts and
        the commit log's figures.
    """
    repo = target if isinstance(target, Repository) else Repository(target, storage_options, branch)
    if sum(x is not None for x in (region, append_dim, partition)) > 1:
        raise PlanError("pass one of region, append_dim and partition")
    owner = job_id()
    head = repo.readonly()
    if not _has_arrays(head, None):
        if region is not None:
            raise PlanError(f"region writes need an existing dataset in {repo.target}")
        created = _create(ds, repo, branch, owner, progress, kwargs)
        if created is not None:
            return created
    kwargs = {k: v for k, v in kwargs.items() if k not in ("encoding", "zarr_format", "mode")}
    # Where the rows go: validated against the head first, then placed through the log.
    placement: dict[str, Any] = {}
    if region is not None:
        pieces: list[_Piece] = [(ds, None, None)]
    elif append_dim is not None:
        pieces = _reserve_rows(ds, repo, head, str(append_dim), owner, placement)
    elif partition is not None:
        pieces = _place_partitions(ds, repo, head, partition, owner, placement)
    else:
        raise PlanError(
            f"{repo.target} already holds a dataset: pass region, append_dim or partition"
        )
    last: dict[str, list[str]] = {}
    for attempt in range(retries + 1):
        answer, report = _attempt(repo, branch, owner, attempt, pieces, region, progress, kwargs)
        if "error" in answer:
            raise WriteError(f"Icechunk commit of job {owner} failed: {answer['error']}")
        if "conflict" in answer:
            last = answer["conflict"]
            time.sleep(backoff(attempt, base=0.05, cap=2.0))
            continue
        snapshot = answer["snapshot"]
        if snapshot not in repo.history():
            raise WriteError(f"job {owner}: snapshot {snapshot} is not in branch {branch!r}")
        placement.update(snapshot=snapshot, attempts=attempt + 1)
        _placed(report, placement, repo.log)
        return report
    raise CommitConflictError(
        f"job {owner} conflicted {retries + 1} times with other jobs' commits on "
        + "; ".join(f"{a}: chunks {', '.join(k[:8])}" for a, k in last.items())
        + "; its regions overlap other jobs' write units: give each job whole chunks, "
        "or raise retries",
        last,
    )


# Rows of the job, the dim they follow (None: the region given), and where they go on it.
type _Piece = tuple[xr.Dataset, str | None, slice | None]


def _create(
    ds: xr.Dataset,
    repo: Repository,
    branch: str,
    owner: str,
    progress: bool,
    kwargs: Mapping[str, Any],
) -> Any:
    """Create the dataset in an empty repository; None if another job created it first."""
    lease = Lease(repo.coord, "create", owner)
    lease.acquire()
    try:
        if _has_arrays(repo.readonly(), None):
            return None
        session = repo.repo.writable_session(branch)
        options = {"consolidated": False, **kwargs}  # Icechunk keeps no consolidated copy
        with dask.config.set(scheduler="threads"):
            created = write_dataset(ds, session.store, mode="w-", progress=progress, **options)
        snapshot = session.commit("toolkit: create", metadata={"toolkit_jobs": [owner]})
        _placed(created, {"snapshot": snapshot, "attempts": 1, "created": True}, None)
        return created
    finally:
        lease.release()


def _reserve_rows(
    ds: xr.Dataset, repo: Repository, head: Store, dim: str, owner: str, placement: dict[str, Any]
) -> list[_Piece]:
    """An append: reserve the job's rows along ``dim`` through the log."""
    _validate_append(ds, head, dim)
    answer = repo.log.submit(
        {"kind": "reserve", "dim": dim, "n": ds.sizes[dim], "runs": {}}, job=owner
    )
    placement.update(dim=dim, start=answer["start"], stop=answer["stop"])
    return [(ds, dim, slice(answer["start"], answer["stop"]))]


def _place_partitions(
    ds: xr.Dataset,
    repo: Repository,
    head: Store,
    partition: Hashable,
    owner: str,
    placement: dict[str, Any],
) -> list[_Piece]:
    """A partition overwrite: where each partition of the job lives (new ones appended)."""
    coord = str(partition)
    if coord not in ds.variables or ds[coord].ndim != 1:
        raise PartitionError(f"partition={coord!r} must name a 1-D coordinate of the dataset")
    dim = str(ds[coord].dims[0])
    _validate_append(ds, head, dim)
    runs = _runs(ds[coord].values)
    answer = repo.log.submit(
        {"kind": "partitions", "dim": dim, "coord": coord, "runs": runs}, job=owner
    )
    if "error" in answer:
        raise PartitionError(answer["error"])
    pieces: list[_Piece] = []
    pos = 0
    for _, a, b in answer["ranges"]:
        pieces.append((ds.isel({dim: slice(pos, pos + b - a)}), dim, slice(a, b)))
        pos += b - a
    placement.update(dim=dim, partitions={lab: [a, b] for lab, a, b in answer["ranges"]})
    return pieces


def _attempt(
    repo: Repository,
    branch: str,
    owner: str,
    attempt: int,
    pieces: list[_Piece],
    region: Mapping[Hashable, slice] | None,
    progress: bool,
    kwargs: Mapping[str, Any],
) -> tuple[dict[str, Any], Any]:
    """Write every piece into one fork of the branch head and ask the log to commit it."""
    session = repo.repo.writable_session(branch)
    base = session.snapshot_id
    # One fork for all pieces: pieces may share a write unit at their edges, and
    # each must read the unit as the one before left it.
    fork = session.fork()
    touched: dict[str, list[str]] = {}
    report: Any = None
    for rows, dim, sl in pieces:
        where: dict[Hashable, Any] = dict(region) if region is not None else {dim: sl}
        part = rows_along(rows, dim) if dim is not None else rows
        report = write_dataset(
            part, fork.store, mode="r+", region=where, progress=progress, **kwargs
        )
        if report.forks:  # written on a cluster: the workers' forks, merged in a tree
            fork.merge(*report.forks)
        for a, keys in _touched(report).items():
            touched.setdefault(a, []).extend(keys)
    key = f"forks/{owner}-{attempt}.pkl"
    repo.coord.put_bytes(key, pickle.dumps([fork]))
    answer = repo.log.submit(
        {"kind": "commit", "fork": key, "base": base, "touched": touched},
        job=f"{owner}-{attempt}",
    )
    return answer, report


def _validate_append(ds: xr.Dataset, head: Store, dim: str) -> None:

    plan_write(ds, head, mode="a", append_dim=dim)  # raises before anything is written
