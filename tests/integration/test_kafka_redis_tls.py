"""TLS and SASL against a real broker and a real Redis (pagerstream/connections.py, docs/security.md).

A PRIVATE single-node KRaft broker (the jars of .stack/kafka-libs, like tests/faults' OwnKafka) and a
PRIVATE redis-server, both on free loopback ports, with certificates made here (tests/tls.make_pki):

    broker   SASL_SSL  PLAIN (user_alice in the listener's JAAS) and SCRAM-SHA-256 (bob, created by
                       `kafka-storage format --add-scram`), server certificate in a PEM keystore
             SSL       the same certificate; client certificates required (mTLS)
             PLAINTEXT inter-broker traffic and this test's readiness probe only: one node, loopback
             CONTROLLER PLAINTEXT on loopback (KRaft quorum of one)
    redis    --port 0 --tls-port N (TLS only), --tls-auth-clients no, --requirepass

Shown: records round-trip through `kafka_producer` / `kafka_consumer` over SASL_SSL (PLAIN and SCRAM) and
mTLS; a wrong SASL password fails with an authentication error; no CA (the system's CAs) or the wrong CA
fails TLS verification; `redis_client` over rediss:// works with the CA and fails with a wrong password or
without the CA; a real pagerstream worker, given only environment variables, becomes ready (/readyz 200)
against the SASL_SSL listener and the TLS Redis: Faust's consumer/producer got the credentials
(faust_broker_credentials), and so did every other client the worker makes (topics, catalog, models,
audit, Redis). The shared stack (127.0.0.1:9092 / 6379) is not touched. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pagerstream.config import load_settings
from pagerstream.localrun import REPO, free_port
from tests.faults.conftest import OwnKafka, OwnRedis, _die_with_parent
from tests.tls import PKI, make_pki

pytestmark = pytest.mark.integration

KAFKA_LIBS = REPO / ".stack" / "kafka-libs"
PLAIN_USER, PLAIN_PASSWORD = "alice", "alice-secret-" + uuid.uuid4().hex[:12]
SCRAM_USER, SCRAM_PASSWORD = "bob", "bob-secret-" + uuid.uuid4().hex[:12]
REDIS_PASSWORD = "redis-secret-" + uuid.uuid4().hex[:12]
CLIENT_KEY_PASSWORD = "client-key-" + uuid.uuid4().hex[:8]


class SecureKafka(OwnKafka):
    """tests/faults' private broker with SASL_SSL and SSL (mTLS) listeners beside PLAINTEXT (see the
    docstring): only the listener lines and the SCRAM user at format time differ."""

    def __init__(self, home: Path, pki: PKI) -> None:
        super().__init__(home)
        self.pki = pki
        self.sasl_port, self.ssl_port = free_port(), free_port()

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def plain_bootstrap(self) -> str:
        return self.bootstrap

    def listener_props(self) -> str:
        p, c = self.port, self.controller_port
        jaas = "org.apache.kafka.common.security"
        return f"""listeners=PLAINTEXT://127.0.0.1:{p},SASL_SSL://127.0.0.1:{self.sasl_port},SSL://127.0.0.1:{self.ssl_port},CONTROLLER://127.0.0.1:{c}
advertised.listeners=PLAINTEXT://127.0.0.1:{p},SASL_SSL://127.0.0.1:{self.sasl_port},SSL://127.0.0.1:{self.ssl_port}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256
listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}.plain.PlainLoginModule required user_{PLAIN_USER}="{PLAIN_PASSWORD}";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={jaas}.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location={self.pki.server_keystore}
ssl.truststore.type=PEM
ssl.truststore.location={self.pki.ca}
listener.name.ssl.ssl.client.auth=required
offsets.topic.num.partitions=4
"""

    def format_args(self) -> list[str]:
        return ["--add-scram", f"SCRAM-SHA-256=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"]

    def start(self, timeout: float = 90.0) -> None:
        if not list(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
            pytest.skip(f"no Kafka jars in {KAFKA_LIBS} (scripts/stack.sh install)")
        super().start(timeout)


class TlsRedis(OwnRedis):
    """tests/faults' private Redis, TLS only (no plain port) and with a password."""

    def __init__(self, home: Path, pki: PKI) -> None:
        super().__init__(home)
        self.pki = pki

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        import redis

        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", self.pki.server_cert, "--tls-key-file", self.pki.server_key,
             "--tls-ca-cert-file", self.pki.ca, "--tls-auth-clients", "no", "--requirepass", REDIS_PASSWORD,
             "--save", "", "--appendonly", "no", "--dir", str(self.home), "--logfile", str(self.home / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent)  # noqa: PLW1509 - only prctl runs in the child
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"private Redis exited: {(self.home / 'redis.log').read_text(errors='replace')}")
            client = redis.Redis.from_url(self.url, password=REDIS_PASSWORD, ssl_ca_certs=self.pki.ca,
                                          socket_connect_timeout=1, socket_timeout=1)
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.2)
            finally:
                client.close()
        self.stop()
        raise RuntimeError(f"private TLS Redis on {self.port} did not answer within {timeout}s")


