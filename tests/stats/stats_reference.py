"""Reference answers for the statistics tests: exact moments, numpy for the rest.

Rows with infinities take numpy's own answers (``numpy.nanmean``, ``nanvar``, ...).
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np

from toolkit.stats.aggregations import quantile_bound

DTYPES = [
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
]
MOMENTS = ["count", "nan_count", "sum", "mean", "var", "std", "min", "max", "skew", "kurtosis"]


def values(
    rng: np.random.Generator,
    dtype: str,
    shape: tuple[int, ...],
    nan: float,
    inf: float = 0.0,
    sign: str = "±",
) -> np.ndarray:
    """Random values of ``dtype``: offset normals for floats, a random sub-range for integers.

    Floats have a fraction ``nan`` of NaN and, before those, a fraction ``inf``
    of infinities: ``+inf``, ``-inf`` or either (``sign`` "+", "-" or "±").
    """
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(shape) < 0.3
    if dt.kind in "iu":
        info = np.iinfo(dt)
        span = int(info.max) - int(info.min)
        width = min(int(rng.choice([3, 200, 2**20, 2**64])), span)
        lo = int(info.min) + int(rng.random() * (span - width))
        u = rng.integers(0, 2**64 - 1, shape, dtype=np.uint64, endpoint=True).astype(object)
        return (u % (width + 1) + lo).astype(dt) if u.size else np.zeros(shape, dt)
    scale = float(rng.choice([1e-3, 1.0, 1e3]))
    offset = float(rng.uniform(-10, 10)) * scale
    x = (offset + scale * rng.standard_normal(shape)).astype(dt)
    if inf:
        signs = {"+": 1.0, "-": -1.0, "±": rng.choice([-1.0, 1.0], shape)}[sign]
        x = np.where(rng.random(shape) < inf, signs * np.inf, x).astype(dt)
    x[rng.random(shape) < nan] = np.nan
    return x


def rows(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The values of each kept cell, one row per cell (C order of the kept dims)."""
    kept = [a for a in range(x.ndim) if a not in axes]
    moved = np.moveaxis(x, kept, list(range(len(kept))))
    return moved.reshape(math.prod(x.shape[a] for a in kept), math.prod(x.shape[a] for a in axes))


def reference(x: np.ndarray, axes: tuple[int, ...], ddof: int = 0) -> dict[str, np.ndarray]:
    """Exact answers per kept cell (numpy's for counts, extrema and sums), and their scales.

    The moments are computed exactly from the float64 values, because numpy's
    own two-pass float64 answer is off by more than 1e-12 for data whose mean
    is large against its spread (skew of ints near 2**31, say).
    """
    kept = [a for a in range(x.ndim) if a not in axes]
    keys = [*MOMENTS, "m2"] + [f"{k}_scale" for k in ("sum", "mean", "var", "skew", "kurtosis")]
    out: dict[str, list[float]] = {k: [] for k in keys}
    for row in rows(x, axes):
        v = row.astype(np.float64)
        v = v[~np.isnan(v)]
        n = v.size
        r: dict[str, float] = {"count": n, "nan_count": row.size - n}
        with np.errstate(invalid="ignore"):  # inf + -inf: NaN, as toolkit's
            r["sum"] = float(np.sum(v))
        r["sum_scale"] = float(np.sum(np.abs(v)))
        r["mean"] = np.nan
        r["mean_scale"] = float(np.max(np.abs(v))) if n else 0.0
        if np.isinf(v).any():
            r.update(_with_infinities(row.astype(np.float64), ddof))
        elif n:
            # Exact central sums (rational arithmetic on the float64 values).
            fv = [Fraction(float(e)) for e in v]
            mean = sum(fv, Fraction(0)) / n
            c2, c3, c4 = (sum(((e - mean) ** k for e in fv), Fraction(0)) for k in (2, 3, 4))
            m2, m3, m4 = (float(c / n) for c in (c2, c3, c4))
            r["mean"] = float(mean)
            r["var"] = float(c2 / (n - ddof)) if n > ddof else np.nan
            r["var_scale"] = float(np.max(np.abs(v))) ** 2
            r["min"], r["max"] = float(v.min()), float(v.max())
            r["m2"] = m2
            ok = m2 > (1e-15 * float(mean)) ** 2 and m2 > 0  # scipy.stats' rule
            r["skew"] = m3 / m2**1.5 if ok else np.nan
            r["kurtosis"] = m4 / m2**2 - 3 if ok else np.nan
            # Rounding: each term of the central sums is bounded by max|d|^k,
            # so the statistic is known relative to those terms over m2.
            md = float(np.max(np.abs(v - float(mean))))
            r["skew_scale"] = md**3 / m2**1.5 + abs(r["skew"]) * md**2 / m2 if ok else 0.0
            r["kurtosis_scale"] = md**4 / m2**2 + abs(r["kurtosis"] + 3) * md**2 / m2 if ok else 0.0
        else:
            r.update(var=np.nan, min=np.nan, max=np.nan, skew=np.nan, kurtosis=np.nan, m2=0.0)
            r.update(var_scale=0.0, skew_scale=0.0, kurtosis_scale=0.0)
        for k, val in r.items():
            out[k].append(val)
    out["std"] = list(np.sqrt(np.array(out["var"], dtype=float)))
    shape = tuple(x.shape[a] for a in kept)
    return {k: np.array(v).reshape(shape) for k, v in out.items()}


