"""The ``ds.toolkit`` accessor: toolkit's writes as Dataset methods."""

from __future__ import annotations

from typing import Any

import xarray as xr
from dask.delayed import Delayed

from toolkit.plan import WritePlan, plan_write
from toolkit.storage import StoreLike
from toolkit.write import WriteReport, to_zarr

__all__ = ["ToolkitAccessor"]


@xr.register_dataset_accessor("toolkit")
class ToolkitAccessor:
    """``ds.toolkit.to_zarr(...)`` and ``ds.toolkit.plan_write(...)``."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def to_zarr(self, store: StoreLike, *args: Any, **kwargs: Any) -> WriteReport | Delayed:
        """:func:`toolkit.to_zarr` on this dataset."""
        return to_zarr(self._ds, store, *args, **kwargs)

    def plan_write(self, store: StoreLike, **kwargs: Any) -> WritePlan:
        """:func:`toolkit.plan_write` on this dataset."""
        return plan_write(self._ds, store, **kwargs)
