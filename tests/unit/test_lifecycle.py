"""processors/lifecycle.py: the pagerstream <-> PagerDuty join state, lifecycles and their analytics.

Inputs are built like the decoded Avro records the agent sees (IncidentEvent, PagerDutyWebhook).
Times are explicit epoch milliseconds, so nothing here depends on the clock.
"""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pagerstream.processors import lifecycle as L
from pagerstream.schemas import AvroCodec


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


def inc_event(iid: str, version: int, change: str, at: int, *, key: str = "dk-1", pd_action: str | None = None,
              detail: str | None = None, state: str = "triggered", opened_at: int | None = None,
              resolved_at: int | None = None, total_alerts: int = 1, duplicates: int = 0, service: str = "checkout",
              team: str = "payments", severity: str = "critical") -> dict[str, Any]:
    return {"event_id": f"{iid}#{version}", "incident_id": iid, "version": version, "change": change,
            "state": state, "pd_dedup_key": key, "service": service, "team": team, "severity": severity,
            "summary": "p99 latency high", "opened_at": opened_at if opened_at is not None else at,
            "acknowledged_at": None, "resolved_at": resolved_at, "total_alerts": total_alerts,
            "duplicates": duplicates, "at": at, "pagerduty_action": pd_action, "change_detail": detail}


def hook(eid: str, etype: str, at: int, *, pd_id: str = "PD1", key: str | None = "dk-1", agent: str | None = None,
         agent_type: str | None = None, assignees: tuple[str, ...] = (), status: str | None = None,
         created_at: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"id": pd_id, "type": "incident"}
    if created_at:
        data["created_at"] = created_at
    return {"event_id": eid, "event_type": etype, "resource_type": "incident", "data_type": "incident",
            "occurred_at": at, "incident_id": pd_id, "incident_number": 7, "incident_key": key,
            "incident_status": status, "title": "p99 latency high", "urgency": "high", "priority_name": "P1",
            "service_id": "PSVC", "assignee_ids": list(assignees), "agent_id": agent, "agent_type": agent_type,
            "payload_json": json.dumps({"event": {"id": eid, "data": data}})}


def fold(records: list[dict[str, Any]], key: str = "dk-1", entry: dict[str, Any] | None = None):
    changed = []
    for r in records:
        fact = L.incident_fact(r) if "pd_dedup_key" in r else L.webhook_fact(r)
        assert fact is not None
        entry, ch = L.apply_fact(entry, key, fact)
        changed.append(ch)
    return entry, changed


USER, SVC = "user_reference", "service_reference"
T = ms("2025-03-07T13:00:00")  # a Friday, 14:00 in Zurich
ZONES = {"PALICE": "Europe/Zurich", "PBOB": "America/New_York", "*": "UTC"}
TZ = L.tz_lookup(ZONES)


