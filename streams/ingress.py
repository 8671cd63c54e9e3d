"""HTTP ingress: accept alerts from PagerDuty-shaped senders, Alertmanager, Grafana and generic
webhooks, validate them, and answer 2xx only after Kafka (acks=all) has the raw record.

Validation runs the same pure normalizer the stream runs, so what is accepted here will
normalize there; nothing is produced for a request that gets a 4xx.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pagerstream.auth import PRINCIPAL
from pagerstream.pagerduty.webhooks import WebhookReceiver
from pagerstream.processors.enrich import enrich
from pagerstream.processors.errors import InvalidInput
from pagerstream.processors.incident import short_hash
from pagerstream.processors.normalize import normalize
from pagerstream.processors.normalize.pd_events import validate_change, validate_enqueue

if TYPE_CHECKING:
    from pagerstream.streams.app import Pipeline

log = logging.getLogger("pagerstream.ingress")
MAX_BODY = 512_000


def pd_error(status: int, message: str, errors: list[str], pd_status: str = "invalid event") -> web.Response:
    return web.json_response({"status": pd_status, "message": message, "errors": errors}, status=status)


class Ingress:
    def __init__(self, pipeline: "Pipeline") -> None:
        self.p = pipeline

    def install(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v2/enqueue", self.pd_enqueue)
        router.add_post("/v2/change/enqueue", self.pd_change)
        router.add_post("/ingest/alertmanager", self.alertmanager)
        router.add_post("/ingest/grafana", self.grafana)
        router.add_post("/ingest/generic/{mapping}", self.generic)
        # PagerDuty V3 webhooks (signed, deduped by X-Webhook-Id) -> pagerduty.webhooks
        self.pd_webhooks = WebhookReceiver.for_pipeline(self.p)
        router.add_post("/pagerduty/webhooks/{subscription}", self.pd_webhooks.handle)

    # --- PagerDuty Events API v2 shape ------------------------------------------------------------
    async def pd_enqueue(self, request: web.Request) -> web.Response:
        return await self._pd(request, "pagerduty_events_v2")

    async def pd_change(self, request: web.Request) -> web.Response:
        return await self._pd(request, "pagerduty_change_v2")

    async def _pd(self, request: web.Request, source: str) -> web.Response:
        m = self.p.metrics
        body = await request.read()
        if len(body) > MAX_BODY:
            m.ingress.labels(source, "400").inc()
            return pd_error(400, "Event object is invalid", [f"Payload is too large ({len(body)} bytes; limit 512 KB)"])
        try:
            obj = json.loads(body)
        except ValueError:
            m.ingress.labels(source, "400").inc()
            return pd_error(400, "Event object is invalid", ["JSON parse error"])
        errors = validate_enqueue(obj) if source == "pagerduty_events_v2" else validate_change(obj)
        if errors:
            m.ingress.labels(source, "400").inc()
            return pd_error(400, "Event object is invalid", errors)
        attrs: dict[str, str] = {}
        dedup_key = obj.get("dedup_key") if source == "pagerduty_events_v2" else None
        if not dedup_key:
            dedup_key = uuid.uuid4().hex
            attrs["dedup_key"] = dedup_key
        key = f"{short_hash(obj['routing_key'])}:{dedup_key}".encode()
        resp = await self._accept(request, source, body, attrs, key, pd_shape=True)
        if resp is not None:
            return resp
        out: dict[str, Any] = {"status": "success", "message": "Event processed"}
        if source == "pagerduty_events_v2":
            out["dedup_key"] = dedup_key
        return web.json_response(out, status=202)

    # --- other webhooks -----------------------------------------------------------------------------
    async def alertmanager(self, request: web.Request) -> web.Response:
        body = await request.read()
        return await self._webhook(request, "alertmanager", body, "groupKey")

    async def grafana(self, request: web.Request) -> web.Response:
        body = await request.read()
        secret = self.p.settings.webhook_secret
        if secret:
            bad = _check_grafana_hmac(request, body, secret.get())
            if bad:
                self.p.metrics.ingress.labels("grafana", "401").inc()
                return web.json_response({"status": "unauthorized", "message": bad, "errors": [bad]}, status=401)
        return await self._webhook(request, "grafana", body, "groupKey")

    async def generic(self, request: web.Request) -> web.Response:
        name = request.match_info["mapping"]
        if name not in self.p.catalog.current.sources:
            self.p.metrics.ingress.labels("generic", "404").inc()
            msg = f"no generic source mapping named {name!r} in the services catalog"
            return web.json_response({"status": "not found", "message": msg, "errors": [msg]}, status=404)
        body = await request.read()
        return await self._webhook(request, f"generic:{name}", body, None)

    async def _webhook(self, request: web.Request, source: str, body: bytes, key_field: str | None) -> web.Response:
        m = self.p.metrics
        label = source.split(":")[0]
        if len(body) > MAX_BODY * 4:
            m.ingress.labels(label, "413").inc()
            return web.json_response({"status": "invalid", "message": "Body too large", "errors": []}, status=413)
        attrs = {}
        rk = request.query.get("routing_key")
        if rk:
            attrs["routing_key"] = rk
        sev = request.query.get("default_severity")
        if sev:
            attrs["default_severity"] = sev
        group = None
        if key_field:
            try:
                group = json.loads(body).get(key_field)
            except (ValueError, AttributeError):
                group = None
        key = (str(group) if group else uuid.uuid4().hex).encode()
        resp = await self._accept(request, source, body, attrs, key, pd_shape=False)
        if resp is not None:
            return resp
        return web.json_response({"status": "success", "message": "Alerts accepted"}, status=200)

    async def _accept(self, request: web.Request, source: str, body: bytes, attrs: dict[str, str], key: bytes,
                      *, pd_shape: bool) -> web.Response | None:
        """Validate by normalizing, produce, wait for acks=all. None means accepted."""
        p = self.p
        label = source.split(":")[0]
        raw_id = uuid.uuid4().hex
        now = int(time.time() * 1000)
        ua = request.headers.get("User-Agent")
        if ua:
            attrs["user_agent"] = ua[:200]
        who = request.get(PRINCIPAL)  # set by pagerstream/auth.py: the key's name, never the key
        if who is not None:
            attrs["ingress_principal"] = who.actor
        try:
            alerts = normalize(source, body, raw_id=raw_id, received_at_ms=now, attributes=attrs,
                               default_routing_key=p.default_routing_key,
                               mappings=p.catalog.current.sources)
        except InvalidInput as e:
            p.metrics.ingress.labels(label, "400").inc()
            if pd_shape:
                return pd_error(400, "Event object is invalid", e.errors)
            return web.json_response({"status": "invalid", "message": "Alert payload is invalid",
                                      "errors": e.errors}, status=400)
        missing = [a.dedup_key for a in alerts if not enrich(a, p.catalog.current).alert.routing_key]
        if missing:
            p.metrics.ingress.labels(label, "400").inc()
            msg = ("no routing key: pass ?routing_key=, set PAGERDUTY_ROUTING_KEY, or map the alert to a "
                   "catalog service that has one")
            return web.json_response({"status": "invalid", "message": msg, "errors": [msg]}, status=400)
        rec = {"id": raw_id, "source": source, "received_at": now,
               "content_type": request.content_type or "application/json", "body": body, "attributes": attrs}
        try:
            await p.produce_raw(key, rec)
        except Exception as e:  # Kafka down or timed out: the sender must retry; 503 says so
            log.warning("ingress could not produce to Kafka: %s", type(e).__name__)
            p.metrics.ingress.labels(label, "503").inc()
            # Retry-After: senders that honour it (Alertmanager, PagerDuty clients) come back when the
            # producer has had time to reconnect instead of hammering a broker that is restarting.
            if pd_shape:
                resp = pd_error(503, "Service unavailable", ["could not persist the event; retry"],
                                pd_status="unavailable")
                resp.headers["Retry-After"] = "5"
                return resp
            return web.json_response({"status": "unavailable", "message": "retry later", "errors": []}, status=503,
                                     headers={"Retry-After": "5"})
        p.metrics.ingress.labels(label, "2xx").inc()
        return None


def _check_grafana_hmac(request: web.Request, body: bytes, secret: str) -> str | None:
    sig = request.headers.get("X-Grafana-Alerting-Signature", "")
    ts = request.headers.get("X-Grafana-Alerting-Signature-Timestamp")
    msg = (ts.encode() + b":" + body) if ts else body
    want = hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()
    if not sig:
        return "missing X-Grafana-Alerting-Signature"
    if not hmac.compare_digest(sig.strip().lower().encode(), want.encode()):
        return "bad signature"
    if ts:
        try:
            if abs(time.time() - int(ts)) > 300:
                return "signature timestamp outside the 5 minute window"
        except ValueError:
            return "bad signature timestamp"
    return None
