"""Predictive detection in the stream: a steady per-service trigger rate, then a burst, gives a
PredictedIncident with the detector's explanation on `incidents.predicted`."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import ROUTING_KEY
from tests.integration.helpers import eventually, read_topic

pytestmark = pytest.mark.integration

CATALOG = """
version: 1
services:
  - name: storefront
    team: web
    tier: 2
    matchers: [{source: "^web-[0-9]+$"}]
"""


def _trigger(key: str) -> dict:
    return {"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": key,
            "payload": {"summary": "5xx on storefront", "source": "web-1", "severity": "warning"}}


def test_rate_burst_is_predicted_with_an_explanation(workers, tmp_path):
    cat = tmp_path / "catalog.yaml"
    cat.write_text(CATALOG)
    env = workers.env({"PAGERSTREAM_RATE_BUCKET_SECONDS": "0.5", "PAGERSTREAM_TICK_SECONDS": "0.25",
                       "PAGERSTREAM_PREDICTION_THRESHOLD": "0.1"})
    w = workers.start(env, catalog=str(cat), name="predict")
    run = uuid.uuid4().hex[:6]
    bs = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    topic = env["PAGERSTREAM_TOPIC_PREFIX"] + "incidents.predicted"
    with httpx.Client(base_url=w.url, timeout=10) as c:
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 20:  # steady: about 2 triggers per 0.5 s bucket
            assert c.post("/v2/enqueue", json=_trigger(f"steady-{run}-{i}")).status_code == 202
            i += 1
            time.sleep(0.25)
        quiet = [r for r in read_topic(bs, topic, idle=1.0)]
    with ThreadPoolExecutor(16) as pool:  # burst: 100 triggers, concurrently, within a bucket or two
        codes = list(pool.map(lambda j: httpx.post(w.url + "/v2/enqueue", json=_trigger(f"burst-{run}-{j}"),
                                                    timeout=10).status_code, range(100)))
    assert codes == [202] * 100
    # The steady phase has about 2 triggers per bucket; the burst puts 100 into one or two buckets.
    got = eventually(lambda: [r["value"] for r in read_topic(bs, topic, idle=1.0) if r["value"]["count"] >= 15],
                     timeout=30, what="a predicted incident for the burst")
    p = got[0]
    assert p["service"] == "storefront" and p["team"] == "web" and p["tier"] == "2"
    assert p["score"] >= 0.1 and p["model_version"] == "rate-anomaly/1"
    reason = json.loads(p["reason_json"])
    assert reason["observed"] == p["count"] and reason["expected"][1] < p["count"]
    assert len(quiet) == 0, [q["value"] for q in quiet]  # the steady phase predicted nothing
    m = w.metrics()
    assert "pagerstream_model_score_bucket" in m and "pagerstream_predicted_incidents_total" in m