def _with_infinities(row: np.ndarray, ddof: int) -> dict[str, float]:
    """numpy's own answers for a row (NaN included) holding infinities, compared exactly.

    skew and kurtosis are toolkit's (biased, g1 and g2) in numpy arithmetic:
    central moments about ``numpy.nanmean``, which infinities make NaN.
    """
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(row)
        d = row[~np.isnan(row)] - mean
        m2, m3, m4 = (float(np.mean(d**k)) for k in (2, 3, 4))
        r = {
            "sum": float(np.nansum(row)),
            "mean": float(mean),
            "var": float(np.nanvar(row, ddof=ddof)),
            "min": float(np.nanmin(row)),
            "max": float(np.nanmax(row)),
            "m2": m2,
            "skew": m3 / m2**1.5,
            "kurtosis": m4 / m2**2 - 3,
        }
    scales = ("sum_scale", "mean_scale", "var_scale", "skew_scale", "kurtosis_scale")
    return {**r, **dict.fromkeys(scales, 0.0)}


def quantiles(v: np.ndarray, qs: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy's ``"linear"`` quantiles of ``v`` (no NaN) and the order statistics around them.

    Where numpy's formula computes ``inf - inf`` and answers NaN
    (numpy/numpy#21091), the limit of the interpolation instead: the lower
    order statistic at an exact rank, the infinite one between a finite and an
    infinite one (as ``numpy.median`` of an even count has it), NaN between
    ``-inf`` and ``+inf``. Between two finite order statistics whose difference
    overflows, where numpy answers an infinity, their weighted mean. numpy's
    own answer everywhere else.
    """
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        numpy = np.quantile(v, qs)
    lower = np.quantile(v, qs, method="lower")
    higher = np.quantile(v, qs, method="higher")
    want = numpy.copy()
    for j, q in enumerate(qs):
        rank = q * (v.size - 1)
        t = rank - math.floor(rank)
        a, b = float(lower[j]), float(higher[j])
        if math.isfinite(a) and math.isfinite(b):
            if not math.isfinite(numpy[j]):
                want[j] = a * (1 - t) + b * t
            continue
        if t == 0 or a == b:
            want[j] = a
        elif math.isinf(a) and math.isinf(b):
            want[j] = np.nan
        else:
            want[j] = a if math.isinf(a) else b
        # numpy's answer is the limit, or NaN: never another value.
        assert np.isnan(numpy[j]) or numpy[j] == want[j], (v, q, numpy[j], want[j])
    return want, lower, higher


def check_quantiles(got: np.ndarray, v: np.ndarray, qs: list[float], alpha: float) -> None:
    """Sketch quantiles of ``v`` (no NaN): infinite and NaN ones exactly, others in bound."""
    if v.size == 0:
        assert np.isnan(got).all(), got
        return
    want, lower, higher = quantiles(v, qs)
    assert (np.isnan(got) == np.isnan(want)).all(), (got, want)
    inf = np.isinf(want)
    assert (got[inf] == want[inf]).all(), (got, want)
    fin = np.isfinite(want)
    bound = quantile_bound(lower, higher, alpha)
    assert (np.abs(got[fin] - want[fin]) <= bound[fin] + 1e-300).all(), (got, want, bound)


def check(stat: str, got: np.ndarray, ref: dict[str, np.ndarray], rtol: float = 1e-12) -> None:
    want = ref[stat]
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, (stat, got.shape, want.shape)
    assert (np.isnan(got) == np.isnan(want)).all(), (stat, got, want)
    inf = np.isinf(want)
    assert (got[inf] == want[inf]).all(), (stat, got[inf], want[inf])
    ok = np.isfinite(want)
    with np.errstate(invalid="ignore", over="ignore"):  # at the infinities, checked above
        if stat == "std":
            # |a - b| = |a^2 - b^2| / (a + b): the variance's bound, carried over.
            tol = rtol * (np.abs(ref["var"]) + ref["var_scale"])
            err = np.abs(got**2 - want**2)
        else:
            scale = ref.get(f"{stat}_scale", np.zeros_like(want))
            tol = rtol * (np.abs(want) + scale)
            err = np.abs(got - want)
    assert (err[ok] <= tol[ok]).all(), (stat, got[ok], want[ok], (err[ok] / tol[ok]).max())


def sum_overflows(x: np.ndarray, axes: tuple[int, ...]) -> bool:
    """Whether an exact integer sum over ``axes`` leaves int64 (uint64 for unsigned)."""
    if x.dtype.kind not in "iu" or x.size == 0:
        return False
    kept = [a for a in range(x.ndim) if a not in axes]
    moved = np.moveaxis(x, kept, list(range(len(kept))))
    flat = moved.reshape(math.prod(x.shape[a] for a in kept), -1)
    info = np.iinfo("uint64" if x.dtype.kind == "u" else "int64")
    return any(not info.min <= sum(int(v) for v in row) <= info.max for row in flat)
