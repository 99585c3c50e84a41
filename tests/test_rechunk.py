"""toolkit.rechunk: any chunking to any other, every value read back, memory bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from conftest import cluster_of, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.storage import LocalStore

import toolkit
from toolkit.errors import ExistingStoreError, PlanError, RechunkError
from toolkit.io.wrappers import InterceptStore


def _maps(
    path: Path | str, nt: int = 24, ny: int = 12, nx: int = 10, fmt: int = 3, **kw: object
) -> xr.Dataset:
    """A small dataset stored one map per chunk, with CF encodings worth keeping."""
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {
            "t2m": (("time", "y", "x"), rng.random((nt, ny, nx), dtype="f4")),
            "p": (("time", "y", "x"), np.round(rng.random((nt, ny, nx)) * 100, 2)),
            "label": (("time",), np.array([f"s{i}" for i in range(nt)])),
        },
        coords={
            "time": pd.date_range("2000-01-01", periods=nt, freq="6h"),
            "y": np.arange(ny, dtype="f8"),
            "x": np.arange(nx, dtype="f8"),
            "area": (("y", "x"), rng.random((ny, nx))),
        },
        attrs={"title": "maps"},
    )
    ds["p"][0, 0, 0] = np.nan
    ds.t2m.attrs["units"] = "K"
    toolkit.to_zarr(
        ds,
        path,
        zarr_format=fmt,
        progress=False,
        **kw,
        encoding={
            "t2m": {"chunks": (1, ny, nx)},
            "p": {
                "chunks": (1, ny, nx),
                "dtype": "int16",
                "scale_factor": 0.01,
                "_FillValue": -32768,
            },
            "area": {"chunks": (ny // 2 or 1, nx)},
        },
    )
    return ds


def _same(src: Path | str, dst: Path | str) -> None:
    want = xr.open_zarr(src).load()
    got = toolkit.open_zarr(dst).load()
    xr.testing.assert_identical(got, want)
    for name in want.data_vars:  # stored the same way, not only equal once decoded
        assert got[name].encoding.get("dtype") == want[name].encoding.get("dtype"), name


def _chunks(store: Path | str, name: str) -> tuple[int, ...]:
    arr = zarr.open_group(store, mode="r")[name]
    return tuple(arr.shards or arr.chunks)


class _Reads(InterceptStore):
    """Counts the reads of each chunk (metadata documents left out)."""

    def __init__(self, store, counts=None) -> None:
        super().__init__(store)
        self.counts = counts if counts is not None else {}

    def _with_store(self, store):
        return type(self)(store, self.counts)

    async def _call(self, op, key, fn, size=0):
        name = key.rsplit("/", 1)[-1]
        if op == "get" and not name.startswith((".z", "zarr.json")):
            self.counts[key] = self.counts.get(key, 0) + 1
        return await fn()


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("fmt", [2, 3])
def test_maps_to_series_through_an_intermediate_copy(tmp_path, fmt):
    src, dst = tmp_path / "maps.zarr", tmp_path / "series.zarr"
    _maps(src, fmt=fmt)
    reads = _Reads(LocalStore(src, read_only=True))
    plan = toolkit.plan_rechunk(reads, dst, {"time": 24, "y": 3, "x": 5}, max_mem="8KiB", workers=2)
    assert plan.stages == 2 and plan.temp == f"file://{dst}.rechunk-tmp"
    assert not dst.exists()  # planning wrote nothing
    report = toolkit.execute_rechunk(plan, progress=False)
    _same(src, dst)
    assert _chunks(dst, "t2m") == (24, 3, 5) and _chunks(dst, "p") == (24, 3, 5)
    assert not Path(f"{dst}.rechunk-tmp").exists()  # the intermediate copy is gone
    assert len(report.stages) == 2
    # Every chunk of the rechunked variables read once: 24 maps of each.
    for name in ("t2m", "p"):
        got = {k: n for k, n in reads.counts.items() if k.startswith(f"{name}/")}
        assert len(got) == 24 and set(got.values()) == {1}, got
    assert toolkit.verify(str(src), dst, progress=False).ok


def test_one_stage_when_blocks_aligned_with_both_grids_fit(tmp_path):
    src, dst = tmp_path / "maps.zarr", tmp_path / "out.zarr"
    _maps(src)
    plan = toolkit.plan_rechunk(src, dst, {"time": 4}, max_mem="1MiB", workers=2)
    assert plan.stages == 1 and plan.temp is None
    toolkit.execute_rechunk(plan, progress=False)
    _same(src, dst)
    assert _chunks(dst, "t2m") == (4, 12, 10)


def test_sharded_target_and_whole_dimension(tmp_path):
    src, dst = tmp_path / "maps.zarr", tmp_path / "sharded.zarr"
    _maps(src)
    toolkit.rechunk(
        src,
        dst,
        {"time": -1, "y": 3, "x": 5},
        shards={"y": 6, "x": 10},
        max_mem="16KiB",
        progress=False,
        workers=2,
    )
    _same(src, dst)
    arr = zarr.open_group(dst, mode="r")["t2m"]
    assert arr.chunks == (24, 3, 5) and arr.shards == (24, 6, 10)


@settings(max_examples=40)
@given(
    shape=st.lists(st.integers(1, 13), min_size=1, max_size=3),
    data=st.data(),
)
def test_any_chunking_to_any_other_gives_numpy_values(shape, data):
    src_chunks = [data.draw(st.integers(1, n)) for n in shape]
    dst_chunks = [data.draw(st.integers(1, n)) for n in shape]
    shard = data.draw(st.booleans())
    max_mem = data.draw(st.integers(1, 64)) * 64
    dims = [f"d{i}" for i in range(len(shape))]
    values = np.arange(int(np.prod(shape)), dtype="i4").reshape(shape)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = f"{tmp}/src.zarr", f"{tmp}/dst.zarr"
        xr.Dataset({"v": (dims, values)}).to_zarr(src, encoding={"v": {"chunks": src_chunks}})
        shards = {d: c * 2 for d, c in zip(dims, dst_chunks, strict=True)} if shard else None
        try:
            report = toolkit.rechunk(
                src,
                dst,
                dict(zip(dims, dst_chunks, strict=True)),
                shards=shards,
                max_mem=max_mem,
                progress=False,
                workers=2,
            )
        except RechunkError as e:
            assert "more than max_mem" in str(e)
            assert not os.path.exists(dst)
            return
        got = zarr.open_group(dst, mode="r")["v"]
        np.testing.assert_array_equal(got[...], values)
        unit = [
            min(c * 2, -(-n // c) * c) if shard else c
            for c, n in zip(dst_chunks, shape, strict=True)
        ]
        assert list(got.shards or got.chunks) == unit
        assert report.plan.peak_task_bytes <= max_mem
        assert not os.path.exists(f"{dst}.rechunk-tmp")


@pytest.mark.parametrize(
    "dtype", ["bool", "i1", "u2", "i8", "f2", "f8", "c8", "M8[ns]", "m8[s]", "U5", "S3"]
)
def test_every_dtype_through_two_stages(tmp_path, dtype):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 100, (12, 8, 6))
    if dtype.startswith("M8"):
        values = np.datetime64("2000-01-01", "ns") + raw.astype("m8[h]")
    else:
        values = raw.astype(dtype)
    ds = xr.Dataset({"v": (("t", "y", "x"), values)})
    src, dst = tmp_path / "src.zarr", tmp_path / "dst.zarr"
    ds.to_zarr(src, encoding={"v": {"chunks": (1, 8, 6)}}, zarr_format=3)
    try:
        report = toolkit.rechunk(
            src, dst, {"t": 12, "y": 2, "x": 3}, max_mem=2048, progress=False, workers=2
        )
    except RechunkError as e:  # a unit of wide strings can be over the tiny limit
        assert "more than max_mem" in str(e)
        report = toolkit.rechunk(
            src, dst, {"t": 12, "y": 2, "x": 3}, max_mem="64KiB", progress=False, workers=2
        )
    xr.testing.assert_identical(toolkit.open_zarr(dst).load(), xr.open_zarr(src).load())
    assert report.plan.variables[0].chunks == (12, 2, 3)


def test_copy_with_chunks_that_cut_across_the_source_is_a_rechunk(tmp_path, monkeypatch):
    src, dst = tmp_path / "maps.zarr", tmp_path / "copy.zarr"
    _maps(src)
    calls = []
    real = toolkit.commands.rechunk
    monkeypatch.setattr(
        toolkit.commands, "rechunk", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    report = toolkit.commands.copy(
        str(src), dst, chunks={"time": 24, "y": 6, "x": 5}, max_task_bytes=4096, progress=False
    )
    _same(src, dst)
    assert _chunks(dst, "t2m") == (24, 6, 5)
    assert {v.name: v.chunks for v in report.plan.variables}["t2m"] == (24, 6, 5)  # as planned
    assert len(calls) == 1  # through the rechunk, not the copy's own reads
    assert not Path(f"{dst}.rechunk-tmp").exists()


@pytest.mark.timeout(180)
def test_on_an_object_store_with_each_client(s3, client, tmp_path):
    """Source, intermediate copy and target on S3 (moto's server), through the budget."""
    local = tmp_path / "maps.zarr"
    _maps(local)
    opts = {**s3.storage_options(), "client": client}
    src, dst = f"s3://data/rechunk-{client}/maps.zarr", f"s3://data/rechunk-{client}/series.zarr"
    _maps(src, storage_options=opts, mode="w")
    report = toolkit.rechunk(
        src,
        dst,
        {"time": 24, "y": 3, "x": 5},
        max_mem="8KiB",
        mode="w",
        storage_options=opts,
        progress=False,
        workers=2,
    )
    assert report.plan.stages == 2 and report.plan.temp == f"{dst}.rechunk-tmp"
    assert report.stages[0].io.sets > 0 and report.stages[1].io.gets > 0  # through the stack
    xr.testing.assert_identical(
        toolkit.open_zarr(dst, storage_options=opts).load(), xr.open_zarr(local).load()
    )
    fs = fsspec.filesystem("s3", **s3.storage_options(), skip_instance_cache=True)
    assert not fs.exists(f"{dst.removeprefix('s3://')}.rechunk-tmp")  # the copy is gone


def test_into_an_icechunk_session_one_commit(tmp_path):
    icechunk = pytest.importorskip("icechunk")
    src = tmp_path / "maps.zarr"
    _maps(src)
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "ice")))
    session = repo.writable_session("main")
    report = toolkit.rechunk(
        src,
        session.store,
        {"time": 24, "y": 3, "x": 5},
        max_mem="8KiB",
        temp_store=tmp_path / "tmp.zarr",
        progress=False,
    )
    assert report.plan.stages == 2
    session.commit("rechunked")
    got = xr.open_zarr(repo.readonly_session("main").store, consolidated=False).load()
    xr.testing.assert_identical(got, xr.open_zarr(src).load())
    assert next(s.message for s in repo.ancestry(branch="main")) == "rechunked"
    assert not (tmp_path / "tmp.zarr").exists() or not any((tmp_path / "tmp.zarr").iterdir())


