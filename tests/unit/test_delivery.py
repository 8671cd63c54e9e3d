"""Delivery policy: response classification, backoff, circuit breaker, token bucket."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pagerstream.processors.delivery import (
    BreakerState,
    Outcome,
    TokenBucket,
    backoff_ms,
    breaker_allows,
    breaker_on_result,
    classify_response,
)


@pytest.mark.parametrize(
    "status, error, expected",
    [
        (202, None, Outcome("delivered", "accepted (202)")),
        (200, None, Outcome("delivered", "accepted (200)")),
        (400, "Event object is invalid: Length of 'routing_key' is incorrect (should be 32 characters)",
         Outcome("permanent", "rejected by PagerDuty (400): Event object is invalid: Length of 'routing_key' is "
                              "incorrect (should be 32 characters)")),
        (403, None, Outcome("permanent", "rejected by PagerDuty (403)")),
        (404, None, Outcome("permanent", "rejected by PagerDuty (404)")),
        (413, None, Outcome("permanent", "rejected by PagerDuty (413)")),
        (408, None, Outcome("retry", "request timeout (408)", breaker_failure=True)),
        (429, "Enhance Your Calm.", Outcome("retry", "rate limited by PagerDuty (429): Enhance Your Calm.")),
        (500, None, Outcome("retry", "PagerDuty server error (500)", breaker_failure=True)),
        (502, "bad gateway", Outcome("retry", "PagerDuty server error (502): bad gateway", breaker_failure=True)),
        (503, None, Outcome("retry", "PagerDuty server error (503)", breaker_failure=True)),
        (599, None, Outcome("retry", "PagerDuty server error (599)", breaker_failure=True)),
        (None, "ConnectError: connection refused", Outcome("retry", "network error: ConnectError: connection refused",
                                                           breaker_failure=True)),
        (None, "ReadTimeout: timed out", Outcome("retry", "timeout: ReadTimeout: timed out", breaker_failure=True)),
        (None, None, Outcome("retry", "no response", breaker_failure=True)),
        (None, "timeout", Outcome("retry", "timeout", breaker_failure=True)),
        (None, "network error: ConnectError", Outcome("retry", "network error: ConnectError", breaker_failure=True)),
        (301, None, Outcome("permanent", "unexpected HTTP status 301")),
        (101, None, Outcome("permanent", "unexpected HTTP status 101")),
    ],
)  # fmt: skip
def test_classification_table(status, error, expected):
    assert classify_response(status, error) == expected


@pytest.mark.parametrize(
    "attempt, jitter, expected",
    [
        (1, 1.0, 500),
        (2, 1.0, 1000),
        (3, 1.0, 2000),
        (8, 1.0, 60000),
        (200, 1.0, 60000),
        (3, 0.5, 1000),
        (5, 0.0, 0),
    ],
)
def test_backoff_table(attempt, jitter, expected):
    assert backoff_ms(attempt, jitter=jitter) == expected


@pytest.mark.parametrize("attempt, jitter", [(0, 0.5), (1, -0.1), (1, 1.5)])
def test_backoff_rejects_bad_arguments(attempt, jitter):
    with pytest.raises(ValueError):
        backoff_ms(attempt, jitter=jitter)


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    jitter=st.floats(min_value=0, max_value=1),
    base=st.integers(min_value=1, max_value=10_000),
    cap=st.integers(min_value=1, max_value=10**7),
)
def test_backoff_bounds(attempt, jitter, base, cap):
    ms = backoff_ms(attempt, base_ms=base, cap_ms=cap, jitter=jitter)
    ceiling = min(cap, base * 2 ** min(attempt - 1, 64))
    assert 0 <= ms <= ceiling <= cap
    assert backoff_ms(attempt, base_ms=base, cap_ms=cap, jitter=1.0) == ceiling


# ---- circuit breaker -------------------------------------------------------------------------


def fail(state, now, n=1):
    for _ in range(n):
        state = breaker_on_result(state, False, now, failure_threshold=3, open_ms=1000)
    return state


def test_breaker_opens_after_threshold_consecutive_failures():
    s = fail(BreakerState(), 0, 2)
    assert (s.status, s.failures, s.reason) == ("closed", 2, "closed: 2 consecutive failure(s)")
    assert breaker_allows(s, 0) == (True, s)
    s = fail(s, 10)
    assert (s.status, s.open_until_ms, s.reason) == ("open", 1010, "opened after 3 consecutive failures")
    assert breaker_allows(s, 1009) == (False, s)


def test_success_resets_the_failure_count():
    s = fail(BreakerState(), 0, 2)
    s = breaker_on_result(s, True, 1, failure_threshold=3, open_ms=1000)
    assert (s.status, s.failures) == ("closed", 0)
    s = fail(s, 2, 2)
    assert s.status == "closed"


def test_half_open_allows_a_single_trial_then_closes_on_success():
    s = fail(BreakerState(), 0, 3)
    ok, s = breaker_allows(s, 1000)
    assert ok and s.status == "half_open" and s.trial_started_ms == 1000
    assert breaker_allows(s, 1001) == (False, s)  # only one trial at a time
    s = breaker_on_result(s, True, 1100)
    assert s == BreakerState(reason="closed: trial request succeeded")
    assert breaker_allows(s, 1101)[0]


def test_failed_trial_reopens():
    s = fail(BreakerState(), 0, 3)
    _, s = breaker_allows(s, 1000)
    s = breaker_on_result(s, False, 1200, open_ms=1000)
    assert (s.status, s.open_until_ms, s.reason) == ("open", 2200, "reopened: trial request failed")
    assert breaker_allows(s, 2199)[0] is False and breaker_allows(s, 2200)[0] is True


def test_lost_trial_is_replaced_after_open_ms():
    s = fail(BreakerState(), 0, 3)
    _, s = breaker_allows(s, 1000)
    assert breaker_allows(s, 1999)[0] is False
    ok, s2 = breaker_allows(s, 2000)
    assert ok and s2.trial_started_ms == 2000 and s2.status == "half_open"


def test_late_results_do_not_change_an_open_breaker():
    s = fail(BreakerState(), 0, 3)
    assert breaker_on_result(s, True, 5) == s and breaker_on_result(s, False, 5) == s


@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=3000)), max_size=60))
def test_breaker_never_lets_requests_through_while_open(events):
    s, now = BreakerState(), 0
    for ok, step in events:
        now += step
        allowed, s2 = breaker_allows(s, now)
        if s.status == "open" and now < s.open_until_ms:
            assert not allowed and s2 == s
        if (
            s.status == "half_open"
            and s.trial_started_ms is not None
            and now - s.trial_started_ms < s.open_ms
        ):
            assert not allowed
        s = s2
        if allowed:
            s = breaker_on_result(s, ok, now, failure_threshold=3, open_ms=1000)
        assert s.status in ("closed", "open", "half_open")


# ---- token bucket ---------------------------------------------------------------------------


def test_token_bucket_table():
    b = TokenBucket.full(2, 0)
    ok1, w1, b = b.take(0, 1.0, 2)
    ok2, w2, b = b.take(0, 1.0, 2)
    ok3, w3, b = b.take(0, 1.0, 2)
    assert (ok1, w1, ok2, w2, ok3, w3) == (True, 0, True, 0, False, 1000)
    ok4, w4, b = b.take(400, 1.0, 2)
    assert (ok4, w4) == (False, 600)
    ok5, w5, b = b.take(1000, 1.0, 2)
    assert (ok5, w5) == (True, 0)
    assert b.tokens == pytest.approx(0.0) and b.updated_ms == 1000


def test_token_bucket_refill_is_capped_at_burst():
    b = TokenBucket(0.0, 0)
    ok, _, b = b.take(1_000_000, 2.0, 4)
    assert ok and b.tokens == pytest.approx(3.0)


def test_token_bucket_clock_going_back_does_not_refill():
    b = TokenBucket(0.5, 1000)
    ok, wait, b2 = b.take(0, 1.0, 2)
    assert (ok, wait, b2) == (False, 500, TokenBucket(0.5, 1000))


@given(
    rate=st.floats(min_value=0.05, max_value=50),
    burst=st.integers(min_value=1, max_value=20),
    steps=st.lists(st.integers(min_value=0, max_value=2000), min_size=1, max_size=200),
)
def test_token_bucket_never_exceeds_burst_plus_rate_times_t(rate, burst, steps):
    b = TokenBucket.full(burst, 0)
    now, times = 0, []
    for step in steps:
        now += step
        ok, wait, b = b.take(now, rate, burst)
        if ok:
            times.append(now)
        else:
            assert wait >= 1
    # over every horizon [t0, t1] the allowed count is at most burst + rate * (t1 - t0)
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= math.floor(burst + rate * (times[j] - times[i]) / 1000 + 1e-6)


@given(
    rate=st.floats(min_value=0.05, max_value=50),
    burst=st.integers(min_value=1, max_value=5),
    start=st.floats(min_value=0, max_value=1),
)
def test_waiting_the_returned_time_is_enough(rate, burst, start):
    b = TokenBucket(start * 0.999, 0)
    ok, wait, b = b.take(0, rate, burst)
    if not ok:
        ok2, _, _ = b.take(wait, rate, burst)
        assert ok2
        ok3, _, _ = b.take(wait - 1, rate, burst) if wait > 1 else (False, 0, b)
        assert not ok3
