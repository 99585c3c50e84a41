"""A failed write leaves an exact record; readers refuse an incomplete store; a rerun repairs it."""

from __future__ import annotations

import pickle
import threading
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.storage import LocalStore

import toolkit
from toolkit.coordination.records import clear_records, read_records
from toolkit.errors import IncompleteStoreError, WriteError
from toolkit.testing import FaultStore

NOFAIL = toolkit.Throttle(max_retries=0, adaptive=False)


def _dataset(scale: float = 1.0) -> xr.Dataset:
    v = np.arange(400 * 30, dtype="f8").reshape(400, 30) * scale
    return xr.Dataset({"a": (("x", "y"), v)}).chunk({"x": 40})


def _failed_rewrite(path: str, seed: int) -> WriteError:
    toolkit.to_zarr(_dataset(), path, encoding={"a": {"chunks": (8, 30)}}, progress=False)
    faulty = FaultStore(LocalStore(path), error_prob=0.05, seed=seed, match=r"^a/c/")
    with pytest.raises(WriteError) as err:
        toolkit.to_zarr(
            _dataset(2.0),
            faulty,
            mode="r+",
            region={"x": slice(0, 400)},
            throttle=NOFAIL,
            progress=False,
        )
    return err.value


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_record_names_exactly_the_missing_units(tmp_path, seed):
    path = str(tmp_path / "s.zarr")
    err = _failed_rewrite(path, seed)
    rec = err.record["a"]
    assert rec["units"] == 50 and rec["written"] == 50 - len(rec["missing"])
    assert rec["missing"] and "injected" in rec["errors"][0]
    assert "missing" in str(err) and "No request of this write is still running" in str(err)
    values = zarr.open_array(path, path="a", mode="r")[:]
    old, new = _dataset().a.values, _dataset(2.0).a.values
    missing = {tuple(u) for u in rec["missing"]}
    for i in range(50):
        rows = slice(8 * i, 8 * (i + 1))
        expect = old if (i, 0) in missing else new
        np.testing.assert_array_equal(values[rows], expect[rows])
    # The same record is in the store.
    (stored,) = read_records(LocalStore(path))
    assert stored["state"] == "failed" and stored["units"]["a"]["missing"] == rec["missing"]


def test_record_survives_pickling(tmp_path):
    err = _failed_rewrite(str(tmp_path / "s.zarr"), 0)
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, WriteError) and again.record == err.record


def test_readers_refuse_an_incomplete_store_and_a_rerun_repairs_it(tmp_path):
    path = str(tmp_path / "s.zarr")
    _failed_rewrite(path, 1)
    with pytest.raises(IncompleteStoreError, match="units of 'a' missing") as err:
        toolkit.open_zarr(path)
    assert isinstance(err.value, ValueError) and err.value.records
    with pytest.warns(UserWarning, match="incomplete"):
        toolkit.open_zarr(path, incomplete="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        toolkit.open_zarr(path, incomplete="ignore")
    # Rerunning the failed write on a healthy store lands everything and clears the record.
    toolkit.to_zarr(_dataset(2.0), path, mode="r+", region={"x": slice(0, 400)}, progress=False)
    assert read_records(LocalStore(path)) == []
    back = toolkit.open_zarr(path).compute()
    np.testing.assert_array_equal(back.a.values, _dataset(2.0).a.values)


def test_a_write_that_never_ran_leaves_a_running_record(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_LEASE_TTL", "3")  # the claim's watcher looks every second
    path = str(tmp_path / "s.zarr")
    before = set(threading.enumerate())
    toolkit.to_zarr(_dataset(), path, progress=False, compute=False)  # never computed
    (rec,) = read_records(LocalStore(path))
    assert rec["state"] == "writing" and rec["variables"]["a"]["units"] > 0
    with pytest.raises(IncompleteStoreError, match="has not finished"):
        toolkit.open_zarr(path)
    assert clear_records(LocalStore(path)) == 1
    toolkit.open_zarr(path)
    # With the record gone, the creation claim's watcher lets go (no thread outlives the test).
    for t in set(threading.enumerate()) - before:
        if t.name == "toolkit-create-claim":
            t.join(timeout=10)
            assert not t.is_alive()


def test_success_leaves_no_trace(tmp_path):
    path = tmp_path / "s.zarr"
    toolkit.to_zarr(_dataset(), str(path), progress=False)
    # The creation lease stays, released (the next creator replaces it), and the
    # write's manifest fragment: the sizes and checksums of what it wrote.
    left = sorted(str(p.relative_to(path)) for p in (path / ".toolkit").rglob("*") if p.is_file())
    assert left[0] == ".toolkit/coord/leases/create.json" and len(left) == 2
    assert left[1].startswith(".toolkit/manifest/")
    assert '"released"' in (path / left[0]).read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(zarr.open_group(str(path), mode="r").array_keys()) == ["a"]


@pytest.mark.cluster
def test_record_is_exact_when_tasks_fail_in_worker_processes(tmp_path, cluster_client):
    """The gate, the abort broadcast and the record work across worker processes."""
    path = str(tmp_path / "s.zarr")
    toolkit.to_zarr(_dataset(), path, encoding={"a": {"chunks": (8, 30)}}, progress=False)
    faulty = FaultStore(LocalStore(path), error_prob=0.1, seed=4, match=r"^a/c/")
    with pytest.raises(WriteError) as err:
        toolkit.to_zarr(
            _dataset(2.0).chunk({"x": 8}),  # 50 one-unit tasks over the workers
            faulty,
            mode="r+",
            region={"x": slice(0, 400)},
            throttle=NOFAIL,
            progress=False,
        )
    rec = err.value.record["a"]
    missing = {tuple(u) for u in rec["missing"]}
    assert missing and rec["written"] == 50 - len(missing)
    values = zarr.open_array(path, path="a", mode="r")[:]
    old, new = _dataset().a.values, _dataset(2.0).a.values
    for i in range(50):
        rows = slice(8 * i, 8 * (i + 1))
        np.testing.assert_array_equal(values[rows], (old if (i, 0) in missing else new)[rows])
