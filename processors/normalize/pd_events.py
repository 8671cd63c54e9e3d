"""PagerDuty Events API v2 bodies received as if we were events.pagerduty.com.

Sources: `pagerduty_events_v2` (POST /v2/enqueue) and `pagerduty_change_v2` (POST /v2/change/enqueue).
Validation follows PagerDuty's request schema and documented limits; error texts use the style of
PagerDuty's 400 responses so the ingress can hand them back to the sender unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from ..alert import SEVERITIES, Alert, Image, Link, Severity
from ..errors import InvalidInput
from .body import dump_details, event_time_ms, is_blank, parse_json, parse_timestamp_ms

SOURCE_ENQUEUE = "pagerduty_events_v2"
SOURCE_CHANGE = "pagerduty_change_v2"

MAX_BODY_BYTES = 512_000
ROUTING_KEY_LEN = 32
MAX_DEDUP_KEY = 255
MAX_SUMMARY = 1024
EVENT_ACTIONS = ("trigger", "acknowledge", "resolve")


def _check_routing_key(obj: Mapping[str, Any], errors: list[str]) -> None:
    rk = obj.get("routing_key")
    if is_blank(rk):
        errors.append("'routing_key' is missing or blank")
    elif not isinstance(rk, str):
        errors.append("'routing_key' must be a string")
    elif len(rk) != ROUTING_KEY_LEN:
        errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")


def _check_optional_strings(
    obj: Mapping[str, Any], names: tuple[str, ...], where: str, errors: list[str]
) -> None:
    for name in names:
        if name in obj and not isinstance(obj[name], str):
            errors.append(f"'{where}{name}' must be a string")


def _check_context(obj: Mapping[str, Any], errors: list[str]) -> None:
    """links[] and images[]: arrays of objects with a non-blank href / src."""
    for name, required, optional in (("links", "href", ("text",)), ("images", "src", ("href", "alt"))):
        if name not in obj:
            continue
        items = obj[name]
        if not isinstance(items, list):
            errors.append(f"'{name}' must be an array")
            continue
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                errors.append(f"'{name}[{i}]' must be an object")
                continue
            if is_blank(item.get(required)) or not isinstance(item.get(required), str):
                errors.append(f"'{name}[{i}].{required}' is missing or blank")
            _check_optional_strings(item, optional, f"{name}[{i}].", errors)


def _check_payload_common(payload: Mapping[str, Any], errors: list[str]) -> None:
    summary = payload.get("summary")
    if is_blank(summary):
        errors.append("'payload.summary' is missing or blank")
    elif not isinstance(summary, str):
        errors.append("'payload.summary' must be a string")
    elif len(summary) > MAX_SUMMARY:
        errors.append("Length of 'payload.summary' is incorrect (should be at most 1024 characters)")
    if "timestamp" in payload and parse_timestamp_ms(payload["timestamp"]) is None:
        errors.append("'payload.timestamp' is not a valid ISO 8601 timestamp")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        errors.append("'payload.custom_details' must be an object")


def validate_enqueue(obj: object) -> list[str]:
    """Every problem PagerDuty would report for this /v2/enqueue body (empty when valid)."""
    if not isinstance(obj, dict):
        return ["Event object must be a JSON object"]
    errors: list[str] = []
    _check_routing_key(obj, errors)
    action = obj.get("event_action")
    if is_blank(action):
        errors.append("'event_action' is missing or blank")
    elif action not in EVENT_ACTIONS:
        errors.append("'event_action' is invalid (should be one of: trigger, acknowledge, resolve)")
    dedup = obj.get("dedup_key")
    if dedup is not None and not isinstance(dedup, str):
        errors.append("'dedup_key' must be a string")
    elif isinstance(dedup, str) and len(dedup) > MAX_DEDUP_KEY:
        errors.append("Length of 'dedup_key' is incorrect (should be at most 255 characters)")
    elif action in ("acknowledge", "resolve") and is_blank(dedup):
        errors.append("'dedup_key' is missing or blank")
    payload = obj.get("payload")
    if action == "trigger" or (action not in EVENT_ACTIONS and payload is not None):
        if not isinstance(payload, dict):
            errors.append(
                "'payload' is missing or blank" if payload is None else "'payload' must be an object"
            )
        else:
            _check_payload_common(payload, errors)
            for name in ("source", "severity"):
                if is_blank(payload.get(name)):
                    errors.append(f"'payload.{name}' is missing or blank")
            if not is_blank(payload.get("source")) and not isinstance(payload.get("source"), str):
                errors.append("'payload.source' must be a string")
            severity = payload.get("severity")
            if not is_blank(severity) and severity not in SEVERITIES:
                errors.append(
                    "'payload.severity' is invalid (should be one of: critical, error, warning, info)"
                )
            _check_optional_strings(payload, ("component", "group", "class"), "payload.", errors)
    elif payload is not None and not isinstance(payload, dict):
        # acknowledge/resolve: PagerDuty ignores the payload, but it must still be an object
        errors.append("'payload' must be an object")
    _check_context(obj, errors)
    _check_optional_strings(obj, ("client", "client_url"), "", errors)
    return errors


def validate_change(obj: object) -> list[str]:
    """Every problem PagerDuty would report for this /v2/change/enqueue body (empty when valid)."""
    if not isinstance(obj, dict):
        return ["Event object must be a JSON object"]
    errors: list[str] = []
    _check_routing_key(obj, errors)
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        errors.append("'payload' is missing or blank" if payload is None else "'payload' must be an object")
    else:
        _check_payload_common(payload, errors)
        _check_optional_strings(payload, ("source",), "payload.", errors)
    _check_context(obj, errors)
    return errors


def _context(obj: Mapping[str, Any]) -> tuple[tuple[Link, ...], tuple[Image, ...]]:
    links = tuple(Link(href=x["href"], text=x.get("text")) for x in obj.get("links") or ())
    images = tuple(Image(src=x["src"], href=x.get("href"), alt=x.get("alt")) for x in obj.get("images") or ())
    return links, images


def _parse(body: bytes, validate: Any) -> dict[str, Any]:
    errors: list[str] = []
    if len(body) > MAX_BODY_BYTES:
        errors.append(f"Event payload exceeds the maximum size of 512KB ({len(body)} bytes)")
    obj, parse_errors = parse_json(body)
    errors += parse_errors or validate(obj)
    if errors:
        raise InvalidInput(errors)
    return cast(dict[str, Any], obj)


def normalize_enqueue(
    body: bytes,
    *,
    raw_id: str,
    received_at_ms: int,
    attributes: Mapping[str, str],
    source: str = SOURCE_ENQUEUE,
) -> list[Alert]:
    obj = _parse(body, validate_enqueue)
    action = obj["event_action"]
    dedup_key = obj.get("dedup_key")
    if is_blank(dedup_key):
        # The ingress assigns a key to keyless triggers and returns it to the sender.
        dedup_key = attributes.get("dedup_key")
        if is_blank(dedup_key):
            raise InvalidInput(["'dedup_key' is missing and the ingress assigned none"])
    given = obj.get("payload")
    payload: Mapping[str, Any] = given if isinstance(given, dict) else {}
    summary = payload.get("summary")
    severity = payload.get("severity")
    origin = payload.get("source")
    links, images = _context(obj)
    # acknowledge/resolve may come without a payload; fill the Alert's required text fields.
    return [
        Alert(
            id=f"{raw_id}:0",
            raw_id=raw_id,
            source=source,
            action=action,
            routing_key=obj["routing_key"],
            dedup_key=str(dedup_key),
            summary=summary if isinstance(summary, str) and summary else f"{action}: {dedup_key}",
            severity=cast(Severity, severity if severity in SEVERITIES else "info"),
            origin=origin if isinstance(origin, str) and origin else source,
            event_time=event_time_ms(payload.get("timestamp"), received_at_ms),
            received_at=received_at_ms,
            component=payload.get("component") if isinstance(payload.get("component"), str) else None,
            group=payload.get("group") if isinstance(payload.get("group"), str) else None,
            class_=payload.get("class") if isinstance(payload.get("class"), str) else None,
            custom_details_json=dump_details(payload.get("custom_details") or {}),
            links=links,
            images=images,
            client=obj.get("client"),
            client_url=obj.get("client_url"),
        )
    ]


def normalize_change(
    body: bytes,
    *,
    raw_id: str,
    received_at_ms: int,
    attributes: Mapping[str, str],
    source: str = SOURCE_CHANGE,
) -> list[Alert]:
    obj = _parse(body, validate_change)
    payload: Mapping[str, Any] = obj["payload"]
    origin = payload.get("source")
    links, images = _context(obj)
    return [
        Alert(
            id=f"{raw_id}:0",
            raw_id=raw_id,
            source=source,
            action="change",
            routing_key=obj["routing_key"],
            dedup_key=attributes.get("dedup_key") or raw_id,
            summary=payload["summary"],
            severity="info",
            origin=origin if isinstance(origin, str) and origin else source,
            event_time=event_time_ms(payload.get("timestamp"), received_at_ms),
            received_at=received_at_ms,
            custom_details_json=dump_details(payload.get("custom_details") or {}),
            links=links,
            images=images,
        )
    ]
