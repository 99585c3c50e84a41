"""The Bokeh document of toolkit's dashboard page (imported on the scheduler only).

Four live plots, one colour per store: requests/s (and the rate the cluster's
request budget allows now, which adaptive budgets move); bytes/s; throttling answers,
retries and errors per second; and how many requests are backing off or
waiting for the rate budget on average (seconds spent so, per second). Below
them, a table of totals per store. Every model a test or a script may want to
read has a ``name``: the rates are ``toolkit-io-rates`` (columns
``<field>-<i>`` for the i-th store of its ``tags``, and ``time``), the totals as
numbers are ``toolkit-io-totals``, the visible table is ``toolkit-io-table``.
"""

from __future__ import annotations

import math
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, DataRange1d, NumeralTickFormatter
from bokeh.models.widgets import Div
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from dask.utils import format_bytes
from distributed.dashboard.components.scheduler import BOKEH_THEME, env

from toolkit._render import html_table
from toolkit.dashboard.feed import RATE_FIELDS, IOFeed
from toolkit.io.metrics import IOMetrics
from toolkit.io.stores import display_location

__all__ = ["IOPage", "io_doc"]

_HISTORY = 1200  # points kept per store in the browser (10 min at 0.5 s)
_MAX_PLOTTED = 8  # stores drawn; the table lists every one

# name, title, y-axis format, [(field, label suffix, dash)]
_PLOTS: tuple[tuple[str, str, str, tuple[tuple[str, str, str], ...]], ...] = (
    (
        "requests",
        "Requests / s",
        "0,0",
        (("requests", "", "solid"), ("limit", " budget in force", "dashed")),
    ),
    (
        "bytes",
        "Bytes / s",
        "0.0 b",
        (("bytes_written", " written", "solid"), ("bytes_read", " read", "dashed")),
    ),
    (
        "throttling",
        "Throttling answers, retries, errors / s",
        "0,0.[0]",
        (
            ("throttled", " throttled", "solid"),
            ("retries", " retries", "dashed"),
            ("errors", " errors", "dotted"),
        ),
    ),
    (
        "waiting",
        "Requests backing off, waiting for budget (average number)",
        "0.[00]",
        (("backoff_seconds", " backoff", "solid"), ("wait_seconds", " budget wait", "dashed")),
    ),
)


def _or_nan(x: float | None) -> float:
    return math.nan if x is None else x


def _ms(seconds: float) -> float:
    return seconds * 1e3 if math.isfinite(seconds) else 0.0


