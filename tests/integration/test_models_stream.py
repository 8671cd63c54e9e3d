"""The models inside a running worker, against real Kafka and the PagerDuty sandbox:
the transient pause (held back, resolved unseen; held back, paged when it persists), classifier
scores from a published checkpoint, a human correction learned through the API, similar past
incidents attached on open, and anomaly scoring of an arbitrary metric stream."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from pagerstream.streams.learn_agents import HUMAN_WEIGHT
from tests.conftest import ROUTING_KEY, api_headers
from tests.integration.helpers import eventually, produce_bytes, read_topic

pytestmark = pytest.mark.integration
RULES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "prometheus_alerts" / "rules_flat.jsonl"


def _event(action: str, dedup: str, summary: str = "Disk 91% full on /var", cls: str = "DiskFull",
           severity: str = "warning") -> dict:
    body = {"routing_key": ROUTING_KEY, "event_action": action, "dedup_key": dedup}
    if action == "trigger":
        body["payload"] = {"summary": summary, "source": "db-7", "severity": severity, "class": cls}
    return body


def _incident_events(bs: str, prefix: str, dedup: str) -> list[dict]:
    return [r["value"] for r in read_topic(bs, prefix + "incidents", idle=0.7) if r["value"].get("dedup_key") == dedup
            or r["value"].get("pd_dedup_key") == dedup]


def _sandbox_actions(sandbox, dedup: str) -> list[str]:
    reqs = httpx.get(sandbox.url + "/sandbox/requests", params={"dedup_key": dedup}).json()
    return [r["body"]["event_action"] for r in reqs.get("requests", reqs)]


def test_transient_alerts_are_held_back_and_persistent_ones_paged(workers, sandbox):
    env = workers.env({"PAGERSTREAM_TRANSIENT_PAUSE": "true", "PAGERSTREAM_TRANSIENT_PAUSE_SECONDS": "4",
                       "PAGERSTREAM_TRANSIENT_MIN_EPISODES": "3", "PAGERSTREAM_TICK_SECONDS": "0.5"})
    w = workers.start(env, name="transient")
    bs, prefix = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), env["PAGERSTREAM_TOPIC_PREFIX"]
    dedup = f"flappy-{uuid.uuid4().hex[:6]}"
    cls = f"Flap{uuid.uuid4().hex[:6]}"

    # Three short episodes of one alert type: each paged (no history yet) and resolved within a second.
    for i in range(3):
        assert httpx.post(w.url + "/v2/enqueue", json=_event("trigger", dedup, cls=cls)).status_code == 202
        eventually(lambda n=i: _sandbox_actions(sandbox, dedup).count("trigger") == n + 1, what="trigger")
        assert httpx.post(w.url + "/v2/enqueue", json=_event("resolve", dedup)).status_code == 202
        eventually(lambda n=i: _sandbox_actions(sandbox, dedup).count("resolve") == n + 1, what="resolve")
    opened = [e for e in _incident_events(bs, prefix, dedup) if e["change"] == "opened"]
    assert len(opened) == 3 and all(e["pause"]["paused_until"] is None for e in opened)

    # Fourth episode: history says it clears by itself -> held back; it resolves: PagerDuty never hears of it.
    assert httpx.post(w.url + "/v2/enqueue", json=_event("trigger", dedup, cls=cls)).status_code == 202
    paused = eventually(lambda: [e for e in _incident_events(bs, prefix, dedup) if e["change_detail"] == "paused"],
                        what="a paused incident")
    assert paused[0]["pagerduty_action"] is None and "resolved by itself 3 of 3 times" in paused[0]["pause"]["evidence"]
    assert paused[0]["alert_type"].endswith("/" + cls)
    httpx.post(w.url + "/v2/enqueue", json=_event("resolve", dedup))
    eventually(lambda: [e for e in _incident_events(bs, prefix, dedup) if e["change_detail"] == "resolved_while_paused"],
               what="resolved while paused")
    time.sleep(5.5)  # past the pause: a tick must not page a resolved incident
    assert _sandbox_actions(sandbox, dedup) == ["trigger", "resolve"] * 3

    # Fifth episode persists past its pause: paged by a tick, then resolved in PagerDuty too, in order.
    assert httpx.post(w.url + "/v2/enqueue", json=_event("trigger", dedup, cls=cls)).status_code == 202
    eventually(lambda: _sandbox_actions(sandbox, dedup).count("trigger") == 4, timeout=30, what="page after pause")
    late = [e for e in _incident_events(bs, prefix, dedup) if e["change_detail"] == "paged_after_pause"]
    assert len(late) == 1 and late[0]["pagerduty_action"] == "trigger"
    assert late[0]["at"] - paused[0]["at"] >= 4000  # not before the pause ended
    httpx.post(w.url + "/v2/enqueue", json=_event("resolve", dedup))
    eventually(lambda: _sandbox_actions(sandbox, dedup) == ["trigger", "resolve"] * 4, what="final resolve")
    trig = [r for r in httpx.get(sandbox.url + "/sandbox/requests", params={"dedup_key": dedup}).json()["requests"]
            if r["body"]["event_action"] == "trigger"][-1]
    assert "resolved by itself" in trig["body"]["payload"]["custom_details"]["pagerstream"]["transient"]
    m = w.metrics()
    assert 'pagerstream_model_decisions_total{model="transient",outcome="pause"} 2.0' in m
    assert 'outcome="paged_after_pause"} 1.0' in m and 'outcome="resolved_while_paused"} 1.0' in m


@pytest.mark.skipif(not RULES.exists(), reason="shared data set prometheus_alerts not present")
def test_classifier_checkpoint_scores_feedback_and_similar_incidents(workers, sandbox):
    env = workers.env({"PAGERSTREAM_TICK_SECONDS": "0.5"})
    bs, prefix = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), env["PAGERSTREAM_TOPIC_PREFIX"]
    # A cold start: train from labelled rules and publish the checkpoint before the worker starts.
    out = subprocess.run([sys.executable, "-m", "pagerstream.cli", "models", "train", "classify", "--data", str(RULES),
                          "--limit", "600", "--publish"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    learned = json.loads(out.stdout.splitlines()[0])["learned"]
    assert learned > 500
    w = workers.start(env, name="classify")
    assert f'pagerstream_model_examples_learned{{model="classify"}} {float(learned)}' in w.metrics()

    run = uuid.uuid4().hex[:6]
    first = f"disk-{run}-1"
    httpx.post(w.url + "/v2/enqueue", json=_event("trigger", first, summary="Disk space on db-3 above 90%"))
    opened = eventually(lambda: [e for e in _incident_events(bs, prefix, first) if e["change"] == "opened"],
                        what="opened")[0]
    by = {s["model"]: s for s in opened["scores"]}
    assert {"classify.category", "classify.severity"} <= set(by)
    assert by["classify.category"]["best"] in ("infrastructure", "application", "security", "business")
    assert by["classify.category"]["explanation"]
    sb = httpx.get(sandbox.url + "/sandbox/requests", params={"dedup_key": first}).json()["requests"]
    eventually(lambda: httpx.get(sandbox.url + "/sandbox/requests", params={"dedup_key": first}).json()["requests"],
               what="trigger at the sandbox")
    sb = httpx.get(sandbox.url + "/sandbox/requests", params={"dedup_key": first}).json()["requests"]
    assert "category" in sb[0]["body"]["payload"]["custom_details"]["pagerstream"]

    # A human correction through the API: validated, produced, learned, checkpointed, reloaded.
    bad = httpx.post(w.url + "/api/v1/feedback", json={"incident_id": opened["incident_id"], "category": "weather"},
                     headers=api_headers("responder"))
    assert bad.status_code == 400 and "category must be one of" in bad.json()["errors"][0]
    ok = httpx.post(w.url + "/api/v1/feedback", headers=api_headers("responder"),
                    json={"incident_id": opened["incident_id"], "category": "business", "by": "alice"})
    assert ok.status_code == 202
    eventually(lambda: 'pagerstream_model_feedback_total{kind="human"} 1.0' in w.metrics(), what="feedback learned")
    want = float(learned + HUMAN_WEIGHT)  # a human correction is learned HUMAN_WEIGHT times
    eventually(lambda: f'pagerstream_model_examples_learned{{model="classify"}} {want}' in w.metrics(),
               timeout=30, what="the new checkpoint loaded")

    # Resolved incidents become the "similar past incidents" of new ones.
    httpx.post(w.url + "/v2/enqueue", json=_event("resolve", first))
    eventually(lambda: [e for e in _incident_events(bs, prefix, first) if e["change"] == "resolved"], what="resolved")
    second = f"disk-{run}-2"
    # the index follows the incidents topic: wait until it holds the resolved incident
    eventually(lambda: "pagerstream_similar_index_incidents 1.0" in w.metrics(), what="indexed")
    httpx.post(w.url + "/v2/enqueue", json=_event("trigger", second, summary="Disk space on db-9 above 90%"))
    evs = eventually(lambda: [e for e in _incident_events(bs, prefix, second) if e["change"] == "opened"],
                     what="second incident")
    assert evs[-1]["similar"][0]["incident_id"] == opened["incident_id"]
    assert "disk" in evs[-1]["similar"][0]["why"].lower()


def test_any_metric_stream_is_scored_and_an_anomaly_predicted(workers):
    env = workers.env()
    w = workers.start(env, name="points")
    bs, prefix = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), env["PAGERSTREAM_TOPIC_PREFIX"]
    series = f"latency.p99.{uuid.uuid4().hex[:6]}"
    t0 = 1_700_000_000
    pts = [(t0 + 60 * i, 100 + 5 * math.sin(i / 6)) for i in range(400)]
    pts += [(t0 + 60 * 400, 900.0)] + [(t0 + 60 * (401 + i), 100.0) for i in range(5)]
    items = [(series.encode(), json.dumps({"series": series, "ts": t, "value": v}).encode()) for t, v in pts]
    items.append((series.encode(), b'{"series": "x", "ts": "soon"}'))  # invalid: dead-lettered
    produce_bytes(bs, prefix + "metrics.points", items)
    got = eventually(lambda: [r["value"] for r in read_topic(bs, prefix + "incidents.predicted", idle=1.0)],
                     timeout=60, what="a predicted incident for the spike")
    assert got[0]["source"] == "metric" and got[0]["service"] == series
    assert any(p["value"] == 900.0 for p in got), got
    assert all(p["bucket_start"] >= (t0 + 60 * 400) * 1000 for p in got)  # nothing in the steady part
    dl = eventually(lambda: [r["value"] for r in read_topic(bs, prefix + "alerts.dead-letter", idle=0.7)
                             if r["value"]["stage"] == "metric-points"], what="dead letter")
    assert "invalid point" in dl[0]["reason"]
    assert 'pagerstream_model_latency_seconds_count{model="metric_anomaly"}' in w.metrics()
    assert os.environ.get("PAGERSTREAM_NEVER_SET") is None


CORRELATE_CATALOG = """
version: 1
services:
  - name: shop
    team: web
    matchers: [{source: "^shop-[0-9]+$"}]
    grouping: {mode: correlate}
