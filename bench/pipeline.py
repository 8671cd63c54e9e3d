#!/usr/bin/env python3
"""End-to-end performance benchmark for pagerstream, on the local stack (see bench/README.md).

    python bench/pipeline.py            # full run, about 4 minutes
    python bench/pipeline.py --quick    # about 1 minute, smaller figures

One run measures, on the same broker and the same cores:
  1. Kafka's own produce / consume rate (aiokafka, no pagerstream code): the ceiling.
  2. Pipeline throughput of one worker (raw -> incidents), distinct and duplicate-heavy alerts.
  3. Produce -> PagerDuty-call latency at a steady rate, through the PD sandbox.
  4. HTTP ingress requests/s (POST /v2/enqueue), next to the same load generator against a
     do-nothing aiohttp endpoint.
Nothing here asserts; it prints figures, the targets and PASS/BELOW.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_PIPELINE = 5000.0  # alerts/s per worker
TARGET_P99_MS = 100.0  # at 1,000 alerts/s
TARGET_INGRESS = 3000.0  # requests/s
CONTEXT = ("context (from the issue, same machine class): Prometheus Alertmanager (Go, in memory) ingested "
           "~18,700 alerts/s; a Python alert server on PostgreSQL ~180 alerts/s")
PARTITIONS = 4
ROUTING_KEY = "BENCHR0UT1NGKEY00000000000000001"  # 32 characters, as PagerDuty requires
SERVICES = ["search", "auth", "inventory", "notifications", "billing", "shipping", "profile", "media"]
REGIONS = ["eu-west-1", "us-east-1", "ap-southeast-2"]
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


# --- process bookkeeping: everything started here is stopped here -----------------------------------

class Cleanup:
    def __init__(self) -> None:
        self.procs: list[Any] = []  # localrun.Proc
        self.popens: list[subprocess.Popen] = []
        self.dirs: list[Path] = []

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                p.stop(timeout=15)
        self.procs.clear()
        for p in reversed(self.popens):
            with contextlib.suppress(Exception):
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(5)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(5)
        self.popens.clear()
        # a worker still starting on a helper thread when we were interrupted is not in self.procs yet
        for pid in child_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while child_pids() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-1, os.WNOHANG)
            time.sleep(0.2)
        for pid in child_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.dirs.clear()

    def stop(self, proc: Any) -> None:
        with contextlib.suppress(Exception):
            proc.stop(timeout=15)
        if proc in self.procs:
            self.procs.remove(proc)


CLEANUP = Cleanup()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --- CPU accounting from /proc (what each process used during a stage) -------------------------------

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None, reaped_children: bool = False) -> float | None:
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        extra = int(fields[13]) + int(fields[14]) if reaped_children else 0  # cutime + cstime
        return (int(fields[11]) + int(fields[12]) + extra) / CLK  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def child_pids(marker: str = "") -> list[int]:
    """Pids of this process's children whose command line or environment mentions `marker`."""
    me, out = os.getpid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != me:
                continue
            if marker:
                text = (d / "cmdline").read_bytes() + b"\0" + (d / "environ").read_bytes()
                if marker.encode() not in text:
                    continue
            out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def child_pid(marker: str) -> int | None:
    pids = child_pids(marker)
    return pids[0] if pids else None


def kafka_pid() -> int | None:
    try:
        pid = int(Path(REPO / ".stack/kafka/kafka.pid").read_text().strip())
        return pid if Path(f"/proc/{pid}").exists() else None
    except (OSError, ValueError):
        return None


OTHER_LOAD: list[float] = []  # % of a core used by unrelated processes, per measured phase


def redis_pid() -> int | None:
    try:
        pid = int(Path(REPO / ".stack/redis/redis.pid").read_text().strip())
        return pid if Path(f"/proc/{pid}").exists() else None
    except (OSError, ValueError):
        return None


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine (all cores) from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / CLK


class CpuMeter:
    """CPU used by named processes between start() and stop(), in % of one core, plus what every
    process outside this benchmark and the Kafka/Redis stack used meanwhile (other people's work)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self.t0 = 0.0
        self.c0: dict[str, float | None] = {}
        self.result: dict[str, float] = {}
        self.others: float | None = None

    def _ours(self) -> dict[int, float | None]:
        # own children that already exited (e.g. wrk) show up in our cutime once reaped
        pids = {*child_pids(), *(p for p in (kafka_pid(), redis_pid()) if p)}
        return {os.getpid(): cpu_seconds(os.getpid(), reaped_children=True), **{p: cpu_seconds(p) for p in pids}}

    def start(self) -> CpuMeter:
        self.t0 = time.monotonic()
        self.c0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self.m0, self.o0 = machine_busy(), self._ours()
        return self

    def stop(self) -> dict[str, float]:
        wall = self.wall = max(1e-6, time.monotonic() - self.t0)
        for k, p in self.pids.items():
            c1, c0 = cpu_seconds(p), self.c0.get(k)
            if c1 is not None and c0 is not None:
                self.result[k] = 100.0 * (c1 - c0) / wall
        o1 = self._ours()
        ours = sum((o1[p] or 0) - (self.o0.get(p) or 0) for p in o1 if p in self.o0 and o1[p] is not None)
        self.others = max(0.0, 100.0 * (machine_busy() - self.m0 - ours) / wall)
        if wall >= 1.0:  # /proc counts in 10 ms ticks: shorter windows say little
            OTHER_LOAD.append(self.others)
        return self.result

    def text(self) -> str:
        if getattr(self, "wall", 0.0) < 1.0:
            return "n/a (window under 1 s)"
        t = ", ".join(f"{k} {v:.0f}%" for k, v in self.result.items())
        if self.others is not None:
            t += f"; other processes on the machine {self.others:.0f}%"
        return t + " (100% = one core)"


# --- alert bodies --------------------------------------------------------------------------------------

def trigger_body(i: int, dedup_key: str, *, routing_key: str = ROUTING_KEY, sent_at: float | None = None) -> dict:
    """A PagerDuty Events v2 trigger of realistic size (~670 bytes of JSON, ~750 as a RawAlert)."""
    svc = SERVICES[i % len(SERVICES)]
    region = REGIONS[i % len(REGIONS)]
    details: dict[str, Any] = {
        "error_rate": round(0.02 + (i % 50) / 1000, 3), "p99_ms": 250 + i % 900, "region": region,
        "pod": f"{svc}-{i % 17}-7c9f8d{i % 10}", "build": "2024.11.3-9a1b2c3",
    }
    if sent_at is not None:
        details["sent_at"] = sent_at
    return {
        "routing_key": routing_key, "event_action": "trigger", "dedup_key": dedup_key,
        "client": "bench-monitor", "client_url": f"https://monitoring.example.com/alerts/{svc}",
        "links": [{"href": f"https://grafana.example.com/d/{svc}-overview", "text": "Dashboard"}],
        "payload": {
            "summary": f"High 5xx error rate on {svc} in {region} (instance {i % 97})",
            "source": f"{svc}-{i % 5}.{region}.prod.example.com", "severity": ("critical", "error", "warning")[i % 3],
            "component": svc, "group": f"prod-{region}", "class": "http-5xx", "custom_details": details,
        },
    }


def raw_record(body: dict, codec: Any) -> tuple[bytes, bytes]:
    """(key, value) as the ingress writes them to alerts.raw."""
    from pagerstream.processors.incident import short_hash

    key = f"{short_hash(body['routing_key'])}:{body['dedup_key']}".encode()
    rec = {"id": uuid.uuid4().hex, "source": "pagerduty_events_v2", "received_at": int(time.time() * 1000),
           "content_type": "application/json", "body": json.dumps(body, separators=(",", ":")).encode(),
           "attributes": {}}
    return key, codec.encode(rec)


def make_raw_alerts(n: int, mix: str, run: str) -> tuple[list[tuple[bytes, bytes]], int]:
    """n encoded RawAlerts and the number of distinct dedup keys among them."""
    from pagerstream.schemas import AvroCodec

    codec = AvroCodec("raw_alert")
    rnd = random.Random(42)
    out, keys = [], set()
    for i in range(n):
        if mix == "distinct" or rnd.random() >= 0.9:
            dk = f"{run}-{mix}-{i}"
        else:  # 90 %: one of 100 hot keys
            dk = f"{run}-{mix}-hot-{rnd.randrange(100)}"
        keys.add(dk)
        out.append(raw_record(trigger_body(i, dk), codec))
    return out, len(keys)


# --- Kafka helpers -------------------------------------------------------------------------------------

async def create_topic(name: str, partitions: int = PARTITIONS) -> None:
    from aiokafka.admin import NewTopic

    from pagerstream.connections import kafka_admin

    admin = kafka_admin(BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
        for _ in range(50):
            if name in await admin.list_topics():
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def delete_run_topics(run: str) -> int:
    """Delete the topics this run created (all carry the run id); other runs' topics are left alone."""
    from pagerstream.connections import kafka_admin

    admin = kafka_admin(BOOTSTRAP)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(run)]
        if mine:
            await admin.delete_topics(mine)
        return len(mine)
    finally:
        await admin.close()


