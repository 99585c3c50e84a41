"""One test per finding of the hostile run on the many-jobs paths (each failed before the fix).

The kills themselves are in ``test_manyjobs_kills.py``, concurrency in
``test_manyjobs.py`` and ``test_manyjobs_mixed.py``, faults on coordination requests in
``tests/coordination/test_coordination_faults.py``.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import multiwrite_jobs as jobs
import numpy as np
import pytest
import xarray as xr
import zarr

import toolkit
from toolkit.errors import AppendError, ExistingStoreError, WriteError

pytestmark = pytest.mark.timeout(300)


def _read(path: Path | str) -> xr.Dataset:
    return toolkit.open_zarr(path).load()


# -- appends accept mismatched data -------------------------------------------------


def test_an_append_with_other_labels_on_another_dim_is_refused_store_untouched(tmp_path):
    from conftest import snapshot

    target = tmp_path / "a.zarr"
    toolkit.to_zarr(jobs.base_dataset(8), str(target), progress=False)
    before = snapshot(target)
    other_x = jobs.rows(1, np.arange(4)).assign_coords(x=np.arange(10, 10 + jobs.NX))
    with pytest.raises(AppendError, match="'x' differs") as err:
        toolkit.append(other_x, str(target), "time", progress=False)
    assert isinstance(err.value, ValueError)  # xarray's error class
    without_w = jobs.rows(1, np.arange(4)).drop_vars("w")
    with pytest.raises(AppendError, match=r"leaves out \['w'\]"):
        toolkit.append(without_w, str(target), "time", progress=False)
    assert snapshot(target) == before


# -- a failed batched append duplicated rows while telling every caller "success" ------


def test_a_batch_that_fails_after_reserving_fails_for_every_call_and_reruns_land_once(
    tmp_path, monkeypatch
):
    target = str(tmp_path / "batch.zarr")
    enc = {"v": {"chunks": (4, jobs.NX)}, "w": {"chunks": (4,)}, "time": {"chunks": (4,)}}
    toolkit.to_zarr(jobs.base_dataset(5), target, encoding=enc, progress=False)
    from toolkit.io import conditional

    original = conditional._written_temp
    failed = threading.Event()

    def once(path, data, root=None, **kw):
        # The appended rows share their units with others: conditional writes.
        if "/v/c/" in str(path) and not failed.is_set():
            failed.set()
            raise PermissionError("the disk said no, once")  # final: not retried
        return original(path, data, root, **kw)

    monkeypatch.setattr(conditional, "_written_temp", once)
    calls = {j: jobs.rows(j, j * 1000 + np.arange(2)) for j in (1, 2, 3)}

    def call(j: int) -> object:
        try:
            return toolkit.append(calls[j], target, "time", progress=False).placement
        except Exception as e:
            return e

    with ThreadPoolExecutor(3) as pool:
        first = list(pool.map(call, calls))
    assert failed.is_set()
    errors = [r for r in first if isinstance(r, Exception)]
    # Written together: the failure is every call's (none is told "success" while
    # its rows are missing); or a call that ran alone landed whole.
    for r in errors:
        assert isinstance(r, WriteError) and isinstance(r.__cause__, PermissionError), r
    ds = _read(target)
    assert not np.isnan(ds.v.values).any()
    assert len(np.unique(ds.time.values)) == ds.sizes["time"]
    monkeypatch.setattr(conditional, "_written_temp", original)
    with ThreadPoolExecutor(3) as pool:
        again = list(pool.map(call, calls))  # every call again: each lands exactly once
    assert not [r for r in again if isinstance(r, Exception)], again
    ds = _read(target)
    assert ds.sizes["time"] == 5 + 6
    for j in calls:
        rows = ds.w.values // 1000 == j
        assert rows.sum() == 2 and (ds.v.values[rows] == j).all()
    assert len(np.unique(ds.time.values)) == ds.sizes["time"]


# -- two creators mixed through the claim's thread nesting ----------------------------


def test_a_deferred_creation_and_a_replacing_write_in_one_thread_never_mix(tmp_path):
    target = str(tmp_path / "c.zarr")
    one = xr.Dataset({"v": ("t", np.ones(12))}).chunk({"t": 4})
    two = xr.Dataset({"v": ("t", np.full(12, 2.0))}).chunk({"t": 4})
    deferred = toolkit.to_zarr(one, target, mode="w", compute=False, progress=False)
    with pytest.raises(ExistingStoreError, match="deferred write"):
        toolkit.to_zarr(two, target, mode="w", progress=False)
    deferred.compute()
    np.testing.assert_array_equal(_read(target).v.values, np.ones(12))  # whole, never [1]*8+[2]*4
    toolkit.to_zarr(two, target, mode="w", progress=False)  # once it is done: replaced whole
    np.testing.assert_array_equal(_read(target).v.values, np.full(12, 2.0))


def test_a_deferred_write_dropped_uncomputed_gives_its_claim_up(tmp_path):
    target = tmp_path / "d.zarr"
    ds = xr.Dataset({"v": ("t", np.ones(8))}).chunk({"t": 4})
    deferred = toolkit.to_zarr(ds, str(target), mode="w", compute=False, progress=False)
    lease = target / ".toolkit" / "coord" / "leases" / "create.json"
    assert '"held"' in lease.read_text()
    del deferred
    gc.collect()
    deadline = time.monotonic() + 10
    while '"released"' not in lease.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert '"released"' in lease.read_text()  # another creator need not wait 600 s
    left = [t for t in threading.enumerate() if t.name == "toolkit-lease-renewer"]
    deadline = time.monotonic() + 10
    while any(t.is_alive() for t in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.is_alive() for t in left)
    toolkit.to_zarr(ds * 3, str(target), mode="w", progress=False)
    np.testing.assert_array_equal(_read(target).v.values, np.full(8, 3.0))


# -- errors that chain their cause, with no request still running ---------------------

_FAILING = """
import asyncio, sys, numpy as np, xarray as xr, toolkit
from zarr.storage import LocalStore
original = LocalStore.set
async def slow_then_fail(self, key, value):
    if key.startswith("v/c/"):
        if key.endswith("/3"):
            raise PermissionError("the disk said no")
        await asyncio.sleep(0.3)
    await original(self, key, value)
