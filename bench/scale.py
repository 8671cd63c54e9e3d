#!/usr/bin/env python3
"""Scale-out benchmark for pagerstream: workers x partitions, rebalance cost, exactly_once cost.

    python bench/scale.py            # full run: 10 configurations, about 10 minutes on a quiet machine
    python bench/scale.py --quick    # 4 configurations, smaller N (13 minutes on a busy machine)

One run, on the same broker and the same cores (see bench/README.md, "bench/scale.py"):
  0. Kafka ceiling (aiokafka produce/consume, no pagerstream code).
  1. Matrix: 1, 2, 4 workers in one consumer group x 1, 4, 8, 12 partitions, each configuration with
     its own topic prefix and app id, workers WITH the forwarder, one PD sandbox for the run: latency
     produce -> PagerDuty call at a fixed moderate rate, then throughput raw -> PagerDuty call (and
     raw -> incidents decisions, read from the same burst), per-process CPU (workers, broker, sandbox,
     load generator, everything else), broker records and CPU per alert. Baseline: 1 worker x 4
     partitions (the production default), measured in the same run.
  2. Rebalance cost under a steady load: a worker joins, leaves (SIGTERM), crashes (SIGKILL).
  3. exactly_once: the 1-worker baseline again with processing_guarantee="exactly_once" via a launcher
     in a temp dir that patches the setting at start-up (product code unchanged), and a 2-worker run.
Nothing asserts; it prints figures and says what bounds them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import pipeline as pl  # bench/pipeline.py: process bookkeeping, CPU meter, Kafka helpers

REPO, BOOTSTRAP = pl.REPO, pl.BOOTSTRAP
SESSION_TIMEOUT_S = 10.0  # localrun.start_worker's default; a crashed worker is noticed after this

# Launcher for the exactly_once phase. Written into a temp dir at run time; it patches one keyword
# of the PagerstreamApp(...) call in memory and then runs the normal CLI. Nothing in the tree changes.
EOS_LAUNCHER = r'''
import sys
from pagerstream.streams import app as _app

_orig = _app.PagerstreamApp.__init__


def _init(self, *args, **kwargs):
    kwargs["processing_guarantee"] = "exactly_once"
    _orig(self, *args, **kwargs)


_app.PagerstreamApp.__init__ = _init
from pagerstream.cli import main

sys.argv = ["pagerstream", *sys.argv[1:]]
main()
'''


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Ctx:
    run: str
    logdir: Path
    catalog: str
    args: argparse.Namespace
    notes: list[str] = field(default_factory=list)
    eos_launcher: Path | None = None
    sandbox: Any = None  # localrun.Sandbox, one for the run
    http: Any = None  # httpx.AsyncClient


# Every worker of the run: the PagerDuty rate limit raised to config.py's maximum (10000/s per routing key,
# far above the load, as in bench/pipeline.py); the HTTP ingress is not used here (load goes straight to
# alerts.raw), so ingress authentication is left open for these throwaway workers.
WORKER_EXTRA = {"PAGERSTREAM_PD_RATE": "10000", "PAGERSTREAM_PD_BURST": "10000", "PAGERSTREAM_INGRESS_AUTH": "open"}


# --- workers ---------------------------------------------------------------------------------------

@dataclass
class Group:
    """The workers of one configuration: one consumer group (= app id), one topic prefix."""
    name: str
    app_id: str
    prefix: str
    partitions: int
    eos: bool = False
    workers: list[Any] = field(default_factory=list)  # localrun.Worker

    def pids(self) -> dict[str, int]:
        return {f"w{i + 1}": w.proc.popen.pid for i, w in enumerate(self.workers) if w.proc.alive()}

    def alive(self) -> int:
        return sum(1 for w in self.workers if w.proc.alive())


def new_group(ctx: Ctx, name: str, partitions: int, eos: bool = False) -> Group:
    return Group(name=name, app_id=f"{ctx.run}-{name}", prefix=f"{ctx.run}-{name}.", partitions=partitions, eos=eos)


def _launch(ctx: Ctx, g: Group, idx: int) -> Any:
    """Start one worker (with the forwarder) and wait for /readyz. Blocking: run it on a thread."""
    from pagerstream.localrun import Worker, free_port, start, start_worker, wait_http, worker_env

    datadir = ctx.logdir / f"data-{g.name}-{idx}"  # one data dir per worker: RocksDB locks its files
    pl.CLEANUP.dirs.append(datadir)
    env = worker_env(app_id=g.app_id, prefix=g.prefix, datadir=datadir, events_url=ctx.sandbox.url,
                     extra={"PAGERSTREAM_PARTITIONS": str(g.partitions), **WORKER_EXTRA})
    name = f"{g.name}-w{idx}"
    if not g.eos:
        w = start_worker(env, ctx.logdir, catalog=ctx.catalog, name=name, session_timeout=SESSION_TIMEOUT_S,
                         ready_timeout=120)
        pl.CLEANUP.procs.append(w.proc)
        return w
    # the command line of localrun.start_worker, through the exactly_once launcher
    assert ctx.eos_launcher is not None
    port = free_port()
    args = [sys.executable, str(ctx.eos_launcher), "worker", "--web-port", str(port), "--session-timeout",
            str(SESSION_TIMEOUT_S), "--loglevel", "warning", "--catalog", ctx.catalog]
    proc = start(name, args, env, ctx.logdir)
    pl.CLEANUP.procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{name} exited:\n" + proc.log_tail())
        if wait_http(url + "/readyz", 1.0):
            return Worker(proc, url, env)
    raise RuntimeError(f"{name} not ready after 120 s:\n" + proc.log_tail())


async def add_workers(ctx: Ctx, g: Group, n: int) -> list[Any]:
    base = len(g.workers)
    new = await asyncio.gather(*(asyncio.to_thread(_launch, ctx, g, base + i + 1) for i in range(n)))
    g.workers.extend(new)
    return list(new)


async def stop_group(g: Group, kill: bool = True) -> None:
    """Stop all workers of a group at once. SIGKILL by default: the group, its topics and data dirs are
    thrown away right after, and a graceful Faust shutdown costs 5-10 s per configuration."""
    def one(proc: Any) -> None:
        with contextlib.suppress(Exception):
            if kill:
                proc.kill()
        pl.CLEANUP.stop(proc)

    await asyncio.gather(*(asyncio.to_thread(one, w.proc) for w in g.workers))


class Admin:
    """One admin client for the run: group state, topic lists, deletes."""

    def __init__(self) -> None:
        self.c: Any = None

    async def start(self) -> None:
        from pagerstream.connections import kafka_admin

        self.c = kafka_admin(BOOTSTRAP, request_timeout_ms=30000)
        await self.c.start()

    async def group(self, group_id: str) -> tuple[str, int]:
        """(state, members) of a consumer group."""
        try:
            g = (await self.c.describe_consumer_groups([group_id]))[0].groups[0]
            return g[2], len(g[5])
        except Exception as e:  # noqa: BLE001 - a transient admin error is "unknown", not a failure
            return f"?{type(e).__name__}", -1

    async def topics(self, *prefixes: str) -> list[str]:
        return sorted(t for t in await self.c.list_topics() if t.startswith(prefixes))

    async def delete(self, *prefixes: str) -> int:
        mine = await self.topics(*prefixes)
        for i in range(0, len(mine), 50):
            with contextlib.suppress(Exception):
                await self.c.delete_topics(mine[i:i + 50])
        return len(mine)

    async def close(self) -> None:
        if self.c is not None:
            await self.c.close()


async def wait_stable(ctx: Ctx, admin: Admin, g: Group, timeout: float = 120.0) -> float:
    """Until the group is Stable with every live worker in it and every worker answers /readyz (not
    rebalancing, tables recovered), twice in a row. Returns the seconds waited."""
    import httpx

    t0 = time.monotonic()
    streak, state, members = 0, "", 0
    while time.monotonic() - t0 < timeout:
        state, members = await admin.group(g.app_id)
        ready = True
        for w in g.workers:
            if not w.proc.alive():
                continue
            try:
                ready &= (await ctx.http.get(w.url + "/readyz", timeout=2)).status_code == 200
            except httpx.HTTPError:
                ready = False
        streak = streak + 1 if (state == "Stable" and members == g.alive() and ready) else 0
        if streak >= 2:
            return time.monotonic() - t0
        await asyncio.sleep(0.3)
    raise RuntimeError(f"group {g.app_id} not stable after {timeout:.0f} s (state {state}, members {members})")


# --- PagerDuty sandbox -----------------------------------------------------------------------------

async def sb_count(ctx: Ctx) -> int:
    return int((await ctx.http.get(f"{ctx.sandbox.url}/sandbox/stats")).json()["requests"])


async def sb_reset(ctx: Ctx) -> None:
    (await ctx.http.post(f"{ctx.sandbox.url}/sandbox/reset")).raise_for_status()


async def sb_latencies(ctx: Ctx, routing_key: str) -> list[float]:
    """ms from custom_details.sent_at (set when the raw record was built) to the sandbox's receive time."""
    r = await ctx.http.get(f"{ctx.sandbox.url}/sandbox/requests", params={"routing_key": routing_key})
    out = []
    for q in r.json()["requests"]:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            out.append((q["time"] - float(q["body"]["payload"]["custom_details"]["sent_at"])) * 1000)
    return out


