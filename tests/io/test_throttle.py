"""The throttle policy: validation, URL defaults, error classes, rates and AIMD."""

from __future__ import annotations

import asyncio
import errno
import itertools
import pickle
import time

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from zarr.core.buffer.cpu import Buffer
from zarr.storage import MemoryStore

import toolkit
from toolkit.io.throttle import Budget, Throttle, _Limiter, classify_error, resolve_throttle


def _client_error(status: int, code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


def test_defaults_by_url():
    s3 = Throttle.for_url("s3://bucket/x.zarr")
    assert s3 is not None and s3.write_rate and s3.read_rate and s3.write_rate < 3500
    assert Throttle.for_url("gs://b/x") is not None
    assert Throttle.for_url("az://b/x") is not None
    assert Throttle.for_url("/tmp/x.zarr") is None
    assert Throttle.for_url("file:///tmp/x.zarr") is None
    assert resolve_throttle(None, "s3://b/x") == s3
    assert resolve_throttle(False, "s3://b/x") is None
    mine = Throttle(rate=5)
    assert resolve_throttle(mine, "/local") is mine
    with pytest.raises(TypeError, match=r"toolkit\.Throttle"):
        resolve_throttle({"rate": 5}, "s3://b/x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw",
    [
        {"max_inflight": 0},
        {"rate": 0},
        {"write_rate": -1},
        {"read_rate": float("inf")},
        {"max_retries": -1},
        {"backoff_base": 0},
    ],
)
def test_invalid_policies_name_the_parameter(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name.split("_")[0]):
        Throttle(**kw)


def test_share_divides_rates_and_inflight():
    t = Throttle(max_inflight=64, rate=100, write_rate=40)
    s = t.share(4)
    assert (s.max_inflight, s.rate, s.write_rate, s.read_rate) == (16, 25, 10, None)
    assert t.share(1) is t
    assert pickle.loads(pickle.dumps(s)) == s


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (_client_error(503, "SlowDown"), "throttled"),
        (_client_error(503, "503"), "throttled"),  # a HEAD's 503 has no body
        (_client_error(429, "TooManyRequests"), "throttled"),
        (OSError(errno.EBUSY, "Please reduce your request rate."), "throttled"),
        (_client_error(500, "InternalError"), "transient"),
        (_client_error(502, "502"), "transient"),
        (ConnectionResetError(104, "reset"), "transient"),
        (TimeoutError(), "transient"),
        (EndpointConnectionError(endpoint_url="http://x"), "transient"),
        (_client_error(403, "AccessDenied"), "fatal"),
        (_client_error(400, "InvalidRequest"), "fatal"),
        (ValueError("a bug"), "fatal"),
    ],
)
def test_classify_error(exc, verdict):
    assert classify_error(exc) == verdict
    # s3fs wraps botocore's errors: the cause decides.
    wrapped = OSError(errno.EIO, "wrapped")
    wrapped.__cause__ = exc
    assert classify_error(wrapped) == verdict


def test_limiter_spaces_requests_at_the_rate():
    lim = _Limiter(50.0, Throttle(rate=50, adaptive=False))
    waits = [lim.reserve()[0] for _ in range(100)]
    # A quarter second of burst, then one slot every 20 ms.
    assert waits[0] == 0
    assert waits[-1] == pytest.approx(99 / 50 - 0.25, abs=0.02)
    assert all(b >= a for a, b in itertools.pairwise(waits))


def test_adaptive_halves_on_throttling_and_recovers():
    pol = Throttle(write_rate=100, cooldown=0.0, increase=0.5)
    b = Budget(pol)
    b.throttled("write")
    assert b.current_rates()["write"] == pytest.approx(50)
    b.throttled("write")
    assert b.current_rates()["write"] == pytest.approx(25)
    assert b.current_rates()["read"] is None  # kinds are separate
    lim = b._kinds["write"]
    lim._last_decrease -= 2.0  # two quiet seconds
    lim._last_increase -= 2.0
    b.reserve("write")
    # +50% of the rate the last cut set (25/s) per quiet second: 25 + 2 * 12.5.
    assert b.current_rates()["write"] == pytest.approx(50)


