"""The shipped test servers: a real S3 server, Azurite and the fault-injecting proxy, and
toolkit writing through them."""

from __future__ import annotations

import time

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


# --------------------------------------------------------------------------- only, lost, stall


def _plain_client(endpoint_url: str):
    """A botocore client without retries of its own: one request per call, as sent."""
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore.config.Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


def _exists(s3, key: str) -> bytes | None:
    """The object's bytes, read directly from the server (no proxy), or None."""
    from botocore.exceptions import ClientError

    try:
        return s3.client().get_object(Bucket="data", Key=key)["Body"].read()
    except ClientError as e:
        assert e.response["Error"]["Code"] == "NoSuchKey", e
        return None


def test_proxy_defaults_inject_nothing(s3):
    with FaultProxy(s3.endpoint_url) as proxy:
        client = _plain_client(proxy.url)
        client.put_object(Bucket="data", Key="defaults/.toolkit/a", Body=b"1")
        client.get_object(Bucket="data", Key="defaults/.toolkit/a")["Body"].read()
    c = proxy.counts
    assert (c.requests, c.forwarded) == (2, 2)
    assert c.resets == c.errors == c.throttled == c.lost == c.stalled == 0
    assert proxy.faults == [] and [s for _, s, _ in proxy.log] == [200, 200]


def test_proxy_faults_only_matching_requests(s3):
    """``only`` is searched in the URL-decoded path and query: keys and list prefixes."""
    from botocore.exceptions import ClientError

    with FaultProxy(s3.endpoint_url, error_prob=1.0, only=r"\.toolkit/") as proxy:
        client = _plain_client(proxy.url)
        client.put_object(Bucket="data", Key="only/data/x", Body=b"data")  # passes
        with pytest.raises(ClientError, match="InternalError"):
            client.put_object(Bucket="data", Key="only/.toolkit/coord/x.json", Body=b"{}")
        # a listing of the coordination prefix: the prefix is in the (encoded) query
        with pytest.raises(ClientError, match="InternalError"):
            client.list_objects_v2(Bucket="data", Prefix="only/.toolkit/")
        listed = client.list_objects_v2(Bucket="data", Prefix="only/")
    assert [o["Key"] for o in listed["Contents"]] == ["only/data/x"]
    assert _exists(s3, "only/data/x") == b"data"
    assert _exists(s3, "only/.toolkit/coord/x.json") is None  # a 500 never reaches the server
    c = proxy.counts
    assert (c.requests, c.forwarded, c.errors) == (4, 2, 2)
    assert [k for _, k, _ in proxy.faults] == ["error", "error"]
    assert [s for _, s, _ in proxy.log] == [200, 500, 500, 200]

    # Matched on the decoded target: the space travels as %20.
    with FaultProxy(s3.endpoint_url, reset_prob=1.0, only=r"/a b\.json$") as proxy:
        client = _plain_client(proxy.url)
        client.put_object(Bucket="data", Key="only/a c.json", Body=b"{}")
        with pytest.raises(Exception) as caught:
            client.put_object(Bucket="data", Key="only/a b.json", Body=b"{}")
    assert not isinstance(caught.value, ClientError)  # no answer at all: a reset
    assert (proxy.counts.resets, proxy.counts.forwarded) == (1, 1)
    assert proxy.faults[0][1:] == ("reset", "PUT /data/only/a%20b.json")


def test_proxy_throttles_only_matching_requests(s3):
    with FaultProxy(s3.endpoint_url, rate=0.01, burst=1, only=r"\.toolkit/") as proxy:
        client = _plain_client(proxy.url)
        for i in range(5):
            client.put_object(Bucket="data", Key=f"only-rate/data/{i}", Body=b"x")
        client.put_object(Bucket="data", Key="only-rate/.toolkit/a", Body=b"x")  # the token
        with pytest.raises(Exception, match="SlowDown"):
            client.put_object(Bucket="data", Key="only-rate/.toolkit/b", Body=b"x")
    assert (proxy.counts.forwarded, proxy.counts.throttled) == (6, 1)


def test_proxy_loses_answers_of_requests_that_landed(s3):
    """``lost_prob``: the server does the request, the client gets a reset instead of its answer."""
    from botocore.exceptions import ClientError

    with FaultProxy(s3.endpoint_url, lost_prob=1.0, only=r"/lost/") as proxy:
        client = _plain_client(proxy.url)
        with pytest.raises(Exception) as caught:
            # a conditional create, as toolkit's coordination sends them
            client.put_object(Bucket="data", Key="lost/doc.json", Body=b'{"v": 1}', IfNoneMatch="*")
        assert not isinstance(caught.value, ClientError)  # no answer: the connection dropped
        with pytest.raises(Exception) as caught:
            client.get_object(Bucket="data", Key="lost/doc.json")["Body"].read()
        assert not isinstance(caught.value, ClientError)
        client.put_object(Bucket="data", Key="kept/doc.json", Body=b"x")  # not matched
    # It landed: the object is on the server, and creating it again is refused.
    assert _exists(s3, "lost/doc.json") == b'{"v": 1}'
    with pytest.raises(ClientError, match="PreconditionFailed"):
        s3.client().put_object(Bucket="data", Key="lost/doc.json", Body=b"{}", IfNoneMatch="*")
    c = proxy.counts
    assert (c.requests, c.forwarded, c.lost, c.resets, c.errors) == (3, 3, 2, 0, 0)
    assert [k for _, k, _ in proxy.faults] == ["lost 200", "lost 200"]
    assert [s for _, s, _ in proxy.log] == [0, 0, 200]  # no answer reached the client


