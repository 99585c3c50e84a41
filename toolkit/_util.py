"""Small pieces every layer uses: one backoff, one JSON document encoding, background work."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import json
import os
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from zarr.abc.buffer import Buffer
from zarr.buffer.cpu import Buffer as CPUBuffer

from toolkit.errors import MissingExtraError
from toolkit.upstream import is_zarr_chunk_task, sync

__all__ = ["Background", "backoff", "encode_json", "need_netcdf_engine"]


def backoff(attempt: int, base: float, cap: float, draw: float | None = None) -> float:
    """Full-jitter exponential backoff: ``draw * min(cap, base * 2**attempt)``.

    ``attempt`` counts from 0; ``draw`` is uniform in [0, 1) (a fresh one if
    None), so that concurrent clients that failed together spread out.
    """
    if draw is None:
        draw = random.random()
    return draw * min(cap, base * 2.0 ** min(attempt, 60))


def encode_json(doc: Mapping[str, Any]) -> Buffer:
    """A JSON document of toolkit's state as a zarr buffer (readable, stable key order).

    Numpy's numbers and booleans are written as the JSON numbers and booleans
    they are; any other value that JSON has no type for raises ``TypeError``
    naming its type, rather than being written as its ``str()`` (a record or a
    lease would otherwise hold text that reads back as something else).
    """
    return CPUBuffer.from_bytes(
        json.dumps(doc, indent=1, sort_keys=True, default=_json_value).encode()
    )


def _json_value(obj: object) -> bool | int | float:
    """The JSON value of a numpy scalar that ``json`` does not know (called by ``json.dumps``)."""
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    kind = type(obj)
    raise TypeError(
        f"toolkit's JSON documents hold strings, numbers, booleans, None, lists and dicts; "
        f"got a {kind.__module__}.{kind.__qualname__} ({obj!r:.80}), which JSON cannot hold "
        "as it is"
    )


def settle_zarr_calls(timeout: float) -> bool:
    """Wait, at most ``timeout`` seconds, for the chunk tasks failed zarr calls left behind.

    zarr's ``concurrent_map`` gathers its per-chunk tasks without cancelling
    them: when one request fails, the call returns the error while its siblings
    still wait on zarr's semaphore, on zarr's event loop. Refused by an aborted
    write, they end in moments; a process that exits before that prints
    "Task was destroyed but it is pending" for each. True when none is left.
    (The name of zarr's task function: :func:`toolkit.upstream.is_zarr_chunk_task`.)
    """

    async def settled() -> bool:
        me = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() if t is not me and is_zarr_chunk_task(t)]
        if not left:
            return True
        _, pending = await asyncio.wait(left, timeout=timeout)
        return not pending

    return bool(sync(settled()))


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a big graph is built.

    100,000 write tasks are about a million new objects, and each of the
    collector's full passes on the way walks the whole heap (the caller's
    datasets and graphs too): the build takes 3x as long with it running
    (1.3 s against 0.5 s on this machine). The build makes no reference cycles,
    so nothing is left for the collector afterwards. The collector is resumed
    only if it was running: a caller that had paused it keeps it paused.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class Background:
    """Requests sent off a job's path of round trips, waited for before the job ends.

    Each :meth:`run` starts a thread; :meth:`settle` joins them all and raises the
    first error (unless told not to). A step whose answer the job does not need
    next (a hint, a document read only if the job dies, a manifest fragment)
    then costs no round trip of its own: it travels with the next one.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def run(self, fn: Callable[[], object]) -> None:
        """Start ``fn`` now, in a thread of its own."""

        def body() -> None:
            try:
                fn()
            except BaseException as e:  # kept for settle(), which raises it in the job
                with self._lock:
                    self._errors.append(e)

        # A daemon: a process that exits without settling (killed, or a hint
        # nobody waits for) loses only what the thread had not sent. It runs in
        # the caller's context (its toolkit runtime), as a coroutine would.
        ctx = contextvars.copy_context()
        t = threading.Thread(
            target=ctx.run, args=(body,), name=f"toolkit-{self._name}", daemon=True
        )
        with self._lock:
            self._threads.append(t)
        t.start()

    def settle(self, timeout: float | None = None, *, raise_errors: bool = True) -> None:
        """Wait for every thread started so far; raise the first error of theirs."""
        with self._lock:
            threads, self._threads = self._threads, []
        for t in threads:
            t.join(timeout)
        with self._lock:
            errors, self._errors = self._errors, []
        if errors and raise_errors:
            raise errors[0]


_NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5", ".he5")


def need_netcdf_engine(path: str | os.PathLike[str]) -> None:
    """Raise :class:`~toolkit.errors.MissingExtraError` when ``path`` is netCDF and no engine is.

    xarray reads netCDF through h5netcdf (with h5py) or netCDF4; without either
    it fails with ``ModuleNotFoundError: h5py`` or a list of its backends,
    naming nothing to install. Told by the name, or for a local file by its
    first bytes (HDF5's or classic netCDF's signature).
    """
    text = os.fspath(path)
    if (_installed("h5netcdf") and _installed("h5py")) or _installed("netCDF4"):
        return
    netcdf = text.lower().endswith(_NETCDF_SUFFIXES)
    if not netcdf and "://" not in text and os.path.isfile(text):
        with open(text, "rb") as f:
            head = f.read(8)
        netcdf = head.startswith((b"\x89HDF", b"CDF"))
    if netcdf:
        module = "h5py" if _installed("h5netcdf") else "h5netcdf"
        raise MissingExtraError(f"reading {text}", module, "netcdf")


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (a ``None`` in ``sys.modules`` blocks it)."""
    import sys
    from importlib.util import find_spec

    if module in sys.modules:
        return sys.modules[module] is not None
    return find_spec(module) is not None
