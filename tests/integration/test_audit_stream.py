"""The audit trail of a running worker (pagerstream/audit.py): decisions of the incident stage, an API
action and a CLI action land on the `audit` topic as one hash chain; the chain continues across a
restart without duplicating replayed decisions; `pagerstream audit verify` passes on it and finds a
forged copy and a missing record produced into the topic afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import httpx
import pytest

from pagerstream.audit import GENESIS, chain_hash
from pagerstream.schemas import AvroCodec
from tests.conftest import ROUTING_KEY, api_headers
from tests.integration.helpers import eventually, produce_bytes, read_topic

pytestmark = pytest.mark.integration


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pagerstream.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def _event(action: str, dedup: str) -> dict:
    body = {"routing_key": ROUTING_KEY, "event_action": action, "dedup_key": dedup}
    if action == "trigger":
        body["payload"] = {"summary": f"audit test {dedup}", "source": "db-1", "severity": "critical"}
    return body


def _records(env: dict[str, str]) -> list[dict]:
    bs = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    out = []
    for r in read_topic(bs, env["PAGERSTREAM_TOPIC_PREFIX"] + "audit", idle=0.7):
        v = dict(r["value"])
        v.pop("_schema", None)
        out.append({**v, "_offset": r["offset"]})
    return out


def _when(env: dict[str, str], ready) -> list[dict] | None:
    """The audit records once `ready(records)` holds (for eventually())."""
    recs = _records(env)
    return recs if ready(recs) else None


def _with(recs: list[dict], action: str, obj: str | None = None) -> list[dict]:
    return [r for r in recs if r["action"] == action and (obj is None or r["object"] == obj)]


def test_audit_chain_from_a_real_stream_verifies_and_tampering_is_found(workers, sandbox):
    env = workers.env({"PAGERSTREAM_TICK_SECONDS": "0.5"})
    w = workers.start(env, name="audit-1")
    run = uuid.uuid4().hex[:6]
    first, second = f"audit-{run}-1", f"audit-{run}-2"

    for dedup in (first, second):
        assert httpx.post(w.url + "/v2/enqueue", json=_event("trigger", dedup)).status_code == 202
    eventually(lambda: len([r for r in _records(env) if r["action"] == "incident.opened"]) == 2, what="2 opened")
    assert httpx.post(w.url + "/v2/enqueue", json=_event("resolve", first)).status_code == 202
    opened = {json.loads(r["details_json"])["alert_id"]: r for r in _records(env) if r["action"] == "incident.opened"}
    inc = eventually(lambda: _with(_records(env), "incident.resolved"), what="resolved decision")[0]["object"]
    fb = httpx.post(w.url + "/api/v1/feedback", headers=api_headers("responder", sub="alice"),
                    json={"incident_id": inc, "category": "infrastructure", "by": "alice"})
    assert fb.status_code == 202, fb.text
    # refused requests are audited too (summarised per client, route and status: audit.DenialDigest)
    bad_key = "WRONGKEY" + uuid.uuid4().hex
    assert httpx.post(w.url + "/ingest/alertmanager", json={"alerts": []},
                      headers={"Authorization": f"Bearer {bad_key}"}).status_code == 401
    viewer = httpx.post(w.url + "/api/v1/feedback", headers=api_headers("viewer", sub="victor"),
                        json={"incident_id": inc, "category": "infrastructure", "by": "victor"})
    assert viewer.status_code == 403, viewer.text
    tok = _cli(env, "auth", "token", "--role", "viewer", "--sub", "auditor", "--ttl", "10m")
    assert tok.returncode == 0 and "not recorded" not in tok.stderr, tok.stderr

    recs = eventually(lambda: _when(env, lambda x: _with(x, "auth.token_issued", "auditor")
                                    and _with(x, "feedback.submitted", inc) and len(_with(x, "auth.denied")) == 2),
                      what="the two actions and the two refusals")
    denied = {json.loads(r["details_json"])["status"]: r for r in _with(recs, "auth.denied")}
    assert set(denied) == {401, 403}
    assert denied[401]["object"] == "/ingest/alertmanager" and denied[401]["actor"].startswith("client:")
    assert "role viewer may not do this" in json.loads(denied[403]["details_json"])["reason"]
    assert bad_key not in json.dumps(recs)
    assert len(opened) == 2
    for r in opened.values():
        d = json.loads(r["details_json"])
        assert r["actor"] == "system:incident-stage" and d["pagerduty_action"] == "trigger"
        assert ROUTING_KEY not in r["details_json"] and d["routing_key_hint"] == ROUTING_KEY[-4:]
    feedback = _with(recs, "feedback.submitted", inc)[0]
    assert feedback["actor"] == "user:alice(responder)" and json.loads(feedback["details_json"])["category"] == "infrastructure"
    issued = _with(recs, "auth.token_issued", "auditor")[0]
    assert issued["actor"].startswith("cli:") and tok.stdout.strip() not in json.dumps(recs)
    assert [r["seq"] for r in recs] == list(range(len(recs))) and recs[0]["prev_hash"] == GENESIS

    ok = _cli(env, "audit", "verify", "--from-beginning")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"audit chain OK: {len(recs)} records" in ok.stdout
    head = _cli(env, "audit", "head")
    assert head.returncode == 0 and head.stdout.strip() == f"{recs[-1]['seq']}:{recs[-1]['hash']}"

    # A restart: the new worker reads the head back from the topic and goes on from it; the decisions
    # it may replay (uncommitted offsets) are not written twice.
    w.proc.stop()
    w2 = workers.start(env, name="audit-2")
    assert httpx.post(w2.url + "/v2/enqueue", json=_event("resolve", second)).status_code == 202
    after = eventually(lambda: _when(env, lambda x: len(_with(x, "incident.resolved")) == 2),
                       what="the second resolve after the restart")
    assert [r["seq"] for r in after] == list(range(len(after)))
    ids = [r["entry_id"] for r in after]
    assert len(ids) == len(set(ids)), "a replayed decision was written twice"
    ok = _cli(env, "audit", "verify", "--from-beginning", "--anchor", head.stdout.strip())
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # Tampering, the way someone with write access to the topic could: records cannot be changed in
    # place, so a changed copy is appended (here: the feedback now claims to come from an admin), and a
    # record that skips a seq (as if one had been removed).
    w2.proc.stop()  # nothing appends behind the forged records: the expected problems are exactly these
    bs, topic = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), env["PAGERSTREAM_TOPIC_PREFIX"] + "audit"
    codec = AvroCodec("audit_record")
    fields = ("seq", "prev_hash", "hash", "at", "entry_id", "actor", "action", "object", "details_json")
    orig = {k: feedback[k] for k in fields}
    forged = dict(orig, actor="user:mallory(admin)")
    forged["hash"] = chain_hash(forged["prev_hash"], forged)
    last = {k: after[-1][k] for k in fields}
    skipped = dict(last, seq=last["seq"] + 2, prev_hash=last["hash"], entry_id="forged-skip", action="incident.resolved")
    skipped["hash"] = chain_hash(skipped["prev_hash"], skipped)
    produce_bytes(bs, topic, [(b"audit", codec.encode(forged)), (b"audit", codec.encode(skipped))])
    tampered = eventually(lambda: _when(env, lambda x: len(x) >= len(after) + 2), what="forged records")
    off_forged = next(r["_offset"] for r in tampered if r["actor"] == "user:mallory(admin)")
    off_skipped = next(r["_offset"] for r in tampered if r["entry_id"] == "forged-skip")

    bad = _cli(env, "audit", "verify", "--from-beginning")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    out = bad.stdout
    assert f"PROBLEM offset {off_forged} seq {orig['seq']}: reordered or forged" in out
    assert "a changed copy of an earlier record" in out
    assert f"PROBLEM offset {off_skipped} seq {last['seq'] + 2}: missing records: seq {last['seq'] + 1}" in out
    assert "audit chain FAILED: 2 problem(s)" in out
    tail = _cli(env, "audit", "verify", "--last", "3")  # the quick check of the latest records sees it too
    assert tail.returncode == 1 and "missing records" in tail.stdout
