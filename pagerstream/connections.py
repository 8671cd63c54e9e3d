"""Every Kafka and Redis client pagerstream makes, with the TLS and SASL settings of `Settings`.

One place maps the variables (docs/security.md, "TLS and SASL") onto the three client libraries:

* aiokafka (`kafka_client_kwargs`, `kafka_producer`, `kafka_consumer`, `kafka_admin`): `security_protocol`,
  `ssl_context` (made by `aiokafka.helpers.create_ssl_context`), `sasl_mechanism`,
  `sasl_plain_username` / `sasl_plain_password` (aiokafka uses these two for SCRAM as well);
* Faust (`faust_broker_credentials`, for `faust.App(broker_credentials=...)`): faust-streaming's
  `credentials_to_aiokafka_auth` turns the credentials into the same aiokafka arguments for every client
  Faust makes (consumer, producer, the clients that create topics). `SASLCredentials` with an
  `ssl_context` is SASL_SSL, without one SASL_PLAINTEXT; `SSLCredentials(context)` is SSL;
  None is PLAINTEXT;
* redis-py (`redis_client`, `redis_sync_client`): the URL (rediss:// turns TLS on) plus `password`,
  `username` and, for rediss://, `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`, `ssl_check_hostname`.

Call sites that hold `Settings` pass them. Call sites that only hold a bootstrap string (a signature that
predates this module) pass the string: the security settings then come from the process environment
(`env_settings()`: `load_settings()` of the connection variables only, cached per distinct environment).
A worker, a CLI command and a benchmark all read their settings from that same environment, so both
paths agree.

Secrets stay `Secret` in `Settings`; they are unwrapped only into the keyword arguments handed to the
client constructors. Nothing here logs them, and the one place aiokafka would (its DEBUG log of the SASL
authenticate request, which carries a PLAIN password) is redacted by a filter on `aiokafka.conn`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pagerstream.config import Settings, load_settings

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient
    from faust.auth import Credentials

# Settings or a bootstrap string (security settings then from the environment), or None (all from it).
KafkaTarget = Settings | str | None

# What `env_settings()` reads: the connection settings, nothing else (an unrelated bad variable is the
# business of whoever loads the full settings).
CONNECTION_VARS = (
    "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE", "KAFKA_SSL_KEY_PASSWORD",
    "KAFKA_SSL_CHECK_HOSTNAME", "REDIS_URL", "REDIS_PASSWORD", "REDIS_USERNAME", "REDIS_SSL_CA_CERTS",
    "REDIS_SSL_CERTFILE", "REDIS_SSL_KEYFILE", "REDIS_SSL_CHECK_HOSTNAME",
)


class _RedactSaslBytes(logging.Filter):
    """aiokafka.conn logs every request at DEBUG, SaslAuthenticateRequest included, whose bytes are
    user, NUL, user, NUL, password for PLAIN: replaced before any handler sees the record."""

    _BYTES = re.compile(r"""sasl_auth_bytes=b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - not ours to break
            return True
        if "sasl_auth_bytes=" in msg:
            record.msg, record.args = self._BYTES.sub("sasl_auth_bytes=<redacted>", msg), None
        return True


if not any(isinstance(f, _RedactSaslBytes) for f in logging.getLogger("aiokafka.conn").filters):
    logging.getLogger("aiokafka.conn").addFilter(_RedactSaslBytes())

_lock = threading.Lock()
_cached: tuple[tuple[tuple[str, str | None], ...], Settings] | None = None


