"""Avro schemas and the single-object codec.

- every .avsc parses with fastavro and with the reference `avro` package, and both compute the same
  CRC-64-AVRO fingerprint (also checked against an independent implementation of the spec's algorithm);
- round trips through `AvroCodec`, with the 10-byte single-object header checked byte by byte;
- decode errors are always `DecodeError` (property-tested with random bytes);
- compatibility: the current schemas are fully compatible with every published version in
  schemas/history/, and the checker does catch incompatible evolutions.
"""

from __future__ import annotations

import copy
import io
import json
import re
import struct
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form
from hypothesis import given, settings
from hypothesis import strategies as st
from pagerstream.schemas import codec
from pagerstream.schemas.codec import (
    HEADER_LEN,
    MARKER,
    SCHEMA_NAMES,
    AvroCodec,
    DecodeError,
    SchemaRegistry,
    UnknownSchema,
    decode_any,
    fingerprint_of,
    little_endian_u64,
)

SCHEMA_DIR = Path(codec.__file__).resolve().parent
HISTORY_DIR = SCHEMA_DIR / "history"
LOGICAL = sorted(SCHEMA_NAMES)
AVSC_FILES = sorted(SCHEMA_DIR.glob("*.avsc"))
HISTORY_FILES = sorted(HISTORY_DIR.glob("*.avsc"))
HISTORY_NAME = re.compile(r"^(?P<stem>[a-z_]+)\.v(?P<version>[1-9][0-9]*)\.avsc$")


