"""The one executor: dask's threads here, or a real cluster of worker processes.

Both kinds answer the same questions (how many processes, run everywhere, on the
scheduler, over items, stream blocks) and tell their callbacks of a run; a job
started under a client runs on its cluster, one started without on threads.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import dask
import dask.array as da
import numpy as np
import pytest

from toolkit.cluster.executor import Callback, Cluster, Executor, Threads, executor, in_task
from toolkit.runtime import Registry, Slot, current

_TOLD: Slot[Registry[str, int]] = Slot("tests.executor.told", Registry)


def _remember(word: str) -> None:
    current().get(_TOLD).put(word, os.getpid())


def _recalled(word: str) -> int | None:
    return current().get(_TOLD).get(word)


def _pid(*_: object) -> int:
    return os.getpid()


def _kind_in_task(_: object) -> str:
    return type(in_task()).__name__


class _Heard(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_start(self, tasks: int, executor: Executor) -> None:
        self.events.append(("start", type(executor).__name__))
        self.tasks = tasks

    def on_task_end(self, key: object) -> None:
        self.events.append(("task", key))

    def on_end(self, errored: bool) -> None:
        self.events.append(("end", errored))


def _boom(x: np.ndarray) -> np.ndarray:
    raise ZeroDivisionError("a task failed")


def test_a_job_without_a_client_runs_on_threads():
    assert isinstance(executor(), Threads)
    assert isinstance(in_task(), Threads)  # not in a worker
    ex = Threads()
    assert ex.processes() == 1 and not ex.distributed
    assert ex.threads() == (os.cpu_count() or 1)
    with dask.config.set(num_workers=3):
        assert ex.threads() == 3
    with dask.config.set(scheduler="synchronous"):
        assert ex.threads() == 1
    assert ex.map(_pid, range(3)) == [os.getpid()] * 3
    assert ex.everywhere(_pid) == [os.getpid()]
    assert ex.on_scheduler(lambda dask_scheduler: 1) is None
    ex.tell(_remember, "here")  # no other process: nothing to tell
    assert _recalled("here") is None


def test_threads_tell_callbacks_of_every_task_and_of_a_failure():
    x = da.arange(12, chunks=4)
    heard = _Heard()
    assert Threads().compute(x.sum(), callbacks=[heard]) == 66
    assert heard.events[0] == ("start", "Threads") and heard.events[-1] == ("end", False)
    ended = [k for e, k in heard.events if e == "task"]
    assert len(ended) == heard.tasks >= 4  # every task of the graph run (as optimized)
    failed = _Heard()
    with pytest.raises(ZeroDivisionError):
        Threads().compute(x.map_blocks(_boom, dtype=x.dtype), callbacks=[failed])
    assert failed.events[-1] == ("end", True)


def test_threads_run_with_the_threads_asked_for():
    seen: set[int] = set()
    lock = threading.Lock()

    def note(b: np.ndarray) -> np.ndarray:
        with lock:
            seen.add(threading.get_ident())
        time.sleep(0.02)
        return b

    blocks = da.zeros(40, chunks=1).map_blocks(note, meta=np.array((), dtype="f8"))
    Threads().compute(blocks, threads=1)
    assert len(seen) == 1


@pytest.mark.parametrize("ordered", [True, False])
def test_a_stream_keeps_at_most_its_limit_in_flight_and_gives_every_item(ordered):
    x = da.arange(20, chunks=2)
    running, most = 0, 0
    lock = threading.Lock()

    def work(block: np.ndarray) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01 * (3 - block[0] % 3))  # finishing out of order
        with lock:
            running -= 1
        return int(block.sum())

    got = list(Threads().stream(range(10), lambda i: x.blocks[i], work, limit=3, ordered=ordered))
    assert sorted(i for i, _ in got) == list(range(10))
    assert all(r == int(np.arange(2 * i, 2 * i + 2).sum()) for i, r in got)
    assert most <= 3
    if ordered:
        assert [i for i, _ in got] == list(range(10))


def test_closing_a_stream_early_leaves_nothing_running():
    x = da.arange(100, chunks=1)
    started: list[int] = []

    def slow(block: np.ndarray) -> int:
        started.append(int(block[0]))
        time.sleep(0.05)
        return int(block[0])

    blocks = Threads().stream(range(100), lambda i: x.blocks[i], slow, limit=4, ordered=True)
    assert next(blocks) == (0, 0)
    blocks.close()
    count = len(started)
    time.sleep(0.2)
    assert len(started) == count <= 6  # the four in flight, and the one submitted after


@pytest.mark.cluster
def test_a_local_scheduler_in_the_config_wins_over_a_client(cluster_client):
    assert isinstance(executor(), Cluster)
    with dask.config.set(scheduler="threads"):
        assert isinstance(executor(), Threads)


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_a_cluster_answers_for_each_of_its_worker_processes(cluster_client):
    ex = executor()
    assert isinstance(ex, Cluster) and ex.distributed
    assert ex.processes() == 2
    assert ex.threads() == 4  # 2 threads each
    pids = ex.everywhere(_pid)
    assert pids[0] == os.getpid() and len(set(pids)) == 3  # here, and each worker
    assert set(ex.map(_pid, range(8))) <= set(pids[1:])
    assert set(ex.map(_kind_in_task, range(4))) == {"Cluster"}  # a task sees its cluster
    assert ex.on_scheduler(lambda dask_scheduler: len(dask_scheduler.workers)) == 2
    word = uuid.uuid4().hex  # the cluster outlives the test
    ex.tell(_remember, word)  # not waited for: every worker hears it soon
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and None in ex.everywhere(_recalled, word)[1:]:
        time.sleep(0.05)
    assert set(ex.everywhere(_recalled, word)[1:]) == set(pids[1:])
    assert _recalled(word) is None  # told to the workers, not here


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_a_cluster_runs_graphs_and_streams_and_tells_its_callbacks(cluster_client):
    ex = executor()
    x = da.arange(12, chunks=4)
    heard = _Heard()
    assert ex.compute(x.sum(), callbacks=[heard]) == 66
    assert heard.events == [("start", "Cluster"), ("end", False)]  # the scheduler keeps the tasks
    failed = _Heard()
    with pytest.raises(ZeroDivisionError):
        ex.compute(x.map_blocks(_boom, dtype=x.dtype), callbacks=[failed])
    assert failed.events[-1] == ("end", True)
    got = list(ex.stream(range(3), lambda i: x.blocks[i], _sum, limit=2, ordered=True))
    assert got == [(0, 6), (1, 22), (2, 38)]


def _sum(block: np.ndarray) -> int:
    return int(block.sum())
