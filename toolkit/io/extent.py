"""Rows written beyond an array's stored length, made visible by one metadata update.

Readers see an array as long as its metadata document says (``zarr.json``, or
``.zarray`` for Zarr v2): chunks beyond that length are never read. An append
therefore writes its rows *hidden*, beyond the stored length, and then
*publishes* them by growing each array's stored shape, so that readers never
see rows whose data has not landed, and a job killed before publishing leaves
nothing a reader can see.

- :class:`ExtentStore` presents the arrays along one dimension as longer than
  stored, so that zarr and xarray write into the hidden rows as into any
  region; it refuses any metadata write (nothing may publish by accident).
- :func:`read_extents` reads the arrays' metadata documents with their
  versions; :func:`publish` grows their stored length with conditional
  writes (replace-if-version), so that concurrent publishers only ever grow an
  array, never shrink it, and the consolidated copy (when the group has one)
  is updated last, in one object, for readers that open through it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Self

import xarray as xr
from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest, Store
from zarr.buffer import default_buffer_prototype
from zarr.buffer.cpu import Buffer as CPUBuffer
from zarr.storage import WrapperStore

from toolkit.io.conditional import ConditionalStore
from toolkit.io.groups import array_dims, open_group
from toolkit.io.keys import is_metadata
from toolkit.upstream import normalize_byte_range, sync

__all__ = [
    "ArrayExtent",
    "ExtentStore",
    "Extents",
    "consistent_view",
    "consolidated_key",
    "consolidated_root",
    "covering_length",
    "open_settled",
    "publish",
    "read_extents",
    "write_unit",
]


@dataclass(frozen=True)
class ArrayExtent:
    """One stored array along the dimension: its metadata document and the axis."""

    path: str
    """The array's path in the store (group included)."""
    meta_key: str
    """Its metadata document (``<path>/zarr.json`` or ``<path>/.zarray``)."""
    axis: int
    length: int
    """Its stored length along the dimension, as read."""
    version: str | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)


@dataclass
class Extents:
    """The arrays along one dimension of a group, as read (see :func:`read_extents`)."""

    dim: str
    arrays: list[ArrayExtent]
    consolidated_key: str | None
    """The group's document holding a consolidated copy (None without one)."""
    zarr_format: int
    consolidated_version: str | None = None
    copy_lags: bool = False
    """Whether the consolidated copy shows fewer rows than every array does."""
    written: dict[str, bytes] = field(default_factory=dict, repr=False)
    """The metadata documents :func:`publish` replaced, as it wrote them."""
    consolidated_data: bytes | None = field(default=None, repr=False)
    """The consolidated copy as read or written (at :attr:`consolidated_version`)."""

    @property
    def visible(self) -> int:
        """Rows every array shows readers: the least stored length (0 without arrays)."""
        return min((a.length for a in self.arrays), default=0)

    def units(self) -> list[int]:
        """Each array's write unit along the dimension (from the documents read)."""
        return [write_unit(json.loads(a.data), a.axis) for a in self.arrays if a.data]

    @property
    def longest(self) -> int:
        """The greatest stored length (above :attr:`visible` while a publication is under way)."""
        return max((a.length for a in self.arrays), default=0)


def _shape_of(doc: Mapping[str, Any]) -> list[int]:
    return [int(n) for n in doc["shape"]]


def write_unit(doc: Mapping[str, Any], axis: int) -> int:
    """The write unit's length along ``axis`` of an array's metadata document.

    Zarr v3's chunk grid is the shard when the array is sharded (the inner
    chunks are the codec's), so it is the write unit either way; v2 has chunks.
    """
    if "chunk_grid" in doc:
        return int(doc["chunk_grid"]["configuration"]["chunk_shape"][axis])
    return int(doc["chunks"][axis])


def _grown(data: bytes, axis: int, length: int, exact: bool = False) -> bytes | None:
    """A metadata document with the axis at least (``exact``: exactly) ``length`` long.

    None if it is so already.
    """
    doc = json.loads(data)
    shape = _shape_of(doc)
    if shape[axis] == length or (shape[axis] > length and not exact):
        return None
    shape[axis] = length
    doc["shape"] = shape
    return json.dumps(doc, indent=2).encode()


