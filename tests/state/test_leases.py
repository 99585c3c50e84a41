"""Atomic creates, leases and lock sets, on every store that coordinates."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from zarr.storage import LocalStore

from toolkit.errors import CoordinationError, LeaseTimeoutError
from toolkit.state.leases import Coordinator, Lease, LockSet, supports_atomic_create


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
