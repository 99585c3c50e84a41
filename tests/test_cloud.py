"""Object stores for real: moto's S3 server and Azurite behind the fault-injecting proxy.

Every assertion is on data read back directly from the server (bypassing the
proxy), on the proxy's own counts, or on what toolkit reported. Each test runs
on S3 through both object-store clients, obstore and s3fs, and on Azure Blob
Storage (Azurite) through obstore (conftest's ``cloud``); the cluster test on S3
through each client (conftest's ``client``).
"""

from __future__ import annotations

import collections
import pickle
import threading
import time

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import cluster_of
from zarr.core.sync import sync

import toolkit
from toolkit.errors import IncompleteStoreError, StoreThrottledError, WriteError
from toolkit.testing import FaultProxy

pytestmark = pytest.mark.slow


def _direct(server, url):
    """Read back straight from the server, not through the proxy, with plain xarray.

    64 requests in flight, not zarr's 10: 1,000 tiny chunks read 10 at a time took
    over three minutes on a machine loaded with two cluster tests and a CI run
    beside (a readback timed out after its write had landed in 53 s).
    """
    from toolkit.io.stores import resolve_store

    # The client's bare zarr store (obstore; none of toolkit's wrappers), read by xarray:
    # for az://, xarray would need adlfs, which toolkit does not install; for s3://,
    # s3fs's botocore spent more CPU parsing 1,000 answers (and a HEAD before each GET)
    # than moto serving them: a readback outlasted the test's timeout at load 20.
    options = {**server.storage_options(), "client": "obstore"}
    with zarr.config.set({"async.concurrency": 64}):
        store = resolve_store(url, storage_options=options)
        return xr.open_zarr(store, consolidated=False).load()


def _seed(server, url: str, ds: xr.Dataset, chunks: tuple[int, ...]) -> None:
    """Write the starting store straight to the server (no proxy, no faults)."""
    toolkit.to_zarr(
        ds,
        url,
        mode="w",
        storage_options=server.storage_options(),
        progress=False,
        encoding={"v": {"chunks": chunks}},
    )


