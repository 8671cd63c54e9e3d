"""Side effects at the edge: the calls to PagerDuty Events API v2.

Per routing key: a token bucket shared through Redis (several workers, one budget), a circuit
breaker, bounded in-place retries with backoff; what cannot be delivered now is parked on the
retry topic by the agents in streams/app.py, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pagerstream.processors import delivery
from pagerstream.processors.incident import short_hash

log = logging.getLogger("pagerstream.forwarder")

# Token bucket in one Lua call so that check-and-take is atomic across workers. The clock is the
# Redis server's (TIME), so workers with skewed clocks still share one budget. Hand-written because
# the few PyPI rate-limit packages are thin and unmaintained; this is the reference math of
# processors/delivery.TokenBucket, which the tests compare it to.
_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(s[1])
local ts = tonumber(s[2])
if tokens == nil then tokens = burst; ts = now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000.0); ts = now end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.max(1, math.ceil((1 - tokens) * 1000.0 / rate))
  while tokens + wait * rate / 1000.0 < 1 do wait = wait + 1 end
  while wait > 1 and tokens + (wait - 1) * rate / 1000.0 >= 1 do wait = wait - 1 end
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000.0 / rate) + 60000)
return wait
"""


class RateLimiter:
    """Shared token bucket per routing key; falls back to a local bucket while Redis is down.

    The fallback must stay safe with several workers, each with its own local bucket: it runs at
    `rate x local_share()`, the share of the forwarding partitions this worker holds (so the workers'
    local buckets add up to the configured rate, not N times it), and it starts empty, because the
    shared bucket it replaces may just have been drained by the other workers."""

    def __init__(self, redis_client: aioredis.Redis | None, rate: float, burst: int,
                 local_share: Callable[[], float] = lambda: 1.0) -> None:
        self.redis = redis_client
        self.rate = rate
        self.burst = burst
        self.local_share = local_share
        self._script = redis_client.register_script(_BUCKET_LUA) if redis_client is not None else None
        self._local: dict[str, delivery.TokenBucket] = {}
        self.redis_errors = 0

    def local_limits(self) -> tuple[float, int]:
        """(rate, burst) of the local bucket: this worker's share of the configured limit."""
        if self._script is None:  # no Redis at all: one worker owns the whole limit
            return self.rate, self.burst
        try:
            share = float(self.local_share())
        except Exception:  # noqa: BLE001 - no assignment known (rebalancing): the smallest safe share
            share = 0.0
        share = min(1.0, max(share, 0.05))  # never 0: a worker holding partitions must move
        return self.rate * share, max(1, int(self.burst * share))

    async def take(self, routing_key: str) -> int:
        """Take one token; return 0, or the ms to wait before trying again."""
        key = f"pagerstream:bucket:{short_hash(routing_key, 24)}"
        if self._script is not None:
            try:
                wait = int(await self._script(keys=[key], args=[self.rate, self.burst]))
                self._local.pop(key, None)  # the next outage starts a fresh, empty local bucket
                return wait
            except (RedisError, OSError) as e:
                self.redis_errors += 1
                log.warning("rate limiter: Redis unavailable (%s); using a local bucket", type(e).__name__)
        rate, burst = self.local_limits()
        now = int(time.time() * 1000)
        b = self._local.get(key) or delivery.TokenBucket(tokens=0.0 if self._script is not None else float(burst),
                                                         updated_ms=now)
        ok, wait, b2 = b.take(now, rate, burst)
        self._local[key] = b2
        return 0 if ok else max(1, wait)


@dataclass
class Attempt:
    outcome: str  # delivered | retry | permanent | abandoned (may_call said no: nothing was sent)
    status: int | None
    reason: str
    not_before_ms: int = 0


