"""A round-trip ledger: every request an operation sent, and the ones it waited for in turn.

Over a slow link an operation costs about its *serial* round trips times the
latency, however many requests it sends concurrently. The ledger takes the
requests :class:`~toolkit.testing.FaultProxy` saw (each with the moment it
reached the proxy and the moment its answer left) and derives that count from
their intervals alone, with no clock arithmetic on the latency:

- request ``b`` *follows* ``a`` when ``b`` reached the proxy after ``a``'s answer
  left it (``a.end < b.start``): the client may have waited for ``a``'s answer
  before sending ``b``. Requests whose intervals overlap were in flight together;
- the **critical path** is the longest chain of requests each following the one
  before it. Its length is the number of serial round trips: however the
  requests were caused, an operation whose requests form a chain of ``k`` took at
  least ``k`` latencies, and one whose longest chain is ``k`` sent them in ``k``
  *waves* (Mirsky's theorem: the fewest sets of mutually overlapping requests
  that cover them all is the longest chain). A request's wave is the length of
  the longest chain ending with it; the requests of one wave were all in flight
  at one moment (intervals that pairwise overlap share a point), and the wave's
  width is how many went out together at that step.

Example
-------
>>> from toolkit.testing.ledger import Request, critical_path, summarize
>>> reqs = [
...     Request("GET", "/data/x.zarr/zarr.json", "", 0.0, 1.0, 200),
...     Request("PUT", "/data/x.zarr/a/c/0", "", 1.1, 2.0, 200),
...     Request("PUT", "/data/x.zarr/b/c/0", "", 1.2, 2.1, 200),
...     Request("PUT", "/data/x.zarr/zarr.json", "", 2.2, 3.0, 200),
... ]
>>> [r.key for r in critical_path(reqs)]
['x.zarr/zarr.json', 'x.zarr/b/c/0', 'x.zarr/zarr.json']
>>> print(summarize(reqs, root="x.zarr"))
4 requests, 3 serial round trips, 3.00 s from first to last
  by method: PUT 3, GET 1
  by kind: metadata 2, chunk 2
  critical path:
    1. GET zarr.json
    2. PUT b/c/0  [wave of 2: 2 chunk]
    3. PUT zarr.json
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from toolkit.io.keys import is_metadata

__all__ = ["Ledger", "LedgerSummary", "Request", "critical_path", "key_kind", "summarize", "waves"]

RESERVED = ".toolkit/"


@dataclass(frozen=True)
class Request:
    """One request the proxy answered (or hung up on).

    ``path`` is URL-decoded, with the bucket (``/data/x.zarr/zarr.json``);
    ``query`` the query string as sent (``list-type=2&prefix=x.zarr%2F``;
    :attr:`params` decodes it). ``sent`` and ``received`` are the bodies' bytes.
    ``start`` is the proxy's ``time.monotonic()`` when the request reached it
    (its head read), ``end`` when its answer was written (or its connection
    reset); ``status`` 0 means no answer reached the client.
    """

    method: str
    path: str
    query: str
    start: float
    end: float
    status: int
    sent: int = 0
    received: int = 0

    @property
    def bucket(self) -> str:
        """The first path segment."""
        return self.path.lstrip("/").partition("/")[0]

    @property
    def key(self) -> str:
        """The object's key in its bucket ("" for a request to the bucket itself)."""
        return self.path.lstrip("/").partition("/")[2]

    @property
    def params(self) -> dict[str, str]:
        """The query string's parameters."""
        return dict(parse_qsl(self.query, keep_blank_values=True))

    @property
    def kind(self) -> str:
        """What the request is about (:func:`key_kind`)."""
        return key_kind(self.method, self.key, self.query)

    def label(self, root: str = "") -> str:
        """``"METHOD key"``, the key relative to ``root`` (``/`` for ``root`` itself).

        A listing is ``LIST prefix``; a status other than 2xx follows in
        parentheses: ``GET time/c/0 (404)``.
        """
        key, p = self.key, self.params
        if not key and ("list-type" in p or "prefix" in p):
            text = f"LIST {_strip(p.get('prefix', ''), root) or '/'}"
        elif not key and "delete" in p:
            text = f"{self.method} (bulk delete)"
        elif not key and self.query:
            text = f"{self.method} ?{self.query}"
        else:
            text = f"{self.method} {_strip(key, root) or '/'}"
        return text if 200 <= self.status < 300 else f"{text} ({self.status})"


