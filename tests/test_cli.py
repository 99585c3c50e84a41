"""The command line, run as subprocesses."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from conftest import make_dataset


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def netcdf(tmp_path):
    ds = make_dataset(nt=40)
    path = tmp_path / "src.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    return path, ds


def test_copy_netcdf_to_sharded_zarr_and_inspect(tmp_path, netcdf):
    src, ds = netcdf
    dst = tmp_path / "dst.zarr"
    r = run(
        "copy",
        str(src),
        str(dst),
        "--chunks",
        "time=4",
        "y=6",
        "--shards",
        "time=12",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert "WriteReport" in r.stdout
    back = xr.open_zarr(dst)
    xr.testing.assert_identical(back.compute(), ds)
    assert back.a.encoding["chunks"] == (4, 6, 10)
    assert back.a.encoding["shards"] == (12, 6, 10)
    r = run("inspect", str(dst))
    assert r.returncode == 0, r.stderr
    assert "zarr_format=3" in r.stdout
    assert "4×6×10" in r.stdout and "12×6×10" in r.stdout
    # Copying again refuses to overwrite, leaving the store alone.
    r = run("copy", str(src), str(dst), "--no-progress")
    assert r.returncode == 2 and "mode='w'" in r.stderr


def test_copy_zarr_to_zarr_v2_with_workers(tmp_path):
    ds = make_dataset(nt=30, chunks={"time": 7})
    src = tmp_path / "a.zarr"
    ds.to_zarr(src)
    dst = tmp_path / "b.zarr"
    r = run(
        "copy",
        str(src),
        str(dst),
        "--chunks",
        "time=9",
        "--zarr-format",
        "2",
        "--workers",
        "2",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert "dashboard:" in r.stdout
    xr.testing.assert_identical(xr.open_zarr(dst).compute(), ds.compute())


def test_copy_bad_arguments(tmp_path, netcdf):
    src, _ = netcdf
    r = run("copy", str(src), str(tmp_path / "x.zarr"), "--chunks", "depth=3")
    assert r.returncode == 2 and "depth" in r.stderr
    assert not (tmp_path / "x.zarr").exists()
    r = run("copy", str(src), str(tmp_path / "x.zarr"), "--chunks", "time=0")
    assert r.returncode != 0 and "dim=N" in r.stderr
    r = run("copy", str(src), str(tmp_path / "x.zarr"), "--chunks", "time=4", "--shards", "time=6")
    assert r.returncode == 2 and "multiple" in r.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_inspect_missing_store(tmp_path):
    r = run("inspect", str(tmp_path / "none.zarr"))
    assert r.returncode == 2 and "no Zarr group" in r.stderr


@pytest.mark.cluster
def test_demo_writes_reads_and_verifies(tmp_path):
    out = tmp_path / "demo.zarr"
    r = run("demo", "--size", "20MB", "--out", str(out), "--no-progress", timeout=280)
    assert r.returncode == 0, r.stderr
    assert "dashboard: http://" in r.stdout
    assert "all values equal" in r.stdout
    assert "Traceback" not in r.stderr, r.stderr  # e.g. a cluster that fails to shut down
    back = xr.open_zarr(out)
    assert set(back.data_vars) == {"t2m", "precip", "wind_speed"}
    assert back.t2m.encoding["shards"] == (48, 180, 360)
    assert np.isnan(back.t2m.isel(time=0).values).any()  # the land mask


def test_help():
    r = run("--help")
    assert r.returncode == 0 and "copy" in r.stdout and "demo" in r.stdout


def test_copy_takes_a_throttle(tmp_path):
    from toolkit.cli import _parser, _throttle

    args = _parser().parse_args(["copy", "a.zarr", "s3://b/x.zarr", "--rate", "50"])
    t = _throttle(args)
    assert t.rate == 50 and t.write_rate is None and t.max_inflight == 64
    args = _parser().parse_args(["copy", "a.zarr", str(tmp_path / "y"), "--max-inflight", "8"])
    assert _throttle(args).max_inflight == 8
    assert _throttle(_parser().parse_args(["copy", "a.zarr", "b.zarr"])) is None


def test_stats_prints_a_table_and_refuses_bad_names(tmp_path):
    import toolkit

    ds = make_dataset(nt=30)
    store = str(tmp_path / "s.zarr")
    toolkit.to_zarr(ds, store, progress=False)
    r = run("stats", store, "--stats", "count,mean,max", "--no-progress")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["variable", "count", "mean", "max"]
    row = dict(zip(lines[0].split(), next(ln for ln in lines if ln.startswith("a ")).split()))
    a = ds.a.values.astype("f8")
    assert int(row["count"]) == np.isfinite(a).sum()
    assert float(row["mean"]) == pytest.approx(np.nanmean(a), rel=1e-5)
    kept = run("stats", store, "--dim", "time", "--stats", "std", "--variables", "b",
               "--no-progress")  # fmt: skip
    assert kept.returncode == 0 and "b_std" in kept.stdout and "(y: 12)" in kept.stdout
    bad = run("stats", store, "--stats", "mean,stdev", "--no-progress")
    assert bad.returncode == 2 and "did you mean 'std'" in bad.stderr


def test_bad_arguments_and_unreadable_sources_exit_2_with_nothing_written(tmp_path, netcdf):
    src, _ = netcdf
    dst = tmp_path / "dst.zarr"
    truncated = tmp_path / "cut.nc"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    cases = [
        ("copy", str(src), str(dst), "--chunks", "time=x"),
        ("copy", str(src), str(dst), "--chunks", "time=0"),
        ("copy", str(truncated), str(dst)),
        ("stats", str(src), "--range", "1"),
        ("stats", str(src), "--range", "a,b"),
        ("stats", str(src), "--quantiles", "0.5,x"),
    ]
    for args in cases:
        r = run(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr and "error:" in r.stderr, (args, r.stderr[-2000:])
        assert not dst.exists(), args
