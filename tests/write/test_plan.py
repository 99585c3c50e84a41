"""Write plans: hypothesis against brute force, reprs, and plan properties."""

from __future__ import annotations

import math
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st
from zarr.storage import LocalStore, MemoryStore

import toolkit
from toolkit.errors import UnsafePlanError


def split(n: int, parts: list[int]) -> tuple[int, ...]:
    """Turn random part sizes into a chunking of n."""
    out, left = [], n
    for p in parts:
        if left <= 0:
            break
        out.append(min(p, left))
        left -= out[-1]
    if left:
        out.append(left)
    return tuple(out)


@st.composite
def plan_cases(draw):
    ndim = draw(st.integers(1, 3))
    shape = [draw(st.integers(1, 24)) for _ in range(ndim)]
    chunks = [draw(st.integers(1, 8)) for _ in range(ndim)]
    sharded = draw(st.booleans())
    shards = [c * draw(st.integers(1, 3)) for c in chunks] if sharded else None
    kind = draw(st.sampled_from(["new", "region", "append"]))
    extra = [draw(st.integers(0, 10)) for _ in range(ndim)]
    dask_chunks = [
        split(n, draw(st.lists(st.integers(1, 9), min_size=1, max_size=8))) for n in shape
    ]
    return shape, chunks, shards, kind, extra, dask_chunks


def _var(shape, dask_chunks, fill=1.0):
    dims = [f"d{i}" for i in range(len(shape))]
    data = da.full(shape, fill, dtype="f4", chunks=dask_chunks)
    return xr.Dataset({"v": (dims, data)})


