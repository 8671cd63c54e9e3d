"""Account as code: a PagerDuty account (users, teams, schedules, escalation policies, services and their
integrations, maintenance windows) as one YAML document.

This module holds the document model: its canonical form (stable ordering, normalised times, references
by e-mail or name), YAML reading and writing, reading the live account through `PagerDutyREST`, and the
conversion of the live account into a document with a fidelity report (what the document cannot hold).
`account_validate` checks a document, `account_plan` diffs it against the live account and applies it.
The format is described in docs/account-as-code.md.

References inside the document: users by e-mail, teams / schedules / escalation policies / services by
name, maintenance windows by `key`. A reference the document cannot name (an object outside the account
or the tenant) is written `id:PXXXXXX`. Each resource may carry its PagerDuty `id`; plan and apply match
by id first and by key second, so renaming a resource that keeps its id is an update, not a re-create.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import yaml

from pagerstream.pagerduty.oncall import resolve_time_zone

FORMAT_VERSION = 1

# Resource kinds in dependency order (creates run in this order, deletes in reverse).
KIND_ORDER = ("users", "teams", "schedules", "escalation_policies", "services", "maintenance_windows")
KIND_LABEL = {"users": "user", "teams": "team", "schedules": "schedule",
              "escalation_policies": "escalation policy", "services": "service",
              "integrations": "integration", "maintenance_windows": "maintenance window"}
KEY_FIELD = {"users": "email", "teams": "name", "schedules": "name", "escalation_policies": "name",
             "services": "name", "maintenance_windows": "key"}

# Field order of each object in the canonical document. Unknown fields are kept (after these, sorted)
# so that the validator can name them.
FIELDS: dict[str, tuple[str, ...]] = {
    "users": ("email", "id", "name", "role", "time_zone", "job_title", "description", "color"),
    "teams": ("name", "id", "description", "default_role", "members"),
    "members": ("user", "role"),
    "schedules": ("name", "id", "time_zone", "description", "layers"),
    "layers": ("name", "id", "start", "end", "rotation_virtual_start", "rotation_turn_length_seconds", "users",
               "restrictions"),
    "restrictions": ("type", "start_day_of_week", "start_time_of_day", "duration_seconds"),
    "escalation_policies": ("name", "id", "description", "num_loops", "on_call_handoff_notifications", "teams",
                            "rules"),
    "rules": ("escalation_delay_in_minutes", "escalation_rule_assignment_strategy", "targets"),
    "services": ("name", "id", "description", "escalation_policy", "status", "auto_resolve_timeout",
                 "acknowledgement_timeout", "alert_creation", "incident_urgency_rule", "support_hours",
                 "scheduled_actions", "auto_pause_notifications_parameters", "alert_grouping_parameters",
                 "integrations"),
    "integrations": ("name", "id", "type", "vendor", "integration_email", "email_incident_creation",
                     "email_filter_mode", "email_parsers", "email_parsing_fallback", "email_filters"),
    "maintenance_windows": ("key", "id", "description", "start_time", "end_time", "services"),
}
TOP_LEVEL = ("version", "tenant") + KIND_ORDER

# Integration types createServiceIntegration accepts (its request schema's `type` enum). Anything else read
# from an account can be kept in the document but not created by apply.
CREATABLE_INTEGRATION_TYPES = frozenset({
    "aws_cloudwatch_inbound_integration", "cloudkick_inbound_integration",
    "event_transformer_api_inbound_integration", "generic_email_inbound_integration",
    "generic_events_api_inbound_integration", "keynote_inbound_integration", "nagios_inbound_integration",
    "pingdom_inbound_integration", "sql_monitor_inbound_integration", "events_api_v2_inbound_integration",
})
SERVICE_STATUSES = ("active", "disabled")  # the others (warning, critical, maintenance) are derived

# Fields of API objects that are bookkeeping or are represented another way: never reported.
_SILENT = {
    "users": {"id", "type", "summary", "self", "html_url", "teams"},
    "teams": {"id", "type", "summary", "self", "html_url"},
    "schedules": {"id", "type", "summary", "self", "html_url", "users", "escalation_policies", "final_schedule",
                  "overrides_subschedule", "next_oncall_for_user", "schedule_layers"},
    "layers": {"rendered_schedule_entries", "rendered_coverage_percentage"},
    "escalation_policies": {"id", "type", "summary", "self", "html_url", "services", "escalation_rules"},
    "rules": {"id"},
    "services": {"id", "type", "summary", "self", "html_url", "created_at", "last_incident_timestamp",
                 "integrations"},
    "integrations": {"id", "summary", "self", "html_url", "service", "created_at"},
    "maintenance_windows": {"id", "type", "summary", "self", "html_url", "sequence_number", "created_by",
                            "teams"},
}
# Fields the REST spec marks read-only (or derived) that carry information the document does not keep.
_READ_ONLY = {
    "users": {"avatar_url", "contact_methods", "notification_rules", "invitation_sent", "created_via_sso",
              "license", "http_cal_url", "web_cal_url"},
    "schedules": {"teams"},
    "services": {"teams", "addons"},
    "integrations": {"integration_key"},
}
_REF_PREFIX = "id:"


class AccountError(ValueError):
    """The document cannot be read (not YAML, not a mapping, wrong version)."""


# ------------------------------------------------------------------------------------------------
# tenants
# ------------------------------------------------------------------------------------------------

_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


@dataclass(frozen=True)
class Scope:
    """Which part of the account a document manages. With a tenant id T, teams, schedules, escalation
    policies and services are named "[T] <name>" in PagerDuty and maintenance windows carry "[T] " at the
    start of their description; only those are read, changed or deleted. Users are shared by all tenants:
    they are matched by e-mail, created and updated, but never deleted in tenant mode."""

    tenant: str | None = None

    def __post_init__(self) -> None:
        if self.tenant is not None and not _TENANT_RE.match(self.tenant):
            raise AccountError("tenant id must be 1-40 characters of letters, digits, '_', '.', '-' "
                               "starting with a letter or digit")

    @property
    def prefix(self) -> str:
        return f"[{self.tenant}] " if self.tenant else ""

    def remote(self, name: str | None) -> str | None:
        return None if name is None else self.prefix + name

    def local(self, remote_name: Any) -> str | None:
        """The document name of a PagerDuty name, or None when it belongs to another tenant / no tenant."""
        if not isinstance(remote_name, str):
            return None
        if not self.tenant:
            return remote_name
        return remote_name[len(self.prefix):] if remote_name.startswith(self.prefix) else None


# ------------------------------------------------------------------------------------------------
# canonical form
# ------------------------------------------------------------------------------------------------

def ref_id(ref: Any) -> str | None:
    """`id:PXXXX` -> PXXXX, else None."""
    return ref[len(_REF_PREFIX):] if isinstance(ref, str) and ref.startswith(_REF_PREFIX) else None


def _time_str(value: Any, tz_name: str | None) -> Any:
    """An ISO 8601 time (or a datetime YAML produced) in `tz_name` (UTC 'Z' when None), seconds precision.
    Values that cannot be read are returned as they are (the validator reports them)."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    try:
        tz = resolve_time_zone(tz_name) if tz_name else UTC
    except (ValueError, KeyError):
        tz = None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return value
    else:
        return value
    if dt.tzinfo is None:
        if tz is None:
            return value
        dt = dt.replace(tzinfo=tz)  # naive = wall time of the schedule's zone
    dt = dt.replace(microsecond=0)
    if tz is None:
        return dt.isoformat()
    out = dt.astimezone(tz)
    return out.strftime("%Y-%m-%dT%H:%M:%SZ") if tz is UTC else out.isoformat()


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else None


