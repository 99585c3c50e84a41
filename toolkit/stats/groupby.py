"""Grouped statistics: xarray's groupers resolved into codes, partial states per group.

``toolkit.stats(..., groupby=...)`` takes what xarray's ``groupby`` and
``resample`` take (a coordinate or virtual coordinate name, a DataArray of
labels, a mapping of names to :mod:`xarray.groupers` objects, or several).
Each grouper is factorized once, by xarray itself, into integer codes along
one dim (``-1`` for values in no group) and the output labels, so the result
has xarray's group dims, labels and empty groups.

The graph is :func:`toolkit.stats`'s, with partial states keyed by group: a
chunk task reduces each group present in its block (a sub-block of the
values along the grouped dims) into an ordinary partial state, so its size
grows with the groups present in the chunk, not with all of them; combine
tasks merge states of the same group, whichever chunks they came from; the
finalize task stacks the groups into one partial state whose leading axes
are the groups, and finalizes every statistic of every group at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from xarray.groupers import EncodedGroups, Grouper, UniqueGrouper

from toolkit.errors import StatsError
from toolkit.stats.aggregations import (
    Aggregation,
    Context,
    Partial,
    QuantileSketch,
    combine,
    exact_quantiles,
    finalize,
    partial,
)

__all__ = ["GroupBy", "Groups", "resolve", "whole"]

GroupBy = Hashable | xr.DataArray | Mapping[Any, Grouper] | Sequence[Any]
"""What ``groupby=`` takes: xarray's spellings of one grouper or several."""

Grouped = dict[tuple[int, ...], Partial]
"""The partial state of a block, per group present: group codes -> partial state."""

_UNGROUPED = ("count", "nan_count", "histogram")  # stay 0 for a group with no member


@dataclass(frozen=True)
class Group:
    """One grouper resolved: codes along a dim, and the output's dim and labels.

    Attributes
    ----------
    dim : hashable
        The input dim it groups along.
    codes : numpy.ndarray
        The group of each position along ``dim`` (int64; -1 for none).
    out_dim : hashable
        The result's dim for the groups (xarray's name: ``month``, ``time``, ``x_bins``).
    coords : xarray.Coordinates
        The result's coordinates along ``out_dim`` (every group, empty ones too).
    label : str
        How the grouper was asked for, for messages and attributes.
    """

    dim: Hashable
    codes: np.ndarray
    out_dim: Hashable
    coords: xr.Coordinates
    label: str

    @property
    def size(self) -> int:
        """Number of groups."""
        return int(self.coords.sizes[self.out_dim])


@dataclass(frozen=True)
class Groups:
    """All groupers of a request, in order."""

    groups: tuple[Group, ...]

    @property
    def dims(self) -> tuple[Hashable, ...]:
        """The input dims grouped along, each once, in the groupers' order."""
        return tuple(dict.fromkeys(g.dim for g in self.groups))

    @property
    def shape(self) -> tuple[int, ...]:
        """Groups per grouper: the leading shape of the finalized result."""
        return tuple(g.size for g in self.groups)

    @property
    def out_dims(self) -> tuple[Hashable, ...]:
        """The result's group dims, in the groupers' order."""
        return tuple(g.out_dim for g in self.groups)

    def out_order(self, dims: Sequence[Hashable], kept: Sequence[Hashable]) -> list[Hashable]:
        """The dim order of xarray's result.

        One grouper's groups take the place of its dim; several groupers'
        come after the kept dims, in the groupers' order.
        """
        if len(self.groups) > 1:
            return [*(d for d in dims if d in kept), *self.out_dims]
        order: list[Hashable] = []
        for d in dims:
            if d in kept:
                order.append(d)
            elif d == self.groups[0].dim:
                order.append(self.groups[0].out_dim)
        return order

    def any_empty(self) -> bool:
        """Whether some combination of groups has no member (its statistics are NaN)."""
        present = 1
        for dim in self.dims:
            idx = [j for j, g in enumerate(self.groups) if g.dim == dim]
            codes = np.stack([self.groups[j].codes for j in idx])
            codes = codes[:, (codes >= 0).all(axis=0)]
            present *= np.unique(codes, axis=1).shape[1] if codes.size else 0
        return present < math.prod(self.shape)

    def describe(self) -> str:
        """The groupers, as the result's ``groupby`` attribute says them."""
        return ", ".join(g.label for g in self.groups)


