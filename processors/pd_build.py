"""Building PagerDuty Events API v2 request bodies the way a careful sender does.

Limits applied (each one leaves a note on the result):
* summary: at most 1024 runes; a longer one keeps 1023 and ends with "…" (as Alertmanager does);
* dedup_key: at most 255 characters; a longer key is sent as its sha256 hex (stable, so trigger and
  resolve still pair up) and the original goes into custom_details;
* body: at most 512000 bytes; first custom_details is replaced by PagerDuty's usual error object,
  then links and images are dropped, then the free text fields are cut to 1024 runes;
* severity: always one of critical/error/warning/info;
* only trigger events carry payload, client, client_url, links and images.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .alert import SEVERITIES, Image, Link
from .errors import InvalidInput

MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
MAX_BODY_BYTES = 512_000
ELLIPSIS = "…"
FALLBACK_SEVERITY = "error"  # PagerDuty's and Alertmanager's default
ORIGINAL_DEDUP_KEY = "pagerstream_original_dedup_key"
OVERSIZE_DETAILS = {
    "error": "Custom details have been removed because the original event exceeds the maximum size of 512KB"
}
ALERT_ACTIONS = ("trigger", "acknowledge", "resolve")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Built:
    body: dict[str, Any]
    notes: tuple[str, ...] = ()


def encode_body(body: Mapping[str, Any]) -> str:
    """Compact JSON text, UTF-8 where it can be; unpaired surrogates fall back to \\u escapes."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(body, ensure_ascii=True, separators=(",", ":"))
    return text


def body_size(body: Mapping[str, Any]) -> int:
    return len(encode_body(body).encode("utf-8"))


def truncate_runes(text: str, limit: int) -> str:
    """`text` if it has at most `limit` runes, else its first limit-1 runes and "…"."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def _timestamp(ms: int) -> str | None:
    """ISO 8601 UTC with milliseconds; None when out of datetime's range."""
    try:
        when = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        return None
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _add_timestamp(payload: dict[str, Any], ms: int | None, notes: list[str]) -> None:
    if ms is None:
        return
    if (text := _timestamp(ms)) is None:
        notes.append(f"timestamp {ms} out of range: left out")
    else:
        payload["timestamp"] = text


def _check_routing_key(routing_key: str) -> None:
    if not isinstance(routing_key, str) or len(routing_key) != 32:
        raise InvalidInput(["Length of 'routing_key' is incorrect (should be 32 characters)"])


