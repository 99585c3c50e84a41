"""Many jobs, one dataset: concurrent appends, region writes and partition overwrites.

The jobs are separate processes that share nothing but the store (a local
directory, the S3 server through either client, or Azure Blob Storage on
Azurite through obstore). Each writes values that identify it, so every value
read back is accounted for.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter

import multiwrite_jobs as jobs
import numpy as np
import pytest
import xarray as xr
from conftest import snapshot

import toolkit
from toolkit.errors import AppendError, PartitionError

pytestmark = pytest.mark.timeout(300)

CTX = mp.get_context("spawn")


KINDS = ["local", "s3-obstore", "s3-s3fs", "azure"]


def _jobs(kind: str, n: int, on_azure: int) -> int:
    """How many jobs a test starts: ``n``, or ``on_azure`` on Azure.

    Each job is a fresh interpreter importing xarray, zarr and toolkit, which is what
    these tests spend their time on; the coordination is the same code on every store,
    and what Azure brings (its answers to conditional writes, its listings, its batches)
    is raced by fewer jobs as well, at a fraction of the CI time.
    """
    return on_azure if kind == "azure" else n


def _open(target: str, opts: dict | None) -> xr.Dataset:
    """Read back with xarray itself (fsspec), whichever client toolkit wrote through.

    On Azure through the client's bare zarr store (obstore, none of toolkit's
    wrappers): xarray reads az:// through adlfs, which toolkit does not install.
    """
    if target.startswith("az://"):
        from toolkit.io.stores import resolve_store

        store = resolve_store(target, storage_options=opts)
        return xr.open_zarr(store, consolidated=False).load()
    plain = {k: v for k, v in (opts or {}).items() if k != "client"} or None
    return xr.open_zarr(target, storage_options=plain, consolidated=False).load()


def _run(fn, argsets: list[tuple]) -> list:
    with CTX.Pool(len(argsets)) as pool:
        return pool.starmap(fn, argsets)


@pytest.mark.parametrize("kind", KINDS)
def test_eight_concurrent_appenders_all_land(kind, tmp_path, request):
    """8 processes (4 on Azure) append 10 rows each onto 30: each job's rows together, whole."""
    target, opts = jobs.target_for(kind, tmp_path, jobs.server_for(kind, request), "app.zarr")
    n = _jobs(kind, 8, on_azure=4)
    enc = {
        "v": {"chunks": (4, jobs.NX)},
        "w": {"chunks": (4,)},
        "time": {"chunks": (4,)},
        "lead": {"chunks": (4,)},
    }
    base = jobs.with_lead(jobs.base_dataset(30))
    toolkit.to_zarr(base, target, encoding=enc, progress=False, storage_options=opts)
    placements = _run(jobs.append_job, [(target, j, 10, opts) for j in range(1, n + 1)])

    ds = _open(target, opts)
    assert ds.sizes["time"] == 30 + n * 10
    v, w, t = ds.v.values, ds.w.values, ds.time.values
    # the coordinate that is not the index: every job's edge units merged, none lost
    np.testing.assert_array_equal(ds.lead.values, 2 * t)
    assert (v[:30] == -1).all() and (t[:30] == np.arange(30) - 10_000).all()
    for p, job in zip(placements, range(1, n + 1), strict=True):
        a, b = p["start"], p["stop"]
        assert b - a == 10
        # data and coordinate agree, row by row, and nothing of another job is there
        assert (v[a:b] == job).all()
        assert (t[a:b] == job * 1000 + np.arange(10)).all()
        assert (w[a:b] == job * 1000 + np.arange(10)).all()
    # ranges are disjoint and tile the appended rows, in reservation order
    spans = sorted((p["start"], p["stop"]) for p in placements)
    assert spans == [(30 + 10 * i, 40 + 10 * i) for i in range(n)]
    # batching: far fewer log entries than jobs
    entries = {p["commit"]["entry"] for p in placements}
    assert sum(p["commit"]["commits"] for p in placements) == len(entries) <= n


