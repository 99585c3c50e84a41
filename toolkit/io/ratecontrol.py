"""How a request budget paces, adapts and is shared: pure arithmetic on a given clock.

Three pieces, none of which reads a clock or knows of processes, so the same
code runs in one process, in a ``distributed`` cluster (the scheduler holds the
:class:`Allocator`, each worker a :class:`Pacer`) and in the discrete-event
model of :mod:`toolkit.testing.ratesim`:

:class:`RateLaw`
    The rate in force: the configured rate, cut when the store answers
    "slow down" and recovered along a cubic curve.
:class:`Allocator`
    Divides the rate in force among the processes that send, max-min fair by
    what each asks for, as leases renewed every half second or so.
:class:`Pacer`
    Spaces one process's requests by its lease: one send per slot of a grid at
    the granted rate, so the cluster's sum stays smooth.

The control law
---------------
A throttling answer (503 SlowDown, 429) to a request sent after the last cut,
at least ``cooldown`` seconds after it, cuts the rate to ``β·w``, where ``w`` is
the rate the store refused: the lower of the rate in force and the rate the
processes were sending (in one process, at most ``1 / β`` times what the store
answered over the last second: :meth:`Pacer.refused_at`). ``t`` seconds after the
cut the rate is::

    r(t) = w · (1 + c · (t - K)³),   c = (1 - β) / K³

which is CUBIC's window (RFC 8312) in requests per second: concave from ``β·w``
back to ``w`` in ``K`` seconds, flat around ``w`` (where the store's real limit
was), then convex, probing ever faster for more (3.4 ``w`` at ``K + 2`` s). It is
capped at the configured rate; with none, the budget is unlimited again once
``r`` passes 64 ``w``. The constants: ``β = 0.7`` (``Throttle.decrease``) and
``K = 1 s`` (``Throttle.recovery``). A ``Retry-After`` answer stops every send
of the budget until it has passed.

Why leases of a rate, not slots
-------------------------------
Booking slots from a central place costs a message per batch of slots; at
1,000 processes sharing 3,000 requests per second each process's share is 3/s,
so a batch is either a few slots (thousands of messages per second) or seconds
of budget held by one process. A lease is a rate for a period: one message per
process per period, whatever the rate, and the period grows with the number of
processes so that the messages stay under ``MAX_MESSAGES`` per second. A lease
that is not renewed expires, so a process that dies cannot hold budget; the
scheduler also releases it at once when it learns of the death. While leases
are long (many processes), a small reserve of two fair shares stays
unallocated, so that a process that starts sending gets its share at once
rather than when the others next renew.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_MESSAGES",
    "THROTTLED_DOUBLINGS",
    "Allocator",
    "AllocatorState",
    "Grant",
    "Pacer",
    "RateLaw",
    "fair_shares",
    "renew_period",
]

#: A retry after a throttling answer backs off exponentially only this many times: the
#: budget's pacing, already cut, spaces the retries; more backoff only idles the senders.
THROTTLED_DOUBLINGS = 2
#: Target ceiling of lease messages per second, whatever the number of processes.
MAX_MESSAGES = 350.0
#: Shortest lease period, seconds: how fast a changed share reaches every process.
RENEW = 0.5
#: How often a process below its fair share asks again, seconds.
_STARVING_RENEW = 0.1
#: How late a process among several may use a slot: the cluster's bursts stay within
#: this many seconds of its rate.
_LATE = 0.003
#: Golden-ratio step of the slot phases (a low-discrepancy sequence).
_PHI = (math.sqrt(5) - 1) / 2


def renew_period(processes: int) -> float:
    """Seconds between a process's lease renewals, for ``processes`` senders."""
    return max(RENEW, processes / MAX_MESSAGES)


# --------------------------------------------------------------------------- the law


