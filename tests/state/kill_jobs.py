"""The kill harness's child side: writes that SIGKILL themselves on an event of their own.

``python kill_jobs.py JOB MODE SRC DST`` runs one write (``to_zarr``, ``ingest`` or
``copy``) into ``KillStore(LocalStore(DST))``. ``TOOLKIT_KILL`` names the event,
``op:when:nth:pattern[:plant]``: the process kills itself with SIGKILL
``before`` or ``after`` the ``nth`` ``set``/``delete`` whose key matches
``pattern``; with ``plant``, it first leaves ``<key>.<id>.partial`` as a write
cut short by the kill would (zarr's LocalStore writes a temporary file, then
renames it). Nothing is mocked: the kill is a real SIGKILL of a real writer.
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

    def _hit(self, op: str, key: str) -> str | None:
        spec = _spec()
        if spec is None or spec[0] != op or not spec[3].search(key):
            return None
        with _LOCK:
            _COUNTS[op] = _COUNTS.get(op, 0) + 1
            return spec[1] if _COUNTS[op] == spec[2] else None

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


def run(job: str, mode: str, src: str, dst: Any) -> Any:
    """The write under test; the same call, with a plain path, is its rerun."""
    import xarray as xr

    import toolkit
    from toolkit.jobs import copy

    if job == "to_zarr":
        ds = xr.open_dataset(src, chunks={"time": 5})  # dask chunks straddling the zarr chunks
        enc = {"t2m": {"chunks": (CHUNK_STEPS, 20, 30)}}
        return toolkit.to_zarr(
            ds, dst, mode=mode, encoding=enc, max_task_bytes=TASK_BYTES, progress=False
        )
    if job == "ingest":
        return toolkit.ingest(
            src, dst, concat_dim="time", chunks={"time": CHUNK_STEPS}, mode=mode,
            max_task_bytes=TASK_BYTES, progress=False,
        )  # fmt: skip
    assert job == "copy"
    return copy(
        src, dst, chunks={"time": CHUNK_STEPS}, mode=mode, max_task_bytes=TASK_BYTES,
        progress=False,
    )  # fmt: skip


if __name__ == "__main__":
    job, mode, src, dst = sys.argv[1:5]
    run(job, mode, src, KillStore(LocalStore(dst)))
    print("finished")
