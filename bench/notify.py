#!/usr/bin/env python3
"""Notification latency and throughput: incident change -> message at a local Slack stand-in.

    python bench/notify.py                      # about 2.5 minutes
    python bench/notify.py --rates 20 --seconds 10 --burst 200   # shorter

One worker (`--no-forwarder`, catalog examples/catalog.yaml) runs with a notifications config that has
one `slack_webhook` destination (rate 1000/s, burst 1000: never throttled here) whose secret URL points
at the Slack stand-in (streams/notify_standins.py) served by this process on a background event-loop
thread. A middleware on the stand-in stamps every request on arrival (time.time(), same clock as the
worker) and reads the incident id from the message ("Incident `<id>`" in the context block).

1. Baseline (the HTTP floor): the same stand-in receives the same message body POSTed directly by a
   plain httpx client in this process, at each steady rate, then 500 as fast as possible (1 and 4 in
   flight). Latency = stand-in arrival - just before the POST.
2. Steady rate through the worker: PagerDuty Events v2 triggers with distinct dedup keys POSTed to
   the worker's /v2/enqueue at R/s (each opens an incident = one `opened` change = one message).
   Latency (a) POST to ingress -> Slack arrival, (b) IncidentEvent `at` (the change time; for an
   opening it is the ingress accept time) -> Slack arrival, and the split at the `incidents` record
   (Kafka CreateTime): `at` -> incidents record (pipeline) and incidents record -> Slack (notifier).
   Also messages/s arriving at the stand-in.
3. Burst: --burst triggers POSTed as fast as possible (32 in flight): ingress rate, rate of incident
   records, messages/s at the stand-in (first to last and 10-90 %), most requests in flight at the
   stand-in at once, changes bundled (worker metric), latency.
4. Where the time goes, in this process, sequentially, against the same stand-in: a bare httpx POST,
   SlackWebhookChannel.send (template + outbound client), Delivery without Redis (local fallbacks)
   and Delivery with Redis, counting Redis round trips and commands per message.

Every run has its own topic prefix (bench-notify-<time>-<hex>); at the end (also after an error or
Ctrl-C) the worker is stopped, the run's topics and Redis keys are deleted, and the stand-in stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline as pl

TARGET_P99_MS = 250.0
HOOK = "/services/TBENCH001/BBENCH001/benchSECRETpath0001"
DEST = "slack-bench"
IID_RE = re.compile(rb"Incident `([^`\"\\]+)`")
BOOTSTRAP = pl.BOOTSTRAP


# --- the stand-in, with arrival stamps ------------------------------------------------------------

class Arrivals:
    """Every request the stand-in got: arrival time, answer time, incident id, bench sequence number."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.inflight = 0
        self.max_inflight = 0
        self.sample: bytes | None = None  # one message body the worker sent (reused by the baseline)

    def middleware(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def stamp(request: web.Request, handler: Any) -> web.StreamResponse:
            t = time.time()
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            try:
                raw = await request.read()  # cached: the stand-in's handler reads it again
                resp = await handler(request)
            finally:
                self.inflight -= 1
            m = IID_RE.search(raw)
            seq = request.headers.get("X-Bench-Seq")
            if seq is None and self.sample is None and resp.status == 200:
                self.sample = raw
            self.items.append({"t": t, "done": time.time(), "iid": m.group(1).decode() if m else None,
                               "seq": int(seq) if seq else None, "status": resp.status})
            return resp

        return stamp

    def worker_msgs(self, start: int = 0) -> list[dict[str, Any]]:
        return [x for x in self.items[start:] if x["seq"] is None]


class StandinThread:
    """The Slack stand-in on its own event loop in a background thread (as tests/integration do)."""

    def __init__(self, arrivals: Arrivals) -> None:
        from pagerstream.streams.itsm_standins import StandinServer
        from pagerstream.streams.notify_standins import make_slack_app

        app = make_slack_app(webhooks=[HOOK])
        app.middlewares.append(arrivals.middleware())
        self.server = StandinServer(app)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="slack-standin")
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.__aenter__(), self.loop).result(30)
        self.url = self.server.url

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.server.__aexit__(None, None, None), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# --- helpers --------------------------------------------------------------------------------------

def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]


def stats(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50": pct(xs, 50), "p95": pct(xs, 95), "p99": pct(xs, 99),
            "max": max(xs) if xs else float("nan")}


