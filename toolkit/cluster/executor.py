"""Where toolkit's graphs run: one :class:`Executor`, chosen in one place.

A job asks :func:`executor` at its front door and hands the answer down: dask's
threads in this process (:class:`Threads`), or the cluster of the active
``distributed`` client (:class:`Cluster`). An executor

- runs a planned graph and hands its result back (:meth:`Executor.compute`),
  telling the :class:`Callback` s that subscribed (the progress bar is one, see
  :mod:`toolkit.cluster.progress`), as cubed's executors tell theirs;
- says how many processes share the work (:meth:`Executor.processes`: a budget's
  in-flight cap is split among them);
- runs a function in every process (:meth:`Executor.everywhere`: I/O totals;
  :meth:`Executor.tell`: a write's abort gate), on the scheduler
  (:meth:`Executor.on_scheduler`: the throttle coordinator), over many items
  (:meth:`Executor.map`: netCDF headers);
- streams blocks with a bounded number in flight (:meth:`Executor.stream`:
  :func:`toolkit.read.iter_chunks`).

Nothing else in toolkit asks "am I on a cluster?" (``tests/test_architecture.py``
holds ``distributed``'s client and worker lookups to this package). Code running
inside a task asks :func:`in_task`: from a worker, its cluster.

This is the seam where another engine would plug in: an executor is what a job
needs of one, and nothing more.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Hashable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, override

import dask
from dask.callbacks import Callback as _DaskCallback

from toolkit.cluster.client import active_client

__all__ = ["Callback", "Cluster", "Executor", "Threads", "detached", "executor", "in_task"]


class Callback:
    """Hears one run of :meth:`Executor.compute`; subclass and override what you need.

    On dask's local scheduler every task's end is heard; on a cluster the
    client hears the start and the end (the scheduler keeps the tasks), and a
    callback that :attr:`shows_progress` is shown as distributed's own bar.
    """

    #: Show distributed's progress bar for the run when on a cluster.
    shows_progress: ClassVar[bool] = False

    def on_start(self, tasks: int, executor: Executor) -> None:
        """The graph, of ``tasks`` tasks, starts on ``executor``."""

    def on_task_end(self, key: Hashable) -> None:
        """The task ``key`` ended (local scheduler only)."""

    def on_end(self, errored: bool) -> None:
        """The run ended, failed if ``errored``."""


class _Relay(_DaskCallback):
    """dask's local-scheduler callbacks, told to toolkit's."""

    def __init__(self, callbacks: Sequence[Callback], executor: Executor) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._callbacks = callbacks
        self._executor = executor

    def _start_state(self, dsk: Any, state: Any) -> None:
        for cb in self._callbacks:
            cb.on_start(len(dsk), self._executor)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
        for cb in self._callbacks:
            cb.on_task_end(key)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        for cb in self._callbacks:
            cb.on_end(errored)


class Executor(ABC):
    """What a job needs of the engine that runs it."""

    #: Tasks run in other processes (a store that lives in this one is unreachable
    #: from them; an abort must be told to each).
    distributed: ClassVar[bool]

    @abstractmethod
    def processes(self) -> int:
        """The processes the tasks are spread over (1: this one)."""

    @abstractmethod
    def threads(self) -> int:
        """How many tasks run at once (at least 1)."""

    @abstractmethod
    def compute(
        self, obj: Any, *, callbacks: Sequence[Callback] = (), threads: int | None = None
    ) -> Any:
        """Run the dask collection ``obj``; its result.

        ``threads``: on dask's local threaded scheduler, the threads to run it
        with (one per core when None); a cluster keeps its own.
        """

    @abstractmethod
    def map[T](self, func: Callable[..., T], items: Iterable[Any], /, **kwargs: Any) -> list[T]:
        """``[func(item, **kwargs) for item in items]``, spread over the processes."""

    @abstractmethod
    def everywhere[T](self, func: Callable[..., T], /, *args: Any) -> list[T]:
        """``func(*args)`` in this process and in each worker process: the results."""

    @abstractmethod
    def tell(self, func: Callable[..., Any], /, *args: Any) -> None:
        """``func(*args)`` in each worker process, not waited for (a no-op for threads)."""

    @abstractmethod
    def on_scheduler[T](self, func: Callable[..., T], /) -> T | None:
        """``func(dask_scheduler=...)`` on the scheduler; None where there is none."""

    @abstractmethod
    def stream(
        self,
        items: Sequence[Any],
        get: Callable[[Any], Any],
        func: Callable[[Any], Any] | None,
        *,
        limit: int,
        ordered: bool,
    ) -> Generator[tuple[Any, Any]]:
        """``(item, func(value))`` for each item, ``value`` the dask collection ``get(item)``.

        At most ``limit`` in flight; in the order of ``items`` if ``ordered``, else
        as they finish. Closing the iterator cancels what is still in flight.
        """


class Threads(Executor):
    """dask's local scheduler in this process (threads, or whatever ``dask.config`` names)."""

    distributed = False

    @override
    def processes(self) -> int:
        return 1

    @override
    def threads(self) -> int:
        if dask.config.get("scheduler", None) not in (None, "threads", "threading"):
            return 1  # "synchronous", or a pool of processes dask names: counted as one
        return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))

    @override
    def compute(
        self, obj: Any, *, callbacks: Sequence[Callback] = (), threads: int | None = None
    ) -> Any:
        kwargs: dict[str, Any] = {}
        if threads is not None and dask.config.get("scheduler", None) in (
            None,
            "threads",
            "threading",
        ):
            kwargs["num_workers"] = threads
        if not callbacks:
            return obj.compute(**kwargs)
        with _Relay(callbacks, self):
            return obj.compute(**kwargs)

    @override
    def map[T](self, func: Callable[..., T], items: Iterable[Any], /, **kwargs: Any) -> list[T]:
        return [func(item, **kwargs) for item in items]

    @override
    def everywhere[T](self, func: Callable[..., T], /, *args: Any) -> list[T]:
        return [func(*args)]

    @override
    def tell(self, func: Callable[..., Any], /, *args: Any) -> None:
        return None  # no other process

    @override
    def on_scheduler[T](self, func: Callable[..., T], /) -> T | None:
        return None

    @override
    def stream(
        self,
        items: Sequence[Any],
        get: Callable[[Any], Any],
        func: Callable[[Any], Any] | None,
        *,
        limit: int,
        ordered: bool,
    ) -> Generator[tuple[Any, Any]]:
        def one(item: Any) -> Any:
            value = get(item).compute(scheduler="synchronous")
            return func(value) if func is not None else value

        pool = cf.ThreadPoolExecutor(limit, thread_name_prefix="toolkit-stream")
        try:
            yield from _bounded(
                items,
                lambda item: pool.submit(one, item),
                lambda futures: _first(
                    futures, cf.wait(futures, return_when=cf.FIRST_COMPLETED)[0]
                ),
                limit=limit,
                ordered=ordered,
            )
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class Cluster(Executor):
    """The cluster of a ``distributed`` client."""

    distributed = True

    def __init__(self, client: Any) -> None:
        self.client = client

    def __repr__(self) -> str:
        return f"Cluster({self.client!r})"

    @override
    def processes(self) -> int:
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return len(workers) or 1

    @override
    def threads(self) -> int:
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))

    @override
    def compute(
        self, obj: Any, *, callbacks: Sequence[Callback] = (), threads: int | None = None
    ) -> Any:
        if callbacks:
            tasks = len(obj.__dask_graph__())  # once: a big graph's length is not free
            for cb in callbacks:
                cb.on_start(tasks, self)
        future = self.client.compute(obj)
        try:
            if any(cb.shows_progress for cb in callbacks):
                from distributed import progress

                progress(future)
            result = future.result()
        except BaseException:
            for cb in callbacks:
                cb.on_end(True)
            raise
        for cb in callbacks:
            cb.on_end(False)
        return result

    @override
    def map[T](self, func: Callable[..., T], items: Iterable[Any], /, **kwargs: Any) -> list[T]:
        futures = self.client.map(func, list(items), pure=False, **kwargs)
        return list(self.client.gather(futures))

    @override
    def everywhere[T](self, func: Callable[..., T], /, *args: Any) -> list[T]:
        return [func(*args), *self.client.run(func, *args).values()]

    @override
    def tell(self, func: Callable[..., Any], /, *args: Any) -> None:
        # distributed runs only a coroutine function without waiting for it
        # (``wait=False`` with a plain one fails on every worker: "Combination not
        # supported"), so the call goes in one.
        self.client.run(_call, func, *args, wait=False)

    @override
    def on_scheduler[T](self, func: Callable[..., T], /) -> T | None:
        result: T = self.client.run_on_scheduler(func)
        return result

    @override
    def stream(
        self,
        items: Sequence[Any],
        get: Callable[[Any], Any],
        func: Callable[[Any], Any] | None,
        *,
        limit: int,
        ordered: bool,
    ) -> Generator[tuple[Any, Any]]:
        from distributed import wait

        def submit(item: Any) -> Any:
            fut = self.client.compute(get(item))
            return self.client.submit(func, fut) if func is not None else fut

        yield from _bounded(
            items,
            submit,
            lambda futures: _first(futures, wait(futures, return_when="FIRST_COMPLETED").done),
            limit=limit,
            ordered=ordered,
        )


