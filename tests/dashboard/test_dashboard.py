"""toolkit's dashboard page: the feed's arithmetic, and the live page in headless Chromium."""

from __future__ import annotations

import os
import tempfile
import threading
import time
import urllib.request
from typing import Any

import numpy as np
import pytest
import xarray as xr
from conftest import cluster_of, headless_chromium
from hypothesis import given, settings
from hypothesis import strategies as st

import toolkit
from toolkit.dashboard import RATE_FIELDS, IOFeed
from toolkit.io.metrics import IOMetrics
from toolkit.testing import FaultProxy


def _report(process: str, **stores: dict[str, Any]) -> dict[str, Any]:
    return {
        "process": process,
        "stores": {s: {**IOMetrics().as_dict(), **c} for s, c in stores.items()},
    }


class TestIOFeed:
    def test_rates_come_from_what_moved_between_reports(self) -> None:
        feed = IOFeed(span=1.0)
        feed.update([_report("w1", s3={"sets": 100, "bytes_written": 1000})], now=10.0)
        assert feed.since(0) == []  # one sample: no rate yet
        feed.update([_report("w1", s3={"sets": 150, "bytes_written": 1500})], now=11.0)
        feed.update([_report("w1", s3={"sets": 150, "bytes_written": 1500, "gets": 20})], now=12.0)
        points = feed.since(0)
        assert [p.rates["s3"]["requests"] for p in points] == [50.0, 20.0]
        assert points[0].rates["s3"]["bytes_written"] == 500.0
        assert feed.since(points[0].seq) == points[1:]
        totals, latest = feed.snapshot()
        assert totals["s3"].sets == 150 and totals["s3"].gets == 20
        assert latest is points[-1]

    def test_the_first_report_of_a_process_is_history_not_a_rate(self) -> None:
        feed = IOFeed(span=1.0)
        feed.update([_report("w1", s3={"sets": 10})], now=0.0)
        feed.update([_report("w1", s3={"sets": 10}), _report("w2", s3={"sets": 5000})], now=1.0)
        assert feed.since(0)[-1].rates["s3"]["requests"] == 0.0
        assert feed.snapshot()[0]["s3"].sets == 5010

    def test_gone_restarted_and_repeated_processes(self) -> None:
        feed = IOFeed(span=1.0)
        feed.update([_report("a", s3={"gets": 10}), _report("b", s3={"gets": 7})], now=0.0)
        # b is gone (what it did stays); a restarted from zero; a reported twice.
        feed.update([_report("a", s3={"gets": 3}), _report("a", s3={"gets": 3})], now=1.0)
        totals, latest = feed.snapshot()
        assert totals["s3"].gets == 20
        assert latest is not None and latest.rates["s3"]["requests"] == 3.0

    def test_rates_are_averaged_over_the_span_and_history_is_bounded(self) -> None:
        feed = IOFeed(window=5.0, span=2.0)
        for i in range(20):
            feed.update([_report("a", s3={"sets": 10 * i})], now=0.5 * i)
        points = feed.since(0)
        assert all(p.rates["s3"]["requests"] == pytest.approx(20.0) for p in points)
        assert points[0].time >= points[-1].time - 5.0
        assert set(points[-1].rates["s3"]) == set(RATE_FIELDS)

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 50)), max_size=4),
            min_size=1,
            max_size=12,
        )
    )
    def test_totals_equal_what_every_process_did(self, rounds: list[list[tuple[str, int]]]) -> None:
        """Processes that only grow: the totals are the sum of their last reports."""
        feed = IOFeed()
        done: dict[str, int] = {}
        for t, increments in enumerate(rounds):
            for proc, n in increments:
                done[proc] = done.get(proc, 0) + n
            seen = {p for p, _ in increments}
            feed.update([_report(p, s={"sets": done[p]}) for p in sorted(seen)], now=float(t))
        totals, _ = feed.snapshot()
        assert (totals["s"].sets if "s" in totals else 0) == sum(done.values())


