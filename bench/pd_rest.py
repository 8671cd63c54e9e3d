"""Benchmark of the PagerDuty REST client: the Redis cache, and pacing through a 429 storm.

    python bench/pd_rest.py [--services 250] [--reads 2000] [--concurrency 4] [--storm-429 30]

The REST sandbox (streams/pd_rest_sandbox.py: every request validated against the official OpenAPI
spec) runs in this process on 127.0.0.1 (aiohttp AppRunner, random port), seeded with --services
services, --policies escalation policies, --users users and two on-call levels per policy. Client,
sandbox and Redis share the machine's cores; nothing here talks to PagerDuty.

1. Cache. One fixed sequence of --reads reads (seeded RNG): 70 % get_service with a Zipf-like
   popularity (weight 1/rank^--zipf-s), 20 % list_oncalls for one policy, 10 % list_escalation_policies.
   Run straight through PagerDutyREST (baseline) and through PagerDutyCache (fresh namespace, cold
   at the start), --concurrency workers each. The sandbox's rate limit is lifted for this phase (so
   the figures are client + sandbox + Redis cost, not PagerDuty's 960 requests/minute).
   Printed: reads/s, API requests the sandbox logged, the cache's hit rate (its own hit_rate()/counts()).
2. 429 storm. One fixed workload (list all services with classic pagination, 200 get_service,
   50 list_oncalls; --concurrency workers) run (a) with no faults and the sandbox's default limit
   (baseline) and (b) with the sandbox limiting the token to --storm-limit requests per --storm-window
   seconds plus --storm-429 injected 429s with ratelimit-* headers (reset --storm-reset s) and as many
   without headers (plain text, no Retry-After), interleaved in the sandbox's fault queue with
   --storm-spacing untouched requests after each (no-op "slow 0 ms" entries), so that no single call
   meets 5 faults in a row by construction. Printed: completed / failed calls, 429s by kind,
   retries (the client's retry log lines; = requests - pages), total time, time waited (an
   instrumented sleep given to the client's pacer, split into backoff after 429s and header
   pacing), and the most requests the sandbox admitted in one of its rate windows vs the limit.

Redis (REDIS_URL, default redis://127.0.0.1:6379/0) keys live under
pagerstream-bench:pdrest:<run id>:* and are deleted at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import logging
import os
import platform
import random
import shlex
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from pagerstream.streams.pd_rest_sandbox import add_rest_routes

from pagerstream.connections import redis_client
from pagerstream.pagerduty.cache import PagerDutyCache
from pagerstream.pagerduty.rest import PagerDutyREST, RatePacer

KEY = "u+pagerstreamBENCHkey_0123456789-abc"  # shaped like a real API key
REDIS_PREFIX = "pagerstream-bench:pdrest"


# ------------------------------------------------------------------------------------------------
# instrumentation
# ------------------------------------------------------------------------------------------------

class SleepMeter:
    """The sleep handed to the client's pacer: real asyncio.sleep, measured."""

    def __init__(self) -> None:
        self.calls = 0
        self.slept = 0.0

    async def __call__(self, seconds: float) -> None:
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        self.slept += time.perf_counter() - t0
        self.calls += 1


class SplitPacer(RatePacer):
    """RatePacer that books each requested pause as 429 backoff (the part still blocked by block_for)
    or header pacing (the rest). delay() is only called by acquire(), once per request."""

    def __init__(self, sleep: Callable[[float], Awaitable[Any]]) -> None:
        super().__init__(time.monotonic, sleep)
        self.backoff_s = 0.0
        self.pacing_s = 0.0

    def delay(self) -> float:
        blocked = max(0.0, self.blocked_until - self.clock())
        wait = super().delay()
        if wait > 0:
            b = min(wait, blocked)
            self.backoff_s += b
            self.pacing_s += wait - b
        return wait


