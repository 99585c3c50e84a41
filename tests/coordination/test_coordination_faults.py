"""Coordination through a faulty network: every write lands whole, or fails saying so.

Every kind of write coordinates through small documents under ``.toolkit/``:
the creation lease, the write's record, the commit log, job and partition
leases. Here the S3 server (or Azurite, for Azure Blob Storage through obstore:
fewer seeds) sits behind a :class:`~toolkit.testing.FaultProxy`
that answers 30% of those requests ``500``, resets 15% of the connections
before the request reaches the server, resets another 15% *after* it landed
(the answer is lost: a conditional create that succeeded looks failed to the
client), and holds 5% for half a second; data requests pass untouched.

Each write must then succeed and leave exactly its values (read back directly
from the server, not through the faults). When the faults outlast the retry
budget, the error must be :class:`~toolkit.errors.StoreUnavailableError` naming
the store, within that budget, never a client's raw exception, and readers must
not be handed half a write.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
import xarray as xr

import toolkit
from toolkit.errors import IncompleteStoreError, StoreUnavailableError
from toolkit.testing import FaultProxy

pytest.importorskip("moto")
pytest.importorskip("s3fs")

#: Requests under the reserved prefix: coordination documents and write records.
COORDINATION = r"\.toolkit/"
FAULTS = dict(error_prob=0.3, reset_prob=0.15, lost_prob=0.15, stall_prob=0.05, stall=0.5)
#: Coordination is retried as data requests are (toolkit.io.conditional), by the
#: throttle's policy: a short backoff keeps the test quick, the retry count stays.
QUICK = toolkit.Throttle(backoff_base=0.02, backoff_max=0.25)
SEEDS = range(8)
#: Azure's run of the same: fewer seeds (its many kinds of fault are the same code's).
AZURE_SEEDS = range(2)

NX = 3
DAY = 4  # rows per partition ("day")
ENC = {"v": {"chunks": (4, NX)}, "w": {"chunks": (4,)}, "time": {"chunks": (4,)}}


def rows(value: int, days: list[str], t0: int) -> xr.Dataset:
    """``DAY`` rows per day: v = value + row / 100, w = value * 1000 + row, a ``day`` label."""
    n = DAY * len(days)
    v = value + np.arange(n)[:, None] / 100 + np.zeros((1, NX))
    return xr.Dataset(
        {"v": (("time", "x"), v), "w": (("time",), (value * 1000 + np.arange(n)).astype("i8"))},
        coords={
            "time": np.arange(t0, t0 + n, dtype="i8"),
            "x": np.arange(NX),
            "day": ("time", np.repeat(np.array(days, dtype="U2"), DAY)),
        },
    ).chunk({"time": 4})


def read_direct(s3: Any, url: str, client: str) -> xr.Dataset:
    """The dataset as readers see it, read from the server itself (no proxy)."""
    return toolkit.open_zarr(url, storage_options=s3.storage_options(client=client)).load()


def assert_holds(s3: Any, url: str, client: str, expected: xr.Dataset, step: str) -> None:
    back = read_direct(s3, url, client)
    assert back.sizes == expected.sizes, step
    for name in ("v", "w", "time", "x", "day"):
        np.testing.assert_array_equal(back[name].values, expected[name].values, err_msg=step)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS)
def test_every_write_lands_through_coordination_faults(s3, client, seed):
    """Replace, replace again, append, overwrite partitions, write a region: all exact."""
    _every_write_lands(s3, client, seed)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", AZURE_SEEDS)
def test_every_write_lands_through_coordination_faults_on_azure(azurite, seed):
    """The same on Azure Blob Storage (Azurite) through obstore, behind Azure's own errors."""
    _every_write_lands(azurite, "obstore", seed)


