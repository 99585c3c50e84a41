"""Rechunk a Zarr store with memory bounded by a number the user gives.

A rechunk is planned before anything runs (:func:`plan_rechunk`): per
variable, the blocks each task reads and writes (:func:`toolkit.grid.rechunk_blocks`),
whether an intermediate copy is needed and why, bytes, tasks and the projected
peak memory of a task. Then it runs as one or two ordinary toolkit writes
(:func:`toolkit.write.execute.execute`), so the request budget, retries,
metrics, write records and resumption apply as to any write:

1. the variables whose target units cut across their source chunks in a way
   no task can gather within ``max_mem`` are copied into an intermediate
   store, in chunks that divide both the first stage's blocks (whole source
   chunks) and the last stage's (whole target units);
2. every variable is written to the target, from the source or from the
   intermediate copy, each target unit whole by one task.

Every source chunk is read once per stage. Why not dask's rechunk: its
task-based algorithm holds pieces of many blocks at once (workers die on big
cubes), and its p2p shuffle needs a distributed cluster and spills to the
workers' local disks; the two-stage copy (rechunker's algorithm) bounds
memory by construction on any scheduler, at the price of writing and reading
the data once more when one stage cannot do it.

Values are copied raw (no CF decoding, attributes as stored), so packed
integers, fill values and time encodings come out as they went in, and a
task's memory is its block's, not a decoded copy's.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import xarray as xr
from dask.base import tokenize
from dask.utils import format_bytes, parse_bytes
from zarr.abc.store import Store
from zarr.buffer import default_buffer_prototype

from toolkit._render import html_table, text_table
from toolkit.coordination.records import ResumeLog
from toolkit.errors import ExistingStoreError, PlanError, RechunkError
from toolkit.grid import RechunkBlocks, rechunk_blocks
from toolkit.io.groups import open_existing
from toolkit.io.stores import (
    StoreLike,
    display_location,
    is_icechunk,
    resolve_store,
    source_objects,
    store_label,
)
from toolkit.io.throttle import Throttle, resolve_throttle
from toolkit.read import open_zarr
from toolkit.upstream import sync
from toolkit.write.execute import execute, plan_resumable
from toolkit.write.layout import choose_layout
from toolkit.write.report import WriteReport

__all__ = [
    "RechunkPlan",
    "RechunkReport",
    "RechunkVariable",
    "execute_rechunk",
    "plan_rechunk",
    "rechunk",
]

#: The intermediate store's own document, once the copy is whole: which rechunk it is for.
_MARK = "rechunk.json"


@dataclass(frozen=True)
class RechunkVariable:
    """One variable of a rechunk: its source and target layouts and its task blocks."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    chunks: tuple[int, ...]
    """The target's chunks."""
    shards: tuple[int, ...] | None
    """The target's shards (None: unsharded)."""
    blocks: RechunkBlocks

    @property
    def nbytes(self) -> int:
        """Bytes of the variable (decoded)."""
        return self.blocks.block_bytes(self.blocks.shape)

    @property
    def why(self) -> str:
        """Why the variable needs an intermediate copy, or how one stage does it."""
        b = self.blocks
        if b.intermediate is None:
            return "one stage: blocks aligned with both grids fit in max_mem"
        aligned = _aligned(b)
        return (
            f"two stages: a block aligned with both grids ({_dims(self.dims, aligned)}) holds "
            f"{format_bytes(b.block_bytes(aligned))} decoded: twice that is over max_mem, or "
            f"too few blocks ({b.tasks(aligned)}) to keep every worker busy"
        )


def _aligned(b: RechunkBlocks) -> tuple[int, ...]:
    """Per axis, the least common multiple of the two grids' lengths (at most the axis)."""
    grids = zip(b.source, b.target, b.shape, strict=True)
    return tuple(min(math.lcm(s, t), n) for s, t, n in grids)


def _dims(dims: Sequence[str], sizes: Sequence[int]) -> str:
    return ", ".join(f"{d}={n}" for d, n in zip(dims, sizes, strict=True))


