"""Slack: two notification channels, the interactivity endpoint, and acting on PagerDuty from Slack.

Channels (see docs/notifications.md, "Slack"):

* `SlackWebhookChannel` (kind ``slack_webhook``): POSTs the Block Kit message to an incoming webhook
  (the URL is the secret: ``{"url": "https://hooks.slack.com/services/..."}``). A webhook cannot edit
  what it posted, so every change is a new message. Buttons only with ``config.buttons: true`` (the
  webhook's app must have interactivity pointed at `slack_interactions_handler`).
* `SlackApiChannel` (kind ``slack_api``): a bot token (secret ``{"token": "xoxb-..."}``) and
  ``config.channel`` (a channel ID). The first notification of an incident is `chat.postMessage`;
  its ``{channel, ts}`` is kept through `ctx.refs`, and every later change is `chat.update` of that
  message plus a reply in its thread (`thread_ts`): one thread per incident. The ref also records the
  last version shown and replied to, so a replay neither duplicates a reply nor rolls the message
  back to an older state.

While an incident is open the message carries Acknowledge / Resolve / Escalate buttons (action_id
``pagerstream_ack|resolve|escalate``, value ``{"incident_id", "pd_dedup_key"}`` as compact JSON).

Interactivity: `slack_interactions_handler(signing_secrets, on_action)` is the aiohttp handler for
``POST /slack/interactions``: it checks Slack's v0 request signature (HMAC-SHA256 over
``v0:{timestamp}:{raw body}``, timestamps within 5 minutes, constant-time compare, several secrets for
rotation), answers 200 at once and runs ``on_action(action, incident_ref, user)`` in the background.
`act_through_pagerduty(rest_client, user_emails=...)` is such an `on_action`: it finds the PagerDuty
incident by ``incident_key`` = pd_dedup_key and acknowledges, resolves or escalates it (one level up)
with ``From`` = the clicking user's email when known.

Nothing here logs or returns a token, webhook URL or signing secret.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Iterable, Mapping
from urllib.parse import parse_qs

import httpx
from aiohttp import web

from pagerstream.notify.base import ChannelContext, DeliveryResult, Notification, classify_http
from pagerstream.notify.templates import TemplateRenderError, is_open, validate_template_config

log = logging.getLogger("pagerstream.notify.slack")

SLACK_API_URL = "https://slack.com/api"
MESSAGE_TEMPLATE = "slack.json.j2"
THREAD_TEMPLATE = "slack_thread.txt.j2"

ACTION_IDS: dict[str, str] = {
    "acknowledge": "pagerstream_ack",
    "resolve": "pagerstream_resolve",
    "escalate": "pagerstream_escalate",
}
ACTIONS_BY_ID: dict[str, str] = {v: k for k, v in ACTION_IDS.items()}

# Block Kit limits (block and element reference pages; see docs/notifications.md)
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_HEADER_TEXT = 150
MAX_CONTEXT_ELEMENTS = 10
MAX_BUTTON_VALUE = 2000
MAX_MESSAGE_TEXT = 40_000

# Web API `error` codes worth retrying; every other ok:false error is permanent.
RETRYABLE_ERRORS = frozenset({
    "ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
    "request_timeout", "team_added_to_org",
})
# chat.update errors meaning "that message can no longer be edited": start a new message/thread.
MESSAGE_GONE_ERRORS = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})

SIGNATURE_VERSION = "v0"
MAX_REQUEST_AGE_S = 300  # "more than five minutes from local time": possible replay


# ------------------------------------------------------------------------------------------------
# secret URLs in other libraries' logs
# ------------------------------------------------------------------------------------------------

_SECRET_URL_PARTS = (
    (re.compile(r"(/services/[^/\s\"']+/[^/\s\"']+/)[^\s\"'?#]+"), r"\1****"),  # Slack incoming webhook
    (re.compile(r"(/actions/[^/\s\"']+/[^/\s\"']+/)[^\s\"'?#]+"), r"\1****"),   # Slack response_url
    (re.compile(r"([?&]sig=)[^&\s\"'#]+"), r"\1****"),                             # Workflows webhook SAS sig
)


class SecretURLFilter(logging.Filter):
    """Masks the secret parts of webhook URLs in log records: httpx logs every request's full URL at
    INFO ("HTTP Request: POST https://hooks.slack.com/services/T/B/<secret>"), and for incoming
    webhooks and Workflows triggers the URL is the credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is the logging module's business
            return True
        red = text
        for pattern, repl in _SECRET_URL_PARTS:
            red = pattern.sub(repl, red)
        if red != text:
            record.msg, record.args = red, ()
        return True


