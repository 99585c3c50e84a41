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

import os
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "AVAILABLE",
    "enabled",
    "finite_pass",
    "histogram_pass",
    "moments_pass",
    "summary_pass",
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


summary_pass: Callable[[Any], tuple[Any, float]]
finite_pass: Callable[[Any], tuple[Any, float, Any, Any]]
moments_pass: Callable[[Any, float, int], tuple[float, float, float, float]]
histogram_pass: Callable[[Any, float, float, int], Any]
if AVAILABLE:  # pragma: no branch
    # "reassoc" lets the sums vectorize (several partial sums, as pairwise
    # summation has); no flag that would change NaN or infinity handling. The
    # histogram's edge arithmetic must round as numpy's does: no flags at all.
    _sums = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
    summary_pass = _sums(_summary_pass)
    finite_pass = _sums(_finite_pass)
    moments_pass = _sums(_moments_pass)
    histogram_pass = numba.njit(cache=True, nogil=True)(_histogram_pass)
else:  # pragma: no cover
    summary_pass = _summary_pass
    finite_pass = _finite_pass
    moments_pass = _moments_pass
    histogram_pass = _histogram_pass
