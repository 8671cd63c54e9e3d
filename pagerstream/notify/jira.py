"""Channel `jira`: one Jira Cloud issue per incident, kept in step both ways (REST API v3).

pagerstream -> Jira (`send`):
* first change of an incident: POST /rest/api/3/issue with fields project {key}, summary, issuetype
  {name}, description (an Atlassian Document Format document) and
  labels ["pagerstream", ...]; the summary comes from "jira_summary.txt.j2" plus " (<incident id>)",
  and the description converts the wiki-markup subset of "jira.txt.j2" to ADF. The issue key is
  kept in ctx.refs (incident -> key), and the reverse
  (key -> incident id + PagerDuty incident_key) under the ref id "jira-issue:<KEY>" for the webhook.
* every later change: POST /rest/api/3/issue/{key}/comment with an ADF body.
* resolve (change resolved / auto_resolved): GET /rest/api/3/issue/{key}/transitions, pick the
  transition whose name (or target status name) is the configured `done_transition` (default "Done"),
  POST {"transition": {"id": ...}} (204). The transition is made before the comment, so a retry after a
  failed comment finds the issue already done and does not transition twice. An issue that is already
  in a done-category status counts as done.

Jira -> PagerDuty (`jira_webhook_handler`): Jira's `jira:issue_updated` webhook; when the changelog
moves the status to a done status, the PagerDuty incident (found by incident_key) is resolved through
the REST client. The caller is authenticated by a shared secret: `?token=<secret>` in the webhook URL,
an `X-Pagerstream-Token` header, or Jira's admin-webhook signature `X-Hub-Signature: sha256=<HMAC of
the raw body>`; all compared in constant time.

Destination config: base_url (https://<site>.atlassian.net), project (key), issue_type (default
"Task"), done_transition (default "Done"), labels (extra), priorities ({severity: priority name},
optional), timeout_s (default 5, per request), allow_http (default false; for local stand-ins).
Secret: {"email": ..., "api_token": ...} (basic auth) or {"access_token": ...} (OAuth 2.0 bearer).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx
from aiohttp import web

from pagerstream.notify.base import (
    ChannelContext,
    DeliveryResult,
    Notification,
    RefStore,
    classify_http,
    service_base_url,
)

log = logging.getLogger("pagerstream.notify.jira")

kind = "jira"
RESOLVED_CHANGES = {"resolved", "auto_resolved"}
REVERSE_PREFIX = "jira-issue:"
BODY_TEMPLATE, SUMMARY_TEMPLATE = "jira.txt.j2", "jira_summary.txt.j2"


class JiraConfigError(ValueError):
    pass


# ------------------------------------------------------------------------------------------------
# ADF
# ------------------------------------------------------------------------------------------------

_INLINE_RE = re.compile(
    r"\[(?:(?P<title>[^|\]\n]+)\|)?(?P<href>https?://[^\]\s]+)\]"  # [url] or [title|url]
    r"|(?P<url>https?://[^\s<>\"'\]\[|]+)"  # a bare URL
    r"|(?<![\w*])\*(?P<strong>[^*\s](?:[^*\n]*[^*\s])?)\*(?![\w*])"  # *strong*
    r"|(?<![\w_])_(?P<em>[^_\s](?:[^_\n]*[^_\s])?)_(?![\w_])"
)  # _emphasis_


def _text(text: str, *marks: dict) -> dict:
    node: dict[str, Any] = {"type": "text", "text": text}
    if marks:
        node["marks"] = list(marks)
    return node


def _inline(line: str) -> list[dict]:
    """Inline nodes for one line of text / Jira wiki markup: links, *strong*, _em_. ADF text nodes
    must not be empty, so empty pieces are dropped."""
    out: list[dict] = []
    pos = 0
    for m in _INLINE_RE.finditer(line):
        if m.group("url"):
            url = m.group("url").rstrip(".,;:)")
            end = m.start() + len(url)
        else:
            url, end = None, m.end()
        if m.start() > pos:
            out.append(_text(line[pos : m.start()]))
        if m.group("href"):
            out.append(
                _text(
                    m.group("title") or m.group("href"), {"type": "link", "attrs": {"href": m.group("href")}}
                )
            )
        elif url:
            out.append(_text(url, {"type": "link", "attrs": {"href": url}}))
        elif m.group("strong"):
            out.append(_text(m.group("strong"), {"type": "strong"}))
        else:
            out.append(_text(m.group("em"), {"type": "em"}))
        pos = end
    if pos < len(line):
        out.append(_text(line[pos:]))
    return [n for n in out if n["text"]]


def _table_row(line: str) -> list[dict]:
    """`||Header|value|` -> strong("Header") ": value" (ADF tables are left out on purpose: a
    two-column key/value table reads as well as lines and cannot be rejected for its layout)."""
    cells = re.findall(r"(\|\|?)([^|]*)", line.strip().rstrip("|"))
    nodes: list[dict] = []
    for i, (sep, cell) in enumerate(cells):
        cell = cell.strip()
        if not cell:
            continue
        if nodes:
            nodes.append(_text(": " if cells[i - 1][0] == "||" else " | "))
        nodes.extend([_text(cell, {"type": "strong"})] if sep == "||" else _inline(cell))
    return nodes


def adf_from_text(text: str) -> dict:
    """Text or the Jira wiki markup of the default template -> an ADF document.

    Blank lines separate blocks; `hN. title` -> heading; `* item` / `- item` lines -> bulletList;
    `||k|v|` rows -> one line each; other lines -> a paragraph whose lines are joined by hardBreaks.
    Inline: [title|url], [url], bare URLs -> link marks; *x* -> strong; _x_ -> em."""
    content: list[dict] = []
    para: list[dict] = []
    items: list[dict] = []

    def flush() -> None:
        nonlocal para, items
        if para:
            content.append({"type": "paragraph", "content": para})
        if items:
            content.append({"type": "bulletList", "content": items})
        para, items = [], []

    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.rstrip()
        if not line.strip():
            flush()
            continue
        h = re.match(r"^h([1-6])\.\s+(.*)$", line)
        bullet = re.match(r"^\s*[*-]\s+(.*)$", line)
        if h:
            flush()
            content.append(
                {"type": "heading", "attrs": {"level": int(h.group(1))}, "content": _inline(h.group(2))}
            )
        elif bullet:  # "* item" (a space after the star; "*bold*" is not a bullet)
            if para:
                content.append({"type": "paragraph", "content": para})
                para = []
            items.append(
                {"type": "listItem", "content": [{"type": "paragraph", "content": _inline(bullet.group(1))}]}
            )
        else:
            if items:
                content.append({"type": "bulletList", "content": items})
                items = []
            nodes = _table_row(line) if line.lstrip().startswith("|") else _inline(line)
            if nodes:
                if para:
                    para.append({"type": "hardBreak"})
                para.extend(nodes)
    flush()
    if not content:
        content = [{"type": "paragraph", "content": []}]
    return {"type": "doc", "version": 1, "content": content}


# ------------------------------------------------------------------------------------------------
# channel
# ------------------------------------------------------------------------------------------------


def _auth(creds: dict[str, Any]) -> tuple[httpx.Auth | None, dict[str, str]]:
    if creds.get("access_token"):
        return None, {"Authorization": f"Bearer {creds['access_token']}"}
    if creds.get("email") and creds.get("api_token"):
        return httpx.BasicAuth(str(creds["email"]), str(creds["api_token"])), {}
    raise JiraConfigError("Jira secret needs email + api_token, or access_token")


def _base(cfg: dict[str, Any]) -> str:
    return service_base_url(cfg, "base_url", JiraConfigError)


def _summary(ctx: ChannelContext, n: Notification) -> str:
    """Template "jira_summary.txt.j2" on one line, with the incident id, within Jira's 255 characters."""
    s = " ".join(ctx.render(SUMMARY_TEMPLATE, n).split()) or str(n.incident.get("summary") or "incident")
    suffix = f" ({n.incident_id})"
    return s[: 255 - len(suffix)] + suffix


