"""The shared PagerDuty rate limiter (streams/forwarder.RateLimiter) against a real Redis.

The Lua token bucket uses the Redis server clock, so most comparisons with the reference
`processors.delivery.TokenBucket` are behavioural (same call schedule, real time, tolerances).
One group of tests swaps only the clock line of the script for an injected time, and then compares the
Lua arithmetic with the reference exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from pagerstream.processors.delivery import TokenBucket
from pagerstream.processors.incident import short_hash
from pagerstream.streams.forwarder import _BUCKET_LUA, RateLimiter

from tests.stack import redis_url

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


def _client(url: str | None = None, **kw) -> aioredis.Redis:
    return aioredis.from_url(url or redis_url(), socket_timeout=2, socket_connect_timeout=2, **kw)


def _routing_key() -> str:
    return f"it-rl-{uuid.uuid4().hex}"


def _bucket_key(rk: str) -> str:
    return f"pagerstream:bucket:{short_hash(rk, 24)}"


async def _cleanup(client: aioredis.Redis, *rks: str) -> None:
    with contextlib.suppress(Exception):
        await client.delete(*(_bucket_key(rk) for rk in rks))
    await client.aclose()


async def _hammer(take: Callable[[], Awaitable[int]], *, tasks: int, seconds: float) -> tuple[int, float]:
    """`tasks` concurrent callers take tokens for `seconds`, honouring the returned waits.
    Returns (tokens granted, seconds from the first call to the end of the window)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + seconds
    granted = 0

    async def caller() -> None:
        nonlocal granted
        while (now := loop.time()) < deadline:
            w = await take()
            assert w >= 0
            if w == 0:
                granted += 1
            else:
                await asyncio.sleep(min(w / 1000, max(0.0, deadline - now)))

    await asyncio.gather(*(caller() for _ in range(tasks)))
    return granted, seconds


def _assert_within_budget(granted: int, rate: float, burst: int, elapsed: float, what: str) -> None:
    budget = burst + rate * elapsed
    assert granted <= budget + 1, f"{what}: {granted} tokens granted, budget {budget:.1f} (+1)"
    assert granted >= 0.8 * budget, f"{what}: only {granted} tokens granted of a budget of {budget:.1f}"


# --- (a) burst, then a wait of 1000/rate ms -----------------------------------------------------------
@pytest.mark.parametrize("rate, burst", [(2.0, 4), (5.0, 1), (10.0, 3)])
def test_burst_then_wait_like_the_reference(rate: float, burst: int):
    async def go() -> None:
        client = _client()
        rk = _routing_key()
        lim = RateLimiter(client, rate, burst)
        try:
            t0 = time.monotonic()
            waits = [await lim.take(rk) for _ in range(burst + 1)]
            elapsed_ms = (time.monotonic() - t0) * 1000
            # the reference, called at the same moments (all within elapsed_ms of the first call)
            ref = TokenBucket.full(burst, 0)
            ref_waits = []
            for _ in range(burst + 1):
                ok, w, ref = ref.take(0, rate, burst)
                ref_waits.append(0 if ok else w)
            assert ref_waits == [0] * burst + [round(1000 / rate)]
            assert waits[:burst] == [0] * burst
            assert 1000 / rate - (elapsed_ms + 2) <= waits[burst] <= 1000 / rate, (waits, elapsed_ms)
            assert lim.redis_errors == 0
            # waiting the announced time (+2 ms for millisecond truncation) is enough, and not much more is needed
            await asyncio.sleep((waits[burst] + 2) / 1000)
            assert await lim.take(rk) == 0
            w = await lim.take(rk)
            assert 1000 / rate - 10 <= w <= 1000 / rate
            assert lim.redis_errors == 0
        finally:
            await _cleanup(client, rk)

    asyncio.run(go())


def test_hammering_stays_within_the_budget_like_the_reference():
    rate, burst, seconds = 20.0, 5, 2.0

    async def go() -> None:
        client = _client()
        rk = _routing_key()
        redis_lim = RateLimiter(client, rate, burst)
        local_lim = RateLimiter(None, rate, burst)  # the reference TokenBucket with the local clock
        try:
            (g_redis, el), (g_local, _) = await asyncio.gather(
                _hammer(lambda: redis_lim.take(rk), tasks=4, seconds=seconds),
                _hammer(lambda: local_lim.take(rk), tasks=4, seconds=seconds),
            )
        finally:
            await _cleanup(client, rk)
        assert redis_lim.redis_errors == 0
        _assert_within_budget(g_redis, rate, burst, el, "Redis bucket")
        _assert_within_budget(g_local, rate, burst, el, "reference bucket")
        assert abs(g_redis - g_local) <= 2, (g_redis, g_local)

    asyncio.run(go())


