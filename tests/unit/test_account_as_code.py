"""Account as code (`pagerstream pagerduty import/export/validate/plan/apply`) against the REST sandbox.

The sandbox (streams/pd_rest_sandbox.py) validates every request against PagerDuty's OpenAPI spec and
enforces the referential rules of the spec's descriptions, so a wrong body or a wrong order fails there.
"Now" is Mon 2030-06-03 00:00 Europe/Berlin (2030-06-02T22:00:00Z) for the sandbox (maintenance window
states) and for plan/validate (on-call windows). The 429 test uses a fake clock shared by the client's
pacer and the sandbox's rate window: waits are checked as values, never timed.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pagerstream.streams import pd_sandbox
from pagerstream.streams.pd_rest_sandbox import load_rest_spec, rest_state

from pagerstream.pagerduty.account import (
    CREATABLE_INTEGRATION_TYPES,
    Scope,
    canonicalize,
    dump_yaml,
    import_account,
    load_file,
    load_yaml,
)
from pagerstream.pagerduty.account_plan import PlanRefused, apply_account, plan_account
from pagerstream.pagerduty.account_validate import RULES, validate
from pagerstream.pagerduty.rest import PagerDutyREST

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "account"
KEY = "u+pagerstreamTESTkey_0123456789-abc"
BOT = "oncall.bot@example.com"
NOW = datetime(2030, 6, 2, 22, 0, tzinfo=UTC)  # Mon 2030-06-03 00:00 in Berlin


class FakeClock:
    def __init__(self, start: float = 50_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def seed_body() -> dict:
    return yaml.safe_load((FIX / "seed.yaml").read_text(encoding="utf-8"))


def run(scenario, *, seed: dict | None = None, fake: FakeClock | None = None):
    """Start the sandbox with an empty account (plus `seed`, default seed.yaml), a client pointed at it,
    and run `await scenario(state, client)`."""
    async def main():
        async with pd_sandbox.SandboxServer(host="127.0.0.1", port=0) as sb:
            state = rest_state(sb.app)
            state.reset(seed_examples=False)
            state.wallclock = lambda: NOW.timestamp()
            kw = {}
            if fake is not None:
                state.clock = fake.monotonic
                kw = {"clock": fake.monotonic, "sleep": fake.sleep}
            state.seed(seed_body() if seed is None else seed)
            client = PagerDutyREST(base_url=sb.url, allow_private=True, api_key=KEY, from_email=BOT,
                                   rng=random.Random(5), **kw)
            try:
                return await scenario(state, client)
            finally:
                await client.aclose()

    return asyncio.run(main())


def writes(state) -> list[dict]:
    return [r for r in state.find_requests() if r["method"] != "GET"]


def rejected(state) -> list[dict]:
    """Requests the sandbox refused (spec validation or referential rules), injected faults aside."""
    return [(r["method"], r["path"], r["status"], r["errors"]) for r in state.find_requests()
            if r["status"] >= 400 and r["fault"] is None]


def strip_ids(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    for kind in ("users", "teams", "schedules", "escalation_policies", "services", "maintenance_windows"):
        for obj in doc[kind]:
            obj.pop("id", None)
            for lay in obj.get("layers", []):
                lay.pop("id", None)
            for i in obj.get("integrations", []):
                i.pop("id", None)
    return doc


# ------------------------------------------------------------------------------------------------
# import, canonical form, round trip
# ------------------------------------------------------------------------------------------------

def test_import_reads_the_seeded_account_by_name():
    async def scenario(state, client):
        doc, fid = await import_account(client)
        return doc, fid.report(), dump_yaml(doc), state.collections["integrations"]["PINT001"]["integration_key"], \
            writes(state), rejected(state)

    doc, report, text, integration_key, sent, bad = run(scenario)
    assert sent == [] and bad == []
    assert [u["email"] for u in doc["users"]] == ["ann@example.com", "bob@example.com", "carl@example.com", BOT]
    sched = next(s for s in doc["schedules"] if s["name"] == "Payments primary")
    assert sched["id"] == "PSCH001"
    # GET lists the highest layer first; the document lists Layer 1 (the base) first
    assert [(lay["name"], lay["id"]) for lay in sched["layers"]] == [("Base", "PLAY001"), ("Business hours", "PLAY002")]
    assert sched["layers"][1]["users"] == ["ann@example.com", "bob@example.com"]
    ep = next(e for e in doc["escalation_policies"] if e["name"] == "Payments EP")
    assert ep["teams"] == ["Payments"]
    assert [r["targets"] for r in ep["rules"]] == [[{"schedule": "Payments primary"}], [{"user": "carl@example.com"}]]
    svc = {s["name"]: s for s in doc["services"]}
    assert svc["old-service"]["escalation_policy"] == "Old EP"
    assert svc["ledger"]["status"] == "active"  # 'critical' is derived, not configuration
    assert [(i["name"], i["type"]) for i in svc["payments-api"]["integrations"]] == [
        ("Events API v2", "events_api_v2_inbound_integration"), ("Legacy hook", "custom_thing_inbound_integration")]
    team = next(t for t in doc["teams"] if t["name"] == "Payments")
    assert team["members"] == [{"user": "ann@example.com", "role": "manager"},
                               {"user": "bob@example.com", "role": "responder"}]
    # ended maintenance windows are not configuration any more
    assert [m["key"] for m in doc["maintenance_windows"]] == ["DB upgrade", "Cancelled work"]
    assert doc["maintenance_windows"][0]["services"] == ["payments-api"]
    # fidelity: unknown integration type, derived status, read-only fields dropped; keys never exported
    assert "custom_thing_inbound_integration" in report and "cannot create" in report
    assert "service 'ledger': status 'critical' is derived" in report
    assert "contact_methods (1x, read-only)" in report and "integration_key (1x, read-only)" in report
    assert integration_key and integration_key not in text


def test_round_trip_import_export_import_is_identical():
    async def scenario(state, client):
        first, _ = await import_account(client)
        text1 = dump_yaml(first)
        exported = dump_yaml(load_yaml(text1))
        before = len(writes(state))
        plan, result = await apply_account(client, load_yaml(text1), now=NOW, days=14)
        second, _ = await import_account(client)
        return text1, exported, dump_yaml(second), plan, result, len(writes(state)) - before

    text1, exported, text2, plan, result, new_writes = run(scenario)
    assert exported == text1
    assert text2 == text1
    assert plan.empty and result.writes == [] and new_writes == 0
    assert "name: Payments primary" in text1 and "- schedule: Payments primary" in text1


def test_canonical_form_of_a_hand_written_document():
    doc = load_file(str(FIX / "desired.yaml"))
    text = dump_yaml(doc)
    assert dump_yaml(load_yaml(text)) == text  # canonical form is a fixed point
    again = yaml.safe_load(text)
    assert list(again) == ["version", "users", "teams", "schedules", "escalation_policies", "services",
                           "maintenance_windows"]
    assert [u["email"] for u in again["users"]] == ["ann@example.com", "bob@example.com", "dana@example.com", BOT]
    lay = again["schedules"][0]["layers"][0]
    assert lay["name"] == "Base"  # layer order is meaning: kept
    assert lay["start"] == "2030-01-01T00:00:00+01:00"  # Z converted into the schedule's zone
    assert again["schedules"][0]["layers"][1]["restrictions"] == [
        {"type": "daily_restriction", "start_time_of_day": "09:00:00", "duration_seconds": 28800}]
    ledger = next(e for e in again["escalation_policies"] if e["name"] == "Ledger EP")
    assert ledger["rules"][0]["targets"] == [{"user": "bob@example.com"}, {"schedule": "Payments primary"}]
    mw = {m["key"]: m for m in again["maintenance_windows"]}
    assert mw["DB upgrade"]["start_time"] == "2030-06-04T20:00:00Z"  # +02:00 converted to UTC
    assert mw["Network work"]["services"] == ["ledger", "payments-api"]
    assert [i["name"] for i in again["services"][1]["integrations"]] == ["Events API v2", "Legacy hook", "Mail"]


# ------------------------------------------------------------------------------------------------
# plan
# ------------------------------------------------------------------------------------------------

# Worked out by hand: Base (24/7) moves from Carl to Dana; Business hours (09:00-17:00 Berlin, daily turns
# from Mon 00:00) was Ann on Monday and Bob on Tuesday, the document swaps them. Two days from Mon 00:00.
# People are shown by their names in the document (Bob is renamed Robert there).
EXPECTED_TIMELINE = [
    "Mon 2030-06-03 00:00–09:00 moves from Carl Example to Dana Example",
    "Mon 2030-06-03 09:00–17:00 moves from Ann Example to Robert Example",
    "Mon 2030-06-03 17:00 – Tue 2030-06-04 09:00 moves from Carl Example to Dana Example",
    "Tue 2030-06-04 09:00–17:00 moves from Robert Example to Ann Example",
    "Tue 2030-06-04 17:00–24:00 moves from Carl Example to Dana Example",
]


def test_plan_lists_resource_and_field_changes_and_the_oncall_timeline():
    async def scenario(state, client):
        plan = await plan_account(client, load_file(str(FIX / "desired.yaml")), now=NOW, days=2)
        return plan, writes(state), rejected(state)

    plan, sent, bad = run(scenario)
    text = plan.render()
    assert sent == [] and bad == []  # planning only reads
    lines = [line.strip() for line in text.splitlines()]
    for expected in [
        "+ create user 'dana@example.com'",
        "~ update user 'bob@example.com' (PBOB001)",
        'name: "Bob Example" -> "Robert Example"',
        "- delete user 'carl@example.com' (PCAR001)",
        "~ update team 'Payments team' (PTEAM01)",
        'name: "Payments" -> "Payments team"',
        "- delete team 'Old team' (PTEAM02)",
        "~ update schedule 'Payments primary' (PSCH001)",
        "layers['Base'].users: [\"carl@example.com\"] -> [\"dana@example.com\"]",
        "- delete schedule 'Old schedule' (PSCH002)",
        "+ create escalation policy 'Ledger EP'",
        "rules[1].escalation_delay_in_minutes: 10 -> 5",
        "rules[2].targets: [{\"user\": \"carl@example.com\"}] -> [{\"user\": \"dana@example.com\"}]",
        "- delete escalation policy 'Old EP' (PEP0002)",
        'escalation_policy: "Payments EP" -> "Ledger EP"',
        'description: (unset) -> "Card payments API"',
        "- delete service 'old-service' (PSVC003)",
        "+ create integration 'payments-api/Mail'",
        "~ update maintenance window 'DB upgrade' (PMW0001)",
        'end_time: "2030-06-04T22:00:00Z" -> "2030-06-04T23:00:00Z"',
        "+ create maintenance window 'Network work'",
        "- delete maintenance window 'Cancelled work' (PMW0002)",
        "on-call changes in the next 2 days (Europe/Berlin):",
        "Plan: 4 to create, 7 to update, 6 to delete.",
    ]:
        assert expected in lines, f"missing {expected!r} in:\n{text}"
    sched = next(c for c in plan.changes if c.kind == "schedules" and c.action == "update")
    assert sched.timeline == EXPECTED_TIMELINE
    # the team rename is matched by id: the policy that names the team is not changed for it
    ep = next(c for c in plan.changes if c.key == "Payments EP")
    assert not any(f.path == "teams" for f in ep.fields)
    # nothing about users that did not change
    assert not any(c.key in ("ann@example.com", BOT) for c in plan.changes)


# ------------------------------------------------------------------------------------------------
# apply
# ------------------------------------------------------------------------------------------------

def test_apply_in_dependency_order_then_second_apply_writes_nothing():
    desired = load_file(str(FIX / "desired.yaml"))

    async def scenario(state, client):
        plan, result = await apply_account(client, desired, now=NOW, days=14)
        ops = [(r["method"], r["operation_id"], r["path"]) for r in writes(state)]
        after, _ = await import_account(client)
        n = len(writes(state))
        plan2, result2 = await apply_account(client, desired, now=NOW, days=14)
        dana = next(u["id"] for u in state.collections["users"].values() if u["email"] == "dana@example.com")
        return plan, result, ops, after, len(writes(state)) - n, plan2, result2, dana, rejected(state), state

    _plan, result, ops, after, second_writes, plan2, result2, dana, bad, state = run(scenario)
    assert bad == []
    assert [op[1] for op in ops] == [
        "createUser", "updateUser",
        "updateTeam", "updateTeamUser", "deleteTeamUser",
        "updateSchedule",
        "createEscalationPolicy", "updateEscalationPolicy",
        "updateService", "updateService",
        "createServiceIntegration",
        "createMaintenanceWindow", "updateMaintenanceWindow",
        # deletes in reverse dependency order
        "deleteMaintenanceWindow", "deleteService", "deleteEscalationPolicy", "deleteSchedule", "deleteTeam",
        "deleteUser",
    ], ops
    assert ("PUT", "updateTeamUser", f"/teams/PTEAM01/users/{dana}") in ops
    assert ("DELETE", "deleteTeamUser", "/teams/PTEAM01/users/PBOB001") in ops
    assert ("DELETE", "deleteUser", "/users/PCAR001") in ops
    assert len(result.writes) == len(ops)
    # the account now reads back as the document (ids aside)
    assert strip_ids(after) == strip_ids(desired)
    assert "PCAR001" not in state.collections["users"]
    assert state.collections["services"]["PSVC002"]["escalation_policy"]["summary"] == "Ledger EP"
    # second apply: nothing to do, no write call
    assert plan2.empty and result2.writes == [] and second_writes == 0


def test_apply_keeps_rotation_positions_unless_reset():
    async def scenario(state, client):
        doc, _ = await import_account(client)
        sched = next(s for s in doc["schedules"] if s["name"] == "Payments primary")
        hours = sched["layers"][1]
        hours["rotation_virtual_start"] = "2030-06-04T00:00:00+02:00"  # one turn later: Bob first
        only_rvs = await plan_account(client, doc, now=NOW, days=2)
        hours["restrictions"][0]["duration_seconds"] = 32400  # 09:00-18:00
        kept = await apply_account(client, doc, now=NOW, days=2)
        body_kept = writes(state)[-1]["body"]["schedule"]
        reset_plan = await plan_account(client, doc, now=NOW, days=2, reset_rotations=True)
        reset = await apply_account(client, doc, now=NOW, days=2, reset_rotations=True)
        body_reset = writes(state)[-1]["body"]["schedule"]
        return only_rvs, kept, body_kept, reset_plan, reset, body_reset

    only_rvs, kept, body_kept, reset_plan, reset, body_reset = run(scenario)
    assert only_rvs.empty  # a different rotation start alone changes nothing without --reset-rotations
    assert any("rotation_virtual_start" in n and "kept" in n for n in only_rvs.notes)
    hours_kept = next(lay for lay in body_kept["schedule_layers"] if lay["name"] == "Business hours")
    assert hours_kept["rotation_virtual_start"] == "2030-06-03T00:00:00+02:00"
    assert hours_kept["id"] == "PLAY002" and hours_kept["restrictions"][0]["duration_seconds"] == 32400
    change = next(c for c in reset_plan.changes if c.kind == "schedules")
    assert [str(f) for f in change.fields] == [
        ("layers['Business hours'].rotation_virtual_start: \"2030-06-03T00:00:00+02:00\" -> "
         "\"2030-06-04T00:00:00+02:00\"")]
    assert change.timeline == ["Mon 2030-06-03 09:00–18:00 moves from Ann Example to Bob Example",
                               "Tue 2030-06-04 09:00–18:00 moves from Bob Example to Ann Example"]
    hours_reset = next(lay for lay in body_reset["schedule_layers"] if lay["name"] == "Business hours")
    assert hours_reset["rotation_virtual_start"] == "2030-06-04T00:00:00+02:00"
    assert len(kept[1].writes) == 1 and len(reset[1].writes) == 1


def test_apply_rides_out_a_429_storm():
    fake = FakeClock()
    desired = load_file(str(FIX / "desired.yaml"))

    async def scenario(state, client):
        state.set_fault([
            {"mode": "ratelimit", "limit": 8, "window_s": 60},
            {"mode": "429", "count": 3, "method": "POST", "reset": 4},
            {"mode": "429", "count": 2, "operation_id": "updateSchedule", "reset": 7},
            {"mode": "429", "count": 2, "method": "DELETE", "headers": False},
        ])
        _plan, result = await apply_account(client, desired, now=NOW, days=14)
        state.set_fault({"mode": "clear"})
        after, _ = await import_account(client)
        return result, after, state.find_requests(), client.pacer.waits

    result, after, log, paced = run(scenario, fake=fake)
    injected = [r for r in log if r["fault"] in ("429", "429-no-headers")]
    assert len(injected) == 7
    for r in injected:  # each throttled call was sent again and then succeeded
        later = [x for x in log if x["id"] > r["id"] and x["method"] == r["method"] and x["path"] == r["path"]]
        assert any(x["status"] < 400 for x in later), r
    assert all(r["status"] < 400 or r["fault"] for r in log)  # nothing else failed
    assert strip_ids(after) == strip_ids(desired)
    assert len(result.writes) == 19
    # the client waited as the headers said (7 s reset) and paced itself on the 8-per-minute window
    assert any(abs(s - 7) < 0.3 for s in fake.sleeps)
    assert paced and max(paced) > 1
    assert not [r for r in log if r["fault"] == "rate"]  # pacing kept it under the window


# ------------------------------------------------------------------------------------------------
# validator
# ------------------------------------------------------------------------------------------------

def test_validator_catches_each_rule_and_explains_it():
    doc = load_file(str(FIX / "invalid.yaml"))
    problems = validate(doc, now=NOW, days=7)
    by_rule = {}
    for p in problems:
        by_rule.setdefault(p.rule, []).append(p)
    assert sorted(by_rule) == ["escalation-level-without-targets", "schedule-coverage-gap",
                               "service-without-escalation-policy"], [str(p) for p in problems]
    svc = sorted(str(p) for p in by_rule["service-without-escalation-policy"])
    assert "service 'misrouted'" in svc[0] and "'No such EP' is no escalation policy" in svc[0]
    assert "service 'orphan'" in svc[1] and "no escalation_policy is set" in svc[1]
    lvl = str(by_rule["escalation-level-without-targets"][0])
    assert "escalation policy 'Hollow EP' level 2" in lvl
    gap = str(by_rule["schedule-coverage-gap"][0])
    # Mon 09:00 + 104 h = Fri 17:00 New York; checked from Sun 18:00 EDT for 7 days
    assert "schedule 'Office hours only'" in gap
    assert "Sun 2030-06-02 18:00 – Mon 2030-06-03 09:00" in gap
    assert "Fri 2030-06-07 17:00 – Sun 2030-06-09 18:00" in gap and "America/New_York" in gap
    for p in problems:
        assert RULES[p.rule] in str(p)

    fixed = copy.deepcopy(doc)
    fixed["services"][0]["escalation_policy"] = "Hollow EP"
    fixed["services"][1]["escalation_policy"] = "Hollow EP"
    fixed["escalation_policies"][0]["rules"][1]["targets"] = [{"user": "ann@example.com"}]
    fixed["schedules"][0]["layers"][0].pop("restrictions")
    assert validate(canonicalize(fixed), now=NOW, days=7) == []


def test_validator_reports_typos_duplicates_and_bad_values():
    doc = load_file(str(FIX / "desired.yaml"))
    doc["services"][0]["descripton"] = "typo"
    doc["users"].append({"email": "ANN@example.com", "name": "Ann again"})
    doc["schedules"][0]["layers"][0]["rotation_turn_length_seconds"] = 0
    doc["services"][0]["integrations"].append({"name": "Other", "type": "made_up_inbound_integration"})
    problems = [str(p) for p in validate(canonicalize(doc), now=NOW, days=2)]
    assert any("[unknown-field]" in p and "'descripton'" in p for p in problems)
    assert any("[duplicate-key]" in p and "ann@example.com" in p for p in problems)
    assert any("[invalid-value]" in p and "rotation_turn_length_seconds" in p for p in problems)
    assert any("[integration-not-creatable]" in p and "made_up_inbound_integration" in p for p in problems)


def test_plan_and_apply_refuse_an_invalid_document_without_writing():
    async def scenario(state, client):
        doc = load_file(str(FIX / "desired.yaml"))
        del doc["services"][0]["escalation_policy"]
        with pytest.raises(PlanRefused) as refused:
            await apply_account(client, doc, now=NOW, days=14)
        return refused.value, writes(state)

    refused, sent = run(scenario)
    assert sent == []
    assert [p.rule for p in refused.problems] == ["service-without-escalation-policy"]


def test_creatable_integration_types_match_the_spec():
    spec = load_rest_spec()

    def deref(node):
        while isinstance(node, dict) and "$ref" in node:
            target = spec
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[int(part)] if isinstance(target, list) else target[part]
            node = target
        return node

    body = spec["paths"]["/services/{id}/integrations"]["post"]["requestBody"]["content"]["application/json"]
    integ = deref(body["schema"]["properties"]["integration"])
    enums = {v for part in integ.get("allOf", [integ]) for v in
             deref(part).get("properties", {}).get("type", {}).get("enum", [])}
    assert enums == CREATABLE_INTEGRATION_TYPES


# ------------------------------------------------------------------------------------------------
# tenants
# ------------------------------------------------------------------------------------------------

def tenant_doc(tenant: str, service: str) -> dict:
    return canonicalize({
        "version": 1, "tenant": tenant,
        "users": [{"email": "ann@example.com", "name": "Ann Example"}],
        "schedules": [{"name": "primary", "time_zone": "UTC", "layers": [
            {"name": "Layer 1", "start": "2030-01-01T00:00:00Z", "rotation_virtual_start": "2030-01-01T00:00:00Z",
             "rotation_turn_length_seconds": 86400, "users": ["ann@example.com"]}]}],
        "escalation_policies": [{"name": "default", "rules": [
            {"escalation_delay_in_minutes": 30, "targets": [{"schedule": "primary"}]}]}],
        "services": [{"name": service, "escalation_policy": "default"}],
        "maintenance_windows": [{"key": "patching", "description": "patching", "start_time": "2030-06-05T01:00:00Z",
                                 "end_time": "2030-06-05T02:00:00Z", "services": [service]}],
    })


def test_tenants_share_one_account_without_touching_each_other():
    seed = {"users": [{"id": "PBOT001", "name": "Oncall Bot", "email": BOT}]}

    async def scenario(state, client):
        a, b = tenant_doc("acme", "payments"), tenant_doc("globex", "payments")
        await apply_account(client, a, scope=Scope("acme"), now=NOW)
        await apply_account(client, b, scope=Scope("globex"), now=NOW)
        names = sorted(s["name"] for s in state.collections["services"].values())
        descs = sorted(m["description"] for m in state.collections["maintenance_windows"].values())
        imported, _ = await import_account(client, Scope("acme"))
        again = await plan_account(client, imported, scope=Scope("acme"), now=NOW)
        a2 = copy.deepcopy(a)
        a2["services"], a2["maintenance_windows"] = [], []
        plan = await plan_account(client, a2, scope=Scope("acme"), now=NOW)
        await apply_account(client, a2, scope=Scope("acme"), now=NOW)
        left = sorted(s["name"] for s in state.collections["services"].values())
        users = sorted(u["email"] for u in state.collections["users"].values())
        return names, descs, imported, again, plan, left, users, rejected(state)

    names, descs, imported, again, plan, left, users, bad = run(scenario, seed=seed)
    assert bad == []
    assert names == ["[acme] payments", "[globex] payments"]
    assert descs == ["[acme] patching", "[globex] patching"]
    assert imported["tenant"] == "acme"
    assert [s["name"] for s in imported["services"]] == ["payments"]
    assert imported["escalation_policies"][0]["name"] == "default"
    assert [u["email"] for u in imported["users"]] == ["ann@example.com"]  # only the users the tenant uses
    assert again.empty  # the acme document still matches what acme's import reads back
    deletes = [c.label for c in plan.changes if c.action == "delete"]
    assert deletes == ["service 'payments'", "maintenance window 'patching'"]
    assert left == ["[globex] payments"]
    assert users == ["ann@example.com", BOT]  # users are shared: a tenant never deletes them


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def cli_env(sb) -> dict:
    return {"PAGERDUTY_API_KEY": KEY, "PAGERDUTY_API_URL": sb.url, "PAGERSTREAM_ALLOW_PRIVATE_PD_URL": "true",
            "PAGERDUTY_FROM_EMAIL": BOT, "PAGERDUTY_USER_TOKEN": None, "PAGERDUTY_REGION": None}


def test_cli_import_export_validate_plan_apply(tmp_path, caplog):
    from pagerstream.cli import main

    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    out = tmp_path / "account.yaml"
    start = ["--start", NOW.isoformat()]
    with pd_sandbox.SandboxServer() as sb:
        state = rest_state(sb.app)
        state.reset(seed_examples=False)
        state.wallclock = lambda: NOW.timestamp()
        state.seed(seed_body())
        env = cli_env(sb)
        imported = runner.invoke(main, ["pagerduty", "import", "-o", str(out)], env=env)
        exported = runner.invoke(main, ["pagerduty", "export", "-f", str(out)], env=env)
        valid = runner.invoke(main, ["pagerduty", "validate", "-f", str(FIX / "desired.yaml"), *start], env=env)
        invalid = runner.invoke(main, ["pagerduty", "validate", "-f", str(FIX / "invalid.yaml"), *start], env=env)
        planned = runner.invoke(main, ["pagerduty", "plan", "-f", str(FIX / "desired.yaml"), "--days", "2", *start],
                                env=env)
        n = len(writes(state))
        declined = runner.invoke(main, ["pagerduty", "apply", "-f", str(FIX / "desired.yaml"), *start], env=env,
                                 input="n\n")
        declined_writes = len(writes(state)) - n
        applied = runner.invoke(main, ["pagerduty", "apply", "-f", str(FIX / "desired.yaml"), "--yes", *start],
                                env=env)
        n = len(writes(state))
        again = runner.invoke(main, ["pagerduty", "apply", "-f", str(FIX / "desired.yaml"), "--yes", *start],
                              env=env)
        again_writes = len(writes(state)) - n
        refused = runner.invoke(main, ["pagerduty", "plan", "-f", str(FIX / "invalid.yaml"), *start], env=env)
        key = state.collections["integrations"]["PINT001"]["integration_key"]
    assert imported.exit_code == 0, imported.output
    assert "Wrote" in imported.output and "Fidelity report:" in imported.output
    assert exported.exit_code == 0 and exported.output == out.read_text(encoding="utf-8")
    assert valid.exit_code == 0, valid.output
    assert invalid.exit_code == 1 and "[schedule-coverage-gap]" in invalid.output
    assert planned.exit_code == 0, planned.output
    assert EXPECTED_TIMELINE[1] in planned.output and "Plan: 4 to create, 7 to update, 6 to delete." in planned.output
    assert declined.exit_code == 0 and "Nothing changed." in declined.output and declined_writes == 0
    assert applied.exit_code == 0, applied.output
    assert "Applied: 19 write call(s)." in applied.output and "DELETE /users/PCAR001" in applied.output
    assert again.exit_code == 0 and "No changes" in again.output and again_writes == 0
    assert refused.exit_code == 1 and "Refused" in refused.output
    text = caplog.text + imported.output + applied.output + out.read_text(encoding="utf-8")
    assert KEY not in text and key not in text
    assert json.dumps(KEY) not in json.dumps(state.find_requests())
