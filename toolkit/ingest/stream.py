"""Stream ingest: pieces gathered into whole units, written by a bounded pool of appenders."""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import math
import os
import queue
import threading
import warnings
from collections.abc import AsyncIterable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal

import xarray as xr

from toolkit.errors import IngestError, PlanError, WriteError
from toolkit.ingest.files import _layout_of
from toolkit.ingest.sources import _no_dim
from toolkit.io.metrics import IOMetrics
from toolkit.io.stores import StoreLike, store_label
from toolkit.io.throttle import Throttle
from toolkit.write.execute import write_dataset
from toolkit.write.manyjobs import append
from toolkit.write.plan import WriteMode
from toolkit.write.report import WriteReport

__all__: list[str] = []


def _is_stream(sources: object) -> bool:
    if isinstance(sources, str | os.PathLike | xr.Dataset):
        return False
    if hasattr(sources, "__aiter__"):
        return True
    return not isinstance(sources, Sequence) or any(isinstance(s, xr.Dataset) for s in sources)


_CLOSE_SECONDS = 10.0
"""How long each step of closing an async stream may take (cancel its read, ``aclose``)."""


class _SyncPieces:
    """The pieces of an iterable; ``close`` closes its iterator (a generator's ``finally`` runs)."""

    def __init__(self, sources: Iterable[Any]) -> None:
        self._it = iter(sources)

    def __iter__(self) -> _SyncPieces:
        return self

    def __next__(self) -> Any:
        return next(self._it)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class _AsyncPieces:
    """The pieces of an async iterable, read on an event loop in a thread of its own.

    The next piece is read while the consumer handles the last one (one ahead).
    ``close`` cancels a read in flight, closes the iterator (``aclose``) on its
    loop, stops the loop and joins the thread, each step within ``_CLOSE_SECONDS``.
    """

    def __init__(self, sources: AsyncIterable[Any]) -> None:
        self._ait = aiter(sources)
        self._loop = asyncio.new_event_loop()
        self._reading: asyncio.Task[Any] | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="toolkit-ingest-aiter", daemon=True)
        self._thread.start()
        self._next: concurrent.futures.Future[tuple[str, Any]] | None = self._request()

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:  # as asyncio.run ends: async generators closed, executor threads joined
                loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), _CLOSE_SECONDS))
                loop.run_until_complete(
                    asyncio.wait_for(loop.shutdown_default_executor(), _CLOSE_SECONDS)
                )
            except Exception:  # best effort: close() reports a thread that does not end
                pass
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _read(self) -> tuple[str, Any]:
        self._reading = asyncio.current_task()
        try:
            return "piece", await anext(self._ait)
        except StopAsyncIteration:
            return "end", None
        except BaseException as e:  # KeyboardInterrupt too: raised in the consumer, not the loop
            if self._closing and isinstance(e, asyncio.CancelledError):
                raise
            return "error", e

    def _request(self) -> concurrent.futures.Future[tuple[str, Any]]:
        return asyncio.run_coroutine_threadsafe(self._read(), self._loop)

    def __iter__(self) -> _AsyncPieces:
        return self

    def __next__(self) -> Any:
        if self._next is None:
            raise StopIteration
        kind, item = self._next.result()
        self._next = self._request() if kind == "piece" else None  # the next, read ahead
        if kind == "end":
            raise StopIteration
        if kind == "error":
            raise item
        return item

    async def _aclose(self) -> None:
        reading = self._reading
        if reading is not None and not reading.done():
            reading.cancel()
            await asyncio.wait([reading])
        aclose = getattr(self._ait, "aclose", None)
        if aclose is not None:
            await aclose()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            closing = asyncio.run_coroutine_threadsafe(self._aclose(), self._loop)
            try:
                closing.result(_CLOSE_SECONDS)
            except TimeoutError:
                closing.cancel()
                raise TimeoutError(
                    f"the stream did not close within {_CLOSE_SECONDS:g} s"
                ) from None
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(3 * _CLOSE_SECONDS)
        if self._thread.is_alive():
            raise TimeoutError(f"{self._thread.name} did not end within {3 * _CLOSE_SECONDS:g} s")


