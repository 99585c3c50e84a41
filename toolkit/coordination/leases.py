"""Coordination state kept in the store itself: conditional writes, leases and lock sets.

Jobs that write one dataset share nothing but its store, so they coordinate
through it, under ``.toolkit/coord/`` in the group. Every decision rests on a
conditional write (:mod:`toolkit.io.conditional`): create-if-absent, or
replace-if-version. Exactly one of the actors racing for a key wins it.

A :class:`Lease` is one small JSON document, ``leases/<name>.json``. Taking a
free lease creates it, or replaces the released or expired document at the
version read; renewing it replaces the holder's own version; releasing it
replaces it with ``"state": "released"``. So every change of hands is decided
by one conditional write, and a holder whose renewal finds another version
has lost the lease and knows it. Each taking increments the document's
``generation``: the lease's fencing token.

**Expiry does not depend on clocks agreeing across hosts.** A holder renews
every third of the time to live (``ttl``) and trusts its lease only until
``ttl`` minus a margin after it *sent* its last successful renewal, by its own
monotonic clock. Another job judges the lease expired only after *it* has
seen the same version, unchanged, for ``ttl`` seconds of its own monotonic
clock. Since the version was written after the holder sent it, the observer's
window always ends after the holder stopped trusting the lease, whatever the
hosts' wall clocks say (only their rates must agree, within the margin). The
wall-clock times in the document are for people to read, and a hint of
whether waiting is worth it; no decision rests on them. A holder that was a
process on this host that no longer runs is dead at once.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from zarr.abc.store import Store

from toolkit._util import backoff, encode_json
from toolkit.errors import LeaseLostError, LeaseTimeoutError
from toolkit.io.conditional import ConditionalStore, conditional_store, supports_conditional
from toolkit.io.groups import RESERVED_PREFIX
from toolkit.io.stores import describe_store, unwrap
from toolkit.io.throttle import Throttle
from toolkit.io.wrappers import RetryStore, find_wrapper
from toolkit.upstream import sync

_log = logging.getLogger(__name__)

__all__ = [
    "Coordinator",
    "Lease",
    "LeaseView",
    "LockSet",
    "default_ttl",
    "holder_dead",
    "job_id",
    "numbered",
    "supports_atomic_create",
]


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
    """Whether ``store`` can write conditionally (create-if-absent, replace-if-version)."""
    return supports_conditional(store)


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None  # a torn or foreign object counts as absent
    return doc if isinstance(doc, dict) else None


@dataclass
class Coordinator:
    """Small JSON documents under a group's ``.toolkit/coord/`` prefix.

    Parameters
    ----------
    store : zarr Store
        The dataset's store. Wrappers are looked through: coordination costs a
        handful of requests and must not wait behind a data throttle. A
        :class:`~toolkit.io.wrappers.RetryStore` among them gives its retry
        policy to the coordination requests.
    group : str, optional
        The dataset's group inside the store.
    policy : Throttle, optional
        The retry policy (default: the wrappers', else :class:`~toolkit.Throttle`'s).
    """

    store: Store
    group: str | None = None
    policy: Throttle | None = None
    base: Store = field(init=False, repr=False)
    cas: ConditionalStore = field(init=False, repr=False)
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        self.base = unwrap(self.store)
        if self.policy is None:
            retry = find_wrapper(self.store, RetryStore)
            self.policy = retry.policy if retry is not None else None
        self.cas = conditional_store(self.base, self.policy)
        root = f"{self.group.strip('/')}/" if self.group else ""
        self.prefix = f"{root}{RESERVED_PREFIX}/coord/"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Coordinator, (self.base, self.group, self.policy))

    @property
    def where(self) -> str:
        """A secret-free description of the store, for messages."""
        return describe_store(self.base)

    # -- asynchronous: for requests sent together -------------------------

    async def aget(self, key: str) -> dict[str, Any] | None:
        """The document at ``key`` (relative to the prefix), or None."""
        got = await self.cas.get(self.prefix + key)
        return None if got is None else _decode(got.data)

    async def aget_versioned(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        """The document at ``key`` and its version; ``(None, None)`` when absent."""
        got = await self.cas.get(self.prefix + key)
        if got is None:
            return None, None
        return _decode(got.data), got.version

    async def acreate(self, key: str, doc: dict[str, Any]) -> str | None:
        """Create ``key`` unless it exists: its version, or None."""
        return await self.cas.create(self.prefix + key, encode_json(doc).to_bytes())

    async def areplace(self, key: str, doc: dict[str, Any], version: str) -> str | None:
        """Replace ``key`` if still at ``version``: the new version, or None."""
        return await self.cas.replace(self.prefix + key, encode_json(doc).to_bytes(), version)

    async def aput(self, key: str, doc: dict[str, Any]) -> None:
        """Write ``doc`` at ``key`` unconditionally."""
        await self.cas.put(self.prefix + key, encode_json(doc).to_bytes())

    async def aput_bytes(self, key: str, data: bytes) -> None:
        """Write raw bytes at ``key`` unconditionally."""
        await self.cas.put(self.prefix + key, data)

    async def aget_bytes(self, key: str) -> bytes | None:
        """The raw bytes at ``key``, or None."""
        got = await self.cas.get(self.prefix + key)
        return None if got is None else got.data

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write raw bytes at ``key`` (overwriting)."""
        sync(self.aput_bytes(key, data))

    def get_bytes(self, key: str) -> bytes:
        """The raw bytes at ``key``; FileNotFoundError if absent."""
        data = sync(self.aget_bytes(key))
        if data is None:
            raise FileNotFoundError(f"{self.where}: {self.prefix + key}")
        return data

    async def adelete(self, key: str) -> None:
        """Delete ``key`` if present."""
        await self.cas.delete(self.prefix + key)

    async def alist(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (relative to the coordination prefix), sorted."""
        keys = await self.cas.list(self.prefix + prefix)
        return [k[len(self.prefix) :] for k in keys]

    # -- synchronous ------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        """The document at ``key`` (relative to the prefix), or None."""
        return sync(self.aget(key))

    def get_versioned(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        """The document at ``key`` and its version; ``(None, None)`` when absent."""
        return sync(self.aget_versioned(key))

    def create(self, key: str, doc: dict[str, Any]) -> bool:
        """Create ``key`` holding ``doc`` if it does not exist; True if this call created it."""
        return sync(self.acreate(key, doc)) is not None

    def replace(self, key: str, doc: dict[str, Any], version: str) -> str | None:
        """Replace ``key`` with ``doc`` if it is still at ``version``; the new version or None."""
        return sync(self.areplace(key, doc, version))

    def put(self, key: str, doc: dict[str, Any]) -> None:
        """Write ``doc`` at ``key`` (overwriting)."""
        sync(self.aput(key, doc))

    def delete(self, key: str) -> None:
        """Delete ``key`` if present."""
        sync(self.adelete(key))

    def list(self, prefix: str) -> builtins.list[str]:
        """Keys under ``prefix`` (relative to the coordination prefix), sorted."""
        return sync(self.alist(prefix))

    def get_many(self, keys: Sequence[str]) -> builtins.list[dict[str, Any] | None]:
        """The documents at ``keys``, fetched concurrently (None where absent)."""
        return sync(gather_limited([self.aget(k) for k in keys]))

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete ``keys``, concurrently."""
        sync(gather_limited([self.adelete(k) for k in keys]))


async def gather_limited[T](aws: Sequence[Any], limit: int = 64) -> list[T]:
    """``asyncio.gather`` with at most ``limit`` of the awaitables running at once."""
    gate = asyncio.Semaphore(limit)

    async def bounded(aw: Any) -> T:
        async with gate:
            return await aw  # type: ignore[no-any-return]

    return list(await asyncio.gather(*(bounded(aw) for aw in aws)))


# -- leases -----------------------------------------------------------------


def holder_dead(doc: Mapping[str, Any]) -> bool:
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


def _margin(ttl: float) -> float:
    """How long before ``ttl`` runs out a holder stops trusting its lease (clock-rate slack)."""
    return min(2.0, max(0.05 * ttl, ttl / 5))


Liveness = Literal["free", "held", "released", "dead", "expired"]


@dataclass(frozen=True)
class LeaseView:
    """What an observer knows of a lease it does not hold.

    Attributes
    ----------
    state : {"free", "held", "released", "dead", "expired"}
        ``free``: no document; ``held``: a holder renews it (as far as this
        observer has watched); ``released``; ``dead``: its holder was a process
        on this host that no longer runs; ``expired``: unchanged for its whole
        time to live, by this observer's clock.
    doc : dict or None
        The lease document (owner, host, pid, generation, ...).
    """

    state: Liveness
    doc: dict[str, Any] | None

    @property
    def gone(self) -> bool:
        """Whether nobody holds the lease (free, released, dead or expired)."""
        return self.state != "held"

    def holder(self) -> str:
        """Who holds it, for messages."""
        d = self.doc or {}
        return f"job {d.get('owner')} (pid {d.get('pid')} on {d.get('host')})"


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
        Who takes it (a job id). Another run with the same owner is another
        holder: a rerun does not take a lease its first run still renews.
    ttl : float
        Seconds a holder may go without renewing before others may take over.
    note : dict, optional
        Extra fields for the document (e.g. ``{"deferred": True}``).
    fresh : bool
        The lease is usually absent (a job's own, named after it): the first
        attempt creates it without reading it first, one round trip instead of
        two; when it exists after all, it is read and judged as usual.
    """

    coord: Coordinator
    name: str
    owner: str
    ttl: float = field(default_factory=default_ttl)
    note: dict[str, Any] = field(default_factory=dict)
    fresh: bool = False
    generation: int | None = None
    run: str = field(default_factory=lambda: uuid.uuid4().hex)
    _version: str | None = field(default=None, repr=False)
    _valid_until: float = field(default=0.0, repr=False)
    _seen: tuple[str, float] | None = field(default=None, repr=False)
    _created: bool = field(default=False, repr=False)

    @property
    def key(self) -> str:
        """The lease document's key under the coordination prefix."""
        return f"leases/{self.name}.json"

    def _doc(self, state: str, generation: int) -> dict[str, Any]:
        return {
            "lease": self.name,
            "owner": self.owner,
            "run": self.run,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state": state,
            "generation": generation,
            "ttl": self.ttl,
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            **self.note,
        }

    def _judge(self, doc: dict[str, Any] | None, version: str | None) -> Liveness:
        """The observer's verdict on the document at ``version`` (remembering what it saw)."""
        if doc is None or version is None:
            return "free"
        if doc.get("state") == "released":
            return "released"
        if doc.get("run") == self.run:
            return "held"  # this very holder's
        if holder_dead(doc):
            return "dead"
        now = time.monotonic()
        if self._seen is None or self._seen[0] != version:
            self._seen = (version, now)
            return "held"
        ttl = float(doc.get("ttl", self.ttl))
        return "expired" if now - self._seen[1] >= ttl else "held"

    async def aobserve(self) -> LeaseView:
        """Look at the lease (one GET); repeated looks tell a silent holder by its expiry."""
        doc, version = await self.coord.aget_versioned(self.key)
        return LeaseView(self._judge(doc, version), doc)

    def observe(self) -> LeaseView:
        """Look at the lease (one GET); see :meth:`aobserve`."""
        return sync(self.aobserve())

    async def atry_acquire(self) -> bool:
        """Take the lease if it is free, released, dead or expired; True if taken."""
        sent = time.monotonic()
        if self.fresh and self._seen is None and self.generation is None:
            self.fresh = False  # only the first attempt: then it is read as any lease
            new = await self.coord.acreate(self.key, self._doc("held", 1))
            if new is not None:
                self.generation, self._version, self._created = 1, new, True
                self._valid_until = sent + self.ttl - _margin(self.ttl)
                return True
            sent = time.monotonic()
        doc, version = await self.coord.aget_versioned(self.key)
        verdict = self._judge(doc, version)
        if verdict == "free":
            gen = 1
            new = await self.coord.acreate(self.key, self._doc("held", gen))
        elif verdict == "held" and (doc or {}).get("run") != self.run:
            return False
        else:
            assert doc is not None and version is not None
            gen = int(doc.get("generation", 0)) + 1
            sent = time.monotonic()
            new = await self.coord.areplace(self.key, self._doc("held", gen), version)
        if new is None:
            return False  # another actor won the same race
        self._created = verdict == "free"
        self.generation, self._version = gen, new
        self._valid_until = sent + self.ttl - _margin(self.ttl)
        return True

    def try_acquire(self) -> bool:
        """Take the lease if it is free (see :meth:`atry_acquire`)."""
        return sync(self.atry_acquire())

    def acquire(self, timeout: float = 120.0) -> None:
        """Take the lease, waiting with jittered backoff; raises LeaseTimeoutError."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while not self.try_acquire():
            if time.monotonic() > deadline:
                view = self.observe()
                raise LeaseTimeoutError(
                    f"lease {self.name!r} in {self.coord.where} was not free within "
                    f"{timeout:g} s; held by {view.holder()}, last renewed "
                    f"{(view.doc or {}).get('at')}; a silent holder loses it "
                    f"{(view.doc or {}).get('ttl', self.ttl)} s after its last renewal"
                )
            time.sleep(backoff(attempt, base=0.01, cap=min(0.5, self.ttl / 4)))
            attempt += 1

    @property
    def created(self) -> bool:
        """Whether this holder created the lease's document (none existed when it took it).

        No holder before it ever wrote under the lease: a document is made by
        the first holder and never deleted once that holder may have written
        (:meth:`awithdraw` deletes only a document its holder made and used for
        nothing).
        """
        return self._created and self.generation is not None

    @property
    def held(self) -> bool:
        """Whether this holder may still trust the lease, by its own monotonic clock."""
        return self.generation is not None and time.monotonic() < self._valid_until

    def check(self) -> None:
        """Raise :class:`~toolkit.errors.LeaseLostError` unless the lease is :attr:`held`."""
        if not self.held:
            raise LeaseLostError(
                f"job {self.owner} no longer holds lease {self.name!r} in {self.coord.where} "
                "(it expired or another job took it over); it stops writing"
            )

    async def arenew(self) -> bool:
        """Extend the lease; False if it was lost (another holder took it over)."""
        if self.generation is None or self._version is None:
            return False
        sent = time.monotonic()
        new = await self.coord.areplace(self.key, self._doc("held", self.generation), self._version)
        if new is None:
            self.generation = self._version = None
            return False
        self._version = new
        self._valid_until = sent + self.ttl - _margin(self.ttl)
        return True

    def renew(self) -> bool:
        """Extend the lease; False if it was lost."""
        return sync(self.arenew())

    async def arelease(self) -> None:
        """Give the lease up (a no-op if it was lost)."""
        if self.generation is None or self._version is None:
            return
        gen, version = self.generation, self._version
        self.generation = self._version = None
        await self.coord.areplace(self.key, self._doc("released", gen), version)

    def release(self) -> None:
        """Give the lease up (a no-op if it was lost)."""
        sync(self.arelease())

    async def awithdraw(self) -> None:
        """Give the lease up and, when this holder created its document, delete it.

        For a job that took the lease and then found it must not run (a refused
        creation): the store is left as it was found. A document that existed
        before is released as usual (its generation goes on counting).
        """
        if not self._created:
            await self.arelease()
            return
        if self.generation is None:
            return
        self.generation = self._version = None
        await self.coord.adelete(self.key)


class LockSet:
    """Hold several leases at once, taken in sorted order (so no two jobs deadlock).

    A background thread renews them every third of their time to live while
    they are held, so a long write keeps them and a dead job loses them. A
    lease found lost is recorded in :attr:`lost`, sets :attr:`lost_event` and
    calls ``on_lost`` (the holder stops its writes).
    """

    def __init__(
        self,
        coord: Coordinator,
        names: Iterable[str],
        owner: str,
        ttl: float | None = None,
        on_lost: Callable[[str], None] | None = None,
        note: dict[str, Any] | None = None,
        fresh: bool = False,
    ):
        ttl = default_ttl() if ttl is None else ttl
        self.leases = [
            Lease(coord, n, owner, ttl, dict(note or {}), fresh) for n in sorted(set(names))
        ]
        self.ttl = ttl
        self.on_lost = on_lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: list[str] = []
        self.lost_event = threading.Event()
        self.extra: list[Callable[[], None]] = []

    def renew_now(self) -> None:
        """Renew every lease once, now (the renewer does it every third of the ttl)."""
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
                self._lost(lease.name)
        for fn in list(self.extra):
            with contextlib.suppress(Exception):
                fn()

    def _lost(self, name: str) -> None:
        self.lost.append(name)
        self.lost_event.set()
        _log.warning("toolkit: lease %r was lost; its job stops writing", name)
        if self.on_lost is not None:
            with contextlib.suppress(Exception):
                self.on_lost(name)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            self.renew_now()

    @property
    def held(self) -> bool:
        """Whether every lease is still trusted by this holder's clock."""
        return all(lease.held for lease in self.leases)

    def check(self) -> None:
        """Raise :class:`~toolkit.errors.LeaseLostError` if a lease is lost or expired."""
        for lease in self.leases:
            lease.check()

    def start(self, timeout: float = 300.0) -> LockSet:
        """Acquire every lease (in order) and start renewing them."""
        self._stop.clear()  # held again after a stop: the new renewer must run
        taken: list[Lease] = []
        try:
            for lease in self.leases:
                if not lease.held:  # (one taken already, by its own try_acquire, is kept)
                    lease.acquire(timeout)
                taken.append(lease)
        except BaseException:
            for lease in reversed(taken):
                with contextlib.suppress(Exception):
                    lease.release()
            raise
        self._thread = threading.Thread(
            target=self._renew_loop, name="toolkit-lease-renewer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, *, withdraw: bool = False) -> None:
        """Stop renewing and release every lease (released concurrently).

        ``withdraw=True``: the documents this holder created are deleted
        (:meth:`Lease.awithdraw`), for a job refused after taking its leases.
        """
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        held = [lease for lease in self.leases if lease.generation is not None]
        if held:
            with contextlib.suppress(Exception):
                sync(
                    gather_limited(
                        [lease.awithdraw() if withdraw else lease.arelease() for lease in held]
                    )
                )

    @contextlib.contextmanager
    def hold(self, timeout: float = 300.0) -> Iterator[LockSet]:
        """Context manager: acquire every lease, renew them, release them at exit."""
        self.start(timeout)
        try:
            yield self
        finally:
            self.stop()
