"""Scenario 4: PagerDuty answers 503 to everything for a while (CI: 60 s; scripts/soak.py: 30 min)
while alerts keep arriving. Afterwards the backlog drains: every dedup_key's calls arrive in order,
and no 1-second window ever holds more calls than the rate plus the burst (the 503s included)."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import httpx

from tests.faults.conftest import (
    OPEN_INGRESS,
    Timer,
    alert_stream,
    contradictions,
    max_per_window,
    pd_body,
    routing_key,
    sandbox_anomalies,
    sandbox_requests,
    sandbox_sequences,
    sequence_problems,
    wait_for,
)
from tests.integration.helpers import read_topic

OUTAGE_S = float(os.environ.get("PAGERSTREAM_FAULTS_PD_OUTAGE_S", "60"))
RATE, BURST = 5, 5


def pagerduty_outage(workers: Any, sandbox: Any, *, outage_s: float, n_events: int, rate: int = RATE,
                     burst: int = BURST, log=print) -> dict[str, Any]:
    """The scenario, sized by the caller (the test, or scripts/soak.py). Returns its figures."""
    timer = Timer()
    rk = routing_key("PDDOWN")
    env = workers.env({**OPEN_INGRESS, "PAGERDUTY_EVENTS_URL": sandbox.url,
                       "PAGERSTREAM_PD_RATE": str(rate), "PAGERSTREAM_PD_BURST": str(burst)})
    w = workers.start(env, name=f"pdoutage-{uuid.uuid4().hex[:4]}")
    stream = alert_stream(f"pdo-{uuid.uuid4().hex[:6]}", n_events, lag=max(3, min(50, n_events // 8)))
    sandbox.faults({"mode": "503", "count": 10**9})
    down_at = time.time()
    timer.mark("PagerDuty down")
    gap = 0.5 * outage_s / max(1, len(stream.events))  # alerts arrive during the first half of the outage
    with httpx.Client(timeout=30) as c:
        for i, (action, key) in enumerate(stream.events):
            r = c.post(w.url + "/v2/enqueue", json=pd_body(rk, action, key, i))
            assert r.status_code == 202, (r.status_code, r.text[:300])
            time.sleep(gap)
    timer.mark(f"{len(stream.events)} alerts accepted")
    while time.time() - down_at < outage_s:
        time.sleep(max(0.0, min(60.0, outage_s - (time.time() - down_at))))
        if outage_s > 300:
            log(f"  PagerDuty down for {time.time() - down_at:.0f}/{outage_s:.0f} s; worker alive: {w.proc.alive()}")
        assert w.proc.alive(), "the worker died during the PagerDuty outage:\n" + w.proc.log_tail()
    sandbox.faults({"mode": "clear"})
    up_at = time.time()
    timer.mark("PagerDuty back")
    refused = [r for r in sandbox_requests(sandbox, rk) if r["status"] == 503]
    assert refused, "the outage was not seen by the forwarder"

    def complete():
        got = sandbox_sequences(sandbox, rk)
        return got if not sequence_problems(stream.expected, got) else None

    calls_needed = sum(len(v) for v in stream.expected.values())
    try:
        wait_for(complete, timeout=180 + 3 * calls_needed / rate, interval=2, what="the backlog drained")
    except AssertionError:
        bad = sequence_problems(stream.expected, sandbox_sequences(sandbox, rk))
        raise AssertionError(f"{len(bad)} of {len(stream.expected)} keys not drained or out of order, "
                             f"e.g. {dict(list(bad.items())[:10])}\nworker log:\n{w.proc.log_tail(20)}") from None
    drained_at = time.time()
    timer.mark("backlog drained")
    time.sleep(3)
    got = sandbox_sequences(sandbox, rk)
    bad = sequence_problems(stream.expected, got)
    assert bad == {}, dict(list(bad.items())[:20])
    assert contradictions(sandbox_anomalies(sandbox, rk), got) == []
    calls = sandbox_requests(sandbox, rk)
    worst = max_per_window(c["time"] for c in calls)
    late_refusals = [r for r in calls if r["status"] == 503 and r["time"] > up_at + 1]
    assert late_refusals == []
    bs, prefix = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), env["PAGERSTREAM_TOPIC_PREFIX"]
    assert read_topic(bs, prefix + "pagerduty.dead-letter", idle=1.0) == []
    assert w.proc.alive()
    figures = {"events": len(stream.events), "keys": len(stream.expected), "calls": len(calls),
               "refused_503": len(refused), "max_calls_in_1s": worst, "limit": rate + burst,
               "drain_s": round(drained_at - up_at, 1), "outage_s": outage_s, "timeline": str(timer)}
    assert worst <= rate + burst, f"{worst} calls within one second; limit {rate}/s with burst {burst}"
    return figures


def test_pagerduty_outage_backlog_drains_in_order_at_the_allowed_rate(workers, own_sandbox):
    f = pagerduty_outage(workers, own_sandbox, outage_s=OUTAGE_S, n_events=80)
    print(f"\n[faults] pagerduty outage: {f}")
