"""The state that enforces a :class:`~toolkit.io.throttle.Throttle` in one process.

A :class:`Budget` per policy and store (kept in the current runtime,
:func:`budget_for`) leases its rates (:mod:`toolkit.io.ratecontrol`'s
allocators of one) and paces requests by them; a cluster's coordinator holds
the allocators on the scheduler instead (:mod:`toolkit.cluster.coordinator`),
and a worker's requests wait on it through a :class:`RemoteBudget`.
:class:`ThrottleState` shows every budget in force.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from dask.base import tokenize

from toolkit import runtime
from toolkit._render import html_table, text_table
from toolkit.io.ratecontrol import Allocator, Grant, Pacer, RateLaw
from toolkit.io.throttle import RequestKind, Throttle
from toolkit.runtime import Registry, Slot

__all__ = [
    "Budget",
    "BudgetState",
    "Limiter",
    "RemoteBudget",
    "RemoteBudgets",
    "ThrottleState",
    "budget_for",
    "describe_cut",
    "describe_recovery",
    "law_for",
    "limiters_of",
    "local_states",
    "sit_out_pauses",
]

Limiter = Literal["all", "read", "write", "list"]
"""A rate a request spends from: every request's ``all``, and its own kind's."""


def law_for(policy: Throttle, limiter: Limiter) -> RateLaw:
    """The :class:`~toolkit.io.ratecontrol.RateLaw` of one of a policy's rates."""
    rate = policy.rate if limiter == "all" else policy.rate_for(limiter)
    return RateLaw(
        configured=rate,
        adaptive=policy.adaptive,
        decrease=policy.decrease,
        recovery=policy.recovery,
        cooldown=policy.cooldown,
        min_rate=policy.min_rate,
    )


def limiters_of(policy: Throttle, kind: RequestKind) -> tuple[Limiter, ...]:
    """The rates a request of ``kind`` spends from under ``policy``."""
    return (kind, "all") if policy.rate is not None else (kind,)


