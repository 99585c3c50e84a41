"""The active ``distributed`` client, and hooks for whoever wants to hear of a new one.

:func:`active_client` is a query. Layers above this one (the dashboard page) subscribe
with :func:`on_client` to be handed each client toolkit finds, in the process that
holds it (never inside a task); hooks are idempotent and cheap once done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask

from toolkit import runtime
from toolkit.runtime import Registry, Slot

__all__ = ["active_client", "on_client"]

_LOCAL_SCHEDULERS = frozenset(
    {"threads", "threading", "sync", "synchronous", "single-threaded", "processes"}
)

#: The hooks, in the order added (wiring: a new runtime starts with the current one's).
_HOOKS: Slot[Registry[Callable[[Any], None], None]] = Slot(
    "cluster.client.hooks", Registry, inherited=True
)


def on_client(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """Call ``hook(client)`` each time :func:`active_client` finds a client.

    A hook is added once however often it is passed; it must be idempotent and
    cheap when it has nothing left to do.
    """
    hooks = runtime.current().get(_HOOKS)
    with hooks.lock:
        if hook not in hooks:
            hooks.put(hook, None)
    return hook


def active_client() -> Any | None:
    """The current ``distributed`` client, or None.

    None also when ``dask.config`` names a local scheduler, which overrides the
    default client for dask itself too.
    """
    if dask.config.get("scheduler", None) in _LOCAL_SCHEDULERS:
        return None
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        client = default_client()
    except ValueError:
        return None
    _announce(client)
    return client


def _announce(client: Any) -> None:
    hooks = runtime.current().get(_HOOKS).keys()
    if not hooks or _in_task():  # a task must not register plugins on its client
        return
    for hook in hooks:
        hook(client)


def _in_task() -> bool:
    """Whether this runs inside a task on a worker."""
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True