def _transport_result(e: Exception) -> DeliveryResult:
    what = "timeout" if isinstance(e, httpx.TimeoutException) else "connection error"
    return DeliveryResult(ok=False, permanent=False, answer=f"{what}: {type(e).__name__}")


class _Api:
    def __init__(self, ctx: ChannelContext, n: Notification) -> None:
        cfg = n.destination.config
        self.base = _base(cfg)
        if not n.destination.secret_ref:
            raise JiraConfigError("destination has no secret_ref")
        self.auth, self.headers = _auth(ctx.secret(n.destination.secret_ref))
        self.headers = {**self.headers, "Accept": "application/json"}
        self.http = ctx.http
        self.timeout = float(cfg.get("timeout_s", 5))

    async def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        kw: dict[str, Any] = {"headers": self.headers, "timeout": self.timeout}
        if self.auth is not None:
            kw["auth"] = self.auth
        if body is not None:
            kw["json"] = body
        return await self.http.request(method, self.base + path, **kw)


async def _transition_done(api: _Api, key: str, name: str) -> DeliveryResult:
    k = quote(key, safe="")
    r = await api.call("GET", f"/rest/api/3/issue/{k}/transitions")
    if r.status_code != 200:
        return classify_http(r)
    transitions = (r.json() or {}).get("transitions") or []
    want = name.casefold()
    match = next((t for t in transitions if str(t.get("name", "")).casefold() == want), None) or next(
        (t for t in transitions if str((t.get("to") or {}).get("name", "")).casefold() == want), None
    )
    if match is None:
        s = await api.call("GET", f"/rest/api/3/issue/{k}?fields=status")
        if s.status_code != 200:
            return classify_http(s)
        status = ((s.json() or {}).get("fields") or {}).get("status") or {}
        if (status.get("statusCategory") or {}).get("key") == "done":
            return DeliveryResult(
                ok=True, status=200, answer=f"already {status.get('name')}", external_ref=key
            )
        names = ", ".join(repr(t.get("name")) for t in transitions) or "none"
        return DeliveryResult(
            ok=False,
            status=r.status_code,
            permanent=True,
            external_ref=key,
            answer=f"no transition {name!r} from status {status.get('name')!r} (available: {names})",
        )
    p = await api.call("POST", f"/rest/api/3/issue/{k}/transitions", {"transition": {"id": str(match["id"])}})
    res = classify_http(p)
    return DeliveryResult(
        ok=res.ok,
        status=res.status,
        retry_after=res.retry_after,
        permanent=res.permanent,
        answer=res.answer or f"transitioned with {match.get('name')!r}",
        external_ref=key,
    )


