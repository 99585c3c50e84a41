"""toolkit.stats: one pass over the chunks, any chunking and tree, numpy's answers."""

from __future__ import annotations

import collections
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import make_dataset
from hypothesis import given
from hypothesis import strategies as st
from stats_reference import (
    DTYPES,
    MOMENTS,
    check,
    check_quantiles,
    reference,
    rows,
    sum_overflows,
    values,
)
from zarr.storage import MemoryStore

import toolkit
from toolkit.errors import StatsError, StatsOverflowError, ToolkitError
from toolkit.io.wrappers import InterceptStore
from toolkit.stats.compute import summary_table

T = TypeVar("T")
DIMS = ("t", "y", "x")


@st.composite
def arrays(draw: st.DrawFn) -> dict[str, Any]:
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(0, 12), min_size=ndim, max_size=ndim)))
    chunks = tuple(draw(st.integers(1, max(n, 1))) for n in shape)
    reduce = sorted(draw(st.sets(st.integers(0, ndim - 1), min_size=1)))
    return {
        "dtype": draw(st.sampled_from(DTYPES)),
        "shape": shape,
        "chunks": chunks,
        "axes": tuple(reduce),
        "nan": draw(st.sampled_from([0.0, 0.1, 0.7, 1.0])),
        "inf": draw(st.sampled_from([0.0, 0.0, 0.1, 0.6])),  # floats only
        "sign": draw(st.sampled_from(["+", "-", "±"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "split_every": draw(st.integers(2, 5)),
        "ddof": draw(st.integers(0, 1)),
    }


@given(arrays())
def test_any_chunking_and_split_every_gives_the_exact_answer(case: dict[str, Any]) -> None:
    rng = np.random.default_rng(case["seed"])
    x = values(rng, case["dtype"], case["shape"], case["nan"], case["inf"], case["sign"])
    dims = DIMS[: x.ndim]
    arr = xr.DataArray(x, dims=dims).chunk(dict(zip(dims, case["chunks"])))
    reduce = [dims[a] for a in case["axes"]]
    edges = np.array([-50.0, -1.0, 0.0, 0.5, 3.0, 1e6])
    qs = [0.0, 0.3, 0.5, 0.99, 1.0]
    kwargs = dict(
        ddof=case["ddof"], bins=edges, quantiles=qs, split_every=case["split_every"], progress=False
    )
    if sum_overflows(x, case["axes"]):
        with pytest.raises(StatsOverflowError):
            toolkit.stats(arr, dim=reduce, stats=MOMENTS, **kwargs)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all-NaN and empty cells, infinities warn nothing
        got = toolkit.stats(arr, dim=reduce, stats=MOMENTS, **kwargs)
    ref = reference(x, case["axes"], case["ddof"])
    for stat in MOMENTS:
        check(stat, got[stat].values, ref)
    kept = [a for a in range(x.ndim) if a not in case["axes"]]
    assert got["mean"].dims == tuple(dims[a] for a in kept)
    # Histogram (numpy's, exactly: infinities are outside the bins) and sketch
    # quantiles (within their bound, numpy's infinities exactly) per cell.
    hist = got["histogram"].values.reshape(-1, len(edges) - 1)
    quant = got["quantiles"].values.reshape(-1, len(qs))
    for i, row in enumerate(rows(x, case["axes"])):
        v = row.astype(np.float64)
        v = v[~np.isnan(v)]
        np.testing.assert_array_equal(hist[i], np.histogram(v, bins=edges)[0])
        check_quantiles(quant[i], v, qs, 0.01)


def test_infinities_give_xarrays_answers_in_every_chunking() -> None:
    inf = np.inf
    x = np.array(
        [
            [1.0, inf, 2.0, 3.0, np.nan, 4.0],
            [inf, -inf, 1.0, np.nan, 2.0, 2.0],
            [-inf, 1.0, 2.0, 3.0, 4.0, 5.0],
            [inf, inf, np.nan, inf, inf, inf],
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        ]
    )
    arr = xr.DataArray(x, dims=("a", "b"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # xarray's (numpy's) inf - inf
        want = {s: getattr(arr, s)("b") for s in ("mean", "std", "var", "min", "max", "sum")}
    for chunks in (6, 1, 2, 4):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # toolkit's inf - inf stays inside
            got = toolkit.stats(
                arr.chunk({"b": chunks}),
                "b",
                stats=list(want),
                bins=3,
                bin_range=(0, 6),
                quantiles=[0.5, 1.0],
                split_every=2,
                progress=False,
            )
        for s, w in want.items():
            xr.testing.assert_allclose(got[s].drop_attrs(), w, rtol=1e-12)
        for i, row in enumerate(x):
            v = row[~np.isnan(row)]
            assert list(got["histogram"][i].values) == list(np.histogram(v, 3, (0, 6))[0])
    np.testing.assert_array_equal(got["mean"], [inf, np.nan, -inf, inf, 3.5])
    # The max: infinite ones exactly, finite ones from the sketch (within 1%).
    np.testing.assert_allclose(got["quantiles"][:, 1], [inf, inf, 5, inf, 6], rtol=0.01)


@pytest.mark.parametrize("kernels", ["1", "0"])
def test_squares_past_float64_give_numpys_infinite_std_in_every_chunking(
    kernels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Finite values whose deviations' squares overflow: numpy's variance and std are
    # inf. A chunk's sum of squares about its centre was inf - inf there: NaN, which
    # says "no value", for a spread that is too large to hold.
    monkeypatch.setenv("TOOLKIT_KERNELS", kernels)
    x = np.array([1e299, -1e299, 5e298, 1e299, -2e299, 3e299] * 4)
    arr = xr.DataArray(
        np.stack([x, x / 1e290]),
        dims=("c", "time"),
        coords={"time": pd.date_range("2000-01-01", periods=x.size, freq="7D")},
    )
    with np.errstate(over="ignore"):
        want_std, want_var = np.std(arr.values, axis=1), np.var(arr.values, axis=1)
    assert np.isinf(want_std[0]) and np.isfinite(want_std[1])
    for chunks in (x.size, 1, 5):
        got = toolkit.stats(
            arr.chunk({"time": chunks}), "time", stats=["std", "var", "mean"], progress=False
        )
        np.testing.assert_allclose(got["std"].values, want_std, rtol=1e-12)
        np.testing.assert_allclose(got["var"].values, want_var, rtol=1e-12)
        grouped = toolkit.stats(
            arr.chunk({"time": chunks}), "time", groupby="time.year", stats=["std"], progress=False
        )
        with np.errstate(over="ignore"):
            want = arr.groupby("time.year").std("time").transpose(*grouped["std"].dims)
        np.testing.assert_allclose(grouped["std"].values, want.values, rtol=1e-12)
        assert np.isinf(grouped["std"].values[0]).all()


@pytest.mark.parametrize("kernels", ["1", "0"])
@pytest.mark.parametrize("dtype", ["bool", "int16", "float32", "float64"])
def test_sketch_quantiles_stay_within_each_cells_min_and_max(
    dtype: str, kernels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bucket's value may lie past the data (a median of booleans was 1.0099, a max of
    # integers 10.09): every order statistic lies between the min and the max, so the
    # estimates do, and quantiles 0 and 1 are exactly numpy's min and max.
    monkeypatch.setenv("TOOLKIT_KERNELS", kernels)
    rng = np.random.default_rng(3)
    raw = rng.normal(5.0, 3.0, (3, 120))
    x = (raw > 5).astype(dtype) if dtype == "bool" else raw.round(0).astype(dtype)
    if dtype.startswith("float"):
        x[1, ::7] = np.nan
    arr = xr.DataArray(
        x,
        dims=("c", "time"),
        coords={"time": pd.date_range("2000-01-01", periods=x.shape[1], freq="D")},
    )
    qs = [0.0, 0.25, 0.5, 0.75, 1.0]
    f8 = arr.astype("f8")  # numpy has no quantile of booleans
    for got, want in (
        (toolkit.stats(arr.chunk({"time": 25}), "time", quantiles=qs, progress=False), f8),
        (
            toolkit.stats(
                arr.chunk({"time": 10}), "time", groupby="time.month", quantiles=qs, progress=False
            ),
            f8.groupby("time.month"),
        ),
    ):
        q = got["quantiles"].values
        lo = np.asarray(want.min("time").transpose(*got["quantiles"].dims[:-1]), "f8")
        hi = np.asarray(want.max("time").transpose(*got["quantiles"].dims[:-1]), "f8")
        np.testing.assert_array_equal(q[..., 0], lo)
        np.testing.assert_array_equal(q[..., -1], hi)
        assert ((q >= lo[..., None]) & (q <= hi[..., None])).all()
        exact = np.asarray(want.quantile(qs, "time").transpose(*got["quantiles"].dims).astype("f8"))
        assert (np.abs(q - exact) <= 0.01 * np.abs(exact) + 1e-12).all()
    if dtype == "bool":
        assert set(np.unique(q)) <= {0.0, 1.0}


def test_a_dataset_keeps_dims_coords_and_says_what_each_value_is() -> None:
    ds = make_dataset(chunks={"time": 7, "y": 5})
    ds["name"] = ("time", np.array([f"s{i}" for i in range(ds.sizes["time"])]))
    ds["when"] = ("time", pd.date_range("2001-01-01", periods=ds.sizes["time"]))
    got = ds.toolkit.stats("time", stats=["mean", "std", "max", "var"], progress=False)
    assert set(got.data_vars) == {f"{v}_{s}" for v in "abc" for s in ("mean", "std", "max", "var")}
    assert got["a_mean"].dims == ("y", "x")
    np.testing.assert_array_equal(got["a_mean"].y, ds.y)
    a64 = ds.a.astype("f8")  # float64 accumulation: xarray's float32 mean is less exact
    np.testing.assert_allclose(got["a_mean"], a64.mean("time"), rtol=1e-12)
    np.testing.assert_allclose(got["b_std"], ds.b.std("time"), rtol=1e-12)
    assert got["a_max"].dtype == np.float32 and got["c_max"].dtype == np.int32
    attrs = got["a_std"].attrs
    assert attrs["cell_methods"] == "time: standard_deviation" and attrs["units"] == "K"
    assert got["a_var"].attrs["units"] == "(K)2" and attrs["ddof"] == 0
    assert "name: not numeric" in got.attrs["skipped"]
    assert "when: not numeric" in got.attrs["skipped"]
    # A time series of spatial means keeps time and its coordinate.
    series = toolkit.stats(ds, ("y", "x"), stats="mean", variables=["a"], progress=False)
    assert list(series.data_vars) == ["a_mean"] and series["a_mean"].dims == ("time",)
    np.testing.assert_array_equal(series.time, ds.time)
    np.testing.assert_allclose(series["a_mean"], a64.mean(("y", "x")), rtol=1e-12)


def test_the_graph_names_its_tasks_and_reads_lazily() -> None:
    ds = make_dataset(chunks={"time": 5})
    lazy = toolkit.stats(
        ds.a, stats=["mean", "min"], bins=4, bin_range=(-3, 3), split_every=2, compute=False
    )
    names = {k[0] if isinstance(k, tuple) else k for k in dict(lazy.__dask_graph__())}
    prefixes = {n.rsplit("-", 2)[0] for n in names if n.startswith("toolkit-stats")}
    assert {"toolkit-stats-chunk", "toolkit-stats-combine-1", "toolkit-stats-finalize"} <= {
        p.rsplit("-", 1)[0] if p.startswith("toolkit-stats-combine") else p for p in prefixes
    } | prefixes
    assert sum(n.startswith("toolkit-stats-chunk") for n in names) == 1
    out = lazy.compute()
    np.testing.assert_allclose(out["mean"], np.nanmean(ds.a.values.astype("f8")), rtol=1e-12)
    np.testing.assert_array_equal(
        out["histogram"], np.histogram(ds.a.values[~np.isnan(ds.a.values)], 4, (-3, 3))[0]
    )


def test_skipna_false_propagates_nan_except_counts() -> None:
    x = np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]])
    names = ["count", "nan_count", "mean", "min", "sum"]
    got = toolkit.stats(
        xr.DataArray(x, dims=("a", "b")),
        "b",
        skipna=False,
        progress=False,
        stats=names,
        quantiles=0.5,
    )
    assert np.isnan(got["mean"][0]) and got["mean"][1] == 2.0
    assert np.isnan(got["min"][0]) and np.isnan(got["quantiles"][0]).all()
    assert list(got["count"].values) == [2, 3] and list(got["nan_count"].values) == [1, 0]


def test_skipna_false_keeps_float32_extrema_float32_as_xarray_and_the_lazy_result() -> None:
    # A NaN made them float64 (found by a helper's stress run); without one they stayed
    # float32, as the lazy result said and xarray's min and max are.
    arr = xr.DataArray(np.array([[1.0, np.nan], [2.0, 3.0]], np.float32), dims=("a", "b"))
    lazy = toolkit.stats(arr, "b", skipna=False, stats=["min", "max"], compute=False)
    got = lazy.compute()
    for name in ("min", "max"):
        want = getattr(arr, name)("b", skipna=False)
        assert got[name].dtype == lazy[name].dtype == want.dtype == np.float32
        np.testing.assert_array_equal(got[name].values, want.values)


def test_bins_without_a_range_take_the_datas_range_in_a_second_pass() -> None:
    ds = make_dataset(chunks={"time": 9})
    got = toolkit.stats(ds, stats=["count", "histogram"], bins=6, progress=False)
    for name in "abc":
        v = ds[name].values.astype(np.float64).ravel()
        v = v[~np.isnan(v)]
        counts, edges = np.histogram(v, bins=6)
        np.testing.assert_array_equal(got[f"{name}_histogram"], counts)
        np.testing.assert_array_equal(got[f"{name}_bin_lower"], edges[:-1])
        np.testing.assert_array_equal(got[f"{name}_bin_upper"], edges[1:])
        assert int(got[f"{name}_count"]) == v.size
    assert list(got.data_vars) == [f"{n}_{s}" for n in "abc" for s in ("count", "histogram")]


def test_all_nan_and_empty_give_nan_and_zero_counts_quietly() -> None:
    nan = xr.DataArray(np.full((4, 3), np.nan, "f4"), dims=("a", "b")).chunk({"a": 2})
    empty = xr.DataArray(np.zeros((0, 3), "i2"), dims=("a", "b"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for arr in (nan, empty):
            got = toolkit.stats(arr, "a", stats=[*MOMENTS], quantiles=[0.5], progress=False)
            assert (got["count"] == 0).all()
            for s in ("mean", "std", "min", "max", "skew", "kurtosis", "quantiles"):
                assert got[s].isnull().all(), s
        assert (toolkit.stats(nan, progress=False, stats="nan_count")["nan_count"] == 12).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stats": ["mean", "stdev"]}, "unknown statistic 'stdev'; did you mean 'std'"),
        ({"dim": "depth"}, "dim 'depth' is not in the data; its dims are"),
        ({"quantiles": [0.5, 50]}, r"quantiles must lie in \[0, 1\], got \[50.0\]"),
        ({"quantiles": 0.5, "quantile_error": 2}, "quantile_error must lie in"),
        # Finer sketches' codes overflowed the kernel's int32 (a segfault at 5e-7).
        ({"quantiles": 0.5, "quantile_error": 5e-7}, r"must lie in \[1e-05, 1\).*1/quantile_error"),
        ({"stats": ["histogram"]}, "'histogram' needs bins="),
        ({"stats": ["quantiles"]}, "'quantiles' needs quantiles="),
        ({"bins": 0}, "bins must be a positive number"),
        ({"bins": [3, 1, 2]}, "increase monotonically"),
        ({"bins": 3, "bin_range": (2, 1)}, "low <= high"),
        ({"bins": [0, 1], "bin_range": (0, 1)}, "bin_range goes with bins=<number>"),
        ({"variables": ["s"]}, "'s' is not numeric"),
        ({"variables": ["nope"]}, "no data variable 'nope'"),
        ({"split_every": 1}, "split_every must be >= 2"),
        ({"ddof": -1}, "ddof must be >= 0"),
        ({"bins": 4, "compute": False}, "needs a first pass"),
    ],
)
def test_bad_requests_are_refused_clearly(kwargs: dict[str, Any], match: str) -> None:
    ds = make_dataset(chunks={"time": 10})
    ds["s"] = ("time", np.array(["x"] * ds.sizes["time"]))
    with pytest.raises(StatsError, match=match) as err:
        toolkit.stats(ds, **{"progress": False, **kwargs})
    assert isinstance(err.value, ValueError) and isinstance(err.value, ToolkitError)


def test_bins_need_a_range_when_there_is_no_finite_value() -> None:
    nan = xr.DataArray(np.full((4, 3), np.nan), dims=("a", "b"), name="v")
    with pytest.raises(StatsError, match=r"'v' has no finite value.*give bin_range"):
        toolkit.stats(nan, bins=5, progress=False)
    inf = xr.DataArray(np.array([1.0, np.inf]), dims="a", name="w")
    with pytest.raises(StatsError, match="'w' holds infinite values"):
        toolkit.stats(inf, bins=5, progress=False)


class CountingStore(InterceptStore):
    """Counts every get per key (shared by the clones zarr makes)."""

    def __init__(self, store: Any, gets: collections.Counter[str] | None = None) -> None:
        super().__init__(store)
        self.gets: collections.Counter[str] = collections.Counter() if gets is None else gets

    def _with_store(self, store: Any) -> CountingStore:
        return CountingStore(store, self.gets)

    async def _call(self, op: str, key: str, fn: Callable[[], Awaitable[T]], size: int = 0) -> T:
        if op == "get":
            self.gets[key] += 1
        return await fn()


def test_every_chunk_is_read_exactly_once_for_many_statistics() -> None:
    ds = make_dataset(nt=60, chunks={"time": 6})
    memory = MemoryStore()
    toolkit.to_zarr(
        ds,
        memory,
        mode="w",
        progress=False,
        encoding={"a": {"chunks": (6, 6, 5)}, "b": {"chunks": (10, 12)}},
    )
    store = CountingStore(memory)
    toolkit.stats(
        store, stats=[*MOMENTS], bins=5, bin_range=(-2, 2), quantiles=[0.1, 0.9], progress=False
    )
    # Data variables' chunks (xarray's open reads the index coordinates on its own).
    data = {k: n for k, n in store.gets.items() if k.startswith(("a/c/", "b/c/", "c/c/"))}
    stored = {k for k in memory._store_dict if k.startswith(("a/c/", "b/c/", "c/c/"))}
    assert len(stored) == 10 * 2 * 2 + 6 + 10
    assert set(data) >= stored  # every chunk was read ...
    assert set(data.values()) == {1}, {k: n for k, n in data.items() if n != 1}  # ... once


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_on_a_cluster_of_worker_processes(cluster_client: Any, tmp_path: Any) -> None:
    ds = make_dataset(nt=80, chunks={"time": 8})
    url = str(tmp_path / "s.zarr")
    toolkit.to_zarr(ds, url, mode="w", progress=False)
    got = toolkit.stats(
        url, "time", stats=["mean", "std", "skew"], quantiles=[0.5], split_every=3, progress=False
    )
    with dask.config.set(scheduler="sync"):
        want = toolkit.stats(
            ds.compute(), "time", stats=["mean", "std", "skew"], quantiles=[0.5], progress=False
        )
    xr.testing.assert_allclose(got.drop_attrs(), want.drop_attrs(), rtol=1e-12)
    assert got.attrs["source"] == url


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_from_s3_through_a_throttling_proxy(s3: Any) -> None:
    from toolkit.testing import FaultProxy

    ds = make_dataset(nt=40)
    url = "s3://data/stats.zarr"
    toolkit.to_zarr(
        ds,
        url,
        mode="w",
        storage_options=s3.storage_options(),
        progress=False,
        encoding={"a": {"chunks": (2, 6, 5)}},
    )
    with FaultProxy(s3.endpoint_url, latency=0.005, rate=30, burst=5) as proxy:
        got = toolkit.stats(
            url,
            storage_options=s3.storage_options(proxy.url),
            stats=["count", "mean", "max"],
            progress=False,
        )
        assert proxy.counts.throttled > 0  # the budget had to adapt, and nothing was lost
    a = ds.a.values.astype(np.float64)
    assert int(got["a_count"]) == int(np.isfinite(a).sum())
    np.testing.assert_allclose(float(got["a_mean"]), np.nanmean(a), rtol=1e-12)
    assert float(got["c_max"]) == ds.c.values.max()


def test_approximate_quantiles_say_so_in_attrs_and_table() -> None:
    """Issue 30: sketch quantiles were not marked approximate (every quantile is one)."""
    x = np.arange(1_000_000, dtype="f8")
    ds = xr.Dataset({"v": ("t", x), "n": ("t", np.full(x.size, 123, dtype="i8"))}).chunk(t=250_000)
    got = toolkit.stats(
        ds,
        stats=["count", "sum", "mean"],
        quantiles=[0.1, 0.5],
        quantile_error=0.02,
        progress=False,
    )
    attrs = got["v_quantiles"].attrs
    assert attrs["approximate"] == 1 and attrs["method"] == "DDSketch"
    assert attrs["relative_error"] == 0.02 and "within relative_error (0.02)" in attrs["comment"]
    assert attrs["long_name"].startswith("approximate quantiles of v")
    assert "approximate" not in got["v_mean"].attrs  # the exact statistics say nothing
    # The bound said holds: within 2% of numpy's quantiles of 0 ... 999,999.
    exact = np.quantile(x, [0.1, 0.5])
    np.testing.assert_array_less(np.abs(got["v_quantiles"].values - exact), 0.02 * exact + 1)
    lines = summary_table(got).splitlines()
    head = ["variable", "count", "sum", "mean", "quantile 0.1 (approx.)", "quantile 0.5 (approx.)"]
    assert [c.strip() for c in lines[0].split("  ") if c.strip()] == head
    v, n = (dict(zip(head, ln.split(), strict=True)) for ln in lines[2:])
    assert (v["variable"], v["count"], v["mean"]) == ("v", "1,000,000", "500000")
    assert abs(float(v["quantile 0.5 (approx.)"]) - exact[1]) <= 0.02 * exact[1]
    # Counts and integer sums print whole (an exact sum of 123,000,000, not 1.23e+08).
    assert (n["count"], n["sum"], n["mean"]) == ("1,000,000", "123,000,000", "123")


def test_the_summary_table_leaves_maps_and_series_to_the_dataset_repr() -> None:
    ds = make_dataset(nt=10)
    assert summary_table(toolkit.stats(ds, dim="time", stats=["mean"], progress=False)) is None
    table = summary_table(toolkit.stats(ds, stats=["count", "max"], progress=False))
    assert table is not None
    assert [ln.split()[0] for ln in table.splitlines()[2:]] == ["a", "b", "c"]
