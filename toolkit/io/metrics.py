"""I/O metrics: what the store wrappers saw, mergeable across tasks and processes.

:class:`IOMetrics` counts requests by kind, bytes, throttling answers, errors,
retries and time spent waiting or backing off, and keeps a log-bucketed latency
histogram, so that percentiles survive merging. Each write task carries its
own and returns it as a plain dict; the report adds them up. A process also
keeps running totals per store (:func:`process_metrics`). Under
``distributed``, tasks publish their figures through distributed's fine
performance metrics, so they appear on the dashboard.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self

from toolkit import runtime
from toolkit.runtime import Registry, Slot

__all__ = [
    "Counters",
    "IOMetrics",
    "live_metrics",
    "process_metrics",
    "process_totals",
    "snapshot",
]

# Quarter-octave latency buckets from 50 µs: bucket i holds [edge(i-1), edge(i)).
_LAT_MIN = 50e-6
_LAT_BUCKETS = 96  # up to ~50 s × 2^4


def _bucket(seconds: float) -> int:
    if seconds <= _LAT_MIN:
        return 0
    return min(_LAT_BUCKETS - 1, 1 + int(4 * math.log2(seconds / _LAT_MIN)))


def _edge(i: int) -> float:
    return float(_LAT_MIN * 2.0 ** (i / 4))


@dataclass
class Counters:
    """Integer counters that many threads increment."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    _also: Counters | None = field(default=None, init=False, repr=False, compare=False)

    def add(self, **kw: float) -> None:
        """Thread-safe increment of the named counters (and of :meth:`tee`'s target)."""
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)
        if self._also is not None:
            self._also.add(**kw)

    def tee(self, also: Self) -> Self:
        """Count every later increment into ``also`` too, as it happens; returns self."""
        self._also = also
        return self

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_also")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()  # a copy gets its own lock
        self._also = None


