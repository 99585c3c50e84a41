"""Names and attributes Zarr cannot store: refused while planning, on every mode.

Each refusal is a toolkit error naming the variable or attribute and why, raised
before anything is written: the store stays byte-identical (no ``.toolkit/``
record left behind to refuse it later).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import make_dataset, snapshot
from zarr.storage import MemoryStore

import toolkit
from toolkit import errors


@pytest.fixture
def existing(store):
    """A store holding one dataset; returns (store, dataset)."""
    ds = make_dataset(nt=20, chunks={"time": 10})
    toolkit.to_zarr(ds, store, encoding={"a": {"chunks": (5, 6, 5)}}, progress=False)
    return store, ds


def refused(store, exc, match, ds, **kw):
    before = snapshot(store)
    with pytest.raises(exc, match=match) as err:
        toolkit.to_zarr(ds, store, progress=False, **kw)
    assert snapshot(store) == before, "a refused write changed the store"
    with pytest.raises(exc, match=match):
        toolkit.plan_write(ds, store, **kw)
    assert snapshot(store) == before, "a refused plan changed the store"
    return err.value


# --------------------------------------------------------------------------- names

BAD_NAMES = [
    ("zarr.json", "Zarr metadata document"),
    ("ZARR.JSON", "Zarr metadata document"),
    (".zarray", "Zarr metadata document"),
    (".zattrs", "Zarr metadata document"),
    (".zgroup", "Zarr metadata document"),
    (".zmetadata", "Zarr metadata document"),
    (".toolkit", "toolkit keeps its own state"),
    ("a\\b", "nested group"),
    ("a\x00b", "NUL character"),
    (".", "path segments"),
]


@pytest.mark.parametrize(("name", "why"), BAD_NAMES)
def test_a_variable_name_zarr_cannot_store_is_refused_before_writing(store, name, why):
    """Finding 1: a variable named zarr.json was written until a raw FileExistsError,
    leaving a "writing" record that refused the store for good."""
    ds = make_dataset(nt=10, chunks={"time": 5}).rename({"b": name})
    err = refused(store, errors.VariableNameError, re.escape(repr(name)), ds)
    assert why in str(err) and "ds.rename(" in str(err)
    assert isinstance(err, errors.PlanError) and isinstance(err, TypeError)
    # Nothing was left behind: the store takes the renamed dataset as if new.
    toolkit.to_zarr(ds.rename({name: "b"}), store, progress=False)
    xr.testing.assert_identical(
        toolkit.open_zarr(store).compute(), ds.rename({name: "b"}).compute()
    )


@pytest.mark.parametrize("mode", ["a", "w"])
def test_a_variable_name_zarr_cannot_store_is_refused_on_an_existing_store(existing, mode):
    store, ds = existing
    more = ds.assign({"zarr.json": ds.b * 2})
    refused(store, errors.VariableNameError, "'zarr.json'", more, mode=mode)
    assert set(toolkit.open_zarr(store).data_vars) == {"a", "b", "c"}


def test_a_name_too_long_for_a_directory_is_refused_there_only(tmp_path):
    name = "v" * 300
    ds = xr.Dataset({name: ("t", np.arange(4.0))})
    refused(str(tmp_path / "long.zarr"), errors.VariableNameError, "at most 255", ds)
    memory = MemoryStore()
    toolkit.to_zarr(ds, memory, progress=False)  # an object key may be that long
    assert list(toolkit.open_zarr(memory).data_vars) == [name]


# --------------------------------------------------------------------------- attributes

BAD_VALUES = [
    ({1, 2}, "builtins.set"),
    (b"\x00\xff", "builtins.bytes"),
    (object(), "builtins.object"),
]


@pytest.mark.parametrize(("value", "kind"), BAD_VALUES, ids=["set", "bytes", "object"])
@pytest.mark.parametrize("owner", ["dataset", "variable"])
def test_an_attribute_json_cannot_hold_is_refused_on_a_new_store(store, value, kind, owner):
    """Finding 2: a bare TypeError, halfway through the metadata, a .toolkit/ left behind."""
    ds = make_dataset(nt=10, chunks={"time": 5})
    if owner == "dataset":
        ds.attrs["bad"] = value
        where = "the dataset"
    else:
        ds["b"].attrs["bad"] = value
        where = "variable 'b'"
    err = refused(
        store,
        errors.AttributeTypeError,
        f"Invalid attribute in Dataset.attrs: 'bad' of {where} is a {kind}",
        ds,
    )
    assert isinstance(err, TypeError) and isinstance(err, errors.PlanError)
    assert isinstance(err.__cause__, TypeError)  # what zarr's JSON encoder said


def _append(ds):
    return ds.isel(time=slice(0, 5)).assign_coords(time=ds.time[:5] + np.timedelta64(100, "D"))


# (what is written, its keywords): every way a dataset reaches an existing store.
MODES = {
    "append": (_append, {"append_dim": "time"}),
    "mode-a": (lambda ds: ds, {"mode": "a"}),
    "mode-a-new-variable": (lambda ds: ds[["b"]].rename({"b": "b2"}), {"mode": "a"}),
    "region-r+": (
        lambda ds: ds.isel(time=slice(0, 10)).drop_vars(["time", "x", "y"]),
        {"region": {"time": slice(0, 10)}},
    ),
    "region-a": (
        lambda ds: ds.isel(time=slice(0, 10)).drop_vars(["time", "x", "y"]),
        {"region": {"time": slice(0, 10)}, "mode": "a"},
    ),
    "mode-w": (lambda ds: ds, {"mode": "w"}),
}


@pytest.mark.parametrize("how", list(MODES))
@pytest.mark.parametrize("owner", ["dataset", "variable"])
def test_an_attribute_json_cannot_hold_is_refused_on_every_mode(existing, how, owner):
    """Finding 2: appends, mode='a' and region writes dropped such attributes silently."""
    store, ds = existing
    make, kw = MODES[how]
    piece = make(ds).copy()
    if owner == "dataset":
        piece.attrs["bad"] = {"x", "y"}
    else:
        name = next(iter(piece.data_vars))
        piece[name].attrs = {**piece[name].attrs, "bad": {"x", "y"}}
    err = refused(store, errors.AttributeTypeError, r"'bad' of .* is a builtins\.set", piece, **kw)
    assert "sorted(" in str(err)  # the fix for a set
    xr.testing.assert_identical(toolkit.open_zarr(store).compute(), ds.compute())


def _stored_attrs(store: Path) -> dict[str, object]:
    return {
        p.parent.name if p.parent != store else "": json.loads(p.read_text())["attributes"]
        for p in sorted(store.rglob("zarr.json"))
        if ".toolkit" not in p.parts
    }


GOOD_ATTRS = {
    "f32": np.float32(1.5),
    "i64": np.int64(7),
    "flag": np.bool_(True),
    "array": np.arange(3),
    "strings": np.array(["a", "b"]),
    "matrix": np.zeros((2, 2)),
    "nested": {"a": [1, 2.5, None, "x"]},
    "tuple": (1, "a"),
    "none": None,
    "nan": float("nan"),
    "big": 2**70,
    "text": "é",
}


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_attributes_xarray_stores_are_stored_as_xarray_stores_them(tmp_path, zarr_format):
    """What xarray accepts (numpy scalars and arrays, nested JSON) is not refused, and lands
    as xarray's write stores it, on a new store and on mode='a' (which replaces the group's)."""
    ds = make_dataset(nt=10, chunks={"time": 5}).assign_attrs(GOOD_ATTRS)
    ds["b"].attrs.update(GOOD_ATTRS)
    ours, theirs = tmp_path / "ours.zarr", tmp_path / "theirs.zarr"
    toolkit.to_zarr(ds, ours, zarr_format=zarr_format, progress=False)
    ds.to_zarr(theirs, zarr_format=zarr_format, consolidated=False)
    later = ds.assign_attrs(title="again", extra=np.float64(2.0))
    toolkit.to_zarr(later, ours, mode="a", progress=False)
    later.to_zarr(theirs, mode="a", consolidated=False)
    if zarr_format == 3:
        assert _stored_attrs(ours) == _stored_attrs(theirs)
    back, want = toolkit.open_zarr(ours), xr.open_zarr(theirs, consolidated=False)
    assert json.dumps(back.attrs, default=repr) == json.dumps(want.attrs, default=repr)
    assert json.dumps(back.b.attrs, default=repr) == json.dumps(want.b.attrs, default=repr)
