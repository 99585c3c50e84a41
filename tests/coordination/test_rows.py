"""The commit log's row decisions, alone: pure functions, checked against brute force."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolkit.coordination.rows import decide_rows, outstanding, runs_of, shift_out
from toolkit.errors import PartitionError


def _none(coord: str, dim: str, visible: int) -> dict[str, list[int]]:
    return {}


def _reserve(job: str, n: int, visible: int = 0, **kw) -> dict:
    return {
        "kind": "reserve",
        "job": job,
        "dim": "t",
        "n": n,
        "visible": visible,
        "lease": f"jobs/{job}",
        "host": "h",
        "pid": 1,
        **kw,
    }


def _step(state: dict, *requests: dict, dead=None) -> tuple[dict, dict]:
    return decide_rows(state, list(requests), _none, dead=dead)


@given(
    st.integers(0, 50),
    st.lists(st.tuples(st.integers(1, 20), st.booleans()), min_size=1, max_size=30),
)
def test_reservations_tile_the_rows_after_the_visible_ones_in_order(visible, asks):
    """Brute force: every job gets the next free rows; none overlap; published ones leave."""
    state: dict = {}
    end = visible
    spans = {}
    for i, (n, publish_all) in enumerate(asks):
        shown = end if publish_all else visible  # a job may see every earlier row published
        state, answers = _step(state, _reserve(f"j{i}", n, shown))
        a = answers[f"j{i}"]
        assert (a["start"], a["stop"]) == (end, end + n)
        spans[f"j{i}"] = (end, end + n)
        end += n
        visible = shown
        assert state["dims"]["t"] == end
        left = outstanding(state, "t")
        assert all(r["stop"] > visible for r in left)  # published rows are not reserved
        assert [r["start"] for r in left] == sorted(r["start"] for r in left)
        for x, y in itertools.pairwise(left):
            assert x["stop"] == y["start"]  # contiguous, no overlap
    landed = state["landed"]
    assert all(tuple(landed[j][1:]) == spans[j] for j in landed)


def test_a_rerun_gets_its_own_rows_and_a_landed_job_is_told_so():
    state, a = _step({}, _reserve("x", 5, visible=10))
    assert a["x"] == {"id": "x", "start": 10, "stop": 15}
    state, again = _step(state, _reserve("x", 5, visible=10))
    assert again["x"] == {"id": "x", "start": 10, "stop": 15, "resumed": True}
    state, b = _step(state, _reserve("y", 2, visible=15))  # x's rows were published
    assert b["y"]["start"] == 15
    state, late = _step(state, _reserve("x", 5, visible=17))
    assert late["x"] == {"landed": True, "start": 10, "stop": 15}
    assert state["dims"]["t"] == 17


def test_only_the_last_rows_can_be_released():
    state, _ = _step({}, _reserve("a", 3), _reserve("b", 4))
    state, out = _step(state, {"kind": "release", "job": "r", "ids": ["a"]})
    assert out["r"]["released"] == [] and state["dims"]["t"] == 7  # a has b after it
    state, out = _step(state, {"kind": "release", "job": "r2", "ids": ["a", "b"]})
    assert sorted(out["r2"]["released"]) == ["a", "b"]  # b first, then a is the last
    assert state["dims"]["t"] == 0 and outstanding(state) == []


def test_dead_jobs_at_the_end_are_released_before_new_rows_are_handed_out():
    state, _ = _step({}, _reserve("a", 3), _reserve("dead", 4))
    state, out = _step(state, _reserve("c", 2), dead=lambda r: r["job"] == "dead")
    assert (out["c"]["start"], out["c"]["stop"]) == (3, 5)
    assert [r["job"] for r in outstanding(state)] == ["a", "c"]


def test_a_batch_reserves_each_member_its_own_rows():
    state, out = _step({}, _reserve("batch", 5, members=[["m1", 2], ["m2", 3]]))
    assert out["batch"]["members"] == {"m1": [0, 2], "m2": [2, 5]}
    assert [(r["job"], r["start"], r["stop"]) for r in outstanding(state)] == [
        ("m1", 0, 2),
        ("m2", 2, 5),
    ]
    # a member that runs again alone finds its own rows; the batch cannot re-reserve it
    state, alone = _step(state, _reserve("m2", 3))
    assert alone["m2"]["resumed"] and (alone["m2"]["start"], alone["m2"]["stop"]) == (2, 5)
    _, again = _step(state, _reserve("batch2", 5, members=[["m1", 2], ["m9", 3]]))
    assert again["batch2"]["again"] == ["m1"]


def _parts(job: str, runs: list[list], visible: int) -> dict:
    return {
        "kind": "partitions",
        "job": job,
        "dim": "t",
        "coord": "day",
        "runs": runs,
        "visible": visible,
        "lease": f"jobs/{job}",
        "host": "h",
        "pid": 1,
    }


def test_partitions_keep_their_rows_and_new_labels_are_reserved_at_the_end():
    stored = {"mon": [0, 3], "tue": [3, 6]}
    state, out = decide_rows({}, [_parts("p", [["tue", 3], ["wed", 2]], 6)], lambda c, d, n: stored)
    a = out["p"]
    assert a["ranges"] == [["tue", 3, 6], ["wed", 6, 8]]
    assert (a["start"], a["stop"]) == (6, 8) and a["waits"] == []
    # another job replacing wed before p published it waits for p's rows
    state, out = decide_rows(state, [_parts("q", [["wed", 2]], 6)], lambda c, d, n: stored)
    assert out["q"]["ranges"] == [["wed", 6, 8]] and out["q"]["waits"] == ["p"]
    _, out = decide_rows(state, [_parts("r", [["tue", 5]], 6)], lambda c, d, n: stored)
    assert "3 rows in the store, the job brings 5" in out["r"]["error"]


def test_labels_are_read_at_the_rows_visible_after_a_publication():
    """An append published before the coordinate is first met has left the reservations.

    Its labels are then in the store alone: the reader is asked for the rows
    visible by then, and labels read before (a job's snapshot) must not stand
    in for them, or its partition is taken for a new one and written twice.
    """
    state, out = _step({}, _reserve("a", 2, visible=10, runs={"day": [["x", 2]]}))
    assert (out["a"]["start"], out["a"]["stop"]) == (10, 12)
    asked = []

    def read(coord: str, dim: str, visible: int) -> dict[str, list[int]]:
        asked.append(visible)
        return {"old": [0, 10], "x": [10, 12]} if visible >= 12 else {"old": [0, 10]}

    # a's rows are visible (12) when p comes: a leaves the reservations
    state, out = decide_rows(state, [_parts("p", [["x", 2]], 12)], read)
    assert asked == [12]
    assert out["p"]["ranges"] == [["x", 10, 12]] and "id" not in out["p"]  # in place
    assert state["dims"]["t"] == 12
    # While a is outstanding the rows before it are the visible ones, a's labels its own.
    state, _ = _step({}, _reserve("a", 2, visible=10, runs={"day": [["x", 2]]}))
    asked.clear()
    _, out = decide_rows(state, [_parts("q", [["x", 2]], 10)], read)
    assert asked == [10] and out["q"]["ranges"] == [["x", 10, 12]] and out["q"]["waits"] == ["a"]


def test_rows_both_in_the_store_and_reserved_are_one_run():
    """The store, read at the decision, may already hold an append the log still has
    reserved (published since the job read the length it reports): its label's rows are
    one run, not two (a stress run of mixed jobs found every later overwrite of it refused)."""
    state, _ = _step({}, _reserve("a", 2, visible=10, runs={"day": [["x", 2]]}))
    published = {"old": [0, 10], "x": [10, 12]}
    state, out = decide_rows(state, [_parts("p", [["x", 2]], 10)], lambda c, d, n: published)
    assert out["p"]["ranges"] == [["x", 10, 12]]
    assert state["partitions"]["day"]["labels"] == {"old": [0, 10], "x": [10, 12]}


def _tracked(stored: dict[str, list[int]]) -> tuple[dict, Any]:
    """A state whose log tracks ``day`` (a partitions job met it), and the labels reader."""

    def read(coord: str, dim: str, visible: int) -> dict[str, list[int]]:
        return {k: list(v) for k, v in stored.items()}

    end = max((b for _, b in stored.values()), default=0)
    state, _ = decide_rows({}, [_parts("p0", [[next(iter(stored)), end]], end)], read)
    return state, read


def test_a_released_appends_labels_go_with_its_rows():
    """Its rows are handed out again: an overwrite of its label must not land on them."""
    state, read = _tracked({"old": [0, 10]})
    state, _ = _step(state, _reserve("a", 2, visible=10, runs={"day": [["x", 2]]}))
    assert state["partitions"]["day"]["labels"]["x"] == [10, 12]
    state, _ = decide_rows(state, [{"kind": "release", "job": "r", "ids": ["a"]}], read)
    assert "x" not in state["partitions"]["day"]["labels"]
    state, out = _step(state, _reserve("b", 2, visible=10, runs={"day": [["y", 2]]}))
    assert (out["b"]["start"], out["b"]["stop"]) == (10, 12)  # a's rows, b's label
    state, out = decide_rows(state, [_parts("p", [["x", 2]], 10)], read)
    assert out["p"]["ranges"] == [["x", 12, 14]]  # a new partition, not b's rows
    assert state["partitions"]["day"]["labels"]["y"] == [10, 12]


def test_a_batchs_members_keep_their_labels():
    """Appends written together keep their labels as lone appends do; a label across
    members, or continuing the last one, is one run of rows."""
    state, read = _tracked({"old": [0, 10]})
    batch = _reserve(
        "batch",
        5,
        visible=10,
        runs={"day": [["old", 1], ["m", 2], ["n", 2]]},
        members=[["m1", 2], ["m2", 3]],
    )
    state, out = _step(state, batch)
    assert out["batch"]["members"] == {"m1": [10, 12], "m2": [12, 15]}
    assert state["partitions"]["day"]["labels"] == {"old": [0, 11], "m": [11, 13], "n": [13, 15]}
    runs = {r["job"]: r["runs"]["day"] for r in outstanding(state)}
    assert runs == {"m1": [["old", 1], ["m", 1]], "m2": [["m", 1], ["n", 2]]}
    # An overwrite of m is m's rows in place (it waits for the members to publish).
    _, out = decide_rows(state, [_parts("p", [["m", 2]], 10)], read)
    assert out["p"]["ranges"] == [["m", 11, 13]] and out["p"]["waits"] == ["m1", "m2"]
    # The coordinate met only now: the members' labels are read from their reservations.
    state, _ = _step({}, batch)
    _, out = decide_rows(state, [_parts("q", [["n", 2]], 10)], lambda c, d, n: {"old": [0, 10]})
    assert out["q"]["ranges"] == [["n", 13, 15]]


def test_shift_out_takes_an_appends_labels_with_its_rows():
    state, _ = _tracked({"old": [0, 10]})
    state, _ = _step(state, _reserve("dead", 2, visible=10, runs={"day": [["x", 2]]}))
    state, _ = _step(state, _reserve("b", 3, visible=10, runs={"day": [["y", 3]]}))
    state = shift_out(state, "dead")
    assert state["partitions"]["day"]["labels"] == {"old": [0, 10], "y": [10, 13]}


def test_an_append_of_an_earlier_label_splits_it_and_no_overwrite_takes_it():
    """Rows of a label stored earlier, not last: the label is in two runs from then on.

    The log tracked the new run only: an overwrite of the label then replaced those rows
    and left the first run (the label twice, half old). It is refused now, with the rows
    named, as the store's coordinate read afresh refuses it; other labels go on.
    """
    state, read = _tracked({"mon": [0, 3], "tue": [3, 6]})
    state, _ = _step(state, _reserve("a", 3, visible=6, runs={"day": [["mon", 3]]}))
    assert state["partitions"]["day"]["labels"]["mon"] == [0, 3, 6, 9]
    state, out = decide_rows(state, [_parts("p", [["mon", 3]], 6)], read)
    assert "not one contiguous run" in out["p"]["error"] and "0-3, 6-9" in out["p"]["error"]
    state, out = decide_rows(state, [_parts("q", [["tue", 3]], 6)], read)
    assert out["q"]["ranges"] == [["tue", 3, 6]]
    # Released (its rows handed out again), the label is one run again.
    state, _ = decide_rows(state, [{"kind": "release", "job": "r", "ids": ["a"]}], read)
    assert state["partitions"]["day"]["labels"]["mon"] == [0, 3]
    # The store's coordinate, read by the first decision on it, says the same.
    split = {"mon": [0, 3, 6, 9], "tue": [3, 6]}
    _, out = decide_rows({}, [_parts("s", [["mon", 3]], 9)], lambda c, d, n: split)
    assert "not one contiguous run" in out["s"]["error"]


def test_a_coordinate_that_cannot_partition_is_an_answer_not_a_crash():
    def bad(coord, dim, visible):
        raise PartitionError("not one contiguous run")

    _, out = decide_rows({}, [_parts("p", [["mon", 1]], 0)], bad)
    assert "contiguous" in out["p"]["error"]


def test_shift_out_moves_later_rows_and_their_labels_down():
    stored: dict = {}
    state, _ = _step({}, _reserve("a", 3), _reserve("dead", 4))
    state, _ = decide_rows(state, [_parts("p", [["wed", 2]], 0)], lambda c, d, n: stored)
    state = shift_out(state, "dead")
    left = {r["job"]: (r["start"], r["stop"]) for r in outstanding(state)}
    assert left == {"a": (0, 3), "p": (3, 5)}
    assert state["partitions"]["day"]["labels"]["wed"] == [3, 5]
    assert state["dims"]["t"] == 5


@given(st.lists(st.sampled_from("abc"), max_size=40))
def test_runs_of_against_brute_force(labels):
    runs = runs_of(labels)
    assert [lab for lab, n in runs for _ in range(n)] == labels
    assert all(x[0] != y[0] for x, y in itertools.pairwise(runs))


@pytest.mark.parametrize("n", [0, 1, 5])
def test_release_of_unknown_ids_changes_nothing(n):
    state, _ = _step({}, *[_reserve(f"j{i}", 2) for i in range(n)])
    again, out = _step(state, {"kind": "release", "job": "r", "ids": ["nope"]})
    assert out["r"]["released"] == [] and again["reservations"] == state.get("reservations", [])


class _Rows:
    """Brute force of one dimension's rows: the label of every row handed out."""

    def __init__(self, base: int) -> None:
        self.labels = ["base"] * base  # the stored rows, one partition
        self.visible = base  # rows readers see: the store's coordinate
        self.seen = [base]  # the visible lengths so far: a job may report any of them (stale)
        self.res: list[tuple[str, int, int]] = []  # outstanding (id, start, stop), in order
        self.fresh = itertools.count()

    def new_label(self) -> str:
        return f"L{next(self.fresh)}"

    def span(self, lab: str) -> tuple[int, int] | None:
        at = [i for i, x in enumerate(self.labels) if x == lab]
        return (at[0], at[-1] + 1) if at else None

    def split(self, lab: str) -> bool:
        """Whether the label's rows are in more than one run."""
        span = self.span(lab)
        return span is not None and set(self.labels[span[0] : span[1]]) != {lab}

    def read(self, coord: str, dim: str, visible: int) -> dict[str, list[int]]:
        """The store's coordinate: each label's runs of rows among the visible ones."""
        out: dict[str, list[int]] = {}
        for i, lab in enumerate(self.labels[: self.visible]):
            rows = out.setdefault(lab, [])
            if rows and rows[-1] == i:
                rows[-1] = i + 1
            else:
                rows += [i, i + 1]
        return out

    def hand_out(self, rid: str, runs: list[list[Any]]) -> None:
        start = len(self.labels)
        self.labels += [lab for lab, n in runs for _ in range(n)]
        self.res.append((rid, start, len(self.labels)))


_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["append", "continue", "again", "batch", "publish", "release", "partitions"]
        ),
        st.integers(1, 4),
        st.integers(0, 3),
    ),
    min_size=1,
    max_size=40,
)