async def send(n: Notification, ctx: ChannelContext) -> DeliveryResult:
    cfg = n.destination.config
    dest = n.destination.name
    resolved = n.incident.get("change") in RESOLVED_CHANGES or n.incident.get("state") == "resolved"
    try:
        api = _Api(ctx, n)
        project = str(cfg.get("project") or "")
        if not project:
            raise JiraConfigError("destination config needs 'project' (a project key)")
        text = ctx.render(BODY_TEMPLATE, n)
        summary = _summary(ctx, n)
    except JiraConfigError as e:
        return DeliveryResult(ok=False, permanent=True, answer=f"jira configuration: {e}")
    except Exception as e:
        if type(e).__name__ == "TemplateRenderError":  # pagerstream.notify.templates: the template is wrong
            return DeliveryResult(ok=False, permanent=True, answer=str(e)[:500])
        raise
    try:
        key = await ctx.refs.get(n.incident_id, dest)
        if key is None:
            fields: dict[str, Any] = {
                "project": {"key": project},
                "summary": summary,
                "issuetype": {"name": str(cfg.get("issue_type") or "Task")},
                "description": adf_from_text(text),
                "labels": ["pagerstream", *[str(x) for x in cfg.get("labels") or []]],
            }
            prio = (cfg.get("priorities") or {}).get(str(n.incident.get("severity")))
            if prio:
                fields["priority"] = {"name": str(prio)}
            r = await api.call("POST", "/rest/api/3/issue", {"fields": fields})
            if r.status_code != 201:
                return classify_http(r)
            key = str(r.json()["key"])
            reverse = json.dumps(
                {"incident_id": n.incident_id, "pd_incident_key": n.incident.get("pd_dedup_key")}
            )
            await ctx.refs.set(REVERSE_PREFIX + key, dest, reverse)
            await ctx.refs.set(n.incident_id, dest, key)
            if resolved:
                return await _transition_done(api, key, str(cfg.get("done_transition") or "Done"))
            return DeliveryResult(ok=True, status=201, answer=f"created {key}", external_ref=key)
        if resolved:
            t = await _transition_done(api, key, str(cfg.get("done_transition") or "Done"))
            if not t.ok:
                return t
        r = await api.call(
            "POST", f"/rest/api/3/issue/{quote(key, safe='')}/comment", {"body": adf_from_text(text)}
        )
        res = classify_http(r)
        if not res.ok:
            return DeliveryResult(
                ok=False,
                status=res.status,
                retry_after=res.retry_after,
                permanent=res.permanent,
                answer=res.answer,
                external_ref=key,
            )
        return DeliveryResult(ok=True, status=r.status_code, answer=f"commented on {key}", external_ref=key)
    except httpx.TransportError as e:
        return _transport_result(e)
    except (ValueError, KeyError) as e:  # an answer that is not the documented JSON
        return DeliveryResult(ok=False, permanent=False, answer=f"unexpected Jira answer: {type(e).__name__}")