def _json(stem: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{stem}.avsc").read_text())


# --- realistic records, one per schema ---------------------------------------------------------------
T0 = 1_732_694_400_123  # 2024-11-27T08:00:00.123Z in ms

RECORDS: dict[str, dict[str, Any]] = {
    "raw_alert": {
        "id": "6f1c2a9e0b7d4c3fa1e2d3c4b5a69788",
        "source": "alertmanager",
        "received_at": T0,
        "content_type": "application/json",
        "body": b'{"version":"4","status":"firing","alerts":[{"labels":{"alertname":"HighLatency"}}]}',
        "attributes": {"remote_addr": "10.1.2.3", "user_agent": "Alertmanager/0.27.0"},
    },
    "alert": {
        "id": "6f1c2a9e0b7d4c3fa1e2d3c4b5a69788:0",
        "raw_id": "6f1c2a9e0b7d4c3fa1e2d3c4b5a69788",
        "source": "alertmanager",
        "action": "trigger",
        "routing_key": "R0123456789ABCDEF0123456789ABCDE",
        "dedup_key": "am:HighLatency:checkout",
        "summary": "p99 latency > 2 s on checkout (Zürich) — 3 pods",
        "severity": "critical",
        "origin": "checkout-7d9f8b-abcde",
        "component": "api",
        "group": "payments",
        "class_": None,
        "event_time": T0 - 5_000,
        "received_at": T0,
        "labels": {"alertname": "HighLatency", "namespace": "shop", "severity": "critical"},
        "custom_details_json": '{"value":"2.37","threshold":"2"}',
        "links": [{"href": "https://grafana.example.com/d/abc", "text": "Dashboard"},
                  {"href": "https://prometheus.example.com/graph", "text": None}],
        "images": [{"src": "https://grafana.example.com/render/abc.png", "href": None, "alt": "latency"}],
        "client": "Alertmanager",
        "client_url": "https://am.example.com",
        "service": "checkout",
        "team": "payments",
        "tier": "1",
        "runbook_url": "https://runbooks.example.com/checkout/latency",
        "group_key": "checkout:HighLatency",
        "redacted": ["labels.token"],
        "raw_partition": 5,
        "raw_offset": 98_765,
    },
    "incident_event": {
        "event_id": "inc-3b9f#2",
        "incident_id": "inc-3b9f",
        "version": 2,
        "change": "alert_added",
        "reason": "second alert with the same group key within the grouping window",
        "state": "triggered",
        "alert_id": "6f1c2a9e0b7d4c3fa1e2d3c4b5a69788:1",
        "dedup_key": "am:HighLatency:checkout-2",
        "pd_dedup_key": "ps-inc-3b9f",
        "routing_key_hint": "BCDE",
        "service": "checkout",
        "team": "payments",
        "tier": "1",
        "runbook_url": None,
        "summary": "p99 latency > 2 s on checkout",
        "severity": "critical",
        "open_alerts": 2,
        "total_alerts": 2,
        "duplicates": 0,
        "opened_at": T0 - 60_000,
        "acknowledged_at": None,
        "resolved_at": None,
        "at": T0,
        "pagerduty_action": None,
        "change_detail": "paused",
        "alert_type": "checkout/HighLatency",
        "pause": {"paused_until": T0 + 300_000, "p_resolve": 0.86,
                  "evidence": "resolved by itself 12 of 14 times within 5 min", "model_version": "transient-1"},
        "scores": [{"model": "classify.category", "label": None, "best": "application", "score": 0.41,
                    "abstained": True, "explanation": "latency, checkout", "model_version": "classify-1"}],
        "similar": [{"incident_id": "0a1b-3", "summary": "checkout latency after deploy", "service": "checkout",
                     "resolved_at": T0 - 86_400_000, "score": 0.77, "why": "latency, checkout"}],
        "recurrence": "daily at 02:00 UTC",
        "route": {"rule": "sec-p1", "routing_key_name": "security", "routing_key_hint": "K3Y9",
                  "escalation_policy_id": "PSEC01", "responder_id": "PANN01",
                  "reason": ["tier 1 + category security -> rule 'sec-p1'"]},
        "group_key": "4f2a9c1b0e7d:svc:checkout",
    },
    "pagerduty_event": {
        "event_id": "inc-3b9f#1",
        "incident_id": "inc-3b9f",
        "stream_key": "a1b2c3d4e5f6a1b2c3d4e5f6:ps-inc-3b9f",
        "seq": 1,
        "endpoint": "enqueue",
        "action": "trigger",
        "routing_key": "R0123456789ABCDEF0123456789ABCDE",
        "dedup_key": "ps-inc-3b9f",
        "body_json": json.dumps({"routing_key": "R0123456789ABCDEF0123456789ABCDE", "event_action": "trigger",
                                 "dedup_key": "ps-inc-3b9f",
                                 "payload": {"summary": "p99 latency > 2 s", "source": "checkout",
                                             "severity": "critical"}}),
        "created_at": T0,
        "attempt": 3,
        "not_before": T0 + 4_000,
        "last_error": "PagerDuty server error (502): bad gateway",
    },
    "dead_letter": {
        "stage": "decode",
        "reason": "not an Avro single-object record (marker 7b22)",
        "error_type": "DecodeError",
        "topic": "alerts.raw",
        "partition": 3,
        "offset": 123_456_789_012,
        "key": b"checkout",
        "original": b'{"not": "avro"}\x00\xff',
        "at": T0,
        "attributes": {"worker": "ps-1"},
    },
    "service_entry": {
        "name": "checkout",
        "spec_json": '{"name":"checkout","team":"payments","tier":"1"}',
        "catalog_version": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "published_at": T0,
    },
    "tick": {"partition": 7, "now": T0},
    "model_feedback": {
        "feedback_id": "human:inc-3b9f:1",
        "kind": "human",
        "incident_id": "inc-3b9f",
        "features_json": None,
        "category": "application",
        "severity": "warning",
        "by": "oncall@example.com",
        "at": T0,
    },
    "predicted_incident": {
        "event_id": "checkout#1700000040000",
        "service": "checkout",
        "team": "payments",
        "tier": "1",
        "bucket_start": T0,
        "bucket_ms": 60_000,
        "count": 60,
        "score": 0.66,
        "threshold": 0.1,
        "reason_json": '{"component": "value", "expected": [2.0, 3.0]}',
        "model_version": "rate-anomaly/1",
        "at": T0,
        "source": "alert_rate",
        "value": None,
        "pagerduty_action": "trigger",
    },
    "pagerduty_webhook": {
        "event_id": "01BZYIL05THJDFF2Y08X9SVMTU",
        "webhook_id": "1b5e8a7c-0f52-4d3f-9a77-2c54f1d0e9ab",
        "subscription": "ops",
        "pd_subscription_id": "PXSUIZH",
        "event_type": "incident.triggered",
        "known_event_type": True,
        "resource_type": "incident",
        "data_type": "incident",
        "occurred_at": T0 - 1_200,
        "received_at": T0,
        "resource_id": "PFQZPSY",
        "incident_id": "PFQZPSY",
        "incident_number": 9,
        "incident_key": "d3640fbd41094207a1c11e58e46b1662",
        "incident_status": "triggered",
        "title": "Checkout p99 latency — Zürich",
        "urgency": "high",
        "priority_id": "PSO75BM",
        "priority_name": "P1",
        "service_id": "PA2P440",
        "escalation_policy_id": "PY82TC6",
        "assignee_ids": ["PJ0LVEB", "PTUXL6G"],
        "team_ids": [],
        "agent_id": None,
        "agent_type": None,
        "client_name": "PagerDuty",
        "payload_json": '{"event":{"id":"01BZYIL05THJDFF2Y08X9SVMTU","event_type":"incident.triggered"}}',
    },
    "incident_lifecycle": {
        "lifecycle_id": "inc-3b9f",
        "dedup_key": "ps-inc-3b9f",
        "revision": 6,
        "service": "checkout",
        "team": "payments",
        "severity": "critical",
        "summary": "p99 latency > 2 s on checkout",
        "opened_at": T0 - 60_000,
        "state": "resolved",
        "resolution": "source_resolved",
        "pagerstream_resolved_at": T0 + 1_800_000,
        "paged": True,
        "paused": False,
        "alerts_in": 3,
        "pagerduty": {
            "incident_ids": ["PFQZPSY"], "incident_number": 9, "status": "resolved", "urgency": "high",
            "priority": "P1", "title": "Checkout p99 latency — Zürich", "triggered_at": T0 - 55_000,
            "acknowledged_at": T0 + 65_000, "acknowledged_by": "PJ0LVEB", "resolved_at": T0 + 1_745_000,
            "resolved_by": "PJ0LVEB", "resolved_by_type": "user_reference", "escalations": 1, "reassignments": 0,
            "human_actions": 2,
        },
        "tta_ms": 120_000,
        "ttr_ms": 1_800_000,
        "interruptions": {"business": 1, "off": 0, "sleep": 1, "items": [
            {"user_id": "PTUXL6G", "at": T0 - 55_000, "period": "business", "tz": "Europe/Zurich",
             "event_id": "01BZYIL05THJDFF2Y08X9SVMTU"},
            {"user_id": "PJ0LVEB", "at": T0 + 845_000, "period": "sleep", "tz": "Asia/Tokyo",
             "event_id": "01BZYIL05THJDFF2Y08X9SVMTV"}]},
        "auto_resolution": None,
        "events": [
            {"source": "pagerstream", "event_id": "inc-3b9f#1", "type": "opened", "at": T0 - 60_000, "by": None,
             "by_type": None, "assignees": [], "detail": None},
            {"source": "pagerduty", "event_id": "01BZYIL05THJDFF2Y08X9SVMTU", "type": "incident.triggered",
             "at": T0 - 55_000, "by": None, "by_type": None, "assignees": ["PTUXL6G"], "detail": None},
        ],
        "updated_at": T0 + 1_800_100,
    },
    "audit_record": {
        "seq": 41,
        "prev_hash": "9f2c" + "0" * 60,
        "hash": "3b7a" + "1" * 60,
        "at": T0,
        "entry_id": "decision:inc-3b9f#1:opened",
        "actor": "system:incident-stage",
        "action": "incident.opened",
        "object": "inc-3b9f",
        "details_json": '{"change":"opened","pagerduty_action":"trigger","reason":"new alert: Zürich"}',
    },
}


def test_every_schema_file_is_registered_and_has_a_record():
    assert sorted(p.stem for p in AVSC_FILES) == sorted(SCHEMA_NAMES.values())
    assert sorted(RECORDS) == LOGICAL


# --- parsing and fingerprints ------------------------------------------------------------------------
_EMPTY64 = 0xC15D213AA4D7A795  # CRC-64-AVRO, from the Avro specification ("Schema Fingerprints")
_FP_TABLE = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (_EMPTY64 & -(_fp & 1))
    _FP_TABLE.append(_fp)


def rabin64(data: bytes) -> int:
    """The spec's reference CRC-64-AVRO, written independently of both libraries."""
    fp = _EMPTY64
    for b in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ b) & 0xFF]
    return fp


