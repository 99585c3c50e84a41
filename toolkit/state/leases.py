"""Coordination state kept in the store itself: atomic creates, leases and locks.

Jobs that write one dataset share nothing but its store, so they coordinate
through it, under ``.toolkit/coord/`` in the group. Everything rests on one
primitive, an *atomic create* (put-if-absent): S3's conditional ``PUT`` with
``If-None-Match: *``, ``link(2)`` on a POSIX file system (zarr's own
``LocalStore`` uses it the same way), a lock-protected dict in memory. Exactly
one of the actors racing for a key wins it.

A :class:`Lease` is a sequence of generation documents,
``<name>/<generation>.json``: taking, renewing and releasing it each *create*
the next generation, so every change of hands is decided by one atomic create
and a lease whose holder died expires after its time to live instead of
blocking anyone. The documents are small JSON, readable by people
(``owner``, ``host``, ``pid``, ``state``, ``expires``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore

from toolkit._util import backoff, encode_json
from toolkit.errors import CoordinationError, LeaseTimeoutError
from toolkit.io import clients
from toolkit.io.groups import RESERVED_PREFIX
from toolkit.io.stores import describe_store, unwrap

_log = logging.getLogger(__name__)

__all__ = [
    "Coordinator",
    "Lease",
    "LockSet",
    "default_ttl",
    "job_id",
    "numbered",
    "supports_atomic_create",
]

_MEMORY_LOCK = threading.Lock()


def job_id() -> str:
    """A new job identity: time-ordered, unique, readable (``<utc>-<host>-<pid>-<rand>``)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    host = socket.gethostname().split(".")[0][:20]
    return f"{stamp}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def numbered(keys: Iterable[str]) -> list[int]:
    """The numbers of the ``<n>.json`` keys among ``keys``.

    Other names (S3 directory placeholders, say) are left out.
    """
    out = []
    for k in keys:
        stem = k.rsplit("/", 1)[-1]
        if stem.endswith(".json") and stem[:-5].isdigit():
            out.append(int(stem[:-5]))
    return out


def default_ttl() -> float:
    """Seconds a lease outlives a silent holder: ``TOOLKIT_LEASE_TTL``, or 30."""
    return float(os.environ.get("TOOLKIT_LEASE_TTL", "30"))


def supports_atomic_create(store: Store) -> bool:
    """Whether ``store`` can create a key atomically (put-if-absent)."""
    return clients.supports_atomic_create(unwrap(store))


