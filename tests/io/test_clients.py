"""The object-store clients (toolkit.io.clients) against moto's real S3 server."""

from __future__ import annotations

import concurrent.futures as cf
import pickle
from typing import Any

import numpy as np
import pytest
import xarray as xr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import FsspecStore, ObjectStore
from zarr.testing.store import StoreTests

import toolkit
from toolkit import runtime
from toolkit.io import clients
from toolkit.io.classify import classify_error, http_status
from toolkit.io.stores import describe_store, redact, resolve_store, unwrap
from toolkit.io.throttle import Throttle
from toolkit.io.wrappers import RetryStore, wrap_store
from toolkit.testing import FaultProxy

obstore = pytest.importorskip("obstore")
from obstore.store import LocalStore as ObsLocalStore  # noqa: E402
from obstore.store import S3Store  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _bucket(s3: Any, name: str) -> str:
    import time

    bucket = f"{name}-{time.time_ns() % 10**9}"
    s3.create_bucket(bucket)
    return bucket


# -- choosing and configuring a client ------------------------------------------------


def test_obstore_is_the_default_for_s3_and_takes_fsspec_names(s3):
    opts = s3.storage_options(client_kwargs={"region_name": "eu-west-3"}, token="tok-123456")
    store = resolve_store("s3://data/a/b.zarr", storage_options=opts)
    assert isinstance(store, clients.BulkDeleteObjectStore)
    inner = store.store
    assert inner.config["access_key_id"] == "testing"
    assert inner.config["secret_access_key"] == "testing"
    assert inner.config["session_token"] == "tok-123456"
    assert inner.config["region"] == "eu-west-3"
    assert inner.config["endpoint"] == s3.endpoint_url
    assert inner.client_options["allow_http"] in (True, "true")
    assert inner.prefix == "a/b.zarr"
    assert describe_store(store) == "s3://data/a/b.zarr"


def test_a_throttled_store_has_no_client_retries(s3):
    policy = Throttle.for_url("s3://data/x")
    assert policy is not None
    store = resolve_store("s3://data/x", storage_options=s3.storage_options(), throttle=policy)
    assert store.store.retry_config["max_retries"] == 0
    # Pickled to a worker, it keeps that.
    again = pickle.loads(pickle.dumps(store))
    assert isinstance(again, clients.BulkDeleteObjectStore)
    assert again.store.retry_config["max_retries"] == 0
    plain = resolve_store("s3://data/x", storage_options=s3.storage_options())
    assert plain.store.retry_config is None


@pytest.mark.parametrize("policy", [None, Throttle()], ids=["unthrottled", "throttled"])
def test_both_clients_bound_connects_and_reads_and_take_fsspecs_names_for_it(s3, policy):
    """10 s to connect and 20 s per read by default; ``config_kwargs`` sets both clients.

    obstore's ``timeout`` bounds a whole request (30 s by default): raised when
    the timeouts asked for add up to more, so that they bound a stall.
    """

    def obstore_options(**opts: Any) -> dict[str, str]:
        store = resolve_store(
            "s3://data/x", storage_options=s3.storage_options(**opts), throttle=policy
        )
        return dict(store.store.client_options)

    def s3fs_config(**opts: Any) -> dict[str, Any]:
        store = resolve_store(
            "s3://data/x",
            storage_options=s3.storage_options(client="s3fs", **opts),
            throttle=policy,
        )
        again = pickle.loads(pickle.dumps(store))  # as a worker gets it
        assert again.fs.config_kwargs == store.fs.config_kwargs
        return dict(store.fs.config_kwargs)

    default = obstore_options()
    assert (default["connect_timeout"], default["read_timeout"]) == ("10s", "20s")
    assert "timeout" not in default  # object_store's own 30 s
    given = obstore_options(config_kwargs={"connect_timeout": 3, "read_timeout": 45})
    assert (given["connect_timeout"], given["read_timeout"]) == ("3s", "45s")
    assert given["timeout"] == "48s"
    native = obstore_options(client_options={"read_timeout": "7s", "timeout": "2m"})
    assert (native["read_timeout"], native["timeout"]) == ("7s", "2m")  # obstore's names win
    config = s3fs_config()
    assert (config["connect_timeout"], config["read_timeout"]) == (10, 20)
    config = s3fs_config(config_kwargs={"connect_timeout": 3, "read_timeout": 45})
    assert (config["connect_timeout"], config["read_timeout"]) == (3, 45)