@given(st.integers(0, 6), _OPS)
def test_partitions_find_every_labels_rows_in_any_mix_of_jobs(base, ops):
    """Appends (alone, continuing the last label, of an earlier label, in batches),
    publications, releases of the last rows and partition overwrites, in any order: every
    overwrite finds each label's rows where a brute force of all rows handed out has them,
    in place, and new labels after every row, or is refused when a label it brings is in
    several runs of rows; no row is handed out twice. A job reports the visible length it
    read at its start, which publications since may have passed.
    """
    rows = _Rows(base)
    state: dict = {}
    for i, (op, n, pick) in enumerate(ops):
        job = f"j{i}"
        if op in ("append", "continue", "again"):
            known = list(dict.fromkeys(rows.labels))
            if op == "again" and known:  # rows of any label handed out before
                last = known[pick % len(known)]
            elif op == "continue" and rows.labels:
                last = rows.labels[-1]
            else:
                last = rows.new_label()
            runs = [[last, n], [rows.new_label(), 1]][: 1 + pick % 2]
            req = _reserve(job, sum(k for _, k in runs), rows.visible, runs={"day": runs})
            state, out = decide_rows(state, [req], rows.read)
            assert (out[job]["start"], out[job]["stop"]) == (
                len(rows.labels),
                len(rows.labels) + req["n"],
            )
            rows.hand_out(job, runs)
        elif op == "batch":
            runs = [[rows.new_label(), n], [rows.new_label(), pick + 1]]
            total = n + pick + 1
            split = max(1, total // 2)
            members = [[f"{job}a", split], [f"{job}b", total - split]]
            req = _reserve(job, total, rows.visible, runs={"day": runs}, members=members)
            state, out = decide_rows(state, [req], rows.read)
            start = len(rows.labels)
            assert out[job]["members"] == {
                f"{job}a": [start, start + split],
                f"{job}b": [start + split, start + total],
            }
            labs = [lab for lab, k in runs for _ in range(k)]
            rows.labels += labs
            rows.res += [
                (f"{job}a", start, start + split),
                (f"{job}b", start + split, start + total),
            ]
        elif op == "publish" and rows.res:
            # The first outstanding reservations land in order; readers see them.
            k = min(pick + 1, len(rows.res))
            rows.visible = rows.res[k - 1][2]
            rows.seen.append(rows.visible)
            del rows.res[:k]
        elif op == "release" and rows.res:
            rid, start, _ = rows.res[-1]
            state, out = decide_rows(
                state, [{"kind": "release", "job": job, "ids": [rid]}], rows.read
            )
            assert out[job]["released"] == [rid]
            del rows.labels[start:]
            rows.res.pop()
        elif op == "partitions":
            known = list(dict.fromkeys(rows.labels))
            chosen = known[pick % len(known) :: 2] if known else []
            runs = [[lab, rows.span(lab)[1] - rows.span(lab)[0]] for lab in chosen]  # type: ignore[index]
            runs.append([rows.new_label(), n])
            # The length the job read at its start: publications since are in the store.
            req = _parts(job, runs, rows.seen[-1 - n % len(rows.seen)])
            state, out = decide_rows(state, [req], rows.read)
            if any(rows.split(lab) for lab in chosen):
                # A label in several runs: refused, nothing handed out.
                assert "not one contiguous run" in out[job]["error"], out[job]
                continue
            assert "error" not in out[job], out[job]
            end = len(rows.labels)
            for lab, a, b in out[job]["ranges"]:
                have = rows.span(lab)
                if have is not None:
                    assert (a, b) == have, (lab, a, b, have)
                else:
                    assert (a, b) == (end, end + b - a)
                    end = b
            new = [[lab, b - a] for lab, a, b in out[job]["ranges"] if rows.span(lab) is None]
            rows.hand_out(job, new)
        assert state.get("dims", {}).get("t", len(rows.labels)) == len(rows.labels)