def _every_write_lands(s3: Any, client: str, seed: int) -> None:
    url = f"{s3.scheme}://data/coord-faults-{client}-{seed}.zarr"
    with FaultProxy(
        s3.endpoint_url, only=COORDINATION, seed=seed, dialect=s3.dialect, **FAULTS
    ) as proxy:
        opts = s3.storage_options(proxy.url, client=client)
        kw: dict[str, Any] = {"storage_options": opts, "throttle": QUICK, "progress": False}

        first = rows(1, ["d1", "d2", "d3"], 0)
        toolkit.to_zarr(first, url, mode="w", encoding=ENC, **kw)
        assert_holds(s3, url, client, first, "first mode='w'")

        # The second replaces the first: other values, one more day.
        expected = rows(2, ["d1", "d2", "d3", "d4"], 0)
        toolkit.to_zarr(expected, url, mode="w", encoding=ENC, **kw)
        assert_holds(s3, url, client, expected, "second mode='w'")

        new = rows(3, ["d5", "d6"], 16)
        report = toolkit.append(new, url, "time", **kw)
        assert (report.placement["start"], report.placement["stop"]) == (16, 24)
        expected = xr.concat([expected, new], "time")
        assert_holds(s3, url, client, expected, "append")

        # Days d2 (rows 4-7) and d5 (rows 16-19) again, with other values.
        parts = rows(4, ["d2", "d5"], 0).assign_coords(time=np.r_[4:8, 16:20])
        toolkit.to_zarr(parts, url, mode="overwrite-partitions", partition="day", **kw)
        rest = expected.isel(time=np.r_[0:4, 8:16, 20:24])
        expected = xr.concat([rest, parts], "time").sortby("time")
        assert_holds(s3, url, client, expected, "overwrite-partitions")

        # Rows 6-9 of v: across the boundary of two chunks (both shared with the rest).
        region = xr.Dataset({"v": (("time", "x"), 50 + np.arange(4 * NX).reshape(4, NX) / 8)})
        toolkit.to_zarr(region.chunk({"time": 2}), url, region={"time": slice(6, 10)}, **kw)
        v = expected.v.values.copy()
        v[6:10] = region.v.values
        expected = expected.assign(v=(("time", "x"), v))
        assert_holds(s3, url, client, expected, "region")
    c = proxy.counts
    assert c.errors > 0 and c.resets + c.lost > 0, c  # the faults were there
    faulted = [what for _, _, what in proxy.faults]
    assert faulted and all(".toolkit/" in unquote(w) for w in faulted)


# --------------------------------------------------------------------------- one lost answer


def _lose_first_answer() -> int:
    """A seed whose draws lose the first faulted request's answer and none of the next three.

    With only ``lost_prob`` set, the proxy draws once per faulted request, in order.
    """
    import random

    for seed in range(1000):
        draws = random.Random(seed)
        if draws.random() < 0.5 and all(draws.random() >= 0.5 for _ in range(3)):
            return seed
    raise AssertionError("unreachable")


def _conditional(url: str, opts: dict[str, Any]) -> Any:
    from toolkit.io.conditional import conditional_store
    from toolkit.io.stores import resolve_store

    # Set up as a write sets it up (its client's own retries off): toolkit's retries only.
    return conditional_store(resolve_store(url, storage_options=opts, throttle=QUICK), QUICK)


@pytest.fixture(params=["s3-obstore", "s3-s3fs", "azure"])
def server_client(request: pytest.FixtureRequest) -> tuple[Any, str]:
    """S3 (moto) through each client, and Azure (Azurite) through obstore."""
    name = str(request.param)
    if name != "s3-s3fs":
        pytest.importorskip("obstore")
    server = request.getfixturevalue("azurite" if name == "azure" else "s3")
    return server, "s3fs" if name == "s3-s3fs" else "obstore"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("op", ["create", "replace"])
