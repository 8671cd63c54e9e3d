"""Prometheus Alertmanager webhook (`webhook_configs`, payload version "4").

Accepts both the v0.28 shape and the v0.32+/v0.34 one (`notification_reason`, `routeLabels`);
the extra group fields are not needed per alert. One Alert per entry of `alerts[]`.
The same reading serves Grafana's webhook contact point (grafana.py), which adds fields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from ..alert import SEVERITIES, Alert, Image, Link, Severity
from ..errors import InvalidInput
from .body import dump_details, is_blank, parse_json, parse_timestamp_ms

SOURCE = "alertmanager"
GO_ZERO_TIME_MS = -62135596800000  # 0001-01-01T00:00:00Z: Go's zero time, meaning "not set"

_SEVERITY_WORDS: dict[str, Severity] = {
    "critical": "critical", "page": "critical",
    "error": "error", "high": "error", "major": "error",
    "warning": "warning", "warn": "warning", "medium": "warning", "minor": "warning",
    "info": "info", "low": "info", "none": "info",
}  # fmt: skip

# Grafana (and others) add fields to an alert: (alert, index, errors) -> (details, links, images)
Extras = Callable[[Mapping[str, Any], int, list[str]], tuple[dict[str, Any], list[Link], list[Image]]]


@dataclass(frozen=True)
class WebhookFlavor:
    """What differs between Alertmanager-style webhook senders."""

    version: str
    product: str  # the Alert's `client`
    origin_fallback: str
    extras: Extras | None = field(default=None, compare=False)


ALERTMANAGER = WebhookFlavor(version="4", product="Alertmanager", origin_fallback="alertmanager")


def map_severity(value: object, attributes: Mapping[str, str]) -> Severity:
    """labels.severity in the words monitoring teams use, mapped onto PagerDuty's four values."""
    word = value.strip().lower() if isinstance(value, str) else ""
    if word in _SEVERITY_WORDS:
        return _SEVERITY_WORDS[word]
    fallback = attributes.get("default_severity", "error")
    return cast(Severity, fallback if fallback in SEVERITIES else "error")


