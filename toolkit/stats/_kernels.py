"""Fused reduction kernels (numba), used when numba is installed (``toolkit[fast]``).

numpy needs a pass over the values per operation: a histogram alone is about
twenty, which costs more than decoding the chunk did. These kernels compute
a block's count and float64 sum in one vectorized pass, its central sums in a
second and its histogram in a third, with the arithmetic of the numpy path in
:mod:`toolkit.stats.aggregations` (numpy's histogram bin rule, NaN skipped, float64
accumulation, summed in runs of 1024 values so the rounding stays small). A
block whose sum is not finite (it holds infinities) takes one more pass that
counts them and sums the finite values, which the central sums are about.
The numpy path remains the reference; the tests run both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "AVAILABLE",
    "CUBIC",
    "cells_moments",
    "cells_pass",
    "cells_sketch",
    "enabled",
    "exact_rows",
    "finite_pass",
    "histogram_pass",
    "moments_pass",
    "sketch_merge",
    "sketch_ranks",
    "summary_pass",
    "transpose",
]

numba: Any
try:  # pragma: no cover - exercised when numba is installed, as in the test extras
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover
    numba = None
    AVAILABLE = False

_RUN = 1024  # values summed into a local accumulator before the total


def enabled() -> bool:
    """Whether the kernels are used (numba installed, ``TOOLKIT_KERNELS`` not 0)."""
    return AVAILABLE and os.environ.get("TOOLKIT_KERNELS", "1") != "0"


# The loops run over slices (``for j in range(block.size)``): LLVM vectorizes
# those, and not loops over a ``range(start, stop)`` of the whole array.


def _summary_pass(x: Any) -> tuple[Any, float]:  # pragma: no cover - compiled
    n = np.int64(0)
    total = 0.0
    for start in range(0, x.size, _RUN):
        block = x[start : start + _RUN]
        run = 0.0
        m = np.int64(0)
        for j in range(block.size):  # branch-free, so that it vectorizes
            f = np.float64(block[j])
            ok = f == f  # not NaN
            m += np.int64(ok)
            run += f if ok else 0.0
        total += run
        n += m
    return n, total


def _finite_pass(x: Any) -> tuple[Any, float, Any, Any]:  # pragma: no cover - compiled
    """Count and float64 sum of the finite values, and the numbers of +inf and -inf."""
    n = np.int64(0)
    pos = np.int64(0)
    neg = np.int64(0)
    total = 0.0
    for start in range(0, x.size, _RUN):
        block = x[start : start + _RUN]
        run = 0.0
        m = np.int64(0)
        p = np.int64(0)
        q = np.int64(0)
        for j in range(block.size):  # branch-free, so that it vectorizes
            f = np.float64(block[j])
            ok = np.abs(f) < np.inf  # finite: neither NaN nor infinite
            m += np.int64(ok)
            p += np.int64(f == np.inf)
            q += np.int64(f == -np.inf)
            run += f if ok else 0.0
        total += run
        n += m
        pos += p
        neg += q
    return n, total, pos, neg


def _moments_pass(
    x: Any, centre: float, order: int
) -> tuple[float, float, float, float]:  # pragma: no cover - compiled
    s1 = s2 = s3 = s4 = 0.0
    for start in range(0, x.size, _RUN):
        block = x[start : start + _RUN]
        r1 = r2 = r3 = r4 = 0.0
        if order == 2:
            for j in range(block.size):
                f = np.float64(block[j])
                d = f - centre if np.abs(f) < np.inf else 0.0  # finite values only
                r1 += d
                r2 += d * d
        else:
            for j in range(block.size):
                f = np.float64(block[j])
                d = f - centre if np.abs(f) < np.inf else 0.0
                d2 = d * d
                r1 += d
                r2 += d2
                r3 += d2 * d
                r4 += d2 * d2
        s1 += r1
        s2 += r2
        s3 += r3
        s4 += r4
    return s1, s2, s3, s4


def _histogram_pass(x: Any, first: float, last: float, nbins: int) -> Any:  # pragma: no cover
    """Counts in numpy's ``nbins`` equal bins over [first, last] (NaN and outside skipped).

    numpy's edges are ``k * step + first`` (``numpy.linspace``) and ``last``:
    each value's bin is estimated, then checked against those edges, computed
    the same way, so the answer is numpy's to the last value.
    """
    scale = nbins / (last - first)
    step = (last - first) / nbins
    top = np.int32(nbins - 1)
    counts = np.zeros(nbins + 1, np.int64)  # the last: outside, or NaN
    idx = np.empty(4096, np.int32)
    for start in range(0, x.size, 4096):
        block = x[start : start + 4096]
        for j in range(block.size):  # branch-free, so that it vectorizes
            f = np.float64(block[j])
            inside = (f >= first) & (f <= last)
            k = np.int32(min(max((f - first) * scale, 0.0), nbins - 1.0))
            lower = k * step + first
            upper = (k + 1) * step + first
            k = k - np.int32(f < lower) + np.int32((f >= upper) & (k != top))
            idx[j] = k if inside else np.int32(nbins)
        for j in range(block.size):
            counts[idx[j]] += 1
    return counts[:nbins]


_ROWS = 128  # rows summed into per-cell run accumulators before the totals
_CELLS = 256  # cells whose buckets the sketch kernel finds together, row by row
_SLOTS = 1 << 22  # the sketch kernel's table of counts: 16 MiB, but for one cell's range
CUBIC = (6 / 35, -3 / 5, 10 / 7)
"""DDSketch's cubic ``P(s)`` for ``log2(1 + s)``: coefficients of ``s**3``, ``s**2``, ``s``."""