def _stream_pieces(sources: Any) -> _SyncPieces | _AsyncPieces:
    """Pieces of a sync or async iterable, one at a time; ``close()`` closes the source."""
    if hasattr(sources, "__aiter__"):
        return _AsyncPieces(sources)
    return _SyncPieces(sources)


class _Buffer:
    """The steps of a stream accepted and not yet handed to the writer, along ``dim``."""

    def __init__(self, dim: Hashable) -> None:
        self.dim = dim
        self.pieces: list[xr.Dataset] = []
        self.steps = 0

    def add(self, piece: xr.Dataset) -> None:
        self.pieces.append(piece)
        self.steps += piece.sizes[self.dim]

    def cut(self, n: int) -> xr.Dataset:
        """The first ``n`` buffered steps as one dataset; the rest stays buffered."""
        joined = self.pieces[0]
        if len(self.pieces) > 1:
            joined = xr.concat(
                self.pieces,
                dim=self.dim,
                data_vars="minimal",
                coords="minimal",
                compat="override",
                join="override",
            )
        head, rest = joined.isel({self.dim: slice(0, n)}), joined.isel({self.dim: slice(n, None)})
        self.pieces = [rest] if rest.sizes[self.dim] else []
        self.steps = rest.sizes[self.dim]
        return head


class _Destination:
    """Where a stream's batches go: the first creates the dataset, the others append.

    ``encoding`` is the stream's layout, set from its first piece.
    """

    def __init__(
        self,
        target: StoreLike,
        dim: Hashable,
        mode: WriteMode,
        zarr_format: Literal[2, 3],
        storage_options: Mapping[str, Any] | None,
        throttle: Throttle | Literal[False] | None,
    ) -> None:
        self.target, self.dim, self.mode, self.zarr_format = target, dim, mode, zarr_format
        self.options: dict[str, Any] = {"storage_options": storage_options, "throttle": throttle}
        self.encoding: dict[Hashable, dict[str, Any]] = {}
        self.created = False

    def write(self, batch: xr.Dataset) -> WriteReport:
        """Write one batch (in the writer's thread, one at a time)."""
        if not self.created:
            self.created = True
            out = write_dataset(
                batch,
                self.target,
                mode=self.mode,
                encoding=self.encoding,
                zarr_format=self.zarr_format,
                progress=False,
                **self.options,
            )
        else:
            out = append(batch, self.target, self.dim, progress=False, **self.options)
        assert isinstance(out, WriteReport)
        return out


