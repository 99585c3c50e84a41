"""I/O figures across a cluster: totals over every worker, per-task figures for the dashboard."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distributed.metrics import context_meter

from toolkit.cluster.executor import executor
from toolkit.io.metrics import IOMetrics, snapshot
from toolkit.io.stores import describe_store, resolve_store

__all__ = ["io_metrics", "publish"]


def io_metrics(store: Any = None, *, storage_options: Mapping[str, Any] | None = None) -> IOMetrics:
    """Running I/O totals of everything toolkit read or wrote, for one store or all.

    Adds up this process and, when a ``distributed`` client is active, every
    worker. A write also reports its own figures in :class:`toolkit.WriteReport`.

    Parameters
    ----------
    store : str, os.PathLike or zarr Store, optional
        The store (as given to :func:`toolkit.open_zarr`); all stores if None.
    storage_options : dict, optional
        For URLs, as given to :func:`toolkit.open_zarr`.
    """
    scope = None
    if store is not None:
        scope = describe_store(resolve_store(store, storage_options=storage_options))
    return IOMetrics.merged(p for parts in executor().everywhere(snapshot, scope) for p in parts)


def publish(metrics: Mapping[str, Any]) -> None:
    """Report a task's I/O figures to distributed's fine performance metrics.

    A no-op outside a distributed task. The figures appear on the dashboard's
    "Fine Performance Metrics" page under the ``toolkit-io`` activity.
    """
    for label, unit in (
        ("gets", "count"),
        ("sets", "count"),
        ("deletes", "count"),
        ("lists", "count"),
        ("throttled", "count"),
        ("retries", "count"),
        ("bytes_read", "bytes"),
        ("bytes_written", "bytes"),
        ("backoff_seconds", "seconds"),
        ("wait_seconds", "seconds"),
    ):
        value = metrics.get(label, 0)
        if value:
            context_meter.digest_metric(("toolkit-io", label), value, unit)
