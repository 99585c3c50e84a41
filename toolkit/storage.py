"""Storage: resolving what users pass as a store, and zarr ``Store`` wrappers.

Every wrapper subclasses zarr's own :class:`zarr.storage.WrapperStore`, so it
works with any zarr backend (local, memory, fsspec, obstore) and composes with
the others.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, override

import zarr
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore

__all__ = ["CountingStore", "RequestCounts", "describe_store", "resolve_store"]

StoreLike = str | os.PathLike[str] | Store


def resolve_store(store: StoreLike, *, storage_options: Mapping[str, Any] | None = None) -> Store:
    """Turn a path, URL or zarr ``Store`` into a zarr ``Store``.

    Parameters
    ----------
    store : str, os.PathLike or zarr.abc.store.Store
        A local path, an fsspec URL (``s3://...``) or a store instance, which is
        returned as it is.
    storage_options : mapping, optional
        Passed to fsspec for URLs; refused for local paths and store instances.
    """
    if isinstance(store, Store):
        if storage_options:
            raise TypeError("storage_options apply to URLs only, not to a Store instance")
        return store
    path = os.fspath(store)
    if "://" in path and not path.startswith("file://"):
        return FsspecStore.from_url(path, storage_options=dict(storage_options or {}))
    if storage_options:
        raise TypeError("storage_options apply to URLs only, not to a local path")
    return LocalStore(path.removeprefix("file://"))


def describe_store(store: Store) -> str:
    """A short, secret-free description of a store for reprs and reports."""
    while isinstance(store, WrapperStore):
        store = store._store
    if isinstance(store, LocalStore):
        return f"file://{store.root}"
    if isinstance(store, FsspecStore):
        proto = store.fs.protocol
        proto = proto[0] if isinstance(proto, tuple) else proto
        return f"{proto}://{store.path}"
    return f"<{type(store).__name__}>"


@dataclass
class Counters:
    """Integer counters that many threads increment."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **kw: int) -> None:
        """Thread-safe increment of the named counters."""
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


@dataclass
class RequestCounts(Counters):
    """Requests a wrapper saw, by kind, and the bytes they moved."""

    gets: int = 0
    sets: int = 0
    deletes: int = 0
    lists: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    @property
    def total(self) -> int:
        """All requests."""
        return self.gets + self.sets + self.deletes + self.lists

    def __getstate__(self) -> dict[str, int]:
        return self.as_dict()  # the lock stays behind; a copy gets its own

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (picklable, for task results)."""
        return {
            "gets": self.gets,
            "sets": self.sets,
            "deletes": self.deletes,
            "lists": self.lists,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
        }


class CountingStore(WrapperStore[Store]):
    """Counts requests and bytes passing through to the wrapped store.

    Both zarr's async methods and its synchronous fast paths are counted, so the
    figures are exact whichever path zarr takes.
    """

    def __init__(self, store: Store, counts: RequestCounts | None = None) -> None:
        super().__init__(store)
        self.counts = counts if counts is not None else RequestCounts()

    def _with_store(self, store: Store) -> CountingStore:
        return type(self)(store, self.counts)

    def __repr__(self) -> str:
        return f"CountingStore({describe_store(self._store)})"

    def _got(self, buf: Buffer | None) -> Buffer | None:
        self.counts.add(gets=1, bytes_read=len(buf) if buf is not None else 0)
        return buf

    @override
    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        return self._got(await self._store.get(key, prototype, byte_range))

    @override
    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        return self._got(super().get_sync(key, prototype=prototype, byte_range=byte_range))

    @override
    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        out = await self._store.get_partial_values(prototype, key_ranges)
        for buf in out:
            self._got(buf)
        return out

    @override
    async def exists(self, key: str) -> bool:
        self.counts.add(gets=1)
        return await self._store.exists(key)

    @override
    async def set(self, key: str, value: Buffer) -> None:
        self.counts.add(sets=1, bytes_written=len(value))
        await self._store.set(key, value)

    @override
    def set_sync(self, key: str, value: Buffer) -> None:
        self.counts.add(sets=1, bytes_written=len(value))
        super().set_sync(key, value)

    @override
    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self.counts.add(sets=1, bytes_written=len(value))
        await self._store.set_if_not_exists(key, value)

    @override
    async def delete(self, key: str) -> None:
        self.counts.add(deletes=1)
        await self._store.delete(key)

    @override
    def delete_sync(self, key: str) -> None:
        self.counts.add(deletes=1)
        super().delete_sync(key)

    @override
    def list(self) -> AsyncIterator[str]:
        self.counts.add(lists=1)
        return self._store.list()

    @override
    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        self.counts.add(lists=1)
        return self._store.list_prefix(prefix)

    @override
    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        self.counts.add(lists=1)
        return self._store.list_dir(prefix)


def rebind(array: zarr.Array[Any], store: Store) -> zarr.Array[Any]:
    """The same array (metadata, path, config) reading and writing through ``store``.

    No request is made: the metadata already in ``array`` is reused.
    """
    from zarr.core.array import AsyncArray
    from zarr.storage._common import StorePath

    a = array.async_array
    return zarr.Array(AsyncArray(a.metadata, StorePath(store, a.store_path.path), a.config))
