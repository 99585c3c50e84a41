"""The commit protocol: a log in the store of numbered entries, each written by one create.

Many jobs that share nothing but a store agree on one sequence of decisions
(the rows appenders reserve, where partitions live, Icechunk commits) through
a log of numbered JSON entries under ``.toolkit/coord/log/``. An entry is
written with create-if-absent, so two writers can never both write entry *n*;
the loser reads what won and decides again (Delta Lake's protocol). Each entry
holds the whole state after it, so the newest entry is all a job reads.

Two ways to the log, one decision function:

- **Directly** (a lone job, the common case): read the head, decide the job's
  own request, create the next entry. One round trip when nobody else
  commits. ``log/HEAD.json`` is a copy of the newest entry that each writer
  leaves behind it: reading it costs one GET instead of a listing and a GET. It
  may lag; a stale head only makes the create fail, and the job reads forward.
- **Group commit** (under contention, and for decisions with an effect): a job
  that lost the direct race twice puts its request at ``pending/<job>.json``
  (its own key: no contention) and waits for the entry that answers it; when
  none comes for a moment, it takes the ``committer`` lease, decides every
  pending request in one batch, applies the batch's effect, and writes *one*
  entry for all of them. N contending jobs cost a few entries, not N²/2
  attempts.

A request is never decided twice: an answered request's job is kept in the
state's ``_recent`` list, the decision function sees the state (a job that
reserved already finds its reservation there), and a committer that died
before removing answered requests leaves nothing to redo. A committer that
dies loses its lease when it expires; the next one picks up what is pending.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any

from toolkit._util import Background, backoff
from toolkit.coordination.leases import (
    Coordinator,
    Lease,
    default_ttl,
    gather_limited,
    job_id,
    numbered,
)
from toolkit.errors import LeaseTimeoutError
from toolkit.io.reserved import RESERVED_PREFIX
from toolkit.upstream import sync

__all__ = ["HEAD", "Batch", "CommitLog", "CommitStats", "log_head_key"]

_KEEP_ENTRIES = 1000
_KEEP_RECENT = 1000


def _direct_attempts() -> int:
    """Direct tries before group commit: ``TOOLKIT_LOG_DIRECT_ATTEMPTS``, or 2 (0: group only)."""
    return int(os.environ.get("TOOLKIT_LOG_DIRECT_ATTEMPTS", "2"))


HEAD = "log/HEAD.json"


def log_head_key(group: str | None = None) -> str:
    """The store key of a group's log head copy (the log lives in the coordination prefix)."""
    root = f"{group.strip('/')}/" if group and group.strip("/") else ""
    return f"{root}{RESERVED_PREFIX}/coord/{HEAD}"


@dataclass
class Batch:
    """What a committer decides for one batch of requests.

    Attributes
    ----------
    state : dict
        The new state (JSON), written into the entry.
    answers : dict
        Per job id, its answer (JSON); ``{"error": ...}`` rejects the request.
    effect : callable, optional
        Run after the requests are decided and before the entry is written,
        under the committer lease (e.g. an Icechunk commit): when a job reads
        its answer, it has happened. What it returns is added to every answer
        that is not an error or a conflict. If it raises, every request of the
        batch is answered with the error and the state stays as it was.
    """

    state: dict[str, Any]
    answers: dict[str, dict[str, Any]]
    effect: Callable[[], dict[str, Any] | None] | None = None


Decide = Callable[[dict[str, Any], list[dict[str, Any]]], Batch]


@dataclass
class CommitStats:
    """What one job's :meth:`CommitLog.submit` cost: the figures group commit is about."""

    attempts: int = 0
    """Log entries this job tried to create (directly or as committer)."""
    commits: int = 0
    """Log entries it created."""
    batched: int = 0
    """Requests (its own and others') answered by the entries it created."""
    polls: int = 0
    seconds: float = 0.0
    entry: int = 0
    """The entry that answered it."""
    direct: bool = False
    """Whether it was answered by an entry it created directly (no batch)."""