def test_a_write_whose_answer_was_lost_counts_as_done(server_client, op):
    """The conditional write lands, its answer is lost, and the caller is told it succeeded.

    Not "it existed" / "it changed meanwhile": that is this very call's write, and a lease
    or a log entry misjudged so is taken for another job's (the job waits for itself).
    """
    from zarr.core.sync import sync

    s3, client = server_client
    url = f"{s3.scheme}://data/lost-answer-{client}-{op}"
    key = ".toolkit/coord/doc.json"
    old, new = b'{"v": "old"}', b'{"v": "new"}'
    version = None
    if op == "replace":
        direct = _conditional(url, s3.storage_options(client=client))
        version = sync(direct.create(key, old))
        assert version is not None
    with FaultProxy(
        s3.endpoint_url,
        lost_prob=0.5,
        seed=_lose_first_answer(),
        only=r"/lost-answer-",
        dialect=s3.dialect,
    ) as proxy:
        cas = _conditional(url, s3.storage_options(proxy.url, client=client))
        write = cas.create(key, new) if op == "create" else cas.replace(key, new, version)
        got = sync(write)
    # It landed: S3 answers a PUT 200, Azure 201 Created.
    assert proxy.faults[0][1] in ("lost 200", "lost 201") and proxy.faults[0][2].startswith("PUT ")
    assert proxy.counts.lost == 1
    stored = sync(_conditional(url, s3.storage_options(client=client)).get(key))
    assert stored is not None and stored.data == new
    assert got is not None, (
        f"{op} landed (its answer lost) but was reported as not done; the requests: "
        f"{[(status, what) for _, status, what in proxy.log]}"
    )
    assert got == stored.version


@pytest.mark.timeout(60)
def test_a_log_entry_whose_answer_was_lost_answers_its_job(server_client):
    """The job's own entry lands, the answer to its create is lost: the job gets its answer.

    Whatever the create was told, the entry holding the job's answer is in the log; the
    job must find it there rather than wait for a later entry that never comes.
    """
    from toolkit.coordination.commitlog import Batch, CommitLog
    from toolkit.coordination.leases import Coordinator

    def decide(state: dict[str, Any], requests: list[dict[str, Any]]) -> Batch:
        n = int(state.get("n", 0))
        return Batch({"n": n + len(requests)}, {r["job"]: {"n": n + 1} for r in requests})

    s3, client = server_client
    url = f"{s3.scheme}://data/lost-entry-{client}"
    with FaultProxy(
        s3.endpoint_url,
        lost_prob=0.5,
        seed=_lose_first_answer(),
        only=r"/log/0+1\.json",
        dialect=s3.dialect,
    ) as proxy:
        store = _conditional(url, s3.storage_options(proxy.url, client=client)).store
        log = CommitLog(Coordinator(store, policy=QUICK), decide)
        t0 = time.monotonic()
        try:
            answer = log.submit({"kind": "count"}, job="job-1", timeout=10)
        except toolkit.errors.LeaseTimeoutError as e:
            pytest.fail(
                f"{e} ({time.monotonic() - t0:.0f} s); the requests: "
                f"{[(status, what) for _, status, what in proxy.log]}"
            )
        head = log.head()
    assert proxy.counts.lost == 1 and proxy.faults[0][2].startswith("PUT ")
    assert answer == {"n": 1}
    assert head == (1, {"n": 1, "_recent": head[1]["_recent"]})  # the job's entry, once
    assert len(head[1]["_recent"]) == 1


# --------------------------------------------------------------------------- budget runs out

#: Every coordination request fails; a budget of 2 retries within 2 s.
SMALL = toolkit.Throttle(max_retries=2, max_retry_seconds=2)
#: How long a job may take to give up on that budget: a handful of requests of at most
#: 2 s each (a correct client gives up on the first coordination request it makes).
GIVE_UP_WITHIN = 8.0
ALWAYS = r"\.toolkit/(coord|writes)/"


def _run_bounded(fn: Any, within: float) -> BaseException | None:
    """Run ``fn`` in a thread; its exception, None if it returned; fails past ``within`` s."""
    out: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            out.append(None)
        except BaseException as e:
            out.append(e)

    t0 = time.monotonic()
    runner = threading.Thread(target=run, daemon=True, name="toolkit-test-bounded")
    runner.start()
    runner.join(within)
    if runner.is_alive():
        frame = sys._current_frames().get(runner.ident or 0)
        where = [
            f"{f.filename.rsplit('/toolkit/', 1)[-1]}:{f.lineno} {f.name}"
            for f in traceback.extract_stack(frame)
            if "/toolkit/" in f.filename and "/tests/" not in f.filename
        ]
        pytest.fail(
            f"still retrying {time.monotonic() - t0:.0f} s after the start, with a retry budget "
            f"of {SMALL.max_retries} retries within {SMALL.max_retry_seconds:g} s: the "
            "coordination requests do not follow the throttle's retry policy; the job is at "
            + " < ".join(reversed(where[-6:]))
        )
    return out[0]


