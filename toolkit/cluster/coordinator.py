"""The scheduler side of cluster-wide throttling, and the workers' side of it.

:class:`ThrottleCoordinator` is a scheduler plugin that enforces every
:class:`~toolkit.Throttle` for the whole cluster: it leases each worker a share
of every rate, and each worker paces its requests by its leases
(:class:`_RemoteBudget`). The arithmetic is :mod:`toolkit.io.ratecontrol`,
which the discrete-event model of :mod:`toolkit.testing.ratesim` runs at 1,000
workers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Self

from dask.base import tokenize
from distributed.diagnostics.plugin import SchedulerPlugin

from toolkit import runtime
from toolkit.io.budget import (
    Budget,
    BudgetState,
    Limiter,
    describe_cut,
    describe_recovery,
    limiters_of,
    sit_out_pauses,
)
from toolkit.io.ratecontrol import Grant, Pacer
from toolkit.io.throttle import RequestKind, Throttle
from toolkit.runtime import Registry, Slot

__all__ = [
    "CoordinatedThrottle",
    "ThrottleCoordinator",
    "coordinated_states",
    "install_coordinator",
    "remote_budget_for",
]


@dataclass(frozen=True)
class CoordinatedThrottle(Throttle):
    """A policy the coordinator enforces for a cluster, as each worker holds it.

    Made by :func:`toolkit.cluster.budgets.cluster_share`: the rates are the
    whole cluster's (the coordinator leases each worker its part), the
    in-flight cap is one worker's, and ``workers`` is how many workers the
    cluster had when the share was made. A worker that cannot reach the
    coordinator paces itself by :meth:`alone`, its fair share of the rates.
    """

    workers: int = field(default=1, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {self.workers!r}")

    @classmethod
    def of(cls, policy: Throttle, workers: int) -> Self:
        """``policy`` coordinated for ``workers`` workers (each holding its in-flight share)."""
        given = {f.name: getattr(policy, f.name) for f in fields(Throttle)}
        given.update(max_inflight=policy.share(workers).max_inflight, coordinated=True)
        return cls(**given, workers=workers)

    def plain(self) -> Throttle:
        """The same policy as a plain :class:`~toolkit.Throttle` (what the scheduler holds)."""
        return Throttle(**_fields_of(self))

    def alone(self) -> Throttle:
        """What one worker enforces by itself while the coordinator is out of reach.

        Its fair share: every rate (and the floor) divided by ``workers``, its
        own in-flight cap, not coordinated.
        """
        share = self.plain().share(self.workers)
        return replace(share, max_inflight=self.max_inflight, coordinated=False)


def _fields_of(policy: Throttle) -> dict[str, Any]:
    """A policy's :class:`Throttle` fields only (a subclass's own left out)."""
    return {f.name: getattr(policy, f.name) for f in fields(Throttle)}


def install_coordinator(dask_scheduler: Any) -> bool:
    """Add the coordinator to a scheduler (run with ``client.run_on_scheduler``)."""
    if ThrottleCoordinator.name not in dask_scheduler.plugins:
        plugin = ThrottleCoordinator()
        plugin.attach(dask_scheduler)
        dask_scheduler.add_plugin(plugin, name=ThrottleCoordinator.name)
    return True


def coordinated_states(dask_scheduler: Any) -> list[BudgetState]:
    """The cluster's budgets (run with ``client.run_on_scheduler``)."""
    plugin = dask_scheduler.plugins.get(ThrottleCoordinator.name)
    if not isinstance(plugin, ThrottleCoordinator):
        return []
    return plugin.states()


