"""The ``.toolkit`` accessors: toolkit's writes and statistics as xarray methods."""

from __future__ import annotations

from typing import Any

import xarray as xr
from dask.delayed import Delayed

from toolkit.api import to_zarr
from toolkit.io.stores import StoreLike
from toolkit.stats.compute import stats
from toolkit.write.plan import WritePlan, plan_write
from toolkit.write.report import WriteReport
from toolkit.write.tree import TreeWritePlan, TreeWriteReport, plan_tree_write

__all__ = ["ToolkitAccessor", "ToolkitArrayAccessor", "ToolkitTreeAccessor"]


@xr.register_dataset_accessor("toolkit")
class ToolkitAccessor:
    """``ds.toolkit.to_zarr(...)``, ``ds.toolkit.plan_write(...)``, ``ds.toolkit.stats(...)``."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def to_zarr(self, store: StoreLike, *args: Any, **kwargs: Any) -> WriteReport | Delayed:
        """:func:`toolkit.to_zarr` on this dataset."""
        out = to_zarr(self._ds, store, *args, **kwargs)
        assert not isinstance(out, TreeWriteReport)  # a dataset's write
        return out

    def plan_write(self, store: StoreLike, **kwargs: Any) -> WritePlan:
        """:func:`toolkit.plan_write` on this dataset."""
        return plan_write(self._ds, store, **kwargs)

    def stats(self, *args: Any, **kwargs: Any) -> xr.Dataset:
        """:func:`toolkit.stats` of this dataset."""
        return stats(self._ds, *args, **kwargs)


@xr.register_dataarray_accessor("toolkit")
class ToolkitArrayAccessor:
    """``da.toolkit.to_zarr(...)``, ``da.toolkit.stats(...)``."""

    def __init__(self, da: xr.DataArray) -> None:
        self._da = da

    def to_zarr(self, store: StoreLike, *args: Any, **kwargs: Any) -> WriteReport | Delayed:
        """:func:`toolkit.to_zarr` on this array, stored as ``DataArray.to_zarr`` stores it."""
        out = to_zarr(self._da, store, *args, **kwargs)
        assert not isinstance(out, TreeWriteReport)  # a dataset's write
        return out

    def stats(self, *args: Any, **kwargs: Any) -> xr.Dataset:
        """:func:`toolkit.stats` of this array."""
        return stats(self._da, *args, **kwargs)


@xr.register_datatree_accessor("toolkit")
class ToolkitTreeAccessor:
    """``tree.toolkit.to_zarr(...)``, ``tree.toolkit.plan_write(...)``."""

    def __init__(self, tree: xr.DataTree) -> None:
        self._tree = tree

    def to_zarr(self, store: StoreLike, *args: Any, **kwargs: Any) -> TreeWriteReport | Delayed:
        """:func:`toolkit.to_zarr` of this tree: all its nodes in one write."""
        out = to_zarr(self._tree, store, *args, **kwargs)
        assert not isinstance(out, WriteReport)  # a tree's write
        return out

    def plan_write(self, store: StoreLike, **kwargs: Any) -> TreeWritePlan:
        """:func:`toolkit.plan_tree_write` of this tree."""
        return plan_tree_write(self._tree, store, **kwargs)