"""


def test_correlate_grouping_mode_joins_related_alerts_into_one_page(workers, sandbox, tmp_path):
    cat = tmp_path / "catalog.yaml"
    cat.write_text(CORRELATE_CATALOG)
    env = workers.env()
    w = workers.start(env, catalog=str(cat), name="correlate")
    bs, prefix = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), env["PAGERSTREAM_TOPIC_PREFIX"]
    run = uuid.uuid4().hex[:6]

    def send(dedup: str, host: str, cls: str) -> None:
        body = {"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": dedup,
                "payload": {"summary": f"{cls} on {host}", "source": host, "severity": "error", "class": cls}}
        assert httpx.post(w.url + "/v2/enqueue", json=body).status_code == 202

    send(f"{run}-a", "shop-1", "HighLatency")
    send(f"{run}-b", "shop-1", "Http5xx")  # same host, another type, right after: same incident
    evs = eventually(lambda: (x := [r["value"] for r in read_topic(bs, prefix + "incidents", idle=0.7)]) and len(x) >= 2
                     and x, what="two incident events")
    assert [e["change"] for e in evs[:2]] == ["opened", "alert_added"]
    assert evs[0]["incident_id"] == evs[1]["incident_id"] and "same host" in evs[1]["reason"]
    time.sleep(1.0)
    reqs = httpx.get(sandbox.url + "/sandbox/requests").json()["requests"]
    ours = [r for r in reqs if r["body"].get("dedup_key", "").startswith("pagerstream-" + evs[0]["incident_id"])]
    assert [r["body"]["event_action"] for r in ours] == ["trigger"]  # one page for both alerts


ROUTING_CATALOG = """
version: 1
services:
  - name: search
    team: discovery
    tier: 2
    matchers: [{source: "^search-[0-9]+$"}]
