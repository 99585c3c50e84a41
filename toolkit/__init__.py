"""toolkit: chunk-safe parallel Zarr writes and aligned reads for xarray and dask.

Every write is planned (:func:`plan_write`), validated, turned into one dask graph
in which each task owns whole stored objects (chunks, or shards), and executed
(:func:`to_zarr`). Reads (:func:`open_zarr`) are chunked in whole write units;
:func:`stats` computes many statistics in one pass over them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from toolkit import accessor as _accessor  # noqa: F401  (registers ds.toolkit)
from toolkit import commands as commands  # toolkit.commands.copy, inspect, demo
from toolkit import errors
from toolkit import jobs as jobs  # their first name, kept: toolkit.jobs.copy
from toolkit.api import to_zarr
from toolkit.cluster.budgets import throttle_state
from toolkit.cluster.client import on_client
from toolkit.cluster.metrics import io_metrics
from toolkit.dashboard import ensure_registered, register_dashboard
from toolkit.ingest import ingest
from toolkit.io.budget import ThrottleState
from toolkit.io.metrics import IOMetrics
from toolkit.io.throttle import Throttle
from toolkit.read import iter_chunks, map_chunks, open_datatree, open_zarr
from toolkit.rechunk import RechunkPlan, RechunkReport, execute_rechunk, plan_rechunk, rechunk
from toolkit.stats.compute import DEFAULT_STATS, stats
from toolkit.verify import VerifyReport, verify
from toolkit.write.execute import execute
from toolkit.write.icechunk import to_icechunk
from toolkit.write.manyjobs import append, overwrite_partitions
from toolkit.write.plan import (
    DEFAULT_MAX_TASK_BYTES,
    VariablePlan,
    WritePlan,
    WriteTask,
    plan_write,
)
from toolkit.write.report import WriteReport
from toolkit.write.tree import TreeWritePlan, TreeWriteReport, execute_tree, plan_tree_write

# The composition root's one wiring: the dashboard page subscribes to the clients
# toolkit finds (the cluster layer below it never imports it).
on_client(ensure_registered)

try:
    __version__ = version("toolkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_MAX_TASK_BYTES",
    "DEFAULT_STATS",
    "IOMetrics",
    "RechunkPlan",
    "RechunkReport",
    "Throttle",
    "ThrottleState",
    "TreeWritePlan",
    "TreeWriteReport",
    "VariablePlan",
    "VerifyReport",
    "WritePlan",
    "WriteReport",
    "WriteTask",
    "__version__",
    "append",
    "errors",
    "execute",
    "execute_rechunk",
    "execute_tree",
    "ingest",
    "io_metrics",
    "iter_chunks",
    "map_chunks",
    "open_datatree",
    "open_zarr",
    "overwrite_partitions",
    "plan_rechunk",
    "plan_tree_write",
    "plan_write",
    "rechunk",
    "register_dashboard",
    "stats",
    "throttle_state",
    "to_icechunk",
    "to_zarr",
    "verify",
]
