"""Records of writes kept in the store itself, under the reserved ``.toolkit/`` prefix.

A write puts ``.toolkit/writes/<id>.json`` in its group, and waits for it to
land, *before* any array metadata is sent. It deletes the record last, when
every write unit and every other object of the write has landed, and rewrites
it with the units written and missing when the write fails. A store holding
arrays but no record is therefore complete, and a record left behind means the
store is incomplete, whether the write failed or its process was killed.
:func:`toolkit.open_zarr` checks for records and refuses such a store rather
than hand back fill values as data.

The records are small, human-readable JSON documents, one per write, so that
concurrent writers never contend for one object.

A resumable write (:func:`toolkit.ingest`, :func:`toolkit.commands.copy`) also
keeps ``.toolkit/resume/<id>/``: ``begin.json``, put before anything else of
the write (on an empty group, so a store holding it holds only this write);
``metadata.json``, put once the whole metadata round has landed; and one
marker per write task whose units have all landed, named after the units it
owns and holding their sizes and checksums. Started again with the same
arguments (the same id), the write resumes only past ``metadata.json``
(skipping the marked tasks) and starts over otherwise; at the end the
checksums make a manifest fragment (:mod:`toolkit.coordination.manifest`) and the
prefix is deleted.

Readers of ``.toolkit/`` ignore ``*.partial`` keys: the temporary files zarr's
``LocalStore`` leaves when a process is killed in the middle of a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from zarr.abc.store import Store
from zarr.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from toolkit._util import encode_json
from toolkit.coordination import manifest as _manifest
from toolkit.coordination.manifest import write_fragment
from toolkit.io.conditional import conditional_store
from toolkit.io.groups import RESERVED_PREFIX
from toolkit.io.metrics import IOMetrics
from toolkit.io.stores import changed_objects, unwrap
from toolkit.io.throttle import Throttle
from toolkit.io.wrappers import wrap_store
from toolkit.upstream import sync

__all__ = [
    "ResumeLog",
    "WriteRecord",
    "aread_records",
    "clear_records",
    "manifest_key",
    "read_manifest",
    "read_record",
    "read_records",
    "record_key",
    "task_marker",
    "write_hole",
]


def _prefix(group: str | None, kind: str = "writes") -> str:
    base = f"{group.strip('/')}/" if group else ""
    return f"{base}{RESERVED_PREFIX}/{kind}/"


def record_key(group: str | None, job: str) -> str:
    """Where the record of job ``job`` is kept (one key per job: a rerun finds its own)."""
    return f"{_prefix(group)}{job.replace('/', '_')}.json"


def read_record(store: Store, group: str | None, job: str) -> dict[str, Any] | None:
    """The record of job ``job`` in the store, or None."""
    buf = sync(store.get(record_key(group, job), default_buffer_prototype()))
    if buf is None:
        return None
    try:
        doc = json.loads(buf.to_bytes())
    except ValueError:
        return {"state": "unreadable"}
    return doc if isinstance(doc, dict) else {"state": "unreadable"}


def write_hole(
    store: Store,
    group: str | None,
    reservation: Mapping[str, Any],
    *,
    found_by: str,
    lease: str,
) -> bool:
    """Mark a dead job's reserved rows, before they are published past: readers refuse them.

    Created only if the job has no record yet (its own record says more).
    Returns whether this call created it.
    """
    doc = {
        "state": "abandoned",
        "job": reservation["job"],
        "kind": reservation.get("kind", "append"),
        "dim": reservation["dim"],
        "rows": [reservation["start"], reservation["stop"]],
        "labels": [lab for lab, _, _ in reservation.get("labels", [])],
        "lease": lease,
        "found_by": found_by,
        "started": _now(),
    }
    key = record_key(group, str(reservation["job"]))
    return sync(conditional_store(store).create(key, encode_json(doc).to_bytes())) is not None


def _rmdirs(store: Store, *relative: str) -> None:
    """Remove empty directories toolkit left in a local store (a local artefact)."""
    base = unwrap(store)
    if isinstance(base, LocalStore):
        for rel in relative:
            with contextlib.suppress(OSError):
                (base.root / rel).rmdir()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class WriteRecord:
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
        self.key = record_key(group, token)
        self._doc: dict[str, Any] = {}
        # The other records the store held when this one landed (read beside it).
        self._earlier: list[dict[str, Any]] | None = None
        self._replaces = False

    def _put(self, doc: Mapping[str, Any], io: IOMetrics) -> None:
        sync(wrap_store(self.store, self.throttle, io).set(self.key, encode_json(doc)))

    def begin(
        self,
        what: Mapping[str, Any],
        via: Store,
        resume: str | None = None,
        *,
        replaces: bool = False,
        alone: bool = False,
    ) -> None:
        """Say in the store that this write has started; returns once the record landed.

        ``what`` describes the write (JSON; the plan's ``record_summary()``).
        ``via`` is the store stack to write it through. It is called before any
        array metadata is sent, so that no reader can find arrays of this write
        without its record. ``replaces``: the write replaces the whole group
        (mode ``"w"``), so every other record found now goes with its own in
        :meth:`done` (they are the replaced dataset's). ``alone``: the group is
        known to hold no other record (seen empty under the creation claim,
        :func:`toolkit.coordination.claim.take_claim`); they are not read.
        """
        self._replaces = replaces
        self._doc = {
            "state": "writing",
            "started": _now(),
            **what,
            **({"resume": resume} if resume else {}),
        }
        # The other records are read in the same round, for done(): those of failed
        # writes that this one repairs go with its own. (A record that appears later
        # is left: the store stays refused until its own write, or a rerun, ends.)
        reads = wrap_store(self.store, self.throttle)

        async def both() -> list[dict[str, Any]]:
            earlier: list[dict[str, Any]]
            if alone:
                await via.set(self.key, encode_json(self._doc))
                return []
            _, earlier = await asyncio.gather(
                via.set(self.key, encode_json(self._doc)),
                aread_records(reads, self.group, skip=self.key),
            )
            return earlier

        self._earlier = sync(both())

    def state(self) -> str | None:
        """The record's state in the store (``"writing"``, ``"failed"``), None once removed."""
        buf = sync(wrap_store(self.store, self.throttle).get(self.key, default_buffer_prototype()))
        if buf is None:
            return None
        try:
            return str(json.loads(buf.to_bytes()).get("state"))
        except ValueError:
            return "unreadable"

    def fail(self, record: Mapping[str, Any], io: IOMetrics) -> None:
        """Replace the record with what was written and what is missing."""
        self._put({**self._doc, "state": "failed", "failed": _now(), "units": record}, io)

    def done(self, io: IOMetrics, spans: UnitSpans | None = None) -> None:
        """Remove the record: every unit landed.

        With ``spans``, the write units this write rewrote per variable (the
        plan's ``unit_spans()``), records of earlier *failed* writes whose
        missing units it has all rewritten are removed too: rerunning a failed
        write repairs the store. Records of writes still marked as running are kept,
        since they may be live.
        """
        store = wrap_store(self.store, self.throttle, io)
        earlier = self._earlier
        if earlier is None:
            earlier = read_records(store, self.group, skip=self.key)
        for old in earlier:
            repaired = (
                spans is not None
                and old.get("state") == "failed"
                and _covers(spans, old.get("units") or {})
            )
            # The interrupted runs of the same resumable write are complete now.
            resumed = bool(self._doc.get("resume")) and old.get("resume") == self._doc["resume"]
            if repaired or resumed or self._replaces:
                sync(store.delete(old["key"]))
        # Last: until this delete lands, readers take the store for incomplete.
        sync(store.delete(self.key))
        # Other writers' records keep their directory: rmdir fails on one not empty.
        writes = _prefix(self.group)
        _rmdirs(self.store, writes, writes.rsplit("/", 2)[0])


#: Per variable, the ``[first, stop)`` range of write units along each axis.
type UnitSpans = Mapping[str, Sequence[tuple[int, int]]]


def _covers(spans: UnitSpans, units: Mapping[str, Any]) -> bool:
    """Whether ``spans`` hold every missing unit of a failed write's record."""
    for name, rec in units.items():
        for unit in rec.get("missing", ()):
            box = spans.get(name)
            if box is None or not all(lo <= u < hi for u, (lo, hi) in zip(unit, box, strict=True)):
                return False
    return True


def read_records(
    store: Store, group: str | None = None, *, skip: str | None = None
) -> list[dict[str, Any]]:
    """The records of unfinished writes in a store's group.

    One listing request, then every record fetched at once. ``skip`` is a key
    the caller knows already (its own record): listed, not fetched or returned.
    """
    return sync(aread_records(store, group, skip=skip))


async def aread_records(
    store: Store,
    group: str | None = None,
    *,
    skip: str | None = None,
    listed: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """:func:`read_records`, awaited (for many groups at once).

    ``listed``: keys of a listing that covers the group's records (of its
    ``.toolkit/`` prefix, say, listed with other things): not listed again.
    """

    async def read_doc(k: str) -> dict[str, Any] | None:
        buf = await store.get(k, default_buffer_prototype())
        if buf is None:
            return None
        try:
            doc = json.loads(buf.to_bytes())
        except ValueError:
            # Stores write whole objects, so this is damage: the write's state
            # is unknown, and a reader must not take the store for complete.
            doc = {"state": "unreadable"}
        if not isinstance(doc, dict):
            doc = {"state": "unreadable"}
        doc["key"] = k
        return doc

    if listed is not None:
        keys = [k for k in listed if k.startswith(_prefix(group))]
    elif not store.supports_listing:
        return []
    else:
        keys = [k async for k in store.list_prefix(_prefix(group))]
    # Not "<key>.<id>.partial": a killed write's temporary file.
    wanted = sorted(k for k in keys if k.endswith(".json") and k != skip)
    docs = await asyncio.gather(*(read_doc(k) for k in wanted))
    return [d for d in docs if d is not None]


def clear_records(store: Store, group: str | None = None, *, job: str | None = None) -> int:
    """Delete the write records of a group (all, or job ``job``'s); how many.

    A record says that rows may hold fill values: clearing it accepts them as
    they are. Rerunning the job it names is the repair that loses nothing.
    """

    async def clear() -> int:
        if job is not None:
            key = record_key(group, job)
            if await store.get(key, default_buffer_prototype()) is None:
                return 0
            await store.delete(key)
            return 1
        keys = [k async for k in store.list_prefix(_prefix(group))]
        for k in keys:
            await store.delete(k)
        return len(keys)

    return sync(clear())


_MARKER = re.compile(r"[0-9]+-[0-9]+(_[0-9]+-[0-9]+)*")


def task_marker(units: tuple[tuple[int, int], ...]) -> str:
    """The name of a write task's completion marker: the unit ranges it owns."""
    return "_".join(f"{a}-{b}" for a, b in units)


class ResumeLog:
    """Which tasks of a resumable write have landed, kept in its store.

    Parameters
    ----------
    store : Store
        The plain store.
    group : str, optional
        The group written.
    write_id : str
        Identifies the write across runs: the same sources, layout and target
        give the same id.
    throttle : Throttle, optional
        The budget its requests go through.
    source : mapping, optional
        Every object of the write's sources (:func:`toolkit.io.stores.source_objects`),
        kept in ``begin.json`` so that a later run sees any change.
    """

    def __init__(
        self,
        store: Store,
        group: str | None,
        write_id: str,
        throttle: Throttle | None = None,
        source: Mapping[str, str] | None = None,
    ) -> None:
        self.store, self.group, self.id, self.throttle = store, group, write_id, throttle
        self.source = dict(source) if source is not None else None
        self.prefix = f"{_prefix(group, 'resume')}{write_id}/"

    def started(self) -> bool:
        """Whether a run of this write got past its metadata (``begin.json`` exists)."""
        return bool(sync(wrap_store(self.store, self.throttle).exists(f"{self.prefix}begin.json")))

    def metadata_landed(self) -> bool:
        """Whether a run of this write got through its whole metadata round."""
        key = f"{self.prefix}metadata.json"
        return bool(sync(wrap_store(self.store, self.throttle).exists(key)))

    def begin(self, via: Store, about: Mapping[str, Any]) -> None:
        """Put ``begin.json`` through ``via``, before anything else of the write."""
        doc = {"id": self.id, "started": _now(), **about}
        if self.source is not None:
            doc["source"] = self.source
        sync(via.set(f"{self.prefix}begin.json", encode_json(doc)))

    def source_changes(self) -> list[str]:
        """How the sources changed since the first run began (``[]``: not at all).

        Compares the listing in ``begin.json`` with :attr:`source`, one phrase
        per object (see :func:`toolkit.io.stores.changed_objects`). Nothing to
        compare (no listing given, or a log without one) is no change.
        """
        if self.source is None:
            return []
        buf = sync(
            wrap_store(self.store, self.throttle).get(
                f"{self.prefix}begin.json", default_buffer_prototype()
            )
        )
        if buf is None:
            return []
        before = json.loads(buf.to_bytes()).get("source")
        return [] if before is None else changed_objects(before, self.source)

    def metadata_done(self, via: Store, written: Mapping[str, Any] | None = None) -> None:
        """Put ``metadata.json`` through ``via``: every array of the write exists now.

        ``written``: what the metadata round put in the store (key -> ``[size,
        checksum]``), kept for the write's manifest fragment: a resumed run
        does not write the metadata again.
        """
        doc = {"id": self.id, "metadata": _now(), "written": dict(written or {})}
        sync(via.set(f"{self.prefix}metadata.json", encode_json(doc)))

    def done_tasks(self) -> dict[str, set[str]]:
        """Per variable, the markers of the tasks whose units all landed (one listing)."""

        async def list_markers() -> dict[str, set[str]]:
            out: dict[str, set[str]] = {}
            store = wrap_store(self.store, self.throttle)
            async for key in store.list_prefix(self.prefix):
                rel = key[len(self.prefix) :]
                if "/" in rel:
                    var, marker = rel.rsplit("/", 1)
                    # Not a killed write's temporary file (LocalStore's "<key>.<id>.partial").
                    if _MARKER.fullmatch(marker):
                        out.setdefault(var, set()).add(marker)
            return out

        return sync(list_markers()) if self.store.supports_listing else {}

    def write_manifest(self, io: IOMetrics | None = None) -> None:
        """The write is complete: keep its objects' checksums in a manifest fragment.

        Each marker holds the sizes and checksums of its task's objects (of
        whichever run wrote them); they make the write's fragment
        (:mod:`toolkit.coordination.manifest`). The log stays until :meth:`clear`,
        after the write's record is gone, so that a run killed in between is
        finished by a rerun that finds every task marked.
        """
        store = wrap_store(self.store, self.throttle, io)

        async def collect() -> dict[str, Any]:
            found: dict[str, Any] = {}
            keys = [k async for k in store.list_prefix(self.prefix)]
            for key in sorted(keys, key=lambda k: not k.endswith("/metadata.json")):
                name = key.rsplit("/", 1)[-1]
                if not (_MARKER.fullmatch(name) or name == "metadata.json"):
                    continue
                buf = await store.get(key, default_buffer_prototype())
                if buf is not None and len(buf):
                    doc = json.loads(buf.to_bytes())
                    found.update(doc.get("written", {}) if name == "metadata.json" else doc)
            return found

        markers = sync(collect()) if self.store.supports_listing else {}
        objects = {
            k: None if v is None else (0, v) if isinstance(v, str) else (int(v[0]), str(v[1]))
            for k, v in markers.items()
        }
        write_fragment(store, self.group, f"resume-{self.id}", objects)

    def clear(self, io: IOMetrics | None = None) -> None:
        """Delete the log (after :meth:`write_manifest` and the record's removal)."""
        store = wrap_store(self.store, self.throttle, io)
        sync(store.delete_dir(self.prefix.rstrip("/")))
        resume = _prefix(self.group, "resume")
        _rmdirs(self.store, resume, resume.rsplit("/", 2)[0])


def manifest_key(group: str | None = None) -> str:
    """Where a group's checksum manifest is kept (:mod:`toolkit.coordination.manifest`)."""
    return _manifest.manifest_key(group)


def read_manifest(store: Store, group: str | None = None) -> dict[str, str]:
    """The newest checksum on record of each of a group's objects ({} without a manifest)."""
    return {k: v[-1] for k, v in _manifest.read_manifest(store, group).digests.items()}
