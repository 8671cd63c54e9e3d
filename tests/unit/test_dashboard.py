"""dashboards/pagerstream.json names only metrics (and labels) the code exports.

Exported metrics come from the registries themselves: streams.metrics.Metrics() (with the lag
collector), the webhook receiver's WebhookMetrics, the REST cache's counters and the notification
DeliveryMetrics. A scan of the source
for metric definitions makes sure no registry is left out of this list. PromQL expressions are
reduced to their selectors (name + label matchers) with a small tokenizer; a selector may name a
series of an exported family with the suffix its type exports (counter: _total; histogram: _bucket,
_count, _sum; ...), and `by (...)` / label matchers may only use labels those metrics carry.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "pagerstream.json"
SOURCE_DIRS = ("pagerstream", "streams", "processors", "models", "schemas")

SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "info": ("_info",), "stateset": ("",), "unknown": ("",)}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
            "inf", "nan"}


# --- what the code exports -----------------------------------------------------------------------------
def registries() -> list[CollectorRegistry]:
    from pagerstream.streams.metrics import Metrics

    from pagerstream.pagerduty.cache import PagerDutyCache
    from pagerstream.pagerduty.webhooks import WebhookMetrics

    m = Metrics()
    m.add_lag(list)
    hooks = CollectorRegistry()
    WebhookMetrics(hooks)
    cache = CollectorRegistry()
    redis = SimpleNamespace(register_script=lambda _src: None)  # never called: only the counters matter
    PagerDutyCache(SimpleNamespace(base_url="https://api.pagerduty.com"), redis, registry=cache)
    out = [m.registry, hooks, cache]
    try:  # outbound notifications (Slack, Teams, email...)
        from pagerstream.notify.delivery import DeliveryMetrics
    except ImportError:
        pass
    else:
        notify = CollectorRegistry()
        DeliveryMetrics(notify)
        out.append(notify)
    from pagerstream.audit import AuditMetrics  # authentication and the audit trail (docs/security.md)
    from pagerstream.auth import AuthMetrics

    security = CollectorRegistry()
    AuthMetrics(security)
    AuditMetrics(security)
    out.append(security)
    return out


def families() -> dict[str, tuple[str, frozenset[str]]]:
    """family name -> (type, label names)."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for reg in registries():
        for c in list(reg._collector_to_names):
            if isinstance(c, MetricWrapperBase):
                out[c._name] = (c._type, frozenset(c._labelnames))
                continue
            for fam in c.collect():
                labels = set(getattr(fam, "_labelnames", ())) | {k for s in fam.samples for k in s.labels}
                out[fam.name] = (fam.type, frozenset(labels))
    return out


def exported() -> dict[str, frozenset[str]]:
    """Every series name Prometheus will see -> the labels it can carry."""
    out = {}
    for name, (kind, labels) in families().items():
        for suffix in SUFFIXES.get(kind, ("",)):
            out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


# --- PromQL selectors ----------------------------------------------------------------------------------
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w$:.])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<metric>[^,]+?)\s*,\s*)?(?P<label>[A-Za-z_]\w*)\s*\)\s*$")