async def wait_delivered(ctx: Ctx, target: int, timeout: float, still: float = 10.0) -> int:
    """Until the sandbox counted `target` requests, nothing arrived for `still` s, or `timeout`."""
    t0 = last_t = time.monotonic()
    last = -1
    while True:
        n = await sb_count(ctx)
        if n != last:
            last, last_t = n, time.monotonic()
        if n >= target or time.monotonic() - t0 > timeout or time.monotonic() - last_t > still:
            return n
        await asyncio.sleep(0.2)


# --- load ------------------------------------------------------------------------------------------

class Paced:
    """Distinct triggers at a steady rate (for `seconds`, or until stopped); counts what was sent."""

    def __init__(self, topic: str, rate: float, tag: str, routing_key: str = pl.ROUTING_KEY) -> None:
        self.topic, self.rate, self.tag, self.rk = topic, rate, tag, routing_key
        self.sent = 0
        self._stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def _run(self, seconds: float | None) -> None:
        from pagerstream.schemas import AvroCodec

        codec = AvroCodec("raw_alert")
        p = pl.producer()
        await p.start()
        futs = []
        try:
            t0 = time.perf_counter()
            while not self._stop.is_set():
                el = time.perf_counter() - t0
                if seconds is not None and el >= seconds:
                    break
                due = int(el * self.rate) + 1
                while self.sent < due:
                    body = pl.trigger_body(self.sent, f"{self.tag}-{self.sent}", routing_key=self.rk,
                                           sent_at=time.time())
                    k, v = pl.raw_record(body, codec)
                    futs.append(await p.send(self.topic, v, key=k))
                    self.sent += 1
                await asyncio.sleep(0.002)
            await asyncio.gather(*futs)
        finally:
            await p.stop()

    def start(self, seconds: float | None = None) -> Paced:
        self.task = asyncio.ensure_future(self._run(seconds))
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self.task:
            await self.task


def new_rk(tag: str) -> str:
    return (tag + uuid.uuid4().hex.upper())[:32]  # PagerDuty routing keys are 32 characters


# --- measurements ----------------------------------------------------------------------------------

async def end_offsets(topic: str) -> dict[Any, int]:
    from aiokafka import TopicPartition

    from pagerstream.connections import kafka_consumer

    c = kafka_consumer(BOOTSTRAP, group_id=None, enable_auto_commit=False)
    await c.start()
    try:
        parts = None
        for _ in range(50):
            parts = c.partitions_for_topic(topic)
            if parts:
                break
            await c._client.force_metadata_update()
            await asyncio.sleep(0.1)
        return dict(await c.end_offsets([TopicPartition(topic, p) for p in sorted(parts or [])]))
    finally:
        await c.stop()


