"""Conditional writes: the store operations that concurrent jobs coordinate through.

zarr's :class:`~zarr.abc.store.Store` can put, get and delete, and put only if
absent; coordination also needs to *replace an object only if it is still the
version one read*, so that a writer whose view is stale can never overwrite
what another wrote after it read. This module gives every store toolkit
coordinates through the same four operations:

- :meth:`ConditionalStore.get`: the object's bytes and its *version*;
- :meth:`ConditionalStore.create`: create-if-absent;
- :meth:`ConditionalStore.replace`: replace-if-version (compare-and-swap);
- :meth:`ConditionalStore.put` / :meth:`ConditionalStore.delete`: unconditional.

A version is opaque: the ETag on S3 and Azure (``If-Match`` /
``If-None-Match: *`` on the PUT, decided by the store itself), a digest of the
content on a local file system and in memory. On a local file system the
compare and the rename that replaces the file happen under an exclusive
``flock(2)`` on the key's directory, taken by every conditional writer: the
documented equivalent of a conditional PUT for writers on one host (network
file systems without POSIX locks are not safe for concurrent jobs). In memory,
under a lock.

Requests are retried as data requests are (:class:`~toolkit.Throttle`'s
``max_retries`` within ``max_retry_seconds``, jittered backoff, the same error
classes), and a retry first checks whether the last attempt landed: a create
or replace whose answer was lost on the way is found by reading the key back,
not mistaken for someone else's write. When the retries run out the error is
:class:`~toolkit.errors.StoreUnavailableError` (or the class the data path
would raise), never a client's raw exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import random
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from zarr.abc.store import Store
from zarr.buffer.cpu import Buffer
from zarr.storage import FsspecStore, LocalStore, MemoryStore, ObjectStore, WrapperStore

from toolkit.errors import (
    CoordinationError,
    StoreAccessError,
    StoreRequestError,
    StoreThrottledError,
    StoreUnavailableError,
)
from toolkit.io.classify import classify_error, http_status
from toolkit.io.clients import list_keys
from toolkit.io.stores import describe_store
from toolkit.io.throttle import Throttle
from toolkit.upstream import call_s3, memory_store_dict, wrapped_store

__all__ = [
    "ConditionalStore",
    "Versioned",
    "conditional_store",
    "content_version",
    "supports_conditional",
]

T = TypeVar("T")


class Versioned(NamedTuple):
    """An object's bytes and the version they are (to replace it conditionally)."""

    data: bytes
    version: str


def content_version(data: bytes) -> str:
    """The version of ``data`` where the store keeps none: a digest of the bytes."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class _Retries:
    """The retry policy of coordination requests: the data path's :class:`Throttle`."""

    max_retries: int = Throttle.max_retries
    max_seconds: float = Throttle.max_retry_seconds
    base: float = Throttle.backoff_base
    cap: float = Throttle.backoff_max

    @classmethod
    def of(cls, policy: Throttle | None) -> _Retries:
        if policy is None:
            return cls()
        return cls(
            policy.max_retries, policy.max_retry_seconds, policy.backoff_base, policy.backoff_max
        )


