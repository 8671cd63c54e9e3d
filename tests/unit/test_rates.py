from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pagerstream.processors.rates import MAX_GAP_BUCKETS, RateWindow, advance, observe


def test_counts_and_closes_buckets_with_empty_ones_in_between():
    w = RateWindow(60_000)
    w, closed = observe(w, 120_500)
    assert closed == [] and w.start == 120_000 and w.count == 1
    w, _ = observe(w, 150_000)
    w, closed = observe(w, 310_000)  # buckets 120k (2 alerts), 180k and 240k (empty) close
    assert closed == [(120_000, 2), (180_000, 0), (240_000, 0)]
    assert (w.start, w.count) == (300_000, 1)


def test_ticks_close_buckets_of_silent_services():
    w, _ = observe(RateWindow(1_000), 5_200)
    w2, closed = advance(w, 5_999)
    assert closed == [] and w2 == w
    w3, closed = advance(w, 8_000)
    assert closed == [(5_000, 1), (6_000, 0), (7_000, 0)] and (w3.start, w3.count) == (8_000, 0)


def test_long_silence_is_capped():
    w, _ = observe(RateWindow(1_000), 0)
    _, closed = advance(w, 10_000_000)
    assert len(closed) == 1 + MAX_GAP_BUCKETS and closed[0] == (0, 1)


def test_late_alert_counts_in_the_open_bucket():
    w, _ = observe(RateWindow(1_000), 10_000)
    w, closed = observe(w, 3_000)
    assert closed == [] and w.count == 2


@given(st.lists(st.integers(0, 10_000_000), min_size=1, max_size=200))
def test_no_alert_is_lost_or_counted_twice(ts):
    w = RateWindow(7_000)
    total = 0
    for t in sorted(ts):
        w, closed = observe(w, t)
        total += sum(c for _, c in closed)
    _, closed = advance(w, max(ts) + 7_000)
    total += sum(c for _, c in closed)
    assert total == len(ts)
    assert RateWindow.from_dict(w.to_dict()) == w
