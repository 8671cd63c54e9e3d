"""Plan and apply an account document against the live account.

`build_plan` (pure) matches each document resource to a live one (by `id`, then by key), lists creates,
field-level updates and deletes, and for changed schedules the on-call difference over the next N days.
`apply_plan` makes the writes through `PagerDutyREST` in dependency order: users, teams (and their
members), schedules, escalation policies, services, integrations, maintenance windows; then deletes in
the reverse order. A second apply of the same document finds nothing to do and writes nothing.

Rotation positions: for a layer that exists already, apply keeps its live `rotation_virtual_start`
(so editing a layer does not restart who is on call) unless `reset_rotations` is set.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from pagerstream.pagerduty.account import (
    KEY_FIELD,
    KIND_LABEL,
    KIND_ORDER,
    LiveAccount,
    Scope,
    _time_str,
    account_from_live,
    fetch_live,
    parse_time,
    ref_id,
)
from pagerstream.pagerduty.account_timeline import timeline_diff
from pagerstream.pagerduty.account_validate import Problem, validate
from pagerstream.pagerduty.rest import _seg

log = logging.getLogger("pagerstream.pagerduty.account")

_TIME_FIELDS = {"start", "end", "rotation_virtual_start", "start_time", "end_time"}
_ACTION_ORDER = {"create": 0, "update": 1, "delete": 2, "manual": 3}


class PlanRefused(Exception):
    """The document did not pass validation; nothing was (or will be) written."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the document:\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)}"


def _show(v: Any) -> str:
    if v is _ABSENT:
        return "(unset)"
    return json.dumps(v, ensure_ascii=False, default=str)


class _Absent:
    def __repr__(self) -> str:
        return "(unset)"


_ABSENT = _Absent()


