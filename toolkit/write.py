"""Writes: plan, then graph, then execute.

:func:`to_zarr` is the one-call form; :func:`execute` runs a plan made by
:func:`toolkit.plan_write`. Array metadata, CF encoding and in-memory coordinates
go through xarray's own Zarr backend, so stores written here open in xarray like
any other; the chunk data goes through toolkit's graph, one task per group of
whole write units.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import time
import warnings
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import xarray as xr
import zarr
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from xarray.backends.common import ArrayWriter
from xarray.backends.writers import dump_to_store, get_writable_zarr_store

from toolkit._progress import compute_with_progress
from toolkit._render import html_table, text_table
from toolkit.errors import ToolkitError, WriteError
from toolkit.graph import WriteSource, build_write_graph
from toolkit.plan import DEFAULT_MAX_TASK_BYTES, WriteMode, WritePlan, _mib, plan_write
from toolkit.storage import StoreLike, rebind

__all__ = ["UnknownOptionError", "WriteReport", "execute", "to_zarr"]


class UnknownOptionError(ToolkitError, TypeError):
    """A keyword the function does not take."""


@dataclass(frozen=True)
class WriteReport:
    """What a write did, measured.

    Attributes
    ----------
    target : str
        Secret-free store description.
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
    plan: WritePlan = field(repr=False, compare=False)

    @property
    def throughput(self) -> float:
        """Uncompressed bytes per second."""
        return self.nbytes / self.seconds if self.seconds > 0 else float("inf")

    def _rows(self) -> list[dict[str, str]]:
        req = ", ".join(f"{k} {v}" for k, v in self.requests.items() if v)
        ratio = self.nbytes / self.stored_bytes if self.stored_bytes else float("nan")
        return [
            {"": "target", "value": self.target},
            {"": "variables", "value": ", ".join(self.variables) or "-"},
            {"": "tasks / units", "value": f"{self.tasks} / {self.units}"},
            {
                "": "bytes",
                "value": f"{_mib(self.nbytes)} ({_mib(self.stored_bytes)} stored, {ratio:.2f}x)",
            },
            {
                "": "time",
                "value": f"{self.seconds:.2f} s ({self.metadata_seconds:.2f} s "
                f"metadata), {_mib(self.throughput)}/s",
            },
            {"": "requests", "value": req or "-"},
        ]

    def __repr__(self) -> str:
        return "WriteReport\n" + text_table(self._rows())

    def _repr_html_(self) -> str:
        return "<div><b>WriteReport</b>" + html_table(self._rows()) + "</div>"


