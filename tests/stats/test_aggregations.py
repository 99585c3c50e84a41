"""The mergeable aggregations against numpy's float64 answers, for any split and tree."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from stats_reference import DTYPES, MOMENTS, check, reference, sum_overflows, values

from toolkit.errors import StatsOverflowError
from toolkit.stats.aggregations import (
    STATISTICS,
    Context,
    QuantileSketch,
    combine,
    components,
    finalize,
    partial,
    quantile_bound,
)


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


@pytest.mark.parametrize("kernels", ["1", "0"], ids=["kernels", "numpy"])
@given(cases())
def test_any_split_and_tree_gives_numpys_answer(kernels: str, case: dict) -> None:  # type: ignore[type-arg]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOOLKIT_KERNELS", kernels)
        _split_and_tree(case)


def _split_and_tree(case: dict) -> None:  # type: ignore[type-arg]
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
    if sum_overflows(x, axes):
        with pytest.raises(StatsOverflowError):
            finalize(parts[0], MOMENTS, ctx)
        return
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
    ctx = Context(dtype=x.dtype, shape=())
    exact = sum(int(v) for v in x)
    out = np.iinfo("uint64" if dtype.startswith("u") else "int64")
    if out.min <= exact <= out.max:
        got = finalize(combine(parts, aggs), ["sum"], ctx)["sum"]
        assert got.dtype == out.dtype and int(got) == exact
    else:  # beyond 64 bits: an error, never a wrapped-around sum
        with pytest.raises(StatsOverflowError, match="does not fit"):
            finalize(combine(parts, aggs), ["sum"], ctx)


@pytest.mark.parametrize("kernels", ["1", "0"], ids=["kernels", "numpy"])
def test_histogram_is_numpys_on_edges_and_outside(kernels: str, monkeypatch) -> None:
    monkeypatch.setenv("TOOLKIT_KERNELS", kernels)
    rng = np.random.default_rng(1)
    edges = np.histogram_bin_edges(np.empty(0), bins=7, range=(-1.0, 1.3))
    x = np.concatenate(
        [rng.uniform(-2, 2, 10_000), edges, np.nextafter(edges, np.inf),
         np.nextafter(edges, -np.inf), [np.nan, np.inf, -np.inf]]
    )  # fmt: skip
    awkward = np.histogram_bin_edges(np.empty(0), bins=49, range=(0.1, 0.7))
    x = np.concatenate([x, awkward, np.nextafter(awkward, -1), np.nextafter(awkward, 1)])
    for e in (edges, awkward, np.array([-1.0, -0.5, 0.0, 0.01, 1.3])):
        for data in (x, x.astype("f4")):
            aggs = components(["histogram"], edges=e)
            parts = [partial(p, (0,), aggs) for p in np.array_split(data, 3)]
            got = combine(parts, aggs)["histogram"]["hist"]
            v = data.astype("f8")
            np.testing.assert_array_equal(got, np.histogram(v[np.isfinite(v)], bins=e)[0])


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