def producer(linger_ms: int = 5):
    from pagerstream.connections import kafka_producer

    # The settings pagerstream's own producers use: acks=all, idempotent, a few ms of linger.
    return kafka_producer(BOOTSTRAP, acks="all", enable_idempotence=True, linger_ms=linger_ms,
                          max_batch_size=64 * 1024)


async def produce_all(topic: str, records: list[tuple[bytes, bytes]]) -> float:
    """Send everything as fast as the producer takes it; return seconds until the last ack."""
    p = producer()
    await p.start()
    try:
        t0 = time.perf_counter()
        futs = [await p.send(topic, v, key=k) for k, v in records]
        await asyncio.gather(*futs)
        return time.perf_counter() - t0
    finally:
        await p.stop()


class OffsetWatch:
    """Sum of end offsets of some topics, polled without reading the records."""

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics
        self.consumer: Any = None
        self.tps: dict[str, list[Any]] = {}

    async def start(self) -> None:
        from aiokafka import TopicPartition

        from pagerstream.connections import kafka_consumer

        self.consumer = kafka_consumer(BOOTSTRAP, group_id=None, enable_auto_commit=False)
        await self.consumer.start()
        for t in self.topics:
            parts = None
            for _ in range(100):
                parts = self.consumer.partitions_for_topic(t)
                if parts:
                    break
                await self.consumer._client.force_metadata_update()  # topic may have just been created
                await asyncio.sleep(0.1)
            self.tps[t] = [TopicPartition(t, p) for p in sorted(parts or [])]

    async def counts(self) -> dict[str, int]:
        tps = [tp for v in self.tps.values() for tp in v]
        ends = await self.consumer.end_offsets(tps)
        return {t: sum(ends[tp] for tp in v) for t, v in self.tps.items()}

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()


# --- 1. Kafka baseline ---------------------------------------------------------------------------------

async def bench_kafka(run: str, n: int) -> dict[str, Any]:
    from pagerstream.connections import kafka_consumer

    topic = f"{run}-kafka-baseline"
    await create_topic(topic)
    records, _ = make_raw_alerts(n, "distinct", run)
    size = sum(len(v) for _, v in records) / n
    cpu = CpuMeter({"kafka": kafka_pid(), "bench(producer)": os.getpid()}).start()
    secs = await produce_all(topic, records)
    cpu.stop()
    prod_cpu = cpu.text()

    c = kafka_consumer(BOOTSTRAP, topic, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                       fetch_max_bytes=50 * 2**20, max_partition_fetch_bytes=4 * 2**20)
    await c.start()
    cpu = CpuMeter({"kafka": kafka_pid(), "bench(consumer)": os.getpid()}).start()
    got, t_first, t0 = 0, None, time.perf_counter()
    try:
        while got < n and time.perf_counter() - t0 < 120:
            batch = await c.getmany(timeout_ms=500, max_records=10_000)
            for msgs in batch.values():
                if msgs and t_first is None:
                    t_first = time.perf_counter()
                got += len(msgs)
        t_end = time.perf_counter()
    finally:
        await c.stop()
    cpu.stop()
    return {"n": n, "record_bytes": size, "produce_s": secs, "produce_rate": n / secs,
            "consume_n": got, "consume_s": t_end - t0, "consume_rate": got / (t_end - t0),
            "produce_cpu": prod_cpu, "consume_cpu": cpu.text()}


# --- 2. pipeline throughput ----------------------------------------------------------------------------

@dataclass
class Ctx:
    run: str
    logdir: Path
    catalog: str
    keep_logs: bool = False
    notes: list[str] = field(default_factory=list)


def new_worker_env(ctx: Ctx, name: str, events_url: str | None = None,
                   extra: dict[str, str] | None = None) -> tuple[dict[str, str], str, Path]:
    from pagerstream.localrun import worker_env

    prefix = f"{ctx.run}-{name}."
    datadir = ctx.logdir / f"data-{name}"
    CLEANUP.dirs.append(datadir)
    env = worker_env(app_id=f"{ctx.run}-{name}", prefix=prefix, datadir=datadir, events_url=events_url,
                     extra={"PAGERSTREAM_PARTITIONS": str(PARTITIONS), **(extra or {})})
    return env, prefix, datadir


