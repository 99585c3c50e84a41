"""The group-committed log: one sequence of decisions for many jobs, on every store."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from toolkit.state.commitlog import Batch, CommitLog


def _counter(state, requests):
    n = state.get("n", 0)
    answers = {}
    for r in requests:
        answers[r["job"]] = {"start": n}
        n += r["k"]
    return Batch({"n": n}, answers)


def test_group_commit_answers_many_jobs_with_few_entries(coord):
    def decide(state, requests):
        n = state.get("n", 0)
        answers = {}
        for r in requests:
            answers[r["job"]] = {"start": n}
            n += r["k"]
        return Batch({"n": n}, answers)

    with ThreadPoolExecutor(12) as pool:
        out = list(pool.map(lambda i: CommitLog(coord, decide).submit({"k": 2}), range(12)))
    starts = sorted(a["start"] for a in out)
    assert starts == list(range(0, 24, 2))  # every job placed once, no overlap
    entries = coord.list("log/")
    assert len(entries) < 12


def test_an_effect_that_fails_answers_every_job_with_the_error(coord):
    def decide(state, requests):
        def effect():
            raise OSError("store said no")

        return Batch({"n": 1}, {r["job"]: {} for r in requests}, effect)

    answer = CommitLog(coord, decide).submit({})
    assert "store said no" in answer["error"]


def test_the_head_is_the_state_of_the_last_entry_and_grows_in_order(coord):
    log = CommitLog(coord, _counter)
    assert log.head() == (0, {})
    starts = [log.submit({"k": 3})["start"] for _ in range(4)]
    assert starts == [0, 3, 6, 9]
    seq, state = CommitLog(coord, _counter).head()  # another job sees the same head
    assert state["n"] == 12 and 1 <= seq <= 4
    assert len(state["_recent"]) == 4  # the jobs answered lately: none is decided twice


def test_a_request_is_answered_once_even_when_submitted_under_its_own_job_id(coord):
    log = CommitLog(coord, _counter)
    first = log.submit({"k": 5}, job="job-a")
    again = CommitLog(coord, _counter).submit({"k": 1}, job="job-b")
    assert first == {"start": 0} and again == {"start": 5}
    assert coord.list("pending/") == []  # answered requests are removed


def test_an_effect_runs_before_its_answer_is_read(coord):
    ran = []

    def decide(state, requests):
        return Batch(
            {},
            {r["job"]: {} for r in requests},
            lambda: ran.append(len(requests)) or {"grown": True},
        )

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: CommitLog(coord, decide).submit({}), range(4)))
    assert all(a.get("grown") for a in answers)
    assert sum(ran) == 4  # every request decided exactly once
