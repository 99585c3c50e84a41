"""A discrete-event model of a cluster sharing one request budget.

The scheduler's :class:`~toolkit.io.ratecontrol.Allocator`, one
:class:`~toolkit.io.ratecontrol.Pacer` per worker and a store that answers
``503 SlowDown`` above its own token-bucket limit: the same code the real
coordinator and workers run, on a simulated clock, so that 1,000 workers take
a second of CPU, deterministically. Lease messages take ``rpc`` seconds each
way; requests take ``latency`` seconds; each worker keeps at most
``inflight`` requests in flight and always has more to send (a saturated
write), as toolkit's store wrappers do.

Used by the test suite (the claims of :mod:`toolkit.io.ratecontrol` at
N = 10, 100 and 1,000) and by ``./dev bench --only cloud`` (the table).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from toolkit.io.budget import law_for
from toolkit.io.ratecontrol import THROTTLED_DOUBLINGS, Allocator, Grant, Pacer
from toolkit.io.throttle import Throttle

__all__ = ["Outcome", "Scenario", "simulate"]


@dataclass(frozen=True)
class Scenario:
    """One run of the model.

    Parameters
    ----------
    workers : int
        Worker processes sending from the start.
    rate : float
        The budget's configured rate (requests per second, whole cluster).
    limit : float or callable
        The store's limit, requests per second, or a function of time.
    burst : float, optional
        The store's bucket, in requests (default: 0.1 s of the limit, at least 10).
    duration : float
        Simulated seconds.
    latency, rpc : float
        Seconds per request, and per lease message each way.
    inflight : int, optional
        Requests in flight per worker (default: the cluster's 64 split, at least 2).
    die : tuple, optional
        ``(worker, time)``: that worker dies at that time, holding its lease.
    noticed : float or None
        Seconds until the scheduler notices a death (None: never; the lease expires).
    join : float, optional
        A new worker starts sending at this time.
    seed : int
        Seed of the backoff draws.
    policy : Throttle, optional
        The control law's constants (its rates are ignored: ``rate`` is the rate).
    """

    workers: int
    rate: float
    limit: float | Callable[[float], float] = math.inf
    burst: float | None = None
    duration: float = 10.0
    latency: float = 0.02
    rpc: float = 0.002
    inflight: int | None = None
    die: tuple[int, float] | None = None
    noticed: float | None = 0.05
    join: float | None = None
    seed: int = 0
    policy: Throttle | None = None


@dataclass
class Outcome:
    """What the model did: every send, every lease message, the newcomer's leases."""

    scenario: Scenario
    sends: np.ndarray  # times
    ok: np.ndarray  # bool per send
    who: np.ndarray  # worker per send
    messages: np.ndarray  # times the scheduler answered a message
    newcomer: list[tuple[float, float, float]] = field(default_factory=list)
    """The newcomer's leases: (time, granted rate, its fair share then)."""

    def delivered(self, t0: float, t1: float) -> float:
        """Successful requests per second over ``[t0, t1)``."""
        m = (self.sends >= t0) & (self.sends < t1) & self.ok
        return float(m.sum()) / (t1 - t0)

    def throttled(self, t0: float = 0.0, t1: float = math.inf) -> float:
        """The fraction of requests answered 503 over ``[t0, t1)``."""
        m = (self.sends >= t0) & (self.sends < t1)
        return float((~self.ok[m]).sum()) / max(1, int(m.sum()))

    def peak(self, t0: float, t1: float, window: float = 0.1) -> float:
        """The highest rate of sends (answered or not) over any ``window`` in ``[t0, t1)``."""
        t = np.sort(self.sends[(self.sends >= t0) & (self.sends < t1)])
        if len(t) == 0:
            return 0.0
        ends = np.searchsorted(t, t + window - 1e-12, side="left")
        return float((ends - np.arange(len(t))).max()) / window

    def message_rate(self, t0: float, t1: float) -> float:
        """Lease messages per second the scheduler answered over ``[t0, t1)``."""
        m = (self.messages >= t0) & (self.messages < t1)
        return float(m.sum()) / (t1 - t0)

    def share_after_join(self, fraction: float = 0.9) -> float:
        """Seconds from the newcomer's start until its lease is ``fraction`` of its fair share."""
        join = self.scenario.join
        assert join is not None, "the scenario has no newcomer"
        for t, rate, fair in self.newcomer:
            if rate >= fraction * fair:
                return t - join
        return math.inf

    def follows(self, t_change: float, target: float, t_end: float, within: float = 0.15) -> float:
        """Seconds after ``t_change`` until the delivered rate follows ``target``.

        That is, until the rate over every later 2 s window (to ``t_end``) is
        within ``within`` of ``target``: the windows average out the recovery's
        probing around a store's limit.
        """
        starts = np.arange(t_change, t_end - 2.0 + 1e-9, 0.1)
        good = [abs(self.delivered(t, t + 2.0) - target) <= within * target for t in starts]
        for i in range(len(good)):
            if all(good[i:]):
                return float(starts[i] - t_change + 2.0)
        return math.inf

    def peak_messages(self, t0: float, t1: float) -> float:
        """The most lease messages the scheduler answered in any 1 s within ``[t0, t1)``."""
        m = np.sort(self.messages[(self.messages >= t0) & (self.messages < t1)])
        if len(m) == 0:
            return 0.0
        return float((np.searchsorted(m, m + 1.0 - 1e-12) - np.arange(len(m))).max())


class _Store:
    def __init__(self, limit: float | Callable[[float], float], burst: float | None) -> None:
        self.limit = limit if callable(limit) else (lambda t, v=limit: v)
        self.burst = burst
        self.tokens: float | None = None
        self.stamp = 0.0

    def take(self, now: float) -> bool:
        rate = self.limit(now)
        if not math.isfinite(rate):
            return True
        cap = self.burst if self.burst is not None else max(10.0, 0.1 * rate)
        if self.tokens is None:
            self.tokens = cap
        self.tokens = min(cap, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Worker:
    def __init__(self, name: str, inflight: int) -> None:
        self.name = name
        self.pacer = Pacer()
        self.inflight = inflight
        self.busy = 0
        self.alive = True
        self.renewing = False
        self.waiting = 0  # requests waiting for a first lease
        self.reporting = False
        self.answered = -math.inf


def simulate(s: Scenario) -> Outcome:
    """Run the model of :class:`Scenario` ``s``."""
    rng = random.Random(s.seed)
    law = law_for(replace(s.policy or Throttle(), rate=s.rate), "all")
    alloc = Allocator(law)
    store = _Store(s.limit, s.burst)
    inflight = s.inflight or max(2, math.ceil(64 / s.workers))
    workers = [_Worker(f"w{i}", inflight) for i in range(s.workers)]
    newcomer = _Worker("new", inflight) if s.join is not None else None
    events: list[tuple[float, int, str, Any]] = []
    seq = itertools.count()
    sends: list[float] = []
    oks: list[bool] = []
    who: list[int] = []
    messages: list[float] = []
    out_new: list[tuple[float, float, float]] = []
    index = {w.name: i for i, w in enumerate(workers)}
    if newcomer is not None:
        index[newcomer.name] = len(workers)

    def at(t: float, kind: str, payload: Any) -> None:
        heapq.heappush(events, (t, next(seq), kind, payload))

    live = [len(workers)]  # workers sending now (the scheduler's count)

    def alive() -> int:
        return live[0]

    def lease(w: _Worker, now: float) -> None:
        if w.renewing:
            return
        w.renewing = True
        p = w.pacer
        want = None if p.grant is None else p.want(now)
        at(now + s.rpc, "lease", (w, want, p.sending(now)))

    def got(w: _Worker, grant: Grant, now: float) -> None:
        w.pacer.apply(grant, now)
        if w is newcomer:
            n = alive()
            fair = (alloc.allocatable(now, n) or math.inf) / n
            out_new.append((now, grant.rate or math.inf, fair))
        for _ in range(w.waiting):
            at(now, "book", (w, 0))
        w.waiting = 0

    def book(w: _Worker, now: float, attempt: int = 0) -> None:
        p = w.pacer
        if p.needs_grant(now):
            w.waiting += 1
            lease(w, now)
            return
        if p.due(now):
            lease(w, now)
        send = p.take(now)
        if send is None:  # a starving lease: ask again when it is renewed
            assert p.grant is not None
            if p.due(now):
                w.waiting += 1
            else:
                at(p.grant.renew_at - p.offset, "book", (w, attempt))
            return
        at(send, "send", (w, attempt))

    def start(w: _Worker, now: float) -> None:
        for _ in range(w.inflight):
            w.busy += 1
            book(w, now)

    for w in workers:
        start(w, 0.0)
    if s.die is not None:
        at(s.die[1], "die", workers[s.die[0]])
    if newcomer is not None and s.join is not None:
        newcomer.alive = False
        at(s.join, "join", newcomer)

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if now > s.duration:
            break
        if kind == "send":
            w, attempt = payload
            if not w.alive:
                continue
            ok = store.take(now)
            sends.append(now)
            oks.append(ok)
            who.append(index[w.name])
            at(now + s.latency, "answer", (w, ok, now, attempt))
        elif kind == "answer":
            w, ok, sent, attempt = payload
            if not w.alive:
                continue
            if ok:
                book(w, now)
                continue
            if not w.reporting and sent >= w.answered:
                w.reporting = True
                at(now + s.rpc, "report", (w, sent, w.pacer.sending(now)))
            # As toolkit's RetryStore: a short jittered pause, the budget paces the rest.
            delay = rng.uniform(0, min(5.0, 0.05 * 2 ** min(attempt, THROTTLED_DOUBLINGS)))
            at(now + delay, "retry", (w, attempt + 1))
        elif kind in ("retry", "book"):
            w, attempt = payload
            if w.alive:
                book(w, now, attempt)
        elif kind == "lease":
            w, want, sending = payload
            messages.append(now)
            g = alloc.request(w.name, want, now, alive(), sending)
            at(now + s.rpc, "granted", (w, g))
        elif kind == "report":
            w, sent, sending = payload
            messages.append(now)
            g = alloc.throttled(w.name, sent, now, alive(), None, sending)
            at(now + s.rpc, "reported", (w, g))
        elif kind in ("granted", "reported"):
            w, g = payload
            if kind == "granted":
                w.renewing = False
            else:
                w.reporting = False
                w.answered = now
            if w.alive:
                got(w, g, now)
        elif kind == "die":
            w = payload
            w.alive = False
            live[0] -= 1
            if s.noticed is not None:
                at(now + s.noticed, "gone", w)
        elif kind == "gone":
            w = payload
            alloc.remove(w.name)
        elif kind == "join":
            w = payload
            w.alive = True
            live[0] += 1
            start(w, now)

    return Outcome(
        s,
        np.asarray(sends),
        np.asarray(oks, dtype=bool),
        np.asarray(who, dtype=int),
        np.asarray(messages),
        out_new,
    )
