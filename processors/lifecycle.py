"""Incident lifecycles: pagerstream's incident events joined with PagerDuty's V3 webhooks, and the
analytics computed from them (MTTA, MTTR, escalations, interruptions, noise, auto-resolution accuracy).

Pure: no Kafka, no clock, no I/O except `load_responder_timezones`. The stream side lives in
streams/lifecycle_agents.py; the definitions (and where they come from) in docs/analytics.md.

The join state of one dedup key (pagerstream's pd_dedup_key == PagerDuty's incident_key) is a plain
JSON-able dict, the *entry*::

    {"k": dedup_key,
     "ps": {incident_id: {"f": latest fields, "v": {"<version>": [change, detail, at, pd_action]}}},
     "pd": {pd_incident_id: {"ev": {event_id: [at, type, agent_id, agent_type, assignees, status,
                                                urgency, priority, title, number, created_at]}}}}

Facts are stored by identity (incident version, webhook event id), so applying a fact twice changes
nothing, and everything derived from an entry is a function of the *set* of facts, sorted by time:
duplicated or reordered deliveries give the same lifecycle as the clean, ordered stream.

One dedup key can live through several incidents (an alert that fires, resolves and fires again
keeps its dedup_key; so does PagerDuty's incident_key), so an entry holds every pagerstream incident
and every PagerDuty incident of the key, and `lifecycles` pairs them by time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from statistics import median
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PERIODS = ("business", "off", "sleep")
GROUP_BY = ("service", "team", "severity")
AUTO_RESOLUTIONS = ("auto_resolved", "resolved_while_paused")

SKEW_MS = 60_000  # a PagerDuty incident may start this much before pagerstream's opened_at (clocks)
LATE_MS = 3_600_000  # ...and at most this long after pagerstream resolved the incident (retries)
REOPEN_WINDOW_MS = 3_600_000  # auto-resolution follow-up window (docs/analytics.md)
MAX_INCIDENTS_PER_KEY = 50  # pagerstream incidents kept per dedup key (oldest dropped first)
MAX_PD_INCIDENTS_PER_KEY = 50
MAX_EVENTS_PER_PD_INCIDENT = 200

# Webhook events after which PagerDuty notifies the incident's assignees.
NOTIFYING = frozenset({"incident.triggered", "incident.escalated", "incident.reassigned", "incident.delegated",
                       "incident.reopened", "incident.unacknowledged"})
HUMAN = "user_reference"

# PagerDuty event tuple positions (entry["pd"][id]["ev"][event_id])
_AT, _TYPE, _AGENT, _AGENT_TYPE, _ASSIGNEES, _STATUS, _URGENCY, _PRIORITY, _TITLE, _NUMBER, _CREATED = range(11)
# pagerstream version tuple positions (entry["ps"][id]["v"][version])
_CHANGE, _DETAIL, _VAT, _PD_ACTION = range(4)
_FIELDS = ("service", "team", "severity", "summary", "opened_at", "acknowledged_at", "resolved_at", "state",
           "total_alerts", "duplicates")
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?")


# --- time and time zones ---------------------------------------------------------------------------
@lru_cache(maxsize=512)
def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


def period_of(at_ms: int, tz: str) -> str:
    """PagerDuty's interruption period of an instant in a responder's time zone.

    sleep: 22:00-08:00 every day; business: 08:00-18:00 Monday to Friday; off: the rest
    (18:00-22:00 on weekdays, 08:00-22:00 on Saturday and Sunday). Local wall-clock time, so
    daylight saving time moves the UTC boundaries.
    """
    local = datetime.fromtimestamp(at_ms / 1000, _zone(tz))
    if local.hour >= 22 or local.hour < 8:
        return "sleep"
    if local.weekday() < 5 and local.hour < 18:
        return "business"
    return "off"


def load_responder_timezones(path: str | Path) -> dict[str, str]:
    """A YAML map PagerDuty user id -> IANA time zone; the key "*" is the default for everyone else.

    Raises ValueError naming every bad entry.
    """
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a map of PagerDuty user id to time zone")  # noqa: TRY004 - config error
    out: dict[str, str] = {}
    problems = []
    for user, tz in data.items():
        if not isinstance(user, str) or not isinstance(tz, str) or not user or not tz:
            problems.append(f"{user!r}: expected a user id and a time zone name")
            continue
        try:
            _zone(tz)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"{user}: unknown time zone {tz!r}")
            continue
        out[user] = tz
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return out


def tz_lookup(zones: Mapping[str, str]) -> Callable[[str], str]:
    default = zones.get("*", "UTC")
    return lambda user: zones.get(user, default)


def parse_time(value: str | None) -> int | None:
    """Epoch milliseconds from an ISO 8601 date-time (no offset = UTC) or a number of epoch seconds
    (or milliseconds when above 1e11); None for None/''. Raises ValueError otherwise."""
    if value is None or value.strip() == "":
        return None
    v = value.strip()
    try:
        x = float(v)
    except ValueError:
        pass
    else:
        if not math.isfinite(x):
            raise ValueError(f"not a time: {value[:40]!r}")
        return int(x if x > 1e11 else x * 1000)
    if not _ISO.fullmatch(v):
        raise ValueError(f"not an ISO 8601 date-time or epoch seconds: {value[:40]!r}")
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


# --- facts -----------------------------------------------------------------------------------------
def incident_fact(rec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fact an IncidentEvent record adds; None for events that belong to no incident (dropped)."""
    if not rec.get("incident_id") or not rec.get("pd_dedup_key"):
        return None
    return {"src": "ps", "id": rec["incident_id"], "v": int(rec["version"]),
            "row": [rec["change"], rec.get("change_detail"), int(rec["at"]), rec.get("pagerduty_action")],
            "f": {k: rec.get(k) for k in _FIELDS} | {"version": int(rec["version"])}}