def story() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One incident: opened, paged; PagerDuty triggers (Alice), escalates to Bob, Bob acks, Alice acks
    too, a user resolves; pagerstream sees the source resolve."""
    ps = [inc_event("inc-1", 1, "opened", T, pd_action="trigger"),
          inc_event("inc-1", 2, "alert_added", T + 30_000, total_alerts=2, opened_at=T),
          inc_event("inc-1", 3, "duplicate", T + 40_000, total_alerts=2, duplicates=1, opened_at=T),
          inc_event("inc-1", 4, "resolved", T + 1_900_000, state="resolved", resolved_at=T + 1_900_000,
                    total_alerts=2, duplicates=1, opened_at=T, pd_action="resolve")]
    pd = [hook("E1", "incident.triggered", T + 5_000, assignees=("PALICE",), status="triggered"),
          hook("E2", "incident.escalated", T + 905_000, assignees=("PBOB",), status="triggered", agent="PALICE",
               agent_type=USER),
          hook("E3", "incident.acknowledged", T + 965_000, assignees=("PBOB",), status="acknowledged", agent="PBOB",
               agent_type=USER),
          hook("E4", "incident.acknowledged", T + 1_200_000, assignees=("PBOB",), status="acknowledged",
               agent="PALICE", agent_type=USER),
          hook("E5", "incident.resolved", T + 1_805_000, status="resolved", agent="PBOB", agent_type=USER)]
    return ps, pd


# --- periods and time zones --------------------------------------------------------------------------
@pytest.mark.parametrize("local, want", [
    ("2025-03-05T07:59", "sleep"), ("2025-03-05T08:00", "business"), ("2025-03-05T17:59", "business"),
    ("2025-03-05T18:00", "off"), ("2025-03-05T21:59", "off"), ("2025-03-05T22:00", "sleep"),
    ("2025-03-08T10:00", "off"), ("2025-03-08T23:30", "sleep"), ("2025-03-09T07:00", "sleep"),
    ("2025-03-09T21:00", "off"), ("2025-03-10T08:00", "business"),
])
def test_periods_follow_pagerduty_hours_in_local_time(local: str, want: str):
    from zoneinfo import ZoneInfo

    at = int(datetime.fromisoformat(local).replace(tzinfo=ZoneInfo("Europe/Zurich")).timestamp() * 1000)
    assert L.period_of(at, "Europe/Zurich") == want


def test_same_utc_time_changes_period_across_the_us_dst_switch():
    # 12:30 UTC is 07:30 EST (sleep) on Friday 7 March 2025 and 08:30 EDT (business) on Monday 10 March.
    assert L.period_of(ms("2025-03-07T12:30:00"), "America/New_York") == "sleep"
    assert L.period_of(ms("2025-03-10T12:30:00"), "America/New_York") == "business"
    # a fixed UTC-5 offset would have called Monday's page "sleep" too
    assert L.period_of(ms("2025-03-10T12:30:00"), "Etc/GMT+5") == "sleep"
    # Europe falls back on 26 October 2025: 16:30 UTC is 18:30 CEST (off) on Friday, 17:30 CET (business) Monday
    assert L.period_of(ms("2025-10-24T16:30:00"), "Europe/Berlin") == "off"
    assert L.period_of(ms("2025-10-27T16:30:00"), "Europe/Berlin") == "business"


def test_interruptions_split_by_period_across_dst_in_each_responders_zone():
    """Bob (New York) is paged at 12:30 UTC every day around the DST switch of 9 March 2025,
    Alice (Zurich, no switch until 30 March) at the same instants."""
    days = ["2025-03-07", "2025-03-08", "2025-03-09", "2025-03-10", "2025-03-11"]  # Fri..Tue
    ps = [inc_event("inc-1", 1, "opened", ms(days[0] + "T12:00:00"), pd_action="trigger")]
    pd = [hook("E0", "incident.triggered", ms(days[0] + "T12:30:00"), assignees=("PBOB", "PALICE"))]
    pd += [hook(f"E{i}", "incident.unacknowledged", ms(d + "T12:30:00"), assignees=("PBOB", "PALICE"))
           for i, d in enumerate(days[1:], 1)]
    entry, _ = fold(ps + pd)
    [lc] = L.lifecycles(entry, TZ)
    by_user: dict[str, list[str]] = {}
    for i in lc.interruptions:
        by_user.setdefault(i.user_id, []).append(i.period)
    # New York: Fri 07:30 EST sleep, Sat 07:30 sleep, Sun 08:30 EDT off, Mon 08:30 business, Tue 08:30 business
    assert by_user["PBOB"] == ["sleep", "sleep", "off", "business", "business"]
    # Zurich: 13:30 CET every day: business on weekdays, off at the weekend
    assert by_user["PALICE"] == ["business", "off", "off", "business", "business"]
    assert lc.interruption_counts() == {"business": 5, "off": 3, "sleep": 2}
    assert {i.tz for i in lc.interruptions if i.user_id == "PBOB"} == {"America/New_York"}


def test_unknown_responders_use_the_default_zone():
    assert TZ("PNOBODY") == "UTC"
    assert L.tz_lookup({})("PX") == "UTC"


def test_load_responder_timezones(tmp_path: Path):
    good = tmp_path / "tz.yaml"
    good.write_text("PALICE: Europe/Zurich\nPBOB: America/New_York\n'*': Asia/Tokyo\n")
    zones = L.load_responder_timezones(good)
    assert zones == {"PALICE": "Europe/Zurich", "PBOB": "America/New_York", "*": "Asia/Tokyo"}
    assert L.tz_lookup(zones)("PZ") == "Asia/Tokyo"
    bad = tmp_path / "bad.yaml"
    bad.write_text("PALICE: Europe/Zurch\nPBOB: 5\n")
    with pytest.raises(ValueError) as e:
        L.load_responder_timezones(bad)
    assert "Europe/Zurch" in str(e.value) and "PBOB" in str(e.value)


# --- MTTA / MTTR -------------------------------------------------------------------------------------
def test_mtta_and_mttr_are_measured_from_pagerduty_trigger():
    ps, pd = story()
    entry, changed = fold(ps + pd)
    assert all(changed)
    [lc] = L.lifecycles(entry, TZ)
    assert lc.triggered_at == T + 5_000  # PagerDuty's start, not pagerstream's opened_at
    assert lc.acknowledged_at == T + 965_000 and lc.acknowledged_by == "PBOB"  # the FIRST acknowledge
    assert lc.tta_ms == 960_000
    assert lc.ttr_ms == 1_800_000
    assert (lc.resolved_by, lc.resolved_by_type) == ("PBOB", USER)
    assert lc.escalations == 1 and lc.human_actions == 4
    assert lc.alerts_in == 3 and lc.paged and lc.resolution == "source_resolved"
    # Alice at trigger 14:00 CET (business), Bob at escalation 09:15 EST (business)
    assert lc.interruption_counts() == {"business": 2, "off": 0, "sleep": 0}
    types = [e["type"] for e in lc.events]
    assert types == ["opened", "incident.triggered", "alert_added", "duplicate", "incident.escalated",
                     "incident.acknowledged", "incident.acknowledged", "incident.resolved", "resolved"]


def test_created_at_is_the_start_when_the_payload_has_it():
    ps, pd = story()
    pd[2] = hook("E3", "incident.acknowledged", T + 965_000, status="acknowledged", agent="PBOB", agent_type=USER,
                 created_at="2025-03-07T13:00:04Z")
    entry, _ = fold(ps + pd)
    [lc] = L.lifecycles(entry, TZ)
    assert lc.triggered_at == T + 4_000 and lc.tta_ms == 961_000


def test_no_trigger_known_means_no_mtta_yet():
    ps, pd = story()
    entry, _ = fold(ps + [pd[2]])  # only the acknowledge arrived so far
    [lc] = L.lifecycles(entry, TZ)
    assert lc.pd_incident_ids == ("PD1",) and lc.triggered_at is None and lc.tta_ms is None


def test_mttr_waits_for_a_reopened_incident_to_resolve_again():
    ps, pd = story()
    pd += [hook("E6", "incident.reopened", T + 2_000_000, status="triggered", agent="PALICE", agent_type=USER,
                assignees=("PALICE",))]
    entry, _ = fold(ps + pd)
    [lc] = L.lifecycles(entry, TZ)
    assert lc.pd_status == "triggered" and lc.resolved_at is None and lc.ttr_ms is None
    entry, _ = fold([hook("E7", "incident.resolved", T + 2_600_000, status="resolved", agent="PALICE",
                          agent_type=USER)], entry=entry)
    [lc] = L.lifecycles(entry, TZ)
    assert lc.ttr_ms == 2_595_000 and lc.resolved_by == "PALICE"


# --- idempotence and order -----------------------------------------------------------------------------
def test_duplicates_change_the_state_once():
    ps, pd = story()
    entry, _ = fold(ps + pd)
    again, changed2 = fold(ps + pd + [pd[2], pd[0]], entry=entry)
    assert not any(changed2)
    assert again == entry
    assert L.lifecycles(again, TZ) == L.lifecycles(entry, TZ)


def _metric_totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold records one by one as the agent does and add up every metric delta."""
    entry: dict[str, Any] | None = None
    seen: dict[str, Any] = {}
    totals: dict[str, Any] = {}
    for r in records:
        fact = L.incident_fact(r) if "pd_dedup_key" in r else L.webhook_fact(r)
        entry, changed = L.apply_fact(entry, "dk-1", fact)
        if not changed:
            continue
        for lc in L.lifecycles(entry, TZ):
            seen[lc.lifecycle_id], d = L.metric_deltas(seen.get(lc.lifecycle_id), lc)
            for k, v in d.items():
                if k == "interruptions":
                    for p, n in v.items():
                        totals[f"int_{p}"] = totals.get(f"int_{p}", 0) + n
                else:
                    totals.setdefault(k, []).append(v) if k.endswith("seconds") else \
                        totals.__setitem__(k, totals.get(k, 0) + v)
    return totals