def test_proxy_stalls_requests_then_forwards_them(s3):
    with FaultProxy(s3.endpoint_url, stall_prob=1.0, stall=0.6, only=r"/stalled/") as proxy:
        client = _plain_client(proxy.url)
        t0 = time.monotonic()
        client.put_object(Bucket="data", Key="stalled/x", Body=b"late")
        held = time.monotonic() - t0
        t0 = time.monotonic()
        client.put_object(Bucket="data", Key="free/x", Body=b"now")
        free = time.monotonic() - t0
    assert held >= 0.6 and free < 0.5, (held, free)
    assert _exists(s3, "stalled/x") == b"late"
    c = proxy.counts
    assert (c.requests, c.forwarded, c.stalled) == (2, 2, 1)
    assert [k for _, k, _ in proxy.faults] == ["stalled"]
    assert [s for _, s, _ in proxy.log] == [200, 200]


def test_closing_the_proxy_hangs_up_on_stalled_requests(s3):
    """A stall outliving the proxy ends with it: nothing is forwarded after the close."""
    import threading

    outcome: list[object] = []
    with FaultProxy(s3.endpoint_url, stall_prob=1.0, stall=60) as proxy:
        client = _plain_client(proxy.url)

        def put() -> None:
            try:
                outcome.append(client.put_object(Bucket="data", Key="hung/x", Body=b"x"))
            except Exception as e:
                outcome.append(e)

        sender = threading.Thread(target=put)
        sender.start()
        deadline = time.monotonic() + 10
        while not proxy.counts.stalled and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
    sender.join(10)
    assert time.monotonic() - t0 < 5 and not sender.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Exception)
    assert proxy.counts.stalled == 1 and proxy.counts.forwarded == 0
    assert _exists(s3, "hung/x") is None


@pytest.mark.timeout(120)
def test_the_server_decides_concurrent_conditional_puts_atomically(s3):
    """Eight creates-if-absent of one key at once: exactly one wins, as on S3, every time.

    moto checks the precondition and stores the object in two steps; S3Server makes
    the pair atomic (two "w-" creators once both won a creation claim on it).
    """
    import threading

    import obstore
    from obstore.store import S3Store

    opts = s3.storage_options()
    store = S3Store(
        "data",
        endpoint=s3.endpoint_url,
        access_key_id=opts["key"],
        secret_access_key=opts["secret"],
        region="us-east-1",
        client_options={"allow_http": True},
    )

    def create(i: int, key: str, start: threading.Barrier, wins: list[int]) -> None:
        start.wait(timeout=30)
        try:
            obstore.put(store, key, b"%d" % i, mode="create")
        except Exception:  # AlreadyExistsError (412): another one won
            return
        wins.append(i)

    for race in range(100):
        wins: list[int] = []
        start = threading.Barrier(8)
        threads = [
            threading.Thread(target=create, args=(i, f"races/{race}", start, wins))
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(wins) == 1, (race, wins)


@pytest.mark.timeout(120)
def test_azurite_decides_concurrent_conditional_puts_atomically(azurite):
    """Eight creates-if-absent of one blob at once, then eight replaces of one ETag: exactly
    one wins each race (Azurite needs no help here, unlike moto)."""
    import threading

    import obstore

    from toolkit.io.stores import resolve_store, unwrap

    store = unwrap(resolve_store("az://data", storage_options=azurite.storage_options())).store

    def race(key: str, mode: object) -> list[int]:
        wins: list[int] = []
        start = threading.Barrier(8)

        def put(i: int) -> None:
            start.wait(timeout=30)
            try:
                obstore.put(store, key, b"%d" % i, mode=mode)
            except Exception:  # 409 BlobAlreadyExists / 412 ConditionNotMet: another won
                return
            wins.append(i)

        threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        return wins

    for n in range(30):
        assert len(race(f"races/{n}", "create")) == 1, n
    obstore.put(store, "races/cas", b"start")
    for n in range(30):
        e_tag = obstore.head(store, "races/cas")["e_tag"]
        assert len(race("races/cas", {"e_tag": e_tag})) == 1, n


def _gone(group: int, directory: str, within: float = 20.0) -> bool:
    """Whether no process of ``group`` and no ``directory`` are left, waiting ``within`` s."""
    import os

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            if not os.path.exists(directory):
                return True
        time.sleep(0.1)
    return False


@pytest.mark.timeout(120)
def test_azurite_leaves_nothing_behind_even_when_its_parent_dies():
    """Closed, or its parent killed: no process of Azurite's group, no temporary directory."""
    import signal
    import subprocess
    import sys

    from toolkit.testing import AzuriteServer
    from toolkit.testing.servers import find_azurite

    if find_azurite() is None:
        pytest.skip("needs an extra: Azurite (npm install azurite, or ./dev test)")
    with AzuriteServer() as az:
        assert az._proc is not None and az._dir is not None
        group, directory = az._proc.pid, az._dir
        az.create_container("closing")
    assert _gone(group, directory)

    starter = (
        "import sys, time\n"
        "from toolkit.testing import AzuriteServer\n"
        "az = AzuriteServer().__enter__()\n"
        "print(az._proc.pid, az._dir, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        group_text, directory = parent.stdout.readline().split()
    finally:
        parent.send_signal(signal.SIGKILL)  # no context exit: the keeper must notice
        parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()
    assert _gone(int(group_text), directory)
