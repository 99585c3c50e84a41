"""The shared budget at scale, in the discrete-event model: 10, 100 and 1,000 workers.

The model runs the coordinator's and the workers' own code
(:mod:`toolkit.io.ratecontrol`) on a simulated clock; these are the claims
issue 18 asks of the design, checked where a real cluster of that size cannot
be had.
"""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.io.ratecontrol import renew_period
from toolkit.testing.ratesim import Scenario, simulate

RATE = 3000.0  # S3's write rate per prefix, about


@pytest.fixture(scope="module", params=[10, 100, 1000])
def churn(request):
    """N workers at a 3,000/s budget; one dies at 4 s holding its lease, one joins at 7 s."""
    n = request.param
    return simulate(
        Scenario(workers=n, rate=RATE, limit=3500, duration=10.0, die=(3, 4.0), join=7.0)
    )


def test_the_aggregate_stays_within_5_percent_of_the_budget(churn):
    # Every second, through the death and the join: nothing leaks, nothing overshoots.
    for t in range(1, 10):
        assert 0.95 * RATE <= churn.delivered(t, t + 1) <= 1.01 * RATE, t
    assert churn.throttled() == 0


def test_no_tenth_of_a_second_exceeds_the_rate(churn):
    # Pacing per send on interleaved grids: the sum is smooth, not bursts of batches.
    assert churn.peak(0.5, 10.0, window=0.1) <= 1.05 * RATE


def test_scheduler_messages_stay_below_500_per_second(churn):
    n = churn.scenario.workers
    after_start = renew_period(n)  # every worker's first lease is spread over one period
    assert churn.peak_messages(after_start, 10.0) < 500
    if n == 1000:  # leases grow with the cluster, the message rate does not
        assert renew_period(n) > 2.0


def test_a_new_worker_gets_its_share_within_a_second(churn):
    assert churn.share_after_join(0.9) < 1.0


def test_a_worker_that_dies_unnoticed_leaks_nothing_for_long():
    """The scheduler never hears of the death: the lease expires after two periods."""
    o = simulate(
        Scenario(workers=10, rate=RATE, limit=3500, duration=6.0, die=(3, 2.0), noticed=None)
    )
    expiry = 2.0 + 2 * renew_period(10) + renew_period(10)
    assert o.delivered(expiry, 6.0) >= 0.95 * RATE
    assert o.delivered(2.0, expiry) >= 0.85 * RATE  # at most its tenth missing meanwhile


def test_a_strict_store_limit_under_the_budget():
    """4 workers, 90/s asked, a store allowing 100/s with a burst of 10: no 503 at all."""
    o = simulate(Scenario(workers=4, rate=90.0, limit=100.0, burst=10, duration=12.0, latency=0.01))
    assert o.throttled() == 0
    assert o.delivered(1.0, 12.0) >= 0.99 * 90


def test_a_limit_that_drops_to_30_and_returns_to_100_is_followed_within_5_s():
    def limit(t: float) -> float:
        return 30.0 if 5.0 <= t < 15.0 else 100.0

    o = simulate(Scenario(workers=4, rate=90.0, limit=limit, burst=10, duration=25.0, latency=0.01))
    assert o.follows(15.0, 90.0, 25.0) <= 5.0
    for t in np.arange(10.0, 13.0, 0.5):  # from 5 s after the drop: near the new limit
        # (2 s at 30/s, plus the store's burst of 10: up to 1.17 x 30)
        assert 0.5 * 30 <= o.delivered(t, t + 2.0) <= 1.17 * 30, t
    # The drop itself costs 503s (about 40% of the next 2 s); then the recovery's
    # probes above the limit cost a few.
    assert o.throttled(7.0, 15.0) < 0.12
    assert o.throttled(17.0, 25.0) == 0


def test_a_store_far_below_the_budget_is_found():
    """1,000/s of budget against a store allowing 400/s: the law finds the limit."""
    o = simulate(Scenario(workers=10, rate=1000.0, limit=400.0, duration=15.0))
    assert 0.8 * 400 <= o.delivered(5.0, 15.0) <= 400
    assert o.throttled(5.0, 15.0) < 0.05


def test_the_model_is_deterministic():
    s = Scenario(workers=20, rate=500.0, limit=450.0, duration=4.0, seed=3)
    a, b = simulate(s), simulate(s)
    assert np.array_equal(a.sends, b.sends) and np.array_equal(a.ok, b.ok)
