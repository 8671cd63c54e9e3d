"""pagerstream/audit.py without Kafka: the hash chain the writer builds, what `audit verify` finds in a
chain that was altered, cut, reordered or extended with forged copies, and the entries of decisions."""

from __future__ import annotations

import copy
import hashlib
import json
from types import SimpleNamespace

import pytest

from pagerstream.audit import (
    GENESIS,
    ChainWriter,
    canonical,
    chain_hash,
    decision_entry,
    make_entry,
    parse_entry,
    self_consistent,
    verify_records,
)
from pagerstream.schemas import AvroCodec

T0 = 1_750_000_000_000


def _chain(n: int) -> list[dict]:
    w = ChainWriter()
    out = []
    for i in range(n):
        rec = w.append(make_entry(f"user:u{i}(responder)", "feedback.submitted", f"inc-{i}", {"i": i},
                                  entry_id=f"e{i}", at=T0 + i))
        out.append(rec)
    return out


def _items(recs: list[dict | None]) -> list[tuple[int, dict | None]]:
    return list(enumerate(recs))


def _rehash(rec: dict) -> dict:
    rec = dict(rec)
    rec["hash"] = chain_hash(rec["prev_hash"], rec)
    return rec


# --- the chain ---------------------------------------------------------------------------------------
def test_writer_builds_a_linked_chain_from_genesis():
    recs = _chain(5)
    assert [r["seq"] for r in recs] == [0, 1, 2, 3, 4]
    assert recs[0]["prev_hash"] == GENESIS
    for a, b in zip(recs, recs[1:]):
        assert b["prev_hash"] == a["hash"]
    for r in recs:
        want = hashlib.sha256(bytes.fromhex(r["prev_hash"]) + canonical(r)).hexdigest()
        assert r["hash"] == want and self_consistent(r)


def test_canonical_form_covers_every_field_but_the_hash():
    r = _chain(1)[0]
    c = json.loads(canonical(r))
    assert set(c) == {"seq", "prev_hash", "at", "entry_id", "actor", "action", "object", "details_json"}
    assert canonical(dict(r, hash="f" * 64)) == canonical(r)
    for field in c:
        changed = dict(r, **{field: "x" if isinstance(r[field], str) else 7})
        assert chain_hash(r["prev_hash"], changed) != r["hash"], field
    assert canonical(dict(reversed(list(r.items())))) == canonical(r)  # key order does not matter


def test_writer_skips_an_entry_id_it_has_written():
    w = ChainWriter()
    e = make_entry("system:incident-stage", "incident.opened", "inc-1", entry_id="decision:inc-1#1:opened")
    assert w.append(e)["seq"] == 0
    assert w.append(dict(e)) is None  # a replayed decision
    assert w.append(make_entry("a", "b", None))["seq"] == 1


def test_writer_recovers_from_the_topic_tail():
    recs = _chain(4)
    w = ChainWriter()
    w.recover(recs)
    assert (w.seq, w.head) == (3, recs[-1]["hash"])
    assert w.append(make_entry("a", "b", None, entry_id="e2")) is None  # already in the topic
    nxt = w.append(make_entry("a", "b", None, entry_id="new"))
    assert nxt["seq"] == 4 and nxt["prev_hash"] == recs[-1]["hash"]
    assert verify_records(_items(recs + [nxt]), from_beginning=True).ok
    # a last record whose hash does not match its content is not built upon
    bad = dict(recs[-1], actor="mallory")
    w2 = ChainWriter()
    w2.recover(recs[:-1] + [bad])
    assert (w2.seq, w2.head) == (2, recs[2]["hash"])


def test_entries_are_checked_and_clipped():
    e = make_entry("x" * 500, "a" * 500, "o" * 500, {"k": 1})
    assert len(e["actor"]) == 200 and len(e["action"]) == 100 and len(e["object"]) == 300
    assert parse_entry(json.dumps(e).encode()) == e
    for bad in (b"nope", b"[]", json.dumps({**e, "actor": ""}).encode(), json.dumps({**e, "at": "now"}).encode(),
                json.dumps({**e, "details": []}).encode(), json.dumps({**e, "object": 5}).encode()):
        with pytest.raises(ValueError):
            parse_entry(bad)


def test_records_survive_avro():
    codec = AvroCodec("audit_record")
    recs = [codec.decode(codec.encode(r)) for r in _chain(3)]
    assert verify_records(_items(recs), from_beginning=True).ok


