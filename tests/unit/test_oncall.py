"""Tests for pagerstream.pagerduty.oncall (local rendering of PagerDuty v2 schedules).

Expected values in the example tests are worked out by hand from the rules in the module
docstring (R1..R9); the reasoning is written next to each case.  Property tests compare the
renderer against a brute-force oracle written independently here, and against the module's own
point query (``oncall_at``), which takes a different code path from the sweep renderer.
"""

from __future__ import annotations

import bisect
import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagerstream.pagerduty.oncall import (
    ACTIVESUPPORT_ZONES,
    RenderStats,
    ScheduleEntry,
    coverage_percentage,
    escalation_timeline,
    find_gaps,
    merge_entries,
    parse_overrides,
    parse_schedule,
    resolve_escalation,
    resolve_time_zone,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CONTRACTS = SHARED / "contracts" / "pagerduty"
NEEDS_SHARED = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared contracts folder {SHARED} is absent (not a full checkout)"
)

DAY, WEEK = 86400, 604800


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def layer(rvs, turn, users, restrictions=(), start=None, end=None, name=None):
    return {
        "name": name,
        "start": start or rvs,
        "end": end,
        "rotation_virtual_start": rvs,
        "rotation_turn_length_seconds": turn,
        "users": [{"user": {"id": u, "type": "user_reference"}} for u in users],
        "restrictions": list(restrictions),
    }


def daily(start, seconds):
    return {"type": "daily_restriction", "start_time_of_day": start, "duration_seconds": seconds}


def weekly(day, start, seconds):
    return {
        "type": "weekly_restriction",
        "start_day_of_week": day,
        "start_time_of_day": start,
        "duration_seconds": seconds,
    }


def schedule(tz, layers, overrides=None, **kw):
    return parse_schedule(
        {"type": "schedule", "time_zone": tz, "schedule_layers": layers}, overrides=overrides, **kw
    )


def override(start, end, user):
    return {"start": start, "end": end, "user": {"id": user, "type": "user_reference"}}


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def at(tz, *args):
    return datetime(*args, tzinfo=ZoneInfo(tz))


def triples(entries):
    """(start UTC, end UTC, user) for comparing instants, not strings."""
    return [(e.start.astimezone(UTC), e.end.astimezone(UTC), e.user_id) for e in entries]


# --------------------------------------------------------------------------------------------
# Hand-worked examples
# --------------------------------------------------------------------------------------------


def test_weekly_rotation():
    # rvs = Monday 2024-01-01 09:00Z, L = 1 week, users A, B, C.  Turn k starts on
    # Jan 1 + 7k days at 09:00 and belongs to users[k % 3]:
    #   k=1 B [Jan 8 09:00, Jan 15 09:00), k=2 C [Jan 15 09:00, Jan 22 09:00), k=3 A [Jan 22 09:00, ...)
    # The window [Jan 15 00:00, Jan 29 00:00) therefore starts in B's week.
    s = schedule("UTC", [layer("2024-01-01T09:00:00Z", WEEK, ["A", "B", "C"])])
    got = triples(s.final_entries("2024-01-15T00:00:00Z", "2024-01-29T00:00:00Z"))
    assert got == [
        (utc(2024, 1, 15), utc(2024, 1, 15, 9), "B"),
        (utc(2024, 1, 15, 9), utc(2024, 1, 22, 9), "C"),
        (utc(2024, 1, 22, 9), utc(2024, 1, 29), "A"),
    ]
    # Half-open turns: the last second of C's week is C's, the handoff instant is A's.
    assert s.oncall_at(utc(2024, 1, 22, 8, 59, 59)) == "C"
    assert s.oncall_at(utc(2024, 1, 22, 9)) == "A"
    assert s.next_change_after(utc(2024, 1, 16)) == utc(2024, 1, 22, 9)


def test_daily_handoff_at_0900_local():
    # Europe/Berlin in January is UTC+1 all along (no DST switch involved).
    # rvs = 2024-01-08 09:00+01:00, L = 1 day, users A, B: turn k starts Jan 8+k at 09:00 local.
    #   k=1 (Jan 9 09:00)  -> B,  k=2 (Jan 10 09:00) -> A,  k=3 (Jan 11 09:00) -> B.
    s = schedule("Europe/Berlin", [layer("2024-01-08T09:00:00+01:00", DAY, ["A", "B"])])
    entries = s.final_entries("2024-01-10T00:00:00+01:00", "2024-01-12T00:00:00+01:00")
    assert triples(entries) == [
        (at("Europe/Berlin", 2024, 1, 10, 0), at("Europe/Berlin", 2024, 1, 10, 9), "B"),
        (at("Europe/Berlin", 2024, 1, 10, 9), at("Europe/Berlin", 2024, 1, 11, 9), "A"),
        (at("Europe/Berlin", 2024, 1, 11, 9), at("Europe/Berlin", 2024, 1, 12, 0), "B"),
    ]
    # Rendered in the schedule's zone by default: offsets +01:00.
    assert entries[1].to_api()["start"] == "2024-01-10T09:00:00+01:00"


def test_business_hours_restriction_coverage_and_gaps():
    # New York, June 2024 (EDT, UTC-4).  One user A, weekly turn from Monday 2024-06-03 00:00,
    # restricted Mon..Fri 09:00 for 8 h (five weekly restrictions).
    # Window = that week: five entries 09:00-17:00 local; coverage 5*8 h / 168 h.
    bh = [weekly(d, "09:00:00", 8 * 3600) for d in range(1, 6)]
    s = schedule("America/New_York", [layer("2024-06-03T00:00:00-04:00", WEEK, ["A"], bh)])
    since, until = at("America/New_York", 2024, 6, 3), at("America/New_York", 2024, 6, 10)
    r = s.render(since, until)
    assert triples(r.final) == [
        (at("America/New_York", 2024, 6, d, 9), at("America/New_York", 2024, 6, d, 17), "A")
        for d in range(3, 8)
    ]
    assert r.final_coverage_percentage == pytest.approx(100 * 40 / 168)
    assert r.layers[0].rendered_coverage_percentage == pytest.approx(100 * 40 / 168)
    # Gaps: before Monday 09:00, each night 17:00-09:00, and Friday 17:00 to the end.
    expected_gaps = [(since, at("America/New_York", 2024, 6, 3, 9))]
    expected_gaps += [
        (at("America/New_York", 2024, 6, d, 17), at("America/New_York", 2024, 6, d + 1, 9))
        for d in range(3, 7)
    ]
    expected_gaps += [(at("America/New_York", 2024, 6, 7, 17), until)]
    assert [(a.astimezone(UTC), b.astimezone(UTC)) for a, b in r.gaps] == [
        (a.astimezone(UTC), b.astimezone(UTC)) for a, b in expected_gaps
    ]
    assert find_gaps(r.final, since, until) == list(r.gaps)
    assert coverage_percentage(r.final, since, until) == pytest.approx(r.final_coverage_percentage)
    # Nobody at 08:00 Monday; coverage starts at 09:00.
    assert s.oncall_at(at("America/New_York", 2024, 6, 3, 8)) is None
    assert s.next_change_after(at("America/New_York", 2024, 6, 3, 8)) == at("America/New_York", 2024, 6, 3, 9)
    assert s.next_change_after(at("America/New_York", 2024, 6, 3, 10)) == at(
        "America/New_York", 2024, 6, 3, 17
    )


