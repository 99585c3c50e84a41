"""A region of a zarr array in parts, for concurrent zarr calls.

zarr caps the requests of one call at its ``async.concurrency``, a setting of
the whole process that other code in it relies on: toolkit reads it and never
changes it. A task that may keep more requests in flight makes several calls at
once instead, one a part (:func:`zarr_parts`).
"""

from __future__ import annotations

from typing import Any

import zarr

from toolkit import grid

__all__ = ["local_slices", "zarr_parts"]


def zarr_parts(
    array: zarr.Array[Any], region: tuple[slice, ...], inflight: int
) -> list[tuple[slice, ...]]:
    """``region`` of ``array`` in as many parts as zarr calls keep ``inflight`` requests going.

    ``inflight`` over zarr's cap per call, rounded up: the calls may ask for a
    few more than ``inflight``, and the budget below them holds the cap
    (rounded down, a task's requests waited for a call's slot while the budget
    had room: 4% slower writes over a 100 ms link). The parts are cut along
    the array's write units (chunks, or shards): no unit lies in two parts, so
    two calls never race on one stored object. One part (one call) when zarr's
    cap already allows ``inflight``, when zarr has no cap per call, or when
    ``region`` is no box (an integer, a step: dask folds a selection of a block
    into the block's read).
    """
    cap = zarr.config.get("async.concurrency", None)
    calls = max(1, -(-inflight // int(cap))) if cap else 1
    boxed = all(isinstance(sl, slice) and sl.step in (None, 1) for sl in region)
    if calls == 1 or not boxed or len(region) != array.ndim:
        return [region]
    box = [sl.indices(n)[:2] for sl, n in zip(region, array.shape, strict=True)]
    unit = array.shards or array.chunks
    return [tuple(slice(a, b) for a, b in part) for part in grid.split_box(box, unit, calls)]


def local_slices(part: tuple[slice, ...], region: tuple[slice, ...]) -> tuple[slice, ...]:
    """Where ``part`` (of :func:`zarr_parts`) lies inside the block of ``region``."""
    return tuple(
        slice(p.start - (r.start or 0), p.stop - (r.start or 0))
        for p, r in zip(part, region, strict=True)
    )
