"""Many source files into one chunk-aligned Zarr store along a dimension.

:func:`ingest` reads each source's header once (in parallel), checks that the
sources agree, and lays out the target so that every write task owns whole
write units along ``concat_dim``. A task reads exactly the pieces of the
sources that fill its units (many one-step files feeding one unit are combined
in that unit's task), so nothing is rechunked and no graph over every file's
chunks is built: the planning, metadata, failure records, throttling and
progress are those of :func:`toolkit.to_zarr`.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import glob
import itertools
import math
import os
import queue
import threading
import warnings
from collections.abc import AsyncIterable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from toolkit._util import need_netcdf_engine
from toolkit.cluster.executor import executor
from toolkit.errors import IngestError, PlanError, WriteError
from toolkit.io.metrics import IOMetrics
from toolkit.io.stores import StoreLike, source_objects, store_label
from toolkit.io.throttle import Throttle
from toolkit.write.execute import WriteReport, execute, plan_resumable, write_dataset
from toolkit.write.layout import choose_layout
from toolkit.write.multi import append
from toolkit.write.plan import DEFAULT_MAX_TASK_BYTES, WriteMode

__all__ = ["Source", "ingest", "read_headers", "sources_dataset"]


@dataclass(frozen=True)
class Source:
    """What one source file holds, from its header (and its ``concat_dim`` values).

    Attributes
    ----------
    path : str
        The file.
    values : numpy.ndarray
        Its coordinate values along ``concat_dim`` (its length there, if it has
        no such coordinate, as ``arange``).
    variables : mapping
        Per variable: ``(dims, shape, dtype)``.
    """

    path: str
    values: np.ndarray
    variables: Mapping[Hashable, tuple[tuple[Hashable, ...], tuple[int, ...], np.dtype[Any]]]
    coords: Mapping[Hashable, np.ndarray] = field(repr=False)

    @property
    def length(self) -> int:
        """Its length along ``concat_dim``."""
        return len(self.values)


_DECODE_KEYS = frozenset(
    {"decode_cf", "decode_times", "mask_and_scale", "decode_timedelta", "use_cftime",
     "concat_characters", "decode_coords"}
)  # fmt: skip


def _lean(open_kwargs: Mapping[str, Any]) -> bool:
    """Whether sources are read with h5netcdf directly (and decoded as xarray would).

    xarray's ``open_dataset`` costs ~20 ms a file, mostly building every
    variable's lazy wrapper; reading the needed variables with h5netcdf and
    decoding them with :func:`xarray.decode_cf` costs a few.
    """
    return open_kwargs.get("engine") == "h5netcdf" and set(open_kwargs) <= {"engine", *_DECODE_KEYS}


def _decode(
    name: Hashable, dims: tuple[Hashable, ...], raw: Any, attrs: Mapping[str, Any],
    open_kwargs: Mapping[str, Any],
) -> np.ndarray:  # fmt: skip
    """Values as ``xarray.open_dataset`` would give them (CF decoding)."""
    if not open_kwargs.get("decode_cf", True):
        return np.asarray(raw)
    kw = {k: v for k, v in open_kwargs.items() if k in _DECODE_KEYS and k != "decode_cf"}
    one = xr.Dataset({"v": xr.Variable(dims, np.asarray(raw), dict(attrs))})
    return np.asarray(xr.decode_cf(one, **kw)["v"].values)


def _h5(path: str) -> Any:
    import h5netcdf

    try:
        return h5netcdf.File(path, "r")
    except Exception as e:  # any reader's failure, named with its file
        raise IngestError(f"cannot open {path}: {type(e).__name__}: {e}") from e


def _open(path: str, open_kwargs: Mapping[str, Any]) -> xr.Dataset:
    try:
        return xr.open_dataset(path, chunks=None, cache=False, **open_kwargs)
    except Exception as e:  # any reader's failure, named with its file
        raise IngestError(f"cannot open {path}: {type(e).__name__}: {e}") from e


def _no_dim(path: str, concat_dim: Hashable, dims: Sequence[Hashable]) -> IngestError:
    return IngestError(
        f"{path} has no dimension {concat_dim!r} (its dims: {', '.join(map(str, dims))})"
    )


_H5_INTERNAL = frozenset(
    {"CLASS", "NAME", "REFERENCE_LIST", "DIMENSION_LIST", "_Netcdf4Dimid", "_Netcdf4Coordinates",
     "_nc3_strict"}
)  # fmt: skip


def _plain_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """An HDF5 dataset's netCDF attributes, as h5netcdf gives them (text as str)."""
    return {
        k: (v.decode() if isinstance(v, bytes) else v)
        for k, v in attrs.items()
        if k not in _H5_INTERNAL
    }


