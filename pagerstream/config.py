"""Settings, read once from the environment at start-up and validated.

A bad value stops start-up with `ConfigError` naming the variable and what is expected.
Secrets are held as `Secret` so that they never show up in logs, reprs or tracebacks.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlparse

from pagerstream.netguard import outbound_url_problem


class ConfigError(ValueError):
    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{var}: {why}" for var, why in problems))


class Secret:
    """A string that refuses to print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('****')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: Secret = field(default_factory=lambda: Secret(""))
    pagerduty_routing_key: Secret = field(default_factory=lambda: Secret(""))
    pagerduty_api_key: Secret = field(default_factory=lambda: Secret(""))
    pagerduty_user_token: Secret = field(default_factory=lambda: Secret(""))
    pagerduty_events_url: str = "https://events.pagerduty.com"
    ai_model_endpoint: str = ""
    ml_prediction_threshold: float = 0.8
    encryption_key: Secret = field(default_factory=lambda: Secret(""))
    webhook_secret: Secret = field(default_factory=lambda: Secret(""))
    jwt_secret: Secret = field(default_factory=lambda: Secret(""))
    # pagerstream's own knobs
    app_id: str = "pagerstream"
    topic_prefix: str = ""
    partitions: int = 4
    replication_factor: int = 1
    datadir: str = ".pagerstream-data"
    catalog_path: str = ""
    pd_rate_per_second: float = 2.0
    pd_burst: int = 4
    pd_timeout_seconds: float = 10.0
    pd_max_inline_retry_seconds: float = 10.0
    allow_private_pd_url: bool = False
    tick_seconds: float = 5.0
    rate_bucket_seconds: float = 60.0
    prediction_threshold: float = 0.1
    # Predictions scoring at least this (on the detector's scale) also send PagerDuty a warning-level
    # trigger when prediction_page is on; see prediction_page_score() for how ML_PREDICTION_THRESHOLD maps.
    prediction_page: bool = False
    transient_pause: bool = True
    transient_pause_seconds: float = 300.0
    transient_p_pause: float = 0.8
    transient_min_episodes: int = 3
    routing_config_path: str = ""  # PAGERSTREAM_ROUTING_CONFIG: route incidents by rules (docs/routing.md)
    schedules_path: str = ""  # PAGERSTREAM_SCHEDULES: on-call schedules kept as code, for routing
    assign_responders: bool = False  # PAGERSTREAM_ASSIGN_RESPONDERS: reassign in PagerDuty to the routed responder
    # PagerDuty V3 webhook subscriptions we receive: (name in the URL, its signing secrets), sorted by name.
    pagerduty_webhook_secrets: tuple[tuple[str, tuple[Secret, ...]], ...] = ()
    # Authentication of the HTTP surface (pagerstream/auth.py, docs/security.md).
    ingress_auth: str = "keys"  # PAGERSTREAM_INGRESS_AUTH: keys (default: a worker without keys refuses to start) | open
    ingress_keys_path: str = ""  # PAGERSTREAM_INGRESS_KEYS: file of hashed ingress keys (`pagerstream auth ingress-key`)
    ingress_rate_per_second: float = 100.0  # PAGERSTREAM_INGRESS_RATE: requests/s per key, shared through Redis
    ingress_burst: int = 1000  # PAGERSTREAM_INGRESS_BURST
    jwt_audience: str = ""  # PAGERSTREAM_JWT_AUDIENCE: required `aud` of operator tokens (empty: tokens must have none)
    jwt_issuer: str = ""  # PAGERSTREAM_JWT_ISSUER: required `iss` of operator tokens (empty: not checked)
    jwt_leeway_seconds: float = 30.0  # PAGERSTREAM_JWT_LEEWAY: clock skew allowed on exp/nbf/iat
    # TLS and SASL of the Kafka and Redis clients (pagerstream/connections.py, docs/security.md "TLS and SASL").
    kafka_security_protocol: str = "PLAINTEXT"  # KAFKA_SECURITY_PROTOCOL: PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_sasl_mechanism: str = ""  # KAFKA_SASL_MECHANISM: PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    kafka_sasl_username: str = ""  # KAFKA_SASL_USERNAME
    kafka_sasl_password: Secret = field(default_factory=lambda: Secret(""))  # KAFKA_SASL_PASSWORD
    kafka_ssl_cafile: str = ""  # KAFKA_SSL_CAFILE: PEM CA bundle (empty: the system's CAs)
    kafka_ssl_certfile: str = ""  # KAFKA_SSL_CERTFILE: PEM client certificate (mTLS)
    kafka_ssl_keyfile: str = ""  # KAFKA_SSL_KEYFILE: PEM key of the client certificate
    kafka_ssl_key_password: Secret = field(default_factory=lambda: Secret(""))  # KAFKA_SSL_KEY_PASSWORD
    kafka_ssl_check_hostname: bool = True  # KAFKA_SSL_CHECK_HOSTNAME
    redis_username: str = ""  # REDIS_USERNAME: ACL user (or the user of REDIS_URL); empty: `default`
    redis_ssl_ca_certs: str = ""  # REDIS_SSL_CA_CERTS (rediss:// only; empty: the system's CAs)
    redis_ssl_certfile: str = ""  # REDIS_SSL_CERTFILE: client certificate when Redis asks for one
    redis_ssl_keyfile: str = ""  # REDIS_SSL_KEYFILE
    redis_ssl_check_hostname: bool = True  # REDIS_SSL_CHECK_HOSTNAME

    def prediction_page_score(self) -> float:
        """ML_PREDICTION_THRESHOLD (0..1, default 0.8) on the rate detector's scale.

        The detector's score is the rise of its anomaly likelihood over the last 20 points; on NAB
        its optimal thresholds were 0.04 to 0.10 and scores above 0.5 are rare. So the operator's
        0..1 knob is mapped linearly onto [prediction_threshold, 0.5]: 0 pages at every published
        prediction, 1 only at the strongest rises, the default 0.8 at 0.1 + 0.8 * 0.4 = 0.42.
        """
        lo = self.prediction_threshold
        return lo + self.ml_prediction_threshold * max(0.0, 0.5 - lo)

    @property
    def events_enqueue_url(self) -> str:
        return self.pagerduty_events_url.rstrip("/") + "/v2/enqueue"

    @property
    def events_change_url(self) -> str:
        return self.pagerduty_events_url.rstrip("/") + "/v2/change/enqueue"

    def webhook_secrets(self, subscription: str) -> tuple[Secret, ...] | None:
        """The signing secrets of one PagerDuty webhook subscription; None when it is not configured."""
        for name, secrets in self.pagerduty_webhook_secrets:
            if name == subscription:
                return secrets
        return None


