"""The webhook channel (pagerstream/notify/webhook.py) against a real receiver, and the notifications
config loader (pagerstream/notify/config.py).

The receiver is an aiohttp server on 127.0.0.1 that does what a PagerDuty V3 webhook consumer does:
verify X-PagerDuty-Signature with `verify_signature` (pagerstream/pagerduty/webhooks.py) and validate the
body against the contract's envelope schema (shared/contracts/pagerduty/webhooks-v3/).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any, Self

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from cryptography.fernet import Fernet
from jsonschema import Draft202012Validator, FormatChecker
from prometheus_client import CollectorRegistry

from pagerstream.notify.base import ChannelContext, Destination, Notification
from pagerstream.notify.config import NotifyConfigError, load_notify_config, parse_notify_config
from pagerstream.notify.delivery import Delivery, DeliveryPolicy, notification_key
from pagerstream.notify.outbound import outbound_client
from pagerstream.notify.secrets import SecretStore
from pagerstream.notify.webhook import CHANNEL, EVENT_TYPES, envelope, event_id, event_type, webhook_id
from pagerstream.pagerduty.webhooks import parse_envelope, to_record, verify_signature
from tests.stack import ensure_stack, redis_ready, redis_url

CONTRACT = Path(__file__).resolve().parents[2].parent / "shared" / "contracts" / "pagerduty" / "webhooks-v3"
SCHEMA_FILE = CONTRACT / "webhook-v3-envelope.schema.json"
needs_contract = pytest.mark.skipif(not SCHEMA_FILE.is_file(), reason=f"contract not found at {SCHEMA_FILE}")
SECRET = "whsec-notify-7c1e5d0a9b3f4e2c8d6a1b0f9e8d7c6b"
OLD_SECRET = "whsec-notify-old-00112233445566778899aabbccdd"


def incident(iid: str, version: int, change: str = "opened", state: str = "triggered") -> dict[str, Any]:
    return {"event_id": f"{iid}#{version}", "incident_id": iid, "version": version, "change": change,
            "reason": "rule 'disk' matched", "state": state, "pd_dedup_key": f"pd-{iid}",
            "routing_key_hint": "abcd", "service": "payments", "team": "payments-team", "tier": "1",
            "runbook_url": None, "summary": "Disk full on db-1", "severity": "critical", "open_alerts": 1,
            "total_alerts": version, "duplicates": 0, "opened_at": 1_800_000_000_000, "acknowledged_at": None,
            "resolved_at": None, "at": 1_800_000_000_000 + version * 1000, "pagerduty_action": "trigger",
            "change_detail": None, "alert_type": "payments/DiskFull", "pause": None, "scores": [], "similar": [],
            "recurrence": None}


def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA_FILE.read_text()), format_checker=FormatChecker())


class PDReceiver:
    """Verifies like a V3 webhook consumer; answers 401 (signature), 400 (envelope), else from `script`."""

    def __init__(self, secrets: list[str], *statuses: int) -> None:
        self.secrets = secrets
        self.statuses = list(statuses) or [202]
        self.accepted: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.calls = 0
        self.validator = _validator()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if not verify_signature(raw, request.headers.get("X-PagerDuty-Signature"), self.secrets):
            self.refused.append("signature")
            return web.json_response({"error": "bad signature"}, status=401)
        body = json.loads(raw)
        errors = [e.message for e in self.validator.iter_errors(body)]
        if errors:
            self.refused.append("; ".join(errors))
            return web.json_response({"errors": errors}, status=400)
        parse_envelope(raw)  # the project's own receiver would take it too
        status = self.statuses[min(self.calls, len(self.statuses) - 1)]
        self.calls += 1
        self.accepted.append({"headers": dict(request.headers), "body": body, "status": status})
        return web.json_response({"status": "ok" if status < 300 else "error"}, status=status)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/pagerduty/webhooks/{name}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/pagerduty/webhooks/ops"


@contextlib.asynccontextmanager
async def channel_ctx(tmp_path: Path, secret: dict[str, Any] | None = None):
    store = SecretStore(tmp_path / "notify-secrets.enc.json", Fernet.generate_key().decode())
    store.put("ops-hook", secret or {"signing_secret": SECRET})
    http = outbound_client(allowlist="127.0.0.1")
    try:
        yield ChannelContext(http=http, secret=store, render=lambda t, n: "", refs=None)  # type: ignore[arg-type]
    finally:
        await http.aclose()


def webhook_dest(url: str, **kw: Any) -> Destination:
    return Destination(name=kw.pop("name", "ops-hook"), channel="webhook", config={"url": url, **kw.pop("config", {})},
                       secret_ref=kw.pop("secret_ref", "ops-hook"), rate_per_second=1000, burst=1000)


def notif(d: Destination, inc: dict[str, Any], bundled: tuple[dict[str, Any], ...] = ()) -> Notification:
    return Notification(key=notification_key(inc, d.name), incident=inc, destination=d, bundled=bundled)


# --- the envelope ------------------------------------------------------------------------------------
@needs_contract
@pytest.mark.parametrize("change, state, expected", [
    ("opened", "triggered", "incident.triggered"), ("acknowledged", "acknowledged", "incident.acknowledged"),
    ("resolved", "resolved", "incident.resolved"), ("auto_resolved", "resolved", "incident.resolved"),
    ("alert_added", "triggered", "incident.alert_added"), ("alert_resolved", "triggered", "incident.alert_resolved"),
    ("duplicate", "triggered", "incident.alert_duplicated"), ("dropped", "resolved", "incident.alert_dropped"),
])
def test_every_change_makes_a_valid_v3_envelope(change: str, state: str, expected: str):
    d = webhook_dest("https://hooks.example.com/x")
    inc = incident("inc-7", 3, change, state)
    env = envelope(notif(d, inc, (incident("inc-7", 1), incident("inc-7", 2, "alert_added"))))
    assert list(_validator().iter_errors(env)) == []
    ev = env["event"]
    assert ev["event_type"] == expected == EVENT_TYPES[change] == event_type(inc)
    assert ev["resource_type"] == "incident" and ev["data"]["type"] == "incident" and ev["agent"] is None
    assert ev["occurred_at"] == "2027-01-15T08:00:03.000Z"
    data = ev["data"]
    assert data["id"] == "inc-7" and data["status"] == state and data["title"] == "Disk full on db-1"
    assert data["service"]["summary"] == "payments" and data["teams"][0]["id"] == "payments-team"
    assert data["urgency"] == "high" and data["incident_key"] == "pd-inc-7"
    assert [b["version"] for b in data["pagerstream"]["bundled"]] == [1, 2]
    assert data["pagerstream"]["bundled"][1]["event_type"] == "incident.alert_added"
    rec = to_record(env, raw_body=json.dumps(env).encode(), subscription="ops", webhook_id="w",
                    pd_subscription_id=None, received_at_ms=0)
    assert rec["incident_id"] == "inc-7" and rec["event_type"] == expected and rec["incident_status"] == state


def test_ids_are_stable_per_key_and_differ_between_keys():
    assert webhook_id("i#1@d") == webhook_id("i#1@d") != webhook_id("i#2@d")
    assert uuid.UUID(webhook_id("i#1@d")).version == 5
    assert re.fullmatch(r"[A-Z2-7]{26}", event_id("i#1@d")) and event_id("i#1@d") != event_id("i#1@e")


# --- against the receiver ----------------------------------------------------------------------------
@needs_contract
async def test_signed_post_is_verified_and_accepted(tmp_path: Path):
    async with PDReceiver([SECRET]) as rx, channel_ctx(tmp_path) as ctx:
        d = webhook_dest(rx.url, config={"headers": {"X-Team": "payments"}})
        n = notif(d, incident("inc-1", 1))
        r = await CHANNEL.send(n, ctx)
        assert r.ok and r.status == 202, (r, rx.refused)
        [got] = rx.accepted
        h = got["headers"]
        assert h["X-Webhook-Id"] == webhook_id(n.key) and h["X-Webhook-Subscription"] == "ops-hook"
        assert h["Content-Type"] == "application/json" and h["X-Team"] == "payments"
        assert h["X-PagerDuty-Signature"].startswith("v1=")
        assert got["body"]["event"]["id"] == event_id(n.key)
        assert got["body"]["event"]["event_type"] == "incident.triggered"


@needs_contract
async def test_rotating_secrets_sign_with_each(tmp_path: Path):
    async with PDReceiver([OLD_SECRET]) as rx, \
            channel_ctx(tmp_path, {"signing_secrets": [SECRET, OLD_SECRET]}) as ctx:
        r = await CHANNEL.send(notif(webhook_dest(rx.url), incident("inc-1", 1)), ctx)
        assert r.ok
        sig = rx.accepted[0]["headers"]["X-PagerDuty-Signature"]
        assert len(sig.split(",")) == 2


@needs_contract
async def test_receiver_with_another_secret_refuses_and_that_is_permanent(tmp_path: Path):
    async with PDReceiver(["some-other-secret-0000000000000000000"]) as rx, channel_ctx(tmp_path) as ctx:
        r = await CHANNEL.send(notif(webhook_dest(rx.url), incident("inc-1", 1)), ctx)
        assert not r.ok and r.status == 401 and r.permanent and "bad signature" in r.answer
        assert rx.refused == ["signature"]


async def test_configuration_problems_are_permanent_and_name_no_secret(tmp_path: Path):
    async with channel_ctx(tmp_path) as ctx:
        r = await CHANNEL.send(notif(webhook_dest("http://127.0.0.1:9/x", secret_ref=None), incident("i", 1)), ctx)
        assert r.permanent and "secret_ref" in r.answer
        r = await CHANNEL.send(notif(webhook_dest("http://127.0.0.1:9/x", secret_ref="missing"), incident("i", 1)),
                               ctx)
        assert r.permanent and "'missing'" in r.answer
        r = await CHANNEL.send(notif(webhook_dest("ftp://x/y"), incident("i", 1)), ctx)
        assert r.permanent and "url" in r.answer and SECRET not in r.answer


@needs_contract
async def test_through_the_delivery_stage_retries_keep_the_ids_and_no_secret_is_logged(tmp_path: Path, caplog):
    if not redis_ready(redis_url(), 2):
        ensure_stack()
    r = aioredis.from_url(redis_url(), socket_timeout=5, socket_connect_timeout=5)
    ns = f"ut-{uuid.uuid4().hex[:8]}."
    caplog.set_level(logging.DEBUG)
    async with PDReceiver([SECRET], 500, 202) as rx, channel_ctx(tmp_path) as ctx:
        delivery = Delivery(r, ctx, registry=CollectorRegistry(), namespace=ns,
                            policy=DeliveryPolicy(bundle_window_s=0), sleep=lambda s: asyncio.sleep(0),
                            rand=lambda: 0.0)
        d = webhook_dest(rx.url, name=f"hook-{ns}")
        try:
            n = notif(d, incident("inc-1", 2, "acknowledged", "acknowledged"), (incident("inc-1", 1),))
            out = await delivery.deliver(n, CHANNEL)
            assert out.kind == "delivered" and out.attempts == 2
            first, second = rx.accepted
            assert first["status"] == 500 and second["status"] == 202
            for k in ("X-Webhook-Id", "X-PagerDuty-Signature"):
                assert first["headers"][k] == second["headers"][k]  # same body, same id: the receiver dedupes
            assert second["body"]["event"]["event_type"] == "incident.acknowledged"
            # a bad channel config ends up in the dead letter, with the reason, without the secret
            bad = await delivery.deliver(notif(webhook_dest(rx.url, name=f"hook2-{ns}", secret_ref="nope"),
                                               incident("inc-2", 1)), CHANNEL)
            assert bad.kind == "dead_letter" and "'nope'" in bad.result.answer
        finally:
            await delivery.close()
            keys = [k async for k in r.scan_iter(match=f"pagerstream:{ns}*")]
            keys += [delivery.bucket_key(x) for x in delivery._lanes]
            if keys:
                await r.delete(*keys)
            await r.aclose()
    assert caplog.records, "the stage and the channel log something at DEBUG/INFO"
    assert SECRET not in caplog.text and SECRET not in repr(ctx.secret("ops-hook"))


# --- the notifications config ------------------------------------------------------------------------
CONFIG = """
destinations:
  - name: ops-hook
    channel: webhook
    config: {url: "https://hooks.example.com/pagerstream"}
    secret_ref: ops-hook
    rate: 2
    burst: 10
  - name: payments-slack
    channel: slack_webhook
    secret_ref: payments-slack
  - {name: catch-all, channel: webhook, config: {url: "https://hooks.example.com/all"}, secret_ref: ops-hook}
