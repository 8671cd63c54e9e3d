"""Enrich: attach the owning service, pick the routing key, redact, and set the group key.

Order matters and is fixed: match on the alert as received, take the service's routing key, redact,
then derive the group key from the redacted alert (a redacted value never reaches a Kafka key).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .alert import Alert, Link
from .catalog import GROUPING_FIELDS, SCALAR_FIELDS, Catalog, FieldPath, ServiceSpec
from .pii import redact_pii, redactor_for

REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class Enriched:
    alert: Alert
    reason: str


def routing_key_tag(routing_key: str) -> str:
    """A short, stable stand-in for a routing key: the first 12 hex digits of its sha256."""
    return hashlib.sha256(routing_key.encode("utf-8")).hexdigest()[:12]


def field_value(alert: Alert, path: FieldPath) -> str:
    """The text at a grouping path ("" when absent)."""
    if path.root == "labels":
        return alert.labels.get(path.keys[0], "")
    value = getattr(alert, GROUPING_FIELDS[path.root])
    return "" if value is None else str(value)


def group_key_for(alert: Alert, spec: ServiceSpec | None) -> str:
    """The incident grouping key: derived only from the alert, never containing the routing key.

    none        -> <rk tag>:<dedup_key>            (one incident per dedup key)
    time_window -> <rk tag>:svc:<service>          (the grouping stage cuts it into windows)
    correlate   -> <rk tag>:svc:<service>          (the correlator picks the incident)
    fields      -> <rk tag>:svc:<service>:<v1|v2>  (values of the configured fields)

    Stable per dedup key as long as every event of that key carries the grouping fields and
    matches the same service (true for Alertmanager and Grafana, whose resolves repeat the labels).
    """
    tag = routing_key_tag(alert.routing_key)
    if spec is None or spec.grouping.mode == "none":
        return f"{tag}:{alert.dedup_key}"
    if spec.grouping.mode in ("time_window", "correlate"):
        return f"{tag}:svc:{spec.name}"
    values = "|".join(field_value(alert, f) for f in spec.grouping.fields)
    return f"{tag}:svc:{spec.name}:{values}"


def _details(alert: Alert) -> Any:
    try:
        return json.loads(alert.custom_details_json)
    except ValueError:
        return {}


def _lookup(obj: Any, keys: tuple[str, ...]) -> tuple[bool, Any]:
    for key in keys:
        if not isinstance(obj, dict) or key not in obj:
            return False, None
        obj = obj[key]
    return True, obj


def _scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    return value


def redact(alert: Alert, paths: tuple[FieldPath, ...]) -> Alert:
    """`alert` with the value at each path replaced by "[REDACTED]".

    A redacted text (4+ characters) is also replaced where it was copied into other text fields,
    e.g. a label value inside an Alertmanager-style summary. Every field changed is appended to
    `alert.redacted`; paths whose field is absent are left alone and not recorded.
    """
    labels = dict(alert.labels)
    details = _details(alert)
    scalars = {attr: getattr(alert, attr) for attr in SCALAR_FIELDS.values()}
    originals: list[Any] = []
    done: list[str] = []
    for path in paths:
        if path.root == "labels":
            found, original = path.keys[0] in labels, labels.get(path.keys[0])
            if found:
                labels[path.keys[0]] = REDACTED
        elif path.root == "custom_details":
            found, original = _lookup(details, path.keys)
            if found:
                _, parent = _lookup(details, path.keys[:-1])
                parent[path.keys[-1]] = REDACTED
        else:
            attr = SCALAR_FIELDS[path.root]
            original = scalars[attr]
            found = bool(original) and original != REDACTED
            if found:
                scalars[attr] = REDACTED
        if found:
            originals.append(original)
            done.append(path.text)
    if not done:
        return alert
    texts = {v for v in originals if isinstance(v, str) and len(v) >= 4 and v != REDACTED}
    secrets = tuple(sorted(texts, key=len, reverse=True))  # longest first: no partial leftovers
    if secrets:
        for catalog_word, attr in SCALAR_FIELDS.items():
            if isinstance(scalars[attr], str) and (text := _scrub(scalars[attr], secrets)) != scalars[attr]:
                scalars[attr] = text
                done.append(catalog_word)
        for k, v in labels.items():
            if (text := _scrub(v, secrets)) != v:
                labels[k] = text
                done.append(f"labels.{k}")
        if (scrubbed := _scrub(details, secrets)) != details:
            details = scrubbed
            done.append("custom_details")
    changes: dict[str, Any] = {attr: v for attr, v in scalars.items() if v != getattr(alert, attr)}
    changes["labels"] = labels
    if any(p.startswith("custom_details") for p in done):
        changes["custom_details_json"] = json.dumps(details, ensure_ascii=False, separators=(",", ":"))
    if secrets:
        changes["links"] = tuple(Link(_scrub(x.href, secrets), _scrub(x.text, secrets)) for x in alert.links)
    redacted = alert.redacted + tuple(p for p in dict.fromkeys(done) if p not in alert.redacted)
    return alert.with_(redacted=redacted, **changes)


def enrich(alert: Alert, catalog: Catalog) -> Enriched:
    """Service, routing key, redaction and group key for one alert, with the reason."""
    found = catalog.find(alert)
    spec = found.spec if found is not None else None
    notes: list[str] = []
    if found is None or spec is None:
        notes.append("no service matched")
    else:
        notes.append(f"matched service {spec.name} by matcher {found.matcher_index}")
        alert = alert.with_(
            service=spec.name,
            team=spec.team,
            tier=None if spec.tier is None else str(spec.tier),
            runbook_url=spec.runbook_url,
        )
        if spec.routing_key and spec.routing_key != alert.routing_key:
            alert = alert.with_(routing_key=spec.routing_key)
            notes.append("routing key from the service")
    before = len(alert.redacted)
    alert = redact(alert, catalog.redact + (spec.redact if spec is not None else ()))
    # PII patterns (processors/pii.py, docs/compliance.md): after the path rules, before the group key,
    # so nothing that leaves this stage (alerts.normalized, incident state, PagerDuty) holds a finding.
    alert = redact_pii(alert, redactor_for(catalog.pii, spec.pii if spec is not None else None))
    if len(alert.redacted) > before:
        notes.append("redacted " + ", ".join(alert.redacted[before:]))
    notes.append(f"grouping {spec.grouping.mode if spec is not None else 'none'}")
    return Enriched(alert=alert.with_(group_key=group_key_for(alert, spec)), reason="; ".join(notes))