LocalStore.set = slow_then_fail
ds = xr.Dataset({"v": ("t", np.arange(40.0))}).chunk({"t": 4})
try:
    toolkit.to_zarr(ds, sys.argv[1], encoding={"v": {"chunks": (4,)}}, progress=False)
except toolkit.errors.WriteError as e:
    print("cause:", type(e.__cause__).__name__)
    print("still running:" , "may still land" in str(e))
"""


def test_a_failed_write_chains_its_cause_and_leaves_nothing_running(tmp_path):
    target = tmp_path / "f.zarr"
    proc = subprocess.run(
        [sys.executable, "-c", _FAILING, str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "cause: PermissionError" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "still running: False" in proc.stdout
    # Nothing of the write after the error was raised, and no asyncio noise.
    assert "Task was destroyed" not in proc.stderr, proc.stderr[-3000:]
    assert "exception was never retrieved" not in proc.stderr, proc.stderr[-3000:]
    written = {p: p.stat().st_mtime_ns for p in target.rglob("*") if p.is_file()}
    time.sleep(1.0)
    assert {p: p.stat().st_mtime_ns for p in target.rglob("*") if p.is_file()} == written


_DISK_FULL = """
import errno, os, sys
import numpy as np, pandas as pd, xarray as xr, toolkit
from zarr.storage import LocalStore
src = sys.argv[2]
os.makedirs(src, exist_ok=True)
for i in range(6):
    t = pd.date_range("2024-01-01", periods=20, freq="h") + pd.Timedelta(hours=20 * i)
    v = np.random.default_rng(i).random((20, 50))
    xr.Dataset({"v": (("time", "x"), v)}, coords={"time": t}).to_netcdf(
        f"{src}/p{i}.nc", engine="h5netcdf")
original = LocalStore.set
n = [0]
async def full(self, key, value):
    if "/c/" in key:
        n[0] += 1
        if n[0] > 3:
            raise OSError(errno.ENOSPC, "No space left on device", key)
    await original(self, key, value)
LocalStore.set = full
try:
    toolkit.ingest(f"{src}/*.nc", sys.argv[1], concat_dim="time", chunks={"time": 2},
                   progress=False)
except toolkit.errors.WriteError as e:
    print("error:", str(e).splitlines()[0])
