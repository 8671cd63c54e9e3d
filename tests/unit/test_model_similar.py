"""Similar past incidents: ranking, explanations, online adds, state round trip, post-mortem retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pagerstream.models.eval.similar import GOALS, evaluate
from pagerstream.models.similar import VERSION, IncidentIndex, tokenize

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

INCIDENTS = [
    ("inc-1", ("A leap second insertion made the kernel timer misbehave; Java processes spun at 100% CPU "
               "on every Linux server until the clock was reset."),
     {"title": "Leap second CPU spike", "company": "Acme", "keywords": ["leap second", "cpu", "linux"]}),
    ("inc-2", ("An expired TLS certificate on the API gateway made all client handshakes fail. Renewal "
               "automation had silently stopped months earlier."),
     {"title": "Certificate expiry outage", "company": "Globex", "product": "API gateway"}),
    ("inc-3", ("A BGP configuration push withdrew our prefixes from the internet; every data center was "
               "unreachable for 40 minutes until the change was rolled back."),
     {"title": "BGP withdrawal", "company": "Initech", "keywords": ["bgp", "network"]}),
    ("inc-4", ("The primary database ran out of disk during a migration; replication lag grew and writes "
               "failed until old WAL segments were removed."),
     {"title": "Database disk full", "company": "Acme", "product": "Postgres"}),
    ("inc-5", "A memory leak in the cache nodes caused evictions and a thundering herd on the database.",
     {"title": "Cache memory leak", "company": "Umbrella"}),
]


def make_index(**kw) -> IncidentIndex:
    idx = IncidentIndex(**kw)
    for doc_id, text, fields in INCIDENTS:
        idx.add(doc_id, text, fields)
    return idx


@pytest.mark.parametrize("query,expected", [
    ("leap second caused Linux servers to burn CPU", "inc-1"),
    ("TLS certificates expired and handshakes failed at the gateway", "inc-2"),
    ("bad BGP config withdrew prefixes, data centers unreachable", "inc-3"),
    ("database disk filled up during migration, replication lagging", "inc-4"),
])
def test_exact_topic_ranks_first_with_explanation(query, expected):
    res = make_index().query(query, k=3)
    assert res[0][0] == expected
    _, score, why = res[0]
    assert 0.0 < score <= 1.0
    assert why["bm25"] > 0 and why["top_terms"]
    terms = [t for t, _ in why["top_terms"]]
    # explanations are the query's own words (bigrams may skip stop words in between)
    assert all(w in query.lower() for t in terms for w in t.split())
    assert [s for _, s, _ in res] == sorted((s for _, s, _ in res), reverse=True)


def test_company_field_is_searchable_and_boosted():
    idx = make_index(ngram_weight=0.0)
    assert idx.query("Globex", k=1)[0][0] == "inc-2"
    # "Acme" matches two incidents; the disk one wins on topic
    assert idx.query("Acme disk", k=1)[0][0] == "inc-4"


def test_no_overlap_and_empty_index():
    assert IncidentIndex().query("anything", k=5) == []
    assert make_index().query("zzzz qqqq", k=5) == []
    assert make_index().query("leap second", k=0) == []


def test_online_add_and_replace():
    idx = make_index()
    assert idx.query("kafka consumer rebalance storm", k=1) == []
    idx.add("inc-6", "Kafka consumer group rebalance storm caused hours of consumer lag.",
            {"title": "Kafka lag"})
    assert idx.query("kafka consumer rebalance storm", k=1)[0][0] == "inc-6"
    # re-adding an id replaces the document
    idx.add("inc-6", "Redis failover lost the session cache.", {"title": "Redis failover"})
    assert len(idx) == 6
    assert idx.query("kafka consumer rebalance storm", k=1) == []
    assert idx.query("redis failover", k=1)[0][0] == "inc-6"


def test_state_round_trip():
    idx = make_index()
    idx.add("inc-1", "Replaced: leap smear rollout reached all servers.", {"title": "Leap smear"})
    state = json.loads(json.dumps(idx.to_state()))
    assert state["version"] == VERSION
    back = IncidentIndex.from_state(state)
    for q in ("leap second cpu", "certificate expired", "database migration disk"):
        assert back.query(q, k=5) == idx.query(q, k=5)
    state["version"] = "x"
    with pytest.raises(ValueError):
        IncidentIndex.from_state(state)


def test_tokenize_stems_and_bigrams():
    toks = tokenize("The servers were failing; failed server")
    assert toks.count("server") == 2 and toks.count("fail") == 2
    assert "server_fail" in toks and "the" not in toks


@pytest.mark.skipif(not (DATA / "postmortems").is_dir(),
                    reason=f"shared data not found at {DATA / 'postmortems'}")
def test_postmortem_retrieval_meets_goals():
    res = evaluate(DATA / "postmortems", quick=True)  # quick: latency timed at 2,000 docs, not asserted
    assert res["r@1"] >= GOALS["r@1"], res
    assert res["mrr"] >= GOALS["mrr"], res
    assert res["r@5"] >= res["r@1"]


def test_remove_and_compact_keep_a_sliding_index_correct():
    from pagerstream.models.similar import IncidentIndex

    idx = IncidentIndex(rerank=5)
    texts = {f"d{i}": f"{w} outage in region {i % 3}" for i, w in enumerate(
        ["database", "kafka", "dns", "certificate", "disk", "memory", "network", "payment"])}
    for d, t in texts.items():
        idx.add(d, t, {"title": t})
    assert idx.query("dns outage", k=1)[0][0] == "d2"
    assert idx.remove("d2") and not idx.remove("d2")
    assert "d2" not in idx and len(idx) == 7 and idx.tombstones == 1
    assert all(d != "d2" for d, _, _ in idx.query("dns outage", k=8))
    before = [(d, round(s, 6)) for d, s, _ in idx.query("disk outage region", k=4)]
    idx.compact()
    assert idx.tombstones == 0 and len(idx) == 7
    assert [(d, round(s, 6)) for d, s, _ in idx.query("disk outage region", k=4)] == before
    assert idx.fields("d4") == {"title": texts["d4"]} and idx.fields("d2") == {}
