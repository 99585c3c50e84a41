"""The plugins behind toolkit's dashboard page (imported where ``distributed`` runs).

:class:`HeartbeatPlugin` puts each worker's running I/O totals in its heartbeats;
:class:`DashboardPlugin`, on the scheduler, feeds an :class:`~toolkit.dashboard.feed.IOFeed`
from them twice a second and mounts the Bokeh page on the running dashboard.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from toolkit.dashboard.feed import HEARTBEAT_KEY, PAGE, IOFeed, process_report

__all__ = ["PLUGIN_NAME", "DashboardPlugin", "HeartbeatPlugin", "is_mounted"]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "toolkit-dashboard"


class HeartbeatPlugin(WorkerPlugin):
    """Adds this worker process's I/O totals to its heartbeats."""

    idempotent = True
    name = "toolkit-io-heartbeat"

    def setup(self, worker: Any) -> None:
        """Add the report to the worker's heartbeat metrics."""
        worker.metrics[HEARTBEAT_KEY] = process_report

    def teardown(self, worker: Any) -> None:
        """Take it out again."""
        worker.metrics.pop(HEARTBEAT_KEY, None)


class DashboardPlugin(SchedulerPlugin):
    """Feeds an :class:`IOFeed` from the workers' heartbeats and mounts the page."""

    idempotent = True
    name = PLUGIN_NAME

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.feed: IOFeed | None = None
        self.mounted = False
        self._callback: Any = None

    async def start(self, scheduler: Any) -> None:
        """Start polling the heartbeats, and mount the page if the scheduler has a dashboard."""
        from tornado.ioloop import PeriodicCallback

        self.feed = IOFeed()
        self._scheduler = scheduler
        self._callback = PeriodicCallback(self._poll, self.interval * 1000)
        self._callback.start()
        self.mounted = _mount(scheduler, self.feed)

    def _poll(self) -> None:
        assert self.feed is not None
        reports = [ws.metrics.get(HEARTBEAT_KEY) for ws in self._scheduler.workers.values()]
        # The scheduler's own process: the client's, for a LocalCluster.
        reports.append(process_report())
        # The request budgets' rates in force, where toolkit coordinates them.
        throttle = self._scheduler.plugins.get("toolkit-throttle")
        limits = throttle.rates() if hasattr(throttle, "rates") else {}
        control = throttle.control() if hasattr(throttle, "control") else {}
        self.feed.update(reports, limits=limits, control=control)

    async def close(self) -> None:
        """Stop polling."""
        if self._callback is not None:
            self._callback.stop()


def _mount(scheduler: Any, feed: IOFeed) -> bool:
    """Add the page to the scheduler's running dashboard; False if it has none."""
    try:
        from bokeh.server.tornado import BokehTornado
        from distributed.dashboard.core import BokehApplication
        from distributed.dashboard.scheduler import template_variables
        from tornado.ioloop import IOLoop
    except ImportError as e:  # no Bokeh here: the dashboard itself is off
        logger.warning("toolkit's dashboard page needs Bokeh on the scheduler: %s", e)
        return False
    http = getattr(scheduler, "http_application", None)
    apps = getattr(http, "applications", [])
    prefix = next((a.prefix for a in apps if isinstance(a, BokehTornado)), None)
    if http is None or prefix is None:
        return False
    variables = template_variables(scheduler)
    # Feed and page meet through a weak reference: a closed plugin frees its feed.
    app = BokehApplication(
        {PAGE: _PageFactory(feed)}, scheduler, prefix=prefix, template_variables=variables
    )
    http.add_application(app)
    app.initialize(IOLoop.current())
    # The dashboard's "More..." menu lists pages from this (memoized, shared) list.
    entry = {"url": PAGE.strip("/"), "name": "Toolkit I/O"}
    if entry not in variables["plots"]:
        variables["plots"].append(entry)
        variables["plots"].sort(key=lambda d: d["name"])
    return True


class _PageFactory:
    """Makes one Bokeh document per browser tab, all reading the same feed."""

    def __init__(self, feed: IOFeed) -> None:
        self._feed = weakref.ref(feed)

    def __call__(self, scheduler: Any, extra: dict[str, Any], doc: Any) -> None:
        from toolkit.dashboard.page import io_doc

        feed = self._feed()
        if feed is not None:
            io_doc(feed, extra, doc)


def is_mounted(dask_scheduler: Any) -> bool:
    """Whether the page is on this scheduler's dashboard (run with ``client.run_on_scheduler``)."""
    plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
    return bool(getattr(plugin, "mounted", False))
