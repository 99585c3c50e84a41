"""Exclusive creation of a dataset: the creation lease, the emptiness check, clearing a group.

Creating a dataset (mode ``"w-"``, or ``"w"``, which replaces one) is a job of
its own: of two jobs creating one store at once, exactly one may write it, or
the store holds a mix of both. A creating write therefore takes the group's
*creation lease* (``.toolkit/coord/leases/create.json``, a conditional write like
every lease) before anything else and holds it until its last object landed:

- ``"w-"`` asks once; a live holder means another job is creating the store, and
  the write raises :class:`~toolkit.errors.ExistingStoreError`. Under the lease
  it checks again that the group is empty, since a creator may have finished
  between planning and now.
- ``"w"`` waits for the lease, then clears the group (all but the lease), so it
  replaces whatever it finds whole.
- A resumed creation (:func:`toolkit.ingest` and :func:`toolkit.commands.copy` after a
  kill) waits for it too, so that two reruns never resume one store at once.

A dead holder's lease expires after its time to live, at once when the holder
was a process on this host that no longer runs. On a store without atomic
creates (Icechunk, which is transactional itself; fsspec stores other than
S3) there is no lease, only the ordering below.

The clearing keeps the lease, so that it can run under it, and removes
everything else: arrays, records, resume logs, the manifest, stray temporary
files. ``*.partial`` keys (zarr's ``LocalStore`` leaves ``<key>.<id>.partial``
when a process dies in a write) never count as data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from zarr.abc.store import Store
from zarr.storage import LocalStore, MemoryStore

from toolkit.coordination.leases import Coordinator, LockSet, supports_atomic_create
from toolkit.coordination.records import WriteRecord
from toolkit.errors import ExistingStoreError, LeaseTimeoutError
from toolkit.io.groups import RESERVED_PREFIX
from toolkit.io.keys import METADATA_DOCUMENTS
from toolkit.io.stores import describe_store, display_store, unwrap
from toolkit.io.throttle import Throttle
from toolkit.upstream import sync

_log = logging.getLogger(__name__)

__all__ = [
    "CREATE_LEASE",
    "CreationClaim",
    "clear_group",
    "create_timeout",
    "doomed_keys",
    "drop_keys",
    "group_contents",
    "is_stray",
    "listing_is_free",
    "refuse_foreign",
    "remove_strays",
    "take_claim",
]

CREATE_LEASE = "create"
"""Name of the creation lease, under ``.toolkit/coord/leases/``."""

_LEASE_PATH = f"{RESERVED_PREFIX}/coord/leases/{CREATE_LEASE}.json"


def _root(group: str | None) -> str:
    g = (group or "").strip("/")
    return f"{g}/" if g else ""


def is_stray(key: str) -> bool:
    """Whether ``key`` is a killed write's temporary file (``<key>.<id>.partial``)."""
    return key.endswith(".partial")


_COORD_PATH = f"{RESERVED_PREFIX}/coord/"


def _ignored(key: str, root: str) -> bool:
    # Coordination state (leases, a log of requests) is no dataset.
    return is_stray(key) or key[len(root) :].startswith(_COORD_PATH)


def group_contents(store: Store, group: str | None, limit: int = 1) -> list[str]:
    """Up to ``limit`` keys of the group that count as data (strays and ``.toolkit/coord/`` do not).

    An empty list means the group is empty. A local path that does not exist
    is empty without being created.
    """
    base = unwrap(store)
    if isinstance(base, LocalStore) and not Path(base.root).exists():
        return []
    root = _root(group)

    async def first_keys() -> list[str]:
        found: list[str] = []
        async for key in store.list_prefix(root):
            if not _ignored(key, root):
                found.append(key)
                if len(found) >= limit:
                    break
        return found

    return sync(first_keys()) if store.supports_listing else []


_V2_CHUNK = re.compile(r"\d+([./]\d+)*")


def _zarr_key(key: str) -> bool:
    """Whether a key can be part of a Zarr store (or of toolkit's state in one)."""
    parts = key.split("/")
    if RESERVED_PREFIX in parts or parts[-1] in METADATA_DOCUMENTS or "c" in parts[:-1]:
        return True
    return parts[-1] == "c" or _V2_CHUNK.fullmatch(parts[-1]) is not None


