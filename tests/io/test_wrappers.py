"""Store wrappers: zarr's own conformance suite, and exact request counts."""

from __future__ import annotations

import asyncio
import pickle
import shutil
import time
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer.cpu import Buffer
from zarr.storage import LocalStore, MemoryStore
from zarr.testing.store import StoreTests

from toolkit.io.buffer import MetadataBuffer
from toolkit.io.metrics import IOMetrics
from toolkit.io.stores import describe_store, resolve_store, unwrap
from toolkit.io.throttle import Throttle
from toolkit.io.wrappers import (
    DigestStore,
    GateStore,
    MetricsStore,
    RetryStore,
    ThrottleStore,
    wrap_store,
)
from toolkit.testing import FaultStore


class _WrapperConformance(StoreTests[Any, Buffer]):
    """zarr's own store conformance suite, run for each toolkit wrapper over a LocalStore."""

    buffer_cls = Buffer

    async def get(self, store: Any, key: str) -> Buffer:
        return self.buffer_cls.from_bytes((unwrap(store).root / key).read_bytes())

    async def set(self, store: Any, key: str, value: Buffer) -> None:
        path = unwrap(store).root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.to_bytes())

    @pytest.fixture
    def store_kwargs(self, tmp_path: Any) -> dict[str, Any]:
        return {"store": LocalStore(str(tmp_path))}

    @pytest.fixture
    def open_kwargs(self, tmp_path: Any) -> dict[str, Any]:
        return {"store_cls": LocalStore, "root": str(tmp_path)}

    def test_store_supports_writes(self, store: Any) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: Any) -> None:
        assert store.supports_listing

    def test_store_repr(self, store: Any) -> None:
        assert repr(store) == f"{type(store).__name__}(file://{unwrap(store).root})"

    def test_store_str(self, store: Any) -> None:
        assert str(store) == f"wrapping-file://{unwrap(store).root.as_posix()}"


class TestMetricsStore(_WrapperConformance):
    store_cls = MetricsStore


class TestGateStore(_WrapperConformance):
    store_cls = GateStore


class TestThrottleStore(_WrapperConformance):
    store_cls = ThrottleStore


class TestRetryStore(_WrapperConformance):
    store_cls = RetryStore


class TestDigestStore(_WrapperConformance):
    store_cls = DigestStore


class TestMetadataBuffer(_WrapperConformance):
    """Write-behind: what the suite writes through it lands at ``flush``, reads see it before."""

    store_cls = MetadataBuffer

    async def get(self, store: Any, key: str) -> Buffer:
        await store.flush()
        return await super().get(store, key)


class TestFaultStore(_WrapperConformance):
    """With no faults drawn, a FaultStore is an ordinary store."""

    store_cls = FaultStore


class TestFullStack(_WrapperConformance):
    """The stack toolkit builds: retries around the budget around metrics."""

    store_cls = RetryStore

    @pytest.fixture
    def store_kwargs(self, tmp_path: Any) -> dict[str, Any]:
        stack = wrap_store(LocalStore(str(tmp_path)), Throttle(rate=10_000))
        return {"store": stack._store, "policy": stack.policy}

    @pytest.fixture
    async def store(self, store_kwargs: dict[str, Any]) -> Any:
        stack = self.store_cls(**store_kwargs)
        await stack._open()
        return stack

    def test_store_repr(self, store: Any) -> None:
        assert repr(store) == f"RetryStore(file://{unwrap(store).root})"

    def test_store_str(self, store: Any) -> None:
        root = unwrap(store).root.as_posix()
        assert str(store) == f"wrapping-wrapping-wrapping-file://{root}"


def test_counts_every_request_of_a_zarr_write_and_read():
    counting = MetricsStore(MemoryStore())
    arr = zarr.create_array(counting, shape=(10, 10), chunks=(5, 5), dtype="i4")
    before = counting.metrics.sets
    arr[:] = np.arange(100).reshape(10, 10)
    assert counting.metrics.sets - before == 4
    gets = counting.metrics.gets
    assert arr[:7, :3].sum() == np.arange(100).reshape(10, 10)[:7, :3].sum()
    assert counting.metrics.gets - gets == 2
    assert counting.metrics.bytes_written > 0 and counting.metrics.bytes_read > 0


def test_metrics_pickle_with_a_fresh_lock():
    c = IOMetrics()
    c.add(gets=3, bytes_read=10)
    c2 = pickle.loads(pickle.dumps(c))
    assert c2.as_dict() == c.as_dict()
    c2.add(gets=1)
    assert (c.gets, c2.gets) == (3, 4)


def test_resolve_store(tmp_path):
    assert isinstance(resolve_store(tmp_path / "a.zarr"), LocalStore)
    mem = MemoryStore()
    assert resolve_store(mem) is mem
    with pytest.raises(TypeError, match="storage_options"):
        resolve_store(tmp_path, storage_options={"anon": True})
    assert describe_store(MetricsStore(resolve_store(tmp_path))) == f"file://{tmp_path}"


# --------------------------------------------------------------------------- behaviour

