"""Opening groups: one way, v3 first, and toolkit's own prefix kept out of zarr's warnings."""

from __future__ import annotations

import re
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


DAMAGED = [
    (3, "zarr.json", b"\x00garbage"),  # not JSON
    (3, "zarr.json", b"[1, 2]"),  # JSON, not an object
    (3, "zarr.json", b""),  # truncated to nothing
    (3, "v/zarr.json", b"{not json"),
    (3, "v/zarr.json", b'{"zarr_format": 3, "node_type": "array"}'),  # fields missing
    (2, ".zgroup", b"\x00garbage"),
    (2, ".zattrs", b"\x00garbage"),
    (2, "v/.zarray", b"\x00garbage"),
]


@pytest.mark.parametrize(("fmt", "key", "data"), DAMAGED)
def test_damaged_metadata_is_reported_as_damaged_not_as_no_group(tmp_path, fmt, key, data):
    """Finding 5: a garbage zarr.json made open_existing say "no group", so that a plan
    took a damaged store for an empty one (an append would create it anew) and a reader
    said "no Zarr group"."""
    from conftest import snapshot

    from toolkit.errors import CorruptMetadataError

    path = tmp_path / "a.zarr"
    ds = xr.Dataset({"v": (("t", "x"), np.zeros((4, 3)))}, coords={"t": np.arange(4)})
    ds.to_zarr(path, zarr_format=fmt, consolidated=False)
    (path / key).write_bytes(data)
    with pytest.raises(CorruptMetadataError, match=re.escape(repr(key))) as err:
        open_existing(LocalStore(str(path)), None)
    assert err.value.key == key and isinstance(err.value, ValueError)
    assert err.value.__cause__ is not None
    before = snapshot(path)
    more = ds.assign_coords(t=np.arange(4, 8))
    for kw in ({"append_dim": "t"}, {"mode": "a"}, {"mode": "w-"}, {"mode": "r+"}):
        with pytest.raises(CorruptMetadataError, match="damaged"):
            toolkit.to_zarr(more, path, progress=False, **kw)
    assert snapshot(path) == before
    with pytest.raises(CorruptMetadataError, match=re.escape(repr(key))):
        toolkit.open_zarr(path)
    # mode="w" replaces the damaged store (it never reads it).
    toolkit.to_zarr(more, path, mode="w", zarr_format=fmt, progress=False)
    xr.testing.assert_identical(toolkit.open_zarr(path).compute(), more)


def test_what_is_no_node_is_still_no_group_or_skipped(tmp_path):
    """An absent store, a directory of foreign files, and toolkit's own prefix are no data."""
    assert open_existing(LocalStore(str(tmp_path / "none.zarr")), None) is None
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "README").write_text("not zarr")
    assert open_existing(LocalStore(str(tmp_path / "foreign")), None) is None
    ds = xr.Dataset({"v": ("t", np.arange(8.0))}).chunk({"t": 4})
    out = tmp_path / "w.zarr"
    toolkit.to_zarr(ds, out, progress=False)
    (out / "notes").mkdir()
    (out / "notes" / "x.txt").write_text("a stray directory, no node")
    found = open_existing(LocalStore(str(out)), None)
    assert found is not None and sorted(found.arrays) == ["v"]
