"""toolkit's own prefix inside a group, which zarr's listings of a hierarchy never see.

A module of its own, below :mod:`toolkit.io.stores` and :mod:`toolkit.io.groups`,
which both need it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

__all__ = ["RESERVED_PREFIX", "hiding_reserved"]

RESERVED_PREFIX = ".toolkit"
"""Top-level prefix (inside the group) where toolkit keeps its own state."""


async def hiding_reserved(names: AsyncIterator[str]) -> AsyncIterator[str]:
    """A ``list_dir``'s ``names`` but toolkit's own prefix, no member of a zarr hierarchy.

    zarr lists a group's children to find its members and asks each for its
    metadata: for ``.toolkit/`` that is requests for nothing and a warning
    ("Object at .toolkit is not recognized"), which toolkit would otherwise
    have to silence with a filter of the whole process. Only ``list_dir``
    hides it: ``list_prefix`` (deletes, emptiness, toolkit's own state) sees
    every key.
    """
    async for name in names:
        if name.rstrip("/") != RESERVED_PREFIX:
            yield name
