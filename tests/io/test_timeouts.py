"""Bounded waits: a stalled or silent store is a named error within a bound, never a hang.

Against real sockets: moto's S3 server behind the fault proxy, which holds a
request (``stall_prob``) until the proxy closes, and a "black hole", a port
that takes connections and never reads or answers them. Each client is set
with short timeouts (``config_kwargs``, fsspec's names, for both) and a short
retry budget, so that each bound is seconds; every bound asserted is wide
(30 s where a few are expected): it fails on a hang, not on a slow machine.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import xarray as xr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import MemoryStore

import toolkit
from toolkit.errors import StoreUnavailableError, WriteError
from toolkit.io import clients
from toolkit.io.classify import classify_error
from toolkit.io.metrics import IOMetrics
from toolkit.io.stores import resolve_store
from toolkit.io.throttle import Throttle
from toolkit.io.wrappers import wrap_store
from toolkit.testing import FaultProxy

pytest.importorskip("obstore")

pytestmark = pytest.mark.timeout(120)

CLIENTS = ["obstore", "s3fs"]
#: One second to connect, one second for each read of an answer.
FAST_TIMEOUTS = {"connect_timeout": 1, "read_timeout": 1}
#: No retry starts after 3 s; no request lasts beyond 15 s.
SHORT = Throttle(max_retry_seconds=3.0, request_deadline=15.0, backoff_base=0.05, backoff_max=0.5)
#: What one request, or a write against a dead store, may take here at most: a hang, not
#: slowness, fails it (about 5 s are expected: 3 s of retries, a last attempt of 2 s).
BOUND = 30.0


def _rows(n: int = 64, width: int = 8) -> xr.Dataset:
    v = np.arange(n * width, dtype="f4").reshape(n, width)
    return xr.Dataset({"v": (("t", "x"), v)}).chunk({"t": 16})


def _opts(s3: Any, endpoint: str, client: str, **timeouts: float) -> dict[str, Any]:
    return s3.storage_options(endpoint, client=client, config_kwargs=timeouts or FAST_TIMEOUTS)


def _causes(e: BaseException | None) -> Iterator[BaseException]:
    while e is not None:
        yield e
        e = e.__cause__


@pytest.fixture
def black_hole() -> Iterator[str]:
    """``http://127.0.0.1:port`` of a socket that takes connections and never reads them.

    The kernel completes each handshake (the listen backlog), so a client
    connects, sends what fits in the socket buffers, and then hears nothing.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# -- the defaults and the options -----------------------------------------------------


def test_timeouts_are_retried_not_final():
    """Both clients' timeouts, and s3fs's translation of a 500, are transient."""
    import aiohttp
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    for exc in (
        ReadTimeoutError(endpoint_url="http://x"),
        ConnectTimeoutError(endpoint_url="http://x"),
        aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
        asyncio.TimeoutError(),  # noqa: UP041 (what asyncio code raises, by its name)
        OSError(errno.EREMOTEIO, "We encountered an internal error"),  # s3fs: a 500
        OSError(errno.ETIMEDOUT, "timed out"),
    ):
        assert classify_error(exc) == "transient", exc
        wrapped = OSError(errno.EIO, "s3fs wraps it")
        wrapped.__cause__ = exc
        assert classify_error(wrapped) == "transient", exc
    assert classify_error(OSError(errno.EIO, "an error s3fs does not know")) == "fatal"


@pytest.mark.parametrize("client", CLIENTS)
def test_a_black_hole_is_a_named_retried_error_for_every_request(black_hole, client):
    """A store that never answers: get, small put and large put fail named within bounds.

    A small put is what s3fs hung on for good: botocore asks for ``100 Continue``
    and aiohttp waited for it with no timeout. Toolkit's s3fs client sends no
    ``Expect``, so its read timeout ends each attempt. A put larger than the
    socket buffers blocks in the send, which no client timeout of s3fs sees:
    ``request_deadline`` ends it.
    """
    opts = {
        "key": "k",
        "secret": "s",
        "endpoint_url": black_hole,
        "client": client,
        "client_kwargs": {"region_name": "us-east-1"},
        "config_kwargs": FAST_TIMEOUTS,
    }
    metrics = IOMetrics()
    store = wrap_store(
        resolve_store("s3://data/x.zarr", storage_options=opts, throttle=SHORT), SHORT, metrics
    )
    requests = {
        "get": lambda: store.get("zarr.json", default_buffer_prototype()),
        "small put": lambda: store.set("zarr.json", Buffer.from_bytes(b"{}")),
        "large put": lambda: store.set("v/c/0", Buffer.from_bytes(bytes(32 * 2**20))),
    }
    for what, request in requests.items():
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailableError) as err:
            sync(request())
        took = time.monotonic() - t0
        assert took < BOUND, (what, took)
        text = str(err.value)
        assert "s3://data/x.zarr/" in text, text
        if what != "large put":
            # Ended by the client's timeouts, taken as retryable (how many attempts fit
            # in 3 s depends on the machine), not by the deadline.
            assert "with retryable errors" in text and "request_deadline" not in text, text
    assert metrics.failed == 3