def launch_worker(ctx: Ctx, env: dict[str, str], name: str, forwarder: bool) -> Any:
    from pagerstream.localrun import start_worker

    w = start_worker(env, ctx.logdir, catalog=ctx.catalog, name=name,
                     extra_args=[] if forwarder else ["--no-forwarder"])
    CLEANUP.procs.append(w.proc)
    return w


async def bench_pipeline(ctx: Ctx, n: int, mix: str) -> dict[str, Any]:
    from pagerstream.streams.topics import create_topics

    name = f"tp-{mix}"
    env, prefix, datadir = new_worker_env(ctx, name)
    await create_topics(BOOTSTRAP, prefix, PARTITIONS, 1)
    records, distinct = make_raw_alerts(n, mix, ctx.run)
    pre_s = await produce_all(prefix + "alerts.raw", records)
    del records

    t_inc, t_out, t_dlq, t_norm = (prefix + x for x in ("incidents", "pagerduty.outbox", "alerts.dead-letter",
                                                         "alerts.normalized"))
    watch = OffsetWatch([t_inc, t_out, t_dlq, t_norm])
    await watch.start()
    t_spawn = time.perf_counter()
    # start_worker blocks until /readyz answers; run it on a thread and watch the offsets meanwhile
    starter = asyncio.ensure_future(asyncio.to_thread(launch_worker, ctx, env, name, False))
    samples: list[tuple[float, int]] = []
    t_ready = t_first = t_done = None
    first_count = 0
    limit = max(120.0, n / 200)
    cpu: CpuMeter | None = None
    w = None
    try:
        while True:
            now = time.perf_counter()
            if t_ready is None and starter.done():
                w = starter.result()  # raises if the worker did not start
                t_ready = now
            cnt = (await watch.counts())[t_inc]
            samples.append((now, cnt))
            if cnt > 0 and t_first is None:
                t_first, first_count = now, cnt
                cpu = CpuMeter({"worker": child_pid(f"{ctx.run}-{name}"), "kafka": kafka_pid(),
                                "bench": os.getpid()}).start()
            if cnt >= n:
                t_done = now
                break
            if now - t_spawn > limit:
                break
            await asyncio.sleep(0.1)
        if cpu:
            cpu.stop()
        if w is None:
            w = await starter
        await asyncio.sleep(1.5)  # let the outbox and dead-letter topics settle
        final = await watch.counts()
        stage = _stage_times(w.metrics())
        log_tail = w.proc.log_tail(15)
    finally:
        await watch.stop()
        if w is not None:
            CLEANUP.stop(w.proc)
        shutil.rmtree(datadir, ignore_errors=True)
    end = t_done or samples[-1][0]
    done = final[t_inc]
    rate = (min(done, n) - first_count) / (end - t_first) if t_first and end > t_first else 0.0
    return {
        "mix": mix, "n": n, "distinct_keys": distinct, "preproduce_s": pre_s,
        "ready_s": (t_ready - t_spawn) if t_ready else None,
        "first_s": (t_first - t_spawn) if t_first else None, "done_s": (t_done - t_spawn) if t_done else None,
        "incidents": done, "outbox": final[t_out], "dead_letters": final[t_dlq], "normalized": final[t_norm],
        "rate": rate, "rate_from_ready": (min(done, n) / (end - t_ready)) if t_ready and end > t_ready else None,
        "steady_rate": _steady_rate(samples, n), "complete": t_done is not None,
        "cpu": cpu.text() if cpu else "", "stage_ms": stage,
        # CPU the worker spent per alert: less sensitive to other load than the wall-clock rate
        "worker_cpu_ms": (10 * cpu.result["worker"] * cpu.wall / (min(done, n) - first_count)
                          if cpu and "worker" in cpu.result and min(done, n) > first_count else None),
        "log_tail": log_tail, "curve": _curve(samples, t_first),
    }


def _steady_rate(samples: list[tuple[float, int]], n: int) -> float | None:
    """Rate between 10 % and 90 % of n: the middle of the run, without warm-up and tail."""
    lo = next(((t, c) for t, c in samples if c >= 0.1 * n), None)
    hi = next(((t, c) for t, c in samples if c >= 0.9 * n), None)
    if not lo or not hi or hi[0] <= lo[0]:
        return None
    return (hi[1] - lo[1]) / (hi[0] - lo[0])