class Forwarder:
    def __init__(self, *, enqueue_url: str, change_url: str, limiter: RateLimiter, metrics: Any,
                 timeout_s: float = 10.0, inline_budget_s: float = 10.0,
                 failure_threshold: int = 5, open_ms: int = 30_000) -> None:
        self.enqueue_url = enqueue_url
        self.change_url = change_url
        self.limiter = limiter
        self.metrics = metrics
        self.inline_budget_s = inline_budget_s
        self.failure_threshold = failure_threshold
        self.open_ms = open_ms
        self.breakers: dict[str, delivery.BreakerState] = {}
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), follow_redirects=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            headers={"User-Agent": "pagerstream/0.1", "Content-Type": "application/json"},
        )

    async def close(self) -> None:
        await self.client.aclose()

    def _breaker_gauge(self, rk: str, st: delivery.BreakerState) -> None:
        self.metrics.breaker.labels(rk[-4:]).set({"closed": 0, "half_open": 1, "open": 2}[st.status])

    async def attempt(self, ev: dict[str, Any], *, inline_budget_s: float | None = None,
                      may_call: Callable[[], bool] | None = None) -> Attempt:
        """Try to deliver one event now, retrying in place within the budget.

        `may_call` is asked right before every POST: a rate-limit wait or a backoff can last seconds,
        and in that time a rebalance may hand the partition to another worker, which replays the
        key's calls; a late retry from here would then reach PagerDuty after a newer call."""
        rk = ev["routing_key"]
        budget = self.inline_budget_s if inline_budget_s is None else inline_budget_s
        deadline = time.monotonic() + budget
        attempt_no = int(ev.get("attempt") or 0)
        while True:
            now_ms = int(time.time() * 1000)
            st = self.breakers.get(rk) or delivery.BreakerState()
            allowed, st = delivery.breaker_allows(st, now_ms)
            self.breakers[rk] = st
            self._breaker_gauge(rk, st)
            if not allowed:
                return Attempt("retry", None, "circuit breaker open", st.open_until_ms)
            wait_ms = await self.limiter.take(rk)
            while wait_ms > 0:
                if time.monotonic() + wait_ms / 1000 > deadline:
                    return Attempt("retry", None, "rate limited", now_ms + wait_ms)
                self.metrics.rate_wait.observe(wait_ms / 1000)
                await asyncio.sleep(wait_ms / 1000)
                wait_ms = await self.limiter.take(rk)
            if may_call is not None and not may_call():
                return Attempt("abandoned", None, "no longer allowed to call for this partition")
            url = self.change_url if ev["endpoint"] == "change" else self.enqueue_url
            status: int | None = None
            err: str | None = None
            try:
                resp = await self.client.post(url, content=ev["body_json"].encode())
                status = resp.status_code
                if status >= 400:
                    err = _error_detail(resp)
            except httpx.TimeoutException:
                err = "timeout"
            except httpx.HTTPError as e:
                err = f"network error: {type(e).__name__}"
            outcome = delivery.classify_response(status, err)
            self.metrics.pd_requests.labels(outcome.kind, str(status or "none")).inc()
            now_ms = int(time.time() * 1000)
            st = delivery.breaker_on_result(self.breakers.get(rk) or delivery.BreakerState(),
                                            not outcome.breaker_failure, now_ms,
                                            failure_threshold=self.failure_threshold, open_ms=self.open_ms)
            self.breakers[rk] = st
            self._breaker_gauge(rk, st)
            if outcome.kind != "retry":
                return Attempt(outcome.kind, status, outcome.reason)
            attempt_no += 1
            pause_ms = delivery.backoff_ms(attempt_no, base_ms=500, cap_ms=60_000, jitter=random.random())
            if status == 429:  # PagerDuty asks for minutes, not milliseconds
                pause_ms = max(pause_ms, 2_000)
            if time.monotonic() + pause_ms / 1000 > deadline:
                return Attempt("retry", status, outcome.reason, now_ms + pause_ms)
            await asyncio.sleep(pause_ms / 1000)


def _error_detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        msg = body.get("message") or body.get("status") or ""
        errs = body.get("errors") or []
        return f"{msg}: {', '.join(map(str, errs))}"[:500] if errs else str(msg)[:500]
    except Exception:
        return resp.text[:200]