def test_weekend_only_weekly_restriction():
    # UTC, daily rotation A, B from Monday 2024-01-01 00:00 (day k -> users[k % 2]),
    # restricted to Saturday 00:00 + 48 h.  Jan 6 (Sat) is day 5 -> B, Jan 7 day 6 -> A,
    # Jan 13 day 12 -> A, Jan 14 day 13 -> B.  Weekdays are gaps.
    s = schedule("UTC", [layer("2024-01-01T00:00:00Z", DAY, ["A", "B"], [weekly(6, "00:00:00", 2 * DAY)])])
    r = s.render("2024-01-01T00:00:00Z", "2024-01-15T00:00:00Z")
    assert triples(r.final) == [
        (utc(2024, 1, 6), utc(2024, 1, 7), "B"),
        (utc(2024, 1, 7), utc(2024, 1, 8), "A"),
        (utc(2024, 1, 13), utc(2024, 1, 14), "A"),
        (utc(2024, 1, 14), utc(2024, 1, 15), "B"),
    ]
    assert r.final_coverage_percentage == pytest.approx(100 * 4 / 14)


def test_restrictions_wrapping_midnight_and_end_of_week():
    # Weekly restriction starting Sunday (ISO 7) 18:00 for 36 h ends Tuesday 06:00: the
    # occurrence that began Sunday 2023-12-31 is still running on Monday Jan 1.
    s = schedule("UTC", [layer("2023-12-01T00:00:00Z", WEEK, ["A"], [weekly(7, "18:00:00", 36 * 3600)])])
    assert triples(s.final_entries("2024-01-01T00:00:00Z", "2024-01-08T00:00:00Z")) == [
        (utc(2024, 1, 1), utc(2024, 1, 2, 6), "A"),
        (utc(2024, 1, 7, 18), utc(2024, 1, 8), "A"),
    ]
    # Daily 22:00 + 10 h wraps midnight and ends 08:00 the next day.
    s = schedule("UTC", [layer("2023-12-01T00:00:00Z", WEEK, ["A"], [daily("22:00:00", 10 * 3600)])])
    assert triples(s.final_entries("2024-01-02T00:00:00Z", "2024-01-03T12:00:00Z")) == [
        (utc(2024, 1, 2), utc(2024, 1, 2, 8), "A"),
        (utc(2024, 1, 2, 22), utc(2024, 1, 3, 8), "A"),
    ]


TWO_LAYERS = [
    # Layer 1 (array index 0 in a request body): A around the clock.
    layer("2024-01-01T00:00:00Z", WEEK, ["A"], name="Layer 1"),
    # Layer 2: B, only 12:00-13:00 every day.
    layer("2024-01-01T00:00:00Z", DAY, ["B"], [daily("12:00:00", 3600)], name="Layer 2"),
]


def test_two_layers_higher_numbered_layer_wins():
    # "If a user on Layer 1 and Layer 2 overlap, the user on Layer 2 will be the one on-call":
    # B hides A from 12:00 to 13:00, A shows again afterwards.
    s = schedule("UTC", TWO_LAYERS)
    assert triples(s.final_entries("2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z")) == [
        (utc(2024, 1, 2), utc(2024, 1, 2, 12), "A"),
        (utc(2024, 1, 2, 12), utc(2024, 1, 2, 13), "B"),
        (utc(2024, 1, 2, 13), utc(2024, 1, 3), "A"),
    ]


def test_layer_order_of_get_responses_is_reversed():
    # A GET body lists the highest layer first.  Reading the request-order array as a response
    # makes "Layer 1" (A) the top layer, so A is on call all day ...
    as_response = schedule("UTC", TWO_LAYERS, layer_order="response")
    assert triples(as_response.final_entries("2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z")) == [
        (utc(2024, 1, 2), utc(2024, 1, 3), "A"),
    ]
    # ... while the reversed array read as a response is the same schedule as the request body.
    flipped = schedule("UTC", list(reversed(TWO_LAYERS)), layer_order="response")
    assert [l.name for l in flipped.layers] == ["Layer 1", "Layer 2"]
    assert flipped.final_entries("2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z") == schedule(
        "UTC", TWO_LAYERS
    ).final_entries("2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z")


def test_override_on_top_and_overlapping_overrides():
    # C overrides 12:30-14:00: it cuts B's hour in half and part of A's afternoon.
    s = schedule("UTC", TWO_LAYERS, overrides=[override("2024-01-02T12:30:00Z", "2024-01-02T14:00:00Z", "C")])
    assert triples(s.final_entries("2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z")) == [
        (utc(2024, 1, 2), utc(2024, 1, 2, 12), "A"),
        (utc(2024, 1, 2, 12), utc(2024, 1, 2, 12, 30), "B"),
        (utc(2024, 1, 2, 12, 30), utc(2024, 1, 2, 14), "C"),
        (utc(2024, 1, 2, 14), utc(2024, 1, 3), "A"),
    ]
    # A second override D inside C's starts later, so it wins for its 15 minutes (rule R6),
    # whatever the order of the list.
    for order in (1, -1):
        ovs = [
            override("2024-01-02T12:30:00Z", "2024-01-02T14:00:00Z", "C"),
            override("2024-01-02T13:00:00Z", "2024-01-02T13:15:00Z", "D"),
        ][::order]
        s2 = s.with_overrides(ovs)
        r = s2.render("2024-01-02T12:00:00Z", "2024-01-02T15:00:00Z")
        assert triples(r.final) == [
            (utc(2024, 1, 2, 12), utc(2024, 1, 2, 12, 30), "B"),
            (utc(2024, 1, 2, 12, 30), utc(2024, 1, 2, 13), "C"),
            (utc(2024, 1, 2, 13), utc(2024, 1, 2, 13, 15), "D"),
            (utc(2024, 1, 2, 13, 15), utc(2024, 1, 2, 14), "C"),
            (utc(2024, 1, 2, 14), utc(2024, 1, 2, 15), "A"),
        ]
        # The overrides sub-schedule covers 12:30-14:00 of the 3 h window.
        assert r.overrides_coverage_percentage == pytest.approx(50.0)
        assert s2.oncall_at(utc(2024, 1, 2, 13, 5)) == "D"