_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
_ROUTING_KEY = re.compile(r"^[A-Za-z0-9]{32}$")
_SUBSCRIPTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
_WEBHOOK_SECRETS_FORMAT = ("expected name=secret[|secret...][,name=secret...] with names of 1-64 characters "
                           "[A-Za-z0-9._-] and secrets of 32+ characters without spaces, ',' or '|'")


def _webhook_secrets(value: str) -> tuple[tuple[tuple[str, tuple[Secret, ...]], ...], str | None]:
    """Parse `name=secret1|secret2,name2=secret3`. A problem names the entry by position only: a
    mistyped entry may be a secret (or part of one), so no text from the value is repeated."""
    out: dict[str, tuple[Secret, ...]] = {}
    for i, entry in enumerate((e.strip() for e in value.split(",")), start=1):
        if not entry:
            continue
        name, sep, rest = entry.partition("=")
        name = name.strip()
        if not sep or not _SUBSCRIPTION_NAME.match(name):
            return (), f"{_WEBHOOK_SECRETS_FORMAT} (entry {i} has no valid 'name=')"
        if name in out:
            return (), f"{_WEBHOOK_SECRETS_FORMAT} (entry {i} repeats a name)"
        secrets = [s.strip() for s in rest.split("|")]
        if not secrets or any(len(s) < 32 or any(c.isspace() for c in s) for s in secrets):
            return (), f"{_WEBHOOK_SECRETS_FORMAT} (entry {i}: a secret is too short or has spaces)"
        out[name] = tuple(Secret(s) for s in dict.fromkeys(secrets))
    if not out:
        return (), f"{_WEBHOOK_SECRETS_FORMAT} (no subscription given)"
    return tuple(sorted(out.items())), None


