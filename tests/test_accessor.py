"""ds.toolkit and da.toolkit: the same writes, plans and statistics as the functions."""

from __future__ import annotations

import numpy as np
import xarray as xr

import toolkit


def _ds() -> xr.Dataset:
    return xr.Dataset({"v": (("t", "x"), np.arange(60.0).reshape(10, 6))}).chunk({"t": 5})


def test_dataset_accessor_plans_writes_and_reads_back(tmp_path):
    ds = _ds()
    plan = ds.toolkit.plan_write(tmp_path / "p.zarr")
    assert isinstance(plan, toolkit.WritePlan) and plan.ntasks >= 1
    report = ds.toolkit.to_zarr(tmp_path / "a.zarr", progress=False)
    assert isinstance(report, toolkit.WriteReport)
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "a.zarr").load(), ds.load())


def test_dataarray_accessor_writes_as_xarray_names_it(tmp_path):
    da = _ds().v.rename("temperature")
    da.toolkit.to_zarr(tmp_path / "d.zarr", progress=False)
    back = xr.open_dataarray(tmp_path / "d.zarr", engine="zarr")
    xr.testing.assert_identical(back.load(), da.load())


def test_stats_through_either_accessor_match_the_function():
    ds = _ds()
    want = toolkit.stats(ds, stats=["mean", "max"], progress=False)
    xr.testing.assert_allclose(ds.toolkit.stats(stats=["mean", "max"], progress=False), want)
    got = ds.v.toolkit.stats(stats=["mean", "max"], progress=False)
    assert float(got["mean"]) == float(want["v_mean"]) == 29.5
    assert float(got["max"]) == float(want["v_max"]) == 59.0