class ThrottleCoordinator(SchedulerPlugin):
    """Scheduler plugin enforcing every :class:`Throttle` for the whole cluster.

    The scheduler holds each budget's :class:`~toolkit.io.ratecontrol.RateLaw`
    and leases every worker that sends a share of its rate
    (:class:`~toolkit.io.ratecontrol.Allocator`); the worker paces its own
    requests by the lease (:class:`_RemoteBudget`). One message per worker
    per lease period, whatever the request rate: the period grows with the
    number of workers, so that the scheduler answers at most about
    :data:`~toolkit.io.ratecontrol.MAX_MESSAGES` lease requests per second.
    Throttling answers reported by any worker cut the shared rate (adaptive
    mode); a worker that leaves releases its leases at once.
    """

    name = "toolkit-throttle"

    def __init__(self) -> None:
        self.budgets: dict[str, Budget] = {}
        self.messages = 0
        self._scheduler: Any = None

    def attach(self, scheduler: Any) -> None:
        """Install the handlers on ``scheduler``."""
        self._scheduler = scheduler
        scheduler.handlers["toolkit_throttle_lease"] = self.lease
        scheduler.handlers["toolkit_throttle_throttled"] = self.throttled
        scheduler.handlers["toolkit_throttle_rates"] = self.rates

    async def start(self, scheduler: Any) -> None:
        """SchedulerPlugin hook, for clusters that register it themselves."""
        self.attach(scheduler)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        """SchedulerPlugin hook: a worker that left holds no budget."""
        for b in self.budgets.values():
            for a in b.allocators.values():
                a.remove(worker)

    def _budget(self, key: str, policy: Mapping[str, Any], scope: str = "") -> Budget:
        b = self.budgets.get(key)
        if b is None:
            b = self.budgets[key] = Budget(Throttle(**policy), scope)
        return b

    def _processes(self) -> int:
        return len(getattr(self._scheduler, "workers", ())) or 1

    def lease(
        self,
        key: str,
        policy: Mapping[str, Any],
        worker: str,
        wants: Mapping[Limiter, float | None],
        sending: Mapping[Limiter, float],
        scope: str = "",
    ) -> dict[str, Any]:
        """Leases for ``worker``; it gets them with the scheduler's clock."""
        self.messages += 1
        b = self._budget(key, policy, scope)
        return _answer(b.lease(worker, wants, sending, self._processes()))

    def throttled(
        self,
        key: str,
        policy: Mapping[str, Any],
        worker: str,
        limiters: list[Limiter],
        sent_at: float,
        retry_after: float | None,
        sending: Mapping[Limiter, float],
        scope: str = "",
    ) -> dict[str, Any]:
        """A worker saw a throttling answer to a request sent at ``sent_at`` (our clock)."""
        self.messages += 1
        b = self._budget(key, policy, scope)
        return _answer(b.report(worker, limiters, sent_at, retry_after, sending, self._processes()))

    def rates(self) -> dict[str, dict[str, float | None]]:
        """The rates in force per store; the budget used last where a store has several."""
        latest = sorted(self.budgets.values(), key=lambda b: b.last_used)
        return {b.scope: b.current_rates() for b in latest}

    def control(self) -> dict[str, str]:
        """Where each store's control law stands, in words: the last cut, the recovery."""
        latest = sorted(self.budgets.values(), key=lambda b: b.last_used)
        out = {}
        for b in latest:
            law = b.state("cluster").last_cut
            cut, recovery = describe_cut(law), describe_recovery(law)
            out[b.scope] = "no cut" if cut == "none" else f"cut {cut}; {recovery}"
        return out

    def states(self) -> list[BudgetState]:
        """Every budget's state, as the cluster enforces it."""
        return [b.state("cluster", self.messages) for b in self.budgets.values()]


def _answer(grants: Mapping[Limiter, Grant]) -> dict[str, Any]:
    """Leases as a message, with the scheduler's clock to convert their times."""
    return {"now": time.monotonic(), "grants": {k: g.as_dict() for k, g in grants.items()}}


#: Seconds a worker keeps its leases when the scheduler does not answer a renewal.
_HOLD = 1.0


