"""Request budgets for object stores: rates, requests in flight, retries.

Object stores meter requests, not bytes: S3 answers ``503 SlowDown`` above
about 3,500 writes and 5,500 reads per second per prefix, and GCS and Azure do
the same with 429 or 503. Nothing in dask, zarr or fsspec limits the request
*rate*, so :class:`Throttle` does. It is a frozen, picklable policy. The store
wrappers in :mod:`toolkit.io.wrappers` apply it, and the state that enforces it
(:class:`Budget`) lives once per process.

Under a ``distributed`` client the rates are enforced for the whole cluster
by the scheduler's coordinator (:mod:`toolkit.cluster.coordinator`), which
leases each worker a share; how the rate is paced, cut, recovered and shared is
:mod:`toolkit.io.ratecontrol`. Where the coordinator cannot be installed, each
process gets an equal split (:meth:`Throttle.share`).
"""

from __future__ import annotations

import asyncio
import errno
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from dask.base import tokenize

from toolkit import runtime
from toolkit._render import html_table, text_table
from toolkit._util import backoff
from toolkit.io.ratecontrol import Allocator, Grant, Pacer, RateLaw
from toolkit.runtime import Registry, Slot

__all__ = [
    "Budget",
    "BudgetState",
    "ErrorClass",
    "Limiter",
    "RemoteBudget",
    "RemoteBudgets",
    "RequestKind",
    "Throttle",
    "ThrottleState",
    "budget_for",
    "classify_error",
    "describe_cut",
    "describe_recovery",
    "http_status",
    "law_for",
    "limiters_of",
    "local_states",
    "resolve_throttle",
    "retry_after",
    "sit_out_pauses",
]

RequestKind = Literal["read", "write", "list"]
"""How object stores count requests: GET/HEAD, PUT/DELETE, LIST."""

ErrorClass = Literal["throttled", "transient", "fatal"]