def _setup(s3: Any, url: str, client: str) -> xr.Dataset:
    base = rows(1, ["d1", "d2", "d3"], 0)
    toolkit.to_zarr(
        base,
        url,
        mode="w",
        encoding=ENC,
        progress=False,
        storage_options=s3.storage_options(client=client),
    )
    return base


OPERATIONS = {
    "create": lambda url, kw: toolkit.to_zarr(rows(2, ["d1"], 0), url, mode="w", **kw),
    "replace": lambda url, kw: toolkit.to_zarr(rows(2, ["d1"], 0), url, mode="w", **kw),
    "append": lambda url, kw: toolkit.append(rows(3, ["d4"], 12), url, "time", **kw),
    "partitions": lambda url, kw: toolkit.to_zarr(
        rows(4, ["d2"], 4), url, mode="overwrite-partitions", partition="day", **kw
    ),
    "region": lambda url, kw: toolkit.to_zarr(
        xr.Dataset({"v": (("time", "x"), np.full((4, NX), 9.0))}).chunk({"time": 2}),
        url,
        region={"time": slice(6, 10)},
        **kw,
    ),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("op", list(OPERATIONS))
def test_exhausted_retries_raise_store_unavailable(s3, client, op):
    """Every coordination request answered 500: StoreUnavailableError, and no half write shown."""
    url = f"s3://data/coord-down-{client}-{op}.zarr"
    before = None if op == "create" else _setup(s3, url, client)
    with FaultProxy(s3.endpoint_url, only=ALWAYS, error_prob=1.0) as proxy:
        kw = {
            "storage_options": s3.storage_options(proxy.url, client=client),
            "throttle": SMALL,
            "progress": False,
        }
        err = _run_bounded(lambda: OPERATIONS[op](url, kw), GIVE_UP_WITHIN)
    assert err is not None, "the write succeeded although no coordination request could"
    assert isinstance(err, StoreUnavailableError) and isinstance(err, ConnectionError), (
        f"{type(err).__module__}.{type(err).__name__}: {err}"
    )
    assert url in str(err), str(err)  # it names the store
    assert "testing" not in str(err)  # and no secret
    assert proxy.counts.errors > 0
    _readers_see_nothing_new(s3, url, client, before)


def _readers_see_nothing_new(s3: Any, url: str, client: str, before: xr.Dataset | None) -> None:
    """Readers are refused, find no dataset, or see exactly what was there before."""
    try:
        back = read_direct(s3, url, client)
    except (IncompleteStoreError, FileNotFoundError):
        return
    assert before is not None, f"a failed creation left a readable dataset: {back}"
    assert back.sizes == before.sizes
    for name in ("v", "w", "time", "day"):
        np.testing.assert_array_equal(back[name].values, before[name].values)


@pytest.mark.timeout(90)
def test_a_replacement_cut_short_by_its_record_is_refused(s3, client):
    """mode='w' over a dataset, its record never writable: the old data is gone or refused.

    The creation lease is taken and the group cleared; then the write's record cannot be
    put. Readers must not get an empty or partial dataset as if it were whole.
    """
    url = f"s3://data/coord-records-down-{client}.zarr"
    before = _setup(s3, url, client)
    with FaultProxy(s3.endpoint_url, only=r"\.toolkit/writes/", error_prob=1.0) as proxy:
        kw = {
            "storage_options": s3.storage_options(proxy.url, client=client),
            "throttle": SMALL,
            "progress": False,
        }
        err = _run_bounded(lambda: OPERATIONS["replace"](url, kw), GIVE_UP_WITHIN)
    assert isinstance(err, StoreUnavailableError), f"{type(err).__name__}: {err}"
    assert url in str(err)
    assert proxy.counts.errors > 0
    _readers_see_nothing_new(s3, url, client, before)
