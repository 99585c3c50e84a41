"""Request budgets across a ``distributed`` cluster.

The share of a budget each worker applies (:func:`cluster_share`), and the
budgets in force (:func:`throttle_state`).
"""

from __future__ import annotations

from dataclasses import replace

from toolkit.cluster.coordinator import (
    CoordinatedThrottle,
    coordinated_states,
    install_coordinator,
)
from toolkit.cluster.executor import Executor, executor
from toolkit.io.budget import ThrottleState, local_states
from toolkit.io.throttle import Throttle

__all__ = ["cluster_share", "throttle_state"]


def throttle_state() -> ThrottleState:
    """The request budgets in force: this process's and, under a client, the cluster's.

    Adaptive budgets cut a rate when the store answers with throttling and climb
    back along a cubic curve; this shows where each one stands, per store: the
    rates in force and configured, the last cut, the recovery in progress.
    """
    states = local_states()
    return ThrottleState(tuple((executor().on_scheduler(coordinated_states) or []) + states))


def cluster_share(policy: Throttle | None, runner: Executor) -> Throttle | None:
    """``policy`` as one process of ``runner``'s cluster applies it (itself for threads).

    With the scheduler-side :class:`~toolkit.cluster.coordinator.ThrottleCoordinator`
    (installed here on first use), the rates stay whole, since the coordinator enforces them for
    the cluster, and only the in-flight cap is divided among the workers: a
    :class:`~toolkit.cluster.coordinator.CoordinatedThrottle`, which also
    carries the number of workers, so that a worker that cannot reach the
    coordinator keeps to its fair share of the rates. If the coordinator cannot
    be installed, both are divided.
    """
    if policy is None:
        return None

    if not runner.distributed:
        return policy
    workers = runner.processes()
    try:
        runner.on_scheduler(install_coordinator)
    except Exception:  # a scheduler without toolkit installed: split the rates instead
        return replace(policy.share(workers), coordinated=False)
    return CoordinatedThrottle.of(policy, workers)
