"""The command line's jobs as functions: ``toolkit.commands.copy`` is ``toolkit copy``.

Copy any dataset into a chunk-aligned Zarr store, inspect a store, and the
self-contained demo (the embedded default). Also importable as ``toolkit.jobs``
(the module's first name).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Hashable, Iterator, Mapping
from typing import Any, Literal, cast

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from dask.utils import format_bytes

from toolkit._render import text_table
from toolkit._util import need_netcdf_engine
from toolkit.dashboard import register_dashboard
from toolkit.errors import MissingExtraError, PlanError
from toolkit.io.groups import open_existing
from toolkit.io.stores import StoreLike, display_store, resolve_store, source_objects
from toolkit.io.throttle import Throttle
from toolkit.io.wrappers import wrap_store
from toolkit.read import DEFAULT_READ_TASK_BYTES, aligned_chunks, open_zarr
from toolkit.rechunk import rechunk
from toolkit.upstream import sync
from toolkit.write.checks import CF_ENCODING_KEYS
from toolkit.write.execute import execute, write_resumable
from toolkit.write.layout import choose_layout
from toolkit.write.plan import DEFAULT_MAX_TASK_BYTES, WriteMode, plan_write
from toolkit.write.report import WriteReport

__all__ = ["copy", "demo", "demo_dataset", "inspect", "parse_size"]


def parse_size(text: str) -> int:
    """Parse ``"200MB"``, ``"1.5GiB"``, ``"4096"`` into bytes."""
    units = {
        "": 1,
        "b": 1,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
    }
    t = text.strip().lower().replace(" ", "")
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num) :]
    if not num or unit not in units:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 200MB or 1.5GiB")
    return int(float(num) * units[unit])


def _is_zarr(path: str) -> bool:
    if "://" in path:
        return path.rstrip("/").endswith(".zarr")
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f)) for f in ("zarr.json", ".zgroup", ".zarray")
    )


def copy(
    src: str,
    dst: StoreLike,
    *,
    chunks: Mapping[Hashable, int] | None = None,
    shards: Mapping[Hashable, int] | None = None,
    zarr_format: int = 3,
    mode: WriteMode = "w-",
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES,
    progress: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    throttle: Throttle | Literal[False] | None = None,
    resume: bool = True,
    source_storage_options: Mapping[str, Any] | None = None,
) -> WriteReport:
    """Rewrite any dataset xarray can open into a chunk-aligned Zarr store.

    The source is opened lazily with dask chunks that are whole multiples of the
    *target's* write units, so every task reads its part of the source once and
    writes whole units, with no rechunking in between. When the target's units
    cut across a Zarr source's chunks, the copy is a :func:`toolkit.rechunk`
    (with ``max_mem`` twice ``max_task_bytes``), which reads every source chunk
    once.

    Parameters
    ----------
    src : str
        A Zarr store or a file xarray opens (netCDF through h5netcdf, ...).
    dst : str, os.PathLike or zarr Store
        The target.
    chunks, shards : mapping of dim to int, optional
        Target chunk and shard lengths per dimension. Dimensions not given keep
        the source's chunking, or zarr's default guess.
    zarr_format : {2, 3}
        Target format (shards need 3).
    mode : {"w-", "w"}
        Refuse (default) or replace an existing target.
    max_task_bytes : int
        Memory target per task.
    progress : bool
        Show progress.
    storage_options : dict, optional
        fsspec options for a URL target.
    throttle : Throttle, False or None
        Request budget for the target (``None``: the URL's defaults).
    resume : bool
        Keep a log of landed write tasks in the target while writing; when the
        same copy (same source, layout and target) was interrupted, write only
        what it had not finished (see :func:`toolkit.ingest`).
    source_storage_options : dict, optional
        fsspec options for a URL source (a Zarr store, or a file read through
        fsspec).
    """
    chunks = dict(chunks or {})
    shards = dict(shards or {})
    if src.rstrip("/") == str(dst).rstrip("/"):
        raise PlanError("copy source and target are the same; choose another target")
    src_opts = dict(source_storage_options or {})
    if "://" not in src and not os.path.exists(src):
        raise FileNotFoundError(f"no source at {src}")
    try:
        lazy = _open_source(src, src_opts)
    except (FileNotFoundError, MissingExtraError):
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        # A truncated or foreign file: say which, before anything is written.
        raise PlanError(f"cannot read the copy source {src}: {type(e).__name__}: {e}") from e
    unknown = (set(chunks) | set(shards)) - set(lazy.dims)
    if unknown:
        raise PlanError(
            f"--chunks/--shards name dimensions {sorted(map(str, unknown))} that {src} does "
            f"not have (it has {list(lazy.dims)})"
        )
    if _is_zarr(src) and _cuts_across(lazy, chunks, shards):
        if src_opts and src_opts != dict(storage_options or {}):
            raise PlanError(
                "a copy that rechunks reads its source with the target's storage_options; "
                "give both stores the same options, or rechunk with toolkit.rechunk"
            )
        # Target units that cut across the source's chunks: a planned rechunk reads
        # every source chunk once (a task's block decoded and encoded: twice its bytes).
        done = rechunk(
            src,
            dst,
            chunks,
            shards=shards or None,
            max_mem=2 * max_task_bytes,
            zarr_format=zarr_format,
            mode=mode,
            storage_options=storage_options,
            throttle=throttle,
            progress=progress,
        )
        return done.stages[-1]
    # The source's CF encoding (units, packing, fill values) is kept; its codecs and
    # layout are not (they may not exist in the target's Zarr format).
    lazy = lazy.copy(deep=False)
    for var in lazy.variables.values():
        var.encoding = {k: v for k, v in var.encoding.items() if k in CF_ENCODING_KEYS}
    encoding: dict[Hashable, dict[str, Any]] = {}
    chunked = {}
    for name, var in lazy.variables.items():
        if name in lazy.indexes or var.ndim == 0:
            continue
        c, s = choose_layout(var, chunks, shards)
        encoding[name] = {"chunks": c, **({"shards": s} if s else {})}
        unit = s or c
        read = aligned_chunks(
            var.shape, unit, var.dtype.itemsize, min(max_task_bytes // 2, DEFAULT_READ_TASK_BYTES)
        )
        chunked[name] = var.chunk(dict(zip(var.dims, read, strict=True)))
        chunked[name].encoding = {**var.encoding, **encoding[name]}
    ds = lazy.assign({str(k): v for k, v in chunked.items() if k in lazy.data_vars})
    ds = ds.assign_coords({str(k): v for k, v in chunked.items() if k in lazy.coords})
    write_id = source = None
    if resume:
        # The identity leaves the source's contents out: a changed source is the same
        # write, refused by name (its first run kept the listing), not a stranger's.
        write_id = tokenize(src, encoding, zarr_format, max_task_bytes)[:16]
        source = source_objects([src], src_opts)
    return write_resumable(
        ds,
        dst,
        progress=progress,
        write_id=write_id,
        mode=mode,
        encoding=None,  # in each variable's own
        zarr_format=zarr_format,  # 2 or 3, checked by the plan
        max_task_bytes=max_task_bytes,
        storage_options=storage_options,
        throttle=throttle,
        source=source,
    )


def _open_source(src: str, opts: Mapping[str, Any]) -> xr.Dataset:
    """The copy's source, lazily: a Zarr store through toolkit's stores, a file through xarray."""
    remote = "://" in src and not src.startswith("file://")
    if _is_zarr(src):
        store = resolve_store(src, storage_options=opts if remote else None)
        store = store if store.read_only else store.with_read_only(True)  # a source is read
        return xr.open_dataset(cast(Any, store), engine="zarr", chunks=None, cache=False)
    need_netcdf_engine(src)
    if remote:
        import fsspec

        # fsspec's options: toolkit's own ``client`` key means nothing to it.
        fsopts = {k: v for k, v in opts.items() if k != "client"}
        return xr.open_dataset(fsspec.open(src, "rb", **fsopts).open(), chunks=None, cache=False)
    return xr.open_dataset(src, chunks=None, cache=False)


def _cuts_across(
    ds: xr.Dataset, chunks: Mapping[Hashable, int], shards: Mapping[Hashable, int]
) -> bool:
    """Whether some variable's target units differ from its source chunks along a dim."""
    for name, var in ds.variables.items():
        if name in ds.indexes or var.ndim == 0:
            continue
        c, s = choose_layout(var, chunks, shards)
        preferred = var.encoding.get("preferred_chunks") or {}
        source = tuple(preferred.get(d, n) for d, n in zip(var.dims, var.shape, strict=True))
        if tuple(s or c) != source:
            return True
    return False


def inspect(
    store: StoreLike,
    *,
    group: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Describe a Zarr store: variables, shapes, chunk/shard layout and sizes.

    Returns
    -------
    str
        An aligned text table; the CLI prints it.
    """
    base = resolve_store(store, storage_options=storage_options)
    if not base.read_only:  # inspecting never writes
        base = base.with_read_only(True)
    # Through the URL's retries: a client's failure arrives as toolkit's error.
    url = store if isinstance(store, str) else None
    zstore = wrap_store(base, Throttle.for_url(url) if url else None)
    existing = open_existing(zstore, group)
    if existing is None and group and open_existing(zstore, None) is not None:
        import zarr

        root = zarr.open_group(zstore, mode="r")
        there = sorted(name for name, _ in root.groups())
        raise FileNotFoundError(
            f"{display_store(zstore)} has no group {group!r}"
            + (f" (its groups: {', '.join(there)})" if there else " (it has no groups)")
        )
    if existing is None:
        raise FileNotFoundError(f"no Zarr group at {display_store(zstore)}")
    rows = []
    total_raw = total_stored = 0
    prefix = (group or "").strip("/")
    for name in sorted(existing.arrays):
        arr = existing.arrays[name]
        raw = math.prod(arr.shape) * arr.dtype.itemsize if hasattr(arr.dtype, "itemsize") else 0
        path = f"{prefix}/{name}" if prefix else name
        stored = sync(zstore.getsize_prefix(path))
        total_raw += raw
        total_stored += stored
        codecs = [type(c).__name__.removesuffix("Codec") for c in arr.compressors]
        rows.append(
            {
                "variable": name,
                "dims": ",".join(existing.dims[name]),
                "shape": "×".join(map(str, arr.shape)),
                "dtype": str(arr.dtype),
                "chunks": "×".join(map(str, arr.chunks)),
                "shards": "×".join(map(str, arr.shards)) if arr.shards else "-",
                "compressors": ",".join(codecs) or "-",
                "size": format_bytes(raw),
                "stored": format_bytes(stored),
            }
        )
    head = (
        f"{display_store(zstore)}  zarr_format={existing.zarr_format}  "
        f"{len(rows)} arrays, {format_bytes(total_raw)} ({format_bytes(total_stored)} stored)"
    )
    return head + "\n" + text_table(rows)


def demo_dataset(nbytes: int = 200 * 10**6, *, seed: int = 0) -> xr.Dataset:
    """A realistic lazy sample dataset of about ``nbytes``.

    Three float32 variables over time × lat × lon on a 1° grid (hourly steps), with
    NaN over a synthetic land mask, generated by dask in chunks of 10 steps that
    deliberately straddle the 24-step Zarr chunks :func:`demo` writes. Values are
    deterministic for a given ``seed``.
    """
    lat = np.linspace(-89.5, 89.5, 180, dtype="f4")
    lon = np.linspace(0.5, 359.5, 360, dtype="f4")
    per_step = 3 * lat.size * lon.size * 4
    nt = max(24, int(nbytes // per_step))
    time_ = pd.date_range("2020-01-01", periods=nt, freq="h")
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    land = (np.sin(3 * lo) * np.cos(2 * la) + 0.3 * np.cos(5 * lo + la)) > 0.45
    chunks = (10, 90, 120)
    rng = da.random.default_rng(seed)
    hours = da.arange(nt, chunks=chunks[0], dtype="f4")[:, None, None]
    base = (288 - 30 * np.sin(la) ** 2).astype("f4")
    diurnal = 4 * da.sin(2 * np.pi * hours / 24 + lo.astype("f4"))
    t2m = base + diurnal + rng.standard_normal((nt, 180, 360), chunks=chunks, dtype="f4")
    precip = da.maximum(rng.gamma(0.4, 2.0, (nt, 180, 360), chunks=chunks), 0).astype("f4")
    wind = (
        da.hypot(
            *(rng.standard_normal((nt, 180, 360), chunks=chunks, dtype="f4") for _ in range(2))
        )
        * 5
    )
    mask = da.from_array(land, chunks=chunks[1:])

    def masked(x: da.Array) -> da.Array:
        out: da.Array = da.where(mask[None], np.float32(np.nan), x).astype("f4")
        return out

    dims = ("time", "lat", "lon")
    return xr.Dataset(
        {
            "t2m": (dims, masked(t2m), {"units": "K", "long_name": "2 m air temperature"}),
            "precip": (dims, masked(precip), {"units": "mm h-1", "long_name": "precipitation"}),
            "wind_speed": (dims, masked(wind), {"units": "m s-1", "long_name": "10 m wind"}),
        },
        coords={
            "time": time_,
            "lat": ("lat", lat, {"units": "degrees_north"}),
            "lon": ("lon", lon, {"units": "degrees_east"}),
        },
        attrs={
            "title": "toolkit demo dataset",
            "source": "synthetic, toolkit.commands.demo_dataset",
        },
    )


@contextlib.contextmanager
def local_cluster(workers: int, threads: int, echo: Any = None) -> Iterator[Any]:
    """A LocalCluster and its client (None for ``workers=0``); ``echo`` gets the dashboard links."""
    from distributed import Client, LocalCluster

    if workers <= 0:
        yield None
        return
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        if echo is not None:
            echo(f"dashboard: {client.dashboard_link}")
            page = register_dashboard(client)
            if page:
                echo(f"toolkit I/O: {page}")
        yield client


def demo(
    *,
    size: str | int = "200MB",
    out: str | None = None,
    workers: int = 2,
    threads_per_worker: int = 1,
    zarr_format: int = 3,
    progress: bool = True,
    echo: Any = print,
) -> bool:
    """The embedded default: generate, write with a LocalCluster, read back, verify.

    Parameters
    ----------
    size : str or int
        Approximate dataset size (``"200MB"``, ``"2GB"``, or bytes).
    out : str, optional
        Where to write; a temporary directory (removed afterwards) if not given.
    workers, threads_per_worker : int
        LocalCluster shape (``workers=0`` uses dask's local threads).
    zarr_format : {2, 3}
        Zarr format; with 3 the store is sharded.
    progress : bool
        Show progress bars.
    echo : callable
        Where lines of output go.

    Returns
    -------
    bool
        True when every value read back equals the generated data.
    """
    nbytes = parse_size(size) if isinstance(size, str) else int(size)
    tmp = None
    if out is None:
        tmp = tempfile.mkdtemp(prefix="toolkit-demo-")
        out = os.path.join(tmp, "demo.zarr")
        echo(f"writing to a temporary store, {out}, removed at the end (keep it: --out PATH)")
    try:
        ds = demo_dataset(nbytes)
        chunks = (24, 90, 180)
        enc: dict[Hashable, dict[str, Any]] = {
            v: {"chunks": chunks, **({"shards": (48, 180, 360)} if zarr_format == 3 else {})}
            for v in ds.data_vars
        }
        with local_cluster(workers, threads_per_worker, echo):
            plan = plan_write(ds, out, mode="w", encoding=enc, zarr_format=zarr_format)
            echo(repr(plan))
            report = execute(plan, progress=progress)
            echo(repr(report))
            t0 = time.perf_counter()
            back = open_zarr(out)
            same = [
                ((back[v] == ds[v]) | (back[v].isnull() & ds[v].isnull())).all()
                for v in ds.data_vars
            ]
            ok = bool(all(bool(x) for x in da.compute(*[s.data for s in same])))
            ok = ok and bool((back.time.values == ds.time.values).all())
            echo(
                f"read back and compared {len(same)} variables in "
                f"{time.perf_counter() - t0:.1f} s: " + ("all values equal" if ok else "MISMATCH")
            )
        return ok
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            echo(f"removed the temporary store {out} (keep the store: --out PATH)")
        else:
            echo(f"the store is at {out}: toolkit inspect {out}; toolkit verify {out}")