def test_rabin64_reference_value():
    # Canonical form of the schema "int" is `"int"`; its fingerprint per the Java SchemaNormalization.
    assert struct.pack("<Q", rabin64(b'"int"')) == avro.schema.parse('"int"').fingerprint()
    assert rabin64(b"") == _EMPTY64


@pytest.mark.parametrize("path", AVSC_FILES + HISTORY_FILES, ids=lambda p: p.relative_to(SCHEMA_DIR).as_posix())
def test_schema_parses_with_both_libraries_and_fingerprints_agree(path: Path):
    text = path.read_text()
    parsed = parse_schema(json.loads(text))  # fastavro
    ref = avro.schema.parse(text)  # reference implementation
    assert ref.type == "record"
    fastavro_pcf = to_parsing_canonical_form(parsed)
    assert fastavro_pcf == ref.canonical_form
    fp_fastavro = bytes.fromhex(fingerprint(fastavro_pcf, "CRC-64-AVRO"))
    fp_avro = ref.fingerprint()  # CRC-64-AVRO by default, 8 bytes
    assert len(fp_avro) == 8
    assert fp_fastavro == fp_avro
    # and both are the little-endian encoding of the spec's 64-bit value
    assert fp_avro == struct.pack("<Q", rabin64(ref.canonical_form.encode()))
    assert codec._fingerprint(parsed) == fp_avro


