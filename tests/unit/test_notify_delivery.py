"""The delivery stage (pagerstream/notify/delivery.py) against the real Redis and real HTTP servers.

Destinations are aiohttp servers on 127.0.0.1 (allow-listed explicitly for the guarded client) that
answer from a script. Waits are checked as the values the stage computed (an injected sleep/clock
records them), never as wall-clock durations; "a hung destination does not delay another" is checked
as completion order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Self

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from pagerstream.cli_notify import notifications, run_replay
from pagerstream.notify.base import ChannelContext, Destination, Notification, classify_http
from pagerstream.notify.delivery import (
    AttemptRecord,
    DeadLetter,
    Delivery,
    DeliveryPolicy,
    fold,
    notification_key,
    parse_since,
)
from pagerstream.notify.outbound import outbound_client
from tests.stack import ensure_stack, redis_ready, redis_url

T0 = 1_800_000_100.0  # the fake clock starts 100 s after the changes happened
HANG = "hang"


# --- helpers -----------------------------------------------------------------------------------------
@dataclass
class Resp:
    status: int = 200
    body: str = '{"status":"ok"}'
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """A destination: answers each request with the next step of `script` (the last one repeats).
    HANG: hold the request until `release` is set, then answer 200."""

    def __init__(self, *script: Resp | str) -> None:
        self.script = list(script) or [Resp()]
        self.bodies: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.arrived = asyncio.Condition()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        step = self.script[min(len(self.bodies), len(self.script) - 1)]
        async with self.arrived:
            self.bodies.append(body)
            self.arrived.notify_all()
        if step == HANG:
            await self.release.wait()
            step = Resp()
        assert isinstance(step, Resp)
        return web.Response(status=step.status, text=step.body, headers=step.headers,
                            content_type="application/json")

    async def wait_requests(self, n: int) -> None:
        async with self.arrived:
            await self.arrived.wait_for(lambda: len(self.bodies) >= n)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


class PostChannel:
    """A minimal real channel: POSTs the change as JSON; lets network errors propagate (the stage
    classifies them)."""

    kind = "post"

    async def send(self, n: Notification, ctx: ChannelContext):
        resp = await ctx.http.post(n.destination.config["url"], json={
            "key": n.key, "version": n.incident["version"], "attempt": n.attempt,
            "bundled": [b["version"] for b in n.bundled]})
        return classify_http(resp)


CH = PostChannel()


class FakeTime:
    def __init__(self, t: float = T0) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.sleeps.append(round(s, 6))
        self.t += s
        await asyncio.sleep(0.002)  # let the rest of the loop run; no wall-clock waiting


def incident(iid: str, version: int, change: str = "opened", state: str = "triggered") -> dict[str, Any]:
    return {"event_id": f"{iid}#{version}", "incident_id": iid, "version": version, "change": change,
            "reason": "test", "state": state, "pd_dedup_key": f"pd-{iid}", "routing_key_hint": "abcd",
            "service": "payments", "team": "payments", "summary": "Disk full on db-1", "severity": "critical",
            "open_alerts": 1, "total_alerts": version, "duplicates": 0, "opened_at": 1_800_000_000_000,
            "at": 1_800_000_000_000, "scores": [], "similar": []}


def note(dest: Destination, iid: str, version: int, **kw: Any) -> Notification:
    inc = incident(iid, version, **kw)
    return Notification(key=notification_key(inc, dest.name), incident=inc, destination=dest)


def dest(url: str, **kw: Any) -> Destination:
    return Destination(name=f"d-{uuid.uuid4().hex[:8]}", channel="post", config={"url": url},
                       rate_per_second=kw.pop("rate", 1000.0), burst=kw.pop("burst", 1000), **kw)


@contextlib.asynccontextmanager
async def stage():
    if not redis_ready(redis_url(), 2):
        ensure_stack()
    r = aioredis.from_url(redis_url(), socket_timeout=5, socket_connect_timeout=5)
    ns = f"ut-{uuid.uuid4().hex[:8]}."
    http = outbound_client(allowlist="127.0.0.1", timeout=30)
    ctx = ChannelContext(http=http, secret=lambda ref: {}, render=lambda t, n: "", refs=None)  # type: ignore[arg-type]
    e = SimpleNamespace(r=r, ns=ns, ctx=ctx, made=[], attempts=[], dead=[])

    def make(policy: DeliveryPolicy | None = None, time: FakeTime | None = None, **kw: Any) -> Delivery:
        async def on_dead(n: Notification, res: Any) -> None:
            e.dead.append((n, res))

        if time is not None:
            kw.setdefault("clock", time.clock)
            kw.setdefault("sleep", time.sleep)
        d = Delivery(r, ctx, registry=kw.pop("registry", CollectorRegistry()),
                     policy=policy or DeliveryPolicy(bundle_window_s=0), namespace=ns,
                     on_attempt=kw.pop("on_attempt", e.attempts.append), on_dead_letter=on_dead, **kw)
        e.made.append(d)
        return d

    e.make = make
    try:
        yield e
    finally:
        for d in e.made:
            await d.close()
        await http.aclose()
        keys = [k async for k in r.scan_iter(match=f"pagerstream:{ns}*")]
        keys += [d.bucket_key(name) for d in e.made for name in d._lanes]
        if keys:
            await r.delete(*keys)
        await r.aclose()


def made_with_registry(e: Any, **kw: Any) -> tuple[Delivery, CollectorRegistry]:
    reg = CollectorRegistry()
    d = e.make(registry=reg, **kw)
    return d, reg


def outcomes(recs: list[AttemptRecord]) -> list[tuple[int, int | None, str]]:
    return [(a.attempt, a.status, a.outcome) for a in recs]


# --- retries --------------------------------------------------------------------------------------
async def test_500_then_200_is_delivered_exactly_once():
    async with Receiver(Resp(500, '{"error":"boom"}'), Resp(200)) as srv, stage() as e:
        ft = FakeTime()
        d, reg = made_with_registry(e, time=ft, rand=lambda: 0.5)
        dst = dest(srv.url)
        n = note(dst, "inc-1", 1)
        out = await d.deliver(n, CH)
        assert out.kind == "delivered" and out.attempts == 2 and out.result.status == 200
        assert [b["attempt"] for b in srv.bodies] == [1, 2] and {b["key"] for b in srv.bodies} == {n.key}
        assert ft.sleeps == [0.5]  # full jitter: 0.5 * min(cap, base * 2^0) with base 1 s
        assert outcomes(e.attempts) == [(1, 500, "retry"), (2, 200, "delivered")]
        assert e.attempts[0].wait_s == 0.5 and '"boom"' in e.attempts[0].answer
        assert e.attempts[0].incident_id == "inc-1" and e.attempts[0].destination == dst.name
        # the idempotency record: written after success, kept at least 7 days
        ttl = await e.r.ttl(d.done_key(n.key))
        assert 7 * 86_400 < ttl <= 8 * 86_400
        labels = {"destination": dst.name, "channel": "post"}
        assert reg.get_sample_value("pagerstream_notify_attempts_total", {**labels, "outcome": "retry"}) == 1
        assert reg.get_sample_value("pagerstream_notify_attempts_total", {**labels, "outcome": "delivered"}) == 1
        # change at T0 - 100 s, delivered at T0 + 0.5 s (the fake clock)
        assert reg.get_sample_value("pagerstream_notify_latency_seconds_sum", {"destination": dst.name}) == 100.5
        assert reg.get_sample_value("pagerstream_notify_breaker_state", {"destination": dst.name}) == 0
        # the same notification again (a replay): skipped, nothing sent
        again = await d.deliver(n, CH)
        assert again.kind == "duplicate" and len(srv.bodies) == 2
        assert e.attempts[-1].outcome == "duplicate"


async def test_429_retry_after_is_honoured():
    async with Receiver(Resp(429, "slow down", {"Retry-After": "7"}), Resp(200)) as srv, stage() as e:
        ft = FakeTime()
        d = e.make(time=ft, rand=lambda: 1.0)
        out = await d.deliver(note(dest(srv.url), "inc-1", 1), CH)
        assert out.kind == "delivered" and len(srv.bodies) == 2
        assert ft.sleeps == [7.0]  # what the provider asked for, not the backoff (1.0 here)
        assert e.attempts[0].status == 429 and e.attempts[0].wait_s == 7.0


async def test_retry_after_beyond_the_budget_dead_letters_with_the_answer():
    async with Receiver(Resp(429, "come back tomorrow", {"Retry-After": "86400"})) as srv, stage() as e:
        ft = FakeTime()
        d = e.make(DeliveryPolicy(budget_s=600, bundle_window_s=0), time=ft)
        out = await d.deliver(note(dest(srv.url), "inc-1", 1), CH)
        assert out.kind == "dead_letter" and len(srv.bodies) == 1 and ft.sleeps == []
        assert "budget" in out.result.answer and "come back tomorrow" in out.result.answer
        assert len(e.dead) == 1


async def test_backoff_is_exponential_capped_and_ends_in_a_dead_letter():
    async with Receiver(Resp(503, "unavailable")) as srv, stage() as e:
        ft = FakeTime()
        d = e.make(DeliveryPolicy(max_attempts=5, backoff_base_s=1, backoff_cap_s=3, breaker_failures=100,
                                  bundle_window_s=0), time=ft, rand=lambda: 1.0)
        n = note(dest(srv.url), "inc-1", 1)
        out = await d.deliver(n, CH)
        assert ft.sleeps == [1.0, 2.0, 3.0, 3.0]  # 1, 2, 4->3, 8->3
        assert out.kind == "dead_letter" and out.attempts == 5 and len(srv.bodies) == 5
        assert out.result.status == 503 and "gave up after 5 attempts" in out.result.answer
        assert [a.outcome for a in e.attempts] == ["retry"] * 4 + ["dead_letter"]
        [(dn, res)] = e.dead
        assert dn.key == n.key and dn.attempt == 5 and res.status == 503
        assert await e.r.get(d.done_key(n.key)) is None


async def test_permanent_400_is_dead_lettered_at_once_with_the_answer():
    async with Receiver(Resp(400, '{"error":"channel_not_found"}')) as srv, stage() as e:
        ft = FakeTime()
        d = e.make(time=ft)
        n = note(dest(srv.url), "inc-1", 1)
        out = await d.deliver(n, CH)
        assert out.kind == "dead_letter" and out.attempts == 1 and len(srv.bodies) == 1 and ft.sleeps == []
        assert out.result.permanent and out.result.status == 400 and "channel_not_found" in out.result.answer
        assert outcomes(e.attempts) == [(1, 400, "dead_letter")]
        assert "channel_not_found" in e.attempts[0].answer
        [(dn, res)] = e.dead
        assert res.answer == '{"error":"channel_not_found"}'
        line = DeadLetter.of(dn, res, at_ms=123).to_json()
        back = DeadLetter.from_json(line)
        assert back.key == n.key and back.status == 400 and back.incident == n.incident and back.failed_at == 123


async def test_refused_target_is_permanent_and_timeouts_are_retried():
    async with Receiver(HANG, Resp(200)) as srv, stage() as e:
        ft = FakeTime()
        d = e.make(DeliveryPolicy(call_timeout_s=0.3, bundle_window_s=0), time=ft, rand=lambda: 0.0)
        out = await d.deliver(note(dest(srv.url), "inc-1", 1), CH)
        srv.release.set()
        assert out.kind == "delivered" and out.attempts == 2
        assert e.attempts[0].outcome == "retry" and "timeout" in e.attempts[0].answer
        blocked = await d.deliver(note(dest("http://169.254.169.254/latest/meta-data/"), "inc-2", 1), CH)
        assert blocked.kind == "dead_letter" and blocked.attempts == 1 and blocked.result.permanent
        assert "metadata" in blocked.result.answer


# --- idempotency ---------------------------------------------------------------------------------
async def test_duplicate_key_is_skipped_by_another_worker():
    async with Receiver(Resp(200)) as srv, stage() as e:
        a, b = e.make(), e.make()
        dst = dest(srv.url)
        n = note(dst, "inc-1", 1)
        assert (await a.deliver(n, CH)).kind == "delivered"
        out = await b.deliver(Notification(n.key, dict(n.incident), dst), CH)  # recomputed after a rebalance
        assert out.kind == "duplicate" and len(srv.bodies) == 1
        assert out.result is None and e.attempts[-1].outcome == "duplicate" and e.attempts[-1].attempt == 0
        # the same key submitted twice at once (replay overlapping the live stream): one send
        n2 = note(dst, "inc-2", 1)
        o1, o2 = await asyncio.gather(a.deliver(n2, CH), a.deliver(n2, CH))
        assert o1 == o2 and o1.kind == "delivered" and len(srv.bodies) == 2


# --- isolation -------------------------------------------------------------------------------------
async def test_hung_destination_does_not_delay_another():
    async with Receiver(HANG) as slow, Receiver(Resp(200)) as fast, stage() as e:
        d = e.make(DeliveryPolicy(call_timeout_s=120, max_in_flight=2, bundle_window_s=0))
        slow_d, fast_d = dest(slow.url), dest(fast.url)
        done: list[str] = []

        async def run(n: Notification, tag: str) -> Any:
            o = await d.deliver(n, CH)
            done.append(tag)
            return o

        t_slow = [asyncio.create_task(run(note(slow_d, f"s-{i}", 1), f"slow{i}")) for i in range(3)]
        await slow.wait_requests(2)  # the slow destination holds all its slots, one more change queued
        fast_out = await run(note(fast_d, "f-1", 1), "fast")
        fast_out2 = await run(note(fast_d, "f-2", 1), "fast2")
        assert fast_out.kind == fast_out2.kind == "delivered"
        assert done == ["fast", "fast2"] and not any(t.done() for t in t_slow)
        assert len(slow.bodies) == 2  # still the first two calls: fast never waited for a slow call to end
        slow.release.set()
        slow_out = await asyncio.gather(*t_slow)
        assert all(o.kind == "delivered" for o in slow_out)
        assert done[:2] == ["fast", "fast2"] and sorted(done[2:]) == ["slow0", "slow1", "slow2"]


async def test_concurrency_per_destination_is_bounded():
    async with Receiver(HANG) as slow, stage() as e:
        d = e.make(DeliveryPolicy(call_timeout_s=120, max_in_flight=2, bundle_window_s=0))
        dst = dest(slow.url)
        tasks = [asyncio.create_task(d.deliver(note(dst, f"i-{i}", 1), CH)) for i in range(5)]
        await slow.wait_requests(2)
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert len(slow.bodies) == 2  # the other three wait for a slot
        slow.release.set()
        assert [o.kind for o in await asyncio.gather(*tasks)] == ["delivered"] * 5
        assert len(slow.bodies) == 5


async def test_close_defers_what_is_not_delivered():
    async with Receiver(HANG) as slow, stage() as e:
        d = e.make(DeliveryPolicy(call_timeout_s=120, bundle_window_s=0))
        fut = d.submit(note(dest(slow.url), "i-1", 1), CH)
        await slow.wait_requests(1)
        await d.close()
        o = fut.result()
        assert o.kind == "deferred" and "stopped" in o.reason
        assert (await d.deliver(note(dest(slow.url), "i-2", 1), CH)).kind == "deferred"


# --- bundling --------------------------------------------------------------------------------------
def test_fold_keeps_the_latest_and_lists_earlier_changes_once():
    dst = dest("http://x")
    ns = [note(dst, "i", v) for v in (3, 1, 2)]
    f = fold([*ns, fold(ns[1:])])
    assert f.key == ns[0].key and [b["version"] for b in f.bundled] == [1, 2]


async def test_burst_while_a_message_is_in_flight_is_bundled():
    async with Receiver(HANG, Resp(200)) as srv, stage() as e:
        ft = FakeTime()
        d, reg = made_with_registry(e, policy=DeliveryPolicy(bundle_window_s=2.0), time=ft)
        dst = dest(srv.url)
        n1, n2, n3, n4 = (note(dst, "inc-1", v, change=c) for v, c in
                          ((1, "opened"), (2, "alert_added"), (3, "alert_added"), (4, "acknowledged")))
        f1 = d.submit(n1, CH)
        await srv.wait_requests(1)  # v1 is in flight
        f2, f3, f4 = d.submit(n2, CH), d.submit(n3, CH), d.submit(n4, CH)
        assert d.submit(n3, CH) is f3  # the same change twice: one entry
        srv.release.set()
        o1, o2, o3, o4 = await asyncio.gather(f1, f2, f3, f4)
        assert [(b["version"], b["bundled"]) for b in srv.bodies] == [(1, []), (4, [2, 3])]
        assert 2.0 in ft.sleeps  # the bundling window after the first message
        assert (o1.kind, o1.bundled_into) == ("delivered", None)
        assert (o2.kind, o2.bundled_into) == ("delivered", n4.key) and o3.bundled_into == n4.key
        assert (o4.kind, o4.bundled_into) == ("delivered", None)
        assert e.attempts[-1].bundled_keys == (n2.key, n3.key)
        assert reg.get_sample_value("pagerstream_notify_bundled_total") == 2
        for n in (n1, n2, n3, n4):  # every folded key recorded: a replay of v2 alone is skipped
            assert await e.r.get(d.done_key(n.key)) is not None
        assert (await d.deliver(n2, CH)).kind == "duplicate" and len(srv.bodies) == 2


async def test_changes_waiting_for_a_rate_limit_token_are_bundled():
    async with Receiver(Resp(200)) as srv, stage() as e:
        waits: list[float] = []
        waiting = asyncio.Event()

        async def sleep(s: float) -> None:
            waits.append(s)
            waiting.set()
            await asyncio.sleep(s)

        d = e.make(sleep=sleep)
        dst = dest(srv.url, rate=2.0, burst=1)
        assert (await d.deliver(note(dst, "inc-1", 1), CH)).kind == "delivered"  # takes the only token
        f2 = d.submit(note(dst, "inc-1", 2), CH)
        await waiting.wait()  # v2 waits for a token...
        f3, f4 = d.submit(note(dst, "inc-1", 3), CH), d.submit(note(dst, "inc-1", 4), CH)
        outs = await asyncio.gather(f2, f3, f4)
        assert [o.kind for o in outs] == ["delivered"] * 3
        assert [(b["version"], b["bundled"]) for b in srv.bodies] == [(1, []), (4, [2, 3])]
        assert waits and 0 < waits[0] <= 0.5  # computed by the shared bucket: at 2/s a token takes <= 0.5 s


# --- shared rate limit and breaker ---------------------------------------------------------------------
async def test_rate_limit_is_shared_through_redis_by_two_instances():
    async with Receiver(Resp(200)) as srv, stage() as e:
        waits = {"a": [], "b": []}

        def recorder(tag: str):
            async def sleep(s: float) -> None:
                waits[tag].append(s)
                await asyncio.sleep(s)
            return sleep

        a, b = e.make(sleep=recorder("a")), e.make(sleep=recorder("b"))
        dst = dest(srv.url, rate=1.0, burst=2)
        assert (await a.deliver(note(dst, "i-1", 1), CH)).kind == "delivered"
        assert (await a.deliver(note(dst, "i-2", 1), CH)).kind == "delivered"
        assert waits["a"] == []  # the burst of 2, used up by instance a
        assert (await b.deliver(note(dst, "i-3", 1), CH)).kind == "delivered"
        assert len(waits["b"]) >= 1 and waits["b"][0] > 0  # b found the bucket empty: it is the same bucket
        assert await e.r.exists(a.bucket_key(dst.name)) and a.bucket_key(dst.name) == b.bucket_key(dst.name)
        # a destination with its own bucket is not affected
        other = dest(srv.url, rate=1.0, burst=2)
        waits["b"].clear()
        assert (await b.deliver(note(other, "i-4", 1), CH)).kind == "delivered" and waits["b"] == []


async def test_breaker_opens_for_every_worker_and_half_opens_with_one_trial():
    async with Receiver(Resp(503), Resp(503), Resp(503), HANG, Resp(200)) as srv, stage() as e:
        ta, tb = FakeTime(), FakeTime()
        ra, rb = CollectorRegistry(), CollectorRegistry()
        a = e.make(DeliveryPolicy(max_attempts=3, breaker_failures=3, breaker_open_s=600, bundle_window_s=0,
                                  breaker_poll_s=1.0, budget_s=3600), time=ta, registry=ra)
        b = e.make(DeliveryPolicy(budget_s=10, breaker_failures=3, breaker_open_s=600, bundle_window_s=0,
                                  breaker_poll_s=1.0), time=tb, registry=rb)
        dst = dest(srv.url)
        # 1. three failures in a row open the breaker (shared state in Redis)
        out = await a.deliver(note(dst, "i-1", 1), CH)
        assert out.kind == "dead_letter" and len(srv.bodies) == 3
        st = await b.breaker(dst.name)
        assert st.status == "open" and st.open_until_ms == int((ta.t) * 1000) + 600_000
        assert ra.get_sample_value("pagerstream_notify_breaker_state", {"destination": dst.name}) == 2
        # 2. the other worker sends nothing while it is open; its budget (10 s) runs out first
        out = await b.deliver(note(dst, "i-2", 1), CH)
        assert out.kind == "dead_letter" and "circuit breaker open" in out.result.answer
        assert len(srv.bodies) == 3 and e.attempts[-1].attempt == 0
        assert set(tb.sleeps) == {1.0}  # polled once a second
        # 3. after the open period: one trial (half-open); the other worker waits for its result
        tb.t = ta.t = ta.t + 601
        trial = asyncio.create_task(b.deliver(note(dst, "i-3", 1), CH))
        await srv.wait_requests(4)
        assert (await b.breaker(dst.name)).status == "half_open"
        assert rb.get_sample_value("pagerstream_notify_breaker_state", {"destination": dst.name}) == 1
        ta.sleeps.clear()
        waiting = asyncio.create_task(a.deliver(note(dst, "i-4", 1), CH))
        while len(ta.sleeps) < 3:  # a polls the breaker and is told to wait, several times
            await asyncio.sleep(0.01)
        assert len(srv.bodies) == 4
        srv.release.set()
        assert (await trial).kind == "delivered"
        assert (await waiting).kind == "delivered" and len(srv.bodies) == 5
        assert (await a.breaker(dst.name)).status == "closed"
        assert ra.get_sample_value("pagerstream_notify_breaker_state", {"destination": dst.name}) == 0


async def test_a_failed_trial_reopens_the_breaker():
    async with Receiver(Resp(502)) as srv, stage() as e:
        t = FakeTime()
        d = e.make(DeliveryPolicy(max_attempts=2, breaker_failures=2, breaker_open_s=60, budget_s=30,
                                  bundle_window_s=0), time=t)
        dst = dest(srv.url)
        await d.deliver(note(dst, "i-1", 1), CH)
        assert (await d.breaker(dst.name)).status == "open"
        t.t += 61
        out = await d.deliver(note(dst, "i-2", 1), CH)  # the trial fails -> open again, budget runs out
        assert out.kind == "dead_letter" and len(srv.bodies) == 3
        st = await d.breaker(dst.name)
        assert st.status == "open" and "trial request failed" in st.reason


# --- replay ----------------------------------------------------------------------------------------
def test_parse_since():
    now = 1_800_000_000.0
    assert parse_since("2h", now=now) == int((now - 7200) * 1000)
    assert parse_since("90m", now=now) == int((now - 5400) * 1000)
    assert parse_since("1700000000000") == 1_700_000_000_000
    assert parse_since("2027-01-15T08:00:00Z") == 1_800_000_000_000
    assert parse_since(None) is None
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")


async def test_replay_from_dead_letters_to_the_fixed_destination():
    async with Receiver(Resp(404, '{"error":"no such hook"}')) as broken, Receiver(Resp(200)) as fixed, \
            stage() as e:
        d = e.make()
        dst = dest(broken.url)
        n1, n2 = note(dst, "inc-1", 1), note(dst, "inc-2", 1)
        assert (await d.deliver(n1, CH)).kind == "dead_letter"
        assert (await d.deliver(n2, CH)).kind == "dead_letter"
        lines = [DeadLetter.of(n, r, at_ms=1_800_000_000_000 + i).to_json() for i, (n, r) in enumerate(e.dead)]
        other = DeadLetter.of(note(dest(broken.url), "inc-9", 1), e.dead[0][1]).to_json()
        old = DeadLetter.of(note(dst, "inc-0", 1), e.dead[0][1], at_ms=1_700_000_000_000).to_json()
        source = [old, "not json", *lines, lines[0], other, ""]
        fixed_dst = Destination(dst.name, "post", {"url": fixed.url}, rate_per_second=1000, burst=1000)
        rep = await run_replay(iter(source), destinations={dst.name: fixed_dst}, channels={"post": CH},
                               delivery=d, destination=dst.name, since="1799999999999", dry_run=False)
        assert rep.outcomes == {"delivered": 2} and rep.matched == 2
        assert rep.skipped == [("line 2", "not a dead letter")]
        assert sorted(b["key"] for b in fixed.bodies) == sorted([n1.key, n2.key])
        # replaying again: delivered already, skipped
        rep = await run_replay(iter(lines), destinations={dst.name: fixed_dst}, channels={"post": CH},
                               delivery=d, destination=None, since=None, dry_run=False)
        assert rep.outcomes == {"duplicate": 2} and len(fixed.bodies) == 2


def test_replay_command_dry_run(tmp_path, monkeypatch):
    dst = Destination("ops-hook", "webhook", {"url": "https://hooks.example.com/x"})
    n = Notification(notification_key(incident("inc-1", 3), "ops-hook"), incident("inc-1", 3), dst)
    from pagerstream.notify.base import DeliveryResult

    dl = DeadLetter.of(n, DeliveryResult(ok=False, status=410, permanent=True, answer="gone"), at_ms=1)
    gone = DeadLetter.of(Notification("x#1@removed", incident("x", 1), Destination("removed", "webhook")),
                         DeliveryResult(ok=False, status=500), at_ms=1)
    (tmp_path / "dl.jsonl").write_text(dl.to_json() + "\n" + gone.to_json() + "\n")
    (tmp_path / "n.yaml").write_text(
        "destinations:\n  - {name: ops-hook, channel: webhook, config: {url: 'https://hooks.example.com/x'},"
        " secret_ref: ops-hook}\n")
    monkeypatch.delenv("REDIS_URL", raising=False)
    r = CliRunner().invoke(notifications, ["replay", "--from-dead-letter", "--file", str(tmp_path / "dl.jsonl"),
                                           "--config", str(tmp_path / "n.yaml"), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "would send inc-1#3@ops-hook" in r.output and "'removed' is not configured" in r.output
    r = CliRunner().invoke(notifications, ["replay", "--file", str(tmp_path / "dl.jsonl"),
                                           "--config", str(tmp_path / "n.yaml")])
    assert r.exit_code == 2 and "--from-dead-letter" in r.output
    r = CliRunner().invoke(notifications, ["replay", "--from-dead-letter", "--file", str(tmp_path / "dl.jsonl"),
                                           "--config", str(tmp_path / "n.yaml"), "--dry-run", "--since", "soon"])
    assert r.exit_code == 2 and "--since" in r.output


def test_attempt_record_is_json_ready():
    rec = AttemptRecord("i", "d", "post", "i#1@d", 1, 500, "retry", "x", 1, ("a",), 0.5)
    assert json.loads(json.dumps(rec.to_dict()))["bundled_keys"] == ["a"]
