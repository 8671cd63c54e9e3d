"""Scenario 2: the Kafka broker (this test's own, never the shared one) is stopped and started again
while senders keep posting to the HTTP ingress. While Kafka cannot take a record the ingress answers
503 with Retry-After; the worker recovers by itself (same process, no restart); every alert that got
a 2xx reaches PagerDuty afterwards, in order."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import httpx

from tests.faults.conftest import (
    OPEN_INGRESS,
    Timer,
    collapse,
    contradictions,
    pd_body,
    routing_key,
    sandbox_anomalies,
    sandbox_sequences,
    sequence_problems,
    wait_for,
    wait_progress,
)

DOWN_S = float(os.environ.get("PAGERSTREAM_FAULTS_BROKER_DOWN_S", "20"))


class Sender(threading.Thread):
    """Posts trigger (and for every third key a resolve) for its keys in order; an event is retried
    until accepted, as PagerDuty's clients do, pausing for Retry-After (capped at 2 s)."""

    def __init__(self, url: str, rk: str, prefix: str, gap_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.url, self.rk, self.prefix, self.gap_s = url, rk, prefix, gap_s
        self.accepted: list[tuple[str, str, float]] = []  # (action, key, time) answered 202
        self.unavailable: list[dict] = []  # 503 answers: time and headers
        self.errors = 0
        self.failure: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.failure = e

    def _run(self) -> None:
        i = 0
        with httpx.Client(timeout=30) as c:
            while not self.stop.is_set():
                key = f"{self.prefix}-{i}"
                actions = ["trigger", "resolve"] if i % 3 == 0 else ["trigger"]
                for action in actions:
                    # finish the key even when asked to stop, so every key's expected sequence is whole
                    deadline = time.monotonic() + 180
                    while time.monotonic() < deadline:
                        try:
                            r = c.post(self.url + "/v2/enqueue", json=pd_body(self.rk, action, key, i))
                        except httpx.HTTPError:
                            self.errors += 1
                            time.sleep(0.5)
                            continue
                        if r.status_code == 202:
                            self.accepted.append((action, key, time.time()))
                            break
                        if r.status_code == 503:
                            self.unavailable.append({"t": time.time(), "retry_after": r.headers.get("Retry-After"),
                                                     "body": r.text[:200]})
                            ra = r.headers.get("Retry-After")
                            time.sleep(min(2.0, float(ra)) if ra and ra.isdigit() else 0.5)
                            continue
                        raise AssertionError(f"unexpected answer {r.status_code}: {r.text[:300]}")
                i += 1
                time.sleep(self.gap_s)


def broker_restarts(workers: Any, kafka: Any, sandbox: Any, *, down_s: float = DOWN_S, restarts: int = 1,
                    up_s: float = 0.0, log=print) -> dict[str, Any]:
    """The scenario, sized by the caller (the test, or scripts/soak.py). Returns its figures."""
    timer = Timer()
    rk = routing_key("BROKER")
    env = workers.env({**OPEN_INGRESS, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "PAGERDUTY_EVENTS_URL": sandbox.url,
                       "PAGERSTREAM_PD_RATE": "1000", "PAGERSTREAM_PD_BURST": "200"})
    w = workers.start(env, name=f"broker-w-{uuid.uuid4().hex[:4]}")
    timer.mark("worker ready")
    run = uuid.uuid4().hex[:6]
    senders = [Sender(w.url, rk, f"brk-{run}-s{n}") for n in range(3)]
    for s in senders:
        s.start()
    accepted = lambda: sum(len(s.accepted) for s in senders)
    failed = lambda: [repr(s.failure) for s in senders if s.failure]
    wait_for(lambda: accepted() >= 60 or failed(), timeout=90, what="traffic accepted before the broker stops")
    assert not failed(), failed()
    outages: list[tuple[float, float]] = []
    for n in range(restarts):
        kafka.stop()  # clean stop of the whole (single-node) cluster
        down_at = time.time()
        timer.mark(f"broker stopped ({accepted()} accepted)")
        wait_for(lambda t=down_at: any(u["t"] > t for s in senders for u in s.unavailable), timeout=90,
                 what="a 503 from the ingress while Kafka is down")
        time.sleep(max(0.0, down_s - (time.time() - down_at)))
        kafka.start()
        up_at = time.time()
        outages.append((down_at, up_at))
        timer.mark("broker started again")
        # the same worker process takes traffic again: new alerts are acknowledged after the restart
        wait_for(lambda t=up_at: sum(1 for s in senders for a in s.accepted if a[2] > t) >= 60 or failed(),
                 timeout=180, what="alerts accepted again after the broker restart")
        assert not failed(), failed()
        assert w.proc.alive(), "the worker died with the broker:\n" + w.proc.log_tail()
        timer.mark("ingress accepting again")
        if restarts > 1:
            log(f"  broker restart {n + 1}/{restarts}: {accepted()} accepted so far")
        time.sleep(up_s)
    for s in senders:
        s.stop.set()
    for s in senders:
        s.join(timeout=200)
    assert not failed(), failed()

    expected: dict[str, list[str]] = {}
    for s in senders:
        for action, key, _ in s.accepted:
            expected.setdefault(key, []).append(action)
    expected = {k: collapse(v) for k, v in expected.items()}

    def progress() -> tuple[int, int]:
        bad = sequence_problems(expected, sandbox_sequences(sandbox, rk))
        return len(expected) - len(bad), len(expected)

    try:
        wait_progress(progress, stall_s=90, timeout=300, interval=2, what="every acknowledged alert at PagerDuty")
    except AssertionError as e:
        bad = sequence_problems(expected, sandbox_sequences(sandbox, rk))
        raise AssertionError(f"{e}; e.g. {dict(list(bad.items())[:10])}\nworker log:\n{w.proc.log_tail(30)}") from None
    timer.mark("all delivered")
    got = sandbox_sequences(sandbox, rk)
    assert contradictions(sandbox_anomalies(sandbox, rk), got) == []
    assert w.proc.alive()

    during = [u for s in senders for u in s.unavailable if any(d <= u["t"] <= up + 60 for d, up in outages)]
    assert during, "no 503 while the broker was down"
    missing_ra = [u for u in during if not (u["retry_after"] or "").isdigit()]
    figures = {"accepted": accepted(), "keys": len(expected), "restarts": restarts,
               "answers_503": len(during), "answers_503_without_retry_after": len(missing_ra),
               "connection_errors": sum(s.errors for s in senders), "timeline": str(timer)}
    log(f"\n[faults] broker restart: {figures}")
    assert missing_ra == [], f"{len(missing_ra)} of {len(during)} 503 answers without Retry-After, e.g. {missing_ra[:2]}"
    return figures


def test_broker_restart_under_load(workers, own_kafka, own_sandbox):
    broker_restarts(workers, own_kafka, own_sandbox, down_s=DOWN_S)