# --- (c) two workers, one budget -----------------------------------------------------------------------
def test_two_workers_share_one_budget():
    rate, burst, seconds = 20.0, 5, 2.0

    async def go() -> None:
        c1, c2 = _client(), _client()  # two connections, as two worker processes would have
        rk = _routing_key()
        w1, w2 = RateLimiter(c1, rate, burst), RateLimiter(c2, rate, burst)
        granted = {"w1": 0, "w2": 0}

        def counting(lim: RateLimiter, name: str) -> Callable[[], Awaitable[int]]:
            async def take() -> int:
                w = await lim.take(rk)
                if w == 0:
                    granted[name] += 1
                return w
            return take

        # control: two limiters that do NOT share (local buckets) get about twice the budget
        l1, l2 = RateLimiter(None, rate, burst), RateLimiter(None, rate, burst)
        try:
            (g1, el), (g2, _), (gl1, _), (gl2, _) = await asyncio.gather(
                _hammer(counting(w1, "w1"), tasks=3, seconds=seconds),
                _hammer(counting(w2, "w2"), tasks=3, seconds=seconds),
                _hammer(lambda: l1.take(rk), tasks=3, seconds=seconds),
                _hammer(lambda: l2.take(rk), tasks=3, seconds=seconds),
            )
        finally:
            await c2.aclose()
            await _cleanup(c1, rk)
        assert (g1, g2) == (granted["w1"], granted["w2"])
        assert w1.redis_errors == w2.redis_errors == 0
        _assert_within_budget(g1 + g2, rate, burst, el, "two workers sharing Redis")
        assert g1 >= 1 and g2 >= 1, (g1, g2)  # both took part
        assert gl1 + gl2 > burst + rate * el + 1, "control: unshared buckets should exceed the single budget"

    asyncio.run(go())


# --- (d) Redis down: local fallback still limits -------------------------------------------------------
def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_redis_unreachable_falls_back_to_a_local_bucket():
    rate, burst = 5.0, 3

    async def go() -> None:
        client = _client(f"redis://127.0.0.1:{_closed_port()}/0")
        lim = RateLimiter(client, rate, burst)
        rk = _routing_key()
        try:
            t0 = time.monotonic()
            waits = [await lim.take(rk) for _ in range(burst + 1)]
            took = time.monotonic() - t0
            # the fallback starts empty (the shared bucket may just have been drained by other workers):
            # the first token comes after 1/rate
            assert 1000 / rate - (took * 1000 + 2) <= waits[0] <= 1000 / rate, (waits, took)
            assert all(w > 0 for w in waits), waits
            assert lim.redis_errors == burst + 1
            assert took < 2.0, f"falling back took {took:.2f}s for {burst + 1} calls"
            # another routing key has its own bucket, empty as well
            assert await lim.take(_routing_key()) > 0
            # sustained load: still limited
            before = lim.redis_errors
            granted, el = await _hammer(lambda: lim.take(rk), tasks=3, seconds=1.0)
            # the bucket is empty at the start of this window: budget is rate x elapsed (+1)
            assert granted <= rate * el + 1 + 1, granted
            assert granted >= 0.8 * rate * el - 1, granted
            assert lim.redis_errors > before
        finally:
            await client.aclose()

    asyncio.run(go())


# --- exact comparison of the Lua arithmetic, with an injected clock --------------------------------------
_CLOCK = "redis.call('TIME')"
assert _BUCKET_LUA.count(_CLOCK) == 1, "the bucket script no longer reads the clock the way these tests expect"
_LUA_FIXED_CLOCK = _BUCKET_LUA.replace(_CLOCK, "{ARGV[3], ARGV[4]}")
T = 1_700_000_000_000  # ms


async def _lua_run(client: aioredis.Redis, rate: float, burst: int, times_ms: list[int]) -> list[int]:
    script = client.register_script(_LUA_FIXED_CLOCK)
    key = f"pagerstream:test:lua:{uuid.uuid4().hex}"
    try:
        return [int(await script(keys=[key], args=[rate, burst, t // 1000, (t % 1000) * 1000])) for t in times_ms]
    finally:
        await client.delete(key)


def _ref_run(rate: float, burst: int, times_ms: list[int]) -> list[int]:
    b = TokenBucket.full(burst, times_ms[0])
    out = []
    for t in times_ms:
        ok, w, b = b.take(t, rate, burst)
        out.append(0 if ok else w)
    return out


def test_lua_with_injected_clock_sees_the_clock():
    async def go() -> None:
        client = _client()
        try:
            assert await _lua_run(client, 2.0, 1, [T, T, T + 250, T + 500, T + 500]) == [0, 500, 250, 0, 500]
        finally:
            await client.aclose()

    asyncio.run(go())


# Rates whose per-millisecond refill (rate/1000) is a power of two: every token count is exact in binary
# floating point and prints exactly, so Lua and Python must agree to the millisecond.
DYADIC_RATES = [1000 / 2**k for k in range(1, 10)]  # 500/s ... 1.953125/s


def test_lua_arithmetic_equals_the_reference_exactly_for_exact_rates():
    rng = random.Random(20261127)

    async def go() -> None:
        client = _client()
        try:
            for _ in range(40):
                rate, burst = rng.choice(DYADIC_RATES), rng.choice([1, 2, 4, 5, 10])
                t, times = T + rng.randint(0, 999), []
                for _ in range(50):
                    t += rng.choice([0, 0, 1, 2, 3, 7, 13, 50, 333, 1000, 4000])
                    times.append(t)
                assert await _lua_run(client, rate, burst, times) == _ref_run(rate, burst, times), (rate, burst)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_lua_wait_is_not_longer_than_needed():
    async def go() -> None:
        client = _client()
        try:
            times = [T, T + 499]
            assert _ref_run(2.0, 1, times) == [0, 1]
            assert await _lua_run(client, 2.0, 1, times) == [0, 1]
        finally:
            await client.aclose()

    asyncio.run(go())


def test_lua_waiting_the_announced_time_is_enough():
    async def go() -> None:
        client = _client()
        rate = 1 / 3  # one token every 3 s
        try:
            first = await _lua_run(client, rate, 1, [T, T + 64])
            assert first[1] > 0
            again = await _lua_run(client, rate, 1, [T, T + 64, T + 64 + first[1]])
            assert again == [0, first[1], 0], again
        finally:
            await client.aclose()

    asyncio.run(go())