def test_reordered_and_duplicated_deliveries_give_the_same_lifecycle_and_metrics():
    ps, pd = story()
    pd = [p for p in pd if p["event_id"] != "E4"]  # one acknowledge, so the first-ack time is fixed
    clean = ps + pd
    entry, _ = fold(clean)
    want = [lc.to_record(0) for lc in L.lifecycles(entry, TZ)]
    want_metrics = _metric_totals(clean)
    assert want_metrics == {"alerts_in": 3, "incidents_out": 1, "mtta_seconds": [960.0], "mttr_seconds": [1800.0],
                            "escalations": 1, "int_business": 2}
    rng = random.Random(7)
    orders = list(itertools.permutations(pd))  # every order of the webhooks...
    for i, order in enumerate(orders):
        mixed = list(order) + ps
        rng.shuffle(mixed)  # ...interleaved anyhow with pagerstream's own events
        mixed += rng.sample(clean, 3)  # and some deliveries twice
        got, _ = fold(mixed)
        assert [lc.to_record(0) for lc in L.lifecycles(got, TZ)] == want, order
        assert _metric_totals(mixed) == want_metrics, [p["event_id"] for p in order]
    assert len(orders) == 24


def test_histograms_hear_the_first_acknowledge_even_when_a_later_one_is_delivered_first():
    ps, pd = story()
    e1, e2, e3, e4, e5 = pd
    late = ps + [e1, e2, e4, e3, e3, e5]  # Alice's later acknowledge arrives before Bob's first one
    assert _metric_totals(late)["mtta_seconds"] == [960.0]
    late = ps + [e1, e2, e5, e3, e3]  # resolve, then the acknowledge, twice
    assert _metric_totals(late)["mtta_seconds"] == [960.0]


