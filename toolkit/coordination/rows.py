"""Where rows go: the commit log's decisions for appends and partition overwrites.

Pure functions of the log's state and a batch of requests (no I/O but the one
callback that reads the stored partitions the first time a coordinate is met),
so that every committer decides the same, and the rules can be tested alone.

The state, per dimension, as the log keeps it (JSON):

- ``dims[dim]``: the end of the rows handed out (the next free row);
- ``reservations``: rows handed out and not yet visible to readers, in order.
  Each has an ``id``, the ``job`` and the lease (``lease``, ``host``, ``pid``)
  that show whether the job still runs, ``start``/``stop``, and for a
  partition overwrite the ``labels`` it adds (``[[label, start, stop], ...]``);
- ``partitions[coord]``: each partition label's rows (visible or reserved), as
  ``[start, stop]``; a label whose rows are in several runs (an append added
  rows of it after other labels' rows) as ``[start, stop, start, stop, ...]``,
  which no partition overwrite may take (see :func:`partition_problem`);
- ``landed``: the recent jobs whose rows became visible (job -> dim, start,
  stop), so that a rerun of a job that landed is told so, not given new rows.

A reservation leaves ``reservations`` when a request reports a visible length
(``visible``) past its end: its rows are published. A job judged dead whose
reservation is the last of its dimension can be *released*: its rows are
handed out again (they were never visible). A dead job's reservation with
others after it cannot be taken back; the job that publishes past it marks it
in the store (a record that readers refuse, naming the job), and the dead
job's rerun fills it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from toolkit.errors import PartitionError

__all__ = [
    "KEEP_LANDED",
    "decide_rows",
    "outstanding",
    "partition_problem",
    "runs_of",
    "shift_out",
]

KEEP_LANDED = 2000
"""How many landed jobs the state remembers (a rerun of an older one is told by its record)."""

ReadPartitions = Callable[[str, str, int], dict[str, list[int]]]


def runs_of(labels: Sequence[str]) -> list[tuple[str, int]]:
    """Consecutive runs of equal labels: ``[(label, length), ...]``."""
    out: list[tuple[str, int]] = []
    for lab in labels:
        if out and out[-1][0] == lab:
            out[-1] = (lab, out[-1][1] + 1)
        else:
            out.append((lab, 1))
    return out


def outstanding(state: Mapping[str, Any], dim: str | None = None) -> list[dict[str, Any]]:
    """The reservations not yet visible, in row order (of ``dim``, or every dimension)."""
    res = [dict(r) for r in state.get("reservations", []) if dim is None or r["dim"] == dim]
    return sorted(res, key=lambda r: (r["dim"], r["start"]))


def _starts(start: int, members: Sequence[tuple[str, int]]) -> list[int]:
    out = []
    for _, n in members:
        out.append(start)
        start += n
    return out


def partition_problem(
    labels: Mapping[str, Sequence[int]], runs: Sequence[Sequence[Any]], coord: str
) -> str | None:
    """Why a partition overwrite bringing ``runs`` cannot replace the labels in place.

    ``labels`` are the stored rows of each label (runs of ``[start, stop]``),
    ``runs`` the job's ``[[label, n], ...]``. A label in several runs of rows
    cannot be replaced (its rows are not one block to write over, and writing
    one of its runs would leave the others: the label twice); a label cannot
    change its number of rows in place. None: it can.
    """
    split = [
        f"{lab!r} (rows "
        + ", ".join(f"{a}-{b}" for a, b in zip(rows[::2], rows[1::2], strict=True))
        + ")"
        for lab, _ in runs
        if len(rows := labels.get(str(lab), ())) > 2
    ]
    if split:
        return (
            f"partitions of {coord!r} are not one contiguous run of rows in the store: "
            + "; ".join(split)
            + " (rows of them were appended after other partitions' rows); "
            "overwrite-partitions needs each label's rows together: rewrite the dataset "
            f"sorted by {coord!r}"
        )
    bad = [
        f"{lab!r} has {have[1] - have[0]} rows in the store, the job brings {n}"
        for lab, n in runs
        if (have := labels.get(str(lab))) is not None and have[1] - have[0] != int(n)
    ]
    if bad:
        return (
            "partitions cannot change size in place: "
            + "; ".join(bad)
            + f". Bring exactly the stored rows of each {coord!r} partition"
        )
    return None


def _place(labels: dict[str, list[int]], runs: Sequence[Sequence[Any]], start: int) -> None:
    """Record ``runs`` (``[[label, n], ...]``) as rows from ``start`` in ``labels``.

    A label whose rows end where its run begins grows (a batch's members, or
    an append of more rows of the last label, continue it); one whose rows end
    elsewhere gets a second run (an append of rows of an earlier label). Rows
    recorded already are not recorded twice: the store read after a
    publication holds rows that the log's state still has reserved.
    """
    pos = start
    for lab, n in runs:
        end = pos + int(n)
        old = labels.get(str(lab), [])
        spans = sorted([*zip(old[::2], old[1::2], strict=True), (pos, end)])
        kept: list[int] = []
        for a, b in spans:
            if kept and a <= kept[-1]:  # overlapping or touching: one run
                kept[-1] = max(kept[-1], b)
            else:
                kept += [a, b]
        labels[str(lab)] = kept
        pos = end


def _runs_between(runs: Sequence[Sequence[Any]], first: int, n: int) -> list[list[Any]]:
    """The part of ``runs`` (rows from 0) that covers rows ``[first, first + n)``."""
    out: list[list[Any]] = []
    pos = 0
    for lab, k in runs:
        a, b = max(pos, first), min(pos + int(k), first + n)
        if a < b:
            out.append([lab, b - a])
        pos += int(k)
    return out


def _cut_rows(labels: dict[str, list[int]], start: int, stop: int) -> None:
    """Take rows ``[start, stop)`` out of ``labels``; later rows move down to ``start``.

    A label only in those rows is gone, one across them keeps its other rows
    (and two runs of a label that then meet are one).
    """
    size = stop - start

    def moved(x: int) -> int:
        return x if x <= start else start if x <= stop else x - size

    for lab, rows in list(labels.items()):
        kept: list[int] = []
        for a, b in zip(rows[::2], rows[1::2], strict=True):
            a, b = moved(a), moved(b)
            if b <= a:
                continue
            if kept and kept[-1] == a:
                kept[-1] = b
            else:
                kept += [a, b]
        if kept:
            labels[lab] = kept
        else:
            del labels[lab]


def _lease_of(req: Mapping[str, Any]) -> dict[str, Any]:
    return {k: req[k] for k in ("lease", "host", "pid") if k in req}


def decide_rows(
    state: Mapping[str, Any],
    requests: Sequence[Mapping[str, Any]],
    read_partitions: ReadPartitions,
    dead: Callable[[Mapping[str, Any]], bool] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Decide a batch of ``reserve``, ``partitions`` and ``release`` requests.

    Parameters
    ----------
    state : mapping
        The log's state before the batch.
    requests : sequence of mapping
        Each has ``kind``, ``job``, ``dim`` and ``visible`` (the rows readers
        saw along ``dim`` when the job read the store); ``reserve`` has ``n``
        and ``runs`` (labels of partition coordinates along ``dim``);
        ``partitions`` has ``coord`` and ``runs`` (``[[label, n], ...]``);
        any may carry ``release`` (ids of reservations it found dead).
    read_partitions : callable
        ``read_partitions(coord, dim, visible)``: each label's rows in the
        stored (visible) coordinate, read the first time ``coord`` is met,
        when the first ``visible`` rows along ``dim`` are visible (as this
        state has it: the rows before its first unpublished reservation). A
        reader that holds labels read earlier may answer with them only if
        they cover exactly those rows: a reservation published since has left
        the state, and its labels are then in the store alone. Raises
        :class:`~toolkit.errors.PartitionError` for a coordinate it cannot use.
    dead : callable, optional
        ``dead(reservation)``: whether its job is known dead at once (a process
        of this host that no longer runs). Such reservations at the end of a
        dimension are released before new rows are handed out.

    Returns
    -------
    (dict, dict)
        The new state and an answer per job. Other kinds are left unanswered.
    """
    d = _Decision(state, read_partitions)
    for req in requests:
        kind, job = req.get("kind"), req["job"]
        if kind == "release":
            d.answers[job] = {"released": d.release(list(req.get("ids", [])))}
        elif kind in ("reserve", "partitions"):
            dim = str(req["dim"])
            visible = int(req.get("visible", 0))
            d.dims[dim] = max(d.dims.get(dim, 0), visible)
            d.publish_below(dim, visible)
            tail = [r["id"] for r in d.res if r["dim"] == dim and dead is not None and dead(r)]
            released = d.release(list(req.get("release", [])) + tail)
            if kind == "reserve":
                d.answers[job] = d.reserve(req, job, dim, released)
            else:
                d.answers[job] = d.partitions(req, job, dim)
    landed = d.landed
    if len(landed) > KEEP_LANDED:
        landed = dict(list(landed.items())[-KEEP_LANDED:])
    new_state = {
        **state,
        "dims": d.dims,
        "reservations": d.res,
        "partitions": d.parts,
        "landed": landed,
    }
    return new_state, d.answers