class ConditionalStore(ABC):
    """Versioned reads and conditional writes on one store (keys relative to its root).

    Use :func:`conditional_store` to get the one for a zarr store. Every method
    is a coroutine: run it with :func:`toolkit.upstream.sync` (zarr's) from plain code, or
    await it on zarr's event loop.
    """

    def __init__(self, store: Store, retries: _Retries | None = None) -> None:
        self.store = store
        self.retries = retries or _Retries()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.store, self.retries))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store})"

    # -- what a backend implements ----------------------------------------

    @abstractmethod
    async def _get(self, key: str) -> Versioned | None: ...

    @abstractmethod
    async def _create(self, key: str, data: bytes) -> str | None:
        """Create ``key``; its version, or None if it exists."""

    @abstractmethod
    async def _replace(self, key: str, data: bytes, version: str) -> str | None:
        """Replace ``key`` if it is at ``version``; the new version, or None if it is not."""

    async def _put(self, key: str, data: bytes) -> None:
        await self.store.set(key, Buffer.from_bytes(data))

    async def _delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await self.store.delete(key)

    async def _list(self, prefix: str) -> list[str]:
        return [k async for k in self.store.list_prefix(prefix)]

    # -- the operations, retried ------------------------------------------

    async def get(self, key: str) -> Versioned | None:
        """The object at ``key`` with its version, or None if there is none."""
        return await self._retried("get", key, lambda: self._get(key))

    async def create(self, key: str, data: bytes) -> str | None:
        """Create ``key`` holding ``data`` unless it exists: its version, or None if it existed.

        An attempt whose answer was lost may have landed: before trying again
        the key is read back, and found holding ``data`` it counts as created.
        """
        landed: list[bool] = []

        async def attempt() -> str | None:
            if landed:  # an earlier attempt failed in transit: did it land?
                now = await self._get(key)
                if now is not None:
                    return now.version if now.data == data else None
            landed.append(True)
            return await self._create(key, data)

        return await self._retried("create", key, attempt)

    async def replace(self, key: str, data: bytes, version: str) -> str | None:
        """Replace ``key`` with ``data`` if it is still at ``version``.

        Returns the new version, or None when the object changed (or went)
        since ``version`` was read: the caller reads it again and decides again.
        """
        tried: list[bool] = []

        async def attempt() -> str | None:
            if tried:
                now = await self._get(key)
                if now is None:
                    return None
                if now.data == data and now.version != version:
                    return now.version  # the lost attempt landed
                if now.version != version:
                    return None
            tried.append(True)
            return await self._replace(key, data, version)

        return await self._retried("replace", key, attempt)

    async def put(self, key: str, data: bytes) -> None:
        """Write ``key`` unconditionally (hints, caches: what no one decides on)."""
        await self._retried("put", key, lambda: self._put(key, data))

    async def delete(self, key: str) -> None:
        """Delete ``key`` if it exists."""
        await self._retried("delete", key, lambda: self._delete(key))

    async def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, sorted (a killed local write's ``*.partial`` left out)."""
        keys = await self._retried("list", prefix, lambda: self._list(prefix))
        return sorted(k for k in keys if not k.endswith(".partial"))

    async def _retried(self, op: str, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        r = self.retries
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                return await fn()
            except Exception as e:
                verdict = classify_error(e)
                attempt += 1
                delay = random.random() * min(r.cap, r.base * 2.0 ** min(attempt, 30))
                spent = time.monotonic() - start
                if verdict == "fatal" or attempt > r.max_retries or spent + delay > r.max_seconds:
                    raise _final(self.store, op, key, e, verdict, attempt, spent) from e
                await asyncio.sleep(delay)


def _final(
    store: Store, op: str, key: str, e: Exception, verdict: str, attempts: int, spent: float
) -> Exception:
    where = f"{describe_store(store)}/{key}"
    brief = str(e).split("\n\nDebug source", 1)[0].split("\n", 1)[0][:300]
    if verdict == "throttled":
        return StoreThrottledError(
            f"{where}: the store kept answering 'slow down' to {op} (coordination); gave up "
            f"after {attempts} attempts in {spent:.1f} s"
        )
    if verdict == "transient":
        return StoreUnavailableError(
            f"{where}: {op} (coordination) failed {attempts} times in {spent:.1f} s with "
            f"retryable errors (last: {type(e).__name__}: {brief}); the store or the network "
            "is unavailable. Check the endpoint, or raise max_retries / max_retry_seconds in "
            "toolkit.Throttle"
        )
    status, _ = http_status(e)
    if isinstance(e, PermissionError) or status == 403:
        return StoreAccessError(f"{where}: access denied (403) to {op}; check the credentials")
    if status is not None and 400 <= status < 500 and status != 404:
        return StoreRequestError(f"{where}: the store rejected {op} (HTTP {status}): {brief}")
    return e


# --------------------------------------------------------------------------- local files


class _LocalConditional(ConditionalStore):
    """A local directory: ``link(2)`` creates, a locked compare-and-rename replaces."""

    @property
    def root(self) -> Path:
        assert isinstance(self.store, LocalStore)
        return Path(self.store.root)

    async def _get(self, key: str) -> Versioned | None:
        return await asyncio.to_thread(self._get_sync, key)

    def _get_sync(self, key: str) -> Versioned | None:
        try:
            data = (self.root / key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Versioned(data, content_version(data))

    async def _create(self, key: str, data: bytes) -> str | None:
        return await asyncio.to_thread(self._create_sync, key, data)

    def _create_sync(self, key: str, data: bytes) -> str | None:
        path = self.root / key
        for attempt in range(_LOCAL_ATTEMPTS):
            tmp = _written_temp(path, data, self.root)
            try:
                os.link(tmp, path)  # fails if path exists: the POSIX put-if-absent
            except FileExistsError:
                return None
            except FileNotFoundError:
                # A replacing write cleared the directory under us (its temporary
                # file went with it): write it again.
                if attempt + 1 == _LOCAL_ATTEMPTS:
                    raise
                continue
            finally:
                _drop(tmp, self.root)
            return content_version(data)
        raise AssertionError("unreachable")

    async def _replace(self, key: str, data: bytes, version: str) -> str | None:
        return await asyncio.to_thread(self._replace_sync, key, data, version)

    def _replace_sync(self, key: str, data: bytes, version: str) -> str | None:
        path = self.root / key
        for attempt in range(_LOCAL_ATTEMPTS):
            if not path.exists():
                # Gone (the store was deleted): a replace never makes its directories
                # again, as a late lease renewal or release would.
                return None
            try:
                tmp = _written_temp(path, data, self.root, parents=False)
            except FileNotFoundError:
                return None  # its directory went: so did the object
            try:
                with _dir_lock(path.parent):
                    try:
                        current = content_version(path.read_bytes())
                    except FileNotFoundError:
                        return None
                    if current != version:
                        return None
                    os.replace(tmp, path)
            except FileNotFoundError:
                if attempt + 1 == _LOCAL_ATTEMPTS:
                    raise
                continue  # the temporary file was cleared under us: again
            finally:
                _drop(tmp, self.root)
            return content_version(data)
        raise AssertionError("unreachable")


_LOCAL_ATTEMPTS = 8


def _drop(tmp: Path, root: Path) -> None:
    """Remove a temporary file (its directory stays: other writers use it at the same time)."""
    tmp.unlink(missing_ok=True)


def _written_temp(path: Path, data: bytes, root: Path | None = None, parents: bool = True) -> Path:
    """``data`` in a synced temporary file, to be linked or renamed to ``path``.

    Under ``root/.toolkit/tmp/`` when a root is given: on the same file system,
    where no reader of the groups lists it (beside ``path`` a group's listing
    would find ``zarr.json.<id>.partial``). ``parents=False`` (a replace of a key
    that exists) makes no directory but ``.toolkit/tmp``.
    """
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    where = root / ".toolkit" / "tmp" if root is not None else path.parent
    # Without ``parents``, only the temporary directory, under a ``.toolkit`` that exists.
    where.mkdir(parents=parents, exist_ok=True)
    tmp = where / f"{path.name}.{uuid.uuid4().hex}.partial"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Any:
    """An exclusive ``flock`` on a directory: every conditional writer of its keys takes it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --------------------------------------------------------------------------- memory


class _MemoryConditional(ConditionalStore):
    """zarr's MemoryStore: the check and the write under one lock per store."""

    def __init__(self, store: Store, retries: _Retries | None = None) -> None:
        super().__init__(store, retries)
        assert isinstance(store, MemoryStore)
        # The dict is zarr's own (MemoryStore._store_dict): the only way to check and
        # write in one step. One lock per dict, kept on the dict's owner.
        self._lock = _memory_lock(store)

    @property
    def _dict(self) -> MutableMapping[str, Any]:
        assert isinstance(self.store, MemoryStore)
        return memory_store_dict(self.store)

    async def _get(self, key: str) -> Versioned | None:
        with self._lock:
            buf = self._dict.get(key)
        if buf is None:
            return None
        data = buf.to_bytes()
        return Versioned(data, content_version(data))

    async def _create(self, key: str, data: bytes) -> str | None:
        with self._lock:
            if key in self._dict:
                return None
            self._dict[key] = Buffer.from_bytes(data)
        return content_version(data)

    async def _replace(self, key: str, data: bytes, version: str) -> str | None:
        with self._lock:
            buf = self._dict.get(key)
            if buf is None or content_version(buf.to_bytes()) != version:
                return None
            self._dict[key] = Buffer.from_bytes(data)
        return content_version(data)


def _memory_lock(store: MemoryStore) -> threading.Lock:
    # Kept on the store object itself: stores and their locks live and die together.
    # (dict.setdefault is atomic: two threads get the same lock.)
    lock: threading.Lock = store.__dict__.setdefault("_toolkit_cas_lock", threading.Lock())
    return lock


# --------------------------------------------------------------------------- obstore


class _ObstoreConditional(ConditionalStore):
    """obstore (S3, Azure, GCS): ``PutMode`` create and update-if-ETag, decided by the store."""

    @property
    def _inner(self) -> Any:
        return self.store.store  # type: ignore[attr-defined]

    async def _get(self, key: str) -> Versioned | None:
        import obstore

        try:
            result = await obstore.get_async(self._inner, key)
        except FileNotFoundError:
            return None
        data = bytes(await result.bytes_async())
        return Versioned(data, _obstore_version(result.meta))

    async def _create(self, key: str, data: bytes) -> str | None:
        import obstore

        try:
            out = await obstore.put_async(self._inner, key, data, mode="create")
        except Exception as e:
            if _answer(e) == "exists":
                return None
            raise
        return _obstore_version(out)

    async def _replace(self, key: str, data: bytes, version: str) -> str | None:
        import obstore

        e_tag, _, ver = version.partition("\x00")
        # obstore wants the keys it uses only (None is refused); S3 ignores "version".
        mode: dict[str, Any] = {"e_tag": e_tag, **({"version": ver} if ver else {})}
        try:
            out = await obstore.put_async(self._inner, key, data, mode=mode)  # type: ignore[arg-type]
        except FileNotFoundError:
            return None
        except Exception as e:
            if _answer(e) in ("exists", "conflict"):
                return None
            raise
        return _obstore_version(out)


def _obstore_version(meta: Any) -> str:
    e_tag = meta.get("e_tag") if hasattr(meta, "get") else None
    version = meta.get("version") if hasattr(meta, "get") else None
    return f"{e_tag or ''}\x00{version or ''}"


# --------------------------------------------------------------------------- s3fs


class _S3fsConditional(ConditionalStore):
    """s3fs (botocore): ``If-None-Match: *`` and ``If-Match: <ETag>`` on the PUT."""

    def _where(self, key: str) -> tuple[Any, str, str]:
        assert isinstance(self.store, FsspecStore)
        full = f"{self.store.path.rstrip('/')}/{key}".lstrip("/")
        bucket, _, path = full.partition("/")
        return self.store.fs, bucket, path

    async def _get(self, key: str) -> Versioned | None:
        fs, bucket, path = self._where(key)
        try:
            out = await call_s3(fs, "get_object", Bucket=bucket, Key=path)
        except FileNotFoundError:
            return None
        body = out["Body"]
        try:
            data = await body.read()
        finally:
            body.close()
        return Versioned(bytes(data), str(out.get("ETag", "")))

    async def _create(self, key: str, data: bytes) -> str | None:
        fs, bucket, path = self._where(key)
        try:
            out = await call_s3(
                fs, "put_object", Bucket=bucket, Key=path, Body=data, IfNoneMatch="*"
            )
        except Exception as e:
            if _answer(e) != "exists":
                raise
            refused = True
        else:
            return str(out.get("ETag", ""))
        # Outside the handler: an error of the read below must not chain to the 412.
        return await self._own(key, data, None) if refused else None

    async def _replace(self, key: str, data: bytes, version: str) -> str | None:
        fs, bucket, path = self._where(key)
        try:
            out = await call_s3(
                fs, "put_object", Bucket=bucket, Key=path, Body=data, IfMatch=version
            )
        except FileNotFoundError:
            return None
        except Exception as e:
            if _answer(e) not in ("exists", "conflict"):
                raise
            refused = True
        else:
            return str(out.get("ETag", ""))
        return await self._own(key, data, version) if refused else None

    async def _own(self, key: str, data: bytes, version: str | None) -> str | None:
        """After a refusal: whether the object is this very write, landed after all.

        aiohttp sends a PUT again, unseen by toolkit, when the connection was
        reset before the answer: the first request may have landed, and the
        second is then refused. The object holding exactly these bytes (at
        another version than the one replaced) says the write landed. On s3fs,
        therefore, two writers whose documents are byte for byte the same are
        not told apart: toolkit's own documents always carry their writer's
        identity (run ids, request ids), and its chunk merges are idempotent.
        """
        now = await self._get(key)
        if now is not None and now.data == data and now.version != version:
            return now.version
        return None

    async def _list(self, prefix: str) -> list[str]:
        return await list_keys(self.store, prefix)


def _answer(exc: BaseException) -> str | None:
    """``"exists"`` (412: the key is there, or not at that version), ``"conflict"`` (409) or None.

    Read from the status and code each client's errors carry, along the
    exception's causes: never from digits in its text, which also holds the key
    (a lease's generation ``000000000412.json``). Azure refuses ``If-None-Match: *``
    with 409 ``BlobAlreadyExists`` (not S3's 412) and ``If-Match`` with 412
    ``ConditionNotMet``; obstore raises them as ``AlreadyExistsError`` and
    ``PreconditionError``, and their codes say the same where it does not.
    """
    e: BaseException | None = exc
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        status, code = http_status(e)
        text = str(e)
        if (
            isinstance(e, FileExistsError)  # s3fs's translation of If-None-Match's 412
            or type(e).__name__ in ("AlreadyExistsError", "PreconditionError")
            or status == 412
            or code in _EXISTS_CODES
            or "PreconditionFailed" in text
            or "At least one of the pre" in text
        ):
            return "exists"
        if (
            status == 409
            or code == "ConditionalRequestConflict"
            or "ConditionalRequestConflict" in text
        ):
            return "conflict"
        e = e.__cause__ or e.__context__
    return None


#: Error codes saying a conditional write found the key there (or at another version):
#: S3's, and Azure's (409 BlobAlreadyExists to If-None-Match, 412 ConditionNotMet).
_EXISTS_CODES = frozenset({"PreconditionFailed", "BlobAlreadyExists", "ConditionNotMet"})


# --------------------------------------------------------------------------- which


def _base(store: Store) -> Store:
    while isinstance(store, WrapperStore):
        store = wrapped_store(store)
    return store


def supports_conditional(store: Store) -> bool:
    """Whether toolkit can write conditionally to ``store`` (below any wrappers)."""
    base = _base(store)
    if isinstance(base, LocalStore | MemoryStore):
        return True
    if isinstance(base, FsspecStore):
        proto = base.fs.protocol
        return "s3" in ((proto,) if isinstance(proto, str) else tuple(proto))
    if isinstance(base, ObjectStore):
        return type(base.store).__name__ in {"S3Store", "AzureStore", "GCSStore"}
    return False


def conditional_store(store: Store, policy: Throttle | None = None) -> ConditionalStore:
    """The conditional operations of ``store`` (below any wrappers).

    ``policy`` gives the retries (its ``max_retries``, ``max_retry_seconds`` and
    backoff; the defaults of :class:`~toolkit.Throttle` without one). Requests
    bypass the request budget: coordination costs a handful of requests and
    must not wait behind a data throttle.

    Raises
    ------
    toolkit.errors.CoordinationError
        For a store without conditional writes (an fsspec store other than S3,
        obstore's local or memory store, a store of another kind).
    """
    base = _base(store)
    retries = _Retries.of(policy)
    if isinstance(base, LocalStore):
        return _LocalConditional(base, retries)
    if isinstance(base, MemoryStore):
        return _MemoryConditional(base, retries)
    if supports_conditional(base):
        if isinstance(base, FsspecStore):
            return _S3fsConditional(base, retries)
        return _ObstoreConditional(base, retries)
    raise CoordinationError(
        f"{describe_store(base)} has no atomic conditional write, which concurrent jobs need "
        "to coordinate; write to a local path, an s3:// or az:// URL (or run one job at a time)"
    )


def read_json_version(got: Versioned | None) -> tuple[Any, str | None]:
    """Decode a versioned JSON document: ``(doc, version)``, ``(None, None)`` when absent."""
    import json

    if got is None:
        return None, None
    return json.loads(got.data), got.version