def _rows(n: int, width: int = 64, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return xr.Dataset({"v": (("t", "x"), rng.random((n, width)).astype("f4"))})


@pytest.fixture(scope="module")
def cluster4():
    """A LocalCluster of 4 worker processes (1 thread each), as the issue asks."""
    with cluster_of(4, 1) as cluster:
        yield cluster


@pytest.mark.cluster
@pytest.mark.timeout(420)  # a hang guard: 30-90 s write and readback at load 20 on 2 cores
def test_cluster_write_holds_a_100_per_second_limit(s3, client, cluster4):
    """4 worker processes, 1,000 write units, 20 ms latency, 100 requests/s allowed.

    Every value lands, no task fails, fewer than 5% of requests are throttled,
    and every request and every task's figures are accounted for. How close to
    the limit the cluster sends is a claim about speed, which a loaded machine
    cannot keep: the benchmarks measure it (``./dev bench --only cloud``), and
    the discrete-event model of the same code checks it on a simulated clock
    (``tests/cluster/test_coordinator.py``); here the time is only bounded
    against a hang. The cluster is warmed first (a small write): importing
    xarray and zarr in fresh worker processes and loading botocore's models
    costs ~2 s of CPU on 2 cores, a one-off that says nothing about throttling.
    """
    ds = _rows(1000).chunk({"t": 100})
    enc = {"v": {"chunks": (1, 64)}}
    from distributed import Client

    policy = toolkit.Throttle(rate=100)
    with Client(cluster4) as dc, FaultProxy(s3.endpoint_url, latency=0.02, rate=100) as proxy:
        opts = s3.storage_options(proxy.url)
        # Warm every worker: imports, and an S3 session from a task of its own (8
        # one-unit tasks; max_inflight=2 keeps the plan from merging them).
        dc.run(__import__, "toolkit")
        key = ("execute", "toolkit-write-v", ("toolkit-io", "sets"), "count")

        def published(at_least: int) -> int:
            # The scheduler's running total (the cluster outlives this test). Waited
            # for until it arrives: the 60 s only end a wait for what never comes.
            deadline, n = time.monotonic() + 60, -1
            while time.monotonic() < deadline and n < at_least:
                n = int(
                    dc.run_on_scheduler(
                        lambda dask_scheduler: dask_scheduler.cumulative_worker_metrics.get(key, 0)
                    )
                )
                time.sleep(0.1)
            return n

        start = published(0)
        warm = f"s3://data/{client}-warm.zarr"
        toolkit.to_zarr(
            _rows(8).chunk({"t": 1}),
            warm,
            mode="w",
            storage_options=opts,
            encoding=enc,
            throttle=toolkit.Throttle(rate=100, max_inflight=2),
            progress=False,
        )
        first = published(start + 8)
        before = proxy.counts.requests, proxy.counts.throttled
        puts = proxy.counts.by_method.get("PUT", 0)
        logged = len(proxy.log)
        t0 = time.perf_counter()
        report = toolkit.to_zarr(
            ds,
            f"s3://data/{client}-rate.zarr",
            mode="w",
            storage_options=opts,
            encoding=enc,
            throttle=policy,
            progress=False,
        )
        elapsed = time.perf_counter() - t0
        requests = proxy.counts.requests - before[0]
        throttled = proxy.counts.throttled - before[1]
        puts = proxy.counts.by_method.get("PUT", 0) - puts
        leases = sum(
            what.startswith("PUT ") and "/.toolkit/coord/" in what
            for _, _, what in proxy.log[logged:]
        )
        # Each task's I/O figures reach the scheduler (the dashboard's fine metrics).
        sets = published(first + 1000)
    assert first == start + 8 and sets == first + 1000  # the warm-up's units, then this write's
    print(f"elapsed {elapsed:.2f} s, {requests} requests ({requests / elapsed:.0f}/s)")
    assert report.units == 1000 and report.tasks == 10
    xr.testing.assert_equal(_direct(s3, f"s3://data/{client}-rate.zarr"), ds.compute())
    assert throttled < 0.05 * requests, (throttled, requests)
    # Not a rate (see above): a budget that stopped sending, or a write that hung.
    assert elapsed < 20 * requests / 100, (elapsed, requests)
    # The report counts every PUT the proxy saw but the creation lease's documents
    # (coordination goes around the write's metered stack): the lease is taken,
    # renewed as long as the write lasts (more often on a slow machine) and given
    # back. It counts store calls: a delete_dir is one call, which s3fs sends as a
    # listing and a bulk delete.
    assert report.io.sets == puts - leases, (report.io.sets, puts, leases)
    assert report.io.total <= requests


@pytest.mark.timeout(120)
def test_a_dataset_round_trips(cloud):
    """to_zarr, append, open_zarr and a replacing mode="w": the values read back are the data.

    A sharded variable beside a chunked one: reading a shard's index asks for the
    object's last bytes, which Azure cannot serve as a suffix range (zarr asks for the
    length first there). Replacing deletes the old objects in bulk (S3 DeleteObjects,
    Azure blob batches), and none of them is left.
    """
    url = cloud.url(f"{cloud.name}-round.zarr")
    opts = cloud.storage_options()
    rng = np.random.default_rng(3)
    ds = xr.Dataset(
        {
            "v": (("t", "x"), rng.random((24, 16)).astype("f4")),
            "s": (("t", "x"), rng.integers(0, 1000, (24, 16)).astype("i4")),
        },
        coords={"t": np.arange(24), "x": np.arange(16) * 0.5},
        attrs={"title": "round trip"},
    ).chunk({"t": 8})
    enc = {"v": {"chunks": (4, 16)}, "s": {"chunks": (2, 8), "shards": (8, 16)}}
    report = toolkit.to_zarr(ds, url, encoding=enc, storage_options=opts, progress=False)
    assert report.units > 0
    more = ds.assign_coords(t=ds.t + 24) * 2
    toolkit.append(more, url, "t", storage_options=opts, progress=False)
    both = xr.concat([ds, more], "t").compute()
    xr.testing.assert_identical(toolkit.open_zarr(url, storage_options=opts).load(), both)
    xr.testing.assert_equal(_direct(cloud.server, url), both)
    # A partial read through the shards (one row of one shard)
    back = toolkit.open_zarr(url, storage_options=opts)
    np.testing.assert_array_equal(back.s.isel(t=13).values, both.s.isel(t=13).values)

    small = _rows(6, width=4).chunk({"t": 3})
    toolkit.to_zarr(small, url, mode="w", storage_options=opts, progress=False)
    xr.testing.assert_equal(_direct(cloud.server, url), small.compute())
    from toolkit.io.clients import list_keys
    from toolkit.io.stores import resolve_store, unwrap

    keys = sync(list_keys(unwrap(resolve_store(url, storage_options=opts)), ""))
    assert keys and not [k for k in keys if k.startswith(("s/", "x/"))], keys


@pytest.mark.timeout(120)
def test_a_limit_the_budget_cannot_meet_fails_with_an_exact_record(cloud):
    """1 request/s after a small burst, 2 s of retries: a clear error, an exact record."""
    url = cloud.url(f"{cloud.name}-starved.zarr")
    old = _rows(40, width=16)
    _seed(cloud.server, url, old, (1, 16))
    new = _rows(40, width=16, seed=1).chunk({"t": 10})
    policy = toolkit.Throttle(max_retries=100, max_retry_seconds=2.0, adaptive=False)
    with cloud.proxy(rate=1, burst=20) as proxy:
        opts = cloud.storage_options(proxy.url)
        with pytest.raises(WriteError) as err:
            toolkit.to_zarr(
                new,
                url,
                mode="r+",
                region={"t": slice(0, 40)},
                storage_options=opts,
                throttle=policy,
                progress=False,
            )
        arrived = proxy.counts.requests
        time.sleep(1.5)
        # Nothing of the failed write is still running once the error is raised.
        assert proxy.counts.requests == arrived
    e = err.value
    assert "StoreThrottledError" in str(e) and "slow down" in str(e)
    assert isinstance(e.__cause__, StoreThrottledError) or "Throttle(" in str(e)
    rec = e.record["v"]
    missing = {tuple(u) for u in rec["missing"]}
    assert missing and rec["written"] == 40 - len(missing)
    back = _direct(cloud.server, url)
    for i in range(40):
        expect = old if (i, 0) in missing else new.compute()
        np.testing.assert_array_equal(back.v.values[i], expect.v.values[i])
    # The store says it is incomplete.
    with pytest.raises(IncompleteStoreError):
        toolkit.open_zarr(url, storage_options=cloud.storage_options())
    assert pickle.loads(pickle.dumps(e)).record == e.record


@pytest.mark.timeout(120)
def test_reads_are_one_get_per_chunk_and_survive_a_throttled_store(cloud):
    url = cloud.url(f"{cloud.name}-reads.zarr")
    ds = _rows(300, width=32)
    _seed(cloud.server, url, ds, (1, 32))
    # 300 chunks through a proxy that allows 30 requests/s (answering S3's 503 SlowDown or
    # Azure's 503 ServerBusy above it), with toolkit's defaults for the URL (thousands of
    # reads/s: far too many, so adaptation and retries must do the work).
    with cloud.proxy(latency=0.005, rate=30) as proxy:
        opts = cloud.storage_options(proxy.url)
        back = toolkit.open_zarr(url, storage_options=opts)
        before = dict(proxy.counts.by_method)
        values = back.v.values
        after = collections.Counter(proxy.counts.by_method) - collections.Counter(before)
    np.testing.assert_array_equal(values, ds.v.values)
    assert after.get("HEAD", 0) == 0  # one request per chunk: no HEAD before GET
    assert after["GET"] >= 300 and proxy.counts.throttled > 0
    io = toolkit.io_metrics(url, storage_options=opts)
    assert io.throttled > 0 and io.retries >= io.throttled and io.failed == 0


def _secret_options(cloud, endpoint_url: str | None = None) -> tuple[dict, list[str]]:
    """Options with credentials of the test's own, and the secrets among them.

    S3 (moto) takes any key. Azurite checks signatures with its one account key, so
    that is the secret there, given by adlfs's names (not in a connection string).
    """
    if cloud.server.scheme == "az":
        az = cloud.server
        opts = {
            "account_name": az.account,
            "account_key": az.account_key,
            "endpoint_url": az.blob_endpoint(endpoint_url),
        }
        return opts, [az.account_key]
    key, secret = "AKIA-TOOLKIT-KEY-7q1", "SECRET-TOOLKIT-VALUE-9x2"
    return {**cloud.storage_options(endpoint_url), "key": key, "secret": secret}, [key, secret]


@pytest.mark.timeout(120)
def test_secrets_stay_secret(cloud, tmp_path):
    """Credentials appear in no key, name, repr, report, record or error message."""
    url = cloud.url(f"{cloud.name}-secret.zarr")
    ds = _rows(20).chunk({"t": 5})
    texts: list[str] = []
    # The burst covers planning, the creation lease and the metadata round, not the data.
    with cloud.proxy(rate=1, burst=24) as proxy:
        opts, secrets = _secret_options(cloud, proxy.url)
        tight = toolkit.Throttle(max_retries=1, max_retry_seconds=0.5, adaptive=False)
        plan = toolkit.plan_write(
            ds, url, storage_options=opts, encoding={"v": {"chunks": (1, 64)}}, throttle=tight
        )
        texts += [repr(plan), plan._repr_html_()]
        delayed = toolkit.execute(plan, compute=False, progress=False)
        texts += [str(k) for k in delayed.__dask_graph__()]
        texts += [str(k) for k in delayed.__dask_graph__().layers]
        with pytest.raises(WriteError) as err:
            delayed.compute()
        texts += [str(err.value), repr(err.value.record)]
    opts, _ = _secret_options(cloud)  # straight to the server
    back = toolkit.open_zarr(url, storage_options=opts, incomplete="ignore")
    texts += [repr(back), str(back.v.data.name), *map(str, back.__dask_graph__())]
    report = toolkit.to_zarr(ds, str(tmp_path / "x.zarr"), progress=False)
    texts += [repr(report), report._repr_html_()]
    from toolkit.coordination.records import read_records
    from toolkit.io.stores import resolve_store

    records = read_records(resolve_store(url, storage_options=opts))
    texts += [repr(records)]
    assert records and texts
    for t in texts:
        assert not [s for s in secrets if s in t], t


# --------------------------------------------------------------------------- Azure's own


@pytest.mark.timeout(120)
def test_azure_reads_the_environment_as_adlfs_does(azurite, monkeypatch):
    """AZURE_STORAGE_CONNECTION_STRING, or the account's name and key: obstore read the name
    itself and built a store whose description panicked ('Account name should always exist')."""
    ds = _rows(8, width=4).chunk({"t": 4})
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string())
    toolkit.to_zarr(ds, "az://data/env.zarr", progress=False)
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", azurite.account)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", azurite.account_key)
    back = toolkit.open_zarr(
        "az://data/env.zarr", storage_options={"endpoint_url": azurite.blob_endpoint()}
    )
    xr.testing.assert_equal(back.load(), ds.compute())


