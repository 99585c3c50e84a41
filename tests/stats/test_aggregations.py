"""The mergeable aggregations against numpy's float64 answers, for any split and tree."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from stats_reference import (
    DTYPES,
    MOMENTS,
    check,
    check_quantiles,
    quantiles,
    reference,
    rows,
    sum_overflows,
    values,
)

from toolkit.errors import StatsOverflowError
from toolkit.stats import _kernels, aggregations
from toolkit.stats.aggregations import (
    STATISTICS,
    Context,
    QuantileSketch,
    combine,
    components,
    exact_quantiles,
    finalize,
    partial,
    quantile_bound,
)


def split(x: np.ndarray, axis: int, cuts: list[int]) -> list[np.ndarray]:
    return np.split(x, sorted(set(c % (x.shape[axis] + 1) for c in cuts)), axis=axis)


def tree(x: np.ndarray, axes: tuple[int, ...], aggs: list, case: dict) -> dict:  # type: ignore[type-arg]
    """The partial of ``x`` from pieces combined in a tree of the case's shape.

    The pieces are cut along the first reduced axis and, when there are more,
    the last (the blocks of a chunked array); their partials are combined in
    a random order, ``fan`` at a time, level after level.
    """
    pieces = split(x, axes[0], case["cuts"])
    if len(axes) > 1:
        pieces = [q for p in pieces for q in split(p, axes[-1], case.get("cuts2", []))]
    parts = [partial(p, axes, aggs) for p in pieces]
    order = np.random.default_rng(case["seed"] + 1).permutation(len(parts))
    parts = [parts[i] for i in order]
    while len(parts) > 1:
        parts = [
            combine(parts[i : i + case["fan"]], aggs) for i in range(0, len(parts), case["fan"])
        ]
    return parts[0]


@st.composite
def cases(draw: st.DrawFn, dtypes: list[str] = DTYPES, inf: bool = False) -> dict[str, object]:
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim)))
    axes = tuple(sorted(draw(st.sets(st.integers(0, ndim - 1), min_size=1))))
    return {
        "dtype": draw(st.sampled_from(dtypes)),
        "shape": shape,
        "axes": axes,
        "nan": draw(st.sampled_from([0.0, 0.2, 0.9, 1.0])),
        "inf": draw(st.sampled_from([0.05, 0.3, 0.9, 1.0])) if inf else 0.0,
        "sign": draw(st.sampled_from(["+", "-", "±"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "cuts": draw(st.lists(st.integers(0, 20), max_size=4)),
        "cuts2": draw(st.lists(st.integers(0, 20), max_size=2)),
        "fan": draw(st.integers(2, 4)),
        "ddof": draw(st.integers(0, 1)),
        "slab": draw(st.sampled_from([None, 5, 64])),  # values per slab inside a chunk
    }


@pytest.mark.parametrize("kernels", ["1", "0"], ids=["kernels", "numpy"])
@given(cases())
def test_any_split_and_tree_gives_numpys_answer(kernels: str, case: dict) -> None:  # type: ignore[type-arg]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOOLKIT_KERNELS", kernels)
        if case["slab"] is not None:
            mp.setattr(aggregations, "_SLAB_ELEMENTS", case["slab"])
        _split_and_tree(case)


def _split_and_tree(case: dict) -> None:  # type: ignore[type-arg]
    rng = np.random.default_rng(case["seed"])
    x = values(rng, case["dtype"], case["shape"], case["nan"])
    axes = case["axes"]
    aggs = components(MOMENTS)
    # Random pieces, each reduced, combined in a tree of random order and
    # fan-in: the partials of a chunked array.
    part = tree(x, axes, aggs, case)
    ctx = Context(dtype=x.dtype, shape=(), ddof=case["ddof"])
    if sum_overflows(x, axes):
        with pytest.raises(StatsOverflowError):
            finalize(part, MOMENTS, ctx)
        return
    got = finalize(part, MOMENTS, ctx)
    ref = reference(x, axes, case["ddof"])
    for stat in MOMENTS:
        check(stat, got[stat], ref)


QS = [0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0]


@pytest.mark.parametrize("kernels", ["1", "0"], ids=["kernels", "numpy"])
@given(cases(dtypes=["float16", "float32", "float64"], inf=True), st.booleans())
def test_infinities_give_numpys_answer_in_any_split_and_tree(
    kernels: str,
    case: dict,  # type: ignore[type-arg]
    uniform: bool,
) -> None:
    """+inf, -inf or both, with NaN: every statistic is numpy's, whatever the tree.

    mean is ``numpy.nanmean`` (+-inf, NaN with both signs), var, std, skew and
    kurtosis NaN, min, max and sum numpy's, histograms numpy's (infinities are
    outside any bins), quantiles numpy's (see :func:`stats_reference.quantiles`).
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOOLKIT_KERNELS", kernels)
        if case["slab"] is not None:
            mp.setattr(aggregations, "_SLAB_ELEMENTS", case["slab"])
        rng = np.random.default_rng(case["seed"])
        x = values(rng, case["dtype"], case["shape"], case["nan"], case["inf"], case["sign"])
        axes = case["axes"]
        edges = (
            np.histogram_bin_edges(np.empty(0), bins=7, range=(-20.0, 30.0))
            if uniform
            else np.array([-1e4, -5.0, 0.0, 0.5, 3.0, 1e3])
        )
        names = [*MOMENTS, "histogram", "quantiles"]
        aggs = components(names, edges=edges)
        kept = tuple(n for a, n in enumerate(x.shape) if a not in axes)
        ctx = Context(dtype=x.dtype, shape=kept, ddof=case["ddof"], quantiles=tuple(QS))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # none of the inf arithmetic shows
            got = finalize(tree(x, axes, aggs, case), names, ctx)
    ref = reference(x, axes, case["ddof"])
    for stat in MOMENTS:
        check(stat, got[stat], ref)
    hist = got["histogram"].reshape(-1, len(edges) - 1)
    quant = got["quantiles"].reshape(-1, len(QS))
    for i, row in enumerate(rows(x, axes)):
        v = row.astype(np.float64)
        v = v[~np.isnan(v)]
        if uniform:
            want = np.histogram(v, bins=len(edges) - 1, range=(edges[0], edges[-1]))[0]
        else:
            want = np.histogram(v, bins=edges)[0]
        np.testing.assert_array_equal(hist[i], want)
        check_quantiles(quant[i], v, QS, 0.01)
        if v.size:  # the reference's median is numpy's
            # (to a few ulps: the two interpolate between the middle values in
            # different orders of operations)
            with np.errstate(invalid="ignore"):  # median of -inf and +inf: NaN
                np.testing.assert_allclose(quantiles(v, [0.5])[0], np.median(v), rtol=1e-13)