def test_fingerprints_are_distinct():
    reg = SchemaRegistry.load()
    assert len(set(reg.fingerprints.values())) == len(SCHEMA_NAMES)


# --- round trips -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LOGICAL)
def test_round_trip_and_header(name: str):
    c = AvroCodec(name)
    rec = RECORDS[name]
    assert fastavro.validation.validate(rec, c.schema)
    data = c.encode(rec)
    assert data[:2] == b"\xc3\x01"
    ref_fp = avro.schema.parse((SCHEMA_DIR / f"{SCHEMA_NAMES[name]}.avsc").read_text()).fingerprint()
    assert data[2:10] == ref_fp
    assert little_endian_u64(data[2:10]) == rabin64(
        avro.schema.parse((SCHEMA_DIR / f"{SCHEMA_NAMES[name]}.avsc").read_text()).canonical_form.encode())
    assert fingerprint_of(data) == ref_fp.hex()
    # the body is plain Avro binary: fastavro can read it without the header
    assert fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), c.schema, None) == rec
    assert c.decode(data) == rec
    assert c.decode(bytearray(data)) == rec
    assert c.decode(memoryview(data)) == rec
    out = decode_any(data)
    assert out.pop("_schema") == c.schema["name"]
    assert out == rec


def test_decode_any_falls_back_to_json_and_text():
    assert decode_any(None) is None
    assert decode_any(b'{"a": 1}') == {"a": 1}
    assert decode_any(b"plain \xff text") == "plain \ufffd text"
    assert fingerprint_of(b'{"a": 1}') is None


# --- decode errors -----------------------------------------------------------------------------------
def _exact(exc_info, cls) -> None:
    assert type(exc_info.value) is cls, f"expected exactly {cls.__name__}, got {type(exc_info.value).__name__}"


@pytest.mark.parametrize("data", [b"", b"\xc3", b"\xc3\x01", b"\xc3\x01" + b"\x00" * 7], ids=len)
def test_decode_too_short(data: bytes):
    with pytest.raises(DecodeError, match="too short") as e:
        AvroCodec("tick").decode(data)
    _exact(e, DecodeError)


def test_decode_refuses_non_bytes():
    good = AvroCodec("tick").encode(RECORDS["tick"])
    with pytest.raises(DecodeError):
        AvroCodec("tick").decode(good.decode("latin-1"))  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", [b"\xc3\x00", b"\xc2\x01", b"\x01\xc3", b"{\""], ids=lambda b: b.hex())
def test_decode_wrong_marker(prefix: bytes):
    good = AvroCodec("tick").encode(RECORDS["tick"])
    with pytest.raises(DecodeError, match=f"marker {prefix.hex()}") as e:
        AvroCodec("tick").decode(prefix + good[2:])
    _exact(e, DecodeError)


