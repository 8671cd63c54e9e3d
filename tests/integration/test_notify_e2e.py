"""Notifications end to end: an alert produced to a real worker becomes an incident, and the local
stand-ins for Slack (webhook + Web API), Teams, SMTP (aiosmtpd, STARTTLS + AUTH), a signed outbound
webhook, Jira and ServiceNow each receive it in their documented format. Pressing Acknowledge in
Slack acknowledges the incident in the PagerDuty sandbox (REST) and, through the pipeline, updates
every channel. A destination answering 500 then 200 gets exactly one successful delivery."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from pagerstream.streams.itsm_standins import (
    StandinServer,
    jira_state,
    make_jira_app,
    make_servicenow_app,
    servicenow_state,
)
from pagerstream.streams.notify_standins import make_slack_app, make_teams_app, standin_state

from pagerstream.notify.secrets import SecretStore
from pagerstream.pagerduty.webhooks import verify_signature
from tests.conftest import ROUTING_KEY
from tests.integration.helpers import eventually, read_topic
from tests.tls import self_signed
from tests.unit.test_notify_email import PASSWORD, USER, smtp_server

pytestmark = pytest.mark.integration

BOT, CHANNEL, HOOK = "xoxb-e2e-0001-abcdef", "C0E2E0001", "/services/T0E2E/B0E2E/e2eSECRETpath"
SIGNING = "slack-signing-" + "s" * 24
WH_SECRET = "outbound-hook-" + "w" * 24
PD_KEY = "u+pagerstreamE2Ekey_0123456789-abc"


class Loop:
    """The stand-ins run on one event loop in a background thread; the worker is another process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def hook_app(received: list) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        ok = verify_signature(raw, request.headers.get("X-PagerDuty-Signature", ""), [WH_SECRET])
        received.append({"ok": ok, "body": json.loads(raw), "webhook_id": request.headers.get("X-Webhook-Id")})
        return web.Response(status=200 if ok else 401)
    app = web.Application()
    app.router.add_post("/hook", handle)
    return app


