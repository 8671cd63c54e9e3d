"""What the incident stage publishes: the IncidentEvent record and the PagerDuty call for a change.

Pure: the records returned here are exactly what goes on `incidents` and `pagerduty.outbox`
(schemas/incident_event.avsc, schemas/pagerduty_event.avsc).
"""

from __future__ import annotations

import json
from typing import Any

from pagerstream.processors.alert import Alert
from pagerstream.processors.incident import IncidentChangeOut, short_hash
from pagerstream.processors.pd_build import build_change, build_event, encode_body


def incident_event_record(o: IncidentChangeOut) -> dict[str, Any]:
    inc = o.incident
    return {
        "event_id": f"{inc.incident_id}#{inc.version}", "incident_id": inc.incident_id,
        "version": inc.version, "change": o.change, "reason": o.reason, "state": inc.state,
        "alert_id": o.alert.id if o.alert else None, "dedup_key": o.alert.dedup_key if o.alert else None,
        "pd_dedup_key": inc.pd_dedup_key, "routing_key_hint": inc.routing_key[-4:],
        "service": inc.service, "team": inc.team, "tier": inc.tier, "runbook_url": inc.runbook_url,
        "summary": inc.summary, "severity": inc.severity, "open_alerts": inc.open_alerts(),
        "total_alerts": inc.total_alerts, "duplicates": inc.duplicates, "opened_at": inc.opened_at,
        "acknowledged_at": inc.acknowledged_at, "resolved_at": inc.resolved_at,
        "at": o.at if o.at is not None else (o.alert.received_at if o.alert else (inc.resolved_at or inc.last_activity_at)),
        "pagerduty_action": o.pd_action,
        "change_detail": o.detail, "alert_type": inc.alert_type, "pause": inc.pause,
        "scores": list(inc.scores), "similar": list(inc.similar), "recurrence": inc.recurrence,
        "route": inc.route, "group_key": inc.group_key,
    }


def stream_key(routing_key: str, dedup_key: str) -> str:
    """Ordering key of PagerDuty calls; never contains the routing key itself."""
    return f"{short_hash(routing_key)}:{dedup_key}"


def pagerduty_event_record(o: IncidentChangeOut, seq: int, *, now_ms: int) -> dict[str, Any] | None:
    """The outbox record for a change that needs PagerDuty, or None."""
    if o.pd_action is None:
        return None
    inc = o.incident
    return {
        "event_id": f"{inc.incident_id}#{inc.version}", "incident_id": inc.incident_id,
        "stream_key": stream_key(inc.routing_key, inc.pd_dedup_key), "seq": seq, "endpoint": "enqueue",
        "action": o.pd_action, "routing_key": inc.routing_key, "dedup_key": inc.pd_dedup_key,
        "body_json": pagerduty_body(o),
        "created_at": o.at if o.at is not None else (o.alert.received_at if o.alert else now_ms),
        "attempt": 0, "not_before": 0, "last_error": None,
    }


def model_context(inc: Any) -> dict[str, Any]:
    """What the models said, for the responder: in the trigger's custom_details, short."""
    out: dict[str, Any] = {}
    for sc in inc.scores:
        name = sc["model"].removeprefix("classify.")
        out[name] = {"label": sc.get("label") or f"unsure ({sc.get('best')})", "p": round(sc["score"], 2),
                     "why": sc.get("explanation", "")[:200]}
    if inc.pause:
        out["transient"] = inc.pause.get("evidence", "")[:300]
    if inc.similar:
        out["similar_incidents"] = [f"{x['incident_id']} ({x['score']:.2f}): {x['summary'][:100]}" for x in inc.similar]
    if inc.recurrence:
        out["recurrence"] = inc.recurrence
    return out


def _details(a: Alert) -> dict[str, Any]:
    try:
        details = json.loads(a.custom_details_json or "{}")
    except ValueError:
        return {"raw": a.custom_details_json}
    return details if isinstance(details, dict) else {"value": details}


def _links(a: Alert) -> list[dict[str, str]]:
    return [{"href": x.href, **({"text": x.text} if x.text else {})} for x in a.links]


def pagerduty_body(o: IncidentChangeOut) -> str:
    """The Events v2 body for the change: a full trigger, or a bare acknowledge/resolve."""
    inc, a = o.incident, o.alert
    if o.pd_action != "trigger" or a is None:
        built = build_event(action=o.pd_action or "resolve", routing_key=inc.routing_key,
                            dedup_key=inc.pd_dedup_key, summary="", severity="info", origin="",
                            custom_details=None, links=(), images=())
        return encode_body(built.body)
    details = _details(a)
    details["pagerstream"] = {k: v for k, v in {
        "incident_id": inc.incident_id, "service": inc.service, "team": inc.team, "tier": inc.tier,
        "runbook_url": inc.runbook_url, "source": a.source, "reason": o.reason}.items() if v is not None}
    details["pagerstream"].update(model_context(inc))
    links = _links(a)
    if inc.runbook_url:
        links.append({"href": inc.runbook_url, "text": "Runbook"})
    images = [{k: v for k, v in (("src", x.src), ("href", x.href), ("alt", x.alt)) if v} for x in a.images]
    built = build_event(
        action="trigger", routing_key=inc.routing_key, dedup_key=inc.pd_dedup_key, summary=a.summary,
        severity=inc.severity, origin=a.origin, component=a.component, group=a.group, class_=a.class_,
        custom_details=details, links=links, images=images, client=a.client or "pagerstream",
        client_url=a.client_url, timestamp_ms=a.event_time,
    )
    return encode_body(built.body)


def change_event_record(a: Alert, seq: int) -> dict[str, Any]:
    """The outbox record for a PagerDuty change event (no incident, no dedup)."""
    built = build_change(routing_key=a.routing_key, summary=a.summary, origin=a.origin,
                         custom_details=_details(a), links=_links(a), timestamp_ms=a.event_time)
    return {"event_id": a.id, "incident_id": "", "stream_key": stream_key(a.routing_key, "change"), "seq": seq,
            "endpoint": "change", "action": "change", "routing_key": a.routing_key, "dedup_key": a.dedup_key,
            "body_json": encode_body(built.body), "created_at": a.received_at, "attempt": 0, "not_before": 0,
            "last_error": None}