def test_layer_start_and_end_bound_the_rotation():
    # rvs lies before the layer start (allowed: "can be before the start time of the
    # schedule"); turns are still counted from rvs, but nothing shows before start / after end.
    # rvs Jan 1, daily A,B,C -> Jan 4 is day 3 -> A, Jan 5 -> B.  Layer lives Jan 4 12:00 - Jan 5 06:00.
    s = schedule(
        "UTC",
        [
            layer(
                "2024-01-01T00:00:00Z",
                DAY,
                ["A", "B", "C"],
                start="2024-01-04T12:00:00Z",
                end="2024-01-05T06:00:00Z",
            )
        ],
    )
    r = s.render("2024-01-04T00:00:00Z", "2024-01-06T00:00:00Z")
    assert triples(r.final) == [
        (utc(2024, 1, 4, 12), utc(2024, 1, 5), "A"),
        (utc(2024, 1, 5), utc(2024, 1, 5, 6), "B"),
    ]
    assert r.final_coverage_percentage == pytest.approx(100 * 18 / 48)


def test_render_time_zone_changes_offsets_not_instants():
    s = schedule("Eastern Time (US & Canada)", [layer("2024-06-03T00:00:00-04:00", DAY, ["A", "B"])])
    ny = s.final_entries("2024-06-04T00:00:00Z", "2024-06-06T00:00:00Z")
    tokyo = s.final_entries("2024-06-04T00:00:00Z", "2024-06-06T00:00:00Z", time_zone="Asia/Tokyo")
    assert triples(ny) == triples(tokyo)
    assert tokyo[0].start.utcoffset() == timedelta(hours=9)
    assert ny[0].start.utcoffset() == timedelta(hours=-4)
    # The first handoff inside the window is at 00:00 New York time = 04:00Z.
    assert ny[1].start == utc(2024, 6, 4, 4)


def test_merge_adjacent_entries_of_same_user():
    # Two consecutive daily turns of a one-user layer are one entry in the final schedule.
    s = schedule("UTC", [layer("2024-01-01T00:00:00Z", DAY, ["A"])])
    assert triples(s.final_entries("2024-01-02T06:00:00Z", "2024-01-05T06:00:00Z")) == [
        (utc(2024, 1, 2, 6), utc(2024, 1, 5, 6), "A"),
    ]
    pieces = [
        ScheduleEntry(utc(2024, 1, 1), utc(2024, 1, 2), "A"),
        ScheduleEntry(utc(2024, 1, 2), utc(2024, 1, 3), "A"),
        ScheduleEntry(utc(2024, 1, 3), utc(2024, 1, 4), "B"),
    ]
    assert triples(merge_entries(reversed(pieces))) == [
        (utc(2024, 1, 1), utc(2024, 1, 3), "A"),
        (utc(2024, 1, 3), utc(2024, 1, 4), "B"),
    ]


def test_overflow_returns_whole_shift_bounded_by_restriction_and_handoff():
    # Daily rotation A, B with a 09:00-17:00 restriction; window 10:00-11:00 on day 1 (B).
    # overflow=True gives B's whole shift of that day, 09:00-17:00, not more (the restriction
    # window bounds the shift) ...
    s = schedule("UTC", [layer("2024-01-01T00:00:00Z", DAY, ["A", "B"], [daily("09:00:00", 8 * 3600)])])
    assert triples(s.final_entries("2024-01-02T10:00:00Z", "2024-01-02T11:00:00Z", overflow=True)) == [
        (utc(2024, 1, 2, 9), utc(2024, 1, 2, 17), "B")
    ]
    # ... and a one-user daily layer overflows to the turn (handoff) boundaries, not to the
    # merged run of identical users.
    one = schedule("UTC", [layer("2024-01-01T00:00:00Z", DAY, ["A"])])
    assert triples(one.final_entries("2024-01-02T10:00:00Z", "2024-01-04T11:00:00Z", overflow=True)) == [
        (utc(2024, 1, 2), utc(2024, 1, 5), "A")
    ]
    # Higher layers hide part of a shift: with TWO_LAYERS, A's shift seen from 13:30 starts
    # where B's hour ends (13:00) and runs to A's weekly handoff on Monday Jan 8.
    two = schedule("UTC", TWO_LAYERS)
    got = two.final_entries("2024-01-02T13:30:00Z", "2024-01-02T14:00:00Z", overflow=True)
    assert triples(got) == [(utc(2024, 1, 2, 13), utc(2024, 1, 3, 12), "A")]


@NEEDS_SHARED
@pytest.mark.parametrize("case_index", [0, 1])
def test_overflow_contract_vectors(case_index):
    vectors = json.loads((CONTRACTS / "schedules" / "overflow-semantics.vectors.json").read_text())
    case = vectors["cases"][case_index]
    s = parse_schedule(vectors["schedule"])
    q = case["query"]
    got = s.final_entries(q["since"], q["until"], overflow=q["overflow"])
    want = [
        (datetime.fromisoformat(e["start"]), datetime.fromisoformat(e["end"]), e["user_id"])
        for e in case["expect_final_schedule_entries"]
    ]
    assert triples(got) == want  # compares instants (the vector's caveat)
    # The layer rendering obeys the same rule.
    assert triples(s.render(q["since"], q["until"], overflow=q["overflow"]).layers[0].entries) == want


