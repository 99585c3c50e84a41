"""The object-store clients: s3fs (through fsspec) and obstore (Rust ``object_store``).

Everything toolkit knows of a particular client lives here: how a URL and its
``storage_options`` become a zarr store, which scheme and location a store
addresses, where its secrets are, how to copy it with its own retries off (toolkit's
:class:`~toolkit.io.wrappers.RetryStore` retries, so that throttling stays
visible to the budget), and the two requests coordination needs that zarr's
``Store`` ABC lacks: put-if-absent and a plain paginated listing.

``storage_options`` use fsspec's names for both clients (``key``, ``secret``,
``token``, ``anon``, ``endpoint_url``, ``client_kwargs={"region_name": ...}``),
so that switching clients changes nothing else; obstore's own names
(``region``, ``endpoint``, ``client_options=``, ...) are accepted as well.
For ``az://`` and ``abfs://`` URLs they are adlfs's (``account_name``,
``account_key``, ``connection_string``, ``sas_token``, ``anon``, ``account_host``),
with ``endpoint_url`` as for S3; obstore's Azure names work too.
The toolkit option ``client`` picks one: ``"obstore"`` (the default for
``s3://``, ``gs://`` and ``az://`` when obstore is installed) or ``"s3fs"``
(fsspec: every other protocol, and the fallback).

Both clients wait a bounded time for a connection and for each read of an
answer (:data:`CONNECT_TIMEOUT`, :data:`READ_TIMEOUT`), so that a stalled
connection becomes a retried error, not a hang; fsspec's
``config_kwargs={"connect_timeout": ..., "read_timeout": ...}`` sets them for
either client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import logging
import os
import re
import threading
import types
import weakref
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, cast

from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore, MemoryStore, ObjectStore

from toolkit import runtime
from toolkit._util import backoff
from toolkit.errors import MissingExtraError
from toolkit.io.classify import http_status
from toolkit.runtime import Registry, Slot
from toolkit.upstream import call_s3, pipe_file_create

__all__ = [
    "CONNECT_TIMEOUT",
    "PAGE",
    "READ_TIMEOUT",
    "BotocoreCredentials",
    "BulkDeleteObjectStore",
    "Client",
    "bucket_region",
    "client_of",
    "create_if_absent",
    "default_client",
    "has_own_retries",
    "list_keys",
    "list_page",
    "listed_self",
    "location",
    "open_url",
    "quiet_copy",
    "quiet_filesystem",
    "s3_endpoint_from_environment",
    "secrets",
    "supports_atomic_create",
]

Client = Literal["obstore", "s3fs"]
logger = logging.getLogger(__name__)

#: Seconds a client waits to connect before it gives up (a retried error).
CONNECT_TIMEOUT = 10.0
#: Seconds a client waits for each read of an answer (the first byte of a response,
#: then each next part) before it gives up (a retried error). Together with the
#: connect timeout: a stalled connection is a retried error within 30 s.
READ_TIMEOUT = 20.0
#: object_store's own bound on a whole request (its ``timeout``), which toolkit keeps
#: unless the connect and read timeouts asked for add up to more.
_OBSTORE_REQUEST_TIMEOUT = 30.0

#: The URL schemes obstore serves (and toolkit routes to it by default).
_OBSTORE_SCHEMES = MappingProxyType(
    {
        "s3": "s3",
        "s3a": "s3",
        "gs": "gs",
        "gcs": "gs",
        "az": "az",
        "abfs": "az",
        "abfss": "az",
    }
)


def default_client(scheme: str) -> Client:
    """The client for a URL scheme when the caller names none.

    obstore where it serves the scheme and is installed: on the benchmark's S3
    server it sends the same objects in 0.8x s3fs's time and reads them in
    0.5x (``benchmarks/run.py --only cloud``). s3fs (fsspec) everywhere else.
    The environment variable ``TOOLKIT_CLIENT`` (``obstore`` or ``s3fs``)
    overrides the choice where obstore could serve.
    """
    chosen = os.environ.get("TOOLKIT_CLIENT") or None
    if chosen not in (None, "obstore", "s3fs"):
        raise ValueError(f"TOOLKIT_CLIENT is 'obstore' or 's3fs', got {chosen!r}")
    if chosen == "s3fs" or (chosen and scheme.lower() not in _OBSTORE_SCHEMES):
        return "s3fs"
    if scheme.lower() in _OBSTORE_SCHEMES and importlib.util.find_spec("obstore") is not None:
        return "obstore"
    return "s3fs"


def open_url(
    url: str, storage_options: Mapping[str, Any] | None, *, in_flight: int | None
) -> Store:
    """A zarr store for ``url`` through the client ``storage_options["client"]`` names.

    ``in_flight`` is the request budget's in-flight cap when toolkit throttles
    the store (None when it does not). Then each client is set up for it:
    its own retries off, one GET per read, a connection pool that large.
    """
    opts = dict(storage_options or {})
    scheme = url.split("://", 1)[0].lower()
    client = opts.pop("client", None) or default_client(scheme)
    if client == "obstore":
        if scheme not in _OBSTORE_SCHEMES:
            raise ValueError(
                f"client='obstore' serves s3://, gs:// and az:// URLs, not {scheme}://; "
                "leave client unset (fsspec) for this URL"
            )
        return _open_obstore(url, opts, in_flight=in_flight)
    if client != "s3fs":
        raise ValueError(f"storage_options client= is 'obstore' or 's3fs', got {client!r}")
    if scheme in ("s3", "s3a"):
        opts = _s3fs_timeouts(opts)
        endpoint = s3_endpoint_from_environment()
        if endpoint and not (opts.get("endpoint_url") or _kwargs_endpoint(opts)):
            # botocore reads AWS_ENDPOINT_URL itself, not object_store's AWS_ENDPOINT.
            opts["endpoint_url"] = endpoint
        # One GET per read, no HEAD first: s3fs asks an object's size before each whole
        # read when it may split it (max_concurrency > 1), unless a listing cached it.
        opts.setdefault("max_concurrency", 1)
    if in_flight is None:
        return FsspecStore.from_url(url, storage_options=opts)
    if scheme in ("s3", "s3a"):
        opts = _s3fs_defaults(opts, in_flight)
    # A filesystem of toolkit's own, trying once: not the one fsspec shares with others.
    return quiet_copy(FsspecStore.from_url(url, storage_options=opts))


def _kwargs_endpoint(opts: Mapping[str, Any]) -> Any:
    kwargs = opts.get("client_kwargs")
    return kwargs.get("endpoint_url") if isinstance(kwargs, Mapping) else None


def _s3fs_timeouts(opts: dict[str, Any]) -> dict[str, Any]:
    """The connect and read timeouts of botocore: ``config_kwargs``'s, else toolkit's."""
    config = dict(opts.get("config_kwargs") or {})
    config.setdefault("connect_timeout", CONNECT_TIMEOUT)
    config.setdefault("read_timeout", READ_TIMEOUT)
    return {**opts, "config_kwargs": config}


def _s3fs_defaults(opts: dict[str, Any], in_flight: int) -> dict[str, Any]:
    opts.setdefault("max_concurrency", 1)  # one GET per read, no HEAD first
    config = dict(opts.get("config_kwargs") or {})
    config.setdefault("retries", {"total_max_attempts": 1})
    config.setdefault("max_pool_connections", max(10, in_flight))
    opts["config_kwargs"] = config
    return opts


# fsspec/s3fs option -> obstore S3 config key. The values carry over as they are.
_S3FS_NAMES = MappingProxyType(
    {
        "key": "access_key_id",
        "secret": "secret_access_key",
        "token": "token",
        "anon": "skip_signature",
        "endpoint_url": "endpoint",
        "requester_pays": "request_payer",
    }
)
# fsspec options that tune fsspec itself and mean nothing to obstore.
_FSSPEC_ONLY = frozenset(
    [
        "max_concurrency",
        "skip_instance_cache",
        "use_listings_cache",
        "listings_expiry_time",
        "default_block_size",
        "default_fill_cache",
        "default_cache_type",
        "asynchronous",
        "loop",
        "use_ssl",
        "version_aware",
        "cache_regions",
    ]
)
_OBSTORE_KWARGS = frozenset({"client_options", "retry_config", "credential_provider", "config"})

# fsspec/adlfs option -> obstore Azure config key (account_name, account_key, client_id,
# client_secret and tenant_id are the same in both). endpoint_url is toolkit's name for
# an endpoint whatever the scheme, as for S3.
_ADLFS_NAMES = MappingProxyType(
    {
        "sas_token": "sas_key",
        "anon": "skip_signature",
        "endpoint_url": "endpoint",
    }
)
# adlfs options that tune adlfs and the Azure SDK's client, meaning nothing to obstore.
_ADLFS_ONLY = frozenset(
    [
        "blocksize",
        "assume_container_exists",
        "location_mode",
        "socket_timeout",
        "timeout",
        "request_session",
        "account_url_suffix",
    ]
)
# adlfs's timeouts, under the names toolkit reads from config_kwargs for either client.
_ADLFS_TIMEOUTS = MappingProxyType(
    {"connection_timeout": "connect_timeout", "read_timeout": "read_timeout"}
)


def _open_obstore(url: str, opts: dict[str, Any], *, in_flight: int | None) -> Store:
    try:
        from obstore.store import from_url
    except ImportError as e:
        raise MissingExtraError("client='obstore'", "obstore", "cloud") from e

    scheme = _OBSTORE_SCHEMES[url.split("://", 1)[0].lower()]
    url = f"{scheme}://{url.split('://', 1)[1]}"
    config: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    client_options: dict[str, Any] = dict(opts.pop("client_options", None) or {})
    given = opts.get("config_kwargs")
    timeouts = dict(given) if isinstance(given, Mapping) else {}
    if scheme == "az":
        for name, ours in _ADLFS_TIMEOUTS.items():
            if name in opts:
                timeouts.setdefault(ours, opts.pop(name))
    _obstore_timeouts(timeouts, client_options)
    profile = opts.pop("profile", None)
    names: Mapping[str, str] = (
        _S3FS_NAMES if scheme == "s3" else _ADLFS_NAMES if scheme == "az" else {}
    )
    for k, v in opts.items():
        if k in _OBSTORE_KWARGS:
            kwargs[k] = v
        elif k in _FSSPEC_ONLY or (scheme == "az" and k in _ADLFS_ONLY):
            continue
        elif k == "client_kwargs" and isinstance(v, Mapping):
            _from_client_kwargs(v, config)
        elif k == "config_kwargs":
            # Its timeouts are in client_options already; botocore's retries and pool
            # sizes are set by toolkit for obstore too.
            continue
        else:
            config[names.get(k, k)] = v
    if scheme == "az":
        url = _azure_config(url, config)
    if scheme == "s3" and "credential_provider" not in kwargs and not _credentials_given(config):
        # botocore's chain (profiles in ~/.aws, SSO, roles, ...), as s3fs would use;
        # object_store alone reads only the environment and instance metadata.
        provider = BotocoreCredentials.for_profile(profile)
        if provider is not None:
            kwargs["credential_provider"] = provider
    endpoint = str(config.get("endpoint") or "")
    if scheme == "s3" and not endpoint:
        # The AWS CLI's and botocore's variables (MinIO, moto, Ceph are set up this way):
        # said to obstore explicitly, so that allow_http and the region follow from it.
        endpoint = s3_endpoint_from_environment() or _profile_endpoint(profile) or ""
        if endpoint:
            config["endpoint"] = endpoint
    if scheme == "s3" and not endpoint and not _region_given(config):
        # s3fs finds a bucket's region by itself; object_store assumes us-east-1 and
        # then fails on every other region's buckets. One anonymous HEAD says which.
        region = bucket_region(url.split("://", 1)[1].split("/", 1)[0])
        if region:
            config["region"] = region
    if endpoint and "://" not in endpoint:
        # object_store would panic on its first request (a Rust panic, not an error).
        raise ValueError(
            f"the endpoint {endpoint!r} has no scheme: write http://{endpoint} or "
            f"https://{endpoint}"
        )
    if endpoint.startswith("http://") or _truthy(os.environ.get("AWS_ALLOW_HTTP")):
        client_options.setdefault("allow_http", True)
    if "skip_signature" in config:
        config["skip_signature"] = bool(config["skip_signature"])
    if in_flight is not None:
        kwargs.setdefault("retry_config", dict(_NO_RETRIES))
    kwargs["client_options"] = client_options
    try:
        store = from_url(url, config=cast(Any, config or None), **kwargs)
    except Exception as e:  # obstore's configuration errors name the key
        raise ValueError(f"obstore cannot open {url}: {_first_line(e)}") from e
    return BulkDeleteObjectStore(store)


_AZURE_ENVIRONMENT = (
    ("AZURE_STORAGE_ACCOUNT_NAME", "account_name"),
    ("AZURE_STORAGE_ACCOUNT_KEY", "account_key"),
    ("AZURE_STORAGE_SAS_TOKEN", "sas_key"),
)


def _azure_config(url: str, config: dict[str, Any]) -> str:
    """The Azure options in obstore's terms (adlfs's names mapped), in place; the URL to open.

    A connection string gives what the options do not (its account, key,
    signature and blob endpoint). A SAS token loses adlfs's leading ``?``. An
    account named both by the URL (``abfs://container@account.dfs.core.windows.net``)
    and by the options must be the same one, said once to obstore.
    """
    # The environment as adlfs and the Azure CLI read it; said to obstore explicitly (its own
    # reading of AZURE_STORAGE_ACCOUNT_NAME builds a store whose repr then panics).
    conn = config.pop("connection_string", None) or os.environ.get(
        "AZURE_STORAGE_CONNECTION_STRING"
    )
    if conn:
        for k, v in _connection_string(str(conn)).items():
            config.setdefault(k, v)
    account_in_url = "@" in url.split("://", 1)[1].split("/", 1)[0]
    for name, key in _AZURE_ENVIRONMENT:
        named_twice = key == "account_name" and account_in_url
        if os.environ.get(name) and key not in config and not named_twice:
            config[key] = os.environ[name]
    host = config.pop("account_host", None)
    if host:
        config.setdefault("endpoint", f"https://{str(host).removeprefix('https://')}")
    if "credential" in config:
        raise ValueError(
            "storage_options credential= is adlfs's (an azure.identity credential); for "
            "obstore give account_key=, sas_token=, client_id= with client_secret= and "
            "tenant_id=, or credential_provider= (obstore.auth.azure)"
        )
    sas = config.get("sas_key")
    if isinstance(sas, str):
        config["sas_key"] = sas.removeprefix("?")
    netloc = url.split("://", 1)[1].split("/", 1)[0]
    if "@" in netloc and config.get("account_name"):
        in_url = netloc.split("@", 1)[1].split(".", 1)[0]
        if config["account_name"] != in_url:
            raise ValueError(
                f"the URL names the storage account {in_url!r} and storage_options "
                f"{config['account_name']!r}: give one"
            )
        del config["account_name"]  # obstore refuses it said twice
    return url


def _connection_string(text: str) -> dict[str, Any]:
    """The obstore Azure config an Azure Storage connection string gives.

    ``AccountName``, ``AccountKey``, ``SharedAccessSignature``, ``BlobEndpoint``
    (else one made of ``DefaultEndpointsProtocol`` and ``EndpointSuffix``), and
    ``UseDevelopmentStorage=true`` (the emulator at its default address).
    """
    parts: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")  # values (keys, signatures) hold "=" too
        if eq:
            parts[name.strip().lower()] = value.strip()
    out: dict[str, Any] = {}
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        out["use_emulator"] = True
    account = parts.get("accountname")
    if account:
        out["account_name"] = account
    if parts.get("accountkey"):
        out["account_key"] = parts["accountkey"]
    if parts.get("sharedaccesssignature"):
        out["sas_key"] = parts["sharedaccesssignature"].removeprefix("?")
    if parts.get("blobendpoint"):
        out["endpoint"] = parts["blobendpoint"]
    elif account and ("endpointsuffix" in parts or "defaultendpointsprotocol" in parts):
        protocol = parts.get("defaultendpointsprotocol") or "https"
        suffix = parts.get("endpointsuffix") or "core.windows.net"
        out["endpoint"] = f"{protocol}://{account}.blob.{suffix}"
    return out


class BulkDeleteObjectStore(ObjectStore):  # type: ignore[type-arg]
    """zarr's :class:`~zarr.storage.ObjectStore`, deleting a prefix in bulk.

    zarr's deletes a prefix one request per key, ten at a time: overwriting a
    dataset of 256 chunks through a 100 ms link spent seconds there. obstore's
    bulk delete sends S3 ``DeleteObjects`` (1,000 keys a request) and Azure
    blob batches (256 keys a request); other backends delete concurrently.
    """

    async def delete_dir(self, prefix: str) -> None:
        """Delete every key under ``prefix``."""
        import obstore

        self._check_writable()
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        # A key gone between the listing and the delete (another job deleting the same
        # prefix) is no error on S3, whose DeleteObjects takes it as deleted. Azure's blob
        # batch answers it 404, and obstore then stops: the batches after it are never
        # sent, and the keys in them stay (a delete of 600 keys left 88). So a 404 means:
        # list again and delete what is left.
        for _ in range(_DELETE_ROUNDS):
            metas = await obstore.list(self.store, prefix).collect_async()
            paths = [m["path"] for m in metas]
            if not paths:
                return
            try:
                await obstore.delete_async(self.store, paths)
            except FileNotFoundError:
                continue
            return


#: Listings and bulk deletes of one prefix before :meth:`BulkDeleteObjectStore.delete_dir`
#: leaves what others keep deleting under it to them.
_DELETE_ROUNDS = 8


def s3_endpoint_from_environment() -> str | None:
    """The S3 endpoint the environment names, read as botocore and obstore read it.

    ``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL`` (botocore's and the AWS
    CLI's), then ``AWS_ENDPOINT`` (object_store's). None when none is set.
    """
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _credentials_given(config: Mapping[str, Any]) -> bool:
    return bool(
        config.get("access_key_id")
        or config.get("skip_signature")
        or os.environ.get("AWS_ACCESS_KEY_ID")
    )


class BotocoreCredentials:
    """An obstore credential provider answering from botocore's credential chain.

    The chain s3fs (and the AWS CLI) use: the environment, a profile in
    ``~/.aws``, SSO, assumed roles, container and instance roles. Pickles as
    its profile name, so each worker asks its own chain.
    """

    def __init__(self, profile: str | None = None) -> None:
        self.profile = profile
        self._session = _botocore_session(profile)

    @classmethod
    def for_profile(cls, profile: str | None) -> BotocoreCredentials | None:
        """A provider for ``profile`` (None: the default chain), or None without botocore."""
        if importlib.util.find_spec("botocore") is None:
            if profile is not None:
                raise ValueError("storage_options profile= needs botocore (pip install s3fs)")
            return None
        return cls(profile)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.profile,))

    def __call__(self) -> dict[str, Any]:
        """The current credentials (refreshed by botocore when they expire)."""
        creds = self._session.get_credentials()
        if creds is None:
            raise PermissionError(
                "no AWS credentials found (environment, ~/.aws profile, SSO or instance "
                "role); pass key= and secret= (or profile=) in storage_options, or anon=True "
                "for a public bucket"
            )
        frozen = creds.get_frozen_credentials()
        refreshing = getattr(creds, "refresh_needed", None) is not None
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            # Temporary credentials: ask again in a few minutes (botocore refreshes).
            "expires_at": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5) if refreshing else None,
        }


#: One botocore session per profile (in the current runtime).
_SESSIONS: Slot[Registry[str | None, Any]] = Slot("io.clients.sessions", Registry)


def _botocore_session(profile: str | None) -> Any:
    """One botocore session per profile and process: every unpickled store shares it."""
    import botocore.session

    sessions = runtime.current().get(_SESSIONS)
    return sessions.setdefault(profile, lambda: botocore.session.Session(profile=profile))


def _profile_endpoint(profile: str | None) -> str | None:
    """The S3 endpoint a profile of ``~/.aws/config`` sets (``endpoint_url``), as botocore reads it.

    s3fs gets it from botocore; object_store reads no profile, so it is said to it.
    """
    if importlib.util.find_spec("botocore") is None:
        return None
    try:
        config = _botocore_session(profile or os.environ.get("AWS_PROFILE")).get_scoped_config()
    except Exception:  # no such profile, no config file: botocore's chain says so later
        return None
    s3 = config.get("s3")
    nested = s3.get("endpoint_url") if isinstance(s3, Mapping) else None
    found = nested or config.get("endpoint_url")
    return str(found) if found else None


def _region_given(config: Mapping[str, Any]) -> bool:
    return bool(
        config.get("region")
        or config.get("aws_region")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
    )


#: The regions of S3 buckets asked (in the current runtime).
_REGIONS: Slot[Registry[tuple[str, str], str | None]] = Slot("io.clients.regions", Registry)


def bucket_region(
    bucket: str, endpoint: str = "https://s3.amazonaws.com", timeout: float = 5.0
) -> str | None:
    """The region of an S3 bucket, from the ``x-amz-bucket-region`` header of an anonymous HEAD.

    S3 sends the header whatever the answer (200, 301 or 403). None when it
    cannot be asked (no network, no header). Remembered per process.
    """
    import urllib.error
    import urllib.request

    key = (endpoint, bucket)
    known = runtime.current().get(_REGIONS)
    if key not in known:
        region = None
        req = urllib.request.Request(f"{endpoint.rstrip('/')}/{bucket}", method="HEAD")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                region = resp.headers.get("x-amz-bucket-region")
        except urllib.error.HTTPError as e:
            region = e.headers.get("x-amz-bucket-region")
        except (OSError, ValueError):
            region = None
        known.put(key, region)
    return known.get(key)


def _from_client_kwargs(v: Mapping[str, Any], config: dict[str, Any]) -> None:
    names = {
        "region_name": "region",
        "endpoint_url": "endpoint",
        "aws_access_key_id": "access_key_id",
        "aws_secret_access_key": "secret_access_key",
        "aws_session_token": "token",
    }
    for k, val in v.items():
        config[names.get(k, k)] = val


def _obstore_timeouts(config_kwargs: Mapping[str, Any], client_options: dict[str, Any]) -> None:
    """The connect and read timeouts of obstore: fsspec's names, else toolkit's defaults.

    botocore's ``read_timeout`` bounds each read of an answer, as object_store's
    ``read_timeout`` does (its ``timeout`` bounds the whole request: 30 s unless
    set, raised here when the two timeouts asked for add up to more, so that
    they are what bounds a stall). Names given in ``client_options`` win.
    """
    connect = float(config_kwargs.get("connect_timeout", CONNECT_TIMEOUT))
    read = float(config_kwargs.get("read_timeout", READ_TIMEOUT))
    client_options.setdefault("connect_timeout", dt.timedelta(seconds=connect))
    client_options.setdefault("read_timeout", dt.timedelta(seconds=read))
    if "timeout" not in client_options and connect + read > _OBSTORE_REQUEST_TIMEOUT:
        client_options["timeout"] = dt.timedelta(seconds=connect + read)


# obstore's own retry loop hides 503s from the budget and can spend minutes on one
# request: none here, toolkit's RetryStore retries instead.
# (Handed to obstore as a new dict each time: it takes a dict.)
_NO_RETRIES: Mapping[str, Any] = MappingProxyType(
    {"max_retries": 0, "retry_timeout": dt.timedelta(seconds=30)}
)


def _first_line(e: BaseException) -> str:
    return str(e).split("\n", 1)[0][:300]


# --------------------------------------------------------------------------- what a store is


def client_of(base: Store) -> Client | None:
    """Which client an (unwrapped) store talks through, or None (local, memory, other)."""
    if isinstance(base, FsspecStore):
        return "s3fs"
    if _is_object_store(base):
        return "obstore"
    return None


def _is_object_store(base: Store) -> bool:
    return isinstance(base, ObjectStore)


_OBSTORE_CLASS_SCHEME = MappingProxyType(
    {
        "S3Store": "s3",
        "GCSStore": "gs",
        "AzureStore": "az",
        "LocalStore": "file",
        "MemoryStore": "memory",
        "HTTPStore": "https",
    }
)


def location(base: Store) -> str | None:
    """``scheme://bucket/prefix`` of an fsspec or obstore store (no secrets), else None."""
    if isinstance(base, FsspecStore):
        proto = base.fs.protocol
        proto = proto[0] if isinstance(proto, tuple) else proto
        return f"{proto}://{base.path}"
    if _is_object_store(base):
        inner = base.store  # type: ignore[attr-defined]
        scheme = _OBSTORE_CLASS_SCHEME.get(type(inner).__name__, "object")
        config = getattr(inner, "config", None) or {}
        bucket = config.get("bucket") or config.get("container_name") or ""
        prefix = str(getattr(inner, "prefix", None) or "").strip("/")
        if scheme == "file":
            return f"file:///{prefix}"
        if scheme == "memory":
            return None
        return f"{scheme}://{'/'.join(p for p in (bucket, prefix) if p)}"
    return None


def secrets(base: Store) -> list[str]:
    """The secret-looking option values a client holds (keys, tokens, passwords)."""
    found: list[str] = []

    def walk(d: Mapping[str, Any]) -> None:
        for k, v in d.items():
            if isinstance(v, Mapping):
                walk(v)
            elif (
                isinstance(v, str)
                and _SECRET_KEY.search(str(k))
                and len(v) >= 4
                # obstore's flags (skip_signature, sse_bucket_key_enabled) have secret-like
                # names and say "true": redacting that would mangle every message saying it.
                and v.lower() not in ("true", "false")
            ):
                found.append(v)

    if isinstance(base, FsspecStore):
        walk(getattr(base.fs, "storage_options", None) or {})
    elif _is_object_store(base):
        inner = base.store  # type: ignore[attr-defined]
        walk(getattr(inner, "config", None) or {})
        walk(getattr(inner, "client_options", None) or {})
    return found


_SECRET_KEY = re.compile(r"key|secret|token|password|passwd|credential|sas|signature", re.I)


def has_own_retries(base: Store) -> bool:
    """Whether a client store retries by itself, in a way toolkit turns off.

    s3fs (any fsspec filesystem with ``retries`` above one attempt), and an
    obstore store whose owner configured no ``retry_config`` (one that did is
    left as given).
    """
    if isinstance(base, FsspecStore):
        retries = getattr(base.fs, "retries", None)
        return isinstance(retries, int) and retries > 1
    if _is_object_store(base):
        inner = base.store  # type: ignore[attr-defined]
        return getattr(inner, "retry_config", "given") is None and hasattr(inner, "config")
    return False


def quiet_copy(base: Store) -> Store:
    """A copy of ``base`` whose client does not retry: toolkit's RetryStore retries instead.

    ``base`` itself is never changed: fsspec shares one filesystem among all
    who ask for the same options, and the caller's store is the caller's. It is
    returned as it is when its client has no retries to turn off
    (:func:`has_own_retries`), and when no copy can be made (a debug log says
    so; its client then retries below toolkit's retries).

    An s3fs filesystem keeps its retries in a class attribute and is made
    again from its options when unpickled, so the copy's filesystem is of a
    subclass trying each request once (:func:`quiet_filesystem`), made with
    the same options: a worker unpickles it as such, and fsspec caches it apart
    from the caller's. An obstore store is rebuilt with no retries.
    """
    if not has_own_retries(base):
        return base
    try:
        if isinstance(base, FsspecStore):
            fs = base.fs
            clone = base.with_read_only(base.read_only)
            clone.fs = quiet_filesystem(type(fs), fs.storage_args, fs.storage_options)
            return clone
        inner = base.store  # type: ignore[attr-defined]
        copied = base.with_read_only(base.read_only)
        copied.store = _rebuilt(inner, retry_config=dict(_NO_RETRIES))  # type: ignore[attr-defined]
        return copied
    except Exception as e:  # an unusual filesystem or store: its own retries stay on
        logger.debug(
            "toolkit: cannot copy %s without its client's own retries (%s: %s); they stay "
            "on, below toolkit's",
            type(base).__name__,
            type(e).__name__,
            _first_line(e),
        )
        return base


class _QuietClasses:
    """A weak cache, keyed by fsspec filesystem class: its quiet subclass.

    (See :func:`quiet_filesystem`.) Kept as long as the class itself, so that fsspec's
    cache of the subclass's filesystems lives as the class's own does (a filesystem
    dropped with its class would leave its connections unclosed).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.of: weakref.WeakKeyDictionary[type, type] = weakref.WeakKeyDictionary()


#: Process-wide, as classes are, whatever runtime is current.
_QUIET_CLASSES: Slot[_QuietClasses] = Slot(
    "io.clients.quiet_classes", _QuietClasses, process_wide=True
)


def _quiet_class(cls: type) -> type:
    known = runtime.current().get(_QUIET_CLASSES)
    with known.lock:
        quiet = known.of.get(cls)
        if quiet is None:
            body: dict[str, Any] = {
                "retries": 1,
                "__reduce__": _reduce_quiet,
                "__module__": __name__,
                "_toolkit_quiet_of": cls,
            }
            if _is_s3fs(cls):
                body["set_session"] = _set_session_without_expect
            quiet = types.new_class(f"Quiet{cls.__name__}", (cls,), {}, lambda ns: ns.update(body))
            known.of[cls] = quiet
        return quiet


def quiet_filesystem(cls: type, args: Sequence[Any], options: Mapping[str, Any]) -> Any:
    """A filesystem of fsspec class ``cls``, made with ``args`` and ``options``, trying once.

    Of a subclass of ``cls`` whose only difference is ``retries = 1``. fsspec
    caches it as it caches ``cls``'s filesystems, by options, apart from them.
    It pickles as this call, so that an unpickled copy tries once too.
    """
    return _quiet_class(cls)(*args, **options)


def _is_s3fs(cls: type) -> bool:
    return any(f"{c.__module__}.{c.__name__}" == "s3fs.core.S3FileSystem" for c in cls.__mro__)


async def _set_session_without_expect(
    self: Any, refresh: bool = False, kwargs: dict[str, Any] | None = None
) -> Any:
    """s3fs's ``set_session``, and no ``Expect: 100-continue`` from the client it makes.

    botocore asks for ``100 Continue`` before the body of every upload of a
    file-like body, and aiohttp waits for it with no timeout at all: a store
    that took the connection and never answered held a write for good (the
    read timeout starts only once the body is sent). Without it the body goes
    at once, and the read timeout bounds the wait for the answer.
    """
    s3 = await self._toolkit_quiet_of.set_session(self, refresh, kwargs or {})
    if self.__dict__.get("_toolkit_no_expect") is not s3:
        import botocore.handlers

        s3.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
        self._toolkit_no_expect = s3
    return s3


def _reduce_quiet(fs: Any) -> tuple[Any, ...]:
    return quiet_filesystem, (fs._toolkit_quiet_of, fs.storage_args, fs.storage_options)


def _rebuilt(inner: Any, **changes: Any) -> Any:
    kwargs: dict[str, Any] = {
        "prefix": inner.prefix,
        "config": inner.config,
        "client_options": inner.client_options,
        "retry_config": inner.retry_config,
    }
    if getattr(inner, "credential_provider", None) is not None:
        kwargs["credential_provider"] = inner.credential_provider
    kwargs.update(changes)
    return type(inner)(**{k: v for k, v in kwargs.items() if v is not None})


# --------------------------------------------------------------------------- coordination


def supports_atomic_create(base: Store) -> bool:
    """Whether a client store can create a key atomically (put-if-absent)."""
    if isinstance(base, (LocalStore, MemoryStore)):
        return True
    if isinstance(base, FsspecStore):
        proto = base.fs.protocol
        return "s3" in ((proto,) if isinstance(proto, str) else tuple(proto))
    if _is_object_store(base):
        # object_store's PutMode::Create: If-None-Match on S3 and GCS, If-None-Match
        # on Azure, O_EXCL locally, a check under lock in memory.
        kind = type(base.store).__name__  # type: ignore[attr-defined]
        return kind in {"S3Store", "GCSStore", "AzureStore", "LocalStore", "MemoryStore"}
    return False


async def create_if_absent(base: Store, key: str, data: bytes) -> bool:
    """Create ``key`` (relative to the store) with ``data`` unless it exists; True if created.

    For the client stores (fsspec S3, obstore); local and memory stores are
    handled by the caller. A concurrent conditional write to the same key (S3's
    409 ConditionalRequestConflict) is retried until one answer is final.
    """
    for attempt in range(8):
        try:
            if isinstance(base, FsspecStore):
                await pipe_file_create(base.fs, f"{base.path.rstrip('/')}/{key}", data)
            else:
                import obstore

                await obstore.put_async(base.store, key, data, mode="create")  # type: ignore[attr-defined]
            return True
        except Exception as e:
            answer = _conditional_answer(e)
            if answer == "exists":
                return False
            if answer == "conflict":
                await asyncio.sleep(backoff(attempt, base=0.02, cap=1.0))
                continue
            raise
    return False


def _conditional_answer(exc: BaseException) -> str | None:
    """``"exists"`` (412, the key is there), ``"conflict"`` (409, retry) or None.

    Read from the status and code each client's errors carry, along the
    exception's causes: never from digits in its text, which also holds the key
    (a lease's generation ``000000000412.json``). Azure answers a create of a
    key that is there 409 ``BlobAlreadyExists``: "exists", not a conflict.
    """
    e: BaseException | None = exc
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        status, code = http_status(e)
        text = str(e)
        if (
            type(e).__name__ in ("AlreadyExistsError", "PreconditionError")
            or status == 412
            or code in ("PreconditionFailed", "BlobAlreadyExists", "ConditionNotMet")
            or "PreconditionFailed" in text
            or "At least one of the pre" in text
        ):
            return "exists"
        if (
            status == 409
            or code == "ConditionalRequestConflict"
            or "ConditionalRequestConflict" in text
        ):
            return "conflict"
        e = e.__cause__ or e.__context__
    return None


def listed_self(base: Store) -> str | None:
    """The name a listing of ``base`` may return for the store's own directory, never a key.

    s3fs's ``find`` (behind zarr's ``FsspecStore.list_prefix``) lists a prefix,
    finds nothing, then asks ``info`` of the path: when another job's first
    keys landed in between, ``info`` answers "a directory" and ``find`` returns
    the path itself, even with ``withdirs=False`` (s3fs 2025.x). Through
    ``FsspecStore`` that comes out as the store's path, unprefixed: a key no
    store holds (a real one would be ``<path>/<path>``), which a caller would
    take for a stranger's file.
    """
    return base.path.strip("/") if isinstance(base, FsspecStore) else None


async def list_keys(base: Store, prefix: str) -> list[str]:
    """Keys under ``prefix``: one LIST request per 1,000 keys, no directory probing.

    s3fs's ``find`` probes directories (an empty prefix costs a LIST, a HEAD and
    a LIST, in turn); obstore's listing (what zarr's ``ObjectStore`` uses)
    already is one paginated LIST, as is any other store's own.
    """
    keys, _ = await _listed(base, prefix, None)
    return keys


async def list_page(base: Store, prefix: str) -> tuple[list[str], bool]:
    """The keys under ``prefix`` that one LIST request answers, and whether that is all.

    For a caller that reads a small store whole in one round trip and falls
    back to narrower listings when it is not small. A listing that costs no
    request (a directory, memory) is always whole.
    """
    return await _listed(base, prefix, PAGE)


#: Keys one LIST request answers (S3's and Azure's page).
PAGE = 1000


async def _listed(base: Store, prefix: str, limit: int | None) -> tuple[list[str], bool]:
    if isinstance(base, FsspecStore) and _is_s3fs(type(base.fs)):
        root = base.path.rstrip("/")
        bucket, _, key_root = f"{root}/{prefix}".partition("/")
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            out = await call_s3(base.fs, "list_objects_v2", Bucket=bucket, Prefix=key_root, **token)
            keys += [o["Key"] for o in out.get("Contents", [])]
            if not out.get("IsTruncated"):
                whole = True
                break
            if limit is not None:
                whole = False
                break
            token = {"ContinuationToken": out["NextContinuationToken"]}
        strip = len(root.partition("/")[2]) + 1 if "/" in root else 0
        # A key ending in "/" is a folder placeholder (some tools make them): no Zarr key.
        return [k[strip:] for k in keys if not k.endswith("/")], whole
    own = listed_self(base)
    if limit is None or isinstance(base, LocalStore | MemoryStore):
        return [k async for k in base.list_prefix(prefix) if k != own], True
    # obstore's listing (zarr's ObjectStore) asks for the next page only when its keys
    # are read: the page's last key is not read, so no second request goes out.
    found: list[str] = []
    async for k in base.list_prefix(prefix):
        if k == own:
            continue
        if len(found) == limit - 1:
            return found, False
        found.append(k)
    return found, True
