"""Read-modify-writes of shared write units that can never lose another writer's update.

A region that covers a write unit (chunk or shard) only partly updates it by
reading it, merging its own values, and writing it back. Two jobs whose
regions share the unit do that at the same time, and without care the second
write erases the first. :class:`ConditionalUnits` makes the write back
conditional on the version read (replace-if-version, or create-if-absent for a
unit that did not exist): if another writer got there in between, the write
raises :class:`UnitConflict` instead of landing, and the caller reads, merges
and writes again. No lease is needed for safety, and none can be lost in the
middle: a writer that was slow, stalled or presumed dead still cannot
overwrite what landed after its read.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Self

from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest, Store
from zarr.buffer.cpu import Buffer as CPUBuffer
from zarr.storage import WrapperStore

from toolkit.io.conditional import ConditionalStore, Versioned
from toolkit.io.digests import Written
from toolkit.io.wrappers import MetricsStore, ThrottleStore
from toolkit.upstream import normalize_byte_range, wrapped_store

__all__ = ["ConditionalUnits", "UnitConflict"]


class UnitConflict(Exception):
    """Another writer changed a shared unit between this writer's read and its write."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key} changed since it was read")
        self.key = key


def _through[T](stack: Store, op: str, key: str, fn: Callable[[], Awaitable[T]]) -> Awaitable[T]:
    """``fn`` as one request of ``stack``: its budget and its metrics (not its retries).

    The conditional store retries by itself (checking whether a lost attempt
    landed); the request still spends from the budget and is counted.
    """
    layers = []
    s: Store = stack
    while isinstance(s, WrapperStore):
        if isinstance(s, ThrottleStore | MetricsStore):
            layers.append(s)
        s = wrapped_store(s)
    call = fn
    for layer in reversed(layers):  # innermost first
        call = functools.partial(layer._call, op, key, call)
    return call()


class ConditionalUnits(WrapperStore[Store]):
    """For the keys in ``keys``, reads remember the version and writes replace only it.

    Parameters
    ----------
    store : Store
        The stack that every other request goes through.
    cas : ConditionalStore
        The conditional operations of the store below ``store``.
    keys : iterable of str
        The shared units' keys (store-relative, as zarr names them).
    written : Written, optional
        Where the units that landed are recorded (for the write's manifest).
    """

    def __init__(
        self,
        store: Store,
        cas: ConditionalStore,
        keys: Iterable[str],
        written: Written | None = None,
    ) -> None:
        super().__init__(store)
        self.cas = cas
        self.keys = frozenset(keys)
        self.written = written
        self._read: dict[str, Versioned | None] = {}

    @property
    def _supports_sync_io(self) -> bool:
        # zarr would call the wrapped store's synchronous fast paths, bypassing this one.
        return False

    def _with_store(self, store: Store) -> Self:
        return type(self)(store, self.cas, self.keys, self.written)

    def forget(self) -> None:
        """Forget what was read: the next read of each unit fetches it again."""
        self._read.clear()

    async def prefetch(self) -> None:
        """Read every shared unit at once (one round, not one per variable written)."""
        await asyncio.gather(*(self._versioned(k) for k in sorted(self.keys)))

    async def _versioned(self, key: str) -> Versioned | None:
        if key not in self._read:
            self._read[key] = await _through(self._store, "get", key, lambda: self.cas.get(key))
        return self._read[key]

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """A shared unit from the version remembered (read once); other keys as they are."""
        if key not in self.keys:
            return await self._store.get(key, prototype, byte_range)
        got = await self._versioned(key)
        if got is None:
            return None
        start, stop = normalize_byte_range(CPUBuffer.from_bytes(got.data), byte_range)
        return prototype.buffer.from_bytes(got.data[start:stop])

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        """Each range as a :meth:`get` of its own."""
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists (a shared unit: as read)."""
        if key not in self.keys:
            return await self._store.exists(key)
        return await self._versioned(key) is not None

    async def set(self, key: str, value: Buffer) -> None:
        """Write ``key``; a shared unit only at the version read (else :class:`UnitConflict`)."""
        if key not in self.keys:
            await self._store.set(key, value)
            return
        seen = await self._versioned(key)
        data = value.to_bytes()
        if seen is None:
            op: Callable[[], Awaitable[str | None]] = lambda: self.cas.create(key, data)  # noqa: E731
        else:
            op = lambda: self.cas.replace(key, data, seen.version)  # noqa: E731
        landed = await _through(self._store, "set", key, op)
        if landed is None:
            self._read.pop(key, None)
            raise UnitConflict(key)
        self._read[key] = Versioned(data, landed)
        if self.written is not None:
            self.written.put(key, data)

    async def delete(self, key: str) -> None:
        """Delete ``key``; a shared unit is never deleted (it is written instead)."""
        if key in self.keys:
            # zarr deletes a chunk that became all fill value; a shared unit is
            # written instead (the caller writes empty chunks), so this is a bug.
            raise RuntimeError(f"a shared unit ({key}) may not be deleted unconditionally")
        await self._store.delete(key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConditionalUnits) and other._store == self._store

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._store, self.cas, self.keys, self.written))
