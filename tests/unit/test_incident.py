"""The dedup/grouping/incident core: PagerDuty's semantics, grouping, auto-resolve, replays."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from pagerstream.processors.alert import Alert
from pagerstream.processors.incident import (
    APPLIED_MEMORY, RESOLVED_RETENTION_MS, Grouping, decide, expire, group_from_dict, group_to_dict,
    is_forgettable, pagerduty_seq,
)

RK = "a" * 32


def alert(n: int, action: str = "trigger", key: str = "k1", t: int | None = None, group_key: str = "g",
          severity: str = "warning") -> Alert:
    return Alert(id=f"r{n}:0", raw_id=f"r{n}", source="pagerduty_events_v2", action=action,  # type: ignore[arg-type]
                 routing_key=RK, dedup_key=key, summary=f"alert {key}", severity=severity,  # type: ignore[arg-type]
                 origin="host", event_time=t or 1000 * n, received_at=t or 1000 * n, group_key=group_key,
                 service="svc")


def run(alerts, grouping=Grouping()):
    g = None
    out = []
    for a in alerts:
        step = decide(g, a, grouping)
        g = step.state
        out.extend(step.outputs)
    return g, out


def test_trigger_opens_then_duplicates_then_resolve():
    g, outs = run([alert(1), alert(2), alert(3, "resolve")])
    assert [o.change for o in outs] == ["opened", "duplicate", "resolved"]
    assert [o.pd_action for o in outs] == ["trigger", None, "resolve"]
    assert outs[0].incident.pd_dedup_key == "k1"  # mode none keeps the sender's dedup_key
    assert outs[1].reason.startswith("duplicate")
    assert outs[2].incident.state == "resolved" and outs[2].incident.resolved_at == 3000
    assert outs[1].incident.duplicates == 1


def test_ack_and_resolve_without_open_alert_are_dropped_with_reason():
    _, outs = run([alert(1, "resolve"), alert(2, "acknowledge")])
    assert [o.change for o in outs] == ["dropped", "dropped"]
    assert all(o.pd_action is None for o in outs)
    assert "no open alert" in outs[0].reason and outs[0].reason.startswith("resolve")
    assert outs[1].reason.startswith("acknowledge")


def test_trigger_after_resolve_opens_new_incident():
    _, outs = run([alert(1), alert(2, "resolve"), alert(3)])
    assert [o.change for o in outs] == ["opened", "resolved", "opened"]
    assert outs[0].incident.incident_id != outs[2].incident.incident_id
    assert "after incident" in outs[2].reason


def test_acknowledge_once_then_duplicate():
    _, outs = run([alert(1), alert(2, "acknowledge"), alert(3, "acknowledge"), alert(4)])
    assert [o.change for o in outs] == ["opened", "acknowledged", "duplicate", "duplicate"]
    assert [o.pd_action for o in outs] == ["trigger", "acknowledge", None, None]
    assert outs[1].incident.acknowledged_at == 2000


def test_time_window_groups_alerts_and_resolves_when_all_resolved():
    gr = Grouping(mode="time_window", window_ms=60_000)
    _, outs = run([alert(1, key="a"), alert(2, key="b"), alert(3, "resolve", key="a"),
                   alert(4, "resolve", key="b")], gr)
    assert [o.change for o in outs] == ["opened", "alert_added", "alert_resolved", "resolved"]
    assert [o.pd_action for o in outs] == ["trigger", None, None, "resolve"]
    assert len({o.incident.incident_id for o in outs}) == 1
    assert outs[0].incident.pd_dedup_key.startswith("pagerstream-")
    assert outs[1].incident.total_alerts == 2


def test_time_window_expired_opens_second_incident():
    gr = Grouping(mode="time_window", window_ms=60_000)
    _, outs = run([alert(1, key="a", t=1_000), alert(2, key="b", t=200_000)], gr)
    assert [o.change for o in outs] == ["opened", "opened"]
    assert outs[0].incident.incident_id != outs[1].incident.incident_id


def test_grouped_incident_takes_the_highest_severity():
    gr = Grouping(mode="fields")
    _, outs = run([alert(1, key="a", severity="warning"), alert(2, key="b", severity="critical")], gr)
    assert outs[1].incident.severity == "critical"


def test_replay_reemits_the_same_decision():
    a1, a2 = alert(1), alert(2, "resolve")
    g, outs = run([a1, a2])
    step = decide(g, a1, Grouping())
    assert step.replayed
    assert [(o.change, o.pd_action, o.incident.version) for o in step.outputs] == [
        ("opened", "trigger", outs[0].incident.version)]
    assert step.state == g  # a replay changes nothing


def test_auto_resolve_after_inactivity():
    gr = Grouping(auto_resolve_ms=10_000)
    g, _ = run([alert(1, t=1_000)], gr)
    assert expire(g, 10_999).outputs == ()
    step = expire(g, 11_000)
    assert [(o.change, o.pd_action) for o in step.outputs] == [("auto_resolved", "resolve")]
    # a late resolve is now dropped, and the group becomes forgettable after the retention
    g2 = step.state
    s2 = decide(g2, alert(5, "resolve", t=12_000), gr)
    assert s2.outputs[0].change == "dropped"
    assert not is_forgettable(s2.state, 12_000)
    assert is_forgettable(s2.state, 11_000 + RESOLVED_RETENTION_MS)


def test_state_round_trips_through_table_dicts():
    g, _ = run([alert(1, key="a"), alert(2, key="b"), alert(3, "acknowledge", key="a")],
               Grouping(mode="fields"))
    assert group_from_dict(group_to_dict(g)) == g


ACTIONS = st.sampled_from(["trigger", "acknowledge", "resolve"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(ACTIONS, st.sampled_from(["a", "b", "c"])), min_size=1, max_size=40),
       st.sampled_from(["none", "fields", "time_window"]))
def test_pagerduty_sequence_is_never_contradictory(events, mode):
    """Per PagerDuty dedup_key: trigger, [acknowledge], resolve, trigger, ... never anything else."""
    gr = Grouping(mode=mode, window_ms=5_000 if mode == "time_window" else 0)  # type: ignore[arg-type]
    _, outs = run([alert(i + 1, action, key) for i, (action, key) in enumerate(events)], gr)
    state: dict[str, str] = {}
    for o in outs:
        if o.pd_action is None:
            continue
        k = o.incident.pd_dedup_key
        cur = state.get(k, "resolved")
        if o.pd_action == "trigger":
            assert cur == "resolved", (k, cur)
            state[k] = "triggered"
        elif o.pd_action == "acknowledge":
            assert cur == "triggered", (k, cur)
            state[k] = "acknowledged"
        else:
            assert cur in ("triggered", "acknowledged"), (k, cur)
            state[k] = "resolved"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(ACTIONS, st.sampled_from(["a", "b"])), min_size=1, max_size=25), st.data())
def test_replays_do_not_change_the_outcome(events, data):
    """Feeding recent alerts again (a crash replay) yields the same state and PagerDuty actions."""
    alerts = [alert(i + 1, action, key) for i, (action, key) in enumerate(events)]
    clean_state, clean = run(alerts)
    g = None
    seen: list[Alert] = []
    pd = []
    for a in alerts:
        step = decide(g, a, Grouping())
        g = step.state
        pd += [(o.incident.incident_id, o.pd_action) for o in step.outputs if o.pd_action]
        seen.append(a)
        if data.draw(st.booleans()):
            back = seen[-data.draw(st.integers(1, min(len(seen), APPLIED_MEMORY))):]
            for r in back:
                again = decide(g, r, Grouping())
                assert again.replayed
                g = again.state
    assert g == clean_state
    assert pd == [(o.incident.incident_id, o.pd_action) for o in clean if o.pd_action]


def test_memory_is_bounded():
    g, _ = run([alert(i, key="a") for i in range(1, 200)])
    assert len(g.applied) == APPLIED_MEMORY
    assert len(group_to_dict(g)["ap"]) == APPLIED_MEMORY
    assert replace(g).counter == 1


def test_replay_by_raw_position_beyond_memory_emits_nothing():
    """A normalize-stage replay re-publishes alerts at new offsets but with their alerts.raw position;
    anything at or below the group's mark for that raw partition is a replay."""
    alerts = [replace(alert(i, "trigger" if i % 2 else "resolve"), raw_partition=3, raw_offset=i)
              for i in range(1, 2 * APPLIED_MEMORY + 3)]
    g, outs = run(alerts)
    assert g.marks == {3: alerts[-1].raw_offset}
    old = replace(alerts[0], id="other-id:0")  # same raw position, forgotten id
    step = decide(g, old, Grouping())
    assert step.replayed and step.outputs == () and step.state == g


