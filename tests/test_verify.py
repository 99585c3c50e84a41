"""toolkit.verify: a written store against its source, or against its checksum manifest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
import zarr

import toolkit
from toolkit.jobs import copy


def _ds() -> xr.Dataset:
    t = pd.date_range("2026-01-01", periods=40, freq="h")
    v = np.arange(40 * 6, dtype="f4").reshape(40, 6)
    return xr.Dataset(
        {"v": (("time", "x"), v, {"units": "K"})}, coords={"time": t, "x": np.arange(6)}
    ).chunk({"time": 10})


def test_a_faithful_write_verifies_and_a_changed_value_is_found_at_its_index(tmp_path):
    ds = _ds()
    out = tmp_path / "a.zarr"
    toolkit.to_zarr(ds, out, progress=False)
    report = toolkit.verify(ds, out, progress=False)
    assert report.ok and report.variables["v"]["differ"] == 0
    assert "v" in repr(report) and "<table" in report._repr_html_()

    zarr.open_array(str(out / "v"), mode="r+")[7, 2] = -1.0
    bad = toolkit.verify(ds, out, progress=False)
    assert not bad.ok
    assert bad.variables["v"]["differ"] == 1 and list(bad.variables["v"]["first"]) == [7, 2]


def test_missing_variables_and_changed_attributes_are_problems(tmp_path):
    ds = _ds()
    out = tmp_path / "b.zarr"
    toolkit.to_zarr(ds, out, progress=False)
    changed = ds.assign(w=ds.v * 2)
    changed.v.attrs["units"] = "degC"
    problems = " ".join(toolkit.verify(changed, out, progress=False).problems)
    assert "missing from the target: w" in problems and "'v': attributes differ" in problems


def test_a_copy_verifies_against_its_manifest_and_a_damaged_object_is_named(tmp_path):
    src = tmp_path / "src.zarr"
    _ds().to_zarr(src, zarr_format=3)
    dst = tmp_path / "dst.zarr"
    copy(str(src), str(dst), progress=False)
    assert toolkit.verify(str(dst), progress=False).ok

    chunk = next(p for p in (dst / "v" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"damaged")
    report = toolkit.verify(str(dst), progress=False)
    assert not report.ok
    assert any(chunk.relative_to(dst).as_posix() in p for p in report.problems)


def test_a_store_without_a_manifest_is_not_ok_and_the_report_says_what_to_do(tmp_path):
    ds = _ds()
    out = tmp_path / "plain.zarr"
    toolkit.to_zarr(ds, out, progress=False)  # a plain write leaves no manifest
    report = toolkit.verify(str(out), progress=False)
    assert not report.ok
    (problem,) = report.problems
    assert "no checksum manifest" in problem and "toolkit.verify(source, store)" in problem
    assert toolkit.verify(ds, out, progress=False).ok  # the way it names
