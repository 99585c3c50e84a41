"""The arithmetic of a request budget: the control law, fair shares, leases and pacing."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolkit.io.ratecontrol import (
    MAX_MESSAGES,
    Allocator,
    Grant,
    Pacer,
    RateLaw,
    fair_shares,
    renew_period,
)

# --------------------------------------------------------------------------- the law


def test_the_law_is_cubic_around_the_refused_rate():
    law = RateLaw(configured=None, decrease=0.7, recovery=1.0, cooldown=0.0)
    assert law.rate(0.0) is None
    assert law.cut(10.0, sent_at=10.0, used=100.0)
    assert law.rate(10.0) == pytest.approx(70)  # β·w at once
    assert law.rate(10.5) == pytest.approx(100 * (1 - 0.3 * 0.125))  # concave climb
    assert law.rate(11.0) == pytest.approx(100)  # back at w after K
    assert law.rate(11.5) == pytest.approx(100 * (1 + 0.3 * 0.125))  # flat around w
    assert law.rate(13.0) == pytest.approx(340)  # then convex: 3.4 w at K + 2
    rates = [law.rate(10.0 + t / 10) for t in range(40)]
    assert all(b is not None and a is not None and b >= a for a, b in itertools.pairwise(rates))
    assert law.rate(16.0) == pytest.approx(3850)
    assert law.rate(17.0) is None  # past 64 w: unlimited again


def test_the_configured_rate_caps_the_recovery():
    law = RateLaw(configured=90.0, cooldown=0.0)
    law.cut(0.0, 0.0, used=90.0)
    assert law.rate(0.0) == pytest.approx(63)
    assert law.rate(1.0) == pytest.approx(90)
    assert law.rate(5.0) == 90
    assert not law.recovering(5.0)
    assert law.recovering(0.5)


@given(
    w=st.floats(1, 1e5),
    target=st.floats(0.71, 60),
    beta=st.floats(0.3, 0.9),
    k=st.floats(0.2, 5),
)
def test_time_to_inverts_the_curve(w, target, beta, k):
    law = RateLaw(configured=None, decrease=beta, recovery=k, cooldown=0.0, min_rate=1e-9)
    law.cut(0.0, 0.0, used=w)
    goal = max(target, beta) * w
    t = law.time_to(goal, 0.0)
    got = law.rate(t)
    assert got is None or got == pytest.approx(goal, rel=1e-6)


def test_answers_to_requests_sent_before_a_cut_do_not_cut_again():
    law = RateLaw(configured=100.0, cooldown=0.0)
    assert law.cut(1.0, 0.9, used=100.0)
    assert not law.cut(1.1, 0.95, used=100.0)  # sent before the cut
    assert law.cut(1.2, 1.05, used=70.0)
    assert law.rate(1.2) == pytest.approx(49)
    assert law.cuts == 2


def test_cooldown_and_min_rate():
    law = RateLaw(configured=100.0, cooldown=0.5, min_rate=5.0)
    law.cut(0.0, None, used=100.0)
    assert not law.cut(0.2, None, used=100.0)
    for t in range(1, 30):
        law.cut(t * 0.6, None, used=law.rate(t * 0.6))
    assert law.rate(17.4) is not None and law.rate(17.4) >= 5.0


def test_a_law_that_does_not_adapt_keeps_its_rate_but_honours_retry_after():
    law = RateLaw(configured=100.0, adaptive=False)
    assert not law.cut(1.0, 1.0, used=100.0, retry_after=2.0)
    assert law.rate(1.0) == 100 and law.paused_until == 3.0


def test_describe_says_where_the_recovery_stands():
    law = RateLaw(configured=90.0, cooldown=0.0)
    assert law.describe(0.0)["cut_ago"] is None
    law.cut(10.0, 10.0, used=90.0)
    d = law.describe(10.5)
    assert d["cut_ago"] == pytest.approx(0.5) and d["refused"] == 90
    assert d["cut_to"] == pytest.approx(63)
    assert d["back_in"] == pytest.approx(0.5, abs=1e-6)  # at 90 again after K = 1 s
    assert law.describe(12.0)["back_in"] is None


# --------------------------------------------------------------------------- shares


@given(
    total=st.floats(0.1, 1e6),
    wants=st.lists(st.one_of(st.floats(0, 1e6), st.just(math.inf)), min_size=1, max_size=30),
)
def test_fair_shares_are_max_min_fair(total, wants):
    named = {f"w{i}": w for i, w in enumerate(wants)}
    got = fair_shares(total, named)
    assert sum(got.values()) <= total * (1 + 1e-9)
    for who, share in got.items():
        assert 0 <= share <= named[who] * (1 + 1e-12)
    # Max-min: whoever gets less than it wants gets at least as much as anyone.
    top = max(got.values())
    for who, share in got.items():
        if share < named[who] * (1 - 1e-9):
            assert share >= top * (1 - 1e-9)
    # Nothing is left over while someone wants more.
    if any(got[w] < named[w] * (1 - 1e-9) for w in named):
        assert sum(got.values()) == pytest.approx(total, rel=1e-9)


def test_leases_add_up_to_the_rate_and_follow_demand():
    a = Allocator(RateLaw(configured=100.0))
    grants = [a.request(f"w{i}", None, 0.0, 4) for i in range(4)]  # first leases
    assert [g.rate for g in grants] == pytest.approx([25] * 4)
    grants = [a.request(f"w{i}", math.inf, 0.1, 4) for i in range(4)]
    assert [g.rate for g in grants] == pytest.approx([25] * 4)
    assert {g.phase for g in grants} == {(i * 0.6180339887498949) % 1 for i in range(4)}
    # One asks for little: the others get what it leaves, at their next renewal.
    small = a.request("w0", 4.0, 0.2, 4)
    assert small.rate == pytest.approx(4) and small.headroom
    g = a.request("w1", math.inf, 0.3, 4)
    assert g.rate == pytest.approx(32)
    assert sum(x.rate for x in a.leases.values()) <= 100 + 1e-9


def test_a_newcomer_waits_only_for_the_others_renewals():
    a = Allocator(RateLaw(configured=100.0))
    for i in range(4):
        a.request(f"w{i}", None, 0.0, 4)
    g = a.request("new", None, 0.01, 5)
    assert g.starving and g.renew_at == pytest.approx(0.11)  # asks again soon
    assert g.rate < 1
    for i in range(4):
        a.request(f"w{i}", math.inf, 0.2, 5)
    g = a.request("new", math.inf, 0.3, 5)
    assert not g.starving and g.rate == pytest.approx(20)


def test_a_dead_process_holds_nothing():
    a = Allocator(RateLaw(configured=100.0))
    for i in range(2):
        a.request(f"w{i}", None, 0.0, 2)
    a.remove("w1")  # the scheduler saw it go
    assert a.request("w0", math.inf, 0.1, 1).rate == pytest.approx(100)
    # Unnoticed, its lease expires after two periods.
    b = Allocator(RateLaw(configured=100.0))
    for i in range(2):
        b.request(f"w{i}", None, 0.0, 2)
    assert b.request("w0", math.inf, 0.5, 2).rate == pytest.approx(50)
    assert b.request("w0", math.inf, 1.01, 2).rate == pytest.approx(100)


def test_long_leases_keep_a_reserve_for_newcomers():
    n = 1000
    assert renew_period(n) == pytest.approx(n / MAX_MESSAGES)
    a = Allocator(RateLaw(configured=3000.0))
    for i in range(n):
        a.request(f"w{i}", None, 0.0, n)
    held = sum(x.rate for x in a.leases.values())
    assert held == pytest.approx(3000 * (1 - 2 / n))
    g = a.request("new", None, 0.01, n + 1)
    assert not g.starving and g.rate == pytest.approx(held / n, rel=0.01)


def test_a_throttled_lease_is_cut_once_per_round():
    a = Allocator(RateLaw(configured=100.0, cooldown=0.0))
    for i in range(4):
        a.request(f"w{i}", None, 0.0, 4, sending=25.0)
    g = a.throttled("w0", 0.05, 0.1, 4, sending=25.0)
    assert g.rate == pytest.approx(70 / 4, rel=0.01)
    a.throttled("w1", 0.05, 0.11, 4)  # sent before the cut: nothing more
    assert a.law.cuts == 1
    assert a.messages == 6


def test_grants_travel_as_plain_values():
    g = Grant(12.5, 0.25, 3.0, 2.0, 1.5, True, 0.003, True, 0.7)
    assert Grant.from_dict(g.as_dict()) == g
    u = Grant(None, 0.0, 3.0, 2.0)
    assert Grant.from_dict(u.as_dict()) == u


# --------------------------------------------------------------------------- pacing


def _paced(grant: Grant, now: float, n: int) -> list[float]:
    p = Pacer()
    p.apply(grant, now)
    out = []
    for _ in range(n):
        t = p.take(now, patient=False)
        assert t is not None
        out.append(t)
    return out


def test_a_pacer_sends_one_request_per_slot():
    sends = _paced(Grant(50.0, 0.3, 100.0, 100.0, late=0.0), 10.0, 50)
    assert all(b - a == pytest.approx(0.02) for a, b in itertools.pairwise(sends))
    assert sends[0] >= 10.0 and sends[0] - 10.0 < 0.02
    # On the grid: (t - epoch) * rate - phase is an integer.
    assert all(abs((t * 50 - 0.3) - round(t * 50 - 0.3)) < 1e-6 for t in sends)


def test_alone_a_process_may_use_one_slot_late_but_never_two():
    p = Pacer()
    p.apply(Grant(10.0, 0.0, 100.0, 100.0), 0.0)
    assert p.take(5.05) == 5.05  # the slot at 5.0 was free: send now
    assert p.take(5.05) == pytest.approx(5.1)


def test_equal_leases_interleave_and_the_sum_is_smooth():
    a = Allocator(RateLaw(configured=1000.0))
    n = 37
    sends = []
    for i in range(n):
        g = a.request(f"w{i}", None, 0.0, n)
        sends += _paced(g, 1.0, 100)
    t = np.sort(np.asarray(sends))
    t = t[(t >= 1.1) & (t < 3.5)]
    window = 0.1
    ends = np.searchsorted(t, t + window - 1e-12)
    peak = (ends - np.arange(len(t))).max() / window
    assert peak <= 1000 * 1.03  # low-discrepancy phases: no 0.1 s window above the rate


def test_a_new_grid_loses_no_slot():
    p = Pacer()
    p.apply(Grant(10.0, 0.0, 100.0, 100.0, late=0.0), 0.0)
    first = [p.take(0.0) for _ in range(10)]
    p.apply(Grant(10.1, 0.77, 100.0, 100.0, late=0.0), 0.5)
    later = [p.take(0.5) for _ in range(10)]
    gaps = np.diff(np.asarray(first + later, dtype=float))
    assert gaps.min() >= 0.5 / 10.1 - 1e-9 and gaps.max() <= 1.5 / 10 + 1e-9
    assert later[-1] - first[-1] == pytest.approx(10 / 10.1, abs=0.05)


def test_a_starving_lease_renews_before_booking_a_far_slot():
    p = Pacer()
    p.apply(Grant(0.5, 0.0, 10.0, 0.1, starving=True, late=0.0), 0.0)
    assert p.take(0.0) == 0.0
    assert p.take(0.0) is None  # the next slot is 2 s away, the renewal 0.1 s
    assert p.want(0.05) == math.inf
    assert p.take(0.0, patient=False) == pytest.approx(2.0)


def test_what_the_store_took_is_its_answers_not_what_was_sent():
    p = Pacer()
    p.apply(Grant(1000.0, 0.0, 100.0, 100.0), 0.0)
    for i in range(100):  # 100/s sent (refused requests and their retries among them)
        p.take(i / 100)
        if i % 4 == 0:
            p.took(i / 100 + 0.005)  # 25/s answered
    assert p.sending(0.995) == pytest.approx(100, rel=0.02)
    assert p.taken(0.995) == pytest.approx(25, rel=0.05)
    # A cut starts from what was sent, at most 1/0.7 of what was answered.
    assert p.refused_at(0.995, 0.7) == pytest.approx(25 / 0.7, rel=0.05)
    assert p.taken(2.5) == 0  # the last second's: nothing answered in it
    q = Pacer()
    q.apply(Grant(1000.0, 0.0, 100.0, 100.0), 0.0)
    for i in range(100):  # near the store's limit: 90% answered
        q.take(i / 100)
        if i % 10:
            q.took(i / 100 + 0.005)
    assert q.refused_at(0.995, 0.7) == pytest.approx(q.sending(0.995))
    assert Pacer().refused_at(0.0, 0.7) == 0  # nothing sent, nothing answered


def test_demand_is_measured_from_what_was_asked():
    p = Pacer()
    p.apply(Grant(1000.0, 0.0, 100.0, 100.0), 0.0)
    for i in range(20):  # 20/s, never held back
        p.take(i / 20)
    assert p.want(1.0) == pytest.approx(1.5 * 20 + 1)
    assert p.sending(0.99) == pytest.approx(20, rel=0.02)
    q = Pacer()
    q.apply(Grant(5.0, 0.0, 100.0, 100.0), 0.0)
    for _ in range(20):  # far more than 5/s: held back
        q.take(0.0)
    assert q.want(1.0) == math.inf


def test_a_paused_budget_sends_nothing_until_retry_after_has_passed():
    p = Pacer()
    p.apply(Grant(100.0, 0.0, 100.0, 100.0, paused_until=3.0), 0.0)
    assert p.take(1.0) == pytest.approx(3.0, abs=0.011)
    q = Pacer()
    q.apply(Grant(None, 0.0, 100.0, 100.0, paused_until=3.0), 0.0)
    assert q.take(1.0) == 3.0
