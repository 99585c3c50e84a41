"""The arithmetic of toolkit's dashboard page: running totals of many processes into rates.

Pure code (no ``distributed``, no Bokeh): what a process reports, and how the
scheduler turns rounds of reports into totals and rates per store.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from toolkit.io.metrics import IOMetrics, process_totals

__all__ = ["HEARTBEAT_KEY", "PAGE", "RATE_FIELDS", "IOFeed", "RatePoint", "process_report"]

#: The page's path under the dashboard's prefix.
PAGE = "/toolkit-io"
#: The key of the report in a worker's heartbeat metrics.
HEARTBEAT_KEY = "toolkit-io"
#: The counters shown as rates (per second); ``requests`` is their sum of kinds.
RATE_FIELDS = (
    "requests",
    "bytes_read",
    "bytes_written",
    "throttled",
    "errors",
    "retries",
    "backoff_seconds",
    "wait_seconds",
)
_KINDS = ("gets", "sets", "deletes", "lists")


def process_report(worker: Any = None) -> dict[str, Any]:
    """What a heartbeat carries: who we are, and our running totals per store."""
    return {"process": f"{socket.gethostname()}:{os.getpid()}", "stores": process_totals()}


def _counters(d: Mapping[str, Any]) -> dict[str, float]:
    out = {k: float(d.get(k, 0)) for k in RATE_FIELDS if k != "requests"}
    out["requests"] = float(sum(d.get(k, 0) for k in _KINDS))
    return out


@dataclass(frozen=True)
class RatePoint:
    """Rates of every store at one moment.

    Attributes
    ----------
    seq : int
        Position in the feed (a page streams the points it has not seen).
    time : float
        Seconds since the epoch.
    rates : dict
        ``{store: {field: per second}}`` for the fields of ``RATE_FIELDS``.
    limits : dict
        ``{store: {kind: requests per second}}``: the rates in force of the
        cluster's request budget for the store (kinds ``all``, ``read``,
        ``write``, ``list``; None is unlimited), where it has one.
    control : dict
        ``{store: text}``: where the budget's control law stands (the last cut,
        the recovery in progress), where the cluster has a budget.
    """

    seq: int
    time: float
    rates: dict[str, dict[str, float]]
    limits: dict[str, dict[str, float | None]] = field(default_factory=dict)
    control: dict[str, str] = field(default_factory=dict)


class IOFeed:
    """Running totals of many processes, and their rates over time, per store.

    Each process reports cumulative totals (its heartbeat). The feed adds up
    what moved since a process's previous report, so a process that goes away
    keeps what it did, a restarted one starts again from zero, and two reports
    of one process (a worker in the scheduler's own process) count once.

    Parameters
    ----------
    window : float
        Seconds of rate history kept.
    span : float
        Rates are averaged over this many seconds (heartbeats arrive in steps).
    """

    def __init__(self, window: float = 600.0, span: float = 2.0) -> None:
        self.span = span
        self.window = window
        self.totals: dict[str, IOMetrics] = {}
        self.points: deque[RatePoint] = deque()
        self._last: dict[tuple[str, str], dict[str, Any]] = {}
        # Cumulative counters moved since the feed started (a process's first
        # report is history, not a rate), sampled at each update.
        self._moved: dict[str, dict[str, float]] = {}
        self._samples: deque[tuple[float, dict[str, dict[str, float]]]] = deque()
        self._limits: dict[str, dict[str, float | None]] = {}
        self._control: dict[str, str] = {}
        self._seq = 0
        self._lock = threading.Lock()

    def update(
        self,
        reports: Iterable[Mapping[str, Any] | None],
        now: float | None = None,
        limits: Mapping[str, Mapping[str, float | None]] | None = None,
        control: Mapping[str, str] | None = None,
    ) -> None:
        """Take one round of reports (:func:`process_report` dicts; None ignored).

        ``limits`` are the rates in force per store (the throttle coordinator's),
        ``control`` where its control law stands, in words.
        """
        now = time.time() if now is None else now
        with self._lock:
            self._limits = {k: dict(v) for k, v in (limits or {}).items()}
            self._control = dict(control or {})
            seen: set[str] = set()
            for report in reports:
                if not report or report["process"] in seen:
                    continue
                seen.add(report["process"])
                for scope, cur in report["stores"].items():
                    self._take(report["process"], scope, cur)
            self._sample(now)

    def _take(self, process: str, scope: str, cur: Mapping[str, Any]) -> None:
        prev = self._last.get((process, scope))
        self._last[process, scope] = dict(cur)
        if prev is None:
            delta: Mapping[str, Any] = cur
        else:
            delta = {k: v - prev.get(k, 0) for k, v in cur.items() if k != "latency"}
            delta["latency"] = [a - b for a, b in zip(cur["latency"], prev["latency"], strict=True)]
            if any(v < 0 for k, v in delta.items() if k != "latency") or min(delta["latency"]) < 0:
                delta = cur  # the process started again from zero
        self.totals.setdefault(scope, IOMetrics()).merge(delta)
        moved = self._moved.setdefault(scope, dict.fromkeys(RATE_FIELDS, 0.0))
        if prev is not None:
            for k, v in _counters(delta).items():
                moved[k] += v

    def _sample(self, now: float) -> None:
        snapshot = {scope: dict(c) for scope, c in self._moved.items()}
        self._samples.append((now, snapshot))
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()
        # The newest sample at least ``span`` old (else the oldest) is the base.
        base = self._samples[0]
        for s in self._samples:
            if s[0] > now - self.span:
                break
            base = s
        dt = now - base[0]
        if dt <= 0:
            return
        rates = {}
        for scope, moved in snapshot.items():
            before = base[1].get(scope, {})
            rates[scope] = {k: max(0.0, (v - before.get(k, 0.0)) / dt) for k, v in moved.items()}
        self._seq += 1
        self.points.append(RatePoint(self._seq, now, rates, self._limits, self._control))
        while self.points and self.points[0].time < now - self.window:
            self.points.popleft()

    def since(self, seq: int) -> list[RatePoint]:
        """The rate points after ``seq`` (all of them for 0)."""
        with self._lock:
            return [p for p in self.points if p.seq > seq]

    def snapshot(self) -> tuple[dict[str, IOMetrics], RatePoint | None]:
        """Copies of the totals per store, and the latest rates."""
        with self._lock:
            totals = {k: IOMetrics.merged([m]) for k, m in self.totals.items()}
            return totals, (self.points[-1] if self.points else None)
