"""Opening stored groups, and what they hold: one way, with a known request cost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import zarr
import zarr.errors
from zarr.abc.store import Store
from zarr.buffer import default_buffer_prototype

from toolkit.errors import CorruptMetadataError, ToolkitError
from toolkit.io.reserved import RESERVED_PREFIX
from toolkit.io.stores import display_store
from toolkit.upstream import async_group, sync

__all__ = [
    "RESERVED_PREFIX",
    "ExistingGroup",
    "array_dims",
    "open_existing",
    "open_group",
]


@dataclass(frozen=True)
class ExistingGroup:
    """What the target store already holds (metadata only)."""

    zarr_format: int
    arrays: Mapping[str, zarr.Array[Any]]
    dims: Mapping[str, tuple[str, ...]]

    def sizes(self) -> dict[str, int]:
        """The length of each dimension, from the first array that has it."""
        out: dict[str, int] = {}
        for name, arr in self.arrays.items():
            for d, n in zip(self.dims[name], arr.shape, strict=True):
                out.setdefault(d, n)
        return out


def array_dims(arr: zarr.Array[Any]) -> tuple[str, ...]:
    """The dimension names of a stored array (v3 metadata, or xarray's v2 attribute)."""
    names = getattr(arr.metadata, "dimension_names", None)
    if names:
        return tuple(str(n) for n in names)
    dims = arr.attrs.get("_ARRAY_DIMENSIONS")
    if isinstance(dims, list):
        return tuple(str(d) for d in dims)
    return tuple(f"dim_{i}" for i in range(arr.ndim))


# The names of Zarr's metadata documents (v3's, then v2's), never a member's.
_DOCUMENTS = ("zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata")
# What parsing a damaged document raises (not absence, not a store's failure).
_PARSE_ERRORS = (KeyError, ValueError, TypeError)


def open_existing(store: Store, group: str | None) -> ExistingGroup | None:
    """What ``group`` of ``store`` holds, read only; None if there is no group.

    Raises
    ------
    toolkit.errors.CorruptMetadataError
        When a metadata document of the group or of one of its arrays is
        there but cannot be read (damaged JSON, missing fields): the group is
        damaged, which is not the same as absent.
    """
    ro = store if store.read_only else store.with_read_only(True)
    try:
        g = open_group(ro, group, use_consolidated=None)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.ContainsArrayError):
        return None
    except ToolkitError:
        raise  # the store failed (throttled, refused): not the document's fault
    except _PARSE_ERRORS as e:
        key = _damaged_document(ro, _prefix(group))
        if key is None:
            return None  # no document at all: there is no group
        raise _corrupt(ro, key, e) from e
    if g.metadata.consolidated_metadata is not None:
        # Members from the consolidated copy: no member document is read.
        arrays = {name: a for name, a in g.arrays() if isinstance(a, zarr.Array)}
    else:
        arrays = _member_arrays(ro, g)
    return ExistingGroup(
        zarr_format=g.metadata.zarr_format,
        arrays=arrays,
        dims={k: array_dims(a) for k, a in arrays.items()},
    )


def _prefix(path: str | None) -> str:
    path = (path or "").strip("/")
    return f"{path}/" if path else ""


def _member_arrays(store: Store, g: zarr.Group) -> dict[str, zarr.Array[Any]]:
    """The arrays of ``g``, each member's document read once, concurrently (as zarr does).

    Unlike ``g.arrays()``, a member whose document is there but cannot be
    parsed raises :class:`~toolkit.errors.CorruptMetadataError` instead of
    being skipped (or failing with a bare ``JSONDecodeError``).
    """
    node = async_group(g)
    base = node.store_path.path

    async def member(name: str, limit: asyncio.Semaphore) -> tuple[str, Any]:
        async with limit:
            try:
                return name, await node.getitem(name)
            except KeyError as e:
                if isinstance(e.__cause__, FileNotFoundError):
                    return name, None  # a key or prefix that is no node (toolkit's state, say)
                failure: Exception = e
            except ToolkitError:
                raise
            except _PARSE_ERRORS as e:
                failure = e
        key = await _adamaged_document(store, _prefix(f"{base}/{name}"))
        if key is None:
            return name, None
        raise _corrupt(store, key, failure) from failure

    async def members() -> list[tuple[str, Any]]:
        limit = asyncio.Semaphore(max(1, int(zarr.config.get("async.concurrency") or 10)))
        names = [n async for n in store.list_dir(base)]
        names = [n for n in names if n not in _DOCUMENTS and n != RESERVED_PREFIX]
        return list(await asyncio.gather(*(member(n, limit) for n in names)))

    return {
        name: zarr.Array(node)
        for name, node in sorted(sync(members()))
        if isinstance(node, zarr.AsyncArray)
    }


async def _adamaged_document(store: Store, prefix: str) -> str | None:
    """The key of the metadata document under ``prefix`` that cannot be read.

    The first that is not a JSON object; else the first there (its fields
    are wrong); None when there is none.
    """
    keys = [prefix + name for name in _DOCUMENTS]
    found = await asyncio.gather(*(store.get(k, default_buffer_prototype()) for k in keys))
    present = [(k, b.to_bytes()) for k, b in zip(keys, found, strict=True) if b is not None]
    for key, data in present:
        try:
            doc = json.loads(data)
        except ValueError:
            return key
        if not isinstance(doc, dict):
            return key
    return present[0][0] if present else None


def _damaged_document(store: Store, prefix: str) -> str | None:
    return sync(_adamaged_document(store, prefix))


def _corrupt(store: Store, key: str, error: BaseException) -> CorruptMetadataError:
    return CorruptMetadataError(
        f"the Zarr metadata document {key!r} of {display_store(store)} is there but cannot "
        f"be read ({type(error).__name__}: {error}): the store is damaged, not empty, and "
        "nothing is read or written as if it were. Restore the document (copy the store "
        "again from its source), rewrite the whole dataset with mode='w', or delete the store",
        key,
    )


def open_group(
    store: Store,
    group: str | None,
    mode: Literal["r", "r+"] = "r",
    *,
    use_consolidated: bool | None = False,
) -> zarr.Group:
    """Open an existing group, trying Zarr v3's metadata first, then v2's.

    ``zarr_format=None`` would probe every format's keys at once (several requests
    per open); toolkit's own writes are v3 by default, so v3 first is one request.
    ``use_consolidated=None`` reads consolidated metadata where there is some.
    """
    last: Exception | None = None
    for fmt in (3, 2):
        try:
            return zarr.open_group(
                store,
                path=group or "",
                mode=mode,
                use_consolidated=use_consolidated,
                zarr_format=fmt,
            )
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            last = e
    assert last is not None
    raise last
