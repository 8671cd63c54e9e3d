"""The ops commands (deploy, migrate, migrate state, health, perf) and JSON logs, run as real
subprocesses against the real Kafka and Redis and real worker processes.

Alerts are produced straight to `<prefix>alerts.raw` (RawAlert, as `pagerstream produce` does), so these
tests do not depend on how the HTTP ingress authenticates senders."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import httpx
import pytest
from pagerstream.processors.incident import short_hash
from pagerstream.schemas import AvroCodec, registry

from pagerstream.localrun import dev_encryption_key, free_port, start_sandbox
from pagerstream.ops.deploy import ops_topic_specs
from tests.conftest import ROUTING_KEY, WorkerFactory
from tests.integration.helpers import eventually, produce_bytes, read_topic

pytestmark = pytest.mark.integration
BS = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
PD_ENV = ("PAGERDUTY_ROUTING_KEY", "PAGERDUTY_API_KEY", "PAGERDUTY_USER_TOKEN", "PAGERDUTY_API_URL", "WEBHOOK_SECRET",
          "JWT_SECRET", "REDIS_PASSWORD", "PAGERSTREAM_ROUTING_KEYS")


def ps(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pagerstream.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def base_env(**extra: str) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if k not in PD_ENV}
    env.update({"PAGERSTREAM_TOPIC_PREFIX": f"ops{run}.", "PAGERSTREAM_APP_ID": f"ops-{run}",
                "ENCRYPTION_KEY": dev_encryption_key(), "KAFKA_BOOTSTRAP_SERVERS": BS})
    env.update(extra)
    return env


def admin_call(fn):
    from aiokafka.admin import AIOKafkaAdminClient

    async def go():
        a = AIOKafkaAdminClient(bootstrap_servers=BS, request_timeout_ms=30000)
        await a.start()
        try:
            return await fn(a)
        finally:
            await a.close()

    return asyncio.run(go())


def topic_state(name: str) -> tuple[int, dict[str, str]]:
    """(partitions, topic-level dynamic configs) of a live topic."""
    from pagerstream.ops.deploy import fetch_live

    lt = admin_call(lambda a: fetch_live(a, [name]))[name]
    return lt.partitions, lt.dynamic


def alter(name: str, configs: dict[str, str]) -> None:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin_call(lambda a: a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs)]))


def create_topic(name: str, partitions: int, configs: dict[str, str] | None = None) -> None:
    from aiokafka.admin import NewTopic

    admin_call(lambda a: a.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})]))


def produce_alerts(prefix: str, events: list[dict]) -> None:
    codec = AvroCodec("raw_alert")
    items = []
    for ev in events:
        rec = {"id": uuid.uuid4().hex, "source": "pagerduty_events_v2", "received_at": int(time.time() * 1000),
               "content_type": "application/json", "body": json.dumps(ev).encode(), "attributes": {}}
        items.append((f"{short_hash(ev['routing_key'])}:{ev['dedup_key']}".encode(), codec.encode(rec)))
    produce_bytes(BS, prefix + "alerts.raw", items)


def trigger(dedup: str) -> dict:
    return {"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": dedup,
            "payload": {"summary": f"disk full {dedup}", "source": "db-1", "severity": "error"}}


def incident_changes(prefix: str, dedup: str) -> list[str]:
    return [r["value"]["change"] for r in read_topic(BS, prefix + "incidents", idle=0.7)
            if isinstance(r["value"], dict) and r["value"].get("dedup_key") == dedup]


def health(env: dict[str, str], url: str, *extra: str) -> tuple[int, dict]:
    r = ps(env, "health", "--full-check", "--json", "--url", url, *extra)
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


# --- deploy and migrate (topics, schemas) ---------------------------------------------------------------
def test_deploy_creates_migrates_configs_and_registers_schemas():
    env = base_env()
    p = env["PAGERSTREAM_TOPIC_PREFIX"]
    r = ps(env, "deploy", "--env", "dev", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    n_topics = len(ops_topic_specs())
    assert r.stdout.count("would create") == n_topics and "would register" in r.stdout
    existing = set(admin_call(lambda a: a.list_topics()))
    assert not [t for t in existing if t.startswith(p)], "a dry run created topics"

    r = ps(env, "deploy", "--env", "dev")
    assert r.returncode == 0, r.stdout + r.stderr
    parts, dyn = topic_state(p + "models.checkpoints")
    assert parts == 1 and dyn["cleanup.policy"] == "compact" and dyn["max.message.bytes"] == str(16 * 2**20)
    # the schema set on the compacted topic: one JSON record per fingerprint this release knows
    recs = {r["key"].decode(): r["value"] for r in read_topic(BS, p + "pagerstream.schemas", idle=1.0)}
    assert set(recs) == {fp.hex() for fp in registry().by_fingerprint}
    assert {v["fingerprint"] for v in recs.values() if v["current"]} == {fp.hex() for fp in registry().fingerprints.values()}
    assert topic_state(p + "pagerstream.schemas")[1]["cleanup.policy"] == "compact"

    r = ps(env, "migrate", "--check")
    assert r.returncode == 0 and "nothing to migrate" in r.stdout, r.stdout + r.stderr

    # drift: someone changed retention and policy by hand, and set their own segment.ms
    alter(p + "incidents", {"retention.ms": "3600000", "cleanup.policy": "compact", "segment.ms": "7200000"})
    r = ps(env, "migrate", "--check")
    assert r.returncode == 1 and f"alter  {p}incidents" in r.stdout and "retention.ms: 3600000 -> 2592000000" in r.stdout
    assert topic_state(p + "incidents")[1]["retention.ms"] == "3600000", "--check changed something"
    r = ps(env, "migrate")
    assert r.returncode == 0, r.stdout + r.stderr
    _, dyn = topic_state(p + "incidents")
    assert (dyn["retention.ms"], dyn["cleanup.policy"], dyn["segment.ms"]) == ("2592000000", "delete", "7200000")
    r = ps(env, "deploy", "--env", "dev")
    assert r.returncode == 0 and f"{n_topics} of {n_topics} topics already as configured" in r.stdout
    assert f"{len(recs)} schema versions already registered" in r.stdout and "register " not in r.stdout

    # a fingerprint this release does not know (a newer release deployed here) is a problem in production
    produce_bytes(BS, p + "pagerstream.schemas", [(b"00112233aabbccdd", json.dumps({"schema": "alert", "version": 9,
                                                                                   "fingerprint": "00112233aabbccdd"}).encode())])
    r = ps(env, "migrate", "--check")
    assert r.returncode == 1 and "unknown to this release" in r.stdout


def test_deploy_never_changes_partitions_and_fails_production_on_weak_secrets():
    env = base_env(PAGERSTREAM_PARTITIONS="4")
    p = env["PAGERSTREAM_TOPIC_PREFIX"]
    create_topic(p + "alerts.raw", 2, {"retention.ms": "604800000"})
    create_topic(p + "incidents", 6)
    r = ps(env, "deploy", "--env", "dev")
    assert r.returncode == 0, r.stdout + r.stderr  # dev: reported, not fatal
    assert f"{p}alerts.raw: 2 partitions, the configuration says 4; not changed" in r.stdout
    assert f"{p}incidents: 6 partitions, the configuration says 4; Kafka cannot shrink" in r.stdout
    assert topic_state(p + "alerts.raw")[0] == 2 and topic_state(p + "incidents")[0] == 6
    assert topic_state(p + "incidents")[1]["retention.ms"] == "2592000000"  # its config was still migrated

    weak = dict(env, JWT_SECRET="changeme-changeme-changeme-changeme-00", PAGERSTREAM_ALLOW_PRIVATE_PD_URL="true",
                PAGERDUTY_ROUTING_KEY="0123456789abcdef0123456789abcdef")
    r = ps(weak, "deploy", "--env", "production", "--dry-run")
    assert r.returncode == 1
    for var in ("JWT_SECRET", "WEBHOOK_SECRET", "PAGERDUTY_ROUTING_KEY", "PAGERSTREAM_ALLOW_PRIVATE_PD_URL"):
        assert f"✗ {var}:" in r.stdout, var
    assert "set JWT_SECRET=$(python -c" in r.stdout and "FAILED" in r.stdout
    for secret in ("changeme-changeme-changeme-changeme-00", "0123456789abcdef0123456789abcdef", env["ENCRYPTION_KEY"]):
        assert secret not in r.stdout + r.stderr
    r = ps(weak, "deploy", "--env", "staging", "--dry-run")
    assert r.returncode == 0 and "! JWT_SECRET:" in r.stdout
    r = ps(dict(env, PAGERSTREAM_PARTITIONS="zero"), "deploy", "--env", "dev")
    assert r.returncode == 2 and "PAGERSTREAM_PARTITIONS" in r.stderr


# --- migrate state on real changelog topics --------------------------------------------------------------
def test_migrate_state_copies_the_latest_value_per_key_into_the_same_partitions():
    from aiokafka import AIOKafkaConsumer

    env = base_env()
    run = uuid.uuid4().hex[:8]
    a, b = f"opsapp-{run}", f"opsapp-{run}-v2"
    create_topic(f"{a}-__assignor-__leader", 1)
    create_topic(f"{a}-groups-changelog", 3, {"cleanup.policy": "compact"})
    create_topic(f"{a}-aliases-changelog", 3, {"cleanup.policy": "compact"})
    inp = env["PAGERSTREAM_TOPIC_PREFIX"] + "alerts.raw"
    create_topic(inp, 3)
    produce_bytes(BS, inp, [(b"k", b"v")] * 5)
    # Faust puts a table key in the partition of the stream record that wrote it: here k1 lives in
    # partitions 0 and 2, with different histories.
    recs = [(0, b"k1", b"g1-a"), (0, b"k2", b"g2-a"), (2, b"k1", b"other"), (0, b"k1", b"g1-b"), (1, b"k3", b"g3-a"),
            (0, b"k2", None), (1, b"k3", b"g3-b"), (2, b"k4", None), (2, b"k4", b"g4")]

    async def produce_and_commit():
        from aiokafka import AIOKafkaProducer, TopicPartition
        from aiokafka.structs import OffsetAndMetadata

        prod = AIOKafkaProducer(bootstrap_servers=BS, acks="all")
        await prod.start()
        try:
            for part, k, v in recs:
                await prod.send_and_wait(f"{a}-groups-changelog", v, key=k, partition=part)
            await prod.send_and_wait(f"{a}-aliases-changelog", b"alias", key=b"x", partition=1)
        finally:
            await prod.stop()
        c = AIOKafkaConsumer(bootstrap_servers=BS, group_id=a, enable_auto_commit=False)
        await c.start()
        try:
            tps = [TopicPartition(inp, 0), TopicPartition(f"{a}-groups-changelog", 0)]
            c.assign(tps)
            await c.commit({tps[0]: OffsetAndMetadata(3, ""), tps[1]: OffsetAndMetadata(2, "")})
        finally:
            await c.stop()

    asyncio.run(produce_and_commit())

    r = ps(env, "migrate", "state", "--from-app-id", a, "--to-app-id", b, "--dry-run")
    assert r.returncode == 0 and "would copy 4 keys (9 records read, 1 deleted keys dropped)" in r.stdout, r.stdout + r.stderr
    assert f"{b}-groups-changelog" not in set(admin_call(lambda x: x.list_topics()))
    r = ps(env, "migrate", "state", "--from-app-id", a, "--to-app-id", b, "--table", "nosuch")
    assert r.returncode == 1 and "no changelog for table(s) nosuch" in r.stderr

    r = ps(env, "migrate", "state", "--from-app-id", a, "--to-app-id", b)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "groups" in r.stdout and "aliases" in r.stdout and "copied 1 committed partition offsets" in r.stdout
    got = [(x["partition"], x["key"], x["raw"]) for x in read_topic(BS, f"{b}-groups-changelog", idle=1.0)]
    assert sorted(got) == [(0, b"k1", b"g1-b"), (1, b"k3", b"g3-b"), (2, b"k1", b"other"), (2, b"k4", b"g4")]
    parts, dyn = topic_state(f"{b}-groups-changelog")
    assert parts == 3 and dyn["cleanup.policy"] == "compact"
    assert [(x["key"], x["raw"]) for x in read_topic(BS, f"{b}-aliases-changelog", idle=1.0)] == [(b"x", b"alias")]
    offsets = admin_call(lambda x: x.list_consumer_group_offsets(b))
    assert {(tp.topic, tp.partition): om.offset for tp, om in offsets.items()} == {(inp, 0): 3}  # not A's internals

    r = ps(env, "migrate", "state", "--from-app-id", a, "--to-app-id", b)
    assert r.returncode == 1 and "already holds" in r.stderr and "--force" in r.stderr
    r = ps(env, "migrate", "state", "--from-app-id", a, "--to-app-id", a)
    assert r.returncode == 1


# --- workers ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ops_worker(stack, logdir, sandbox):
    """One worker of its own for the health and perf tests (nothing else sends it traffic)."""
    f = WorkerFactory(logdir, sandbox)
    env = f.env({"PAGERSTREAM_PD_RATE": "100", "PAGERSTREAM_PD_BURST": "50"})
    for k in PD_ENV:
        env.pop(k, None)
    w = f.start(env, name="ops-health")
    yield w
    f.close()


def test_migrate_state_moves_open_incidents_to_a_new_app_id(workers):
    env_a = workers.env()
    for k in PD_ENV:
        env_a.pop(k, None)
    a = env_a["PAGERSTREAM_APP_ID"]
    b = a + "-v2"
    prefix = env_a["PAGERSTREAM_TOPIC_PREFIX"]
    wa = workers.start(env_a, name="state-a")
    dedup = f"moved-{uuid.uuid4().hex[:6]}"
    produce_alerts(prefix, [trigger(dedup)])
    eventually(lambda: "opened" in incident_changes(prefix, dedup), what="incident opened by app A")
    wa.proc.stop()  # SIGTERM: commits and leaves the group
    assert not wa.proc.alive()

    r = ps(env_a, "migrate", "state", "--from-app-id", a, "--to-app-id", b)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "groups" in r.stdout and "committed partition offsets" in r.stdout

    env_b = dict(env_a, PAGERSTREAM_APP_ID=b,
                 PAGERSTREAM_DATADIR=tempfile.mkdtemp(prefix="ps-b-", dir=str(workers.logdir)))
    workers.start(env_b, name="state-b")
    produce_alerts(prefix, [{"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": dedup}])
    # Without the state the resolve would find no open alert and be dropped.
    changes = eventually(lambda: (c := incident_changes(prefix, dedup)) and c[-1] in ("resolved", "dropped") and c,
                         what="the resolve decided by app B")
    assert changes == ["opened", "resolved"], changes  # resolved by B, and A's trigger not replayed


def test_health_full_check_reports_and_fails_on_real_faults(ops_worker):
    env, url = ops_worker.env, ops_worker.url
    prefix = env["PAGERSTREAM_TOPIC_PREFIX"]
    dedup = f"health-{uuid.uuid4().hex[:6]}"
    produce_alerts(prefix, [trigger(dedup)])
    eventually(lambda: "opened" in incident_changes(prefix, dedup), what="incident")
    rc, rep = health(env, url)
    checks = by_name(rep)
    assert rc == 0 and rep["ok"], rep
    for name in ("kafka", "topics", "consumer lag", "redis", "pagerduty events", "worker /healthz", "worker /readyz",
                 "pagerduty breakers", "catalog"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["schemas"]["status"] == "warn"  # the worker created the topics; nobody ran deploy yet
    assert checks["pagerduty rest"]["status"] == "skip"
    assert checks["catalog"]["data"]["services"] >= 1 and checks["redis"]["data"]["ms"] > 0

    # a record the normalize stage cannot read: dead-lettered, counted in the topic and the metrics
    produce_bytes(BS, prefix + "alerts.raw", [(b"junk", b"\x00not avro")])
    eventually(lambda: by_name(health(env, url)[1])["dead letters (since start)"]["status"] == "warn",
               what="dead letter counted")
    rc, rep = health(env, url)
    checks = by_name(rep)
    assert rc == 0 and checks["dead-letter topics"]["data"]["sizes"]["alerts.dead-letter"] == 1
    assert checks["dead letters (since start)"]["data"]["by_stage"] == {"decode": 1.0}  # undecodable raw record

    # Redis down (a closed port): that check fails, the others still run
    rc, rep = health(dict(env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"), url)
    checks = by_name(rep)
    assert rc == 1 and checks["redis"]["status"] == "fail" and checks["kafka"]["status"] == "ok"

    # a topic's config drifted: named with the numbers; deploy repairs it
    alter(prefix + "alerts.normalized", {"retention.ms": "60000"})
    rc, rep = health(env, url)
    bad = by_name(rep)[f"topic {prefix}alerts.normalized"]
    assert rc == 1 and bad["status"] == "fail" and "retention.ms=60000 (want 604800000)" in bad["detail"]
    r = ps(env, "deploy", "--env", "dev")
    assert r.returncode == 0, r.stdout + r.stderr
    rc, rep = health(env, url)
    assert rc == 0 and by_name(rep)["schemas"]["status"] == "ok", rep

    # text output, and the quick check against a worker that is not there
    r = ps(env, "health", "--full-check", "--url", url)
    assert r.returncode == 0 and "✓ redis" in r.stdout and "OK:" in r.stdout
    r = ps(env, "health", "--url", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "✗ worker /healthz" in r.stdout


def test_perf_once_shows_rates_latencies_and_pagerduty_calls(ops_worker, sandbox):
    env, url = ops_worker.env, ops_worker.url
    prefix = env["PAGERSTREAM_TOPIC_PREFIX"]
    keys = [f"perf-{uuid.uuid4().hex[:6]}-{i}" for i in range(5)]
    produce_alerts(prefix, [trigger(k) for k in keys])
    eventually(lambda: all(sandbox.state("requests", dedup_key=k) for k in keys), what="5 calls reached the sandbox")
    r = ps(env, "perf", "--url", url, "--once", "--interval", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert out.startswith("pagerstream perf") and " window " in out.splitlines()[0] and "\x1b[2J" not in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "normalize" in rows and "incident" in rows and " ms" in rows["normalize"]
    pd_line = next(line for line in out.splitlines() if line.startswith("PAGERDUTY"))
    total = int(pd_line.split("(total ")[1].split(")")[0])
    assert total >= 5
    assert f"…{ROUTING_KEY[-4:]} closed" in out
    r = ps(env, "perf", "--url", f"http://127.0.0.1:{free_port()}", "--once", "--interval", "0")
    assert r.returncode == 1 and "cannot read" in r.stdout


def test_health_fails_while_a_pagerduty_breaker_is_open(stack, logdir, workers):
    sb = start_sandbox(logdir)  # its own: faults are global to a sandbox
    try:
        sb.faults({"mode": "500", "count": 1000})
        env = workers.env({"PAGERDUTY_EVENTS_URL": sb.url, "PAGERSTREAM_PD_INLINE_RETRY_SECONDS": "1"})
        for k in PD_ENV:
            env.pop(k, None)
        w = workers.start(env, name="ops-breaker")
        produce_alerts(env["PAGERSTREAM_TOPIC_PREFIX"], [trigger(f"brk-{uuid.uuid4().hex[:6]}-{i}") for i in range(8)])
        eventually(lambda: f'routing_key_hint="{ROUTING_KEY[-4:]}"}} 2.0' in w.metrics(), what="breaker open")
        rc, rep = health(env, w.url)
        br = by_name(rep)["pagerduty breakers"]
        assert rc == 1 and br["status"] == "fail" and br["data"]["open"] == [ROUTING_KEY[-4:]], br
    finally:
        sb.faults({"mode": "clear"})
        sb.proc.stop()


def test_worker_json_logs_are_objects_with_masked_routing_keys(workers, sandbox):
    env = workers.env({"PAGERDUTY_ROUTING_KEY": ROUTING_KEY})
    w = workers.start(env, name="ops-jsonlogs", extra_args=["--log-format", "json", "--loglevel", "info"])
    prefix = env["PAGERSTREAM_TOPIC_PREFIX"]
    dedup = f"json-{uuid.uuid4().hex[:6]}"
    produce_alerts(prefix, [trigger(dedup)])
    eventually(lambda: sandbox.state("requests", dedup_key=dedup), what="delivered")
    w.proc.stop()
    text = w.proc.log_path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    plain = [line for line in lines if not line.startswith("{")]
    # the only plain line: the catalog publication, printed by the CLI before logging starts
    assert all(line.startswith("catalog ") for line in plain), plain[:5]
    objs = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(objs) >= 5
    assert all({"ts", "level", "logger", "message"} <= set(o) for o in objs)
    assert {o["level"] for o in objs} >= {"INFO"}
    assert ROUTING_KEY not in text


def test_health_checks_pagerduty_rest_credentials_without_paging(stack, logdir):
    sb = start_sandbox(logdir)  # its own: the token list is global to a sandbox
    try:
        good, bad = "u+GoodTokenForOps0000000001", "u+WrongTokenForOps000000002"
        httpx.post(f"{sb.url}/sandbox/rest/tokens", json={"valid": [good]}, timeout=10).raise_for_status()
        env = base_env(PAGERDUTY_API_URL=sb.url, PAGERDUTY_EVENTS_URL=sb.url, PAGERSTREAM_ALLOW_PRIVATE_PD_URL="true")
        url = f"http://127.0.0.1:{free_port()}"  # no worker: only the PagerDuty lines matter here
        _, rep = health(dict(env, PAGERDUTY_API_KEY=bad), url)
        rest = by_name(rep)["pagerduty rest"]
        assert rest["status"] == "fail" and "credentials rejected (401 on GET /users)" in rest["detail"]
        assert bad not in json.dumps(rep)
        _, rep = health(dict(env, PAGERDUTY_API_KEY=good), url)
        checks = by_name(rep)
        assert checks["pagerduty rest"]["status"] == "ok" and checks["pagerduty events"]["status"] == "ok"
        assert sb.state("requests") == []  # reachability and credentials checked, no event sent
        _, rep = health(dict(env, PAGERDUTY_EVENTS_URL=f"http://127.0.0.1:{free_port()}"), url)
        assert by_name(rep)["pagerduty events"]["status"] == "fail"
    finally:
        sb.proc.stop()
