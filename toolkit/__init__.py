"""toolkit: chunk-safe parallel Zarr writes and aligned reads for xarray and dask.

Every write is planned (:func:`plan_write`), validated, turned into one dask graph
in which each task owns whole stored objects (chunks, or shards), and executed
(:func:`to_zarr`). Reads (:func:`open_zarr`) are chunked in whole write units;
:func:`stats` computes many statistics in one pass over them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from toolkit import accessor as _accessor  # noqa: F401  (registers ds.toolkit)
from toolkit import errors
from toolkit.dashboard import register_dashboard
from toolkit.ingest import ingest
from toolkit.metrics import IOMetrics, io_metrics
from toolkit.multiwrite import append, overwrite_partitions
from toolkit.plan import DEFAULT_MAX_TASK_BYTES, VariablePlan, WritePlan, WriteTask, plan_write
from toolkit.read import iter_chunks, map_chunks, open_zarr
from toolkit.stats import DEFAULT_STATS, stats
from toolkit.throttle import Throttle, ThrottleState, throttle_state
from toolkit.transactions import to_icechunk
from toolkit.verify import VerifyReport, verify
from toolkit.write import WriteReport, execute, to_zarr

try:
    __version__ = version("toolkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_MAX_TASK_BYTES",
    "DEFAULT_STATS",
    "IOMetrics",
    "Throttle",
    "ThrottleState",
    "VariablePlan",
    "VerifyReport",
    "WritePlan",
    "WriteReport",
    "WriteTask",
    "__version__",
    "append",
    "errors",
    "execute",
    "ingest",
    "io_metrics",
    "iter_chunks",
    "map_chunks",
    "open_zarr",
    "overwrite_partitions",
    "plan_write",
    "register_dashboard",
    "stats",
    "throttle_state",
    "to_icechunk",
    "to_zarr",
    "verify",
]
