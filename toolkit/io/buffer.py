"""A write-behind buffer for a write's metadata round: many serial requests become one round.

:class:`MetadataBuffer` stands between xarray's Zarr backend and the store
while a write creates its groups and arrays, so that the chain of dependent
requests zarr makes becomes one concurrent round (see its docstring).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import override

from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest, Store
from zarr.buffer import default_buffer_prototype

from toolkit.io.keys import is_metadata
from toolkit.io.reserved import hiding_reserved
from toolkit.io.stores import is_icechunk
from toolkit.io.wrappers import _OwnWrapper
from toolkit.upstream import normalize_byte_range

__all__ = ["MetadataBuffer"]

_PROTO = default_buffer_prototype()


class MetadataBuffer(_OwnWrapper):
    """Write-behind buffer for a write's metadata phase: many serial requests become one round.

    Creating a dataset through xarray and zarr is a chain of dependent
    requests: about twenty for three arrays, several of them writes of the same
    ``zarr.json`` and probes of keys that cannot exist yet. At 100 ms per
    request the chain alone costs seconds. This wrapper keeps every write in
    memory (the last one per key wins), answers reads from what it has written
    or already read, and knows that nothing exists below ``empty_prefix`` (a
    group just checked to be empty, or just cleared). :meth:`flush` then sends
    all writes at once, concurrently, through the wrapped (throttled, retried)
    store.

    Reads are cached for metadata keys only (``zarr.json``, ``.zarray``,
    ``.zgroup``, ``.zattrs``, ``.zmetadata``), so it can also stand in front of
    a dataset's reads: chunk reads go straight through and nothing large is
    kept.

    Parameters
    ----------
    store : Store
        The stack to flush into.
    empty_prefix : str, optional
        A prefix known to hold nothing (``""`` for the whole store).
    """

    def __init__(self, store: Store, empty_prefix: str | None = None) -> None:
        super().__init__(store)
        self.empty_prefix = empty_prefix
        self._pending: dict[str, Buffer | None] = {}  # None: a pending delete
        self._seen: dict[str, Buffer | None] = {}  # reads from the store, None: absent

    def _known_absent(self, key: str) -> bool:
        p = self.empty_prefix
        return p is not None and (p == "" or key == p or key.startswith(p.rstrip("/") + "/"))

    async def _lookup(self, key: str) -> Buffer | None:
        if key in self._pending:
            return self._pending[key]
        if key not in self._seen:
            absent = self._known_absent(key)
            self._seen[key] = None if absent else await self._store.get(key, _PROTO)
        return self._seen[key]

    def _passes(self, key: str) -> bool:
        """Whether a read of ``key`` goes straight to the store, uncached."""
        return key not in self._pending and not self._known_absent(key) and not is_metadata(key)

    @override
    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if self._passes(key):
            return await self._store.get(key, prototype, byte_range)
        buf = await self._lookup(key)
        if buf is None:
            return None
        start, stop = normalize_byte_range(buf, byte_range)
        return prototype.buffer.from_bytes(buf.to_bytes()[start:stop])

    @override
    async def exists(self, key: str) -> bool:
        if self._passes(key):
            return await self._store.exists(key)
        return await self._lookup(key) is not None

    @override
    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()  # now, not at flush: a read-only store fails where zarr's would
        self._pending[key] = value

    @override
    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._check_writable()
        if await self._lookup(key) is None:
            self._pending[key] = value

    @override
    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        self._check_writable()
        for k, v in values:
            self._pending[k] = v

    @override
    async def delete(self, key: str) -> None:
        self._check_writable()
        self._pending[key] = None

    @override
    async def delete_dir(self, prefix: str) -> None:
        # Deletes go through at once, so that the buffered writes land on a clean prefix.
        await self._store.delete_dir(prefix)
        prefix = prefix.rstrip("/")
        for d in (self._pending, self._seen):
            for k in [k for k in d if not prefix or k == prefix or k.startswith(prefix + "/")]:
                del d[k]
        if self.empty_prefix is None or not prefix.startswith(self.empty_prefix.rstrip("/")):
            self.empty_prefix = prefix

    @override
    async def clear(self) -> None:
        await self.delete_dir("")

    @override
    async def is_empty(self, prefix: str) -> bool:
        async for _ in self.list_prefix(prefix):
            return False
        return True

    async def _merged(
        self, listed: AsyncIterator[str] | None, keep: Callable[[str], str | None]
    ) -> AsyncIterator[str]:
        names: set[str] = set()
        if listed is not None:
            async for k in listed:
                names.add(k)
        for k, v in self._pending.items():
            name = keep(k)
            if name is None:
                continue
            if v is None:
                names.discard(name) if name == k else None
            else:
                names.add(name)
        for n in sorted(names):
            yield n

    @override
    def list(self) -> AsyncIterator[str]:
        return self.list_prefix("")

    @override
    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        listed = None if self._known_absent(prefix) else self._store.list_prefix(prefix)
        return self._merged(listed, lambda k: k if k.startswith(prefix) else None)

    @override
    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        base = prefix.rstrip("/") + "/" if prefix.rstrip("/") else ""
        listed = None if self._known_absent(prefix) else self._store.list_dir(prefix)

        def child(k: str) -> str | None:
            return k[len(base) :].split("/", 1)[0] if k.startswith(base) else None

        return hiding_reserved(self._merged(listed, child))

    @property
    def pending(self) -> dict[str, Buffer | None]:
        """The writes (None: deletes) not yet sent, by key (a copy)."""
        return dict(self._pending)

    async def flush(self) -> int:
        """Send every buffered write and delete concurrently; how many requests.

        An entry leaves the buffer only once it has landed. When a request
        fails, the others are still waited for, every entry that did not land
        stays buffered (a later ``flush`` sends it again), and the first error
        is raised.
        """
        pending = dict(self._pending)

        async def land(key: str, value: Buffer | None) -> None:
            if value is None:
                await self._store.delete(key)
            else:
                await self._store.set(key, value)
            self._seen[key] = value
            if key in self._pending and self._pending[key] is value:
                del self._pending[key]  # landed (unless written again meanwhile)

        async def send(batch: dict[str, Buffer | None]) -> None:
            results = await asyncio.gather(
                *(land(k, v) for k, v in batch.items()), return_exceptions=True
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                raise failed[0]

        if is_icechunk(self._store):
            # Icechunk takes a chunk only for an array that exists: metadata first.
            meta = {k: v for k, v in pending.items() if is_metadata(k)}
            await send(meta)
            rest = {k: v for k, v in pending.items() if k not in meta}
            await send(rest)
            return len(meta) + len(rest)
        await send(pending)
        return len(pending)
