"""The forwarder's rate limiter when Redis is unreachable (streams/forwarder.py RateLimiter): the local
fallback bucket gets this worker's share of the rate and starts empty. Redis here is a real client
pointed at a port nothing listens on, so every call fails the way it does in an outage."""

from __future__ import annotations

import asyncio
import socket

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from pagerstream.streams.forwarder import RateLimiter


def _dead_redis() -> aioredis.Redis:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connection refused
    # no client-side retries: each call fails at once (the worker's client retries; the logic is the same)
    return aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))


def test_the_fallback_bucket_gets_this_workers_share_and_starts_empty():
    async def go() -> tuple[tuple[float, int], list[int], int]:
        lim = RateLimiter(_dead_redis(), rate=10.0, burst=4, local_share=lambda: 0.5)
        waits = [await lim.take("R" * 32) for _ in range(3)]
        return lim.local_limits(), waits, lim.redis_errors

    limits, waits, errors = asyncio.run(go())
    assert limits == (5.0, 2)  # half the partitions: half the rate, half the burst
    assert errors == 3
    # empty at the start: the first token comes after 1/5 s, not at once
    assert 150 <= waits[0] <= 200 and all(w > 0 for w in waits), waits


def test_the_share_is_bounded():
    lim = RateLimiter(_dead_redis(), rate=10.0, burst=4, local_share=lambda: 0.0)
    assert lim.local_limits() == (0.5, 1)  # a worker holding no partition yet still moves, slowly
    lim = RateLimiter(_dead_redis(), rate=10.0, burst=4, local_share=lambda: 3.0)
    assert lim.local_limits() == (10.0, 4)

    def broken() -> float:
        raise RuntimeError("no assignment")

    assert RateLimiter(_dead_redis(), rate=10.0, burst=4, local_share=broken).local_limits() == (0.5, 1)


def test_without_redis_at_all_one_worker_owns_the_whole_limit():
    async def go() -> list[int]:
        lim = RateLimiter(None, rate=10.0, burst=4, local_share=lambda: 0.25)
        return [await lim.take("R" * 32) for _ in range(5)]

    waits = asyncio.run(go())
    assert waits[:4] == [0, 0, 0, 0] and waits[4] > 0  # full burst, then the rate