def _sort_out(
    entries: Iterable[tuple[Hashable, tuple[Hashable, ...], Any]], concat_dim: Hashable
) -> tuple[
    dict[Hashable, tuple[tuple[Hashable, ...], tuple[int, ...], np.dtype[Any]]],
    dict[Hashable, np.ndarray],
]:
    """Sort a file's ``(name, dims, dataset)`` entries into what a Source keeps.

    Every non-index variable's dims, shape and dtype, and the values of those
    without ``concat_dim`` (compared across sources).
    """
    variables = {}
    coords = {}
    for name, dims, v in entries:
        if dims == (name,):
            if name != concat_dim:
                coords[name] = v[...]
            continue
        variables[name] = (dims, tuple(v.shape), v.dtype)
        if concat_dim not in dims:
            coords[name] = v[...]
    return variables, coords


def _h5py_header(path: str, concat_dim: Hashable, open_kwargs: Mapping[str, Any]) -> Source | None:
    """:func:`_header` from h5py alone (3x cheaper than h5netcdf), for plain netCDF4 files.

    Returns None for anything it does not read exactly as h5netcdf does (groups,
    strings, dimensions without a scale, renamed variables): h5netcdf then reads it.
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except Exception:  # h5netcdf's reader names the file in its error
        return None
    with f:
        datasets = {}
        for name, d in f.items():
            if not isinstance(d, h5py.Dataset) or name.startswith("_nc4_non_coord_"):
                return None
            if d.dtype.kind in "OSUV":
                return None
            datasets[name] = d
        scales: set[str] = set()
        dims_of: dict[str, tuple[str, ...]] = {}
        sizes: dict[str, int] = {}
        for name, d in datasets.items():
            if d.attrs.get("CLASS") == b"DIMENSION_SCALE":
                if d.ndim != 1:
                    return None
                scales.add(name)
                dims_of[name] = (name,)
            elif d.ndim:
                refs = d.attrs.get("DIMENSION_LIST")
                if refs is None or len(refs) != d.ndim:
                    return None
                dims_of[name] = tuple(f[r[0]].name.lstrip("/") for r in refs)
            else:
                dims_of[name] = ()
            for dim, n in zip(dims_of[name], d.shape, strict=True):
                sizes[dim] = n
        for name in scales:
            label = datasets[name].attrs.get("NAME", b"")
            if isinstance(label, bytes) and label.startswith(b"This is a netCDF dimension"):
                del dims_of[name]  # a dimension without a coordinate variable
        if concat_dim not in sizes:
            raise _no_dim(path, concat_dim, list(sizes))
        variables, coords = _sort_out(
            ((name, dims, datasets[name]) for name, dims in dims_of.items()), concat_dim
        )
        if concat_dim in dims_of:
            cv = datasets[str(concat_dim)]
            attrs = _plain_attrs(cv.attrs)
            values = _decode(concat_dim, (concat_dim,), cv[...], attrs, open_kwargs)
        else:
            values = np.arange(sizes[str(concat_dim)])
        return Source(path, values, variables, coords)


def _header(path: str, concat_dim: Hashable, open_kwargs: Mapping[str, Any]) -> Source:
    """What a source holds, from its header.

    Every variable but the index ones (dims, shape, dtype), the values of those
    without ``concat_dim`` (compared across sources), and the ``concat_dim`` values.
    """
    if _lean(open_kwargs):
        quick = _h5py_header(path, concat_dim, open_kwargs)
        if quick is not None:
            return quick
        with _h5(path) as f:
            if concat_dim not in f.dimensions:
                raise _no_dim(path, concat_dim, list(f.dimensions))
            variables, coords = _sort_out(
                ((name, tuple(v.dimensions), v) for name, v in f.variables.items()), concat_dim
            )
            if concat_dim in f.variables:
                cv = f.variables[concat_dim]
                values = _decode(concat_dim, (concat_dim,), cv[...], cv.attrs, open_kwargs)
            else:
                values = np.arange(f.dimensions[concat_dim].size)
            return Source(path, values, variables, coords)
    with _open(path, open_kwargs) as ds:
        if concat_dim not in ds.dims:
            raise _no_dim(path, concat_dim, list(ds.dims))
        values = (
            ds[concat_dim].values if concat_dim in ds.coords else np.arange(ds.sizes[concat_dim])
        )
        variables = {
            name: (tuple(v.dims), tuple(v.shape), v.dtype)
            for name, v in ds.variables.items()
            if name not in ds.indexes
        }
        coords = {
            name: v.values
            for name, v in ds.variables.items()
            if concat_dim not in v.dims and name != concat_dim
        }
        return Source(path, np.asarray(values), variables, coords)


def read_headers(
    paths: Sequence[str],
    concat_dim: Hashable,
    open_kwargs: Mapping[str, Any] | None = None,
) -> list[Source]:
    """Each file's header, read once: on the cluster when a ``distributed`` client is active.

    Without one they are read in turn: HDF5 reads hold a global lock and
    xarray's decoding the GIL, so threads would only take turns (measured: 8
    threads were twice as slow as one). For parallel headers, use a cluster of
    worker processes (``toolkit ingest --workers N``).
    """
    return executor().map(
        _header, paths, concat_dim=concat_dim, open_kwargs=dict(open_kwargs or {})
    )


def _expand(sources: str | Sequence[str | os.PathLike[str]]) -> list[str]:
    if isinstance(sources, str | os.PathLike):
        pattern = str(sources)
        if "://" in pattern:
            import fsspec

            _, _, paths = fsspec.get_fs_token_paths(pattern)
            protocol = pattern.split("://", 1)[0]
            found = sorted(f"{protocol}://{p}" for p in paths)
        else:
            found = sorted(glob.glob(pattern))
        if not found:
            raise IngestError(f"no source matches {pattern!r}")
        return found
    paths = [str(p) for p in sources]
    if not paths:
        raise IngestError("no sources given")
    return paths


def _check(sources: list[Source], concat_dim: Hashable) -> list[Source]:
    """Sources in ``concat_dim`` order; raise naming the files that disagree."""
    first = sources[0]
    for s in sources[1:]:
        if set(s.variables) != set(first.variables):
            extra = set(s.variables) ^ set(first.variables)
            raise IngestError(
                f"{s.path} and {first.path} hold different variables "
                f"({', '.join(sorted(map(str, extra)))} in one only)"
            )
        for name, (dims, shape, dtype) in s.variables.items():
            fdims, fshape, fdtype = first.variables[name]
            if dims != fdims:
                raise IngestError(
                    f"{name!r} has dims {dims} in {s.path} but {fdims} in {first.path}"
                )
            if dtype != fdtype:
                raise IngestError(
                    f"{name!r} is {dtype} in {s.path} but {fdtype} in {first.path}; "
                    "cast the sources, or open them with the same decoding"
                )
            other = [n for d, n in zip(dims, shape, strict=True) if d != concat_dim]
            fother = [n for d, n in zip(fdims, fshape, strict=True) if d != concat_dim]
            if other != fother:
                raise IngestError(
                    f"{name!r} has shape {shape} in {s.path} but {fshape} in {first.path} "
                    f"off the {concat_dim!r} dimension"
                )
        for name, values in first.coords.items():
            theirs = s.coords.get(name)
            if theirs is None or theirs.shape != values.shape or not _equal(theirs, values):
                raise IngestError(
                    f"coordinate {name!r} differs between {first.path} and {s.path}; "
                    f"only {concat_dim!r} may change from file to file"
                )
    for s in sources:
        if s.length > 1 and not (np.diff(s.values) > np.zeros_like(np.diff(s.values))).all():
            raise IngestError(f"{s.path}: its {concat_dim!r} values do not increase")
    ordered = sorted(sources, key=lambda s: (s.values[0] if s.length else np.inf, s.path))
    for a, b in itertools.pairwise(ordered):
        if a.length and b.length and not a.values[-1] < b.values[0]:
            raise IngestError(
                f"{a.path} and {b.path} overlap along {concat_dim!r} "
                f"({a.values[-1]} >= {b.values[0]}); remove one, or write them separately"
            )
    return ordered


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


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
    path: str, names: Sequence[Hashable], concat_dim: Hashable, start: int, stop: int,
    open_kwargs: Mapping[str, Any],
) -> Piece:  # fmt: skip
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
    path: str, names: Sequence[Hashable], concat_dim: Hashable, start: int, stop: int,
    open_kwargs: Mapping[str, Any],
) -> Piece | None:  # fmt: skip
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
        layer[(read, i)] = (_read_block, pieces, names, concat_dim, dict(open_kwargs))
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
            (name, *(i if a == axis else 0 for a in range(len(dims)))): (_pick, (read, i), n)
            for i in range(len(starts))
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


def ingest(
    sources: str
    | Sequence[str | os.PathLike[str]]
    | Iterable[xr.Dataset]
    | AsyncIterable[xr.Dataset],
    target: StoreLike,
    *,
    concat_dim: Hashable,
    chunks: Mapping[Hashable, int] | None = None,
    shards: Mapping[Hashable, int] | None = None,
    encoding: Mapping[Hashable, Mapping[str, Any]] | None = None,
    mode: WriteMode = "w-",
    zarr_format: Literal[2, 3] = 3,
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES,
    open_kwargs: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    throttle: Throttle | Literal[False] | None = None,
    progress: bool = True,
    resume: bool = True,
    max_writers: int | None = None,
    max_buffer_bytes: int | None = None,
) -> WriteReport:
    """Write many source files, or a stream of pieces, along ``concat_dim`` into one Zarr store.

    **Files.** Each source's header is read once, in parallel; the sources must agree on
    variables, dims, dtypes and every coordinate but ``concat_dim``, and their
    ``concat_dim`` values must not overlap (they are written in the order of
    those values). Then each write task owns whole write units along
    ``concat_dim`` and reads only the pieces of the sources that fill them.

    **Streams** (an iterable or async iterable of ``xarray.Dataset`` pieces, of
    any length): pieces are checked against the first and buffered until whole
    write units along ``concat_dim`` are complete; batches of up to
    ``max_writers`` units are appended by a writer thread, each unit by its own
    parallel task, while the next batch is gathered. The producer blocks when a
    batch is waiting (backpressure), so memory stays near ``max_buffer_bytes``
    whatever the stream's length; the last partial unit is written once, at the
    end. A piece that does not fit raises before it is written; the pieces
    accepted before it are written (the partial last unit too) and stay. On
    every way out the stream is closed (a generator's ``close()``, an async
    generator's ``aclose()`` on its loop) and toolkit's threads are joined.

    Parameters
    ----------
    sources : str, sequence of paths, or (async) iterable of Dataset
        A glob pattern (local, or a URL fsspec expands), the files, or a stream.
    target : str, os.PathLike or zarr Store
        The Zarr store to create.
    concat_dim : hashable
        The dimension the sources follow each other along (``"time"``).
    chunks, shards : mapping of dim to int, optional
        Target chunk and shard lengths per dimension (e.g. ``{"time": 48}``);
        others take zarr's default guess.
    encoding : mapping, optional
        Per-variable encoding (compressors, fill values, ...) over the layout.
    mode : {"w-", "w"}
        Refuse (default) or replace an existing target.
    zarr_format : {2, 3}
        Target format (shards need 3).
    max_task_bytes : int
        Memory target per task.
    open_kwargs : mapping, optional
        Passed to :func:`xarray.open_dataset` for every source (``engine``, ...).
    storage_options : mapping, optional
        fsspec options for a URL target.
    throttle : Throttle, False or None
        Request budget for the target.
    progress : bool
        Show progress.
    max_writers : int, optional
        Streams: units written in parallel per batch (default twice the CPUs).
    max_buffer_bytes : int, optional
        Streams: memory for pieces being gathered and batches queued (256 MiB).
    resume : bool
        Files: keep a log of landed write tasks in the target (``.toolkit/resume/``)
        while writing, and when the same ingest (same sources, layout and
        target) was interrupted, write only the tasks it had not finished. The
        result is the store an uninterrupted run makes; the log is deleted at
        the end.

    Returns
    -------
    WriteReport
        What was written (by this run).

    Raises
    ------
    toolkit.errors.IngestError
        Before anything is written: no sources, unreadable files, or sources
        that disagree, each naming the files. Streams: a refused piece, or the
        stream's own error (chained), after the pieces accepted before it were
        written; the message says how many pieces and steps landed
        (``5 pieces (18 steps along 'time', 5 chunks of 4) landed in ...``).
    toolkit.errors.WriteError
        Streams: an append failed (its error chained); the message says what
        landed before it and how many accepted steps were not written.
    KeyboardInterrupt
        Raised as it is, once the stream is closed and the batches already
        queued have landed (pieces still buffered are not written); a note
        says what landed.

    Examples
    --------
    A stream of one-step pieces, written in whole chunks of 4 steps:

    >>> import numpy as np
    >>> import xarray as xr
    >>> import toolkit
    >>> ds = xr.Dataset(
    ...     {"t2m": (("time", "x"), np.arange(48.0).reshape(12, 4))},
    ...     coords={"time": np.arange(12)},
    ... ).chunk({"time": 5})
    >>> pieces = (ds.isel(time=slice(i, i + 1)) for i in range(12))
    >>> report = toolkit.ingest(
    ...     pieces, "cube.zarr", concat_dim="time", chunks={"time": 4}, progress=False
    ... )
    >>> toolkit.open_zarr("cube.zarr", chunks={}).t2m.chunks
    ((4, 4, 4), (4,))
    >>> toolkit.verify(ds, "cube.zarr", progress=False).ok
    True
    """
    if _is_stream(sources):
        return _ingest_stream(
            sources, target, concat_dim=concat_dim, chunks=dict(chunks or {}),
            shards=dict(shards or {}), encoding=encoding, mode=mode, zarr_format=zarr_format,
            max_writers=max_writers, max_buffer_bytes=max_buffer_bytes,
            storage_options=storage_options, throttle=throttle, progress=progress,
        )  # fmt: skip
    kwargs = dict(open_kwargs or {})
    ordered, kwargs = _headers(sources, concat_dim, kwargs)  # type: ignore[arg-type]
    ds, layouts, step = _dataset(
        ordered, concat_dim, kwargs, dict(chunks or {}), dict(shards or {}), max_task_bytes
    )
    enc: dict[Hashable, dict[str, Any]] = {}
    for name, (c, sh) in layouts.items():
        given = dict((encoding or {}).get(name, {}))
        enc[name] = {"chunks": c, **({"shards": sh} if sh else {}), **given}
    write_id = source = None
    if resume:
        # As in copy: the sources' contents are checked by name, not part of the identity.
        write_id = tokenize(
            [s.path for s in ordered], concat_dim, enc, zarr_format, max_task_bytes, step,
            dict(kwargs),
        )[:16]  # fmt: skip
        source = source_objects(s.path for s in ordered)
    plan, log = plan_resumable(
        ds, target, write_id=write_id, mode=mode, encoding=enc, zarr_format=zarr_format,
        max_task_bytes=max_task_bytes, storage_options=storage_options, throttle=throttle,
        source=source,
    )  # fmt: skip
    report = execute(plan, progress=progress, resume=log)
    assert isinstance(report, WriteReport)
    return report


_READ_BLOCK_BYTES = 32 * 2**20

_SOURCE_STORAGE_KEYS = (
    "chunksizes", "contiguous", "zlib", "shuffle", "complevel", "fletcher32", "source",
    "original_shape", "preferred_chunks", "chunks", "compression", "compression_opts",
)  # fmt: skip


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
    """:func:`toolkit.jobs.choose_layout` for a variable known from headers only."""
    stand_in = xr.Variable(dims, da.empty(shape, dtype=dtype, chunks=-1))
    return choose_layout(stand_in, chunks, shards)


# Streams ---------------------------------------------------------------------


def _is_stream(sources: object) -> bool:
    if isinstance(sources, str | os.PathLike | xr.Dataset):
        return False
    if hasattr(sources, "__aiter__"):
        return True
    return not isinstance(sources, Sequence) or any(isinstance(s, xr.Dataset) for s in sources)


_CLOSE_SECONDS = 10.0
"""How long each step of closing an async stream may take (cancel its read, ``aclose``)."""


class _SyncPieces:
    """The pieces of an iterable; ``close`` closes its iterator (a generator's ``finally`` runs)."""

    def __init__(self, sources: Iterable[Any]) -> None:
        self._it = iter(sources)

    def __iter__(self) -> _SyncPieces:
        return self

    def __next__(self) -> Any:
        return next(self._it)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class _AsyncPieces:
    """The pieces of an async iterable, read on an event loop in a thread of its own.

    The next piece is read while the consumer handles the last one (one ahead).
    ``close`` cancels a read in flight, closes the iterator (``aclose``) on its
    loop, stops the loop and joins the thread, each step within ``_CLOSE_SECONDS``.
    """

    def __init__(self, sources: AsyncIterable[Any]) -> None:
        self._ait = aiter(sources)
        self._loop = asyncio.new_event_loop()
        self._reading: asyncio.Task[Any] | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="toolkit-ingest-aiter", daemon=True)
        self._thread.start()
        self._next: concurrent.futures.Future[tuple[str, Any]] | None = self._request()

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:  # as asyncio.run ends: async generators closed, executor threads joined
                loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), _CLOSE_SECONDS))
                loop.run_until_complete(
                    asyncio.wait_for(loop.shutdown_default_executor(), _CLOSE_SECONDS)
                )
            except Exception:  # best effort: close() reports a thread that does not end
                pass
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _read(self) -> tuple[str, Any]:
        self._reading = asyncio.current_task()
        try:
            return "piece", await anext(self._ait)
        except StopAsyncIteration:
            return "end", None
        except BaseException as e:  # KeyboardInterrupt too: raised in the consumer, not the loop
            if self._closing and isinstance(e, asyncio.CancelledError):
                raise
            return "error", e

    def _request(self) -> concurrent.futures.Future[tuple[str, Any]]:
        return asyncio.run_coroutine_threadsafe(self._read(), self._loop)

    def __iter__(self) -> _AsyncPieces:
        return self

    def __next__(self) -> Any:
        if self._next is None:
            raise StopIteration
        kind, item = self._next.result()
        self._next = self._request() if kind == "piece" else None  # the next, read ahead
        if kind == "end":
            raise StopIteration
        if kind == "error":
            raise item
        return item

    async def _aclose(self) -> None:
        reading = self._reading
        if reading is not None and not reading.done():
            reading.cancel()
            await asyncio.wait([reading])
        aclose = getattr(self._ait, "aclose", None)
        if aclose is not None:
            await aclose()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            closing = asyncio.run_coroutine_threadsafe(self._aclose(), self._loop)
            try:
                closing.result(_CLOSE_SECONDS)
            except TimeoutError:
                closing.cancel()
                raise TimeoutError(
                    f"the stream did not close within {_CLOSE_SECONDS:g} s"
                ) from None
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(3 * _CLOSE_SECONDS)
        if self._thread.is_alive():
            raise TimeoutError(f"{self._thread.name} did not end within {3 * _CLOSE_SECONDS:g} s")


