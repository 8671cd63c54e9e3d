"""normalize: golden contract payloads, invalid tables, and fuzzing (normalize or InvalidInput, nothing else)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pagerstream.processors.alert import Alert
from pagerstream.processors.errors import CatalogError, InvalidInput
from pagerstream.processors.normalize import GenericMapping, normalize, validate_change, validate_enqueue
from pagerstream.processors.normalize.body import parse_timestamp_ms
from pagerstream.schemas.codec import AvroCodec

CONTRACTS = Path(__file__).resolve().parents[2] / "../shared/contracts"
AM = CONTRACTS / "alertmanager"
PD = CONTRACTS / "pagerduty/events-v2/examples"
GRAFANA = CONTRACTS / "grafana"
RK = "0123456789abcdef0123456789abcdef"
DEFAULT_RK = "d" * 32
RECEIVED = 1_768_500_000_000
GENERATOR = (
    "http://prometheus.example.com:9090/graph?g0.expr=histogram_quantile%280.99%2C+rate%28"
    "http_request_duration_seconds_bucket%5B5m%5D%29%29+%3E+2&g0.tab=1"
)
AM_GROUP_DEDUP = "d4061866bc333de2350285b0452a21f78349e3d63b4f06b6c956f64f95d7be36"


def body_of(path: Path) -> bytes:
    doc = json.loads(path.read_text())
    if isinstance(doc, dict):
        doc.pop("_comment", None)
    return json.dumps(doc).encode()


def run(source: str, body: bytes, *, attributes: dict[str, str] | None = None, mappings=None):
    return normalize(
        source,
        body,
        raw_id="raw1",
        received_at_ms=RECEIVED,
        attributes=attributes or {},
        default_routing_key=DEFAULT_RK,
        mappings=mappings or {},
    )


def errors_of(source: str, body: bytes, **kw) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        run(source, body, **kw)
    return info.value.errors


# ---- timestamps -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2015-07-17T08:42:58.315+0000", 1437122578315),  # PagerDuty's own format
        ("2026-01-15T10:00:00.123456789Z", 1768471200123),  # Go RFC 3339 with nanoseconds
        ("2021-10-12T09:51:03.157076+02:00", 1634025063157),
        ("2020-01-01T00:00:00-05:30", 1577856600000),
        ("2020-01-01 00:00:00", 1577836800000),  # no offset: UTC
        ("1970-01-01T00:00:00Z", 0),
        ("0001-01-01T00:00:00Z", -62135596800000),
        ("2020-02-30T00:00:00Z", None),
        ("2020-01-01T00:00:00+25:00", None),
        ("yesterday", None),
        (1437122578, None),
    ],
)
def test_parse_timestamp(text, expected):
    assert parse_timestamp_ms(text) == expected


# ---- golden: Alertmanager webhook ----------------------------------------------------------


@pytest.mark.parametrize("name", ["webhook-v4.firing.example.json", "webhook-v4.firing.v0.28.example.json"])
def test_alertmanager_firing_both_shapes(name):
    [a] = run("alertmanager", body_of(AM / name))
    assert a.id == "raw1:0" and a.raw_id == "raw1" and a.source == "alertmanager"
    assert a.action == "trigger"
    assert a.dedup_key == "3ae4d1f7c2b8a901"
    assert a.summary == "p99 latency above 2s on api-1"
    assert a.severity == "critical"
    assert a.origin == "api-1:9090"
    assert a.routing_key == DEFAULT_RK
    assert a.event_time == 1768471200123  # startsAt
    assert a.received_at == RECEIVED
    assert a.labels == {
        "alertname": "HighLatency",
        "instance": "api-1:9090",
        "job": "api",
        "severity": "critical",
    }
    assert json.loads(a.custom_details_json) == {
        "runbook_url": "https://runbooks.example.com/high-latency",
        "summary": "p99 latency above 2s on api-1",
        "generatorURL": GENERATOR,
        "groupKey": '{}:{alertname="HighLatency"}',
    }
    assert [(x.href, x.text) for x in a.links] == [(GENERATOR, "Source")]
    assert a.client == "Alertmanager" and a.client_url == "http://alertmanager.example.com:9093"


def test_alertmanager_resolved_uses_ends_at():
    [a] = run("alertmanager", body_of(AM / "webhook-v4.resolved.example.json"))
    assert a.action == "resolve"
    assert a.dedup_key == "3ae4d1f7c2b8a901"
    assert a.event_time == 1768472400123  # endsAt 10:20:00.123


def test_alertmanager_routing_key_precedence():
    doc = json.loads(body_of(AM / "webhook-v4.firing.example.json"))
    doc["alerts"][0]["labels"]["pagerduty_routing_key"] = "l" * 32
    body = json.dumps(doc).encode()
    assert run("alertmanager", body, attributes={"routing_key": "q" * 32})[0].routing_key == "q" * 32
    assert run("alertmanager", body)[0].routing_key == "l" * 32


def test_alertmanager_without_fingerprint_or_annotations():
    doc = {
        "version": "4",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "DiskFull", "job": "node", "mount": "/data", "severity": "warn"},
            },
            {"status": "resolved", "labels": {"alertname": "DiskFull", "host": "db-1", "severity": "sev9"}},
        ],
    }
    a, b = run("alertmanager", json.dumps(doc).encode(), attributes={"default_severity": "warning"})
    assert a.summary == "[FIRING] DiskFull (node /data warn)"
    assert a.severity == "warning" and a.origin == "node"
    canonical = '[["alertname","DiskFull"],["job","node"],["mount","/data"],["severity","warn"]]'
    assert a.dedup_key == hashlib.sha256(canonical.encode()).hexdigest()  # no fingerprint: sorted labels
    assert b.summary == "[RESOLVED] DiskFull (db-1 sev9)"
    assert b.severity == "warning"  # unknown word -> attributes default_severity
    assert b.origin == "db-1" and b.action == "resolve"
    assert b.event_time == RECEIVED  # no timestamps at all
    assert (a.id, b.id) == ("raw1:0", "raw1:1")
    assert a.links == () and a.client_url is None


def test_alertmanager_label_digest_is_order_independent():
    one = {"version": "4", "alerts": [{"status": "firing", "labels": {"a": "1", "b": "2"}}]}
    two = {"version": "4", "alerts": [{"status": "firing", "labels": {"b": "2", "a": "1"}}]}
    k1 = run("alertmanager", json.dumps(one).encode())[0].dedup_key
    k2 = run("alertmanager", json.dumps(two).encode())[0].dedup_key
    assert k1 == k2 and len(k1) == 64
    three = {"version": "4", "alerts": [{"status": "firing", "labels": {"a": "1", "b": "3"}}]}
    assert run("alertmanager", json.dumps(three).encode())[0].dedup_key != k1


@pytest.mark.parametrize(
    "word, expected",
    [("critical", "critical"), ("PAGE", "critical"), ("error", "error"), ("high", "error"), ("major", "error"),
     ("warning", "warning"), ("warn", "warning"), ("medium", "warning"), ("minor", "warning"),
     ("info", "info"), ("low", "info"), ("none", "info"), ("p3", "error"), (None, "error")],
)  # fmt: skip
def test_alertmanager_severity_words(word, expected):
    labels = {"alertname": "X"} | ({"severity": word} if word else {})
    doc = {"version": "4", "alerts": [{"status": "firing", "labels": labels}]}
    assert run("alertmanager", json.dumps(doc).encode())[0].severity == expected


# ---- golden: Grafana -----------------------------------------------------------------------


def test_grafana_docs_example():
    a, b = run("grafana", body_of(GRAFANA / "webhook-payload.docs-example.json"))
    assert (a.id, b.id) == ("raw1:0", "raw1:1")
    assert a.source == "grafana" and a.action == "trigger"
    assert (a.dedup_key, b.dedup_key) == ("c6eadffa33fcdf37", "bc97ff14869b13e3")
    assert a.summary == "This alert was triggered for zone us-1"
    assert b.summary == "This alert was triggered for zone eu-1"
    assert a.severity == "error"  # no severity label: the default
    assert a.origin == "grafana"
    assert a.event_time == 1634025063157  # 2021-10-12T09:51:03.157076+02:00
    assert b.event_time == 1634025363157
    assert a.labels == {"alertname": "High memory usage", "team": "blue", "zone": "us-1"}
    details = json.loads(a.custom_details_json)
    assert details["values"] == {"B": 44.23943737541908, "C": 1}
    assert details["generatorURL"] == "https://play.grafana.org/alerting/1afz29v7z/edit"
    assert details["groupKey"] == "{}:{}"
    assert "dashboardURL" not in details  # empty in the example
    assert [x.text for x in a.links] == ["Source", "Silence"]
    assert a.links[1].href.startswith("https://play.grafana.org/alerting/silence/new?")
    assert a.client == "Grafana" and a.client_url == "https://play.grafana.org/"


def test_grafana_resolved_with_zero_ends_at_uses_starts_at_and_extra_fields():
    doc = json.loads(body_of(GRAFANA / "webhook-payload.docs-example.json"))
    alert = doc["alerts"][0] | {"status": "resolved", "dashboardURL": "https://g/d/1", "panelURL": "https://g/d/1?viewPanel=2",
                                "valueString": "[ var='B' value=44 ]", "imageURL": "https://img/1.png"}  # fmt: skip
    doc["alerts"] = [alert]
    [a] = run("grafana", json.dumps(doc).encode())
    assert a.action == "resolve"
    assert a.event_time == 1634025063157  # endsAt 0001-01-01 means unset
    assert [x.text for x in a.links] == ["Source", "Dashboard", "Panel", "Silence"]
    assert [x.src for x in a.images] == ["https://img/1.png"]
    assert json.loads(a.custom_details_json)["valueString"] == "[ var='B' value=44 ]"


def test_grafana_rejects_alertmanager_version():
    errors = errors_of("grafana", body_of(AM / "webhook-v4.firing.example.json"))
    assert errors == ['\'version\' must be "1" (got "4")']


# ---- golden: PagerDuty Events v2 ------------------------------------------------------------


def test_pd_spec_trigger_example():
    [a] = run("pagerduty_events_v2", body_of(PD / "spec.enqueue.trigger.request.json"))
    assert a.source == "pagerduty_events_v2" and a.action == "trigger"
    assert a.routing_key == "e93facc04764012d7bfb002500d5d1a6"
    assert a.dedup_key == "srv01/mysql"
    assert a.summary == "DISK at 99% on machine prod-datapipe03.example.com"
    assert a.severity == "critical" and a.origin == "prod-datapipe03.example.com"
    assert (a.component, a.group, a.class_) == ("mysql", "prod-datapipe", "disk")
    assert a.event_time == 1437122578315
    assert json.loads(a.custom_details_json) == {"free space": "1%", "ping time": "1500ms", "load avg": 0.75}
    assert [(x.href, x.text) for x in a.links] == [("http://pagerduty.example.com", "An example link.")]
    assert a.images[0].href == "https://google.com" and a.images[0].alt == "An example link with an image"
    assert a.client == "Sample Monitoring Service" and a.client_url == "https://monitoring.service.com"
    assert a.labels == {}


@pytest.mark.parametrize(
    "name, action, summary",
    [
        (
            "pagerduty-receiver.trigger.v0.31plus.example.json",
            "trigger",
            "[FIRING:1] HighLatency (api-1:9090 api critical)",
        ),
        (
            "pagerduty-receiver.trigger.v0.28.example.json",
            "trigger",
            "[FIRING:1] HighLatency (api-1:9090 api critical)",
        ),
        (
            "pagerduty-receiver.resolve.v0.31plus.example.json",
            "resolve",
            "[RESOLVED] HighLatency (api-1:9090 api critical)",
        ),
    ],
)
def test_pd_alertmanager_receiver_examples(name, action, summary):
    [a] = run("pagerduty_events_v2", body_of(AM / name))
    assert a.action == action and a.summary == summary
    assert a.routing_key == RK and a.dedup_key == AM_GROUP_DEDUP
    assert a.severity == "error" and a.origin == "Alertmanager"
    assert a.event_time == RECEIVED  # Alertmanager never sets payload.timestamp
    assert a.client_url == "http://alertmanager.example.com:9093/#/alerts?receiver=pagerduty-hub"


def test_pd_v028_custom_details_are_text():
    [a] = run("pagerduty_events_v2", body_of(AM / "pagerduty-receiver.trigger.v0.28.example.json"))
    details = json.loads(a.custom_details_json)
    assert details["num_firing"] == "1" and details["firing"].startswith(
        "Labels:\n - alertname = HighLatency"
    )


@pytest.mark.parametrize(
    "name, routing_key, summary, origin, links",
    [
        ("spec.change.build-change-event.request.json", "737ea619db564d41bd9824063e1f6b08",
         "Build Success: Increase snapshot create timeout to 30 seconds", "prod-build-agent-i-0b148d1040d565540", 1),
        ("spec.change.git-change-event.request.json", "737ea619db564d41bd9824063e1f8au1", "Merge Pull Request", "git", 1),
    ],
)  # fmt: skip
def test_pd_change_examples(name, routing_key, summary, origin, links):
    [a] = run("pagerduty_change_v2", body_of(PD / name), attributes={"dedup_key": "assigned-1"})
    assert a.action == "change" and a.severity == "info" and a.source == "pagerduty_change_v2"
    assert (a.routing_key, a.summary, a.origin) == (routing_key, summary, origin)
    assert a.dedup_key == "assigned-1"
    assert a.event_time == 1437122578315
    assert len(a.links) == links


def test_pd_change_dedup_key_falls_back_to_raw_id():
    [a] = run("pagerduty_change_v2", body_of(PD / "spec.change.git-change-event.request.json"))
    assert a.dedup_key == "raw1"


@pytest.mark.parametrize(
    "name",
    [
        "docs.enqueue.trigger.request.json",
        "docs.enqueue.acknowledge.request.json",
        "docs.enqueue.resolve.request.json",
    ],
)
def test_pd_docs_examples_fail_only_on_placeholder_routing_key(name):
    source = "pagerduty_events_v2"
    assert errors_of(source, body_of(PD / name)) == [
        "Length of 'routing_key' is incorrect (should be 32 characters)"
    ]
    doc = json.loads(body_of(PD / name)) | {"routing_key": RK}
    [a] = run(source, json.dumps(doc).encode())
    assert a.routing_key == RK


def test_pd_docs_change_example_fails_only_on_routing_key():
    errors = errors_of("pagerduty_change_v2", body_of(PD / "docs.change.request.json"))
    assert errors == ["Length of 'routing_key' is incorrect (should be 32 characters)"]


def test_pd_acknowledge_without_payload():
    body = json.dumps({"routing_key": RK, "event_action": "acknowledge", "dedup_key": "srv01/mysql"}).encode()
    [a] = run("pagerduty_events_v2", body)
    assert a.action == "acknowledge" and a.dedup_key == "srv01/mysql"
    assert (
        a.summary == "acknowledge: srv01/mysql" and a.origin == "pagerduty_events_v2" and a.severity == "info"
    )


def test_pd_keyless_trigger_takes_the_ingress_key():
    doc = json.loads(body_of(PD / "spec.enqueue.trigger.request.json"))
    del doc["dedup_key"]
    body = json.dumps(doc).encode()
    assert run("pagerduty_events_v2", body, attributes={"dedup_key": "ing-42"})[0].dedup_key == "ing-42"
    assert errors_of("pagerduty_events_v2", body) == ["'dedup_key' is missing and the ingress assigned none"]


@pytest.mark.parametrize(
    "source, path",
    [
        ("alertmanager", AM / "webhook-v4.firing.example.json"),
        ("grafana", GRAFANA / "webhook-payload.docs-example.json"),
        ("pagerduty_events_v2", PD / "spec.enqueue.trigger.request.json"),
        ("pagerduty_change_v2", PD / "spec.change.build-change-event.request.json"),
    ],
)
def test_golden_alerts_fit_the_avro_schema(source, path):
    codec = AvroCodec("alert")
    for a in run(source, body_of(path)):
        assert Alert.from_record(codec.decode(codec.encode(a.to_record()))) == a


# ---- invalid tables -------------------------------------------------------------------------

TRIGGER = {"routing_key": RK, "event_action": "trigger", "dedup_key": "k",
           "payload": {"summary": "s", "source": "h", "severity": "info"}}  # fmt: skip


def _with(**changes):
    doc = json.loads(json.dumps(TRIGGER))
    for path, value in changes.items():
        target, *rest = path.split("__")
        holder = doc if not rest else doc[target]
        key = rest[0] if rest else target
        if value is ...:
            holder.pop(key, None)
        else:
            holder[key] = value
    return doc


@pytest.mark.parametrize(
    "doc, expected",
    [
        ([], ["Event object must be a JSON object"]),
        (_with(routing_key=...), ["'routing_key' is missing or blank"]),
        (_with(routing_key="x" * 33), ["Length of 'routing_key' is incorrect (should be 32 characters)"]),
        (_with(routing_key=5), ["'routing_key' must be a string"]),
        (_with(event_action=...), ["'event_action' is missing or blank"]),
        (_with(event_action="snooze"), ["'event_action' is invalid (should be one of: trigger, acknowledge, resolve)"]),
        (_with(dedup_key="k" * 256), ["Length of 'dedup_key' is incorrect (should be at most 255 characters)"]),
        (_with(dedup_key=7), ["'dedup_key' must be a string"]),
        (_with(event_action="resolve", dedup_key=...), ["'dedup_key' is missing or blank"]),
        (_with(event_action="acknowledge", dedup_key=" "), ["'dedup_key' is missing or blank"]),
        (_with(payload=...), ["'payload' is missing or blank"]),
        (_with(payload="text"), ["'payload' must be an object"]),
        (_with(payload__summary=...), ["'payload.summary' is missing or blank"]),
        (_with(payload__summary="x" * 1025), ["Length of 'payload.summary' is incorrect (should be at most 1024 characters)"]),
        (_with(payload__source=""), ["'payload.source' is missing or blank"]),
        (_with(payload__severity=...), ["'payload.severity' is missing or blank"]),
        (_with(payload__severity="sev1"), ["'payload.severity' is invalid (should be one of: critical, error, warning, info)"]),
        (_with(payload__timestamp="last tuesday"), ["'payload.timestamp' is not a valid ISO 8601 timestamp"]),
        (_with(payload__custom_details="text"), ["'payload.custom_details' must be an object"]),
        (_with(payload__component=1), ["'payload.component' must be a string"]),
        (_with(images=[{"href": "https://x"}]), ["'images[0].src' is missing or blank"]),
        (_with(links=[{"text": "t"}, "x"]), ["'links[0].href' is missing or blank", "'links[1]' must be an object"]),
        (_with(links={}), ["'links' must be an array"]),
        (_with(client=1), ["'client' must be a string"]),
        ({"payload": {"summary": "", "severity": "bad"}},  # unknown action: the payload is still checked
         ["'routing_key' is missing or blank", "'event_action' is missing or blank",
          "'payload.summary' is missing or blank", "'payload.source' is missing or blank",
          "'payload.severity' is invalid (should be one of: critical, error, warning, info)"]),
        ({"routing_key": "short", "event_action": "trigger", "payload": {"severity": "bad"}},
         ["Length of 'routing_key' is incorrect (should be 32 characters)", "'payload.summary' is missing or blank",
          "'payload.source' is missing or blank",
          "'payload.severity' is invalid (should be one of: critical, error, warning, info)"]),
    ],
)  # fmt: skip
def test_validate_enqueue_table(doc, expected):
    assert validate_enqueue(doc) == expected
    with pytest.raises(InvalidInput) as info:
        run("pagerduty_events_v2", json.dumps(doc).encode())
    assert info.value.errors == expected


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"routing_key": RK}, ["'payload' is missing or blank"]),
        ({"routing_key": RK, "payload": {}}, ["'payload.summary' is missing or blank"]),
        ({"routing_key": RK, "payload": {"summary": "s", "source": 3}}, ["'payload.source' must be a string"]),
        ({"routing_key": "R" * 31, "payload": {"summary": "s", "timestamp": "soon"}},
         ["Length of 'routing_key' is incorrect (should be 32 characters)",
          "'payload.timestamp' is not a valid ISO 8601 timestamp"]),
        ({"routing_key": RK, "payload": {"summary": "s"}, "links": [{}]}, ["'links[0].href' is missing or blank"]),
    ],
)  # fmt: skip
def test_validate_change_table(doc, expected):
    assert validate_change(doc) == expected


def test_pd_body_size_is_checked_on_raw_bytes_and_reported_with_other_errors():
    doc = _with(payload__custom_details={"blob": "x" * 512_000}, routing_key="short")
    errors = errors_of("pagerduty_events_v2", json.dumps(doc).encode())
    assert errors[0].startswith("Event payload exceeds the maximum size of 512KB (")
    assert errors[1] == "Length of 'routing_key' is incorrect (should be 32 characters)"


@pytest.mark.parametrize(
    "source, body, expected",
    [
        ("alertmanager", b"{", None),
        ("alertmanager", b"[NaN]", ["JSON parse error: NaN is not valid JSON"]),
        ("alertmanager", b"\xff\xfe\xfa", None),
        ("alertmanager", b"[]", ["body must be a JSON object"]),
        ("alertmanager", b'{"alerts": []}', ["'version' is missing (expected \"4\")", "'alerts' is empty"]),
        ("alertmanager", b'{"version": 4, "alerts": {}}', ["'version' must be \"4\" (got 4)", "'alerts' must be an array"]),
        ("alertmanager", b'{"version": "4"}', ["'alerts' is missing or not an array"]),
        ("alertmanager", b'{"version": "4", "alerts": [{"status": "pending", "labels": {"a": 1}, "startsAt": "x"}, 3]}',
         ["'alerts[0].status' must be \"firing\" or \"resolved\"", "'alerts[0].labels.a' must be a string",
          "'alerts[0].startsAt' is not an RFC 3339 timestamp", "'alerts[1]' must be an object"]),
        ("alertmanager", b'{"version": "4", "alerts": [{"status": "firing"}]}', ["'alerts[0].labels' is missing or not an object"]),
        ("grafana", b'{"version": "1", "alerts": [{"status": "firing", "labels": {}, "values": [1], "panelURL": 3}]}',
         ["'alerts[0].values' must be an object", "'alerts[0].panelURL' must be a string"]),
        ("nagios", b"{}", [("unknown source 'nagios' (expected one of: pagerduty_events_v2, pagerduty_change_v2, "
                           "alertmanager, grafana, generic:<mapping>)")]),
        ("generic:nope", b"{}", ["no generic mapping named 'nope' (known: none)"]),
    ],
)  # fmt: skip
def test_invalid_bodies(source, body, expected):
    errors = errors_of(source, body)
    if expected is None:
        assert len(errors) == 1 and errors[0].startswith("JSON parse error")
    else:
        assert errors == expected


def test_unpaired_surrogates_become_replacement_characters():
    body = b'{"version": "4", "alerts": [{"status": "firing", "labels": {"alertname": "A\\ud800"}}]}'
    [a] = run("alertmanager", body)
    assert a.labels["alertname"] == "A\ufffd"
    a.summary.encode("utf-8")  # would raise on a lone surrogate


def test_deeply_nested_json_is_invalid_input_not_recursion_error():
    errors = errors_of("alertmanager", b"[" * 200_000)
    assert errors == ["JSON parse error: nested too deeply"]


# ---- generic JSON mappings --------------------------------------------------------------------

MAPPING = GenericMapping.from_dict(
    {
        "items": "body.checks",
        "dedup_key": "mon:{{ item.id }}",
        "summary": "{{ item.name }} is {{ item.state }}",
        "severity": "{{ item.level }}",
        "source": "{{ item.host }}",
        "component": "{{ item.component }}",
        "routing_key": "{{ body.rk }}",
        "resolve_when": "{{ item.state == 'up' }}",
        "acknowledge_when": "{{ item.acked }}",
        "timestamp": "{{ item.at }}",
        "labels": {"service": "{{ item.service }}", "empty": "{{ item.nothing }}"},
    },
    where="sources.mon",
)


def generic(body: object, mapping: GenericMapping = MAPPING, **kw):
    return run("generic:mon", json.dumps(body).encode(), mappings={"mon": mapping}, **kw)


def test_generic_items_one_alert_each():
    body = {"rk": "", "checks": [
        {"id": 1, "name": "login", "state": "down", "level": "Critical", "host": "web-1", "service": "checkout",
         "at": "2026-01-15T10:00:00Z", "component": "nginx"},
        {"id": 2, "name": "cart", "state": "up", "level": "info", "host": "web-2", "at": "1768471200.5"},
        {"id": 3, "name": "pay", "state": "degraded", "level": "warning", "host": "web-3", "acked": True},
    ]}  # fmt: skip
    a, b, c = generic(body)
    assert (a.id, b.id, c.id) == ("raw1:0", "raw1:1", "raw1:2")
    assert a.source == "generic:mon"
    assert (a.action, b.action, c.action) == ("trigger", "resolve", "acknowledge")
    assert a.dedup_key == "mon:1" and a.summary == "login is down" and a.severity == "critical"
    assert a.origin == "web-1" and a.component == "nginx" and b.component is None
    assert a.labels == {"service": "checkout"}
    assert a.event_time == 1768471200000 and b.event_time == 1768471200500 and c.event_time == RECEIVED
    assert a.routing_key == DEFAULT_RK  # body.rk rendered empty
    assert json.loads(a.custom_details_json)["name"] == "login"


def test_generic_routing_key_from_template_and_attribute():
    body = {"rk": "t" * 32, "checks": [{"id": 1, "name": "n", "state": "down", "level": "info", "host": "h"}]}
    assert generic(body)[0].routing_key == "t" * 32
    assert generic(body, attributes={"routing_key": "q" * 32})[0].routing_key == "q" * 32


def test_generic_whole_body_without_items():
    mapping = GenericMapping.from_dict(
        {
            "dedup_key": "{{ body.id }}",
            "summary": "{{ body.msg }}",
            "severity": "error",
            "source": "{{ body.host }}",
        },
        where="m",
    )
    [a] = generic({"id": "x1", "msg": "boom", "host": "h1"}, mapping)
    assert (a.dedup_key, a.summary, a.severity, a.origin, a.action) == (
        "x1",
        "boom",
        "error",
        "h1",
        "trigger",
    )
    [b] = generic(["not", "a", "dict"], GenericMapping.from_dict(
        {"dedup_key": "k", "summary": "{{ body | length }} items", "severity": "info", "source": "s"}, where="m"))  # fmt: skip
    assert b.summary == "3 items" and json.loads(b.custom_details_json) == {"item": ["not", "a", "dict"]}


@pytest.mark.parametrize(
    "item, expected",
    [
        ({"name": "n", "state": "down", "level": "info", "host": "h"}, ["items[0].dedup_key: UndefinedError: 'dict object' has no attribute 'id'"]),
        ({"id": 1, "name": "n", "state": "down", "level": "sev1", "host": "h"}, ["items[0].severity: 'sev1' is not one of critical, error, warning, info"]),
        ({"id": 1, "name": "n", "state": "down", "level": "info", "host": ""}, ["items[0].source: rendered empty"]),
        ({"id": 1, "name": "n", "state": "down", "level": "info", "host": "h", "at": "noon"},
         ["items[0].timestamp: 'noon' is neither ISO 8601 nor epoch seconds"]),
        ({"id": 1, "name": "n", "state": "down", "level": "info", "host": "h", "acked": "maybe"},
         ['items[0].acknowledge_when: expected "true" or "false", got \'maybe\'']),
    ],
)  # fmt: skip
def test_generic_render_errors_name_the_field(item, expected):
    with pytest.raises(InvalidInput) as info:
        generic({"checks": [item]})
    assert info.value.errors == expected


def test_generic_items_must_be_a_list_and_bounded():
    with pytest.raises(InvalidInput, match="items: expected a list, got dict"):
        generic({"checks": {}})
    with pytest.raises(InvalidInput, match="items: 'body.checks' selects nothing in this body"):
        generic({"other": []})
    with pytest.raises(InvalidInput, match="items: 1001 elements, at most 1000 allowed"):
        generic({"checks": [{}] * 1001})
    assert generic({"checks": []}) == []


def test_generic_sandbox_blocks_python_internals_and_mutation():
    m = GenericMapping.from_dict(
        {"dedup_key": "{{ body.__class__.__mro__ }}", "summary": "{{ body.update(a=1) }}", "severity": "info",
         "source": "s"}, where="m")  # fmt: skip
    with pytest.raises(InvalidInput) as info:
        generic({"a": 0}, m)
    assert info.value.errors[0].startswith("dedup_key: SecurityError: access to attribute '__class__'")
    assert info.value.errors[1].startswith("summary: SecurityError")


def test_generic_output_is_limited():
    m = GenericMapping.from_dict(
        {
            "dedup_key": "k",
            "summary": "{% for i in range(20000) %}x{% endfor %}",
            "severity": "info",
            "source": "s",
        },
        where="m",
    )
    with pytest.raises(InvalidInput, match="summary: ValueError: rendered text longer than 16384 characters"):
        generic({}, m)


def test_generic_mapping_config_errors():
    with pytest.raises(CatalogError) as info:
        GenericMapping.from_dict(
            {"dedup_key": "{{ x", "summary": "x" * 5000, "severity": 3, "items": "body[", "colour": "red",
             "labels": {"a": "{% if %}"}}, where="sources.bad", file="cat.yaml")  # fmt: skip
    problems = dict(info.value.problems)
    assert set(problems) == {"sources.bad.colour", "sources.bad.source", "sources.bad.dedup_key", "sources.bad.summary",
                             "sources.bad.severity", "sources.bad.labels.a", "sources.bad.items"}  # fmt: skip
    assert problems["sources.bad.source"] == "required template is missing"
    assert problems["sources.bad.summary"] == "template longer than 4096 characters"
    assert str(info.value).startswith("cat.yaml: sources.bad.colour: unknown field")


def test_generic_mapping_from_yaml_round_trips():
    m = GenericMapping.from_yaml(
        "dedup_key: '{{ body.id }}'\nsummary: s\nseverity: info\nsource: h\nitems: body.x\n", name="y"
    )
    assert m.name == "y" and m.items == "body.x"
    assert GenericMapping.from_dict(m.to_dict(), where="y") == m


# ---- fuzzing: normalize or InvalidInput, nothing else -----------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
SOURCES = ["pagerduty_events_v2", "pagerduty_change_v2", "alertmanager", "grafana", "generic:mon"]
GOLDEN = {
    "pagerduty_events_v2": PD / "spec.enqueue.trigger.request.json",
    "pagerduty_change_v2": PD / "spec.change.build-change-event.request.json",
    "alertmanager": AM / "webhook-v4.firing.example.json",
    "grafana": GRAFANA / "webhook-payload.docs-example.json",
}


def _normalizes_or_rejects(source: str, body: bytes) -> None:
    try:
        alerts = run(source, body, attributes={"dedup_key": "ing-1"}, mappings={"mon": MAPPING})
    except InvalidInput as e:
        assert e.errors and all(isinstance(x, str) and x for x in e.errors)
        return
    codec = AvroCodec("alert")
    for a in alerts:
        assert a.action in ("trigger", "acknowledge", "resolve", "change")
        assert a.severity in ("critical", "error", "warning", "info")
        json.loads(a.custom_details_json)
        assert Alert.from_record(codec.decode(codec.encode(a.to_record()))) == a  # fits alert.avsc


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(SOURCES), value=json_values)
def test_fuzz_random_json(source, value):
    _normalizes_or_rejects(source, json.dumps(value).encode())


@settings(max_examples=100)
@given(source=st.sampled_from(SOURCES), body=st.binary(max_size=64))
def test_fuzz_random_bytes(source, body):
    _normalizes_or_rejects(source, body)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), source=st.sampled_from(sorted(GOLDEN)))
def test_fuzz_mutated_golden_payloads(data, source):
    """Replace or delete one node deep inside a real payload."""
    doc = json.loads(body_of(GOLDEN[source]))
    paths = [p for p in _paths(doc) if p]
    path = data.draw(st.sampled_from(paths))
    holder = doc
    for key in path[:-1]:
        holder = holder[key]
    if data.draw(st.booleans()) and isinstance(holder, dict):
        del holder[path[-1]]
    else:
        holder[path[-1]] = data.draw(json_values)
    _normalizes_or_rejects(source, json.dumps(doc).encode())
