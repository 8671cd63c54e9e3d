"""Property: whatever is posted to the ingress, the answer is never a 5xx (and is JSON)."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROUTING_KEY

pytestmark = pytest.mark.integration

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40))
json_values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                        st.dictionaries(st.text(max_size=12), c, max_size=5)),
                           max_leaves=20)
pd_like = st.fixed_dictionaries(
    {"routing_key": st.one_of(st.just(ROUTING_KEY), st.text(max_size=40)),
     "event_action": st.sampled_from(["trigger", "acknowledge", "resolve", "bogus", ""])},
    optional={"dedup_key": st.text(max_size=300), "payload": st.one_of(json_values, st.fixed_dictionaries(
        {"summary": st.text(max_size=50), "source": st.text(max_size=20),
         "severity": st.sampled_from(["critical", "error", "warning", "info", "fatal"])},
        optional={"custom_details": json_values, "timestamp": st.text(max_size=30)})),
        "images": json_values, "links": json_values, "client": json_values})
am_like = st.fixed_dictionaries(
    {"version": st.sampled_from(["4", "3", ""]), "status": st.sampled_from(["firing", "resolved", "x"]),
     "alerts": st.one_of(json_values, st.lists(st.fixed_dictionaries(
         {"status": st.sampled_from(["firing", "resolved"]),
          "labels": st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4)},
         optional={"annotations": json_values, "startsAt": st.text(max_size=30),
                   "fingerprint": st.text(max_size=20)}), max_size=3))},
    optional={"groupKey": st.text(max_size=20)})
bodies = st.one_of(json_values.map(lambda v: json.dumps(v).encode()), pd_like.map(lambda v: json.dumps(v).encode()),
                   am_like.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200))
paths = st.sampled_from(["/v2/enqueue", "/v2/change/enqueue", "/ingest/alertmanager",
                         f"/ingest/alertmanager?routing_key={ROUTING_KEY}", "/ingest/grafana",
                         "/ingest/generic/uptimebot", "/ingest/generic/nope"])


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=paths, body=bodies)
def test_ingress_never_answers_5xx(shared_worker, path, body):
    r = httpx.post(shared_worker.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=15)
    assert r.status_code < 500, (path, body[:200], r.status_code, r.text[:300])
    j = r.json()
    assert "status" in j and "message" in j
    if r.status_code == 400 and path.startswith("/v2/"):
        assert j["status"] == "invalid event" and isinstance(j["errors"], list) and j["errors"]