def covering_length(stop: int, units: Sequence[int]) -> int:
    """The least length, from ``stop``, that ends on a unit boundary of every array.

    Seen that long, no array's unit holding row ``stop - 1`` looks complete to
    zarr: it is read and merged (rows beyond ``stop`` may be another job's
    hidden rows), not overwritten whole. Every array is seen equally long, as
    xarray needs.
    """
    return max([stop, *(-(-stop // u) * u for u in units if u > 0)])


def _consolidated_grown(
    data: bytes,
    arrays: Sequence[ArrayExtent],
    length: int,
    fmt: int,
    root: str,
    exact: bool = False,
) -> bytes | None:
    """The consolidated document with each array's copy grown as :func:`_grown` grows it.

    ``root`` is the directory of the document (arrays' paths are relative to it).
    A format 3 document also holds each subgroup's own consolidated copy, nested
    in the subgroup's entry: what xarray reads when it opens the subgroup from
    the root's document. Every copy is grown.
    """
    doc = json.loads(data)
    if fmt == 3:
        meta = (doc.get("consolidated_metadata") or {}).get("metadata")
    else:
        meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return None
    changed = _grow_entries(meta, arrays, length, fmt, root, exact)
    return json.dumps(doc, indent=2).encode() if changed else None


def _grow_entries(
    meta: dict[str, Any],
    arrays: Sequence[ArrayExtent],
    length: int,
    fmt: int,
    root: str,
    exact: bool,
) -> bool:
    changed = False
    for a in arrays:
        if root and not a.path.startswith(root):
            continue
        rel = a.path[len(root) :]
        key = rel if fmt == 3 else f"{rel}/.zarray"
        entry = meta.get(key)
        if not isinstance(entry, dict) or "shape" not in entry:
            continue
        new = _grown(json.dumps(entry).encode(), a.axis, length, exact)
        if new is not None:
            meta[key] = json.loads(new)
            changed = True
    if fmt == 3:
        for name, entry in meta.items():
            nested = (entry.get("consolidated_metadata") or {}) if isinstance(entry, dict) else {}
            if isinstance(nested.get("metadata"), dict):
                sub = f"{root}{name}/"
                changed |= _grow_entries(nested["metadata"], arrays, length, fmt, sub, exact)
    return changed


def consolidated_root(key: str | None) -> str:
    """The directory of a consolidated document's key (its entries' paths are relative to it)."""
    return key.rsplit("/", 1)[0] + "/" if key and "/" in key else ""


def consolidated_key(store: Store, group: str | None, zarr_format: int, own: bool) -> str | None:
    """The consolidated document readers of ``group`` open, or None.

    xarray opens the store root's consolidated document, then the group in it
    (its writes of a group consolidate at the root too): that copy, when the
    root has one. Else the group's own (``own``: the group's document holds one).
    """
    name = "zarr.json" if zarr_format == 3 else ".zmetadata"
    g = (group or "").strip("/")
    if g:
        buf = sync(store.get(name, default_buffer_prototype()))
        if buf is not None and (zarr_format == 2 or _holds_consolidated(buf.to_bytes())):
            return name
    if own:
        return f"{g}/{name}" if g else name
    return None


def _holds_consolidated(data: bytes) -> bool:
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("consolidated_metadata"), dict)


async def read_extents(
    cas: ConditionalStore,
    group: str | None,
    paths: Mapping[str, int],
    dim: str,
    zarr_format: int,
    ckey: str | None,
) -> Extents:
    """Read the metadata documents of the arrays ``paths`` (path -> axis), concurrently.

    ``paths`` name the arrays along ``dim`` (found once, from the group's
    listing or consolidated metadata); each document comes with its version,
    to publish against. ``ckey``: the consolidated document readers open
    (:func:`consolidated_key`), or None.
    """
    name = "zarr.json" if zarr_format == 3 else ".zarray"
    keys = [f"{p}/{name}" for p in paths]
    got = await asyncio.gather(*(cas.get(k) for k in [*keys, *([ckey] if ckey else [])]))
    arrays = []
    for (path, axis), key, g in zip(paths.items(), keys, got, strict=False):
        if g is None:
            raise FileNotFoundError(f"array metadata {key} is gone")
        length = _shape_of(json.loads(g.data))[axis]
        arrays.append(ArrayExtent(path, key, axis, length, g.version, g.data))
    copy = got[-1] if ckey else None
    ext = Extents(
        dim,
        arrays,
        ckey if copy else None,
        zarr_format,
        copy and copy.version,
        consolidated_data=copy.data if copy else None,
    )
    if copy is not None:
        root = consolidated_root(ckey)
        # A copy behind its arrays (a publication cut short before its last
        # step): the caller brings it along (see Extents.copy_lags).
        behind = _consolidated_grown(copy.data, arrays, ext.visible, zarr_format, root)
        ext.copy_lags = behind is not None
    return ext


async def publish(cas: ConditionalStore, ext: Extents, length: int, group: str | None) -> Extents:
    """Grow every array of ``ext`` to at least ``length`` rows, then the consolidated copy.

    Each document is replaced only at the version read; one changed meanwhile
    (another publisher) is read again and grown from what it holds. Returns the
    extents as published.
    """
    root = consolidated_root(ext.consolidated_key)

    async def grow(a: ArrayExtent) -> ArrayExtent:
        data, version = a.data, a.version
        for _ in range(64):
            if data is None or version is None:
                got = await cas.get(a.meta_key)
                if got is None:
                    raise FileNotFoundError(f"array metadata {a.meta_key} is gone")
                data, version = got.data, got.version
            new = _grown(data, a.axis, length)
            if new is None:  # long enough already (another publisher went further)
                return replace(
                    a, length=_shape_of(json.loads(data))[a.axis], version=version, data=data
                )
            landed = await cas.replace(a.meta_key, new, version)
            if landed is not None:
                written[a.meta_key] = new
                return replace(a, length=length, version=landed, data=new)
            data = None  # changed since read (another publisher): read it again
        raise RuntimeError(f"could not publish {a.meta_key}: it kept changing")

    written: dict[str, bytes] = {}
    arrays = list(await asyncio.gather(*(grow(a) for a in ext.arrays)))
    cver = ext.consolidated_version
    cdata = ext.consolidated_data
    if ext.consolidated_key is not None:
        key = ext.consolidated_key
        # First at the version read with the arrays: no read of it when nobody changed it.
        known = (cdata, cver) if cdata is not None and cver is not None else None
        for _ in range(64):
            got = known or await cas.get(key)
            known = None
            if got is None:
                cver = cdata = None
                break
            data, version = got if isinstance(got, tuple) else (got.data, got.version)
            new = _consolidated_grown(data, arrays, length, ext.zarr_format, root)
            if new is None:
                cver, cdata = version, data
                break
            cver = await cas.replace(key, new, version)
            if cver is not None:
                written[key] = cdata = new
                break
        else:
            raise RuntimeError(f"could not publish {key}: it kept changing")
    return Extents(
        ext.dim,
        arrays,
        ext.consolidated_key,
        ext.zarr_format,
        cver,
        written=written,
        consolidated_data=cdata,
    )


class ExtentStore(WrapperStore[Store]):
    """A store in which the arrays along one dimension look at least ``length`` rows long.

    Metadata documents of those arrays (and the group's consolidated copy)
    are read with the dimension grown to ``length``; every other key passes
    through. Writing any metadata document raises: a hidden write must never
    publish its rows by accident. Take ``length`` from :func:`covering_length`
    so that the unit holding the last row written is merged, not replaced.

    Parameters
    ----------
    store : Store
        The store (stack) below.
    extents : Extents
        The arrays along the dimension (from :func:`read_extents`).
    length : int
        How long they look.
    group : str, optional
        The group (to find the consolidated copies' relative paths).
    """

    def __init__(
        self,
        store: Store,
        extents: Extents,
        length: int,
        group: str | None = None,
        *,
        exact: bool = False,
    ) -> None:
        super().__init__(store)
        self.extents, self.length, self.group, self.exact = extents, length, group, exact
        self._axes = {a.meta_key: a.axis for a in extents.arrays}

    @property
    def _supports_sync_io(self) -> bool:
        # zarr would call the wrapped store's synchronous fast paths, bypassing this one.
        return False

    def _with_store(self, store: Store) -> Self:
        return type(self)(store, self.extents, self.length, self.group, exact=self.exact)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ExtentStore)
            and other._store == self._store
            and other.length == self.length
        )

    __hash__ = None  # type: ignore[assignment]

    def _looks(self, key: str, data: bytes) -> bytes:
        if key in self._axes:
            return _grown(data, self._axes[key], self.length, self.exact) or data
        if key == self.extents.consolidated_key:
            root = consolidated_root(key)
            fmt = self.extents.zarr_format
            return _consolidated_grown(data, self.extents.arrays, self.length, fmt, root) or data
        return data

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """``key``, with the arrays' metadata grown to ``length``."""
        if key not in self._axes and key != self.extents.consolidated_key:
            return await self._store.get(key, prototype, byte_range)
        buf = await self._store.get(key, prototype)
        if buf is None:
            return None
        data = self._looks(key, buf.to_bytes())
        start, stop = normalize_byte_range(CPUBuffer.from_bytes(data), byte_range)
        return prototype.buffer.from_bytes(data[start:stop])

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Any,
    ) -> list[Buffer | None]:
        """Each range as a :meth:`get` of its own."""
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    def _refuse(self, key: str) -> None:
        if is_metadata(key):
            raise RuntimeError(
                f"a write of hidden rows tried to write metadata ({key}); it would publish "
                "rows before their data landed"
            )

    async def set(self, key: str, value: Buffer) -> None:
        """Write a chunk (metadata documents are refused)."""
        self._refuse(key)
        await self._store.set(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        """Create a chunk (metadata documents are refused)."""
        self._refuse(key)
        await self._store.set_if_not_exists(key, value)

    async def delete(self, key: str) -> None:
        """Delete a chunk (metadata documents are refused)."""
        self._refuse(key)
        await self._store.delete(key)


def consistent_view(store: Store, group: str | None = None) -> Store:
    """``store`` as readers should see it while appended rows are being published.

    A publication grows the arrays of a dimension one metadata document at a
    time (and is cut short if its job is killed): until it is done, or until
    the next job finishes it, the arrays disagree on the dimension's length.
    Every row below the shortest one's length has landed in every array, so
    the arrays are shown that long; ``store`` itself when they agree.
    """
    grp = open_group(store, group, use_consolidated=False)
    root = f"{group.strip('/')}/" if group and group.strip("/") else ""
    fmt = grp.metadata.zarr_format
    meta = "zarr.json" if fmt == 3 else ".zarray"
    along: dict[str, list[ArrayExtent]] = {}
    for name, arr in grp.arrays():
        for axis, dim in enumerate(array_dims(arr)):
            along.setdefault(dim, []).append(
                ArrayExtent(f"{root}{name}", f"{root}{name}/{meta}", axis, arr.shape[axis])
            )
    ckey = f"{root}zarr.json" if fmt == 3 else f"{root}.zmetadata"
    for dim, arrays in sorted(along.items()):
        lengths = {a.length for a in arrays}
        if len(lengths) > 1:
            ext = Extents(dim, arrays, ckey, fmt)
            store = ExtentStore(store, ext, min(lengths), group, exact=True)
    return store


def open_settled(store: Store, group: str | None = None, **kwargs: Any) -> Any:
    """:func:`xarray.open_zarr`, waiting out a publication of appended rows.

    Appended rows become visible by growing each array's stored length, one
    metadata document per array, so for the time of one round of requests a
    reader can find the arrays of a dimension disagreeing (xarray's
    "conflicting sizes"). The open is tried again for up to about two seconds;
    a store that still disagrees (a publication cut short) is shown as long as
    its shortest array (:func:`toolkit.io.extent.consistent_view`).
    """
    ro = store if store.read_only else store.with_read_only(True)
    delay = 0.01
    deadline = time.monotonic() + 2.0
    while True:
        try:
            return xr.open_zarr(ro, group=group, **kwargs)
        except ValueError as e:
            if "conflicting sizes" not in str(e):
                raise
            if time.monotonic() > deadline:
                # A publication cut short (its job killed): the rows every array
                # has are the visible ones, until a job finishes publishing.
                return xr.open_zarr(consistent_view(ro, group), group=group, **kwargs)
            time.sleep(delay)
            delay = min(0.5, delay * 2)
