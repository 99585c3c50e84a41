"""Progress for long work: a :class:`ProgressBar` subscribed to a run of an executor.

tqdm (``tqdm.auto``: a bar in a terminal, a widget in Jupyter) under dask's local
scheduler; distributed's own progress bar on a cluster (see
:class:`toolkit.cluster.executor.Callback`).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, override

from toolkit.cluster.executor import Callback, Executor

__all__ = ["ProgressBar", "progress_bar"]


class ProgressBar(Callback):
    """A tqdm bar of ``total`` steps, one for each ended task whose name starts with ``prefix``."""

    shows_progress = True

    def __init__(self, total: int, desc: str, prefix: str) -> None:
        self.total, self.desc, self.prefix = total, desc, prefix
        self._bar: Any = None

    @override
    def on_start(self, tasks: int, executor: Executor) -> None:
        from tqdm.auto import tqdm

        if self._bar is None and not executor.distributed:  # a cluster shows its own
            self._bar = tqdm(total=self.total, desc=self.desc, unit="task", leave=True)

    @override
    def on_task_end(self, key: Hashable) -> None:
        name = key[0] if isinstance(key, tuple) else key
        if self._bar is not None and isinstance(name, str) and name.startswith(self.prefix):
            self._bar.update(1)

    @override
    def on_end(self, errored: bool) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def progress_bar(enabled: bool, total: int, desc: str, prefix: str) -> tuple[Callback, ...]:
    """The callbacks of a run shown with a bar if ``enabled``: one bar, or none."""
    return (ProgressBar(total, desc, prefix),) if enabled else ()
