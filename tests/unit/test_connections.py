"""TLS and SASL settings (pagerstream/config.py) and what pagerstream/connections.py makes of them for aiokafka,
Faust and redis-py. No network here (tests/integration/test_kafka_redis_tls.py has the real broker and Redis):
the certificate files are real (tests/tls.make_pki) and so are the SSL contexts and client objects."""

from __future__ import annotations

import inspect
import logging
import re
import ssl
from pathlib import Path

import pytest

from pagerstream import config, connections
from pagerstream.config import ConfigError, Secret, load_settings
from pagerstream.connections import (
    describe_kafka_error,
    describe_security,
    env_settings,
    faust_broker_credentials,
    kafka_admin,
    kafka_client_kwargs,
    kafka_consumer,
    kafka_producer,
    redis_client,
    redis_client_kwargs,
    redis_sync_client,
    transport_findings,
)
from tests.tls import PKI, make_pki

SASL_PASSWORD = "sasl-p4ss-never-in-logs-7f3a"
KEY_PASSWORD = "client-key-p4ss-never-in-logs"
REDIS_PASSWORD = "redis-p4ss-never-in-logs-91"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"), client_key_password=KEY_PASSWORD)


def sasl_ssl(pki: PKI | None = None, **over: str) -> dict[str, str]:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "broker-1:9093,broker-2:9093", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "ABCDEF123456", "KAFKA_SASL_PASSWORD": SASL_PASSWORD}
    if pki:
        env["KAFKA_SSL_CAFILE"] = pki.ca
    env.update(over)
    return {k: v for k, v in env.items() if v != ""}


def problems(env: dict[str, str]) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        load_settings(env)
    return dict(e.value.problems)


# --- validation -----------------------------------------------------------------------------------------------
def test_defaults_are_plaintext_with_hostname_checks_on():
    s = load_settings({})
    assert s.kafka_security_protocol == "PLAINTEXT" and s.kafka_ssl_check_hostname and s.redis_ssl_check_hostname
    assert kafka_client_kwargs(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_broker_credentials(s) is None
    assert redis_client_kwargs(s) == {}


def test_sasl_protocols_need_mechanism_user_and_password():
    got = problems({"KAFKA_SECURITY_PROTOCOL": "sasl_ssl"})
    assert set(got) == {"KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"}
    assert all(why.startswith("expected ") and "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs it" in why
               for why in got.values()), got
    assert "PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512" in got["KAFKA_SASL_MECHANISM"]
    got = problems({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "scram-sha-512",
                    "KAFKA_SASL_USERNAME": "svc"})
    assert list(got) == ["KAFKA_SASL_PASSWORD"]
    s = load_settings(sasl_ssl(KAFKA_SASL_MECHANISM="scram-sha-256"))
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism, s.kafka_sasl_username) == (
        "SASL_SSL", "SCRAM-SHA-256", "ABCDEF123456")


