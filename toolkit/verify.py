"""Verify a written store against its sources, block by block, in parallel.

:func:`verify` opens the target aligned to its write units and the source
with the same dask chunks (a store or file xarray opens, or many files
concatenated as :func:`toolkit.ingest` reads them), then compares every
variable block by block (NaN equals NaN), the coordinates and the attributes,
and reports every difference it found.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import delayed

from toolkit._render import html_table, text_table
from toolkit.cluster.progress import compute_with_progress
from toolkit.ingest import sources_dataset
from toolkit.io.stores import StoreLike, resolve_store, store_label
from toolkit.io.wrappers import digest, wrap_store
from toolkit.read import open_zarr
from toolkit.state.records import read_manifest

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
        (the index of the first differing value, when any).
    problems : list of str
        Every difference found: values, missing or extra variables,
        coordinates, attributes.
    """

    target: str
    source: str
    variables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    problems: Sequence[str] = ()

    @property
    def ok(self) -> bool:
        """Whether the target equals the source."""
        return not self.problems

    def _rows(self) -> list[dict[str, str]]:
        return [
            {
                "variable": name,
                "values": f"{v['values']:,}",
                "differ": f"{v['differ']:,}",
                "first difference": str(v["first"]) if v["first"] is not None else "-",
            }
            for name, v in self.variables.items()
        ]

    def __repr__(self) -> str:
        head = (
            f"VerifyReport: {'equal' if self.ok else 'DIFFERENT'} ({self.target} vs {self.source})"
        )
        lines = [head, text_table(self._rows())]
        lines += [f"- {p}" for p in self.problems]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        state = "equal" if self.ok else "<b style='color:#b00'>different</b>"
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
        first = int(np.ravel_multi_index(
            tuple(i + o for i, o in zip(local, offset, strict=True)), block_info[0]["shape"]
        )) if block_info else int(np.argmax(bad))  # fmt: skip
    out = np.array([[n, first]], dtype=np.int64)
    return out.reshape((1,) * (a.ndim - 1) + (1, 2)) if a.ndim else out


def _collect(results: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return results


def _open_source(source: Any, concat_dim: Hashable | None) -> tuple[xr.Dataset, str]:
    if isinstance(source, xr.Dataset):
        return source, "dataset"
    if (isinstance(source, str | os.PathLike) and os.path.isdir(source)) or (
        isinstance(source, str) and source.rstrip("/").endswith(".zarr")
    ):
        return xr.open_zarr(source, chunks=None), str(source)
    if concat_dim is not None:
        return sources_dataset(source, concat_dim), str(source)
    return xr.open_dataset(source, chunks=None, cache=False), str(source)


def verify(
    source: str | os.PathLike[str] | Sequence[str] | xr.Dataset | StoreLike,
    target: StoreLike | None = None,
    *,
    concat_dim: Hashable | None = None,
    progress: bool = True,
) -> VerifyReport:
    """Compare a written store with its source: values, coordinates, attributes.

    With a store alone (``verify(store)``), check it against the checksum
    manifest that :func:`toolkit.ingest` of files and :func:`toolkit.jobs.copy`
    leave in it: every object is read once and its checksum compared. Other
    writes, and ingest of a stream, leave none; the report then says so.

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

    Returns
    -------
    VerifyReport
        ``report.ok`` is True when nothing differs; ``report.problems`` lists
        every difference, each variable's count of differing values and the
        index of the first.

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
        return _verify_manifest(source)  # type: ignore[arg-type]
    got = open_zarr(target)
    want, label = _open_source(source, concat_dim)
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
            _diff_block, x, y, dtype=np.int64, new_axis=x.ndim,
            chunks=(*((1,) * len(c) for c in x.chunks), (2,)),
            name=f"toolkit-verify-{name}",
        )  # fmt: skip
    nblocks = sum(v.npartitions for v in lazy.values())
    computed: dict[str, np.ndarray] = {}
    if lazy:
        computed = compute_with_progress(
            delayed(_collect)(lazy),
            total=nblocks,
            desc="toolkit verify",
            prefix="toolkit-verify",
            enabled=progress,
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
    "the store holds no checksum manifest: toolkit.ingest of files and toolkit.jobs.copy "
    "leave one (with resume=True, the default), other writes (to_zarr, appends, ingest of "
    "a stream) do not; compare the store with its source instead: "
    "toolkit.verify(source, store) (CLI: verify SRC DST)"
)


def _verify_manifest(target: StoreLike, *, batch: int = 64) -> VerifyReport:
    """Every object listed in the target's manifest, read and checked."""
    import asyncio

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store = wrap_store(resolve_store(target), None)
    label = store_label(target)
    manifest = read_manifest(store)
    if not manifest:
        return VerifyReport(label, "manifest", {}, [_NO_MANIFEST])

    async def check(keys: list[str]) -> list[tuple[str, str | None]]:
        async def one(key: str) -> tuple[str, str | None]:
            buf = await store.get(key, default_buffer_prototype())
            return key, None if buf is None else digest(buf.to_bytes())

        return list(await asyncio.gather(*(one(k) for k in keys)))

    keys = sorted(manifest)
    variables: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for i in range(0, len(keys), batch):
        for key, found in sync(check(keys[i : i + batch])):
            var = key.split("/c/")[0] if "/c/" in key else key.rsplit("/", 1)[0]
            entry = variables.setdefault(var, {"values": 0, "differ": 0, "first": None})
            entry["values"] += 1
            if found != manifest[key]:
                entry["differ"] += 1
                entry["first"] = entry["first"] or key
                problems.append(f"{key}: {'missing' if found is None else 'checksum differs'}")
    return VerifyReport(label, "its checksum manifest", variables, problems)
