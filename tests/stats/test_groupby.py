"""toolkit.stats(groupby=...): xarray's groupby and resample answers, in one pass."""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterator
from typing import Any

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import make_dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from stats_reference import check_quantiles, quantiles, values
from xarray.groupers import BinGrouper, TimeResampler, UniqueGrouper

import toolkit
from toolkit.errors import StatsError
from toolkit.stats.aggregations import Context, components
from toolkit.stats.groupby import chunk, combine_groups, finalize_groups, whole

MOMENTS = ["count", "mean", "var", "std", "min", "max", "sum"]
QS = [0.05, 0.5, 0.95]

try:
    import flox  # type: ignore[import-not-found]  # noqa: F401

    FLOX = [False, True]
except ImportError:  # not a dependency: xarray's own groupby only
    FLOX = [False]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """xarray's answers warn on all-NaN groups (numpy's Mean of empty slice); toolkit's must not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def hourly(nt: int, dtype: str, nan: float, seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":  # sums that fit: the overflow is tested elsewhere
        info = np.iinfo(dtype)
        x = rng.integers(max(info.min, -30_000), min(info.max, 30_000), (nt, 3, 4)).astype(dtype)
    else:
        x = values(rng, dtype, (nt, 3, 4), nan)
    return xr.DataArray(
        x,
        dims=("time", "y", "x"),
        coords={
            "time": pd.date_range("2001-01-25", periods=nt, freq="7h"),
            "region": ("x", ["land", "sea", "land", "ice"]),
        },
        name="v",
    )


def xarray_answers(grouped: Any, stats: list[str]) -> dict[str, xr.DataArray]:
    with quiet():
        return {s: getattr(grouped, s)().compute() for s in stats}


def assert_matches(got: xr.Dataset, want: dict[str, xr.DataArray], dtype: np.dtype[Any]) -> None:
    for stat, w in want.items():
        g = got[stat].drop_attrs()
        assert g.dims == w.dims, stat
        if stat in ("count", "min", "max") or (stat == "sum" and dtype.kind in "iub"):
            # Exact: counts, extrema and integer sums (empty groups NaN in both but count).
            if stat == "count":
                w = w.fillna(0).astype(np.int64)  # xarray's empty resample bins: NaN
            xr.testing.assert_equal(g, w.astype(g.dtype) if g.dtype != w.dtype else w)
        else:
            xr.testing.assert_allclose(g, w.astype(np.float64), rtol=1e-9, atol=1e-12)


def group_values(arr: xr.DataArray, grouped: Any) -> dict[Any, np.ndarray]:
    """Each group's values per kept cell, in xarray's labels."""
    return {label: sub for label, sub in grouped}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("use_flox", FLOX)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int16", "int64", "uint8"])
@pytest.mark.parametrize("chunks", [5, 24, 97, 1000])
def test_monthly_statistics_are_xarrays(dtype: str, chunks: int, use_flox: bool) -> None:
    arr = hourly(700, dtype, nan=0.2)
    if arr.dtype.kind == "f":
        arr[:, 0, 0] = np.nan  # an all-NaN cell: count 0 and NaN statistics
    got = toolkit.stats(
        arr.chunk(time=chunks, x=3),
        "time",
        groupby="time.month",
        stats=MOMENTS,
        quantiles=QS,
        progress=False,
    )
    with xr.set_options(use_flox=use_flox):
        # float64 sums and moments: xarray's float32 ones are less exact than toolkit's.
        f8 = arr.astype("f8") if arr.dtype.kind == "f" else arr
        want = xarray_answers(f8.groupby("time.month"), ["count", "mean", "var", "std", "sum"])
        want.update(xarray_answers(arr.groupby("time.month"), ["min", "max"]))
    assert_matches(got, want, arr.dtype)
    assert list(got.month.values) == list(range(1, 9))
    assert got["quantiles"].dims == ("month", "y", "x", "quantile")
    for i, (_, sub) in enumerate(arr.groupby("time.month")):
        for y in range(3):
            for x in range(4):
                v = sub.values[:, y, x].astype(np.float64)
                check_quantiles(got["quantiles"].values[i, y, x], v[~np.isnan(v)], QS, 0.01)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("use_flox", FLOX)
@pytest.mark.parametrize("chunks", [3, 10, 64])
def test_a_daily_resample_has_every_bin_empty_ones_too(chunks: int, use_flox: bool) -> None:
    arr = hourly(300, "float64", nan=0.1)
    arr = arr.isel(time=np.r_[0:40, 120:300])  # a gap: days with no value
    got = toolkit.stats(
        arr.chunk(time=chunks),
        "time",
        groupby={"time": TimeResampler("1D")},
        stats=MOMENTS,
        quantiles=QS,
        progress=False,
    )
    with xr.set_options(use_flox=use_flox):
        want = xarray_answers(arr.resample(time="1D"), MOMENTS)
    assert_matches(got, want, arr.dtype)
    empty = want["mean"].isnull().all(("y", "x")).values
    assert empty.sum() >= 3  # the gap's days are there, with count 0 and NaN statistics
    assert (got["count"].values[empty] == 0).all()
    assert np.isnan(got["quantiles"].values[empty]).all()
    assert np.isnan(got["sum"].values[empty]).all()  # as xarray's: no member, no sum


@pytest.mark.timeout(120)
@pytest.mark.parametrize("use_flox", FLOX)
@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_several_groupers_at_once_month_by_region(dtype: str, use_flox: bool) -> None:
    arr = hourly(500, dtype, nan=0.3, seed=3)
    for chunks in ({"time": 17, "x": 3}, {"time": 200, "x": 1}, {"time": 500, "x": 4}):
        got = toolkit.stats(
            arr.chunk(chunks),
            ("time", "x"),
            groupby=["time.month", "region"],
            stats=MOMENTS,
            split_every=2,
            progress=False,
        )
        with xr.set_options(use_flox=use_flox):
            grouped = arr.groupby(["time.month", "region"])
            want = xarray_answers(grouped, ["count", "min", "max"])
            f8 = arr.astype("f8") if arr.dtype.kind == "f" else arr
            want.update(
                xarray_answers(f8.groupby(["time.month", "region"]), ["mean", "std", "var", "sum"])
            )
        assert_matches(got, want, arr.dtype)
        assert got["mean"].dims == ("y", "month", "region")  # xarray's: groups last


def test_two_groupers_on_the_same_dim_and_labels_given_as_a_dataarray() -> None:
    arr = hourly(400, "float64", nan=0.0)
    labels = xr.DataArray(np.arange(400) % 3, dims="time", coords={"time": arr.time}, name="shift")
    got = toolkit.stats(
        arr.chunk(time=33),
        ("time", "y"),
        groupby=["time.month", labels],
        stats=["count", "mean", "max"],
        progress=False,
    )
    want = arr.assign_coords(shift=labels).groupby(["time.month", "shift"])
    assert got["mean"].dims == ("x", "month", "shift")
    xr.testing.assert_allclose(got["mean"].drop_attrs(), want.mean(("time", "y")), rtol=1e-12)
    xr.testing.assert_equal(got["max"].drop_attrs(), want.max(("time", "y")))
    # A mapping of names to groupers, and a BinGrouper: xarray's "<name>_bins".
    arr = arr.assign_coords(depth=("y", [5.0, 50.0, 500.0]))
    bins = [0, 10, 100, 1000, 5000]
    got = toolkit.stats(
        arr.chunk(y=1),
        "y",
        groupby={"depth": BinGrouper(bins=bins)},
        stats=["count", "mean"],
        progress=False,
    )
    want = arr.groupby(depth=BinGrouper(bins=bins))
    with quiet():
        w = want.mean()
    assert got["mean"].dims == w.dims == ("time", "depth_bins", "x")
    xr.testing.assert_allclose(got["mean"].drop_attrs(), w, rtol=1e-12)
    assert (got["count"].isel(depth_bins=3) == 0).all()  # (1000, 5000]: no member


def test_all_nan_groups_are_count_zero_and_nan_quietly() -> None:
    arr = hourly(200, "float32", nan=0.0)
    arr[(arr.time.dt.month == 2).values] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = toolkit.stats(
            arr.chunk(time=30),
            groupby="time.month",
            stats=["count", "nan_count", "mean", "std", "min", "sum"],
            quantiles=[0.5],
            bins=3,
            bin_range=(-1, 1),
            progress=False,
        )
    feb = got.sel(month=2)
    assert (
        int(feb["count"]) == 0 and int(feb["nan_count"]) == int((arr.time.dt.month == 2).sum()) * 12
    )
    for s in ("mean", "std", "min", "quantiles"):
        assert feb[s].isnull().all(), s
    assert float(feb["sum"]) == 0.0  # all-NaN, not empty: numpy's (and xarray's) 0
    assert (feb["histogram"] == 0).all()
    assert got["mean"].dims == ("month",)  # all dims reduced: one per month
    jan = arr.sel(time="2001-01").astype("f8").mean()
    np.testing.assert_allclose(got["mean"].sel(month=1), jan, rtol=1e-12)


def test_int_data_with_empty_groups_gives_float_nan_like_xarray() -> None:
    arr = hourly(100, "int16", nan=0.0).isel(time=np.r_[0:10, 60:100])
    got = toolkit.stats(
        arr.chunk(time=7),
        "time",
        groupby={"time": TimeResampler("1D")},
        stats=["min", "max", "sum", "count"],
        progress=False,
    )
    want = arr.resample(time="1D")
    for s in ("min", "max", "sum"):
        assert got[s].dtype == np.float64
        xr.testing.assert_equal(got[s].drop_attrs(), getattr(want, s)().astype(np.float64))
    # No empty group: integer extrema and sums stay integers.
    got = toolkit.stats(
        arr.chunk(time=7), "time", groupby="time.month", stats=["min", "sum"], progress=False
    )
    assert got["min"].dtype == np.int16 and got["sum"].dtype == np.int64


@pytest.mark.timeout(180)
def test_many_groups_keep_each_chunks_state_to_the_groups_present() -> None:
    n, ngroups = 200_000, 10_000
    rng = np.random.default_rng(1)
    station = np.repeat(np.arange(ngroups), n // ngroups)  # sorted: stations one after another
    arr = xr.DataArray(
        rng.standard_normal(n), dims="obs", coords={"station": ("obs", station)}, name="v"
    ).chunk(obs=20_000)
    lazy = toolkit.stats(
        arr, groupby="station", stats=["count", "mean", "max"], quantiles=[0.5], compute=False
    )
    graph = dict(lazy.__dask_graph__())
    keys = [k for k in graph if isinstance(k, tuple) and k[0].startswith("toolkit-stats-chunk")]
    with dask.config.set(scheduler="sync"):
        for k in keys:
            state = dask.get(graph, k)  # type: ignore[attr-defined]
            block = slice(k[1] * 20_000, (k[1] + 1) * 20_000)
            assert sorted(state) == [(s,) for s in np.unique(station[block])]  # 1,000 of 10,000
    got = lazy.compute()
    want = arr.compute().groupby("station")  # (toolkit reads chunked labels itself)
    np.testing.assert_allclose(got["mean"], want.mean(), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(got["max"], want.max())
    assert (got["count"] == n // ngroups).all() and got.sizes["station"] == ngroups


@pytest.mark.parametrize(
    ("groupby", "dim", "match"),
    [
        ("time.mnth", "time", "no such coordinate or virtual coordinate"),
        ("nope", "time", "no such coordinate"),
        ("region", "time", "'region' is along 'x', which is not reduced"),
        ({"time": TimeResampler("1D")}, ("y", "x"), "along 'time', which is not reduced"),
        ({"time": "1D"}, "time", "takes xarray.groupers objects"),
        ([], "time", "groupby is empty"),
        ("lat2d", None, "must be 1-D"),
    ],
)
def test_bad_groupers_are_refused_clearly(groupby: Any, dim: Any, match: str) -> None:
    ds = make_dataset(chunks={"time": 10})
    ds = ds.assign_coords(
        region=("x", np.arange(ds.sizes["x"]) % 2),
        lat2d=(("y", "x"), np.zeros((ds.sizes["y"], ds.sizes["x"]))),
    )
    with pytest.raises(StatsError, match=match):
        toolkit.stats(ds, dim, groupby=groupby, progress=False)


def test_labels_that_do_not_align_are_refused() -> None:
    ds = make_dataset(chunks={"time": 10})
    short = xr.DataArray(np.arange(10), dims="time", name="lab")
    with pytest.raises(StatsError, match="has 10 values along 'time'; the data has 50"):
        toolkit.stats(ds, groupby=short, progress=False)
    shifted = xr.DataArray(
        np.arange(50),
        dims="time",
        name="lab",
        coords={"time": ds.time.values + np.timedelta64(1, "h")},
    )
    with pytest.raises(StatsError, match="do not align with the data along 'time'"):
        toolkit.stats(ds, groupby=shifted, progress=False)
    with pytest.raises(StatsError, match="need a name"):
        toolkit.stats(ds, groupby=xr.DataArray(np.arange(50), dims="time"), progress=False)
    with pytest.raises(StatsError, match="must be 1-D along one of the data's dims"):
        toolkit.stats(ds, groupby=xr.DataArray(np.arange(50), dims="t", name="w"), progress=False)
    # A variable not along the grouped dim is skipped, and said so.
    ds["flat"] = ("x", np.arange(ds.sizes["x"], dtype="f8"))
    got = toolkit.stats(ds, groupby="time.month", stats=["mean"], progress=False)
    assert "flat: not along every grouped dim (time)" in got.attrs["skipped"]
    assert got.attrs["groupby"] == "'time.month'"
    with pytest.raises(StatsError, match="'flat' is not along every grouped dim"):
        toolkit.stats(ds, groupby="time.month", variables=["flat"], progress=False)


# The merge of partial states: any split into blocks, any tree ------------------


@st.composite
def trees(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 60))
    ngroups = draw(st.integers(1, 6))
    cuts = sorted(draw(st.sets(st.integers(1, max(n - 1, 1)), max_size=8)) - {n})
    return {
        "n": n,
        "codes": draw(st.lists(st.integers(-1, ngroups - 1), min_size=n, max_size=n)),
        "ngroups": ngroups,
        "cuts": cuts,
        "dtype": draw(st.sampled_from(["float64", "float32", "int32", "uint16"])),
        "nan": draw(st.sampled_from([0.0, 0.3, 1.0])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "shape": draw(st.lists(st.integers(0, 10_000), min_size=0, max_size=12)),
    }


def _tree(parts: list[Any], shape: list[int], aggs: Any) -> Any:
    """Combine ``parts`` in the tree that ``shape`` draws (random fan-ins and orders)."""
    parts = list(parts)
    i = 0
    while len(parts) > 1:
        k = shape[i % len(shape)] if shape else 0
        i += 1
        fan = 2 + k % max(len(parts) - 1, 1)
        start = (k // 7) % (len(parts) - fan + 1)
        parts[start : start + fan] = [combine_groups(parts[start : start + fan], aggs)]
    return parts[0]


@given(trees())
@settings(deadline=None, max_examples=150)
def test_grouped_partial_states_merge_the_same_in_every_tree(case: dict[str, Any]) -> None:
    rng = np.random.default_rng(case["seed"])
    x = values(rng, case["dtype"], (case["n"], 2), case["nan"])
    codes = np.asarray(case["codes"], dtype=np.int64)
    names = ["count", "nan_count", "sum", "mean", "var", "min", "max", "skew", "quantiles"]
    aggs = components(names, alpha=0.01)
    edges = [0, *case["cuts"], case["n"]]
    blocks = [
        chunk(x[a:b], codes[a:b, None], axes=(0,), group_axes=(0,), aggs=aggs)
        for a, b in itertools.pairwise(edges)
    ]
    ctx = Context(dtype=x.dtype, shape=(2,), quantiles=(0.0, 0.5, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = finalize_groups(
            _tree(blocks, case["shape"], aggs), names, ctx, aggs, (case["ngroups"],)
        )
        whole = chunk(x, codes[:, None], axes=(0,), group_axes=(0,), aggs=aggs)
        one = finalize_groups(whole, names, ctx, aggs, (case["ngroups"],))
    for g in range(case["ngroups"]):
        v = x[codes == g].astype(np.float64)
        for cell in range(2):
            col = v[:, cell]
            finite = col[~np.isnan(col)]
            assert got["count"][g, cell] == finite.size
            assert got["nan_count"][g, cell] == col.size - finite.size
            if finite.size:
                assert got["min"][g, cell] == finite.min() and got["max"][g, cell] == finite.max()
                check_quantiles(got["quantiles"][g, cell], finite, [0.0, 0.5, 1.0], 0.01)
            elif col.size == 0:  # no member: NaN, the sum too
                assert np.isnan(got["sum"][g, cell]) and np.isnan(got["mean"][g, cell])
    scale = float(np.nanmax(np.abs(x), initial=0.0)) if x.size else 0.0
    # Rounding of float64 in a different order: relative to the data's scale, per unit.
    atol = {"sum": scale * case["n"], "mean": scale, "var": scale**2, "skew": 1.0}
    for s in names:
        exact = s in ("count", "nan_count", "min", "max", "quantiles")
        if exact or (x.dtype.kind in "iu" and s == "sum"):
            np.testing.assert_array_equal(got[s], one[s], err_msg=s)
        else:
            np.testing.assert_allclose(got[s], one[s], rtol=1e-9, atol=1e-9 * atol[s], err_msg=s)


@pytest.mark.parametrize("kernels", ["1", "0"], ids=["kernels", "numpy"])
@given(trees())
@settings(deadline=None, max_examples=100)
def test_groups_whole_in_a_block_have_numpys_exact_quantiles_in_every_tree(
    kernels: str, case: dict[str, Any]
) -> None:
    """A group all of whose values lie in one block: numpy's quantiles, exactly.

    The others' come from sketches merged in the tree, within the bound; the
    rest of the statistics are the sketch path's.
    """
    rng = np.random.default_rng(case["seed"])
    x = values(rng, case["dtype"], (case["n"], 2), case["nan"])
    codes = np.asarray(case["codes"], dtype=np.int64)
    names = ["count", "nan_count", "min", "max", "mean", "quantiles"]
    aggs = components(names, alpha=0.01)
    edges = [0, *case["cuts"], case["n"]]
    sizes = tuple(int(b - a) for a, b in itertools.pairwise(edges))
    (flags,) = whole([codes], (0,), (sizes,), (0,))
    for g in range(case["ngroups"]):  # whole: every member in one block
        held = {i for i, (a, b) in enumerate(itertools.pairwise(edges)) if (codes[a:b] == g).any()}
        assert (flags[codes == g] == (len(held) == 1)).all()
    ctx = Context(dtype=x.dtype, shape=(2,), quantiles=tuple(QS))
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setenv("TOOLKIT_KERNELS", kernels)
        warnings.simplefilter("error")
        blocks = [
            chunk(
                x[a:b],
                codes[a:b, None],
                flags[a:b, None],
                axes=(0,),
                group_axes=(0,),
                aggs=aggs,
                quantiles=QS,
            )
            for a, b in itertools.pairwise(edges)
        ]
        got = finalize_groups(
            _tree(blocks, case["shape"], aggs), names, ctx, aggs, (case["ngroups"],)
        )
        plain = [
            chunk(x[a:b], codes[a:b, None], axes=(0,), group_axes=(0,), aggs=aggs)
            for a, b in itertools.pairwise(edges)
        ]
        sketched = finalize_groups(
            _tree(plain, case["shape"], aggs), names, ctx, aggs, (case["ngroups"],)
        )
    for s in names[:-1]:
        np.testing.assert_array_equal(got[s], sketched[s], err_msg=s)
    for g in range(case["ngroups"]):
        v = x[codes == g].astype(np.float64)
        for cell in range(2):
            finite = v[:, cell][~np.isnan(v[:, cell])]
            check_quantiles(got["quantiles"][g, cell], finite, QS, 0.01)
            if flags[codes == g].all() and finite.size:
                want, _, _ = quantiles(finite, QS)
                np.testing.assert_array_equal(got["quantiles"][g, cell], want)


def test_whole_groups_with_several_groupers_and_other_reduced_dims() -> None:
    codes = [np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 0, 1, 0, 1]), np.array([3, 3, -1, 4])]
    # Two groupers along axis 0, chunks (2, 3, 1): (0, 0) (0, 1) whole in block 0, (1, 0)
    # (1, 1) in block 1, (2, 1) in block 2; along axis 1 (chunks 2, 2) group 3 is in
    # block 0 and group 4 in block 1 (a position in no group, -1, is never whole).
    got = whole(codes, (0, 0, 1), ((2, 3, 1), (2, 2)), (0, 1))
    assert got[0].tolist() == got[1].tolist() == [True] * 6
    assert got[2].tolist() == [True, True, False, True]
    assert not whole(codes, (0, 0, 1), ((2, 3, 1), (1, 3)), (0, 1))[2][:2].any()  # 3 split
    got = whole(codes, (0, 0, 1), ((3, 3), (2, 2)), (0, 1))
    assert got[0].tolist() == [True, True, False, True, False, True]  # (1, 0) in both
    # A reduced dim that no grouper is along, in two chunks: no group is whole.
    got = whole(codes[:1], (0,), ((6,), (1, 1)), (0, 1))
    assert not got[0].any()
    assert whole(codes[:1], (0,), ((6,), (1, 1)), (0,))[0].all()  # (axis 1 kept)


@pytest.mark.parametrize("kernels", ["1", "0"], ids=["kernels", "numpy"])
def test_resample_quantiles_are_exact_where_each_bin_is_in_one_chunk(kernels: str) -> None:
    arr = hourly(400, "float32", nan=0.1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOOLKIT_KERNELS", kernels)
        got = toolkit.stats(
            arr.chunk(time=12),
            "time",
            groupby={"time": TimeResampler("1D")},
            quantiles=QS,
            stats=["count"],
            progress=False,
        )
        month = toolkit.stats(
            arr.chunk(time=12),
            "time",
            groupby="time.month",
            quantiles=QS,
            stats=["count"],
            progress=False,
        )
    with quiet():
        want = arr.astype("f8").resample(time="1D").quantile(QS, dim="time")
        mwant = arr.astype("f8").groupby("time.month").quantile(QS, dim="time")
    # 7-hourly: a day has 3 or 4 values; chunks of 12 split some days, not others.
    codes = arr.time.dt.floor("1D").values.astype("datetime64[ns]").astype("int64")
    split = {d for d in np.unique(codes) if len({i // 12 for i in np.flatnonzero(codes == d)}) > 1}
    day = got.time.values.astype("datetime64[ns]").astype("int64")
    exact = np.array([d not in split for d in day])
    w = want.transpose(*got["quantiles"].dims).values
    np.testing.assert_array_equal(got["quantiles"].values[exact], w[exact])
    assert exact.sum() > 10 and (~exact).sum() > 10
    err = np.abs(got["quantiles"].values - w)
    assert (np.nan_to_num(err) <= 0.01 * np.abs(np.nan_to_num(w)) * (1 + 1e-9)).all()
    merr = np.abs(month["quantiles"].values - mwant.transpose(*month["quantiles"].dims).values)
    assert (merr <= 0.01 * np.abs(mwant.transpose(*month["quantiles"].dims).values) + 1e-12).all()


# Stores and clusters ---------------------------------------------------------


def test_from_a_path_opened_aligned(tmp_path: Any) -> None:
    ds = make_dataset(nt=90, chunks={"time": 9})
    url = str(tmp_path / "g.zarr")
    toolkit.to_zarr(ds, url, mode="w", progress=False)
    got = toolkit.stats(url, "time", groupby="time.month", stats=["mean", "max"], progress=False)
    with quiet():
        want = xr.open_zarr(url).astype("f8").groupby("time.month")
        np.testing.assert_allclose(got["a_mean"], want.mean().a, rtol=1e-12)
        xr.testing.assert_equal(got["c_max"].drop_attrs(), want.max().c)
    assert got.attrs["source"] == url


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_grouped_on_a_cluster_of_worker_processes(cluster_client: Any, tmp_path: Any) -> None:
    ds = make_dataset(nt=120, chunks={"time": 11})
    url = str(tmp_path / "g.zarr")
    toolkit.to_zarr(ds, url, mode="w", progress=False)
    kwargs: dict[str, Any] = dict(
        stats=["count", "mean", "std", "max"],
        quantiles=[0.5],
        groupby={"time": TimeResampler("MS")},
        split_every=3,
        progress=False,
    )
    got = toolkit.stats(url, "time", **kwargs)
    with dask.config.set(scheduler="sync"):
        want = toolkit.stats(ds.compute(), "time", **kwargs)
    xr.testing.assert_allclose(got.drop_attrs(), want.drop_attrs(), rtol=1e-12)
    with quiet():
        xr.testing.assert_allclose(
            got["b_std"].drop_attrs(), ds.b.resample(time="MS").std(), rtol=1e-12
        )
    assert list(got.time.values) == list(ds.b.resample(time="MS").mean().time.values)


def test_unique_grouper_in_a_mapping_and_the_accessor() -> None:
    ds = make_dataset(nt=60, chunks={"time": 7})
    got = ds.toolkit.stats(
        "time",
        groupby={"time.season": UniqueGrouper()},
        stats=["mean"],
        variables=["b"],
        progress=False,
    )
    np.testing.assert_allclose(got["b_mean"], ds.b.groupby("time.season").mean(), rtol=1e-12)
    assert list(got.season.values) == list(ds.b.groupby("time.season").mean().season.values)


@pytest.mark.parametrize("dtype", ["float32", "int16", "float64"])
def test_lazy_dtypes_are_the_computed_ones_with_empty_groups(dtype: str) -> None:
    arr = hourly(100, dtype, nan=0.2).isel(time=np.r_[0:10, 60:100])
    kwargs: dict[str, Any] = dict(stats=MOMENTS, quantiles=[0.5], bins=4, bin_range=(-1, 1))
    lazy = toolkit.stats(
        arr.chunk(time=9), "time", groupby={"time": TimeResampler("1D")}, compute=False, **kwargs
    )
    got = lazy.compute()
    assert {k: v.dtype for k, v in lazy.items()} == {k: v.dtype for k, v in got.items()}
    assert got["min"].dtype == (np.float64 if dtype == "int16" else np.dtype(dtype))


def test_bins_from_the_datas_range_and_skipna_false_per_group() -> None:
    arr = hourly(300, "float64", nan=0.0)
    arr[5, 1, 1] = np.nan  # January, one cell
    got = toolkit.stats(
        arr.chunk(time=40),
        "time",
        groupby="time.month",
        stats=["count", "mean", "histogram"],
        bins=5,
        progress=False,
    )
    v = arr.values
    edges = np.histogram_bin_edges(v[~np.isnan(v)], bins=5)
    np.testing.assert_array_equal(got["bin_lower"], edges[:-1])
    for i, (_, sub) in enumerate(arr.groupby("time.month")):
        s = sub.values[:, 2, 3]
        np.testing.assert_array_equal(got["histogram"][i, 2, 3], np.histogram(s, edges)[0])
    strict = toolkit.stats(
        arr.chunk(time=40),
        "time",
        groupby="time.month",
        skipna=False,
        stats=["count", "mean"],
        quantiles=[0.5],
        progress=False,
    )
    assert np.isnan(strict["mean"].sel(month=1)[1, 1]) and not np.isnan(strict["mean"][1, 1, 1])
    assert np.isnan(strict["quantiles"].sel(month=1)[1, 1]).all()
    assert int(strict["count"].sel(month=1)[1, 1]) == int((arr.time.dt.month == 1).sum()) - 1


def test_finalize_split_by_group_ranges_gives_the_same_answer(monkeypatch: Any) -> None:
    from toolkit.stats import compute

    arr = hourly(300, "float64", nan=0.1)
    kwargs: dict[str, Any] = dict(stats=["count", "mean", "max"], quantiles=QS, progress=False)
    for dims, groupby in (
        ("time", {"time": TimeResampler("1D")}),
        (["time", "x"], ["time.month", "region"]),
    ):
        with dask.config.set(scheduler="synchronous"):  # one thread: one finalize task
            whole_task = toolkit.stats(arr.chunk(time=40), dims, groupby=groupby, **kwargs)
        monkeypatch.setattr(compute, "_FINALIZE_CELLS", 30)  # a few groups per task
        lazy = toolkit.stats(arr.chunk(time=40), dims, groupby=groupby, compute=False, **kwargs)
        monkeypatch.undo()
        first = lazy["count"].dims.index("month" if "month" in lazy.dims else "time")
        assert len(lazy["count"].chunks[first]) > 1
        xr.testing.assert_identical(lazy.compute(), whole_task)


@pytest.mark.parametrize("threads", [1, 3])
def test_a_finalize_task_per_thread_where_blocks_hold_few_groups(threads: int) -> None:
    # The merges after the last block are shared by the threads: one range of
    # groups each (a single finalize task kept the other threads idle).
    arr = hourly(2880, "float32", nan=0.1)  # 7-hourly over 27 months; blocks of 70 days
    kwargs: dict[str, Any] = dict(stats=["count", "mean", "max"], quantiles=QS, progress=False)
    with dask.config.set(scheduler="synchronous"):
        one = toolkit.stats(arr.chunk(time=240), "time", groupby="time.month", **kwargs)
    with dask.config.set(scheduler="threads", num_workers=threads):
        lazy = toolkit.stats(
            arr.chunk(time=240), "time", groupby="time.month", compute=False, **kwargs
        )
        assert len(lazy["count"].chunks[lazy["count"].dims.index("month")]) == threads
        xr.testing.assert_identical(lazy.compute(), one)


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_the_answer_does_not_depend_on_the_threads(threads: int) -> None:
    # Each range of groups merges its groups' states in the tree one range
    # would: with the merges batched by range, means differed from one thread's
    # in the last bits (found by a helper's stress run).
    rng = np.random.default_rng(0)
    arr = xr.DataArray(rng.standard_normal((40, 1, 1)), dims=("time", "y", "x"), name="v")
    labels = xr.DataArray(np.arange(40) % 3, dims="time", name="lab")
    kwargs: dict[str, Any] = dict(stats=["mean", "sum", "std"], quantiles=QS, progress=False)
    with dask.config.set(scheduler="synchronous"):
        one = toolkit.stats(arr.chunk(time=1), "time", groupby=labels, **kwargs)
    with dask.config.set(scheduler="threads", num_workers=threads):
        got = toolkit.stats(arr.chunk(time=1), "time", groupby=labels, **kwargs)
    xr.testing.assert_identical(got, one)


def test_exact_quantiles_of_whole_groups_propagate_nan_with_skipna_false() -> None:
    arr = hourly(200, "float32", nan=0.0)
    arr[3, 1, 1] = np.nan  # the first day, one cell
    kwargs: dict[str, Any] = dict(
        groupby={"time": TimeResampler("1D")}, quantiles=QS, stats=["count"], progress=False
    )
    strict = toolkit.stats(arr.chunk(time=-1), "time", skipna=False, **kwargs)["quantiles"]
    assert np.isnan(strict[0, 1, 1]).all() and not np.isnan(strict[0, 1, 2]).any()
    loose = toolkit.stats(arr.chunk(time=-1), "time", **kwargs)["quantiles"]
    with quiet():
        want = arr.astype("f8").resample(time="1D").quantile(QS, dim="time", skipna=True)
    np.testing.assert_array_equal(loose.values, want.transpose(*loose.dims).values)
    np.testing.assert_array_equal(strict.values[1:], loose.values[1:])
