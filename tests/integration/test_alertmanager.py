"""A real Prometheus Alertmanager pages through pagerstream: its webhook and its own PagerDuty
receiver (pagerduty_configs.url pointing at the ingress) both reach the PagerDuty sandbox."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
import pytest

from pagerstream.localrun import alertmanager_binary, start_alertmanager
from tests.integration.helpers import eventually

pytestmark = pytest.mark.integration

RK_AM = "ALERTMANAGERROUTINGKEY0000000001"


@pytest.mark.skipif(alertmanager_binary() is None, reason="prometheus-alertmanager not installed")
def test_alertmanager_webhook_and_pagerduty_receiver(shared_worker, sandbox, logdir):
    am, am_url = start_alertmanager(shared_worker.url, RK_AM, logdir)
    try:
        name = f"DiskFull{uuid.uuid4().hex[:6]}"
        alert = {"labels": {"alertname": name, "instance": "db-3:9100", "severity": "warning"},
                 "annotations": {"summary": "Disk 97% full on db-3"}}
        httpx.post(f"{am_url}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()

        def calls():
            return [c for c in sandbox.state("requests", routing_key=RK_AM) if c["status"] == 202
                    and name in str(c["body"].get("payload", {}).get("summary", "") + str(c["body"]))]

        got = eventually(lambda: (x := calls()) and len({c["body"]["dedup_key"] for c in x}) >= 2 and x,
                         timeout=60, what="trigger via webhook and via pagerduty_configs")
        by_key = {c["body"]["dedup_key"]: c["body"] for c in got}
        # pagerduty_configs: dedup_key is sha256 of the group key (64 hex chars); webhook: the fingerprint.
        assert any(len(k) == 64 for k in by_key), by_key.keys()
        assert any(len(k) == 16 for k in by_key), by_key.keys()
        for body in by_key.values():
            assert body["event_action"] == "trigger"
        webhook = next(b for k, b in by_key.items() if len(k) == 16)
        assert webhook["payload"]["summary"] == "Disk 97% full on db-3"
        assert webhook["payload"]["severity"] == "warning"

        # Resolve: Alertmanager sends "resolved" through both receivers.
        alert["endsAt"] = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)).isoformat()
        httpx.post(f"{am_url}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()
        keys = set(by_key)

        def resolved():
            acts = {}
            for c in sandbox.state("requests", routing_key=RK_AM):
                k = c["body"].get("dedup_key")
                if k in keys and c["status"] == 202:
                    acts.setdefault(k, []).append(c["body"]["event_action"])
            return acts if all(a and a[-1] == "resolve" for a in acts.values()) and len(acts) == 2 else None

        acts = eventually(resolved, timeout=60, what="resolves from both receivers")
        for seq in acts.values():
            assert seq[0] == "trigger" and seq[-1] == "resolve"
    finally:
        am.stop()
