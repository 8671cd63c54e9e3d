"""End to end: the `pagerstream pd-sandbox` process serves the REST API stand-in, and the
`pagerstream pagerduty ...` commands (real subprocesses) work against it. Needs no Kafka or Redis."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import pytest

from pagerstream.localrun import REPO, start_sandbox

pytestmark = pytest.mark.integration

KEY = "u+pagerstreamINTEGkey_0123456789-xyz"


def cli(sb_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGERDUTY_")}
    env.update({"PAGERDUTY_API_KEY": KEY, "PAGERDUTY_API_URL": sb_url, "PAGERSTREAM_ALLOW_PRIVATE_PD_URL": "true"})
    # `python -m pagerstream.cli` would run main() before cli.py attaches the pagerduty group (its
    # __main__ block comes first); the installed `pagerstream` script calls main() like this:
    cmd = [sys.executable, "-c", "from pagerstream.cli import main; main()", "pagerduty", *args]
    return subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=60, check=False)


def test_cli_against_the_sandbox_process(tmp_path):
    sb = start_sandbox(tmp_path)
    try:
        r = httpx.post(f"{sb.url}/sandbox/rest/seed", timeout=10, json={
            "users": [{"id": "PUSR001", "name": "Grace Primary", "email": "grace@example.com"}],
            "escalation_policies": [{"id": "PEP0001", "name": "Checkout EP"}],
            "oncalls": [{"user_id": "PUSR001", "escalation_policy_id": "PEP0001", "escalation_level": 1,
                         "start": None, "end": None}]})
        assert r.status_code == 200, r.text

        created = cli(sb.url, "webhooks", "create", "--url", "https://hooks.example.com/pagerstream",
                      "--type", "account", "--events", "incident.triggered,incident.acknowledged")
        assert created.returncode == 0, created.stderr
        sub_id = re.search(r"subscription (\S+) ", created.stdout).group(1)
        secret = created.stdout.strip().splitlines()[-1]
        assert len(secret) == 64

        listed = cli(sb.url, "webhooks", "list")
        oncall = cli(sb.url, "oncalls", "--escalation-policy", "PEP0001")
        deleted = cli(sb.url, "webhooks", "delete", sub_id)
        after = cli(sb.url, "webhooks", "list", "--json")

        log = httpx.get(f"{sb.url}/sandbox/rest/requests", timeout=10).json()["requests"]
    finally:
        sb.proc.stop()

    assert sub_id in listed.stdout and secret not in listed.stdout
    assert "Grace Primary" in oncall.stdout and "Checkout EP" in oncall.stdout
    assert deleted.returncode == 0 and sub_id not in after.stdout
    assert [(e["operation_id"], e["status"]) for e in log if e["status"] >= 300] == []
    assert {e["operation_id"] for e in log} >= {"createWebhookSubscription", "listWebhookSubscriptions",
                                                 "listOnCalls", "deleteWebhookSubscription"}
    process_log = sb.proc.log_path.read_text(errors="replace")
    outputs = listed.stdout + listed.stderr + oncall.stdout + oncall.stderr + deleted.stdout + created.stderr
    assert "REST POST /webhook_subscriptions -> 200" in process_log  # the sandbox did log the requests
    for text in (process_log, outputs):
        assert KEY not in text and secret not in text
