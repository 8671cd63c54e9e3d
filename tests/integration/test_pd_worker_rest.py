"""A worker with PagerDuty REST credentials, against the sandbox's REST stand-in: on-call read through
the Redis-cached REST client decides the responder of a routed incident, and a `service.updated`
webhook invalidates the cached services."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest

from pagerstream.pagerduty.webhooks import sign_body
from tests.conftest import ROUTING_KEY
from tests.integration.helpers import eventually, read_topic

pytestmark = pytest.mark.integration
CONTRACTS = Path(__file__).resolve().parents[2].parent / "shared" / "contracts" / "pagerduty"
SECRET = "whsec-" + "k" * 40
KEY = "u+pagerstreamWORKERkey_0123456789-abc"
CATALOG = """
version: 1
services:
  - name: checkout
    team: payments
    tier: 1
    matchers: [{source: "^checkout-[0-9]+$"}]
"""


def test_on_call_from_rest_routes_to_a_responder_and_webhooks_invalidate_the_cache(workers, sandbox, tmp_path):
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "routing"
    cat = tmp_path / "catalog.yaml"
    cat.write_text(CATALOG)
    # PPAYEP1 (the "payments" rule's policy): bob at level 1, ann at level 2; only bob has the payments skill
    seed = {"users": [{"id": "PBOB001", "name": "Bob", "email": "bob@example.com"},
                      {"id": "PANN001", "name": "Ann", "email": "ann@example.com"}],
            "escalation_policies": [{"id": "PPAYEP1", "name": "Payments EP"}],
            "oncalls": [{"user_id": "PBOB001", "escalation_policy_id": "PPAYEP1", "escalation_level": 1,
                         "start": None, "end": None},
                        {"user_id": "PANN001", "escalation_policy_id": "PPAYEP1", "escalation_level": 2,
                         "start": None, "end": None}]}
    assert httpx.post(f"{sandbox.url}/sandbox/rest/seed", json=seed, timeout=10).status_code == 200
    keys = "payments=PAYKEYTEST0000000000000000000PAY,payments-after-hours=AFTERHOURSTEST00000000000000AH42," \
           "security=SECKEYTEST0000000000000000000S3C,discovery=DISKEYTEST0000000000000000000D1S," \
           "tickets=TICKETKEYTEST0000000000000000TIX,catch-all=CATCHALLTEST0000000000000000CALL"
    env = workers.env({"PAGERDUTY_API_KEY": KEY, "PAGERDUTY_API_URL": sandbox.url,
                       "PAGERDUTY_FROM_EMAIL": "bob@example.com",
                       "PAGERSTREAM_ROUTING_CONFIG": str(fixtures / "routing.example.yaml"),
                       "PAGERSTREAM_ROUTING_KEYS": keys, "PAGERDUTY_WEBHOOK_SECRETS": f"ops={SECRET}",
                       "PAGERSTREAM_ASSIGN_RESPONDERS": "true"})
    w = workers.start(env, catalog=str(cat), name="pd-rest")
    bs, prefix = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), env["PAGERSTREAM_TOPIC_PREFIX"]

    dedup = f"pay-{uuid.uuid4().hex[:6]}"
    body = {"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": dedup,
            "payload": {"summary": "checkout payment errors", "source": "checkout-1", "severity": "error"}}
    assert httpx.post(w.url + "/v2/enqueue", json=body).status_code == 202
    ev = eventually(lambda: [r["value"] for r in read_topic(bs, prefix + "incidents", idle=0.7)
                             if r["value"].get("dedup_key") == dedup], what="incident")[0]
    route = ev["route"]
    assert route["rule"] == "payments" and route["escalation_policy_id"] == "PPAYEP1"
    assert route["responder_id"] == "PBOB001", route  # on call (from REST) and has the skill
    assert any("bob" in r.lower() for r in route["reason"])
    rest_log = httpx.get(f"{sandbox.url}/sandbox/rest/requests", timeout=10).json()["requests"]
    assert "listOnCalls" in {e["operation_id"] for e in rest_log}
    assert all(e["status"] < 300 for e in rest_log if e["operation_id"] == "listOnCalls")
    m = w.metrics()
    assert 'pagerstream_pd_cache_misses_total{resource="oncalls"}' in m

    # PagerDuty created the incident (assigned by its policy to ann) and says so by webhook:
    # pagerstream reassigns it to the routed responder, bob, with the reasons in a note.
    made = httpx.post(f"{sandbox.url}/sandbox/rest/seed", timeout=10, json={"incidents": [
        {"title": "checkout payment errors", "escalation_policy_id": "PPAYEP1", "assignee_ids": ["PANN001"],
         "status": "triggered"}]}).json()["created"]["incidents"]
    pd_id = made[0]["id"] if isinstance(made[0], dict) else made[0]
    trig = {"event": {"id": uuid.uuid4().hex.upper()[:26], "event_type": "incident.triggered",
                      "resource_type": "incident", "occurred_at": "2026-11-27T10:00:00Z", "agent": None, "client": None,
                      "data": {"id": pd_id, "type": "incident", "number": 1, "status": "triggered",
                               "title": "checkout payment errors", "incident_key": ev["pd_dedup_key"],
                               "service": {"id": "PSVC01", "type": "service_reference"}, "assignees": [],
                               "escalation_policy": {"id": "PPAYEP1", "type": "escalation_policy_reference"},
                               "teams": [], "priority": None, "urgency": "high", "conference_bridge": None,
                               "resolve_reason": None}}}
    raw = json.dumps(trig).encode()
    h = {"Content-Type": "application/json", "X-PagerDuty-Signature": sign_body(raw, SECRET),
         "X-Webhook-Id": str(uuid.uuid4())}
    assert httpx.post(f"{w.url}/pagerduty/webhooks/ops", content=raw, headers=h, timeout=30).status_code in (200, 202)

    def reassigned() -> list:
        log = httpx.get(f"{sandbox.url}/sandbox/rest/requests", timeout=10).json()["requests"]
        return [e for e in log if e["operation_id"] == "createIncidentNote" and e["status"] < 300]
    eventually(reassigned, what="a note on the reassigned PagerDuty incident")
    log = httpx.get(f"{sandbox.url}/sandbox/rest/requests", timeout=10).json()["requests"]
    assert any(e["operation_id"] == "updateIncident" and e["status"] < 300 for e in log)
    assert 'pagerstream_model_decisions_total{model="route",outcome="reassigned"} 1.0' in w.metrics()

    # service.updated from PagerDuty: the cached services are dropped
    sample = json.loads((CONTRACTS / "webhooks-v3" / "examples" / "official-docs" / "event_service_updated.json").read_text())
    raw = json.dumps(sample).encode()
    h = {"Content-Type": "application/json", "X-PagerDuty-Signature": sign_body(raw, SECRET),
         "X-Webhook-Id": str(uuid.uuid4())}
    assert httpx.post(f"{w.url}/pagerduty/webhooks/ops", content=raw, headers=h, timeout=30).status_code in (200, 202)
    eventually(lambda: 'pagerstream_pd_cache_invalidations_total{resource="services"} 1.0' in w.metrics(),
               what="the services cache invalidated")
