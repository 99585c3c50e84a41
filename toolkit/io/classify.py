"""What a failed store request means: throttled (slow down), transient (retry), or fatal.

Each client says it differently: botocore and aiohttp carry an HTTP status and
an error code as attributes, obstore in its message, and a reset connection is
an ``OSError`` (:func:`http_status`). :func:`classify_error` reads them all,
through an exception's causes; :func:`retry_after` finds the seconds a store
asked to be left alone for.
"""

from __future__ import annotations

import asyncio
import errno
import re
from collections.abc import Mapping
from typing import Literal

__all__ = [
    "ACCESS_HINT",
    "ErrorClass",
    "classify_error",
    "http_status",
    "refused",
    "retry_after",
]

ErrorClass = Literal["throttled", "transient", "fatal"]

_THROTTLE_STATUS = frozenset({429, 503})
_TRANSIENT_STATUS = frozenset({500, 502, 504, 408})
_THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "ServerBusy",
        "503",
    }
)
_TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "RequestTimeout", "500", "502", "504"}
)


def http_status(exc: BaseException) -> tuple[int | None, str | None]:
    """The HTTP status and error code an exception carries, if any.

    botocore and aiohttp carry them as attributes; obstore's exceptions in the
    message (``Server returned non-2xx status code: 503 ...<Code>SlowDown</Code>``).
    """
    if type(exc).__module__.startswith("obstore"):
        text = str(exc)
        status = _OBSTORE_STATUS.search(text)
        code = _XML_CODE.search(text)
        return (int(status[1]) if status else None), (code[1] if code else None)
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        meta = response.get("ResponseMetadata") or {}
        err = response.get("Error") or {}
        status = meta.get("HTTPStatusCode")
        return (int(status) if status else None), (str(err["Code"]) if err.get("Code") else None)
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    return (int(status) if isinstance(status, int) else None), None


_OBSTORE_STATUS = re.compile(r"non-2xx status code: (\d{3})")
_XML_CODE = re.compile(r"<Code>(\w+)</Code>")
# obstore (reqwest) errors that mean the request or its answer was lost on the way.
_OBSTORE_TRANSIENT = re.compile(
    r"error sending request|error decoding response body|connection (?:closed|reset)|"
    r"timed out|operation timed out|incomplete message|broken pipe|"
    # reqwest's connect, read and whole-request timeouts, in obstore's "Debug source"
    r"kind: Timeout|TimedOut",
    re.I,
)
# OSError numbers of a request lost on the way: s3fs turns a 500 (InternalError) into
# EREMOTEIO, and a socket timeout is ETIMEDOUT. (Where there is no EREMOTEIO, s3fs uses
# EIO, which is also its number for any error it does not know: not taken as transient.)
_TRANSIENT_ERRNOS = frozenset(
    n
    for n in (getattr(errno, "EREMOTEIO", None), errno.ETIMEDOUT, errno.ECONNRESET, errno.EPIPE)
    if n is not None
)
# Retryable by name: botocore's and aiohttp's connection errors and timeouts (a
# timeout's class need not subclass TimeoutError: botocore's do not).
_TRANSIENT_NAMES = frozenset(
    {
        "HTTPClientError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ConnectionTimeoutError",
        "SocketTimeoutError",
        "ClientOSError",
        "ResponseParserError",
    }
)


def classify_error(exc: BaseException) -> ErrorClass:
    """Whether a store error is a throttling answer, worth retrying, or final.

    The exception and its causes are inspected: botocore responses (status and
    code), obstore's errors (status, code and reqwest's wording in the
    message), HTTP client errors, connection resets and timeouts. Throttling:
    503/SlowDown and 429. Transient: 500/502/504 (s3fs's ``EREMOTEIO``),
    dropped connections, and the timeouts of either client (botocore's
    ``ReadTimeoutError`` and ``ConnectTimeoutError``, aiohttp's
    ``ServerTimeoutError``, ``asyncio.TimeoutError``, obstore's connect, read
    and request timeouts). Everything else (403, 400, a missing bucket, a bug)
    is final.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    transient = False
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        status, code = http_status(e)
        if status in _THROTTLE_STATUS or code in _THROTTLE_CODES:
            return "throttled"
        if isinstance(e, OSError) and e.errno == errno.EBUSY:
            return "throttled"  # s3fs's translation of SlowDown
        if "reduce your request rate" in str(e):
            return "throttled"
        if status is not None and (status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES):
            transient = True
        elif status is not None and 400 <= status < 500:
            return "fatal"
        if isinstance(e, ConnectionError | TimeoutError | asyncio.TimeoutError):
            transient = True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            transient = True
        if status is None and type(e).__module__.startswith("obstore"):
            transient = transient or bool(_OBSTORE_TRANSIENT.search(str(e)))
        if type(e).__name__ in _TRANSIENT_NAMES:
            transient = True
        e = e.__cause__ or e.__context__
    return "transient" if transient else "fatal"


_RETRY_AFTER = re.compile(r"retry-after(?:-ms)?[\"']?\s*[:=]\s*[\"']?(\d+(?:\.\d+)?)", re.I)


def retry_after(exc: BaseException) -> float | None:
    """Seconds a throttling answer asked the client to wait (``Retry-After``), if any.

    Read from botocore's response headers (``Retry-After``, Azure's
    ``x-ms-retry-after-ms``), from an ``retry_after`` attribute, or from the
    text of the error along its causes. HTTP dates are not understood.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        value = getattr(e, "retry_after", None)
        if isinstance(value, int | float) and value > 0:
            return float(value)
        response = getattr(e, "response", None)
        if isinstance(response, Mapping):
            headers = (response.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
            headers = {str(k).lower(): v for k, v in headers.items()}
            for name, scale in (("x-ms-retry-after-ms", 1e-3), ("retry-after", 1.0)):
                try:
                    if name in headers:
                        return max(0.0, float(headers[name]) * scale) or None
                except ValueError:
                    pass
        m = _RETRY_AFTER.search(str(e))
        if m:
            ms = "-ms" in m[0].lower()
            return float(m[1]) / (1000 if ms else 1) or None
        e = e.__cause__ or e.__context__
    return None


#: The clients' names for "no or bad credentials", found anywhere along an error's causes.
_REFUSALS = frozenset(
    {
        "UnauthenticatedError",
        "PermissionDeniedError",
        "NoCredentialsError",
        "PartialCredentialsError",
        "CredentialRetrievalError",
        "ProfileNotFound",
    }
)
ACCESS_HINT = (
    "Give credentials as the AWS CLI reads them (AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, ~/.aws/credentials) or in the options (CLI: --profile NAME, "
    "-o key=... -o secret=...; Python: storage_options), or read public data anonymously "
    "(CLI: --anon; Python: storage_options={'anon': True})"
)
"""What to do when a store refuses access for want of credentials (said by every refusal)."""


def refused(exc: BaseException) -> bool:
    """Whether a client refused for want of credentials (no HTTP status to tell it by)."""
    e: BaseException | None = exc
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ in _REFUSALS:
            return True
        e = e.__cause__ or e.__context__
    return False