@dataclass
class Coordinator:
    """Small JSON documents under a group's ``.toolkit/coord/`` prefix.

    Parameters
    ----------
    store : zarr Store
        The dataset's store (wrappers are looked through: coordination costs a
        handful of requests and must not wait behind a data throttle).
    group : str, optional
        The dataset's group inside the store.
    """

    store: Store
    group: str | None = None
    base: Store = field(init=False, repr=False)
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        self.base = unwrap(self.store)
        if not supports_atomic_create(self.base):
            raise CoordinationError(
                f"{describe_store(self.base)} has no atomic conditional write, which concurrent "
                "jobs need to coordinate; write to a local path or an S3 URL (or pass one job's "
                "writes through toolkit.to_zarr without concurrency)"
            )
        root = f"{self.group.strip('/')}/" if self.group else ""
        self.prefix = f"{root}{RESERVED_PREFIX}/coord/"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Coordinator, (self.base, self.group))

    # -- plain operations -------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        """The document at ``key`` (relative to the prefix), or None."""
        buf = sync(self.base.get(self.prefix + key, prototype=default_buffer_prototype()))
        if buf is None:
            return None
        try:
            doc: dict[str, Any] = json.loads(buf.to_bytes())
        except json.JSONDecodeError:
            return None  # a torn or foreign object counts as absent
        return doc

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write raw bytes at ``key`` (overwriting)."""
        sync(self.base.set(self.prefix + key, Buffer.from_bytes(data)))

    def get_bytes(self, key: str) -> bytes:
        """The raw bytes at ``key``; FileNotFoundError if absent."""
        buf = sync(self.base.get(self.prefix + key, prototype=default_buffer_prototype()))
        if buf is None:
            raise FileNotFoundError(f"{describe_store(self.base)}: {self.prefix + key}")
        return buf.to_bytes()

    def put(self, key: str, doc: dict[str, Any]) -> None:
        """Write ``doc`` at ``key`` (overwriting)."""
        sync(self.base.set(self.prefix + key, encode_json(doc)))

    def delete(self, key: str) -> None:
        """Delete ``key`` if present."""
        with contextlib.suppress(FileNotFoundError):
            sync(self.base.delete(self.prefix + key))

    def get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        """The documents at ``keys``, fetched concurrently (None where absent)."""
        proto = default_buffer_prototype()
        gate = asyncio.Semaphore(64)

        async def one(key: str) -> dict[str, Any] | None:
            async with gate:
                buf = await self.base.get(self.prefix + key, prototype=proto)
            if buf is None:
                return None
            try:
                doc: dict[str, Any] = json.loads(buf.to_bytes())
            except json.JSONDecodeError:
                return None
            return doc

        async def every() -> list[dict[str, Any] | None]:
            return list(await asyncio.gather(*(one(k) for k in keys)))

        return sync(every())

    def delete_many(self, keys: list[str]) -> None:
        """Delete ``keys``, concurrently."""
        gate = asyncio.Semaphore(64)

        async def one(key: str) -> None:
            async with gate:
                with contextlib.suppress(FileNotFoundError):
                    await self.base.delete(self.prefix + key)

        async def every() -> None:
            await asyncio.gather(*(one(k) for k in keys))

        sync(every())

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (relative to the coordination prefix), sorted."""

        async def collect() -> list[str]:
            return await clients.list_keys(self.base, self.prefix + prefix)

        keys = sync(collect())
        return sorted(k[len(self.prefix) :] for k in keys if not k.endswith(".partial"))

    def create_and_delete(self, key: str, doc: dict[str, Any], stale: Sequence[str]) -> bool:
        """:meth:`create` ``key`` while deleting ``stale`` keys, concurrently; create's answer."""
        if not stale:
            return self.create(key, doc)
        with cf.ThreadPoolExecutor(1, thread_name_prefix="toolkit-coord") as pool:
            cleanup = pool.submit(self.delete_many, [*stale])
            created = self.create(key, doc)
            cleanup.result()
        return created

    # -- the one atomic primitive -----------------------------------------

    def create(self, key: str, doc: dict[str, Any]) -> bool:
        """Create ``key`` holding ``doc`` if it does not exist; True if this call created it."""
        full = self.prefix + key
        data = encode_json(doc)
        base = self.base
        if isinstance(base, LocalStore):
            return _create_local(Path(base.root) / full, data.to_bytes())
        if isinstance(base, MemoryStore):
            with _MEMORY_LOCK:
                if full in base._store_dict:
                    return False
                base._store_dict[full] = data
                return True
        return sync(clients.create_if_absent(base, full, data.to_bytes()))


def _create_local(path: Path, data: bytes) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if path exists: the POSIX put-if-absent
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


# -- leases -----------------------------------------------------------------


def _now() -> float:
    return time.time()


def _holder_dead(doc: dict[str, Any]) -> bool:
    """Whether a lease's holder was a process on this host that no longer runs.

    Such a lease need not wait out its time to live (a killed job's rerun on
    the same machine goes on at once). A holder elsewhere is judged by expiry alone.
    """
    pid = doc.get("pid")
    if doc.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A killed child not yet reaped by its parent still has a pid: it runs no code."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@dataclass
