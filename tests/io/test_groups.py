"""Opening groups: one way, v3 first, and toolkit's own prefix kept out of zarr's warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.storage import LocalStore

import toolkit
from toolkit.io.groups import RESERVED_PREFIX, array_dims, open_existing, open_group
from toolkit.io.wrappers import MetricsStore


@pytest.mark.parametrize("fmt", [2, 3])
def test_open_existing_sees_arrays_and_dims_of_either_format(tmp_path, fmt):
    ds = xr.Dataset({"v": (("t", "x"), np.zeros((4, 3)))})
    ds.to_zarr(tmp_path / "a.zarr", zarr_format=fmt)
    found = open_existing(LocalStore(str(tmp_path / "a.zarr")), None)
    assert found is not None and found.zarr_format == fmt
    assert found.dims["v"] == ("t", "x") and found.sizes() == {"t": 4, "x": 3}
    assert array_dims(found.arrays["v"]) == ("t", "x")
    assert open_existing(LocalStore(str(tmp_path / "none.zarr")), None) is None


def test_a_v3_group_opens_in_one_request(tmp_path):
    zarr.create_group(str(tmp_path / "g.zarr"), zarr_format=3)
    counting = MetricsStore(LocalStore(str(tmp_path / "g.zarr")))
    open_group(counting, None)
    assert counting.metrics.gets == 1


def test_the_reserved_prefix_warning_stays_hidden_after_filters_are_reset(tmp_path):
    ds = xr.Dataset({"v": ("t", np.arange(8.0))}).chunk({"t": 4})
    out = tmp_path / "w.zarr"
    toolkit.to_zarr(ds, out, progress=False)
    (out / RESERVED_PREFIX / "manifest.json").parent.mkdir(exist_ok=True)
    (out / RESERVED_PREFIX / "manifest.json").write_text("{}")
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()  # as a test runner or a caller may do
        warnings.simplefilter("always")
        toolkit.to_zarr(ds.assign(w=ds.v), out, mode="a", progress=False)
        toolkit.open_zarr(out).load()
    assert not [w for w in seen if RESERVED_PREFIX in str(w.message)]