class _Writer:
    """Appends whole-unit batches in order, in a thread, with at most ``depth`` queued.

    ``put`` blocks while the queue is full: the producer waits for the store
    (backpressure). Each append writes its units with parallel tasks. After a
    failed write the batches behind it are skipped: ``landed`` counts the steps
    of the batches written, ``failed`` is the span of steps of the one that failed.
    """

    def __init__(self, write: Any, depth: int) -> None:
        self._write = write
        self._queue: queue.Queue[tuple[xr.Dataset, int] | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.failed: tuple[int, int] = (0, 0)
        self.landed = 0
        self.reports: list[WriteReport] = []
        self._thread = threading.Thread(target=self._run, name="toolkit-ingest-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            batch, steps = item
            if self.error is not None:
                continue
            try:
                self.reports.append(self._write(batch))
            except BaseException as e:  # raised in the producer
                self.error = e
                self.failed = (self.landed, self.landed + steps)
            else:
                self.landed += steps

    def put(self, batch: xr.Dataset, steps: int) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put((batch, steps))

    def close(self) -> None:
        """Let the batches queued land (or be skipped after a failure), and join the thread."""
        self._queue.put(None)
        self._thread.join()


def _check_piece(piece: Any, first: xr.Dataset, concat_dim: Hashable, last: Any, n: int) -> None:
    """Raise before a piece that does not fit the stream is written."""
    where = f"piece {n} of the stream"
    if not isinstance(piece, xr.Dataset):
        raise IngestError(f"{where} is a {type(piece).__name__}, not an xarray.Dataset")
    if concat_dim not in piece.dims:
        raise _no_dim(where, concat_dim, list(piece.dims))
    if set(piece.data_vars) != set(first.data_vars):
        extra = set(piece.data_vars) ^ set(first.data_vars)
        raise IngestError(
            f"{where} holds other variables than piece 0 "
            f"({', '.join(sorted(map(str, extra)))} in one only)"
        )
    for name, v in piece.data_vars.items():
        f = first[name]
        if v.dims != f.dims or v.dtype != f.dtype:
            raise IngestError(
                f"{where}: {name!r} is {v.dtype} over {v.dims}, but {f.dtype} over {f.dims} "
                "in piece 0"
            )
        other = [s for d, s in zip(v.dims, v.shape, strict=True) if d != concat_dim]
        if other != [s for d, s in zip(f.dims, f.shape, strict=True) if d != concat_dim]:
            raise IngestError(f"{where}: {name!r} has shape {v.shape} against {f.shape} in piece 0")
    for name, c in first.coords.items():
        if concat_dim in c.dims:
            continue
        if name not in piece.coords or not piece[name].variable.equals(c.variable):
            raise IngestError(f"{where}: coordinate {name!r} differs from piece 0's")
    if concat_dim in piece.coords and piece.sizes[concat_dim]:
        values = piece[concat_dim].values
        if (values.size > 1 and not (values[1:] > values[:-1]).all()) or (
            last is not None and not values[0] > last
        ):
            raise IngestError(
                f"{where}: its {concat_dim!r} values do not follow the previous ones "
                "(they must increase, without overlap)"
            )


def _ingest_stream(
    sources: Any,
    target: StoreLike,
    *,
    concat_dim: Hashable,
    chunks: Mapping[Hashable, int],
    shards: Mapping[Hashable, int],
    encoding: Mapping[Hashable, Mapping[str, Any]] | None,
    mode: WriteMode,
    zarr_format: Literal[2, 3],
    max_writers: int | None,
    max_buffer_bytes: int | None,
    storage_options: Mapping[str, Any] | None,
    throttle: Throttle | Literal[False] | None,
    progress: bool,
) -> WriteReport:
    """Buffer pieces into whole units along ``concat_dim`` and append them in batches.

    On every way out (the end, a refused piece, the stream's own error, a failed
    write, an interruption) the stream is closed and the threads started here
    are joined. When the stream stops early, the pieces accepted so far are
    written (the partial last unit too), unless a write failed or the caller was
    interrupted; the error says how many pieces and steps landed.
    """
    pieces = _stream_pieces(sources)
    buffered = _Buffer(concat_dim)
    first: xr.Dataset | None = None
    last = None
    unit = 0
    batch_units = 0
    writer: _Writer | None = None
    sent = 0  # steps handed to the writer
    ends: list[int] = []  # steps accepted through each piece
    bar = _stream_bar(progress)
    dest = _Destination(target, concat_dim, mode, zarr_format, storage_options, throttle)

    def send(n: int) -> None:
        """Hand the first ``n`` buffered steps to the writer (blocks while it is behind)."""
        nonlocal sent
        assert writer is not None
        batch = buffered.cut(n)
        writer.put(batch, n)
        sent += n
        bar(sent, batch.nbytes)

    failure: BaseException | None = None
    stage = "read"  # what was being done when the stream stopped
    try:
        for piece in pieces:
            stage = "check"
            if first is None:
                if not isinstance(piece, xr.Dataset):
                    raise IngestError(f"piece 0 of the stream is a {type(piece).__name__}")
                first = piece
                dest.encoding, unit, batch_units = _stream_layout(
                    piece, concat_dim, chunks, shards, encoding, max_writers, max_buffer_bytes
                )
                writer = _Writer(dest.write, depth=1)
            _check_piece(piece, first, concat_dim, last, len(ends))
            if concat_dim in piece.coords and piece.sizes[concat_dim]:
                last = piece[concat_dim].values[-1]
            stage = "load"
            loaded = piece.load()
            stage = "write"
            buffered.add(loaded)
            ends.append((ends[-1] if ends else 0) + loaded.sizes[concat_dim])
            while buffered.steps >= unit * batch_units:
                send(unit * batch_units)
            stage = "read"
        stage = "check"
        if first is None:
            raise IngestError("the stream gave no piece")
        stage = "write"
        if buffered.steps:  # the last, partial unit, once
            send(buffered.steps)
    except BaseException as e:  # the stream stops: closed, and what was accepted lands
        failure = e
    close_error: Exception | None = None
    try:
        try:
            pieces.close()
        except Exception as e:  # reported with what landed
            close_error = e
    finally:
        try:
            if writer is not None:
                if isinstance(failure, Exception) and writer.error is None and buffered.steps:
                    with contextlib.suppress(Exception):  # a failed write: writer.error
                        send(buffered.steps)  # the pieces accepted before the stream stopped
                writer.close()  # what was queued lands (or fails)
        finally:
            bar(None, 0)
    if failure is None and writer is not None and writer.error is None:
        if close_error is not None:
            warnings.warn(
                f"the stream did not close: {_describe(close_error)}", RuntimeWarning, stacklevel=3
            )
        return _merge_reports(writer.reports)
    raise _stream_error(
        failure, stage, writer, ends, close_error, concat_dim, dest.encoding, first, target
    )


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _landed(
    ends: Sequence[int], steps: int, concat_dim: Hashable, chunk: int | None, where: str
) -> str:
    """What of a stream landed: ``5 pieces (18 steps along 'time', 5 chunks of 4) landed in …``."""
    if not steps:
        return f"nothing landed in {where}"
    whole = bisect.bisect_right(ends, steps)
    text = f"{whole} piece{'s' if whole != 1 else ''}"
    before = ends[whole - 1] if whole else 0
    if whole < len(ends) and steps > before:
        text += (
            f" and the first {steps - before} of the {ends[whole] - before} steps of piece {whole}"
        )
    size = f"{steps} steps along {concat_dim!r}"
    if chunk:
        size += f", {-(-steps // chunk)} chunks of {chunk}"
    return f"{text} ({size}) landed in {where}"


def _stream_error(
    failure: BaseException | None,
    stage: str,
    writer: _Writer | None,
    ends: Sequence[int],
    close_error: Exception | None,
    concat_dim: Hashable,
    enc: Mapping[Hashable, Mapping[str, Any]],
    first: xr.Dataset | None,
    target: StoreLike,
) -> BaseException:
    """The error a stream that stopped early raises: it says what landed, and why it stopped.

    The stream's own error, a refusal or a failed write is chained (``raise ... from``)
    under an :class:`~toolkit.errors.IngestError` (a refused piece, the stream's
    error) or a :class:`~toolkit.errors.WriteError` (a failed write). An
    interruption (``KeyboardInterrupt``, ``SystemExit``, cancellation) is raised
    as it is, with a note.
    """
    landed = writer.landed if writer is not None else 0
    where = (
        writer.reports[0].target if writer is not None and writer.reports else store_label(target)
    )
    chunk = None
    for name, e in enc.items():
        if first is not None and concat_dim in first[name].dims:
            chunk = int(e["chunks"][first[name].dims.index(concat_dim)])
            break
    status = _landed(ends, landed, concat_dim, chunk, where) + " and the stream was closed"
    werr = writer.error if writer is not None else None
    extra = []
    if werr is not None and failure is not werr and failure is not None:
        assert writer is not None
        a, b = writer.failed
        extra.append(f"writing steps {a}-{b} failed: {_describe(werr)}")
    if unwritten := (ends[-1] if ends else 0) - landed:
        extra.append(f"{unwritten} accepted steps were not written")
    if close_error is not None:
        extra.append(f"closing the stream failed: {_describe(close_error)}")
    tail = "".join(f"; {x}" for x in extra)
    if failure is None or failure is werr:  # a write failed
        assert writer is not None and werr is not None
        a, b = writer.failed
        if not landed and isinstance(werr, PlanError):  # refused before anything was written
            werr.add_note(f"toolkit.ingest: {status}{tail}")
            return werr
        out: BaseException = WriteError(
            f"{status}; writing steps {a}-{b} failed: {_describe(werr)}{tail}",
            getattr(werr, "record", None),
        )
        out.__cause__ = werr
        return out
    if not isinstance(failure, Exception):  # interrupted: raised as it is
        failure.add_note(f"toolkit.ingest: {status}{tail}")
        return failure
    n = len(ends)
    if stage == "check" and not ends and not landed and werr is None:
        return failure  # the first piece (or none) refused: nothing was accepted
    if stage == "check":
        reason = (
            str(failure)
            if isinstance(failure, IngestError)
            else (f"piece {n} was refused: {_describe(failure)}")
        )
    elif stage == "read":
        reason = f"reading piece {n} raised {_describe(failure)}"
    elif stage == "load":
        reason = f"loading piece {n} raised {_describe(failure)}"
    else:
        reason = _describe(failure)
    out = IngestError(f"{status}; {reason}{tail}")
    out.__cause__ = failure
    return out


def _stream_layout(
    piece: xr.Dataset,
    concat_dim: Hashable,
    chunks: Mapping[Hashable, int],
    shards: Mapping[Hashable, int],
    encoding: Mapping[Hashable, Mapping[str, Any]] | None,
    max_writers: int | None,
    max_buffer_bytes: int | None,
) -> tuple[dict[Hashable, dict[str, Any]], int, int]:
    """Encoding, the unit length along ``concat_dim`` and the units per batch."""
    step_bytes = max(
        1,
        sum(
            v.dtype.itemsize * v.size // max(piece.sizes[concat_dim], 1)
            for v in piece.data_vars.values()
            if concat_dim in v.dims
        ),
    )
    if concat_dim not in chunks:
        # zarr's guess needs the full length; aim at ~4 MiB chunks instead.
        chunks = {**chunks, concat_dim: max(1, 4 * 2**20 // step_bytes)}
    enc: dict[Hashable, dict[str, Any]] = {}
    unit = 1
    for name, v in piece.data_vars.items():
        if concat_dim not in v.dims:
            continue
        along = max(chunks[concat_dim], shards.get(concat_dim, 1))  # the stream's length is unknown
        full = tuple(along if d == concat_dim else max(n, 1) for d, n in zip(v.dims, v.shape))
        c, sh = _layout_of(v.dims, v.dtype, full, chunks, shards)
        c = tuple(
            chunks[concat_dim] if d == concat_dim else x for d, x in zip(v.dims, c, strict=True)
        )
        if sh:
            sh = tuple(
                shards.get(d, x) if d == concat_dim else x for d, x in zip(v.dims, sh, strict=True)
            )
        enc[name] = {
            "chunks": c,
            **({"shards": sh} if sh else {}),
            **dict((encoding or {}).get(name, {})),
        }
        unit = math.lcm(unit, (sh or c)[v.dims.index(concat_dim)])
    writers = max_writers or max(2, 2 * (os.cpu_count() or 2))
    budget = max_buffer_bytes or 256 * 2**20
    # A batch is at most max_writers units, and two batches (one queued, one
    # being written) fit in the buffer budget with the pieces being gathered.
    fit = max(1, budget // 3 // max(unit * step_bytes, 1))
    return enc, unit, max(1, min(writers, fit))


def _stream_bar(enabled: bool) -> Any:
    """Progress of a stream: steps written and bytes so far, with rate (total unknown)."""
    if not enabled:
        return lambda done, nbytes: None
    from tqdm.auto import tqdm

    bar = tqdm(desc="toolkit ingest", unit="B", unit_scale=True, unit_divisor=1024)

    def update(done: int | None, nbytes: int) -> None:
        if done is None:
            bar.close()
            return
        bar.update(nbytes)
        bar.set_postfix(steps=done)

    return update


def _merge_reports(reports: Sequence[WriteReport]) -> WriteReport:
    """One report for the appends of a stream."""
    from dataclasses import replace

    head = reports[0]
    return replace(
        head,
        tasks=sum(r.tasks for r in reports),
        units=sum(r.units for r in reports),
        nbytes=sum(r.nbytes for r in reports),
        stored_bytes=sum(r.stored_bytes for r in reports),
        seconds=sum(r.seconds for r in reports),
        metadata_seconds=sum(r.metadata_seconds for r in reports),
        requests={k: sum(r.requests.get(k, 0) for r in reports) for k in head.requests},
        io=IOMetrics.merged([r.io for r in reports]),
    )
