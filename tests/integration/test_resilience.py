"""Nothing is lost: SIGKILL mid-stream, restart with changelog recovery, a 429 storm."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import eventually, read_topic

pytestmark = pytest.mark.integration

RK_CRASH = "CRASHTESTROUTINGKEY0000000000001"
RK_STORM = "STORMTESTROUTINGKEY0000000000001"
RK_RESTART = "RESTARTTESTROUTINGKEY00000000001"


def _trigger(rk: str, key: str) -> dict:
    return {"routing_key": rk, "event_action": "trigger", "dedup_key": key,
            "payload": {"summary": f"alert {key}", "source": "host-1", "severity": "error"}}


def _resolve(rk: str, key: str) -> dict:
    return {"routing_key": rk, "event_action": "resolve", "dedup_key": key}


def _pd_calls(sandbox, rk: str) -> list[dict]:
    return [r for r in sandbox.state("requests", routing_key=rk)]


def test_sigkill_mid_stream_loses_nothing_and_stays_consistent(workers, sandbox):
    env = workers.env({"PAGERSTREAM_PD_RATE": "1000", "PAGERSTREAM_PD_BURST": "200"})
    w1 = workers.start(env, name="crash-w1")
    run = uuid.uuid4().hex[:6]
    keys = [f"crash-{run}-{i}" for i in range(120)]
    accepted: list[tuple[str, str]] = []  # (action, key) acknowledged with 202 by some ingress
    target = {"url": w1.url}
    stop = threading.Event()

    def sender() -> None:
        with httpx.Client(timeout=5) as c:
            i = 0
            for key in keys:
                for body, action in ((_trigger(RK_CRASH, key), "trigger"), (_resolve(RK_CRASH, key), "resolve")):
                    while not stop.is_set():
                        try:
                            r = c.post(target["url"] + "/v2/enqueue", json=body)
                            if r.status_code == 202:
                                accepted.append((action, key))
                                break
                        except httpx.HTTPError:
                            pass
                        time.sleep(0.2)  # worker down: like any sender, retry until accepted
                i += 1
                time.sleep(0.02)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    eventually(lambda: len(accepted) >= 80, timeout=60, what="some traffic before the kill")
    w1.proc.kill()  # SIGKILL: no shutdown, no commit, no flush
    time.sleep(1)
    w2 = workers.start(env, name="crash-w2")
    target["url"] = w2.url
    t.join(timeout=180)
    stop.set()
    assert len(accepted) == 2 * len(keys)

    def all_arrived():
        calls = _pd_calls(sandbox, RK_CRASH)
        got = {}
        for c in calls:
            if c["status"] == 202 and c["body"]["dedup_key"] in got or c["body"].get("dedup_key", "").startswith(f"crash-{run}"):
                got.setdefault(c["body"]["dedup_key"], []).append(c["body"]["event_action"])
        return got if all("resolve" in got.get(k, []) for k in keys) else None

    got = eventually(all_arrived, timeout=180, interval=2, what="every trigger and resolve at PagerDuty")
    for k in keys:
        seq = got[k]
        # At-least-once may repeat a call, but never out of order: no resolve before the first trigger,
        # nothing after the resolve but repeats of it.
        assert seq[0] == "trigger", (k, seq)
        first_resolve = seq.index("resolve")
        assert set(seq[first_resolve:]) == {"resolve"}, (k, seq)
    # A repeated resolve is the one repeat at-least-once may cause (the last call of a key, sent again);
    # PagerDuty ignores it. Anything else the sandbox flags would be a contradictory sequence.
    anomalies = [a for a in sandbox.state("stats")["anomalies"]
                 if str(a).find(f"crash-{run}") >= 0 and a["kind"] != "resolve_after_resolve"]
    assert anomalies == []
    # Replays did not open a second incident for any key.
    bs = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    inc = [r["value"] for r in read_topic(bs, env["PAGERSTREAM_TOPIC_PREFIX"] + "incidents")]
    per_key: dict[str, set[str]] = {}
    for v in inc:
        if v["change"] == "opened":
            per_key.setdefault(v["dedup_key"], set()).add(v["incident_id"])
    assert all(len(per_key.get(k, ())) == 1 for k in keys), {k: v for k, v in per_key.items() if len(v) != 1}


def test_state_survives_restart_and_local_store_loss(workers, sandbox):
    """Trigger on one worker; stop it; wipe its RocksDB; a new worker rebuilds state from the changelog
    and the resolve closes the same incident."""
    env = workers.env()
    w1 = workers.start(env, name="restart-w1")
    key = f"restart-{uuid.uuid4().hex[:8]}"
    assert httpx.post(w1.url + "/v2/enqueue", json=_trigger(RK_RESTART, key)).status_code == 202
    eventually(lambda: [c for c in _pd_calls(sandbox, RK_RESTART) if c["body"]["dedup_key"] == key],
               what="trigger delivered")
    w1.proc.stop()
    shutil.rmtree(env["PAGERSTREAM_DATADIR"])  # local state gone: only the changelog remains
    w2 = workers.start(env, name="restart-w2")
    assert httpx.post(w2.url + "/v2/enqueue", json=_resolve(RK_RESTART, key)).status_code == 202
    calls = eventually(lambda: (x := [c["body"]["event_action"] for c in _pd_calls(sandbox, RK_RESTART)
                                      if c["body"]["dedup_key"] == key]) and "resolve" in x and x,
                       what="resolve delivered")
    assert calls == ["trigger", "resolve"]  # not dropped as "no open alert", not re-triggered
    bs = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    inc = [r["value"] for r in read_topic(bs, env["PAGERSTREAM_TOPIC_PREFIX"] + "incidents")
           if r["value"]["dedup_key"] == key]
    assert [i["change"] for i in inc] == ["opened", "resolved"]
    assert inc[0]["incident_id"] == inc[1]["incident_id"]


def test_429_storm_loses_nothing_and_never_exceeds_the_rate(workers, sandbox):
    rate, burst = 2.0, 2
    env = workers.env({"PAGERSTREAM_PD_RATE": str(rate), "PAGERSTREAM_PD_BURST": str(burst),
                       "PAGERSTREAM_PD_INLINE_RETRY_SECONDS": "3"})
    w = workers.start(env, name="storm")
    run = uuid.uuid4().hex[:6]
    keys = [f"storm-{run}-{i}" for i in range(12)]
    sandbox.faults({"mode": "429", "count": 15})
    try:
        for k in keys:
            assert httpx.post(w.url + "/v2/enqueue", json=_trigger(RK_STORM, k)).status_code == 202

        def delivered():
            ok = {c["body"]["dedup_key"] for c in _pd_calls(sandbox, RK_STORM) if c["status"] == 202
                  and c["body"]["dedup_key"].startswith(f"storm-{run}")}
            return ok if ok >= set(keys) else None

        eventually(delivered, timeout=150, interval=1, what="every event after the 429 storm")
    finally:
        sandbox.faults({"mode": "clear"})
    calls = [c for c in _pd_calls(sandbox, RK_STORM) if c["body"]["dedup_key"].startswith(f"storm-{run}")]
    assert sum(1 for c in calls if c["status"] == 429) >= 10  # the storm really hit us
    times = sorted(c["time"] for c in calls)  # every attempt, refused or not
    worst = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    assert worst <= rate + burst, f"{worst} calls within one second; limit {rate}/s with burst {burst}"
    m = w.metrics()
    assert 'pagerstream_pagerduty_requests_total{outcome="retry",status="429"}' in m


AUTO_CATALOG = """
version: 1
services:
  - name: flaky-batch
    team: data
    matchers: [{source: "^batch-[0-9]+$"}]
    auto_resolve_seconds: 2
