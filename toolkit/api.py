"""The front door of writes: :func:`to_zarr`, with xarray's parameters.

It hands each write to the path that does it safely: one job
(:func:`~toolkit.write.execute.write_dataset`), an append
(:func:`~toolkit.append`) or a partition overwrite
(:func:`~toolkit.overwrite_partitions`).
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Mapping
from typing import Any, Literal

import xarray as xr
from dask.delayed import Delayed

from toolkit.errors import PlanError
from toolkit.io.stores import StoreLike
from toolkit.io.throttle import Throttle
from toolkit.write.execute import as_dataset, reject_unknown, write_dataset
from toolkit.write.manyjobs import append, overwrite_partitions
from toolkit.write.plan import DEFAULT_MAX_TASK_BYTES, WriteMode
from toolkit.write.report import WriteReport
from toolkit.write.tree import TreeWriteReport, write_tree

__all__ = ["to_zarr"]


def to_zarr(
    ds: xr.Dataset | xr.DataArray | xr.DataTree,
    store: StoreLike,
    mode: WriteMode | Literal["overwrite-partitions"] | None = None,
    *,
    append_dim: Hashable | None = None,
    partition: Hashable | None = None,
    region: Mapping[Hashable, slice | Literal["auto"]] | Literal["auto"] | None = None,
    encoding: Mapping[Hashable, Mapping[str, Any]] | None = None,
    zarr_format: int | None = None,
    consolidated: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
    group: str | None = None,
    write_inherited_coords: bool = False,
    write_empty_chunks: bool | None = None,
    compute: bool = True,
    safe_chunks: bool = True,
    align_chunks: bool = False,
    chunkmanager_store_kwargs: Mapping[str, Any] | None = None,
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES,
    throttle: Throttle | Literal[False] | None = None,
    progress: bool = True,
    **unknown: Any,
) -> WriteReport | TreeWriteReport | Delayed:
    """Write ``ds`` to Zarr in parallel, with every task owning whole stored objects.

    Takes the parameters of :meth:`xarray.Dataset.to_zarr` with the same
    meanings; dask chunks need not match the Zarr chunks or shards (the plan
    regroups them, see :func:`toolkit.plan_write`).

    Parameters
    ----------
    ds : xarray.Dataset, xarray.DataArray or xarray.DataTree
        Data to write; a DataArray is stored as :meth:`xarray.DataArray.to_zarr`
        stores it, a DataTree as :meth:`xarray.DataTree.to_zarr` stores it: one
        plan, one metadata round and one graph for all its nodes
        (:func:`toolkit.write.tree.plan_tree_write`; ``encoding`` is then by node
        path, and ``append_dim`` appends every node that has the dimension).
    store : str, os.PathLike or zarr Store
        Target path, URL or store.
    mode, append_dim, region, encoding, zarr_format, consolidated : optional
        As in :meth:`xarray.Dataset.to_zarr`, and safe with concurrent jobs:
        an append reserves its rows through the store's commit log
        (:func:`toolkit.append`), and a region write read-modify-writes the
        units it shares with other regions conditionally (no update is lost).
        ``mode="overwrite-partitions"`` replaces the partitions present in
        ``ds`` (:func:`toolkit.overwrite_partitions`).
    partition : str, optional
        With ``mode="overwrite-partitions"``: the coordinate labelling partitions.
    storage_options, group, write_empty_chunks : optional
        As in :meth:`xarray.Dataset.to_zarr`.
    write_inherited_coords : bool
        DataTrees only, as in :meth:`xarray.DataTree.to_zarr`: store inherited
        coordinates again in every node.
    compute : bool
        If False, return a ``Delayed`` writing the data (metadata is written now).
        An append or a partition overwrite beside other jobs is checked now and
        runs whole when computed: its rows are reserved then, never shown empty.
    safe_chunks, align_chunks : bool
        Taken for compatibility with xarray, and without effect: every write is
        chunk-safe, whatever the dask chunks, because the plan regroups them to
        whole chunks or shards (what ``align_chunks=True`` asks of xarray).
    chunkmanager_store_kwargs : dict, optional
        Taken for compatibility with xarray, and without effect: toolkit builds
        its own graph of write tasks.
    max_task_bytes : int
        Memory target per task.
    throttle : Throttle, False or None
        Request budget, retries and in-flight cap for the store (cluster-wide):
        ``None`` takes the URL's defaults (none for local paths), ``False`` none.
    progress : bool
        Show progress.

    Returns
    -------
    WriteReport, TreeWriteReport (of a DataTree) or dask.delayed.Delayed

    Raises
    ------
    toolkit.errors.UnknownOptionError
        On a keyword not listed above (a :class:`TypeError`, as Python raises
        for an unexpected keyword), naming the closest parameter.
    toolkit.errors.PlanError
        Before anything is written, on any invalid input.
    toolkit.errors.WriteError
        When the data could not be written; ``err.record`` lists the units
        written and missing.

    Examples
    --------
    Dask chunks of 5 steps, stored in Zarr chunks of 4 (``Dataset.to_zarr``
    refuses them): each task gets whole chunks.

    >>> import numpy as np
    >>> import xarray as xr
    >>> import toolkit
    >>> ds = xr.Dataset(
    ...     {"t2m": (("time", "x"), np.arange(48.0).reshape(12, 4))},
    ...     coords={"time": np.arange(12)},
    ... ).chunk({"time": 5})
    >>> enc = {"t2m": {"chunks": (4, 4)}}
    >>> report = toolkit.to_zarr(ds, "example.zarr", encoding=enc, progress=False)
    >>> report.tasks, report.units
    (3, 3)
    >>> later = ds.assign_coords(time=ds.time + 12)
    >>> _ = toolkit.to_zarr(later, "example.zarr", append_dim="time", progress=False)
    >>> toolkit.open_zarr("example.zarr").sizes["time"]
    24
    """
    reject_unknown(
        unknown, [p for p in inspect.signature(to_zarr).parameters if p != "unknown"], "to_zarr"
    )
    if isinstance(ds, xr.DataTree):
        if mode == "overwrite-partitions" or partition is not None:
            raise PlanError("mode='overwrite-partitions' takes a Dataset, not a DataTree")
        tree: TreeWriteReport | Delayed = write_tree(
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
            compute=compute,
            max_task_bytes=max_task_bytes,
            throttle=throttle,
            progress=progress,
            write_inherited_coords=write_inherited_coords,
        )
        return tree
    if write_inherited_coords:
        raise PlanError("write_inherited_coords applies to a DataTree only")
    ds = as_dataset(ds)
    job: dict[str, Any] = {
        "group": group,
        "storage_options": storage_options,
        "encoding": encoding,
        "zarr_format": zarr_format,
        "consolidated": consolidated,
        "write_empty_chunks": write_empty_chunks,
        "compute": compute,
        "max_task_bytes": max_task_bytes,
        "throttle": throttle,
        "progress": progress,
    }
    if mode == "overwrite-partitions":
        if partition is None or append_dim is not None or region is not None:
            raise PlanError(
                "mode='overwrite-partitions' needs partition=<coordinate name> "
                "and no append_dim or region"
            )
        replaced: WriteReport | Delayed = overwrite_partitions(ds, store, partition, **job)
        return replaced
    if partition is not None:
        raise PlanError("partition= only applies with mode='overwrite-partitions'")
    if append_dim is not None and mode in (None, "a") and region is None:
        appended: WriteReport | Delayed = append(ds, store, append_dim, **job)
        return appended
    return write_dataset(ds, store, mode=mode, append_dim=append_dim, region=region, **job)
