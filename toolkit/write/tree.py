"""DataTree writes: one plan for the whole tree, one metadata round, one graph.

:func:`plan_tree_write` plans every node of an :class:`xarray.DataTree` as
:func:`~toolkit.plan_write` plans a dataset (one :class:`~toolkit.WritePlan` per
node, its group the node's path), concurrently, and freezes them into a
:class:`TreeWritePlan`. Nothing is written until every node's plan is made and
validated: a refusal of any node leaves the store as it was.

:func:`execute_tree` then runs the whole tree as one write. A creation takes the
tree's creation claim once (on its root group) and clears or checks the root
once. Each node's metadata is made by xarray into an in-memory buffer (as a
dataset's is), the buffers are merged (each group's documents are its own
node's), the tree is consolidated once, the write records of all nodes are put
in one concurrent round and then every node's metadata in another, whatever the
number of nodes. The data of all nodes is one dask graph, computed once; each
task owns whole stored objects of one array, as in a dataset write.
"""

from __future__ import annotations

import contextvars
import difflib
import functools
import html
import time
import warnings
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import xarray as xr
import zarr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.task_spec import List, Task, TaskRef
from dask.utils import format_bytes
from zarr.abc.store import Store

from toolkit._render import html_table, text_table
from toolkit.cluster.executor import Executor, executor
from toolkit.cluster.progress import progress_bar
from toolkit.coordination.claim import (
    CreationClaim,
    create_timeout,
    listing_is_free,
    take_claim,
)
from toolkit.coordination.leases import Coordinator, LockSet, job_id, supports_atomic_create
from toolkit.coordination.records import WriteRecord
from toolkit.errors import (
    AppendError,
    EncodingError,
    PlanError,
    RegionError,
    UnknownVariableError,
    VariableNameError,
    WriteError,
)
from toolkit.io.buffer import MetadataBuffer
from toolkit.io.digests import WrittenStore
from toolkit.io.metrics import IOMetrics, live_metrics
from toolkit.io.snapshot import SnapshotStore
from toolkit.io.stores import (
    StoreLike,
    describe_store,
    display_location,
    is_icechunk,
    resolve_store,
    store_label,
)
from toolkit.io.throttle import Throttle, resolve_throttle
from toolkit.io.wrappers import wrap_store
from toolkit.upstream import sync
from toolkit.write.checks import unstorable
from toolkit.write.execute import derive_write_id, small_write_threads, write_io
from toolkit.write.graph import WriteSource, build_write_graph
from toolkit.write.manyjobs import append
from toolkit.write.metadata import prepare_group, write_metadata
from toolkit.write.plan import (
    DEFAULT_MAX_TASK_BYTES,
    WriteMode,
    WritePlan,
    plan_write,
    resolve_mode,
)
from toolkit.write.render import variable_row
from toolkit.write.report import WriteReport, conclude

__all__ = ["TreeWritePlan", "TreeWriteReport", "execute_tree", "plan_tree_write", "write_tree"]

#: Nodes planned at once (each plan reads its group's metadata: a few round trips).
_PLANNERS = 16


def _node_group(root: str | None, rel: str) -> str | None:
    """The group of a node: its path under the tree's root group (None: the store's root)."""
    parts = [p for p in ((root or "").strip("/"), rel.strip("/")) if p]
    return "/".join(parts) or None


def _prefix(group: str | None) -> str:
    return (group or "").strip("/")


def _tree_nodes(tree: xr.DataTree) -> list[tuple[str, xr.DataTree]]:
    """Every node with its path relative to ``tree`` (``"/"``, ``"/a"``, ...), parents first."""
    out = []
    for node in tree.subtree:  # breadth first: a parent before its children
        rel = node.relative_to(tree)
        out.append(("/" if rel == "." else "/" + rel, node))
    return out


def _check_node_names(nodes: Sequence[tuple[str, xr.DataTree]]) -> None:
    """Refuse a node whose name cannot be a Zarr group's (a metadata document's, toolkit's)."""
    for path, node in nodes:
        if path == "/":
            continue
        name = str(node.name)
        reason = unstorable(name, False)
        if reason is not None and "nested group" not in reason:
            raise VariableNameError(
                f"node {path!r}: its name {name!r} cannot be a Zarr group's: {reason}; rename "
                "the node"
            )