# --- pairing -------------------------------------------------------------------------------------------
def test_webhooks_wait_for_their_pagerstream_incident():
    ps, pd = story()
    entry, _ = fold(pd)
    assert L.lifecycles(entry, TZ) == []  # PagerDuty only: nothing to publish yet
    entry, _ = fold(ps[:1], entry=entry)
    [lc] = L.lifecycles(entry, TZ)
    assert lc.pd_incident_ids == ("PD1",) and lc.tta_ms == 960_000


def test_one_dedup_key_through_several_incidents():
    """An alert that fires, resolves and fires again keeps its dedup key, in pagerstream and PagerDuty."""
    t2 = T + 7_200_000
    ps = [inc_event("inc-1", 1, "opened", T, pd_action="trigger"),
          inc_event("inc-1", 2, "resolved", T + 600_000, state="resolved", resolved_at=T + 600_000, opened_at=T,
                    pd_action="resolve"),
          inc_event("inc-2", 1, "opened", t2, pd_action="trigger"),
          # a third one held back as transient and cleared before paging: PagerDuty never saw it
          inc_event("inc-3", 1, "opened", t2 + 9_000_000, detail="paused"),
          inc_event("inc-3", 2, "resolved", t2 + 9_060_000, state="resolved", resolved_at=t2 + 9_060_000,
                    opened_at=t2 + 9_000_000, detail="resolved_while_paused")]
    pd = [hook("A1", "incident.triggered", T + 3_000, pd_id="PDA", assignees=("PALICE",)),
          hook("A2", "incident.resolved", T + 601_000, pd_id="PDA", status="resolved", agent="PSVC",
               agent_type=SVC),
          hook("B1", "incident.triggered", t2 + 2_000, pd_id="PDB", assignees=("PBOB",)),
          hook("B2", "incident.acknowledged", t2 + 62_000, pd_id="PDB", agent="PBOB", agent_type=USER)]
    entry, _ = fold(list(reversed(pd)) + ps)
    one, two, three = L.lifecycles(entry, TZ)
    assert (one.lifecycle_id, one.pd_incident_ids, one.ttr_ms) == ("inc-1", ("PDA",), 598_000)
    assert (two.lifecycle_id, two.pd_incident_ids, two.tta_ms, two.ttr_ms) == ("inc-2", ("PDB",), 60_000, None)
    assert three.pd_incident_ids == () and three.paused and not three.paged
    assert three.resolution == "resolved_while_paused"