# --------------------------------------------------------------------------- refusals


def test_refusals_before_anything_is_written(tmp_path):
    src, dst = tmp_path / "maps.zarr", tmp_path / "out.zarr"
    _maps(src)
    with pytest.raises(
        RechunkError,
        match=r"'p' \(time=24, y=12, x=10, int16\): one target "
        r"unit \(24, 12, 10\) needs 11,520 bytes.*raise "
        r"max_mem",
    ):
        toolkit.rechunk(src, dst, {"time": 24}, max_mem="10KiB", progress=False)
    with pytest.raises(RechunkError, match=r"one source chunk"):
        toolkit.rechunk(src, dst, {"time": 1, "y": 1}, max_mem=500, progress=False)
    with pytest.raises(PlanError, match=r"'level', which the source does not have"):
        toolkit.rechunk(src, dst, {"level": 3}, progress=False)
    with pytest.raises(PlanError, match=r"positive int or -1"):
        toolkit.rechunk(src, dst, {"time": 0}, progress=False)
    with pytest.raises(PlanError, match=r"max_mem='lots' is not a size"):
        toolkit.rechunk(src, dst, {"time": 4}, max_mem="lots", progress=False)
    assert not dst.exists() and not Path(f"{dst}.rechunk-tmp").exists()
    # An existing target: refused without mode="w", byte-identical.
    _maps(dst)
    before = snapshot(zarr.storage.LocalStore(dst))
    with pytest.raises(ExistingStoreError, match="mode='w'"):
        toolkit.rechunk(src, dst, {"time": 4}, progress=False)
    assert snapshot(zarr.storage.LocalStore(dst)) == before
    toolkit.rechunk(src, dst, {"time": 4}, mode="w", progress=False)
    _same(src, dst)


