"""A dataset written by xarray and by toolkit opens identically, stored with the same dtypes.

Each case is a kind of variable that real files hold and that is not worth a
task per write unit, or that only xarray's encoders can write. xarray writes
the in-memory dataset; toolkit writes it in memory and dask-chunked across
the Zarr chunk edges (which xarray would refuse), in both Zarr formats.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

import toolkit

NT = 10  # time steps, in Zarr chunks of 4: dask chunks of 3 straddle them


def _with_data(extra: dict[str, Any], coords: dict[str, Any] | None = None) -> xr.Dataset:
    rng = np.random.default_rng(0)
    base = {"t2m": (("time", "x"), rng.standard_normal((NT, 5)).astype("f4"), {"units": "K"})}
    return xr.Dataset(
        {**base, **extra},
        coords={"time": pd.date_range("2026-01-01", periods=NT, freq="D"), **(coords or {})},
    )


def object_strings() -> tuple[xr.Dataset, dict[str, Any]]:
    names = np.array(["Aberdeen", "Bergen", "Cork", "Dundee", "Esbjerg"], dtype=object)
    ds = _with_data({"station": ("x", names, {"long_name": "station name"})})
    return ds, {}


def stringdtype_with_nulls() -> tuple[xr.Dataset, dict[str, Any]]:
    dtype = np.dtypes.StringDType(na_object=None)
    labels = np.array(["a", None, "ccc", "", "eeeee"], dtype=dtype)
    return _with_data({"label": ("x", labels)}), {}


def none_variable() -> tuple[xr.Dataset, dict[str, Any]]:
    ds = _with_data({})
    return ds.assign({None: ds.t2m * 2}), {}


def empty_dimension() -> tuple[xr.Dataset, dict[str, Any]]:
    return _with_data({"nothing": (("time", "empty"), np.zeros((NT, 0), "f8"))}), {}


def zero_dimensional() -> tuple[xr.Dataset, dict[str, Any]]:
    extra = {"p0": ((), 1013.25, {"units": "hPa"}), "flag": ((), np.int8(3))}
    return _with_data(extra), {}


def bounds_and_grid_mapping() -> tuple[xr.Dataset, dict[str, Any]]:
    x = np.arange(5.0)
    ds = _with_data(
        {"crs": ((), np.int32(0), {"grid_mapping_name": "latitude_longitude"})},
        coords={
            "x": ("x", x, {"units": "degrees_east", "bounds": "x_bnds"}),
            "x_bnds": (("x", "nv"), np.stack([x - 0.5, x + 0.5], axis=1)),
        },
    )
    ds["t2m"].attrs["grid_mapping"] = "crs"
    return ds, {}


def cftime_with_bounds() -> tuple[xr.Dataset, dict[str, Any]]:
    pytest.importorskip("cftime")
    time = xr.date_range("2026-01-01", periods=NT, freq="D", calendar="noleap", use_cftime=True)
    ds = _with_data({}).assign_coords(time=time)
    ds["time"].attrs["bounds"] = "time_bnds"
    ds["time_bnds"] = (
        ("time", "nv"),
        np.stack([time.values, (time + pd.Timedelta("1D")).values], 1),
    )
    ds["time"].encoding = {"units": "days since 2000-01-01", "calendar": "noleap"}
    ds["time_bnds"].encoding = {"units": "days since 2000-01-01", "calendar": "noleap"}
    return ds, {}


def packed_int16() -> tuple[xr.Dataset, dict[str, Any]]:
    ds = _with_data({})
    ds["t2m"] = (ds.t2m * 10 + 273.15).astype("f8")
    ds["t2m"][0, 0] = np.nan
    enc = {"dtype": "int16", "scale_factor": 0.01, "add_offset": 273.15, "_FillValue": -32768}
    return ds, {"t2m": enc}


CASES: dict[str, Callable[[], tuple[xr.Dataset, dict[str, Any]]]] = {
    f.__name__: f
    for f in (
        object_strings,
        stringdtype_with_nulls,
        none_variable,
        empty_dimension,
        zero_dimensional,
        bounds_and_grid_mapping,
        cftime_with_bounds,
        packed_int16,
    )
}


def _stored(path: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    group = zarr.open_group(path, mode="r")
    return {name: (str(arr.dtype), dict(arr.attrs)) for name, arr in group.arrays()}


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("backing", ["numpy", "dask-across-edges"])
@pytest.mark.parametrize("case", list(CASES))
def test_written_by_xarray_and_by_toolkit_opens_identically(
    tmp_path: Path, case: str, backing: str, zarr_format: int
) -> None:
    ds, encoding = CASES[case]()
    encoding = {**encoding, "t2m": {**encoding.get("t2m", {}), "chunks": (4, 5)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xarray's own warnings on object strings, v3 dtypes
        ds.to_zarr(tmp_path / "x.zarr", zarr_format=zarr_format, encoding=encoding)
        source = ds.chunk({"time": 3}) if backing != "numpy" else ds
        toolkit.to_zarr(
            source,
            tmp_path / "t.zarr",
            zarr_format=zarr_format,
            encoding=encoding,
            progress=False,
        )
        want = xr.open_zarr(tmp_path / "x.zarr").load()
        got = xr.open_zarr(tmp_path / "t.zarr").load()
        back = toolkit.open_zarr(tmp_path / "t.zarr").load()
    xr.testing.assert_identical(got, want)
    xr.testing.assert_identical(back, want)
    assert _stored(tmp_path / "t.zarr") == _stored(tmp_path / "x.zarr")


def test_a_dataarray_is_stored_as_xarray_stores_it(tmp_path: Path) -> None:
    da = _with_data({}).t2m.chunk({"time": 3})  # straddles the chunks of 4
    enc = {"t2m": {"chunks": (4, 5)}}
    da.compute().to_zarr(tmp_path / "x.zarr", encoding=enc)
    da.toolkit.to_zarr(tmp_path / "t.zarr", encoding=enc, progress=False)
    assert _stored(tmp_path / "t.zarr") == _stored(tmp_path / "x.zarr")
    for unnamed, path in ((da.rename(None), "u.zarr"), (da.rename("x"), "c.zarr")):
        # No name, or a coordinate's: xarray's placeholder name, restored on reading.
        unnamed.compute().to_zarr(tmp_path / f"x-{path}")
        toolkit.to_zarr(unnamed, tmp_path / path, progress=False)
        assert _stored(tmp_path / path) == _stored(tmp_path / f"x-{path}")
        with xr.open_dataarray(tmp_path / path, engine="zarr") as got:
            xr.testing.assert_identical(got.load(), unnamed.compute())


@pytest.mark.parametrize(
    ("kwargs", "builtin", "match"),
    [
        ({"encoding": {"nope": {}}}, KeyError, "not in the dataset"),
        ({"encoding": {"t2m": {"foo": 1}}}, ValueError, "unexpected encoding parameters"),
        ({"encoding": {"t2m": "zstd"}}, ValueError, "must be castable to a dict"),
    ],
)
def test_refusals_are_xarrays_builtin_classes_and_leave_nothing(
    tmp_path: Path, kwargs: dict[str, Any], builtin: type[Exception], match: str
) -> None:
    ds = _with_data({})
    with pytest.raises(builtin):
        ds.to_zarr(tmp_path / "x.zarr", **kwargs)
    with pytest.raises(builtin, match=match) as err:
        toolkit.to_zarr(ds, tmp_path / "t.zarr", progress=False, **kwargs)
    assert isinstance(err.value, toolkit.errors.PlanError)
    assert not (tmp_path / "t.zarr").exists()


@pytest.mark.parametrize(
    ("name", "builtin"), [(0, TypeError), ((4, 5), TypeError), ("", ValueError)]
)
def test_invalid_names_are_refused_as_xarray_refuses_them(
    tmp_path: Path, name: Any, builtin: type[Exception]
) -> None:
    ds = xr.Dataset({name: ("x", np.arange(3))})
    with pytest.raises(builtin):
        ds.to_zarr(tmp_path / "x.zarr")
    with pytest.raises(builtin, match="Invalid name"):
        toolkit.to_zarr(ds, tmp_path / "t.zarr", progress=False)
    assert not (tmp_path / "t.zarr").exists()


def test_a_multiindex_is_refused_as_xarray_refuses_it(tmp_path: Path) -> None:
    ds = xr.Dataset(coords={"a": ("x", [1, 2]), "b": ("x", [3, 4])}).set_index(x=["a", "b"])
    with pytest.raises(NotImplementedError):
        ds.to_zarr(tmp_path / "x.zarr")
    with pytest.raises(NotImplementedError, match="reset_index"):
        toolkit.to_zarr(ds, tmp_path / "t.zarr", progress=False)
    assert not (tmp_path / "t.zarr").exists()


def test_open_zarr_takes_xarrays_chunks(tmp_path: Path) -> None:
    ds = _with_data({})
    toolkit.to_zarr(ds, tmp_path / "t.zarr", encoding={"t2m": {"chunks": (4, 5)}}, progress=False)
    lazy = toolkit.open_zarr(tmp_path / "t.zarr", chunks=None)
    assert lazy.t2m.chunks is None
    assert toolkit.open_zarr(tmp_path / "t.zarr", chunks={}).t2m.chunks == ((4, 4, 2), (5,))
    xr.testing.assert_identical(lazy.load(), ds)
