"""The commit protocol: a log in the store, written by elected committers in batches.

Many jobs that share nothing but a store agree on one sequence of changes (the
ranges appenders reserve, where partitions live, Icechunk commits) through a
log of numbered JSON entries under ``.toolkit/coord/log/``. An entry is written
with an atomic create, so two committers can never both write entry *n*; the
loser reads what won and tries again (Delta Lake's protocol).

Jobs do not each write an entry: that costs every writer a retry per other
writer, N²/2 attempts in all. Instead (group commit):

1. a job puts its request at ``pending/<job>.json`` (its own key: no contention);
2. it polls for the log entry that answers it; when none comes for a moment, it
   tries to become the committer by taking the ``committer`` lease;
3. the committer takes every pending request, decides them all against the
   current state, applies their effect (for example, grows the arrays), and
   writes *one* entry holding the new state and every answer; then it removes
   the pending requests it answered and looks for more.

A committer that dies loses its lease when it expires, and the next one picks
up the requests still pending. A request already answered in the log is never
decided twice.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from toolkit._util import backoff
from toolkit.errors import LeaseTimeoutError
from toolkit.state.leases import Coordinator, Lease, default_ttl, job_id, numbered

__all__ = ["Batch", "CommitLog", "CommitStats"]

_KEEP_ENTRIES = 1000


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
        Run after the requests are decided and before the entry is written
        (e.g. growing the arrays): when a job reads its answer, it has happened.
        What it returns is added to every answer that is not an error or a
        conflict. If it raises, every request of the batch is answered with
        the error and the state stays as it was.
    """

    state: dict[str, Any]
    answers: dict[str, dict[str, Any]]
    effect: Callable[[], dict[str, Any] | None] | None = None


Decide = Callable[[dict[str, Any], list[dict[str, Any]]], Batch]


@dataclass
class CommitStats:
    """What one job's :meth:`CommitLog.submit` cost: the figures group commit is about."""

    attempts: int = 0
    """Log entries this job tried to create (as committer)."""
    commits: int = 0
    """Log entries it created."""
    batched: int = 0
    """Requests (its own and others') answered by the entries it created."""
    polls: int = 0
    seconds: float = 0.0
    entry: int = 0
    """The entry that answered it."""


@dataclass
class CommitLog:
    """A group-committed log in the store.

    Parameters
    ----------
    coord : Coordinator
        The store's coordination prefix.
    decide : callable
        ``decide(state, requests) -> Batch``: the committer's decision for a
        batch. ``state`` is the previous entry's state (``{}`` at first); each
        request carries the ``job`` that sent it.
    lease_ttl : float
        Seconds before a silent committer is replaced.
    """

    coord: Coordinator
    decide: Decide
    lease_ttl: float = field(default_factory=lambda: min(15.0, default_ttl()))
    stats: CommitStats = field(default_factory=CommitStats)

    def head(self) -> tuple[int, dict[str, Any]]:
        """The latest entry's number and state (0 and ``{}`` for an empty log)."""
        seqs = numbered(self.coord.list("log/"))
        for seq in sorted(seqs, reverse=True):
            entry = self.coord.get(f"log/{seq:012d}.json")
            if entry is not None:
                return seq, entry.get("state", {})
        return 0, {}

    def submit(
        self, request: Mapping[str, Any], *, job: str | None = None, timeout: float = 600.0
    ) -> dict[str, Any]:
        """Put ``request`` in the log and wait for its answer (committing batches meanwhile).

        Returns
        -------
        dict
            The answer the committer decided for this request.

        Raises
        ------
        toolkit.errors.LeaseTimeoutError
            If no answer came within ``timeout`` seconds.
        """
        t0 = time.time()
        job = job or job_id()
        seq, _ = self.head()
        self.coord.put(f"pending/{job}.json", {**request, "job": job, "submitted": _stamp()})
        self.stats = CommitStats()
        next_seq = seq + 1
        quiet_since = time.monotonic()
        lease = Lease(self.coord, "committer", job, ttl=self.lease_ttl)
        attempt = 0
        while True:
            entry = self.coord.get(f"log/{next_seq:012d}.json")
            self.stats.polls += 1
            if entry is not None:
                answer = entry.get("answers", {}).get(job)
                if answer is not None:
                    self.stats.entry = next_seq
                    self.stats.seconds = time.time() - t0
                    return dict(answer)
                next_seq += 1
                quiet_since = time.monotonic()
                attempt = 0
                continue
            # Rarely (an extra GET): has our place in the log been cleaned up meanwhile?
            if (
                self.stats.polls % 32 == 0
                and next_seq > 1
                and self.coord.get(f"log/{next_seq - 1:012d}.json") is None
            ):
                # Our place in the log was cleaned up while we slept: find the head again.
                next_seq = max(1, self.head()[0] + 1 - 64)
            # Nothing new: after a moment of quiet, try to commit the pending batch.
            patience = min(0.25, 0.01 * 2**attempt)
            if time.monotonic() - quiet_since >= patience and lease.try_acquire():
                try:
                    self._commit_rounds(lease)
                finally:
                    lease.release()
                quiet_since = time.monotonic()
                continue
            if time.time() - t0 > timeout:
                raise LeaseTimeoutError(
                    f"no committer answered job {job} within {timeout:g} s "
                    f"(log entry {next_seq} never came)"
                )
            time.sleep(backoff(attempt, base=0.005, cap=0.25))
            attempt += 1

    def _commit_rounds(self, lease: Lease, rounds: int = 64) -> None:
        """As committer: decide every pending request, a batch per entry, while they come."""
        for _ in range(rounds):
            if not lease.held:
                return
            keys = [k for k in self.coord.list("pending/") if k.endswith(".json")]
            if not keys:
                return
            requests = [r for r in self.coord.get_many(keys) if r is not None]
            seq, state = self.head()
            # Requests answered by an entry whose pending keys were not yet removed
            # (its committer died in between) must not be decided twice.
            answered = set(state.get("_recent", []))
            todo = [r for r in requests if r["job"] not in answered]
            if todo:
                todo.sort(key=lambda r: (r.get("submitted", ""), r["job"]))
                batch = self.decide(state, todo)
                answers = batch.answers
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
                else:
                    new_state = dict(batch.state)
                recent = [r["job"] for r in todo] + list(state.get("_recent", []))
                new_state["_recent"] = recent[:_KEEP_ENTRIES]
                entry = {
                    "seq": seq + 1,
                    "committer": lease.owner,
                    "at": _stamp(),
                    "jobs": [r["job"] for r in todo],
                    "answers": answers,
                    "state": new_state,
                }
                self.stats.attempts += 1
                if not lease.held or not self.coord.create(f"log/{seq + 1:012d}.json", entry):
                    continue  # another committer won this entry: decide again on its state
                self.stats.commits += 1
                self.stats.batched += len(todo)
                if seq + 1 > _KEEP_ENTRIES and (seq + 1) % 64 == 0:
                    old = [
                        n for n in numbered(self.coord.list("log/")) if n <= seq + 1 - _KEEP_ENTRIES
                    ]
                    self.coord.delete_many([f"log/{n:012d}.json" for n in old])
            self.coord.delete_many(keys)


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).isoformat()
