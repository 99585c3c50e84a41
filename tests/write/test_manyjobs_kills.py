"""Many jobs under SIGKILL: appends, partition overwrites, region writes, Icechunk appends.

The kill harness (``tests/coordination/kill_jobs.py``) runs one job in a process of its
own that SIGKILLs itself at a named event of its write: a request left pending,
the log entry granting its rows, a chunk, half of them, the document saying its
data landed, the middle of the publication of its rows, the removal of its
record; or at a random moment. After every kill the store either refuses to
open (naming the job, with :class:`~toolkit.errors.IncompleteStoreError`, the
one refusal the docs promise) or reads back exactly the rows of the jobs that
finished: no fill rows, no duplicates. Then the same call again finishes the
job, and once more writes nothing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import toolkit
from toolkit.errors import IncompleteStoreError

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "coordination"))
import kill_jobs  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LOG = r"\.toolkit/coord/log/[0-9]+\.json$"
EVENTS: dict[str, dict[str, str]] = {
    "append": {
        "pending": r"put:after:1:\.toolkit/coord/pending/",
        "log-entry": f"create:after:1:{LOG}",
        "first-chunk": "set:after:1:^v/c/",
        "half-way": "set:after:2:^v/c/",
        "landed": r"put:after:1:\.toolkit/coord/jobs/",
        "publishing": r"replace:after:1:^(v|w|time)/zarr\.json$",
    },
    "partition-old": {
        "log-entry": f"create:after:1:{LOG}",
        "record": r"set:after:1:\.toolkit/writes/",
        "first-chunk": "set:after:1:^v/c/",
        "half-way": "set:after:3:^v/c/",
        "record-removal": r"delete:before:1:\.toolkit/writes/",
    },
    "partition-new": {
        "log-entry": f"create:after:1:{LOG}",
        "first-chunk": "set:after:1:^v/c/",
        "half-way": "set:after:4:^v/c/",
        "landed": r"put:after:1:\.toolkit/coord/jobs/",
        "publishing": r"replace:after:1:^(v|w|time|day)/zarr\.json$",
    },
    "region": {
        "record": r"set:after:1:\.toolkit/writes/",
        "first-chunk": "set:after:1:^v/c/",
        "shared-unit": r"create|replace:after:1:^v/c/",
        "record-removal": r"delete:before:1:\.toolkit/writes/",
    },
    "ice-append": {
        "log-entry": f"create:after:1:{LOG}",
        "fork-handed-over": r"put:after:1:\.toolkit/coord/forks/",
        "pending-commit": r"put:after:2:\.toolkit/coord/pending/",
    },
}
# On S3 (both clients) a sample of each kind's events: the code paths are the same.
ON_S3 = {
    "append": ["log-entry", "half-way", "publishing"],
    "partition-new": ["first-chunk", "landed"],
    "partition-old": ["half-way"],
    "region": ["shared-unit"],
    "ice-append": ["fork-handed-over"],
}


def _target(kind: str, tmp_path: Path, s3: Any, job: str) -> tuple[str, dict | None]:
    if kind == "local":
        return str(tmp_path / f"{job}.zarr"), None
    bucket = f"kill-{job}-{time.time_ns() % 10**9}"
    s3.create_bucket(bucket)
    return f"s3://{bucket}/{job}.zarr", s3.storage_options(client=kind.removeprefix("s3-"))


def _child(
    job: str, dst: str, opts: dict | None, spec: str | None, ttl: str = "3"
) -> subprocess.Popen:
    env = {**os.environ, "TOOLKIT_LEASE_TTL": ttl, "TOOLKIT_KILL_OPTS": json.dumps(opts)}
    env.pop("TOOLKIT_KILL", None)
    if spec:
        env["TOOLKIT_KILL"] = spec
        if spec.startswith("put:after:1:\\.toolkit/coord/pending/"):
            env["TOOLKIT_LOG_DIRECT_ATTEMPTS"] = "0"  # a lone job commits through the group
    args = [sys.executable, str(HERE.parent / "coordination" / "kill_jobs.py"), job, "-", "-", dst]
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _read(job: str, dst: str, opts: dict | None) -> xr.Dataset:
    if job.startswith("ice"):
        from toolkit.write.icechunk import Repository

        return xr.open_zarr(Repository(dst, opts).readonly(), consolidated=False).load()
    return toolkit.open_zarr(dst, storage_options=opts).load()


def _expected(job: str) -> xr.Dataset:
    """What the store holds once the job has landed (as xarray would lay it out)."""
    base, data = kill_jobs.base_of(job), kill_jobs.data_of(job).load()
    if job in ("append", "ice-append"):
        return xr.concat([base, data], "time")
    if job == "region":
        out = base.copy(deep=True)
        out["v"][kill_jobs.REGION] = 7.0
        return out
    days = list(dict.fromkeys(data.day.values.tolist()))
    old = base.where(~base.day.isin(days), drop=True)
    merged = xr.concat([old, data], "time")
    order = np.argsort([kill_jobs.DAYS.index(d) for d in merged.day.values], kind="stable")
    return merged.isel(time=order)


def _same(got: xr.Dataset, want: xr.Dataset) -> None:
    assert got.sizes == want.sizes, (dict(got.sizes), dict(want.sizes))
    for name in want.variables:
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=str(name))


def _check(job: str, dst: str, opts: dict | None, job_id: str) -> str:
    """After a kill: refused, naming the job, or exactly the base or the base and the job."""
    try:
        got = _read(job, dst, opts)
    except IncompleteStoreError as e:
        assert job_id in str(e), str(e)
        return "refused"
    assert not np.isnan(got.v.values).any(), "fill values read as data"
    assert len(np.unique(got.time.values)) == got.sizes["time"], "duplicate rows"
    if got.sizes == kill_jobs.base_of(job).sizes and (got.v.values == -1).all():
        return "before"
    _same(got, _expected(job))
    return "after"


def _job_id(job: str, dst: str) -> str:
    from toolkit.write.manyjobs import derive_job_id

    data = kill_jobs.data_of(job)
    if job == "append":
        return derive_job_id("append", dst, None, "time", data)
    if job.startswith("partition"):
        return derive_job_id("partitions", dst, None, "day", data)
    if job == "region":
        return "write-"  # derived from the plan: the refusal names "write-<token>"
    return derive_job_id("ice-append", dst, "main", "time", data)


def _rerun_finishes(job: str, dst: str, opts: dict | None) -> None:
    report = kill_jobs.run_many(job, dst, opts)
    _same(_read(job, dst, opts), _expected(job))
    again = kill_jobs.run_many(job, dst, opts)  # a finished job, once more
    _same(_read(job, dst, opts), _expected(job))
    if job in ("append", "ice-append"):
        assert again.placement.get("landed"), again.placement
    assert report is not None


CASES = [("local", job, event) for job, events in EVENTS.items() for event in events] + [
    (f"s3-{client}", job, event)
    for client in ("obstore", "s3fs")
    for job, events in ON_S3.items()
    for event in events
]


@pytest.mark.parametrize(("kind", "job", "event"), CASES)
def test_a_job_killed_at_an_event_refuses_or_is_whole_and_its_rerun_finishes(
    tmp_path, kind, job, event, request
):
    if job.startswith("ice"):
        pytest.importorskip("icechunk")
    s3 = request.getfixturevalue("s3") if kind != "local" else None
    dst, opts = _target(kind, tmp_path, s3, job.replace("-", ""))
    kill_jobs.create_base(job, dst, opts)
    proc = _child(job, dst, opts, EVENTS[job][event])
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL, f"event {event!r} never came:\n{err[-3000:]}"
    state = _check(job, dst, opts, _job_id(job, dst))
    if event == "record-removal":
        assert state == "refused"  # the record goes last
    if event in ("log-entry", "pending", "fork-handed-over") or (
        event == "first-chunk" and job in ("append", "partition-new")
    ):
        assert state == "before"  # nothing of it was visible yet
    _rerun_finishes(job, dst, opts)


@pytest.mark.parametrize("job", list(EVENTS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_job_killed_at_a_random_moment(tmp_path, job, seed):
    if job.startswith("ice"):
        pytest.importorskip("icechunk")
    dst, opts = _target("local", tmp_path, None, job.replace("-", ""))
    kill_jobs.create_base(job, dst, opts)
    proc = _child(job, dst, opts, None)
    time.sleep(random.Random(seed * 7919 + len(job)).uniform(0.3, 2.5))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    _check(job, dst, opts, _job_id(job, dst))
    _rerun_finishes(job, dst, opts)
