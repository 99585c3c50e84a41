"""Real servers for testing object-store code.

An S3-compatible server, Azure's own Blob Storage emulator (Azurite), and a
fault-injecting proxy in front of either, all on 127.0.0.1.

Nothing here mocks a client: requests travel over real sockets through the
proxy to moto's S3 server or to Azurite, so retries, throttling and dropped
connections are exercised exactly as against a cloud store.

Example
-------
>>> from toolkit.testing import FaultProxy, S3Server
>>> with S3Server() as s3, FaultProxy(s3.endpoint_url, latency=0.02, rate=100) as proxy:
...     s3.create_bucket("data")
...     opts = s3.storage_options(proxy.url)
...     # toolkit.to_zarr(ds, "s3://data/x.zarr", storage_options=opts)
...     with proxy.ledger() as ledger:  # every request, with its start and end
...         _ = s3.client(proxy.url).list_objects_v2(Bucket="data")
>>> ledger.round_trips  # the serial round trips (toolkit.testing.ledger)
1
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.utils
import hashlib
import hmac
import http.client
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote, unquote, urlsplit

from toolkit.io.metrics import Counters
from toolkit.testing.ledger import Ledger, Request

__all__ = ["AzuriteServer", "FaultProxy", "ProxyCounts", "S3Server", "find_azurite"]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
    }
)
_SLOWDOWN = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_INTERNAL = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)
# Azure Blob Storage's answers to the same (its error codes, and the x-ms-error-code header).
_AZURE_BUSY = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
    b"<Message>The server is busy.</Message></Error>"
)
_AZURE_INTERNAL = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>InternalError</Code>'
    b"<Message>The server encountered an internal error. Please retry the request."
    b"</Message></Error>"
)


# moto checks a conditional PUT's precondition (If-None-Match, If-Match) and then
# stores the object in two steps, with other requests' threads in between: two
# concurrent creates-if-absent could both succeed, where S3 decides them atomically
# (two "w-" creators both won their claim, about 1 race in 20 under a heavy load).
# Conditional PUTs are made atomic here, one at a time, as S3 makes them.
_SERVER_MAIN = """
import sys, logging, threading
logging.disable(logging.CRITICAL)
from moto.s3.responses import S3Response
from moto.server import ThreadedMotoServer
_conditional = threading.Lock()
_put_object = S3Response.put_object
def put_object(self):
    if self.headers.get("If-None-Match") or self.headers.get("If-Match"):
        with _conditional:
            return _put_object(self)
    return _put_object(self)
S3Response.put_object = put_object
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the parent closes stdin (or dies)
server.stop()
"""


class S3Server:
    """moto's S3 server on 127.0.0.1, on a free port, in a process of its own.

    Use as a context manager; ``endpoint_url`` is where it listens. In its
    own process the server does not compete with the code under test for the
    GIL, so request rates and latencies are the server's, not an artefact of
    sharing one interpreter. The process exits when the context closes, and
    also when its parent dies (its standard input closes).

    Parameters
    ----------
    timeout : float
        Seconds to wait for the server to start.
    """

    scheme = "s3"
    dialect: Literal["s3", "azure"] = "s3"

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.endpoint_url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER_MAIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self._proc.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self._proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(self.timeout)
        if not ready or not ready[0].strip().isdigit():
            self.__exit__()
            raise RuntimeError(f"moto's S3 server did not start within {self.timeout:g} s")
        self.endpoint_url = f"http://127.0.0.1:{int(ready[0])}"
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def client(self, endpoint_url: str | None = None) -> Any:
        """A botocore S3 client for the server (or for a proxy in front of it)."""
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def create_bucket(self, name: str) -> None:
        """Create a bucket (directly on the server, bypassing any proxy)."""
        self.client().create_bucket(Bucket=name)

    def storage_options(self, endpoint_url: str | None = None, **extra: Any) -> dict[str, Any]:
        """fsspec/s3fs options reaching the server, or a proxy at ``endpoint_url``."""
        return {
            "key": "testing",
            "secret": "testing",
            "endpoint_url": endpoint_url or self.endpoint_url,
            "client_kwargs": {"region_name": "us-east-1"},
            **extra,
        }


#: The emulator's one account and its key: Azurite's documented, well-known defaults
#: (they open nothing but a local emulator, and every Azure SDK ships them).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
#: The REST API version of the emulator's own requests (container creation).
_AZURE_API_VERSION = "2021-08-06"
#: Where ``dev`` installs Azurite in a source checkout (``npm install --prefix``).
_REPO_AZURITE = Path(__file__).resolve().parents[2] / ".cache" / "azurite"


def find_azurite() -> str | None:
    """The ``azurite-blob`` executable to run, or None where there is none.

    ``TOOLKIT_AZURITE`` (a path, set by ``./dev test``), then ``azurite-blob``
    on ``PATH``, then the repository's own install under ``.cache/azurite``
    (``npm install --prefix .cache/azurite azurite``).
    """
    given = os.environ.get("TOOLKIT_AZURITE", "").strip()
    if given:
        return given if os.access(given, os.X_OK) else None
    on_path = shutil.which("azurite-blob")
    if on_path:
        return on_path
    local = _REPO_AZURITE / "node_modules" / ".bin" / "azurite-blob"
    return str(local) if os.access(local, os.X_OK) else None


# Azurite is a node process, which does not notice its parent's death: this keeper,
# a Python process in a session of its own, runs it and ends it when its standard input
# closes (the parent closed it, or died), as moto's server above does, then removes its
# directory. Both are in the keeper's process group, which the parent kills last
# whatever happened.
_AZURITE_KEEPER = """
import os, shutil, signal, subprocess, sys
log = open(os.path.join(sys.argv[1], "azurite.log"), "wb")
proc = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
sys.stdin.read()  # until the parent closes stdin (or dies)
proc.send_signal(signal.SIGINT)  # Azurite's own clean shutdown
try:
    proc.wait(timeout=5)