def labels_digest(labels: Mapping[str, str]) -> str:
    """sha256 hex of the sorted label pairs: the dedup key when an alert has no fingerprint."""
    canonical = json.dumps(sorted(labels.items()), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def subject(status: str, labels: Mapping[str, str]) -> str:
    """`[FIRING] HighLatency (api-1:9090 api critical)`: the other label values, by label name."""
    values = " ".join(labels[k] for k in sorted(labels) if k != "alertname" and labels[k])
    head = f"[{status.upper()}] {labels.get('alertname') or 'alert'}"
    return f"{head} ({values})" if values else head


def _time(alert: Mapping[str, Any], name: str) -> int | None:
    ms = parse_timestamp_ms(alert.get(name))
    return None if ms is None or ms == GO_ZERO_TIME_MS else ms


def _validate(obj: object, flavor: WebhookFlavor) -> list[str]:
    if not isinstance(obj, dict):
        return ["body must be a JSON object"]
    errors: list[str] = []
    if "version" not in obj:
        errors.append(f"'version' is missing (expected \"{flavor.version}\")")
    elif obj["version"] != flavor.version:
        errors.append(f"'version' must be \"{flavor.version}\" (got {json.dumps(obj['version'])[:40]})")
    for name in ("groupKey", "externalURL", "receiver"):
        if name in obj and obj[name] is not None and not isinstance(obj[name], str):
            errors.append(f"'{name}' must be a string")
    alerts = obj.get("alerts")
    if not isinstance(alerts, list):
        errors.append(
            "'alerts' is missing or not an array" if alerts is None else "'alerts' must be an array"
        )
        return errors
    if not alerts:
        errors.append("'alerts' is empty")
    for i, a in enumerate(alerts):
        where = f"alerts[{i}]"
        if not isinstance(a, dict):
            errors.append(f"'{where}' must be an object")
            continue
        if a.get("status") not in ("firing", "resolved"):
            errors.append(f'\'{where}.status\' must be "firing" or "resolved"')
        labels = a.get("labels")
        if not isinstance(labels, dict):
            errors.append(f"'{where}.labels' is missing or not an object")
        else:
            errors += [
                f"'{where}.labels.{k}' must be a string" for k, v in labels.items() if not isinstance(v, str)
            ]
        if a.get("annotations") is not None and not isinstance(a.get("annotations"), dict):
            errors.append(f"'{where}.annotations' must be an object")
        for name in ("startsAt", "endsAt"):
            if not is_blank(a.get(name)) and parse_timestamp_ms(a.get(name)) is None:
                errors.append(f"'{where}.{name}' is not an RFC 3339 timestamp")
        for name in ("fingerprint", "generatorURL"):
            if a.get(name) is not None and not isinstance(a.get(name), str):
                errors.append(f"'{where}.{name}' must be a string")
    return errors


def _summary(status: str, labels: Mapping[str, str], annotations: Mapping[str, Any]) -> str:
    for name in ("summary", "description", "message"):
        text = annotations.get(name)
        if isinstance(text, str) and text.strip():
            return text
    return subject(status, labels)


def _origin(labels: Mapping[str, str], fallback: str) -> str:
    return next((labels[k] for k in ("instance", "host", "job") if labels.get(k)), fallback)


def normalize_webhook(
    body: bytes,
    flavor: WebhookFlavor,
    *,
    source: str,
    raw_id: str,
    received_at_ms: int,
    attributes: Mapping[str, str],
    default_routing_key: str,
) -> list[Alert]:
    obj, errors = parse_json(body)
    errors = errors or _validate(obj, flavor)
    if errors:
        raise InvalidInput(errors)
    extras: list[tuple[dict[str, Any], list[Link], list[Image]]] = []
    if flavor.extras is not None:
        extras = [flavor.extras(a, i, errors) for i, a in enumerate(obj["alerts"])]
        if errors:
            raise InvalidInput(errors)
    group_key = obj.get("groupKey")
    external_url = obj.get("externalURL")
    out: list[Alert] = []
    for i, a in enumerate(obj["alerts"]):
        labels: dict[str, str] = a["labels"]
        annotations: dict[str, Any] = a.get("annotations") or {}
        status: str = a["status"]
        fingerprint = a.get("fingerprint")
        generator_url = a.get("generatorURL")
        details: dict[str, Any] = dict(annotations)
        links: list[Link] = []
        images: list[Image] = []
        if generator_url:
            details["generatorURL"] = generator_url
            links.append(Link(href=generator_url, text="Source"))
        if group_key:
            details["groupKey"] = group_key
        if extras:
            more_details, more_links, more_images = extras[i]
            details.update(more_details)
            links += more_links
            images += more_images
        starts = _time(a, "startsAt")
        ends = _time(a, "endsAt")
        when = starts if status == "firing" else (ends if ends is not None else starts)
        out.append(
            Alert(
                id=f"{raw_id}:{i}",
                raw_id=raw_id,
                source=source,
                action="trigger" if status == "firing" else "resolve",
                routing_key=attributes.get("routing_key")
                or labels.get("pagerduty_routing_key")
                or default_routing_key,
                # Alertmanager's fingerprint identifies the label set; without it, hash the labels.
                dedup_key=fingerprint if fingerprint else labels_digest(labels),
                summary=_summary(status, labels, annotations),
                severity=map_severity(labels.get("severity"), attributes),
                origin=_origin(labels, flavor.origin_fallback),
                event_time=received_at_ms if when is None else when,
                received_at=received_at_ms,
                labels=dict(labels),
                custom_details_json=dump_details(details),
                links=tuple(links),
                images=tuple(images),
                client=flavor.product,
                client_url=external_url if external_url else None,
            )
        )
    return out


def normalize_alertmanager(
    body: bytes,
    *,
    source: str = SOURCE,
    raw_id: str,
    received_at_ms: int,
    attributes: Mapping[str, str],
    default_routing_key: str,
) -> list[Alert]:
    return normalize_webhook(
        body,
        ALERTMANAGER,
        source=source,
        raw_id=raw_id,
        received_at_ms=received_at_ms,
        attributes=attributes,
        default_routing_key=default_routing_key,
    )