routes:
  - name: payments-critical
    match: {service: ["payments", "payments-*"], severity: [Critical, error]}
    to: [payments-slack, ops-hook]
  - name: lifecycle-only
    match: {team: payments-team, change: [opened, resolved]}
    to: ops-hook
    stop: true
  - name: any-team
    match: {team: "*"}
    to: catch-all
default: catch-all
"""


def test_config_loads_and_routes(tmp_path: Path):
    p = tmp_path / "notifications.yaml"
    p.write_text(CONFIG)
    cfg = load_notify_config(p, secret_names=["ops-hook", "payments-slack"])
    hook = cfg.destinations["ops-hook"]
    assert hook.channel == "webhook" and hook.rate_per_second == 2.0 and hook.burst == 10
    assert cfg.destinations["payments-slack"].rate_per_second == 1.0  # defaults
    inc = incident("i", 1)
    assert [d.name for d in cfg.route(inc)] == ["payments-slack", "ops-hook"]
    names, why = cfg.explain({**inc, "change": "alert_added", "severity": "warning"})
    assert names == ["catch-all"] and "rule 'any-team'" in why[0]
    assert [d.name for d in cfg.route({**inc, "service": "payments-eu", "severity": "warning"})] == ["ops-hook"]
    names, why = cfg.explain({"service": "search", "team": None, "severity": "info", "change": "opened"})
    assert names == ["catch-all"] and "default" in why[0]


def test_config_problems_are_all_reported_with_their_place(tmp_path: Path):
    doc = {
        "destinations": [
            {"name": "a b", "channel": "webhook"},
            {"name": "hook", "channel": "pager", "rate": 0, "burst": 1.5, "colour": "red"},
            {"name": "hook", "channel": "webhook", "config": {"url": "ftp://x", "api_token": "abc123"},
             "secret_ref": "missing"},
            {"name": "hook2", "channel": "webhook", "config": {"url": "https://u:p@x.example/"}},
        ],
        "routes": [{"match": {"severity": "critical", "region": "eu"}, "to": ["nowhere"]}, "x"],
        "default": ["nope"],
        "extra": 1,
    }
    with pytest.raises(NotifyConfigError) as ei:
        parse_notify_config(doc, source="n.yaml", secret_names=["other"])
    text = "\n".join(ei.value.problems)
    for expected in ("destinations[0].name", "destinations[1] (hook).channel", "destinations[1] (hook).rate",
                     "destinations[1] (hook).burst", "destinations[1] (hook).colour: unknown key",
                     "destinations[2] (hook).name: 'hook' is defined twice",
                     "destinations[2] (hook).config.api_token: looks like a credential",
                     "destinations[2] (hook).secret_ref: no secret named 'missing'",
                     "destinations[2] (hook).config: url: expected an http(s) URL",
                     "destinations[3] (hook2).config: url: credentials in the URL",
                     "routes[0].match.region: unknown field", "routes[0].to: unknown destination 'nowhere'",
                     "routes[1]: expected a mapping", "default: unknown destination 'nope'", "extra: unknown key"):
        assert expected in text, (expected, text)
    assert "abc123" not in str(ei.value)


def test_config_file_errors(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    p.write_text("destinations: [\n")
    with pytest.raises(NotifyConfigError, match="not valid YAML at line"):
        load_notify_config(p)
    with pytest.raises(NotifyConfigError, match="cannot read"):
        load_notify_config(tmp_path / "missing.yaml")
    with pytest.raises(NotifyConfigError, match="non-empty list"):
        parse_notify_config({"destinations": []})