"""


def test_auto_resolve_after_inactivity(workers, sandbox, tmp_path):
    cat = tmp_path / "auto.yaml"
    cat.write_text(AUTO_CATALOG)
    env = workers.env({"PAGERSTREAM_TICK_SECONDS": "0.5"})
    w = workers.start(env, catalog=str(cat), name="autoresolve")
    key = f"auto-{uuid.uuid4().hex[:8]}"
    body = _trigger(RK_RESTART, key)
    body["payload"]["source"] = "batch-7"
    assert httpx.post(w.url + "/v2/enqueue", json=body).status_code == 202
    acts = eventually(lambda: (x := [c["body"]["event_action"] for c in _pd_calls(sandbox, RK_RESTART)
                                     if c["body"]["dedup_key"] == key]) and "resolve" in x and x,
                      timeout=30, what="auto-resolve at PagerDuty")
    assert acts == ["trigger", "resolve"]
    bs = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    inc = [r["value"] for r in read_topic(bs, env["PAGERSTREAM_TOPIC_PREFIX"] + "incidents")
           if r["value"]["pd_dedup_key"] == key]
    assert [i["change"] for i in inc] == ["opened", "auto_resolved"]
    assert inc[1]["reason"] == "auto-resolved: no activity for 2s"
    assert inc[1]["resolved_at"] - inc[0]["opened_at"] >= 2000


def test_pagerduty_outage_opens_the_breaker_and_loses_nothing(workers, sandbox):
    rk = "OUTAGETESTROUTINGKEY000000000001"
    env = workers.env({"PAGERSTREAM_PD_RATE": "50", "PAGERSTREAM_PD_BURST": "50",
                       "PAGERSTREAM_PD_INLINE_RETRY_SECONDS": "1"})
    w = workers.start(env, name="outage")
    run = uuid.uuid4().hex[:6]
    keys = [f"outage-{run}-{i}" for i in range(8)]
    sandbox.faults({"mode": "503", "count": 40})
    try:
        for k in keys:
            assert httpx.post(w.url + "/v2/enqueue", json=_trigger(rk, k)).status_code == 202
        for k in keys[:4]:
            assert httpx.post(w.url + "/v2/enqueue", json=_resolve(rk, k)).status_code == 202
        eventually(lambda: 'pagerstream_pagerduty_breaker_open{routing_key_hint="0001"} 2.0' in w.metrics(),
                   timeout=60, what="breaker open during the outage")
    finally:
        sandbox.faults({"mode": "clear"})

    def delivered():
        got: dict[str, list[str]] = {}
        for c in _pd_calls(sandbox, rk):
            if c["status"] == 202 and c["body"]["dedup_key"].startswith(f"outage-{run}"):
                got.setdefault(c["body"]["dedup_key"], []).append(c["body"]["event_action"])
        done = all(got.get(k) for k in keys) and all("resolve" in got[k] for k in keys[:4])
        return got if done else None

    got = eventually(delivered, timeout=120, interval=1, what="everything delivered after the outage")
    for k in keys[:4]:
        assert got[k][0] == "trigger" and got[k][-1] == "resolve", (k, got[k])
    assert 'pagerstream_pagerduty_parked_total' in w.metrics()