"""


def test_incidents_are_routed_by_rules_with_the_reason_recorded(workers, sandbox, tmp_path):
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "routing"
    cat = tmp_path / "catalog.yaml"
    cat.write_text(ROUTING_CATALOG)
    keys = {"security": "SECKEYTEST0000000000000000000S3C", "payments": "PAYKEYTEST0000000000000000000PAY",
            "payments-after-hours": "AFTERHOURSTEST00000000000000AH42", "discovery": "DISKEYTEST0000000000000000000D1S",
            "tickets": "TICKETKEYTEST0000000000000000TIX", "catch-all": "CATCHALLTEST0000000000000000CALL"}
    env = workers.env({"PAGERSTREAM_ROUTING_CONFIG": str(fixtures / "routing.example.yaml"),
                       "PAGERSTREAM_ROUTING_KEYS": ",".join(f"{k}={v}" for k, v in keys.items())})
    w = workers.start(env, catalog=str(cat), name="routing")
    bs, prefix = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), env["PAGERSTREAM_TOPIC_PREFIX"]
    dedup = f"route-{uuid.uuid4().hex[:6]}"
    body = {"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": dedup,
            "payload": {"summary": "search p99 high", "source": "search-1", "severity": "info"}}
    assert httpx.post(w.url + "/v2/enqueue", json=body).status_code == 202
    ev = eventually(lambda: [e for e in _incident_events(bs, prefix, dedup) if e["change"] == "opened"],
                    what="opened")[0]
    assert ev["route"]["rule"] == "low-noise" and ev["route"]["routing_key_name"] == "tickets"
    assert ev["route"]["reason"] and ev["routing_key_hint"] == keys["tickets"][-4:]
    calls = eventually(lambda: httpx.get(sandbox.url + "/sandbox/requests", params={"dedup_key": dedup}).json()["requests"],
                       what="the trigger")
    assert calls[0]["body"]["routing_key"] == keys["tickets"]  # not the sender's key: the routed one
    httpx.post(w.url + "/v2/enqueue", json={"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": dedup})
    calls = eventually(lambda: (r := httpx.get(sandbox.url + "/sandbox/requests", params={"dedup_key": dedup})
                                .json()["requests"]) and len(r) == 2 and r, what="the resolve")
    assert [c["body"]["event_action"] for c in calls] == ["trigger", "resolve"]
    assert calls[1]["body"]["routing_key"] == keys["tickets"]  # the resolve follows the routed key
