"""Checks an account document before anything is sent (run by `validate`, `plan` and `apply`).

Every problem names its rule, the resource, and says what the rule protects against. The three rules of
the issue: a service must have an escalation policy, every escalation level must notify someone, and a
schedule must have somebody on call at every moment of the next N days (rendered with oncall.py in the
schedule's time zone). The other rules keep apply from failing half-way: fields, values, duplicate keys,
references that point nowhere, integrations the REST API cannot create.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pagerstream.pagerduty.account import (
    CREATABLE_INTEGRATION_TYPES,
    FIELDS,
    KEY_FIELD,
    KIND_LABEL,
    KIND_ORDER,
    SERVICE_STATUSES,
    TOP_LEVEL,
    parse_time,
    ref_id,
)
from pagerstream.pagerduty.account_timeline import format_span, schedule_gaps
from pagerstream.pagerduty.oncall import resolve_time_zone

RULES: dict[str, str] = {
    "service-without-escalation-policy":
        "every service needs an escalation policy; without one its incidents notify nobody",
    "escalation-level-without-targets":
        "every escalation level needs at least one user or schedule; an empty level pages nobody and "
        "PagerDuty refuses it",
    "schedule-coverage-gap":
        "a schedule must have somebody on call at every moment of the checked period; during a gap "
        "incidents escalating through it reach nobody",
    "unknown-reference":
        "a reference must name a resource of the document (users by e-mail, others by name) or an "
        "existing PagerDuty object as id:PXXXXXX",
    "duplicate-key":
        "resources of one kind are matched to the account by key (e-mail, name, maintenance key), "
        "so keys must be unique",
    "missing-field": "a field PagerDuty requires is missing",
    "invalid-value": "a value PagerDuty would refuse",
    "unknown-field": "a field this format does not know (a typo would silently do nothing)",
    "integration-not-creatable":
        "the REST API creates only the integration types of createServiceIntegration; others can only "
        "be kept when they already exist (with their id)",
}

_ROLES = ("admin", "limited_user", "observer", "owner", "read_only_user", "restricted_access",
          "read_only_limited_user", "user")
_MEMBER_ROLES = ("observer", "responder", "manager")
_HANDOFF = ("if_has_services", "always")
_STRATEGY = ("round_robin", "assign_to_everyone")
_RESTRICTIONS = ("daily_restriction", "weekly_restriction")


@dataclass(frozen=True)
class Problem:
    rule: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.where}: {self.detail} (rule: {RULES[self.rule]})"


def _where(kind: str, key: Any, extra: str = "") -> str:
    return f"{KIND_LABEL[kind]} '{key}'" + (f" {extra}" if extra else "")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _tz_ok(name: Any) -> bool:
    if not isinstance(name, str) or not name:
        return False
    try:
        resolve_time_zone(name)
        return True
    except (ValueError, KeyError):
        return False


class _Check:
    def __init__(self, doc: Mapping[str, Any], known_ids: Mapping[str, set[str]] | None) -> None:
        self.doc = doc
        self.known_ids = known_ids
        self.problems: list[Problem] = []
        self.keys: dict[str, set[str]] = {}
        for kind in KIND_ORDER:
            items = doc.get(kind) if isinstance(doc.get(kind), list) else []
            self.keys[kind] = {self._norm(kind, x.get(KEY_FIELD[kind])) for x in items
                               if isinstance(x, Mapping) and isinstance(x.get(KEY_FIELD[kind]), str)}

    @staticmethod
    def _norm(kind: str, key: str) -> str:
        return key.casefold() if kind == "users" else key

    def add(self, rule: str, where: str, detail: str) -> None:
        self.problems.append(Problem(rule, where, detail))

    def fields(self, obj: Mapping[str, Any], kind: str, where: str) -> None:
        for k in obj:
            if k not in FIELDS[kind]:
                self.add("unknown-field", where, f"unknown field '{k}' (known: {', '.join(FIELDS[kind])})")

    def ref(self, kind: str, value: Any, where: str, what: str, rule: str = "unknown-reference") -> bool:
        if not isinstance(value, str) or not value:
            self.add(rule, where, f"{what} must be a {KIND_LABEL[kind]} reference, got {value!r}")
            return False
        rid = ref_id(value)
        if rid is not None:
            if self.known_ids is not None and rid not in self.known_ids.get(kind, set()):
                self.add(rule, where, f"{what} {value} is no {KIND_LABEL[kind]} of the account")
                return False
            return True
        if self._norm(kind, value) not in self.keys[kind]:
            how = "e-mail" if kind == "users" else "key" if kind == "maintenance_windows" else "name"
            self.add(rule, where, f"{what} '{value}' is no {KIND_LABEL[kind]} of this document (by {how})")
            return False
        return True

    def time(self, value: Any, where: str, what: str, required: bool = True) -> datetime | None:
        if value is None:
            if required:
                self.add("missing-field", where, f"{what} is required")
            return None
        t = parse_time(value)
        if t is None:
            self.add("invalid-value", where, f"{what} must be an ISO 8601 time with a UTC offset, got {value!r}")
        return t


def _dupes(c: _Check, kind: str, items: list) -> None:
    keys = Counter(c._norm(kind, x.get(KEY_FIELD[kind])) for x in items
                   if isinstance(x, Mapping) and isinstance(x.get(KEY_FIELD[kind]), str))
    for k, n in sorted(keys.items()):
        if n > 1:
            c.add("duplicate-key", _where(kind, k), f"{n} {KIND_LABEL[kind]} entries share this {KEY_FIELD[kind]}")
    ids = Counter(x.get("id") for x in items if isinstance(x, Mapping) and x.get("id"))
    for k, n in sorted(ids.items()):
        if n > 1:
            c.add("duplicate-key", f"{KIND_LABEL[kind]} id {k}", f"{n} entries carry this id")


def validate(doc: Mapping[str, Any], *, now: datetime, days: int = 14,
             known_ids: Mapping[str, set[str]] | None = None) -> list[Problem]:
    """Problems of a canonical document (empty list: it may be applied). `known_ids` (kind -> PagerDuty
    ids of the live account) lets `id:` references be checked; without it they are taken on trust."""
    c = _Check(doc, known_ids)
    for k in doc:
        if k not in TOP_LEVEL:
            c.add("unknown-field", "document", f"unknown top-level key '{k}' (known: {', '.join(TOP_LEVEL)})")
    for kind in KIND_ORDER:
        items = doc.get(kind)
        if not isinstance(items, list):
            c.add("invalid-value", "document", f"'{kind}' must be a list")
            continue
        bad = [x for x in items if not isinstance(x, Mapping)]
        if bad:
            c.add("invalid-value", "document", f"every entry of '{kind}' must be a mapping, got {bad[0]!r}")
        _dupes(c, kind, items)
    if not isinstance(days, int) or days < 1:
        raise ValueError("days must be a positive integer")
    since, until = now, now + timedelta(days=days)

    def each(kind: str) -> Iterable[Mapping[str, Any]]:
        items = doc.get(kind)
        return [x for x in items if isinstance(x, Mapping)] if isinstance(items, list) else []

    def named(kind: str, obj: Mapping[str, Any]) -> str | None:
        key = obj.get(KEY_FIELD[kind])
        if not isinstance(key, str) or not key.strip():
            c.add("missing-field", f"a {KIND_LABEL[kind]} entry", f"'{KEY_FIELD[kind]}' is required ({dict(obj)!r:.80})")
            return None
        return key

    for u in each("users"):
        key = named("users", u)
        if key is None:
            continue
        w = _where("users", key)
        c.fields(u, "users", w)
        if "@" not in key:
            c.add("invalid-value", w, "email must be an e-mail address")
        if not isinstance(u.get("name"), str) or not u.get("name"):
            c.add("missing-field", w, "name is required")
        if "role" in u and u["role"] not in _ROLES:
            c.add("invalid-value", w, f"role must be one of {', '.join(_ROLES)}")
        if "time_zone" in u and not _tz_ok(u["time_zone"]):
            c.add("invalid-value", w, f"time_zone {u['time_zone']!r} is not a known time zone")

    for t in each("teams"):
        key = named("teams", t)
        if key is None:
            continue
        w = _where("teams", key)
        c.fields(t, "teams", w)
        if "default_role" in t and t["default_role"] not in ("manager", "none"):
            c.add("invalid-value", w, "default_role must be manager or none")
        members = t.get("members", [])
        if not isinstance(members, list):
            c.add("invalid-value", w, "members must be a list")
            continue
        for m in members:
            if not isinstance(m, Mapping):
                c.add("invalid-value", w, f"a member must be a mapping with user and role, got {m!r}")
                continue
            c.fields(m, "members", w + " member")
            c.ref("users", m.get("user"), w, "member")
            if "role" in m and m["role"] not in _MEMBER_ROLES:
                c.add("invalid-value", w, f"member role must be one of {', '.join(_MEMBER_ROLES)}")

    for s in each("schedules"):
        key = named("schedules", s)
        if key is None:
            continue
        w = _where("schedules", key)
        c.fields(s, "schedules", w)
        ok = True
        if not _tz_ok(s.get("time_zone")):
            c.add("invalid-value" if s.get("time_zone") else "missing-field", w,
                  f"time_zone must be an IANA or PagerDuty time zone name, got {s.get('time_zone')!r}")
            ok = False
        layers = s.get("layers")
        if not isinstance(layers, list) or not layers:
            c.add("missing-field", w, "layers must list at least one layer")
            continue
        layer_names = Counter(lay.get("name") for lay in layers if isinstance(lay, Mapping))
        for n, cnt in layer_names.items():
            if cnt > 1:
                c.add("duplicate-key", w, f"{cnt} layers are named {n!r}; layers are matched by name")
        for i, lay in enumerate(layers, 1):
            lw = f"{w} layer {i}"
            if not isinstance(lay, Mapping):
                c.add("invalid-value", lw, "a layer must be a mapping")
                ok = False
                continue
            c.fields(lay, "layers", lw)
            if not isinstance(lay.get("name"), str) or not lay.get("name"):
                c.add("missing-field", lw, "name is required (layers are matched by name)")
            start = c.time(lay.get("start"), lw, "start")
            end = c.time(lay.get("end"), lw, "end", required=False)
            rvs = c.time(lay.get("rotation_virtual_start"), lw, "rotation_virtual_start")
            ok = ok and start is not None and rvs is not None and (lay.get("end") is None or end is not None)
            if start and end and end <= start:
                c.add("invalid-value", lw, "end must be after start")
                ok = False
            turn = lay.get("rotation_turn_length_seconds")
            if not _is_int(turn) or turn <= 0:
                c.add("invalid-value" if turn is not None else "missing-field", lw,
                      f"rotation_turn_length_seconds must be a positive number of seconds, got {turn!r}")
                ok = False
            users = lay.get("users")
            if not isinstance(users, list) or not users:
                c.add("missing-field", lw, "users must list at least one user")
                ok = False
            else:
                ok = all([c.ref("users", u, lw, "user") for u in users]) and ok  # noqa: C419 (report every bad reference)
            restrictions = lay.get("restrictions", [])
            if not isinstance(restrictions, list):
                c.add("invalid-value", lw, "restrictions must be a list")
                ok = False
                continue
            for r in restrictions:
                if not isinstance(r, Mapping):
                    c.add("invalid-value", lw, f"a restriction must be a mapping, got {r!r}")
                    ok = False
                    continue
                c.fields(r, "restrictions", lw + " restriction")
                if r.get("type") not in _RESTRICTIONS:
                    c.add("invalid-value", lw, f"restriction type must be one of {', '.join(_RESTRICTIONS)}")
                    ok = False
                if not _is_int(r.get("duration_seconds")) or r["duration_seconds"] <= 0:
                    c.add("invalid-value", lw, "restriction duration_seconds must be a positive integer")
                    ok = False
                tod = r.get("start_time_of_day")
                if not isinstance(tod, str) or len(tod) != 8 or tod[2] != ":" or tod[5] != ":":
                    c.add("invalid-value", lw, f"restriction start_time_of_day must be HH:MM:SS, got {tod!r}")
                    ok = False
                if r.get("type") == "weekly_restriction" and (not _is_int(r.get("start_day_of_week"))
                                                              or not 1 <= r["start_day_of_week"] <= 7):
                    c.add("invalid-value", lw, "a weekly restriction needs start_day_of_week 1 (Monday) .. 7 (Sunday)")
                    ok = False
        if ok:
            try:
                gaps = schedule_gaps(s, since, until)
            except (ValueError, KeyError) as e:
                c.add("invalid-value", w, f"cannot be rendered: {e}")
                continue
            if gaps:
                tz = resolve_time_zone(s["time_zone"])
                shown = [format_span(a, b, tz) for a, b in gaps[:5]]
                more = f" and {len(gaps) - 5} more" if len(gaps) > 5 else ""
                c.add("schedule-coverage-gap", w,
                      f"nobody is on call {'; '.join(shown)}{more} ({s['time_zone']}; checked "
                      f"{format_span(since, until, tz)}, {days} days)")

    for e in each("escalation_policies"):
        key = named("escalation_policies", e)
        if key is None:
            continue
        w = _where("escalation_policies", key)
        c.fields(e, "escalation_policies", w)
        if "num_loops" in e and (not _is_int(e["num_loops"]) or e["num_loops"] < 0):
            c.add("invalid-value", w, "num_loops must be a non-negative integer")
        if "on_call_handoff_notifications" in e and e["on_call_handoff_notifications"] not in _HANDOFF:
            c.add("invalid-value", w, f"on_call_handoff_notifications must be one of {', '.join(_HANDOFF)}")
        for t in e.get("teams") or []:
            c.ref("teams", t, w, "team")
        rules = e.get("rules")
        if not isinstance(rules, list) or not rules:
            c.add("escalation-level-without-targets", w, "the policy has no escalation levels at all")
            continue
        for i, r in enumerate(rules, 1):
            lw = f"{w} level {i}"
            if not isinstance(r, Mapping):
                c.add("invalid-value", lw, "a level must be a mapping")
                continue
            c.fields(r, "rules", lw)
            delay = r.get("escalation_delay_in_minutes")
            if not _is_int(delay) or delay < 0:
                c.add("missing-field" if delay is None else "invalid-value", lw,
                      f"escalation_delay_in_minutes must be a non-negative integer, got {delay!r}")
            if "escalation_rule_assignment_strategy" in r and r["escalation_rule_assignment_strategy"] not in _STRATEGY:
                c.add("invalid-value", lw, f"escalation_rule_assignment_strategy must be one of {', '.join(_STRATEGY)}")
            targets = r.get("targets")
            if not isinstance(targets, list) or not targets:
                c.add("escalation-level-without-targets", lw, "this level has no users or schedules to notify")
                continue
            for t in targets:
                if isinstance(t, Mapping) and len(t) == 1 and next(iter(t)) in ("user", "schedule"):
                    kind = "users" if "user" in t else "schedules"
                    c.ref(kind, next(iter(t.values())), lw, "target")
                else:
                    c.add("invalid-value", lw, f"a target is {{user: e-mail}} or {{schedule: name}}, got {t!r}")

    for s in each("services"):
        key = named("services", s)
        if key is None:
            continue
        w = _where("services", key)
        c.fields(s, "services", w)
        if s.get("escalation_policy") in (None, ""):
            c.add("service-without-escalation-policy", w, "no escalation_policy is set")
        else:
            c.ref("escalation_policies", s["escalation_policy"], w, "escalation_policy",
                  rule="service-without-escalation-policy")
        if "status" in s and s["status"] not in SERVICE_STATUSES:
            c.add("invalid-value", w, f"status must be one of {', '.join(SERVICE_STATUSES)} (others are derived)")
        for k in ("auto_resolve_timeout", "acknowledgement_timeout"):
            if s.get(k) is not None and (not _is_int(s[k]) or s[k] < 0):
                c.add("invalid-value", w, f"{k} must be a non-negative number of seconds or null")
        integrations = s.get("integrations", [])
        if not isinstance(integrations, list):
            c.add("invalid-value", w, "integrations must be a list")
            continue
        seen = Counter(i.get("name") for i in integrations if isinstance(i, Mapping))
        for n, cnt in seen.items():
            if cnt > 1:
                c.add("duplicate-key", w, f"{cnt} integrations are named {n!r}; integrations are matched by name")
        for i in integrations:
            if not isinstance(i, Mapping):
                c.add("invalid-value", w, f"an integration must be a mapping, got {i!r}")
                continue
            iw = f"{w} integration '{i.get('name')}'"
            c.fields(i, "integrations", iw)
            if not isinstance(i.get("name"), str) or not i.get("name"):
                c.add("missing-field", iw, "name is required")
            if not isinstance(i.get("type"), str):
                c.add("missing-field", iw, "type is required")
            elif i["type"] not in CREATABLE_INTEGRATION_TYPES and not i.get("id"):
                c.add("integration-not-creatable", iw, f"type {i['type']!r} cannot be created through the REST API")
            if i.get("type") == "generic_email_inbound_integration" and not i.get("integration_email"):
                c.add("missing-field", iw, "an e-mail integration needs integration_email")

    for m in each("maintenance_windows"):
        key = named("maintenance_windows", m)
        if key is None:
            continue
        w = _where("maintenance_windows", key)
        c.fields(m, "maintenance_windows", w)
        start = c.time(m.get("start_time"), w, "start_time")
        end = c.time(m.get("end_time"), w, "end_time")
        if start and end and end <= start:
            c.add("invalid-value", w, "end_time must be after start_time")
        if end and end <= now:
            c.add("invalid-value", w, f"the window ended at {m['end_time']}; ended windows cannot be managed")
        services = m.get("services")
        if not isinstance(services, list) or not services:
            c.add("missing-field", w, "services must name at least one service")
        else:
            for r in services:
                c.ref("services", r, w, "service")
    return c.problems