class JiraChannel:
    kind = kind

    async def send(self, n: Notification, ctx: ChannelContext) -> DeliveryResult:
        return await send(n, ctx)


# ------------------------------------------------------------------------------------------------
# Jira -> PagerDuty
# ------------------------------------------------------------------------------------------------


def check_shared_secret(request: web.Request, raw: bytes, secrets_: list[bytes]) -> bool:
    """?token=, X-Pagerstream-Token or X-Hub-Signature (sha256=HMAC(raw body)); constant time."""
    given_token = (request.query.get("token") or request.headers.get("X-Pagerstream-Token") or "").encode()
    sig = request.headers.get("X-Hub-Signature", "")
    ok = False
    for s in secrets_:
        if given_token:
            ok |= hmac.compare_digest(given_token, s)
        if sig.startswith("sha256="):
            ok |= hmac.compare_digest(
                sig[7:].strip().lower().encode(), hmac.new(s, raw, hashlib.sha256).hexdigest().encode()
            )
    return ok


def _done_change(payload: dict, done: set[str]) -> str | None:
    """The status the issue moved to, when the changelog moves it to a done status."""
    items = ((payload.get("changelog") or {}).get("items")) or []
    for it in items:
        if not isinstance(it, dict):
            continue
        if it.get("fieldId") == "status" or it.get("field") == "status":
            to = str(it.get("toString") or "")
            if to.casefold() in done:
                return to
            cat = (
                (((payload.get("issue") or {}).get("fields") or {}).get("status") or {}).get("statusCategory")
                or {}
            ).get("key")
            if cat == "done":
                return to or "done"
    return None


def jira_webhook_handler(
    *,
    secret: str | list[str],
    refs: RefStore,
    destination: str,
    pagerduty: Any,
    done_statuses: tuple[str, ...] = ("Done",),
    max_body: int = 1 << 20,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """aiohttp POST handler for Jira's issue-updated webhook (one per Jira destination)."""
    from pagerstream.notify.links import act_on_pagerduty

    secrets_ = [s.encode() for s in ([secret] if isinstance(secret, str) else secret) if s]
    if not secrets_:
        raise ValueError("a webhook secret is required")
    done = {s.casefold() for s in done_statuses}

    async def handler(request: web.Request) -> web.Response:
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        if request.content_length is not None and request.content_length > max_body:
            return web.json_response({"error": "body too large"}, status=413)
        raw = await request.read()
        if len(raw) > max_body:
            return web.json_response({"error": "body too large"}, status=413)
        if not check_shared_secret(request, raw, secrets_):
            log.warning("jira webhook: bad or missing secret from %s", request.remote)
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return web.json_response({"error": "body is not a JSON object"}, status=400)
        event = payload.get("webhookEvent")
        if event != "jira:issue_updated":
            return web.json_response({"ignored": f"event {event!r}"}, status=202)
        issue = payload.get("issue")
        key = issue.get("key") if isinstance(issue, dict) else None
        if not isinstance(key, str) or not key:
            return web.json_response({"error": "issue.key missing"}, status=400)
        to = _done_change(payload, done)
        if to is None:
            return web.json_response({"ignored": "not a move to a done status", "issue": key}, status=202)
        raw_ref = await refs.get(REVERSE_PREFIX + key, destination)
        if not raw_ref:
            return web.json_response(
                {"ignored": "not an issue pagerstream created", "issue": key}, status=202
            )
        ref = json.loads(raw_ref)
        pd_key = ref.get("pd_incident_key")
        if not pd_key:
            return web.json_response(
                {"ignored": "no PagerDuty incident key recorded", "issue": key}, status=202
            )
        try:
            out = await act_on_pagerduty(
                pagerduty, pd_key, "resolve", resolution=f"Resolved in Jira ({key} -> {to})"
            )
        except Exception as e:  # noqa: BLE001 - PagerDuty unreachable / refused: let Jira retry
            log.warning("jira webhook: resolving %s in PagerDuty failed: %s", key, type(e).__name__)
            return web.json_response({"error": "PagerDuty call failed", "issue": key}, status=503)
        log.info("jira webhook: %s moved to %s -> PagerDuty %s", key, to, out.status)
        return web.json_response(
            {
                "issue": key,
                "incident_id": ref.get("incident_id"),
                "pagerduty": out.status,
                "message": out.message,
                "pd_incident_id": out.pd_incident_id,
            }
        )

    return handler