@given(plan_cases())
def test_plan_owns_every_unit_once_and_covers_every_element(case):
    shape, chunks, shards, kind, extra, dask_chunks = case
    store = MemoryStore()
    enc = {"v": {"chunks": tuple(chunks), **({"shards": tuple(shards)} if shards else {})}}
    if kind == "new":
        plan = toolkit.plan_write(_var(shape, dask_chunks), store, encoding=enc)
        offset = [0] * len(shape)
        array_shape = shape
    elif kind == "region":
        array_shape = [n + e for n, e in zip(shape, extra)]
        toolkit.to_zarr(_var(array_shape, array_shape, 0.0), store, encoding=enc, progress=False)
        offset = [e // 2 for e in extra]
        region = {f"d{i}": slice(o, o + n) for i, (o, n) in enumerate(zip(offset, shape))}
        plan = toolkit.plan_write(_var(shape, dask_chunks), store, region=region)
    else:
        n0 = extra[0] + 1
        first = [n0, *shape[1:]]
        toolkit.to_zarr(_var(first, first, 0.0), store, encoding=enc, progress=False)
        plan = toolkit.plan_write(_var(shape, dask_chunks), store, append_dim="d0")
        offset = [n0] + [0] * (len(shape) - 1)
        array_shape = [n0 + shape[0], *shape[1:]]
    plan.validate()
    vp = plan["v"]
    unit = shards or chunks
    assert vp.write_unit == tuple(unit)
    assert vp.offset == tuple(offset) and vp.array_shape == tuple(array_shape)

    covered = np.zeros(shape, dtype=int)
    owner: dict[tuple[int, ...], int] = {}
    tasks = list(vp.tasks())
    for t, task in enumerate(tasks):
        local = tuple(slice(s.start - o, s.stop - o) for s, o in zip(task.region, offset))
        covered[local] += 1
        brute = set(np.ndindex(*[s.stop - s.start for s in task.region]))
        units = {
            tuple((s.start + i) // u for s, i, u in zip(task.region, idx, unit)) for idx in brute
        }
        assert units == {
            tuple(r[i] for r, i in zip(task.units, idx))
            for idx in np.ndindex(*[len(r) for r in task.units])
        }
        for u in units:
            assert u not in owner, f"unit {u} owned by tasks {owner[u]} and {t}"
            owner[u] = t
    assert (covered == 1).all()
    assert vp.nunits == len(owner) == sum(t.nunits for t in tasks)
    # A unit needs a merge when the data covers only part of its valid extent.
    written = np.zeros(array_shape, bool)
    written[tuple(slice(o, o + n) for o, n in zip(offset, shape))] = True
    partial = 0
    for u in owner:
        sl = tuple(slice(i * s, min((i + 1) * s, n)) for i, s, n in zip(u, unit, array_shape))
        partial += not written[sl].all()
    assert vp.npartial == partial == sum(t.npartial for t in tasks)
    assert vp.requests == vp.nunits + vp.npartial
    assert vp.ntasks == len(tasks)
    assert vp.nbytes == math.prod(shape) * 4
    # The projection bounds every task's block plus the units it must read to merge.
    assert vp.peak_memory >= max(t.nbytes + t.npartial * vp.unit_nbytes for t in tasks)


def test_aligned_dask_chunks_are_kept():
    ds = xr.Dataset({"v": (("t", "x"), da.zeros((100, 40), chunks=(20, 40), dtype="f8"))})
    plan = toolkit.plan_write(ds, MemoryStore(), encoding={"v": {"chunks": (10, 40)}})
    assert plan["v"].task_chunks == ((20,) * 5, (40,))


def test_misaligned_chunks_snap_to_nearest_shard_boundary():
    ds = xr.Dataset({"v": (("t",), da.zeros(100, chunks=7, dtype="f8"))})
    plan = toolkit.plan_write(ds, MemoryStore(), encoding={"v": {"chunks": (5,), "shards": (10,)}})
    assert plan["v"].task_chunks == ((10,) * 10,)
    assert plan["v"].source_chunks == ((7,) * 14 + (2,),)


def test_memory_target_splits_at_unit_boundaries():
    ds = xr.Dataset({"v": (("t", "x"), da.zeros((400, 1000), chunks=(400, 1000), dtype="f8"))})
    plan = toolkit.plan_write(
        ds, MemoryStore(), encoding={"v": {"chunks": (10, 100)}}, max_task_bytes=100 * 1000 * 8
    )
    vp = plan["v"]
    assert vp.max_task_nbytes <= 100 * 1000 * 8
    assert all(c % 10 == 0 for c in vp.task_chunks[0])
    assert vp.ntasks > 1


def test_unit_over_memory_target_fails_validation_naming_the_fix():
    ds = xr.Dataset({"v": (("t",), da.zeros(1000, chunks=500, dtype="f8"))})
    plan = toolkit.plan_write(
        ds, MemoryStore(), encoding={"v": {"chunks": (500,)}}, max_task_bytes=1000
    )
    with pytest.raises(UnsafePlanError, match=r"smaller chunks.*max_task_bytes=4000"):
        plan.validate()


def test_plan_is_frozen_and_renders():
    ds = xr.Dataset(
        {"v": (("t",), da.zeros(100, chunks=7, dtype="f8"))}, coords={"t": np.arange(100)}
    )
    plan = toolkit.plan_write(ds, MemoryStore(), encoding={"v": {"chunks": (10,)}})
    with pytest.raises(AttributeError):
        plan.mode = "w"  # type: ignore[misc]
    text = repr(plan)
    assert "WritePlan" in text and "v" in text and "tasks" in text
    assert "written with the metadata: t" in text
    html = plan._repr_html_()
    assert html.startswith("<div>") and "<table" in html and "<td" in html


def test_plan_does_not_touch_the_source_encoding():
    ds = xr.Dataset({"v": (("t",), da.zeros(10, chunks=5, dtype="f8"))})
    ds["v"].encoding.update(chunks=(3,), preferred_chunks={"t": 3})
    toolkit.plan_write(ds, MemoryStore())
    assert ds["v"].encoding["chunks"] == (3,)


def test_plan_of_100k_chunks_is_fast():
    import time

    ds = xr.Dataset({"v": (("t", "x"), da.zeros((100_000, 10), chunks=(1, 10), dtype="f4"))})
    t0 = time.perf_counter()
    plan = toolkit.plan_write(ds, MemoryStore(), encoding={"v": {"chunks": (1, 10)}})
    plan.validate()
    assert plan.ntasks == 100_000
    # Generous bound: only catches accidental quadratic work.
    assert time.perf_counter() - t0 < 30


def test_html_repr_draws_tasks_units_and_dask_chunks():
    ds = xr.Dataset({"v": (("t", "x"), da.zeros((100, 60), chunks=(7, 25), dtype="f4"))})
    plan = toolkit.plan_write(
        ds, MemoryStore(), encoding={"v": {"chunks": (5, 30), "shards": (10, 60)}}
    )
    html = plan._repr_html_()
    assert html.count("<svg") == 1
    vp = plan["v"]
    task_edges = sum(len(c) - 1 for c in vp.task_chunks)
    dask_edges = sum(len(c) - 1 for c in vp.source_chunks)
    assert html.count("stroke='#111'") == task_edges == 9
    assert html.count("stroke='#999'") == dask_edges
    assert html.count("stroke='#1f77b4'") == 9  # shard edges: 9 along t, none along x


def test_a_local_target_prints_as_the_path_given(tmp_path, monkeypatch):
    """Issue 30: a relative path printed as ``file://x.zarr`` in plans and reports."""
    monkeypatch.chdir(tmp_path)
    ds = xr.Dataset({"v": (("t",), da.zeros(20, chunks=10, dtype="f8"))})
    plan = toolkit.plan_write(ds, "x.zarr")
    assert repr(plan).startswith("WritePlan → x.zarr (mode='w-', zarr_format=3): 2 tasks")
    assert "file://" not in repr(plan) + plan._repr_html_()
    # What write ids and rate budgets are keyed by stays as it was: only the printing changed.
    assert plan.target == "file://x.zarr"
    report = toolkit.execute(plan, progress=False)
    assert report.target == "file://x.zarr"
    assert repr(report).splitlines()[3].split() == ["target", "x.zarr"]
    assert "file://" not in repr(report) + report._repr_html_()
    with pytest.raises(toolkit.errors.ExistingStoreError, match=r"^x\.zarr already holds data"):
        toolkit.plan_write(ds, "x.zarr")
    # An absolute path prints absolute, and so does a store given as an object.
    for target in (tmp_path / "y.zarr", LocalStore(tmp_path / "z.zarr")):
        text = repr(toolkit.plan_write(ds, target))
        where = tmp_path / ("y.zarr" if isinstance(target, Path) else "z.zarr")
        assert text.startswith(f"WritePlan → {where} (mode='w-'"), text


def test_counts_print_whole_with_thousands_separators(tmp_path):
    """Issue 30: counts are integers with separators (1,200), sizes stay in KiB/MiB."""
    ds = xr.Dataset({"v": (("t",), da.zeros(12_000, chunks=6_000, dtype="f8"))})
    plan = toolkit.plan_write(
        ds, MemoryStore(), encoding={"v": {"chunks": (10,)}}, max_task_bytes=80
    )
    assert plan.ntasks == plan.nunits == 1_200
    text = repr(plan)
    assert ": 1,200 tasks, 1,200 write units, 93.75 kiB, ~1,202 requests," in text
    row = text.splitlines()[3].split()
    assert row[:4] == ["v", "12000", "float64", "10"] and row[5:8] == ["2", "1,200", "1,200"]
    report = toolkit.execute(plan, progress=False)
    assert "1,200 / 1,200" in repr(report)
    assert f"PUT {report.io.sets:,}" in repr(report) and report.io.sets > 1_000


# -- an append's plan placed at the rows the commit log hands it -------------------


@pytest.mark.parametrize("shards", [False, True])
@pytest.mark.parametrize("start", [0, 5, 7, 13, 40, 47])
@pytest.mark.parametrize("chunk", [1, 4, 13, None])
def test_an_appends_plan_at_its_rows_is_the_region_plan_of_those_rows(
    tmp_path, shards, start, chunk
):
    """``at_rows`` moves only the task grid: the planner itself, asked afresh, agrees."""
    from toolkit.write.manyjobs import rows_along

    store = LocalStore(tmp_path / "s.zarr")
    n, nx = 60, 3
    stored = xr.Dataset(
        {
            "v": (("time", "x"), np.arange(n * nx, dtype="f4").reshape(n, nx)),
            "w": ("time", np.arange(n)),
        },
        coords={"time": np.arange(n), "x": np.arange(nx)},
    )
    enc = {
        "v": {"chunks": (7, nx), **({"shards": (14, nx)} if shards else {})},
        "w": {"chunks": (5,)},
    }
    toolkit.to_zarr(stored, store, encoding=enc, progress=False)
    new = stored.isel(time=slice(0, 13)).assign_coords(time=np.arange(100, 113))
    if chunk is not None:
        new = new.chunk({"time": chunk})
    plan = toolkit.plan_write(new, store, mode="a", append_dim="time")
    rows = rows_along(new, "time")
    placed = plan.at_rows(rows, start, store, n)
    fresh = toolkit.plan_write(rows, store, mode="r+", region={"time": slice(start, start + 13)})
    assert (placed.mode, placed.append_dim, placed.region) == ("r+", None, fresh.region)
    assert placed.variables == fresh.variables
    assert placed.eager == fresh.eager == ("time",)
    assert list(placed.tasks()) == list(fresh.tasks())
    assert placed.metadata_requests == fresh.metadata_requests
    placed.validate()


def test_at_rows_takes_an_appends_plan_and_rows_that_fit(tmp_path):
    store = LocalStore(tmp_path / "s.zarr")
    ds = xr.Dataset({"v": ("time", np.arange(10.0))}, coords={"time": np.arange(10)})
    toolkit.to_zarr(ds, store, progress=False)
    rows = ds.drop_indexes("time")
    with pytest.raises(ValueError, match="appends to nothing"):
        toolkit.plan_write(ds, store, mode="r+", region={"time": slice(0, 10)}).at_rows(
            rows, 0, store, 10
        )
    plan = toolkit.plan_write(
        ds.assign_coords(time=ds.time + 10), store, mode="a", append_dim="time"
    )
    with pytest.raises(ValueError, match="do not fit"):
        plan.at_rows(rows, 5, store, 10)
    with pytest.raises(ValueError, match="along 'time' only"):
        plan.at_rows(rows.assign(other=("y", [1])), 0, store, 10)
