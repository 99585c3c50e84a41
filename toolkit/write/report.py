"""What a write did: its report, and the bookkeeping that ends a write.

:func:`conclude` runs as the last task of a write's graph (:func:`then_report`
appends it): it raises :class:`~toolkit.errors.WriteError` with the record of
missing units when a task failed, else it lands the write's manifest fragment,
seals a resumable write's log, ends the write's record, and returns the
:class:`WriteReport`.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import xarray as xr
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.task_spec import Task, TaskRef
from dask.utils import format_bytes

from toolkit._render import html_table, text_table
from toolkit.coordination.claim import (
    remove_strays,
)
from toolkit.coordination.manifest import objects_of_lists, write_fragment
from toolkit.coordination.records import ResumeLog, WriteRecord
from toolkit.errors import (
    CleanupWarning,
    StoreError,
    WriteError,
)
from toolkit.io.metrics import IOMetrics, live_metrics
from toolkit.io.stores import (
    describe_store,
    display_location,
    is_icechunk,
)
from toolkit.io.wrappers import wrap_store
from toolkit.write.graph import (
    IDLE_TIMEOUT,
)
from toolkit.write.plan import WritePlan

__all__ = ["WriteReport", "conclude", "then_report"]


@dataclass(frozen=True)
class WriteReport:
    """What a write did, measured.

    Attributes
    ----------
    target : str
        Secret-free store description (the plan's ``target``; the report prints a
        local store's path without its ``file://``).
    variables : tuple of str
        Variables written by tasks.
    tasks, units : int
        Write tasks run and write units written.
    nbytes : int
        Uncompressed bytes written.
    stored_bytes : int
        Bytes sent to the store for chunk data (after compression).
    seconds, metadata_seconds : float
        Wall time in all, and of it the metadata phase.
    requests : dict
        Data requests measured by kind (gets, sets, deletes, lists).
    io : IOMetrics
        Everything the store stack measured for the data and metadata phases:
        requests by kind (every attempt), bytes, latency histogram, throttling
        answers, errors, retries, time backing off and waiting for the budget.
    plan : WritePlan
        The plan that ran.
    """

    target: str
    variables: tuple[str, ...]
    tasks: int
    units: int
    nbytes: int
    stored_bytes: int
    seconds: float
    metadata_seconds: float
    requests: Mapping[str, int]
    io: IOMetrics = field(repr=False, compare=False, default_factory=IOMetrics)
    plan: WritePlan = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    placement: Mapping[str, Any] | None = field(repr=False, compare=False, default=None)
    forks: tuple[Any, ...] = field(repr=False, compare=False, default=())
    resumed: int = field(compare=False, default=0)
    """Write tasks an interrupted run of the same write had finished, not run again."""

    @classmethod
    def nothing(cls, target: str, plan: WritePlan | None = None) -> WriteReport:
        """The report of a job that wrote nothing (it had landed before, say)."""
        return cls(
            target=target,
            variables=(),
            tasks=0,
            units=0,
            nbytes=0,
            stored_bytes=0,
            seconds=0.0,
            metadata_seconds=0.0,
            requests={},
            plan=plan,  # type: ignore[arg-type]
        )

    @property
    def throughput(self) -> float:
        """Uncompressed bytes per second."""
        return self.nbytes / self.seconds if self.seconds > 0 else float("inf")

    def _rows(self) -> list[dict[str, str]]:
        ratio = self.nbytes / self.stored_bytes if self.stored_bytes else float("nan")
        return [
            {"": "target", "value": display_location(self.target)},
            {"": "variables", "value": ", ".join(self.variables) or "-"},
            {"": "tasks / units", "value": f"{self.tasks:,} / {self.units:,}"},
            {
                "": "bytes",
                "value": f"{format_bytes(self.nbytes)} "
                f"({format_bytes(self.stored_bytes)} stored, {ratio:.2f}x)",
            },
            {
                "": "time",
                "value": f"{self.seconds:.2f} s ({self.metadata_seconds:.2f} s "
                f"metadata), {format_bytes(int(self.throughput))}/s",
            },
            *({"": k, "value": v} for k, v in self.io.summary().items()),
            *(
                [{"": "resumed", "value": f"{self.resumed:,} tasks were written by an earlier run"}]
                if self.resumed
                else []
            ),
        ]

    def __repr__(self) -> str:
        return "WriteReport\n" + text_table(self._rows())

    def _repr_html_(self) -> str:
        return "<div><b>WriteReport</b>" + html_table(self._rows()) + "</div>"


def then_report(graph: Delayed, *, plan: WritePlan, meta_io: IOMetrics, **report: Any) -> Delayed:
    """``graph`` followed by one task that turns its figures into a :class:`WriteReport`."""
    # Built by hand: dask's delayed() would traverse the plan, find the source
    # dataset in it, and gather all of it into one task just to hand it over.
    light = replace(plan, dataset=xr.Dataset())
    key = f"toolkit-report-{graph.key}"
    finish = functools.partial(conclude, plan=light, meta_io=meta_io.as_dict(), **report)
    task = Task(key, finish, TaskRef(graph.key))
    base = graph.__dask_graph__()
    assert isinstance(base, HighLevelGraph)
    hlg = HighLevelGraph({**base.layers, key: {key: task}}, {**base.dependencies, key: {graph.key}})
    return Delayed(key, hlg, layer=key)


def conclude(
    stats: Mapping[str, Any],
    plan: WritePlan,
    t0: float,
    meta: float,
    meta_io: Mapping[str, Any],
    write_record: WriteRecord | None,
    resume: ResumeLog | None = None,
    strays_before: float | None = None,
    meta_written: Mapping[str, Any] | None = None,
    token: str = "",
    resumed: int = 0,
) -> WriteReport:
    """End a write from its tasks' ``stats``: raise on any failure, else land its bookkeeping.

    A failure ends the write's record as failed (the missing units in it) and
    raises :class:`~toolkit.errors.WriteError`. Else, in this order (a kill
    between any two leaves a store that readers refuse and a rerun finishes):
    the manifest fragment of what the write put (and, for a resumable write,
    the one its log's markers make), the killed runs' temporary files removed,
    the record ended, the log cleared. ``meta`` and ``meta_io`` are the metadata round's seconds and
    requests.
    """
    io = IOMetrics.merged([plan.io, meta_io, stats["io"]])
    if stats["failures"]:
        record = _record(plan, stats)
        if write_record is not None:
            with contextlib.suppress(Exception):  # the error below matters more
                write_record.fail(record, io)
        failures = stats["failures"]
        cause = next((f["exception"] for f in failures if f.get("exception")), None)
        running = sum(int(f.get("still_running") or 0) for f in failures)
        raise WriteError(
            _failure_message(plan, record, io, running, write_record), record
        ) from cause
    # The bookkeeping's requests count in the running totals as they happen (the
    # dashboard's figures end at the report's), and in the report.
    tail = live_metrics(describe_store(plan.store))
    try:
        # The manifest before the record: a kill in between leaves a store that
        # readers still refuse and a rerun finishes (every task is marked).
        if not is_icechunk(plan.store):
            written = {**(meta_written or {}), **stats.get("objects", {})}
            write_fragment(
                wrap_store(plan.store, plan.throttle, tail),
                plan.group,
                token,
                objects_of_lists(written),
            )
        if resume is not None:
            resume.write_manifest(tail)
        if strays_before is not None:
            # Under the creation lease: temporary files of killed runs are nobody's.
            remove_strays(plan.store, plan.group, older_than=strays_before)
        if write_record is not None:
            write_record.done(tail, plan.unit_spans())
        if resume is not None:
            resume.clear(tail)
    except StoreError as e:
        # Every unit landed; only the bookkeeping failed. The record stays, so
        # readers refuse the store until it is removed: say so, do not fail.
        warnings.warn(
            f"every write unit of {display_location(plan.target)} landed, but removing the "
            f"write's record failed ({e}); readers refuse the store until it is gone. Rerun the "
            "write, or remove it with toolkit.coordination.records.clear_records(store)",
            CleanupWarning,
            stacklevel=2,
        )
    io.merge(tail)
    return WriteReport(
        target=plan.target,
        variables=tuple(v.name for v in plan.variables),
        tasks=int(stats["tasks"]),
        units=int(stats["units"]),
        nbytes=int(stats["nbytes"]),
        stored_bytes=int(stats["io"]["bytes_written"]),
        seconds=time.time() - t0,
        metadata_seconds=meta,
        requests={k: int(stats["io"][k]) for k in ("gets", "sets", "deletes", "lists")},
        io=io,
        plan=plan,
        forks=tuple(stats.get("forks", ())),
        resumed=resumed,
    )


def _record(plan: WritePlan, stats: Mapping[str, Any]) -> dict[str, Any]:
    """Per variable: units planned and written, and every missing unit's index.

    A unit not listed as missing was written (a failed task lists its own
    written and missing units; the other tasks wrote all theirs).
    """
    out: dict[str, Any] = {
        v.name: {"units": v.nunits, "written": v.nunits, "missing": [], "errors": []}
        for v in plan.variables
    }
    for f in stats["failures"]:
        v = out[f["variable"]]
        v["missing"].extend(list(u) for u in f["missing"])
        v["written"] -= len(f["missing"])
        if f.get("error") and f["error"] not in v["errors"]:
            v["errors"].append(f["error"])
    for v in out.values():
        v["missing"].sort()
    return out


def _failure_message(
    plan: WritePlan,
    record: Mapping[str, Any],
    io: IOMetrics,
    running: int = 0,
    write_record: WriteRecord | None = None,
) -> str:
    missing = sum(len(v["missing"]) for v in record.values())
    errors = [e for v in record.values() for e in v["errors"]]
    still = (
        "No request of this write is still running."
        if not running
        else f"{running} request(s) of this write had not come back {IDLE_TIMEOUT:g} s after the "
        "failure and may still land."
    )
    where = (
        f"in the store as {write_record.key}; readers refuse the store until the write is redone "
        "(rerun it: the same call finishes it) or the record is cleared"
        if write_record is not None
        else "nowhere else: these rows were not visible to readers"
    )
    lines = [
        f"writing {display_location(plan.target)} failed: {missing:,} of {plan.nunits:,} "
        "write units are missing "
        f"({', '.join(f'{k}: {len(v["missing"])}' for k, v in record.items() if v['missing'])}).",
        f"Cause: {errors[0] if errors else 'unknown'}",
        f"Requests: {io.total:,} sent, {io.throttled:,} throttled, {io.errors:,} failed, "
        f"{io.retries:,} retried.",
        f"{still} The record of written and missing units is in err.record and {where}.",
    ]
    return "\n".join(lines)
