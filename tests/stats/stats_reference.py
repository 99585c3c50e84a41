"""Reference answers for the statistics tests: exact moments, numpy for the rest."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

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


def values(rng: np.random.Generator, dtype: str, shape: tuple[int, ...], nan: float) -> np.ndarray:
    """Random values of ``dtype``: offset normals for floats, a random sub-range for integers."""
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
    x[rng.random(shape) < nan] = np.nan
    return x


def reference(x: np.ndarray, axes: tuple[int, ...], ddof: int = 0) -> dict[str, np.ndarray]:
    """Exact answers per kept cell (numpy's for counts, extrema and sums), and their scales.

    The moments are computed exactly from the float64 values, because numpy's
    own two-pass float64 answer is off by more than 1e-12 for data whose mean
    is large against its spread (skew of ints near 2**31, say).
    """
    kept = [a for a in range(x.ndim) if a not in axes]
    moved = np.moveaxis(x, kept, list(range(len(kept))))
    flat = moved.reshape(math.prod(x.shape[a] for a in kept), math.prod(x.shape[a] for a in axes))
    keys = [*MOMENTS, "m2"] + [f"{k}_scale" for k in ("sum", "mean", "var", "skew", "kurtosis")]
    out: dict[str, list[float]] = {k: [] for k in keys}
    for row in flat:
        v = row.astype(np.float64)
        v = v[~np.isnan(v)]
        n = v.size
        r: dict[str, float] = {"count": n, "nan_count": row.size - n}
        r["sum"] = float(np.sum(v))
        r["sum_scale"] = float(np.sum(np.abs(v)))
        r["mean"] = np.nan
        r["mean_scale"] = float(np.max(np.abs(v))) if n else 0.0
        if n:
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


def check(stat: str, got: np.ndarray, ref: dict[str, np.ndarray], rtol: float = 1e-12) -> None:
    want = ref[stat]
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, (stat, got.shape, want.shape)
    assert (np.isnan(got) == np.isnan(want)).all(), (stat, got, want)
    ok = ~np.isnan(want)
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
