"""What the incident stage publishes for a decision: the IncidentEvent and the PagerDuty call."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from pagerstream.processors.alert import Alert, Link
from pagerstream.processors.incident import Grouping, decide
from pagerstream.processors.outbox import (change_event_record, incident_event_record, pagerduty_event_record,
                                           stream_key)
from pagerstream.schemas import AvroCodec

RK = "b" * 32
SCHEMA = Path(__file__).resolve().parents[2].parent / "shared" / "contracts" / "pagerduty" / "events-v2"


def _alert(action="trigger", n=1, **kw):
    base = dict(id=f"r{n}:0", raw_id=f"r{n}", source="alertmanager", action=action, routing_key=RK, dedup_key="fp1",
                summary="Disk full", severity="critical", origin="db-1", event_time=1_700_000_000_000,
                received_at=1_700_000_000_500 + n, group_key="g", service="db", team="dba", tier="0",
                runbook_url="https://runbooks.example.com/db", custom_details_json='{"free": "1%"}',
                links=(Link("https://prom.example.com/graph", "Source"),))
    base.update(kw)
    return Alert(**base)


def test_trigger_record_and_body():
    step = decide(None, _alert(), Grouping())
    o = step.outputs[0]
    inc = incident_event_record(o)
    assert inc["change"] == "opened" and inc["pagerduty_action"] == "trigger" and inc["routing_key_hint"] == RK[-4:]
    assert RK not in json.dumps(inc)  # the routing key never reaches the incidents topic
    AvroCodec("incident_event").encode(inc)
    ev = pagerduty_event_record(o, 17, now_ms=0)
    assert ev["seq"] == 17 and ev["stream_key"] == stream_key(RK, "fp1") and RK not in ev["stream_key"]
    body = json.loads(ev["body_json"])
    assert body["event_action"] == "trigger" and body["dedup_key"] == "fp1"
    assert body["payload"]["custom_details"]["free"] == "1%"
    assert body["payload"]["custom_details"]["pagerstream"]["service"] == "db"
    assert {"href": "https://runbooks.example.com/db", "text": "Runbook"} in body["links"]
    AvroCodec("pagerduty_event").encode(ev)
    if SCHEMA.is_dir():
        jsonschema.validate(body, json.loads((SCHEMA / "enqueue-request.schema.json").read_text()))


def test_no_call_for_duplicates_and_bare_resolve():
    s1 = decide(None, _alert(), Grouping())
    s2 = decide(s1.state, _alert(n=2), Grouping())
    assert pagerduty_event_record(s2.outputs[0], 1, now_ms=0) is None
    s3 = decide(s2.state, _alert("resolve", n=3), Grouping())
    body = json.loads(pagerduty_event_record(s3.outputs[0], 2, now_ms=0)["body_json"])
    assert body == {"routing_key": RK, "event_action": "resolve", "dedup_key": "fp1"}


@pytest.mark.parametrize("details", ["[1, 2]", "not json", "{}"])
def test_change_event_record(details):
    ev = change_event_record(_alert("change", custom_details_json=details), 9)
    body = json.loads(ev["body_json"])
    assert ev["endpoint"] == "change" and "event_action" not in body and body["payload"]["summary"] == "Disk full"
    assert isinstance(body["payload"].get("custom_details", {}), dict)
