"""On-call timelines of document schedules, rendered with `pagerstream.pagerduty.oncall`: the schedule a
document describes, its gaps, and the difference between two versions of a schedule as lines such as
"Mon 2030-06-03 09:00–17:00 moves from Ann to Bob", in the schedule's own time zone."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

from pagerstream.pagerduty.oncall import Schedule, parse_schedule, resolve_time_zone


def to_oncall_schedule(entry: Mapping[str, Any]) -> Schedule:
    """A document schedule as an oncall.Schedule (layers in request order: Layer 1 first). User ids in the
    result are the document's user references (e-mails)."""
    body = {
        "name": entry.get("name"),
        "time_zone": entry.get("time_zone") or "UTC",
        "schedule_layers": [
            {"name": lay.get("name"), "start": lay.get("start"), "end": lay.get("end"),
             "rotation_virtual_start": lay.get("rotation_virtual_start"),
             "rotation_turn_length_seconds": lay.get("rotation_turn_length_seconds"),
             "users": [str(u) for u in lay.get("users") or []],
             "restrictions": lay.get("restrictions") or []}
            for lay in entry.get("layers") or []
        ],
    }
    return parse_schedule(body, layer_order="request")


def _ts(dt: datetime) -> int:
    return int(dt.timestamp())


def format_span(start: datetime, end: datetime, tz: ZoneInfo) -> str:
    """'Mon 2030-06-03 09:00–17:00', 'Mon 2030-06-03 17:00–24:00' or 'Mon 2030-06-03 17:00 – Wed 2030-06-05 09:00'."""
    a, b = start.astimezone(tz), end.astimezone(tz)
    head = a.strftime("%a %Y-%m-%d %H:%M")
    if b.date() == a.date():
        return f"{head}–{b:%H:%M}"
    if b.date() == a.date() + timedelta(days=1) and (b.hour, b.minute, b.second) == (0, 0, 0):
        return f"{head}–24:00"
    return f"{head} – {b:%a %Y-%m-%d %H:%M}"


def schedule_gaps(entry: Mapping[str, Any], since: datetime, until: datetime) -> list[tuple[datetime, datetime]]:
    """Intervals of [since, until) in which the document schedule has nobody on call."""
    sched = to_oncall_schedule(entry)
    return list(sched.render(since, until, time_zone=sched.time_zone).gaps)


def _segments(sched: Schedule, since: datetime, until: datetime) -> list[tuple[int, int, str]]:
    return [(_ts(e.start), _ts(e.end), e.user_id) for e in sched.final_entries(since, until)]


def _who(segs: list[tuple[int, int, str]], t: int) -> str | None:
    for s, e, u in segs:
        if s <= t < e:
            return u
    return None


def timeline_diff(old: Mapping[str, Any], new: Mapping[str, Any], since: datetime, until: datetime,
                  names: Mapping[str, str] | None = None, *, limit: int = 40) -> list[str]:
    """Where the final on-call schedule of `new` differs from `old` in [since, until), one line per changed
    span, in `new`'s time zone. `names` maps user references (e-mails) to display names."""
    names = names or {}
    a, b = to_oncall_schedule(old), to_oncall_schedule(new)
    tz = resolve_time_zone(new.get("time_zone") or "UTC")
    sa, sb = _segments(a, since, until), _segments(b, since, until)
    lo, hi = _ts(since), _ts(until)
    points = sorted({lo, hi} | {x for s, e, _ in sa + sb for x in (s, e) if lo <= x <= hi})
    spans: list[list[Any]] = []  # [start, end, old user, new user]
    for p, q in pairwise(points):
        u_old, u_new = _who(sa, p), _who(sb, p)
        if u_old == u_new:
            continue
        if spans and spans[-1][1] == p and spans[-1][2] == u_old and spans[-1][3] == u_new:
            spans[-1][1] = q
        else:
            spans.append([p, q, u_old, u_new])

    def who(u: str | None) -> str:
        return names.get(u, u) if u else "nobody"

    lines = []
    for s, e, u_old, u_new in spans:
        when = format_span(datetime.fromtimestamp(s, tz), datetime.fromtimestamp(e, tz), tz)
        if u_old is None:
            lines.append(f"{when} is now covered by {who(u_new)} (was nobody on call)")
        elif u_new is None:
            lines.append(f"{when} loses {who(u_old)}: nobody on call")
        else:
            lines.append(f"{when} moves from {who(u_old)} to {who(u_new)}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more changed spans"]
    return lines