# --- verify ------------------------------------------------------------------------------------------
def test_an_intact_chain_passes():
    rep = verify_records(_items(_chain(10)), from_beginning=True)
    assert rep.ok and rep.records == 10 and (rep.first_seq, rep.last_seq) == (0, 9)
    assert rep.problems == [] and rep.head == _chain(10)[-1]["hash"]


def test_an_altered_record_is_found():
    recs = _chain(6)
    recs[3] = dict(recs[3], details_json='{"i":999}')
    rep = verify_records(_items(recs), from_beginning=True)
    assert not rep.ok
    assert rep.problems == ["offset 3 seq 3: altered: the hash does not match the record's content"]


def test_an_altered_record_with_a_recomputed_hash_breaks_the_link():
    recs = _chain(6)
    recs[3] = _rehash(dict(recs[3], actor="user:mallory(admin)"))
    rep = verify_records(_items(recs), from_beginning=True)
    assert rep.problems == ["offset 4 seq 4: chain broken: prev_hash does not link to seq 3 "
                            "(a record was altered or inserted)"]


def test_a_missing_record_is_found():
    recs = _chain(6)
    del recs[2]
    rep = verify_records(_items(recs), from_beginning=True)
    assert rep.problems == ["offset 2 seq 3: missing records: seq 2 (after the record of seq 1)"]
    del recs[2:4]
    assert "missing records: seq 2..4" in verify_records(_items(recs), from_beginning=True).problems[0]


def test_reordered_records_are_found():
    recs = _chain(6)
    recs[2], recs[3] = recs[3], recs[2]
    rep = verify_records(_items(recs), from_beginning=True)
    assert not rep.ok
    assert rep.problems[0] == "offset 2 seq 3: missing records: seq 2 (after the record of seq 1)"
    assert rep.problems[1].startswith("offset 3 seq 2: reordered or forged: seq 2 after seq 3")


def test_a_forged_copy_appended_later_is_found():
    recs = _chain(5)
    forged = _rehash(dict(recs[1], action="incident.resolve"))  # "it was resolved, not acknowledged"
    rep = verify_records(_items(recs + [forged]), from_beginning=True)
    assert rep.problems == ["offset 5 seq 1: reordered or forged: seq 1 after seq 4 (a changed copy of an earlier record)"]
    # records written after the forgery still verify against the real chain
    w = ChainWriter()
    w.recover(recs)
    later = w.append(make_entry("a", "b", None))
    assert verify_records(_items(recs + [forged, later]), from_beginning=True).problems == rep.problems


def test_a_forged_record_continuing_the_chain_is_caught_by_an_anchor():
    recs = _chain(4)
    anchor = {3: recs[3]["hash"]}
    rewritten = copy.deepcopy(recs)
    rewritten[1] = _rehash(dict(rewritten[1], actor="user:nobody(viewer)"))
    for i in (2, 3):  # a consistent rewrite of the whole suffix: only an anchor kept elsewhere shows it
        rewritten[i] = _rehash(dict(rewritten[i], prev_hash=rewritten[i - 1]["hash"]))
    assert verify_records(_items(rewritten), from_beginning=True).ok
    rep = verify_records(_items(rewritten), from_beginning=True, anchors=anchor)
    assert len(rep.problems) == 1 and rep.problems[0].startswith("anchor seq 3: hash")
    assert verify_records(_items(recs), from_beginning=True, anchors=anchor).ok
    assert "no such record" in verify_records(_items(recs), from_beginning=True, anchors={9: "0" * 64}).problems[0]


def test_an_exact_duplicate_is_only_noted():
    recs = _chain(3)
    rep = verify_records(_items([recs[0], recs[1], recs[1], recs[2]]), from_beginning=True)
    assert rep.ok and rep.records == 3 and "exact duplicate" in rep.notes[0]


def test_from_beginning_requires_the_genesis():
    recs = _chain(6)
    assert verify_records(_items(recs[2:]), from_beginning=False).ok  # a window of the tail
    rep = verify_records(_items(recs[2:]), from_beginning=True)
    assert rep.problems == ["offset 0 seq 2: the chain does not start at seq 0 with the genesis prev_hash "
                            "(records before it are missing)"]


def test_unreadable_records_are_problems():
    recs = _chain(3)
    rep = verify_records(_items([recs[0], None, recs[1], recs[2]]), from_beginning=True)
    assert rep.problems == ["offset 1: not a readable AuditRecord (foreign or corrupted bytes)"]


def test_a_bad_prev_hash_is_altered_not_a_crash():
    recs = _chain(2)
    recs[1] = dict(recs[1], prev_hash="not hex")
    rep = verify_records(_items(recs), from_beginning=True)
    assert any("altered" in p for p in rep.problems) and any("chain broken" in p for p in rep.problems)