class _CapturingWriter(ArrayWriter):
    """xarray's writer, except that dask sources are captured, not stored.

    In-memory sources (coordinates) are written by xarray as usual.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.captured: dict[str, tuple[da.Array, zarr.Array[Any]]] = {}

    def add(self, source: Any, target: Any, region: Any = None) -> None:
        if isinstance(source, da.Array):
            self.captured[target.basename] = (source, target)
        else:
            super().add(source, target, region)  # type: ignore[no-untyped-call]


def _write_metadata(plan: WritePlan) -> list[WriteSource]:
    """Create or resize arrays and write small variables, through xarray."""
    ds = plan.dataset
    # In-memory data variables become dask arrays chunked as their tasks, so that
    # they are written in parallel like the rest.
    for vp in plan.variables:
        var = ds.variables[vp.name].transpose(*vp.dims)
        if var.chunks is None:
            var = var.chunk(dict(zip(vp.dims, vp.task_chunks, strict=True)))
        ds = ds.assign({vp.name: var})
    zstore = get_writable_zarr_store(
        plan.store,
        mode=plan.mode,  # type: ignore[arg-type]
        group=plan.group,
        consolidated=plan.consolidated,
        append_dim=plan.append_dim,
        region=dict(plan.region) if plan.region is not None else None,
        safe_chunks=False,  # toolkit's plan makes every task own whole units
        zarr_format=plan.zarr_format,
        write_empty_chunks=plan.write_empty_chunks,
    )
    ds = zstore._validate_and_autodetect_region(ds)
    writer = _CapturingWriter()
    with warnings.catch_warnings():
        # zarr warns that v3 consolidated metadata is an extension; xarray chose it.
        warnings.filterwarnings("ignore", "Consolidated metadata", category=UserWarning)
        dump_to_store(ds, zstore, writer, encoding=dict(plan.encoding))
    out = []
    for vp in plan.variables:
        source, target = writer.captured[vp.name]
        if target.shape != vp.array_shape or tuple(target.chunks) != vp.chunks:
            raise WriteError(
                f"{vp.name!r}: the store changed between planning and writing "
                f"(shape {target.shape}, chunks {target.chunks}; planned {vp.array_shape}, "
                f"{vp.chunks}); another writer is active. Plan again."
            )
        out.append(WriteSource(vp, source, rebind(target, plan.store)))
    return out


def execute(
    plan: WritePlan, *, compute: bool = True, progress: bool = True
) -> WriteReport | Delayed:
    """Run a plan: validate it, write metadata, then the data graph.

    Parameters
    ----------
    plan : WritePlan
        From :func:`toolkit.plan_write`.
    compute : bool
        If False, write metadata now and return a dask ``Delayed`` that writes
        the data and computes to the :class:`WriteReport`.
    progress : bool
        Show a progress bar (tqdm, or distributed's when a client is active).
    """
    plan.validate()
    t0 = time.time()
    sources = _write_metadata(plan)
    meta_seconds = time.time() - t0
    graph = build_write_graph(plan, sources)
    # Built by hand: dask's delayed() would traverse the plan, find the source
    # dataset in it, and gather all of it into one task just to hand it over.
    key = f"toolkit-report-{graph.key}"
    task = (functools.partial(_report, plan=plan, t0=t0, meta=meta_seconds), graph.key)
    base = graph.__dask_graph__()
    assert isinstance(base, HighLevelGraph)
    hlg = HighLevelGraph({**base.layers, key: {key: task}}, {**base.dependencies, key: {graph.key}})
    report = Delayed(key, hlg, layer=key)
    if not compute:
        return report
    result: WriteReport = compute_with_progress(
        report,
        total=plan.ntasks,
        desc="toolkit write",
        prefix="toolkit-write-",
        enabled=progress,
    )
    return result


def _report(stats: Mapping[str, float], plan: WritePlan, t0: float, meta: float) -> WriteReport:
    return WriteReport(
        target=plan.target,
        variables=tuple(v.name for v in plan.variables),
        tasks=int(stats["tasks"]),
        units=int(stats["units"]),
        nbytes=int(stats["nbytes"]),
        stored_bytes=int(stats["bytes_written"]),
        seconds=time.time() - t0,
        metadata_seconds=meta,
        requests={k: int(stats[k]) for k in ("gets", "sets", "deletes", "lists")},
        plan=plan,
    )


_XARRAY_ONLY = {
    "safe_chunks": "toolkit always writes chunk-safe; drop it",
    "align_chunks": "toolkit always aligns tasks to chunks and shards; drop it",
    "chunkmanager_store_kwargs": "toolkit builds its own graph; drop it",
}


def to_zarr(
    ds: xr.Dataset,
    store: StoreLike,
    mode: WriteMode | None = None,
    *,
    append_dim: Hashable | None = None,
    region: Mapping[Hashable, slice | Literal["auto"]] | Literal["auto"] | None = None,
    encoding: Mapping[Hashable, Mapping[str, Any]] | None = None,
    zarr_format: int | None = None,
    consolidated: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
    group: str | None = None,
    write_empty_chunks: bool | None = None,
    compute: bool = True,
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES,
    progress: bool = True,
    **unknown: Any,
) -> WriteReport | Delayed:
    """Write ``ds`` to Zarr in parallel, with every task owning whole stored objects.

    Takes the parameters of :meth:`xarray.Dataset.to_zarr` with the same
    meanings; dask chunks need not match the Zarr chunks or shards (the plan
    regroups them, see :func:`toolkit.plan_write`).

    Parameters
    ----------
    ds : xarray.Dataset
        Data to write.
    store : str, os.PathLike or zarr Store
        Target path, URL or store.
    mode, append_dim, region, encoding, zarr_format, consolidated : optional
        As in :meth:`xarray.Dataset.to_zarr`.
    storage_options, group, write_empty_chunks : optional
        As in :meth:`xarray.Dataset.to_zarr`.
    compute : bool
        If False, return a ``Delayed`` writing the data (metadata is written now).
    max_task_bytes : int
        Memory target per task.
    progress : bool
        Show progress.

    Returns
    -------
    WriteReport or dask.delayed.Delayed

    Raises
    ------
    toolkit.errors.PlanError
        Before anything is written, on any invalid input.
    """
    if unknown:
        msgs = []
        for k in unknown:
            if k in _XARRAY_ONLY:
                msgs.append(f"{k!r}: {_XARRAY_ONLY[k]}")
                continue
            options = [p for p in inspect.signature(to_zarr).parameters if p != "unknown"]
            close = difflib.get_close_matches(k, options, 1)
            msgs.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UnknownOptionError("to_zarr() got unknown options: " + "; ".join(msgs))
    plan = plan_write(
        ds,
        store,
        mode=mode,
        append_dim=append_dim,
        region=region,
        encoding=encoding,
        zarr_format=zarr_format,
        consolidated=consolidated,
        storage_options=storage_options,
        group=group,
        write_empty_chunks=write_empty_chunks,
        max_task_bytes=max_task_bytes,
    )
    return execute(plan, compute=compute, progress=progress)
