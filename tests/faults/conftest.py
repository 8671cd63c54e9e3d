"""Fault-injection suite (docs/faults.md): machinery shared by tests/faults/test_*.py and scripts/soak.py.

* `OwnKafka` / `OwnRedis`: a private single-node KRaft broker / Redis on free ports with their own data
  directory under the test log dir, for the scenarios that stop or restart them. The shared stack
  (127.0.0.1:9092 / 6379, scripts/stack.sh) is never stopped by this suite. The broker runs from the
  same jars (.stack/kafka-libs) with the same server.properties as scripts/stack.sh.
* `alert_stream`: a deterministic stream of triggers, repeated triggers, resolves and re-triggers, with
  the PagerDuty call sequence each dedup_key must end up with.
* `RawProducer`: produces such a stream straight to alerts.raw with aiokafka (what `pagerstream produce`
  does), from a background thread, at a given rate.
* Checks: per-key PagerDuty sequences from the sandbox, incidents opened per key, calls per 1-s window.

Every wait here has a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from pagerstream.localrun import REPO, Sandbox, free_port, start_sandbox

KAFKA_LIBS = REPO / ".stack" / "kafka-libs"
SHARED_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
# These scenarios send with routing keys made per run; ingress authentication is tested elsewhere.
OPEN_INGRESS = {"PAGERSTREAM_INGRESS_AUTH": "open"}


try:  # resolved here: the child only calls the C function between fork and exec (safe with threads)
    import ctypes

    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:  # not Linux/glibc: children are stopped by the fixtures only
    _prctl = None


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies (PR_SET_PDEATHSIG), so
    a test run killed by a timeout does not leave a broker or a Redis behind."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.integration)


# ------------------------------------------------------------------------------------------------
# private broker and Redis
# ------------------------------------------------------------------------------------------------

class OwnKafka:
    """A single-node KRaft broker (broker + controller in one JVM) like scripts/stack.sh starts,
    but on free ports with its data under `home`. start() after stop() restarts it on the same data."""

    def __init__(self, home: Path, heap: str = "-Xms256m -Xmx512m") -> None:
        self.home = home
        self.port = free_port()
        self.controller_port = free_port()
        self.heap = heap
        self.data = home / "data"
        self.logs = home / "logs"
        self.props = home / "server.properties"
        self.log4j = home / "log4j.properties"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.props.write_text(f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{self.controller_port}
{self.listener_props()}controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={self.data}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size=16777216
""")
        self.log4j.write_text(f"""log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={self.logs}/server.log
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
""")

    def listener_props(self) -> str:
        """The listener lines of server.properties (a subclass adds TLS/SASL listeners)."""
        return (f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}\n"
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}\n"
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n")

    def format_args(self) -> list[str]:
        """Extra arguments of `kafka-storage format` (e.g. --add-scram)."""
        return []

    def _cluster_id(self) -> str:
        meta = self.data / "meta.properties"
        if meta.exists():
            for line in meta.read_text().splitlines():
                if line.startswith("cluster.id="):
                    return line.split("=", 1)[1].strip()
        while (u := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22]).startswith("-"):
            pass
        return u

    def start(self, timeout: float = 120.0) -> None:
        from tests.stack import kafka_ready

        if not list(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
            raise RuntimeError(f"no Kafka jars in {KAFKA_LIBS}: run scripts/stack.sh install")
        self._write_config()
        cp = f"{KAFKA_LIBS}/*"
        fmt = subprocess.run(["java", "-Xmx256m", f"-Dlog4j.configuration=file:{self.log4j}", "-cp", cp,
                              "kafka.tools.StorageTool", "format", f"--cluster-id={self._cluster_id()}",
                              "-c", str(self.props), "--ignore-formatted", *self.format_args()],
                             check=False, capture_output=True, text=True, timeout=120)
        if fmt.returncode != 0:
            raise RuntimeError(f"kafka storage format failed: {fmt.stdout}{fmt.stderr}")
        with open(self.logs / "kafka.out", "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                ["java", *self.heap.split(), "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                 "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
                 f"-Dlog4j.configuration=file:{self.log4j}", f"-Dkafka.logs.dir={self.logs}",
                 "-cp", cp, "kafka.Kafka", str(self.props)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent)  # noqa: PLW1509 - only prctl runs in the child
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"own Kafka exited during start:\n{self.log_tail()}")
            if kafka_ready(self.bootstrap, min(10.0, max(1.0, deadline - time.monotonic()))):
                return
        self.stop()
        raise RuntimeError(f"own Kafka not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL, 10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        f = self.logs / "server.log"
        try:
            return "\n".join(f.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server.log)"


class OwnRedis:
    """A redis-server on a free port with its own directory; stop()/start() take it down and up."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        from tests.stack import redis_ready

        self.home.mkdir(parents=True, exist_ok=True)
        conf = self.home / "redis.conf"
        conf.write_text(f'bind 127.0.0.1\nport {self.port}\ndir {self.home}\nsave ""\nappendonly no\n'
                        f"daemonize no\nlogfile {self.home}/redis.log\n")
        self.proc = subprocess.Popen(["redis-server", str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent)  # noqa: PLW1509  # noqa: PLW1509 - only prctl runs in the child
        if not redis_ready(self.url, timeout):
            self.stop()
            raise RuntimeError(f"own Redis on {self.port} did not answer PING within {timeout}s")

    def stop(self, timeout: float = 20.0) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def own_kafka(logdir):
    k = OwnKafka(Path(logdir) / f"own-kafka-{uuid.uuid4().hex[:6]}")
    k.start()
    yield k
    k.stop()


@pytest.fixture
def own_redis(logdir):
    r = OwnRedis(Path(logdir) / f"own-redis-{uuid.uuid4().hex[:6]}")
    r.start()
    yield r
    r.stop()


@pytest.fixture
def own_sandbox(stack, logdir):
    """A PagerDuty sandbox for one test: its faults (global to a sandbox) cannot touch other tests."""
    sb = start_sandbox(Path(logdir))
    yield sb
    sb.proc.stop()


# ------------------------------------------------------------------------------------------------
# the alert stream
# ------------------------------------------------------------------------------------------------

def routing_key(tag: str) -> str:
    """A 32-character routing key unique to one run (the Redis bucket is per routing key)."""
    base = (tag.upper() + uuid.uuid4().hex.upper())
    return "".join(c for c in base if c.isalnum())[:32].ljust(32, "0")


def pd_body(rk: str, action: str, key: str, n: int = 0) -> dict[str, Any]:
    if action == "trigger":
        return {"routing_key": rk, "event_action": "trigger", "dedup_key": key,
                "payload": {"summary": f"fault test alert {key}", "source": f"fault-host-{n % 10}",
                            "severity": "error"}}
    return {"routing_key": rk, "event_action": action, "dedup_key": key}


@dataclass
class AlertStream:
    events: list[tuple[str, str]]  # (action, dedup_key) in production order
    expected: dict[str, list[str]]  # dedup_key -> PagerDuty actions, consecutive repeats collapsed
    episodes: dict[str, int]  # dedup_key -> trigger episodes (incidents that must open)


def alert_stream(run: str, n_events: int, *, lag: int = 50) -> AlertStream:
    """About `n_events` records: every key triggers; 1 in 7 triggers again while open (a duplicate);
    1 in 5 resolves `lag` keys later; 1 in 20 (of those) triggers again `lag` keys after its resolve."""
    n_keys = max(1, round(n_events / (1 + 1 / 7 + 1 / 5 + 1 / 20)))
    keys = [f"{run}-{i}" for i in range(n_keys)]
    events: list[tuple[str, str]] = []
    step = 0
    while True:
        if step < n_keys:
            events.append(("trigger", keys[step]))
        j = step - 3
        if 0 <= j < n_keys and j % 7 == 3:
            events.append(("trigger", keys[j]))  # repeat while open
        j = step - lag
        if 0 <= j < n_keys and j % 5 == 0:
            events.append(("resolve", keys[j]))
        j = step - 2 * lag
        if 0 <= j < n_keys and j % 20 == 0:
            events.append(("trigger", keys[j]))  # a new episode after the resolve
        step += 1
        if step - 2 * lag >= n_keys:
            break
    expected, episodes = {}, {}
    for i, k in enumerate(keys):
        expected[k] = ["trigger", "resolve", "trigger"] if i % 20 == 0 else ["trigger", "resolve"] if i % 5 == 0 \
            else ["trigger"]
        episodes[k] = expected[k].count("trigger")
    return AlertStream(events, expected, episodes)


def raw_key(rk: str, dedup_key: str) -> bytes:
    from pagerstream.processors.incident import short_hash

    return f"{short_hash(rk)}:{dedup_key}".encode()


def raw_record(body: dict[str, Any] | bytes, source: str = "pagerduty_events_v2") -> bytes:
    from pagerstream.schemas import AvroCodec

    b = body if isinstance(body, bytes) else json.dumps(body).encode()
    return AvroCodec("raw_alert").encode({"id": uuid.uuid4().hex, "source": source,
                                          "received_at": int(time.time() * 1000),
                                          "content_type": "application/json", "body": b, "attributes": {}})


class RawProducer(threading.Thread):
    """Produces an AlertStream to alerts.raw (acks=all, idempotent) at `rate` records/s."""

    def __init__(self, bootstrap: str, topic: str, rk: str, events: list[tuple[str, str]], rate: float) -> None:
        super().__init__(daemon=True, name="raw-producer")
        self.bootstrap, self.topic, self.rk, self.events, self.rate = bootstrap, topic, rk, events, rate
        self.sent = 0
        self.acked = 0
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            asyncio.run(self._go())
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.done.set()

    async def _go(self) -> None:
        from aiokafka import AIOKafkaProducer

        p = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                             linger_ms=5, request_timeout_ms=60_000)
        await p.start()
        try:
            t0 = time.monotonic()
            futs = []
            for i, (action, key) in enumerate(self.events):
                futs.append(await p.send(self.topic, raw_record(pd_body(self.rk, action, key, i)),
                                         key=raw_key(self.rk, key)))
                self.sent += 1
                if self.rate > 0 and i % 20 == 19:
                    delay = t0 + (i + 1) / self.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
            for f in futs:
                await asyncio.wait_for(f, 120)
                self.acked += 1
        finally:
            await p.stop()


def produce_raw_bytes(bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes, int | None]]) -> list[
        tuple[int, int]]:
    """Produce (key, value, partition) items in order; return each one's (partition, offset)."""
    from aiokafka import AIOKafkaProducer

    async def go() -> list[tuple[int, int]]:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await p.start()
        try:
            out = []
            for k, v, part in items:
                md = await asyncio.wait_for(p.send_and_wait(topic, v, key=k, partition=part), 60)
                out.append((md.partition, md.offset))
            return out
        finally:
            await p.stop()

    return asyncio.run(go())


# ------------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------------

def sandbox_sequences(sb: Sandbox | str, rk: str) -> dict[str, list[str]]:
    """dedup_key -> the actions PagerDuty ingested for it (routing key `rk`), in arrival order."""
    url = sb.url if isinstance(sb, Sandbox) else sb
    view = httpx.get(url + "/sandbox/alerts", timeout=60).json()
    return {s["dedup_key"]: [e["action"] for e in s["events"]] for s in view["sequences"]
            if s["routing_key"] == rk}


def sandbox_requests(sb: Sandbox | str, rk: str) -> list[dict[str, Any]]:
    url = sb.url if isinstance(sb, Sandbox) else sb
    return httpx.get(url + "/sandbox/requests", params={"routing_key": rk}, timeout=60).json()["requests"]


def sandbox_anomalies(sb: Sandbox | str, rk: str) -> list[dict[str, Any]]:
    url = sb.url if isinstance(sb, Sandbox) else sb
    return [a for a in httpx.get(url + "/sandbox/stats", timeout=60).json()["anomalies"] if a["routing_key"] == rk]


def collapse(seq: list[str]) -> list[str]:
    """Consecutive repeats removed: at-least-once may repeat a key's *last* call (PagerDuty treats a
    repeated trigger or resolve as a duplicate); anything else left over is a real difference."""
    out: list[str] = []
    for a in seq:
        if not out or out[-1] != a:
            out.append(a)
    return out


def sequence_problems(expected: dict[str, list[str]], got: dict[str, list[str]]) -> dict[str, Any]:
    """Keys whose PagerDuty sequence is missing, incomplete, out of order or contradictory."""
    bad: dict[str, Any] = {}
    for k, want in expected.items():
        seq = got.get(k)
        if seq is None:
            bad[k] = "never reached PagerDuty"
        elif collapse(seq) != want:
            bad[k] = {"want": want, "got": seq}
    return bad


def contradictions(anomalies: list[dict[str, Any]], got: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Sandbox anomalies other than an exact repeat of the key's previous call (a resolve sent again)."""
    out = []
    for a in anomalies:
        if a["kind"] == "resolve_after_resolve" and collapse(got.get(a["dedup_key"], []))[-1:] == ["resolve"]:
            continue
        out.append(a)
    return out


def incidents_opened(bootstrap: str, prefix: str) -> tuple[dict[str, set[str]], int]:
    """dedup_key -> incident ids opened for it (events deduped by event_id), and how many repeated
    events (same event_id) the topic carried."""
    from tests.integration.helpers import read_topic

    seen: set[str] = set()
    repeats = 0
    opened: dict[str, set[str]] = {}
    for r in read_topic(bootstrap, prefix + "incidents", idle=3.0):
        v = r["value"]
        eid = v.get("event_id") or f"{v['incident_id']}#{v.get('version')}"
        if eid in seen:
            repeats += 1
            continue
        seen.add(eid)
        if v["change"] == "opened":
            opened.setdefault(v["dedup_key"], set()).add(v["incident_id"])
    return opened, repeats


def duplicated_incidents(episodes: dict[str, int], opened: dict[str, set[str]]) -> dict[str, Any]:
    return {k: sorted(opened.get(k, ())) for k, n in episodes.items() if len(opened.get(k, ())) != n}


def trace_keys(bootstrap: str, prefix: str, keys: Iterable[str], limit: int = 5) -> dict[str, Any]:
    """Where the records of some dedup_keys are on the pipeline's topics (for failure messages):
    {key: {topic: [(partition, offset, action/change)]}}."""
    from tests.integration.helpers import read_topic

    want = list(keys)[:limit]
    out: dict[str, Any] = {k: {} for k in want}
    for topic, field_ in (("alerts.raw", None), ("alerts.normalized", "action"), ("incidents", "change"),
                          ("pagerduty.outbox", "action"), ("pagerduty.retry", "action")):
        for r in read_topic(bootstrap, prefix + topic, idle=1.5):
            v = r["value"]
            if not isinstance(v, dict):
                continue
            if field_ is None:  # raw: the dedup_key is inside the original body
                try:
                    body = json.loads(v.get("body") or b"{}")
                except ValueError:
                    continue
                k, what = body.get("dedup_key"), body.get("event_action")
            else:
                k, what = v.get("dedup_key"), v.get(field_)
            if k in out:
                out[k].setdefault(topic, []).append((r["partition"], r["offset"], what))
    return out


def max_per_window(times: Iterable[float], window: float = 1.0) -> int:
    """The most events inside any window of `window` seconds (each event starts a window)."""
    ts = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(ts):
        while ts[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def wait_for(fn: Callable[[], Any], timeout: float, interval: float = 1.0, what: str = "") -> Any:
    """Poll until fn() is truthy; AssertionError with the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or fn}: last={str(last)[:2000]}")


def wait_progress(measure: Callable[[], tuple[int, int]], *, stall_s: float, timeout: float,
                  interval: float = 3.0, what: str = "") -> None:
    """Poll measure() -> (done, total) until done == total. Fails when nothing moved for `stall_s`
    seconds or after `timeout` seconds, whichever comes first."""
    deadline = time.monotonic() + timeout
    best, best_at = -1, time.monotonic()
    while True:
        done, total = measure()
        if done >= total:
            return
        now = time.monotonic()
        if done > best:
            best, best_at = done, now
        if now - best_at > stall_s or now > deadline:
            why = f"no progress for {now - best_at:.0f}s" if now - best_at > stall_s else f"{timeout:.0f}s passed"
            raise AssertionError(f"{what}: {done} of {total} done; {why}")
        time.sleep(interval)


@dataclass
class Timer:
    """Phase durations, printed by the tests (-s) and by the soak script."""
    t0: float = field(default_factory=time.monotonic)
    marks: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, name: str) -> None:
        self.marks.append((name, time.monotonic() - self.t0))

    def __str__(self) -> str:
        return ", ".join(f"{n} @{t:.0f}s" for n, t in self.marks)
