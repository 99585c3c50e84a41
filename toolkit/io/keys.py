"""What a key of a Zarr store names: one of Zarr's metadata documents, or data.

One list of the documents (v3's ``zarr.json``, v2's ``.zarray``, ``.zgroup``,
``.zattrs``, and consolidated ``.zmetadata``) for every layer that tells
metadata from chunks: buffers and snapshots cache the one, manifests and
claims sort keys by it, plans refuse variable names that collide with it.
"""

from __future__ import annotations

__all__ = ["METADATA_DOCUMENTS", "is_metadata"]

METADATA_DOCUMENTS = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})
"""The names of Zarr's metadata documents (the last part of their keys)."""


def is_metadata(key: str) -> bool:
    """Whether ``key`` is a metadata document (not a chunk, not toolkit's own state)."""
    return key.rsplit("/", 1)[-1] in METADATA_DOCUMENTS