def test_client_s3fs_and_the_environment_choose_s3fs(s3, monkeypatch):
    store = resolve_store("s3://data/x", storage_options=s3.storage_options(client="s3fs"))
    assert isinstance(store, FsspecStore)
    monkeypatch.setenv("TOOLKIT_CLIENT", "s3fs")
    default = resolve_store("s3://data/x", storage_options=s3.storage_options())
    assert isinstance(default, FsspecStore)
    monkeypatch.setenv("TOOLKIT_CLIENT", "boto")
    with pytest.raises(ValueError, match="TOOLKIT_CLIENT"):
        resolve_store("s3://data/x", storage_options=s3.storage_options())
    # A URL obstore does not serve stays with fsspec whatever is asked.
    monkeypatch.setenv("TOOLKIT_CLIENT", "obstore")
    assert isinstance(resolve_store("memory://x/y"), FsspecStore)


@pytest.mark.parametrize(
    ("url", "opts", "match"),
    [
        ("s3://data/x", {"client": "boto"}, "'obstore' or 's3fs'"),
        ("memory://x", {"client": "obstore"}, "not memory://"),
        ("s3://data/x", {"client": "obstore", "not_an_option": 1}, "obstore cannot open"),
    ],
)
def test_a_bad_client_option_is_a_clear_error(url, opts, match):
    with pytest.raises(ValueError, match=match):
        resolve_store(url, storage_options=opts)


def test_secrets_of_either_client_are_redacted(s3):
    key, secret = "AKIA-CLIENT-KEY-1", "SECRET-CLIENT-VALUE-2"
    for client in ("obstore", "s3fs"):
        opts = {**s3.storage_options(client=client), "key": key, "secret": secret}
        store = resolve_store("s3://data/x", storage_options=opts)
        text = redact(f"failed with {key} and {secret} at {describe_store(store)}", store)
        assert key not in text and secret not in text and "s3://data/x" in text


# -- errors ---------------------------------------------------------------------------


def _obstore_error(url: str, fn: str = "put") -> BaseException:
    st = S3Store(
        "data",
        endpoint=url,
        access_key_id="testing",
        secret_access_key="testing",
        region="us-east-1",
        client_options={"allow_http": True},
        retry_config={"max_retries": 0},
    )
    with pytest.raises(Exception) as err:  # the kind is what is tested
        if fn == "put":
            obstore.put(st, "k", b"x")
        else:
            obstore.get(st, "k").bytes()
    return err.value


def test_obstore_errors_from_the_real_server_are_classified(s3):
    with FaultProxy(s3.endpoint_url, rate=0.01, burst=1) as proxy:
        obstore.put(
            S3Store(
                "data",
                endpoint=proxy.url,
                access_key_id="testing",
                secret_access_key="testing",
                region="us-east-1",
                client_options={"allow_http": True},
            ),
            "warm",
            b"x",
        )
        slow = _obstore_error(proxy.url)
        slow_get = _obstore_error(proxy.url, "get")
    assert http_status(slow) == (503, "SlowDown")
    assert classify_error(slow) == classify_error(slow_get) == "throttled"
    with FaultProxy(s3.endpoint_url, error_prob=1.0) as proxy:
        err = _obstore_error(proxy.url)
    assert http_status(err)[0] == 500 and classify_error(err) == "transient"
    with FaultProxy(s3.endpoint_url, reset_prob=1.0) as proxy:
        err = _obstore_error(proxy.url)
    assert classify_error(err) == "transient"
    refused = _obstore_error("http://127.0.0.1:1")
    assert classify_error(refused) == "transient"


def test_a_request_the_retries_cannot_save_names_the_store_briefly(s3):
    policy = Throttle(max_retries=1, max_retry_seconds=1.0, adaptive=False)
    with FaultProxy(s3.endpoint_url, error_prob=1.0) as proxy:
        store = wrap_store(
            resolve_store("s3://data/gone.zarr", storage_options=s3.storage_options(proxy.url)),
            policy,
        )
        with pytest.raises(toolkit.errors.StoreUnavailableError) as err:
            sync(store.set("k", Buffer.from_bytes(b"x")))
    text = str(err.value)
    assert "s3://data/gone.zarr/k" in text and "500" in text
    assert "Debug source" not in text and "testing" not in text