def test_decode_confluent_wire_format_is_refused():
    c = AvroCodec("tick")
    body = c.encode(RECORDS["tick"])[HEADER_LEN:]
    confluent = b"\x00" + struct.pack(">I", 42) + body + b"\x00" * 5  # magic 0, schema id 42
    with pytest.raises(DecodeError, match="marker 002a|marker 0000") as e:
        c.decode(confluent)
    _exact(e, DecodeError)


def test_decode_unknown_fingerprint():
    c = AvroCodec("tick")
    good = c.encode(RECORDS["tick"])
    bogus = bytes(reversed(good[2:10]))
    assert bogus not in c.reg.by_fingerprint
    with pytest.raises(UnknownSchema, match=bogus.hex()):
        c.decode(MARKER + bogus + good[HEADER_LEN:])
    assert issubclass(UnknownSchema, DecodeError)


@pytest.mark.parametrize("name", LOGICAL)
def test_decode_truncated_body(name: str):
    c = AvroCodec(name)
    data = c.encode(RECORDS[name])
    assert len(data) > HEADER_LEN + 1
    for cut in range(HEADER_LEN, len(data)):  # every strict prefix that still has a full header
        with pytest.raises(DecodeError) as e:
            c.decode(data[:cut])
        _exact(e, DecodeError)


def test_decode_record_of_another_type_is_refused():
    tick = AvroCodec("tick").encode(RECORDS["tick"])
    with pytest.raises(DecodeError, match="alert") as e:
        AvroCodec("alert").decode(tick)  # known fingerprint, but a Tick can't be resolved to an Alert
    _exact(e, DecodeError)


def test_decode_any_corrupt_framed_record_does_not_raise():
    data = AvroCodec("tick").encode(RECORDS["tick"])[:-2]
    decode_any(data)


_KNOWN_FPS = sorted(SchemaRegistry.load().by_fingerprint)


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(LOGICAL), data=st.binary(max_size=64))
def test_property_random_bytes_raise_only_decode_error(name: str, data: bytes):
    try:
        out = AvroCodec(name).decode(data)
    except DecodeError:
        return
    assert isinstance(out, dict)


@settings(max_examples=600, deadline=None)
@given(name=st.sampled_from(LOGICAL), fp=st.sampled_from(_KNOWN_FPS), body=st.binary(max_size=96))
def test_property_random_body_behind_a_valid_header_raises_only_decode_error(name: str, fp: bytes, body: bytes):
    try:
        out = AvroCodec(name).decode(MARKER + fp + body)
    except DecodeError:
        return
    assert isinstance(out, dict)


# --- compatibility -----------------------------------------------------------------------------------
def _avro(schema: dict[str, Any]) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(schema))


def compatible(reader: dict[str, Any], writer: dict[str, Any]) -> tuple[bool, str]:
    res = ReaderWriterCompatibilityChecker().get_compatibility(_avro(reader), _avro(writer))
    ok = res.compatibility is SchemaCompatibilityType.compatible
    return ok, f"{sorted(map(str, res.messages))} at {sorted(res.locations)}"


def full_compatibility_problems(current: dict[str, Any], old: dict[str, Any], label: str) -> list[str]:
    problems = []
    ok, why = compatible(current, old)
    if not ok:
        problems.append(f"{label}: BACKWARD incompatible (current reader cannot read old data): {why}")
    ok, why = compatible(old, current)
    if not ok:
        problems.append(f"{label}: FORWARD incompatible (old reader cannot read current data): {why}")
    return problems


