"""Statistics in one pass: each chunk read once, reduced per chunk, combined in a tree.

:func:`stats` turns a request (statistics, dims, bins, quantiles) into one dask
graph per variable: a ``toolkit-stats-chunk`` task per block reduces it into
the partial state every requested statistic needs (see
:mod:`toolkit.stats.aggregations`), ``toolkit-stats-combine`` tasks merge partials
``split_every`` at a time along the reduced dims, and one
``toolkit-stats-finalize`` task per block of kept cells turns the combined
state into the results.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import operator
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
from dask.task_spec import Alias, List, Task, TaskRef
from zarr.abc.store import Store

from toolkit._render import text_table
from toolkit.cluster.executor import executor
from toolkit.cluster.progress import progress_bar
from toolkit.errors import StatsError
from toolkit.io.stores import display_location, store_label
from toolkit.io.throttle import Throttle
from toolkit.read import open_zarr
from toolkit.stats.aggregations import (
    STATISTICS,
    Aggregation,
    Context,
    Count,
    Partial,
    combine,
    components,
    finalize,
    partial,
)
from toolkit.stats.groupby import (
    GroupBy,
    Groups,
    chunk,
    combine_groups,
    finalize_groups,
    resolve,
    whole,
)

__all__ = ["DEFAULT_STATS", "stats", "summary_table"]

DEFAULT_STATS = ("count", "mean", "std", "min", "max")
"""The statistics :func:`stats` computes when none are named."""

_DEFAULT_SPLIT_EVERY = 8

Source = xr.DataArray | xr.Dataset | str | os.PathLike[str] | Store


def stats(
    obj: Source,
    dim: Hashable | Sequence[Hashable] | None = None,
    stats: Sequence[str] | str = DEFAULT_STATS,
    *,
    skipna: bool = True,
    ddof: int = 0,
    bins: int | Sequence[float] | np.ndarray | None = None,
    bin_range: tuple[float, float] | None = None,
    quantiles: float | Sequence[float] | None = None,
    quantile_error: float = 0.01,
    variables: Sequence[Hashable] | None = None,
    groupby: GroupBy | None = None,
    split_every: int | Mapping[Hashable, int] | None = None,
    throttle: Throttle | Literal[False] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    compute: bool = True,
) -> xr.Dataset:
    """Many statistics of a dataset in one pass over its chunks.

    Each chunk is read and decoded once, whatever the number of statistics:
    it is reduced into a partial state (counts, float64 central moments,
    extrema, exact integer sums, histogram counts, a quantile sketch) that
    partials of other chunks merge with in a tree. The tree's shape
    (``split_every``) never changes the answer beyond float64 rounding.

    Parameters
    ----------
    obj : DataArray, Dataset, str, os.PathLike or zarr Store
        What to summarize. A path, URL or store is opened with
        :func:`toolkit.open_zarr` (dask chunks in whole write units). In-memory
        data is split into dask's "auto" chunks.
    dim : hashable or sequence of hashable, optional
        Dims to reduce (default: all). The others are kept, so
        ``dim=("y", "x")`` gives a time series of spatial statistics and
        ``dim="time"`` maps of temporal ones. A variable with none of the dims
        is skipped (and named in the result's ``skipped`` attribute).
    stats : sequence of str or str
        Any of ``count``, ``nan_count``, ``sum``, ``mean``, ``var``, ``std``,
        ``min``, ``max``, ``skew``, ``kurtosis``, ``histogram`` (needs
        ``bins``) and ``quantiles`` (needs ``quantiles=``). ``bins`` and
        ``quantiles`` add theirs when given.
    skipna : bool
        Ignore NaN (default). With False, every statistic but the counts and
        the histogram is NaN where any value is. Infinities are never skipped:
        as in numpy, the mean is ``inf`` or ``-inf`` (NaN with both signs),
        var, std, skew and kurtosis are NaN, and min, max and sum are numpy's.
    ddof : int
        Delta degrees of freedom of ``var`` and ``std`` (divisor ``n - ddof``).
    bins : int or sequence of float, optional
        Histogram bins as in :func:`numpy.histogram`: a number of equal bins
        over ``bin_range``, or the bin edges. A number without ``bin_range``
        takes each variable's min and max, which costs a second read of the
        data (the first pass computes everything else).
    bin_range : (float, float), optional
        The range of ``bins`` equal bins; values outside (infinities among
        them) are not counted.
    quantiles : float or sequence of float, optional
        Quantiles in [0, 1], estimated from a mergeable sketch (DDSketch):
        each answer is within ``quantile_error`` relative of numpy's
        (``numpy.quantile`` "linear"): at most
        ``quantile_error * max(|lower|, |higher|)`` away, where lower and
        higher are the order statistics around the quantile. A quantile at
        or towards an infinite order statistic is that infinity, exactly (NaN
        between ``-inf`` and ``inf``), where numpy's formula sometimes gives
        NaN (numpy issue 21091).
    quantile_error : float
        Relative accuracy of the sketch, in [1e-5, 1) (default 1%). Its size
        grows as ``log(max/min) / quantile_error`` per kept cell.
    variables : sequence of hashable, optional
        The variables of a Dataset to summarize (default: every numeric data
        variable; others are skipped and named in ``skipped``). Naming a
        non-numeric variable is an error.
    groupby : str, DataArray, mapping or sequence, optional
        Statistics per group, as xarray's ``groupby`` and ``resample`` take
        them: a coordinate or virtual coordinate name (``"time.month"``,
        ``"time.season"``, ``"region"``), a named 1-D DataArray of labels
        aligned with the data, a mapping of such names to
        :mod:`xarray.groupers` objects (``{"time": TimeResampler("1D")}``,
        ``{"depth": BinGrouper(bins=[0, 10, 100])}``, ``{"region":
        UniqueGrouper()}``), or a sequence of names or labels (one group dim
        each: month x region). Every statistic is computed per group in the
        same single pass over the chunks (groups that span chunks merge
        exactly; quantiles keep their bound per group; nothing is
        rechunked). Each grouper is along one dim, which must be reduced
        (in ``dim``). The result has xarray's group dims and labels where the
        grouped dim was (``month``; ``time`` with every resample bin;
        ``<name>_bins``), empty groups included: a group with no value has
        ``count`` 0 and NaN statistics (its ``sum`` too, as xarray's), an
        all-NaN group ``count`` 0 and NaN statistics (``sum`` 0). Variables
        without every grouped dim are skipped.
    split_every : int or mapping, optional
        Partials merged per combine task (default 8), or per dim.
    throttle : Throttle, False or None
        Request budget when ``obj`` is a path, URL or store (see
        :func:`toolkit.open_zarr`).
    storage_options : mapping, optional
        fsspec options when ``obj`` is a URL.
    progress : bool
        Show a progress bar (tqdm, or distributed's when a client is active).
    compute : bool
        Compute now (default), or return the dask-backed result.

    Returns
    -------
    xarray.Dataset
        For a DataArray, one variable per statistic (``mean``, ``std``, ...);
        for a Dataset, ``<variable>_<statistic>``. Each keeps the dims not
        reduced and their coordinates; histograms add a ``bin`` dim (with
        ``bin_lower`` and ``bin_upper``), quantiles a ``quantile`` dim. Each
        variable's attributes name the statistic, the variable, the reduced
        dims (CF ``cell_methods``) and units.

    Raises
    ------
    toolkit.errors.StatsError
        Unknown statistics, dims not present, non-numeric variables asked for
        by name, quantiles outside [0, 1], bad bins, or bins without a range
        on data with no finite value; for ``groupby``, an unknown coordinate,
        labels that are not 1-D or do not align with the data, or a grouper
        along a dim that is not reduced.

    Examples
    --------
    >>> import numpy as np
    >>> import xarray as xr
    >>> import toolkit
    >>> ds = xr.Dataset(
    ...     {"t2m": (("time", "x"), np.arange(48.0).reshape(12, 4))},
    ...     coords={"time": np.arange(12)},
    ... ).chunk({"time": 5})
    >>> summary = toolkit.stats(ds, stats=["count", "mean", "max"], progress=False)
    >>> int(summary.t2m_count), float(summary.t2m_mean), float(summary.t2m_max)
    (48, 23.5, 47.0)
    >>> toolkit.stats(ds.t2m, dim="time", stats=["max"], progress=False)["max"].values
    array([44., 45., 46., 47.])
    """
    names = _statistic_names(stats, bins, quantiles)
    qs = _check_quantiles(quantiles, quantile_error) if "quantiles" in names else ()
    edges = _fixed_edges(bins, bin_range) if "histogram" in names else None
    if ddof < 0:
        raise StatsError(f"ddof must be >= 0, got {ddof}")
    ds, single, source = _as_dataset(obj, throttle=throttle, storage_options=storage_options)
    reduce_dims = _check_dims(ds, dim)
    groups = resolve(ds, groupby, reduce_dims) if groupby is not None else None
    chosen, skipped = _choose_variables(ds, variables, reduce_dims, groups)
    if not chosen:
        raise StatsError(
            "no variable to summarize: "
            + ("; ".join(f"{k}: {v}" for k, v in skipped.items()) or "the dataset is empty")
        )
    every = _split_every(split_every, reduce_dims)
    if "histogram" in names and edges is None and not compute:
        raise StatsError(
            "bins=<number> without bin_range takes the range from the data, which needs a "
            "first pass; give bin_range=(low, high) or bin edges, or use compute=True"
        )

    build = functools.partial(
        _build,
        ds,
        chosen,
        reduce_dims,
        every=every,
        skipna=skipna,
        ddof=ddof,
        qs=qs,
        alpha=quantile_error,
        single=single,
        groups=groups,
    )
    if "histogram" in names and edges is None:
        # numpy's bins=int: equal bins between the data's min and max (a first pass).
        first_names = [n for n in names if n != "histogram"]
        extra = [n for n in ("min", "max") if n not in first_names]
        first = _compute(build([*first_names, *extra], {}), progress, "stats (pass 1 of 2)")
        hist_edges: dict[Hashable, np.ndarray] = {}
        for name in chosen:
            lo, hi = (first[_out_name(name, s, single)].values for s in ("min", "max"))
            hist_edges[name] = _data_edges(name, int(bins), lo, hi)  # type: ignore[arg-type]
        first = first.drop_vars([_out_name(n, s, single) for n in chosen for s in extra])
        second = _compute(build(["histogram"], hist_edges), progress, "stats (pass 2 of 2)")
        # (The same coordinates in both: said, so that xarray does not warn.)
        result = xr.merge(
            [first, second], compat="no_conflicts", join="exact", combine_attrs="override"
        )
        result = result[[_out_name(n, s, single) for n in chosen for s in names]]
    else:
        result = build(names, dict.fromkeys(chosen, edges) if edges is not None else {})
        if compute:
            result = _compute(result, progress, "stats")
    result.attrs.update(
        {
            "statistics": ", ".join(names),
            "reduced_dims": ", ".join(map(str, reduce_dims)),
            "skipna": int(skipna),
        }
    )
    if "var" in names or "std" in names:
        result.attrs["ddof"] = ddof
    if groups is not None:
        result.attrs["groupby"] = groups.describe()
    if source is not None:
        result.attrs["source"] = source
    if skipped:
        result.attrs["skipped"] = "; ".join(f"{k}: {v}" for k, v in skipped.items())
    return result


# Validation ------------------------------------------------------------------


def _statistic_names(stats: Sequence[str] | str, bins: object, quantiles: object) -> list[str]:
    requested = [stats] if isinstance(stats, str) else list(stats)
    for name in requested:
        if not isinstance(name, str) or name not in STATISTICS:
            close = difflib.get_close_matches(str(name), list(STATISTICS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise StatsError(f"unknown statistic {name!r}{hint} Available: {', '.join(STATISTICS)}")
    names = list(dict.fromkeys(requested))
    if bins is not None and "histogram" not in names:
        names.append("histogram")
    if quantiles is not None and "quantiles" not in names:
        names.append("quantiles")
    if "histogram" in names and bins is None:
        raise StatsError("'histogram' needs bins=: a number of bins (with bin_range=) or edges")
    if "quantiles" in names and quantiles is None:
        raise StatsError("'quantiles' needs quantiles=, e.g. quantiles=[0.05, 0.5, 0.95]")
    return names


_MIN_QUANTILE_ERROR = 1e-5
"""The finest sketch: 73 M buckets of each sign (its codes must fit the kernel's int32)."""


def _check_quantiles(quantiles: object, error: float) -> tuple[float, ...]:
    qs = np.atleast_1d(np.asarray(quantiles, dtype=float))
    if qs.ndim != 1 or qs.size == 0:
        raise StatsError(f"quantiles must be a number or a list of numbers, got {quantiles!r}")
    bad = qs[~((qs >= 0) & (qs <= 1))]
    if bad.size:
        raise StatsError(
            f"quantiles must lie in [0, 1], got {bad.tolist()}; for percentiles divide by 100"
        )
    if not _MIN_QUANTILE_ERROR <= error < 1:
        raise StatsError(
            f"quantile_error must lie in [{_MIN_QUANTILE_ERROR:g}, 1), got {error}"
            + (
                "; the sketch's buckets per cell grow as 1/quantile_error (grouped "
                "statistics answer a group that lies whole in one chunk exactly)"
                if 0 < error < _MIN_QUANTILE_ERROR
                else ""
            )
        )
    return tuple(float(q) for q in qs)


def _fixed_edges(bins: object, bin_range: tuple[float, float] | None) -> np.ndarray | None:
    """Edges known before reading (None when they come from the data's range)."""
    if isinstance(bins, int | np.integer) and not isinstance(bins, bool):
        if bins < 1:
            raise StatsError(f"bins must be a positive number of bins or edges, got {bins}")
        if bin_range is None:
            return None
        try:
            lo, hi = (float(v) for v in bin_range)
        except (TypeError, ValueError):
            raise StatsError(f"bin_range must be (low, high), got {bin_range!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
            raise StatsError(f"bin_range must be finite with low <= high, got {bin_range!r}")
        return np.histogram_bin_edges(np.empty(0), bins=int(bins), range=(lo, hi))
    if bin_range is not None:
        raise StatsError("bin_range goes with bins=<number>; with bin edges, leave it out")
    try:
        edges = np.asarray(bins, dtype=float)
    except (TypeError, ValueError):
        raise StatsError(f"bins must be a number of bins or bin edges, got {bins!r}") from None
    if edges.ndim != 1 or edges.size < 2 or not np.isfinite(edges).all():
        raise StatsError(f"bin edges must be at least two finite numbers, got {bins!r}")
    if (np.diff(edges) < 0).any():
        raise StatsError("bin edges must increase monotonically")
    return edges


def _data_edges(name: Hashable, bins: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    ends = np.concatenate([np.ravel(lo), np.ravel(hi)]).astype(np.float64)
    if np.isinf(ends).any():
        raise StatsError(
            f"{name!r} holds infinite values, so its range cannot bound equal bins; "
            "give bin_range=(low, high) or bin edges"
        )
    if np.isnan(ends).all():
        raise StatsError(
            f"{name!r} has no finite value to take a histogram range from; "
            "give bin_range=(low, high) or bin edges"
        )
    return np.histogram_bin_edges(np.array([np.nanmin(ends), np.nanmax(ends)]), bins=bins)


def _as_dataset(
    obj: Source,
    *,
    throttle: Throttle | Literal[False] | None,
    storage_options: Mapping[str, Any] | None,
) -> tuple[xr.Dataset, bool, str | None]:
    if isinstance(obj, xr.DataArray):
        name = obj.name if obj.name is not None else "data"
        return obj.to_dataset(name=name), True, None
    if isinstance(obj, xr.Dataset):
        return obj, False, None
    if isinstance(obj, str | os.PathLike | Store):
        ds = open_zarr(obj, throttle=throttle, storage_options=storage_options)
        return ds, False, display_location(store_label(obj))
    raise TypeError(
        f"stats takes a DataArray, a Dataset, or a Zarr path, URL or store; "
        f"got {type(obj).__name__}"
    )


def _check_dims(ds: xr.Dataset, dim: Hashable | Sequence[Hashable] | None) -> tuple[Hashable, ...]:
    if dim is None:
        return tuple(ds.dims)
    dims = [dim] if isinstance(dim, str) or not isinstance(dim, Iterable) else list(dim)
    missing = [d for d in dims if d not in ds.dims]
    if missing:
        raise StatsError(
            f"dim {missing[0]!r} is not in the data; its dims are {', '.join(map(repr, ds.dims))}"
        )
    return tuple(dict.fromkeys(dims))


def _numeric(var: xr.DataArray) -> bool:
    return var.dtype.kind in "biuf"


def _choose_variables(
    ds: xr.Dataset,
    variables: Sequence[Hashable] | None,
    dims: tuple[Hashable, ...],
    groups: Groups | None = None,
) -> tuple[list[Hashable], dict[Hashable, str]]:
    skipped: dict[Hashable, str] = {}
    grouped = groups.dims if groups is not None else ()
    if variables is not None:
        names: list[Hashable] = [variables] if isinstance(variables, str) else list(variables)
        for name in names:
            if name not in ds.data_vars:
                raise StatsError(
                    f"no data variable {name!r}; the data variables are "
                    f"{', '.join(map(repr, ds.data_vars))}"
                )
            if not _numeric(ds[name]):
                raise StatsError(
                    f"{name!r} is not numeric ({ds[name].dtype}); statistics need numbers"
                )
            if not set(ds[name].dims) & set(dims):
                raise StatsError(f"{name!r} has none of the dims {list(dims)}")
            if not set(grouped) <= set(ds[name].dims):
                raise StatsError(f"{name!r} is not along every grouped dim {list(grouped)}")
        return names, skipped
    chosen = []
    for name, var in ds.data_vars.items():
        if not _numeric(var):
            skipped[name] = f"not numeric ({var.dtype})"
        elif not set(var.dims) & set(dims):
            skipped[name] = f"none of the dims {', '.join(map(str, dims))}"
        elif not set(grouped) <= set(var.dims):
            skipped[name] = f"not along every grouped dim ({', '.join(map(str, grouped))})"
        else:
            chosen.append(name)
    return chosen, skipped


def _split_every(
    split_every: int | Mapping[Hashable, int] | None, dims: tuple[Hashable, ...]
) -> dict[Hashable, int]:
    if split_every is None:
        split_every = _DEFAULT_SPLIT_EVERY
    if isinstance(split_every, Mapping):
        out = {d: int(split_every.get(d, _DEFAULT_SPLIT_EVERY)) for d in dims}
    else:
        # An overall fan-in: each dim takes its share, as dask's reductions do.
        per = max(2, int(int(split_every) ** (1 / max(len(dims), 1))))
        if int(split_every) < 2:
            raise StatsError(f"split_every must be >= 2, got {split_every}")
        out = dict.fromkeys(dims, per)
    bad = {d: k for d, k in out.items() if k < 2}
    if bad:
        raise StatsError(f"split_every must be >= 2 per dim, got {bad}")
    return out


# Graph -----------------------------------------------------------------------


def _chunk_task(x: np.ndarray, axes: tuple[int, ...], aggs: Sequence[Aggregation]) -> Partial:
    return partial(x, axes, aggs)


def _combine_task(parts: list[Partial], aggs: Sequence[Aggregation]) -> Partial:
    return combine(parts, aggs)


def _finalize_task(part: Partial, names: Sequence[str], context: Context) -> dict[str, Any]:
    return finalize(part, names, context)


def _combine_groups_task(
    parts: list[Any], aggs: Sequence[Aggregation], start: int = 0, stop: int | None = None
) -> Any:
    return combine_groups(parts, aggs, start, stop)


_FINALIZE_CELLS = 1 << 20
"""Groups times kept cells that one grouped finalize task answers, about."""


def _finalize_groups_task(
    parts: list[Any],
    names: Sequence[str],
    context: Context,
    aggs: Sequence[Aggregation],
    group_shape: tuple[int, ...],
    first: int = 0,
) -> dict[str, Any]:
    part = combine_groups(parts, aggs, first, first + group_shape[0])
    return finalize_groups(part, names, context, aggs, group_shape, first)


def _tree(
    layer: dict[Any, Any],
    name: str,
    x: da.Array,
    axes: tuple[int, ...],
    every: Mapping[Hashable, int],
    dims: Sequence[Hashable],
    tag: str,
    combine_task: Any,
    aggs: Sequence[Aggregation],
) -> dict[tuple[int, ...], Any]:
    """Combine tasks merging the blocks along ``axes``, ``every[dim]`` at a time per dim.

    Returns the key holding each kept block's merged state, by block index.
    """
    current = {idx: (name, *idx) for idx in np.ndindex(*x.numblocks)}
    nb = list(x.numblocks)
    level = 0
    while any(nb[a] > 1 for a in axes):
        level += 1
        cname = f"toolkit-stats-combine-{level}-{tag}"
        fan = {a: every[dims[a]] if nb[a] > 1 else 1 for a in axes}
        new_nb = [(-(-n // fan[a]) if a in fan else n) for a, n in enumerate(nb)]
        batches: dict[tuple[int, ...], list[Any]] = {}
        for idx, key in current.items():
            new = tuple(i // fan[a] if a in fan else i for a, i in enumerate(idx))
            batches.setdefault(new, []).append(key)
        current = {}
        for new, keys in batches.items():
            key = (cname, *new)
            if len(keys) > 1:
                layer[key] = Task(key, combine_task, List(*map(TaskRef, keys)), aggs)
            else:
                layer[key] = Alias(key, keys[0])
            current[new] = key
        nb = new_nb
    return current


def _out_name(var: Hashable, stat: str, single: bool) -> str:
    return stat if single else f"{var}_{stat}"


def _result_dtype(
    stat: str, dtype: np.dtype[Any], empty: bool, grouped: bool = False
) -> np.dtype[Any]:
    if stat in ("count", "nan_count", "histogram"):
        return np.dtype("int64")
    if grouped and empty and stat == "sum":
        return np.dtype("float64")  # a group with no member: NaN, as xarray's
    if stat in ("min", "max"):
        return dtype if dtype.kind == "f" or not empty else np.dtype("float64")
    if stat == "sum" and dtype.kind in "biu":
        return np.dtype("uint64" if dtype.kind == "u" else "int64")
    return np.dtype("float64")


def _variable_stats(
    name: Hashable,
    var: xr.DataArray,
    dims: tuple[Hashable, ...],
    names: Sequence[str],
    every: Mapping[Hashable, int],
    context: Context,
    aggs: Sequence[Aggregation],
    token: str,
    groups: Groups | None = None,
) -> dict[str, tuple[da.Array, tuple[Hashable, ...]]]:
    """Dask arrays of each statistic of one variable, and their dims.

    With ``groups``, each task's partial state is one per group (see
    :mod:`toolkit.stats.groupby`), and the statistics have the groups'
    dims first, then the kept dims.
    """
    x = var.data if isinstance(var.data, da.Array) else da.from_array(np.asarray(var.values))
    axes = tuple(i for i, d in enumerate(var.dims) if d in dims)
    kept = [i for i in range(x.ndim) if i not in axes]
    tag = f"{name}-{token}"
    parts = _chunk_parts(x, var, axes, aggs, context, groups, f"toolkit-stats-chunk-{tag}")
    layer: dict[Any, Any] = {}
    fname = f"toolkit-stats-finalize-{tag}"
    kept_chunks = [x.chunks[a] for a in kept]
    ranges: list[int] = []
    if groups is None:
        current = _tree(layer, parts.name, x, axes, every, var.dims, tag, _combine_task, aggs)
        for idx, key in current.items():
            kidx = tuple(idx[a] for a in kept)
            shape = tuple(kept_chunks[j][i] for j, i in enumerate(kidx))
            ctx = dataclasses.replace(context, shape=shape)
            layer[(fname, *kidx)] = Task(
                (fname, *kidx), _finalize_task, TaskRef(key), list(names), ctx
            )
    else:
        ranges = _finalize_groups_layer(
            layer,
            parts,
            x,
            var,
            axes,
            every,
            names,
            context,
            aggs,
            groups,
            tag,
            fname,
            *_parallelism(),
        )
    graph = HighLevelGraph.from_collections(fname, layer, dependencies=[parts])
    empty = math.prod(x.shape[a] for a in axes) == 0 or (groups is not None and groups.any_empty())
    gshape = groups.shape if groups is not None else ()
    group_chunks = (tuple(ranges), *((n,) for n in gshape[1:])) if gshape else ()
    group_dims = groups.out_dims if groups is not None else ()
    kept_dims = tuple(var.dims[a] for a in kept)
    out = {}
    for stat in names:
        sname = f"toolkit-stats-{stat}-{tag}"
        extra: tuple[tuple[int, ...], ...] = ()
        extra_dims: tuple[Hashable, ...] = ()
        if stat == "histogram":
            nbins = len(next(a for a in aggs if a.key == "histogram").edges) - 1  # type: ignore[attr-defined]
            extra, extra_dims = ((nbins,),), ("bin",)
        elif stat == "quantiles":
            extra, extra_dims = ((len(context.quantiles),),), ("quantile",)
        pick = {
            key: Task(key, operator.getitem, TaskRef(k), stat)
            for k in layer
            if k[0] == fname
            for key in [(sname, *k[1:], *([0] if extra else []))]
        }
        g = HighLevelGraph(
            {**graph.layers, sname: MaterializedLayer(pick)},
            {**graph.dependencies, sname: {fname}},
        )
        dtype = _result_dtype(stat, var.dtype, empty, grouped=groups is not None)
        arr = da.Array(g, sname, (*group_chunks, *kept_chunks, *extra), dtype=dtype)
        out[stat] = (arr, (*group_dims, *kept_dims, *extra_dims))
    return out


def _chunk_parts(
    x: da.Array,
    var: xr.DataArray,
    axes: tuple[int, ...],
    aggs: Sequence[Aggregation],
    context: Context,
    groups: Groups | None,
    name: str,
) -> Any:
    """Each block's partial state (one per group present with ``groups``), a dask array."""
    meta = np.empty((0,) * x.ndim, dtype=object)
    if groups is None:
        return da.map_blocks(
            _chunk_task, x, axes=axes, aggs=aggs, dtype=object, meta=meta, name=name
        )
    # Each grouper's codes go in as a small dask array along its dim (length 1
    # along the others), so a chunk task gets its block's codes and no more.
    group_axes = tuple(var.dims.index(g.dim) for g in groups.groups)
    along = [g.codes for g in groups.groups]
    if context.quantiles:
        # And whether each position's group lies wholly in its block: such a
        # group's quantiles are answered exactly there, without a sketch.
        along += whole(along, group_axes, x.chunks, axes)
    codes = [
        da.from_array(
            c.reshape([-1 if i == a else 1 for i in range(x.ndim)]),
            chunks=tuple(x.chunks[i] if i == a else (1,) for i in range(x.ndim)),
        )
        for c, a in zip(along, group_axes * 2, strict=False)
    ]
    return da.map_blocks(
        chunk,
        x,
        *codes,
        axes=axes,
        group_axes=group_axes,
        aggs=aggs,
        dtype=object,
        meta=meta,
        name=name,
        quantiles=context.quantiles,
    )


def _parallelism() -> tuple[int, bool]:
    """How many tasks the executor runs at once, and whether it is a cluster."""
    run = executor()
    return run.threads(), run.distributed


def _finalize_groups_layer(
    layer: dict[Any, Any],
    parts: Any,
    x: da.Array,
    var: xr.DataArray,
    axes: tuple[int, ...],
    every: Mapping[Hashable, int],
    names: Sequence[str],
    context: Context,
    aggs: Sequence[Aggregation],
    groups: Groups,
    tag: str,
    fname: str,
    threads: int = 1,
    distributed: bool = False,
) -> list[int]:
    """The grouped statistics' combine and finalize tasks, into ``layer``; their group ranges.

    Many groups: finalize tasks per range of the first group dim, each of about
    ``_FINALIZE_CELLS`` group cells, in parallel and with memory to match; at
    least one per thread (``threads``), on a cluster (``distributed``) where
    blocks hold a few groups each.
    Each merges, in a tree of its own, only the blocks that hold groups of its
    range.
    """
    kept = [i for i in range(x.ndim) if i not in axes]
    kept_chunks = [x.chunks[a] for a in kept]
    gshape = groups.shape
    cells = math.prod(max(c, default=0) for c in kept_chunks) * math.prod(gshape[1:])
    a0 = var.dims.index(groups.groups[0].dim)
    edges = np.cumsum((0, *x.chunks[a0]))
    held = []  # the first grouper's smallest and largest code in each block along a0
    for i in range(len(x.chunks[a0])):
        c = groups.groups[0].codes[edges[i] : edges[i + 1]]
        c = c[c >= 0]
        held.append((int(c.min()), int(c.max())) if c.size else (1, 0))
    nparts = -(-gshape[0] * cells // _FINALIZE_CELLS)
    spans = [hi - lo + 1 for lo, hi in held if hi >= lo]
    if not distributed or (spans and sum(spans) <= len(spans) * gshape[0] // 2):
        # A finalize task per thread, each merging only its groups' blocks, so that
        # the merges after the last block are shared (one task alone kept the other
        # thread idle: 8% of a monthly climatology's time on 2 threads). On a
        # cluster, only where blocks hold a few groups each: a block's whole state
        # travels to each range that takes some of its groups.
        nparts = max(nparts, threads)
    nparts = min(gshape[0], nparts)
    ranges = [len(r) for r in np.array_split(np.arange(gshape[0]), max(nparts, 1))]
    fan = max(2, math.prod(every[var.dims[a]] if x.numblocks[a] > 1 else 1 for a in axes))
    blocks = list(np.ndindex(*x.numblocks))
    for kidx in np.ndindex(*(len(c) for c in kept_chunks)):
        shape = tuple(kept_chunks[j][i] for j, i in enumerate(kidx))
        ctx = dataclasses.replace(context, shape=shape)
        mine = [idx for idx in blocks if tuple(idx[a] for a in kept) == kidx]
        start = 0
        for r, size in enumerate(ranges):
            stop = start + size
            # Batches are windows of ``fan`` of all the blocks, those without a group
            # of the range left out: each group's states merge in the same tree
            # however the groups are split into ranges (so the answer does not
            # depend on the threads), and a window left with one state passes it on.
            keys: list[tuple[int, Any]] = [
                (j, (parts.name, *idx))
                for j, idx in enumerate(mine)
                if held[idx[a0]][0] < stop and held[idx[a0]][1] >= start
            ]
            level, width = 0, len(mine)
            while width > fan:
                level += 1
                cname = f"toolkit-stats-combine-{level}-{tag}"
                windows: dict[int, list[Any]] = {}
                for j, key in keys:
                    windows.setdefault(j // fan, []).append(key)
                keys = []
                for w, batch in windows.items():
                    if len(batch) == 1:
                        keys.append((w, batch[0]))
                        continue
                    key = (cname, r, w, *kidx)
                    merged = List(*map(TaskRef, batch))
                    layer[key] = Task(key, _combine_groups_task, merged, aggs, start, stop)
                    keys.append((w, key))
                width = -(-width // fan)
            gidx = (r,) + (0,) * (len(gshape) - 1)
            layer[(fname, *gidx, *kidx)] = Task(
                (fname, *gidx, *kidx),
                _finalize_groups_task,
                List(*(TaskRef(key) for _, key in keys)),
                list(names),
                ctx,
                aggs,
                (size, *gshape[1:]),
                start,
            )
            start = stop
    return ranges


def _build(
    ds: xr.Dataset,
    chosen: Sequence[Hashable],
    dims: tuple[Hashable, ...],
    names: Sequence[str],
    edges: Mapping[Hashable, np.ndarray],
    *,
    every: Mapping[Hashable, int],
    skipna: bool,
    ddof: int,
    qs: tuple[float, ...],
    alpha: float,
    single: bool,
    groups: Groups | None = None,
) -> xr.Dataset:
    """The lazy result Dataset for ``names`` of the ``chosen`` variables."""
    grouping = (
        None
        if groups is None
        else ([g.codes for g in groups.groups], list(map(str, groups.out_dims)), groups.shape)
    )
    token = tokenize(
        ds, list(chosen), dims, list(names), every, skipna, ddof, edges, qs, alpha, grouping
    )[:10]
    data_vars: dict[Hashable, xr.DataArray] = {}
    for name in chosen:
        var = ds[name]
        vdims = tuple(d for d in dims if d in var.dims)
        aggs = components(names, edges=edges.get(name), alpha=alpha)
        # Counts say where NaN propagates (skipna=False) and which groups had no member.
        if (not skipna or groups is not None) and not any(isinstance(a, Count) for a in aggs):
            aggs.insert(0, Count())
        context = Context(
            dtype=var.dtype, shape=(), ddof=ddof, skipna=skipna, quantiles=qs, alpha=alpha
        )
        arrays = _variable_stats(name, var, vdims, names, every, context, aggs, token, groups)
        kept = [d for d in var.dims if d not in vdims]
        for stat, (arr, odims) in arrays.items():
            out = _out_name(name, stat, single)
            prefix = "" if single else f"{name}_"
            odims = tuple(f"{prefix}bin" if d == "bin" else d for d in odims)
            # Coordinates of kept dims only: a resample's "time" is the bins', not the data's.
            coords = {
                k: c.variable
                for k, c in var.coords.items()
                if set(c.dims) <= set(kept) and k not in vdims
            }
            if groups is not None:
                for g in groups.groups:
                    coords.update({k: c.variable for k, c in g.coords.items()})
            if stat == "histogram":
                e = edges[name]
                coords[f"{prefix}bin_lower"] = xr.Variable(f"{prefix}bin", e[:-1])
                coords[f"{prefix}bin_upper"] = xr.Variable(f"{prefix}bin", e[1:])
            if stat == "quantiles":
                coords["quantile"] = xr.Variable("quantile", np.asarray(qs))
            result = xr.DataArray(
                arr, dims=odims, coords=coords, attrs=_attrs(name, var, stat, vdims, ddof, alpha)
            )
            if groups is not None:
                # xarray's order: the groups where their dim was, then the bin/quantile dim.
                order = groups.out_order(var.dims, kept)
                result = result.transpose(*order, *(d for d in odims if d not in order))
                result.attrs["groupby"] = groups.describe()
            data_vars[out] = result
    return xr.Dataset(data_vars)


def _attrs(
    name: Hashable,
    var: xr.DataArray,
    stat: str,
    dims: tuple[Hashable, ...],
    ddof: int,
    alpha: float,
) -> dict[str, Any]:
    s = STATISTICS[stat]
    over = ", ".join(map(str, dims))
    attrs: dict[str, Any] = {
        "long_name": f"{s.doc} of {var.attrs.get('long_name', name)} over {over}",
        "statistic": stat,
        "variable": str(name),
        "cell_methods": " ".join(f"{d}:" for d in dims) + f" {s.cell_method}",
    }
    units = var.attrs.get("units")
    if units is not None:
        if stat in ("mean", "std", "min", "max", "sum", "quantiles"):
            attrs["units"] = units
        elif stat == "var":
            attrs["units"] = f"({units})2"
        elif stat in ("skew", "kurtosis", "count", "nan_count", "histogram"):
            attrs["units"] = "1"
    if stat in ("var", "std"):
        attrs["ddof"] = ddof
    if stat == "quantiles":
        # An int, as the result's skipna: netCDF has no boolean attributes.
        attrs["approximate"] = 1
        attrs["method"] = "DDSketch"
        attrs["relative_error"] = alpha
        attrs["comment"] = (
            f"approximate quantiles: each is within relative_error ({alpha:g}) of "
            "numpy.quantile's linear one, at most relative_error * max(|lower|, |higher|) "
            "away, lower and higher being the order statistics around the quantile"
        )
    return attrs


def summary_table(result: xr.Dataset) -> str | None:
    """A :func:`stats` result as a text table: a row per variable, a column per statistic.

    Only for a result reduced to one value per variable and statistic (and per
    quantile: a column each, ``quantile 0.5 (approx.)`` when approximate, as
    every quantile of :func:`stats` is); None when a statistic keeps dims
    (maps, series, histograms): print the Dataset then. Integers (counts,
    integer sums and extrema) print whole with thousands separators, other
    numbers with 6 significant digits.

    Examples
    --------
    The median of 0, 1, ..., 1,499,999 is 749,999.5; the sketch's is within 1%
    (``quantile_error``):

    >>> import numpy as np
    >>> import xarray as xr
    >>> ds = xr.Dataset({"t2m": ("time", np.arange(1_500_000.0))})
    >>> result = stats(ds, stats=["count", "mean"], quantiles=[0.5], progress=False)
    >>> print(summary_table(result))
    variable      count    mean  quantile 0.5 (approx.)
    --------  ---------  ------  ----------------------
    t2m       1,500,000  750000                  756089
    """
    # Grouped results (``groupby=``) reduced to one value per group: a row per group too.
    groups = [str(d) for d in result.dims if d != "quantile"] if "groupby" in result.attrs else []
    if math.prod(result.sizes[d] for d in groups) > _MAX_TABLE_ROWS:
        return None
    rows: dict[tuple[Any, ...], dict[str, str]] = {}
    for var in result.data_vars.values():
        vgroups = [d for d in groups if d in var.dims]
        if set(map(str, var.dims)) - {*vgroups, "quantile"} or len(vgroups) != len(groups):
            return None  # a map, a series or a histogram
        ordered = var.transpose(*vgroups, *(["quantile"] if "quantile" in var.dims else []))
        for at in np.ndindex(*(result.sizes[d] for d in vgroups)):
            labels = tuple(_label(result[d].values[i]) for d, i in zip(vgroups, at, strict=True))
            name = var.attrs["variable"]
            row = rows.setdefault(
                (name, *labels), {"variable": name, **dict(zip(vgroups, labels, strict=True))}
            )
            values = ordered.values[at]
            if "quantile" not in var.dims:
                row[var.attrs["statistic"]] = _cell(values)
                continue
            approx = " (approx.)" if var.attrs.get("approximate") else ""
            for q, value in zip(var["quantile"].values, values, strict=True):
                row[f"quantile {q:g}{approx}"] = _cell(value)
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    return text_table([{c: row.get(c, "-") for c in columns} for row in rows.values()])


#: Groups beyond which a grouped result is printed as its Dataset, not as a table.
_MAX_TABLE_ROWS = 1_000


def _label(value: Any) -> str:
    """A group's label as a table shows it (a day for a daily bin, not nanoseconds)."""
    if isinstance(value, np.datetime64):
        text = str(value)
        return text.split("T")[0] if text.endswith("T00:00:00.000000000") else text
    return str(value)


def _cell(value: Any) -> str:
    value = np.asarray(value)
    if value.dtype.kind in "iu":
        return f"{int(value):,}"
    return f"{float(value):.6g}"


def _compute(result: xr.Dataset, progress: bool, desc: str) -> xr.Dataset:
    total = sum(
        math.prod(len(c) for c in v.data.chunks)
        for v in result.data_vars.values()
        if isinstance(v.data, da.Array)
    )
    # The bar counts chunk tasks; each variable's statistics share theirs.
    chunk_tasks = sum(
        1
        for k in result.__dask_graph__()
        if isinstance(k, tuple) and str(k[0]).startswith("toolkit-stats-chunk-")
    )
    out = executor().compute(
        result, callbacks=progress_bar(progress, chunk_tasks or total, desc, "toolkit-stats-chunk")
    )
    assert isinstance(out, xr.Dataset)
    return out
