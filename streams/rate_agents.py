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
import time
from typing import Any, AsyncIterator

import faust

from pagerstream.models.anomaly import VERSION as DETECTOR_VERSION
from pagerstream.models.anomaly import RateAnomalyDetector
from pagerstream.processors.rates import RateWindow, advance, observe

log = logging.getLogger("pagerstream.rates")


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
            for start, count in closed:
                t0 = time.perf_counter()
                score = det.update(start / 1000, count)
                self.metrics.model_latency.labels("rate_anomaly").observe(time.perf_counter() - t0)
                self.metrics.model_score.labels("rate_anomaly").observe(score.score)
                if score.score >= self.settings.prediction_threshold and score.score > 0 and _is_rise(score, count):
                    await self._publish_prediction(service, start, count, score)
            self.rates[key] = {"w": window.to_dict(), "d": det.to_state(), "p": self._current_partition()}

    async def _publish_prediction(self, service: str, start: int, count: int, score: Any) -> None:
        spec = next((x for x in self.catalog.current.services if x.name == service), None)
        rec = {
            "event_id": f"{service}#{start}", "service": service,
            "team": getattr(spec, "team", None), "tier": None if spec is None or spec.tier is None else str(spec.tier),
            "bucket_start": start, "bucket_ms": int(self.settings.rate_bucket_seconds * 1000), "count": count,
            "score": float(score.score), "threshold": float(self.settings.prediction_threshold),
            "reason_json": json.dumps(score.reason, default=str)[:4000], "model_version": DETECTOR_VERSION,
            "at": int(time.time() * 1000),
        }
        await self.predicted_topic.send(key=service.encode(), value=self.codecs["predicted_incident"].encode(rec))
        self.metrics.predictions.inc()

    def _current_partition(self) -> int:
        from faust.streams import current_event

        ev = current_event()
        return ev.message.partition if ev is not None else -1
