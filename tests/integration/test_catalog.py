"""The services catalog: validated by the CLI, published to the compacted topic, followed by workers."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROUTING_KEY
from tests.integration.helpers import eventually, read_topic

pytestmark = pytest.mark.integration

CATALOG_V1 = """
version: 1
services:
  - name: ledger
    team: finance
    tier: 1
    runbook_url: https://runbooks.example.com/ledger
    matchers:
      - labels: {{service: ledger}}
      - source: "^ledger-[0-9]+$"
  - name: {doomed}
    team: nobody
    matchers:
      - source: "^doomed$"
"""


def test_cli_validate_names_file_path_and_reason(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nservices:\n  - name: x\n    tier: 9\n    matchers: []\n")
    r = subprocess.run([sys.executable, "-m", "pagerstream.cli", "catalog", "validate", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{bad}: services[0].tier" in r.stderr
    good = Path(__file__).resolve().parents[1] / "fixtures" / "catalog.example.yaml"
    r = subprocess.run([sys.executable, "-m", "pagerstream.cli", "catalog", "validate", str(good)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "3 services" in r.stdout


def test_catalog_enriches_alerts_and_updates_reach_running_workers(workers, tmp_path: Path):
    doomed = f"doomed{uuid.uuid4().hex[:4]}"
    cat = tmp_path / "catalog.yaml"
    cat.write_text(CATALOG_V1.format(doomed=doomed))
    env = workers.env()
    w = workers.start(env, catalog=str(cat))
    key = f"ledger-{uuid.uuid4().hex[:6]}"
    body = {"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": key,
            "payload": {"summary": "ledger lag", "source": "ledger-3", "severity": "error"}}
    assert httpx.post(w.url + "/v2/enqueue", json=body).status_code == 202
    bs = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    prefix = env["PAGERSTREAM_TOPIC_PREFIX"]
    inc = eventually(lambda: [r["value"] for r in read_topic(bs, prefix + "incidents") if r["value"]["dedup_key"] == key],
                     what="incident")
    assert inc[0]["service"] == "ledger" and inc[0]["team"] == "finance" and inc[0]["tier"] == "1"
    assert inc[0]["runbook_url"] == "https://runbooks.example.com/ledger"

    # Re-publish without the second service: a tombstone for it, and the worker follows the change.
    cat.write_text(CATALOG_V1.format(doomed=doomed).split(f"  - name: {doomed}")[0].replace("team: finance",
                                                                                             "team: treasury"))
    r = subprocess.run([sys.executable, "-m", "pagerstream.cli", "catalog", "publish", str(cat)], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "removed 1" in r.stdout, r.stdout + r.stderr
    records = read_topic(bs, prefix + "pagerstream.catalog")
    assert any(rec["key"] == doomed.encode() and rec["raw"] is None for rec in records)
    key2 = f"ledger-{uuid.uuid4().hex[:6]}"
    body["dedup_key"] = key2

    def treasury():
        httpx.post(w.url + "/v2/enqueue", json=dict(body, dedup_key=f"{key2}-{uuid.uuid4().hex[:4]}"))
        got = [r["value"] for r in read_topic(bs, prefix + "incidents", idle=0.7)
               if (r["value"]["dedup_key"] or "").startswith(key2)]
        return [g for g in got if g["team"] == "treasury"]

    assert eventually(treasury, timeout=30, interval=1, what="catalog update applied by the running worker")