def test_azure_takes_adlfs_option_names(azurite):
    """adlfs's names reach obstore: a connection string (the fixture's), the account and its
    key with an endpoint, a SAS token, anonymous reads of a public container; az://,
    abfs:// and abfss:// URLs, with the account in the URL or not. Secrets stay out of
    every description, and the URL's defaults are Azure's."""
    from toolkit.io.clients import secrets
    from toolkit.io.stores import describe_store, redact, resolve_store, unwrap

    ds = _rows(12, width=4).chunk({"t": 4})
    expected = ds.compute()
    toolkit.to_zarr(
        ds, "az://data/names.zarr", storage_options=azurite.storage_options(), progress=False
    )
    keyed = {
        "account_name": azurite.account,
        "account_key": azurite.account_key,
        "endpoint_url": azurite.blob_endpoint(),
    }
    sas = azurite.sas_token(permissions="rl")
    signed = {
        "account_name": azurite.account,
        "sas_token": f"?{sas}",
        "endpoint_url": azurite.blob_endpoint(),
    }
    for url, opts in [
        ("az://data/names.zarr", keyed),
        ("abfs://data/names.zarr", azurite.storage_options()),
        ("abfss://data/names.zarr", keyed),
        ("abfs://data@devstoreaccount1.dfs.core.windows.net/names.zarr", keyed),
        ("az://data/names.zarr", signed),
    ]:
        back = toolkit.open_zarr(url, storage_options=opts)
        xr.testing.assert_equal(back.load(), expected)
        store = unwrap(resolve_store(url, storage_options=opts))
        assert describe_store(store) == "az://data/names.zarr"
        found = secrets(store)
        secret = (
            azurite.account_key if "account_key" in opts or "connection_string" in opts else sas
        )
        assert secret in found, (url, found)
        assert redact(f"failed with {secret} in it", store) == "failed with *** in it"
        assert secret not in repr(back) and secret not in describe_store(store)
        assert toolkit.Throttle.for_url(url) == toolkit.Throttle.for_url("az://x")

    azurite.create_container("public", public=True)
    toolkit.to_zarr(
        ds, "az://public/open.zarr", storage_options=azurite.storage_options(), progress=False
    )
    anon = {"account_name": azurite.account, "anon": True, "endpoint_url": azurite.blob_endpoint()}
    xr.testing.assert_equal(
        toolkit.open_zarr("az://public/open.zarr", storage_options=anon).load(), expected
    )
    assert secrets(unwrap(resolve_store("az://public/open.zarr", storage_options=anon))) == []

    other = {**keyed, "account_name": "someoneelse"}
    with pytest.raises(ValueError, match="names the storage account"):
        resolve_store("abfs://data@devstoreaccount1.dfs.core.windows.net/x", storage_options=other)
    with pytest.raises(ValueError, match="credential= is adlfs's"):
        resolve_store("az://data/x", storage_options={**keyed, "credential": object()})