# --- decisions ---------------------------------------------------------------------------------------
def _out(change: str, detail: str | None = None, pd_action: str | None = "trigger", version: int = 1,
         incident_id: str = "inc-7") -> SimpleNamespace:
    inc = SimpleNamespace(incident_id=incident_id, version=version, state="open", service="checkout",
                          severity="critical", routing_key="SECRETROUTINGKEY000000000000ABCD",
                          route={"rule": "db", "routing_key_name": "dba", "routing_key_hint": "ABCD",
                                 "escalation_policy_id": "P1", "responder_id": "U1", "reason": ["x"]},
                          pause=None, last_activity_at=T0)
    alert = SimpleNamespace(id="raw1:0", received_at=T0 + 5)
    return SimpleNamespace(incident=inc, change=change, reason="new alert", alert=alert, pd_action=pd_action,
                           detail=detail, at=None)


def test_decisions_become_entries_with_deterministic_ids_and_no_keys():
    e = decision_entry(_out("opened"))
    assert e["id"] == "decision:inc-7#1:opened" and e["id"] == decision_entry(_out("opened"))["id"]
    assert (e["actor"], e["action"], e["object"], e["at"]) == ("system:incident-stage", "incident.opened",
                                                               "inc-7", T0 + 5)
    assert e["details"]["route"] == {"rule": "db", "routing_key_name": "dba", "escalation_policy_id": "P1",
                                     "responder_id": "U1"}
    assert "SECRETROUTINGKEY" not in json.dumps(e) and e["details"]["routing_key_hint"] == "ABCD"
    assert decision_entry(_out("opened", "paused", None))["action"] == "incident.opened.paused"
    assert decision_entry(_out("resolved", version=3))["id"] == "decision:inc-7#3:resolved"


@pytest.mark.parametrize("change", ["duplicate", "alert_added", "alert_resolved"])
def test_per_alert_bookkeeping_is_not_a_decision(change):
    assert decision_entry(_out(change, pd_action=None)) is None
    assert decision_entry(_out(change, pd_action="trigger")) is not None  # unless it called PagerDuty


# --- refused requests (DenialDigest) -------------------------------------------------------------------
def _digest(window_s: float = 60.0, max_kinds: int = 500):
    from pagerstream.audit import DenialDigest

    t = [1000.0]
    written: list[dict] = []

    async def submit(e: dict) -> bool:
        written.append(e)
        return True

    return DenialDigest(submit, window_s=window_s, max_kinds=max_kinds, clock=lambda: t[0]), t, written


def test_a_first_refusal_is_recorded_at_once_and_repeats_once_per_window():
    import asyncio

    d, t, written = _digest()
    for _ in range(50):
        d.note("10.0.0.9", "/v2/enqueue", 401, "pd", "invalid routing key")
    asyncio.run(d.flush())
    assert [e["action"] for e in written] == ["auth.denied"]
    assert written[0]["actor"] == "client:10.0.0.9" and written[0]["object"] == "/v2/enqueue"
    t[0] += 59
    asyncio.run(d.flush())
    assert len(written) == 1  # the window is still open
    t[0] += 2
    asyncio.run(d.flush())
    assert [e["action"] for e in written] == ["auth.denied", "auth.denied.repeated"]
    details = written[1]["details"]
    assert details["repeats"] == 49 and details["status"] == 401
    d.note("10.0.0.9", "/v2/enqueue", 401, "pd", "invalid routing key")  # a new window: at once again
    asyncio.run(d.flush())
    assert written[-1]["action"] == "auth.denied"


def test_throttling_and_forbidden_are_kept_apart():
    import asyncio

    d, t, written = _digest()
    d.note("10.0.0.9", "/api/v1/feedback", 403, "api", "role viewer may not do this; it needs responder")
    d.note("10.0.0.9", "/v2/enqueue", 429, "pd", "")
    asyncio.run(d.flush())
    assert sorted(e["action"] for e in written) == ["auth.denied", "auth.throttled"]


def test_a_flood_of_distinct_clients_is_bounded():
    import asyncio

    d, t, written = _digest(max_kinds=10)
    for i in range(1000):
        d.note(f"10.1.{i // 256}.{i % 256}", "/v2/enqueue", 401, "pd", "no key")
    asyncio.run(d.flush())
    assert len(written) == 10
    t[0] += 61
    asyncio.run(d.flush())
    over = [e for e in written if e["action"] == "auth.denied.overflow"]
    assert len(over) == 1
    details = over[0]["details"]
    assert details["refusals"] == 990
