"""Normalize: turn one raw inbound body into Alerts, whatever tool sent it.

Sources (RawAlert.source): `pagerduty_events_v2`, `pagerduty_change_v2`, `alertmanager`, `grafana`,
`generic:<mapping name>`. Every problem found is reported at once as InvalidInput; nothing is
truncated or cleaned here (limits are applied when PagerDuty events are built).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ..alert import Alert
from ..errors import InvalidInput
from .alertmanager import normalize_alertmanager
from .generic import GenericMapping, normalize_generic
from .grafana import normalize_grafana
from .pd_events import normalize_change, normalize_enqueue, validate_change, validate_enqueue

GENERIC_PREFIX = "generic:"
SOURCES = ("pagerduty_events_v2", "pagerduty_change_v2", "alertmanager", "grafana")

_NO_MAPPINGS: Mapping[str, GenericMapping] = MappingProxyType({})

__all__ = ["SOURCES", "GenericMapping", "normalize", "validate_change", "validate_enqueue"]


def normalize(
    source: str,
    body: bytes,
    *,
    raw_id: str,
    received_at_ms: int,
    attributes: Mapping[str, str],
    default_routing_key: str,
    mappings: Mapping[str, GenericMapping] = _NO_MAPPINGS,
) -> list[Alert]:
    """The Alerts in `body`; ids are f"{raw_id}:{index}". Raises InvalidInput listing every problem."""
    if source == "pagerduty_events_v2":
        return normalize_enqueue(
            body, source=source, raw_id=raw_id, received_at_ms=received_at_ms, attributes=attributes
        )
    if source == "pagerduty_change_v2":
        return normalize_change(
            body, source=source, raw_id=raw_id, received_at_ms=received_at_ms, attributes=attributes
        )
    webhook = {"alertmanager": normalize_alertmanager, "grafana": normalize_grafana}.get(source)
    if webhook is not None:
        return webhook(
            body,
            source=source,
            raw_id=raw_id,
            received_at_ms=received_at_ms,
            attributes=attributes,
            default_routing_key=default_routing_key,
        )
    if source.startswith(GENERIC_PREFIX):
        name = source[len(GENERIC_PREFIX) :]
        mapping = mappings.get(name)
        if mapping is None:
            known = ", ".join(sorted(mappings)) or "none"
            raise InvalidInput([f"no generic mapping named {name!r} (known: {known})"])
        return normalize_generic(
            body,
            mapping,
            source=source,
            raw_id=raw_id,
            received_at_ms=received_at_ms,
            attributes=attributes,
            default_routing_key=default_routing_key,
        )
    raise InvalidInput(
        [f"unknown source {source!r} (expected one of: {', '.join(SOURCES)}, generic:<mapping>)"]
    )
