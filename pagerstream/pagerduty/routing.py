"""Routing rules: which routing key, escalation policy and person an incident goes to, and why.

Pure code: no network, no Redis, no clock. Everything the decision depends on is an argument:
the incident (`IncidentContext`), the instant (`at`, timezone-aware) and a snapshot of who is on
call and how loaded they are (`OnCallView`, built by `pagerstream.pagerduty.oncall_store`). The same
inputs always give the same `RouteDecision`, including its `reason` lines.

Config (YAML; docs/routing.md has the full reference):

    version: 1
    routing:
      calendars:
        berlin: {time_zone: Europe/Berlin, days: mon-fri, hours: "09:00-18:00", holidays: [2026-12-25]}
      rules:                                   # first matching rule wins
        - name: sec-p1
          match: {tier: "<=1", category: security}
          then: {routing_key: security, escalation_policy: PSEC001, urgency: high}
        - name: payments
          match: {team: payments}
          then:
            routing_key: payments
            escalation_policy: PPAY001
            responders: {levels: [1, 2], assign: skills}
            off_hours: {calendar: berlin, routing_key: payments-after-hours, urgency: low}
      default: {routing_key: catch-all, escalation_policy: PDEF001}
    responders:
      ann: {id: PUSER01, skills: [postgres, k8s], max_open: 3}
    needs:
      labels: [skill]
      category: {database: [postgres]}
      service: {orders-db: [postgres]}

Routing keys appear in the config only by *name*; the keys themselves come from a secrets map
(`routing_secrets_from_env`, `load_routing_secrets`) and are held as `Secret`: they are never part of a
reason line, a repr, a log line or an error message. `RouteDecision.routing_key_hint` shows the last 4
characters for humans.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from pagerstream.config import Secret
from pagerstream.pagerduty.oncall import resolve_time_zone

__all__ = [
    "Calendar",
    "IncidentContext",
    "LevelOnCall",
    "OnCallSnapshot",
    "OnCallUser",
    "OnCallView",
    "ReassignResult",
    "Responder",
    "RouteDecision",
    "RoutingConfig",
    "RoutingConfigError",
    "load_routing_config",
    "load_routing_secrets",
    "parse_routing_config",
    "parse_routing_secrets",
    "reassign_with_note",
    "route",
    "routing_secrets_from_env",
]

SEVERITIES = ("info", "warning", "error", "critical")
SEV_RANK = {s: i for i, s in enumerate(SEVERITIES)}
URGENCIES = ("high", "low")
ASSIGN_MODES = ("load", "skills")
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ROUTING_KEY_RE = re.compile(r"^[A-Za-z0-9]{32}$")  # Events API v2 integration key (as pagerstream.config)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
SECRETS_ENV = "PAGERSTREAM_ROUTING_KEYS"


class RoutingConfigError(ValueError):
    """The routing config (or secrets map) is invalid. `problems` lists (where, what) pairs; all
    problems are reported at once, and none of them repeats a secret."""

    def __init__(self, problems: list[tuple[str, str]], file: str = "<string>") -> None:
        self.problems = problems
        self.file = file
        lines = "\n".join(f"  {where}: {what}" for where, what in problems)
        super().__init__(f"{file}: {len(problems)} problem(s) in the routing config:\n{lines}")


# ---------------------------------------------------------------------------------------------
# inputs: the incident, and who is on call
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IncidentContext:
    """What routing looks at. `category` is the classifier's confident label (None when it abstained)."""

    service: str | None = None
    team: str | None = None
    tier: int | None = None
    severity: str | None = None
    category: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    alert_type: str | None = None
    incident_id: str | None = None
    summary: str | None = None
    category_note: str | None = None  # e.g. "classifier abstained (best guess application 0.41)"

    @staticmethod
    def _category(scores: Iterable[Mapping[str, Any]] | None) -> tuple[str | None, str | None]:
        for s in scores or ():
            if isinstance(s, Mapping) and s.get("model") == "classify.category":
                if s.get("label"):
                    return str(s["label"]), None
                best = s.get("best")
                if best:
                    score = s.get("score")
                    sc = f" {float(score):.2f}" if isinstance(score, (int, float)) else ""
                    return None, f"classifier abstained on category (best guess {best}{sc}): not used"
                return None, "classifier gave no category"
        return None, None

    @classmethod
    def from_incident(cls, incident: Any, alert: Any = None, labels: Mapping[str, str] | None = None
                      ) -> IncidentContext:
        """From `processors.incident.Incident` (+ the alert that opened it, for its labels)."""
        cat, note = cls._category(getattr(incident, "scores", ()))
        lab = dict(labels if labels is not None else (getattr(alert, "labels", None) or {}))
        return cls(service=incident.service, team=incident.team, tier=_tier(incident.tier),
                   severity=incident.severity, category=cat, labels=lab, alert_type=incident.alert_type,
                   incident_id=incident.incident_id, summary=incident.summary, category_note=note)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IncidentContext:
        """From a plain mapping (the CLI's --alert file): service, team, tier, severity, category or
        scores, labels, alert_type, incident_id, summary. A PagerDuty Events v2 body also works: its
        payload.severity/summary are used and payload.custom_details strings become labels."""
        if not isinstance(d, Mapping):
            raise ValueError("expected an object with service/team/tier/severity/labels/...")
        payload = d.get("payload") if isinstance(d.get("payload"), Mapping) else {}
        labels: dict[str, str] = {}
        details = payload.get("custom_details") if isinstance(payload.get("custom_details"), Mapping) else {}
        labels.update({str(k): str(v) for k, v in details.items() if isinstance(v, (str, int, float))})
        if d.get("labels") is not None:
            if not isinstance(d["labels"], Mapping):
                raise ValueError("labels must be a mapping of strings")
            labels.update({str(k): str(v) for k, v in d["labels"].items()})
        cat, note = (str(d["category"]), None) if d.get("category") else cls._category(d.get("scores"))
        sev = d.get("severity") or payload.get("severity")
        if sev is not None and sev not in SEV_RANK:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
        return cls(service=d.get("service") or labels.get("service"), team=d.get("team") or labels.get("team"),
                   tier=_tier(d.get("tier")), severity=sev, category=cat, labels=labels,
                   alert_type=d.get("alert_type"), incident_id=d.get("incident_id"),
                   summary=d.get("summary") or payload.get("summary"), category_note=note)