def test_an_instance_without_retry_config_is_copied_quiet_one_with_it_is_left(s3):
    def instance(**kw: Any) -> ObjectStore:
        return ObjectStore(
            S3Store(
                "data",
                endpoint=s3.endpoint_url,
                access_key_id="testing",
                secret_access_key="testing",
                region="us-east-1",
                client_options={"allow_http": True},
                **kw,
            )
        )

    given = instance()
    inner = given.store
    stack = wrap_store(given, Throttle())
    quiet = unwrap(stack)
    assert isinstance(quiet, ObjectStore) and quiet is not given
    assert quiet.store.retry_config["max_retries"] == 0
    assert given.store is inner and inner.retry_config is None  # the caller's, as given
    assert unwrap(wrap_store(given, Throttle())) is quiet  # one copy per store
    RetryStore(given, Throttle())  # a RetryStore alone changes nothing either
    assert given.store is inner and inner.retry_config is None
    mine = instance(retry_config={"max_retries": 3})
    assert unwrap(wrap_store(mine, Throttle())) is mine  # configured: left as given
    assert mine.store.retry_config["max_retries"] == 3


# -- coordination and deletes ---------------------------------------------------------


@pytest.mark.parametrize("client", ["obstore", "s3fs"])
def test_exactly_one_of_many_racing_creators_wins(s3, client):
    bucket = _bucket(s3, f"race-{client}")
    base = resolve_store(f"s3://{bucket}/p", storage_options=s3.storage_options(client=client))
    assert clients.supports_atomic_create(base)

    def one(i: int) -> bool:
        return sync(clients.create_if_absent(base, "lease/1.json", f"{i}".encode()))

    with cf.ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(one, range(16)))
    assert sum(wins) == 1
    winner = wins.index(True)
    got = sync(base.get("lease/1.json", prototype=default_buffer_prototype()))
    assert got is not None and got.to_bytes() == f"{winner}".encode()
    assert sync(clients.list_keys(base, "lease/")) == ["lease/1.json"]


def test_deleting_a_prefix_is_one_request_per_thousand_keys(s3):
    bucket = _bucket(s3, "bulk")
    direct = resolve_store(f"s3://{bucket}/d", storage_options=s3.storage_options())

    async def fill() -> None:
        import asyncio

        gate = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with gate:
                await direct.set(f"a/c/{i}", Buffer.from_bytes(b"x"))

        await asyncio.gather(*(one(i) for i in range(2100)))
        await direct.set("b/keep", Buffer.from_bytes(b"y"))

    sync(fill())
    with FaultProxy(s3.endpoint_url) as proxy:
        store = resolve_store(f"s3://{bucket}/d", storage_options=s3.storage_options(proxy.url))
        sync(store.delete_dir("a"))
        counts = dict(proxy.counts.by_method)
    assert counts.get("POST", 0) == 3  # DeleteObjects, 1,000 keys each
    assert counts.get("GET", 0) == 3  # the listing's pages
    assert counts.get("DELETE", 0) == 0
    assert sync(clients.list_keys(direct, "")) == ["b/keep"]


@pytest.mark.parametrize("client", ["obstore", "s3fs"])
def test_a_listings_first_page_is_one_request_and_says_whether_it_is_all(s3, client):
    """``list_page``: a small prefix whole in one LIST; a big one's first page, said so."""
    bucket = _bucket(s3, f"page-{client}")
    opts = {**s3.storage_options(), "client": client}
    direct = resolve_store(f"s3://{bucket}/d", storage_options=opts)

    async def fill() -> None:
        import asyncio

        gate = asyncio.Semaphore(64)

        async def one(key: str) -> None:
            async with gate:
                await direct.set(key, Buffer.from_bytes(b"x"))

        await asyncio.gather(*(one(f"big/c/{i:04d}") for i in range(1200)))
        await asyncio.gather(*(one(f"small/{i}") for i in range(3)))

    sync(fill())
    with FaultProxy(s3.endpoint_url) as proxy:
        through = {**opts, **s3.storage_options(proxy.url)}
        store = wrap_store(resolve_store(f"s3://{bucket}/d", storage_options=through), Throttle())
        small = sync(store.list_page("small/"))
        assert proxy.counts.by_method.get("GET", 0) == 1
        big = sync(store.list_page("big/"))
        assert proxy.counts.by_method.get("GET", 0) == 2  # one LIST each, never a second page
    assert small == (["small/0", "small/1", "small/2"], True)
    keys, whole = big
    assert not whole and 0 < len(keys) <= clients.PAGE
    assert keys == sorted(keys) and all(k.startswith("big/c/") for k in keys)