@NEEDS_SHARED
def test_parses_the_spec_example_schedule():
    # The OpenAPI example is illustrative (NOTES.md: not an oracle); we only check that its shape
    # parses and that the daily 08:00 + 9 h restriction renders as 08:00-17:00 New York time.
    example = json.loads((CONTRACTS / "rest-examples" / "getSchedule.json").read_text())
    s = parse_schedule(example["response_examples"]["200"]["response"], layer_order="response")
    assert s.time_zone == "America/New_York" and len(s.layers) == 1
    assert s.layers[0].users == ("PXPGF42",)
    entries = s.final_entries("2015-11-09T00:00:00-05:00", "2015-11-11T00:00:00-05:00")
    assert [(e.start.isoformat(), e.end.isoformat()) for e in entries] == [
        ("2015-11-09T08:00:00-05:00", "2015-11-09T17:00:00-05:00"),
        ("2015-11-10T08:00:00-05:00", "2015-11-10T17:00:00-05:00"),
    ]


@NEEDS_SHARED
def test_activesupport_zone_names_match_the_types_page():
    types_md = CONTRACTS / "developer-docs" / "REST-API" / "06-Types.md"
    rows = re.findall(r"^\|\s*([A-Za-z_]+/[\w/+-]+)\s*\|\s*(.+?)\s*\|$", types_md.read_text(), re.MULTILINE)
    assert len(rows) > 100
    for iana, display in rows:
        assert ACTIVESUPPORT_ZONES.get(display) == iana, display
        assert resolve_time_zone(display).key == iana


def test_invalid_input_is_rejected():
    with pytest.raises(ValueError):
        schedule("UTC", [layer("2024-01-01T00:00:00Z", 0, ["A"])])
    with pytest.raises(ValueError):  # weekly needs a day of week
        schedule(
            "UTC",
            [
                layer(
                    "2024-01-01T00:00:00Z",
                    DAY,
                    ["A"],
                    [{"type": "weekly_restriction", "start_time_of_day": "09:00:00", "duration_seconds": 60}],
                )
            ],
        )
    with pytest.raises(ValueError):
        schedule("Mars/Olympus_Mons", [])
    s = schedule("UTC", [layer("2024-01-01T00:00:00Z", DAY, ["A"])])
    with pytest.raises(ValueError):
        s.render("2024-01-02T00:00:00Z", "2024-01-01T00:00:00Z")
    with pytest.raises(ValueError):
        parse_overrides([override("2024-01-02T00:00:00Z", "2024-01-01T00:00:00Z", "X")])


# --------------------------------------------------------------------------------------------
# DST: restrictions (wall clock in the schedule zone, rule R3/R5)
# --------------------------------------------------------------------------------------------

BERLIN, NEW_YORK = "Europe/Berlin", "America/New_York"


def restricted(tz, start, seconds, rvs):
    return schedule(tz, [layer(rvs, WEEK, ["A"], [daily(start, seconds)])])


def test_berlin_business_hours_across_spring_forward():
    # Clocks go 02:00 CET -> 03:00 CEST on Sunday 2024-03-31.  09:00-17:00 stays local:
    # Sat 08:00Z-16:00Z (UTC+1), Sun and Mon 07:00Z-15:00Z (UTC+2); 8 h each day.
    s = restricted(BERLIN, "09:00:00", 8 * 3600, "2024-03-01T00:00:00+01:00")
    got = triples(s.final_entries("2024-03-30T00:00:00Z", "2024-04-02T00:00:00Z"))
    assert got == [
        (utc(2024, 3, 30, 8), utc(2024, 3, 30, 16), "A"),
        (utc(2024, 3, 31, 7), utc(2024, 3, 31, 15), "A"),
        (utc(2024, 4, 1, 7), utc(2024, 4, 1, 15), "A"),
    ]
    assert all(e - s_ == timedelta(hours=8) for s_, e, _ in got)


def test_berlin_business_hours_across_fall_back():
    # Clocks go 03:00 CEST -> 02:00 CET on Sunday 2024-10-27: Sat 07:00Z-15:00Z, Sun 08:00Z-16:00Z.
    s = restricted(BERLIN, "09:00:00", 8 * 3600, "2024-10-01T00:00:00+02:00")
    entries = s.final_entries("2024-10-26T00:00:00Z", "2024-10-28T00:00:00Z")
    assert triples(entries) == [
        (utc(2024, 10, 26, 7), utc(2024, 10, 26, 15), "A"),
        (utc(2024, 10, 27, 8), utc(2024, 10, 27, 16), "A"),
    ]
    assert [(e.start.hour, e.end.hour) for e in entries] == [(9, 17), (9, 17)]  # local clock


def test_new_york_business_hours_across_both_switches():
    # EST = UTC-5, EDT = UTC-4.  2024-03-10 02:00 EST -> 03:00 EDT; 2024-11-03 02:00 EDT -> 01:00 EST.
    s = restricted(NEW_YORK, "09:00:00", 8 * 3600, "2024-01-01T00:00:00-05:00")
    assert triples(s.final_entries("2024-03-09T00:00:00Z", "2024-03-11T00:00:00Z")) == [
        (utc(2024, 3, 9, 14), utc(2024, 3, 9, 22), "A"),  # EST
        (utc(2024, 3, 10, 13), utc(2024, 3, 10, 21), "A"),  # EDT
    ]
    assert triples(s.final_entries("2024-11-02T00:00:00Z", "2024-11-04T00:00:00Z")) == [
        (utc(2024, 11, 2, 13), utc(2024, 11, 2, 21), "A"),  # EDT
        (utc(2024, 11, 3, 14), utc(2024, 11, 3, 22), "A"),  # EST
    ]


def test_restriction_starting_in_the_skipped_hour():
    # 02:30 does not exist in New York on 2024-03-10.  R5: the window starts when the clock
    # jumps (03:00 EDT = 07:00Z) and still ends at 03:30 EDT (07:30Z): 30 minutes that day.
    # Day before: 02:30 EST = 07:30Z .. 08:30Z.  Day after: 02:30 EDT = 06:30Z .. 07:30Z.
    s = restricted(NEW_YORK, "02:30:00", 3600, "2024-03-01T00:00:00-05:00")
    assert triples(s.final_entries("2024-03-09T00:00:00Z", "2024-03-12T00:00:00Z")) == [
        (utc(2024, 3, 9, 7, 30), utc(2024, 3, 9, 8, 30), "A"),
        (utc(2024, 3, 10, 7), utc(2024, 3, 10, 7, 30), "A"),
        (utc(2024, 3, 11, 6, 30), utc(2024, 3, 11, 7, 30), "A"),
    ]
    # Same in Berlin (2024-03-31, 02:00 -> 03:00): 02:30 starts at 03:00 CEST = 01:00Z.
    s = restricted(BERLIN, "02:30:00", 3600, "2024-03-01T00:00:00+01:00")
    assert triples(s.final_entries("2024-03-31T00:00:00Z", "2024-03-31T12:00:00Z")) == [
        (utc(2024, 3, 31, 1), utc(2024, 3, 31, 1, 30), "A")
    ]