async def decision_latencies(topic: str, start: dict[Any, int], tag: str) -> list[float]:
    """ms from the alert's received_at (set when the raw record was built, right before it went to the
    producer) to the Kafka timestamp of its `opened` incident record (when the worker produced it)."""
    from pagerstream.schemas import AvroCodec

    from pagerstream.connections import kafka_consumer

    codec = AvroCodec("incident_event")
    c = kafka_consumer(BOOTSTRAP, group_id=None, enable_auto_commit=False)
    await c.start()
    out: list[float] = []
    try:
        tps = list(start)
        c.assign(tps)
        ends = await c.end_offsets(tps)
        for tp in tps:
            c.seek(tp, start[tp])
        pending = {tp for tp in tps if start[tp] < ends[tp]}
        while pending:
            batch = await c.getmany(timeout_ms=1000, max_records=5000)
            if not batch:
                break
            for tp, msgs in batch.items():
                for m in msgs:
                    with contextlib.suppress(Exception):
                        r = codec.decode(m.value)
                        if r.get("change") == "opened" and str(r.get("dedup_key") or "").startswith(tag):
                            out.append(float(m.timestamp - r["at"]))
                if msgs and msgs[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
    finally:
        await c.stop()
    return out


def _pcts(xs: list[float], missing: int) -> dict[str, float]:
    ms = sorted(xs) + [float("inf")] * missing
    return {"p50": pl.pct(ms, 50), "p99": pl.pct(ms, 99), "max": ms[-1] if ms else float("nan")}


async def latency_step(ctx: Ctx, g: Group, rate: float, seconds: float) -> dict[str, Any]:
    t_inc = g.prefix + "incidents"
    start = await end_offsets(t_inc)
    tag = f"{ctx.run}-{g.name}-lat"
    rk = new_rk("LAT")
    d0 = await sb_count(ctx)
    paced = Paced(g.prefix + "alerts.raw", rate, tag, rk).start(seconds)
    await paced.task
    await wait_delivered(ctx, d0 + paced.sent, 30.0)
    pd = await sb_latencies(ctx, rk)
    dec = await decision_latencies(t_inc, start, tag)
    return {"rate": rate, "seconds": seconds, "sent": paced.sent, "delivered": len(pd),
            "pd": _pcts(pd, max(0, paced.sent - len(pd))), "decided": len(dec),
            "dec": _pcts(dec, max(0, paced.sent - len(dec)))}


async def idle_cpu(g: Group, seconds: float) -> float:
    """CPU % (of one core, workers summed) the group uses with no load: timers, ticks, commits, heartbeats."""
    m = pl.CpuMeter(g.pids()).start()
    await asyncio.sleep(seconds)
    m.stop()
    if m.wall >= 1.0 and pl.OTHER_LOAD:
        pl.OTHER_LOAD.pop()  # CpuMeter logs every window's "other" load; this one is not a measured phase
    return sum(m.result.values())


async def throughput_burst(ctx: Ctx, g: Group, admin: Admin, records: list[tuple[bytes, bytes]],
                           idle_pct: float | None = None) -> dict[str, Any]:
    """Produce N raw alerts as fast as the producer takes them into a running, stable group; measure from
    the start of producing until the sandbox received the Nth PagerDuty call (and, on the way, until the
    Nth incident record: the decision rate)."""
    n = len(records)
    topics = await admin.topics(g.prefix, g.app_id + "-")  # pipeline topics + Faust changelogs
    t_inc = g.prefix + "incidents"
    dlqs = [g.prefix + "alerts.dead-letter", g.prefix + "pagerduty.dead-letter", g.prefix + "pagerduty.retry"]
    every = pl.OffsetWatch(topics)
    await every.start()
    try:
        c0 = await every.counts()
        d0 = await sb_count(ctx)
        pids = {**g.pids(), "kafka": pl.kafka_pid(), "redis": pl.redis_pid(), "pd-sandbox": ctx.sandbox.proc.popen.pid,
                "bench": os.getpid()}
        cpu = pl.CpuMeter(pids).start()
        t0 = time.perf_counter()
        prod = asyncio.ensure_future(pl.produce_all(g.prefix + "alerts.raw", records))
        samples: list[tuple[float, int]] = [(t0, 0)]
        t_dec = t_pd = None
        limit = max(120.0, n / 25)
        last_change, last = time.perf_counter(), 0
        while time.perf_counter() - t0 < limit:
            d = await sb_count(ctx) - d0
            now = time.perf_counter()
            samples.append((now, d))
            if d != last:
                last, last_change = d, now
            if t_dec is None and (await every.counts())[t_inc] - c0[t_inc] >= n:
                t_dec = time.perf_counter()
            if d >= n:
                t_pd = now
                break
            if now - last_change > 30:  # nothing delivered for 30 s: stuck
                break
            await asyncio.sleep(0.15)
        cpu.stop()
        produce_s = await prod
        await asyncio.sleep(1.0)
        c1 = await every.counts()
        parts = {t: len(v) for t, v in every.tps.items()}
    finally:
        await every.stop()
    done = min(samples[-1][1], n)
    end = t_pd or samples[-1][0]
    wsum = sum(v for k, v in cpu.result.items() if k.startswith("w"))
    per_topic = {_short(g, t): (c1[t] - c0[t]) / max(1, done) for t in topics if c1[t] > c0[t]}
    marginal = (10 * max(0.0, wsum - idle_pct) * cpu.wall / done) if (done and idle_pct is not None) else None
    return {
        "n": n, "delivered": done, "complete": t_pd is not None, "seconds": end - t0, "produce_s": produce_s,
        "rate": done / (end - t0) if end > t0 else 0.0, "steady": pl._steady_rate(samples, n),
        "dec_rate": n / (t_dec - t0) if t_dec else None,
        "cpu": dict(cpu.result), "cpu_text": cpu.text(), "others": cpu.others or 0.0, "wall": cpu.wall,
        "workers_cpu_pct": wsum,
        "worker_ms_per_alert": 10 * wsum * cpu.wall / done if done else None,
        "idle_pct": idle_pct, "worker_marginal_ms": marginal,
        "kafka_ms_per_alert": 10 * cpu.result.get("kafka", 0.0) * cpu.wall / done if done else None,
        "sandbox_ms_per_alert": 10 * cpu.result.get("pd-sandbox", 0.0) * cpu.wall / done if done else None,
        "records_per_alert": sum(per_topic.values()),
        "per_topic": dict(sorted(per_topic.items(), key=lambda kv: -kv[1])),
        "single_partition_hot": sorted(t.removeprefix(g.prefix) for t in topics
                                       if parts.get(t) == 1 and (c1[t] - c0[t]) >= 0.5 * max(1, done)
                                       and not t.startswith(g.app_id + "-")),
        "dead_letters": sum(c1.get(t, 0) - c0.get(t, 0) for t in dlqs[:2]),
        "retry_records": c1.get(dlqs[2], 0) - c0.get(dlqs[2], 0),
    }


def _short(g: Group, topic: str) -> str:
    return topic.removeprefix(g.prefix).removeprefix(g.app_id + "-")


def _count_log_errors(g: Group) -> dict[str, int]:
    """ERROR / exception lines in the workers' logs, by a short signature (top 5)."""
    out: dict[str, int] = {}
    for w in g.workers:
        try:
            text = w.proc.log_path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if "ERROR" in line or "Error:" in line or "Traceback" in line:
                sig = line.split("]", 2)[-1].strip()[:100] if "]" in line else line.strip()[:100]
                out[sig] = out.get(sig, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:5])


# --- phases ----------------------------------------------------------------------------------------

async def run_config(ctx: Ctx, admin: Admin, partitions: int, workers: int, records: list[tuple[bytes, bytes]],
                     *, eos: bool = False, label: str | None = None) -> dict[str, Any]:
    import shutil

    from pagerstream.streams.topics import create_topics

    name = label or f"p{partitions}w{workers}"
    g = new_group(ctx, name, partitions, eos)
    res: dict[str, Any] = {"name": name, "partitions": partitions, "workers": workers, "eos": eos}
    t0 = time.monotonic()
    try:
        await create_topics(BOOTSTRAP, g.prefix, partitions, 1)
        await sb_reset(ctx)
        t1 = time.monotonic()
        await add_workers(ctx, g, workers)
        res["start_s"] = time.monotonic() - t1
        res["stable_s"] = await wait_stable(ctx, admin, g)
        # warm-up: every partition's path, up to the PagerDuty call, runs once before anything is measured
        warm = Paced(g.prefix + "alerts.raw", 400, f"{ctx.run}-{name}-warm", new_rk("WARM")).start(0.5)
        await warm.task
        got = await wait_delivered(ctx, warm.sent, 60.0, still=20.0)
        if got < warm.sent:
            ctx.notes.append(f"{name}: only {got}/{warm.sent} warm-up alerts reached the PD sandbox")
        elif ctx.args.lat_seconds > 0:
            res["latency"] = await latency_step(ctx, g, ctx.args.lat_rate, ctx.args.lat_seconds)
        await asyncio.sleep(0.5)
        idle = await idle_cpu(g, ctx.args.idle_seconds) if ctx.args.idle_seconds > 0 else None
        t2 = time.monotonic()
        res["tp"] = await throughput_burst(ctx, g, admin, records, idle)
        res["burst_s"] = time.monotonic() - t2
        if eos and ctx.args.eos_hold > 0:  # keep a light load for longer than a transaction timeout
            d0 = await sb_count(ctx)
            hold = Paced(g.prefix + "alerts.raw", 20, f"{ctx.run}-{name}-hold", new_rk("HOLD")).start(ctx.args.eos_hold)
            await hold.task
            res["hold"] = {"seconds": ctx.args.eos_hold, "sent": hold.sent,
                           "delivered": await wait_delivered(ctx, d0 + hold.sent, 30.0) - d0}
    except Exception as e:  # noqa: BLE001 - a failed configuration is reported, the run goes on
        res["error"] = f"{type(e).__name__}: {e}"[:1500]
        ctx.notes.append(f"{name}: {res['error'].splitlines()[0]}")
    finally:
        res["errors_in_logs"] = _count_log_errors(g)
        t3 = time.monotonic()
        await stop_group(g)
        res["stop_s"] = time.monotonic() - t3
        await admin.delete(g.prefix, g.app_id + "-")
        for i in range(len(g.workers)):
            shutil.rmtree(ctx.logdir / f"data-{name}-{i + 1}", ignore_errors=True)
    res["total_s"] = time.monotonic() - t0
    return res