# -- toolkit through a zarr ObjectStore the caller built ---------------------------------


def test_a_zarr_object_store_instance_gets_the_s3_defaults_and_round_trips(s3):
    ds = xr.Dataset({"v": (("t", "x"), np.arange(64.0).reshape(16, 4))}).chunk({"t": 4})
    with FaultProxy(s3.endpoint_url) as proxy:
        inner = S3Store(
            "data",
            prefix="instance.zarr",
            endpoint=proxy.url,
            access_key_id="testing",
            secret_access_key="testing",
            region="us-east-1",
            client_options={"allow_http": True},
        )
        store = ObjectStore(inner)
        plan = toolkit.plan_write(ds, store)
        assert plan.throttle == Throttle.for_url("s3://data/instance.zarr")
        toolkit.execute(plan, progress=False)
        back = toolkit.open_zarr(store).load()
    xr.testing.assert_identical(back, ds.load())
    assert unwrap(store) is store


def _ds(n: int = 16) -> xr.Dataset:
    return xr.Dataset({"v": (("t", "x"), np.arange(n * 4.0).reshape(n, 4))}).chunk({"t": 4})


def _s3fs_args(s3: Any) -> dict[str, Any]:
    return {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": s3.endpoint_url,
        "client_kwargs": {"region_name": "us-east-1"},
        "asynchronous": True,
    }


def _unpickled_elsewhere(obj: Any, expr: str) -> str:
    """``expr`` of ``obj`` unpickled in a fresh Python process (as a dask worker gets it)."""
    import subprocess
    import sys

    code = f"import pickle, sys; x = pickle.loads(sys.stdin.buffer.read()); print({expr})"
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps(obj),
        capture_output=True,
        timeout=60,
        check=True,
    )
    return done.stdout.decode().strip()


def test_a_users_fsspec_store_is_left_as_given(s3):
    """toolkit writes and reads through the caller's s3fs store without touching it.

    fsspec gives everyone who asks with the same arguments the same filesystem:
    changing it would change it for all of them.
    """
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(**_s3fs_args(s3))
    assert fs.retries == 5 and "retries" not in vars(fs)  # s3fs's own default
    store = FsspecStore(fs, path="data/users-fsspec.zarr")
    ds = _ds()
    report = toolkit.to_zarr(ds, store, mode="w", progress=False)
    assert report.units > 0 and report.plan.throttle is not None  # toolkit's retries applied
    back = toolkit.open_zarr(store).load()
    xr.testing.assert_identical(back, ds.load())

    assert store.fs is fs and fs.retries == 5 and "retries" not in vars(fs)
    other = s3fs.S3FileSystem(**_s3fs_args(s3))  # anyone else asking for the same
    assert other is fs and other.retries == 5
    # toolkit's stack stood over a copy of its own that tries once: the retries do not stack.
    quiet = unwrap(wrap_store(store, Throttle()))
    assert isinstance(quiet, FsspecStore) and quiet is not store and quiet.fs is not fs
    assert quiet.fs.retries == 1 and quiet.path == store.path
    assert unwrap(wrap_store(store, Throttle())) is quiet  # made once per store
    assert sorted(quiet.fs.storage_options) == sorted(fs.storage_options)
    # A worker unpickles the copy from its options: still trying once, the caller's not.
    assert _unpickled_elsewhere(quiet, "x.fs.retries, type(x.fs).__name__") == (
        "1 QuietS3FileSystem"
    )
    assert _unpickled_elsewhere(store, "x.fs.retries") == "5"


def test_a_users_object_store_is_left_as_given(s3):
    """The caller's zarr ObjectStore keeps the very obstore store it was given."""
    inner = S3Store(
        "data",
        prefix="users-obstore.zarr",
        endpoint=s3.endpoint_url,
        access_key_id="testing",
        secret_access_key="testing",
        region="us-east-1",
        client_options={"allow_http": True},
    )
    store = ObjectStore(inner)
    ds = _ds()
    report = toolkit.to_zarr(ds, store, mode="w", progress=False)
    assert report.units > 0 and report.plan.throttle is not None
    back = toolkit.open_zarr(store).load()
    xr.testing.assert_identical(back, ds.load())

    assert store.store is inner and inner.retry_config is None
    quiet = unwrap(wrap_store(store, Throttle()))
    assert isinstance(quiet, ObjectStore) and quiet is not store and quiet.store is not inner
    assert quiet.store.retry_config["max_retries"] == 0
    assert unwrap(wrap_store(store, Throttle())) is quiet
    again = pickle.loads(pickle.dumps(quiet))
    assert again.store.retry_config["max_retries"] == 0
    assert _unpickled_elsewhere(quiet, "x.store.retry_config['max_retries']") == "0"


