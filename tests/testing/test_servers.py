"""The shipped test servers: a real S3 server and the fault-injecting proxy, and
toolkit writing through them."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import make_dataset

import toolkit

pytest.importorskip("moto")
pytest.importorskip("s3fs")

from toolkit.testing import FaultProxy


def test_proxy_throttles_above_its_rate(s3):
    with FaultProxy(s3.endpoint_url, rate=5, burst=5) as proxy:
        client = s3.client(proxy.url)
        statuses = []
        for _ in range(20):
            try:
                client.list_objects_v2(Bucket="data", Prefix="nothing/")  # a fast, empty answer
                statuses.append(200)
            except Exception as e:  # botocore retries SlowDown; count what got through
                statuses.append(type(e).__name__)
        assert proxy.counts.throttled > 0
        assert proxy.counts.forwarded >= 5
        assert proxy.counts.requests == proxy.counts.forwarded + proxy.counts.throttled


def test_write_and_read_through_latency_proxy(s3):
    ds = make_dataset(nt=40, chunks={"time": 7})
    with FaultProxy(s3.endpoint_url, latency=0.01) as proxy:
        opts = s3.storage_options(proxy.url)
        report = toolkit.to_zarr(
            ds,
            "s3://data/latency.zarr",
            storage_options=opts,
            encoding={"a": {"chunks": (4, 6, 5), "shards": (8, 12, 10)}},
            progress=False,
        )
        back = toolkit.open_zarr("s3://data/latency.zarr", storage_options=opts)
        xr.testing.assert_identical(back.compute(), ds.compute())
        assert report.units == report.plan.nunits
        assert proxy.counts.by_method.get("PUT", 0) >= report.units
    assert "testing" not in repr(report) and "testing" not in repr(report.plan)


def test_every_value_lands_through_resets_and_500s(s3):
    """2% connection resets and 1% 500 errors: retries must leave every value in place."""
    ds = make_dataset(nt=60, chunks={"time": 5})
    with FaultProxy(s3.endpoint_url, reset_prob=0.02, error_prob=0.03, seed=3) as proxy:
        opts = s3.storage_options(proxy.url)
        report = toolkit.to_zarr(
            ds,
            "s3://data/faults.zarr",
            storage_options=opts,
            encoding={"a": {"chunks": (4, 6, 5)}},
            progress=False,
        )
    # Read back directly from the server, not through the faults.
    back = xr.open_zarr("s3://data/faults.zarr", storage_options=s3.storage_options())
    xr.testing.assert_identical(back.compute(), ds.compute())
    assert proxy.counts.resets + proxy.counts.errors > 0
    assert np.isfinite(back.b.values).all()
    # toolkit's retries did it (botocore's and s3fs's own are off), and say so. (aiohttp
    # itself resends a request once when a reused keep-alive connection is reset, so only
    # the 500s are sure to reach toolkit.)
    assert proxy.counts.errors > 0 and report.io.retries >= proxy.counts.errors