_THROTTLE_STATUS = frozenset({429, 503})
_TRANSIENT_STATUS = frozenset({500, 502, 504, 408})
_THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "ServerBusy",
        "503",
    }
)
_TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "RequestTimeout", "500", "502", "504"}
)


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
        Adapt to the store: a throttling answer (503 SlowDown, 429) cuts the
        rate of its kind to ``decrease`` times the rate the store refused (the
        lower of the rate in force and the rate really sent). The rate then
        climbs back along a cubic curve: to the refused rate in ``recovery``
        seconds, flat around it, then ever faster up to the configured rate
        (see :mod:`toolkit.io.ratecontrol`). Answers to requests sent before
        the last cut are ignored: they went out at the old rate. A
        ``Retry-After`` answer pauses every send until it has passed. With no
        configured rate, the first cut sets one.
    max_retries : int
        Attempts after the first, for retryable errors (503/SlowDown, 429,
        500/502/504, connection resets, timeouts).
    max_retry_seconds : float
        Total time one request may spend retrying, backoff included: no retry
        starts (and no backoff sleeps) past it.
    request_deadline : float or None
        The most seconds one request (a get, a put, a delete; not a listing or
        a prefix delete, which are many requests) may take, every attempt, wait
        and backoff included. An attempt still running then is abandoned and
        the request fails with :class:`~toolkit.errors.StoreUnavailableError`.
        The clients' connect and read timeouts (``storage_options=
        {"config_kwargs": {"connect_timeout": ..., "read_timeout": ...}}``) turn
        a stalled connection into a retried error first; this bounds the hangs
        no client timeout sees (a peer that stops reading an upload). Raise it
        for objects that take longer to send; ``None`` for no bound.
    backoff_base, backoff_max : float
        Exponential backoff with full jitter: the n-th retry sleeps a uniform
        random time in ``[0, min(backoff_max, backoff_base * 2**n)]``. In
        adaptive mode a throttling answer's retries stop doubling at
        ``backoff_base * 4``: the cut budget paces them, and a ``Retry-After``
        is a floor.
    min_rate : float
        The adaptive mode never goes below this many requests per second.
    cooldown : float
        Least seconds between two cuts of one kind.
    decrease : float
        The fraction of the refused rate a cut leaves (CUBIC's β).
    recovery : float
        Seconds from a cut back to the refused rate (CUBIC's K).
    coordinated : bool
        Set by toolkit, not by users: the rates are enforced for the whole
        cluster by the scheduler's ``ThrottleCoordinator``.

    Examples
    --------
    >>> import toolkit
    >>> toolkit.Throttle.for_url("s3://bucket/era5.zarr").write_rate  # S3's documented rate
    3000
    >>> policy = toolkit.Throttle(write_rate=1000, max_inflight=32)
    >>> report = toolkit.to_zarr(ds, "s3://bucket/era5.zarr", throttle=policy)  # doctest: +SKIP
    """

    max_inflight: int = 64
    rate: float | None = None
    read_rate: float | None = None
    write_rate: float | None = None
    list_rate: float | None = None
    adaptive: bool = True
    max_retries: int = 20
    max_retry_seconds: float = 60.0
    request_deadline: float | None = 120.0
    backoff_base: float = 0.05
    backoff_max: float = 5.0
    min_rate: float = 1.0
    cooldown: float = 0.2
    decrease: float = 0.7
    recovery: float = 1.0
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
        if self.request_deadline is not None and not self.request_deadline > 0:
            raise ValueError(
                "Throttle(request_deadline=) must be a positive number of seconds or None for "
                f"no bound, got {self.request_deadline!r}"
            )
        if not 0 < self.backoff_base <= self.backoff_max:
            raise ValueError("Throttle needs 0 < backoff_base <= backoff_max")
        if not 0 < self.decrease < 1 or not self.recovery > 0:
            raise ValueError(
                f"Throttle needs 0 < decrease < 1 and recovery > 0 seconds, got "
                f"decrease={self.decrease!r}, recovery={self.recovery!r}"
            )

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
    r"timed out|operation timed out|incomplete message|broken pipe|"
    # reqwest's connect, read and whole-request timeouts, in obstore's "Debug source"
    r"kind: Timeout|TimedOut",
    re.I,
)
# OSError numbers of a request lost on the way: s3fs turns a 500 (InternalError) into
# EREMOTEIO, and a socket timeout is ETIMEDOUT. (Where there is no EREMOTEIO, s3fs uses
# EIO, which is also its number for any error it does not know: not taken as transient.)
_TRANSIENT_ERRNOS = frozenset(
    n
    for n in (getattr(errno, "EREMOTEIO", None), errno.ETIMEDOUT, errno.ECONNRESET, errno.EPIPE)
    if n is not None
)
# Retryable by name: botocore's and aiohttp's connection errors and timeouts (a
# timeout's class need not subclass TimeoutError: botocore's do not).
_TRANSIENT_NAMES = frozenset(
    {
        "HTTPClientError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ConnectionTimeoutError",
        "SocketTimeoutError",
        "ClientOSError",
        "ResponseParserError",
    }
)


def classify_error(exc: BaseException) -> ErrorClass:
    """Whether a store error is a throttling answer, worth retrying, or final.

    The exception and its causes are inspected: botocore responses (status and
    code), obstore's errors (status, code and reqwest's wording in the
    message), HTTP client errors, connection resets and timeouts. Throttling:
    503/SlowDown and 429. Transient: 500/502/504 (s3fs's ``EREMOTEIO``),
    dropped connections, and the timeouts of either client (botocore's
    ``ReadTimeoutError`` and ``ConnectTimeoutError``, aiohttp's
    ``ServerTimeoutError``, ``asyncio.TimeoutError``, obstore's connect, read
    and request timeouts). Everything else (403, 400, a missing bucket, a bug)
    is final.
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
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            transient = True
        if status is None and type(e).__module__.startswith("obstore"):
            transient = transient or bool(_OBSTORE_TRANSIENT.search(str(e)))
        if type(e).__name__ in _TRANSIENT_NAMES:
            transient = True
        e = e.__cause__ or e.__context__
    return "transient" if transient else "fatal"


_RETRY_AFTER = re.compile(r"retry-after(?:-ms)?[\"']?\s*[:=]\s*[\"']?(\d+(?:\.\d+)?)", re.I)


def retry_after(exc: BaseException) -> float | None:
    """Seconds a throttling answer asked the client to wait (``Retry-After``), if any.

    Read from botocore's response headers (``Retry-After``, Azure's
    ``x-ms-retry-after-ms``), from an ``retry_after`` attribute, or from the
    text of the error along its causes. HTTP dates are not understood.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        value = getattr(e, "retry_after", None)
        if isinstance(value, int | float) and value > 0:
            return float(value)
        response = getattr(e, "response", None)
        if isinstance(response, Mapping):
            headers = (response.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
            headers = {str(k).lower(): v for k, v in headers.items()}
            for name, scale in (("x-ms-retry-after-ms", 1e-3), ("retry-after", 1.0)):
                try:
                    if name in headers:
                        return max(0.0, float(headers[name]) * scale) or None
                except ValueError:
                    pass
        m = _RETRY_AFTER.search(str(e))
        if m:
            ms = "-ms" in m[0].lower()
            return float(m[1]) / (1000 if ms else 1) or None
        e = e.__cause__ or e.__context__
    return None


# --------------------------------------------------------------------------- state


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
        """``who`` got a throttling answer to a request sent at ``sent_at``: new leases."""
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
            sending = {n: self.pacers[n].sending(now) for n in names}
            grants = self.report(self._ME, names, sent_at, retry_after, sending, 1, now)
            for n, grant in grants.items():
                self.pacers[n].apply(grant, now)

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
_BUDGETS: Slot[Registry[str, Budget]] = Slot("io.throttle.budgets", Registry)


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
