"""Concurrent mixed jobs, several rounds: appenders, partition overwriters and region writers.

Per round, 13 processes (sharing nothing but the store) start together: 8
appenders adding new days, 3 partition overwriters replacing overlapping sets
of existing days (one also adding a new day) and 2 region writers writing rows
of days nobody else touches. The Zarr chunks (10 rows) do not align with the
days (24 rows), so neighbouring jobs share write units at their edges.

Every value read back is attributable: ``v`` is the number of the job that
wrote the row (region writers write ``v`` only), ``w`` is ``job * 1000 + i``
for the job's own row ``i``, ``time`` is unique per row and ``day`` labels
the partitions. After each round the test knows, day by day, what each row
may hold (an appender's values, one of the overwriters of that day, a region
writer's ``v`` over its rows, or the previous round's values) and checks
every row against it.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path

import mixed_jobs as mj
import multiwrite_jobs as jobs
import numpy as np
import pytest
import xarray as xr

import toolkit
from toolkit.coordination.rows import runs_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CTX = mp.get_context("spawn")
KINDS = ["local", "s3-obstore", "s3-s3fs"]
DAY = mj.DAY
UNIT = 10  # Zarr chunk along time: never aligned with a day's 24 rows
N_APPEND, N_PARTITION, N_REGION = 8, 3, 2
WORKERS = N_APPEND + N_PARTITION + N_REGION
ROUNDS = 3
BASE_DAYS = [f"2024-01-{d:02d}" for d in range(1, 11)]
ROUND_TIMEOUT = 240.0


@dataclass
class Day:
    """What a day's rows must hold: v per row (constant along x), w and time per row."""

    v: np.ndarray
    w: np.ndarray
    time: np.ndarray


@dataclass
class Round:
    """One round's jobs: job number -> days (appenders, overwriters) or rows (regions)."""

    appends: dict[int, list[str]] = field(default_factory=dict)
    partitions: dict[int, list[str]] = field(default_factory=dict)
    regions: dict[int, tuple[int, int]] = field(default_factory=dict)
    new: str = ""  # the new day one overwriter adds


def _times(day: str) -> np.ndarray:
    return jobs.day_rows(0, [day]).time.values


def _model_rows(job: int, days: list[str]) -> dict[str, Day]:
    """The days as ``job`` writes them (mixed_jobs.day_rows: w counts the job's own rows)."""
    return {
        d: Day(np.full(DAY, float(job)), job * 1000 + i * DAY + np.arange(DAY), _times(d))
        for i, d in enumerate(days)
    }


def _mid_unit(row: int) -> int:
    """``row``, or the next one that is not on a unit boundary (so the unit is shared)."""
    return row if row % UNIT else row + 1


def _regions(first: int, r: int) -> dict[int, tuple[int, int]]:
    """Two adjacent row ranges from ``first`` on (two days' rows): every edge mid-unit.

    The first range's start unit holds untouched rows before it, the two ranges
    share the unit at their seam, and the second's end unit holds untouched rows.
    """
    a, b, c = _mid_unit(first + 5), _mid_unit(first + 13), _mid_unit(first + DAY + 9)
    return {100 * r + 21: (a, b), 100 * r + 22: (b, c)}


