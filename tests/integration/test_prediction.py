"""Predictive detection in the stream: triggers are repartitioned by service to `alerts.rates`; a
steady per-service rate and then a burst give a PredictedIncident with the detector's explanation
on `incidents.predicted`."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from tests.conftest import ROUTING_KEY
from tests.integration.helpers import eventually, produce_bytes, read_topic

pytestmark = pytest.mark.integration

CATALOG = """
version: 1
services:
  - name: storefront
    team: web
    tier: 2
    matchers: [{source: "^web-[0-9]+$"}]
  - name: payments
    team: pay
    tier: 1
    matchers: [{source: "^pay-[0-9]+$"}]
"""


def test_rate_burst_is_predicted_with_an_explanation(workers, sandbox, tmp_path):
    cat = tmp_path / "catalog.yaml"
    cat.write_text(CATALOG)
    # Ticks off for this test: the series below is built from explicit event times, so the result does
    # not depend on how fast this machine is (closing buckets on ticks is unit-tested).
    # Predicted pages on, at the lowest mapped threshold: every published prediction pages.
    env = workers.env({"PAGERSTREAM_RATE_BUCKET_SECONDS": "1", "PAGERSTREAM_TICK_SECONDS": "3600",
                       "PAGERSTREAM_PREDICTION_PAGE": "true", "ML_PREDICTION_THRESHOLD": "0",
                       "PAGERDUTY_ROUTING_KEY": ROUTING_KEY})
    w = workers.start(env, catalog=str(cat), name="predict")
    bs = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    prefix = env["PAGERSTREAM_TOPIC_PREFIX"]
    run = uuid.uuid4().hex[:6]

    # 1. New triggers of a catalog service reach the rate series, keyed by service.
    for i in range(3):
        body = {"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": f"web-{run}-{i}",
                "payload": {"summary": "5xx on storefront", "source": "web-1", "severity": "warning"}}
        assert httpx.post(w.url + "/v2/enqueue", json=body).status_code == 202
    rates = eventually(lambda: (x := [r for r in read_topic(bs, prefix + "alerts.rates", idle=0.7)
                                      if r["key"] == b"storefront"]) and len(x) >= 3 and x, what="rate records")
    assert all("t" in r["value"] for r in rates)

    # 2. Another service's series: a steady 2 triggers per 1 s bucket for 40 buckets, then 100 in one
    #    bucket, then one more trigger that closes the burst bucket.
    t0 = (int(time.time()) + 3600) * 1000
    times = [t0 + b * 1000 + k * 300 for b in range(40) for k in range(2)]
    times += [t0 + 40_000 + k * 5 for k in range(100)]
    times += [t0 + b * 1000 + k * 300 for b in range(41, 46) for k in range(2)]  # back to normal
    produce_bytes(bs, prefix + "alerts.rates", [(b"payments", b'{"t":%d}' % t) for t in times])

    topic = prefix + "incidents.predicted"
    got = eventually(lambda: [r["value"] for r in read_topic(bs, topic, idle=1.0)], timeout=60,
                     what="a predicted incident for the burst")
    assert [p["bucket_start"] for p in got] == [t0 + 40_000], got  # the burst, and nothing in the steady part
    p = got[0]
    assert p["service"] == "payments" and p["team"] == "pay" and p["tier"] == "1" and p["count"] == 100
    assert p["score"] >= 0.1 and p["model_version"] == "rate-anomaly/1" and p["bucket_ms"] == 1000
    reason = json.loads(p["reason_json"])
    assert reason["observed"] == 100 and reason["expected"][1] < 100
    m = w.metrics()
    assert "pagerstream_model_score_bucket" in m and "pagerstream_predicted_incidents_total 1.0" in m
    assert p["pagerduty_action"] == "trigger"

    # The prediction paged PagerDuty at warning level, and resolved after 3 quiet buckets, in order.
    dedup = "pagerstream-predicted-payments"
    calls = eventually(lambda: (r := httpx.get(sandbox.url + "/sandbox/requests", params={"dedup_key": dedup})
                                .json()["requests"]) and len(r) >= 2 and r, timeout=60, what="predicted page + resolve")
    assert [c["body"]["event_action"] for c in calls] == ["trigger", "resolve"]
    trig = calls[0]["body"]
    assert trig["payload"]["severity"] == "warning" and trig["payload"]["class"] == "predicted_incident"
    assert trig["payload"]["custom_details"]["pagerstream"]["prediction"]["alerts_in_bucket"] == 100