"""


def test_a_disk_full_ingest_says_so_once_with_no_asyncio_noise(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _DISK_FULL, str(tmp_path / "o.zarr"), str(tmp_path / "src")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "error: writing" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "Task was destroyed" not in proc.stderr, proc.stderr[-3000:]
    assert "never retrieved" not in proc.stderr, proc.stderr[-3000:]
    assert len(proc.stderr.splitlines()) < 20, proc.stderr[-3000:]


# -- a killed partition job that added labels wedged every later partition job ----------


def test_partition_jobs_go_on_beside_a_dead_one_that_added_labels(tmp_path):
    """A job that reserved rows for new labels and died: later partition jobs proceed."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "coordination"))
    import kill_jobs

    target = str(tmp_path / "p.zarr")
    kill_jobs.create_base("partition-new", target, None)
    env = {**os.environ, "TOOLKIT_LEASE_TTL": "3", "TOOLKIT_KILL": "set:after:1:^v/c/"}
    child = [sys.executable, kill_jobs.__file__, "partition-new", "-", "-", target]
    assert subprocess.run(child, env=env, capture_output=True, timeout=120).returncode == -9
    # Other jobs, other days (an existing one and a new one): no "not one contiguous run".
    other = kill_jobs.day_rows(8, ["2024-01-01", "2024-01-09"])
    toolkit.to_zarr(other, target, mode="overwrite-partitions", partition="day", progress=False)
    ds = _read(target)
    assert not np.isnan(ds.v.values).any() and "" not in set(ds.day.values.astype(str))
    got = {d: set(np.unique(ds.v.values[ds.day.values == d])) for d in np.unique(ds.day.values)}
    assert got["2024-01-01"] == {8} and got["2024-01-09"] == {8}
    assert got["2024-01-02"] == {-1} and got["2024-01-03"] == {-1}


# -- a finished job's published rows were handed out again as a dead job's ---------------


def _append_day(target: str) -> None:
    toolkit.append(jobs.day_rows(1, ["2024-02-01"]), target, "time", progress=False)


def test_a_job_that_published_and_ended_keeps_its_rows(tmp_path, monkeypatch):
    """B reads the lengths, A appends, publishes and exits, then B's reservation is decided.

    The log still held A's rows (no request had reported them visible yet) and A's
    process was gone, so they were released as a dead job's and handed to B, which wrote
    over them: A's day lost, both jobs told "success" (a helper's stress run found it).
    """
    import multiprocessing as mp

    import toolkit.write.manyjobs as manyjobs

    target = str(tmp_path / "d.zarr")
    days = [f"2024-01-{d:02d}" for d in range(1, 11)]
    toolkit.to_zarr(jobs.day_rows(-1, days), target, progress=False)
    real = manyjobs._Dataset.extents
    ran: list[int | None] = []

    def extents(self):  # B's lengths read; then A runs whole in a process of its own
        ext = real(self)
        if not ran:
            a = mp.get_context("spawn").Process(target=_append_day, args=(target,))
            a.start()
            a.join(120)
            ran.append(a.exitcode)
        return ext

    monkeypatch.setattr(manyjobs._Dataset, "extents", extents)
    report = toolkit.append(jobs.day_rows(2, ["2024-02-02"]), target, "time", progress=False)
    assert ran == [0]
    assert (report.placement["start"], report.placement["stop"]) == (264, 288)
    ds = _read(target)
    assert ds.sizes["time"] == 288
    np.testing.assert_array_equal(ds.v.values[240:264], 1)
    np.testing.assert_array_equal(ds.v.values[264:288], 2)
    assert list(dict.fromkeys(ds.day.values.astype(str)))[-2:] == ["2024-02-01", "2024-02-02"]


# -- Icechunk: nothing read from shared storage is ever unpickled ------------------------


class _Evil:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_fork_blob_is_never_executed_and_blocks_nobody(tmp_path):
    pytest.importorskip("icechunk")
    import pickle

    from toolkit.write.icechunk import Repository, to_icechunk

    marker = tmp_path / "PWNED"
    target = str(tmp_path / "ice")
    to_icechunk(jobs.base_dataset(8), target, encoding={"v": {"chunks": (4, jobs.NX)}})
    repo = Repository(target)
    # Anyone who can write the prefix plants a blob and a commit request naming it.
    repo.coord.put_bytes("forks/evil-0.bin", pickle.dumps([_Evil(str(marker))]))
    repo.coord.put(
        "pending/evil.json",
        {
            "kind": "commit",
            "job": "evil-0",
            "req": "evil",
            "owner": "evil",
            "fork": "forks/evil-0.bin",
            "base": "x",
            "touched": {},
            "rows": None,
            "submitted": "2000-01-01T00:00:00",
        },
    )
    placed = to_icechunk(jobs.rows(5, np.arange(4)), repo, append_dim="time")
    assert not marker.exists()
    assert placed.placement["snapshot"] in repo.history()
    back = xr.open_zarr(repo.readonly(), consolidated=False).load()
    assert back.sizes["time"] == 12 and (back.v.values[8:] == 5).all()