class _RemoteBudget:
    """A worker's share of a coordinated budget: leases from the scheduler, paced here.

    Each of the policy's rates this worker spends from has a
    :class:`~toolkit.io.ratecontrol.Pacer`. Leases are renewed in the
    background when due, so a request waits for the scheduler only when this
    worker holds no lease at all (its first request, or after a long silence).
    Throttling answers are reported at most once per round trip: answers to
    requests sent before the last report was answered say nothing new.
    """

    def __init__(self, key: str, policy: Throttle, worker: Any, scope: str = "") -> None:
        self.key, self.worker, self.scope = key, worker, scope
        self.throttle = policy
        self.policy = _fields_of(policy)
        self.policy["coordinated"] = False
        self.workers = policy.workers if isinstance(policy, CoordinatedThrottle) else 1
        self.pacers: dict[Limiter, Pacer] = {}
        self._lock = threading.Lock()
        self._renewing: concurrent.futures.Future[Any] | None = None
        self._reporting: concurrent.futures.Future[Any] | None = None
        self._answered = -math.inf  # when the last throttling report was answered

    @property
    def alone(self) -> Throttle:
        """The share of the budget this worker enforces alone while the scheduler is out of reach.

        The policy's rates divided by the number of workers the cluster had when
        the share was made (:class:`CoordinatedThrottle`); a policy that does not
        say is kept whole.
        """
        policy = self.throttle
        if isinstance(policy, CoordinatedThrottle):
            return replace(policy, workers=self.workers).alone()
        return replace(policy, coordinated=False)

    def _rpc(self, name: str, **kw: Any) -> concurrent.futures.Future[Any]:
        # The worker's comms live on its own event loop, not on zarr's.
        call = getattr(self.worker.scheduler, name)
        kw.update(key=self.key, policy=self.policy, scope=self.scope, worker=self.worker.address)
        return asyncio.run_coroutine_threadsafe(call(**kw), self.worker.loop.asyncio_loop)

    def _apply(self, sent: float, fut: concurrent.futures.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            # The scheduler did not answer: keep the leases held for another second
            # (this worker's share, not the whole rate), then ask again.
            with self._lock:
                for p in self.pacers.values():
                    if p.grant is not None:
                        later = time.monotonic() + p.offset + _HOLD
                        p.grant = replace(p.grant, until=later, renew_at=later)
            return
        got = fut.result()
        now = time.monotonic()
        offset = got["now"] - (sent + now) / 2
        with self._lock:
            for name, g in got["grants"].items():
                self.pacers[name].apply(Grant.from_dict(g), now, offset)

    def _renew(self, names: tuple[Limiter, ...]) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._renewing is not None and not self._renewing.done():
                return self._renewing
            now = time.monotonic()
            for n in names:
                self.pacers.setdefault(n, Pacer())
            wants = {n: None if p.grant is None else p.want(now) for n, p in self.pacers.items()}
            sending = {n: p.sending(now) for n, p in self.pacers.items()}
            fut = self._renewing = self._rpc("toolkit_throttle_lease", wants=wants, sending=sending)
        fut.add_done_callback(functools.partial(self._apply, now))
        return fut

    async def acquire(self, kind: RequestKind) -> float:
        """Wait until one request of ``kind`` may go; the seconds waited."""
        names = limiters_of(self.throttle, kind)
        start = time.monotonic()
        while True:
            now = time.monotonic()
            with self._lock:
                pacers = [self.pacers.get(n) for n in names]
                missing = any(p is None or p.needs_grant(now) for p in pacers)
                due = missing or any(p is not None and p.due(now) for p in pacers)
            if due:
                fut = self._renew(names)
                if missing:
                    with contextlib.suppress(Exception):
                        await asyncio.wrap_future(fut)
                    if fut.cancelled() or fut.exception() is not None:
                        with self._lock:
                            held = all(
                                (p := self.pacers.get(n)) is not None and p.grant is not None
                                for n in names
                            )
                        if not held:  # never leased: the caller falls back to its own budget
                            fut.result()
                    continue
            now = time.monotonic()
            with self._lock:
                slots = [self.pacers[n].take(now) for n in names]
                renew = min(
                    (p.grant.renew_at - p.offset for p in self.pacers.values() if p.grant),
                    default=now,
                )
            if None not in slots:
                send = max(s for s in slots if s is not None)
                if send > now:
                    await asyncio.sleep(send - now)
                await sit_out_pauses(self.pacers, names, self._lock)
                return time.monotonic() - start
            # The next slot lies beyond the lease's renewal: book it at the rate then.
            if renew > now:
                await asyncio.sleep(renew - now)
            else:  # unanswered, the leases are held a while longer (``_apply``)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.wrap_future(self._renew(names)), 10.0)

    def throttled(self, kind: RequestKind, sent_at: float, retry_after: float | None) -> None:
        """Report a throttling answer to a request sent at ``sent_at`` (our clock)."""
        names = limiters_of(self.throttle, kind)
        now = time.monotonic()
        with self._lock:
            busy = self._reporting is not None and not self._reporting.done()
            if busy or (sent_at < self._answered and not retry_after):
                return  # the scheduler has not answered yet, or knew already
            offset = max((self.pacers[n].offset for n in names if n in self.pacers), default=0.0)
            sending = {n: self.pacers[n].sending(now) for n in names if n in self.pacers}
            fut = self._reporting = self._rpc(
                "toolkit_throttle_throttled",
                limiters=list(names),
                sent_at=sent_at + offset,
                retry_after=retry_after,
                sending=sending,
            )

        def answered(f: concurrent.futures.Future[Any]) -> None:
            self._answered = time.monotonic()
            self._apply(now, f)

        fut.add_done_callback(answered)


#: This worker's coordinated budgets (in the current runtime: a worker process's own).
_REMOTE: Slot[Registry[str, _RemoteBudget]] = Slot("cluster.coordinator.remote", Registry)


def remote_budget_for(policy: Throttle, scope: str) -> _RemoteBudget | None:
    """The coordinated budget of this worker process, or None outside a worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    # One budget on the scheduler whatever the in-flight share or the worker count.
    key = tokenize(
        Throttle(**{**_fields_of(policy), "max_inflight": 1, "coordinated": False}), scope
    )
    remote = runtime.current().get(_REMOTE)
    with remote.lock:
        rb = remote.get(key)
        if rb is None or rb.worker is not worker:
            rb = _RemoteBudget(key, policy, worker, scope)
            remote.put(key, rb)
        elif isinstance(policy, CoordinatedThrottle):
            rb.workers = policy.workers  # the latest share's count of the cluster
        return rb
