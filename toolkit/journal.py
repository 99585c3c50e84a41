"""Records of writes kept in the store itself, under the reserved ``.toolkit/`` prefix.

A write puts ``.toolkit/writes/<id>.json`` in its group after the metadata is
written and before any data. It deletes the record when every write unit has
landed, and rewrites it with the units written and missing when the write
fails. A record left behind therefore means the store is incomplete, whether
the write failed or its process was killed. :func:`toolkit.open_zarr` checks
for records and refuses such a store rather than hand back fill values as
data.

The records are small, human-readable JSON documents, one per write, so that
concurrent writers never contend for one object.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import LocalStore

from toolkit.metrics import IOMetrics
from toolkit.storage import unwrap, wrap_store
from toolkit.throttle import Throttle

if TYPE_CHECKING:
    from toolkit.plan import WritePlan

__all__ = ["RESERVED_PREFIX", "WriteJournal", "clear_records", "read_records"]

RESERVED_PREFIX = ".toolkit"
"""Top-level prefix (inside the group) where toolkit keeps its own state."""

# zarr warns about any non-zarr key while listing a group's members. For
# toolkit's own prefix the warning says nothing useful, so only it is silenced.
warnings.filterwarnings(
    "ignore", message=rf"Object at {re.escape(RESERVED_PREFIX)} is not recognized", category=Warning
)


def _prefix(group: str | None) -> str:
    base = f"{group.strip('/')}/" if group else ""
    return f"{base}{RESERVED_PREFIX}/writes/"


def _encode(doc: Mapping[str, Any]) -> Buffer:
    return Buffer.from_bytes(json.dumps(doc, indent=1, sort_keys=True, default=str).encode())


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class WriteJournal:
    """The record of one write in its store (picklable: it travels to the last task).

    Parameters
    ----------
    store : Store
        The plain store.
    group : str, optional
        The group written.
    token : str
        The write's identity.
    throttle : Throttle, optional
        The budget its requests go through.
    """

    def __init__(self, store: Store, group: str | None, token: str, throttle: Throttle | None):
        self.store, self.group, self.token, self.throttle = store, group, token, throttle
        self.key = f"{_prefix(group)}{token}.json"
        self._doc: dict[str, Any] = {}

    def _put(self, doc: Mapping[str, Any], io: IOMetrics) -> None:
        sync(wrap_store(self.store, self.throttle, io).set(self.key, _encode(doc)))

    def begin(self, plan: WritePlan, via: Store) -> None:
        """Say in the store that this write has started (before any data).

        ``via`` is the store to write the record through (the metadata phase's
        buffer, so that it lands in the same round as the metadata).
        """
        self._doc = {
            "state": "writing",
            "started": _now(),
            "target": plan.target,
            "mode": plan.mode,
            "append_dim": plan.append_dim,
            "region": {k: [s.start, s.stop] for k, s in (plan.region or {}).items()},
            "variables": {v.name: {"units": v.nunits, "tasks": v.ntasks} for v in plan.variables},
        }
        sync(via.set(self.key, _encode(self._doc)))

    def fail(self, record: Mapping[str, Any], io: IOMetrics) -> None:
        """Replace the record with what was written and what is missing."""
        self._put({**self._doc, "state": "failed", "failed": _now(), "units": record}, io)

    def done(self, io: IOMetrics, plan: WritePlan | None = None) -> None:
        """Remove the record: every unit landed.

        With ``plan``, records of earlier *failed* writes whose missing units
        this write has all rewritten are removed too: rerunning a failed write
        repairs the store. Records of writes still marked as running are kept,
        since they may be live.
        """
        store = wrap_store(self.store, self.throttle, io)
        sync(store.delete(self.key))
        if plan is not None:
            for old in read_records(store, self.group):
                if old.get("state") == "failed" and _covers(plan, old.get("units") or {}):
                    sync(store.delete(old["key"]))
        base = unwrap(self.store)
        if isinstance(base, LocalStore):
            # Directories are a local artefact; leave none behind (other writers'
            # records keep theirs: rmdir fails on a directory that is not empty).
            writes = base.root / _prefix(self.group)
            for d in (writes, writes.parent):
                with contextlib.suppress(OSError):
                    d.rmdir()


def _covers(plan: WritePlan, units: Mapping[str, Any]) -> bool:
    """Whether ``plan`` rewrites every missing unit of a failed write's record."""
    owned = {}
    for v in plan.variables:
        own = v._ownership
        owned[v.name] = [(int(a.first[0]), int(a.stop[-1])) for a in own]
    for name, rec in units.items():
        for unit in rec.get("missing", ()):
            box = owned.get(name)
            if box is None or not all(lo <= u < hi for u, (lo, hi) in zip(unit, box, strict=True)):
                return False
    return True


def read_records(store: Store, group: str | None = None) -> list[dict[str, Any]]:
    """The records of unfinished writes in a store's group (one listing request)."""

    async def go() -> list[dict[str, Any]]:
        prefix = _prefix(group)
        keys = [k async for k in store.list_prefix(prefix)]
        out = []
        for k in sorted(keys):
            buf = await store.get(k, default_buffer_prototype())
            if buf is not None:
                doc = json.loads(buf.to_bytes())
                doc["key"] = k
                out.append(doc)
        return out

    if not store.supports_listing:
        return []
    return sync(go())


def clear_records(store: Store, group: str | None = None) -> int:
    """Delete every write record of a group (after repairing it by hand); how many."""

    async def go() -> int:
        keys = [k async for k in store.list_prefix(_prefix(group))]
        for k in keys:
            await store.delete(k)
        return len(keys)

    return sync(go())