class IOPage:
    """The page's models and their periodic update (a dashboard component).

    Parameters
    ----------
    feed : IOFeed
        Where the figures come from (the scheduler plugin's).
    """

    def __init__(self, feed: IOFeed) -> None:
        self.feed = feed
        self._seq = 0
        # One source for every store (columns "<field>-<i>", the stores in ``tags``),
        # streamed once per update: a message per store would make the browser
        # redraw every plot once per store, and fall behind.
        self.rates = ColumnDataSource({"time": []}, name="toolkit-io-rates", tags=[])
        self.figures = []
        for name, title, fmt, _ in _PLOTS:
            fig = figure(
                title=title,
                x_axis_type="datetime",
                y_range=DataRange1d(start=0),
                height=260,
                sizing_mode="stretch_width",
                tools="pan,wheel_zoom,box_zoom,reset",
                name=f"toolkit-io-{name}",
            )
            fig.yaxis.formatter = NumeralTickFormatter(format=fmt)
            self.figures.append(fig)
        self.totals = ColumnDataSource(_totals_columns({}, {}), name="toolkit-io-totals")
        # An HTML table: Bokeh 3.9's DataTable does not redraw replaced data (bokeh#15328).
        # The numbers travel with it (a model only reaches the browser when referenced).
        self.table = Div(
            text="", name="toolkit-io-table", sizing_mode="stretch_width", tags=[self.totals]
        )
        self.status = Div(
            text="No request through toolkit yet.",
            name="toolkit-io-status",
            sizing_mode="stretch_width",
        )
        header = Div(
            text=(
                "<h2 style='margin:4px 0'>toolkit I/O</h2>"
                "Requests to each store as toolkit's store wrappers saw them, in every worker "
                "and the scheduler's process: every attempt counts, retries included. "
                f"Rates are averaged over {feed.span:g} s."
            ),
            sizing_mode="stretch_width",
        )
        self.root = column(
            header,
            self.status,
            row(self.figures[0], self.figures[1], sizing_mode="stretch_width"),
            row(self.figures[2], self.figures[3], sizing_mode="stretch_width"),
            self.table,
            sizing_mode="stretch_width",
        )

    @property
    def stores(self) -> list[str]:
        """The plotted stores; the i-th one's columns are ``<field>-<i>``."""
        stores: list[str] = self.rates.tags
        return stores

    def _plot(self, scope: str) -> None:
        """Give ``scope`` its columns (NaN before now) and its lines."""
        i = len(self.stores)
        self.rates.tags = [*self.stores, scope]  # assigned, so the browser hears of it
        past = [math.nan] * len(self.rates.data["time"])
        for field in (*RATE_FIELDS, "limit"):
            self.rates.data[f"{field}-{i}"] = list(past)
        color = Category10_10[i % len(Category10_10)]
        for fig, (_, _, _, lines) in zip(self.figures, _PLOTS, strict=True):
            for field, suffix, dash in lines:
                fig.line(
                    "time",
                    f"{field}-{i}",
                    source=self.rates,
                    color=color,
                    line_dash=dash,
                    line_width=2,
                    legend_label=scope + suffix,
                )
            fig.legend.location = "top_left"
            fig.legend.click_policy = "hide"
            fig.legend.label_text_font_size = "8pt"
            fig.legend.background_fill_alpha = 0.6

    def update(self) -> None:
        """Stream the new rate points and refresh the totals."""
        points = self.feed.since(self._seq)
        if points:
            self._seq = points[-1].seq
            for scope in sorted({s for p in points for s in p.rates} - set(self.stores)):
                # Plot a store once it moves (not one known from history alone),
                # and at most _MAX_PLOTTED: each costs the browser ten lines.
                moving = any(v > 0 for p in points for v in p.rates.get(scope, {}).values())
                if moving and len(self.stores) < _MAX_PLOTTED:
                    self._plot(scope)
            new: dict[str, Any] = {"time": [p.time * 1e3 for p in points]}
            for i, scope in enumerate(self.stores):
                for field in RATE_FIELDS:
                    new[f"{field}-{i}"] = [
                        p.rates.get(scope, {}).get(field, math.nan) for p in points
                    ]
                new[f"limit-{i}"] = [_or_nan(_binding(p.limits.get(scope))) for p in points]
            self.rates.stream(new, rollover=_HISTORY)
        totals, latest = self.feed.snapshot()
        if totals:
            now = latest.rates if latest else {}
            columns = _totals_columns(totals, now)
            if columns != self.totals.data:  # an idle page sends nothing
                self.totals.data = columns
                limits = latest.limits if latest else {}
                control = latest.control if latest else {}
                self.table.text = html_table(
                    [
                        _row(s, m, now.get(s, {}), limits.get(s), control.get(s))
                        for s, m in sorted(totals.items())
                    ]
                )
                m = IOMetrics.merged(totals.values())
                hidden = len(totals) - len(self.stores)
                self.status.text = (
                    f"{len(totals)} store(s): {m.total:,} requests, {m.throttled:,} throttled, "
                    f"{m.retries:,} retries, {m.backoff_seconds:,.1f} s backing off, "
                    f"{format_bytes(m.bytes_written)} written, {format_bytes(m.bytes_read)} read."
                    + (
                        f" {hidden} store(s) idle here or past {_MAX_PLOTTED}: in the table only."
                        if hidden
                        else ""
                    )
                )


def _totals_columns(
    totals: dict[str, IOMetrics], rates: dict[str, dict[str, float]]
) -> dict[str, list[Any]]:
    """The totals per store as columns of numbers (for scripts and tests)."""
    rows = sorted(totals.items())
    out: dict[str, list[Any]] = {"store": [s for s, _ in rows]}
    for f in ("gets", "sets", "deletes", "lists", *RATE_FIELDS[1:], "failed"):
        out[f] = [getattr(m, f) for _, m in rows]
    out["requests"] = [m.total for _, m in rows]
    out["rate"] = [rates.get(s, {}).get("requests", 0.0) for s, _ in rows]
    out["p50_ms"] = [_ms(m.percentile(50)) for _, m in rows]
    out["p99_ms"] = [_ms(m.percentile(99)) for _, m in rows]
    return out


def _binding(limits: dict[str, float | None] | None) -> float | None:
    """The lowest rate in force of a budget (None: no budget, or unlimited)."""
    set_ = [v for v in (limits or {}).values() if v is not None]
    return min(set_) if set_ else None


def _row(
    scope: str,
    m: IOMetrics,
    rates: dict[str, float],
    limits: dict[str, float | None] | None,
    control: str | None = None,
) -> dict[str, str]:
    """One store's line of the visible table."""
    moved = rates.get("bytes_read", 0.0) + rates.get("bytes_written", 0.0)
    budget = "-"
    if limits is not None:
        set_ = [f"{k} {v:,.0f}/s" for k, v in limits.items() if v is not None]
        budget = ", ".join(set_) or "unlimited"
    return {
        "store": display_location(scope),
        "now": f"{rates.get('requests', 0.0):,.0f} req/s, {format_bytes(int(moved))}/s",
        "budget in force": budget,
        "rate control": control or "-",
        **m.summary(),
        "written / read": f"{format_bytes(m.bytes_written)} / {format_bytes(m.bytes_read)}",
        "failed": f"{m.failed:,}",
    }


def io_doc(feed: IOFeed, extra: dict[str, Any], doc: Any) -> None:
    """Build one browser tab's document (distributed's dashboard template and theme)."""
    page = IOPage(feed)
    page.update()
    doc.title = "Dask: toolkit I/O"
    doc.add_root(page.root)
    doc.add_periodic_callback(page.update, 500)
    doc.template = env.get_template("simple.html")
    doc.template_variables.update(extra)
    doc.theme = BOKEH_THEME
