"""Mergeable aggregations: chunk -> partial state, combine(partials) -> partial, finalize.

Every statistic of :func:`toolkit.stats` is declared here as a function of a few
*components* of partial state (counts, central moments, extrema, exact integer
sums, histogram counts, a quantile sketch). A chunk is reduced once into the
components that the requested statistics need, partials are combined in a tree
of any shape, and each statistic is finalized from the combined components.

A partial is a ``dict`` of numpy arrays whose leading axes are the cells kept
(the dims not reduced) of the block it came from; combining merges partials of
the same cells. All floating accumulation is in float64:

* moments use the pairwise update of Chan, Golub & LeVeque (1979) generalised
  to k partials and to the 3rd and 4th central moments (Pébay 2008), from a
  two-pass computation inside each chunk;
* integer sums are exact: each value is split into its high and low 32 bits,
  summed in int64 separately and joined at the end (exact up to 2**31 values
  per chunk and 2**32 values in all, for any int64 value); a sum that does not
  fit the result's int64 (uint64 for unsigned data) raises, never wraps;
* quantiles come from a DDSketch (Masson, Rim & Lee 2019): values fall into
  buckets of relative width ``alpha`` (its cubically interpolated mapping of
  the floats' bits, close to logarithmic), so the sketch is mergeable,
  deterministic, and its answer is within ``alpha`` relative of the exact
  order statistics around the quantile (see :func:`quantile_bound`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from toolkit.errors import StatsOverflowError
from toolkit.stats import _kernels

__all__ = [
    "STATISTICS",
    "Aggregation",
    "Count",
    "Extrema",
    "Histogram",
    "Moments",
    "QuantileSketch",
    "Statistic",
    "Sum",
    "combine",
    "exact_quantiles",
    "finalize",
    "partial",
    "quantile_bound",
]

Partial = dict[str, Any]
"""One component's partial state: named arrays over the kept cells."""

_F8 = np.float64
_I8 = np.int64
_MAX = float(np.finfo(np.float64).max)
_INF_BITS = np.uint64(0x7FF0000000000000)  # +inf's bits: every positive float64's are below
_SLAB_ELEMENTS = 1 << 16  # reduce a chunk in slabs whose float64 temporaries stay in L2
POS_INF = np.uint8(1)
"""Flag of a cell holding ``+inf`` (in the moments' ``inf``)."""
NEG_INF = np.uint8(2)
"""Flag of a cell holding ``-inf``."""