def test_restriction_in_the_repeated_hour():
    # 01:30 happens twice in New York on 2024-11-03 (05:30Z EDT and 06:30Z EST).  R5: the window
    # starts at the first 01:30 and ends at 02:30 EST (07:30Z), so it lasts 2 h and does not
    # start a second time.  Days around it are 1 h long.
    s = restricted(NEW_YORK, "01:30:00", 3600, "2024-10-01T00:00:00-04:00")
    assert triples(s.final_entries("2024-11-02T00:00:00Z", "2024-11-05T00:00:00Z")) == [
        (utc(2024, 11, 2, 5, 30), utc(2024, 11, 2, 6, 30), "A"),
        (utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 7, 30), "A"),
        (utc(2024, 11, 4, 6, 30), utc(2024, 11, 4, 7, 30), "A"),
    ]
    # Berlin 2024-10-27: 02:30 first at 00:30Z (CEST), window ends 03:30 CET = 02:30Z.
    s = restricted(BERLIN, "02:30:00", 3600, "2024-10-01T00:00:00+02:00")
    assert triples(s.final_entries("2024-10-27T00:00:00Z", "2024-10-27T12:00:00Z")) == [
        (utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 2, 30), "A")
    ]


def test_overnight_restriction_spanning_spring_forward_is_wall_clock():
    # 22:00 + 10 h ends at 08:00 local.  Starting Saturday 2024-03-09 22:00 EST (03:00Z Sunday)
    # it ends Sunday 08:00 EDT (12:00Z): 9 real hours, because the night lost an hour.
    s = restricted(NEW_YORK, "22:00:00", 10 * 3600, "2024-03-01T00:00:00-05:00")
    got = triples(s.final_entries("2024-03-10T00:00:00Z", "2024-03-10T18:00:00Z"))
    assert got == [(utc(2024, 3, 10, 3), utc(2024, 3, 10, 12), "A")]


# --------------------------------------------------------------------------------------------
# DST: daily rotations (rule R2, both clocks)
# --------------------------------------------------------------------------------------------


def handoffs(s, since, until):
    return [(e.start.astimezone(UTC), e.user_id) for e in s.final_entries(since, until)[1:]]


def test_new_york_daily_rotation_spring_forward():
    # rvs 2024-03-01 09:00 EST (14:00Z), L = 86400, users A, B; turn k -> users[k % 2].
    # elapsed: every handoff at 14:00Z; after the switch that is 10:00 EDT.
    #   Mar 10 14:00Z is k=9 -> B, Mar 11 k=10 -> A.
    # wall: handoffs stay at 09:00 local: Mar 10 09:00 EDT = 13:00Z (turn 8 was 23 h long).
    layers = [layer("2024-03-01T09:00:00-05:00", DAY, ["A", "B"])]
    since, until = "2024-03-09T12:00:00Z", "2024-03-11T18:00:00Z"
    assert handoffs(schedule(NEW_YORK, layers), since, until) == [
        (utc(2024, 3, 9, 14), "A"),
        (utc(2024, 3, 10, 14), "B"),
        (utc(2024, 3, 11, 14), "A"),
    ]
    assert handoffs(schedule(NEW_YORK, layers, turn_clock="wall"), since, until) == [
        (utc(2024, 3, 9, 14), "A"),
        (utc(2024, 3, 10, 13), "B"),
        (utc(2024, 3, 11, 13), "A"),
    ]


def test_new_york_daily_rotation_fall_back():
    # rvs 2024-11-01 09:00 EDT (13:00Z).  elapsed: 13:00Z daily = 08:00 EST after the switch.
    # wall: Nov 3 09:00 EST = 14:00Z, so the turn starting Nov 2 13:00Z lasts 25 h.
    layers = [layer("2024-11-01T09:00:00-04:00", DAY, ["A", "B"])]
    since, until = "2024-11-02T00:00:00Z", "2024-11-04T20:00:00Z"
    assert handoffs(schedule(NEW_YORK, layers), since, until) == [
        (utc(2024, 11, 2, 13), "B"),
        (utc(2024, 11, 3, 13), "A"),
        (utc(2024, 11, 4, 13), "B"),
    ]
    wall = schedule(NEW_YORK, layers, turn_clock="wall")
    assert handoffs(wall, since, until) == [
        (utc(2024, 11, 2, 13), "B"),
        (utc(2024, 11, 3, 14), "A"),
        (utc(2024, 11, 4, 14), "B"),
    ]
    assert wall.next_change_after(utc(2024, 11, 2, 13)) - utc(2024, 11, 2, 13) == timedelta(hours=25)


def test_berlin_daily_rotation_both_switches():
    # Spring: rvs 2024-03-29 09:00 CET (08:00Z).  elapsed: Mar 31 08:00Z = 10:00 CEST;
    # wall: Mar 31 09:00 CEST = 07:00Z.  Turn k: Mar 29+k; Mar 31 is k=2 -> A.
    spring = [layer("2024-03-29T09:00:00+01:00", DAY, ["A", "B"])]
    win = ("2024-03-30T12:00:00Z", "2024-03-31T12:00:00Z")
    assert handoffs(schedule(BERLIN, spring), *win) == [(utc(2024, 3, 31, 8), "A")]
    assert handoffs(schedule(BERLIN, spring, turn_clock="wall"), *win) == [(utc(2024, 3, 31, 7), "A")]
    # Fall: rvs 2024-10-25 09:00 CEST (07:00Z).  Oct 27 is k=2 -> A.
    # elapsed: Oct 27 07:00Z = 08:00 CET; wall: Oct 27 09:00 CET = 08:00Z.
    fall = [layer("2024-10-25T09:00:00+02:00", DAY, ["A", "B"])]
    win = ("2024-10-26T12:00:00Z", "2024-10-27T12:00:00Z")
    assert handoffs(schedule(BERLIN, fall), *win) == [(utc(2024, 10, 27, 7), "A")]
    assert handoffs(schedule(BERLIN, fall, turn_clock="wall"), *win) == [(utc(2024, 10, 27, 8), "A")]


# --------------------------------------------------------------------------------------------
# Escalation policies
# --------------------------------------------------------------------------------------------