def test_an_incident_pagerduty_never_saw_gets_no_pagerduty_incident():
    """PagerDuty was slow: the trigger of a paged incident lands after a later, paused one opened."""
    ps = [inc_event("inc-1", 1, "opened", T, pd_action="trigger"),
          inc_event("inc-1", 2, "resolved", T + 50_000, state="resolved", resolved_at=T + 50_000, opened_at=T,
                    pd_action="resolve"),
          inc_event("inc-2", 1, "opened", T + 100_000, detail="paused")]
    pd = [hook("L1", "incident.triggered", T + 200_000), hook("L2", "incident.resolved", T + 201_000,
                                                               status="resolved")]
    entry, _ = fold(ps + pd)
    one, two = L.lifecycles(entry, TZ)
    assert one.pd_incident_ids == ("PD1",) and two.pd_incident_ids == ()


# --- auto-resolution accuracy ----------------------------------------------------------------------------
def _auto(iid: str, at: int, *, key: str, paused: bool = False) -> list[dict[str, Any]]:
    if paused:
        return [inc_event(iid, 1, "opened", at, key=key, detail="paused"),
                inc_event(iid, 2, "resolved", at + 60_000, key=key, state="resolved", resolved_at=at + 60_000,
                          opened_at=at, detail="resolved_while_paused")]
    return [inc_event(iid, 1, "opened", at, key=key, pd_action="trigger"),
            inc_event(iid, 2, "auto_resolved", at + 300_000, key=key, state="resolved", resolved_at=at + 300_000,
                      opened_at=at, pd_action="resolve")]


def _verdicts(records: list[dict[str, Any]], key: str) -> dict[str, str | None]:
    entry, _ = fold(records, key=key)
    return {lc.lifecycle_id: lc.auto_resolution for lc in L.lifecycles(entry, TZ)}


