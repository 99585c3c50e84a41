"""The scheduler side of cluster-wide throttling, and the workers' side of it.

:class:`ThrottleCoordinator` is a scheduler plugin that enforces every
:class:`~toolkit.Throttle` for the whole cluster. Each worker books send slots
from it in small batches (:class:`_RemoteBudget`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from dask.base import tokenize
from distributed.diagnostics.plugin import SchedulerPlugin

from toolkit.io.throttle import Budget, BudgetState, RequestKind, Throttle

__all__ = ["ThrottleCoordinator", "coordinated_states", "install_coordinator", "remote_budget_for"]


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
    return [b.state("cluster") for b in plugin.budgets.values()]


class ThrottleCoordinator(SchedulerPlugin):
    """Scheduler plugin enforcing every :class:`Throttle` for the whole cluster.

    Workers book slots in small batches, about 20 ms of the rate at a time
    (:class:`_RemoteBudget`), so the scheduler answers a few dozen requests per
    second whatever the request rate. A worker that is busy while the others
    idle gets the whole rate, which a fixed split cannot give it. Throttling
    answers reported by any worker slow the shared budget down (adaptive
    mode).
    """

    name = "toolkit-throttle"

    def __init__(self) -> None:
        self.budgets: dict[str, Budget] = {}

    def attach(self, scheduler: Any) -> None:
        """Install the handlers on ``scheduler``."""
        scheduler.handlers["toolkit_throttle_reserve"] = self.reserve
        scheduler.handlers["toolkit_throttle_throttled"] = self.throttled
        scheduler.handlers["toolkit_throttle_rates"] = self.rates

    async def start(self, scheduler: Any) -> None:
        """SchedulerPlugin hook, for clusters that register it themselves."""
        self.attach(scheduler)

    def _budget(self, key: str, policy: Mapping[str, Any], scope: str = "") -> Budget:
        b = self.budgets.get(key)
        if b is None:
            b = self.budgets[key] = Budget(Throttle(**policy), scope)
        return b

    def reserve(
        self, key: str, policy: Mapping[str, Any], kind: RequestKind, n: int, scope: str = ""
    ) -> Any:
        """Book ``n`` slots; the worker gets (seconds to the first, seconds between)."""
        b = self._budget(key, policy, scope)
        wait, interval = b.reserve_batch(kind, n)
        return {"wait": wait, "interval": interval, "batch": b.batch_size(kind)}

    def throttled(
        self,
        key: str,
        policy: Mapping[str, Any],
        kind: RequestKind,
        age: float = 0.0,
        scope: str = "",
    ) -> None:
        """A worker saw a throttling answer to a request booked ``age`` seconds ago."""
        self._budget(key, policy, scope).throttled(kind, time.monotonic() - age)

    def rates(self) -> dict[str, dict[str, float | None]]:
        """The rates in force per store; the budget used last where a store has several."""
        latest = sorted(self.budgets.values(), key=lambda b: b.last_used)
        return {b.scope: b.current_rates() for b in latest}


class _RemoteBudget:
    """A worker's share of a coordinated budget: slots booked from the scheduler.

    Booked slots are send times on this worker's clock. A slot more than a
    second old is dropped, not spent. Spending it later would add a burst on top
    of the slots booked for that moment. Spending it up to a second late lets a
    worker that the CPU stalled catch up, within the bursts that object stores
    tolerate.
    """

    _STALE = 1.0

    def __init__(self, key: str, policy: Throttle, worker: Any, scope: str = "") -> None:
        self.key, self.worker, self.scope = key, worker, scope
        self.policy = {f: getattr(policy, f) for f in policy.__dataclass_fields__}
        self.policy["coordinated"] = False
        self.slots: dict[str, collections.deque[float]] = {}
        self.batch: dict[str, int] = {}
        # Per event loop (zarr runs one per process), the batch being booked per kind.
        self._loops: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Task[None]]
        ] = weakref.WeakKeyDictionary()

    def _rpc(self, name: str, **kw: Any) -> concurrent.futures.Future[Any]:
        # The worker's comms live on its own event loop, not on zarr's.
        call = getattr(self.worker.scheduler, name)
        return asyncio.run_coroutine_threadsafe(call(**kw), self.worker.loop.asyncio_loop)

    async def reserve(self, kind: RequestKind) -> float:
        """Seconds to wait before sending one request of ``kind``."""
        loop = asyncio.get_running_loop()
        state = self._loops.setdefault(loop, {})
        q = self.slots.setdefault(kind, collections.deque())
        while True:
            now = time.monotonic()
            while q and q[0] < now - self._STALE:
                q.popleft()
            # Book the next batch while half of this one is left, so that the
            # round trip to the scheduler never stalls a request.
            fetch = state.get(kind)
            if len(q) <= self.batch.get(kind, 1) // 2 and (fetch is None or fetch.done()):
                fetch = state[kind] = loop.create_task(self._fetch(kind))
            if q:
                return max(0.0, q.popleft() - now)
            assert fetch is not None
            await asyncio.shield(fetch)

    async def _fetch(self, kind: RequestKind) -> None:
        n = self.batch.get(kind, 1)
        got = await asyncio.wrap_future(
            self._rpc(
                "toolkit_throttle_reserve",
                key=self.key,
                policy=self.policy,
                kind=kind,
                n=n,
                scope=self.scope,
            )
        )
        now = time.monotonic()
        self.slots[kind].extend(now + got["wait"] + i * got["interval"] for i in range(n))
        self.batch[kind] = int(got["batch"])

    def throttled(self, kind: RequestKind, age: float) -> None:
        """Report a throttling answer to a request booked ``age`` seconds ago."""
        fut = self._rpc(
            "toolkit_throttle_throttled",
            key=self.key,
            policy=self.policy,
            kind=kind,
            age=age,
            scope=self.scope,
        )
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # fire and forget


_REMOTE: dict[str, _RemoteBudget] = {}
_REMOTE_LOCK = threading.Lock()


def remote_budget_for(policy: Throttle, scope: str) -> _RemoteBudget | None:
    """The coordinated budget of this worker process, or None outside a worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    key = tokenize(replace(policy, max_inflight=1, coordinated=False), scope)
    with _REMOTE_LOCK:
        rb = _REMOTE.get(key)
        if rb is None or rb.worker is not worker:
            rb = _REMOTE[key] = _RemoteBudget(key, policy, worker, scope)
        return rb