def test_a_crafted_icechunk_session_with_a_pickled_credential_fetcher_is_never_run(tmp_path):
    """Icechunk's own session bytes can carry a pickled credential fetcher: rebuilt, never run."""
    pytest.importorskip("icechunk")
    import pickle

    import msgpack

    from toolkit.write.icechunk import Repository, _load_fork, _trusted_parts

    marker = tmp_path / "PWNED"
    target = str(tmp_path / "ice")
    repo = Repository(target)
    session = repo.repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(8,), chunks=(4,), dtype="f8")
    session.commit("a")
    fork = repo.repo.writable_session("main").fork()
    zarr.open_array(fork.store, path="a", mode="r+")[:4] = 7.0
    raw = fork._session.as_bytes()
    fields = list(msgpack.unpackb(raw, raw=False, use_list=False, strict_map_key=False))
    evil = {
        "type": "S3Storage",
        "config": {
            "region": "us-east-1",
            "endpoint_url": "http://127.0.0.1:9",
            "anonymous": False,
            "allow_http": True,
            "force_path_style": True,
            "network_stream_timeout_seconds": 1,
            "requester_pays": False,
            "checksum_algorithm": None,
        },
        "credentials": {
            "s3_credential_type": "refreshable",
            "s3_credentials_fetcher_type": "PythonCredentialsFetcher",
            "pickled_function": list(pickle.dumps(_Evil(str(marker)))),
            "initial": None,
        },
        "bucket": "b",
        "prefix": "p",
        "can_write": True,
        "extra_read_headers": [],
        "extra_write_headers": [],
    }
    fields[2] = evil
    fields[3] = [evil, *fields[3][1:]]
    crafted = msgpack.packb(fields, use_bin_type=True)
    main = repo.repo.writable_session("main")
    rebuilt = _load_fork(crafted, _trusted_parts(main))
    main.merge(rebuilt)
    main.commit("merged")
    assert not marker.exists()
    back = zarr.open_array(repo.readonly(), path="a", mode="r")[:]
    np.testing.assert_array_equal(back[:4], 7.0)  # the fork's changes, this repo's storage


# -- a lease lost in the middle of a read-modify-write cannot overwrite ----------------


def test_a_writer_stalled_between_its_read_and_its_write_cannot_overwrite(tmp_path, monkeypatch):
    """Two region writers share a unit; one stalls past any lease after reading it.

    Its write back is conditional on the version it read, so it lands only after
    reading the other's update again: both regions survive.
    """
    from toolkit.io import rmw

    target = str(tmp_path / "r.zarr")
    base = xr.Dataset({"v": ("t", np.full(20, -1.0))})
    toolkit.to_zarr(base, target, encoding={"v": {"chunks": (10,)}}, progress=False)
    read_shared = threading.Event()
    other_done = threading.Event()
    original = rmw.ConditionalUnits.set

    async def stall_after_read(self, key, value):
        if not read_shared.is_set():  # the first writer to get here: it read the unit
            read_shared.set()
            import asyncio

            while not other_done.is_set():  # the lease would have expired by now
                await asyncio.sleep(0.05)
        await original(self, key, value)

    monkeypatch.setattr(rmw.ConditionalUnits, "set", stall_after_read)

    def write(lo: int, hi: int, value: float) -> None:
        part = xr.Dataset({"v": ("t", np.full(hi - lo, value))})
        toolkit.to_zarr(part, target, region={"t": slice(lo, hi)}, progress=False)

    stalled = threading.Thread(target=write, args=(0, 6, 1.0), name="stalled")
    stalled.start()
    assert read_shared.wait(30)
    write(6, 12, 2.0)  # the other writer, sharing unit 0 (rows 0-9)
    other_done.set()
    stalled.join(60)
    v = _read(target).v.values
    np.testing.assert_array_equal(v[:6], 1.0)
    np.testing.assert_array_equal(v[6:12], 2.0)  # not overwritten by the stalled writer
    np.testing.assert_array_equal(v[12:], -1.0)


