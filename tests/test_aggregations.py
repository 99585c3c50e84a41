"""The mergeable aggregations against numpy's float64 answers, for any split and tree."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolkit.aggregations import (
    STATISTICS,
    Context,
    QuantileSketch,
    combine,
    components,
    finalize,
    partial,
    quantile_bound,
)

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


def split(x: np.ndarray, axis: int, cuts: list[int]) -> list[np.ndarray]:
    return np.split(x, sorted(set(c % (x.shape[axis] + 1) for c in cuts)), axis=axis)


@st.composite
def cases(draw: st.DrawFn) -> dict[str, object]:
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim)))
    axes = tuple(sorted(draw(st.sets(st.integers(0, ndim - 1), min_size=1))))
    return {
        "dtype": draw(st.sampled_from(DTYPES)),
        "shape": shape,
        "axes": axes,
        "nan": draw(st.sampled_from([0.0, 0.2, 0.9, 1.0])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "cuts": draw(st.lists(st.integers(0, 20), max_size=4)),
        "fan": draw(st.integers(2, 4)),
        "ddof": draw(st.integers(0, 1)),
    }


@given(cases())
def test_any_split_and_tree_gives_numpys_answer(case: dict) -> None:  # type: ignore[type-arg]
    rng = np.random.default_rng(case["seed"])
    x = values(rng, case["dtype"], case["shape"], case["nan"])
    axes = case["axes"]
    aggs = components(MOMENTS)
    # Split along the first reduced axis into random pieces, reduce each, combine
    # in a tree of random fan-in: the partials of a chunked array.
    pieces = split(x, axes[0], case["cuts"])
    parts = [partial(p, axes, aggs) for p in pieces]
    while len(parts) > 1:
        parts = [
            combine(parts[i : i + case["fan"]], aggs) for i in range(0, len(parts), case["fan"])
        ]
    ctx = Context(dtype=x.dtype, shape=(), ddof=case["ddof"])
    got = finalize(parts[0], MOMENTS, ctx)
    ref = reference(x, axes, case["ddof"])
    for stat in MOMENTS:
        check(stat, got[stat], ref)


@pytest.mark.parametrize("dtype", ["int64", "uint64", "int8"])
def test_integer_sums_are_exact_beyond_float64(dtype: str) -> None:
    info = np.iinfo(dtype)
    x = np.array([info.max, info.max, info.max - 1, info.min, 1] * 7, dtype=dtype)
    aggs = components(["sum"])
    parts = [partial(p, (0,), aggs) for p in np.array_split(x, 5)]
    got = finalize(combine(parts, aggs), ["sum"], Context(dtype=x.dtype, shape=()))["sum"]
    exact = sum(int(v) for v in x)
    out = np.iinfo("uint64" if dtype.startswith("u") else "int64")
    if out.min <= exact <= out.max:
        assert got.dtype.kind in "iu" and int(got) == exact
    else:  # beyond 64 bits: correctly rounded
        assert got.dtype == np.float64 and float(got) == float(exact)


def test_histogram_is_numpys_on_edges_and_outside() -> None:
    rng = np.random.default_rng(1)
    edges = np.histogram_bin_edges(np.empty(0), bins=7, range=(-1.0, 1.3))
    x = np.concatenate(
        [rng.uniform(-2, 2, 10_000), edges, np.nextafter(edges, np.inf), [np.nan, np.inf]]
    )
    for e in (edges, np.array([-1.0, -0.5, 0.0, 0.01, 1.3])):
        aggs = components(["histogram"], edges=e)
        parts = [partial(p, (0,), aggs) for p in np.array_split(x, 3)]
        got = combine(parts, aggs)["histogram"]["hist"]
        want = np.histogram(x[np.isfinite(x)], bins=e)[0]
        np.testing.assert_array_equal(got, want)


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 3000),
    alpha=st.sampled_from([0.001, 0.01, 0.05]),
    pieces=st.integers(1, 6),
    kind=st.sampled_from(["normal", "lognormal", "mixed", "ties"]),
)
def test_sketch_quantiles_stay_within_their_bound(
    seed: int, n: int, alpha: float, pieces: int, kind: str
) -> None:
    rng = np.random.default_rng(seed)
    x = {
        "normal": lambda: rng.standard_normal(n) * 100,
        "lognormal": lambda: rng.lognormal(0, 5, n),
        "mixed": lambda: np.where(rng.random(n) < 0.2, 0.0, rng.standard_normal(n) * 1e-5),
        "ties": lambda: rng.integers(-3, 4, n).astype(float),
    }[kind]()
    qs = [0.0, 0.01, 0.25, 0.5, 0.9, 0.999, 1.0]
    aggs = components(["quantiles"], alpha=alpha)
    parts = [partial(p, (0,), aggs) for p in np.array_split(x, pieces)]
    ctx = Context(dtype=x.dtype, shape=(), quantiles=tuple(qs), alpha=alpha)
    got = finalize(combine(parts, aggs), ["quantiles"], ctx)["quantiles"]
    want = np.quantile(x, qs)
    bound = quantile_bound(
        np.quantile(x, qs, method="lower"), np.quantile(x, qs, method="higher"), alpha
    )
    assert (np.abs(got - want) <= bound + 1e-300).all(), (got, want, bound)


def test_sketch_keeps_cells_apart_and_handles_infinities() -> None:
    x = np.array([[1.0, np.inf, 2.0], [-np.inf, -5.0, np.nan], [np.nan, np.nan, np.nan]])
    aggs = components(["quantiles"])
    ctx = Context(dtype=x.dtype, shape=(3,), quantiles=(0.0, 1.0))
    got = finalize(partial(x, (1,), aggs), ["quantiles"], ctx)["quantiles"]
    assert got[0, 1] == np.inf and got[1, 0] == -np.inf
    assert abs(got[0, 0] - 1.0) <= 0.01 and abs(got[1, 1] + 5.0) <= 0.05
    assert np.isnan(got[2]).all()


def test_sketch_state_grows_with_range_not_count() -> None:
    sketch = QuantileSketch(0.01)
    aggs = components(["quantiles"])
    small = partial(np.random.default_rng(0).uniform(1, 10, 1_000), (0,), aggs)
    large = partial(np.random.default_rng(0).uniform(1, 10, 1_000_000), (0,), aggs)
    bound = math.log(10) / math.log((1 + sketch.alpha) / (1 - sketch.alpha)) + 2
    assert len(small["sketch"]["codes"]) <= len(large["sketch"]["codes"]) <= bound


def test_every_statistic_is_declared_with_its_components() -> None:
    for name, stat in STATISTICS.items():
        aggs = components([name], edges=np.array([0.0, 1.0]))
        assert {a.key for a in aggs} >= {k.rstrip("1234") for k in stat.needs}, name
