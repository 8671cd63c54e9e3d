"""PagerDuty REST API v2 client, Redis cache, CLI, against the REST sandbox on loopback.

The sandbox (streams/pd_rest_sandbox.py, mounted in the Events sandbox app) validates each request
against the official OpenAPI spec, so a request the client gets wrong fails there. The cache tests use
the real Redis at REDIS_URL under a unique key prefix. Time is a fake clock shared by the client's
pacer/backoff and the sandbox's rate window: waits are asserted as values, never measured.

Tests are sync functions that call asyncio.run(), like test_pd_sandbox.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import uuid
import warnings

import httpx
import pytest
from click.testing import CliRunner
from pagerstream.streams import pd_sandbox
from pagerstream.streams.pd_rest_sandbox import load_rest_spec, rest_state

from pagerstream.config import ConfigError, Secret
from pagerstream.pagerduty import rest
from pagerstream.pagerduty.rest import (
    ACCEPT,
    EU_API_URL,
    US_API_URL,
    AuthenticationError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    PagerDutyConfigError,
    PagerDutyREST,
    PagerDutyTransportError,
    PaginationCapError,
    PaginationCapWarning,
    RatePacer,
    RestSettings,
    RetryPolicy,
    ServerError,
)

KEY = "u+pagerstreamTESTkey_0123456789-abc"   # shaped like a real API key ('+', '_', '-')
OTHER_KEY = "y_otherTESTkey-9876543210zyx"
BEARER = "pdus+oauthTESTtoken0123456789abcdef"
EMAIL = "oncall.bot@example.com"
SPEC = load_rest_spec()


class FakeClock:
    """Monotonic clock + sleep that only advances when slept on; records every sleep."""

    def __init__(self, start: float = 10_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def run_with_sandbox(scenario, *, fake: FakeClock | None = None, seed: dict | None = None, **client_kw):
    """Start the sandbox on 127.0.0.1:0, build a client pointed at it, run `scenario(sb, state, client)`."""
    async def main():
        async with pd_sandbox.SandboxServer(host="127.0.0.1", port=0) as sb:
            state = rest_state(sb.app)
            if fake is not None:
                state.clock = fake.monotonic
                client_kw.setdefault("clock", fake.monotonic)
                client_kw.setdefault("sleep", fake.sleep)
            if seed:
                state.seed(seed)
            client_kw.setdefault("api_key", KEY)
            client_kw.setdefault("from_email", EMAIL)
            client_kw.setdefault("rng", random.Random(7))
            client = PagerDutyREST(base_url=sb.url, allow_private=True, **client_kw)
            try:
                return await scenario(sb, state, client)
            finally:
                await client.aclose()

    return asyncio.run(main())


def bot_user() -> dict:
    return {"id": "PBOT001", "name": "Oncall Bot", "email": EMAIL}


def incident_fixture() -> dict:
    """A user for From, two responders, a two-level policy, a service and one triggered incident."""
    return {
        "users": [bot_user(), {"id": "PUSER01", "name": "Ada Responder", "email": "ada@example.com"},
                  {"id": "PUSER02", "name": "Bob Secondary", "email": "bob@example.com"}],
        "escalation_policies": [{"id": "PEPOL01", "name": "Payments EP", "escalation_rules": [
            {"id": "R1", "escalation_delay_in_minutes": 10, "targets": [{"id": "PUSER01", "type": "user_reference"}]},
            {"id": "R2", "escalation_delay_in_minutes": 10, "targets": [{"id": "PUSER02", "type": "user_reference"}]},
        ]}],
        "services": [{"id": "PSVC001", "name": "payments-api",
                      "escalation_policy": {"id": "PEPOL01", "type": "escalation_policy_reference"}}],
        "incidents": [{"id": "PINC001", "title": "payments 5xx", "service_id": "PSVC001"}],
    }


def recorded(state, operation_id=None):
    return state.find_requests(operation_id=operation_id)


# ------------------------------------------------------------------------------------------------
# tables derived from the official spec
# ------------------------------------------------------------------------------------------------

def _resolve(node):
    while isinstance(node, dict) and "$ref" in node:
        target = SPEC
        for part in node["$ref"][2:].split("/"):
            target = target[part.replace("~1", "/")]
        node = target
    return node


def _operations():
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            if isinstance(op, dict) and "operationId" in op:
                yield method.upper(), path, [_resolve(p) for p in op.get("parameters", [])]


def test_from_header_table_is_the_specs():
    derived = {(m, p) for m, p, params in _operations()
               if any(x["in"] == "header" and x["name"] == "From" and x.get("required") for x in params)}
    assert derived, "the spec declares no required From header any more?"
    assert derived == set(rest.FROM_HEADER_REQUIRED)
    # the incident writes the client makes are among them; reads are not
    assert rest.requires_from("PUT", "/incidents/PABC123")
    assert rest.requires_from("POST", "/incidents/PABC123/notes")
    assert not rest.requires_from("GET", "/incidents/PABC123")
    assert not rest.requires_from("POST", "/webhook_subscriptions")


def test_cursor_pagination_table_is_the_specs():
    derived = {p for m, p, params in _operations()
               if m == "GET" and any(x["in"] == "query" and x["name"] == "cursor" for x in params)}
    assert derived == set(rest.CURSOR_PAGINATED_PATHS)
    classic = {p for m, p, params in _operations()
               if m == "GET" and any(x["in"] == "query" and x["name"] == "offset" for x in params)}
    for path in ("/services", "/escalation_policies", "/schedules", "/oncalls", "/users", "/teams",
                 "/webhook_subscriptions", "/incidents"):
        assert path in classic and not rest.is_cursor_paginated(path)
    assert rest.is_cursor_paginated("/audit/records")


# ------------------------------------------------------------------------------------------------
# settings, regions, SSRF guard
# ------------------------------------------------------------------------------------------------

def test_region_urls_and_settings():
    assert PagerDutyREST(api_key=KEY).base_url == US_API_URL == "https://api.pagerduty.com"
    assert PagerDutyREST(api_key=KEY, region="eu").base_url == EU_API_URL == "https://api.eu.pagerduty.com"
    s = RestSettings.from_env({"PAGERDUTY_API_KEY": KEY, "PAGERDUTY_REGION": "EU"})
    assert (s.region, s.api_url, s.url_overridden) == ("eu", EU_API_URL, False)
    assert PagerDutyREST.from_settings(s).base_url == EU_API_URL
    with pytest.raises(ConfigError) as e:
        RestSettings.from_env({"PAGERDUTY_REGION": "apac", "PAGERDUTY_FROM_EMAIL": "nope",
                               "PAGERDUTY_API_KEY": "short"})
    assert {v for v, _ in e.value.problems} == {"PAGERDUTY_REGION", "PAGERDUTY_FROM_EMAIL", "PAGERDUTY_API_KEY"}
    assert "short" not in str(e.value)
    with pytest.raises(PagerDutyConfigError):
        PagerDutyREST()  # no credentials


@pytest.mark.parametrize("url", ["http://127.0.0.1:8788", "https://10.20.30.40", "https://localhost:8443",
                                 "https://[::1]:443", "https://169.254.169.254/latest"])
def test_private_api_url_override_refused_unless_allowed(url):
    with pytest.raises(ConfigError) as e:
        RestSettings.from_env({"PAGERDUTY_API_KEY": KEY, "PAGERDUTY_API_URL": url})
    assert [v for v, _ in e.value.problems] == ["PAGERDUTY_API_URL"]
    with pytest.raises(PagerDutyConfigError):
        PagerDutyREST(api_key=KEY, base_url=url)
    s = RestSettings.from_env({"PAGERDUTY_API_KEY": KEY, "PAGERDUTY_API_URL": url,
                               "PAGERSTREAM_ALLOW_PRIVATE_PD_URL": "true"})
    assert s.url_overridden and s.api_url == url.rstrip("/")
    assert PagerDutyREST.from_settings(s).base_url == url.rstrip("/")


def test_api_url_override_must_be_a_base_url():
    for bad in ("ftp://api.example.com", "https://user:pw@api.example.com", "https://api.example.com/?x=1"):
        with pytest.raises(ConfigError):
            RestSettings.from_env({"PAGERDUTY_API_KEY": KEY, "PAGERDUTY_API_URL": bad,
                                   "PAGERSTREAM_ALLOW_PRIVATE_PD_URL": "true"})


# ------------------------------------------------------------------------------------------------
# auth, Accept, From
# ------------------------------------------------------------------------------------------------

def test_api_token_auth_and_accept_header():
    async def scenario(sb, state, client):
        state.set_tokens(valid=[KEY])
        services = await client.list_services()
        wrong = PagerDutyREST(base_url=sb.url, allow_private=True, api_key=OTHER_KEY)
        try:
            with pytest.raises(AuthenticationError) as e:
                await wrong.list_services()
        finally:
            await wrong.aclose()
        return services, e.value, recorded(state, "listServices")

    services, err, reqs = run_with_sandbox(scenario)
    assert services and all(s["type"] == "service" for s in services)
    ok = reqs[0]
    assert ok["status"] == 200 and ok["auth"] == "token"
    assert ok["headers"]["Accept"] == ACCEPT
    assert ok["headers"]["Authorization"] == "Token token=****" + KEY[-4:]
    assert ok["headers"]["From"] is None  # reads carry no From
    assert (err.status, err.code) == (401, 2006) and len(reqs) == 2  # 401 is not retried


def test_bearer_auth_needs_no_from():
    async def scenario(sb, state, client):
        inc = await client.acknowledge_incident("PINC001")
        return inc, recorded(state, "updateIncident")

    inc, reqs = run_with_sandbox(scenario, seed=incident_fixture(), api_key=None, user_token=BEARER, from_email=None)
    assert inc["status"] == "acknowledged"
    assert reqs[0]["auth"] == "bearer" and reqs[0]["headers"]["Authorization"].startswith("Bearer ****")
    assert reqs[0]["headers"]["From"] is None


def test_from_header_on_incident_writes_only():
    async def scenario(sb, state, client):
        await client.get_incident("PINC001")
        await client.acknowledge_incident("PINC001")
        await client.create_incident_note("PINC001", "looking")
        return state.find_requests()

    reqs = run_with_sandbox(scenario, seed=incident_fixture())
    by_op = {r["operation_id"]: r for r in reqs}
    assert by_op["getIncident"]["headers"]["From"] is None
    assert by_op["updateIncident"]["headers"]["From"] == EMAIL
    assert by_op["createIncidentNote"]["headers"]["From"] == EMAIL
    assert all(r["status"] < 300 for r in reqs)


def test_api_token_without_from_fails_before_sending():
    async def scenario(sb, state, client):
        with pytest.raises(PagerDutyConfigError) as e:
            await client.resolve_incident("PINC001")
        return e.value, recorded(state)

    err, reqs = run_with_sandbox(scenario, seed=incident_fixture(), from_email=None)
    assert "PAGERDUTY_FROM_EMAIL" in str(err)
    assert reqs == []


def test_sandbox_rejects_missing_from_and_unknown_requester():
    async def scenario(sb, state, client):
        h = {"Authorization": f"Token token={KEY}", "Accept": ACCEPT, "Content-Type": "application/json"}
        body = {"incident": {"type": "incident_reference", "status": "acknowledged"}}
        async with httpx.AsyncClient(base_url=sb.url) as c:
            missing = await c.put("/incidents/PINC001", json=body, headers=h)
            stranger = await c.put("/incidents/PINC001", json=body, headers={**h, "From": "who@nowhere.example"})
        return missing, stranger

    missing, stranger = run_with_sandbox(scenario, seed=incident_fixture())
    assert missing.status_code == 400 and missing.json()["error"]["code"] == 2011
    assert stranger.status_code == 400 and stranger.json()["error"]["code"] == 1008


# ------------------------------------------------------------------------------------------------
# pagination
# ------------------------------------------------------------------------------------------------

def test_classic_pagination_over_several_pages():
    async def scenario(sb, state, client):
        async with httpx.AsyncClient(base_url=sb.url) as c:
            r = await c.post("/sandbox/rest/seed", json={"services": {"count": 250, "name_prefix": "svc"},
                                                         "replace": True})
            assert r.status_code == 200, r.text
        return await client.list_services(), recorded(state, "listServices")

    services, reqs = run_with_sandbox(scenario)
    assert len(services) == 250 and len({s["id"] for s in services}) == 250
    assert [s["name"] for s in services] == sorted(s["name"] for s in services)
    assert [(dict(r["query"])["offset"], dict(r["query"])["limit"]) for r in reqs] == \
        [("0", "100"), ("100", "100"), ("200", "100")]


def test_classic_pagination_stops_at_the_10000_cap_with_a_warning():
    async def scenario(sb, state, client):
        state.seed({"services": {"count": 10_050}, "replace": True})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = [s async for s in client.iter_classic("/services", page_size=30)]
        return got, caught, recorded(state, "listServices")

    got, caught, reqs = run_with_sandbox(scenario)
    assert len(got) == 10_000 and len({s["id"] for s in got}) == 10_000
    assert [w.category for w in caught] == [PaginationCapWarning]
    assert "10000" in str(caught[0].message)
    last = dict(reqs[-1]["query"])
    assert (last["offset"], last["limit"]) == ("9990", "10")  # the last page is shrunk to end at the cap
    assert all(r["status"] == 200 for r in reqs)  # never asked past the cap


def test_classic_pagination_cap_can_raise_and_sandbox_enforces_it():
    async def scenario(sb, state, client):
        state.seed({"services": {"count": 10_001}, "replace": True})
        got = []
        with pytest.raises(PaginationCapError):
            async for s in client.iter_classic("/services", on_cap="raise"):
                got.append(s)
        n_before = len(recorded(state, "listServices"))
        with pytest.raises(InvalidInputError) as e:
            await client.get("/services", {"offset": 9950, "limit": 100})
        return len(got), e.value, len(recorded(state, "listServices")) - n_before

    n, err, sent = run_with_sandbox(scenario)
    assert n == 10_000
    assert (err.status, err.code) == (400, 2001) and "10000" in " ".join(err.errors)
    assert sent == 1  # a 400 is not retried


def test_cursor_pagination():
    async def scenario(sb, state, client):
        state.seed({"audit_records": {"count": 230}, "replace": True})
        return await client.list_audit_records(), recorded(state, "listAuditRecords")

    records, reqs = run_with_sandbox(scenario)
    assert len(records) == 230 and len({r["id"] for r in records}) == 230
    queries = [dict(r["query"]) for r in reqs]
    assert len(queries) == 3 and "cursor" not in queries[0]
    assert all("offset" not in q for q in queries)
    assert queries[1]["cursor"] != queries[2]["cursor"]


# ------------------------------------------------------------------------------------------------
# rate limits and retries
# ------------------------------------------------------------------------------------------------

def test_pacer_alone():
    fake = FakeClock()
    p = RatePacer(fake.monotonic, fake.sleep)
    assert p.delay() == 0
    p.observe(httpx.Headers({"ratelimit-limit": "100", "ratelimit-remaining": "50", "ratelimit-reset": "20"}))
    assert p.delay() == 0  # plenty left
    p.observe(httpx.Headers({"ratelimit-limit": "100", "ratelimit-remaining": "9", "ratelimit-reset": "20"}))
    p.last_sent = fake.now
    assert p.delay() == pytest.approx(20 / 10)  # the 9 left spread over the 20 s left
    p.observe(httpx.Headers({"ratelimit-limit": "100", "ratelimit-remaining": "0", "ratelimit-reset": "7"}))
    assert p.delay() == pytest.approx(7)
    fake.now += 7
    assert p.delay() == 0  # the window is over


def test_ratelimit_headers_pace_the_client_without_any_429():
    fake = FakeClock()

    async def scenario(sb, state, client):
        state.set_fault(mode="ratelimit", limit=10, window_s=60)
        for _ in range(15):
            await client.get_service("PIJ90N7")
        return recorded(state, "getService")

    reqs = run_with_sandbox(scenario, fake=fake)
    assert [r["status"] for r in reqs] == [200] * 15
    assert [r["ratelimit"]["remaining"] for r in reqs[:10]] == list(range(9, -1, -1))
    t = [r["t"] for r in reqs]
    assert t[8] == t[0]  # no pause while plenty is left
    assert t[9] - t[8] == pytest.approx(30, abs=1)  # 1 left, 30 s left: spaced out
    assert t[10] - t[0] >= 60  # at 0 remaining it waited for the reset
    assert sum(fake.sleeps) == pytest.approx(t[-1] - t[0])


def test_429_with_headers_waits_for_reset_then_succeeds():
    fake = FakeClock()

    async def scenario(sb, state, client):
        state.set_fault(mode="429", headers=True, reset=7, operation_id="listTeams")
        teams = await client.list_teams()
        return teams, recorded(state, "listTeams")

    teams, reqs = run_with_sandbox(scenario, fake=fake)
    assert teams
    assert [r["status"] for r in reqs] == [429, 200]
    assert len(fake.sleeps) == 1 and 7 <= fake.sleeps[0] <= 7.25
    assert reqs[1]["t"] - reqs[0]["t"] == pytest.approx(fake.sleeps[0])


def test_429_without_headers_backs_off_with_jitter():
    def attempt(seed):
        fake = FakeClock()

        async def scenario(sb, state, client):
            state.set_fault(mode="429", headers=False, count=2)
            await client.list_users()
            return [r["status"] for r in recorded(state, "listUsers")], [r["fault"] for r in recorded(state)]

        statuses, faults = run_with_sandbox(scenario, fake=fake, rng=random.Random(seed))
        return statuses, faults, fake.sleeps

    statuses, faults, sleeps = attempt(1)
    assert statuses == [429, 429, 200] and faults[:2] == ["429-no-headers"] * 2
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # floor 1 s, doubling, half jittered
    assert attempt(2)[2] != sleeps  # jitter: another seed, other pauses


def test_5xx_retried_then_success():
    fake = FakeClock()

    async def scenario(sb, state, client):
        state.set_fault([{"mode": "500", "count": 1}, {"mode": "503", "body": "plain"}])
        users = await client.list_users()
        return users, recorded(state, "listUsers")

    users, reqs = run_with_sandbox(scenario, fake=fake)
    assert users and [r["status"] for r in reqs] == [500, 503, 200]
    assert len(fake.sleeps) == 2 and fake.sleeps[1] > fake.sleeps[0] * 0.5


def test_5xx_gives_up_after_max_attempts():
    fake = FakeClock()

    async def scenario(sb, state, client):
        state.set_fault(mode="502", count=10)
        with pytest.raises(ServerError) as e:
            await client.get_team("PQ9K7I8")
        return e.value, recorded(state, "getTeam")

    err, reqs = run_with_sandbox(scenario, fake=fake, retry=RetryPolicy(max_attempts=3))
    assert err.status == 502 and err.attempts == 3 and len(reqs) == 3


def test_post_not_retried_on_500_but_on_503():
    fake = FakeClock()

    async def scenario(sb, state, client):
        state.set_fault(mode="500", operation_id="createIncidentNote")
        with pytest.raises(ServerError):
            await client.create_incident_note("PINC001", "first")
        n500 = len(recorded(state, "createIncidentNote"))
        state.set_fault(mode="503", operation_id="createIncidentNote")
        note = await client.create_incident_note("PINC001", "second")
        return n500, note, recorded(state, "createIncidentNote")

    n500, note, reqs = run_with_sandbox(scenario, fake=fake, seed=incident_fixture())
    assert n500 == 1  # the note may have been written: no blind retry
    assert note["content"] == "second" and [r["status"] for r in reqs] == [500, 503, 200]


def test_timeout_retried_and_refused_connection_gives_transport_error():
    async def scenario(sb, state, client):
        state.set_fault(mode="slow", delay_ms=2000, operation_id="listEscalationPolicies")
        eps = await client.list_escalation_policies()
        return eps, recorded(state, "listEscalationPolicies")

    eps, reqs = run_with_sandbox(scenario, fake=FakeClock(), timeout_s=0.3)
    assert eps and len(reqs) == 2 and reqs[0]["fault"] == "slow" and reqs[1]["status"] == 200

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake = FakeClock()

    async def refused():
        async with PagerDutyREST(api_key=KEY, base_url=f"http://127.0.0.1:{port}", allow_private=True,
                                 sleep=fake.sleep, clock=fake.monotonic, rng=random.Random(1)) as client:
            with pytest.raises(PagerDutyTransportError) as e:
                await client.list_services()
            return e.value

    err = asyncio.run(refused())
    assert err.attempts == 5 and "connection error" in str(err) and len(fake.sleeps) == 4


def test_error_mapping_not_found_forbidden_and_invalid():
    async def scenario(sb, state, client):
        state.set_tokens(valid=[KEY], read_only=[KEY])
        with pytest.raises(NotFoundError) as nf:
            await client.get_service("PNOSUCH")
        with pytest.raises(ForbiddenError) as fb:
            await client.acknowledge_incident("PINC001")
        state.set_tokens()
        await client.resolve_incident("PINC001")
        with pytest.raises(InvalidInputError) as inv:
            await client.acknowledge_incident("PINC001")
        return nf.value, fb.value, inv.value, recorded(state, "updateIncident")

    nf, fb, inv, updates = run_with_sandbox(scenario, seed=incident_fixture())
    assert (nf.status, nf.code) == (404, 2100)
    assert (fb.status, fb.code) == (403, 2010)
    assert (inv.status, inv.code, inv.message) == (400, 1001, "Incident Already Resolved")
    assert "Incident Already Resolved" in str(inv) and "PUT /incidents/PINC001" in str(inv)
    assert [r["status"] for r in updates] == [403, 200, 400]  # none of them retried


# ------------------------------------------------------------------------------------------------
# incidents and webhook subscriptions through the sandbox
# ------------------------------------------------------------------------------------------------

def test_incident_acknowledge_reassign_note_resolve():
    async def scenario(sb, state, client):
        steps = {"initial": await client.get_incident("PINC001")}
        steps["ack"] = await client.acknowledge_incident("PINC001")
        steps["to_user"] = await client.reassign_incident("PINC001", user_ids=["PUSER02"])
        steps["level2"] = await client.reassign_incident("PINC001", escalation_level=2)
        steps["note"] = await client.create_incident_note("PINC001", "rolled back the deploy")
        steps["resolved"] = await client.resolve_incident("PINC001", resolution="bad deploy")
        steps["final"] = await client.get_incident("PINC001")
        notes = await client.get("/incidents/PINC001/notes")
        return steps, notes

    steps, notes = run_with_sandbox(scenario, seed=incident_fixture())
    def assignees(inc):
        return [a["assignee"]["id"] for a in inc["assignments"]]

    assert steps["initial"]["status"] == "triggered" and assignees(steps["initial"]) == ["PUSER01"]
    assert steps["ack"]["status"] == "acknowledged"
    assert steps["ack"]["acknowledgements"][0]["acknowledger"]["id"] == "PBOT001"
    assert assignees(steps["to_user"]) == ["PUSER02"] and steps["to_user"]["status"] == "triggered"
    assert steps["level2"]["escalation_level"] == 2 and assignees(steps["level2"]) == ["PUSER02"]
    assert steps["note"]["content"] == "rolled back the deploy" and steps["note"]["user"]["id"] == "PBOT001"
    assert steps["final"]["status"] == "resolved" and steps["final"]["resolved_at"]
    assert [n["content"] for n in notes["notes"]] == ["rolled back the deploy", "bad deploy"]


def test_webhook_subscription_create_list_delete():
    async def scenario(sb, state, client):
        created = await client.create_webhook_subscription(
            "https://hooks.example.com/pd", filter_type="service", filter_id="PIJ90N7",
            events=["incident.triggered", "incident.resolved"], custom_headers={"X-Env": "prod"})
        listed = await client.list_webhook_subscriptions(filter_type="service", filter_id="PIJ90N7")
        one = await client.get_webhook_subscription(created.id)
        with pytest.raises(InvalidInputError) as bad_event:
            await client.create_webhook_subscription("https://h.example.com", filter_type="account",
                                                     events=["incident.exploded"])
        with pytest.raises(InvalidInputError):
            await client.create_webhook_subscription("https://h.example.com", filter_type="team",
                                                     filter_id="PNOTEAM", events=["incident.triggered"])
        await client.delete_webhook_subscription(created.id)
        after = await client.list_webhook_subscriptions()
        with pytest.raises(NotFoundError):
            await client.delete_webhook_subscription(created.id)
        return created, state.webhook_secret(created.id), listed, one, bad_event.value, after

    created, stored_after_delete, listed, one, bad_event, after = run_with_sandbox(scenario)
    assert isinstance(created.secret, Secret) and len(created.secret.get()) == 64
    assert "secret" not in created.subscription["delivery_method"]
    assert created.secret.get() not in repr(created)
    assert stored_after_delete is None
    assert [s["id"] for s in listed] == [created.id]
    assert listed[0]["delivery_method"]["secret"] is None
    assert one["delivery_method"]["custom_headers"] == [{"name": "X-Env", "value": "-- redacted --"}]
    assert "incident.exploded" in " ".join(bad_event.errors)
    assert created.id not in {s["id"] for s in after}


def test_webhook_secret_is_returned_once():
    async def scenario(sb, state, client):
        created = await client.create_webhook_subscription("https://hooks.example.com/pd", filter_type="account",
                                                           events=["incident.triggered"])
        return created, state.webhook_secret(created.id), await client.get_webhook_subscription(created.id)

    created, stored, fetched = run_with_sandbox(scenario)
    assert created.secret.get() == stored
    assert fetched["delivery_method"]["secret"] is None


# ------------------------------------------------------------------------------------------------
# every request the client makes passes the sandbox's spec validation
# ------------------------------------------------------------------------------------------------

def test_every_client_call_passes_spec_validation():
    fixture = incident_fixture()
    fixture["schedules"] = [{"id": "PSCHED1", "name": "Payments primary"}]
    fixture["teams"] = [{"id": "PTEAM01", "name": "Payments"}]
    fixture["oncalls"] = [{"user_id": "PUSER01", "escalation_policy_id": "PEPOL01", "schedule_id": "PSCHED1",
                           "escalation_level": 1, "start": "2020-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}]

    async def scenario(sb, state, client):
        await client.list_services(query="pay", team_ids=["PTEAM01"], include=["escalation_policies"])
        await client.get_service("PSVC001", include=["teams"])
        await client.list_escalation_policies(user_ids=["PUSER01"], include=["teams"])
        await client.get_escalation_policy("PEPOL01")
        await client.list_schedules(query="pay", since="2024-01-01T00:00:00Z", until="2024-01-02T00:00:00Z")
        sched = await client.get_schedule("PSCHED1", since="2024-01-01T00:00:00Z", until="2024-01-08T00:00:00Z")
        oc = await client.list_oncalls(escalation_policy_ids=["PEPOL01"], schedule_ids=["PSCHED1"],
                                       user_ids=["PUSER01"], earliest=True, include=["users"])
        await client.list_users(query="ada", team_ids=None)
        await client.get_user("PUSER01")
        await client.list_teams(query="pay")
        await client.get_team("PTEAM01")
        await client.list_audit_records(since="2020-01-01T00:00:00Z", until="2030-01-01T00:00:00Z")
        await client.get_incident("PINC001", include=["assignees"])
        await client.acknowledge_incident("PINC001")
        await client.reassign_incident("PINC001", escalation_policy_id="PEPOL01")
        await client.create_incident_note("PINC001", "note")
        await client.resolve_incident("PINC001", resolution="done")
        w = await client.create_webhook_subscription("https://hooks.example.com/x", filter_type="team",
                                                     filter_id="PTEAM01", events=["incident.triggered"])
        await client.list_webhook_subscriptions(filter_type="team")
        await client.get_webhook_subscription(w.id)
        await client.delete_webhook_subscription(w.id)
        # control: the same sandbox does reject a request that breaks the spec
        async with httpx.AsyncClient(base_url=sb.url) as c:
            bad = await c.get("/oncalls", params={"escalation_policy_ids": "PEPOL01", "earliest": "maybe"},
                              headers={"Authorization": f"Token token={KEY}", "Accept": ACCEPT,
                                       "Content-Type": "application/json"})
        return state.find_requests(), sched, oc, bad

    reqs, sched, oc, bad = run_with_sandbox(scenario, seed=fixture)
    client_reqs = reqs[:-1]
    assert [(r["operation_id"], r["status"]) for r in client_reqs if r["status"] >= 300] == []
    assert {r["operation_id"] for r in client_reqs} == {
        "listServices", "getService", "listEscalationPolicies", "getEscalationPolicy", "listSchedules",
        "getSchedule", "listOnCalls", "listUsers", "getUser", "listTeams", "getTeam", "listAuditRecords",
        "getIncident", "updateIncident", "createIncidentNote", "createWebhookSubscription",
        "listWebhookSubscriptions", "getWebhookSubscription", "deleteWebhookSubscription"}
    assert [e["user"]["id"] for e in sched["final_schedule"]["rendered_schedule_entries"]] == ["PUSER01"]
    assert [e["user"]["id"] for e in oc] == ["PUSER01"]
    assert bad.status_code == 400
    errs = " ".join(bad.json()["error"]["errors"])
    assert "escalation_policy_ids[]" in errs and "earliest" in errs


# ------------------------------------------------------------------------------------------------
# Redis cache
# ------------------------------------------------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def run_with_cache(scenario, **cache_kw):
    import redis.asyncio as aioredis
    from prometheus_client import CollectorRegistry
    from redis.exceptions import RedisError

    from pagerstream.pagerduty.cache import PagerDutyCache

    prefix = f"pstest:pdcache:{uuid.uuid4().hex[:10]}"

    async def inner(sb, state, client):
        r = aioredis.from_url(REDIS_URL)
        try:
            try:
                await r.ping()
            except (OSError, RedisError) as e:  # pragma: no cover - environment problem, not a test result
                pytest.fail(f"Redis at {REDIS_URL} is not reachable: {type(e).__name__}")
            cache = PagerDutyCache(client, r, prefix=prefix, registry=CollectorRegistry(), **cache_kw)
            try:
                return await scenario(sb, state, client, cache, r, prefix)
            finally:
                keys = [k async for k in r.scan_iter(match=prefix + ":*")]
                if keys:
                    await r.delete(*keys)
        finally:
            await r.aclose()

    return run_with_sandbox(inner, seed=incident_fixture())


def test_cache_hits_misses_ttls_and_invalidation():
    async def scenario(sb, state, client, cache, r, prefix):
        out = {}
        out["first"] = await cache.list_services()
        out["second"] = await cache.list_services()
        out["api_lists"] = len(recorded(state, "listServices"))
        svc1 = await cache.get_service("PSVC001")
        await cache.get_service("PSVC001")
        await cache.list_oncalls(escalation_policy_ids=["PEPOL01"])
        await cache.list_oncalls(escalation_policy_ids=["PEPOL01"])
        out["counts_before"] = {k: cache.counts(k) for k in ("services", "oncalls")}
        out["rate"] = cache.hit_rate()
        keys = [k.decode() async for k in r.scan_iter(match=prefix + ":*")]
        out["keys"] = keys
        out["ttl_oncalls"] = max([await r.ttl(k) for k in keys if ":oncalls:list:" in k])
        out["ttl_services"] = min([await r.ttl(k) for k in keys if ":services:item:" in k])
        # the service changes in PagerDuty; a webhook handler invalidates it
        state.collections["services"]["PSVC001"]["name"] = "payments-api-v2"
        assert (await cache.get_service("PSVC001"))["name"] == svc1["name"]  # still cached
        out["dropped"] = await cache.invalidate("services", "PSVC001")
        out["fresh"] = await cache.get_service("PSVC001")
        await cache.list_services()
        out["api_lists_after"] = len(recorded(state, "listServices"))
        # a schedule change drops the cached on-calls too
        await cache.invalidate("schedules")
        await cache.list_oncalls(escalation_policy_ids=["PEPOL01"])
        out["counts_after"] = {k: cache.counts(k) for k in ("services", "oncalls")}
        return out

    out = run_with_cache(scenario)
    assert out["first"] == out["second"] and out["api_lists"] == 1
    assert out["counts_before"] == {"services": (2, 2), "oncalls": (1, 1)}
    assert out["rate"] == pytest.approx(3 / 6)
    assert all(KEY not in k and KEY[-8:] not in k for k in out["keys"])
    assert 0 < out["ttl_oncalls"] <= 60 and out["ttl_services"] > 60
    assert out["dropped"] == 2  # the item and the list that contains it
    assert out["fresh"]["name"] == "payments-api-v2"
    assert out["api_lists_after"] == 2
    assert out["counts_after"] == {"services": (3, 4), "oncalls": (1, 2)}


def test_cache_does_not_store_what_was_invalidated_during_the_read():
    async def scenario(sb, state, client, cache, r, prefix):
        async def load_then_invalidate():
            value = await client.list_teams()
            await cache.invalidate("teams")  # e.g. a webhook arrived while the API call was in flight
            return value

        await cache._cached("teams", None, {"q": 1}, load_then_invalidate)
        stored = await r.exists(cache.key_for("teams", None, {"q": 1}))
        await cache._cached("teams", None, {"q": 1}, client.list_teams)
        stored_later = await r.exists(cache.key_for("teams", None, {"q": 1}))
        return stored, stored_later

    assert run_with_cache(scenario) == (0, 1)


def test_cache_refuses_incidents_and_unknown_types():
    async def scenario(sb, state, client, cache, r, prefix):
        with pytest.raises(ValueError):
            await cache.invalidate("incidents")
        with pytest.raises(ValueError):
            await cache._cached("incidents", "PINC001", {}, lambda: client.get_incident("PINC001"))
        return not hasattr(cache, "get_incident") and cache.hit_rate() is None

    assert run_with_cache(scenario) is True


# ------------------------------------------------------------------------------------------------
# secrets stay out of logs, reprs and errors
# ------------------------------------------------------------------------------------------------

def test_token_never_logged_or_in_reprs(caplog):
    caplog.set_level(logging.DEBUG)  # every logger, httpx/httpcore included
    fake = FakeClock()

    async def scenario(sb, state, client):
        state.set_fault([{"mode": "429", "headers": False}, {"mode": "500"}])
        await client.list_services()
        state.set_tokens(valid=[OTHER_KEY])
        with pytest.raises(AuthenticationError) as e:
            await client.get_incident("PINC001")
        created = None
        state.set_tokens()
        created = await client.create_webhook_subscription("https://h.example.com/x", filter_type="account",
                                                           events=["incident.triggered"])
        return e.value, created, state.find_requests()

    err, created, reqs = run_with_sandbox(scenario, fake=fake, seed=incident_fixture())
    settings = RestSettings.from_env({"PAGERDUTY_API_KEY": KEY, "PAGERDUTY_USER_TOKEN": BEARER})
    client = PagerDutyREST.from_settings(settings)
    texts = [caplog.text, repr(err), str(err), repr(client), repr(settings), repr(created),
             json.dumps(reqs, default=str)]
    for text in texts:
        for secret in (KEY, BEARER, created.secret.get()):
            assert secret not in text
    assert "retry" in caplog.text  # the retries were logged, just without the token
    asyncio.run(client.aclose())


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def cli_env(sb, **extra):
    env = {"PAGERDUTY_API_KEY": KEY, "PAGERDUTY_API_URL": sb.url, "PAGERSTREAM_ALLOW_PRIVATE_PD_URL": "true",
           "PAGERDUTY_USER_TOKEN": None, "PAGERDUTY_REGION": None, "PAGERDUTY_FROM_EMAIL": None}
    env.update(extra)
    return env


def test_cli_webhooks_create_list_delete(caplog):
    from pagerstream.cli import main

    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    with pd_sandbox.SandboxServer() as sb:
        state = rest_state(sb.app)
        env = cli_env(sb)
        created = runner.invoke(main, ["pagerduty", "webhooks", "create", "--url", "https://hooks.example.com/pd",
                                       "--type", "service", "--filter-id", "PIJ90N7",
                                       "--events", "incident.triggered,incident.resolved"], env=env)
        assert created.exit_code == 0, created.output
        sub_id = next(w for w in state.webhooks.values() if w["delivery_method"]["url"].endswith("/pd"))["id"]
        secret = state.webhook_secret(sub_id)
        listed = runner.invoke(main, ["pagerduty", "webhooks", "list"], env=env)
        deleted = runner.invoke(main, ["pagerduty", "webhooks", "delete", sub_id], env=env)
        missing = runner.invoke(main, ["pagerduty", "webhooks", "delete", sub_id], env=env)
        no_filter = runner.invoke(main, ["pagerduty", "webhooks", "create", "--url", "https://x.example.com",
                                         "--type", "team"], env=env)
        body = state.find_requests(operation_id="createWebhookSubscription")[0]["body"]["webhook_subscription"]
    assert sub_id in created.output and created.output.count(secret) == 1
    assert "store it now" in created.output
    assert body["events"] == ["incident.triggered", "incident.resolved"]
    assert body["filter"] == {"type": "service_reference", "id": "PIJ90N7"}
    assert listed.exit_code == 0 and sub_id in listed.output and secret not in listed.output
    assert deleted.exit_code == 0 and sub_id in deleted.output
    assert missing.exit_code == 1 and "404" in missing.output
    assert no_filter.exit_code == 2 and "--filter-id" in no_filter.output
    assert secret not in caplog.text and KEY not in caplog.text


def test_cli_oncalls():
    from pagerstream.cli import main

    runner = CliRunner()
    with pd_sandbox.SandboxServer() as sb:
        state = rest_state(sb.app)
        state.seed(incident_fixture())
        state.seed({"oncalls": [{"user_id": "PUSER02", "escalation_policy_id": "PEPOL01", "escalation_level": 2,
                                 "start": None, "end": None}]})
        everyone = runner.invoke(main, ["pagerduty", "oncalls"], env=cli_env(sb))
        payments = runner.invoke(main, ["pagerduty", "oncalls", "--escalation-policy", "PEPOL01"], env=cli_env(sb))
        as_json = runner.invoke(main, ["pagerduty", "oncalls", "--escalation-policy", "PEPOL01", "--json"],
                                env=cli_env(sb))
        nobody = runner.invoke(main, ["pagerduty", "oncalls", "--escalation-policy", "PNOBODY"], env=cli_env(sb))
        queries = [r["query"] for r in state.find_requests(operation_id="listOnCalls")]
    assert everyone.exit_code == 0, everyone.output
    assert "Tim Wright" in everyone.output and "Bob Secondary" in everyone.output  # example + seeded
    assert "Bob Secondary" in payments.output and "Tim Wright" not in payments.output
    assert [e["user"]["id"] for e in json.loads(as_json.output)] == ["PUSER02"]
    assert "Nobody is on call" in nobody.output
    assert ["escalation_policy_ids[]", "PEPOL01"] in queries[1]


def test_cli_refuses_private_url_without_opt_in():
    from pagerstream.cli import main

    with pd_sandbox.SandboxServer() as sb:
        res = CliRunner().invoke(main, ["pagerduty", "oncalls"],
                                 env=cli_env(sb, PAGERSTREAM_ALLOW_PRIVATE_PD_URL=None))
        sent = rest_state(sb.app).find_requests()
    assert res.exit_code == 2 and "PAGERDUTY_API_URL" in res.output
    assert sent == []
