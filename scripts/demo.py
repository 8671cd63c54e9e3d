"""End-to-end local demo: sandbox (unless PAGERDUTY_ROUTING_KEY is set), worker, Alertmanager,
sample alerts through the HTTP ingress, and what reached PagerDuty and the incidents topic.

    scripts/dev demo           # keeps running until Ctrl-C
    scripts/dev demo --once    # exits after showing the results (used by CI smoke runs)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from pagerstream.localrun import (REPO, alertmanager_binary, start_alertmanager, start_sandbox, start_worker,
                                  worker_env)

DEMO_RK = "DEMOROUTINGKEY000000000000000001"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--once", action="store_true", help="exit after showing the results")
    args = ap.parse_args()
    logs = REPO / ".stack" / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    real_pd = bool(os.environ.get("PAGERDUTY_ROUTING_KEY")) and not os.environ.get("PAGERSTREAM_DEMO_SANDBOX")
    rk = os.environ.get("PAGERDUTY_ROUTING_KEY") or DEMO_RK
    try:
        sandbox = None
        if real_pd:
            print("[demo] PAGERDUTY_ROUTING_KEY is set: events go to", os.environ.get(
                "PAGERDUTY_EVENTS_URL", "https://events.pagerduty.com"))
            events_url = None
        else:
            sandbox = start_sandbox(logs)
            procs.append(sandbox.proc)
            events_url = sandbox.url
            print(f"[demo] PagerDuty sandbox on {sandbox.url} (inspect: {sandbox.url}/sandbox/requests)")
        run_id = uuid.uuid4().hex[:6]
        env = worker_env(app_id=f"pagerstream-demo-{run_id}", prefix=f"demo-{run_id}.",
                         datadir=REPO / ".stack" / f"demo-data-{run_id}", events_url=events_url)
        catalog = str(REPO / "examples" / "catalog.yaml")
        rules = REPO.parent / "shared" / "data" / "prometheus_alerts" / "rules_flat.jsonl"
        if rules.exists():  # a cold start for the classifier: every worker loads the published checkpoint
            print("[demo] training the alert classifier on", rules, "and publishing it to models.checkpoints")
            subprocess.run([sys.executable, "-m", "pagerstream.cli", "models", "train", "classify", "--data",
                            str(rules), "--publish"], env=env, check=True)
        print("[demo] starting a worker (topics, catalog, Faust agents, ingress)…")
        worker = start_worker(env, logs, catalog=catalog, port=6066)
        procs.append(worker.proc)
        print(f"[demo] worker ready: ingress {worker.url}  metrics {worker.url}/metrics")

        # 1. PagerDuty-shaped senders: trigger, duplicate, acknowledge, resolve
        c = httpx.Client(base_url=worker.url, timeout=10)
        ev = {"routing_key": rk, "event_action": "trigger", "dedup_key": f"demo-disk-{run_id}",
              "payload": {"summary": "Disk 95% full on db-1", "source": "db-1.prod", "severity": "critical",
                          "custom_details": {"free_gb": 3}}}
        for action in ("trigger", "trigger", "acknowledge", "resolve"):
            body = dict(ev, event_action=action)
            if action != "trigger":
                body.pop("payload")
            r = c.post("/v2/enqueue", json=body)
            print(f"[demo] POST /v2/enqueue {action:11} -> {r.status_code} {r.text}")
        bad = c.post("/v2/enqueue", json={"routing_key": "short", "event_action": "explode"})
        print(f"[demo] POST /v2/enqueue (invalid)   -> {bad.status_code} {bad.text}")

        # 2. A real Alertmanager, if installed, firing through both its webhook and PagerDuty receivers
        if alertmanager_binary():
            am, am_url = start_alertmanager(worker.url, rk, logs)
            procs.append(am)
            alert = {"labels": {"alertname": "HighLatency", "service": "checkout", "severity": "critical",
                                "instance": "api-1:9090"},
                     "annotations": {"summary": "p99 latency above 2s on checkout"}}
            httpx.post(f"{am_url}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()
            print(f"[demo] fired HighLatency into Alertmanager {am_url}")

        # 3. A producer straight to Kafka
        subprocess.run([sys.executable, "-m", "pagerstream.cli", "produce", "--count", "5"], env=env, check=True)

        print("[demo] waiting for PagerDuty events…")
        deadline = time.monotonic() + 60
        seen = 0
        while time.monotonic() < deadline:
            time.sleep(1)
            if sandbox:
                reqs = sandbox.state("requests")
                seen = len(reqs)
                if seen >= 9:
                    break
        if sandbox:
            print(f"[demo] the sandbox received {seen} Events API calls:")
            for r in sandbox.state("requests"):
                b = r.get("body") or {}
                print(f"   {r.get('status')}  {b.get('event_action', 'change'):11} dedup_key={str(b.get('dedup_key'))[:40]:40}"
                      f" {((b.get('payload') or {}).get('summary') or '')[:60]}")
        print("[demo] incidents topic (last 12):")
        out = subprocess.run([sys.executable, "-m", "pagerstream.cli", "tail", "incidents", "--timeout", "2"],
                             env=env, capture_output=True, text=True)
        for line in out.stdout.splitlines()[-12:]:
            v = json.loads(line)["value"]
            print(f"   {v['change']:14} {v['state']:12} {v['incident_id']:22} {v['reason'][:70]}")
            for sc in (v.get("scores") or []) if v["change"] == "opened" else []:
                if sc["model"].startswith("classify."):
                    label = sc["label"] or f"abstained (best {sc['best']})"
                    print(f"      {sc['model']:18} {label:28} p={sc['score']:.2f}  {sc['explanation'][:60]}")
        if args.once:
            return 0
        print("[demo] running; Ctrl-C stops the worker, sandbox and Alertmanager (Kafka/Redis: scripts/stack.sh stop)")
        while all(p.alive() for p in procs):
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