class _Decision:
    """The state :func:`decide_rows` works on (copies of the log's), and its rules by kind."""

    def __init__(self, state: Mapping[str, Any], read_partitions: ReadPartitions) -> None:
        self.dims: dict[str, int] = dict(state.get("dims", {}))
        self.res: list[dict[str, Any]] = [dict(r) for r in state.get("reservations", [])]
        self.parts: dict[str, Any] = {
            k: {"dim": v["dim"], "labels": dict(v["labels"])}
            for k, v in state.get("partitions", {}).items()
        }
        self.landed: dict[str, list[Any]] = dict(state.get("landed", {}))
        self.answers: dict[str, dict[str, Any]] = {}
        self.read_partitions = read_partitions

    def publish_below(self, dim: str, visible: int) -> None:
        """Reservations readers now see whole leave: their jobs landed."""
        for r in [r for r in self.res if r["dim"] == dim and r["stop"] <= visible]:
            self.res.remove(r)
            self.landed[r["job"]] = [dim, r["start"], r["stop"]]

    def release(self, ids: Sequence[str]) -> list[str]:
        """Hand out again the rows of the reservations ``ids`` at the end of their dimension."""
        gone: list[str] = []
        changed = True
        while changed:
            changed = False
            for r in list(self.res):
                if r["id"] in ids and r["stop"] == self.dims.get(r["dim"]):
                    self.res.remove(r)
                    self.dims[r["dim"]] = r["start"]
                    # Its labels go with its rows (a partition's new labels, an
                    # append's runs): the rows are handed out again, to other labels.
                    for p in self.parts.values():
                        if p["dim"] == r["dim"]:
                            _cut_rows(p["labels"], r["start"], r["stop"])
                    gone.append(r["id"])
                    changed = True
        return gone

    def reserve(
        self, req: Mapping[str, Any], job: str, dim: str, released: list[str]
    ) -> dict[str, Any]:
        """An append's rows: its own again on a rerun, else the next free ones."""
        mine = [r for r in self.res if r["job"] == job and r["dim"] == dim]
        if mine:
            r = mine[0]
            r.update(_lease_of(req))  # the rerun holds the job's lease now
            return {"id": r["id"], "start": r["start"], "stop": r["stop"], "resumed": True}
        if job in self.landed:
            _, a, b = self.landed[job]
            return {"landed": True, "start": a, "stop": b}
        members = [(str(m), int(n)) for m, n in req.get("members") or ()]
        if members:
            return self._reserve_members(req, job, dim, members)
        start = self.dims[dim]
        stop = start + int(req["n"])
        self.dims[dim] = stop
        runs = {str(c): [list(x) for x in r] for c, r in (req.get("runs") or {}).items()}
        self.res.append(
            {
                "id": job,
                "job": job,
                "dim": dim,
                "start": start,
                "stop": stop,
                "kind": "append",
                "runs": runs,
                **_lease_of(req),
            }
        )
        # Labels of partition coordinates arrive with appends too: kept with the
        # reservation (a coordinate may become a partition coordinate later),
        # and added to the coordinates already tracked.
        for coord, coord_runs in runs.items():
            if coord in self.parts and self.parts[coord]["dim"] == dim:
                _place(self.parts[coord]["labels"], coord_runs, start)
        return {
            "id": job,
            "start": start,
            "stop": stop,
            **({"released": released} if released else {}),
        }

    def _reserve_members(
        self, req: Mapping[str, Any], job: str, dim: str, members: list[tuple[str, int]]
    ) -> dict[str, Any]:
        """A batch's rows: one reservation per member, in order, from the next free row."""
        again = [m for m, _ in members if m in self.landed or any(r["job"] == m for r in self.res)]
        if again:
            # A member runs again: it goes alone, to find its own rows.
            return {"error": f"members {again} were reserved before", "again": again}
        pos = start = self.dims[dim]
        runs = {str(c): [list(x) for x in r] for c, r in (req.get("runs") or {}).items()}
        for m, n in members:
            # Each member keeps the labels of its own rows, as a lone append does.
            mine = {c: _runs_between(r, pos - start, n) for c, r in runs.items()}
            self.res.append(
                {
                    "id": m,
                    "job": m,
                    "dim": dim,
                    "start": pos,
                    "stop": pos + n,
                    "kind": "append",
                    "batch": job,
                    "runs": mine,
                    **_lease_of(req),
                }
            )
            for coord, coord_runs in mine.items():
                if coord in self.parts and self.parts[coord]["dim"] == dim:
                    _place(self.parts[coord]["labels"], coord_runs, pos)
            pos += n
        self.dims[dim] = pos
        spans = {m: [a, a + n] for (m, n), a in zip(members, _starts(start, members), strict=True)}
        return {"id": job, "start": start, "stop": pos, "members": spans}

    def partitions(self, req: Mapping[str, Any], job: str, dim: str) -> dict[str, Any]:
        """A partition overwrite's rows: each label's stored rows, new labels at the end."""
        coord = str(req["coord"])
        mine = [r for r in self.res if r["job"] == job and r["dim"] == dim]
        if mine:
            r = mine[0]
            r.update(_lease_of(req))
            return {**r["answer"], "resumed": True}
        try:
            labels = self._labels(coord, dim)
        except PartitionError as e:
            return {"error": str(e)}
        problem = partition_problem(labels, req["runs"], coord)
        if problem is not None:
            return {"error": problem}
        ranges: list[list[Any]] = []
        end = self.dims[dim]
        for lab, n in req["runs"]:
            if lab in labels:
                ranges.append([lab, *labels[lab]])
            else:
                ranges.append([lab, end, end + n])
                end += n
        new = [rg for rg in ranges if rg[1] >= self.dims[dim]]
        # Rows of other jobs' reservations (labels they add, not yet visible).
        waits = sorted(
            {
                r["id"]
                for r in self.res
                if r["dim"] == dim
                for _, a, b in ranges
                if a < r["stop"] and r["start"] < b and [_, a, b] not in new
            }
        )
        answer: dict[str, Any] = {"ranges": ranges, "waits": waits}
        if new:
            answer["id"], answer["start"], answer["stop"] = job, self.dims[dim], end
            self.res.append(
                {
                    "id": job,
                    "job": job,
                    "dim": dim,
                    "start": self.dims[dim],
                    "stop": end,
                    "kind": "partition",
                    "coord": coord,
                    "labels": new,
                    "answer": answer,
                    **_lease_of(req),
                }
            )
        for lab, a, b in ranges:
            labels[lab] = [a, b]
        self.dims[dim] = end
        return answer

    def _labels(self, coord: str, dim: str) -> dict[str, list[int]]:
        """Each label's rows of ``coord``, read the first time the coordinate is met.

        The stored (visible) labels, and those of rows handed out and not yet
        visible: an append's labels are in its reservation.
        """
        if coord not in self.parts:
            # Rows are published in the order they were handed out: the visible ones
            # are those before the first reservation still outstanding.
            visible = min(
                (r["start"] for r in self.res if r["dim"] == dim), default=self.dims.get(dim, 0)
            )
            labels = self.read_partitions(coord, dim, visible)
            for r in sorted(self.res, key=lambda r: r["start"]):
                if r["dim"] == dim and coord in (r.get("runs") or {}):
                    _place(labels, r["runs"][coord], r["start"])
            self.parts[coord] = {"dim": dim, "labels": labels}
        return self.parts[coord]["labels"]  # type: ignore[no-any-return]