def _summaries(ncells: int) -> tuple[Any, ...]:  # pragma: no cover - compiled
    """:func:`_cells_pass`'s results before any value: counts and sums 0, no extrema."""
    return (
        np.zeros(ncells, np.int64),
        np.zeros(ncells),
        np.zeros(ncells, np.int64),
        np.zeros(ncells),
        np.zeros(ncells, np.uint8),
        np.full(ncells, np.inf),
        np.full(ncells, -np.inf),
    )


def _cells_pass(x: Any) -> tuple[Any, ...]:  # pragma: no cover - compiled
    """Per column of ``x`` (rows: the values reduced; columns: the cells kept), one pass.

    Non-NaN count and float64 sum, finite count and float64 sum, infinity
    flags (1: +inf, 2: -inf) and NaN-skipping min and max (+inf and -inf
    where a column has no value). The loops over columns vectorize; sums
    go through run accumulators of ``_ROWS`` rows, so rounding grows with
    ``_ROWS + rows / _ROWS``, not with the rows.
    """
    size, ncells = x.shape
    n, total, fn, ftotal, flags, lo, hi = _summaries_one(ncells)
    run = np.zeros(ncells)
    frun = np.zeros(ncells)
    for start in range(0, size, _ROWS):
        run[:] = 0.0
        frun[:] = 0.0
        for t in range(start, min(start + _ROWS, size)):
            row = x[t]
            for c in range(ncells):
                f = np.float64(row[c])
                ok = f == f
                fin = np.abs(f) < np.inf
                n[c] += np.int64(ok)
                fn[c] += np.int64(fin)
                run[c] += f if ok else 0.0
                frun[c] += f if fin else 0.0
                flags[c] |= np.uint8(f == np.inf) | (np.uint8(f == -np.inf) << np.uint8(1))
                lo[c] = f if f < lo[c] else lo[c]
                hi[c] = f if f > hi[c] else hi[c]
        for c in range(ncells):
            total[c] += run[c]
            ftotal[c] += frun[c]
    return n, total, fn, ftotal, flags, lo, hi


def _central(
    row: Any, centre: Any, order: int, r1: Any, r2: Any, r3: Any, r4: Any
) -> None:  # pragma: no cover - compiled
    """Add one row's powers of ``d = x - centre`` (finite x; else 0) to the run sums, per cell.

    ``d`` and ``d**2`` always, ``d**3`` from ``order`` 3, ``d**4`` from 4.
    """
    if order == 2:
        for c in range(row.size):
            f = np.float64(row[c])
            d = f - centre[c] if np.abs(f) < np.inf else 0.0
            r1[c] += d
            r2[c] += d * d
    else:
        for c in range(row.size):
            f = np.float64(row[c])
            d = f - centre[c] if np.abs(f) < np.inf else 0.0
            d2 = d * d
            r1[c] += d
            r2[c] += d2
            r3[c] += d2 * d
            if order >= 4:
                r4[c] += d2 * d2