def rate_between(ts: list[float], lo: float = 0.0, hi: float = 1.0) -> float | None:
    """Events/s between the lo and hi fractions of sorted timestamps (0, 1: first to last)."""
    ts = sorted(ts)
    if len(ts) < 3:
        return None
    a, b = int(lo * (len(ts) - 1)), int(hi * (len(ts) - 1))
    return (b - a) / (ts[b] - ts[a]) if ts[b] > ts[a] else None


async def post_all(http: Any, url: str, bodies: list[bytes], rate: float | None, conc: int,
                   headers_for: Any = None) -> tuple[list[dict[str, Any]], float]:
    """POST `bodies` at `rate`/s (None: as fast as `conc` connections allow). Returns per body
    {sent, ack, status} and the seconds the sending took."""
    sem = asyncio.Semaphore(conc)
    out: list[dict[str, Any]] = [{} for _ in bodies]

    async def one(i: int, body: bytes) -> None:
        async with sem:
            h = {"Content-Type": "application/json"}
            if headers_for:
                h.update(headers_for(i))
            t = time.time()
            try:
                r = await http.post(url, content=body, headers=h)
                st: Any = r.status_code
            except Exception as e:  # noqa: BLE001 - a failed request is a result here
                st = type(e).__name__
            out[i] = {"sent": t, "ack": time.time(), "status": st}

    tasks = []
    t0 = time.perf_counter()
    for i, b in enumerate(bodies):
        if rate:
            d = t0 + i / rate - time.perf_counter()
            if d > 0:
                await asyncio.sleep(d)
        tasks.append(asyncio.create_task(one(i, b)))
    await asyncio.gather(*tasks)
    return out, time.perf_counter() - t0


