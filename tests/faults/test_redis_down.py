"""Scenario 3: Redis (this test's own) goes away while alerts keep coming. Forwarding continues on the
worker's local token bucket without ever going above the configured rate (plus burst) in any second,
nothing is lost, and once Redis is back the shared bucket is used again."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import redis

from tests.faults.conftest import (
    OPEN_INGRESS,
    Timer,
    max_per_window,
    pd_body,
    routing_key,
    sandbox_requests,
    sandbox_sequences,
    sequence_problems,
    wait_for,
)

RATE, BURST = 4, 4
DOWN_S = 15.0


def _bucket_keys(url: str) -> list[bytes]:
    c = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return list(c.scan_iter("pagerstream:bucket:*"))
    finally:
        c.close()


def redis_outage(workers: Any, own_redis: Any, own_sandbox: Any, *, down_s: float = DOWN_S) -> dict[str, Any]:
    """The scenario (also run by scripts/soak.py). Returns its figures."""
    timer = Timer()
    rk = routing_key("REDIS")
    env = workers.env({**OPEN_INGRESS, "REDIS_URL": own_redis.url, "PAGERDUTY_EVENTS_URL": own_sandbox.url,
                       "PAGERSTREAM_PD_RATE": str(RATE), "PAGERSTREAM_PD_BURST": str(BURST)})
    w = workers.start(env, name="redis-w")
    run = uuid.uuid4().hex[:6]
    sent: list[str] = []
    stop = threading.Event()
    failure: list[BaseException] = []

    def sender() -> None:  # above the allowed rate, so the bucket is always the limit
        try:
            with httpx.Client(timeout=30) as c:
                i = 0
                while not stop.is_set():
                    key = f"redis-{run}-{i}"
                    r = c.post(w.url + "/v2/enqueue", json=pd_body(rk, "trigger", key, i))
                    assert r.status_code == 202, (r.status_code, r.text[:300])
                    sent.append(key)
                    i += 1
                    time.sleep(1 / (1.25 * RATE))
        except BaseException as e:  # noqa: BLE001
            failure.append(e)

    delivered = lambda: sum(1 for r in sandbox_requests(own_sandbox, rk) if r["status"] == 202)
    t = threading.Thread(target=sender, daemon=True)
    t.start()
    wait_for(lambda: delivered() >= 8 or failure, timeout=60, what="deliveries through the Redis bucket")
    assert _bucket_keys(own_redis.url), "the shared bucket is not in Redis"
    timer.mark("delivering through Redis")

    own_redis.stop()
    timer.mark("Redis stopped")
    before, down_at, down_wall = delivered(), time.monotonic(), time.time()
    wait_for(lambda: (delivered() >= before + 6 * RATE and time.monotonic() - down_at >= down_s) or failure,
             timeout=120, what="deliveries continuing while Redis is down")
    timer.mark(f"{delivered() - before} delivered without Redis")
    assert "using a local bucket" in w.proc.log_tail(400)

    up_wall = time.time()
    own_redis.start()  # same port, empty
    timer.mark("Redis back (empty)")
    wait_for(lambda: _bucket_keys(own_redis.url), timeout=60, what="the shared bucket used again")
    before = delivered()
    wait_for(lambda: delivered() >= before + 4 * RATE or failure, timeout=90, what="deliveries after Redis returned")
    stop.set()
    t.join(timeout=60)
    assert not failure, repr(failure[0])
    timer.mark(f"{len(sent)} sent")

    expected = {k: ["trigger"] for k in sent}

    def complete():
        got = sandbox_sequences(own_sandbox, rk)
        return got if not sequence_problems(expected, got) else None

    wait_for(complete, timeout=60 + len(sent) / RATE, interval=2, what="every alert at PagerDuty")
    timer.mark("all delivered")
    calls = sandbox_requests(own_sandbox, rk)
    # While Redis is down the worker's local bucket is the limit: never more than rate + burst in a second.
    worst_down = max_per_window(c["time"] for c in calls if down_wall <= c["time"] <= up_wall)
    # Across the switches (Redis -> local bucket -> an empty Redis) each new bucket starts full: one extra
    # burst at most in the second of the switch.
    worst = max_per_window(c["time"] for c in calls)
    figures = {"alerts": len(sent), "calls": len(calls), "calls_while_down": sum(
        1 for c in calls if down_wall <= c["time"] <= up_wall), "max_calls_in_1s_while_down": worst_down,
        "max_calls_in_1s": worst, "limit": RATE + BURST, "timeline": str(timer)}
    assert worst_down <= RATE + BURST, f"{worst_down} calls within one second without Redis; limit {RATE}/s + {BURST}"
    assert worst <= RATE + 2 * BURST, f"{worst} calls within one second; limit {RATE}/s + {BURST}, +{BURST} at a switch"
    return figures


def test_redis_down_forwarding_continues_at_the_local_rate_and_recovers(workers, own_redis, own_sandbox):
    print(f"\n[faults] redis: {redis_outage(workers, own_redis, own_sandbox)}")
