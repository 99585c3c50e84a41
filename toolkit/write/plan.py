"""Write plans: a frozen, inspectable description of a write.

A plan is made before any byte is written.

:func:`plan_write` reads only metadata (and index coordinates for
``region="auto"``), checks every input against the store, and returns a
:class:`WritePlan`. Every error it raises leaves the store byte-identical.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

import numpy as np
import xarray as xr
import zarr
from dask.utils import format_bytes
from zarr.abc.store import Store

from toolkit import grid
from toolkit.coordination.claim import group_contents, listing_is_free, refuse_foreign
from toolkit.coordination.commitlog import log_head_key
from toolkit.coordination.records import read_records
from toolkit.errors import (
    AppendError,
    EncodingError,
    ExistingStoreError,
    PlanError,
    RegionError,
    UnsafePlanError,
)
from toolkit.io.extent import open_settled
from toolkit.io.groups import ExistingGroup, open_existing
from toolkit.io.metrics import IOMetrics, live_metrics
from toolkit.io.snapshot import SnapshotStore
from toolkit.io.stores import (
    StoreLike,
    describe_store,
    display_store,
    resolve_store,
    store_label,
)
from toolkit.io.throttle import Throttle, resolve_throttle
from toolkit.io.wrappers import wrap_store
from toolkit.upstream import (
    sync,
)
from toolkit.write.checks import (
    LAYOUT_KEYS,
    check_dtype,
    check_encoding,
    check_name,
    check_store_reachable,
    check_variables,
    check_with_xarray,
    encoded_from_values,
    own_layout,
    resolve_region,
)
from toolkit.write.render import plan_html, plan_text

__all__ = [
    "DEFAULT_MAX_TASK_BYTES",
    "VariablePlan",
    "WritePlan",
    "WriteTask",
    "plan_write",
    "resolve_mode",
]

DEFAULT_MAX_TASK_BYTES = 256 * 2**20
"""Default memory target for the data one write task holds (256 MiB)."""

WriteMode = Literal["w", "w-", "a", "a-", "r+"]
_MODES = ("w", "w-", "a", "a-", "r+")
# zarr's default async concurrency: how many units one task encodes at once.
_ZARR_CONCURRENCY = 10


@dataclass(frozen=True)
class WriteTask:
    """One write task: the block of data it writes and the units it owns.

    Attributes
    ----------
    variable : str
        Variable name.
    index : tuple of int
        Block index in the task grid.
    region : tuple of slice
        Absolute slices in the stored array.
    units : tuple of range
        Per axis, the write-unit indices this task owns.
    nunits, npartial : int
        Units owned, and how many of them need a read-modify-write.
    nbytes : int
        Bytes of the block (uncompressed).
    requests : int
        Expected store requests (one PUT per unit, one GET per partial unit).
    """

    variable: str
    index: tuple[int, ...]
    region: tuple[slice, ...]
    units: tuple[range, ...]
    nunits: int
    npartial: int
    nbytes: int
    requests: int


@dataclass(frozen=True)
class VariablePlan:
    """The plan for one variable: layout, source chunks and task grid.

    Attributes
    ----------
    name : str
        Variable name.
    dims : tuple of str
        Dimension names, in stored order.
    dtype : numpy.dtype
        Stored dtype (after CF encoding).
    shape : tuple of int
        Shape of the data written.
    array_shape : tuple of int
        Shape of the stored array once the write is done.
    offset : tuple of int
        Absolute position of the data's first element in the stored array.
    chunks, shards : tuple of int
        Zarr chunk shape, and shard shape (None when not sharded).
    source_chunks : tuple of tuple of int
        The dask chunks of the input.
    task_chunks : tuple of tuple of int
        The regrouped chunks: one block per write task.
    new : bool
        Whether the write creates this array.
    """

    name: str
    dims: tuple[str, ...]
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    array_shape: tuple[int, ...]
    offset: tuple[int, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    source_chunks: tuple[tuple[int, ...], ...]
    task_chunks: tuple[tuple[int, ...], ...]
    new: bool

    @property
    def write_unit(self) -> tuple[int, ...]:
        """The stored object a task replaces whole: the shard, else the chunk."""
        return self.shards or self.chunks

    @cached_property
    def _ownership(self) -> tuple[grid.AxisOwnership, ...]:
        return tuple(
            grid.axis_ownership(c, u, o, n)
            for c, u, o, n in zip(
                self.task_chunks, self.write_unit, self.offset, self.array_shape, strict=True
            )
        )

    @property
    def unit_spans(self) -> tuple[tuple[int, int], ...]:
        """The ``[first, stop)`` range of write units this variable's tasks cover, per axis."""
        return tuple((int(a.first[0]), int(a.stop[-1])) for a in self._ownership)

    @property
    def ntasks(self) -> int:
        """Number of write tasks."""
        return math.prod(len(c) for c in self.task_chunks)

    @property
    def nunits(self) -> int:
        """Write units touched (each by exactly one task)."""
        # Sum over the Cartesian task grid of a product = product of per-axis sums.
        return math.prod(int(o.count.sum()) for o in self._ownership)

    @property
    def npartial(self) -> int:
        """Units that need a read-modify-write (partly covered by the data)."""
        return self.nunits - math.prod(int(o.full.sum()) for o in self._ownership)

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes written."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def requests(self) -> int:
        """Expected data requests: a PUT per unit, a GET per partial unit."""
        return self.nunits + self.npartial

    @property
    def unit_nbytes(self) -> int:
        """Uncompressed bytes of one whole write unit."""
        return math.prod(self.write_unit) * self.dtype.itemsize

    @property
    def max_task_nbytes(self) -> int:
        """Bytes of the largest task block."""
        return math.prod(max(c) for c in self.task_chunks) * self.dtype.itemsize

    @property
    def peak_memory(self) -> int:
        """Projected peak memory of the largest task.

        Its block, the encoded units in flight, and the existing units it reads
        to merge into.
        """
        most = math.prod(int(o.count.max()) for o in self._ownership)
        # A task merges count - full units; over the Cartesian task grid this is at
        # most (largest counts) - (smallest fulls), a cheap and safe upper bound.
        merges = most - math.prod(int(o.full.min()) for o in self._ownership)
        in_flight = min(most, _ZARR_CONCURRENCY)
        return self.max_task_nbytes + (in_flight + merges) * self.unit_nbytes

    def tasks(self) -> Iterator[WriteTask]:
        """Every write task, in C order of the task grid (lazily)."""
        own = self._ownership
        axes_edges = [grid.edges(c) for c in self.task_chunks]
        ranges = [range(len(c)) for c in self.task_chunks]
        for index in np.ndindex(*[len(r) for r in ranges]):
            region = tuple(
                slice(int(e[i]) + o, int(e[i + 1]) + o)
                for e, i, o in zip(axes_edges, index, self.offset, strict=True)
            )
            units = tuple(
                range(int(a.first[i]), int(a.stop[i])) for a, i in zip(own, index, strict=True)
            )
            nunits = math.prod(len(u) for u in units)
            full = math.prod(int(a.full[i]) for a, i in zip(own, index, strict=True))
            nbytes = math.prod(s.stop - s.start for s in region) * self.dtype.itemsize
            yield WriteTask(
                self.name,
                index,
                region,
                units,
                nunits,
                nunits - full,
                nbytes,
                2 * nunits - full,
            )

    def validate(self, max_task_bytes: int) -> None:
        """Prove that no write unit belongs to two tasks and that tasks fit.

        The task grid is a Cartesian product, so unit ownership is disjoint for
        the whole array if and only if it is disjoint along every axis.

        Raises
        ------
        UnsafePlanError
            If a unit is shared, the blocks do not cover the data, or one write
            unit alone exceeds ``max_task_bytes``.
        """
        for axis, (c, n) in enumerate(zip(self.task_chunks, self.shape, strict=True)):
            if sum(c) != n:
                raise UnsafePlanError(
                    f"{self.name!r}: task chunks along {self.dims[axis]!r} sum to {sum(c)}, "
                    f"not the data length {n}"
                )
            bad = grid.misaligned_edges(c, self.write_unit[axis], self.offset[axis])
            if bad.size or not self._ownership[axis].disjoint():
                raise UnsafePlanError(
                    f"{self.name!r}: task edges {bad.tolist()} along {self.dims[axis]!r} "
                    f"split write units of {self.write_unit[axis]}: two tasks would "
                    "write the same stored object"
                )
        if self.unit_nbytes > max_task_bytes:
            kind = "shard" if self.shards else "chunk"
            raise UnsafePlanError(
                f"{self.name!r}: one {kind} of shape {self.write_unit} is "
                f"{format_bytes(self.unit_nbytes)}, "
                f"over max_task_bytes={format_bytes(max_task_bytes)}, "
                f"and a {kind} is the smallest unit one task can write. Use smaller "
                f"{kind}s in `encoding`, or pass max_task_bytes={self.unit_nbytes} or more."
            )