def test_adaptive_without_a_rate_learns_one_from_traffic():
    b = Budget(Throttle(cooldown=0.0))
    for _ in range(40):  # ~80 requests/s for half a second
        b.reserve("read")
        time.sleep(0.0125)
    b.throttled("read")
    learned = b.current_rates()["read"]  # half of what was sent, per second
    assert learned is not None and 25 <= learned <= 45


def test_cooldown_limits_decreases():
    b = Budget(Throttle(read_rate=100, cooldown=10.0))
    for _ in range(5):
        b.throttled("read")
    assert b.current_rates()["read"] == pytest.approx(50)


async def test_budget_caps_requests_in_flight():
    b = Budget(Throttle(max_inflight=3))
    now, peak = 0, 0

    async def one():
        nonlocal now, peak
        async with b.semaphore():
            now += 1
            peak = max(peak, now)
            await asyncio.sleep(0.01)
            now -= 1

    await asyncio.gather(*(one() for _ in range(20)))
    assert peak == 3


def test_throttle_is_exported_and_renders():
    t = toolkit.Throttle(write_rate=10)
    assert "write" in t._row() and t._row()["write"] == "10/s"
    started = time.monotonic()
    assert Budget(t).reserve("write") == 0 and time.monotonic() - started < 0.1


async def test_an_unreachable_coordinator_falls_back_to_the_local_budget():
    """A coordinated policy whose scheduler cannot be reached still sends, locally limited."""
    from toolkit.io.wrappers import ThrottleStore

    class Unreachable:
        async def reserve(self, kind):
            raise OSError("scheduler gone")

        def throttled(self, kind, age):
            pass

    store = ThrottleStore(
        MemoryStore(),
        Throttle(write_rate=1000, coordinated=True),
        remote=lambda policy, scope: Unreachable(),
    )
    await store.set("k", Buffer.from_bytes(b"x"))
    assert store._store._store_dict["k"].to_bytes() == b"x"


def test_a_cut_follows_what_was_sent_not_a_distant_limit():
    b = Budget(Throttle(read_rate=5000, cooldown=0.0))
    for _ in range(50):  # ~100 requests/s for half a second, far below the 5,000/s limit
        b.reserve("read")
        time.sleep(0.01)
    b.throttled("read", time.monotonic())
    assert 35 <= b.current_rates()["read"] <= 55  # half of ~100, not half of 5,000


def test_a_503_among_the_first_requests_of_a_run_does_not_read_as_a_tiny_rate():
    b = Budget(Throttle(read_rate=5000, cooldown=0.0))
    for _ in range(8):  # a run's first requests, at once
        b.reserve("read")
    b.throttled("read", time.monotonic())
    assert b.current_rates()["read"] >= 50  # not 4/s: 8 requests in no time are a high rate


def test_answers_to_requests_sent_before_a_cut_are_ignored():
    b = Budget(Throttle(write_rate=100, cooldown=0.0))
    before = time.monotonic()
    b.throttled("write", time.monotonic())
    assert b.current_rates()["write"] == pytest.approx(50)
    for _ in range(10):  # the rest of the same burst answers 503 too
        b.throttled("write", before)
    assert b.current_rates()["write"] == pytest.approx(50)
    b.throttled("write", time.monotonic())  # a request booked after the cut: cut again
    assert b.current_rates()["write"] == pytest.approx(25)


def test_throttle_state_shows_the_rates_in_force_per_store():
    from toolkit.io.throttle import budget_for

    scope = "s3://bucket/state-test.zarr"
    b = budget_for(Throttle(rate=100, write_rate=50, cooldown=0.0), scope)
    b.reserve("write")
    b.throttled("write")
    state = toolkit.throttle_state()
    mine = [s for s in state.budgets if s.store == scope]
    assert len(mine) == 1 and mine[0].where == "this process"
    assert mine[0].rates["write"] is not None and mine[0].rates["write"] < 50 and mine[0].cuts >= 1
    text = repr(state)
    assert scope in text and "of 50" in text  # the cut rate, next to the configured one
    assert scope in state._repr_html_() and "<table" in state._repr_html_()