def env_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from the connection variables of `env` (default: the process environment). Loaded once per
    distinct set of values; raises `ConfigError` like `load_settings` when one of them is invalid."""
    global _cached
    env = os.environ if env is None else env
    key = tuple((name, env.get(name)) for name in CONNECTION_VARS)
    with _lock:
        if _cached is not None and _cached[0] == key:
            return _cached[1]
    s = load_settings({name: value for name, value in key if value is not None})
    with _lock:
        _cached = (key, s)
    return s


def _resolve(target: KafkaTarget) -> tuple[str, Settings]:
    if isinstance(target, Settings):
        return target.kafka_bootstrap_servers, target
    s = env_settings()
    return (target or s.kafka_bootstrap_servers), s


# --- Kafka -------------------------------------------------------------------------------------------------
def kafka_uses_tls(s: Settings) -> bool:
    return s.kafka_security_protocol in ("SSL", "SASL_SSL")


def kafka_uses_sasl(s: Settings) -> bool:
    return s.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def kafka_ssl_context(s: Settings) -> ssl.SSLContext:
    """The client TLS context: KAFKA_SSL_CAFILE (else the system's CAs), the client certificate for mTLS,
    hostname checking unless KAFKA_SSL_CHECK_HOSTNAME=false (the certificate chain is verified either way)."""
    from aiokafka.helpers import create_ssl_context

    ctx = create_ssl_context(
        cafile=s.kafka_ssl_cafile or None,
        certfile=s.kafka_ssl_certfile or None,
        keyfile=s.kafka_ssl_keyfile or None,
        # always a string: with None, OpenSSL would prompt on the terminal for an encrypted key's password
        password=s.kafka_ssl_key_password.get() if s.kafka_ssl_certfile else None,
    )
    if not s.kafka_ssl_check_hostname:
        ctx.check_hostname = False  # verify_mode stays CERT_REQUIRED
    return ctx


def kafka_client_kwargs(s: Settings) -> dict[str, Any]:
    """The security arguments of aiokafka's AIOKafkaProducer / AIOKafkaConsumer / AIOKafkaAdminClient.
    The dict holds the SASL password in clear: hand it to the constructor, never log it."""
    kw: dict[str, Any] = {"security_protocol": s.kafka_security_protocol}
    if kafka_uses_tls(s):
        kw["ssl_context"] = kafka_ssl_context(s)
    if kafka_uses_sasl(s):
        kw["sasl_mechanism"] = s.kafka_sasl_mechanism
        kw["sasl_plain_username"] = s.kafka_sasl_username
        kw["sasl_plain_password"] = s.kafka_sasl_password.get()
    return kw


def faust_broker_credentials(s: Settings) -> Credentials | None:
    """`faust.App(broker_credentials=...)` for these settings (None: PLAINTEXT)."""
    from faust.auth import SASLCredentials, SSLCredentials

    if kafka_uses_sasl(s):
        return SASLCredentials(username=s.kafka_sasl_username, password=s.kafka_sasl_password.get(),
                               mechanism=s.kafka_sasl_mechanism,
                               ssl_context=kafka_ssl_context(s) if kafka_uses_tls(s) else None)
    if kafka_uses_tls(s):
        return SSLCredentials(kafka_ssl_context(s))
    return None


def kafka_producer(target: KafkaTarget = None, **kw: Any) -> AIOKafkaProducer:
    """AIOKafkaProducer(bootstrap_servers=..., <security>, **kw); `kw` wins over the security arguments."""
    from aiokafka import AIOKafkaProducer

    bootstrap, s = _resolve(target)
    return AIOKafkaProducer(**{"bootstrap_servers": bootstrap, **kafka_client_kwargs(s), **kw})


def kafka_consumer(target: KafkaTarget = None, *topics: str, **kw: Any) -> AIOKafkaConsumer:
    """AIOKafkaConsumer(*topics, bootstrap_servers=..., <security>, **kw)."""
    from aiokafka import AIOKafkaConsumer

    bootstrap, s = _resolve(target)
    return AIOKafkaConsumer(*topics, **{"bootstrap_servers": bootstrap, **kafka_client_kwargs(s), **kw})


def kafka_admin(target: KafkaTarget = None, **kw: Any) -> AIOKafkaAdminClient:
    """AIOKafkaAdminClient(bootstrap_servers=..., <security>, **kw)."""
    from aiokafka.admin import AIOKafkaAdminClient

    bootstrap, s = _resolve(target)
    return AIOKafkaAdminClient(**{"bootstrap_servers": bootstrap, **kafka_client_kwargs(s), **kw})


async def kafka_probe(target: KafkaTarget = None, *, timeout_s: float = 10.0) -> str | None:
    """Connect to each bootstrap server the way the clients do (TCP, TLS handshake, SASL, an API versions
    round trip). None as soon as one accepts; otherwise why the last one did not, in words.

    aiokafka's clients hide the reason behind "Unable to bootstrap from [...]" (it is only logged); this
    is what `pagerstream health` and the worker's start-up report instead."""
    from aiokafka.conn import create_conn

    bootstrap, s = _resolve(target)
    kw = kafka_client_kwargs(s)
    why = "no bootstrap server given"
    for server in (h.strip() for h in bootstrap.split(",") if h.strip()):
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(create_conn(host.strip("[]"), int(port),
                                                      request_timeout_ms=int(timeout_s * 1000), **kw), timeout_s)
        except Exception as e:  # noqa: BLE001 - every failure is explained, none is raised
            why = f"{server}: {describe_kafka_error(e, s)}"
            continue
        conn.close()
        return None
    return why


def describe_kafka_error(e: BaseException, s: Settings | None = None) -> str:
    """A Kafka connection failure in words (never a secret): authentication, certificate verification, a
    client certificate refused, a protocol mismatch, refused, timed out."""
    from aiokafka import errors as ke

    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in chain and len(chain) < 6:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    proto = s.kafka_security_protocol if s else "?"
    for x in chain:
        if isinstance(x, (ke.SaslAuthenticationFailed, ke.AuthenticationFailedError)):
            who = f" (SASL {s.kafka_sasl_mechanism} as {s.kafka_sasl_username})" if s and kafka_uses_sasl(s) else ""
            return f"authentication failed{who}: {x} (check KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD)"
        if isinstance(x, ke.UnsupportedSaslMechanismError):
            mech = s.kafka_sasl_mechanism if s else "?"
            return f"authentication failed: the broker does not offer SASL mechanism {mech} (KAFKA_SASL_MECHANISM)"
        if isinstance(x, ssl.SSLCertVerificationError):
            return (f"TLS certificate verification failed: {x.verify_message} (KAFKA_SSL_CAFILE must hold the CA "
                    "that signed the brokers' certificates; KAFKA_SSL_CHECK_HOSTNAME checks their names)")
        if isinstance(x, ssl.SSLError):
            reason = str(x.reason or x)
            if "CERTIFICATE" in reason and "ALERT" in reason:
                return (f"the broker refused the TLS client certificate ({reason}): KAFKA_SSL_CERTFILE / "
                        "KAFKA_SSL_KEYFILE must be signed by a CA the broker trusts")
            if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason:
                return f"TLS handshake failed ({reason}): is this a PLAINTEXT or SASL_PLAINTEXT listener?"
            return f"TLS handshake failed ({reason})"
        if isinstance(x, asyncio.IncompleteReadError) and proto in ("PLAINTEXT", "SASL_PLAINTEXT"):
            return (f"the broker closed the connection: a TLS listener spoken to in {proto}? "
                    "(KAFKA_SECURITY_PROTOCOL)")
        if isinstance(x, ConnectionResetError) and proto in ("SSL", "SASL_SSL"):
            return (f"the connection was reset during the {proto} handshake: a listener without TLS? "
                    "(KAFKA_SECURITY_PROTOCOL)")
        if isinstance(x, ConnectionRefusedError):
            return "connection refused (nothing listens there)"
        if isinstance(x, (TimeoutError, asyncio.TimeoutError, ke.RequestTimedOutError)):
            return "no answer in time (a firewall, or a listener that expects another protocol)"
    return f"{type(e).__name__}: {e}"


# --- Redis -------------------------------------------------------------------------------------------------
def redis_uses_tls(s: Settings) -> bool:
    return s.redis_url.startswith("rediss://")


def redis_client_kwargs(s: Settings) -> dict[str, Any]:
    """The arguments of redis-py's `from_url(s.redis_url, ...)` besides the URL: password, username and,
    for rediss://, the TLS files and hostname checking. Holds the password in clear: never log it."""
    kw: dict[str, Any] = {}
    if s.redis_password:
        kw["password"] = s.redis_password.get()
    if s.redis_username:
        kw["username"] = s.redis_username
    if redis_uses_tls(s):  # redis-py's plain and unix connections refuse ssl_* arguments
        kw["ssl_cert_reqs"] = "required"
        kw["ssl_check_hostname"] = s.redis_ssl_check_hostname
        if s.redis_ssl_ca_certs:
            kw["ssl_ca_certs"] = s.redis_ssl_ca_certs
        if s.redis_ssl_certfile:
            kw["ssl_certfile"] = s.redis_ssl_certfile
            kw["ssl_keyfile"] = s.redis_ssl_keyfile or None
    return kw


def redis_client(settings: Settings | None = None, **kw: Any) -> redis.asyncio.Redis:
    """redis.asyncio.Redis for REDIS_URL with its password/username/TLS (settings None: from the
    environment); `kw` (timeouts, decode_responses, ...) wins over them."""
    import redis.asyncio as aioredis

    s = settings if settings is not None else env_settings()
    return aioredis.from_url(s.redis_url, **{**redis_client_kwargs(s), **kw})


def redis_sync_client(settings: Settings | None = None, **kw: Any) -> redis.Redis:
    """The blocking redis.Redis counterpart of `redis_client` (scripts and benchmarks)."""
    import redis as redis_sync

    s = settings if settings is not None else env_settings()
    return redis_sync.Redis.from_url(s.redis_url, **{**redis_client_kwargs(s), **kw})


# --- what production should not run with ----------------------------------------------------------------------
def transport_findings(s: Settings) -> list[tuple[str, str, str]]:
    """(variable, what is wrong, how to fix it) for connections that cross the network in clear. Used by
    `pagerstream deploy` (a warning in production) and `pagerstream health --env production`."""
    out: list[tuple[str, str, str]] = []
    p = s.kafka_security_protocol
    if p == "PLAINTEXT":
        out.append(("KAFKA_SECURITY_PROTOCOL",
                    ("PLAINTEXT: alerts, routing keys and model checkpoints cross the network unencrypted, and "
                     "any client that reaches a broker may connect"),
                    "KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SSL with a client certificate); see docs/security.md"))
    elif p == "SASL_PLAINTEXT":
        what = "the SASL password itself (PLAIN)" if s.kafka_sasl_mechanism == "PLAIN" else "the SCRAM exchange"
        out.append(("KAFKA_SECURITY_PROTOCOL",
                    f"SASL_PLAINTEXT: {what} and every record cross the network unencrypted",
                    "KAFKA_SECURITY_PROTOCOL=SASL_SSL"))
    if not s.redis_url.startswith(("rediss://", "unix://")):
        out.append(("REDIS_URL",
                    ("not rediss://: the Redis password, rate-limit state and PagerDuty caches cross the network "
                     "unencrypted"),
                    "REDIS_URL=rediss://<host>:<port>/<db> (with REDIS_SSL_CA_CERTS for a private CA)"))
    if kafka_uses_tls(s) and not s.kafka_ssl_check_hostname:
        out.append(("KAFKA_SSL_CHECK_HOSTNAME",
                    "false: a certificate of any host the trusted CAs signed is accepted for every broker",
                    "KAFKA_SSL_CHECK_HOSTNAME=true (certificates naming the brokers' hostnames)"))
    if redis_uses_tls(s) and not s.redis_ssl_check_hostname:
        out.append(("REDIS_SSL_CHECK_HOSTNAME",
                    "false: a certificate of any host the trusted CAs signed is accepted for Redis",
                    "REDIS_SSL_CHECK_HOSTNAME=true"))
    return out


def describe_security(s: Settings) -> str:
    """One line for reports (no secrets): e.g. 'kafka SASL_SSL/PLAIN as alice, redis rediss:// (CA file)'."""
    k = s.kafka_security_protocol
    if kafka_uses_sasl(s):
        k += f"/{s.kafka_sasl_mechanism} as {s.kafka_sasl_username}"
    if kafka_uses_tls(s):
        k += " (CA file)" if s.kafka_ssl_cafile else " (system CAs)"
        if s.kafka_ssl_certfile:
            k += " + client certificate"
    r = s.redis_url.split(":", 1)[0] + "://"
    if redis_uses_tls(s):
        r += " (CA file)" if s.redis_ssl_ca_certs else " (system CAs)"
    if s.redis_password:
        r += f" with password{' as ' + s.redis_username if s.redis_username else ''}"
    return f"kafka {k}, redis {r}"


__all__ = [
    "CONNECTION_VARS",
    "KafkaTarget",
    "describe_kafka_error",
    "describe_security",
    "env_settings",
    "faust_broker_credentials",
    "kafka_admin",
    "kafka_client_kwargs",
    "kafka_consumer",
    "kafka_probe",
    "kafka_producer",
    "kafka_ssl_context",
    "redis_client",
    "redis_client_kwargs",
    "redis_sync_client",
    "transport_findings",
]
