"""A group's metadata read once, in few concurrent rounds, then served from memory.

Planning and checking a small write opens the store several times (xarray's
open, the plan's checks, the many-jobs bookkeeping), and each open is a chain
of requests: the group document, then each array's, then each coordinate's
chunks. Over a 100 ms link an append of one step spent most of its 9 s there.
:class:`SnapshotStore` answers those reads from one snapshot: a first round
gets the group's documents (both Zarr formats), a second every array's, a
third every chunk of the small one-dimensional arrays (the coordinates), each
round fully concurrent. Whatever else is read goes to the store once and is
kept too.

A snapshot is only for reads that describe the store as it was when the job
began (its layout, its coordinates). Anything that must be current (a shared
unit read before it is rewritten, a length about to be published) reads the
store itself: the caller keeps the snapshot to its planning phase, or, with
``chunks=False``, lets only metadata documents be kept.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest, Store
from zarr.buffer import default_buffer_prototype

from toolkit.io.keys import METADATA_DOCUMENTS, is_metadata
from toolkit.io.wrappers import InterceptStore

__all__ = ["SnapshotStore"]

T = TypeVar("T")

#: One-dimensional arrays up to this size have their chunks read in the snapshot.
_SMALL_ARRAY_BYTES = 4 * 2**20
#: Other one-dimensional arrays up to this size (labels) have their chunks read too.
_SMALL_LABELS_BYTES = 256 * 2**10
#: Coordinates in more chunks than this are read when asked, not in the snapshot.
_MAX_CHUNKS = 256
_MISSING = object()


# The requests that only read (listings aside).
_READS = frozenset({"get", "exists", "is_empty"})


class SnapshotStore(InterceptStore):
    """Reads kept after their first answer; writes go through and forget their key.

    Parameters
    ----------
    store : Store
        The store read (with its retries: a snapshot's requests are ordinary ones).
    chunks : bool
        Keep chunks as well as metadata documents (``False``: only documents,
        for stores that also read units about to be rewritten).
    """

    def __init__(self, store: Store, *, chunks: bool = True) -> None:
        super().__init__(store)
        self._chunks = chunks
        self._kept: dict[tuple[str, str], Any] = {}
        # Small one-dimensional arrays (coordinates): their chunks are kept even with
        # chunks=False, read once (writes of them go through and are forgotten).
        self._small: set[str] = set()
        # Keys asked for by name (prefetch's ``extra``): kept whatever they are.
        self._named: set[str] = set()
        # Prefixes known to hold nothing (see empty_below).
        self._empty: set[str] = set()

    @property
    def inner(self) -> Store:
        """The store read."""
        return self._store

    def _keeps(self, key: str) -> bool:
        if self._chunks or is_metadata(key) or key in self._named:
            return True
        path = key.rsplit("/c/", 1)[0] if "/c/" in key else key.rsplit("/", 1)[0]
        return path in self._small

    def empty_below(self, prefix: str) -> None:
        """Answer every read under ``prefix`` as of an empty prefix, with no request.

        For a caller that listed ``prefix`` and found nothing (a new tree's root:
        every node's plan then reads nothing). A write under it ends that.
        """
        self._empty.add(prefix)

    def _known_empty(self, key: str) -> bool:
        return any(key.startswith(p) or f"{key}/".startswith(p) for p in self._empty)

    async def _call(self, op: str, key: str, fn: Callable[[], Awaitable[T]], size: int = 0) -> T:
        if self._empty and op not in _READS and not op.startswith("list"):
            self._empty.clear()  # something is written: nothing is known empty any more
        elif self._empty and self._known_empty(key):
            nothing: Any = {"exists": False, "is_empty": True}.get(op)
            return cast(T, [] if op.startswith("list") else nothing)
        if op in ("set", "set_if_not_exists", "delete"):
            self._kept.pop(("get", key), None)
            self._kept.pop(("exists", key), None)
            self._forget_listings()
            return await fn()
        if op in ("delete_dir", "is_empty"):
            if op == "delete_dir":
                self._kept.clear()
            return await fn()
        if op.startswith("list"):
            kept = self._kept.get((op, key), _MISSING)
            if kept is _MISSING:
                kept = await fn()
                self._kept[(op, key)] = kept
            return cast(T, kept)
        if op == "exists" and ("get", key) in self._kept:
            answer: Any = self._kept[("get", key)] is not None
            return cast(T, answer)
        if op not in ("get", "exists") or not self._keeps(key):
            return await fn()
        kept = self._kept.get((op, key), _MISSING)
        if kept is _MISSING:
            kept = await fn()
            self._kept[(op, key)] = kept
        return cast(T, kept)

    def _forget_listings(self) -> None:
        for k in [k for k in self._kept if k[0].startswith("list")]:
            del self._kept[k]

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """Whole objects are kept (metadata only with ``chunks=False``); ranges are not."""
        if byte_range is not None:  # a part of an object: not kept
            return await self._store.get(key, prototype, byte_range)
        return await super().get(key, prototype)

    async def _fetch(self, keys: list[str]) -> dict[str, Buffer | None]:
        """Read ``keys`` at once. A failed read is not kept: a later read tries again."""
        proto = default_buffer_prototype()
        found = await asyncio.gather(*(self.get(k, proto) for k in keys), return_exceptions=True)
        return {k: v for k, v in zip(keys, found, strict=True) if not isinstance(v, BaseException)}

    def metadata_only(self, store: Store | None = None) -> SnapshotStore:
        """A snapshot that keeps only metadata documents, seeded with these.

        ``store``: the store it reads what it does not keep from and writes to
        (this one's by default), e.g. the writable store of a snapshot taken
        through a read-only view.
        """
        out = SnapshotStore(self._store if store is None else store, chunks=False)
        out._small = set(self._small)
        out._named = set(self._named)
        # Listings are kept: they name the group's members, which an append never changes.
        out._kept = {
            k: v for k, v in self._kept.items() if k[0].startswith("list") or out._keeps(k[1])
        }
        return out

    async def prefetch(
        self,
        group: str | None = None,
        extra: Sequence[str] = (),
        listings: Sequence[str] = (),
        *,
        beyond: bool = True,
    ) -> None:
        """Read the group's documents, its arrays' and its coordinates' chunks, in three rounds.

        ``extra`` keys are read in the first round too (kept whatever they are), and
        the ``listings`` (prefixes) listed (see :meth:`listed`). ``beyond``: read
        each coordinate's chunk after its last too (an append reads it first; a
        write within the stored rows never does, and a read of it that nothing
        else waits for is a round trip of its own).
        """
        root = f"{group.strip('/')}/" if group and group.strip("/") else ""
        first = [f"{root}{n}" for n in sorted(METADATA_DOCUMENTS)]
        listing = asyncio.ensure_future(self._collect_dir(root))
        lists = [asyncio.ensure_future(self._collect_dir(p)) for p in listings]
        self._named.update(extra)
        docs = await self._fetch([*first, *extra])
        members = await listing
        await asyncio.gather(*lists)
        arrays = _consolidated_arrays(docs, root)
        if arrays is None:
            # No consolidated copy: the group's listing names its arrays.
            arrays = {n: None for n in members if n and not n.startswith(".")}
        v3 = docs.get(f"{root}zarr.json") is not None
        # zarr asks for the other format's documents too when it is not told which.
        docs_of = ("zarr.json", ".zarray", ".zattrs")
        # Every member's documents: the arrays', and the others' (zarr asks each).
        # (The listing names the group's own documents too: no members.)
        nodes = {*arrays, *(n for n in members if n not in METADATA_DOCUMENTS)}
        keys = [f"{root}{n}/{doc}" for n in nodes for doc in docs_of]
        # A consolidated copy (Zarr 3) already says which coordinate chunks to read:
        # they come in the same round as the documents.
        early = self._small_keys(root, {n: d for n, d in arrays.items() if d}, True, beyond)
        found = await self._fetch([*keys, *early])
        rest = {
            n: doc
            for n in arrays
            if not arrays[n]
            and isinstance(
                doc := _document(found.get(f"{root}{n}/{'zarr.json' if v3 else '.zarray'}")), dict
            )
        }
        await self._fetch(self._small_keys(root, rest, v3, beyond))

    def _small_keys(
        self, root: str, docs: dict[str, Any], v3: bool, beyond: bool = True
    ) -> list[str]:
        """The chunk keys of the small one-dimensional arrays among ``docs``, remembered."""
        out = []
        for name, doc in docs.items():
            try:
                small = _small_chunk_keys(f"{root}{name}", doc, v3, beyond)
            except (TypeError, ValueError, AttributeError, KeyError):
                continue  # a damaged document: the open reads and reports it
            if small:
                self._small.add(f"{root}{name}")
                out += small
        return out

    def listed(self, prefix: str) -> list[str] | None:
        """What listing ``prefix`` found (its direct members), or None if it was not listed."""
        found = self._kept.get(("list_dir", prefix.rstrip("/")), _MISSING)
        if found is _MISSING:
            found = self._kept.get(("list_dir", prefix), _MISSING)
        return None if found is _MISSING else [k.rstrip("/") for k in found]

    async def _collect_dir(self, root: str) -> list[str]:
        try:
            return [k.rstrip("/") async for k in self.list_dir(root)]
        except Exception:  # a store that cannot list: the documents say enough
            return []


def _consolidated_arrays(docs: dict[str, Buffer | None], root: str) -> dict[str, Any] | None:
    """The array names a consolidated copy lists (direct members only), or None without one."""
    v3 = _document(docs.get(f"{root}zarr.json"))
    if isinstance(v3, dict):
        meta = v3.get("consolidated_metadata") or {}
        if not isinstance(meta, dict) or not isinstance(meta.get("metadata"), dict):
            return None
        return {
            name: doc
            for name, doc in meta["metadata"].items()
            if "/" not in name and isinstance(doc, dict) and doc.get("node_type") == "array"
        }
    v2 = _document(docs.get(f"{root}.zmetadata"))
    if isinstance(v2, dict) and isinstance(meta := v2.get("metadata"), dict):
        return {k.split("/")[0]: None for k in meta if k.count("/") == 1 and k.endswith(".zarray")}
    return None


def _document(raw: Buffer | None) -> Any:
    """A JSON document read, or None when absent or damaged.

    A prefetch only guesses what the open will ask: a damaged document is left for
    the open to read and report (:class:`~toolkit.errors.CorruptMetadataError`).
    """
    if raw is None:
        return None
    try:
        return json.loads(raw.to_bytes())
    except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return None


def _small_chunk_keys(path: str, meta: dict[str, Any], v3: bool, beyond: bool = True) -> list[str]:
    """Every chunk key of a small one-dimensional array (none for the others)."""
    shape = meta.get("shape") or []
    if len(shape) != 1 or shape[0] == 0:
        return []
    # Dimension coordinates (an array named as its one dimension): xarray reads
    # those whole to index the dataset. Other 1-D arrays only when tiny (labels
    # such as a partition coordinate, which a partition overwrite reads whole).
    dims = meta.get("dimension_names") or (meta.get("attributes") or {}).get("_ARRAY_DIMENSIONS")
    limit = _SMALL_ARRAY_BYTES
    if dims is not None and list(dims) != [path.rsplit("/", 1)[-1]]:
        limit = _SMALL_LABELS_BYTES
    if v3:
        grid = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape") or shape
        encoding = meta.get("chunk_key_encoding", {})
        sep = encoding.get("configuration", {}).get("separator", "/")
        v2_keys = encoding.get("name") == "v2"
        itemsize = 8
    else:
        grid = meta.get("chunks") or shape
        sep = meta.get("dimension_separator") or "."
        v2_keys = True
        itemsize = 8
    if shape[0] * itemsize > limit:
        return []
    # And the chunk after the last: the one an append along the array reads first.
    n = math.ceil(shape[0] / grid[0]) + (1 if beyond else 0)
    if n > _MAX_CHUNKS:
        return []
    return [f"{path}/{i}" if v2_keys else f"{path}/c{sep}{i}" for i in range(n)]
