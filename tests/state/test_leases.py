"""Conditional writes, leases and lock sets, on every store that coordinates."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from zarr.storage import LocalStore

from toolkit.errors import CoordinationError, LeaseLostError, LeaseTimeoutError
from toolkit.state.leases import Coordinator, Lease, LockSet, supports_atomic_create


def test_exactly_one_of_many_racing_creates_wins(coord):
    with ThreadPoolExecutor(16) as pool:
        won = list(pool.map(lambda i: coord.create("race.json", {"who": i}), range(16)))
    assert sum(won) == 1
    assert coord.get("race.json") == {"who": won.index(True)}


def test_replace_lands_only_at_the_version_read(coord):
    assert coord.create("doc.json", {"n": 0})
    _, v0 = coord.get_versioned("doc.json")
    assert v0 is not None
    v1 = coord.replace("doc.json", {"n": 1}, v0)
    assert v1 is not None and v1 != v0
    assert coord.replace("doc.json", {"n": 2}, v0) is None  # stale: refused
    assert coord.get("doc.json") == {"n": 1}
    assert coord.replace("gone.json", {"n": 1}, v0) is None  # absent: refused


def test_racing_replacers_of_one_version_exactly_one_wins(coord):
    coord.create("ctr.json", {"n": 0})

    def bump(who: int) -> int:
        for _ in range(200):
            doc, v = coord.get_versioned("ctr.json")
            # Each writer's document names it, as toolkit's own do (see _S3fsConditional._own).
            if coord.replace("ctr.json", {"n": doc["n"] + 1, "by": who}, v) is not None:
                return 1
        return 0

    with ThreadPoolExecutor(8) as pool:
        done = sum(pool.map(bump, range(8)))
    assert coord.get("ctr.json")["n"] == done == 8  # no increment lost


def test_a_lease_excludes_others_until_released(coord):
    a = Lease(coord, "l", "a", ttl=30.0)
    b = Lease(coord, "l", "b", ttl=30.0)
    assert a.try_acquire()
    assert a.generation == 1
    assert not b.try_acquire()
    a.release()
    assert b.try_acquire()  # released: free at once
    assert b.generation == 2  # the fencing token grows with every holder
    assert not a.renew()  # a let go: it holds nothing


def test_expiry_is_judged_by_the_observers_own_clock(coord):
    """A silent holder loses the lease after ttl seconds of the *observer's* watching.

    The lease document carries wall-clock times for people; a host whose clock
    is an hour ahead must not take a live lease over, so only an observer's
    monotonic time since it first saw the version counts.
    """
    holder = Lease(coord, "x", "holder", ttl=0.5)
    assert holder.try_acquire()
    other = Lease(coord, "x", "other", ttl=0.5)
    assert not other.try_acquire()  # first look: the clock starts now
    time.sleep(0.2)
    assert holder.renew()  # a new version: the observer starts again
    assert not other.try_acquire()
    time.sleep(0.6)  # no renewal for longer than ttl, by the observer's clock
    assert other.try_acquire()
    assert not holder.renew()  # the holder learns it lost the lease
    with pytest.raises(LeaseLostError):
        holder.check()


def test_an_observer_that_never_watched_does_not_take_a_stale_looking_lease(coord, monkeypatch):
    holder = Lease(coord, "y", "holder", ttl=30)
    assert holder.try_acquire()
    # Another host whose wall clock runs days ahead: irrelevant.
    monkeypatch.setattr(time, "time", lambda: 10**10)
    assert not Lease(coord, "y", "other", ttl=30).try_acquire()


def test_a_holder_stops_trusting_its_lease_before_others_may_take_it(coord):
    lease = Lease(coord, "z", "me", ttl=0.4)
    assert lease.try_acquire()
    assert lease.held
    time.sleep(0.45)
    assert not lease.held  # its own clock: ttl minus a margin after its last renewal


def test_lockset_times_out_naming_the_holder(coord):
    with (
        LockSet(coord, ["x"], "holder", ttl=30).hold(),
        pytest.raises(LeaseTimeoutError, match="holder"),
    ):
        Lease(coord, "x", "other").acquire(timeout=0.3)


def test_stores_without_conditional_writes_are_refused():
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url("memory://nothing-atomic")
    assert not supports_atomic_create(store)
    with pytest.raises(CoordinationError, match="atomic conditional write"):
        Coordinator(store)


def test_lease_holder_renews_while_holding(tmp_path):
    coord = Coordinator(LocalStore(str(tmp_path / "r")))
    locks = LockSet(coord, ["slow"], "me", ttl=0.6)
    with locks.hold():
        watcher = Lease(coord, "slow", "other", ttl=0.6)
        for _ in range(5):
            time.sleep(0.25)  # longer than the ttl in all: renewed in the background
            assert not watcher.try_acquire()
    assert not locks.lost
    assert locks._thread is not None and not locks._thread.is_alive()  # the renewer stopped


def test_a_lost_lease_is_reported_to_its_holder(tmp_path):
    coord = Coordinator(LocalStore(str(tmp_path / "r")))
    lost: list[str] = []
    locks = LockSet(coord, ["taken"], "me", ttl=0.6, on_lost=lost.append)
    with locks.hold():
        # Another actor replaces the document (as one would after watching it expire).
        doc, version = coord.get_versioned("leases/taken.json")
        assert coord.replace("leases/taken.json", {**doc, "run": "thief"}, version)
        assert locks.lost_event.wait(2.0)
    assert lost == ["taken"] and locks.lost == ["taken"]
    with pytest.raises(LeaseLostError):
        locks.check()