async def eos_check(ctx: Ctx, admin: Admin, workers: int, n: int = 200) -> dict[str, Any]:
    """exactly_once with several workers: start them, send n alerts, count what was decided, delivered and
    dead-lettered, and what the workers logged."""
    import shutil

    from pagerstream.streams.topics import create_topics

    name = f"eos-p4w{workers}"
    g = new_group(ctx, name, 4, eos=True)
    res: dict[str, Any] = {"name": name, "partitions": 4, "workers": workers, "eos": True, "check": True}
    try:
        await create_topics(BOOTSTRAP, g.prefix, 4, 1)
        await sb_reset(ctx)
        await add_workers(ctx, g, workers)
        await wait_stable(ctx, admin, g)
        t_inc = g.prefix + "incidents"
        start = await end_offsets(t_inc)
        dl = [g.prefix + "alerts.dead-letter", g.prefix + "pagerduty.dead-letter"]
        watch = pl.OffsetWatch(dl)
        await watch.start()
        c0 = await watch.counts()
        tag = f"{ctx.run}-{name}-chk"
        paced = Paced(g.prefix + "alerts.raw", 400, tag, new_rk("EOS")).start(n / 400)
        await paced.task
        res["delivered"] = await wait_delivered(ctx, paced.sent, 60.0, still=15.0)
        c1 = await watch.counts()
        await watch.stop()
        res["sent"] = paced.sent
        res["decided"] = len(await decision_latencies(t_inc, start, tag))
        res["dead_letters"] = sum(c1[t] - c0[t] for t in dl)
    except Exception as e:  # noqa: BLE001 - reported
        res["error"] = f"{type(e).__name__}: {e}"[:1500]
    finally:
        res["errors_in_logs"] = _count_log_errors(g)
        await stop_group(g)
        await admin.delete(g.prefix, g.app_id + "-")
        for i in range(len(g.workers)):
            shutil.rmtree(ctx.logdir / f"data-{name}-{i + 1}", ignore_errors=True)
    return res


async def phase_rebalance(ctx: Ctx, admin: Admin) -> dict[str, Any]:
    """2 workers on P partitions under a steady load; a 3rd worker joins, then leaves (SIGTERM), then one
    of the two crashes (SIGKILL). Per event: when the group started / finished rebalancing, the longest
    stretch without a PagerDuty call, the peak backlog, and when the backlog was back to its level
    before the event ("recovered")."""
    from pagerstream.streams.topics import create_topics

    a = ctx.args
    g = new_group(ctx, "rebal", a.rebalance_partitions)
    events: list[dict[str, Any]] = []
    paced: Paced | None = None
    samp: asyncio.Task | None = None
    stop_sampling = asyncio.Event()
    try:
        await create_topics(BOOTSTRAP, g.prefix, g.partitions, 1)
        await sb_reset(ctx)
        await add_workers(ctx, g, 2)
        await wait_stable(ctx, admin, g)
        warm = Paced(g.prefix + "alerts.raw", 400, f"{ctx.run}-rebal-warm", new_rk("WARM")).start(0.5)
        await warm.task
        await wait_delivered(ctx, warm.sent, 60.0, still=30.0)
        d0 = await sb_count(ctx)
        paced = Paced(g.prefix + "alerts.raw", a.rebalance_rate, f"{ctx.run}-rebal", new_rk("REBAL")).start()
        series: list[tuple[float, int, int, str, int]] = []  # (t, produced, delivered, state, members)

        async def sampler() -> None:
            while not stop_sampling.is_set():
                state, members = await admin.group(g.app_id)
                series.append((time.perf_counter(), paced.sent, await sb_count(ctx) - d0, state, members))
                await asyncio.sleep(0.2)

        samp = asyncio.ensure_future(sampler())
        await asyncio.sleep(a.rebalance_settle)

        async def event(kind: str, action: Any) -> None:
            # start from a steady state: let the backlog of the previous event drain (<= 2 s of load) first
            t_d = time.perf_counter()
            while time.perf_counter() - t_d < a.rebalance_window:
                if series and series[-1][1] - series[-1][2] <= 2 * a.rebalance_rate:
                    break
                await asyncio.sleep(0.5)
            drained = time.perf_counter() - t_d
            i0 = len(series)
            t_ev = time.perf_counter()
            cpu = pl.CpuMeter({**g.pids(), "kafka": pl.kafka_pid(), "pd-sandbox": ctx.sandbox.proc.popen.pid,
                               "bench": os.getpid()}).start()
            info = await action()
            t_act = time.perf_counter()
            while time.perf_counter() - t_act < a.rebalance_window:  # until recovered (+3 s), at most the window
                await asyncio.sleep(0.5)
                ev = _analyse(series, i0, t_ev, t_act, a.rebalance_rate, g.alive())
                if (ev.get("recovered_s") is not None and ev.get("rebalance_end_s") is not None
                        and time.perf_counter() - t_ev > ev["recovered_s"] + 3):
                    break
            cpu.stop()
            ev = _analyse(series, i0, t_ev, t_act, a.rebalance_rate, g.alive())
            ev.update(kind=kind, cpu_text=cpu.text(), drained_s=drained, **(info or {}))
            events.append(ev)
            say(f"    {kind}: " + _event_line(ev))
            await asyncio.sleep(a.rebalance_settle / 2)

        async def join() -> dict[str, Any]:
            t = time.perf_counter()
            await add_workers(ctx, g, 1)
            return {"spawn_to_ready_s": time.perf_counter() - t}

        async def leave() -> dict[str, Any]:
            t = time.perf_counter()
            await asyncio.to_thread(pl.CLEANUP.stop, g.workers[-1].proc)
            return {"stop_s": time.perf_counter() - t}

        async def crash() -> dict[str, Any]:
            w = g.workers[1]
            os.kill(w.proc.popen.pid, signal.SIGKILL)
            await asyncio.to_thread(w.proc.popen.wait, 5)
            return {}

        await event("join (a 3rd worker is spawned)", join)
        await event("leave (SIGTERM to the 3rd)", leave)
        if a.rebalance_crash:
            await event(f"crash (SIGKILL; session timeout {SESSION_TIMEOUT_S:g} s)", crash)
    finally:
        stop_sampling.set()
        if samp is not None:
            with contextlib.suppress(Exception):
                await samp
        if paced is not None:
            with contextlib.suppress(Exception):
                await paced.stop()
        errors = _count_log_errors(g)
        await stop_group(g)
        await admin.delete(g.prefix, g.app_id + "-")
    return {"partitions": g.partitions, "rate": a.rebalance_rate, "events": events, "errors_in_logs": errors,
            "sent": paced.sent if paced else 0}