@dataclass
class Change:
    kind: str
    action: str  # create | update | delete | manual
    key: str
    live_id: str | None = None
    desired: dict | None = None
    live: dict | None = None
    fields: list[FieldChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    service: str | None = None  # integrations: the document key of their service

    @property
    def label(self) -> str:
        name = f"{self.service}/{self.key}" if self.service else self.key
        return f"{KIND_LABEL[self.kind]} '{name}'"


@dataclass
class Plan:
    scope: Scope
    now: datetime
    days: int
    reset_rotations: bool
    desired: dict
    live_doc: dict
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ids: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> normalised doc key -> live id
    live_ids: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> normalised live key -> id

    def count(self, action: str) -> int:
        return sum(1 for c in self.changes if c.action == action)

    @property
    def empty(self) -> bool:
        return not any(c.action in ("create", "update", "delete") for c in self.changes)

    def render(self) -> str:
        tenant = self.scope.tenant or "none (whole account)"
        lines = [f"Plan for tenant {tenant}; on-call checked from {self.now.isoformat()} for {self.days} days"]
        kinds = list(KIND_ORDER[:5]) + ["integrations", "maintenance_windows"]
        for kind in kinds:
            mine = [c for c in self.changes if c.kind == kind]
            if not mine:
                continue
            lines.append(f"{kind.replace('_', ' ')}:")
            for c in mine:
                sign = {"create": "+", "update": "~", "delete": "-", "manual": "!"}[c.action]
                idp = f" ({c.live_id})" if c.live_id and c.action != "create" else ""
                lines.append(f"  {sign} {c.action} {c.label}{idp}")
                for f in c.fields:
                    lines.append(f"      {f}")
                for n in c.notes:
                    lines.append(f"      note: {n}")
                if c.timeline:
                    tz = (c.desired or {}).get("time_zone")
                    lines.append(f"      on-call changes in the next {self.days} days ({tz}):")
                    lines.extend(f"        {t}" for t in c.timeline)
        if self.notes:
            lines.append("notes:")
            lines.extend(f"  - {n}" for n in self.notes)
        if self.empty:
            lines.append("No changes: the account matches the document.")
        lines.append(f"Plan: {self.count('create')} to create, {self.count('update')} to update, "
                     f"{self.count('delete')} to delete" + (f", {self.count('manual')} to do by hand"
                                                           if self.count('manual') else "") + ".")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# matching and relabelling
# ------------------------------------------------------------------------------------------------

def _norm(kind: str, key: Any) -> str:
    s = str(key)
    return s.casefold() if kind == "users" else s


def _match(kind: str, desired: list[dict], live: list[dict], notes: list[str]
           ) -> tuple[list[tuple[dict, dict]], list[dict], list[dict]]:
    """(pairs, creates, deletes): by id first, then by key."""
    kf = KEY_FIELD.get(kind, "name")
    left = {x["id"]: x for x in live if x.get("id")}
    pairs: list[tuple[dict, dict]] = []
    rest: list[dict] = []
    for d in desired:
        if d.get("id") and d["id"] in left:
            pairs.append((d, left.pop(d["id"])))
        else:
            if d.get("id"):
                notes.append(f"{KIND_LABEL[kind]} '{d.get(kf)}': id {d['id']} is not in the account; "
                             "matched by key instead")
            rest.append(d)
    by_key: dict[str, dict] = {}
    for x in left.values():
        by_key.setdefault(_norm(kind, x.get(kf)), x)
    creates = []
    for d in rest:
        x = by_key.pop(_norm(kind, d.get(kf)), None)
        if x is not None:
            left.pop(x["id"], None)
            pairs.append((d, x))
        else:
            creates.append(d)
    return pairs, creates, list(left.values())


_REF_KIND = {"members.user": "users", "layers.users": "users", "teams": "teams", "targets.user": "users",
             "targets.schedule": "schedules", "escalation_policy": "escalation_policies", "services": "services"}


def _map_refs(doc: dict, fn: Callable[[str, str], str]) -> dict:
    """A copy of `doc` with every reference r of kind k replaced by fn(k, r)."""
    doc = copy.deepcopy(doc)

    def m(kind: str, v: Any) -> Any:
        return fn(kind, v) if isinstance(v, str) else v

    for t in doc.get("teams") or []:
        for mem in t.get("members") or []:
            if isinstance(mem, dict):
                mem["user"] = m("users", mem.get("user"))
    for s in doc.get("schedules") or []:
        for lay in s.get("layers") or []:
            if isinstance(lay, dict) and isinstance(lay.get("users"), list):
                lay["users"] = [m("users", u) for u in lay["users"]]
    for e in doc.get("escalation_policies") or []:
        if isinstance(e.get("teams"), list):
            e["teams"] = [m("teams", t) for t in e["teams"]]
        for r in e.get("rules") or []:
            for t in (r.get("targets") or []) if isinstance(r, dict) else []:
                if isinstance(t, dict):
                    for k in ("user", "schedule"):
                        if k in t:
                            t[k] = m(k + "s", t[k])
    for s in doc.get("services") or []:
        if "escalation_policy" in s:
            s["escalation_policy"] = m("escalation_policies", s["escalation_policy"])
    for w in doc.get("maintenance_windows") or []:
        if isinstance(w.get("services"), list):
            w["services"] = [m("services", r) for r in w["services"]]
    return doc


# ------------------------------------------------------------------------------------------------
# field diffs
# ------------------------------------------------------------------------------------------------

def _same(key: str, a: Any, b: Any) -> bool:
    if key in _TIME_FIELDS and isinstance(a, str) and isinstance(b, str):
        ta, tb = parse_time(a), parse_time(b)
        if ta is not None and tb is not None:
            return ta == tb
    return a == b


def _diff(path: str, key: str, old: Any, new: Any, out: list[FieldChange]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(new) + [k for k in old if k not in new]:
            if k == "id":
                continue
            _diff(f"{path}.{k}" if path else k, k, old.get(k, _ABSENT), new.get(k, _ABSENT), out)
        return
    if key == "rules" and isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and \
            all(isinstance(x, dict) for x in old + new) and old:  # levels: ordered, shown one by one
        for i, (a, b) in enumerate(zip(old, new), 1):
            _diff(f"{path}[{i}]", "", a, b, out)
        return
    if not _same(key, old, new):
        out.append(FieldChange(path, old, new))


def _diff_resource(kind: str, desired: dict, live: dict) -> list[FieldChange]:
    """Field changes; fields the document leaves out are not managed."""
    out: list[FieldChange] = []
    for k, new in desired.items():
        if k in ("id", "integrations") or (kind == "schedules" and k == "layers"):
            continue
        _diff(k, k, live.get(k, _ABSENT), new, out)
    if kind == "schedules":
        old_layers = {lay.get("id"): lay for lay in live.get("layers") or []}
        new_layers = desired.get("layers") or []
        seen = set()
        for lay in new_layers:
            name = lay.get("name")
            match = old_layers.get(lay.get("id")) if lay.get("id") else None
            if match is None:
                out.append(FieldChange(f"layers[{name!r}]", _ABSENT, "new layer"))
                continue
            seen.add(match.get("id"))
            _diff(f"layers[{name!r}]", "", {k: v for k, v in match.items() if k != "id"},
                  {k: v for k, v in lay.items() if k != "id"}, out)
        for lid, lay in old_layers.items():
            if lid not in seen:
                out.append(FieldChange(f"layers[{lay.get('name')!r}]", "existing layer", "removed"))
        order_old = [lay.get("id") for lay in live.get("layers") or []]
        order_new = [lay.get("id") for lay in new_layers if lay.get("id") in seen]
        if [x for x in order_old if x in seen] != order_new:
            out.append(FieldChange("layers (order)", [lay.get("name") for lay in live.get("layers") or []],
                                   [lay.get("name") for lay in new_layers]))
    return out


# ------------------------------------------------------------------------------------------------
# the plan
# ------------------------------------------------------------------------------------------------

def build_plan(desired: dict, live: LiveAccount, *, scope: Scope | None = None, now: datetime, days: int = 14,
               reset_rotations: bool = False, from_email: str | None = None) -> Plan:
    """Compare a canonical, valid document with the live account. Raises PlanRefused when the document
    breaks a validation rule (checked here with the account's ids known)."""
    scope = scope or Scope()
    live_doc, _fid = account_from_live(live, scope, users="all")
    known = {"users": {u["id"] for u in live.users}, "teams": {t["id"] for t in live.teams},
             "schedules": {s["id"] for s in live.schedules},
             "escalation_policies": {e["id"] for e in live.escalation_policies},
             "services": {s["id"] for s in live.services},
             "maintenance_windows": {m["id"] for m in live.maintenance_windows}}
    problems = validate(desired, now=now, days=days, known_ids=known)
    if problems:
        raise PlanRefused(problems)

    plan = Plan(scope, now, days, reset_rotations, copy.deepcopy(desired), live_doc)
    matched: dict[str, list[tuple[dict, dict]]] = {}
    live_key_to_id: dict[str, dict[str, str]] = {}
    id_to_desired: dict[str, dict[str, str]] = {}
    for kind in KIND_ORDER:
        kf = KEY_FIELD[kind]
        pairs, creates, deletes = _match(kind, plan.desired[kind], live_doc[kind], plan.notes)
        matched[kind] = pairs
        live_key_to_id[kind] = plan.live_ids[kind] = {_norm(kind, x[kf]): x["id"] for x in live_doc[kind]}
        id_to_desired[kind] = {x["id"]: d[kf] for d, x in pairs}
        plan.ids[kind] = {_norm(kind, d[kf]): x["id"] for d, x in pairs}
        for d in creates:
            plan.changes.append(Change(kind, "create", d[kf], desired=d))
        for x in deletes:
            plan.changes.append(Change(kind, "delete", x[kf], live_id=x["id"], live=x))

    def live_ref(kind: str, r: str) -> str:
        lid = ref_id(r) or live_key_to_id.get(kind, {}).get(_norm(kind, r))
        if lid and lid in id_to_desired.get(kind, {}):
            return id_to_desired[kind][lid]
        return r

    def desired_ref(kind: str, r: str) -> str:
        lid = ref_id(r)
        return id_to_desired.get(kind, {}).get(lid, r) if lid else r

    relabelled = _map_refs(live_doc, live_ref)
    plan.desired = _map_refs(plan.desired, desired_ref)
    live_by_id = {kind: {x["id"]: x for x in relabelled[kind]} for kind in KIND_ORDER}
    desired_by_key = {kind: {_norm(kind, d[KEY_FIELD[kind]]): d for d in plan.desired[kind]} for kind in KIND_ORDER}
    names = {u["email"]: u.get("name") or u["email"] for u in relabelled["users"]}
    names.update({u["email"]: u.get("name") or u["email"] for u in plan.desired["users"]})

    for kind in KIND_ORDER:
        for d0, x0 in matched[kind]:
            d = desired_by_key[kind][_norm(kind, d0[KEY_FIELD[kind]])]
            x = live_by_id[kind][x0["id"]]
            notes: list[str] = []
            if kind == "schedules":
                _prepare_layers(d, x, reset_rotations, notes)
            fields = _diff_resource(kind, d, x)
            ch = Change(kind, "update" if fields else "same", d[KEY_FIELD[kind]], live_id=x["id"], desired=d,
                        live=x, fields=fields, notes=notes)
            if kind == "schedules" and fields:
                try:
                    ch.timeline = timeline_diff(x, d, now, now + timedelta(days=days), names)
                except (ValueError, KeyError) as e:  # a live schedule oncall.py cannot read
                    ch.notes.append(f"on-call timeline not rendered: {e}")
            if fields:
                plan.changes.append(ch)
            elif notes:
                plan.notes.extend(f"{ch.label}: {n}" for n in notes)
            if kind == "services":
                _plan_integrations(plan, d, x)
    for c in list(plan.changes):  # the create entries hold the pre-relabel objects; use the final ones
        if c.action == "create" and c.kind in KIND_ORDER:
            c.desired = desired_by_key[c.kind][_norm(c.kind, c.key)]
            if c.kind == "services":
                for i in c.desired.get("integrations") or []:
                    plan.changes.append(Change("integrations", "create", i["name"], desired=i, service=c.key))

    kept = []
    for c in plan.changes:
        if c.action == "delete" and c.kind == "users":
            if scope.tenant:
                continue  # users are shared between tenants
            if from_email and str(c.key).casefold() == from_email.casefold():
                plan.notes.append(f"user '{c.key}' is not in the document but is the From user of this "
                                  "client; not deleted")
                continue
        kept.append(c)
    if scope.tenant:
        others = sum(1 for c in plan.changes if c.action == "delete" and c.kind == "users")
        if others:
            plan.notes.append(f"{others} user(s) of the account are not in this tenant's document; users are "
                              "shared between tenants and never deleted in tenant mode")
    kinds = list(KIND_ORDER[:5]) + ["integrations", "maintenance_windows"]
    plan.changes = sorted(kept, key=lambda c: (kinds.index(c.kind), _ACTION_ORDER[c.action],
                                               str(c.service or ""), _norm(c.kind, c.key) if c.kind in KEY_FIELD
                                               else str(c.key)))
    return plan


def _prepare_layers(d: dict, x: dict, reset_rotations: bool, notes: list[str]) -> None:
    """Give desired layers the ids of the live layers they match (by id, then name) and, unless rotations
    are reset, the live rotation_virtual_start."""
    live_layers = list(x.get("layers") or [])
    by_id = {lay.get("id"): lay for lay in live_layers if lay.get("id")}
    used: set[str] = set()
    for lay in d.get("layers") or []:
        match = by_id.get(lay.get("id")) if lay.get("id") else None
        if match is None:
            match = next((m for m in live_layers if m.get("name") == lay.get("name") and m.get("id") not in used),
                         None)
        if match is None:
            lay.pop("id", None)
            continue
        used.add(match["id"])
        lay["id"] = match["id"]
        rvs_old, rvs_new = match.get("rotation_virtual_start"), lay.get("rotation_virtual_start")
        if not reset_rotations and not _same("rotation_virtual_start", rvs_old, rvs_new):
            lay["rotation_virtual_start"] = _time_str(rvs_old, d.get("time_zone"))
            notes.append(f"layer {lay.get('name')!r}: rotation_virtual_start {rvs_new} in the document differs; "
                         f"the live value {rvs_old} is kept (use --reset-rotations to apply it)")


def _plan_integrations(plan: Plan, d: dict, x: dict) -> None:
    if "integrations" not in d:
        return
    service = d["name"]
    pairs, creates, deletes = _match("integrations", d.get("integrations") or [], x.get("integrations") or [],
                                     plan.notes)
    for i in creates:
        plan.changes.append(Change("integrations", "create", i["name"], desired=i, service=service))
    for di, xi in pairs:
        fields = _diff_resource("integrations", di, xi)
        if not fields:
            continue
        ch = Change("integrations", "update", di["name"], live_id=xi["id"], desired=di, live=xi, fields=fields,
                    service=service)
        if di.get("type") != xi.get("type"):
            ch.action = "manual"
            ch.notes.append("an integration's type cannot be changed; create a new integration instead")
        elif xi.get("type") not in _creatable():
            ch.action = "manual"
            ch.notes.append(f"type {xi.get('type')!r} is not writable through the REST API; change it in the web UI")
        plan.changes.append(ch)
    for xi in deletes:
        plan.changes.append(Change("integrations", "manual", xi["name"], live_id=xi["id"], live=xi, service=service,
                                   notes=[("the REST API has no call to delete an integration; remove it in the "
                                           "web UI (or delete the service)")]))


def _creatable() -> frozenset[str]:
    from pagerstream.pagerduty.account import CREATABLE_INTEGRATION_TYPES
    return CREATABLE_INTEGRATION_TYPES


async def plan_account(client: Any, desired: dict, *, scope: Scope | None = None, now: datetime, days: int = 14,
                       reset_rotations: bool = False) -> Plan:
    scope = scope or Scope()
    live = await fetch_live(client, scope)
    return build_plan(desired, live, scope=scope, now=now, days=days, reset_rotations=reset_rotations,
                      from_email=getattr(client, "from_email", None))


# ------------------------------------------------------------------------------------------------
# apply
# ------------------------------------------------------------------------------------------------

@dataclass
class ApplyResult:
    writes: list[str] = field(default_factory=list)  # "POST /users (user 'ann@example.com')"
    skipped: list[str] = field(default_factory=list)


class _Applier:
    def __init__(self, client: Any, plan: Plan, echo: Callable[[str], None] | None) -> None:
        self.client = client
        self.plan = plan
        self.scope = plan.scope
        self.ids = {k: dict(v) for k, v in plan.ids.items()}
        self.result = ApplyResult()
        self.echo = echo or (lambda s: None)

    def rid(self, kind: str, ref: str) -> str:
        n = _norm(kind, ref)
        return ref_id(ref) or self.ids[kind].get(n) or self.plan.live_ids[kind][n]

    async def call(self, method: str, path: str, body: Any, label: str) -> Any:
        out = await self.client.request(method, path, json=body)
        line = f"{method} {path.split('?')[0]}  ({label})"
        self.result.writes.append(line)
        self.echo(line)
        log.info("account apply: %s", line)
        return out

    def ref(self, kind: str, ref: str, rtype: str) -> dict:
        return {"id": self.rid(kind, ref), "type": rtype}

    # -- bodies ------------------------------------------------------------------------------------
    def user_body(self, d: dict) -> dict:
        u = {"type": "user", "name": d["name"], "email": d["email"]}
        u.update({k: d[k] for k in ("role", "time_zone", "job_title", "description", "color") if k in d})
        return {"user": u}

    def team_body(self, d: dict) -> dict:
        t = {"type": "team", "name": self.scope.remote(d["name"])}
        t.update({k: d[k] for k in ("description", "default_role") if k in d})
        return {"team": t}

    def schedule_body(self, d: dict) -> dict:
        layers = []
        for lay in d["layers"]:
            lo: dict[str, Any] = {"name": lay["name"], "start": lay["start"],
                                  "rotation_virtual_start": lay["rotation_virtual_start"],
                                  "rotation_turn_length_seconds": lay["rotation_turn_length_seconds"],
                                  "users": [{"user": self.ref("users", u, "user_reference")} for u in lay["users"]],
                                  "restrictions": [dict(r) for r in lay.get("restrictions") or []]}
            if lay.get("end"):
                lo["end"] = lay["end"]
            if lay.get("id"):
                lo["id"] = lay["id"]
            layers.append(lo)
        s = {"type": "schedule", "name": self.scope.remote(d["name"]), "time_zone": d["time_zone"],
             "schedule_layers": layers}
        if "description" in d:
            s["description"] = d["description"]
        return {"schedule": s}

    def policy_body(self, d: dict) -> dict:
        rules = []
        for r in d["rules"]:
            targets = [self.ref("users", t["user"], "user_reference") if "user" in t
                       else self.ref("schedules", t["schedule"], "schedule_reference") for t in r["targets"]]
            ro = {"escalation_delay_in_minutes": r["escalation_delay_in_minutes"], "targets": targets}
            if "escalation_rule_assignment_strategy" in r:
                ro["escalation_rule_assignment_strategy"] = r["escalation_rule_assignment_strategy"]
            rules.append(ro)
        e = {"type": "escalation_policy", "name": self.scope.remote(d["name"]), "escalation_rules": rules}
        e.update({k: d[k] for k in ("description", "num_loops", "on_call_handoff_notifications") if k in d})
        if "teams" in d:
            e["teams"] = [self.ref("teams", t, "team_reference") for t in d["teams"]]
        return {"escalation_policy": e}

    def service_body(self, d: dict) -> dict:
        s = {"type": "service", "name": self.scope.remote(d["name"]),
             "escalation_policy": self.ref("escalation_policies", d["escalation_policy"], "escalation_policy_reference")}
        s.update({k: copy.deepcopy(v) for k, v in d.items()
                  if k not in ("name", "id", "escalation_policy", "integrations")})
        return {"service": s}

    def integration_body(self, d: dict, service_id: str) -> dict:
        i = {"type": d["type"], "name": d["name"], "service": {"id": service_id, "type": "service_reference"}}
        if d.get("vendor"):
            i["vendor"] = {"id": d["vendor"], "type": "vendor_reference"}
        i.update({k: copy.deepcopy(v) for k, v in d.items() if k not in ("name", "id", "type", "vendor")})
        return {"integration": i}

    def window_body(self, d: dict) -> dict:
        desc = d.get("description")
        return {"maintenance_window": {
            "type": "maintenance_window", "start_time": d["start_time"], "end_time": d["end_time"],
            "description": self.scope.remote(desc if desc is not None else d["key"]),
            "services": [self.ref("services", s, "service_reference") for s in d["services"]]}}

    # -- steps ---------------------------------------------------------------------------------------
    _PATH: ClassVar[dict[str, str]] = {"users": "/users", "teams": "/teams", "schedules": "/schedules",
             "escalation_policies": "/escalation_policies", "services": "/services",
             "maintenance_windows": "/maintenance_windows"}
    _WRAP: ClassVar[dict[str, str]] = {"users": "user", "teams": "team", "schedules": "schedule", "escalation_policies": "escalation_policy",
             "services": "service", "maintenance_windows": "maintenance_window"}

    def body(self, kind: str, d: dict) -> dict:
        return {"users": self.user_body, "teams": self.team_body, "schedules": self.schedule_body,
                "escalation_policies": self.policy_body, "services": self.service_body,
                "maintenance_windows": self.window_body}[kind](d)

    async def upsert(self, c: Change) -> None:
        kind, d = c.kind, c.desired or {}
        members_only = kind == "teams" and c.action == "update" and all(f.path.startswith("members")
                                                                       for f in c.fields)
        if members_only:
            pass  # the team itself is unchanged: only its membership is written below
        elif c.action == "create":
            out = await self.call("POST", self._PATH[kind], self.body(kind, d), c.label)
            self.ids[kind][_norm(kind, c.key)] = out[self._WRAP[kind]]["id"]
        else:
            await self.call("PUT", f"{self._PATH[kind]}/{_seg(c.live_id)}", self.body(kind, d), c.label)
        if kind == "teams" and "members" in d:
            await self.sync_members(c)

    async def sync_members(self, c: Change) -> None:
        tid = self.ids["teams"][_norm("teams", c.key)]
        want = {self.rid("users", m["user"]): m.get("role") for m in c.desired.get("members") or []}
        have = {self.rid("users", m["user"]): m.get("role") for m in (c.live or {}).get("members") or []}
        for uid, role in want.items():
            if uid not in have or (role is not None and role != have[uid]):
                await self.call("PUT", f"/teams/{_seg(tid)}/users/{_seg(uid)}", {"role": role} if role else None,
                                f"member {uid} of {c.label}")
        for uid in have:
            if uid not in want:
                await self.call("DELETE", f"/teams/{_seg(tid)}/users/{_seg(uid)}", None, f"member {uid} of {c.label}")

    async def integration(self, c: Change) -> None:
        sid = self.ids["services"][_norm("services", c.service)]
        if c.action == "create":
            out = await self.call("POST", f"/services/{_seg(sid)}/integrations", self.integration_body(c.desired, sid),
                                  c.label)
            c.live_id = out["integration"]["id"]
        else:
            await self.call("PUT", f"/services/{_seg(sid)}/integrations/{_seg(c.live_id)}",
                            self.integration_body(c.desired, sid), c.label)

    async def run(self) -> ApplyResult:
        by_kind: dict[str, list[Change]] = {}
        for c in self.plan.changes:
            by_kind.setdefault(c.kind, []).append(c)
        for kind in ("users", "teams", "schedules", "escalation_policies", "services", "integrations",
                     "maintenance_windows"):
            for c in by_kind.get(kind, []):
                if c.action == "manual":
                    self.result.skipped.append(f"{c.label}: " + "; ".join(c.notes))
                elif kind == "integrations":
                    await self.integration(c)
                elif c.action in ("create", "update"):
                    await self.upsert(c)
        for kind in reversed(KIND_ORDER):
            for c in by_kind.get(kind, []):
                if c.action == "delete":
                    await self.call("DELETE", f"{self._PATH[kind]}/{_seg(c.live_id)}", None, c.label)
        return self.result


async def apply_plan(client: Any, plan: Plan, *, echo: Callable[[str], None] | None = None) -> ApplyResult:
    """Make the plan's writes (creates and updates in dependency order, then deletes in reverse)."""
    return await _Applier(client, plan, echo).run()


async def apply_account(client: Any, desired: dict, *, scope: Scope | None = None, now: datetime, days: int = 14,
                        reset_rotations: bool = False, echo: Callable[[str], None] | None = None
                        ) -> tuple[Plan, ApplyResult]:
    plan = await plan_account(client, desired, scope=scope, now=now, days=days, reset_rotations=reset_rotations)
    return plan, await apply_plan(client, plan, echo=echo)


def resolve_scope(doc: Mapping[str, Any], tenant_id: str | None) -> Scope:
    """The tenant of a run: --tenant-id, or the document's `tenant:`; both given must agree."""
    doc_tenant = doc.get("tenant")
    if tenant_id and doc_tenant and tenant_id != doc_tenant:
        raise ValueError(f"--tenant-id {tenant_id} does not match the document's tenant {doc_tenant}")
    return Scope(tenant_id or doc_tenant)


def writes_of(changes: Iterable[Change]) -> int:
    return sum(1 for c in changes if c.action in ("create", "update", "delete"))
