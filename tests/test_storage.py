"""Store wrappers: zarr's own conformance suite, and exact request counts."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer.cpu import Buffer
from zarr.storage import LocalStore, MemoryStore
from zarr.testing.store import StoreTests

from toolkit.metrics import IOMetrics
from toolkit.storage import MetricsStore, describe_store, resolve_store


class TestMetricsStore(StoreTests[MetricsStore, Buffer]):
    store_cls = MetricsStore
    buffer_cls = Buffer

    async def get(self, store: MetricsStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes((store._store.root / key).read_bytes())

    async def set(self, store: MetricsStore, key: str, value: Buffer) -> None:
        path = store._store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.to_bytes())

    @pytest.fixture
    def store_kwargs(self, tmp_path: Any) -> dict[str, Any]:
        return {"store": LocalStore(str(tmp_path))}

    @pytest.fixture
    def open_kwargs(self, tmp_path: Any) -> dict[str, Any]:
        return {"store_cls": LocalStore, "root": str(tmp_path)}

    def test_store_supports_writes(self, store: MetricsStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: MetricsStore) -> None:
        assert store.supports_listing

    def test_store_repr(self, store: MetricsStore) -> None:
        assert repr(store) == f"MetricsStore(file://{store._store.root})"

    def test_store_str(self, store: MetricsStore) -> None:
        assert str(store) == f"wrapping-file://{store._store.root.as_posix()}"


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
