"""GDPR export and erase against a real worker, Kafka and Redis (pagerstream/gdpr.py, docs/compliance.md).

A person's email goes into alerts of a service whose PII redaction is switched off (and of one where it
is on), and the person is the on-call responder (routing + schedules kept as code), so the worker puts
them into Redis too. Export finds them everywhere; erase (workers stopped) deletes the Redis keys and
rewrites/tombstones the table entries; export then finds nothing erasable, only records that age out.
The restarted worker recovers the rewritten state: the incident still resolves, with the erased summary.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROUTING_KEY
from tests.integration.helpers import eventually, read_topic

pytestmark = pytest.mark.integration

CATALOG = """
version: 1
services:
  - name: hr-portal
    team: people
    matchers: [{source: "^hr-.*"}]
    pii: {enabled: false}
  - name: shop
    team: web
    matchers: [{source: "^shop-.*"}]
"""


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pagerstream.cli", "gdpr", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def _export(env: dict[str, str], who: list[str], out: Path) -> dict:
    r = _cli(env, "export", *who, "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


def _group_empty(env: dict[str, str]) -> bool:
    from pagerstream.config import load_settings
    from pagerstream.gdpr import group_members

    return asyncio.run(group_members(load_settings(env)))[1] == 0


def test_export_finds_the_person_erase_removes_what_can_be_removed(workers, sandbox, tmp_path):
    run = uuid.uuid4().hex[:8]
    email, uid = f"erin.{run}@example.org", f"PGD{run.upper()}"
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    (tmp_path / "routing.yaml").write_text(
        "version: 1\nrouting:\n  rules: []\n  default: {routing_key: main, escalation_policy: PGDPREP, urgency: auto,"
        " responders: {levels: [1], assign: load}}\nresponders:\n  erin: {id: " + uid + "}\n")
    (tmp_path / "schedules.yaml").write_text(
        f"version: 1\nusers:\n  {uid}: {{name: Erin Example, email: {email}}}\nschedules: []\nescalation_policies:\n"
        f"  - id: PGDPREP\n    name: GDPR test\n    escalation_rules:\n"
        f"      - {{escalation_delay_in_minutes: 10, targets: [{{type: user_reference, id: {uid}}}]}}\n")
    env = workers.env({"PAGERSTREAM_ROUTING_CONFIG": str(tmp_path / "routing.yaml"),
                       "PAGERSTREAM_SCHEDULES": str(tmp_path / "schedules.yaml"),
                       "PAGERSTREAM_ROUTING_KEYS": f"main={ROUTING_KEY}", "PAGERSTREAM_ASSIGN_RESPONDERS": "true"})
    catalog = str(tmp_path / "catalog.yaml")
    w = workers.start(env, catalog=catalog, name=f"gdpr-{run}")
    bs, prefix = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), env["PAGERSTREAM_TOPIC_PREFIX"]
    who = ["--email", email.upper(), "--user-id", uid]  # an address matches in any case

    hr, shop = f"hr-{run}", f"shop-{run}"
    for dedup, source, summary in ((hr, "hr-1", f"Account locked for {email}"),
                                   (shop, "shop-1", f"Payment failed for {email}")):
        body = {"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": dedup,
                "payload": {"summary": summary, "source": source, "severity": "error",
                            "custom_details": {"user": {"mail": email}, "attempts": 3}}}
        r = httpx.post(w.url + "/v2/enqueue", json=body, timeout=15)
        assert r.status_code == 202, r.text

    def opened() -> dict:
        evs = {e["value"]["dedup_key"]: e["value"] for e in read_topic(bs, prefix + "incidents", idle=0.7)
               if e["value"].get("change") == "opened"}
        return evs if {hr, shop} <= set(evs) else {}
    incidents = eventually(opened, what="both incidents opened")
    assert email in incidents[hr]["summary"]  # PII redaction is off for hr-portal
    assert incidents[shop]["summary"] == "Payment failed for [REDACTED:email]"

    # Redaction happens before alerts.normalized; alerts.raw keeps the bytes as sent (replay source).
    normalized = {r["value"]["dedup_key"]: r["value"] for r in read_topic(bs, prefix + "alerts.normalized", idle=0.7)
                  if isinstance(r["value"], dict) and "dedup_key" in r["value"]}
    assert email not in json.dumps(normalized[shop]) and "summary" in normalized[shop]["redacted"]
    assert "custom_details.user.mail" in normalized[shop]["redacted"]
    assert email in normalized[hr]["summary"] and normalized[hr]["redacted"] == []
    raw = [r for r in read_topic(bs, prefix + "alerts.raw", idle=0.7) if email.encode() in r["raw"]]
    assert len(raw) == 2

    # The worker keeps the responder in Redis (route decision; on-call snapshot with the email).
    eventually(lambda: _export(env, who, tmp_path / "wait.json")["redis"], what="the person in Redis")

    r = _cli(env, "erase", *who, "--yes")
    assert r.returncode == 3 and "stop the workers first" in r.stderr  # a running worker would undo it

    w.proc.stop()
    eventually(lambda: _group_empty(env), what="the consumer group empty")

    before = _export(env, who, tmp_path / "before.json")
    s = before["summary"]
    assert s["erasable"] > 0 and s["redis_keys"] >= 2, s
    assert any(":oncall:" in k["key"] for k in before["redis"]) and any("route:" in k["key"] for k in before["redis"])
    tables = {t["table"]: t for t in before["tables"]}
    groups = tables["groups"]["current"]
    assert groups and all(c["action"] == "rewrite" for c in groups)
    assert any(m["value"].endswith(f"Account locked for {email}") for c in groups for m in c["mentions"])
    topics = {t["topic"].removeprefix(prefix): t for t in before["topics"]}
    assert topics["alerts.raw"]["kind"] == "log" and topics["alerts.raw"]["matching_records"] == 2
    assert topics["alerts.raw"]["expires_by"] and topics["alerts.raw"]["erasable"] == 0
    assert topics["alerts.normalized"]["matching_records"] == 1  # only the hr-portal alert
    assert topics["incidents"]["matching_records"] >= 1

    r = _cli(env, "erase", *who, "--yes")
    assert r.returncode == 0, r.stderr[-3000:]
    done = json.loads(r.stdout)
    assert done["summary"]["redis_keys_deleted"] == s["redis_keys"]
    assert done["summary"]["rewritten"] + done["summary"]["tombstoned"] == s["table_entries"] + s["compacted_records"]
    assert {t["topic"].removeprefix(prefix) for t in done["not_erased"]} >= {"alerts.raw", "alerts.normalized"}

    after = _export(env, who, tmp_path / "after.json")
    assert after["summary"]["erasable"] == 0, json.dumps(after["summary"])
    assert after["redis"] == [] and all(not t.get("current") for t in after["tables"])
    assert after["summary"]["retained_until_expiry"] == s["retained_until_expiry"]  # logs age out, untouched

    # The restarted worker recovers the rewritten table state: the incident still resolves, erased summary.
    w2 = workers.start(env, catalog=catalog, name=f"gdpr-{run}-2")
    assert httpx.post(w2.url + "/v2/enqueue", timeout=15, json={
        "routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": hr}).status_code == 202
    resolved = eventually(lambda: [e["value"] for e in read_topic(bs, prefix + "incidents", idle=0.7)
                                   if e["value"].get("dedup_key") == hr and e["value"].get("change") == "resolved"],
                          what="the hr incident resolved")
    assert resolved[0]["summary"] == "Account locked for [ERASED]"
    w2.proc.stop()
    eventually(lambda: _group_empty(env), what="the consumer group empty again")
    final = _export(env, who, tmp_path / "final.json")
    assert all(not t.get("current") for t in final["tables"]), json.dumps(final["tables"])[:2000]
    # The on-call snapshot comes back from the schedules file: configuration, changed at its source.
    assert all(":oncall:" in k["key"] for k in final["redis"])
