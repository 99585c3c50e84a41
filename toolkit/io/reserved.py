"""toolkit's own prefix inside a group, and zarr's warning about it, silenced.

A module of its own, below :mod:`toolkit.io.stores` and :mod:`toolkit.io.groups`,
which both need it.
"""

from __future__ import annotations

import re
import warnings

__all__ = ["RESERVED_PREFIX", "hide_reserved_prefix_warnings"]

RESERVED_PREFIX = ".toolkit"
"""Top-level prefix (inside the group) where toolkit keeps its own state."""

_RESERVED_WARNING = rf"Object at {re.escape(RESERVED_PREFIX)} is not recognized"


def hide_reserved_prefix_warnings() -> None:
    """Silence zarr's warning about toolkit's own prefix in group listings.

    zarr warns of any key that is no array or group while it lists a group's
    members; for ``.toolkit/`` the warning says nothing useful. Installed when
    toolkit resolves a store (never on import), for that prefix's message only,
    and again whenever something (``warnings.catch_warnings``, a test runner)
    has restored the filters without it.
    """
    if not any(
        f[0] == "ignore" and f[1] is not None and f[1].pattern == _RESERVED_WARNING
        for f in warnings.filters
    ):
        warnings.filterwarnings("ignore", message=_RESERVED_WARNING, category=Warning)