@dataclass(frozen=True)
class WritePlan:
    """A validated-before-writing description of one write.

    Build it with :func:`plan_write`; run it with :func:`toolkit.execute` (or
    call :func:`toolkit.to_zarr`, which does both).

    Attributes
    ----------
    target : str
        A secret-free description of the store (:func:`~toolkit.io.stores.describe_store`:
        ``file://<path>`` for a local one; reprs print the path alone).
    mode : str
        Resolved write mode.
    zarr_format : int
        2 or 3.
    append_dim : str or None
        The dimension appended to.
    region : dict of str to slice, or None
        The resolved (explicit) region.
    variables : tuple of VariablePlan
        The variables written by parallel tasks.
    eager : tuple of str
        Small in-memory variables (coordinates) written with the metadata.
    max_task_bytes : int
        The memory target per task.
    metadata_requests : int
        Expected metadata requests (arrays and group written before the data).
    throttle : Throttle or None
        The request budget in force (``None``: unthrottled, e.g. local paths).
    io : IOMetrics
        The requests planning made (metadata reads); the report adds them in.
    """

    target: str
    mode: str
    zarr_format: int
    append_dim: str | None
    region: Mapping[str, slice] | None
    variables: tuple[VariablePlan, ...]
    eager: tuple[str, ...]
    max_task_bytes: int
    metadata_requests: int
    group: str | None = None
    consolidated: bool | None = None
    write_empty_chunks: bool | None = None
    throttle: Throttle | None = None
    io: IOMetrics = field(repr=False, compare=False, default_factory=IOMetrics)
    dataset: xr.Dataset = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    store: Store = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    encoding: Mapping[Hashable, Mapping[str, Any]] = field(
        repr=False,
        compare=False,
        default=None,  # type: ignore[arg-type]
    )
    #: The metadata documents the plan was made from (a snapshot over ``store``), which
    #: the write's metadata round reads instead of asking the store again; None: none.
    reads: Store | None = field(repr=False, compare=False, default=None)

    def record_summary(self) -> dict[str, Any]:
        """What the write's record in the store says of it (JSON)."""
        return {
            "target": self.target,
            "mode": self.mode,
            "append_dim": self.append_dim,
            "region": {k: [s.start, s.stop] for k, s in (self.region or {}).items()},
            "variables": {v.name: {"units": v.nunits, "tasks": v.ntasks} for v in self.variables},
        }

    def unit_spans(self) -> dict[str, tuple[tuple[int, int], ...]]:
        """Per variable, the range of write units its tasks cover along each axis."""
        return {v.name: v.unit_spans for v in self.variables}

    @property
    def ntasks(self) -> int:
        """Write tasks in all."""
        return sum(v.ntasks for v in self.variables)

    @property
    def nunits(self) -> int:
        """Write units in all."""
        return sum(v.nunits for v in self.variables)

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes written by tasks."""
        return sum(v.nbytes for v in self.variables)

    @property
    def requests(self) -> int:
        """Expected store requests, data and metadata."""
        return self.metadata_requests + sum(v.requests for v in self.variables)

    @property
    def peak_memory(self) -> int:
        """Projected peak memory of the largest task."""
        return max((v.peak_memory for v in self.variables), default=0)

    def __getitem__(self, name: str) -> VariablePlan:
        for v in self.variables:
            if v.name == name:
                return v
        raise KeyError(name)

    def tasks(self) -> Iterator[WriteTask]:
        """Every write task of every variable."""
        for v in self.variables:
            yield from v.tasks()

    def at_rows(self, rows: xr.Dataset, start: int, store: Store, length: int) -> WritePlan:
        """An append's plan placed at rows ``start`` on of its dimension: a region write.

        Jobs that append beside others learn their rows from the dataset's
        commit log only after planning, since the plan refuses bad input before
        anything (a reservation included) is written. What the rows change is
        the task grid alone: every check, layout, dtype and encoding stays this
        plan's, so the job is planned once.

        Parameters
        ----------
        rows : xarray.Dataset
            What goes into the rows: the plan's variables along the dimension
            (all of its rows, or some of them), the index as a plain variable.
        start : int
            The first row.
        store : zarr Store
            Where the rows go.
        length : int
            The arrays' length along the dimension as ``store`` shows them (at
            least ``start`` plus the rows).

        Returns
        -------
        WritePlan
            Mode ``"r+"`` with ``region={dim: slice(start, start + n)}``.
        """
        dim = self.append_dim
        if dim is None:
            raise ValueError("at_rows places an append's plan; this plan appends to nothing")
        n = rows.sizes.get(dim, 0)
        if start < 0 or start + n > length:
            raise ValueError(f"rows {start}-{start + n} of {dim!r} do not fit a length of {length}")
        unknown = sorted(str(k) for k in rows.variables if str(k) not in self.dataset.variables)
        if unknown or any(dim not in rows[k].dims for k in rows.variables):
            raise ValueError(
                f"at_rows takes the plan's variables along {dim!r} only; got {list(rows.variables)}"
            )
        min_units = self.throttle.max_inflight if self.throttle is not None else 1
        variables = []
        for vp in self.variables:
            if dim not in vp.dims:
                continue  # rows hold only what lies along the dimension
            var = rows.variables[vp.name].transpose(*vp.dims)
            axis = vp.dims.index(dim)
            placed = _Placement(
                var=var,
                offset=[start if i == axis else o for i, o in enumerate(vp.offset)],
                array_shape=[length if i == axis else s for i, s in enumerate(vp.array_shape)],
                chunks=vp.chunks,
                shards=vp.shards,
                dtype=vp.dtype,
                new=False,
                own={},
            )
            variables.append(_variable_plan(vp.name, placed, self.max_task_bytes, min_units))
        eager = tuple(name for name in self.eager if name in rows.variables)
        return replace(
            self,
            mode="r+",
            append_dim=None,
            region={dim: slice(start, start + n)},
            variables=tuple(variables),
            eager=eager,
            # A region writes no array's metadata: what xarray writes itself, the group.
            metadata_requests=len(eager) + 1,
            # Never consolidated here: consolidated metadata read through ``store``
            # would show the rows; whoever makes them visible rewrites it.
            consolidated=None,
            dataset=rows,
            store=store,
            encoding={k: v for k, v in (self.encoding or {}).items() if k in rows.variables},
            reads=None,
        )

    def validate(self) -> WritePlan:
        """Check the plan: return it, or raise :class:`~toolkit.errors.UnsafePlanError`."""
        for v in self.variables:
            v.validate(self.max_task_bytes)
        return self

    def __repr__(self) -> str:
        return plan_text(self)

    def _repr_html_(self) -> str:
        return plan_html(self)


# --------------------------------------------------------------------------- planning


def _open_decoded(store: Store, group: str | None) -> xr.Dataset:
    """The stored dataset, lazily; waits out a concurrent append publishing its rows."""
    # No indexes: validation needs encodings and dtypes, not coordinate values
    # (building indexes would read every chunk of every dimension coordinate).
    ds: xr.Dataset = open_settled(
        store, group, chunks=None, consolidated=False, create_default_indexes=False
    )
    return ds


def _store_is_empty(store: Store, group: str | None, members: list[str] | None = None) -> bool:
    # Killed writes' temporary files and coordination state are no data. ``members``: the
    # group's listing, when it was listed already (nothing in it is nothing below it).
    return members == [] or not group_contents(store, group)


def _group_root(group: str | None) -> str:
    g = (group or "").strip("/")
    return f"{g}/" if g else ""


def resolve_mode(mode: str | None, append_dim: Hashable | None, region: object) -> WriteMode:
    """The write mode xarray would use, and a refusal of what xarray refuses."""
    if mode is not None and mode not in _MODES:
        raise PlanError(f"mode must be one of {_MODES}, got {mode!r}")
    if mode is None:
        return "a" if append_dim is not None else "r+" if region is not None else "w-"
    if append_dim is not None and mode not in ("a", "a-"):
        raise PlanError(f"cannot set append_dim unless mode='a' or mode='a-', got mode={mode!r}")
    if region is not None and mode not in ("a", "a-", "r+"):
        raise PlanError(
            "cannot set region unless mode='a', mode='a-', mode='r+' or mode=None, got "
            f"mode={mode!r}"
        )
    if region is not None and mode == "a-":
        return "a"  # "a-" differs from "a" in appends only (xarray's meaning)
    return mode  # type: ignore[return-value]


def _mode_of(sizes: tuple[int, ...]) -> int:
    """The most common chunk size (the ragged last chunk counts only if alone)."""
    body = sizes[:-1] if len(sizes) > 1 else sizes
    return max(Counter(body).most_common(), key=lambda kv: (kv[1], kv[0]))[0]


def _stored_dtype(var: xr.Variable, enc: Mapping[str, Any]) -> np.dtype[Any]:
    out: np.dtype[Any] = np.dtype(enc["dtype"]) if "dtype" in enc else var.dtype
    if "dtype" not in enc and var.dtype.kind in "mM":
        out = np.dtype("int64")
    elif "dtype" not in enc and var.dtype.kind in "OUST":
        out = np.dtype("O")
    return out


def plan_write(
    ds: xr.Dataset,
    store: StoreLike,
    *,
    mode: WriteMode | None = None,
    append_dim: Hashable | None = None,
    region: Mapping[Hashable, slice | Literal["auto"]] | Literal["auto"] | None = None,
    encoding: Mapping[Hashable, Mapping[str, Any]] | None = None,
    zarr_format: int | None = None,
    consolidated: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
    group: str | None = None,
    write_empty_chunks: bool | None = None,
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES,
    throttle: Throttle | Literal[False] | None = None,
) -> WritePlan:
    """Plan a write of ``ds`` to ``store`` without writing anything.

    Parameters take the names and meanings of :meth:`xarray.Dataset.to_zarr`.

    Parameters
    ----------
    ds : xarray.Dataset
        The data; dask-backed variables may have any chunking.
    store : str, os.PathLike or zarr Store
        Target path, URL or store.
    mode : {"w", "w-", "a", "a-", "r+"}, optional
        As in xarray: ``"w-"`` by default, ``"a"`` with ``append_dim``, ``"r+"``
        with ``region``.
    append_dim : str, optional
        Dimension to append along.
    region : dict or "auto", optional
        Where in existing arrays to write; slices or ``"auto"`` per dim.
    encoding : dict, optional
        Per variable: ``chunks``, ``shards``, ``compressors``, ``fill_value``, CF
        keys (``dtype``, ``units``, ``scale_factor``, ...).
    zarr_format : {2, 3}, optional
        Zarr format of a new store (default zarr's, 3); must match an existing one.
    consolidated : bool, optional
        Write consolidated metadata (as xarray).
    storage_options : dict, optional
        fsspec options for URLs.
    group : str, optional
        Group path inside the store.
    write_empty_chunks : bool, optional
        Passed to zarr.
    max_task_bytes : int
        Memory target per write task (default 256 MiB).
    throttle : Throttle, False or None
        Request budget for the store: ``None`` takes the URL's defaults
        (:meth:`Throttle.for_url`; none for local paths), ``False`` none.

    Returns
    -------
    WritePlan

    Raises
    ------
    toolkit.errors.PlanError
        (or a subclass) on any invalid input; nothing is written.

    Examples
    --------
    >>> import numpy as np
    >>> import xarray as xr
    >>> import toolkit
    >>> ds = xr.Dataset(
    ...     {"t2m": (("time", "x"), np.arange(48.0).reshape(12, 4))},
    ...     coords={"time": np.arange(12)},
    ... ).chunk({"time": 5})
    >>> plan = toolkit.plan_write(ds, "example.zarr", encoding={"t2m": {"chunks": (4, 4)}})
    >>> plan.ntasks, plan.nunits, plan.nbytes  # nothing is written yet
    (3, 3, 384)
    >>> plan.validate()  # proves that no write unit belongs to two tasks; prints as a table
    WritePlan → example.zarr (mode='w-', zarr_format=3): 3 tasks, 3 write units, ...
    variable  shape    dtype  chunks  shards  dask chunks  tasks  units  bytes  requests  peak/task
    --------  -----  -------  ------  ------  -----------  -----  -----  -----  --------  ---------
    t2m        12×4  float64     4×4       -            3      3      3  384 B         3      256 B
    written with the metadata: time
    >>> report = toolkit.execute(plan, progress=False)
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"plan_write needs an xarray.Dataset, got {type(ds).__name__}")
    if not isinstance(max_task_bytes, int) or max_task_bytes <= 0:
        raise PlanError(f"max_task_bytes must be a positive int, got {max_task_bytes!r}")
    if isinstance(region, Mapping) and not region:
        # region={} slices no dimension: every variable is written whole (xarray's meaning).
        region, mode = None, mode or "r+"
    mode = resolve_mode(mode, append_dim, region)
    policy = resolve_throttle(throttle, store_label(store))
    plain = resolve_store(store, storage_options=storage_options, throttle=policy)
    check_store_reachable(plain)
    # Planning reads metadata through the same budget and retries as the write, from
    # one snapshot of the group read in a few concurrent rounds (the plan opens the
    # group several ways: each open would be a chain of requests over a slow link).
    plan_io = live_metrics(describe_store(plain))
    reads: Store = plain
    if isinstance(plain, SnapshotStore):
        plain = plain.inner  # the caller's snapshot (an append's), for the plan's reads
    elif mode != "w":
        # Through a read-only view: planning never writes (a local store's directory
        # is not made by opening it), whatever the plan then refuses.
        reads = SnapshotStore(_read_only(plain))
        # With the commit log's head: a region write reads it (the dimensions jobs append to).
        # An append reads each coordinate's chunk after its last; nothing else does.
        sync(reads.prefetch(group, extra=[log_head_key(group)], beyond=append_dim is not None))
    zstore = wrap_store(reads, policy, plan_io)
    existing = None if mode == "w" else open_existing(zstore, group)
    # The snapshot listed the group's members: a group with none is empty, no LIST more.
    members = reads.listed(_group_root(group)) if isinstance(reads, SnapshotStore) else None
    fmt = _check_target(zstore, group, mode, existing, region, zarr_format, members)
    ds = check_variables(ds, plain, fmt)
    user_enc = check_encoding(ds, encoding, fmt)
    ds = _without_preferred_chunks(ds)
    resolved_region: dict[str, slice] | None = None
    if region is not None:
        assert existing is not None
        resolved_region = resolve_region(ds, region, existing, zstore, group)
        ds = ds.drop_vars(list(ds.indexes))  # indexes are never rewritten by a region write
        if append_dim is not None:
            # Checked after the region, as xarray does: labels that are not in the
            # store raise the KeyError above.
            same = (
                f"cannot list the same dimension in both ``append_dim`` and ``region`` "
                f"({append_dim!r}); "
                if append_dim in resolved_region
                else ""
            )
            raise PlanError(
                same + "append_dim and region cannot be used together; write the region "
                "(region=...) and append the new rows (append_dim=...) in two calls"
            )
    appending = _check_append(ds, append_dim, existing)
    if append_dim is not None and not appending:
        mode = "w-"  # appending to nothing creates the store, as xarray does
    target = _Target(
        mode=mode,
        fmt=fmt,
        existing=existing,
        appending=appending,
        append_dim=append_dim,
        region=resolved_region,
        decoded=(
            _open_decoded(zstore, group)
            if existing is not None and existing.arrays and mode in ("a", "a-", "r+")
            else None
        ),
        user_enc=user_enc,
        min_units=policy.max_inflight if policy is not None else 1,
        max_task_bytes=max_task_bytes,
    )
    plans: list[VariablePlan] = []
    eager: list[str] = []
    enc_out: dict[Hashable, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        planned = _plan_variable(name, var, ds, target, enc_out)
        if isinstance(planned, VariablePlan):
            plans.append(planned)
        elif planned is not None:
            eager.append(planned)
    # The xarray metadata pass writes each new array's metadata, the group's, and a
    # consolidated copy; appends also rewrite the resized arrays' metadata.
    meta = sum(v.new for v in plans) + len(eager) + 1 + bool(consolidated)
    meta += sum(1 for v in plans if not v.new and appending)
    return WritePlan(
        target=describe_store(zstore),
        mode=mode,
        zarr_format=fmt,
        append_dim=str(append_dim) if appending else None,
        region=resolved_region,
        variables=tuple(plans),
        eager=tuple(eager),
        max_task_bytes=max_task_bytes,
        metadata_requests=meta,
        group=group,
        consolidated=consolidated,
        write_empty_chunks=write_empty_chunks,
        throttle=policy,
        io=plan_io,
        dataset=ds,
        store=plain,
        encoding=enc_out,
        reads=reads.metadata_only(plain) if isinstance(reads, SnapshotStore) else None,
    )


def _read_only(store: Store) -> Store:
    """A read-only view of ``store`` (itself when it has none, or is read-only already)."""
    if store.read_only:
        return store
    try:
        return store.with_read_only(True)
    except (NotImplementedError, TypeError, ValueError):
        return store


@dataclass(frozen=True)
class _Target:
    """What the per-variable steps of :func:`plan_write` need to know of the target."""

    mode: WriteMode
    fmt: int
    existing: ExistingGroup | None
    appending: bool
    append_dim: Hashable | None
    region: dict[str, slice] | None
    decoded: xr.Dataset | None
    user_enc: Mapping[Hashable, Mapping[str, Any]]
    min_units: int
    max_task_bytes: int

    @cached_property
    def sizes(self) -> dict[str, int]:
        return self.existing.sizes() if self.existing is not None else {}


@dataclass
class _Placement:
    """Where one variable goes: its offset and shape in the array, and the array's layout."""

    var: xr.Variable
    offset: list[int]
    array_shape: list[int]
    chunks: tuple[int, ...] | None
    shards: tuple[int, ...] | None
    dtype: np.dtype[Any]
    new: bool
    own: Mapping[str, Any]
    explicit: bool = False


def _check_target(
    zstore: Store,
    group: str | None,
    mode: WriteMode,
    existing: ExistingGroup | None,
    region: object,
    zarr_format: int | None,
    members: list[str] | None = None,
) -> int:
    """Check that the store can take a write of this mode; the Zarr format to write.

    ``members``: the group's direct members, when its snapshot listed them.
    """
    # Either view showing data refuses: on an object store the listing and the group's
    # documents are read apart, and a creator racing this one may land in between.
    held = existing is not None and bool(existing.arrays)
    if mode == "w-" and (held or not _store_is_empty(zstore, group, members)):
        unfinished = read_records(zstore, group)
        raise ExistingStoreError(
            f"{display_store(zstore)} already holds data"
            + (
                f" (of {len(unfinished)} unfinished write(s), killed or failed: see "
                ".toolkit/writes/)"
                if unfinished
                else ""
            )
            + " and mode='w-' never overwrites; use mode='w' to replace it, mode='a' to "
            "add variables, or append_dim/region"
        )
    if mode == "w" and listing_is_free(zstore):
        # A local target is checked here, before anything is written; an object store's
        # beside the creation lease (execute), where the listing costs no round trip.
        refuse_foreign(zstore, group)
    if mode == "r+" and existing is None:
        raise PlanError(
            f"mode='r+' needs an existing Zarr group at {display_store(zstore)}; "
            "create it first with mode='w-'"
        )
    if region is not None and existing is None:
        raise RegionError(f"region writes need an existing Zarr group at {display_store(zstore)}")
    if zarr_format is not None and zarr_format not in (2, 3):
        raise PlanError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    if existing is not None and zarr_format is not None and zarr_format != existing.zarr_format:
        raise PlanError(
            f"the store holds zarr_format={existing.zarr_format} but zarr_format="
            f"{zarr_format} was asked for; drop zarr_format or use mode='w'"
        )
    if existing is not None:
        return existing.zarr_format
    return zarr_format or int(zarr.config.get("default_zarr_format"))


def _without_preferred_chunks(ds: xr.Dataset) -> xr.Dataset:
    """A shallow copy whose variables keep their own encoding but a source's read chunks.

    As in xarray: ``encoding`` replaces a variable's own encoding; a variable it
    does not name keeps its own (chunks, codecs, CF keys), and xarray drops the
    keys that Zarr does not take (a netCDF's chunksizes, say).
    """
    ds = ds.copy(deep=False)
    for var in ds.variables.values():
        var.encoding = {k: v for k, v in var.encoding.items() if k != "preferred_chunks"}
    return ds


def _check_append(
    ds: xr.Dataset, append_dim: Hashable | None, existing: ExistingGroup | None
) -> bool:
    """Check ``append_dim`` against the data and the store; whether this is an append."""
    if append_dim is not None and append_dim not in ds.dims:
        raise AppendError(
            f"append_dim={append_dim!r} does not match any existing dataset dimensions "
            f"(the dataset has {list(ds.dims)})"
        )
    if (
        append_dim is not None
        and existing is not None
        and existing.arrays
        and append_dim not in existing.sizes()
    ):
        raise AppendError(
            f"append_dim={append_dim!r} is not a dimension of the store "
            f"(it has {sorted(existing.sizes())})"
        )
    return append_dim is not None and existing is not None and bool(existing.arrays)


def _plan_variable(
    name: Hashable,
    var: xr.Variable,
    ds: xr.Dataset,
    target: _Target,
    enc_out: dict[Hashable, dict[str, Any]],
) -> VariablePlan | str | None:
    """One variable's plan; its name if xarray writes it whole; None if it is left alone."""
    sname = check_name(name)
    enc = target.user_enc.get(name, {})
    existing = target.existing
    is_existing = existing is not None and target.mode != "w" and sname in existing.arrays
    if target.mode == "r+" and not is_existing:
        new_names = [str(k) for k in ds.variables if existing and str(k) not in existing.arrays]
        raise PlanError(
            f"dataset contains non-pre-existing variables {new_names}, which mode='r+' "
            "cannot create; use mode='a' to add variables, or drop them"
        )
    if is_existing:
        placed = _place_in_existing(sname, var, enc, target)
        if placed is None:
            return None  # 'a-' leaves variables without the append dim alone
    else:
        placed = _place_new(name, sname, var, enc, target)
    small = _written_by_xarray(name, placed.var, ds, target.region is not None)
    if placed.new:
        _settle_new_layout(name, sname, placed, small, target, enc_out)
    if small:
        return sname
    return _variable_plan(sname, placed, target.max_task_bytes, target.min_units)


def _place_in_existing(
    sname: str, var: xr.Variable, enc: Mapping[str, Any], target: _Target
) -> _Placement | None:
    """Check ``var`` against its stored array and place it there (None: leave it alone)."""
    existing, appending, append_dim = target.existing, target.appending, target.append_dim
    assert existing is not None
    arr = existing.arrays[sname]
    stored_dims = existing.dims[sname]
    if set(stored_dims) != set(var.dims) or len(stored_dims) != var.ndim:
        raise (AppendError if appending else PlanError)(
            f"{sname!r} has different dimension names than the stored array: {var.dims} "
            f"vs {stored_dims}; rename or transpose to match"
        )
    var = var.transpose(*stored_dims)
    _check_encoding_of_existing(sname, enc, arr)
    if target.mode == "a-" and appending and append_dim not in var.dims:
        return None
    assert target.decoded is not None
    if sname not in target.decoded.variables:
        raise PlanError(
            f"{sname!r} is stored as a Zarr array but xarray does not read it as a "
            "variable of the group (its metadata is incomplete: a write was "
            "stopped in its metadata round?); rewrite the dataset with mode='w'"
        )
    old = target.decoded.variables[sname]
    check_dtype(sname, old.dtype, var.dtype, appending)
    offset = [0] * var.ndim
    array_shape = list(arr.shape)
    region = target.region
    for i, d in enumerate(stored_dims):
        if appending and d == append_dim:
            offset[i] = arr.shape[i]
            array_shape[i] = arr.shape[i] + var.shape[i]
        elif region and d in region:
            offset[i] = region[d].start
        elif var.shape[i] != arr.shape[i]:
            err = AppendError if appending else (RegionError if region else PlanError)
            raise err(
                f"{sname!r} has different dimension sizes than the stored array: "
                f"{d}={var.shape[i]} vs {d}={arr.shape[i]}; only "
                + (
                    f"{append_dim!r} may differ when appending"
                    if appending
                    else "dims in `region` may differ"
                    if region
                    else "equal shapes can be overwritten (or use mode='w')"
                )
            )
    return _Placement(
        var=var,
        offset=offset,
        array_shape=array_shape,
        chunks=tuple(arr.chunks),
        shards=arr.shards,
        dtype=arr.dtype if isinstance(arr.dtype, np.dtype) else np.dtype("O"),
        new=False,
        own={},
    )


def _check_encoding_of_existing(sname: str, enc: Mapping[str, Any], arr: zarr.Array[Any]) -> None:
    """An existing array keeps its encoding: ``encoding`` may only repeat its layout."""
    for key in ("chunks", "shards"):
        stored = arr.chunks if key == "chunks" else arr.shards
        if (
            key in enc
            and enc[key] is not None
            and tuple(enc[key]) != tuple(stored if stored is not None else ())
        ):
            raise EncodingError(
                f"variable {sname!r} already exists, but encoding was provided: "
                f"encoding[{sname!r}][{key!r}] = {enc[key]} contradicts the existing "
                f"array's {key} {stored}; drop {key!r} from encoding, or rewrite "
                "the array with mode='w'"
            )
    other = set(enc) - {"chunks", "shards"}
    if other:
        raise EncodingError(
            f"variable {sname!r} already exists, but encoding was provided: "
            f"encoding[{sname!r}] sets {sorted(other)}, but the stored array keeps "
            "its own encoding; drop them, or use mode='w'"
        )


def _place_new(
    name: Hashable, sname: str, var: xr.Variable, enc: Mapping[str, Any], target: _Target
) -> _Placement:
    """Check a variable the store does not hold yet, and take its layout."""
    if target.appending and target.append_dim in var.dims:
        raise AppendError(
            f"{sname!r} is not in the store but has the append dimension "
            f"{target.append_dim!r}; write it first (mode='a' without append_dim), or drop it"
        )
    if target.region is not None:
        raise RegionError(
            f"{sname!r} is not in the store; a region write only fills existing "
            "arrays. Create it first with mode='a' (no region), or drop it"
        )
    sizes = target.sizes
    for dim, n in zip(var.dims, var.shape, strict=True):
        if target.mode in ("a", "a-") and dim in sizes and sizes[str(dim)] != n:
            raise PlanError(
                f"new variable {sname!r} has {dim}={n} but the store's {dim!r} has "
                f"length {sizes[str(dim)]}; dimensions must agree"
            )
    explicit = name in target.user_enc
    own = enc if explicit else own_layout(sname, var)
    return _Placement(
        var=var,
        offset=[0] * var.ndim,
        array_shape=list(var.shape),
        chunks=own.get("chunks"),
        shards=own.get("shards"),
        dtype=_stored_dtype(var, own),
        new=True,
        own=own,
        explicit=explicit,
    )


def _settle_new_layout(
    name: Hashable,
    sname: str,
    placed: _Placement,
    small: bool,
    target: _Target,
    enc_out: dict[Hashable, dict[str, Any]],
) -> None:
    """Choose a new array's chunks (its own, the dask chunks, or a default) and check them."""
    var = placed.var
    if placed.chunks is None and var.chunks is not None:
        placed.chunks = tuple(max(1, _mode_of(c)) for c in var.chunks)  # 0: an empty dim
    elif placed.chunks is None and not small:
        placed.chunks = grid.default_chunks(var.shape, max(placed.dtype.itemsize, 1))
    layout = {k: v for k, v in placed.own.items() if k not in LAYOUT_KEYS}
    if placed.chunks is not None:
        layout["chunks"] = tuple(int(c) for c in placed.chunks)
    if placed.shards is not None:
        layout["shards"] = tuple(int(s) for s in placed.shards)
    check_with_xarray(sname, var, layout, target.fmt, explicit=placed.explicit)
    if placed.explicit:
        enc_out[name] = layout  # replaces the variable's encoding, as in xarray
    else:
        var.encoding = {**var.encoding, **layout}  # ds is a shallow copy


def _variable_plan(
    sname: str, placed: _Placement, max_task_bytes: int, min_units: int
) -> VariablePlan:
    """The write tasks of one variable: its source chunks regrouped to whole write units."""
    var, chunks, shards = placed.var, placed.chunks, placed.shards
    assert chunks is not None
    source_chunks = var.chunks if var.chunks is not None else tuple((n,) for n in var.shape)
    task_chunks = grid.regroup(
        source_chunks,
        tuple(shards or chunks),
        placed.offset,
        itemsize=max(placed.dtype.itemsize, 1),
        max_bytes=max_task_bytes,
        # On an object store, tiny aligned blocks are merged until a task alone can
        # fill the in-flight cap: while one task waits on its slowest request, the
        # next thread's keeps the cap full (half the cap left the link idle between
        # tasks: a 200 ms link took 1.4x as long).
        min_units=min_units,
    )
    return VariablePlan(
        name=sname,
        dims=tuple(str(d) for d in var.dims),
        dtype=placed.dtype,
        shape=tuple(var.shape),
        array_shape=tuple(placed.array_shape),
        offset=tuple(placed.offset),
        chunks=tuple(int(c) for c in chunks),
        shards=tuple(int(s) for s in shards) if shards else None,
        source_chunks=tuple(tuple(c) for c in source_chunks),
        task_chunks=task_chunks,
        new=placed.new,
    )


def _written_by_xarray(name: Hashable, var: xr.Variable, ds: xr.Dataset, region: bool) -> bool:
    """Whether xarray writes ``var`` itself, in the metadata round, not toolkit's tasks.

    Those are the variables not worth a task per write unit, or that only
    xarray's encoders can write: empty ones, 0-d ones, in-memory coordinates,
    strings and objects, and in-memory times. A region write sends every other
    variable through tasks, which merge the write units shared with another
    job's region; dimension coordinates cannot be dask arrays, so they are
    written with the metadata, their shared units merged conditionally too (see
    :func:`toolkit.write.execute`).
    """
    if var.size == 0 or encoded_from_values(var):
        return True
    return var.chunks is None and (
        (name in ds.coords or var.ndim == 0) and (not region or name in var.dims)
    )