def _links(links: Iterable[Link | Mapping[str, Any]], notes: list[str]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for x in links:
        href, text = (x.href, x.text) if isinstance(x, Link) else (x.get("href"), x.get("text"))
        if not href:
            notes.append("dropped a link without href")
            continue
        out.append({"href": href} | ({"text": text} if text else {}))
    return out


def _images(images: Iterable[Image | Mapping[str, Any]], notes: list[str]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for x in images:
        src, href, alt = (
            (x.src, x.href, x.alt) if isinstance(x, Image) else (x.get("src"), x.get("href"), x.get("alt"))
        )
        if not src:
            notes.append("dropped an image without src")
            continue
        out.append({"src": src} | ({"href": href} if href else {}) | ({"alt": alt} if alt else {}))
    return out


def _fit(body: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Bring the encoded body under 512000 bytes, most expendable parts first."""
    size = body_size(body)
    if size <= MAX_BODY_BYTES:
        return body
    payload = body.get("payload")
    if isinstance(payload, dict) and "custom_details" in payload:
        payload["custom_details"] = dict(OVERSIZE_DETAILS)
        notes.append(f"body was {size} bytes (> {MAX_BODY_BYTES}): custom_details replaced")
        if (size := body_size(body)) <= MAX_BODY_BYTES:
            return body
    for name in ("links", "images"):
        if body.pop(name, None) is not None:
            notes.append(f"body still over {MAX_BODY_BYTES} bytes: {name} dropped")
    if (size := body_size(body)) <= MAX_BODY_BYTES:
        return body
    for holder, name in ((payload, "source"), (payload, "component"), (payload, "group"), (payload, "class"),
                         (body, "client"), (body, "client_url")):  # fmt: skip
        if isinstance(holder, dict) and isinstance(holder.get(name), str) and len(holder[name]) > MAX_SUMMARY:
            holder[name] = truncate_runes(holder[name], MAX_SUMMARY)
            notes.append(f"body still over {MAX_BODY_BYTES} bytes: {name} cut to {MAX_SUMMARY} runes")
    return body


def _summary(summary: str, notes: list[str]) -> str:
    if not summary.strip():
        notes.append("empty summary replaced")
        return "(no summary)"
    if len(summary) > MAX_SUMMARY:
        notes.append(f"summary cut from {len(summary)} to {MAX_SUMMARY} runes")
        return truncate_runes(summary, MAX_SUMMARY)
    return summary


def build_event(
    *,
    action: str,
    routing_key: str,
    dedup_key: str,
    summary: str,
    severity: str,
    origin: str,
    component: str | None = None,
    group: str | None = None,
    class_: str | None = None,
    custom_details: dict[str, Any] | None,
    links: Iterable[Link | Mapping[str, Any]],
    images: Iterable[Image | Mapping[str, Any]],
    client: str = "pagerstream",
    client_url: str | None = None,
    timestamp_ms: int | None = None,
) -> Built:
    """An /v2/enqueue body. Raises InvalidInput only for what no limit can fix (action, keys)."""
    if action not in ALERT_ACTIONS:
        raise InvalidInput([f"'event_action' is invalid (should be one of: {', '.join(ALERT_ACTIONS)})"])
    _check_routing_key(routing_key)
    if not dedup_key:
        raise InvalidInput(["'dedup_key' is missing or blank"])
    notes: list[str] = []
    original_key = None
    if len(dedup_key) > MAX_DEDUP_KEY:
        original_key, dedup_key = (
            dedup_key,
            hashlib.sha256(dedup_key.encode("utf-8", "surrogatepass")).hexdigest(),
        )
        notes.append(f"dedup_key of {len(original_key)} characters sent as its sha256")
    body: dict[str, Any] = {"routing_key": routing_key, "event_action": action, "dedup_key": dedup_key}
    if action != "trigger":
        return Built(body, tuple(notes))
    if severity not in SEVERITIES:
        notes.append(f"severity {str(severity)[:40]!r} replaced by {FALLBACK_SEVERITY!r}")
        severity = FALLBACK_SEVERITY
    if not origin.strip():
        notes.append(f"empty source replaced by {client!r}")
        origin = client
    payload: dict[str, Any] = {"summary": _summary(summary, notes), "source": origin, "severity": severity}
    _add_timestamp(payload, timestamp_ms, notes)
    for name, value in (("component", component), ("group", group), ("class", class_)):
        if value:
            payload[name] = value
    details = dict(custom_details) if custom_details is not None else None
    if original_key is not None:
        details = (details or {}) | {ORIGINAL_DEDUP_KEY: original_key}
    if details is not None:
        payload["custom_details"] = details
    body["payload"] = payload
    body["client"] = client
    if client_url:
        body["client_url"] = client_url
    if built_links := _links(links, notes):
        body["links"] = built_links
    if built_images := _images(images, notes):
        body["images"] = built_images
    return Built(_fit(body, notes), tuple(notes))


def build_change(
    *,
    routing_key: str,
    summary: str,
    origin: str | None = None,
    custom_details: dict[str, Any] | None = None,
    links: Iterable[Link | Mapping[str, Any]] = (),
    timestamp_ms: int | None = None,
) -> Built:
    """A /v2/change/enqueue body (no event_action, no dedup_key; PagerDuty shows only links)."""
    _check_routing_key(routing_key)
    notes: list[str] = []
    payload: dict[str, Any] = {"summary": _summary(summary, notes)}
    if origin:
        payload["source"] = origin
    _add_timestamp(payload, timestamp_ms, notes)
    if custom_details is not None:
        payload["custom_details"] = dict(custom_details)
    body: dict[str, Any] = {"routing_key": routing_key, "payload": payload}
    if built_links := _links(links, notes):
        body["links"] = built_links
    return Built(_fit(body, notes), tuple(notes))
