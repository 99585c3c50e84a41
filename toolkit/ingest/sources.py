"""What each source file holds (its header, by one of three readers); whether they agree."""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from toolkit.cluster.executor import executor
from toolkit.errors import IngestError

__all__ = ["Source", "read_headers"]


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
    {
        "decode_cf",
        "decode_times",
        "mask_and_scale",
        "decode_timedelta",
        "use_cftime",
        "concat_characters",
        "decode_coords",
    }
)


def _lean(open_kwargs: Mapping[str, Any]) -> bool:
    """Whether sources are read with h5netcdf directly (and decoded as xarray would).

    xarray's ``open_dataset`` costs ~20 ms a file, mostly building every
    variable's lazy wrapper; reading the needed variables with h5netcdf and
    decoding them with :func:`xarray.decode_cf` costs a few.
    """
    return open_kwargs.get("engine") == "h5netcdf" and set(open_kwargs) <= {"engine", *_DECODE_KEYS}


def _decode(
    name: Hashable,
    dims: tuple[Hashable, ...],
    raw: Any,
    attrs: Mapping[str, Any],
    open_kwargs: Mapping[str, Any],
) -> np.ndarray:
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
    {
        "CLASS",
        "NAME",
        "REFERENCE_LIST",
        "DIMENSION_LIST",
        "_Netcdf4Dimid",
        "_Netcdf4Coordinates",
        "_nc3_strict",
    }
)


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
