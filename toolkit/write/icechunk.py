"""Many jobs, one Icechunk repository: every job all-or-nothing, commits batched.

Icechunk makes each commit a snapshot that readers see whole or not at all, and
leaves it to its users to keep concurrent writers from paying for each other.
Committed independently, N writers cost about N²/2 retries; on a local file
system (no atomic conditional writes) concurrent commits can be lost. Here:

- each job writes into a *fork* of a session at the branch head, with
  :func:`toolkit.to_zarr`'s tasks, and does not commit it itself. On a
  ``distributed`` cluster each task writes into its worker's copy of the fork
  and the copies come back merged in a tree (:func:`toolkit.write.graph.merge_results`);
- it hands the fork to the store's commit log (:mod:`toolkit.coordination.commitlog`)
  as Icechunk's own bytes (MessagePack, never pickle). The elected committer
  rebuilds each fork from *its own* repository configuration and only the
  fork's snapshot and changes, so that no configuration read from shared
  storage (a credential fetcher, say, which Icechunk would unpickle) ever
  reaches it; it merges every accepted fork into one session and makes *one*
  commit for the batch. Commits are serialized by the log's lease and
  conditional writes on every storage, local file systems included;
- appends and new partitions reserve their rows through the same log, and
  each job grows the arrays in its own fork: the rows and the data they hold
  arrive in the same commit, never rows without data. Forks are merged in the
  order their rows were reserved; a fork whose rows follow rows not yet
  committed waits for them, and if the job that holds them is found dead (its
  lease expired), those rows are taken back and the jobs after it write again
  at their new rows (their uncommitted forks are dropped, never merged);
- conflicts are detected, never resolved: a job whose write units were changed
  by a commit made since its fork was taken (or by an earlier job of the same
  batch) is answered "conflict" and rewrites on the new head, with jittered
  backoff, a bounded number of times, then raises
  :class:`~toolkit.errors.CommitConflictError` naming the arrays and chunks;
- every job checks that its snapshot is in the branch's history before it
  returns. A rerun of a job that committed (the same ``job_id``) commits
  nothing and says so.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Hashable, Mapping
from typing import Any

import dask
import xarray as xr
import zarr
from zarr.abc.store import Store

from toolkit._util import backoff
from toolkit.coordination.claim import CreationClaim
from toolkit.coordination.commitlog import Batch, CommitLog
from toolkit.coordination.leases import Coordinator, Lease, LockSet, holder_dead, job_id
from toolkit.coordination.rows import decide_rows, outstanding, shift_out
from toolkit.errors import CommitConflictError, PartitionError, PlanError, WriteError
from toolkit.io.clients import s3_endpoint_from_environment
from toolkit.io.groups import array_dims
from toolkit.io.stores import resolve_store
from toolkit.upstream import (
    ICECHUNK_FORK_FIELDS,
    ICECHUNK_SESSION_FIELDS,
    fork_from_bytes,
    session_bytes,
)
from toolkit.write.execute import write_dataset
from toolkit.write.manyjobs import (
    _has_arrays,
    _placed,
    _runs,
    _stored_partitions,
    derive_job_id,
    rows_along,
)
from toolkit.write.metadata import eager_regions, unit_ranges
from toolkit.write.plan import plan_write
from toolkit.write.report import WriteReport

__all__ = ["Repository", "to_icechunk"]

_HISTORY = 256
_MOVES = 16  # times a job may be moved down behind dead jobs before it gives up


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
        if not icechunk.Repository.exists(self.storage):
            claim = CreationClaim(self.coord.base, None, job_id())
            claim.acquire(wait=True)
            try:
                if not icechunk.Repository.exists(self.storage):
                    # Our coordination prefix may already be there: not a foreign repo.
                    icechunk.Repository.create(self.storage, check_clean_root=False)
            finally:
                claim.release()
        self.repo = icechunk.Repository.open(self.storage)
        self.log = CommitLog(self.coord, self._decide)
        # The committer's watch over the leases of jobs whose rows others wait for.
        self._watch: dict[str, Lease] = {}

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
        rows = [r for r in requests if r["kind"] in ("reserve", "partitions", "release")]
        new, answers = decide_rows(
            state,
            rows,
            # The branch head, read at the decision: current whatever ``visible`` says.
            lambda coord, dim, _visible: _stored_partitions(self.readonly(), None, coord, dim),
            dead=holder_dead,
        )
        history: list[dict[str, Any]] = list(state.get("history", []))
        order = {h["snapshot"]: i for i, h in enumerate(history)}
        committed: dict[str, int] = dict(new.get("committed", {}))
        accepted: list[dict[str, Any]] = []
        commits = [r for r in requests if r["kind"] == "commit"]
        commits.sort(key=lambda r: (r.get("rows") or {}).get("start", -1))
        blobs: dict[str, bytes] = {}
        for req in commits:
            # Anyone who can write the prefix can hand a "fork" over: it must be one.
            try:
                blobs[req["job"]] = _checked(self.coord.get_bytes(req["fork"]))
            except Exception as e:
                answers[req["job"]] = {
                    "error": f"what job {req.get('owner')} handed over is no Icechunk fork ({e})"
                }
        for req in [r for r in commits if r["job"] in blobs]:
            where = req.get("rows")
            if req["owner"] in {a["owner"] for a in accepted}:
                # Another run of the same job (a killed one's request, still pending)
                # commits its rows in this batch: this one has nothing left to do.
                answers[req["job"]] = {"landed": True}
                continue
            if where:
                dim = where["dim"]
                if dim not in committed:
                    committed[dim] = _length(self.readonly(), dim)
                mine = [r for r in new.get("reservations", []) if r["job"] == req["owner"]]
                if not mine:
                    landed = req["owner"] in new.get("landed", {})
                    answers[req["job"]] = {"landed": True} if landed else {"released": True}
                    continue
                r = mine[0]
                if [r["start"], r["stop"]] != [where["start"], where["stop"]]:
                    answers[req["job"]] = _moved(r)
                    continue
                if r["start"] != committed[dim]:
                    # Rows before this job's are not committed: whose are they?
                    before = [
                        o
                        for o in outstanding(new, dim)
                        if o["start"] <= committed[dim] < o["stop"] and o["id"] != r["id"]
                    ]
                    if not before:
                        # Nothing holds the rows in between: the log and the head disagree.
                        answers[req["job"]] = {
                            "error": f"rows {committed[dim]}-{r['start']} of {dim!r} are neither "
                            "committed nor reserved; rerun the job"
                        }
                        continue
                    if self._gone(before[0]):
                        new = shift_out(new, before[0]["id"])
                        now = next(o for o in new["reservations"] if o["id"] == r["id"])
                        answers[req["job"]] = _moved(now)
                    continue  # deferred: it waits for the job before it
            # Commits since the job's fork was taken, and the batch's earlier jobs.
            since = history[order[req["base"]] + 1 :] if req["base"] in order else history
            others = [h["touched"] for h in since] + [a["touched"] for a in accepted]
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
            if where:
                committed[where["dim"]] = where["stop"]
        new["committed"] = committed
        rejected = [r for r in commits if r["job"] in answers and r not in accepted]

        def effect() -> dict[str, Any] | None:
            for req in rejected:
                self.coord.delete(req["fork"])  # never merged
            if not accepted:
                return None
            snapshot = self._commit(accepted, blobs)
            touched_all: dict[str, list[str]] = {}
            for req in accepted:
                for a, keys in req["touched"].items():
                    touched_all.setdefault(a, []).extend(keys)
            if not history or history[-1]["snapshot"] != snapshot:
                history.append({"snapshot": snapshot, "touched": touched_all})
            new["history"] = history[-_HISTORY:]
            # Committed rows: no longer reserved, and remembered as landed.
            done = {req["owner"] for req in accepted if req.get("rows")}
            landed = dict(new.get("landed", {}))
            for r in [r for r in new.get("reservations", []) if r["job"] in done]:
                landed[r["job"]] = [r["dim"], r["start"], r["stop"]]
            new["reservations"] = [r for r in new.get("reservations", []) if r["job"] not in done]
            new["landed"] = landed
            for req in accepted:
                self.coord.delete(req["fork"])
            return {"snapshot": snapshot}

        return Batch(new, answers, effect)

    def _gone(self, reservation: Mapping[str, Any]) -> bool:
        """Whether the job holding ``reservation`` is found dead (this committer watching)."""
        lease = self._watch.setdefault(
            reservation["id"], Lease(self.coord, reservation["lease"], owner="committer")
        )
        return lease.observe().gone

    def _commit(self, accepted: list[dict[str, Any]], blobs: Mapping[str, bytes]) -> str:
        """Merge the accepted forks in order (arrays grown to each one's rows); commit once."""
        from icechunk import ConflictDetector

        session = self.repo.writable_session(self.branch)
        trusted = _trusted_parts(session)
        for req in accepted:
            fork = _load_fork(blobs[req["job"]], trusted)
            where = req.get("rows")
            if where:
                # The fork grew its arrays to its rows' end: the session first, or
                # Icechunk refuses two different shapes for one array.
                _grow(session.store, where["dim"], where["stop"])
            session.merge(fork)
        if not session.has_uncommitted_changes:
            return str(session.snapshot_id)
        jobs = [r["owner"] for r in accepted]
        snapshot: str = session.commit(
            f"toolkit: {len(jobs)} job(s)",
            metadata={"toolkit_jobs": jobs},
            rebase_with=ConflictDetector(),
        )
        if snapshot not in self.history(64):
            raise WriteError(
                f"snapshot {snapshot} was reported committed but is not in the history of "
                f"branch {self.branch!r}"
            )
        return snapshot


def _moved(r: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"moved": [r["start"], r["stop"]]}
    if "answer" in r:
        out["ranges"] = r["answer"]["ranges"]
    return out


def _length(store: Store, dim: str) -> int:
    """The committed length of ``dim`` (0 without arrays along it)."""
    try:
        grp = zarr.open_group(store, mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return 0
    out = 0
    for _, arr in grp.arrays():
        names = array_dims(arr)
        if dim in names:
            out = max(out, arr.shape[names.index(dim)])
    return out


def _grow(store: Store, dim: str, length: int) -> None:
    """Grow every array along ``dim`` to at least ``length`` (in a session or fork)."""
    grp = zarr.open_group(store, mode="r+", zarr_format=3)
    for _, arr in grp.arrays():
        names = array_dims(arr)
        if dim in names and arr.shape[names.index(dim)] < length:
            shape = list(arr.shape)
            shape[names.index(dim)] = length
            arr.resize(tuple(shape))


# -- forks as bytes ------------------------------------------------------------

# A serialized Icechunk session is a MessagePack array of fields (their layout is
# Icechunk's own: toolkit.upstream, ICECHUNK_SESSION_FIELDS). The storage fields may
# hold a credential fetcher that Icechunk unpickles: only the snapshot id and the
# change set (ICECHUNK_FORK_FIELDS) are taken from a fork read from shared storage.
_FIELDS = ICECHUNK_SESSION_FIELDS
_FROM_FORK = ICECHUNK_FORK_FIELDS


def _fields(data: bytes) -> list[bytes]:
    """The raw MessagePack encoding of each field of a serialized session (not decoded)."""
    import msgpack

    u = msgpack.Unpacker(raw=True, strict_map_key=False, max_buffer_size=max(len(data), 1))
    u.feed(data)
    n = u.read_array_header()
    if n != _FIELDS:
        raise ValueError(f"a serialized session has {_FIELDS} fields, this one {n}")
    out = []
    for _ in range(n):
        start = u.tell()
        u.skip()
        out.append(data[start : u.tell()])
    if u.tell() != len(data):
        raise ValueError("trailing bytes after the serialized session")
    return out


def _checked(data: bytes) -> bytes:
    """``data`` if it is a serialized session whose fork fields are plain data; else raises."""
    import msgpack

    theirs = _fields(data)
    for i in _FROM_FORK:
        msgpack.unpackb(theirs[i], raw=True, strict_map_key=False, object_pairs_hook=list)
    return data


def _trusted_parts(session: Any) -> list[bytes]:
    """The committer's own configuration, from a fork of its own session."""
    return _fields(session_bytes(session.fork()))


def _load_fork(data: bytes, trusted: list[bytes]) -> Any:
    """A fork handed over through shared storage, rebuilt around this committer's configuration.

    Only the fork's snapshot id and change set (chunk references and metadata
    changes, checked to be plain data) come from ``data``; the repository,
    storage and virtual-chunk configuration are the committer's own. Nothing
    in ``data`` is ever unpickled.
    """
    theirs = _fields(_checked(data))
    parts = [theirs[i] if i in _FROM_FORK else trusted[i] for i in range(_FIELDS)]
    rebuilt = _array_header(_FIELDS) + b"".join(parts)
    return fork_from_bytes(rebuilt)


def _array_header(n: int) -> bytes:
    # MessagePack's fixarray (n < 16), as rmp_serde writes a ten-field struct.
    assert n < 16
    return bytes([0x90 | n])


def _storage(target: str, opts: Mapping[str, Any]) -> Any:
    import icechunk

    if target.startswith(("s3://", "s3a://")):
        bucket, _, prefix = target.split("://", 1)[1].partition("/")
        endpoint = opts.get("endpoint_url") or s3_endpoint_from_environment()
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
    job_id: str | None = None,
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
    job_id : str, optional
        The job's identity (derived from the call by default): a rerun of a job
        that committed commits nothing (``placement["landed"]``).
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
    what = str(
        append_dim
        or partition
        or sorted((str(k), (v.start, v.stop)) for k, v in (region or {}).items())
    )
    kind = (
        "append" if append_dim is not None else "partitions" if partition is not None else "region"
    )
    job = job_id or derive_job_id(f"ice-{kind}", repo.target, branch, what, ds)
    head = repo.readonly()
    if not _has_arrays(head, None):
        if region is not None:
            raise PlanError(f"region writes need an existing dataset in {repo.target}")
        created = _create(ds, repo, branch, job, progress, kwargs)
        if created is not None:
            return created
        head = repo.readonly()
    kwargs = {k: v for k, v in kwargs.items() if k not in ("encoding", "zarr_format", "mode")}
    if region is None and append_dim is None and partition is None:
        raise PlanError(
            f"{repo.target} already holds a dataset: pass region, append_dim or partition"
        )
    dim = str(append_dim) if append_dim is not None else None
    if partition is not None:
        coord = str(partition)
        if coord not in ds.variables or ds[coord].ndim != 1:
            raise PartitionError(f"partition={coord!r} must name a 1-D coordinate of the dataset")
        dim = str(ds[coord].dims[0])
    if dim is not None:
        plan_write(ds, head, mode="a", append_dim=dim)  # raises before anything is written
    locks = LockSet(repo.coord, [f"jobs/{job}"], job)
    locks.start(timeout=max(5.0, locks.ttl * 1.5))
    try:
        return _run(ds, repo, branch, job, locks, region, dim, partition, retries, progress, kwargs)
    finally:
        locks.stop()


def _run(
    ds: xr.Dataset,
    repo: Repository,
    branch: str,
    job: str,
    locks: LockSet,
    region: Mapping[Hashable, slice] | None,
    dim: str | None,
    partition: Hashable | None,
    retries: int,
    progress: bool,
    kwargs: Mapping[str, Any],
) -> Any:
    lease = {"lease": locks.leases[0].name}
    placement: dict[str, Any] = {"job": job}
    rows: dict[str, Any] | None = None  # this job's reserved rows, when it has some
    pieces: list[_Piece]
    if region is not None:
        pieces = [(ds, None, None)]
    else:
        assert dim is not None
        ask = _ask(ds, dim, partition, lease, _length(repo.readonly(), dim))
        answer = repo.log.submit(ask, job=job)
        if "error" in answer:
            raise PartitionError(answer["error"])
        if answer.get("landed"):
            placement.update(dim=dim, start=answer["start"], stop=answer["stop"], landed=True)
            return _placed(WriteReport.nothing(repo.target), placement, repo.log)
        pieces, rows = _pieces(ds, dim, partition, answer, placement)
    last: dict[str, list[str]] = {}
    conflicts = moves = 0
    while True:
        answer, report = _attempt(
            repo, branch, job, conflicts + moves, pieces, rows, region, progress, kwargs
        )
        if "error" in answer:
            raise WriteError(f"Icechunk commit of job {job} failed: {answer['error']}")
        if answer.get("landed"):
            # An earlier run of this job (killed after handing its fork over) committed.
            placement["landed"] = True
            return _placed(WriteReport.nothing(repo.target), placement, repo.log)
        if "moved" in answer or "released" in answer:
            # Rows before this job's were taken back (their job died), or this job's
            # own were: write again where the log now says.
            moves += 1
            if moves > _MOVES:
                raise WriteError(f"job {job} was moved {moves} times behind dead jobs; rerun it")
            assert dim is not None
            if "released" in answer:
                answer = repo.log.submit(
                    _ask(ds, dim, partition, lease, _length(repo.readonly(), dim)), job=job
                )
                if answer.get("landed"):
                    placement.update(start=answer["start"], stop=answer["stop"], landed=True)
                    return _placed(WriteReport.nothing(repo.target), placement, repo.log)
            else:
                a, b = answer["moved"]
                ranges = {"ranges": answer["ranges"]} if "ranges" in answer else {}
                answer = {**(rows or {}), "start": a, "stop": b, **ranges}
            pieces, rows = _pieces(ds, dim, partition, answer, placement)
            continue
        if "conflict" in answer:
            last = answer["conflict"]
            conflicts += 1
            if conflicts > retries:
                raise CommitConflictError(
                    f"job {job} conflicted {conflicts} times with other jobs' commits on "
                    + "; ".join(f"{a}: chunks {', '.join(k[:8])}" for a, k in last.items())
                    + "; its regions overlap other jobs' write units: give each job whole "
                    "chunks, or raise retries",
                    last,
                )
            time.sleep(backoff(conflicts, base=0.05, cap=2.0))
            continue
        snapshot = answer["snapshot"]
        if snapshot not in repo.history():
            raise WriteError(f"job {job}: snapshot {snapshot} is not in branch {branch!r}")
        placement.update(snapshot=snapshot, attempts=conflicts + moves + 1)
        _placed(report, placement, repo.log)
        return report


def _ask(
    ds: xr.Dataset, dim: str, partition: Hashable | None, lease: Mapping[str, Any], visible: int
) -> dict[str, Any]:
    """The log request reserving a job's rows (an append's, or a partition job's new labels)."""
    import os
    import socket

    who = {
        **lease,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "dim": dim,
        "visible": visible,
    }
    if partition is None:
        return {"kind": "reserve", "n": ds.sizes[dim], "runs": {}, **who}
    return {
        "kind": "partitions",
        "coord": str(partition),
        "runs": _runs(ds[partition].values),
        **who,
    }


# Rows of the job, the dim they follow (None: the region given), and where they go on it.
type _Piece = tuple[xr.Dataset, str | None, slice | None]


def _pieces(
    ds: xr.Dataset,
    dim: str,
    partition: Hashable | None,
    answer: Mapping[str, Any],
    placement: dict[str, Any],
) -> tuple[list[_Piece], dict[str, Any] | None]:
    """Where each part of the job goes, from the log's answer; and its reserved rows."""
    if partition is None:
        placement.update(dim=dim, start=answer["start"], stop=answer["stop"])
        where = {"dim": dim, "start": answer["start"], "stop": answer["stop"]}
        return [(ds, dim, slice(answer["start"], answer["stop"]))], where
    pieces: list[_Piece] = []
    pos = 0
    for _, a, b in answer["ranges"]:
        pieces.append((ds.isel({dim: slice(pos, pos + b - a)}), dim, slice(a, b)))
        pos += b - a
    placement.update(dim=dim, partitions={lab: [a, b] for lab, a, b in answer["ranges"]})
    if answer.get("start") is None:
        return pieces, None
    return pieces, {"dim": dim, "start": answer["start"], "stop": answer["stop"]}


def _create(
    ds: xr.Dataset,
    repo: Repository,
    branch: str,
    owner: str,
    progress: bool,
    kwargs: Mapping[str, Any],
) -> Any:
    """Create the dataset in an empty repository; None if another job created it first."""
    claim = CreationClaim(repo.coord.base, None, owner)
    claim.acquire(wait=True)
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
        claim.release()


def _attempt(
    repo: Repository,
    branch: str,
    job: str,
    attempt: int,
    pieces: list[_Piece],
    rows: Mapping[str, Any] | None,
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
    if rows is not None:
        _grow(fork.store, rows["dim"], rows["stop"])  # the rows arrive with their data
    touched: dict[str, list[str]] = {}
    report: Any = None
    for part_rows, dim, sl in pieces:
        where: dict[Hashable, Any] = dict(region) if region is not None else {dim: sl}
        part = rows_along(part_rows, dim) if dim is not None else part_rows
        report = write_dataset(
            part, fork.store, mode="r+", region=where, progress=progress, **kwargs
        )
        if report.forks:  # written on a cluster: the workers' forks, merged in a tree
            fork.merge(*report.forks)
        for a, keys in _touched(report).items():
            touched.setdefault(a, []).extend(keys)
    key = f"forks/{job}-{attempt}.bin"
    repo.coord.put_bytes(key, session_bytes(fork))
    answer = repo.log.submit(
        {
            "kind": "commit",
            "fork": key,
            "base": base,
            "touched": touched,
            "owner": job,
            "rows": dict(rows) if rows is not None else None,
        },
        job=f"{job}-{attempt}",
        direct=False,
    )
    return answer, report
