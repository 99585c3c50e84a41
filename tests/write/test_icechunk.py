"""Many jobs, one Icechunk repository: all-or-nothing jobs, batched commits, readers see snapshots.

Jobs are separate processes; a reader polls the branch head while they run and
must never see a partial job.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import multiwrite_jobs as jobs
import numpy as np
import pytest
import xarray as xr

pytest.importorskip("icechunk")

from toolkit.errors import CommitConflictError
from toolkit.write.icechunk import Repository, to_icechunk

pytestmark = pytest.mark.timeout(300)
CTX = mp.get_context("spawn")
ENC = {
    "v": {"chunks": (10, jobs.NX)},
    "w": {"chunks": (10,)},
    "time": {"chunks": (10,)},
    "day": {"chunks": (10,)},
}


def _whole(ds: xr.Dataset, owners: dict[str, set[int]]) -> dict[str, int]:
    """Every partition carries one job's values, and no row is without its data and label.

    Rows reach the branch with their data in one commit: a reader never sees
    reserved rows (no label, fill values).
    """
    days = ds.day.values.astype(str)
    v = ds.v.values
    out = {}
    assert "" not in set(days), "rows without their data reached the branch"
    assert not np.isnan(v).any(), "fill values reached the branch"
    for day in np.unique(days):
        rows = days == day
        vals = np.unique(v[rows])
        assert len(vals) == 1, f"partition {day} is torn: {vals}"
        assert int(vals[0]) in owners[day], (day, vals)
        assert rows.sum() == jobs.DAY
        out[day] = int(vals[0])
    return out


class Poller(threading.Thread):
    """Reads the branch head over and over, checking every snapshot it sees."""

    def __init__(self, target: str, opts: dict | None, owners: dict[str, set[int]]):
        super().__init__(daemon=True)
        self.repo = Repository(target, opts)
        self.owners, self.stop, self.seen, self.errors = owners, threading.Event(), set(), []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                session = self.repo.repo.readonly_session(branch="main")
                ds = xr.open_zarr(session.store, consolidated=False).load()
                _whole(ds, self.owners)
                self.seen.add(session.snapshot_id)
            except AssertionError as e:
                self.errors.append(str(e))
            time.sleep(0.05)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_partition_overwriters_and_appenders_with_a_polling_reader(kind, tmp_path, s3):
    target, opts = jobs.target_for(kind, tmp_path, s3, "parts")
    first = [f"2024-01-{d:02d}" for d in range(1, 6)]
    to_icechunk(jobs.day_rows(-1, first), target, storage_options=opts, encoding=ENC)
    plan = {
        1: ["2024-01-01", "2024-01-02", "2024-01-03"],
        2: ["2024-01-02", "2024-01-03", "2024-01-04"],
        3: ["2024-01-03", "2024-01-05"],
        4: ["2024-01-03", "2024-01-04", "2024-01-07"],
    }
    appends = {5: ["2024-02-01", "2024-02-02"], 6: ["2024-03-01"]}
    owners: dict[str, set[int]] = {d: {-1} for d in first}
    for j, days in {**plan, **appends}.items():
        for d in days:
            owners.setdefault(d, set()).add(j)
    poller = Poller(target, opts, owners)
    poller.start()
    try:
        with CTX.Pool(6) as pool:
            rs = [
                pool.apply_async(jobs.ice_days_job, (target, j, d, opts)) for j, d in plan.items()
            ]
            rs += [
                pool.apply_async(jobs.ice_days_job, (target, j, d, opts, "append"))
                for j, d in appends.items()
            ]
            placements = [r.get(timeout=240) for r in rs]
        # The poller reads the last commit too before it stops (on a loaded machine all
        # of them could land between two of its reads: it then saw only the first).
        head = Repository(target, opts).repo.readonly_session(branch="main").snapshot_id
        deadline = time.monotonic() + 120
        while head not in poller.seen and poller.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        poller.stop.set()
        poller.join(30)
    assert not poller.errors, poller.errors[:3]
    assert len(poller.seen) >= 2  # it did see the data change
    repo = Repository(target, opts)
    ds = xr.open_zarr(repo.readonly(), consolidated=False).load()
    winners = _whole(ds, owners)
    assert sorted(winners) == sorted(owners)
    assert all(winners[d] != -1 for days in plan.values() for d in days)
    assert winners["2024-02-01"] == 5 and winners["2024-03-01"] == 6
    # every job's snapshot is in the branch, and commits were batched or at worst one per job
    history = repo.history()
    assert all(p["snapshot"] in history for p in placements)
    assert len(history) <= 2 + 2 * len(placements)


def test_region_writers_sharing_edge_units_conflict_and_retry(tmp_path):
    """8 jobs write 7-row regions into 10-row chunks: conflicts are detected and retried."""
    target = str(tmp_path / "region")
    n = 8 * 7
    to_icechunk(jobs.base_dataset(n)[["v"]], target, encoding={"v": {"chunks": (10, jobs.NX)}})
    with CTX.Pool(8) as pool:
        placements = pool.starmap(
            jobs.ice_region_job, [(target, j, 7 * j, 7 * (j + 1), None) for j in range(8)]
        )
    v = xr.open_zarr(Repository(target).readonly(), consolidated=False).v.values
    assert (v == np.repeat(np.arange(8), 7)[:, None]).all(), np.unique(v[:, 0])
    assert sum(p["attempts"] for p in placements) >= 8


def test_conflicts_past_the_retry_budget_raise_naming_chunks(tmp_path):
    target = str(tmp_path / "budget")
    to_icechunk(jobs.base_dataset(20)[["v"]], target, encoding={"v": {"chunks": (10, jobs.NX)}})
    repo = Repository(target)
    # Another job's commit lands on the same chunk after every fork: simulate by
    # recording a foreign history entry before each decision.
    real = repo._decide

    def hostile(state, requests):
        state = {
            **state,
            "history": [*state.get("history", []), {"snapshot": "X", "touched": {"v": ["0.0"]}}],
        }
        return real(state, requests)

    repo.log.decide = hostile
    ds = xr.Dataset({"v": (("time", "x"), np.ones((3, jobs.NX)))})
    with pytest.raises(CommitConflictError, match=r"v: chunks 0\.0") as err:
        to_icechunk(ds, repo, region={"time": slice(2, 5)}, retries=2)
    assert err.value.conflicts == {"v": ["0.0"]}
    v = xr.open_zarr(repo.readonly(), consolidated=False).v.values
    assert (v == -1).all()  # nothing of the job was committed


def test_killed_job_leaves_nothing_and_blocks_nobody(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_LEASE_TTL", "4")
    target = str(tmp_path / "kill")
    days = ["2024-01-01", "2024-01-02"]
    to_icechunk(jobs.day_rows(-1, days), target, encoding=ENC)
    before = Repository(target).history()
    jobs.kill_midway("slow_ice_partition_job", target, 7, days, ready=str(tmp_path / "ready"))
    repo = Repository(target)
    assert repo.history() == before  # nothing of the killed job is visible
    ds = xr.open_zarr(repo.readonly(), consolidated=False).load()
    assert _whole(ds, {d: {-1} for d in days}) == dict.fromkeys(days, -1)
    placement = jobs.ice_days_job(target, 8, days)
    ds = xr.open_zarr(repo.readonly(), consolidated=False).load()
    assert _whole(ds, {d: {8} for d in days}) == dict.fromkeys(days, 8)
    assert placement["snapshot"] in repo.history()


def test_tasks_on_a_cluster_write_forks_merged_in_a_tree(tmp_path, cluster_client):
    """On a LocalCluster each task writes its worker's copy of the fork; the copies come back
    through a tree of merges, and the job's one commit holds every chunk."""
    target = str(tmp_path / "cluster")
    days = [f"2024-01-{d:02d}" for d in range(1, 4)]
    enc = {
        "v": {"chunks": (2, jobs.NX)},
        "w": {"chunks": (2,)},
        "time": {"chunks": (2,)},
        "day": {"chunks": (2,)},
    }
    to_icechunk(jobs.day_rows(-1, days), target, encoding=enc)
    ds = jobs.day_rows(3, days).chunk({"time": 2})  # 36 tasks per variable: a 2-level tree
    report = to_icechunk(ds, target, partition="day")
    assert report.forks  # the workers' forks came back
    graph_keys = {
        k
        for k in cluster_client.run_on_scheduler(
            lambda dask_scheduler: [str(t) for t in dask_scheduler.task_prefixes]
        )
    }
    assert "toolkit-merge" in graph_keys
    back = xr.open_zarr(Repository(target).readonly(), consolidated=False).load()
    assert _whole(back, {d: {3} for d in days}) == dict.fromkeys(days, 3)
    assert report.placement["snapshot"] in Repository(target).history()
