"""Channel ``webhook``: POST each incident change as a PagerDuty V3 webhook event, signed.

A receiver built for PagerDuty's V3 webhooks (or pagerstream's own /pagerduty/webhooks endpoint)
accepts these as they are:

* body: ``{"event": {id, event_type, resource_type: "incident", occurred_at, agent: null,
  client: {"name": "pagerstream"}, data: {<PagerDuty incident shape>, "pagerstream": {...}}}}``
  (contract: shared/contracts/pagerduty/webhooks-v3/webhook-v3-envelope.schema.json);
* ``X-PagerDuty-Signature: v1=<hex HMAC-SHA256 of the body>`` under the destination's signing secret
  (several ``v1=`` entries while the secret rotates), made by `pagerduty.webhooks.sign_body`;
* ``X-Webhook-Id``: a UUID derived from the notification key (the same on every retry and replay of
  the same change, so the receiver can dedupe on it, as with PagerDuty's own id);
* ``X-Webhook-Subscription``: the destination name.

IncidentEvent.change -> event_type: opened -> incident.triggered, acknowledged -> incident.acknowledged,
resolved / auto_resolved -> incident.resolved. Changes PagerDuty has no event for are sent under
pagerstream's own names in the incident namespace (receivers must accept unknown types, PagerDuty adds
types over time): alert_added -> incident.alert_added, alert_resolved -> incident.alert_resolved,
duplicate -> incident.alert_duplicated, dropped -> incident.alert_dropped.

Destination config: ``url`` (http(s); may also come from the secret, for URLs that embed a token),
optional ``headers`` (non-secret extra headers). Secret (``secret_ref``): ``{"signing_secret": "..."}``
or ``{"signing_secrets": ["new", "old"]}``, optional ``url`` and ``headers`` (e.g. Authorization).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from pagerstream.notify.base import ChannelContext, DeliveryResult, Notification, classify_http
from pagerstream.notify.outbound import result_for_exception
from pagerstream.pagerduty.webhooks import SIGNATURE_HEADER, SUBSCRIPTION_HEADER, WEBHOOK_ID_HEADER, sign_body

__all__ = ["CHANNEL", "EVENT_TYPES", "WebhookChannel", "envelope", "event_id", "event_type", "validate_config",
           "webhook_id"]

log = logging.getLogger("pagerstream.notify.webhook")

EVENT_TYPES = {
    "opened": "incident.triggered",
    "acknowledged": "incident.acknowledged",
    "resolved": "incident.resolved",
    "auto_resolved": "incident.resolved",
    "alert_added": "incident.alert_added",
    "alert_resolved": "incident.alert_resolved",
    "duplicate": "incident.alert_duplicated",
    "dropped": "incident.alert_dropped",
}
_ID_NAMESPACE = uuid.UUID("6f1d3c2e-8a4b-5e7f-9c0d-1a2b3c4d5e6f")
_RESERVED_HEADERS = {"content-type", "content-length", "host", SIGNATURE_HEADER.lower(), WEBHOOK_ID_HEADER.lower(),
                     SUBSCRIPTION_HEADER.lower()}


def event_type(incident: dict[str, Any]) -> str:
    change = str(incident.get("change") or "")
    return EVENT_TYPES.get(change, f"incident.{change}" if change.isidentifier() and change.islower()
                           else "incident.updated")


def webhook_id(key: str) -> str:
    """X-Webhook-Id: a name-based UUID of the notification key (stable across retries and replays)."""
    return str(uuid.uuid5(_ID_NAMESPACE, key))


def event_id(key: str) -> str:
    """event.id: 26 characters [A-Z2-7] (PagerDuty's ids look like that), from the key's SHA-256."""
    return base64.b32encode(hashlib.sha256(key.encode("utf-8")).digest()).decode("ascii")[:26]


def _iso(ms: Any) -> str | None:
    if not isinstance(ms, int) or isinstance(ms, bool):
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _ref(kind: str, value: Any) -> dict[str, Any] | None:
    if not value:
        return None
    return {"id": str(value), "type": f"{kind}_reference", "summary": str(value), "self": None, "html_url": None}


def _change(inc: dict[str, Any]) -> dict[str, Any]:
    return {"version": inc.get("version"), "event_id": inc.get("event_id"), "change": inc.get("change"),
            "change_detail": inc.get("change_detail"), "event_type": event_type(inc), "state": inc.get("state"),
            "reason": inc.get("reason"), "occurred_at": _iso(inc.get("at"))}


def envelope(n: Notification) -> dict[str, Any]:
    """The V3 webhook body for one notification (latest state; earlier bundled changes listed in
    data.pagerstream.bundled, oldest first)."""
    inc = n.incident
    severity = str(inc.get("severity") or "").lower()
    service = _ref("service", inc.get("service"))
    team = _ref("team", inc.get("team"))
    data = {
        "id": str(inc["incident_id"]),
        "type": "incident",
        "self": None,
        "html_url": str(n.destination.config.get("incident_url_template") or "").replace(
            "{incident_id}", str(inc["incident_id"])) or None,
        "status": inc.get("state"),
        "incident_key": inc.get("pd_dedup_key"),
        "created_at": _iso(inc.get("opened_at")),
        "title": inc.get("summary"),
        "service": service,
        "assignees": [],
        "escalation_policy": None,
        "teams": [team] if team else [],
        "priority": None,
        "urgency": "high" if severity in ("critical", "error") else "low",
        "conference_bridge": None,
        "resolve_reason": None,
        "pagerstream": {
            **_change(inc),
            "notification_key": n.key,
            "severity": inc.get("severity"),
            "tier": inc.get("tier"),
            "runbook_url": inc.get("runbook_url"),
            "alert_type": inc.get("alert_type"),
            "open_alerts": inc.get("open_alerts"),
            "total_alerts": inc.get("total_alerts"),
            "duplicates": inc.get("duplicates"),
            "acknowledged_at": _iso(inc.get("acknowledged_at")),
            "resolved_at": _iso(inc.get("resolved_at")),
            "pagerduty_action": inc.get("pagerduty_action"),
            "recurrence": inc.get("recurrence"),
            "bundled": [_change(b) for b in n.bundled],
        },
    }
    return {"event": {
        "id": event_id(n.key),
        "event_type": event_type(inc),
        "resource_type": "incident",
        "occurred_at": _iso(inc.get("at")) or _iso(inc.get("opened_at")),
        "agent": None,  # PagerDuty: "a null value might indicate an event triggered via automation"
        "client": {"name": "pagerstream"},
        "data": data,
    }}


def _url_problem(url: Any) -> str | None:
    if not isinstance(url, str) or not url:
        return "url: expected the receiver's http(s) URL"
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        return "url: expected an http(s) URL with a host"
    if u.username or u.password:
        return "url: credentials in the URL belong in the secret (secret_ref: {url: ...} or headers)"
    return None


def validate_config(config: dict[str, Any]) -> list[str]:
    """Checks for the notifications config loader (pagerstream/notify/config.py)."""
    problems = []
    if "url" in config and (why := _url_problem(config["url"])):
        problems.append(why)
    headers = config.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        problems.append("headers: expected a mapping of header name to text")
    elif bad := sorted(k for k in headers if k.lower() in _RESERVED_HEADERS | {"authorization"}):
        problems.append(f"headers: {', '.join(bad)} cannot be set here (Authorization goes in the secret)")
    if "incident_url_template" in config and not isinstance(config["incident_url_template"], str):
        problems.append("incident_url_template: expected text with {incident_id}")
    return problems


class WebhookChannel:
    kind = "webhook"

    async def send(self, n: Notification, ctx: ChannelContext) -> DeliveryResult:
        d = n.destination
        if not d.secret_ref:
            return DeliveryResult(ok=False, permanent=True, answer=f"destination {d.name!r} has no secret_ref: "
                                                                   "webhooks are always signed")
        try:
            secret = ctx.secret(d.secret_ref)
        except Exception as e:  # noqa: BLE001 - missing or undecryptable secret: a configuration problem
            return DeliveryResult(ok=False, permanent=True, answer=f"secret {d.secret_ref!r}: {type(e).__name__}")
        keys = secret.get("signing_secrets") or ([secret["signing_secret"]] if secret.get("signing_secret") else [])
        if not keys or not all(isinstance(k, str) and k for k in keys):
            return DeliveryResult(ok=False, permanent=True,
                                  answer=f"secret {d.secret_ref!r} has no signing_secret(s)")
        url = secret.get("url") or d.config.get("url")
        if why := _url_problem(url):
            return DeliveryResult(ok=False, permanent=True, answer=f"destination {d.name!r}: {why}")
        body = json.dumps(envelope(n), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        headers = {**{str(k): str(v) for k, v in (d.config.get("headers") or {}).items()},
                   **{str(k): str(v) for k, v in (secret.get("headers") or {}).items()},
                   "Content-Type": "application/json",
                   "User-Agent": "pagerstream-webhook/1.0",
                   SIGNATURE_HEADER: sign_body(body, keys),
                   WEBHOOK_ID_HEADER: webhook_id(n.key),
                   SUBSCRIPTION_HEADER: d.name}
        try:
            resp = await ctx.http.post(str(url), content=body, headers=headers)
        except Exception as e:  # noqa: BLE001 - classified: refused by policy (permanent), network (retry)
            r = result_for_exception(e)
            log.info("webhook %s: %s (attempt %d)", d.name, r.answer, n.attempt)
            return r
        r = classify_http(resp)
        log.debug("webhook %s: HTTP %s for %s", d.name, resp.status_code, webhook_id(n.key))
        return r


CHANNEL = WebhookChannel()