def _plan(r: int, layout: list[str], prev: Round | None) -> Round:
    """Round ``r``'s jobs, given the days in row order (``layout``) and the previous round."""
    j = 100 * r
    rnd = Round(new=f"2024-01-{20 + r:02d}")
    d = 1
    for k in range(1, N_APPEND + 1):  # 8 appenders: 1 or 2 new days each, unique labels
        n = 2 if k % 2 else 1
        rnd.appends[j + k] = [f"2024-{r + 1:02d}-{d + i:02d}" for i in range(n)]
        d += n
    if prev is None:
        rnd.partitions = {
            j + 11: ["2024-01-01", "2024-01-02", "2024-01-03"],
            j + 12: ["2024-01-02", "2024-01-03", "2024-01-04"],
            j + 13: ["2024-01-03", "2024-01-05", rnd.new],
        }
        region_first = layout.index("2024-01-07") * DAY
    else:
        # Days the previous round appended (and its new partition) are overwritten now:
        # the earliest reserved of them (lowest rows), the last day, and a new one.
        order = sorted(prev.appends.values(), key=lambda ds: layout.index(ds[0]))
        two = [ds for ds in order if len(ds) == 2]
        one = [ds for ds in order if len(ds) == 1]
        d0, d1 = two[0]
        rnd.partitions = {
            j + 11: ["2024-01-01", d0, d1],
            j + 12: [d1, prev.new, "2024-01-03"],
            j + 13: list(dict.fromkeys(["2024-01-03", one[0][0], layout[-1], rnd.new])),
        }
        touched = {x for ds in rnd.partitions.values() for x in ds}
        # Region writers: inside two days of one previous appender nobody overwrites now.
        spare = next(ds for ds in two[1:] if not touched & set(ds))
        region_first = layout.index(spare[0]) * DAY
        assert layout.index(spare[1]) == layout.index(spare[0]) + 1
    rnd.regions = _regions(region_first, r)
    touched = {x for ds in rnd.partitions.values() for x in ds}
    region_days = {layout[i // DAY] for a, b in rnd.regions.values() for i in range(a, b)}
    assert not touched & region_days, "the plan overlaps region and partition days"
    return rnd


def _run_round(pool, target: str, opts: dict | None, rnd: Round, tmp: Path, start_at) -> list[dict]:
    """Start the round's 13 jobs together (one per worker); their reports, in job order.

    ``start_at``: a barrier of ``WORKERS`` parties (a Manager's), the jobs' start.
    """
    calls = [(mj.append_days, job, days) for job, days in rnd.appends.items()]
    calls += [(mj.overwrite_days, job, days) for job, days in rnd.partitions.items()]
    calls += [(mj.write_rows, job, *ab) for job, ab in rnd.regions.items()]
    stacks = {c[1]: tmp / f"stacks-{c[1]}.txt" for c in calls}
    pending = {
        c[1]: pool.apply_async(c[0], (target, *c[1:], opts, start_at, str(stacks[c[1]])))
        for c in calls
    }
    deadline = time.time() + ROUND_TIMEOUT
    out = []
    for res in pending.values():
        try:
            out.append(res.get(timeout=max(1.0, deadline - time.time())))
        except mp.TimeoutError:
            stuck = [job for job, p in pending.items() if not p.ready()]
            where = "\n".join(
                f"job {j}:\n{stacks[j].read_text() if stacks[j].exists() else '(not started)'}"
                for j in stuck
            )
            pytest.fail(f"jobs {stuck} did not finish within {ROUND_TIMEOUT:g} s:\n{where}")
    return out


def _spans(rows: np.ndarray) -> list[tuple[int, int]]:
    """Row numbers as [start, stop) spans."""
    out: list[list[int]] = []
    for i in rows.tolist():
        if out and out[-1][1] == i:
            out[-1][1] += 1
        else:
            out.append([i, i + 1])
    return [(a, b) for a, b in out]


def _open(target: str, opts: dict | None) -> xr.Dataset:
    """Read back with xarray itself (fsspec), whichever client toolkit wrote through."""
    plain = {k: v for k, v in (opts or {}).items() if k != "client"} or None
    return xr.open_zarr(target, storage_options=plain, consolidated=False).load()


def _check(
    ds: xr.Dataset, model: dict[str, Day], rnd: Round, results: list[dict]
) -> tuple[dict[str, Day], list[str]]:
    """Check every row of ``ds`` against what the round may have left; the next model."""
    v, w, t = ds.v.values, ds.w.values, ds.time.values
    labels = ds.day.values.astype(str)
    n = ds.sizes["time"]
    # No fill rows, no row twice.
    nan_rows = np.flatnonzero(np.isnan(v).any(axis=1))
    assert nan_rows.size == 0, f"fill values in rows {nan_rows.tolist()} ({labels[nan_rows]})"
    assert (v == v[:, :1]).all(), "a row holds values of more than one job"
    uniq, counts = np.unique(t, return_counts=True)
    twice = np.flatnonzero(np.isin(t, uniq[counts > 1]))
    assert twice.size == 0, f"{twice.size} rows repeat time values: " + "; ".join(
        f"rows {a}-{b} day {sorted(set(labels[a:b].tolist()))} v {sorted(set(v[a:b, 0].tolist()))}"
        f" w {w[a]}..{w[b - 1]}"
        for a, b in _spans(twice)
    )
    # Each day is one run of DAY rows, present once.
    runs = runs_of(labels.tolist())
    layout = [lab for lab, _ in runs]
    bad = [(lab, k) for lab, k in runs if k != DAY]
    assert not bad, f"days not {DAY} rows long (torn or merged): {bad}"
    dup = sorted({lab for lab in layout if layout.count(lab) > 1})
    assert not dup, f"days present more than once: {dup} (layout {layout})"
    pos = {lab: i * DAY for i, lab in enumerate(layout)}

    expected = dict(model)
    for job, days in rnd.appends.items():
        expected.update(_model_rows(job, days))
    writers: dict[str, set[int]] = {}
    for job, days in rnd.partitions.items():
        for x in days:
            writers.setdefault(x, set()).add(job)
    new_days = {x for x in writers if x not in model}
    assert new_days == {rnd.new}
    total = len(model) + sum(map(len, rnd.appends.values())) + len(new_days)
    appended = {x for days in rnd.appends.values() for x in days}
    assert set(layout) == set(model) | set(writers) | appended, "days missing or unexpected"
    assert n == total * DAY, (n, total * DAY)

    winners = {}
    for x, who in writers.items():
        rows = slice(pos[x], pos[x] + DAY)
        got = np.unique(v[rows, 0])
        assert len(got) == 1, f"partition {x} is torn: {got} (writers {sorted(who)})"
        job = int(got[0])
        assert job in who, f"partition {x} holds job {job}'s values, not a writer's {sorted(who)}"
        winners[x] = job
        expected[x] = _model_rows(job, rnd.partitions[job])[x]
    for job, (a, b) in rnd.regions.items():
        for i in range(a, b):
            x = layout[i // DAY]
            day = expected[x]
            vv = day.v.copy()
            vv[i - pos[x]] = job
            expected[x] = Day(vv, day.w, day.time)

    for x in layout:
        rows = slice(pos[x], pos[x] + DAY)
        e = expected[x]
        for name, got, want in (
            ("v", v[rows, 0], e.v),
            ("w", w[rows], e.w),
            ("time", t[rows], e.time),
        ):
            if not np.array_equal(got, want):
                wrong = np.flatnonzero(got != want)
                pytest.fail(
                    f"day {x} (rows {pos[x]}-{pos[x] + DAY}), {name} differs at day rows "
                    f"{wrong.tolist()}: got {got[wrong].tolist()}, want {want[wrong].tolist()}"
                )

    # The jobs' own reports agree with where their rows are.
    for res in results:
        job, got = res["job"], res["result"]
        if res["kind"] == "append":
            days = rnd.appends[job]
            assert [got["start"], got["stop"]] == [pos[days[0]], pos[days[0]] + DAY * len(days)]
            assert [pos[x] for x in days] == [got["start"] + i * DAY for i in range(len(days))]
        elif res["kind"] == "partition":
            assert got["partitions"] == {x: [pos[x], pos[x] + DAY] for x in rnd.partitions[job]}
    return expected, layout


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_jobs_rounds(kind, tmp_path, s3):
    """8 appenders, 3 partition overwriters, 2 region writers at once, 3 rounds: all rows right."""
    target, opts = jobs.target_for(kind, tmp_path, s3, "mixed.zarr")
    enc = {
        name: {"chunks": (UNIT, jobs.NX) if name == "v" else (UNIT,)}
        for name in ("v", "w", "time", "day")
    }
    base = jobs.day_rows(-1, BASE_DAYS)
    toolkit.to_zarr(base, target, encoding=enc, progress=False, storage_options=opts)
    model = _model_rows(-1, BASE_DAYS)
    layout = list(BASE_DAYS)
    prev: Round | None = None
    timings = []
    started = CTX.Value("i", 0)
    with CTX.Manager() as manager, CTX.Pool(WORKERS, mj.warm, (started,)) as pool:
        # Every worker up (imports done) before the first round's clock starts. Each
        # counts itself once its imports are done; a loaded machine only makes that
        # slower, so the bound is one against a hang, not a speed.
        until = time.time() + 600
        while started.value < WORKERS and time.time() < until:
            time.sleep(0.1)
        assert started.value >= WORKERS, f"only {started.value} of {WORKERS} workers came up"
        for r in range(1, ROUNDS + 1):
            rnd = _plan(r, layout, prev)
            t0 = time.time()
            results = _run_round(pool, target, opts, rnd, tmp_path, manager.Barrier(WORKERS))
            timings.append(round(time.time() - t0, 1))
            errors = {res["job"]: res["traceback"] for res in results if "error" in res}
            assert not errors, "round {}: jobs failed:\n{}".format(
                r, "\n".join(f"job {j}:\n{tb}" for j, tb in errors.items())
            )
            # They ran together: one job per worker, all started at once.
            assert len({res["pid"] for res in results}) == WORKERS
            ds = _open(target, opts)
            model, layout = _check(ds, model, rnd, results)
            # toolkit's reader finds no unfinished write and reads the same.
            mine = toolkit.open_zarr(target, storage_options=opts, consolidated=False).load()
            for name in ("v", "w", "time", "day"):
                np.testing.assert_array_equal(mine[name].values, ds[name].values)
            prev = rnd
    print(f"{kind}: rounds took {timings} s")
