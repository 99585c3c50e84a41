"""The chunks (and shards) a copy or an ingest gives a variable that has none yet."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import xarray as xr

from toolkit.errors import PlanError
from toolkit.grid import default_chunks

__all__ = ["choose_layout"]


def choose_layout(
    var: xr.Variable, chunks: Mapping[Hashable, int], shards: Mapping[Hashable, int]
) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Target chunks (and shards) of one variable for :func:`copy`."""
    preferred = var.encoding.get("preferred_chunks") or {}
    guess = default_chunks(var.shape, max(var.dtype.itemsize, 1))
    out = []
    for i, (d, n) in enumerate(zip(var.dims, var.shape, strict=True)):
        c = chunks.get(d, preferred.get(d, guess[i]))
        out.append(max(1, min(int(c), max(n, 1))))
    if not any(d in shards for d in var.dims):
        return tuple(out), None
    sh = []
    for d, c, n in zip(var.dims, out, var.shape, strict=True):
        s = shards.get(d, c)
        if s % c:
            raise PlanError(
                f"--shards {d}={s} is not a whole multiple of the chunk {d}={c}; "
                f"use a multiple such as {d}={c * max(1, round(s / c))}"
            )
        sh.append(min(s, -(-max(n, 1) // c) * c))
    return tuple(out), tuple(sh)