def test_a_temporary_store_holding_something_else_is_refused(tmp_path):
    src, dst, tmp = tmp_path / "maps.zarr", tmp_path / "out.zarr", tmp_path / "tmp.zarr"
    _maps(src)
    _maps(tmp)
    with pytest.raises(RechunkError, match="not this rechunk's copy"):
        toolkit.rechunk(
            src, dst, {"time": 24, "y": 3}, max_mem="8KiB", temp_store=tmp, progress=False
        )
    assert not dst.exists()
    with pytest.raises(RechunkError, match="give temp_store="):
        toolkit.rechunk(
            src, zarr.storage.MemoryStore(), {"time": 24, "y": 3}, max_mem="8KiB", progress=False
        )


def test_the_plan_shows_blocks_stages_and_memory(tmp_path):
    src = tmp_path / "maps.zarr"
    _maps(src)
    plan = toolkit.plan_rechunk(src, tmp_path / "o.zarr", {"time": 24, "y": 3}, max_mem="8KiB")
    text, page = str(plan), plan._repr_html_()
    for want in ("2 stage(s)", "intermediate", "task peak", "t2m", "two stages"):
        assert want in text
    assert "<table" in page and "t2m" in page


# --------------------------------------------------------------------------- kills

_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import zarr.storage
    import toolkit
    src, dst, prefix, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    seen = [0]
    real = zarr.storage.LocalStore.set
    async def set(self, key, value):
        await real(self, key, value)
        # A task's marker: its units all landed (.toolkit/resume/<write>/<var>/<task>).
        if str(self.root).endswith(prefix) and key.startswith(".toolkit/resume/") and (
            key.count("/") == 4
        ):
            seen[0] += 1
            if seen[0] == after:
                os.kill(os.getpid(), signal.SIGKILL)
    zarr.storage.LocalStore.set = set
    toolkit.rechunk(src, dst, {"time": 24, "y": 3, "x": 5}, max_mem="8KiB", progress=False,
                    workers=2)
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stage", ["intermediate", "target"])
def test_a_killed_rechunk_resumes_and_rewrites_only_what_is_missing(tmp_path, stage):
    src, dst = tmp_path / "maps.zarr", tmp_path / "series.zarr"
    _maps(src)
    # Killed right after the second task of the stage said it landed.
    prefix, after = (".rechunk-tmp" if stage == "intermediate" else "series.zarr"), "2"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(dst), prefix, after],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    if stage == "target":
        with pytest.raises(toolkit.errors.IncompleteStoreError):
            toolkit.open_zarr(dst)  # a killed rechunk never reads as data
    report = toolkit.rechunk(
        src, dst, {"time": 24, "y": 3, "x": 5}, max_mem="8KiB", progress=False, workers=2
    )
    _same(src, dst)
    assert not Path(f"{dst}.rechunk-tmp").exists()
    if stage == "target":
        assert report.skipped_first_stage  # the intermediate copy was whole: used as it was
        last = report.stages[-1]
        assert last.tasks < last.plan.ntasks  # the tasks that landed were not run again
    else:
        assert report.stages[0].tasks < report.stages[0].plan.ntasks


