"""The models inside the incident decision: transient pause, scores, similar incidents, recurrence."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pagerstream.config import load_settings
from pagerstream.models.classify import AlertClassifier, features_from_rule
from pagerstream.models.similar import IncidentIndex
from pagerstream.processors.alert import Alert
from pagerstream.processors.incident import (
    Grouping, decide, expire, group_from_dict, group_to_dict, pagerduty_seq,
)
from pagerstream.processors.intel import (
    PredictionCache, TransientSettings, TypeEntry, advise, alert_type, index_resolved, learn_resolved,
)
from pagerstream.processors.outbox import incident_event_record, pagerduty_event_record
from pagerstream.schemas import AvroCodec

RK = "b" * 32
T0 = 1_700_000_000_000
PAUSE = TransientSettings(enabled=True, pause_s=300, p_pause=0.8, min_episodes=3)
RULES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "prometheus_alerts" / "rules_flat.jsonl"


def alert(n: int, action: str = "trigger", key: str = "disk", t: int = T0, summary: str = "Disk 93% full on db-7",
          **kw) -> Alert:
    return Alert(id=f"r{n}:0", raw_id=f"r{n}", source="alertmanager", action=action,  # type: ignore[arg-type]
                 routing_key=RK, dedup_key=key, summary=summary, severity="warning", origin="db-7",
                 event_time=t, received_at=t, group_key=f"g-{key}", service="db",
                 labels={"alertname": "DiskFull", **kw.pop("labels", {})}, **kw)


class Advisor:
    """The stream's advise callable, with a dict standing in for the `transient` table partition."""

    def __init__(self, table: dict, ts: TransientSettings = PAUSE, **models) -> None:
        self.table, self.ts, self.models = table, ts, models
        self.calls = 0

    def __call__(self, a: Alert):
        self.calls += 1
        key = alert_type(a)
        adv, entry = advise(a, TypeEntry.from_dict(self.table.get(key)), self.table.get("__fleet__", []),
                            self.ts, **self.models)
        self.table[key] = entry.to_dict()
        return adv


def transient_history(n: int = 6, seconds: float = 40.0) -> dict:
    return {"db/DiskFull": TypeEntry([seconds] * n, n, []).to_dict(), "__fleet__": [seconds] * n}


def test_alert_type_masks_numbers_and_prefers_the_alertname():
    a = alert(1, labels={"alertname": "DiskFull"})
    assert alert_type(a) == "db/DiskFull"
    b = replace(a, labels={}, class_=None, summary="disk 93% full on db-7")
    c = replace(a, labels={}, class_=None, summary="disk 41% full on db-12")
    assert alert_type(b) == alert_type(c) == "db/disk #% full on db-#"


def test_a_type_that_always_clears_fast_is_paused_and_never_pages_if_it_resolves():
    adv = Advisor(transient_history())
    s1 = decide(None, alert(1), Grouping(), adv)
    (o,) = s1.outputs
    assert (o.change, o.detail, o.pd_action) == ("opened", "paused", None)
    assert o.incident.paused_until == T0 + 300_000
    assert "resolved by itself 6 of 6 times" in o.reason
    assert pagerduty_event_record(o, 1, now_ms=T0) is None
    s2 = decide(s1.state, alert(2, "resolve", t=T0 + 30_000), Grouping(), adv)
    (r,) = s2.outputs
    assert (r.change, r.detail, r.pd_action) == ("resolved", "resolved_while_paused", None)
    # nothing is left for a tick to page
    assert expire(s2.state, T0 + 400_000).outputs == ()


def test_a_paused_incident_still_open_at_the_end_of_its_pause_pages_with_the_full_trigger():
    adv = Advisor(transient_history())
    s1 = decide(None, alert(1, summary="Disk 93% full on db-7"), Grouping(), adv)
    assert expire(s1.state, T0 + 299_999).outputs == ()  # not yet
    s2 = expire(s1.state, T0 + 300_000)
    (o,) = s2.outputs
    assert (o.change, o.detail, o.pd_action) == ("opened", "paged_after_pause", "trigger")
    ev = pagerduty_event_record(o, pagerduty_seq(o.incident.incident_id, o.incident.version), now_ms=T0 + 300_000)
    body = json.loads(ev["body_json"])
    assert body["event_action"] == "trigger" and body["payload"]["summary"] == "Disk 93% full on db-7"
    assert "resolved by itself" in body["payload"]["custom_details"]["pagerstream"]["transient"]
    assert ev["created_at"] == T0 + 300_000
    # the resolve that follows now goes to PagerDuty, after the trigger (higher seq)
    s3 = decide(s2.state, alert(3, "resolve", t=T0 + 310_000), Grouping(), adv)
    (r,) = s3.outputs
    assert r.pd_action == "resolve" and r.detail is None
    assert pagerduty_seq(r.incident.incident_id, r.incident.version) > ev["seq"]
    assert expire(s3.state, T0 + 900_000).outputs == ()  # paged once