# -- partition jobs: found by the mixed-jobs test (tests/write/test_manyjobs_mixed.py) -------


def test_days_appended_before_the_first_partition_job_are_replaced_not_duplicated(tmp_path):
    """An append's labels are known to the log before its rows are visible."""
    from toolkit.write import manyjobs

    target = str(tmp_path / "a.zarr")
    toolkit.to_zarr(jobs.day_rows(-1, ["2024-01-01"]), target, progress=False)
    gate, go = threading.Event(), threading.Event()
    original = manyjobs._publish_rows

    def slow(*args, **kwargs):  # the appender's rows stay hidden until the overwrite is decided
        gate.set()
        assert go.wait(30)
        return original(*args, **kwargs)

    manyjobs._publish_rows = slow
    try:
        appender = ThreadPoolExecutor(1).submit(
            toolkit.append, jobs.day_rows(5, ["2024-02-01"]), target, "time", progress=False
        )
        assert gate.wait(30)
        manyjobs._publish_rows = original
        replace = ThreadPoolExecutor(1).submit(
            toolkit.overwrite_partitions,
            jobs.day_rows(9, ["2024-02-01"]),
            target,
            "day",
            progress=False,
        )
        time.sleep(1.0)
        go.set()
        appender.result(60)
        replace.result(60)
    finally:
        manyjobs._publish_rows = original
    ds = _read(target)
    days = ds.day.values.astype(str)
    assert (days == "2024-02-01").sum() == jobs.DAY  # one copy of the day
    assert set(np.unique(ds.v.values[days == "2024-02-01"])) == {9.0}
    assert len(np.unique(ds.time.values)) == ds.sizes["time"]


def test_new_days_apart_in_the_job_are_written_where_the_log_put_them(tmp_path):
    target = str(tmp_path / "p.zarr")
    toolkit.to_zarr(jobs.day_rows(-1, ["2024-01-01", "2024-01-02"]), target, progress=False)
    days = ["2024-05-01", "2024-01-01", "2024-05-02"]  # new, stored, new
    report = toolkit.to_zarr(
        jobs.day_rows(7, days), target, mode="overwrite-partitions", partition="day", progress=False
    )
    ds = _read(target)
    stored = ds.day.values.astype(str)
    assert [d for d in dict.fromkeys(stored)] == [
        "2024-01-01",
        "2024-01-02",
        "2024-05-01",
        "2024-05-02",
    ]
    for i, d in enumerate(days):
        rows = stored == d
        assert rows.sum() == jobs.DAY and (ds.v.values[rows] == 7).all(), d
        np.testing.assert_array_equal(ds.w.values[rows], 7000 + i * jobs.DAY + np.arange(jobs.DAY))
        a, b = report.placement["partitions"][d]
        assert (stored[a:b] == d).all()


def test_two_jobs_adding_one_new_day_never_deadlock(tmp_path):
    """One job waits for the other's new rows without holding a partition lock."""
    from toolkit.write import manyjobs

    target = str(tmp_path / "d.zarr")
    toolkit.to_zarr(jobs.day_rows(-1, ["2024-01-01", "2024-01-02"]), target, progress=False)
    toolkit.overwrite_partitions(jobs.day_rows(-1, ["2024-01-02"]), target, "day", progress=False)
    original = manyjobs.LockSet.start
    first = threading.Event()

    def slow_start(self, *args, **kwargs):  # the first job is slow to take its locks
        partitions = any(lease.name.startswith("partitions/") for lease in self.leases)
        if partitions and not first.is_set():
            first.set()
            time.sleep(2)
        return original(self, *args, **kwargs)

    manyjobs.LockSet.start = slow_start
    try:
        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(
                toolkit.overwrite_partitions,
                jobs.day_rows(7, ["2024-01-01", "2024-05-01"]),
                target,
                "day",
                lock_timeout=30,
                progress=False,
            )
            assert first.wait(30)
            b = pool.submit(
                toolkit.overwrite_partitions,
                jobs.day_rows(8, ["2024-01-01", "2024-05-01"]),
                target,
                "day",
                lock_timeout=30,
                progress=False,
            )
            t0 = time.monotonic()
            a.result(60)
            b.result(60)
            assert time.monotonic() - t0 < 25  # not a lock timeout
    finally:
        manyjobs.LockSet.start = original
    ds = _read(target)
    for d in ("2024-01-01", "2024-05-01"):
        vals = set(np.unique(ds.v.values[ds.day.values.astype(str) == d]))
        assert len(vals) == 1 and vals <= {7.0, 8.0}, (d, vals)
    assert ds.sizes["time"] == 3 * jobs.DAY