def _stage_times(metrics: str) -> dict[str, float]:
    """Mean time per record inside each agent's own code (pagerstream_stage_latency_seconds), in ms."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("pagerstream_stage_latency_seconds_sum{"):
            st = line.split('stage="', 1)[1].split('"', 1)[0]
            sums[st] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("pagerstream_stage_latency_seconds_count{"):
            st = line.split('stage="', 1)[1].split('"', 1)[0]
            counts[st] = float(line.rsplit(" ", 1)[1])
    return {k: 1000 * sums[k] / counts[k] for k in sums if counts.get(k)}


def _curve(samples: list[tuple[float, int]], t0: float | None) -> list[tuple[float, int]]:
    """Count once per second from the first record, to show warm-up and steady state."""
    if t0 is None:
        return []
    out, next_t = [], 0.0
    for t, c in samples:
        if t >= t0 and t - t0 >= next_t:
            out.append((round(t - t0, 1), c))
            next_t += 1.0
    return out


# --- 3. latency at a steady rate ----------------------------------------------------------------------

def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


async def paced_produce(topic: str, rate: float, seconds: float, run: str, tag: str,
                        routing_key: str) -> tuple[int, float]:
    """Produce distinct triggers at `rate`/s for `seconds`; sent_at = when each was handed to the producer."""
    from pagerstream.schemas import AvroCodec

    codec = AvroCodec("raw_alert")
    p = producer()
    await p.start()
    futs = []
    try:
        t0 = time.perf_counter()
        i = 0
        total = int(rate * seconds)
        while i < total:
            due = int((time.perf_counter() - t0) * rate) + 1
            while i < min(due, total):
                body = trigger_body(i, f"{run}-{tag}-{i}", routing_key=routing_key, sent_at=time.time())
                k, v = raw_record(body, codec)
                futs.append(await p.send(topic, v, key=k))
                i += 1
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - t0
        await asyncio.gather(*futs)
        return i, elapsed
    finally:
        await p.stop()


async def bench_latency(ctx: Ctx, rates: list[tuple[float, float]], drain_limit: float) -> list[dict[str, Any]]:
    """One sandbox and one worker with the forwarder; one steady step per (rate, seconds), in order."""
    import httpx

    from pagerstream.localrun import start_sandbox

    sb = await asyncio.to_thread(start_sandbox, ctx.logdir)
    CLEANUP.procs.append(sb.proc)
    # 100000 (as first planned) is rejected by config.py (max 10000); 10000/s is still 10x the load.
    env, prefix, datadir = new_worker_env(ctx, "lat", events_url=sb.url,
                                          extra={"PAGERSTREAM_PD_RATE": "10000", "PAGERSTREAM_PD_BURST": "10000"})
    w = None
    watch = OffsetWatch([prefix + t for t in ("alerts.raw", "alerts.normalized", "incidents", "pagerduty.outbox")])
    out = []
    try:
        w = await asyncio.to_thread(launch_worker, ctx, env, "worker-lat", True)
        await watch.start()
        async with httpx.AsyncClient(timeout=60) as http:
            # warm-up: 100 alerts all the way through (connections, assignment), then wipe the sandbox
            rk = ("WARM" + uuid.uuid4().hex.upper())[:32]
            await paced_produce(prefix + "alerts.raw", 100, 1.0, ctx.run, "warm", rk)
            t_w = time.monotonic()
            while (await http.get(f"{sb.url}/sandbox/stats")).json()["requests"] < 100 and time.monotonic() - t_w < 60:
                await asyncio.sleep(0.5)
            for i, (rate, seconds) in enumerate(rates):
                await http.post(f"{sb.url}/sandbox/reset")
                out.append(await _latency_step(ctx, http, sb, w, watch, prefix, rate, seconds, drain_limit, i))
    finally:
        await watch.stop()
        if w:
            CLEANUP.stop(w.proc)
        CLEANUP.stop(sb.proc)
        shutil.rmtree(datadir, ignore_errors=True)
    return out


async def _latency_step(ctx: Ctx, http: Any, sb: Any, w: Any, watch: OffsetWatch, prefix: str, rate: float,
                        seconds: float, drain_limit: float, step_no: int) -> dict[str, Any]:
    rk = ("LAT" + uuid.uuid4().hex.upper())[:32]  # a routing key of this step only
    progress: list[tuple[float, dict[str, int]]] = []

    async def sample(t0: float) -> dict[str, int]:
        c = {k.removeprefix(prefix): v for k, v in (await watch.counts()).items()}
        c["delivered"] = int((await http.get(f"{sb.url}/sandbox/stats")).json()["requests"])
        progress.append((time.perf_counter() - t0, c))
        return c

    base = {k.removeprefix(prefix): v for k, v in (await watch.counts()).items()}
    cpu = CpuMeter({"worker": w.proc.popen.pid, "kafka": kafka_pid(), "sandbox": sb.proc.popen.pid,
                    "bench": os.getpid()}).start()
    t0 = time.perf_counter()
    sender = asyncio.ensure_future(paced_produce(prefix + "alerts.raw", rate, seconds, ctx.run, f"lat{step_no}", rk))
    while not sender.done():
        await asyncio.wait([sender], timeout=1.0)
        if not sender.done():
            await sample(t0)
    sent, elapsed = sender.result()
    t_last_send = time.time()
    cpu.stop()
    at_end = await sample(t0)
    # drain: until everything arrived, nothing moved for 10 s, or the drain limit
    last, last_change, t_d = -1, time.monotonic(), time.monotonic()
    w_cpu0 = cpu_seconds(w.proc.popen.pid) or 0.0
    while True:
        cnt = (await sample(t0))["delivered"]
        if cnt != last:
            last, last_change = cnt, time.monotonic()
        if cnt >= sent or time.monotonic() - last_change > 10 or time.monotonic() - t_d > drain_limit:
            break
        await asyncio.sleep(0.5)
    drain_s = time.monotonic() - t_d
    t_stop = time.time()
    worker_cpu_s = (cpu.result.get("worker", 0.0) * cpu.wall / 100) + (cpu_seconds(w.proc.popen.pid) or 0.0) - w_cpu0
    reqs = (await http.get(f"{sb.url}/sandbox/requests", params={"routing_key": rk})).json()["requests"]

    lat: list[tuple[float, float]] = []  # (sent_at, latency s)
    statuses: dict[str, int] = {}
    for q in reqs:
        statuses[str(q.get("status"))] = statuses.get(str(q.get("status")), 0) + 1
        try:
            sent_at = float(q["body"]["payload"]["custom_details"]["sent_at"])
        except (KeyError, TypeError, ValueError):
            continue
        lat.append((sent_at, q["time"] - sent_at))
    lat.sort()
    # alerts not delivered by the end count as "at least (end - sent)": percentiles become lower bounds
    missing = max(0, sent - len(lat))
    ms = [x * 1000 for _, x in lat] + [float("inf")] * missing
    recv = sorted(q["time"] for q in reqs)
    series = []
    if lat:
        t_first = lat[0][0]
        step = max(1, int(seconds) // 5)
        for s0 in range(0, int(seconds), step):
            win = [x * 1000 for t, x in lat if s0 <= t - t_first < s0 + step]
            if win:
                series.append((s0, len(win), pct(win, 50), pct(win, 99)))
    backlog = {k: at_end[k] - base.get(k, 0) for k in ("alerts.raw", "alerts.normalized", "incidents",
                                                         "pagerduty.outbox")}
    backlog["delivered"] = at_end["delivered"]
    hops = await hop_breakdown(prefix, f"{ctx.run}-lat{step_no}-", reqs)
    return {
        "hops": hops,
        "target_rate": rate, "seconds": seconds, "sent": sent, "produce_rate": sent / elapsed,
        "delivered": len(lat), "missing": missing, "statuses": statuses, "drain_s": drain_s,
        "wait_bound_ms": (t_stop - t_last_send) * 1000,
        "delivered_rate": (len(recv) - 1) / (recv[-1] - recv[0]) if len(recv) > 1 else 0.0,
        "p50": pct(ms, 50), "p95": pct(ms, 95), "p99": pct(ms, 99), "max": max(ms) if ms else float("nan"),
        "series": series, "cpu": cpu.text(), "at_end_of_sending": backlog,
        # worker CPU over sending + drain per delivered alert (an upper bound when some are missing)
        "worker_cpu_ms": 1000 * worker_cpu_s / len(lat) if lat else None,
    }


async def hop_breakdown(prefix: str, tag: str, reqs: list[dict]) -> dict[str, tuple[float, float]]:
    """Where the time goes, per delivered alert, from Kafka record timestamps (CreateTime = when the
    worker produced it): sent -> normalized record, -> outbox record, -> PagerDuty call. ms p50/p99."""
    from pagerstream.connections import kafka_consumer

    async def stamps(topic: str) -> dict[str, float]:
        c = kafka_consumer(BOOTSTRAP, topic, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
        await c.start()
        out: dict[str, float] = {}
        try:
            ends = await c.end_offsets(list(c.assignment()))

            async def behind() -> bool:
                for tp, end in ends.items():
                    if await c.position(tp) < end:
                        return True
                return False

            while await behind():
                for msgs in (await c.getmany(timeout_ms=1000, max_records=5000)).values():
                    for m in msgs:
                        k = (m.key or b"").decode("utf-8", "replace").split(":", 1)[-1]
                        if k.startswith(tag):
                            out.setdefault(k, m.timestamp / 1000)
        finally:
            await c.stop()
        return out

    norm, outbox = await stamps(prefix + "alerts.normalized"), await stamps(prefix + "pagerduty.outbox")
    a, b, c = [], [], []
    for q in reqs:
        try:
            dk, sent = q["body"]["dedup_key"], float(q["body"]["payload"]["custom_details"]["sent_at"])
        except (KeyError, TypeError, ValueError):
            continue
        if dk in norm and dk in outbox:
            a.append((norm[dk] - sent) * 1000)
            b.append((outbox[dk] - norm[dk]) * 1000)
            c.append((q["time"] - outbox[dk]) * 1000)
    names = ("sent -> normalized (raw fetch + normalize)", "normalized -> outbox (fetch + incidents)",
             "outbox -> PagerDuty call (fetch + forward)")
    return {n: (pct(x, 50), pct(x, 99)) for n, x in zip(names, (a, b, c)) if x}


# --- 4. HTTP ingress -----------------------------------------------------------------------------------

WRK_LUA = r"""
-- POST a valid PagerDuty Events v2 trigger with a new dedup_key per request; count status codes.
local head = %s
local tail = %s
local n = 0
local tid = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  statuses = {}
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  n = n + 1
  return wrk.format(nil, nil, nil, head .. tid .. "-" .. n .. tail)
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local out = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do out[k] = (out[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(out) do table.insert(parts, string.format('"%%d": %%d', k, v)) end
  io.write(string.format('WRKJSON {"requests": %%d, "seconds": %%.3f, "errors": %%d, "p50_ms": %%.2f, '
    .. '"p99_ms": %%.2f, "statuses": {%%s}}\n', summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, table.concat(parts, ", ")))
end
"""

TRIVIAL_SERVER = r"""
import sys
from aiohttp import web

async def ok(request):
    await request.read()
    return web.json_response({"status": "success", "message": "Event processed"}, status=202)

app = web.Application()
app.router.add_post("/v2/enqueue", ok)
app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def lua_script(ctx: Ctx) -> Path:
    body = json.dumps(trigger_body(7, "@@DK@@"), separators=(",", ":"))
    head, tail = body.split("@@DK@@")
    head += f"{ctx.run}-http-"
    path = ctx.logdir / "post.lua"
    path.write_text(WRK_LUA % (json.dumps(head), json.dumps(tail)))  # JSON strings are valid Lua strings here
    return path


def run_wrk(url: str, seconds: float, conns: int, script: Path) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, int(seconds))}s", "--timeout", "10s", "-s", str(script), url]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    CLEANUP.popens.append(p)
    out, _ = p.communicate(timeout=seconds + 60)
    CLEANUP.popens.remove(p)
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            r = json.loads(line[8:])
            r["rate"] = r["requests"] / r["seconds"]
            r["cmd"] = " ".join(cmd)
            return r
    raise RuntimeError("wrk gave no result:\n" + out)


