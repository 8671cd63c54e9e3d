"""The forwarder asks `may_call` before every POST (streams/forwarder.py Forwarder.attempt): a worker
that lost its partition during a backoff must not send the late retry. PagerDuty here is a real aiohttp
server on loopback that answers 503 (retryable) and counts the calls it gets."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from pagerstream.streams.forwarder import Forwarder, RateLimiter
from pagerstream.streams.metrics import Metrics


async def _serve(status: int) -> tuple[web.AppRunner, str, list[dict]]:
    calls: list[dict] = []

    async def enqueue(request: web.Request) -> web.Response:
        calls.append(await request.json())
        return web.json_response({"status": "unavailable", "message": "try later"}, status=status)

    app = web.Application()
    app.router.add_post("/v2/enqueue", enqueue)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v2/enqueue", calls


def _event() -> dict:
    body = {"routing_key": "R" * 32, "event_action": "trigger", "dedup_key": "k1",
            "payload": {"summary": "s", "source": "h", "severity": "error"}}
    return {"routing_key": "R" * 32, "endpoint": "enqueue", "body_json": json.dumps(body), "attempt": 0}


def _attempt(status: int, may_call, budget_s: float) -> tuple[str, str, int]:
    async def go() -> tuple[str, str, int]:
        runner, url, calls = await _serve(status)
        fw = Forwarder(enqueue_url=url, change_url=url, limiter=RateLimiter(None, rate=100.0, burst=10),
                       metrics=Metrics(), inline_budget_s=budget_s)
        try:
            res = await fw.attempt(_event(), may_call=may_call)
        finally:
            await fw.close()
            await runner.cleanup()
        return res.outcome, res.reason, len(calls)

    return asyncio.run(go())


def test_a_retry_is_abandoned_once_the_worker_may_no_longer_call():
    asked = []

    def may_call() -> bool:
        asked.append(1)
        return len(asked) == 1  # owner for the first call, not after the backoff

    outcome, reason, calls = _attempt(503, may_call, budget_s=5.0)
    assert (outcome, calls, len(asked)) == ("abandoned", 1, 2), reason


def test_without_the_fence_the_same_budget_retries_in_place():
    outcome, _, calls = _attempt(503, lambda: True, budget_s=2.5)
    assert outcome == "retry" and calls >= 2  # the retries the fence stops above


def test_nothing_is_sent_when_the_worker_may_not_call_at_all():
    outcome, _, calls = _attempt(202, lambda: False, budget_s=1.0)
    assert (outcome, calls) == ("abandoned", 0)