def _tier(v: Any) -> int | None:
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise ValueError("tier must be an integer")
    try:
        return int(str(v).strip().lstrip("Pp").lstrip("Tt")) if not isinstance(v, int) else v
    except ValueError:
        raise ValueError(f"tier must be an integer, got {v!r}") from None


@dataclass(frozen=True)
class OnCallUser:
    id: str
    name: str | None = None
    email: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.id})" if self.name and self.name != self.id else self.id


@dataclass(frozen=True)
class LevelOnCall:
    """Who is on call at one level of an escalation policy, until when, and who comes next."""

    level: int
    users: tuple[OnCallUser, ...]
    until: datetime | None = None  # None: no change known (permanent target or beyond the horizon)
    next_users: tuple[OnCallUser, ...] = ()
    next_at: datetime | None = None


@dataclass(frozen=True)
class OnCallSnapshot:
    """On-call of one escalation policy at `at`; `source` is redis, schedules or rest."""

    policy_id: str
    at: datetime
    levels: tuple[LevelOnCall, ...]
    source: str
    valid_until: datetime | None = None
    policy_name: str | None = None

    def level(self, n: int) -> LevelOnCall | None:
        return next((lv for lv in self.levels if lv.level == n), None)

    def to_dict(self) -> dict[str, Any]:
        def users(us: Iterable[OnCallUser]) -> list[dict]:
            return [{"id": u.id, "name": u.name, "email": u.email} for u in us]

        return {"policy_id": self.policy_id, "policy_name": self.policy_name, "at": _iso(self.at),
                "source": self.source, "valid_until": _iso(self.valid_until),
                "levels": [{"level": lv.level, "users": users(lv.users), "until": _iso(lv.until),
                            "next_users": users(lv.next_users), "next_at": _iso(lv.next_at)} for lv in self.levels]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str | None = None) -> OnCallSnapshot:
        def users(xs: Any) -> tuple[OnCallUser, ...]:
            return tuple(OnCallUser(str(x["id"]), x.get("name"), x.get("email")) for x in xs or ())

        return cls(policy_id=d["policy_id"], at=_parse_dt(d["at"]), source=source or d.get("source") or "?",
                   valid_until=_parse_dt(d.get("valid_until")), policy_name=d.get("policy_name"),
                   levels=tuple(LevelOnCall(int(lv["level"]), users(lv.get("users")), _parse_dt(lv.get("until")),
                                            users(lv.get("next_users")), _parse_dt(lv.get("next_at")))
                                for lv in d.get("levels") or ()))


@dataclass(frozen=True)
class OnCallView:
    """A read-only snapshot for routing: on-call per escalation policy, open incidents per user id."""

    policies: Mapping[str, OnCallSnapshot] = field(default_factory=dict)
    load: Mapping[str, int] = field(default_factory=dict)

    def policy(self, policy_id: str) -> OnCallSnapshot | None:
        return self.policies.get(policy_id)

    def open_incidents(self, user_id: str) -> int | None:
        return self.load.get(user_id)


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()


def _parse_dt(v: Any) -> datetime | None:
    if v is None or isinstance(v, datetime):
        return v
    text = str(v).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)


# ---------------------------------------------------------------------------------------------
# config model
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Calendar:
    """Business hours: on `days` (0 = Monday) from `start` to `end` minutes of the local wall clock in
    `time_zone`, except on `holidays`. end <= start means the window runs past midnight and belongs to
    the day it starts on. Wall-clock times are compared as the local clock shows them, so 09:00-18:00
    stays 09:00-18:00 local across DST changes."""

    name: str
    time_zone: str
    days: frozenset[int]
    start: int  # seconds after local midnight
    end: int  # seconds after local midnight, 86400 = 24:00
    holidays: frozenset[date] = frozenset()

    @property
    def tz(self) -> ZoneInfo:
        return resolve_time_zone(self.time_zone)

    def _open_on(self, d: date) -> bool:
        return d.weekday() in self.days and d not in self.holidays

    def contains(self, at: datetime) -> bool:
        local = at.astimezone(self.tz)
        secs = local.hour * 3600 + local.minute * 60 + local.second
        d = local.date()
        if self.start < self.end:
            return self._open_on(d) and self.start <= secs < self.end
        # past midnight: [start, 24:00) on an open day, [00:00, end) on the day after an open day
        return (self._open_on(d) and secs >= self.start) or (self._open_on(d - timedelta(days=1)) and secs < self.end)

    def describe(self) -> str:
        days = _days_text(self.days)
        return f"{self.time_zone} {days} {_hhmm(self.start)}-{_hhmm(self.end)}"


def _hhmm(secs: int) -> str:
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}" + (f":{s:02d}" if s else "")


def _days_text(days: Iterable[int]) -> str:
    ds = sorted(days)
    names = [DAY_NAMES[d].capitalize() for d in ds]
    if len(ds) > 2 and ds == list(range(ds[0], ds[-1] + 1)):
        return f"{names[0]}-{names[-1]}"
    return ",".join(names)


@dataclass(frozen=True)
class ValueTest:
    """One match condition: exact strings, regexes (leading '^', whole value), '*' (present), or for
    tier/severity a comparison like '<=1' / '>=error'."""

    field: str
    text: str  # how it reads in a reason line
    exact: frozenset[str] = frozenset()
    patterns: tuple[re.Pattern[str], ...] = ()
    present: bool = False
    compare: tuple[str, int] | None = None  # (op, rank/number)

    def holds(self, value: Any) -> bool:
        if value is None:
            return False
        if self.compare is not None:
            op, ref = self.compare
            v = SEV_RANK.get(value) if self.field == "severity" else value
            if v is None:
                return False
            return {"<": v < ref, "<=": v <= ref, ">": v > ref, ">=": v >= ref, "==": v == ref}[op]
        if self.present:
            return True
        s = str(value)
        return s in self.exact or any(p.fullmatch(s) for p in self.patterns)


@dataclass(frozen=True)
class RouteTarget:
    """The outputs of a rule (or of its off_hours block, or of the default route). None = inherit."""

    routing_key: str | None = None
    escalation_policy: str | None = None
    urgency: str | None = None
    levels: tuple[int, ...] | None = None
    assign: str | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    index: int  # 1-based position in the file
    tests: tuple[ValueTest, ...]
    label_tests: tuple[tuple[str, ValueTest], ...]
    when: tuple[str, str] | None  # ("business_hours" | "off_hours", calendar name)
    target: RouteTarget
    off_hours: tuple[str, RouteTarget] | None  # (calendar name, overrides outside business hours)


