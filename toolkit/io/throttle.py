"""Request budgets for object stores: rates, requests in flight, retries.

Object stores meter requests, not bytes: S3 answers ``503 SlowDown`` above
about 3,500 writes and 5,500 reads per second per prefix, and GCS and Azure do
the same with 429 or 503. Nothing in dask, zarr or fsspec limits the request
*rate*, so :class:`Throttle` does. It is a frozen, picklable policy. The store
wrappers in :mod:`toolkit.io.wrappers` apply it, and the state that enforces it
(:class:`~toolkit.io.budget.Budget`) lives once per process; what a failed
request means is :mod:`toolkit.io.classify`'s.

Under a ``distributed`` client the rates are enforced for the whole cluster
by the scheduler's coordinator (:mod:`toolkit.cluster.coordinator`), which
leases each worker a share; how the rate is paced, cut, recovered and shared is
:mod:`toolkit.io.ratecontrol`. Where the coordinator cannot be installed, each
process gets an equal split (:meth:`Throttle.share`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from toolkit._util import backoff

__all__ = ["RequestKind", "Throttle", "resolve_throttle"]

RequestKind = Literal["read", "write", "list"]
"""How object stores count requests: GET/HEAD, PUT/DELETE, LIST."""


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
        lower of the rate in force and the rate sent; in one process, at most
        ``1 / decrease`` times the rate the store answered over the last
        second: far above its limit, what it took). The rate then
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