@dataclass
class RateLaw:
    """The rate in force for one budget: cut on throttling, recovered along a cubic.

    Parameters
    ----------
    configured : float or None
        The configured rate (None: unlimited until the store says otherwise).
    adaptive : bool
        Whether throttling answers cut the rate at all.
    decrease : float
        β: a cut leaves this fraction of the refused rate.
    recovery : float
        K: seconds from a cut back to the refused rate.
    cooldown : float
        Least seconds between two cuts.
    min_rate : float
        The rate never goes below this.
    """

    configured: float | None
    adaptive: bool = True
    decrease: float = 0.7
    recovery: float = 1.0
    cooldown: float = 0.2
    min_rate: float = 1.0
    refused: float | None = None  # w: the rate the store last refused
    cut_at: float = -math.inf
    cuts: int = 0
    paused_until: float = -math.inf

    def rate(self, now: float) -> float | None:
        """Requests per second in force at ``now`` (None: unlimited)."""
        w = self.refused
        if w is None:
            return self.configured
        t = now - self.cut_at
        k = self.recovery
        r = w * (1.0 + (1.0 - self.decrease) / k**3 * (t - k) ** 3)
        r = max(self.min_rate, r)
        if self.configured is not None:
            return min(self.configured, r)
        if r > 64 * w:  # far past anything refused: unlimited again
            self.refused = None
            return None
        return r

    def recovering(self, now: float) -> bool:
        """Whether a cut is still being recovered from."""
        r = self.rate(now)
        if self.refused is None or r is None:
            return False
        return self.configured is None or r < self.configured

    def time_to(self, target: float, now: float) -> float:
        """Seconds from ``now`` until the recovery reaches ``target`` requests per second."""
        w = self.refused
        if w is None:
            return 0.0
        k, beta = self.recovery, self.decrease
        x = (target / w - 1.0) * k**3 / (1.0 - beta)
        t = k + math.copysign(abs(x) ** (1 / 3), x)
        return max(0.0, self.cut_at + t - now)

    def cut(
        self,
        now: float,
        sent_at: float | None,
        used: float | None = None,
        retry_after: float | None = None,
    ) -> bool:
        """A throttling answer at ``now`` to a request sent at ``sent_at``; True if it cut.

        ``used`` is the rate the senders say the store refused. Answers to requests
        sent before the last cut are ignored: they went out at the old rate, and
        reacting to each would collapse the rate for one burst.
        """
        if retry_after:
            self.paused_until = max(self.paused_until, now + retry_after)
        if not self.adaptive:
            return False
        if sent_at is not None and sent_at < self.cut_at:
            return False
        if now - self.cut_at < self.cooldown:
            return False
        current = self.rate(now)
        candidates = [x for x in (current, used) if x is not None and x > 0]
        # Nothing known (no limit, nothing measured): start low, the recovery climbs fast.
        w = min(candidates) if candidates else 20.0
        self.refused = max(self.min_rate, w)
        self.cut_at = now
        self.cuts += 1
        return True

    def describe(self, now: float) -> dict[str, float | None]:
        """The law's state for people: in force, configured, last cut, recovery."""
        rate = self.rate(now)
        out: dict[str, float | None] = {
            "rate": rate,
            "configured": self.configured,
            "cut_ago": None if self.cuts == 0 else now - self.cut_at,
            "refused": self.refused,
            "cut_to": None if self.refused is None else self.refused * self.decrease,
            "back_in": None,
            "paused_for": max(0.0, self.paused_until - now) or None,
        }
        if self.recovering(now):
            target = self.configured if self.configured is not None else 64 * (self.refused or 0)
            out["back_in"] = self.time_to(target, now)
        return out


# --------------------------------------------------------------------------- shares


def fair_shares(total: float, wants: Mapping[str, float]) -> dict[str, float]:
    """Max-min fair division of ``total`` among ``wants`` (inf: as much as possible).

    Each gets the lesser of what it wants and an equal part of what the smaller
    wants leave.
    """
    out: dict[str, float] = {}
    left, n = total, len(wants)
    for who, want in sorted(wants.items(), key=lambda kv: kv[1]):
        give = min(want, left / n)
        out[who] = give
        left -= give
        n -= 1
    return out


