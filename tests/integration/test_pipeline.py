"""The spine end to end on a real Kafka, Redis and the PagerDuty sandbox."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.conftest import ROUTING_KEY
from tests.integration.helpers import eventually, produce_bytes, read_topic

pytestmark = pytest.mark.integration


def _bootstrap(w) -> str:
    return w.env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


def _topic(w, name: str) -> str:
    return w.env["PAGERSTREAM_TOPIC_PREFIX"] + name


def _sb_requests(sandbox, dedup_key: str) -> list[dict]:
    return [r for r in sandbox.state("requests", dedup_key=dedup_key) if r.get("status") == 202]


def test_pd_shaped_lifecycle_reaches_pagerduty_in_order(shared_worker, sandbox):
    w = shared_worker
    key = f"life-{uuid.uuid4().hex[:8]}"
    base = {"routing_key": ROUTING_KEY, "dedup_key": key}
    trig = dict(base, event_action="trigger", payload={"summary": "CPU hot", "source": "h1", "severity": "error"})
    answers = []
    for body in (trig, trig, dict(base, event_action="acknowledge"), dict(base, event_action="resolve")):
        r = httpx.post(w.url + "/v2/enqueue", json=body, timeout=10)
        answers.append(r.status_code)
        assert r.json() == {"status": "success", "message": "Event processed", "dedup_key": key}
    assert answers == [202] * 4
    got = eventually(lambda: (x := _sb_requests(sandbox, key)) and len(x) >= 3 and x, what="3 PD calls")
    assert [r["body"]["event_action"] for r in got] == ["trigger", "acknowledge", "resolve"]
    assert got[0]["body"]["payload"]["summary"] == "CPU hot"
    assert got[0]["body"]["routing_key"] == ROUTING_KEY  # the sender's own routing key is kept
    incidents = [r["value"] for r in read_topic(_bootstrap(w), _topic(w, "incidents")) if r["value"]["dedup_key"] == key]
    assert [i["change"] for i in incidents] == ["opened", "duplicate", "acknowledged", "resolved"]
    assert incidents[-1]["state"] == "resolved" and incidents[1]["reason"].startswith("duplicate")
    assert "routing_key" not in incidents[0] and incidents[0]["routing_key_hint"] == ROUTING_KEY[-4:]


def test_keyless_trigger_gets_a_dedup_key_that_resolves_it(shared_worker, sandbox):
    w = shared_worker
    r = httpx.post(w.url + "/v2/enqueue", json={"routing_key": ROUTING_KEY, "event_action": "trigger",
                                               "payload": {"summary": "x", "source": "y", "severity": "info"}})
    assert r.status_code == 202
    key = r.json()["dedup_key"]
    assert len(key) == 32
    httpx.post(w.url + "/v2/enqueue", json={"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": key})
    got = eventually(lambda: (x := _sb_requests(sandbox, key)) and len(x) >= 2 and x, what="trigger+resolve")
    assert [g["body"]["event_action"] for g in got] == ["trigger", "resolve"]


@pytest.mark.parametrize("body,needle", [
    ({"routing_key": "short", "event_action": "trigger", "payload": {"summary": "s", "source": "s", "severity": "info"}},
     "routing_key"),
    ({"routing_key": ROUTING_KEY, "event_action": "explode"}, "event_action"),
    ({"routing_key": ROUTING_KEY, "event_action": "resolve"}, "dedup_key"),
    ({"routing_key": ROUTING_KEY, "event_action": "trigger",
      "payload": {"summary": "s" * 1025, "source": "s", "severity": "info"}}, "summary"),
])
def test_invalid_pd_events_get_pagerduty_errors_and_produce_nothing(shared_worker, body, needle):
    w = shared_worker
    before = len(read_topic(_bootstrap(w), _topic(w, "alerts.raw"), idle=0.5))
    r = httpx.post(w.url + "/v2/enqueue", json=body)
    assert r.status_code == 400
    j = r.json()
    assert j["status"] == "invalid event" and j["message"] == "Event object is invalid"
    assert any(needle in e for e in j["errors"]), j
    assert len(read_topic(_bootstrap(w), _topic(w, "alerts.raw"), idle=0.5)) == before


def test_not_json_and_oversized_bodies(shared_worker):
    w = shared_worker
    r = httpx.post(w.url + "/v2/enqueue", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["errors"] == ["JSON parse error"]
    big = json.dumps({"routing_key": ROUTING_KEY, "event_action": "trigger",
                      "payload": {"summary": "s", "source": "s", "severity": "info",
                                  "custom_details": {"x": "y" * 600_000}}})
    r = httpx.post(w.url + "/v2/enqueue", content=big.encode())
    assert r.status_code == 400 and "512" in r.json()["errors"][0]


def test_official_pagerduty_client_pages_pagerstream(workers, sandbox, tmp_path):
    """python-pagerduty, unchanged but for its base URL, pages pagerstream (over HTTPS: the client
    refuses plain http)."""
    import pagerduty

    from tests.tls import self_signed

    cert, key_file = self_signed(tmp_path)
    w = workers.start(workers.env(), tls=(cert, key_file))
    key = f"client-{uuid.uuid4().hex[:8]}"
    client = pagerduty.EventsApiV2Client(ROUTING_KEY, verify=cert)
    client.url = w.url  # the one URL a sender changes
    got_key = client.trigger("Search latency above SLO", "search-7.prod", dedup_key=key, severity="critical",
                             custom_details={"p99_ms": 2300})
    assert got_key == key
    client.resolve(key)
    got = eventually(lambda: (x := _sb_requests(sandbox, key)) and len(x) >= 2 and x, what="client events")
    assert [g["body"]["event_action"] for g in got] == ["trigger", "resolve"]
    assert got[0]["body"]["payload"]["severity"] == "critical"
    assert got[0]["body"]["payload"]["custom_details"]["p99_ms"] == 2300


def test_bad_records_are_dead_lettered_and_the_agent_keeps_going(shared_worker, sandbox):
    w = shared_worker
    bs = _bootstrap(w)
    garbage = b"\x00\x01not avro at all"
    produce_bytes(bs, _topic(w, "alerts.raw"), [(b"bad", garbage)])
    key = f"after-bad-{uuid.uuid4().hex[:8]}"
    httpx.post(w.url + "/v2/enqueue", json={"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": key,
                                           "payload": {"summary": "after", "source": "s", "severity": "info"}})
    eventually(lambda: _sb_requests(sandbox, key), what="alert after the bad record")
    dl = eventually(lambda: [r["value"] for r in read_topic(bs, _topic(w, "alerts.dead-letter"))
                             if r["value"]["original"] == garbage], what="dead letter")
    assert dl[0]["stage"] == "decode" and "marker" in dl[0]["reason"]
    assert dl[0]["topic"] == _topic(w, "alerts.raw")


def test_alertmanager_and_grafana_webhooks(shared_worker, sandbox):
    from pathlib import Path

    w = shared_worker
    contracts = Path(__file__).resolve().parents[2] / ".." / "shared" / "contracts"
    am = json.loads((contracts / "alertmanager" / "webhook-v4.firing.example.json").read_text())
    am.pop("_comment", None)
    fp = f"{uuid.uuid4().hex[:16]}"
    for a in am["alerts"]:
        a["fingerprint"] = fp
    r = httpx.post(w.url + f"/ingest/alertmanager?routing_key={ROUTING_KEY}", json=am)
    assert r.status_code == 200, r.text
    got = eventually(lambda: _sb_requests(sandbox, fp), what="alertmanager alert at PagerDuty")
    assert got[0]["body"]["event_action"] == "trigger"
    r = httpx.post(w.url + f"/ingest/alertmanager?routing_key={ROUTING_KEY}", json={"version": "3", "alerts": "nope"})
    assert r.status_code == 400 and r.json()["errors"]


def test_metrics_and_health(shared_worker):
    w = shared_worker
    assert httpx.get(w.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(w.url + "/readyz").json()
    assert ready["status"] == "ready" and all(ready["checks"].values())
    m = w.metrics()
    for name in ("pagerstream_stage_records_total", "pagerstream_consumer_lag", "pagerstream_pagerduty_requests_total",
                 "pagerstream_stage_latency_seconds_bucket", "pagerstream_ingress_requests_total"):
        assert name in m, name