def _tree_encoding(
    encoding: Mapping[str, Mapping[Hashable, Mapping[str, Any]]] | None,
    nodes: Sequence[tuple[str, xr.DataTree]],
) -> dict[str, Mapping[Hashable, Mapping[str, Any]]]:
    """``encoding`` by node path (as ``DataTree.to_zarr``: ``{"/": {...}, "/child": {...}}``)."""
    if encoding is None:
        return {}
    if not isinstance(encoding, Mapping):
        raise EncodingError(
            "encoding of a DataTree must be a dict of node path -> {variable: encoding}, got "
            f"{type(encoding).__name__}"
        )
    # Keys are node paths, relative to the tree written or (as xarray's) the nodes' own.
    by_key: dict[str, str] = {}
    for path, node in nodes:
        by_key[path] = path
        by_key.setdefault(node.path, path)
    out: dict[str, Mapping[Hashable, Mapping[str, Any]]] = {}
    for key, enc in encoding.items():
        k = str(key)
        k = "/" + k.strip("/") if k.strip("/") else "/"
        if k not in by_key:
            paths = [p for p, _ in nodes]
            close = difflib.get_close_matches(k, paths, 1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownVariableError(
                f"unexpected encoding group {key!r}: it is not a node of the tree (its nodes: "
                f"{', '.join(paths[:10])}{', ...' if len(paths) > 10 else ''}); the keys of a "
                "tree's encoding are node paths, each mapping to that node's "
                "{variable: encoding}" + hint
            )
        if not isinstance(enc, Mapping):
            raise EncodingError(
                f"encoding[{key!r}] must be a dict of variable -> encoding (the node's), got "
                f"{type(enc).__name__} {enc!r}"
            )
        out[by_key[k]] = enc
    return out


def _in_node(path: str, e: BaseException) -> BaseException:
    """``e`` again, its message prefixed with the node it is about (``e`` when it cannot be)."""
    if not e.args or not isinstance(e.args[0], str):
        return e
    try:
        return type(e)(f"node {path!r}: {e.args[0]}", *e.args[1:])
    except Exception:
        return e


@dataclass(frozen=True)
class TreeWritePlan:
    """A validated-before-writing description of the write of a whole DataTree.

    One :class:`~toolkit.WritePlan` per node written, each for the node's group;
    build it with :func:`plan_tree_write` (:func:`toolkit.to_zarr` of a tree does
    both), run it with :func:`execute_tree`.

    Attributes
    ----------
    target : str
        A secret-free description of the store.
    mode : str
        The tree's mode (each node's plan says its own: a node an ``"a"`` write
        creates is planned ``"a"`` too).
    zarr_format : int
        2 or 3, the same for every node.
    group : str or None
        The tree's root group in the store.
    consolidated : bool
        Whether the tree's metadata is consolidated at its root once written.
    append_dim : str or None
        The dimension appended to, by every node that has it.
    nodes : tuple of (str, WritePlan)
        Each node's path in the tree (``"/"``, ``"/child"``, ...) and its plan, parents
        first.
    left_alone : tuple of str
        Nodes not written: without ``append_dim`` (an append) or without a
        dimension of ``region`` (a region write).
    """

    target: str
    mode: str
    zarr_format: int
    group: str | None
    consolidated: bool
    append_dim: str | None
    nodes: tuple[tuple[str, WritePlan], ...]
    left_alone: tuple[str, ...] = ()
    throttle: Throttle | None = None
    store: Store = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    @property
    def paths(self) -> tuple[str, ...]:
        """The paths of the nodes written, parents first."""
        return tuple(p for p, _ in self.nodes)

    def __getitem__(self, path: str) -> WritePlan:
        for p, plan in self.nodes:
            if p == path:
                return plan
        raise KeyError(path)

    @property
    def ntasks(self) -> int:
        """Write tasks in all nodes."""
        return sum(p.ntasks for _, p in self.nodes)

    @property
    def nunits(self) -> int:
        """Write units in all nodes."""
        return sum(p.nunits for _, p in self.nodes)

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes written by tasks."""
        return sum(p.nbytes for _, p in self.nodes)

    @property
    def requests(self) -> int:
        """Expected store requests, data and metadata."""
        return sum(p.requests for _, p in self.nodes)

    @property
    def peak_memory(self) -> int:
        """Projected peak memory of the largest task."""
        return max((p.peak_memory for _, p in self.nodes), default=0)

    @property
    def max_task_bytes(self) -> int:
        """The memory target per task."""
        return max((p.max_task_bytes for _, p in self.nodes), default=DEFAULT_MAX_TASK_BYTES)

    def tasks(self) -> Iterator[tuple[str, Any]]:
        """Every write task of every node: (node path, :class:`~toolkit.WriteTask`)."""
        for path, p in self.nodes:
            for t in p.tasks():
                yield path, t

    def validate(self) -> TreeWritePlan:
        """Check every node's plan (:meth:`WritePlan.validate`) and that they agree."""
        for path, p in self.nodes:
            try:
                p.validate()
            except PlanError as e:
                raise _in_node(path, e) from e
            if p.zarr_format != self.zarr_format:
                raise PlanError(
                    f"node {path!r} is planned as zarr_format={p.zarr_format} but the tree as "
                    f"zarr_format={self.zarr_format}; a tree is stored in one format"
                )
        return self

    def _summary(self) -> str:
        what = f"mode={self.mode!r}, zarr_format={self.zarr_format}"
        if self.group:
            what += f", group={self.group!r}"
        if self.append_dim:
            what += f", append_dim={self.append_dim!r}"
        return (
            f"TreeWritePlan → {display_location(self.target)} ({what}): {len(self.nodes)} "
            f"nodes, {self.ntasks:,} tasks, {self.nunits:,} write units, "
            f"{format_bytes(self.nbytes)}, ~{self.requests:,} requests, peak "
            f"~{format_bytes(self.peak_memory)}/task"
        )

    def _left_alone_text(self) -> str:
        why = (
            f"without {self.append_dim!r}"
            if self.append_dim
            else "sharing no dimension with the region"
        )
        return f"left alone ({why}): " + ", ".join(self.left_alone)

    def __repr__(self) -> str:
        lines = [self._summary()]
        for path, p in self.nodes:
            rows = [variable_row(v) for v in p.variables]
            head = f"node {path}" + (f" (mode={p.mode!r})" if p.mode != self.mode else "")
            if p.region:
                head += (
                    " region {"
                    + ", ".join(f"{d}: {sl.start}:{sl.stop}" for d, sl in p.region.items())
                    + "}"
                )
            lines.append("")
            lines.append(
                head
                + f": {p.ntasks:,} tasks, {p.nunits:,} units, {format_bytes(p.nbytes)}"
                + ("" if rows or p.eager else ", nothing but the group")
            )
            if rows:
                lines.append(text_table(rows))
            if p.eager:
                lines.append("written with the metadata: " + ", ".join(p.eager))
        if self.left_alone:
            lines += ["", self._left_alone_text()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        parts = [f"<div><p><b>{html.escape(self._summary())}</b></p>"]
        for path, p in self.nodes:
            parts.append(
                f"<details open><summary><b>{html.escape(path)}</b> "
                f"({p.ntasks:,} tasks, {format_bytes(p.nbytes)})</summary>"
            )
            if p.variables:
                parts.append(html_table([variable_row(v) for v in p.variables]))
            if p.eager:
                parts.append(f"<p>Written with the metadata: {html.escape(', '.join(p.eager))}</p>")
            parts.append("</details>")
        if self.left_alone:
            parts.append(f"<p>{html.escape(self._left_alone_text())}</p>")
        parts.append("</div>")
        return "".join(parts)


@dataclass(frozen=True)
class TreeWriteReport:
    """What a tree's write did: one :class:`~toolkit.WriteReport` per node, and the totals.

    Attributes
    ----------
    target : str
        Secret-free store description.
    nodes : tuple of (str, WriteReport)
        Each node's path and report.
    seconds, metadata_seconds : float
        Wall time of the whole write, and of its metadata phase (all nodes').
    io : IOMetrics
        Everything the store stack measured, all nodes.
    plan : TreeWritePlan
        The plan that ran.
    """

    target: str
    nodes: tuple[tuple[str, WriteReport], ...]
    seconds: float
    metadata_seconds: float
    io: IOMetrics = field(repr=False, compare=False, default_factory=IOMetrics)
    plan: TreeWritePlan = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    def __getitem__(self, path: str) -> WriteReport:
        for p, r in self.nodes:
            if p == path:
                return r
        raise KeyError(path)

    @property
    def tasks(self) -> int:
        """Write tasks run."""
        return sum(r.tasks for _, r in self.nodes)

    @property
    def units(self) -> int:
        """Write units written."""
        return sum(r.units for _, r in self.nodes)

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes written."""
        return sum(r.nbytes for _, r in self.nodes)

    @property
    def stored_bytes(self) -> int:
        """Bytes sent for chunk data."""
        return sum(r.stored_bytes for _, r in self.nodes)

    def _rows(self) -> list[dict[str, str]]:
        return [
            {
                "node": path,
                "variables": ", ".join(r.variables) or "-",
                "tasks": f"{r.tasks:,}",
                "units": f"{r.units:,}",
                "bytes": format_bytes(r.nbytes),
                "stored": format_bytes(r.stored_bytes),
            }
            for path, r in self.nodes
        ]

    def _summary(self) -> str:
        return (
            f"TreeWriteReport → {display_location(self.target)}: {len(self.nodes)} nodes, "
            f"{self.tasks:,} tasks, {self.units:,} units, {format_bytes(self.nbytes)} in "
            f"{self.seconds:.2f} s ({self.metadata_seconds:.2f} s metadata), "
            f"{self.io.total:,} requests"
        )

    def __repr__(self) -> str:
        return self._summary() + "\n" + text_table(self._rows())

    def _repr_html_(self) -> str:
        return f"<div><b>{html.escape(self._summary())}</b>{html_table(self._rows())}</div>"


# --------------------------------------------------------------------------- planning


def plan_tree_write(
    tree: xr.DataTree,
    store: StoreLike,
    *,
    mode: WriteMode | None = None,
    encoding: Mapping[str, Mapping[Hashable, Mapping[str, Any]]] | None = None,
    consolidated: bool | None = None,
    group: str | None = None,
    write_inherited_coords: bool = False,
    append_dim: Hashable | None = None,
    region: Mapping[Hashable, slice | Literal["auto"]] | Literal["auto"] | None = None,
    zarr_format: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    write_empty_chunks: bool | None = None,
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES,
    throttle: Throttle | Literal[False] | None = None,
) -> TreeWritePlan:
    """Plan the write of a whole :class:`xarray.DataTree` without writing anything.

    The parameters take the names and meanings of :meth:`xarray.DataTree.to_zarr`
    (and, per node, of :func:`toolkit.plan_write`): ``encoding`` maps node paths
    (``"/"``, ``"/child"``) to that node's encoding; ``write_inherited_coords``
    stores inherited coordinates again in each node; ``consolidated`` (default
    True, as xarray's) consolidates the whole tree at its root. Beyond xarray,
    ``group`` puts the tree under a group of the store, ``append_dim`` appends
    every node that has the dimension (the others are left alone), and
    ``region`` writes into every node that has a dimension of it.

    Every node is planned concurrently; any refusal names its node and leaves
    the store as it was.

    Returns
    -------
    TreeWritePlan

    Raises
    ------
    toolkit.errors.PlanError
        (or a subclass) on any invalid input, naming the node; nothing is written.
    """
    if not isinstance(tree, xr.DataTree):
        raise TypeError(f"plan_tree_write needs an xarray.DataTree, got {type(tree).__name__}")
    if not isinstance(max_task_bytes, int) or max_task_bytes <= 0:
        raise PlanError(f"max_task_bytes must be a positive int, got {max_task_bytes!r}")
    tmode = resolve_mode(mode, append_dim, region)
    if zarr_format is not None and zarr_format not in (2, 3):
        raise PlanError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    nodes = _tree_nodes(tree)
    _check_node_names(nodes)
    enc = _tree_encoding(encoding, nodes)
    policy = resolve_throttle(throttle, store_label(store))
    plain = resolve_store(store, storage_options=storage_options, throttle=policy)
    jobs, left_alone = _node_jobs(nodes, write_inherited_coords, append_dim, region)
    plan_node = functools.partial(
        _plan_node,
        reads=_tree_reads(plain, tmode, group),
        mode=tmode,
        encoding=enc,
        group=group,
        write_empty_chunks=write_empty_chunks,
        max_task_bytes=max_task_bytes,
        throttle=policy if policy is not None else False,
    )
    fmt: int | None = zarr_format
    if fmt is None and tmode in ("w", "w-"):
        fmt = int(zarr.config.get("default_zarr_format"))
    planned, fmt = _plan_nodes(jobs, plan_node, fmt)
    if append_dim is not None and left_alone and not any(p.append_dim for p in planned):
        # Appended to nothing: the tree is created, as a dataset is, with every node.
        alone = [(path, n) for path, n in nodes if path in left_alone]
        extra: list[_NodeJob] = [
            (path, n.to_dataset(inherit=write_inherited_coords or path == "/"), {})
            for path, n in alone
        ]
        with ThreadPoolExecutor(min(_PLANNERS, len(extra)), "toolkit-plan-tree") as pool:
            more = list(pool.map(functools.partial(plan_node, fmt=fmt), extra))
        order = {path: i for i, (path, _) in enumerate(nodes)}
        pairs = sorted(
            [*zip(jobs, planned, strict=True), *zip(extra, more, strict=True)],
            key=lambda jp: order[jp[0][0]],
        )
        jobs, planned = [j for j, _ in pairs], [p for _, p in pairs]
        left_alone = []
        tmode = "w-"  # a creation: under the claim, into an empty group
    if append_dim is not None:
        _check_appended_together(jobs, planned, append_dim)
    out = TreeWritePlan(
        target=describe_store(plain),
        mode=tmode,
        zarr_format=fmt,
        group=_prefix(group) or None,
        consolidated=consolidated is not False,
        append_dim=str(append_dim) if append_dim is not None else None,
        nodes=tuple((path, p) for (path, _, _), p in zip(jobs, planned, strict=True)),
        left_alone=tuple(left_alone),
        throttle=policy,
        store=plain,
    )
    return out.validate()


#: A node to plan: its path, its dataset, and plan_write's options of its own.
type _NodeJob = tuple[str, xr.Dataset, dict[str, Any]]


def _node_jobs(
    nodes: Sequence[tuple[str, xr.DataTree]],
    inherited: bool,
    append_dim: Hashable | None,
    region: Mapping[Hashable, slice | Literal["auto"]] | Literal["auto"] | None,
) -> tuple[list[_NodeJob], list[str]]:
    """The nodes written, with their options, and those left alone.

    An append (a region) writes the nodes that have the dimension (a dimension
    of the region); the others are left alone. None written is refused.
    """
    jobs: list[_NodeJob] = []
    left_alone: list[str] = []
    for path, node in nodes:
        ds = node.to_dataset(inherit=inherited or path == "/")
        options: dict[str, Any] = {}
        if append_dim is not None:
            if append_dim not in ds.dims:
                left_alone.append(path)
                continue
            options["append_dim"] = append_dim
        if region is not None:
            if isinstance(region, str) and region == "auto":
                if not ds.dims:
                    left_alone.append(path)
                    continue
                options["region"] = dict.fromkeys(ds.dims, "auto")
            elif isinstance(region, Mapping):
                mine = {d: s for d, s in region.items() if d in ds.dims}
                if not mine:
                    left_alone.append(path)
                    continue
                options["region"] = mine
            else:
                raise RegionError(
                    f"region must be a dict of dim -> slice or 'auto', got {region!r}"
                )
        jobs.append((path, ds, options))
    if not jobs:
        what = f"append_dim={append_dim!r}" if append_dim is not None else f"region={region!r}"
        raise (AppendError if append_dim is not None else RegionError)(
            f"{what}: no node of the tree has "
            + ("that dimension" if append_dim is not None else "a dimension of the region")
            + f" (its dimensions: {sorted({str(d) for _, n in nodes for d in n.dims})})"
        )
    return jobs, left_alone


def _tree_reads(plain: Store, mode: str, group: str | None) -> Store:
    """What the nodes' plans read: a snapshot of an empty object store's group, else the store.

    On a new tree in an object store (nothing in its root group), every node's
    plan reads one snapshot, which answers their reads of the nodes' groups
    with no request (its listing found none). A local store answers at once
    anyway (and must not be made one).
    """
    if mode == "w" or is_icechunk(plain) or listing_is_free(plain):
        return plain
    snap = SnapshotStore(plain)
    sync(snap.prefetch(group))
    if snap.listed(_prefix(group)) != []:
        return plain
    snap.empty_below(f"{_prefix(group)}/" if _prefix(group) else "")
    return snap


def _plan_node(
    job: _NodeJob,
    fmt: int | None,
    *,
    reads: Store,
    encoding: Mapping[str, Mapping[Hashable, Mapping[str, Any]]],
    group: str | None,
    **options: Any,
) -> WritePlan:
    """One node's :func:`~toolkit.plan_write`; a refusal names the node."""
    path, ds, own = job
    try:
        return plan_write(
            ds,
            reads,
            encoding=encoding.get(path),
            zarr_format=fmt,
            consolidated=False,  # the tree is consolidated once, at its root
            group=_node_group(group, path),
            **options,
            **own,
        )
    except PlanError as e:
        raise _in_node(path, e) from e


def _plan_nodes(
    jobs: Sequence[_NodeJob],
    plan_node: Callable[[_NodeJob, int | None], WritePlan],
    fmt: int | None,
) -> tuple[list[WritePlan], int]:
    """Every node's plan, concurrently, in the order ``region="auto"`` needs; and the format.

    ``region="auto"`` along a dimension is found from its index, which is stored
    in the node that defines it: a node is planned once the nodes defining the
    indexes it lacks have found their slices, which it takes (a child's data has
    no index of an inherited dimension, and would otherwise be placed at the
    start). Without ``fmt``, the first node's plan reads the stored format.
    """
    done: dict[int, WritePlan] = {}

    def plan_all(which: Sequence[int], fmt: int) -> None:
        if not which:
            return
        with ThreadPoolExecutor(min(_PLANNERS, len(which)), "toolkit-plan-tree") as pool:
            futures = [pool.submit(plan_node, jobs[i], fmt) for i in which]
            results = [f.exception() or f.result() for f in futures]
        for r in results:
            if isinstance(r, BaseException):
                raise r
        done.update((i, r) for i, r in zip(which, results, strict=True) if isinstance(r, WritePlan))

    owners: dict[Hashable, int] = {}
    for i, (_, ds, options) in enumerate(jobs):
        for d, sl in (options.get("region") or {}).items():
            if isinstance(sl, str) and sl == "auto" and d in ds.indexes:
                owners.setdefault(d, i)
    resolved: dict[Hashable, slice] = {}

    def waiting(i: int) -> bool:
        _, ds, options = jobs[i]
        return any(
            isinstance(sl, str)
            and sl == "auto"
            and d in owners
            and d not in ds.indexes
            and d not in resolved
            for d, sl in (options.get("region") or {}).items()
        )

    pending = list(range(len(jobs)))
    while pending:
        ready = [i for i in pending if not waiting(i)] or pending
        for i in ready:
            _, ds, options = jobs[i]
            if options.get("region"):
                options["region"] = {
                    d: resolved[d] if d in resolved and d not in ds.indexes else sl
                    for d, sl in options["region"].items()
                }
        if fmt is None:  # the format of what is stored: the first node's plan reads it
            done[ready[0]] = plan_node(jobs[ready[0]], None)
            fmt = done[ready[0]].zarr_format
        plan_all([i for i in ready if i not in done], fmt)
        for d, i in owners.items():
            if i in ready:
                found = (done[i].region or {}).get(str(d))
                if found is not None:
                    resolved[d] = found
        pending = [i for i in pending if i not in ready]
    assert fmt is not None
    return [done[i] for i in range(len(jobs))], fmt


def _check_appended_together(
    jobs: Sequence[_NodeJob], planned: Sequence[WritePlan], append_dim: Hashable
) -> None:
    """Refuse an append that would create some nodes while it appends to others."""
    created = [path for (path, _, _), p in zip(jobs, planned, strict=True) if not p.append_dim]
    if created and len(created) < len(planned):
        # Its arrays would hold the appended rows alone: a tree no longer aligned.
        raise AppendError(
            f"node {created[0]!r} has append_dim={append_dim!r} but no arrays in the store "
            "to append to, while other nodes are appended; write it first with the whole "
            "dimension (mode='a', without append_dim), or drop its variables along "
            f"{append_dim!r}"
        )


# --------------------------------------------------------------------------- executing


@dataclass(frozen=True)
class _TreeMetadata:
    """What the tree's metadata round leaves for the data phase, per node (in plan order)."""

    sources: list[list[WriteSource]]
    tokens: list[str]
    write_records: list[WriteRecord | None]
    written: list[dict[str, Any]]


def _owner_of(groups: Sequence[str]) -> Any:
    """A function giving the group (of ``groups``) a key belongs to: the deepest holding it."""
    deepest = sorted(set(groups), key=len, reverse=True)

    def owner(key: str) -> str | None:
        for g in deepest:
            if g == "" or key.startswith(g + "/"):
                return g
        return None

    return owner


def _tree_metadata(
    plan: TreeWritePlan,
    direct: Store,
    meta_io: IOMetrics,
    creating: bool,
    t0: float,
    *,
    empty: bool = False,
) -> _TreeMetadata:
    """Every node's metadata made into memory, then records and metadata in two rounds.

    ``empty``: the root group was seen empty under the creation claim
    (:func:`~toolkit.coordination.claim.take_claim`): nothing to check, clear or read.
    """
    if creating and not empty:
        prepare_group(direct, plan.mode, plan.group, plan.target, strays=plan.store)
    root = _prefix(plan.group)
    recorded = WrittenStore(direct)
    nodes = plan.nodes

    def fill(p: WritePlan) -> tuple[MetadataBuffer, list[WriteSource]]:
        # Only reads reach the store from a node's buffer: its writes are merged below.
        if creating:
            buf = MetadataBuffer(direct, empty_prefix=root)
        else:
            reads = p.reads if p.mode == "r+" and p.reads is not None else p.store
            buf = MetadataBuffer(wrap_store(reads, p.throttle, meta_io))
        # A node an append or an "a" write creates (planned "w-": its group holds no
        # arrays) is created in its group, which may exist, as xarray's "a" does.
        xmode = "w-" if creating else "a" if p.mode == "w-" else p.mode
        return buf, write_metadata(p, buf, mode=xmode)

    with ThreadPoolExecutor(min(_PLANNERS, len(nodes)), "toolkit-tree-meta") as pool:
        filled = list(pool.map(fill, [p for _, p in nodes]))
    # Each group's documents are its own node's: a child's buffer also holds the
    # parents zarr created for it (empty), which must not replace the parent's own.
    groups = [_prefix(p.group) for _, p in nodes]
    owner = _owner_of(groups)
    merged: dict[str, Any] = {}
    foreign: dict[str, Any] = {}
    for g, (buf, _) in zip(groups, filled, strict=True):
        for key, value in buf.pending.items():
            if owner(key) == g:
                merged[key] = value
            else:
                foreign.setdefault(key, value)
    for key, value in foreign.items():
        merged.setdefault(key, value)
    final = MetadataBuffer(recorded, empty_prefix=root if creating else None)

    async def put_all() -> None:
        for key, value in merged.items():
            await (final.delete(key) if value is None else final.set(key, value))

    sync(put_all())
    if plan.consolidated and plan.mode != "r+":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Consolidated metadata", category=UserWarning)
            # At the store's root, as xarray does (a tree under a group included).
            zarr.consolidate_metadata(final, zarr_format=plan.zarr_format)  # type: ignore[arg-type]
    sources = [s for _, s in filled]
    tokens = [
        derive_write_id(p)
        if not creating
        else tokenize(p.target, p.group, p.mode, [(s.plan, s.data.name) for s in src], t0)
        for (_, p), src in zip(nodes, sources, strict=True)
    ]
    write_records: list[WriteRecord | None] = [None] * len(nodes)
    if not is_icechunk(plan.store):
        write_records = [
            WriteRecord(p.store, p.group, token, p.throttle)
            for (_, p), token in zip(nodes, tokens, strict=True)
        ]

        def begin(i: int) -> None:
            j = write_records[i]
            assert j is not None
            j.begin(nodes[i][1].record_summary(), direct, alone=empty)

        # Every record lands before any array metadata: no reader finds a node's
        # arrays without its record.
        with ThreadPoolExecutor(min(_PLANNERS, len(nodes)), "toolkit-tree-records") as pool:
            list(pool.map(begin, range(len(nodes))))
    sync(final.flush())  # every node's metadata and small variables, in one round
    written: list[dict[str, Any]] = [{} for _ in nodes]
    index = {g: i for i, g in enumerate(groups)}
    for key, landed in recorded.written.as_lists().items():
        # Keys above the tree's root (parents zarr made) go to its first node's.
        written[index.get(owner(key) or "", 0)][key] = landed
    return _TreeMetadata(sources, tokens, write_records, written)


def _tree_report(
    stats: Sequence[Mapping[str, Any]],
    *,
    plan: TreeWritePlan,
    write_records: Sequence[WriteRecord | None],
    tokens: Sequence[str],
    written: Sequence[Mapping[str, Any]],
    t0: float,
    meta: float,
    meta_io: Mapping[str, Any],
    strays_before: float | None,
    root_last: bool = False,
) -> TreeWriteReport:
    """The last task: every node's bookkeeping, all at once, and the tree's report.

    ``root_last``: the first node's record goes after the others' (a deferred
    write's creation claim watches it, and must outlive every node's write).
    """
    nodes = plan.nodes
    none = IOMetrics().as_dict()
    first_written = dict(written[0])
    if nodes and nodes[0][0] == "/":
        # The tree's root lists every object of the tree in its manifest, so that
        # toolkit.verify of the store checks the children too; each child lists its own.
        for i in range(1, len(nodes)):
            first_written.update(written[i])
            first_written.update(stats[i].get("objects", {}))

    def node_report(i: int) -> WriteReport:
        return conclude(
            stats[i],
            nodes[i][1],
            t0,
            meta,
            meta_io if i == 0 else none,
            write_records[i],
            strays_before=strays_before if i == 0 else None,
            meta_written=first_written if i == 0 else written[i],
            token=tokens[i],
        )

    results: list[WriteReport | BaseException] = [None] * len(nodes)  # type: ignore[list-item]
    first = 1 if root_last else 0
    with ThreadPoolExecutor(min(_PLANNERS, len(nodes)), "toolkit-tree-done") as pool:
        futures = {i: pool.submit(node_report, i) for i in range(first, len(nodes))}
        for i, f in futures.items():
            results[i] = f.exception() or f.result()
    if root_last:
        try:
            results[0] = node_report(0)
        except WriteError as e:
            results[0] = e
    for r in results:
        if isinstance(r, BaseException):
            raise r
    reports = [r for r in results if isinstance(r, WriteReport)]
    return TreeWriteReport(
        target=plan.target,
        nodes=tuple((path, r) for (path, _), r in zip(nodes, reports, strict=True)),
        seconds=time.time() - t0,
        metadata_seconds=meta,
        io=IOMetrics.merged([r.io for r in reports]),
        plan=plan,
    )


def _tree_graph(
    plan: TreeWritePlan,
    runner: Executor,
    meta: _TreeMetadata,
    owner: str,
    t0: float,
    meta_seconds: float,
    meta_io: IOMetrics,
    strays_before: float | None,
    root_last: bool,
) -> Delayed:
    """One graph writing every node's data; computes to the :class:`TreeWriteReport`."""
    layers: dict[str, Any] = {}
    deps: dict[str, set[str]] = {}
    finals: list[str] = []
    for (_, p), sources, token in zip(plan.nodes, meta.sources, meta.tokens, strict=True):
        # Each node's own token: its tasks' keys and abort gate are never another's.
        io = write_io(p, tokenize(token, owner, t0), None, owner, runner)
        graph = build_write_graph(p, sources, io)
        hlg = graph.__dask_graph__()
        assert isinstance(hlg, HighLevelGraph)
        layers.update(hlg.layers)
        deps.update(hlg.dependencies)
        finals.append(str(graph.key))
    # Light: dask would otherwise traverse the plans and gather each source dataset.
    light = replace(plan, nodes=tuple((n, replace(p, dataset=xr.Dataset())) for n, p in plan.nodes))
    key = f"toolkit-tree-report-{tokenize(*finals)}"
    finish = functools.partial(
        _tree_report,
        plan=light,
        write_records=meta.write_records,
        tokens=meta.tokens,
        written=meta.written,
        t0=t0,
        meta=meta_seconds,
        meta_io=meta_io.as_dict(),
        strays_before=strays_before,
        root_last=root_last,
    )
    layers[key] = {key: Task(key, finish, List(*map(TaskRef, finals)))}
    deps[key] = set(finals)
    return Delayed(key, HighLevelGraph(layers, deps), layer=key)


def _threads(plan: TreeWritePlan) -> int | None:
    """As a dataset's small write: one thread per task when the whole tree is small."""
    return small_write_threads(plan.nbytes, plan.ntasks)


def execute_tree(
    plan: TreeWritePlan, *, compute: bool = True, progress: bool = True
) -> TreeWriteReport | Delayed:
    """Run a tree's plan: one claim, one metadata round for all nodes, one graph.

    A creation (``"w"``, ``"w-"``) holds the creation claim of the tree's root
    group until its last object landed, as a dataset's does. While the data is
    written each node's group holds the record of its write (readers refuse
    it), removed when the write succeeds, or rewritten with what is missing
    when it fails.

    Parameters
    ----------
    plan : TreeWritePlan
        From :func:`plan_tree_write`.
    compute : bool
        If False, write the metadata now and return a ``Delayed`` that writes
        every node's data and computes to the :class:`TreeWriteReport`.
    progress : bool
        Show a progress bar.

    Raises
    ------
    toolkit.errors.WriteError
        When the data phase failed; the first failing node's ``err.record``.
    """
    plan.validate()
    t0 = time.time()
    meta_io = live_metrics(describe_store(plan.store))
    direct = wrap_store(plan.store, plan.throttle, meta_io)
    owner = job_id()
    creating = plan.mode in ("w", "w-")
    claim: CreationClaim | None = None
    if creating and not is_icechunk(plan.store):
        claim = CreationClaim(plan.store, plan.group, owner, plan.throttle)
    # Mode "w" replaces a Zarr store only, as a dataset's write: a local target was
    # checked by the plans, an object store's is listed here, beside the claim's
    # request (one round trip, not two); refused, the claim it took is withdrawn.
    guard = creating and plan.mode == "w" and not listing_is_free(plan.store)
    empty = take_claim(claim, direct, plan.group, mode=plan.mode, guard=guard)
    try:
        meta = _tree_metadata(plan, direct, meta_io, creating, t0, empty=empty)
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    runner = executor()
    report = _tree_graph(
        plan,
        runner,
        meta,
        owner,
        t0,
        time.time() - t0,
        meta_io,
        strays_before=t0 if claim is not None else None,
        root_last=claim is not None and not compute,
    )
    if not compute:
        if claim is not None:
            claim.release_when_done(meta.write_records[0], report)
        return report
    try:
        result: TreeWriteReport = runner.compute(
            report,
            callbacks=progress_bar(progress, plan.ntasks, "toolkit write", "toolkit-write-"),
            threads=_threads(plan),
        )
    finally:
        if claim is not None:
            claim.release()
    return result


def write_tree(
    tree: xr.DataTree,
    store: StoreLike,
    *,
    compute: bool = True,
    progress: bool = True,
    **options: Any,
) -> TreeWriteReport | Delayed:
    """:func:`plan_tree_write`, then :func:`execute_tree` (what :func:`toolkit.to_zarr` does).

    An append to a tree that exists (``append_dim``, ``mode`` None or ``"a"``)
    goes node by node through the many-jobs append instead
    (:func:`_append_nodes`): the plan still refuses bad input first.
    """
    plan = plan_tree_write(tree, store, **options)
    if compute and _appends_only(plan, options):
        return _append_nodes(tree, plan, store, options)
    return execute_tree(plan, compute=compute, progress=progress)


def _appends_only(plan: TreeWritePlan, options: Mapping[str, Any]) -> bool:
    """Whether every node written is an append to arrays the store holds."""
    return (
        plan.append_dim is not None
        and options.get("mode") in (None, "a")
        and options.get("region") is None
        and not is_icechunk(plan.store)
        and all(p.append_dim is not None for _, p in plan.nodes)
    )


def _append_nodes(
    tree: xr.DataTree, plan: TreeWritePlan, store: StoreLike, options: Mapping[str, Any]
) -> TreeWriteReport:
    """Each node's rows through :func:`toolkit.write.manyjobs.append`, the nodes at once.

    One graph for the tree would plan every node's rows at the stored length it
    read: two jobs appending to one tree at once would write the same rows, and
    one job's rows would be lost. Through the many-jobs append, each node's rows
    are reserved in that node's commit log, written hidden and then published. A
    reader may see one node appended before another (each node is a group of its
    own, published when its rows landed).

    Tree appends run one at a time (the tree's ``tree-append`` lease): each node
    has its own commit log, and two jobs reserving at once could take their rows
    in one order in a parent and in the other in a child that shares its index,
    tying a child's rows to another job's labels. A job leaves a pending
    document until every node is appended: a later job that finds another's
    (its holder died) refuses, naming it, and the interrupted call run again
    finishes it (each node's append is exactly-once by its job id).
    """
    base = plan.store
    if is_icechunk(base) or not supports_atomic_create(base):
        return _append_each(tree, plan, store, options)
    tree_job = tokenize(
        plan.target,
        plan.group,
        str(plan.append_dim),
        [tokenize(_node(tree, p).to_dataset(inherit=False)) for p in plan.paths],
    )
    coord = Coordinator(base, plan.group, plan.throttle)
    locks = LockSet(coord, [_TREE_APPEND], job_id()).start(create_timeout())
    try:
        pending = coord.get(_PENDING)
        if pending is not None and pending.get("job") != tree_job:
            raise AppendError(
                f"an append of this tree was interrupted (started {pending.get('started')}, "
                f"nodes {', '.join(pending.get('nodes') or [])}) and may have appended some "
                "nodes but not others: run that call again to finish it (it appends only "
                "what is missing), then this one; nothing was written"
            )
        if pending is None:
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            coord.put(_PENDING, {"job": tree_job, "started": started, "nodes": list(plan.paths)})
        report = _append_each(tree, plan, store, options)
        locks.leases[0].check()  # fenced: a job that lost the lease leaves the document
        coord.delete(_PENDING)
        return report
    finally:
        locks.stop()


def _node(tree: xr.DataTree, path: str) -> xr.DataTree:
    node = tree[path]
    assert isinstance(node, xr.DataTree)  # plan.paths are the tree's nodes
    return node


#: The lease tree appends take in turn, and the document of the one under way.
_TREE_APPEND = "tree-append"
_PENDING = "tree-append.json"


def _append_each(
    tree: xr.DataTree, plan: TreeWritePlan, store: StoreLike, options: Mapping[str, Any]
) -> TreeWriteReport:
    """Every node of ``plan`` appended through the many-jobs append, at once."""
    t0 = time.time()
    inherit = bool(options.get("write_inherited_coords"))
    keep = ("storage_options", "write_empty_chunks", "max_task_bytes", "throttle")
    kw = {k: options[k] for k in keep if options.get(k) is not None}

    def append_node(path: str) -> WriteReport:
        ds = _node(tree, path).to_dataset(inherit=inherit or path == "/")
        try:
            report: WriteReport = append(
                ds,
                store,
                str(plan.append_dim),
                group=_node_group(plan.group, path),
                progress=False,
                **kw,
            )
        except PlanError as e:
            raise _in_node(path, e) from e
        return report

    paths = plan.paths
    with ThreadPoolExecutor(min(_PLANNERS, len(paths)), "toolkit-tree-append") as pool:
        # Each in a copy of this thread's context (toolkit's runtime goes along).
        futures = [pool.submit(contextvars.copy_context().run, append_node, p) for p in paths]
        reports = [f.result() for f in futures]
    return TreeWriteReport(
        target=plan.target,
        nodes=tuple(zip(paths, reports, strict=True)),
        seconds=time.time() - t0,
        metadata_seconds=max((r.metadata_seconds for r in reports), default=0.0),
        plan=plan,
    )
