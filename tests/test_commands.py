"""toolkit.commands.copy: a resumed copy sees any change of its source."""

from __future__ import annotations

import os
from pathlib import Path

import dask
import fsspec
import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import snapshot
from zarr.storage import LocalStore

import toolkit
from toolkit.errors import SourceChangedError, WriteError
from toolkit.io.stores import changed_objects, source_objects
from toolkit.io.wrappers import InterceptStore

TASK = 8 * 40 * 40 * 4  # one source chunk of v (two 4-step units) per task: 8 tasks


class _DiesAfter(InterceptStore):
    """Chunk writes of ``var`` fail after the first ``n``: a copy stopped part-way."""

    def __init__(self, store, n: int, var: str = "v") -> None:
        super().__init__(store)
        self.left, self.var = n, var

    async def _call(self, op, key, fn, size=0):
        if op == "set" and key.startswith(f"{self.var}/c/"):
            self.left -= 1
            if self.left < 0:
                raise RuntimeError("stopped")
        return await fn()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    ds = xr.Dataset({"v": (("t", "y", "x"), rng.random((64, 40, 40), dtype="f4"))})
    ds.to_zarr(tmp_path / "src.zarr", encoding={"v": {"chunks": (8, 40, 40)}})
    return tmp_path / "src.zarr"


def _stopped_copy(src: Path, dst: Path) -> None:
    """A copy that stops after one whole task (2 units) and one unit of the next.

    One task at a time: run in parallel, three tasks could each write one unit and
    then all fail, leaving no task landed (2 of 30 runs), and a resume that had
    nothing to skip.
    """
    with pytest.raises(WriteError), dask.config.set(scheduler="synchronous"):
        toolkit.commands.copy(
            str(src),
            _DiesAfter(LocalStore(dst), 3),
            chunks={"t": 4},
            max_task_bytes=TASK,
            progress=False,
        )


def test_a_resumed_copy_refuses_a_source_changed_in_place(source, tmp_path):
    dst = tmp_path / "dst.zarr"
    _stopped_copy(source, dst)
    # Plain zarr rewrites two chunks in place: same keys, same sizes on disk perhaps.
    zarr.open_array(source / "v", mode="r+")[0:16] = -1
    before = snapshot(dst)
    with pytest.raises(SourceChangedError) as e:
        toolkit.commands.copy(
            str(source), dst, chunks={"t": 4}, max_task_bytes=TASK, progress=False
        )
    assert snapshot(dst) == before  # refused before anything was written
    assert e.value.changed == [f"{source}/v/c/0/0/0 (changed)", f"{source}/v/c/1/0/0 (changed)"]
    assert "2 objects" in str(e.value) and "mode='w'" in str(e.value)
    with pytest.raises(toolkit.errors.IncompleteStoreError):
        toolkit.open_zarr(dst)  # the stopped copy still says it is incomplete
    # Starting over copies the new values; the target then verifies against the source.
    toolkit.commands.copy(
        str(source), dst, chunks={"t": 4}, max_task_bytes=TASK, progress=False, mode="w"
    )
    got = toolkit.open_zarr(dst).load()
    xr.testing.assert_identical(got, xr.open_zarr(source).load())
    assert float(got.v[0:16].max()) == -1
    assert toolkit.verify(str(source), dst, progress=False).ok


def test_a_resumed_copy_of_an_unchanged_source_writes_only_what_is_missing(source, tmp_path):
    dst = tmp_path / "dst.zarr"
    _stopped_copy(source, dst)
    report = toolkit.commands.copy(
        str(source), dst, chunks={"t": 4}, max_task_bytes=TASK, progress=False
    )
    # The target's units (4 steps) split the source's chunks (8): the copy is a rechunk,
    # one task per source chunk; the tasks the stopped run landed are not run again.
    assert report.plan.ntasks == 8
    assert report.tasks < report.plan.ntasks
    xr.testing.assert_identical(toolkit.open_zarr(dst).load(), xr.open_zarr(source).load())


@pytest.mark.parametrize("change", ["added", "removed", "metadata"])
def test_a_resumed_copy_sees_objects_added_removed_and_metadata(source, tmp_path, change):
    dst = tmp_path / "dst.zarr"
    _stopped_copy(source, dst)
    if change == "added":
        zarr.open_group(source, mode="r+").create_array("w", shape=(3,), dtype="i1")[:] = 1
    elif change == "removed":
        os.remove(source / "v" / "c" / "7" / "0" / "0")
    else:
        zarr.open_group(source, mode="r+")["v"].attrs["units"] = "K"
    with pytest.raises(SourceChangedError) as e:
        toolkit.commands.copy(
            str(source), dst, chunks={"t": 4}, max_task_bytes=TASK, progress=False
        )
    want = {
        "added": f"{source}/w/zarr.json (added)",
        "removed": f"{source}/v/c/7/0/0 (removed)",
        "metadata": f"{source}/v/zarr.json (changed)",
    }[change]
    assert want in e.value.changed


def test_source_listing_covers_every_object_but_toolkit_state(source):
    (source / ".toolkit").mkdir()
    (source / ".toolkit" / "x.json").write_text("{}")
    found = source_objects([str(source)])
    on_disk = {str(p) for p in source.rglob("*") if p.is_file() and ".toolkit" not in p.parts}
    assert set(found) == on_disk
    size, mtime = found[f"{source}/v/zarr.json"].split(":")
    st = (source / "v" / "zarr.json").stat()
    assert (int(size), int(mtime)) == (st.st_size, st.st_mtime_ns)
    assert changed_objects({"a": "1:1", "b": "1:1"}, {"b": "1:2", "c": "1:1"}) == [
        "a (removed)",
        "b (changed)",
        "c (added)",
    ]


def test_source_listing_of_an_object_store_uses_etags(s3, monkeypatch):
    # A user configures s3fs for sources as fsspec does: fsspec.config.conf.
    opts = s3.storage_options()
    monkeypatch.setitem(fsspec.config.conf, "s3", {**opts, "skip_instance_cache": True})
    fs = fsspec.filesystem("s3", **opts, skip_instance_cache=True)
    ds = xr.Dataset({"v": (("t",), np.arange(8.0))})
    ds.to_zarr(fs.get_mapper("data/etags.zarr"), encoding={"v": {"chunks": (4,)}}, mode="w")
    before = source_objects(["s3://data/etags.zarr"])
    assert "s3://data/etags.zarr/v/c/0" in before and "s3://data/etags.zarr/zarr.json" in before
    fs.pipe("data/etags.zarr/v/c/0", fs.cat("data/etags.zarr/v/c/1"))  # same size, new bytes
    after = source_objects(["s3://data/etags.zarr"])
    assert changed_objects(before, after) == ["s3://data/etags.zarr/v/c/0 (changed)"]


def test_the_modules_first_name_still_imports_its_functions():
    """``toolkit.jobs`` was this module's name: code that imports from it keeps working."""
    from toolkit.jobs import copy, demo, demo_dataset, inspect, parse_size

    assert (copy, demo, demo_dataset, inspect, parse_size) == (
        toolkit.commands.copy,
        toolkit.commands.demo,
        toolkit.commands.demo_dataset,
        toolkit.commands.inspect,
        toolkit.commands.parse_size,
    )
    assert toolkit.jobs.copy is toolkit.commands.copy