class RetryCounter(logging.Handler):
    """Counts the client's 'retry n/m' warnings (and keeps them off the terminal)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.retries = 0
        self.other: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "; retry " in msg:
            self.retries += 1
        else:
            self.other.append(msg)


# ------------------------------------------------------------------------------------------------
# sandbox
# ------------------------------------------------------------------------------------------------

async def start_sandbox() -> tuple[web.AppRunner, Any, str]:
    app = web.Application()
    state = add_rest_routes(app, seed_examples=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, state, f"http://127.0.0.1:{port}"


def seed(state: Any, n_services: int, n_policies: int, n_users: int) -> dict[str, list[str]]:
    users = state.seed({"users": {"count": n_users, "name_prefix": "bench user"}})["created"]["users"]
    eps = [{"name": f"bench policy {i:03d}", "num_loops": 1, "escalation_rules": [
        {"escalation_delay_in_minutes": 10, "targets": [{"id": users[i % n_users], "type": "user_reference"}]},
        {"escalation_delay_in_minutes": 15, "targets": [{"id": users[(i + 1) % n_users], "type": "user_reference"}]},
    ]} for i in range(n_policies)]
    ep_ids = state.seed({"escalation_policies": eps})["created"]["escalation_policies"]
    svcs = [{"name": f"bench-svc-{i:05d}", "status": "active",
             "escalation_policy": {"id": ep_ids[i % n_policies], "type": "escalation_policy_reference"}}
            for i in range(n_services)]
    svc_ids = state.seed({"services": svcs})["created"]["services"]
    oncalls = [{"user_id": users[(i + lvl - 1) % n_users], "escalation_policy_id": ep, "escalation_level": lvl,
                "start": None, "end": None} for i, ep in enumerate(ep_ids) for lvl in (1, 2)]
    state.seed({"oncalls": oncalls})
    return {"users": users, "policies": ep_ids, "services": svc_ids}


def new_client(url: str, **kw: Any) -> PagerDutyREST:
    return PagerDutyREST(api_key=KEY, base_url=url, allow_private=True, rng=random.Random(7), **kw)


async def run_ops(ops: list[tuple[str, Any]], target: Any, concurrency: int) -> tuple[float, int, list[str]]:
    """Run `ops` in order with `concurrency` workers; returns (seconds, completed, error descriptions)."""
    it = iter(ops)
    done = 0
    errors: list[str] = []

    async def worker() -> None:
        nonlocal done
        for kind, arg in it:
            try:
                if kind == "service":
                    out = await target.get_service(arg)
                    assert out["id"] == arg, "wrong service"
                elif kind == "oncalls":
                    out = await target.list_oncalls(escalation_policy_ids=[arg])
                    assert out, "no on-calls"
                elif kind == "policies":
                    out = await target.list_escalation_policies()
                    assert len(out) == arg, f"{len(out)} policies"
                elif kind == "all_services":
                    out = await target.list_services()
                    assert len(out) == arg, f"{len(out)} services"
                else:
                    raise ValueError(kind)
                done += 1
            except Exception as e:  # noqa: BLE001 - a failed call is a result here, not a crash
                errors.append(f"{kind}: {type(e).__name__}: {e}"[:200])

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, done, errors


# ------------------------------------------------------------------------------------------------
# phase 1: cache
# ------------------------------------------------------------------------------------------------

def read_mix(ids: dict[str, list[str]], n: int, zipf_s: float, rng: random.Random) -> list[tuple[str, Any]]:
    svc = ids["services"][:]
    rng.shuffle(svc)  # popularity rank independent of creation order
    cum, acc = [], 0.0
    for rank in range(1, len(svc) + 1):
        acc += 1.0 / rank ** zipf_s
        cum.append(acc)
    ops: list[tuple[str, Any]] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.70:
            ops.append(("service", svc[min(bisect.bisect_left(cum, rng.random() * acc), len(svc) - 1)]))
        elif r < 0.90:
            ops.append(("oncalls", rng.choice(ids["policies"])))
        else:
            ops.append(("policies", len(ids["policies"])))
    return ops


async def phase_cache(state: Any, url: str, ids: dict[str, list[str]], args: argparse.Namespace,
                      rdb: aioredis.Redis, namespace: str) -> dict[str, Any]:
    ops = read_mix(ids, args.reads, args.zipf_s, random.Random(args.seed))
    mix = {k: sum(1 for o in ops if o[0] == k) for k in ("service", "oncalls", "policies")}
    distinct = {k: len({o[1] for o in ops if o[0] == k}) for k in ("service", "oncalls", "policies")}
    state.set_fault(mode="ratelimit", limit=1_000_000, window_s=60)
    res: dict[str, Any] = {"mix": mix, "distinct": distinct}

    # each client makes one unmeasured, uncached request first (connection, sandbox validators)
    client = new_client(url)
    try:
        await client.list_escalation_policies()
        start = len(state.requests)
        secs, done, errors = await run_ops(ops, client, args.concurrency)
        res["direct"] = {"secs": secs, "done": done, "errors": errors, "requests": len(state.requests) - start}
    finally:
        await client.aclose()

    client = new_client(url)
    cache = PagerDutyCache(client, rdb, namespace=namespace, prefix=REDIS_PREFIX)
    try:
        await rdb.ping()
        await client.list_escalation_policies()
        start = len(state.requests)
        secs, done, errors = await run_ops(ops, cache, args.concurrency)
        res["cached"] = {"secs": secs, "done": done, "errors": errors, "requests": len(state.requests) - start,
                         "hit_rate": cache.hit_rate(),
                         "per": {r: (cache.counts(r), cache.hit_rate(r))
                                 for r in ("services", "oncalls", "escalation_policies")},
                         "redis_errors": cache.registry.get_sample_value(
                             "pagerstream_pd_cache_redis_errors_total") or 0.0}
    finally:
        await client.aclose()
    state.set_fault(mode="clear")
    return res


# ------------------------------------------------------------------------------------------------
# phase 2: 429 storm
# ------------------------------------------------------------------------------------------------

def storm_workload(ids: dict[str, list[str]], rng: random.Random) -> list[tuple[str, Any]]:
    ops: list[tuple[str, Any]] = [("all_services", len(ids["services"]))]
    ops += [("service", rng.choice(ids["services"])) for _ in range(200)]
    ops += [("oncalls", rng.choice(ids["policies"])) for _ in range(50)]
    head, rest = ops[:1], ops[1:]
    rng.shuffle(rest)
    return head + rest


def window_stats(entries: list[dict], window_s: float) -> dict[str, Any]:
    """From the sandbox log: the most requests admitted in one sandbox window (limit - remaining),
    and the most admitted requests in any sliding window_s interval."""
    admitted = [e for e in entries if isinstance(e.get("ratelimit"), dict) and "remaining" in e["ratelimit"]
                and e.get("fault") != "rate"]
    in_window = max((e["ratelimit"]["limit"] - e["ratelimit"]["remaining"] for e in admitted), default=0)
    ts = sorted(e["t"] for e in admitted)
    sliding, j = 0, 0
    for i, t in enumerate(ts):
        while ts[j] < t - window_s + 1e-9:
            j += 1
        sliding = max(sliding, i - j + 1)
    return {"max_window": in_window, "max_sliding": sliding}


async def run_storm_case(state: Any, url: str, ops: list[tuple[str, Any]], concurrency: int,
                         window_s: float) -> dict[str, Any]:
    meter = SleepMeter()
    pacer = SplitPacer(meter)
    counter = RetryCounter()
    rlog = logging.getLogger("pagerstream.pagerduty.rest")
    rlog.addHandler(counter)
    rlog.propagate = False
    client = new_client(url, sleep=meter, pacer=pacer)
    start = len(state.requests)
    try:
        secs, done, errors = await run_ops(ops, client, concurrency)
    finally:
        await client.aclose()
        rlog.removeHandler(counter)
        rlog.propagate = True
    entries = state.requests[start:]
    by = {"429": 0, "429-no-headers": 0, "rate": 0}
    for e in entries:
        if e["status"] == 429:
            by[e["fault"] if e["fault"] in by else "rate"] += 1
    other_errors = sum(1 for e in entries if e["status"] >= 400 and e["status"] != 429)
    return {"secs": secs, "done": done, "errors": errors, "requests": len(entries), "r429": by,
            "other_http_errors": other_errors, "retries": counter.retries, "log_other": counter.other,
            "slept": meter.slept, "sleeps": meter.calls, "backoff_s": pacer.backoff_s, "pacing_s": pacer.pacing_s,
            **window_stats(entries, window_s), "ok_2xx": sum(1 for e in entries if e["status"] < 300)}


async def phase_storm(state: Any, url: str, ids: dict[str, list[str]], args: argparse.Namespace) -> dict[str, Any]:
    ops = storm_workload(ids, random.Random(args.seed + 1))
    pages = -(-len(ids["services"]) // 100) + len(ops) - 1
    res: dict[str, Any] = {"ops": len(ops), "pages": pages}

    state.set_fault(mode="clear")  # PagerDuty's documented default: 960 requests per 60 s per token
    res["baseline"] = await run_storm_case(state, url, ops, args.concurrency, 60.0)
    res["baseline"]["limit"], res["baseline"]["window"] = state.rate_limit, state.rate_window_s

    state.set_fault(mode="clear")
    state.set_fault(mode="ratelimit", limit=args.storm_limit, window_s=args.storm_window)
    queue: list[dict] = []
    for i in range(args.storm_429):
        for headers in (True, False):
            f: dict[str, Any] = {"mode": "429", "headers": headers, "count": 1}
            if headers:
                f["reset"] = args.storm_reset
            queue.append(f)
            if args.storm_spacing:
                queue.append({"mode": "slow", "delay_ms": 0, "count": args.storm_spacing})
    state.set_fault(queue)
    res["storm"] = await run_storm_case(state, url, ops, args.concurrency, args.storm_window)
    res["storm"]["limit"], res["storm"]["window"] = args.storm_limit, args.storm_window
    res["storm"]["unused_faults"] = len(state.faults()["queue"])
    state.set_fault(mode="clear")
    return res


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def report(args: argparse.Namespace, info: dict[str, str], cache: dict[str, Any], storm: dict[str, Any],
           command: str, total_s: float) -> str:
    out: list[str] = []
    w = out.append
    w(f"machine : {info['machine']}")
    w(f"load    : {info['load']} (1/5/15-min load average at start)")
    w(f"sandbox : in-process, {info['url']}; seeded {args.services} services, {args.policies} escalation "
      f"policies, {args.users} users, {2 * args.policies} on-calls; concurrency {args.concurrency}")
    w("")
    d, c = cache["direct"], cache["cached"]
    w(f"1. CACHE  {args.reads} reads, mix get_service {cache['mix']['service']} (zipf s={args.zipf_s}, "
      f"{cache['distinct']['service']} distinct ids) / list_oncalls {cache['mix']['oncalls']} "
      f"({cache['distinct']['oncalls']} policies) / list_escalation_policies {cache['mix']['policies']}; "
      "sandbox rate limit lifted")
    w(f"   {'':34} {'reads/s':>9} {'time s':>8} {'API requests':>13} {'failed':>7}")
    w(f"   {'direct PagerDutyREST (baseline)':34} {d['done'] / d['secs']:>9,.0f} {d['secs']:>8.2f} "
      f"{d['requests']:>13,} {len(d['errors']):>7}")
    w(f"   {'PagerDutyCache (Redis, cold start)':34} {c['done'] / c['secs']:>9,.0f} {c['secs']:>8.2f} "
      f"{c['requests']:>13,} {len(c['errors']):>7}")
    w(f"   speed-up x{(c['done'] / c['secs']) / (d['done'] / d['secs']):.1f}; API requests "
      f"-{100 * (1 - c['requests'] / max(1, d['requests'])):.1f} %; hit rate {pct(c['hit_rate'])} overall "
      f"(hit_rate()), Redis errors {c['redis_errors']:.0f}")
    for r, ((h, m), hr) in c["per"].items():
        w(f"     {r:22} hits {h:>5}  misses {m:>4}  hit rate {pct(hr)}")
    w(f"   at PagerDuty's 960 requests/min per token the direct path would be capped at 16 reads/s "
      f"({d['requests'] / 16:.0f} s for these reads); the cached run needs {c['requests']} requests "
      f"({c['requests'] / 16:.0f} s of that budget)")
    w("")
    b, s = storm["baseline"], storm["storm"]
    w(f"2. 429 STORM  workload: list all services (classic pagination) + 200 get_service + 50 list_oncalls "
      f"= {storm['ops']} calls, {storm['pages']} pages")
    w(f"   storm: sandbox limit {args.storm_limit} req / {args.storm_window:g} s + {args.storm_429} injected 429 "
      f"with ratelimit-* (reset {args.storm_reset} s) + {args.storm_429} without headers, each followed by "
      f"{args.storm_spacing} normal requests")
    rows = [
        ("calls completed / failed", lambda x: f"{x['done']} / {len(x['errors'])}"),
        ("HTTP requests (2xx)", lambda x: f"{x['requests']} ({x['ok_2xx']})"),
        ("429s: injected hdr / no-hdr / limit", lambda x: f"{x['r429']['429']} / {x['r429']['429-no-headers']} / "
                                                          f"{x['r429']['rate']}"),
        ("retries (client log)", lambda x: f"{x['retries']}"),
        ("total time", lambda x: f"{x['secs']:.2f} s"),
        ("waited (measured sleep)", lambda x: f"{x['slept']:.2f} s in {x['sleeps']} pauses"),
        ("  of which 429 backoff / pacing", lambda x: f"{x['backoff_s']:.2f} / {x['pacing_s']:.2f} s"),
        ("calls/s", lambda x: f"{x['done'] / x['secs']:.1f}"),
        ("max admitted in a sandbox window", lambda x: f"{x['max_window']} / limit {x['limit']} per {x['window']:g} s"),
        ("max admitted in any sliding window", lambda x: f"{x['max_sliding']} per {x['window']:g} s"),
    ]
    w(f"   {'':36} {'(a) baseline, no faults':>26} {'(b) storm':>34}")
    for name, f in rows:
        w(f"   {name:36} {f(b):>26} {f(s):>34}")
    verdict = "PACED, NOT FAILED" if not s["errors"] and s["done"] == storm["ops"] else "CALLS FAILED"
    w(f"   storm verdict: {verdict}; faults left unused in the sandbox queue: {s['unused_faults']}")
    for e in (s["errors"] + b["errors"])[:5]:
        w(f"   error: {e}")
    for m in (s["log_other"] + b["log_other"])[:5]:
        w(f"   client log: {m}")
    w("")
    w(f"total run time {total_s:.1f} s")
    w(f"command : {command}")
    return "\n".join(out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=250)
    ap.add_argument("--policies", type=int, default=20)
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--zipf-s", type=float, default=1.1, help="popularity exponent of get_service ids")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--storm-limit", type=int, default=20, help="sandbox requests per window in the storm")
    ap.add_argument("--storm-window", type=float, default=2.0)
    ap.add_argument("--storm-429", type=int, default=30, help="injected 429s with headers, and as many without")
    ap.add_argument("--storm-reset", type=int, default=1, help="ratelimit-reset (s) of injected 429s")
    ap.add_argument("--storm-spacing", type=int, default=2, help="normal requests after each injected 429")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    if a.services < 1 or a.policies < 1 or a.users < 2 or a.reads < 1 or a.concurrency < 1:
        ap.error("--services, --policies, --reads, --concurrency must be >= 1 and --users >= 2")
    if a.policies > 100:
        ap.error("--policies must be <= 100 (list_escalation_policies is checked as one page)")
    return a


async def amain(args: argparse.Namespace, command: str) -> int:
    t0 = time.perf_counter()
    run_id = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    rdb = redis_client(socket_timeout=5)  # REDIS_URL + password/TLS settings of the environment
    runner, state, url = await start_sandbox()
    try:
        ids = seed(state, args.services, args.policies, args.users)
        info = {"machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}",
                "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists()
                else "?", "url": url}
        print(f"run {run_id}: cache phase ({args.reads} reads x 2) ...", file=sys.stderr, flush=True)
        cache = await phase_cache(state, url, ids, args, rdb, f"run-{run_id}")
        print("429 storm phase (baseline, then storm) ...", file=sys.stderr, flush=True)
        storm = await phase_storm(state, url, ids, args)
        print(report(args, info, cache, storm, command, time.perf_counter() - t0))
        return 0 if not storm["storm"]["errors"] else 1
    finally:
        await runner.cleanup()
        try:
            keys = [k async for k in rdb.scan_iter(match=f"{REDIS_PREFIX}:run-{run_id}:*", count=1000)]
            if keys:
                await rdb.delete(*keys)
        finally:
            await rdb.aclose()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = " ".join(shlex.quote(x) for x in ["python", "bench/pd_rest.py", *argv])
    return asyncio.run(amain(args, command))


if __name__ == "__main__":
    sys.exit(main())
