"""The small operations of issue 28, each run through the proxy and measured by a ledger.

A forecast feed, a many-jobs workflow or a stream ingest writes a little every few
minutes; over a slow link each such write costs its serial round trips times the
latency. These are those operations, exactly as a user calls them, on a dataset
of ``variables`` float32 variables ``(time, lat, lon)`` of ``ny x nx`` (12 of
90 x 180 by default), one Zarr chunk per variable and time step:

- ``create``: ``toolkit.to_zarr(ds, url, mode="w")`` of one time step;
- ``append``: ``toolkit.append`` of one time step;
- ``region``: ``toolkit.to_zarr(step, url, region={"time": slice(k, k + 1)})``;
- ``partition``: ``toolkit.overwrite_partitions`` of one partition (a day,
  one time step) of a dataset with a ``day`` label coordinate;
- ``stream batch``: one batch of a stream ingest (``toolkit.ingest`` of 8
  one-step pieces, 4 per batch): the batch after the one that created the
  store, an append of 4 steps. Its requests are those sent after the first
  batch released its creation claim, and its seconds their span (the first
  request's start to the last answer);
- ``open``: ``toolkit.open_zarr`` (lazy: metadata only);
- ``verify``: ``toolkit.verify(store)``, every object against the manifest;
- ``stats``: ``toolkit.stats(url, stats=["mean"])``, its open and one pass.

Each is measured by :func:`measure`: a :class:`~toolkit.testing.ledger.Ledger`
of the proxy records the requests of the operation alone (its set-up is done
beforehand, straight on the server), and :class:`Measured` holds the wall time
and the ledger's summary. The tests (``tests/test_round_trips.py``) bound the
round trips; the benchmarks (``--only latency``) publish them.

Example
-------
>>> from toolkit.testing import FaultProxy, S3Server
>>> from toolkit.testing.roundtrips import measure
>>> with S3Server() as s3, FaultProxy(s3.endpoint_url, latency=0.01) as proxy:
...     s3.create_bucket("data")
...     m = measure(s3, proxy, "open", client="obstore", variables=2, ny=4, nx=4)
>>> m.operation, m.summary.round_trips > 0
('open', True)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

import toolkit
from toolkit.io.stores import resolve_store
from toolkit.testing.ledger import LedgerSummary, Request, summarize
from toolkit.testing.servers import FaultProxy, S3Server

__all__ = ["OPERATIONS", "Measured", "dataset", "measure"]

OPERATIONS = ("create", "append", "region", "partition", "stream batch", "open", "verify", "stats")


@dataclass
class Measured:
    """One operation through the proxy: its wall time and its ledger's summary."""

    operation: str
    client: str
    latency: float
    seconds: float
    summary: LedgerSummary

    @property
    def round_trips(self) -> int:
        """The serial round trips (the critical path's length)."""
        return self.summary.round_trips


def dataset(
    steps: int = 1,
    start: int = 0,
    *,
    variables: int = 12,
    ny: int = 90,
    nx: int = 180,
    day: bool = False,
) -> xr.Dataset:
    """``variables`` float32 variables (time, lat, lon); daily steps from ``start``.

    ``day=True`` adds a ``day`` label coordinate along time (one step a day),
    for partition overwrites.
    """
    rng = np.random.default_rng(start)
    times = pd.date_range("2024-01-01", periods=steps, freq="D") + pd.Timedelta(days=start)
    data = {
        f"v{i:02d}": (("time", "lat", "lon"), rng.random((steps, ny, nx), dtype="f4"))
        for i in range(variables)
    }
    coords: dict[str, Any] = {
        "time": times,
        "lat": np.linspace(-89.0, 89.0, ny),
        "lon": np.linspace(0.0, 358.0, nx),
    }
    if day:
        coords["day"] = ("time", times.strftime("%Y-%m-%d").to_numpy(dtype="U10"))
    return xr.Dataset(data, coords=coords)


def _encoding(ds: xr.Dataset) -> dict[Hashable, dict[str, Any]]:
    return {n: {"chunks": (1, *v.shape[1:])} for n, v in ds.data_vars.items()}


