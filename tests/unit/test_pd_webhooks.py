"""PagerDuty V3 webhooks (pagerstream/pagerduty/webhooks.py): signatures, envelope, Avro record, dedup.

- every vector in shared/contracts/pagerduty/webhooks-v3/signature-vectors/vectors.json behaves as the file
  says (for the two the docs leave open, `expect_valid: null`, as LENIENT_CHOICES says);
- header parsing edge cases, several signatures (PagerDuty's rotation) and several secrets (ours);
- every example payload in examples/ validates, converts to a PagerDutyWebhook record and round-trips
  through the Avro codec, with the fields the examples carry;
- malformed bodies are refused with a reason;
- dedup against the real Redis, and what happens when Redis is closed or does not answer;
- PAGERDUTY_WEBHOOK_SECRETS parsing, with no secret ever in a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import json
import socket
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pagerstream.schemas.codec import AvroCodec

from pagerstream.config import ConfigError, Secret, load_settings
from pagerstream.pagerduty.webhooks import (
    DEDUP_TTL_S,
    DUPLICATE,
    ENVELOPE_SCHEMA,
    FIRST,
    KNOWN_EVENT_TYPES,
    MAX_SIGNATURES,
    UNAVAILABLE,
    EnvelopeError,
    WebhookDedup,
    parse_envelope,
    record_key,
    sign_body,
    signature_candidates,
    to_record,
    verify_signature,
)
from tests.stack import redis_url

CONTRACTS = Path(__file__).resolve().parents[2].parent / "shared" / "contracts"
WEBHOOKS_V3 = CONTRACTS / "pagerduty" / "webhooks-v3"
VECTORS_FILE = WEBHOOKS_V3 / "signature-vectors" / "vectors.json"
needs_contracts = pytest.mark.skipif(not WEBHOOKS_V3.is_dir(), reason=f"contracts not found at {WEBHOOKS_V3}")

# Our decision where PagerDuty's docs are silent (NOTES.md section 2): trim whitespace around entries and
# compare hex case-insensitively. Neither accepts anything without knowledge of a secret.
LENIENT_CHOICES = {"synthetic_space_after_comma": True, "synthetic_uppercase_hex": True}
# Vectors without body_file transform this body (their notes say so; the test checks the signature fits).
TRANSFORM_BASE = "bodies/aldaviva_incident_triggered.body.json"

SECRET = "Zq3vN8c0m1xP4L7tR2yW6uE9iO5aS1dF3gH7jK0lQ8zX2cV4bN6mA9sD1fG5hJ7k"  # PagerDuty-like, 64 chars
OTHER_SECRET = "k7JhG5fD1sA9mN6bV4cX2zQ8lK0jH7gF3dS1aO5iE9uW6yR2tL7Px4m1c0N8vZq3"


def _vectors() -> list[dict[str, Any]]:
    if not VECTORS_FILE.is_file():
        return []
    return json.loads(VECTORS_FILE.read_text())["vectors"]


def _vector_body(vec: dict[str, Any]) -> bytes:
    if vec.get("body_empty"):
        return b""
    if vec.get("body_file"):
        return (VECTORS_FILE.parent / vec["body_file"]).read_bytes()
    base = (VECTORS_FILE.parent / TRANSFORM_BASE).read_bytes()
    # The untransformed base must carry the vector's signature, or this would test the wrong body.
    assert verify_signature(base, vec["header"], [vec["secret"]]), vec["id"]
    t = vec["body_transform"]
    if "replace" in t:
        old, new = t["replace"].encode(), t["with"].encode()
        assert base.count(old) == 1, vec["id"]
        return base.replace(old, new)
    if t.get("python", "").startswith("json.dumps(json.loads(raw_body))"):
        out = json.dumps(json.loads(base)).encode()
        assert out != base
        return out
    raise AssertionError(f"unknown body_transform in {vec['id']}: {t}")


# --- the shared vectors -------------------------------------------------------------------------------
@needs_contracts
def test_vectors_file_is_there_and_covers_the_cases():
    vecs = _vectors()
    assert len(vecs) >= 19
    assert {v["expect_valid"] for v in vecs} == {True, False, None}
    undecided = {v["id"] for v in vecs if v["expect_valid"] is None}
    assert undecided == set(LENIENT_CHOICES), "a new undecided vector needs an explicit decision here"


@needs_contracts
@pytest.mark.parametrize("vec", _vectors(), ids=lambda v: v["id"])
def test_signature_vector(vec: dict[str, Any]):
    body = _vector_body(vec)
    want = vec["expect_valid"] if vec["expect_valid"] is not None else LENIENT_CHOICES[vec["id"]]
    secret = vec["secret"]
    assert verify_signature(body, vec["header"], [secret]) is want
    # the secret as bytes, and next to secrets that match nothing: same verdict
    assert verify_signature(body, vec["header"], [secret.encode()]) is want
    assert verify_signature(body, vec["header"], [OTHER_SECRET, secret, SECRET]) is want
    # without the right secret nothing validates
    assert verify_signature(body, vec["header"], [OTHER_SECRET]) is False
    assert verify_signature(body, vec["header"], []) is False


@needs_contracts
@pytest.mark.parametrize("vec", [v for v in _vectors() if v["expect_valid"] and v.get("body_file")
                                 and "," not in v["header"] and v["header"].startswith("v1=")],
                         ids=lambda v: v["id"])
def test_sign_body_reproduces_real_signatures(vec: dict[str, Any]):
    body = _vector_body(vec)
    assert sign_body(body, vec["secret"]) == vec["header"]
    assert sign_body(body, vec["secret"].encode()) == vec["header"]


@needs_contracts
def test_the_secret_is_not_base64_decoded():
    vec = next(v for v in _vectors() if v["id"] == "aldaviva_incident_triggered")
    import base64

    decoded = base64.b64decode(vec["secret"])
    assert verify_signature(_vector_body(vec), vec["header"], [decoded]) is False


# --- signatures beyond the vectors ---------------------------------------------------------------------
BODY = b'{"event":{"id":"01TEST","event_type":"pagey.ping","resource_type":"pagey",' \
       b'"occurred_at":"2025-04-07T03:00:55.532Z","agent":null,"client":null,' \
       b'"data":{"message":"Hello from your friend Pagey!","type":"ping"}}}'
SIG = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
WRONG = hmac.new(OTHER_SECRET.encode(), BODY, hashlib.sha256).hexdigest()


def test_sign_body_is_hmac_sha256_hex():
    assert sign_body(BODY, SECRET) == f"v1={SIG}"
    assert sign_body(BODY, [SECRET, OTHER_SECRET]) == f"v1={SIG},v1={WRONG}"
    with pytest.raises(ValueError):
        sign_body(BODY, "")
    with pytest.raises(ValueError):
        sign_body(BODY, [])


def test_pagerduty_rotation_two_signatures_one_secret():
    header = sign_body(BODY, [OTHER_SECRET, SECRET])  # PagerDuty signs with old and new
    assert verify_signature(BODY, header, [SECRET])
    assert verify_signature(BODY, header, [OTHER_SECRET])
    assert not verify_signature(BODY, header, ["n" * 64])


def test_our_rotation_several_secrets():
    assert verify_signature(BODY, sign_body(BODY, SECRET), [OTHER_SECRET, SECRET])  # new secret, second
    assert verify_signature(BODY, sign_body(BODY, SECRET), [SECRET, OTHER_SECRET])  # old secret, first
    assert verify_signature(BODY, sign_body(BODY, SECRET), [b"x" * 40, SECRET.encode()])
    assert not verify_signature(BODY, sign_body(BODY, SECRET), [OTHER_SECRET, "y" * 64])


def test_empty_secret_is_never_used():
    empty_key_sig = "v1=" + hmac.new(b"", BODY, hashlib.sha256).hexdigest()  # anyone can compute this
    assert not verify_signature(BODY, empty_key_sig, [""])
    assert not verify_signature(BODY, empty_key_sig, ["", b"", OTHER_SECRET])


def test_empty_body_is_never_valid():
    sig = "v1=" + hmac.new(SECRET.encode(), b"", hashlib.sha256).hexdigest()
    assert not verify_signature(b"", sig, [SECRET])


@pytest.mark.parametrize("header, valid", [
    (None, False),
    ("", False),
    ("   ", False),
    (",,,", False),
    ("v1=", False),
    ("v1", False),
    (SIG, False),  # no version prefix
    (f"v1={SIG[:-1]}", False),  # 63 hex digits
    (f"v1={SIG}0", False),  # 65
    (f"v1={SIG[:-1]}g", False),  # not hex
    (f"V1={SIG}", False),  # the version is case-sensitive
    (f"v2={SIG}", False),  # unknown versions are never validated
    (f"v1 ={SIG}", False),
    (f"v1=={SIG}", False),
    (f"v1={SIG};", False),
    (f"v1=ü{SIG[1:]}", False),  # non-ASCII: refused, not an exception
    (f"v1=\x00{SIG[1:]}", False),
    (f"v1={WRONG}", False),
    (f"v1={SIG}", True),
    (f"  v1={SIG}\t", True),
    (f"v1={SIG.upper()}", True),
    (f"v0=abc,v1={SIG}", True),
    (f"v1={WRONG},v1={SIG}", True),
    (f"v1={SIG},v1={SIG}", True),
    (f"v1={SIG},garbage,,v9=zz", True),
    (f",v1={SIG},", True),
    ("v1=" + ",v1=".join([WRONG] * (MAX_SIGNATURES - 1) + [SIG]), True),
    ("v1=" + ",v1=".join([WRONG] * MAX_SIGNATURES + [SIG]), False),  # only the first MAX_SIGNATURES count
])
def test_header_parsing(header: str | None, valid: bool):
    assert verify_signature(BODY, header, [SECRET]) is valid


def test_signature_candidates_keep_only_well_formed_v1():
    assert signature_candidates(f"v2={SIG},v1={SIG.upper()}, v1=xyz ,v1={WRONG}") == [SIG, WRONG]
    assert signature_candidates(None) == [] and signature_candidates("") == []


def test_every_single_bit_flip_of_the_body_is_refused():
    header = sign_body(BODY, SECRET)
    assert verify_signature(BODY, header, [SECRET])
    for i in range(len(BODY)):
        for bit in (0x01, 0x20, 0x80):
            tampered = BODY[:i] + bytes([BODY[i] ^ bit]) + BODY[i + 1:]
            assert not verify_signature(tampered, header, [SECRET]), (i, bit)
    for variant in (BODY + b"\n", b" " + BODY, BODY[:-1], json.dumps(json.loads(BODY)).encode(),
                    json.dumps(json.loads(BODY), separators=(",", ":")).encode() + b" "):
        assert not verify_signature(variant, header, [SECRET])


def test_compare_digest_is_what_compares():
    """The comparison goes through hmac.compare_digest (constant time), never ==."""
    import inspect

    from pagerstream.pagerduty import webhooks

    src = inspect.getsource(webhooks.verify_signature)
    assert "hmac.compare_digest(" in src and "==" not in src


# --- the envelope and the Avro record -------------------------------------------------------------------
CODEC = AvroCodec("pagerduty_webhook")
NOT_PAYLOADS = {"create_webhook_subscription.request.json"}  # a REST request body, not a delivery


def _example_files() -> list[Path]:
    if not WEBHOOKS_V3.is_dir():
        return []
    return sorted(WEBHOOKS_V3.glob("examples/**/*.json")) + sorted(WEBHOOKS_V3.glob("signature-vectors/bodies/*.json"))


def _event_type_for(data_type: str) -> str:
    table = json.loads((WEBHOOKS_V3 / "event-types.json").read_text())["event_types"]
    return next(e["event_type"] for e in table if e["data_type"] == data_type)


def _as_delivery(path: Path) -> bytes:
    """The bytes PagerDuty would POST: envelopes as they are; bare data_type_* examples wrapped in one."""
    raw = path.read_bytes()
    obj = json.loads(raw)
    if "event" in obj:
        return raw
    resource = "service" if obj["type"].startswith("service") else "incident"
    env = {"event": {"id": f"01EXAMPLE{path.stem.upper()}", "event_type": _event_type_for(obj["type"]),
                     "resource_type": resource, "occurred_at": "2024-02-29T23:59:59.999Z",
                     "agent": {"id": "PAGENT1", "type": "user_reference"}, "client": None, "data": obj}}
    return json.dumps(env, ensure_ascii=False).encode()


def _ms(iso: str) -> int:
    return round(datetime.fromisoformat(iso).timestamp() * 1000)


def _convert(raw: bytes, **kw: Any) -> dict[str, Any]:
    args = {"subscription": "ops", "webhook_id": "wh-1", "pd_subscription_id": "PXSUIZH",
            "received_at_ms": 1_700_000_000_000, **kw}
    return to_record(parse_envelope(raw), raw_body=raw, **args)


@needs_contracts
def test_embedded_envelope_schema_is_the_contract():
    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("description", "title", "$id", "$schema")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    contract = json.loads((WEBHOOKS_V3 / "webhook-v3-envelope.schema.json").read_text())
    assert strip(contract) == ENVELOPE_SCHEMA


@needs_contracts
def test_known_event_types_are_the_documented_ones_plus_ping():
    table = json.loads((WEBHOOKS_V3 / "event-types.json").read_text())["event_types"]
    assert KNOWN_EVENT_TYPES == {e["event_type"] for e in table} | {"pagey.ping"}


@needs_contracts
def test_there_are_examples():
    files = _example_files()
    assert len(files) >= 40
    assert NOT_PAYLOADS <= {f.name for f in files}


@needs_contracts
@pytest.mark.parametrize("path", [p for p in _example_files() if p.name not in NOT_PAYLOADS],
                         ids=lambda p: p.relative_to(WEBHOOKS_V3).as_posix())
def test_example_converts_and_round_trips(path: Path):
    raw = _as_delivery(path)
    obj = json.loads(raw)
    ev, data = obj["event"], obj["event"]["data"]
    rec = _convert(raw)

    assert fastavro.validation.validate(rec, CODEC.schema)
    encoded = CODEC.encode(rec)
    assert CODEC.decode(encoded) == rec
    assert encoded[:2] == b"\xc3\x01"

    assert rec["event_id"] == ev["id"]
    assert rec["event_type"] == ev["event_type"]
    assert rec["resource_type"] == ev["resource_type"]
    assert rec["data_type"] == data["type"]
    assert rec["occurred_at"] == _ms(ev["occurred_at"])
    assert rec["received_at"] == 1_700_000_000_000
    assert (rec["subscription"], rec["webhook_id"], rec["pd_subscription_id"]) == ("ops", "wh-1", "PXSUIZH")
    assert rec["known_event_type"] is (ev["event_type"] in KNOWN_EVENT_TYPES)
    assert rec["agent_id"] == (ev["agent"] or {}).get("id")
    assert rec["agent_type"] == (ev["agent"] or {}).get("type")
    assert rec["client_name"] == (ev.get("client") or {}).get("name")
    # nothing lost: the exact bytes are kept
    assert rec["payload_json"].encode() == raw
    assert json.loads(rec["payload_json"]) == obj

    if data["type"] == "incident":
        assert rec["incident_id"] == data["id"] == rec["resource_id"]
        assert rec["incident_number"] == data["number"]
        assert rec["incident_key"] == data.get("incident_key")
        assert rec["incident_status"] == data["status"]
        assert rec["title"] == data["title"]
        assert rec["urgency"] == data["urgency"]
        assert rec["service_id"] == data["service"]["id"]
        assert rec["escalation_policy_id"] == data["escalation_policy"]["id"]
        assert rec["assignee_ids"] == [a["id"] for a in data["assignees"]]
        assert rec["team_ids"] == [t["id"] for t in data["teams"]]
        assert rec["priority_id"] == (data["priority"] or {}).get("id")
        assert rec["priority_name"] == (data["priority"] or {}).get("summary")
        assert record_key(rec) == data["id"].encode()
    else:
        assert rec["incident_number"] is None and rec["incident_key"] is None and rec["assignee_ids"] == []
        if "incident" in data:  # notes, responders, workflows...: keyed by the incident they belong to
            assert rec["incident_id"] == data["incident"]["id"] == rec["resource_id"]
            assert record_key(rec) == data["incident"]["id"].encode()
        elif data["type"] == "service":
            assert rec["incident_id"] is None
            assert rec["service_id"] == data["id"] == rec["resource_id"]
            assert record_key(rec) == data["id"].encode()
        elif data["type"] == "ping":
            assert rec["resource_id"] is None and rec["incident_id"] is None
            assert record_key(rec) == ev["id"].encode()


@needs_contracts
def test_spot_checks_on_named_examples():
    ex = WEBHOOKS_V3 / "examples"
    t = _convert((ex / "zulip" / "triggered_v3.json").read_bytes())
    assert (t["incident_id"], t["incident_number"], t["incident_status"], t["service_id"]) == \
        ("PFQZPSY", 9, "triggered", "PA2P440")
    assert (t["escalation_policy_id"], t["assignee_ids"], t["team_ids"], t["urgency"]) == \
        ("PY82TC6", ["PJ0LVEB"], [], "high")
    assert (t["priority_id"], t["incident_key"], t["agent_id"], t["agent_type"], t["client_name"]) == \
        (None, None, "PJ0LVEB", "user_reference", None)
    assert t["occurred_at"] == 1_622_813_729_781  # 2021-06-04T13:35:29.781Z

    p = _convert((ex / "official-docs" / "event_incident_priority_updated.json").read_bytes())
    assert (p["incident_key"], p["priority_id"], p["priority_name"], p["team_ids"], p["client_name"]) == \
        ("d3640fbd41094207a1c11e58e46b1662", "PSO75BM", "P1", ["PFCVPS0"], "PagerDuty")

    n = _convert((ex / "zulip" / "annotated_v3.json").read_bytes())
    assert (n["data_type"], n["incident_id"], n["resource_id"], n["title"]) == \
        ("incident_note", "Q3B15VLMF3ASBD", "Q3B15VLMF3ASBD", None)

    s = _convert((ex / "zulip" / "service_deleted_v3.json").read_bytes())  # no "client" at all
    assert (s["service_id"], s["incident_id"], s["client_name"], record_key(s)) == \
        ("PSERVICE1", None, None, b"PSERVICE1")

    w = _convert((ex / "zulip" / "workflow_completed_v3.json").read_bytes())  # agent null: automation
    assert (w["agent_id"], w["event_id"], w["service_id"]) == \
        (None, "32743191412443541367815146404898342710", "P844A2S")

    u = _convert((ex / "zulip" / "unsupported_v3.json").read_bytes())
    assert (u["event_type"], u["known_event_type"]) == ("incident.unsupported", False)

    ping = _convert((WEBHOOKS_V3 / "signature-vectors" / "bodies" / "aldaviva_pagey_ping.body.json").read_bytes())
    assert (ping["event_type"], ping["known_event_type"], ping["resource_type"], record_key(ping)) == \
        ("pagey.ping", True, "pagey", b"01FKZOXA868SHYEE4DVNWB5P9W")


@needs_contracts
def test_the_subscription_request_example_is_not_a_delivery():
    with pytest.raises(EnvelopeError, match="'event' is a required property"):
        parse_envelope((WEBHOOKS_V3 / "examples/official-docs/create_webhook_subscription.request.json").read_bytes())


GOOD = {"event": {"id": "01X", "event_type": "incident.triggered", "resource_type": "incident",
                  "occurred_at": "2024-01-02T03:04:05.678Z", "agent": None, "client": None,
                  "data": {"type": "incident", "id": "PINC1"}}}


def _with(path: str, value: Any) -> bytes:
    obj = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = obj
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return json.dumps(obj).encode()


_DELETE = object()


@pytest.mark.parametrize("body, why", [
    (b"not json", "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"event": NaN}', "not valid JSON"),
    (b"[]", "(body): [] is not of type 'object'"),
    (b"{}", "'event' is a required property"),
    (b'{"event": []}', "event: [] is not of type 'object'"),
    (_with("event.id", _DELETE), "'id' is a required property"),
    (_with("event.event_type", _DELETE), "'event_type' is a required property"),
    (_with("event.resource_type", _DELETE), "'resource_type' is a required property"),
    (_with("event.occurred_at", _DELETE), "'occurred_at' is a required property"),
    (_with("event.agent", _DELETE), "'agent' is a required property"),
    (_with("event.data", _DELETE), "'data' is a required property"),
    (_with("event.id", 17), "event/id: 17 is not of type 'string'"),
    (_with("event.event_type", "Incident.Triggered"), "event/event_type"),
    (_with("event.event_type", "incident"), "event/event_type"),
    (_with("event.agent", {"id": "PX"}), "event/agent"),
    (_with("event.agent", "PX"), "event/agent"),
    (_with("event.client", "PagerDuty"), "event/client"),
    (_with("event.data", {"id": "P1"}), "'type' is a required property"),
    (_with("event.data.type", None), "event/data/type"),
    (_with("event.occurred_at", "yesterday"), "is not an ISO 8601 date-time"),
    (_with("event.occurred_at", "2024-01-02"), "is not an ISO 8601 date-time"),
    (_with("event.occurred_at", "2024-13-02T03:04:05Z"), "is not an ISO 8601 date-time"),
])
def test_bad_envelopes_are_refused_with_a_reason(body: bytes, why: str):
    with pytest.raises(EnvelopeError) as e:
        parse_envelope(body)
    assert any(why in err for err in e.value.errors), e.value.errors
    assert e.value.not_json is (why in ("not valid JSON", "not UTF-8"))


def test_permissive_where_the_contract_is():
    assert parse_envelope(_with("event.client", _DELETE))  # client is optional
    assert parse_envelope(_with("event.client", {"name": "PagerDuty"}))
    assert parse_envelope(_with("event.extra", {"anything": [1, 2]}))  # unknown properties pass
    assert parse_envelope(_with("event.event_type", "incident.brand_new.thing"))  # unknown types pass
    assert parse_envelope(_with("event.occurred_at", "2024-01-02T03:04:05+02:00"))
    rec = _convert(_with("event.occurred_at", "2024-01-02T03:04:05"))  # no offset: UTC
    assert rec["occurred_at"] == _ms("2024-01-02T03:04:05Z")


def test_fields_of_unexpected_types_become_null_not_errors():
    data = {"type": "incident", "id": 5, "number": "nine", "status": ["x"], "service": "PSVC",
            "assignees": [{"id": "PA"}, "PB", {"id": 3}, None], "teams": {"id": "PT"}, "priority": "P1",
            "escalation_policy": [], "incident_key": 12, "urgency": None, "title": {"t": 1}}
    rec = _convert(_with("event.data", data))
    assert fastavro.validation.validate(rec, CODEC.schema)
    assert (rec["incident_id"], rec["incident_number"], rec["incident_status"], rec["service_id"]) == \
        (None, None, None, None)
    assert (rec["assignee_ids"], rec["team_ids"], rec["priority_id"], rec["escalation_policy_id"]) == \
        (["PA"], [], None, None)
    assert record_key(rec) == b"01X"  # neither incident nor resource id: the event id
    big = _convert(_with("event.data", {"type": "incident", "id": "P", "number": 2**70}))
    assert big["incident_number"] is None


def test_lone_surrogates_in_json_strings_still_encode():
    raw = _with("event.id", "\ud800abc")  # json.dumps escapes it as \\ud800
    assert b"\\ud800" in raw
    rec = _convert(raw)
    assert CODEC.decode(CODEC.encode(rec))["event_id"].endswith("abc")


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_any = st.recursive(json_leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                                       st.dictionaries(st.text(max_size=10), c, max_size=5)),
                        max_leaves=25)
data_keys = st.sampled_from(["id", "number", "status", "incident_key", "title", "service", "assignees", "teams",
                             "priority", "urgency", "escalation_policy", "incident", "summary"])


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data_type=st.sampled_from(["incident", "incident_note", "service", "ping", "brand_new"]),
       data=st.dictionaries(data_keys, json_any, max_size=8),
       agent=st.one_of(st.none(), st.fixed_dictionaries({"id": st.text(max_size=8), "type": st.text(max_size=8)})),
       client=st.one_of(st.none(), st.just(_DELETE), st.dictionaries(st.text(max_size=6), json_any, max_size=3)))
def test_property_any_valid_envelope_becomes_a_valid_record(data_type, data, agent, client):
    obj = copy.deepcopy(GOOD)
    obj["event"]["data"] = {**data, "type": data_type}
    obj["event"]["agent"] = agent
    if client is _DELETE:
        del obj["event"]["client"]
    else:
        obj["event"]["client"] = client
    raw = json.dumps(obj).encode()
    rec = _convert(raw)
    assert CODEC.decode(CODEC.encode(rec)) == rec
    assert record_key(rec)
    assert json.loads(rec["payload_json"]) == obj


# --- dedup against the real Redis ------------------------------------------------------------------------
def _client(url: str | None = None) -> aioredis.Redis:
    return aioredis.from_url(url or redis_url(), socket_timeout=2, socket_connect_timeout=2)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: connections are refused


@pytest.mark.usefixtures("stack")
async def test_dedup_first_then_duplicate_with_an_8_day_ttl():
    r = _client()
    ns = f"ut-{uuid.uuid4().hex[:8]}."
    d = WebhookDedup(r, namespace=ns)
    wid = str(uuid.uuid4())
    try:
        assert await d.claim("ops", wid) == FIRST
        assert await d.claim("ops", wid) == DUPLICATE
        assert await d.claim("ops", wid) == DUPLICATE
        assert await d.claim("billing", wid) == FIRST  # per subscription
        assert await d.claim("ops", wid + "x") == FIRST
        key = d.key("ops", wid)
        assert key.startswith(f"pagerstream:{ns}pd-webhook:ops:") and wid not in key
        assert await r.get(key) == b"1"
        ttl = await r.ttl(key)
        assert 7 * 86_400 < ttl <= DEDUP_TTL_S == 8 * 86_400
        # a claim given back (Kafka refused the event) lets PagerDuty's retry through, once
        assert await d.release("ops", wid) is True
        assert await d.claim("ops", wid) == FIRST
        assert await d.claim("ops", wid) == DUPLICATE
    finally:
        with contextlib.suppress(Exception):
            await r.delete(*[k async for k in r.scan_iter(match=f"pagerstream:{ns}*")])
        await r.aclose()


@pytest.mark.usefixtures("stack")
async def test_dedup_concurrent_claims_exactly_one_wins():
    r = _client()
    d = WebhookDedup(r, namespace=f"ut-{uuid.uuid4().hex[:8]}.")
    wid = str(uuid.uuid4())
    try:
        results = await asyncio.gather(*(d.claim("ops", wid) for _ in range(20)))
        assert results.count(FIRST) == 1 and results.count(DUPLICATE) == 19
    finally:
        await r.delete(d.key("ops", wid))
        await r.aclose()


async def test_dedup_with_redis_refusing_connections_is_unavailable_not_an_error():
    r = _client(f"redis://127.0.0.1:{_closed_port()}/0")
    d = WebhookDedup(r)
    try:
        assert await d.claim("ops", "wh-1") == UNAVAILABLE
        assert await d.claim("ops", "wh-1") == UNAVAILABLE  # and again: never "duplicate"
        assert await d.release("ops", "wh-1") is False
    finally:
        await r.aclose()


async def test_dedup_with_redis_not_answering_gives_up_after_its_timeout():
    """A server that accepts the connection and then says nothing (a hung Redis)."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read(-1)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r = aioredis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=30, socket_connect_timeout=30)
    try:
        d = WebhookDedup(r, timeout_s=0.3)
        assert await d.claim("ops", "wh-1") == UNAVAILABLE
        assert accepted, "the client did reach the silent server"
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
        with contextlib.suppress(Exception):
            await r.aclose()