class Slab:
    """A block of values reduced over ``axes``, with the facts components share.

    Parameters
    ----------
    x : numpy.ndarray
        The values (any numeric dtype).
    axes : tuple of int
        The axes reduced; the others are kept, in order.
    """

    def __init__(self, x: np.ndarray, axes: tuple[int, ...]) -> None:
        self.x = x
        self.axes = axes
        self.kept_shape = tuple(n for a, n in enumerate(x.shape) if a not in axes)
        self.size = math.prod(x.shape[a] for a in axes)
        self.is_float = x.dtype.kind == "f"

    @cached_property
    def _sum_and_masks(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        # One float64 sum finds out whether there is any NaN or infinity: the
        # masked paths (a few more passes) are only taken when there is.
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, quietly
            s = np.add.reduce(self.x, axis=self.axes, dtype=_F8)
            if not self.is_float or np.isfinite(s).all():
                return np.asarray(s, dtype=_F8), None, None
            nan = np.isnan(self.x)
            has_nan = bool(nan.any())
            if has_nan:
                s = np.add.reduce(np.where(nan, 0, self.x), axis=self.axes, dtype=_F8)
            inf = np.isinf(self.x)  # none: a sum that overflowed
        return np.asarray(s, dtype=_F8), nan if has_nan else None, inf if inf.any() else None

    @property
    def fsum(self) -> np.ndarray:
        """Float64 sum of the non-NaN values per cell (infinities included)."""
        return self._sum_and_masks[0]

    @property
    def mask(self) -> np.ndarray | None:
        """Where the values are NaN, or None when none is."""
        return self._sum_and_masks[1]

    @cached_property
    def finite(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """The finite values per cell: count, float64 sum, infinity flags and mask.

        The flags are :data:`POS_INF` | :data:`NEG_INF` of the infinities in
        each cell; the mask is where the values are not finite (None when all are).
        """
        inf = self._sum_and_masks[2]
        if inf is None:
            return self.n, self.fsum, np.zeros(self.kept_shape, np.uint8), self.mask
        x, axes = self.x, self.axes
        skip = inf if self.mask is None else inf | self.mask
        n = self.n - inf.sum(axis=axes, dtype=_I8)
        with np.errstate(invalid="ignore", over="ignore"):
            total = np.add.reduce(np.where(skip, 0, x), axis=axes, dtype=_F8)
        pos = np.logical_and.reduce(x != np.inf, axis=axes)
        neg = np.logical_and.reduce(x != -np.inf, axis=axes)
        flags = np.where(pos, 0, POS_INF) | np.where(neg, 0, NEG_INF)
        return (
            np.asarray(n, dtype=_I8),
            np.asarray(total, dtype=_F8),
            np.asarray(flags, dtype=np.uint8),
            skip,
        )

    @cached_property
    def n(self) -> np.ndarray:
        """Number of non-NaN values per cell (int64)."""
        if self.mask is None:
            return np.full(self.kept_shape, self.size, dtype=_I8)
        return np.asarray(self.size - self.mask.sum(axis=self.axes, dtype=_I8), dtype=_I8)

    def expand(self, a: np.ndarray) -> np.ndarray:
        """A per-cell array broadcastable against the values."""
        return np.expand_dims(a, self.axes)

    @cached_property
    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """The non-NaN values as float64 and the flat index of their cell."""
        kept = [a for a in range(self.x.ndim) if a not in self.axes]
        moved = np.moveaxis(self.x, kept, list(range(len(kept))))
        flat = moved.reshape(math.prod(self.kept_shape), self.size)
        cell = np.broadcast_to(np.arange(flat.shape[0])[:, None], flat.shape)
        values = flat.astype(_F8, copy=False)
        if self.mask is None:
            return values.ravel(), cell.ravel()
        ok = ~np.isnan(values)
        return values[ok], cell[ok]


class Aggregation(Protocol):
    """One component of partial state: how a chunk reduces and partials merge."""

    @property
    def key(self) -> str:
        """The component's name in a partial state."""
        ...

    def chunk(self, slab: Slab) -> Partial:
        """The partial state of one block of values."""
        ...

    def combine(self, parts: Sequence[Partial]) -> Partial:
        """Merge partials of the same cells (any number, in any grouping)."""
        ...


@dataclass(frozen=True)
class Count:
    """Non-NaN values and all values per cell."""

    key: str = "count"

    def chunk(self, slab: Slab) -> Partial:  # noqa: D102
        return {"n": slab.n, "size": np.full(slab.kept_shape, slab.size, dtype=_I8)}

    def combine(self, parts: Sequence[Partial]) -> Partial:  # noqa: D102
        return {k: sum(p[k] for p in parts[1:]) + parts[0][k] for k in ("n", "size")}


@dataclass(frozen=True)
class Moments:
    """Count, mean and central moment sums up to ``order`` (2 to 4) of the finite values.

    The state also says which infinities there are (``inf``: :data:`POS_INF` |
    :data:`NEG_INF`, merged by OR). Infinities are kept out of the moments,
    which they would turn into NaN (``inf - inf``), and finalized as numpy's
    arithmetic has them: a mean of ``+inf`` or ``-inf``, NaN with both, and a
    NaN variance, skewness and kurtosis.
    """

    order: int = 2
    key: str = field(init=False, default="moments")

    def chunk(self, slab: Slab) -> Partial:  # noqa: D102
        n, total, inf, skip = slab.finite
        nz = np.maximum(n, 1)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            mean = np.where(n > 0, total / nz, 0.0)
        if self.order < 2:
            return {"n": n, "mean": mean, "mean_lo": np.zeros_like(mean), "inf": inf}
        # The corrected two-pass algorithm: sums of d = x - mean about the first
        # mean estimate, then shifted to the exact centre mean + c. The centre is
        # kept as two floats (mean, c): mean + c would round to the offset's
        # precision, and the central sums are about the unrounded centre.
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.subtract(slab.x, slab.expand(mean), dtype=_F8)
            if skip is not None:
                d[skip] = 0.0
            s1 = np.add.reduce(d, axis=slab.axes)
            c = np.where(n > 0, s1 / nz, 0.0)
            flat = d.ndim == 1  # a whole-array reduction: sums of products are dots
            d2 = d if flat and self.order < 3 else d * d  # (d itself: unused)
            s2 = np.dot(d, d) if flat else np.add.reduce(d2, axis=slab.axes)
            s3 = s4 = None
            if self.order >= 3:
                s3 = np.dot(d2, d) if flat else np.add.reduce(d2 * d, axis=slab.axes)
            if self.order >= 4:
                s4 = np.dot(d2, d2) if flat else np.add.reduce(d2 * d2, axis=slab.axes)
            return {
                "n": n,
                "mean": mean,
                "mean_lo": c,
                "inf": inf,
                **_about_centre(n, c, s1, s2, s3, s4, self.order),
            }

    def combine(self, parts: Sequence[Partial]) -> Partial:  # noqa: D102
        ns = [p["n"] for p in parts]
        n = sum(ns[1:], ns[0])
        nz = np.maximum(n, 1)
        # Centres are combined as offsets from one partial's centre, so their
        # differences, not their magnitudes, set the rounding.
        ref, ref_lo = parts[0]["mean"], parts[0]["mean_lo"]
        seen = parts[0]["n"] > 0
        for p in parts[1:]:
            ref = np.where(seen, ref, p["mean"])
            ref_lo = np.where(seen, ref_lo, p["mean_lo"])
            seen = seen | (p["n"] > 0)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            deltas = [
                np.where(p["n"] > 0, (p["mean"] - ref) + (p["mean_lo"] - ref_lo), 0.0)
                for p in parts
            ]
            shift = np.where(n > 0, sum(p["n"] * dl for p, dl in zip(parts, deltas)) / nz, 0.0)
            out: Partial = {
                "n": n,
                "mean": np.where(n > 0, ref, 0.0),
                "mean_lo": np.where(n > 0, ref_lo + shift, 0.0),
                "inf": functools.reduce(np.bitwise_or, [p["inf"] for p in parts]),
            }
            if self.order < 2:
                return out
            # Each partial's sums about the combined mean: with d = mean_i - mean,
            # sum (x - mean)^p expands in the partial's own central sums.
            m2 = m3 = m4 = 0.0
            for p, dl in zip(parts, deltas):
                d = np.where(p["n"] > 0, dl - shift, 0.0)
                nd2 = p["n"] * d * d
                m2 = m2 + p["m2"] + nd2
                if self.order >= 3:
                    m3 = m3 + p["m3"] + 3 * d * p["m2"] + nd2 * d
                if self.order >= 4:
                    m4 = m4 + p["m4"] + 4 * d * p["m3"] + 6 * d * d * p["m2"] + nd2 * d * d
        out["m2"] = np.asarray(m2, dtype=_F8)
        if self.order >= 3:
            out["m3"] = np.asarray(m3, dtype=_F8)
        if self.order >= 4:
            out["m4"] = np.asarray(m4, dtype=_F8)
        return out


@dataclass(frozen=True)
class Extrema:
    """Minimum and maximum per cell, NaN-skipping, in the data's dtype."""

    key: str = "extrema"

    def chunk(self, slab: Slab) -> Partial:  # noqa: D102
        x = slab.x
        if slab.size == 0:
            empty = np.full(slab.kept_shape, np.nan)
            return {"min": empty, "max": empty}
        if slab.mask is None:
            return {"min": np.min(x, axis=slab.axes), "max": np.max(x, axis=slab.axes)}
        return {"min": np.fmin.reduce(x, axis=slab.axes), "max": np.fmax.reduce(x, axis=slab.axes)}

    def combine(self, parts: Sequence[Partial]) -> Partial:  # noqa: D102
        lo, hi = parts[0]["min"], parts[0]["max"]
        for p in parts[1:]:
            lo, hi = np.fmin(lo, p["min"]), np.fmax(hi, p["max"])
        return {"min": lo, "max": hi}


_LOW = np.int64(0xFFFFFFFF)


@dataclass(frozen=True)
class Sum:
    """Sum per cell: float64 for floats, exact (high and low 32 bits) for integers.

    Integer sums are int64 (uint64 for unsigned data), as numpy's are, but an
    overflow raises :class:`~toolkit.errors.StatsOverflowError` instead of
    wrapping around.
    """

    key: str = "sum"

    def chunk(self, slab: Slab) -> Partial:  # noqa: D102
        if slab.is_float:
            return {"sum": slab.fsum}
        x = slab.x
        if x.dtype.itemsize < 8:  # int64 holds 2**31 values of 32 bits exactly
            return {"hi": np.zeros(slab.kept_shape, _I8), "lo": _reduce_int(x, slab.axes)}
        if x.dtype.kind == "u":
            hi = _reduce_int(x >> np.uint64(32), slab.axes)
            lo = _reduce_int(x & np.uint64(0xFFFFFFFF), slab.axes)
        else:
            hi = _reduce_int(x >> 32, slab.axes)
            lo = _reduce_int(x & _LOW, slab.axes)
        return _carry({"hi": hi, "lo": lo})

    def combine(self, parts: Sequence[Partial]) -> Partial:  # noqa: D102
        if "sum" in parts[0]:
            with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf is NaN, quietly
                return {"sum": sum(p["sum"] for p in parts[1:]) + parts[0]["sum"]}
        return _carry(
            {
                "hi": sum(p["hi"] for p in parts[1:]) + parts[0]["hi"],
                "lo": sum(p["lo"] for p in parts[1:]) + parts[0]["lo"],
            }
        )


def _reduce_int(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.asarray(np.add.reduce(x, axis=axes, dtype=_I8), dtype=_I8)


def _carry(p: Partial) -> Partial:
    # Keep lo in [0, 2**32) so that many more partials can be added without overflow.
    lo = np.asarray(p["lo"], dtype=_I8)
    return {"hi": np.asarray(p["hi"], dtype=_I8) + (lo >> 32), "lo": lo & _LOW}


@dataclass(frozen=True, eq=False)
class Histogram:
    """Counts of values in bins with ``edges`` (numpy.histogram's convention).

    Bins are half-open ``[a, b)`` except the last, ``[a, b]``; values outside
    the edges and NaN are not counted. Uniform edges (numpy's for
    ``bins=int, range=...``) take a fast path that gives numpy's exact answer.
    """

    edges: np.ndarray
    key: str = field(init=False, default="histogram")

    @cached_property
    def uniform(self) -> bool:
        """Whether the edges are numpy's ``linspace`` edges for their ends."""
        e = self.edges
        return bool(np.array_equal(e, np.linspace(e[0], e[-1], len(e))))

    @cached_property
    def arithmetic(self) -> bool:
        """Whether each inner edge is ``k * step + first``, as the compiled kernel computes it."""
        e = self.edges
        n = len(e) - 1
        step = (e[-1] - e[0]) / n
        return self.uniform and bool(np.array_equal(np.arange(n) * step + e[0], e[:-1]))

    def chunk(self, slab: Slab) -> Partial:  # noqa: D102
        nbins = len(self.edges) - 1
        ncells = math.prod(slab.kept_shape)
        if ncells == 1:
            values = slab.x.reshape(-1).astype(_F8, copy=False)
            idx = self.bin_index(values)
            if slab.mask is not None or not self._all_inside(slab.x):
                idx = idx[idx >= 0]
            counts = np.bincount(idx, minlength=nbins)
        else:
            values, cell = slab.cells
            idx = self.bin_index(values)
            ok = idx >= 0
            counts = np.bincount(cell[ok] * nbins + idx[ok], minlength=ncells * nbins)
        return {"hist": counts.astype(_I8).reshape(*slab.kept_shape, nbins)}

    def _all_inside(self, x: np.ndarray) -> bool:
        return bool(x.size == 0 or (x.min() >= self.edges[0] and x.max() <= self.edges[-1]))

    def bin_index(self, v: np.ndarray) -> np.ndarray:
        """The bin of each value, or -1 outside the edges (and for NaN)."""
        e = self.edges
        nbins = len(e) - 1
        first, last = e[0], e[-1]
        if not self.uniform:
            idx = np.searchsorted(e, v, side="right") - 1
            idx[v == last] = nbins - 1
            idx[~((v >= first) & (v <= last))] = -1
            return np.asarray(idx)
        # numpy.histogram's uniform path: an estimate, then at most one step
        # each way against the edges themselves, so the answer is numpy's.
        inside = (v >= first) & (v <= last)
        everywhere = bool(inside.all())
        with np.errstate(invalid="ignore", over="ignore"):
            f = np.subtract(v, first)
            f *= nbins / (last - first)
        if not everywhere:
            f[~inside] = 0
        idx = f.astype(np.intp)
        np.minimum(idx, nbins - 1, out=idx)
        idx -= v < e.take(idx)
        up = v >= e.take(idx + 1)
        up &= idx != nbins - 1
        idx += up
        if not everywhere:
            idx[~inside] = -1
        return np.asarray(idx)

    def combine(self, parts: Sequence[Partial]) -> Partial:  # noqa: D102
        return {"hist": sum(p["hist"] for p in parts[1:]) + parts[0]["hist"]}


@dataclass(frozen=True)
class QuantileSketch:
    """A DDSketch with relative accuracy ``alpha`` per cell.

    A non-zero value ``x = 2**e (1 + s)`` (``0 <= s < 1``) falls into bucket
    ``floor((e + P(s)) c)``, where the cubic ``P`` follows ``log2(1 + s)``
    closely (DDSketch's cubically interpolated mapping) and ``c`` is the
    fewest buckets per doubling for which every bucket's largest value is at
    most ``gamma = (1 + alpha) / (1 - alpha)`` times its smallest: about 1%
    more buckets than the logarithmic mapping ``ceil(log_gamma |x|)``, read
    off the float's exponent and mantissa with a few multiplications instead
    of a logarithm. A bucket answers with ``2 lo hi / (lo + hi)`` of its
    smallest and largest values, within ``alpha`` relative of every value in
    it. Buckets are signed so that their order is the order of the values;
    zero and the infinities have buckets of their own. The state is the
    sorted ``(cell, bucket)`` codes present and their counts: its size grows
    with the values' dynamic range (about ``log(max/min) / log(gamma)``
    buckets per sign and cell), never with their number.
    """

    alpha: float = 0.01
    key: str = field(init=False, default="sketch")

    @cached_property
    def _multiplier(self) -> float:
        # A bucket spans 1/c of e + P(s), so its values' ratio is at most
        # exp(D / c), D the largest d(ln x)/d(e + P) = 1 / ((1 + s) P'(s)):
        # c = D / ln(gamma), with a margin for rounding in P.
        a, b, c = _kernels.CUBIC
        s = np.linspace(0.0, 1.0, 1 << 16)
        slope = (1 + s) * ((3 * a * s + 2 * b) * s + c)
        d = float(1 / slope.min()) * (1 + 1e-6)
        return d / math.log((1 + self.alpha) / (1 - self.alpha))

    @cached_property
    def _offset(self) -> int:
        # The smallest subnormal (2**-1074, s = 0) is bucket 1.
        return 1 - math.floor(-1074 * self._multiplier)

    @cached_property
    def _inf(self) -> int:
        return int(self._index(np.array([_MAX]))[0]) + 1  # above the largest double's bucket

    @cached_property
    def span(self) -> int:
        """Codes per cell."""
        return 2 * self._inf + 1

    def _index(self, a: np.ndarray) -> np.ndarray:
        """The bucket of each non-zero finite magnitude (float64; others: anything)."""
        with np.errstate(invalid="ignore"):
            m, ex = np.frexp(a)
            s = 2 * m - 1  # exact: the mantissa's fraction, as the kernel reads it from the bits
            a3, b3, c3 = _kernels.CUBIC
            # Term by term, as the kernel computes it (one rounding each, no fused multiply-add).
            p = ((a3 * s + b3) * s + c3) * s
            k: np.ndarray = np.floor(((ex - 1) + p) * self._multiplier)
        return k + self._offset

    def _magnitude(self, a: np.ndarray) -> np.ndarray:
        """Unsigned bucket of each magnitude (non-negative float64, no NaN)."""
        k = np.where(a == 0, 0.0, self._index(a))
        k = np.where(np.isinf(a), self._inf, k)
        return k.astype(_I8)

    def bucket(self, v: np.ndarray) -> np.ndarray:
        """Signed bucket of each (non-NaN, float64) value."""
        b = self._magnitude(np.abs(v))
        np.negative(b, out=b, where=v < 0)
        return b

    def _lower(self, k: np.ndarray) -> np.ndarray:
        """The smallest magnitude in each unsigned bucket ``k`` (``1 <= k <= inf``).

        By bisection of the float64 bits (non-negative floats order as their
        bits), with :meth:`_magnitude` itself, so the bounds are the mapping's
        to the last float.
        """
        lo = np.zeros(k.shape, np.uint64)  # bucket 0 (zero) is below every k
        hi = np.full(k.shape, _INF_BITS, np.uint64)  # the infinities' bucket is at least k
        while (hi - lo > 1).any():
            mid = lo + (hi - lo) // np.uint64(2)
            up = self._magnitude(mid.view(_F8)) >= k
            hi = np.where(up, mid, hi)
            lo = np.where(up, lo, mid)
        return hi.view(_F8)

    def value(self, b: np.ndarray) -> np.ndarray:
        """The value a bucket answers with."""
        b = np.asarray(b, _I8)
        k, where = np.unique(np.abs(b), return_inverse=True)
        finite = (k > 0) & (k < self._inf)
        lo = self._lower(np.where(finite, k, 1))
        # The top bucket's values end at the largest double, not at the next bucket's first.
        hi = np.minimum(self._lower(np.where(finite, k + 1, 1)), _MAX)
        mag = np.where(finite, lo * (2 / (1 + lo / hi)), 0.0)
        mag = np.where(k == self._inf, np.inf, mag)[where.reshape(b.shape)]
        return np.where(b < 0, -mag, mag)

    def chunk(self, slab: Slab) -> Partial:  # noqa: D102
        values, cell = slab.cells
        b = self.bucket(values) + self._inf  # in [0, span)
        return self._count(cell.astype(_I8), b, math.prod(slab.kept_shape))

    def block(self, x: np.ndarray, axes: tuple[int, ...]) -> Partial:
        """The state of a whole block: the same as :meth:`chunk`'s, without slabs to merge.

        The (cell, bucket) pairs are counted without sorting when the block's
        distinct buckets are few against its values (see :meth:`_count`);
        otherwise each cell's row of buckets is sorted on its own (many
        short sorts are several times faster than one sort of every code).
        """
        ncells, rows = _rows(x, axes)
        if self.compiled and x.dtype.kind in "fiub" and rows.size:
            # One compiled kernel (_kernels.cells_sketch): buckets counted per cell, in order.
            # It reads cells across, values down: a block of whole maps as it is.
            cols = rows.T
            if x.dtype not in (np.float32, np.float64):
                cols = cols.astype(_F8)  # as below (one compiled version per dtype)
            state: Partial = self.kernel(np.ascontiguousarray(cols), stats=False, order=0)[-1]
            return state
        v = rows.astype(_F8)  # a copy: NaN are overwritten below
        nan = np.isnan(v) if x.dtype.kind == "f" else None
        if nan is not None and not nan.any():
            nan = None
        if nan is not None:
            v[nan] = 0.0
        b = self.bucket(v) + self._inf
        if nan is not None:
            b[nan] = self.span  # after every bucket of the row: cut off below
        if b.size == 0:
            return {"codes": np.zeros(0, _I8), "counts": np.zeros(0, _I8), "cells": ncells}
        flat = b.ravel()
        cell = np.repeat(np.arange(ncells, dtype=_I8), rows.shape[1])
        if nan is not None:
            ok = flat < self.span
            cell, flat = cell[ok], flat[ok]
        dense = self._dense(cell, flat, ncells)
        if dense is not None:
            return dense
        b.sort(axis=1)
        key = (np.arange(ncells, dtype=_I8)[:, None] * (self.span + 1) + b).ravel()
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        counts = np.diff(np.r_[first, key.size]).astype(_I8)
        bucket = key[first] % (self.span + 1)
        ok = bucket < self.span
        codes = (key[first] // (self.span + 1)) * self.span + bucket
        return {"codes": codes[ok], "counts": counts[ok], "cells": ncells}

    @property
    def compiled(self) -> bool:
        """Whether the compiled kernel counts this sketch (its codes fit its int32 buffer)."""
        return _kernels.enabled() and self.span < 2**31

    def kernel(self, cols: np.ndarray, *, stats: bool, order: int) -> tuple[Any, ...]:
        """:func:`toolkit.stats._kernels.cells_sketch` of ``cols`` (values down, cells across).

        ``cols`` C-contiguous float32 or float64. Returns the kernel's per-cell
        statistics (with ``stats``; central sums up to ``order``) and, last,
        this component's state.
        """
        f32 = bool(cols.dtype == np.float32)
        *cells, codes, counts = _kernels.cells_sketch(
            cols.view(np.uint32 if f32 else np.uint64),
            cols,
            f32,
            self._multiplier,
            self._offset,
            self._inf,
            self.span,
            stats,
            order,
        )
        return (*cells, {"codes": codes, "counts": counts, "cells": cols.shape[1]})

    def _dense(
        self, cell: np.ndarray, b: np.ndarray, ncells: int, weights: np.ndarray | None = None
    ) -> Partial | None:
        """Sorted codes and counts of (cell, bucket) pairs, counted instead of sorted.

        The distinct buckets present are numbered in order (a count over the
        buckets' range, at most ``span``), so (cell, number) indexes a dense
        table that is counted in one pass, and its non-zero entries come out
        in code order. None when that table would be large against the
        pairs (many cells with few values each, in buckets far apart).
        """
        if b.size == 0:
            return None
        lo = int(b.min())
        seen = np.bincount(b - lo) > 0
        present = np.flatnonzero(seen)
        width = present.size
        if ncells * width > 4 * b.size + 4096:
            return None
        rank = np.cumsum(seen) - 1
        table = np.bincount(cell * width + rank[b - lo], weights=weights, minlength=ncells * width)
        nz = np.flatnonzero(table)
        cells, which = np.divmod(nz, width)
        return {
            "codes": cells * self.span + present[which] + lo,
            "counts": np.asarray(table[nz], dtype=_I8),  # float64 weights: exact below 2**53
            "cells": ncells,
        }

    def _count(self, cell: np.ndarray, b: np.ndarray, ncells: int) -> Partial:
        """Sorted codes and counts of (cell, bucket) pairs."""
        dense = self._dense(cell, b, ncells)
        if dense is not None:
            return dense
        codes, counts = np.unique(cell * self.span + b, return_counts=True)
        return {"codes": codes, "counts": counts.astype(_I8), "cells": ncells}

    def combine(self, parts: Sequence[Partial]) -> Partial:  # noqa: D102
        if any("exact" in p for p in parts):
            # A whole group's exact quantiles (toolkit.stats.groupby.chunk): no other state
            # of its group exists, so none may come here.
            raise ValueError("a group's exact quantiles do not merge with other states")
        if _kernels.enabled() and len(parts) > 1:
            # Sorted lists merged pairwise, in a balanced tree: linear passes, no sort.
            pairs = [(np.asarray(p["codes"], _I8), np.asarray(p["counts"], _I8)) for p in parts]
            while len(pairs) > 1:
                merged = [
                    _kernels.sketch_merge(*pairs[i], *pairs[i + 1])
                    for i in range(0, len(pairs) - 1, 2)
                ]
                pairs = merged + pairs[len(merged) * 2 :]
            return {"codes": pairs[0][0], "counts": pairs[0][1], "cells": parts[0]["cells"]}
        codes = np.concatenate([p["codes"] for p in parts])
        counts = np.concatenate([p["counts"] for p in parts])
        ncells = parts[0]["cells"]
        if codes.size == 0:
            return {"codes": codes, "counts": counts, "cells": ncells}
        cell, b = np.divmod(codes, self.span)
        dense = self._dense(cell, b, ncells, weights=counts.astype(_F8))
        if dense is not None:
            return dense
        order = np.argsort(codes, kind="stable")
        codes, counts = codes[order], counts[order]
        first = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        return {"codes": codes[first], "counts": np.add.reduceat(counts, first), "cells": ncells}

    def quantiles(
        self,
        p: Partial,
        qs: Sequence[float],
        shape: tuple[int, ...],
        extrema: Partial | None = None,
    ) -> np.ndarray:
        """Estimates of quantiles ``qs`` per cell (NaN for empty cells), shape ``shape + (q,)``.

        numpy.quantile's default ("linear") ranks are used: rank ``q (n - 1)``
        interpolated between the two order statistics around it, each taken
        from the bucket that holds it. With the cells' ``extrema``
        (:class:`Extrema`'s state), the first and last order statistics are
        the exact min and max, and the others are kept between them, where
        every order statistic lies and a bucket's value need not (a median of
        booleans would be 1.0099 at 1%): quantiles 0 and 1 are exact, and no
        estimate is moved away from the truth.
        """
        ncells = math.prod(shape)
        codes, counts = p["codes"], p["counts"]
        out = np.full((ncells, len(qs)), np.nan)
        if codes.size == 0:
            return out.reshape(*shape, len(qs))
        lows = highs = None
        if extrema is not None:
            lows = np.asarray(extrema["min"], _F8).reshape(ncells)
            highs = np.asarray(extrema["max"], _F8).reshape(ncells)

        def pinned(v: np.ndarray, k: np.ndarray, n: np.ndarray, has: Any) -> np.ndarray:
            """Order statistics ``k`` of cells ``has`` (``n`` values each): the extrema's."""
            if lows is None or highs is None:
                return v
            lo, hi = lows[has], highs[has]
            if v.ndim == 2:
                lo, hi, n = lo[:, None], hi[:, None], n[:, None]
            v = np.fmin(np.fmax(v, lo), hi)
            return np.where(k == 0, lo, np.where(k == n - 1, hi, v))

        if _kernels.enabled():
            # One walk over each cell's codes for every quantile.
            lo_b, hi_b, t, n = _kernels.sketch_ranks(
                np.asarray(codes, _I8),
                np.asarray(counts, _I8),
                ncells,
                self.span,
                np.asarray(qs, _F8),
            )
            has = n > 0
            rank = np.asarray(qs, _F8) * (n[has, None] - 1).astype(_F8)
            lo_v = np.asarray(self.value(lo_b[has] - self._inf), _F8)
            hi_v = np.asarray(self.value(hi_b[has] - self._inf), _F8)
            lo_v = pinned(lo_v, np.floor(rank), n[has], has)
            hi_v = pinned(hi_v, np.ceil(rank), n[has], has)
            out[has] = _lerp(lo_v, hi_v, t[has])
            return out.reshape(*shape, len(qs))
        cum = np.cumsum(counts)
        # Codes are sorted, cell by cell: each cell's first code is found by
        # bisection, and the values before it are a running count there.
        first = np.searchsorted(codes, np.arange(ncells + 1, dtype=_I8) * self.span)
        before = np.concatenate([[0], cum])[first]
        start, n = before[:-1], np.diff(before)
        has = n > 0
        for j, q in enumerate(qs):
            rank = q * (n[has] - 1)
            lo, hi = np.floor(rank), np.ceil(rank)

            def at(r: np.ndarray) -> np.ndarray:
                pos = np.searchsorted(cum, start[has] + r.astype(_I8), side="right")
                return np.asarray(self.value(codes[pos] % self.span - self._inf), dtype=_F8)

            a = pinned(at(lo), lo, n[has], has)
            out[has, j] = _lerp(a, pinned(at(hi), hi, n[has], has), rank - lo)
        return out.reshape(*shape, len(qs))


def _rows(x: np.ndarray, axes: tuple[int, ...]) -> tuple[int, np.ndarray]:
    """The number of kept cells and the values as one row per cell (a view where it can be)."""
    kept = [a for a in range(x.ndim) if a not in axes]
    ncells = math.prod(x.shape[a] for a in kept)
    size = math.prod(x.shape[a] for a in axes)
    return ncells, np.moveaxis(x, kept, list(range(len(kept)))).reshape(ncells, size)


def _columns(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The values reduced down the rows, the cells kept across, C-contiguous.

    A view, not a copy, for a block of whole maps (time, y, x) reduced over time.
    """
    size = math.prod(x.shape[a] for a in axes)
    ncells = math.prod(n for a, n in enumerate(x.shape) if a not in axes)
    moved = np.moveaxis(x, list(axes), list(range(len(axes))))
    return np.ascontiguousarray(moved.reshape(size, ncells))


def _contiguous(rows: np.ndarray) -> np.ndarray:
    """``rows`` C-contiguous: a transposed array is copied in tiles by the kernel."""
    if rows.flags.c_contiguous:
        return rows
    if rows.T.flags.c_contiguous and _kernels.enabled() and rows.dtype in (np.float32, np.float64):
        return np.asarray(_kernels.transpose(rows.T))
    return np.ascontiguousarray(rows)


# Values per cell up to which the compiled sorting network beats numpy's sort of each
# cell (one core, float32 maps of 8,192 cells: 24 values 1.2 against 3.6 ns a value, 744
# values 3.5 against 4.4); its exchanges grow as n log(n)**2.
_NETWORK_MAX = 1024


def exact_quantiles(x: np.ndarray, axes: tuple[int, ...], qs: Sequence[float]) -> np.ndarray:
    """The ``"linear"`` quantiles ``qs`` (numpy's) of the non-NaN values per cell, (cells, q).

    Each cell's values sorted (NaN last) and interpolated as :func:`_lerp`
    does: numpy's answer, with the limits numpy's formula misses at
    infinities. NaN for a cell with no value. This is what a group whose
    values all lie in one block costs less to answer with than a sketch.
    """
    ncells, rows = _rows(np.asarray(x), axes)
    out = np.full((ncells, len(qs)), np.nan)
    if rows.size == 0 or not qs:
        return out
    compiled = _kernels.enabled() and rows.dtype in (np.float32, np.float64)
    if compiled and rows.shape[1] <= _NETWORK_MAX:
        # The block as it lies (values down, cells across), sorted by a network.
        columns = _columns(np.asarray(x), axes)
        return np.asarray(_kernels.exact_columns(columns, np.asarray(qs, _F8)))
    srt = np.sort(_contiguous(rows), axis=-1)  # NaN last
    if compiled:
        return np.asarray(_kernels.exact_rows(srt, np.asarray(qs, _F8)))
    size = srt.shape[1]
    n = size - np.count_nonzero(np.isnan(srt), axis=1) if srt.dtype.kind == "f" else None
    has = slice(None) if n is None else n > 0
    if n is not None and not n.all():
        srt, n = srt[has], n[has]
    count = np.full(srt.shape[0], size, dtype=_I8) if n is None else n.astype(_I8)
    for j, q in enumerate(qs):
        rank = q * (count - 1).astype(_F8)
        lo = np.floor(rank)
        a = np.take_along_axis(srt, lo.astype(_I8)[:, None], axis=1)[:, 0].astype(_F8)
        b = np.take_along_axis(srt, np.ceil(rank).astype(_I8)[:, None], axis=1)[:, 0]
        out[has, j] = _lerp(a, b.astype(_F8), rank - lo)
    return out


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The linear quantile between order statistics ``a <= b`` at weight ``t`` in [0, 1).

    With infinities, the limit of the interpolation, where numpy's formula
    computes ``inf - inf`` (numpy/numpy#21091, open): ``a`` at ``t = 0``, the
    infinite end between a finite and an infinite order statistic, that
    infinity between two equal ones, and NaN only between ``-inf`` and ``+inf``.
    numpy's ``"linear"`` answer, where it is not NaN, is the same; ``numpy.median``
    has these limits too.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        d = b - a
        # numpy's own formula (numpy.lib._function_base_impl._lerp): from b above t = 0.5.
        v = np.where(t >= 0.5, b - d * (1 - t), a + d * t)
        # b - a overflowing between two finite values: the weighted mean instead.
        v = np.where(np.isinf(v) & np.isfinite(a) & np.isfinite(b), a * (1 - t) + b * t, v)
    v = np.where(np.isinf(a) & np.isfinite(b), a, v)  # -inf, then finite values
    v = np.where(np.isfinite(a) & np.isinf(b), b, v)  # finite values, then +inf
    return np.where((t == 0) | (a == b), a, v)


def quantile_bound(lower: np.ndarray, higher: np.ndarray, alpha: float) -> np.ndarray:
    """The largest error of a sketch quantile against numpy's ``"linear"`` one.

    ``lower`` and ``higher`` are numpy's ``"lower"`` and ``"higher"`` quantiles
    (the order statistics around the rank): the sketch's answer differs from
    numpy's by at most ``alpha * max(|lower|, |higher|)``, plus rounding.
    Infinities in the data leave this bound for the quantiles between finite
    order statistics as it is (they have buckets of their own, and ranks are
    exact); a quantile that interpolates towards an infinite order statistic
    is that infinity, exactly (NaN between ``-inf`` and ``+inf``, see :func:`_lerp`).
    """
    return alpha * np.maximum(np.abs(lower), np.abs(higher)) * (1 + 1e-9)


# Statistics ------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What finalizing needs besides the partial state."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    ddof: int = 0
    skipna: bool = True
    quantiles: tuple[float, ...] = ()
    alpha: float = 0.01


@dataclass(frozen=True)
class Statistic:
    """A statistic: the components it needs and how it is finalized from them.

    Attributes
    ----------
    name : str
        As requested in ``stats=``.
    needs : tuple of str
        Component keys (``"count"``, ``"moments2"``, ...).
    finalize : callable
        ``finalize(partials, context) -> numpy.ndarray`` over the kept cells.
    cell_method : str
        The CF ``cell_methods`` word for it ("mean", "standard_deviation", ...).
    nan_propagates : bool
        With ``skipna=False``, the result is NaN wherever a value was NaN.
    """

    name: str
    needs: tuple[str, ...]
    finalize: Callable[[Mapping[str, Partial], Context], np.ndarray]
    cell_method: str
    nan_propagates: bool = True
    doc: str = ""


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _mean(p: Mapping[str, Partial], c: Context) -> np.ndarray:
    m = p["moments"]
    inf = m["inf"]
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.where(m["n"] > 0, m["mean"] + m["mean_lo"], np.nan)
    # numpy's sum / n: +inf or -inf with infinities of one sign, NaN with both.
    return np.select([inf == POS_INF, inf == NEG_INF, inf != 0], [np.inf, -np.inf, np.nan], finite)


def _finite_only(m: Partial, v: np.ndarray) -> np.ndarray:
    # numpy's central moments hold inf - inf wherever a value is infinite: NaN.
    return np.where(m["inf"] != 0, np.nan, v)


def _var(p: Mapping[str, Partial], c: Context) -> np.ndarray:
    m = p["moments"]
    return _finite_only(m, _safe_div(m["m2"], m["n"] - c.ddof))


def _std(p: Mapping[str, Partial], c: Context) -> np.ndarray:
    return np.sqrt(_var(p, c))


def _shape_ok(m: Partial) -> np.ndarray:
    # scipy.stats' rule: a variance within float64 resolution of the mean is
    # rounding noise (the data are constant), so skew and kurtosis are NaN.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = m["mean"] + m["mean_lo"]
        return np.asarray((m["m2"] / np.maximum(m["n"], 1) > (1e-15 * mean) ** 2) & (m["m2"] > 0))


def _skew(p: Mapping[str, Partial], c: Context) -> np.ndarray:
    m = p["moments"]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        v = np.where(_shape_ok(m), np.sqrt(m["n"]) * m["m3"] / m["m2"] ** 1.5, np.nan)
    return _finite_only(m, v)


def _kurtosis(p: Mapping[str, Partial], c: Context) -> np.ndarray:
    m = p["moments"]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        v = np.where(_shape_ok(m), m["n"] * m["m4"] / (m["m2"] * m["m2"]) - 3.0, np.nan)
    return _finite_only(m, v)


def _extreme(which: str) -> Callable[[Mapping[str, Partial], Context], np.ndarray]:
    def fin(p: Mapping[str, Partial], c: Context) -> np.ndarray:
        v = np.asarray(p["extrema"][which])
        if c.dtype.kind in "f":
            return v.astype(c.dtype, copy=False)
        if np.isnan(v.astype(_F8, copy=False)).any():  # empty cells of integer data
            return v.astype(_F8)
        return v.astype(c.dtype, copy=False)

    return fin


def _sum(p: Mapping[str, Partial], c: Context) -> np.ndarray:
    s = p["sum"]
    if "sum" in s:
        return np.asarray(s["sum"], dtype=_F8)
    hi, lo = np.asarray(s["hi"]), np.asarray(s["lo"])
    kind = np.uint64 if c.dtype.kind == "u" else _I8
    if c.dtype.kind != "u" and ((hi >= -(1 << 31)) & (hi < (1 << 31))).all():
        return np.asarray((hi << 32) | lo)  # lo holds the low 32 bits, hi the (signed) rest
    exact = [int(h) * (1 << 32) + int(low) for h, low in zip(hi.ravel(), lo.ravel())]
    info = np.iinfo(kind)
    bad = [v for v in exact if not info.min <= v <= info.max]
    if bad:
        raise StatsOverflowError(
            f"an exact sum ({bad[0]}) does not fit {np.dtype(kind)}, the type of integer "
            "sums; cast the data to float64 first for a rounded sum"
        )
    return np.array(exact, dtype=kind).reshape(hi.shape)


def _quantile(p: Mapping[str, Partial], c: Context) -> np.ndarray:
    return QuantileSketch(c.alpha).quantiles(p["sketch"], c.quantiles, c.shape, p["extrema"])


STATISTICS: Mapping[str, Statistic] = MappingProxyType(
    {
        s.name: s
        for s in [
            Statistic(
                "count",
                ("count",),
                lambda p, c: p["count"]["n"],
                "count",
                nan_propagates=False,
                doc="number of non-NaN values",
            ),
            Statistic(
                "nan_count",
                ("count",),
                lambda p, c: p["count"]["size"] - p["count"]["n"],
                "count",
                nan_propagates=False,
                doc="number of NaN values",
            ),
            Statistic("sum", ("sum",), _sum, "sum", doc="sum (exact for integers)"),
            Statistic("mean", ("moments1",), _mean, "mean", doc="arithmetic mean"),
            Statistic("var", ("moments2",), _var, "variance", doc="variance, with ddof"),
            Statistic("std", ("moments2",), _std, "standard_deviation", doc="standard deviation"),
            Statistic("min", ("extrema",), _extreme("min"), "minimum", doc="minimum"),
            Statistic("max", ("extrema",), _extreme("max"), "maximum", doc="maximum"),
            Statistic("skew", ("moments3",), _skew, "skewness", doc="skewness (biased, g1)"),
            Statistic(
                "kurtosis", ("moments4",), _kurtosis, "kurtosis", doc="excess kurtosis (biased, g2)"
            ),
            Statistic(
                "histogram",
                ("histogram",),
                lambda p, c: p["histogram"]["hist"],
                "histogram",
                nan_propagates=False,
                doc="counts per bin",
            ),
            Statistic(
                "quantiles",
                ("sketch", "extrema"),
                _quantile,
                "quantile",
                doc="approximate quantiles",
            ),
        ]
    }
)
"""Every statistic :func:`toolkit.stats` computes, by name."""


def components(
    names: Sequence[str], *, edges: np.ndarray | None = None, alpha: float = 0.01
) -> list[Aggregation]:
    """The components that statistics ``names`` need, each once.

    Moments of several orders share one component of the highest order.
    """
    needs = {k for name in names for k in STATISTICS[name].needs}
    out: list[Aggregation] = []
    if "count" in needs:
        out.append(Count())
    orders = [int(k[-1]) for k in needs if k.startswith("moments")]
    if orders:
        out.append(Moments(max(orders)))
    if "extrema" in needs:
        out.append(Extrema())
    if "sum" in needs:
        out.append(Sum())
    if "histogram" in needs:
        if edges is None:
            raise ValueError("a histogram needs bin edges")
        out.append(Histogram(np.asarray(edges, dtype=_F8)))
    if "sketch" in needs:
        out.append(QuantileSketch(alpha))
    return out


def partial(x: np.ndarray, axes: tuple[int, ...], aggs: Sequence[Aggregation]) -> Partial:
    """The partial state of a block: every component, one read of the values.

    A whole-block reduction of float data goes to the compiled kernels when
    numba is installed (:func:`_fused`). Otherwise, and for what the kernels
    do not cover, numpy reduces the block in slabs (:func:`_slabs`).
    """
    x = np.asarray(x)
    if not axes:
        # Nothing reduced: every value is its own cell.
        x, axes = x[..., None], (x.ndim,)
    # The sketch takes the whole block at once (see QuantileSketch.block): slabs'
    # sketches would need merging, which costs more than making them.
    sketches = [a for a in aggs if isinstance(a, QuantileSketch)]
    rest = [a for a in aggs if not isinstance(a, QuantileSketch)]
    out: Partial = {}
    if len(axes) == x.ndim:
        # Everything reduced: a flat view slices into slabs of any size.
        x, axes = x.reshape(-1), (0,)
        fused = _fused(x, rest)
        rest = [a for a in rest if a.key not in fused]
        out.update(fused)
    else:
        fused = _fused_cells(x, axes, rest, sketches)
        rest = [a for a in rest if a.key not in fused]
        sketches = [a for a in sketches if a.key not in fused]
        out.update(fused)
    if rest:
        out.update(_slabs(x, axes, rest))
    out.update({a.key: a.block(x, axes) for a in sketches})
    return out


def _slabs(x: np.ndarray, axes: tuple[int, ...], aggs: Sequence[Aggregation]) -> Partial:
    """Reduce with numpy, in slabs of ~64k values along the first reduced axis.

    The float64 temporaries of a slab stay in the L2 cache; slab partials are
    combined like any others.
    """
    axis = axes[0]
    per = max(1, x.size // max(x.shape[axis], 1))
    step = max(1, _SLAB_ELEMENTS // per)
    if per > 1 and len(axes) < x.ndim:
        # Many kept cells (a map, say): slabs of at least 16 values per cell, or
        # combining the slabs' map-sized partials would cost more than reducing.
        step = max(step, 16)
    if x.shape[axis] <= step:
        slab = Slab(x, axes)
        return {a.key: a.chunk(slab) for a in aggs}
    index: list[Any] = [slice(None)] * x.ndim
    parts = []
    for start in range(0, x.shape[axis], step):
        index[axis] = slice(start, start + step)
        slab = Slab(x[tuple(index)], axes)
        parts.append({a.key: a.chunk(slab) for a in aggs})
    return combine(parts, aggs)


def _fused(x: np.ndarray, aggs: Sequence[Aggregation]) -> dict[str, Partial]:
    """Partials of a flat float block from the compiled kernels, for the components they cover.

    A few vectorized passes whatever the statistics, instead of one numpy pass
    per operation. Same state, same arithmetic as the components' ``chunk``;
    the components left out (quantile sketches, non-uniform bins) are reduced
    by numpy.
    """
    if x.dtype not in (np.float32, np.float64) or not _kernels.enabled():
        return {}
    x = np.ascontiguousarray(x)
    n, total = _kernels.summary_pass(x)
    nn = np.asarray(n, dtype=_I8)
    # The moments are of the finite values: a sum that is not finite means
    # infinities (or an overflow), counted apart in one more pass.
    fn, ftotal, inf = n, total, np.uint8(0)
    if not math.isfinite(total) and any(isinstance(a, Moments) for a in aggs):
        fn, ftotal, pos, neg = _kernels.finite_pass(x)
        inf = np.uint8((POS_INF if pos else 0) | (NEG_INF if neg else 0))
    out: dict[str, Partial] = {}
    for a in aggs:
        if isinstance(a, Count):
            out[a.key] = {"n": nn, "size": np.asarray(x.size, dtype=_I8)}
        elif isinstance(a, Extrema):
            if n == 0:
                out[a.key] = {"min": np.asarray(np.nan), "max": np.asarray(np.nan)}
            elif n == x.size:  # no NaN: numpy's SIMD min and max
                out[a.key] = {"min": np.asarray(x.min()), "max": np.asarray(x.max())}
            else:
                out[a.key] = {"min": np.fmin.reduce(x), "max": np.fmax.reduce(x)}
        elif isinstance(a, Sum):
            out[a.key] = {"sum": np.asarray(total, dtype=_F8)}
        elif isinstance(a, Histogram) and a.arithmetic:
            e = a.edges
            out[a.key] = {"hist": _kernels.histogram_pass(x, e[0], e[-1], len(e) - 1)}
        elif isinstance(a, Moments):
            with np.errstate(invalid="ignore", over="ignore"):  # an overflowed sum
                out[a.key] = _fused_moments(x, a.order, fn, ftotal, inf)
    return out


def _fused_cells(
    x: np.ndarray,
    axes: tuple[int, ...],
    aggs: Sequence[Aggregation],
    sketches: Sequence[QuantileSketch] = (),
) -> Partial:
    """Partials of a float block with cells kept, from the compiled per-cell kernels.

    The block as rows of the values reduced by columns of the cells kept: a
    pass for counts, sums, infinities and extrema, and one for the central
    sums, each vectorized across the cells. The state is the components'
    ``chunk``'s, with the same arithmetic (float64 sums, the corrected two-pass
    moments of the finite values); histograms are left to numpy. With one
    quantile sketch in ``sketches``, its kernel computes the statistics in
    its own two passes over the block, and its state is in the result too;
    else sketches are left to :meth:`QuantileSketch.block`.
    """
    covered = (Count, Extrema, Sum, Moments)
    if (
        x.dtype not in (np.float32, np.float64)
        or not _kernels.enabled()
        or not any(isinstance(a, covered) for a in aggs)
    ):
        return {}
    kept = [a for a in range(x.ndim) if a not in axes]
    kept_shape = tuple(x.shape[a] for a in kept)
    ncells = math.prod(kept_shape)
    size = math.prod(x.shape[a] for a in axes)
    if size == 0 or ncells == 0:
        return {}
    v = _columns(x, axes)
    out: dict[str, Partial] = {}
    sums = None
    if len(sketches) == 1 and sketches[0].compiled:
        order = max((a.order for a in aggs if isinstance(a, Moments)), default=0)
        *cells, state = sketches[0].kernel(v, stats=True, order=order)
        n, total, fn, ftotal, flags, lo, hi, *central = cells
        sums = tuple(central)
        out[sketches[0].key] = state
    else:
        n, total, fn, ftotal, flags, lo, hi = _kernels.cells_pass(v)
    for a in aggs:
        if isinstance(a, Count):
            out[a.key] = {"n": n.reshape(kept_shape), "size": np.full(kept_shape, size, _I8)}
        elif isinstance(a, Extrema):
            none = n == 0
            lo = np.where(none, np.nan, lo).astype(x.dtype).reshape(kept_shape)
            hi = np.where(none, np.nan, hi).astype(x.dtype).reshape(kept_shape)
            out[a.key] = {"min": lo, "max": hi}
        elif isinstance(a, Sum):
            out[a.key] = {"sum": total.reshape(kept_shape)}
        elif isinstance(a, Moments):
            out[a.key] = _cells_moments(v, a.order, fn, ftotal, flags, kept_shape, sums)
    return out


def _cells_moments(
    v: np.ndarray,
    order: int,
    n: np.ndarray,
    total: np.ndarray,
    inf: np.ndarray,
    shape: tuple[int, ...],
    sums: tuple[np.ndarray, ...] | None = None,
) -> Partial:
    """:meth:`Moments.chunk`'s state from the per-cell kernels' finite counts and sums.

    ``sums``: the central sums about the finite mean, when a kernel summed
    them already (else :func:`~toolkit.stats._kernels.cells_moments` does).
    """
    nz = np.maximum(n, 1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = np.where(n > 0, total / nz, 0.0)
        out: Partial = {"n": n, "mean": mean, "mean_lo": np.zeros_like(mean), "inf": inf}
        if order >= 2:
            s1, s2, s3, s4 = sums if sums is not None else _kernels.cells_moments(v, mean, order)
            c = np.where(n > 0, s1 / nz, 0.0)
            out["mean_lo"] = c
            out.update(_about_centre(n, c, s1, s2, s3, s4, order))
    return {k: np.asarray(a).reshape(shape) for k, a in out.items()}


def _fused_moments(x: np.ndarray, order: int, n: Any, total: float, inf: np.uint8) -> Partial:
    mean = _F8(total) / n if n else _F8(0.0)
    m: Partial = {
        "n": np.asarray(n, dtype=_I8),
        "mean": np.asarray(mean),
        "mean_lo": np.asarray(0.0),
        "inf": np.asarray(inf, dtype=np.uint8),
    }
    if order >= 2:
        s1, s2, s3, s4 = (_F8(v) for v in _kernels.moments_pass(x, float(mean), order))
        c = s1 / n if n else _F8(0.0)
        m["mean_lo"] = np.asarray(c)
        with np.errstate(invalid="ignore", over="ignore"):
            sums = _about_centre(n, c, s1, s2, s3, s4, order)
        m.update({k: np.asarray(v) for k, v in sums.items()})
    return m


def _about_centre(n: Any, c: Any, s1: Any, s2: Any, s3: Any, s4: Any, order: int) -> dict[str, Any]:
    """Central sums about the exact centre ``mean + c`` from the sums of ``d`` about ``mean``.

    ``s1`` .. ``s4``: sums of ``d``, ``d**2`` .. ``d**4`` (``s3``, ``s4`` from
    ``order`` 3 and 4). Where ``d**2`` overflows (finite values past ~1e154),
    ``s2`` is inf and so is ``s1 * c``: the sum of squares is inf, as numpy's
    is (``s2 - s1 * c`` would be ``inf - inf``, a NaN variance and std).
    """
    m2 = s2 - s1 * c
    out = {"m2": np.where(np.isinf(s2), s2, m2)}
    if order >= 3:
        out["m3"] = s3 - 3 * c * s2 + 2 * n * c**3
    if order >= 4:
        out["m4"] = s4 - 4 * c * s3 + 6 * c * c * s2 - 3 * n * c**4
    return out


def combine(parts: Sequence[Partial], aggs: Sequence[Aggregation]) -> Partial:
    """Merge partial states of the same cells."""
    if len(parts) == 1:
        return parts[0]
    return {a.key: a.combine([p[a.key] for p in parts]) for a in aggs}


def finalize(part: Partial, names: Sequence[str], context: Context) -> dict[str, np.ndarray]:
    """Every requested statistic from a combined partial state."""
    out = {}
    nan = None
    if not context.skipna and "count" in part:
        nan = part["count"]["size"] > part["count"]["n"]
    for name in names:
        stat = STATISTICS[name]
        v = np.asarray(stat.finalize(part, context))
        if nan is not None and stat.nan_propagates and nan.any():
            # A float result keeps its dtype (float32 min and max stay float32, as
            # xarray's and the lazy result's); others become float64 to hold NaN.
            v = v.astype(v.dtype if v.dtype.kind == "f" else np.result_type(v.dtype, _F8))
            v[nan] = np.nan  # broadcasts over a trailing quantile axis
        out[name] = v
    return out
