"""Many files as one lazy dataset: each task reads exactly the pieces that fill its units."""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from dask.task_spec import Task, TaskRef

from toolkit._util import need_netcdf_engine
from toolkit.ingest.sources import (
    Source,
    _check,
    _decode,
    _expand,
    _h5,
    _lean,
    _open,
    _plain_attrs,
    read_headers,
)
from toolkit.write.layout import choose_layout
from toolkit.write.plan import DEFAULT_MAX_TASK_BYTES

__all__ = ["sources_dataset"]


def _read_block(
    pieces: Sequence[tuple[str, int, int]],
    names: Sequence[Hashable],
    concat_dim: Hashable,
    open_kwargs: Mapping[str, Any],
) -> dict[Hashable, np.ndarray]:
    """Every variable's values over one block: each source opened once."""
    parts: dict[Hashable, list[np.ndarray]] = {n: [] for n in names}
    axes: dict[Hashable, int] = {}
    lean = _lean(open_kwargs)
    for path, start, stop in pieces:
        if lean:
            read = _h5py_piece(path, names, concat_dim, start, stop, open_kwargs)
            if read is None:
                read = _h5netcdf_piece(path, names, concat_dim, start, stop, open_kwargs)
            for n, (axis, values) in read.items():
                parts[n].append(values)
                axes[n] = axis
            continue
        with _open(path, open_kwargs) as ds:
            part = ds.isel({concat_dim: slice(start, stop)})
            for n in names:
                parts[n].append(part[n].values)
                axes[n] = part[n].dims.index(concat_dim)
    return {
        n: np.concatenate(parts[n], axis=axes[n]) if len(parts[n]) > 1 else parts[n][0]
        for n in names
    }


Piece = dict[Hashable, tuple[int, np.ndarray]]


def _h5netcdf_piece(
    path: str,
    names: Sequence[Hashable],
    concat_dim: Hashable,
    start: int,
    stop: int,
    open_kwargs: Mapping[str, Any],
) -> Piece:
    """Steps ``start:stop`` of each variable: (its concat axis, decoded values)."""
    out: Piece = {}
    with _h5(path) as f:
        for n in names:
            v = f.variables[n]
            dims = tuple(v.dimensions)
            sel = tuple(slice(start, stop) if d == concat_dim else slice(None) for d in dims)
            out[n] = (dims.index(concat_dim), _decode(n, dims, v[sel], v.attrs, open_kwargs))
    return out


def _h5py_piece(
    path: str,
    names: Sequence[Hashable],
    concat_dim: Hashable,
    start: int,
    stop: int,
    open_kwargs: Mapping[str, Any],
) -> Piece | None:
    """:func:`_h5netcdf_piece` through h5py alone, or None where it cannot tell the dims."""
    import h5py

    out: Piece = {}
    with h5py.File(path, "r") as f:
        for n in names:
            d = f.get(str(n))
            refs = d.attrs.get("DIMENSION_LIST") if isinstance(d, h5py.Dataset) else None
            if refs is None or len(refs) != d.ndim:
                return None
            dims = tuple(f[r[0]].name.lstrip("/") for r in refs)
            if concat_dim not in dims:
                return None
            sel = tuple(slice(start, stop) if x == concat_dim else slice(None) for x in dims)
            attrs = _plain_attrs(d.attrs)
            out[n] = (dims.index(concat_dim), _decode(n, dims, d[sel], attrs, open_kwargs))
    return out


def _pick(block: Mapping[Hashable, np.ndarray], name: Hashable) -> np.ndarray:
    return block[name]


def _lazy(
    sources: list[Source],
    concat_dim: Hashable,
    step: int,
    open_kwargs: Mapping[str, Any],
    dtypes: Mapping[Hashable, np.dtype[Any]],
) -> dict[Hashable, da.Array]:
    """Dask arrays of every variable with ``concat_dim``: blocks of ``step`` along it.

    One task per block (``toolkit-ingest-read``) reads the pieces of the
    sources the block covers, once for all variables; each variable's block is
    picked from its result.
    """
    first = sources[0]
    names = [n for n, (dims, _, _) in first.variables.items() if concat_dim in dims]
    offsets = np.cumsum([0, *(s.length for s in sources)])
    total = int(offsets[-1])
    starts = list(range(0, total, step))
    token = tokenize([s.path for s in sources], concat_dim, step, dict(open_kwargs))
    read = f"toolkit-ingest-read-{token}"
    layer: dict[Any, Any] = {}
    for i, a in enumerate(starts):
        b = min(a + step, total)
        pieces = []
        j = bisect.bisect_right(offsets, a) - 1
        while j < len(sources) and offsets[j] < b:
            lo, hi = max(a, offsets[j]) - offsets[j], min(b, offsets[j + 1]) - offsets[j]
            if hi > lo:
                pieces.append((sources[j].path, int(lo), int(hi)))
            j += 1
        layer[(read, i)] = Task(
            (read, i), _read_block, pieces, names, concat_dim, dict(open_kwargs)
        )
    sizes = tuple(min(step, total - a) for a in starts)
    layers: dict[str, Any] = {read: layer}
    deps: dict[str, set[str]] = {read: set()}
    out = {}
    for n in names:
        dims, shape, _ = first.variables[n]
        dtype = dtypes[n]  # decoded
        axis = dims.index(concat_dim)
        name = f"toolkit-ingest-{n}-{token}"
        layers[name] = {
            key: Task(key, _pick, TaskRef((read, i)), n)
            for i in range(len(starts))
            for key in [(name, *(i if a == axis else 0 for a in range(len(dims))))]
        }
        deps[name] = {read}
        chunks = tuple(sizes if a == axis else (m,) for a, m in enumerate(shape))
        out[n] = (name, chunks, dtype)
    graph = HighLevelGraph(layers, deps)
    return {
        n: da.Array(graph, name, chunks, dtype=dtype) for n, (name, chunks, dtype) in out.items()
    }