async def test_dedup_without_a_client_yet_is_unavailable():
    d = WebhookDedup(lambda: None)
    assert await d.claim("ops", "wh-1") == UNAVAILABLE
    assert await d.release("ops", "wh-1") is False


# --- PAGERDUTY_WEBHOOK_SECRETS --------------------------------------------------------------------------
def test_webhook_secrets_setting_parses():
    s = load_settings({"PAGERDUTY_WEBHOOK_SECRETS": f" ops = {SECRET} | {OTHER_SECRET} ,billing-eu={SECRET}=,"})
    assert s.webhook_secrets("ops") == (Secret(SECRET), Secret(OTHER_SECRET))
    assert s.webhook_secrets("billing-eu") == (Secret(SECRET + "="),)  # base64 padding stays in the secret
    assert s.webhook_secrets("nope") is None
    assert [n for n, _ in s.pagerduty_webhook_secrets] == ["billing-eu", "ops"]
    assert SECRET not in repr(s) and OTHER_SECRET not in repr(s)
    assert load_settings({}).pagerduty_webhook_secrets == ()
    assert load_settings({"PAGERDUTY_WEBHOOK_SECRETS": ""}).webhook_secrets("ops") is None


@pytest.mark.parametrize("value, detail", [
    (SECRET, "entry 1 has no valid 'name='"),  # forgot the name: the whole value is a secret
    (f"ops={SECRET},{OTHER_SECRET}", "entry 2 has no valid 'name='"),
    (f"bad name={SECRET}", "entry 1 has no valid 'name='"),
    (f"ops={SECRET},ops={OTHER_SECRET}", "entry 2 repeats a name"),
    (f"ops={SECRET[:31]}", "entry 1: a secret is too short"),
    (f"ops={SECRET}|", "entry 1: a secret is too short"),
    (f"ops={SECRET[:20]} {SECRET[20:]}", "has spaces"),
    (",,", "no subscription given"),
])
def test_webhook_secrets_setting_problems_never_show_a_secret(value: str, detail: str):
    with pytest.raises(ConfigError) as e:
        load_settings({"PAGERDUTY_WEBHOOK_SECRETS": value})
    (var, why), = e.value.problems
    assert var == "PAGERDUTY_WEBHOOK_SECRETS"
    assert why.startswith("expected name=secret") and detail in why
    for fragment in (SECRET[:16], SECRET[20:36], OTHER_SECRET[:16]):
        assert fragment not in str(e.value) and fragment not in repr(e.value.problems)
