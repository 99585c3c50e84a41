"""Running totals that move as requests happen (what the dashboard page follows)."""

from __future__ import annotations

import pickle
import threading

from toolkit.io.metrics import IOMetrics, live_metrics, process_metrics, process_totals


def test_live_metrics_count_into_the_process_totals_as_they_go():
    scope = "memory://test-live-metrics"
    before = process_metrics(scope).as_dict()
    task = live_metrics(scope)
    task.add(sets=2, bytes_written=100, retries=1, backoff_seconds=0.5)
    task.observe(0.01)
    after = process_totals()[scope]
    assert after["sets"] - before["sets"] == 2
    assert after["bytes_written"] - before["bytes_written"] == 100
    assert after["backoff_seconds"] - before["backoff_seconds"] == 0.5
    assert sum(after["latency"]) - sum(before["latency"]) == 1
    # The task's own figures are its alone.
    assert (task.sets, task.retries, sum(task.latency)) == (2, 1, 1)
    assert "_also" not in task.as_dict()


def test_concurrent_tasks_add_up_exactly():
    scope = "memory://test-live-concurrent"
    start = process_metrics(scope).gets

    def work() -> None:
        m = live_metrics(scope)
        for _ in range(1000):
            m.add(gets=1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert process_metrics(scope).gets - start == 8000


def test_a_pickled_copy_no_longer_feeds_the_totals():
    scope = "memory://test-live-pickle"
    m = live_metrics(scope)
    copy = pickle.loads(pickle.dumps(m))
    copy.add(gets=5)
    assert process_metrics(scope).gets == 0 and copy.gets == 5
    assert IOMetrics.merged([copy]).gets == 5