def _strip(key: str, root: str) -> str:
    root = root.strip("/")
    if root and (key == root or key.startswith(root + "/")):
        return key[len(root) :].lstrip("/")
    return key


def key_kind(method: str, key: str, query: str = "") -> str:
    """The kind of key a request is about.

    ``"listing"``, ``"bulk delete"``, ``"bucket"``; ``"metadata"`` (a
    ``zarr.json``, ``.zarray``/``.zattrs``/``.zgroup``/``.zmetadata``),
    ``"chunk"`` (data and coordinate chunks); and toolkit's coordination keys
    under ``.toolkit/``: ``"claim"`` (the creation lease,
    ``coord/leases/create.json``), ``"lease"`` (other leases), ``"commit log"``
    (``coord/log/``), ``"log request"`` (``coord/pending/``), ``"coordination"``
    (other ``coord/`` keys), ``"record"`` (``writes/``), ``"manifest"``,
    ``"resume"``, ``"toolkit other"``; else ``"other"``.
    """
    if not key:
        params = dict(parse_qsl(query, keep_blank_values=True))
        if "list-type" in params or "prefix" in params or (method == "GET" and query):
            return "listing"
        if "delete" in params:
            return "bulk delete"
        return "bucket"
    name = key.rpartition("/")[2]
    metadata = is_metadata(key)
    at = key.find(RESERVED) if key.startswith(RESERVED) else key.find("/" + RESERVED) + 1
    if key.startswith(RESERVED) or at > 0:
        rest = key[at + len(RESERVED) :]
        if metadata and "/" not in rest:  # zarr looking for a group member named .toolkit
            return "metadata"
        # A directory's own key ("writes", as s3fs asks for it) counts as its contents.
        top, _, sub = rest.partition("/")
        if top == "coord":
            if sub.startswith("leases/create.json"):
                return "claim"
            part = sub.partition("/")[0]
            return {"leases": "lease", "log": "commit log", "pending": "log request"}.get(
                part, "coordination"
            )
        kinds = {
            "writes": "record",
            "manifest": "manifest",
            "manifest.json": "manifest",
            "resume": "resume",
        }
        return kinds.get(top, "toolkit other")
    if metadata:
        return "metadata"
    if key.startswith("c/") or "/c/" in key or name.replace(".", "").isdigit() or name == "c":
        return "chunk"
    return "other"


def waves(requests: Sequence[Request]) -> list[int]:
    """Each request's wave: the length of the longest chain of requests ending with it.

    ``a`` precedes ``b`` in a chain when ``a.end < b.start``. No request of a
    wave precedes another, so they were all in flight at one moment; the waves,
    in order, are the fewest such sets covering every request, and their number
    is the longest chain's length. O(n log n).
    """
    order = sorted(range(len(requests)), key=lambda i: requests[i].start)
    by_end = sorted(range(len(requests)), key=lambda i: requests[i].end)
    ends = [requests[i].end for i in by_end]
    level = [0] * len(requests)
    best = 0  # the longest chain among requests already ended (prefix maximum over by_end)
    done = 0  # how many of by_end are folded into ``best``
    for i in order:
        # Every request ended before this one's start: their levels are final, since
        # each of them started (and was visited) before it ended, so before this start.
        upto = bisect.bisect_left(ends, requests[i].start)
        while done < upto:
            best = max(best, level[by_end[done]])
            done += 1
        level[i] = best + 1
    return level


def critical_path(requests: Sequence[Request]) -> list[Request]:
    """The longest chain of requests, each started after the one before it ended, in order.

    Its length is the number of serial round trips the requests took. Of several
    longest chains, the one ending last (and, going back, the predecessor that
    ended last) is given: the requests the operation actually waited for.
    """
    if not requests:
        return []
    level = waves(requests)
    top = max(level)
    i = max((j for j in range(len(requests)) if level[j] == top), key=lambda j: requests[j].end)
    chain = [requests[i]]
    while level[i] > 1:
        want, start = level[i] - 1, requests[i].start
        i = max(
            (j for j in range(len(requests)) if level[j] == want and requests[j].end < start),
            key=lambda j: requests[j].end,
        )
        chain.append(requests[i])
    return chain[::-1]