def test_acknowledged_at_the_source_while_paused_never_pages():
    adv = Advisor(transient_history())
    s1 = decide(None, alert(1), Grouping(), adv)
    s2 = decide(s1.state, alert(2, "acknowledge", t=T0 + 5_000), Grouping(), adv)
    assert [(o.change, o.pd_action, o.detail) for o in s2.outputs] == [
        ("acknowledged", None, "acknowledged_while_paused")]
    assert expire(s2.state, T0 + 600_000).outputs == ()
    s3 = decide(s2.state, alert(3, "resolve", t=T0 + 700_000), Grouping(), adv)
    assert [(o.change, o.pd_action) for o in s3.outputs] == [("resolved", None)]


def test_auto_resolve_due_before_the_pause_ends_resolves_without_paging():
    adv = Advisor(transient_history())
    g = Grouping(auto_resolve_ms=60_000)
    s1 = decide(None, alert(1), g, adv)
    s2 = expire(s1.state, T0 + 400_000)  # both deadlines passed; auto-resolve came first
    assert [(o.change, o.pd_action, o.detail) for o in s2.outputs] == [
        ("auto_resolved", None, "resolved_while_paused")]


def test_without_enough_history_the_alert_pages_at_once_and_says_why():
    adv = Advisor({"__fleet__": []})
    (o,) = decide(None, alert(1), Grouping(), adv).outputs
    assert (o.change, o.pd_action, o.detail) == ("opened", "trigger", None)
    assert o.incident.pause["paused_until"] is None
    assert "only 0 finished episodes" in o.incident.pause["evidence"]


def test_a_critical_alert_is_never_paused():
    adv = Advisor(transient_history())
    (o,) = decide(None, replace(alert(1), severity="critical"), Grouping(), adv).outputs
    assert o.pd_action == "trigger" and o.incident.pause["paused_until"] is None
    assert "critical alerts are never paused" in o.incident.pause["evidence"]


def test_a_type_that_lasts_long_pages_at_once():
    adv = Advisor(transient_history(n=8, seconds=3600.0))
    (o,) = decide(None, alert(1), Grouping(), adv).outputs
    assert o.pd_action == "trigger"
    assert o.incident.pause["p_resolve"] < 0.8


def test_transient_switch_off_means_no_pause_evidence():
    adv = Advisor(transient_history(), TransientSettings(enabled=False))
    (o,) = decide(None, alert(1), Grouping(), adv).outputs
    assert o.pd_action == "trigger" and o.incident.pause is None


def test_models_run_only_when_an_incident_opens():
    adv = Advisor(transient_history(n=8, seconds=3600.0))
    s = decide(None, alert(1), Grouping(), adv)
    s = decide(s.state, alert(2), Grouping(), adv)  # duplicate
    s = decide(s.state, alert(3, key="disk2", t=T0 + 1), Grouping(mode="time_window", window_ms=60_000), adv)
    assert s.outputs[0].change == "alert_added"
    assert adv.calls == 1  # duplicates and grouped alerts reuse the opening alert's advice
    decide(None, alert(4, key="disk3"), Grouping(), adv)
    assert adv.calls == 2


def test_learn_resolved_records_the_duration_and_feeds_the_pool():
    adv = Advisor({})
    s1 = decide(None, alert(1), Grouping(), adv)
    s2 = decide(s1.state, alert(2, "resolve", t=T0 + 42_000), Grouping(), adv)
    inc = s2.outputs[0].incident
    entry, pool = learn_resolved(inc, TypeEntry.from_dict(adv.table["db/DiskFull"]), [1.0])
    assert entry.durations == [42.0] and entry.seen == 1 and pool == [1.0, 42.0]
    assert entry.opens == [T0 / 1000]


