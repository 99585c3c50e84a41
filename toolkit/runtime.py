"""What toolkit keeps while it runs: one :class:`Runtime` object, never module state.

Budgets, I/O totals, client sessions, the coordinated budgets of a worker, abort
gates, batched-append queues, client hooks: each module that keeps such state
declares a :class:`Slot` (a constant: a name and how to make the empty value) and
finds the value in the current runtime::

    _BUDGETS: Slot[Registry[str, Budget]] = Slot("io.budget.budgets", Registry)

    def budget_for(...):
        budgets = runtime.current().get(_BUDGETS)

:func:`current` is the runtime of this context: the process's own (:func:`process`,
what every thread and every worker process of a cluster uses) unless a block runs
with its own::

    with Runtime() as rt:  # a test, a service that wants its state apart
        toolkit.to_zarr(ds, store)
    # rt is closed: everything it held is gone

A runtime is process state: pickled (a task shipped to a worker), it arrives as
the current runtime of the process that unpickles it. Threads start in the
process's runtime (a new thread has a context of its own); toolkit's write tasks
carry theirs (:func:`toolkit.write.graph.build_write_graph`).

This module imports nothing of toolkit: every layer uses it.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Self

__all__ = ["Registry", "Runtime", "Slot", "current", "process", "using"]


@dataclass(frozen=True, eq=False)
class Slot[T]:
    """One piece of state a module keeps in the runtime: a constant key.

    Parameters
    ----------
    name : str
        Where it belongs (``"io.budget.budgets"``), for reprs.
    factory : callable
        Makes the empty value, on first use in a runtime (and again after
        :meth:`Runtime.close`).
    process_wide : bool
        What it mirrors is one per process whatever runtime is current (zarr's
        global configuration, Python classes): always kept by :func:`process`.
    inherited : bool
        Wiring rather than state (hooks a layer above subscribed at import): a
        new runtime starts with a copy of the current one's, and
        :meth:`Runtime.close` keeps it.
    """

    name: str
    factory: Callable[[], T]
    process_wide: bool = False
    inherited: bool = False

    def __repr__(self) -> str:
        return f"Slot({self.name!r})"


class Registry[K, V]:
    """A dict guarded by a lock: the shape of most of a runtime's state.

    ``lock`` (re-entrant) is there for the callers whose step reads and writes
    more than one entry at once.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._items: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        """The value of ``key``, or None."""
        with self.lock:
            return self._items.get(key)

    def setdefault(self, key: K, make: Callable[[], V]) -> V:
        """The value of ``key``; ``make()`` put there first if there is none."""
        with self.lock:
            if key not in self._items:
                self._items[key] = make()
            return self._items[key]

    def put(self, key: K, value: V) -> None:
        """Set the value of ``key``."""
        with self.lock:
            self._items[key] = value

    def pop(self, key: K) -> V | None:
        """Remove ``key``: its value, or None."""
        with self.lock:
            return self._items.pop(key, None)

    def items(self) -> list[tuple[K, V]]:
        """A copy, to use outside the lock."""
        with self.lock:
            return list(self._items.items())

    def values(self) -> list[V]:
        """A copy, to use outside the lock."""
        with self.lock:
            return list(self._items.values())

    def keys(self) -> list[K]:
        """A copy, to use outside the lock."""
        with self.lock:
            return list(self._items)

    def clear(self) -> None:
        """Remove every entry."""
        with self.lock:
            self._items.clear()

    def __contains__(self, key: object) -> bool:
        with self.lock:
            return key in self._items

    def __len__(self) -> int:
        with self.lock:
            return len(self._items)

    def __copy__(self) -> Registry[K, V]:
        new: Registry[K, V] = Registry()
        with self.lock:
            new._items = dict(self._items)
        return new

    def __repr__(self) -> str:
        return f"Registry({len(self)} entries)"


class Runtime:
    """The state toolkit keeps while it runs, in one object with a lifecycle.

    A value is made on first use (:meth:`get`) and dropped by :meth:`close`
    (which leaves the runtime usable: what is asked again starts empty). Close
    a runtime when nothing runs in it, as a client once its computations are
    done. ``with Runtime() as rt:`` makes ``rt`` current in the block and
    closes it at the end.

    Parameters
    ----------
    inherit : bool
        Start with the wiring of the current runtime (the hooks layers above
        subscribed, such as the dashboard's): what a runtime of the package
        does. False: none (a test of the hooks themselves).
    """

    def __init__(self, *, inherit: bool = True) -> None:
        self._lock = threading.Lock()
        self._values: dict[Slot[Any], Any] = {}
        self._tokens: list[contextvars.Token[Runtime]] = []
        if inherit:
            parent = current()
            with parent._lock:
                wiring = [(s, v) for s, v in parent._values.items() if s.inherited]
            self._values.update((s, copy.copy(v)) for s, v in wiring)

    def get[T](self, slot: Slot[T]) -> T:
        """The value ``slot`` has in this runtime, made empty on first use."""
        if slot.process_wide and self is not _PROCESS:
            return _PROCESS.get(slot)
        with self._lock:
            try:
                value: T = self._values[slot]
            except KeyError:
                value = self._values[slot] = slot.factory()
            return value

    def held(self) -> list[str]:
        """The names of the slots that hold a value now (what :meth:`close` would drop)."""
        with self._lock:
            return sorted(s.name for s in self._values if not s.inherited)

    def close(self) -> None:
        """Drop everything this runtime holds but its wiring (see :class:`Slot`)."""
        with self._lock:
            self._values = {s: v for s, v in self._values.items() if s.inherited}

    def __enter__(self) -> Self:
        self._tokens.append(_CURRENT.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _CURRENT.reset(self._tokens.pop())
        self.close()

    def __reduce__(self) -> tuple[Callable[[], Runtime], tuple[()]]:
        # Process state does not travel: what arrives is the receiver's runtime.
        return current, ()

    def __repr__(self) -> str:
        which = "the process's" if self is _PROCESS else "own"
        return f"<toolkit Runtime ({which}): {', '.join(self.held()) or 'empty'}>"


# The one piece of process state toolkit has at import: the process's runtime, and
# the context variable naming the runtime of this context (tests/test_architecture.py
# allows these two and nothing else).
_CURRENT: contextvars.ContextVar[Runtime] = contextvars.ContextVar("toolkit_runtime")
_PROCESS = Runtime(inherit=False)


def current() -> Runtime:
    """The runtime of this context: the process's own unless a block set another."""
    return _CURRENT.get(_PROCESS)


def process() -> Runtime:
    """The process's own runtime (what a thread, or a worker process, starts in)."""
    return _PROCESS


@contextlib.contextmanager
def using(rt: Runtime) -> Iterator[Runtime]:
    """Make ``rt`` current in this block without closing it at the end (a task's body)."""
    token = _CURRENT.set(rt)
    try:
        yield rt
    finally:
        _CURRENT.reset(token)