class Lease:
    """A named lease in the store: at most one live holder, expiring if it dies.

    Parameters
    ----------
    coord : Coordinator
        Where the lease lives.
    name : str
        Its name (a path under ``.toolkit/coord/leases/``).
    owner : str
        Who takes it (a :func:`job_id`).
    ttl : float
        Seconds a holder may go without renewing before others may take over.
    """

    coord: Coordinator
    name: str
    owner: str
    ttl: float = field(default_factory=default_ttl)
    generation: int | None = None
    expires: float = 0.0
    _stale: list[str] = field(default_factory=list, repr=False)

    @property
    def _dir(self) -> str:
        return f"leases/{self.name}/"

    def _latest(self) -> tuple[int, dict[str, Any] | None]:
        gens = numbered(self.coord.list(self._dir))
        if not gens:
            return 0, None
        g = max(gens)
        return g, self.coord.get(f"{self._dir}{g:012d}.json")

    def _doc(self, state: str) -> dict[str, Any]:
        now = _now()
        return {
            "lease": self.name,
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state": state,
            "at": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(),
            "expires_unix": now + self.ttl,
        }

    def try_acquire(self) -> bool:
        """Take the lease if it is free (released or expired); True if taken."""
        g, doc = self._latest()
        if doc is None and g:
            return False  # just superseded or being cleaned up: look again later
        if (
            doc is not None
            and doc.get("state") == "held"
            and doc.get("owner") != self.owner
            and doc.get("expires_unix", 0) > _now()
            and not _holder_dead(doc)
        ):
            return False
        mine = self._doc("held")
        if not self.coord.create(f"{self._dir}{g + 1:012d}.json", mine):
            return False
        self.generation, self.expires = g + 1, mine["expires_unix"]
        # Generations before the previous one (kept as history) go when this holder
        # lets go, beside its last request: taking a lease costs no round trip for them.
        self._stale = [f"{self._dir}{old:012d}.json" for old in range(max(1, g - 4), g)]
        return True

    def acquire(self, timeout: float = 120.0) -> None:
        """Take the lease, waiting with jittered backoff; raises LeaseTimeoutError."""
        deadline = _now() + timeout
        attempt = 0
        while not self.try_acquire():
            if _now() > deadline:
                _, doc = self._latest()
                raise LeaseTimeoutError(
                    f"lease {self.name!r} in {describe_store(self.coord.base)} was not free "
                    f"within {timeout:g} s; held by {doc and doc.get('owner')} "
                    f"(pid {doc and doc.get('pid')} on {doc and doc.get('host')}) until "
                    f"{doc and dt.datetime.fromtimestamp(doc.get('expires_unix', 0), dt.UTC)}"
                )
            time.sleep(backoff(attempt, base=0.01, cap=0.5))
            attempt += 1

    @property
    def held(self) -> bool:
        """Whether this holder still holds the lease by its own clock (with a margin)."""
        return self.generation is not None and _now() < self.expires - min(2.0, self.ttl / 5)

    def renew(self) -> bool:
        """Extend the lease; False if it was lost (another holder took it over)."""
        if self.generation is None:
            return False
        mine = self._doc("held")
        if not self.coord.create(f"{self._dir}{self.generation + 1:012d}.json", mine):
            self.generation = None
            return False
        old, self.generation, self.expires = (
            self.generation,
            self.generation + 1,
            mine["expires_unix"],
        )
        # Held from here on; the old generation is only history, so failing to delete
        # it (the next holder does) must not look like losing the lease.
        with contextlib.suppress(Exception):
            self.coord.delete(f"{self._dir}{old:012d}.json")
        return True

    def release(self) -> None:
        """Give the lease up (a no-op if it was lost)."""
        if self.generation is None:
            return
        # The held generation stays as history (the next holder deletes it); older
        # ones are deleted at the same time as the release is written: one round trip.
        nxt = f"{self._dir}{self.generation + 1:012d}.json"
        self.coord.create_and_delete(nxt, self._doc("released"), self._stale)
        self._stale = []
        self.generation = None


class LockSet:
    """Hold several leases at once, taken in sorted order (so no two jobs deadlock).

    A background thread renews them every third of their time to live while
    they are held, so a long write keeps them and a dead job loses them.
    """

    def __init__(
        self, coord: Coordinator, names: Iterable[str], owner: str, ttl: float | None = None
    ):
        ttl = default_ttl() if ttl is None else ttl
        self.leases = [Lease(coord, n, owner, ttl) for n in sorted(set(names))]
        self.ttl = ttl
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: list[str] = []

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            for lease in self.leases:
                if lease.generation is None:
                    continue
                try:
                    renewed = lease.renew()
                except Exception as e:
                    # The store did not answer: try again next period. If it stays
                    # silent, the lease expires, as it would for a dead holder.
                    _log.debug("lease %r not renewed: %s", lease.name, e)
                    continue
                if not renewed:
                    self.lost.append(lease.name)

    @contextlib.contextmanager
    def hold(self, timeout: float = 300.0) -> Iterator[LockSet]:
        """Context manager: acquire every lease, renew them, release them at exit."""
        taken: list[Lease] = []
        try:
            for lease in self.leases:
                lease.acquire(timeout)
                taken.append(lease)
            if taken:
                self._thread = threading.Thread(target=self._renew_loop, daemon=True)
                self._thread.start()
            yield self
        finally:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            for lease in reversed(taken):
                with contextlib.suppress(Exception):
                    lease.release()
