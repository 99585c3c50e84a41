"""Conformance suites for the stores jobs coordinate through, as zarr ships ``StoreTests``.

Concurrent jobs coordinate through conditional writes in the dataset's own store
(:mod:`toolkit.io.conditional`), and on them rest the leases
(:mod:`toolkit.coordination.leases`), the creation claim (:mod:`toolkit.coordination.claim`) and
the commit log (:mod:`toolkit.coordination.commitlog`). Each suite here is a class of
pytest tests of that behaviour on one backend, written once; a backend's tests
subclass it and say where a fresh store is:

- :class:`ConditionalStoreTests`: get, create-if-absent, replace-if-version, put,
  delete, list; exactly one winner of racing creates and replaces; a stale version
  refused; an answer lost after the write landed counted as done.
- :class:`LeaseTests`: exclusion and release, the generation (fencing token), expiry
  judged by the observer's own clock, a holder that stops trusting its lease before
  others may take it, a holder taken over cannot renew, release or check, dead
  holders, lock sets (order, time-outs naming the holder, renewal, loss reported).
- :class:`CreationClaimTests`: exactly one creator, release, waiting for a creator,
  the claim under a group and out of its contents, ``clear_group``.
- :class:`CommitLogTests`: concurrent requests decided exactly once in one order
  (directly and by group commit), few entries for many jobs, effects, a lagging
  head copy, a dead or silent committer.

A subclass provides the fixture ``store_factory``: a callable returning a zarr
``Store`` at this test's location, fresh and empty for each test. Each call is
another job's handle on that location (a new store object where the backend has
one; the same object for an in-memory store). It may override ``policy``, the
:class:`~toolkit.Throttle` whose retry policy coordination requests follow
(default: None, the defaults)::

    import pytest
    from zarr.storage import LocalStore

    from toolkit.testing.conformance import LeaseTests


    class TestLeasesOnLocalFiles(LeaseTests):
        @pytest.fixture
        def store_factory(self, tmp_path):
            return lambda: LocalStore(str(tmp_path / "store"))

Time-dependent cases do not sleep: they replace the monotonic clock of
:mod:`toolkit.coordination.leases` with a :class:`ManualClock` the test moves (the
``clock`` fixture). Waits that remain (a background renewer, another thread) are
bounded by wide limits that only a hang reaches.

This module imports pytest (``toolkit[test]``): tests import it;
``toolkit.testing`` itself does not, nor does anything in the package.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import socket
import subprocess
import sys
import threading
import time as _time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import xarray as xr
from zarr.abc.store import Store
from zarr.buffer.cpu import Buffer

import toolkit
from toolkit.coordination import leases as _leases
from toolkit.coordination.claim import CreationClaim, clear_group, group_contents
from toolkit.coordination.commitlog import HEAD, Batch, CommitLog
from toolkit.coordination.leases import Coordinator, Lease, LockSet, numbered
from toolkit.errors import ExistingStoreError, LeaseLostError, LeaseTimeoutError
from toolkit.io.conditional import ConditionalStore, conditional_store, supports_conditional
from toolkit.io.throttle import Throttle
from toolkit.upstream import sync

__all__ = [
    "CommitLogTests",
    "ConditionalStoreTests",
    "CoordinationTests",
    "CreationClaimTests",
    "LeaseTests",
    "ManualClock",
]

StoreFactory = Callable[[], Store]
CoordinatorFactory = Callable[..., Coordinator]

#: A quick retry policy for the cases that lose answers on purpose.
_QUICK = Throttle(backoff_base=0.01, backoff_max=0.05)
#: Bound on waits for other threads: reached only by a hang.
_HANG = 120.0


class ManualClock:
    """A clock that moves only when told: the clocks of :mod:`toolkit.coordination.leases`.

    ``monotonic()`` reads it; ``advance(s)`` and ``sleep(s)`` move it on by ``s``
    seconds (``sleep`` also yields the thread), so that a lease waiting out a
    time-out does not wait in real time. The wall clock the lease documents show
    (``at``) runs ahead of the real one by as much. Everything else is the
    :mod:`time` module's. Threads share it.
    """

    def __init__(self, start: float = 1_000.0) -> None:
        self._start = self._now = start
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        """The clock's reading."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock on."""
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Move the clock on by ``seconds``, without waiting for them."""
        self.advance(max(0.0, seconds))
        _time.sleep(0)

    def now(self, tz: dt.tzinfo | None = None) -> dt.datetime:
        """The wall-clock time: the real one, plus how far the clock was moved."""
        return dt.datetime.now(tz) + dt.timedelta(seconds=self.monotonic() - self._start)

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


class _WallClock:
    """Stands in for :mod:`datetime` in :mod:`toolkit.coordination.leases`: a host's wall clock."""

    UTC = dt.UTC

    def __init__(self, now: Callable[[dt.tzinfo | None], dt.datetime]) -> None:
        class _Datetime:
            @staticmethod
            def now(tz: dt.tzinfo | None = None) -> dt.datetime:
                return now(tz)

        self.datetime = _Datetime

    @classmethod
    def in_year(cls, year: int) -> _WallClock:
        """A wall clock that says 1 January of ``year``."""
        return cls(lambda tz: dt.datetime(year, 1, 1, tzinfo=tz))