async def wait_for(cond: Any, limit: float, idle: float = 10.0, count: Any = None) -> float:
    """Wait until cond() is true, or `count()` did not move for `idle` s, or `limit` s; returns seconds."""
    t0 = time.monotonic()
    last, changed = -1, t0
    while not cond() and time.monotonic() - t0 < limit:
        if count is not None:
            c = count()
            if c != last:
                last, changed = c, time.monotonic()
            elif time.monotonic() - changed > idle:
                break
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def read_incidents(topic: str) -> dict[str, dict[str, Any]]:
    """dedup_key -> {incident_id, at, ts (CreateTime s), change} of every `opened` record in the topic."""
    from pagerstream.schemas.codec import decode_any

    from pagerstream.connections import kafka_consumer

    c = kafka_consumer(BOOTSTRAP, topic, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    out: dict[str, dict[str, Any]] = {}
    try:
        for _ in range(50):
            if c.assignment():
                break
            await asyncio.sleep(0.1)
        ends = await c.end_offsets(list(c.assignment()))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            positions = [await c.position(tp) for tp in ends]
            if all(pos >= end for pos, end in zip(positions, ends.values())):
                break
            for msgs in (await c.getmany(timeout_ms=500, max_records=5000)).values():
                for m in msgs:
                    v = decode_any(m.value)
                    if isinstance(v, dict) and v.get("change") == "opened" and v.get("dedup_key"):
                        out[v["dedup_key"]] = {"incident_id": v["incident_id"], "at": v.get("at"),
                                               "ts": m.timestamp / 1000, "rec": v}
    finally:
        await c.stop()
    return out


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, val = line.rpartition(" ")
        if head.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            with contextlib.suppress(ValueError):
                total += float(val)
    return total


def trigger(i: int, dk: str, rk: str) -> bytes:
    return json.dumps(pl.trigger_body(i, dk, routing_key=rk), separators=(",", ":")).encode()


# --- phases ---------------------------------------------------------------------------------------

async def baseline_steady(http: Any, arr: Arrivals, url: str, body: bytes, rate: float, seconds: float,
                          tag: int) -> dict[str, Any]:
    n = int(rate * seconds)
    base = tag * 1_000_000
    start = len(arr.items)
    cpu = pl.CpuMeter({"bench": os.getpid()}).start()
    sent, _ = await post_all(http, url, [body] * n, rate, 64, lambda i: {"X-Bench-Seq": str(base + i)})
    cpu.stop()
    await asyncio.sleep(0.2)
    got = {x["seq"] - base: x for x in arr.items[start:] if x["seq"] is not None and base <= x["seq"] < base + n}
    lat = [(got[i]["t"] - sent[i]["sent"]) * 1000 for i in range(n) if i in got]
    return {"rate": rate, "n": n, "recv": len(got), "lat": stats(lat),
            "msg_rate": rate_between([g["t"] for g in got.values()]),
            "statuses": sorted({str(s["status"]) for s in sent}), "cpu": cpu.text()}


async def baseline_burst(http: Any, arr: Arrivals, url: str, body: bytes, n: int, conc: int,
                         tag: int) -> dict[str, Any]:
    base = tag * 1_000_000
    start = len(arr.items)
    _, secs = await post_all(http, url, [body] * n, None, conc, lambda i: {"X-Bench-Seq": str(base + i)})
    got = [x for x in arr.items[start:] if x["seq"] is not None and base <= x["seq"] < base + n]
    return {"n": n, "conc": conc, "recv": len(got), "secs": secs, "msg_rate": len(got) / secs,
            "handle_ms": pct([(x["done"] - x["t"]) * 1000 for x in got], 50)}


async def worker_step(http: Any, arr: Arrivals, w: Any, run: str, rate: float | None, n: int, tag: str,
                      drain_limit: float, conc: int = 64) -> dict[str, Any]:
    rk = ("NTF" + uuid.uuid4().hex.upper())[:32]
    bodies = [trigger(i, f"{run}-{tag}-{i}", rk) for i in range(n)]
    start = len(arr.items)
    arr.max_inflight = arr.inflight
    m0 = await asyncio.to_thread(w.metrics)
    cpu = pl.CpuMeter({"worker": w.proc.popen.pid, "kafka": pl.kafka_pid(), "redis": pl.redis_pid(),
                       "bench": os.getpid()}).start()
    sent, secs = await post_all(http, w.url + "/v2/enqueue", bodies, rate, conc)
    t_end_send = time.time()
    drain = await wait_for(lambda: len(arr.worker_msgs(start)) >= n, drain_limit,
                           count=lambda: len(arr.worker_msgs(start)))
    cpu.stop()
    m1 = await asyncio.to_thread(w.metrics)
    msgs = arr.worker_msgs(start)
    return {"tag": tag, "rate": rate, "n": n, "bodies_dk": [f"{run}-{tag}-{i}" for i in range(n)], "sent": sent,
            "send_s": secs, "t_end_send": t_end_send, "msgs": msgs, "drain_s": drain, "cpu": cpu.text(),
            "max_inflight": arr.max_inflight,
            "statuses": sorted({str(s["status"]) for s in sent}),
            "bundled": metric(m1, "pagerstream_notify_bundled_total") - metric(m0, "pagerstream_notify_bundled_total"),
            "attempts": {o: metric(m1, "pagerstream_notify_attempts_total", outcome=o)
                         - metric(m0, "pagerstream_notify_attempts_total", outcome=o)
                         for o in ("delivered", "retry", "dead_letter", "duplicate", "deferred")},
            "parked": metric(m1, "pagerstream_stage_records_total", stage="notify", outcome="parked")
            - metric(m0, "pagerstream_stage_records_total", stage="notify", outcome="parked")}


def analyse(step: dict[str, Any], inc: dict[str, dict[str, Any]]) -> dict[str, Any]:
    by_iid = {}
    for x in step["msgs"]:
        by_iid.setdefault(x["iid"], x)
    a, b, pipe, notif, series = [], [], [], [], []
    missing = 0
    t_first = step["sent"][0]["sent"] if step["sent"] else 0.0
    for dk, s in zip(step["bodies_dk"], step["sent"]):
        rec = inc.get(dk)
        m = by_iid.get(rec["incident_id"]) if rec else None
        if m is None:
            missing += 1
            continue
        a.append((m["t"] - s["sent"]) * 1000)
        if rec.get("at"):
            b.append(m["t"] * 1000 - rec["at"])
            pipe.append(rec["ts"] * 1000 - rec["at"])
        notif.append((m["t"] - rec["ts"]) * 1000)
        series.append((s["sent"] - t_first, (m["t"] - s["sent"]) * 1000))
    inf = [float("inf")] * missing
    win = []
    if step["rate"] and series:
        span = max(1, int(step["n"] / step["rate"]) // 4)
        for w0 in range(0, int(step["n"] / step["rate"]), span):
            xs = [v for t, v in series if w0 <= t < w0 + span]
            if xs:
                win.append((w0, len(xs), pct(xs, 50), pct(xs, 99)))
    recv_ts = [m["t"] for m in step["msgs"]]
    inc_ts = [inc[dk]["ts"] for dk in step["bodies_dk"] if dk in inc]
    return {"a": stats(a + inf), "b": stats(b + inf), "pipe": stats(pipe), "notif": stats(notif),
            "missing": missing, "recv": len(step["msgs"]), "incidents": len(inc_ts),
            "msg_rate": rate_between(recv_ts), "msg_rate_mid": rate_between(recv_ts, 0.1, 0.9),
            "inc_rate": rate_between(inc_ts), "windows": win,
            "ingress_rate": step["n"] / step["send_s"] if step["send_s"] else None,
            "gap_ms": pct([(y - x) * 1000 for x, y in zip(sorted(recv_ts), sorted(recv_ts)[1:])], 50),
            "handle_ms": pct([(m["done"] - m["t"]) * 1000 for m in step["msgs"]], 50),
            "span_s": (max(recv_ts) - step["sent"][0]["sent"]) if recv_ts and step["sent"] else None}


class RedisCounter:
    """Counts Redis round trips (packets sent) and commands from this process while on."""

    def __init__(self) -> None:
        from redis.asyncio.connection import AbstractConnection

        self.cls = AbstractConnection
        self.trips = 0
        self.commands = 0
        self.on = False
        orig_send, orig_pack = AbstractConnection.send_packed_command, AbstractConnection.pack_command
        counter = self

        async def send_packed_command(conn: Any, *a: Any, **k: Any) -> Any:
            if counter.on:
                counter.trips += 1
            return await orig_send(conn, *a, **k)

        def pack_command(conn: Any, *a: Any) -> Any:
            if counter.on:
                counter.commands += 1
            return orig_pack(conn, *a)

        self.orig = (orig_send, orig_pack)
        AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]
        AbstractConnection.pack_command = pack_command  # type: ignore[method-assign]

    def restore(self) -> None:
        self.cls.send_packed_command, self.cls.pack_command = self.orig  # type: ignore[method-assign]


async def where_time_goes(standin_url: str, body: bytes, incident: dict[str, Any], n: int, prefix: str,
                          secrets_path: Path, key: str) -> dict[str, Any]:
    """Sequential messages through each layer, in this process, to the same stand-in."""
    import httpx
    from prometheus_client import CollectorRegistry

    from pagerstream.connections import redis_client
    from pagerstream.notify import templates
    from pagerstream.notify.base import ChannelContext, Destination, Notification
    from pagerstream.notify.delivery import Delivery, RedisRefStore, notification_key
    from pagerstream.notify.outbound import outbound_client
    from pagerstream.notify.secrets import SecretStore
    from pagerstream.notify.slack import SlackWebhookChannel

    dest = Destination(name=DEST, channel="slack_webhook", secret_ref="slack-hook", rate_per_second=1000.0, burst=1000)
    secrets = SecretStore(secrets_path, key)
    rdb = redis_client(socket_timeout=5)  # REDIS_URL + password/TLS settings of the environment
    out: dict[str, Any] = {}
    counter = RedisCounter()

    def notif(mode: str, i: int) -> Notification:
        rec = dict(incident, incident_id=f"inproc{mode}-{uuid.uuid4().hex[:8]}-{i}", version=1,
                   at=int(time.time() * 1000))
        return Notification(key=notification_key(rec, DEST), incident=rec, destination=dest)

    async def timed(label: str, fn: Any) -> None:
        for i in range(10):  # warm-up: connections, template cache
            await fn(i)
        lat = []
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            await fn(i)
            lat.append((time.perf_counter() - t) * 1000)
        out[label] = {**stats(lat), "rate": n / (time.perf_counter() - t0), "mean": sum(lat) / len(lat)}

    http = outbound_client(allowlist="127.0.0.1")
    try:
        async with httpx.AsyncClient(timeout=10) as plain:
            hook = standin_url + HOOK

            async def bare(i: int) -> None:
                r = await plain.post(hook, content=body, headers={"Content-Type": "application/json"})
                assert r.status_code == 200, r.status_code

            await timed("httpx POST (floor)", bare)

        ctx_local = ChannelContext(http=http, secret=secrets.get, render=templates.render, refs=RedisRefStore(rdb))
        ch = SlackWebhookChannel()

        async def channel(i: int) -> None:
            r = await ch.send(notif("c", i), ctx_local)
            assert r.ok, r.answer

        await timed("SlackWebhookChannel.send", channel)

        reg = CollectorRegistry()
        d0 = Delivery(None, ctx_local, registry=reg, namespace=prefix + "inproc.")

        async def deliv0(i: int) -> None:
            o = await d0.deliver(notif("d", i), ch)
            assert o.kind == "delivered", o

        await timed("Delivery, no Redis", deliv0)
        await d0.close()

        await rdb.ping()
        d1 = Delivery(rdb, ctx_local, registry=CollectorRegistry(), namespace=prefix + "inproc.")

        async def deliv1(i: int) -> None:
            o = await d1.deliver(notif("r", i), ch)
            assert o.kind == "delivered", o

        for i in range(10):
            await deliv1(i)
        counter.on = True
        await timed("Delivery with Redis", deliv1)
        counter.on = False
        out["Delivery with Redis"]["trips"] = counter.trips / (n + 10)
        out["Delivery with Redis"]["commands"] = counter.commands / (n + 10)
        await d1.close()
        rtt = []
        for _ in range(200):
            t = time.perf_counter()
            await rdb.ping()
            rtt.append((time.perf_counter() - t) * 1000)
        out["redis_rtt"] = stats(rtt)
    finally:
        counter.restore()
        await http.aclose()
        await rdb.aclose()
    return out


async def cleanup_redis(prefix: str) -> int:
    from pagerstream.processors.incident import short_hash

    from pagerstream.connections import redis_client

    rdb = redis_client(socket_timeout=5)  # REDIS_URL + password/TLS settings of the environment
    try:
        keys = [k async for k in rdb.scan_iter(match=f"pagerstream:{prefix}*", count=1000)]
        for ns in (prefix, prefix + "inproc."):
            keys.append(f"pagerstream:bucket:{short_hash(f'notify:{ns}{DEST}', 24)}")
        n = 0
        for i in range(0, len(keys), 500):
            n += await rdb.delete(*keys[i:i + 500])
        return n
    finally:
        await rdb.aclose()


# --- report ---------------------------------------------------------------------------------------

def f(x: Any, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x == float("inf"):
        return "n/d"
    return f"{x:,.{nd}f}"


def lat_row(label: str, s: dict[str, float], extra: str = "") -> str:
    return (f"  {label:44} {f(s['p50']):>8} {f(s['p95']):>8} {f(s['p99']):>8} {f(s['max']):>8}"
            + (f"  {extra}" if extra else ""))


def report(res: dict[str, Any], args: argparse.Namespace, info: dict[str, str], command: str) -> str:
    L: list[str] = []
    w = L.append
    w("")
    w("=" * 100)
    w("pagerstream notification benchmark: incident change -> message at a local Slack stand-in")
    w(f"command : {command}")
    w(f"date    : {info['date']}   commit {info['commit']}")
    w(f"machine : {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, aiokafka {info['aiokafka']}, "
      f"faust-streaming {info['faust']}, broker on {BOOTSTRAP}")
    w(f"setup   : 1 worker (--no-forwarder, {PARTS} partitions), 1 slack_webhook destination (rate 1000/s, "
      "burst 1000); stand-in + load generator in this process; all share these cores")
    if pl.OTHER_LOAD:
        worst = max(pl.OTHER_LOAD)
        w(f"LOAD    : other processes used up to {worst:.0f}% of a core during the measured phases"
          + ("  -> WARNING: machine not quiet" if worst > 20 else " (quiet)"))
    w("=" * 100)
    w(f"  {'latency, ms':44} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}  messages/s (sent/received)")
    for b, st in zip(res["baseline"], res["steady"]):
        rate = b["rate"]
        w(f"@ {f(rate, 0)}/s")
        w(lat_row("baseline: httpx POST -> stand-in", b["lat"],
                  f"{f(b['msg_rate'])}/s ({b['n']}/{b['recv']})"))
        a = st["an"]
        w(lat_row("notifier: POST /v2/enqueue -> Slack", a["a"],
                  f"{f(a['msg_rate'])}/s ({st['n']}/{a['recv']})" + (f", {a['missing']} NOT DELIVERED"
                                                                       if a["missing"] else "")))
        w(lat_row("notifier: IncidentEvent.at -> Slack", a["b"]))
        w(lat_row("  split: at -> incidents record (pipeline)", a["pipe"]))
        w(lat_row("  split: incidents record -> Slack (notifier)", a["notif"]))
        wins = ", ".join(f"{t}s: {f(p50, 0)}/{f(p99, 0)}" for t, _, p50, p99 in a["windows"])
        w(f"  by send time (p50/p99 ms): {wins}")
        w(f"  worker: bundled {st['bundled']:.0f}, attempts {_att(st)}, parked {st['parked']:.0f}; "
          f"CPU {st['cpu']}")
    w("")
    bu = res["burst"]
    a = bu["an"]
    w(f"BURST {bu['n']} changes (POSTed with 32 in flight; every change a new incident)")
    w(f"  ingress accepted {f(a['ingress_rate'], 0)}/s; incident records {f(a['inc_rate'], 0)}/s; "
      f"Slack messages {f(a['msg_rate'], 0)}/s first->last ({f(a['msg_rate_mid'], 0)}/s 10-90 %); "
      f"last message {f(a['span_s'])} s after the first POST")
    w(f"  received {a['recv']}/{bu['n']}, bundled {bu['bundled']:.0f}, attempts {_att(bu)}, parked "
      f"{bu['parked']:.0f}; most requests in flight at the stand-in: {bu['max_inflight']}; "
      f"gap between messages p50 {f(a['gap_ms'], 2)} ms, stand-in handling p50 {f(a['handle_ms'], 2)} ms")
    w(lat_row("  IncidentEvent.at -> Slack", a["b"]))
    w(lat_row("  incidents record -> Slack (notifier)", a["notif"]))
    for bb in res["baseline_burst"]:
        w(f"  baseline: {bb['n']} httpx POSTs, {bb['conc']} in flight: {f(bb['msg_rate'], 0)}/s "
          f"(stand-in handling p50 {f(bb['handle_ms'], 2)} ms)")
    w("")
    wt = res["where"]
    w(f"WHERE THE TIME GOES (this process, one message at a time, {args.inproc} each, same stand-in)")
    w(f"  {'per message, ms':44} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}  messages/s")
    for k in ("httpx POST (floor)", "SlackWebhookChannel.send", "Delivery, no Redis", "Delivery with Redis"):
        s = wt[k]
        extra = f"{f(s['rate'], 0)}/s"
        if "trips" in s:
            extra += f"; Redis {s['trips']:.1f} round trips, {s['commands']:.1f} commands per message"
        w(lat_row(k, s, extra))
    w(f"  Redis PING round trip from this process: p50 {f(wt['redis_rtt']['p50'], 3)} ms, "
      f"p99 {f(wt['redis_rtt']['p99'], 3)} ms")
    w("")
    for st in res["steady"]:
        p99 = st["an"]["b"]["p99"]
        ok = p99 <= TARGET_P99_MS and not st["an"]["missing"]
        w(f"target  : p99 change -> Slack <= {TARGET_P99_MS:.0f} ms at {f(st['rate'], 0)}/s: "
          f"{f(p99)} ms -> {'PASS' if ok else 'BELOW'}")
    w(f"total   : {res['total_s']:.0f} s")
    w(f"command : {command}")
    return "\n".join(L)


def _att(st: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in st["attempts"].items() if v) or "none"


# --- main -----------------------------------------------------------------------------------------

PARTS = pl.PARTITIONS


async def amain(args: argparse.Namespace, command: str) -> dict[str, Any]:
    import httpx

    from pagerstream.localrun import start_worker, worker_env
    from pagerstream.notify.secrets import SecretStore

    t_start = time.perf_counter()
    run = f"bench-notify-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:4]}"
    prefix = f"{run}."
    logdir = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    arr = Arrivals()
    standin = StandinThread(arr)
    w = None
    ok = False

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:5.0f} s] {msg}", file=sys.stderr, flush=True)

    try:
        env = worker_env(app_id=run, prefix=prefix, datadir=logdir / "data", events_url=None,
                         extra={"PAGERSTREAM_PARTITIONS": str(PARTS), "PAGERSTREAM_TRANSIENT_PAUSE": "false",
                                "OUTBOUND_URL_ALLOWLIST": "127.0.0.1"})
        secrets_path = logdir / "notify-secrets.enc.json"
        SecretStore(secrets_path, env["ENCRYPTION_KEY"]).put("slack-hook", {"url": standin.url + HOOK})
        cfg = {"destinations": [{"name": DEST, "channel": "slack_webhook", "secret_ref": "slack-hook",
                                 "rate": 1000, "burst": 1000}], "default": [DEST]}
        (logdir / "notify.json").write_text(json.dumps(cfg))
        env.update({"PAGERSTREAM_NOTIFY_CONFIG": str(logdir / "notify.json"),
                    "PAGERSTREAM_NOTIFY_SECRETS": str(secrets_path)})
        say(f"run {run}: starting the worker ...")
        w = await asyncio.to_thread(start_worker, env, logdir, catalog=str(REPO / "examples/catalog.yaml"),
                                    name="worker-notify", extra_args=["--no-forwarder"])
        res: dict[str, Any] = {"run": run}
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100,
                                                                      max_keepalive_connections=100)) as http:
            say("warm-up: 30 changes at 10/s ...")
            warm = await worker_step(http, arr, w, run, 10, 30, "warm", 60)
            if len(warm["msgs"]) < 30 or arr.sample is None:
                raise RuntimeError(f"warm-up: {len(warm['msgs'])}/30 messages arrived\n" + w.proc.log_tail(30))
            body = arr.sample
            hook = standin.url + HOOK
            res["baseline"], res["steady"] = [], []
            for k, rate in enumerate(args.rates):
                say(f"baseline: httpx -> stand-in at {rate:g}/s for {args.baseline_seconds:g} s ...")
                res["baseline"].append(await baseline_steady(http, arr, hook, body, rate, args.baseline_seconds, k + 1))
                say(f"notifier: {rate:g} changes/s for {args.seconds:g} s ...")
                res["steady"].append(await worker_step(http, arr, w, run, rate, int(rate * args.seconds), f"r{k}",
                                                       args.drain))
            say(f"burst: {args.burst} changes as fast as possible ...")
            res["burst"] = await worker_step(http, arr, w, run, None, args.burst, "burst", args.drain, conc=32)
            res["baseline_burst"] = [await baseline_burst(http, arr, hook, body, args.burst, c, 50 + c)
                                     for c in (1, 4)]
        say("reading the incidents topic ...")
        inc = await read_incidents(prefix + "incidents")
        for st in [*res["steady"], res["burst"]]:
            st["an"] = analyse(st, inc)
        say(f"in-process split: {args.inproc} messages per layer ...")
        warm_rec = next(iter(inc[dk]["rec"] for dk in warm["bodies_dk"] if dk in inc))
        res["where"] = await where_time_goes(standin.url, body, warm_rec, args.inproc, prefix, secrets_path,
                                             env["ENCRYPTION_KEY"])
        res["total_s"] = time.perf_counter() - t_start
        print(report(res, args, pl.env_info(), command))
        ok = True
        if args.json:
            slim = {k: v for k, v in res.items() if k not in ("steady", "burst")}
            slim["steady"] = [{k: v for k, v in s.items() if k not in ("msgs", "sent", "bodies_dk")}
                              for s in res["steady"]]
            slim["burst"] = {k: v for k, v in res["burst"].items() if k not in ("msgs", "sent", "bodies_dk")}
            Path(args.json).write_text(json.dumps(slim, indent=1, default=str))
        return res
    finally:
        if w is not None:
            with contextlib.suppress(Exception):
                w.proc.stop(timeout=15)
            if not ok:
                print("worker log tail:\n" + w.proc.log_tail(30), file=sys.stderr)
        standin.close()
        with contextlib.suppress(Exception):
            n = await pl.delete_run_topics(run)
            say(f"cleanup: deleted {n} topics")
        with contextlib.suppress(Exception):
            say(f"cleanup: deleted {await cleanup_redis(prefix)} Redis keys")
        if args.keep_logs or not ok:
            shutil.rmtree(logdir / "data", ignore_errors=True)
            say(f"logs kept in {logdir}")
        else:
            shutil.rmtree(logdir, ignore_errors=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",") if x.strip()], default=[20.0, 50.0],
                    help="steady rates, changes/s (comma-separated)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each steady step")
    ap.add_argument("--baseline-seconds", type=float, default=10.0)
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--drain", type=float, default=40.0, help="longest wait for messages after sending")
    ap.add_argument("--inproc", type=int, default=200, help="messages per layer in the in-process split")
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args(argv)
    if not a.rates or min(a.rates) <= 0 or a.seconds <= 0 or a.burst < 10 or a.inproc < 10:
        ap.error("rates and --seconds must be > 0, --burst and --inproc >= 10")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = " ".join(shlex.quote(x) for x in ["python", "bench/notify.py", *argv])
    try:
        asyncio.run(amain(args, command))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