@dataclass(frozen=True)
class Grant:
    """A lease of a rate: one process may send ``rate`` requests per second until ``until``.

    Times are on the allocator's clock. Slots sit on the grid ``t`` where
    ``(t - epoch) * rate - phase`` is an integer, so equal leases interleave.
    """

    rate: float | None
    phase: float
    until: float
    renew_at: float
    paused_until: float = -math.inf
    headroom: bool = False  # the rate is what was asked for, and more is free
    late: float = math.inf  # how late a slot may still be used, seconds
    starving: bool = False  # less than the fair share, until the others renew
    epoch: float = 0.0  # the grid's origin

    def as_dict(self) -> dict[str, Any]:
        """Plain values for a message."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Grant:
        """From :meth:`as_dict`."""
        return cls(**d)


@dataclass
class _Lease:
    rate: float
    want: float
    index: int
    until: float
    sending: float | None = None
    issued: float = -math.inf


@dataclass(frozen=True)
class AllocatorState:
    """Where one allocator stands: the law's state and the leases out."""

    law: dict[str, float | None]
    leases: int
    granted: float | None
    messages: int


@dataclass
class Allocator:
    """Divides one :class:`RateLaw`'s rate among processes, as renewable leases.

    Parameters
    ----------
    law : RateLaw
        The rate to divide.
    """

    law: RateLaw
    leases: dict[str, _Lease] = field(default_factory=dict)
    messages: int = 0
    _epoch: float = 0.0  # where the grids of the current fair share start
    _epoch_rate: float | None = None

    def _expire(self, now: float) -> None:
        for who in [w for w, lease in self.leases.items() if lease.until < now]:
            del self.leases[who]

    def remove(self, who: str) -> None:
        """``who`` is gone (its process died or left): its lease is free at once."""
        self.leases.pop(who, None)

    def used(self) -> float:
        """The rate the leases allow and their holders want: what is really being sent."""
        return sum(
            lease.rate if lease.sending is None else min(lease.rate, lease.sending)
            for lease in self.leases.values()
        )

    def request(
        self,
        who: str,
        want: float | None,
        now: float,
        processes: int,
        sending: float | None = None,
    ) -> Grant:
        """``who`` wants ``want`` requests per second (None: unknown, new): its lease.

        ``processes`` is how many processes could send (the cluster's workers):
        it sets the lease period, the reserve, and a newcomer's first lease.
        ``sending`` is the rate ``who`` is really sending at, when known.
        """
        self.messages += 1
        return self._lease(who, want, now, processes, sending)

    def _lease(
        self, who: str, want: float | None, now: float, processes: int, sending: float | None
    ) -> Grant:
        self._expire(now)
        processes = max(processes, len(self.leases) + (who not in self.leases), 1)
        period = renew_period(processes)
        total = self.law.rate(now)
        paused = self.law.paused_until
        if total is None:
            self.leases.pop(who, None)
            return Grant(None, 0.0, now + 2 * period, now + period, paused)
        lease = self.leases.get(who)
        # Fair shares of what may be allocated; the reserve is there to be taken.
        allocatable = self.allocatable(now, processes) or total
        asked = want is not None
        if processes == 1:
            want = math.inf  # alone: the whole rate
        elif want is None:  # a first lease: an equal part, until it says what it needs
            want = allocatable / processes if lease is None else lease.want
        wants = {w: lease.want for w, lease in self.leases.items()}
        wants[who] = want
        fair = fair_shares(allocatable, wants)[who]
        held = sum(lease.rate for w, lease in self.leases.items() if w != who)
        rate = max(min(fair, total - held), self.law.min_rate / processes, 1e-3)
        index = lease.index if lease is not None else self._free_index()
        if want == math.inf and not math.isclose(fair, self._epoch_rate or 0.0, rel_tol=1e-9):
            # A new fair share: its grids start where every grid of the old share
            # has a slot at its phase, so old and new leases stay interleaved.
            if self._epoch_rate is not None:
                self._epoch += math.ceil((now - self._epoch) * self._epoch_rate) / self._epoch_rate
            self._epoch_rate = fair
        self.leases[who] = _Lease(rate, want, index, now + 2 * period, sending, now)
        starving = rate < 0.95 * fair
        # A first lease is renewed early, by a part of the period that its index sets:
        # processes that started together then ask again spread evenly over a period.
        first = lease is None and processes > 1
        spread = period * max(0.1, (index * _PHI) % 1.0) if first else period
        renew = min(spread, _STARVING_RENEW) if starving else spread
        # Asked for less than its fair share, and more is free: may ask again early.
        headroom = (
            asked
            and math.isfinite(want)
            and total - held - rate > 0.05 * rate
            and want < 0.95 * fair_shares(allocatable, {**wants, who: math.inf})[who]
        )
        return Grant(
            rate=rate,
            phase=(index * _PHI) % 1.0,
            until=now + 2 * period,
            renew_at=now + renew,
            paused_until=paused,
            headroom=headroom,
            late=math.inf if processes == 1 else _LATE,
            starving=starving,
            epoch=self._epoch,
        )

    def throttled(
        self,
        who: str,
        sent_at: float | None,
        now: float,
        processes: int,
        retry_after: float | None = None,
        sending: float | None = None,
    ) -> Grant:
        """``who`` got a throttling answer to a request sent at ``sent_at``: its new lease.

        ``sending`` is the rate ``who`` says the store refused: a worker's, the
        rate it sends; a process's own budget's, :meth:`Pacer.refused_at`.
        """
        self.messages += 1
        self._expire(now)
        lease = self.leases.get(who)
        if lease is not None and sending is not None:
            lease.sending = sending
        if lease is not None and lease.issued < self.law.cut_at:
            # Sent under a lease from before the last cut: at the old rate, like a
            # request sent before it. It gets the new lease, and cuts nothing more.
            sent_at = lease.issued if sent_at is None else min(sent_at, lease.issued)
        used = self.used() + ((sending or 0.0) if lease is None else 0.0)
        before = self.law.rate(now)
        if self.law.cut(now, sent_at, used or None, retry_after) and before:
            # Every lease shrinks alike; the others hear of it when they renew, this
            # one now. Booked as shrunk, so this one's share is not what they free.
            after = self.law.rate(now) or before
            for x in self.leases.values():
                x.rate *= after / before
        want = None if lease is None else lease.want
        return self._lease(who, want, now, processes, sending)

    def allocatable(self, now: float, processes: int) -> float | None:
        """The rate leases may add up to (None: unlimited).

        The rate in force, less a reserve of two fair shares while leases are
        long, for processes that start sending.
        """
        total = self.law.rate(now)
        if total is not None and renew_period(processes) > RENEW:
            total *= 1.0 - min(0.05, 2.0 / processes)
        return total

    def _free_index(self) -> int:
        taken = {lease.index for lease in self.leases.values()}
        return next(i for i in range(len(taken) + 1) if i not in taken)

    def state(self, now: float) -> AllocatorState:
        """The law's state, the leases out and the messages answered."""
        self._expire(now)
        rate = self.law.rate(now)
        granted = None if rate is None else sum(x.rate for x in self.leases.values())
        return AllocatorState(self.law.describe(now), len(self.leases), granted, self.messages)