def _dead_pid() -> int:
    """The pid of a process of this host that has exited (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lease_doc(name: str, *, pid: int, ttl: float, generation: int) -> dict[str, Any]:
    """A held lease document as another holder of this host wrote it."""
    return {
        "lease": name,
        "owner": "someone-else",
        "run": "another-run",
        "host": socket.gethostname(),
        "pid": pid,
        "state": "held",
        "generation": generation,
        "ttl": ttl,
        "at": "2001-01-01T00:00:00.000+00:00",
    }


def _all_keys(store: Store, prefix: str = "") -> list[str]:
    async def listed() -> list[str]:
        return sorted([k async for k in store.list_prefix(prefix)])

    return sync(listed())


def _read(coord: Coordinator, key: str) -> dict[str, Any]:
    """The document at ``key``, which must be there."""
    doc = coord.get(key)
    assert doc is not None, f"{key} is absent"
    return doc


def _in_threads[T](fn: Callable[[int], T], n: int) -> list[T]:
    """``fn(0) .. fn(n - 1)``, all at once in ``n`` threads."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(fn, range(n)))


def _counter(state: dict[str, Any], requests: list[dict[str, Any]]) -> Batch:
    """Each request reserves ``k`` places after those reserved before."""
    n = state.get("n", 0)
    answers = {}
    for r in requests:
        answers[r["job"]] = {"start": n}
        n += r["k"]
    return Batch({"n": n}, answers)


def _entry_key(seq: int) -> str:
    return f"log/{seq:012d}.json"


# --------------------------------------------------------------------------- the base