def listing_is_free(store: Store) -> bool:
    """Whether listing ``store`` costs no round trip (a local directory, memory)."""
    return isinstance(unwrap(store), (LocalStore, MemoryStore))


def refuse_foreign(store: Store, group: str | None) -> None:
    """Raise :class:`~toolkit.errors.ExistingStoreError` when the group holds other files only.

    Mode ``"w"`` replaces a Zarr store; a directory or bucket of other files is not
    one (``toolkit copy x.nc . --overwrite`` in a home directory must not delete
    it). Any key a Zarr store (or toolkit) would hold makes the target a store,
    perhaps one another job is creating right now (racing ``"w"`` creators, whose
    clear leaves some of its keys at every moment): it is replaced as before.
    """
    _refuse_foreign_keys(store, group_contents(store, group, limit=200))


def _refuse_foreign_keys(store: Store, keys: Sequence[str]) -> None:
    foreign = [k for k in keys if not _zarr_key(k)]
    if foreign and len(foreign) == len(keys):
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ExistingStoreError(
            f"{display_store(store)} holds files that are not a Zarr store ({shown}); "
            "only a Zarr store is replaced: choose a new or empty path for the target"
        )


def take_claim(
    claim: CreationClaim | None, store: Store, group: str | None, *, mode: str, guard: bool
) -> bool:
    """Take ``claim`` (when there is one), with mode ``"w"``'s foreign-files check if ``guard``.

    The group is listed beside the lease's request, which the listing would
    otherwise wait for (one round trip): for the check (:func:`refuse_foreign`)
    and, on an object store, to learn whether the group is empty. Refused, the
    lease it took is withdrawn (:meth:`CreationClaim.withdraw`): the store is as
    found.

    Returns
    -------
    bool
        True when the group is known to be empty under the claim: the listing
        found nothing at all in it (no data, records or coordination state) and
        the claim made its lease's document, so no creator wrote there before
        it (:attr:`CreationClaim.first`) and none can while it holds it. The
        caller then skips its own emptiness check, clear and records read.
    """
    if claim is None:
        if guard:
            refuse_foreign(store, group)
        return False
    lists = guard or (claim.locks is not None and not listing_is_free(store))
    with ThreadPoolExecutor(1, thread_name_prefix="toolkit-check") as pool:
        listed = pool.submit(_listing, store, group) if lists else None
        claim.acquire(wait=mode != "w-")
        try:
            keys = listed.result() if listed is not None else None
            if guard and keys is not None:
                _refuse_foreign_keys(store, [k for k in keys if not _ignored(k, _root(group))])
        except BaseException:
            claim.withdraw()
            raise
    return keys == [] and claim.first


def _listing(store: Store, group: str | None, limit: int = 200) -> list[str]:
    """Up to ``limit`` keys of the group but strays and its creation lease, in one listing."""
    root = _root(group)
    lease = f"{root}{_LEASE_PATH}"

    async def first_keys() -> list[str]:
        found: list[str] = []
        async for key in store.list_prefix(root):
            if key != lease and not is_stray(key):
                found.append(key)
                if len(found) >= limit:
                    break
        return found

    return sync(first_keys()) if store.supports_listing else []


def clear_group(store: Store, group: str | None) -> None:
    """Delete everything in the group but its creation lease (mode ``"w"``'s replace)."""
    drop_keys(store, doomed_keys(store, group))


def doomed_keys(store: Store, group: str | None, *, records: bool = True) -> list[str]:
    """What :func:`clear_group` deletes: the group's children (keys or prefixes), listed.

    The levels along the creation lease's path are known: they are listed at
    once (one round trip, which also tells a new target from an old one).
    ``records=False`` leaves the write records (``.toolkit/writes/``): a
    replacing write that put its own record first removes the others when it
    is done (:meth:`toolkit.coordination.records.WriteRecord.begin`).
    """
    root = _root(group)
    keep = _LEASE_PATH.split("/")

    async def doomed() -> list[str]:
        levels = [root + "".join(f"{p}/" for p in keep[:i]) for i in range(len(keep))]
        listed = await asyncio.gather(*(_children(store, level) for level in levels))
        spared = {f"{root}{RESERVED_PREFIX}/tmp"}  # other jobs' conditional writes use it now
        if not records:
            spared.add(f"{root}{RESERVED_PREFIX}/writes")
        return [
            f"{level}{child.rstrip('/')}"
            for level, part, children in zip(levels, keep, listed, strict=True)
            for child in children
            if child.rstrip("/") != part and f"{level}{child.rstrip('/')}" not in spared
        ]

    return sync(doomed())


