"""Routing rules (pagerstream.pagerduty.routing), the on-call store (oncall_store) and the
`pagerstream pagerduty route` dry run.

Real components: Redis at REDIS_URL (unique key prefix per test, deleted afterwards) and the REST
sandbox (streams/pd_rest_sandbox.py) on loopback, which checks every request against PagerDuty's
OpenAPI spec. Time is passed in explicitly (fixed clocks); nothing waits or measures durations.
Expected reason lines and picks are worked out by hand from tests/fixtures/routing/*.yaml.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pagerstream.config import Secret
from pagerstream.pagerduty.oncall_store import (
    OnCallStore,
    Router,
    SchedulesAsCode,
    SchedulesError,
    run_refresher,
    snapshots_from_oncalls,
)
from pagerstream.pagerduty.routing import (
    IncidentContext,
    LevelOnCall,
    OnCallSnapshot,
    OnCallUser,
    OnCallView,
    RoutingConfigError,
    load_routing_config,
    load_routing_secrets,
    parse_routing_config,
    parse_routing_secrets,
    reassign_with_note,
    route,
    routing_secrets_from_env,
)

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "routing"
CONFIG = FIX / "routing.example.yaml"
SCHEDULES = FIX / "schedules.example.yaml"
SECRETS_FILE = FIX / "secrets.example.yaml"
ALERT = FIX / "alert.payments-db.yaml"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
BERLIN = ZoneInfo("Europe/Berlin")

SECRETS = load_routing_secrets(SECRETS_FILE)
CFG = load_routing_config(CONFIG, secrets=SECRETS)
SCHED = SchedulesAsCode.load(SCHEDULES)


def ctx(**kw) -> IncidentContext:
    return IncidentContext(**kw)


def cat(label: str | None, best: str | None = None, score: float = 0.9) -> tuple[dict, ...]:
    return ({"model": "classify.category", "label": label, "best": best or label, "score": score},)


def user(uid: str, name: str) -> OnCallUser:
    return OnCallUser(uid, name)


def view(policy: str, levels: dict[int, list[OnCallUser]], load: dict[str, int] | None = None,
         name: str | None = None) -> OnCallView:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    snap = OnCallSnapshot(policy, at, tuple(LevelOnCall(n, tuple(us)) for n, us in sorted(levels.items())),
                          "test", None, name)
    return OnCallView({policy: snap}, load or {})


# ---------------------------------------------------------------------------------------------
# rule matching
# ---------------------------------------------------------------------------------------------

MON_NOON = datetime(2026, 11, 30, 12, 0, tzinfo=BERLIN)  # Monday, inside Berlin business hours


def test_first_matching_rule_wins_with_its_reason():
    c = IncidentContext.from_dict({"service": "checkout", "team": "payments", "tier": 1, "severity": "critical",
                                   "scores": list(cat("security"))})
    d = route(CFG, c, MON_NOON)
    # sec-p1 (rule 1) and payments (rule 2) both match: the first one wins
    assert d.rule == "sec-p1"
    assert d.reason[0] == "tier 1 + category security → rule 'sec-p1'"
    assert (d.routing_key_name, d.escalation_policy_id, d.urgency) == ("security", "PSECEP1", "high")
    assert d.routing_key == SECRETS["security"]


def test_rule_skips_are_explained_in_order():
    c = ctx(service="checkout", team="payments", tier=2, severity="error", category="security")
    d = route(CFG, c, MON_NOON)
    assert d.rule == "payments"
    assert d.reason[:2] == ["rule 'sec-p1' skipped: tier 2 is not <=1", "team payments → rule 'payments'"]
    assert d.urgency == "high" and "urgency high (auto: severity error)" in d.reason


def test_default_route_and_inheritance_from_default():
    d = route(CFG, ctx(service="ledger", team="finance", tier=3, severity="warning"), MON_NOON)
    assert d.rule == "default"
    assert "no rule matched → default route" in d.reason
    assert (d.routing_key_name, d.escalation_policy_id, d.urgency) == ("catch-all", "PDEFEP1", "low")
    # low-noise names no escalation policy: it comes from the default route, and says so
    d = route(CFG, ctx(service="ledger", severity="info"), MON_NOON)
    assert (d.rule, d.routing_key_name, d.escalation_policy_id, d.urgency) == ("low-noise", "tickets", "PDEFEP1", "low")
    assert "escalation policy from the default route" in d.reason


def test_labels_regex_presence_and_severity_comparison():
    text = """
version: 1
routing:
  rules:
    - {name: pg, match: {labels: {component: "^postgres(-replica)?$", cluster: "*"}}, then: {routing_key: db}}
    - {name: loud, match: {severity: ">=error", service: [a, b]}, then: {routing_key: loud}}
  default: {routing_key: rest}
