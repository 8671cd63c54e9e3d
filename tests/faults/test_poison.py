"""Scenario 6: poison records on alerts.raw and alerts.normalized, on every partition: bytes that are
not Avro, a truncated record, a record of the wrong type, bodies the normalize stage refuses, and an
Alert the incident stage throws on. Each one is dead-lettered with its stage, a reason and its
position, and every partition keeps moving: alerts produced after the poison reach PagerDuty."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pagerstream.processors.enrich import enrich
from pagerstream.processors.normalize import normalize
from pagerstream.schemas import AvroCodec

from tests.conftest import FIXTURES
from tests.faults.conftest import (
    OPEN_INGRESS,
    pd_body,
    produce_raw_bytes,
    raw_key,
    raw_record,
    routing_key,
    sandbox_sequences,
    sequence_problems,
    wait_for,
)
from tests.integration.helpers import read_topic

PARTITIONS = 4


def _alert_bytes(rk: str, run: str, **change) -> bytes:
    """A well-formed Alert record, changed by `change` (e.g. an empty dedup_key)."""
    from pagerstream.processors.catalog import load_catalog

    body = json.dumps(pd_body(rk, "trigger", f"poison-{run}", 0)).encode()
    a = normalize("pagerduty_events_v2", body, raw_id=uuid.uuid4().hex, received_at_ms=int(time.time() * 1000),
                  attributes={}, default_routing_key="")[0]
    a = enrich(a, load_catalog(str(FIXTURES / "catalog.example.yaml"))).alert
    return AvroCodec("alert").encode(a.with_(**change).to_record())


def poison_records(workers: Any, own_sandbox: Any) -> dict[str, Any]:
    """The scenario (also run by scripts/soak.py). Returns its figures."""
    rk = routing_key("POISON")
    run = uuid.uuid4().hex[:6]
    env = workers.env({**OPEN_INGRESS, "PAGERDUTY_EVENTS_URL": own_sandbox.url,
                       "PAGERSTREAM_PD_RATE": "200", "PAGERSTREAM_PD_BURST": "50"})
    w = workers.start(env, name="poison")
    bs, prefix = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), env["PAGERSTREAM_TOPIC_PREFIX"]
    good = raw_record(pd_body(rk, "trigger", f"shape-{run}", 0))

    # what each poison must be dead-lettered as: (stage, a word of the reason)
    raw_poison: list[tuple[bytes, str, str]] = [
        (b"\x00\x01 not avro at all", "decode", "avro"),
        (good[:14], "decode", "corrupt"),  # framed, fingerprint known, body cut short
        (_alert_bytes(rk, run), "decode", "mismatch"),  # an Alert where a RawAlert belongs
        (raw_record(b"{this is not json"), "normalize", "json"),
        (raw_record(b"[" * 100_000), "normalize", "deep"),  # makes the JSON parser recurse
        (raw_record(pd_body(rk, "trigger", "x", 0), source="nagios"), "normalize", "unknown source"),
        (raw_record(json.dumps({"routing_key": rk, "event_action": "explode"}).encode()), "normalize", "event_action"),
    ]
    norm_poison: list[tuple[bytes, str, str]] = [
        (b"\xc3\x01 garbage", "incident", "fingerprint"),  # framed, unknown schema
        (raw_record(pd_body(rk, "trigger", "y", 0)), "incident", "mismatch"),  # a RawAlert where an Alert belongs
        # a well-formed Alert the incident stage throws on while building the PagerDuty call
        (_alert_bytes(rk, run, dedup_key="", group_key=f"poison-{run}"), "incident", "dedup_key"),
    ]
    raw_items = [(f"poison-{run}-{i}".encode(), v, p) for p in range(PARTITIONS) for i, (v, _, _) in enumerate(raw_poison)]
    norm_items = [(f"poison-{run}-{i}".encode(), v, p) for p in range(PARTITIONS)
                  for i, (v, _, _) in enumerate(norm_poison)]
    raw_pos = produce_raw_bytes(bs, prefix + "alerts.raw", raw_items)
    norm_pos = produce_raw_bytes(bs, prefix + "alerts.normalized", norm_items)

    # then good alerts on every raw partition; their group keys spread them over the normalized ones
    keys = [f"after-{run}-{i}" for i in range(40)]
    good_items = [(raw_key(rk, k), raw_record(pd_body(rk, "trigger", k, i)), i % PARTITIONS) for i, k in enumerate(keys)]
    produce_raw_bytes(bs, prefix + "alerts.raw", good_items)

    expected = {k: ["trigger"] for k in keys}
    try:
        wait_for(lambda: not sequence_problems(expected, sandbox_sequences(own_sandbox, rk)), timeout=120,
                 interval=1, what="alerts produced after the poison at PagerDuty")
    except AssertionError:
        bad = sequence_problems(expected, sandbox_sequences(own_sandbox, rk))
        raise AssertionError(f"{len(bad)} of {len(keys)} later alerts missing: {list(bad)[:10]}\n"
                             f"{w.proc.log_tail(30)}") from None

    # expected dead letter per poison position: (stage, a word of the reason, the original bytes)
    want: dict[tuple[str, int, int], tuple[str, str, bytes]] = {}
    for topic, items, positions, kinds in (("alerts.raw", raw_items, raw_pos, raw_poison),
                                           ("alerts.normalized", norm_items, norm_pos, norm_poison)):
        for n, ((_, value, _), (p, o)) in enumerate(zip(items, positions)):
            _, stage, word = kinds[n % len(kinds)]  # items are partition-major, kinds repeat per partition
            want[(prefix + topic, p, o)] = (stage, word, value)

    def dead_letters():
        got = {}
        for r in read_topic(bs, prefix + "alerts.dead-letter", idle=1.0):
            v = r["value"]
            got[(v["topic"], v["partition"], v["offset"])] = v
        return got if set(want) <= set(got) else None

    try:
        dl = wait_for(dead_letters, timeout=60, interval=2, what="a dead letter for every poison record")
    except AssertionError:
        got = {(r["value"]["topic"], r["value"]["partition"], r["value"]["offset"])
               for r in read_topic(bs, prefix + "alerts.dead-letter", idle=1.0)}
        raise AssertionError(f"no dead letter for {sorted(set(want) - got)}") from None
    wrong = {}
    for pos, (stage, word, original) in want.items():
        v = dl[pos]
        if v["stage"] != stage or word.lower() not in v["reason"].lower() or v["original"] != original:
            wrong[pos] = {"want": (stage, word), "got": (v["stage"], v["reason"][:200]),
                          "original kept": v["original"] == original}
    assert wrong == {}, wrong

    # every normalized partition processed records that came after its poison
    norm = read_topic(bs, prefix + "alerts.normalized", idle=1.0)
    later = {p: [r for r in norm if r["partition"] == p and r["offset"] > max(o for q, o in norm_pos if q == p)
                 and isinstance(r["value"], dict) and r["value"].get("dedup_key", "").startswith(f"after-{run}")]
             for p in range(PARTITIONS)}
    assert all(later.values()), {p: len(v) for p, v in later.items()}
    # the alert whose decision could not be encoded left no group state behind (nothing half-written)
    changelog = read_topic(bs, env["PAGERSTREAM_APP_ID"] + "-groups-changelog", idle=1.0)
    assert changelog, "the groups changelog is where the state would be"
    assert [r["key"] for r in changelog if f"poison-{run}".encode() in (r["key"] or b"")] == []
    assert w.proc.alive()
    return {"poison_records": len(want), "on_raw": len(raw_items), "on_normalized": len(norm_items),
            "later_alerts_delivered": len(keys), "later_per_normalized_partition": [len(later[p]) for p in range(PARTITIONS)]}


def test_poison_records_are_dead_lettered_and_partitions_keep_moving(workers, own_sandbox):
    print(f"\n[faults] poison: {poison_records(workers, own_sandbox)}")
