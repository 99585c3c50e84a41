"""The round-trip ledger: the critical path derived from request intervals, and the
proxy's recording of every request."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolkit.testing.ledger import Ledger, Request, critical_path, key_kind, summarize, waves


def _req(start: float, end: float, key: str = "x.zarr/k", method: str = "GET") -> Request:
    return Request(method, f"/data/{key}", "", start, end, 200)


def _is_chain(reqs: list[Request]) -> bool:
    return all(a.end < b.start for a, b in itertools.pairwise(reqs))


def _longest_chain_brute(reqs: list[Request]) -> int:
    """Every subset, kept if its requests ordered by start follow each other."""
    best = 0
    for mask in range(1 << len(reqs)):
        sub = sorted((r for i, r in enumerate(reqs) if mask >> i & 1), key=lambda r: r.start)
        if len(sub) > best and _is_chain(sub):
            best = len(sub)
    return best


# Small integer grids make ties (one request ending exactly when another starts, equal
# starts, zero-length requests) common: a tie is no succession.
_interval = st.tuples(st.integers(0, 12), st.integers(0, 4)).map(lambda t: (t[0], t[0] + t[1]))
_intervals = st.lists(_interval, min_size=0, max_size=10)


@given(_intervals)
def test_critical_path_is_the_longest_chain(intervals):
    reqs = [_req(a, b, f"x.zarr/k{i}") for i, (a, b) in enumerate(intervals)]
    chain = critical_path(reqs)
    assert len(chain) == _longest_chain_brute(reqs)
    assert _is_chain(chain)
    assert all(any(c is r for r in reqs) for c in chain)  # the requests themselves
    assert max(waves(reqs), default=0) == len(chain)


@given(_intervals)
def test_waves_partition_the_requests_into_moments(intervals):
    """Each wave was in flight at one moment; each request follows one of the wave before."""
    reqs = [_req(a, b) for a, b in intervals]
    level = waves(reqs)
    for k in set(level):
        wave = [r for r, lv in zip(reqs, level, strict=True) if lv == k]
        assert max(r.start for r in wave) <= min(r.end for r in wave)  # a common moment
    for r, lv in zip(reqs, level, strict=True):
        before = [q for q, lq in zip(reqs, level, strict=True) if q.end < r.start]
        assert lv == 1 + max(
            (lq for q, lq in zip(reqs, level, strict=True) if q in before), default=0
        )
    widths = summarize(reqs).widths
    assert sum(widths) == len(reqs) and len(widths) == max(level, default=0)


def test_critical_path_picks_the_requests_waited_for():
    # Two reads at once, then a write after both: the chain runs through the later read.
    reqs = [_req(0, 1, "x.zarr/a"), _req(0, 3, "x.zarr/b"), _req(4, 5, "x.zarr/c", "PUT")]
    assert [r.key for r in critical_path(reqs)] == ["x.zarr/b", "x.zarr/c"]
    s = summarize(reqs, root="x.zarr")
    assert (s.round_trips, s.widths, s.requests) == (2, [2, 1], 3)
    assert s.lines() == ["  1. GET b  [wave of 2: 2 other]", "  2. PUT c"]
    assert summarize([]).round_trips == 0 and critical_path([]) == []


@pytest.mark.parametrize(
    ("method", "key", "query", "kind"),
    [
        ("GET", "x.zarr/zarr.json", "", "metadata"),
        ("GET", "x.zarr/v/zarr.json", "", "metadata"),
        ("GET", "x.zarr/.zmetadata", "", "metadata"),
        ("GET", "x.zarr/.toolkit/zarr.json", "", "metadata"),  # zarr probing a member
        ("PUT", "x.zarr/v/c/0/0/0", "", "chunk"),
        ("GET", "x.zarr/time/c/1", "", "chunk"),
        ("GET", "x.zarr/v/0.0", "", "chunk"),
        ("PUT", "x.zarr/.toolkit/coord/leases/create.json", "", "claim"),
        ("PUT", "x.zarr/.toolkit/coord/leases/jobs/append-1.json", "", "lease"),
        ("GET", "x.zarr/.toolkit/coord/leases/partitions/day/2024.json", "", "lease"),
        ("PUT", "x.zarr/.toolkit/coord/log/000000000001.json", "", "commit log"),
        ("GET", "x.zarr/.toolkit/coord/log/HEAD.json", "", "commit log"),
        ("PUT", "x.zarr/.toolkit/coord/pending/r.json", "", "log request"),
        ("PUT", "x.zarr/.toolkit/coord/jobs/append-1.json", "", "coordination"),
        ("PUT", "x.zarr/.toolkit/writes/w.json", "", "record"),
        ("HEAD", "x.zarr/.toolkit/writes", "", "record"),
        ("PUT", "x.zarr/.toolkit/manifest/w.json", "", "manifest"),
        ("GET", "x.zarr/.toolkit/manifest.json", "", "manifest"),
        ("PUT", "x.zarr/.toolkit/resume/id/begin.json", "", "resume"),
        ("PUT", ".toolkit/writes/w.json", "", "record"),  # a store at the bucket's root
        ("GET", "", "list-type=2&prefix=x.zarr/", "listing"),
        ("POST", "", "delete", "bulk delete"),
        ("HEAD", "", "", "bucket"),
        ("GET", "x.zarr/notes.txt", "", "other"),
    ],
)
def test_key_kinds(method, key, query, kind):
    assert key_kind(method, key, query) == kind


def test_labels():
    listing = Request("GET", "/data", "list-type=2&prefix=x.zarr/.toolkit/", 0, 1, 200)
    assert listing.label("x.zarr") == "LIST .toolkit/"
    root = Request("GET", "/data", "list-type=2&prefix=x.zarr/", 0, 1, 200)
    assert root.label("x.zarr") == "LIST /"
    missing = Request("GET", "/data/x.zarr/time/c/0", "", 0, 1, 404)
    assert missing.label("x.zarr") == "GET time/c/0 (404)" and missing.label() == (
        "GET x.zarr/time/c/0 (404)"
    )
    assert Request("POST", "/data", "delete", 0, 1, 200).label() == "POST (bulk delete)"


def test_ledger_is_thread_safe_and_stops_when_closed():
    ledger = Ledger(opened=0.0)

    def add(k: int) -> None:
        for i in range(200):
            ledger.add(_req(k * 1000 + i, k * 1000 + i + 0.5))

    threads = [threading.Thread(target=add, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ledger) == 1600
    # Each thread's requests follow each other; the threads' spans follow each other too.
    assert ledger.round_trips == 1600
    ledger.close()
    ledger.add(_req(0, 1))
    assert len(ledger) == 1600
    # A request that began before the ledger opened is not its own (its answer may
    # be recorded a moment after a ledger opened since).
    late = Ledger(opened=10.0)
    late.add(_req(9.0, 10.5))
    late.add(_req(10.0, 10.5))
    assert [r.start for r in late.requests] == [10.0]


# The proxy recording real requests (moto's server, through botocore).


def test_proxy_records_each_request(s3):
    from toolkit.testing import FaultProxy

    with FaultProxy(s3.endpoint_url, latency=0.02) as proxy:
        client = s3.client(proxy.url)
        client.put_object(Bucket="data", Key="ledger/before", Body=b"0")  # not recorded
        with proxy.ledger() as ledger:
            client.put_object(Bucket="data", Key="ledger/a b", Body=b"12345")
            client.get_object(Bucket="data", Key="ledger/a b")["Body"].read()
            with pytest.raises(client.exceptions.NoSuchKey):
                client.get_object(Bucket="data", Key="ledger/missing")
            client.list_objects_v2(Bucket="data", Prefix="ledger/")
        client.get_object(Bucket="data", Key="ledger/before")  # not recorded either
    reqs = ledger.requests
    assert [(r.method, r.key, r.status) for r in reqs] == [
        ("PUT", "ledger/a b", 200),
        ("GET", "ledger/a b", 200),
        ("GET", "ledger/missing", 404),
        ("GET", "", 200),
    ]
    assert reqs[0].sent == 5 and reqs[1].received == 5
    assert reqs[3].params["prefix"] == "ledger/" and reqs[3].kind == "listing"
    assert all(r.end - r.start >= 0.02 for r in reqs)  # the latency is inside each interval
    assert ledger.round_trips == 4
    assert [r.key for r in ledger.critical_path()] == [
        "ledger/a b",
        "ledger/a b",
        "ledger/missing",
        "",
    ]


def test_concurrent_requests_are_one_round_trip(s3):
    """16 requests sent at once, then 16 more: two waves of 16, two serial round trips."""
    from concurrent.futures import ThreadPoolExecutor

    import botocore.session
    from botocore.config import Config

    from toolkit.testing import FaultProxy

    with FaultProxy(s3.endpoint_url, latency=0.2) as proxy:
        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=proxy.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(max_pool_connections=32),
        )
        for i in range(16):
            client.put_object(Bucket="data", Key=f"waves/{i}", Body=b"x")
        gate = threading.Barrier(16)

        def get(i: int) -> bytes:
            gate.wait()  # all 16 at once
            return client.get_object(Bucket="data", Key=f"waves/{i}")["Body"].read()

        with proxy.ledger() as ledger, ThreadPoolExecutor(16) as pool:
            assert set(pool.map(get, range(16))) == {b"x"}
            assert set(pool.map(get, range(16))) == {b"x"}
    s = ledger.summary(root="waves")
    assert (s.requests, s.round_trips, s.widths) == (32, 2, [16, 16]), str(s)


def test_overlapping_ledgers_and_faults(s3):
    """Two ledgers open at once each get their span; a reset request is recorded with status 0."""
    import http.client
    from urllib.parse import urlsplit

    from toolkit.testing import FaultProxy

    with FaultProxy(s3.endpoint_url, reset_prob=1.0, only="ledger-reset") as proxy:
        client = s3.client(proxy.url)
        with proxy.ledger() as outer:
            client.put_object(Bucket="data", Key="ledger/one", Body=b"1")
            with proxy.ledger() as inner:
                client.put_object(Bucket="data", Key="ledger/two", Body=b"2")
                where = urlsplit(proxy.url)
                conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=10)
                with pytest.raises(OSError):  # reset by peer, or closed without an answer
                    conn.request("GET", "/data/ledger-reset")
                    conn.getresponse().read()
                conn.close()
    assert [(r.key, r.status) for r in outer.requests] == [
        ("ledger/one", 200),
        ("ledger/two", 200),
        ("ledger-reset", 0),
    ]
    assert outer.requests[1:] == inner.requests