"""
    cfg = parse_routing_config(text)
    at = MON_NOON
    assert route(cfg, ctx(labels={"component": "postgres-replica", "cluster": "x"}), at).rule == "pg"
    assert route(cfg, ctx(labels={"component": "postgres-replica"}), at).rule == "default"  # cluster absent
    assert route(cfg, ctx(labels={"component": "postgresql", "cluster": "x"}), at).rule == "default"  # whole value
    assert route(cfg, ctx(service="b", severity="critical"), at).rule == "loud"
    assert route(cfg, ctx(service="b", severity="warning"), at).rule == "default"
    d = route(cfg, ctx(service="c", severity="error"), at)
    assert "rule 'loud' skipped: service c is not in [a, b]" in d.reason


def test_abstaining_classifier_category_is_not_used_and_says_so():
    c = IncidentContext.from_dict({"team": "x", "tier": 0, "scores": list(cat(None, best="security", score=0.41))})
    d = route(CFG, c, MON_NOON)
    assert c.category is None and d.rule == "default"
    assert d.reason[0] == "classifier abstained on category (best guess security 0.41): not used"


def test_incident_dataclass_context():
    from pagerstream.processors.alert import Alert
    from pagerstream.processors.incident import Incident

    inc = Incident(incident_id="g-1", state="triggered", version=1, pd_dedup_key="k", routing_key="r" * 32,
                   summary="db down", severity="critical", opened_at=0, last_trigger_at=0, last_activity_at=0,
                   members={}, service="checkout", team="payments", tier="1", scores=cat("database"))
    alert = Alert(id="a", raw_id="r", source="h", action="trigger", routing_key="r" * 32, dedup_key="k",
                  summary="s", severity="critical", origin="o", event_time=0, received_at=0,
                  labels={"skill": "k8s"})
    c = IncidentContext.from_incident(inc, alert)
    assert (c.service, c.team, c.tier, c.category, c.labels) == ("checkout", "payments", 1, "database", {"skill": "k8s"})
    assert CFG.needs_of(c) == ("k8s", "postgres", "payments")


def test_at_must_be_timezone_aware():
    with pytest.raises(ValueError, match="timezone-aware"):
        route(CFG, ctx(), datetime(2026, 11, 30, 12, 0))
    # epoch ms (Incident.opened_at) and ISO strings with offsets are accepted
    ms = int(MON_NOON.timestamp() * 1000)
    assert route(CFG, ctx(team="payments"), ms).business_hours is True
    assert route(CFG, ctx(team="payments"), "2026-11-28T03:00:00+01:00").business_hours is False


# ---------------------------------------------------------------------------------------------
# business hours, DST
# ---------------------------------------------------------------------------------------------

def test_business_hours_follow_local_clock_across_dst_berlin():
    c = ctx(team="payments", severity="warning")
    # Mon 2026-03-30 07:30Z = 09:30 CEST (after spring-forward): inside -> business-hours key
    d = route(CFG, c, datetime(2026, 3, 30, 7, 30, tzinfo=UTC))
    assert (d.business_hours, d.routing_key_name) == (True, "payments")
    # Fri 2026-03-27 07:30Z = 08:30 CET (before): outside -> after-hours key, and the reason says so
    d = route(CFG, c, datetime(2026, 3, 27, 7, 30, tzinfo=UTC))
    assert (d.business_hours, d.routing_key_name, d.urgency) == (False, "payments-after-hours", "high")
    assert d.reason[2] == ("outside business hours 'berlin' (Europe/Berlin Mon-Fri 09:00-18:00; "
                           "Fri 2026-03-27 08:30 local) → after-hours key 'payments-after-hours', urgency high")
    # autumn: Mon 2026-10-26 08:30Z = 09:30 CET inside; Fri 2026-10-23 06:45Z = 08:45 CEST outside
    assert route(CFG, c, datetime(2026, 10, 26, 8, 30, tzinfo=UTC)).business_hours is True
    assert route(CFG, c, datetime(2026, 10, 23, 6, 45, tzinfo=UTC)).business_hours is False


def test_when_business_hours_rule_new_york_dst():
    c = ctx(service="search-api", severity="error")
    # Mon 2026-03-09 12:30Z = 08:30 EDT (the day after the US switch): the daytime rule applies
    d = route(CFG, c, datetime(2026, 3, 9, 12, 30, tzinfo=UTC))
    assert d.rule == "search-daytime"
    assert d.reason[:2] == ["rule 'sec-p1' skipped: tier (unknown) is not <=1",
                            "rule 'payments' skipped: team (unknown) is not payments"]
    assert d.reason[2] == ("service search-api + severity error, inside business hours 'nyc' "
                           "(America/New_York Mon-Fri 08:00-17:00; Mon 2026-03-09 08:30 local) → rule 'search-daytime'")
    # Fri 2026-03-06 12:30Z = 07:30 EST: outside, the rule is skipped and the default applies
    d = route(CFG, c, datetime(2026, 3, 6, 12, 30, tzinfo=UTC))
    assert d.rule == "default"
    assert d.reason[2] == ("rule 'search-daytime' skipped: service search-api + severity error, but outside "
                           "business hours 'nyc' (America/New_York Mon-Fri 08:00-17:00; Fri 2026-03-06 07:30 local)")


def test_holidays_and_overnight_windows():
    c = ctx(team="payments")
    # Fri 2026-12-25 10:00 Berlin is a declared holiday
    assert route(CFG, c, datetime(2026, 12, 25, 10, 0, tzinfo=BERLIN)).routing_key_name == "payments-after-hours"
    text = """
version: 1
routing:
  calendars: {night: {time_zone: Asia/Tokyo, days: mon-fri, hours: "22:00-06:00"}}
  rules: [{name: night-shift, match: {}, when: business_hours, then: {routing_key: night}}]
  default: {routing_key: day}
"""
    cfg = parse_routing_config(text)
    tokyo = ZoneInfo("Asia/Tokyo")
    assert route(cfg, ctx(), datetime(2026, 11, 28, 3, 0, tzinfo=tokyo)).rule == "night-shift"  # Fri night's shift
    assert route(cfg, ctx(), datetime(2026, 11, 30, 3, 0, tzinfo=tokyo)).rule == "default"  # Sun night: closed
    assert route(cfg, ctx(), datetime(2026, 11, 30, 22, 0, tzinfo=tokyo)).rule == "night-shift"
    assert route(cfg, ctx(), datetime(2026, 11, 30, 6, 0, tzinfo=tokyo)).rule == "default"  # end is exclusive


ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "America/Sao_Paulo",
         "Europe/London", "Pacific/Auckland", "America/St_Johns", "Asia/Kathmandu", "UTC"]


@st.composite
def business_calendars(draw):
    tz = draw(st.sampled_from(ZONES))
    days = draw(st.sets(st.integers(0, 6), min_size=1, max_size=6))
    start = draw(st.integers(0, 23 * 60 + 58))
    end = draw(st.integers(start + 1, 24 * 60))
    return tz, sorted(days), start, end


def _bh_config(tz: str, days: list[int], start: int, end: int):
    names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    hours = f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
    text = f"""
