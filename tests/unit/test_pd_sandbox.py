"""PagerDuty Events API v2 sandbox: real server on loopback, driven through httpx.AsyncClient.

Tests are sync functions that call asyncio.run(), so they work with any pytest-asyncio mode.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from pagerstream.streams import pd_sandbox
except ImportError:  # package not installed yet: import from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from streams import pd_sandbox

EXAMPLES = pd_sandbox.default_contracts_dir() / "pagerduty" / "events-v2" / "examples"
RK = "0123456789abcdef0123456789abcdef"
RK2 = "fedcba9876543210fedcba9876543210"
ENQ = "/v2/enqueue"
CHANGE = "/v2/change/enqueue"
THROTTLE = {
    "status": "throttle exceeded",
    "message": "Requests for this service are arriving too quickly.  Please retry later.",
    "errors": ["Enhance Your Calm."],
}


def with_sandbox(scenario, **client_kw):
    async def main():
        async with pd_sandbox.SandboxServer(host="127.0.0.1", port=0) as sb:
            client_kw.setdefault("timeout", 10)
            async with httpx.AsyncClient(base_url=sb.url, **client_kw) as client:
                return await scenario(sb, client)

    return asyncio.run(main())


def trigger(dedup_key=None, routing_key=RK, **payload):
    body = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "payload": {"summary": "disk full", "source": "db01", "severity": "critical", **payload},
    }
    if dedup_key is not None:
        body["dedup_key"] = dedup_key
    return body


def ack(dedup_key, routing_key=RK):
    return {"routing_key": routing_key, "event_action": "acknowledge", "dedup_key": dedup_key}


def resolve(dedup_key, routing_key=RK):
    return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key}


def example_files(prefix):
    files = sorted(EXAMPLES.glob(f"{prefix}*.request.json"))
    assert files, f"no {prefix}* examples under {EXAMPLES}"
    return files


# ---------------------------------------------------------------------------------------------
# contract examples
# ---------------------------------------------------------------------------------------------

def test_spec_examples_are_accepted_with_pagerduty_response():
    async def scenario(sb, c):
        results = {}
        for f in example_files("spec."):
            path = CHANGE if ".change." in f.name else ENQ
            r = await c.post(path, content=f.read_bytes(), headers={"Content-Type": "application/json"})
            results[f.name] = (r.status_code, r.json())
        return results

    results = with_sandbox(scenario)
    assert set(results) == {
        "spec.enqueue.trigger.request.json",
        "spec.change.build-change-event.request.json",
        "spec.change.git-change-event.request.json",
    }
    assert results["spec.enqueue.trigger.request.json"] == (
        202, {"status": "success", "message": "Event processed", "dedup_key": "srv01/mysql"})
    for name in ("spec.change.build-change-event.request.json", "spec.change.git-change-event.request.json"):
        assert results[name] == (202, {"status": "success", "message": "Event processed"})


@pytest.mark.parametrize("name", [f.name for f in sorted(EXAMPLES.glob("docs.*.request.json"))])
def test_docs_examples_rejected_only_for_placeholder_routing_key(name):
    raw = json.loads((EXAMPLES / name).read_text())
    path = CHANGE if ".change." in name else ENQ
    assert len(raw["routing_key"]) != 32

    async def scenario(sb, c):
        bad = await c.post(path, json=raw)
        good = await c.post(path, json={**raw, "routing_key": RK})
        return bad, good

    bad, good = with_sandbox(scenario)
    assert bad.status_code == 400
    body = bad.json()
    assert body["status"] == "invalid event"
    assert body["message"] == "Event object is invalid"
    assert body["errors"] == ["Length of 'routing_key' is incorrect (should be 32 characters)"]
    # with a real-length key the same document is valid
    assert good.status_code == 202, good.text
    assert good.json()["status"] == "success"


def test_docs_example_count():
    assert len(list(EXAMPLES.glob("docs.*.request.json"))) == 4


# ---------------------------------------------------------------------------------------------
# validation failures
# ---------------------------------------------------------------------------------------------

def _big_body():
    body = trigger("big")
    body["payload"]["custom_details"] = {"blob": "x" * 600_000}
    return json.dumps(body).encode()


INVALID = [
    ("missing event_action", {"routing_key": RK, "dedup_key": "a"}, "'event_action' is missing or blank"),
    ("bad severity", trigger("a", severity="fatal"), "'payload.severity' must be one of"),
    ("summary 1025 chars", trigger("a", summary="s" * 1025), "maximum 1024 characters, got 1025"),
    ("dedup_key 256 chars", trigger("d" * 256), "maximum 255 characters, got 256"),
    ("resolve without dedup_key", {"routing_key": RK, "event_action": "resolve"},
     "'dedup_key' is missing or blank (required for resolve events)"),
    ("acknowledge with blank dedup_key", {"routing_key": RK, "event_action": "acknowledge", "dedup_key": ""},
     "'dedup_key' is missing or blank"),
    ("non-JSON", b"this is not json {", "JSON parse error"),
    ("empty body", b"", "JSON parse error"),
    ("NaN literal", b'{"routing_key": NaN}', "JSON parse error"),
    ("600 KB body", _big_body(), "exceeds the 512 KB limit (512000 bytes"),
    ("image over http", {**trigger("a"), "images": [{"src": "http://example.com/x.png"}]},
     "'images[0].src' must be an HTTPS URL"),
    ("trigger without payload", {"routing_key": RK, "event_action": "trigger"}, "'payload' is missing"),
    ("payload without source", {**trigger("a"), "payload": {"summary": "s", "severity": "info"}},
     "'payload.source' is missing or blank"),
    ("routing_key 31 chars", trigger("a", routing_key=RK[:-1]), "Length of 'routing_key' is incorrect"),
    ("unknown event_action", {**trigger("a"), "event_action": "snooze"}, "'event_action' must be one of"),
    ("array body", [trigger("a")], "must be of type object (got array)"),
]


@pytest.mark.parametrize("name,body,expected", INVALID, ids=[i[0] for i in INVALID])
def test_invalid_bodies_get_400_envelope(name, body, expected):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def scenario(sb, c):
        r = await c.post(ENQ, content=raw, headers={"Content-Type": "application/json"})
        return r, list(sb.state.requests), list(sb.state.alerts)

    r, requests, alerts = with_sandbox(scenario)
    assert r.status_code == 400
    body = r.json()
    assert body["status"] == "invalid event"
    assert body["message"] == "Event object is invalid"
    assert isinstance(body["errors"], list) and all(isinstance(e, str) for e in body["errors"])
    assert any(expected in e for e in body["errors"]), body["errors"]
    assert alerts == []
    assert len(requests) == 1 and requests[0]["status"] == 400 and requests[0]["ingested"] is False


def test_change_event_limits():
    async def scenario(sb, c):
        long = await c.post(CHANGE, json={"routing_key": RK, "payload": {"summary": "s" * 1025}})
        missing = await c.post(CHANGE, json={"routing_key": RK, "payload": {"source": "ci"}})
        ok = await c.post(CHANGE, json={"routing_key": RK, "payload": {"summary": "deploy 42"}})
        return long, missing, ok, list(sb.state.change_events), list(sb.state.alerts)

    long, missing, ok, changes, alerts = with_sandbox(scenario)
    assert long.status_code == 400 and any("1024" in e for e in long.json()["errors"])
    assert missing.status_code == 400 and "'payload.summary' is missing or blank" in missing.json()["errors"]
    assert ok.status_code == 202 and ok.json() == {"status": "success", "message": "Event processed"}
    assert len(changes) == 1 and changes[0]["body"]["payload"]["summary"] == "deploy 42"
    assert alerts == []  # change events never create alerts


# ---------------------------------------------------------------------------------------------
# dedup semantics and anomalies
# ---------------------------------------------------------------------------------------------

def test_trigger_without_dedup_key_gets_fresh_uuid4_hex():
    async def scenario(sb, c):
        a = (await c.post(ENQ, json=trigger())).json()
        b = (await c.post(ENQ, json=trigger())).json()
        return a, b, list(sb.state.alerts)

    a, b, alerts = with_sandbox(scenario)
    assert a["status"] == "success" and a["message"] == "Event processed"
    for r in (a, b):
        assert len(r["dedup_key"]) == 32
        assert uuid.UUID(hex=r["dedup_key"]).version == 4
    assert a["dedup_key"] != b["dedup_key"]
    assert [al["dedup_key"] for al in alerts] == [a["dedup_key"], b["dedup_key"]]


def test_dedup_semantics():
    async def scenario(sb, c):
        statuses = []
        for body in (trigger("A"), trigger("A"), ack("A"), trigger("A"), resolve("A"), ack("A"), trigger("A"),
                     resolve("A", routing_key=RK2)):
            r = await c.post(ENQ, json=body)
            statuses.append((r.status_code, r.json()))
        view = (await c.get("/sandbox/alerts")).json()
        return statuses, view, sb.state.sequence(RK, "A")

    statuses, view, seq = with_sandbox(scenario)
    assert [s for s, _ in statuses] == [202] * 8
    expected = {"status": "success", "message": "Event processed", "dedup_key": "A"}
    assert all(b == expected for _, b in statuses)
    alerts = view["alerts"]
    assert [(a["id"], a["status"], a["trigger_count"]) for a in alerts] == [
        (1, "resolved", 3), (2, "triggered", 1)]
    assert alerts[0]["acknowledged_at"] is not None and alerts[0]["resolved_at"] is not None
    assert seq == ["trigger", "trigger", "acknowledge", "trigger", "resolve", "acknowledge", "trigger"]
    events = next(s for s in view["sequences"] if s["routing_key"] == RK and s["dedup_key"] == "A")["events"]
    assert [e["outcome"] for e in events] == [
        "opened", "duplicate", "acknowledged", "duplicate", "resolved", "dropped", "opened"]
    assert [e["alert_id"] for e in events] == [1, 1, 1, 1, 1, None, 2]
    assert [(a["kind"], a["action"], a["routing_key"]) for a in view["anomalies"]] == [
        ("acknowledge_after_resolve", "acknowledge", RK),
        ("routing_key_mismatch", "resolve", RK2),
    ]


def test_resolve_before_trigger_is_an_anomaly():
    async def scenario(sb, c):
        r1 = await c.post(ENQ, json=resolve("K"))
        r2 = await c.post(ENQ, json=trigger("K"))
        stats = (await c.get("/sandbox/stats")).json()
        return r1, r2, stats, sb.state.open_alert(RK, "K")

    r1, r2, stats, open_alert = with_sandbox(scenario)
    assert r1.status_code == 202 and r1.json()["dedup_key"] == "K"  # accepted, then dropped
    assert r2.status_code == 202
    assert open_alert is not None and open_alert["status"] == "triggered"
    assert stats["dropped"] == 1
    assert stats["alerts"] == {"total": 1, "open": 1, "triggered": 1, "acknowledged": 0, "resolved": 0}
    assert len(stats["anomalies"]) == 1
    an = stats["anomalies"][0]
    assert (an["kind"], an["action"], an["dedup_key"], an["routing_key"], an["request_id"]) == (
        "resolve_without_trigger", "resolve", "K", RK, 1)


# ---------------------------------------------------------------------------------------------
# faults
# ---------------------------------------------------------------------------------------------

def test_fault_429_count_over_http_is_not_ingested():
    async def scenario(sb, c):
        f = await c.post("/sandbox/faults", json={"mode": "429", "count": 2})
        rs = [await c.post(ENQ, json=trigger("T")) for _ in range(3)]
        stats = (await c.get("/sandbox/stats")).json()
        log = (await c.get("/sandbox/requests")).json()
        return f, rs, stats, log, list(sb.state.alerts)

    f, rs, stats, log, alerts = with_sandbox(scenario)
    assert f.status_code == 200 and f.json()["queue"] == [{"mode": "429", "count": 2, "body": "json"}]
    assert [r.status_code for r in rs] == [429, 429, 202]
    assert rs[0].json() == THROTTLE and rs[1].json() == THROTTLE
    assert len(alerts) == 1 and alerts[0]["trigger_count"] == 1
    assert stats["by_status"] == {"202": 1, "429": 2}
    assert stats["accepted"] == 1
    assert stats["faults"]["queue"] == []
    assert log["count"] == 3
    assert [(r["status"], r["fault"], r["ingested"]) for r in log["requests"]] == [
        (429, "429", False), (429, "429", False), (202, None, True)]


def test_fault_5xx_does_not_change_alert_model():
    async def scenario(sb, c):
        await c.post(ENQ, json=trigger("F"))
        sb.state.set_fault(mode="503", count=1)
        sb.state.set_fault({"mode": "500", "count": 1})
        r503 = await c.post(ENQ, json=resolve("F"))
        r500 = await c.post(ENQ, json=resolve("F"))
        still_open = sb.state.open_alert(RK, "F") is not None
        r_ok = await c.post(ENQ, json=resolve("F"))
        return r503, r500, still_open, r_ok, sb.state.sequence(RK, "F"), sb.state.stats()

    r503, r500, still_open, r_ok, seq, stats = with_sandbox(scenario)
    assert r503.status_code == 503
    assert r503.headers["content-type"].startswith("text/plain")  # plain 503, no JSON
    assert r500.status_code == 500
    assert r500.json()["status"] == "Unrecognized object"
    assert r500.json()["message"] == "Event object format is unrecognized"
    assert still_open is True
    assert r_ok.status_code == 202
    assert seq == ["trigger", "resolve"]  # the failed resolves never reached the model
    assert stats["by_status"] == {"202": 2, "500": 1, "503": 1}
    assert stats["alerts"]["resolved"] == 1
    assert stats["anomalies"] == []


def test_fault_plain_429_has_no_json_body():
    async def scenario(sb, c):
        sb.state.set_fault(mode="429", count=1, body="plain")
        r = await c.post(ENQ, json=trigger("P"))
        return r, list(sb.state.alerts)

    r, alerts = with_sandbox(scenario)
    assert r.status_code == 429
    assert r.headers["content-type"].startswith("text/plain") and r.text == "429 Too Many Requests"
    assert alerts == []


def test_fault_slow_delays_then_processes():
    async def scenario(sb, c):
        await c.post("/sandbox/faults", json={"mode": "slow", "delay_ms": 300, "count": 1})
        t0 = time.monotonic()
        slow = await c.post(ENQ, json=trigger("S"))
        t1 = time.monotonic()
        fast = await c.post(ENQ, json=trigger("S"))
        t2 = time.monotonic()
        return slow, fast, t1 - t0, t2 - t1, sb.state.open_alert(RK, "S")

    slow, fast, slow_s, fast_s, alert = with_sandbox(scenario)
    assert slow.status_code == 202 and fast.status_code == 202
    assert slow_s >= 0.3
    assert fast_s < 0.25
    assert alert["trigger_count"] == 2


def test_slow_response_after_client_timeout_is_still_ingested():
    # a client that times out and retries causes a duplicate trigger, as with the real API
    async def scenario(sb, c):
        sb.state.set_fault(mode="slow", delay_ms=400, count=1)
        with pytest.raises(httpx.ReadTimeout):
            await c.post(ENQ, json=trigger("R"), timeout=0.1)
        retry = await c.post(ENQ, json=trigger("R"))
        await asyncio.sleep(0.6)
        return retry, sb.state.open_alert(RK, "R"), [r["status"] for r in sb.state.requests]

    retry, alert, statuses = with_sandbox(scenario)
    assert retry.status_code == 202
    assert alert["trigger_count"] == 2
    assert statuses == [202, 202]


def test_rate_mode_throttles_per_routing_key_and_never_ingests():
    async def scenario(sb, c):
        r = await c.post("/sandbox/faults", json={"mode": "rate", "per_second": 3})
        assert r.json()["rate_per_second"] == 3
        t0 = time.monotonic()
        burst = [await c.post(ENQ, json=trigger(f"k{i}")) for i in range(8)]
        elapsed = time.monotonic() - t0
        other = await c.post(ENQ, json=trigger("other", routing_key=RK2))
        await asyncio.sleep(1.05)
        later = await c.post(ENQ, json=trigger("later"))
        return burst, elapsed, other, later, sb.state.stats(), list(sb.state.alerts), list(sb.state.requests)

    burst, elapsed, other, later, stats, alerts, requests = with_sandbox(scenario)
    assert elapsed < 0.9, "burst too slow for a 1 s window test"
    assert [r.status_code for r in burst] == [202] * 3 + [429] * 5
    assert all(r.json() == THROTTLE for r in burst[3:])
    assert other.status_code == 202  # another routing key has its own window
    assert later.status_code == 202  # window slid
    assert sorted(a["dedup_key"] for a in alerts) == ["k0", "k1", "k2", "later", "other"]
    throttled = [r for r in requests if r["status"] == 429]
    assert len(throttled) == 5 and all(r["fault"] == "rate" and not r["ingested"] for r in throttled)
    assert stats["max_rate_1s"] == {RK: 3, RK2: 1}
    assert stats["by_status"] == {"202": 5, "429": 5}


def test_max_rate_observed_without_limit():
    async def scenario(sb, c):
        for i in range(6):
            await c.post(ENQ, json=trigger(f"m{i}"))
        await c.post(ENQ, json={"routing_key": RK, "dedup_key": "x"})  # 400: not counted
        return sb.state.stats()["max_rate_1s"]

    assert with_sandbox(scenario) == {RK: 6}


def test_reset_clears_everything():
    async def scenario(sb, c):
        await c.post(ENQ, json=trigger("Z"))
        await c.post(ENQ, json=resolve("nope"))
        await c.post("/sandbox/faults", json={"mode": "429", "count": 5})
        await c.post("/sandbox/faults", json={"mode": "rate", "per_second": 1})
        reset = await c.post("/sandbox/reset")
        stats = (await c.get("/sandbox/stats")).json()
        after = await c.post(ENQ, json=trigger("Z"))
        return reset, stats, after, (await c.get("/sandbox/alerts")).json()

    reset, stats, after, view = with_sandbox(scenario)
    assert reset.status_code == 200
    assert stats["requests"] == 0 and stats["by_status"] == {} and stats["anomalies"] == []
    assert stats["max_rate_1s"] == {} and stats["faults"] == {"queue": [], "rate_per_second": None}
    assert after.status_code == 202
    assert [a["id"] for a in view["alerts"]] == [1]


def test_clear_mode_and_bad_fault_spec():
    async def scenario(sb, c):
        await c.post("/sandbox/faults", json={"mode": "503", "count": 3})
        cleared = await c.post("/sandbox/faults", json={"mode": "clear"})
        ok = await c.post(ENQ, json=trigger("C"))
        bad_mode = await c.post("/sandbox/faults", json={"mode": "teapot"})
        bad_count = await c.post("/sandbox/faults", json={"mode": "429", "count": 0})
        bad_json = await c.post("/sandbox/faults", content=b"{")
        return cleared, ok, bad_mode, bad_count, bad_json

    cleared, ok, bad_mode, bad_count, bad_json = with_sandbox(scenario)
    assert cleared.json() == {"queue": [], "rate_per_second": None}
    assert ok.status_code == 202
    assert bad_mode.status_code == 400 and "unknown fault mode" in bad_mode.json()["error"]
    assert bad_count.status_code == 400 and "count" in bad_count.json()["error"]
    assert bad_json.status_code == 400


# ---------------------------------------------------------------------------------------------
# inspection, logging, startup
# ---------------------------------------------------------------------------------------------

def test_request_log_filters_and_headers():
    async def scenario(sb, c):
        t0 = time.time()
        await c.post(ENQ, json=trigger("one"), headers={"User-Agent": "pagerstream-test/1.0"})
        await c.post(ENQ, json=trigger("two", routing_key=RK2))
        await c.post(ENQ, json=resolve("one"))
        t1 = time.time()
        by_key = (await c.get("/sandbox/requests", params={"routing_key": RK, "dedup_key": "one"})).json()
        by_rk2 = (await c.get("/sandbox/requests", params={"routing_key": RK2})).json()
        everything = (await c.get("/sandbox/requests")).json()
        return t0, t1, by_key, by_rk2, everything

    t0, t1, by_key, by_rk2, everything = with_sandbox(scenario)
    assert everything["count"] == 3
    assert [(r["action"], r["status"]) for r in by_key["requests"]] == [("trigger", 202), ("resolve", 202)]
    assert [r["dedup_key"] for r in by_rk2["requests"]] == ["two"]
    first = by_key["requests"][0]
    assert first["headers"] == {"User-Agent": "pagerstream-test/1.0", "Content-Type": "application/json"}
    assert first["path"] == ENQ and first["body"]["payload"]["summary"] == "disk full"
    assert first["response"] == {"status": "success", "message": "Event processed", "dedup_key": "one"}
    assert t0 <= first["time"] <= t1


def test_log_line_masks_routing_key(caplog):
    async def scenario(sb, c):
        await c.post(ENQ, json=trigger("masked"))
        await c.post(ENQ, json={"routing_key": RK, "event_action": "resolve"})

    with caplog.at_level(logging.INFO, logger="pagerstream.pd_sandbox"):
        with_sandbox(scenario)
    lines = [r.getMessage() for r in caplog.records if "/v2/enqueue" in r.getMessage()]
    assert len(lines) == 2
    assert RK not in caplog.text
    assert "routing_key=…cdef" in lines[0]
    assert "-> 202" in lines[0] and "action='trigger'" in lines[0] and "dedup_key='masked'" in lines[0]
    assert "-> 400" in lines[1]


def test_healthz_and_threaded_server():
    async def get(url):
        async with httpx.AsyncClient() as c:
            return await c.get(url + "/healthz"), await c.post(url + ENQ, json=trigger("th"))

    with pd_sandbox.SandboxServer() as sb:
        h, r = asyncio.run(get(sb.url))
        assert sb.events_url == sb.url + "/v2/enqueue"
        assert sb.state.open_alert(RK, "th") is not None
    assert h.status_code == 200 and h.json() == {"status": "ok"}
    assert r.status_code == 202


def test_missing_spec_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGERSTREAM_CONTRACTS_DIR", str(tmp_path))
    with pytest.raises(pd_sandbox.SpecNotFoundError) as ei:
        pd_sandbox.make_app()
    assert "PAGERSTREAM_CONTRACTS_DIR" in str(ei.value)
    assert str(tmp_path) in str(ei.value)


def test_spec_path_argument_accepts_dir_or_file():
    contracts = pd_sandbox.default_contracts_dir()
    a = pd_sandbox.load_events_spec(contracts)
    b = pd_sandbox.load_events_spec(contracts / "pagerduty/openapi/events-api-v2.openapiv3.json")
    assert a == b and a["info"]["title"] == "PagerDuty V2 Events API"


def test_validator_resolves_refs_from_spec():
    v = pd_sandbox.EventRequestValidator(pd_sandbox.load_events_spec())
    kind, schema = v.routes["/v2/enqueue"]
    assert kind == "alert"
    assert "$ref" not in json.dumps(schema)
    assert schema["properties"]["payload"]["required"] == ["summary", "severity", "source"]
    assert v.routes["/v2/change/enqueue"][0] == "change"


# ---------------------------------------------------------------------------------------------
# property: never 5xx without faults
# ---------------------------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_any = st.recursive(
    json_leaf,
    lambda ch: st.one_of(st.lists(ch, max_size=4), st.dictionaries(st.text(max_size=10), ch, max_size=4)),
    max_leaves=12,
)
routing_keys = st.one_of(
    st.just(RK), st.text(alphabet="0123456789abcdefR", min_size=30, max_size=34), json_any)
payloads = st.one_of(
    st.fixed_dictionaries({}, optional={
        "summary": st.one_of(st.text(max_size=30), st.just("s" * 1025), json_leaf),
        "source": st.one_of(st.text(max_size=20), json_leaf),
        "severity": st.one_of(
            st.sampled_from(["critical", "error", "warning", "info", "fatal", ""]), json_leaf),
        "custom_details": json_any,
        "timestamp": st.one_of(st.just("2015-07-17T08:42:58.315+0000"), json_leaf),
    }),
    json_any,
)
images = st.one_of(
    st.lists(st.one_of(
        st.fixed_dictionaries({}, optional={
            "src": st.one_of(st.sampled_from(["https://x/a.png", "http://x/a.png", ""]), json_leaf),
            "href": json_leaf,
        }),
        json_any,
    ), max_size=3),
    json_any,
)
event_bodies = st.fixed_dictionaries({}, optional={
    "routing_key": routing_keys,
    "event_action": st.one_of(
        st.sampled_from(["trigger", "acknowledge", "resolve", "", "TRIGGER"]), json_leaf),
    "dedup_key": st.one_of(st.text(max_size=10), st.just("d" * 256), json_leaf),
    "payload": payloads,
    "images": images,
    "links": json_any,
    "client": json_leaf,
})
raw_bodies = st.one_of(
    event_bodies.map(lambda b: json.dumps(b).encode()),
    json_any.map(lambda b: json.dumps(b).encode()),
    st.binary(max_size=64),
)


@pytest.fixture(scope="module")
def threaded_sandbox():
    with pd_sandbox.SandboxServer() as sb:
        yield sb


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=raw_bodies, path=st.sampled_from([ENQ, CHANGE]))
def test_random_bodies_never_5xx(threaded_sandbox, raw, path):
    async def post():
        async with httpx.AsyncClient(base_url=threaded_sandbox.url, timeout=10) as c:
            return await c.post(path, content=raw, headers={"Content-Type": "application/json"})

    r = asyncio.run(post())
    assert r.status_code in (202, 400), (r.status_code, r.text)
    body = r.json()
    if r.status_code == 202:
        assert body["status"] == "success" and body["message"] == "Event processed"
        assert ("dedup_key" in body) == (path == ENQ)
    else:
        assert body["status"] == "invalid event" and body["message"] == "Event object is invalid"
        assert body["errors"] and all(isinstance(e, str) for e in body["errors"])