# -- a deferred append (compute=False) showed fill rows until computed, for good if never --


def test_a_deferred_append_shows_its_rows_only_with_their_data(tmp_path):
    from dask.delayed import Delayed

    target = str(tmp_path / "deferred.zarr")
    toolkit.to_zarr(jobs.base_dataset(8), target, progress=False)
    deferred = toolkit.to_zarr(
        jobs.rows(1, np.arange(5)), target, append_dim="time", compute=False, progress=False
    )
    assert isinstance(deferred, Delayed)
    assert _read(target).sizes["time"] == 8  # nothing reserved yet: no fill rows to read
    toolkit.append(jobs.rows(2, np.arange(10, 13)), target, "time", progress=False)
    report = deferred.compute()
    assert (report.placement["start"], report.placement["stop"]) == (11, 16)  # after job 2's
    ds = _read(target)
    assert ds.sizes["time"] == 8 + 3 + 5
    np.testing.assert_array_equal(ds.w.values[8:], [2000, 2001, 2002, 1000, 1001, 1002, 1003, 1004])
    np.testing.assert_array_equal(ds.time.values[8:], [10, 11, 12, 0, 1, 2, 3, 4])
    assert not np.isnan(ds.v.values).any()
    assert deferred.compute().placement["landed"]  # a job: computed again, it lands once
    assert _read(target).sizes["time"] == 16


def test_a_deferred_append_of_bad_data_is_refused_when_called_store_untouched(tmp_path):
    from conftest import snapshot

    target = tmp_path / "bad.zarr"
    toolkit.to_zarr(jobs.base_dataset(8), str(target), progress=False)
    before = snapshot(target)
    without_w = jobs.rows(1, np.arange(4)).drop_vars("w")
    with pytest.raises(AppendError, match=r"leaves out \['w'\]"):
        toolkit.to_zarr(without_w, str(target), append_dim="time", compute=False, progress=False)
    assert snapshot(target) == before


def test_a_deferred_partition_overwrite_changes_nothing_until_computed(tmp_path):
    from conftest import snapshot

    target = tmp_path / "p.zarr"
    toolkit.to_zarr(jobs.day_rows(-1, ["2024-01-01", "2024-01-02"]), str(target), progress=False)
    before = snapshot(target)
    short = jobs.day_rows(1, ["2024-01-01"]).isel(time=slice(0, 20))
    with pytest.raises(toolkit.errors.PartitionError, match="24 rows in the store"):
        toolkit.to_zarr(
            short, str(target), mode="overwrite-partitions", partition="day", compute=False
        )
    new = jobs.day_rows(3, ["2024-01-02", "2024-01-03"])
    deferred = toolkit.to_zarr(
        new, str(target), mode="overwrite-partitions", partition="day", compute=False
    )
    assert snapshot(target) == before
    deferred.compute()
    ds = _read(target)
    assert ds.sizes["time"] == 3 * jobs.DAY
    np.testing.assert_array_equal(ds.v.values[: jobs.DAY], -1)
    np.testing.assert_array_equal(ds.v.values[jobs.DAY :], 3)


# -- the hostile run of the plan-once change --------------------------------------------


