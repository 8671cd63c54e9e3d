"""Predictive detection in the stream: per-service alert-rate series scored by an online detector.

The incident stage sends each new trigger's time to `alerts.rates`, keyed by service (the
repartition by service). This agent counts them in fixed buckets (processors/rates.py), closes
buckets on later alerts and on ticks (silence is part of the series), scores every closed bucket
with models/anomaly.RateAnomalyDetector, and publishes a PredictedIncident when the score reaches
PAGERSTREAM_PREDICTION_THRESHOLD. Window and detector state live in the changelogged table
`rates`, so a restart or rebalance continues the series instead of starting cold.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import faust
from pagerstream.models.anomaly import VERSION as DETECTOR_VERSION
from pagerstream.models.anomaly import RateAnomalyDetector
from pagerstream.processors.outbox import stream_key
from pagerstream.processors.pd_build import build_event, encode_body
from pagerstream.processors.rates import RateWindow, advance, observe

log = logging.getLogger("pagerstream.rates")
QUIET_BUCKETS_TO_RESOLVE = 3  # a predicted page resolves after this many buckets without a rise


def _is_rise(score: Any, count: int) -> bool:
    """Only more alerts than expected predicts an incident; a rate that drops (a quiet service,
    a paused sender) is an anomaly of the series but not an incident on the way."""
    expected = score.reason.get("expected") if isinstance(score.reason, dict) else None
    return bool(expected) and count > float(expected[1])


class RateAgents:
    """Mixed into Pipeline (streams/app.py): provides the rates agent and its helpers."""

    async def _agent_rates(self, stream: faust.StreamT) -> AsyncIterator[None]:
        await self.catalog.ready.wait()
        async for event in stream.events():
            try:
                msg = json.loads(event.value)
                if "tick" in msg:
                    for key, d in list(self.rates.items()):
                        if d and d.get("p") == event.message.partition:
                            await self._rate_step(key, d, None, int(msg["tick"]))
                else:
                    key = event.message.key or b""
                    await self._rate_step(key, self.rates.get(key), int(msg["t"]), None)
            except Exception as e:  # a broken record must not stop the series of every other service
                log.exception("rates stage failed")
                await self._dead_letter("rates", str(e)[:2000], e, event.message)
            yield None

    async def _rate_step(self, key: bytes, stored: dict[str, Any] | None, ts: int | None, now: int | None) -> None:
        bucket_ms = int(self.settings.rate_bucket_seconds * 1000)
        if stored and stored.get("d", {}).get("version") == DETECTOR_VERSION and stored["w"]["b"] == bucket_ms:
            window, det = RateWindow.from_dict(stored["w"]), RateAnomalyDetector.from_state(stored["d"])
        else:  # first alert of the service, or a new detector version / bucket size: start the series
            window, det = RateWindow(bucket_ms), RateAnomalyDetector()
        window, closed = observe(window, ts) if ts is not None else advance(window, now or 0)
        if ts is not None or closed:
            service = key.decode("utf-8", "replace")
            page = dict((stored or {}).get("pg") or {})  # the open predicted page, if any
            for start, count in closed:
                t0 = time.perf_counter()
                score = det.update(start / 1000, count)
                self.metrics.model_latency.labels("rate_anomaly").observe(time.perf_counter() - t0)
                self.metrics.model_score.labels("rate_anomaly").observe(score.score)
                rise = score.score >= self.settings.prediction_threshold and score.score > 0 and _is_rise(score, count)
                action = None
                if rise and not page and self.settings.prediction_page \
                        and score.score >= self.settings.prediction_page_score():
                    action, page = "trigger", {"since": start, "quiet": 0}
                elif page and not rise:
                    page["quiet"] = page.get("quiet", 0) + 1
                    if page["quiet"] >= QUIET_BUCKETS_TO_RESOLVE:
                        action = "resolve"
                elif page and rise:
                    page["quiet"] = 0
                if rise:
                    await self._publish_prediction(service, start, count, score, action)
                if action is not None:
                    await self._page_prediction(service, start, count, score, action)
                    if action == "resolve":
                        page = {}
            self.rates[key] = {"w": window.to_dict(), "d": det.to_state(), "p": self._current_partition(),
                               "pg": page or None}

    async def _page_prediction(self, service: str, start: int, count: int, score: Any, action: str) -> None:
        """A warning-level PagerDuty alert for a strong predicted rise (PAGERSTREAM_PREDICTION_PAGE).

        One dedup_key per service, so PagerDuty sees trigger, (repeats folded), resolve; seq is the
        bucket start, which only grows for one service, so the forwarder keeps the order.
        """
        spec = next((x for x in self.catalog.current.services if x.name == service), None)
        rk = (spec.routing_key if spec is not None and spec.routing_key else None) or self.default_routing_key
        if not rk:
            log.warning("predicted page for %s skipped: no routing key", service)
            return
        dedup = f"pagerstream-predicted-{service}"[:255]
        if action == "trigger":
            details = {"pagerstream": {"prediction": {
                "service": service, "alerts_in_bucket": count, "score": round(float(score.score), 4),
                "page_threshold": round(self.settings.prediction_page_score(), 4),
                "bucket_seconds": self.settings.rate_bucket_seconds,
                "reason": score.reason if isinstance(score.reason, dict) else str(score.reason)}}}
            built = build_event(action="trigger", routing_key=rk, dedup_key=dedup, severity="warning", origin=service,
                                summary=f"Predicted incident: alert rate of {service} is rising "
                                        f"({count} alerts in {self.settings.rate_bucket_seconds:g}s)",
                                component=service, class_="predicted_incident", custom_details=details,
                                links=(), images=(), client="pagerstream", timestamp_ms=start)
        else:
            built = build_event(action="resolve", routing_key=rk, dedup_key=dedup, summary="", severity="info",
                                origin="", custom_details=None, links=(), images=())
        ev = {"event_id": f"predicted:{service}#{start}:{action}", "incident_id": f"predicted:{service}",
              "stream_key": stream_key(rk, dedup), "seq": start, "endpoint": "enqueue", "action": action,
              "routing_key": rk, "dedup_key": dedup, "body_json": encode_body(built.body),
              "created_at": int(time.time() * 1000), "attempt": 0, "not_before": 0, "last_error": None}
        await self.outbox_topic.send(key=ev["stream_key"].encode(), value=self.codecs["pagerduty_event"].encode(ev))
        self.metrics.model_decisions.labels("rate_anomaly", f"page_{action}").inc()

    async def _agent_points(self, stream: faust.StreamT) -> AsyncIterator[None]:
        """Any metric stream: JSON {"series", "ts" (epoch s or ms), "value"} on metrics.points, keyed by
        series. Each point is scored as it comes (no bucketing); a score at or above the prediction
        threshold publishes a PredictedIncident with source=metric, in either direction."""
        async for event in stream.events():
            try:
                msg = json.loads(event.value)
                series, ts, value = str(msg["series"]), float(msg["ts"]), float(msg["value"])
                if not series or not math.isfinite(ts) or not math.isfinite(value):
                    raise ValueError("series must be non-empty, ts and value numbers")
                ts_s = ts / 1000 if ts > 1e11 else ts
                key = series.encode()
                stored = self.metric_series.get(key)
                det = (RateAnomalyDetector.from_state(stored) if stored and stored.get("version") == DETECTOR_VERSION
                       else RateAnomalyDetector())
                t0 = time.perf_counter()
                score = det.update(ts_s, value)
                self.metrics.model_latency.labels("metric_anomaly").observe(time.perf_counter() - t0)
                self.metrics.model_score.labels("metric_anomaly").observe(score.score)
                self.metric_series[key] = det.to_state()
                if score.score >= self.settings.prediction_threshold and score.score > 0:
                    await self._publish_prediction(series, int(ts_s * 1000), 0, score, None, value=value)
            except (ValueError, KeyError, TypeError) as e:
                await self._dead_letter("metric-points", f"invalid point: {e}"[:2000], e, event.message)
            except Exception as e:
                log.exception("metric points stage failed")
                await self._dead_letter("metric-points", str(e)[:2000], e, event.message)
            yield None

    async def _publish_prediction(self, service: str, start: int, count: int, score: Any,
                                  pd_action: str | None = None, *, value: float | None = None) -> None:
        spec = next((x for x in self.catalog.current.services if x.name == service), None)
        rec = {
            "event_id": f"{service}#{start}", "service": service,
            "team": getattr(spec, "team", None), "tier": None if spec is None or spec.tier is None else str(spec.tier),
            "bucket_start": start, "bucket_ms": int(self.settings.rate_bucket_seconds * 1000), "count": count,
            "score": float(score.score), "threshold": float(self.settings.prediction_threshold),
            "reason_json": json.dumps(score.reason, default=str)[:4000], "model_version": DETECTOR_VERSION,
            "at": int(time.time() * 1000), "source": "metric" if value is not None else "alert_rate",
            "value": value, "pagerduty_action": pd_action,
        }
        if value is not None:
            rec["bucket_ms"] = 0
        await self.predicted_topic.send(key=service.encode(), value=self.codecs["predicted_incident"].encode(rec))
        self.metrics.predictions.inc()

    def _current_partition(self) -> int:
        from faust.streams import current_event

        ev = current_event()
        return ev.message.partition if ev is not None else -1