@dataclass(frozen=True, repr=False)
class RechunkPlan:
    """A rechunk, planned and validated before anything is written (:func:`plan_rechunk`).

    Attributes
    ----------
    source, target, temp : str
        Secret-free descriptions of the stores (``temp`` is None when no
        variable needs an intermediate copy).
    variables : tuple of RechunkVariable
        Each rechunked variable with its blocks.
    max_mem : int
        The memory limit of one task, in bytes.
    """

    source: str
    target: str
    temp: str | None
    variables: tuple[RechunkVariable, ...]
    max_mem: int
    rechunk_id: str
    zarr_format: Literal[2, 3]
    mode: Literal["w-", "w"]
    dataset: xr.Dataset = field(repr=False, compare=False)
    target_store: Store = field(repr=False, compare=False)
    temp_store: Store | None = field(repr=False, compare=False)
    throttle: Throttle | None = field(repr=False, compare=False)
    source_objects: Mapping[str, str] | None = field(repr=False, compare=False)

    @property
    def stages(self) -> int:
        """2 when any variable goes through the intermediate copy, else 1."""
        return max((v.blocks.stages for v in self.variables), default=1)

    @property
    def nbytes(self) -> int:
        """Bytes of the rechunked variables (decoded)."""
        return sum(v.nbytes for v in self.variables)

    @property
    def bytes_read(self) -> int:
        """Decoded bytes read: every source chunk once, and the intermediate copy once."""
        return sum(v.nbytes * v.blocks.stages for v in self.variables)

    @property
    def bytes_written(self) -> int:
        """Decoded bytes written: the target, and the intermediate copy."""
        return self.bytes_read

    @property
    def tasks(self) -> int:
        """Tasks of every stage."""
        out = 0
        for v in self.variables:
            b = v.blocks
            out += b.tasks(b.write) + (b.tasks(b.read) if b.intermediate is not None else 0)
        return out

    @property
    def peak_task_bytes(self) -> int:
        """The projected memory of the largest task (decoded block plus its encoded copy)."""
        return max((v.blocks.peak_task_bytes for v in self.variables), default=0)

    def _rows(self) -> list[dict[str, str]]:
        rows = []
        for v in self.variables:
            b = v.blocks
            rows.append(
                {
                    "variable": v.name,
                    "shape": "x".join(map(str, b.shape)),
                    "source chunks": "x".join(map(str, b.source)),
                    "target units": "x".join(map(str, b.target)),
                    "stage 1 blocks": "x".join(map(str, b.read)),
                    "intermediate": "x".join(map(str, b.intermediate)) if b.intermediate else "-",
                    "last blocks": "x".join(map(str, b.write)),
                    "tasks": f"{b.tasks(b.write) + (b.tasks(b.read) if b.stages == 2 else 0):,}",
                    "task peak": format_bytes(b.peak_task_bytes),
                }
            )
        return rows

    def _head(self) -> str:
        via = f" via {display_location(self.temp)}" if self.temp else ""
        return (
            f"rechunk {display_location(self.source)} -> {display_location(self.target)}{via}: "
            f"{len(self.variables)} variables, "
            f"{self.stages} stage(s), {format_bytes(self.nbytes)} (read "
            f"{format_bytes(self.bytes_read)}, written {format_bytes(self.bytes_written)}), "
            f"{self.tasks:,} tasks, task peak {format_bytes(self.peak_task_bytes)} of max_mem "
            f"{format_bytes(self.max_mem)}"
        )

    def __str__(self) -> str:
        whys = [f"  {v.name}: {v.why}" for v in self.variables]
        return "\n".join([self._head(), text_table(self._rows()), *whys])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return f"<div><p>{html.escape(self._head())}</p>{html_table(self._rows())}</div>"


@dataclass(frozen=True)
class RechunkReport:
    """What a rechunk did: its plan, each stage's write report, and the wall time."""

    plan: RechunkPlan
    stages: tuple[WriteReport, ...]
    seconds: float
    skipped_first_stage: bool = False
    """Whether an earlier run's intermediate copy was complete and was used as it was."""

    def __str__(self) -> str:
        rate = self.plan.nbytes / self.seconds / 2**20 if self.seconds else 0.0
        return (
            f"rechunked {format_bytes(self.plan.nbytes)} into "
            f"{display_location(self.plan.target)} in {self.seconds:.1f} s ({rate:.0f} MiB/s), "
            f"{self.plan.stages} stage(s)"
        )


def _normalized(
    spec: Mapping[Hashable, int] | None, ds: xr.Dataset, what: str
) -> dict[Hashable, int]:
    out: dict[Hashable, int] = {}
    for dim, n in (spec or {}).items():
        if dim not in ds.dims:
            raise PlanError(
                f"{what} names dimension {dim!r}, which the source does not have (it has "
                f"{sorted(map(str, ds.dims))})"
            )
        if isinstance(n, bool) or not isinstance(n, int) or (n < 1 and n != -1):
            raise PlanError(f"{what}[{dim!r}] must be a positive int or -1 (whole), got {n!r}")
        out[dim] = int(ds.sizes[dim]) if n == -1 else n
    return out