@pytest.mark.timeout(120)
def test_an_azure_prefix_delete_finishes_when_a_key_goes_meanwhile(azurite):
    """A key deleted by someone else between the listing and the blob batch: all still go.

    Azure's blob batch answers 404 for that key (S3's DeleteObjects does not), and obstore
    raises it and stops sending the batches after it: how many were sent by then is a
    matter of timing (88 of 600 keys stayed, run straight against Azurite). So the
    delete lists again and deletes what is left. Here the proxy holds each batch half a
    second, and a key is deleted straight on the server meanwhile.
    """
    import asyncio

    import obstore

    from toolkit.io.clients import list_keys
    from toolkit.io.stores import resolve_store, unwrap

    direct = unwrap(resolve_store("az://data/gone", storage_options=azurite.storage_options()))
    keys = [f"p/k{i:04d}" for i in range(600)]  # three batches of at most 256

    async def put_all() -> None:
        await asyncio.gather(*(obstore.put_async(direct.store, k, b"x") for k in keys))

    sync(put_all())
    assert len(sync(list_keys(direct, "p/"))) == 600
    failed: list[BaseException] = []
    with FaultProxy(
        azurite.endpoint_url, dialect="azure", only=r"comp=batch", stall_prob=1.0, stall=0.5
    ) as proxy:
        opts = azurite.storage_options(proxy.url)
        store = unwrap(resolve_store("az://data/gone", storage_options=opts))

        def delete() -> None:
            try:
                sync(store.delete_dir("p"))
            except BaseException as e:
                failed.append(e)

        worker = threading.Thread(target=delete, daemon=True)
        worker.start()
        deadline = time.monotonic() + 30
        while proxy.counts.stalled == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.counts.stalled, "no blob batch reached the proxy"
        obstore.delete(direct.store, "p/k0003")  # another job's, meanwhile
        worker.join(60)
        log = [
            what.split(" ", 1)[0] + (" list" if "comp=list" in what else "")
            for _, _, what in proxy.log
        ]
    assert not worker.is_alive() and not failed, failed
    assert sync(list_keys(direct, "p/")) == []
    # The 404 was seen (the batch holding the key was answered), and the prefix listed again.
    assert "GET list" in log[log.index("POST") :], log