def _analyse(series: list[tuple[float, int, int, str, int]], i0: int, t_ev: float, t_act: float, rate: float,
             alive: int) -> dict[str, Any]:
    """Backlog = produced - delivered to PagerDuty. Before the event: its 95th percentile over the last 5 s.
    Recovered: from the later of the action's end and the rebalance's end, the first moment the backlog
    is back at or under that level + max(1 s of load, 25 %) and stays there for 2 s."""
    pre = [p - d for _, p, d, _, _ in series[max(0, i0 - 25):i0]] or [0]
    pre_bl = sorted(pre)[int(0.95 * (len(pre) - 1))]
    thr = pre_bl + max(rate, 0.25 * pre_bl)
    post = series[i0:]
    out: dict[str, Any] = {"pre_backlog": pre_bl}
    if not post:
        return out
    # the rebalance started at the first sample not Stable, or with another member count than before
    m_before = series[i0 - 1][4] if i0 > 0 else post[0][4]
    reb = [t for t, _, _, s, m in post if s != "Stable" or m != m_before]
    t_rb0 = reb[0] if reb else None
    t_rb1 = next((t for t, _, _, s, m in post if t_rb0 and t > t_rb0 and s == "Stable" and m == alive), None)
    out["rebalance_start_s"] = (t_rb0 - t_ev) if t_rb0 else None
    out["rebalance_end_s"] = (t_rb1 - t_ev) if t_rb1 else None
    out["states"] = sorted({s for _, _, _, s, _ in post if s != "Stable"})
    peak = max(p - d for _, p, d, _, _ in post)
    out["peak_backlog"] = peak
    out["peak_delay_s"] = (peak - pre_bl) / rate if rate else None
    longest, last_t, last_d = 0.0, post[0][0], post[0][2]
    for t, _, d, _, _ in post:
        if d > last_d:
            last_t, last_d = t, d
        longest = max(longest, t - last_t)
    out["stall_s"] = longest
    t_from = max(t_act, t_rb1 or t_rb0 or t_act)  # after the rebalance, not during it
    ok_since, out["recovered_s"] = None, None
    for t, p, d, _, _ in post:
        if t < t_from:
            continue
        if p - d <= thr:
            ok_since = ok_since or t
            if t - ok_since >= 2.0:
                out["recovered_s"] = ok_since - t_ev
                break
        else:
            ok_since = None
    curve, nxt, prev = [], t_ev - 2.0, None
    for t, _, d, _, _ in series[max(0, i0 - 12):]:
        if t >= nxt:
            if prev is not None:
                curve.append((round(prev[0] - t_ev), round((d - prev[1]) / max(1e-6, t - prev[0]))))
            prev, nxt = (t, d), t + 1.0
    out["curve"] = curve
    return out


def _event_line(ev: dict[str, Any]) -> str:
    def s(x: Any) -> str:
        return "-" if x is None else f"{x:.1f} s"
    return (f"rebalance {s(ev.get('rebalance_start_s'))} -> {s(ev.get('rebalance_end_s'))}, longest stall "
            f"{s(ev.get('stall_s'))}, peak backlog {ev.get('peak_backlog', 0):,} (+{ev.get('peak_delay_s') or 0:.1f} s "
            f"of load), recovered {s(ev.get('recovered_s'))}"
            + (f" ({ev['recovered_s'] - ev['rebalance_start_s']:.1f} s after the rebalance began)"
               if ev.get("recovered_s") is not None and ev.get("rebalance_start_s") is not None else ""))


# --- report ----------------------------------------------------------------------------------------

