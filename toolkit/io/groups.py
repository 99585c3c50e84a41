"""Opening stored groups, and what they hold: one way, with a known request cost."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import zarr
import zarr.errors
from zarr.abc.store import Store

__all__ = [
    "RESERVED_PREFIX",
    "ExistingGroup",
    "array_dims",
    "hide_reserved_prefix_warnings",
    "open_existing",
    "open_group",
    "open_settled",
]

RESERVED_PREFIX = ".toolkit"
"""Top-level prefix (inside the group) where toolkit keeps its own state."""

_RESERVED_WARNING = rf"Object at {re.escape(RESERVED_PREFIX)} is not recognized"


def hide_reserved_prefix_warnings() -> None:
    """Silence zarr's warning about toolkit's own prefix in group listings.

    zarr warns of any key that is no array or group while it lists a group's
    members; for ``.toolkit/`` the warning says nothing useful. Installed when
    toolkit resolves a store (never on import), for that prefix's message only,
    and again whenever something (``warnings.catch_warnings``, a test runner)
    has restored the filters without it.
    """
    if not any(
        f[0] == "ignore" and f[1] is not None and f[1].pattern == _RESERVED_WARNING
        for f in warnings.filters
    ):
        warnings.filterwarnings("ignore", message=_RESERVED_WARNING, category=Warning)


@dataclass(frozen=True)
class ExistingGroup:
    """What the target store already holds (metadata only)."""

    zarr_format: int
    arrays: Mapping[str, zarr.Array[Any]]
    dims: Mapping[str, tuple[str, ...]]

    def sizes(self) -> dict[str, int]:
        """The length of each dimension, from the first array that has it."""
        out: dict[str, int] = {}
        for name, arr in self.arrays.items():
            for d, n in zip(self.dims[name], arr.shape, strict=True):
                out.setdefault(d, n)
        return out


def array_dims(arr: zarr.Array[Any]) -> tuple[str, ...]:
    """The dimension names of a stored array (v3 metadata, or xarray's v2 attribute)."""
    names = getattr(arr.metadata, "dimension_names", None)
    if names:
        return tuple(str(n) for n in names)
    dims = arr.attrs.get("_ARRAY_DIMENSIONS")
    if isinstance(dims, list):
        return tuple(str(d) for d in dims)
    return tuple(f"dim_{i}" for i in range(arr.ndim))


def open_existing(store: Store, group: str | None) -> ExistingGroup | None:
    """What ``group`` of ``store`` holds, read only; None if there is no group."""
    ro = store if store.read_only else store.with_read_only(True)
    try:
        g = open_group(ro, group, use_consolidated=None)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError, ValueError):
        return None
    arrays = {name: a for name, a in g.arrays() if isinstance(a, zarr.Array)}
    return ExistingGroup(
        zarr_format=g.metadata.zarr_format,
        arrays=arrays,
        dims={k: array_dims(a) for k, a in arrays.items()},
    )


def open_group(
    store: Store,
    group: str | None,
    mode: Literal["r", "r+"] = "r",
    *,
    use_consolidated: bool | None = False,
) -> zarr.Group:
    """Open an existing group, trying Zarr v3's metadata first, then v2's.

    ``zarr_format=None`` would probe every format's keys at once (several requests
    per open); toolkit's own writes are v3 by default, so v3 first is one request.
    ``use_consolidated=None`` reads consolidated metadata where there is some.
    """
    last: Exception | None = None
    for fmt in (3, 2):
        try:
            return zarr.open_group(
                store,
                path=group or "",
                mode=mode,
                use_consolidated=use_consolidated,
                zarr_format=fmt,
            )
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            last = e
    assert last is not None
    raise last


def open_settled(store: Store, group: str | None = None, **kwargs: Any) -> Any:
    """:func:`xarray.open_zarr`, waiting out a publication of appended rows.

    Appended rows become visible by growing each array's stored length, one
    metadata document per array, so for the time of one round of requests a
    reader can find the arrays of a dimension disagreeing (xarray's
    "conflicting sizes"). The open is tried again for up to about two seconds;
    a store that still disagrees (a publication cut short) is shown as long as
    its shortest array (:func:`toolkit.io.extent.consistent_view`).
    """
    import time

    import xarray as xr

    from toolkit.io.extent import consistent_view

    ro = store if store.read_only else store.with_read_only(True)
    delay = 0.01
    deadline = time.monotonic() + 2.0
    while True:
        try:
            return xr.open_zarr(ro, group=group, **kwargs)
        except ValueError as e:
            if "conflicting sizes" not in str(e):
                raise
            if time.monotonic() > deadline:
                # A publication cut short (its job killed): the rows every array
                # has are the visible ones, until a job finishes publishing.
                return xr.open_zarr(consistent_view(ro, group), group=group, **kwargs)
            time.sleep(delay)
            delay = min(0.5, delay * 2)
