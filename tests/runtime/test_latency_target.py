"""A latency target plans batch sizes from what batches took, and corrects itself with
what requests really took."""

from __future__ import annotations

import pytest

from torchport.errors import Overloaded
from torchport.runtime.latency_target import CHECK_EVERY, LatencyTarget


def test_a_latency_target_runs_the_largest_batch_that_fits_half_of_it() -> None:
    target = LatencyTarget(100, 64)
    assert target.cap == 64  # nothing measured yet
    target.batch_ran(1, 0.010)
    target.batch_ran(8, 0.030)
    assert target.cap == 16  # 8 rows take 30 ms ≤ 50 ms: try the next size
    target.batch_ran(16, 0.080)  # too slow for half the target
    assert target.cap == 8
    target.batch_ran(8, 0.400)
    target.batch_ran(16, 0.800)
    for _ in range(20):  # the moving averages catch up with a slower machine
        target.batch_ran(1, 0.200)
    assert target.cap == 1
    assert LatencyTarget(100, 4, target.times).cap == 1  # a new size keeps what was measured


def test_a_missed_target_makes_it_plan_with_less_of_it() -> None:
    # The batch times leave out what else takes the cores: when requests still miss the
    # target, the share of it the estimates may use shrinks, and with it the batches.
    target = LatencyTarget(100, 64)
    for rows, seconds in ((1, 0.010), (8, 0.030), (16, 0.045)):
        target.batch_ran(rows, seconds)
    assert target.cap == 32
    for _ in range(CHECK_EVERY):
        target.served(0.150)  # over the 100 ms target
    assert target.cap == 8
    for _ in range(CHECK_EVERY * 10):
        target.served(0.020)  # well under it: the share comes back
    assert target.cap == 32


def test_a_request_that_would_wait_past_the_target_is_refused() -> None:
    target = LatencyTarget(300, 1)
    target.admit(queued_rows=5, workers=1)  # nothing measured: nothing to refuse on
    target.batch_ran(1, 0.200)
    target.admit(queued_rows=0, workers=1)  # nothing queued: it runs next
    with pytest.raises(Overloaded, match="latency target of 300 ms"):
        target.admit(queued_rows=1, workers=1)  # 200 ms behind one, 200 more for its own
    target.admit(queued_rows=1, workers=8)  # eight workers share what is queued
    assert target.shed == 1


def test_under_load_a_request_waits_for_company_a_tenth_of_a_batch() -> None:
    target = LatencyTarget(1000, 8)
    assert target.delay(0.020) == pytest.approx(0.002)
    assert target.delay(10.0) == pytest.approx(0.050)  # at most a twentieth of the target
