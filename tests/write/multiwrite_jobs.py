"""Jobs run in separate processes by tests/write/test_manyjobs.py (importable by spawned children).

Every job writes values that identify it (its job number), so a test can tell
from the data read back which job wrote every value.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

NX = 6
DAY = 24  # rows per partition (one day of hourly steps)


def base_dataset(nt: int, value: float = -1.0) -> xr.Dataset:
    """The dataset every test starts from: ``nt`` rows of ``value``, job -1."""
    return rows(-1, np.arange(nt) - 10_000, value)


def rows(job: int, times: np.ndarray, value: float | None = None) -> xr.Dataset:
    """Rows written by ``job``: v = job everywhere, w = job * 1000 + row, time coordinate."""
    n = len(times)
    v = np.full((n, NX), job if value is None else value, "f8")
    w = (job * 1000 + np.arange(n)).astype("i8")
    return xr.Dataset(
        {"v": (("time", "x"), v), "w": (("time",), w)},
        coords={"time": np.asarray(times, "i8"), "x": np.arange(NX)},
    )


def target_for(kind: str, root: Any, s3: Any, name: str) -> tuple[str, dict[str, Any] | None]:
    """A dataset location for a test: a directory under ``root``, or a new bucket on ``s3``.

    ``kind`` is ``"local"``, ``"s3"`` (the default client), ``"s3-obstore"`` /
    ``"s3-s3fs"`` (the client toolkit uses), or ``"azure"``: then ``s3`` is Azurite
    (an :class:`~toolkit.testing.AzuriteServer`) and the bucket a container.
    """
    if kind == "local":
        return str(root / name), None
    bucket = f"mw-{name.replace('.', '-').replace('_', '-')}-{time.time_ns() % 10**9}"
    s3.create_bucket(bucket)
    if kind == "azure":
        return f"az://{bucket}/{name}", s3.storage_options()
    extra = {"client": kind.removeprefix("s3-")} if kind.startswith("s3-") else {}
    return f"s3://{bucket}/{name}", s3.storage_options(**extra)


def server_for(kind: str, request: Any) -> Any:
    """The server a test of ``kind`` writes to: None (local), moto's S3, or Azurite."""
    if kind == "local":
        return None
    return request.getfixturevalue("azurite" if kind == "azure" else "s3")


def _opts(storage_options: dict[str, Any] | None) -> dict[str, Any]:
    return {"storage_options": storage_options} if storage_options else {}


