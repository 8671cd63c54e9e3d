"""The Faust app: topics, tables and the agents that move records through the pure core.

    alerts.raw ──normalize──► alerts.normalized ──incidents──► incidents (Avro)
                                                          └──► pagerduty.outbox ──forward──► PagerDuty
                                                                     pagerduty.retry ◄─┘ (parked, in order)

Agents never stop on bad input: a record that cannot be decoded or processed goes to a
dead-letter topic with the stage, the reason and the original bytes.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import faust
import redis.asyncio as aioredis
from aiohttp import web
from pagerstream.processors.alert import Alert
from pagerstream.processors.enrich import enrich
from pagerstream.processors.errors import InvalidInput
from pagerstream.processors.incident import (
    RESOLVED_RETENTION_MS,
    Grouping,
    GroupState,
    IncidentChangeOut,
    decide,
    expire,
    group_from_dict,
    group_to_dict,
    forget,
    is_forgettable,
    pagerduty_seq,
    short_hash,
)
from pagerstream.processors.intel import (
    PredictionCache,
    TemplateBook,
    TransientSettings,
    TypeEntry,
    advise,
    alert_type,
    learn_resolved,
)
from pagerstream.processors.normalize import normalize
from pagerstream.processors.outbox import change_event_record, incident_event_record, pagerduty_event_record
from pagerstream.schemas import AvroCodec, DecodeError, registry
from pagerstream.streams.catalog_view import CatalogView
from pagerstream.streams.consumer_guard import OffsetGuard
from pagerstream.streams.delivery_agents import DeliveryAgents
from pagerstream.streams.forwarder import Forwarder, RateLimiter
from pagerstream.streams.ingress import Ingress
from pagerstream.streams.learn_agents import LearnAgents, feedback_problems
from pagerstream.streams.lifecycle_agents import LifecycleAgents
from pagerstream.streams.metrics import Metrics
from pagerstream.streams.notify_agents import NotifyAgents
from pagerstream.streams.model_hub import ModelHub
from pagerstream.streams.rate_agents import RateAgents
from pagerstream.streams.topics import topic_specs
from pagerstream.audit import AuditLog
from pagerstream.auth import install_auth
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pagerstream.config import Settings
from pagerstream.connections import faust_broker_credentials, redis_client

log = logging.getLogger("pagerstream")
MAX_EXPIRIES_PER_TICK = 500  # keeps one tick short; the rest waits for the next one
SEQ_SLOTS = 8  # change events: seq = (source offset + 1) * SEQ_SLOTS (> 0, increasing per partition)


@dataclass
class RuntimeOptions:
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    session_timeout_s: float = 30.0
    commit_interval_s: float = 1.0
    enable_forwarder: bool = True
    tls_cert: str | None = None  # serve the ingress over HTTPS (PagerDuty clients insist on https)
    tls_key: str | None = None


class PagerstreamApp(faust.App):
    pipeline: Pipeline

    async def on_start(self) -> None:
        await super().on_start()
        await self.pipeline.start_side_services()

    def _new_consumer(self) -> Any:
        # Installed at creation: Faust's fetch loop binds the consumer's callback and offsets once.
        consumer = super()._new_consumer()
        p = self.pipeline
        p.offset_guard = OffsetGuard.install(
            consumer, p.consecutive_topics(),
            lambda topic, action: p.metrics.consumer_out_of_order.labels(topic, action).inc())
        return consumer

    async def on_shutdown(self) -> None:
        # After the agents stopped: closing the HTTP and Redis clients earlier made in-flight
        # deliveries fail (and park) on every SIGTERM.
        await self.pipeline.stop_side_services()
        await super().on_shutdown()


class Pipeline(DeliveryAgents, RateAgents, LearnAgents, LifecycleAgents, NotifyAgents):
    def __init__(self, settings: Settings, opts: RuntimeOptions | None = None) -> None:
        self.settings = settings
        self.opts = opts or RuntimeOptions()
        self.metrics = Metrics()
        self.codecs = {n: AvroCodec(n) for n in ("raw_alert", "alert", "incident_event", "pagerduty_event",
                                                 "dead_letter", "tick", "predicted_incident", "model_feedback",
                                                 "incident_lifecycle")}
        self.fp_tick = registry().fingerprints["tick"]
        self.default_routing_key = settings.pagerduty_routing_key.get()
        names = {k: v.name for k, v in topic_specs(settings.topic_prefix).items()}
        self.topic_names = names
        self.catalog = CatalogView(settings.kafka_bootstrap_servers, names["pagerstream.catalog"])
        self.models = ModelHub(settings.kafka_bootstrap_servers, names["models.checkpoints"], names["incidents"],
                               settings.encryption_key, self.metrics)
        self.pred_cache = PredictionCache()
        self.transient_settings = TransientSettings(
            enabled=settings.transient_pause, pause_s=settings.transient_pause_seconds,
            p_pause=settings.transient_p_pause, min_episodes=settings.transient_min_episodes)
        self.routing = self._load_routing(settings)
        self.oncall_view: Any = None  # routing's OnCallView, refreshed by _refresh_oncall
        self.oncall_store: Any = None
        self._routed: dict[str, dict[str, Any]] = {}  # dedup_key -> decision to store for reassignment
        self.pd_rest: Any = None  # REST client + Redis cache, when PAGERDUTY_API_KEY / _USER_TOKEN is set
        self.pd_cache: Any = None
        self.redis: aioredis.Redis | None = None
        self.forwarder: Forwarder | None = None
        self._deadlines: dict[int, list[tuple[int, str]]] = {}
        self._scanned: set[int] = set()
        self._templates: dict[int, TemplateBook] = {}  # per incidents partition, saved to `transient`
        self._specs: dict[str, Any] = {}
        self._specs_version = ""
        self.app = self._build_app()

    def _forwarding_share(self) -> float:
        """The share of the outbox partitions this worker forwards from: while Redis is down its local
        bucket gets this share of the rate (streams/forwarder.py RateLimiter)."""
        outbox = self.topic_names["pagerduty.outbox"]
        mine = sum(1 for tp in self.app.assignor.assigned_actives() if tp.topic == outbox)
        return mine / max(1, self.settings.partitions)

    def consecutive_topics(self) -> list[str]:
        """Topics whose offsets have no holes (not compacted, never written in transactions): a jump in
        them can only be a stale record (streams/consumer_guard.py)."""
        from pagerstream.audit import INTAKE_TOPIC
        from pagerstream.streams.lifecycle_agents import JOIN_TOPIC

        prefix = self.settings.topic_prefix
        return [spec.name for spec in topic_specs(prefix).values() if not spec.compact] + \
            [prefix + INTAKE_TOPIC, prefix + JOIN_TOPIC]

    # --- lifecycle --------------------------------------------------------------------------------
    async def start_side_services(self) -> None:
        # faust and aiokafka call log.debug("... %r", value) for every record; with their loggers left
        # at NOTSET the records were built (repr of each value) before handlers dropped them.
        root = logging.getLogger().getEffectiveLevel()
        for name in ("faust", "mode", "aiokafka", "kafka"):
            logging.getLogger(name).setLevel(max(root, logging.INFO))
        await self.catalog.start()
        self.metrics.catalog_services.set(len(self.catalog.current.services))
        await self.models.start()
        s = self.settings
        self.redis = redis_client(s, socket_timeout=2, socket_connect_timeout=2)
        if s.pagerduty_api_key.get() or s.pagerduty_user_token.get():
            from pagerstream.pagerduty.cache import PagerDutyCache
            from pagerstream.pagerduty.rest import PagerDutyREST

            self.pd_rest = PagerDutyREST.from_env()
            self.pd_cache = PagerDutyCache(self.pd_rest, self.redis, registry=self.metrics.registry)
        await self._refresh_oncall()
        await self.start_notifications()
        limiter = RateLimiter(self.redis, s.pd_rate_per_second, s.pd_burst, local_share=self._forwarding_share)
        self.forwarder = Forwarder(enqueue_url=s.events_enqueue_url, change_url=s.events_change_url,
                                   limiter=limiter, metrics=self.metrics, timeout_s=s.pd_timeout_seconds,
                                   inline_budget_s=s.pd_max_inline_retry_seconds)

    @staticmethod
    def _load_routing(settings: Settings) -> Any:
        """Routing rules (docs/routing.md), checked at start: a bad file stops the worker."""
        if not settings.routing_config_path:
            return None
        from pagerstream.pagerduty.routing import load_routing_config, routing_secrets_from_env

        return load_routing_config(settings.routing_config_path, secrets=routing_secrets_from_env())

    async def _refresh_oncall(self) -> None:
        """Who is on call for the policies the routing rules name, and their load, kept in memory for
        the incident stage (which must not wait on Redis or REST per incident)."""
        if self.routing is None or self.redis is None:
            return
        from pagerstream.pagerduty.oncall_store import OnCallStore, SchedulesAsCode

        if self.oncall_store is None:
            s = self.settings
            schedules = SchedulesAsCode.load(s.schedules_path) if s.schedules_path else None
            self.oncall_store = OnCallStore(self.redis, rest=self.pd_cache, schedules=schedules,
                                            policy_ids=self.routing.policy_ids(),
                                            namespace=(s.topic_prefix.strip(".") or "default")[:60])
        try:
            self.oncall_view = await self.oncall_store.view(self.routing.policy_ids())
        except Exception as e:  # noqa: BLE001 - keep the last view; routing says "load unknown"
            log.warning("on-call view not refreshed: %s", type(e).__name__)

    def _route(self, a: Alert, adv: Any, alert_type_: str) -> Any:
        from datetime import UTC, datetime

        from pagerstream.pagerduty.routing import IncidentContext

        cat, note = IncidentContext._category(adv.scores)
        ctx = IncidentContext(service=a.service, team=a.team, tier=int(a.tier) if (a.tier or "").isdigit() else None,
                              severity=a.severity, category=cat, labels=dict(a.labels), alert_type=alert_type_,
                              summary=a.summary, category_note=note)
        d = self.routing.route(ctx, datetime.fromtimestamp(a.received_at / 1000, UTC), self.oncall_view)
        route = {"rule": d.rule, "routing_key_name": d.routing_key_name, "routing_key_hint": d.routing_key_hint,
                 "escalation_policy_id": d.escalation_policy_id,
                 "responder_id": d.responder.id if d.responder else None, "reason": list(d.reason)}
        if d.responder is not None and self.settings.assign_responders:
            self._routed[a.dedup_key] = {**route, "responder": {"id": d.responder.id, "name": d.responder.name,
                                                                "level": d.responder.level}}
        self.metrics.model_decisions.labels("route", d.rule).inc()
        return replace(adv, route=route, routing_key=d.routing_key.get() if d.routing_key else None)

    async def stop_side_services(self) -> None:
        await self.catalog.stop()
        await self.stop_notifications()
        if self.pd_rest is not None:
            await self.pd_rest.aclose()
        await self.models.stop()
        if self.forwarder:
            await self.forwarder.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def produce_raw(self, key: bytes, rec: dict[str, Any]) -> None:
        """Produce to alerts.raw and wait for the broker's acks=all answer."""
        fut = await self.raw_topic.send(key=key, value=self.codecs["raw_alert"].encode(rec))
        await asyncio.wait_for(fut, timeout=15)

    # --- app ----------------------------------------------------------------------------------------
    def _build_app(self) -> faust.App:
        s, o = self.settings, self.opts
        app = PagerstreamApp(
            s.app_id,
            broker=f"kafka://{s.kafka_bootstrap_servers}",
            broker_credentials=faust_broker_credentials(s),
            store="rocksdb://",
            datadir=s.datadir,
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            topic_allow_declare=True,
            processing_guarantee="at_least_once",
            producer_acks=-1,
            # Group states are ~1-2 KB: with the default 16 KB batches the changelog buffer kept filling
            # ("producer buffer full", 15-36 warnings per 30k alerts, commits taking 3.8 s); with these, 3.
            producer_max_batch_size=512 * 1024,
            producer_max_request_size=16 * 2**20,  # model checkpoints (models.checkpoints allows 16 MB)
            producer_linger=0.002,
            broker_session_timeout=o.session_timeout_s,
            broker_heartbeat_interval=max(1.0, o.session_timeout_s / 10),
            broker_commit_every=1000,
            broker_commit_interval=o.commit_interval_s,
            web_port=o.web_port,
            web_bind=o.web_host,
            web_host=o.web_host,
            web_enabled=True,
            consumer_auto_offset_reset="earliest",
            table_standby_replicas=1,
            autodiscover=False,
            stream_wait_empty=False,
            logging_config=None,
            key_serializer="raw",
            value_serializer="json",
            web_ssl_context=_ssl_context(o.tls_cert, o.tls_key),
            # Bodies up to 2 MB reach the handlers, which answer 400 above PagerDuty's 512 KB limit.
            web_application_options={"client_max_size": 2 * 1024 * 1024},
        )
        app.pipeline = self

        @app.on_partitions_revoked.connect
        async def _revoked(sender: Any, revoked: Any, **_: Any) -> None:
            self._on_revoked({tp.partition for tp in revoked if tp.topic == self.topic_names["alerts.normalized"]})
        n = self.topic_names
        topic = lambda name: app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                                       value_serializer="raw", internal=False)
        self.raw_topic = topic(n["alerts.raw"])
        self.normalized_topic = topic(n["alerts.normalized"])
        self.incidents_topic = topic(n["incidents"])
        self.outbox_topic = topic(n["pagerduty.outbox"])
        self.retry_topic = topic(n["pagerduty.retry"])
        self.alert_dlq = topic(n["alerts.dead-letter"])
        self.pd_dlq = topic(n["pagerduty.dead-letter"])
        self.rates_topic = topic(n["alerts.rates"])
        self.predicted_topic = topic(n["incidents.predicted"])
        self.feedback_topic = topic(n["models.feedback"])
        self.checkpoints_topic = topic(n["models.checkpoints"])
        self.points_topic = topic(n["metrics.points"])
        self.notify_retry_topic = topic(n["notifications.retry"])
        self.notify_history_topic = topic(n["notifications.history"])
        self.notify_dlq_topic = topic(n["notifications.dead-letter"])
        self.lifecycle_topic = topic(n["incidents.lifecycle"])
        self.lifecycle_join_topic, self.lifecycle_sources = self.lifecycle_topics(app)  # + GET /api/v1/analytics
        rocks = {"block_cache_size": 16 * 2**20, "write_buffer_size": 8 * 2**20, "max_write_buffer_number": 2}
        self.groups = app.Table("groups", default=None, key_type=bytes, partitions=s.partitions,
                                options=rocks)
        self.rates = app.Table("rates", default=None, key_type=bytes, partitions=s.partitions, options=rocks)
        self.aliases = app.Table("aliases", default=None, key_type=bytes, partitions=s.partitions, options=rocks)
        self.delivered = app.Table("pd-delivered", default=None, key_type=bytes, partitions=s.partitions, options=rocks)
        self.parked = app.Table("pd-parked", default=None, key_type=bytes, partitions=s.partitions,
                                options=rocks)
        # per partition: one entry per alert type (episode durations, openings) + b"__fleet__"
        self.transient = app.Table("transient", default=None, key_type=bytes, partitions=s.partitions,
                                   options=rocks)
        self.metric_series = app.Table("metric-series", default=None, key_type=bytes, partitions=s.partitions,
                                       options=rocks)
        self.incident_features = app.Table("incident-features", default=None, key_type=bytes, partitions=1,
                                           options=rocks)
        self.lifecycles = app.Table("lifecycles", default=None, key_type=bytes, partitions=s.partitions, options=rocks)
        self.lifecycle_pd_keys = app.Table("lifecycle-pd-keys", default=None, key_type=bytes, partitions=s.partitions,
                                           options=rocks)

        app.agent(self.raw_topic, name="normalize", concurrency=1)(self._agent_normalize)
        app.agent(self.normalized_topic, name="incidents", concurrency=1)(self._agent_incidents)
        app.agent(self.rates_topic, name="rates", concurrency=1)(self._agent_rates)
        app.agent(self.points_topic, name="metric-points", concurrency=1)(self._agent_points)
        app.agent(self.feedback_topic, name="learn", concurrency=1)(self._agent_learn)
        if os.environ.get("PAGERSTREAM_NOTIFY_CONFIG"):
            app.agent(self.incidents_topic, name="notify", concurrency=1)(self._agent_notify)
            app.agent(self.notify_retry_topic, name="notify-retry", concurrency=1)(self._agent_notify_retry)
        app.agent(self.lifecycle_sources, name="lifecycle", concurrency=1)(self._agent_lifecycle)
        app.timer(5.0)(self._checkpoint_timer)
        app.timer(30.0)(self._refresh_oncall)
        if o.enable_forwarder:
            # One actor per partition: partitions deliver concurrently, each strictly in order.
            app.agent(self.outbox_topic, name="forward", isolated_partitions=True)(self._agent_forward)
            app.agent(self.retry_topic, name="retry", concurrency=1)(self._agent_retry)
        app.timer(s.tick_seconds)(self._send_ticks)

        router = app.web.web_app.router
        self.auth = install_auth(self, app)  # pagerstream/auth.py: keys, tokens, rate limits before every route
        self.audit = AuditLog.install(self, app)  # pagerstream/audit.py: audit.intake -> hash chain on `audit`
        Ingress(self).install(router)
        router.add_post("/api/v1/feedback", self._view_feedback)
        self.install_notify_routes(router)
        router.add_get("/metrics", self._view_metrics)
        router.add_get("/healthz", self._view_healthz)
        router.add_get("/readyz", self._view_readyz)
        self.metrics.add_lag(self._lag)
        return app

    # --- agents -------------------------------------------------------------------------------------
    async def _agent_normalize(self, stream: faust.StreamT) -> AsyncIterator[None]:
        await self.catalog.ready.wait()
        m = self.metrics
        async for event in stream.events():
            t0 = time.perf_counter()
            msg = event.message
            try:
                raw = self.codecs["raw_alert"].decode(event.value)
            except DecodeError as e:
                await self._dead_letter("decode", str(e), e, msg)
                continue
            cat = self.catalog.current
            try:
                alerts = normalize(raw["source"], raw["body"], raw_id=raw["id"], received_at_ms=raw["received_at"],
                                   attributes=raw["attributes"], default_routing_key=self.default_routing_key,
                                   mappings=cat.sources)
            except InvalidInput as e:
                await self._dead_letter("normalize", "; ".join(e.errors)[:2000], e, msg)
                continue
            except Exception as e:  # a bug must not stop the partition: dead-letter and go on
                log.exception("normalize failed")
                await self._dead_letter("normalize", f"internal error: {e}"[:2000], e, msg)
                continue
            try:
                for a in alerts:
                    en = self._identity(enrich(a, cat).alert).with_(raw_partition=msg.partition,
                                                                    raw_offset=msg.offset)
                    if not en.routing_key:
                        await self._dead_letter("enrich", "no routing key for alert " + a.dedup_key[:64], None, msg)
                        continue
                    await self.normalized_topic.send(key=en.group_key.encode(),
                                                     value=self.codecs["alert"].encode(en.to_record()))
            except Exception as e:
                log.exception("enrich failed")
                await self._dead_letter("enrich", f"internal error: {e}"[:2000], e, msg)
                continue
            m.records.labels("normalize", "ok").inc()
            m.stage_latency.labels("normalize").observe(time.perf_counter() - t0)
            yield None

    async def _agent_incidents(self, stream: faust.StreamT) -> AsyncIterator[None]:
        """Decide, store the group state, publish the decisions; one event at a time, in order.

        Replays are safe whichever of state and outputs survived a crash: a replayed alert is either
        recognised (stored decision re-emitted) or decided again from the same state into the same
        outputs, and PagerDuty calls are numbered from the incident (pagerduty_seq), not the offset.
        """
        await self.catalog.ready.wait()
        async for event in stream.events():
            t0 = time.perf_counter()
            try:
                await self._decide_one(event)
            except Exception as e:  # never let one record stop the partition
                if not isinstance(e, DecodeError):
                    log.exception("incident stage failed")
                await self._dead_letter("incident", str(e)[:2000], e, event.message)
                continue
            self.metrics.stage_latency.labels("incident").observe(time.perf_counter() - t0)
            yield None

    async def _decide_one(self, event: Any) -> None:
        msg = event.message
        value: bytes = event.value
        if value[2:10] == self.fp_tick:
            tick = self.codecs["tick"].decode(value)
            outs, prepared = self._on_tick(msg.partition, tick["now"])
            if outs:
                self._learn_transient(outs)
                await self._emit(outs, prepared)
            return
        a = Alert.from_record(self.codecs["alert"].decode(value))
        if a.action == "change":
            await self._emit_change(a, (msg.offset + 1) * SEQ_SLOTS)
            self.metrics.records.labels("incident", "change").inc()
            return
        key = a.group_key.encode()
        stored = self.groups.get(key)
        state = group_from_dict(stored) if stored else None
        step = decide(state, a, self._grouping_for(a), self._advise)
        prepared = self._prepare(step.outputs) if step.outputs else []
        if not step.replayed:
            d = group_to_dict(step.state)
            d["p"] = msg.partition
            self.groups[key] = d
            due = _next_due(step.state)
            if due is not None:
                heapq.heappush(self._deadlines.setdefault(msg.partition, []), (due, a.group_key))
        self.metrics.records.labels("incident", step.outputs[0].change if step.outputs else "replay").inc()
        if step.outputs:
            if not step.replayed:
                self._learn_transient(step.outputs)
            await self._emit(step.outputs, prepared)
            if self._routed:
                await self._remember_routes(step.outputs)
        if not step.replayed and a.action == "trigger" and a.service:
            # the per-service rate series (streams/rate_agents.py), repartitioned by service
            await self.rates_topic.send(key=a.service.encode(), value=b'{"t":%d}' % a.received_at)

    def _advise(self, a: Alert) -> Any:
        """Models for an alert that opens an incident (processors/intel.py); state in `transient`."""
        t0 = time.perf_counter()
        part = self._current_partition()
        book = self._templates.get(part)
        if book is None:  # first use since this partition was assigned: restore the miner
            book = self._templates[part] = TemplateBook.from_dict(self.transient.get(b"__templates__"))
        t = alert_type(a, book)
        tkey = b"t:" + t.encode()
        fleet = self.transient.get(b"__fleet__") or {}
        adv, entry = advise(a, TypeEntry.from_dict(self.transient.get(tkey)), list(fleet.get("pool") or []),
                            self.transient_settings, classifier=self.models.classifier, cache=self.pred_cache,
                            index=self.models.index, type_=t)
        self.transient[tkey] = entry.to_dict()
        if self.routing is not None:
            adv = self._route(a, adv, t)
        m = self.metrics
        m.model_latency.labels("advise").observe(time.perf_counter() - t0)
        for sc in adv.scores:
            m.model_score.labels(sc["model"]).observe(sc["score"])
            outcome = sc["label"] if sc["model"] == "transient" else ("abstained" if sc["abstained"] else "labelled")
            m.model_decisions.labels(sc["model"], outcome).inc()
        m.classify_cache.labels("hit").inc(self.pred_cache.hits - getattr(self, "_cache_hits_seen", 0))
        m.classify_cache.labels("miss").inc(self.pred_cache.misses - getattr(self, "_cache_misses_seen", 0))
        self._cache_hits_seen, self._cache_misses_seen = self.pred_cache.hits, self.pred_cache.misses
        return adv

    def _learn_transient(self, outs: tuple[IncidentChangeOut, ...]) -> None:
        """A source-resolved incident teaches the transient model its type's duration."""
        for o in outs:
            inc = o.incident
            if o.detail in ("paged_after_pause", "resolved_while_paused"):
                self.metrics.model_decisions.labels("transient", o.detail).inc()
            if o.change != "resolved" or not inc.alert_type:
                continue
            tkey = b"t:" + inc.alert_type.encode()
            fleet = self.transient.get(b"__fleet__") or {}
            entry, pool = learn_resolved(inc, TypeEntry.from_dict(self.transient.get(tkey)),
                                         list(fleet.get("pool") or []))
            self.transient[tkey] = entry.to_dict()
            self.transient[b"__fleet__"] = {"pool": pool}

    def _route_key(self, pd_dedup_key: str) -> str:
        return f"pagerstream:{self.settings.topic_prefix}route:{short_hash(pd_dedup_key, 24)}"

    async def _remember_routes(self, outs: tuple[IncidentChangeOut, ...]) -> None:
        """Routed responders, kept 1 day in Redis until PagerDuty's incident.triggered webhook names the
        PagerDuty incident to reassign (streams/lifecycle_agents.py)."""
        for o in outs:
            d = self._routed.pop(o.alert.dedup_key, None) if o.alert is not None else None
            if d is None or o.change != "opened" or self.redis is None:
                continue
            try:
                await self.redis.set(self._route_key(o.incident.pd_dedup_key), json.dumps(d), ex=86_400)
            except Exception as e:  # noqa: BLE001 - the incident is still paged, only not reassigned
                log.warning("routed responder not stored: %s", type(e).__name__)
        self._routed.clear()

    async def reassign_routed(self, pd_incident_id: str, incident_key: str) -> None:
        """PagerDuty created the incident: reassign it to the routed responder, reason in a note."""
        if self.pd_rest is None or self.redis is None or not self.settings.assign_responders:
            return
        from pagerstream.pagerduty.routing import Responder, RouteDecision, reassign_with_note

        raw = await self.redis.getdel(self._route_key(incident_key))
        if not raw:
            return
        d = json.loads(raw)
        r = d["responder"]
        decision = RouteDecision(rule=d["rule"], routing_key_name=d.get("routing_key_name") or "", routing_key=None,
                                 escalation_policy_id=d.get("escalation_policy_id"),
                                 responder=Responder(r["id"], r.get("name"), int(r.get("level") or 1), None),
                                 reason=list(d.get("reason") or []))
        try:
            res = await reassign_with_note(self.pd_rest, pd_incident_id, decision, store=self.oncall_store)
            self.metrics.model_decisions.labels("route", "reassigned" if res.reassigned else "not_reassigned").inc()
        except Exception as e:  # noqa: BLE001 - PagerDuty keeps its own assignment
            log.warning("reassignment of a routed incident failed: %s", type(e).__name__)
            self.metrics.model_decisions.labels("route", "reassign_failed").inc()

    def _identity(self, a: Alert) -> Alert:
        """Give acknowledge/resolve events the identity their trigger was enriched with.

        A PagerDuty-shaped resolve usually has no payload, so catalog matchers on source or component
        cannot match it; without this it would keep the sender's routing key and group key and miss
        its incident. Keyed by the *incoming* routing key + dedup_key, which is also the alerts.raw key
        of PagerDuty-shaped events, so trigger and resolve meet on one partition.
        """
        alias_key = f"{short_hash(a.routing_key)}:{a.dedup_key}".encode()
        if a.action == "trigger":
            if a.service is not None:
                want = {"service": a.service, "team": a.team, "tier": a.tier, "runbook_url": a.runbook_url,
                        "routing_key": a.routing_key, "group_key": a.group_key}
                if self.aliases.get(alias_key) != want:
                    self.aliases[alias_key] = want
            return a
        if a.action in ("acknowledge", "resolve") and a.service is None:
            known = self.aliases.get(alias_key)
            if known:
                if a.action == "resolve":
                    del self.aliases[alias_key]  # the alert's life is over; a late repeat is dropped anyway
                return a.with_(**known)
        return a

    def _grouping_for(self, a: Alert) -> Grouping:
        cat = self.catalog.current
        if self._specs_version != cat.version:
            self._specs = {s.name: s for s in cat.services}
            self._specs_version = cat.version
        spec = self._specs.get(a.service or "") or cat.defaults
        window = spec.grouping.window_seconds * 1000 if spec.grouping.mode != "none" else 0
        return Grouping(mode=spec.grouping.mode, window_ms=window,  # type: ignore[arg-type]
                        auto_resolve_ms=spec.auto_resolve_seconds * 1000)

    def _on_revoked(self, partitions: set[int]) -> None:
        """Partitions moved away: forget what this worker derived from them (rebuilt on return)."""
        for p in partitions:
            self._scanned.discard(p)
            self._deadlines.pop(p, None)
            self._templates.pop(p, None)

    def _on_tick(self, partition: int, now: int
                 ) -> tuple[tuple[IncidentChangeOut, ...], list[tuple[Any, bytes, bytes]]]:
        book = self._templates.get(partition)
        if book is not None and book.dirty:  # the template miner is saved at most once per tick
            self.transient[b"__templates__"] = book.to_dict()
            book.dirty = False
        if partition not in self._scanned:  # first tick after (re)assignment: rebuild the deadline heap
            heap: list[tuple[int, str]] = []
            for k, d in self.groups.items():
                if d and d.get("p") == partition:
                    due = _next_due(group_from_dict(d))
                    if due is not None:
                        heap.append((due, k.decode() if isinstance(k, bytes) else k))
            heapq.heapify(heap)
            self._deadlines[partition] = heap
            self._scanned.add(partition)
        heap = self._deadlines.get(partition, [])
        outs: list[IncidentChangeOut] = []
        prepared: list[tuple[Any, bytes, bytes]] = []
        while heap and heap[0][0] <= now and len(outs) < MAX_EXPIRIES_PER_TICK:
            _, gk = heapq.heappop(heap)
            key = gk.encode()
            stored = self.groups.get(key)
            if not stored:
                continue
            g = group_from_dict(stored)
            step = expire(g, now)
            g2 = step.state
            if step.outputs:
                try:
                    prepared.extend(self._prepare(step.outputs))
                except Exception:  # this group only: left as stored, found again by the next rescan
                    log.exception("expiry of group %s not encodable; left as it is", gk[:80])
                    self.metrics.records.labels("incident", "expiry_failed").inc()
                    continue
            outs.extend(step.outputs)
            if is_forgettable(g2, now):
                d = group_to_dict(forget(g2))  # the counter stays: numbering must not restart (forget())
                d["p"] = partition
                if stored != d:
                    self.groups[key] = d
                continue
            if step.outputs:
                d = group_to_dict(g2)
                d["p"] = partition
                self.groups[key] = d
            due = _next_due(g2)
            if due is not None:
                heapq.heappush(heap, (max(due, now + 1), gk))
        return tuple(outs), prepared

    async def _send_ticks(self) -> None:
        now = int(time.time() * 1000)
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:
            return
        for tp in actives:
            if tp.topic == self.topic_names["alerts.normalized"]:
                await self.normalized_topic.send(
                    key=b"__tick__", value=self.codecs["tick"].encode({"partition": tp.partition, "now": now}),
                    partition=tp.partition)
            elif tp.topic == self.topic_names["alerts.rates"]:
                await self.rates_topic.send(key=b"__tick__", value=b'{"tick":%d}' % now, partition=tp.partition)

    def _prepare(self, outs: tuple[IncidentChangeOut, ...]) -> list[tuple[Any, bytes, bytes]]:
        """Every record the decisions produce, encoded: (topic, key, value). Called before the group
        state is stored, so a decision that cannot be encoded leaves neither state nor outputs behind
        (its alert is dead-lettered whole, and a replay decides it again)."""
        recs: list[tuple[Any, bytes, bytes]] = []
        for o in outs:
            rec = incident_event_record(o)
            recs.append((self.incidents_topic, (rec["incident_id"] or "none").encode(),
                         self.codecs["incident_event"].encode(rec)))
            ev = pagerduty_event_record(o, pagerduty_seq(o.incident.incident_id, o.incident.version),
                                        now_ms=int(time.time() * 1000))
            if ev is not None:
                recs.append((self.outbox_topic, ev["stream_key"].encode(), self.codecs["pagerduty_event"].encode(ev)))
            fb = _feedback_for(o)
            if fb is not None:
                recs.append((self.feedback_topic, fb["incident_id"].encode(), self.codecs["model_feedback"].encode(fb)))
        return recs

    async def _emit(self, outs: tuple[IncidentChangeOut, ...],
                    prepared: list[tuple[Any, bytes, bytes]] | None = None) -> None:
        for topic, key, value in (prepared if prepared is not None else self._prepare(outs)):
            await topic.send(key=key, value=value)
        await self.audit.decisions(outs)  # the incident stage's decisions, hash-chained (pagerstream/audit.py)

    async def _emit_change(self, a: Alert, seq: int) -> None:
        ev = change_event_record(a, seq)
        await self.outbox_topic.send(key=ev["stream_key"].encode(), value=self.codecs["pagerduty_event"].encode(ev))

    # --- dead letters -------------------------------------------------------------------------------
    async def _dead_letter(self, stage: str, reason: str, exc: BaseException | None, msg: Any, *,
                           topic: Any = None, attributes: dict[str, str] | None = None) -> None:
        if len(reason) > 2000:  # one place for every stage: a parser's message can quote the whole input
            reason = reason[:1990] + " …(cut)"
        rec = {"stage": stage, "reason": reason, "error_type": type(exc).__name__ if exc else "Rejected",
               "topic": msg.topic, "partition": msg.partition, "offset": msg.offset, "key": msg.key,
               "original": msg.value if isinstance(msg.value, bytes) else b"", "at": int(time.time() * 1000),
               "attributes": attributes or {}}
        t = topic or self.alert_dlq
        fut = await t.send(key=msg.key, value=self.codecs["dead_letter"].encode(rec))
        await fut
        self.metrics.dead_letters.labels(stage).inc()
        self.metrics.records.labels(stage, "dead_letter").inc()

    # --- web ----------------------------------------------------------------------------------------
    async def _view_feedback(self, request: web.Request) -> web.Response:
        """A person corrects an incident's category/severity: produced to models.feedback (202)."""
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"status": "invalid", "errors": ["body is not JSON"]}, status=400)
        problems = feedback_problems(body)
        if problems:
            return web.json_response({"status": "invalid", "errors": problems}, status=400)
        now = int(time.time() * 1000)
        iid = body.get("incident_id")
        fid = f"human:{iid or 'features'}:{now}:{short_hash(json.dumps(body, sort_keys=True, default=str), 8)}"
        rec = {"feedback_id": fid, "kind": "human", "incident_id": iid,
               "features_json": json.dumps(body["features"]) if isinstance(body.get("features"), dict) else None,
               "category": body.get("category"), "severity": body.get("severity"), "by": body.get("by"), "at": now}
        try:
            await asyncio.wait_for(self.produce_feedback(rec), timeout=15)
        except Exception as e:  # noqa: BLE001 - Kafka unavailable: tell the client to retry
            log.warning("feedback not produced: %s", type(e).__name__)
            return web.json_response({"status": "unavailable", "errors": ["could not write to Kafka"]},
                                     status=503, headers={"Retry-After": "5"})
        await self.audit.request_action(request, "feedback.submitted", iid, {
            "feedback_id": fid, "category": rec["category"], "severity": rec["severity"], "by": rec["by"]})
        return web.json_response({"status": "accepted", "feedback_id": fid}, status=202)

    async def act_in_pipeline(self, action: str, incident_id: str, by: str, source: str) -> bool:
        """NotifyAgents.act_in_pipeline, audited: a person acknowledged or resolved from Slack."""
        ok = await super().act_in_pipeline(action, incident_id, by, source)
        await self.audit.action(f"{source}:{by}", f"incident.{action}", incident_id, {"via": source, "applied": ok})
        return ok

    async def _view_metrics(self, request: web.Request) -> web.Response:
        self.metrics.catalog_services.set(len(self.catalog.current.services))
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _view_healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _view_readyz(self, request: web.Request) -> web.Response:
        checks = {
            "catalog_loaded": self.catalog.ready.is_set(),
            "tables_recovered": bool(self.app.tables.recovery.completed.is_set()),
            "not_rebalancing": not self.app.rebalancing,
            "forwarder": self.forwarder is not None,
        }
        ok = all(checks.values())
        return web.json_response({"status": "ready" if ok else "not ready", "checks": checks},
                                 status=200 if ok else 503)

    def _lag(self) -> list[tuple[str, int, int]]:
        c = self.app.consumer
        out = []
        for tp in c.assignment():
            try:
                hw = c.highwater(tp)
            except Exception:
                continue
            committed = c._committed_offset.get(tp) or 0  # faust keeps no public accessor
            if hw is not None:
                out.append((tp.topic, tp.partition, max(0, hw - committed)))
        return out


def _feedback_for(o: IncidentChangeOut) -> dict[str, Any] | None:
    """What the learner hears from the incident stage: features at open, the labels at resolve."""
    inc = o.incident
    if inc.features is None or not inc.incident_id:
        return None
    if o.change == "opened" and o.detail != "paged_after_pause":
        kind, sev = "opened", None
    elif o.change == "resolved":
        kind, sev = "resolved", inc.severity
    else:
        return None
    return {"feedback_id": f"{kind}:{inc.incident_id}", "kind": kind, "incident_id": inc.incident_id,
            "features_json": json.dumps(inc.features), "category": None, "severity": sev, "by": None,
            "at": o.at or (o.alert.received_at if o.alert else inc.last_activity_at)}


def _ssl_context(cert: str | None, key: str | None) -> Any:
    if not cert:
        return None
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def _next_due(g: GroupState) -> int | None:
    dues = [d for i in g.incidents.values() if (d := i.next_due()) is not None]
    dues += [(i.resolved_at or 0) + RESOLVED_RETENTION_MS for i in g.incidents.values() if not i.is_open]
    return min(dues) if dues else None