def install_log_redaction(logger_names: Iterable[str] = ("httpx", "httpcore", "aiohttp.access", "aiohttp.client")) -> None:
    """Attach `SecretURLFilter` to the loggers that print request URLs (idempotent; done on import)."""
    for name in logger_names:
        lg = logging.getLogger(name)
        if not any(isinstance(f, SecretURLFilter) for f in lg.filters):
            lg.addFilter(SecretURLFilter())


install_log_redaction()


# ------------------------------------------------------------------------------------------------
# the message
# ------------------------------------------------------------------------------------------------

def action_value(incident: Mapping[str, Any]) -> str:
    """The buttons' `value`: which incident, for the interactivity handler."""
    value = json.dumps({"incident_id": str(incident.get("incident_id") or ""),
                        "pd_dedup_key": str(incident.get("pd_dedup_key") or "")},
                       separators=(",", ":"), ensure_ascii=False)
    if len(value) > MAX_BUTTON_VALUE:
        raise ValueError("incident id and dedup key do not fit a Slack button value (2000 characters)")
    return value


def parse_action_value(value: Any) -> dict[str, str] | None:
    """`action_value` read back; None when it is not one of ours."""
    try:
        obj = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    iid, key = obj.get("incident_id"), obj.get("pd_dedup_key")
    if not isinstance(iid, str) or not isinstance(key, str) or not key:
        return None
    return {"incident_id": iid, "pd_dedup_key": key}


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": False}


def actions_block(incident: Mapping[str, Any]) -> dict[str, Any] | None:
    """Acknowledge (while triggered), Resolve and Escalate buttons; None when the incident is closed
    or still held back by the transient pause (PagerDuty has no incident to act on yet)."""
    if not is_open(incident) or incident.get("change_detail") == "paused":
        return None
    value = action_value(incident)
    buttons: list[dict[str, Any]] = []
    if incident.get("state") == "triggered":
        buttons.append({"type": "button", "action_id": ACTION_IDS["acknowledge"], "text": _plain("Acknowledge"),
                        "value": value, "style": "primary"})
    buttons.append({"type": "button", "action_id": ACTION_IDS["resolve"], "text": _plain("Resolve"),
                    "value": value})
    buttons.append({"type": "button", "action_id": ACTION_IDS["escalate"], "text": _plain("Escalate"),
                    "value": value, "style": "danger",
                    "confirm": {"title": _plain("Escalate in PagerDuty?"),
                                "text": _plain("This pages the next level of the escalation policy."),
                                "confirm": _plain("Escalate"), "deny": _plain("Cancel")}})
    version = incident.get("version") or 0
    return {"type": "actions", "block_id": f"pagerstream_actions_v{version}", "elements": buttons}


def _clip(s: Any, n: int) -> Any:
    return s[: n - 1] + "…" if isinstance(s, str) and len(s) > n else s


def fit_blocks(blocks: list[Any], *, reserve: int = 0) -> list[Any]:
    """Keep a template's blocks within Block Kit's limits (text lengths, field counts, block count)."""
    out: list[Any] = []
    for b in blocks[: MAX_BLOCKS - reserve]:
        if not isinstance(b, dict):
            raise ValueError("every Slack block must be an object")
        b = copy.deepcopy(b)
        t = b.get("type")
        if t == "section":
            if isinstance(b.get("text"), dict):
                b["text"]["text"] = _clip(b["text"].get("text"), MAX_SECTION_TEXT)
            if isinstance(b.get("fields"), list):
                b["fields"] = b["fields"][:MAX_FIELDS]
                for f in b["fields"]:
                    if isinstance(f, dict):
                        f["text"] = _clip(f.get("text"), MAX_FIELD_TEXT)
        elif t == "header" and isinstance(b.get("text"), dict):
            b["text"]["text"] = _clip(b["text"].get("text"), MAX_HEADER_TEXT)
        elif t == "context" and isinstance(b.get("elements"), list):
            b["elements"] = b["elements"][:MAX_CONTEXT_ELEMENTS]
            for e in b["elements"]:
                if isinstance(e, dict) and isinstance(e.get("text"), str):
                    e["text"] = _clip(e["text"], MAX_SECTION_TEXT)
        out.append(b)
    return out