def test_auto_resolution_verdicts():
    # auto-resolved, nobody touched it in PagerDuty: held
    assert _verdicts(_auto("a", T, key="k1") + [hook("X1", "incident.triggered", T + 2_000, key="k1", pd_id="P1"),
                                                 hook("X2", "incident.resolved", T + 301_000, key="k1", pd_id="P1",
                                                      status="resolved", agent="S", agent_type=SVC)], "k1") == \
        {"a": "held"}
    # auto-resolved, but a person had acknowledged it in PagerDuty: needed a human
    assert _verdicts(_auto("b", T, key="k2") + [hook("Y1", "incident.triggered", T + 2_000, key="k2", pd_id="P2"),
                                                 hook("Y2", "incident.acknowledged", T + 100_000, key="k2",
                                                      pd_id="P2", agent="PBOB", agent_type=USER)], "k2") == \
        {"b": "needed_human"}
    # resolved while paused, came back 20 minutes later and a person acknowledged it: needed a human
    back = T + 60_000 + 20 * 60_000
    recs = _auto("c", T, key="k3", paused=True) + [
        inc_event("c2", 1, "opened", back, key="k3", pd_action="trigger"),
        hook("Z1", "incident.triggered", back + 1_000, key="k3", pd_id="P3"),
        hook("Z2", "incident.acknowledged", back + 50_000, key="k3", pd_id="P3", agent="PBOB", agent_type=USER)]
    assert _verdicts(recs, "k3") == {"c": "needed_human", "c2": None}
    # ...but two hours later it is a new problem: the auto-resolution held
    late = T + 60_000 + 2 * 3_600_000
    recs = _auto("d", T, key="k4", paused=True) + [
        inc_event("d2", 1, "opened", late, key="k4", pd_action="trigger"),
        hook("W1", "incident.triggered", late + 1_000, key="k4", pd_id="P4"),
        hook("W2", "incident.acknowledged", late + 50_000, key="k4", pd_id="P4", agent="PBOB", agent_type=USER)]
    assert _verdicts(recs, "k4") == {"d": "held", "d2": None}
    # the source resolved it: not an auto-resolution at all
    ps, pd = story()
    assert _verdicts(ps + pd, "dk-1") == {"inc-1": None}


def test_accuracy_counts_only_decided_auto_resolutions():
    entries = []
    for key, recs in {"k1": _auto("a", T, key="k1"),
                      "k2": _auto("b", T, key="k2") + [
                          hook("Y1", "incident.triggered", T + 2_000, key="k2", pd_id="P2"),
                          hook("Y2", "incident.acknowledged", T + 100_000, key="k2", pd_id="P2", agent="PBOB",
                               agent_type=USER)],
                      "k3": _auto("c", T + 10 * 3_600_000, key="k3", paused=True),
                      "k5": _auto("e", T + 600_000, key="k5")}.items():
        entries.append(fold(recs, key=key)[0])
    lcs = [lc for e in entries for lc in L.lifecycles(e, TZ)]
    now = T + 10 * 3_600_000 + 120_000  # c was resolved a minute ago: still pending
    res = L.aggregate(lcs, since_ms=T - 1, until_ms=now, now_ms=now)["total"]["auto_resolution"]
    assert res == {"auto_resolved": 4, "needed_human": 1, "pending": 1, "accuracy": round(2 / 3, 4)}


# --- the analytics view -----------------------------------------------------------------------------------
def test_aggregate_by_service_noise_and_escalation_rate():
    ps, pd = story()
    e1, _ = fold(ps + pd)
    t = T + 3_600_000
    other = [inc_event("s-1", 1, "opened", t, key="dk-2", pd_action="trigger", service="search", team="discovery",
                       severity="warning"),
             inc_event("s-1", 2, "duplicate", t + 1, key="dk-2", duplicates=4, opened_at=t, service="search",
                       team="discovery", severity="warning"),
             hook("S1", "incident.triggered", t + 10_000, key="dk-2", pd_id="PS", assignees=("PBOB",)),
             hook("S2", "incident.acknowledged", t + 40_000, key="dk-2", pd_id="PS", agent="PBOB", agent_type=USER),
             hook("S3", "incident.resolved", t + 70_000, key="dk-2", pd_id="PS", status="resolved", agent="PBOB",
                  agent_type=USER)]
    e2, _ = fold(other, key="dk-2")
    lcs = L.lifecycles(e1, TZ) + L.lifecycles(e2, TZ)
    out = L.aggregate(lcs, since_ms=T, until_ms=T + 86_400_000, by=("service",), now_ms=T + 86_400_000)
    by = {g["service"]: g for g in out["groups"]}
    assert by["checkout"]["mtta_seconds"] == 960.0 and by["checkout"]["mttr_seconds"] == 1800.0
    assert by["search"]["mtta_seconds"] == 30.0 and by["search"]["mttr_seconds"] == 60.0
    assert by["search"]["alerts_in"] == 5 and by["search"]["noise_reduction"] == 0.8
    tot = out["total"]
    assert tot["incidents"] == 2 and tot["paged"] == 2 and tot["alerts_in"] == 8
    assert tot["noise_reduction"] == 0.75
    assert tot["mtta_seconds"] == 495.0 and tot["mttr_seconds"] == 930.0
    assert tot["escalation_rate"] == 0.5 and tot["escalations"] == 1
    assert tot["sums"] == {"tta_seconds": 990.0, "ttr_seconds": 1860.0}
    # since/until select by pagerstream's opened_at
    assert L.aggregate(lcs, since_ms=T + 1, until_ms=T + 86_400_000, now_ms=T)["total"]["incidents"] == 1
    two = L.aggregate(lcs, since_ms=T, until_ms=T + 86_400_000, by=("team", "severity"), now_ms=T)
    assert [(g["team"], g["severity"]) for g in two["groups"]] == [("discovery", "warning"), ("payments", "critical")]


