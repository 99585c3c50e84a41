"""What a write put in a store: each object's size and checksum, and the keys it deleted."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from typing import Self, override

import xxhash
from zarr.abc.buffer import Buffer
from zarr.abc.store import Store

from toolkit.io.wrappers import InterceptStore

__all__ = ["PREFIX", "Written", "WrittenStore", "checksum", "matches"]


#: How a checksum written now begins: the algorithm, so that one on record says how to
#: check it. A checksum without a prefix is BLAKE2b-128 (written before XXH3-128, 2026-12).
PREFIX = "xxh3-128:"


def checksum(data: bytes | memoryview) -> str:
    """The checksum kept for a stored object: ``xxh3-128:`` and XXH3's 128 bits in hex.

    XXH3 is no cryptographic hash, and needs to be none: the manifest finds
    objects damaged or changed outside toolkit, not forged ones. It sums ~30 GB/s
    a core where BLAKE2b sums ~1 (which cost a local write ~0.5 s a GiB).
    """
    return PREFIX + xxhash.xxh3_128_hexdigest(data)


def matches(data: bytes | memoryview, on_record: Iterable[str]) -> bool:
    """Whether ``data``'s checksum is one of those on record, in each one's algorithm."""
    sums: dict[bool, str] = {}
    for c in on_record:
        new = c.startswith(PREFIX)
        if new not in sums:
            sums[new] = checksum(data) if new else hashlib.blake2b(data, digest_size=16).hexdigest()
        if sums[new] == c:
            return True
    return False


#: Objects at least this big are summed in a worker thread (hashlib releases the GIL):
#: on zarr's event loop, whose one thread every write's requests share, summing a
#: few MiB per chunk made the loop the bottleneck of a local rechunk.
_THREAD_BYTES = 256 * 2**10


async def _summed(value: Buffer) -> tuple[int, str]:
    """Size and checksum of a buffer, without a copy of it."""
    view = memoryview(value.as_numpy_array()).cast("B")
    if view.nbytes >= _THREAD_BYTES:
        return view.nbytes, await asyncio.to_thread(checksum, view)
    return view.nbytes, checksum(view)


class Written:
    """The objects one write (or one task of it) put or deleted: the manifest's raw material."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[int, str] | None] = {}

    def put(self, key: str, data: bytes) -> None:
        """``data`` landed at ``key``."""
        self.objects[key] = (len(data), checksum(data))

    def summed(self, key: str, size: int, digest: str) -> None:
        """An object of ``size`` bytes and checksum ``digest`` landed at ``key``."""
        self.objects[key] = (size, digest)

    def deleted(self, key: str) -> None:
        """``key`` was deleted."""
        self.objects[key] = None

    def update(self, other: Written) -> None:
        """Add another part of the write (later over earlier)."""
        self.objects.update(other.objects)

    def as_lists(self) -> dict[str, list[object] | None]:
        """JSON-friendly: key -> [size, checksum], or None for a deletion."""
        return {k: None if v is None else [v[0], v[1]] for k, v in self.objects.items()}


class WrittenStore(InterceptStore):
    """Records the size and checksum of every object written through it, and every deletion.

    Parameters
    ----------
    store : Store
        The stack below.
    written : Written, optional
        Where to record (a new one by default).
    """

    def __init__(self, store: Store, written: Written | None = None) -> None:
        super().__init__(store)
        self.written = written if written is not None else Written()

    def _with_store(self, store: Store) -> Self:
        return type(self)(store, self.written)

    @override
    async def set(self, key: str, value: Buffer) -> None:
        # Summed while it is sent; recorded only once it landed.
        _, summed = await asyncio.gather(super().set(key, value), _summed(value))
        self.written.summed(key, *summed)

    @override
    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        existed = await self._store.exists(key)
        await super().set_if_not_exists(key, value)
        if not existed:
            self.written.summed(key, *await _summed(value))

    @override
    async def delete(self, key: str) -> None:
        await super().delete(key)
        self.written.deleted(key)

    @property
    def digests(self) -> dict[str, str]:
        """Key -> checksum of the objects written (what resume markers keep)."""
        return {k: v[1] for k, v in self.written.objects.items() if v is not None}
