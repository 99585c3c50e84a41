"""Progress for long work.

tqdm (``tqdm.auto``: a bar in a terminal, a widget in Jupyter) under dask's local
schedulers; distributed's own progress bar when a client is active.
"""

from __future__ import annotations

from typing import Any

import dask
from dask.callbacks import Callback

from toolkit.cluster.client import active_client

__all__ = ["compute_with_progress"]


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
    obj: Any,
    *,
    total: int,
    desc: str,
    prefix: str,
    enabled: bool = True,
    threads: int | None = None,
) -> Any:
    """Compute the dask collection ``obj`` on the active scheduler, with progress if ``enabled``.

    ``threads``: on dask's local threaded scheduler, the threads to run it with
    (its default, one per core, when None). Distributed clusters keep theirs.
    """
    client = active_client()
    if client is not None:
        future = client.compute(obj)
        if enabled:
            from distributed import progress

            progress(future)
        return future.result()
    kwargs: dict[str, Any] = {}
    if threads is not None and dask.config.get("scheduler", None) in (None, "threads", "threading"):
        kwargs["num_workers"] = threads
    if not enabled:
        return obj.compute(**kwargs)
    with _TqdmCallback(total, desc, prefix):
        return obj.compute(**kwargs)