def test_a_store_toolkit_made_from_a_url_is_quiet_already(s3):
    """open_url's stores try once from the start: no copy of them is needed."""
    policy = Throttle.for_url("s3://data/x")
    for client in ("s3fs", "obstore"):
        opts = s3.storage_options(client=client)
        made = resolve_store("s3://data/made.zarr", storage_options=opts, throttle=policy)
        assert not clients.has_own_retries(made)
        assert unwrap(wrap_store(made, policy)) is made
    s3fs = pytest.importorskip("s3fs")
    shared = s3fs.S3FileSystem(**_s3fs_args(s3))
    resolve_store(
        "s3://data/made.zarr", storage_options={**_s3fs_args(s3), "client": "s3fs"}, throttle=policy
    )
    assert shared.retries == 5  # fsspec's shared filesystem of the same options: untouched


def test_a_store_that_cannot_be_copied_keeps_its_retries_and_still_works(s3, caplog):
    """No copy can be made: the client's own retries stay on, a debug log says so."""
    s3fs = pytest.importorskip("s3fs")

    class Ticket:
        used = False

        def __repr__(self) -> str:
            return f"Ticket({id(self)})"

    class OneOff(s3fs.S3FileSystem):  # a filesystem that can be made once only
        def __init__(self, *args: Any, ticket: Ticket, **kw: Any) -> None:
            if ticket.used:
                raise RuntimeError("this filesystem cannot be made twice")
            ticket.used = True
            super().__init__(*args, **kw)

    fs = OneOff(ticket=Ticket(), **_s3fs_args(s3))
    store = FsspecStore(fs, path="data/one-off.zarr")
    ds = _ds(8)
    with caplog.at_level("DEBUG", logger="toolkit.io.clients"):
        toolkit.to_zarr(ds, store, mode="w", progress=False)
    assert any("cannot copy" in r.getMessage() for r in caplog.records)
    xr.testing.assert_identical(toolkit.open_zarr(store).load(), ds.load())
    assert store.fs is fs and fs.retries == 5 and "retries" not in vars(fs)
    assert unwrap(wrap_store(store, Throttle())) is store


# -- zarr's own store conformance suite, for the bulk-deleting ObjectStore --------------


class TestBulkDeleteObjectStore(StoreTests[clients.BulkDeleteObjectStore, Buffer]):
    store_cls = clients.BulkDeleteObjectStore
    buffer_cls = Buffer

    @pytest.fixture
    def store_kwargs(self, tmp_path: Any) -> dict[str, Any]:
        return {"store": ObsLocalStore(prefix=str(tmp_path))}

    @pytest.fixture
    async def store(self, store_kwargs: dict[str, Any]) -> clients.BulkDeleteObjectStore:
        return self.store_cls(**store_kwargs)

    @pytest.fixture
    def open_kwargs(self, tmp_path: Any) -> dict[str, Any]:
        return {"store": ObsLocalStore(prefix=str(tmp_path))}

    async def get(self, store: Any, key: str) -> Buffer:
        return self.buffer_cls.from_bytes(obstore.get(store.store, key).bytes().to_bytes())

    async def set(self, store: Any, key: str, value: Buffer) -> None:
        obstore.put(store.store, key, value.to_bytes())

    def test_store_repr(self, store: Any) -> None:
        assert repr(store).startswith("BulkDeleteObjectStore(object_store://LocalStore(")

    def test_store_supports_writes(self, store: Any) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: Any) -> None:
        assert store.supports_listing

    def test_store_supports_partial_writes(self, store: Any) -> None:
        assert not getattr(store, "supports_partial_writes", False)


def test_a_bucket_region_is_found_as_s3fs_finds_it(s3, monkeypatch):
    """Without a region or endpoint, obstore would assume us-east-1; toolkit asks the bucket."""
    client = s3.client()
    client.create_bucket(
        Bucket="far-away", CreateBucketConfiguration={"LocationConstraint": "eu-west-3"}
    )
    assert clients.bucket_region("far-away", s3.endpoint_url) == "eu-west-3"
    assert clients.bucket_region("far-away", "http://127.0.0.1:1", timeout=1) is None  # no answer
    # Without a region, the one found is used; given one (options or environment),
    # nothing is asked.
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setattr(clients, "bucket_region", lambda bucket, *a, **k: f"{bucket}-region")
    store = resolve_store("s3://far-away/x", storage_options={"anon": True})
    assert store.store.config["region"] == "far-away-region"
    monkeypatch.setattr(clients, "bucket_region", lambda *a, **k: pytest.fail("asked"))
    given = resolve_store("s3://far-away/x", storage_options={"anon": True, "region": "eu-north-1"})
    assert given.store.config["region"] == "eu-north-1"
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    resolve_store("s3://far-away/x", storage_options={"anon": True})