except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
shutil.rmtree(sys.argv[1], ignore_errors=True)  # also when the parent died
"""
_LISTENING = re.compile(rb"listens on http://127\.0\.0\.1:(\d+)")


class AzuriteServer:
    """Azure's Blob Storage emulator, Azurite, on 127.0.0.1, on a free port.

    Use as a context manager. It serves the emulator's well-known account
    (``devstoreaccount1``) in memory, from a process of its own in a temporary
    directory, and answers as Azure Blob Storage does: SharedKey and SAS
    signatures, ``If-None-Match: *`` and ``If-Match`` on PUT (409
    ``BlobAlreadyExists``, 412 ``ConditionNotMet``), blob batches. It stops
    when the context closes, and also when its parent dies; nothing is left
    behind (the process group is killed, the directory removed).

    Containers are created with :meth:`create_container` (obstore, like
    object_store, cannot create them). URLs are ``az://<container>/<path>``,
    with :meth:`storage_options`.

    Parameters
    ----------
    binary : str, optional
        The ``azurite-blob`` executable. By default ``TOOLKIT_AZURITE``, then
        ``azurite-blob`` on ``PATH``, then the repository's ``.cache/azurite``
        (``toolkit.testing.servers.find_azurite``).
    timeout : float
        Seconds to wait for it to answer.

    Attributes
    ----------
    endpoint_url : str
        ``http://127.0.0.1:<port>``, where it listens: a proxy's target.
    account, account_key : str
        The emulator's well-known account (``devstoreaccount1``) and its key.

    Raises
    ------
    FileNotFoundError
        When no ``azurite-blob`` is found (``npm install azurite``).

    Examples
    --------
    ::

        with AzuriteServer() as az, FaultProxy(az.endpoint_url, dialect="azure") as proxy:
            az.create_container("data")
            opts = az.storage_options(proxy.url)
            toolkit.to_zarr(ds, "az://data/x.zarr", storage_options=opts)
    """

    scheme = "az"
    dialect: Literal["s3", "azure"] = "azure"
    account = AZURITE_ACCOUNT
    account_key = AZURITE_KEY

    def __init__(self, binary: str | None = None, timeout: float = 60.0) -> None:
        self.binary = binary or find_azurite()
        self.timeout = timeout
        self.endpoint_url = ""
        self._proc: subprocess.Popen[str] | None = None
        self._dir: str | None = None

    def __enter__(self) -> Self:
        if not self.binary:
            raise FileNotFoundError(
                "azurite-blob not found: set TOOLKIT_AZURITE, put it on PATH, or "
                f"npm install --prefix {_REPO_AZURITE} azurite"
            )
        self._dir = tempfile.mkdtemp(prefix="toolkit-azurite-")
        log = os.path.join(self._dir, "azurite.log")
        args = [
            self.binary,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",  # the system picks a free port; the log says which
            "--inMemoryPersistence",  # nothing on disk: the temporary directory stays empty
            "--extentMemoryLimit",
            "2048",  # MB; its default is half the machine
            "--disableTelemetry",
            "--disableProductStyleUrl",  # the account is the path's first part, whatever the host
            "--skipApiVersionCheck",  # obstore may speak a newer API than this Azurite
            "--loose",
            "--silent",
            # Azure keeps an idle connection for minutes; Azurite's default is 5 s, and a
            # request sent as it closes one would fail for a reason Azure does not have.
            "--blobKeepAliveTimeout",
            "600",
        ]
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _AZURITE_KEEPER, self._dir, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self._dir,
            text=True,
            start_new_session=True,
        )
        try:
            port = self._wait_listening(log)
            self.endpoint_url = f"http://127.0.0.1:{port}"
            self._wait_answering()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_listening(self, log: str) -> int:
        deadline = time.monotonic() + self.timeout
        assert self._proc is not None
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                m = _LISTENING.search(Path(log).read_bytes())
                if m:
                    return int(m[1])
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            said = Path(log).read_text(errors="replace").strip()[-2000:]
        raise RuntimeError(
            f"Azurite ({self.binary}) did not start within {self.timeout:g} s: "
            f"{said or 'it said nothing'}"
        )

    def _wait_answering(self) -> None:
        """Until a request gets an HTTP answer (any: the server is up), within the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self._request("GET", "", {"comp": "list"})
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            # Whatever the keeper managed: nothing of the group outlives the context.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- requests of its own, signed with the account key ---------------------------

    def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One request straight to the emulator, SharedKey-signed: its status and body.

        A dozen lines of HMAC instead of the ``azure-storage-blob`` package: a test
        dependency for the one request obstore cannot send (create a container).
        """
        query = dict(query or {})
        headers = {
            "x-ms-date": email.utils.formatdate(usegmt=True),
            "x-ms-version": _AZURE_API_VERSION,
            **(headers or {}),
        }
        # The path-style URL of the emulator: /<account>/<container>...
        resource = f"/{self.account}/{path}".rstrip("/")
        canonical = "".join(
            f"{k.lower()}:{v}\n"
            for k, v in sorted(headers.items())
            if k.lower().startswith("x-ms-")
        )
        canonical += f"/{self.account}{resource}"
        canonical += "".join(f"\n{k}:{v}" for k, v in sorted(query.items()))
        # VERB, then the 11 standard headers this request leaves empty (Content-Length of
        # an empty body included), then the x-ms- headers and the resource.
        to_sign = f"{method}\n" + "\n" * 11 + canonical
        key = base64.b64decode(self.account_key)
        signature = base64.b64encode(
            hmac.new(key, to_sign.encode(), hashlib.sha256).digest()
        ).decode()
        headers["Authorization"] = f"SharedKey {self.account}:{signature}"
        target = quote(resource) + (
            "?" + "&".join(f"{k}={quote(v)}" for k, v in query.items()) if query else ""
        )
        host, _, port = urlsplit(self.endpoint_url).netloc.partition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request(method, target, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def create_container(self, name: str, *, public: bool = False) -> None:
        """Create a container (directly on the emulator, bypassing any proxy).

        ``public``: anyone may read its blobs and list it, unsigned (``anon=True``).
        """
        headers = {"x-ms-blob-public-access": "container"} if public else {}
        status, body = self._request("PUT", name, {"restype": "container"}, headers)
        if status != 201:
            raise RuntimeError(f"Azurite refused to create container {name!r}: {status} {body!r}")

    def create_bucket(self, name: str) -> None:
        """:meth:`create_container`, by the name :class:`~toolkit.testing.S3Server` gives it."""
        self.create_container(name)

    # -- what a client needs --------------------------------------------------------

    def blob_endpoint(self, endpoint_url: str | None = None) -> str:
        """The account's blob endpoint on the emulator, or on a proxy at ``endpoint_url``."""
        return f"{(endpoint_url or self.endpoint_url).rstrip('/')}/{self.account}"

    def connection_string(self, endpoint_url: str | None = None) -> str:
        """An Azure connection string for the emulator (or a proxy at ``endpoint_url``)."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};"
            f"AccountKey={self.account_key};BlobEndpoint={self.blob_endpoint(endpoint_url)};"
        )

    def storage_options(self, endpoint_url: str | None = None, **extra: Any) -> dict[str, Any]:
        """fsspec/adlfs options reaching the emulator, or a proxy at ``endpoint_url``.

        A connection string, as adlfs and every Azure SDK take one for Azurite;
        toolkit reads it for obstore (the account, its key, the endpoint).
        """
        return {"connection_string": self.connection_string(endpoint_url), **extra}

    def sas_token(self, permissions: str = "rwdlac", hours: float = 2.0) -> str:
        """An account SAS for the blob service, valid ``hours`` from now (``sv=...&sig=...``)."""
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)
        fields = {
            "sv": _AZURE_API_VERSION,
            "ss": "b",
            "srt": "sco",
            "sp": permissions,
            "se": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "spr": "https,http",
        }
        # account, permissions, services, resource types, start, expiry, IP, protocol,
        # version, encryption scope, and a final newline (versions from 2020-12-06 on).
        to_sign = "\n".join(
            [
                self.account,
                fields["sp"],
                fields["ss"],
                fields["srt"],
                "",
                fields["se"],
                "",
                fields["spr"],
                fields["sv"],
                "",
                "",
            ]
        )
        key = base64.b64decode(self.account_key)
        sig = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
        return "&".join(f"{k}={quote(v, safe='')}" for k, v in {**fields, "sig": sig}.items())


@dataclass
class ProxyCounts(Counters):
    """What the proxy did, by kind and by HTTP method.

    ``forwarded`` counts the requests that reached the server, ``lost`` among
    them; ``stalled`` ones were held before being forwarded (or hung up on, if
    the proxy closed meanwhile). ``resets``, ``errors`` and ``throttled`` never
    reached the server.
    """

    requests: int = 0
    forwarded: int = 0
    throttled: int = 0
    resets: int = 0
    errors: int = 0
    lost: int = 0
    stalled: int = 0
    by_method: dict[str, int] = field(default_factory=dict)

    def count_method(self, method: str) -> None:
        """One more request of HTTP ``method``."""
        with self._lock:
            self.by_method[method] = self.by_method.get(method, 0) + 1


class _TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.capacity = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops the SYNs of a client that opens
    # dozens of connections at once; each is retried a second later. An object
    # store has no such limit, so the proxy must not have one either.
    request_queue_size = 1024


class FaultProxy:
    r"""An HTTP proxy on 127.0.0.1 that forwards to ``target`` and injects faults.

    Parameters
    ----------
    target : str
        ``http://host:port`` of the server behind it.
    latency : float
        Seconds added before every forwarded request.
    rate : float, optional
        Requests per second allowed (token bucket); above it the proxy answers
        ``503 SlowDown`` as S3 does (``503 ServerBusy`` in the Azure dialect; no
        body for HEAD).
    burst : float, optional
        Bucket size (default: one second's worth of ``rate``).
    reset_prob, error_prob : float
        Probability that a request's connection is reset without an answer, or
        that it is answered ``500 InternalError`` (neither reaches the server).
    lost_prob : float
        Probability that a request is forwarded, lands on the server, and then
        the client's connection is reset without the server's answer: the
        request did what it asked (a conditional create created the object),
        and the client cannot tell.
    stall_prob, stall : float
        Probability that a request is held ``stall`` seconds before it is
        forwarded (a stalled connection; closing the proxy hangs up on it).
    retry_after : float, optional
        Seconds sent as ``Retry-After`` with every ``503 SlowDown``.
    seed : int
        Seed of the fault draws.
    dialect : {"s3", "azure"}
        Whose answers the injected errors are: S3's (``503 SlowDown``, ``500
        InternalError``) or Azure Blob Storage's (``503 ServerBusy``, ``500
        InternalError``, with ``x-ms-error-code``). A server's ``dialect``
        attribute says which it speaks.
    only : str, optional
        A regular expression searched (``re.search``) in every request's
        target, URL-decoded: its path and query string, e.g.
        ``/bucket/x.zarr/.toolkit/coord/head.json`` or
        ``/bucket?list-type=2&prefix=x.zarr/.toolkit/``. Only matching requests
        get faults (resets, errors, lost answers, stalls and ``503 SlowDown``
        above ``rate``); the others pass untouched (``latency`` still applies to
        every request). ``r"\.toolkit/"`` faults toolkit's coordination documents
        and records, and leaves the data alone.

    Attributes
    ----------
    counts : ProxyCounts
        What the proxy did.
    log : list
        ``(time.monotonic(), status, "METHOD /path")`` of every answer, in order
        (status 0: no answer reached the client, a reset or a lost answer).
    faults : list
        ``(time.monotonic(), kind, "METHOD /path")`` of every fault injected, in
        order; ``kind`` is ``"reset"``, ``"error"``, ``"throttled"``, ``"lost"``
        (with the server's status: ``"lost 200"``) or ``"stalled"``.

    Notes
    -----
    :meth:`ledger` records every request with its start and end, from which
    ``toolkit.testing.ledger`` derives the serial round trips of an operation.
    """

    def __init__(
        self,
        target: str,
        *,
        latency: float = 0.0,
        rate: float | None = None,
        burst: float | None = None,
        reset_prob: float = 0.0,
        error_prob: float = 0.0,
        retry_after: float | None = None,
        seed: int = 0,
        only: str | None = None,
        lost_prob: float = 0.0,
        stall_prob: float = 0.0,
        stall: float = 0.0,
        dialect: Literal["s3", "azure"] = "s3",
    ) -> None:
        if dialect not in ("s3", "azure"):
            raise ValueError(f"dialect is 's3' or 'azure', got {dialect!r}")
        self.dialect = dialect
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.latency = latency
        self.bucket = _TokenBucket(rate, burst or max(rate, 1.0)) if rate else None
        self.reset_prob, self.error_prob = reset_prob, error_prob
        self.lost_prob = lost_prob
        self.stall_prob, self.stall = stall_prob, stall
        self.only = re.compile(only) if only is not None else None
        self.retry_after = retry_after
        self.counts = ProxyCounts()
        self.log: list[tuple[float, int, str]] = []
        self.faults: list[tuple[float, str, str]] = []
        self.closed = False
        self._ledgers: list[Ledger] = []
        self._ledgers_lock = threading.Lock()
        # The requests being answered now (their start): a ledger closing waits for those
        # that began while it was open to be recorded.
        self._answering: dict[int, float] = {}
        self._closing = threading.Event()  # wakes stalled requests when the proxy closes
        self._random = random.Random(seed)
        self._random_lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def set_rate(self, rate: float | None, burst: float | None = None) -> None:
        """Change the limit from now on (None: no limit); the bucket starts full."""
        self.bucket = _TokenBucket(rate, burst or max(rate, 1.0)) if rate else None

    @contextlib.contextmanager
    def ledger(self) -> Iterator[Ledger]:
        """Record every request answered (or hung up on) while the context is open.

        Each :class:`~toolkit.testing.ledger.Request` holds the method, the
        URL-decoded path, the query string, the moment the request reached the proxy
        and the moment its answer left (``time.monotonic()``), and the status
        (0: reset or lost). Ledgers may overlap (each gets the requests of its
        own span) and are safe to read from any thread; the latency, applied
        before forwarding, is inside each request's interval, as on a real link.

        >>> with S3Server() as s3, FaultProxy(s3.endpoint_url, latency=0.02) as proxy:
        ...     s3.create_bucket("data")
        ...     client = s3.client(proxy.url)
        ...     with proxy.ledger() as ledger:
        ...         _ = client.put_object(Bucket="data", Key="a", Body=b"1")
        ...         client.get_object(Bucket="data", Key="a")["Body"].read()
        b'1'
        >>> print(ledger.summary())
        2 requests, 2 serial round trips, ... s from first to last
          by method: PUT 1, GET 1
          by kind: other 2
          critical path:
            1. PUT a
            2. GET a
        """
        ledger = Ledger()
        with self._ledgers_lock:
            self._ledgers.append(ledger)
        try:
            yield ledger
        finally:
            # A client has its answer a moment before the proxy records it: wait (a
            # second at most: a held request may never end) for the requests that
            # began while the ledger was open, so that none is left out.
            closing = time.monotonic()
            deadline = closing + 1.0
            while time.monotonic() < deadline:
                with self._ledgers_lock:
                    if not any(t < closing for t in self._answering.values()):
                        break
                time.sleep(0.002)
            with self._ledgers_lock:
                self._ledgers.remove(ledger)
            ledger.close()

    def _record(
        self,
        command: str,
        target: str,
        start: float,
        status: int,
        sent: int,
        received: int,
        end: float | None = None,
    ) -> None:
        with self._ledgers_lock:
            ledgers = list(self._ledgers)
        if not ledgers:
            self._answered()
            return
        path, _, query = target.partition("?")
        end = time.monotonic() if end is None else end
        req = Request(command, unquote(path), query, start, end, status, sent, received)
        for ledger in ledgers:
            ledger.add(req)
        self._answered()

    def _answering_now(self) -> None:
        with self._ledgers_lock:
            self._answering[threading.get_ident()] = time.monotonic()

    def _answered(self) -> None:
        with self._ledgers_lock:
            self._answering.pop(threading.get_ident(), None)

    def _draw(self) -> float:
        with self._random_lock:
            return self._random.random()

    def _faulted(self, target: str) -> bool:
        """Whether the request at ``target`` (its path and query) may get faults."""
        return self.only is None or self.only.search(unquote(target)) is not None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # An answer leaves in two writes (head, then body): with Nagle's algorithm
            # the body waits for the client's delayed ACK of the head, adding tens of
            # milliseconds to every request that no store has.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
                proxy.log.append((time.monotonic(), status, f"{self.command} {self.path}"))
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                if not any(k.lower() == "content-length" for k, _ in headers):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                proxy._record(
                    self.command,
                    self.path,
                    self._started,
                    status,
                    self._sent,
                    0 if self.command == "HEAD" else len(body),
                    time.monotonic(),
                )

            def _fault(self, kind: str) -> None:
                proxy.faults.append((time.monotonic(), kind, f"{self.command} {self.path}"))

            def _reset(self) -> None:
                proxy.log.append((time.monotonic(), 0, f"{self.command} {self.path}"))
                # RST instead of FIN: the client sees "connection reset by peer".
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                self.connection.close()
                proxy._record(self.command, self.path, self._started, 0, self._sent, 0)

            def _handle(self) -> None:
                self._started, self._sent = time.monotonic(), 0  # its head has been read
                proxy._answering_now()
                body = self._body()
                self._sent = len(body)
                if proxy.closed:  # a kept-alive connection outliving the proxy: hang up
                    self.close_connection = True
                    return
                proxy.counts.add(requests=1)
                proxy.counts.count_method(self.command)
                faulted = proxy._faulted(self.path)
                if faulted and proxy.reset_prob and proxy._draw() < proxy.reset_prob:
                    proxy.counts.add(resets=1)
                    self._fault("reset")
                    self._reset()
                    return
                azure = proxy.dialect == "azure"
                if faulted and proxy.error_prob and proxy._draw() < proxy.error_prob:
                    proxy.counts.add(errors=1)
                    self._fault("error")
                    failed = [("Content-Type", "application/xml")]
                    if azure:
                        failed.append(("x-ms-error-code", "InternalError"))
                    self._reply(500, _AZURE_INTERNAL if azure else _INTERNAL, failed)
                    return
                bucket = proxy.bucket
                if faulted and bucket is not None and not bucket.take():
                    proxy.counts.add(throttled=1)
                    self._fault("throttled")
                    slow = [("Content-Type", "application/xml")]
                    if azure:
                        slow.append(("x-ms-error-code", "ServerBusy"))
                    if proxy.retry_after is not None:
                        slow.append(("Retry-After", f"{proxy.retry_after:g}"))
                    self._reply(503, _AZURE_BUSY if azure else _SLOWDOWN, slow)
                    return
                lose = faulted and bool(proxy.lost_prob) and proxy._draw() < proxy.lost_prob
                if faulted and proxy.stall_prob and proxy._draw() < proxy.stall_prob:
                    proxy.counts.add(stalled=1)
                    self._fault("stalled")
                    if proxy._closing.wait(proxy.stall):  # the proxy closed meanwhile
                        self.close_connection = True
                        return
                if proxy.latency:
                    time.sleep(proxy.latency)
                conn = http.client.HTTPConnection(*proxy.target, timeout=60)
                try:
                    # The body is forwarded whole: its length replaces the client's header
                    # (under any spelling; node's HTTP parser, Azurite's, answers 400 to a
                    # request carrying two).
                    headers = {
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
                    }
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    try:
                        conn.request(self.command, self.path, body=body or None, headers=headers)
                        resp = conn.getresponse()
                        data = resp.read()
                    except OSError:  # the server behind is gone: a gateway error, as a proxy
                        self.close_connection = True
                        self._reply(502, b"", [])
                        return
                    out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
                    if self.command != "HEAD":
                        out = [(k, v) for k, v in out if k.lower() != "content-length"]
                    proxy.counts.add(forwarded=1)
                    if lose:  # it landed; the answer goes nowhere
                        proxy.counts.add(lost=1)
                        self._fault(f"lost {resp.status}")
                        self._reset()
                        return
                    self._reply(resp.status, data, out)
                finally:
                    conn.close()

            def _serve(self) -> None:
                try:
                    self._handle()
                finally:
                    proxy._answered()  # recorded, or hung up on without a record

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        return Handler

    def __enter__(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name="toolkit-fault-proxy"
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.closed = True
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