@NEEDS_SHARED
def test_escalation_with_the_spec_examples():
    # Rule 1 of the example policy targets user PAM4FGS and schedule PI7DH85 (the example
    # schedule: PXPGF42, 08:00-17:00 New York).  At noon both are paged, at 20:00 only the user.
    ep = json.loads((CONTRACTS / "rest-examples" / "getEscalationPolicy.json").read_text())
    policy = ep["response_examples"]["200"]["response"]
    sched_doc = json.loads((CONTRACTS / "rest-examples" / "getSchedule.json").read_text())
    schedules = {
        "PI7DH85": parse_schedule(sched_doc["response_examples"]["200"]["response"], layer_order="response")
    }
    noon = resolve_escalation(policy, schedules, "2015-11-09T12:00:00-05:00")
    assert [(lv.level, lv.user_ids) for lv in noon] == [(1, ("PAM4FGS", "PXPGF42"))]
    evening = resolve_escalation(policy, schedules, "2015-11-09T20:00:00-05:00")
    assert evening[0].user_ids == ("PAM4FGS",)


def test_escalation_timeline_with_gaps_and_loops():
    day = schedule("UTC", [layer("2024-01-01T00:00:00Z", DAY, ["D1", "D2"], [daily("09:00:00", 8 * 3600)])])
    always = schedule("UTC", [layer("2024-01-01T00:00:00Z", WEEK, ["N1"])])
    policy = {
        "escalation_policy": {
            "num_loops": 1,
            "escalation_rules": [
                {
                    "id": "R1",
                    "escalation_delay_in_minutes": 10,
                    "targets": [{"id": "SDAY", "type": "schedule_reference"}],
                },
                {
                    "id": "R2",
                    "escalation_delay_in_minutes": 15,
                    "targets": [
                        {"id": "U9", "type": "user_reference"},
                        {"id": "SALL", "type": "schedule_reference"},
                        {"id": "GONE", "type": "schedule_reference"},
                    ],
                },
            ],
        }
    }
    schedules = {"SDAY": day, "SALL": always}
    # Triggered Jan 2 08:55Z: SDAY has nobody until 09:00 -> level 1 pages nobody and the
    # incident moves on at once (R9); level 2 at 08:55 pages U9 and N1; after 15 min the policy
    # loops: level 3 = rule 1 at 09:10, now D2 (Jan 2 is day 1 -> users[1]); level 4 at 09:20.
    tl = escalation_timeline(policy, schedules, utc(2024, 1, 2, 8, 55))
    assert [(lv.level, lv.rule_id, lv.at, lv.user_ids) for lv in tl] == [
        (1, "R1", utc(2024, 1, 2, 8, 55), ()),
        (2, "R2", utc(2024, 1, 2, 8, 55), ("U9", "N1")),
        (3, "R1", utc(2024, 1, 2, 9, 10), ("D2",)),
        (4, "R2", utc(2024, 1, 2, 9, 20), ("U9", "N1")),
    ]
    assert tl[1].unresolved_schedule_ids == ("GONE",)
    assert tl[1].sources == (("U9", "user_reference"), ("N1", "SALL"))
    assert len(escalation_timeline(policy, schedules, utc(2024, 1, 2, 8, 55), include_loops=False)) == 2
    # At a single instant: level 1 = D2 during business hours.
    levels = resolve_escalation(policy, schedules, utc(2024, 1, 2, 12))
    assert [lv.user_ids for lv in levels] == [("D2",), ("U9", "N1")]


# --------------------------------------------------------------------------------------------
# Bounded work
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clock", ["elapsed", "wall"])
def test_rotation_virtual_start_years_back_is_not_iterated(clock):
    # rvs five years before the window with hourly turns: 5 * 8760 = 43800 turns since rvs.
    # A one-day window with a 09:00-17:00 restriction must visit about 8 turns, not 43800.
    s = schedule(
        BERLIN,
        [layer("2019-06-03T09:00:00+02:00", 3600, ["A", "B", "C"], [daily("09:00:00", 8 * 3600)])],
        turn_clock=clock,
    )
    stats = RenderStats()
    entries = s.final_entries("2024-06-05T00:00:00+02:00", "2024-06-06T00:00:00+02:00", stats=stats)
    assert len(entries) == 8
    assert stats.turns <= 10
    assert stats.restriction_windows <= 6
    assert stats.turn_search_steps <= 4


# --------------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------------

T0 = int(utc(2023, 6, 1).timestamp())
T1 = int(utc(2025, 6, 1).timestamp())
ZONES = ["UTC", "Asia/Tokyo", BERLIN, NEW_YORK]
USERS = ["U1", "U2", "U3", "U4"]


def iso(ts):
    return datetime.fromtimestamp(ts, UTC).isoformat()