def fmt_ms(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return "late" if x == float("inf") else f"{x:,.0f}"


def _used(t: dict[str, Any]) -> float:
    c = t["cpu"]
    return (t["workers_cpu_pct"] + c.get("kafka", 0) + c.get("redis", 0) + c.get("pd-sandbox", 0) + c.get("bench", 0)
            + t["others"])


def report(res: dict[str, Any], ctx: Ctx, info: dict[str, str], command: str) -> str:
    a = ctx.args
    L: list[str] = []
    w = L.append
    ncpu = int(info["cpus"] or 1)
    w("")
    w("=" * 120)
    w("pagerstream scale-out benchmark" + ("  (--quick)" if a.quick else ""))
    w(f"command : {command}")
    w(f"date    : {info['date']}   commit {info['commit']}")
    w(f"machine : {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, aiokafka {info['aiokafka']}, "
      f"faust-streaming {info['faust']}, broker {info['kafka']} on {BOOTSTRAP} (single node)")
    w(f"NOTE    : broker, every worker, the PD sandbox and the load generator share these {info['cpus']} cores "
      f"({100 * ncpu}% = all of them); the broker also serves anyone else's clients.")
    if pl.OTHER_LOAD:
        worst, med = max(pl.OTHER_LOAD), statistics.median(pl.OTHER_LOAD)
        w(f"LOAD    : processes outside this run and the Kafka/Redis stack used {med:.0f}% of a core (median of the "
          f"measured windows), up to {worst:.0f}%" + ("  -> WARNING: not quiet; figures are disturbed"
                                                     if worst > 20 else " (quiet)"))
    w("=" * 120)
    k = res.get("kafka")
    if k:
        w(f"[0] Kafka ceiling, one aiokafka client, {k['n']:,} RawAlerts of {k['record_bytes']:.0f} B, 4 partitions: "
          f"produce {k['produce_rate']:,.0f} rec/s (acks=all), consume {k['consume_rate']:,.0f} rec/s")

    rows = res.get("matrix", [])
    base = next((r for r in rows if r["name"] == a.baseline and "tp" in r), None)
    if rows:
        w("")
        w(f"[1] raw -> PagerDuty sandbox call, workers WITH the forwarder, {a.n:,} distinct alerts per configuration "
          f"produced into a running, stable group. Baseline: {a.baseline}, same run.")
        w(f"    Latency at a fixed {a.lat_rate:g} alerts/s for {a.lat_seconds:g} s: produce -> PD call (sandbox receive "
          "time - sent_at) and produce -> incident record (decision).")
        hdr = (f"{'part':>4} {'wkr':>3} {'to PD/s':>8} {'/worker':>7} {'x base':>6} {'decide/s':>8} "
               f"{'PD p50/p99 ms':>14} {'dec p99':>7} {'workers':>7} {'kafka':>5} {'sbox':>5} {'bench':>5} "
               f"{'other':>5} {'idle':>5} {'wkr ms':>6} {'marg':>5} {'kfk ms':>6} {'sbx ms':>6} {'rec/al':>6} "
               f"{'start':>5}")
        w(hdr)
        w("-" * len(hdr))
        for r in rows:
            if "tp" not in r:
                w(f"{r['partitions']:>4} {r['workers']:>3}  FAILED: {r.get('error', '').splitlines()[0][:100]}")
                continue
            t, lt = r["tp"], r.get("latency") or {}
            c = t["cpu"]
            x = t["rate"] / base["tp"]["rate"] if base and base["tp"]["rate"] else None
            pd, dec = lt.get("pd") or {}, lt.get("dec") or {}
            w(f"{r['partitions']:>4} {r['workers']:>3} {t['rate']:>8,.0f} {t['rate'] / r['workers']:>7,.0f} "
              f"{f'{x:.2f}' if x else '-':>6} {pl.fmt(t['dec_rate']):>8} "
              f"{fmt_ms(pd.get('p50')) + '/' + fmt_ms(pd.get('p99')):>14} {fmt_ms(dec.get('p99')):>7} "
              f"{t['workers_cpu_pct']:>6.0f}% {c.get('kafka', 0):>4.0f}% {c.get('pd-sandbox', 0):>4.0f}% "
              f"{c.get('bench', 0):>4.0f}% {t['others']:>4.0f}% {max(0.0, 100 * ncpu - _used(t)):>4.0f}% "
              f"{pl.fmt(t['worker_ms_per_alert'], 2):>6} {pl.fmt(t.get('worker_marginal_ms'), 2):>5} "
              f"{pl.fmt(t['kafka_ms_per_alert'], 2):>6} "
              f"{pl.fmt(t['sandbox_ms_per_alert'], 2):>6} {t['records_per_alert']:>6.1f} {r['start_s']:>5.0f}"
              + ("" if t["complete"] else f"  INCOMPLETE {t['delivered']:,}/{t['n']:,}")
              + (f"  DLQ {t['dead_letters']}" if t["dead_letters"] else "")
              + (f"  retry {t['retry_records']}" if t["retry_records"] else ""))
        w("    to PD/s = alerts/s from the first send to the Nth PagerDuty call; decide/s = the same to the Nth incident "
          "record; x base = to PD/s / the baseline's.")
        w("    CPU columns: % of one core over the burst (workers summed; sbox = PD sandbox; bench = load generator and "
          "this script; other = processes outside the run; idle = what was left of the machine).")
        w("    wkr/kfk/sbx ms = CPU ms per delivered alert of all workers / the broker / the sandbox; marg = workers' ms "
          "per alert above their idle CPU (timers, ticks, commits; measured just before the burst); rec/al = records")
        w("    written to the broker per alert (pipeline topics + changelogs); start = s from spawn to all /readyz.")
        if base:
            top = ", ".join(f"{t} {v:.2f}" for t, v in base["tp"]["per_topic"].items() if v >= 0.05)
            w(f"    records per alert by topic ({a.baseline}): {top}")
        for r in rows:
            if r.get("errors_in_logs"):
                w(f"    {r['name']} worker log errors: {r['errors_in_logs']}")
        w("    -> " + sandbox_verdict(rows))

    rb = res.get("rebalance")
    if rb:
        w("")
        w(f"[2] Rebalance cost: 2 workers, {rb['partitions']} partitions, steady {rb['rate']:g} alerts/s to PagerDuty; "
          "times from the event (spawn / SIGTERM / SIGKILL); backlog = sent - delivered; recovered = backlog back to its "
          "pre-event level (+ max(1 s of load, 25%)) for 2 s.")
        for ev in rb["events"]:
            extra = ""
            if "spawn_to_ready_s" in ev:
                extra = f"; the new worker: spawn -> /readyz {ev['spawn_to_ready_s']:.1f} s"
            if "stop_s" in ev:
                extra = f"; SIGTERM -> exit {ev['stop_s']:.1f} s"
            w(f"    {ev['kind']}: {_event_line(ev)}{extra}")
            w(f"        group states seen: {', '.join(ev.get('states') or []) or '(none sampled)'}; delivered/s by "
              "second from the event: " + " ".join(f"{s:+d}:{v}" for s, v in ev.get("curve", [])[:45]))
            w(f"        CPU over the window: {ev.get('cpu_text', '')}")
        if rb.get("errors_in_logs"):
            w(f"    worker log errors: {rb['errors_in_logs']}")
    elif "rebalance_error" in res:
        w(f"[2] Rebalance: FAILED {res['rebalance_error']}")

    eo = res.get("eos", [])
    if eo:
        w("")
        w("[3] processing_guarantee=\"exactly_once\" (a launcher in a temp dir patches the PagerstreamApp(...) keyword at "
          "start-up; product code unchanged); same measurement as [1]:")
        for r in eo:
            ref = next((m for m in rows if m["partitions"] == r["partitions"] and m["workers"] == r["workers"]
                        and "tp" in m), None)
            if "tp" in r:
                t, lt = r["tp"], r.get("latency") or {}
                vs = (f" (at_least_once {ref['tp']['rate']:,.0f}/s: x{t['rate'] / ref['tp']['rate']:.2f})"
                      if ref and ref["tp"]["rate"] else "")
                pd = lt.get("pd") or {}
                w(f"    {r['workers']} worker(s), {r['partitions']} partitions: {t['rate']:,.0f} alerts/s to PD{vs}; "
                  f"decide/s {pl.fmt(t['dec_rate'])}; PD p50/p99 {fmt_ms(pd.get('p50'))}/{fmt_ms(pd.get('p99'))} ms at "
                  f"{a.lat_rate:g}/s ({lt.get('delivered', 0)}/{lt.get('sent', 0)}); delivered {t['delivered']:,}/{t['n']:,}"
                  + ("" if t["complete"] else " INCOMPLETE") + f"; DLQ {t['dead_letters']}; worker CPU "
                  f"{pl.fmt(t['worker_ms_per_alert'], 2)} ms/alert, broker {pl.fmt(t['kafka_ms_per_alert'], 2)} ms/alert, "
                  f"{t['records_per_alert']:.1f} records/alert")
                if r.get("hold"):
                    h = r["hold"]
                    w(f"        then {h['seconds']:g} s at 20 alerts/s: {h['delivered']}/{h['sent']} delivered to PD")
            elif r.get("check"):
                w(f"    {r['workers']} workers, {r['partitions']} partitions (check): sent {r.get('sent', 0)} alerts, "
                  f"decided {r.get('decided', 0)}, delivered to PD {r.get('delivered', 0)}, dead-lettered "
                  f"{r.get('dead_letters', 0)}" + (f"; {r['error'].splitlines()[0][:200]}" if "error" in r else ""))
            else:
                w(f"    {r['workers']} worker(s), {r['partitions']} partitions: FAILED "
                  f"{r.get('error', '').splitlines()[0][:200]}")
            if r.get("errors_in_logs"):
                w(f"        worker log errors (top 5): {r['errors_in_logs']}")

    pred = res.get("prediction")
    if pred:
        w("")
        w("[4] What bounds it here, and what it predicts for a cluster")
        for line in pred:
            w("    " + line)
    for note in ctx.notes:
        w("note: " + note)
    w("")
    return "\n".join(L)


def sandbox_verdict(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if "tp" in r]
    if not ok:
        return ""
    top = max(ok, key=lambda r: r["tp"]["cpu"].get("pd-sandbox", 0))
    sb = top["tp"]["cpu"].get("pd-sandbox", 0)
    ms = statistics.median(r["tp"]["sandbox_ms_per_alert"] for r in ok if r["tp"]["sandbox_ms_per_alert"] is not None)
    if sb >= 80:
        return (f"the PD sandbox reached {sb:.0f}% of a core in {top['name']} ({ms:.2f} ms per call): there it is a "
                "bottleneck of this test bench (real PagerDuty does not run on our cores); compare decide/s.")
    return (f"the PD sandbox used at most {sb:.0f}% of a core ({top['name']}; {ms:.2f} ms CPU per call, ~"
            f"{1000 / ms if ms else 0:,.0f} calls/s per core): it is not the bottleneck, so the figures are raw -> PD call.")


def predict(res: dict[str, Any], ctx: Ctx, ncpu: int) -> list[str]:
    rows = [r for r in res.get("matrix", []) if "tp" in r and r["tp"]["delivered"]]
    base = next((r for r in rows if r["name"] == ctx.args.baseline), None)
    if not base:
        return []
    out: list[str] = []
    bt = base["tp"]
    c = bt["cpu"]
    out.append(f"Baseline {base['name']}: {bt['rate']:,.0f} alerts/s to PD; worker {bt['workers_cpu_pct']:.0f}% of a core, "
               f"broker {c.get('kafka', 0):.0f}%, sandbox {c.get('pd-sandbox', 0):.0f}%, load generator "
               f"{c.get('bench', 0):.0f}%, others {bt['others']:.0f}%: machine {_used(bt):.0f}% of {100 * ncpu}%.")
    best = max(rows, key=lambda r: r["tp"]["rate"])
    out.append(f"Best: {best['name']} {best['tp']['rate']:,.0f} alerts/s (x{best['tp']['rate'] / bt['rate']:.2f} the "
               f"baseline), machine {_used(best['tp']):.0f}% of {100 * ncpu}% -> "
               + ("CPU-bound: the cores are used up; more workers only share them."
                  if _used(best["tp"]) >= 0.85 * 100 * ncpu else
                  "the cores were not used up: the bound is not CPU (ordering per partition, waits) - see latency."))
    one = [r for r in rows if r["workers"] == 1]
    multi = [r for r in rows if r["workers"] > 1]
    def cost(r: dict[str, Any]) -> float:  # marginal CPU per alert when measured, else gross
        return r["tp"].get("worker_marginal_ms") or r["tp"]["worker_ms_per_alert"]

    c1 = statistics.median(cost(r) for r in one) if one else cost(base)
    line = (f"Worker CPU per alert (raw -> PD call, above idle): {c1:.2f} ms with 1 worker (median over partition "
            f"counts; gross incl. idle {bt['worker_ms_per_alert']:.2f} ms in {base['name']})")
    cm = None
    if multi:
        cm = statistics.median(cost(r) for r in multi)
        line += (f", {cm:.2f} ms summed over workers with 2-4 (+{100 * (cm / c1 - 1):.0f}%: standby replicas "
                 "replay the changelogs of the partitions they do not own, more consumers and commits)")
    out.append(line + ".")
    kms = statistics.median(r["tp"]["kafka_ms_per_alert"] for r in rows)
    rpa = statistics.median(r["tp"]["records_per_alert"] for r in rows)
    per_core = 1000.0 / (cm or c1)
    out.append(f"Cluster, one core per worker: ~{1000 / c1:,.0f} alerts/s for one worker, ~{per_core:,.0f} per extra "
               f"worker-core, times min(workers, partitions): a partition has one consumer per group, and the forwarder "
               f"makes one in-order call at a time per outbox partition.")
    out.append(f"Broker: {rpa:.1f} records per alert and ~{kms:.2f} ms broker CPU per alert on this node -> ~{1000 / kms:,.0f} "
               "alerts/s per broker core at replication factor 1; RF 3 makes every write land on 3 brokers, so budget "
               "about 3x that CPU across the cluster.")
    hot = sorted({t for r in rows if r["partitions"] > 1 for t in r["tp"]["single_partition_hot"]})
    if hot:
        out.append(f"Single-partition topics written for every alert: {', '.join(hot)}. Their consumer runs on one worker "
                   "whatever the worker count: a cluster-wide serial stage (its cost sits on that worker).")
    for p in sorted({r["partitions"] for r in rows}):
        out.append(f"  {p:>2} partition(s): at most {p} busy worker(s) -> ~{1000 / c1 + (p - 1) * per_core:,.0f} alerts/s "
                   f"with a core each, if the broker (~{1000 / kms:,.0f}/s per core here) and the single-partition "
                   "stages keep up")
    return out


# --- main ------------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 configurations (p4w1,p1w2,p4w2,p12w4), smaller N")
    ap.add_argument("--workers", help="comma list of worker counts (1,2,4)")
    ap.add_argument("--partitions", help="comma list of partition counts (1,4,8,12)")
    ap.add_argument("--configs", help="explicit list like p4w1,p1w2,p12w4 (quick: p4w1,p1w2,p4w2,p12w4)")
    ap.add_argument("--n", type=int, help="alerts per throughput burst (1500, quick 1000)")
    ap.add_argument("--lat-rate", type=float, default=50.0, help="the fixed moderate rate for latency (50/s)")
    ap.add_argument("--lat-seconds", type=float, help="length of each latency step (4, quick 3; 0 = skip)")
    ap.add_argument("--idle-seconds", type=float, default=2.0, help="idle CPU window before each burst (2; 0 = skip)")
    ap.add_argument("--baseline", default="p4w1", help="the configuration the others are compared with")
    ap.add_argument("--kafka-n", type=int, help="records for the Kafka ceiling (20000, quick 5000)")
    ap.add_argument("--rebalance-partitions", type=int, default=8)
    ap.add_argument("--rebalance-rate", type=float, help="steady load in the rebalance phase (default: 40%% of the "
                    "best 2-worker rate of the matrix, so that the group can catch up; 100/s without a matrix)")
    ap.add_argument("--rebalance-settle", type=float, help="seconds of steady load before each event (5)")
    ap.add_argument("--rebalance-window", type=float, default=40.0, help="max seconds observed after each event")
    ap.add_argument("--no-crash", dest="rebalance_crash", action="store_false", help="skip the SIGKILL event")
    ap.add_argument("--eos-workers", help="exactly_once phase, 4 partitions: 1 = measured like the matrix, more = "
                    "a 200-alert correctness check (1,2)")
    ap.add_argument("--eos-hold", type=float, default=0.0, metavar="SECONDS",
                    help="after the exactly_once burst, keep 20 alerts/s for this long (e.g. 90: longer than the "
                    "60 s transaction timeout) and report the workers' errors")
    ap.add_argument("--only", default="kafka,matrix,rebalance,eos", help="comma list of: kafka,matrix,rebalance,eos")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="first wait up to this long for other processes to use < 15%% of a core")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--keep-logs", action="store_true", help="keep the workers' and sandbox's logs")
    a = ap.parse_args(argv)
    a.workers = [int(x) for x in (a.workers or "1,2,4").split(",")]
    a.partitions = [int(x) for x in (a.partitions or "1,4,8,12").split(",")]
    if a.configs is None and a.quick and not (set(argv) & {"--workers", "--partitions"}):
        a.configs = "p4w1,p1w2,p4w2,p12w4"
    a.n = a.n or (1000 if a.quick else 1500)
    a.lat_seconds = a.lat_seconds if a.lat_seconds is not None else (3.0 if a.quick else 4.0)
    a.kafka_n = a.kafka_n or (5000 if a.quick else 20000)
    a.rebalance_settle = a.rebalance_settle or 5.0
    a.eos_workers = [int(x) for x in (a.eos_workers or "1,2").split(",") if x]
    return a