def resolve(ds: xr.Dataset, groupby: GroupBy, reduce_dims: Sequence[Hashable]) -> Groups:
    """Factorize each grouper of ``groupby`` with xarray's own Grouper API.

    Raises
    ------
    toolkit.errors.StatsError
        An unknown coordinate, labels that are not 1-D or do not align with
        the data, a grouper along a dim that is not reduced, a grouper that is
        not an :class:`xarray.groupers.Grouper`, or clashing output dims.
    """
    items: list[tuple[Hashable | xr.DataArray, Grouper]]
    if isinstance(groupby, Mapping):
        items = list(groupby.items())
    elif isinstance(groupby, str | xr.DataArray) or not isinstance(groupby, Sequence):
        items = [(groupby, UniqueGrouper())]
    else:
        items = [(g, UniqueGrouper()) for g in groupby]
    if not items:
        raise StatsError("groupby is empty: give a coordinate name, labels or groupers")
    groups = []
    for key, grouper in items:
        if not isinstance(grouper, Grouper):
            raise StatsError(
                f"groupby={{{key!r}: ...}} takes xarray.groupers objects (UniqueGrouper(), "
                f"BinGrouper(bins=...), TimeResampler('1D')), got {type(grouper).__name__}"
            )
        labels, label = _labels(ds, key)
        if isinstance(groupby, Mapping):
            label = f"{label}: {type(grouper).__name__}"
        dim = labels.dims[0]
        if dim not in reduce_dims:
            raise StatsError(
                f"groupby {label} is along {dim!r}, which is not reduced "
                f"(dim={list(map(str, reduce_dims))}); add {dim!r} to dim"
            )
        try:
            encoded: EncodedGroups = grouper.factorize(labels)
        except (ValueError, TypeError, KeyError) as err:
            raise StatsError(f"groupby {label}: {err}") from err
        codes = np.asarray(encoded.codes.values, dtype=np.int64)
        out_dims = list(encoded.coords.dims)
        if codes.shape != (ds.sizes[dim],) or len(out_dims) != 1:
            raise StatsError(f"groupby {label}: a grouper must give one group per {dim!r} value")
        coords = encoded.coords
        if coords.sizes[out_dims[0]] != len(encoded.full_index):
            # A resample's coords are the bins with members; xarray's result has
            # every bin (codes index those), the empty ones too.
            index = encoded.full_index.rename(out_dims[0])
            coords = xr.Coordinates({out_dims[0]: index})
        groups.append(Group(dim, codes, out_dims[0], coords, label))
    out = Groups(tuple(groups))
    names = out.out_dims
    clash = [n for n in names if names.count(n) > 1]
    if clash:
        raise StatsError(f"two groupers name their groups {clash[0]!r}; rename one's labels")
    kept = [d for d in ds.dims if d not in reduce_dims]
    taken = [n for n in names if n in kept]
    if taken:
        raise StatsError(f"groups named {taken[0]!r} would clash with the kept dim {taken[0]!r}")
    return out


def _labels(ds: xr.Dataset, key: Hashable | xr.DataArray) -> tuple[xr.DataArray, str]:
    if isinstance(key, xr.DataArray):
        if key.name is None:
            raise StatsError("groupby labels (a DataArray) need a name: the result's group dim")
        label = f"labels {key.name!r}"
        labels = key
        if labels.ndim != 1 or labels.dims[0] not in ds.dims:
            raise StatsError(
                f"groupby {label} must be 1-D along one of the data's dims "
                f"({', '.join(map(repr, ds.dims))}); its dims are {labels.dims}"
            )
        dim = labels.dims[0]
        if labels.size != ds.sizes[dim]:
            raise StatsError(
                f"groupby {label} has {labels.size} values along {dim!r}; the data has "
                f"{ds.sizes[dim]}"
            )
        try:
            xr.align(labels.coords.to_dataset(), ds.coords.to_dataset(), join="exact")
        except ValueError as err:
            raise StatsError(
                f"groupby {label} do not align with the data along {dim!r}: {err}"
            ) from err
    else:
        label = repr(key)
        try:
            labels = ds[key]
        except (KeyError, AttributeError):  # AttributeError: "time.mnth"
            coords = ", ".join(map(repr, ds.coords)) or "none"
            raise StatsError(
                f"groupby {label}: no such coordinate or virtual coordinate "
                f"('time.month', 'time.season', ...); the coordinates are {coords}"
            ) from None
        if labels.ndim != 1:
            raise StatsError(f"groupby {label} must be 1-D; its dims are {labels.dims}")
    # Labels are one value per position along one dim: small, read once here.
    return labels.compute(), label


# Graph tasks -----------------------------------------------------------------