@dataclass(frozen=True)
class ResponderSpec:
    handle: str
    id: str | None
    skills: frozenset[str]
    max_open: int | None

    def applies_to(self, u: OnCallUser) -> bool:
        if self.id is not None:
            return self.id == u.id
        h = self.handle.lower()
        return h in (u.id.lower(), (u.name or "").lower(), (u.email or "").lower(),
                     (u.email or "").split("@", 1)[0].lower())


# ---------------------------------------------------------------------------------------------
# the decision
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Responder:
    id: str
    name: str | None
    level: int
    open_incidents: int | None
    matched_skills: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.name} ({self.id})" if self.name and self.name != self.id else self.id


@dataclass(frozen=True)
class RouteDecision:
    """Where an incident goes. `routing_key` is a `Secret` (None when the name is not in the secrets
    map); print `routing_key_name` and `routing_key_hint`, never the key."""

    rule: str
    routing_key_name: str
    routing_key: Secret | None
    escalation_policy_id: str | None
    responder: Responder | None
    reason: list[str]
    urgency: str | None = None
    business_hours: bool | None = None
    needs: tuple[str, ...] = ()
    candidate_levels: tuple[int, ...] = (1,)

    @property
    def routing_key_hint(self) -> str:
        key = self.routing_key.get() if self.routing_key else ""
        return f"…{key[-4:]}" if len(key) >= 8 else "(not in the secrets map)"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, without the routing key (name and last 4 characters only)."""
        r = self.responder
        return {"rule": self.rule, "routing_key_name": self.routing_key_name,
                "routing_key_hint": self.routing_key_hint, "escalation_policy_id": self.escalation_policy_id,
                "urgency": self.urgency, "business_hours": self.business_hours, "needs": list(self.needs),
                "responder": None if r is None else {"id": r.id, "name": r.name, "level": r.level,
                                                     "open_incidents": r.open_incidents,
                                                     "matched_skills": list(r.matched_skills)},
                "reason": list(self.reason)}

    def note_text(self, *, limit: int = 4000) -> str:
        """The PagerDuty note explaining this decision (no routing key in it)."""
        head = f"pagerstream routing: rule '{self.rule}'"
        if self.responder:
            head += f" -> {self.responder.label}"
        lines = [head] + [f"- {r}" for r in self.reason]
        text = "\n".join(lines)
        return text if len(text) <= limit else text[: limit - 20].rstrip() + "\n- … (truncated)"


@dataclass
class _Selection:
    rule: Rule | None  # None = default route
    target: RouteTarget
    business_hours: bool | None
    reason: list[str]


@dataclass(frozen=True)
class RoutingConfig:
    rules: tuple[Rule, ...]
    default: Rule
    calendars: Mapping[str, Calendar]
    default_calendar: str | None
    responders: tuple[ResponderSpec, ...]
    needs_labels: tuple[str, ...]
    needs_category: Mapping[str, tuple[str, ...]]
    needs_service: Mapping[str, tuple[str, ...]]
    secrets: Mapping[str, Secret] = field(default_factory=dict, repr=False)
    source: str = "<string>"

    def __repr__(self) -> str:
        return (f"RoutingConfig(source={self.source!r}, rules={len(self.rules)}, "
                f"calendars={sorted(self.calendars)}, secrets={sorted(self.secrets)})")

    # -- introspection -----------------------------------------------------------------------
    def policy_ids(self) -> list[str]:
        """Every escalation policy id the config can route to (what the on-call refresher should keep)."""
        out: list[str] = []
        for r in (*self.rules, self.default):
            for t in (r.target, r.off_hours[1] if r.off_hours else None):
                if t is not None and t.escalation_policy and t.escalation_policy not in out:
                    out.append(t.escalation_policy)
        return out

    def routing_key_names(self) -> list[str]:
        out: list[str] = []
        for r in (*self.rules, self.default):
            for t in (r.target, r.off_hours[1] if r.off_hours else None):
                if t is not None and t.routing_key and t.routing_key not in out:
                    out.append(t.routing_key)
        return out

    def with_secrets(self, secrets: Mapping[str, Secret | str], *, strict: bool = True) -> RoutingConfig:
        """A copy using `secrets` (name -> key). strict: every referenced name must be present."""
        sec = {k: v if isinstance(v, Secret) else Secret(str(v)) for k, v in secrets.items()}
        if strict:
            missing = [n for n in self.routing_key_names() if n not in sec]
            if missing:
                raise RoutingConfigError([("secrets", f"no routing key for name(s): {', '.join(missing)}")],
                                         self.source)
        return RoutingConfig(self.rules, self.default, self.calendars, self.default_calendar, self.responders,
                             self.needs_labels, self.needs_category, self.needs_service, sec, self.source)

    # -- routing -------------------------------------------------------------------------------
    def route(self, ctx: IncidentContext, at: datetime | str, oncall_view: OnCallView | None = None
              ) -> RouteDecision:
        at = _aware(at)
        sel = self.select(ctx, at)
        return self.finish(ctx, at, sel, oncall_view)

    def select(self, ctx: IncidentContext, at: datetime) -> _Selection:
        """Step 1 (no on-call data needed): the rule and its outputs for this incident at `at`."""
        reason: list[str] = []
        if ctx.category_note:
            reason.append(ctx.category_note)
        chosen: Rule | None = None
        bh: bool | None = None
        for rule in self.rules:
            ok, why = self._matches(rule, ctx)
            if not ok:
                reason.append(f"rule '{rule.name}' skipped: {why}")
                continue
            if rule.when is not None:
                kind, cal_name = rule.when
                cal = self.calendars[cal_name]
                inside = cal.contains(at)
                if inside != (kind == "business_hours"):
                    reason.append(f"rule '{rule.name}' skipped: {why}, but {_bh_text(inside, cal, at)}")
                    continue
                bh = inside
                why += f", {_bh_text(inside, cal, at)}"
            reason.append(f"{why} → rule '{rule.name}'")
            chosen = rule
            break
        if chosen is None:
            reason.append("no rule matched → default route")
        base = chosen or self.default
        target = _merge(base.target, self.default.target) if chosen else base.target
        if chosen:
            inherited = [f for f in ("routing_key", "escalation_policy", "urgency")
                         if getattr(base.target, f) is None and getattr(self.default.target, f) is not None]
            if inherited:
                reason.append(f"{', '.join(f.replace('_', ' ') for f in inherited)} from the default route")
        if base.off_hours is not None:
            cal_name, over = base.off_hours
            cal = self.calendars[cal_name]
            inside = cal.contains(at)
            bh = inside
            if inside:
                reason.append(f"{_bh_text(True, cal, at)} → business-hours route")
            else:
                changed = []
                if over.routing_key:
                    changed.append(f"after-hours key '{over.routing_key}'")
                if over.escalation_policy:
                    changed.append(f"escalation policy {over.escalation_policy}")
                if over.urgency:
                    changed.append(f"urgency {over.urgency}")
                if over.levels or over.assign:
                    changed.append("after-hours responders")
                reason.append(f"{_bh_text(False, cal, at)} → {', '.join(changed) or 'same route'}")
                target = _merge(over, target)
        return _Selection(chosen, target, bh, reason)

    def finish(self, ctx: IncidentContext, at: datetime, sel: _Selection,
               oncall_view: OnCallView | None) -> RouteDecision:
        """Step 2: secrets, urgency, responder."""
        t = sel.target
        reason = list(sel.reason)
        key_name = t.routing_key or ""
        key = self.secrets.get(key_name)
        if key is None:
            reason.append(f"routing key '{key_name}' is not in the secrets map")
        else:
            reason.append(f"routing key '{key_name}'")
        urgency = t.urgency
        if urgency == "auto":
            urgency = "high" if SEV_RANK.get(ctx.severity or "", 0) >= SEV_RANK["error"] else "low"
            reason.append(f"urgency {urgency} (auto: severity {ctx.severity or 'unknown'})")
        elif urgency:
            reason.append(f"urgency {urgency}")
        levels = t.levels or (1,)
        assign = t.assign or "load"
        needs: tuple[str, ...] = ()
        if assign == "skills":
            why_needs = self._needs(ctx)
            needs = tuple(why_needs)
            if needs:
                reason.append("incident needs " + ", ".join(f"{k} ({' + '.join(v)})" for k, v in why_needs.items()))
        responder = None
        if not t.escalation_policy:
            reason.append("no escalation policy: the service's own policy applies, nobody picked here")
        elif oncall_view is None:
            reason.append(f"escalation policy {t.escalation_policy}; on-call not consulted")
        else:
            responder = self._pick(t.escalation_policy, levels, assign, needs, oncall_view, reason)
        return RouteDecision(rule=sel.rule.name if sel.rule else "default", routing_key_name=key_name,
                             routing_key=key, escalation_policy_id=t.escalation_policy, responder=responder,
                             reason=reason, urgency=urgency, business_hours=sel.business_hours, needs=needs,
                             candidate_levels=levels)

    # -- pieces ----------------------------------------------------------------------------------
    @staticmethod
    def _matches(rule: Rule, ctx: IncidentContext) -> tuple[bool, str]:
        held: list[str] = []
        for test in rule.tests:
            value = getattr(ctx, test.field)
            if not test.holds(value):
                shown = "(unknown)" if value is None else value
                return False, f"{test.field} {shown} is not {test.text}"
            held.append(f"{test.field} {value}")
        for name, test in rule.label_tests:
            value = ctx.labels.get(name)
            if not test.holds(value):
                return False, f"label {name}={'(absent)' if value is None else value} is not {test.text}"
            held.append(f"label {name}={value}")
        return True, " + ".join(held) if held else "matches everything"

    def needs_of(self, ctx: IncidentContext) -> tuple[str, ...]:
        """Skills this incident needs: from the configured labels, its category and its service."""
        return tuple(self._needs(ctx))

    def _needs(self, ctx: IncidentContext) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in self.needs_labels:
            v = ctx.labels.get(name)
            for x in str(v or "").split(","):
                if x.strip():
                    out.setdefault(x.strip().lower(), []).append(f"label {name}")
        if ctx.category:
            for x in self.needs_category.get(ctx.category.lower(), ()):
                out.setdefault(x, []).append(f"category {ctx.category}")
        if ctx.service:
            for x in self.needs_service.get(ctx.service, ()):
                out.setdefault(x, []).append(f"service {ctx.service}")
        return out

    def _spec_for(self, u: OnCallUser) -> ResponderSpec | None:
        return next((s for s in self.responders if s.applies_to(u)), None)

    def _pick(self, ep: str, levels: tuple[int, ...], assign: str, needs: tuple[str, ...],
              view: OnCallView, reason: list[str]) -> Responder | None:
        snap = view.policy(ep)
        lv_text = f"level {levels[0]}" if len(levels) == 1 else f"levels {', '.join(map(str, levels))}"
        if snap is None:
            reason.append(f"escalation policy {ep}: no on-call data; PagerDuty escalates by its policy")
            return None
        cands: list[Responder] = []
        seen: set[str] = set()
        for n in levels:
            lv = snap.level(n)
            for u in lv.users if lv else ():
                if u.id in seen:
                    continue
                seen.add(u.id)
                spec = self._spec_for(u)
                skills = spec.skills if spec else frozenset()
                cands.append(Responder(u.id, u.name, n, view.open_incidents(u.id),
                                       tuple(s for s in needs if s in skills)))
        ep_text = f"EP {snap.policy_name or ep}" + (f" ({ep})" if snap.policy_name else "")
        if not cands:
            reason.append(f"nobody on call for {ep_text} {lv_text} (source: {snap.source}); "
                          "PagerDuty escalates by its policy")
            return None

        def load_text(c: Responder) -> str:
            return "load unknown" if c.open_incidents is None else \
                f"{c.open_incidents} open incident{'s' if c.open_incidents != 1 else ''}"

        def desc(c: Responder) -> str:
            extra = f", skills {len(c.matched_skills)}/{len(needs)}" if needs else ""
            return f"{c.label} at L{c.level}: {load_text(c)}{extra}"

        if len(cands) == 1:
            c = cands[0]
            extra = f", skills {len(c.matched_skills)}/{len(needs)}" if needs else ""
            reason.append(f"on-call for {ep_text} {lv_text} (source: {snap.source}): {c.label}, "
                          f"{load_text(c)}{extra}")
        else:
            reason.append(f"on-call for {ep_text} {lv_text} (source: {snap.source}): "
                          + "; ".join(desc(c) for c in cands))
        available = []
        for c in cands:
            spec = self._spec_for(OnCallUser(c.id, c.name))
            if spec and spec.max_open is not None and c.open_incidents is not None \
                    and c.open_incidents >= spec.max_open:
                reason.append(f"{c.label} not available: {c.open_incidents} open ≥ max_open {spec.max_open}")
                continue
            available.append(c)
        if not available:
            reason.append("everyone on call is at max_open: picking the least loaded anyway")
            available = cands
        if assign == "skills" and not needs:
            reason.append("no skills needed by this incident: choosing by load")
        use_skills = assign == "skills" and bool(needs)
        if use_skills and not any(c.matched_skills for c in available):
            reason.append(f"nobody available has any of {', '.join(needs)}: choosing by load")
            use_skills = False

        def key(c: Responder) -> tuple:
            load = c.open_incidents if c.open_incidents is not None else 0
            return ((-len(c.matched_skills) if use_skills else 0), load, c.level, (c.name or c.id).lower(), c.id)

        best = min(available, key=key)
        if len(available) > 1:
            why = []
            if use_skills:
                why.append(f"most matching skills ({', '.join(best.matched_skills)}: "
                           f"{len(best.matched_skills)}/{len(needs)})")
            why.append(f"fewest open incidents ({load_text(best)})" if not use_skills else load_text(best))
            tie = [c for c in available if c is not best and key(c)[:2] == key(best)[:2]]
            if tie:
                why.append(f"tie broken by level {best.level} then name")
            reason.append(f"picked {best.label}: " + ", ".join(why))
        else:
            reason.append(f"picked {best.label}" + ("" if len(cands) == 1 else ": the only one available"))
        return best


def _bh_text(inside: bool, cal: Calendar, at: datetime) -> str:
    local = at.astimezone(cal.tz)
    when = local.strftime("%a %Y-%m-%d %H:%M") + " local"
    where = "inside" if inside else "outside"
    return f"{where} business hours '{cal.name}' ({cal.describe()}; {when})"


def _merge(over: RouteTarget, base: RouteTarget) -> RouteTarget:
    return RouteTarget(*(getattr(over, f) if getattr(over, f) is not None else getattr(base, f)
                         for f in ("routing_key", "escalation_policy", "urgency", "levels", "assign")))


def _aware(at: datetime | str | float) -> datetime:
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        return datetime.fromtimestamp(at / 1000, UTC)  # epoch ms, like Incident.opened_at
    if isinstance(at, str):
        at = _parse_dt(at)  # type: ignore[assignment]
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("`at` must be a timezone-aware datetime, an ISO-8601 time with offset or epoch ms")
    return at


def route(config: RoutingConfig, incident_context: IncidentContext, at: datetime | str | int,
          oncall_view: OnCallView | None = None) -> RouteDecision:
    """Route one incident. Pure: same inputs, same decision (and the same reason lines)."""
    return config.route(incident_context, at, oncall_view)


# ---------------------------------------------------------------------------------------------
# parsing and validation
# ---------------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (a repeated rule key silently dropping half a rule is
    the kind of mistake validation is for)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen[key] = True
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_TOP_KEYS = {"version", "routing", "responders", "needs"}
_ROUTING_KEYS = {"calendars", "default_calendar", "rules", "default"}
_RULE_KEYS = {"name", "match", "when", "then", "description"}
_MATCH_KEYS = {"service", "team", "tier", "severity", "category", "labels", "alert_type"}
_TARGET_KEYS = {"routing_key", "escalation_policy", "urgency", "responders", "off_hours"}
_CAL_KEYS = {"time_zone", "days", "hours", "holidays"}
_CMP = re.compile(r"^\s*(<=|>=|<|>|==)\s*(\S+)\s*$")
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, where: str, what: str) -> None:
        self.items.append((where, what))

    def unknown(self, d: Mapping, allowed: set[str], where: str) -> None:
        for k in d:
            if k not in allowed:
                self.add(f"{where}.{k}" if where else str(k), f"unknown key (expected one of: {', '.join(sorted(allowed))})")


def _looks_like_key(v: Any) -> bool:
    return isinstance(v, str) and bool(ROUTING_KEY_RE.match(v.strip()))


def _parse_days(v: Any, where: str, p: _Problems) -> frozenset[int]:
    items = v if isinstance(v, list) else [v] if isinstance(v, str) else None
    if not items:
        p.add(where, "expected day names like mon-fri or [mon, tue, wed]")
        return frozenset()
    out: set[int] = set()
    for item in items:
        s = str(item).strip().lower()[:3] if "-" not in str(item) else str(item).strip().lower()
        if "-" in s:
            a, _, b = s.partition("-")
            a, b = a.strip()[:3], b.strip()[:3]
            if a not in DAY_NAMES or b not in DAY_NAMES:
                p.add(where, f"unknown day range {item!r} (use mon..sun)")
                continue
            i, j = DAY_NAMES.index(a), DAY_NAMES.index(b)
            out.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(j + 1)])
        elif s in DAY_NAMES:
            out.add(DAY_NAMES.index(s))
        else:
            p.add(where, f"unknown day {item!r} (use mon..sun)")
    return frozenset(out)


def _parse_calendar(name: str, d: Any, where: str, p: _Problems) -> Calendar | None:
    if not isinstance(d, Mapping):
        p.add(where, "expected a mapping with time_zone, days, hours")
        return None
    p.unknown(d, _CAL_KEYS, where)
    ok = True
    tz = d.get("time_zone")
    try:
        resolve_time_zone(tz)
    except (ValueError, TypeError):
        p.add(f"{where}.time_zone", f"unknown time zone {tz!r} (use an IANA name like Europe/Berlin)")
        ok = False
    days = _parse_days(d.get("days", "mon-fri"), f"{where}.days", p)
    m = _HOURS.match(str(d.get("hours", "")))
    start = end = 0
    if not m:
        p.add(f"{where}.hours", "expected HH:MM-HH:MM, e.g. \"09:00-18:00\" (quote it in YAML)")
        ok = False
    else:
        h1, m1, h2, m2 = map(int, m.groups())
        if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
            p.add(f"{where}.hours", "hours out of range (00:00..24:00)")
            ok = False
        start, end = h1 * 3600 + m1 * 60, h2 * 3600 + m2 * 60
        if start == end:
            p.add(f"{where}.hours", "start and end are equal: the window would be empty (or all day)")
            ok = False
    hol: set[date] = set()
    raw_h = d.get("holidays") or []
    if not isinstance(raw_h, list):
        p.add(f"{where}.holidays", "expected a list of dates (YYYY-MM-DD)")
    else:
        for i, h in enumerate(raw_h):
            try:
                hol.add(h if isinstance(h, date) and not isinstance(h, datetime) else date.fromisoformat(str(h)))
            except ValueError:
                p.add(f"{where}.holidays[{i}]", f"not a date: {h!r}")
    if not ok or not days:
        return None
    return Calendar(name, str(tz), days, start, end, frozenset(hol))


def _value_test(fname: str, v: Any, where: str, p: _Problems) -> ValueTest | None:
    if fname in ("tier", "severity") and isinstance(v, str) and (m := _CMP.match(v)):
        op, ref = m.groups()
        if fname == "tier":
            try:
                return ValueTest(fname, v.strip(), compare=(op, int(ref)))
            except ValueError:
                p.add(where, f"tier comparison needs an integer, got {ref!r}")
                return None
        if ref not in SEV_RANK:
            p.add(where, f"unknown severity {ref!r} (one of {', '.join(SEVERITIES)})")
            return None
        return ValueTest(fname, v.strip(), compare=(op, SEV_RANK[ref]))
    items = v if isinstance(v, list) else [v]
    if not items or any(x is None or isinstance(x, (Mapping, list, bool)) for x in items):
        p.add(where, "expected a value, a list of values, '^regex' or (tier/severity) a comparison like '<=1'")
        return None
    exact: set[str] = set()
    pats: list[re.Pattern[str]] = []
    for x in items:
        s = str(x)
        if fname == "tier":
            try:
                exact.add(str(_tier(x)))
            except ValueError:
                p.add(where, f"tier must be an integer or a comparison like '<=1', got {x!r}")
            continue
        if fname == "severity" and s not in SEV_RANK:
            p.add(where, f"unknown severity {s!r} (one of {', '.join(SEVERITIES)})")
            continue
        if s == "*":
            return ValueTest(fname, "present", present=True)
        if s.startswith("^"):
            try:
                pats.append(re.compile(s))
            except re.error as e:
                p.add(where, f"bad regex {s!r}: {e}")
            continue
        exact.add(s)
    parts = [*sorted(exact), *(q.pattern for q in pats)]
    text = parts[0] if len(parts) == 1 else f"in [{', '.join(parts)}]"
    if fname == "tier":
        return _TierTest(fname, text, frozenset(exact))
    return ValueTest(fname, text, frozenset(exact), tuple(pats))


@dataclass(frozen=True)
class _TierTest(ValueTest):
    def holds(self, value: Any) -> bool:
        return value is not None and str(value) in self.exact


def _parse_target(d: Any, where: str, p: _Problems, calendars: Mapping[str, Calendar],
                  default_cal: str | None, *, allow_off_hours: bool = True
                  ) -> tuple[RouteTarget, tuple[str, RouteTarget] | None]:
    if not isinstance(d, Mapping):
        p.add(where, "expected a mapping with routing_key / escalation_policy / urgency / responders")
        return RouteTarget(), None
    allowed = _TARGET_KEYS | ({"calendar"} if not allow_off_hours else set())
    if not allow_off_hours:
        allowed = allowed - {"off_hours"}
    p.unknown(d, allowed, where)
    rk = d.get("routing_key")
    if rk is not None:
        if _looks_like_key(rk):
            p.add(f"{where}.routing_key", "this looks like a routing key itself: name it here and put the key "
                                          f"in the secrets map ({SECRETS_ENV} or --secrets)")
            rk = None
        elif not isinstance(rk, str) or not NAME_RE.match(rk):
            p.add(f"{where}.routing_key", "expected the name of a routing key in the secrets map "
                                          "(1-64 characters [A-Za-z0-9._-])")
            rk = None
    ep = d.get("escalation_policy")
    if ep is not None and (not isinstance(ep, str) or not re.fullmatch(r"[A-Za-z0-9]{1,32}", ep)):
        p.add(f"{where}.escalation_policy", "expected a PagerDuty escalation policy id like PABC123")
        ep = None
    urg = d.get("urgency")
    if urg is not None and urg not in (*URGENCIES, "auto"):
        p.add(f"{where}.urgency", "expected high, low or auto (high for error/critical)")
        urg = None
    levels = assign = None
    resp = d.get("responders")
    if resp is not None:
        if not isinstance(resp, Mapping):
            p.add(f"{where}.responders", "expected {levels: [1, 2], assign: load|skills}")
        else:
            p.unknown(resp, {"levels", "assign"}, f"{where}.responders")
            lv = resp.get("levels", [1])
            lv = [lv] if isinstance(lv, int) and not isinstance(lv, bool) else lv
            if not isinstance(lv, list) or not lv or any(isinstance(x, bool) or not isinstance(x, int) or x < 1
                                                         for x in lv):
                p.add(f"{where}.responders.levels", "expected a list of escalation levels (integers from 1)")
            else:
                levels = tuple(dict.fromkeys(lv))
            assign = resp.get("assign", "load")
            if assign not in ASSIGN_MODES:
                p.add(f"{where}.responders.assign", f"expected one of {', '.join(ASSIGN_MODES)}")
                assign = None
    off = None
    if allow_off_hours and d.get("off_hours") is not None:
        od = d["off_hours"]
        cal = od.get("calendar", default_cal) if isinstance(od, Mapping) else None
        ot, _ = _parse_target(od, f"{where}.off_hours", p, calendars, default_cal, allow_off_hours=False)
        if cal is None:
            p.add(f"{where}.off_hours.calendar", "name a calendar (or set routing.default_calendar)")
        elif cal not in calendars:
            p.add(f"{where}.off_hours.calendar", f"unknown calendar {cal!r} (defined: {', '.join(calendars) or 'none'})")
        else:
            off = (cal, ot)
    return RouteTarget(rk, ep, urg, levels, assign), off


def _parse_when(v: Any, where: str, p: _Problems, calendars: Mapping[str, Calendar],
                default_cal: str | None) -> tuple[str, str] | None:
    kinds = ("business_hours", "off_hours")
    if isinstance(v, str):
        kind, cal = v, default_cal
    elif isinstance(v, Mapping) and len(v) == 1:
        kind, cal = next(iter(v.items()))
    else:
        p.add(where, "expected business_hours, off_hours, or {business_hours: <calendar>} / {off_hours: <calendar>}")
        return None
    if kind == "always":
        return None
    if kind not in kinds:
        p.add(where, f"expected business_hours, off_hours or always, got {kind!r}")
        return None
    if cal is None:
        p.add(where, "name a calendar (e.g. {business_hours: berlin}) or set routing.default_calendar")
        return None
    if cal not in calendars:
        p.add(where, f"unknown calendar {cal!r} (defined: {', '.join(calendars) or 'none'})")
        return None
    return kind, str(cal)


def _str_list(v: Any, where: str, p: _Problems) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
        p.add(where, "expected a list of strings")
        return ()
    return tuple(str(x).strip().lower() for x in v)


def parse_routing_config(text: str, *, file: str = "<string>",
                         secrets: Mapping[str, Secret | str] | None = None) -> RoutingConfig:
    """Parse and validate; raises `RoutingConfigError` listing every problem. With `secrets`, every
    routing key name the config uses must be in it."""
    p = _Problems()
    try:
        # bandit B506 reviewed: _Loader subclasses yaml.SafeLoader (it only adds the duplicate-key check).
        doc = yaml.load(text, Loader=_Loader)  # nosec B506
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "yaml"
        raise RoutingConfigError([(where, f"not valid YAML: {getattr(e, 'problem', None) or e}")], file) from None
    if not isinstance(doc, Mapping):
        raise RoutingConfigError([("(top)", "expected a mapping with version and routing")], file)
    p.unknown(doc, _TOP_KEYS, "")
    if doc.get("version", 1) != 1:
        p.add("version", "only version 1 is understood")
    r = doc.get("routing")
    if not isinstance(r, Mapping):
        p.add("routing", "missing: expected a mapping with rules and default")
        raise RoutingConfigError(p.items, file)
    p.unknown(r, _ROUTING_KEYS, "routing")

    calendars: dict[str, Calendar] = {}
    cals = r.get("calendars") or {}
    if not isinstance(cals, Mapping):
        p.add("routing.calendars", "expected a mapping name -> {time_zone, days, hours}")
        cals = {}
    for name, cd in cals.items():
        if not NAME_RE.match(str(name)):
            p.add(f"routing.calendars.{name}", "calendar names are 1-64 characters [A-Za-z0-9._-]")
            continue
        cal = _parse_calendar(str(name), cd, f"routing.calendars.{name}", p)
        if cal:
            calendars[str(name)] = cal
    default_cal = r.get("default_calendar")
    if default_cal is not None and default_cal not in cals:
        p.add("routing.default_calendar", f"unknown calendar {default_cal!r}")
        default_cal = None
    if default_cal is None and len(cals) == 1:
        default_cal = next(iter(cals))

    # default route
    dd = r.get("default")
    if dd is None:
        p.add("routing.default", "missing: every config needs a default route (routing_key at least)")
        dt, doff = RouteTarget(), None
    else:
        dt, doff = _parse_target(dd, "routing.default", p, calendars, default_cal)
        if isinstance(dd, Mapping) and not dd.get("routing_key"):
            p.add("routing.default.routing_key", "the default route needs a routing key name")
    default_rule = Rule("default", 0, (), (), None, dt, doff)

    rules: list[Rule] = []
    raw_rules = r.get("rules") or []
    if not isinstance(raw_rules, list):
        p.add("routing.rules", "expected a list of rules")
        raw_rules = []
    names: set[str] = set()
    for i, rd in enumerate(raw_rules):
        where = f"routing.rules[{i}]"
        if not isinstance(rd, Mapping):
            p.add(where, "expected a mapping with name, match, then")
            continue
        name = rd.get("name")
        if isinstance(name, str) and name:
            where = f"routing.rules[{i}] '{name}'"
        p.unknown(rd, _RULE_KEYS, where)
        if not isinstance(name, str) or not NAME_RE.match(name):
            p.add(f"{where}.name", "every rule needs a name (1-64 characters [A-Za-z0-9._-])")
        elif name in names or name == "default":
            p.add(f"{where}.name", f"rule name {name!r} is used twice" if name in names else "'default' is reserved")
        else:
            names.add(name)
        m = rd.get("match") or {}
        tests: list[ValueTest] = []
        ltests: list[tuple[str, ValueTest]] = []
        if not isinstance(m, Mapping):
            p.add(f"{where}.match", "expected a mapping (service, team, tier, severity, category, labels, alert_type)")
            m = {}
        p.unknown(m, _MATCH_KEYS, f"{where}.match")
        for fname in ("service", "team", "tier", "severity", "category", "alert_type"):
            if fname in m:
                t = _value_test(fname, m[fname], f"{where}.match.{fname}", p)
                if t:
                    tests.append(t)
        if "labels" in m:
            if not isinstance(m["labels"], Mapping) or not m["labels"]:
                p.add(f"{where}.match.labels", "expected a mapping label -> value / [values] / '^regex' / '*'")
            else:
                for lk, lv in m["labels"].items():
                    t = _value_test("labels", lv, f"{where}.match.labels.{lk}", p)
                    if t:
                        ltests.append((str(lk), t))
        when = _parse_when(rd["when"], f"{where}.when", p, calendars, default_cal) if rd.get("when") else None
        if "then" not in rd:
            p.add(f"{where}.then", "missing: what the rule routes to")
            target, off = RouteTarget(), None
        else:
            target, off = _parse_target(rd["then"], f"{where}.then", p, calendars, default_cal)
        rules.append(Rule(str(name), i + 1, tuple(tests), tuple(ltests), when, target, off))

    # responders and needs
    specs: list[ResponderSpec] = []
    resp = doc.get("responders") or {}
    if not isinstance(resp, Mapping):
        p.add("responders", "expected a mapping handle -> {id, skills, max_open}")
        resp = {}
    for handle, sd in resp.items():
        where = f"responders.{handle}"
        sd = sd or {}
        if not isinstance(sd, Mapping):
            p.add(where, "expected {id: PUSER01, skills: [..], max_open: N}")
            continue
        p.unknown(sd, {"id", "skills", "max_open"}, where)
        skills = _str_list(sd.get("skills", []), f"{where}.skills", p)
        mo = sd.get("max_open")
        if mo is not None and (isinstance(mo, bool) or not isinstance(mo, int) or mo < 1):
            p.add(f"{where}.max_open", "expected a positive integer")
            mo = None
        uid = sd.get("id")
        if uid is not None and not isinstance(uid, str):
            p.add(f"{where}.id", "expected a PagerDuty user id")
            uid = None
        specs.append(ResponderSpec(str(handle), uid, frozenset(skills), mo))
    nd = doc.get("needs") or {}
    if not isinstance(nd, Mapping):
        p.add("needs", "expected {labels: [...], category: {...}, service: {...}}")
        nd = {}
    p.unknown(nd, {"labels", "category", "service"}, "needs")
    needs_labels = tuple(str(x) for x in _str_list(nd.get("labels", []), "needs.labels", p))
    maps: dict[str, dict[str, tuple[str, ...]]] = {}
    for part in ("category", "service"):
        raw = nd.get(part) or {}
        if not isinstance(raw, Mapping):
            p.add(f"needs.{part}", f"expected a mapping {part} -> [skills]")
            raw = {}
        key = (lambda s: str(s).lower()) if part == "category" else str
        maps[part] = {key(k): _str_list(v, f"needs.{part}.{k}", p) for k, v in raw.items()}

    cfg = RoutingConfig(tuple(rules), default_rule, calendars, default_cal, tuple(specs), needs_labels,
                        maps["category"], maps["service"], {}, file)
    if any(t.assign == "skills" for r_ in (*rules, default_rule)
           for t in (r_.target, r_.off_hours[1] if r_.off_hours else None) if t) and not specs:
        p.add("responders", "a rule assigns by skills but no responders (with skills) are declared")
    if p.items:
        raise RoutingConfigError(p.items, file)
    if secrets is not None:
        cfg = cfg.with_secrets(secrets, strict=True)
    return cfg


def load_routing_config(path: str | Path, *, secrets: Mapping[str, Secret | str] | None = None) -> RoutingConfig:
    path = Path(path)
    return parse_routing_config(path.read_text(encoding="utf-8"), file=str(path), secrets=secrets)


# ---------------------------------------------------------------------------------------------
# the secrets map (routing key name -> key)
# ---------------------------------------------------------------------------------------------

def _check_secrets(pairs: Iterable[tuple[Any, Any]], where: str) -> dict[str, Secret]:
    problems: list[tuple[str, str]] = []
    out: dict[str, Secret] = {}
    for i, (name, key) in enumerate(pairs, start=1):
        if not isinstance(name, str) or not NAME_RE.match(name):
            problems.append((where, f"entry {i}: names are 1-64 characters [A-Za-z0-9._-]"))
            continue
        if name in out:
            problems.append((where, f"entry {i} ({name}): name given twice"))
            continue
        if not isinstance(key, str) or not ROUTING_KEY_RE.match(key.strip()):
            # never echo the value: it may be a (mistyped) key
            problems.append((where, f"entry {i} ({name}): expected a 32-character routing key [A-Za-z0-9]"))
            continue
        out[name] = Secret(key.strip())
    if problems:
        raise RoutingConfigError(problems, where)
    return out


def parse_routing_secrets(value: str, *, where: str = SECRETS_ENV) -> dict[str, Secret]:
    """`name=key,name2=key2` (the PAGERSTREAM_ROUTING_KEYS format) -> {name: Secret}."""
    pairs = []
    for entry in (e.strip() for e in value.split(",")):
        if entry:
            name, sep, key = entry.partition("=")
            pairs.append((name.strip() if sep else None, key))
    return _check_secrets(pairs, where)


def routing_secrets_from_env(env: Mapping[str, str] | None = None) -> dict[str, Secret]:
    env = os.environ if env is None else env
    v = (env.get(SECRETS_ENV) or "").strip()
    return parse_routing_secrets(v) if v else {}


def load_routing_secrets(path: str | Path) -> dict[str, Secret]:
    """A YAML/JSON file `{name: key}` (keep it out of version control)."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise RoutingConfigError([(str(path), "not valid YAML")], str(path)) from None
    if isinstance(doc, Mapping) and isinstance(doc.get("routing_keys"), Mapping):
        doc = doc["routing_keys"]
    if not isinstance(doc, Mapping):
        raise RoutingConfigError([(str(path), "expected a mapping name -> routing key")], str(path))
    return _check_secrets(doc.items(), str(path))