class CoordinationTests:
    """What every suite asks of a backend, and the fixtures the suites share."""

    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        """A callable giving a handle on this test's store, fresh and empty for the test.

        Each call is another job's handle on the same location. Subclasses provide it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must provide the fixture store_factory: a callable "
            "returning a zarr Store at a location fresh for each test"
        )

    @pytest.fixture
    def policy(self) -> Throttle | None:
        """The retry policy of coordination requests (None: :class:`~toolkit.Throttle`'s)."""
        return None

    @pytest.fixture
    def coordinator(
        self, store_factory: StoreFactory, policy: Throttle | None
    ) -> CoordinatorFactory:
        """A callable giving another job's :class:`Coordinator` (``group`` optional)."""

        def make(group: str | None = None) -> Coordinator:
            return Coordinator(store_factory(), group, policy)

        return make

    @pytest.fixture
    def coord(self, coordinator: CoordinatorFactory) -> Coordinator:
        """One job's :class:`Coordinator` on the store's root group."""
        return coordinator()

    @pytest.fixture
    def clock(self, monkeypatch: pytest.MonkeyPatch) -> ManualClock:
        """The clocks of every lease in the test (monotonic and wall), moved by the test."""
        clock = ManualClock()
        monkeypatch.setattr(_leases, "time", clock)
        monkeypatch.setattr(_leases, "dt", _WallClock(clock.now))
        return clock


# --------------------------------------------------------------------------- conditional writes


class ConditionalStoreTests(CoordinationTests):
    """Versioned reads and conditional writes (:mod:`toolkit.io.conditional`) on one backend."""

    @pytest.fixture
    def cas(self, store_factory: StoreFactory, policy: Throttle | None) -> ConditionalStore:
        """One job's conditional operations on the store."""
        return conditional_store(store_factory(), policy)

    def test_the_store_writes_conditionally(self, store_factory: StoreFactory) -> None:
        """The backend is one toolkit coordinates through."""
        assert supports_conditional(store_factory())

    def test_create_writes_only_an_absent_key(self, cas: ConditionalStore) -> None:
        """Create-if-absent: the version get reports, and a second create refused."""
        assert sync(cas.get("a/doc.json")) is None
        v = sync(cas.create("a/doc.json", b"first"))
        assert v is not None
        got = sync(cas.get("a/doc.json"))
        assert got is not None and got.data == b"first" and got.version == v
        assert sync(cas.create("a/doc.json", b"second")) is None
        again = sync(cas.get("a/doc.json"))
        assert again is not None and again.data == b"first" and again.version == v

    def test_exactly_one_of_many_racing_creates_wins(self, coordinator: CoordinatorFactory) -> None:
        """Sixteen jobs create one key at once: one wins, and the key holds its document."""
        jobs = [coordinator() for _ in range(16)]
        won = _in_threads(lambda i: jobs[i].create("race.json", {"who": i}), 16)
        assert sum(won) == 1
        assert jobs[0].get("race.json") == {"who": won.index(True)}

    def test_replace_lands_only_at_the_version_read(self, coord: Coordinator) -> None:
        """Replace-if-version: a stale or absent version is refused, the document unchanged."""
        assert coord.create("doc.json", {"n": 0})
        _, v0 = coord.get_versioned("doc.json")
        assert v0 is not None
        v1 = coord.replace("doc.json", {"n": 1}, v0)
        assert v1 is not None and v1 != v0
        assert coord.get_versioned("doc.json") == ({"n": 1}, v1)  # the version it returned
        assert coord.replace("doc.json", {"n": 2}, v0) is None  # stale: refused
        assert coord.get("doc.json") == {"n": 1}
        assert coord.replace("gone.json", {"n": 1}, v0) is None  # absent: refused
        assert coord.get("gone.json") is None

    def test_exactly_one_of_many_racing_replacers_of_one_version_wins(
        self, store_factory: StoreFactory, policy: Throttle | None
    ) -> None:
        """Eight jobs replace the version they all read: one lands, the others are refused."""
        jobs = [conditional_store(store_factory(), policy) for _ in range(8)]
        v0 = sync(jobs[0].create("ctr.json", b"0"))
        assert v0 is not None
        out = _in_threads(lambda i: sync(jobs[i].replace("ctr.json", f"by {i}".encode(), v0)), 8)
        winners = [i for i, v in enumerate(out) if v is not None]
        assert len(winners) == 1
        got = sync(jobs[0].get("ctr.json"))
        assert got is not None
        assert got.data == f"by {winners[0]}".encode() and got.version == out[winners[0]]

    def test_racing_read_modify_writes_lose_no_update(
        self, coordinator: CoordinatorFactory
    ) -> None:
        """Eight jobs increment one counter by compare-and-swap: no increment is lost."""
        coordinator().create("ctr.json", {"n": 0})

        def bump(who: int) -> int:
            coord = coordinator()
            for _ in range(200):
                doc, v = coord.get_versioned("ctr.json")
                assert doc is not None and v is not None
                # Each writer's document names it, as toolkit's own do (see _S3fsConditional._own).
                if coord.replace("ctr.json", {"n": doc["n"] + 1, "by": who}, v) is not None:
                    return 1
            return 0

        done = sum(_in_threads(bump, 8))
        assert _read(coordinator(), "ctr.json")["n"] == done == 8

    def test_put_and_delete_are_unconditional(self, cas: ConditionalStore) -> None:
        """Put overwrites (a new version: the old one is stale); delete is idempotent."""
        v0 = sync(cas.create("p.json", b"zero"))
        assert v0 is not None
        sync(cas.put("p.json", b"one"))
        got = sync(cas.get("p.json"))
        assert got is not None and got.data == b"one" and got.version != v0
        assert sync(cas.replace("p.json", b"two", v0)) is None  # stale after the put
        sync(cas.delete("p.json"))
        assert sync(cas.get("p.json")) is None
        sync(cas.delete("p.json"))  # absent: no error
        assert sync(cas.get("p.json")) is None
        assert sync(cas.replace("p.json", b"three", got.version)) is None  # gone: refused
        assert sync(cas.create("p.json", b"four")) is not None  # absent again: created
        again = sync(cas.get("p.json"))
        assert again is not None and again.data == b"four"

    def test_list_is_sorted_and_leaves_out_temporary_files(self, cas: ConditionalStore) -> None:
        """Keys under a prefix, sorted, relative to the root; ``*.partial`` left out."""
        for key in ("l/b.json", "l/a.json", "l/sub/c.json", "l/a.json.1234.partial", "m/x"):
            sync(cas.put(key, b"{}"))
        assert sync(cas.list("l/")) == ["l/a.json", "l/b.json", "l/sub/c.json"]
        assert sync(cas.list("nothing/")) == []

    @pytest.mark.parametrize("op", ["create", "replace"])
    def test_a_write_whose_answer_was_lost_counts_as_done(
        self, store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch, op: str
    ) -> None:
        """The write lands, its answer is lost: the retry finds it and reports it done."""
        cas = conditional_store(store_factory(), _QUICK)
        v0 = sync(cas.create("lost.json", b"old")) if op == "replace" else None
        real: Callable[..., Awaitable[str | None]] = getattr(cas, f"_{op}")
        calls: list[str | None] = []

        async def lossy(*args: Any) -> str | None:
            out = await real(*args)
            calls.append(out)
            if len(calls) == 1:
                raise ConnectionResetError(errno.ECONNRESET, "reset after it landed (injected)")
            return out

        monkeypatch.setattr(cas, f"_{op}", lossy)
        if op == "create":
            got = sync(cas.create("lost.json", b"mine"))
        else:
            assert v0 is not None
            got = sync(cas.replace("lost.json", b"mine", v0))
        now = sync(cas.get("lost.json"))
        assert now is not None and now.data == b"mine"
        assert got == now.version  # done, not "another job's"
        assert len(calls) == 1  # found by reading back, not written twice

    @pytest.mark.parametrize("op", ["create", "replace"])
    def test_a_lost_write_is_not_mistaken_for_another_jobs(
        self, store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch, op: str
    ) -> None:
        """The write never landed and another job's did meanwhile: refused, theirs kept."""
        cas = conditional_store(store_factory(), _QUICK)
        other = conditional_store(store_factory(), _QUICK)
        v0 = sync(cas.create("lost.json", b"old")) if op == "replace" else None
        real: Callable[..., Awaitable[str | None]] = getattr(cas, f"_{op}")
        calls: list[int] = []

        async def dropped(*args: Any) -> str | None:
            calls.append(1)
            if len(calls) == 1:  # another job writes; ours is dropped on the way
                theirs = (
                    await other.create("lost.json", b"theirs")
                    if v0 is None
                    else await other.replace("lost.json", b"theirs", v0)
                )
                assert theirs is not None
                raise ConnectionResetError(errno.ECONNRESET, "reset before it landed (injected)")
            return await real(*args)

        monkeypatch.setattr(cas, f"_{op}", dropped)
        if op == "create":
            got = sync(cas.create("lost.json", b"mine"))
        else:
            assert v0 is not None
            got = sync(cas.replace("lost.json", b"mine", v0))
        assert got is None
        now = sync(cas.get("lost.json"))
        assert now is not None and now.data == b"theirs"


# --------------------------------------------------------------------------- leases


class LeaseTests(CoordinationTests):
    """Leases and lock sets (:mod:`toolkit.coordination.leases`) on one backend."""

    def test_a_lease_excludes_others_until_released(self, coordinator: CoordinatorFactory) -> None:
        """One holder at a time; released, free at once; the generation grows."""
        a = Lease(coordinator(), "l", "a", ttl=30.0)
        b = Lease(coordinator(), "l", "b", ttl=30.0)
        assert a.try_acquire()
        assert a.generation == 1
        assert not b.try_acquire()
        a.release()
        assert _read(coordinator(), "leases/l.json")["state"] == "released"
        assert b.try_acquire()  # released: free at once
        assert b.generation == 2  # the fencing token grows with every holder
        assert not a.renew()  # a let go: it holds nothing
        doc = coordinator().get("leases/l.json")
        assert doc is not None
        assert (doc["owner"], doc["state"], doc["generation"]) == ("b", "held", 2)

    def test_observers_tell_free_held_expired_and_released(
        self, coordinator: CoordinatorFactory, clock: ManualClock
    ) -> None:
        """What an observer sees of a lease, by its own watching."""
        holder = Lease(coordinator(), "o", "me", ttl=10)
        other = Lease(coordinator(), "o", "you", ttl=10)
        assert other.observe().state == "free"
        assert holder.try_acquire()
        view = other.observe()
        assert view.state == "held" and not view.gone and "job me" in view.holder()
        clock.advance(10)  # unchanged for its whole ttl, as this observer watched it
        assert other.observe().state == "expired" and other.observe().gone
        assert holder.renew()  # renewed late: a new version is live again
        assert other.observe().state == "held"
        holder.release()
        assert other.observe().state == "released"

    def test_expiry_is_judged_by_the_observers_own_clock(
        self, coordinator: CoordinatorFactory, clock: ManualClock
    ) -> None:
        """A silent holder loses the lease after ttl seconds of the *observer's* watching.

        The lease document carries wall-clock times for people; a host whose clock
        is an hour ahead must not take a live lease over, so only an observer's
        monotonic time since it first saw the version counts.
        """
        holder = Lease(coordinator(), "x", "holder", ttl=10)
        assert holder.try_acquire()
        other = Lease(coordinator(), "x", "other", ttl=10)
        assert not other.try_acquire()  # first look: the clock starts now
        clock.advance(6)
        assert holder.renew()  # a new version...
        clock.advance(6)  # 12 s since the first look
        assert not other.try_acquire()  # ...seen now: the observer starts again
        clock.advance(9.9)
        assert not other.try_acquire()  # not yet the ttl since it saw this version
        clock.advance(0.1)  # no renewal for the ttl, by the observer's clock
        assert other.try_acquire()
        assert other.generation == 2
        assert not holder.renew()  # the holder learns it lost the lease
        with pytest.raises(LeaseLostError):
            holder.check()

    def test_an_observer_that_never_watched_does_not_take_a_stale_looking_lease(
        self, coordinator: CoordinatorFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Wall clocks decades apart: the document's times decide nothing."""
        holder = Lease(coordinator(), "y", "holder", ttl=30)
        monkeypatch.setattr(_leases, "dt", _WallClock.in_year(2001))  # the holder's clock: behind
        assert holder.try_acquire()
        assert _read(coordinator(), "leases/y.json")["at"].startswith("2001")
        monkeypatch.setattr(_leases, "dt", _WallClock.in_year(2286))  # another host's: far ahead
        assert not Lease(coordinator(), "y", "other", ttl=30).try_acquire()
        assert holder.renew()  # still the holder's

    def test_a_holder_stops_trusting_its_lease_before_others_may_take_it(
        self, coordinator: CoordinatorFactory, clock: ManualClock
    ) -> None:
        """The holder's own clock ends its trust a margin before any observer's may."""
        lease = Lease(coordinator(), "z", "me", ttl=10)
        other = Lease(coordinator(), "z", "other", ttl=10)
        assert lease.try_acquire()
        assert not other.try_acquire()  # watching from the moment it was taken
        assert lease.held
        clock.advance(7.9)
        assert lease.held  # within ttl minus the margin (2 s of 10)
        clock.advance(0.2)
        assert not lease.held  # its own clock: ttl minus a margin after its last renewal
        with pytest.raises(LeaseLostError):
            lease.check()
        assert not other.try_acquire()  # and nobody may take it over yet
        clock.advance(1.9)
        assert other.try_acquire()

    def test_a_holder_taken_over_is_fenced(
        self, coordinator: CoordinatorFactory, clock: ManualClock
    ) -> None:
        """Taken over: it cannot check, renew, release or write at its version."""
        coord = coordinator()
        old = Lease(coordinator(), "f", "old", ttl=10)
        assert old.try_acquire()
        _, old_version = coord.get_versioned("leases/f.json")
        assert old_version is not None
        new = Lease(coordinator(), "f", "new", ttl=10)
        assert not new.try_acquire()
        clock.advance(10)  # the old holder fell silent (stalled, not dead)
        assert new.try_acquire() and new.generation == 2
        with pytest.raises(LeaseLostError, match="old"):
            old.check()
        old.release()  # at its stale version: refused, the new holder's document stays
        assert coord.replace("leases/f.json", {"owner": "old"}, old_version) is None
        assert not old.renew()
        doc = coord.get("leases/f.json")
        assert doc is not None
        assert (doc["owner"], doc["state"], doc["generation"], doc["run"]) == (
            "new",
            "held",
            2,
            new.run,
        )
        assert new.renew()

    def test_exactly_one_of_racing_acquirers_wins_free_or_expired(
        self, coordinator: CoordinatorFactory, clock: ManualClock
    ) -> None:
        """Eight jobs race for a free lease, then for it expired: one wins each time."""
        jobs = [Lease(coordinator(), "r", f"job-{i}", ttl=10) for i in range(8)]
        won = _in_threads(lambda i: jobs[i].try_acquire(), 8)
        assert sum(won) == 1
        first = jobs[won.index(True)]
        losers = [j for j in jobs if j is not first]
        assert not any(j.try_acquire() for j in losers)  # each watches the holder now
        clock.advance(10)  # the holder falls silent for the whole ttl
        again = _in_threads(lambda i: losers[i].try_acquire(), len(losers))
        assert sum(again) == 1
        second = losers[again.index(True)]
        assert second.generation == 2 and not first.renew()
        doc = coordinator().get("leases/r.json")
        assert doc is not None and (doc["owner"], doc["generation"]) == (second.owner, 2)

    def test_a_dead_holder_on_this_host_loses_its_lease_at_once(self, coord: Coordinator) -> None:
        """A holder that was a process here that no longer runs: no ttl to wait out."""
        doc = _lease_doc("d", pid=_dead_pid(), ttl=3600, generation=7)
        assert coord.create("leases/d.json", doc)
        lease = Lease(coord, "d", "rerun", ttl=30)
        assert lease.observe().state == "dead"
        assert lease.try_acquire()
        assert lease.generation == 8
        assert _read(coord, "leases/d.json")["owner"] == "rerun"

    def test_lockset_times_out_naming_the_holder(
        self, coordinator: CoordinatorFactory, clock: ManualClock
    ) -> None:
        """A lease that stays held: LeaseTimeoutError naming who holds it."""
        with (
            LockSet(coordinator(), ["x"], "holder", ttl=30).hold(),
            pytest.raises(LeaseTimeoutError, match="holder"),
        ):
            Lease(coordinator(), "x", "other").acquire(timeout=0.3)
        assert _read(coordinator(), "leases/x.json")["state"] == "released"

    def test_lockset_takes_leases_in_order_and_gives_back_what_it_took(
        self, coordinator: CoordinatorFactory, clock: ManualClock
    ) -> None:
        """Sorted order (no deadlock); a lease it cannot get releases those taken before."""
        coord = coordinator()
        blocker = Lease(coordinator(), "b", "blocker", ttl=30)
        assert blocker.try_acquire()
        locks = LockSet(coordinator(), ["c", "b", "a"], "me", ttl=30)
        assert [lease.name for lease in locks.leases] == ["a", "b", "c"]
        with pytest.raises(LeaseTimeoutError, match="blocker"):
            locks.start(timeout=1.0)
        assert _read(coord, "leases/a.json")["state"] == "released"
        assert coord.get("leases/c.json") is None  # never reached
        assert blocker.renew()  # b is still the blocker's
        assert locks._thread is None  # nothing to renew

    def test_lease_holder_renews_while_holding(
        self, coordinator: CoordinatorFactory, clock: ManualClock
    ) -> None:
        """A lock set renews in the background: a watcher never sees it silent for its ttl."""
        coord = coordinator()
        locks = LockSet(coordinator(), ["slow"], "me", ttl=0.6)  # renewed every 0.2 s
        with locks.hold():
            watcher = Lease(coordinator(), "slow", "other", ttl=0.6)
            assert not watcher.try_acquire()  # the watch starts
            _, seen = coord.get_versioned("leases/slow.json")
            for _ in range(8):  # 2 s in all by the watcher's clock: over three times the ttl
                seen = _wait_for_new_version(coord, "leases/slow.json", seen)
                clock.advance(0.25)
                assert not watcher.try_acquire()  # renewed meanwhile: a new version
        assert not locks.lost
        assert locks._thread is not None and not locks._thread.is_alive()  # the renewer stopped
        doc = coord.get("leases/slow.json")
        assert doc is not None and (doc["owner"], doc["state"]) == ("me", "released")

    def test_a_lockset_held_again_is_renewed_again(self, coordinator: CoordinatorFactory) -> None:
        """Held, released, held again: the second hold is renewed in the background too."""
        coord = coordinator()
        locks = LockSet(coordinator(), ["again"], "me", ttl=0.6)  # renewed every 0.2 s
        with locks.hold():
            pass
        with locks.hold():
            _, version = coord.get_versioned("leases/again.json")
            _wait_for_new_version(coord, "leases/again.json", version)
        assert not locks.lost
        doc = coord.get("leases/again.json")
        assert doc is not None and (doc["state"], doc["generation"]) == ("released", 2)

    def test_a_lost_lease_is_reported_to_its_holder(self, coordinator: CoordinatorFactory) -> None:
        """Another actor replaced the document: the renewer finds out and says so."""
        coord = coordinator()
        lost: list[str] = []
        locks = LockSet(coordinator(), ["taken"], "me", ttl=0.6, on_lost=lost.append)
        with locks.hold():
            # Another actor replaces the document (as one would after watching it expire).
            doc, version = coord.get_versioned("leases/taken.json")
            assert doc is not None and version is not None
            assert coord.replace("leases/taken.json", {**doc, "run": "thief"}, version)
            assert locks.lost_event.wait(_HANG)
        assert lost == ["taken"] and locks.lost == ["taken"]
        with pytest.raises(LeaseLostError):
            locks.check()
        assert _read(coord, "leases/taken.json")["run"] == "thief"


def _wait_for_new_version(coord: Coordinator, key: str, seen: str | None) -> str | None:
    """The document's version once it is not ``seen`` (a renewal landed); fails on a hang."""
    deadline = _time.monotonic() + _HANG
    while _time.monotonic() < deadline:
        _, version = coord.get_versioned(key)
        if version != seen:
            return version
        _time.sleep(0.02)
    pytest.fail(f"{key} was not renewed within {_HANG:g} s")


# --------------------------------------------------------------------------- creation claims


class CreationClaimTests(CoordinationTests):
    """The creation claim (:mod:`toolkit.coordination.claim`) on one backend."""

    @pytest.fixture(autouse=True)
    def _claim_settings(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # The defaults, whatever the environment says.
        monkeypatch.setenv("TOOLKIT_LEASE_TTL", "30")
        monkeypatch.setenv("TOOLKIT_CREATE_TIMEOUT", str(_HANG))

    @pytest.fixture
    def claim(
        self, store_factory: StoreFactory, policy: Throttle | None
    ) -> Iterator[Callable[..., CreationClaim]]:
        """A callable giving another job's claim (``owner``, ``group`` optional); all released."""
        made: list[CreationClaim] = []

        def make(owner: str, group: str | None = None) -> CreationClaim:
            made.append(CreationClaim(store_factory(), group, owner, policy))
            return made[-1]

        yield make
        for c in made:
            c.release()

    def test_a_claim_excludes_other_creators_until_released(
        self, claim: Callable[..., CreationClaim], coord: Coordinator, clock: ManualClock
    ) -> None:
        """``"w-"``: a live claim refuses another creator; released, it is free at once."""
        a, b = claim("job-a"), claim("job-b")
        a.acquire(wait=False)
        with pytest.raises(ExistingStoreError, match="mode='w-'"):
            b.acquire(wait=False)
        doc = coord.get("leases/create.json")
        assert doc is not None and (doc["owner"], doc["state"], doc["generation"]) == (
            "job-a",
            "held",
            1,
        )
        a.release()
        assert _read(coord, "leases/create.json")["state"] == "released"
        b.acquire(wait=False)
        doc = coord.get("leases/create.json")
        assert doc is not None and (doc["owner"], doc["state"], doc["generation"]) == (
            "job-b",
            "held",
            2,
        )
        b.release()
        assert _read(coord, "leases/create.json")["state"] == "released"

    def test_exactly_one_of_racing_creators_claims_the_store(
        self, claim: Callable[..., CreationClaim], coord: Coordinator, clock: ManualClock
    ) -> None:
        """Six creators at once: one claims the store, the others are refused."""
        claims = [claim(f"job-{i}") for i in range(6)]

        def take(i: int) -> bool:
            try:
                claims[i].acquire(wait=False)
            except ExistingStoreError:
                return False
            return True

        won = _in_threads(take, 6)
        assert sum(won) == 1
        assert _read(coord, "leases/create.json")["owner"] == f"job-{won.index(True)}"

    def test_a_replacing_creator_waits_for_the_claim(
        self, claim: Callable[..., CreationClaim], coord: Coordinator
    ) -> None:
        """``"w"``: a second creator waits while the first holds the claim, then takes it."""
        a, b = claim("job-a"), claim("job-b")
        a.acquire(wait=True)
        got, failed = threading.Event(), []

        def wait_for_it() -> None:
            try:
                b.acquire(wait=True)
                got.set()
            except BaseException as e:
                failed.append(e)

        waiter = threading.Thread(target=wait_for_it, daemon=True, name="toolkit-test-waiter")
        waiter.start()
        assert not got.wait(0.5)  # a's claim is live (ttl 30 s, renewed): b waits
        assert _read(coord, "leases/create.json")["owner"] == "job-a"
        a.release()
        waiter.join(_HANG)
        assert not failed and got.is_set()
        doc = coord.get("leases/create.json")
        assert doc is not None and (doc["owner"], doc["generation"]) == ("job-b", 2)

    def test_a_dead_creators_claim_is_taken_at_once(
        self, claim: Callable[..., CreationClaim], coord: Coordinator
    ) -> None:
        """A killed creator's rerun on the same host goes on without waiting out the ttl."""
        doc = _lease_doc("create", pid=_dead_pid(), ttl=3600, generation=3)
        assert coord.create("leases/create.json", doc)
        claim("rerun").acquire(wait=False)
        now = coord.get("leases/create.json")
        assert now is not None and (now["owner"], now["generation"]) == ("rerun", 4)

    def test_the_claim_of_a_group_lives_in_it_and_is_no_data(
        self, claim: Callable[..., CreationClaim], store_factory: StoreFactory
    ) -> None:
        """Under ``<group>/.toolkit/coord/``; the group's contents leave it (and strays) out."""
        store = store_factory()
        assert group_contents(store, "g/sub") == []
        claim("job-a", "g/sub").acquire(wait=False)
        assert _all_keys(store, "g/") == ["g/sub/.toolkit/coord/leases/create.json"]
        assert group_contents(store, "g/sub") == []  # coordination is no data
        for key in ("g/sub/zarr.json.0123.partial", "g/sub/zarr.json"):
            sync(store.set(key, Buffer.from_bytes(b"{}")))
        assert group_contents(store, "g/sub", limit=10) == ["g/sub/zarr.json"]
        assert (
            _read(Coordinator(store_factory(), "g/sub"), "leases/create.json")["owner"] == "job-a"
        )

    def test_clear_group_keeps_only_the_creation_lease(self, store_factory: StoreFactory) -> None:
        """``mode="w"``'s clearing: every object of a written dataset goes but the lease."""
        store = store_factory()
        v = np.arange(12.0).reshape(4, 3)
        ds = xr.Dataset({"v": (("t", "x"), v)}, coords={"t": np.arange(4)})
        toolkit.to_zarr(ds, store, progress=False)
        assert "v/zarr.json" in _all_keys(store)
        clear_group(store, None)
        assert _all_keys(store) == [".toolkit/coord/leases/create.json"]


# --------------------------------------------------------------------------- the commit log


class CommitLogTests(CoordinationTests):
    """The commit log (:mod:`toolkit.coordination.commitlog`) on one backend."""

    def test_group_commit_answers_many_jobs_with_few_entries(
        self, coordinator: CoordinatorFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Twelve jobs pending at once are decided by a committer in one or two entries."""
        monkeypatch.setenv("TOOLKIT_LOG_DIRECT_ATTEMPTS", "0")  # group commit only
        jobs, watcher, gate = 12, coordinator(), threading.Event()

        def decide(state: dict[str, Any], requests: list[dict[str, Any]]) -> Batch:
            # The first batch waits until every job's request is pending: the rest
            # come in the next one, whatever the threads' timing.
            deadline = _time.monotonic() + _HANG
            while not gate.is_set() and _time.monotonic() < deadline:
                if len(watcher.list("pending/")) >= jobs:
                    gate.set()
                _time.sleep(0.01)
            return _counter(state, requests)

        out = _in_threads(lambda i: CommitLog(coordinator(), decide).submit({"k": 2}), jobs)
        starts = sorted(a["start"] for a in out)
        assert starts == list(range(0, 2 * jobs, 2))  # every job placed once, no overlap
        entries = numbered(k for k in watcher.list("log/") if k != HEAD)
        assert entries in ([1], [1, 2])  # not one per job
        assert watcher.list("pending/") == []

    @pytest.mark.parametrize("direct_attempts", [2, 0], ids=["direct-then-group", "group-only"])
    def test_concurrent_requests_are_decided_exactly_once_in_one_order(
        self, coordinator: CoordinatorFactory, monkeypatch: pytest.MonkeyPatch, direct_attempts: int
    ) -> None:
        """Sixteen jobs at once: their places tile the range, and the log says the same."""
        monkeypatch.setenv("TOOLKIT_LOG_DIRECT_ATTEMPTS", str(direct_attempts))
        jobs = 16
        answers = _in_threads(
            lambda i: CommitLog(coordinator(), _counter).submit(
                {"k": i + 1}, job=f"job-{i:02d}", timeout=_HANG
            ),
            jobs,
        )
        place = 0
        for start, i in sorted((a["start"], i) for i, a in enumerate(answers)):
            assert start == place  # no gap, no overlap
            place += i + 1
        coord = coordinator()
        seq, state = CommitLog(coord, _counter).head()
        assert state["n"] == place == jobs * (jobs + 1) // 2
        assert numbered(k for k in coord.list("log/") if k != HEAD) == list(range(1, seq + 1))
        decided: list[str] = []
        n = 0
        for entry in coord.get_many([_entry_key(s) for s in range(1, seq + 1)]):
            assert entry is not None
            ranks = [int(job.removeprefix("job-")) for job in entry["jobs"]]
            got = sorted(a["start"] for a in entry["answers"].values())
            assert got == sorted(answers[i]["start"] for i in ranks)  # what its jobs got
            n += sum(i + 1 for i in ranks)
            assert entry["state"]["n"] == n  # each entry's state follows the one before
            decided += entry["jobs"]
        assert sorted(decided) == [f"job-{i:02d}" for i in range(jobs)]  # each exactly once
        assert len(state["_recent"]) == jobs
        assert coord.list("pending/") == []

    def test_an_effect_that_fails_answers_every_job_with_the_error(
        self, coord: Coordinator
    ) -> None:
        """The effect raises: each job gets the error, and the state stays as it was."""

        def decide(state: dict[str, Any], requests: list[dict[str, Any]]) -> Batch:
            def effect() -> dict[str, Any]:
                raise OSError("store said no")

            return Batch({"n": 1}, {r["job"]: {} for r in requests}, effect)

        log = CommitLog(coord, decide)
        answer = log.submit({}, timeout=_HANG)
        assert "store said no" in answer["error"]
        seq, state = log.head()
        assert seq == 1 and "n" not in state  # the batch's state was not taken

    def test_the_head_is_the_state_of_the_last_entry_and_grows_in_order(
        self, coordinator: CoordinatorFactory
    ) -> None:
        """Sequential jobs: places in order, and another job reads the same head."""
        log = CommitLog(coordinator(), _counter)
        assert log.head() == (0, {})
        starts = [log.submit({"k": 3})["start"] for _ in range(4)]
        assert starts == [0, 3, 6, 9]
        seq, state = CommitLog(coordinator(), _counter).head()  # another job sees the same head
        assert state["n"] == 12 and 1 <= seq <= 4
        assert len(state["_recent"]) == 4  # the jobs answered lately: none is decided twice

    def test_a_lagging_head_copy_is_read_forward(self, coordinator: CoordinatorFactory) -> None:
        """``log/HEAD.json`` behind the log, or gone: the head is still the newest entry."""
        coord = coordinator()
        log = CommitLog(coord, _counter)
        for _ in range(3):
            log.submit({"k": 1})
        newest = log.head()
        assert newest[0] == 3 and newest[1]["n"] == 3
        coord.put(HEAD, _read(coord, _entry_key(1)))
        assert CommitLog(coordinator(), _counter).head() == newest
        # A lone job on the stale copy: its create fails, it reads forward, and lands.
        assert CommitLog(coordinator(), _counter).submit({"k": 1}) == {"start": 3}
        coord.delete(HEAD)
        seq, state = CommitLog(coordinator(), _counter).head()  # from the listing
        assert (seq, state["n"]) == (4, 4)

    def test_a_request_is_answered_once_even_when_submitted_under_its_own_job_id(
        self, coordinator: CoordinatorFactory
    ) -> None:
        """Given job ids: each answered once, and answered requests removed."""
        coord = coordinator()
        first = CommitLog(coord, _counter).submit({"k": 5}, job="job-a")
        again = CommitLog(coordinator(), _counter).submit({"k": 1}, job="job-b")
        assert first == {"start": 0} and again == {"start": 5}
        assert coord.list("pending/") == []  # answered requests are removed

    def test_a_request_answered_before_its_pending_key_went_is_not_decided_again(
        self, coordinator: CoordinatorFactory
    ) -> None:
        """A committer died between its entry and removing the requests: nothing is redone."""
        coord = coordinator()
        seen: list[str] = []

        def decide(state: dict[str, Any], requests: list[dict[str, Any]]) -> Batch:
            seen.extend(r["job"] for r in requests)
            return _counter(state, requests)

        assert CommitLog(coord, decide).submit({"k": 5}, job="job-a", direct=False) == {"start": 0}
        _, state = CommitLog(coord, decide).head()
        (rid,) = state["_recent"]
        request = {"k": 5, "job": "job-a", "req": rid, "submitted": "2001-01-01T00:00:00+00:00"}
        coord.put(f"pending/{rid}.json", request)  # as the dead committer left it
        answer = CommitLog(coordinator(), decide).submit({"k": 1}, job="job-b", direct=False)
        assert answer == {"start": 5}
        assert seen == ["job-a", "job-b"]  # job-a decided once
        assert CommitLog(coord, decide).head()[1]["n"] == 6
        assert coord.list("pending/") == []

    def test_an_effect_runs_before_its_answer_is_read(
        self, coordinator: CoordinatorFactory
    ) -> None:
        """What the effect returns is in every answer; each request is decided once."""
        ran: list[int] = []

        def decide(state: dict[str, Any], requests: list[dict[str, Any]]) -> Batch:
            def effect() -> dict[str, Any]:
                ran.append(len(requests))
                return {"grown": True}

            return Batch({}, {r["job"]: {} for r in requests}, effect)

        answers = _in_threads(lambda i: CommitLog(coordinator(), decide).submit({}), 4)
        assert all(a.get("grown") for a in answers)
        assert sum(ran) == 4  # every request decided exactly once

    @pytest.mark.parametrize("committer", ["dead", "silent"])
    def test_a_committer_that_stopped_is_replaced(
        self, coordinator: CoordinatorFactory, committer: str
    ) -> None:
        """The committer lease of a dead or silent job: the next job commits anyway."""
        coord = coordinator()
        pid, ttl = (_dead_pid(), 3600.0) if committer == "dead" else (os.getpid(), 0.2)
        assert coord.create(
            "leases/committer.json", _lease_doc("committer", pid=pid, ttl=ttl, generation=5)
        )
        answer = CommitLog(coordinator(), _counter).submit(
            {"k": 1}, job="job-a", direct=False, timeout=_HANG
        )
        assert answer == {"start": 0}
        doc = coord.get("leases/committer.json")
        assert doc is not None and (doc["owner"], doc["generation"]) == ("job-a", 6)
        assert doc["state"] == "released"
