"""Settings from the environment: defaults, one helpful problem per bad variable, all problems at once,
secrets that never print, and the CLI's exit code 2 on bad configuration."""

from __future__ import annotations

import base64
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pagerstream import config
from pagerstream.config import ConfigError, Secret, Settings, load_settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CATALOG = str(FIXTURES / "catalog.example.yaml")

ROUTING_KEY = "R0123456789ABCDEF0123456789ABCDE"  # 32 letters and digits
API_KEY = "u+AbCdEfGhIjKlMnOpQr_S-1"
USER_TOKEN = "pdus+oauth-token-0123456789abcdef"
FERNET_KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()  # 44 chars, 32 bytes
WEBHOOK_SECRET = "whsec-0123456789abcdef0123456789abcdef"
JWT_SECRET = "jwt-secret-exactly-32-characters"  # the minimum length
REDIS_PASSWORD = "redis-p4ssw0rd-not-for-logs"
assert len(JWT_SECRET) == 32 and len(base64.urlsafe_b64decode(FERNET_KEY)) == 32


def test_defaults_with_an_empty_env():
    s = load_settings({})
    assert s == Settings()
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.pagerduty_events_url == "https://events.pagerduty.com"
    assert s.events_enqueue_url == "https://events.pagerduty.com/v2/enqueue"
    assert s.events_change_url == "https://events.pagerduty.com/v2/change/enqueue"
    assert s.ml_prediction_threshold == 0.8
    assert (s.partitions, s.replication_factor, s.pd_rate_per_second, s.pd_burst) == (4, 1, 2.0, 4)
    assert (s.pd_timeout_seconds, s.pd_max_inline_retry_seconds) == (10.0, 10.0)
    assert (s.app_id, s.topic_prefix, s.datadir, s.catalog_path) == ("pagerstream", "", ".pagerstream-data", "")
    assert s.allow_private_pd_url is False
    for secret in (s.redis_password, s.pagerduty_routing_key, s.pagerduty_api_key, s.pagerduty_user_token,
                   s.encryption_key, s.webhook_secret, s.jwt_secret):
        assert isinstance(secret, Secret) and not secret and secret.get() == ""


def test_empty_values_count_as_unset():
    env = {k: "" for k in ("PAGERDUTY_ROUTING_KEY", "PAGERDUTY_API_KEY", "PAGERDUTY_USER_TOKEN", "PAGERDUTY_EVENTS_URL",
                           "AI_MODEL_ENDPOINT", "ML_PREDICTION_THRESHOLD", "ENCRYPTION_KEY", "WEBHOOK_SECRET",
                           "JWT_SECRET", "PAGERSTREAM_PARTITIONS", "PAGERSTREAM_PD_RATE", "PAGERSTREAM_APP_ID",
                           "PAGERSTREAM_CATALOG", "PAGERSTREAM_ALLOW_PRIVATE_PD_URL")}
    assert load_settings(env) == Settings()


