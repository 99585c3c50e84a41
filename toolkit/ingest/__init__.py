"""Many source files into one chunk-aligned Zarr store along a dimension.

:func:`ingest` reads each source's header once (in parallel), checks that the
sources agree, and lays out the target so that every write task owns whole
write units along ``concat_dim``. A task reads exactly the pieces of the
sources that fill its units (many one-step files feeding one unit are combined
in that unit's task), so nothing is rechunked and no graph over every file's
chunks is built: the planning, metadata, failure records, throttling and
progress are those of :func:`toolkit.to_zarr`.

In three parts: the sources and their headers (:mod:`.sources`), files as one dataset
of whole write units (:mod:`.files`), and streams of pieces (:mod:`.stream`);
:func:`ingest`, here, is the front door of both.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal

import xarray as xr
from dask.base import tokenize

from toolkit.ingest.files import _dataset, _headers, sources_dataset
from toolkit.ingest.sources import Source, read_headers
from toolkit.ingest.stream import _ingest_stream, _is_stream
from toolkit.io.stores import StoreLike, source_objects
from toolkit.io.throttle import Throttle
from toolkit.write.execute import write_resumable
from toolkit.write.plan import DEFAULT_MAX_TASK_BYTES, WriteMode
from toolkit.write.report import WriteReport

__all__ = ["Source", "ingest", "read_headers", "sources_dataset"]


def ingest(
    sources: str
    | Sequence[str | os.PathLike[str]]
    | Iterable[xr.Dataset]
    | AsyncIterable[xr.Dataset],
    target: StoreLike,
    *,
    concat_dim: Hashable,
    chunks: Mapping[Hashable, int] | None = None,
    shards: Mapping[Hashable, int] | None = None,
    encoding: Mapping[Hashable, Mapping[str, Any]] | None = None,
    mode: WriteMode = "w-",
    zarr_format: Literal[2, 3] = 3,
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES,
    open_kwargs: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    throttle: Throttle | Literal[False] | None = None,
    progress: bool = True,
    resume: bool = True,
    max_writers: int | None = None,
    max_buffer_bytes: int | None = None,
) -> WriteReport:
    """Write many source files, or a stream of pieces, along ``concat_dim`` into one Zarr store.

    **Files.** Each source's header is read once, in parallel; the sources must agree on
    variables, dims, dtypes and every coordinate but ``concat_dim``, and their
    ``concat_dim`` values must not overlap (they are written in the order of
    those values). Then each write task owns whole write units along
    ``concat_dim`` and reads only the pieces of the sources that fill them.

    **Streams** (an iterable or async iterable of ``xarray.Dataset`` pieces, of
    any length): pieces are checked against the first and buffered until whole
    write units along ``concat_dim`` are complete; batches of up to
    ``max_writers`` units are appended by a writer thread, each unit by its own
    parallel task, while the next batch is gathered. The producer blocks when a
    batch is waiting (backpressure), so memory stays near ``max_buffer_bytes``
    whatever the stream's length; the last partial unit is written once, at the
    end. A piece that does not fit raises before it is written; the pieces
    accepted before it are written (the partial last unit too) and stay. On
    every way out the stream is closed (a generator's ``close()``, an async
    generator's ``aclose()`` on its loop) and toolkit's threads are joined.

    Parameters
    ----------
    sources : str, sequence of paths, or (async) iterable of Dataset
        A glob pattern (local, or a URL fsspec expands), the files, or a stream.
    target : str, os.PathLike or zarr Store
        The Zarr store to create.
    concat_dim : hashable
        The dimension the sources follow each other along (``"time"``).
    chunks, shards : mapping of dim to int, optional
        Target chunk and shard lengths per dimension (e.g. ``{"time": 48}``);
        others take zarr's default guess.
    encoding : mapping, optional
        Per-variable encoding (compressors, fill values, ...) over the layout.
    mode : {"w-", "w"}
        Refuse (default) or replace an existing target.
    zarr_format : {2, 3}
        Target format (shards need 3).
    max_task_bytes : int
        Memory target per task.
    open_kwargs : mapping, optional
        Passed to :func:`xarray.open_dataset` for every source (``engine``, ...).
    storage_options : mapping, optional
        fsspec options for a URL target.
    throttle : Throttle, False or None
        Request budget for the target.
    progress : bool
        Show progress.
    max_writers : int, optional
        Streams: units written in parallel per batch (default twice the CPUs).
    max_buffer_bytes : int, optional
        Streams: memory for pieces being gathered and batches queued (256 MiB).
    resume : bool
        Files: keep a log of landed write tasks in the target (``.toolkit/resume/``)
        while writing, and when the same ingest (same sources, layout and
        target) was interrupted, write only the tasks it had not finished. The
        result is the store an uninterrupted run makes; the log is deleted at
        the end.

    Returns
    -------
    WriteReport
        What was written (by this run).

    Raises
    ------
    toolkit.errors.IngestError
        Before anything is written: no sources, unreadable files, or sources
        that disagree, each naming the files. Streams: a refused piece, or the
        stream's own error (chained), after the pieces accepted before it were
        written; the message says how many pieces and steps landed
        (``5 pieces (18 steps along 'time', 5 chunks of 4) landed in ...``).
    toolkit.errors.WriteError
        Streams: an append failed (its error chained); the message says what
        landed before it and how many accepted steps were not written.
    KeyboardInterrupt
        Raised as it is, once the stream is closed and the batches already
        queued have landed (pieces still buffered are not written); a note
        says what landed.

    Examples
    --------
    A stream of one-step pieces, written in whole chunks of 4 steps:

    >>> import numpy as np
    >>> import xarray as xr
    >>> import toolkit
    >>> ds = xr.Dataset(
    ...     {"t2m": (("time", "x"), np.arange(48.0).reshape(12, 4))},
    ...     coords={"time": np.arange(12)},
    ... ).chunk({"time": 5})
    >>> pieces = (ds.isel(time=slice(i, i + 1)) for i in range(12))
    >>> report = toolkit.ingest(
    ...     pieces, "cube.zarr", concat_dim="time", chunks={"time": 4}, progress=False
    ... )
    >>> toolkit.open_zarr("cube.zarr", chunks={}).t2m.chunks
    ((4, 4, 4), (4,))
    >>> toolkit.verify(ds, "cube.zarr", progress=False).ok
    True
    """
    if _is_stream(sources):
        return _ingest_stream(
            sources,
            target,
            concat_dim=concat_dim,
            chunks=dict(chunks or {}),
            shards=dict(shards or {}),
            encoding=encoding,
            mode=mode,
            zarr_format=zarr_format,
            max_writers=max_writers,
            max_buffer_bytes=max_buffer_bytes,
            storage_options=storage_options,
            throttle=throttle,
            progress=progress,
        )
    kwargs = dict(open_kwargs or {})
    ordered, kwargs = _headers(sources, concat_dim, kwargs)  # type: ignore[arg-type]
    ds, layouts, step = _dataset(
        ordered, concat_dim, kwargs, dict(chunks or {}), dict(shards or {}), max_task_bytes
    )
    enc: dict[Hashable, dict[str, Any]] = {}
    for name, (c, sh) in layouts.items():
        given = dict((encoding or {}).get(name, {}))
        enc[name] = {"chunks": c, **({"shards": sh} if sh else {}), **given}
    write_id = source = None
    if resume:
        # As in copy: the sources' contents are checked by name, not part of the identity.
        write_id = tokenize(
            [s.path for s in ordered],
            concat_dim,
            enc,
            zarr_format,
            max_task_bytes,
            step,
            dict(kwargs),
        )[:16]
        source = source_objects(s.path for s in ordered)
    return write_resumable(
        ds,
        target,
        progress=progress,
        write_id=write_id,
        mode=mode,
        encoding=enc,
        zarr_format=zarr_format,
        max_task_bytes=max_task_bytes,
        storage_options=storage_options,
        throttle=throttle,
        source=source,
    )