def test_credentials_come_from_a_profile_as_with_s3fs(s3, tmp_path, monkeypatch):
    """No key in the options or environment: botocore's chain (here a ~/.aws profile)."""
    creds = tmp_path / "credentials"
    creds.write_text("[tk]\naws_access_key_id = PROFILE-KEY-1\naws_secret_access_key = PROFILE-S\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    runtime.current().get(clients._SESSIONS).clear()  # sessions are kept per runtime
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    opts = {"endpoint_url": s3.endpoint_url, "profile": "tk", "region": "us-east-1"}
    store = resolve_store("s3://data/profiled.zarr", storage_options=opts)
    provider = store.store.credential_provider
    assert isinstance(provider, clients.BotocoreCredentials)
    assert provider()["access_key_id"] == "PROFILE-KEY-1"
    again = pickle.loads(pickle.dumps(store))  # as a worker gets it
    assert again.store.credential_provider()["secret_access_key"] == "PROFILE-S"
    ds = xr.Dataset({"v": (("t",), np.arange(8.0))}).chunk({"t": 4})
    toolkit.to_zarr(ds, "s3://data/profiled.zarr", storage_options=opts, progress=False)
    back = toolkit.open_zarr("s3://data/profiled.zarr", storage_options=opts).load()
    xr.testing.assert_identical(back, ds.load())
    # With no credentials anywhere, the error says what to pass.
    empty = tmp_path / "none"
    empty.write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    runtime.current().get(clients._SESSIONS).clear()  # sessions are kept per runtime
    bare = clients.BotocoreCredentials()
    with pytest.raises(PermissionError, match="anon=True"):
        bare()


@pytest.mark.parametrize("client", ["obstore", "s3fs"])
def test_a_failed_create_of_generation_412_is_an_error_not_a_lost_race(s3, client):
    """The key's digits are in the error's text: only the status says 'exists'."""
    with FaultProxy(s3.endpoint_url, error_prob=1.0) as proxy:
        opts = s3.storage_options(proxy.url, client=client)
        base = clients.quiet_copy(resolve_store("s3://data/gen412", storage_options=opts))
        with pytest.raises(Exception) as err:  # the 500, whichever way the client words it
            sync(clients.create_if_absent(base, "leases/create/000000000412.json", b"{}"))
    assert classify_error(err.value) == "transient"


def test_a_listing_never_returns_the_stores_own_path_for_a_key(s3):
    """s3fs's ``find`` may return the listed path itself (a directory it found by ``info``).

    Here from its listings cache: the bucket was listed while ``t.zarr`` held a key,
    which another client then deleted. The next listing of ``t.zarr`` finds no key,
    asks ``info``, which answers "a directory" from the cache, and ``find`` returns
    ``data/t.zarr``: zarr's ``FsspecStore`` passes it on as a key. The same happens
    when another job's first keys land between ``find``'s two requests (racing
    ``mode="w"`` creators: one took the other's store for a stranger's file).
    """
    from toolkit.coordination.claim import group_contents

    opts = {k: v for k, v in s3.storage_options().items() if k != "client"}
    base = FsspecStore.from_url("s3://data/phantom/t.zarr", storage_options=opts)
    other = s3.client()
    other.put_object(Bucket="data", Key="phantom/t.zarr/zarr.json", Body=b"{}")
    sync(base.fs._ls("data/phantom"))  # cached: data/phantom/t.zarr is a directory
    other.delete_object(Bucket="data", Key="phantom/t.zarr/zarr.json")

    async def listed(store: Any) -> list[str]:
        return [k async for k in store.list_prefix("")]

    assert sync(listed(base)) == ["data/phantom/t.zarr"]  # the client's answer (s3fs 2025.x)
    wrapped = wrap_store(base, None, toolkit.IOMetrics())
    assert sync(listed(wrapped)) == []
    assert group_contents(wrapped, None, limit=10) == []
