"""Jobs run in spawned processes by tests/write/test_manyjobs_mixed.py (importable by children).

Every job writes values that identify it: ``v = job`` on every row it writes,
and (appenders and partition overwriters) ``w = job * 1000 + i`` for its own
row ``i``, so that the test can tell from the data read back which job wrote
every value. A job never raises: it returns what happened (its result or its
error with the traceback), with the moments it started and ended, so that the
test sees every job's outcome at once.
"""

from __future__ import annotations

import faulthandler
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr
from multiwrite_jobs import DAY, NX, day_rows

STACKS_AFTER = 180.0
"""Seconds after which a job still running dumps its stacks (the test's round timeout is longer)."""

__all__ = ["DAY", "NX", "append_days", "day_rows", "overwrite_days", "warm", "write_rows"]


def warm(started: Any = None) -> None:
    """Pool initializer: import what the jobs need, then count this worker in ``started``."""
    import contextlib
    import importlib

    import toolkit  # noqa: F401

    for name in ("obstore", "s3fs"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    if started is not None:
        with started.get_lock():
            started.value += 1


def _opts(storage_options: dict[str, Any] | None) -> dict[str, Any]:
    return {"storage_options": storage_options} if storage_options else {}


def _run(
    job: int, kind: str, start_at: Any, stacks: str | None, fn: Callable[[], Any]
) -> dict[str, Any]:
    """Wait for ``start_at`` (every job of a round starts together), run ``fn``, report.

    ``start_at`` is a time, or a barrier of the round's jobs: each worker then
    holds its job until every job has a worker, so the jobs run together on a
    loaded machine too (no worker takes two).
    A job still running ``STACKS_AFTER`` seconds later writes its threads' stacks
    to ``stacks`` (the test shows them when the round times out).
    """
    if isinstance(start_at, int | float):
        time.sleep(max(0.0, start_at - time.time()))
    else:
        start_at.wait(600)
    t0 = time.time()
    out: dict[str, Any] = {"job": job, "kind": kind, "pid": os.getpid(), "t0": t0}
    dump = open(stacks, "w") if stacks else None  # noqa: SIM115 (open while the job runs)
    if dump is not None:
        faulthandler.dump_traceback_later(STACKS_AFTER, file=dump)
    try:
        out["result"] = fn()
    except BaseException as e:
        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()
    finally:
        if dump is not None:
            faulthandler.cancel_dump_traceback_later()
            dump.close()
    out["t1"] = time.time()
    return out


def append_days(
    target: str,
    job: int,
    days: list[str],
    storage_options: dict[str, Any] | None,
    start_at: Any,
    stacks: str | None = None,
) -> dict[str, Any]:
    """Append the new days ``days`` (DAY rows each, v = job, w = job * 1000 + row)."""

    def go() -> dict[str, Any]:
        import toolkit

        ds = day_rows(job, days).chunk({"time": 7})
        report = toolkit.append(ds, target, "time", progress=False, **_opts(storage_options))
        p = report.placement
        return {"start": p["start"], "stop": p["stop"], "job_id": p["job"]}

    return _run(job, "append", start_at, stacks, go)


def overwrite_days(
    target: str,
    job: int,
    days: list[str],
    storage_options: dict[str, Any] | None,
    start_at: Any,
    stacks: str | None = None,
) -> dict[str, Any]:
    """Replace the partitions ``days`` (new labels are added) with v = job."""

    def go() -> dict[str, Any]:
        import toolkit

        ds = day_rows(job, days).chunk({"time": 8})
        report = toolkit.to_zarr(
            ds,
            target,
            mode="overwrite-partitions",
            partition="day",
            progress=False,
            **_opts(storage_options),
        )
        p = report.placement
        return {"partitions": p["partitions"], "job_id": p["job"]}

    return _run(job, "partition", start_at, stacks, go)


def write_rows(
    target: str,
    job: int,
    start: int,
    stop: int,
    storage_options: dict[str, Any] | None,
    start_at: Any,
    stacks: str | None = None,
) -> dict[str, Any]:
    """Write v = job over rows [start, stop) (a region write; w, time and day untouched)."""

    def go() -> list[int]:
        import toolkit

        n = stop - start
        ds = xr.Dataset({"v": (("time", "x"), np.full((n, NX), job, "f8"))}).chunk({"time": 6})
        toolkit.to_zarr(
            ds,
            target,
            region={"time": slice(start, stop)},
            progress=False,
            **_opts(storage_options),
        )
        return [start, stop]

    return _run(job, "region", start_at, stacks, go)