def _default_temp(target: StoreLike) -> str | None:
    """``<target>.rechunk-tmp`` beside a target named by a path or URL (None for a store)."""
    if not isinstance(target, (str, os.PathLike)):
        return None
    return f"{os.fspath(target).rstrip('/')}.rechunk-tmp"


def plan_rechunk(
    source: StoreLike,
    target: StoreLike,
    chunks: Mapping[Hashable, int] | None = None,
    *,
    shards: Mapping[Hashable, int] | None = None,
    max_mem: int | str = "1GiB",
    temp_store: StoreLike | None = None,
    variables: Sequence[Hashable] | None = None,
    zarr_format: Literal[2, 3] = 3,
    mode: Literal["w-", "w"] = "w-",
    group: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    throttle: Throttle | Literal[False] | None = None,
    workers: int | None = None,
) -> RechunkPlan:
    """Plan a rechunk of ``source`` into ``target``: nothing is written.

    Parameters
    ----------
    source : str, os.PathLike or zarr Store
        A Zarr store (v2 or v3, sharded or not).
    target : str, os.PathLike or zarr Store
        Where the rechunked copy goes (an Icechunk session's store too).
    chunks : mapping of dim to int
        The target's chunk length per dimension (``-1``: the whole dimension).
        Dimensions not named keep the source's chunking.
    shards : mapping of dim to int, optional
        The target's shard length per dimension (Zarr v3; multiples of the chunks).
    max_mem : int or str
        The most memory one task may use ("1GiB", "256MiB" or bytes): its
        block decoded, and encoded. A cluster's peak is about this times the
        threads that run tasks at once.
    temp_store : str, os.PathLike or zarr Store, optional
        Where the intermediate copy goes when one is needed. By default
        ``<target>.rechunk-tmp`` beside a target given as a path or URL
        (required for a target given as a store object). It is removed when
        the rechunk ends.
    variables : sequence of str, optional
        The variables to copy (default: all; coordinates always).
    zarr_format : {2, 3}
        The target's format.
    mode : {"w-", "w"}
        Refuse (default) or replace an existing target. A target holding an
        interrupted run of this same rechunk is resumed either way.
    group : str, optional
        The source's group.
    storage_options : dict, optional
        fsspec options for the URLs (source, target and intermediate store).
    throttle : Throttle, False or None
        The request budget (``None``: each URL's defaults).
    workers : int, optional
        Threads that run tasks at once (default: the machine's cores); each
        stage is cut into at least as many tasks.

    Raises
    ------
    toolkit.errors.RechunkError
        ``max_mem`` below one source chunk or one target unit (named, with its
        size), or a temporary store holding something else.
    toolkit.errors.ExistingStoreError
        The target exists and ``mode`` is not ``"w"``.
    toolkit.errors.PlanError
        Chunks or shards naming dimensions the source lacks, or a bad value.
    """
    if mode not in ("w-", "w"):
        raise PlanError(f"mode must be 'w-' or 'w', got {mode!r}")
    try:
        limit = parse_bytes(max_mem) if isinstance(max_mem, str) else int(max_mem)
    except (ValueError, TypeError) as e:
        raise PlanError(f"max_mem={max_mem!r} is not a size (say '1GiB' or a number)") from e
    if limit <= 0:
        raise PlanError(f"max_mem must be positive, got {max_mem!r}")
    src_label = store_label(source)
    raw = open_zarr(
        source,
        group=group,
        chunks=None,
        storage_options=storage_options,
        throttle=throttle,
        decode_cf=False,
        cache=False,
    )
    if variables is not None:
        unknown = sorted(map(str, set(variables) - set(raw.data_vars)))
        if unknown:
            raise PlanError(f"variables {unknown} are not data variables of {src_label}")
        raw = raw[list(variables)]
    chunks_ = _normalized(chunks, raw, "chunks")
    shards_ = _normalized(shards, raw, "shards")
    if shards_ and zarr_format != 3:
        raise PlanError("shards need zarr_format=3")
    policy = resolve_throttle(throttle, store_label(target))
    tstore = resolve_store(target, storage_options=storage_options, throttle=policy)
    # The target is left out: its resume log lives in it (a store object and its path
    # are the same target).
    rechunk_id = (
        "rechunk-"
        + tokenize(
            src_label, sorted(map(str, raw.variables)), chunks_, shards_, limit, zarr_format
        )[:16]
    )
    # An Icechunk session keeps no log (nothing is visible before its commit): a rerun
    # writes the target again, from the intermediate copy if that was whole.
    transactional = is_icechunk(tstore)
    resuming = not transactional and ResumeLog(tstore, None, rechunk_id, policy).started()
    if mode == "w-" and not resuming and open_existing(tstore, None) is not None:
        raise ExistingStoreError(
            f"{store_label(target)} holds a dataset; rechunk refuses to replace it unless "
            "mode='w' (CLI: --overwrite)"
        )
    threads = workers or os.cpu_count() or 1
    planned = []
    for name, var in raw.variables.items():
        if name in raw.indexes or var.ndim == 0 or var.dtype.kind == "O":
            continue  # written whole by xarray with the metadata
        c, s = choose_layout(var, chunks_, shards_)
        src = tuple(
            var.encoding.get("preferred_chunks", {}).get(d, n)
            for d, n in zip(var.dims, var.shape, strict=True)
        )
        try:
            blocks = rechunk_blocks(
                var.shape, src, s or c, max(var.dtype.itemsize, 1), limit, min_tasks=threads
            )
        except ValueError as e:
            raise RechunkError(
                f"{name!r} ({_dims(tuple(map(str, var.dims)), var.shape)}, {var.dtype}): {e}; "
                "raise max_mem, or choose smaller chunks"
            ) from e
        planned.append(
            RechunkVariable(str(name), tuple(map(str, var.dims)), str(var.dtype), c, s, blocks)
        )
    temp: Store | None = None
    if any(v.blocks.stages == 2 for v in planned):
        where = temp_store if temp_store is not None else _default_temp(target)
        if where is None:
            raise RechunkError(
                "this rechunk needs an intermediate copy (see the plan) and the target is a "
                "store object: give temp_store= (a path, URL or store to write it to)"
            )
        temp = resolve_store(
            where,
            storage_options=storage_options,
            throttle=resolve_throttle(throttle, store_label(where)),
        )
        _check_temp(temp, rechunk_id)
    objects = None
    if isinstance(source, (str, os.PathLike)):  # what a resumed run compares its source with
        objects = source_objects([os.fspath(source)], storage_options)
    return RechunkPlan(
        source=src_label,
        target=store_label(target),
        temp=store_label(temp) if temp is not None else None,
        variables=tuple(planned),
        max_mem=limit,
        rechunk_id=rechunk_id,
        zarr_format=zarr_format,
        mode=mode,
        dataset=raw,
        target_store=tstore,
        temp_store=temp,
        throttle=policy,
        source_objects=objects,
    )