class TestIOPage:
    """The page's models, without a browser: what the websocket would carry."""

    def test_every_store_streams_through_one_source(self) -> None:
        from toolkit.dashboard.page import IOPage

        feed = IOFeed(span=1.0)
        page = IOPage(feed)
        feed.update([_report("w", a={"sets": 0}, b={"gets": 0})], now=0.0)
        feed.update(
            [_report("w", a={"sets": 10}, b={"gets": 0})], now=1.0, limits={"a": {"all": 40.0}}
        )
        page.update()
        assert page.stores == ["a"]  # b has not moved: in the table, not plotted
        assert page.rates.tags == ["a"] and page.rates.data["requests-0"] == [10.0]
        assert page.rates.data["limit-0"] == [40.0]
        feed.update([_report("w", a={"sets": 20}, b={"gets": 5})], now=2.0)
        page.update()
        assert page.stores == ["a", "b"]
        data = page.rates.data
        assert len(data["time"]) == 2 and data["requests-0"] == [10.0, 10.0]
        assert np.isnan(data["requests-1"][0]) and data["requests-1"][1] == 5.0
        assert all(len(v) == 2 for v in data.values())  # one stream keeps the columns equal
        assert page.totals.data["store"] == ["a", "b"] and page.totals.data["sets"] == [20, 0]
        assert "a" in page.table.text and "2 store(s)" in page.status.text

    def test_an_idle_page_sends_nothing_and_plots_are_capped(self) -> None:
        from toolkit.dashboard import page as page_mod

        feed = IOFeed(span=1.0)
        page = page_mod.IOPage(feed)
        n = page_mod._MAX_PLOTTED + 3
        feed.update([_report("w", **{f"s{i}": {"gets": 0} for i in range(n)})], now=0.0)
        feed.update([_report("w", **{f"s{i}": {"gets": 1} for i in range(n)})], now=1.0)
        page.update()
        assert len(page.stores) == page_mod._MAX_PLOTTED
        assert "3 store(s) idle here or past" in page.status.text
        assert len(page.totals.data["store"]) == n  # the table lists every store
        before = page.totals.data
        page.update()  # nothing new: the totals model is not replaced
        assert page.totals.data is before


# --------------------------------------------------------------------------- the page


# What the browser holds: Bokeh's models as they arrived over the websocket, and the
# visible table.
_READ_PAGE = """
const doc = (window.Bokeh && Bokeh.documents.length) ? Bokeh.documents[0] : null;
if (doc === null) return null;
const col = (m, k) => m ? Array.from(m.data instanceof Map ? m.data.get(k) : m.data[k]) : [];
const totals = doc.get_model_by_name('toolkit-io-totals');
const rates = doc.get_model_by_name('toolkit-io-rates');
const i = rates ? rates.tags.indexOf(arguments[0]) : -1;  // the store asked for
const series = (k) => i < 0 ? [] : col(rates, k + '-' + i);
const table = doc.get_model_by_name('toolkit-io-table');
return {
  store: col(totals, 'store'), requests: col(totals, 'requests'), sets: col(totals, 'sets'),
  throttled: col(totals, 'throttled'), retries: col(totals, 'retries'),
  backoff: col(totals, 'backoff_seconds'),
  points: i < 0 ? 0 : col(rates, 'time').length, rate: series('requests'), limit: series('limit'),
  table: table ? table.text : '',
};
"""


# Canvases drawn with a size, inside the shadow roots of Bokeh's views.
_COUNT_CANVASES = """
let n = 0;
const walk = (root) => {
  for (const el of root.querySelectorAll('*')) {
    if (el.tagName === 'CANVAS' && el.width > 0) n += 1;
    if (el.shadowRoot) walk(el.shadowRoot);
  }
};
walk(document);
return n;
"""


def _run(driver: Any, script: str, *args: Any) -> Any:
    """What ``script`` returns, or why it returned nothing."""
    from selenium.common.exceptions import TimeoutException

    try:
        result = driver.execute_script(script, *args)
    except TimeoutException as e:  # the renderer was busy (2 cores, a cluster and a write)
        return f"script timeout: {e.msg}"
    return result if result is not None else "no Bokeh document yet"


def _until(driver: Any, ok: Any, timeout: float, what: str, script: str, *args: Any) -> Any:
    """Run ``script`` until ``ok`` holds of its result (a string says why there is none)."""
    deadline = time.monotonic() + timeout
    last: Any = ""
    while time.monotonic() < deadline:
        last = _run(driver, script, *args)
        if not isinstance(last, str) and ok(last):
            return last
        time.sleep(0.25)
    raise AssertionError(f"the page never showed {what}; last seen: {last}")