def test_good_values_are_parsed():
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "PLAINTEXT://kafka-1.internal:9092, kafka-2.internal:9093",
        "REDIS_URL": "rediss://cache.internal:6380/2",
        "REDIS_PASSWORD": REDIS_PASSWORD,
        "PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "PAGERDUTY_API_KEY": API_KEY,
        "PAGERDUTY_USER_TOKEN": USER_TOKEN,
        "PAGERDUTY_EVENTS_URL": "https://events.eu.pagerduty.com/",
        "AI_MODEL_ENDPOINT": "http://127.0.0.1:11434/v1",
        "ML_PREDICTION_THRESHOLD": " 0.65 ",
        "ENCRYPTION_KEY": FERNET_KEY,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "JWT_SECRET": JWT_SECRET,
        "PAGERSTREAM_APP_ID": "ps-prod.eu_1",
        "PAGERSTREAM_TOPIC_PREFIX": "prod.",
        "PAGERSTREAM_PARTITIONS": "12",
        "PAGERSTREAM_REPLICATION_FACTOR": "3",
        "PAGERSTREAM_DATADIR": "/var/lib/pagerstream",
        "PAGERSTREAM_CATALOG": CATALOG,
        "PAGERSTREAM_PD_RATE": "0.5",
        "PAGERSTREAM_PD_BURST": "10",
        "PAGERSTREAM_PD_TIMEOUT": "2.5",
        "PAGERSTREAM_PD_INLINE_RETRY_SECONDS": "0",
        "PAGERSTREAM_ALLOW_PRIVATE_PD_URL": "yes",
    }
    s = load_settings(env)
    assert s == Settings(
        kafka_bootstrap_servers="kafka-1.internal:9092,kafka-2.internal:9093",
        redis_url="rediss://cache.internal:6380/2",
        redis_password=Secret(REDIS_PASSWORD),
        pagerduty_routing_key=Secret(ROUTING_KEY),
        pagerduty_api_key=Secret(API_KEY),
        pagerduty_user_token=Secret(USER_TOKEN),
        pagerduty_events_url="https://events.eu.pagerduty.com",
        ai_model_endpoint="http://127.0.0.1:11434/v1",
        ml_prediction_threshold=0.65,
        encryption_key=Secret(FERNET_KEY),
        webhook_secret=Secret(WEBHOOK_SECRET),
        jwt_secret=Secret(JWT_SECRET),
        app_id="ps-prod.eu_1",
        topic_prefix="prod.",
        partitions=12,
        replication_factor=3,
        datadir="/var/lib/pagerstream",
        catalog_path=CATALOG,
        pd_rate_per_second=0.5,
        pd_burst=10,
        pd_timeout_seconds=2.5,
        pd_max_inline_retry_seconds=0.0,
        allow_private_pd_url=True,
    )
    assert s.pagerduty_routing_key.get() == ROUTING_KEY
    assert s.events_enqueue_url == "https://events.eu.pagerduty.com/v2/enqueue"
    assert isinstance(s.partitions, int) and isinstance(s.pd_rate_per_second, float)


@pytest.mark.parametrize("value", ["redis://127.0.0.1:6379/0", "unix:///run/redis/redis.sock"])
def test_redis_url_forms_accepted(value: str):
    assert load_settings({"REDIS_URL": value}).redis_url == value


def test_redis_url_password_moves_into_the_secret():
    s = load_settings({"REDIS_URL": "redis://:pw-in-url@redis.internal:6379/1"})
    assert s.redis_url == "redis://redis.internal:6379/1"
    assert s.redis_password.get() == "pw-in-url"


@pytest.mark.parametrize("lo_hi", [("PAGERSTREAM_PARTITIONS", "1", "1024"), ("PAGERSTREAM_REPLICATION_FACTOR", "1", "7"),
                                   ("PAGERSTREAM_PD_RATE", "0.01", "10000"), ("PAGERSTREAM_PD_BURST", "1", "10000"),
                                   ("PAGERSTREAM_PD_TIMEOUT", "0.1", "120"),
                                   ("PAGERSTREAM_PD_INLINE_RETRY_SECONDS", "0", "600"),
                                   ("ML_PREDICTION_THRESHOLD", "0", "1")], ids=lambda t: t[0])
def test_range_bounds_are_inclusive(lo_hi):
    var, lo, hi = lo_hi
    load_settings({var: lo})
    load_settings({var: hi})