from zarr.core.buffer import default_buffer_prototype  # noqa: E402
from zarr.core.sync import sync  # noqa: E402

from toolkit.errors import (  # noqa: E402
    RequestAbortedError,
    StoreAccessError,
    StoreThrottledError,
    StoreUnavailableError,
)
from toolkit.io.stores import redact  # noqa: E402

# Retries alone: the injected faults do not depend on the rate, so AIMD would only slow it.
FAST = Throttle(backoff_base=0.001, backoff_max=0.01, max_retries=50, adaptive=False)


def test_retries_land_every_value_through_throttling_resets_and_500s():
    """A zarr array written and read through heavy faults is exact, and the metrics say why."""
    base = MemoryStore()
    faulty = FaultStore(base, throttle_prob=0.1, error_prob=0.05, reset_prob=0.05, seed=1)
    metrics = IOMetrics()
    stack = wrap_store(faulty, FAST, metrics)
    arr = zarr.create_array(stack, shape=(40, 40), chunks=(4, 4), dtype="i4")
    data = np.arange(1600, dtype="i4").reshape(40, 40)
    arr[:] = data
    np.testing.assert_array_equal(zarr.open_array(base, mode="r")[:], data)
    np.testing.assert_array_equal(arr[:], data)
    assert metrics.throttled > 0 and metrics.errors > 0
    assert metrics.retries == metrics.throttled + metrics.errors
    assert metrics.backoff_seconds > 0 and metrics.failed == 0


def test_retries_stop_at_their_budget_with_a_clear_error():
    stack = wrap_store(
        FaultStore(MemoryStore(), throttle_prob=1.0),
        Throttle(max_retries=3, backoff_base=0.001, adaptive=False),
    )
    with pytest.raises(StoreThrottledError, match=r"slow down.*4 attempts.*Throttle\(write_rate"):
        sync(stack.set("k", Buffer.from_bytes(b"x")))
    stack = wrap_store(
        FaultStore(MemoryStore(), error_prob=1.0), Throttle(max_retries=2, backoff_base=0.001)
    )
    with pytest.raises(StoreUnavailableError, match="3 times") as err:
        sync(stack.get("k", default_buffer_prototype()))
    assert isinstance(err.value, ConnectionError)  # the matching builtin
    # The time budget binds too: large backoffs are not slept past it. (Judged by what
    # was slept, not by the wall clock: a loaded machine runs the attempts slower.)
    slow = Throttle(max_retries=100, max_retry_seconds=0.2, backoff_base=0.05, backoff_max=0.1)
    metrics = IOMetrics()
    stack = wrap_store(FaultStore(MemoryStore(), error_prob=1.0), slow, metrics)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=r"failed \d+ times in"):
        sync(stack.get("k", default_buffer_prototype()))
    assert metrics.backoff_seconds <= 0.2 and metrics.failed == 1
    assert metrics.retries < 100  # stopped by the time budget, not by the count
    assert time.monotonic() - t0 < 30  # a hang, not slowness


def test_final_errors_are_not_retried():
    class Denied(MemoryStore):
        async def set(self, key: str, value: Buffer) -> None:
            raise PermissionError("AccessDenied")

    metrics = IOMetrics()
    stack = wrap_store(Denied(), FAST, metrics)
    with pytest.raises(StoreAccessError, match="credentials") as err:
        sync(stack.set("k", Buffer.from_bytes(b"x")))
    assert isinstance(err.value, PermissionError)
    assert metrics.sets == 1 and metrics.retries == 0


def test_aborted_gate_sends_nothing_and_waits_for_inflight():
    base = MemoryStore()
    metrics = IOMetrics()
    stack = wrap_store(FaultStore(base, latency=0.05), FAST, metrics, gate=True)
    gate = stack._store._store  # RetryStore -> ThrottleStore -> GateStore -> MetricsStore
    assert isinstance(gate, GateStore)

    async def go():
        first = asyncio.ensure_future(stack.set("a", Buffer.from_bytes(b"1")))
        await asyncio.sleep(0.01)
        gate.abort()
        with pytest.raises(RequestAbortedError):
            await stack.set("b", Buffer.from_bytes(b"2"))
        await first

    sync(go())
    assert gate.wait_idle(timeout=1)
    assert gate.landed == {"a"} and set(base._store_dict) == {"a"}
    # The refused request was sent nowhere, and counted nowhere: one set in all.
    assert metrics.sets == 1 and metrics.errors == 0


def test_the_gate_counts_what_landed_through_zarrs_sync_paths(tmp_path):
    """A local store's synchronous fast path passes the gate too: counted, and refused."""
    gate = GateStore(MetricsStore(LocalStore(str(tmp_path))))
    assert gate._supports_sync_io
    gate.set_sync("a", Buffer.from_bytes(b"1"))
    gate.delete_sync("a")
    gate.delete_sync("never-there")  # an absent key's delete did its job
    assert gate.landed == {"a", "never-there"} and gate.inflight == 0
    gate.abort()
    with pytest.raises(RequestAbortedError):
        gate.set_sync("b", Buffer.from_bytes(b"2"))
    assert not (tmp_path / "b").exists()