def _tod(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 86400:  # YAML 1.1 sexagesimal
        return f"{value // 3600:02d}:{value % 3600 // 60:02d}:{value % 60:02d}"
    m = re.match(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$", str(value).strip()) if isinstance(value, str) else None
    return f"{int(m.group(1)):02d}:{m.group(2)}:{m.group(3) or '00'}" if m else value


def _deep_sorted(value: Any) -> Any:
    """Opaque nested values (urgency rules, support hours...): dict keys sorted, lists kept in order."""
    if isinstance(value, Mapping):
        return {str(k): _deep_sorted(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list):
        return [_deep_sorted(v) for v in value]
    if isinstance(value, datetime):
        return _time_str(value, None)
    return value


def _ordered(obj: Mapping[str, Any], kind: str) -> dict[str, Any]:
    known = FIELDS[kind]
    out = {k: obj[k] for k in known if k in obj}
    for k in sorted((k for k in obj if k not in known), key=str):
        out[k] = obj[k]
    return out


def _name_key(value: Any) -> tuple[str, str]:
    s = str(value if value is not None else "")
    return (s.casefold(), s)


def _ref_sort_key(value: Any) -> tuple[str, str]:
    return _name_key(value)


def _target_key(t: Any) -> tuple:
    if isinstance(t, Mapping) and len(t) == 1:
        (k, v), = t.items()
        return (0 if k == "user" else 1, *_name_key(v))
    return (2, str(t), "")


def _canon_restriction(r: Any) -> Any:
    if not isinstance(r, Mapping):
        return r
    r = dict(r)
    if "start_time_of_day" in r:
        r["start_time_of_day"] = _tod(r["start_time_of_day"])
    if r.get("type") == "daily_restriction":
        r.pop("start_day_of_week", None)
    return _ordered(r, "restrictions")


def _restriction_key(r: Any) -> tuple:
    if not isinstance(r, Mapping):
        return ("~", 0, "", 0)
    return (str(r.get("type")), int(r.get("start_day_of_week") or 0) if str(r.get("start_day_of_week") or 0).isdigit()
            else 0, str(r.get("start_time_of_day")), str(r.get("duration_seconds")))


def _canon_layer(layer: Any, tz_name: str | None) -> Any:
    if not isinstance(layer, Mapping):
        return layer
    out = dict(layer)
    for k in ("start", "end", "rotation_virtual_start"):
        if out.get(k) is not None:
            out[k] = _time_str(out[k], tz_name)
    if "end" in out and out["end"] is None:
        del out["end"]
    if isinstance(out.get("restrictions"), list):
        out["restrictions"] = sorted((_canon_restriction(r) for r in out["restrictions"]), key=_restriction_key)
        if not out["restrictions"]:
            del out["restrictions"]
    return _ordered(out, "layers")


def _canon_resource(kind: str, obj: Any) -> Any:
    if not isinstance(obj, Mapping):
        return obj
    o = {str(k): v for k, v in obj.items()}
    if "id" in o and o["id"] is None:
        del o["id"]
    if kind == "teams" and isinstance(o.get("members"), list):
        o["members"] = sorted((_ordered(m, "members") if isinstance(m, Mapping) else m for m in o["members"]),
                              key=lambda m: _name_key(m.get("user") if isinstance(m, Mapping) else m))
    elif kind == "schedules":
        tz = o.get("time_zone") if isinstance(o.get("time_zone"), str) else None
        if isinstance(o.get("layers"), list):
            o["layers"] = [_canon_layer(lay, tz) for lay in o["layers"]]
    elif kind == "escalation_policies":
        if isinstance(o.get("teams"), list):
            o["teams"] = sorted(o["teams"], key=_ref_sort_key)
        if isinstance(o.get("rules"), list):
            rules = []
            for r in o["rules"]:
                if isinstance(r, Mapping):
                    r = dict(r)
                    if isinstance(r.get("targets"), list):
                        r["targets"] = sorted((dict(t) if isinstance(t, Mapping) else t for t in r["targets"]),
                                              key=_target_key)
                    r = _ordered(r, "rules")
                rules.append(r)
            o["rules"] = rules
    elif kind == "services":
        for k in ("incident_urgency_rule", "support_hours", "scheduled_actions",
                  "auto_pause_notifications_parameters", "alert_grouping_parameters"):
            if k in o:
                o[k] = _deep_sorted(o[k])
        if isinstance(o.get("integrations"), list):
            o["integrations"] = sorted(
                (_ordered({kk: _deep_sorted(vv) for kk, vv in i.items()}, "integrations")
                 if isinstance(i, Mapping) else i for i in o["integrations"]),
                key=lambda i: (*_name_key(i.get("name") if isinstance(i, Mapping) else i),
                               str(i.get("type") if isinstance(i, Mapping) else "")))
    elif kind == "maintenance_windows":
        for k in ("start_time", "end_time"):
            if o.get(k) is not None:
                o[k] = _time_str(o[k], None)
        if "key" not in o and isinstance(o.get("description"), str):
            o["key"] = o["description"]
        if isinstance(o.get("services"), list):
            o["services"] = sorted(o["services"], key=_ref_sort_key)
    return _ordered(o, kind)


def _resource_sort_key(kind: str, obj: Any) -> tuple:
    if not isinstance(obj, Mapping):
        return (1, str(obj), "")
    if kind == "maintenance_windows":
        return (0, str(obj.get("start_time")), *_name_key(obj.get("key")))
    return (0, *_name_key(obj.get(KEY_FIELD[kind])))


def canonicalize(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical form of a document: fields in a fixed order, resources sorted by key, times
    normalised (schedule layers in the schedule's zone, maintenance windows in UTC), restriction and
    target lists sorted. Layer and rule order is kept: it has meaning. Idempotent."""
    if not isinstance(doc, Mapping):
        raise AccountError("an account document is a YAML mapping")
    out: dict[str, Any] = {"version": doc.get("version", FORMAT_VERSION)}
    if doc.get("tenant") is not None:
        out["tenant"] = doc["tenant"]
    for kind in KIND_ORDER:
        items = doc.get(kind)
        if items is None:
            out[kind] = []
            continue
        if not isinstance(items, list):
            out[kind] = items  # the validator reports it
            continue
        out[kind] = sorted((_canon_resource(kind, x) for x in items), key=lambda x: _resource_sort_key(kind, x))
    for k in sorted((k for k in doc if k not in TOP_LEVEL), key=str):
        out[str(k)] = doc[k]
    return out


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def dump_yaml(doc: Mapping[str, Any]) -> str:
    """YAML text of the canonical form (block style, keys in canonical order, long lines kept)."""
    return yaml.dump(canonicalize(doc), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=10_000, indent=2)


def load_yaml(text: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise AccountError(f"not valid YAML: {e}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise AccountError("an account document is a YAML mapping with users, teams, schedules, ...")
    if doc.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise AccountError(f"unsupported document version {doc.get('version')!r} (this is version {FORMAT_VERSION})")
    return canonicalize(doc)


def load_file(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return load_yaml(fh.read())


# ------------------------------------------------------------------------------------------------
# reading the live account
# ------------------------------------------------------------------------------------------------

@dataclass
class LiveAccount:
    """The account as the REST API returns it (only the parts in scope, users always complete)."""

    users: list[dict] = field(default_factory=list)
    teams: list[dict] = field(default_factory=list)
    members: dict[str, list[dict]] = field(default_factory=dict)  # team id -> [{user, role}]
    schedules: list[dict] = field(default_factory=list)
    escalation_policies: list[dict] = field(default_factory=list)
    services: list[dict] = field(default_factory=list)
    maintenance_windows: list[dict] = field(default_factory=list)
    reads: int = 0  # GET requests made


async def fetch_live(client: Any, scope: Scope = Scope()) -> LiveAccount:
    """Read the account through `client` (a PagerDutyREST). Maintenance windows: open ones only (ongoing
    or future; ended windows cannot be changed). Schedules are fetched one by one for their layers."""
    live = LiveAccount()

    def mine(objs: Iterable[dict], name_field: str = "name") -> list[dict]:
        if not scope.tenant:
            return list(objs)
        return [o for o in objs if scope.local(o.get(name_field)) is not None]

    live.users = await client.list_users()
    live.teams = mine(await client.list_teams())
    for t in live.teams:
        live.members[t["id"]] = await client.list_all(f"/teams/{t['id']}/members", wrapper="members")
    listed = mine(await client.list_schedules())
    live.schedules = [await client.get_schedule(s["id"]) for s in listed]
    live.escalation_policies = mine(await client.list_escalation_policies())
    live.services = mine(await client.list_services(include=["integrations"]))
    live.maintenance_windows = mine(await client.list_all("/maintenance_windows", {"filter": "open"}),
                                    "description")
    return live


# ------------------------------------------------------------------------------------------------
# live account -> document
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FidelityNote:
    kind: str
    key: str | None
    message: str

    def __str__(self) -> str:
        where = KIND_LABEL.get(self.kind, self.kind) + (f" '{self.key}'" if self.key else "s")
        return f"{where}: {self.message}"


@dataclass
class Fidelity:
    """What the document could not represent, per resource, plus dropped read-only fields per kind."""

    notes: list[FidelityNote] = field(default_factory=list)
    dropped: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def note(self, kind: str, key: str | None, message: str) -> None:
        self.notes.append(FidelityNote(kind, key, message))

    def drop(self, kind: str, obj: Mapping[str, Any], represented: Iterable[str]) -> None:
        keep = set(represented) | _SILENT.get(kind, set())
        for k, v in obj.items():
            if k not in keep and v not in (None, [], {}, ""):
                self.dropped[kind][k] += 1

    def report(self) -> str:
        lines = ["Fidelity report:"]
        if not self.notes and not self.dropped:
            lines.append("  everything read is represented in the document")
        for n in self.notes:
            lines.append(f"  - {n}")
        for kind in sorted(self.dropped, key=lambda k: (list(KIND_LABEL).index(k) if k in KIND_LABEL else 99, k)):
            fields = self.dropped[kind]
            ro = _READ_ONLY.get(kind, set())
            parts = [f"{f} ({c}x{', read-only' if f in ro else ''})" for f, c in sorted(fields.items())]
            lines.append(f"  - {KIND_LABEL.get(kind, kind)} fields not represented: {', '.join(parts)}")
        lines.append("  - schedule overrides, user contact methods and notification rules are not managed "
                     "(day-to-day changes and personal settings, not account structure)")
        return "\n".join(lines)


def _id_of(ref: Any) -> str | None:
    return ref.get("id") if isinstance(ref, Mapping) else None


class _Names:
    """PagerDuty id -> document reference, per kind."""

    def __init__(self) -> None:
        self.by_kind: dict[str, dict[str, str]] = defaultdict(dict)

    def ref(self, kind: str, ref: Any, fid: Fidelity, owner_kind: str, owner: str) -> str:
        oid = _id_of(ref) if not isinstance(ref, str) else ref
        if oid and oid in self.by_kind[kind]:
            return self.by_kind[kind][oid]
        fid.note(owner_kind, owner, f"refers to {KIND_LABEL[kind]} {oid or '?'} "
                                    f"({(ref or {}).get('summary') if isinstance(ref, Mapping) else '-'}), which is "
                                    "not in the document's scope; kept as an id reference")
        return f"{_REF_PREFIX}{oid}"


def _layers_request_order(schedule: Mapping[str, Any]) -> list[dict]:
    """GET /schedules/{id} lists the highest layer first; the document (like POST/PUT) lists Layer 1 first
    (docs/oncall.md, rule R4)."""
    return list(reversed(schedule.get("schedule_layers") or []))


def account_from_live(live: LiveAccount, scope: Scope = Scope(), *, users: str = "referenced"
                      ) -> tuple[dict[str, Any], Fidelity]:
    """The canonical document of a live account, and what it could not represent. `users`: "all" keeps
    every user; "referenced" (tenant mode) keeps those that teams, schedules and policies of the tenant
    name. Without a tenant all users are kept either way."""
    fid = Fidelity()
    names = _Names()
    for u in live.users:
        names.by_kind["users"][u["id"]] = u.get("email") or f"{_REF_PREFIX}{u['id']}"
    for kind in ("teams", "schedules", "escalation_policies", "services"):
        for o in getattr(live, kind):
            names.by_kind[kind][o["id"]] = scope.local(o.get("name")) or f"{_REF_PREFIX}{o['id']}"
    doc: dict[str, Any] = {"version": FORMAT_VERSION}
    if scope.tenant:
        doc["tenant"] = scope.tenant

    # teams
    teams = []
    referenced_users: set[str] = set()
    for t in live.teams:
        key = scope.local(t.get("name"))
        out = {"name": key, "id": t["id"]}
        for k in ("description", "default_role"):
            if t.get(k) is not None:
                out[k] = t[k]
        members = []
        for m in live.members.get(t["id"], []):
            uid = _id_of(m.get("user"))
            referenced_users.add(uid or "")
            entry = {"user": names.ref("users", m.get("user"), fid, "teams", key)}
            if m.get("role"):
                entry["role"] = m["role"]
            members.append(entry)
        out["members"] = members
        fid.drop("teams", t, FIELDS["teams"])
        teams.append(out)

    # schedules
    schedules = []
    for s in live.schedules:
        key = scope.local(s.get("name"))
        out = {"name": key, "id": s["id"], "time_zone": s.get("time_zone")}
        if s.get("description") is not None:
            out["description"] = s["description"]
        layers = []
        for lay in _layers_request_order(s):
            lo: dict[str, Any] = {"name": lay.get("name"), "id": lay.get("id")}
            for k in ("start", "end", "rotation_virtual_start", "rotation_turn_length_seconds"):
                if lay.get(k) is not None:
                    lo[k] = lay[k]
            lusers = []
            for entry in lay.get("users") or []:
                ref = entry.get("user") if isinstance(entry, Mapping) and "user" in entry else entry
                referenced_users.add(_id_of(ref) or "")
                lusers.append(names.ref("users", ref, fid, "schedules", key))
            lo["users"] = lusers
            restr = []
            for r in lay.get("restrictions") or []:
                rr = {k: r[k] for k in FIELDS["restrictions"] if r.get(k) is not None}
                restr.append(rr)
            if restr:
                lo["restrictions"] = restr
            fid.drop("layers", lay, FIELDS["layers"])
            layers.append({k: v for k, v in lo.items() if v is not None})
        out["layers"] = layers
        fid.drop("schedules", s, FIELDS["schedules"])
        schedules.append(out)

    # escalation policies
    policies = []
    for e in live.escalation_policies:
        key = scope.local(e.get("name"))
        out = {"name": key, "id": e["id"]}
        for k in ("description", "num_loops", "on_call_handoff_notifications"):
            if e.get(k) is not None:
                out[k] = e[k]
        out["teams"] = [names.ref("teams", t, fid, "escalation_policies", key) for t in e.get("teams") or []]
        rules = []
        for r in e.get("escalation_rules") or []:
            ro: dict[str, Any] = {"escalation_delay_in_minutes": r.get("escalation_delay_in_minutes")}
            if r.get("escalation_rule_assignment_strategy"):
                strategy = r["escalation_rule_assignment_strategy"]
                ro["escalation_rule_assignment_strategy"] = strategy.get("type") if isinstance(strategy, Mapping) \
                    else strategy
            targets = []
            for t in r.get("targets") or []:
                ttype = str(t.get("type", "")).replace("_reference", "")
                if ttype == "user":
                    referenced_users.add(t.get("id") or "")
                    targets.append({"user": names.ref("users", t, fid, "escalation_policies", key)})
                elif ttype == "schedule":
                    targets.append({"schedule": names.ref("schedules", t, fid, "escalation_policies", key)})
                else:
                    fid.note("escalation_policies", key, f"target type {t.get('type')} is not supported; dropped")
            ro["targets"] = targets
            fid.drop("rules", r, FIELDS["rules"])
            rules.append(ro)
        out["rules"] = rules
        fid.drop("escalation_policies", e, FIELDS["escalation_policies"])
        policies.append(out)

    # services and their integrations
    services = []
    for s in live.services:
        key = scope.local(s.get("name"))
        out = {"name": key, "id": s["id"]}
        if s.get("description") is not None:
            out["description"] = s["description"]
        if s.get("escalation_policy"):
            out["escalation_policy"] = names.ref("escalation_policies", s["escalation_policy"], fid, "services", key)
        status = s.get("status") or "active"
        if status not in SERVICE_STATUSES:
            fid.note("services", key, f"status '{status}' is derived from incidents/maintenance; written as active")
            status = "active"
        out["status"] = status
        for k in ("auto_resolve_timeout", "acknowledgement_timeout", "alert_creation", "incident_urgency_rule",
                  "scheduled_actions", "auto_pause_notifications_parameters", "alert_grouping_parameters"):
            if s.get(k) is not None:
                out[k] = s[k]
        if isinstance(s.get("support_hours"), Mapping):
            sh = {k: v for k, v in s["support_hours"].items() if k != "days_of_week"}
            if s["support_hours"].get("days_of_week"):
                fid.note("services", key, "support_hours.days_of_week is read-only in the REST spec; not kept")
            out["support_hours"] = sh
        integrations = []
        for i in s.get("integrations") or []:
            itype = str(i.get("type", ""))
            if itype.endswith("_reference"):
                fid.note("services", key, f"integration {i.get('id')} came back as a reference only; not kept")
                continue
            io: dict[str, Any] = {"name": i.get("name") or i.get("summary") or itype, "id": i.get("id"),
                                  "type": itype}
            if _id_of(i.get("vendor")):
                io["vendor"] = i["vendor"]["id"]
            for k in FIELDS["integrations"][4:]:
                if i.get(k) is not None:
                    io[k] = i[k]
            if itype not in CREATABLE_INTEGRATION_TYPES:
                fid.note("services", key, f"integration '{io['name']}' has type {itype!r}, which the REST API "
                                          "cannot create; kept so that apply leaves it alone")
            fid.drop("integrations", i, FIELDS["integrations"])
            integrations.append(io)
        names_seen = Counter(x["name"] for x in integrations)
        for n, c in names_seen.items():
            if c > 1:
                fid.note("services", key, f"{c} integrations are named '{n}'; rename them to tell them apart")
        out["integrations"] = integrations
        fid.drop("services", s, FIELDS["services"])
        services.append(out)

    # maintenance windows
    windows = []
    descs = Counter(scope.local(m.get("description")) or "" for m in live.maintenance_windows)
    used: set[str] = set()
    for m in live.maintenance_windows:
        desc = scope.local(m.get("description")) or ""
        start = _time_str(m.get("start_time"), None)
        key = desc if desc and descs[desc] == 1 else f"{desc or 'maintenance'} @ {start}"
        n = 2
        base = key
        while key in used:
            key, n = f"{base} #{n}", n + 1
        used.add(key)
        out = {"key": key, "id": m["id"], "description": desc, "start_time": m.get("start_time"),
               "end_time": m.get("end_time"),
               "services": [names.ref("services", r, fid, "maintenance_windows", key) for r in m.get("services") or []]}
        fid.drop("maintenance_windows", m, FIELDS["maintenance_windows"])
        windows.append(out)

    # users
    user_objs = []
    for u in live.users:
        if users != "all" and scope.tenant and u["id"] not in referenced_users:
            continue
        out = {"email": u.get("email"), "id": u["id"]}
        for k in ("name", "role", "time_zone", "job_title", "description", "color"):
            if u.get(k) is not None:
                out[k] = u[k]
        fid.drop("users", u, FIELDS["users"])
        user_objs.append(out)

    doc.update({"users": user_objs, "teams": teams, "schedules": schedules, "escalation_policies": policies,
                "services": services, "maintenance_windows": windows})
    return canonicalize(doc), fid


async def import_account(client: Any, scope: Scope = Scope()) -> tuple[dict[str, Any], Fidelity]:
    """Read the live account and return (canonical document, fidelity report)."""
    live = await fetch_live(client, scope)
    return account_from_live(live, scope)
