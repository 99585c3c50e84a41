"""The metadata round's write-behind buffer: one round for a chain, nothing lost on a failure.

zarr's store conformance suite runs for it with the other wrappers
(``test_wrappers.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import zarr
from zarr.core.buffer.cpu import Buffer
from zarr.storage import MemoryStore

from toolkit.io.buffer import MetadataBuffer
from toolkit.io.wrappers import MetricsStore
from toolkit.upstream import sync


def test_metadata_buffer_turns_a_chain_into_one_round():
    base = MemoryStore()
    counted = MetricsStore(base)
    buf = MetadataBuffer(counted, empty_prefix="")
    g = zarr.create_group(buf)
    g.create_array("a", shape=(4,), dtype="f8")
    g.attrs["x"] = 1
    assert counted.metrics.total == 0  # a fresh store: nothing needs asking
    assert sync(buf.flush()) == 2 and counted.metrics.sets == 2
    back = zarr.open_group(base, mode="r")
    assert back.attrs["x"] == 1 and list(back.array_keys()) == ["a"]
    # On an existing store, reads go through once and are remembered.
    buf2 = MetadataBuffer(counted)
    zarr.open_group(buf2, mode="r")
    first = counted.metrics.gets
    assert first > 0
    for _ in range(3):
        zarr.open_group(buf2, mode="r")
    assert counted.metrics.gets == first


class _FailsOneSet(zarr.storage.WrapperStore[Any]):
    """Fails the first set of one key (the others land, after a delay)."""

    def __init__(self, store: Any, key: str) -> None:
        super().__init__(store)
        self.key, self.failed = key, False

    async def set(self, key: str, value: Buffer) -> None:
        if key == self.key and not self.failed:
            self.failed = True
            raise ConnectionError(f"lost {key}")
        await asyncio.sleep(0.01)  # the failure arrives while the others are in flight
        await self._store.set(key, value)


def test_metadata_buffer_flush_keeps_what_did_not_land_for_a_retry():
    """Finding 6: a flush that failed one request forgot the entries it had swapped out."""
    base = MemoryStore()
    buf = MetadataBuffer(_FailsOneSet(base, "b/zarr.json"), empty_prefix="")
    docs = {k: Buffer.from_bytes(k.encode()) for k in ("a/zarr.json", "b/zarr.json", "zarr.json")}
    for k, v in docs.items():
        sync(buf.set(k, v))
    with pytest.raises(ConnectionError, match=r"lost b/zarr\.json"):
        sync(buf.flush())
    assert set(base._store_dict) == {"a/zarr.json", "zarr.json"}  # the others landed
    assert set(buf._pending) == {"b/zarr.json"}  # what did not land is kept
    assert sync(buf.exists("b/zarr.json"))  # and still seen by readers of the buffer
    assert sync(buf.flush()) == 1  # a retry sends it
    assert {k: v.to_bytes() for k, v in base._store_dict.items()} == {
        k: v.to_bytes() for k, v in docs.items()
    }
    assert not buf._pending


def test_listing_a_group_hides_toolkits_prefix_from_zarr_but_not_from_deletes():
    store = MemoryStore()
    for key in ("zarr.json", ".toolkit/lease", "a/zarr.json"):
        sync(store.set(key, Buffer.from_bytes(b"{}")))
    buffer = MetadataBuffer(store)

    async def listed(it: Any) -> list[str]:
        return sorted([k async for k in it])

    assert sync(listed(buffer.list_dir(""))) == ["a", "zarr.json"]
    assert ".toolkit/lease" in sync(listed(buffer.list_prefix("")))
    assert not sync(buffer.is_empty(""))