# --------------------------------------------------------------------------- pacing


@dataclass
class Pacer:
    """One process's sends under its lease: a slot of the lease's grid per request.

    Not thread-safe: its owner serialises calls. Times are on this process's
    clock; ``offset`` converts them to the allocator's (``theirs = ours + offset``).
    """

    grant: Grant | None = None
    offset: float = 0.0
    _last: float = -math.inf  # the last slot booked, allocator clock
    _since: float = math.nan  # start of the demand window
    _taken: int = 0
    _waited: int = 0
    _recent: collections.deque[float] = field(default_factory=collections.deque)
    _took: collections.deque[float] = field(default_factory=collections.deque)
    _run: float = 0.0  # start of the current run of requests

    def needs_grant(self, now: float) -> bool:
        """Whether there is no lease in force (the first request must wait for one)."""
        g = self.grant
        return g is None or now + self.offset > g.until

    def due(self, now: float) -> bool:
        """Whether the lease should be renewed now.

        At its time, or early when this process asked for less than it now
        needs and more is free (its requests wait for slots).
        """
        g = self.grant
        if g is None or now + self.offset >= g.renew_at:
            return True
        held_back = self._waited >= 3 and self._waited > 0.1 * self._taken
        return g.headroom and held_back and now - self._since > 0.05

    def apply(self, grant: Grant, now: float, offset: float | None = None) -> None:
        """Take a new lease at ``now``; the demand window starts again."""
        if offset is not None:
            self.offset = offset
        self.grant = grant
        self._since, self._taken, self._waited = now, 0, 0

    def paused(self, now: float) -> float:
        """Seconds left of a pause (``Retry-After``) that began after slots were booked."""
        g = self.grant
        return 0.0 if g is None else max(0.0, g.paused_until - self.offset - now)

    def take(self, now: float, patient: bool = True) -> float | None:
        """Book the next slot; the local time to send at (``>= now``).

        None when the next slot lies beyond the lease's renewal: wait for the
        renewal, then ask again (a ``patient=False`` caller gets the far slot).
        Booking far ahead would lock in the rate of the moment: requests booked
        seconds ahead at a cut rate would still sleep when the rate is back.
        """
        g = self.grant
        theirs = now + self.offset
        start = max(theirs, g.paused_until) if g is not None else theirs
        if g is None or g.rate is None:
            self._count(now, waited=start > theirs)
            return start - self.offset
        step = 1.0 / g.rate
        # A slot may be used a little late (all of one, alone), so that an idle process
        # sends at once; among many, the lateness of each adds up to a burst. At least
        # half a step after the last slot: on the same grid that is the next slot, and
        # a grid moved by a new lease loses no slot.
        earliest = max(self._last + 0.5 * step, start - min(step, g.late))
        origin = g.epoch + g.phase * step
        k = math.ceil((earliest - origin) / step - 1e-9)
        slot = origin + k * step
        if patient and slot > g.renew_at:
            self._taken += 1  # an ask held back: this process wants more
            self._waited += 1
            return None
        self._last = slot
        send = max(slot, start)
        self._count(now, waited=send > theirs + 1e-3)
        return send - self.offset

    def _count(self, now: float, waited: bool) -> None:
        self._taken += 1
        self._waited += waited
        if math.isnan(self._since):
            self._since = now
        self.sending(now)
        if not self._recent:
            self._run = now
        self._recent.append(now)

    def sending(self, now: float) -> float:
        """Requests per second over the last second (or since this run began, if later).

        A run's first few requests, at once, must not read as a rate of a few
        per second.
        """
        return self._per_second(self._recent, now)

    def took(self, now: float) -> None:
        """The store answered one of this process's requests (not "slow down") at ``now``."""
        q = self._took
        q.append(now)
        while q[0] < now - 1.0:  # the last second's are all that is read
            q.popleft()

    def taken(self, now: float) -> float:
        """Requests per second the store answered over the last second (or this run)."""
        return self._per_second(self._took, now)

    def refused_at(self, now: float, decrease: float) -> float:
        """The rate a throttling answer says the store refused: what a cut starts from.

        The rate sent, but at most ``1 / decrease`` times what the store
        answered. Near the store's limit the two agree and the cut leaves
        ``decrease`` of the rate sent (CUBIC's). Far above it the rate sent
        is no measure of the store's: it counts the refused requests and their
        retries, and cuts from it closed in on the limit only by ``decrease``
        each ``cooldown`` against a recovery that climbs meanwhile (4 s of
        refusals from S3's default 5,500 reads a second down to a store's 30,
        and a request refused 20 times in them). Then the cut leaves what the
        store took. With nothing answered yet, the rate sent.

        A process's own budget cuts from it. A cluster's coordinator still cuts
        from the rates its workers send: from this, the budget benchmark's four
        workers against a store allowing 100 requests a second delivered 61/s
        instead of 81/s (the discrete-event model does not show why).
        """
        sent, taken = self.sending(now), self.taken(now)
        return min(sent, taken / decrease) if taken > 0 else sent

    def _per_second(self, q: collections.deque[float], now: float) -> float:
        while q and q[0] < now - 1.0:
            q.popleft()
        return len(q) / min(1.0, max(0.05, now - self._run))

    def want(self, now: float) -> float:
        """Requests per second this process would send: ``inf`` if the lease held it back."""
        elapsed = now - self._since
        if math.isnan(elapsed) or elapsed <= 0 or self._taken == 0:
            return 1.0
        if self._waited > 0.1 * self._taken:
            return math.inf
        return 1.5 * self._taken / elapsed + 1.0
