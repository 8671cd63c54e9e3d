"""Local stand-ins for Jira Cloud (REST API v3) and ServiceNow (Table API), for tests and local runs.

Both are aiohttp apps that keep their data in memory, record every request (credentials masked) and
check the documented request shapes, answering errors in each product's own error format. They are
stricter than the real services where that catches client mistakes (unknown ServiceNow fields are
refused instead of ignored).

Jira (`make_jira_app`):
  POST /rest/api/3/issue                      fields.project {key|id}, fields.summary (string, one line,
                                              <= 255), fields.issuetype {name|id} of the project,
                                              fields.description an ADF doc, labels without spaces -> 201
  GET  /rest/api/3/issue/{key}                issue with fields.status {name, statusCategory {key}}
  POST /rest/api/3/issue/{key}/comment        {"body": ADF doc} -> 201
  GET  /rest/api/3/issue/{key}/transitions    transitions available from the current status
  POST /rest/api/3/issue/{key}/transitions    {"transition": {"id"}} valid from the current status -> 204
  Auth: basic email:API token (or a listed bearer token); JSON bodies need Content-Type application/json.
  Workflow: To Do -(Start Progress 21)-> In Progress; To Do / In Progress -(Done 31)-> Done;
  Done -(Reopen 11)-> To Do.

ServiceNow (`make_servicenow_app`):
  POST  /api/now/table/{table}               -> 201 {"result": record}
  GET   /api/now/table/{table}[?sysparm_query=&sysparm_fields=&sysparm_limit=] -> {"result": [...]}
  GET / PATCH / PUT /api/now/table/{table}/{sys_id}
  Fields are checked against the incident fields the stand-in knows; urgency/impact 1..3; state in
  1,2,3,6,7,8; state 6/7 needs close_code and close_notes; work_notes/comments are journal fields
  (appended, read back as ""). Encoded queries: field=v, field!=v, fieldINa,b, field>=v, field>v,
  field<=v, field<v, joined with ^, ORDERBYfield / ORDERBYDESCfield.
  Auth: basic user:password or a listed bearer token.

Both, under /_standin/: GET requests, POST faults ({"status": 500|429|..., "retry_after": s,
"hang": true, "count": n, "method": "POST", "path": "/rest/api/3/issue"}), POST reset. In-process:
`jira_state(app)` / `servicenow_state(app)` give the state objects (issues, records, requests,
add_fault, move/resolve as a user would, release hung requests).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import hmac
import itertools
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

JIRA_STATE_KEY: web.AppKey[JiraState] = web.AppKey("jira_state")
_RAW: Any = web.RequestKey("itsm_raw_body", bytes) if hasattr(web, "RequestKey") else "itsm_raw_body"
SN_STATE_KEY: web.AppKey[ServiceNowState] = web.AppKey("servicenow_state")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ------------------------------------------------------------------------------------------------
# shared: auth, recording, faults
# ------------------------------------------------------------------------------------------------


@dataclass
class Fault:
    status: int | None = None  # HTTP status to answer with
    retry_after: str | None = None
    hang: bool = False
    count: int = 1
    method: str | None = None
    path: str | None = None  # prefix


class _Base:
    def __init__(self, users: dict[str, str], bearer_tokens: tuple[str, ...]) -> None:
        self.users = dict(users)
        self.bearer_tokens = set(bearer_tokens)
        self.requests: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self._release = asyncio.Event()

    # auth ---------------------------------------------------------------------------------------
    def check_auth(self, header: str | None) -> tuple[bool, str]:
        """(ok, masked description for the log)."""
        if not header:
            return False, "none"
        if header.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False, "basic <malformed>"
            want = self.users.get(user)
            ok = want is not None and hmac.compare_digest(want.encode(), pw.encode())
            return ok, f"basic {user}:***"
        if header.startswith("Bearer "):
            tok = header[7:].strip()
            return any(
                hmac.compare_digest(tok.encode(), t.encode()) for t in self.bearer_tokens
            ), "bearer ***"
        return False, "other"

    # faults -------------------------------------------------------------------------------------
    def add_fault(self, **kw: Any) -> None:
        self.faults.append(Fault(**kw))

    def take_fault(self, method: str, path: str) -> Fault | None:
        for f in self.faults:
            if (f.method and f.method != method) or (f.path and not path.startswith(f.path)):
                continue
            f.count -= 1
            if f.count <= 0:
                self.faults.remove(f)
            return f
        return None

    def release_hung(self) -> None:
        self._release.set()

    def find(self, method: str | None = None, path: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests
            if (method is None or r["method"] == method) and (path is None or r["path"] == path)
        ]


def _middleware(state: _Base, error: Callable[[int, str], web.Response]) -> Any:
    @web.middleware
    async def mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_standin/"):
            return await handler(request)
        raw = await request.read()
        ok, auth = state.check_auth(request.headers.get("Authorization"))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = "<invalid json>"
        entry: dict[str, Any] = {
            "time": time.time(),
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "auth": auth,
            "body": body,
            "content_type": request.content_type,
            "status": None,
            "fault": None,
        }
        state.requests.append(entry)
        f = state.take_fault(request.method, request.path)
        if f is not None:
            if f.hang:
                entry["fault"] = "hang"
                await state._release.wait()
                resp: web.StreamResponse = error(503, "released")
            else:
                entry["fault"] = str(f.status)
                resp = error(f.status or 500, "injected fault")
                if f.retry_after is not None:
                    resp.headers["Retry-After"] = str(f.retry_after)
            entry["status"] = resp.status
            return resp
        if not ok:
            resp = error(401, "unauthorized")
        else:
            request[_RAW] = raw
            try:
                resp = await handler(request)
            except web.HTTPException as e:
                resp = e
        entry["status"] = resp.status
        return resp

    return mw


def _control_routes(app: web.Application, state: _Base, reset: Callable[[], None]) -> None:
    async def get_requests(request: web.Request) -> web.Response:
        return web.json_response(
            {"count": len(state.requests), "requests": state.requests},
            dumps=lambda o: json.dumps(o, default=str),
        )

    async def post_faults(request: web.Request) -> web.Response:
        spec = await request.json()
        for f in spec if isinstance(spec, list) else [spec]:
            state.add_fault(**f)
        return web.json_response({"faults": len(state.faults)})

    async def post_reset(request: web.Request) -> web.Response:
        reset()
        return web.json_response({"status": "reset"})

    async def on_shutdown(app: web.Application) -> None:
        state.release_hung()

    app.router.add_get("/_standin/requests", get_requests)
    app.router.add_post("/_standin/faults", post_faults)
    app.router.add_post("/_standin/reset", post_reset)
    app.on_shutdown.append(on_shutdown)


def _json_body(request: web.Request, error: Callable[[int, str], web.Response]) -> Any:
    if request.content_type != "application/json":
        raise _Err(error(415, f"Content-Type must be application/json, not {request.content_type!r}"))
    try:
        return json.loads(request[_RAW] or b"")
    except ValueError:
        raise _Err(error(400, "request body is not valid JSON"))


class _Err(Exception):
    def __init__(self, resp: web.Response) -> None:
        self.resp = resp


def _catching(fn: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except _Err as e:
            return e.resp

    return wrapped


# ------------------------------------------------------------------------------------------------
# ADF validation (the subset of nodes an integration writes; anything else is refused)
# ------------------------------------------------------------------------------------------------

_BLOCK = {"paragraph", "heading", "bulletList", "orderedList", "codeBlock", "blockquote", "rule"}
_INLINE = {"text", "hardBreak", "mention", "emoji", "inlineCard"}
_MARKS = {"strong", "em", "code", "link", "strike", "underline"}


def adf_problems(doc: Any, where: str = "description") -> list[str]:
    """Problems of an ADF document, [] when it is valid (root doc, version 1, block/inline nesting,
    non-empty text nodes, link marks with an href)."""
    p: list[str] = []
    if not isinstance(doc, dict):
        return [f"{where}: expected an Atlassian Document Format object, got {type(doc).__name__}"]
    if doc.get("type") != "doc" or doc.get("version") != 1 or not isinstance(doc.get("content"), list):
        return [f"{where}: root must be {{type: doc, version: 1, content: [...]}}"]
    extra = set(doc) - {"type", "version", "content"}
    if extra:
        p.append(f"{where}: unexpected keys on doc: {sorted(extra)}")

    def inline(n: Any, path: str) -> None:
        if not isinstance(n, dict) or n.get("type") not in _INLINE:
            p.append(f"{path}: not an inline node")
            return
        if n["type"] == "text":
            if not isinstance(n.get("text"), str) or not n["text"]:
                p.append(f"{path}: text node needs non-empty 'text'")
            for m in n.get("marks") or []:
                if not isinstance(m, dict) or m.get("type") not in _MARKS:
                    p.append(f"{path}: unknown mark {m!r}")
                elif m["type"] == "link" and not isinstance((m.get("attrs") or {}).get("href"), str):
                    p.append(f"{path}: link mark needs attrs.href")
        elif n.get("content") is not None:
            p.append(f"{path}: {n['type']} takes no content")

    def block(n: Any, path: str) -> None:
        if not isinstance(n, dict) or n.get("type") not in _BLOCK:
            p.append(f"{path}: not a block node ({n.get('type') if isinstance(n, dict) else n!r})")
            return
        t = n["type"]
        content = n.get("content", [])
        if not isinstance(content, list):
            p.append(f"{path}: content must be an array")
            return
        if t in ("paragraph", "heading", "codeBlock"):
            for i, c in enumerate(content):
                inline(c, f"{path}.content[{i}]")
            if t == "heading" and not (isinstance((n.get("attrs") or {}).get("level"), int)):
                p.append(f"{path}: heading needs attrs.level")
        elif t in ("bulletList", "orderedList"):
            for i, li in enumerate(content):
                if not isinstance(li, dict) or li.get("type") != "listItem":
                    p.append(f"{path}.content[{i}]: lists hold listItem nodes")
                    continue
                for j, c in enumerate(li.get("content") or []):
                    block(c, f"{path}.content[{i}].content[{j}]")
        elif t == "blockquote":
            for i, c in enumerate(content):
                block(c, f"{path}.content[{i}]")

    for i, n in enumerate(doc["content"]):
        block(n, f"{where}.content[{i}]")
    return p


# ------------------------------------------------------------------------------------------------
# Jira
# ------------------------------------------------------------------------------------------------


@dataclass
class JiraStatus:
    id: str
    name: str
    category: str  # new | indeterminate | done


DEFAULT_STATUSES = [
    JiraStatus("10000", "To Do", "new"),
    JiraStatus("10001", "In Progress", "indeterminate"),
    JiraStatus("10002", "Done", "done"),
]
# (id, name, from status names, to status name)
DEFAULT_TRANSITIONS = [
    ("21", "Start Progress", {"To Do"}, "In Progress"),
    ("31", "Done", {"To Do", "In Progress"}, "Done"),
    ("11", "Reopen", {"Done"}, "To Do"),
]
_CAT = {"new": ("2", "To Do"), "indeterminate": ("4", "In Progress"), "done": ("3", "Done")}


class JiraState(_Base):
    def __init__(
        self,
        *,
        email: str,
        api_token: str,
        bearer_tokens: tuple[str, ...] = (),
        projects: dict[str, list[str]] | None = None,
        transitions: list[tuple[str, str, set[str], str]] | None = None,
        base_url: str = "https://example.atlassian.net",
    ) -> None:
        super().__init__({email: api_token}, bearer_tokens)
        self.projects = projects or {"OPS": ["Task", "Bug", "Incident"]}
        self.statuses = {s.name: s for s in DEFAULT_STATUSES}
        self.transitions = transitions or DEFAULT_TRANSITIONS
        self.base_url = base_url
        self.reset_data()

    def reset_data(self) -> None:
        self.issues: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(10001)
        self._numbers = {p: itertools.count(1) for p in self.projects}

    def status_json(self, name: str) -> dict:
        s = self.statuses[name]
        cid, cname = _CAT[s.category]
        return {
            "self": f"{self.base_url}/rest/api/3/status/{s.id}",
            "id": s.id,
            "name": s.name,
            "statusCategory": {"id": int(cid), "key": s.category, "name": cname},
        }

    def available(self, issue: dict) -> list[dict]:
        cur = issue["status"]
        return [
            {"id": tid, "name": name, "to": self.status_json(to), "hasScreen": False, "isAvailable": True}
            for tid, name, frm, to in self.transitions
            if cur in frm
        ]

    def issue_json(self, issue: dict) -> dict:
        return {
            "id": issue["id"],
            "key": issue["key"],
            "self": f"{self.base_url}/rest/api/3/issue/{issue['id']}",
            "fields": {
                "summary": issue["summary"],
                "issuetype": {"name": issue["issuetype"]},
                "project": {"key": issue["project"]},
                "labels": list(issue["labels"]),
                "description": issue["description"],
                "status": self.status_json(issue["status"]),
                "comment": {"comments": copy.deepcopy(issue["comments"]), "total": len(issue["comments"])},
            },
        }

    def move(self, key: str, to_status: str) -> dict:
        """Change the status as a Jira user would (no transition check) and return the documented
        `jira:issue_updated` webhook payload for that change."""
        issue = self.issues[key]
        before = issue["status"]
        issue["status"] = to_status
        return jira_issue_updated_payload(self, issue, before, to_status)


def jira_issue_updated_payload(state: JiraState, issue: dict, from_status: str, to_status: str) -> dict:
    """The shape of Jira's jira:issue_updated webhook for a status change (timestamp, webhookEvent,
    issue_event_type_name, user, issue {id, key, fields}, changelog {id, items[{field, fieldtype,
    fieldId, from, fromString, to, toString}]})."""
    return {
        "timestamp": int(time.time() * 1000),
        "webhookEvent": "jira:issue_updated",
        "issue_event_type_name": "issue_generic",
        "user": {"accountId": "5b10ac8d82e05b22cc7d4ef5", "displayName": "Ada Responder", "active": True},
        "issue": state.issue_json(issue),
        "changelog": {
            "id": str(next(state._ids)),
            "items": [
                {
                    "field": "status",
                    "fieldtype": "jira",
                    "fieldId": "status",
                    "from": state.statuses[from_status].id,
                    "fromString": from_status,
                    "to": state.statuses[to_status].id,
                    "toString": to_status,
                }
            ],
        },
    }


def _jira_error(status: int, message: str, errors: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"errorMessages": [message] if message and not errors else [], "errors": errors or {}}, status=status
    )


def make_jira_app(
    *,
    email: str = "bot@example.com",
    api_token: str = "jira-api-token",
    bearer_tokens: tuple[str, ...] = (),
    projects: dict[str, list[str]] | None = None,
    transitions: list[tuple[str, str, set[str], str]] | None = None,
) -> web.Application:
    state = JiraState(
        email=email,
        api_token=api_token,
        bearer_tokens=bearer_tokens,
        projects=projects,
        transitions=transitions,
    )
    app = web.Application(middlewares=[_middleware(state, _jira_error)])
    app[JIRA_STATE_KEY] = state

    def issue_or_404(request: web.Request) -> dict:
        key = request.match_info["key"]
        issue = state.issues.get(key) or next((i for i in state.issues.values() if i["id"] == key), None)
        if issue is None:
            raise _Err(_jira_error(404, "Issue does not exist or you do not have permission to see it."))
        return issue

    async def create_issue(request: web.Request) -> web.Response:
        body = _json_body(request, _jira_error)
        if not isinstance(body, dict) or not isinstance(body.get("fields"), dict):
            return _jira_error(400, "Request body must be an object with 'fields'")
        f = body["fields"]
        errors: dict[str, str] = {}
        proj = f.get("project")
        pkey = None
        if not isinstance(proj, dict) or not (proj.get("key") or proj.get("id")):
            errors["project"] = "Specify a valid project ID or key"
        else:
            pkey = proj.get("key") or proj.get("id")
            if pkey not in state.projects:
                errors["project"] = "Specify a valid project ID or key"
        summary = f.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            errors["summary"] = "You must specify a summary of the issue."
        elif len(summary) > 255:
            errors["summary"] = "Summary must be less than 255 characters."
        elif "\n" in summary or "\r" in summary:
            errors["summary"] = "The summary is invalid because it contains newline characters."
        it = f.get("issuetype")
        if not isinstance(it, dict) or not (it.get("name") or it.get("id")):
            errors["issuetype"] = "Specify an issue type"
        elif pkey in state.projects and it.get("name") not in state.projects[pkey]:
            errors["issuetype"] = "Specify a valid issue type"
        if "description" in f and f["description"] is not None:
            probs = adf_problems(f["description"])
            if probs:
                errors["description"] = "Operation value must be an Atlassian Document: " + "; ".join(
                    probs[:3]
                )
        labels = f.get("labels", [])
        if not isinstance(labels, list) or any(not isinstance(x, str) or not x or " " in x for x in labels):
            errors["labels"] = "Labels must be strings without spaces"
        unknown = set(f) - {"project", "summary", "issuetype", "description", "labels", "priority"}
        for u in unknown:
            errors[u] = f"Field '{u}' cannot be set. It is not on the appropriate screen, or unknown."
        if errors:
            return _jira_error(400, "", errors)
        n = next(state._numbers[pkey])
        key = f"{pkey}-{n}"
        iid = str(next(state._ids))
        state.issues[key] = {
            "id": iid,
            "key": key,
            "project": pkey,
            "summary": summary,
            "issuetype": it["name"],
            "description": f.get("description"),
            "labels": list(labels),
            "status": "To Do",
            "comments": [],
            "transitions_done": [],
        }
        return web.json_response(
            {"id": iid, "key": key, "self": f"{state.base_url}/rest/api/3/issue/{iid}"}, status=201
        )

    async def get_issue(request: web.Request) -> web.Response:
        return web.json_response(state.issue_json(issue_or_404(request)))

    async def add_comment(request: web.Request) -> web.Response:
        issue = issue_or_404(request)
        body = _json_body(request, _jira_error)
        if not isinstance(body, dict) or "body" not in body:
            return _jira_error(400, "Comment body can not be empty!")
        probs = adf_problems(body["body"], "body")
        if probs:
            return _jira_error(
                400, "", {"comment": "Comment must be an Atlassian Document: " + "; ".join(probs[:3])}
            )
        cid = str(next(state._ids))
        c = {"id": cid, "body": body["body"], "created": datetime.now(UTC).isoformat()}
        issue["comments"].append(c)
        return web.json_response(
            {**c, "self": f"{state.base_url}/rest/api/3/issue/{issue['id']}/comment/{cid}"}, status=201
        )

    async def transitions(request: web.Request) -> web.StreamResponse:
        issue = issue_or_404(request)
        if request.method == "GET":
            return web.json_response({"expand": "transitions", "transitions": state.available(issue)})
        body = _json_body(request, _jira_error)
        tid = (body.get("transition") or {}).get("id") if isinstance(body, dict) else None
        if not isinstance(tid, str) or not tid:
            return _jira_error(400, "Missing 'transition' identifier")
        match = next((t for t in state.available(issue) if t["id"] == tid), None)
        if match is None:
            return _jira_error(400, f"Transition id '{tid}' is not valid for this issue.")
        issue["status"] = match["to"]["name"]
        issue["transitions_done"].append(tid)
        return web.Response(status=204)

    app.router.add_post("/rest/api/3/issue", _catching(create_issue))
    app.router.add_get("/rest/api/3/issue/{key}", _catching(get_issue))
    app.router.add_post("/rest/api/3/issue/{key}/comment", _catching(add_comment))
    app.router.add_route("GET", "/rest/api/3/issue/{key}/transitions", _catching(transitions))
    app.router.add_route("POST", "/rest/api/3/issue/{key}/transitions", _catching(transitions))

    def reset() -> None:
        state.reset_data()
        state.requests.clear()
        state.faults.clear()

    _control_routes(app, state, reset)
    return app


def jira_state(app: web.Application) -> JiraState:
    return app[JIRA_STATE_KEY]


# ------------------------------------------------------------------------------------------------
# ServiceNow
# ------------------------------------------------------------------------------------------------

INCIDENT_FIELDS = {
    "short_description",
    "description",
    "urgency",
    "impact",
    "priority",
    "state",
    "incident_state",
    "correlation_id",
    "correlation_display",
    "work_notes",
    "comments",
    "close_code",
    "close_notes",
    "caller_id",
    "category",
    "subcategory",
    "assignment_group",
    "assigned_to",
    "cmdb_ci",
    "business_service",
    "contact_type",
    "opened_by",
    "resolved_by",
    "company",
    "location",
}
READ_ONLY = {
    "sys_id",
    "number",
    "sys_created_on",
    "sys_updated_on",
    "sys_created_by",
    "sys_updated_by",
    "sys_mod_count",
    "opened_at",
    "resolved_at",
    "closed_at",
}
JOURNAL = {"work_notes", "comments"}
STATES = {"1", "2", "3", "6", "7", "8"}
_QUERY_TERM = re.compile(r"^([a-z_]+)(!=|>=|<=|=|>|<|IN)(.*)$")


def _sn_error(status: int, message: str, detail: str = "") -> web.Response:
    return web.json_response(
        {"error": {"message": message, "detail": detail}, "status": "failure"}, status=status
    )


def _now_sn() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


class ServiceNowState(_Base):
    def __init__(
        self,
        *,
        username: str,
        password: str,
        bearer_tokens: tuple[str, ...] = (),
        clock: Callable[[], str] = _now_sn,
    ) -> None:
        super().__init__({username: password}, bearer_tokens)
        self.username = username
        self.clock = clock
        self.reset_data()

    def reset_data(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.journal: dict[str, list[dict[str, str]]] = {}
        self._numbers = itertools.count(10001)

    def check_fields(self, body: dict, current: dict | None) -> list[str]:
        p: list[str] = []
        for k, v in body.items():
            if k in READ_ONLY:
                continue  # ServiceNow ignores writes to system fields
            if k not in INCIDENT_FIELDS:
                p.append(f"unknown field '{k}'")
            elif v is not None and not isinstance(v, (str, int, float, bool)):
                p.append(f"field '{k}' must be a scalar value")
        for k in ("urgency", "impact"):
            if k in body and str(body[k]) not in ("1", "2", "3"):
                p.append(f"{k} must be 1, 2 or 3")
        merged = {**(current or {}), **{k: str(v) for k, v in body.items() if k not in JOURNAL}}
        if "state" in body and str(body["state"]) not in STATES:
            p.append(f"state {body['state']!r} is not a valid incident state")
        if str(merged.get("state")) in ("6", "7"):
            for k in ("close_code", "close_notes"):
                if not str(merged.get(k) or "").strip():
                    p.append(f"Data Policy Exception: {k} is mandatory when the incident is Resolved/Closed")
        if current is None and not str(body.get("short_description") or "").strip():
            p.append("Data Policy Exception: short_description is mandatory")
        return p

    def apply(self, sys_id: str, body: dict) -> dict:
        rec = self.records[sys_id]
        now = self.clock()
        for k, v in body.items():
            if k in READ_ONLY:
                continue
            if k in JOURNAL:
                if v:
                    self.journal[sys_id].append({"field": k, "value": str(v), "at": now})
                continue
            rec[k] = "" if v is None else str(v)
        if rec.get("state") in ("6", "7") and not rec.get("resolved_at"):
            rec["resolved_at"] = now
        rec["sys_updated_on"] = now
        rec["sys_mod_count"] = str(int(rec["sys_mod_count"]) + 1)
        return rec

    def create(self, body: dict) -> dict:
        sys_id = uuid.uuid4().hex
        now = self.clock()
        rec = {f: "" for f in INCIDENT_FIELDS - JOURNAL}
        rec.update(
            {
                "sys_id": sys_id,
                "number": f"INC{next(self._numbers):07d}",
                "state": "1",
                "urgency": "3",
                "impact": "3",
                "sys_created_on": now,
                "sys_updated_on": now,
                "sys_created_by": self.username,
                "sys_updated_by": self.username,
                "sys_mod_count": "-1",
                "opened_at": now,
                "resolved_at": "",
                "work_notes": "",
                "comments": "",
            }
        )
        self.records[sys_id] = rec
        self.journal[sys_id] = []
        return self.apply(sys_id, body)

    def resolve_as_user(
        self,
        sys_id: str,
        close_code: str = "Solution provided",
        close_notes: str = "Fixed by the service desk",
        state: str = "6",
    ) -> dict:
        """What a ServiceNow user resolving the record in the UI does (for tests)."""
        return self.apply(sys_id, {"state": state, "close_code": close_code, "close_notes": close_notes})

    def select(self, query: str) -> list[dict]:
        terms = [t for t in query.split("^") if t] if query else []
        order: tuple[str, bool] | None = None
        preds: list[Callable[[dict], bool]] = []
        for t in terms:
            if t.startswith("ORDERBYDESC"):
                order = (t[11:], True)
                continue
            if t.startswith("ORDERBY"):
                order = (t[7:], False)
                continue
            m = _QUERY_TERM.match(t)
            if not m:
                raise ValueError(f"unsupported query term {t!r}")
            f, op, v = m.groups()
            if f not in INCIDENT_FIELDS | READ_ONLY:
                raise ValueError(f"unknown field in query: {f!r}")
            preds.append(_pred(f, op, v))
        rows = [r for r in self.records.values() if all(p(r) for p in preds)]
        if order:
            rows.sort(key=lambda r: str(r.get(order[0], "")), reverse=order[1])
        return rows


def _pred(f: str, op: str, v: str) -> Callable[[dict], bool]:
    if op == "=":
        return lambda r: str(r.get(f, "")) == v
    if op == "!=":
        return lambda r: str(r.get(f, "")) != v
    if op == "IN":
        vals = set(v.split(","))
        return lambda r: str(r.get(f, "")) in vals
    cmp = {">=": str.__ge__, "<=": str.__le__, ">": str.__gt__, "<": str.__lt__}[op]
    return lambda r: cmp(str(r.get(f, "")), v)


def make_servicenow_app(
    *,
    username: str = "pagerstream.integration",
    password: str = "sn-password",
    bearer_tokens: tuple[str, ...] = (),
    tables: tuple[str, ...] = ("incident",),
    clock: Callable[[], str] = _now_sn,
) -> web.Application:
    state = ServiceNowState(username=username, password=password, bearer_tokens=bearer_tokens, clock=clock)
    app = web.Application(middlewares=[_middleware(state, lambda s, m: _sn_error(s, m))])
    app[SN_STATE_KEY] = state

    def table(request: web.Request) -> str:
        t = request.match_info["table"]
        if t not in tables:
            raise _Err(_sn_error(400, "Invalid table", f"Invalid table {t}"))
        return t

    def fields_of(request: web.Request, rec: dict) -> dict:
        wanted = request.query.get("sysparm_fields")
        out = copy.deepcopy(rec)
        if wanted:
            out = {k: out.get(k, "") for k in wanted.split(",") if k}
        return out

    async def collection(request: web.Request) -> web.Response:
        table(request)
        if request.method == "GET":
            try:
                rows = state.select(request.query.get("sysparm_query", ""))
            except ValueError as e:
                return _sn_error(400, "Invalid query", str(e))
            limit = int(request.query.get("sysparm_limit", "10000"))
            offset = int(request.query.get("sysparm_offset", "0"))
            return web.json_response(
                {"result": [fields_of(request, r) for r in rows[offset : offset + limit]]}
            )
        body = _json_body(request, _sn_error)
        if not isinstance(body, dict):
            return _sn_error(400, "Invalid request body", "expected a JSON object")
        probs = state.check_fields(body, None)
        if probs:
            return _sn_error(400, "Operation Failed", "; ".join(probs))
        rec = state.create(body)
        return web.json_response(
            {"result": fields_of(request, rec)},
            status=201,
            headers={"Location": f"/api/now/table/{table(request)}/{rec['sys_id']}"},
        )

    async def record(request: web.Request) -> web.Response:
        table(request)
        sys_id = request.match_info["sys_id"]
        rec = state.records.get(sys_id)
        if rec is None:
            return _sn_error(
                404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"
            )
        if request.method == "GET":
            return web.json_response({"result": fields_of(request, rec)})
        body = _json_body(request, _sn_error)
        if not isinstance(body, dict):
            return _sn_error(400, "Invalid request body", "expected a JSON object")
        probs = state.check_fields(body, rec)
        if probs:
            return _sn_error(400, "Operation Failed", "; ".join(probs))
        return web.json_response({"result": fields_of(request, state.apply(sys_id, body))})

    app.router.add_route("GET", "/api/now/table/{table}", _catching(collection))
    app.router.add_route("POST", "/api/now/table/{table}", _catching(collection))
    for m in ("GET", "PATCH", "PUT"):
        app.router.add_route(m, "/api/now/table/{table}/{sys_id}", _catching(record))

    def reset() -> None:
        state.reset_data()
        state.requests.clear()
        state.faults.clear()

    _control_routes(app, state, reset)
    return app


def servicenow_state(app: web.Application) -> ServiceNowState:
    return app[SN_STATE_KEY]


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------


class StandinServer:
    """`async with StandinServer(make_jira_app()) as s: s.url` on 127.0.0.1 and a free port."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app, self.host, self.port = app, host, port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> StandinServer:  # noqa: PYI034
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for key in (JIRA_STATE_KEY, SN_STATE_KEY):
            if key in self.app:
                self.app[key].release_hung()
        if self._runner is not None:
            await self._runner.cleanup()
