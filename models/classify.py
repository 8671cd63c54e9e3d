"""Online alert classification: category and severity from an alert's text, labels and query.

One feature shape serves live alerts (`features_from_alert`) and alert rules
(`features_from_rule`), so a model trained on a rule corpus applies to what Alertmanager sends:

    {"name": str, "text": str, "query": str, "labels": {str: str}, "for_seconds": float | None}

Features are turned into sparse tokens (`tokens()`): words of the name and text (CamelCase and
snake_case split, `{{ templates }}` removed), word bigrams, char 4-grams, PromQL metric names /
prefixes / functions / comparisons, label keys and values, and a bucket of the `for` duration.

Each target (category, severity) has its own head: a River one-vs-rest logistic regression
(`multiclass.OneVsRestClassifier(linear_model.LogisticRegression)`) next to a River multinomial
Naive Bayes; their probabilities are averaged. Samples are weighted by the inverse running
frequency of their class (online class balancing: the rare `info` and `security` still count).
Below a confidence threshold a head abstains: the label is None, the probabilities stay.
Every prediction carries a reason: the tokens that pushed the chosen class most (weight x value
of the logistic model, Naive Bayes log-likelihood ratio against the runner-up class).

Checkpoints are pickles of the River objects (they are not JSON-able). Only load checkpoints
this process or pagerstream itself wrote: unpickling runs code. `from_state` refuses a state
whose VERSION or river version differs from the running one.
"""

from __future__ import annotations

import itertools
import json
import math
import pickle
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import river
from pagerstream.processors.alert import Alert
from river import linear_model, multiclass, naive_bayes, optim

VERSION = "classify-1"

CATEGORIES: tuple[str, ...] = ("infrastructure", "application", "security", "business")
SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
# PagerDuty has four severities; the model predicts three. Incoming labels are folded onto three
# ("error" is paged like critical), outgoing ones keep their name.
_SEVERITY_IN = {
    "critical": "critical", "page": "critical", "error": "critical", "high": "critical",
    "major": "critical", "warning": "warning", "warn": "warning", "medium": "warning",
    "minor": "warning", "info": "info", "low": "info", "none": "info",
}  # fmt: skip
PD_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}

# Hyper-parameters: the same for every fold and for production.
THRESHOLD_CATEGORY = 0.6
THRESHOLD_SEVERITY = 0.6
LR_STEP = 0.05
LR_L2 = 1e-4
NB_ALPHA = 0.1
NB_WEIGHT = 0.5  # share of Naive Bayes in the averaged probabilities
NB_TEMPERATURE = 30.0  # NB log-likelihoods are divided by this (NB is overconfident)
CLASS_WEIGHT_POWER = 0.5  # sample weight = (n / (k * n_class)) ** power
REASON_TOP = 5

