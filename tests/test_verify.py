"""toolkit.verify: a written store against its source, or against its checksum manifest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

import toolkit
from toolkit.commands import copy


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
    ds.to_zarr(out)  # written by xarray alone: no manifest
    report = toolkit.verify(str(out), progress=False)
    assert not report.ok and report.status == "unchecked" and not report.problems
    assert "no manifest" in report.summary and "toolkit.verify(source, store)" in report.summary
    assert "CANNOT CHECK" in repr(report)
    assert toolkit.verify(ds, out, progress=False).ok  # the way it names


# -- a manifest of every object (each test below failed before it) ------------------------


def _store(tmp_path, **enc):
    ds = xr.Dataset(
        {"t2m": (("time", "x"), np.arange(48.0).reshape(12, 4))},
        coords={"time": np.arange(12), "x": np.arange(4)},
    ).chunk({"time": 5})
    out = tmp_path / "s.zarr"
    toolkit.to_zarr(
        ds, str(out), encoding={"t2m": {"chunks": (5, 4)}, "time": {"chunks": (5,)}}, progress=False
    )
    return ds, out


def test_every_write_keeps_the_manifest_true_and_verify_says_what_it_covered(tmp_path):
    ds, out = _store(tmp_path)
    first = toolkit.verify(str(out), progress=False)
    assert first.ok and first.summary.startswith("11 objects: 7 chunks, 4 metadata documents")
    toolkit.append(ds.assign_coords(time=ds.time + 12), str(out), "time", progress=False)
    region = (ds.isel(time=slice(3, 9)) * 0 + 5).drop_vars(["time", "x"])
    toolkit.to_zarr(region, str(out), region={"time": slice(3, 9)}, progress=False)
    report = toolkit.verify(str(out), progress=False)
    assert report.ok, report.problems  # a region write no longer makes it "differ"
    # and the appended chunks are checked, not skipped
    assert report.summary.startswith("15 objects: 11 chunks")
    assert "objects" in repr(report) and "values" not in repr(report).split("\n")[2]


@pytest.mark.parametrize(
    ("what", "damage"),
    [
        ("a coordinate chunk", lambda out: _flip(out / "time" / "c" / "0")),
        ("the group's metadata", lambda out: (out / "zarr.json").write_text("garbage")),
        ("an array's metadata", lambda out: (out / "t2m" / "zarr.json").write_text("{")),
        ("an array's shape", lambda out: _reshape(out / "t2m" / "zarr.json")),
        ("a missing chunk", lambda out: (out / "t2m" / "c" / "1" / "0").unlink()),
        ("an object nobody wrote", lambda out: (out / "t2m" / "stray.bin").write_bytes(b"x")),
    ],
)
def test_verify_names_damage_anywhere_in_the_store(tmp_path, what, damage):
    _, out = _store(tmp_path)
    damage(out)
    report = toolkit.verify(str(out), progress=False)
    assert not report.ok, what
    assert len(report.problems) >= 1


def _flip(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def _reshape(path):
    import json

    doc = json.loads(path.read_text())
    doc["shape"][0] += 5
    path.write_text(json.dumps(doc))


def test_verify_of_a_store_that_is_not_there_writes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no store at"):
        toolkit.verify(str(tmp_path / "missing.zarr"), progress=False)
    assert not (tmp_path / "missing.zarr").exists()


def test_a_store_with_groups_verifies_against_every_groups_manifest(tmp_path):
    """Writes under group= keep their group's manifest: ``verify(store)`` reads them all.

    It said "different" for a legitimate write of a group into an existing store (its
    objects "not on record", the root's consolidated document changed); damage inside
    a group is still named.
    """
    ds = xr.Dataset({"v": (("t", "x"), np.arange(40.0).reshape(8, 5))}, coords={"t": np.arange(8)})
    store = tmp_path / "s.zarr"
    toolkit.to_zarr(ds, store, progress=False)
    toolkit.to_zarr(ds * 2, store, group="g", mode="w", progress=False)
    toolkit.to_zarr(ds.assign_coords(t=ds.t + 8), store, group="g", append_dim="t", progress=False)
    toolkit.to_zarr(ds, store, group="g/h", mode="w", progress=False)
    report = toolkit.verify(store)
    assert report.ok and report.checked, report
    chunk = store / "g" / "v" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))
    report = toolkit.verify(store)
    assert not report.ok and "g/v/c/1/0" in str(report)


def test_a_manifest_of_blake2b_checksums_still_verifies_and_finds_damage(tmp_path):
    """Checksums on record say their algorithm: those written before XXH3 (bare BLAKE2b-128
    hex) are checked as BLAKE2b, so a store written then verifies, and damage is found."""
    import hashlib
    import json

    from toolkit.io.digests import PREFIX

    out = tmp_path / "old.zarr"
    toolkit.to_zarr(_ds(), out, progress=False)
    fragments = list((out / ".toolkit" / "manifest").glob("*.json"))
    assert fragments
    for f in fragments:  # the store as a write before XXH3 left it
        doc = json.loads(f.read_text())
        for key, (size, digest) in doc["objects"].items():
            assert digest.startswith(PREFIX)
            old = hashlib.blake2b((out / key).read_bytes(), digest_size=16).hexdigest()
            doc["objects"][key] = [size, old]
        doc["algorithm"] = "blake2b-128"
        f.write_text(json.dumps(doc))
    assert toolkit.verify(str(out), progress=False).ok
    chunk = next(p for p in (out / "v" / "c").rglob("*") if p.is_file())
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one flipped byte
    report = toolkit.verify(str(out), progress=False)
    assert not report.ok
    assert any(chunk.relative_to(out).as_posix() in p for p in report.problems)