def chunk(
    x: np.ndarray,
    *arrays: np.ndarray,
    axes: tuple[int, ...],
    group_axes: tuple[int, ...],
    aggs: Sequence[Aggregation],
    quantiles: Sequence[float] = (),
) -> Grouped:
    """The partial state of each group present in a block.

    ``arrays[j]`` are grouper ``j``'s codes along axis ``group_axes[j]`` for
    this block (the block's length along that axis, 1 along the others). With
    ``quantiles``, ``arrays`` go on with one array per grouper, in the same
    layout, of whether each position's group lies wholly in this block (see
    :func:`whole`): a group that does has its quantiles answered exactly here
    (:func:`~toolkit.stats.aggregations.exact_quantiles`), which costs less
    than its sketch, and its state is those quantiles, which no other block's
    state merges with.
    """
    x = np.asarray(x)
    codes = arrays[: len(group_axes)]
    flags = arrays[len(group_axes) :] if quantiles else ()
    # Per grouped axis: the groupers' code tuples present, their positions,
    # and whether all of those positions' groups are whole in this block.
    per_axis: list[tuple[int, list[int], list[tuple[tuple[int, ...], np.ndarray, bool]]]] = []
    for axis in dict.fromkeys(group_axes):
        which = [j for j, a in enumerate(group_axes) if a == axis]
        stacked = np.stack([np.asarray(codes[j]).reshape(-1) for j in which])
        valid = np.flatnonzero((stacked >= 0).all(axis=0))
        if valid.size == 0:
            return {}
        here = (
            np.stack([np.asarray(flags[j]).reshape(-1) for j in which]).all(axis=0)
            if flags
            else np.zeros(stacked.shape[1], bool)
        )
        keys, inverse = np.unique(stacked[:, valid], axis=1, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(keys.shape[1] + 1))
        members = []
        for i in range(keys.shape[1]):
            idx = valid[order[bounds[i] : bounds[i + 1]]]
            members.append((tuple(int(c) for c in keys[:, i]), idx, bool(here[idx].all())))
        per_axis.append((axis, which, members))
    sketches = [a for a in aggs if isinstance(a, QuantileSketch)]
    rest = [a for a in aggs if not isinstance(a, QuantileSketch)]
    out: Grouped = {}
    for combo in itertools.product(*(m for _, _, m in per_axis)):
        sub = x
        key = [0] * len(group_axes)
        for (axis, which, _), (codes_here, idx, _) in zip(per_axis, combo, strict=True):
            for j, c in zip(which, codes_here, strict=True):
                key[j] = c
            # Runs of a group (months, days of sorted time) are views, not copies.
            if idx[-1] - idx[0] + 1 == idx.size:
                sub = sub[(slice(None),) * axis + (slice(int(idx[0]), int(idx[-1]) + 1),)]
            else:
                sub = np.take(sub, idx, axis=axis)
        if sketches and all(w for _, _, w in combo):
            state = partial(sub, axes, rest)
            for a in sketches:
                state[a.key] = {"exact": exact_quantiles(sub, axes, quantiles)}
        else:
            state = partial(sub, axes, aggs)
        out[tuple(key)] = state
    return out


def whole(
    codes: Sequence[np.ndarray],
    group_axes: Sequence[int],
    chunks: Sequence[Sequence[int]],
    axes: Sequence[int],
) -> list[np.ndarray]:
    """Per grouper, whether each position's group lies wholly in that position's block.

    A group (the groupers' codes along one axis) is whole in a block when
    all its positions along that axis are in that block and the block spans
    every other reduced axis that no grouper is along. A state of several
    groupers' groups is whole when each of its groups is. ``chunks`` are the
    data's chunks, ``axes`` the reduced axes.
    """
    grouped = set(group_axes)
    if any(len(chunks[a]) > 1 for a in axes if a not in grouped):
        return [np.zeros(len(c), bool) for c in codes]
    out: list[np.ndarray] = [np.zeros(0, bool)] * len(codes)
    for axis in dict.fromkeys(group_axes):
        which = [j for j, a in enumerate(group_axes) if a == axis]
        stacked = np.stack([np.asarray(codes[j], np.int64) for j in which])
        block = np.repeat(np.arange(len(chunks[axis])), chunks[axis])
        ok = np.zeros(stacked.shape[1], bool)
        valid = np.flatnonzero((stacked >= 0).all(axis=0))
        if valid.size:
            _, inverse = np.unique(stacked[:, valid], axis=1, return_inverse=True)
            inverse = inverse.reshape(-1)
            first = np.full(inverse.max() + 1, np.iinfo(np.int64).max)
            last = np.full(inverse.max() + 1, -1)
            np.minimum.at(first, inverse, block[valid])
            np.maximum.at(last, inverse, block[valid])
            ok[valid] = (first == last)[inverse]
        for j in which:
            out[j] = ok
    return out


