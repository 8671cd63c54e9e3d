"""Recurring schedules, on synthetic firing times only (no real labelled schedule data exists here)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pagerstream.models.recurrence import VERSION, RecurrenceTracker, detect_schedule

DAY = 86_400.0
T0 = datetime(2026, 3, 2, tzinfo=UTC).timestamp()  # a Monday, 00:00 UTC


def nightly(days=14, hour=2, jitter=90.0, seed=0):
    rng = np.random.default_rng(seed)
    return [T0 + d * DAY + hour * 3600 + rng.normal(0, jitter) for d in range(days)]


def test_nightly_0200_detected():
    s = detect_schedule(nightly())
    assert s is not None
    assert s.kind == "daily"
    assert s.description == "every day at 02:00 UTC"
    assert s.confidence >= 0.8 and s.p_value < 1e-6


def test_nightly_with_missed_nights_and_noise():
    rng = np.random.default_rng(1)
    ts = [t for t in nightly(days=21, seed=2) if rng.random() > 0.15] + list(T0 + rng.random(3) * 21 * DAY)
    s = detect_schedule(ts)
    assert s is not None and s.kind == "daily" and "02:00" in s.description


def test_every_15_minutes_detected_in_any_order():
    rng = np.random.default_rng(3)
    ts = [T0 + i * 900 + rng.normal(0, 20) for i in range(96)]
    rng.shuffle(ts)
    s = detect_schedule(ts)
    assert s is not None
    assert s.kind == "interval" and s.description == "every 15 minutes"
    assert s.period_s == pytest.approx(900, rel=0.02)
    assert s.confidence >= 0.9


def test_mondays_0900_and_weekdays():
    rng = np.random.default_rng(4)
    s = detect_schedule([T0 + w * 7 * DAY + 9 * 3600 + rng.normal(0, 60) for w in range(6)])
    assert s is not None and s.kind == "weekly" and s.description == "every Monday at 09:00 UTC"
    s = detect_schedule([T0 + d * DAY + 9 * 3600 + rng.normal(0, 60) for d in range(21) if d % 7 < 5])
    assert s is not None and s.kind == "weekdays" and "09:00" in s.description


@pytest.mark.parametrize("offset", [0.0, 800.0, 8_000.0, 43_200.3, 80_000.0, 86_390.0])
def test_daily_found_at_any_time_of_day(offset):
    rng = np.random.default_rng(int(offset))
    s = detect_schedule([T0 + d * DAY + offset + rng.normal(0, 120) for d in range(12)])
    assert s is not None and s.kind == "daily"
    assert abs((s.offset_s - offset + DAY / 2) % DAY - DAY / 2) < 300


def test_hourly_at_minute():
    s = detect_schedule([T0 + h * 3600 + 300 for h in range(30)])
    assert s is not None and s.description == "every hour at :05"


def test_datetimes_accepted():
    base = datetime(2026, 1, 5, 2, 0, tzinfo=UTC)
    s = detect_schedule([base + timedelta(days=d, seconds=30 * (d % 3)) for d in range(10)])
    assert s is not None and "02:00" in s.description


@pytest.mark.parametrize("seed", range(10))
def test_random_times_are_not_a_schedule(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(10, 200))
    assert detect_schedule(T0 + rng.random(n) * 14 * DAY) is None  # uniform
    assert detect_schedule(T0 + np.cumsum(rng.exponential(3600, 80))) is None  # Poisson
    # one firing a day, at a random hour
    assert detect_schedule([T0 + d * DAY + rng.random() * DAY for d in range(20)]) is None


def test_too_few_events():
    assert detect_schedule(nightly(days=3)) is None
    assert detect_schedule([]) is None


def test_tracker_learns_and_flags_expected_firings():
    tr = RecurrenceTracker(max_keys=10, max_events=64)
    got = None
    for t in nightly(days=10, seed=5):
        got = tr.observe("backup-job", t)
    assert got is not None and got.kind == "daily"
    assert tr.expected("backup-job", T0 + 11 * DAY + 2 * 3600 + 120)
    assert not tr.expected("backup-job", T0 + 11 * DAY + 14 * 3600)
    assert tr.schedule("unknown") is None and not tr.expected("unknown", T0)


def test_tracker_is_bounded():
    tr = RecurrenceTracker(max_keys=3, max_events=20)
    for i in range(100):
        tr.observe("a", T0 + i * 900)
    assert len(tr._events["a"]) == 20
    assert tr.schedule("a").description == "every 15 minutes"
    for k in ("b", "c", "d"):
        tr.observe(k, T0)
    assert len(tr) == 3 and tr.schedule("a") is None  # "a" was least recently seen


def test_tracker_state_round_trip():
    tr = RecurrenceTracker(max_keys=5, max_events=50, window_s=600.0)
    for t in nightly(days=8, seed=6):
        tr.observe("x", t)
    tr.observe("y", T0)
    state = json.loads(json.dumps(tr.to_state()))
    assert state["version"] == VERSION
    back = RecurrenceTracker.from_state(state)
    assert back.schedule("x") == tr.schedule("x")
    assert back.to_state() == tr.to_state()
    state["version"] = "nope"
    with pytest.raises(ValueError):
        RecurrenceTracker.from_state(state)
