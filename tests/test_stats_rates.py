"""Rates in the stats below one per second: a slow machine's 0.4 fps reads 0.4, not 0 (the demo and `stats`)."""

from __future__ import annotations

from streaming.stats import _Rate


def test_a_rate_below_one_per_second_is_measured_and_decays_when_events_stop():
    rate = _Rate()
    for k in range(5):
        rate.add(k * 2.5)  # 0.4 per second
    assert abs(rate.per_second(10.0) - 0.4) < 1e-9
    assert abs(rate.per_second(11.0) - 0.4) < 1e-9   # between two events: still the rate
    assert rate.per_second(15.0) < 0.25                # nothing for 5 s: it falls
    assert rate.per_second(30.0) == 0.0                # the last events are too old to say anything


def test_a_fast_rate_is_the_count_over_the_last_two_seconds():
    rate = _Rate()
    for k in range(100):
        rate.add(k / 30)
    assert abs(rate.per_second(99 / 30) - 30) < 1.0
