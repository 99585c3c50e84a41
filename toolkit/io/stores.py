"""Paths, URLs and mappings to zarr stores, and what is safe to say of a store."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

from zarr.abc.store import Store
from zarr.storage import LocalStore, MemoryStore, WrapperStore

from toolkit.io import clients
from toolkit.io.groups import hide_reserved_prefix_warnings
from toolkit.io.throttle import Throttle

__all__ = [
    "StoreLike",
    "describe_store",
    "fingerprint",
    "is_icechunk",
    "redact",
    "resolve_store",
    "store_label",
    "unwrap",
]

StoreLike = str | os.PathLike[str] | Store | MutableMapping[str, Any]


def store_label(store: StoreLike) -> str:
    """A short name for ``store`` before it is resolved (a path, a URL, or the store's)."""
    if isinstance(store, Store):
        return describe_store(store)
    if isinstance(store, MutableMapping):
        return f"memory://{id(store):x}"
    return str(store)


def resolve_store(
    store: StoreLike,
    *,
    storage_options: Mapping[str, Any] | None = None,
    throttle: Throttle | None = None,
) -> Store:
    """Turn a path, URL or zarr ``Store`` into a zarr ``Store``.

    Parameters
    ----------
    store : str, os.PathLike or zarr.abc.store.Store
        A local path, a URL (``s3://...``) or a store instance, which is
        returned as it is.
    storage_options : mapping, optional
        For URLs, in fsspec's names whichever the client; refused for local
        paths and store instances. ``client`` picks the client: ``"obstore"``
        (the default for ``s3://``, ``gs://`` and ``az://`` when obstore is
        installed) or ``"s3fs"`` (fsspec). See :mod:`toolkit.io.clients`.
    throttle : Throttle, optional
        The policy toolkit will apply. It sets defaults that the caller's
        ``storage_options`` override: the client's own retries off, since
        toolkit's retries count every attempt against the budget; one GET per
        read, with no HEAD first; for s3fs, a connection pool as large as the
        in-flight cap.
    """
    hide_reserved_prefix_warnings()
    if isinstance(store, Store):
        if storage_options:
            raise TypeError("storage_options apply to URLs only, not to a Store instance")
        return store
    if isinstance(store, MutableMapping):
        # As zarr and xarray: a dict is the contents of an in-memory store.
        if storage_options:
            raise TypeError("storage_options apply to URLs only, not to a dict")
        return MemoryStore(store)
    path = os.fspath(store)
    if "://" in path and not path.startswith("file://"):
        in_flight = throttle.max_inflight if throttle is not None else None
        return clients.open_url(path, storage_options, in_flight=in_flight)
    if storage_options:
        raise TypeError("storage_options apply to URLs only, not to a local path")
    return LocalStore(path.removeprefix("file://"))


def describe_store(store: Store) -> str:
    """A short, secret-free description of a store for reprs and reports."""
    store = unwrap(store)
    if isinstance(store, LocalStore):
        return f"file://{store.root}"
    return clients.location(store) or f"<{type(store).__name__}>"


def unwrap(store: Store) -> Store:
    """The innermost store below any wrappers."""
    while isinstance(store, WrapperStore):
        store = store._store
    return store


def is_icechunk(store: Store) -> bool:
    """Whether ``store`` (below any wrappers) is an Icechunk session's store.

    Told by the class's package, so that Icechunk, an optional extra, need not
    be imported to ask.
    """
    return type(unwrap(store)).__module__.split(".")[0] == "icechunk"


def redact(text: str, store: Store | None = None) -> str:
    """``text`` with credentials, signatures and tokens removed.

    Removes the values of secret-looking ``storage_options`` of ``store``
    (keys, secrets, tokens, passwords) and any signed-URL query parameters.
    """
    secrets = clients.secrets(unwrap(store)) if store is not None else []
    for s in sorted(secrets, key=len, reverse=True):
        text = text.replace(s, "***")
    text = _SIGNED.sub(r"\1=***", text)
    return _USERINFO.sub(r"\1***@", text)


_SIGNED = re.compile(
    r"((?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|X-Goog-Signature|"
    r"X-Goog-Credential|sig|se|sp|sv|AWSAccessKeyId|Signature|Expires))=[^&\s\"']+",
    re.I,
)


_USERINFO = re.compile(r"(\w+://)[^/\s@:]+(?::[^/\s@]*)?@")


def fingerprint(path: str) -> tuple[Any, ...]:
    """What changes when a source changes: size and modification time (or ETag).

    For a directory (a Zarr store), those of its top-level entries.
    """
    if "://" not in path:
        st = os.stat(path)
        if os.path.isdir(path):
            return tuple(
                (e.name, e.stat().st_size, e.stat().st_mtime_ns)
                for e in sorted(os.scandir(path), key=lambda e: e.name)
            )
        return (st.st_size, st.st_mtime_ns)
    import fsspec

    fs, _, (p,) = fsspec.get_fs_token_paths(path)
    info = fs.info(p)
    return tuple(str(info.get(k)) for k in ("size", "ETag", "LastModified", "mtime"))
