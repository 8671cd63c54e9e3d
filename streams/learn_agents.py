"""The classifier's learner: one agent on the one-partition `models.feedback` topic.

Inference happens on every worker with a read-only replica (streams/model_hub.py); learning has
one writer, so there is one model and its checkpoints have one order. Feedback kinds:
- opened: an incident's classifier features, stored in the `incident-features` table so a later
  correction can name the incident by id;
- resolved: the labels an incident ended with (its severity, and its category when the alert carried
  a `category` label): the stream's own supervision;
- human: a person's correction (POST /api/v1/feedback, `pagerstream models feedback`, or any
  producer on the topic), learned HUMAN_WEIGHT times: rarer and more trustworthy than the rest.

A checkpoint is published after CHECKPOINT_EVERY examples or CHECKPOINT_SECONDS with something
new. Learning since the last checkpoint is lost if the learner's worker dies (at most that much);
the feedback stays on the topic (90 days) for relearning from scratch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import faust
from pagerstream.models.classify import CATEGORIES, AlertClassifier, normalize_severity
from pagerstream.schemas import DecodeError
from pagerstream.streams.model_hub import seal_checkpoint

from pagerstream.crypto import NoKey

log = logging.getLogger("pagerstream.learn")
HUMAN_WEIGHT = 3
CHECKPOINT_EVERY = 25
CHECKPOINT_SECONDS = 10.0
FEATURES_TTL_MS = 30 * 86_400_000


def feedback_problems(body: Any) -> list[str]:
    """Validation of a human correction (API body); empty when it is fine."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    out = []
    iid = body.get("incident_id")
    if iid is not None and (not isinstance(iid, str) or not iid or len(iid) > 200):
        out.append("incident_id must be a non-empty string (at most 200 characters)")
    elif iid is None and not isinstance(body.get("features"), dict):
        out.append("incident_id (string) or features (object) is required")
    cat, sev = body.get("category"), body.get("severity")
    if cat is None and sev is None:
        out.append("give category and/or severity")
    if cat is not None and cat not in CATEGORIES:
        out.append(f"category must be one of {', '.join(CATEGORIES)}")
    if sev is not None and normalize_severity(sev) is None:
        out.append("severity must be one of critical, error, warning, info")
    if body.get("by") is not None and not isinstance(body["by"], str):
        out.append("by must be a string")
    return out


class LearnAgents:
    """Mixed into Pipeline (streams/app.py)."""

    def _learner_model(self) -> AlertClassifier:
        if getattr(self, "_learner", None) is None:
            hub = self.models
            self._learner = (AlertClassifier.from_state(hub.classifier.to_state()) if hub.classifier is not None
                             else AlertClassifier())
            self._learner_pending = 0
            self._learner_last = time.monotonic()
            self._seen_feedback: dict[str, None] = {}
        return self._learner

    async def _agent_learn(self, stream: faust.StreamT) -> AsyncIterator[None]:
        await self.models.ready.wait()
        async for event in stream.events():
            try:
                rec = self.codecs["model_feedback"].decode(event.value)
                await self._learn_one(rec)
            except DecodeError as e:
                await self._dead_letter("learn", str(e)[:2000], e, event.message)
            except Exception as e:  # never stop learning because of one record
                log.exception("learner failed on a record")
                await self._dead_letter("learn", f"internal error: {e}"[:2000], e, event.message)
            await self._maybe_checkpoint()
            yield None

    async def _learn_one(self, rec: dict[str, Any]) -> None:
        model = self._learner_model()
        if rec["feedback_id"] in self._seen_feedback:
            return
        self._seen_feedback[rec["feedback_id"]] = None
        while len(self._seen_feedback) > 20_000:
            self._seen_feedback.pop(next(iter(self._seen_feedback)))
        iid = rec.get("incident_id")
        features = json.loads(rec["features_json"]) if rec.get("features_json") else None
        kind = rec["kind"]
        if kind == "opened":
            if iid and features is not None:
                self.incident_features[iid.encode()] = {"f": features, "at": rec["at"]}
            self.metrics.model_feedback.labels(kind).inc()
            return
        if features is None and iid:
            stored = self.incident_features.get(iid.encode())
            features = stored["f"] if stored else None
        if features is None:
            self.metrics.model_feedback.labels(f"{kind}_unknown_incident").inc()
            log.warning("feedback %s for an incident whose features are unknown: skipped", rec["feedback_id"])
            return
        category = rec.get("category")
        if kind == "resolved" and category is None:
            category = (features.get("labels") or {}).get("category")
        if category is not None and category not in CATEGORIES:
            category = None
        severity = rec.get("severity")
        if severity is not None and normalize_severity(severity) is None:
            severity = None
        if category is None and severity is None:
            return
        for _ in range(HUMAN_WEIGHT if kind == "human" else 1):
            model.learn(features, category=category, severity=severity)
        self._learner_pending += 1
        self.metrics.model_feedback.labels(kind).inc()
        if kind == "resolved" and iid:
            self.incident_features.pop(iid.encode(), None)

    async def _maybe_checkpoint(self, force: bool = False) -> None:
        if getattr(self, "_learner", None) is None or not self._learner_pending:
            return
        due = self._learner_pending >= CHECKPOINT_EVERY or time.monotonic() - self._learner_last >= CHECKPOINT_SECONDS
        if not (due or force):
            return
        try:
            value = seal_checkpoint(self.settings.encryption_key, "classify", self._learner.to_state(),
                                    n_learned=self._learner.n_learned)
        except NoKey:
            if not getattr(self, "_warned_nokey", False):
                log.warning("ENCRYPTION_KEY is not set: the classifier learns but cannot publish checkpoints")
                self._warned_nokey = True
            self._learner_pending = 0
            return
        await self.checkpoints_topic.send(key=b"classify", value=value)
        self._learner_pending = 0
        self._learner_last = time.monotonic()

    async def _checkpoint_timer(self) -> None:
        """Publish what was learned even when feedback stops arriving."""
        await self._maybe_checkpoint()

    async def produce_feedback(self, rec: dict[str, Any]) -> None:
        fut = await self.feedback_topic.send(key=(rec.get("incident_id") or rec["feedback_id"]).encode(),
                                             value=self.codecs["model_feedback"].encode(rec))
        await fut