def history_problems(schema_dir: Path) -> list[str]:
    """Every way the history folder breaks the rule in schemas/history/README.md."""
    problems: list[str] = []
    seen: dict[str, list[int]] = {}
    for f in sorted((schema_dir / "history").glob("*.avsc")):
        m = HISTORY_NAME.match(f.name)
        if not m or not (schema_dir / f"{m['stem']}.avsc").is_file():
            problems.append(f"{f.name}: expected <stem of a current schema>.v<N>.avsc")
            continue
        seen.setdefault(m["stem"], []).append(int(m["version"]))
        old = json.loads(f.read_text())
        current = json.loads((schema_dir / f"{m['stem']}.avsc").read_text())
        problems += full_compatibility_problems(current, old, f.name)
    for f in sorted(schema_dir.glob("*.avsc")):
        versions = sorted(seen.get(f.stem, []))
        if versions != list(range(1, len(versions) + 1)):
            problems.append(f"{f.stem}: versions must be 1..N without gaps, found {versions}")
        current_fp = _avro(json.loads(f.read_text())).fingerprint()
        published = {_avro(json.loads((schema_dir / "history" / f"{f.stem}.v{v}.avsc").read_text())).fingerprint()
                     for v in versions}
        if current_fp not in published:
            problems.append(f"{f.stem}: the current schema is not published; copy it to "
                            f"history/{f.stem}.v{len(versions) + 1}.avsc")
    return problems


def test_history_is_fully_compatible_with_the_current_schemas():
    assert HISTORY_FILES, "schemas/history/ must hold the published versions"
    assert history_problems(SCHEMA_DIR) == []


def test_history_versions_are_known_to_the_registry():
    reg = SchemaRegistry.load()
    for f in HISTORY_FILES:
        assert _avro(json.loads(f.read_text())).fingerprint() in reg.by_fingerprint, f.name


def _tmp_schema_dir(tmp_path: Path) -> Path:
    (tmp_path / "history").mkdir()
    for f in AVSC_FILES + HISTORY_FILES:
        (tmp_path / f.relative_to(SCHEMA_DIR)).write_text(f.read_text())
    return tmp_path


def test_history_check_catches_an_incompatible_current_schema(tmp_path: Path):
    d = _tmp_schema_dir(tmp_path)
    tick = _json("tick")
    tick["fields"].append({"name": "unit", "type": "string"})  # no default: old data can't be read
    (d / "tick.avsc").write_text(json.dumps(tick))
    problems = [p for p in history_problems(d) if p.startswith("tick")]
    assert any(p.startswith("tick.v1.avsc: BACKWARD incompatible") and "unit" in p for p in problems), problems
    assert any(p.startswith("tick: the current schema is not published") for p in problems), problems
    # publishing the bad version doesn't make it acceptable: v1 is still checked
    (d / "history" / "tick.v2.avsc").write_text(json.dumps(tick))
    problems = [p for p in history_problems(d) if p.startswith("tick")]
    assert [p.split(":")[0] for p in problems] == ["tick.v1.avsc"], problems


def test_history_check_catches_bad_names_and_gaps(tmp_path: Path):
    d = _tmp_schema_dir(tmp_path)
    (d / "history" / "tick.v3.avsc").write_text((SCHEMA_DIR / "tick.avsc").read_text())
    (d / "history" / "tock.v1.avsc").write_text((SCHEMA_DIR / "tick.avsc").read_text())
    problems = history_problems(d)
    assert "tock.v1.avsc: expected <stem of a current schema>.v<N>.avsc" in problems
    assert "tick: versions must be 1..N without gaps, found [1, 3]" in problems


def _first_required(schema: dict[str, Any]) -> dict[str, Any]:
    return next(f for f in schema["fields"] if "default" not in f)


def _evolve(name: str, how: str) -> dict[str, Any]:
    s = copy.deepcopy(_json(SCHEMA_NAMES[name]))
    if how == "add_required":
        s["fields"].append({"name": "added_without_default", "type": "string"})
    elif how == "remove_required":
        victim = _first_required(s)["name"]
        s["fields"] = [f for f in s["fields"] if f["name"] != victim]
    elif how == "change_type":
        f = _first_required(s)
        f["type"] = "boolean"
    elif how == "add_optional":
        s["fields"] += [{"name": "note", "type": ["null", "string"], "default": None},
                        {"name": "priority", "type": "int", "default": 3}]
    elif how == "rename_record":
        s["name"] = s["name"] + "V2"
    else:  # pragma: no cover
        raise AssertionError(how)
    return s


# (evolution, backward compatible?, forward compatible?)
EVOLUTIONS = [
    ("add_required", False, True),  # new reader needs a value old data lacks
    ("remove_required", True, False),  # old reader needs a value new data lacks
    ("change_type", False, False),
    ("rename_record", False, False),
    ("add_optional", True, True),
]