# TLS and SASL of the Kafka and Redis clients (pagerstream/connections.py maps them onto aiokafka, Faust, redis-py).
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _readable_file_problem(path: str) -> str | None:
    if not os.path.isfile(path):
        return f"expected a readable PEM file; {path!r} does not exist (or is not a file)"
    if not os.access(path, os.R_OK):
        return f"expected a readable PEM file; {path!r} is not readable by this user"
    return None


def _tls_files_problems(ca: str, cert: str, key: str, password: str,
                        names: tuple[str, str, str], password_name: str | None) -> list[tuple[str, str]]:
    """Load the CA bundle and the client certificate chain the way the clients will, so that a wrong file or
    a wrong key password stops start-up here rather than at the first connection. The key password is
    passed as a string ("" when unset): OpenSSL must never prompt on a terminal for it."""
    import ssl

    out: list[tuple[str, str]] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, ValueError) as e:
            out.append((names[0], f"expected PEM CA certificates; {ca!r} does not load ({_ssl_reason(e)})"))
    if cert:
        try:
            ctx.load_cert_chain(cert, key or None, password=password)
        except (ssl.SSLError, ValueError) as e:
            with_key = f" with {names[2]}" if key else f" (its key in the same file, or {names[2]})"
            pw = f" and {password_name}" if password_name else " (the key must not be encrypted)"
            out.append((names[1], (f"expected a PEM client certificate that loads{with_key}{pw}: not a PEM "
                                   f"certificate, a key that does not match it, or a wrong key password "
                                   f"({_ssl_reason(e)})")))
    return out


def _ssl_reason(e: Exception) -> str:
    text = getattr(e, "reason", None) or (e.args[1] if len(e.args) > 1 else str(e))
    text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", re.sub(r"^\[[^\]]*\]\s*", "", str(text)))
    return text.replace("_", " ").lower() or type(e).__name__