def combine_groups(
    parts: Sequence[Grouped],
    aggs: Sequence[Aggregation],
    start: int = 0,
    stop: int | None = None,
) -> Grouped:
    """Merge grouped partial states: each group's partials, wherever they came from.

    With ``stop``, only the groups from ``start`` to ``stop`` along the first
    group dim (the others are another task's).
    """
    by: dict[tuple[int, ...], list[Partial]] = {}
    for p in parts:
        for key, state in p.items():
            if stop is None or start <= key[0] < stop:
                by.setdefault(key, []).append(state)
    return {key: combine(states, aggs) for key, states in by.items()}


def finalize_groups(
    part: Grouped,
    names: Sequence[str],
    context: Context,
    aggs: Sequence[Aggregation],
    group_shape: tuple[int, ...],
    first: int = 0,
) -> dict[str, np.ndarray]:
    """Every statistic of every group, shape ``group_shape + context.shape (+ extra)``.

    A group no chunk had (an empty resample bin, a bin with no value) is the
    partial state of no value: counts 0 and NaN statistics, as xarray's. With
    ``first``, the groups are those from ``first`` on along the first group
    dim, ``group_shape[0]`` of them (one finalize task of several), and
    ``part``'s other groups are left alone.
    """
    kept = context.shape
    dtype = context.dtype
    empty = partial(np.empty((0, *kept), dtype=dtype), (0,), aggs)
    ngroups = math.prod(group_shape)
    states: list[Partial] = [empty] * ngroups
    exact: dict[int, np.ndarray] = {}  # groups whose quantiles a chunk answered exactly
    for key, state in part.items():
        if not first <= key[0] < first + group_shape[0]:
            continue
        key = (key[0] - first, *key[1:])
        g = int(np.ravel_multi_index(key, group_shape))
        sketch = state.get("sketch")
        if sketch is not None and "exact" in sketch:
            exact[g] = sketch["exact"]
            state = {**state, "sketch": empty["sketch"]}
        states[g] = state
    stacked = _stack(states, aggs, math.prod(kept), group_shape, empty)
    ctx = dataclasses.replace(context, shape=(*group_shape, *kept))
    out = finalize(stacked, names, ctx)
    if exact and "quantiles" in out:
        shape = out["quantiles"].shape
        q = np.asarray(out["quantiles"]).reshape(ngroups, -1, len(context.quantiles))
        for g, values in exact.items():
            q[g] = values
        out["quantiles"] = q.reshape(shape)
        if not context.skipna and "count" in stacked:  # as finalize has it
            nan = np.asarray(stacked["count"]["size"] > stacked["count"]["n"])
            out["quantiles"][nan] = np.nan
    if "count" in stacked:
        none = np.asarray(stacked["count"]["size"]) == 0
        if none.any():
            for name, v in out.items():
                if name not in _UNGROUPED:
                    kind = v.dtype if v.dtype.kind == "f" else np.dtype(np.float64)
                    v = v.astype(kind, copy=True)  # float32 min and max stay float32
                    v[none] = np.nan  # no member at all: xarray's NaN, even for a sum
                    out[name] = v
    return out


def _stack(
    states: Sequence[Partial],
    aggs: Sequence[Aggregation],
    cells: int,
    group_shape: tuple[int, ...],
    empty: Partial,
) -> Partial:
    """One partial state whose leading axes are the groups, from one per group (C order)."""
    out: Partial = {}
    for a in aggs:
        parts = [s[a.key] for s in states]
        template = empty[a.key]
        if isinstance(a, QuantileSketch):
            # Codes are cell * span + bucket: group g's cells come after g * cells.
            offsets = [np.asarray(p["codes"]) + g * cells * a.span for g, p in enumerate(parts)]
            out[a.key] = {
                "codes": np.concatenate(offsets) if offsets else np.zeros(0, np.int64),
                "counts": np.concatenate([np.asarray(p["counts"]) for p in parts])
                if parts
                else np.zeros(0, np.int64),
                "cells": len(parts) * cells,
            }
        else:
            out[a.key] = {
                # (No group at all: an empty stack of the right shape.)
                k: np.stack([np.asarray(p[k]) for p in parts or [template]])[: len(parts)].reshape(
                    *group_shape, *np.shape(template[k])
                )
                for k in template
            }
    return out