version: 1
routing:
  calendars: {{office: {{time_zone: {tz}, days: [{', '.join(names[d] for d in days)}], hours: "{hours}"}}}}
  rules:
    - {{name: in-hours, match: {{service: svc}}, when: business_hours, then: {{routing_key: day}}}}
    - {{name: after-hours, match: {{service: svc}}, when: off_hours, then: {{routing_key: night}}}}
  default: {{routing_key: unreachable}}
"""
    return parse_routing_config(text)


def _instant(tz: ZoneInfo, d: date, minute_of_day: int, second: int) -> datetime | None:
    """The instant at which the local clock in tz shows d + minute_of_day (None if the clock skips it)."""
    naive = datetime.combine(d, time()) + timedelta(minutes=minute_of_day, seconds=second)
    aware = naive.replace(tzinfo=tz)
    if aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != naive:
        return None  # inside a spring-forward gap: no such local time
    return aware


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(cal=business_calendars(), day=st.dates(date(2020, 1, 1), date(2035, 12, 31)), frac=st.floats(0, 1),
       second=st.integers(0, 59), shown_in=st.sampled_from(ZONES))
def test_property_inside_declared_hours_always_routes_business_hours_rule(cal, day, frac, second, shown_in):
    tz_name, days, start, end = cal
    assume(day.weekday() in days)
    minute = min(end - 1, start + int(frac * (end - start)))
    at = _instant(ZoneInfo(tz_name), day, minute, second)
    assume(at is not None)
    d = route(_bh_config(tz_name, days, start, end), ctx(service="svc"), at.astimezone(ZoneInfo(shown_in)))
    assert d.rule == "in-hours", (at, d.reason)
    assert d.business_hours is True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(cal=business_calendars(), day=st.dates(date(2020, 1, 1), date(2035, 12, 31)),
       minute=st.integers(0, 24 * 60 - 1), second=st.integers(0, 59), shown_in=st.sampled_from(ZONES))
def test_property_outside_declared_hours_never_routes_business_hours_rule(cal, day, minute, second, shown_in):
    tz_name, days, start, end = cal
    assume(day.weekday() not in days or not start <= minute < end)
    at = _instant(ZoneInfo(tz_name), day, minute, second)
    assume(at is not None)
    d = route(_bh_config(tz_name, days, start, end), ctx(service="svc"), at.astimezone(ZoneInfo(shown_in)))
    assert d.rule == "after-hours", (at, d.reason)


# ---------------------------------------------------------------------------------------------
# config validation and secrets
# ---------------------------------------------------------------------------------------------

RAW_KEY = "ABCDEF0123456789ABCDEF0123456789"


def test_config_validation_lists_every_problem():
    text = f"""
version: 1
routing:
  calendars:
    office: {{time_zone: Europe/Berlinn, days: [mon, funday], hours: "9-17"}}
  rules:
    - name: a
      mach: {{team: x}}
      then: {{routing_key: {RAW_KEY}}}
    - name: a
      match: {{severity: fatal, service: "^(unclosed", tier: high}}
      when: {{business_hours: nowhere}}
      then: {{routing_key: ok, escalation_policy: "P 1", urgency: urgent, responders: {{levels: [0], assign: magic}}}}
    - match: {{team: y}}
      then: {{routing_key: ok, off_hours: {{calendar: moon}}}}