def _mark(store: Store) -> dict[str, Any]:
    buf = sync(store.get(_MARK, default_buffer_prototype()))
    if buf is None:
        return {}
    try:
        doc = json.loads(buf.to_bytes())
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _check_temp(temp: Store, rechunk_id: str) -> None:
    """The intermediate store is empty, or this rechunk's own (an interrupted run's)."""
    if _mark(temp).get("id") == rechunk_id or ResumeLog(temp, None, f"{rechunk_id}-1").started():
        return

    async def first() -> str | None:
        async for key in temp.list():
            return key
        return None

    found = sync(first())
    if found is not None:
        raise RechunkError(
            f"the intermediate store {store_label(temp)} holds {found!r}, not this rechunk's "
            "copy; give another temp_store= or empty it"
        )


def _write(
    ds: xr.Dataset,
    store: Store,
    write_id: str,
    plan: RechunkPlan,
    *,
    mode: Literal["w-", "w"],
    max_task_bytes: int,
    zarr_format: Literal[2, 3],
    source: Mapping[str, str] | None,
    progress: bool,
) -> WriteReport:
    # An Icechunk session shows nothing before its commit: no resume log in it.
    wid = None if is_icechunk(store) else write_id
    wplan, log = plan_resumable(
        ds,
        store,
        write_id=wid,
        mode=mode,
        encoding=None,
        zarr_format=zarr_format,
        max_task_bytes=max_task_bytes,
        throttle=plan.throttle,
        source=source,
    )
    report = execute(wplan, progress=progress, resume=log)
    assert isinstance(report, WriteReport)
    return report


def _chunked(var: xr.Variable, block: Sequence[int], encoding: Mapping[str, Any]) -> xr.Variable:
    out = var.chunk(dict(zip(var.dims, block, strict=True)))
    out.encoding = dict(encoding)
    return out