def selectors(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """([(metric name, label names matched)], label names used in by/without/on/ignoring clauses)."""
    s = _STRING.sub('""', expr)
    s = _RANGE.sub("", s)
    grouping: set[str] = set()
    for m in _GROUPING.finditer(s):
        grouping |= {x.strip() for x in m.group(2).split(",") if x.strip()}
    s = _GROUPING.sub(" ", s)
    found = []
    for m in _SELECTOR.finditer(s):
        name, matchers, call = m.groups()
        if call and not matchers:  # a function (rate, sum, histogram_quantile...)
            continue
        if name.lower() in KEYWORDS:
            continue
        found.append((name, set(_MATCHER.findall(matchers or ""))))
    return found, grouping


def problems(exprs: list[str], known: dict[str, frozenset[str]]) -> list[str]:
    out = []
    for e in exprs:
        lv = _LABEL_VALUES.match(e)
        if lv:  # a Grafana variable query: label_values(metric, label)
            sels, grouping = selectors(lv["metric"] or ""), {lv["label"]}
            sels = (sels[0], grouping)
        else:
            sels = selectors(e)
        names, grouping = sels
        if not names:
            out.append(f"no metric in {e!r}")
        labels: set[str] = set()
        for name, matched in names:
            if name not in known:
                out.append(f"unknown metric {name!r} in {e!r}")
                continue
            labels |= known[name]
            if matched - known[name]:
                out.append(f"{name} has no label(s) {sorted(matched - known[name])} in {e!r}")
        if names and all(n in known for n, _ in names) and grouping - labels:
            out.append(f"no metric of {e!r} has label(s) {sorted(grouping - labels)}")
    return out


def dashboard_exprs(d: dict[str, Any]) -> list[str]:
    exprs = []

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            if isinstance(o.get("expr"), str):
                exprs.append(o["expr"])
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(d.get("panels", []))
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            exprs.append(q)
    return exprs


@pytest.fixture(scope="module")
def dash() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def known() -> dict[str, frozenset[str]]:
    return exported()


# --- the tests ------------------------------------------------------------------------------------------
def test_every_dashboard_query_names_exported_metrics_and_labels(dash, known):
    exprs = dashboard_exprs(dash)
    assert len(exprs) >= 30
    assert problems(exprs, known) == []


def test_the_dashboard_covers_the_whole_pipeline(dash):
    used = {n for e in dashboard_exprs(dash) for n, _ in selectors(e)[0]}
    used |= {m["metric"].strip() for e in dashboard_exprs(dash) if (m := _LABEL_VALUES.match(e)) and m["metric"]}
    want = {
        "pagerstream_ingress_requests_total", "pagerstream_consumer_lag", "pagerstream_end_to_end_latency_seconds_bucket",
        "pagerstream_pagerduty_requests_total", "pagerstream_pagerduty_breaker_open",
        "pagerstream_pagerduty_rate_wait_seconds_bucket", "pagerstream_dead_letters_total",
        "pagerstream_model_score_bucket", "pagerstream_model_latency_seconds_bucket",
        "pagerstream_model_decisions_total", "pagerstream_incident_mtta_seconds_sum",
        "pagerstream_incident_mttr_seconds_sum", "pagerstream_incident_interruptions_total",
        "pagerstream_alerts_in_total", "pagerstream_incidents_out_total", "pagerstream_incident_escalations_total",
        "pagerstream_pagerduty_webhooks_produced_total", "pagerstream_pd_cache_hits_total",
    }
    assert want - used == set()


def test_dashboard_is_importable_grafana_json(dash):
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert "datasource" in variables
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
            for t in p["targets"]:
                used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval", "__interval", "__range"}
                assert used <= variables, (p["title"], used - variables)


def test_the_check_fails_on_unknown_metrics_suffixes_and_labels(known):
    good = 'histogram_quantile(0.99, sum by (le, stage) (rate(pagerstream_stage_latency_seconds_bucket{stage="x"}[5m])))'
    assert selectors(good) == ([("pagerstream_stage_latency_seconds_bucket", {"stage"})], {"le", "stage"})
    assert problems([good], known) == []
    bad = {
        "rate(pagerstream_alerts_ingested_total[5m])": "unknown metric 'pagerstream_alerts_ingested_total'",
        "sum(rate(pagerstream_incident_mtta_seconds_total[5m]))": "unknown metric",  # a histogram has no _total
        "pagerstream_stage_records": "unknown metric",  # a counter is exported as _total
        'sum(pagerstream_alerts_in_total{region="eu"})': "has no label(s) ['region']",
        "sum by (region) (rate(pagerstream_alerts_in_total[5m]))": "has label(s) ['region']",
        "time() - 5": "no metric",
        "label_values(pagerstream_alerts_in_total, region)": "has label(s) ['region']",
    }
    for expr, why in bad.items():
        got = problems([expr], known)
        assert got and why in got[0], (expr, got)


def test_an_unknown_metric_in_the_dashboard_file_is_caught(dash, known):
    broken = json.loads(json.dumps(dash))
    broken["panels"][1]["targets"][0]["expr"] = "sum(rate(pagerstream_made_up_metric_total[5m]))"
    assert problems(dashboard_exprs(broken), known) == \
        ["unknown metric 'pagerstream_made_up_metric_total' in 'sum(rate(pagerstream_made_up_metric_total[5m]))'"]


_DEFINITION = re.compile(r"\b(?:Counter|Gauge|Histogram|Summary|Info|Enum|\w*MetricFamily)\(\s*[\"']"
                         r"(pagerstream_[a-z0-9_]+)[\"']")


def test_every_metric_defined_in_the_source_is_in_a_registry_checked_here():
    defined = set()
    for d in SOURCE_DIRS:
        for f in (ROOT / d).rglob("*.py"):
            defined |= set(_DEFINITION.findall(f.read_text()))
    assert len(defined) > 30
    fams = families()
    missing = {n for n in defined if n not in fams and n.removesuffix("_total") not in fams}
    assert missing == set(), "add the registry defining these to registries() in this test"
