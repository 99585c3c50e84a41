"""Progress for long work.

tqdm (``tqdm.auto``: a bar in a terminal, a widget in Jupyter) under dask's local
schedulers; distributed's own progress bar when a client is active.
"""

from __future__ import annotations

from typing import Any

import dask
from dask.callbacks import Callback

_LOCAL_SCHEDULERS = frozenset(
    {"threads", "threading", "sync", "synchronous", "single-threaded", "processes"}
)


def active_client() -> Any | None:
    """The current ``distributed`` client, or None.

    None also when ``dask.config`` names a local scheduler, which overrides the
    default client for dask itself too. The first time a client is found here,
    toolkit's I/O page is added to its dashboard (:mod:`toolkit.dashboard`).
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
    if not _in_task():
        from toolkit.dashboard import ensure_registered

        ensure_registered(client)
    return client


def _in_task() -> bool:
    """Whether this runs inside a task on a worker (which must not register plugins)."""
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


class _TqdmCallback(Callback):
    """Advance a tqdm bar each time a task whose key starts with ``prefix`` ends."""

    def __init__(self, total: int, desc: str, prefix: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, unit="task", leave=True)
        self._prefix = prefix

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
        name = key[0] if isinstance(key, tuple) else key
        if isinstance(name, str) and name.startswith(self._prefix):
            self._bar.update(1)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        self._bar.close()


def compute_with_progress(
    obj: Any, *, total: int, desc: str, prefix: str, enabled: bool = True
) -> Any:
    """Compute the dask collection ``obj`` on the active scheduler, with progress if ``enabled``."""
    client = active_client()
    if client is not None:
        future = client.compute(obj)
        if enabled:
            from distributed import progress

            progress(future)
        return future.result()
    if not enabled:
        return obj.compute()
    with _TqdmCallback(total, desc, prefix):
        return obj.compute()
