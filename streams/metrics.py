"""Prometheus metrics of one worker (own registry, so tests can build several apps in a process)."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class LagCollector:
    """Consumer lag per topic partition, read from the worker's consumer at scrape time."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, int, int]]]):
        self._read = read

    def collect(self) -> Iterable[Any]:
        g = GaugeMetricFamily("pagerstream_consumer_lag", "Records behind the high-water mark",
                              labels=["topic", "partition"])
        try:
            for topic, partition, lag in self._read():
                g.add_metric([topic, str(partition)], lag)
        except Exception:  # a scrape must never fail because the consumer is rebalancing
            pass
        yield g


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.records = Counter("pagerstream_stage_records", "Records handled per stage and outcome",
                               ["stage", "outcome"], registry=r)
        self.stage_latency = Histogram("pagerstream_stage_latency_seconds", "Processing time per record",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.e2e_latency = Histogram("pagerstream_end_to_end_latency_seconds",
                                     "From ingress receipt to the PagerDuty answer", buckets=LATENCY_BUCKETS,
                                     registry=r)
        self.consumer_out_of_order = Counter(
            "pagerstream_consumer_out_of_order", "Records that reached the consumer out of offset order, "
            "by what the guard did (streams/consumer_guard.py): ahead (held back), behind (dropped, delivered "
            "already), reseek, retention (offsets deleted before being processed)", ["topic", "action"], registry=r)
        self.dead_letters = Counter("pagerstream_dead_letters", "Records sent to a dead-letter topic",
                                    ["stage"], registry=r)
        self.pd_requests = Counter("pagerstream_pagerduty_requests", "Events API calls by outcome",
                                   ["outcome", "status"], registry=r)
        self.pd_parked = Counter("pagerstream_pagerduty_parked", "Events moved to the retry topic", ["reason"],
                                 registry=r)
        self.breaker = Gauge("pagerstream_pagerduty_breaker_open",
                             "Circuit breaker per routing key (0 closed, 1 half-open, 2 open)",
                             ["routing_key_hint"], registry=r)
        self.rate_wait = Histogram("pagerstream_pagerduty_rate_wait_seconds", "Time waited for a token",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.ingress = Counter("pagerstream_ingress_requests", "HTTP ingress requests", ["source", "status"],
                               registry=r)
        self.model_score = Histogram("pagerstream_model_score", "Scores produced by the online models",
                                     ["model"], buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0),
                                     registry=r)
        self.model_latency = Histogram("pagerstream_model_latency_seconds", "Time per model update/prediction",
                                       ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.predictions = Counter("pagerstream_predicted_incidents", "Predicted incidents published",
                                   registry=r)
        self.model_decisions = Counter("pagerstream_model_decisions", "Model decisions by model and outcome "
                                       "(transient: pause/page_now/paged_after_pause/resolved_while_paused; "
                                       "classify: labelled/abstained)", ["model", "outcome"], registry=r)
        self.model_feedback = Counter("pagerstream_model_feedback", "Feedback records applied by the learner",
                                      ["kind"], registry=r)
        self.model_examples = Gauge("pagerstream_model_examples_learned", "Examples the model has learned",
                                    ["model"], registry=r)
        self.model_checkpoint_age = Gauge("pagerstream_model_checkpoint_timestamp_seconds",
                                          "When the model checkpoint in use was written", ["model"], registry=r)
        self.classify_cache = Counter("pagerstream_classify_cache", "Classifier prediction cache lookups",
                                      ["result"], registry=r)
        self.similar_index = Gauge("pagerstream_similar_index_incidents", "Past incidents in this worker's "
                                   "similar-incident index", registry=r)
        self.catalog_services = Gauge("pagerstream_catalog_services", "Services in the loaded catalog",
                                      registry=r)
        # Incident lifecycle analytics (streams/lifecycle_agents.py; definitions in docs/analytics.md).
        inc, resp = ["service", "team", "severity"], (30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
        self.incident_mtta = Histogram("pagerstream_incident_mtta_seconds", "PagerDuty trigger to first acknowledge",
                                       inc, buckets=resp, registry=r)
        self.incident_mttr = Histogram("pagerstream_incident_mttr_seconds", "PagerDuty trigger to resolve", inc,
                                       buckets=resp, registry=r)
        self.incident_escalations = Counter("pagerstream_incident_escalations", "incident.escalated events",
                                            inc, registry=r)
        self.incident_interruptions = Counter("pagerstream_incident_interruptions", "Responders notified, by "
                                              "period in the responder's time zone (business/off/sleep)",
                                              ["period", *inc], registry=r)
        self.alerts_in = Counter("pagerstream_alerts_in", "Trigger alerts folded into incidents", inc, registry=r)
        self.incidents_out = Counter("pagerstream_incidents_out", "Incidents paged to PagerDuty", inc, registry=r)
        self.auto_resolutions = Counter("pagerstream_incident_auto_resolutions", "Incidents pagerstream closed "
                                        "without a human (outcome=auto_resolved), and those a human later had to "
                                        "handle (outcome=needed_human)", ["outcome", *inc], registry=r)

    def add_lag(self, read: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.registry.register(LagCollector(read))  # type: ignore[arg-type]
