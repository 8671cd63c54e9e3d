"""Incident lifecycle mirror: pagerstream's incidents joined with PagerDuty's incident webhooks.

    incidents (key incident_id) ────────────┐ re-key by pd_dedup_key
    pagerduty.webhooks (key PD incident id) ─┤ re-key by incident_key ──► lifecycle.join ──► join ──► incidents.lifecycle
                                             │  (learnt per PD incident in table lifecycle-pd-keys)   (table lifecycles)

The join key is pagerstream's pd_dedup_key, which PagerDuty reports back as the incident's
incident_key. Neither input is keyed by it, so both are repartitioned: the `lifecycle` agent reads
both topics and writes their records, unchanged (Avro single-object, so self-describing), to the
internal topic `<prefix>lifecycle.join` keyed by the dedup key. The same agent reads that topic
back; there both sides of one dedup key meet on one partition, in the table `lifecycles`
(processors/lifecycle.py describes the entry). One agent reads the three topics so that the one
`app.agent(...)` line wires the whole feature; records are told apart by their topic.

Not every webhook carries incident_key (older payloads, sub-resources such as notes): webhooks are
keyed by the PagerDuty incident id, so the key learnt from any event of an incident (triggered has
it) is kept in `lifecycle-pd-keys` for the later ones; events seen before it wait there (bounded).

Idempotent and order-independent: facts are stored by identity (incident_id#version, webhook
event id) and lifecycles derived from the set sorted by time (occurred_at), so a redelivered or
reordered webhook changes the state once. A snapshot is published only when its content changed;
metrics hear each lifecycle's values once (`metric_deltas`).

Bounded: per key the caps in processors/lifecycle.py; entries without change for
PAGERSTREAM_LIFECYCLE_RETENTION_DAYS (default 35) are deleted by a sweep that runs, per partition,
at most every SWEEP_EVERY_S while that partition receives records.

GET /api/v1/analytics?since=&until=&by=service|team|severity (comma-separated, or none) answers from
the `lifecycles` table of this worker's active partitions; with several workers, query each and add
the counts and sums (means: sums.tta_seconds / acknowledged...).
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import faust
from aiohttp import web
from pagerstream.processors.lifecycle import (
    aggregate,
    apply_fact,
    incident_fact,
    lifecycles,
    load_responder_timezones,
    metric_deltas,
    parse_group_by,
    parse_time,
    tz_lookup,
    webhook_fact,
)
from pagerstream.schemas import AvroCodec, DecodeError, registry

log = logging.getLogger("pagerstream.lifecycle")
JOIN_TOPIC = "lifecycle.join"  # logical name; the topic prefix is added
JOIN_RETENTION = timedelta(days=7)
SWEEP_EVERY_S = 300.0
MAX_PARKED = 100  # webhooks waiting for their incident's dedup key, per PagerDuty incident
DAY_MS = 86_400_000
DEFAULT_WINDOW_MS = 7 * DAY_MS
TIMEZONES_ENV = "PAGERSTREAM_RESPONDER_TIMEZONES"  # path of a YAML map: PagerDuty user id -> IANA zone
RETENTION_ENV = "PAGERSTREAM_LIFECYCLE_RETENTION_DAYS"
REOPEN_ENV = "PAGERSTREAM_LIFECYCLE_REOPEN_SECONDS"  # auto-resolution follow-up window (default 3600)


class LifecycleAgents:
    """Mixed into Pipeline (streams/app.py): the `lifecycle` agent, its topics and the analytics route."""

    # --- wiring (called from Pipeline._build_app) -----------------------------------------------------
    def lifecycle_topics(self, app: faust.App) -> tuple[Any, Any]:
        """(lifecycle.join for sending, the agent's channel over incidents + pagerduty.webhooks +
        lifecycle.join). The channel is internal so Faust declares lifecycle.join before subscribing,
        with the configured partition count: co-partitioned with the tables. Also installs
        GET /api/v1/analytics (install_analytics_routes is idempotent)."""
        s, n = self.settings, self.topic_names
        join = s.topic_prefix + JOIN_TOPIC
        raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
        send = app.topic(join, internal=False, **raw)
        sources = app.topic(n["incidents"], n["pagerduty.webhooks"], join, internal=True, partitions=s.partitions,
                            retention=JOIN_RETENTION, deleting=True, **raw)
        self._lc_zones()  # a bad responder time zone file (or number below) stops start-up here
        self._lc_reopen_ms(), self._lc_retention_ms()
        self.install_analytics_routes(app.web.web_app.router)
        return send, sources

    def install_analytics_routes(self, router: web.UrlDispatcher) -> None:
        if getattr(self, "_lc_routes_installed", False):
            return
        router.add_get("/api/v1/analytics", self._view_analytics)
        self._lc_routes_installed = True

    def _lc_zones(self) -> Callable[[str], str]:
        if getattr(self, "_lc_tz", None) is None:
            path = os.environ.get(TIMEZONES_ENV, "").strip()
            self._lc_tz = tz_lookup(load_responder_timezones(path) if path else {})
        return self._lc_tz

    def _lc_webhook_codec(self) -> AvroCodec:
        if getattr(self, "_lc_pd_codec", None) is None:
            self._lc_pd_codec = AvroCodec("pagerduty_webhook")
        return self._lc_pd_codec

    def _lc_reopen_ms(self) -> int:
        return int(float(os.environ.get(REOPEN_ENV, "") or 3600) * 1000)

    def _lc_retention_ms(self) -> int:
        days = float(os.environ.get(RETENTION_ENV, "") or 35)
        return int(max(1.0, days) * DAY_MS)

    # --- the agent ------------------------------------------------------------------------------------
    async def _agent_lifecycle(self, stream: faust.StreamT) -> AsyncIterator[None]:
        n = self.topic_names
        incidents, webhooks = n["incidents"], n["pagerduty.webhooks"]
        async for event in stream.events():
            t0 = time.perf_counter()
            msg = event.message
            try:
                if msg.topic == incidents:
                    stage = "lifecycle-rekey"
                    await self._lc_rekey_incident(event.value)
                elif msg.topic == webhooks:
                    stage = "lifecycle-rekey"
                    await self._lc_rekey_webhook(msg.partition, event.value)
                else:
                    stage = "lifecycle"
                    await self._lc_join(msg.partition, msg.key or b"", event.value)
            except Exception as e:  # one bad record must not stop the partition
                if not isinstance(e, DecodeError):
                    log.exception("lifecycle stage failed")
                await self._dead_letter("lifecycle", str(e)[:2000], e, msg)
                continue
            self.metrics.stage_latency.labels(stage).observe(time.perf_counter() - t0)
            yield None

    async def _lc_rekey_incident(self, value: bytes) -> None:
        rec = self.codecs["incident_event"].decode(value)
        if not rec.get("incident_id") or not rec.get("pd_dedup_key"):
            self.metrics.records.labels("lifecycle-rekey", "skipped").inc()
            return
        await self.lifecycle_join_topic.send(key=rec["pd_dedup_key"].encode(), value=value)
        self.metrics.records.labels("lifecycle-rekey", "incident").inc()

    async def _lc_rekey_webhook(self, partition: int, value: bytes) -> None:
        rec = self._lc_webhook_codec().decode(value)
        if (rec.get("event_type") or "").startswith("service.") and getattr(self, "pd_cache", None) is not None:
            # PagerDuty says a service changed: the cached copy (and lists of services) must go
            try:
                await self.pd_cache.invalidate("services", rec.get("resource_id") or None)
            except Exception as e:  # noqa: BLE001 - the TTL still bounds staleness
                log.warning("REST cache not invalidated for a service webhook: %s", type(e).__name__)
        pd_id = rec.get("incident_id")
        if rec.get("event_type") == "incident.triggered" and pd_id and rec.get("incident_key"):
            await self.reassign_routed(pd_id, rec["incident_key"])
        if not pd_id or not (rec.get("event_type") or "").startswith("incident."):
            self.metrics.records.labels("lifecycle-rekey", "skipped").inc()
            return
        now = int(time.time() * 1000)
        tkey = pd_id.encode()
        known = self.lifecycle_pd_keys.get(tkey) or {}
        key = rec.get("incident_key") or known.get("k")
        if key is None:  # wait for an event of this incident that names its incident_key
            parked = list(known.get("w") or [])
            if len(parked) >= MAX_PARKED:
                self.metrics.records.labels("lifecycle-rekey", "parked_dropped").inc()
                return
            parked.append(base64.b64encode(value).decode())
            self.lifecycle_pd_keys[tkey] = {"k": None, "w": parked, "p": partition, "t": now}
            self.metrics.records.labels("lifecycle-rekey", "parked").inc()
        else:
            for old in known.get("w") or []:  # in arrival order, before this one
                await self.lifecycle_join_topic.send(key=key.encode(), value=base64.b64decode(old))
            await self.lifecycle_join_topic.send(key=key.encode(), value=value)
            if known.get("k") != key or known.get("w"):
                self.lifecycle_pd_keys[tkey] = {"k": key, "w": [], "p": partition, "t": now}
            self.metrics.records.labels("lifecycle-rekey", "webhook").inc()
        self._lc_maybe_sweep(self.lifecycle_pd_keys, "pd-keys", partition, now)

    async def _lc_join(self, partition: int, key: bytes, value: bytes) -> None:
        now = int(time.time() * 1000)
        name = _schema_name(value)
        if name == "IncidentEvent":
            fact = incident_fact(self.codecs["incident_event"].decode(value))
        elif name == "PagerDutyWebhook":
            fact = webhook_fact(self._lc_webhook_codec().decode(value))
        else:
            raise DecodeError(f"lifecycle.join carries IncidentEvent and PagerDutyWebhook records, not {name!r}")
        m = self.metrics
        if fact is None:
            m.records.labels("lifecycle", "skipped").inc()
            return
        dkey = key.decode("utf-8", "replace")
        stored = self.lifecycles.get(key)
        entry, changed = apply_fact(stored, dkey, fact)
        if not changed:
            m.records.labels("lifecycle", "duplicate").inc()
        else:
            await self._lc_publish(entry, now)
            entry["p"], entry["t"] = partition, now
            self.lifecycles[key] = entry
            m.records.labels("lifecycle", "incident" if fact["src"] == "ps" else "webhook").inc()
        self._lc_maybe_sweep(self.lifecycles, "lifecycles", partition, now)

    async def _lc_publish(self, entry: dict[str, Any], now: int) -> None:
        """Publish the lifecycles whose content changed, and tell the metrics what is new."""
        out, seen = entry.setdefault("out", {}), entry.setdefault("obs", {})
        codec = self.codecs["incident_lifecycle"]
        for lc in lifecycles(entry, self._lc_zones(), reopen_window_ms=self._lc_reopen_ms()):
            digest = lc.digest()
            if out.get(lc.lifecycle_id) != digest:
                await self.lifecycle_topic.send(key=lc.lifecycle_id.encode(), value=codec.encode(lc.to_record(now)))
                out[lc.lifecycle_id] = digest
                self.metrics.records.labels("lifecycle", "published").inc()
            seen[lc.lifecycle_id], d = metric_deltas(seen.get(lc.lifecycle_id), lc)
            if d:
                self._lc_observe(lc.labels(), d)
        live = set(entry.get("ps", {}))
        for book in (out, seen):  # incidents dropped by the per-key cap
            for iid in [i for i in book if i not in live]:
                del book[iid]

    def _lc_observe(self, labels: tuple[str, str, str], d: dict[str, Any]) -> None:
        m = self.metrics
        if "alerts_in" in d:
            m.alerts_in.labels(*labels).inc(d["alerts_in"])
        if "incidents_out" in d:
            m.incidents_out.labels(*labels).inc(d["incidents_out"])
        if "mtta_seconds" in d:
            m.incident_mtta.labels(*labels).observe(d["mtta_seconds"])
        if "mttr_seconds" in d:
            m.incident_mttr.labels(*labels).observe(d["mttr_seconds"])
        if "escalations" in d:
            m.incident_escalations.labels(*labels).inc(d["escalations"])
        for period, k in (d.get("interruptions") or {}).items():
            m.incident_interruptions.labels(period, *labels).inc(k)
        if "auto_resolved" in d:
            m.auto_resolutions.labels("auto_resolved", *labels).inc()
        if "needed_human" in d:
            m.auto_resolutions.labels("needed_human", *labels).inc()

    def _lc_maybe_sweep(self, table: Any, name: str, partition: int, now: int) -> None:
        """Delete this partition's entries that did not change for the retention period.

        Only entries written from this partition ("p") are touched, because Faust sends a table
        change to the changelog partition of the event being processed.
        """
        if getattr(self, "_lc_swept", None) is None:
            self._lc_swept: dict[tuple[str, int], int] = {}
        if now - self._lc_swept.get((name, partition), 0) < SWEEP_EVERY_S * 1000:
            return
        self._lc_swept[(name, partition)] = now
        cut = now - self._lc_retention_ms()
        old = [k for k, d in table.items() if d and d.get("p") == partition and d.get("t", 0) < cut]
        for k in old:
            del table[k]
        if old:
            self.metrics.records.labels("lifecycle", "expired").inc(len(old))

    # --- the analytics view -----------------------------------------------------------------------------
    async def _view_analytics(self, request: web.Request) -> web.Response:
        now = int(time.time() * 1000)
        q = request.query
        try:
            until = parse_time(q.get("until")) or now
            since = parse_time(q.get("since"))
            since = until - DEFAULT_WINDOW_MS if since is None else since
            by = parse_group_by(q.get("by"))
        except ValueError as e:
            return web.json_response({"status": "invalid", "errors": [str(e)]}, status=400)
        if since >= until:
            return web.json_response({"status": "invalid", "errors": ["since must be before until"]}, status=400)
        tz, window = self._lc_zones(), self._lc_reopen_ms()
        lcs = [lc for _, entry in self.lifecycles.items() if entry
               for lc in lifecycles(entry, tz, reopen_window_ms=window)]
        body = aggregate(lcs, since_ms=since, until_ms=until, by=by, now_ms=now, reopen_window_ms=window)
        try:
            actives = sorted(tp.partition for tp in self.app.assignor.assigned_actives()
                             if tp.topic == self.settings.topic_prefix + JOIN_TOPIC)
        except Exception:  # noqa: BLE001 - not assigned yet
            actives = []
        body["scope"] = {"partitions": actives, "note": "this worker's active partitions of lifecycle.join; "
                         "with several workers add up counts and sums from each"}
        return web.json_response(body)


def _schema_name(value: bytes) -> str | None:
    if not isinstance(value, (bytes, bytearray)) or len(value) < 10 or value[:2] != b"\xc3\x01":
        raise DecodeError("not an Avro single-object record")
    writer = registry().by_fingerprint.get(bytes(value[2:10]))
    if writer is None:
        raise DecodeError(f"unknown writer schema fingerprint {bytes(value[2:10]).hex()}")
    return str(writer.get("name", "")).rsplit(".", 1)[-1]