def test_settings_a_protocol_would_not_use_are_refused(pki):
    # SASL settings with a protocol without SASL: credentials silently unused would mean no authentication
    got = problems({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u",
                    "KAFKA_SASL_PASSWORD": SASL_PASSWORD})
    assert set(got) == {"KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"}
    assert all("only with KAFKA_SECURITY_PROTOCOL=SASL_SSL or SASL_PLAINTEXT (it is SSL)" in w for w in got.values())
    # TLS files with a protocol without TLS
    got = problems(sasl_ssl(KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SSL_CAFILE=pki.ca))
    assert got == {"KAFKA_SSL_CAFILE": "expected only with KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL "
                                       "(it is SASL_PLAINTEXT)"}
    # Redis TLS files without rediss://
    got = problems({"REDIS_URL": "redis://cache:6379/0", "REDIS_SSL_CA_CERTS": pki.ca})
    assert got == {"REDIS_SSL_CA_CERTS": "expected only with a rediss:// REDIS_URL (TLS)"}
    # SASL over plaintext is allowed (deploy/health warn about it in production)
    assert load_settings(sasl_ssl(KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT")).kafka_security_protocol == "SASL_PLAINTEXT"


def test_tls_files_must_exist_and_load(pki, tmp_path):
    missing = str(tmp_path / "nope.pem")
    got = problems({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": missing})
    assert got["KAFKA_SSL_CAFILE"] == f"expected a readable PEM file; {missing!r} does not exist (or is not a file)"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    got = problems({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(junk)})
    assert got["KAFKA_SSL_CAFILE"].startswith(f"expected PEM CA certificates; {str(junk)!r} does not load ("), got
    # a client certificate whose (encrypted) key does not open: wrong password, or none
    for pw in ("wrong-" + KEY_PASSWORD, None):
        env = {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": pki.ca, "KAFKA_SSL_CERTFILE": pki.client_cert,
               "KAFKA_SSL_KEYFILE": pki.client_key, "KAFKA_SSL_KEY_PASSWORD": pw}
        got = problems({k: v for k, v in env.items() if v})
        assert list(got) == ["KAFKA_SSL_CERTFILE"], got
        assert "expected a PEM client certificate that loads with KAFKA_SSL_KEYFILE and KAFKA_SSL_KEY_PASSWORD" \
            in got["KAFKA_SSL_CERTFILE"]
        assert KEY_PASSWORD not in got["KAFKA_SSL_CERTFILE"]
    # a key without its certificate, a key password without a certificate
    got = problems({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": pki.client_key,
                    "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD})
    assert set(got) == {"KAFKA_SSL_KEYFILE", "KAFKA_SSL_KEY_PASSWORD"}
    # Redis: the key must not be encrypted (redis-py would ask on the terminal); the server's key is not
    got = problems({"REDIS_URL": "rediss://cache:6380/0", "REDIS_SSL_CERTFILE": pki.client_cert,
                    "REDIS_SSL_KEYFILE": pki.client_key})
    assert "(the key must not be encrypted)" in got["REDIS_SSL_CERTFILE"]
    s = load_settings({"REDIS_URL": "rediss://cache:6380/0", "REDIS_SSL_CA_CERTS": pki.ca,
                       "REDIS_SSL_CERTFILE": pki.server_cert, "REDIS_SSL_KEYFILE": pki.server_key})
    assert (s.redis_ssl_ca_certs, s.redis_ssl_certfile, s.redis_ssl_keyfile) == (pki.ca, pki.server_cert,
                                                                                pki.server_key)


def test_redis_username_from_the_variable_or_the_url():
    assert load_settings({"REDIS_USERNAME": "pagerstream"}).redis_username == "pagerstream"
    s = load_settings({"REDIS_URL": "rediss://svc:pw-in-url@cache:6380/0"})
    assert s.redis_username == "svc" and s.redis_password.get() == "pw-in-url" and "pw-in-url" not in s.redis_url
    assert load_settings({"REDIS_URL": "redis://default:pw@cache:6379/0"}).redis_username == ""
    got = problems({"REDIS_URL": "redis://svc:pw@cache:6379/0", "REDIS_USERNAME": "other"})
    assert got == {"REDIS_USERNAME": "expected the user of REDIS_URL ('svc') or no user in REDIS_URL"}


def test_every_connection_variable_is_read_by_load_settings_and_by_env_settings():
    read = set(re.findall(r'"((?:KAFKA|REDIS)_[A-Z0-9_]+)"', inspect.getsource(config.load_settings)))
    assert read == set(connections.CONNECTION_VARS)


# --- what the clients get -----------------------------------------------------------------------------------------
def test_ssl_context_trusts_the_ca_and_checks_hostnames(pki):
    s = load_settings({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": pki.ca})
    kw = kafka_client_kwargs(s)
    assert set(kw) == {"security_protocol", "ssl_context"} and kw["security_protocol"] == "SSL"
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "pagerstream test CA"),),)]
    off = kafka_client_kwargs(load_settings({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CHECK_HOSTNAME": "false"}))
    assert not off["ssl_context"].check_hostname and off["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert len(off["ssl_context"].get_ca_certs()) > 0 or ssl.get_default_verify_paths().cafile is None  # system CAs


def test_kwargs_per_protocol(pki):
    s = load_settings(sasl_ssl(pki))
    kw = kafka_client_kwargs(s)
    assert {k: v for k, v in kw.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_plain_username": "ABCDEF123456",
        "sasl_plain_password": SASL_PASSWORD}
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    kw = kafka_client_kwargs(load_settings(sasl_ssl(KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
                                                    KAFKA_SASL_MECHANISM="SCRAM-SHA-512")))
    assert kw == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                  "sasl_plain_username": "ABCDEF123456", "sasl_plain_password": SASL_PASSWORD}
    # mTLS: the client certificate and its encrypted key are loaded into the context
    mtls = load_settings({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": pki.ca,
                          "KAFKA_SSL_CERTFILE": pki.client_cert, "KAFKA_SSL_KEYFILE": pki.client_key,
                          "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD})
    assert kafka_client_kwargs(mtls)["security_protocol"] == "SSL"


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_faust_credentials_give_faust_the_same_aiokafka_arguments(protocol, pki):
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    env = sasl_ssl(pki if protocol.endswith("SSL") else None, KAFKA_SECURITY_PROTOCOL=protocol,
                   KAFKA_SASL_MECHANISM="SCRAM-SHA-256")
    if not protocol.startswith("SASL"):
        env = {k: v for k, v in env.items() if not k.startswith("KAFKA_SASL_")}
    s = load_settings(env)
    ours = kafka_client_kwargs(s)
    theirs = dict(credentials_to_aiokafka_auth(faust_broker_credentials(s)))
    for d in (ours, theirs):
        ctx = d.pop("ssl_context", None)
        if protocol.endswith("SSL"):
            assert isinstance(ctx, ssl.SSLContext) and ctx.check_hostname
            assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "pagerstream test CA"),),)]
        else:
            assert ctx is None
    assert ours == theirs, (ours, theirs)
    creds = faust_broker_credentials(s)
    if creds is not None:
        assert SASL_PASSWORD not in repr(creds) and SASL_PASSWORD not in str(creds)


async def test_client_factories_pass_the_settings_through(pki):
    s = load_settings(sasl_ssl(pki, KAFKA_SASL_MECHANISM="SCRAM-SHA-512"))
    p = kafka_producer(s, acks="all", enable_idempotence=True)
    c = kafka_consumer(s, "topic-a", "topic-b", group_id=None, enable_auto_commit=False)
    a = kafka_admin(s, request_timeout_ms=1234)
    try:
        for client in (p.client, c._client, a._client):
            assert client._bootstrap_servers == "broker-1:9093,broker-2:9093"
            assert client._security_protocol == "SASL_SSL" and client._sasl_mechanism == "SCRAM-SHA-512"
            assert client._sasl_plain_username == "ABCDEF123456"
            assert client._ssl_context.get_ca_certs()[0]["subject"] == ((("commonName", "pagerstream test CA"),),)
        assert c.subscription() == {"topic-a", "topic-b"}
        assert a._client._request_timeout_ms == 1234
        # the caller's arguments win over the security ones
        plain = kafka_producer(s, security_protocol="PLAINTEXT", ssl_context=None)
        assert plain.client._security_protocol == "PLAINTEXT"
        await plain.stop()
    finally:
        await p.stop()
        await c.stop()
        await a.close()


async def test_a_bootstrap_string_takes_the_security_settings_from_the_environment(pki, monkeypatch):
    for k in connections.CONNECTION_VARS:
        monkeypatch.delenv(k, raising=False)
    p = kafka_producer("127.0.0.1:1")
    assert p.client._security_protocol == "PLAINTEXT" and p.client._bootstrap_servers == "127.0.0.1:1"
    await p.stop()
    for k, v in sasl_ssl(pki).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PAGERSTREAM_PARTITIONS", "not-read-here")  # an unrelated bad variable is not our business
    c = kafka_consumer("127.0.0.1:2", group_id=None)
    assert c._client._security_protocol == "SASL_SSL" and c._client._bootstrap_servers == "127.0.0.1:2"
    assert c._client._sasl_plain_password == SASL_PASSWORD
    await c.stop()
    assert kafka_admin()._client._bootstrap_servers == "broker-1:9093,broker-2:9093"  # None: all from the env
    assert env_settings() is env_settings()  # cached while the environment stays the same
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "other")
    assert env_settings().kafka_sasl_username == "other"
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "bogus")
    with pytest.raises(ConfigError):
        kafka_producer("127.0.0.1:3")


async def test_redis_clients_get_password_username_and_tls(pki):
    s = load_settings({"REDIS_URL": "rediss://cache.internal:6380/2", "REDIS_PASSWORD": REDIS_PASSWORD,
                       "REDIS_USERNAME": "pagerstream", "REDIS_SSL_CA_CERTS": pki.ca,
                       "REDIS_SSL_CHECK_HOSTNAME": "false"})
    assert redis_client_kwargs(s) == {"password": REDIS_PASSWORD, "username": "pagerstream",
                                      "ssl_cert_reqs": "required", "ssl_check_hostname": False,
                                      "ssl_ca_certs": pki.ca}
    r = redis_client(s, socket_timeout=3)
    try:
        pool = r.connection_pool
        assert pool.connection_class.__name__ == "SSLConnection"
        kw = pool.connection_kwargs
        assert (kw["host"], kw["port"], kw["db"], kw["username"], kw["password"]) == (
            "cache.internal", 6380, 2, "pagerstream", REDIS_PASSWORD)
        assert kw["ssl_ca_certs"] == pki.ca and kw["ssl_check_hostname"] is False and kw["socket_timeout"] == 3
        assert REDIS_PASSWORD not in repr(r) + repr(pool)
    finally:
        await r.aclose()
    sync = redis_sync_client(s)
    assert sync.connection_pool.connection_class.__name__ == "SSLConnection"
    sync.close()
    # plain and unix URLs: no ssl_* arguments (their connection classes refuse them)
    plain = load_settings({"REDIS_URL": "redis://:pw@cache:6379/0"})
    assert redis_client_kwargs(plain) == {"password": "pw"}
    unix = load_settings({"REDIS_URL": "unix:///run/redis.sock"})
    assert redis_client_kwargs(unix) == {}
    r = redis_client(unix)
    assert r.connection_pool.connection_class.__name__ == "UnixDomainSocketConnection"
    await r.aclose()


# --- secrets -------------------------------------------------------------------------------------------------
async def test_secrets_never_in_repr_str_logs_or_reports(pki, caplog):
    env = {**sasl_ssl(pki), "REDIS_URL": "rediss://cache:6380/0", "REDIS_PASSWORD": REDIS_PASSWORD}
    s = load_settings(env)
    assert isinstance(s.kafka_sasl_password, Secret) and isinstance(s.kafka_ssl_key_password, Secret)
    mtls = load_settings({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": pki.client_cert,
                          "KAFKA_SSL_KEYFILE": pki.client_key, "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD})
    with caplog.at_level(logging.DEBUG):
        texts = [repr(s), str(s), f"{s!r}", repr(mtls), str(mtls), describe_security(s), describe_security(mtls),
                 repr(faust_broker_credentials(s)), repr(faust_broker_credentials(mtls)),
                 repr(transport_findings(s))]
        kafka_client_kwargs(mtls)
        p = kafka_producer(s)
        texts.append(repr(p))
        await p.stop()
        r = redis_client(s)
        texts.append(repr(r))
        await r.aclose()
    texts += [rec.getMessage() for rec in caplog.records]
    for t in texts:
        for secret in (SASL_PASSWORD, KEY_PASSWORD, REDIS_PASSWORD):
            assert secret not in t, t
    assert "Secret('****')" in repr(s)
    with pytest.raises(ConfigError) as e:  # a problem elsewhere: the message carries no secret either
        load_settings({**env, "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD})
    assert KEY_PASSWORD not in str(e.value) and SASL_PASSWORD not in str(e.value)


# --- production findings --------------------------------------------------------------------------------------
def test_transport_findings_name_plaintext_connections():
    assert [v for v, _, _ in transport_findings(load_settings({}))] == ["KAFKA_SECURITY_PROTOCOL", "REDIS_URL"]
    sasl_plain = load_settings(sasl_ssl(KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT"))
    (var, msg, fix), _ = transport_findings(sasl_plain)
    assert var == "KAFKA_SECURITY_PROTOCOL" and "the SASL password itself (PLAIN)" in msg and fix.endswith("SASL_SSL")
    good = load_settings({**sasl_ssl(), "REDIS_URL": "rediss://cache:6380/0"})
    assert transport_findings(good) == []
    assert transport_findings(load_settings({**sasl_ssl(), "REDIS_URL": "unix:///run/redis.sock"})) == []
    lax = load_settings({**sasl_ssl(), "KAFKA_SSL_CHECK_HOSTNAME": "no", "REDIS_URL": "rediss://c:1/0",
                         "REDIS_SSL_CHECK_HOSTNAME": "0"})
    assert [v for v, _, _ in transport_findings(lax)] == ["KAFKA_SSL_CHECK_HOSTNAME", "REDIS_SSL_CHECK_HOSTNAME"]
    assert describe_security(good) == "kafka SASL_SSL/PLAIN as ABCDEF123456 (system CAs), redis rediss:// (system CAs)"


def test_deploy_warns_in_production_and_notes_elsewhere():
    from pagerstream.ops.deploy import DeployReport, secret_findings

    env = {"PAGERSTREAM_REPLICATION_FACTOR": "3"}
    s = load_settings(env)
    prod = {f.var: f for f in secret_findings(env, s, "production")}
    for var in ("KAFKA_SECURITY_PROTOCOL", "REDIS_URL"):
        assert prod[var].level == "warning" and prod[var].fix, prod[var]
    assert DeployReport("production", True, [], None, list(prod.values())).problems  # other problems exist ...
    assert not [p for p in DeployReport("production", True, [], None, list(prod.values())).problems
                if p.startswith(("KAFKA_SECURITY_PROTOCOL", "REDIS_URL"))]  # ... but these are warnings only
    dev = {f.var: f.level for f in secret_findings(env, s, "dev")}
    assert dev["KAFKA_SECURITY_PROTOCOL"] == dev["REDIS_URL"] == "note"
    secure = {**env, **sasl_ssl(), "REDIS_URL": "rediss://cache:6380/0"}
    assert not {"KAFKA_SECURITY_PROTOCOL", "REDIS_URL"} & {f.var for f in secret_findings(
        secure, load_settings(secure), "production")}


def test_health_security_check_is_a_warning_only_in_production():
    from pagerstream.ops import OK, WARN
    from pagerstream.ops.health import HealthOptions, security_check

    s = load_settings({})
    c = security_check(s, HealthOptions(environment="production"))
    assert c.name == "transport security" and c.status == WARN
    assert "KAFKA_SECURITY_PROTOCOL: PLAINTEXT" in c.detail and "REDIS_URL: not rediss://" in c.detail
    c = security_check(s, HealthOptions())
    assert c.status == OK and "a warning with --env production" in c.detail
    good = load_settings({**sasl_ssl(), "REDIS_URL": "rediss://cache:6380/0"})
    c = security_check(good, HealthOptions(environment="production"))
    assert c.status == OK and c.data["findings"] == [] and c.data["kafka_security_protocol"] == "SASL_SSL"


def test_kafka_errors_in_words():
    import asyncio

    from aiokafka import errors as ke

    s = load_settings(sasl_ssl())
    e = ke.KafkaConnectionError("Unable to bootstrap")
    e.__cause__ = ke.SaslAuthenticationFailed("Authentication failed: Invalid username or password")
    assert describe_kafka_error(e, s).startswith("authentication failed (SASL PLAIN as ABCDEF123456): ")
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "self-signed certificate in certificate chain"
    assert describe_kafka_error(verify, s) == (
        "TLS certificate verification failed: self-signed certificate in certificate chain (KAFKA_SSL_CAFILE must "
        "hold the CA that signed the brokers' certificates; KAFKA_SSL_CHECK_HOSTNAME checks their names)")
    closed = ke.KafkaConnectionError("Connection at x closed")
    closed.__context__ = asyncio.IncompleteReadError(b"abc", 100)
    assert "a TLS listener spoken to in PLAINTEXT" in describe_kafka_error(closed, load_settings({}))
    assert describe_kafka_error(ConnectionRefusedError(), s) == "connection refused (nothing listens there)"


async def test_kafka_probe_names_a_closed_port(pki):
    from pagerstream.connections import kafka_probe
    from pagerstream.localrun import free_port

    port = free_port()
    why = await kafka_probe(load_settings({"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}), timeout_s=3)
    assert why == f"127.0.0.1:{port}: connection refused (nothing listens there)"


def test_cert_files_on_disk_are_what_the_test_pki_says(pki):
    assert Path(pki.ca).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "ENCRYPTED" in Path(pki.client_key).read_text()


def test_aiokafka_debug_log_of_the_sasl_request_is_redacted(caplog):
    """aiokafka.conn logs SaslAuthenticateRequest at DEBUG with the PLAIN bytes user\\0user\\0password."""
    import pagerstream.connections  # noqa: F401 - installs the filter

    log = logging.getLogger("aiokafka.conn")
    req = "SaslAuthenticateRequest_v1(sasl_auth_bytes=b'alice\\x00alice\\x00" + SASL_PASSWORD + "')"
    with caplog.at_level(logging.DEBUG, logger="aiokafka.conn"):
        log.debug("Request to %s %d: %s", "127.0.0.1:9093", 3, req)
    assert caplog.records and SASL_PASSWORD not in caplog.text
    assert "SaslAuthenticateRequest_v1(sasl_auth_bytes=<redacted>)" in caplog.text


def test_json_log_masker_knows_the_new_secrets():
    from pagerstream.logging_json import SecretMasker

    env = {**sasl_ssl(), "REDIS_URL": "rediss://cache:6380/0"}
    m = SecretMasker.from_settings(load_settings(env))
    assert SASL_PASSWORD not in m.mask(f"connecting with {SASL_PASSWORD} now")
