"""The kill harness's child side: writes that SIGKILL themselves on an event of their own.

``python kill_jobs.py JOB MODE SRC DST`` runs one write (``to_zarr``, ``ingest`` or
``copy``) into ``KillStore(LocalStore(DST))``. ``TOOLKIT_KILL`` names the event,
``op:when:nth:pattern[:plant]``: the process kills itself with SIGKILL
``before`` or ``after`` the ``nth`` ``set``/``delete`` whose key matches
``pattern``; with ``plant``, it first leaves ``<key>.<id>.partial`` as a write
cut short by the kill would (zarr's LocalStore writes a temporary file, then
renames it). Nothing is mocked: the kill is a real SIGKILL of a real writer.

The many-jobs writes (``append``, ``partition-old``, ``partition-new``,
``region``, ``ice-append``: :data:`MANY`) run with ``MODE`` ``-`` into DST, a
local path or an ``s3://`` URL whose storage options are the JSON in
``TOOLKIT_KILL_OPTS``. Their coordination requests (leases, log entries,
records, conditional unit writes) are events too: ``create``, ``replace``,
``put`` and ``remove`` of :class:`toolkit.io.conditional.ConditionalStore`,
matched on the key below the store's root (``.toolkit/coord/log/...``).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import uuid
from typing import Any

from zarr.abc.store import Store
from zarr.core.buffer import Buffer
from zarr.storage import LocalStore, WrapperStore

CHUNK_STEPS = 8
TASK_BYTES = CHUNK_STEPS * 20 * 30 * 4  # one unit of t2m per task: several tasks to kill among

_COUNTS: dict[str, int] = {}
_LOCK = threading.Lock()


def _spec() -> tuple[str, str, int, re.Pattern[str], bool] | None:
    text = os.environ.get("TOOLKIT_KILL")
    if not text:
        return None
    parts = text.split(":")
    plant = parts[-1] == "plant"
    pattern = ":".join(parts[3:-1] if plant else parts[3:])
    return parts[0], parts[1], int(parts[2]), re.compile(pattern), plant


class KillStore(WrapperStore[Store]):
    """Kills its process at the event ``TOOLKIT_KILL`` names (see the module docstring)."""

    @property
    def _supports_sync_io(self) -> bool:
        return False  # zarr's synchronous fast path would go around this wrapper

    def _hit(self, op: str, key: str) -> str | None:
        spec = _spec()
        # The op may be a pattern too ("create|replace"): counted as one event.
        if spec is None or not re.fullmatch(spec[0], op) or not spec[3].search(key):
            return None
        with _LOCK:
            _COUNTS[spec[0]] = _COUNTS.get(spec[0], 0) + 1
            return spec[1] if _COUNTS[spec[0]] == spec[2] else None

    def _die(self, key: str, plant: bool) -> None:
        base = self._store
        if plant and isinstance(base, LocalStore):
            path = base.root / f"{key}.{uuid.uuid4().hex}.partial"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x00torn")
        os.kill(os.getpid(), signal.SIGKILL)

    async def set(self, key: str, value: Buffer) -> None:
        when = self._hit("set", key)
        plant = bool((_spec() or (0, 0, 0, 0, False))[4])
        if when == "before":
            self._die(key, plant)
        await self._store.set(key, value)
        if when == "after":
            self._die(key, plant)

    async def delete(self, key: str) -> None:
        when = self._hit("delete", key)
        if when == "before":
            self._die(key, False)
        await self._store.delete(key)
        if when == "after":
            self._die(key, False)


def _hook_conditional() -> None:
    """Make the coordination requests of this process events of ``TOOLKIT_KILL`` too."""
    from toolkit.io import conditional

    store = KillStore(None)  # type: ignore[arg-type]  (only its _hit and _die are used)

    def wrap(op: str, name: str) -> None:
        original = getattr(conditional.ConditionalStore, name)

        async def hooked(self: Any, key: str, *args: Any) -> Any:
            when = store._hit(op, key)
            if when == "before":
                store._die(key, False)
            out = await original(self, key, *args)
            if when == "after":
                store._die(key, False)
            return out

        setattr(conditional.ConditionalStore, name, hooked)

    for op in ("create", "replace", "put"):
        wrap(op, op)
    wrap("remove", "delete")


MANY = ("append", "partition-old", "partition-new", "region", "ice-append")
"""The many-jobs writes of the harness."""

NX = 6
DAY = 12  # rows of one partition
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]


def rows(job: int, times: Any) -> Any:
    """Rows written by ``job``: v = job, w = job * 1000 + row, a time coordinate."""
    import numpy as np
    import xarray as xr

    n = len(times)
    return xr.Dataset(
        {
            "v": (("time", "x"), np.full((n, NX), float(job))),
            "w": (("time",), (job * 1000 + np.arange(n)).astype("i8")),
        },
        coords={"time": np.asarray(times, "i8"), "x": np.arange(NX)},
    )


def day_rows(job: int, days: list[str]) -> Any:
    """DAY rows per day: a ``day`` label, v = job; times from the day's date."""
    import numpy as np
    import pandas as pd

    times = np.concatenate([pd.Timestamp(d).value // 10**9 + 3600 * np.arange(DAY) for d in days])
    ds = rows(job, times)
    return ds.assign_coords(day=("time", np.repeat(np.array(days, dtype="U10"), DAY)))


def base_of(job: str) -> Any:
    """The dataset a many-jobs case starts from (job -1's rows)."""
    import numpy as np

    if job.startswith("partition"):
        return day_rows(-1, DAYS[:3])
    return rows(-1, np.arange(30) - 10_000)


ENCODING = {
    "v": {"chunks": (4, NX)},
    "w": {"chunks": (4,)},
    "time": {"chunks": (4,)},
    "day": {"chunks": (4,)},
}


def data_of(job: str) -> Any:
    """What the job under test writes (v = 7): the same every run, so its id is too."""
    import numpy as np
    import xarray as xr

    if job in ("append", "ice-append"):
        return rows(7, 7000 + np.arange(10)).chunk({"time": 4})
    if job == "partition-old":
        return day_rows(7, DAYS[1:3]).chunk({"time": 5})
    if job == "partition-new":
        return day_rows(7, DAYS[2:4]).chunk({"time": 5})
    assert job == "region"
    return xr.Dataset({"v": (("time", "x"), np.full((12, NX), 7.0))}).chunk({"time": 5})


REGION = slice(5, 17)  # shares a unit at each edge with rows that stay


def run_many(job: str, dst: Any, opts: dict[str, Any] | None) -> Any:
    """The many-jobs write under test; the same call, with the plain target, is its rerun."""
    import toolkit

    so = {"storage_options": opts} if opts and isinstance(dst, str) else {}
    ds = data_of(job)
    if job == "append":
        return toolkit.append(ds, dst, "time", progress=False, **so)
    if job.startswith("partition"):
        return toolkit.overwrite_partitions(ds, dst, "day", progress=False, **so)
    if job == "region":
        return toolkit.to_zarr(ds, dst, region={"time": REGION}, progress=False, **so)
    from toolkit.write.icechunk import to_icechunk

    return to_icechunk(ds, dst, append_dim="time", storage_options=opts)


def create_base(job: str, dst: str, opts: dict[str, Any] | None) -> None:
    """Write the dataset a case starts from."""
    import toolkit

    enc = {k: v for k, v in ENCODING.items() if k in base_of(job).variables}
    if job.startswith("ice"):
        from toolkit.write.icechunk import to_icechunk

        to_icechunk(base_of(job), dst, storage_options=opts, encoding=enc)
        return
    so = {"storage_options": opts} if opts else {}
    toolkit.to_zarr(base_of(job), dst, encoding=enc, progress=False, **so)


def run(job: str, mode: str, src: str, dst: Any) -> Any:
    """The write under test; the same call, with a plain path, is its rerun."""
    import xarray as xr

    import toolkit
    from toolkit.commands import copy

    if job == "to_zarr":
        ds = xr.open_dataset(src, chunks={"time": 5})  # dask chunks straddling the zarr chunks
        enc = {"t2m": {"chunks": (CHUNK_STEPS, 20, 30)}}
        return toolkit.to_zarr(
            ds, dst, mode=mode, encoding=enc, max_task_bytes=TASK_BYTES, progress=False
        )
    if job == "ingest":
        return toolkit.ingest(
            src,
            dst,
            concat_dim="time",
            chunks={"time": CHUNK_STEPS},
            mode=mode,
            max_task_bytes=TASK_BYTES,
            progress=False,
        )
    assert job == "copy"
    return copy(
        src,
        dst,
        chunks={"time": CHUNK_STEPS},
        mode=mode,
        max_task_bytes=TASK_BYTES,
        progress=False,
    )


if __name__ == "__main__":
    job, mode, src, dst = sys.argv[1:5]
    if job in MANY:
        import json

        _hook_conditional()
        opts = json.loads(os.environ.get("TOOLKIT_KILL_OPTS") or "null")
        if job.startswith("ice"):
            run_many(job, dst, opts)  # Icechunk's own store: coordination events only
        else:
            from toolkit.io.stores import resolve_store

            run_many(job, KillStore(resolve_store(dst, storage_options=opts)), opts)
    else:
        run(job, mode, src, KillStore(LocalStore(dst)))
    print("finished")
