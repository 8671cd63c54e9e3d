"""Slack channels, the interactivity endpoint and acting on PagerDuty from Slack.

Real components only: the Slack stand-in (streams/notify_standins.py, an aiohttp server on 127.0.0.1
that checks the Web API / webhook / Block Kit formats against schemas written from Slack's reference
pages), Redis at REDIS_URL for the per-incident message refs (unique key prefix per test), and the
PagerDuty REST sandbox (validates every request against PagerDuty's OpenAPI spec) for the actions.
Signatures in the interactivity tests are computed here with hmac/hashlib, not with the code under test.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from aiohttp import web

from pagerstream.notify import slack as slack_mod
from pagerstream.notify import templates
from pagerstream.notify.base import ChannelContext, Destination, Notification
from pagerstream.notify.slack import (
    ActionOutcome,
    SlackApiChannel,
    SlackWebhookChannel,
    act_through_pagerduty,
    api_result,
    slack_interactions_handler,
)
from pagerstream.pagerduty.rest import PagerDutyREST
from pagerstream.streams import pd_sandbox
from pagerstream.streams.notify_standins import block_kit_problems, make_slack_app, standin_state
from pagerstream.streams.pd_rest_sandbox import rest_state

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
BOT_TOKEN = "xoxb-1111-2222-TESTtokenAbc"
CHANNEL = "C0PAGERS01"
WEBHOOK_PATH = "/services/T0TEST/B0TEST/WEBHOOKsecret0123456789"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
OLD_SIGNING_SECRET = "0123456789abcdef0123456789abcdef"
PD_KEY = "u+pagerstreamTESTkey_0123456789-abc"
PD_FROM = "oncall.bot@example.com"


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def incident(version: int = 1, change: str = "opened", state: str = "triggered", **over: Any) -> dict[str, Any]:
    rec = {
        "event_id": f"inc-1#{version}", "incident_id": "inc-1", "version": version, "change": change,
        "reason": f"change {change}", "state": state, "alert_id": None, "dedup_key": None,
        "pd_dedup_key": "pdkey-inc-1", "routing_key_hint": "ABCD", "service": "payments-api", "team": "payments",
        "tier": "1", "runbook_url": "https://runbooks.example.com/payments/5xx",
        "summary": "payments-api 5xx rate above 5%", "severity": "critical", "open_alerts": 1, "total_alerts": 1,
        "duplicates": 0, "opened_at": 1714564800000, "acknowledged_at": None, "resolved_at": None,
        "at": 1714564800000 + version * 60_000, "pagerduty_action": None, "change_detail": None,
        "alert_type": "payments-api/High5xx",
        "pause": {"paused_until": None, "p_resolve": 0.12, "evidence": "9 episodes, 1 cleared within 5m",
                  "model_version": "t1"},
        "scores": [{"model": "classify.category", "label": "availability", "best": "availability", "score": 0.91,
                    "abstained": False, "explanation": "words: 5xx, error rate", "model_version": "c1"}],
        "similar": [{"incident_id": "old-7", "summary": "payments 5xx after deploy", "service": "payments-api",
                     "resolved_at": 1714000000000, "score": 0.83, "why": "same alert type"}],
        "recurrence": "daily at 02:00 UTC",
    }
    rec.update(over)
    return rec


def note(rec: dict[str, Any], dest: Destination) -> Notification:
    return Notification(key=f"{rec['incident_id']}#{rec['version']}@{dest.name}", incident=rec, destination=dest)


@contextlib.asynccontextmanager
async def serve(app: web.Application):
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class RedisRefStore:
    """RefStore on the real Redis, under a unique prefix."""

    def __init__(self, r: Any, prefix: str) -> None:
        self.r, self.prefix = r, prefix

    async def get(self, incident_id: str, destination: str) -> str | None:
        v = await self.r.get(f"{self.prefix}{destination}:{incident_id}")
        return v.decode() if v is not None else None

    async def set(self, incident_id: str, destination: str, ref: str) -> None:
        await self.r.set(f"{self.prefix}{destination}:{incident_id}", ref, ex=3600)


@contextlib.asynccontextmanager
async def redis_refs():
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    r = aioredis.from_url(REDIS_URL)
    prefix = f"test:notify-slack:{uuid.uuid4().hex}:"
    try:
        try:
            await r.ping()
        except (RedisError, OSError) as e:
            pytest.fail(f"Redis at {REDIS_URL} is not reachable: {type(e).__name__}")
        yield RedisRefStore(r, prefix)
    finally:
        with contextlib.suppress(Exception):
            keys = [k async for k in r.scan_iter(match=prefix + "*")]
            if keys:
                await r.delete(*keys)
        await r.aclose()


@contextlib.asynccontextmanager
async def slack_env(timeout: float = 5.0):
    app = make_slack_app(bot_tokens=[BOT_TOKEN], channels=[CHANNEL], webhooks=[WEBHOOK_PATH])
    async with serve(app) as url, redis_refs() as refs, httpx.AsyncClient(timeout=timeout) as http:
        secrets = {"slack-bot": {"token": BOT_TOKEN}, "slack-hook": {"url": url + WEBHOOK_PATH},
                   "bad-bot": {"token": "xoxb-9999-NOTknown"}}
        ctx = ChannelContext(http=http, secret=lambda ref: secrets[ref], render=templates.render, refs=refs)
        yield url, standin_state(app), ctx


def api_dest(url: str, **cfg: Any) -> Destination:
    return Destination(name="slack-payments", channel="slack_api", secret_ref=cfg.pop("secret_ref", "slack-bot"),
                       config={"channel": CHANNEL, "api_url": url + "/api", **cfg})


def kinds(state: Any) -> list[str]:
    return [("thread:" if (r["body"] or {}).get("thread_ts") else "") + r["kind"] for r in state.requests]


def actions_of(message: dict[str, Any]) -> list[str]:
    for b in message.get("blocks") or []:
        if b["type"] == "actions":
            return [e["action_id"] for e in b["elements"]]
    return []


# ------------------------------------------------------------------------------------------------
# slack_api: one message + a thread per incident
# ------------------------------------------------------------------------------------------------

async def test_first_change_posts_later_changes_update_and_reply_in_thread():
    async with slack_env() as (url, state, ctx):
        ch, dest = SlackApiChannel(), api_dest(url)

        r1 = await ch.send(note(incident(1), dest), ctx)
        assert r1.ok and r1.external_ref, r1
        [(ts, msg)] = state.messages[CHANNEL].items()
        assert r1.external_ref == ts
        assert actions_of(msg) == ["pagerstream_ack", "pagerstream_resolve", "pagerstream_escalate"]
        values = {e["value"] for b in msg["blocks"] if b["type"] == "actions" for e in b["elements"]}
        assert [json.loads(v) for v in values] == [{"incident_id": "inc-1", "pd_dedup_key": "pdkey-inc-1"}]
        assert json.loads(await ctx.refs.get("inc-1", dest.name))["ts"] == ts

        r2 = await ch.send(note(incident(2, "acknowledged", "acknowledged", acknowledged_at=1714564900000), dest), ctx)
        assert r2.ok and r2.external_ref == ts, r2
        r3 = await ch.send(note(incident(3, "resolved", "resolved", resolved_at=1714565000000, open_alerts=0), dest), ctx)
        assert r3.ok and r3.external_ref == ts, r3

        assert kinds(state) == ["chat.postMessage", "chat.update", "thread:chat.postMessage",
                                "chat.update", "thread:chat.postMessage"]
        assert all(r["status"] == 200 and r["error"] is None for r in state.requests), state.requests
        assert list(state.messages[CHANNEL]) == [ts]  # updated, never a second top-level message
        msg = state.messages[CHANNEL][ts]
        assert msg["updates"] == 2
        assert actions_of(msg) == []  # resolved: no buttons
        assert [rep["thread_ts"] for rep in msg["replies"]] == [ts, ts]
        assert "Acknowledged" in msg["replies"][0]["text"] and "Resolved" in msg["replies"][1]["text"]
        assert ":white_check_mark: resolved" in json.dumps(msg["blocks"])


async def test_acknowledged_message_keeps_resolve_and_escalate_but_not_acknowledge():
    async with slack_env() as (url, state, ctx):
        ch, dest = SlackApiChannel(), api_dest(url)
        await ch.send(note(incident(1), dest), ctx)
        await ch.send(note(incident(2, "acknowledged", "acknowledged"), dest), ctx)
        [msg] = state.messages[CHANNEL].values()
        assert actions_of(msg) == ["pagerstream_resolve", "pagerstream_escalate"]


async def test_paused_incident_has_no_buttons_until_paged():
    async with slack_env() as (url, state, ctx):
        ch, dest = SlackApiChannel(), api_dest(url)
        await ch.send(note(incident(1, change_detail="paused"), dest), ctx)
        [msg] = state.messages[CHANNEL].values()
        assert actions_of(msg) == []
        await ch.send(note(incident(2, "alert_added", change_detail="paged_after_pause"), dest), ctx)
        assert actions_of(msg) == ["pagerstream_ack", "pagerstream_resolve", "pagerstream_escalate"]


async def test_each_incident_gets_its_own_thread():
    async with slack_env() as (url, state, ctx):
        ch, dest = SlackApiChannel(), api_dest(url)
        a = await ch.send(note(incident(1), dest), ctx)
        b = await ch.send(note(incident(1, incident_id="inc-2", pd_dedup_key="pdkey-inc-2"), dest), ctx)
        await ch.send(note(incident(2, "acknowledged", "acknowledged", incident_id="inc-2",
                                    pd_dedup_key="pdkey-inc-2"), dest), ctx)
        assert a.external_ref != b.external_ref
        assert len(state.messages[CHANNEL]) == 2
        assert state.messages[CHANNEL][a.external_ref]["replies"] == []
        assert len(state.messages[CHANNEL][b.external_ref]["replies"]) == 1


async def test_replays_neither_duplicate_replies_nor_roll_the_message_back():
    async with slack_env() as (url, state, ctx):
        ch, dest = SlackApiChannel(), api_dest(url)
        await ch.send(note(incident(1), dest), ctx)
        await ch.send(note(incident(2, "acknowledged", "acknowledged"), dest), ctx)
        await ch.send(note(incident(3, "resolved", "resolved"), dest), ctx)
        before = len(state.requests)
        for v, change, st in ((1, "opened", "triggered"), (2, "acknowledged", "acknowledged"), (3, "resolved", "resolved")):
            r = await ch.send(note(incident(v, change, st), dest), ctx)
            assert r.ok and "already delivered" in r.answer
        assert len(state.requests) == before
        [msg] = state.messages[CHANNEL].values()
        assert len(msg["replies"]) == 2 and actions_of(msg) == []


async def test_failed_thread_reply_is_retried_without_updating_twice():
    async with slack_env() as (url, state, ctx):
        ch, dest = SlackApiChannel(), api_dest(url)
        await ch.send(note(incident(1), dest), ctx)
        state.faults.append({"mode": "500", "count": 1, "kind": "chat.postMessage", "retry_after": 1})
        n2 = note(incident(2, "acknowledged", "acknowledged"), dest)
        r = await ch.send(n2, ctx)
        assert not r.ok and not r.permanent and r.status == 500
        r = await ch.send(n2, ctx)  # the delivery stage's retry
        assert r.ok, r
        assert kinds(state) == ["chat.postMessage", "chat.update", "thread:chat.postMessage", "thread:chat.postMessage"]
        [msg] = state.messages[CHANNEL].values()
        assert msg["updates"] == 1 and len(msg["replies"]) == 1


async def test_deleted_message_starts_a_new_thread():
    async with slack_env() as (url, state, ctx):
        ch, dest = SlackApiChannel(), api_dest(url)
        first = await ch.send(note(incident(1), dest), ctx)
        state.messages[CHANNEL].clear()  # someone deleted it
        r = await ch.send(note(incident(2, "acknowledged", "acknowledged"), dest), ctx)
        assert r.ok and r.external_ref != first.external_ref
        assert [x["error"] for x in state.requests] == [None, "message_not_found", None]
        assert json.loads(await ctx.refs.get("inc-1", dest.name))["ts"] == r.external_ref
        r3 = await ch.send(note(incident(3, "resolved", "resolved"), dest), ctx)
        assert r3.external_ref == r.external_ref
        assert len(state.messages[CHANNEL][r.external_ref]["replies"]) == 1


@pytest.mark.parametrize("secret_ref,cfg,expect", [
    ("bad-bot", {}, "invalid_auth"),
    ("slack-bot", {"channel": "C0NOTTHERE"}, "channel_not_found"),
])
async def test_slack_errors_are_permanent(secret_ref, cfg, expect):
    async with slack_env() as (url, state, ctx):
        r = await SlackApiChannel().send(note(incident(1), api_dest(url, secret_ref=secret_ref, **cfg)), ctx)
        assert not r.ok and r.permanent and expect in r.answer
        assert state.requests[-1]["error"] == expect


async def test_rate_limit_is_transient_with_retry_after():
    async with slack_env() as (url, state, ctx):
        state.faults.append({"mode": "429", "count": 1, "kind": "chat.postMessage", "retry_after": 7})
        r = await SlackApiChannel().send(note(incident(1), api_dest(url)), ctx)
        assert not r.ok and not r.permanent and r.status == 429 and r.retry_after == 7.0
        assert "ratelimited" in r.answer
        r = await SlackApiChannel().send(note(incident(1), api_dest(url)), ctx)
        assert r.ok


async def test_hanging_slack_is_a_transient_timeout():
    async with slack_env(timeout=0.3) as (url, state, ctx):
        state.faults.append({"mode": "hang", "count": 1, "kind": "chat.postMessage", "retry_after": 1})
        r = await SlackApiChannel().send(note(incident(1), api_dest(url)), ctx)
        assert not r.ok and not r.permanent and "timeout" in r.answer
        state.release.set()


async def test_template_that_breaks_block_kit_is_refused_by_slack_and_permanent():
    async with slack_env() as (url, state, ctx):
        broken = '{"text": "x", "blocks": [{"type": "section"}]}'  # a section needs text or fields
        r = await SlackApiChannel().send(note(incident(1), api_dest(url, template={"inline": broken})), ctx)
        assert not r.ok and r.permanent and "invalid_blocks" in r.answer
        assert state.requests[-1]["errors"]


async def test_template_escaping_the_sandbox_fails_without_calling_slack():
    async with slack_env() as (url, state, ctx):
        evil = '{"text": {{ "".__class__.__mro__ | json }}, "blocks": []}'
        r = await SlackApiChannel().send(note(incident(1), api_dest(url, template=evil)), ctx)
        assert not r.ok and r.permanent and "sandbox" in r.answer
        assert state.requests == []


def _resp(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers=headers or {})


@pytest.mark.parametrize("status,body,headers,ok,permanent,retry_after", [
    (200, {"ok": True, "ts": "1.1", "channel": CHANNEL}, None, True, False, None),
    (200, {"ok": False, "error": "channel_not_found"}, None, False, True, None),
    (200, {"ok": False, "error": "invalid_auth"}, None, False, True, None),
    (200, {"ok": False, "error": "not_in_channel"}, None, False, True, None),
    (200, {"ok": False, "error": "ratelimited"}, {"Retry-After": "3"}, False, False, 3.0),
    (200, {"ok": False, "error": "internal_error"}, None, False, False, None),
    (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "30"}, False, False, 30.0),
    (503, b"unavailable", None, False, False, None),
    (200, b"<html>not json</html>", None, False, False, None),
])
def test_web_api_answers_map_to_delivery_results(status, body, headers, ok, permanent, retry_after):
    res, data = api_result("chat.postMessage", _resp(status, body, headers))
    assert (res.ok, res.permanent, res.retry_after) == (ok, permanent, retry_after)
    assert res.answer.startswith("chat.postMessage: ")


# ------------------------------------------------------------------------------------------------
# slack_webhook
# ------------------------------------------------------------------------------------------------

async def test_incoming_webhook_posts_a_message_per_change(caplog):
    caplog.set_level(logging.DEBUG)
    async with slack_env() as (url, state, ctx):
        dest = Destination(name="slack-hook", channel="slack_webhook", secret_ref="slack-hook")
        r1 = await SlackWebhookChannel().send(note(incident(1), dest), ctx)
        r2 = await SlackWebhookChannel().send(note(incident(2, "resolved", "resolved"), dest), ctx)
        assert r1.ok and r2.ok and r1.status == 200
        msgs = list(state.messages["webhook:T0TEST"].values())
        assert len(msgs) == 2 and all(actions_of(m) == [] for m in msgs)  # no interactivity by default
        with_buttons = Destination(name="slack-hook-b", channel="slack_webhook", secret_ref="slack-hook",
                                   config={"buttons": True})
        assert (await SlackWebhookChannel().send(note(incident(1), with_buttons), ctx)).ok
        assert actions_of(list(state.messages["webhook:T0TEST"].values())[-1])[0] == "pagerstream_ack"
        secret_part = WEBHOOK_PATH.rsplit("/", 1)[1]
        assert all(secret_part not in json.dumps(r) for r in state.requests)
        assert secret_part not in caplog.text and secret_part not in r1.answer + r2.answer


async def test_unknown_webhook_is_permanent_and_url_stays_secret(caplog):
    caplog.set_level(logging.DEBUG)
    async with slack_env() as (url, state, ctx):
        ctx.secret = lambda ref: {"url": url + "/services/T0TEST/B0TEST/revokedSECRETxyz"}
        dest = Destination(name="slack-hook", channel="slack_webhook", secret_ref="x")
        r = await SlackWebhookChannel().send(note(incident(1), dest), ctx)
        assert not r.ok and r.permanent and r.status == 404 and "no_service" in r.answer
        assert "revokedSECRETxyz" not in r.answer and "revokedSECRETxyz" not in caplog.text


async def test_bot_token_is_never_logged_or_returned(caplog):
    caplog.set_level(logging.DEBUG)
    async with slack_env() as (url, state, ctx):
        ch, dest = SlackApiChannel(), api_dest(url)
        results = [await ch.send(note(incident(1), dest), ctx),
                   await ch.send(note(incident(2, "acknowledged", "acknowledged"), dest), ctx)]
        assert BOT_TOKEN not in caplog.text
        assert all(BOT_TOKEN not in (r.answer or "") for r in results)
        assert all(r["authorization"] == "Bearer xoxb-****" for r in state.requests)


# ------------------------------------------------------------------------------------------------
# the stand-in checks what it is sent
# ------------------------------------------------------------------------------------------------

async def test_standin_rejects_what_slack_documents_as_invalid():
    async with serve(make_slack_app(bot_tokens=[BOT_TOKEN], channels=[CHANNEL])) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            auth = {"Authorization": f"Bearer {BOT_TOKEN}"}

            async def post(body, headers=auth):
                r = await c.post("/api/chat.postMessage", json=body, headers=headers)
                return r.json()

            ok_button = {"type": "button", "text": {"type": "plain_text", "text": "Ack"}, "action_id": "a"}
            assert (await post({"channel": CHANNEL, "text": "hi"}))["ok"] is True
            assert (await post({"channel": CHANNEL, "text": "hi"}, headers={}))["error"] == "not_authed"
            assert (await post({"channel": CHANNEL, "text": "hi"},
                               headers={"Authorization": "Bearer xoxb-wrong-000000"}))["error"] == "invalid_auth"
            assert (await post({"channel": CHANNEL}))["error"] == "no_text"
            assert (await post({"text": "hi"}))["error"] == "channel_not_found"
            assert (await post({"channel": CHANNEL, "text": "hi", "token": BOT_TOKEN}))["error"] == "invalid_arguments"
            for blocks in (
                [{"type": "section"}],
                [{"type": "marquee", "text": {"type": "plain_text", "text": "x"}}],
                [{"type": "actions", "elements": [{**ok_button, "text": {"type": "plain_text", "text": "x" * 76}}]}],
                [{"type": "actions", "elements": [{**ok_button, "style": "green"}]}],
                [{"type": "actions", "elements": [ok_button, ok_button]}],
                [{"type": "header", "text": {"type": "mrkdwn", "text": "*no*"}}],
                [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}],
                [{"type": "divider", "block_id": "x"}, {"type": "divider", "block_id": "x"}],
                [{"type": "divider"}] * 51,
            ):
                out = await post({"channel": CHANNEL, "text": "hi", "blocks": blocks})
                assert out == {"ok": False, "error": "invalid_blocks"}, blocks
            out = await post({"channel": CHANNEL, "text": "hi", "blocks": [{"type": "actions", "elements": [ok_button]}]})
            assert out["ok"] is True and out["ts"] and out["channel"] == CHANNEL
            upd = (await c.post("/api/chat.update", json={"channel": CHANNEL, "ts": "1234567890.000001", "text": "x"},
                                headers=auth)).json()
            assert upd["error"] == "message_not_found"


def test_default_slack_message_is_valid_block_kit():
    dest = Destination(name="d", channel="slack_api", config={"channel": CHANNEL})
    for rec in (incident(1), incident(2, "acknowledged", "acknowledged"), incident(3, "resolved", "resolved"),
                incident(1, summary="x" * 5000, scores=[dict(incident()["scores"][0], explanation="y" * 9000)] * 30)):
        msg = slack_mod.build_message(note(rec, dest), templates.render)
        assert block_kit_problems(msg["blocks"]) == [], rec["version"]


# ------------------------------------------------------------------------------------------------
# interactivity: signatures
# ------------------------------------------------------------------------------------------------

def sign(secret: str, ts: str, body: bytes) -> str:
    return "v0=" + hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()


def test_signature_check_accepts_slacks_documented_example():
    # the example request of Slack's "Verifying requests from Slack" page
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&"
            b"channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&"
            b"response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
            b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    assert sign(SIGNING_SECRET, "1531420618", body) == expected
    check = slack_mod.signature_problem
    assert check(body, "1531420618", expected, [SIGNING_SECRET], now=1531420618) is None
    assert check(body, "1531420618", expected, [OLD_SIGNING_SECRET, SIGNING_SECRET], now=1531420618 + 299) is None
    assert check(body, "1531420618", expected, [SIGNING_SECRET], now=1531420618 + 301) is not None
    assert check(body, "1531420618", expected, [SIGNING_SECRET], now=1531420618 - 301) is not None
    assert check(body + b"&x=1", "1531420618", expected, [SIGNING_SECRET], now=1531420618) == "signature mismatch"
    assert check(body, "1531420619", expected, [SIGNING_SECRET], now=1531420618) == "signature mismatch"
    assert check(body, "1531420618", expected, [OLD_SIGNING_SECRET], now=1531420618) == "signature mismatch"
    assert check(body, "1531420618", expected.replace("v0=", "v1="), [SIGNING_SECRET], now=1531420618) is not None
    assert check(body, "1531420618", expected, [""], now=1531420618) is not None


NOW = 1_714_565_000


def interaction_body(action_id: str = "pagerstream_ack", value: str | None = None, *, ptype: str = "block_actions",
                     user: str = "U111ADA", response_url: str | None = None) -> bytes:
    value = value if value is not None else json.dumps({"incident_id": "inc-1", "pd_dedup_key": "pdkey-inc-1"})
    payload = {"type": ptype, "user": {"id": user, "username": "ada", "name": "Ada", "team_id": "T0TEST"},
               "team": {"id": "T0TEST"}, "api_app_id": "A0TEST", "trigger_id": "1.2.3",
               "container": {"type": "message", "message_ts": "1714564800.000001", "channel_id": CHANNEL},
               "channel": {"id": CHANNEL, "name": "pagers"}, "response_url": response_url,
               "actions": [{"type": "button", "action_id": action_id, "block_id": "pagerstream_actions_v1",
                            "value": value, "action_ts": "1714564900.1"}]}
    return urlencode({"payload": json.dumps(payload)}).encode()


@contextlib.asynccontextmanager
async def interactions(secrets, on_action, **kw):
    handler = slack_interactions_handler(secrets, on_action, clock=lambda: NOW, **kw)
    app = web.Application()
    app.router.add_post("/slack/interactions", handler)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as c:
        async def post(body: bytes, *, ts: int = NOW, secret: str = SIGNING_SECRET, signature: str | None = None,
                       ctype: str = "application/x-www-form-urlencoded") -> httpx.Response:
            headers = {"X-Slack-Request-Timestamp": str(ts), "Content-Type": ctype,
                       "X-Slack-Signature": signature or sign(secret, str(ts), body)}
            return await c.post("/slack/interactions", content=body, headers=headers)
        yield post, handler


async def test_interactions_verify_signatures_before_acting():
    calls: list[tuple] = []

    async def on_action(action, ref, user):
        calls.append((action, ref, user))

    async with interactions([OLD_SIGNING_SECRET, SIGNING_SECRET], on_action) as (post, handler):
        body = interaction_body()
        assert (await post(body, ts=NOW - 301)).status_code == 401  # stale
        assert (await post(body, ts=NOW + 301)).status_code == 401  # from the future
        tampered = body.replace(b"pdkey-inc-1", b"pdkey-inc-9")
        assert (await post(tampered, signature=sign(SIGNING_SECRET, str(NOW), body))).status_code == 401
        assert (await post(body, secret="not-the-secret")).status_code == 401
        assert (await post(body, signature="v0=" + "0" * 64)).status_code == 401
        await handler.drain()
        assert calls == []

        assert (await post(body)).status_code == 200
        assert (await post(interaction_body("pagerstream_resolve"), secret=OLD_SIGNING_SECRET)).status_code == 200
        await handler.drain()
        assert [(a, r) for a, r, _ in calls] == [
            ("acknowledge", {"incident_id": "inc-1", "pd_dedup_key": "pdkey-inc-1"}),
            ("resolve", {"incident_id": "inc-1", "pd_dedup_key": "pdkey-inc-1"})]
        assert calls[0][2] == {"id": "U111ADA", "username": "ada", "name": "Ada", "team_id": "T0TEST"}

        assert (await post(body)).status_code == 200  # the same signed request again: a replay
        await handler.drain()
        assert len(calls) == 2


async def test_interactions_ignore_what_is_not_ours():
    calls: list[tuple] = []

    async def on_action(action, ref, user):
        calls.append((action, ref))

    async with interactions([SIGNING_SECRET], on_action) as (post, handler):
        assert (await post(interaction_body(ptype="view_submission"))).status_code == 200
        assert (await post(interaction_body("someone_elses_button"))).status_code == 200
        assert (await post(interaction_body(value="not json"))).status_code == 200
        assert (await post(b"payload=%7Bnot-json", ts=NOW)).status_code == 400
        assert (await post(interaction_body(), ctype="application/json")).status_code == 415
        await handler.drain()
        assert calls == []


async def test_answer_comes_before_the_action_finishes():
    import asyncio

    gate = asyncio.Event()
    done: list[str] = []

    async def on_action(action, ref, user):
        await gate.wait()
        done.append(action)

    async with interactions([SIGNING_SECRET], on_action) as (post, handler):
        r = await post(interaction_body())
        assert r.status_code == 200 and done == []  # answered while the action still waits
        gate.set()
        await handler.drain()
        assert done == ["acknowledge"]


# ------------------------------------------------------------------------------------------------
# acting through PagerDuty (REST sandbox)
# ------------------------------------------------------------------------------------------------

def pd_seed(*, with_level: bool = True) -> dict[str, Any]:
    inc: dict[str, Any] = {"id": "PINC001", "title": "payments 5xx", "service_id": "PSVC001", "incident_key": "pdkey-inc-1"}
    if not with_level:  # PagerDuty-shaped, without escalation_level (the public incident schema lacks it)
        inc = {"id": "PINC001", "type": "incident", "status": "triggered", "incident_key": "pdkey-inc-1",
               "title": "payments 5xx", "summary": "[#1] payments 5xx", "created_at": "2024-05-01T12:00:00Z",
               "service": {"id": "PSVC001", "type": "service_reference"},
               "escalation_policy": {"id": "PEPOL01", "type": "escalation_policy_reference"},
               "assignments": [{"at": "2024-05-01T12:00:00Z", "assignee": {"id": "PUSER01", "type": "user_reference"}}],
               "acknowledgements": [], "pending_actions": []}
    return {
        "users": [{"id": "PBOT001", "name": "Oncall Bot", "email": PD_FROM},
                  {"id": "PUSER01", "name": "Ada Responder", "email": "ada@example.com"},
                  {"id": "PUSER02", "name": "Bob Secondary", "email": "bob@example.com"}],
        "escalation_policies": [{"id": "PEPOL01", "name": "Payments EP", "escalation_rules": [
            {"id": "R1", "escalation_delay_in_minutes": 10, "targets": [{"id": "PUSER01", "type": "user_reference"}]},
            {"id": "R2", "escalation_delay_in_minutes": 10, "targets": [{"id": "PUSER02", "type": "user_reference"}]}]}],
        "services": [{"id": "PSVC001", "name": "payments-api",
                      "escalation_policy": {"id": "PEPOL01", "type": "escalation_policy_reference"}}],
        "incidents": [inc],
        "oncalls": [{"user_id": "PUSER01", "escalation_policy_id": "PEPOL01", "escalation_level": 1},
                    {"user_id": "PUSER02", "escalation_policy_id": "PEPOL01", "escalation_level": 2}],
    }


@contextlib.asynccontextmanager
async def pagerduty(seed: dict[str, Any]):
    async with pd_sandbox.SandboxServer(host="127.0.0.1", port=0) as sb:
        state = rest_state(sb.app)
        state.seed(seed)
        client = PagerDutyREST(base_url=sb.url, allow_private=True, api_key=PD_KEY, from_email=PD_FROM)
        try:
            yield state, client
        finally:
            await client.aclose()


def pd_writes(state: Any) -> list[tuple[str, str, str | None]]:
    return [(r["method"], r["path"], r["headers"].get("From")) for r in state.find_requests()
            if r["method"] in ("PUT", "POST") and r["status"] and r["status"] < 300]


async def test_buttons_act_on_the_pagerduty_incident_as_the_clicking_user():
    async with pagerduty(pd_seed()) as (pd, rest):
        on_action = act_through_pagerduty(rest, user_emails={"U111ADA": "ada@example.com"})
        slack_app = make_slack_app()
        async with serve(slack_app) as slack_url, httpx.AsyncClient() as respond_http:
            response_url = slack_url + "/actions/T0TEST/123/RESPONSEsecret"
            async with interactions([SIGNING_SECRET], on_action, respond_http=respond_http,
                                    response_url_prefixes=[slack_url + "/actions/"]) as (post, handler):
                assert (await post(interaction_body("pagerstream_ack", response_url=response_url))).status_code == 200
                await handler.drain()
                inc = pd.collections["incidents"]["PINC001"]
                assert inc["status"] == "acknowledged"
                assert inc["acknowledgements"][0]["acknowledger"]["id"] == "PUSER01"  # Ada, not the bot

                assert (await post(interaction_body("pagerstream_escalate", response_url=response_url))).status_code == 200
                await handler.drain()
                assert inc["escalation_level"] == 2
                assert [a["assignee"]["id"] for a in inc["assignments"]] == ["PUSER02"]

                assert (await post(interaction_body("pagerstream_resolve", user="U999BOB",
                                                    response_url=response_url))).status_code == 200
                await handler.drain()
                assert inc["status"] == "resolved"

        writes = pd_writes(pd)
        assert writes == [("PUT", "/incidents/PINC001", "ada@example.com"),
                          ("POST", "/incidents/PINC001/notes", "ada@example.com"),
                          ("PUT", "/incidents/PINC001", "ada@example.com"),
                          ("POST", "/incidents/PINC001/notes", "ada@example.com"),
                          ("PUT", "/incidents/PINC001", PD_FROM),  # unknown Slack user: the bot's From
                          ("POST", "/incidents/PINC001/notes", PD_FROM)]
        lookups = [r for r in pd.find_requests() if r["method"] == "GET" and r["path"] == "/incidents"]
        assert lookups and all(["incident_key", "pdkey-inc-1"] in r["query"] for r in lookups)
        notes = [n["content"] for n in pd.notes["PINC001"]]
        assert notes[:2] == ["Acknowledged from Slack by Ada.", "Escalated to level 2 from Slack by Ada."]
        replies = [r for r in standin_state(slack_app).requests if r["kind"] == "response_url"]
        assert [r["status"] for r in replies] == [200, 200, 200]
        assert [r["body"]["text"] for r in replies] == ["Acknowledged in PagerDuty.", "Escalated to level 2 in PagerDuty.",
                                                         "Resolved in PagerDuty."]
        assert all(r["body"]["response_type"] == "ephemeral" for r in replies)


async def test_escalation_level_is_derived_when_the_incident_does_not_carry_it():
    async with pagerduty(pd_seed(with_level=False)) as (pd, rest):
        on_action = act_through_pagerduty(rest, add_note=False)
        out = await on_action("escalate", {"incident_id": "inc-1", "pd_dedup_key": "pdkey-inc-1"}, {"id": "U1"})
        assert out == ActionOutcome(True, "escalate", "Escalated to level 2 in PagerDuty.", "PINC001")
        inc = pd.collections["incidents"]["PINC001"]
        assert inc["escalation_level"] == 2 and [a["assignee"]["id"] for a in inc["assignments"]] == ["PUSER02"]
        again = await on_action("escalate", {"incident_id": "inc-1", "pd_dedup_key": "pdkey-inc-1"}, {"id": "U1"})
        assert not again.ok and "last escalation level" in again.message
        assert len([w for w in pd_writes(pd) if w[0] == "PUT"]) == 1


async def test_actions_on_missing_or_resolved_incidents_report_without_writing():
    async with pagerduty(pd_seed()) as (pd, rest):
        on_action = act_through_pagerduty(rest)
        out = await on_action("acknowledge", {"incident_id": "x", "pd_dedup_key": "no-such-key"}, {"id": "U1"})
        assert not out.ok and "no incident" in out.message
        await rest.resolve_incident("PINC001")
        before = len(pd_writes(pd))
        out = await on_action("acknowledge", {"incident_id": "inc-1", "pd_dedup_key": "pdkey-inc-1"}, {"id": "U1"})
        assert not out.ok and "already resolved" in out.message
        assert len(pd_writes(pd)) == before


async def test_pagerduty_refusal_is_reported_to_the_user():
    async with pagerduty(pd_seed()) as (pd, rest):
        on_action = act_through_pagerduty(rest, user_emails={"U1": "stranger@example.com"})  # no such PD user
        out = await on_action("resolve", {"incident_id": "inc-1", "pd_dedup_key": "pdkey-inc-1"}, {"id": "U1"})
        assert not out.ok and "PagerDuty refused" in out.message and PD_KEY not in out.message
        assert pd.collections["incidents"]["PINC001"]["status"] == "triggered"



def test_config_validation():
    ok = {"channel": CHANNEL, "api_url": "https://slack.com/api", "buttons": True, "template": {"path": "x.j2"}}
    assert slack_mod.validate_api_config(ok) == []
    problems = slack_mod.validate_api_config({"channel": "#payments", "token": BOT_TOKEN, "buttons": "yes",
                                              "templates": {"slack.json.j2": {"inline": 1}}, "colour": "red"})
    assert any(p.startswith("channel: must be a channel ID") for p in problems)
    assert any(p.startswith("token: credentials belong in the destination's secret") for p in problems)
    assert "buttons: expected true or false" in problems and "colour: unknown setting" in problems
    assert "templates.slack.json.j2: must be a string" in problems
    assert BOT_TOKEN not in " ".join(problems)
    assert slack_mod.validate_api_config({}) == ["channel: required (the channel ID, e.g. C0123456789)"]
    assert slack_mod.validate_webhook_config({}) == []
    assert slack_mod.validate_webhook_config({"url": "https://hooks.slack.com/services/x"})[0].startswith("url:")
