"""The README's "In ten lines", run as they stand.

Run it in an empty directory (it writes there)::

    pip install "zarr-toolkit[netcdf]"
    python examples/ten_lines.py

First it makes the small netCDF files the ten lines read: ``era5.nc`` (48 hours
of an ERA5-like 2 m temperature on a 1° grid), ``era5-next.nc`` (the 24 hours
after) and ``raw/day-*.nc`` (the same three days, a file each). The test
suite runs this file (``tests/test_examples.py``) and checks that the README
shows the same lines.
"""

import os

import numpy as np
import pandas as pd
import xarray


def _inputs() -> None:
    hours = pd.date_range("2024-01-01", periods=72, freq="h")
    lat, lon = np.arange(89.5, -90, -2.0), np.arange(0.0, 360, 2.0)
    rng = np.random.default_rng(0)
    t2m = 250 + 40 * np.cos(np.deg2rad(lat))[None, :, None] + rng.normal(0, 3, (72, 90, 180))
    month = xarray.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m.astype("f4"), {"units": "K"})},
        coords={"time": hours, "lat": lat, "lon": lon},
    )
    month.isel(time=slice(0, 48)).to_netcdf("era5.nc")
    month.isel(time=slice(48, 72)).to_netcdf("era5-next.nc")
    os.makedirs("raw", exist_ok=True)
    for day in range(3):
        month.isel(time=slice(24 * day, 24 * day + 24)).to_netcdf(f"raw/day-{day}.nc")


_inputs()

# --- In ten lines (README.md shows from here to the end) ---
import toolkit, xarray as xr

ds = xr.open_dataset("era5.nc", chunks={"time": 10})  # any dask chunking
plan = toolkit.plan_write(ds, "era5.zarr", encoding={"t2m": {"chunks": (24, 90, 180)}})
print(plan)  # nothing written yet: tasks, bytes, requests, memory per task (a table in Jupyter)
report = toolkit.execute(plan)  # or toolkit.to_zarr(ds, "era5.zarr", encoding=...)
more = xr.open_dataset("era5-next.nc", chunks={"time": 10})  # the hours after
toolkit.to_zarr(more, "era5.zarr", append_dim="time")  # onto a partial last chunk, safely
back = toolkit.open_zarr("era5.zarr")  # dask chunks of whole stored chunks
print(toolkit.stats(back, stats=["mean", "std", "min", "max"], bins=100, bin_range=(200, 330)))
toolkit.ingest("raw/*.nc", "cube.zarr", concat_dim="time", chunks={"time": 48})  # resumable
toolkit.rechunk("cube.zarr", "series.zarr", {"time": -1, "lat": 30, "lon": 30}, max_mem="256MiB")
