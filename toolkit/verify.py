"""Verify a written store against its sources, block by block, in parallel.

:func:`verify` opens the target aligned to its write units and the source
with the same dask chunks (a store or file xarray opens, or many files
concatenated as :func:`toolkit.ingest` reads them), then compares every
variable block by block (NaN equals NaN), the coordinates and the attributes,
and reports every difference it found.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import delayed

from toolkit._render import html_table, text_table
from toolkit._util import need_netcdf_engine
from toolkit.cluster.executor import executor
from toolkit.cluster.progress import progress_bar
from toolkit.coordination.manifest import aread_manifest
from toolkit.errors import PlanError
from toolkit.ingest import sources_dataset
from toolkit.io.digests import matches
from toolkit.io.groups import RESERVED_PREFIX
from toolkit.io.keys import is_metadata
from toolkit.io.stores import StoreLike, resolve_store, store_label
from toolkit.io.throttle import Throttle
from toolkit.io.wrappers import wrap_store
from toolkit.read import open_zarr
from toolkit.upstream import sync

__all__ = ["VerifyReport", "verify"]


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` found.

    Attributes
    ----------
    target, source : str
        What was compared.
    variables : dict
        Per variable compared: ``{"values": n, "differ": k, "first": [index, ...]}``
        (the index of the first differing value, when any). Against a manifest,
        per array: ``{"objects": n, "differ": k, "first": key}``.
    problems : list of str
        Every difference found: values, missing or extra variables,
        coordinates, attributes.
    """

    target: str
    source: str
    variables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    problems: Sequence[str] = ()
    summary: str = ""
    """What was covered (a store checked against its manifest: how many objects of each kind)."""
    kind: str = "values"
    """What the per-variable counts count: ``"values"``, or ``"objects"`` (against a manifest)."""
    checked: bool = True
    """False when the store could not be checked at all (it holds no manifest): not a difference."""

    @property
    def ok(self) -> bool:
        """Whether the target was checked and equals the source."""
        return self.checked and not self.problems

    @property
    def status(self) -> str:
        """``"equal"``, ``"different"`` or ``"unchecked"`` (no manifest to check against)."""
        if not self.checked:
            return "unchecked"
        return "equal" if self.ok else "different"

    def _rows(self) -> list[dict[str, str]]:
        what = "array" if self.kind == "objects" else "variable"
        return [
            {
                what: name,
                self.kind: f"{v[self.kind]:,}",
                "differ": f"{v['differ']:,}",
                "first difference": str(v["first"]) if v["first"] is not None else "-",
            }
            for name, v in self.variables.items()
        ]

    def __repr__(self) -> str:
        state = {"equal": "equal", "different": "DIFFERENT", "unchecked": "CANNOT CHECK"}
        head = f"VerifyReport: {state[self.status]} ({self.target} vs {self.source})"
        lines = [head, *([self.summary] if self.summary else [])]
        lines += [text_table(self._rows())] if self.variables else []
        lines += [f"- {p}" for p in self.problems]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        state = {
            "equal": "equal",
            "different": "<b style='color:#b00'>different</b>",
            "unchecked": "<b>cannot check</b>",
        }[self.status]
        items = "".join(f"<li>{p}</li>" for p in self.problems)
        return (
            f"<div><b>VerifyReport</b>: {state}{html_table(self._rows())}"
            f"{f'<ul>{items}</ul>' if items else ''}</div>"
        )


def _diff_block(a: np.ndarray, b: np.ndarray, *, block_info: Any = None) -> np.ndarray:
    """Per block: how many values differ (NaN equals NaN), and the first one's index."""
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        with np.errstate(invalid="ignore"):
            bad = (a != b) & ~(np.isnan(a) & np.isnan(b))
    elif a.dtype.kind == "M" or b.dtype.kind == "M":
        bad = (a != b) & ~(np.isnat(a) & np.isnat(b))
    else:
        bad = a != b
    n = int(bad.sum())
    first = -1
    if n:
        local = np.unravel_index(int(np.argmax(bad)), bad.shape)
        offset = [lo for lo, _ in block_info[0]["array-location"]] if block_info else [0] * a.ndim
        first = (
            int(
                np.ravel_multi_index(
                    tuple(i + o for i, o in zip(local, offset, strict=True)), block_info[0]["shape"]
                )
            )
            if block_info
            else int(np.argmax(bad))
        )
    out = np.array([[n, first]], dtype=np.int64)
    return out.reshape((1,) * (a.ndim - 1) + (1, 2)) if a.ndim else out


