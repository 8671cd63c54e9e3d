"""Microsoft Teams through a Workflows (Power Automate) webhook: one Adaptive Card per change.

Office 365 connectors ("Incoming Webhook") are being retired; the replacement is a workflow started
by the "When a Teams webhook request is received" trigger, whose URL (with its `sig` query parameter)
is the secret: ``{"url": "https://....powerplatform.com/.../workflows/<id>/triggers/manual/paths/invoke?...&sig=..."}``.

The request body is a message with one Adaptive Card attachment:

    {"type": "message",
     "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null,
                      "content": {"type": "AdaptiveCard", "version": "1.4", "body": [...], "actions": [...]}}]}

The workflow answers 202 Accepted and posts the card in its own run, so a card Teams rejects shows
up in the workflow's run history, not in the answer: the cards are checked against the Adaptive Card
schema in tests (streams/notify_standins.py). Workflows cannot call back into pagerstream (no bot),
so the card's buttons are Action.OpenUrl links: signed one-click acknowledge / resolve links from
`ctx.action_link(incident_id, action)` while the incident is open, and the runbook.
A workflow cannot edit a card it posted: every change is a new card.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import replace
from typing import Any, Callable, Mapping

import httpx

from pagerstream.notify.base import ChannelContext, DeliveryResult, Notification, classify_http
from pagerstream.notify.slack import install_log_redaction
from pagerstream.notify.templates import TemplateRenderError, is_open, validate_template_config

log = logging.getLogger("pagerstream.notify.teams")
install_log_redaction()  # httpx logs full URLs; the Workflows URL's sig is the credential

CARD_TEMPLATE = "teams.json.j2"
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
MAX_MESSAGE_BYTES = 28 * 1024  # Teams message size limit (Limits and specifications for Microsoft Teams)
_SHRINK_STEPS = (1000, 400, 150)

ActionLink = Callable[..., str]


def _open_url(title: str, url: str, style: str | None = None) -> dict[str, Any]:
    a: dict[str, Any] = {"type": "Action.OpenUrl", "title": title, "url": url}
    if style:
        a["style"] = style
    return a


def _takes_key(fn: Callable[..., str]) -> bool:
    """Does the link maker take a third argument (the PagerDuty incident key)?"""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


def card_actions(incident: Mapping[str, Any], action_link: ActionLink | None) -> list[dict[str, Any]]:
    """Acknowledge (while triggered) and Resolve links while open, and the runbook link.
    `action_link(incident_id, action)`, or `(incident_id, action, pd_dedup_key)` when it takes three."""
    out: list[dict[str, Any]] = []
    iid = str(incident.get("incident_id") or "")
    if action_link is not None and is_open(incident) and incident.get("change_detail") != "paused":
        extra = (str(incident.get("pd_dedup_key") or ""),) if _takes_key(action_link) and incident.get("pd_dedup_key") else ()

        def make(action: str) -> str:
            return action_link(iid, action, *extra)  # type: ignore[call-arg]

        if incident.get("state") == "triggered":
            out.append(_open_url("Acknowledge", make("acknowledge"), "positive"))
        out.append(_open_url("Resolve", make("resolve")))
    rb = incident.get("runbook_url")
    if isinstance(rb, str) and rb.lower().startswith(("https://", "http://")):
        out.append(_open_url("Runbook", rb))
    return out


def build_card(n: Notification, render: Callable[[str, Notification], str],
               action_link: ActionLink | None) -> dict[str, Any]:
    card = json.loads(render(CARD_TEMPLATE, n))
    if not isinstance(card, dict) or card.get("type") != "AdaptiveCard" or not isinstance(card.get("body", []), list):
        raise TemplateRenderError(f"{CARD_TEMPLATE} must produce an AdaptiveCard object with a 'body' list")
    card["actions"] = [a for a in card.get("actions") or [] if isinstance(a, dict)] + card_actions(n.incident, action_link)
    return card


def wrap(card: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message",
            "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": card}]}


def _shrink(node: Any, limit: int) -> Any:
    """Clip every long string in the card body (not URLs) to `limit` characters."""
    if isinstance(node, dict):
        return {k: (v if k in ("url", "type", "version", "$schema") else _shrink(v, limit)) for k, v in node.items()}
    if isinstance(node, list):
        return [_shrink(v, limit) for v in node]
    if isinstance(node, str) and len(node) > limit:
        return node[: limit - 1] + "…"
    return node


def _size(payload: Any) -> int:
    return len(json.dumps(payload, ensure_ascii=False).encode("utf-8"))


def build_payload(n: Notification, render: Callable[[str, Notification], str],
                  action_link: ActionLink | None) -> dict[str, Any]:
    """The request body, within Teams' 28 KB message limit (long texts clipped); ValueError if it
    still does not fit."""
    payload = wrap(build_card(n, render, action_link))
    for limit in _SHRINK_STEPS:
        if _size(payload) <= MAX_MESSAGE_BYTES:
            return payload
        card = payload["attachments"][0]["content"]
        card["body"] = _shrink(card.get("body") or [], limit)
    if _size(payload) > MAX_MESSAGE_BYTES:
        raise ValueError(f"the Teams card is larger than {MAX_MESSAGE_BYTES} bytes even with texts clipped")
    return payload


def _secret_url(n: Notification, ctx: ChannelContext) -> str | None:
    if not n.destination.secret_ref:
        return None
    try:
        creds = ctx.secret(n.destination.secret_ref) or {}
    except Exception as e:  # noqa: BLE001 - say which secret failed, never why in detail
        log.warning("destination %s: secret %s unavailable (%s)", n.destination.name, n.destination.secret_ref,
                    type(e).__name__)
        return None
    for k in ("url", "webhook_url"):
        v = creds.get(k)
        if v is not None and not isinstance(v, str) and hasattr(v, "get"):
            v = v.get()
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


class TeamsChannel:
    """Teams Workflows webhook: POST the card, 202 Accepted is success."""

    kind = "teams"

    async def send(self, n: Notification, ctx: ChannelContext) -> DeliveryResult:
        url = _secret_url(n, ctx)
        if not url:
            return DeliveryResult(ok=False, permanent=True, answer="teams: the destination's secret has no 'url'")
        try:
            payload = build_payload(n, ctx.render, ctx.action_link)
        except (TemplateRenderError, ValueError) as e:
            return DeliveryResult(ok=False, permanent=True, answer=f"teams: {e}")
        try:
            resp = await ctx.http.post(url, content=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
                                       headers={"Content-Type": "application/json; charset=utf-8"})
        except httpx.TransportError as e:
            kind = "timeout" if isinstance(e, httpx.TimeoutException) else "connection error"
            return DeliveryResult(ok=False, permanent=False, answer=f"teams workflow: {kind} ({type(e).__name__})")
        res = classify_http(resp)
        return replace(res, answer=f"teams workflow: HTTP {resp.status_code} {resp.text.strip()[:200]}".rstrip())


CHANNELS = {TeamsChannel.kind: TeamsChannel}


def validate_config(config: Mapping[str, Any]) -> list[str]:
    """Config problems of a `teams` destination (secret: {"url": <workflow trigger URL>}); called by
    pagerstream.notify.config for every `teams` destination."""
    problems = validate_template_config(config)
    for k in ("url", "webhook_url"):
        if k in config:
            problems.append(f"{k}: the workflow URL carries its signature; put it in the destination's secret")
    problems += [f"{k}: unknown setting" for k in sorted(set(config) - {"template", "templates", "links", "url",
                                                                          "webhook_url"})]
    return problems

__all__ = ["CARD_CONTENT_TYPE", "CHANNELS", "MAX_MESSAGE_BYTES", "TeamsChannel", "build_card", "build_payload",
           "card_actions", "validate_config", "wrap"]
