"""Local stand-in for PagerDuty's REST API v2 (api.pagerduty.com), mounted into the Events sandbox app.

Every request is checked against the official OpenAPI document (shared/contracts/pagerduty/openapi/
rest-api-v2.openapiv3.json): path + method -> operation, the header parameters it declares as required
(`Accept`, `Content-Type`, `From`), the Authorization format, every query parameter (unknown names,
types, enums, date-times, `[]` arrays) and the JSON body against the operation's schema. Invalid
requests get PagerDuty-shaped errors `{"error": {"message", "code", "errors"}}` with the codes of the
developer docs' error table.

Behaviour copied from the developer docs: classic pagination (limit default 25, max 100, `more`,
`total` only with total=true, 400 when offset + limit > 10000), cursor pagination (`next_cursor`) on
/audit/records, `ratelimit-limit/-remaining/-reset` headers on every evaluated request (960 per minute
per token unless changed) and the 429 body `{"error": {"message": "Rate Limit Exceeded", "code": 2020}}`.

Data: seeded from the spec's examples (rest-examples/*.json; on-call examples re-timed to cover now)
plus whatever tests POST to /sandbox/rest/seed. Incidents (acknowledge, resolve, reassign, notes) and
webhook subscriptions (secret returned once on create) live in memory, and so does the account
configuration that `pagerstream pagerduty apply` writes: users, teams and their members, schedules,
escalation policies, services, service integrations and maintenance windows (see "account configuration"
below for the referential rules it enforces).

Deliberate deviations, all in the direction of being stricter than PagerDuty:
* unknown query parameters are rejected (PagerDuty ignores them), to catch client typos;
* with OAuth bearer tokens a missing `From` is accepted (the token names its user); with API tokens
  the spec's required `From` is enforced and must be the email of a known user (error 1008 otherwise);
* the Authorization pattern is `Token token=[A-Za-z0-9_+-]+` / `Bearer <token68>`: the spec's own
  pattern (`[A-Za-z0-9]+`) would reject real API keys, which contain '_', '+' and '-'.

Endpoints (besides the PagerDuty ones, listed in IMPLEMENTED):
  GET  /sandbox/rest/requests[?operation_id=&method=&path=]   request log (tokens masked)
  GET|POST /sandbox/rest/faults                               read / add faults (429 with or without
                                                              headers, 5xx, slow, ratelimit window, clear)
  POST /sandbox/rest/seed                                     add fixtures (objects or {"count": N})
  GET|POST /sandbox/rest/tokens                               accepted / read-only tokens
  POST /sandbox/rest/reset[?examples=false]                   wipe state (faults and log included)
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import hashlib
import json
import logging
import math
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from aiohttp import web
from multidict import MultiMapping
from referencing import Registry
from referencing.jsonschema import DRAFT4

try:  # the OpenAPI 3.0 dialect (nullable etc.), as in pd_sandbox
    from openapi_schema_validator import OAS30Validator as _SchemaValidator
except ImportError:  # pragma: no cover
    from jsonschema import Draft4Validator as _SchemaValidator

try:
    from .pd_sandbox import CONTRACTS_ENV, SpecNotFoundError, default_contracts_dir
except ImportError:  # loaded as a top-level module (pd_sandbox run as a script)
    from pd_sandbox import CONTRACTS_ENV, SpecNotFoundError, default_contracts_dir  # type: ignore[no-redef]

log = logging.getLogger("pagerstream.pd_rest_sandbox")

REST_SPEC_RELPATH = Path("pagerduty/openapi/rest-api-v2.openapiv3.json")
EXAMPLES_RELPATH = Path("pagerduty/rest-examples")
EVENT_TYPES_RELPATH = Path("pagerduty/webhooks-v3/event-types.json")
SPEC_URI = "urn:pagerduty:rest-api-v2"
ACCEPT = "application/vnd.pagerduty+json;version=2"

DEFAULT_LIMIT = 25
MAX_LIMIT = 100
PAGINATION_CAP = 10_000
DEFAULT_RATE_LIMIT = 960  # requests per minute per token (developer docs, Rate Limits)
DEFAULT_RATE_WINDOW_S = 60.0
API_HOST = "https://api.pagerduty.com"
APP_HOST = "https://subdomain.pagerduty.com"

# (method, spec path) -> handler name; the routes this sandbox serves
IMPLEMENTED: dict[tuple[str, str], str] = {
    ("GET", "/services"): "list_services",
    ("GET", "/services/{id}"): "get_service",
    ("GET", "/escalation_policies"): "list_escalation_policies",
    ("GET", "/escalation_policies/{id}"): "get_escalation_policy",
    ("GET", "/schedules"): "list_schedules",
    ("GET", "/schedules/{id}"): "get_schedule",
    ("GET", "/oncalls"): "list_oncalls",
    ("GET", "/users"): "list_users",
    ("GET", "/users/me"): "get_current_user",
    ("GET", "/users/{id}"): "get_user",
    ("GET", "/teams"): "list_teams",
    ("GET", "/teams/{id}"): "get_team",
    ("GET", "/incidents"): "list_incidents",
    ("POST", "/incidents"): "create_incident",
    ("GET", "/incidents/{id}"): "get_incident",
    ("PUT", "/incidents/{id}"): "update_incident",
    ("GET", "/incidents/{id}/notes"): "list_notes",
    ("POST", "/incidents/{id}/notes"): "create_note",
    ("GET", "/webhook_subscriptions"): "list_webhooks",
    ("POST", "/webhook_subscriptions"): "create_webhook",
    ("GET", "/webhook_subscriptions/{id}"): "get_webhook",
    ("DELETE", "/webhook_subscriptions/{id}"): "delete_webhook",
    ("GET", "/audit/records"): "list_audit_records",
    # account configuration writes (pagerstream pagerduty apply): handlers in "account configuration" below
    ("POST", "/users"): "create_user",
    ("PUT", "/users/{id}"): "update_user",
    ("DELETE", "/users/{id}"): "delete_user",
    ("POST", "/teams"): "create_team",
    ("PUT", "/teams/{id}"): "update_team",
    ("DELETE", "/teams/{id}"): "delete_team",
    ("GET", "/teams/{id}/members"): "list_team_members",
    ("PUT", "/teams/{id}/users/{user_id}"): "put_team_user",
    ("DELETE", "/teams/{id}/users/{user_id}"): "delete_team_user",
    ("POST", "/schedules"): "create_schedule",
    ("PUT", "/schedules/{id}"): "update_schedule",
    ("DELETE", "/schedules/{id}"): "delete_schedule",
    ("POST", "/escalation_policies"): "create_escalation_policy",
    ("PUT", "/escalation_policies/{id}"): "update_escalation_policy",
    ("DELETE", "/escalation_policies/{id}"): "delete_escalation_policy",
    ("POST", "/services"): "create_service",
    ("PUT", "/services/{id}"): "update_service",
    ("DELETE", "/services/{id}"): "delete_service",
    ("POST", "/services/{id}/integrations"): "create_integration",
    ("GET", "/services/{id}/integrations/{integration_id}"): "get_integration",
    ("PUT", "/services/{id}/integrations/{integration_id}"): "update_integration",
    ("GET", "/maintenance_windows"): "list_maintenance_windows",
    ("POST", "/maintenance_windows"): "create_maintenance_window",
    ("GET", "/maintenance_windows/{id}"): "get_maintenance_window",
    ("PUT", "/maintenance_windows/{id}"): "update_maintenance_window",
    ("DELETE", "/maintenance_windows/{id}"): "delete_maintenance_window",
}

# collection -> (object type, reference type, html path)
KINDS: dict[str, tuple[str, str, str]] = {
    "services": ("service", "service_reference", "service-directory"),
    "escalation_policies": ("escalation_policy", "escalation_policy_reference", "escalation_policies"),
    "schedules": ("schedule", "schedule_reference", "schedules"),
    "users": ("user", "user_reference", "users"),
    "teams": ("team", "team_reference", "teams"),
    "incidents": ("incident", "incident_reference", "incidents"),
    "maintenance_windows": ("maintenance_window", "maintenance_window_reference", "service-directory/maintenance-windows"),
    "integrations": ("generic_events_api_inbound_integration", "inbound_integration_reference", "services"),
}

_AUTH_RE = re.compile(r"^(?:Token token=(?P<token>[A-Za-z0-9_+\-]+)|Bearer (?P<bearer>[A-Za-z0-9\-._~+/]+=*))$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


# --------------------------------------------------------------------------------------------
# spec
# --------------------------------------------------------------------------------------------

def _spec_file(path: str | Path | None) -> Path:
    if path is None:
        return default_contracts_dir() / REST_SPEC_RELPATH
    p = Path(path).expanduser()
    return p / REST_SPEC_RELPATH if p.is_dir() else p


def load_rest_spec(path: str | Path | None = None) -> dict:
    f = _spec_file(path)
    if not f.is_file():
        raise SpecNotFoundError(
            f"PagerDuty REST API v2 OpenAPI spec not found at {f}. Set {CONTRACTS_ENV} to the shared "
            f"contracts directory (the one containing {REST_SPEC_RELPATH}).")
    with f.open("r", encoding="utf-8") as fh:
        spec = json.load(fh)
    if not isinstance(spec, dict) or "paths" not in spec:
        raise ValueError(f"{f} does not look like an OpenAPI document")
    return spec


def _pointer(root: Any, ref: str) -> Any:
    node = root
    for part in ref.lstrip("#/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _deref(root: dict, node: Any) -> Any:
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        node = _pointer(root, node["$ref"])
    return node


def _escape(s: str) -> str:
    return s.replace("~", "~0").replace("/", "~1")


@dataclass
class Param:
    name: str
    location: str
    required: bool
    schema: dict


@dataclass
class Operation:
    method: str
    path: str
    operation_id: str
    params: list[Param]
    body_validator: Any = None
    body_required: bool = False
    segments: list[str] = field(default_factory=list)

    def param(self, location: str, name: str) -> Param | None:
        for p in self.params:
            if p.location == location and p.name.lower() == name.lower():
                return p
        return None


class RestSpec:
    """Operations of the official spec, matching and request validation."""

    METHODS = ("get", "put", "post", "delete", "patch")

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.registry = Registry().with_resource(SPEC_URI, DRAFT4.create_resource(spec))
        self.operations: list[Operation] = []
        self._value_validators: dict[str, Any] = {}
        for path, item in spec.get("paths", {}).items():
            shared = [p for p in (item or {}).get("parameters", []) if isinstance(p, dict)]
            for method in self.METHODS:
                op = (item or {}).get(method)
                if not isinstance(op, dict) or "operationId" not in op:
                    continue
                params = []
                for raw in shared + list(op.get("parameters", [])):
                    p = _deref(spec, raw)
                    params.append(Param(p["name"], p["in"], bool(p.get("required")), p.get("schema") or {}))
                o = Operation(method.upper(), path, op["operationId"], params, segments=path.strip("/").split("/"))
                rb = op.get("requestBody")
                if rb is not None:
                    rbd = _deref(spec, rb)
                    if "application/json" in rbd.get("content", {}):
                        ptr = f"/paths/{_escape(path)}/{method}/requestBody"
                        if "$ref" in rb:
                            ptr = rb["$ref"].lstrip("#")
                        ptr += "/content/application~1json/schema"
                        o.body_validator = _SchemaValidator({"$ref": f"{SPEC_URI}#{ptr}"}, registry=self.registry)
                        o.body_required = bool(rbd.get("required"))
                self.operations.append(o)
        self.by_id = {o.operation_id: o for o in self.operations}

    def match(self, method: str, path: str) -> tuple[Operation | None, dict[str, str], bool]:
        """(operation, path params, path exists for another method)."""
        parts = path.strip("/").split("/")
        best: tuple[int, Operation, dict[str, str]] | None = None
        other_method = False
        for o in self.operations:
            if len(o.segments) != len(parts):
                continue
            params: dict[str, str] = {}
            literal = 0
            ok = True
            for t, v in zip(o.segments, parts):
                if t.startswith("{") and t.endswith("}"):
                    if not v:
                        ok = False
                        break
                    params[t[1:-1]] = v
                elif t == v:
                    literal += 1
                else:
                    ok = False
                    break
            if not ok:
                continue
            if o.method != method:
                other_method = True
                continue
            if best is None or literal > best[0]:
                best = (literal, o, params)
        if best is None:
            return None, {}, other_method
        return best[1], best[2], other_method

    def _value_validator(self, schema: dict) -> Any:
        k = json.dumps(schema, sort_keys=True)
        v = self._value_validators.get(k)
        if v is None:
            v = self._value_validators[k] = _SchemaValidator(schema, registry=self.registry)
        return v

    def check_query(self, op: Operation, query: MultiMapping[str]) -> list[str]:
        errors: list[str] = []
        declared = {p.name: p for p in op.params if p.location == "query"}
        for name in dict.fromkeys(query.keys()):
            p = declared.get(name)
            if p is None:
                hint = f" (did you mean '{name}[]'?)" if name + "[]" in declared else ""
                errors.append(f"Unknown query parameter '{name}'{hint}")
                continue
            values = query.getall(name)
            schema = _deref(self.spec, p.schema)
            is_array = schema.get("type") == "array" or name.endswith("[]")
            if not is_array and len(values) > 1:
                errors.append(f"Query parameter '{name}' given more than once")
                continue
            item_schema = _deref(self.spec, schema.get("items", {})) if schema.get("type") == "array" else schema
            for raw in values:
                value, err = _coerce(raw, item_schema)
                if err:
                    errors.append(f"Query parameter '{name}': {err}")
                    continue
                for e in self._value_validator(item_schema).iter_errors(value):
                    errors.append(f"Query parameter '{name}': {e.message[:200]}")
            if schema.get("type") == "array" and schema.get("uniqueItems") and len(set(values)) != len(values):
                errors.append(f"Query parameter '{name}' has duplicate values")
        for p in declared.values():
            if p.required and p.name not in query:
                errors.append(f"Missing required query parameter '{p.name}'")
        return errors

    @staticmethod
    def check_body(op: Operation, body: Any) -> list[str]:
        if op.body_validator is None:
            return []
        out = []
        for e in sorted(op.body_validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
            where = ".".join(str(p) for p in e.absolute_path) or "body"
            out.append(f"{where}: {e.message[:300]}")
        return out


def _coerce(raw: str, schema: dict) -> tuple[Any, str | None]:
    t = schema.get("type")
    if t == "integer":
        try:
            return int(raw), None
        except ValueError:
            return None, f"expected an integer, got {raw[:40]!r}"
    if t == "number":
        try:
            x = float(raw)
            if not math.isfinite(x):
                raise ValueError
            return x, None
        except ValueError:
            return None, f"expected a number, got {raw[:40]!r}"
    if t == "boolean":  # developer docs, Types: "1"/"true" and "0"/"false"
        if raw in ("true", "1"):
            return True, None
        if raw in ("false", "0"):
            return False, None
        return None, f"expected true/false/1/0, got {raw[:40]!r}"
    if schema.get("format") == "date-time" and parse_time(raw) is None:
        return None, f"expected an ISO 8601 date/time, got {raw[:60]!r}"
    return raw, None


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, status: int, code: int | None, message: str, errors: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, list(errors)

    def body(self) -> dict:
        err: dict[str, Any] = {"message": self.message}
        if self.code is not None:
            err["code"] = self.code
        if self.errors:
            err["errors"] = self.errors
        return {"error": err}


def invalid(*errors: str, code: int = 2001, message: str = "Invalid Input Provided") -> ApiError:
    return ApiError(400, code, message, errors)


def not_found(what: str) -> ApiError:
    return ApiError(404, 2100, "Not Found", [f"{what} Not Found"])


# --------------------------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------------------------

def parse_fault(spec: Any) -> dict:
    if not isinstance(spec, dict) or "mode" not in spec:
        raise ValueError("fault must be an object with a 'mode'")
    mode = str(spec["mode"]).lower()

    def count() -> int:
        c = spec.get("count", 1)
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError("'count' must be a positive integer")
        return c

    def match() -> dict:
        m = {}
        for k in ("operation_id", "method", "path"):
            v = spec.get(k)
            if v is not None:
                if not isinstance(v, str) or not v:
                    raise ValueError(f"'{k}' must be a non-empty string")
                m[k] = v.upper() if k == "method" else v
        return m

    if mode == "clear":
        return {"mode": "clear"}
    if mode == "429":
        headers = spec.get("headers", True)
        if not isinstance(headers, bool):
            raise ValueError("'headers' must be true or false")
        reset = spec.get("reset")
        if reset is not None and (isinstance(reset, bool) or not isinstance(reset, int) or reset < 0):
            raise ValueError("'reset' must be a non-negative integer (seconds)")
        return {"mode": "429", "headers": headers, "reset": reset, "count": count(), **match()}
    if len(mode) == 3 and mode.isdigit() and mode.startswith("5"):
        body = spec.get("body", "json")
        if body not in ("json", "plain"):
            raise ValueError("'body' must be 'json' or 'plain'")
        return {"mode": mode, "body": body, "count": count(), **match()}
    if mode == "slow":
        d = spec.get("delay_ms")
        if isinstance(d, bool) or not isinstance(d, (int, float)) or d < 0 or d > 600_000:
            raise ValueError("'delay_ms' must be a number between 0 and 600000")
        return {"mode": "slow", "delay_ms": d, "count": count(), **match()}
    if mode == "ratelimit":
        limit = spec.get("limit")
        window = spec.get("window_s", DEFAULT_RATE_WINDOW_S)
        if limit is None:
            return {"mode": "ratelimit", "limit": DEFAULT_RATE_LIMIT, "window_s": DEFAULT_RATE_WINDOW_S}
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("'limit' must be a positive integer (null restores the default)")
        if isinstance(window, bool) or not isinstance(window, (int, float)) or window <= 0:
            raise ValueError("'window_s' must be a positive number")
        return {"mode": "ratelimit", "limit": limit, "window_s": float(window)}
    raise ValueError(f"unknown fault mode {spec['mode']!r} (429, 5xx, slow, ratelimit, clear)")


def mask_token(token: str | None) -> str:
    if not token:
        return "-"
    return "****" if len(token) <= 8 else "****" + token[-4:]


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------------

@dataclass
class Ctx:
    op: Operation
    path_params: dict[str, str]
    query: MultiMapping[str]
    body: Any
    auth: str  # "token" | "bearer"
    token_key: str
    from_email: str | None


class RestSandboxState:
    """In-memory PagerDuty account. Thread-safe; `clock` (monotonic, for rate windows and the request
    log's `t`) and `wallclock` (for timestamps and "now" in on-call queries) can be replaced by tests."""

    def __init__(self, spec: RestSpec, examples_dir: Path | None = None, event_types: Iterable[str] | None = None,
                 *, seed_examples: bool = True, clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.examples_dir = examples_dir
        self.event_types = frozenset(event_types or ())
        self.clock = clock
        self.wallclock = wallclock
        self._lock = threading.RLock()
        self.reset(seed_examples=seed_examples)

    # ---- lifecycle --------------------------------------------------------------------------
    def reset(self, *, seed_examples: bool = True) -> None:
        with self._lock:
            self.collections: dict[str, dict[str, dict]] = {k: {} for k in KINDS}
            self.oncalls: list[dict] = []
            self.audit_records: list[dict] = []
            self.notes: dict[str, list[dict]] = {}
            self.webhooks: dict[str, dict] = {}
            self.team_roles: dict[tuple[str, str], str] = {}  # (team id, user id) -> member role
            self._webhook_secrets: dict[str, str] = {}
            self.requests: list[dict] = []
            self._faults: collections.deque[dict] = collections.deque()
            self.rate_limit = DEFAULT_RATE_LIMIT
            self.rate_window_s = DEFAULT_RATE_WINDOW_S
            self._windows: dict[str, list[float]] = {}  # token key -> [window start, used]
            self.valid_tokens: set[str] | None = None  # None: any well-formed token is accepted
            self.read_only_tokens: set[str] = set()
            self.token_users: dict[str, str] = {}  # bearer token key -> user id
            self._seq = 0
            self._incident_number = 1000
            if seed_examples and self.examples_dir is not None:
                self._seed_from_examples()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.wallclock(), timezone.utc)

    def new_id(self) -> str:
        with self._lock:
            self._seq += 1
            n, s = self._seq, ""
            alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
            while n:
                n, r = divmod(n, 36)
                s = alphabet[r] + s
            return "PS" + s.rjust(5, "0")

    # ---- seeding ----------------------------------------------------------------------------
    def _example(self, name: str) -> Any:
        f = self.examples_dir / f"{name}.json" if self.examples_dir else None
        if not f or not f.is_file():
            return None
        data = json.loads(f.read_text(encoding="utf-8"))
        ok = (data.get("response_examples") or {}).get("200") or {}
        if not ok:
            return None
        return next(iter(ok.values()))

    def _seed_from_examples(self) -> None:
        # single-object examples first: they are the fuller objects when both share an id
        pairs = [("services", "getService", "service"), ("services", "listServices", "services"),
                 ("escalation_policies", "getEscalationPolicy", "escalation_policy"),
                 ("escalation_policies", "listEscalationPolicies", "escalation_policies"),
                 ("schedules", "getSchedule", "schedule"), ("schedules", "listSchedules", "schedules"),
                 ("users", "getUser", "user"), ("users", "listUsers", "users"),
                 ("teams", "getTeam", "team"), ("teams", "listTeams", "teams"),
                 ("incidents", "getIncident", "incident"), ("incidents", "listIncidents", "incidents")]
        for coll, name, wrapper in pairs:
            ex = self._example(name)
            if not isinstance(ex, dict):
                continue
            objs = ex.get(wrapper)
            for obj in objs if isinstance(objs, list) else [objs]:
                if isinstance(obj, dict) and obj.get("id") and obj["id"] not in self.collections[coll]:
                    self.collections[coll][obj["id"]] = copy.deepcopy(obj)
        for inc in self.collections["incidents"].values():
            if isinstance(inc.get("incident_number"), int):
                self._incident_number = max(self._incident_number, inc["incident_number"])
        ex = self._example("listOnCalls")
        now = self.now()
        for oc in (ex or {}).get("oncalls", []):  # re-timed so that "who is on call now" finds them
            oc = copy.deepcopy(oc)
            oc["start"], oc["end"] = _iso(now - timedelta(days=1)), _iso(now + timedelta(days=1))
            self.oncalls.append(oc)
        ex = self._example("listWebhookSubscriptions")
        for w in (ex or {}).get("webhook_subscriptions", []):
            self.webhooks[w["id"]] = copy.deepcopy(w)
            self._webhook_secrets[w["id"]] = secrets.token_urlsafe(48)
        for i, rec in enumerate((self.spec.spec.get("components", {}).get("examples", {})
                                 .get("AuditRecordResponse", {}).get("value", {}).get("records", []))):
            self.audit_records.append(copy.deepcopy(rec))

    def reference(self, coll: str, obj_id: str) -> dict:
        _otype, rtype, html = KINDS[coll]
        obj = self.collections[coll].get(obj_id) or {}
        return {"id": obj_id, "type": rtype, "summary": obj.get("summary") or obj.get("name") or obj_id,
                "self": f"{API_HOST}/{coll}/{obj_id}", "html_url": f"{APP_HOST}/{html}/{obj_id}"}

    def _complete(self, coll: str, obj: dict) -> dict:
        otype, _rtype, html = KINDS[coll]
        obj = copy.deepcopy(obj)
        obj.setdefault("id", self.new_id())
        obj.setdefault("type", otype)
        if coll == "users":
            obj.setdefault("name", f"User {obj['id']}")
            obj.setdefault("email", f"{obj['id'].lower()}@example.com")
            obj.setdefault("role", "user")
        elif coll not in ("incidents", "maintenance_windows"):
            obj.setdefault("name", f"{otype.replace('_', ' ').title()} {obj['id']}")
        obj.setdefault("summary", obj.get("name") or obj["id"])
        obj.setdefault("self", f"{API_HOST}/{coll}/{obj['id']}")
        obj.setdefault("html_url", f"{APP_HOST}/{html}/{obj['id']}")
        if coll == "escalation_policies":
            obj.setdefault("escalation_rules", [])
            obj.setdefault("num_loops", 0)
        if coll in ("services", "users", "escalation_policies", "schedules"):
            obj.setdefault("teams", [])
        if coll == "services":  # full integration objects given inline are stored as integrations
            obj["integrations"] = [self._store_integration(obj, i) if isinstance(i, dict) and
                                   not str(i.get("type", "")).endswith("_reference") else i
                                   for i in obj.get("integrations") or []]
        if coll == "teams":  # {"members": [{"user_id", "role"}]} seeds team membership
            for m in obj.pop("members", None) or []:
                self.team_roles[(obj["id"], m["user_id"])] = m.get("role", "manager")
        return obj

    def _store_integration(self, service: dict, integ: dict) -> dict:
        """Keep a full integration object of `service`; returns its reference."""
        otype = integ.get("type") or KINDS["integrations"][0]
        iid = integ.get("id") or self.new_id()
        path = f"services/{service['id']}/integrations/{iid}"
        obj = {"id": iid, "type": otype, "summary": integ.get("name") or otype, "name": integ.get("name") or otype,
               "self": f"{API_HOST}/{path}", "html_url": f"{APP_HOST}/{path}",
               "created_at": integ.get("created_at") or _iso(self.now()),
               **{k: copy.deepcopy(v) for k, v in integ.items() if k not in ("id", "type", "summary", "self",
                                                                          "html_url", "created_at", "service")}}
        obj["service"] = {"id": service["id"], "type": "service_reference", "summary": service.get("name"),
                          "self": f"{API_HOST}/services/{service['id']}",
                          "html_url": f"{APP_HOST}/service-directory/{service['id']}"}
        if otype in ("events_api_v2_inbound_integration", "generic_events_api_inbound_integration") \
                and not obj.get("integration_key"):
            obj["integration_key"] = secrets.token_hex(16)
        self.collections["integrations"][iid] = obj
        return {"id": iid, "type": otype + "_reference", "summary": obj["summary"], "self": obj["self"],
                "html_url": obj["html_url"]}

    def sync_user_teams(self, *, adopt: bool = False) -> None:
        """Users' read-only `teams` follow the membership table (team_roles); `adopt` (seeding) first takes
        memberships given as user.teams references into the table."""
        for (tid, uid) in list(self.team_roles):
            if tid not in self.collections["teams"] or uid not in self.collections["users"]:
                del self.team_roles[(tid, uid)]
        for uid, user in self.collections["users"].items():
            mine = [tid for (tid, u) in self.team_roles if u == uid]
            kept = [t for t in user.get("teams") or [] if t.get("id") in self.collections["teams"]
                    and t.get("id") not in mine]
            for t in kept if adopt else ():  # memberships seeded as user.teams references
                self.team_roles.setdefault((t["id"], uid), "manager")
            kept = kept if adopt else []
            user["teams"] = [self.reference("teams", tid) for tid in
                             dict.fromkeys([t["id"] for t in kept] + mine)]

    def seed(self, spec: dict) -> dict:
        """Add fixtures. Each collection takes a list of objects or {"count": N, "name_prefix": "x",
        "team_ids": [...]}; "oncalls" entries take user_id/escalation_policy_id/schedule_id/
        escalation_level/start/end; "incidents" take title/service_id/escalation_policy_id/
        assignee_ids/status; "audit_records" take a list or a count."""
        if not isinstance(spec, dict):
            raise ValueError("seed body must be an object")
        unknown = set(spec) - set(KINDS) - {"oncalls", "audit_records", "replace"}
        if unknown:
            raise ValueError(f"unknown seed keys: {sorted(unknown)}")
        created: dict[str, list[str]] = {}
        with self._lock:
            if spec.get("replace"):
                for coll in set(spec) & set(KINDS):
                    self.collections[coll].clear()
                if "oncalls" in spec:
                    self.oncalls.clear()
                if "audit_records" in spec:
                    self.audit_records.clear()
            for coll in ("teams", "users", "schedules", "escalation_policies", "services", "incidents",
                         "maintenance_windows"):
                if coll not in spec:
                    continue
                items = self._expand(coll, spec[coll])
                ids = created.setdefault(coll, [])
                for item in items:
                    obj = self._build_incident(item) if coll == "incidents" else self._complete(coll, item)
                    self.collections[coll][obj["id"]] = obj
                    ids.append(obj["id"])
            if "oncalls" in spec:
                if not isinstance(spec["oncalls"], list):
                    raise ValueError("'oncalls' must be a list")
                for oc in spec["oncalls"]:
                    self.oncalls.append(self._build_oncall(oc))
                created["oncalls"] = [str(len(spec["oncalls"]))]
            if "audit_records" in spec:
                recs = spec["audit_records"]
                if isinstance(recs, dict):
                    n = recs.get("count")
                    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= 100_000:
                        raise ValueError("'count' must be an integer between 1 and 100000")
                    base = self.now()
                    recs = [{"id": f"PDAUDIT{i:06d}", "execution_time": _iso(base - timedelta(seconds=i)),
                             "method": {"type": "api_token", "truncated_token": "abcd"},
                             "root_resource": {"id": "PSEED00", "type": "service_reference", "summary": "seed"},
                             "action": "update"} for i in range(n)]
                if not isinstance(recs, list):
                    raise ValueError("'audit_records' must be a list or {count}")
                self.audit_records.extend(copy.deepcopy(recs))
                created["audit_records"] = [r.get("id", "") for r in recs]
            self.sync_user_teams(adopt=True)
        return {"created": {k: len(v) if k == "oncalls" else v for k, v in created.items()}}

    def _expand(self, coll: str, spec: Any) -> list[dict]:
        if isinstance(spec, list):
            if not all(isinstance(x, dict) for x in spec):
                raise ValueError(f"'{coll}' items must be objects")
            return spec
        if isinstance(spec, dict):
            n = spec.get("count")
            if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= 100_000:
                raise ValueError(f"'{coll}.count' must be an integer between 1 and 100000")
            prefix = str(spec.get("name_prefix") or KINDS[coll][0].replace("_", " "))
            teams = [self.reference("teams", t) for t in spec.get("team_ids", [])]
            out = []
            for i in range(n):
                item: dict[str, Any] = {"name": f"{prefix} {i:05d}"}
                if coll == "incidents":
                    item = {"title": f"{prefix} {i:05d}", **{k: v for k, v in spec.items()
                                                           if k in ("service_id", "escalation_policy_id", "status")}}
                elif teams:
                    item["teams"] = teams
                if coll == "users":
                    item["email"] = f"{prefix.replace(' ', '.')}.{i:05d}@example.com".lower()
                out.append(item)
            return out
        raise ValueError(f"'{coll}' must be a list of objects or {{\"count\": N}}")

    def _build_oncall(self, oc: Any) -> dict:
        if not isinstance(oc, dict):
            raise ValueError("on-call entries must be objects")
        if "user" in oc:  # already PagerDuty-shaped
            return copy.deepcopy(oc)
        uid, ep = oc.get("user_id"), oc.get("escalation_policy_id")
        if uid not in self.collections["users"] or ep not in self.collections["escalation_policies"]:
            raise ValueError("on-call entries need a known user_id and escalation_policy_id")
        entry = {"user": self.reference("users", uid), "escalation_policy": self.reference("escalation_policies", ep),
                 "schedule": None, "escalation_level": int(oc.get("escalation_level", 1)),
                 "start": oc.get("start"), "end": oc.get("end")}
        sid = oc.get("schedule_id")
        if sid:
            if sid not in self.collections["schedules"]:
                raise ValueError(f"unknown schedule_id {sid!r}")
            entry["schedule"] = self.reference("schedules", sid)
        for k in ("start", "end"):
            if entry[k] is not None and parse_time(entry[k]) is None:
                raise ValueError(f"on-call '{k}' must be an ISO 8601 date/time or null")
        return entry

    def _build_incident(self, spec: dict, requester: dict | None = None) -> dict:
        if spec.get("type") == "incident" and spec.get("id"):  # already PagerDuty-shaped
            return copy.deepcopy(spec)
        now = _iso(self.now())
        self._incident_number += 1
        iid = spec.get("id") or self.new_id()
        title = spec.get("title") or "Incident"
        inc: dict[str, Any] = {
            "id": iid, "type": "incident", "incident_number": self._incident_number, "title": title,
            "summary": f"[#{self._incident_number}] {title}", "status": spec.get("status", "triggered"),
            "urgency": spec.get("urgency", "high"), "created_at": now, "updated_at": now,
            "last_status_change_at": now, "self": f"{API_HOST}/incidents/{iid}",
            "html_url": f"{APP_HOST}/incidents/{iid}", "incident_key": spec.get("incident_key") or uuid.uuid4().hex,
            "assignments": [], "acknowledgements": [], "resolved_at": None, "escalation_level": 1,
            "teams": [], "pending_actions": [], "assigned_via": "escalation_policy",
        }
        if inc["status"] not in ("triggered", "acknowledged", "resolved"):
            raise invalid("incident.status must be triggered, acknowledged or resolved", code=1003,
                          message="Invalid Status Provided")
        sid = spec.get("service_id") or (spec.get("service") or {}).get("id")
        if sid:
            if sid not in self.collections["services"]:
                raise invalid(f"service {sid} not found", code=5002, message="Service Not Found")
            inc["service"] = self.reference("services", sid)
            svc_ep = (self.collections["services"][sid].get("escalation_policy") or {}).get("id")
        else:
            svc_ep = None
        ep = spec.get("escalation_policy_id") or (spec.get("escalation_policy") or {}).get("id") or svc_ep
        if ep:
            if ep not in self.collections["escalation_policies"]:
                raise invalid(f"escalation policy {ep} not found", code=1014, message="Escalation Policy Not Found")
            inc["escalation_policy"] = self.reference("escalation_policies", ep)
        assignees = spec.get("assignee_ids") or []
        if assignees:
            inc["assignments"] = [{"at": now, "assignee": self.reference("users", u)} for u in assignees]
            inc["assigned_via"] = "direct_assignment"
        elif ep:
            inc["assignments"] = [{"at": now, "assignee": self.reference("users", u)}
                                  for u in self._level_users(ep, 1)]
        if requester:
            inc["last_status_change_by"] = requester
        return inc

    # ---- webhooks secret access (tests and later webhook-delivery code) ------------------------
    def webhook_secret(self, subscription_id: str) -> str | None:
        with self._lock:
            return self._webhook_secrets.get(subscription_id)

    # ---- faults -----------------------------------------------------------------------------
    def set_fault(self, spec: dict | list | None = None, **kw: Any) -> dict:
        specs = spec if isinstance(spec, list) else [dict(spec or {}, **kw)]
        parsed = [parse_fault(s) for s in specs]
        with self._lock:
            for f in parsed:
                if f["mode"] == "clear":
                    self._faults.clear()
                    self.rate_limit, self.rate_window_s = DEFAULT_RATE_LIMIT, DEFAULT_RATE_WINDOW_S
                    self._windows.clear()
                elif f["mode"] == "ratelimit":
                    self.rate_limit, self.rate_window_s = f["limit"], f["window_s"]
                    self._windows.clear()
                else:
                    self._faults.append(dict(f))
            return self.faults()

    def faults(self) -> dict:
        with self._lock:
            return {"queue": [dict(f) for f in self._faults],
                    "ratelimit": {"limit": self.rate_limit, "window_s": self.rate_window_s}}

    def take_fault(self, op: Operation, method: str, path: str) -> dict | None:
        with self._lock:
            for f in self._faults:
                if ("operation_id" in f and f["operation_id"] != op.operation_id) or \
                        ("method" in f and f["method"] != method) or ("path" in f and not path.startswith(f["path"])):
                    continue
                f["count"] -= 1
                if f["count"] <= 0:
                    self._faults.remove(f)
                return {k: v for k, v in f.items() if k != "count"}
            return None

    # ---- tokens and rate limits ---------------------------------------------------------------
    def set_tokens(self, valid: Iterable[str] | None = None, read_only: Iterable[str] = (),
                   users: dict[str, str] | None = None) -> None:
        with self._lock:
            self.valid_tokens = None if valid is None else {_token_key(t) for t in valid}
            self.read_only_tokens = {_token_key(t) for t in read_only}
            self.token_users = {_token_key(t): u for t, u in (users or {}).items()}

    def window_reset(self, key: str) -> int:
        with self._lock:
            w = self._windows.get(key)
            now = self.clock()
            if w is None or now >= w[0] + self.rate_window_s:
                return math.ceil(self.rate_window_s)
            return max(0, math.ceil(w[0] + self.rate_window_s - now))

    def consume(self, key: str) -> tuple[bool, int, int, int]:
        """(allowed, limit, remaining, reset seconds) for one request of this token."""
        with self._lock:
            now = self.clock()
            w = self._windows.get(key)
            if w is None or now >= w[0] + self.rate_window_s:
                w = self._windows[key] = [now, 0]
            reset = max(0, math.ceil(w[0] + self.rate_window_s - now))
            if w[1] >= self.rate_limit:
                return False, self.rate_limit, 0, reset
            w[1] += 1
            return True, self.rate_limit, self.rate_limit - int(w[1]), reset

    # ---- request log ------------------------------------------------------------------------
    def record(self, entry: dict) -> dict:
        with self._lock:
            entry["id"] = len(self.requests) + 1
            self.requests.append(entry)
            return entry

    def find_requests(self, operation_id: str | None = None, method: str | None = None,
                      path: str | None = None) -> list[dict]:
        with self._lock:
            return [copy.deepcopy(r) for r in self.requests
                    if (operation_id is None or r.get("operation_id") == operation_id)
                    and (method is None or r.get("method") == method.upper())
                    and (path is None or r.get("path") == path)]

    # ---- helpers used by handlers -------------------------------------------------------------
    def user_by_email(self, email: str) -> dict | None:
        e = email.strip().lower()
        for u in self.collections["users"].values():
            if str(u.get("email", "")).lower() == e:
                return u
        return None

    def _level_users(self, ep_id: str, level: int) -> list[str]:
        ep = self.collections["escalation_policies"].get(ep_id) or {}
        rules = ep.get("escalation_rules") or []
        users: list[str] = []
        if 1 <= level <= len(rules):
            for t in rules[level - 1].get("targets") or []:
                if t.get("type") in ("user_reference", "user") and t.get("id"):
                    users.append(t["id"])
        for oc in self._oncalls_at(self.now(), self.now()):
            if (oc.get("escalation_policy") or {}).get("id") == ep_id and oc.get("escalation_level") == level:
                users.append(oc["user"]["id"])
        return list(dict.fromkeys(users))

    def _oncalls_at(self, since: datetime, until: datetime) -> list[dict]:
        out = []
        for oc in self.oncalls:
            start, end = parse_time(oc.get("start")), parse_time(oc.get("end"))
            if since == until:
                ok = (start is None or start <= since) and (end is None or end > since)
            else:
                ok = (start is None or start < until) and (end is None or end > since)
            if ok:
                out.append(oc)
        return out


# --------------------------------------------------------------------------------------------
# pagination
# --------------------------------------------------------------------------------------------

def _int_param(q: MultiMapping[str], name: str, default: int) -> int:
    v = q.get(name)
    return default if v is None else int(v)  # already validated as integer


def classic_page(items: list[dict], q: MultiMapping[str], wrapper: str) -> dict:
    limit = _int_param(q, "limit", DEFAULT_LIMIT)
    offset = _int_param(q, "offset", 0)
    if limit < 1:
        raise invalid("limit must be at least 1")
    if offset < 0:
        raise invalid("offset must not be negative")
    if offset + limit > PAGINATION_CAP:  # developer docs, Pagination: "cannot exceed 10000 ... status 400"
        raise invalid(f"offset + limit must not exceed {PAGINATION_CAP} (classic pagination); "
                      "narrow the query with filters")
    used = min(limit, MAX_LIMIT)
    page = items[offset:offset + used]
    total = len(items) if q.get("total") in ("true", "1") else None
    return {wrapper: copy.deepcopy(page), "limit": used, "offset": offset,
            "more": offset + len(page) < len(items), "total": total}


def _encode_cursor(pos: int) -> str:
    return base64.urlsafe_b64encode(f"pos:{pos}".encode()).decode()


def cursor_page(items: list[dict], q: MultiMapping[str], wrapper: str) -> dict:
    limit = min(max(1, _int_param(q, "limit", DEFAULT_LIMIT)), MAX_LIMIT)
    pos = 0
    cur = q.get("cursor")
    if cur:
        try:
            tag, _, num = base64.urlsafe_b64decode(cur.encode()).decode().partition(":")
            pos = int(num)
            if tag != "pos" or pos < 0:
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            raise invalid("cursor is not a value returned as next_cursor") from None
    page = items[pos:pos + limit]
    nxt = _encode_cursor(pos + limit) if pos + limit < len(items) else None
    return {wrapper: copy.deepcopy(page), "limit": limit, "next_cursor": nxt}


# --------------------------------------------------------------------------------------------
# handlers: (state, ctx) -> (status, body)
# --------------------------------------------------------------------------------------------

def _name_filter(items: Iterable[dict], q: MultiMapping[str]) -> list[dict]:
    query = (q.get("query") or "").lower()
    out = [o for o in items if not query or query in str(o.get("name") or o.get("summary") or "").lower()]
    team_ids = set(q.getall("team_ids[]", []))
    if team_ids:
        out = [o for o in out if team_ids & {t.get("id") for t in o.get("teams") or []}]
    return out


def _get(state: RestSandboxState, coll: str, ctx: Ctx, label: str) -> tuple[int, dict]:
    obj = state.collections[coll].get(ctx.path_params["id"])
    if obj is None:
        raise not_found(label)
    return 200, {KINDS[coll][0]: copy.deepcopy(obj)}


def h_list_services(state: RestSandboxState, ctx: Ctx) -> tuple[int, dict]:
    items = _name_filter(state.collections["services"].values(), ctx.query)
    if name := ctx.query.get("name"):
        items = [s for s in items if s.get("name") == name]
    sort = ctx.query.get("sort_by", "name")
    items.sort(key=lambda s: (str(s.get("name", "")).lower(), s["id"]), reverse=sort == "name:desc")
    page = classic_page(items, ctx.query, "services")
    _expand_integrations(state, page["services"], ctx.query)
    return 200, page


def h_get_service(state, ctx):
    status, body = _get(state, "services", ctx, "Service")
    _expand_integrations(state, [body["service"]], ctx.query)
    return status, body


def h_list_escalation_policies(state, ctx):
    items = _name_filter(state.collections["escalation_policies"].values(), ctx.query)
    user_ids = set(ctx.query.getall("user_ids[]", []))
    if user_ids:
        items = [e for e in items if any(t.get("id") in user_ids for r in e.get("escalation_rules") or []
                                         for t in r.get("targets") or [])]
    return 200, classic_page(items, ctx.query, "escalation_policies")


def h_get_escalation_policy(state, ctx):
    return _get(state, "escalation_policies", ctx, "Escalation Policy")


def _window(state: RestSandboxState, q: MultiMapping[str]) -> tuple[datetime, datetime]:
    now = state.now()
    since, until = parse_time(q.get("since")), parse_time(q.get("until"))
    if since is None and until is None:
        return now, now
    since = since or now
    until = until or (since + timedelta(days=1))
    if until < since:
        raise invalid("'until' is before 'since'", code=2005, message="Invalid Query Date Range")
    return since, until


def h_list_schedules(state, ctx):
    _window(state, ctx.query)
    items = _name_filter(state.collections["schedules"].values(), ctx.query)
    return 200, classic_page(items, ctx.query, "schedules")


def h_get_schedule(state, ctx):
    status, body = _get(state, "schedules", ctx, "Schedule")
    if "since" in ctx.query or "until" in ctx.query:
        since, until = _window(state, ctx.query)
        sid = ctx.path_params["id"]
        entries = [{"start": oc.get("start"), "end": oc.get("end"), "user": oc["user"]}
                   for oc in state._oncalls_at(since, until) if (oc.get("schedule") or {}).get("id") == sid]
        body["schedule"]["final_schedule"] = {"name": "Final Schedule", "rendered_schedule_entries": entries}
    return status, body


def h_list_oncalls(state, ctx):
    q = ctx.query
    since, until = _window(state, q)
    items = state._oncalls_at(since, until)
    for param, key in (("user_ids[]", "user"), ("escalation_policy_ids[]", "escalation_policy"),
                       ("schedule_ids[]", "schedule")):
        wanted = set(q.getall(param, []))
        if wanted:
            items = [oc for oc in items if (oc.get(key) or {}).get("id") in wanted]
    if q.get("earliest") in ("true", "1"):
        first: dict[tuple, dict] = {}
        for oc in sorted(items, key=lambda o: o.get("start") or ""):
            k = ((oc.get("escalation_policy") or {}).get("id"), oc.get("escalation_level"), oc["user"]["id"])
            first.setdefault(k, oc)
        items = list(first.values())
    items = sorted(items, key=lambda o: ((o.get("escalation_policy") or {}).get("summary") or "",
                                         o.get("escalation_level") or 0, o.get("start") or ""))
    return 200, classic_page(items, q, "oncalls")


def h_list_users(state, ctx):
    query = (ctx.query.get("query") or "").lower()
    items = [u for u in state.collections["users"].values()  # PagerDuty matches names and emails
             if not query or query in str(u.get("name", "")).lower() or query in str(u.get("email", "")).lower()]
    team_ids = set(ctx.query.getall("team_ids[]", []))
    if team_ids:
        items = [u for u in items if team_ids & {t.get("id") for t in u.get("teams") or []}]
    return 200, classic_page(items, ctx.query, "users")


def h_get_user(state, ctx):
    return _get(state, "users", ctx, "User")


def h_get_current_user(state, ctx):
    if ctx.auth != "bearer":
        raise invalid("GET /users/me needs a user-level OAuth token", code=2010, message="Access Denied")
    uid = state.token_users.get(ctx.token_key) or next(iter(state.collections["users"]), None)
    if uid is None or uid not in state.collections["users"]:
        raise not_found("User")
    return 200, {"user": copy.deepcopy(state.collections["users"][uid])}


def h_list_teams(state, ctx):
    return 200, classic_page(_name_filter(state.collections["teams"].values(), ctx.query), ctx.query, "teams")


def h_get_team(state, ctx):
    return _get(state, "teams", ctx, "Team")


def h_list_incidents(state, ctx):
    q = ctx.query
    items = list(state.collections["incidents"].values())
    for param, fn in (("statuses[]", lambda i: i.get("status")),
                      ("service_ids[]", lambda i: (i.get("service") or {}).get("id")),
                      ("urgencies[]", lambda i: i.get("urgency"))):
        wanted = set(q.getall(param, []))
        if wanted:
            items = [i for i in items if fn(i) in wanted]
    if key := q.get("incident_key"):
        items = [i for i in items if i.get("incident_key") == key]
    return 200, classic_page(items, q, "incidents")


def _requester(state: RestSandboxState, ctx: Ctx) -> dict | None:
    if ctx.from_email:
        u = state.user_by_email(ctx.from_email)
        if u is None:
            raise invalid("no user with the email given in From", code=1008, message="Requester User Not Found")
        return state.reference("users", u["id"])
    uid = state.token_users.get(ctx.token_key)
    return state.reference("users", uid) if uid in state.collections["users"] else None


def h_create_incident(state, ctx):
    requester = _requester(state, ctx)
    body = ctx.body["incident"]
    spec = {"title": body.get("title"), "service_id": (body.get("service") or {}).get("id"),
            "escalation_policy_id": (body.get("escalation_policy") or {}).get("id"),
            "urgency": body.get("urgency", "high"), "incident_key": body.get("incident_key"),
            "assignee_ids": [a["assignee"]["id"] for a in body.get("assignments") or []
                             if isinstance(a, dict) and isinstance(a.get("assignee"), dict)]}
    for uid in spec["assignee_ids"]:
        if uid not in state.collections["users"]:
            raise invalid(f"user {uid} not found", code=1007, message="Assigned To User Not Found")
    inc = state._build_incident(spec, requester)
    state.collections["incidents"][inc["id"]] = inc
    return 201, {"incident": copy.deepcopy(inc)}


def h_get_incident(state, ctx):
    return _get(state, "incidents", ctx, "Incident")


def h_update_incident(state, ctx):
    inc = state.collections["incidents"].get(ctx.path_params["id"])
    if inc is None:
        raise not_found("Incident")
    requester = _requester(state, ctx)
    change = ctx.body["incident"]
    now = _iso(state.now())
    status = change.get("status")
    reassign = any(k in change for k in ("assignments", "escalation_level", "escalation_policy"))
    if inc["status"] == "resolved" and (reassign or status in ("acknowledged", "resolved")):
        raise invalid("the incident is resolved", code=1001, message="Incident Already Resolved")
    if status == "triggered" and inc["status"] != "triggered":
        raise invalid("an incident cannot be set back to triggered", code=1003, message="Invalid Status Provided")
    if "escalation_policy" in change:
        ep = change["escalation_policy"]["id"]
        if ep not in state.collections["escalation_policies"]:
            raise invalid(f"escalation policy {ep} not found", code=1014, message="Escalation Policy Not Found")
        inc["escalation_policy"] = state.reference("escalation_policies", ep)
        inc["escalation_level"] = 1
        inc["assignments"] = [{"at": now, "assignee": state.reference("users", u)} for u in state._level_users(ep, 1)]
        inc["assigned_via"] = "escalation_policy"
    if "escalation_level" in change:
        level = change["escalation_level"]
        ep = (inc.get("escalation_policy") or {}).get("id")
        rules = (state.collections["escalation_policies"].get(ep) or {}).get("escalation_rules") or []
        if level < 1 or (rules and level > len(rules)):
            raise invalid(f"escalation level {level} does not exist", code=1006, message="Cannot Escalate")
        inc["escalation_level"] = level
        if ep:
            inc["assignments"] = [{"at": now, "assignee": state.reference("users", u)}
                                  for u in state._level_users(ep, level)]
        inc["assigned_via"] = "escalation_policy"
    if "assignments" in change:
        users = [a["assignee"]["id"] for a in change["assignments"]]
        for uid in users:
            if uid not in state.collections["users"]:
                raise invalid(f"user {uid} not found", code=1007, message="Assigned To User Not Found")
        inc["assignments"] = [{"at": now, "assignee": state.reference("users", u)} for u in users]
        inc["assigned_via"] = "direct_assignment"
    if reassign and inc["status"] == "acknowledged" and status is None:
        inc["status"] = "triggered"  # reassigning un-acknowledges
        inc["acknowledgements"] = []
    if status == "acknowledged":
        inc["status"] = "acknowledged"
        inc["acknowledgements"] = [{"at": now, "acknowledger": requester}] if requester else inc.get("acknowledgements", [])
    elif status == "resolved":
        inc["status"] = "resolved"
        inc["resolved_at"] = now
        inc["pending_actions"] = []
        if change.get("resolution"):
            state.notes.setdefault(inc["id"], []).append(
                {"id": state.new_id(), "user": requester, "content": change["resolution"],
                 "created_at": now, "updated_at": now, "channel": {"summary": "The PagerDuty website or APIs"}})
    for k in ("title", "urgency"):
        if k in change:
            inc[k] = change[k]
    if status or reassign:
        inc["last_status_change_at"] = now
        if requester:
            inc["last_status_change_by"] = requester
    inc["updated_at"] = now
    return 200, {"incident": copy.deepcopy(inc)}


def h_list_notes(state, ctx):
    if ctx.path_params["id"] not in state.collections["incidents"]:
        raise not_found("Incident")
    return 200, {"notes": copy.deepcopy(state.notes.get(ctx.path_params["id"], []))}


def h_create_note(state, ctx):
    iid = ctx.path_params["id"]
    if iid not in state.collections["incidents"]:
        raise not_found("Incident")
    requester = _requester(state, ctx)
    content = ctx.body["note"]["content"]
    if not content.strip():
        raise invalid("note.content must not be blank")
    now = _iso(state.now())
    note = {"id": state.new_id(), "user": requester, "channel": {"summary": "The PagerDuty website or APIs"},
            "content": content, "created_at": now, "updated_at": now}
    state.notes.setdefault(iid, []).append(note)
    return 200, {"note": copy.deepcopy(note)}  # the spec documents 200 for createIncidentNote


def _public_webhook(w: dict) -> dict:
    out = copy.deepcopy(w)
    dm = out.get("delivery_method") or {}
    dm["secret"] = None
    for h in dm.get("custom_headers") or []:
        h["value"] = "-- redacted --"
    return out


def h_list_webhooks(state, ctx):
    q = ctx.query
    items = list(state.webhooks.values())
    if ft := q.get("filter_type"):
        items = [w for w in items if (w.get("filter") or {}).get("type") == f"{ft}_reference"]
    if fid := q.get("filter_id"):
        items = [w for w in items if (w.get("filter") or {}).get("id") == fid]
    return 200, classic_page([_public_webhook(w) for w in items], q, "webhook_subscriptions")


def h_create_webhook(state, ctx):
    sub = ctx.body["webhook_subscription"]
    errors = []
    flt = sub["filter"]
    if flt["type"] != "account_reference":
        coll = "services" if flt["type"] == "service_reference" else "teams"
        if not flt.get("id"):
            errors.append(f"filter.id is required for {flt['type']} filters")
        elif flt["id"] not in state.collections[coll]:
            errors.append(f"filter.id {flt['id']} is not a known {coll[:-1]}")
    if state.event_types:
        bad = [e for e in sub["events"] if e not in state.event_types]
        if bad:
            errors.append(f"unknown event types: {', '.join(map(str, bad))[:300]}")
    url = sub["delivery_method"]["url"]
    if not re.match(r"^https?://[^/\s]+", url):
        errors.append("delivery_method.url must be an http(s) URL")
    if errors:
        raise invalid(*errors)
    wid = state.new_id()
    secret = base64.b64encode(secrets.token_bytes(48)).decode()  # 64 characters
    w = {"id": wid, "type": "webhook_subscription", "active": sub.get("active", True),
         "description": sub.get("description"), "events": list(sub["events"]), "filter": copy.deepcopy(flt),
         "delivery_method": {"id": state.new_id(), "type": "http_delivery_method", "url": url,
                             "custom_headers": copy.deepcopy(sub["delivery_method"].get("custom_headers") or []),
                             "temporarily_disabled": False, "secret": None}}
    state.webhooks[wid] = w
    state._webhook_secrets[wid] = secret
    out = copy.deepcopy(w)
    out["delivery_method"]["secret"] = secret  # "Only provided on the initial create response"
    return 200, {"webhook_subscription": out}  # the spec documents 200 for createWebhookSubscription


def h_get_webhook(state, ctx):
    w = state.webhooks.get(ctx.path_params["id"])
    if w is None:
        raise not_found("Webhook")
    return 200, {"webhook_subscription": _public_webhook(w)}


def h_delete_webhook(state, ctx):
    wid = ctx.path_params["id"]
    if state.webhooks.pop(wid, None) is None:
        raise not_found("Webhook")
    state._webhook_secrets.pop(wid, None)
    return 204, None


def h_list_audit_records(state, ctx):
    q = ctx.query
    since, until = parse_time(q.get("since")), parse_time(q.get("until"))
    if since and until and until < since:
        raise invalid("'until' is before 'since'", code=2005, message="Invalid Query Date Range")
    items = [r for r in state.audit_records
             if (since is None or (parse_time(r.get("execution_time")) or since) >= since)
             and (until is None or (parse_time(r.get("execution_time")) or until) <= until)]
    items.sort(key=lambda r: r.get("execution_time") or "", reverse=True)
    return 200, cursor_page(items, q, "records")


# ---- account configuration (users, teams, schedules, escalation policies, services, integrations,
# maintenance windows): what `pagerstream pagerduty apply` writes. Bodies were validated against the spec
# before a handler runs; these add the referential rules PagerDuty states in the spec's descriptions:
# an escalation policy "must not be in use by any services" to be deleted; a team is removed "only if the
# team has no associated Escalation Policies, Services, Schedules"; a maintenance window that "has already
# ended ... cannot be deleted" (405), an ongoing one is ended. Stricter than PagerDuty (undocumented
# there): a schedule used by an escalation policy and a user named in a schedule layer or escalation rule
# cannot be deleted (400), and team, service and escalation-policy names must be unique. A schedule POST/PUT
# lists Layer 1 first; GET returns the layers in reverse (docs/oncall.md, rule R4), and so does the sandbox.

def _taken(state: RestSandboxState, coll: str, field_name: str, value: Any, own_id: str | None = None) -> None:
    for o in state.collections[coll].values():
        if o["id"] != own_id and str(o.get(field_name, "")).lower() == str(value).lower():
            raise invalid(f"{KINDS[coll][0].replace('_', ' ')} {field_name} '{value}' has already been taken")


def _known(state: RestSandboxState, coll: str, ref: Any, label: str) -> dict:
    oid = (ref or {}).get("id") if isinstance(ref, dict) else None
    if not oid or oid not in state.collections[coll]:
        raise invalid(f"{label} {oid or '(no id)'} not found")
    return state.reference(coll, oid)


def _found(state: RestSandboxState, coll: str, oid: str, label: str) -> dict:
    obj = state.collections[coll].get(oid)
    if obj is None:
        raise not_found(label)
    return obj


def _user_fields(state: RestSandboxState, body: dict, own_id: str | None) -> dict:
    _taken(state, "users", "email", body["email"], own_id)
    out = {k: copy.deepcopy(body[k]) for k in ("name", "email", "time_zone", "color", "role", "description",
                                               "job_title") if k in body}
    out["summary"] = body["name"]
    return out


def h_create_user(state, ctx):
    _requester(state, ctx)
    u = state._complete("users", {**_user_fields(state, ctx.body["user"], None), "time_zone": "Etc/UTC",
                                  **{k: v for k, v in ctx.body["user"].items() if k == "time_zone"}})
    u.setdefault("contact_methods", [])
    u.setdefault("notification_rules", [])
    state.collections["users"][u["id"]] = u
    return 201, {"user": copy.deepcopy(u)}


def h_update_user(state, ctx):
    u = _found(state, "users", ctx.path_params["id"], "User")
    u.update(_user_fields(state, ctx.body["user"], u["id"]))
    return 200, {"user": copy.deepcopy(u)}


def h_delete_user(state, ctx):
    uid = ctx.path_params["id"]
    _found(state, "users", uid, "User")
    uses = [f"schedule {s['id']}" for s in state.collections["schedules"].values()
            if any(_user_id_of(x) == uid for lay in s.get("schedule_layers") or [] for x in lay.get("users") or [])]
    uses += [f"escalation policy {e['id']}" for e in state.collections["escalation_policies"].values()
             if any(t.get("id") == uid and t.get("type") in ("user", "user_reference")
                    for r in e.get("escalation_rules") or [] for t in r.get("targets") or [])]
    if uses:
        raise invalid(f"user {uid} is still on {', '.join(uses)}")
    del state.collections["users"][uid]
    state.sync_user_teams()
    return 204, None


def _user_id_of(entry: Any) -> str | None:
    if isinstance(entry, dict):
        return (entry.get("user") or {}).get("id") if isinstance(entry.get("user"), dict) else entry.get("id")
    return None


def h_create_team(state, ctx):
    body = ctx.body["team"]
    _taken(state, "teams", "name", body["name"])
    t = state._complete("teams", {k: copy.deepcopy(body[k]) for k in ("name", "description", "default_role")
                                  if k in body})
    state.collections["teams"][t["id"]] = t
    return 201, {"team": copy.deepcopy(t)}


def h_update_team(state, ctx):
    t = _found(state, "teams", ctx.path_params["id"], "Team")
    body = ctx.body["team"]
    _taken(state, "teams", "name", body["name"], t["id"])
    t.update({k: copy.deepcopy(body[k]) for k in ("name", "description", "default_role") if k in body})
    t["summary"] = t["name"]
    return 200, {"team": copy.deepcopy(t)}


def h_delete_team(state, ctx):
    tid = ctx.path_params["id"]
    _found(state, "teams", tid, "Team")
    uses = [f"{KINDS[c][0].replace('_', ' ')} {o['id']}" for c in ("escalation_policies", "services", "schedules")
            for o in state.collections[c].values() if any(x.get("id") == tid for x in o.get("teams") or [])]
    if uses:
        raise invalid(f"team {tid} still has {', '.join(uses)}")
    del state.collections["teams"][tid]
    state.sync_user_teams()
    return 204, None


def h_list_team_members(state, ctx):
    tid = ctx.path_params["id"]
    _found(state, "teams", tid, "Team")
    state.sync_user_teams()
    members = [{"user": state.reference("users", uid), "role": role}
               for (t, uid), role in sorted(state.team_roles.items()) if t == tid]
    return 200, classic_page(members, ctx.query, "members")


def h_put_team_user(state, ctx):
    tid, uid = ctx.path_params["id"], ctx.path_params["user_id"]
    _found(state, "teams", tid, "Team")
    _found(state, "users", uid, "User")
    state.team_roles[(tid, uid)] = (ctx.body or {}).get("role") or "manager"
    state.sync_user_teams()
    return 204, None


def h_delete_team_user(state, ctx):
    tid, uid = ctx.path_params["id"], ctx.path_params["user_id"]
    _found(state, "teams", tid, "Team")
    if state.team_roles.pop((tid, uid), None) is None:
        raise not_found("Team member")
    state.sync_user_teams()
    return 204, None


def _schedule_fields(state: RestSandboxState, body: dict, old: dict | None) -> dict:
    old_layer_ids = {lay.get("id") for lay in (old or {}).get("schedule_layers") or []}
    layers = []
    for i, lay in enumerate(body.get("schedule_layers") or []):
        start, rvs = parse_time(lay["start"]), parse_time(lay["rotation_virtual_start"])
        end = parse_time(lay.get("end")) if lay.get("end") else None
        if lay["rotation_turn_length_seconds"] <= 0:
            raise invalid(f"schedule_layers.{i}.rotation_turn_length_seconds must be positive")
        if end is not None and start is not None and end <= start:
            raise invalid(f"schedule_layers.{i}.end must be after its start")
        if not lay["users"]:
            raise invalid(f"schedule_layers.{i}.users must not be empty")
        del rvs
        out = {k: copy.deepcopy(lay[k]) for k in ("start", "end", "rotation_virtual_start",
                                                   "rotation_turn_length_seconds", "restrictions") if k in lay}
        out["id"] = lay["id"] if lay.get("id") in old_layer_ids else state.new_id()
        out["name"] = lay.get("name") or f"Layer {i + 1}"
        out.setdefault("end", None)
        out.setdefault("restrictions", [])
        out["users"] = [{"user": _known(state, "users", u["user"], "user")} for u in lay["users"]]
        layers.append(out)
    layers.reverse()  # GET order: the highest layer first
    users = list(dict.fromkeys(u["user"]["id"] for lay in layers for u in lay["users"]))
    out = {"time_zone": body["time_zone"], "schedule_layers": layers,
           "users": [state.reference("users", u) for u in users]}
    for k in ("name", "description"):
        if k in body:
            out[k] = body[k]
    return out


def h_create_schedule(state, ctx):
    s = state._complete("schedules", _schedule_fields(state, ctx.body["schedule"], None))
    s.setdefault("escalation_policies", [])
    state.collections["schedules"][s["id"]] = s
    return 201, {"schedule": copy.deepcopy(s)}


def h_update_schedule(state, ctx):
    s = _found(state, "schedules", ctx.path_params["id"], "Schedule")
    s.update(_schedule_fields(state, ctx.body["schedule"], s))
    s["summary"] = s.get("name") or s["id"]
    return 200, {"schedule": copy.deepcopy(s)}


def h_delete_schedule(state, ctx):
    sid = ctx.path_params["id"]
    _found(state, "schedules", sid, "Schedule")
    eps = [e["id"] for e in state.collections["escalation_policies"].values()
           if any(t.get("id") == sid and t.get("type") in ("schedule", "schedule_reference")
                  for r in e.get("escalation_rules") or [] for t in r.get("targets") or [])]
    if eps:
        raise invalid(f"schedule {sid} is used by escalation policies {', '.join(eps)}")
    del state.collections["schedules"][sid]
    return 204, None


def _policy_fields(state: RestSandboxState, body: dict, own_id: str | None) -> dict:
    _taken(state, "escalation_policies", "name", body["name"], own_id)
    rules = []
    for i, r in enumerate(body["escalation_rules"]):
        if not r["targets"]:
            raise invalid(f"escalation_rules.{i}.targets must not be empty")
        targets = []
        for t in r["targets"]:
            kind = str(t.get("type", "")).replace("_reference", "")
            if kind not in ("user", "schedule"):
                raise invalid(f"escalation_rules.{i}: target type {t.get('type')} is not supported by the sandbox")
            targets.append(_known(state, kind + "s", t, kind))
        rule = {"id": state.new_id(), "escalation_delay_in_minutes": r["escalation_delay_in_minutes"],
                "targets": targets}
        if "escalation_rule_assignment_strategy" in r:
            rule["escalation_rule_assignment_strategy"] = r["escalation_rule_assignment_strategy"]
        rules.append(rule)
    out = {"name": body["name"], "summary": body["name"], "escalation_rules": rules,
           "teams": [_known(state, "teams", t, "team") for t in body.get("teams") or []]}
    for k in ("description", "num_loops", "on_call_handoff_notifications"):
        if k in body:
            out[k] = body[k]
    return out


def h_create_escalation_policy(state, ctx):
    e = state._complete("escalation_policies", _policy_fields(state, ctx.body["escalation_policy"], None))
    e.setdefault("on_call_handoff_notifications", "if_has_services")
    e.setdefault("services", [])
    state.collections["escalation_policies"][e["id"]] = e
    return 201, {"escalation_policy": copy.deepcopy(e)}


def h_update_escalation_policy(state, ctx):
    e = _found(state, "escalation_policies", ctx.path_params["id"], "Escalation Policy")
    e.update(_policy_fields(state, ctx.body["escalation_policy"], e["id"]))
    for s in state.collections["services"].values():  # services show the teams of their policy
        if (s.get("escalation_policy") or {}).get("id") == e["id"]:
            s["teams"] = copy.deepcopy(e["teams"])
    return 200, {"escalation_policy": copy.deepcopy(e)}


def h_delete_escalation_policy(state, ctx):
    eid = ctx.path_params["id"]
    _found(state, "escalation_policies", eid, "Escalation Policy")
    svcs = [s["id"] for s in state.collections["services"].values()
            if (s.get("escalation_policy") or {}).get("id") == eid]
    if svcs:
        raise invalid(f"escalation policy {eid} is in use by services {', '.join(svcs)}")
    del state.collections["escalation_policies"][eid]
    return 204, None


_SERVICE_FIELDS = ("name", "description", "auto_resolve_timeout", "acknowledgement_timeout", "status",
                   "incident_urgency_rule", "support_hours", "scheduled_actions", "alert_creation",
                   "alert_grouping_parameters", "alert_grouping", "alert_grouping_timeout",
                   "auto_pause_notifications_parameters")


def _service_fields(state: RestSandboxState, body: dict, own_id: str | None) -> dict:
    out = {k: copy.deepcopy(body[k]) for k in _SERVICE_FIELDS if k in body}
    if "name" in out:
        _taken(state, "services", "name", out["name"], own_id)
        out["summary"] = out["name"]
    ep = _known(state, "escalation_policies", body["escalation_policy"], "escalation policy")
    out["escalation_policy"] = ep
    out["teams"] = copy.deepcopy(state.collections["escalation_policies"][ep["id"]].get("teams") or [])
    return out


def h_create_service(state, ctx):
    s = state._complete("services", {"status": "active", "created_at": _iso(state.now()), "integrations": [],
                                     **_service_fields(state, ctx.body["service"], None)})
    state.collections["services"][s["id"]] = s
    return 201, {"service": copy.deepcopy(s)}


def h_update_service(state, ctx):
    s = _found(state, "services", ctx.path_params["id"], "Service")
    s.update(_service_fields(state, ctx.body["service"], s["id"]))
    return 200, {"service": copy.deepcopy(s)}


def h_delete_service(state, ctx):
    sid = ctx.path_params["id"]
    svc = _found(state, "services", sid, "Service")
    for ref in svc.get("integrations") or []:
        state.collections["integrations"].pop(ref.get("id"), None)
    for mw in state.collections["maintenance_windows"].values():
        mw["services"] = [r for r in mw.get("services") or [] if r.get("id") != sid]
    del state.collections["services"][sid]
    return 204, None


def _expand_integrations(state: RestSandboxState, services: Iterable[dict], q: MultiMapping[str]) -> None:
    if "integrations" in q.getall("include[]", []):
        for s in services:
            s["integrations"] = [copy.deepcopy(state.collections["integrations"].get(r.get("id"), r))
                                 for r in s.get("integrations") or []]


_INTEGRATION_FIELDS = ("name", "vendor", "integration_email", "email_incident_creation", "email_filter_mode",
                       "email_parsers", "email_parsing_fallback", "email_filters")


def h_create_integration(state, ctx):
    svc = _found(state, "services", ctx.path_params["id"], "Service")
    body = ctx.body["integration"]
    integ = {k: copy.deepcopy(body[k]) for k in _INTEGRATION_FIELDS if k in body}
    integ["type"] = body.get("type") or "generic_events_api_inbound_integration"
    if integ["type"] == "generic_email_inbound_integration" and not integ.get("integration_email"):
        raise invalid("integration.integration_email is required for email integrations")
    ref = state._store_integration(svc, integ)
    svc.setdefault("integrations", []).append(ref)
    return 201, {"integration": copy.deepcopy(state.collections["integrations"][ref["id"]])}


def _integration(state: RestSandboxState, ctx: Ctx) -> dict:
    svc = _found(state, "services", ctx.path_params["id"], "Service")
    iid = ctx.path_params["integration_id"]
    if iid not in {r.get("id") for r in svc.get("integrations") or []} or iid not in state.collections["integrations"]:
        raise not_found("Integration")
    return state.collections["integrations"][iid]


def h_get_integration(state, ctx):
    return 200, {"integration": copy.deepcopy(_integration(state, ctx))}


def h_update_integration(state, ctx):
    integ = _integration(state, ctx)
    body = ctx.body["integration"]
    if body.get("type") and body["type"] != integ["type"]:
        raise invalid("integration.type cannot be changed")
    integ.update({k: copy.deepcopy(body[k]) for k in _INTEGRATION_FIELDS if k in body})
    integ["summary"] = integ.get("name") or integ["type"]
    for svc in state.collections["services"].values():
        for r in svc.get("integrations") or []:
            if r.get("id") == integ["id"]:
                r["summary"] = integ["summary"]
    return 200, {"integration": copy.deepcopy(integ)}


def _mw_state(state: RestSandboxState, mw: dict) -> str:
    now = state.now()
    start, end = parse_time(mw.get("start_time")), parse_time(mw.get("end_time"))
    if end is not None and end <= now:
        return "past"
    return "ongoing" if start is not None and start <= now else "future"


def h_list_maintenance_windows(state, ctx):
    q = ctx.query
    items = list(state.collections["maintenance_windows"].values())
    flt = q.get("filter") or "all"
    wanted = {"open": {"ongoing", "future"}, "all": {"past", "ongoing", "future"}}.get(flt, {flt})
    items = [m for m in items if _mw_state(state, m) in wanted]
    if sids := set(q.getall("service_ids[]", [])):
        items = [m for m in items if sids & {r.get("id") for r in m.get("services") or []}]
    if tids := set(q.getall("team_ids[]", [])):
        items = [m for m in items if tids & {r.get("id") for r in m.get("teams") or []}]
    if query := (q.get("query") or "").lower():
        items = [m for m in items if query in str(m.get("description") or "").lower()]
    items.sort(key=lambda m: (m.get("start_time") or "", m["id"]))
    return 200, classic_page(items, q, "maintenance_windows")


def _mw_fields(state: RestSandboxState, body: dict) -> dict:
    start, end = parse_time(body["start_time"]), parse_time(body["end_time"])
    if start is None or end is None or end <= start:
        raise invalid("maintenance_window.end_time must be after start_time")
    if not body["services"]:
        raise invalid("maintenance_window.services must name at least one service")
    services = [_known(state, "services", s, "service") for s in body["services"]]
    teams = {t["id"]: t for s in services for t in state.collections["services"][s["id"]].get("teams") or []}
    out = {"start_time": body["start_time"], "end_time": body["end_time"], "services": services,
           "teams": list(teams.values())}
    if "description" in body:
        out["description"] = body["description"]
        out["summary"] = body["description"]
    return out


def h_create_maintenance_window(state, ctx):
    requester = _requester(state, ctx)
    mw = state._complete("maintenance_windows", {**_mw_fields(state, ctx.body["maintenance_window"]),
                                                 "sequence_number": len(state.collections["maintenance_windows"]) + 1,
                                                 "created_by": requester})
    state.collections["maintenance_windows"][mw["id"]] = mw
    return 201, {"maintenance_window": copy.deepcopy(mw)}


def h_get_maintenance_window(state, ctx):
    return _get(state, "maintenance_windows", ctx, "Maintenance Window")


def h_update_maintenance_window(state, ctx):
    mw = _found(state, "maintenance_windows", ctx.path_params["id"], "Maintenance Window")
    if _mw_state(state, mw) == "past":
        raise invalid("a maintenance window that has ended cannot be changed")
    mw.update(_mw_fields(state, ctx.body["maintenance_window"]))
    return 200, {"maintenance_window": copy.deepcopy(mw)}


def h_delete_maintenance_window(state, ctx):
    mid = ctx.path_params["id"]
    mw = _found(state, "maintenance_windows", mid, "Maintenance Window")
    phase = _mw_state(state, mw)
    if phase == "past":
        raise ApiError(405, 2001, "The maintenance window can't be deleted because it has already ended")
    if phase == "ongoing":
        mw["end_time"] = _iso(state.now())
    else:
        del state.collections["maintenance_windows"][mid]
    return 204, None


HANDLERS: dict[str, Callable[[RestSandboxState, Ctx], tuple[int, Any]]] = {
    name: globals()[f"h_{name}"] for name in set(IMPLEMENTED.values())
}


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------

REST_STATE_KEY = web.AppKey("pd_rest_sandbox_state", RestSandboxState)


def rest_state(app: web.Application) -> RestSandboxState:
    return app[REST_STATE_KEY]


def _json_response(status: int, body: Any, headers: dict[str, str]) -> web.Response:
    if body is None:
        return web.Response(status=status, headers=headers)
    return web.json_response(body, status=status, headers=headers, dumps=lambda o: json.dumps(o, default=str))


def _authorize(state: RestSandboxState, header: str | None) -> tuple[str, str, str]:
    """(auth kind, token key, masked header) or ApiError 401."""
    if not header:
        raise ApiError(401, 2006, "Authentication failed", ["Authorization header is missing"])
    m = _AUTH_RE.match(header.strip())
    if not m:
        raise ApiError(401, 2006, "Authentication failed",
                       ["Authorization header must be 'Token token=<API key>' or 'Bearer <OAuth token>'"])
    token = m.group("token") or m.group("bearer")
    kind = "token" if m.group("token") else "bearer"
    key = _token_key(token)
    masked = ("Token token=" if kind == "token" else "Bearer ") + mask_token(token)
    if state.valid_tokens is not None and key not in state.valid_tokens:
        raise ApiError(401, 2006, "Authentication failed", ["Unknown API token"])
    return kind, key, masked


def _check_headers(op: Operation, request: web.Request, auth: str) -> list[str]:
    errors = []
    for p in op.params:
        if p.location != "header" or p.name.lower() == "authorization":
            continue
        value = request.headers.get(p.name)
        name = p.name.lower()
        if value is None:
            if p.required and not (name == "from" and auth == "bearer"):
                errors.append(f"Missing required header '{p.name}'")
            continue
        if name == "accept":
            if "".join(value.split()).lower() != ACCEPT:
                errors.append(f"Accept header must be '{ACCEPT}'")
        elif name == "content-type":
            if value.split(";")[0].strip().lower() != "application/json":
                errors.append("Content-Type header must be 'application/json'")
        elif name == "from" and not _EMAIL_RE.match(value.strip()):
            errors.append("From header must be the email address of a user")
    return errors


def _entry_headers(request: web.Request, masked_auth: str | None) -> dict[str, str | None]:
    h = {k: request.headers.get(k) for k in ("Accept", "Content-Type", "From", "User-Agent")}
    h["Authorization"] = masked_auth if masked_auth is not None else ("<malformed>" if "Authorization" in request.headers else None)
    return h


async def _handle(request: web.Request) -> web.StreamResponse:
    state = rest_state(request.app)
    entry = state.record({"time": state.wallclock(), "t": state.clock(), "method": request.method,
                          "path": request.path, "query": [[k, v] for k, v in request.query.items()],
                          "operation_id": None, "auth": None, "headers": {}, "body": None, "status": None,
                          "errors": [], "fault": None, "ratelimit": None})
    headers: dict[str, str] = {"x-request-id": uuid.uuid4().hex}
    try:
        status, body = await _process(request, state, entry, headers)
    except ApiError as e:
        status, body = e.status, e.body()
        entry["errors"] = e.errors or [e.message]
    entry["status"] = status
    entry["responded_t"] = state.clock()
    log.info("REST %s %s -> %s%s%s", request.method, request.path, status,
             f" op={entry['operation_id']}" if entry["operation_id"] else "",
             f" fault={entry['fault']}" if entry["fault"] else "")
    if isinstance(body, web.StreamResponse):
        return body
    return _json_response(status, body, headers)


async def _process(request: web.Request, state: RestSandboxState, entry: dict,
                   headers: dict[str, str]) -> tuple[int, Any]:
    op, path_params, other = state.spec.match(request.method, request.path)
    if op is None:
        entry["headers"] = _entry_headers(request, None)
        raise ApiError(404, 2100, "Not Found",
                       [f"{request.method} is not allowed on {request.path}"] if other else [])
    entry["operation_id"] = op.operation_id
    try:
        kind, key, masked = _authorize(state, request.headers.get("Authorization"))
    except ApiError:
        entry["headers"] = _entry_headers(request, None)
        raise
    entry["headers"] = _entry_headers(request, masked)
    entry["auth"] = kind

    fault = state.take_fault(op, request.method, request.path)
    if fault and fault["mode"] == "slow":
        entry["fault"] = "slow"
        await asyncio.sleep(fault["delay_ms"] / 1000.0)
    elif fault and fault["mode"] == "429":
        entry["fault"] = "429" if fault["headers"] else "429-no-headers"
        if not fault["headers"]:  # "exceptional scenarios ... without the rate limit headers or the body"
            return 429, web.Response(status=429, text="429 Too Many Requests", headers=headers)
        reset = fault["reset"] if fault["reset"] is not None else state.window_reset(key)
        headers.update({"ratelimit-limit": str(state.rate_limit), "ratelimit-remaining": "0",
                        "ratelimit-reset": str(reset)})
        entry["ratelimit"] = {k: headers[k] for k in ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")}
        raise ApiError(429, 2020, "Rate Limit Exceeded")
    elif fault:
        code = int(fault["mode"])
        entry["fault"] = fault["mode"]
        if fault["body"] == "plain":
            return code, web.Response(status=code, text=f"{code} Server Error", headers=headers)
        raise ApiError(code, 2000, "An internal error has occurred. PagerDuty team has been notified.",
                       ["Sandbox injected fault"])

    allowed, limit, remaining, reset = state.consume(key)
    headers.update({"ratelimit-limit": str(limit), "ratelimit-remaining": str(remaining),
                    "ratelimit-reset": str(reset)})
    entry["ratelimit"] = {"limit": limit, "remaining": remaining, "reset": reset}
    if not allowed:
        entry["fault"] = "rate"
        raise ApiError(429, 2020, "Rate Limit Exceeded")

    errors = _check_headers(op, request, kind)
    if errors and any(e.startswith("Missing required header 'From'") for e in errors):
        raise ApiError(400, 2011, "You must specify a requester_id to perform this action", errors)
    errors += state.spec.check_query(op, request.query)
    body: Any = None
    raw = await request.read()
    if op.body_validator is not None:
        if not raw:
            if op.body_required:
                errors.append("Request body is missing")
        else:
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                errors.append(f"Request body is not valid JSON ({type(e).__name__})")
            else:
                entry["body"] = body
                errors += state.spec.check_body(op, body)
    if errors:
        raise invalid(*errors)
    if request.method != "GET" and key in state.read_only_tokens:
        raise ApiError(403, 2010, "Access Denied", ["This API token is read-only"])

    handler_name = IMPLEMENTED.get((op.method, op.path))
    if handler_name is None:
        raise ApiError(501, None, f"{op.operation_id} is not implemented by the sandbox")
    ctx = Ctx(op, path_params, request.query, body, kind, key,
              (request.headers.get("From") or "").strip() or None)
    with state._lock:
        return HANDLERS[handler_name](state, ctx)


# ---- sandbox control endpoints ------------------------------------------------------------------

async def _get_requests(request: web.Request) -> web.Response:
    q = request.query
    items = rest_state(request.app).find_requests(q.get("operation_id"), q.get("method"), q.get("path"))
    return web.json_response({"count": len(items), "requests": items}, dumps=lambda o: json.dumps(o, default=str))


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(rest_state(request.app).faults())


async def _post_faults(request: web.Request) -> web.Response:
    try:
        faults = rest_state(request.app).set_fault(json.loads(await request.text()))
    except (ValueError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    log.info("REST faults set: %s", faults)
    return web.json_response(faults)


async def _post_seed(request: web.Request) -> web.Response:
    try:
        out = rest_state(request.app).seed(json.loads(await request.text()))
    except ApiError as exc:
        return web.json_response(exc.body(), status=400)
    except (ValueError, TypeError, KeyError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(out)


async def _tokens(request: web.Request) -> web.Response:
    state = rest_state(request.app)
    if request.method == "POST":
        try:
            spec = json.loads(await request.text())
            if not isinstance(spec, dict):
                raise ValueError("expected an object")
            state.set_tokens(spec.get("valid"), spec.get("read_only") or (), spec.get("users"))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({"restricted": state.valid_tokens is not None,
                              "valid": len(state.valid_tokens or ()), "read_only": len(state.read_only_tokens)})


async def _post_reset(request: web.Request) -> web.Response:
    examples = request.query.get("examples", "true").lower() not in ("false", "0", "no")
    rest_state(request.app).reset(seed_examples=examples)
    return web.json_response({"status": "reset", "examples": examples})


_SPECS: dict[tuple[str, float], RestSpec] = {}
_SPECS_LOCK = threading.Lock()


def _cached_spec(path: str | Path) -> RestSpec:
    """Parsed specs are read-only, so apps built from the same file share one."""
    f = _spec_file(path)
    if not f.is_file():
        load_rest_spec(path)  # raises SpecNotFoundError with the explanation
    key = (str(f.resolve()), f.stat().st_mtime)
    with _SPECS_LOCK:
        if key not in _SPECS:
            _SPECS[key] = RestSpec(load_rest_spec(f))
        return _SPECS[key]


def add_rest_routes(app: web.Application, *, contracts_dir: str | Path | None = None,
                    spec_path: str | Path | None = None, seed_examples: bool = True,
                    clock: Callable[[], float] = time.monotonic,
                    wallclock: Callable[[], float] = time.time) -> RestSandboxState:
    """Mount the REST API stand-in on `app` (before it starts). Fails fast if the spec is missing."""
    cdir = Path(contracts_dir).expanduser() if contracts_dir else default_contracts_dir()
    spec = _cached_spec(spec_path or cdir)
    examples = cdir / EXAMPLES_RELPATH
    event_types: list[str] = []
    et = cdir / EVENT_TYPES_RELPATH
    if et.is_file():
        event_types = [e["event_type"] for e in json.loads(et.read_text(encoding="utf-8")).get("event_types", [])]
    state = RestSandboxState(spec, examples if examples.is_dir() else None, event_types,
                             seed_examples=seed_examples, clock=clock, wallclock=wallclock)
    app[REST_STATE_KEY] = state
    by_path: dict[str, None] = {}
    for method, path in IMPLEMENTED:
        if (method, path) not in {(o.method, o.path) for o in spec.operations}:
            raise ValueError(f"{method} {path} is not an operation of the REST spec")
        by_path[path] = None
    # literal segments first, so that /users/me is not taken by /users/{id}
    for path in sorted(by_path, key=lambda p: (p.count("{"), p)):
        app.router.add_route("*", path, _handle)
    app.router.add_get("/sandbox/rest/requests", _get_requests)
    app.router.add_get("/sandbox/rest/faults", _get_faults)
    app.router.add_post("/sandbox/rest/faults", _post_faults)
    app.router.add_post("/sandbox/rest/seed", _post_seed)
    app.router.add_route("*", "/sandbox/rest/tokens", _tokens)
    app.router.add_post("/sandbox/rest/reset", _post_reset)
    return state
