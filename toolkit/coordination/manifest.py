"""The manifest of a store: the checksum of every object every write put there.

Every write adds a *fragment*, ``.toolkit/manifest/<write>.json``: the size and
checksum (XXH3, 128 bits; BLAKE2b-128 before 2026-12, still checked: see
:func:`toolkit.io.digests.checksum`) of each object it wrote (chunks of data and
coordinate variables, every ``zarr.json``, ``.zarray``, ``.zattrs``,
``.zgroup``, ``.zmetadata``), and the keys it deleted. A fragment is the
write's own key, so concurrent jobs never contend for it; it lands before the
write's record is removed, so a store whose record is gone has the fragments
of all its writes. :func:`compact` folds fragments into ``manifest.json``
(replaced conditionally, the folded fragments deleted after).

An object some writes rewrote after others (a unit two jobs' regions share,
an array's metadata grown by an append) has several checksums on record: its
content must be one of them. A flipped byte, a truncated or replaced object
matches none (unless it was replaced by an earlier valid version of itself,
which the conditional writes that merge shared units never do). A key on
record and absent from the store is missing, unless a write deleted it (zarr
deletes a chunk that became all fill value).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zarr.abc.store import Store

from toolkit._util import encode_json
from toolkit.io.conditional import conditional_store
from toolkit.io.groups import RESERVED_PREFIX
from toolkit.upstream import sync

__all__ = [
    "ALGORITHM",
    "Manifest",
    "aread_manifest",
    "compact",
    "fragment_prefix",
    "manifest_key",
    "objects_of_lists",
    "read_manifest",
    "write_fragment",
]

ALGORITHM = "xxh3-128"
"""The checksums written now (:func:`toolkit.io.digests.checksum`); each says its own."""
_KEEP_DIGESTS = 8  # checksums kept per key when fragments are folded

#: Per key: ``(size, checksum)`` as written, or None: deleted.
type Objects = Mapping[str, tuple[int, str] | None]


def _root(group: str | None) -> str:
    g = (group or "").strip("/")
    return f"{g}/" if g else ""


def fragment_prefix(group: str | None = None) -> str:
    """Where a group's manifest fragments are kept."""
    return f"{_root(group)}{RESERVED_PREFIX}/manifest/"


def manifest_key(group: str | None = None) -> str:
    """Where a group's folded manifest is kept."""
    return f"{_root(group)}{RESERVED_PREFIX}/manifest.json"