def test_query_parameters():
    assert L.parse_time("2025-03-07T13:00:00Z") == T
    assert L.parse_time("2025-03-07T14:00:00+01:00") == T
    assert L.parse_time(str(T // 1000)) == T and L.parse_time(str(T)) == T
    assert L.parse_time(None) is None and L.parse_time("") is None
    for bad in ("yesterday", "nan", "2025-13-45"):
        with pytest.raises(ValueError):
            L.parse_time(bad)
    assert L.parse_group_by("service") == ("service",)
    assert L.parse_group_by("team, severity") == ("team", "severity")
    assert L.parse_group_by(None) == () and L.parse_group_by("none") == ()
    with pytest.raises(ValueError):
        L.parse_group_by("service,region")


# --- records and bounds ------------------------------------------------------------------------------------
def test_lifecycle_record_encodes_with_the_avro_schema():
    ps, pd = story()
    entry, _ = fold(ps + pd)
    [lc] = L.lifecycles(entry, TZ)
    codec = AvroCodec("incident_lifecycle")
    rec = codec.decode(codec.encode(lc.to_record(T + 2_000_000)))
    assert rec["tta_ms"] == 960_000 and rec["ttr_ms"] == 1_800_000
    assert rec["pagerduty"]["incident_ids"] == ["PD1"] and rec["pagerduty"]["escalations"] == 1
    assert rec["interruptions"]["business"] == 2 and len(rec["events"]) == 9
    assert rec["revision"] == 9
    # the digest ignores when it was published, not what it says
    assert lc.digest() == L.lifecycles(entry, TZ)[0].digest()
    entry2, _ = fold([hook("E9", "incident.priority_updated", T + 1_000_000)], entry=entry)
    assert L.lifecycles(entry2, TZ)[0].digest() != lc.digest()


def test_entries_stay_bounded():
    recs = []
    for i in range(L.MAX_INCIDENTS_PER_KEY + 5):
        at = T + i * 3_600_000
        recs += _auto(f"inc-{i:03d}", at, key="flappy")
    entry, _ = fold(recs, key="flappy")
    assert len(entry["ps"]) == L.MAX_INCIDENTS_PER_KEY
    assert "inc-000" not in entry["ps"] and f"inc-{L.MAX_INCIDENTS_PER_KEY + 4:03d}" in entry["ps"]
    evs = [hook(f"N{i}", "incident.annotated", T + i, key="flappy", pd_id="PX")
           for i in range(L.MAX_EVENTS_PER_PD_INCIDENT + 10)]
    entry, _ = fold(evs, key="flappy", entry=entry)
    assert len(entry["pd"]["PX"]["ev"]) == L.MAX_EVENTS_PER_PD_INCIDENT and entry["pd"]["PX"]["x"] == 10


def test_events_about_no_incident_are_not_facts():
    assert L.webhook_fact({"event_type": "pagey.ping", "incident_id": None, "event_id": "x"}) is None
    assert L.webhook_fact({"event_type": "service.updated", "incident_id": None, "event_id": "x"}) is None
    dropped = inc_event("", 0, "dropped", T)
    assert L.incident_fact(dropped) is None