"""
    with pytest.raises(RoutingConfigError) as ei:
        parse_routing_config(text, file="bad.yaml")
    problems = dict(ei.value.problems)
    expected = {
        "routing.calendars.office.time_zone": "unknown time zone 'Europe/Berlinn'",
        "routing.calendars.office.days": "unknown day 'funday'",
        "routing.calendars.office.hours": "expected HH:MM-HH:MM",
        "routing.default": "missing",
        "routing.rules[0] 'a'.mach": "unknown key",
        "routing.rules[0] 'a'.then.routing_key": "looks like a routing key itself",
        "routing.rules[1] 'a'.name": "used twice",
        "routing.rules[1] 'a'.match.severity": "unknown severity 'fatal'",
        "routing.rules[1] 'a'.match.service": "bad regex",
        "routing.rules[1] 'a'.match.tier": "tier must be an integer",
        "routing.rules[1] 'a'.when": "unknown calendar 'nowhere'",
        "routing.rules[1] 'a'.then.escalation_policy": "escalation policy id",
        "routing.rules[1] 'a'.then.urgency": "expected high, low or auto",
        "routing.rules[1] 'a'.then.responders.levels": "escalation levels",
        "routing.rules[1] 'a'.then.responders.assign": "expected one of load, skills",
        "routing.rules[2].name": "every rule needs a name",
        "routing.rules[2].then.off_hours.calendar": "unknown calendar 'moon'",
    }
    for where, what in expected.items():
        assert where in problems, (where, sorted(problems))
        assert what in problems[where], (where, problems[where])
    assert len(ei.value.problems) == len(expected)
    assert "bad.yaml" in str(ei.value)
    assert RAW_KEY not in str(ei.value)  # never echo what looks like a secret


def test_config_validation_duplicate_yaml_keys_and_missing_secrets():
    with pytest.raises(RoutingConfigError, match="duplicate key 'rules'"):
        parse_routing_config("version: 1\nrouting:\n  rules: []\n  rules: []\n  default: {routing_key: x}\n")
    with pytest.raises(RoutingConfigError, match="no routing key for name.*payments-after-hours"):
        load_routing_config(CONFIG, secrets={k: v for k, v in SECRETS.items() if k != "payments-after-hours"})
    with pytest.raises(RoutingConfigError, match="assigns by skills but no responders"):
        parse_routing_config("version: 1\nrouting:\n  default: {routing_key: x, escalation_policy: P1, "
                             "responders: {assign: skills}}\n")


def test_secrets_are_never_shown():
    good = "QWERTY0123456789QWERTY0123456789"
    secrets = parse_routing_secrets(f"catch-all={good}, payments = {good[:-4]}ZZZZ")
    assert set(secrets) == {"catch-all", "payments"} and secrets["catch-all"].get() == good
    with pytest.raises(RoutingConfigError) as ei:
        parse_routing_secrets(f"x={good[:20]},={good}")
    assert good[:20] not in str(ei.value) and "entry 1 (x)" in str(ei.value) and "entry 2" in str(ei.value)
    assert routing_secrets_from_env({"PAGERSTREAM_ROUTING_KEYS": f"catch-all={good}"})["catch-all"] == Secret(good)

    cfg = parse_routing_config("version: 1\nrouting:\n  default: {routing_key: catch-all}\n", secrets=secrets)
    d = route(cfg, ctx(summary="x"), MON_NOON)
    assert d.routing_key.get() == good and d.routing_key_hint == "…6789"
    for text in (repr(d), str(d), json.dumps(d.to_dict()), d.note_text(), repr(cfg), " ".join(d.reason)):
        assert good not in text
    # a name missing from the map (non-strict use) routes by name and says the key is missing
    d = route(cfg.with_secrets({}, strict=False), ctx(), MON_NOON)
    assert d.routing_key is None and "routing key 'catch-all' is not in the secrets map" in d.reason


# ---------------------------------------------------------------------------------------------
# choosing the responder: load and skills
# ---------------------------------------------------------------------------------------------

ANN, BOB, CEM, DEV = user("PANN001", "ann"), user("PBOB001", "bob"), user("PCEM001", "cem"), user("PDEV001", "dev")


def test_single_on_call_reason_line():
    c = ctx(service="ledger", severity="critical")
    d = route(CFG, c, MON_NOON, view("PDEFEP1", {1: [ANN]}, {"PANN001": 2}, name="Catch-all"))
    assert d.responder.id == "PANN001" and d.responder.open_incidents == 2
    assert "on-call for EP Catch-all (PDEFEP1) level 1 (source: test): ann (PANN001), 2 open incidents" in d.reason


def test_load_aware_choice_among_level_one():
    c = ctx(service="ledger", severity="critical")  # default route: levels [1], by load
    d = route(CFG, c, MON_NOON, view("PDEFEP1", {1: [ANN, DEV]}, {"PANN001": 3, "PDEV001": 1}))
    assert d.responder.id == "PDEV001"
    assert d.reason[-1] == "picked dev (PDEV001): fewest open incidents (1 open incident)"
    # the load decides, not the order
    d = route(CFG, c, MON_NOON, view("PDEFEP1", {1: [DEV, ANN]}, {"PANN001": 0, "PDEV001": 5}))
    assert d.responder.id == "PANN001"
    # level 2 is not a candidate on the default route, however idle
    d = route(CFG, c, MON_NOON, view("PDEFEP1", {1: [ANN], 2: [DEV]}, {"PANN001": 9, "PDEV001": 0}))
    assert d.responder.id == "PANN001"


def test_max_open_makes_someone_unavailable():
    c = ctx(team="payments", service="other")  # payments rule: levels 1 and 2; no needs -> by load
    v = view("PPAYEP1", {1: [ANN], 2: [CEM]}, {"PANN001": 4, "PCEM001": 6})
    d = route(CFG, c, MON_NOON, v)
    assert d.responder.id == "PCEM001"  # ann is at her max_open of 4, even though cem has more
    assert "ann (PANN001) not available: 4 open ≥ max_open 4" in d.reason
    assert "no skills needed by this incident: choosing by load" in d.reason
    v = view("PPAYEP1", {1: [ANN]}, {"PANN001": 7})
    d = route(CFG, c, MON_NOON, v)
    assert d.responder.id == "PANN001" and "everyone on call is at max_open: picking the least loaded anyway" in d.reason


def test_skills_choice_beats_load_and_falls_back_to_load():
    base = {"team": "payments", "service": "orders", "severity": "error"}
    v = view("PPAYEP1", {1: [ANN, BOB], 2: [CEM]}, {"PANN001": 3, "PBOB001": 0, "PCEM001": 1})
    d = route(CFG, ctx(**base, labels={"skill": "postgres"}), MON_NOON, v)
    # ann and cem know postgres; cem has fewer open incidents
    assert d.responder.id == "PCEM001" and d.responder.matched_skills == ("postgres",)
    assert "incident needs postgres (label skill)" in d.reason
    assert d.reason[-1] == "picked cem (PCEM001): most matching skills (postgres: 1/1), 1 open incident"
    # nobody on call knows kafka+k8s together: ann (k8s) and bob (kafka) tie on 1 skill; bob is less loaded
    d = route(CFG, ctx(**base, labels={"skill": "kafka,k8s"}), MON_NOON, v)
    assert d.responder.id == "PBOB001"
    # nobody knows cobol: choose by load
    d = route(CFG, ctx(**base, labels={"skill": "cobol"}), MON_NOON, v)
    assert d.responder.id == "PBOB001" and "nobody available has any of cobol: choosing by load" in d.reason


def test_nobody_on_call_and_no_data():
    c = ctx(team="payments")
    d = route(CFG, c, MON_NOON, view("PPAYEP1", {}))
    assert d.responder is None and any(r.startswith("nobody on call for EP PPAYEP1 levels 1, 2") for r in d.reason)
    d = route(CFG, c, MON_NOON, OnCallView())
    assert d.responder is None and "escalation policy PPAYEP1: no on-call data; PagerDuty escalates by its policy" in d.reason
    d = route(CFG, c, MON_NOON)
    assert d.responder is None and "escalation policy PPAYEP1; on-call not consulted" in d.reason


# ---------------------------------------------------------------------------------------------
# schedules as code
# ---------------------------------------------------------------------------------------------

def test_schedules_as_code_snapshot_current_next_and_validation():
    snap = SCHED.snapshot("PPAYEP1", datetime(2026, 11, 28, 3, 0, tzinfo=BERLIN))
    l1, l2 = snap.levels
    handoff = datetime(2026, 11, 30, 9, 0, tzinfo=BERLIN)
    assert [u.name for u in l1.users] == ["bob"] and [u.name for u in l1.next_users] == ["ann"]
    assert l1.until == handoff and snap.valid_until == handoff
    assert [u.name for u in l2.users] == ["cem"] and l2.until is None
    assert SCHED.snapshot("PNOPE", handoff) is None
    with pytest.raises(SchedulesError) as ei:
        SchedulesAsCode.parse("escalation_policies: [{id: P1, escalation_rules: "
                              "[{targets: [{type: schedule_reference, id: PMISSING}]}]}]\n")
    assert "unknown schedule 'PMISSING'" in str(ei.value)


def test_snapshots_from_rest_oncalls():
    at = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

    def e(uid, level, start, end, ep="PEP1"):
        return {"user": {"id": uid, "summary": uid.lower()}, "escalation_level": level,
                "escalation_policy": {"id": ep, "summary": "EP one"}, "start": start, "end": end}

    snaps = snapshots_from_oncalls([
        e("PA", 1, "2026-05-01T08:00:00Z", "2026-05-01T16:00:00Z"),
        e("PB", 1, "2026-05-01T16:00:00Z", "2026-05-02T00:00:00Z"),
        e("PC", 2, None, None),
        e("PZ", 1, "2026-04-30T00:00:00Z", "2026-05-01T11:59:59Z"),  # already over
    ], at, ["PEP1", "PEP2"])
    s = snaps["PEP1"]
    assert s.policy_name == "EP one" and s.source == "rest"
    assert [u.id for u in s.level(1).users] == ["PA"] and [u.id for u in s.level(1).next_users] == ["PB"]
    assert s.level(1).until == datetime(2026, 5, 1, 16, 0, tzinfo=UTC) == s.valid_until
    assert [u.id for u in s.level(2).users] == ["PC"] and s.level(2).until is None
    assert snaps["PEP2"].levels == ()  # asked for, nobody on call


# ---------------------------------------------------------------------------------------------
# Redis: freshness, expiry, fallback, load
# ---------------------------------------------------------------------------------------------

class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def with_redis(scenario):
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    prefix = f"pstest:oncall:{uuid.uuid4().hex[:10]}"

    async def main():
        r = aioredis.from_url(REDIS_URL)
        try:
            try:
                await r.ping()
            except (OSError, RedisError) as e:  # pragma: no cover - environment problem
                pytest.fail(f"Redis at {REDIS_URL} is not reachable: {type(e).__name__}")
            return await scenario(r, prefix)
        finally:
            keys = [k async for k in r.scan_iter(match=prefix + ":*")]
            if keys:
                await r.delete(*keys)
            await r.aclose()

    return asyncio.run(main())


def test_refresh_stores_snapshot_that_expires_at_the_handoff():
    clock = Clock(datetime(2026, 11, 30, 8, 59, 0, tzinfo=BERLIN))  # bob's week ends at 09:00

    async def scenario(r, prefix):
        store = OnCallStore(r, schedules=SCHED, prefix=prefix, ttl_s=300, clock=clock)
        snaps = await store.refresh()
        out = {"refreshed": sorted(snaps)}
        key = f"{prefix}:default:ep:PPAYEP1"
        out["pttl"] = await r.pttl(key)
        out["fields"] = sorted(k.decode() for k in await r.hkeys(key))
        out["pttl_static"] = await r.pttl(f"{prefix}:default:ep:PSECEP1")  # no hand-off: ttl caps it
        store.schedules = None  # from here on, only Redis can answer
        out["cached"] = await store.who_is_on_call("PPAYEP1")
        clock.now = datetime(2026, 11, 30, 9, 0, 1, tzinfo=BERLIN)  # past the hand-off
        out["stale"] = await store.who_is_on_call("PPAYEP1")  # key may still exist; it is not fresh
        store.schedules = SCHED
        out["fallback"] = await store.who_is_on_call("PPAYEP1")
        out["again"] = await store.who_is_on_call("PPAYEP1")  # the fallback (about now) was stored
        # a what-if time is answered locally and not stored over the "now" entry
        out["future"] = await store.who_is_on_call("PPAYEP1", datetime(2026, 12, 7, 12, 0, tzinfo=BERLIN))
        out["after_future"] = await store.who_is_on_call("PPAYEP1")
        return out

    out = with_redis(scenario)
    assert out["refreshed"] == ["PDEFEP1", "PPAYEP1", "PSECEP1"]
    assert 0 < out["pttl"] <= 60_000  # expires at 09:00, not after the 300 s ttl
    assert 60_000 < out["pttl_static"] <= 300_000
    assert out["fields"] == ["level:1", "level:2", "meta"]
    assert out["cached"].source == "redis:schedules"
    assert [u.name for u in out["cached"].level(1).users] == ["bob"]
    assert [u.name for u in out["cached"].level(1).next_users] == ["ann"]
    assert out["stale"] is None
    assert out["fallback"].source == "schedules" and [u.name for u in out["fallback"].level(1).users] == ["ann"]
    assert out["again"].source == "redis:schedules" and [u.name for u in out["again"].level(1).users] == ["ann"]
    assert out["future"].source == "schedules" and [u.name for u in out["future"].level(1).users] == ["bob"]
    assert out["after_future"].source == "redis:schedules" and out["after_future"].level(1).users[0].name == "ann"


def test_redis_down_falls_back_to_schedules_and_unknown_load():
    import redis.asyncio as aioredis

    async def main():
        dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        try:
            store = OnCallStore(dead, schedules=SCHED, clock=Clock(MON_NOON.astimezone(UTC)))
            snap = await store.who_is_on_call("PPAYEP1")
            v = await store.view(["PPAYEP1"])
            return snap, v
        finally:
            await dead.aclose()

    snap, v = asyncio.run(main())
    assert snap.source == "schedules" and snap.level(1).users[0].name == "ann"
    assert v.load == {}
    d = route(CFG, ctx(team="payments", service="x"), MON_NOON, v)
    assert d.responder.id == "PANN001"  # level 1 before level 2 when loads are unknown
    assert "on-call for EP Payments (PPAYEP1) levels 1, 2 (source: schedules): ann (PANN001) at L1: load unknown; " \
           "cem (PCEM001) at L2: load unknown" in d.reason


def test_load_tracking_is_idempotent_moves_on_reassign_and_ages_out():
    clock = Clock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))

    async def scenario(r, prefix):
        s = OnCallStore(r, prefix=prefix, clock=clock, max_open_age=timedelta(days=7))
        out = {}
        out["first"] = await s.note_assignment("PANN001", "inc-1", True)
        out["replay"] = await s.note_assignment("PANN001", "inc-1", True)
        out["second"] = await s.note_assignment("PANN001", "inc-2", True)
        out["closed"] = await s.note_assignment("PANN001", "inc-1", False)
        await s.set_assignees("inc-2", ["PBOB001"])  # reassigned: moves from ann to bob
        out["after_move"] = await s.open_incidents(["PANN001", "PBOB001", "PCEM001"])
        out["loads"] = await s.loads()
        await s.note_assignment("PCEM001", "inc-3", True)
        await s.close_incident("inc-3")
        out["after_close"] = await s.open_incidents(["PCEM001"])
        clock.now += timedelta(days=8)  # inc-2's resolve never arrived
        out["aged"] = await s.open_incidents(["PBOB001"])
        return out

    out = with_redis(scenario)
    assert (out["first"], out["replay"], out["second"], out["closed"]) == (1, 1, 2, 1)
    assert out["after_move"] == {"PANN001": 0, "PBOB001": 1, "PCEM001": 0}
    assert out["loads"] == [("PBOB001", 1)]
    assert out["after_close"] == {"PCEM001": 0}
    assert out["aged"] == {"PBOB001": 0}


def test_router_uses_redis_loads_for_an_incident():
    from pagerstream.processors.incident import Incident

    at = datetime(2026, 11, 30, 10, 0, tzinfo=BERLIN)  # Monday: ann L1, cem L2
    clock = Clock(at.astimezone(UTC))
    ms = int(at.timestamp() * 1000)
    inc = Incident(incident_id="g-7", state="triggered", version=1, pd_dedup_key="k", routing_key="r" * 32,
                   summary="payments slow", severity="error", opened_at=ms, last_trigger_at=ms,
                   last_activity_at=ms, members={}, service="orders", team="payments", tier="2")

    async def scenario(r, prefix):
        store = OnCallStore(r, schedules=SCHED, prefix=prefix, clock=clock)
        await store.refresh(["PPAYEP1"])
        for i in range(3):
            await store.note_assignment("PANN001", f"i{i}", True)
        await store.note_assignment("PCEM001", "j0", True)
        return await Router(CFG, store).decide(inc)

    d = with_redis(scenario)
    assert (d.rule, d.routing_key_name, d.business_hours) == ("payments", "payments", True)
    assert d.responder.id == "PCEM001" and d.responder.open_incidents == 1
    assert "on-call for EP Payments (PPAYEP1) levels 1, 2 (source: redis:schedules): ann (PANN001) at L1: " \
           "3 open incidents; cem (PCEM001) at L2: 1 open incident" in d.reason
    assert d.reason[-1] == "picked cem (PCEM001): fewest open incidents (1 open incident)"


def test_refresher_loop_runs_and_stops():
    clock = Clock(MON_NOON.astimezone(UTC))

    async def scenario(r, prefix):
        store = OnCallStore(r, schedules=SCHED, prefix=prefix, clock=clock)
        stop = asyncio.Event()
        seen = []

        def on_refresh(snaps):
            seen.append(sorted(snaps))
            stop.set()

        await run_refresher(store, interval_s=3600, stop=stop, on_refresh=on_refresh)
        return seen, await store.cached("PSECEP1")

    seen, cached = with_redis(scenario)
    assert seen == [["PDEFEP1", "PPAYEP1", "PSECEP1"]]
    assert cached.level(1).users[0].name == "dev"


# ---------------------------------------------------------------------------------------------
# REST sandbox: on-call through the cached client, reassignment + note
# ---------------------------------------------------------------------------------------------

KEY = "u+routingTESTkey_0123456789-abc"
EMAIL = "router.bot@example.com"


def pd_fixture(now: datetime) -> dict:
    iso = lambda dt: dt.isoformat()
    return {
        "users": [{"id": "PBOT001", "name": "Router Bot", "email": EMAIL},
                  {"id": "PUSER01", "name": "Ada Responder", "email": "ada@example.com"},
                  {"id": "PUSER02", "name": "Bob Secondary", "email": "bob@example.com"}],
        "escalation_policies": [{"id": "PEPOL01", "name": "Payments EP", "escalation_rules": [
            {"id": "R1", "escalation_delay_in_minutes": 10, "targets": [{"id": "PUSER01", "type": "user_reference"}]},
            {"id": "R2", "escalation_delay_in_minutes": 10, "targets": [{"id": "PUSER02", "type": "user_reference"}]},
        ]}, {"id": "PEPOL02", "name": "Quiet EP", "escalation_rules": []}],
        "services": [{"id": "PSVC001", "name": "payments-api",
                      "escalation_policy": {"id": "PEPOL01", "type": "escalation_policy_reference"}}],
        "incidents": [{"id": "PINC001", "title": "payments 5xx", "service_id": "PSVC001"}],
        "oncalls": [
            {"user_id": "PUSER01", "escalation_policy_id": "PEPOL01", "escalation_level": 1,
             "start": iso(now - timedelta(hours=1)), "end": iso(now + timedelta(hours=1))},
            {"user_id": "PUSER02", "escalation_policy_id": "PEPOL01", "escalation_level": 1,
             "start": iso(now + timedelta(hours=1)), "end": iso(now + timedelta(hours=9))},
            {"user_id": "PUSER02", "escalation_policy_id": "PEPOL01", "escalation_level": 2,
             "start": None, "end": None},
        ],
    }


def with_sandbox(scenario):
    from pagerstream.streams import pd_sandbox
    from pagerstream.streams.pd_rest_sandbox import rest_state

    from pagerstream.pagerduty.rest import PagerDutyREST

    async def main():
        async with pd_sandbox.SandboxServer(host="127.0.0.1", port=0) as sb:
            state = rest_state(sb.app)
            now = state.now().replace(microsecond=0)
            state.seed(pd_fixture(now))
            client = PagerDutyREST(api_key=KEY, from_email=EMAIL, base_url=sb.url, allow_private=True,
                                   rng=random.Random(3))
            try:
                return await scenario(sb, state, client, now)
            finally:
                await client.aclose()

    return asyncio.run(main())


def test_rest_fallback_through_cache_is_stored_in_redis():
    from prometheus_client import CollectorRegistry

    from pagerstream.pagerduty.cache import PagerDutyCache

    def inner(sb, state, client, now):
        async def scenario(r, prefix):
            cache = PagerDutyCache(client, r, prefix=prefix + ":pdcache", registry=CollectorRegistry())
            store = OnCallStore(r, rest=cache, prefix=prefix)
            first = await store.who_is_on_call("PEPOL01")
            second = await store.who_is_on_call("PEPOL01")
            n_after_two = len(state.find_requests(operation_id="listOnCalls"))
            refreshed = await store.refresh(["PEPOL01", "PEPOL02"])
            queries = [q["query"] for q in state.find_requests(operation_id="listOnCalls")]
            return first, second, n_after_two, refreshed, queries
        return with_redis_async(scenario)

    first, second, n, refreshed, queries = with_sandbox(inner)
    assert first.source == "rest" and first.policy_name == "Payments EP"
    l1 = first.level(1)
    assert [u.name for u in l1.users] == ["Ada Responder"] and [u.name for u in l1.next_users] == ["Bob Secondary"]
    assert l1.until == first.valid_until
    assert abs((l1.until - first.at).total_seconds() - 3600) < 5  # Ada's entry ends an hour after "now"
    assert [u.id for u in first.level(2).users] == ["PUSER02"]
    assert second.source == "redis:rest" and second.level(1).users == l1.users
    assert n == 1  # the second answer came from Redis
    assert sorted(refreshed) == ["PEPOL01", "PEPOL02"] and refreshed["PEPOL02"].levels == ()
    assert ["escalation_policy_ids[]", "PEPOL02"] in queries[-1] and ["escalation_policy_ids[]", "PEPOL01"] in queries[-1]


async def _redis_scenario(scenario):
    import redis.asyncio as aioredis

    prefix = f"pstest:oncall:{uuid.uuid4().hex[:10]}"
    r = aioredis.from_url(REDIS_URL)
    try:
        await r.ping()
        return await scenario(r, prefix)
    finally:
        keys = [k async for k in r.scan_iter(match=prefix + ":*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()


def with_redis_async(scenario):
    return _redis_scenario(scenario)


SANDBOX_CONFIG = """
version: 1
routing:
  rules:
    - {name: payments-api, match: {service: payments-api}, then: {routing_key: payments,
       escalation_policy: PEPOL01, responders: {levels: [1, 2], assign: load}}}
  default: {routing_key: payments}