def build_message(n: Notification, render: Callable[[str, Notification], str], *,
                  buttons: bool = True) -> dict[str, Any]:
    """`{"text", "blocks"}` for chat.postMessage / chat.update / incoming webhooks."""
    msg = json.loads(render(MESSAGE_TEMPLATE, n))
    if not isinstance(msg, dict) or not isinstance(msg.get("blocks", []), list):
        raise TemplateRenderError(f"{MESSAGE_TEMPLATE} must produce an object with a 'blocks' list")
    actions = actions_block(n.incident) if buttons else None
    blocks = fit_blocks(msg.get("blocks") or [], reserve=1 if actions else 0)
    if actions:
        blocks.append(actions)
    text = msg.get("text")
    if not isinstance(text, str) or not text.strip():
        text = str(n.incident.get("summary") or n.incident_id)
    out = {k: v for k, v in msg.items() if k not in ("channel", "ts", "thread_ts", "token")}
    out["text"] = _clip(text, MAX_MESSAGE_TEXT)
    out["blocks"] = blocks
    return out


# ------------------------------------------------------------------------------------------------
# answers -> DeliveryResult
# ------------------------------------------------------------------------------------------------

def _transport_failure(what: str, e: Exception) -> DeliveryResult:
    # type name only: an exception's text may contain the URL (a webhook URL is a secret)
    kind = "timeout" if isinstance(e, httpx.TimeoutException) else "connection error"
    return DeliveryResult(ok=False, permanent=False, answer=f"{what}: {kind} ({type(e).__name__})")


def api_result(method: str, resp: httpx.Response) -> tuple[DeliveryResult, dict[str, Any] | None]:
    """A Web API answer -> (DeliveryResult, decoded body when ok). HTTP 429 and retryable error codes
    are transient (with Retry-After); other `ok: false` errors are permanent."""
    base = classify_http(resp)
    try:
        data = resp.json()
    except ValueError:
        data = None
    if resp.status_code != 200 or not isinstance(data, dict):
        err = data.get("error") if isinstance(data, dict) else None
        perm = base.permanent if resp.status_code != 200 else False
        return replace(base, ok=False, permanent=perm,
                       answer=f"{method}: HTTP {resp.status_code}" + (f" {err}" if err else "")), None
    if data.get("ok") is True:
        warning = f" (warning: {data['warning']})" if data.get("warning") else ""
        return replace(base, ok=True, permanent=False, answer=f"{method}: ok{warning}"), data
    err = str(data.get("error") or "unknown_error")
    return replace(base, ok=False, permanent=err not in RETRYABLE_ERRORS, answer=f"{method}: {err}"), data


def _secret_value(creds: Mapping[str, Any], *keys: str) -> str | None:
    for k in keys:
        v = creds.get(k)
        if v is not None and not isinstance(v, str) and hasattr(v, "get"):
            v = v.get()  # a config.Secret
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def _credentials(n: Notification, ctx: ChannelContext, *keys: str) -> str | None:
    if not n.destination.secret_ref:
        return None
    try:
        creds = ctx.secret(n.destination.secret_ref)
    except Exception as e:  # noqa: BLE001 - whatever the secret store raises, say which secret, not why
        log.warning("destination %s: secret %s unavailable (%s)", n.destination.name, n.destination.secret_ref,
                    type(e).__name__)
        return None
    return _secret_value(creds or {}, *keys)


def _config_error(why: str) -> DeliveryResult:
    return DeliveryResult(ok=False, permanent=True, answer=why)