# ---------------------------------------------------------------------------------------------
# acting on a decision in PagerDuty (the one function here that does I/O, through the given client)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReassignResult:
    reassigned: bool
    note_id: str | None
    assignees: tuple[str, ...]
    skipped: str | None = None  # why nothing was changed


async def reassign_with_note(rest_client: Any, incident_id: str, decision: RouteDecision, *,
                             store: Any = None, always_note: bool = False) -> ReassignResult:
    """Reassign PagerDuty incident `incident_id` as `decision` says and add a note with its reasons.

    To the chosen responder if there is one, else to the decision's escalation policy. Nothing is
    changed if the incident is resolved or already assigned that way (reassigning un-acknowledges
    an incident in PagerDuty, so a replayed decision must not do it twice); the note is added only
    with a reassignment unless `always_note`. `rest_client` is a `PagerDutyREST` (with a From address
    when it uses an API token). With `store` (an OnCallStore) the new assignees' load is updated."""
    inc = await rest_client.get_incident(incident_id)
    if inc.get("status") == "resolved":
        return ReassignResult(False, None, _assignees(inc), "incident is resolved")
    current = _assignees(inc)
    reassigned = False
    skipped = None
    if decision.responder is not None:
        if current == (decision.responder.id,):
            skipped = f"already assigned to {decision.responder.label}"
        else:
            inc = await rest_client.reassign_incident(incident_id, user_ids=[decision.responder.id])
            reassigned = True
    elif decision.escalation_policy_id:
        if (inc.get("escalation_policy") or {}).get("id") == decision.escalation_policy_id:
            skipped = f"already on escalation policy {decision.escalation_policy_id}"
        else:
            inc = await rest_client.reassign_incident(incident_id, escalation_policy_id=decision.escalation_policy_id)
            reassigned = True
    else:
        skipped = "the decision names neither a responder nor an escalation policy"
    note_id = None
    if reassigned or always_note:
        note = await rest_client.create_incident_note(incident_id, decision.note_text())
        note_id = note.get("id")
    if reassigned and store is not None:
        await store.set_assignees(incident_id, _assignees(inc))
    return ReassignResult(reassigned, note_id, _assignees(inc), skipped)


def _assignees(inc: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple((a.get("assignee") or {}).get("id") for a in inc.get("assignments") or ()
                 if (a.get("assignee") or {}).get("id"))