async def run_python_load(url: str, seconds: float, conns: int, ctx: Ctx) -> dict[str, Any]:
    """Fallback load generator when wrk is not installed: aiohttp, `conns` keep-alive connections."""
    import aiohttp

    head, tail = json.dumps(trigger_body(7, "@@DK@@"), separators=(",", ":")).split("@@DK@@")
    statuses: dict[str, int] = {}
    lats: list[float] = []
    n = 0
    deadline = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=conn, headers={"Content-Type": "application/json"}) as s:
        async def one_conn(c: int) -> None:
            nonlocal n
            while time.perf_counter() < deadline:
                n += 1
                t = time.perf_counter()
                async with s.post(url, data=f"{head}{ctx.run}-http-{c}-{n}{tail}") as r:
                    await r.read()
                    statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
                lats.append((time.perf_counter() - t) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(one_conn(c) for c in range(conns)), return_exceptions=True)
        el = time.perf_counter() - t0
    total = sum(statuses.values())
    return {"requests": total, "seconds": el, "errors": 0, "p50_ms": pct(lats, 50), "p99_ms": pct(lats, 99),
            "statuses": statuses, "rate": total / el, "cmd": f"python aiohttp client, {conns} connections"}


async def load(url: str, seconds: float, conns: int, ctx: Ctx, script: Path | None) -> dict[str, Any]:
    if script is not None:
        c0, t0 = cpu_seconds(os.getpid(), True) - cpu_seconds(os.getpid()), time.monotonic()  # type: ignore
        r = await asyncio.to_thread(run_wrk, url, seconds, conns, script)
        c1 = cpu_seconds(os.getpid(), True) - cpu_seconds(os.getpid())  # type: ignore
        r["generator_cpu"] = 100 * (c1 - c0) / (time.monotonic() - t0)
        return r
    return await run_python_load(url, seconds, conns, ctx)


def _with_generator(text: str, r: dict[str, Any]) -> str:
    return f"wrk {r['generator_cpu']:.0f}%, {text}" if "generator_cpu" in r else text