def _until_page(driver: Any, store: str, ok: Any, timeout: float, what: str) -> dict[str, Any]:
    """The page's figures for ``store``, once ``ok`` holds of them."""
    result: dict[str, Any] = _until(driver, ok, timeout, what, _READ_PAGE, store)
    return result


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_the_page_shows_a_throttled_write_live_in_chromium(s3: Any) -> None:
    """Load the page during a throttled write on a cluster: the figures appear and move."""
    from distributed import Client

    from toolkit.dashboard.plugins import is_mounted

    url = "s3://data/dashboard.zarr"
    ds = xr.Dataset({"v": (("t", "x"), np.random.default_rng(0).random((360, 64), "f4"))})
    with (
        cluster_of(2, 1) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
        # A bucket of one request: two requests within 25 ms, one is throttled. A
        # bucket of a second's worth let every request through when a loaded machine
        # (load 18) sent fewer than 40 a second, and nothing was throttled.
        FaultProxy(s3.endpoint_url, latency=0.01, rate=40, burst=1) as proxy,
        headless_chromium() as driver,
    ):
        # Any toolkit call that finds the client adds the page; no set-up needed.
        assert not client.run_on_scheduler(is_mounted)
        toolkit.io_metrics()
        assert client.run_on_scheduler(is_mounted)
        page = toolkit.register_dashboard()
        assert page.endswith("/toolkit-io") and page.startswith(client.dashboard_link[:10])

        # 360 one-row chunks through a proxy that allows 40 requests/s, while toolkit
        # asks for 100/s: throttling answers, retries and backoff, for ~10 s.
        # Written again until the page has shown the figures moving: on a loaded
        # machine the page may take longer to come up than one write takes.
        reports: list[Any] = []
        seen = threading.Event()

        def write() -> None:
            opts = s3.storage_options(proxy.url)
            throttle = toolkit.Throttle(rate=100)
            enc = {"v": {"chunks": (1, 64)}}
            chunked = ds.chunk({"t": 1})
            while not reports or not seen.is_set():
                reports.append(
                    toolkit.to_zarr(
                        chunked,
                        url,
                        mode="w",
                        storage_options=opts,
                        encoding=enc,
                        throttle=throttle,
                        progress=False,
                    )
                )

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        # The dashboard's own pages list it in their "More..." menu.
        with urllib.request.urlopen(client.dashboard_link, timeout=10) as status:
            assert 'href="toolkit-io"' in status.read().decode()
        driver.get(page)
        assert "toolkit I/O" in driver.title or "Dask" in driver.title
        # Generous: at load 20 the renderer answered none of 30 s of tries (Bokeh's
        # first document competes with a cluster, a write and the proxy for 2 cores);
        # at load 3 it answers within seconds.
        first = _until_page(
            driver, url, lambda r: url in r["store"] and r["points"] > 0, 180, "the store"
        )
        i = first["store"].index(url)
        later = _until_page(
            driver,
            url,
            lambda r: r["requests"][i] > first["requests"][i] and r["points"] > first["points"],
            90,
            "the figures moving",
        )
        seen.set()
        _until(driver, lambda n: n >= 4, 90, "the four plots drawn", _COUNT_CANVASES)
        # NaN (no sample of the store at that time) arrives as null.
        assert max(x for x in later["rate"] if x is not None) > 0
        writer.join(180)
        assert reports and not writer.is_alive(), "the write did not finish"
        sets, throttled, retries = (
            sum(getattr(r.io, k) for r in reports) for k in ("sets", "throttled", "retries")
        )
        assert throttled > 0 and retries > 0
        # Once the last heartbeats arrived, the page's totals are the writes' own.
        final = _until_page(
            driver,
            url,
            lambda r: r["sets"][i] == sets and r["throttled"][i] == throttled,
            30,
            f"the writes' totals ({sets} PUTs, {throttled} throttled)",
        )
        assert final["retries"][i] == retries
        assert final["backoff"][i] == pytest.approx(sum(r.io.backoff_seconds for r in reports))
        assert url in final["table"] and "throttled" in final["table"]
        # The budget's rate in force: 100/s configured, cut by the store's answers.
        limits = [x for x in final["limit"] if x is not None]
        assert limits and min(limits) < 100 and "budget in force" in final["table"]
        assert "rate control" in final["table"] and "s ago" in final["table"]  # the last cut
        state = toolkit.throttle_state()
        mine = [b for b in state.budgets if b.store == url and b.where == "cluster"]
        assert mine and mine[0].cuts > 0 and mine[0].policy.rate == 100
        assert url in repr(state) and url in state._repr_html_()
        driver.save_screenshot(os.path.join(tempfile.gettempdir(), "toolkit-io-page.png"))
    back = xr.open_zarr(url, storage_options=s3.storage_options(), consolidated=False).load()
    np.testing.assert_array_equal(back.v.values, ds.v.values)


def test_register_dashboard_needs_a_client() -> None:
    with pytest.raises(ValueError, match=r"[Nn]o client"):
        toolkit.register_dashboard()


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_a_disabled_page_leaves_the_cluster_alone(tmp_path: Any) -> None:
    import dask
    from distributed import Client

    from toolkit.dashboard.plugins import is_mounted

    with cluster_of(1, 1) as cluster, Client(cluster) as client:  # type: ignore[no-untyped-call]
        with dask.config.set({"toolkit.dashboard": False}):
            toolkit.to_zarr(
                xr.Dataset({"v": ("t", np.arange(4.0))}), str(tmp_path / "a.zarr"), progress=False
            )
        assert not client.run_on_scheduler(is_mounted)
        assert "toolkit-dashboard" not in client.run_on_scheduler(
            lambda dask_scheduler: list(dask_scheduler.plugins)
        )