def slack_interaction(incident: dict, action_id: str = "pagerstream_ack") -> tuple[bytes, dict]:
    value = json.dumps({"incident_id": incident["incident_id"], "pd_dedup_key": incident["pd_dedup_key"]})
    payload = {"type": "block_actions", "user": {"id": "U0ANN", "username": "ann", "name": "ann", "team_id": "T0E2E"},
               "team": {"id": "T0E2E"}, "actions": [{"action_id": action_id, "value": value, "type": "button",
                                                     "block_id": "b1", "action_ts": str(time.time())}],
               "response_url": "https://hooks.slack.com/actions/T0E2E/1/xyz", "trigger_id": "1.2.3"}
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    ts = str(int(time.time()))
    sig = "v0=" + hmac.new(SIGNING.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return body, {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig,
                  "Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def standins(tmp_path):
    loop = Loop()
    hooks: list = []
    apps = {"slack": make_slack_app(bot_tokens=[BOT], channels=[CHANNEL], webhooks=[HOOK]),
            "teams": make_teams_app(workflows={"wf1": "sig1"}),
            "jira": make_jira_app(email="bot@example.com", api_token="jira-e2e-token"),
            "snow": make_servicenow_app(username="pagerstream.integration", password="sn-e2e-password"),
            "hook": hook_app(hooks)}
    servers = {k: StandinServer(a) for k, a in apps.items()}
    for s in servers.values():
        loop.run(s.__aenter__())
    (tmp_path / "smtp").mkdir()
    cert = self_signed(tmp_path / "smtp")
    with smtp_server(cert) as (rec, port):
        yield {"servers": servers, "apps": apps, "hooks": hooks, "smtp": rec, "smtp_port": port, "cert": cert}
    for s in servers.values():
        loop.run(s.__aexit__(None, None, None))
    loop.close()


def test_an_incident_reaches_every_channel_and_slack_acknowledge_updates_them_all(workers, sandbox, standins, tmp_path):
    sv, smtp = standins["servers"], standins["smtp"]
    env = workers.env({"OUTBOUND_URL_ALLOWLIST": "127.0.0.1", "SLACK_SIGNING_SECRETS": SIGNING,
                       "PAGERDUTY_API_KEY": PD_KEY, "PAGERDUTY_API_URL": sandbox.url,
                       "PAGERDUTY_FROM_EMAIL": "bot@example.com"})
    secrets_path = tmp_path / "notify-secrets.enc.json"
    store = SecretStore(secrets_path, env["ENCRYPTION_KEY"])
    store.put("slack-hook", {"url": sv["slack"].url + HOOK})
    store.put("slack-bot", {"token": BOT})
    store.put("teams", {"url": sv["teams"].url + "/workflows/wf1/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=sig1"})
    store.put("smtp", {"username": USER, "password": PASSWORD})
    store.put("hook", {"signing_secret": WH_SECRET})
    store.put("jira", {"email": "bot@example.com", "api_token": "jira-e2e-token"})
    store.put("snow", {"username": "pagerstream.integration", "password": "sn-e2e-password"})
    cfg = {"destinations": [
        {"name": "slack-hook", "channel": "slack_webhook", "secret_ref": "slack-hook", "rate": 20, "burst": 20},
        {"name": "slack-bot", "channel": "slack_api", "secret_ref": "slack-bot", "rate": 20, "burst": 20,
         "config": {"channel": CHANNEL, "api_url": sv["slack"].url + "/api"}},
        {"name": "teams", "channel": "teams", "secret_ref": "teams", "rate": 20, "burst": 20},
        {"name": "mail", "channel": "email", "secret_ref": "smtp", "rate": 20, "burst": 20,
         "config": {"to": ["oncall@example.com"], "from": "pagerstream@example.com", "host": "127.0.0.1",
                    "port": standins["smtp_port"], "ca_file": standins["cert"][0]}},
        {"name": "hook", "channel": "webhook", "secret_ref": "hook", "rate": 20, "burst": 20,
         "config": {"url": sv["hook"].url + "/hook"}},
        {"name": "jira", "channel": "jira", "secret_ref": "jira", "rate": 20, "burst": 20,
         "config": {"base_url": sv["jira"].url, "project": "OPS", "issue_type": "Task", "done_transition": "Done",
                    "allow_http": True}},
        {"name": "snow", "channel": "servicenow", "secret_ref": "snow", "rate": 20, "burst": 20,
         "config": {"instance_url": sv["snow"].url, "allow_http": True, "close_code": "Solution provided"}}],
        "default": ["slack-hook", "slack-bot", "teams", "mail", "hook", "jira", "snow"]}
    cfg_path = tmp_path / "notify.yaml"
    cfg_path.write_text(json.dumps(cfg))
    env.update({"PAGERSTREAM_NOTIFY_CONFIG": str(cfg_path), "PAGERSTREAM_NOTIFY_SECRETS": str(secrets_path)})
    # the teams stand-in answers 500 once: that destination must still get exactly one message
    httpx.post(sv["teams"].url + "/standin/faults", json={"mode": "500", "count": 1}, timeout=10)
    w = workers.start(env, name="notify")
    bs, prefix = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), env["PAGERSTREAM_TOPIC_PREFIX"]

    dedup = f"disk-{uuid.uuid4().hex[:6]}"
    body = {"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": dedup,
            "payload": {"summary": "Disk 95% full on db-1", "source": "db-1", "severity": "critical"}}
    assert httpx.post(w.url + "/v2/enqueue", json=body).status_code == 202
    opened = eventually(lambda: [r["value"] for r in read_topic(bs, prefix + "incidents", idle=0.7)
                                 if r["value"].get("dedup_key") == dedup], what="incident")[0]

    slack, teams = standin_state(standins["apps"]["slack"]), standin_state(standins["apps"]["teams"])
    jira, snow = jira_state(standins["apps"]["jira"]), servicenow_state(standins["apps"]["snow"])

    def everywhere() -> bool:
        kinds = [r["kind"] for r in slack.requests if (r.get("status") or 200) < 300]
        return ("webhook" in kinds and any("postMessage" in k for k in kinds)
                and any(r.get("status") == 202 for r in teams.requests) and len(smtp.messages) >= 1
                and len(standins["hooks"]) >= 1 and len(jira.issues) == 1 and len(snow.records) == 1)
    eventually(everywhere, timeout=60, what="a message at every stand-in")
    assert [r.get("status") for r in teams.requests][:2] == [500, 202]  # 500 then 200: one success
    mail = smtp.messages[0]
    assert mail["starttls"] and mail["authenticated"] and "Disk 95% full" in str(mail["msg"].get_body(("plain",)))
    assert all(h["ok"] for h in standins["hooks"]) and standins["hooks"][0]["body"]["event"]["event_type"] == \
        "incident.triggered"

    # Slack: Acknowledge. PagerDuty (REST sandbox) has the incident under the same incident_key.
    httpx.post(f"{sandbox.url}/sandbox/rest/seed", timeout=10, json={
        "users": [{"id": "PBOT001", "name": "Bot", "email": "bot@example.com"}],
        "incidents": [{"title": "Disk 95% full on db-1", "incident_key": opened["pd_dedup_key"],
                       "status": "triggered"}]})
    raw, headers = slack_interaction(opened)
    assert httpx.post(w.url + "/slack/interactions", content=raw, headers=headers, timeout=10).status_code == 200
    acked = eventually(lambda: [r["value"] for r in read_topic(bs, prefix + "incidents", idle=0.7)
                                if r["value"]["incident_id"] == opened["incident_id"]
                                and r["value"]["change"] == "acknowledged"], what="acknowledged in the pipeline")
    assert "ann (Slack)" in acked[0]["reason"]
    log = httpx.get(f"{sandbox.url}/sandbox/rest/requests", timeout=10).json()["requests"]
    assert any(e["operation_id"] == "updateIncident" and e["status"] < 300 for e in log)

    def updated_everywhere() -> bool:
        return (any("update" in r["kind"] for r in slack.requests) and len(smtp.messages) >= 2
                and len(standins["hooks"]) >= 2 and len([r for r in teams.requests if r.get("status") == 202]) >= 2
                and any(i.get("comments") for i in jira.issues.values()))
    eventually(updated_everywhere, timeout=60, what="every channel told about the acknowledgement")
    assert standins["hooks"][-1]["body"]["event"]["event_type"] == "incident.acknowledged"
    hist = [json.loads(r["raw"]) for r in read_topic(bs, prefix + "notifications.history", idle=0.7)]
    assert {h["destination"] for h in hist} >= {"slack-hook", "slack-bot", "teams", "mail", "hook", "jira", "snow"}
    teams_ok = [h for h in hist if h["destination"] == "teams" and h["outcome"] == "delivered"]
    assert len({h["key"] for h in teams_ok}) == len(teams_ok) == 2  # one success per change, the 500 retried
    assert Path(secrets_path).read_bytes().find(BOT.encode()) == -1  # the secrets file is encrypted


def test_a_notifier_killed_mid_delivery_sends_at_most_one_duplicate(workers, tmp_path):
    loop = Loop()
    got: list[dict] = []
    first_seen = threading.Event()

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        got.append({"id": request.headers.get("X-Webhook-Id"), "body": json.loads(raw), "at": time.time()})
        first_seen.set()
        if len(got) == 1:
            await asyncio.sleep(4)  # the first delivery is in flight when the worker dies
        return web.Response(status=200)
    app = web.Application()
    app.router.add_post("/hook", handle)
    server = StandinServer(app)
    loop.run(server.__aenter__())
    try:
        env = workers.env({"OUTBOUND_URL_ALLOWLIST": "127.0.0.1"})
        secrets_path = tmp_path / "notify-secrets.enc.json"
        SecretStore(secrets_path, env["ENCRYPTION_KEY"]).put("hook", {"signing_secret": WH_SECRET})
        cfg = {"destinations": [{"name": "hook", "channel": "webhook", "secret_ref": "hook",
                                 "config": {"url": server.url + "/hook"}}], "default": ["hook"]}
        (tmp_path / "notify.yaml").write_text(json.dumps(cfg))
        env.update({"PAGERSTREAM_NOTIFY_CONFIG": str(tmp_path / "notify.yaml"),
                    "PAGERSTREAM_NOTIFY_SECRETS": str(secrets_path)})
        w1 = workers.start(env, name="notify-kill-1")
        dedup = f"kill-{uuid.uuid4().hex[:6]}"
        body = {"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": dedup,
                "payload": {"summary": "queue backlog growing", "source": "mq-1", "severity": "error"}}
        assert httpx.post(w1.url + "/v2/enqueue", json=body).status_code == 202
        assert first_seen.wait(60), "the first delivery never started"
        w1.proc.kill()  # SIGKILL while the receiver holds the first request
        w2 = workers.start(env, name="notify-kill-2")
        eventually(lambda: len(got) >= 2, timeout=90, what="the change redelivered after the crash")
        time.sleep(8)  # anything else still coming would show up now
        ids = {g["id"] for g in got}
        assert len(got) == 2 and len(ids) == 1, got  # the same message (same X-Webhook-Id), once more at most
        assert all(g["body"]["event"]["event_type"] == "incident.triggered" for g in got)
        # a later change of the incident is delivered exactly once by the surviving worker
        httpx.post(w2.url + "/v2/enqueue", json={"routing_key": ROUTING_KEY, "event_action": "resolve",
                                                 "dedup_key": dedup})
        eventually(lambda: len(got) >= 3, timeout=60, what="the resolve notification")
        time.sleep(3)
        assert [g["body"]["event"]["event_type"] for g in got[2:]] == ["incident.resolved"]
    finally:
        loop.run(server.__aexit__(None, None, None))
        loop.close()