def configs(a: argparse.Namespace) -> list[tuple[int, int]]:
    """Workers <= partitions (a partition has one consumer per group; more workers would idle: --quick runs
    p1w2 to show it). The baseline first."""
    if a.configs:
        out = []
        for c in a.configs.split(","):
            p, w = c.strip().lstrip("p").split("w")
            out.append((int(p), int(w)))
    else:
        out = [(p, w) for p in a.partitions for w in a.workers if w <= p]
    b = next(((p, w) for p, w in out if f"p{p}w{w}" == a.baseline), None)
    if b:
        out.remove(b)
        out.insert(0, b)
    return out


async def amain(ctx: Ctx) -> dict[str, Any]:
    import httpx

    from pagerstream.localrun import start_sandbox

    a = ctx.args
    phases = set(a.only.split(","))
    res: dict[str, Any] = {"notes": ctx.notes}
    admin = Admin()
    await admin.start()
    ctx.http = httpx.AsyncClient(timeout=30)
    try:
        if phases & {"matrix", "rebalance", "eos"}:
            ctx.sandbox = await asyncio.to_thread(start_sandbox, ctx.logdir)
            pl.CLEANUP.procs.append(ctx.sandbox.proc)
        records, _ = pl.make_raw_alerts(a.n, "distinct", ctx.run)
        if "kafka" in phases:
            say(f"0 Kafka ceiling: {a.kafka_n:,} records")
            res["kafka"] = await pl.bench_kafka(ctx.run, a.kafka_n)
            say(f"    produce {res['kafka']['produce_rate']:,.0f}/s, consume {res['kafka']['consume_rate']:,.0f}/s")
        if "matrix" in phases:
            cf = configs(a)
            res["matrix"] = []
            for i, (p, w) in enumerate(cf):
                say(f"1 Matrix {i + 1}/{len(cf)}: {p} partition(s), {w} worker(s)")
                r = await run_config(ctx, admin, p, w, records)
                res["matrix"].append(r)
                if "tp" in r:
                    t, lt = r["tp"], r.get("latency") or {}
                    say(f"    to PD {t['rate']:,.0f}/s, decide {pl.fmt(t['dec_rate'])}/s, PD p99 "
                        f"{fmt_ms((lt.get('pd') or {}).get('p99'))} ms @ {a.lat_rate:g}/s; CPU {t['cpu_text']}")
                    say(f"    times: start {r['start_s']:.0f} s, stable {r['stable_s']:.1f} s, burst {r['burst_s']:.0f} s, "
                        f"stop {r['stop_s']:.0f} s, config {r['total_s']:.0f} s")
                else:
                    say(f"    FAILED: {r.get('error', '')[:400]}")
        if "rebalance" in phases:
            if a.rebalance_rate is None:  # 40 % of what 2 workers delivered in the matrix: room to catch up
                two = [r["tp"]["rate"] for r in res.get("matrix", []) if r["workers"] == 2 and "tp" in r]
                a.rebalance_rate = round(max(10.0, 0.4 * max(two)), -1) if two else 100.0
            say(f"2 Rebalance: 2 workers, {a.rebalance_partitions} partitions, {a.rebalance_rate:g} alerts/s")
            try:
                res["rebalance"] = await phase_rebalance(ctx, admin)
            except Exception as ex:  # noqa: BLE001 - reported, the run goes on
                res["rebalance_error"] = f"{type(ex).__name__}: {ex}"[:500]
                ctx.notes.append(f"rebalance failed: {ex}"[:300])
                say(f"    FAILED: {ex}")
        if "eos" in phases and a.eos_workers:
            d = Path(tempfile.mkdtemp(prefix="pagerstream-eos-"))
            pl.CLEANUP.dirs.append(d)
            ctx.eos_launcher = d / "eos_worker.py"
            ctx.eos_launcher.write_text(EOS_LAUNCHER)
            res["eos"] = []
            for w in a.eos_workers:
                say(f"3 exactly_once: 4 partitions, {w} worker(s)" + (" (correctness check)" if w > 1 else ""))
                if w > 1:
                    r = await eos_check(ctx, admin, w)
                    res["eos"].append(r)
                    say(f"    sent {r.get('sent', 0)}, decided {r.get('decided', 0)}, delivered {r.get('delivered', 0)}, "
                        f"dead letters {r.get('dead_letters', 0)}, log errors {sum(r['errors_in_logs'].values())}"
                        + (f"; {r['error'][:200]}" if "error" in r else ""))
                    continue
                r = await run_config(ctx, admin, 4, w, records, eos=True, label=f"eos-p4w{w}")
                res["eos"].append(r)
                if "tp" in r:
                    say(f"    to PD {r['tp']['rate']:,.0f}/s, delivered {r['tp']['delivered']:,}/{r['tp']['n']:,}, "
                        f"DLQ {r['tp']['dead_letters']}, log errors {sum(r['errors_in_logs'].values())}")
                else:
                    say(f"    FAILED: {r.get('error', '')[:400]}")
    finally:
        await ctx.http.aclose()
        await admin.close()
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = " ".join(shlex.quote(x) for x in ["python", "bench/scale.py", *argv])
    signal.signal(signal.SIGTERM, pl._on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if not pl.stack_up():
        print("Kafka or Redis is not reachable; start them with: scripts/stack.sh start", file=sys.stderr)
        return 2
    run = "scale-" + dt.datetime.now().strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:4]
    logdir = Path(tempfile.mkdtemp(prefix=f"pagerstream-{run}-"))
    ctx = Ctx(run=run, logdir=logdir, catalog=str(REPO / "examples" / "catalog.yaml"), args=args)
    info = pl.env_info()
    print(f"pagerstream scale benchmark, run id {run}; logs in {logdir}", flush=True)
    t_q, said = time.monotonic(), 0.0
    while True:  # how busy is the machine before we start? optionally wait for it to calm down
        m = pl.CpuMeter({}).start()
        time.sleep(3)
        m.stop()
        pl.OTHER_LOAD.pop()
        busy = m.others or 0.0
        waited = time.monotonic() - t_q
        if busy < 15 or waited >= args.wait_quiet:
            print(f"other processes on the machine: {busy:.0f}% of a core"
                  + (f" (after waiting {waited:.0f} s)" if args.wait_quiet else ""), flush=True)
            break
        if waited - said >= 30 or not said:
            print(f"other processes use {busy:.0f}% of a core; waiting for quiet (up to {args.wait_quiet:g} s)",
                  flush=True)
            said = waited or 0.001
    res: dict[str, Any] = {}
    t0 = time.monotonic()
    failed = True
    try:
        res = asyncio.run(amain(ctx))
        failed = bool(ctx.notes)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything this run started", file=sys.stderr)
        return 130
    finally:
        pl.CLEANUP.stop_all()
        with contextlib.suppress(Exception):
            n = asyncio.run(pl.delete_run_topics(run))
            print(f"deleted {n} remaining topics of run {run}", flush=True)
        if failed or args.keep_logs:
            print(f"process logs kept in {logdir}", flush=True)
        else:
            import shutil
            shutil.rmtree(logdir, ignore_errors=True)
    res["total_s"] = time.monotonic() - t0
    ncpu = int(info["cpus"] or 1)
    try:
        res["prediction"] = predict(res, ctx, ncpu)
    except Exception as e:  # noqa: BLE001 - the table still prints
        res["prediction"] = [f"(no prediction: {type(e).__name__}: {e})"]
    text = report(res, ctx, info, command)
    print(text + f"total run time {res['total_s']:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "info": info, "results": res}, indent=2,
                                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
