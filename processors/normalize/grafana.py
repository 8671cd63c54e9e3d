"""Grafana Alerting webhook contact point (payload version "1").

Read like an Alertmanager webhook (Grafana's body embeds the same template data) plus Grafana's
per-alert fields: `values`, `valueString`, `dashboardURL`, `panelURL`, `silenceURL`, `imageURL`,
`ruleUID`. Grafana sends endsAt "0001-01-01T00:00:00Z" while an alert fires: that means "not set".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..alert import Alert, Image, Link
from .alertmanager import WebhookFlavor, normalize_webhook

SOURCE = "grafana"

_URL_FIELDS = (("dashboardURL", "Dashboard"), ("panelURL", "Panel"), ("silenceURL", "Silence"))


def _grafana_extras(
    alert: Mapping[str, Any], index: int, errors: list[str]
) -> tuple[dict[str, Any], list[Link], list[Image]]:
    details: dict[str, Any] = {}
    links: list[Link] = []
    images: list[Image] = []
    for name in ("values", "valueString", "ruleUID"):
        if alert.get(name) not in (None, "", {}):
            details[name] = alert[name]
    if alert.get("values") is not None and not isinstance(alert.get("values"), dict):
        errors.append(f"'alerts[{index}].values' must be an object")
    for name, text in _URL_FIELDS:
        url = alert.get(name)
        if url is None or url == "":
            continue
        if not isinstance(url, str):
            errors.append(f"'alerts[{index}].{name}' must be a string")
            continue
        details[name] = url
        links.append(Link(href=url, text=text))
    image_url = alert.get("imageURL")
    if isinstance(image_url, str) and image_url:
        images.append(Image(src=image_url))
    elif image_url not in (None, ""):
        errors.append(f"'alerts[{index}].imageURL' must be a string")
    return details, links, images


GRAFANA = WebhookFlavor(version="1", product="Grafana", origin_fallback="grafana", extras=_grafana_extras)


def normalize_grafana(
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
        GRAFANA,
        source=source,
        raw_id=raw_id,
        received_at_ms=received_at_ms,
        attributes=attributes,
        default_routing_key=default_routing_key,
    )
