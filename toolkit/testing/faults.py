"""A zarr ``Store`` wrapper that injects latency and failures (for tests and demos)."""

from __future__ import annotations

import asyncio
import errno
import random
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from zarr.abc.store import Store

from toolkit.io.wrappers import InterceptStore

__all__ = ["FaultStore"]

T = TypeVar("T")


class FaultStore(InterceptStore):
    """Injects latency and failures, for testing pipelines against a bad store.

    Parameters
    ----------
    store : Store
        The store behind the faults.
    latency : float
        Seconds added to every request.
    throttle_prob : float
        Probability of a throttling answer (``OSError(EBUSY)``, as s3fs raises
        for 503 SlowDown); the request does not reach the store.
    error_prob : float
        Probability of a server error (HTTP 500); the request does not reach
        the store.
    reset_prob : float
        Probability that the connection drops *after* the request reached the
        store (``ConnectionResetError``): it may have landed, and the answer
        was lost.
    seed : int, optional
        Seed of the draws. The k-th request (in the order requests start) gets
        the same verdict on every run.
    match : str, optional
        A regular expression: only requests whose key it matches (``re.search``)
        are faulted, e.g. ``r"/c/"`` for the chunks of a zarr 3 array.
    """

    def __init__(
        self,
        store: Store,
        *,
        latency: float = 0.0,
        throttle_prob: float = 0.0,
        error_prob: float = 0.0,
        reset_prob: float = 0.0,
        seed: int | None = None,
        match: str | None = None,
    ) -> None:
        super().__init__(store)
        self.latency = latency
        self.throttle_prob, self.error_prob, self.reset_prob = throttle_prob, error_prob, reset_prob
        self.seed = seed
        self.match = re.compile(match) if match else None
        self._random = random.Random(seed)

    async def _call(self, op: str, key: str, fn: Callable[[], Awaitable[T]], size: int = 0) -> T:
        if self.match is not None and not self.match.search(key):
            return await fn()
        # Both draws at once, at the start: the k-th request of a seed always gets
        # the same verdicts, however concurrent requests interleave.
        draw, reset = self._random.random(), self._random.random()
        if self.latency:
            await asyncio.sleep(self.latency)
        if draw < self.throttle_prob:
            raise _InjectedFault(errno.EBUSY, "Please reduce your request rate. (injected)", 503)
        draw -= self.throttle_prob
        if draw < self.error_prob:
            raise _InjectedFault(errno.EIO, "We encountered an internal error. (injected)", 500)
        result = await fn()
        if reset < self.reset_prob:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer (injected)")
        return result


class _InjectedFault(OSError):
    def __init__(self, code: int, message: str, status: int) -> None:
        super().__init__(code, message)
        self.status = status
