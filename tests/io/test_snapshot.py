"""The metadata snapshot's knowledge of empty prefixes (a new tree's plan reads nothing)."""

from __future__ import annotations

from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import MemoryStore

from toolkit.io.snapshot import SnapshotStore


def _buf(data: bytes):
    return default_buffer_prototype().buffer.from_bytes(data)


def test_a_prefix_known_empty_is_answered_without_a_request_until_a_write():
    inner = MemoryStore()
    sync(inner.set("other/x", _buf(b"kept")))
    snap = SnapshotStore(inner)
    snap.empty_below("t/")
    # Put behind the snapshot's back: a snapshot that asked the store would see it.
    sync(inner.set("t/zarr.json", _buf(b"{}")))
    proto = default_buffer_prototype()

    async def reads() -> tuple[object, ...]:
        return (
            await snap.get("t/zarr.json", proto),
            await snap.exists("t/zarr.json"),
            [k async for k in snap.list_prefix("t/")],
            [k async for k in snap.list_dir("t")],
            await snap.get("other/x", proto),
        )

    got, there, listed, members, other = sync(reads())
    assert (got, there, listed, members) == (None, False, [], [])
    assert other is not None and other.to_bytes() == b"kept"  # outside it: read as ever
    sync(snap.set("t/v/zarr.json", _buf(b"{}")))  # a write: nothing is known empty now
    after = sync(snap.get("t/zarr.json", proto))
    assert after is not None and after.to_bytes() == b"{}"
