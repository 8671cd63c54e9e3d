"""PagerDuty V3 webhooks in: check the signature, validate the envelope, record each delivery once.

Contract: shared/contracts/pagerduty/webhooks-v3/NOTES.md (signature scheme, delivery behaviour) and
webhook-v3-envelope.schema.json. In short:

* ``X-PagerDuty-Signature`` holds one or more comma-separated ``v1=<hex>`` entries, each the lowercase
  hex HMAC-SHA256 of the *raw* request body under one signing secret (several during PagerDuty's
  secret rotation). The secret string is the key as-is, not base64-decoded. A delivery is authentic
  when any v1 entry matches the HMAC under any secret we hold. Other versions are ignored.
* The body is one event: ``{"event": {id, event_type, resource_type, occurred_at, agent, client, data}}``.
  Event types PagerDuty adds later must be accepted (2xx): three 4xx in a row disable the subscription.
* ``X-Webhook-Id`` is repeated on every delivery attempt of one webhook: it is the dedup key. PagerDuty
  retries for up to 48 hours, so a claim is kept for 8 days.

Where the docs leave a choice (vectors with ``expect_valid: null``), this module is lenient: ASCII
whitespace around entries is trimmed and hex digits are compared case-insensitively. Neither lets a
signature through without knowing a secret.

`WebhookReceiver` is the HTTP handler (route ``POST /pagerduty/webhooks/{subscription}`` in
streams/ingress.py). Order per request: subscription known (404) -> signature (401) -> JSON and
envelope (400) -> Redis ``SET NX EX`` on the webhook id (duplicate: 200, nothing produced) -> produce
to ``pagerduty.webhooks`` and wait for acks=all -> 202. When Redis cannot answer, the event is produced
anyway (at-least-once; consumers dedupe on ``webhook_id``); when Kafka cannot, the claim is released
and the answer is 503, so PagerDuty's retry is recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from aiohttp import web
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry, Counter

from pagerstream.schemas.codec import AvroCodec

if TYPE_CHECKING:
    from pagerstream.config import Secret

log = logging.getLogger("pagerstream.pagerduty.webhooks")

SIGNATURE_HEADER = "X-PagerDuty-Signature"
WEBHOOK_ID_HEADER = "X-Webhook-Id"
SUBSCRIPTION_HEADER = "X-Webhook-Subscription"
SIGNATURE_VERSION = "v1"
TOPIC = "pagerduty.webhooks"  # logical name; the topic prefix is added by topic_specs
DEDUP_TTL_S = 8 * 86_400  # PagerDuty retries for 48 h; keep claims well beyond that (7 days + margin)
DEDUP_TIMEOUT_S = 1.0  # Redis must not eat PagerDuty's 5 s budget
PRODUCE_TIMEOUT_S = 4.0  # answer (503) before PagerDuty gives up at 5 s and retries on its own
MAX_BODY = 512_000  # PagerDuty drops anything above 256 KB itself
MAX_WEBHOOK_ID = 256
MAX_SIGNATURES = 32  # v1 entries looked at per header; a rotation sends two
_HEX64 = re.compile(r"[0-9a-f]{64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?")

# The 'Event Types' table of developer-docs webhooks/01-Overview.md, plus the ping event.
KNOWN_EVENT_TYPES = frozenset({
    "incident.acknowledged", "incident.annotated", "incident.conference_bridge.updated",
    "incident.custom_field_values.updated", "incident.delegated", "incident.escalated",
    "incident.incident_type.changed", "incident.priority_updated", "incident.reassigned", "incident.reopened",
    "incident.resolved", "incident.responder.added", "incident.responder.replied", "incident.role.assigned",
    "incident.service_updated", "incident.status_update_published", "incident.task.completed",
    "incident.task.created", "incident.task.updated", "incident.triggered", "incident.unacknowledged",
    "incident.action_invocation.created", "incident.action_invocation.terminated",
    "incident.action_invocation.updated", "incident.workflow.started", "incident.workflow.completed",
    "service.created", "service.custom_field_values.updated", "service.deleted", "service.updated",
    "pagey.ping",
})

# webhook-v3-envelope.schema.json without its annotations (a unit test keeps the two identical).
# Deliberately permissive: unknown properties and event types pass.
ENVELOPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event"],
    "properties": {
        "event": {
            "type": "object",
            "required": ["id", "event_type", "resource_type", "occurred_at", "agent", "data"],
            "properties": {
                "id": {"type": "string"},
                "event_type": {"type": "string", "pattern": "^[a-z_]+(\\.[a-z_]+)+$"},
                "resource_type": {"type": "string"},
                "occurred_at": {"type": "string", "format": "date-time"},
                "agent": {"oneOf": [
                    {"type": "null"},
                    {"type": "object", "required": ["id", "type"], "properties": {
                        "id": {"type": "string"},
                        "type": {"type": "string"},
                        "summary": {"type": "string"},
                        "self": {"type": ["string", "null"]},
                        "html_url": {"type": ["string", "null"]},
                    }},
                ]},
                "client": {"type": ["object", "null"]},
                "data": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}},
            },
        },
    },
}
_VALIDATOR = Draft202012Validator(ENVELOPE_SCHEMA)


# --- signatures -------------------------------------------------------------------------------------
def _key(secret: bytes | str) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def _digest(raw_body: bytes, secret: bytes | str) -> str:
    return hmac.new(_key(secret), raw_body, hashlib.sha256).hexdigest()


def sign_body(raw_body: bytes, secret: bytes | str | Sequence[bytes | str]) -> str:
    """The ``X-PagerDuty-Signature`` value PagerDuty would send for this body: ``v1=<hex>``, one entry
    per secret when given several (the rotation form), comma-separated without spaces."""
    secrets = [secret] if isinstance(secret, (bytes, bytearray, str)) else list(secret)
    if not secrets or any(not s for s in secrets):
        raise ValueError("signing needs at least one non-empty secret")
    return ",".join(f"{SIGNATURE_VERSION}={_digest(raw_body, s)}" for s in secrets)


def signature_candidates(header: str | None) -> list[str]:
    """The v1 signatures in a header value, lowercased; malformed and other-version entries dropped."""
    if not header:
        return []
    out: list[str] = []
    for entry in header.split(","):
        version, sep, value = entry.strip().partition("=")
        if sep and version == SIGNATURE_VERSION:
            value = value.strip().lower()
            if _HEX64.fullmatch(value):
                out.append(value)
                if len(out) >= MAX_SIGNATURES:
                    break
    return out


def verify_signature(raw_body: bytes, header: str | None, secrets: Iterable[bytes | str]) -> bool:
    """True when some v1 signature in `header` is the HMAC-SHA256 of `raw_body` under some secret.

    `raw_body` must be the bytes exactly as received. Empty secrets are ignored (anyone can compute
    an HMAC under an empty key); an empty body is never valid. Comparisons are constant-time and all
    pairs are compared, so the time taken does not depend on where (or whether) a match was found.
    """
    if not raw_body:
        return False
    candidates = signature_candidates(header)
    expected = [_digest(raw_body, s).encode("ascii") for s in secrets if s]
    ok = False
    for want in expected:
        for got in candidates:
            ok |= hmac.compare_digest(got.encode("ascii"), want)
    return ok


# --- the envelope -----------------------------------------------------------------------------------
class EnvelopeError(ValueError):
    """The body is not a V3 webhook event; `errors` says why (no secrets in there: only body content)."""

    def __init__(self, errors: list[str], *, not_json: bool = False) -> None:
        self.errors = errors
        self.not_json = not_json
        super().__init__("; ".join(errors))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_envelope(raw_body: bytes) -> dict[str, Any]:
    """Decode (UTF-8 JSON) and validate against the envelope schema; return the parsed body."""
    try:
        text = raw_body.decode("utf-8")
        obj = json.loads(text, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        why = "body is not UTF-8" if isinstance(e, UnicodeDecodeError) else "body is not valid JSON"
        raise EnvelopeError([why], not_json=True) from None
    errors = sorted(_VALIDATOR.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise EnvelopeError([f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"[:300]
                             for e in errors[:10]])
    occurred = obj["event"]["occurred_at"]
    if parse_occurred_at(occurred) is None:
        raise EnvelopeError([f"event/occurred_at: {occurred[:40]!r} is not an ISO 8601 date-time"])
    return obj


def parse_occurred_at(value: str) -> int | None:
    """Epoch milliseconds of an ISO 8601 date-time (no offset = UTC), or None when it is not one."""
    if not _ISO_DATETIME.fullmatch(value):
        return None
    try:
        dt = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    d = dt - _EPOCH  # integer arithmetic: float timestamps can be off by one millisecond
    return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000


def _text(v: Any) -> str | None:
    """A string field fit for Avro (lone surrogates from JSON escapes would not encode as UTF-8)."""
    if not isinstance(v, str):
        return None
    try:
        v.encode("utf-8")
        return v
    except UnicodeEncodeError:
        return v.encode("utf-8", "backslashreplace").decode("utf-8")


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _ref_id(v: Any) -> str | None:
    return _text(v.get("id")) if isinstance(v, dict) else None


def _ref_ids(v: Any) -> list[str]:
    return [i for r in v if (i := _ref_id(r)) is not None] if isinstance(v, list) else []


def _long(v: Any) -> int | None:
    if isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63:
        return v
    return None


def to_record(envelope: dict[str, Any], *, raw_body: bytes, subscription: str, webhook_id: str | None,
              pd_subscription_id: str | None, received_at_ms: int) -> dict[str, Any]:
    """The `PagerDutyWebhook` Avro record of a validated envelope (see schemas/pagerduty_webhook.avsc).

    Never fails on a schema-valid envelope: fields of unexpected type are left null/empty, and
    payload_json keeps everything as it came.
    """
    ev = envelope["event"]
    data: dict[str, Any] = ev["data"]
    data_type = data["type"]
    is_incident = data_type == "incident"
    agent, client, priority = _obj(ev.get("agent")), _obj(ev.get("client")), _obj(data.get("priority"))

    if is_incident:
        incident_id = _text(data.get("id"))
    else:
        incident_id = _ref_id(data.get("incident"))
    if data_type == "service":
        service_id = _text(data.get("id"))
    else:
        service_id = _ref_id(data.get("service"))
    if is_incident or data_type == "service":
        resource_id = _text(data.get("id"))
    else:
        resource_id = incident_id or service_id or _text(data.get("id"))
    occurred = parse_occurred_at(ev["occurred_at"])
    return {
        "event_id": _text(ev["id"]),
        "webhook_id": _text(webhook_id),
        "subscription": subscription,
        "pd_subscription_id": _text(pd_subscription_id),
        "event_type": _text(ev["event_type"]),
        "known_event_type": ev["event_type"] in KNOWN_EVENT_TYPES,
        "resource_type": _text(ev["resource_type"]),
        "data_type": _text(data_type),
        "occurred_at": occurred if occurred is not None else received_at_ms,
        "received_at": received_at_ms,
        "resource_id": resource_id,
        "incident_id": incident_id,
        "incident_number": _long(data.get("number")) if is_incident else None,
        "incident_key": _text(data.get("incident_key")) if is_incident else None,
        "incident_status": _text(data.get("status")) if is_incident else None,
        "title": _text(data.get("title")) if is_incident else None,
        "urgency": _text(data.get("urgency")),
        "priority_id": _text(priority.get("id")),
        "priority_name": _text(priority.get("summary")),
        "service_id": service_id,
        "escalation_policy_id": _ref_id(data.get("escalation_policy")),
        "assignee_ids": _ref_ids(data.get("assignees")) if is_incident else [],
        "team_ids": _ref_ids(data.get("teams")),
        "agent_id": _text(agent.get("id")),
        "agent_type": _text(agent.get("type")),
        "client_name": _text(client.get("name")),
        "payload_json": raw_body.decode("utf-8"),
    }


def record_key(rec: dict[str, Any]) -> bytes:
    """Kafka key: the incident (so one incident's webhooks stay in order), else the resource, else the event."""
    return (rec["incident_id"] or rec["resource_id"] or rec["event_id"]).encode("utf-8")


# --- dedup ------------------------------------------------------------------------------------------
FIRST, DUPLICATE, UNAVAILABLE = "first", "duplicate", "unavailable"


class WebhookDedup:
    """One Redis ``SET key 1 NX EX ttl`` per delivery: the first claim of a webhook id wins.

    `redis` is a redis.asyncio client, or a callable returning one (or None while there is none yet).
    Any Redis failure, or no answer within `timeout_s`, gives UNAVAILABLE: the caller records the event
    anyway and duplicates are possible.
    """

    def __init__(self, redis: Any, *, namespace: str = "", ttl_s: int = DEDUP_TTL_S,
                 timeout_s: float = DEDUP_TIMEOUT_S) -> None:
        self._redis = redis if callable(redis) and not hasattr(redis, "set") else (lambda: redis)
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s

    def key(self, subscription: str, dedup_id: str) -> str:
        digest = hashlib.sha256(dedup_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return f"pagerstream:{self.namespace}pd-webhook:{subscription}:{digest}"

    async def claim(self, subscription: str, dedup_id: str) -> str:
        r = self._redis()
        if r is None:
            return UNAVAILABLE
        try:
            won = await asyncio.wait_for(r.set(self.key(subscription, dedup_id), b"1", nx=True, ex=self.ttl_s),
                                         self.timeout_s)
        except Exception as e:  # noqa: BLE001 - ConnectionError, timeout, auth...: never lose the event over it
            log.warning("webhook dedup unavailable (%s); recording without dedup", type(e).__name__)
            return UNAVAILABLE
        return FIRST if won else DUPLICATE

    async def release(self, subscription: str, dedup_id: str) -> bool:
        """Forget a claim whose event could not be recorded, so that PagerDuty's retry is."""
        r = self._redis()
        if r is None:
            return False
        try:
            await asyncio.wait_for(r.delete(self.key(subscription, dedup_id)), self.timeout_s)
            return True
        except Exception as e:  # noqa: BLE001 - best effort, logged
            log.warning("could not release a webhook dedup claim (%s): its retry will be taken for a duplicate",
                        type(e).__name__)
            return False


# --- metrics ----------------------------------------------------------------------------------------
class WebhookMetrics:
    """Counters in a worker's own registry (one set per registry)."""

    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, WebhookMetrics]] = \
        weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.received = Counter("pagerstream_pagerduty_webhooks_received", "PagerDuty webhook deliveries",
                                ["subscription"], registry=r)
        self.verified = Counter("pagerstream_pagerduty_webhooks_verified",
                                "Deliveries whose signature matched a secret", ["subscription"], registry=r)
        self.rejected = Counter("pagerstream_pagerduty_webhooks_rejected", "Deliveries answered 4xx/5xx",
                                ["reason"], registry=r)
        self.duplicates = Counter("pagerstream_pagerduty_webhooks_duplicates",
                                  "Deliveries of an X-Webhook-Id already recorded (answered 200, not produced)",
                                  ["subscription"], registry=r)
        self.produced = Counter("pagerstream_pagerduty_webhooks_produced",
                                "Deliveries recorded on the pagerduty.webhooks topic", ["subscription", "known"],
                                registry=r)
        self.dedup_unavailable = Counter("pagerstream_pagerduty_webhooks_dedup_unavailable",
                                         "Deliveries recorded without a dedup check because Redis did not answer",
                                         registry=r)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> WebhookMetrics:
        m = cls._by_registry.get(registry)
        if m is None:
            m = cls._by_registry[registry] = cls(registry)
        return m


