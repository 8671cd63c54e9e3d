#!/usr/bin/env python
"""Soak: the long versions of the fault-injection scenarios (docs/faults.md, tests/faults/).

    python scripts/soak.py                         # kills for 30 min + a 30-min PagerDuty outage + 5 broker restarts
    python scripts/soak.py --only kills --kill-minutes 10 --alerts 30000
    python scripts/soak.py --only pd-outage --pd-outage-minutes 30
    python scripts/soak.py --quick                 # every scenario, CI-sized (a few minutes)

Uses the shared stack (scripts/stack.sh start; Kafka 127.0.0.1:9092, Redis :6379) for the workers,
and starts its own PagerDuty sandbox per scenario, its own broker for the broker restarts and its own
Redis for the Redis outage: the shared Kafka and Redis are never stopped. Prints a summary with each
scenario's result, duration and figures; exits 1 if any scenario failed. Logs (workers, sandbox, own
broker) go to --logdir (default: a new temporary directory, printed at the start).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCENARIOS = ("kills", "broker", "redis", "pd-outage", "hung", "poison")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(s for s in SCENARIOS if s not in ("redis", "hung", "poison")),
                    help=f"comma-separated scenarios out of {','.join(SCENARIOS)} "
                         "(default: kills,broker,pd-outage; 'all' for every one)")
    ap.add_argument("--kill-minutes", type=float, default=30.0, help="how long workers keep being SIGKILLed")
    ap.add_argument("--kill-every", type=float, default=10.0, help="seconds between a restart and the next kill")
    ap.add_argument("--rate", type=float, default=50.0, help="alerts/s produced to alerts.raw during the kills")
    ap.add_argument("--alerts", type=int, default=0,
                    help="records in the kill stream (default: rate x kill duration)")
    ap.add_argument("--pd-outage-minutes", type=float, default=30.0, help="how long PagerDuty answers 503")
    ap.add_argument("--pd-outage-alerts", type=int, default=2000, help="alerts sent during the PagerDuty outage")
    ap.add_argument("--broker-restarts", type=int, default=5)
    ap.add_argument("--broker-down", type=float, default=30.0, help="seconds the broker stays down each time")
    ap.add_argument("--quick", action="store_true", help="CI sizes for every scenario")
    ap.add_argument("--logdir", default=None)
    args = ap.parse_args()

    only = SCENARIOS if args.only == "all" or args.quick else tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.quick:
        args.kill_minutes, args.alerts, args.rate = 0.0, 4000, 250.0
        args.pd_outage_minutes, args.pd_outage_alerts = 1.0, 80
        args.broker_restarts, args.broker_down = 1, 20.0

    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="pagerstream-soak-"))
    logdir.mkdir(parents=True, exist_ok=True)
    print(f"soak: scenarios {', '.join(only)}; logs in {logdir}", flush=True)

    from pagerstream.localrun import start_sandbox
    from tests.conftest import WorkerFactory
    from tests.stack import ensure_stack

    ensure_stack()
    results: list[tuple[str, bool, float, object]] = []

    def run(name: str, fn) -> None:
        print(f"\n== {name}", flush=True)
        t0 = time.monotonic()
        sandbox = start_sandbox(logdir)
        workers = WorkerFactory(logdir, sandbox)
        try:
            figures = fn(workers, sandbox)
            ok = True
        except BaseException as e:  # report it and go on with the next scenario
            if isinstance(e, KeyboardInterrupt):
                raise
            traceback.print_exc()
            figures, ok = f"{type(e).__name__}: {str(e)[:1500]}", False
        finally:
            workers.close()
            sandbox.proc.stop()
        dt = time.monotonic() - t0
        results.append((name, ok, dt, figures))
        print(f"== {name}: {'PASS' if ok else 'FAIL'} in {dt / 60:.1f} min: {figures}", flush=True)

    if "kills" in only:
        from tests.faults.test_worker_kills import worker_kills

        n = args.alerts or int(args.rate * args.kill_minutes * 60) or 4000
        kills = max(3, int(args.kill_minutes * 60 / (args.kill_every + 30)))
        run("kills", lambda w, sb: worker_kills(w, sb, n_events=n, kills=kills, rate=args.rate,
                                                kill_every_s=args.kill_every, min_duration_s=args.kill_minutes * 60))
    if "broker" in only:
        from tests.faults.conftest import OwnKafka
        from tests.faults.test_broker_restart import broker_restarts

        def broker(w, sb):
            k = OwnKafka(logdir / "own-kafka")
            k.start()
            try:
                return broker_restarts(w, k, sb, down_s=args.broker_down, restarts=args.broker_restarts, up_s=20.0)
            finally:
                k.stop()
        run("broker", broker)
    if "redis" in only:
        from tests.faults.conftest import OwnRedis
        from tests.faults.test_redis_down import redis_outage

        def redis(w, sb):
            r = OwnRedis(logdir / "own-redis")
            r.start()
            try:
                return redis_outage(w, r, sb)
            finally:
                r.stop()
        run("redis", redis)
    if "pd-outage" in only:
        from tests.faults.test_pagerduty_outage import pagerduty_outage

        run("pd-outage", lambda w, sb: pagerduty_outage(w, sb, outage_s=args.pd_outage_minutes * 60,
                                                        n_events=args.pd_outage_alerts))
    if "hung" in only:
        from tests.faults.test_hung_destination import hung_destination

        run("hung", lambda w, sb: hung_destination(w, Path(tempfile.mkdtemp(dir=logdir))))
    if "poison" in only:
        from tests.faults.test_poison import poison_records

        run("poison", lambda w, sb: poison_records(w, sb))

    print("\n== summary")
    for name, ok, dt, figures in results:
        shown = json.dumps(figures, default=str) if isinstance(figures, dict) else str(figures)
        print(f"{name:10s} {'PASS' if ok else 'FAIL'}  {dt / 60:6.1f} min  {shown[:600]}")
    return 0 if all(ok for _, ok, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
