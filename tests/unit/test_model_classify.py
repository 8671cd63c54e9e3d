"""Online alert classifier (models/classify.py), its grouped split and its evaluation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pagerstream.models import classify as C
from pagerstream.models.classify import AlertClassifier, features_from_alert, features_from_rule, tokens
from pagerstream.models.eval import classify as E
from pagerstream.models.eval.splits import assign_folds, split_indices
from pagerstream.processors.normalize import normalize

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
RULES = SHARED / "prometheus_alerts" / "rules_flat.jsonl"
BUSINESS = SHARED / "business_alerts" / "business_alerts_dev.jsonl"
needs_data = pytest.mark.skipif(not RULES.exists(), reason=f"shared data not found at {RULES}")

# A small hand-written corpus: enough for the model to learn something, no shared data needed.
CORPUS = [
    (
        "Host out of memory",
        "Node memory is filling up (< 10% left)",
        "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes < 0.1",
        "infrastructure",
        "warning",
    ),
    (
        "Host disk full",
        "Disk is almost full on the host",
        "node_filesystem_avail_bytes / node_filesystem_size_bytes < 0.05",
        "infrastructure",
        "critical",
    ),
    ("Host down", "Host node exporter is down", 'up{job="node"} == 0', "infrastructure", "critical"),
    (
        "Host high CPU load",
        "CPU load is high on the host",
        "avg(rate(node_cpu_seconds_total[5m])) > 0.9",
        "infrastructure",
        "warning",
    ),
    (
        "Kubernetes node not ready",
        "Kubernetes node is not ready",
        'kube_node_status_condition{condition="Ready"} == 0',
        "infrastructure",
        "critical",
    ),
    ("MySQL down", "MySQL instance is down", "mysql_up == 0", "application", "critical"),
    (
        "MySQL slow queries",
        "MySQL has slow queries",
        "increase(mysql_global_status_slow_queries[1m]) > 0",
        "application",
        "warning",
    ),
    (
        "Postgresql too many connections",
        "PostgreSQL has too many connections",
        "pg_stat_activity_count > 100",
        "application",
        "warning",
    ),
    (
        "Redis replication broken",
        "Redis replication is broken",
        "delta(redis_connected_slaves[1m]) < 0",
        "application",
        "critical",
    ),
    (
        "Kafka consumer lag",
        "Kafka consumer group lag is high",
        "kafka_consumergroup_lag > 1000",
        "application",
        "warning",
    ),
    (
        "SSL certificate expiring",
        "SSL certificate expires in less than 7 days",
        "ssl_verified_cert_not_after - time() < 86400 * 7",
        "security",
        "warning",
    ),
    ("Vault sealed", "Vault is sealed", "vault_core_unsealed == 0", "security", "critical"),
    (
        "Keycloak login failures",
        "High rate of failed logins",
        "rate(keycloak_failed_login_attempts_total[5m]) > 1",
        "security",
        "warning",
    ),
    (
        "Host kernel version changed",
        "Kernel version changed on the host",
        "changes(node_uname_info[1h]) > 0",
        "infrastructure",
        "info",
    ),
    (
        "MySQL restarted",
        "MySQL has just been restarted",
        "mysql_global_status_uptime < 60",
        "application",
        "info",
    ),
    (
        "CheckoutConversionDrop",
        "Checkout conversion fell below 1.5% of sessions; revenue at risk",
        "",
        "business",
        "critical",
    ),
    ("RefundBacklog", "Refunds waiting more than 7 days for customers", "", "business", "warning"),
    ("NewsletterUnsubscribeSpike", "Unsubscribes 8x normal after campaign", "", "business", "info"),
]


def rule(name, text, query, category=None, severity=None, **more):
    return {
        "name": name,
        "description": text,
        "query": query,
        "severity": severity,
        "category": category,
        **more,
    }


def trained(passes: int = 4, **kw) -> AlertClassifier:
    clf = AlertClassifier(**kw)
    rng = random.Random(7)
    for _ in range(passes):
        rows = CORPUS[:]
        rng.shuffle(rows)
        for name, text, query, cat, sev in rows:
            clf.learn(features_from_rule(rule(name, text, query)), category=cat, severity=sev)
    return clf


def am_alert(labels, annotations, generator_url=None):
    a = {"status": "firing", "labels": labels, "annotations": annotations, "startsAt": "2026-01-15T10:00:00Z"}
    if generator_url:
        a["generatorURL"] = generator_url
    body = {"version": "4", "status": "firing", "receiver": "pd", "groupKey": "{}:{}", "alerts": [a]}
    out = normalize(
        "alertmanager",
        json.dumps(body).encode(),
        raw_id="raw1",
        received_at_ms=1_768_500_000_000,
        attributes={},
        default_routing_key="d" * 32,
        mappings={},
    )
    assert len(out) == 1
    return out[0]


# ---- split -------------------------------------------------------------------------------


def _synthetic_groups(n_groups: int = 40):
    rng = random.Random(3)
    groups, strata = [], []
    for g in range(n_groups):
        stratum = ["infra", "app", "sec"][g % 7 % 3] if g % 7 else "sec"
        for _ in range(rng.randint(1, 12)):
            groups.append(f"svc{g}")
            strata.append(stratum)
    return groups, strata


def _check_split(groups, strata, k=5):
    splits = split_indices(groups, strata, k)
    assert len(splits) == k
    seen_test: list[int] = []
    for train, test in splits:
        assert test, "empty fold"
        assert set(train).isdisjoint(test)
        assert sorted(train + test) == list(range(len(groups)))
        assert {groups[i] for i in train}.isdisjoint({groups[i] for i in test})
        seen_test += test
    assert sorted(seen_test) == list(range(len(groups)))  # every item tested exactly once
    return splits


def test_split_never_puts_one_service_in_two_folds():
    groups, strata = _synthetic_groups()
    splits = _check_split(groups, strata)
    # stratified: the rare stratum reaches every fold
    for _, test in splits:
        assert any(strata[i] == "sec" for i in test)
    # deterministic and independent of item order
    order = list(range(len(groups)))
    random.Random(1).shuffle(order)
    a = assign_folds(zip(groups, strata))
    b = assign_folds(zip([groups[i] for i in order], [strata[i] for i in order]))
    assert a == b


@needs_data
def test_split_on_shared_rules():
    extra = [BUSINESS] if BUSINESS.exists() else []
    items = E.load_items(RULES, extra)
    groups = [it.group for it in items]
    splits = _check_split(groups, [it.stratum for it in items])
    services = {json.loads(line)["service"] for line in RULES.read_text().splitlines() if line.strip()}
    assert {g for g in groups if g.startswith("service/")} == {f"service/{s}" for s in services}
    sizes = [len(test) for _, test in splits]
    assert max(sizes) - min(sizes) < 0.2 * len(items) / len(splits)


# ---- features ----------------------------------------------------------------------------


def test_alert_and_rule_features_have_the_same_shape():
    url = "http://prom:9090/graph?g0.expr=node_filesystem_avail_bytes+%3C+1e9&g0.tab=1"
    alert = am_alert(
        {"alertname": "HostDiskFull", "severity": "critical", "instance": "10.0.0.1:9100", "job": "node"},
        {"summary": "Disk full on 10.0.0.1", "description": "Disk is almost full"},
        url,
    )
    fa = features_from_alert(alert)
    fr = features_from_rule(
        rule(
            "Host disk full",
            "Disk is almost full on {{ $labels.instance }}",
            "node_filesystem_avail_bytes < 1e9",
            **{"for": "5m"},
        )
    )
    assert set(fa) == set(fr)
    for k in fa:
        assert fa[k] is None or fr[k] is None or type(fa[k]) is type(fr[k]), k
    assert fa["name"] == "HostDiskFull"
    assert "node_filesystem_avail_bytes" in fa["query"]  # from the generatorURL
    assert "Disk is almost full" in fa["text"]
    assert fr["for_seconds"] == 300.0
    ta, tr = tokens(fa), tokens(fr)
    # CamelCase alertname and the rule's title share words, and the query tokens match
    for t in ("n:host", "n:disk", "n:full", "qm:node_filesystem_avail_bytes", "qp:node"):
        assert t in ta and t in tr, t
    assert "{{" not in " ".join(tr)
    json.dumps(fa), json.dumps(fr)  # features travel on a feedback topic


def test_severity_label_is_not_a_feature():
    base = {"alertname": "HostDiskFull", "job": "node"}
    crit = am_alert(base | {"severity": "critical"}, {"summary": "Disk full"})
    info = am_alert(base | {"severity": "info"}, {"summary": "Disk full"})
    assert tokens(features_from_alert(crit)) == tokens(features_from_alert(info))


# ---- model -------------------------------------------------------------------------------


def test_learning_from_feedback_changes_the_prediction():
    clf = trained()
    f = features_from_rule(
        rule("Host disk full", "Disk is almost full on the host", "node_filesystem_avail_bytes < 1e9")
    )
    before = clf.predict(f)
    assert before.severity_best == "critical" and before.category_best == "infrastructure"
    for n in range(1, 41):  # a human keeps correcting it
        clf.learn(f, category="business", severity="info")
        after = clf.predict(f)
        if after.severity == "info" and after.category == "business":
            break
    assert after.severity == "info" and after.category == "business", (n, after)
    assert after.pd_severity == "info"
    # one-label feedback only moves that head; PagerDuty's "error" counts as critical
    clf.learn(f, severity="error")
    with pytest.raises(ValueError):
        clf.learn(f, category="nonsense")


def test_abstains_below_threshold_and_keeps_the_probability():
    f = features_from_rule(rule("Something odd", "unusual wording never seen", ""))
    strict = trained(threshold_category=0.99, threshold_severity=0.99).predict(f)
    assert strict.category is None and strict.severity is None
    assert strict.category_abstained and strict.severity_abstained
    assert strict.category_best in C.CATEGORIES and strict.severity_best in C.SEVERITIES
    assert 0 < strict.category_probability < 0.99 and 0 < strict.severity_probability < 0.99
    assert strict.pd_severity is None
    assert abs(sum(strict.severity_proba.values()) - 1) < 1e-3
    lax = trained(threshold_category=0.0, threshold_severity=0.0).predict(f)
    assert lax.category == strict.category_best and lax.severity == strict.severity_best
    assert not lax.category_abstained and not lax.severity_abstained
    empty = AlertClassifier().predict(f)
    assert empty.category is None and empty.category_best is None and empty.category_abstained


def test_prediction_is_explained():
    clf = trained()
    p = clf.predict(features_from_rule(rule("Vault sealed", "Vault is sealed", "vault_core_unsealed == 0")))
    assert p.category_best == "security"
    r = p.reason["category"]
    assert r["weights"] and r["log_likelihood_ratio"]
    assert len(r["weights"]) <= C.REASON_TOP
    assert any("vault" in t for t in r["weights"]), r
    assert all(v > 0 for v in r["weights"].values())
    json.dumps(p.to_dict())


def test_state_round_trip_gives_the_same_predictions():
    clf = trained(threshold_category=0.7)
    state = clf.to_state()
    assert state["version"] == C.VERSION and state["river"]
    back = AlertClassifier.from_state(state)
    assert back.threshold_category == 0.7
    for name, text, query, _, _ in CORPUS + [
        ("Unknown thing", "never seen before", "foo_bar > 1", None, None)
    ]:
        f = features_from_rule(rule(name, text, query))
        assert back.predict(f) == clf.predict(f)
    # the restored model keeps learning the same way
    f = features_from_rule(rule("Kafka consumer lag", "lag", "kafka_consumergroup_lag > 1"))
    clf.learn(f, severity="critical")
    back.learn(f, severity="critical")
    assert back.predict(f) == clf.predict(f)
    with pytest.raises(ValueError, match="version"):
        AlertClassifier.from_state(state | {"version": "classify-0"})
    with pytest.raises(ValueError, match="river"):
        AlertClassifier.from_state(state | {"river": "0.0.1"})


# ---- evaluation on the shared data ----------------------------------------------------------


@needs_data
def test_quick_evaluation_beats_the_majority_baseline(tmp_path, capsys):
    m = E.evaluate(RULES, tmp_path, quick=True, extra=[BUSINESS] if BUSINESS.exists() else [])
    assert m["severity_accuracy"] > m["severity_majority_share"]
    assert m["severity_accuracy"] > m["severity_baseline_accuracy"]
    assert m["severity_macro_f1"] > m["severity_baseline_macro_f1"]
    assert m["category_accuracy"] > m["category_baseline_accuracy"]
    assert m["category_macro_f1"] > m["category_baseline_macro_f1"]
    # abstaining keeps the more certain part, which is more accurate
    assert 0 < m["severity_coverage"] < 1 and m["severity_selective_accuracy"] > m["severity_accuracy"]
    rows = [json.loads(line) for line in (tmp_path / "classify_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == m["n_items"]
    folds_of: dict[str, set[int]] = {}
    for r in rows:
        folds_of.setdefault(r["group"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in folds_of.values())
    out = capsys.readouterr().out
    assert "python -m pagerstream.models.eval.classify" in out and ("PASS" in out or "BELOW" in out)
