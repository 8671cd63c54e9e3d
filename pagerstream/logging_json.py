"""Structured logs: one JSON object per line, with secrets masked.

Fields: ts (UTC, ISO 8601 with milliseconds), level, logger, message, then alert_id / incident_id /
trace_id when known (from `extra=` on the call, else from the context variables set with
`log_context(...)`), any other `extra=` fields, and `exc` with the formatted exception.

Masking (`SecretMasker`, applied to the message, the exception text and string extras):
  * values known to be secret (from Settings: routing key, API key, user token, encryption key, webhook
    and JWT secrets, Redis password, PagerDuty webhook secrets; from PAGERSTREAM_ROUTING_KEYS);
  * `key=value` / `"key": "value"` pairs whose key names a secret (routing_key, token, password, ...);
  * `Authorization: ...`, `Token token=...` and `Bearer ...` credentials;
  * credentials inside URLs (`scheme://user:password@host` -> `scheme://user:****@host`).
Routing keys and tokens keep their last 4 characters (`****abcd`, as the sandbox and the metrics show
them); passwords, secrets and keys are replaced entirely (`****`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

CONTEXT_FIELDS = ("alert_id", "incident_id", "trace_id")
_VARS: dict[str, contextvars.ContextVar[str | None]] = {
    f: contextvars.ContextVar(f"pagerstream_log_{f}", default=None) for f in CONTEXT_FIELDS}

MASK = "****"
# Key names whose values are secrets. Group "tail": show the last 4 characters; "full": nothing.
_TAIL_KEYS = ("routing_key", "routing-key", "integration_key", "service_key", "api_key", "apikey", "api-key",
              "access_token", "refresh_token", "user_token", "token", "x-routing-key")
_FULL_KEYS = ("password", "passwd", "pwd", "secret", "client_secret", "webhook_secret", "jwt_secret", "jwt",
              "signing_secret", "encryption_key", "private_key", "redis_password")
_STD_ATTRS = set(vars(logging.LogRecord("x", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def mask_value(value: str, *, tail: bool = True) -> str:
    """`****` + the last 4 characters (when tail and the value is long enough to spare them)."""
    if tail and len(value) >= 12:
        return MASK + value[-4:]
    return MASK


def _key_alt(keys: Iterable[str]) -> str:
    return "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))


class SecretMasker:
    """Replaces secrets in text. Build it with the known secret values; patterns catch the rest."""

    _URL_CRED = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s/]+)@")
    _AUTH = re.compile(r"(?i)(?P<pre>\bauthorization[\"']?\s*[:=]\s*[\"']?(?:token\s+token=|bearer\s+|basic\s+)?)"
                       r"(?P<val>[^\s\"',}]+)")
    _SCHEME = re.compile(r"(?i)(?P<pre>\btoken\s+token=|\bbearer\s+)(?P<val>[A-Za-z0-9._~+/=\-]{8,})")
    _PAIR = re.compile(
        r"(?i)(?P<pre>(?<![A-Za-z0-9_])[\"']?(?P<key>" + _key_alt(_TAIL_KEYS + _FULL_KEYS) + r")[\"']?\s*[:=]\s*"
        r"(?:b?[\"'])?)(?P<val>[^\s\"'&,;}\])]+)")

    def __init__(self, secrets: Iterable[tuple[str, bool]] = ()) -> None:
        """`secrets`: (value, keep_tail) pairs; values shorter than 6 characters are ignored (too likely
        to occur in ordinary text)."""
        self._known: dict[str, str] = {}
        for value, tail in secrets:
            if value and len(value) >= 6:
                self._known[value] = mask_value(value, tail=tail)
        self._known_re = (re.compile("|".join(re.escape(v) for v in sorted(self._known, key=len, reverse=True)))
                          if self._known else None)

    def mask(self, text: str) -> str:
        if not text:
            return text
        if self._known_re is not None:
            text = self._known_re.sub(lambda m: self._known[m.group(0)], text)
        text = self._URL_CRED.sub(lambda m: f"{m['pre']}{m['user']}:{MASK}@", text)
        text = self._AUTH.sub(lambda m: m["pre"] + (m["val"] if m["val"].startswith(MASK) else mask_value(m["val"])),
                              text)
        text = self._SCHEME.sub(lambda m: m["pre"] + (m["val"] if m["val"].startswith(MASK) else mask_value(m["val"])),
                                text)

        def pair(m: re.Match[str]) -> str:
            val = m["val"]
            if val.startswith(MASK) or val.lower() in ("none", "null", "true", "false", "''", '""'):
                return m.group(0)
            tail = m["key"].lower() in _TAIL_KEYS
            return m["pre"] + mask_value(val, tail=tail)

        return self._PAIR.sub(pair, text)

    @classmethod
    def from_settings(cls, s: Any = None, env: Mapping[str, str] | None = None) -> SecretMasker:
        """Every secret of the Settings (loaded from the environment when not given) and of
        PAGERSTREAM_ROUTING_KEYS. A configuration error leaves only the patterns (never raises)."""
        env = os.environ if env is None else env
        vals: list[tuple[str, bool]] = []
        if s is None:
            try:
                from pagerstream.config import load_settings

                s = load_settings(env)
            except Exception:  # noqa: BLE001 - a masker must not stop logging
                s = None
        if s is not None:
            for attr, tail in (("pagerduty_routing_key", True), ("pagerduty_api_key", True),
                               ("pagerduty_user_token", True), ("encryption_key", False), ("webhook_secret", False),
                               ("jwt_secret", False), ("redis_password", False), ("kafka_sasl_password", False),
                               ("kafka_ssl_key_password", False)):
                sec = getattr(s, attr, None)
                if sec:
                    v = sec.get()
                    vals.append((v, tail))
                    if attr == "encryption_key":
                        vals += [(p.strip(), False) for p in v.split(",") if p.strip()]
            for _, secrets in getattr(s, "pagerduty_webhook_secrets", ()):
                vals += [(x.get(), False) for x in secrets]
        for entry in (env.get("PAGERSTREAM_ROUTING_KEYS") or "").split(","):
            _, sep, key = entry.partition("=")
            if sep and key.strip():
                vals.append((key.strip(), True))
        return cls(vals)


# --- context -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Within the block (and tasks started in it), log records carry these alert_id / incident_id / trace_id."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context fields {sorted(unknown)}; known: {CONTEXT_FIELDS}")
    tokens = [(_VARS[k], _VARS[k].set(v)) for k, v in fields.items()]
    try:
        yield
    finally:
        for var, tok in reversed(tokens):
            var.reset(tok)


def current_context() -> dict[str, str]:
    return {k: v for k, var in _VARS.items() if (v := var.get()) is not None}


# --- logging plumbing --------------------------------------------------------------------------------------
class SecretMaskFilter(logging.Filter):
    """Masks the formatted message of every record it sees (any handler, any formatter)."""

    def __init__(self, masker: SecretMasker | None = None) -> None:
        super().__init__()
        self.masker = masker or SecretMasker.from_settings()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: leave it to the formatter's error path
            return True
        masked = self.masker.mask(msg)
        if masked != msg or record.args:
            record.msg, record.args = masked, None
        return True


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


class JsonFormatter(logging.Formatter):
    def __init__(self, masker: SecretMasker | None = None) -> None:
        super().__init__()
        self.masker = masker or SecretMasker.from_settings()

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        obj: dict[str, Any] = {"ts": ts, "level": record.levelname, "logger": record.name,
                               "message": self.masker.mask(record.getMessage())}
        ctx = current_context()
        for f in CONTEXT_FIELDS:
            v = getattr(record, f, None) or ctx.get(f)
            if v is not None:
                obj[f] = str(v)
        for k, v in record.__dict__.items():
            if k in _STD_ATTRS or k in obj or k.startswith("_"):
                continue
            v = _jsonable(v)
            obj[k] = self.masker.mask(v) if isinstance(v, str) else v
        if record.exc_info:
            obj["exc"] = self.masker.mask(self.formatException(record.exc_info))
        elif record.exc_text:
            obj["exc"] = self.masker.mask(record.exc_text)
        if record.stack_info:
            obj["stack"] = self.masker.mask(self.formatStack(record.stack_info))
        return json.dumps(obj, ensure_ascii=False)


def logging_config(level: str | int = "INFO", masker: SecretMasker | None = None, *,
                   fmt: str = "json") -> dict[str, Any]:
    """A logging.config.dictConfig dict: one stdout handler, JSON (or plain text) with the mask filter.
    Also what `pagerstream worker --log-format json` hands to Faust's worker."""
    masker = masker or SecretMasker.from_settings()
    lvl = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    lvl = lvl if isinstance(lvl, int) else logging.INFO
    formatter = ({"()": JsonFormatter, "masker": masker} if fmt == "json"
                 else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "filters": {"mask": {"()": SecretMaskFilter, "masker": masker}},
        "handlers": {"default": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout",
                                 "formatter": "main", "filters": ["mask"], "level": lvl}},
        "root": {"level": lvl, "handlers": ["default"]},
    }


def install(level: str | int = "INFO", masker: SecretMasker | None = None, *, fmt: str = "json") -> dict[str, Any]:
    """Configure the root logger now; returns the config (to hand to Faust's Worker as well)."""
    import logging.config

    cfg = logging_config(level, masker, fmt=fmt)
    logging.config.dictConfig(cfg)
    return cfg