@pytest.mark.parametrize("kind", KINDS)
def test_sixteen_region_writers_sharing_edge_units(kind, tmp_path, request):
    """16 processes (6 on Azure) write regions of 7 rows into 10-row chunks: every edge unit
    is shared."""
    target, opts = jobs.target_for(kind, tmp_path, jobs.server_for(kind, request), "region.zarr")
    writers = _jobs(kind, 16, on_azure=6)
    enc = {"v": {"chunks": (10, jobs.NX)}}
    toolkit.to_zarr(
        jobs.base_dataset(writers * 7)[["v"]],
        target,
        encoding=enc,
        progress=False,
        storage_options=opts,
    )
    _run(jobs.region_job, [(target, j, 7 * j, 7 * (j + 1), opts) for j in range(writers)])
    v = _open(target, opts).v.values
    expected = np.repeat(np.arange(writers), 7)
    assert (v == expected[:, None]).all(), np.unique(v[:, 0], return_counts=True)


def _check_partitions(ds: xr.Dataset, owners: dict[str, set[int]]) -> dict[str, int]:
    """Every partition is whole: all its rows carry one job's values, a job that wrote it."""
    winners = {}
    days = ds.day.values.astype(str)
    for day in np.unique(days):
        rows = days == day
        vals = np.unique(ds.v.values[rows])
        assert len(vals) == 1, f"partition {day} is torn: {vals}"
        job = int(vals[0])
        assert job in owners.get(day, {-1}), (day, job)
        # the coordinate values are that job's too
        assert (ds.w.values[rows] // 1000 == job).all() or job == -1
        assert rows.sum() == jobs.DAY
        winners[day] = job
    return winners


@pytest.mark.parametrize("kind", KINDS)
def test_partition_overwriters_beside_appenders(kind, tmp_path, request):
    """4 processes overwrite overlapping days while 2 others append new days."""
    target, opts = jobs.target_for(kind, tmp_path, jobs.server_for(kind, request), "parts.zarr")
    first = [f"2024-01-{d:02d}" for d in range(1, 7)]
    enc = {"v": {"chunks": (10, jobs.NX)}, "w": {"chunks": (10,)}, "time": {"chunks": (10,)}}
    toolkit.to_zarr(
        jobs.day_rows(-1, first), target, encoding=enc, progress=False, storage_options=opts
    )
    plan = {
        1: ["2024-01-01", "2024-01-02", "2024-01-03"],
        2: ["2024-01-02", "2024-01-03", "2024-01-04"],
        3: ["2024-01-03", "2024-01-05"],
        4: ["2024-01-03", "2024-01-04", "2024-01-07"],  # a new day, too
    }
    appends = {5: ["2024-02-01", "2024-02-02"], 6: ["2024-03-01"]}
    with CTX.Pool(6) as pool:
        parts = [
            pool.apply_async(jobs.partition_job, (target, j, d, opts)) for j, d in plan.items()
        ]
        apps = [
            pool.apply_async(jobs.day_append_job, (target, j, d, opts)) for j, d in appends.items()
        ]
        [r.get(timeout=240) for r in parts + apps]
    ds = _open(target, opts)
    owners: dict[str, set[int]] = {}
    for j, days in {**plan, **appends}.items():
        for d in days:
            owners.setdefault(d, set()).add(j)
    for d in first:
        owners.setdefault(d, set()).add(-1)
    winners = _check_partitions(ds, owners)
    # every day somebody wrote is there exactly once; untouched day 6 kept its values
    assert sorted(winners) == sorted({*first, *owners})
    assert winners["2024-01-06"] == -1
    assert winners["2024-02-01"] == 5 and winners["2024-03-01"] == 6
    assert all(winners[d] != -1 for d in plan[1] + plan[2] + plan[3] + plan[4])


def test_killed_partition_writer_does_not_block_the_others(tmp_path, monkeypatch):
    """SIGKILL a job holding partition locks: its locks expire, the next job wins whole."""
    monkeypatch.setenv("TOOLKIT_LEASE_TTL", "4")
    target = str(tmp_path / "kill.zarr")
    days = ["2024-01-01", "2024-01-02"]
    enc = {"v": {"chunks": (4, jobs.NX)}, "w": {"chunks": (4,)}, "time": {"chunks": (4,)}}
    toolkit.to_zarr(jobs.day_rows(-1, days), target, encoding=enc, progress=False)
    jobs.kill_midway("slow_partition_job", target, 7, days, ready=str(tmp_path / "ready"))
    t0 = time.time()
    placement = jobs.partition_job(target, 8, days)
    assert time.time() - t0 < 60
    ds = toolkit.open_zarr(target, consolidated=False, incomplete="ignore").load()
    winners = _check_partitions(ds, {d: {8} for d in days})
    assert winners == dict.fromkeys(days, 8)
    assert set(placement["partitions"]) == set(days)


def test_append_of_bad_data_fails_before_writing(tmp_path):
    target = str(tmp_path / "bad.zarr")
    toolkit.to_zarr(jobs.base_dataset(8), target, progress=False)
    before = snapshot(target)
    bad = jobs.rows(1, np.arange(4)).assign(v=lambda d: d.v.astype("i2").rename({"x": "y"}))
    with pytest.raises(AppendError):
        toolkit.append(bad, target, "time", progress=False)
    with pytest.raises(AppendError, match="does not match any existing dataset dimensions"):
        toolkit.append(jobs.rows(1, np.arange(4)), target, "depth", progress=False)
    assert snapshot(target) == before


def test_partition_errors_name_the_fix(tmp_path):
    target = str(tmp_path / "p.zarr")
    toolkit.to_zarr(jobs.day_rows(-1, ["2024-01-01"]), target, progress=False)
    before = snapshot(target)
    short = jobs.day_rows(1, ["2024-01-01"]).isel(time=slice(0, 20))
    with pytest.raises(PartitionError, match="24 rows in the store, the job brings 20"):
        toolkit.to_zarr(short, target, mode="overwrite-partitions", partition="day", progress=False)
    scattered = jobs.day_rows(1, ["2024-01-02", "2024-01-03"]).isel(time=np.r_[0:10, 30:40, 10:20])
    with pytest.raises(PartitionError, match="sortby"):
        toolkit.to_zarr(
            scattered, target, mode="overwrite-partitions", partition="day", progress=False
        )
    with pytest.raises(PartitionError, match="1-D coordinate"):
        toolkit.to_zarr(
            short, target, mode="overwrite-partitions", partition="nope", progress=False
        )
    with pytest.raises(toolkit.errors.PlanError, match="partition="):
        toolkit.to_zarr(short, target, mode="overwrite-partitions", progress=False)

    # only the log's entry (a decision, no data) may be new
    def data(snap: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in snap.items() if not k.startswith(".toolkit/coord")}

    assert data(snapshot(target)) == data(before)


def test_a_label_in_two_runs_is_refused_by_name_and_the_others_are_replaced(tmp_path):
    """An append of rows of an earlier label leaves it in two runs: no overwrite takes it
    (replacing one run would leave the other: the label twice), the others are replaced."""
    target = str(tmp_path / "split.zarr")
    toolkit.to_zarr(jobs.day_rows(0, ["2024-01-01", "2024-01-02"]), target, progress=False)
    toolkit.append(jobs.day_rows(1, ["2024-01-01"]), target, "time", progress=False)
    before = snapshot(target)
    again = jobs.day_rows(2, ["2024-01-01"])
    with pytest.raises(PartitionError, match=r"'2024-01-01' \(rows 0-24, 48-72\).*sorted"):
        toolkit.to_zarr(again, target, mode="overwrite-partitions", partition="day", progress=False)
    assert snapshot(target) == before
    toolkit.to_zarr(
        jobs.day_rows(3, ["2024-01-02"]), target, mode="overwrite-partitions", partition="day"
    )
    ds = _open(target, None)
    assert ds.sizes["time"] == 72
    np.testing.assert_array_equal(np.unique(ds.v.values[24:48]), [3])
    np.testing.assert_array_equal(np.unique(ds.v.values[np.r_[0:24, 48:72]]), [0, 1])
    assert (ds.v.values[48:72] == 1).all()


def test_appends_in_one_process_keep_order_and_batch(tmp_path):
    """Threads appending at once: one reservation entry answers many of them."""
    from concurrent.futures import ThreadPoolExecutor

    target = str(tmp_path / "threads.zarr")
    toolkit.to_zarr(jobs.with_lead(jobs.base_dataset(5)), target, progress=False)
    with ThreadPoolExecutor(8) as pool:
        placements = list(pool.map(lambda j: jobs.append_job(target, j, 3), range(1, 9)))
    ds = _open(target, None)
    assert ds.sizes["time"] == 5 + 24
    np.testing.assert_array_equal(ds.lead.values, 2 * ds.time.values)
    for j, p in zip(range(1, 9), placements, strict=True):
        assert (ds.v.values[p["start"] : p["stop"]] == j).all()
    assert Counter(ds.v.values[:, 0].tolist())[-1] == 5


def test_a_bad_call_in_a_batch_gets_its_own_error(tmp_path):
    """Threads batched into one job: the one with bad data fails alone, the others land."""
    from concurrent.futures import ThreadPoolExecutor

    target = str(tmp_path / "batch.zarr")
    toolkit.to_zarr(jobs.base_dataset(5), target, progress=False)

    def call(j: int) -> object:
        ds = jobs.rows(j, j * 1000 + np.arange(3))
        if j == 3:
            ds = ds.rename({"x": "y"})  # another dimension: refused before writing
        try:
            return toolkit.append(ds, target, "time", progress=False).placement
        except AppendError as e:
            return e

    with ThreadPoolExecutor(6) as pool:
        out = list(pool.map(call, range(1, 7)))
    assert isinstance(out[2], AppendError)
    ok = [p for p in out if not isinstance(p, Exception)]
    assert len(ok) == 5
    ds = _open(target, None)
    assert ds.sizes["time"] == 5 + 15
    for j, p in zip([1, 2, 4, 5, 6], ok, strict=True):
        assert (ds.v.values[p["start"] : p["stop"]] == j).all()
        assert (ds.time.values[p["start"] : p["stop"]] == j * 1000 + np.arange(3)).all()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_appends_to_a_group_are_seen_by_every_reader(tmp_path, zarr_format):
    """xarray opens a group from the store root's consolidated document: it is grown too.

    An append to ``group=`` used to plan its hidden rows from the group's own
    consolidated copy, which xarray's writes of a group do not make (they
    consolidate at the root): the rows' region write saw the old length and failed,
    and a published append would have stayed invisible to xarray's readers.
    """
    from xarray.tests.test_backends import create_append_test_data

    ds, more, _ = create_append_test_data()
    store = str(tmp_path / "g.zarr")
    for group in (None, "g", "a/b"):
        toolkit.to_zarr(
            ds,
            store,
            mode="w" if group is None else "a",
            group=group,
            zarr_format=zarr_format,
            progress=False,
        )
        toolkit.to_zarr(more, store, append_dim="time", group=group, progress=False)
        want = xr.concat([ds, more], dim="time")
        for opened in (
            xr.open_zarr(store, group=group),  # the root's consolidated copy
            xr.open_zarr(store, group=group, consolidated=False),
            toolkit.open_zarr(store, group=group),
        ):
            xr.testing.assert_identical(opened.load(), want)


def test_the_commit_log_takes_a_snapshots_labels_only_while_nothing_was_published(tmp_path):
    """The labels a partition job read at its start serve the log only at that length.

    An append published between the job's snapshot and the log's first decision
    on the coordinate has left the log's reservations: the decision reads the
    store again (else that append's label is taken for a new partition, and its
    rows are written twice: the mixed-jobs rounds caught it on S3 under load).
    """
    from zarr.storage import LocalStore

    from toolkit.write.manyjobs import commit_log

    days = ["mon"] * 3 + ["tue"] * 2
    ds = xr.Dataset({"v": ("t", np.arange(5.0))}, coords={"day": ("t", days)})
    toolkit.to_zarr(ds, tmp_path / "d.zarr", progress=False)
    stale = {"day": {"mon": [0, 3]}}  # read before "tue" (rows 3-5) was published
    request = {
        "kind": "partitions",
        "job": "p",
        "dim": "t",
        "coord": "day",
        "runs": [["tue", 2]],
        "visible": 5,
        "lease": "jobs/p",
        "host": "h",
        "pid": 1,
    }
    log = commit_log(LocalStore(str(tmp_path / "d.zarr")), known=stale)
    batch = log.decide({"dims": {"t": 5}}, [request])
    assert batch.answers["p"]["ranges"] == [["tue", 3, 5]]  # in place: the store read again
    assert "id" not in batch.answers["p"]
    # Covering the visible rows, the snapshot is taken as it is (no read of the store).
    fresh = {"day": {"mon": [0, 3], "tue": [3, 5]}}
    log = commit_log(LocalStore(str(tmp_path / "missing.zarr")), known=fresh)
    batch = log.decide({"dims": {"t": 5}}, [request])
    assert batch.answers["p"]["ranges"] == [["tue", 3, 5]]