def drop_keys(store: Store, doomed: Sequence[str]) -> None:
    """Delete each of ``doomed`` as a key and as a prefix, all at once (bounded).

    On zarr's ``LocalStore``, one delete per child: it removes a directory
    whole.
    """
    local = isinstance(unwrap(store), LocalStore)

    async def drop(key: str) -> None:
        if local:
            # Deleting as both would run two rmtrees over the same files (the slower
            # one fails on what the other removed) and a delete_dir of a file, which
            # LocalStore refuses: errors in the write's report for a clean replace.
            await store.delete(key)
            return

        # A child is a key or a prefix: delete it as both, at once.
        async def as_key() -> None:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                await store.delete(key)

        async def as_prefix() -> None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                await store.delete_dir(key)

        await asyncio.gather(as_key(), as_prefix())

    async def drop_all() -> None:
        gate = asyncio.Semaphore(32)

        async def drop_one(key: str) -> None:
            async with gate:
                await drop(key)

        await asyncio.gather(*(drop_one(key) for key in doomed))

    if doomed:
        sync(drop_all())


async def _children(store: Store, level: str) -> list[str]:
    return [c async for c in store.list_dir(level)]


def remove_strays(store: Store, group: str | None, older_than: float | None = None) -> int:
    """Delete the group's ``*.partial`` files (but coordination's); how many.

    Only zarr's ``LocalStore`` leaves them (an object store's PUT lands whole
    or not at all), so other stores cost nothing here. ``older_than`` (a Unix
    time) keeps files modified since then: they may be a live write's.
    """
    base = unwrap(store)
    if not isinstance(base, LocalStore):
        return 0
    top = Path(base.root) / _root(group)
    coord = top / _COORD_PATH
    n = 0
    for dirpath, dirs, files in os.walk(top):
        if Path(dirpath) == coord.parent:
            # Other jobs asking for a lease write temporary files there right now.
            dirs[:] = [d for d in dirs if d != coord.name]
        for name in files:
            path = Path(dirpath) / name
            if not is_stray(name):
                continue
            with contextlib.suppress(OSError):
                if older_than is None or path.stat().st_mtime < older_than:
                    path.unlink()
                    n += 1
    return n


def create_timeout() -> float:
    """Seconds a replacing write waits for another creator: ``TOOLKIT_CREATE_TIMEOUT``, or 600."""
    return float(os.environ.get("TOOLKIT_CREATE_TIMEOUT", "600"))


def _deferred_lifetime() -> float:
    """Longest a deferred write holds its claim: ``TOOLKIT_DEFERRED_CLAIM_SECONDS``, or 3600."""
    return float(os.environ.get("TOOLKIT_DEFERRED_CLAIM_SECONDS", "3600"))


