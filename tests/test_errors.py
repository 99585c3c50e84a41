"""Bad input: a clear toolkit error before anything is written, the store unchanged."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import make_dataset, snapshot

import toolkit
from toolkit import errors


@pytest.fixture
def existing(store):
    """A store holding one dataset; returns (store, dataset)."""
    ds = make_dataset(chunks={"time": 10})
    toolkit.to_zarr(ds, store, encoding={"a": {"chunks": (5, 6, 5)}}, progress=False)
    return store, ds


def refused(store, exc, match, ds, **kw):
    before = snapshot(store)
    with pytest.raises(exc, match=match):
        toolkit.to_zarr(ds, store, progress=False, **kw)
    assert snapshot(store) == before, "a refused write changed the store"


def test_errors_subclass_builtins():
    assert issubclass(errors.RegionError, ValueError)
    assert issubclass(errors.RegionError, IndexError)
    assert issubclass(errors.ExistingStoreError, FileExistsError)
    assert issubclass(errors.AppendError, ValueError)
    assert issubclass(errors.EncodingError, ValueError)
    assert issubclass(toolkit.errors.UnknownOptionError, TypeError)
    assert all(issubclass(getattr(errors, n), errors.ToolkitError) for n in errors.__all__)


def test_region_out_of_bounds(existing):
    store, ds = existing
    piece = ds.isel(time=slice(0, 10))
    refused(store, errors.RegionError, "out of bounds", piece, region={"time": slice(45, 55)})


def test_region_length_mismatch(existing):
    store, ds = existing
    refused(
        store,
        errors.RegionError,
        r"has length 5.*slice\(0, 10\)",
        ds.isel(time=slice(0, 10)),
        region={"time": slice(0, 5)},
    )


def test_region_unknown_dim(existing):
    store, ds = existing
    refused(
        store, errors.RegionError, "not in Dataset dimensions", ds, region={"depth": slice(0, 1)}
    )


def test_region_with_step(existing):
    store, ds = existing
    refused(
        store,
        errors.RegionError,
        "step on all slices",
        ds.isel(time=slice(0, 25)),
        region={"time": slice(0, 50, 2)},
    )


def test_region_variable_without_region_dims(existing):
    store, ds = existing
    piece = ds.isel(time=slice(0, 10)).assign(z=("x", np.arange(10)))
    refused(
        store, errors.RegionError, r"drop_vars\(\['z'\]\)", piece, region={"time": slice(0, 10)}
    )


def test_region_auto_with_unknown_values(existing):
    store, _ds = existing
    piece = make_dataset(nt=5, t0="1990-01-01")
    refused(store, errors.RegionError, "not in the store", piece, region="auto")


def test_region_new_variable(existing):
    store, ds = existing
    piece = ds.isel(time=slice(0, 10)).assign(new=lambda d: d.a * 2)
    refused(
        store, errors.PlanError, "non-pre-existing variables", piece, region={"time": slice(0, 10)}
    )


def test_append_mismatched_dims(existing):
    store, _ds = existing
    bad = make_dataset(nt=5, t0="2001-01-01").rename({"x": "lon"})
    refused(store, errors.AppendError, "different dimension names", bad, append_dim="time")


def test_append_mismatched_dtype(existing):
    store, _ds = existing
    bad = make_dataset(nt=5, t0="2001-01-01")
    bad["c"] = bad["c"].astype("f8") + 0.5  # floats into an int32 array
    refused(
        store, errors.AppendError, r"stored as int32.*astype\('int32'\)", bad, append_dim="time"
    )


def test_append_mismatched_other_dim(existing):
    store, _ds = existing
    bad = make_dataset(nt=5, nx=11, t0="2001-01-01")
    refused(store, errors.AppendError, "x=11", bad, append_dim="time")


def test_append_dim_not_in_store(existing):
    store, _ds = existing
    bad = make_dataset(nt=5).expand_dims("member")
    refused(store, errors.AppendError, "not a dimension of the store", bad, append_dim="member")


def test_append_new_variable_with_append_dim(existing):
    store, _ds = existing
    bad = make_dataset(nt=5, t0="2001-01-01").assign(extra=lambda d: d.b * 2)
    refused(store, errors.AppendError, "'extra' is not in the store", bad, append_dim="time")


def test_append_encoding_contradicts_existing(existing):
    store, _ds = existing
    more = make_dataset(nt=5, t0="2001-01-01")
    refused(
        store,
        errors.EncodingError,
        r"contradicts the existing array's chunks \(5, 6, 5\)",
        more,
        append_dim="time",
        encoding={"a": {"chunks": (10, 6, 5)}},
    )


def test_encoding_on_existing_variable(existing):
    store, _ds = existing
    more = make_dataset(nt=5, t0="2001-01-01")
    refused(
        store,
        errors.EncodingError,
        "already exists",
        more,
        append_dim="time",
        encoding={"a": {"compressors": None}},
    )


def test_mode_w_minus_on_existing_store(existing):
    store, ds = existing
    refused(store, errors.ExistingStoreError, "mode='w'", ds)


def test_mode_r_plus_new_variables(existing):
    store, ds = existing
    refused(
        store,
        errors.PlanError,
        r"non-pre-existing variables \['new'\]",
        ds.assign(new=ds.a * 2),
        mode="r+",
    )


def test_overwrite_with_other_shape(existing):
    store, ds = existing
    refused(store, errors.PlanError, "time=49", ds.isel(time=slice(1, None)), mode="a")


def test_unknown_option(existing):
    store, ds = existing
    refused(
        store, toolkit.errors.UnknownOptionError, "did you mean 'append_dim'", ds, apend_dim="time"
    )


def test_invalid_mode(existing):
    store, ds = existing
    refused(store, errors.PlanError, "mode must be one of", ds, mode="x")


def test_append_dim_and_region_together(existing):
    store, ds = existing
    refused(
        store,
        errors.PlanError,
        "cannot be used together",
        ds,
        append_dim="time",
        region={"time": slice(0, 50)},
    )


def test_zarr_format_mismatch(existing):
    store, ds = existing
    refused(
        store,
        errors.PlanError,
        "zarr_format=3",
        ds.isel(time=slice(0, 5)),
        append_dim="time",
        zarr_format=2,
    )


@pytest.mark.parametrize(
    ("encoding", "match"),
    [
        ({"a": {"chunk": (1, 1, 1)}}, "unknown keys \\['chunk'\\]"),
        ({"a": {"chunks": (1, 1)}}, "3 positive integers"),
        ({"a": {"chunks": (4, 6, 5), "shards": (6, 6, 5)}}, "whole multiples"),
        ({"a": {"shards": (8, 6, 5)}}, "without 'chunks'"),
        ({"aa": {"chunks": (1, 1, 1)}}, "did you mean 'a'"),
    ],
)
def test_bad_encoding_on_new_store(tmp_path, encoding, match):
    path = tmp_path / "new.zarr"
    with pytest.raises(errors.EncodingError, match=match):
        toolkit.to_zarr(make_dataset(chunks={"time": 10}), path, encoding=encoding)
    assert not path.exists()


def test_shards_with_zarr_format_2(tmp_path):
    path = tmp_path / "v2.zarr"
    with pytest.raises(errors.EncodingError, match="zarr_format=3"):
        toolkit.to_zarr(
            make_dataset(chunks={"time": 10}),
            path,
            zarr_format=2,
            encoding={"a": {"chunks": (4, 6, 5), "shards": (8, 6, 5)}},
        )
    assert not path.exists()


def test_unit_over_memory_target(tmp_path):
    path = tmp_path / "big.zarr"
    ds = xr.Dataset({"v": (("t",), da.zeros(1000, chunks=100))})
    with pytest.raises(errors.UnsafePlanError, match="max_task_bytes"):
        toolkit.to_zarr(ds, path, encoding={"v": {"chunks": (500,)}}, max_task_bytes=1000)
    assert not path.exists()


def test_rejected_append_does_not_resize(existing):
    """xarray resizes arrays before some append checks fail; toolkit checks first."""
    store, _ds = existing
    more = make_dataset(nt=5, t0="2001-01-01")
    more["c"] = more["c"].astype("f8") + 0.5
    with pytest.raises(errors.AppendError):
        toolkit.to_zarr(more, store, append_dim="time", progress=False)
    assert xr.open_zarr(store).sizes["time"] == 50


def test_encoding_xarray_rejects_is_refused_at_plan_time(tmp_path):
    path = tmp_path / "v2.zarr"
    with pytest.raises(errors.EncodingError, match="fill_value"):
        toolkit.to_zarr(
            make_dataset(chunks={"time": 10}),
            path,
            zarr_format=2,
            encoding={"a": {"fill_value": 0.0}},
        )
    assert not path.exists()


def test_bad_throttle_and_incomplete_options_are_refused_before_writing(existing):
    store, _ = existing
    more = make_dataset(nt=10, chunks={"time": 5}, t0="2001-01-01")
    refused(store, TypeError, r"toolkit\.Throttle", more, append_dim="time", throttle="fast")
    refused(store, TypeError, r"toolkit\.Throttle", more, append_dim="time", throttle={"rate": 5})
    with pytest.raises(ValueError, match="incomplete="):
        toolkit.open_zarr(store, incomplete="skip")
    with pytest.raises(ValueError, match="rate"):
        toolkit.Throttle(write_rate=0)
    assert issubclass(errors.StoreThrottledError, OSError)
    assert issubclass(errors.StoreAccessError, PermissionError)
    assert issubclass(errors.StoreUnavailableError, ConnectionError)
    assert issubclass(errors.IncompleteStoreError, ValueError)


def test_new_error_classes_subclass_their_builtins_and_pickle():
    import pickle

    assert issubclass(errors.AttributeTypeError, TypeError)
    assert issubclass(errors.AttributeTypeError, errors.PlanError)
    assert issubclass(errors.CorruptMetadataError, ValueError)
    err = pickle.loads(pickle.dumps(errors.CorruptMetadataError("damaged", "v/zarr.json")))
    assert err.key == "v/zarr.json" and str(err) == "damaged"


def test_encode_json_refuses_what_json_cannot_hold_instead_of_stringifying_it():
    """Finding 3: ``default=str`` wrote any object into records and leases as its str()."""
    import datetime as dt
    import json

    from toolkit._util import encode_json

    doc = {"n": np.int64(3), "x": np.float32(0.5), "ok": np.bool_(True), "rows": (1, 2)}
    assert json.loads(encode_json(doc).to_bytes()) == {"n": 3, "x": 0.5, "ok": True, "rows": [1, 2]}
    for bad in (
        {1, 2},
        b"x",
        object(),
        dt.datetime(2000, 1, 1),
        np.datetime64("2000-01-01"),
        np.arange(2),
        1j,
        np.complex64(1),
    ):
        kind = type(bad)
        with pytest.raises(TypeError, match=f"{kind.__module__}.{kind.__qualname__}"):
            encode_json({"state": "writing", "nested": [{"value": bad}]})