# --- the HTTP handler -------------------------------------------------------------------------------
@dataclass
class WebhookReceiver:
    secrets_for: Callable[[str], Sequence[Secret] | None]  # subscription name -> secrets; None: unknown
    dedup: WebhookDedup
    produce: Callable[[bytes, bytes], Awaitable[None]]  # (key, value); returns once acks=all answered
    metrics: WebhookMetrics
    codec: AvroCodec
    ingress_counter: Any = None  # pagerstream_ingress_requests{source,status}, shared with the other routes

    @classmethod
    def for_pipeline(cls, p: Any) -> WebhookReceiver:
        """Wire to a streams.app.Pipeline: its settings, Redis client, Faust producer and metrics."""
        topic_holder: list[Any] = []

        async def produce(key: bytes, value: bytes) -> None:
            if not topic_holder:
                topic_holder.append(p.app.topic(p.topic_names[TOPIC], key_type=bytes, value_type=bytes,
                                                key_serializer="raw", value_serializer="raw", internal=False))

            async def send() -> None:
                fut = await topic_holder[0].send(key=key, value=value)
                await fut  # the producer runs with acks=all

            await asyncio.wait_for(send(), timeout=PRODUCE_TIMEOUT_S)

        return cls(secrets_for=p.settings.webhook_secrets,
                   dedup=WebhookDedup(lambda: p.redis, namespace=p.settings.topic_prefix),
                   produce=produce, metrics=WebhookMetrics.for_registry(p.metrics.registry),
                   codec=AvroCodec("pagerduty_webhook"), ingress_counter=p.metrics.ingress)

    def _answer(self, status: int, body: dict[str, Any]) -> web.Response:
        if self.ingress_counter is not None:
            self.ingress_counter.labels("pagerduty_webhook", "2xx" if status < 300 else str(status)).inc()
        return web.json_response(body, status=status)

    def _reject(self, status: int, reason: str, message: str, errors: list[str] | None = None) -> web.Response:
        self.metrics.rejected.labels(reason).inc()
        word = {400: "invalid", 401: "unauthorized", 404: "not found", 413: "too large"}.get(status, "unavailable")
        return self._answer(status, {"status": word, "message": message, "errors": errors or [message]})

    async def handle(self, request: web.Request) -> web.Response:
        received_at = int(time.time() * 1000)
        name = request.match_info["subscription"]
        secrets = self.secrets_for(name)
        if not secrets:
            self.metrics.received.labels("_unknown_").inc()
            return self._reject(404, "unknown_subscription",
                                f"no PagerDuty webhook subscription named {name[:64]!r} is configured here")
        self.metrics.received.labels(name).inc()
        body = await request.read()
        if len(body) > MAX_BODY:
            return self._reject(413, "too_large", f"body too large ({len(body)} bytes; limit {MAX_BODY})")
        if not body:
            return self._reject(400, "empty_body", "empty body")
        header = request.headers.get(SIGNATURE_HEADER, "")
        if not header.strip():
            return self._reject(401, "missing_signature", f"missing {SIGNATURE_HEADER} header")
        if not verify_signature(body, header, [s.get() for s in secrets]):
            log.info("PagerDuty webhook for %r refused: no valid signature (from %s)", name, request.remote)
            return self._reject(401, "bad_signature", f"no valid signature in {SIGNATURE_HEADER}")
        self.metrics.verified.labels(name).inc()

        try:
            envelope = parse_envelope(body)
        except EnvelopeError as e:
            return self._reject(400, "bad_json" if e.not_json else "bad_envelope",
                                "not a PagerDuty V3 webhook event", e.errors)
        webhook_id = request.headers.get(WEBHOOK_ID_HEADER, "").strip() or None
        if webhook_id is not None and len(webhook_id) > MAX_WEBHOOK_ID:
            return self._reject(400, "bad_webhook_id", f"{WEBHOOK_ID_HEADER} longer than {MAX_WEBHOOK_ID}")
        pd_sub = request.headers.get(SUBSCRIPTION_HEADER, "").strip()[:MAX_WEBHOOK_ID] or None
        rec = to_record(envelope, raw_body=body, subscription=name, webhook_id=webhook_id,
                        pd_subscription_id=pd_sub, received_at_ms=received_at)
        value = self.codec.encode(rec)

        # Without X-Webhook-Id (not PagerDuty, or a hand-made call) the event id stands in for it.
        dedup_id = webhook_id if webhook_id is not None else "event:" + rec["event_id"]
        claim = await self.dedup.claim(name, dedup_id)
        if claim == DUPLICATE:
            self.metrics.duplicates.labels(name).inc()
            return self._answer(200, {"status": "duplicate", "message": "already recorded",
                                      "event_id": rec["event_id"]})
        if claim == UNAVAILABLE:
            self.metrics.dedup_unavailable.inc()
        try:
            await self.produce(record_key(rec), value)
        except Exception as e:  # noqa: BLE001 - Kafka down or slow: PagerDuty retries a 5xx; let it through
            log.warning("PagerDuty webhook for %r not recorded: %s", name, type(e).__name__)
            if claim == FIRST:
                await self.dedup.release(name, dedup_id)
            return self._reject(503, "kafka_unavailable", "could not record the event; retry later")
        self.metrics.produced.labels(name, "true" if rec["known_event_type"] else "false").inc()
        return self._answer(202, {"status": "accepted", "message": "recorded", "event_id": rec["event_id"]})