def _collect(results: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return results


def _open_source(
    source: Any, concat_dim: Hashable | None, storage_options: Mapping[str, Any] | None
) -> tuple[xr.Dataset, str]:
    if isinstance(source, xr.Dataset):
        return source, "dataset"
    if concat_dim is None and (
        not isinstance(source, str | os.PathLike) or glob.has_magic(os.fspath(source))
    ):
        many = sorted(glob.glob(os.fspath(source))) if isinstance(source, str) else list(source)
        raise PlanError(
            f"{len(many)} source files match {source!r}: to compare them concatenated, "
            "name the dim they follow each other along (concat_dim=; CLI: --concat-dim DIM)"
            if isinstance(source, str)
            else f"{len(many)} source files: name the dim they follow each other along "
            "(concat_dim=; CLI: --concat-dim DIM)"
        )
    if concat_dim is not None:
        return sources_dataset(source, concat_dim), str(source)
    path = os.fspath(source)
    if os.path.isdir(path) or path.rstrip("/").endswith(".zarr"):
        remote = "://" in path and not path.startswith("file://")
        store = _readonly(path, storage_options if remote else None)
        return xr.open_zarr(store, chunks=None), path
    if not os.path.exists(path) and "://" not in path:
        raise FileNotFoundError(f"no source at {path}")
    need_netcdf_engine(path)
    return xr.open_dataset(path, chunks=None, cache=False), path


def verify(
    source: str | os.PathLike[str] | Sequence[str] | xr.Dataset | StoreLike,
    target: StoreLike | None = None,
    *,
    concat_dim: Hashable | None = None,
    progress: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    source_storage_options: Mapping[str, Any] | None = None,
) -> VerifyReport:
    """Compare a written store with its source: values, coordinates, attributes.

    With a store alone (``verify(store)``), check it against its manifest
    (:mod:`toolkit.coordination.manifest`), which every toolkit write keeps: every
    object of the store (chunks of data and coordinates, every metadata
    document) is read once and its checksum compared with those on record;
    objects missing, damaged or on no record are named, and ``report.summary``
    says what was covered. Nothing is written.

    Parameters
    ----------
    source : str, path, sequence of paths or Dataset
        A Zarr store, a file xarray opens, or (with ``concat_dim``) a glob or
        list of files concatenated along it, as :func:`toolkit.ingest` reads them.
    target : str, os.PathLike or zarr Store
        The written store; read aligned to its write units.
    concat_dim : hashable, optional
        For many source files: the dim they follow each other along.
    progress : bool
        Show progress.
    storage_options, source_storage_options : dict, optional
        fsspec options for a URL target and a URL source (a Zarr store).

    Returns
    -------
    VerifyReport
        ``report.ok`` is True when nothing differs; ``report.problems`` lists
        every difference, each variable's count of differing values and the
        index of the first. ``report.status`` is ``"unchecked"`` (and
        ``report.ok`` False) for a store alone that holds no manifest.

    Raises
    ------
    FileNotFoundError
        The store (or a local source) is not there. Nothing is written,
        whatever is found.

    Examples
    --------
    >>> import numpy as np
    >>> import xarray as xr
    >>> import toolkit
    >>> ds = xr.Dataset(
    ...     {"t2m": (("time", "x"), np.arange(48.0).reshape(12, 4))},
    ...     coords={"time": np.arange(12)},
    ... ).chunk({"time": 5})
    >>> _ = toolkit.to_zarr(ds, "example.zarr", progress=False)
    >>> toolkit.verify(ds, "example.zarr", progress=False).ok
    True
    """
    if target is None:
        return _verify_manifest(source, storage_options)  # type: ignore[arg-type]
    got = open_zarr(_readonly(target, storage_options))
    want, label = _open_source(source, concat_dim, source_storage_options)
    problems: list[str] = []
    missing = [str(n) for n in want.data_vars if n not in got.data_vars]
    extra = [str(n) for n in got.data_vars if n not in want.data_vars]
    if missing:
        problems.append(f"variables missing from the target: {', '.join(missing)}")
    if extra:
        problems.append(f"variables only in the target: {', '.join(extra)}")
    for name in sorted(set(want.coords) | set(got.coords), key=str):
        if name not in got.coords or name not in want.coords:
            problems.append(f"coordinate {name!r} is in only one of them")
        elif not want[name].variable.equals(got[name].variable):
            problems.append(f"coordinate {name!r} differs")
    if want.attrs != got.attrs:
        problems.append("the dataset attributes differ")
    lazy: dict[str, da.Array] = {}
    for name in want.data_vars:
        if name not in got.data_vars:
            continue
        a, b = got[name], want[name]
        if a.dims != b.dims or a.shape != b.shape:
            problems.append(f"{name!r}: dims/shape {a.dims}{a.shape} against {b.dims}{b.shape}")
            continue
        if a.attrs != b.attrs:
            problems.append(f"{name!r}: attributes differ")
        x = a.data
        y = b.chunk(dict(zip(b.dims, x.chunks, strict=True))).data
        lazy[str(name)] = da.map_blocks(
            _diff_block,
            x,
            y,
            dtype=np.int64,
            new_axis=x.ndim,
            chunks=(*((1,) * len(c) for c in x.chunks), (2,)),
            name=f"toolkit-verify-{name}",
        )
    nblocks = sum(v.npartitions for v in lazy.values())
    computed: dict[str, np.ndarray] = {}
    if lazy:
        computed = executor().compute(
            delayed(_collect)(lazy),
            callbacks=progress_bar(progress, nblocks, "toolkit verify", "toolkit-verify"),
        )
    variables: dict[str, dict[str, Any]] = {}
    for name, res in computed.items():
        flat = np.asarray(res).reshape(-1, 2)
        differ = int(flat[:, 0].sum())
        firsts = flat[flat[:, 1] >= 0, 1]
        shape = got[name].shape
        first = (
            [int(i) for i in np.unravel_index(int(firsts.min()), shape)] if firsts.size else None
        )
        variables[name] = {"values": int(np.prod(shape)), "differ": differ, "first": first}
        if differ:
            problems.append(f"{name!r}: {differ:,} values differ, the first at index {first}")
    tlabel = store_label(target)
    return VerifyReport(tlabel, label, variables, problems)


_NO_MANIFEST = (
    "the store holds no manifest (every toolkit write leaves one: to_zarr, append, "
    "partition overwrite, region write, ingest, copy, rechunk; this store was written "
    "otherwise); compare it with its source instead: toolkit.verify(source, store) "
    "(CLI: toolkit verify SRC STORE)"
)


def _verify_manifest(
    target: StoreLike, storage_options: Mapping[str, Any] | None = None, *, batch: int = 256
) -> VerifyReport:
    """Every object of the store read once, checked against the manifest; nothing written.

    Every key of the group (but toolkit's own state under ``.toolkit/``) is
    read: its checksum must be one the manifest has on record for it (a
    metadata document must also parse), every key on record must be there
    (unless a write deleted it), and no object may be there that no write
    recorded. Chunks beyond their array's shape (an append's rows not yet
    published, or a killed job's) are counted apart, not checked.
    """
    import asyncio

    from zarr.buffer import default_buffer_prototype

    url = target if isinstance(target, str) else None
    store = wrap_store(_readonly(target, storage_options), Throttle.for_url(url) if url else None)
    label = store_label(target)

    async def listed() -> list[str]:
        return [k async for k in store.list_prefix("")]

    async def manifests() -> tuple[Any, list[str]]:
        # The root's manifest beside the listing; then those of groups that other
        # writes made (to_zarr(..., group=...)) keep their own: the store's is all of them.
        everything, manifest = await asyncio.gather(listed(), aread_manifest(store))
        mark = f"{RESERVED_PREFIX}/manifest"
        groups = sorted({k.split(f"/{mark}", 1)[0] for k in everything if f"/{mark}" in k})
        for other in await asyncio.gather(*(aread_manifest(store, g) for g in groups)):
            manifest.merge(other)
        return manifest, [k for k in everything if not _skipped(k)]

    manifest, listing = sync(manifests())
    if not manifest:
        return VerifyReport(
            label, "manifest", {}, [], summary=_NO_MANIFEST, kind="objects", checked=False
        )

    async def check(keys: list[str]) -> list[tuple[str, bytes | None]]:
        async def fetch(key: str) -> tuple[str, bytes | None]:
            buf = await store.get(key, default_buffer_prototype())
            return key, None if buf is None else buf.to_bytes()

        return list(await asyncio.gather(*(fetch(k) for k in keys)))

    present = set(listing)
    keys = sorted(present | {k for k in manifest.digests if not _skipped(k)})
    problems: list[str] = []
    variables: dict[str, dict[str, Any]] = {}
    contents: dict[str, bytes] = {}
    counts = {"chunks": 0, "metadata": 0}
    beyond: list[str] = []
    # The metadata documents first: they say which chunks lie within their arrays.
    ordered = [k for k in keys if is_metadata(k)] + [k for k in keys if not is_metadata(k)]
    grids: dict[str, Any] | None = None
    for i in range(0, len(ordered), batch):
        for key, data in sync(check(ordered[i : i + batch])):
            meta = is_metadata(key)
            if meta and data is not None:
                contents[key] = data
            if not meta and grids is None:
                grids = _grids(contents)
            if not meta and data is not None and _beyond(key, grids or {}):
                # No reader reads it (an append's rows not yet published, or a killed
                # job's): counted apart, and checked only if a write recorded it.
                beyond.append(key)
                if key not in manifest.digests:
                    continue
            entry = variables.setdefault(_owner(key), {"objects": 0, "differ": 0, "first": None})
            problem = _judge(key, data, manifest)
            if data is not None or problem:
                entry["objects"] += 1
                counts["metadata" if meta else "chunks"] += 1
            if problem:
                entry["differ"] += 1
                entry["first"] = entry["first"] or key
                problems.append(f"{key}: {problem}")
    problems += _copy_behind(contents)
    summary = (
        f"{counts['chunks'] + counts['metadata']:,} objects: {counts['chunks']:,} chunks, "
        f"{counts['metadata']:,} metadata documents"
    )
    if beyond:
        summary += (
            f"; {len(beyond):,} chunks beyond their arrays' shape (rows not yet published, "
            "or a killed job's) not counted as data"
        )
    return VerifyReport(label, "its manifest", variables, problems, summary=summary, kind="objects")


def _readonly(target: StoreLike, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The target's store, read-only; FileNotFoundError for a store that is not there.

    Checked before anything opens it: zarr's LocalStore makes its directory when
    opened for writing, and a check must leave no trace.
    """
    local = isinstance(target, str | os.PathLike) and "://" not in os.fspath(target)
    if local and not os.path.exists(target):  # type: ignore[arg-type]
        raise FileNotFoundError(f"no store at {os.fspath(target)}")  # type: ignore[arg-type]
    store = resolve_store(target, storage_options=storage_options)
    store = store if store.read_only else store.with_read_only(True)
    # Through the URL's retries: a client's refusal arrives as toolkit's error.
    remote = not local and isinstance(target, str)
    if remote and not _holds_anything(wrap_store(store, Throttle.for_url(str(target)))):
        raise FileNotFoundError(f"no store at {target}")
    return store


def _holds_anything(store: Any) -> bool:
    """Whether a store holds at least one object (one listing request)."""

    async def first() -> bool:
        async for _ in store.list_prefix(""):
            return True
        return False

    return bool(sync(first()))


def _skipped(key: str) -> bool:
    """Toolkit's own state, and a killed local write's temporary files: no dataset objects."""
    return key.startswith(".toolkit/") or "/.toolkit/" in key or key.endswith(".partial")


def _owner(key: str) -> str:
    """The array (or group) an object belongs to, for the report's rows."""
    if "/c/" in key or key.startswith("c/"):
        return key.split("/c/")[0] if "/c/" in key else "/"
    head, _, _ = key.rpartition("/")
    return head or "/"


def _judge(key: str, data: bytes | None, manifest: Any) -> str | None:
    """What is wrong with one object, or None."""
    on_record = manifest.digests.get(key)
    if data is None:
        if on_record and key not in manifest.deleted:
            return "missing"
        return None
    if on_record is None:
        return "not on record (no write recorded it)"
    if not matches(data, on_record):
        return "checksum differs (damaged, or changed outside toolkit)"
    if is_metadata(key):
        try:
            json.loads(data)
        except ValueError:
            return "not a readable metadata document"
    return None


def _grids(contents: Mapping[str, bytes]) -> dict[str, tuple[list[int], list[int], str, str]]:
    """Per array path: its shape, chunk grid, key encoding and separator."""
    out = {}
    for key, data in contents.items():
        name = key.rsplit("/", 1)[-1]
        if name not in ("zarr.json", ".zarray"):
            continue
        try:
            doc = json.loads(data)
        except ValueError:
            continue
        if doc.get("node_type", "array") != "array" or "shape" not in doc:
            continue
        path = key.rsplit("/", 1)[0] if "/" in key else ""
        if name == "zarr.json":
            grid = doc["chunk_grid"]["configuration"]["chunk_shape"]
            enc = doc.get("chunk_key_encoding") or {}
            sep = (enc.get("configuration") or {}).get("separator", "/")
            out[path] = (list(doc["shape"]), list(grid), enc.get("name", "default"), sep)
        else:
            sep = doc.get("dimension_separator") or "."
            out[path] = (list(doc["shape"]), list(doc["chunks"]), "v2", sep)
    return out


def _beyond(key: str, grids: Mapping[str, tuple[list[int], list[int], str, str]]) -> bool:
    """Whether a chunk key lies beyond its array's shape (no reader reads it)."""
    for path, (shape, grid, enc, sep) in grids.items():
        prefix = f"{path}/" if path else ""
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if enc == "default":
            if not rest.startswith(f"c{sep}") and rest != "c":
                continue
            rest = rest[2:]
        parts = rest.split(sep)
        if len(parts) != len(shape) or not all(p.isdigit() for p in parts):
            continue
        return any(
            int(i) * c >= n and not (n == 0 and int(i) == 0)
            for i, c, n in zip(parts, grid, shape, strict=True)
        )
    return False


def _copy_behind(contents: Mapping[str, bytes]) -> list[str]:
    """The consolidated copy of the metadata, where it disagrees with the arrays' documents."""
    out = []
    for key, data in contents.items():
        if key.rsplit("/", 1)[-1] not in ("zarr.json", ".zmetadata"):
            continue
        try:
            doc = json.loads(data)
        except ValueError:
            continue
        meta = (doc.get("consolidated_metadata") or {}).get("metadata") or doc.get("metadata")
        if not isinstance(meta, dict):
            continue
        root = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        for rel, entry in meta.items():
            if not isinstance(entry, dict) or "shape" not in entry:
                continue
            own_key = f"{root}{rel}" if rel.endswith(".zarray") else f"{root}{rel}/zarr.json"
            own = contents.get(own_key)
            if own is None:
                continue
            try:
                shape = json.loads(own).get("shape")
            except ValueError:
                continue
            if shape is not None and list(shape) != list(entry["shape"]):
                out.append(
                    f"{key}: its copy of {rel.removesuffix('/.zarray')!r} says shape "
                    f"{entry['shape']}, the array says {shape}: readers that open through "
                    "consolidated metadata see another shape (a publication cut short; the "
                    "next toolkit write to the store brings the copy along)"
                )
    return out