def execute_rechunk(plan: RechunkPlan, *, progress: bool = True) -> RechunkReport:
    """Run a :class:`RechunkPlan`: the intermediate copy if one is needed, then the target.

    A run that was interrupted is resumed by running the same plan again: a
    complete intermediate copy is used as it is, a partial one (or target) is
    finished where it stopped, and the intermediate copy is removed at the end.
    """
    t0 = time.perf_counter()
    src = plan.dataset
    two = [v for v in plan.variables if v.blocks.stages == 2]
    reports: list[WriteReport] = []
    skipped = False
    inter: xr.Dataset | None = None
    if two:
        temp = plan.temp_store
        assert temp is not None
        # Written when the copy was whole (its resume log is its own first object).
        skipped = _mark(temp).get("id") == plan.rechunk_id
        if not skipped:
            # Uncompressed: the copy is read once, soon, and compressing it costs
            # more CPU than the bytes it saves on a local disk.
            stage = xr.Dataset(
                {
                    v.name: xr.Variable(
                        src.variables[v.name].dims,
                        src.variables[v.name]
                        .chunk(dict(zip(src.variables[v.name].dims, v.blocks.read, strict=True)))
                        .data,
                        encoding={"chunks": v.blocks.intermediate, "compressors": None},
                    )
                    for v in two
                }
            )
            first = f"{plan.rechunk_id}-1"
            started = ResumeLog(temp, None, first, plan.throttle).started()
            reports.append(
                _write(
                    stage,
                    temp,
                    first,
                    plan,
                    mode="w-" if started else "w",
                    max_task_bytes=max(v.blocks.block_bytes(v.blocks.read) for v in two),
                    zarr_format=3,
                    source=plan.source_objects,
                    progress=progress,
                )
            )
            sync(temp.set(_MARK, _json({"id": plan.rechunk_id})))
        inter = open_zarr(temp, chunks=None, decode_cf=False, cache=False)
    # The target is written from decoded values (CF decoding is lazy, block by block),
    # so that its metadata round, and a resumed run's plan, encode them as xarray
    # does; the intermediate copy holds the raw values, without attributes.
    raw = xr.Dataset(attrs=src.attrs)
    for name, var in src.variables.items():
        plain = var.copy(deep=False)
        plain.encoding = {}
        raw[name] = plain
    for v in plan.variables:
        origin = inter if inter is not None and v.blocks.stages == 2 else src
        var = _chunked(origin.variables[v.name], v.blocks.write, {})
        var.attrs = dict(src.variables[v.name].attrs)
        raw[v.name] = var
    raw = raw.set_coords([k for k in src.coords if k in raw.variables])
    out = xr.decode_cf(raw)
    for v in plan.variables:
        out[v.name].encoding.update(
            {"chunks": v.chunks, **({"shards": v.shards} if v.shards else {})}
        )
    # A task's block, and never less than one whole unit (a shard may reach past the end).
    last_bytes = max(
        (
            max(v.blocks.block_bytes(v.blocks.write), v.blocks.itemsize * math.prod(v.shards or ()))
            for v in plan.variables
        ),
        default=1,
    )
    reports.append(
        _write(
            out,
            plan.target_store,
            plan.rechunk_id,
            plan,
            mode=plan.mode,
            max_task_bytes=last_bytes,
            zarr_format=plan.zarr_format,
            # With an intermediate copy, the first stage checked the source.
            source=plan.source_objects if not two else None,
            progress=progress,
        )
    )
    if plan.temp_store is not None:
        sync(plan.temp_store.delete_dir(""))
    return RechunkReport(plan, tuple(reports), time.perf_counter() - t0, skipped)


def _json(doc: Mapping[str, Any]) -> Any:
    return default_buffer_prototype().buffer.from_bytes(json.dumps(doc).encode())


def rechunk(
    source: StoreLike,
    target: StoreLike,
    chunks: Mapping[Hashable, int] | None = None,
    *,
    progress: bool = True,
    **kwargs: Any,
) -> RechunkReport:
    """Rechunk ``source`` into ``target`` with bounded memory (plan, then run).

    Takes :func:`plan_rechunk`'s arguments; see there, and
    :func:`execute_rechunk` for how an interrupted run resumes.

    Examples
    --------
    >>> import numpy as np
    >>> import xarray as xr
    >>> import toolkit
    >>> maps = xr.Dataset({"t2m": (("time", "y", "x"), np.random.rand(48, 20, 20))})
    >>> _ = toolkit.to_zarr(maps, "maps.zarr", encoding={"t2m": {"chunks": (1, 20, 20)}})
    >>> plan = toolkit.plan_rechunk("maps.zarr", "series.zarr", {"time": 48, "y": 5, "x": 5},
    ...                             max_mem="200KiB")
    >>> plan.stages
    2
    >>> report = toolkit.rechunk("maps.zarr", "series.zarr", {"time": 48, "y": 5, "x": 5},
    ...                          max_mem="200KiB", progress=False)
    >>> toolkit.open_zarr("series.zarr").t2m.encoding["chunks"]
    (48, 5, 5)
    """
    plan = plan_rechunk(source, target, chunks, **kwargs)
    return execute_rechunk(plan, progress=progress)