def _headers(
    sources: str | Sequence[str | os.PathLike[str]],
    concat_dim: Hashable,
    kwargs: dict[str, Any],
) -> tuple[list[Source], dict[str, Any]]:
    """The sources' headers in ``concat_dim`` order, checked; and the open options used."""
    paths = _expand(sources)
    if "engine" not in kwargs:
        need_netcdf_engine(paths[0])  # the extra named, not h5py's ModuleNotFoundError
    if "engine" not in kwargs and _is_hdf5(paths[0]):
        kwargs = {**kwargs, "engine": "h5netcdf"}  # xarray's guess costs a third of each open
    return _check(read_headers(paths, concat_dim, kwargs), concat_dim), kwargs


def _dataset(
    ordered: list[Source],
    concat_dim: Hashable,
    kwargs: Mapping[str, Any],
    chunks: Mapping[Hashable, int],
    shards: Mapping[Hashable, int],
    max_task_bytes: int,
) -> tuple[xr.Dataset, dict[Hashable, tuple[tuple[int, ...], tuple[int, ...] | None]], int]:
    """The sources as one lazy Dataset in blocks of whole units; the layout; the block length."""
    first = ordered[0]
    total = sum(s.length for s in ordered)
    values = np.concatenate([s.values for s in ordered])
    with _open(first.path, kwargs) as head:  # decoded: dtypes, attributes, CF encodings
        dtypes = {n: v.dtype for n, v in head.variables.items() if n not in head.indexes}
        # Layout per variable, then one block length along concat_dim for all: a
        # common multiple of the variables' write units, near the memory target.
        layouts: dict[Hashable, tuple[tuple[int, ...], tuple[int, ...] | None]] = {}
        unit_along = 1
        step_bytes = 0
        for name, (dims, shape, _) in first.variables.items():
            full = tuple(total if d == concat_dim else n for d, n in zip(dims, shape, strict=True))
            layouts[name] = _layout_of(dims, dtypes[name], full, chunks, shards)
            if concat_dim in dims:
                c, sh = layouts[name]
                unit_along = math.lcm(unit_along, (sh or c)[dims.index(concat_dim)])
                step_bytes += dtypes[name].itemsize * math.prod(full) // max(total, 1)
        per_unit = max(step_bytes * unit_along, 1)
        # Read blocks of ~32 MiB: enough to amortise opening files, small enough
        # that several are in flight and memory does not follow the input size.
        target = min(max_task_bytes // 2, _READ_BLOCK_BYTES)
        step = unit_along * max(1, min(target // per_unit, -(-total // unit_along)))
        arrays = _lazy(ordered, concat_dim, step, kwargs, dtypes)

        def value(n: Hashable) -> Any:
            v = head[n].variable
            if n in arrays:
                return xr.Variable(v.dims, arrays[n], v.attrs, v.encoding)
            return v.load()

        index = head[concat_dim].variable if concat_dim in head.coords else None
        index_encoding = dict(index.encoding) if index is not None else {}
        if np.issubdtype(values.dtype, np.datetime64):
            # The first file's time units fit its own values, not the whole series.
            index_encoding.pop("units", None)
            index_encoding.pop("dtype", None)
        ds = xr.Dataset(
            {n: value(n) for n in head.data_vars},
            coords={
                **{n: value(n) for n in head.coords if n != concat_dim},
                concat_dim: xr.Variable(
                    concat_dim,
                    values,
                    index.attrs if index is not None else {},
                    index_encoding,
                ),
            },
            attrs=head.attrs,
        )
    for v in ds.variables.values():
        # The first source's storage details (its chunking, netCDF filters) are not the target's.
        for key in _SOURCE_STORAGE_KEYS:
            v.encoding.pop(key, None)
    return ds, layouts, step


def sources_dataset(
    sources: str | Sequence[str | os.PathLike[str]],
    concat_dim: Hashable,
    open_kwargs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Many source files as one lazy Dataset along ``concat_dim``, read as :func:`ingest` reads.

    The sources are checked as :func:`ingest` checks them; the blocks are of
    zarr's default chunk length along ``concat_dim``.
    """
    ordered, kwargs = _headers(sources, concat_dim, dict(open_kwargs or {}))
    return _dataset(ordered, concat_dim, kwargs, {}, {}, DEFAULT_MAX_TASK_BYTES)[0]


_READ_BLOCK_BYTES = 32 * 2**20

_SOURCE_STORAGE_KEYS = (
    "chunksizes",
    "contiguous",
    "zlib",
    "shuffle",
    "complevel",
    "fletcher32",
    "source",
    "original_shape",
    "preferred_chunks",
    "chunks",
    "compression",
    "compression_opts",
)


def _is_hdf5(path: str) -> bool:
    """Whether a local file is HDF5 (netCDF4): its signature."""
    if "://" in path or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


def _layout_of(
    dims: tuple[Hashable, ...],
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    chunks: Mapping[Hashable, int],
    shards: Mapping[Hashable, int],
) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """:func:`toolkit.write.layout.choose_layout` for a variable known from headers only."""
    stand_in = xr.Variable(dims, da.empty(shape, dtype=dtype, chunks=-1))
    return choose_layout(stand_in, chunks, shards)