@dataclass
class Manifest:
    """What the manifest says of each key of a group (keys relative to the store)."""

    digests: dict[str, list[str]] = field(default_factory=dict)
    """Per key, the checksums on record (newest last)."""
    sizes: dict[str, int] = field(default_factory=dict)
    """Per key, the last size on record."""
    deleted: set[str] = field(default_factory=set)
    """Keys a write deleted."""
    fragments: list[str] = field(default_factory=list)
    """The fragments read (keys), not yet folded."""

    def __bool__(self) -> bool:
        return bool(self.digests or self.deleted)

    def add(self, objects: Objects) -> None:
        """Record one write's objects (after the ones already recorded)."""
        for key, entry in objects.items():
            if entry is None:
                self.deleted.add(key)
                continue
            size, checksum = entry
            seen = self.digests.setdefault(key, [])
            if checksum in seen:
                seen.remove(checksum)
            seen.append(checksum)
            del seen[:-_KEEP_DIGESTS]
            self.sizes[key] = int(size)
            self.deleted.discard(key)

    def merge(self, other: Manifest) -> None:
        """Add another group's manifest (for a check of the whole store).

        Keys are the store's, so two groups share none but the documents a
        group's write rewrites above it (the root's consolidated copy): every
        checksum either has on record is kept.
        """
        for key, seen in other.digests.items():
            mine = self.digests.setdefault(key, [])
            mine.extend(c for c in seen if c not in mine)
        self.sizes.update(other.sizes)
        self.deleted |= {k for k in other.deleted if k not in other.digests}
        self.fragments.extend(other.fragments)

    def as_doc(self) -> dict[str, Any]:
        """The folded manifest as a JSON document."""
        return {
            "algorithm": ALGORITHM,
            "written": _now(),
            "objects": {
                k: {"size": self.sizes.get(k, 0), "checksums": v}
                for k, v in sorted(self.digests.items())
            },
            "deleted": sorted(self.deleted),
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Manifest:
        """A folded manifest (or a fragment, or the old one-checksum-per-key form)."""
        out = cls()
        objects = doc.get("objects") or {}
        for key, entry in objects.items():
            if isinstance(entry, str):  # the form before fragments: key -> checksum
                out.digests[key] = [entry]
            elif isinstance(entry, dict) and "checksums" in entry:
                out.digests[key] = [str(c) for c in entry["checksums"]]
                out.sizes[key] = int(entry.get("size", 0))
            elif isinstance(entry, list) and len(entry) == 2:  # a fragment: [size, checksum]
                out.sizes[key] = int(entry[0])
                out.digests[key] = [str(entry[1])]
        out.deleted = {str(k) for k in doc.get("deleted") or ()}
        return out


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _fragment_doc(token: str, objects: Objects) -> dict[str, Any]:
    return {
        "write": token,
        "algorithm": ALGORITHM,
        "written": _now(),
        "objects": {k: [v[0], v[1]] for k, v in sorted(objects.items()) if v is not None},
        "deleted": sorted(k for k, v in objects.items() if v is None),
    }


async def awrite_fragment(store: Store, group: str | None, token: str, objects: Objects) -> None:
    """Put one write's fragment (a no-op for a write that wrote nothing).

    ``store`` may be a wrapped stack: the fragment is one more request of the
    write, through its budget and retries. Keys of toolkit's own state
    (under ``.toolkit/``) are no dataset objects and are left out.
    """
    from zarr.buffer.cpu import Buffer

    objects = {k: v for k, v in objects.items() if not _own_state(k)}
    if not objects:
        return
    key = f"{fragment_prefix(group)}{token.replace('/', '_')}.json"
    await store.set(key, Buffer.from_bytes(encode_json(_fragment_doc(token, objects)).to_bytes()))


def _own_state(key: str) -> bool:
    return key.startswith(f"{RESERVED_PREFIX}/") or f"/{RESERVED_PREFIX}/" in key


def write_fragment(store: Store, group: str | None, token: str, objects: Objects) -> None:
    """Put one write's fragment: its objects' sizes and checksums, and the keys it deleted.

    The key is the write's own: a rerun of the write replaces its fragment.
    """
    sync(awrite_fragment(store, group, token, objects))


def objects_of_lists(written: Mapping[str, Any]) -> dict[str, tuple[int, str] | None]:
    """``Objects`` from their JSON form (key -> ``[size, checksum]``, or None: deleted)."""
    return {k: None if v is None else (int(v[0]), str(v[1])) for k, v in written.items()}


async def aread_manifest(store: Store, group: str | None = None) -> Manifest:
    """The folded manifest with every fragment added (in the order their names sort)."""
    cas = conditional_store(store)
    folded, names = await asyncio.gather(
        cas.get(manifest_key(group)), cas.list(fragment_prefix(group))
    )
    out = Manifest()
    if folded is not None:
        out = Manifest.from_doc(json.loads(folded.data))
    names = [n for n in names if n.endswith(".json")]
    docs = await asyncio.gather(*(cas.get(n) for n in names))
    for name, got in sorted(zip(names, docs, strict=True), key=lambda p: _written(p[1])):
        if got is None:
            continue  # folded meanwhile
        frag = json.loads(got.data)
        out.add({k: (int(v[0]), str(v[1])) for k, v in frag.get("objects", {}).items()})
        out.add(dict.fromkeys(frag.get("deleted") or ()))
        out.fragments.append(name)
    return out


def _written(got: Any) -> str:
    if got is None:
        return ""
    try:
        return str(json.loads(got.data).get("written", ""))
    except ValueError:
        return ""


def read_manifest(store: Store, group: str | None = None) -> Manifest:
    """The group's manifest: the folded one and every fragment since (empty without any)."""
    return sync(aread_manifest(store, group))


def compact(store: Store, group: str | None = None) -> int:
    """Fold the fragments into ``manifest.json``; how many were folded.

    The folded document is replaced only at the version read (a concurrent
    compaction makes this one read again); fragments are deleted only once
    the document holding them has landed, so none is ever lost.
    """

    async def fold() -> int:
        cas = conditional_store(store)
        for _ in range(16):
            got = await cas.get(manifest_key(group))
            manifest = await aread_manifest(store, group)
            if not manifest.fragments:
                return 0
            data = encode_json(manifest.as_doc()).to_bytes()
            if got is None:
                landed = await cas.create(manifest_key(group), data)
            else:
                landed = await cas.replace(manifest_key(group), data, got.version)
            if landed is not None:
                await asyncio.gather(*(cas.delete(n) for n in manifest.fragments))
                return len(manifest.fragments)
        return 0

    return sync(fold())