class CreationClaim:
    """A creating write's hold on its group (see the module docstring).

    Every creating path takes one (``to_zarr`` with ``mode="w"``/``"w-"``,
    ``ingest``, ``copy``, an append that creates its dataset) and hands it down
    explicitly: a write never finds out by itself that it runs under a claim.

    Parameters
    ----------
    store : Store
        The dataset's store.
    group : str, optional
        The group created.
    owner : str
        The write's job id.
    policy : Throttle, optional
        The retries of its requests (the write's), :class:`~toolkit.Throttle`'s by default.
    """

    def __init__(
        self, store: Store, group: str | None, owner: str, policy: Throttle | None = None
    ) -> None:
        self.store, self.group, self.owner = store, group, owner
        self.locks: LockSet | None = None
        self._coord: Coordinator | None = None
        self._done = threading.Event()
        if supports_atomic_create(store):
            self._coord = Coordinator(store, group, policy)
            self.locks = LockSet(self._coord, [CREATE_LEASE], owner, fresh=True)

    @property
    def first(self) -> bool:
        """Whether this claim made its lease's document: no creator held it before."""
        return self.locks is not None and self.locks.leases[0].created

    def acquire(self, *, wait: bool) -> None:
        """Take the lease: ask once (``wait=False``) or wait for a live holder to finish."""
        if self.locks is None:
            return
        lease = self.locks.leases[0]
        # Created without reading it first (one request on a store nobody creates);
        # read only when someone holds or held it.
        if lease.try_acquire():
            self.locks.start(1.0)  # held: starts its renewal
            return
        view = lease.observe()
        if view.state == "held" and _deferred_here(view.doc) and self._still_writing(view.doc):
            # A process never waits on itself: that write is computed later, by this
            # very process, or never.
            raise ExistingStoreError(
                f"a deferred write of {display_store(self.store)} made by this process "
                f"(to_zarr(..., compute=False), job {(view.doc or {}).get('owner')}) holds "
                "its creation claim until it is computed or dropped: compute it (or del it) "
                "before writing this store again"
            )
        try:
            self.locks.start(create_timeout() if wait else 2.0)
        except LeaseTimeoutError as e:
            if wait:
                raise
            raise ExistingStoreError(
                f"another job is creating {display_store(self.store)} right now and "
                f"mode='w-' never overwrites ({e}); wait for it and read its dataset, "
                "or use mode='w' to replace it once it is done"
            ) from e

    def _still_writing(self, doc: dict[str, Any] | None) -> bool:
        """Whether the deferred write holding the claim (its record says) still writes."""
        key = (doc or {}).get("record")
        if not isinstance(key, str):
            return True
        from zarr.buffer import default_buffer_prototype

        buf = sync(unwrap(self.store).get(key, default_buffer_prototype()))
        # Done or failed: its watcher gives the claim up within a moment; wait for it.
        return buf is not None and b'"writing"' in buf.to_bytes()

    def release(self) -> None:
        """Give the lease up (a no-op without one, or when given up already)."""
        self._done.set()
        if self.locks is not None:
            self.locks.stop()

    def withdraw(self) -> None:
        """Give the lease up, deleting its document if this claim created it.

        For a creation refused after the claim was taken (:func:`refuse_foreign`
        beside the lease's request): the store is left as it was found.
        """
        self._done.set()
        if self.locks is not None:
            self.locks.stop(withdraw=True)

    def __enter__(self) -> CreationClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release_when_done(self, write_record: WriteRecord | None, deferred: object = None) -> None:
        """For a write computed later: hold the lease while its record says "writing".

        The lease document says it is a deferred write's. The renewer also looks
        at the record every third of the lease's time to live and gives the
        lease up once the record is gone or says the write failed, when
        ``deferred`` (the ``Delayed``) is dropped without being computed (a
        finalizer), or after ``TOOLKIT_DEFERRED_CLAIM_SECONDS`` (an hour) at the
        latest. If this process ends first, the lease expires on its own.
        """
        if self.locks is None or write_record is None:
            self.release()
            return
        for lease in self.locks.leases:
            lease.note.update(deferred=True, record=write_record.key)
        with contextlib.suppress(Exception):
            self.locks.renew_now()  # the note reaches the store now
        if deferred is not None:
            with contextlib.suppress(TypeError):
                weakref.finalize(deferred, self._done.set)
        until = time.monotonic() + _deferred_lifetime()

        def watch() -> None:
            # Every half second: is the write done (its record gone, or failed)? The
            # Delayed dropped uncomputed (the finalizer), or held past the lifetime?
            while not self._done.wait(0.5):
                if time.monotonic() > until:
                    _log.warning(
                        "toolkit: the deferred write of %s was not done within %g s; its "
                        "creation claim is given up",
                        describe_store(self.store),
                        _deferred_lifetime(),
                    )
                    break
                try:
                    if write_record.state() != "writing":
                        break
                except Exception as e:
                    # The store went away (or refuses us): the lease cannot be renewed
                    # either, so it expires by itself.
                    _log.debug("creation claim watcher: %s", e)
            self.release()

        threading.Thread(target=watch, name="toolkit-create-claim", daemon=True).start()


def _deferred_here(doc: dict[str, Any] | None) -> bool:
    """Whether a lease document is a deferred write's, held by this very process."""
    return bool(
        doc
        and doc.get("deferred")
        and doc.get("pid") == os.getpid()
        and doc.get("host") == socket.gethostname()
    )