def measure(
    s3: S3Server,
    proxy: FaultProxy,
    operation: str,
    *,
    client: str = "obstore",
    bucket: str = "data",
    variables: int = 12,
    ny: int = 90,
    nx: int = 180,
) -> Measured:
    """Run ``operation`` (one of :data:`OPERATIONS`) once through ``proxy``; its ledger.

    A store of its own is made for it under ``bucket`` (which must exist), set up
    straight on the server (no latency, not recorded), so runs never interfere.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"operation {operation!r} is none of {OPERATIONS}")
    name = f"rt-{operation.replace(' ', '-')}-{client}-{uuid.uuid4().hex[:8]}-{time.time_ns()}.zarr"
    url = f"s3://{bucket}/{name}"
    opts = {**s3.storage_options(proxy.url), "client": client}
    direct = {**s3.storage_options(), "client": client}

    def make(steps: int, start: int = 0, day: bool = False) -> xr.Dataset:
        return dataset(steps, start, variables=variables, ny=ny, nx=nx, day=day)

    def seed(ds: xr.Dataset) -> None:
        toolkit.to_zarr(
            ds, url, mode="w", storage_options=direct, encoding=_encoding(ds), progress=False
        )

    run: Callable[[], object]
    split: Callable[[list[Request]], list[Request]] = list
    if operation == "create":
        ds = make(1)

        def run() -> object:
            return toolkit.to_zarr(
                ds, url, mode="w", storage_options=opts, encoding=_encoding(ds), progress=False
            )

    elif operation == "append":
        seed(make(1))
        step = make(1, 1)

        def run() -> object:
            return toolkit.append(step, url, "time", storage_options=opts, progress=False)

    elif operation == "region":
        seed(make(2))
        step = make(1, 1).drop_vars(["lat", "lon"])

        def run() -> object:
            return toolkit.to_zarr(
                step, url, region={"time": slice(1, 2)}, storage_options=opts, progress=False
            )

    elif operation == "partition":
        seed(make(2, day=True))
        step = make(1, 1, day=True)

        def run() -> object:
            return toolkit.overwrite_partitions(
                step, url, "day", storage_options=opts, progress=False
            )

    elif operation == "stream batch":
        run, split = _stream_batch(url, opts, make)
    elif operation == "open":
        seed(make(2))

        def run() -> object:
            return toolkit.open_zarr(url, storage_options=opts)

    elif operation == "verify":
        seed(make(2))
        store = resolve_store(url, storage_options=opts)  # verify takes no storage_options

        def run() -> object:
            report = toolkit.verify(store, progress=False)
            if not report.ok:
                raise AssertionError(f"verify found problems: {report.problems}")
            return report

    else:
        seed(make(2))

        def run() -> object:
            return toolkit.stats(url, stats=["mean"], storage_options=opts, progress=False)

    with proxy.ledger() as ledger:
        t0 = time.perf_counter()
        run()
        seconds = time.perf_counter() - t0
    summary = summarize(split(ledger.requests), root=name)
    if operation == "stream batch":  # the batch's own span, not the whole stream's
        seconds = summary.wall
    return Measured(operation, client, proxy.latency, seconds, summary)


def _stream_batch(
    url: str, opts: dict[str, Any], make: Callable[[int, int], xr.Dataset]
) -> tuple[Callable[[], object], Callable[[list[Request]], list[Request]]]:
    """A stream of 8 one-step pieces, 4 per batch; the second batch's requests.

    The first batch creates the store and, last of all, releases its creation
    claim (a write of ``.toolkit/coord/leases/create.json``); then the writer
    thread starts the next batch, an append, which never writes the claim. The
    second batch's requests are those that started after the claim's last write.
    """

    def run() -> object:
        pieces = (make(1, i) for i in range(8))
        return toolkit.ingest(
            pieces,
            url,
            concat_dim="time",
            chunks={"time": 1},
            max_writers=4,
            storage_options=opts,
            progress=False,
        )

    def split(reqs: list[Request]) -> list[Request]:
        released = max(r.end for r in reqs if r.kind == "claim" and r.method not in ("GET", "HEAD"))
        return [r for r in reqs if r.start > released]

    return run, split
