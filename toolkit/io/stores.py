"""Paths, URLs and mappings to zarr stores, and what is safe to say of a store."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from zarr.abc.store import Store
from zarr.storage import LocalStore, MemoryStore, WrapperStore

from toolkit.io import clients
from toolkit.io.throttle import Throttle
from toolkit.upstream import wrapped_store

__all__ = [
    "StoreLike",
    "changed_objects",
    "describe_store",
    "display_location",
    "display_store",
    "is_icechunk",
    "redact",
    "resolve_store",
    "source_objects",
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
    """A short, secret-free description of a store: ``file://<root>`` for a local one.

    Also a key: rate budgets and running totals are kept per description, and
    write ids hash a plan's target, which is one. Show people
    :func:`display_store` instead.
    """
    store = unwrap(store)
    if isinstance(store, LocalStore):
        return f"file://{store.root}"
    return clients.location(store) or f"<{type(store).__name__}>"


def display_store(store: Store) -> str:
    """Where ``store`` is, for people: a local store's path, or a URL (no secrets).

    Examples
    --------
    >>> from zarr.storage import LocalStore
    >>> display_store(LocalStore("out/era5.zarr"))
    'out/era5.zarr'
    """
    return display_location(describe_store(store))


def display_location(where: str) -> str:
    """``where`` (from :func:`describe_store` or :func:`store_label`) as people read it.

    A local path is printed as it was given, relative or absolute, without the
    ``file://`` that :func:`describe_store` puts before it; URLs stay URLs.

    Examples
    --------
    >>> display_location("file://example.zarr"), display_location("file:///data/x.zarr")
    ('example.zarr', '/data/x.zarr')
    >>> display_location("s3://bucket/era5.zarr")
    's3://bucket/era5.zarr'
    """
    return where.removeprefix("file://")


def unwrap(store: Store) -> Store:
    """The innermost store below any wrappers."""
    while isinstance(store, WrapperStore):
        store = wrapped_store(store)
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


def source_objects(
    paths: Iterable[str], storage_options: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Every object of the sources, each with what changes when it changes.

    A file gives one entry, a directory or a Zarr store one per object below
    it (metadata documents and every chunk; toolkit's own ``.toolkit/`` state
    is not source data and is left out). Each entry is the object's size and
    its modification time in nanoseconds, or on an object store its ETag (its
    modification time where the store has no ETag). A resumed job compares the
    listing its first run kept with this one, so that a chunk rewritten in
    place (same size, new contents) is seen, not only files added or removed.

    Keys are ``<path>`` for a file and ``<path>/<key>`` below a directory.
    ``storage_options``: fsspec's, for URLs (toolkit's own ``client`` key is
    left out: the listing is fsspec's).
    """
    out: dict[str, str] = {}
    opts = {k: v for k, v in (storage_options or {}).items() if k != "client"}
    for path in paths:
        if "://" not in path:
            _local_objects(path, out)
        else:
            _remote_objects(path, out, opts)
    return out


def _local_objects(path: str, out: dict[str, str]) -> None:
    if not os.path.isdir(path):
        st = os.stat(path)
        out[path] = f"{st.st_size}:{st.st_mtime_ns}"
        return
    base = path.rstrip("/")
    for root, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d != ".toolkit")
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except FileNotFoundError:  # a temporary file that went while we walked
                continue
            out[f"{base}/{os.path.relpath(full, base)}"] = f"{st.st_size}:{st.st_mtime_ns}"


def _remote_objects(path: str, out: dict[str, str], opts: Mapping[str, Any]) -> None:
    import fsspec

    fs, _, (p,) = fsspec.get_fs_token_paths(path, storage_options=dict(opts) or None)
    scheme = path.split("://", 1)[0]
    # One listing (paginated by the client) with each object's size and ETag.
    found = fs.find(p, detail=True) if fs.isdir(p) else {p: fs.info(p)}
    for key, info in found.items():
        if "/.toolkit/" in f"/{key}":
            continue
        tag = info.get("ETag") or info.get("LastModified") or info.get("mtime") or ""
        out[f"{scheme}://{key}"] = f"{info.get('size')}:{str(tag).strip(chr(34))}"


def changed_objects(before: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """What differs between two :func:`source_objects` listings, for people.

    One phrase per object (``"<key> (changed)"``, ``(added)``, ``(removed)``),
    sorted by key.
    """
    out = []
    for key in sorted(set(before) | set(now)):
        if key not in now:
            out.append(f"{key} (removed)")
        elif key not in before:
            out.append(f"{key} (added)")
        elif before[key] != now[key]:
            out.append(f"{key} (changed)")
    return out