async def bench_ingress(ctx: Ctx, seconds: float, conns: int, warm: float) -> dict[str, Any]:
    from pagerstream.localrun import free_port, start, wait_http

    script = lua_script(ctx) if shutil.which("wrk") else None
    # baseline: the same load generator against an aiohttp handler that only answers 202
    port = free_port()
    srv = start("trivial-202", [sys.executable, "-c", TRIVIAL_SERVER, str(port)], dict(os.environ), ctx.logdir)
    CLEANUP.procs.append(srv)
    try:
        if not await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz", 20):
            raise RuntimeError("trivial server did not start:\n" + srv.log_tail())
        url = f"http://127.0.0.1:{port}/v2/enqueue"
        await load(url, warm, conns, ctx, script)  # warm-up
        cpu = CpuMeter({"server": srv.popen.pid}).start()
        base = await load(url, seconds, conns, ctx, script)
        cpu.stop()
        base["cpu"] = _with_generator(cpu.text(), base)
    finally:
        CLEANUP.stop(srv)

    env, prefix, datadir = new_worker_env(ctx, "http")
    w = None
    try:
        w = await asyncio.to_thread(launch_worker, ctx, env, "worker-http", False)
        watch = OffsetWatch([prefix + "alerts.raw"])
        await watch.start()
        url = w.url + "/v2/enqueue"
        await load(url, warm, conns, ctx, script)  # warm-up
        before = (await watch.counts())[prefix + "alerts.raw"]
        cpu = CpuMeter({"worker": w.proc.popen.pid, "kafka": kafka_pid()}).start()
        res = await load(url, seconds, conns, ctx, script)
        cpu.stop()
        res["cpu"] = _with_generator(cpu.text(), res)
        if "worker" in cpu.result and res["requests"]:
            res["worker_cpu_ms"] = 10 * cpu.result["worker"] * cpu.wall / res["requests"]
        await asyncio.sleep(1.0)
        res["in_kafka"] = (await watch.counts())[prefix + "alerts.raw"] - before
        await watch.stop()
        res["log_tail"] = w.proc.log_tail(10)
    finally:
        if w:
            CLEANUP.stop(w.proc)
        shutil.rmtree(datadir, ignore_errors=True)
    return {"baseline": base, "ingress": res, "generator": "wrk (1 thread)" if script else "python aiohttp",
            "conns": conns, "seconds": seconds, "warm": warm}


# --- report --------------------------------------------------------------------------------------------

def verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "BELOW"


