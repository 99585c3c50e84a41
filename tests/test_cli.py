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
    assert r.returncode == 2 and "pass --overwrite" in r.stderr and "mode=" not in r.stderr


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
    assert int(row["count"].replace(",", "")) == np.isfinite(a).sum()
    assert float(row["mean"]) == pytest.approx(np.nanmean(a), rel=1e-5)
    kept = run(
        "stats", store, "--dim", "time", "--stats", "std", "--variables", "b", "--no-progress"
    )
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


# -- the first hour (issue 30): each test below failed before its fix ----------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_process():
    """moto's S3 server started as users start one: its own process, an http:// endpoint."""
    import os
    import signal
    import socket
    import time

    pytest.importorskip("moto.server")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "moto did not start"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _env(**changes: str) -> dict[str, str]:
    """This environment without any AWS settings or profile, plus ``changes``."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TOOLKIT_CLIENT"))}
    env.update(HOME="/nonexistent-home", AWS_EC2_METADATA_DISABLED="true", **changes)
    return env


def _bucket(endpoint: str, name: str) -> str:
    """A new bucket named after ``name`` (unique: the server lives for the whole module)."""
    import uuid

    import botocore.session

    name = f"{name}-{uuid.uuid4().hex[:8]}"

    s3 = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
    )
    s3.create_bucket(Bucket=name)
    return name


def run_env(env: dict[str, str], *args: str, timeout: float = 240):
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize("client", ["obstore", "s3fs"])
def test_an_http_endpoint_in_the_environment_is_enough(moto_process, netcdf, client):
    """Finding 1: AWS_ENDPOINT_URL=http://... failed with obstore's 'builder error'."""
    src, _ = netcdf
    bucket = _bucket(moto_process, f"env-{client}")
    env = _env(
        AWS_ENDPOINT_URL=moto_process,
        AWS_ACCESS_KEY_ID="k",
        AWS_SECRET_ACCESS_KEY="s",
        AWS_REGION="us-east-1",
        TOOLKIT_CLIENT=client,
    )
    url = f"s3://{bucket}/era5.zarr"
    r = run_env(env, "copy", str(src), url, "--chunks", "time=8", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_env(env, "verify", str(src), url, "--no-progress")
    assert r.returncode == 0 and "equal" in r.stdout, r.stdout + r.stderr
    r = run_env(env, "verify", url, "--no-progress")  # against its manifest
    assert r.returncode == 0 and "equal" in r.stdout, r.stdout + r.stderr
    r = run_env(env, "inspect", url)
    assert r.returncode == 0 and "8×12×10" in r.stdout, r.stderr


def test_store_flags_reach_both_stores_of_a_copy(moto_process, tmp_path):
    """Finding 1: no way to pass an endpoint, region or options from the command line."""
    ds = make_dataset(nt=20, chunks={"time": 5})
    bucket = _bucket(moto_process, "flags")
    env = _env(AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    flags = ["--endpoint-url", moto_process, "--region", "us-east-1", "--client", "s3fs"]
    local = tmp_path / "a.zarr"
    ds.to_zarr(local)
    first, second = f"s3://{bucket}/a.zarr", f"s3://{bucket}/b.zarr"
    r = run_env(env, "copy", str(local), first, *flags, "--no-progress")
    assert r.returncode == 0, r.stderr
    # Both stores remote: the source is read with the same flags.
    r = run_env(env, "copy", first, second, *flags, "-o", "client=obstore", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_env(env, "verify", str(local), second, *flags, "--no-progress")
    assert r.returncode == 0 and "equal" in r.stdout, r.stdout + r.stderr


def test_the_python_api_reads_the_endpoint_from_the_environment(moto_process, monkeypatch):
    import toolkit

    bucket = _bucket(moto_process, "api-env")
    for k, v in _env(
        AWS_ENDPOINT_URL=moto_process,
        AWS_ACCESS_KEY_ID="k",
        AWS_SECRET_ACCESS_KEY="s",
        AWS_REGION="us-east-1",
    ).items():
        monkeypatch.setenv(k, v)
    ds = make_dataset(nt=6)
    toolkit.to_zarr(ds, f"s3://{bucket}/x.zarr", progress=False)
    xr.testing.assert_identical(toolkit.open_zarr(f"s3://{bucket}/x.zarr").compute(), ds)


@pytest.mark.parametrize("client", ["obstore", "s3fs"])
def test_missing_credentials_are_one_line_exit_2(moto_process, client):
    """Finding 2: 48 lines with a Rust Debug dump, exit 1, advice a CLI user cannot take."""
    env = _env(AWS_ENDPOINT_URL=moto_process)
    bucket = _bucket(moto_process, f"nocreds-{client}")
    r = run_env(env, "inspect", f"s3://{bucket}/x.zarr", "--client", client)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("toolkit inspect: error:") and "Debug" not in line
    assert "--profile" in line and "--anon" in line and "AWS_ACCESS_KEY_ID" in line
    r = run_env(env, "inspect", f"s3://{bucket}/x.zarr", "--client", client, "--traceback")
    assert r.returncode == 2 and "Traceback" in r.stderr  # the whole story, when asked
    r = run_env(env, "verify", f"s3://{bucket}/x.zarr", "--client", client)
    assert r.returncode == 2 and "--profile" in r.stderr, r.stderr


@pytest.mark.parametrize("client", ["obstore", "s3fs"])
def test_client_errors_reach_python_as_toolkit_errors(moto_process, monkeypatch, client):
    """Finding 2: obstore.exceptions.UnauthenticatedError reached users unwrapped."""
    import toolkit
    from toolkit.errors import StoreAccessError

    for k, v in _env(AWS_ENDPOINT_URL=moto_process).items():
        monkeypatch.setenv(k, v)
    bucket = _bucket(moto_process, f"wrapped-{client}")
    with pytest.raises(StoreAccessError) as caught:
        toolkit.to_zarr(
            make_dataset(nt=4),
            f"s3://{bucket}/x.zarr",
            progress=False,
            storage_options={"client": client},
        )
    assert isinstance(caught.value, PermissionError)
    assert type(caught.value.__cause__).__module__.split(".")[0] in ("obstore", "botocore")


def test_a_missing_extra_is_named(tmp_path, netcdf):
    """Finding 2: a plain install reading netCDF said 'ModuleNotFoundError: h5py'."""
    src, _ = netcdf
    code = (
        "import sys; sys.modules.update(h5netcdf=None, h5py=None, netCDF4=None)\n"
        "from toolkit.cli import main\n"
        f"sys.exit(main(['copy', {str(src)!r}, {str(tmp_path / 'x.zarr')!r}, '--no-progress']))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert 'pip install "zarr-toolkit[netcdf]"' in line
    assert not (tmp_path / "x.zarr").exists()


def test_verify_never_writes_and_tells_missing_from_unchecked(tmp_path, moto_process):
    """Findings 3 and 4: verify made missing.zarr/, and 'no manifest' was exit 1 as damage."""
    missing = tmp_path / "missing.zarr"
    r = run("verify", str(missing))
    assert r.returncode == 2 and "no store at" in r.stderr
    r = run("verify", str(tmp_path / "src.zarr"), str(missing))
    assert r.returncode == 2 and "no store at" in r.stderr
    assert not missing.exists() and not (tmp_path / "src.zarr").exists()
    env = _env(AWS_ENDPOINT_URL=moto_process, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    bucket = _bucket(moto_process, "verify-missing")
    r = run_env(env, "verify", f"s3://{bucket}/missing.zarr")
    assert r.returncode == 2 and "no store at" in r.stderr, r.stderr
    plain = tmp_path / "plain.zarr"
    make_dataset(nt=4).to_zarr(plain)  # xarray's: no manifest
    before = sorted(p.relative_to(plain) for p in plain.rglob("*"))
    r = run("verify", str(plain))
    assert r.returncode == 3 and "CANNOT CHECK" in r.stdout and "no manifest" in r.stdout
    assert sorted(p.relative_to(plain) for p in plain.rglob("*")) == before


def test_cli_words_not_python_words(tmp_path, netcdf):
    """Finding 8: flags swallowing paths, unquoted globs, raw h5py errors, --version, groups."""
    src, ds = netcdf
    dst = tmp_path / "x.zarr"
    # --chunks before the paths: the paths stay positional; the old spelling still works.
    r = run("copy", "--chunks", "time=8", "y=6", str(src), str(dst), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert xr.open_zarr(dst).a.encoding["chunks"] == (8, 6, 10)
    # An unquoted glob (the shell gave ingest many files).
    parts = []
    for i in range(3):
        p = tmp_path / f"part{i}.nc"
        ds.isel(time=slice(10 * i, 10 * i + 10)).to_netcdf(p, engine="h5netcdf")
        parts.append(str(p))
    r = run("ingest", *parts, str(tmp_path / "i.zarr"), "--concat-dim", "time", "--no-progress")
    assert r.returncode == 0, r.stderr
    # verify with many files and no --concat-dim: what to do, not h5py's error.
    r = run("verify", str(tmp_path / "part*.nc"), str(tmp_path / "i.zarr"))
    assert r.returncode == 2 and "--concat-dim" in r.stderr and "h5py" not in r.stderr
    r = run("verify", *parts, str(tmp_path / "i.zarr"))
    assert r.returncode == 2 and "--concat-dim" in r.stderr
    r = run("verify", *parts, str(tmp_path / "i.zarr"), "--concat-dim", "time", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    # The values column counts values.
    assert f"{30 * 12 * 10:,}" in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("toolkit ") and "0." in r.stdout
    r = run("inspect", str(dst), "--group", "nope")
    assert r.returncode == 2 and "has no group 'nope'" in r.stderr


def test_ctrl_c_says_what_landed_and_the_rerun_resumes(tmp_path):
    """Finding 8: Ctrl-C printed 25 lines and 'Task was destroyed'; the rerun said nothing."""
    import signal
    import time

    from toolkit.coordination.records import _MARKER

    src = tmp_path / "src.zarr"
    make_dataset(nt=4000, ny=40, nx=40, chunks={"time": 40}).to_zarr(src)
    dst = tmp_path / "dst.zarr"
    # Tasks of 1 MiB at 50 requests/s: seconds of writes, so that the interrupt lands
    # after some tasks landed and before the last.
    copy = ["copy", str(src), str(dst), "--chunks", "time=40", "--max-task-mib", "1"]
    argv = [sys.executable, "-m", "toolkit.cli", *copy, "--rate", "50", "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = dst / ".toolkit" / "resume"
        deadline = time.monotonic() + 120
        while not any(_MARKER.fullmatch(p.name) for p in log.rglob("*")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    (line,) = err.strip().splitlines()
    assert "interrupted" in line and "run the same command again to resume" in line
    r = run(*copy, timeout=240)  # unthrottled, with progress
    assert r.returncode == 0, r.stderr
    assert "resuming: " in r.stderr and "already written" in r.stderr
    assert "tasks were written by an earlier run" in r.stdout  # the report says it too
    xr.testing.assert_identical(xr.open_zarr(dst).compute(), xr.open_zarr(src).compute())


def test_demo_says_where_its_store_is(tmp_path):
    """Finding 9: the demo wrote a temporary store and deleted it without a word."""
    r = run("demo", "--size", "2MB", "--workers", "0", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "temporary store" in r.stdout and "removed the temporary store" in r.stdout


def test_the_distribution_is_ours_and_has_an_all_extra():
    """Finding 10: 'toolkit' on the package index is someone else's project."""
    import tomllib
    from importlib.metadata import metadata
    from pathlib import Path

    from toolkit.errors import DISTRIBUTION

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION != "toolkit"
    assert "all" in project["optional-dependencies"]
    assert metadata(DISTRIBUTION)["Name"] == DISTRIBUTION


def test_the_cli_reference_lists_every_exit_status_and_store_flag():
    from pathlib import Path

    from toolkit.cli import EXIT_CODES, _parser

    page = (Path(__file__).parents[1] / "docs" / "reference" / "cli.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} |" in page
    help_text = _parser().format_help()
    assert all(f"{code} " in help_text for code in EXIT_CODES)  # and --help says them
    for flag in ("--endpoint-url", "--region", "--anon", "--profile", "--client", "-o KEY"):
        assert flag in page


def test_ingest_names_the_missing_extra_too(tmp_path, netcdf):
    src, _ = netcdf
    code = (
        "import sys; sys.modules.update(h5netcdf=None, h5py=None, netCDF4=None)\n"
        "import toolkit\n"
        "from toolkit.errors import MissingExtraError\n"
        "try:\n"
        f"    toolkit.ingest({str(src)!r}, {str(tmp_path / 'i.zarr')!r}, concat_dim='time')\n"
        "except MissingExtraError as e:\n"
        "    print(e.extra, isinstance(e, ImportError))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["netcdf", "True"], r.stderr
    assert not (tmp_path / "i.zarr").exists()


def test_stats_per_group_from_the_command_line(tmp_path):
    """Issue 31: toolkit stats STORE --groupby time.month (and --resample time=1D)."""
    import toolkit

    ds = make_dataset(nt=70, chunks={"time": 16})
    store = tmp_path / "s.zarr"
    toolkit.to_zarr(ds, store, progress=False)
    r = run(
        "stats", str(store), "--groupby", "time.month", "--stats", "count,mean", "--no-progress"
    )
    assert r.returncode == 0, r.stderr
    want = ds.a.groupby("time.month").mean(dim=...)
    head, _, *lines = r.stdout.strip().splitlines()
    assert head.split() == ["variable", "month", "count", "mean"]  # a table, a row per group
    rows = {(row.split()[0], int(row.split()[1])): float(row.split()[3]) for row in lines}
    for month, value in zip(want.month.values, want.values, strict=True):
        assert abs(rows["a", int(month)] - value) <= 1e-5 * abs(value)
    r = run("stats", str(store), "--resample", "time=1W", "--variables", "c", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "time" in r.stdout
    r = run("stats", str(store), "--resample", "time", "--no-progress")
    assert r.returncode == 2 and "DIM=FREQ" in r.stderr


def test_overwrite_replaces_a_zarr_store_only(tmp_path, netcdf):
    """A hostile first hour: `copy x.nc . --overwrite` in a home directory deleted its files."""
    src, _ = netcdf
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    for target in (home, tmp_path / "home"):
        r = run("copy", str(src), str(target), "--overwrite", "--no-progress")
        assert r.returncode == 2 and "not a Zarr store" in r.stderr and "thesis.tex" in r.stderr
    r = run("demo", "--size", "1MB", "--workers", "0", "--out", str(home), "--no-progress")
    assert r.returncode == 2 and "not a Zarr store" in r.stderr
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
    assert (home / "thesis.tex").read_text() == "years of work"
    # A Zarr store (even one a killed write left half written) is replaced as before.
    dst = tmp_path / "x.zarr"
    assert run("copy", str(src), str(dst), "--no-progress").returncode == 0
    r = run("copy", str(src), str(dst), "--overwrite", "--no-progress")
    assert r.returncode == 0, r.stderr


def test_what_a_hostile_first_hour_found(tmp_path, netcdf, moto_process):
    """One line and the documented status for what a hostile first-hour run tripped on."""
    src, _ = netcdf
    dst = str(tmp_path / "x.zarr")
    cases = [
        (("copy", str(src), dst, "--bogus"), "unrecognized arguments"),  # argparse: one line
        (("rechunk", str(src), dst), "--chunks"),
        (("copy", str(src), str(src), str(src), dst), "toolkit ingest"),  # an unquoted glob
        (("copy", str(tmp_path / "missing.nc"), dst), "no source at"),
        (("copy", str(src), dst, "--chunks", "time=24,time=12"), "twice"),
        (("copy", str(src), "s3://b/x.zarr", "--endpoint-url", "127.0.0.1:9"), "no scheme"),
        (("verify", str(tmp_path / "missing.zarr"), "--traceback"), "no store at"),
        (("inspect", "s3://b/x.zarr", "-o", "foo=bar", "--client", "s3fs"), "-o"),
    ]
    for argv, says in cases:
        r = run(*argv)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        if "--traceback" in argv:
            assert r.returncode == 2 and "Traceback" in r.stderr and says in r.stderr
            continue
        assert r.returncode == 2, (argv, r.stderr)
        assert len(lines) == 1 and says in lines[0], (argv, r.stderr)
    assert not (tmp_path / "x.zarr").exists()
    env = _env(AWS_ENDPOINT_URL=moto_process, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    for client in ("obstore", "s3fs"):  # obstore quoted S3's XML error body whole
        r = run_env(env, "copy", str(src), "s3://no-such-bucket/x.zarr", "--client", client)
        (line,) = r.stderr.strip().splitlines()
        assert r.returncode == 2 and "bucket does not exist" in line and "<Error>" not in line
        assert "create the bucket first" in line


@pytest.mark.parametrize("client", ["obstore", "s3fs"])
def test_a_profile_gives_credentials_and_the_endpoint(moto_process, netcdf, tmp_path, client):
    """A profile in ~/.aws that sets endpoint_url: s3fs honoured it, obstore went to AWS."""
    src, _ = netcdf
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "config").write_text(
        f"[profile research]\nregion = us-east-1\nendpoint_url = {moto_process}\n"
    )
    (home / ".aws" / "credentials").write_text(
        "[research]\naws_access_key_id = k\naws_secret_access_key = s\n"
    )
    bucket = _bucket(moto_process, f"profile-{client}")
    env = {**_env(), "HOME": str(home)}
    url = f"s3://{bucket}/x.zarr"
    flags = ["--profile", "research", "--client", client]
    r = run_env(env, "copy", str(src), url, *flags, "--no-progress", timeout=120)
    assert r.returncode == 0, r.stderr
    r = run_env(env, "verify", str(src), url, *flags, "--no-progress", timeout=120)
    assert r.returncode == 0 and "equal" in r.stdout, r.stderr