async def _call(func: Callable[..., Any], *args: Any) -> None:
    func(*args)


def _bounded(
    items: Sequence[Any],
    submit: Callable[[Any], Any],
    first_done: Callable[[list[Any]], Any],
    *,
    limit: int,
    ordered: bool,
) -> Iterator[tuple[Any, Any]]:
    """At most ``limit`` futures in flight; each item's result, in order or as done."""
    pending: collections.OrderedDict[Any, Any] = collections.OrderedDict()
    todo = iter(items)
    try:
        for item in todo:
            pending[submit(item)] = item
            if len(pending) >= limit:
                break
        while pending:
            fut = next(iter(pending)) if ordered else first_done(list(pending))
            item = pending.pop(fut)
            result = fut.result()
            for following in todo:  # the next one, if any
                pending[submit(following)] = following
                break
            yield item, result
    finally:
        for fut in pending:
            fut.cancel()


def _first(futures: list[Any], done: Any) -> Any:
    """The earliest submitted of the ``done`` futures."""
    return next(f for f in futures if f in done)


def executor() -> Executor:
    """The executor of a job started here: the active client's cluster, else threads.

    A local scheduler named in ``dask.config`` wins over a default client, as it
    does for dask itself.
    """
    client = active_client()
    return Threads() if client is None else Cluster(client)


def in_task() -> Executor:
    """The executor seen from inside a running task: the worker's cluster, else threads."""
    try:
        from distributed import get_client, get_worker

        get_worker()
    except (ImportError, ValueError):
        return Threads()
    return Cluster(get_client())


def detached[T](job: Callable[[], T]) -> T:
    """Run ``job``, a whole job that a task started, without holding the task's thread.

    A deferred job (``compute=False``) runs as one task and sends its own graph
    to the same cluster: on a worker, the task steps out of the worker's thread
    pool while the job runs (distributed's ``secede``/``rejoin``), or jobs that
    took every thread would wait for ever on tasks that find none. Elsewhere
    it simply runs.
    """
    try:
        from distributed import get_worker, rejoin, secede

        get_worker()
    except (ImportError, ValueError):
        return job()
    secede()
    try:
        return job()
    finally:
        rejoin()