def test_pagerduty_seq_increases_across_incidents_of_one_key_and_is_replay_stable():
    a1, r1, a2 = alert(1), alert(2, "resolve"), alert(3)
    g, outs = run([a1, r1, a2])
    seqs = [pagerduty_seq(o.incident.incident_id, o.incident.version) for o in outs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    again = decide(g, a1, Grouping())  # replay of the first trigger
    assert pagerduty_seq(again.outputs[0].incident.incident_id, again.outputs[0].incident.version) == seqs[0]
    _, outs2 = run([a1, r1, a2])  # recomputed from scratch (state lost): same numbers
    assert [pagerduty_seq(o.incident.incident_id, o.incident.version) for o in outs2] == seqs


def test_incident_level_actions_from_people_move_every_alert_and_pagerduty_once():
    from pagerstream.processors.incident import INCIDENT_ACTION_LABEL

    g = Grouping(mode="time_window", window_ms=60_000)
    s1 = decide(None, alert(1, key="k1"), g)
    s2 = decide(s1.state, alert(2, key="k2", t=1500), g)
    iid = s1.outputs[0].incident.incident_id
    assert s1.outputs[0].incident.group_key == "g"

    def act(n: int, action: str, t: int):
        return replace(alert(n, action, key="", t=t), labels={INCIDENT_ACTION_LABEL: iid, "by": "ann (Slack)"},
                       source="slack")
    s3 = decide(s2.state, act(3, "acknowledge", 3000), g)
    (o,) = s3.outputs
    assert (o.change, o.pd_action, o.incident.state) == ("acknowledged", "acknowledge", "acknowledged")
    assert set(o.incident.members.values()) == {"acknowledged"} and "ann (Slack)" in o.reason
    assert decide(s3.state, act(4, "acknowledge", 3500), g).outputs[0].pd_action is None  # once
    s5 = decide(s3.state, act(5, "resolve", 4000), g)
    (r,) = s5.outputs
    assert (r.change, r.pd_action, r.incident.state) == ("resolved", "resolve", "resolved")
    assert s5.state.members == {}
    # a late source resolve of one of its alerts finds nothing open: dropped, no second PagerDuty resolve
    late = decide(s5.state, alert(6, "resolve", key="k1", t=5000), g)
    assert [(x.change, x.pd_action) for x in late.outputs] == [("dropped", None)]
    # an action on an unknown or closed incident is dropped with a reason
    assert decide(s5.state, act(7, "resolve", 6000), g).outputs[0].change == "dropped"


def test_a_group_that_comes_back_after_being_forgotten_keeps_numbering_its_pagerduty_calls():
    # trigger, resolve; an hour later the group may be deleted; then the same alert fires again
    from pagerstream.processors.incident import forget

    g, outs = run([alert(1), alert(2, "resolve")])
    later = 2000 + RESOLVED_RETENTION_MS + 1
    assert is_forgettable(g, later)
    last_seq = max(pagerduty_seq(o.incident.incident_id, o.incident.version) for o in outs if o.pd_action)
    kept = forget(g)
    assert kept.counter == 1 and not kept.incidents and not kept.members and kept.marks == g.marks
    step = decide(group_from_dict(group_to_dict(kept)), alert(3, t=later + 10), Grouping())
    (o,) = step.outputs
    assert o.change == "opened" and o.pd_action == "trigger" and o.incident.incident_id.endswith("-2")
    # the forwarder skips calls numbered at or below the key's last delivered one: this must be above
    assert pagerduty_seq(o.incident.incident_id, o.incident.version) > last_seq
    # without the counter (the group deleted outright) the new trigger would be numbered below it
    fresh = decide(None, alert(3, t=later + 10), Grouping()).outputs[0]
    assert pagerduty_seq(fresh.incident.incident_id, fresh.incident.version) <= last_seq
