"""toolkit.ingest: many source files into one chunk-aligned store, resumable."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from conftest import snapshot

import toolkit
from toolkit.coordination.records import ResumeLog
from toolkit.errors import IngestError, PlanError
from toolkit.io.stores import resolve_store

NY, NX = 6, 8


def step_file(path: Path, i: int, steps: int = 1, seed: int | None = None) -> None:
    """A netCDF file of ``steps`` hourly steps starting at hour ``i``; values identify it."""
    rng = np.random.default_rng(i if seed is None else seed)
    t = pd.date_range("2001-01-01", periods=steps, freq="h") + pd.Timedelta(hours=i)
    t2m = (i + rng.random((steps, NY, NX))).astype("f4")
    t2m[:, 0, 0] = np.nan
    ds = xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), t2m, {"units": "K", "long_name": "temperature"}),
            "flag": (("time",), np.full(steps, i % 7, "i2")),
            "mask": (("lat", "lon"), np.arange(NY * NX, dtype="i1").reshape(NY, NX)),
        },
        coords={"time": t, "lat": np.linspace(-50, 50, NY), "lon": np.arange(NX) * 45.0},
        attrs={"title": "steps"},
    )
    ds.to_netcdf(path, engine="h5netcdf")


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """520 one-step files (in shuffled name order: the time values set the order)."""
    root = tmp_path_factory.mktemp("sources")
    order = np.random.default_rng(0).permutation(520)
    for name, i in enumerate(order):
        step_file(root / f"s{name:04d}.nc", int(i))
    return root


@pytest.fixture(scope="module")
def want(many: Path) -> xr.Dataset:
    return expected(many)


@pytest.fixture(scope="module")
def some(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, xr.Dataset]:
    """160 one-step files, and what they hold."""
    root = tmp_path_factory.mktemp("some")
    for i in range(160):
        step_file(root / f"s{i:04d}.nc", i)
    return root, expected(root)


def expected(root: Path) -> xr.Dataset:
    return xr.open_mfdataset(
        sorted(root.glob("*.nc")),
        engine="h5netcdf",
        combine="by_coords",
        data_vars="minimal",
        coords="minimal",
        compat="override",
    ).load()


@pytest.mark.slow
def test_520_step_files_into_sharded_48_step_chunks_equal_open_mfdataset(many, want, tmp_path):
    out = tmp_path / "out.zarr"
    report = toolkit.ingest(
        str(many / "*.nc"),
        out,
        concat_dim="time",
        chunks={"time": 48},
        shards={"time": 96},
        progress=False,
    )
    got = xr.open_zarr(out).load()
    xr.testing.assert_identical(got, want)
    assert got.t2m.encoding["chunks"] == (48, NY, NX)
    assert got.t2m.encoding["shards"] == (96, NY, NX)
    # Every task owns whole shards: 520 steps are 6 shards, and no unit was written twice.
    assert report.plan["t2m"].nunits == 6 and report.units == report.plan.nunits
    assert not (out / ".toolkit" / "resume").exists()  # the resume log is gone at the end
    kept = sorted(p.name for p in (out / ".toolkit").iterdir())
    assert kept in (["coord", "manifest"], ["coord", "manifest", "tmp"])
    assert not list((out / ".toolkit").glob("tmp/*"))  # no temporary file is left
    assert toolkit.verify(out).ok  # every object against its checksum


def test_sources_that_disagree_are_refused_before_anything_is_written(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        step_file(src / f"a{i}.nc", i)
    out = tmp_path / "out.zarr"

    def refused(match: str, sources: object = None) -> None:
        with pytest.raises(IngestError, match=match):
            toolkit.ingest(sources or str(src / "*.nc"), out, concat_dim="time", progress=False)
        assert snapshot(out) == {}

    xr.open_dataset(src / "a1.nc").load().rename(t2m="t").to_netcdf(src / "b.nc")
    refused(r"b.nc and .*a0.nc hold different variables \(t, t2m in one only\)")
    os.remove(src / "b.nc")
    ds = xr.open_dataset(src / "a1.nc").load()
    ds.assign_coords(lat=ds.lat + 1).assign_coords(time=ds.time + np.timedelta64(9, "h")).to_netcdf(
        src / "c.nc"
    )
    refused(r"coordinate 'lat' differs between .*; only 'time' may change")
    os.remove(src / "c.nc")
    step_file(src / "dup.nc", 1, seed=5)  # the same hour as a1.nc
    refused(r"overlap along 'time'")
    os.remove(src / "dup.nc")
    ds.assign(t2m=ds.t2m.astype("f8")).assign_coords(
        time=ds.time + np.timedelta64(20, "h")
    ).to_netcdf(src / "d.nc")
    refused(r"'t2m' is float64 in .*d.nc but float32")
    os.remove(src / "d.nc")
    (src / "broken.nc").write_bytes(b"not a netCDF file")
    refused(r"cannot open .*broken.nc", [str(src / "a0.nc"), str(src / "broken.nc")])
    refused(r"no source matches", str(tmp_path / "none*.nc"))
    with pytest.raises(IngestError, match="has no dimension 'step'"):
        toolkit.ingest([str(src / "a0.nc")], out, concat_dim="step", progress=False)
    assert issubclass(IngestError, PlanError) and issubclass(IngestError, ValueError)


def test_a_step_file_spanning_units_and_unsorted_names(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    starts = [0, 5, 6, 17, 30]
    for n, (a, b) in enumerate(zip(starts, [*starts[1:], 41], strict=True)):
        step_file(src / f"z{4 - n}.nc", a, steps=b - a)
    out = tmp_path / "o.zarr"
    toolkit.ingest(str(src / "*.nc"), out, concat_dim="time", chunks={"time": 4}, progress=False)
    xr.testing.assert_identical(xr.open_zarr(out).load(), expected(src))


_KILLABLE = textwrap.dedent(
    """
    import asyncio, pathlib, sys, toolkit
    from zarr.storage import LocalStore
    from toolkit.testing import FaultStore
    markers = pathlib.Path(sys.argv[2]) / ".toolkit" / "resume"
    landed = int(sys.argv[4])

    class Gate(FaultStore):
        # Once `landed` tasks have their markers, chunk writes wait for the kill: the job
        # cannot finish between two looks of the test, however load spaces them (slow
        # writes alone left that to timing: a loaded run finished before its kill).
        async def _call(self, op, key, fn, size=0):
            if op == "set" and "/c/" in key:
                done = [m for m in markers.glob("*/t2m/*") if m.suffix != ".partial"]
                if len(done) >= landed:
                    await asyncio.Event().wait()
            return await super()._call(op, key, fn, size)

    store = Gate(LocalStore(sys.argv[2]), latency=0.1, match=r"/c/")
    toolkit.ingest(sys.argv[1], store, concat_dim="time", chunks={"time": 8},
                   max_task_bytes=int(sys.argv[3]), progress=False)
    print("finished")
    """
)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("landed", [1, 7, 15])
def test_killed_ingest_resumes_to_the_same_store_writing_only_what_is_missing(
    some, tmp_path, landed
):
    src, want = some
    out = tmp_path / "out.zarr"
    per_task = 8 * NY * NX * 4 * 2  # one 8-step unit of t2m per task: 20 tasks to kill among
    args = [sys.executable, "-c", _KILLABLE, str(src / "*.nc"), str(out), str(per_task)]
    args.append(str(landed))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    markers = out / ".toolkit" / "resume"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len([m for m in markers.glob("*/t2m/*") if m.suffix != ".partial"]) >= landed:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # mid-write: some tasks landed, some in flight
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    (log,) = markers.glob("*")
    done = ResumeLog(resolve_store(str(out)), None, log.name).done_tasks()
    already = sum(len(v) for v in done.values())
    assert already >= landed
    with pytest.raises(toolkit.errors.IncompleteStoreError):
        toolkit.open_zarr(out)  # the killed run's record says the store is incomplete
    report = toolkit.ingest(
        str(src / "*.nc"),
        out,
        concat_dim="time",
        chunks={"time": 8},
        max_task_bytes=per_task,
        progress=False,
    )
    assert report.tasks == report.plan.ntasks - already  # only the tasks that had not landed
    xr.testing.assert_identical(toolkit.open_zarr(out).load(), want)  # no record is left
    assert not (out / ".toolkit" / "resume").exists()
    # The manifest holds the checksums of both runs' objects: every chunk, each verified.
    stored = [
        p
        for p in out.rglob("*")
        if p.is_file() and ".toolkit" not in p.parts and ".partial" not in p.name
    ]
    chunks = [p for p in stored if "c" in p.relative_to(out).parts]
    report = toolkit.verify(out)
    assert report.ok and report.summary.startswith(
        f"{len(stored)} objects: {len(chunks)} chunks, {len(stored) - len(chunks)} metadata"
    )


def test_verify_finds_one_flipped_value_and_other_differences(some, tmp_path):
    src, _ = some
    out = tmp_path / "v.zarr"
    toolkit.ingest(str(src / "*.nc"), out, concat_dim="time", chunks={"time": 16}, progress=False)
    ok = toolkit.verify(str(src / "*.nc"), out, concat_dim="time", progress=False)
    assert ok.ok and ok.variables["t2m"] == {"values": 160 * NY * NX, "differ": 0, "first": None}
    arr = zarr.open_group(out)["t2m"]
    block = arr[97:98]
    block[0, 2, 5] += 0.5
    arr[97:98] = block
    bad = toolkit.verify(str(src / "*.nc"), out, concat_dim="time", progress=False)
    assert not bad.ok and bad.variables["t2m"]["differ"] == 1
    assert bad.variables["t2m"]["first"] == [97, 2, 5]
    assert "'t2m': 1 values differ, the first at index [97, 2, 5]" in bad.problems
    assert "DIFFERENT" in repr(bad) and "different" in bad._repr_html_()
    zarr.open_group(out).attrs["title"] = "other"
    assert (
        "the dataset attributes differ"
        in toolkit.verify(str(src / "*.nc"), out, concat_dim="time", progress=False).problems
    )


def test_verify_a_large_copied_store(tmp_path):
    rng = np.random.default_rng(3)
    ds = xr.Dataset({"v": (("t", "y", "x"), rng.random((400, 160, 160), dtype="f4"))})
    ds["v"][5, 5, 5] = np.nan
    src, dst = tmp_path / "src.zarr", tmp_path / "dst.zarr"
    ds.to_zarr(src, encoding={"v": {"chunks": (50, 160, 160)}})
    toolkit.commands.copy(str(src), dst, chunks={"t": 16}, progress=False)
    assert toolkit.verify(str(src), dst, progress=False).ok  # NaN equals NaN
    arr = zarr.open_group(dst)["v"]
    block = arr[333:334]
    block[0, 150, 7] = -1
    arr[333:334] = block
    found = toolkit.verify(str(src), dst, progress=False)
    assert found.variables["v"]["differ"] == 1 and found.variables["v"]["first"] == [333, 150, 7]


def test_cli_ingest_then_verify(some, tmp_path):
    src, _ = some
    out = tmp_path / "cli.zarr"
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=240)
    r = run(
        [
            sys.executable,
            "-m",
            "toolkit.cli",
            "ingest",
            str(src / "*.nc"),
            str(out),
            "--concat-dim",
            "time",
            "--chunks",
            "time=32",
            "--no-progress",
        ]
    )
    assert r.returncode == 0, r.stderr
    assert "tasks / units" in r.stdout
    r = run(
        [
            sys.executable,
            "-m",
            "toolkit.cli",
            "verify",
            str(src / "*.nc"),
            str(out),
            "--concat-dim",
            "time",
            "--no-progress",
        ]
    )
    assert r.returncode == 0 and "equal" in r.stdout, r.stdout + r.stderr
    again = run(
        [
            sys.executable,
            "-m",
            "toolkit.cli",
            "ingest",
            str(src / "*.nc"),
            str(out),
            "--concat-dim",
            "time",
            "--no-progress",
        ]
    )
    assert again.returncode == 2 and "already holds data" in again.stderr


def _pieces(total: int, seed: int = 0, side: int = 40):
    """A stream of random-size pieces (1-5 steps) whose values identify their step."""
    rng = np.random.default_rng(seed)
    t = 0
    while t < total:
        n = min(int(rng.integers(1, 6)), total - t)
        times = pd.date_range("2000-01-01", periods=n, freq="h") + pd.Timedelta(hours=t)
        v = np.arange(t, t + n, dtype="f4")[:, None, None] + rng.random((n, side, side), "f4")
        yield xr.Dataset(
            {"v": (("time", "y", "x"), v, {"units": "1"})},
            coords={"time": times, "y": np.arange(side), "x": np.arange(side)},
        )
        t += n


def test_a_stream_of_random_pieces_lands_in_whole_units(tmp_path):
    out = tmp_path / "s.zarr"
    report = toolkit.ingest(
        _pieces(403),
        out,
        concat_dim="time",
        chunks={"time": 24},
        shards={"time": 48},
        max_writers=3,
        progress=False,
    )
    want = xr.concat(list(_pieces(403)), dim="time")
    got = xr.open_zarr(out).load()
    xr.testing.assert_identical(got, want)
    assert got.v.encoding["chunks"] == (24, 40, 40) and got.v.encoding["shards"] == (48, 40, 40)
    # 403 steps are 8 full shards and one partial: each shard written once, never in pieces.
    assert report.units == 9
    assert len([p for p in (out / "v" / "c").rglob("*") if p.is_file()]) == 9


@pytest.mark.slow
def test_a_streams_memory_stays_bounded_whatever_its_length(tmp_path):
    # Measured in a fresh process: tracemalloc counts every thread's allocations, and
    # the suite's background threads (the shared cluster's scheduler, lease renewers)
    # would be counted too.
    code = textwrap.dedent(f"""
        import sys, tracemalloc
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import toolkit
        from test_ingest import _pieces
        for total in (300, 1500):  # 2 MiB and 9.6 MiB of values
            tracemalloc.start()
            toolkit.ingest(_pieces(total, side=40), {str(tmp_path)!r} + f"/m{{total}}.zarr",
                           concat_dim="time", chunks={{"time": 30}},
                           max_buffer_bytes=2 * 2**20, progress=False)
            print(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    peaks = [int(x) for x in done.stdout.split()]
    assert peaks[1] < 1.5 * peaks[0] + 2**20  # five times the data, about the same memory
    assert peaks[1] < 8 * 2**20


def test_a_piece_that_does_not_fit_raises_and_what_came_before_stays(tmp_path):
    def stream():
        pieces = list(_pieces(100))
        yield from pieces[:20]
        bad = pieces[20]
        yield bad.assign(v=bad.v.astype("f8"))

    out = tmp_path / "bad.zarr"
    before = xr.concat(list(_pieces(100))[:20], dim="time")
    n = before.sizes["time"]
    with pytest.raises(IngestError, match=r"piece 20 of the stream: 'v' is float64") as info:
        toolkit.ingest(
            stream(), out, concat_dim="time", chunks={"time": 10}, max_writers=1, progress=False
        )
    assert f"20 pieces ({n} steps along 'time', {-(-n // 10)} chunks of 10) landed" in str(
        info.value
    )
    # The pieces before the bad one, all of them: whole units and the last, partial one.
    xr.testing.assert_identical(xr.open_zarr(out).load(), before)

    def backwards():
        pieces = list(_pieces(30))
        yield pieces[1]
        yield pieces[0]

    with pytest.raises(IngestError, match="do not follow the previous ones"):
        toolkit.ingest(backwards(), tmp_path / "b.zarr", concat_dim="time", progress=False)


@pytest.mark.timeout(60)
def test_an_async_stream(tmp_path):
    closed: list[str] = []

    async def stream():
        try:
            for piece in _pieces(60):
                yield piece
        finally:
            closed.append("closed")

    out = tmp_path / "a.zarr"
    before = set(threading.enumerate())
    toolkit.ingest(stream(), out, concat_dim="time", chunks={"time": 16}, progress=False)
    xr.testing.assert_identical(xr.open_zarr(out).load(), xr.concat(list(_pieces(60)), dim="time"))
    assert closed == ["closed"] and _new_toolkit_threads(before) == []


def test_the_quick_header_reads_what_h5netcdf_reads(tmp_path, monkeypatch):
    import importlib

    ing = importlib.import_module("toolkit.ingest.sources")
    step_file(tmp_path / "a.nc", 3, steps=2)
    ds = xr.open_dataset(tmp_path / "a.nc").load()
    # A dim without a coordinate variable, a bounds variable along time, a scalar.
    ds.assign(
        extra=(("time", "level"), np.ones((2, 3), "f8")),
        time_bnds=(("time", "nv"), np.zeros((2, 2), "i8")),
        scalar=((), 1.5),
    ).to_netcdf(tmp_path / "b.nc", engine="h5netcdf")
    kw = {"engine": "h5netcdf"}
    for name in ("a.nc", "b.nc"):
        quick = ing._h5py_header(str(tmp_path / name), "time", kw)
        monkeypatch.setattr(ing, "_h5py_header", lambda *a: None)
        slow = ing._header(str(tmp_path / name), "time", kw)
        monkeypatch.undo()
        assert quick is not None
        np.testing.assert_array_equal(quick.values, slow.values)
        assert quick.values.dtype == slow.values.dtype
        assert {k: (tuple(d), s, t) for k, (d, s, t) in quick.variables.items()} == {
            k: (tuple(d), s, t) for k, (d, s, t) in slow.variables.items()
        }
        assert set(quick.coords) == set(slow.coords)
        for k in quick.coords:
            np.testing.assert_array_equal(quick.coords[k], slow.coords[k])


def test_verify_without_sources_checks_the_manifest(some, tmp_path):
    src, _ = some
    out = tmp_path / "m.zarr"
    toolkit.ingest(str(src / "*.nc"), out, concat_dim="time", chunks={"time": 32}, progress=False)
    good = toolkit.verify(out)
    # 160 steps in 32-step chunks, and the array's metadata document
    assert good.ok and good.variables["t2m"]["objects"] == 6
    arr = zarr.open_group(out)["t2m"]
    block = arr[70:71]
    block[0, 1, 1] = -5
    arr[70:71] = block
    (out / "flag" / "c" / "0").unlink()
    bad = toolkit.verify(out)
    assert not bad.ok
    problems = "\n".join(bad.problems)
    assert "t2m/c/2/0/0: checksum differs" in problems and "flag/c/0: missing" in problems
    r = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "verify", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "checksum differs" in r.stdout


# A stream that stops: every exit path closes the source and joins toolkit's threads,
# what landed stays, and the error says how much that was.


def _new_toolkit_threads(before: set[threading.Thread], seconds: float = 5.0) -> list[str]:
    """Threads named toolkit-* started since ``before`` still alive after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [
            t.name
            for t in threading.enumerate()
            if t.name.startswith("toolkit-") and t not in before and t.is_alive()
        ]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def _stopping_stream(
    kind: str, pieces: list[xr.Dataset], last: xr.Dataset | Exception, closed: list[str]
):
    """``pieces``, then ``last`` (a piece, or an exception raised), then nothing for an hour.

    ``closed`` gets an entry when the generator's ``finally`` runs.
    """
    if kind == "sync":

        def sync():
            try:
                yield from pieces
                if isinstance(last, Exception):
                    raise last
                yield last
                time.sleep(3600)  # never reached: the stream is closed at the bad piece
            finally:
                closed.append("closed")

        return sync()

    async def asynchronous():
        try:
            for p in pieces:
                await asyncio.sleep(0)
                yield p
            if isinstance(last, Exception):
                raise last
            yield last
            await asyncio.sleep(3600)  # a read in flight (requested ahead): it is cancelled
        finally:
            closed.append("closed")

    return asynchronous()


def _five(side: int = 4) -> list[xr.Dataset]:
    return list(_pieces(200, seed=7, side=side))[:5]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("max_writers", [1, 8])  # 8: no whole batch before the bad piece
def test_a_refused_piece_closes_the_stream_and_says_what_landed(tmp_path, kind, max_writers):
    five = _five()
    steps = sum(p.sizes["time"] for p in five)
    bad = five[-1].assign_coords(time=five[-1].time + np.timedelta64(1, "D"))
    bad = bad.assign(v=bad.v.astype("f8"))
    closed: list[str] = []
    out = tmp_path / "refused.zarr"
    before = set(threading.enumerate())
    with pytest.raises(IngestError) as info:
        toolkit.ingest(
            _stopping_stream(kind, five, bad, closed),
            out,
            concat_dim="time",
            chunks={"time": 4},
            max_writers=max_writers,
            progress=False,
        )
    message = str(info.value)
    assert f"5 pieces ({steps} steps along 'time', {-(-steps // 4)} chunks of 4) landed" in message
    assert "piece 5 of the stream: 'v' is float64" in message
    assert isinstance(info.value.__cause__, IngestError)  # the refusal, chained
    assert closed == ["closed"]  # the generator's finally ran, before ingest raised
    assert _new_toolkit_threads(before) == []
    # Every accepted piece landed, the partial last unit too: the store opens with them.
    xr.testing.assert_identical(xr.open_zarr(out).load(), xr.concat(five, dim="time"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stream_raising_its_own_error_is_closed_and_says_what_landed(tmp_path, kind):
    five = _five()
    steps = sum(p.sizes["time"] for p in five)
    closed: list[str] = []
    out = tmp_path / "raised.zarr"
    before = set(threading.enumerate())
    with pytest.raises(IngestError) as info:
        toolkit.ingest(
            _stopping_stream(kind, five, OSError("sensor offline"), closed),
            out,
            concat_dim="time",
            chunks={"time": 4},
            max_writers=2,
            progress=False,
        )
    message = str(info.value)
    assert f"5 pieces ({steps} steps along 'time'" in message
    assert "reading piece 5 raised OSError: sensor offline" in message
    assert isinstance(info.value.__cause__, OSError)
    assert closed == ["closed"]
    assert _new_toolkit_threads(before) == []
    xr.testing.assert_identical(xr.open_zarr(out).load(), xr.concat(five, dim="time"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_interrupted_ingest_closes_the_stream_and_notes_what_landed(tmp_path, kind, monkeypatch):
    import importlib

    ing = importlib.import_module("toolkit.ingest.stream")
    check = ing._check_piece

    def interrupted(piece, first, concat_dim, last, n):  # Ctrl-C in the caller, at piece 5
        if n == 5:
            raise KeyboardInterrupt
        return check(piece, first, concat_dim, last, n)

    monkeypatch.setattr(ing, "_check_piece", interrupted)
    five = _five()
    closed: list[str] = []
    out = tmp_path / "interrupted.zarr"
    before = set(threading.enumerate())
    with pytest.raises(KeyboardInterrupt) as info:
        toolkit.ingest(
            _stopping_stream(kind, five, five[0], closed),
            out,
            concat_dim="time",
            chunks={"time": 4},
            max_writers=1,
            progress=False,
        )
    (note,) = info.value.__notes__
    assert closed == ["closed"]
    assert _new_toolkit_threads(before) == []
    # Interrupted: the batches handed to the writer land, the pieces still buffered
    # (18 steps make 4 whole units and 2 more) are not written, and the note says so.
    steps = sum(p.sizes["time"] for p in five)
    landed = steps // 4 * 4
    assert f"({landed} steps along 'time', {landed // 4} chunks of 4) landed in" in note
    assert f"{steps - landed} accepted steps were not written" in note
    xr.testing.assert_identical(
        xr.open_zarr(out).load(), xr.concat(five, dim="time").isel(time=slice(0, landed))
    )


@pytest.mark.timeout(60)
def test_a_failed_append_closes_the_stream_and_says_what_landed(tmp_path, monkeypatch):
    import importlib

    ing = importlib.import_module("toolkit.ingest.stream")
    appends: list[int] = []
    real = ing.append

    def failing(batch, *args, **kwargs):
        appends.append(batch.sizes["time"])
        if len(appends) == 2:
            raise OSError("the store went away")
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(ing, "append", failing)
    pieces = list(_pieces(200, seed=7, side=4))
    closed: list[str] = []
    out = tmp_path / "failed.zarr"
    before = set(threading.enumerate())
    with pytest.raises(toolkit.errors.WriteError) as info:
        toolkit.ingest(
            _stopping_stream("sync", pieces[:-1], pieces[-1], closed),
            out,
            concat_dim="time",
            chunks={"time": 4},
            max_writers=1,
            progress=False,
        )
    message = str(info.value)
    # The first batch (write_dataset) and the first append landed: 8 steps.
    assert "(8 steps along 'time', 2 chunks of 4) landed" in message
    assert "writing steps 8-12 failed: OSError: the store went away" in message
    assert isinstance(info.value.__cause__, OSError)
    assert closed == ["closed"]
    assert _new_toolkit_threads(before) == []
    xr.testing.assert_identical(
        xr.open_zarr(out).load(), xr.concat(pieces, dim="time").isel(time=slice(0, 8))
    )


@pytest.mark.timeout(60)
def test_ctrl_c_while_an_async_stream_waits_cancels_its_read(tmp_path):
    five = _five()
    closed: list[str] = []
    waiting = threading.Event()

    async def stream():
        try:
            for p in five:
                yield p
            waiting.set()
            await asyncio.sleep(3600)  # the next piece never comes
        finally:
            closed.append("closed")

    def blocked_on_the_stream() -> bool:
        """Whether the caller waits for a piece (in a future's ``result``, under ingest)."""
        names = []
        frame = sys._current_frames().get(threading.main_thread().ident)
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        return "result" in names and "_ingest_stream" in names

    def ctrl_c() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the caller waits for piece 5
            if waiting.is_set() and blocked_on_the_stream():
                break
            time.sleep(0.01)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    out = tmp_path / "ctrl-c.zarr"
    before = set(threading.enumerate())
    threading.Thread(target=ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt) as info:
        toolkit.ingest(
            stream(), out, concat_dim="time", chunks={"time": 4}, max_writers=1, progress=False
        )
    (note,) = info.value.__notes__
    # 16 of the 18 steps (4 whole units) were handed to the writer and landed; 2 were buffered.
    assert (
        "4 pieces and the first 1 of the 3 steps of piece 4 (16 steps along 'time', 4 chunks of 4)"
        " landed" in note
    )
    assert "2 accepted steps were not written" in note
    assert closed == ["closed"]  # its read was cancelled, on its own loop
    assert _new_toolkit_threads(before) == []
    xr.testing.assert_identical(
        xr.open_zarr(out).load(), xr.concat(five, dim="time").isel(time=slice(0, 16))
    )


def test_a_resumed_ingest_refuses_a_source_file_rewritten_since(tmp_path):
    from test_commands import _DiesAfter
    from zarr.storage import LocalStore

    src = tmp_path / "src"
    src.mkdir()
    for i in range(16):
        step_file(src / f"s{i:04d}.nc", i)
    out = tmp_path / "out.zarr"
    stopping = _DiesAfter(LocalStore(out), 1, "t2m")
    with pytest.raises(toolkit.errors.WriteError):
        toolkit.ingest(
            str(src / "*.nc"),
            stopping,
            concat_dim="time",
            chunks={"time": 4},
            max_task_bytes=4 * NY * NX * 4 * 2,
            progress=False,
        )
    step_file(src / "s0003.nc", 3, seed=99)  # the same step, other values: same size
    before = snapshot(out)
    with pytest.raises(toolkit.errors.SourceChangedError) as e:
        toolkit.ingest(
            str(src / "*.nc"),
            out,
            concat_dim="time",
            chunks={"time": 4},
            max_task_bytes=4 * NY * NX * 4 * 2,
            progress=False,
        )
    assert e.value.changed == [f"{src / 's0003.nc'} (changed)"]
    assert snapshot(out) == before
    toolkit.ingest(
        str(src / "*.nc"), out, concat_dim="time", chunks={"time": 4}, mode="w", progress=False
    )
    xr.testing.assert_identical(toolkit.open_zarr(out).load(), expected(src))
