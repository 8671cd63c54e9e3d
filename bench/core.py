"""Benchmark of the pure decision core, in-process, no Kafka: how fast pagerstream's own code is.

    python bench/core.py [--n 5000] [--models]

--models adds the incident stage with the models at incident open (processors/intel.py): the
transient model, the classifier trained on ../shared/data/prometheus_alerts (if present), the
similar-incident index holding 10,000 past incidents, the recurrence detector; measured against
the same stage without models in the same run.

Stages: normalize+enrich (RawAlert bytes -> enriched Alert bytes) and incident (Alert bytes ->
decision, group state JSON, IncidentEvent + PagerDutyEvent bytes). Baseline, same run, same data:
only json.loads of each body plus one Avro encode of a record of the same size, i.e. the
irreducible parse/serialise work. The worker's real rate is far lower (see bench/pipeline.py):
the difference is the Kafka client and Faust per-record machinery.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pagerstream.processors.alert import Alert
from pagerstream.processors.catalog import load_catalog
from pagerstream.processors.enrich import enrich
from pagerstream.processors.incident import Grouping, decide, group_from_dict, group_to_dict, pagerduty_seq
from pagerstream.processors.normalize import normalize
from pagerstream.processors.outbox import incident_event_record, pagerduty_event_record
from pagerstream.schemas import AvroCodec

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--models", action="store_true")
    args = ap.parse_args()
    n = args.n
    cat = load_catalog(REPO / "examples" / "catalog.yaml")
    rk = "BENCHROUTINGKEY00000000000000001"
    ca, ci, cp, cr = (AvroCodec(x) for x in ("alert", "incident_event", "pagerduty_event", "raw_alert"))
    bodies = [json.dumps({"routing_key": rk, "event_action": "trigger", "dedup_key": f"k{i % (n // 2)}",
                          "payload": {"summary": f"High error rate {i}", "source": f"host-{i % 50}",
                                      "severity": "error", "custom_details": {"x": i}}}).encode() for i in range(n)]
    raws = [cr.encode({"id": f"r{i}", "source": "pagerduty_events_v2", "received_at": 1_700_000_000_000 + i,
                       "body": b, "attributes": {}}) for i, b in enumerate(bodies)]

    t0 = time.perf_counter()
    for b in raws:
        r = cr.decode(b)
        json.loads(r["body"])
        cr.encode(r)
    base = n / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    encoded = []
    for i, b in enumerate(raws):
        r = cr.decode(b)
        for a in normalize(r["source"], r["body"], raw_id=r["id"], received_at_ms=r["received_at"],
                           attributes=r["attributes"], default_routing_key="", mappings=cat.sources):
            encoded.append(ca.encode(enrich(a, cat).alert.with_(raw_partition=0, raw_offset=i).to_record()))
    norm = n / (time.perf_counter() - t0)

    def incident_stage(advise_fn=None) -> tuple[float, int]:
        t0 = time.perf_counter()
        table: dict[str, str] = {}
        opens = 0
        for v in encoded:
            a = Alert.from_record(ca.decode(v))
            stored = table.get(a.group_key)
            step = decide(group_from_dict(json.loads(stored)) if stored else None, a, Grouping(), advise_fn)
            table[a.group_key] = json.dumps(group_to_dict(step.state))
            for o in step.outputs:
                opens += o.change == "opened"
                ci.encode(incident_event_record(o))
                ev = pagerduty_event_record(o, pagerduty_seq(o.incident.incident_id, o.incident.version), now_ms=0)
                if ev:
                    cp.encode(ev)
        return n / (time.perf_counter() - t0), opens

    inc, opens = incident_stage()
    both = 1 / (1 / norm + 1 / inc)
    print(f"command: {' '.join(['python', *sys.argv])}")
    print(f"{n} PagerDuty-shaped triggers, half of them repeats; one process, one core")
    print(f"baseline (json.loads + Avro decode/encode only)  {base:10,.0f} alerts/s")
    print(f"normalize + enrich                               {norm:10,.0f} alerts/s  ({base / norm:.1f}x the baseline's time)")
    print(f"incident decision + outputs                      {inc:10,.0f} alerts/s")
    print(f"both stages                                      {both:10,.0f} alerts/s")
    if args.models:
        with_models, _ = incident_stage(_advisor())
        per_open_ms = (1 / with_models - 1 / inc) * n / max(opens, 1) * 1000
        print(f"incident decision + outputs + models at open     {with_models:10,.0f} alerts/s  "
              f"({opens} opens; the models cost {per_open_ms:.2f} ms per opened incident)")
    return 0


def _advisor():
    """The stream's advise step with realistic model sizes (see the module docstring)."""
    import random

    from pagerstream.models.classify import AlertClassifier, features_from_rule
    from pagerstream.models.similar import IncidentIndex
    from pagerstream.processors.intel import PredictionCache, TransientSettings, TypeEntry, advise, alert_type

    rules = REPO.parent / "shared" / "data" / "prometheus_alerts" / "rules_flat.jsonl"
    clf = AlertClassifier()
    if rules.exists():
        for line in rules.read_text().splitlines():
            r = json.loads(line)
            try:
                clf.learn(features_from_rule(r), severity=r.get("severity"), category=r.get("category4"))
            except ValueError:
                pass
    rnd = random.Random(7)
    words = ("cpu memory disk latency error timeout database postgres redis kafka broker node pod crash oom "
             "network dns tls certificate expired queue backlog api gateway payment checkout login").split()
    index = IncidentIndex(rerank=10)
    for i in range(10_000):
        text = " ".join(rnd.choice(words) for _ in range(7))
        index.add(f"past-{i}", text, {"title": text, "service": f"svc{i % 40}", "summary": text})
    table: dict[str, dict] = {}
    cache = PredictionCache()
    ts = TransientSettings()

    def advise_fn(a):
        key = alert_type(a)
        adv, entry = advise(a, TypeEntry.from_dict(table.get(key)), [30.0] * 64, ts, classifier=clf, cache=cache,
                            index=index)
        table[key] = entry.to_dict()
        return adv
    return advise_fn


if __name__ == "__main__":
    raise SystemExit(main())
