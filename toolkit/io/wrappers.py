"""zarr ``Store`` wrappers: metrics, the request budget, retries, digests, a metadata buffer.

Every wrapper subclasses zarr's own :class:`zarr.storage.WrapperStore`, so it
works with any zarr backend (local, memory, fsspec, obstore) and composes with
the others.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import hashlib
import logging
import random
import re
import threading
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from types import MappingProxyType
from typing import Any, Protocol, Self, TypeVar, cast, override, runtime_checkable

import zarr
from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest, Store
from zarr.buffer import default_buffer_prototype
from zarr.storage import WrapperStore

from toolkit import runtime
from toolkit.errors import (
    RequestAbortedError,
    StoreAccessError,
    StoreRequestError,
    StoreThrottledError,
    StoreUnavailableError,
)
from toolkit.io import clients
from toolkit.io.budget import Budget, RemoteBudget, RemoteBudgets, budget_for
from toolkit.io.classify import ACCESS_HINT, classify_error, http_status, refused, retry_after
from toolkit.io.metrics import IOMetrics, process_metrics
from toolkit.io.ratecontrol import THROTTLED_DOUBLINGS
from toolkit.io.reserved import hiding_reserved
from toolkit.io.stores import describe_store, is_icechunk, redact, unwrap
from toolkit.io.throttle import RequestKind, Throttle
from toolkit.runtime import Slot
from toolkit.upstream import (
    get_many_through_get,
    store_supports_sync_io,
    sync,
    wrapped_store,
)

__all__ = [
    "DigestStore",
    "GateStore",
    "InterceptStore",
    "MetricsStore",
    "RetryStore",
    "SharedRemoteBudget",
    "ThrottleStore",
    "digest",
    "without_client_retries",
    "wrap_store",
]

T = TypeVar("T")
logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- wrappers


async def _collect(it: AsyncIterator[str]) -> list[str]:
    return [k async for k in it]


def _nbytes(result: Any) -> int:
    if isinstance(result, Buffer):
        return len(result)
    if isinstance(result, list):
        return sum(len(b) for b in result if isinstance(b, Buffer))
    return 0


_KIND_OF: Mapping[str, RequestKind] = MappingProxyType(
    {
        "get": "read",
        "exists": "read",
        "set": "write",
        "set_if_not_exists": "write",
        "delete": "write",
        "delete_dir": "write",
        "list": "list",
        "list_prefix": "list",
        "list_dir": "list",
        "is_empty": "list",
    }
)
_COUNTER_OF: Mapping[str, str] = MappingProxyType(
    {
        "get": "gets",
        "exists": "gets",
        "set": "sets",
        "set_if_not_exists": "sets",
        "delete": "deletes",
        "delete_dir": "deletes",
        "list": "lists",
        "list_prefix": "lists",
        "list_dir": "lists",
        "is_empty": "lists",
    }
)
_DELETES = frozenset({"delete", "delete_dir"})


class _OwnWrapper(WrapperStore[Store]):
    """What toolkit's wrappers share: every read is a ``get`` of their own.

    Partial reads become one ``get`` per range, and synchronous fast paths
    are turned off, so that no request bypasses the wrapper. A copy with
    another inner store keeps its settings.
    """

    def _with_store(self, store: Store) -> Self:
        clone = copy.copy(self)
        clone._store = store
        return clone

    @property
    def _supports_sync_io(self) -> bool:
        return False

    def __str__(self) -> str:
        inner = unwrap(self)
        if is_icechunk(inner):
            # IcechunkStore.__str__ blocks on its session while another thread's write
            # holds it (and that write waits for the GIL): zarr calls str() on every
            # array it opens, so a write with several threads would deadlock.
            return f"<{type(inner).__name__}>"
        return super().__str__()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({describe_store(self._store)})"

    # Synchronous calls, should anyone make them, go through the wrapper too.
    @override
    def get_sync(self, key: str, **kw: Any) -> Buffer | None:
        prototype = kw.get("prototype") or default_buffer_prototype()
        return sync(self.get(key, prototype, kw.get("byte_range")))

    @override
    def set_sync(self, key: str, value: Buffer) -> None:
        sync(self.set(key, value))

    @override
    def delete_sync(self, key: str) -> None:
        sync(self.delete(key))

    @property
    def supports_consolidated_metadata(self) -> bool:
        # Icechunk says no: zarr must then ignore a stale consolidated copy.
        return self._store.supports_consolidated_metadata

    @override
    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))


class InterceptStore(_OwnWrapper):
    """Base of toolkit's wrappers: every request passes through one hook, :meth:`_call`.

    Every zarr entry point (gets, partial and ranged reads, sets, deletes,
    listings, ``delete_dir``) becomes one ``_call(op, key, fn)`` per request.
    A subclass then only has to say what happens around a request. Listings are
    collected, so that a retried listing never yields a key twice.
    """

    async def _call(self, op: str, key: str, fn: Callable[[], Awaitable[T]], size: int = 0) -> T:
        return await fn()

    def _sink(self, given: IOMetrics | None) -> IOMetrics | None:
        """Where to count: ``given``, else the metrics of the MetricsStore below.

        Looked up at each use, never stored: a stack unpickled in a worker
        counts into that worker's totals, as its MetricsStore does.
        """
        if given is not None:
            return given
        below = find_wrapper(self._store, MetricsStore)
        return below.metrics if below is not None else None

    @override
    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        return await self._call("get", key, lambda: self._store.get(key, prototype, byte_range))

    @override
    async def get_ranges(
        self,
        key: str,
        byte_ranges: Sequence[ByteRequest | None],
        *,
        prototype: BufferPrototype,
        max_concurrency: int | None = None,
        max_gap_bytes: int | None = None,
        max_coalesced_bytes: int | None = None,
    ) -> AsyncIterator[Sequence[tuple[int, Buffer | None]]]:
        # zarr's base implementation coalesces ranges over self.get: each fetch is hooked.
        given = {
            "max_concurrency": max_concurrency,
            "max_gap_bytes": max_gap_bytes,
            "max_coalesced_bytes": max_coalesced_bytes,
        }
        kw: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        async for group in Store.get_ranges(self, key, byte_ranges, prototype=prototype, **kw):
            yield group

    @override
    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        async for item in get_many_through_get(self, requests):
            yield item

    @override
    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        await asyncio.gather(*(self.set(k, v) for k, v in values))

    @override
    async def exists(self, key: str) -> bool:
        return await self._call("exists", key, lambda: self._store.exists(key))

    @override
    async def set(self, key: str, value: Buffer) -> None:
        await self._call("set", key, lambda: self._store.set(key, value), len(value))

    @override
    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await self._call(
            "set_if_not_exists", key, lambda: self._store.set_if_not_exists(key, value), len(value)
        )

    @override
    async def delete(self, key: str) -> None:
        await self._call("delete", key, lambda: self._store.delete(key))

    @override
    async def delete_dir(self, prefix: str) -> None:
        await self._call("delete_dir", prefix, lambda: self._store.delete_dir(prefix))

    @override
    async def is_empty(self, prefix: str) -> bool:
        return await self._call("is_empty", prefix, lambda: self._store.is_empty(prefix))

    @override
    async def clear(self) -> None:
        await self._call("delete_dir", "", lambda: self._store.clear())

    async def _listing(
        self, op: str, prefix: str, keys: Callable[[], Awaitable[list[str]]]
    ) -> AsyncIterator[str]:
        own = clients.listed_self(self._store)
        for key in await self._call(op, prefix, keys):
            if key != own:
                yield key

    @override
    def list(self) -> AsyncIterator[str]:
        return self._listing("list", "", lambda: _collect(self._store.list()))

    @override
    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # One LIST per 1,000 keys whatever the client (s3fs's own listing probes).
        return self._listing("list_prefix", prefix, lambda: clients.list_keys(self._store, prefix))

    @override
    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        listed = self._listing("list_dir", prefix, lambda: _collect(self._store.list_dir(prefix)))
        return hiding_reserved(listed)

    async def list_page(self, prefix: str) -> tuple[builtins.list[str], bool]:
        """The keys one LIST request answers under ``prefix``, and whether that is all.

        See :func:`toolkit.io.clients.list_page`: a small store's whole listing in
        one round trip, through every wrapper's budget, retries and metrics.
        """
        inner = self._store

        async def page() -> tuple[builtins.list[str], bool]:
            if isinstance(inner, InterceptStore):
                return await inner.list_page(prefix)
            return await clients.list_page(inner, prefix)

        return await self._call("list_prefix", f"{prefix}?page", page)


def digest(data: bytes) -> str:
    """The checksum kept for a stored object (BLAKE2b, 128 bits, hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class DigestStore(InterceptStore):
    """Remembers the checksum of every object written through it (``digests``).

    A write's manifest is built from these: :func:`toolkit.verify` can then
    check a store's integrity without its sources.
    """

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.digests: dict[str, str] = {}

    @override
    async def set(self, key: str, value: Buffer) -> None:
        await super().set(key, value)
        self.digests[key] = digest(value.to_bytes())


class GateStore(InterceptStore):
    """The gate of one write task: counts its requests at the store, and stops them on failure.

    After :meth:`abort`, nothing more is sent (requests raise
    :class:`~toolkit.errors.RequestAbortedError`), and :meth:`wait_idle` waits
    until no request is still at the store; ``landed`` collects the keys that
    were written or deleted, so that a failed task can say which of its units
    landed. Placed just above the :class:`MetricsStore` (see :func:`wrap_store`),
    it sees every attempt, retries included, and a refused request is counted
    nowhere. It keeps zarr's synchronous fast paths for local stores.
    """

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.landed: set[str] = set()
        self._idle = threading.Condition()
        self._inflight = 0
        self._aborted = False

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_idle", "_inflight")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._idle = threading.Condition()
        self._inflight = 0

    @property
    def _supports_sync_io(self) -> bool:
        return store_supports_sync_io(self._store)

    @property
    def inflight(self) -> int:
        """Requests sent and not yet answered."""
        with self._idle:
            return self._inflight

    def abort(self) -> None:
        """Send nothing more: every later request raises ``RequestAbortedError``."""
        with self._idle:
            self._aborted = True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no request is in flight; False if ``timeout`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    @contextlib.contextmanager
    def _passing(self, op: str, key: str) -> Iterator[None]:
        with self._idle:
            if self._aborted:
                raise RequestAbortedError(f"{op} {key!r} not sent: the write was aborted")
            self._inflight += 1
        try:
            yield
        except FileNotFoundError:
            # What was to be deleted is not there (a concurrent delete took it first):
            # the delete did its job, as S3 answers 204 to the DELETE of an absent key.
            if op in _DELETES:
                self.landed.add(key)
            raise
        else:
            if op in ("set", "set_if_not_exists", "delete"):
                self.landed.add(key)
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    async def _call(self, op: str, key: str, fn: Callable[[], Awaitable[T]], size: int = 0) -> T:
        with self._passing(op, key):
            return await fn()

    @override
    def get_sync(self, key: str, **kw: Any) -> Buffer | None:
        with self._passing("get", key):
            return WrapperStore.get_sync(self, key, **kw)

    @override
    def set_sync(self, key: str, value: Buffer) -> None:
        with self._passing("set", key):
            WrapperStore.set_sync(self, key, value)

    @override
    def delete_sync(self, key: str) -> None:
        with self._passing("delete", key):
            WrapperStore.delete_sync(self, key)


class MetricsStore(InterceptStore):
    """Counts every request, its bytes, latency and outcome into an :class:`~toolkit.IOMetrics`.

    Placed next to the real store, it sees every attempt, retries included, as
    the store would count them. Unlike the other wrappers, it keeps zarr's
    synchronous fast paths for local stores, and counts those too.

    Parameters
    ----------
    store : Store
        The store to measure.
    metrics : IOMetrics, optional
        Where to count (a new one by default).
    scope : str, optional
        Count into this process's running totals for ``scope``
        (:func:`toolkit.io.metrics.process_metrics`) instead; a copy unpickled in
        another process counts into that process's totals.
    """

    def __init__(
        self, store: Store, metrics: IOMetrics | None = None, *, scope: str | None = None
    ) -> None:
        super().__init__(store)
        self.scope = scope
        if scope is not None:
            metrics = process_metrics(scope)
        self.metrics = metrics if metrics is not None else IOMetrics()

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.scope is not None:
            self.metrics = process_metrics(self.scope)

    def _with_store(self, store: Store) -> Self:
        return type(self)(store, self.metrics, scope=self.scope)

    @property
    def _supports_sync_io(self) -> bool:
        return store_supports_sync_io(self._store)

    @contextlib.contextmanager
    def _measured(self, op: str, key: str, size: int) -> Iterator[list[Any]]:
        """Time and count one request; the caller puts its result in the list."""
        t0 = time.perf_counter()
        result: list[Any] = []
        try:
            yield result
        except BaseException as e:
            self._done(op, size, None, t0, e)
            raise
        self._done(op, size, result[0] if result else None, t0, None)

    async def _call(self, op: str, key: str, fn: Callable[[], Awaitable[T]], size: int = 0) -> T:
        with self._measured(op, key, size) as result:
            result.append(await fn())
        return cast(T, result[0])

    def _done(self, op: str, size: int, result: Any, t0: float, exc: BaseException | None) -> None:
        m = self.metrics
        m.observe(time.perf_counter() - t0)
        counts: dict[str, float] = {_COUNTER_OF[op]: 1}
        if op in _DELETES and isinstance(exc, FileNotFoundError):
            exc = None  # the delete did its job (see GateStore)
        if exc is None:
            counts["bytes_read"] = _nbytes(result)
            counts["bytes_written"] = size
        elif isinstance(exc, Exception):
            counts["throttled" if classify_error(exc) == "throttled" else "errors"] = 1
        m.add(**counts)

    @override
    def get_sync(self, key: str, **kw: Any) -> Buffer | None:
        return self._sync("get", key, 0, lambda: WrapperStore.get_sync(self, key, **kw))

    @override
    def set_sync(self, key: str, value: Buffer) -> None:
        self._sync("set", key, len(value), lambda: WrapperStore.set_sync(self, key, value))

    @override
    def delete_sync(self, key: str) -> None:
        self._sync("delete", key, 0, lambda: WrapperStore.delete_sync(self, key))

    def _sync(self, op: str, key: str, size: int, fn: Callable[[], T]) -> T:
        with self._measured(op, key, size) as result:
            result.append(fn())
        return cast(T, result[0])


class _PolicyStore(InterceptStore):
    """A wrapper applying a :class:`~toolkit.Throttle` (the budget, or the retries)."""

    def __init__(
        self, store: Store, policy: Throttle | None = None, metrics: IOMetrics | None = None
    ) -> None:
        super().__init__(store)
        self.policy = policy if policy is not None else Throttle()
        self.metrics = metrics

    def _with_store(self, store: Store) -> Self:
        return type(self)(store, self.policy, self.metrics)


class ThrottleStore(_PolicyStore):
    """Keeps requests within a :class:`~toolkit.Throttle`'s rates and in-flight cap.

    The enforcing state (:class:`toolkit.io.budget.Budget`) is shared by every
    wrapper of the process with the same policy and store. It is not pickled:
    a copy in another process joins that process's budget. Throttling answers
    passing back through it slow the budget down (adaptive mode).

    Parameters
    ----------
    store : Store
        The store to protect.
    policy : Throttle, optional
        Rates, in-flight cap and adaptation (default ``Throttle()``).
    metrics : IOMetrics, optional
        Where to add the time spent waiting for the budget (default: the
        metrics of a :class:`MetricsStore` below it).
    remote : callable, optional
        For a coordinated policy: ``remote(policy, scope)`` gives the budget
        that a cluster enforces for this process, or None outside a worker
        (:func:`toolkit.cluster.coordinator.remote_budget_for`). Handed down by
        the layer that knows of clusters; this one does not. While it cannot
        be reached, this process paces itself alone at its share of the budget
        (the remote budget's ``alone``, see
        :class:`toolkit.io.wrappers.SharedRemoteBudget`), and a
        warning says so once per budget.
    """

    def __init__(
        self,
        store: Store,
        policy: Throttle | None = None,
        metrics: IOMetrics | None = None,
        remote: RemoteBudgets | None = None,
    ) -> None:
        super().__init__(store, policy, metrics)
        self.remote = remote

    def _with_store(self, store: Store) -> Self:
        return type(self)(store, self.policy, self.metrics, self.remote)

    @property
    def budget(self) -> Budget:
        """The budget of this process for the policy and store."""
        return budget_for(self.policy, describe_store(self._store))

    async def _call(self, op: str, key: str, fn: Callable[[], Awaitable[T]], size: int = 0) -> T:
        kind = _KIND_OF[op]
        budget = self.budget
        # Coordinated budgets are booked from the scheduler when running in a worker.
        remote = None
        if self.policy.coordinated and self.remote is not None:
            remote = self.remote(self.policy, describe_store(self._store))
        async with budget.semaphore():
            pacing = budget  # the budget of this process that paces the request, if any
            waited = None
            if remote is not None:
                try:
                    waited = await remote.acquire(kind)
                except Exception as e:  # out of reach: this process's share, alone
                    pacing = self._alone(remote, e)
                    remote = None
            if waited is None:
                waited = await pacing.acquire(kind)
            sink = self._sink(self.metrics)
            if waited > 0 and sink is not None:
                sink.add(wait_seconds=waited)
            sent = time.monotonic()
            try:
                answer = await fn()
            except Exception as e:
                # Judged by when the request was sent: one sent before the last cut
                # went out at the old rate and says nothing about the new one.
                if classify_error(e) == "throttled":
                    after = retry_after(e)
                    if remote is not None:
                        remote.throttled(kind, sent, after)
                    else:
                        pacing.throttled(kind, sent, after)
                raise
            if remote is None:
                # What the store answers, for this process's next cut. A cluster's
                # coordinator cuts from the rates its workers send (see Pacer.refused_at).
                pacing.took(kind)
            return answer

    def _alone(self, remote: RemoteBudget, error: Exception) -> Budget:
        """The budget pacing this process while ``remote`` cannot be reached.

        The remote budget's ``alone`` policy, this process's fair share of the
        cluster's rates; the policy as it is for a remote budget that has none.
        The first time per budget, a warning says so (not at every request).
        """
        alone = remote.alone if isinstance(remote, SharedRemoteBudget) else self.policy
        scope = describe_store(self._store)
        fallback = budget_for(alone, scope)
        announced = runtime.current().get(_ALONE_ANNOUNCED)
        with announced.lock:
            first = fallback not in announced.budgets
            announced.budgets.add(fallback)
        if first:
            reason = redact(str(error).split("\n", 1)[0][:200], self._store)
            logger.warning(
                "toolkit: the throttle coordinator cannot be reached (%s: %s); requests to %s "
                "are paced by this process alone, at %s (the cluster's budget: %s), until it "
                "answers again",
                type(error).__name__,
                reason,
                scope,
                _rates_text(alone),
                _rates_text(self.policy),
            )
        return fallback


@runtime_checkable
class SharedRemoteBudget(RemoteBudget, Protocol):
    """A remote budget that knows this process's fair share of it.

    ``alone`` is the policy this process applies by itself when the remote
    budget cannot be reached: its share of the rates, so that N processes
    without their coordinator still send the budget, not N times it.
    """

    @property
    def alone(self) -> Throttle:
        """The share of the budget this process enforces alone, as a policy."""
        ...


class _Announced:
    """A weak set: the fallback budgets whose use was announced (each once per runtime)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.budgets: weakref.WeakSet[Budget] = weakref.WeakSet()


_ALONE_ANNOUNCED: Slot[_Announced] = Slot("io.wrappers.alone_announced", _Announced)


def _rates_text(policy: Throttle) -> str:
    kinds = (
        ("rate", policy.rate),
        ("read", policy.read_rate),
        ("write", policy.write_rate),
        ("list", policy.list_rate),
    )
    rates = [f"{name} {v:g}/s" for name, v in kinds if v is not None]
    return ", ".join(rates) if rates else "no rate limit"


#: Requests of one object, which ``Throttle.request_deadline`` bounds whole.
_ONE_OBJECT = frozenset({"get", "exists", "set", "set_if_not_exists", "delete", "is_empty"})


class RetryStore(_PolicyStore):
    """Retries throttled and transient failures with jittered exponential backoff.

    Throttling answers (503 SlowDown, 429), 500/502/504, dropped connections
    and timeouts are retried, up to ``policy.max_retries`` times and within
    ``policy.max_retry_seconds`` per request. Final errors are raised at once:
    403 as :class:`~toolkit.errors.StoreAccessError`, other 4xx as
    :class:`~toolkit.errors.StoreRequestError`. When the retries run out, the
    error is :class:`~toolkit.errors.StoreThrottledError` or
    :class:`~toolkit.errors.StoreUnavailableError`, naming the store and the fix.

    A request of one object (a get, a put, a delete) ends by
    ``policy.request_deadline`` whatever happens below: an attempt still
    running then is cancelled and the request fails with
    :class:`~toolkit.errors.StoreUnavailableError`. So a write against a dead
    store fails, named, within a bound (see the object-stores guide), even
    where no client timeout applies.

    It changes nothing of the store it wraps. :func:`wrap_store` builds it over
    a copy of an s3fs or obstore store whose client does not retry by itself
    (:func:`toolkit.io.clients.quiet_copy`), so that throttling stays visible
    to the budget and the retry time stays bounded.
    """

    def __init__(
        self, store: Store, policy: Throttle | None = None, metrics: IOMetrics | None = None
    ) -> None:
        super().__init__(store, policy, metrics)
        self._random = random.Random()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_random"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._random = random.Random()

    async def _call(self, op: str, key: str, fn: Callable[[], Awaitable[T]], size: int = 0) -> T:
        p = self.policy
        start = time.monotonic()
        # Listings and prefix deletes are many requests: each is bounded by the client's
        # timeouts, the whole by nothing but its size.
        limit = p.request_deadline if p.request_deadline is not None and op in _ONE_OBJECT else None
        retry_for = p.max_retry_seconds if limit is None else min(p.max_retry_seconds, limit)
        attempt = 0
        while True:
            left = None if limit is None else max(0.0, start + limit - time.monotonic())
            cutoff = asyncio.timeout(left)
            try:
                async with cutoff:
                    return await fn()
            except Exception as e:
                attempt += 1
                spent = time.monotonic() - start
                sink = self._sink(self.metrics)
                if cutoff.expired():
                    # Cancelled below: no client counted it as an error.
                    if sink is not None:
                        sink.add(errors=1, failed=1)
                    raise self._past_deadline(op, key, attempt, spent) from e
                if op in _DELETES and isinstance(e, FileNotFoundError):
                    raise  # nothing was there to delete: no failure (see MetricsStore._done)
                verdict = classify_error(e)
                doublings = attempt
                if verdict == "throttled" and p.adaptive:
                    # The budget was cut and paces the retry; more backoff only idles it.
                    doublings = min(attempt, THROTTLED_DOUBLINGS + 1)
                delay = p.backoff(doublings, self._random.random())
                if verdict == "throttled":  # a Retry-After is a floor under the backoff
                    delay = max(delay, min(retry_after(e) or 0.0, p.backoff_max))
                if verdict == "fatal" or attempt > p.max_retries or spent + delay > retry_for:
                    if sink is not None:
                        sink.add(failed=1)
                    if isinstance(e, RequestAbortedError):
                        raise
                    raise self._final(op, key, e, verdict, attempt, spent) from e
                if sink is not None:
                    sink.add(retries=1, backoff_seconds=delay)
                await asyncio.sleep(delay)

    def _past_deadline(self, op: str, key: str, attempts: int, spent: float) -> Exception:
        where = f"{describe_store(self._store)}/{key}".rstrip("/")
        return StoreUnavailableError(
            f"{where}: {op} got no answer within request_deadline="
            f"{self.policy.request_deadline:g} s ({attempts} attempt{'s' * (attempts != 1)} in "
            f"{spent:.1f} s); the store or the network is stalled or unavailable. Check the "
            "endpoint; an object that takes longer to send needs a larger "
            "toolkit.Throttle(request_deadline=...)"
        )

    def _final(
        self, op: str, key: str, e: Exception, verdict: str, attempts: int, spent: float
    ) -> Exception:
        where = f"{describe_store(self._store)}/{key}".rstrip("/")
        p = self.policy
        if verdict == "throttled":
            return StoreThrottledError(
                f"{where}: the store kept answering 'slow down' (503 SlowDown / 429) to {op}; "
                f"gave up after {attempts} attempts in {spent:.1f} s (max_retries="
                f"{p.max_retries}, max_retry_seconds={p.max_retry_seconds:g}). Lower the "
                "request rate, e.g. throttle=toolkit.Throttle(write_rate=..., read_rate=...), "
                "or allow more time with max_retry_seconds"
            )
        if verdict == "transient":
            return StoreUnavailableError(
                f"{where}: {op} failed {attempts} times in {spent:.1f} s with retryable errors "
                f"(last: {type(e).__name__}: {self._brief(e)}); the store or the "
                "network is unavailable. Check the endpoint, or raise max_retries / "
                "max_retry_seconds in toolkit.Throttle"
            )
        status, _ = http_status(e)
        if isinstance(e, PermissionError) or status in (401, 403) or refused(e):
            said = re.split(r"[.;] ", self._brief(e), maxsplit=1)[0][:120]
            return StoreAccessError(
                f"{where}: {op} was refused"
                + (f" (HTTP {status})" if status else "")
                + f": {type(e).__name__}: {said}. "
                + ACCESS_HINT
            )
        if status is not None and 400 <= status < 500 and status != 404:
            return StoreRequestError(
                f"{where}: the store rejected {op} as invalid (HTTP {status}): {self._brief(e)}"
            )
        if not isinstance(e, FileNotFoundError) and type(e).__module__.split(".")[0] in _CLIENTS:
            # A client's own exception type reaches no caller: toolkit's, with it as the cause.
            return StoreRequestError(f"{where}: {op} failed: {type(e).__name__}: {self._brief(e)}")
        return e

    def _brief(self, e: Exception) -> str:
        # obstore appends a multi-line "Debug source:" dump of its request state, and quotes
        # S3's XML error body whole: its code and message are what a person reads.
        text = str(e).split("\n\nDebug source", 1)[0]
        code, message = _XML_CODE.search(text), _XML_MESSAGE.search(text)
        if code and message:
            text = f"{_XML_BODY.sub('', text).strip()} {code[1]}: {message[1]}"
        return redact(text, self._store)


_XML_CODE = re.compile(r"<Code>([^<]*)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
_XML_BODY = re.compile(r"(?s)<\?xml.*?</Error>|<Error>.*?</Error>")
#: The modules of the clients' exception types (wrapped in toolkit's when final).
_CLIENTS = frozenset({"obstore", "botocore", "aiobotocore", "s3fs", "aiohttp", "urllib3"})


def wrap_store(
    store: Store,
    policy: Throttle | None,
    metrics: IOMetrics | None = None,
    *,
    gate: bool = False,
    scope: str | None = None,
    remote: RemoteBudgets | None = None,
) -> Store:
    """Toolkit's stack around ``store``: retries, then the budget, then metrics.

    The budget sits inside the retries, so that every attempt spends from it;
    the metrics sit next to the store, so that they see every attempt and time
    the store alone. Without a policy (local paths), only metrics. ``gate``:
    a write task's :class:`GateStore` just above the metrics. ``scope``
    counts into per-process running totals (see :class:`MetricsStore`);
    ``remote`` gives the cluster's budgets to a coordinated policy
    (see :class:`ThrottleStore`).

    With a policy, the stack stands over a copy of ``store`` whose client does
    not retry by itself (toolkit's retries count every attempt against the
    budget); ``store`` itself is left as it is. The copy is made once per
    store and reused while the store lives
    (:func:`toolkit.io.wrappers.without_client_retries`).
    """
    if policy is not None:
        store = without_client_retries(store)
    measured: Store = MetricsStore(store, metrics, scope=scope)
    if gate:
        measured = GateStore(measured)
    if policy is None:
        return measured
    # The outer layers count into the MetricsStore's metrics, looked up when used.
    return RetryStore(ThrottleStore(measured, policy, remote=remote), policy)


class _QuietCopies:
    """A weak cache: the copy of each caller's store without its client's retries.

    Held for as long as the caller's store lives, keyed by its identity (zarr
    stores compare by value and are not hashable), so that the many stacks of
    one write share one copy, and one client (its connections).
    """

    def __init__(self) -> None:
        self._copies: dict[int, tuple[weakref.ref[Store], Store]] = {}
        self._lock = threading.Lock()

    def get(self, store: Store, make: Callable[[Store], Store]) -> Store:
        key = id(store)
        with self._lock:
            hit = self._copies.get(key)
        if hit is not None and hit[0]() is store:
            return hit[1]
        made = make(store)
        if made is store:
            return store
        try:
            ref = weakref.ref(store, lambda _: self._forget(key))
        except TypeError:  # not weakly referable: not kept
            return made
        with self._lock:
            self._copies[key] = (ref, made)
        return made

    def _forget(self, key: int) -> None:
        with self._lock:
            self._copies.pop(key, None)


#: The copies of stores without their clients' retries (in the current runtime).
_QUIET_COPIES: Slot[_QuietCopies] = Slot("io.wrappers.quiet_copies", _QuietCopies)


def without_client_retries(store: Store) -> Store:
    """``store``, or a copy of it, whose client does not retry by itself.

    The client store at the bottom is copied (:func:`toolkit.io.clients.quiet_copy`),
    and toolkit's own wrappers above it too; ``store`` is never changed. The
    copy is kept while ``store`` lives: asked again, the same copy. A store
    below another library's wrapper cannot be copied: its client's retries
    then stay on (a debug log says so).
    """
    return runtime.current().get(_QUIET_COPIES).get(store, _quiet_stack)


def _quiet_stack(store: Store) -> Store:
    if isinstance(store, _OwnWrapper):
        below = wrapped_store(store)
        inner = _quiet_stack(below)
        return store if inner is below else store._with_store(inner)
    if isinstance(store, WrapperStore):
        if clients.has_own_retries(unwrap(store)):
            logger.debug(
                "toolkit: %s is below %s, which toolkit cannot copy: its client's own "
                "retries stay on, below toolkit's",
                describe_store(store),
                type(store).__name__,
            )
        return store
    return clients.quiet_copy(store)


def find_wrapper[W: Store](store: Store, kind: type[W]) -> W | None:
    """The first wrapper of type ``kind`` in a stack, or None."""
    while True:
        if isinstance(store, kind):
            return store
        if not isinstance(store, WrapperStore):
            return None
        store = wrapped_store(store)


def writing_empty_chunks(
    array: zarr.Array[Any], write_empty: bool | None = True
) -> zarr.Array[Any]:
    """``array`` with ``write_empty_chunks`` set (None: zarr's default); no request is made.

    True: chunks that hold only the fill value are written, never deleted.
    """
    from dataclasses import replace

    from zarr import AsyncArray

    a = array.async_array
    value = zarr.config.get("array.write_empty_chunks") if write_empty is None else write_empty
    return zarr.Array(
        AsyncArray(a.metadata, a.store_path, replace(a.config, write_empty_chunks=value))
    )


def rebind(array: zarr.Array[Any], store: Store) -> zarr.Array[Any]:
    """The same array (metadata, path, config) reading and writing through ``store``.

    No request is made: the metadata already in ``array`` is reused.
    """
    from zarr import AsyncArray
    from zarr.storage import StorePath

    a = array.async_array
    return zarr.Array(AsyncArray(a.metadata, StorePath(store, a.store_path.path), a.config))