@pytest.mark.parametrize("how, backward, forward", EVOLUTIONS, ids=[e[0] for e in EVOLUTIONS])
@pytest.mark.parametrize("name", LOGICAL)
def test_checker_verdict_on_evolutions(name: str, how: str, backward: bool, forward: bool):
    current = _json(SCHEMA_NAMES[name])
    new = _evolve(name, how)
    assert new != current
    b_ok, b_why = compatible(reader=new, writer=current)
    f_ok, f_why = compatible(reader=current, writer=new)
    assert (b_ok, f_ok) == (backward, forward), f"backward: {b_why}; forward: {f_why}"
    assert (full_compatibility_problems(new, current, "x") == []) == (backward and forward)
    if how == "add_required":
        assert "added_without_default" in b_why
    if how == "change_type":
        assert "type_mismatch" in str(
            ReaderWriterCompatibilityChecker().get_compatibility(_avro(new), _avro(current)).incompatibilities)


ENUM_SCHEMAS = [n for n in LOGICAL if any(isinstance(f["type"], dict) and f["type"].get("type") == "enum"
                                          for f in _json(SCHEMA_NAMES[n])["fields"])]


@pytest.mark.parametrize("name", ENUM_SCHEMAS)
def test_checker_catches_a_removed_enum_symbol(name: str):
    assert ENUM_SCHEMAS == ["alert", "incident_event", "model_feedback", "pagerduty_event"]
    current = _json(SCHEMA_NAMES[name])
    new = copy.deepcopy(current)
    enum = next(f["type"] for f in new["fields"] if isinstance(f["type"], dict) and f["type"].get("type") == "enum")
    removed = enum["symbols"].pop()
    ok, why = compatible(reader=new, writer=current)  # old data may carry the removed symbol
    assert not ok and removed in why
    assert compatible(reader=current, writer=new)[0]


def _registry_with(base: SchemaRegistry, name: str, schema: dict[str, Any], *, as_current: bool) -> SchemaRegistry:
    parsed = parse_schema(schema)
    fp = codec._fingerprint(parsed)
    reg = SchemaRegistry(current=dict(base.current), by_fingerprint=dict(base.by_fingerprint),
                         fingerprints=dict(base.fingerprints))
    reg.by_fingerprint[fp] = parsed
    if as_current:
        reg.current[name] = parsed
        reg.fingerprints[name] = fp
    return reg


@pytest.mark.parametrize("name", LOGICAL)
def test_compatible_evolution_resolves_through_the_codec(name: str):
    base = SchemaRegistry.load()
    evolved = _evolve(name, "add_optional")
    new_side = _registry_with(base, name, evolved, as_current=True)  # producers/consumers on the new version
    old_side = _registry_with(base, name, evolved, as_current=False)  # current version, knows the new fp
    new_codec, old_codec = AvroCodec(name, new_side), AvroCodec(name, old_side)
    assert new_codec.header != old_codec.header
    rec = RECORDS[name]

    # new writer -> current reader: the extra fields are skipped
    data = new_codec.encode({**rec, "note": "added in v2", "priority": 1})
    assert data[2:10] == _avro(evolved).fingerprint()
    assert old_codec.decode(data) == rec
    # ...and a current reader that was never told about the new version refuses it cleanly
    with pytest.raises(UnknownSchema):
        AvroCodec(name, base).decode(data)

    # current writer -> new reader: the defaults are filled in
    old_data = old_codec.encode(rec)
    assert old_data[2:10] == base.fingerprints[name]
    assert new_codec.decode(old_data) == {**rec, "note": None, "priority": 3}
    # and the new version round-trips on its own
    assert new_codec.decode(data) == {**rec, "note": "added in v2", "priority": 1}


def test_incompatible_evolution_fails_for_real_in_the_codec():
    """What the checker predicts for add_required is what happens on the wire."""
    base = SchemaRegistry.load()
    evolved = _evolve("tick", "add_required")
    new_codec = AvroCodec("tick", _registry_with(base, "tick", evolved, as_current=True))
    old_data = AvroCodec("tick", base).encode(RECORDS["tick"])
    with pytest.raises(DecodeError, match="added_without_default") as e:
        new_codec.decode(old_data)
    assert type(e.value) is DecodeError
