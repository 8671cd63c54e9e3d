"""The models' advice for an alert that opens an incident (processors/incident.OpenAdvice).

Pure: the stream (streams/app.py) hands in what it keeps — the per-type transient/recurrence entry
from the partition's `transient` table, the fleet pool, the worker's classifier replica and its
index of past incidents — and gets back the pause decision, the scores with their explanations,
the similar past incidents and the recurrence, plus the updated table entries to store.

Models run once per incident, when it opens: duplicates and alerts added to an open incident reuse
what the opening alert got. The classifier costs 1.2 to 3 ms per prediction (River naive Bayes +
logistic regression with explanations, measured on the prometheus_alerts rules), more than the rest
of the incident decision, so its predictions are also cached by feature fingerprint (a flapping
alert is classified once per model version).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pagerstream.models import classify as classify_mod
from pagerstream.models import transient as transient_mod
from pagerstream.models.classify import AlertClassifier, features_from_alert
from pagerstream.models.recurrence import detect_schedule
from pagerstream.models.similar import IncidentIndex
from pagerstream.models.templates import TemplateMiner
from pagerstream.models.transient import TransientModel
from pagerstream.processors.alert import Alert
from pagerstream.processors.incident import Incident, OpenAdvice

MAX_OPENS = 64  # openings remembered per type for the recurrence detector
_VOLATILE = re.compile(r"0x[0-9a-f]+|[0-9a-f]{8,}|\d+(?:\.\d+)?", re.IGNORECASE)


def alert_type(a: Alert, templates: TemplateBook | None = None) -> str:
    """What the transient and recurrence models learn under: service + the alert's name.

    The name is the Alertmanager alertname, else the PagerDuty class, else the summary's template
    mined online (models/templates.py: "User alice failed login" and "User bob failed login" are
    one type), else, without a miner, the summary with its numbers and ids masked.
    """
    name = a.labels.get("alertname") or a.class_
    if not name:
        name = templates.name(a.summary) if templates is not None else _VOLATILE.sub("#", a.summary)[:120]
    return f"{a.service or '-'}/{name}"


class TemplateBook:
    """A TemplateMiner plus a stable name per template cluster.

    A cluster's template generalises as lines join it ("disk full on db-7" becomes "disk full on
    <*>"), so the type key is the cluster id with the template as first named: `tpl12:disk full on
    db-7` stays the key of that cluster for its life.
    """

    def __init__(self, miner: TemplateMiner | None = None, names: dict[str, str] | None = None) -> None:
        # prefix depth 1, not the 2 tuned on loghub: alert summaries often name the entity second
        # ("User alice failed login"), which at depth 2 splits one type per user.
        self.miner = miner or TemplateMiner(prefix_depth=1, max_clusters=2000)
        self.names: dict[str, str] = dict(names or {})
        self.dirty = False

    def name(self, text: str) -> str:
        cid, template, _ = self.miner.add(text[:500])
        self.dirty = True
        key = str(cid)
        if key not in self.names:
            self.names[key] = f"tpl{cid}:{template[:80]}"
            live = {str(c) for c in self.miner.templates}
            if len(self.names) > 2 * len(live):  # forget names of evicted clusters
                self.names = {k: v for k, v in self.names.items() if k in live}
        return self.names[key]

    def to_dict(self) -> dict[str, Any]:
        return {"m": self.miner.to_state(), "n": self.names}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TemplateBook:
        if not d:
            return cls()
        try:
            return cls(TemplateMiner.from_state(d["m"]), d.get("n"))
        except (ValueError, KeyError):  # another version's state: start over
            return cls()


@dataclass
class TransientSettings:
    enabled: bool = True
    pause_s: float = 300.0
    p_pause: float = 0.8
    min_episodes: int = 3

    def params(self) -> dict[str, Any]:
        return {"pause_s": self.pause_s, "p_pause": self.p_pause, "min_episodes": self.min_episodes,
                "pool_history": 128}


@dataclass
class TypeEntry:
    """One alert type's table entry: finished-episode durations (s), openings (epoch s)."""

    durations: list[float] = field(default_factory=list)
    seen: int = 0
    opens: list[float] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TypeEntry:
        if not d:
            return cls()
        return cls(list(d.get("d") or []), int(d.get("s") or 0), list(d.get("o") or []))

    def to_dict(self) -> dict[str, Any]:
        return {"d": self.durations[-32:], "s": self.seen, "o": self.opens[-MAX_OPENS:]}


class PredictionCache:
    """LRU of classifier predictions by feature fingerprint, emptied when the model changes."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._d: OrderedDict[str, Any] = OrderedDict()
        self._model_id: int | None = None
        self.hits = 0
        self.misses = 0

    def get(self, model: AlertClassifier, features: dict[str, Any]) -> Any:
        if id(model) != self._model_id:
            self._d.clear()
            self._model_id = id(model)
        key = hashlib.blake2b(json.dumps(features, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()
        hit = self._d.get(key)
        if hit is not None:
            self._d.move_to_end(key)
            self.hits += 1
            return hit
        self.misses += 1
        pred = model.predict(features)
        self._d[key] = pred
        while len(self._d) > self.size:
            self._d.popitem(last=False)
        return pred


def _reason_text(reason: Any) -> str:
    """A classifier head's reason dict -> 'word (+0.41), label:team=db (+0.22)'."""
    if not isinstance(reason, dict):
        return ""
    w = reason.get("weights") or reason.get("log_likelihood_ratio") or {}
    parts = [f"{k} ({v:+.2f})" for k, v in list(w.items())[:5] if isinstance(v, (int, float))]
    text = ", ".join(parts)
    if reason.get("versus"):
        text += f" (vs {reason['versus']})"
    return text


def classification_scores(model: AlertClassifier | None, cache: PredictionCache | None,
                          features: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    if model is None or model.n_learned == 0:
        return ()
    pred = cache.get(model, features) if cache is not None else model.predict(features)
    out = []
    for head in ("category", "severity"):
        out.append({
            "model": f"classify.{head}", "label": getattr(pred, head), "best": getattr(pred, f"{head}_best"),
            "score": float(getattr(pred, f"{head}_probability")), "abstained": bool(getattr(pred, f"{head}_abstained")),
            "explanation": _reason_text(pred.reason.get(head)), "model_version": classify_mod.VERSION,
        })
    return tuple(out)


def similar_incidents(index: IncidentIndex | None, a: Alert, k: int = 3) -> tuple[dict[str, Any], ...]:
    if index is None or len(index) == 0:
        return ()
    out = []
    for doc_id, score, expl in index.query(_incident_text(a.summary, a.service, a.labels), k=k):
        meta = index_meta(index, doc_id)
        terms = ", ".join(t for t, _ in (expl.get("top_terms") or []))
        out.append({"incident_id": doc_id, "summary": meta.get("summary", ""), "service": meta.get("service"),
                    "resolved_at": meta.get("resolved_at"), "score": round(float(score), 4),
                    "why": f"shared terms: {terms}" if terms else ""})
    return tuple(out)


def _incident_text(summary: str, service: str | None, labels: dict[str, str] | None = None) -> str:
    extra = " ".join(f"{v}" for k, v in sorted((labels or {}).items()) if k in ("alertname", "job", "namespace"))
    return f"{summary} {service or ''} {extra}".strip()


def index_meta(index: IncidentIndex, doc_id: str) -> dict[str, Any]:
    return index.fields(doc_id)


def index_resolved(index: IncidentIndex, rec: dict[str, Any]) -> None:
    """Add one resolved IncidentEvent record to the index of past incidents."""
    index.add(rec["incident_id"], _incident_text(rec["summary"], rec.get("service")),
              {"title": rec["summary"], "service": rec.get("service") or "", "summary": rec["summary"],
               "resolved_at": rec.get("resolved_at")})


def advise(a: Alert, entry: TypeEntry, pool: list[float], ts: TransientSettings, *,
           classifier: AlertClassifier | None = None, cache: PredictionCache | None = None,
           index: IncidentIndex | None = None, type_: str | None = None) -> tuple[OpenAdvice, TypeEntry]:
    """The advice for an opening alert, and the type entry with this opening recorded."""
    t = type_ or alert_type(a)
    now_s = a.received_at / 1000
    pause = None
    paused_until = None
    scores: list[dict[str, Any]] = []
    if ts.enabled:
        model = TransientModel.for_type(t, entry.durations, pool, entry.seen, **ts.params())
        dec = model.on_start(t, now_s)
        ev = dec.evidence
        message = str(ev.get("message", ""))
        until = int(dec.pause_until * 1000) if dec.pause_until else None
        if until is not None and a.severity == "critical":  # a critical alert is never held back
            until, message = None, message.split("; paused for")[0] + "; paged now (critical alerts are never paused)"
        pause = {"paused_until": until, "p_resolve": float(dec.p_resolve), "evidence": message,
                 "model_version": transient_mod.VERSION}
        paused_until = pause["paused_until"]
        scores.append({"model": "transient", "label": "pause" if paused_until else "page_now", "best": None,
                       "score": float(dec.p_resolve), "abstained": False, "explanation": pause["evidence"],
                       "model_version": transient_mod.VERSION})
    features = features_from_alert(a)
    scores.extend(classification_scores(classifier, cache, features))
    opens = [*entry.opens, now_s][-MAX_OPENS:]
    sched = detect_schedule(opens) if len(opens) >= 5 else None
    new_entry = TypeEntry(entry.durations, entry.seen, opens)
    compact = {"name": features.get("name", ""), "text": str(features.get("text", ""))[:500],
               "query": str(features.get("query", ""))[:300], "labels": features.get("labels", {}),
               "for_seconds": features.get("for_seconds")}
    return OpenAdvice(
        alert_type=t, paused_until=paused_until, pause=pause, scores=tuple(scores),
        similar=similar_incidents(index, a), recurrence=sched.description if sched else None,
        features=compact,
    ), new_entry


def learn_resolved(inc: Incident, entry: TypeEntry, pool: list[float]) -> tuple[TypeEntry, list[float]]:
    """A source-resolved incident teaches the transient model how long this type lasts."""
    duration = max(0.0, ((inc.resolved_at or inc.opened_at) - inc.opened_at) / 1000)
    new = TypeEntry([*entry.durations, duration][-32:], entry.seen + 1, entry.opens)
    return new, [*pool, duration][-128:]