def with_lead(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with ``lead``, an in-memory coordinate along time that is not its index: 2 * time."""
    return ds.assign_coords(lead=("time", 2 * ds.time.values))


def append_job(
    target: str, job: int, n: int, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Append ``n`` rows whose time coordinate is job * 1000 + i (and ``lead``, 2 * time)."""
    import toolkit

    ds = with_lead(rows(job, job * 1000 + np.arange(n))).chunk({"time": 4})
    report = toolkit.append(ds, target, "time", progress=False, **_opts(storage_options))
    return dict(report.placement)


def region_job(
    target: str, job: int, start: int, stop: int, storage_options: dict[str, Any] | None = None
) -> int:
    """Write v = job over rows [start, stop) of an existing dataset."""
    import toolkit

    n = stop - start
    ds = xr.Dataset({"v": (("time", "x"), np.full((n, NX), job, "f8"))}).chunk({"time": 5})
    toolkit.to_zarr(
        ds, target, region={"time": slice(start, stop)}, progress=False, **_opts(storage_options)
    )
    return job


def day_rows(job: int, days: list[str]) -> xr.Dataset:
    """DAY rows per day in ``days``: a ``day`` label coordinate, v = job."""
    times = np.concatenate(
        [pd.date_range(d, periods=DAY, freq="h").values.astype("i8") // 10**9 for d in days]
    )
    ds = rows(job, times)
    return ds.assign_coords(day=("time", np.repeat(np.array(days, dtype="U10"), DAY)))


def partition_job(
    target: str,
    job: int,
    days: list[str],
    storage_options: dict[str, Any] | None = None,
    sleep: float = 0.0,
) -> dict[str, Any]:
    """Overwrite the partitions ``days`` with v = job."""
    import toolkit

    if sleep:
        time.sleep(sleep)
    ds = day_rows(job, days).chunk({"time": 10})
    report = toolkit.to_zarr(
        ds,
        target,
        mode="overwrite-partitions",
        partition="day",
        progress=False,
        **_opts(storage_options),
    )
    return dict(report.placement)


def day_append_job(
    target: str, job: int, days: list[str], storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Append whole new days (v = job) beside the partition overwriters."""
    import toolkit

    ds = day_rows(job, days).chunk({"time": 10})
    report = toolkit.append(ds, target, "time", progress=False, **_opts(storage_options))
    return dict(report.placement)


def slow_partition_job(target: str, job: int, days: list[str], ready: str) -> None:
    """Overwrite ``days`` slowly (each write unit takes a while), touching ``ready`` once started.

    The test kills this process with SIGKILL in the middle.
    """
    import toolkit
    from toolkit.io import wrappers

    original = wrappers.InterceptStore.set

    async def slow_set(self: Any, key: str, value: Any) -> None:
        if "/v/" in key or key.startswith("v/"):
            if not os.path.exists(ready):
                open(ready, "w").close()
            import asyncio

            await asyncio.sleep(0.5)
        await original(self, key, value)

    wrappers.InterceptStore.set = slow_set  # type: ignore[method-assign]
    ds = day_rows(job, days).chunk({"time": 4})
    toolkit.to_zarr(ds, target, mode="overwrite-partitions", partition="day", progress=False)


def ice_days_job(
    target: str,
    job: int,
    days: list[str],
    storage_options: dict[str, Any] | None = None,
    how: str = "partition",
) -> dict[str, Any]:
    """Icechunk, one commit: overwrite the partitions ``days`` (or append them) with v = job."""
    from toolkit.write.icechunk import to_icechunk

    ds = day_rows(job, days).chunk({"time": 10})
    where = {"partition": "day"} if how == "partition" else {"append_dim": "time"}
    report = to_icechunk(ds, target, storage_options=storage_options, **where)
    return dict(report.placement)


def ice_region_job(
    target: str, job: int, start: int, stop: int, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Icechunk: write v = job over rows [start, stop)."""
    from toolkit.write.icechunk import to_icechunk

    n = stop - start
    ds = xr.Dataset({"v": (("time", "x"), np.full((n, NX), job, "f8"))}).chunk({"time": 5})
    report = to_icechunk(
        ds, target, region={"time": slice(start, stop)}, storage_options=storage_options
    )
    return dict(report.placement)


def slow_ice_partition_job(target: str, job: int, days: list[str], ready: str) -> None:
    """Icechunk: overwrite ``days`` slowly; the test kills it with SIGKILL in the middle."""
    from toolkit.io import wrappers
    from toolkit.write.icechunk import to_icechunk

    original = wrappers.InterceptStore.set

    async def slow_set(self: Any, key: str, value: Any) -> None:
        if key.startswith("v/c"):
            if not os.path.exists(ready):
                open(ready, "w").close()
            import asyncio

            await asyncio.sleep(0.5)
        await original(self, key, value)

    wrappers.InterceptStore.set = slow_set  # type: ignore[method-assign]
    to_icechunk(day_rows(job, days).chunk({"time": 4}), target, partition="day")


def kill_midway(job: str, *args: Any, ready: str, ttl: str = "4") -> None:
    """Run ``job(*args, ready)`` of this module in a new process; SIGKILL it once it writes.

    The process gets ``TOOLKIT_LEASE_TTL=ttl``, so that the leases it leaves
    behind expire within the test.
    """
    import signal
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    call = ", ".join(repr(a) for a in (*args, ready))
    code = f"import sys; sys.path.insert(0, {here!r}); import multiwrite_jobs as j; j.{job}({call})"
    victim = subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "TOOLKIT_LEASE_TTL": ttl}
    )
    try:
        deadline = time.time() + 120
        while not os.path.exists(ready):
            if victim.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{job} ended or stalled before it started writing")
            time.sleep(0.05)
        time.sleep(0.7)  # a unit or two landed
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)
