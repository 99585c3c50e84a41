"""Atomic creates, leases and the group-committed log, on every store that coordinates."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from zarr.storage import LocalStore, MemoryStore

from toolkit.errors import CoordinationError, LeaseTimeoutError
from toolkit.state.commitlog import Batch, CommitLog
from toolkit.state.leases import Coordinator, Lease, LockSet, supports_atomic_create


@pytest.fixture(params=["local", "memory", "s3"])
def coord(request, tmp_path, s3):
    if request.param == "local":
        return Coordinator(LocalStore(str(tmp_path / "c")))
    if request.param == "memory":
        return Coordinator(MemoryStore())
    from zarr.storage import FsspecStore

    bucket = f"coord-{time.time_ns() % 10**9}"
    s3.create_bucket(bucket)
    return Coordinator(
        FsspecStore.from_url(f"s3://{bucket}/x", storage_options=s3.storage_options())
    )


def test_exactly_one_of_many_racing_creates_wins(coord):
    with ThreadPoolExecutor(16) as pool:
        won = list(pool.map(lambda i: coord.create("race.json", {"who": i}), range(16)))
    assert sum(won) == 1
    assert coord.get("race.json") == {"who": won.index(True)}


def test_a_lease_excludes_others_until_released_or_expired(coord):
    a = Lease(coord, "l", "a", ttl=1.0)
    b = Lease(coord, "l", "b", ttl=1.0)
    assert a.try_acquire()
    assert not b.try_acquire()
    a.release()
    assert b.try_acquire()  # released: free
    time.sleep(1.1)  # b's holder went silent
    assert a.try_acquire()  # expired: taken over
    assert not b.renew()  # b learns it lost the lease


def test_lockset_times_out_naming_the_holder(coord):
    with (
        LockSet(coord, ["x"], "holder", ttl=30).hold(),
        pytest.raises(LeaseTimeoutError, match="holder"),
    ):
        Lease(coord, "x", "other").acquire(timeout=0.3)


def test_group_commit_answers_many_jobs_with_few_entries(coord):
    def decide(state, requests):
        n = state.get("n", 0)
        answers = {}
        for r in requests:
            answers[r["job"]] = {"start": n}
            n += r["k"]
        return Batch({"n": n}, answers)

    with ThreadPoolExecutor(12) as pool:
        out = list(pool.map(lambda i: CommitLog(coord, decide).submit({"k": 2}), range(12)))
    starts = sorted(a["start"] for a in out)
    assert starts == list(range(0, 24, 2))  # every job placed once, no overlap
    entries = coord.list("log/")
    assert len(entries) < 12


def test_an_effect_that_fails_answers_every_job_with_the_error(coord):
    def decide(state, requests):
        def effect():
            raise OSError("store said no")

        return Batch({"n": 1}, {r["job"]: {} for r in requests}, effect)

    answer = CommitLog(coord, decide).submit({})
    assert "store said no" in answer["error"]


def test_stores_without_atomic_creates_are_refused():
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url("memory://nothing-atomic")
    assert not supports_atomic_create(store)
    with pytest.raises(CoordinationError, match="atomic conditional write"):
        Coordinator(store)


def test_lease_holder_renews_while_holding(tmp_path):
    coord = Coordinator(LocalStore(str(tmp_path / "r")))
    locks = LockSet(coord, ["slow"], "me", ttl=0.6)
    with locks.hold():
        time.sleep(1.0)  # longer than the ttl: renewed in the background
        assert not Lease(coord, "slow", "other", ttl=0.6).try_acquire()
    assert not locks.lost
    assert locks._thread is not None and not locks._thread.is_alive()  # the renewer stopped
