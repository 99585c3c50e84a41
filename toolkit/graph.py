"""From a validated plan to one dask graph.

Each write task owns whole write units (the plan proves it) and writes all of
them in one zarr call, which zarr runs concurrently on its own event loop: I/O
concurrency is zarr's ``async.concurrency`` per task, not the number of dask
threads. The graph is assembled layer by layer as plain dicts (no optimisation
pass over the whole array graph), so building it costs about as much as
enumerating the tasks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from toolkit import grid
from toolkit.plan import VariablePlan, WritePlan
from toolkit.storage import CountingStore, RequestCounts, rebind

__all__ = ["WriteSource", "build_write_graph", "write_block"]

_STAT_KEYS = (
    "tasks",
    "units",
    "nbytes",
    "gets",
    "sets",
    "deletes",
    "lists",
    "bytes_read",
    "bytes_written",
)


@dataclass(frozen=True)
class WriteSource:
    """What one variable's tasks read from and write to.

    Attributes
    ----------
    plan : VariablePlan
        The variable's plan.
    data : dask.array.Array
        The encoded values (as xarray would store them), any chunking.
    target : zarr.Array[Any]
        The created or opened array, bound to the plain (unwrapped) store.
    """

    plan: VariablePlan
    data: da.Array
    target: zarr.Array[Any]


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.]+", "_", name)[:60] or "var"


def write_block(
    block: np.ndarray, target: zarr.Array[Any], region: tuple[slice, ...], nunits: int
) -> dict[str, int]:
    """Write one task's block: whole units, one concurrent zarr call.

    Returns the task's measured figures (requests by kind, bytes) so that the
    report holds what really happened, wherever the task ran.
    """
    counts = RequestCounts()
    rebind(target, CountingStore(target.store, counts))[region] = block
    return {"tasks": 1, "units": nunits, "nbytes": int(block.nbytes), **counts.as_dict()}


def summarize(results: Sequence[Mapping[str, int]], started: float) -> dict[str, float]:
    """Add up the figures of every write task (runs as the graph's last task)."""
    out: dict[str, float] = dict.fromkeys(_STAT_KEYS, 0)
    for r in results:
        for k in _STAT_KEYS:
            out[k] += r[k]
    out["finished"] = time.time()
    out["started"] = started
    return out


def build_write_graph(plan: WritePlan, sources: Sequence[WriteSource]) -> Delayed:
    """One graph writing every variable of ``plan``; computes to the summed figures.

    Parameters
    ----------
    plan : WritePlan
        A validated plan.
    sources : sequence of WriteSource
        One per planned variable.
    """
    layers: dict[str, Any] = {}
    deps: dict[str, set[str]] = {}
    write_keys: list[tuple[Any, ...]] = []
    token = tokenize(plan.target, plan.mode, [(s.plan, s.data.name) for s in sources])
    for src in sources:
        vp = src.plan
        data = src.data
        if data.chunks != vp.task_chunks:
            data = data.rechunk(vp.task_chunks)
        hlg = data.__dask_graph__()
        assert isinstance(hlg, HighLevelGraph)
        layers.update(hlg.layers)
        deps.update(hlg.dependencies)

        name = f"toolkit-write-{_safe(vp.name)}-{token}"
        tkey = f"toolkit-target-{_safe(vp.name)}-{token}"
        # The target is its own key: shipped to each worker once, not once per task.
        layers[tkey] = {tkey: src.target}
        deps[tkey] = set()
        own = vp._ownership
        axis_edges = [grid.edges(c) + o for c, o in zip(vp.task_chunks, vp.offset, strict=True)]
        counts = [o.count for o in own]
        layer: dict[Any, Any] = {}
        for idx in np.ndindex(*data.numblocks):
            region = tuple(
                slice(int(e[i]), int(e[i + 1])) for e, i in zip(axis_edges, idx, strict=True)
            )
            nunits = 1
            for c, i in zip(counts, idx, strict=True):
                nunits *= int(c[i])
            key = (name, *idx)
            layer[key] = (write_block, (data.name, *idx), tkey, region, nunits)
            write_keys.append(key)
        layers[name] = layer
        deps[name] = {data.name, tkey}

    fin = f"toolkit-finalize-{token}"
    layers[fin] = {fin: (summarize, list(write_keys), time.time())}
    deps[fin] = {s for s in layers if s.startswith("toolkit-write-")}
    return Delayed(fin, HighLevelGraph(layers, deps), layer=fin)