class Budget:
    """The state enforcing one :class:`Throttle` in one process.

    Shared by every store wrapper, thread and task of the process that uses the
    same policy, so one process never exceeds its share however many tasks run.
    Each of the policy's rates is a :class:`~toolkit.io.ratecontrol.RateLaw`
    whose whole rate this process leases (an :class:`Allocator` of one) and
    paces its requests by (a :class:`Pacer`). Under a cluster's coordinator the
    allocators live on the scheduler instead.

    Parameters
    ----------
    policy : Throttle
        The policy it enforces.
    scope : str
        What it meters (a store's location), for people.
    clock : callable
        Seconds on a monotonic clock (:func:`time.monotonic`). Every time the
        budget reads comes from it, so that a test can drive the budget on a
        clock of its own and judge its arithmetic exactly, not the speed of the
        machine; the waits it asks for are still slept in real time.
    """

    _ME = "this process"

    def __init__(
        self, policy: Throttle, scope: str = "", *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy
        self.scope = scope
        self.clock = clock
        self.last_used = clock()
        self.allocators: dict[Limiter, Allocator] = {}
        self.pacers: dict[Limiter, Pacer] = {}
        for name in ("all", "read", "write", "list"):
            if name == "all" and policy.rate is None:
                continue
            self.allocators[name] = Allocator(law_for(policy, name))
            self.pacers[name] = Pacer()
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._semaphores = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()  # the allocators (and the semaphores)
        self._pace_lock = threading.Lock()  # this process's pacers

    def semaphore(self) -> asyncio.Semaphore:
        """The in-flight cap for the running event loop (zarr runs one per process)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._semaphores.get(loop)
            if sem is None:
                sem = self._semaphores[loop] = asyncio.Semaphore(self.policy.max_inflight)
            return sem

    def lease(
        self,
        who: str,
        wants: Mapping[Limiter, float | None],
        sending: Mapping[Limiter, float],
        processes: int,
        now: float | None = None,
    ) -> dict[Limiter, Grant]:
        """Leases of the rates ``who`` asks for: ``wants`` per rate (None: unknown yet).

        ``sending`` is the rate ``who`` really sends at, per rate; ``processes``
        how many processes may send.
        """
        now = self.clock() if now is None else now
        self.last_used = now
        with self._lock:
            return {
                name: self.allocators[name].request(who, want, now, processes, sending.get(name))
                for name, want in wants.items()
            }

    def report(
        self,
        who: str,
        names: Iterable[Limiter],
        sent_at: float | None,
        retry_after: float | None,
        sending: Mapping[Limiter, float],
        processes: int,
        now: float | None = None,
    ) -> dict[Limiter, Grant]:
        """``who`` got a throttling answer to a request sent at ``sent_at``: new leases.

        ``sending`` is the rate ``who`` says the store refused, per rate
        (:meth:`~toolkit.io.ratecontrol.Pacer.refused_at`).
        """
        now = self.clock() if now is None else now
        with self._lock:
            return {
                name: self.allocators[name].throttled(
                    who, sent_at, now, processes, retry_after, sending.get(name)
                )
                for name in names
            }

    def _take(self, names: tuple[Limiter, ...], now: float, patient: bool) -> float | None:
        """The next slot of this process in each of ``names`` (None: after the renewal)."""
        pacers = self.pacers
        due = [n for n in names if pacers[n].due(now)]
        if due:
            wants = {n: None if pacers[n].grant is None else pacers[n].want(now) for n in due}
            sending = {n: pacers[n].sending(now) for n in due}
            for n, grant in self.lease(self._ME, wants, sending, 1, now).items():
                pacers[n].apply(grant, now)
        self.last_used = now
        slots = [pacers[n].take(now, patient) for n in names]
        return None if None in slots else max(s for s in slots if s is not None)

    def reserve(self, kind: RequestKind) -> float:
        """Book one request of ``kind`` in this process; seconds to wait before sending it."""
        now = self.clock()
        with self._pace_lock:
            send = self._take(limiters_of(self.policy, kind), now, patient=False)
        assert send is not None
        return max(0.0, send - now)

    async def acquire(self, kind: RequestKind) -> float:
        """Wait until one request of ``kind`` may go; the seconds waited.

        A slot beyond the lease's renewal is not booked: the request waits for
        the renewal and books then, at the rate in force by then.
        """
        names = limiters_of(self.policy, kind)
        start = self.clock()
        while True:
            now = self.clock()
            with self._pace_lock:
                send = self._take(names, now, patient=True)
                renew = min(g.renew_at for n in names if (g := self.pacers[n].grant) is not None)
            if send is not None:
                if send > now:
                    await asyncio.sleep(send - now)
                await sit_out_pauses(self.pacers, names, self._pace_lock, self.clock)
                return self.clock() - start
            await asyncio.sleep(max(0.0, renew - now))

    def throttled(
        self, kind: RequestKind, sent_at: float | None = None, retry_after: float | None = None
    ) -> None:
        """A throttling answer for ``kind``, to a request sent at ``sent_at``: slow down."""
        now = self.clock()
        names = limiters_of(self.policy, kind)
        with self._pace_lock:
            sending = {n: self.pacers[n].refused_at(now, self.policy.decrease) for n in names}
            grants = self.report(self._ME, names, sent_at, retry_after, sending, 1, now)
            for n, grant in grants.items():
                self.pacers[n].apply(grant, now)

    def took(self, kind: RequestKind) -> None:
        """The store answered a request of ``kind`` (the rate it takes, for the next cut)."""
        now = self.clock()
        with self._pace_lock:
            for n in limiters_of(self.policy, kind):
                self.pacers[n].took(now)

    def current_rates(self) -> dict[str, float | None]:
        """The rates in force now, by kind (they move in adaptive mode)."""
        now = self.clock()
        with self._lock:
            out: dict[str, float | None] = {"all": None, "read": None, "write": None, "list": None}
            out.update({k: a.law.rate(now) for k, a in self.allocators.items()})
            return out

    def state(self, where: str = "this process", messages: int | None = None) -> BudgetState:
        """What this budget enforces now, for people (see :func:`throttle_state`)."""
        now = self.clock()
        with self._lock:
            states = {k: a.state(now) for k, a in self.allocators.items()}
        rates: dict[str, float | None] = {"all": None, "read": None, "write": None, "list": None}
        rates.update({k: s.law["rate"] for k, s in states.items()})
        # The rate people want to see: of those cut, the one that binds (the lowest).
        cut = [s for s in states.values() if s.law["cut_ago"] is not None]
        law = min(cut, key=lambda s: s.law["rate"] or math.inf).law if cut else {}
        return BudgetState(
            store=self.scope,
            where=where,
            policy=self.policy,
            rates=rates,
            cuts=sum(a.law.cuts for a in self.allocators.values()),
            idle=now - self.last_used,
            last_cut=law,
            processes=max((s.leases for s in states.values()), default=0),
            messages=messages if messages is not None else 0,
        )


async def sit_out_pauses(
    pacers: Mapping[Limiter, Pacer],
    names: Iterable[Limiter],
    lock: threading.Lock,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Wait out a ``Retry-After`` that arrived while a booked request slept."""
    while True:
        with lock:
            now = clock()
            left = max((p.paused(now) for n in names if (p := pacers.get(n))), default=0.0)
        if left <= 0:
            return
        await asyncio.sleep(left)


@dataclass(frozen=True)
class BudgetState:
    """One budget's state: the rates in force for one store and policy.

    Attributes
    ----------
    store : str
        The store the budget meters.
    where : str
        ``"cluster"`` (enforced by the scheduler for every worker) or
        ``"this process"``.
    policy : Throttle
        The policy it enforces.
    rates : dict
        Requests per second in force now, by kind (``all``, ``read``, ``write``,
        ``list``; None is unlimited). Adaptive budgets move them.
    cuts : int
        How many times throttling answers cut a rate.
    idle : float
        Seconds since a request last booked a slot.
    last_cut : dict
        The rate cut last (empty if none was): ``rate`` in force,
        ``configured``, ``cut_ago`` seconds, the ``refused`` rate and the rate
        it was ``cut_to``, ``back_in`` (seconds until the recovery reaches the
        configured rate; None once there) and ``paused_for`` (a Retry-After).
    processes : int
        Processes holding a lease of the budget.
    messages : int
        Lease requests the scheduler answered (cluster budgets).
    """

    store: str
    where: str
    policy: Throttle
    rates: dict[str, float | None]
    cuts: int
    idle: float
    last_cut: dict[str, float | None] = field(default_factory=dict)
    processes: int = 0
    messages: int = 0

    @property
    def recovering(self) -> bool:
        """Whether a cut rate is climbing back."""
        return self.last_cut.get("back_in") is not None

    def _row(self) -> dict[str, str]:
        def r(now: float | None, configured: float | None) -> str:
            if now is None:
                return "∞"
            if configured is not None and not math.isclose(now, configured):
                return f"{now:,.0f}/s of {configured:,.0f}"
            return f"{now:,.0f}/s"

        p = self.policy
        configured = {
            "all": p.rate,
            "read": p.read_rate,
            "write": p.write_rate,
            "list": p.list_rate,
        }
        return {
            "store": self.store,
            "where": self.where,
            **{k: r(self.rates.get(k), configured[k]) for k in configured},
            "last cut": describe_cut(self.last_cut),
            "recovery": describe_recovery(self.last_cut),
            "processes": str(self.processes),
            "in flight": str(p.max_inflight),
            "last used": f"{self.idle:,.0f} s ago",
        }


def describe_cut(law: Mapping[str, float | None]) -> str:
    """``"2.1 s ago, 90 → 63/s"``: the last cut of a rate, for people."""
    ago, refused, to = law.get("cut_ago"), law.get("refused"), law.get("cut_to")
    if ago is None or refused is None or to is None:
        return "none"
    return f"{ago:,.1f} s ago, {refused:,.0f} → {to:,.0f}/s"


def describe_recovery(law: Mapping[str, float | None]) -> str:
    """``"63/s, back to 90 in 0.8 s"``: a recovery in progress, for people."""
    parts = []
    if law.get("paused_for"):
        parts.append(f"paused {law['paused_for']:,.1f} s (Retry-After)")
    back, rate, configured = law.get("back_in"), law.get("rate"), law.get("configured")
    if back is not None and rate is not None:
        target = f"{configured:,.0f}/s" if configured is not None else "unlimited"
        parts.append(f"{rate:,.0f}/s, back to {target} in {back:,.1f} s")
    return "; ".join(parts) or "-"


@dataclass(frozen=True)
class ThrottleState:
    """Every request budget in force: a table in Jupyter and in a terminal."""

    budgets: tuple[BudgetState, ...]

    def __repr__(self) -> str:
        return text_table([b._row() for b in self.budgets]) or "no request budget in use"

    def _repr_html_(self) -> str:
        return html_table([b._row() for b in self.budgets]) or "<p>no request budget in use</p>"


#: This process's budgets, by policy and scope (in the current runtime).
_BUDGETS: Slot[Registry[str, Budget]] = Slot("io.budget.budgets", Registry)


class RemoteBudget(Protocol):
    """A budget that something beyond this process enforces (a cluster's scheduler)."""

    async def acquire(self, kind: RequestKind) -> float:
        """Wait until one request of ``kind`` may go; the seconds waited."""
        ...

    def throttled(self, kind: RequestKind, sent_at: float, retry_after: float | None) -> None:
        """Report a throttling answer to a request sent at ``sent_at`` (monotonic)."""
        ...


#: ``remote(policy, scope)``: the remote budget of this process, or None.
type RemoteBudgets = Callable[[Throttle, str], RemoteBudget | None]


def local_states() -> list[BudgetState]:
    """Where each of this process's budgets stands."""
    return [b.state() for b in runtime.current().get(_BUDGETS).values()]


def budget_for(policy: Throttle, scope: str = "") -> Budget:
    """The :class:`Budget` of this process for ``policy`` within ``scope`` (e.g. a store)."""
    key = tokenize(policy, scope)
    return runtime.current().get(_BUDGETS).setdefault(key, lambda: Budget(policy, scope))