@dataclass
class CommitLog:
    """A log of decisions in the store.

    Parameters
    ----------
    coord : Coordinator
        The store's coordination prefix.
    decide : callable
        ``decide(state, requests) -> Batch``: the decision for a batch.
        ``state`` is the previous entry's state (``{}`` at first); each request
        carries the ``job`` that sent it.
    lease_ttl : float
        Seconds before a silent committer is replaced.
    """

    coord: Coordinator
    decide: Decide
    lease_ttl: float = field(default_factory=lambda: min(15.0, default_ttl()))
    stats: CommitStats = field(default_factory=CommitStats)
    # The head's copy after a direct commit, left off the job's path (see settle()).
    _hints: Background = field(default_factory=lambda: Background("log-head"), repr=False)

    # -- reading ------------------------------------------------------------

    async def ahead(
        self, hint: Mapping[str, Any] | EllipsisType | None = ..., forward: bool = True
    ) -> tuple[int, dict[str, Any]]:
        """The newest entry's number and state (0 and ``{}`` for an empty log).

        ``hint``: the head's copy as already read (None: absent); ``forward=False``
        trusts it without reading on. A direct commit may: its entry after the
        hint is a conditional create, which fails when the hint lagged.
        """
        if hint is ...:
            hint = await self.coord.aget(HEAD)
        if hint is not None and isinstance(hint.get("seq"), int):
            seq, state = hint["seq"], dict(hint.get("state") or {})
            if not forward:
                return seq, state
            # The copy may lag: read forward until the next entry is absent.
            while True:
                nxt = await self.coord.aget(_entry(seq + 1))
                if nxt is None:
                    return seq, state
                seq, state = seq + 1, dict(nxt.get("state") or {})
        seqs = numbered(k for k in await self.coord.alist("log/") if k != HEAD)
        for seq in sorted(seqs, reverse=True):
            entry = await self.coord.aget(_entry(seq))
            if entry is not None:
                return seq, dict(entry.get("state") or {})
        return 0, {}

    def head(self) -> tuple[int, dict[str, Any]]:
        """The newest entry's number and state (0 and ``{}`` for an empty log)."""
        return sync(self.ahead())

    async def _after(self, seq: int, state: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The head, knowing entry ``seq`` holds ``state``: read forward only."""
        while True:
            nxt = await self.coord.aget(_entry(seq + 1))
            if nxt is None:
                return seq, state
            seq, state = seq + 1, dict(nxt.get("state") or {})

    # -- writing ------------------------------------------------------------

    def _entry_doc(
        self,
        seq: int,
        committer: str,
        todo: list[dict[str, Any]],
        answers: Mapping[str, Any],
        state: Mapping[str, Any],
        before: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Entry ``seq``: the batch's answers keyed by request id, and the state after it."""
        recent = [r["req"] for r in todo] + list(before.get("_recent", []))
        new_state = {**state, "_recent": recent[:_KEEP_RECENT]}
        return {
            "seq": seq,
            "committer": committer,
            "at": _stamp(),
            "jobs": [r["job"] for r in todo],
            "answers": {r["req"]: answers.get(r["job"], {}) for r in todo},
            "state": new_state,
        }

    def settle(self, timeout: float = 30.0) -> None:
        """Wait for the head's copies left in the background (a hint: failures are ignored)."""
        self._hints.settle(timeout, raise_errors=False)

    def _leave_head(self, seq: int, entry: dict[str, Any]) -> None:
        """After a direct commit: the head's copy, sent while the job goes on.

        A hint only (readers read forward past a lagging copy, and a direct
        commit's entry is a conditional create): the job need not wait for it.
        """
        self._hints.run(lambda: sync(self._landed(seq, entry)))

    async def _landed(self, seq: int, entry: dict[str, Any]) -> None:
        """Entry ``seq`` was created: leave the head's copy, and prune old entries now and then."""
        await self.coord.aput(HEAD, entry)
        if seq > _KEEP_ENTRIES and seq % 64 == 0:
            old = [n for n in numbered(await self.coord.alist("log/")) if n <= seq - _KEEP_ENTRIES]
            await gather_limited([self.coord.adelete(_entry(n)) for n in old])

    def _direct(
        self, request: dict[str, Any], seq: int, state: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, int, dict[str, Any]]:
        """One direct attempt: decide alone on ``state`` and create entry ``seq + 1``.

        Returns the answer (None if another writer took the entry) and the head
        as now known. The decision runs outside the event loop (it may read the
        store the first time it meets a partition coordinate).
        """
        job, req = request["job"], request["req"]
        if req in state.get("_recent", ()):
            return None, seq, state  # answered before: the caller finds that answer
        batch = self.decide(state, [request])
        if batch.effect is not None:
            # An effect runs under the committer lease only: through the group.
            raise _NeedsCommitter
        answer = batch.answers.get(job, {})
        entry = self._entry_doc(seq + 1, job, [request], batch.answers, batch.state, state)
        self.stats.attempts += 1
        if self.coord.create(_entry(seq + 1), entry) is False:
            won = self.coord.get(_entry(seq + 1)) or {}
            if req in won.get("answers", {}):  # ours after all (its answer was lost)
                self.stats.commits += 1
                self.stats.direct = True
                self._leave_head(seq + 1, won)
                return dict(won["answers"][req]), seq + 1, dict(won.get("state") or {})
            return None, *sync(self._after(seq, state))
        self.stats.commits += 1
        self.stats.batched += 1
        self.stats.direct = True
        self._leave_head(seq + 1, entry)
        return dict(answer), seq + 1, entry["state"]

    def submit(
        self,
        request: Mapping[str, Any],
        *,
        job: str | None = None,
        timeout: float = 600.0,
        direct: bool = True,
        head: Mapping[str, Any] | EllipsisType | None = ...,
    ) -> dict[str, Any]:
        """Decide ``request`` in the log and return its answer.

        Parameters
        ----------
        request : mapping
            What the job asks (JSON); ``job`` is added.
        job : str, optional
            The job's identity (a new :func:`~toolkit.coordination.leases.job_id` by default).
        timeout : float
            Seconds to wait for an answer.
        direct : bool
            Try the direct way first (off for decisions with an effect).
        head : mapping or None, optional
            The head's copy (``log/HEAD.json``) as the caller read it (None:
            absent), to save reading it again. A stale one costs one failed
            create.

        Raises
        ------
        toolkit.errors.LeaseTimeoutError
            If no answer came within ``timeout`` seconds.
        """
        t0 = time.monotonic()
        job = job or job_id()
        # The request's own id: the log answers each request once; the decision
        # function answers each *job* once (a rerun finds what its first run got).
        req = {**request, "job": job, "req": uuid.uuid4().hex}
        self.stats = CommitStats()
        seq, state = sync(self.ahead(head, forward=not direct))
        for attempt in range(_direct_attempts() if direct else 0):
            try:
                answer, seq, state = self._direct(req, seq, state)
            except _NeedsCommitter:
                break
            if answer is not None:
                self.stats.entry, self.stats.seconds = seq, time.monotonic() - t0
                return answer
            time.sleep(backoff(attempt, base=0.005, cap=0.05))
        answer = self._grouped(req, seq, t0, timeout)
        self.stats.seconds = time.monotonic() - t0
        return answer

    def _grouped(self, req: dict[str, Any], seq: int, t0: float, timeout: float) -> dict[str, Any]:
        """Group commit: put the request, wait for the entry answering it, commit meanwhile."""
        job, rid = req["job"], req["req"]
        self.coord.put(f"pending/{rid}.json", {**req, "submitted": _stamp()})
        next_seq = seq + 1
        quiet_since = time.monotonic()
        lease = Lease(self.coord, "committer", job, ttl=self.lease_ttl)
        attempt = 0
        while True:
            entry = self.coord.get(_entry(next_seq))
            self.stats.polls += 1
            if entry is not None:
                answer = entry.get("answers", {}).get(rid)
                if answer is not None:
                    self.stats.entry = next_seq
                    return dict(answer)
                next_seq += 1
                quiet_since = time.monotonic()
                attempt = 0
                continue
            if (
                self.stats.polls % 32 == 0
                and next_seq > 1
                and self.coord.get(_entry(next_seq - 1)) is None
            ):
                # Our place in the log was pruned while we slept: find the head again.
                next_seq = max(1, self.head()[0] + 1 - 64)
            # Nothing new: after a moment of quiet, try to commit the pending batch.
            patience = min(0.25, 0.01 * 2 ** min(attempt, 8))
            if time.monotonic() - quiet_since >= patience and lease.try_acquire():
                try:
                    self._commit_rounds(lease)
                finally:
                    lease.release()
                quiet_since = time.monotonic()
                continue
            if time.monotonic() - t0 > timeout:
                raise LeaseTimeoutError(
                    f"no committer answered job {job} within {timeout:g} s "
                    f"(log entry {next_seq} never came)"
                )
            time.sleep(backoff(attempt, base=0.005, cap=0.25))
            attempt += 1

    def _commit_rounds(self, lease: Lease, rounds: int = 64) -> None:
        """As committer: decide every pending request, a batch per entry, while they come.

        A request the decision leaves unanswered (it must wait for another job)
        stays pending; a round that answers nothing ends the committer's turn.
        """
        for _ in range(rounds):
            if not lease.held:
                return
            keys = [k for k in self.coord.list("pending/") if k.endswith(".json")]
            if not keys:
                return
            got = self.coord.get_many(keys)
            requests = [r for r in got if r is not None]
            seq, state = self.head()
            # Requests answered by an entry whose pending keys were not yet removed
            # (its committer died in between) must not be decided twice.
            answered = set(state.get("_recent", []))
            todo = [r for r in requests if r.get("req") not in answered and "job" in r]
            stale = [
                k for k, r in zip(keys, got, strict=True) if r is None or r.get("req") in answered
            ]
            if todo:
                todo.sort(key=lambda r: (r.get("submitted", ""), r["req"]))
                batch = self.decide(state, todo)
                answers = batch.answers
                todo = [r for r in todo if r["job"] in answers]
                if not todo:
                    self.coord.delete_many(stale)
                    return  # every request waits for another job: let them poll
                new_state = dict(batch.state)
                if batch.effect is not None:
                    try:
                        extra = batch.effect() or {}
                        new_state = dict(batch.state)  # the effect may add to it
                    except Exception as e:
                        # Nothing of the batch took effect: say so to each job (they
                        # must not wait forever), and keep the previous state.
                        why = f"the commit failed: {type(e).__name__}: {e}"
                        answers = {r["job"]: {"error": why} for r in todo}
                        new_state, extra = dict(state), {}
                    for answer in answers.values():
                        if "error" not in answer and "conflict" not in answer:
                            answer.update(extra)
                entry = self._entry_doc(seq + 1, lease.owner, todo, answers, new_state, state)
                self.stats.attempts += 1
                if not lease.held or not self.coord.create(_entry(seq + 1), entry):
                    continue  # another writer won this entry: decide again on its state
                self.stats.commits += 1
                self.stats.batched += len(todo)
                sync(self._landed(seq + 1, entry))
                done = {r["req"] for r in todo}
                stale += [k for k, r in zip(keys, got, strict=True) if r and r.get("req") in done]
            self.coord.delete_many(stale)


class _NeedsCommitter(Exception):
    """The decision has an effect: it is made by the elected committer."""


def _entry(seq: int) -> str:
    return f"log/{seq:012d}.json"


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).isoformat()