@dataclass
class IOMetrics(Counters):
    """Requests a store stack made and what happened to them.

    Attributes
    ----------
    gets, sets, deletes, lists : int
        Requests sent, by kind (``gets`` includes existence checks). Every
        attempt counts, retries included, as the store would count them.
    bytes_read, bytes_written : int
        Payload bytes moved.
    throttled : int
        Throttling answers (503 SlowDown, 429).
    errors : int
        Other failed attempts (500s, resets, timeouts, final errors).
    retries : int
        Attempts repeated after a retryable error.
    backoff_seconds : float
        Time slept between retries, summed over the retries (they overlap).
    wait_seconds : float
        Time requests waited for the rate budget before being sent, summed over
        the requests: many wait at once, so it can exceed the run's wall time
        many times over (divided by a run's duration, it is the mean number of
        requests waiting).
    failed : int
        Requests that failed for good (retries exhausted, or a final error).
    latency : list of int
        Histogram of request latencies (quarter-octave buckets from 50 µs).
    """

    gets: int = 0
    sets: int = 0
    deletes: int = 0
    lists: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    throttled: int = 0
    errors: int = 0
    retries: int = 0
    backoff_seconds: float = 0.0
    wait_seconds: float = 0.0
    failed: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * _LAT_BUCKETS)

    @property
    def total(self) -> int:
        """All requests sent."""
        return self.gets + self.sets + self.deletes + self.lists

    def observe(self, seconds: float) -> None:
        """Record one request's latency."""
        b = _bucket(seconds)
        with self._lock:
            self.latency[b] += 1
        if isinstance(self._also, IOMetrics):
            self._also.observe(seconds)

    def percentile(self, q: float) -> float:
        """Latency percentile ``q`` in [0, 100] (the upper edge of its bucket), seconds."""
        n = sum(self.latency)
        if n == 0:
            return float("nan")
        rank = max(1, math.ceil(q / 100 * n))
        seen = 0
        for i, c in enumerate(self.latency):
            seen += c
            if seen >= rank:
                return _edge(i)
        return _edge(_LAT_BUCKETS - 1)  # pragma: no cover - rank <= n

    def as_dict(self) -> dict[str, Any]:
        """A plain, picklable dict (task results travel as these)."""
        with self._lock:
            out = {f.name: getattr(self, f.name) for f in fields(self) if f.name[0] != "_"}
            out["latency"] = list(self.latency)
            return out

    @classmethod
    def merged(cls, parts: Iterable[Mapping[str, Any] | IOMetrics]) -> IOMetrics:
        """The sum of many metrics (dicts from :meth:`as_dict`, or instances)."""
        out = cls()
        for p in parts:
            d = p.as_dict() if isinstance(p, IOMetrics) else p
            for f in fields(cls):
                if f.name[0] == "_" or f.name == "latency" or f.name not in d:
                    continue
                setattr(out, f.name, getattr(out, f.name) + d[f.name])
            for i, c in enumerate(d.get("latency", ())):
                out.latency[i] += c
        return out

    def merge(self, other: Mapping[str, Any] | IOMetrics) -> None:
        """Add ``other`` into this one."""
        m = IOMetrics.merged([other])
        with self._lock:
            for f in fields(self):
                if f.name[0] == "_":
                    continue
                if f.name == "latency":
                    self.latency = [a + b for a, b in zip(self.latency, m.latency, strict=True)]
                else:
                    setattr(self, f.name, getattr(self, f.name) + getattr(m, f.name))

    def summary(self) -> dict[str, str]:
        """Human-readable figures, for reports.

        Times that requests spent backing off or waiting for the budget are
        sums over requests, which overlap: they are said to be, and the wait
        is also given per request, which compares with the latency.

        Examples
        --------
        >>> m = IOMetrics(gets=7_224, sets=1_200, retries=3, backoff_seconds=0.4,
        ...               wait_seconds=555.71)
        >>> for k, v in m.summary().items():
        ...     print(f"{k}: {v}")
        requests: GET 7,224, PUT 1,200
        latency: -
        throttled / errors: 0 / 0
        retries: 3 (0.40 s backing off, summed over them)
        waited for budget: 66.0 ms per request on average (555.71 s summed over 8,424 requests)
        """
        req = ", ".join(
            f"{k} {v:,}"
            for k, v in (
                ("GET", self.gets),
                ("PUT", self.sets),
                ("DELETE", self.deletes),
                ("LIST", self.lists),
            )
            if v
        )
        lat = (
            f"p50 {self.percentile(50) * 1e3:.1f} ms, p99 {self.percentile(99) * 1e3:.1f} ms"
            if sum(self.latency)
            else "-"
        )
        return {
            "requests": req or "-",
            "latency": lat,
            "throttled / errors": f"{self.throttled:,} / {self.errors:,}",
            "retries": (
                f"{self.retries:,} ({self.backoff_seconds:,.2f} s backing off, summed over them)"
                if self.retries
                else "0"
            ),
            "waited for budget": self._waited(),
        }

    def _waited(self) -> str:
        # Requests wait at once: summed, their waits exceed the run's wall time many
        # times over, so the sum is said to be one, beside the mean per request.
        if not self.wait_seconds:
            return "-"
        summed = f"{self.wait_seconds:,.2f} s summed over {self.total:,} requests"
        if not self.total:  # figures without their requests (merged from elsewhere)
            return summed
        return f"{_duration(self.wait_seconds / self.total)} per request on average ({summed})"


def _duration(seconds: float) -> str:
    """A short time: milliseconds below a second."""
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


#: This process's running totals, per store (in the current runtime).
_PROCESS: Slot[Registry[str, IOMetrics]] = Slot("io.metrics.process", Registry)


def process_metrics(scope: str) -> IOMetrics:
    """The running totals of this process for one store (``scope``), created on first use."""
    return runtime.current().get(_PROCESS).setdefault(scope, IOMetrics)


def live_metrics(scope: str) -> IOMetrics:
    """New metrics (one task's, one phase's) that also count into the running totals of ``scope``.

    The totals move as requests happen, not when the work ends: the dashboard's
    toolkit I/O page follows them.
    """
    return IOMetrics().tee(process_metrics(scope))


def process_totals() -> dict[str, dict[str, Any]]:
    """The running totals of this process, per store, as plain dicts (:meth:`IOMetrics.as_dict`)."""
    items = runtime.current().get(_PROCESS).items()
    return {scope: m.as_dict() for scope, m in items}


def snapshot(scope: str | None) -> list[dict[str, Any]]:
    """The running totals of this process, for one store (``scope``) or all."""
    return [d for k, d in process_totals().items() if scope is None or k == scope]
