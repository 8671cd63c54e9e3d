"""Scenario 1: two workers in one group, SIGKILLed in turn and restarted, during a stream of alerts
produced straight to alerts.raw. Afterwards nothing is lost, no incident is duplicated and no
PagerDuty sequence contradicts itself. Sized by PAGERSTREAM_FAULTS_ALERTS / _KILLS / _RATE
(scripts/soak.py runs the long version)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

from tests.faults.conftest import (
    RawProducer,
    Timer,
    alert_stream,
    contradictions,
    duplicated_incidents,
    incidents_opened,
    routing_key,
    sandbox_anomalies,
    sandbox_sequences,
    sequence_problems,
    trace_keys,
    wait_progress,
)
from tests.integration.helpers import read_topic

N_EVENTS = int(os.environ.get("PAGERSTREAM_FAULTS_ALERTS", "10000"))
KILLS = int(os.environ.get("PAGERSTREAM_FAULTS_KILLS", "4"))
RATE = float(os.environ.get("PAGERSTREAM_FAULTS_RATE", "250"))
KILL_EVERY_S = 10.0


def worker_kills(workers: Any, sandbox: Any, *, n_events: int, kills: int, rate: float,
                 kill_every_s: float = KILL_EVERY_S, min_duration_s: float = 0.0, log=print) -> dict[str, Any]:
    """The scenario, sized by the caller (the test, or scripts/soak.py). Returns its figures.

    Kills go on until `kills` were done, the stream is produced and `min_duration_s` passed."""
    timer = Timer()
    rk = routing_key("KILL")
    env = workers.env({"PAGERDUTY_EVENTS_URL": sandbox.url,
                       "PAGERSTREAM_PD_RATE": "5000", "PAGERSTREAM_PD_BURST": "1000"})
    # one group (same app id and topics), each process with its own local state directory
    envs = [env, dict(env, PAGERSTREAM_DATADIR=env["PAGERSTREAM_DATADIR"] + "-b")]
    tag = uuid.uuid4().hex[:4]
    ws = [workers.start(envs[0], name=f"kill-{tag}-a0"), workers.start(envs[1], name=f"kill-{tag}-b0")]
    bs, prefix = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), env["PAGERSTREAM_TOPIC_PREFIX"]
    timer.mark("2 workers ready")

    stream = alert_stream(f"kill-{uuid.uuid4().hex[:6]}", n_events)
    prod = RawProducer(bs, prefix + "alerts.raw", rk, stream.events, rate)
    prod.start()
    done = 0
    restarting: list[threading.Thread | None] = [None, None]
    t0 = time.monotonic()
    deadline = t0 + max(600.0, 3 * min_duration_s)
    while (done < kills or not prod.done.is_set() or time.monotonic() - t0 < min_duration_s) \
            and time.monotonic() < deadline:
        time.sleep(kill_every_s)
        victim = done % 2
        if restarting[victim] is not None:  # only kill a worker that finished starting
            restarting[victim].join(timeout=180)
        ws[victim].proc.kill()  # SIGKILL: no shutdown, no commit, no flush
        done += 1
        timer.mark(f"kill {done} (w{victim}, {prod.sent} produced)")
        if min_duration_s:
            log(f"  kill {done} at {time.monotonic() - t0:.0f}s, {prod.sent}/{len(stream.events)} produced")
        time.sleep(1)

        def restart(v: int = victim, n: int = done) -> None:  # in the background: the other kill comes meanwhile
            ws[v] = workers.start(envs[v], name=f"kill-{tag}-{'ab'[v]}{n}")

        restarting[victim] = threading.Thread(target=restart, daemon=True)
        restarting[victim].start()
    for t in restarting:
        if t is not None:
            t.join(timeout=180)
    assert all(w.proc.alive() for w in ws), "a restarted worker did not come up"
    prod.join(timeout=120)
    assert prod.error is None, repr(prod.error)
    assert prod.acked == len(stream.events), (prod.acked, len(stream.events))
    assert done >= kills
    timer.mark(f"stream of {len(stream.events)} produced")

    def progress() -> tuple[int, int]:
        bad = sequence_problems(stream.expected, sandbox_sequences(sandbox, rk))
        return len(stream.expected) - len(bad), len(stream.expected)

    try:
        wait_progress(progress, stall_s=90, timeout=420 + n_events / 50, what="every dedup_key's calls at PagerDuty")
    except AssertionError as e:
        bad = sequence_problems(stream.expected, sandbox_sequences(sandbox, rk))
        raise AssertionError(f"{e}; {len(bad)} keys incomplete or wrong, e.g. {dict(list(bad.items())[:10])}; "
                             f"where they are: {trace_keys(bs, prefix, bad)}; topics {prefix}*; {timer}") from None
    timer.mark("all delivered")
    time.sleep(5)  # anything still in flight (a repeated call) shows up now
    got = sandbox_sequences(sandbox, rk)
    bad = sequence_problems(stream.expected, got)
    assert bad == {}, dict(list(bad.items())[:20])
    repeats = sum(len(s) - len(stream.expected[k]) for k, s in got.items())
    assert contradictions(sandbox_anomalies(sandbox, rk), got) == []

    opened, repeated_events = incidents_opened(bs, prefix)
    dup = duplicated_incidents(stream.episodes, opened)
    assert dup == {}, dict(list(dup.items())[:20])
    for dlq in ("alerts.dead-letter", "pagerduty.dead-letter"):
        assert read_topic(bs, prefix + dlq, idle=1.0) == [], dlq
    timer.mark("checked")
    return {"kills": done, "records": len(stream.events), "keys": len(stream.expected),
            "incidents": sum(stream.episodes.values()), "repeated_pd_calls": repeats,
            "repeated_incident_events": repeated_events, "timeline": str(timer)}


def test_repeated_sigkill_during_a_stream_loses_nothing_and_duplicates_nothing(workers, own_sandbox):
    f = worker_kills(workers, own_sandbox, n_events=N_EVENTS, kills=KILLS, rate=RATE)
    print(f"\n[faults] worker kills: {f}")