def _cells_moments(x: Any, centre: Any, order: int) -> tuple[Any, ...]:  # pragma: no cover
    """Per column: sums of ``d``, ``d**2`` (to ``d**order``), ``d = x - centre`` over finite x."""
    size, ncells = x.shape
    s1 = np.zeros(ncells)
    s2 = np.zeros(ncells)
    s3 = np.zeros(ncells if order >= 3 else 0)
    s4 = np.zeros(ncells if order >= 4 else 0)
    r1 = np.zeros(ncells)
    r2 = np.zeros(ncells)
    r3 = np.zeros(ncells if order >= 3 else 0)
    r4 = np.zeros(ncells if order >= 4 else 0)
    for start in range(0, size, _ROWS):
        r1[:] = 0.0
        r2[:] = 0.0
        r3[:] = 0.0
        r4[:] = 0.0
        for t in range(start, min(start + _ROWS, size)):
            _central_one(x[t], centre, order, r1, r2, r3, r4)
        s1 += r1
        s2 += r2
        s3 += r3
        s4 += r4
    return s1, s2, s3, s4


def _cells_sketch(
    bits: Any,
    values: Any,
    f32: bool,
    multiplier: float,
    offset: int,
    inf: int,
    span: int,
    stats: bool,
    order: int,
) -> tuple[Any, ...]:  # pragma: no cover - compiled
    """A block's sketch codes and counts per column (one column per cell); its statistics too.

    ``bits`` are ``values`` viewed as unsigned integers of their width (float32
    when ``f32``, else float64), the values reduced down the rows and the
    cells kept across (a block of whole maps as it is in memory). The buckets
    are :meth:`QuantileSketch.bucket`'s (NaN skipped), read off each float's
    exponent and mantissa bits with the same arithmetic, in the same order;
    subnormals, rare, go through ``frexp`` as numpy's path does.

    Cells go in tiles of ``_CELLS`` columns, read row by row (contiguous,
    vectorized). A first pass finds every value's bucket, each cell's
    smallest and largest finite non-zero magnitude's bucket and the signs
    seen; with ``stats``, also :func:`_cells_pass`'s counts, sums and extrema
    with its arithmetic (the finite values' apart only where a cell holds an
    infinity). A second pass counts the buckets, row by row, in a table that
    gives each cell a slot per bucket of its range on each sign, and zero,
    the infinities and NaN a slot each (consecutive counts go to different
    cells: no count waits for the one before; cells whose ranges are wide
    take turns, so that the table stays within ``_SLOTS`` counts but for a
    cell alone that needs more); with ``order`` >= 2, it also
    sums the central powers :func:`_cells_moments` does, about the finite
    mean. The table is then read off in code order per cell. No sort, no
    logarithm, no transposed copy; the statistics cost one read of the
    block, not two.

    Returns ``n, total, fn, ftotal, flags, lo, hi`` (as :func:`_cells_pass`;
    empty without ``stats``), ``s1, s2, s3, s4`` (as :func:`_cells_moments`;
    empty below ``order`` 2), and the sorted ``(cell, bucket)`` codes and
    their counts.
    """
    size, ncells = bits.shape
    a3, b3, c3 = CUBIC
    if f32:
        amask = np.int64(0x7FFFFFFF)
        nmant = np.int64(23)
        bias = np.int64(127)
        scale = 2.0**-23
    else:
        amask = np.int64(0x7FFFFFFFFFFFFFFF)
        nmant = np.int64(52)
        bias = np.int64(1023)
        scale = 2.0**-52
    fmask = (np.int64(1) << nmant) - 1
    ibits = amask ^ fmask  # the infinities' magnitude: every exponent bit set
    zero, top, nan = np.int64(0), np.int64(inf), np.int64(-1)  # zero's, infinity's, NaN's
    n, total, fn, ftotal, flags, lo, hi = _summaries_one(ncells if stats else 0)
    moments = ncells if stats and order >= 2 else 0
    s1 = np.zeros(moments)
    s2 = np.zeros(moments)
    s3 = np.zeros(moments if order >= 3 else 0)
    s4 = np.zeros(moments if order >= 4 else 0)
    tile = _CELLS
    buf = np.empty((max(1, size), tile), np.int32)  # each value's code; NaN -1
    kmin = np.empty(tile, np.int64)  # per cell: the smallest and largest finite non-zero
    kmax = np.empty(tile, np.int64)  # magnitude's bucket, and the signs seen (1 -, 2 +)
    signs = np.empty(tile, np.int64)
    tn = np.empty(tile, np.int64)
    ttot = np.empty(tile)
    tlo = np.empty(tile)
    thi = np.empty(tile)
    run = np.empty(tile)
    centre = np.empty(tile)
    r1 = np.empty(tile)
    r2 = np.empty(tile)
    r3 = np.empty(tile)
    r4 = np.empty(tile)
    width_of = np.empty(tile, np.int64)  # per cell: buckets in its magnitude range
    base = np.empty(tile, np.int64)  # where its slots start in the table
    neg = np.empty(tile, np.int64)  # slot of a negative value: neg + (code - inf)
    pos = np.empty(tile, np.int64)  # slot of a positive value: pos + (code - inf)
    slots = np.empty(tile, np.int64)
    table = np.zeros(4096, np.int32)
    cap = max(64, 4 * ncells + 1024)
    codes = np.empty(cap, np.int64)
    counts = np.empty(cap, np.int64)
    out = 0
    for c0 in range(0, ncells, tile):
        width = min(tile, ncells - c0)
        kmin[:] = span
        kmax[:] = -1
        signs[:] = 0
        tn[:] = 0
        ttot[:] = 0.0
        tlo[:] = np.inf
        thi[:] = -np.inf
        tiny = False
        special = False  # zero, an infinity or NaN: slots of their own
        for start in range(0, size, _ROWS):
            run[:] = 0.0
            for t in range(start, min(start + _ROWS, size)):
                row = bits[t, c0 : c0 + width]
                dst = buf[t]
                for cc in range(width):  # branch-free: every value's code
                    raw = np.int64(row[cc])
                    mag = raw & amask
                    ex = mag >> nmant
                    s = np.float64(mag & fmask) * scale
                    p = ((a3 * s + b3) * s + c3) * s
                    k = np.int64(np.floor((np.float64(ex - bias) + p) * multiplier)) + offset
                    k = zero if mag == 0 else k
                    k = top if mag >= ibits else k
                    b = top - k if raw != mag else top + k
                    b = nan if mag > ibits else b
                    dst[cc] = b
                    fin = (ex != 0) & (mag < ibits)
                    tiny |= (ex == 0) & (mag != 0)
                    special |= (mag == 0) | (mag >= ibits)
                    kmin[cc] = min(kmin[cc], k if fin else span)
                    kmax[cc] = max(kmax[cc], k if fin else -1)
                    signs[cc] |= (1 if raw != mag else 2) if fin else 0
                if stats:  # _cells_pass's arithmetic
                    vrow = values[t, c0 : c0 + width]
                    for cc in range(width):
                        f = np.float64(vrow[cc])
                        ok = f == f
                        tn[cc] += np.int64(ok)
                        run[cc] += f if ok else 0.0
                        tlo[cc] = f if f < tlo[cc] else tlo[cc]
                        thi[cc] = f if f > thi[cc] else thi[cc]
            for cc in range(width):
                ttot[cc] += run[cc]
        if tiny:  # subnormals: their exponent bits are not their exponent
            for t in range(size):
                for cc in range(width):
                    mag = np.int64(bits[t, c0 + cc]) & amask
                    if (mag >> nmant) != 0 or mag == 0:
                        continue
                    m, e = math.frexp(abs(np.float64(values[t, c0 + cc])))
                    s = np.float64(2 * m - 1)
                    p = ((a3 * s + b3) * s + c3) * s
                    k = np.int64(np.floor((np.float64(e - 1) + p) * multiplier)) + offset
                    b = inf - k if values[t, c0 + cc] < 0 else inf + k
                    buf[t, cc] = b
                    kmin[cc] = min(kmin[cc], k)
                    kmax[cc] = max(kmax[cc], k)
                    signs[cc] |= 1 if b < inf else 2
        if stats:
            infinite = False
            for cc in range(width):
                c = c0 + cc
                n[c] = tn[cc]
                total[c] = ttot[cc]
                lo[c] = tlo[cc]
                hi[c] = thi[cc]
                infinite |= (tlo[cc] == -np.inf) | (thi[cc] == np.inf)
            if infinite:  # rare: the finite values' count and sum, and the infinities seen
                for start in range(0, size, _ROWS):
                    run[:] = 0.0
                    for t in range(start, min(start + _ROWS, size)):
                        vrow = values[t, c0 : c0 + width]
                        for cc in range(width):
                            f = np.float64(vrow[cc])
                            fin = np.abs(f) < np.inf
                            fn[c0 + cc] += np.int64(fin)
                            run[cc] += f if fin else 0.0
                            flags[c0 + cc] |= np.uint8(f == np.inf) | (
                                np.uint8(f == -np.inf) << np.uint8(1)
                            )
                    for cc in range(width):
                        ftotal[c0 + cc] += run[cc]
            else:
                for cc in range(width):
                    fn[c0 + cc] = tn[cc]
                    ftotal[c0 + cc] = ttot[cc]
            for cc in range(width):
                c = c0 + cc
                centre[cc] = ftotal[c] / max(fn[c], 1) if fn[c] > 0 else 0.0
        # Cells in groups whose slots fit the table (_SLOTS; a cell alone may take
        # more): each cell's range of magnitudes for each sign (in code order: the
        # negative ones from the largest magnitude down), then zero, +inf, -inf, NaN.
        ga = 0
        while ga < width:
            need = 0
            gb = ga
            while gb < width:
                r = max(kmax[gb] - kmin[gb] + 1, 0)
                if gb > ga and need + 2 * r + 4 > _SLOTS:
                    break
                width_of[gb] = r
                base[gb] = need
                neg[gb] = need + kmax[gb]
                pos[gb] = need + r - kmin[gb]
                need += 2 * r + 4
                gb += 1
            if table.size < need:
                table = np.zeros(max(need, min(2 * table.size, _SLOTS)), np.int32)
            # The group's per-cell arrays as slices: loops over a slice vectorize.
            gw = gb - ga
            gpos, gneg, gbase, gwidth = pos[ga:gb], neg[ga:gb], base[ga:gb], width_of[ga:gb]
            gslots = slots[:gw]
            g1, g2, g3, g4 = r1[ga:gb], r2[ga:gb], r3[ga:gb], r4[ga:gb]
            gcentre = centre[ga:gb]
            for start in range(0, size, _ROWS):
                g1[:] = 0.0
                g2[:] = 0.0
                g3[:] = 0.0
                g4[:] = 0.0
                for t in range(start, min(start + _ROWS, size)):
                    src = buf[t, ga:gb]
                    if special:
                        for cc in range(gw):
                            b = np.int64(src[cc])
                            rel = b - top
                            r = gwidth[cc]
                            slot = (gpos[cc] if rel > 0 else gneg[cc]) + rel
                            slot = gbase[cc] + 2 * r if rel == 0 else slot
                            slot = gbase[cc] + 2 * r + 1 if b == 2 * top else slot
                            slot = gbase[cc] + 2 * r + 2 if b == 0 else slot
                            slot = gbase[cc] + 2 * r + 3 if b < 0 else slot
                            gslots[cc] = slot
                    else:
                        for cc in range(gw):
                            rel = np.int64(src[cc]) - top
                            gslots[cc] = (gpos[cc] if rel > 0 else gneg[cc]) + rel
                    for cc in range(gw):
                        table[gslots[cc]] += 1
                    if stats and order >= 2:  # _cells_moments's arithmetic
                        _central_one(values[t, c0 + ga : c0 + gb], gcentre, order, g1, g2, g3, g4)
                if stats and order >= 2:
                    for cc in range(ga, gb):
                        c = c0 + cc
                        s1[c] += r1[cc]
                        s2[c] += r2[cc]
                        if order >= 3:
                            s3[c] += r3[cc]
                        if order >= 4:
                            s4[c] += r4[cc]
            for cc in range(ga, gb):
                r = width_of[cc]
                first = base[cc]
                table[first + 2 * r + 3] = 0  # NaN's, not read off
                need = out + 3 + 2 * r
                if need > cap:
                    # A guess from the cells so far, so that the arrays grow about once.
                    cap = max(2 * cap, need, out * ncells // max(c0 + cc, 1) + 2 * r + 4)
                    grown = np.empty(cap, np.int64)
                    grown[:out] = codes[:out]
                    codes = grown
                    grown = np.empty(cap, np.int64)
                    grown[:out] = counts[:out]
                    counts = grown
                cell = np.int64(c0 + cc) * span
                # In code order: -inf, the negative range, zero, the positive range, +inf.
                j = first + 2 * r + 2
                out = _emit_one(table, codes, counts, out, cell - j, j, j)
                if signs[cc] & 1:  # slot first + i: magnitude kmax - i, code inf - kmax + i
                    out = _emit_one(
                        table,
                        codes,
                        counts,
                        out,
                        cell + inf - kmax[cc] - first,
                        first,
                        first + r - 1,
                    )
                j = first + 2 * r
                out = _emit_one(table, codes, counts, out, cell + inf - j, j, j)
                if signs[cc] & 2:  # slot first + r + i: magnitude kmin + i, code inf + kmin + i
                    out = _emit_one(
                        table,
                        codes,
                        counts,
                        out,
                        cell + inf + kmin[cc] - first - r,
                        first + r,
                        first + 2 * r - 1,
                    )
                j = first + 2 * r + 1
                out = _emit_one(table, codes, counts, out, cell + 2 * inf - j, j, j)
            ga = gb
    return (
        n,
        total,
        fn,
        ftotal,
        flags,
        lo,
        hi,
        s1,
        s2,
        s3,
        s4,
        codes[:out].copy(),
        counts[:out].copy(),
    )


def _emit(
    table: Any, codes: Any, counts: Any, out: int, base: int, first: int, last: int
) -> int:  # pragma: no cover - compiled
    """``table[first:last + 1]``'s non-zero counts and their codes written from ``out``; reset.

    Branch-free: every slot is written, and kept when its count is not 0
    (whether a bucket is present is a coin toss the branch predictor loses).
    Returns the new ``out``.
    """
    for j in range(first, last + 1):
        n = table[j]
        codes[out] = base + j
        counts[out] = n
        table[j] = 0
        out += n != 0
    return out


def _sketch_merge(a: Any, na: Any, b: Any, nb: Any) -> tuple[Any, Any]:  # pragma: no cover
    """Two sorted code lists merged, the counts of equal codes added."""
    codes = np.empty(a.size + b.size, np.int64)
    counts = np.empty(a.size + b.size, np.int64)
    i = j = out = 0
    while i < a.size and j < b.size:
        if a[i] < b[j]:
            codes[out] = a[i]
            counts[out] = na[i]
            i += 1
        elif b[j] < a[i]:
            codes[out] = b[j]
            counts[out] = nb[j]
            j += 1
        else:
            codes[out] = a[i]
            counts[out] = na[i] + nb[j]
            i += 1
            j += 1
        out += 1
    while i < a.size:
        codes[out] = a[i]
        counts[out] = na[i]
        i += 1
        out += 1
    while j < b.size:
        codes[out] = b[j]
        counts[out] = nb[j]
        j += 1
        out += 1
    return codes[:out].copy(), counts[:out].copy()


def _sketch_ranks(
    codes: Any, counts: Any, ncells: int, span: int, qs: Any
) -> tuple[Any, Any, Any, Any]:  # pragma: no cover - compiled
    """Per cell and quantile: the buckets of the order statistics around numpy's rank.

    numpy.quantile's "linear" rank ``q (n - 1)``; the buckets (``code % span``)
    holding order statistics ``floor`` and ``ceil`` of it, and the weight
    between them. Cells with no value have ``n`` 0 (their row is left as is).
    """
    nq = qs.size
    lo = np.zeros((ncells, nq), np.int64)
    hi = np.zeros((ncells, nq), np.int64)
    t = np.zeros((ncells, nq), np.float64)
    n = np.zeros(ncells, np.int64)
    i = 0
    while i < codes.size:
        c = codes[i] // span
        end = i
        total = np.int64(0)
        while end < codes.size and codes[end] // span == c:
            total += counts[end]
            end += 1
        n[c] = total
        for q in range(nq):
            rank = qs[q] * (total - 1)
            r0 = np.floor(rank)
            r1 = np.ceil(rank)
            t[c, q] = rank - r0
            k0 = np.int64(r0)
            k1 = np.int64(r1)
            seen = np.int64(0)
            p = i
            while seen + counts[p] <= k0:
                seen += counts[p]
                p += 1
            lo[c, q] = codes[p] % span
            while seen + counts[p] <= k1:
                seen += counts[p]
                p += 1
            hi[c, q] = codes[p] % span
        i = end
    return lo, hi, t, n


def _transpose(x: Any) -> Any:  # pragma: no cover - compiled
    """A C-contiguous copy of ``x.T`` (2-D), copied in tiles.

    numpy's copy of a transposed array reads with a stride of a row: for rows
    of a power-of-two size (a 64 x 128 map), every read falls in the same cache
    set; tiles of 32 x 32 keep both sides in the cache.
    """
    m, n = x.shape
    out = np.empty((n, m), x.dtype)
    for i0 in range(0, m, 32):
        for j0 in range(0, n, 32):
            for i in range(i0, min(i0 + 32, m)):
                for j in range(j0, min(j0 + 32, n)):
                    out[j, i] = x[i, j]
    return out


def _lerp(a: float, b: float, t: float) -> float:  # pragma: no cover - compiled
    """:func:`toolkit.stats.aggregations._lerp` of one pair, to the same answer."""
    if t == 0 or a == b:
        return a
    if np.isinf(a) and np.isfinite(b):
        return a
    if np.isfinite(a) and np.isinf(b):
        return b
    d = b - a
    v = b - d * (1 - t) if t >= 0.5 else a + d * t
    if np.isinf(v) and np.isfinite(a) and np.isfinite(b):
        v = a * (1 - t) + b * t
    return v


def _exact_rows(srt: Any, qs: Any) -> Any:  # pragma: no cover - compiled
    """The "linear" quantiles (numpy's) of each row of sorted values (NaN last); NaN for none."""
    ncells, size = srt.shape
    out = np.full((ncells, qs.size), np.nan)
    for c in range(ncells):
        n = size
        while n > 0 and srt[c, n - 1] != srt[c, n - 1]:  # NaN sort last
            n -= 1
        if n == 0:
            continue
        for j in range(qs.size):
            rank = qs[j] * np.float64(n - 1)
            lo = np.floor(rank)
            a = np.float64(srt[c, np.int64(lo)])
            b = np.float64(srt[c, np.int64(np.ceil(rank))])
            out[c, j] = _lerp_one(a, b, rank - lo)
    return out


def _exact_columns(x: Any, qs: Any) -> Any:  # pragma: no cover - compiled
    """:func:`_exact_rows`'s quantiles of each column of ``x`` (values down, cells across).

    Cells go in tiles of ``_CELLS`` columns, copied row by row with NaN as
    +inf (each cell's NaN counted), and sorted all at once by Batcher's
    odd-even merge network: every compare-exchange is of two rows, a min and
    a max across the tile that vectorize, the same exchanges for every cell,
    no branch on the data. numpy's sort of each cell's row instead costs a
    transposed copy of the block and a call per cell: this is about a third of
    that for the short groups (days of hourly data) that lie whole in a block.
    The network for ``size`` values is the one for the next power of two with
    the exchanges that reach past ``size`` left out (values there would be
    the largest, which every exchange leaves in place). The order statistics
    below a cell's count are its values sorted; +inf in place of a NaN only
    sorts among the infinities and after them. Neither this nor numpy's sort
    is stable: 0.0 and -0.0 may end in either order, so a quantile that is a
    zero may differ from numpy's in its sign alone.
    """
    size, ncells = x.shape
    nq = qs.size
    out = np.full((ncells, nq), np.nan)
    tile = _CELLS
    buf = np.empty((max(size, 1), tile), x.dtype)
    cnt = np.empty(tile, np.int64)
    top = 1
    while top < size:
        top *= 2
    for c0 in range(0, ncells, tile):
        w = min(tile, ncells - c0)
        cnt[:w] = 0
        for t in range(size):
            src = x[t, c0 : c0 + w]
            dst = buf[t, :w]
            for cc in range(w):
                v = src[cc]
                ok = v == v
                cnt[cc] += ok
                dst[cc] = v if ok else np.inf
        p = 1
        while p < top:
            k = p
            while k >= 1:
                for j in range(k % p, top - k, 2 * k):
                    for i in range(min(k, top - j - k)):
                        lo_row = i + j
                        hi_row = lo_row + k
                        if hi_row >= size or lo_row // (2 * p) != hi_row // (2 * p):
                            continue
                        bi = buf[lo_row, :w]
                        bj = buf[hi_row, :w]
                        for cc in range(w):
                            a = bi[cc]
                            b = bj[cc]
                            bi[cc] = a if a < b else b
                            bj[cc] = b if a < b else a
                k //= 2
            p *= 2
        full = True
        for cc in range(w):
            full &= cnt[cc] == size
        if full and size > 0:  # every cell the same ranks: rows read across the tile
            for q in range(nq):
                rank = qs[q] * np.float64(size - 1)
                lo = np.floor(rank)
                ra = buf[np.int64(lo), :w]
                rb = buf[np.int64(np.ceil(rank)), :w]
                for cc in range(w):
                    out[c0 + cc, q] = _lerp_one(np.float64(ra[cc]), np.float64(rb[cc]), rank - lo)
            continue
        for cc in range(w):
            m = cnt[cc]
            if m == 0:
                continue
            for q in range(nq):
                rank = qs[q] * np.float64(m - 1)
                lo = np.floor(rank)
                a = np.float64(buf[np.int64(lo), cc])
                b = np.float64(buf[np.int64(np.ceil(rank)), cc])
                out[c0 + cc, q] = _lerp_one(a, b, rank - lo)
    return out


summary_pass: Callable[[Any], tuple[Any, float]]
finite_pass: Callable[[Any], tuple[Any, float, Any, Any]]
moments_pass: Callable[[Any, float, int], tuple[float, float, float, float]]
histogram_pass: Callable[[Any, float, float, int], Any]
cells_sketch: Callable[..., tuple[Any, ...]]
sketch_merge: Callable[[Any, Any, Any, Any], tuple[Any, Any]]
sketch_ranks: Callable[[Any, Any, int, int, Any], tuple[Any, Any, Any, Any]]
transpose: Callable[[Any], Any]
cells_pass: Callable[[Any], tuple[Any, ...]]
cells_moments: Callable[[Any, Any, int], tuple[Any, ...]]
exact_rows: Callable[[Any, Any], Any]
exact_columns: Callable[[Any, Any], Any]
_emit_one: Callable[..., int]
_central_one: Callable[..., None]
_summaries_one: Callable[[int], tuple[Any, ...]]
_lerp_one: Callable[[float, float, float], float]
if AVAILABLE:  # pragma: no branch
    # "reassoc" lets the sums vectorize (several partial sums, as pairwise
    # summation has); no flag that would change NaN or infinity handling. The
    # histogram's edge arithmetic must round as numpy's does: no flags at all.
    _sums = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
    summary_pass = _sums(_summary_pass)
    finite_pass = _sums(_finite_pass)
    moments_pass = _sums(_moments_pass)
    histogram_pass = numba.njit(cache=True, nogil=True)(_histogram_pass)
    # The sketch's buckets must be numpy's (QuantileSketch.bucket): no flags either.
    _emit_one = numba.njit(cache=True, nogil=True)(_emit)
    cells_sketch = numba.njit(cache=True, nogil=True)(_cells_sketch)
    sketch_merge = numba.njit(cache=True, nogil=True)(_sketch_merge)
    sketch_ranks = numba.njit(cache=True, nogil=True)(_sketch_ranks)
    transpose = numba.njit(cache=True, nogil=True)(_transpose)
    _lerp_one = numba.njit(cache=True, nogil=True)(_lerp)
    # Per-cell sums accumulate cell by cell (no reassociation): the loops over cells
    # vectorize as they are; NaN and infinity comparisons must stay IEEE's.
    _central_one = numba.njit(cache=True, nogil=True)(_central)
    _summaries_one = numba.njit(cache=True, nogil=True)(_summaries)
    cells_pass = numba.njit(cache=True, nogil=True)(_cells_pass)
    cells_moments = numba.njit(cache=True, nogil=True)(_cells_moments)
    exact_rows = numba.njit(cache=True, nogil=True)(_exact_rows)
    exact_columns = numba.njit(cache=True, nogil=True)(_exact_columns)
else:  # pragma: no cover
    summary_pass = _summary_pass
    finite_pass = _finite_pass
    moments_pass = _moments_pass
    histogram_pass = _histogram_pass
    _emit_one = _emit
    _central_one = _central
    _summaries_one = _summaries
    cells_sketch = _cells_sketch
    sketch_merge = _sketch_merge
    sketch_ranks = _sketch_ranks
    transpose = _transpose
    _lerp_one = _lerp
    cells_pass = _cells_pass
    cells_moments = _cells_moments
    exact_rows = _exact_rows
    exact_columns = _exact_columns
