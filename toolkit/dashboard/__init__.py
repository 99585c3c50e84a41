"""toolkit's page on the ``distributed`` dashboard: what the object stores are going through.

When a ``distributed`` client is active, toolkit registers (once per client):

- a worker plugin that adds this process's running I/O totals per store
  (:func:`toolkit.io.metrics.process_totals`) to every heartbeat, so they reach
  the scheduler twice a second without a request of their own;
- a scheduler plugin that turns the heartbeats into rates (:class:`IOFeed`)
  and mounts a Bokeh page, ``/toolkit-io``, beside the dashboard's own pages
  (and in its "More..." menu): requests/s, bytes/s, throttling answers, retries
  and backoff per store, live, and a table of totals with latency percentiles.

The feed's arithmetic is in :mod:`~toolkit.dashboard.feed`, the plugins in
:mod:`~toolkit.dashboard.plugins` and the Bokeh document in
:mod:`~toolkit.dashboard.page`; importing this package imports neither
``distributed`` nor Bokeh.

:func:`register_dashboard` does it by hand and returns the page's address.
Set ``dask.config.set({"toolkit.dashboard": False})`` to have toolkit leave
the cluster alone. The scheduler needs toolkit installed (and Bokeh, as for
the dashboard itself); should registration fail, toolkit warns once and the
work goes on.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from typing import Any

import dask

from toolkit import runtime
from toolkit.cluster.executor import Cluster, executor
from toolkit.dashboard.feed import PAGE, RATE_FIELDS, IOFeed, RatePoint
from toolkit.runtime import Slot

__all__ = ["PAGE", "RATE_FIELDS", "IOFeed", "RatePoint", "ensure_registered", "register_dashboard"]


class _Registered:
    """The clients whose scheduler has the page (weakly), and whether a failure was said."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self.warned = False


#: In the current runtime: registered once per client, a failure said once.
_REGISTERED: Slot[_Registered] = Slot("dashboard.registered", _Registered)


def register_dashboard(client: Any = None) -> str:
    """Register toolkit's I/O page on the dashboard of ``client``'s scheduler.

    Idempotent, and done for you the first time toolkit finds an active client.

    Parameters
    ----------
    client : distributed.Client, optional
        The default client if None.

    Returns
    -------
    str
        The page's address (``.../toolkit-io`` beside ``client.dashboard_link``),
        or ``""`` when the scheduler serves no dashboard.

    Raises
    ------
    ValueError
        No client was given and none is active.
    """
    if client is None:
        runner = executor()
        if not isinstance(runner, Cluster):
            raise ValueError(
                "no client is active (distributed's): start one with distributed.Client(), "
                "or pass client="
            )
        client = runner.client
    from toolkit.dashboard.plugins import DashboardPlugin, HeartbeatPlugin, is_mounted

    done = runtime.current().get(_REGISTERED)
    with done.lock:
        if client not in done.clients:
            client.register_plugin(HeartbeatPlugin())
            client.register_plugin(DashboardPlugin())
            done.clients.add(client)
    mounted = client.run_on_scheduler(is_mounted)
    if not mounted:
        return ""
    link: str = client.dashboard_link
    return link.rsplit("/", 1)[0] + PAGE


def ensure_registered(client: Any) -> None:
    """Register the page for ``client`` unless done, disabled or impossible (warns once)."""
    done = runtime.current().get(_REGISTERED)
    if client in done.clients or not dask.config.get("toolkit.dashboard", True):
        return
    if getattr(client, "asynchronous", False):
        return  # an asynchronous client cannot be called from here; register_dashboard can
    try:
        register_dashboard(client)
    except Exception as e:
        done.clients.add(client)  # one try per client
        if not done.warned:
            done.warned = True
            warnings.warn(
                f"toolkit could not add its I/O page to the dashboard ({type(e).__name__}: {e}); "
                "install toolkit and bokeh on the scheduler, or silence this with "
                'dask.config.set({"toolkit.dashboard": False})',
                RuntimeWarning,
                stacklevel=3,
            )