def _stream_pieces(sources: Any) -> _SyncPieces | _AsyncPieces:
    """Pieces of a sync or async iterable, one at a time; ``close()`` closes the source."""
    if hasattr(sources, "__aiter__"):
        return _AsyncPieces(sources)
    return _SyncPieces(sources)


class _Writer:
    """Appends whole-unit batches in order, in a thread, with at most ``depth`` queued.

    ``put`` blocks while the queue is full: the producer waits for the store
    (backpressure). Each append writes its units with parallel tasks. After a
    failed write the batches behind it are skipped: ``landed`` counts the steps
    of the batches written, ``failed`` is the span of steps of the one that failed.
    """

    def __init__(self, write: Any, depth: int) -> None:
        self._write = write
        self._queue: queue.Queue[tuple[xr.Dataset, int] | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.failed: tuple[int, int] = (0, 0)
        self.landed = 0
        self.reports: list[WriteReport] = []
        self._thread = threading.Thread(target=self._run, name="toolkit-ingest-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            batch, steps = item
            if self.error is not None:
                continue
            try:
                self.reports.append(self._write(batch))
            except BaseException as e:  # raised in the producer
                self.error = e
                self.failed = (self.landed, self.landed + steps)
            else:
                self.landed += steps

    def put(self, batch: xr.Dataset, steps: int) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put((batch, steps))

    def close(self) -> None:
        """Let the batches queued land (or be skipped after a failure), and join the thread."""
        self._queue.put(None)
        self._thread.join()


def _check_piece(piece: Any, first: xr.Dataset, concat_dim: Hashable, last: Any, n: int) -> None:
    """Raise before a piece that does not fit the stream is written."""
    where = f"piece {n} of the stream"
    if not isinstance(piece, xr.Dataset):
        raise IngestError(f"{where} is a {type(piece).__name__}, not an xarray.Dataset")
    if concat_dim not in piece.dims:
        raise _no_dim(where, concat_dim, list(piece.dims))
    if set(piece.data_vars) != set(first.data_vars):
        extra = set(piece.data_vars) ^ set(first.data_vars)
        raise IngestError(
            f"{where} holds other variables than piece 0 "
            f"({', '.join(sorted(map(str, extra)))} in one only)"
        )
    for name, v in piece.data_vars.items():
        f = first[name]
        if v.dims != f.dims or v.dtype != f.dtype:
            raise IngestError(
                f"{where}: {name!r} is {v.dtype} over {v.dims}, but {f.dtype} over {f.dims} "
                "in piece 0"
            )
        other = [s for d, s in zip(v.dims, v.shape, strict=True) if d != concat_dim]
        if other != [s for d, s in zip(f.dims, f.shape, strict=True) if d != concat_dim]:
            raise IngestError(f"{where}: {name!r} has shape {v.shape} against {f.shape} in piece 0")
    for name, c in first.coords.items():
        if concat_dim in c.dims:
            continue
        if name not in piece.coords or not piece[name].variable.equals(c.variable):
            raise IngestError(f"{where}: coordinate {name!r} differs from piece 0's")
    if concat_dim in piece.coords and piece.sizes[concat_dim]:
        values = piece[concat_dim].values
        if (values.size > 1 and not (values[1:] > values[:-1]).all()) or (
            last is not None and not values[0] > last
        ):
            raise IngestError(
                f"{where}: its {concat_dim!r} values do not follow the previous ones "
                "(they must increase, without overlap)"
            )


def _ingest_stream(
    sources: Any,
    target: StoreLike,
    *,
    concat_dim: Hashable,
    chunks: Mapping[Hashable, int],
    shards: Mapping[Hashable, int],
    encoding: Mapping[Hashable, Mapping[str, Any]] | None,
    mode: WriteMode,
    zarr_format: Literal[2, 3],
    max_writers: int | None,
    max_buffer_bytes: int | None,
    storage_options: Mapping[str, Any] | None,
    throttle: Throttle | Literal[False] | None,
    progress: bool,
) -> WriteReport:
    """Buffer pieces into whole units along ``concat_dim`` and append them in batches.

    On every way out (the end, a refused piece, the stream's own error, a failed
    write, an interruption) the stream is closed and the threads started here
    are joined. When the stream stops early, the pieces accepted so far are
    written (the partial last unit too), unless a write failed or the caller was
    interrupted; the error says how many pieces and steps landed.
    """
    pieces = _stream_pieces(sources)
    buffered: list[xr.Dataset] = []
    nbuffered = 0
    first: xr.Dataset | None = None
    last = None
    unit = 0
    batch_units = 0
    writer: _Writer | None = None
    sent = 0  # steps handed to the writer
    ends: list[int] = []  # steps accepted through each piece
    bar = _stream_bar(progress)
    created = False
    enc: dict[Hashable, dict[str, Any]] = {}

    def write(batch: xr.Dataset) -> WriteReport:
        nonlocal created
        kw: dict[str, Any] = {"storage_options": storage_options, "throttle": throttle}
        if not created:
            created = True
            out = write_dataset(batch, target, mode=mode, encoding=enc, zarr_format=zarr_format,
                          progress=False, **kw)  # fmt: skip
        else:
            out = append(batch, target, concat_dim, progress=False, **kw)
        assert isinstance(out, WriteReport)
        return out

    def cut(n: int) -> xr.Dataset:
        """The first ``n`` buffered steps as one dataset; the rest stays buffered."""
        nonlocal buffered, nbuffered
        joined = buffered[0]
        if len(buffered) > 1:
            joined = xr.concat(buffered, dim=concat_dim, data_vars="minimal", coords="minimal",
                               compat="override", join="override")  # fmt: skip
        head, rest = (
            joined.isel({concat_dim: slice(0, n)}),
            joined.isel({concat_dim: slice(n, None)}),
        )
        buffered = [rest] if rest.sizes[concat_dim] else []
        nbuffered = rest.sizes[concat_dim]
        return head

    def send(n: int) -> None:
        """Hand the first ``n`` buffered steps to the writer (blocks while it is behind)."""
        nonlocal sent
        assert writer is not None
        batch = cut(n)
        writer.put(batch, n)
        sent += n
        bar(sent, batch.nbytes)

    failure: BaseException | None = None
    stage = "read"  # what was being done when the stream stopped
    try:
        for piece in pieces:
            stage = "check"
            if first is None:
                if not isinstance(piece, xr.Dataset):
                    raise IngestError(f"piece 0 of the stream is a {type(piece).__name__}")
                first = piece
                enc, unit, batch_units = _stream_layout(
                    piece, concat_dim, chunks, shards, encoding, max_writers, max_buffer_bytes
                )
                writer = _Writer(write, depth=1)
            _check_piece(piece, first, concat_dim, last, len(ends))
            if concat_dim in piece.coords and piece.sizes[concat_dim]:
                last = piece[concat_dim].values[-1]
            stage = "load"
            loaded = piece.load()
            stage = "write"
            buffered.append(loaded)
            nbuffered += loaded.sizes[concat_dim]
            ends.append((ends[-1] if ends else 0) + loaded.sizes[concat_dim])
            while nbuffered >= unit * batch_units:
                send(unit * batch_units)
            stage = "read"
        stage = "check"
        if first is None:
            raise IngestError("the stream gave no piece")
        stage = "write"
        if nbuffered:  # the last, partial unit, once
            send(nbuffered)
    except BaseException as e:  # the stream stops: closed, and what was accepted lands
        failure = e
    close_error: Exception | None = None
    try:
        try:
            pieces.close()
        except Exception as e:  # reported with what landed
            close_error = e
    finally:
        try:
            if writer is not None:
                if isinstance(failure, Exception) and writer.error is None and nbuffered:
                    with contextlib.suppress(Exception):  # a failed write: writer.error
                        send(nbuffered)  # the pieces accepted before the stream stopped
                writer.close()  # what was queued lands (or fails)
        finally:
            bar(None, 0)
    if failure is None and writer is not None and writer.error is None:
        if close_error is not None:
            warnings.warn(f"the stream did not close: {_describe(close_error)}",
                          RuntimeWarning, stacklevel=3)  # fmt: skip
        return _merge_reports(writer.reports)
    raise _stream_error(failure, stage, writer, ends, close_error, concat_dim, enc, first, target)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _landed(
    ends: Sequence[int], steps: int, concat_dim: Hashable, chunk: int | None, where: str
) -> str:
    """What of a stream landed: ``5 pieces (18 steps along 'time', 5 chunks of 4) landed in …``."""
    if not steps:
        return f"nothing landed in {where}"
    whole = bisect.bisect_right(ends, steps)
    text = f"{whole} piece{'s' if whole != 1 else ''}"
    before = ends[whole - 1] if whole else 0
    if whole < len(ends) and steps > before:
        text += (
            f" and the first {steps - before} of the {ends[whole] - before} steps of piece {whole}"
        )
    size = f"{steps} steps along {concat_dim!r}"
    if chunk:
        size += f", {-(-steps // chunk)} chunks of {chunk}"
    return f"{text} ({size}) landed in {where}"


def _stream_error(
    failure: BaseException | None,
    stage: str,
    writer: _Writer | None,
    ends: Sequence[int],
    close_error: Exception | None,
    concat_dim: Hashable,
    enc: Mapping[Hashable, Mapping[str, Any]],
    first: xr.Dataset | None,
    target: StoreLike,
) -> BaseException:
    """The error a stream that stopped early raises: it says what landed, and why it stopped.

    The stream's own error, a refusal or a failed write is chained (``raise ... from``)
    under an :class:`~toolkit.errors.IngestError` (a refused piece, the stream's
    error) or a :class:`~toolkit.errors.WriteError` (a failed write). An
    interruption (``KeyboardInterrupt``, ``SystemExit``, cancellation) is raised
    as it is, with a note.
    """
    landed = writer.landed if writer is not None else 0
    where = (
        writer.reports[0].target if writer is not None and writer.reports else store_label(target)
    )
    chunk = None
    for name, e in enc.items():
        if first is not None and concat_dim in first[name].dims:
            chunk = int(e["chunks"][first[name].dims.index(concat_dim)])
            break
    status = _landed(ends, landed, concat_dim, chunk, where) + " and the stream was closed"
    werr = writer.error if writer is not None else None
    extra = []
    if werr is not None and failure is not werr and failure is not None:
        assert writer is not None
        a, b = writer.failed
        extra.append(f"writing steps {a}-{b} failed: {_describe(werr)}")
    if unwritten := (ends[-1] if ends else 0) - landed:
        extra.append(f"{unwritten} accepted steps were not written")
    if close_error is not None:
        extra.append(f"closing the stream failed: {_describe(close_error)}")
    tail = "".join(f"; {x}" for x in extra)
    if failure is None or failure is werr:  # a write failed
        assert writer is not None and werr is not None
        a, b = writer.failed
        if not landed and isinstance(werr, PlanError):  # refused before anything was written
            werr.add_note(f"toolkit.ingest: {status}{tail}")
            return werr
        out: BaseException = WriteError(
            f"{status}; writing steps {a}-{b} failed: {_describe(werr)}{tail}",
            getattr(werr, "record", None),
        )
        out.__cause__ = werr
        return out
    if not isinstance(failure, Exception):  # interrupted: raised as it is
        failure.add_note(f"toolkit.ingest: {status}{tail}")
        return failure
    n = len(ends)
    if stage == "check" and not ends and not landed and werr is None:
        return failure  # the first piece (or none) refused: nothing was accepted
    if stage == "check":
        reason = str(failure) if isinstance(failure, IngestError) else (
            f"piece {n} was refused: {_describe(failure)}"
        )  # fmt: skip
    elif stage == "read":
        reason = f"reading piece {n} raised {_describe(failure)}"
    elif stage == "load":
        reason = f"loading piece {n} raised {_describe(failure)}"
    else:
        reason = _describe(failure)
    out = IngestError(f"{status}; {reason}{tail}")
    out.__cause__ = failure
    return out


def _stream_layout(
    piece: xr.Dataset,
    concat_dim: Hashable,
    chunks: Mapping[Hashable, int],
    shards: Mapping[Hashable, int],
    encoding: Mapping[Hashable, Mapping[str, Any]] | None,
    max_writers: int | None,
    max_buffer_bytes: int | None,
) -> tuple[dict[Hashable, dict[str, Any]], int, int]:
    """Encoding, the unit length along ``concat_dim`` and the units per batch."""
    step_bytes = max(1, sum(
        v.dtype.itemsize * v.size // max(piece.sizes[concat_dim], 1)
        for v in piece.data_vars.values() if concat_dim in v.dims
    ))  # fmt: skip
    if concat_dim not in chunks:
        # zarr's guess needs the full length; aim at ~4 MiB chunks instead.
        chunks = {**chunks, concat_dim: max(1, 4 * 2**20 // step_bytes)}
    enc: dict[Hashable, dict[str, Any]] = {}
    unit = 1
    for name, v in piece.data_vars.items():
        if concat_dim not in v.dims:
            continue
        along = max(chunks[concat_dim], shards.get(concat_dim, 1))  # the stream's length is unknown
        full = tuple(along if d == concat_dim else max(n, 1) for d, n in zip(v.dims, v.shape))
        c, sh = _layout_of(v.dims, v.dtype, full, chunks, shards)
        c = tuple(
            chunks[concat_dim] if d == concat_dim else x for d, x in zip(v.dims, c, strict=True)
        )
        if sh:
            sh = tuple(
                shards.get(d, x) if d == concat_dim else x for d, x in zip(v.dims, sh, strict=True)
            )
        enc[name] = {
            "chunks": c,
            **({"shards": sh} if sh else {}),
            **dict((encoding or {}).get(name, {})),
        }
        unit = math.lcm(unit, (sh or c)[v.dims.index(concat_dim)])
    writers = max_writers or max(2, 2 * (os.cpu_count() or 2))
    budget = max_buffer_bytes or 256 * 2**20
    # A batch is at most max_writers units, and two batches (one queued, one
    # being written) fit in the buffer budget with the pieces being gathered.
    fit = max(1, budget // 3 // max(unit * step_bytes, 1))
    return enc, unit, max(1, min(writers, fit))


def _stream_bar(enabled: bool) -> Any:
    """Progress of a stream: steps written and bytes so far, with rate (total unknown)."""
    if not enabled:
        return lambda done, nbytes: None
    from tqdm.auto import tqdm

    bar = tqdm(desc="toolkit ingest", unit="B", unit_scale=True, unit_divisor=1024)

    def update(done: int | None, nbytes: int) -> None:
        if done is None:
            bar.close()
            return
        bar.update(nbytes)
        bar.set_postfix(steps=done)

    return update


def _merge_reports(reports: Sequence[WriteReport]) -> WriteReport:
    """One report for the appends of a stream."""
    from dataclasses import replace

    head = reports[0]
    return replace(
        head,
        tasks=sum(r.tasks for r in reports),
        units=sum(r.units for r in reports),
        nbytes=sum(r.nbytes for r in reports),
        stored_bytes=sum(r.stored_bytes for r in reports),
        seconds=sum(r.seconds for r in reports),
        metadata_seconds=sum(r.metadata_seconds for r in reports),
        requests={k: sum(r.requests.get(k, 0) for r in reports) for k in head.requests},
        io=IOMetrics.merged([r.io for r in reports]),
    )