def fmt(x: Any, nd: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def fmt_ms(x: float, lt: dict[str, Any]) -> str:
    """A latency in ms; an undelivered alert shows as a lower bound."""
    if x == float("inf"):
        return f"> {lt['wait_bound_ms'] / 1000:,.0f} s" if lt.get("wait_bound_ms") else "not delivered"
    return f"{fmt(x, 1)} ms"


def env_info() -> dict[str, str]:
    def sh(*a: str) -> str:
        try:
            return subprocess.run(a, capture_output=True, text=True, timeout=5, cwd=REPO, check=False).stdout.strip()
        except Exception:
            return ""

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    kver = ""
    libs = REPO / ".stack/kafka-libs"
    if libs.is_dir():
        jars = sorted(p.name for p in libs.glob("kafka_*.jar")) or sorted(p.name for p in libs.glob("kafka-server-*.jar"))
        kver = jars[0] if jars else ""
    import aiokafka

    try:
        import faust
        fver = faust.__version__
    except Exception:
        fver = "?"
    return {"date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "commit": sh("git", "rev-parse", "--short", "HEAD") + (" (+local changes)" if sh("git", "status", "--porcelain") else ""),
            "cpus": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version(),
            "aiokafka": aiokafka.__version__, "faust": fver, "kafka": kver or "?"}


def report(res: dict[str, Any], args: argparse.Namespace, info: dict[str, str], command: str) -> str:
    L: list[str] = []
    w = L.append
    w("")
    w("=" * 100)
    w("pagerstream benchmark" + ("  (--quick)" if args.quick else ""))
    w(f"command : {command}")
    w(f"date    : {info['date']}   commit {info['commit']}")
    w(f"machine : {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, aiokafka {info['aiokafka']}, "
      f"faust-streaming {info['faust']}, broker {info['kafka']} on {BOOTSTRAP} (single node)")
    w("NOTE    : broker, worker, PD sandbox and load generator all share these "
      f"{info['cpus']} cores; no figure here has a core to itself.")
    if OTHER_LOAD:
        worst = max(OTHER_LOAD)
        w(f"LOAD    : processes outside this benchmark and the Kafka/Redis stack used up to {worst:.0f}% of a core "
          f"during the measured phases" + ("  -> WARNING: the machine was not quiet; figures are disturbed"
                                          if worst > 20 else " (quiet)"))
    w("=" * 100)
    rows: list[tuple[str, str, str, str]] = []

    k = res.get("kafka")
    if k:
        rows.append(("1 Kafka produce (aiokafka, acks=all, idempotent, linger 5 ms)",
                     f"{fmt(k['produce_rate'])} rec/s", "ceiling", ""))
        rows.append(("1 Kafka consume (aiokafka, no group)", f"{fmt(k['consume_rate'])} rec/s", "ceiling", ""))
    for key in ("tp_distinct", "tp_dupes"):
        t = res.get(key)
        if t:
            label = "distinct keys" if t["mix"] == "distinct" else "90% repeats of 100 keys"
            rows.append((f"2 Pipeline raw->incidents, 1 worker, {label}", f"{fmt(t['rate'])} /s",
                         f">= {fmt(TARGET_PIPELINE)}", verdict(t["rate"], TARGET_PIPELINE)
                         + ("" if t["complete"] else " (incomplete)")))
    lt = res.get("latency")
    for step in res.get("latency_steps", []):
        main_step = step is lt
        rows.append((f"3 Latency produce->PD call @ {fmt(step['target_rate'])}/s, p99",
                     fmt_ms(step["p99"], step), f"<= {fmt(TARGET_P99_MS)} ms" if main_step else "(lower rate)",
                     (verdict(step["p99"], TARGET_P99_MS, higher_is_better=False) if main_step else "")
                     + ("" if not step["missing"] else f" ({fmt(step['missing'])} not delivered in time)")))
        rows.append((f"3   delivered to PagerDuty while {fmt(step['target_rate'])}/s was offered",
                     f"{fmt(step['delivered_rate'])}/s", "", "keeps up" if step["delivered_rate"] >= 0.97 *
                     step["target_rate"] and not step["missing"] else "FALLS BEHIND"))
    ig = res.get("ingress")
    if ig:
        only202 = set(ig["ingress"]["statuses"]) <= {"202"}
        rows.append((f"4 Ingress POST /v2/enqueue ({ig['generator']}, {ig['conns']} conns)",
                     f"{fmt(ig['ingress']['rate'])} req/s", f">= {fmt(TARGET_INGRESS)}",
                     verdict(ig["ingress"]["rate"], TARGET_INGRESS) + ("" if only202 else " (non-202!)")))
        rows.append(("4 Same load generator vs do-nothing aiohttp 202", f"{fmt(ig['baseline']['rate'])} req/s",
                     "generator ceiling", ""))
    w("")
    w(f"{'figure':<66} {'measured':>16}  {'target':>18}  verdict")
    w("-" * 112)
    for a, b, c, d in rows:
        w(f"{a:<66} {b:>16}  {c:>18}  {d}")
    w("-" * 112)
    w(CONTEXT)

    w("")
    if k:
        w(f"[1] Kafka baseline: {fmt(k['n'])} records of {k['record_bytes']:.0f} bytes (encoded RawAlerts) into a "
          f"fresh {PARTITIONS}-partition topic")
        w(f"    produce {fmt(k['produce_rate'])} rec/s ({k['produce_s']:.2f} s, until the last ack); CPU: {k['produce_cpu']}")
        w(f"    consume {fmt(k['consume_rate'])} rec/s ({fmt(k['consume_n'])} records, {k['consume_s']:.2f} s from "
          f"consumer start); CPU: {k['consume_cpu']}")
    for key in ("tp_distinct", "tp_dupes"):
        t = res.get(key)
        if not t:
            continue
        w(f"[2] Pipeline, {t['mix']}: {fmt(t['n'])} raw alerts ({fmt(t['distinct_keys'])} distinct dedup keys) "
          f"pre-produced in {t['preproduce_s']:.1f} s, then one worker --no-forwarder started")
        w(f"    worker spawn -> ready {fmt(t['ready_s'], 1)} s, -> first incident {fmt(t['first_s'], 1)} s, "
          f"-> all {fmt(t['done_s'], 1)} s" + ("" if t["complete"] else "  (NOT all processed within the limit)"))
        w(f"    rate from the first incident record to the Nth (excludes start-up): {fmt(t['rate'])} alerts/s; "
          f"from /readyz: {fmt(t['rate_from_ready'])}/s; steady (10%..90% of N): {fmt(t['steady_rate'])}/s")
        w(f"    incidents {fmt(t['incidents'])}, normalized {fmt(t['normalized'])} (incl. ticks), outbox (pages) "
          f"{fmt(t['outbox'])}, dead letters {fmt(t['dead_letters'])}; CPU while processing: {t['cpu']}")
        if t.get("worker_cpu_ms"):
            w(f"    worker CPU per alert {t['worker_cpu_ms']:.2f} ms -> at most ~{1000 / t['worker_cpu_ms']:,.0f} alerts/s "
              "even with one whole core to itself (the worker is one Python process)")
        if t.get("stage_ms"):
            w("    mean wall time per record in each agent body incl. its awaits (worker's stage_latency histogram): "
              + ", ".join(f"{k} {v:.2f} ms" for k, v in t["stage_ms"].items()))
        if t["curve"]:
            pts = t["curve"]
            step = max(1, len(pts) // 8)
            w("    incidents over time (s from first: count): "
              + ", ".join(f"{s:g}: {c:,}" for s, c in pts[::step]))
    for lt in res.get("latency_steps", []):
        w(f"[3] Latency: {fmt(lt['sent'])} distinct triggers at a target {fmt(lt['target_rate'])}/s for "
          f"{lt['seconds']:g} s (achieved produce rate {fmt(lt['produce_rate'])}/s); one worker with the forwarder, "
          "PD rate limit raised to 10000/s")
        w(f"    delivered to the sandbox {fmt(lt['delivered'])}/{fmt(lt['sent'])} at {fmt(lt['delivered_rate'])}/s "
          f"(waited {lt['drain_s']:.1f} s after the last send, limit {args.drain_limit:g} s); "
          f"sandbox statuses {lt['statuses']}")
        w(f"    latency = sandbox receive time - custom_details.sent_at: p50 {fmt_ms(lt['p50'], lt)}, "
          f"p95 {fmt_ms(lt['p95'], lt)}, p99 {fmt_ms(lt['p99'], lt)}, max {fmt_ms(lt['max'], lt)}")
        e = lt["at_end_of_sending"]
        w(f"    when the last alert was sent: alerts.raw {fmt(e['alerts.raw'])}, normalized {fmt(e['alerts.normalized'])}"
          f" (incl. ticks), incidents {fmt(e['incidents'])}, outbox {fmt(e['pagerduty.outbox'])}, "
          f"delivered {fmt(e['delivered'])}")
        if lt["series"]:
            w("    latency by send time (second: n, p50 ms, p99 ms): " + "; ".join(
                f"{s}: {n}, {a:,.0f}, {b:,.0f}" for s, n, a, b in lt["series"]))
        if lt.get("hops"):
            w("    per hop, from Kafka record timestamps (p50 / p99 ms): " + "; ".join(
                f"{k} {a:,.0f} / {b:,.0f}" for k, (a, b) in lt["hops"].items()))
        w(f"    CPU while sending: {lt['cpu']}")
        if lt.get("worker_cpu_ms"):
            w(f"    worker CPU per delivered alert (sending + drain): {lt['worker_cpu_ms']:.2f} ms")
    if ig:
        b, r = ig["baseline"], ig["ingress"]
        w(f"[4] Ingress: {ig['generator']}, {ig['conns']} connections, {ig['seconds']:g} s after a {ig['warm']:g} s warm-up;"
          " a new dedup_key per request")
        w(f"    worker  : {fmt(r['rate'])} req/s, statuses {r['statuses']}, socket errors {r['errors']}, "
          f"latency p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms; records landed in alerts.raw "
          f"{fmt(r['in_kafka'])} (>= the 202s: requests in flight when wrk stops also land); CPU: {r['cpu']}")
        if r.get("worker_cpu_ms"):
            w(f"    worker CPU per request {r['worker_cpu_ms']:.2f} ms (incl. its agents processing what arrives) -> "
              f"~{1000 / r['worker_cpu_ms']:,.0f} req/s on one whole core")
        w(f"    baseline: {fmt(b['rate'])} req/s, statuses {b['statuses']}, latency p50 {b['p50_ms']:.1f} ms "
          f"p99 {b['p99_ms']:.1f} ms; CPU: {b['cpu']}")
        w(f"    load generator: {r['cmd']}")
    for note in res.get("notes", []):
        w("note: " + note)
    w("")
    return "\n".join(L)


# --- main ----------------------------------------------------------------------------------------------

def stack_up() -> bool:
    from pagerstream.connections import kafka_admin, redis_sync_client

    async def kafka() -> bool:
        admin = kafka_admin(BOOTSTRAP, request_timeout_ms=5000)
        try:
            async with asyncio.timeout(8):
                await admin.start()
                return bool((await admin.describe_cluster()).get("brokers"))
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    try:
        redis_sync_client(socket_timeout=3).ping()
    except Exception:
        return False
    return asyncio.run(kafka())


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller N and shorter phases (~1 minute)")
    ap.add_argument("--n", type=int, help="records for the Kafka baseline and each pipeline mix (30000, quick 3000)")
    ap.add_argument("--rate", type=float, default=1000.0, help="steady produce rate for the latency phase")
    ap.add_argument("--latency-seconds", type=float, help="length of the steady phase (20, quick 5)")
    ap.add_argument("--extra-rates", default=None,
                    help="comma list of lower rates measured first, 10 s each, on the same worker (100; quick: none)")
    ap.add_argument("--drain-limit", type=float, help="max wait for the latency backlog after sending (40, quick 10)")
    ap.add_argument("--ingress-seconds", type=float, help="length of each load run (15, quick 3)")
    ap.add_argument("--conns", type=int, default=64, help="HTTP connections of the load generator")
    ap.add_argument("--only", default="kafka,throughput,latency,ingress",
                    help="comma list of phases: kafka,throughput,latency,ingress")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="first wait up to this long for other processes to use < 15%% of a core")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--keep-topics", action="store_true", help="do not delete this run's topics at the end")
    ap.add_argument("--keep-logs", action="store_true", help="keep the process logs directory")
    a = ap.parse_args(argv)
    a.n = a.n or (3_000 if a.quick else 30_000)
    a.latency_seconds = a.latency_seconds or (5.0 if a.quick else 20.0)
    a.drain_limit = a.drain_limit or (10.0 if a.quick else 40.0)
    if a.extra_rates is None:
        a.extra_rates = "" if a.quick else "100"
    a.extra_rates = [float(x) for x in a.extra_rates.split(",") if x.strip()]
    a.ingress_seconds = a.ingress_seconds or (3.0 if a.quick else 15.0)
    return a


async def amain(args: argparse.Namespace, ctx: Ctx) -> dict[str, Any]:
    from pagerstream.localrun import wait_http  # noqa: F401  (import check before any work)

    phases = set(args.only.split(","))
    res: dict[str, Any] = {"notes": ctx.notes}

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    if "kafka" in phases:
        say(f"1/4 Kafka baseline: producing and consuming {args.n:,} records")
        res["kafka"] = await bench_kafka(ctx.run, args.n)
        say(f"    produce {res['kafka']['produce_rate']:,.0f}/s, consume {res['kafka']['consume_rate']:,.0f}/s")
    if "throughput" in phases:
        for mix, key in (("distinct", "tp_distinct"), ("dupes", "tp_dupes")):
            say(f"2/4 Pipeline throughput ({mix}): {args.n:,} raw alerts, one worker --no-forwarder")
            try:
                res[key] = await bench_pipeline(ctx, args.n, mix)
                t = res[key]
                say(f"    {t['rate']:,.0f} alerts/s, {t['incidents']:,} incidents, outbox {t['outbox']:,}"
                    + ("" if t["complete"] else "  INCOMPLETE"))
                if t["dead_letters"]:
                    ctx.notes.append(f"{mix}: {t['dead_letters']} records went to alerts.dead-letter")
            except Exception as e:
                ctx.notes.append(f"throughput {mix} failed: {e}")
                say(f"    FAILED: {e}")
    if "latency" in phases:
        steps = [(r, min(args.latency_seconds, 10.0)) for r in args.extra_rates] + [(args.rate, args.latency_seconds)]
        say("3/4 Latency through worker + PD sandbox: " + ", then ".join(f"{r:,.0f} alerts/s for {s:g} s"
                                                                          for r, s in steps))
        try:
            res["latency_steps"] = await bench_latency(ctx, steps, args.drain_limit)
            for lt in res["latency_steps"]:
                say(f"    {lt['target_rate']:,.0f}/s: p50 {fmt_ms(lt['p50'], lt)}, p99 {fmt_ms(lt['p99'], lt)}, "
                    f"delivered {lt['delivered']}/{lt['sent']}")
            res["latency"] = res["latency_steps"][-1]
        except Exception as e:
            ctx.notes.append(f"latency phase failed: {e}")
            say(f"    FAILED: {e}")
    if "ingress" in phases:
        say(f"4/4 Ingress: {args.conns} connections for {args.ingress_seconds:g} s, baseline first")
        try:
            res["ingress"] = await bench_ingress(ctx, args.ingress_seconds, args.conns, 1.0 if args.quick else 2.0)
            ig = res["ingress"]
            say(f"    worker {ig['ingress']['rate']:,.0f} req/s {ig['ingress']['statuses']}, "
                f"baseline {ig['baseline']['rate']:,.0f} req/s")
        except Exception as e:
            ctx.notes.append(f"ingress phase failed: {e}")
            say(f"    FAILED: {e}")
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = " ".join(shlex.quote(x) for x in ["python", "bench/pipeline.py", *argv])
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    if not stack_up():
        print("Kafka or Redis is not reachable; start them with: scripts/stack.sh start", file=sys.stderr)
        return 2
    run = "bench-" + dt.datetime.now().strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:4]
    logdir = Path(tempfile.mkdtemp(prefix=f"pagerstream-{run}-"))
    ctx = Ctx(run=run, logdir=logdir, catalog=str(REPO / "examples" / "catalog.yaml"), keep_logs=args.keep_logs)
    info = env_info()
    print(f"pagerstream benchmark, run id {run}; logs in {logdir}", flush=True)
    t_q, said = time.monotonic(), 0.0
    while True:  # how busy is the machine before we start? optionally wait for it to calm down
        m = CpuMeter({}).start()
        time.sleep(3)
        m.stop()
        OTHER_LOAD.pop()
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
    ok = False
    res: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        res = asyncio.run(amain(args, ctx))
        ok = not ctx.notes or all("dead-letter" in n for n in ctx.notes)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything this run started", file=sys.stderr)
        return 130
    finally:
        CLEANUP.stop_all()
        if not args.keep_topics:
            with contextlib.suppress(Exception):
                n = asyncio.run(delete_run_topics(run))
                print(f"deleted {n} topics of run {run}", flush=True)
        if (ok and not args.keep_logs):
            shutil.rmtree(logdir, ignore_errors=True)
        else:
            print(f"process logs kept in {logdir}", flush=True)
    res["total_s"] = time.monotonic() - t0
    text = report(res, args, info, command)
    print(text + f"total run time {res['total_s']:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "info": info, "results": res}, indent=2,
                                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