@dataclass
class LedgerSummary:
    """What a ledger holds, for people: counts, the critical chain and the waves.

    ``chain`` is the critical path; ``widths[k]`` the number of requests of wave
    ``k + 1`` (sent together at that serial step); ``wall`` the seconds from the
    first request's start to the last one's end.
    """

    requests: int
    round_trips: int
    wall: float
    by_method: dict[str, int]
    by_kind: dict[str, int]
    chain: list[Request]
    widths: list[int]
    wave_kinds: list[dict[str, int]] = field(default_factory=list)
    root: str = ""

    def lines(self) -> list[str]:
        """The chain, one line per serial round trip: step, wave width, request."""
        out = []
        for k, (r, w) in enumerate(zip(self.chain, self.widths, strict=True), 1):
            also = ""
            if w > 1:
                kinds = ", ".join(f"{n} {kind}" for kind, n in self.wave_kinds[k - 1].items())
                also = f"  [wave of {w}: {kinds}]"
            out.append(f"{k:3d}. {r.label(self.root)}{also}")
        return out

    def __str__(self) -> str:
        head = (
            f"{self.requests} requests, {self.round_trips} serial round trips, "
            f"{self.wall:.2f} s from first to last\n"
            f"  by method: {_fmt(self.by_method)}\n  by kind: {_fmt(self.by_kind)}\n"
            f"  critical path:"
        )
        return "\n".join([head, *("  " + line for line in self.lines())])


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def summarize(requests: Iterable[Request], root: str = "") -> LedgerSummary:
    """Counts by method and kind, the critical path, and each wave's width.

    ``root`` (a key prefix such as ``"x.zarr"``) is left out of the labels.
    """
    reqs = list(requests)
    level = waves(reqs)
    nwaves = max(level, default=0)
    widths = [0] * nwaves
    kinds: list[Counter[str]] = [Counter() for _ in range(nwaves)]
    for r, lv in zip(reqs, level, strict=True):
        widths[lv - 1] += 1
        kinds[lv - 1][r.kind] += 1
    chain = critical_path(reqs)
    return LedgerSummary(
        requests=len(reqs),
        round_trips=len(chain),
        wall=(max(r.end for r in reqs) - min(r.start for r in reqs)) if reqs else 0.0,
        by_method=dict(Counter(r.method for r in reqs).most_common()),
        by_kind=dict(Counter(r.kind for r in reqs).most_common()),
        chain=chain,
        widths=widths,
        wave_kinds=[dict(c.most_common()) for c in kinds],
        root=root,
    )


class Ledger:
    """The requests recorded while it was open (:meth:`~toolkit.testing.FaultProxy.ledger`).

    Thread-safe.

    ``requests`` is a copy, in the order the answers left.
    """

    def __init__(self, opened: float | None = None) -> None:
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self.closed = False
        #: When it opened (``time.monotonic()``): requests that began before are not its own.
        self.opened = time.monotonic() if opened is None else opened

    def add(self, request: Request) -> None:
        """Record one request that began since it opened (nothing once it is closed)."""
        with self._lock:
            if not self.closed and request.start >= self.opened:
                self._requests.append(request)

    def close(self) -> None:
        """Stop recording."""
        with self._lock:
            self.closed = True

    @property
    def requests(self) -> list[Request]:
        """The requests recorded so far, in the order their answers left."""
        with self._lock:
            # Recorded by the proxy's threads a moment after each answer left, so not
            # always in that order.
            return sorted(self._requests, key=lambda r: (r.end, r.start))

    def __len__(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def round_trips(self) -> int:
        """The number of serial round trips: the critical path's length."""
        return max(waves(self.requests), default=0)

    def critical_path(self) -> list[Request]:
        """:func:`critical_path` of the requests recorded."""
        return critical_path(self.requests)

    def summary(self, root: str = "") -> LedgerSummary:
        """:func:`summarize` of the requests recorded."""
        return summarize(self.requests, root)