"""


def test_reassign_with_note_in_the_sandbox():
    cfg = parse_routing_config(SANDBOX_CONFIG, secrets={"payments": "PAYKEYTEST0000000000000000000PAY"})

    def inner(sb, state, client, now):
        async def scenario(r, prefix):
            store = OnCallStore(r, rest=client, prefix=prefix)
            await store.note_assignment("PUSER01", "PEARLIER", True)
            await store.note_assignment("PUSER01", "PEARLIER2", True)
            decision = await Router(cfg, store).decide(ctx(service="payments-api", incident_id="PINC001"), now)
            before = [a["assignee"]["id"] for a in state.collections["incidents"]["PINC001"]["assignments"]]
            res = await reassign_with_note(client, "PINC001", decision, store=store)
            again = await reassign_with_note(client, "PINC001", decision, store=store)
            load = await store.open_incidents(["PUSER01", "PUSER02"])
            return decision, before, res, again, load
        return with_redis_async(scenario)

    decision, before, res, again, load = with_sandbox(inner)
    assert before == ["PUSER01"]  # PagerDuty assigned level 1 when the incident was created
    assert decision.responder.id == "PUSER02"  # Ada has 2 open incidents, Bob (level 2) none
    assert res.reassigned and res.assignees == ("PUSER02",) and res.note_id
    assert not again.reassigned and again.skipped == "already assigned to Bob Secondary (PUSER02)" and not again.note_id
    assert load == {"PUSER01": 2, "PUSER02": 1}


def test_reassign_changes_assignment_and_adds_note_in_sandbox_state():
    cfg = parse_routing_config(SANDBOX_CONFIG, secrets={"payments": "PAYKEYTEST0000000000000000000PAY"})

    def inner(sb, state, client, now):
        async def scenario():
            store = OnCallStore(None, rest=client)
            decision = await Router(cfg, store).decide(ctx(service="payments-api"), now)
            # Ada and Bob both at 0 known load (no Redis): level 1 wins
            assert decision.responder.id == "PUSER01"
            # send it to the escalation policy's level 2 person explicitly instead
            from dataclasses import replace
            d2 = replace(decision, responder=replace(decision.responder, id="PUSER02", name="Bob Secondary", level=2))
            res = await reassign_with_note(client, "PINC001", d2)
            inc = state.collections["incidents"]["PINC001"]
            puts = state.find_requests(operation_id="updateIncident")
            return res, inc, list(state.notes.get("PINC001", [])), puts
        return scenario()

    _res, inc, notes, puts = with_sandbox(inner)
    assert [a["assignee"]["id"] for a in inc["assignments"]] == ["PUSER02"]
    assert inc["assigned_via"] == "direct_assignment"
    assert len(notes) == 1
    content = notes[0]["content"]
    assert content.startswith("pagerstream routing: rule 'payments-api' -> Bob Secondary (PUSER02)\n")
    assert "- service payments-api → rule 'payments-api'" in content
    assert "PAYKEYTEST0000000000000000000PAY" not in content and "routing key 'payments'" in content
    assert puts[-1]["body"]["incident"]["assignments"] == [{"assignee": {"id": "PUSER02", "type": "user_reference"}}]


def test_reassign_skips_resolved_incident():
    cfg = parse_routing_config(SANDBOX_CONFIG)

    def inner(sb, state, client, now):
        async def scenario():
            await client.resolve_incident("PINC001")
            d = cfg.route(ctx(service="payments-api"), now, view("PEPOL01", {1: [user("PUSER02", "Bob")]}))
            return await reassign_with_note(client, "PINC001", d), state.notes.get("PINC001", [])
        return scenario()

    res, notes = with_sandbox(inner)
    assert not res.reassigned and res.skipped == "incident is resolved" and notes == []


# ---------------------------------------------------------------------------------------------
# CLI dry run
# ---------------------------------------------------------------------------------------------

WORKED_EXAMPLE = """\
Routing decision at 2026-11-28T03:00:00+01:00: rule 'payments'
  routing key:       payments-after-hours …AH42
  escalation policy: PPAYEP1 (Payments)
  urgency:           high
  would page:        cem (PCEM001), level 2, load unknown