# --- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"), client_key_password=CLIENT_KEY_PASSWORD)


@pytest.fixture(scope="module")
def secure_kafka(logdir, pki) -> Iterator[SecureKafka]:
    k = SecureKafka(Path(logdir) / f"secure-kafka-{uuid.uuid4().hex[:6]}", pki)
    k.start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def tls_redis(logdir, pki) -> Iterator[TlsRedis]:
    r = TlsRedis(Path(logdir) / f"tls-redis-{uuid.uuid4().hex[:6]}", pki)
    r.start()
    yield r
    r.stop()


def sasl_env(k: SecureKafka, pki: PKI, *, mechanism: str = "PLAIN", user: str = PLAIN_USER,
             password: str = PLAIN_PASSWORD, ca: str | None = None) -> dict[str, str]:
    env = {"KAFKA_BOOTSTRAP_SERVERS": k.sasl_bootstrap, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "KAFKA_SASL_MECHANISM": mechanism, "KAFKA_SASL_USERNAME": user, "KAFKA_SASL_PASSWORD": password}
    if ca != "":
        env["KAFKA_SSL_CAFILE"] = ca or pki.ca
    return env


def create_topic(k: SecureKafka, name: str) -> None:
    """Over the PLAINTEXT listener: the topic is this test's fixture, not what is under test."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=k.plain_bootstrap, request_timeout_ms=20000)
        await asyncio.wait_for(admin.start(), 30)
        try:
            await asyncio.wait_for(admin.create_topics([NewTopic(name, 1, 1)]), 30)
        finally:
            await admin.close()

    asyncio.run(go())


def round_trip(env: dict[str, str], topic: str, n: int = 5) -> list[bytes]:
    """Produce n records with kafka_producer and read them back with kafka_consumer (both from Settings)."""
    from pagerstream.connections import kafka_consumer, kafka_producer

    s = load_settings(env)
    values = [f"{topic}-{i}".encode() for i in range(n)]

    async def go() -> list[bytes]:
        p = kafka_producer(s, acks="all", enable_idempotence=True, request_timeout_ms=20000)
        await asyncio.wait_for(p.start(), 30)
        try:
            for v in values:
                await asyncio.wait_for(p.send_and_wait(topic, v, key=b"k"), 30)
        finally:
            await p.stop()
        c = kafka_consumer(s, topic, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
                           request_timeout_ms=20000)
        await asyncio.wait_for(c.start(), 30)
        got: list[bytes] = []
        try:
            deadline = time.monotonic() + 30
            while len(got) < n and time.monotonic() < deadline:
                for msgs in (await c.getmany(timeout_ms=500)).values():
                    got += [m.value for m in msgs]
        finally:
            await c.stop()
        return got

    return asyncio.run(go())


def start_failure(env: dict[str, str], caplog) -> tuple[BaseException, str]:
    """Start a producer that must fail; (the exception, the text logged by aiokafka meanwhile)."""
    from pagerstream.connections import kafka_producer

    s = load_settings(env)

    async def go() -> BaseException:
        p = kafka_producer(s, request_timeout_ms=5000, metadata_max_age_ms=5000)
        try:
            await asyncio.wait_for(p.start(), 30)
        except Exception as e:  # noqa: BLE001 - returned to the test
            return e
        finally:
            with contextlib.suppress(Exception):
                await p.stop()
        raise AssertionError("the producer connected, but it should not have")

    with caplog.at_level(logging.DEBUG, logger="aiokafka"):
        caplog.clear()
        err = asyncio.run(go())
        logged = "\n".join(r.getMessage() + (f" {r.exc_info[1]!r}" if r.exc_info else "") for r in caplog.records)
    return err, logged


# --- Kafka ---------------------------------------------------------------------------------------------------
def test_records_round_trip_over_sasl_ssl_with_plain_and_scram(secure_kafka, pki):
    topic = f"tls-rt-{uuid.uuid4().hex[:6]}"
    create_topic(secure_kafka, topic)
    env = sasl_env(secure_kafka, pki)
    got = round_trip(env, topic)
    assert got == [f"{topic}-{i}".encode() for i in range(5)]
    scram = sasl_env(secure_kafka, pki, mechanism="SCRAM-SHA-256", user=SCRAM_USER, password=SCRAM_PASSWORD)
    got = round_trip(scram, topic, n=5)
    assert len(got) == 10 and got[:5] == got[5:]  # the topic now holds both runs


def test_mtls_client_certificate_with_an_encrypted_key(secure_kafka, pki):
    topic = f"tls-mtls-{uuid.uuid4().hex[:6]}"
    create_topic(secure_kafka, topic)
    env = {"KAFKA_BOOTSTRAP_SERVERS": secure_kafka.ssl_bootstrap, "KAFKA_SECURITY_PROTOCOL": "SSL",
           "KAFKA_SSL_CAFILE": pki.ca, "KAFKA_SSL_CERTFILE": pki.client_cert, "KAFKA_SSL_KEYFILE": pki.client_key,
           "KAFKA_SSL_KEY_PASSWORD": CLIENT_KEY_PASSWORD}
    assert round_trip(env, topic, n=3) == [f"{topic}-{i}".encode() for i in range(3)]


def probe(env: dict[str, str]) -> str | None:
    from pagerstream.connections import kafka_probe

    return asyncio.run(kafka_probe(load_settings(env), timeout_s=10))


def test_wrong_sasl_password_is_an_authentication_error(secure_kafka, pki, caplog):
    bad = sasl_env(secure_kafka, pki, password="not-" + PLAIN_PASSWORD)
    err, logged = start_failure(bad, caplog)
    # aiokafka's clients raise a generic "Unable to bootstrap" and log the reason ...
    assert type(err).__name__ == "KafkaConnectionError", repr(err)
    assert "SaslAuthenticationFailed" in logged, logged[-2000:]
    # ... kafka_probe (pagerstream health, the worker's start-up) says it
    why = probe(bad)
    assert why and "authentication failed (SASL PLAIN as alice): " in why and "Invalid username or password" in why
    assert "KAFKA_SASL_PASSWORD" in why
    assert PLAIN_PASSWORD not in why + logged
    scram = sasl_env(secure_kafka, pki, mechanism="SCRAM-SHA-256", user=SCRAM_USER, password="wrong")
    assert "authentication failed (SASL SCRAM-SHA-256 as bob)" in (probe(scram) or "")
    assert probe(sasl_env(secure_kafka, pki)) is None  # the right password
    # the mechanism the listener does not offer
    assert "does not offer SASL mechanism SCRAM-SHA-512" in (probe(sasl_env(secure_kafka, pki,
                                                                          mechanism="SCRAM-SHA-512")) or "")


def test_no_ca_or_the_wrong_ca_is_a_certificate_verification_error(secure_kafka, pki, caplog):
    for env in (sasl_env(secure_kafka, pki, ca=""), sasl_env(secure_kafka, pki, ca=pki.other_ca)):
        err, logged = start_failure(env, caplog)
        assert type(err).__name__ == "KafkaConnectionError", repr(err)
        assert "CERTIFICATE_VERIFY_FAILED" in logged, logged[-2000:]
        why = probe(env) or ""
        assert "TLS certificate verification failed: " in why and "KAFKA_SSL_CAFILE" in why, why
    # protocol mismatches are named too
    assert "TLS listener spoken to in PLAINTEXT" in (probe({"KAFKA_BOOTSTRAP_SERVERS": secure_kafka.sasl_bootstrap})
                                                     or "")
    ssl_no_cert = {"KAFKA_BOOTSTRAP_SERVERS": secure_kafka.ssl_bootstrap, "KAFKA_SECURITY_PROTOCOL": "SSL",
                   "KAFKA_SSL_CAFILE": pki.ca}
    assert "refused the TLS client certificate" in (probe(ssl_no_cert) or "")


def test_health_and_worker_start_report_the_reason(secure_kafka, pki, logdir):
    """`pagerstream health --full-check` and `pagerstream worker` with a wrong SASL password: the reason, not
    "KafkaConnectionError"; with --env production, SASL_SSL + rediss:// raise no transport warning."""
    import json
    import os
    import sys

    base = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_"))}
    bad = {**base, **sasl_env(secure_kafka, pki, password="wrong-password"), "PAGERSTREAM_INGRESS_AUTH": "open",
           "PAGERDUTY_EVENTS_URL": f"http://127.0.0.1:{free_port()}", "PAGERSTREAM_ALLOW_PRIVATE_PD_URL": "true"}
    url = f"http://127.0.0.1:{free_port()}"
    r = subprocess.run([sys.executable, "-m", "pagerstream.cli", "health", "--full-check", "--json", "--url", url,
                        "--timeout", "5", "--env", "production"], env=bad, capture_output=True, text=True,
                       timeout=120, check=False)
    rep = json.loads(r.stdout)
    checks = {c["name"]: c for c in rep["checks"]}
    assert r.returncode == 1 and checks["kafka"]["status"] == "fail", r.stdout + r.stderr
    assert "authentication failed (SASL PLAIN as alice)" in checks["kafka"]["detail"], checks["kafka"]
    sec = checks["transport security"]
    assert sec["status"] == "warn" and [f["var"] for f in sec["data"]["findings"]] == ["REDIS_URL"], sec
    assert "wrong-password" not in r.stdout + r.stderr

    r = subprocess.run([sys.executable, "-m", "pagerstream.cli", "worker", "--web-port", str(free_port())],
                       env={**bad, "PAGERSTREAM_DATADIR": str(Path(logdir) / f"tls-w-{uuid.uuid4().hex[:6]}")},
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"Kafka {secure_kafka.sasl_bootstrap}: " in r.stderr and "authentication failed" in r.stderr, r.stderr
    assert "wrong-password" not in r.stdout + r.stderr


# --- Redis ---------------------------------------------------------------------------------------------------
def test_redis_client_over_rediss_with_the_ca_and_a_password(tls_redis, pki):
    import redis

    from pagerstream.connections import redis_client, redis_sync_client

    env = {"REDIS_URL": tls_redis.url, "REDIS_PASSWORD": REDIS_PASSWORD, "REDIS_SSL_CA_CERTS": pki.ca}
    s = load_settings(env)

    async def go(settings) -> bytes:
        r = redis_client(settings, socket_timeout=5, socket_connect_timeout=5)
        try:
            await r.set("tls-test", b"ok", ex=60)
            return await r.get("tls-test")
        finally:
            await r.aclose()

    assert asyncio.run(go(s)) == b"ok"
    with redis_sync_client(s, socket_timeout=5, socket_connect_timeout=5) as r:
        assert r.ping()

    with pytest.raises(redis.AuthenticationError):  # wrong password
        asyncio.run(go(load_settings({**env, "REDIS_PASSWORD": "wrong-" + REDIS_PASSWORD})))
    with pytest.raises(redis.ConnectionError) as e:  # the system's CAs do not know this one
        asyncio.run(go(load_settings({k: v for k, v in env.items() if k != "REDIS_SSL_CA_CERTS"})))
    assert "certificate verify failed" in str(e.value).lower(), e.value
    with pytest.raises(redis.ConnectionError):  # plain TCP to a TLS-only port
        asyncio.run(go(load_settings({**env, "REDIS_URL": tls_redis.url.replace("rediss://", "redis://"),
                                      "REDIS_SSL_CA_CERTS": ""})))


# --- a real worker -------------------------------------------------------------------------------------------
def test_worker_comes_up_ready_over_sasl_ssl_and_tls_redis(secure_kafka, tls_redis, pki, workers):
    """Only environment variables: KAFKA_SECURITY_PROTOCOL=SASL_SSL & co and a rediss:// REDIS_URL. The worker
    creates its topics, publishes the catalog, starts Faust's consumer and producer, the catalog and model
    consumers and Redis; /readyz is 200 only when all of them work."""
    env = workers.env({**sasl_env(secure_kafka, pki, mechanism="SCRAM-SHA-256", user=SCRAM_USER,
                                  password=SCRAM_PASSWORD),
                       "REDIS_URL": tls_redis.url, "REDIS_PASSWORD": REDIS_PASSWORD, "REDIS_SSL_CA_CERTS": pki.ca,
                       "PAGERSTREAM_PARTITIONS": "1"})
    w = workers.start(env, name=f"tls-worker-{uuid.uuid4().hex[:4]}", ready_timeout=90)
    r = httpx.get(w.url + "/readyz", timeout=5)
    assert r.status_code == 200, r.text
    # and it works: an event through the ingress (Faust's producer), the pipeline's agents (Faust's consumer),
    # the PagerDuty rate limiter (the TLS Redis) to the PagerDuty sandbox
    from tests.conftest import ROUTING_KEY
    from tests.integration.helpers import eventually

    key = f"tls-{uuid.uuid4().hex[:8]}"
    r = httpx.post(w.url + "/v2/enqueue", timeout=10, json={
        "routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": key,
        "payload": {"summary": "over SASL_SSL", "source": "tls-test", "severity": "error"}})
    assert r.status_code == 202, r.text
    got = eventually(lambda: [x for x in workers.sandbox.state("requests", dedup_key=key) if x.get("status") == 202],
                     timeout=60, what="the PagerDuty call")
    assert got[0]["body"]["payload"]["summary"] == "over SASL_SSL"
    for secret in (SCRAM_PASSWORD, REDIS_PASSWORD):
        assert secret not in w.proc.log_tail(400)