# ------------------------------------------------------------------------------------------------
# channels
# ------------------------------------------------------------------------------------------------

class SlackWebhookChannel:
    """Incoming webhook: one new message per change (webhooks cannot edit messages)."""

    kind = "slack_webhook"

    async def send(self, n: Notification, ctx: ChannelContext) -> DeliveryResult:
        url = _credentials(n, ctx, "url", "webhook_url")
        if not url:
            return _config_error("slack_webhook: the destination's secret has no 'url'")
        try:
            msg = build_message(n, ctx.render, buttons=bool(n.destination.config.get("buttons", False)))
        except (TemplateRenderError, ValueError) as e:
            return _config_error(f"slack_webhook: {e}")
        body = json.dumps(msg, ensure_ascii=False).encode("utf-8")
        try:
            resp = await ctx.http.post(url, content=body, headers={"Content-Type": "application/json; charset=utf-8"})
        except httpx.TransportError as e:
            return _transport_failure("incoming webhook", e)
        res = classify_http(resp)
        return replace(res, answer=f"incoming webhook: HTTP {resp.status_code} {resp.text.strip()[:200]}")


def _parse_ref(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        ref = json.loads(raw)
    except ValueError:
        # plain "CHANNEL:TS" (written by something simpler)
        channel, sep, ts = raw.partition(":")
        return {"channel": channel, "ts": ts, "v": 0, "r": 0} if sep and ts else None
    if not isinstance(ref, dict) or not ref.get("channel") or not ref.get("ts"):
        return None
    ref.setdefault("v", 0)
    ref.setdefault("r", 0)
    return ref


class SlackApiChannel:
    """Web API: chat.postMessage once per incident, then chat.update + a thread reply per change."""

    kind = "slack_api"

    async def _call(self, ctx: ChannelContext, api_url: str, token: str, method: str,
                    body: dict[str, Any]) -> tuple[DeliveryResult, dict[str, Any] | None]:
        try:
            resp = await ctx.http.post(
                f"{api_url}/{method}", content=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"})
        except httpx.TransportError as e:
            return _transport_failure(method, e), None
        return api_result(method, resp)

    async def _post_new(self, n: Notification, ctx: ChannelContext, api_url: str, token: str, channel: str,
                        msg: dict[str, Any], version: int) -> DeliveryResult:
        res, data = await self._call(ctx, api_url, token, "chat.postMessage",
                                     {"channel": channel, **msg, "unfurl_links": False, "unfurl_media": False})
        if not res.ok or data is None:
            return res
        ts, ch = str(data.get("ts") or ""), str(data.get("channel") or channel)
        if not ts:
            return replace(res, ok=False, permanent=False, answer="chat.postMessage: answer without ts")
        await ctx.refs.set(n.incident_id, n.destination.name,
                           json.dumps({"channel": ch, "ts": ts, "v": version, "r": version}))
        return replace(res, external_ref=ts)

    async def send(self, n: Notification, ctx: ChannelContext) -> DeliveryResult:
        cfg = n.destination.config or {}
        channel = str(cfg.get("channel") or "").strip()
        if not channel:
            return _config_error("slack_api: the destination has no 'channel'")
        token = _credentials(n, ctx, "token", "bot_token")
        if not token:
            return _config_error("slack_api: the destination's secret has no 'token'")
        api_url = str(cfg.get("api_url") or SLACK_API_URL).rstrip("/")
        try:
            msg = build_message(n, ctx.render, buttons=bool(cfg.get("buttons", True)))
            reply = ctx.render(THREAD_TEMPLATE, n) if cfg.get("thread_replies", True) else None
        except (TemplateRenderError, ValueError) as e:
            return _config_error(f"slack_api: {e}")
        version = int(n.incident.get("version") or 0)

        ref = _parse_ref(await ctx.refs.get(n.incident_id, n.destination.name))
        if ref is None:
            return await self._post_new(n, ctx, api_url, token, channel, msg, version)
        if version and version <= int(ref["r"]):
            return DeliveryResult(ok=True, answer=f"already delivered (v{ref['r']} shown)", external_ref=ref["ts"])

        answers = []
        if version > int(ref["v"]):  # never roll the message back to an older version
            res, data = await self._call(ctx, api_url, token, "chat.update",
                                         {"channel": ref["channel"], "ts": ref["ts"], **msg})
            if not res.ok:
                code = (data or {}).get("error")
                if code in MESSAGE_GONE_ERRORS:
                    log.info("destination %s: incident %s message can no longer be edited (%s); posting anew",
                             n.destination.name, n.incident_id, code)
                    return await self._post_new(n, ctx, api_url, token, channel, msg, version)
                return res
            ref["v"] = version
            await ctx.refs.set(n.incident_id, n.destination.name, json.dumps(ref))
            answers.append(res.answer)
        if reply is not None and reply.strip():
            res, _ = await self._call(ctx, api_url, token, "chat.postMessage",
                                      {"channel": ref["channel"], "thread_ts": ref["ts"], "text": reply[:MAX_MESSAGE_TEXT],
                                       "unfurl_links": False, "unfurl_media": False})
            if not res.ok:
                return replace(res, external_ref=ref["ts"])
            answers.append(f"thread reply: {res.answer}")
        ref["r"] = version
        await ctx.refs.set(n.incident_id, n.destination.name, json.dumps(ref))
        return DeliveryResult(ok=True, status=200, answer="; ".join(answers) or "nothing to change",
                              external_ref=ref["ts"])


CHANNELS = {SlackWebhookChannel.kind: SlackWebhookChannel, SlackApiChannel.kind: SlackApiChannel}

_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")


def _common_problems(config: Mapping[str, Any], known: set[str]) -> list[str]:
    problems = validate_template_config(config)
    for k in ("url", "webhook_url", "token", "bot_token", "signing_secret"):
        if k in config:
            problems.append(f"{k}: credentials belong in the destination's secret, not in config")
    for k in ("buttons", "thread_replies"):
        if k in config and not isinstance(config[k], bool):
            problems.append(f"{k}: expected true or false")
    unknown = set(config) - known - {"template", "templates", "links", "url", "webhook_url", "token", "bot_token",
                                     "signing_secret"}
    problems += [f"{k}: unknown setting" for k in sorted(unknown)]
    return problems


def validate_webhook_config(config: Mapping[str, Any]) -> list[str]:
    """Config problems of a `slack_webhook` destination (secret: {"url": ...})."""
    return _common_problems(config, {"buttons"})


def validate_api_config(config: Mapping[str, Any]) -> list[str]:
    """Config problems of a `slack_api` destination (secret: {"token": "xoxb-..."})."""
    problems = _common_problems(config, {"channel", "api_url", "buttons", "thread_replies"})
    ch = config.get("channel")
    if not isinstance(ch, str) or not ch:
        problems.append("channel: required (the channel ID, e.g. C0123456789)")
    elif not _CHANNEL_ID.match(ch):
        problems.append("channel: must be a channel ID (C…/G…/D…), not a name: chat.update only takes IDs")
    url = config.get("api_url")
    if url is not None and (not isinstance(url, str) or not url.startswith(("https://", "http://"))):
        problems.append("api_url: expected an http(s) URL")
    return problems


VALIDATORS = {SlackWebhookChannel.kind: validate_webhook_config, SlackApiChannel.kind: validate_api_config}


# ------------------------------------------------------------------------------------------------
# request signatures
# ------------------------------------------------------------------------------------------------

_SIG = re.compile(r"^v0=[0-9a-f]{64}$")


def _secret_bytes(s: Any) -> bytes:
    if s is not None and not isinstance(s, (str, bytes)) and hasattr(s, "get"):
        s = s.get()
    if isinstance(s, str):
        return s.encode("utf-8")
    return bytes(s or b"")


def signature_problem(raw_body: bytes, timestamp: str | None, signature: str | None,
                      secrets: Iterable[Any], *, now: float, max_age_s: float = MAX_REQUEST_AGE_S) -> str | None:
    """None when `signature` is Slack's v0 signature of this request under one of `secrets`, else why not.

    v0 = HMAC-SHA256(signing secret, "v0:" + timestamp + ":" + raw body), hex. The timestamp must be
    within `max_age_s` of now (either way); all secrets are compared in constant time."""
    if not timestamp or not timestamp.strip().isdigit():
        return "missing or malformed X-Slack-Request-Timestamp"
    if abs(now - int(timestamp)) > max_age_s:
        return "stale X-Slack-Request-Timestamp (possible replay)"
    sig = (signature or "").strip().lower()
    if not _SIG.match(sig):
        return "missing or malformed X-Slack-Signature"
    keys = [k for k in (_secret_bytes(s) for s in secrets) if k]
    if not keys:
        return "no signing secret configured"
    base = b"v0:" + timestamp.strip().encode("ascii") + b":" + raw_body
    ok = False
    for key in keys:
        want = "v0=" + hmac.new(key, base, hashlib.sha256).hexdigest()
        ok |= hmac.compare_digest(want.encode("ascii"), sig.encode("ascii"))
    return None if ok else "signature mismatch"


# ------------------------------------------------------------------------------------------------
# the interactivity endpoint
# ------------------------------------------------------------------------------------------------

OnAction = Callable[[str, dict[str, str], dict[str, Any]], Awaitable[Any]]
SecretsSource = Iterable[Any] | Callable[[], Iterable[Any]]


def _user_of(payload: Mapping[str, Any]) -> dict[str, Any]:
    u = payload.get("user") if isinstance(payload.get("user"), dict) else {}
    team = payload.get("team") if isinstance(payload.get("team"), dict) else {}
    return {"id": u.get("id"), "username": u.get("username"), "name": u.get("name"),
            "team_id": u.get("team_id") or team.get("id")}


def slack_interactions_handler(signing_secrets: SecretsSource, on_action: OnAction, *,
                               clock: Callable[[], float] = time.time, max_age_s: float = MAX_REQUEST_AGE_S,
                               respond_http: httpx.AsyncClient | None = None,
                               response_url_prefixes: Iterable[str] = ("https://hooks.slack.com/",),
                               ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """aiohttp handler for Slack's interactivity Request URL (mount it at POST /slack/interactions).

    Verifies the v0 signature over the raw body (401 otherwise), parses the form field `payload`, and
    for each of our buttons in a `block_actions` payload schedules ``on_action(action, incident_ref,
    user)`` with action "acknowledge" | "resolve" | "escalate", incident_ref {"incident_id",
    "pd_dedup_key"} and user {"id", "username", "name", "team_id"}. Answers 200 before the action
    runs (Slack wants an answer within 3 seconds). A request seen before (same signature, within the
    timestamp window) is answered 200 and not acted on again, nor is an action already under way for
    the same incident.

    When `respond_http` is given and `on_action` returns something with a `message` (or a str), the
    message is sent to the payload's `response_url` as an ephemeral reply (only to URLs starting with
    one of `response_url_prefixes`). `handler.drain()` waits for the scheduled actions (tests, shutdown).
    """
    prefixes = tuple(response_url_prefixes)
    tasks: set[asyncio.Task[Any]] = set()
    running: set[tuple[str, str]] = set()
    seen: dict[str, float] = {}

    def current_secrets() -> list[Any]:
        src = signing_secrets() if callable(signing_secrets) else signing_secrets
        return list(src or [])

    async def respond(url: Any, outcome: Any) -> None:
        text = outcome if isinstance(outcome, str) else getattr(outcome, "message", None)
        if respond_http is None or not text or not isinstance(url, str) or not url.startswith(prefixes):
            return
        try:
            r = await respond_http.post(url, json={"response_type": "ephemeral", "replace_original": False,
                                                   "text": str(text)[:3000]})
            if r.status_code >= 300:
                log.warning("Slack response_url answered HTTP %d", r.status_code)
        except httpx.HTTPError as e:
            log.warning("Slack response_url failed: %s", type(e).__name__)

    async def run(action: str, ref: dict[str, str], user: dict[str, Any], response_url: Any) -> None:
        key = (action, ref["pd_dedup_key"])
        try:
            outcome = await on_action(action, ref, user)
        except Exception:  # noqa: BLE001 - an action must never take the endpoint down
            log.exception("Slack action %s on incident %s failed", action, ref.get("incident_id"))
            outcome = f"Could not {action} the incident: internal error (see pagerstream logs)."
        finally:
            running.discard(key)
        await respond(response_url, outcome)

    async def handler(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        now = clock()
        sig = request.headers.get("X-Slack-Signature")
        why = signature_problem(raw, request.headers.get("X-Slack-Request-Timestamp"), sig,
                                current_secrets(), now=now, max_age_s=max_age_s)
        if why:
            log.warning("Slack interaction rejected: %s", why)
            return web.json_response({"error": "request signature verification failed"}, status=401)
        for s, expiry in list(seen.items()):
            if expiry < now:
                del seen[s]
        if sig in seen:
            log.warning("Slack interaction replayed (same signature); ignored")
            return web.Response(status=200)
        seen[str(sig)] = now + 2 * max_age_s
        if request.content_type != "application/x-www-form-urlencoded":
            return web.json_response({"error": "expected application/x-www-form-urlencoded"}, status=415)
        try:
            form = parse_qs(raw.decode("utf-8"), strict_parsing=True)
            payload = json.loads(form["payload"][0])
            if not isinstance(payload, dict):
                raise ValueError("payload is not an object")
        except (UnicodeDecodeError, ValueError, KeyError, IndexError):
            return web.json_response({"error": "expected a form field 'payload' holding a JSON object"}, status=400)
        if payload.get("type") != "block_actions":
            return web.Response(status=200)
        user = _user_of(payload)
        for act in payload.get("actions") or []:
            if not isinstance(act, dict) or act.get("action_id") not in ACTIONS_BY_ID:
                continue
            ref = parse_action_value(act.get("value"))
            if ref is None:
                continue
            action = ACTIONS_BY_ID[act["action_id"]]
            key = (action, ref["pd_dedup_key"])
            if key in running:
                continue
            running.add(key)
            t = asyncio.create_task(run(action, ref, user, payload.get("response_url")))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        return web.Response(status=200)

    async def drain() -> None:
        while tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)

    handler.drain = drain  # type: ignore[attr-defined]
    handler.tasks = tasks  # type: ignore[attr-defined]
    return handler


# ------------------------------------------------------------------------------------------------
# acting on PagerDuty
# ------------------------------------------------------------------------------------------------

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
VERBS = {"acknowledge": "Acknowledged", "resolve": "Resolved", "escalate": "Escalated"}


@dataclass(frozen=True)
class ActionOutcome:
    ok: bool
    action: str
    message: str  # for the user (ephemeral reply); no secrets
    pd_incident_id: str | None = None


def _as_user(rest: Any, email: str | None) -> Any:
    """The REST client acting as `email` (its `From`). PagerDutyREST fixes From per client, so this is
    a shallow copy sharing the HTTP client, pacer and credentials, with only `from_email` changed."""
    if not email or email == getattr(rest, "from_email", None):
        return rest
    c = copy.copy(rest)
    c.from_email = email
    return c


async def find_incident(rest: Any, pd_dedup_key: str) -> dict[str, Any] | None:
    """The PagerDuty incident whose incident_key is `pd_dedup_key` (GET /incidents?incident_key=...;
    with child alerts PagerDuty matches the alerts' alert_key instead). Prefers an open one."""
    out = await rest.get("/incidents", {"incident_key": pd_dedup_key, "date_range": "all", "limit": 25})
    items = [i for i in (out or {}).get("incidents") or [] if isinstance(i, dict)]
    if not items:
        return None
    open_ = [i for i in items if i.get("status") != "resolved"]
    pool = open_ or items
    return max(pool, key=lambda i: str(i.get("created_at") or ""))


async def escalation_level(rest: Any, incident: Mapping[str, Any]) -> tuple[int, int | None]:
    """(current level, number of levels in the policy or None when unknown). PagerDuty's incident
    object does not always carry the level; then it is the highest rule targeting a current assignee."""
    level = incident.get("escalation_level")
    rules: list[Any] | None = None
    ep_id = (incident.get("escalation_policy") or {}).get("id")
    if ep_id:
        try:
            rules = (await rest.get_escalation_policy(ep_id)).get("escalation_rules") or []
        except Exception as e:  # noqa: BLE001 - the level can still be known without the policy
            log.warning("escalation policy %s unreadable: %s", ep_id, type(e).__name__)
    if isinstance(level, int) and not isinstance(level, bool) and level >= 1:
        return level, (len(rules) if rules else None)
    assignees = {((a or {}).get("assignee") or {}).get("id") for a in incident.get("assignments") or []}
    found = 1
    for i, rule in enumerate(rules or [], start=1):
        if any((t or {}).get("id") in assignees for t in rule.get("targets") or []):
            found = i
    return found, (len(rules) if rules else None)


def act_through_pagerduty(rest_client: Any, *, user_emails: Mapping[str, str] | None = None,
                          add_note: bool = True) -> OnAction:
    """An `on_action` for `slack_interactions_handler` that acts through the PagerDuty REST client.

    `user_emails` maps Slack user IDs (or usernames) to PagerDuty users' emails: the action is taken
    with `From: <that email>`, else with the client's own From. With `add_note`, a note on the incident
    says who acted from Slack. Returns an `ActionOutcome` (its message is shown to the user)."""
    emails = dict(user_emails or {})

    def email_for(user: Mapping[str, Any]) -> str | None:
        for k in (user.get("id"), user.get("username")):
            e = emails.get(k) if k else None
            if isinstance(e, str) and _EMAIL.match(e):
                return e
        return None

    async def on_action(action: str, incident_ref: dict[str, str], user: dict[str, Any]) -> ActionOutcome:
        from pagerstream.pagerduty.rest import PagerDutyError

        if action not in VERBS:
            return ActionOutcome(False, action, f"Unknown action {action!r}.")
        key = incident_ref.get("pd_dedup_key") or ""
        who = user.get("name") or user.get("username") or user.get("id") or "someone"
        client = _as_user(rest_client, email_for(user))
        pd_id: str | None = None
        try:
            inc = await find_incident(client, key)
            if inc is None:
                return ActionOutcome(False, action, "PagerDuty has no incident for this alert (yet).")
            pd_id = str(inc["id"])
            if inc.get("status") == "resolved":
                return ActionOutcome(False, action, "The PagerDuty incident is already resolved.", pd_id)
            if action == "acknowledge":
                if inc.get("status") != "acknowledged":
                    await client.acknowledge_incident(pd_id)
                detail = ""
            elif action == "resolve":
                await client.resolve_incident(pd_id)
                detail = ""
            else:
                level, levels = await escalation_level(client, inc)
                if levels is not None and level >= levels:
                    return ActionOutcome(False, action, f"Already at the last escalation level ({level}).", pd_id)
                await client.reassign_incident(pd_id, escalation_level=level + 1)
                detail = f" to level {level + 1}"
            if add_note:
                try:
                    await client.create_incident_note(pd_id, f"{VERBS[action]}{detail} from Slack by {who}.")
                except PagerDutyError as e:
                    log.warning("note on PagerDuty incident %s failed: %s", pd_id, type(e).__name__)
        except PagerDutyError as e:
            log.warning("Slack %s on PagerDuty incident %s failed: %s", action, pd_id, e)
            return ActionOutcome(False, action, f"PagerDuty refused to {action}: {e}", pd_id)
        log.info("Slack user %s: %s PagerDuty incident %s%s", user.get("id"), action, pd_id, detail)
        return ActionOutcome(True, action, f"{VERBS[action]}{detail} in PagerDuty.", pd_id)

    return on_action


__all__ = [
    "ACTION_IDS", "ACTIONS_BY_ID", "ActionOutcome", "CHANNELS", "SecretURLFilter", "VALIDATORS",
    "install_log_redaction", "validate_api_config", "validate_webhook_config", "SlackApiChannel", "SlackWebhookChannel",
    "act_through_pagerduty", "action_value", "actions_block", "api_result", "build_message", "find_incident",
    "escalation_level", "fit_blocks", "parse_action_value", "signature_problem", "slack_interactions_handler",
]
