"""Request budgets for object stores: rates, requests in flight, retries.

Object stores meter requests, not bytes: S3 answers ``503 SlowDown`` above
about 3,500 writes and 5,500 reads per second per prefix, and GCS and Azure do
the same with 429 or 503. Nothing in dask, zarr or fsspec limits the request
*rate*, so :class:`Throttle` does. It is a frozen, picklable policy. The store
wrappers in :mod:`toolkit.io.wrappers` apply it, and the state that enforces it
(:class:`Budget`) lives once per process.

Cluster-wide budgets are *split*: under a ``distributed`` client, each call
divides the rates and the in-flight cap by the number of worker processes
(:meth:`Throttle.share`). The split costs no coordination traffic and has no
single point of failure. It follows the worker count at every call, and the
adaptive mode corrects whatever drift remains (for example, a worker that
joins while a write runs).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from dask.base import tokenize

from toolkit._render import html_table, text_table
from toolkit._util import backoff

__all__ = [
    "Budget",
    "BudgetState",
    "ErrorClass",
    "RemoteBudget",
    "RemoteBudgets",
    "RequestKind",
    "Throttle",
    "ThrottleState",
    "budget_for",
    "classify_error",
    "http_status",
    "local_states",
    "resolve_throttle",
]

RequestKind = Literal["read", "write", "list"]
"""How object stores count requests: GET/HEAD, PUT/DELETE, LIST."""

ErrorClass = Literal["throttled", "transient", "fatal"]

_THROTTLE_STATUS = {429, 503}
_TRANSIENT_STATUS = {500, 502, 504, 408}
_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "TooManyRequestsException",
    "ServerBusy",
    "503",
}
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "RequestTimeout", "500", "502", "504"}


@dataclass(frozen=True)
class Throttle:
    """How hard toolkit may drive an object store: a policy, not state.

    Every entry point that touches a store takes ``throttle=`` (a ``Throttle``,
    ``None`` for the URL's defaults, or ``False`` for none).

    Parameters
    ----------
    max_inflight : int
        Requests in flight at once, for the whole cluster. Connection pools are
        sized to it, so that with few dask threads the store's latency is still
        hidden behind many concurrent requests.
    rate : float, optional
        Requests per second of every kind together.
    read_rate, write_rate, list_rate : float, optional
        Requests per second by kind (GET/HEAD, PUT/DELETE, LIST), as object
        stores count them. ``None`` is unlimited.
    adaptive : bool
        Additive increase, multiplicative decrease. A throttling answer cuts the
        rate of its kind to half of what was sent over the last second (or of
        the limit, if lower). Answers to requests booked before the last cut
        are ignored: they went out at the old rate. Every second without a
        throttling answer adds ``increase`` times the rate set by the last cut,
        up to the configured rate. With no configured rate, the first cut sets
        one.
    max_retries : int
        Attempts after the first, for retryable errors (503/SlowDown, 429,
        500/502/504, connection resets, timeouts).
    max_retry_seconds : float
        Total time one request may spend retrying, backoff included.
    backoff_base, backoff_max : float
        Exponential backoff with full jitter: the n-th retry sleeps a uniform
        random time in ``[0, min(backoff_max, backoff_base * 2**n)]``.
    min_rate : float
        The adaptive mode never goes below this many requests per second.
    cooldown : float
        Least seconds between two decreases of one kind.
    increase : float
        Per quiet second, the rate grows by this fraction of the rate the last
        cut set.
    coordinated : bool
        Set by toolkit, not by users: the rates are enforced for the whole
        cluster by the scheduler's :class:`ThrottleCoordinator`.
    """

    max_inflight: int = 64
    rate: float | None = None
    read_rate: float | None = None
    write_rate: float | None = None
    list_rate: float | None = None
    adaptive: bool = True
    max_retries: int = 20
    max_retry_seconds: float = 60.0
    backoff_base: float = 0.05
    backoff_max: float = 5.0
    min_rate: float = 1.0
    cooldown: float = 0.2
    increase: float = 0.05
    coordinated: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_inflight, int) or self.max_inflight < 1:
            raise ValueError(
                f"Throttle(max_inflight=) must be an int >= 1, got {self.max_inflight!r}"
            )
        for name in ("rate", "read_rate", "write_rate", "list_rate"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ValueError(
                    f"Throttle({name}=) must be a positive number of requests per second or "
                    f"None for unlimited, got {v!r}"
                )
        if self.max_retries < 0 or self.max_retry_seconds < 0:
            raise ValueError("Throttle(max_retries=, max_retry_seconds=) must be >= 0")
        if not 0 < self.backoff_base <= self.backoff_max:
            raise ValueError("Throttle needs 0 < backoff_base <= backoff_max")

    @classmethod
    def for_url(cls, url: str) -> Throttle | None:
        """Sensible defaults for a store URL; ``None`` for local paths and memory.

        S3 allows ~3,500 writes and ~5,500 reads per second per prefix; GCS
        ramps from ~1,000 writes and ~5,000 reads per second; Azure Blob allows
        ~20,000 requests per second per account. The defaults stay below each,
        adaptively, with 64 requests in flight.
        """
        scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
        if scheme in ("s3", "s3a"):
            return cls(read_rate=5000, write_rate=3000, list_rate=100)
        if scheme in ("gs", "gcs"):
            return cls(read_rate=4000, write_rate=900, list_rate=100)
        if scheme in ("az", "abfs", "abfss", "adl"):
            return cls(rate=18000, list_rate=100)
        if scheme in ("http", "https"):
            return cls(max_inflight=32)
        return None

    def rate_for(self, kind: RequestKind) -> float | None:
        """The configured rate of one kind of request."""
        return {"read": self.read_rate, "write": self.write_rate, "list": self.list_rate}[kind]

    def share(self, parts: int) -> Throttle:
        """The budget divided among ``parts`` processes (rates and in-flight cap)."""
        if parts <= 1:
            return self

        def div(v: float | None) -> float | None:
            return None if v is None else max(v / parts, self.min_rate / parts)

        return replace(
            self,
            max_inflight=max(1, math.ceil(self.max_inflight / parts)),
            rate=div(self.rate),
            read_rate=div(self.read_rate),
            write_rate=div(self.write_rate),
            list_rate=div(self.list_rate),
            min_rate=self.min_rate / parts,
        )

    def backoff(self, attempt: int, draw: float) -> float:
        """Seconds before retry ``attempt`` (1-based), given a uniform ``draw``."""
        return backoff(attempt - 1, self.backoff_base, self.backoff_max, draw)

    def _row(self) -> dict[str, str]:
        def r(v: float | None) -> str:
            return "∞" if v is None else f"{v:g}/s"

        return {
            "in flight": str(self.max_inflight),
            "rate": r(self.rate),
            "read": r(self.read_rate),
            "write": r(self.write_rate),
            "list": r(self.list_rate),
            "adaptive": "yes" if self.adaptive else "no",
            "retries": f"{self.max_retries} within {self.max_retry_seconds:g} s",
        }


def resolve_throttle(
    throttle: Throttle | Literal[False] | None, url: str | None
) -> Throttle | None:
    """The policy in force: the given one, the URL's default, or none."""
    if throttle is False:
        return None
    if throttle is None:
        return Throttle.for_url(url) if url else None
    if not isinstance(throttle, Throttle):
        raise TypeError(
            f"throttle= takes a toolkit.Throttle, None (defaults for the URL) or False (none), "
            f"got {type(throttle).__name__}"
        )
    return throttle


# --------------------------------------------------------------------------- errors


def http_status(exc: BaseException) -> tuple[int | None, str | None]:
    """The HTTP status and error code an exception carries, if any.

    botocore and aiohttp carry them as attributes; obstore's exceptions in the
    message (``Server returned non-2xx status code: 503 ...<Code>SlowDown</Code>``).
    """
    if type(exc).__module__.startswith("obstore"):
        text = str(exc)
        status = _OBSTORE_STATUS.search(text)
        code = _XML_CODE.search(text)
        return (int(status[1]) if status else None), (code[1] if code else None)
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        meta = response.get("ResponseMetadata") or {}
        err = response.get("Error") or {}
        status = meta.get("HTTPStatusCode")
        return (int(status) if status else None), (str(err["Code"]) if err.get("Code") else None)
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    return (int(status) if isinstance(status, int) else None), None


_OBSTORE_STATUS = re.compile(r"non-2xx status code: (\d{3})")
_XML_CODE = re.compile(r"<Code>(\w+)</Code>")
# obstore (reqwest) errors that mean the request or its answer was lost on the way.
_OBSTORE_TRANSIENT = re.compile(
    r"error sending request|error decoding response body|connection (?:closed|reset)|"
    r"timed out|operation timed out|incomplete message|broken pipe",
    re.I,
)


def classify_error(exc: BaseException) -> ErrorClass:
    """Whether a store error is a throttling answer, worth retrying, or final.

    The exception and its causes are inspected: botocore responses (status and
    code), obstore's errors (status, code and reqwest's wording in the
    message), HTTP client errors, connection resets and timeouts. Throttling:
    503/SlowDown and 429. Transient: 500/502/504, dropped connections,
    timeouts. Everything else (403, 400, a missing bucket, a bug) is final.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    transient = False
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        status, code = http_status(e)
        if status in _THROTTLE_STATUS or code in _THROTTLE_CODES:
            return "throttled"
        if isinstance(e, OSError) and e.errno == errno.EBUSY:
            return "throttled"  # s3fs's translation of SlowDown
        if "reduce your request rate" in str(e):
            return "throttled"
        if status is not None and (status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES):
            transient = True
        elif status is not None and 400 <= status < 500:
            return "fatal"
        if isinstance(e, ConnectionError | TimeoutError | asyncio.TimeoutError):
            transient = True
        if status is None and type(e).__module__.startswith("obstore"):
            transient = transient or bool(_OBSTORE_TRANSIENT.search(str(e)))
        name = type(e).__name__
        if name in (
            "HTTPClientError",
            "EndpointConnectionError",
            "ConnectionClosedError",
            "ReadTimeoutError",
            "ConnectTimeoutError",
            "ResponseStreamingError",
            "IncompleteReadError",
            "ClientPayloadError",
            "ServerDisconnectedError",
            "ClientOSError",
            "ResponseParserError",
        ):
            transient = True
        e = e.__cause__ or e.__context__
    return "transient" if transient else "fatal"


# --------------------------------------------------------------------------- state


class _Limiter:
    """A GCRA token bucket whose rate AIMD may change; thread-safe.

    ``reserve`` books the next slot and returns how long to wait for it, so
    callers on any thread or event loop can share one limiter. It also counts
    the slots granted over the last second: a throttling answer cuts the rate
    to half of what was really sent, not just half of a limit that may be far
    above it.
    """

    def __init__(self, rate: float | None, policy: Throttle) -> None:
        self.configured = rate
        self.rate = rate
        self.policy = policy
        self._tat = time.monotonic()
        self._lock = threading.Lock()
        self._last_decrease = -math.inf
        self._last_increase = time.monotonic()
        self._granted: collections.deque[float] = collections.deque()  # last second's slots
        self._busy_since = time.monotonic()  # start of the current run of requests
        self._step = 0.0  # additive increase per quiet second, set by each cut
        self.decreases = 0

    def _burst(self, rate: float) -> float:
        # A quarter second of requests (at least one) may go at once: enough to catch up
        # after a stall, far below the second or more that object stores tolerate.
        return max(1.0, rate * 0.25) / rate

    def _observed(self, now: float) -> float:
        """Slots granted per second over the last second.

        When requests started less than a second ago, over the time since
        they started: a 503 among the first few requests of a run must not
        read as a rate of a few per second.
        """
        while self._granted and self._granted[0] < now - 1.0:
            self._granted.popleft()
        window = min(1.0, max(0.05, now - self._busy_since))
        return len(self._granted) / window

    def reserve(self, n: int = 1) -> tuple[float, float]:
        """Book ``n`` consecutive slots: (seconds until the first, seconds between them)."""
        now = time.monotonic()
        with self._lock:
            self._recover(now)
            if self.policy.adaptive:
                self._observed(now)
                if not self._granted:
                    self._busy_since = now
                self._granted.extend([now] * min(n, 4096))
            if self.rate is None:
                return 0.0, 0.0
            tat = max(self._tat, now)
            wait = max(0.0, tat - self._burst(self.rate) - now)
            self._tat = tat + n / self.rate
            return wait, 1.0 / self.rate

    def _recover(self, now: float) -> None:
        p = self.policy
        if not p.adaptive or self.rate is None:
            return
        quiet = now - max(self._last_decrease, self._last_increase)
        if quiet >= 1.0 and self._step:
            ceiling = self.configured if self.configured is not None else math.inf
            self.rate = min(ceiling, self.rate + int(quiet) * self._step)
            self._last_increase = now

    def throttled(self, booked: float | None = None) -> None:
        """A throttling answer to a request booked at ``booked`` (monotonic seconds).

        Answers to requests booked before the last decrease are ignored: they
        went out at the old rate, and reacting to each of them would collapse
        the rate for a single burst.
        """
        p = self.policy
        if not p.adaptive:
            return
        now = time.monotonic()
        with self._lock:
            if booked is not None and booked < self._last_decrease:
                return
            if now - self._last_decrease < p.cooldown:
                return
            observed = self._observed(now)
            current = self.rate if self.rate is not None else math.inf
            base = min(current, observed) if observed else current
            if not math.isfinite(base):
                base = 20.0  # nothing observed and no limit: start low, AIMD raises it
            self.rate = max(p.min_rate, base * 0.5)
            # Additive increase around the store's real limit, not the configured one.
            self._step = p.increase * self.rate
            self._last_decrease = now
            self._last_increase = now
            self.decreases += 1
            # Requests already booked at the old rate would still go out in a burst.
            self._tat = max(self._tat, now) + 1.0 / self.rate


class Budget:
    """The state enforcing one :class:`Throttle` in one process.

    Shared by every store wrapper, thread and task of the process that uses the
    same policy, so one process never exceeds its share however many tasks run.
    """

    def __init__(self, policy: Throttle, scope: str = "") -> None:
        self.policy = policy
        self.scope = scope
        self.last_used = time.monotonic()
        self._all = _Limiter(policy.rate, policy)
        self._kinds = {k: _Limiter(policy.rate_for(k), policy) for k in ("read", "write", "list")}
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._semaphores = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def semaphore(self) -> asyncio.Semaphore:
        """The in-flight cap for the running event loop (zarr runs one per process)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._semaphores.get(loop)
            if sem is None:
                sem = self._semaphores[loop] = asyncio.Semaphore(self.policy.max_inflight)
            return sem

    def reserve(self, kind: RequestKind) -> float:
        """Book one request of ``kind``; seconds to wait before sending it."""
        return self.reserve_batch(kind, 1)[0]

    def reserve_batch(self, kind: RequestKind, n: int) -> tuple[float, float]:
        """Book ``n`` requests of ``kind``: (seconds until the first, seconds between)."""
        self.last_used = time.monotonic()
        w1, i1 = self._all.reserve(n)
        w2, i2 = self._kinds[kind].reserve(n)
        return max(w1, w2), max(i1, i2)

    def batch_size(self, kind: RequestKind) -> int:
        """Slots a worker books at once from the coordinator: ~50 ms of the rate."""
        rates = [r for r in (self._all.rate, self._kinds[kind].rate) if r is not None]
        return max(1, min(64, math.ceil(min(rates) * 0.05))) if rates else 64

    def throttled(self, kind: RequestKind, booked: float | None = None) -> None:
        """A throttling answer for ``kind``, to a request booked at ``booked``: slow down."""
        self._kinds[kind].throttled(booked)
        if self.policy.rate is not None:
            self._all.throttled(booked)

    def current_rates(self) -> dict[str, float | None]:
        """The rates in force now, by kind (they move in adaptive mode)."""
        return {"all": self._all.rate, **{k: v.rate for k, v in self._kinds.items()}}

    def state(self, where: str = "this process") -> BudgetState:
        """What this budget enforces now, for people (see :func:`throttle_state`)."""
        limiters = [self._all, *self._kinds.values()]
        return BudgetState(
            store=self.scope,
            where=where,
            policy=self.policy,
            rates=self.current_rates(),
            cuts=sum(x.decreases for x in limiters),
            idle=time.monotonic() - self.last_used,
        )


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
    """

    store: str
    where: str
    policy: Throttle
    rates: dict[str, float | None]
    cuts: int
    idle: float

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
            "cuts": str(self.cuts),
            "in flight": str(p.max_inflight),
            "last used": f"{self.idle:,.0f} s ago",
        }


@dataclass(frozen=True)
class ThrottleState:
    """Every request budget in force: a table in Jupyter and in a terminal."""

    budgets: tuple[BudgetState, ...]

    def __repr__(self) -> str:
        return text_table([b._row() for b in self.budgets]) or "no request budget in use"

    def _repr_html_(self) -> str:
        return html_table([b._row() for b in self.budgets]) or "<p>no request budget in use</p>"


_BUDGETS: dict[str, Budget] = {}
_BUDGETS_LOCK = threading.Lock()


class RemoteBudget(Protocol):
    """A budget that something beyond this process enforces (a cluster's scheduler)."""

    async def reserve(self, kind: RequestKind) -> float:
        """Seconds to wait before sending one request of ``kind``."""
        ...

    def throttled(self, kind: RequestKind, age: float) -> None:
        """Report a throttling answer to a request booked ``age`` seconds ago."""
        ...


#: ``remote(policy, scope)``: the remote budget of this process, or None.
type RemoteBudgets = Callable[[Throttle, str], RemoteBudget | None]


def local_states() -> list[BudgetState]:
    """Where each of this process's budgets stands."""
    with _BUDGETS_LOCK:
        local = list(_BUDGETS.values())
    return [b.state() for b in local]


def budget_for(policy: Throttle, scope: str = "") -> Budget:
    """The :class:`Budget` of this process for ``policy`` within ``scope`` (e.g. a store)."""
    key = tokenize(policy, scope)
    with _BUDGETS_LOCK:
        b = _BUDGETS.get(key)
        if b is None:
            b = _BUDGETS[key] = Budget(policy, scope)
        return b