# --------------------------------------------------------------------------- memory and scale


_MEASURED = textwrap.dedent(
    """
    import json, sys, threading, time
    import psutil
    import toolkit
    src, dst, max_mem = sys.argv[1], sys.argv[2], sys.argv[3]
    me = psutil.Process()
    base = me.memory_info().rss
    peak = [base]
    done = threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.01)
    threading.Thread(target=sample, daemon=True).start()
    plan = toolkit.plan_rechunk(src, dst, {"time": 400, "y": 36, "x": 36}, max_mem=max_mem,
                                workers=2)
    toolkit.execute_rechunk(plan, progress=False)
    done.set()
    print(json.dumps({"base": base, "peak": peak[0], "stages": plan.stages,
                      "task_peak": plan.peak_task_bytes}))
    """
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_memory_stays_under_max_mem_per_thread(tmp_path):
    """400 maps of 360 x 360 float32 (207 MB) to series, max_mem 32 MiB, 2 threads."""
    src, dst = tmp_path / "maps.zarr", tmp_path / "series.zarr"
    g = zarr.open_group(src, mode="w")
    arr = g.create_array(
        "v",
        shape=(400, 360, 360),
        chunks=(1, 360, 360),
        dtype="f4",
        dimension_names=("time", "y", "x"),
    )
    rng = np.random.default_rng(1)
    for i in range(0, 400, 50):
        arr[i : i + 50] = rng.random((50, 360, 360), dtype="f4")
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURED, str(src), str(dst), "32MiB"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["stages"] == 2 and got["task_peak"] <= 32 * 2**20
    grown = (got["peak"] - got["base"]) / 2**20
    # Two threads, each task under max_mem; 64 MiB for zarr's and dask's own buffers.
    assert grown < 2 * 32 + 64, f"the process grew by {grown:.0f} MiB"
    np.testing.assert_array_equal(
        zarr.open_group(dst, mode="r")["v"][:, :40, :40], arr[:, :40, :40]
    )


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_on_a_cluster_of_worker_processes(tmp_path):
    from distributed import Client

    src, dst = tmp_path / "maps.zarr", tmp_path / "series.zarr"
    _maps(src, nt=48)
    with cluster_of(2, 1) as cluster, Client(cluster):
        report = toolkit.rechunk(
            src, dst, {"time": 48, "y": 3, "x": 5}, max_mem="16KiB", progress=False, workers=2
        )
    assert report.plan.stages == 2
    _same(src, dst)


def test_the_command_line(tmp_path, capsys):
    from toolkit.cli import main

    src, dst = tmp_path / "maps.zarr", tmp_path / "series.zarr"
    _maps(src)
    argv = [str(src), str(dst), "--chunks", "time=24,y=3,x=5", "--max-mem", "8KiB", "--no-progress"]
    assert main(["rechunk", *argv, "--plan"]) == 0
    assert "2 stage(s)" in capsys.readouterr().out and not dst.exists()
    assert main(["rechunk", *argv]) == 0
    assert "rechunked" in capsys.readouterr().out
    _same(src, dst)
    assert main(["rechunk", *argv]) == 2  # exists: refused, named (a usage error)
    assert "--overwrite" in capsys.readouterr().err
    assert main(["rechunk", *argv, "--overwrite"]) == 0
    _same(src, dst)