@pytest.mark.parametrize(
    ("values", "new"),
    [
        (np.zeros(2, "i8"), np.zeros(1, "i8")),  # the shared edge unit stays all fill value
        (np.ones(4), np.full(1, np.nan)),  # a new edge unit of fill values only
        (np.array(["", ""]), np.array([""])),  # strings: the same path before the change
    ],
)
def test_an_append_whose_edge_unit_is_all_fill_value_lands(tmp_path, values, new):
    """An in-memory coordinate off the index, at its fill value: its shared unit is written.

    zarr deletes a chunk that became all fill value; the metadata round refused to
    delete a shared unit unconditionally (RuntimeError) and the append failed.
    """
    target = str(tmp_path / "fill.zarr")
    n = len(values)

    def rows(t: np.ndarray, lead: np.ndarray) -> xr.Dataset:
        return xr.Dataset({"v": ("time", t * 1.0)}, coords={"time": t, "lead": ("time", lead)})

    toolkit.to_zarr(rows(np.arange(n), values), target, encoding={"lead": {"chunks": (4,)}})
    toolkit.to_zarr(rows(np.arange(n, n + 1), new), target, append_dim="time", progress=False)
    back = _read(target)
    np.testing.assert_array_equal(back.time.values, np.arange(n + 1))
    np.testing.assert_array_equal(back.lead.values, np.concatenate([values, new]))


def test_deferred_appends_that_take_every_thread_of_a_cluster_land(tmp_path):
    """Two deferred appends on one worker thread: each job's task steps aside for its graph."""
    from distributed import Client, LocalCluster

    target = str(tmp_path / "cluster.zarr")
    toolkit.to_zarr(jobs.base_dataset(4), target, progress=False)
    deferred = [
        toolkit.to_zarr(
            jobs.rows(j, j * 1000 + np.arange(3)), target, append_dim="time", compute=False
        )
        for j in (1, 2)
    ]
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        reports = [f.result(timeout=120) for f in client.compute(deferred)]
    ds = _read(target)
    assert ds.sizes["time"] == 4 + 6
    for j, report in zip((1, 2), reports, strict=True):
        a, b = report.placement["start"], report.placement["stop"]
        np.testing.assert_array_equal(ds.w.values[a:b], j * 1000 + np.arange(3))


def test_strings_of_another_width_are_refused_before_anything_is_written(tmp_path):
    """xarray's rule for appends, now in the plan: the store byte-identical, alone or batched."""
    from conftest import snapshot

    target = tmp_path / "labels.zarr"

    def rows(t: np.ndarray, width: int) -> xr.Dataset:
        labels = np.array([f"L{i:0{width}d}" for i in t])
        return jobs.rows(1, t).assign_coords(label=("time", labels))

    toolkit.to_zarr(rows(np.arange(4), 3), str(target), progress=False)
    before = snapshot(target)
    for compute in (True, False):
        with pytest.raises(AppendError, match="Mismatched dtypes for variable 'label'"):
            toolkit.to_zarr(
                rows(np.arange(4, 6), 4), str(target), append_dim="time", compute=compute
            )
    assert snapshot(target) == before
    # Threads batched together: the bad call fails alone, the others land.
    calls = {j: rows(np.arange(10 * j, 10 * j + 2), 3 if j != 2 else 4) for j in (1, 2, 3)}
    with ThreadPoolExecutor(3) as pool:
        futures = {
            j: pool.submit(toolkit.append, ds, str(target), "time", progress=False)
            for j, ds in calls.items()
        }
    with pytest.raises(AppendError, match="Mismatched dtypes"):
        futures[2].result()
    assert futures[1].result() and futures[3].result()
    assert sorted(_read(target).time.values.tolist()) == [0, 1, 2, 3, 10, 11, 30, 31]


def test_an_append_refuses_what_it_would_not_write_store_untouched(tmp_path):
    """Variables without the dimension: xarray overwrites or creates them; appends refuse."""
    from conftest import snapshot

    target = tmp_path / "static.zarr"
    static = xr.DataArray([1.0, 2.0, np.nan] + [0.0] * (jobs.NX - 3), dims="x")
    toolkit.to_zarr(jobs.base_dataset(4).assign(static=static), str(target), progress=False)
    before = snapshot(target)
    new_rows = jobs.rows(1, np.arange(4, 6))
    with pytest.raises(AppendError, match="variable 'static' differs from the stored one"):
        toolkit.append(new_rows.assign(static=static * 2), str(target), "time", progress=False)
    with pytest.raises(AppendError, match="'extra' is not in the store and has no 'time'"):
        toolkit.append(
            new_rows.assign(static=static, extra=static), str(target), "time", progress=False
        )
    assert snapshot(target) == before
    # The same values (NaN included) are no change: the rows land.
    toolkit.append(new_rows.assign(static=static), str(target), "time", progress=False)
    assert _read(target).sizes["time"] == 6