def _bool(v: str) -> bool | None:
    return {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": False}.get(
        v.strip().lower()
    )


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every variable; report all problems at once."""
    env = os.environ if env is None else env
    problems: list[tuple[str, str]] = []
    kw: dict[str, object] = {}

    def get(name: str) -> str | None:
        v = env.get(name)
        return None if v is None else v.strip()

    v = get("KAFKA_BOOTSTRAP_SERVERS")
    if v is not None:
        hosts = [h.strip() for h in v.split(",") if h.strip()]
        if not hosts or not all(_HOSTPORT.match(h.split("://")[-1]) and 0 < int(h.rsplit(":", 1)[1]) < 65536
                                and not h.split("://")[-1].startswith(":") for h in hosts):
            problems.append(("KAFKA_BOOTSTRAP_SERVERS", "expected host:port[,host:port...], e.g. 127.0.0.1:9092"))
        else:
            kw["kafka_bootstrap_servers"] = ",".join(h.split("://")[-1] for h in hosts)

    v = get("REDIS_URL")
    redis_url_ok = True
    if v is not None:
        u = urlparse(v)
        if u.scheme not in ("redis", "rediss", "unix") or (u.scheme != "unix" and not u.hostname):
            problems.append(("REDIS_URL", "expected redis://host:port/db, rediss://… or unix://path"))
            redis_url_ok = False
        else:
            if u.password:  # keep the password out of the URL (which gets logged) and in a Secret
                kw["redis_password"] = Secret(u.password)
                netloc = u.hostname + (f":{u.port}" if u.port else "")
                if u.username and u.username != "default":
                    netloc = f"{u.username}@{netloc}"
                v = u._replace(netloc=netloc).geturl()
            kw["redis_url"] = v
    if (v := get("REDIS_PASSWORD")) is not None:
        kw["redis_password"] = Secret(v)

    # TLS and SASL of the Kafka and Redis clients. Settings a protocol would not use are refused rather than
    # ignored: credentials configured but silently unused would mean a plaintext, unauthenticated client.
    protocol: str | None = "PLAINTEXT"
    if v := get("KAFKA_SECURITY_PROTOCOL"):
        protocol = v.upper() if v.upper() in KAFKA_SECURITY_PROTOCOLS else None
        if protocol is None:  # unknown: the cross-checks below are skipped
            problems.append(("KAFKA_SECURITY_PROTOCOL", "expected " + ", ".join(KAFKA_SECURITY_PROTOCOLS[:-1])
                             + " or " + KAFKA_SECURITY_PROTOCOLS[-1]))
        else:
            kw["kafka_security_protocol"] = protocol
    sasl = protocol is not None and protocol.startswith("SASL")
    tls = protocol is not None and protocol.endswith("SSL")
    unused_sasl = f"expected only with KAFKA_SECURITY_PROTOCOL=SASL_SSL or SASL_PLAINTEXT (it is {protocol})"
    needed = f"KAFKA_SECURITY_PROTOCOL={protocol} needs it"
    if v := get("KAFKA_SASL_MECHANISM"):
        if v.upper() not in KAFKA_SASL_MECHANISMS:
            problems.append(("KAFKA_SASL_MECHANISM", "expected " + ", ".join(KAFKA_SASL_MECHANISMS[:-1]) + " or "
                             + KAFKA_SASL_MECHANISMS[-1]))
        elif protocol is not None and not sasl:
            problems.append(("KAFKA_SASL_MECHANISM", unused_sasl))
        else:
            kw["kafka_sasl_mechanism"] = v.upper()
    elif sasl:
        problems.append(("KAFKA_SASL_MECHANISM", f"expected {' | '.join(KAFKA_SASL_MECHANISMS)}: {needed}"))
    if v := get("KAFKA_SASL_USERNAME"):
        if len(v) > 255 or any(c.isspace() or not c.isprintable() for c in v):
            problems.append(("KAFKA_SASL_USERNAME", "expected up to 255 printable characters without spaces"))
        elif protocol is not None and not sasl:
            problems.append(("KAFKA_SASL_USERNAME", unused_sasl))
        else:
            kw["kafka_sasl_username"] = v
    elif sasl:
        problems.append(("KAFKA_SASL_USERNAME", f"expected the SASL user name (an API key): {needed}"))
    if v := get("KAFKA_SASL_PASSWORD"):
        if protocol is not None and not sasl:
            problems.append(("KAFKA_SASL_PASSWORD", unused_sasl))
        else:
            kw["kafka_sasl_password"] = Secret(v)
    elif sasl:
        problems.append(("KAFKA_SASL_PASSWORD", f"expected the SASL password (an API secret): {needed}"))
    unused_tls = f"expected only with KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL (it is {protocol})"
    kafka_files: dict[str, str] = {}
    for name, attr in (("KAFKA_SSL_CAFILE", "kafka_ssl_cafile"), ("KAFKA_SSL_CERTFILE", "kafka_ssl_certfile"),
                       ("KAFKA_SSL_KEYFILE", "kafka_ssl_keyfile")):
        if v := get(name):
            if why := _readable_file_problem(v):
                problems.append((name, why))
            elif protocol is not None and not tls:
                problems.append((name, unused_tls))
            else:
                kw[attr] = kafka_files[name] = v
    if v := get("KAFKA_SSL_KEY_PASSWORD"):
        if not get("KAFKA_SSL_CERTFILE"):
            problems.append(("KAFKA_SSL_KEY_PASSWORD",
                             "expected only with KAFKA_SSL_CERTFILE (it decrypts the key of that certificate)"))
        else:
            kw["kafka_ssl_key_password"] = Secret(v)
    if "KAFKA_SSL_KEYFILE" in kafka_files and not get("KAFKA_SSL_CERTFILE"):
        problems.append(("KAFKA_SSL_KEYFILE", "expected together with KAFKA_SSL_CERTFILE (the certificate of this key)"))
    if kafka_files:
        problems += _tls_files_problems(kafka_files.get("KAFKA_SSL_CAFILE", ""),
                                        kafka_files.get("KAFKA_SSL_CERTFILE", ""),
                                        kafka_files.get("KAFKA_SSL_KEYFILE", ""), get("KAFKA_SSL_KEY_PASSWORD") or "",
                                        ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"),
                                        "KAFKA_SSL_KEY_PASSWORD")
    redis_tls = str(kw.get("redis_url", Settings.redis_url)).startswith("rediss://")
    redis_files: dict[str, str] = {}
    for name, attr in (("REDIS_SSL_CA_CERTS", "redis_ssl_ca_certs"), ("REDIS_SSL_CERTFILE", "redis_ssl_certfile"),
                       ("REDIS_SSL_KEYFILE", "redis_ssl_keyfile")):
        if v := get(name):
            if why := _readable_file_problem(v):
                problems.append((name, why))
            elif redis_url_ok and not redis_tls:
                problems.append((name, "expected only with a rediss:// REDIS_URL (TLS)"))
            else:
                kw[attr] = redis_files[name] = v
    if "REDIS_SSL_KEYFILE" in redis_files and not get("REDIS_SSL_CERTFILE"):
        problems.append(("REDIS_SSL_KEYFILE", "expected together with REDIS_SSL_CERTFILE (the certificate of this key)"))
    if redis_files:
        problems += _tls_files_problems(redis_files.get("REDIS_SSL_CA_CERTS", ""),
                                        redis_files.get("REDIS_SSL_CERTFILE", ""),
                                        redis_files.get("REDIS_SSL_KEYFILE", ""), "",
                                        ("REDIS_SSL_CA_CERTS", "REDIS_SSL_CERTFILE", "REDIS_SSL_KEYFILE"), None)
    for name, attr in (("KAFKA_SSL_CHECK_HOSTNAME", "kafka_ssl_check_hostname"),
                       ("REDIS_SSL_CHECK_HOSTNAME", "redis_ssl_check_hostname")):
        if v := get(name):  # unset or empty: true
            if (b := _bool(v)) is None:
                problems.append((name, "expected true or false"))
            else:
                kw[attr] = b
    url_user = urlparse(str(kw.get("redis_url", ""))).username if redis_url_ok else None
    url_user = None if url_user in (None, "", "default") else url_user
    if v := get("REDIS_USERNAME"):
        if len(v) > 255 or any(c.isspace() or not c.isprintable() for c in v):
            problems.append(("REDIS_USERNAME", "expected an ACL user name (printable, without spaces)"))
        elif url_user and url_user != v:
            problems.append(("REDIS_USERNAME", f"expected the user of REDIS_URL ({url_user!r}) or no user in REDIS_URL"))
        else:
            kw["redis_username"] = v
    elif url_user:
        kw["redis_username"] = url_user

    v = get("PAGERDUTY_ROUTING_KEY")
    if v:
        if not _ROUTING_KEY.match(v):
            problems.append(("PAGERDUTY_ROUTING_KEY", "expected the 32-character integration key (letters and digits)"))
        else:
            kw["pagerduty_routing_key"] = Secret(v)
    v = get("PAGERDUTY_API_KEY")
    if v:
        if not re.fullmatch(r"[A-Za-z0-9_+\-]{20,}", v):
            problems.append(("PAGERDUTY_API_KEY", "expected a REST API token (20+ characters of [A-Za-z0-9_+-])"))
        else:
            kw["pagerduty_api_key"] = Secret(v)
    v = get("PAGERDUTY_USER_TOKEN")
    if v:
        if len(v) < 20 or any(c.isspace() for c in v):
            problems.append(("PAGERDUTY_USER_TOKEN", "expected an OAuth bearer token (20+ characters, no spaces)"))
        else:
            kw["pagerduty_user_token"] = Secret(v)

    for name, attr in (("PAGERSTREAM_PREDICTION_PAGE", "prediction_page"),
                       ("PAGERSTREAM_TRANSIENT_PAUSE", "transient_pause"),
                       ("PAGERSTREAM_ASSIGN_RESPONDERS", "assign_responders")):
        if (v := get(name)) is not None and v != "":
            b = _bool(v)
            if b is None:
                problems.append((name, "expected true or false"))
            else:
                kw[attr] = b
    allow_private = _bool(get("PAGERSTREAM_ALLOW_PRIVATE_PD_URL") or "")
    if allow_private is None:
        problems.append(("PAGERSTREAM_ALLOW_PRIVATE_PD_URL", "expected true or false"))
        allow_private = False
    kw["allow_private_pd_url"] = allow_private
    v = get("PAGERDUTY_EVENTS_URL")
    if v:
        u = urlparse(v)
        if u.scheme not in ("https", "http") or not u.hostname or u.query or u.fragment or "/v2/" in u.path + "/":
            problems.append(("PAGERDUTY_EVENTS_URL", "expected a base URL like https://events.pagerduty.com "
                                                     "(without /v2/enqueue)"))
        elif why := outbound_url_problem(v, allow_private=allow_private):
            problems.append(("PAGERDUTY_EVENTS_URL", why))
        else:
            kw["pagerduty_events_url"] = v.rstrip("/")
    v = get("AI_MODEL_ENDPOINT")
    if v:
        u = urlparse(v)
        if u.scheme not in ("https", "http") or not u.hostname:
            problems.append(("AI_MODEL_ENDPOINT", "expected an http(s) URL of an OpenAI-compatible API"))
        elif why := outbound_url_problem(v, allow_private=allow_private):
            problems.append(("AI_MODEL_ENDPOINT", why))
        else:
            kw["ai_model_endpoint"] = v
    v = get("ML_PREDICTION_THRESHOLD")
    if v:
        try:
            f = float(v)
            if not 0.0 <= f <= 1.0:
                raise ValueError
            kw["ml_prediction_threshold"] = f
        except ValueError:
            problems.append(("ML_PREDICTION_THRESHOLD", "expected a number between 0 and 1"))
    v = get("ENCRYPTION_KEY")
    if v:
        try:  # comma-separated for rotation: the first key encrypts, all of them decrypt
            for part in v.split(","):
                raw = base64.urlsafe_b64decode(part.strip() + "=" * (-len(part.strip()) % 4))
                if len(raw) != 32:
                    raise ValueError
            kw["encryption_key"] = Secret(v)
        except (ValueError, TypeError):
            problems.append(("ENCRYPTION_KEY", "expected 32 bytes in url-safe base64 (a Fernet key), "
                                               "or several separated by commas (newest first)"))
    v = get("PAGERDUTY_WEBHOOK_SECRETS")
    if v:
        hooks, why = _webhook_secrets(v)
        if why:
            problems.append(("PAGERDUTY_WEBHOOK_SECRETS", why))
        else:
            kw["pagerduty_webhook_secrets"] = hooks
    for name, attr in (("WEBHOOK_SECRET", "webhook_secret"), ("JWT_SECRET", "jwt_secret")):
        v = get(name)
        if v:
            if len(v) < 32:
                problems.append((name, "expected at least 32 characters of secret"))
            else:
                kw[attr] = Secret(v)

    for name, attr, conv, lo, hi in (
        ("PAGERSTREAM_PARTITIONS", "partitions", int, 1, 1024),
        ("PAGERSTREAM_REPLICATION_FACTOR", "replication_factor", int, 1, 7),
        ("PAGERSTREAM_PD_RATE", "pd_rate_per_second", float, 0.01, 10000),
        ("PAGERSTREAM_PD_BURST", "pd_burst", int, 1, 10000),
        ("PAGERSTREAM_PD_TIMEOUT", "pd_timeout_seconds", float, 0.1, 120),
        ("PAGERSTREAM_PD_INLINE_RETRY_SECONDS", "pd_max_inline_retry_seconds", float, 0, 600),
        ("PAGERSTREAM_TICK_SECONDS", "tick_seconds", float, 0.1, 3600),
        ("PAGERSTREAM_RATE_BUCKET_SECONDS", "rate_bucket_seconds", float, 0.1, 86400),
        ("PAGERSTREAM_PREDICTION_THRESHOLD", "prediction_threshold", float, 0.0, 1.0),
        ("PAGERSTREAM_TRANSIENT_PAUSE_SECONDS", "transient_pause_seconds", float, 1.0, 86400),
        ("PAGERSTREAM_TRANSIENT_P_PAUSE", "transient_p_pause", float, 0.5, 1.0),
        ("PAGERSTREAM_TRANSIENT_MIN_EPISODES", "transient_min_episodes", int, 1, 1000),
    ):
        v = get(name)
        if v:
            try:
                x = conv(v)
                if not lo <= x <= hi:
                    raise ValueError
                kw[attr] = x
            except ValueError:
                problems.append((name, f"expected {'an integer' if conv is int else 'a number'} between {lo} and {hi}"))
    for name, attr in (("PAGERSTREAM_APP_ID", "app_id"), ("PAGERSTREAM_TOPIC_PREFIX", "topic_prefix")):
        v = get(name)
        if v:
            if not re.fullmatch(r"[A-Za-z0-9._\-]{1,100}", v):
                problems.append((name, "expected letters, digits, '.', '_' or '-'"))
            else:
                kw[attr] = v
    if v := get("PAGERSTREAM_DATADIR"):
        kw["datadir"] = v
    for name, attr in (("PAGERSTREAM_ROUTING_CONFIG", "routing_config_path"), ("PAGERSTREAM_SCHEDULES", "schedules_path")):
        if v := get(name):
            if not os.path.isfile(v):
                problems.append((name, f"expected a readable YAML file; {v!r} does not exist"))
            else:
                kw[attr] = v
    if v := get("PAGERSTREAM_CATALOG"):
        if not os.path.isfile(v):
            problems.append(("PAGERSTREAM_CATALOG", f"expected a readable YAML file; {v!r} does not exist"))
        else:
            kw["catalog_path"] = v
    if (v := get("PAGERSTREAM_INGRESS_AUTH")) is not None and v != "":
        if v.lower() not in ("keys", "open"):
            problems.append(("PAGERSTREAM_INGRESS_AUTH", "expected keys or open"))
        else:
            kw["ingress_auth"] = v.lower()
    if v := get("PAGERSTREAM_INGRESS_KEYS"):
        from pagerstream.auth import key_file_problem

        if why := key_file_problem(v):
            problems.append(("PAGERSTREAM_INGRESS_KEYS", why))
        else:
            kw["ingress_keys_path"] = v
    for name, attr, conv, lo, hi in (("PAGERSTREAM_INGRESS_RATE", "ingress_rate_per_second", float, 0.01, 100000),
                                     ("PAGERSTREAM_INGRESS_BURST", "ingress_burst", int, 1, 1000000),
                                     ("PAGERSTREAM_JWT_LEEWAY", "jwt_leeway_seconds", float, 0, 300)):
        if v := get(name):
            try:
                x = conv(v)
                if not lo <= x <= hi:
                    raise ValueError
                kw[attr] = x
            except ValueError:
                problems.append((name, f"expected {'an integer' if conv is int else 'a number'} between {lo} and {hi}"))
    for name, attr in (("PAGERSTREAM_JWT_AUDIENCE", "jwt_audience"), ("PAGERSTREAM_JWT_ISSUER", "jwt_issuer")):
        if v := get(name):
            if len(v) > 200 or any(c.isspace() for c in v):
                problems.append((name, "expected up to 200 characters without spaces"))
            else:
                kw[attr] = v
    if problems:
        raise ConfigError(problems)
    return Settings(**kw)  # type: ignore[arg-type]


def load_settings_or_exit() -> Settings:
    """For commands: the settings, or every problem on stderr and exit status 2."""
    import sys

    try:
        return load_settings()
    except ConfigError as e:
        print("pagerstream: configuration error:", file=sys.stderr)
        for var, why in e.problems:
            print(f"  {var}: {why}", file=sys.stderr)
        sys.exit(2)