def test_recurrence_is_attached_when_openings_follow_a_schedule():
    day = 86_400_000
    opens = [(T0 - k * day + 7 * 3_600_000 - (T0 % day)) / 1000 for k in range(1, 10)]  # 07:00 UTC daily
    table = {"db/DiskFull": TypeEntry([], 0, sorted(opens)).to_dict()}
    t_open = T0 - (T0 % day) + 7 * 3_600_000 + 60_000
    (o,) = decide(None, alert(1, t=t_open), Grouping(), Advisor(table)).outputs
    assert o.incident.recurrence is not None and "07:0" in o.incident.recurrence
    (p,) = decide(None, alert(1, t=t_open), Grouping(), Advisor({})).outputs
    assert p.incident.recurrence is None


def test_similar_past_incidents_are_attached_with_why():
    idx = IncidentIndex(rerank=10)
    for i, (summary, service) in enumerate([("Disk full on db-3 volume /var/lib/postgresql", "db"),
                                            ("Checkout latency p99 above 2s", "checkout"),
                                            ("TLS certificate expires in 3 days", "edge")]):
        index_resolved(idx, {"incident_id": f"old-{i}", "summary": summary, "service": service,
                             "resolved_at": T0 - 1000})
    (o,) = decide(None, alert(1), Grouping(), Advisor({}, index=idx)).outputs
    top = o.incident.similar[0]
    assert top["incident_id"] == "old-0" and top["service"] == "db" and "disk" in top["why"].lower()
    assert all(s["score"] <= top["score"] for s in o.incident.similar)


@pytest.mark.skipif(not RULES.exists(), reason="shared data set prometheus_alerts not present")
def test_classification_scores_are_attached_and_explained_and_cached():
    clf = AlertClassifier()
    for line in RULES.read_text().splitlines()[:400]:
        r = json.loads(line)
        try:
            clf.learn(features_from_rule(r), severity=r.get("severity"), category=r.get("category4"))
        except ValueError:
            pass
    cache = PredictionCache()
    adv = Advisor({}, classifier=clf, cache=cache)
    (o,) = decide(None, alert(1, summary="Disk space usage above 90% on /"), Grouping(), adv).outputs
    by = {s["model"]: s for s in o.incident.scores}
    assert set(by) == {"transient", "classify.category", "classify.severity"}
    for head in ("classify.category", "classify.severity"):
        s = by[head]
        assert 0 <= s["score"] <= 1 and s["best"] is not None and s["explanation"]
        assert (s["label"] is None) == s["abstained"]
    decide(None, alert(2, key="other", summary="Disk space usage above 90% on /"), Grouping(), adv)
    assert cache.hits == 1 and cache.misses == 1  # same features: classified once
    # an untrained classifier adds nothing rather than guessing
    (p,) = decide(None, alert(3), Grouping(), Advisor({}, classifier=AlertClassifier())).outputs
    assert [s["model"] for s in p.incident.scores] == ["transient"]


def test_incident_event_with_model_fields_encodes_and_the_state_round_trips():
    idx = IncidentIndex()
    index_resolved(idx, {"incident_id": "old-1", "summary": "Disk full on db-3", "service": "db", "resolved_at": 5})
    s1 = decide(None, alert(1), Grouping(), Advisor(transient_history(), index=idx))
    rec = incident_event_record(s1.outputs[0])
    codec = AvroCodec("incident_event")
    back = codec.decode(codec.encode(rec))
    assert back["change_detail"] == "paused" and back["alert_type"] == "db/DiskFull"
    assert back["pause"]["paused_until"] == T0 + 300_000 and back["similar"][0]["incident_id"] == "old-1"
    assert back["scores"][0]["model"] == "transient"
    g2 = group_from_dict(json.loads(json.dumps(group_to_dict(s1.state))))
    assert g2 == s1.state  # the table value (JSON) keeps every model field, tuples included
    assert expire(g2, T0 + 300_000).outputs[0].detail == "paged_after_pause"


