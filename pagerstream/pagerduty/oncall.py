"""Local on-call computation for PagerDuty v2 (layer-based) schedules kept as code.

Given a ``Schedule`` object as the PagerDuty REST API v2 accepts or returns it
(``time_zone``, ``schedule_layers[]``) plus overrides (``{start, end, user}``), this module
renders layer entries, the overrides sub-schedule and the final schedule for a ``[since, until)``
window, answers "who is on call at t" and "when does that change next", reports coverage and
gaps, and resolves escalation policies against rendered schedules.  It is pure code: no network,
no Kafka, standard library only (``zoneinfo`` for time zones).

Rules and where they come from
==============================

PagerDuty publishes no self-consistent rendered example of layers x restrictions x overrides
(``shared/contracts/pagerduty/schedules/NOTES.md``), so every rule below is either a quoted
documented statement or an explicit, named choice.

R1  Rotation.  Turn ``k`` of a layer covers ``[rvs + k*L, rvs + (k+1)*L)`` and belongs to
    ``users[k mod n]`` (``rvs`` = ``rotation_virtual_start``, ``L`` =
    ``rotation_turn_length_seconds``).  This is the model NOTES.md describes; the spec only says
    ``rotation_virtual_start`` is "the effective start time of the layer" (it may precede the
    layer start) and ``rotation_turn_length_seconds`` is "the duration of each on-call shift in
    seconds".  Turns exist only inside ``[layer.start, layer.end)`` (``end: null`` = no end).

R2  Turn clock across DST.  Whether a 1-day rotation keeps its wall-clock handoff across a DST
    switch is NOT documented by PagerDuty (searched: support.pagerduty.com "Schedule Basics",
    "Time Zone Settings" / its Daylight Saving Time section, REST spec; none states it).  Choice:
    ``turn_clock="elapsed"`` (default) follows the field's literal definition - L real seconds,
    so a 09:00 handoff set in winter happens at 10:00 local in summer.  ``turn_clock="wall"``
    adds ``k*L`` seconds to the wall-clock reading of ``rvs`` in the schedule's zone, so
    handoffs keep their local time (a turn spanning the switch is 23 h or 25 h long).  Wall
    times that do not exist / exist twice are resolved by R5.

R3  Restrictions ("a limit on which period of the day or week the schedule layer can accept
    assignments", spec ``ScheduleLayer.restrictions``).  A layer puts its turn's user on call at
    ``t`` iff ``t`` is in the layer span and (no restrictions, or ``t`` lies in at least one
    restriction window).  Restrictions never shift the rotation (model of NOTES.md and of the
    support article "Setting up Restrictions for On-Call Shifts": restricting "creates gaps in
    schedule coverage").  Windows are wall-clock intervals in the *schedule's* ``time_zone``:
    a daily window on local date ``d`` is ``[d + start_time_of_day, d + start_time_of_day +
    duration_seconds)`` read on the local clock, so 09:00-17:00 Europe/Berlin stays 09:00-17:00
    local (8 h) while moving by an hour in UTC.  Weekly windows start on ``start_day_of_week``
    (ISO: 1 = Monday ... 7 = Sunday).  Windows may wrap midnight or the end of the week and may
    be longer than 24 h; overlapping windows are united.  The spec sentence "Restrictions respect
    the ``time_zone`` parameter of the request" is read as the schedule's own ``time_zone`` (the
    body of the create/update request); the ``time_zone`` used when rendering only changes the
    UTC offsets of the returned timestamps, never which instants are covered.

R4  Layer precedence.  PagerDuty "Schedule Basics" (support.pagerduty.com/docs/schedules): "In a
    schedule with multiple layers, the lowest layer always takes precedence.  If a user on Layer 1
    and Layer 2 overlap, the user on Layer 2 will be the one on-call ... The last layer, then,
    essentially acts as an override for all layers that it overlaps."  So higher-numbered layers
    win.  Mapping to the JSON array: in create/update (POST/PUT) bodies - and in Terraform
    configuration, which sends its ``layer`` blocks in order - element 0 is Layer 1, the base, and
    the last element is the top (terraform-provider-pagerduty issue #424: reordering the blocks
    turns the "base" layer into the "override").  GET returns the layers in the *opposite* order: PagerDuty/public-support-scripts
    ``schedule_layer_reorganizer/README.md`` ("GET requests for schedules show schedule layers in
    reverse order to PUT and POST requests"), and PagerDuty/terraform-provider-pagerduty
    ``flattenScheduleLayers`` reverses what GET returns to match the configuration (open PR #610,
    2023, anticipates "the layer order fix" on PagerDuty's side, so the GET order may change).
    Hence ``parse_schedule(..., layer_order="request")`` (default: schedules kept as code, i.e.
    the body you would PUT; the last element wins) or ``layer_order="response"`` (a GET body; the
    first element wins).

R5  Wall-clock resolution (choice, used by R2 "wall" and R3).  A local wall time is mapped to the
    earliest instant at which the local clock shows it: in a fall-back fold that is the first
    occurrence; a time inside a spring-forward gap maps to the instant the clock jumps (the first
    instant whose local reading is later than it).  This mapping never decreases, so windows
    never invert.  Consequences: a restriction starting at 02:30 on the spring-forward night in
    New York starts at 03:00 EDT and is 30 min shorter; one covering 01:30-02:30 on the fall-back
    night starts at the first 01:30 (EDT) and ends at 02:30 EST, i.e. it lasts 2 h and contains
    the repeated hour once; a restriction never starts twice.

R6  Overrides.  NOTES.md quoting the v2->v3 upgrade guide: during ``[start, end)`` the override's
    user is on call "regardless of what the rotation layers say.  The override layer has top
    priority".  Overlapping overrides are not documented; choice: the override that starts later
    wins, ties go to the one later in the input list.

R7  Final schedule.  "Always one user at a time"; "Empty windows: Omitted from the list" (upgrade
    guide via NOTES.md).  Adjacent entries of the same user are merged (project requirement).

R8  ``overflow`` (spec parameter ``schedule_overflow``; ``schedules/overflow-semantics.vectors.json``):
    entries are truncated at ``[since, until)`` unless ``overflow=True``, in which case an entry
    crossing a bound is returned whole.  "Whole" is the shift the bound falls in: the turn of the
    source layer (or the override) clipped to the layer span, to its restriction window(s) and to
    where higher-precedence sources hide it.  It is not extended across turn handoffs, even to
    the same user (the vector: a daily 1-user rotation overflows to midnight-to-midnight).

R9  Escalation.  ``EscalationRule``: ``escalation_delay_in_minutes`` is "the number of minutes
    before an unacknowledged incident escalates away from this rule"; targets are
    ``user_reference`` / ``schedule_reference``.  ``num_loops``: "the number of times the
    escalation policy will repeat after reaching the end of its escalation".  Support article
    "Scheduling Gaps": "when no one is on call on a particular schedule, alerts will
    auto-escalate" - the timeline helper therefore moves on immediately from a level nobody can
    be paged at.  ``round_robin`` assignment is not modelled (it needs live state): every
    resolved user of a level is listed.

Other assumptions: timestamps are handled with one-second resolution (PagerDuty's own
resolution); a timestamp without a UTC offset is read as wall time in the schedule's zone (R5);
``time_zone`` may be an IANA name or one of the ActiveSupport names PagerDuty lists in its REST
"Types" page (e.g. "Eastern Time (US & Canada)").

Bounded work: the first turn overlapping a window is found arithmetically (and, for the wall
clock, by a correction of a few steps), restriction windows are generated only for the local
dates around the window, so rendering costs O(turns in window + restriction windows in window),
independent of how far ``rotation_virtual_start`` lies in the past.  ``RenderStats`` counts the
loop iterations so callers (and tests) can check that.
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any, Literal
from zoneinfo import ZoneInfo

__all__ = [
    "EscalationLevel",
    "Layer",
    "Override",
    "RenderStats",
    "RenderedLayer",
    "RenderedSchedule",
    "Restriction",
    "Schedule",
    "ScheduleEntry",
    "coverage_percentage",
    "escalation_timeline",
    "find_gaps",
    "merge_entries",
    "parse_overrides",
    "parse_schedule",
    "resolve_escalation",
    "resolve_time_zone",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_SECOND = timedelta(seconds=1)
_DAY = 86400
_WEEK = 7 * _DAY

TurnClock = Literal["elapsed", "wall"]
LayerOrder = Literal["request", "response"]

# ActiveSupport-style names PagerDuty accepts for ``time_zone`` (REST API reference, "Types" page,
# table "Time Zone Identifier | Name/Description"), mapped to their IANA identifiers.
_AS_ZONES_TABLE = """
West Central Africa=Africa/Algiers|Cairo=Africa/Cairo|Casablanca=Africa/Casablanca
Harare=Africa/Harare|Pretoria=Africa/Johannesburg|Monrovia=Africa/Monrovia|Nairobi=Africa/Nairobi
Buenos Aires=America/Argentina/Buenos_Aires|Bogota=America/Bogota|Caracas=America/Caracas
Central Time (US & Canada)=America/Chicago|Chihuahua=America/Chihuahua
Mountain Time (US & Canada)=America/Denver|Greenland=America/Godthab
Central America=America/Guatemala|Georgetown=America/Guyana|Atlantic Time (Canada)=America/Halifax
Indiana (East)=America/Indiana/Indianapolis|Alaska=America/Juneau|La Paz=America/La_Paz
Lima=America/Lima|Quito=America/Lima|Pacific Time (US & Canada)=America/Los_Angeles
Mazatlan=America/Mazatlan|Guadalajara=America/Mexico_City|Mexico City=America/Mexico_City
Monterrey=America/Monterrey|Montevideo=America/Montevideo
Eastern Time (US & Canada)=America/New_York|Arizona=America/Phoenix|Puerto Rico=America/Puerto_Rico
Saskatchewan=America/Regina|Santiago=America/Santiago|Brasilia=America/Sao_Paulo
Newfoundland=America/St_Johns|Tijuana=America/Tijuana|Almaty=Asia/Almaty|Baghdad=Asia/Baghdad
Baku=Asia/Baku|Bangkok=Asia/Bangkok|Hanoi=Asia/Bangkok|Chongqing=Asia/Chongqing
Sri Jayawardenepura=Asia/Colombo|Astana=Asia/Dhaka|Dhaka=Asia/Dhaka|Hong Kong=Asia/Hong_Kong
Irkutsk=Asia/Irkutsk|Jakarta=Asia/Jakarta|Jerusalem=Asia/Jerusalem|Kabul=Asia/Kabul
Kamchatka=Asia/Kamchatka|Islamabad=Asia/Karachi|Karachi=Asia/Karachi|Kathmandu=Asia/Kathmandu
Chennai=Asia/Kolkata|Kolkata=Asia/Kolkata|Mumbai=Asia/Kolkata|New Delhi=Asia/Kolkata
Krasnoyarsk=Asia/Krasnoyarsk|Kuala Lumpur=Asia/Kuala_Lumpur|Kuwait=Asia/Kuwait
Magadan=Asia/Magadan|Abu Dhabi=Asia/Muscat|Muscat=Asia/Muscat|Novosibirsk=Asia/Novosibirsk
Rangoon=Asia/Rangoon|Riyadh=Asia/Riyadh|Seoul=Asia/Seoul|Beijing=Asia/Shanghai
Singapore=Asia/Singapore|Srednekolymsk=Asia/Srednekolymsk|Taipei=Asia/Taipei
Tashkent=Asia/Tashkent|Tbilisi=Asia/Tbilisi|Tehran=Asia/Tehran|Osaka=Asia/Tokyo
Sapporo=Asia/Tokyo|Tokyo=Asia/Tokyo|Ulaanbaatar=Asia/Ulaanbaatar|Urumqi=Asia/Urumqi
Vladivostok=Asia/Vladivostok|Yakutsk=Asia/Yakutsk|Ekaterinburg=Asia/Yekaterinburg
Yerevan=Asia/Yerevan|Azores=Atlantic/Azores|Cape Verde Is.=Atlantic/Cape_Verde
Mid-Atlantic=Atlantic/South_Georgia|Adelaide=Australia/Adelaide|Brisbane=Australia/Brisbane
Darwin=Australia/Darwin|Hobart=Australia/Hobart|Canberra=Australia/Melbourne
Melbourne=Australia/Melbourne|Perth=Australia/Perth|Sydney=Australia/Sydney
International Date Line West=Etc/GMT+12|UTC=Etc/UTC|Amsterdam=Europe/Amsterdam
Athens=Europe/Athens|Belgrade=Europe/Belgrade|Berlin=Europe/Berlin|Bratislava=Europe/Bratislava
Brussels=Europe/Brussels|Bucharest=Europe/Bucharest|Budapest=Europe/Budapest
Copenhagen=Europe/Copenhagen|Dublin=Europe/Dublin|Helsinki=Europe/Helsinki
Istanbul=Europe/Istanbul|Kaliningrad=Europe/Kaliningrad|Kyiv=Europe/Kiev|Lisbon=Europe/Lisbon
Ljubljana=Europe/Ljubljana|Edinburgh=Europe/London|London=Europe/London|Madrid=Europe/Madrid
Minsk=Europe/Minsk|Moscow=Europe/Moscow|St. Petersburg=Europe/Moscow|Paris=Europe/Paris
Prague=Europe/Prague|Riga=Europe/Riga|Rome=Europe/Rome|Samara=Europe/Samara
Sarajevo=Europe/Sarajevo|Skopje=Europe/Skopje|Sofia=Europe/Sofia|Stockholm=Europe/Stockholm
Tallinn=Europe/Tallinn|Vienna=Europe/Vienna|Vilnius=Europe/Vilnius|Volgograd=Europe/Volgograd
Warsaw=Europe/Warsaw|Zagreb=Europe/Zagreb|Bern=Europe/Zurich|Zurich=Europe/Zurich
Samoa=Pacific/Apia|Auckland=Pacific/Auckland|Wellington=Pacific/Auckland
Chatham Is.=Pacific/Chatham|Tokelau Is.=Pacific/Fakaofo|Fiji=Pacific/Fiji
Solomon Is.=Pacific/Guadalcanal|Guam=Pacific/Guam|Hawaii=Pacific/Honolulu
Marshall Is.=Pacific/Majuro|Midway Island=Pacific/Midway|New Caledonia=Pacific/Noumea
American Samoa=Pacific/Pago_Pago|Port Moresby=Pacific/Port_Moresby|Nuku'alofa=Pacific/Tongatapu
"""
ACTIVESUPPORT_ZONES: dict[str, str] = dict(
    pair.split("=", 1) for line in _AS_ZONES_TABLE.strip().splitlines() for pair in line.split("|")
)


def resolve_time_zone(name: str | ZoneInfo) -> ZoneInfo:
    """IANA name, PagerDuty/ActiveSupport display name, or a ``ZoneInfo`` -> ``ZoneInfo``."""
    if isinstance(name, ZoneInfo):
        return name
    if not isinstance(name, str) or not name:
        raise ValueError(f"time zone must be a non-empty string, got {name!r}")
    key = ACTIVESUPPORT_ZONES.get(name, name)
    try:
        return ZoneInfo(key)
    except Exception as exc:  # ZoneInfoNotFoundError, ValueError for malformed keys
        raise ValueError(f"unknown time zone {name!r}") from exc


# --------------------------------------------------------------------------------------------
# Instants: int seconds since the epoch (UTC).  Wall times: naive datetimes in a zone.
# --------------------------------------------------------------------------------------------


def _ts(dt: datetime) -> int:
    return (dt - _EPOCH) // _SECOND


def _local(ts: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ts, tz).replace(tzinfo=None)


def _resolve_wall(naive: datetime, tz: ZoneInfo, stats: RenderStats | None = None) -> int:
    """Earliest instant whose local reading in ``tz`` is ``naive`` (fold -> first occurrence);
    a wall time in a gap -> the instant the clock jumps past it (rule R5)."""
    if stats is not None:
        stats.wall_resolutions += 1
    early = _ts(naive.replace(tzinfo=tz, fold=0))
    late = _ts(naive.replace(tzinfo=tz, fold=1))
    hits = [u for u in (early, late) if _local(u, tz) == naive.replace(microsecond=0)]
    if hits:
        return min(hits)
    # Gap: one candidate reads before ``naive``, the other after; the local reading is
    # non-decreasing between them, so bisect for the first second that reads >= naive.
    lo, hi = min(early, late), max(early, late)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _local(mid, tz) >= naive:
            hi = mid
        else:
            lo = mid
    return hi


def _to_instant(value: datetime | str, tz: ZoneInfo) -> int:
    """Aware datetime / ISO-8601 string -> int seconds.  No offset -> wall time in ``tz``."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("z", "Z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from exc
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if not isinstance(value, datetime):
        raise TypeError(f"expected datetime or ISO-8601 string, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        return _resolve_wall(value.replace(microsecond=0), tz)
    return _ts(value)


def _from_instant(ts: int, tz: ZoneInfo | timezone) -> datetime:
    return datetime.fromtimestamp(ts, tz)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@dataclass
class RenderStats:
    """Loop-iteration counters (not timings) so callers can check that work stays bounded."""

    turns: int = 0  # rotation turns visited
    restriction_windows: int = 0  # restriction occurrences generated
    wall_resolutions: int = 0  # wall-clock -> instant conversions
    turn_search_steps: int = 0  # corrections while locating the first turn (wall clock)
    segments: int = 0  # segments fed to the final-schedule sweep


@dataclass(frozen=True)
class Restriction:
    type: Literal["daily_restriction", "weekly_restriction"]
    start_time_of_day: int  # seconds after local midnight
    duration_seconds: int
    start_day_of_week: int | None = None  # ISO 1 = Monday ... 7 = Sunday (weekly only)

    @property
    def period(self) -> int:
        return _DAY if self.type == "daily_restriction" else _WEEK


@dataclass(frozen=True)
class Layer:
    start: int
    end: int | None
    rotation_virtual_start: int
    rotation_turn_length_seconds: int
    users: tuple[str, ...]
    restrictions: tuple[Restriction, ...] = ()
    name: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class Override:
    start: int
    end: int
    user_id: str
    id: str | None = None


@dataclass(frozen=True)
class ScheduleEntry:
    start: datetime
    end: datetime
    user_id: str

    def to_api(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "user": {"id": self.user_id, "type": "user_reference"},
        }


@dataclass(frozen=True)
class RenderedLayer:
    name: str | None
    id: str | None
    entries: tuple[ScheduleEntry, ...]
    rendered_coverage_percentage: float


@dataclass(frozen=True)
class RenderedSchedule:
    since: datetime
    until: datetime
    time_zone: str
    overflow: bool
    layers: tuple[RenderedLayer, ...]  # Layer 1 first (ascending precedence)
    overrides: tuple[ScheduleEntry, ...]
    final: tuple[ScheduleEntry, ...]
    final_coverage_percentage: float
    overrides_coverage_percentage: float
    gaps: tuple[tuple[datetime, datetime], ...]

    def to_api(self) -> dict[str, Any]:
        """The rendered parts in the shape of ``GET /schedules/{id}`` (layers in request order)."""
        return {
            "time_zone": self.time_zone,
            "schedule_layers": [
                {
                    "name": lay.name,
                    "id": lay.id,
                    "rendered_schedule_entries": [e.to_api() for e in lay.entries],
                    "rendered_coverage_percentage": lay.rendered_coverage_percentage,
                }
                for lay in self.layers
            ],
            "overrides_subschedule": {
                "name": "Overrides",
                "rendered_schedule_entries": [e.to_api() for e in self.overrides],
                "rendered_coverage_percentage": self.overrides_coverage_percentage,
            },
            "final_schedule": {
                "name": "Final Schedule",
                "rendered_schedule_entries": [e.to_api() for e in self.final],
                "rendered_coverage_percentage": self.final_coverage_percentage,
            },
        }


# A segment: (start, end, user_id, key).  key identifies the "shift" a piece belongs to:
# ("L", layer_index, turn_index) or ("O", override_rank).
_Seg = tuple[int, int, str, tuple]


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_TOD = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


def _parse_tod(text: Any) -> int:
    m = _TOD.match(str(text).strip())
    if not m:
        raise ValueError(f"start_time_of_day must be HH:mm:ss, got {text!r}")
    h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if h > 23 or mi > 59 or s > 59:
        raise ValueError(f"start_time_of_day out of range: {text!r}")
    return h * 3600 + mi * 60 + s


def _user_id(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, Mapping):
        if "user" in obj and isinstance(obj["user"], (Mapping, str)):
            return _user_id(obj["user"])
        if obj.get("id"):
            return str(obj["id"])
    raise ValueError(f"cannot find a user id in {obj!r}")


def _parse_restriction(obj: Mapping[str, Any]) -> Restriction:
    rtype = obj.get("type")
    if rtype not in ("daily_restriction", "weekly_restriction"):
        raise ValueError(f"unknown restriction type {rtype!r}")
    duration = int(obj["duration_seconds"])
    if duration <= 0:
        raise ValueError("restriction duration_seconds must be positive")
    dow = obj.get("start_day_of_week")
    if rtype == "weekly_restriction":
        if dow is None or not 1 <= int(dow) <= 7:
            raise ValueError("weekly_restriction needs start_day_of_week in 1..7 (ISO, 1 = Monday)")
        dow = int(dow)
    else:
        dow = None  # ignored for daily restrictions
    return Restriction(rtype, _parse_tod(obj["start_time_of_day"]), duration, dow)


def _parse_layer(obj: Mapping[str, Any], tz: ZoneInfo) -> Layer:
    turn = int(obj["rotation_turn_length_seconds"])
    if turn <= 0:
        raise ValueError("rotation_turn_length_seconds must be positive")
    end = obj.get("end")
    return Layer(
        start=_to_instant(obj["start"], tz),
        end=None if end in (None, "") else _to_instant(end, tz),
        rotation_virtual_start=_to_instant(obj["rotation_virtual_start"], tz),
        rotation_turn_length_seconds=turn,
        users=tuple(_user_id(u) for u in obj.get("users") or ()),
        restrictions=tuple(_parse_restriction(r) for r in obj.get("restrictions") or ()),
        name=obj.get("name"),
        id=obj.get("id"),
    )


def parse_overrides(obj: Any, time_zone: str | ZoneInfo = "UTC") -> tuple[Override, ...]:
    """``{"overrides": [...]}`` or a list of ``{start, end, user}`` objects -> ``Override`` s.

    ``time_zone`` only matters for timestamps without a UTC offset.  Zero-length overrides are
    dropped; an override ending before it starts is an error."""
    tz = resolve_time_zone(time_zone)
    if isinstance(obj, Mapping):
        obj = obj.get("overrides", [])
    out: list[Override] = []
    for item in obj or ():
        if isinstance(item, Override):
            out.append(item)
            continue
        if isinstance(item, Mapping) and "override" in item and "start" not in item:
            item = item["override"]
        start, end = _to_instant(item["start"], tz), _to_instant(item["end"], tz)
        if end < start:
            raise ValueError(f"override ends before it starts: {item!r}")
        if end > start:
            out.append(Override(start, end, _user_id(item["user"]), item.get("id")))
    return tuple(out)


def parse_schedule(
    obj: Mapping[str, Any],
    *,
    overrides: Any = None,
    layer_order: LayerOrder = "request",
    turn_clock: TurnClock = "elapsed",
) -> Schedule:
    """Parse a PagerDuty v2 ``Schedule`` (bare or wrapped as ``{"schedule": {...}}``).

    ``layer_order``: ``"request"`` - array index 0 is Layer 1 and the last element has the
    highest precedence (POST/PUT bodies, Terraform); ``"response"`` - the order ``GET
    /schedules/{id}`` returns, highest layer first (rule R4).  ``turn_clock``: rule R2.
    """
    if "schedule" in obj and isinstance(obj["schedule"], Mapping):
        obj = obj["schedule"]
    if layer_order not in ("request", "response"):
        raise ValueError("layer_order must be 'request' or 'response'")
    tz_name = obj.get("time_zone") or "UTC"
    tz = resolve_time_zone(tz_name)
    layers = [_parse_layer(layer, tz) for layer in obj.get("schedule_layers") or ()]
    if layer_order == "response":
        layers.reverse()
    return Schedule(
        time_zone=tz_name,
        layers=tuple(layers),
        overrides=parse_overrides(overrides, tz) if overrides is not None else (),
        turn_clock=turn_clock,
        id=obj.get("id"),
        name=obj.get("name"),
    )


# --------------------------------------------------------------------------------------------
# Interval helpers (pure, on int seconds or on ScheduleEntry)
# --------------------------------------------------------------------------------------------


def _merge_same_user(segs: Iterable[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for s, e, u in segs:
        if e <= s:
            continue
        if out and out[-1][1] == s and out[-1][2] == u:
            out[-1] = (out[-1][0], e, u)
        else:
            out.append((s, e, u))
    return out


def _merge_same_key(segs: Iterable[_Seg]) -> list[_Seg]:
    out: list[_Seg] = []
    for s, e, u, k in segs:
        if e <= s:
            continue
        if out and out[-1][1] == s and out[-1][3] == k:
            out[-1] = (out[-1][0], e, u, k)
        else:
            out.append((s, e, u, k))
    return out


def merge_entries(entries: Iterable[ScheduleEntry]) -> list[ScheduleEntry]:
    """Sort entries and join touching entries of the same user (the time zone of the first of
    each merged run is kept).  Compares instants: Python compares two datetimes that share a
    tzinfo by wall time, which is wrong inside a repeated (fall-back) hour."""
    out: list[ScheduleEntry] = []
    for e in sorted(entries, key=lambda x: (_ts(x.start), _ts(x.end))):
        if out and _ts(out[-1].end) == _ts(e.start) and out[-1].user_id == e.user_id:
            out[-1] = ScheduleEntry(out[-1].start, e.end.astimezone(out[-1].end.tzinfo), e.user_id)
        else:
            out.append(e)
    return out


def _covered(segs: Iterable[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    ivs = sorted((max(s, lo), min(e, hi)) for s, e in segs if min(e, hi) > max(s, lo))
    out: list[tuple[int, int]] = []
    for s, e in ivs:
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _coverage(segs: Iterable[tuple[int, int]], lo: int, hi: int) -> float:
    if hi <= lo:
        raise ValueError("until must be after since")
    return 100.0 * sum(e - s for s, e in _covered(segs, lo, hi)) / (hi - lo)


def coverage_percentage(entries: Iterable[ScheduleEntry], since: datetime, until: datetime) -> float:
    """Percentage of ``[since, until)`` covered by ``entries`` (0-100, not rounded)."""
    return _coverage(((_ts(e.start), _ts(e.end)) for e in entries), _ts(since), _ts(until))


def find_gaps(
    entries: Iterable[ScheduleEntry], since: datetime, until: datetime
) -> list[tuple[datetime, datetime]]:
    """Sub-intervals of ``[since, until)`` covered by no entry, in ``since``'s time zone."""
    tz = since.tzinfo or UTC
    lo, hi = _ts(since), _ts(until)
    return [
        (_from_instant(s, tz), _from_instant(e, tz))
        for s, e in _gaps(((_ts(e.start), _ts(e.end)) for e in entries), lo, hi)
    ]


def _gaps(segs: Iterable[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    out, cur = [], lo
    for s, e in _covered(segs, lo, hi):
        if s > cur:
            out.append((cur, s))
        cur = max(cur, e)
    if cur < hi:
        out.append((cur, hi))
    return out


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A parsed v2 schedule.  ``layers`` are in ascending precedence (Layer 1 first)."""

    time_zone: str
    layers: tuple[Layer, ...]
    overrides: tuple[Override, ...] = ()
    turn_clock: TurnClock = "elapsed"
    id: str | None = None
    name: str | None = None
    _tz: ZoneInfo = field(init=False, repr=False, compare=False)
    _override_rank: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.turn_clock not in ("elapsed", "wall"):
            raise ValueError("turn_clock must be 'elapsed' or 'wall'")
        object.__setattr__(self, "_tz", resolve_time_zone(self.time_zone))
        # Rule R6: later start wins, ties -> later in the list.  rank[i] = priority of override i.
        order = sorted(range(len(self.overrides)), key=lambda i: (self.overrides[i].start, i))
        rank = [0] * len(self.overrides)
        for r, i in enumerate(order):
            rank[i] = r
        object.__setattr__(self, "_override_rank", tuple(rank))

    # -- construction helpers ---------------------------------------------------------------

    def with_overrides(self, overrides: Any) -> Schedule:
        """A copy with ``overrides`` (raw API objects or ``Override`` s) replacing the current ones."""
        return Schedule(
            self.time_zone,
            self.layers,
            parse_overrides(overrides, self._tz),
            self.turn_clock,
            self.id,
            self.name,
        )

    @property
    def tz(self) -> ZoneInfo:
        return self._tz

    # -- rotation ------------------------------------------------------------------------------

    def _turn_start(self, layer: Layer, k: int, stats: RenderStats | None) -> int:
        rvs, length = layer.rotation_virtual_start, layer.rotation_turn_length_seconds
        if self.turn_clock == "elapsed":
            return rvs + k * length
        base = _local(rvs, self._tz)
        return _resolve_wall(base + timedelta(seconds=k * length), self._tz, stats)

    def _turn_index(self, layer: Layer, t: int, stats: RenderStats | None) -> int:
        """k with turn_start(k) <= t < turn_start(k+1)."""
        k = (t - layer.rotation_virtual_start) // layer.rotation_turn_length_seconds
        if self.turn_clock == "elapsed":
            return k
        # Wall clock: the elapsed estimate is off by at most the zone's offset swing; correct it.
        while self._turn_start(layer, k, stats) > t:
            k -= 1
            if stats is not None:
                stats.turn_search_steps += 1
        while self._turn_start(layer, k + 1, stats) <= t:
            k += 1
            if stats is not None:
                stats.turn_search_steps += 1
        return k

    # -- restrictions ----------------------------------------------------------------------------

    def _restriction_windows(
        self, r: Restriction, lo: int, hi: int, stats: RenderStats | None
    ) -> Iterator[tuple[int, int]]:
        """Occurrences of ``r`` (rule R3/R5) that intersect ``[lo, hi)``, in order."""
        tz = self._tz
        first = _local(lo, tz).date() - timedelta(days=r.duration_seconds // _DAY + 2)
        last = _local(hi, tz).date() + timedelta(days=1)
        step = timedelta(days=1 if r.type == "daily_restriction" else 7)
        if r.type == "weekly_restriction":
            first += timedelta(days=(r.start_day_of_week - first.isoweekday()) % 7)
        day = first
        while day <= last:
            if stats is not None:
                stats.restriction_windows += 1
            wall_start = datetime.combine(day, time()) + timedelta(seconds=r.start_time_of_day)
            ws = _resolve_wall(wall_start, tz, stats)
            we = _resolve_wall(wall_start + timedelta(seconds=r.duration_seconds), tz, stats)
            if we > ws and we > lo and ws < hi:
                yield ws, we
            day += step

    def _layer_windows(
        self, layer: Layer, lo: int, hi: int, stats: RenderStats | None
    ) -> list[tuple[int, int]]:
        """Where ``layer`` accepts assignments inside ``[lo, hi)``: span x union of restrictions."""
        span_lo = max(lo, layer.start)
        span_hi = hi if layer.end is None else min(hi, layer.end)
        if span_hi <= span_lo:
            return []
        if not layer.restrictions:
            return [(span_lo, span_hi)]
        occurrences: list[tuple[int, int]] = []
        for r in layer.restrictions:
            occurrences.extend(self._restriction_windows(r, span_lo, span_hi, stats))
        return _covered(occurrences, span_lo, span_hi)

    # -- layer rendering ---------------------------------------------------------------------------

    def _layer_segments(self, li: int, lo: int, hi: int, stats: RenderStats | None) -> list[_Seg]:
        layer = self.layers[li]
        if not layer.users or hi <= lo:
            return []
        n = len(layer.users)
        out: list[_Seg] = []
        for w0, w1 in self._layer_windows(layer, lo, hi, stats):
            k = self._turn_index(layer, w0, stats)
            ts = self._turn_start(layer, k, stats)
            while ts < w1:
                te = self._turn_start(layer, k + 1, stats)
                if stats is not None:
                    stats.turns += 1
                s, e = max(ts, w0), min(te, w1)
                if e > s:
                    out.append((s, e, layer.users[k % n], ("L", li, k)))
                k, ts = k + 1, te
        return _merge_same_key(out)

    def _override_segments(self, lo: int, hi: int) -> list[_Seg]:
        out = []
        for i, o in enumerate(self.overrides):
            s, e = max(o.start, lo), min(o.end, hi)
            if e > s:
                out.append((s, e, o.user_id, ("O", self._override_rank[i])))
        return out

    @staticmethod
    def _priority(key: tuple) -> tuple[int, int]:
        # Overrides above all layers; among layers the higher index wins; among overrides the rank.
        return (1, key[1]) if key[0] == "O" else (0, key[1])

    def _final_segments(self, lo: int, hi: int, stats: RenderStats | None) -> list[_Seg]:
        """Top-of-stack sweep over all sources (rules R4, R6, R7), keyed by source shift."""
        segs: list[_Seg] = []
        for li in range(len(self.layers)):
            segs.extend(self._layer_segments(li, lo, hi, stats))
        segs.extend(self._override_segments(lo, hi))
        if stats is not None:
            stats.segments += len(segs)
        if not segs:
            return []
        segs.sort(key=lambda s: s[0])
        bounds = sorted({b for s in segs for b in (s[0], s[1])})
        heap: list[tuple[tuple[int, int], int, int]] = []  # (-priority, end, index)
        out: list[_Seg] = []
        nxt = 0
        for x, y in itertools.pairwise(bounds):
            while nxt < len(segs) and segs[nxt][0] <= x:
                p = self._priority(segs[nxt][3])
                heapq.heappush(heap, ((-p[0], -p[1]), segs[nxt][1], nxt))
                nxt += 1
            while heap and heap[0][1] <= x:
                heapq.heappop(heap)
            if heap:
                # Lazily skip ended segments hidden below the top; the top is valid here.
                _, _, idx = heap[0]
                s = segs[idx]
                out.append((x, y, s[2], s[3]))
        return _merge_same_key(out)

    # -- overflow ----------------------------------------------------------------------------------

    def _source_bounds(self, key: tuple, stats: RenderStats | None) -> tuple[int, int | None]:
        """Outer bounds of the shift a key denotes (turn within the layer span, or the override)."""
        if key[0] == "O":
            o = next(o for i, o in enumerate(self.overrides) if self._override_rank[i] == key[1])
            return o.start, o.end
        layer = self.layers[key[1]]
        k = key[2]
        s = max(self._turn_start(layer, k, stats), layer.start)
        e = self._turn_start(layer, k + 1, stats)
        if layer.end is not None:
            e = min(e, layer.end)
        return s, e

    def _extend(self, segs: list[_Seg], lo: int, hi: int, render, stats) -> list[tuple[int, int, str]]:
        """Rule R8: widen the first/last piece to the whole shift they belong to."""
        if not segs:
            return []
        segs = list(segs)
        first = segs[0]
        if first[0] == lo:
            outer_lo, _ = self._source_bounds(first[3], stats)
            if outer_lo < lo:
                before = render(outer_lo, lo)
                start = lo
                for s, e, _, k in reversed(before):
                    if e == start and k == first[3]:
                        start = s
                    else:
                        break
                segs[0] = (start, first[1], first[2], first[3])
        last = segs[-1]
        if last[1] == hi:
            _, outer_hi = self._source_bounds(last[3], stats)
            if outer_hi is not None and outer_hi > hi:
                after = render(hi, outer_hi)
                end = hi
                for s, e, _, k in after:
                    if s == end and k == last[3]:
                        end = e
                    else:
                        break
                segs[-1] = (segs[-1][0], end, last[2], last[3])
        return [(s, e, u) for s, e, u, _ in segs]

    # -- public rendering -------------------------------------------------------------------------

    def _window(self, since: Any, until: Any) -> tuple[int, int]:
        lo, hi = _to_instant(since, self._tz), _to_instant(until, self._tz)
        if hi < lo:
            raise ValueError("until cannot be before since")
        return lo, hi

    def _out_tz(self, time_zone: str | ZoneInfo | None) -> tuple[ZoneInfo, str]:
        if time_zone is None:
            return self._tz, self.time_zone
        tz = resolve_time_zone(time_zone)
        return tz, time_zone if isinstance(time_zone, str) else str(time_zone)

    def _entries(self, triples: Iterable[tuple[int, int, str]], tz: ZoneInfo) -> tuple[ScheduleEntry, ...]:
        return tuple(
            ScheduleEntry(_from_instant(s, tz), _from_instant(e, tz), u)
            for s, e, u in _merge_same_user(triples)
        )

    def layer_entries(
        self,
        index: int,
        since: Any,
        until: Any,
        *,
        overflow: bool = False,
        time_zone: str | ZoneInfo | None = None,
        stats: RenderStats | None = None,
    ) -> tuple[ScheduleEntry, ...]:
        """Rendered entries of layer ``index`` (0 = Layer 1, ascending precedence)."""
        lo, hi = self._window(since, until)
        tz, _ = self._out_tz(time_zone)
        segs = self._layer_segments(index, lo, hi, stats)
        if overflow:
            triples = self._extend(segs, lo, hi, lambda a, b: self._layer_segments(index, a, b, stats), stats)
        else:
            triples = [(s, e, u) for s, e, u, _ in segs]
        return self._entries(triples, tz)

    def final_entries(
        self,
        since: Any,
        until: Any,
        *,
        overflow: bool = False,
        time_zone: str | ZoneInfo | None = None,
        stats: RenderStats | None = None,
    ) -> tuple[ScheduleEntry, ...]:
        """The final schedule (layers by precedence, overrides on top) for ``[since, until)``."""
        lo, hi = self._window(since, until)
        tz, _ = self._out_tz(time_zone)
        segs = self._final_segments(lo, hi, stats)
        if overflow:
            triples = self._extend(segs, lo, hi, lambda a, b: self._final_segments(a, b, stats), stats)
        else:
            triples = [(s, e, u) for s, e, u, _ in segs]
        return self._entries(triples, tz)

    def override_entries(
        self, since: Any, until: Any, *, overflow: bool = False, time_zone: str | ZoneInfo | None = None
    ) -> tuple[ScheduleEntry, ...]:
        """The overrides sub-schedule (overlaps resolved by rule R6)."""
        lo, hi = self._window(since, until)
        tz, _ = self._out_tz(time_zone)
        only = Schedule(self.time_zone, (), self.overrides, self.turn_clock)
        segs = only._final_segments(lo, hi, None)
        if overflow:
            triples = self._extend(segs, lo, hi, lambda a, b: only._final_segments(a, b, None), None)
        else:
            triples = [(s, e, u) for s, e, u, _ in segs]
        return self._entries(triples, tz)

    def render(
        self,
        since: Any,
        until: Any,
        *,
        overflow: bool = False,
        time_zone: str | ZoneInfo | None = None,
        stats: RenderStats | None = None,
    ) -> RenderedSchedule:
        """Everything ``GET /schedules/{id}?since&until&overflow&time_zone`` renders.

        Coverage percentages and gaps always refer to ``[since, until)``, also with overflow."""
        lo, hi = self._window(since, until)
        if hi <= lo:
            raise ValueError("until must be after since")
        tz, tz_name = self._out_tz(time_zone)
        layers = []
        for i, layer in enumerate(self.layers):
            clipped = self._layer_segments(i, lo, hi, stats)
            entries = (
                self.layer_entries(i, since, until, overflow=overflow, time_zone=tz, stats=stats)
                if overflow
                else self._entries([(s, e, u) for s, e, u, _ in clipped], tz)
            )
            layers.append(
                RenderedLayer(
                    layer.name, layer.id, entries, _coverage([(s, e) for s, e, _, _ in clipped], lo, hi)
                )
            )
        final_clipped = self._final_segments(lo, hi, stats)
        final = (
            self.final_entries(since, until, overflow=True, time_zone=tz, stats=stats)
            if overflow
            else self._entries([(s, e, u) for s, e, u, _ in final_clipped], tz)
        )
        ov = self.override_entries(since, until, overflow=overflow, time_zone=tz)
        ov_cov = _coverage([(max(o.start, lo), min(o.end, hi)) for o in self.overrides], lo, hi)
        spans = [(s, e) for s, e, _, _ in final_clipped]
        return RenderedSchedule(
            since=_from_instant(lo, tz),
            until=_from_instant(hi, tz),
            time_zone=tz_name,
            overflow=overflow,
            layers=tuple(layers),
            overrides=ov,
            final=final,
            final_coverage_percentage=_coverage(spans, lo, hi),
            overrides_coverage_percentage=ov_cov,
            gaps=tuple((_from_instant(s, tz), _from_instant(e, tz)) for s, e in _gaps(spans, lo, hi)),
        )

    # -- point queries -------------------------------------------------------------------------------

    def _layer_user_at(self, layer: Layer, t: int) -> str | None:
        """Direct point evaluation (independent of the sweep) of one layer at instant ``t``."""
        if not layer.users or t < layer.start or (layer.end is not None and t >= layer.end):
            return None
        if layer.restrictions and not any(
            ws <= t < we
            for r in layer.restrictions
            for ws, we in self._restriction_windows(r, t, t + 1, None)
        ):
            return None
        k = self._turn_index(layer, t, None)
        return layer.users[k % len(layer.users)]

    def oncall_at(self, t: Any) -> str | None:
        """User id on call in the final schedule at ``t`` (None = nobody)."""
        ts = _to_instant(t, self._tz)
        best: tuple[int, str] | None = None
        for i, o in enumerate(self.overrides):
            if o.start <= ts < o.end and (best is None or self._override_rank[i] > best[0]):
                best = (self._override_rank[i], o.user_id)
        if best is not None:
            return best[1]
        for layer in reversed(self.layers):
            user = self._layer_user_at(layer, ts)
            if user is not None:
                return user
        return None

    def iter_final_entries(
        self,
        since: Any,
        until: Any,
        *,
        chunk: timedelta = timedelta(days=7),
        time_zone: str | ZoneInfo | None = None,
        stats: RenderStats | None = None,
    ) -> Iterator[ScheduleEntry]:
        """Final entries of ``[since, until)`` rendered lazily chunk by chunk (chunks double in
        size up to 32x ``chunk``) and merged across chunk borders."""
        lo, hi = self._window(since, until)
        tz, _ = self._out_tz(time_zone)
        size = max(1, int(chunk.total_seconds()))
        pending: tuple[int, int, str] | None = None
        cur = lo
        while cur < hi:
            nxt = min(hi, cur + size)
            for s, e, u, _ in self._final_segments(cur, nxt, stats):
                if pending and pending[1] == s and pending[2] == u:
                    pending = (pending[0], e, u)
                    continue
                if pending:
                    yield ScheduleEntry(
                        _from_instant(pending[0], tz), _from_instant(pending[1], tz), pending[2]
                    )
                pending = (s, e, u)
            cur = nxt
            size = min(size * 2, 32 * max(1, int(chunk.total_seconds())))
        if pending:
            yield ScheduleEntry(_from_instant(pending[0], tz), _from_instant(pending[1], tz), pending[2])

    def next_change_after(
        self,
        t: Any,
        *,
        horizon: timedelta = timedelta(days=366),
        time_zone: str | ZoneInfo | None = None,
        stats: RenderStats | None = None,
    ) -> datetime | None:
        """First instant after ``t`` at which ``oncall_at`` returns something else (including a
        change to or from nobody), or None if nothing changes within ``horizon``."""
        ts = _to_instant(t, self._tz)
        tz, _ = self._out_tz(time_zone)
        end = ts + int(horizon.total_seconds())
        for entry in self.iter_final_entries(_from_instant(ts, UTC), _from_instant(end, UTC), stats=stats):
            s, e = _ts(entry.start), _ts(entry.end)
            if s > ts:
                return _from_instant(s, tz)  # nobody at t; coverage begins at s
            # Somebody is on call at t; the (merged) entry ends where that changes.
            return _from_instant(e, tz) if e < end else None
        return None


# --------------------------------------------------------------------------------------------
# Escalation policies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EscalationLevel:
    level: int  # 1-based, counting loop repetitions (rule i of loop j -> j*len(rules) + i + 1)
    rule_index: int  # 0-based index into escalation_rules
    rule_id: str | None
    escalation_delay_in_minutes: int
    at: datetime  # when this level was evaluated
    user_ids: tuple[str, ...]  # resolved users, target order, de-duplicated
    sources: tuple[tuple[str, str], ...]  # (user_id, "user_reference" | schedule id)
    unresolved_schedule_ids: tuple[str, ...]  # schedule targets missing from the mapping


def _policy_rules(policy: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], int]:
    if "escalation_policy" in policy and isinstance(policy["escalation_policy"], Mapping):
        policy = policy["escalation_policy"]
    return list(policy.get("escalation_rules") or ()), int(policy.get("num_loops") or 0)


def _resolve_rule(rule: Mapping[str, Any], schedules: Mapping[str, Schedule], ts: int):
    users: list[str] = []
    sources: list[tuple[str, str]] = []
    missing: list[str] = []
    for target in rule.get("targets") or ():
        ttype, tid = target.get("type"), target.get("id")
        if ttype in ("user_reference", "user"):
            user = str(tid)
            via = "user_reference"
        elif ttype in ("schedule_reference", "schedule"):
            sched = schedules.get(tid)
            if sched is None:
                missing.append(str(tid))
                continue
            user = sched.oncall_at(_from_instant(ts, UTC))
            via = str(tid)
            if user is None:
                continue
        else:
            raise ValueError(f"unsupported escalation target type {ttype!r}")
        sources.append((user, via))
        if user not in users:
            users.append(user)
    return tuple(users), tuple(sources), tuple(missing)


def resolve_escalation(
    policy: Mapping[str, Any],
    schedules: Mapping[str, Schedule],
    at: datetime | str,
    *,
    time_zone: str | ZoneInfo = "UTC",
) -> list[EscalationLevel]:
    """Who each escalation rule (level 1..n) would page if evaluated at ``at``."""
    rules, _ = _policy_rules(policy)
    tz = resolve_time_zone(time_zone)
    ts = _to_instant(at, tz)
    out = []
    for i, rule in enumerate(rules):
        users, sources, missing = _resolve_rule(rule, schedules, ts)
        out.append(
            EscalationLevel(
                i + 1,
                i,
                rule.get("id"),
                int(rule.get("escalation_delay_in_minutes") or 0),
                _from_instant(ts, tz),
                users,
                sources,
                missing,
            )
        )
    return out


def escalation_timeline(
    policy: Mapping[str, Any],
    schedules: Mapping[str, Schedule],
    triggered_at: datetime | str,
    *,
    include_loops: bool = True,
    time_zone: str | ZoneInfo = "UTC",
) -> list[EscalationLevel]:
    """Levels an unacknowledged incident triggered at ``triggered_at`` walks through: each level
    is evaluated when it is reached (cumulative ``escalation_delay_in_minutes``), repeated
    ``num_loops`` times when ``include_loops``; a level that resolves to nobody is passed on
    immediately (rule R9)."""
    rules, loops = _policy_rules(policy)
    tz = resolve_time_zone(time_zone)
    ts = _to_instant(triggered_at, tz)
    out = []
    rounds = 1 + (loops if include_loops else 0)
    for j in range(rounds):
        for i, rule in enumerate(rules):
            users, sources, missing = _resolve_rule(rule, schedules, ts)
            delay = int(rule.get("escalation_delay_in_minutes") or 0)
            out.append(
                EscalationLevel(
                    j * len(rules) + i + 1,
                    i,
                    rule.get("id"),
                    delay,
                    _from_instant(ts, tz),
                    users,
                    sources,
                    missing,
                )
            )
            if users:
                ts += delay * 60
    return out