def test_redact_removes_credentials_and_signatures(tmp_path):
    store = resolve_store(
        "s3://bucket/x.zarr",
        storage_options={"key": "AKIAEXAMPLEKEY", "secret": "s3cr3t-value", "anon": False},
    )
    text = (
        "failed for AKIAEXAMPLEKEY with s3cr3t-value at "
        "https://b.s3.amazonaws.com/k?X-Amz-Signature=abc123&X-Amz-Credential=AKIA%2F and "
        "http://user:pw@host/x"
    )
    out = redact(text, store)
    for secret in ("AKIAEXAMPLEKEY", "s3cr3t-value", "abc123", "user:pw"):
        assert secret not in out


async def test_an_unreachable_coordinator_leaves_this_process_its_share_and_says_so_once(caplog):
    """A remote budget that cannot be reached: its share paces, not the cluster's whole rate.

    Four workers each falling back to the whole rate would send four times the budget.
    """
    from dataclasses import replace

    from toolkit.io.budget import budget_for

    policy = Throttle(write_rate=1204, read_rate=2408, max_inflight=8, coordinated=True)
    share = replace(policy.share(4), max_inflight=8, coordinated=False)  # one of 4 workers
    calls = []

    class Unreachable:
        alone = share

        async def acquire(self, kind):
            calls.append(kind)
            raise OSError("the scheduler is gone")

        def throttled(self, kind, sent_at, retry_after):
            raise AssertionError("not reported to a remote budget out of reach")

    store = ThrottleStore(MemoryStore(), policy, remote=lambda p, scope: Unreachable())
    with caplog.at_level("WARNING", logger="toolkit.io.wrappers"):
        for i in range(25):
            await store.set(f"k{i}", Buffer.from_bytes(b"x"))
            assert await store.get(f"k{i}", default_buffer_prototype()) is not None
    assert len(calls) == 50  # the remote budget is asked every time: it may come back
    said = [r.getMessage() for r in caplog.records if "coordinator" in r.getMessage()]
    assert len(said) == 1, said
    assert "cannot be reached" in said[0] and "OSError: the scheduler is gone" in said[0]
    assert "read 602/s, write 301/s" in said[0] and "read 2408/s, write 1204/s" in said[0]
    # The share paced every request; the budget of the whole rate paced none.
    fallback = budget_for(share, describe_store(store._store))
    assert fallback.pacers["write"].grant.rate == pytest.approx(301)
    assert fallback.pacers["read"].grant.rate == pytest.approx(602)
    assert store.budget.pacers["write"].grant is None
    assert store.budget.pacers["read"].grant is None


async def test_a_remote_budget_without_a_share_falls_back_to_the_policy_warning_once(caplog):
    class Unreachable:
        async def acquire(self, kind):
            raise OSError("gone")

        def throttled(self, kind, sent_at, retry_after):
            pass

    policy = Throttle(write_rate=1206, coordinated=True)
    store = ThrottleStore(MemoryStore(), policy, remote=lambda p, scope: Unreachable())
    with caplog.at_level("WARNING", logger="toolkit.io.wrappers"):
        for i in range(10):
            await store.set(f"k{i}", Buffer.from_bytes(b"x"))
    assert len([r for r in caplog.records if "coordinator" in r.getMessage()]) == 1
    assert store.budget.pacers["write"].grant.rate == pytest.approx(1206)


class _LosesDeleteRace(LocalStore):
    """A LocalStore whose deletes of a directory lose a race to another deleter.

    The other deleter removes the directory between LocalStore's check and its
    rmtree, which then raises FileNotFoundError: what two concurrent deletes of
    one directory do.
    """

    async def delete(self, key: str) -> None:
        path = self.root / key
        if path.is_dir():
            await asyncio.to_thread(shutil.rmtree, path)  # the other deleter, first
            await asyncio.to_thread(shutil.rmtree, path)  # this one
        await super().delete(key)


@pytest.mark.parametrize("policy", [None, Throttle(backoff_base=0.001)], ids=["plain", "retries"])
def test_a_delete_that_finds_nothing_left_is_no_error(tmp_path, policy):
    """Issue 30: a delete of what is already gone did its job (S3 answers 204), no error."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0").write_bytes(b"x")
    metrics = IOMetrics()
    stack = wrap_store(_LosesDeleteRace(tmp_path), policy, metrics)
    with pytest.raises(FileNotFoundError):  # told as it is: callers may care
        sync(stack.delete("a"))
    sync(stack.delete("never-there"))  # LocalStore raises nothing for an absent file
    assert not (tmp_path / "a").exists()
    assert (metrics.deletes, metrics.errors, metrics.failed, metrics.retries) == (2, 0, 0, 0)
    # A delete the store refuses is an error still: delete_dir of a file.
    (tmp_path / "zarr.json").write_bytes(b"{}")
    with pytest.raises(ValueError, match="is a file"):
        sync(stack.delete_dir("zarr.json"))
    assert (metrics.deletes, metrics.errors) == (3, 1)
    assert metrics.failed == (policy is not None)  # counted by the retries, when there are