Why:
  1. rule 'sec-p1' skipped: category database is not security
  2. team payments → rule 'payments'
  3. outside business hours 'berlin' (Europe/Berlin Mon-Fri 09:00-18:00; Sat 2026-11-28 03:00 local) → after-hours key 'payments-after-hours', urgency high
  4. routing key 'payments-after-hours'
  5. urgency high
  6. incident needs postgres (label skill + category database), payments (service checkout)
  7. on-call for EP Payments (PPAYEP1) levels 1, 2 (source: schedules): bob (PBOB001) at L1: load unknown, skills 1/2; cem (PCEM001) at L2: load unknown, skills 2/2
  8. picked cem (PCEM001): most matching skills (postgres, payments: 2/2), load unknown
"""


def test_cli_route_worked_example_offline():
    from pagerstream.cli import main

    res = CliRunner().invoke(main, ["pagerduty", "route", "--config", str(CONFIG), "--alert", str(ALERT),
                                    "--at", "2026-11-28T03:00:00+01:00", "--oncall-from", str(SCHEDULES),
                                    "--secrets", str(SECRETS_FILE)])
    assert res.exit_code == 0, res.output
    assert res.output == WORKED_EXAMPLE
    assert SECRETS["payments-after-hours"].get() not in res.output


def test_cli_route_json_alert_secrets_from_env_and_no_oncall(tmp_path):
    from pagerstream.cli import main

    alert = tmp_path / "sample.json"
    alert.write_text(json.dumps({"service": "ledger", "tier": 3, "severity": "warning"}))
    key = "ENVKEYTEST0000000000000000000ENV"
    res = CliRunner().invoke(main, ["pagerduty", "route", "--config", str(CONFIG), "--alert", str(alert),
                                    "--at", "2026-11-30T12:00:00+01:00", "--json"],
                             env={"PAGERSTREAM_ROUTING_KEYS": f"catch-all={key}"})
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert (out["rule"], out["routing_key_name"], out["routing_key_hint"]) == ("default", "catch-all", "…0ENV")
    assert out["responder"] is None and "escalation policy PDEFEP1; on-call not consulted" in out["reason"]
    assert key not in res.output


def test_cli_route_against_rest_sandbox():
    from pagerstream.streams import pd_sandbox
    from pagerstream.streams.pd_rest_sandbox import rest_state

    from pagerstream.cli import main

    with pd_sandbox.SandboxServer() as sb:
        state = rest_state(sb.app)
        state.seed({"users": [{"id": u, "name": n, "email": f"{n}@example.com"}
                              for u, n in (("PANN001", "ann"), ("PBOB001", "bob"), ("PCEM001", "cem"))],
                    "escalation_policies": [{"id": "PPAYEP1", "name": "Payments", "escalation_rules": []}]})
        state.seed({"oncalls": [{"user_id": "PBOB001", "escalation_policy_id": "PPAYEP1", "escalation_level": 1,
                                 "start": None, "end": None},
                                {"user_id": "PANN001", "escalation_policy_id": "PPAYEP1", "escalation_level": 2,
                                 "start": None, "end": None}]})
        env = {"PAGERDUTY_API_KEY": KEY, "PAGERDUTY_API_URL": sb.url, "PAGERSTREAM_ALLOW_PRIVATE_PD_URL": "true",
               "PAGERDUTY_USER_TOKEN": None, "PAGERDUTY_REGION": None, "PAGERDUTY_FROM_EMAIL": None}
        res = CliRunner().invoke(main, ["pagerduty", "route", "--config", str(CONFIG), "--alert", str(ALERT),
                                        "--at", "2026-11-30T10:00:00+01:00", "--oncall-from", "rest",
                                        "--secrets", str(SECRETS_FILE)], env=env)
        queries = [q["query"] for q in state.find_requests(operation_id="listOnCalls")]
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1] == "  routing key:       payments …0PAY"
    assert lines[2] == "  escalation policy: PPAYEP1 (Payments)"
    # postgres + payments needed: ann (L2) has postgres only, bob (L1) payments only: tie on skills and
    # load -> level 1 first
    assert lines[4] == "  would page:        bob (PBOB001), level 1, load unknown"
    assert any("(source: rest)" in x for x in lines)
    assert ["escalation_policy_ids[]", "PPAYEP1"] in queries[0]
    assert KEY not in res.output


def test_cli_route_reports_config_problems():
    from pagerstream.cli import main

    runner = CliRunner()
    with runner.isolated_filesystem():
        Path("bad.yaml").write_text("version: 1\nrouting:\n  rules: [{name: x, then: {urgency: loud}}]\n")
        res = runner.invoke(main, ["pagerduty", "route", "--config", "bad.yaml", "--alert", str(ALERT)])
    assert res.exit_code == 2
    assert "invalid routing config (bad.yaml)" in res.output
    assert "routing.default: missing" in res.output
    assert "routing.rules[0] 'x'.then.urgency: expected high, low or auto" in res.output


def test_fixture_files_are_valid_yaml_documents():
    for f in FIX.glob("*.yaml"):
        assert yaml.safe_load(f.read_text()) is not None, f