# (variable, bad value, a phrase the explanation must contain)
BAD = [
    ("KAFKA_BOOTSTRAP_SERVERS", "localhost", "host:port"),
    ("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka 2:9092", "e.g. 127.0.0.1:9092"),
    ("KAFKA_BOOTSTRAP_SERVERS", " , ", "host:port"),
    ("REDIS_URL", "http://127.0.0.1:6379/0", "redis://host:port/db"),
    ("REDIS_URL", "127.0.0.1:6379", "redis://host:port/db"),
    ("REDIS_URL", "redis://", "redis://host:port/db"),
    # TLS and SASL (pagerstream/connections.py; cross-checks and real files in tests/unit/test_connections.py)
    ("KAFKA_SECURITY_PROTOCOL", "TLS", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    ("KAFKA_SASL_MECHANISM", "GSSAPI", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    ("KAFKA_SASL_MECHANISM", "PLAIN", "only with KAFKA_SECURITY_PROTOCOL=SASL_SSL or SASL_PLAINTEXT (it is PLAINTEXT)"),
    ("KAFKA_SASL_USERNAME", "api key", "without spaces"),
    ("KAFKA_SASL_PASSWORD", "sasl-pw-without-a-sasl-protocol", "only with KAFKA_SECURITY_PROTOCOL=SASL_SSL"),
    ("KAFKA_SSL_CAFILE", "/nonexistent/ca.pem", "readable PEM file"),
    ("KAFKA_SSL_CERTFILE", "/nonexistent/client.pem", "readable PEM file"),
    ("KAFKA_SSL_KEYFILE", "/nonexistent/client.key", "readable PEM file"),
    ("KAFKA_SSL_KEY_PASSWORD", "key-password-without-a-cert", "only with KAFKA_SSL_CERTFILE"),
    ("KAFKA_SSL_CHECK_HOSTNAME", "maybe", "true or false"),
    ("REDIS_USERNAME", "ops user", "without spaces"),
    ("REDIS_SSL_CA_CERTS", "/nonexistent/ca.pem", "readable PEM file"),
    ("REDIS_SSL_CERTFILE", "/nonexistent/client.pem", "readable PEM file"),
    ("REDIS_SSL_KEYFILE", "/nonexistent/client.key", "readable PEM file"),
    ("REDIS_SSL_CHECK_HOSTNAME", "maybe", "true or false"),
    ("PAGERDUTY_ROUTING_KEY", ROUTING_KEY[:-1], "32-character integration key"),
    ("PAGERDUTY_ROUTING_KEY", ROUTING_KEY[:-1] + "-", "32-character integration key"),
    ("PAGERDUTY_API_KEY", "tooshort", "REST API token (20+ characters"),
    ("PAGERDUTY_API_KEY", "abcdefghij klmnopqrstuv", "[A-Za-z0-9_+-]"),
    ("PAGERDUTY_USER_TOKEN", "tooshort", "OAuth bearer token (20+ characters"),
    ("PAGERDUTY_USER_TOKEN", "abcdefghij\tklmnopqrstuvwxyz", "no spaces"),
    ("PAGERDUTY_EVENTS_URL", "ftp://events.pagerduty.com", "https://events.pagerduty.com"),
    ("PAGERDUTY_EVENTS_URL", "events.pagerduty.com", "base URL"),
    ("PAGERDUTY_EVENTS_URL", "https://events.pagerduty.com/?token=x", "base URL"),
    ("PAGERDUTY_EVENTS_URL", "http://10.0.0.5:8080", "PAGERSTREAM_ALLOW_PRIVATE_PD_URL=true"),
    ("AI_MODEL_ENDPOINT", "ws://llm.internal/v1", "http(s) URL"),
    ("AI_MODEL_ENDPOINT", "/v1/chat/completions", "http(s) URL"),
    ("ML_PREDICTION_THRESHOLD", "7", "between 0 and 1"),
    ("ML_PREDICTION_THRESHOLD", "-0.1", "between 0 and 1"),
    ("ML_PREDICTION_THRESHOLD", "nan", "between 0 and 1"),
    ("ML_PREDICTION_THRESHOLD", "high", "a number"),
    ("ENCRYPTION_KEY", base64.urlsafe_b64encode(bytes(31)).decode(), "32 bytes in url-safe base64"),
    ("ENCRYPTION_KEY", base64.urlsafe_b64encode(bytes(33)).decode(), "Fernet key"),
    ("ENCRYPTION_KEY", "correct horse battery staple", "32 bytes"),
    ("WEBHOOK_SECRET", WEBHOOK_SECRET[:31], "at least 32 characters"),
    ("JWT_SECRET", "jwt-too-short", "at least 32 characters"),
    ("PAGERSTREAM_PARTITIONS", "0", "integer between 1 and 1024"),
    ("PAGERSTREAM_PARTITIONS", "4.0", "integer between 1 and 1024"),
    ("PAGERSTREAM_PARTITIONS", "four", "integer between 1 and 1024"),
    ("PAGERSTREAM_REPLICATION_FACTOR", "8", "integer between 1 and 7"),
    ("PAGERSTREAM_PD_RATE", "0", "number between 0.01 and 10000"),
    ("PAGERSTREAM_PD_RATE", "nan", "number between 0.01 and 10000"),
    ("PAGERSTREAM_PD_BURST", "2.5", "integer between 1 and 10000"),
    ("PAGERSTREAM_PD_TIMEOUT", "121", "number between 0.1 and 120"),
    ("PAGERSTREAM_PD_INLINE_RETRY_SECONDS", "-1", "number between 0 and 600"),
    ("PAGERSTREAM_TICK_SECONDS", "0", "number between 0.1 and 3600"),
    ("PAGERSTREAM_RATE_BUCKET_SECONDS", "0", "number between 0.1 and 86400"),
    ("PAGERSTREAM_PREDICTION_THRESHOLD", "2", "number between 0.0 and 1.0"),
    ("PAGERSTREAM_TRANSIENT_PAUSE_SECONDS", "0", "number between 1.0 and 86400"),
    ("PAGERSTREAM_TRANSIENT_P_PAUSE", "0.2", "number between 0.5 and 1.0"),
    ("PAGERSTREAM_TRANSIENT_MIN_EPISODES", "x", "integer between 1 and 1000"),
    ("PAGERSTREAM_TRANSIENT_PAUSE", "maybe", "true or false"),
    ("PAGERSTREAM_PREDICTION_PAGE", "maybe", "true or false"),
    ("PAGERSTREAM_ASSIGN_RESPONDERS", "maybe", "true or false"),
    ("PAGERSTREAM_ROUTING_CONFIG", "/nonexistent/routing.yaml", "readable YAML file"),
    ("PAGERSTREAM_SCHEDULES", "/nonexistent/schedules.yaml", "readable YAML file"),
    ("PAGERDUTY_WEBHOOK_SECRETS", "ops=" + "x" * 31, "32+ characters"),
    ("PAGERSTREAM_PD_INLINE_RETRY_SECONDS", "inf", "number between 0 and 600"),
    ("PAGERSTREAM_APP_ID", "my app", "letters, digits, '.', '_' or '-'"),
    ("PAGERSTREAM_APP_ID", "a" * 101, "letters, digits"),
    ("PAGERSTREAM_TOPIC_PREFIX", "prod/", "letters, digits"),
    ("PAGERSTREAM_CATALOG", "/nonexistent/catalog.yaml", "'/nonexistent/catalog.yaml' does not exist"),
    ("PAGERSTREAM_CATALOG", str(FIXTURES), "readable YAML file"),
    ("PAGERSTREAM_ALLOW_PRIVATE_PD_URL", "maybe", "true or false"),
    ("PAGERSTREAM_INGRESS_AUTH", "none", "expected keys or open"),
    ("PAGERSTREAM_INGRESS_KEYS", "/nonexistent/dir/ingress-keys", "existing directory"),
    ("PAGERSTREAM_INGRESS_KEYS", str(FIXTURES), "not a regular file"),
    ("PAGERSTREAM_INGRESS_RATE", "0", "number between 0.01 and 100000"),
    ("PAGERSTREAM_INGRESS_BURST", "1.5", "integer between 1 and 1000000"),
    ("PAGERSTREAM_JWT_LEEWAY", "301", "number between 0 and 300"),
    ("PAGERSTREAM_JWT_AUDIENCE", "pager stream", "without spaces"),
    ("PAGERSTREAM_JWT_ISSUER", "x" * 201, "up to 200 characters"),
]
# Read but accepted as-is: nothing to validate.
UNVALIDATED = {"REDIS_PASSWORD", "PAGERSTREAM_DATADIR"}
SECRET_VARS = {"REDIS_PASSWORD", "PAGERDUTY_ROUTING_KEY", "PAGERDUTY_API_KEY", "PAGERDUTY_USER_TOKEN",
               "ENCRYPTION_KEY", "WEBHOOK_SECRET", "JWT_SECRET"}


def test_the_table_covers_every_variable_load_settings_reads():
    read = set(re.findall(r'"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"', inspect.getsource(config.load_settings)))
    assert {"KAFKA_BOOTSTRAP_SERVERS", "ML_PREDICTION_THRESHOLD", "PAGERSTREAM_PD_RATE"} <= read  # the regex works
    assert read == {var for var, _, _ in BAD} | UNVALIDATED


@pytest.mark.parametrize("var, value, expect", BAD, ids=[f"{v}={x[:20]!r}" for v, x, _ in BAD])
def test_bad_value_is_reported_with_the_variable_and_the_expectation(var: str, value: str, expect: str):
    with pytest.raises(ConfigError) as e:
        load_settings({var: value})
    assert len(e.value.problems) == 1, e.value.problems
    (name, why), = e.value.problems
    assert name == var
    assert why.startswith(("expected ", "plain http")), why
    assert expect in why
    assert f"{var}: {why}" in str(e.value)
    if var in SECRET_VARS:  # a wrong secret is still a secret
        assert value not in str(e.value) and value not in repr(e.value.problems)


@pytest.mark.parametrize("var", sorted(UNVALIDATED))
def test_unvalidated_variables_take_any_value(var: str):
    s = load_settings({var: "  some value with spaces / and: colons  "})
    got = s.redis_password.get() if var == "REDIS_PASSWORD" else s.datadir
    assert got == "some value with spaces / and: colons"


def test_all_problems_are_reported_at_once():
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "localhost",
        "PAGERDUTY_ROUTING_KEY": "too-short",
        "ML_PREDICTION_THRESHOLD": "7",
        "PAGERSTREAM_PARTITIONS": "0",
        "PAGERSTREAM_CATALOG": "/nonexistent.yaml",
        # good ones in between change nothing
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "PAGERSTREAM_PD_BURST": "8",
    }
    with pytest.raises(ConfigError) as e:
        load_settings(env)
    assert [v for v, _ in e.value.problems] == [
        "KAFKA_BOOTSTRAP_SERVERS", "PAGERDUTY_ROUTING_KEY", "ML_PREDICTION_THRESHOLD", "PAGERSTREAM_PARTITIONS",
        "PAGERSTREAM_CATALOG"]
    msg = str(e.value)
    for var, why in e.value.problems:
        assert f"{var}: {why}" in msg
    assert "too-short" not in msg


def test_load_settings_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("PAGERSTREAM_PD_BURST", "17")
    monkeypatch.setenv("PAGERSTREAM_TOPIC_PREFIX", "envtest.")
    s = load_settings()
    assert (s.pd_burst, s.topic_prefix) == (17, "envtest.")


# --- secrets -----------------------------------------------------------------------------------------
SECRETS_ENV = {
    "REDIS_PASSWORD": REDIS_PASSWORD,
    "PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
    "PAGERDUTY_API_KEY": API_KEY,
    "PAGERDUTY_USER_TOKEN": USER_TOKEN,
    "ENCRYPTION_KEY": FERNET_KEY,
    "WEBHOOK_SECRET": WEBHOOK_SECRET,
    "JWT_SECRET": JWT_SECRET,
}


def test_secrets_never_appear_in_repr_or_str():
    assert set(SECRETS_ENV) == SECRET_VARS
    s = load_settings(SECRETS_ENV)
    texts = [repr(s), str(s), f"{s}", f"{s!r}", repr(vars(s) if hasattr(s, "__dict__") else s)]
    for var, secret in SECRETS_ENV.items():
        for t in texts:
            assert secret not in t, f"{var} leaked"
    assert "Secret('****')" in repr(s)
    assert s.jwt_secret.get() == JWT_SECRET  # still usable


def test_secret_does_not_leak_through_formatting_or_errors():
    sec = Secret("hunter2-hunter2")
    percent = "%s %r" % (sec, sec)  # noqa: UP031 - old-style formatting is what logging uses
    for text in (repr(sec), str(sec), f"{sec}", f"{sec!s:>40}", percent, repr([sec]), repr({"k": sec})):
        assert "hunter2" not in text and "****" in text
    assert repr(Secret("")) == "Secret('')"
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b") and Secret("a") != "a"
    assert len({Secret("a"), Secret("a")}) == 1
    # a bad value of another variable: the message lists problems, not values of secrets
    with pytest.raises(ConfigError) as e:
        load_settings({**SECRETS_ENV, "PAGERSTREAM_PARTITIONS": "0"})
    for secret in SECRETS_ENV.values():
        assert secret not in str(e.value)


def test_password_inside_redis_url_does_not_leak():
    s = load_settings({"REDIS_URL": "redis://:hunter2-in-url@redis.internal:6379/0"})
    assert "hunter2-in-url" not in repr(s)


@pytest.mark.parametrize("var", ["AI_MODEL_ENDPOINT", "PAGERDUTY_EVENTS_URL"])
def test_credentials_inside_outbound_urls_are_refused_or_hidden(var: str):
    env = {var: "https://svc:sk-live-abc123@llm.example.com/v1", "PAGERSTREAM_ALLOW_PRIVATE_PD_URL": "true"}
    try:
        s = load_settings(env)
    except ConfigError as e:
        assert [v for v, _ in e.problems] == [var]
        assert "sk-live-abc123" not in str(e)
    else:
        assert "sk-live-abc123" not in repr(s)


# --- plain-http PagerDuty URL --------------------------------------------------------------------------
@pytest.mark.parametrize("flag", [None, "", "false", "0", "no"])
def test_http_events_url_refused_without_the_flag(flag):
    env = {"PAGERDUTY_EVENTS_URL": "http://127.0.0.1:8089"}
    if flag is not None:
        env["PAGERSTREAM_ALLOW_PRIVATE_PD_URL"] = flag
    with pytest.raises(ConfigError) as e:
        load_settings(env)
    [(var, why)] = e.value.problems
    assert var == "PAGERDUTY_EVENTS_URL"
    assert "plain http" in why and "PAGERSTREAM_ALLOW_PRIVATE_PD_URL=true" in why


@pytest.mark.parametrize("flag", ["true", "TRUE", "1", "yes", " True "])
def test_http_events_url_allowed_with_the_flag(flag):
    s = load_settings({"PAGERDUTY_EVENTS_URL": "http://127.0.0.1:8089/", "PAGERSTREAM_ALLOW_PRIVATE_PD_URL": flag})
    assert s.allow_private_pd_url is True
    assert s.pagerduty_events_url == "http://127.0.0.1:8089"
    assert s.events_enqueue_url == "http://127.0.0.1:8089/v2/enqueue"
    assert s.events_change_url == "http://127.0.0.1:8089/v2/change/enqueue"


def test_https_events_url_needs_no_flag():
    s = load_settings({"PAGERDUTY_EVENTS_URL": "https://events.eu.pagerduty.com"})
    assert (s.pagerduty_events_url, s.allow_private_pd_url) == ("https://events.eu.pagerduty.com", False)


def test_bad_flag_and_http_url_are_both_reported():
    with pytest.raises(ConfigError) as e:
        load_settings({"PAGERDUTY_EVENTS_URL": "http://127.0.0.1:8089", "PAGERSTREAM_ALLOW_PRIVATE_PD_URL": "maybe"})
    assert [v for v, _ in e.value.problems] == ["PAGERSTREAM_ALLOW_PRIVATE_PD_URL", "PAGERDUTY_EVENTS_URL"]


# --- the CLI -----------------------------------------------------------------------------------------
def _clean_env(**extra: str) -> dict[str, str]:
    read = set(re.findall(r'"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"', inspect.getsource(config.load_settings)))
    env = {k: v for k, v in os.environ.items() if k not in read}
    env.update(extra)
    return env


def _cli(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pagerstream.cli", "topics", "list"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_exits_2_and_names_the_bad_variable():
    r = _cli(_clean_env(ML_PREDICTION_THRESHOLD="7", PAGERSTREAM_TOPIC_PREFIX="clitest."))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "configuration error" in r.stderr
    assert "ML_PREDICTION_THRESHOLD: expected a number between 0 and 1" in r.stderr
    assert "clitest." not in r.stdout  # nothing was listed
    assert "Traceback" not in r.stderr


def test_cli_runs_with_good_configuration():
    """Control for the test above: same command, valid env."""
    r = _cli(_clean_env(ML_PREDICTION_THRESHOLD="0.7", PAGERSTREAM_TOPIC_PREFIX="clitest."))
    assert r.returncode == 0, r.stderr
    assert "clitest.alerts.raw" in r.stdout
