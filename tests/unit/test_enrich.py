"""enrich: service attachment, routing key, redaction, group keys."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pagerstream.processors.alert import Alert, Link
from pagerstream.processors.catalog import EMPTY_CATALOG, FieldPath, load_catalog, parse_catalog
from pagerstream.processors.enrich import REDACTED, enrich, group_key_for, redact
from pagerstream.schemas.codec import AvroCodec

EXAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "catalog.example.yaml"
CATALOG = load_catalog(EXAMPLE)
CHECKOUT, SEARCH, PLATFORM = CATALOG.services
RK_IN = "a" * 32
RK_CHECKOUT = "0123456789abcdef0123456789abcdef"


def tag(rk: str) -> str:
    return hashlib.sha256(rk.encode()).hexdigest()[:12]


def alert(**kw) -> Alert:
    base = {
        "id": "r:0",
        "raw_id": "r",
        "source": "alertmanager",
        "action": "trigger",
        "routing_key": RK_IN,
        "dedup_key": "fp1",
        "summary": "disk full",
        "severity": "error",
        "origin": "host-1",
        "event_time": 1,
        "received_at": 1,
    }
    return Alert(**(base | kw))


def test_matched_service_sets_fields_and_routing_key():
    a = alert(labels={"service": "checkout", "alertname": "HighLatency", "cluster": "eu-1"})
    out = enrich(a, CATALOG)
    assert (out.alert.service, out.alert.team, out.alert.tier) == ("checkout", "payments", "1")
    assert out.alert.runbook_url == "https://runbooks.example.com/checkout"
    assert out.alert.routing_key == RK_CHECKOUT
    assert out.alert.group_key == f"{tag(RK_CHECKOUT)}:svc:checkout:HighLatency|eu-1"
    assert (
        out.reason == "matched service checkout by matcher 0; routing key from the service; grouping fields"
    )
    assert a.routing_key == RK_IN and a.service is None  # the input is untouched


def test_service_without_routing_key_keeps_the_alerts():
    out = enrich(alert(labels={"job": "search", "env": "production"}), CATALOG)
    assert out.alert.service == "search-api" and out.alert.tier == "2"
    assert out.alert.routing_key == RK_IN
    assert out.alert.group_key == f"{tag(RK_IN)}:svc:search-api"
    assert out.reason == "matched service search-api by matcher 0; grouping time_window"


def test_no_service_matched():
    out = enrich(alert(labels={"service": "unknown"}), CATALOG)
    assert out.alert.service is None and out.alert.team is None and out.alert.tier is None
    assert out.alert.group_key == f"{tag(RK_IN)}:fp1"
    assert out.reason == "no service matched; grouping none"


def test_tier_zero_is_kept():
    assert enrich(alert(labels={"team": "sre"}), CATALOG).alert.tier == "0"


def test_global_and_service_redaction():
    details = {"password": "hunter2-secret", "card_number": "4111111111111111", "keep": "yes"}
    a = alert(labels={"service": "checkout", "email": "bob@example.com", "alertname": "X", "cluster": "c"},
              custom_details_json=json.dumps(details))  # fmt: skip
    out = enrich(a, CATALOG).alert
    assert out.labels["email"] == REDACTED and out.labels["service"] == "checkout"
    assert json.loads(out.custom_details_json) == {
        "password": REDACTED,
        "card_number": REDACTED,
        "keep": "yes",
    }
    assert out.redacted == ("labels.email", "custom_details.password", "custom_details.card_number")
    assert "bob@example.com" not in json.dumps(out.to_record())
    codec = AvroCodec("alert")
    assert Alert.from_record(codec.decode(codec.encode(out.to_record()))) == out


def test_redaction_reason_lists_paths():
    out = enrich(alert(labels={"email": "bob@example.com"}), CATALOG)
    assert out.reason == "no service matched; redacted labels.email; grouping none"


def test_redacted_text_copied_elsewhere_is_scrubbed_too():
    a = alert(
        labels={"email": "bob@example.com", "alertname": "Login"},
        summary="[FIRING] Login (bob@example.com)",
        custom_details_json=json.dumps({"who": {"mail": "bob@example.com"}, "n": 1}),
        links=(Link(href="https://x/?u=bob@example.com", text="bob@example.com"),),
    )
    out = redact(a, (FieldPath("labels", ("email",)),))
    assert out.summary == f"[FIRING] Login ({REDACTED})"
    assert json.loads(out.custom_details_json) == {"who": {"mail": REDACTED}, "n": 1}
    assert out.links == (Link(href=f"https://x/?u={REDACTED}", text=REDACTED),)
    assert out.redacted == ("labels.email", "summary", "custom_details")
    assert "bob@example.com" not in json.dumps(out.to_record())


@pytest.mark.parametrize(
    "path, field, expected_details",
    [
        ("custom_details.user.email", None, {"user": {"email": REDACTED, "id": 7}, "top": "t"}),
        ("custom_details.top", None, {"user": {"email": "e@x.io", "id": 7}, "top": REDACTED}),
        ("summary", "summary", None),
        ("source", "origin", None),
    ],
)
def test_redaction_paths(path, field, expected_details):
    a = alert(custom_details_json=json.dumps({"user": {"email": "e@x.io", "id": 7}, "top": "t"}))
    out = redact(a, (FieldPath.parse(path),))
    if expected_details is not None:
        assert json.loads(out.custom_details_json) == expected_details
    else:
        assert getattr(out, field) == REDACTED
    assert out.redacted[0] == path


def test_absent_fields_are_not_recorded_and_alert_is_unchanged():
    a = alert(custom_details_json='{"a": 1}')
    paths = (
        FieldPath.parse("labels.email"),
        FieldPath.parse("custom_details.user.email"),
        FieldPath.parse("component"),
    )
    assert redact(a, paths) is a


def test_redaction_is_idempotent():
    a = alert(labels={"email": "bob@example.com"})
    once = enrich(a, CATALOG).alert
    twice = enrich(once, CATALOG).alert
    assert twice.redacted == once.redacted == ("labels.email",)
    assert twice.labels == once.labels


def test_group_key_modes():
    a = alert(labels={"alertname": "HighLatency"}, dedup_key="fp9")
    assert group_key_for(a, None) == f"{tag(RK_IN)}:fp9"
    assert group_key_for(a, PLATFORM) == f"{tag(RK_IN)}:fp9"  # mode none
    assert group_key_for(a, SEARCH) == f"{tag(RK_IN)}:svc:search-api"
    assert group_key_for(a, CHECKOUT) == f"{tag(RK_IN)}:svc:checkout:HighLatency|"  # missing cluster -> ""


def test_group_key_fields_can_use_identity_fields():
    cat = parse_catalog(
        "version: 1\nservices:\n  - name: s\n    matchers: [{input: alertmanager}]\n"
        "    grouping: {mode: fields, fields: [source, input, component, labels.team]}\n"
    )
    a = alert(labels={"team": "db"}, component="pg")
    assert enrich(a, cat).alert.group_key == f"{tag(RK_IN)}:svc:s:host-1|alertmanager|pg|db"
    # severity and summary change during an alert's life and do not move it to another group
    assert (
        enrich(a.with_(severity="critical", summary="worse"), cat).alert.group_key
        == enrich(a, cat).alert.group_key
    )


def test_empty_catalog():
    out = enrich(alert(), EMPTY_CATALOG)
    assert out.alert.group_key == f"{tag(RK_IN)}:fp1" and out.alert.redacted == ()


ROUTING_KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=32, max_size=32)


@given(
    routing_key=ROUTING_KEYS, dedup_key=st.text(min_size=1), spec=st.sampled_from([None, *CATALOG.services])
)
def test_group_key_is_deterministic_and_never_holds_the_routing_key(routing_key, dedup_key, spec):
    a = alert(routing_key=routing_key, dedup_key=dedup_key, labels={"alertname": "A", "cluster": "c"})
    key = group_key_for(a, spec)
    expected = {
        None: f"{tag(routing_key)}:{dedup_key}",
        "platform": f"{tag(routing_key)}:{dedup_key}",
        "search-api": f"{tag(routing_key)}:svc:search-api",
        "checkout": f"{tag(routing_key)}:svc:checkout:A|c",
    }[spec.name if spec else None]
    assert key == expected == group_key_for(a, spec)
    if routing_key not in dedup_key:
        assert routing_key not in key