# --- features ---------------------------------------------------------------------------------


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_TEMPLATE = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "on",
        "in",
        "at",
        "to",
        "for",
        "from",
        "by",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "has",
        "have",
        "had",
        "it",
        "its",
        "this",
        "that",
        "with",
        "or",
        "and",
        "not",
        "no",
        "as",
        "than",
        "more",
        "less",
        "over",
        "under",
        "into",
        "per",
        "some",
        "any",
        "can",
        "may",
        "might",
        "which",
        "when",
        "been",
        "will",
        "would",
        "should",
        "could",
        "there",
        "their",
        "them",
        "they",
        "than",
        "then",
        "so",
        "if",
        "do",
        "does",
        "did",
    ]
)
# Labels that say who fired (not what): their values are noise, their keys are kept.
_IDENTITY_LABELS = frozenset(
    [
        "instance",
        "pod",
        "pod_name",
        "host",
        "hostname",
        "node",
        "ip",
        "address",
        "fingerprint",
        "container_id",
        "uid",
        "id",
        "endpoint",
        "url",
        "path",
        "device",
        "mountpoint",
        "le",
        "quantile",
    ]
)
# Labels that carry the answer or are already used elsewhere.
_SKIP_LABELS = _set("severity priority alertname alertstate")
_PROMQL_KEYWORDS = frozenset(
    [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
    ]
)
# Hand-made word groups (prior knowledge of alerting, not fitted to the corpus): one shared token
# per group lets a word never seen in training still count.
LEXICON: dict[str, frozenset[str]] = {
    "outage": _set(
        "down dead unreachable unavailable missing absent lost fail failed failure failing "
        "crash crashed crashloop outage offline stopped sealed broken corrupt corrupted "
        "unhealthy split brain oom killed panic fatal critical"
    ),
    "degraded": _set(
        "high slow latency lag lagging degraded elevated too many near approaching "
        "predicted filling saturation saturated pressure throttled throttling "
        "increase increasing spike warning"
    ),
    "notice": _set(
        "restart restarted changed change reload reloaded underutilized underutilised "
        "relocating initializing deviation deviations info notice low usage"
    ),
    "security": _set(
        "certificate cert certs ssl tls ocsp expiry expire expiring expired vault "
        "secret secrets token tokens login logins auth authentication authorization "
        "unauthorized forbidden denied threat threats attack intrusion firewall vpn "
        "wireguard acme keycloak password credential credentials"
    ),
    "business": _set(
        "revenue order orders checkout conversion payment payments payout refund "
        "invoice invoices billing customer customers sales gmv churn fraud "
        "chargeback chargebacks booking bookings subscription cart price prices"
    ),
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(value: object) -> float | None:
    """Prometheus duration ("5m", "1h30m") or a number of seconds -> seconds; None if unknown."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _clean(text: str) -> str:
    return _TEMPLATE.sub(" ", text or "")


def words(text: str) -> list[str]:
    """Lowercase words; CamelCase / snake_case words also give their parts ("MysqlDown" ->
    mysqldown, mysql, down) so that an alertname and a rule title share tokens."""
    out: list[str] = []
    for w in _WORD.findall(_clean(text)):
        low = w.lower()
        parts = [p.lower() for p in _CAMEL.findall(w)]
        if len(parts) > 1:
            out += [p for p in parts if len(p) > 1 and not p.isdigit() and p not in _STOP]
            if len(low) <= 24:
                out.append(low)
        elif len(low) > 1 and low not in _STOP and not low.isdigit():
            out.append(low)
    return out


def _query_tokens(query: str) -> list[str]:
    q = query or ""
    out: list[str] = []
    # label matchers: keep the label names, drop the values (instance-specific)
    for m in re.finditer(r"\{([^}]*)\}", q):
        out += ["ql:" + k for k in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(1))]
    q = re.sub(r"\{[^}]*\}", " ", q)
    q = re.sub(r"\[[^\]]*\]", " ", q)  # range selectors
    q = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" \1 ", q)
    for m in re.finditer(r"(==|!=|>=|<=|>|<)\s*(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)", q):
        op, num = m.group(1), float(m.group(2))
        out.append("qo:" + op)
        out.append("qo:" + op + ("0" if num == 0 else "1" if num == 1 else "n"))
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", q):
        name, call = m.group(1), m.group(2)
        low = name.lower()
        if low in _PROMQL_KEYWORDS:
            continue
        if call:
            out.append("qf:" + low)
        elif "_" in name or ":" in name:
            out.append("qm:" + low)
            parts = [p for p in re.split(r"[_:]+", low) if p]
            if parts:
                out.append("qp:" + parts[0])
            out += ["qw:" + p for p in parts if len(p) > 1 and not p.isdigit()]
    return out


def _for_bucket(seconds: float | None) -> list[str]:
    if seconds is None:
        return []
    for limit, name in ((0, "0"), (60, "1m"), (300, "5m"), (1800, "30m"), (21600, "6h")):
        if seconds <= limit:
            return ["for:" + name]
    return ["for:long"]


def _words_and_labels(features: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(name words, all words, label tokens). Label values (not the identity ones) add words."""
    name_w = words(str(features.get("name") or ""))
    text_w = words(str(features.get("text") or ""))
    labels = features.get("labels") or {}
    label_tok: list[str] = []
    for k, v in sorted(labels.items()):
        k = str(k).lower()
        if k in _SKIP_LABELS or k.startswith("__"):
            continue
        label_tok.append("lk:" + k)
        if k not in _IDENTITY_LABELS and isinstance(v, str) and 0 < len(v) <= 40:
            label_tok.append(f"lv:{k}={v.lower()}")
            text_w += words(v.replace("-", " ").replace("_", " "))
    return name_w, name_w + text_w, label_tok


def _grams(word: str) -> list[str]:
    padded = f"^{word}$"
    return ["c:" + padded[i : i + 4] for i in range(max(1, len(padded) - 3))]


def tokens(features: Mapping[str, Any]) -> dict[str, float]:
    """Sparse token weights for one alert (presence, 1.0 each). Prefixes: n: name word, t: word,
    b: word bigram, c: char 4-gram, kw: lexicon group, qm:/qp:/qw: PromQL metric / its prefix /
    its parts, qf: function, qo: comparison, ql: matcher label, lk:/lv: label key / key=value,
    for: duration bucket."""
    name_w, all_w, label_tok = _words_and_labels(features)
    out: list[str] = ["n:" + w for w in name_w]
    out += ["t:" + w for w in all_w]
    out += ["b:" + a + "_" + b for a, b in itertools.pairwise(all_w)]
    for w in set(all_w):
        out += _grams(w)
    present = set(all_w)
    out += ["kw:" + g for g, ws in LEXICON.items() if present & ws]
    out += _query_tokens(str(features.get("query") or ""))
    out += label_tok
    out += _for_bucket(features.get("for_seconds"))
    return {t: 1.0 for t in out}


def _empty_features() -> dict[str, Any]:
    return {"name": "", "text": "", "query": "", "labels": {}, "for_seconds": None}


def features_from_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A Prometheus alert rule (rules_flat.jsonl shape: name, description, query, for), or a
    business alert (name, summary, description) -> features. group/service/exporter are left out:
    a live alert does not carry them."""
    f = _empty_features()
    f["name"] = str(rule.get("name") or rule.get("alert") or "")
    text = [str(rule.get(k) or "") for k in ("summary", "description")]
    f["text"] = " ".join(t for t in dict.fromkeys(text) if t)
    f["query"] = str(rule.get("query") or rule.get("expr") or "")
    f["labels"] = {str(k): str(v) for k, v in (rule.get("labels") or {}).items()}
    f["for_seconds"] = parse_duration(rule.get("for"))
    return f


def _expr_from_url(url: object) -> str:
    """Prometheus generatorURL carries the rule's expression as g0.expr."""
    if not isinstance(url, str):
        return ""
    try:
        qs = parse_qs(urlparse(url).query)
    except ValueError:
        return ""
    return (qs.get("g0.expr") or [""])[0]


def features_from_alert(alert: Alert) -> dict[str, Any]:
    """A normalized Alert -> features: alertname label (else class/summary head) as name,
    summary + annotations description/message as text, expr/query annotation or the generatorURL
    expression as query, labels as labels; `for` only if an annotation gives it."""
    try:
        details = json.loads(alert.custom_details_json or "{}")
    except ValueError:
        details = {}
    if not isinstance(details, dict):
        details = {}
    f = _empty_features()
    labels = dict(alert.labels or {})
    f["name"] = labels.get("alertname") or alert.class_ or ""
    text = [alert.summary] + [details.get(k) for k in ("summary", "description", "message")]
    f["text"] = " ".join(t for t in dict.fromkeys(t for t in text if isinstance(t, str) and t))
    query = next((details[k] for k in ("query", "expr") if isinstance(details.get(k), str)), "")
    f["query"] = query or _expr_from_url(details.get("generatorURL"))
    for k, v in (("component", alert.component), ("class", alert.class_)):
        if v and k not in labels:
            labels[k] = v
    f["labels"] = {str(k): str(v) for k, v in labels.items()}
    f["for_seconds"] = parse_duration(details.get("for"))
    return f


# --- model ------------------------------------------------------------------------------------


class _Head:
    """One target: OvR logistic regression + multinomial NB, averaged, class-balanced."""

    def __init__(self, classes: tuple[str, ...]) -> None:
        self.classes = classes
        self.lr = multiclass.OneVsRestClassifier(
            linear_model.LogisticRegression(optimizer=optim.SGD(LR_STEP), l2=LR_L2)
        )
        self.nb = naive_bayes.MultinomialNB(alpha=NB_ALPHA)
        self.seen: Counter[str] = Counter()

    def learn(self, x: dict[str, float], y: str) -> None:
        self.seen[y] += 1
        total = sum(self.seen.values())
        # inverse running class frequency, damped so that a handful of examples is not overblown
        w = (total / (len(self.seen) * self.seen[y])) ** CLASS_WEIGHT_POWER
        self.lr.learn_one(x, y, w=w)
        self.nb.learn_one(x, y)

    def _nb_proba(self, x: dict[str, float]) -> dict[str, float]:
        nb = self.nb
        # uniform prior: class imbalance is handled by weights, not by the prior
        jll = {
            c: sum(
                v * math.log(nb.p_feature_given_class(f, c)) for f, v in x.items() if f in nb.feature_counts
            )
            for c in nb.class_counts
        }
        jll = {c: v / NB_TEMPERATURE for c, v in jll.items()}
        top = max(jll.values())
        e = {c: math.exp(v - top) for c, v in jll.items()}
        s = sum(e.values())
        return {c: v / s for c, v in e.items()}

    def proba(self, x: dict[str, float]) -> dict[str, float]:
        if not self.seen:
            return {}
        p_lr = self.lr.predict_proba_one(x)
        p_nb = self._nb_proba(x)
        out = {c: (1 - NB_WEIGHT) * p_lr.get(c, 0.0) + NB_WEIGHT * p_nb.get(c, 0.0) for c in self.seen}
        s = sum(out.values()) or 1.0
        return {c: v / s for c, v in out.items()}

    def reason(
        self, x: dict[str, float], label: str, proba: Mapping[str, float], all_w: list[str]
    ) -> dict[str, Any]:
        """Top tokens for `label`: logistic weight x value, and NB log-likelihood ratio against the
        runner-up class. Char 4-grams are summed back onto their words, shown as "~word"."""
        others = [c for c in sorted(proba, key=lambda c: -proba[c]) if c != label]
        out: dict[str, Any] = {"versus": others[0] if others else None}
        contrib: dict[str, float] = {}
        model = self.lr.classifiers.get(label)
        if model is not None:
            weights = model.weights
            contrib = {f: weights.get(f, 0.0) * v for f, v in x.items()}
        out["weights"] = _top(contrib, all_w)
        llr: dict[str, float] = {}
        if others and label in self.nb.class_counts:
            nb, rival = self.nb, others[0]
            llr = {
                f: v
                * (
                    math.log(nb.p_feature_given_class(f, label))
                    - math.log(nb.p_feature_given_class(f, rival))
                )
                for f, v in x.items()
                if f in nb.feature_counts
            }
        out["log_likelihood_ratio"] = _top(llr, all_w)
        return out


def _top(scores: Mapping[str, float], all_w: list[str]) -> dict[str, float]:
    merged: dict[str, float] = {}
    owners: dict[str, list[str]] = {}
    for w in dict.fromkeys(all_w):
        for g in _grams(w):
            owners.setdefault(g, []).append(w)
    for f, v in scores.items():
        if f.startswith("c:") and f in owners:
            share = v / len(owners[f])
            for w in owners[f]:
                merged["~" + w] = merged.get("~" + w, 0.0) + share
        else:
            merged[f] = merged.get(f, 0.0) + v
    top = sorted(((f, v) for f, v in merged.items() if v > 0), key=lambda t: (-t[1], t[0]))[:REASON_TOP]
    return {f: round(v, 3) for f, v in top}


@dataclass(frozen=True)
class Prediction:
    category: str | None  # None = abstained
    severity: str | None  # None = abstained (critical / warning / info)
    category_probability: float  # probability of the best category, abstained or not
    severity_probability: float
    category_best: str | None  # the best guess, even when abstaining
    severity_best: str | None
    category_abstained: bool
    severity_abstained: bool
    category_proba: dict[str, float] = field(default_factory=dict)
    severity_proba: dict[str, float] = field(default_factory=dict)
    reason: dict[str, Any] = field(default_factory=dict)

    @property
    def pd_severity(self) -> str | None:
        """PagerDuty severity (critical/warning/info; never `error`), None when abstained."""
        return PD_SEVERITY.get(self.severity) if self.severity else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pd_severity"] = self.pd_severity
        return d


def normalize_severity(value: object) -> str | None:
    return _SEVERITY_IN.get(value.strip().lower()) if isinstance(value, str) else None


class AlertClassifier:
    """Online category + severity classifier with abstention and explanations."""

    def __init__(
        self,
        *,
        threshold_category: float = THRESHOLD_CATEGORY,
        threshold_severity: float = THRESHOLD_SEVERITY,
    ) -> None:
        self.threshold_category = threshold_category
        self.threshold_severity = threshold_severity
        self.category = _Head(CATEGORIES)
        self.severity = _Head(SEVERITIES)
        self.n_learned = 0

    def learn(
        self, features: Mapping[str, Any], *, category: str | None = None, severity: str | None = None
    ) -> None:
        """Feedback: a resolved incident's final severity, or a human correction. Either label may
        be missing. Severity accepts PagerDuty's words (error -> critical)."""
        if category is not None and category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r} (expected one of {', '.join(CATEGORIES)})")
        sev = normalize_severity(severity) if severity is not None else None
        if severity is not None and sev is None:
            raise ValueError(f"unknown severity {severity!r}")
        if category is None and sev is None:
            return
        x = tokens(features)
        if category is not None:
            self.category.learn(x, category)
        if sev is not None:
            self.severity.learn(x, sev)
        self.n_learned += 1

    def predict(self, features: Mapping[str, Any]) -> Prediction:
        x = tokens(features)
        pc = self.category.proba(x)
        ps = self.severity.proba(x)
        cb = max(pc, key=pc.get) if pc else None
        sb = max(ps, key=ps.get) if ps else None
        cp = pc.get(cb, 0.0) if cb else 0.0
        sp = ps.get(sb, 0.0) if sb else 0.0
        c_abs = cb is None or cp < self.threshold_category
        s_abs = sb is None or sp < self.threshold_severity
        reason: dict[str, Any] = {}
        all_w = _words_and_labels(features)[1]
        if cb:
            reason["category"] = self.category.reason(x, cb, pc, all_w)
        if sb:
            reason["severity"] = self.severity.reason(x, sb, ps, all_w)
        return Prediction(
            category=None if c_abs else cb,
            severity=None if s_abs else sb,
            category_probability=round(cp, 4),
            severity_probability=round(sp, 4),
            category_best=cb,
            severity_best=sb,
            category_abstained=c_abs,
            severity_abstained=s_abs,
            category_proba={c: round(p, 4) for c, p in sorted(pc.items())},
            severity_proba={c: round(p, 4) for c, p in sorted(ps.items())},
            reason=reason,
        )

    # --- checkpoints ---
    def to_state(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "river": river.__version__,
            "thresholds": {"category": self.threshold_category, "severity": self.threshold_severity},
            "n_learned": self.n_learned,
            "model": pickle.dumps((self.category, self.severity), protocol=pickle.HIGHEST_PROTOCOL),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> AlertClassifier:
        """Restore a checkpoint written by `to_state`. Only for our own checkpoints: the model is
        a pickle, and unpickling untrusted bytes can run code."""
        if state.get("version") != VERSION:
            raise ValueError(f"classifier state version {state.get('version')!r} != {VERSION!r}")
        if state.get("river") != river.__version__:
            raise ValueError(
                f"classifier state was written with river {state.get('river')!r}, running {river.__version__!r}"
            )
        th = state.get("thresholds") or {}
        obj = cls(
            threshold_category=float(th.get("category", THRESHOLD_CATEGORY)),
            threshold_severity=float(th.get("severity", THRESHOLD_SEVERITY)),
        )
        # bandit B301 reviewed: only checkpoints that authenticated as Fernet tokens of ENCRYPTION_KEY reach this
        # (streams/model_hub.py open_checkpoint), or this process's own to_state(); see the module docstring.
        obj.category, obj.severity = pickle.loads(state["model"])  # nosec B301
        obj.n_learned = int(state.get("n_learned", 0))
        return obj