def test_ml_prediction_threshold_maps_onto_the_detector_scale():
    s = load_settings({"ML_PREDICTION_THRESHOLD": "0", "PAGERSTREAM_PREDICTION_THRESHOLD": "0.1"})
    assert s.prediction_page_score() == pytest.approx(0.1)
    s = load_settings({"ML_PREDICTION_THRESHOLD": "1", "PAGERSTREAM_PREDICTION_THRESHOLD": "0.1"})
    assert s.prediction_page_score() == pytest.approx(0.5)
    assert load_settings({}).prediction_page_score() == pytest.approx(0.42)


def _am(n: int, host: str, name: str, t: int, key: str | None = None) -> Alert:
    return Alert(id=f"c{n}:0", raw_id=f"c{n}", source="alertmanager", action="trigger", routing_key=RK,
                 dedup_key=key or f"{name}@{host}", summary=f"{name} on {host}", severity="warning", origin=host,
                 event_time=t, received_at=t, group_key="svc:checkout", service="checkout",
                 labels={"alertname": name, "instance": host})


def test_correlate_mode_groups_by_entity_and_type_and_explains_why():
    g = Grouping(mode="correlate")
    steps = []
    state = None
    for a in [_am(1, "web-1", "HighLatency", T0), _am(2, "web-1", "Http5xx", T0 + 400),  # same host, together
              _am(3, "db-9", "DiskFull", T0 + 60_000),  # another host, another type, a minute later
              _am(4, "web-2", "HighLatency", T0 + 3_000)]:  # same type on another host within 10 s
        st = decide(state, a, g)
        state = st.state
        steps.append(st.outputs[0])
    assert [o.change for o in steps] == ["opened", "alert_added", "opened", "alert_added"]
    assert steps[1].incident.incident_id == steps[0].incident.incident_id
    assert "same host" in steps[1].reason or "same instance" in steps[1].reason
    assert steps[2].incident.incident_id != steps[0].incident.incident_id
    assert steps[3].incident.incident_id == steps[0].incident.incident_id and "same type" in steps[3].reason
    assert [o.pd_action for o in steps] == ["trigger", None, "trigger", None]
    back = group_from_dict(json.loads(json.dumps(group_to_dict(state))))
    assert back.corr == state.corr and back.corr_map == state.corr_map
    # the next alert decides the same from the restored state as from the live one
    nxt = _am(5, "web-1", "HighLatency", T0 + 4_000, key="again")
    assert decide(back, nxt, g).outputs[0].reason == decide(state, nxt, g).outputs[0].reason


def test_correlate_mode_resolving_every_alert_resolves_the_incident_and_pages_resolve():
    g = Grouping(mode="correlate")
    s = decide(None, _am(1, "web-1", "HighLatency", T0), g)
    s = decide(s.state, _am(2, "web-1", "Http5xx", T0 + 300), g)
    r1 = replace(_am(3, "web-1", "HighLatency", T0 + 9_000), action="resolve")
    s = decide(s.state, r1, g)
    assert s.outputs[0].change == "alert_resolved"
    r2 = replace(_am(4, "web-1", "Http5xx", T0 + 9_500), action="resolve")
    s = decide(s.state, r2, g)
    assert (s.outputs[0].change, s.outputs[0].pd_action) == ("resolved", "resolve")
    # after resolve, the same host firing again opens a new incident (its old one is closed)
    s = decide(s.state, _am(5, "web-1", "HighLatency", T0 + 20_000, key="HighLatency@web-1#2"), g)
    assert s.outputs[0].change == "opened"


def test_alert_types_without_a_name_come_from_mined_templates_and_keep_their_key():
    from pagerstream.processors.intel import TemplateBook

    book = TemplateBook()
    base = replace(alert(1), labels={}, class_=None)
    t1 = alert_type(replace(base, summary="User alice failed login from 10.0.0.7"), book)
    t2 = alert_type(replace(base, summary="User bob failed login from 10.0.0.9"), book)
    t3 = alert_type(replace(base, summary="Backup of volume vol-3 finished late"), book)
    assert t1 == t2 != t3  # the cluster generalised, its key did not change
    assert t1.startswith("db/tpl") and "failed login" in t1
    restored = TemplateBook.from_dict(json.loads(json.dumps(book.to_dict())))
    assert alert_type(replace(base, summary="User carol failed login from 10.0.0.1"), restored) == t1
    assert TemplateBook.from_dict({"m": {"version": "other"}}).names == {}  # unknown state: start over
