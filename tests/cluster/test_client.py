"""The active client and its hooks: the cluster layer tells layers above of clients it finds."""

from __future__ import annotations

import dask
import pytest

from toolkit.cluster.client import active_client, on_client
from toolkit.runtime import Runtime


def test_no_client_without_distributed_or_under_a_local_scheduler():
    assert active_client() is None
    with dask.config.set(scheduler="threads"):
        assert active_client() is None


@pytest.mark.cluster
def test_hooks_hear_of_each_client_found_once_added_and_once_only():
    from distributed import Client, LocalCluster

    heard = []

    def hook(c):
        heard.append(c)

    with Runtime(inherit=False):  # without the package's own hook (the dashboard's)
        assert on_client(hook) is hook
        on_client(hook)  # added once however often passed
        with (
            LocalCluster(
                n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
            ) as cl,
            Client(cl) as c,
        ):
            assert active_client() is c
            assert heard == [c]
            with dask.config.set(scheduler="sync"):
                assert active_client() is None  # a local scheduler overrides the client
    assert len(heard) == 1
