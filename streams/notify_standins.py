"""Local stand-ins for Slack and Microsoft Teams (Workflows webhooks), for tests and manual runs.

They are real aiohttp servers that check requests the way the providers document them and record
every request. Slack (`make_slack_app`):

  POST /services/{T}/{B}/{secret}      incoming webhook: JSON body -> 200 "ok"; 400 invalid_payload /
                                       no_text / invalid_blocks, 404 no_service (unknown URL)
  POST /api/chat.postMessage           Web API, `Authorization: Bearer <token>`, JSON body ->
  POST /api/chat.update                {"ok": true, "channel", "ts", "message"} or {"ok": false, "error"}
                                       (not_authed, invalid_auth, channel_not_found, no_text,
                                       invalid_blocks, invalid_arguments, message_not_found, thread_not_found)
  POST /actions/{T}/{id}/{secret}      response_url of an interaction (ephemeral replies)

Teams (`make_teams_app`):

  POST /workflows/{id}/triggers/manual/paths/invoke?api-version=..&sp=..&sv=..&sig=..
                                       {"type": "message", "attachments": [Adaptive Card]} -> 202 Accepted;
                                       401 for a missing/wrong sig, 400 for an invalid card, 413 over 28 KB

Both (and `make_app()`, which serves both):

  GET  /standin/requests[?kind=]       recorded requests (tokens, webhook secrets and sigs masked)
  GET  /standin/messages               Slack messages by channel, with thread replies
  POST /standin/faults                 {"mode": "500"|"429"|"hang"|"clear", "count": 1, "kind": ..., "retry_after": 1}
  POST /standin/reset                  forget requests, messages and faults

Block Kit and Adaptive Card bodies are checked against JSON schemas written from the providers'
reference pages (`SLACK_BLOCKS_SCHEMA`, `ADAPTIVE_CARD_SCHEMA`): only the block/element types
pagerstream uses are accepted, unknown properties are refused, and the documented length and count
limits are enforced. Deliberate strictness beyond the real services: JSON bodies only (Slack also
takes form posts); a `thread_ts` that names no message is refused; Teams cards are validated
synchronously (the real workflow answers 202 and fails later in its run history); Adaptive Card
actions other than Action.OpenUrl are refused (a Workflows webhook has no bot to receive them).

Run `python -m pagerstream.streams.notify_standins --port 8089` (or `run(host, port)`) for manual use.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import re
import time
from typing import Any, Iterable

from aiohttp import web
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

log = logging.getLogger("pagerstream.notify_standins")

SLACK_MAX_TEXT = 40_000
TEAMS_MAX_BYTES = 28 * 1024
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")
TS_RE = re.compile(r"^\d{10}\.\d{6}$")
BOT_TOKEN_RE = re.compile(r"^xox[bp]-[A-Za-z0-9-]{6,}$")

# ------------------------------------------------------------------------------------------------
# Block Kit (docs.slack.dev/reference/block-kit): the blocks and elements pagerstream sends
# ------------------------------------------------------------------------------------------------


def _plain(max_len: int) -> dict[str, Any]:
    return {"type": "object", "required": ["type", "text"], "additionalProperties": False,
            "properties": {"type": {"const": "plain_text"}, "text": {"type": "string", "minLength": 1, "maxLength": max_len},
                           "emoji": {"type": "boolean"}}}


def _mrkdwn(max_len: int) -> dict[str, Any]:
    return {"type": "object", "required": ["type", "text"], "additionalProperties": False,
            "properties": {"type": {"const": "mrkdwn"}, "text": {"type": "string", "minLength": 1, "maxLength": max_len},
                           "verbatim": {"type": "boolean"}}}


def _text(max_len: int) -> dict[str, Any]:
    return {"oneOf": [_plain(max_len), _mrkdwn(max_len)]}


_BLOCK_ID = {"type": "string", "minLength": 1, "maxLength": 255}
_URL = {"type": "string", "maxLength": 3000, "pattern": r"^https?://\S+$"}
_CONFIRM = {"type": "object", "required": ["title", "text", "confirm", "deny"], "additionalProperties": False,
            "properties": {"title": _plain(100), "text": _text(300), "confirm": _plain(30), "deny": _plain(30),
                           "style": {"enum": ["primary", "danger"]}}}
_BUTTON = {"type": "object", "required": ["type", "text"], "additionalProperties": False,
           "properties": {"type": {"const": "button"}, "text": _plain(75),
                          "action_id": {"type": "string", "minLength": 1, "maxLength": 255},
                          "url": _URL, "value": {"type": "string", "maxLength": 2000},
                          "style": {"enum": ["primary", "danger"]}, "confirm": _CONFIRM,
                          "accessibility_label": {"type": "string", "maxLength": 75}}}
_IMAGE_ELEMENT = {"type": "object", "required": ["type", "image_url", "alt_text"], "additionalProperties": False,
                  "properties": {"type": {"const": "image"}, "image_url": _URL,
                                 "alt_text": {"type": "string", "minLength": 1, "maxLength": 2000}}}

SLACK_BLOCKS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "array", "maxItems": 50,
    "items": {"oneOf": [
        {"type": "object", "required": ["type"], "additionalProperties": False,
         "anyOf": [{"required": ["text"]}, {"required": ["fields"]}],
         "properties": {"type": {"const": "section"}, "block_id": _BLOCK_ID, "text": _text(3000),
                        "fields": {"type": "array", "minItems": 1, "maxItems": 10, "items": _text(2000)},
                        "accessory": {"oneOf": [_BUTTON, _IMAGE_ELEMENT]}, "expand": {"type": "boolean"}}},
        {"type": "object", "required": ["type", "text"], "additionalProperties": False,
         "properties": {"type": {"const": "header"}, "block_id": _BLOCK_ID, "text": _plain(150)}},
        {"type": "object", "required": ["type"], "additionalProperties": False,
         "properties": {"type": {"const": "divider"}, "block_id": _BLOCK_ID}},
        {"type": "object", "required": ["type", "elements"], "additionalProperties": False,
         "properties": {"type": {"const": "context"}, "block_id": _BLOCK_ID,
                        "elements": {"type": "array", "minItems": 1, "maxItems": 10,
                                     "items": {"oneOf": [_text(3000), _IMAGE_ELEMENT]}}}},
        {"type": "object", "required": ["type", "elements"], "additionalProperties": False,
         "properties": {"type": {"const": "actions"}, "block_id": _BLOCK_ID,
                        "elements": {"type": "array", "minItems": 1, "maxItems": 25, "items": _BUTTON}}},
    ]},
}

# chat.postMessage / chat.update / incoming webhook bodies (blocks checked separately)
SLACK_MESSAGE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object", "additionalProperties": False,
    "properties": {
        "channel": {"type": "string", "minLength": 1}, "ts": {"type": "string"},
        "text": {"type": "string"}, "blocks": {"type": "array"},
        "thread_ts": {"type": "string", "pattern": r"^\d+\.\d+$"}, "reply_broadcast": {"type": "boolean"},
        "mrkdwn": {"type": "boolean"}, "unfurl_links": {"type": "boolean"}, "unfurl_media": {"type": "boolean"},
        "parse": {"enum": ["none", "full", "client"]}, "link_names": {"type": "boolean"},
        "icon_emoji": {"type": "string"}, "icon_url": {"type": "string"}, "username": {"type": "string"},
        "metadata": {"type": "object"}, "attachments": {"type": "array"},
    },
}

RESPONSE_URL_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object", "additionalProperties": False, "anyOf": [{"required": ["text"]}, {"required": ["blocks"]}],
    "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 3000},
                   "blocks": SLACK_BLOCKS_SCHEMA, "response_type": {"enum": ["ephemeral", "in_channel"]},
                   "replace_original": {"type": "boolean"}, "delete_original": {"type": "boolean"},
                   "thread_ts": {"type": "string"}},
}

# ------------------------------------------------------------------------------------------------
# Adaptive Cards (adaptivecards.io / learn.microsoft.com schema explorer): elements pagerstream uses
# ------------------------------------------------------------------------------------------------

_SPACING = {"enum": ["None", "Small", "Default", "Medium", "Large", "ExtraLarge", "Padding"]}
_COMMON = {"id": {"type": "string"}, "spacing": _SPACING, "separator": {"type": "boolean"},
           "isVisible": {"type": "boolean"}, "height": {"enum": ["auto", "stretch"]}}
_AC_URL = {"type": "string", "minLength": 1, "pattern": r"^https?://\S+$"}

ADAPTIVE_CARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {
        "OpenUrl": {"type": "object", "required": ["type", "url"], "additionalProperties": False,
                    "properties": {"type": {"const": "Action.OpenUrl"}, "url": _AC_URL, "title": {"type": "string"},
                                   "iconUrl": _AC_URL, "id": {"type": "string"}, "tooltip": {"type": "string"},
                                   "style": {"enum": ["default", "positive", "destructive"]},
                                   "isEnabled": {"type": "boolean"}, "mode": {"enum": ["primary", "secondary"]}}},
        "TextBlock": {"type": "object", "required": ["type", "text"], "additionalProperties": False,
                      "properties": {"type": {"const": "TextBlock"}, "text": {"type": "string"},
                                     "wrap": {"type": "boolean"}, "maxLines": {"type": "integer", "minimum": 1},
                                     "weight": {"enum": ["Default", "Lighter", "Bolder"]},
                                     "size": {"enum": ["Default", "Small", "Medium", "Large", "ExtraLarge"]},
                                     "color": {"enum": ["Default", "Dark", "Light", "Accent", "Good", "Warning", "Attention"]},
                                     "isSubtle": {"type": "boolean"}, "fontType": {"enum": ["Default", "Monospace"]},
                                     "horizontalAlignment": {"enum": ["Left", "Center", "Right"]},
                                     "style": {"enum": ["default", "heading"]}, **_COMMON}},
        "FactSet": {"type": "object", "required": ["type", "facts"], "additionalProperties": False,
                    "properties": {"type": {"const": "FactSet"},
                                   "facts": {"type": "array", "items": {
                                       "type": "object", "required": ["title", "value"], "additionalProperties": False,
                                       "properties": {"title": {"type": "string"}, "value": {"type": "string"}}}},
                                   **_COMMON}},
        "Image": {"type": "object", "required": ["type", "url"], "additionalProperties": False,
                  "properties": {"type": {"const": "Image"}, "url": _AC_URL, "altText": {"type": "string"},
                                 "size": {"enum": ["Auto", "Stretch", "Small", "Medium", "Large"]}, **_COMMON}},
        "Container": {"type": "object", "required": ["type", "items"], "additionalProperties": False,
                      "properties": {"type": {"const": "Container"}, "items": {"type": "array", "items": {"$ref": "#/$defs/Element"}},
                                     "style": {"enum": ["default", "emphasis", "good", "attention", "warning", "accent"]},
                                     "bleed": {"type": "boolean"}, **_COMMON}},
        "Column": {"type": "object", "required": ["type"], "additionalProperties": False,
                   "properties": {"type": {"const": "Column"}, "items": {"type": "array", "items": {"$ref": "#/$defs/Element"}},
                                  "width": {"type": ["string", "number"]}, **_COMMON}},
        "ColumnSet": {"type": "object", "required": ["type"], "additionalProperties": False,
                      "properties": {"type": {"const": "ColumnSet"}, "columns": {"type": "array", "items": {"$ref": "#/$defs/Column"}},
                                     **_COMMON}},
        "ActionSet": {"type": "object", "required": ["type", "actions"], "additionalProperties": False,
                      "properties": {"type": {"const": "ActionSet"}, "actions": {"type": "array", "items": {"$ref": "#/$defs/OpenUrl"}},
                                     **_COMMON}},
        "Element": {"oneOf": [{"$ref": "#/$defs/TextBlock"}, {"$ref": "#/$defs/FactSet"}, {"$ref": "#/$defs/Image"},
                              {"$ref": "#/$defs/Container"}, {"$ref": "#/$defs/ColumnSet"}, {"$ref": "#/$defs/ActionSet"}]},
        "AdaptiveCard": {"type": "object", "required": ["type", "version"], "additionalProperties": False,
                         "properties": {"type": {"const": "AdaptiveCard"}, "$schema": {"type": "string"},
                                        "version": {"type": "string", "pattern": r"^1\.[0-6]$"},
                                        "body": {"type": "array", "items": {"$ref": "#/$defs/Element"}},
                                        "actions": {"type": "array", "items": {"$ref": "#/$defs/OpenUrl"}},
                                        "fallbackText": {"type": "string"}, "speak": {"type": "string"},
                                        "lang": {"type": "string"}, "minHeight": {"type": "string"},
                                        "msteams": {"type": "object", "properties": {"width": {"enum": ["Full"]}}}}},
    },
    "type": "object", "required": ["type", "attachments"], "additionalProperties": False,
    "properties": {
        "type": {"const": "message"}, "summary": {"type": "string"}, "text": {"type": "string"},
        "attachments": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["contentType", "content"], "additionalProperties": False,
            "properties": {"contentType": {"const": "application/vnd.microsoft.card.adaptive"},
                           "contentUrl": {"type": ["string", "null"]}, "name": {"type": "string"},
                           "content": {"$ref": "#/$defs/AdaptiveCard"}}}},
    },
}

_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in (
    ("blocks", SLACK_BLOCKS_SCHEMA), ("message", SLACK_MESSAGE_SCHEMA), ("response_url", RESPONSE_URL_SCHEMA),
    ("teams", ADAPTIVE_CARD_SCHEMA))}
for _v in _VALIDATORS.values():
    Draft202012Validator.check_schema(_v.schema)


def schema_errors(which: str, instance: Any) -> list[str]:
    """Human-readable schema errors (the most relevant first), empty when valid."""
    errs = list(_VALIDATORS[which].iter_errors(instance))
    if not errs:
        return []
    first = best_match(errs)
    out = [f"{'/'.join(str(p) for p in first.absolute_path) or '(root)'}: {first.message[:300]}"]
    for e in errs[:5]:
        msg = f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message[:300]}"
        if msg not in out:
            out.append(msg)
    return out


def block_kit_problems(blocks: Any) -> list[str]:
    """Schema errors plus the rules a schema cannot say: unique block_ids, unique action_ids per block."""
    errors = schema_errors("blocks", blocks)
    if errors or not isinstance(blocks, list):
        return errors
    ids = [b.get("block_id") for b in blocks if b.get("block_id")]
    if len(ids) != len(set(ids)):
        errors.append("block_id values must be unique within a message")
    for i, b in enumerate(blocks):
        if b.get("type") == "actions":
            aids = [e.get("action_id") for e in b["elements"] if e.get("action_id")]
            if len(aids) != len(set(aids)):
                errors.append(f"{i}/elements: action_id values must be unique within the block")
    return errors


# ------------------------------------------------------------------------------------------------
# shared state: request log, faults
# ------------------------------------------------------------------------------------------------

class StandinState:
    def __init__(self, *, bot_tokens: Iterable[str] | None = None, channels: Iterable[str] | None = None,
                 webhooks: Iterable[str] | None = None, workflows: dict[str, str] | None = None) -> None:
        self.bot_tokens = set(bot_tokens) if bot_tokens is not None else None  # None: any well-formed token
        self.channels = set(channels) if channels is not None else None  # None: any channel ID
        self.webhooks = set(webhooks) if webhooks is not None else None  # "/services/T/B/X" paths
        self.workflows = dict(workflows) if workflows is not None else None  # workflow id -> sig
        self.requests: list[dict[str, Any]] = []
        self.messages: dict[str, dict[str, dict[str, Any]]] = {}  # channel -> ts -> message
        self.faults: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self._seq = itertools.count(1)
        self._ts = itertools.count(1)

    def reset(self) -> None:
        self.requests.clear()
        self.messages.clear()
        self.faults.clear()
        self.release.set()
        self.release = asyncio.Event()

    def next_ts(self) -> str:
        return f"{int(time.time()):010d}.{next(self._ts) % 1_000_000:06d}"

    def record(self, kind: str, request: web.Request, path: str, body: Any) -> dict[str, Any]:
        auth = request.headers.get("Authorization")
        if auth:
            scheme, _, token = auth.partition(" ")
            auth = f"{scheme} {token[:5]}****" if token else "<malformed>"
        entry = {"seq": next(self._seq), "kind": kind, "method": request.method, "path": path,
                 "content_type": request.headers.get("Content-Type"), "authorization": auth,
                 "body": body, "status": None, "error": None, "errors": [], "fault": None}
        self.requests.append(entry)
        return entry

    def take_fault(self, kind: str) -> dict[str, Any] | None:
        for f in self.faults:
            if f.get("kind") in (None, kind) and f["count"] > 0:
                f["count"] -= 1
                if f["count"] == 0:
                    self.faults.remove(f)
                return f
        return None


STATE_KEY = web.AppKey("notify_standin_state", StandinState)


def standin_state(app: web.Application) -> StandinState:
    return app[STATE_KEY]


async def _fault_response(state: StandinState, entry: dict[str, Any], fault: dict[str, Any],
                          style: str) -> web.Response:
    mode = fault["mode"]
    entry["fault"] = mode
    if mode == "hang":
        await state.release.wait()
        entry["status"] = 503
        return web.Response(status=503, text="released")
    if mode == "429":
        ra = str(fault.get("retry_after", 1))
        entry["status"] = 429
        if style == "slack_api":
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": ra})
        if style == "teams":
            return web.json_response({"error": {"code": "TooManyRequests", "message": "Rate limit is exceeded."}},
                                     status=429, headers={"Retry-After": ra})
        return web.Response(status=429, text="rate_limited", headers={"Retry-After": ra})
    entry["status"] = 500
    return web.Response(status=500, text="rollup_error" if style == "slack_webhook" else "internal error")


async def _read_json(request: web.Request) -> tuple[Any, str | None]:
    raw = await request.read()
    ctype = request.headers.get("Content-Type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        return raw.decode("utf-8", "replace")[:2000], "content type must be application/json"
    try:
        return json.loads(raw.decode("utf-8")), None
    except (UnicodeDecodeError, ValueError) as e:
        return raw.decode("utf-8", "replace")[:2000], f"body is not JSON ({type(e).__name__})"


# ------------------------------------------------------------------------------------------------
# Slack
# ------------------------------------------------------------------------------------------------

def _message_problem(body: Any, *, needs_channel: bool) -> str | None:
    """The Slack error code for a chat.postMessage / chat.update / webhook body, None when fine."""
    if not isinstance(body, dict):
        return "invalid_arguments"
    top = {k: v for k, v in body.items() if k != "blocks"}
    if schema_errors("message", {**top, **({"blocks": []} if "blocks" in body else {})}):
        return "invalid_arguments"
    if needs_channel and not body.get("channel"):
        return "channel_not_found"
    has_text = isinstance(body.get("text"), str) and body["text"].strip()
    if not has_text and not body.get("blocks") and not body.get("attachments"):
        return "no_text"
    if isinstance(body.get("text"), str) and len(body["text"]) > SLACK_MAX_TEXT:
        return "msg_too_long"
    if "blocks" in body and block_kit_problems(body["blocks"]):
        return "invalid_blocks"
    return None


async def _slack_webhook(request: web.Request) -> web.Response:
    state = standin_state(request.app)
    path = request.path
    masked = "/".join(path.split("/")[:4]) + "/****"
    body, bad = await _read_json(request)
    entry = state.record("webhook", request, masked, body)
    if (fault := state.take_fault("webhook")) is not None:
        return await _fault_response(state, entry, fault, "slack_webhook")

    def answer(status: int, text: str) -> web.Response:
        entry["status"], entry["error"] = status, (None if status == 200 else text)
        return web.Response(status=status, text=text, content_type="text/html")

    if state.webhooks is not None and path not in state.webhooks:
        return answer(404, "no_service")
    if bad:
        entry["errors"] = [bad]
        return answer(400, "invalid_payload")
    if isinstance(body, dict) and "blocks" in body:
        entry["errors"] = block_kit_problems(body["blocks"])
    problem = _message_problem(body, needs_channel=False)
    if problem:
        code = {"invalid_arguments": "invalid_payload", "msg_too_long": "invalid_payload"}.get(problem, problem)
        return answer(400, code)
    channel = "webhook:" + request.match_info["team"]
    ts = state.next_ts()
    state.messages.setdefault(channel, {})[ts] = {"ts": ts, "text": body.get("text"), "blocks": body.get("blocks"),
                                                  "replies": [], "updates": 0}
    return answer(200, "ok")


def _slack_auth(state: StandinState, request: web.Request) -> str | None:
    auth = request.headers.get("Authorization")
    if not auth:
        return "not_authed"
    scheme, _, token = auth.partition(" ")
    if scheme != "Bearer" or not token:
        return "invalid_auth"
    if state.bot_tokens is not None:
        return None if token in state.bot_tokens else "invalid_auth"
    return None if BOT_TOKEN_RE.match(token) else "invalid_auth"


async def _slack_api(request: web.Request) -> web.Response:
    state = standin_state(request.app)
    method = request.match_info["method"]
    body, bad = await _read_json(request)
    entry = state.record(method, request, request.path, body)
    if (fault := state.take_fault(method)) is not None:
        return await _fault_response(state, entry, fault, "slack_api")

    def fail(error: str, errors: list[str] | None = None) -> web.Response:
        entry["status"], entry["error"], entry["errors"] = 200, error, errors or []
        return web.json_response({"ok": False, "error": error})

    if method not in ("chat.postMessage", "chat.update"):
        entry["status"] = 404
        return web.json_response({"ok": False, "error": "unknown_method"}, status=404)
    if (why := _slack_auth(state, request)) is not None:
        return fail(why)
    if bad:
        return fail("invalid_arguments", [bad])
    problem = _message_problem(body, needs_channel=True)
    if problem:
        return fail(problem, block_kit_problems(body.get("blocks")) if problem == "invalid_blocks" else [])
    channel = body["channel"]
    if not CHANNEL_ID.match(channel) or (state.channels is not None and channel not in state.channels):
        return fail("channel_not_found")
    msgs = state.messages.setdefault(channel, {})
    warning = None if "charset=utf-8" in (request.headers.get("Content-Type") or "").lower().replace(" ", "") \
        else "missing_charset"
    if method == "chat.postMessage":
        ts = state.next_ts()
        msg = {"type": "message", "ts": ts, "text": body.get("text"), "blocks": body.get("blocks")}
        if body.get("thread_ts"):
            parent = msgs.get(body["thread_ts"])
            if parent is None:
                return fail("thread_not_found")
            msg["thread_ts"] = body["thread_ts"]
            parent["replies"].append(msg)
        else:
            msgs[ts] = {**msg, "replies": [], "updates": 0}
        out = {"ok": True, "channel": channel, "ts": ts, "message": {k: v for k, v in msg.items() if v is not None}}
    else:
        if not isinstance(body.get("ts"), str) or not TS_RE.match(body["ts"]):
            return fail("invalid_arguments", ["ts must be a message timestamp"])
        msg = msgs.get(body["ts"])
        if msg is None:
            return fail("message_not_found")
        if "blocks" in body:
            msg["blocks"] = body["blocks"]
        if "text" in body:
            msg["text"] = body["text"]
        msg["updates"] += 1
        out = {"ok": True, "channel": channel, "ts": body["ts"], "text": msg.get("text"),
               "message": {"type": "message", "text": msg.get("text"), "blocks": msg.get("blocks")}}
    if warning:
        out["warning"] = warning
    entry["status"] = 200
    entry["ts"] = out["ts"]
    return web.json_response(out)


async def _slack_response_url(request: web.Request) -> web.Response:
    state = standin_state(request.app)
    body, bad = await _read_json(request)
    entry = state.record("response_url", request, "/".join(request.path.split("/")[:4]) + "/****", body)
    errors = [bad] if bad else schema_errors("response_url", body)
    entry["errors"] = errors
    entry["status"] = 400 if errors else 200
    if errors:
        return web.Response(status=400, text="invalid_payload")
    return web.Response(status=200, text="ok")


# ------------------------------------------------------------------------------------------------
# Teams (Workflows webhook)
# ------------------------------------------------------------------------------------------------

async def _teams_workflow(request: web.Request) -> web.Response:
    state = standin_state(request.app)
    wid = request.match_info["workflow_id"]
    raw = await request.read()
    query = {k: ("****" if k == "sig" else v) for k, v in request.query.items()}
    body, bad = None, None
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        bad = f"body is not JSON ({type(e).__name__})"
    entry = state.record("teams", request, request.path, body if bad is None else raw.decode("utf-8", "replace")[:2000])
    entry["query"] = query
    if (fault := state.take_fault("teams")) is not None:
        return await _fault_response(state, entry, fault, "teams")

    def error(status: int, code: str, message: str, errors: list[str] | None = None) -> web.Response:
        entry["status"], entry["error"], entry["errors"] = status, code, errors or []
        return web.json_response({"error": {"code": code, "message": message}}, status=status)

    sig = request.query.get("sig")
    if not sig:
        return error(401, "DirectApiAuthorizationRequired", "The request must be authenticated: sig is missing.")
    if state.workflows is not None and state.workflows.get(wid) != sig:
        return error(401, "DirectApiInvalidAuthorizationSignature", "The provided signature is not valid.")
    missing = [q for q in ("api-version", "sp", "sv") if not request.query.get(q)]
    if missing:
        return error(400, "InvalidQueryParameters", "missing query parameters: " + ", ".join(missing))
    if (request.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
        return error(415, "UnsupportedMediaType", "The request content type must be application/json.")
    if bad:
        return error(400, "InvalidRequestContent", bad)
    if len(raw) > TEAMS_MAX_BYTES:
        return error(413, "MessageSizeTooBig", f"the message is larger than {TEAMS_MAX_BYTES} bytes")
    errors = schema_errors("teams", body)
    if errors:
        return error(400, "InvalidAdaptiveCard", "the body is not a message with a valid Adaptive Card", errors)
    entry["status"] = 202
    state.messages.setdefault("teams:" + wid, {})[state.next_ts()] = {"card": body["attachments"][0]["content"]}
    return web.Response(status=202)


# ------------------------------------------------------------------------------------------------
# control endpoints and app factories
# ------------------------------------------------------------------------------------------------

async def _get_requests(request: web.Request) -> web.Response:
    state = standin_state(request.app)
    kind = request.query.get("kind")
    items = [r for r in state.requests if kind is None or r["kind"] == kind]
    return web.json_response({"count": len(items), "requests": items})


async def _get_messages(request: web.Request) -> web.Response:
    return web.json_response(standin_state(request.app).messages)


async def _post_faults(request: web.Request) -> web.Response:
    state = standin_state(request.app)
    try:
        spec = await request.json()
        if not isinstance(spec, dict) or spec.get("mode") not in ("500", "429", "hang", "clear"):
            raise ValueError("mode must be one of 500, 429, hang, clear")
        count = int(spec.get("count", 1))
        if count < 1:
            raise ValueError("count must be positive")
    except (ValueError, TypeError) as e:
        return web.json_response({"error": str(e)}, status=400)
    if spec["mode"] == "clear":
        state.faults.clear()
        state.release.set()
        state.release = asyncio.Event()
    else:
        state.faults.append({"mode": spec["mode"], "count": count, "kind": spec.get("kind"),
                             "retry_after": int(spec.get("retry_after", 1))})
    return web.json_response({"faults": state.faults})


async def _post_reset(request: web.Request) -> web.Response:
    standin_state(request.app).reset()
    return web.json_response({"status": "reset"})


async def _release_hangs(app: web.Application) -> None:
    app[STATE_KEY].release.set()


def _base_app(state: StandinState | None, **kw: Any) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[STATE_KEY] = state or StandinState(**kw)
    app.router.add_get("/standin/requests", _get_requests)
    app.router.add_get("/standin/messages", _get_messages)
    app.router.add_post("/standin/faults", _post_faults)
    app.router.add_post("/standin/reset", _post_reset)
    app.on_shutdown.append(_release_hangs)
    return app


def add_slack_routes(app: web.Application) -> None:
    app.router.add_post("/services/{team}/{bot}/{secret}", _slack_webhook)
    app.router.add_post("/api/{method}", _slack_api)
    app.router.add_post("/actions/{team}/{action_id}/{secret}", _slack_response_url)


def add_teams_routes(app: web.Application) -> None:
    app.router.add_post("/workflows/{workflow_id}/triggers/manual/paths/invoke", _teams_workflow)


def make_slack_app(*, bot_tokens: Iterable[str] | None = None, channels: Iterable[str] | None = None,
                   webhooks: Iterable[str] | None = None) -> web.Application:
    """Slack stand-in. `bot_tokens` / `channels` / `webhooks` (paths "/services/T/B/X") restrict what
    is accepted; None accepts any well-formed value."""
    app = _base_app(None, bot_tokens=bot_tokens, channels=channels, webhooks=webhooks)
    add_slack_routes(app)
    return app


def make_teams_app(*, workflows: dict[str, str] | None = None) -> web.Application:
    """Teams Workflows stand-in. `workflows` maps workflow id -> the sig its URL must carry; None
    accepts any non-empty sig."""
    app = _base_app(None, workflows=workflows)
    add_teams_routes(app)
    return app


def make_app(**kw: Any) -> web.Application:
    """Both stand-ins on one app (shared request log)."""
    app = _base_app(None, **kw)
    add_slack_routes(app)
    add_teams_routes(app)
    return app


def run(host: str = "127.0.0.1", port: int = 8089, **kw: Any) -> None:
    """Serve both stand-ins until interrupted. Point destinations at
    http://host:port/api (slack_api `api_url`), http://host:port/services/T0/B0/<any> (webhook) and
    http://host:port/workflows/<id>/triggers/manual/paths/invoke?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=<any>."""
    logging.basicConfig(level=logging.INFO)
    log.info("Slack/Teams stand-ins on http://%s:%d (any xoxb- token, any channel ID, any sig)", host, port)
    web.run_app(make_app(**kw), host=host, port=port, access_log=None, print=None)


def _main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8089)
    a = p.parse_args(argv)
    run(a.host, a.port)


if __name__ == "__main__":
    _main()

__all__ = ["ADAPTIVE_CARD_SCHEMA", "SLACK_BLOCKS_SCHEMA", "SLACK_MESSAGE_SCHEMA", "StandinState", "add_slack_routes",
           "add_teams_routes", "block_kit_problems", "make_app", "make_slack_app", "make_teams_app", "run",
           "schema_errors", "standin_state"]