def shift_out(state: Mapping[str, Any], rid: str) -> dict[str, Any]:
    """The state without reservation ``rid``, later rows of its dimension moved down.

    For stores where rows are only written in isolated copies until one
    commit makes them visible (Icechunk forks): a dead job's rows in the
    middle can be taken back, and the jobs after it write again at their new
    rows (their copies, never committed, are dropped). Never for plain Zarr,
    where later jobs' rows are already in the store.
    """
    res = [dict(r) for r in state.get("reservations", [])]
    gone = next((r for r in res if r["id"] == rid), None)
    if gone is None:
        return dict(state)
    dim, size = gone["dim"], gone["stop"] - gone["start"]
    res.remove(gone)
    parts = {
        k: {"dim": v["dim"], "labels": {lab: list(ab) for lab, ab in v["labels"].items()}}
        for k, v in state.get("partitions", {}).items()
    }
    for p in parts.values():
        if p["dim"] == dim:  # its labels go (a partition's new ones, an append's runs)
            _cut_rows(p["labels"], gone["start"], gone["stop"])
    for r in res:
        if r["dim"] == dim and r["start"] >= gone["stop"]:
            r["start"] -= size
            r["stop"] -= size
            r["labels"] = [[lab, a - size, b - size] for lab, a, b in r.get("labels", [])]
            if "answer" in r:
                r["answer"] = {
                    **r["answer"],
                    "ranges": [
                        [lab, a - size, b - size] if a >= gone["stop"] else [lab, a, b]
                        for lab, a, b in r["answer"]["ranges"]
                    ],
                    "start": r["start"],
                    "stop": r["stop"],
                }
    dims = dict(state.get("dims", {}))
    dims[dim] = dims.get(dim, 0) - size
    return {**state, "reservations": res, "partitions": parts, "dims": dims}
