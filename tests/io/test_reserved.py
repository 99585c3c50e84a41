"""toolkit's own prefix: zarr never lists it as a member, and no warnings filter hides it."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

import toolkit


def test_toolkits_prefix_is_no_member_to_zarr_and_no_filter_is_installed(tmp_path):
    """zarr warned "Object at .toolkit is not recognized" on every listing of a group
    that holds toolkit's state; a process-wide filter installed at run time hid it."""
    ds = xr.Dataset({"v": (("t", "x"), np.arange(24.0).reshape(6, 4))}, coords={"t": np.arange(6)})
    path = tmp_path / "d.zarr"
    tree = tmp_path / "tree.zarr"
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        toolkit.to_zarr(ds.chunk({"t": 2}), path, progress=False, consolidated=False)
        toolkit.append(ds.assign_coords(t=ds.t + 6), path, "t", progress=False)
        back = toolkit.open_zarr(path, consolidated=False).load()
        toolkit.stats(str(path), stats=["mean"], progress=False)
        toolkit.verify(str(path), progress=False)
        toolkit.to_zarr(xr.DataTree.from_dict({"/": ds, "/b": ds}), tree, progress=False)
        toolkit.open_datatree(tree).load()
    assert (path / ".toolkit").exists()
    np.testing.assert_array_equal(back.v.values[6:], ds.v.values)
    recognized = [str(w.message) for w in caught if "is not recognized" in str(w.message)]
    assert recognized == []
    assert warnings.filters == filters
