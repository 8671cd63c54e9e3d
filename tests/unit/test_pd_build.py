"""pd_build: Events v2 bodies within PagerDuty's limits, checked against the contract schemas."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pagerstream.processors.alert import Image, Link
from pagerstream.processors.errors import InvalidInput
from pagerstream.processors.pd_build import (
    MAX_BODY_BYTES,
    ORIGINAL_DEDUP_KEY,
    OVERSIZE_DETAILS,
    build_change,
    build_event,
    encode_body,
)

EVENTS_V2 = Path(__file__).resolve().parents[2] / "../shared/contracts/pagerduty/events-v2"
ENQUEUE_SCHEMA = json.loads((EVENTS_V2 / "enqueue-request.schema.json").read_text())
CHANGE_SCHEMA = json.loads((EVENTS_V2 / "change-enqueue-request.schema.json").read_text())
RK = "0123456789abcdef0123456789abcdef"


def valid_enqueue(body: dict) -> None:
    jsonschema.Draft202012Validator(ENQUEUE_SCHEMA).validate(body)
    assert len(encode_body(body).encode("utf-8")) <= MAX_BODY_BYTES


def trigger(**kw):
    args = {
        "action": "trigger",
        "routing_key": RK,
        "dedup_key": "srv01/mysql",
        "summary": "DISK at 99%",
        "severity": "critical",
        "origin": "db-1",
        "custom_details": {"free": "1%"},
        "links": [Link("https://x", "X")],
        "images": [],
    }
    return build_event(**(args | kw))


def test_plain_trigger_exact_body():
    built = trigger(component="mysql", group="prod", class_="disk", client_url="https://pagerstream/i/1",
                    timestamp_ms=1437122578315, images=[Image("https://img/1.png", alt="chart")])  # fmt: skip
    assert built.notes == ()
    assert built.body == {
        "routing_key": RK,
        "event_action": "trigger",
        "dedup_key": "srv01/mysql",
        "payload": {"summary": "DISK at 99%", "source": "db-1", "severity": "critical",
                    "timestamp": "2015-07-17T08:42:58.315Z", "component": "mysql", "group": "prod",
                    "class": "disk", "custom_details": {"free": "1%"}},
        "client": "pagerstream",
        "client_url": "https://pagerstream/i/1",
        "links": [{"href": "https://x", "text": "X"}],
        "images": [{"src": "https://img/1.png", "alt": "chart"}],
    }  # fmt: skip
    valid_enqueue(built.body)
    assert encode_body(built.body).startswith(
        '{"routing_key":"0123456789abcdef0123456789abcdef","event_action"'
    )


@pytest.mark.parametrize("action", ["acknowledge", "resolve"])
def test_only_trigger_carries_payload_and_context(action):
    built = trigger(action=action)
    assert built.body == {"routing_key": RK, "event_action": action, "dedup_key": "srv01/mysql"}
    valid_enqueue(built.body)


def test_summary_truncated_to_exactly_1024_runes_ending_in_ellipsis():
    built = trigger(summary="é" * 1500)
    summary = built.body["payload"]["summary"]
    assert len(summary) == 1024 and summary.endswith("…") and summary[:1023] == "é" * 1023
    assert built.notes == ("summary cut from 1500 to 1024 runes",)
    valid_enqueue(built.body)


@pytest.mark.parametrize("n", [1023, 1024])
def test_summary_at_or_below_the_limit_is_untouched(n):
    built = trigger(summary="😀" * n)
    assert built.body["payload"]["summary"] == "😀" * n and built.notes == ()


def test_1025_runes_cut():
    summary = trigger(summary="x" * 1025).body["payload"]["summary"]
    assert summary == "x" * 1023 + "…"


def test_oversize_body_replaces_custom_details():
    built = trigger(custom_details={"blob": "x" * 600_000})
    assert built.body["payload"]["custom_details"] == OVERSIZE_DETAILS
    assert built.notes[0].startswith("body was 600") and built.notes[0].endswith(
        "(> 512000): custom_details replaced"
    )
    valid_enqueue(built.body)


def test_body_just_under_the_cap_is_untouched():
    small = trigger(custom_details={"blob": ""})
    room = MAX_BODY_BYTES - len(encode_body(small.body).encode())
    exact = trigger(custom_details={"blob": "x" * room})
    assert len(encode_body(exact.body).encode()) == MAX_BODY_BYTES and exact.notes == ()
    over = trigger(custom_details={"blob": "x" * (room + 1)})
    assert over.body["payload"]["custom_details"] == OVERSIZE_DETAILS


def test_oversize_links_and_fields_are_dropped_then_cut():
    built = trigger(links=[Link("https://x/" + "a" * 300_000)] * 2, component="c" * 600_000)
    assert "links" not in built.body
    assert len(built.body["payload"]["component"]) == 1024
    assert any("links dropped" in n for n in built.notes) and any("component cut" in n for n in built.notes)
    valid_enqueue(built.body)


def test_long_dedup_key_is_hashed_and_kept_in_details():
    long_key = "k" * 300
    built = trigger(dedup_key=long_key)
    assert built.body["dedup_key"] == hashlib.sha256(long_key.encode()).hexdigest()
    assert built.body["payload"]["custom_details"] == {"free": "1%", ORIGINAL_DEDUP_KEY: long_key}
    assert built.notes == ("dedup_key of 300 characters sent as its sha256",)
    resolve = trigger(action="resolve", dedup_key=long_key)
    assert resolve.body["dedup_key"] == built.body["dedup_key"]  # trigger and resolve still pair up
    valid_enqueue(built.body)


def test_dedup_key_of_255_is_kept():
    assert trigger(dedup_key="k" * 255).body["dedup_key"] == "k" * 255


def test_bad_severity_and_empty_fields_are_repaired_with_notes():
    built = trigger(severity="sev1", origin=" ", summary="")
    payload = built.body["payload"]
    assert (payload["severity"], payload["source"], payload["summary"]) == (
        "error",
        "pagerstream",
        "(no summary)",
    )
    assert built.notes == ("severity 'sev1' replaced by 'error'", "empty source replaced by 'pagerstream'",
                           "empty summary replaced")  # fmt: skip
    valid_enqueue(built.body)


def test_links_and_images_without_target_are_dropped():
    built = trigger(links=[{"href": ""}, {"href": "https://a", "text": ""}], images=[Image("")])
    assert built.body["links"] == [{"href": "https://a"}] and "images" not in built.body
    assert built.notes == ("dropped a link without href", "dropped an image without src")


@pytest.mark.parametrize(
    "kw, error",
    [
        ({"action": "change"}, "'event_action' is invalid (should be one of: trigger, acknowledge, resolve)"),
        ({"routing_key": "short"}, "Length of 'routing_key' is incorrect (should be 32 characters)"),
        ({"dedup_key": ""}, "'dedup_key' is missing or blank"),
    ],
)
def test_unfixable_inputs_raise(kw, error):
    with pytest.raises(InvalidInput) as info:
        trigger(**kw)
    assert info.value.errors == [error]


def test_change_event():
    built = build_change(routing_key=RK, summary="Deploy 42", origin="ci", custom_details={"sha": "abc"},
                         links=[Link("https://ci/42", "Build")], timestamp_ms=0)  # fmt: skip
    assert built.body == {
        "routing_key": RK,
        "payload": {"summary": "Deploy 42", "source": "ci", "timestamp": "1970-01-01T00:00:00.000Z",
                    "custom_details": {"sha": "abc"}},
        "links": [{"href": "https://ci/42", "text": "Build"}],
    }  # fmt: skip
    jsonschema.Draft202012Validator(CHANGE_SCHEMA).validate(built.body)
    big = build_change(routing_key=RK, summary="s" * 2000, custom_details={"x": "y" * 600_000})
    assert (
        len(big.body["payload"]["summary"]) == 1024
        and big.body["payload"]["custom_details"] == OVERSIZE_DETAILS
    )
    jsonschema.Draft202012Validator(CHANGE_SCHEMA).validate(big.body)


def test_encode_body_is_compact_utf8_and_survives_lone_surrogates():
    assert encode_body({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'
    text = encode_body({"a": "\ud800"})
    assert text == '{"a":"\\ud800"}' and text.encode("utf-8")


text = st.text(max_size=2000)
details = st.dictionaries(st.text(max_size=10), st.text(max_size=200) | st.integers(), max_size=5)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    action=st.sampled_from(["trigger", "acknowledge", "resolve"]),
    dedup_key=st.text(min_size=1, max_size=400),
    summary=text,
    severity=st.sampled_from(["critical", "error", "warning", "info", "", "CRIT"]),
    origin=st.text(max_size=100),
    component=st.none() | st.text(max_size=50),
    custom_details=st.none() | details,
    links=st.lists(st.builds(Link, st.text(max_size=50), st.none() | st.text(max_size=20)), max_size=3),
    images=st.lists(st.builds(Image, st.text(max_size=50)), max_size=3),
    timestamp_ms=st.none() | st.integers(min_value=-(10**14), max_value=10**14),
)
def test_every_built_body_validates_against_the_contract(action, dedup_key, summary, severity, origin, component,
                                                          custom_details, links, images, timestamp_ms):  # fmt: skip
    built = build_event(action=action, routing_key=RK, dedup_key=dedup_key, summary=summary, severity=severity,
                        origin=origin, component=component, custom_details=custom_details, links=links,
                        images=images, timestamp_ms=timestamp_ms)  # fmt: skip
    valid_enqueue(built.body)
    if action == "trigger":
        assert len(built.body["payload"]["summary"]) <= 1024
        assert built.body["payload"]["severity"] in ("critical", "error", "warning", "info")
    else:
        assert set(built.body) == {"routing_key", "event_action", "dedup_key"}