def test_request_deadline_ends_a_request_no_timeout_sees():
    """A store call that never returns: cancelled at the deadline, named, counted."""

    class Hangs(MemoryStore):
        async def set(self, key: str, value: Buffer) -> None:
            await asyncio.Event().wait()  # nobody sets it

    metrics = IOMetrics()
    stack = wrap_store(Hangs(), Throttle(request_deadline=0.5), metrics)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=r"no answer within request_deadline=0\.5 s"):
        sync(stack.set("k", Buffer.from_bytes(b"x")))
    assert time.monotonic() - t0 < BOUND
    assert metrics.sets == 1 and metrics.errors == 1 and metrics.failed == 1
    # The other requests of the store are not held up by the one that hung.
    sync(stack.get("k", default_buffer_prototype()))
    with pytest.raises(ValueError, match="request_deadline"):
        Throttle(request_deadline=0)
    assert Throttle(request_deadline=None).request_deadline is None


def test_a_retry_never_starts_past_the_deadline():
    """``max_retry_seconds`` beyond the deadline: the deadline bounds the retries too."""
    from toolkit.testing import FaultStore

    metrics = IOMetrics()
    policy = Throttle(
        max_retries=1000,
        max_retry_seconds=600,
        request_deadline=0.3,
        backoff_base=0.05,
        backoff_max=0.1,
        adaptive=False,
    )
    stack = wrap_store(FaultStore(MemoryStore(), error_prob=1.0), policy, metrics)
    with pytest.raises(StoreUnavailableError, match="retryable errors"):
        sync(stack.get("k", default_buffer_prototype()))
    assert metrics.backoff_seconds <= 0.3 and metrics.retries < 1000


# -- whole writes against the fault proxy ----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
def test_a_write_to_a_store_that_stalls_every_request_fails_named_within_a_bound(s3, client):
    """Every request held: the write's first request times out, is retried, and fails named."""
    with FaultProxy(s3.endpoint_url, stall_prob=1.0, stall=600) as proxy:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailableError) as err:
            toolkit.to_zarr(
                _rows(),
                f"s3://data/stalled-{client}.zarr",
                mode="w",
                storage_options=_opts(s3, proxy.url, client),
                throttle=SHORT,
                progress=False,
            )
        took = time.monotonic() - t0
    assert took < BOUND, took
    assert proxy.counts.stalled >= 1 and proxy.counts.forwarded == 0
    text = str(err.value)
    assert "retryable errors" in text and "stalled-" in text, text  # a timeout: transient
    assert any(
        "timeout" in f"{type(c).__name__} {c}".lower() or "error sending request" in str(c)
        for c in _causes(err.value)
    ), text


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
def test_a_write_whose_chunk_writes_stall_fails_with_its_record_within_a_bound(s3, client):
    """The store takes the metadata, then holds every chunk: a WriteError with a record.

    Bounded by ``3 D + 2 A`` (the object-stores guide): 19 s here, about 5 s when
    the tasks run side by side; 60 s fails only a hang.
    """
    url = f"s3://data/stalled-chunks-{client}.zarr"
    with FaultProxy(s3.endpoint_url, stall_prob=1.0, stall=600, only=r"/v/c/") as proxy:
        t0 = time.monotonic()
        with pytest.raises(WriteError) as err:
            toolkit.to_zarr(
                _rows(),
                url,
                mode="w",
                storage_options=_opts(s3, proxy.url, client),
                throttle=SHORT,
                progress=False,
            )
        took = time.monotonic() - t0
    assert took < 2 * BOUND, took
    assert isinstance(err.value.__cause__, StoreUnavailableError), repr(err.value.__cause__)
    assert err.value.record is not None and err.value.record["v"]["written"] == 0
    assert "No request of this write is still running" in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
def test_a_write_through_some_stalled_requests_lands_whole(s3, client):
    """A third of the requests held: each times out after a second, is retried, and lands.

    A held request is never forwarded (the proxy hangs up on it when it
    closes), so no late copy of a request lands after its retry.
    """
    ds = _rows(128)
    url = f"s3://data/some-stalled-{client}.zarr"
    policy = Throttle(
        max_retry_seconds=60.0, request_deadline=90.0, backoff_base=0.05, backoff_max=0.5
    )
    with FaultProxy(s3.endpoint_url, stall_prob=0.3, stall=600, seed=7) as proxy:
        t0 = time.monotonic()
        report = toolkit.to_zarr(
            ds,
            url,
            mode="w",
            storage_options=_opts(s3, proxy.url, client),
            encoding={"v": {"chunks": (8, 8)}},
            throttle=policy,
            progress=False,
        )
        took = time.monotonic() - t0
        stalled = proxy.counts.stalled
    assert stalled > 0  # held requests timed out, were retried and landed (below)
    assert report.units == 16
    assert took < 100.0, took  # a hang, not slowness
    back = xr.open_zarr(url, storage_options=s3.storage_options(), consolidated=False).load()
    xr.testing.assert_equal(back, ds.compute())


# -- the options each client is given ---------------------------------------------------


def test_the_default_timeouts_add_up_to_a_stall_bound_of_30_seconds():
    assert clients.CONNECT_TIMEOUT + clients.READ_TIMEOUT <= 30.0
    policy = Throttle()
    assert policy.request_deadline is not None
    # The documented worst case of a request against a stalled store (object-stores.md).
    worst = policy.max_retry_seconds + clients.CONNECT_TIMEOUT + clients.READ_TIMEOUT
    assert worst == 90.0 and policy.request_deadline == 120.0