def webhook_fact(rec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fact a PagerDutyWebhook record adds; None for events about no incident (pings, services)."""
    et = rec.get("event_type") or ""
    if not et.startswith("incident.") or not rec.get("incident_id") or not rec.get("event_id"):
        return None
    created = None
    if rec.get("data_type") == "incident":
        try:
            data = json.loads(rec.get("payload_json") or "{}")["event"]["data"]
            if isinstance(data.get("created_at"), str):
                created = parse_time(data["created_at"])
        except (ValueError, KeyError, TypeError):
            created = None
    row = [int(rec["occurred_at"]), et, rec.get("agent_id"), rec.get("agent_type"), list(rec.get("assignee_ids") or []),
           rec.get("incident_status"), rec.get("urgency"), rec.get("priority_name"), rec.get("title"),
           rec.get("incident_number"), created]
    return {"src": "pd", "id": rec["incident_id"], "eid": rec["event_id"], "row": row}


def apply_fact(entry: Mapping[str, Any] | None, key: str, fact: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """(new entry, changed). A fact already in the entry leaves it unchanged (changed=False)."""
    e: dict[str, Any] = copy.deepcopy(dict(entry)) if entry else {"k": key, "ps": {}, "pd": {}}
    e.setdefault("ps", {})
    e.setdefault("pd", {})
    if fact["src"] == "ps":
        inc = e["ps"].get(fact["id"])
        sv = str(fact["v"])
        if inc is not None and sv in inc["v"]:
            return e, False
        if inc is None:
            inc = e["ps"][fact["id"]] = {"f": None, "v": {}}
        inc["v"][sv] = list(fact["row"])
        if inc["f"] is None or fact["v"] > inc["f"]["version"]:
            inc["f"] = dict(fact["f"])
        if inc["f"].get("opened_at") is None:
            inc["f"]["opened_at"] = fact["row"][_VAT]
        _cap(e["ps"], MAX_INCIDENTS_PER_KEY, lambda i: (i["f"]["opened_at"], i["f"]["version"]))
    else:
        pd = e["pd"].get(fact["id"])
        if pd is not None and fact["eid"] in pd["ev"]:
            return e, False
        if pd is not None and len(pd["ev"]) >= MAX_EVENTS_PER_PD_INCIDENT:
            pd["x"] = pd.get("x", 0) + 1  # dropped: counted, never folded
            return e, True
        if pd is None:
            pd = e["pd"][fact["id"]] = {"ev": {}}
        pd["ev"][fact["eid"]] = list(fact["row"])
        _cap(e["pd"], MAX_PD_INCIDENTS_PER_KEY, lambda p: (_pd_start(p), 0))
    return e, True


def _cap(d: dict[str, Any], limit: int, age: Callable[[Any], tuple[int, int]]) -> None:
    if len(d) > limit:
        for k in sorted(d, key=lambda k: (age(d[k]), k))[: len(d) - limit]:
            del d[k]


def _pd_events(pd: Mapping[str, Any]) -> list[tuple[str, list[Any]]]:
    return sorted(pd["ev"].items(), key=lambda kv: (kv[1][_AT], kv[0]))


def _pd_triggered(pd: Mapping[str, Any]) -> int | None:
    """When PagerDuty's incident started: data.created_at (the same on every event of the incident, so
    it does not depend on which events arrived), else the incident.triggered event; None until known."""
    evs = pd["ev"].values()
    created = [r[_CREATED] for r in evs if r[_CREATED] is not None]
    if created:
        return min(created)
    trig = [r[_AT] for r in evs if r[_TYPE] == "incident.triggered"]
    return min(trig) if trig else None


def _pd_start(pd: Mapping[str, Any]) -> int:
    """For pairing: the start when known, else the earliest event seen."""
    t = _pd_triggered(pd)
    return t if t is not None else min(r[_AT] for r in pd["ev"].values())


# --- lifecycles ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interruption:
    user_id: str
    at: int
    period: str
    tz: str
    event_id: str


@dataclass(frozen=True)
class Lifecycle:
    lifecycle_id: str
    dedup_key: str
    revision: int
    service: str | None
    team: str | None
    severity: str
    summary: str
    opened_at: int
    state: str
    resolution: str | None
    pagerstream_resolved_at: int | None
    paged: bool
    paused: bool
    alerts_in: int
    pd_incident_ids: tuple[str, ...] = ()
    pd_number: int | None = None
    pd_status: str | None = None
    urgency: str | None = None
    priority: str | None = None
    title: str | None = None
    triggered_at: int | None = None
    acknowledged_at: int | None = None
    acknowledged_by: str | None = None
    resolved_at: int | None = None
    resolved_by: str | None = None
    resolved_by_type: str | None = None
    escalations: int = 0
    reassignments: int = 0
    human_actions: int = 0
    interruptions: tuple[Interruption, ...] = ()
    auto_resolution: str | None = None
    events: tuple[dict[str, Any], ...] = ()

    @property
    def tta_ms(self) -> int | None:
        if self.triggered_at is None or self.acknowledged_at is None:
            return None
        return max(0, self.acknowledged_at - self.triggered_at)

    @property
    def ttr_ms(self) -> int | None:
        if self.triggered_at is None or self.resolved_at is None:
            return None
        return max(0, self.resolved_at - self.triggered_at)

    def interruption_counts(self) -> dict[str, int]:
        out = dict.fromkeys(PERIODS, 0)
        for i in self.interruptions:
            out[i.period] += 1
        return out

    def labels(self) -> tuple[str, str, str]:
        return (self.service or "unknown", self.team or "unknown", self.severity or "unknown")

    def to_record(self, updated_at: int) -> dict[str, Any]:
        """The IncidentLifecycle Avro record (schemas/incident_lifecycle.avsc)."""
        counts = self.interruption_counts()
        pd = None
        if self.pd_incident_ids:
            pd = {"incident_ids": list(self.pd_incident_ids), "incident_number": self.pd_number,
                  "status": self.pd_status, "urgency": self.urgency, "priority": self.priority, "title": self.title,
                  "triggered_at": self.triggered_at, "acknowledged_at": self.acknowledged_at,
                  "acknowledged_by": self.acknowledged_by, "resolved_at": self.resolved_at,
                  "resolved_by": self.resolved_by, "resolved_by_type": self.resolved_by_type,
                  "escalations": self.escalations, "reassignments": self.reassignments,
                  "human_actions": self.human_actions}
        return {
            "lifecycle_id": self.lifecycle_id, "dedup_key": self.dedup_key, "revision": self.revision,
            "service": self.service, "team": self.team, "severity": self.severity, "summary": self.summary,
            "opened_at": self.opened_at, "state": self.state, "resolution": self.resolution,
            "pagerstream_resolved_at": self.pagerstream_resolved_at, "paged": self.paged, "paused": self.paused,
            "alerts_in": self.alerts_in, "pagerduty": pd, "tta_ms": self.tta_ms, "ttr_ms": self.ttr_ms,
            "interruptions": {**counts, "items": [asdict(i) for i in self.interruptions]},
            "auto_resolution": self.auto_resolution, "events": [dict(ev) for ev in self.events],
            "updated_at": updated_at,
        }

    def digest(self) -> str:
        """Changes whenever the published content would (so unchanged snapshots are not republished)."""
        rec = self.to_record(0)
        rec.pop("revision")
        return hashlib.sha256(json.dumps(rec, sort_keys=True, default=str).encode()).hexdigest()[:20]


def lifecycles(entry: Mapping[str, Any], tz_of: Callable[[str], str] = lambda _u: "UTC", *,
               reopen_window_ms: int = REOPEN_WINDOW_MS) -> list[Lifecycle]:
    """Every pagerstream incident of the entry with the PagerDuty incident(s) paired to it, oldest first.

    Pairing: a PagerDuty incident belongs to the latest *paged* pagerstream incident opened no later
    than SKEW_MS after the PagerDuty incident started and, if resolved, resolved no more than LATE_MS
    before it. PagerDuty incidents that pair with nothing (not paged by pagerstream, or the incident
    event has not arrived yet) wait in the entry and are not part of any lifecycle.
    """
    key = entry.get("k", "")
    ps = sorted(((iid, inc) for iid, inc in entry.get("ps", {}).items() if inc.get("f")),
                key=lambda kv: (kv[1]["f"]["opened_at"], kv[0]))
    paired: dict[str, list[str]] = {iid: [] for iid, _ in ps}
    for pd_id, pd in sorted(entry.get("pd", {}).items(), key=lambda kv: (_pd_start(kv[1]), kv[0])):
        if not pd["ev"]:
            continue
        start = _pd_start(pd)
        best = None
        for iid, inc in ps:
            f = inc["f"]
            if not _paged(inc) or f["opened_at"] > start + SKEW_MS:
                continue
            if f.get("resolved_at") is not None and f["state"] == "resolved" and start > f["resolved_at"] + LATE_MS:
                continue
            best = iid
        if best is not None:
            paired[best].append(pd_id)
    out = [_lifecycle(key, iid, inc, [entry["pd"][p] | {"id": p} for p in paired[iid]], tz_of) for iid, inc in ps]
    return _judge_auto_resolutions(out, reopen_window_ms)


def _paged(inc: Mapping[str, Any]) -> bool:
    return any(r[_PD_ACTION] == "trigger" for r in inc["v"].values())


def _lifecycle(key: str, iid: str, inc: Mapping[str, Any], pds: list[dict[str, Any]],
               tz_of: Callable[[str], str]) -> Lifecycle:
    f = inc["f"]
    versions = sorted(inc["v"].items(), key=lambda kv: int(kv[0]))
    events: list[dict[str, Any]] = [
        {"source": "pagerstream", "event_id": f"{iid}#{v}", "type": r[_CHANGE], "at": r[_VAT], "by": None,
         "by_type": None, "assignees": [], "detail": r[_DETAIL]} for v, r in versions]
    resolution = None
    if f["state"] == "resolved":
        closing = [r for _, r in versions if r[_CHANGE] in ("resolved", "auto_resolved")]
        last = closing[-1] if closing else None
        if last is not None and last[_DETAIL] == "resolved_while_paused":
            resolution = "resolved_while_paused"
        elif last is not None and last[_CHANGE] == "auto_resolved":
            resolution = "auto_resolved"
        else:
            resolution = "source_resolved"
    base = dict(
        lifecycle_id=iid, dedup_key=key, service=f.get("service"), team=f.get("team"),
        severity=f.get("severity") or "unknown", summary=f.get("summary") or "", opened_at=f["opened_at"],
        state=f.get("state") or "triggered", resolution=resolution,
        pagerstream_resolved_at=f.get("resolved_at") if f.get("state") == "resolved" else None,
        paged=_paged(inc), paused=any(r[_CHANGE] == "opened" and r[_DETAIL] == "paused" for _, r in versions),
        alerts_in=int(f.get("total_alerts") or 0) + int(f.get("duplicates") or 0),
    )
    revision = len(versions)
    if not pds:
        return Lifecycle(revision=revision, events=tuple(events), **base)

    pd_rows: list[tuple[str, list[Any], str]] = []
    statuses: dict[str, tuple[str | None, int | None, list[Any] | None]] = {}
    for pd in pds:
        evs = _pd_events(pd)
        revision += len(evs)
        pd_rows.extend((eid, r, pd["id"]) for eid, r in evs)
        with_status = [r for _, r in evs if r[_STATUS]]
        status = with_status[-1][_STATUS] if with_status else None
        resolves = [r for _, r in evs if r[_TYPE] == "incident.resolved"]
        statuses[pd["id"]] = (status, resolves[-1][_AT] if resolves else None, resolves[-1] if resolves else None)
    pd_rows.sort(key=lambda t: (t[1][_AT], t[0]))
    latest = [r for _, r, _ in pd_rows]

    def last(pos: int) -> Any:
        vals = [r[pos] for r in latest if r[pos] is not None]
        return vals[-1] if vals else None

    acks = [r for r in latest if r[_TYPE] == "incident.acknowledged"]
    all_resolved = all(s == "resolved" and at is not None for s, at, _ in statuses.values())
    final = max((v for v in statuses.values() if v[1] is not None), key=lambda v: v[1], default=None)
    interruptions = []
    for eid, r, _ in pd_rows:
        if r[_TYPE] in NOTIFYING:
            for user in dict.fromkeys(r[_ASSIGNEES]):
                tz = tz_of(user)
                interruptions.append(Interruption(user, r[_AT], period_of(r[_AT], tz), tz, eid))
    events += [{"source": "pagerduty", "event_id": eid, "type": r[_TYPE], "at": r[_AT], "by": r[_AGENT],
                "by_type": r[_AGENT_TYPE], "assignees": list(r[_ASSIGNEES]), "detail": pd_id if len(pds) > 1 else None}
               for eid, r, pd_id in pd_rows]
    events.sort(key=lambda ev: (ev["at"], ev["event_id"]))
    return Lifecycle(
        revision=revision, events=tuple(events), **base,
        pd_incident_ids=tuple(pd["id"] for pd in pds), pd_number=last(_NUMBER),
        pd_status="resolved" if all_resolved else last(_STATUS),
        urgency=last(_URGENCY), priority=last(_PRIORITY), title=last(_TITLE),
        triggered_at=min((t for pd in pds if (t := _pd_triggered(pd)) is not None), default=None),
        acknowledged_at=acks[0][_AT] if acks else None, acknowledged_by=acks[0][_AGENT] if acks else None,
        resolved_at=final[1] if all_resolved and final else None,
        resolved_by=final[2][_AGENT] if all_resolved and final else None,
        resolved_by_type=final[2][_AGENT_TYPE] if all_resolved and final else None,
        escalations=sum(1 for r in latest if r[_TYPE] == "incident.escalated"),
        reassignments=sum(1 for r in latest if r[_TYPE] == "incident.reassigned"),
        human_actions=sum(1 for r in latest if r[_AGENT_TYPE] == HUMAN and r[_TYPE] != "incident.triggered"),
        interruptions=tuple(interruptions),
    )


def _judge_auto_resolutions(lcs: list[Lifecycle], window_ms: int) -> list[Lifecycle]:
    """held / needed_human for every auto-resolution (docs/analytics.md, 'Auto-resolution accuracy')."""
    out = []
    for lc in lcs:
        if lc.resolution not in AUTO_RESOLUTIONS:
            out.append(lc)
            continue
        done = lc.pagerstream_resolved_at or lc.opened_at
        came_back = any(o.human_actions > 0 and done < o.opened_at <= done + window_ms
                        for o in lcs if o.lifecycle_id != lc.lifecycle_id)
        verdict = "needed_human" if lc.human_actions > 0 or came_back else "held"
        out.append(replace(lc, auto_resolution=verdict))
    return out


# --- metrics bookkeeping ---------------------------------------------------------------------------
def metric_deltas(seen: Mapping[str, Any] | None, lc: Lifecycle) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the metrics have now heard of this lifecycle, what they still need to hear).

    Counters only grow by the difference with what was already counted, and each histogram hears a
    lifecycle once, so replays, duplicates and reordered facts never count twice. The histograms wait
    until PagerDuty resolved the incident: by then its acknowledges are known, so an acknowledge
    delivered late (retried webhook) does not leave a wrong time to first acknowledge behind.
    """
    s: dict[str, Any] = copy.deepcopy(dict(seen or {}))
    d: dict[str, Any] = {}
    if lc.alerts_in > s.get("ai", 0):
        d["alerts_in"] = lc.alerts_in - s.get("ai", 0)
        s["ai"] = lc.alerts_in
    if lc.paged and not s.get("o"):
        d["incidents_out"] = 1
        s["o"] = 1
    if lc.tta_ms is not None and lc.resolved_at is not None and not s.get("a"):
        d["mtta_seconds"] = lc.tta_ms / 1000
        s["a"] = 1
    if lc.ttr_ms is not None and not s.get("r"):
        d["mttr_seconds"] = lc.ttr_ms / 1000
        s["r"] = 1
    if lc.escalations > s.get("e", 0):
        d["escalations"] = lc.escalations - s.get("e", 0)
        s["e"] = lc.escalations
    counted = dict(s.get("i") or {})
    for period, n in lc.interruption_counts().items():
        if n > counted.get(period, 0):
            d.setdefault("interruptions", {})[period] = n - counted.get(period, 0)
            counted[period] = n
    if counted:
        s["i"] = counted
    if lc.resolution in AUTO_RESOLUTIONS and not s.get("ar"):
        d["auto_resolved"] = 1
        s["ar"] = 1
    if lc.auto_resolution == "needed_human" and not s.get("nh"):
        d["needed_human"] = 1
        s["nh"] = 1
    return s, d