INF = np.inf


@pytest.mark.parametrize("kernels", ["1", "0"], ids=["kernels", "numpy"])
@pytest.mark.parametrize(
    ("data", "want"),
    [
        # data: mean, std, min, max, sum, quantiles 0, 0.5, 0.99, 1 (numpy's, or its limit)
        ([1, INF, 2, 3], [INF, np.nan, 1, INF, INF, 1, 2.5, INF, INF]),
        ([1, -INF, 2, 3], [-INF, np.nan, -INF, 3, -INF, -INF, 1.5, 2.97, 3]),
        ([INF, -INF, 1], [np.nan, np.nan, -INF, INF, np.nan, -INF, 1, INF, INF]),
        ([INF, INF, np.nan], [INF, np.nan, INF, INF, INF, INF, INF, INF, INF]),
        ([-INF, INF], [np.nan] * 2 + [-INF, INF, np.nan, -INF, np.nan, np.nan, INF]),
        ([np.nan, 5.0, INF], [INF, np.nan, 5, INF, INF, 5, INF, INF, INF]),
    ],
)
def test_infinities_as_numpy_has_them(kernels: str, data: list[float], want: list[float]) -> None:
    x = np.array(data)
    names = ["mean", "std", "min", "max", "sum", "var", "skew", "kurtosis", "quantiles"]
    aggs = components(names)
    ctx = Context(dtype=x.dtype, shape=(), quantiles=(0.0, 0.5, 0.99, 1.0))
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setenv("TOOLKIT_KERNELS", kernels)
        warnings.simplefilter("error")
        for pieces in range(1, len(data) + 1):
            parts = [partial(p, (0,), aggs) for p in np.array_split(x, pieces)]
            for order in (parts, parts[::-1]):
                got = finalize(combine(order, aggs), names, ctx)
                scalars = [float(got[k]) for k in ("mean", "std", "min", "max", "sum")]
                q = [float(v) for v in got["quantiles"]]
                # Finite quantiles come from the sketch: within 1% here.
                np.testing.assert_allclose(scalars + q, want, rtol=0.01)
                assert np.isnan([got["var"], got["skew"], got["kurtosis"]]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy warns for inf - inf
        assert np.allclose(
            [np.nanmean(x), np.nanstd(x), np.nanmin(x), np.nanmax(x), np.nansum(x)],
            want[:5],
            equal_nan=True,
        )


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
        [
            rng.uniform(-2, 2, 10_000),
            edges,
            np.nextafter(edges, np.inf),
            np.nextafter(edges, -np.inf),
            [np.nan, np.inf, -np.inf],
        ]
    )
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


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 500),
    npos=st.integers(0, 50),
    nneg=st.integers(0, 50),
    alpha=st.sampled_from([0.001, 0.01, 0.05]),
)
def test_sketch_keeps_infinities_out_of_the_finite_buckets(
    seed: int, n: int, npos: int, nneg: int, alpha: float
) -> None:
    rng = np.random.default_rng(seed)
    tiny, huge = np.finfo(np.float64).smallest_subnormal, np.finfo(np.float64).max
    finite = np.concatenate(
        [rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n), [tiny, -huge, huge, 0.0]]
    )
    x = rng.permutation(np.concatenate([finite, [np.inf] * npos, [-np.inf] * nneg]))
    aggs = components(["quantiles"], alpha=alpha)
    sketch = QuantileSketch(alpha)
    alone = partial(finite, (0,), aggs)["sketch"]
    state = combine([partial(p, (0,), aggs) for p in np.array_split(x, 3)], aggs)
    mixed = state["sketch"]
    # The finite values' buckets and counts are as without the infinities ...
    top = sketch.span - 1  # +inf's code (cell 0); -inf's is 0
    keep = (mixed["codes"] != 0) & (mixed["codes"] != top)
    np.testing.assert_array_equal(mixed["codes"][keep], alone["codes"])
    np.testing.assert_array_equal(mixed["counts"][keep], alone["counts"])
    assert mixed["counts"][mixed["codes"] == top].sum() == npos
    assert mixed["counts"][mixed["codes"] == 0].sum() == nneg
    # ... and answer within alpha, the largest doubles included (never as inf).
    vals = sketch.value(sketch.bucket(finite))
    assert np.isfinite(vals).all()
    assert (np.abs(vals - finite) <= alpha * np.abs(finite) * (1 + 1e-9) + tiny).all()
    # Quantiles: numpy's infinities exactly, the finite ones within the bound.
    qs = [0.0, 0.001, 0.1, 0.5, 0.9, 0.999, 1.0]
    ctx = Context(dtype=x.dtype, shape=(), quantiles=tuple(qs), alpha=alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = finalize(state, ["quantiles"], ctx)["quantiles"]
    check_quantiles(got, x, qs, alpha)


def test_sketch_quantiles_between_the_largest_doubles_stay_finite() -> None:
    big = np.finfo(np.float64).max
    x = np.array([-big, 1e300, big])
    qs = [0.0, 0.25, 0.5, 0.75, 1.0]
    aggs = components(["quantiles"], alpha=0.05)
    ctx = Context(dtype=x.dtype, shape=(), quantiles=tuple(qs), alpha=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = finalize(partial(x, (0,), aggs), ["quantiles"], ctx)["quantiles"]
    assert np.isfinite(got).all()  # numpy: -inf at 0.25
    check_quantiles(got, x, qs, 0.05)
    with np.errstate(over="ignore"):  # numpy's b - a overflows: an infinity
        assert np.isinf(np.quantile(x, 0.25))


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
    # The cubic mapping has at most 1% more buckets than the logarithmic one.
    bound = 1.01 * math.log(10) / math.log((1 + sketch.alpha) / (1 - sketch.alpha)) + 2
    assert len(small["sketch"]["codes"]) <= len(large["sketch"]["codes"]) <= bound


@pytest.mark.parametrize("alpha", [1e-4, 0.001, 0.01, 0.05, 0.3])
def test_every_bucket_spans_at_most_gamma(alpha: float) -> None:
    """Each bucket's values lie within a factor gamma = (1 + a) / (1 - a): its answer within a.

    Every bucket's first float and the next bucket's, for the buckets at both
    ends of the doubles (subnormals, the largest) and 20,000 others; and the
    buckets are in the order of the values.
    """
    sketch = QuantileSketch(alpha)
    top = sketch._inf
    rng = np.random.default_rng(0)
    k = np.unique(np.r_[np.arange(1, 300), rng.integers(1, top, 20_000), np.arange(top - 300, top)])
    lo, hi = sketch._lower(k), sketch._lower(k + 1)
    gamma = (1 + alpha) / (1 - alpha)
    normal = lo >= np.finfo(np.float64).tiny
    # Subnormals are spaced by the smallest one: the lowest buckets hold no float.
    has = sketch.bucket(lo) == k
    assert has[normal].all()
    k, lo, hi = k[has], lo[has], hi[has]
    last = np.nextafter(hi, 0)  # each bucket's largest value (the top one's: the largest double)
    np.testing.assert_array_equal(sketch.bucket(last), k)
    normal = lo >= np.finfo(np.float64).tiny
    assert (last[normal] / lo[normal] <= gamma * (1 + 1e-12)).all()
    answer = sketch.value(k)
    assert ((lo <= answer) & (answer <= last)).all()
    assert (np.abs(answer - last) <= alpha * last * (1 + 1e-12) + 5e-324).all()
    assert (np.abs(answer - lo) <= alpha * lo * (1 + 1e-12) + 5e-324).all()


def test_every_statistic_is_declared_with_its_components() -> None:
    for name, stat in STATISTICS.items():
        aggs = components([name], edges=np.array([0.0, 1.0]))
        assert {a.key for a in aggs} >= {k.rstrip("1234") for k in stat.needs}, name


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_sketch_buckets_are_numpys_at_every_edge(alpha: float, dtype: str) -> None:
    """The kernel reads buckets off the float's bits, not a logarithm: numpy's, to the float.

    Values from the subnormals to the largest float: buckets' answers and first
    floats (every bucket's at the ends of the range, 20,000 others) and the
    floats either side of them, zeros of both signs, infinities and NaN.
    """
    if not _kernels.AVAILABLE:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(3)
    info = np.finfo(dtype)
    sketch = QuantileSketch(alpha)
    top = sketch._inf
    k = np.unique(np.r_[np.arange(1, 200), rng.integers(1, top, 20_000), np.arange(top - 200, top)])
    with np.errstate(over="ignore", under="ignore"):  # the float32 ends: infinities, zeros
        answers = sketch.value(np.r_[-k, k]).astype(dtype)
        edges = sketch._lower(k)
        edges = np.concatenate([edges, -edges]).astype(dtype)
        wide = rng.standard_normal(20_000) * 10.0 ** rng.integers(
            info.minexp // 3, info.maxexp // 3, 20_000
        )
        x = np.concatenate(
            [
                answers,
                np.nextafter(answers, np.inf),
                np.nextafter(answers, -np.inf),
                edges,
                np.nextafter(edges, np.inf),
                np.nextafter(edges, -np.inf),
                wide.astype(dtype),
                info.smallest_subnormal * np.arange(-50, 50),
                [0.0, -0.0, np.inf, -np.inf, np.nan],
            ]
        ).astype(dtype)
    _compiled_sketch_is_numpys(sketch, x[: x.size // 4 * 4].reshape(4, -1), (1,))


def _compiled_sketch_is_numpys(
    sketch: QuantileSketch, x: np.ndarray, axes: tuple[int, ...]
) -> dict[str, Any]:
    """``sketch.block`` of ``x`` by the kernel, checked equal to numpy's path's; returned."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOOLKIT_KERNELS", "1")
        got = sketch.block(x, axes)
        mp.setenv("TOOLKIT_KERNELS", "0")
        want = sketch.block(x, axes)
    np.testing.assert_array_equal(got["codes"], want["codes"])
    np.testing.assert_array_equal(got["counts"], want["counts"])
    return got


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_sketch_counts_cells_of_only_subnormals_zeros_or_infinities(dtype: str) -> None:
    """Cells whose every value takes the kernel's rare paths keep them all, in numpy's buckets."""
    if not _kernels.AVAILABLE:
        pytest.skip("numba is not installed")
    tiny = np.finfo(dtype).smallest_subnormal
    cols = [
        tiny * np.arange(1, 9),  # positive subnormals only
        -tiny * np.arange(1, 9),  # negative ones only
        tiny * np.arange(-4, 4),  # both, and zero
        [0.0, -0.0] * 4,
        [np.inf, -np.inf, np.nan, 0.0] * 2,
        [np.nan] * 8,
    ]
    x = np.array(cols, dtype=dtype).T  # values down, cells across: the kernel's layout
    sketch = QuantileSketch(0.01)
    got = _compiled_sketch_is_numpys(sketch, x, (0,))
    per_cell = np.bincount(got["codes"] // sketch.span, weights=got["counts"], minlength=6)
    np.testing.assert_array_equal(per_cell, [8, 8, 8, 8, 6, 0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("names", [["count", "mean", "std", "min", "max"], ["kurtosis", "sum"]])
def test_statistics_and_a_sketch_in_one_kernel_are_each_on_its_own(
    dtype: str, names: list[str]
) -> None:
    """The sketch's kernel computing the statistics too gives the states of the kernels apart.

    600 cells (tiles of 256 and a part), values down; cells with NaN, both
    infinities, zeros, subnormals and values spanning many doublings.
    """
    if not _kernels.AVAILABLE:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(7)
    tiny = np.finfo(dtype).smallest_subnormal
    x = (rng.standard_normal((300, 600)) * 10.0 ** rng.uniform(-3, 3, 600)).astype(dtype)
    x[:, 5] = np.nan
    x[::7, 6] = np.nan
    x[3, 7], x[4, 8], x[5, 8] = np.inf, -np.inf, np.inf
    x[:, 9] = 0.0
    x[::3, 300] = tiny * 5
    x[1::3, 301] = -tiny
    x[10:20, 599] = np.nan
    rest = [a for a in components(names) if not isinstance(a, QuantileSketch)]
    sketch = QuantileSketch(0.01)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOOLKIT_KERNELS", "1")
        fused = partial(x, (0,), [*rest, sketch])
        apart = {**partial(x, (0,), rest), "sketch": sketch.block(x, (0,))}
    assert fused.keys() == apart.keys()
    for key, state in apart.items():
        for part, want in state.items():
            np.testing.assert_array_equal(fused[key][part], want, err_msg=f"{key} {part}")


def test_compiled_sketch_of_cells_spanning_every_magnitude_is_numpys() -> None:
    """Cells whose values span 1e-300 to 1e300 of both signs take turns in the kernel's table.

    At alpha 0.001 each cell's range is ~1.4 M counts: a table for all 256 cells
    of a tile at once took 1.6 GB (a helper's stress run); in turns, 16 MiB.
    The buckets are numpy's, and the statistics computed beside them the
    kernels' apart.
    """
    if not _kernels.AVAILABLE:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(11)
    x = rng.choice([-1.0, 1.0], (64, 300)) * 10.0 ** rng.uniform(-300, 300, (64, 300))
    x[0], x[1] = 1e-300, -1e300
    x[5, :7] = np.nan
    sketch = QuantileSketch(0.001)
    _compiled_sketch_is_numpys(sketch, x, (0,))
    rest = [a for a in components(["count", "mean", "std", "min", "max"])]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOOLKIT_KERNELS", "1")
        fused = partial(x, (0,), [*rest, sketch])
        apart = {**partial(x, (0,), rest), "sketch": sketch.block(x, (0,))}
    for key, state in apart.items():
        for part, want in state.items():
            np.testing.assert_array_equal(fused[key][part], want, err_msg=f"{key} {part}")


@pytest.mark.skipif(not _kernels.AVAILABLE, reason="the compiled kernels need numba")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_sorting_network_gives_the_sorts_exact_quantiles(
    dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whole groups' quantiles from the compiled network (values down, cells across)
    # against numpy's sort of each cell: every size up to a few powers of two and
    # around them, NaN (cells of NaN only too) and both infinities, and the sizes on
    # both sides of where the network hands over to the sort.
    rng = np.random.default_rng(7)
    qs = [0.0, 0.05, 1 / 3, 0.5, 0.95, 1.0]
    sizes = [*range(0, 40), 63, 64, 65, 127, 128, 129, 744, aggregations._NETWORK_MAX + 1]
    for size in sizes:
        for kind in range(3):
            x = rng.standard_normal((size, 3, 100)).astype(dtype)
            if kind >= 1:
                x[rng.random(x.shape) < 0.3] = np.nan
                x[:, 0, :4] = np.nan
            if kind == 2:
                x[rng.random(x.shape) < 0.05] = np.inf
                x[rng.random(x.shape) < 0.05] = -np.inf
            monkeypatch.setenv("TOOLKIT_KERNELS", "1")
            got = exact_quantiles(x, (0,), qs)
            monkeypatch.setenv("TOOLKIT_KERNELS", "0")
            want = exact_quantiles(x, (0,), qs)
            np.testing.assert_array_equal(got, want, err_msg=f"{size} values, case {kind}")
            if kind < 2 and size:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells
                    ref = np.nanquantile(x.astype("f8"), qs, axis=0)
                np.testing.assert_allclose(got, np.moveaxis(ref, 0, -1).reshape(-1, len(qs)))
