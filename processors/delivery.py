"""Delivery policy for the PagerDuty forwarder: pure decisions, explicit time, explicit randomness.

* classify_response: what an HTTP answer (or its absence) means: delivered, retry, permanent.
* backoff_ms: exponential backoff with full jitter, given the random draw.
* breaker_*: a circuit breaker per routing key (closed -> open -> half_open with one trial).
* TokenBucket: the rate limit math; the forwarder's Redis Lua script implements the same formula
  and is tested against this one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

OutcomeKind = Literal["delivered", "retry", "permanent"]
BreakerStatus = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    reason: str
    breaker_failure: bool = False  # does this count against the circuit breaker?


def classify_response(status: int | None, error: str | None) -> Outcome:
    """PagerDuty's rules: 2xx delivered; 408, 429, 5xx, network errors and timeouts are retried;
    any other answer is permanent (retrying the same body cannot succeed).

    429 does not count against the breaker: PagerDuty is up and asks us to slow down, which the
    token bucket and the backoff handle. A permanent rejection is about the event, not the service.
    """
    detail = f": {error}" if error else ""
    if status is None:
        text = (error or "").lower()
        if not text:
            return Outcome("retry", "no response", breaker_failure=True)
        kind = "timeout" if "timeout" in text or "timed out" in text else "network error"
        reason = error if text.startswith(kind) else f"{kind}{detail}"
        return Outcome("retry", str(reason), breaker_failure=True)
    if 200 <= status <= 299:
        return Outcome("delivered", f"accepted ({status})")
    if status == 429:
        return Outcome("retry", f"rate limited by PagerDuty (429){detail}")
    if status == 408:
        return Outcome("retry", f"request timeout (408){detail}", breaker_failure=True)
    if 500 <= status <= 599:
        return Outcome("retry", f"PagerDuty server error ({status}){detail}", breaker_failure=True)
    if 400 <= status <= 499:
        return Outcome("permanent", f"rejected by PagerDuty ({status}){detail}")
    return Outcome("permanent", f"unexpected HTTP status {status}{detail}")


def backoff_ms(attempt: int, *, base_ms: int = 500, cap_ms: int = 60000, jitter: float) -> int:
    """Wait before retry number `attempt` (1 = first retry): a draw in [0, min(cap, base * 2^(attempt-1))].

    `jitter` is the random draw in [0, 1] ("full jitter"); passing it keeps this function pure.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be in [0, 1], got {jitter}")
    ceiling = cap_ms if attempt > 63 else min(cap_ms, base_ms * 2 ** (attempt - 1))
    return int(jitter * ceiling)


# ---- circuit breaker ------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakerState:
    status: BreakerStatus = "closed"
    failures: int = 0  # consecutive failures while closed
    open_until_ms: int = 0
    open_ms: int = 0  # how long it was opened for; also the time a half-open trial may take
    trial_started_ms: int | None = None
    reason: str = "closed"


def breaker_allows(state: BreakerState, now_ms: int) -> tuple[bool, BreakerState]:
    """May a request go out now? Open lets nothing through until `open_until_ms`, then one trial
    (half_open). A trial with no result after `open_ms` is presumed lost and another is allowed."""
    if state.status == "closed":
        return True, state
    if state.status == "open":
        if now_ms < state.open_until_ms:
            return False, state
        return True, replace(
            state, status="half_open", trial_started_ms=now_ms, reason="half-open: one trial request"
        )
    if state.trial_started_ms is not None and now_ms - state.trial_started_ms < state.open_ms:
        return False, state
    return True, replace(
        state, trial_started_ms=now_ms, reason="half-open: earlier trial got no result; new trial"
    )


def breaker_on_result(
    state: BreakerState, ok: bool, now_ms: int, *, failure_threshold: int = 5, open_ms: int = 30000
) -> BreakerState:
    """The state after a request finished. `ok` is False only for outcomes with `breaker_failure`."""
    if state.status == "open":
        return state  # a late answer to a request sent before the breaker opened changes nothing
    if state.status == "half_open":
        if ok:
            return BreakerState(reason="closed: trial request succeeded")
        return BreakerState("open", 0, now_ms + open_ms, open_ms, None, "reopened: trial request failed")
    if ok:
        return state if state.failures == 0 else BreakerState(reason="closed: success after failures")
    failures = state.failures + 1
    if failures >= failure_threshold:
        return BreakerState(
            "open", failures, now_ms + open_ms, open_ms, None, f"opened after {failures} consecutive failures"
        )
    return replace(state, failures=failures, reason=f"closed: {failures} consecutive failure(s)")


# ---- token bucket ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenBucket:
    """`tokens` available at `updated_ms`. The formula (mirrored in Lua):

    elapsed = max(0, now - updated)
    tokens  = min(burst, tokens + elapsed * rate / 1000); updated = max(now, updated)
    tokens >= 1 ? (take one, wait 0) : (wait = the least whole ms w >= 1 with
                                        tokens + w * rate / 1000 >= 1, in the same float arithmetic)
    """

    tokens: float
    updated_ms: int

    @classmethod
    def full(cls, burst: int, now_ms: int) -> TokenBucket:
        return cls(float(burst), now_ms)

    def take(self, now_ms: int, rate_per_s: float, burst: int) -> tuple[bool, int, TokenBucket]:
        """(allowed, milliseconds to wait when not, new bucket)."""
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        elapsed = max(0, now_ms - self.updated_ms)
        tokens = min(float(burst), self.tokens + elapsed * rate_per_s / 1000.0)
        updated = max(now_ms, self.updated_ms)
        if tokens >= 1.0:
            return True, 0, TokenBucket(tokens - 1.0, updated)
        # ceil() gives the answer up to float rounding; the two loops settle it exactly, so that
        # waiting `wait` ms always succeeds and waiting one ms less never does.
        wait = max(1, math.ceil((1.0 - tokens) * 1000.0 / rate_per_s))
        while tokens + wait * rate_per_s / 1000.0 < 1.0:
            wait += 1
        while wait > 1 and tokens + (wait - 1) * rate_per_s / 1000.0 >= 1.0:
            wait -= 1
        return False, wait, TokenBucket(tokens, updated)