# --- analytics view --------------------------------------------------------------------------------
def parse_group_by(value: str | None) -> tuple[str, ...]:
    if value is None or value.strip() in ("", "none", "all"):
        return ()
    dims = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    bad = [d for d in dims if d not in GROUP_BY]
    if bad:
        raise ValueError(f"by must be a comma-separated list of {', '.join(GROUP_BY)} (got {', '.join(bad)})")
    return dims


@dataclass
class _Acc:
    incidents: int = 0
    paged: int = 0
    alerts_in: int = 0
    in_pagerduty: int = 0
    tta: list[float] = field(default_factory=list)
    ttr: list[float] = field(default_factory=list)
    escalated: int = 0
    escalations: int = 0
    interruptions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PERIODS, 0))
    auto: int = 0
    needed_human: int = 0
    pending: int = 0

    def add(self, lc: Lifecycle, now_ms: int, window_ms: int) -> None:
        self.incidents += 1
        self.paged += int(lc.paged)
        self.alerts_in += lc.alerts_in
        if lc.pd_incident_ids:
            self.in_pagerduty += 1
            self.escalated += int(lc.escalations > 0)
            self.escalations += lc.escalations
        if lc.tta_ms is not None:
            self.tta.append(lc.tta_ms / 1000)
        if lc.ttr_ms is not None:
            self.ttr.append(lc.ttr_ms / 1000)
        for p, n in lc.interruption_counts().items():
            self.interruptions[p] += n
        if lc.resolution in AUTO_RESOLUTIONS:
            self.auto += 1
            if lc.auto_resolution == "needed_human":
                self.needed_human += 1
            elif now_ms - (lc.pagerstream_resolved_at or lc.opened_at) < window_ms:
                self.pending += 1

    def result(self) -> dict[str, Any]:
        decided = self.auto - self.pending
        return {
            "incidents": self.incidents, "paged": self.paged, "alerts_in": self.alerts_in,
            "noise_reduction": _ratio(self.alerts_in - self.paged, self.alerts_in),
            "acknowledged": len(self.tta), "mtta_seconds": _mean(self.tta),
            "mtta_p50_seconds": median(self.tta) if self.tta else None,
            "resolved": len(self.ttr), "mttr_seconds": _mean(self.ttr),
            "mttr_p50_seconds": median(self.ttr) if self.ttr else None,
            "in_pagerduty": self.in_pagerduty, "escalated_incidents": self.escalated,
            "escalations": self.escalations, "escalation_rate": _ratio(self.escalated, self.in_pagerduty),
            "interruptions": {**self.interruptions, "total": sum(self.interruptions.values())},
            "auto_resolution": {"auto_resolved": self.auto, "needed_human": self.needed_human,
                                "pending": self.pending,
                                "accuracy": _ratio(decided - self.needed_human, decided)},
            "sums": {"tta_seconds": round(sum(self.tta), 3), "ttr_seconds": round(sum(self.ttr), 3)},
        }


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 3) if xs else None


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def aggregate(lcs: Iterable[Lifecycle], *, since_ms: int, until_ms: int, by: tuple[str, ...] = (),
              now_ms: int, reopen_window_ms: int = REOPEN_WINDOW_MS) -> dict[str, Any]:
    """The analytics of the incidents opened in [since, until), grouped by service/team/severity.

    An auto-resolution judged `held` is `pending` (left out of the accuracy) until the reopen window
    after it has passed."""
    groups: dict[tuple[str, ...], _Acc] = {}
    total = _Acc()
    for lc in lcs:
        if not since_ms <= lc.opened_at < until_ms:
            continue
        labels = dict(zip(GROUP_BY, lc.labels()))
        groups.setdefault(tuple(labels[d] for d in by), _Acc()).add(lc, now_ms, reopen_window_ms)
        total.add(lc, now_ms, reopen_window_ms)
    rows = [dict(zip(by, k)) | acc.result() for k, acc in sorted(groups.items())]
    return {"since": since_ms, "until": until_ms, "by": list(by), "groups": rows, "total": total.result()}