minute_instants = st.integers(T0 // 60, T1 // 60).map(lambda m: m * 60)
turn_lengths = st.sampled_from([1800, 3600, 4 * 3600, 12 * 3600, DAY, 2 * DAY, WEEK]) | st.integers(
    600, 3 * WEEK
)
time_of_day = st.integers(0, 1439).map(lambda m: f"{m // 60:02d}:{m % 60:02d}:00")
restrictions = st.one_of(
    st.builds(daily, time_of_day, st.integers(1, 1439).map(lambda m: m * 60)),
    st.builds(weekly, st.integers(1, 7), time_of_day, st.integers(1, 8 * 1440).map(lambda m: m * 60)),
)


@st.composite
def layers_st(draw):
    rvs = draw(minute_instants)
    start = rvs + draw(st.integers(-30 * 1440, 30 * 1440)) * 60
    end = draw(st.none() | st.integers(60, 90 * 1440).map(lambda m: start + m * 60))
    return {
        "start": iso(start),
        "end": None if end is None else iso(end),
        "rotation_virtual_start": iso(rvs),
        "rotation_turn_length_seconds": draw(turn_lengths),
        "users": [
            {"user": {"id": u}} for u in draw(st.lists(st.sampled_from(USERS), min_size=1, max_size=3))
        ],
        "restrictions": draw(st.lists(restrictions, max_size=3)),
    }


# 2024 DST switches of Europe/Berlin and America/New_York, to aim windows at them.
DST_SWITCHES = [
    int(utc(*d).timestamp())
    for d in [(2024, 3, 10, 7), (2024, 3, 31, 1), (2024, 10, 27, 1), (2024, 11, 3, 6)]
]


@st.composite
def scenario(draw, clocks=("elapsed", "wall"), zones=ZONES, near_switch=False):
    if near_switch:
        since = draw(st.sampled_from(DST_SWITCHES)) + draw(st.integers(-3 * 1440, 0)) * 60
    else:
        since = (
            draw(
                st.integers(int(utc(2024, 1, 1).timestamp()) // 60, int(utc(2024, 12, 20).timestamp()) // 60)
            )
            * 60
        )
    until = since + draw(st.integers(60, 21 * 1440)) * 60
    ovs = []
    for _ in range(draw(st.integers(0, 3))):
        o_start = since + draw(st.integers(-1440, (until - since) // 60)) * 60
        ovs.append(
            override(
                iso(o_start),
                iso(o_start + draw(st.integers(1, 3 * 1440)) * 60),
                draw(st.sampled_from(["O1", "O2", "U1"])),
            )
        )
    sched = schedule(
        draw(st.sampled_from(zones)),
        draw(st.lists(layers_st(), min_size=1, max_size=3)),
        overrides=ovs,
        turn_clock=draw(st.sampled_from(clocks)),
    )
    fracs = draw(st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=12))
    samples = [since + int(f * (until - since)) for f in fracs]
    return sched, since, until, samples


def user_at(entries, ts):
    starts = [int(e.start.timestamp()) for e in entries]
    i = bisect.bisect_right(starts, ts) - 1
    if i >= 0 and ts < int(entries[i].end.timestamp()):
        return entries[i].user_id
    return None


def entry_probe_points(entries):
    pts = []
    for e in entries:
        s, t = int(e.start.timestamp()), int(e.end.timestamp())
        pts += [s, t - 1, t]
    return pts


def oracle_restricted(restr, local_secs):
    """Independent restriction test on local naive seconds (valid away from DST switches)."""
    h, m, _ = map(int, restr["start_time_of_day"].split(":"))
    tod = h * 3600 + m * 60
    if restr["type"] == "daily_restriction":
        period, origin = DAY, tod
    else:  # 1970-01-01 was a Thursday (ISO 4)
        period, origin = WEEK, (restr["start_day_of_week"] - 4) * DAY + tod
    return (local_secs - origin) % period < restr["duration_seconds"]


def oracle_user(sched_doc_layers, overrides, tz, ts):
    """Brute force, elapsed clock: overrides (latest start wins), then layers top-down."""
    best = None
    for i, o in enumerate(overrides):
        s = int(datetime.fromisoformat(o["start"]).timestamp())
        e = int(datetime.fromisoformat(o["end"]).timestamp())
        if s <= ts < e and (best is None or (s, i) > best[0]):
            best = ((s, i), o["user"]["id"])
    if best:
        return best[1]
    local = datetime.fromtimestamp(ts, tz).replace(tzinfo=None)
    local_secs = int((local - datetime(1970, 1, 1)).total_seconds())
    for lay in reversed(sched_doc_layers):
        start = int(datetime.fromisoformat(lay["start"]).timestamp())
        end = lay["end"] and int(datetime.fromisoformat(lay["end"]).timestamp())
        if ts < start or (end is not None and ts >= end):
            continue
        if lay["restrictions"] and not any(oracle_restricted(r, local_secs) for r in lay["restrictions"]):
            continue
        rvs = int(datetime.fromisoformat(lay["rotation_virtual_start"]).timestamp())
        users = [u["user"]["id"] for u in lay["users"]]
        return users[((ts - rvs) // lay["rotation_turn_length_seconds"]) % len(users)]
    return None


def near_dst_switch(tz, ts):
    # Offsets 9 days either side differ -> a switch lies within reach of a restriction window.
    z = ZoneInfo(tz)
    return (
        datetime.fromtimestamp(ts - 9 * DAY, z).utcoffset()
        != datetime.fromtimestamp(ts + 9 * DAY, z).utcoffset()
    )


PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(scenario())
def test_final_entries_are_sorted_disjoint_merged_and_inside_window(sc):
    sched, since, until, _ = sc
    entries = sched.final_entries(iso(since), iso(until))
    for e in entries:
        assert since <= e.start.timestamp() < e.end.timestamp() <= until
    # Compare instants (.timestamp()): datetimes sharing a tzinfo compare by wall time.
    for a, b in itertools.pairwise(entries):
        assert a.end.timestamp() <= b.start.timestamp()
        assert not (a.end.timestamp() == b.start.timestamp() and a.user_id == b.user_id)  # unmerged
    for lay in sched.render(iso(since), iso(until)).layers:
        for a, b in itertools.pairwise(lay.entries):
            assert a.end.timestamp() <= b.start.timestamp()


@PROPS
@given(scenario(clocks=("elapsed",)), st.data())
def test_final_schedule_matches_brute_force_oracle(sc, data):
    sched, since, until, samples = sc
    # Rebuild the raw layer/override documents the scenario was parsed from.
    layers_doc = [
        {
            "start": iso(l.start),
            "end": None if l.end is None else iso(l.end),
            "rotation_virtual_start": iso(l.rotation_virtual_start),
            "rotation_turn_length_seconds": l.rotation_turn_length_seconds,
            "users": [{"user": {"id": u}} for u in l.users],
            "restrictions": [
                {
                    "type": r.type,
                    "duration_seconds": r.duration_seconds,
                    "start_day_of_week": r.start_day_of_week,
                    "start_time_of_day": f"{r.start_time_of_day // 3600:02d}:{r.start_time_of_day % 3600 // 60:02d}:00",
                }
                for r in l.restrictions
            ],
        }
        for l in sched.layers
    ]
    ovs_doc = [override(iso(o.start), iso(o.end), o.user_id) for o in sched.overrides]
    entries = sched.final_entries(iso(since), iso(until))
    tz = ZoneInfo(sched.time_zone)
    for ts in samples + [p for p in entry_probe_points(entries) if since <= p < until]:
        if near_dst_switch(sched.time_zone, ts):
            continue
        expected = oracle_user(layers_doc, ovs_doc, tz, ts)
        assert user_at(entries, ts) == expected, datetime.fromtimestamp(ts, UTC)
        assert sched.oncall_at(datetime.fromtimestamp(ts, UTC)) == expected


@PROPS
@given(scenario())
def test_top_layer_user_wins_and_overrides_always_win(sc):
    sched, since, until, samples = sc
    r = sched.render(iso(since), iso(until))
    for ts in samples:
        final_user = user_at(r.final, ts)
        covering = [o for o in sched.overrides if o.start <= ts < o.end]
        if covering:
            winner = max(covering, key=lambda o: (o.start, sched.overrides.index(o)))
            assert final_user == winner.user_id
            continue
        expected = None
        for lay in reversed(r.layers):  # highest precedence first
            u = user_at(lay.entries, ts)
            if u is not None:
                expected = u
                break
        assert final_user == expected


@PROPS
@given(scenario())
def test_oncall_at_agrees_with_rendered_entries(sc):
    # Point query (direct evaluation) vs. sweep renderer; all clocks and zones, incl. DST.
    sched, since, until, samples = sc
    entries = sched.final_entries(iso(since), iso(until))
    for ts in samples + [p for p in entry_probe_points(entries) if since <= p < until]:
        assert sched.oncall_at(datetime.fromtimestamp(ts, UTC)) == user_at(entries, ts)


@PROPS
@given(scenario(zones=[BERLIN, NEW_YORK], near_switch=True))
def test_oncall_at_agrees_with_rendered_entries_across_dst_switches(sc):
    # Windows that start up to 3 days before a 2024 switch, so restrictions, wall-clock turns
    # and overrides straddle skipped and repeated hours.
    test_oncall_at_agrees_with_rendered_entries.hypothesis.inner_test(sc)
    sched, since, until, _ = sc
    mid = (since + until) // 2
    whole = sched.final_entries(iso(since), iso(until))
    parts = list(sched.final_entries(iso(since), iso(mid))) + list(sched.final_entries(iso(mid), iso(until)))
    assert triples(merge_entries(parts)) == triples(whole)


@PROPS
@given(scenario(), st.floats(0, 1))
def test_rendering_is_additive_over_split_windows(sc, frac):
    sched, since, until, _ = sc
    mid = since + int(frac * (until - since))
    whole = sched.final_entries(iso(since), iso(until))
    parts = list(sched.final_entries(iso(since), iso(mid))) + list(sched.final_entries(iso(mid), iso(until)))
    assert triples(merge_entries(parts)) == triples(whole)


@PROPS
@given(
    minute_instants,
    turn_lengths,
    st.lists(st.sampled_from(USERS), min_size=1, max_size=4),
    st.sampled_from(ZONES),
    st.sampled_from(["elapsed", "wall"]),
    st.integers(1, 60 * 1440),
    st.integers(0, 400 * 1440),
)
def test_single_unrestricted_layer_covers_everything(rvs, turn, users, tz, clock, length_min, offset_min):
    s = schedule(tz, [layer(iso(rvs), turn, users)], turn_clock=clock)
    since = rvs + offset_min * 60
    until = since + length_min * 60
    r = s.render(iso(since), iso(until))
    assert r.final_coverage_percentage == pytest.approx(100.0)
    assert r.gaps == ()
    assert r.final[0].start.timestamp() == since and r.final[-1].end.timestamp() == until


@PROPS
@given(scenario(), st.floats(0, 1))
def test_next_change_after_agrees_with_oncall_at(sc, frac):
    sched, since, until, _ = sc
    t = since + int(frac * (until - since))
    horizon = timedelta(days=30)
    change = sched.next_change_after(datetime.fromtimestamp(t, UTC), horizon=horizon)
    now = sched.oncall_at(datetime.fromtimestamp(t, UTC))
    limit = t + int(horizon.total_seconds())
    entries = sched.final_entries(iso(t), iso(limit))
    if change is None:
        assert [e.user_id for e in entries] in ([], [now])
        assert not entries or (entries[0].start.timestamp() == t and entries[0].end.timestamp() == limit)
    else:
        c = int(change.timestamp())
        assert t < c < limit
        assert sched.oncall_at(change) != now
        assert sched.oncall_at(datetime.fromtimestamp(c - 1, UTC)) == now
        # No change strictly inside (t, c): every entry boundary in there keeps the same user.
        assert all(
            e.start.timestamp() >= c
            or e.end.timestamp() <= t
            or (e.start.timestamp() <= t and e.end.timestamp() >= c)
            for e in entries
        )


@PROPS
@given(scenario())
def test_overflow_entries_clip_back_to_the_plain_rendering(sc):
    sched, since, until, _ = sc
    plain = sched.final_entries(iso(since), iso(until))
    over = sched.final_entries(iso(since), iso(until), overflow=True)
    clipped = [
        ScheduleEntry(
            max(e.start, datetime.fromtimestamp(since, UTC)),
            min(e.end, datetime.fromtimestamp(until, UTC)),
            e.user_id,
        )
        for e in over
    ]
    assert triples(merge_entries(clipped)) == triples(plain)
    # The parts outside the window are really that user's time on call.
    if over:
        first, last = over[0], over[-1]
        if first.start.timestamp() < since:
            assert sched.oncall_at(first.start) == first.user_id
        if last.end.timestamp() > until:
            assert sched.oncall_at(last.end - timedelta(seconds=1)) == last.user_id


@settings(max_examples=100, deadline=None)
@given(
    st.integers(5 * 365, 6 * 365),
    turn_lengths,
    st.lists(restrictions, max_size=3),
    st.sampled_from(ZONES),
    st.sampled_from(["elapsed", "wall"]),
    st.integers(60, 3 * 1440),
)
def test_far_future_rendering_does_bounded_work(days_back, turn, restr, tz, clock, window_min):
    since = int(utc(2024, 3, 1).timestamp())
    until = since + window_min * 60
    rvs = since - days_back * DAY
    s = schedule(tz, [layer(iso(rvs), turn, ["A", "B", "C"], restr)], turn_clock=clock)
    stats = RenderStats()
    s.final_entries(iso(since), iso(until), stats=stats)
    turns_since_rvs = (until - rvs) // turn
    windows = stats.restriction_windows
    # Each restriction window visits the turns overlapping it: at most (its length / L) + 2.
    bound = (
        2 * (windows + 1)
        + 2 * ((until - since) // turn + 1)
        + sum((r["duration_seconds"] // turn + 2) * (window_min // 1440 + 3) for r in restr)
    )
    assert stats.turns <= bound
    assert bound < turns_since_rvs or turns_since_rvs < 200  # the bound is meaningful
    assert windows <= sum(1 * ((window_min // 1440) + 12) for _ in restr)
    assert stats.turn_search_steps <= (3600 // turn + 3) * 2 * (windows + 1)
