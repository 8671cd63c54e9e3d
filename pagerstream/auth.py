"""Who may talk to a worker's HTTP surface, and how often (docs/security.md).

Four kinds of caller, four kinds of credential:

* PagerDuty-shaped senders (`/v2/enqueue`, `/v2/change/enqueue`) authenticate the way PagerDuty's
  Events API does: by the `routing_key` in the body, which must be a registered ingress key (or they
  send `Authorization: Bearer <ingress key>`). Errors keep PagerDuty's `{status, message, errors}` shape.
* Webhook senders (`/ingest/alertmanager`, `/ingest/grafana`, `/ingest/generic/{name}`) present an
  ingress key as `Authorization: Bearer <key>`, `?key=<key>` (tools that cannot set headers) or as
  `?routing_key=` (the integration key on the URL, PagerDuty's model); or they sign the raw body with
  WEBHOOK_SECRET (`X-Pagerstream-Signature: sha256=<hmac>` over `<timestamp>.<body>`, with
  `X-Pagerstream-Timestamp`; 5 minutes of clock skew, and each signature is accepted once); Grafana
  may use its own signature (`X-Grafana-Alerting-Signature`) with WEBHOOK_SECRET.
* Operators (`/api/v1/*` and every admin view) present a JWT (HS256, JWT_SECRET) whose `role` claim
  is viewer < responder < admin.
* Senders that sign with their own scheme keep it (PagerDuty V3 webhooks, Slack, Jira, action links);
  `/metrics`, `/healthz` and `/readyz` are open (bind the port to a private network).

A route nobody declared here needs an admin token: a new endpoint is closed until it is classified.

Ingress keys are stored hashed (SHA-256) in the PAGERSTREAM_INGRESS_KEYS file and compared in
constant time. Every authenticated caller has a token bucket (PAGERSTREAM_INGRESS_RATE/BURST per
key, shared by all workers through Redis, local while Redis is away): over it, 429 + Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import stat
import string
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import click
from aiohttp import web

if TYPE_CHECKING:
    from pagerstream.config import Settings

log = logging.getLogger("pagerstream.auth")

ROLES = ("viewer", "responder", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}

# --- JWT (HS256) ------------------------------------------------------------------------------------
# Verified here with hmac/hashlib rather than PyJWT: HS256 verification is ~60 lines, keeps the
# worker free of another dependency, and lets us refuse everything but HS256 by construction (no
# algorithm list to get wrong: "none", RS256/HS256 confusion). Measured on this project's 2-core
# machine, best of 5 runs of 20,000 verifications of one token with sub/role/iat/nbf/exp/jti (PyJWT
# 2.15.1 installed aside only for the comparison, jwt.decode(..., algorithms=["HS256"])): this
# implementation 56 us per token, PyJWT 161 us. Either is small next to a request; the choice is
# about the dependency and the attack surface, and it costs nothing in speed.
MAX_TOKEN_BYTES = 8192
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


class AuthError(Exception):
    """A credential was refused. `reason` is safe to show the caller (never contains the secret)."""

    def __init__(self, reason: str, error: str = "invalid_token") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


def _b64url_encode(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _b64url_decode(s: str) -> bytes:
    if not _B64URL.match(s) or len(s) % 4 == 1:
        raise AuthError("malformed token")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@dataclass(frozen=True)
class Claims:
    sub: str
    role: str
    exp: float
    jti: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def issue_token(secret: str, *, sub: str, role: str, ttl_s: float, audience: str = "", issuer: str = "",
                now: float | None = None) -> str:
    """A signed HS256 JWT for an operator (what `pagerstream auth token` prints)."""
    if role not in _RANK:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not sub or len(sub) > 200:
        raise ValueError("sub must be 1-200 characters")
    if not secret:
        raise ValueError("JWT_SECRET is not set")
    now = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": sub, "role": role, "iat": int(now), "nbf": int(now),
                              "exp": int(now + ttl_s), "jti": uuid.uuid4().hex}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    header = _b64url_encode(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64url_encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url_encode(sig)}"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def verify_token(token: str, secret: str, *, audience: str = "", issuer: str = "", leeway_s: float = 30.0,
                 now: float | None = None) -> Claims:
    """Check an operator's JWT; raise AuthError with the reason, else return its claims.

    Only HS256; the signature is checked (in constant time) before any claim is believed; `exp` is
    required, `nbf` and `iat` are checked when present, all with `leeway_s` of clock skew. With an
    audience configured `aud` must contain it; without one, a token that names an audience is refused
    (it was meant for someone else). With an issuer configured `iss` must equal it."""
    if not secret:
        raise AuthError("operator tokens are not accepted: JWT_SECRET is not configured")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
        raise AuthError("malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthError("malformed token")
    h64, p64, s64 = parts
    try:
        header = json.loads(_b64url_decode(h64))
    except (ValueError, UnicodeDecodeError):
        raise AuthError("malformed token") from None
    if not isinstance(header, dict):
        raise AuthError("malformed token")
    alg = header.get("alg")
    if alg != "HS256":
        raise AuthError(f"algorithm {str(alg)[:20]!r} is not accepted (HS256 only)")
    if "crit" in header:
        raise AuthError("critical header parameters are not supported")
    if header.get("typ") not in (None, "JWT", "jwt"):
        raise AuthError("token type must be JWT")
    sig = _b64url_decode(s64)
    want = hmac.new(secret.encode(), f"{h64}.{p64}".encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(sig, want):
        raise AuthError("bad signature")
    try:
        c = json.loads(_b64url_decode(p64))
    except (ValueError, UnicodeDecodeError):
        raise AuthError("malformed token") from None
    if not isinstance(c, dict):
        raise AuthError("malformed token")
    now = time.time() if now is None else now
    exp = c.get("exp")
    if not _number(exp):
        raise AuthError("token has no expiry (exp)")
    if now > exp + leeway_s:
        raise AuthError("token expired")
    if "nbf" in c and (not _number(c["nbf"]) or now + leeway_s < c["nbf"]):
        raise AuthError("token not valid yet (nbf)")
    if "iat" in c and (not _number(c["iat"]) or c["iat"] > now + leeway_s):
        raise AuthError("token issued in the future (iat)")
    aud = c.get("aud")
    if audience:
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if audience not in auds:
            raise AuthError("token is not for this audience (aud)")
    elif aud is not None:
        raise AuthError("token is for another audience (aud); set PAGERSTREAM_JWT_AUDIENCE to accept it")
    if issuer and c.get("iss") != issuer:
        raise AuthError("token is from another issuer (iss)")
    sub = c.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 200:
        raise AuthError("token has no subject (sub)")
    role = c.get("role")
    if not isinstance(role, str) or role not in _RANK:
        raise AuthError(f"token has no valid role (one of {', '.join(ROLES)})")
    jti = c.get("jti") if isinstance(c.get("jti"), str) else None
    return Claims(sub=sub, role=role, exp=float(exp), jti=jti, raw=c)


def role_allows(have: str, need: str) -> bool:
    return isinstance(have, str) and have in _RANK and _RANK[have] >= _RANK[need]


# --- ingress keys -----------------------------------------------------------------------------------
KEY_ALPHABET = string.ascii_letters + string.digits
KEY_LENGTH = 32  # the length of a PagerDuty integration key, so a key works as a routing_key too
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")
SCOPES = ("events", "alertmanager", "grafana", "generic")
KEY_FILE_FORMAT = "expected lines of `name sha256:<64 hex> [scopes [created]]` (pagerstream auth ingress-key)"


def generate_ingress_key() -> str:
    """32 random letters and digits: log2(62**32) = 190 bits, and a valid PagerDuty routing_key."""
    return "".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_LENGTH))


def hash_key(key: str) -> str:
    """How a key is stored. A plain SHA-256 is enough: keys are 190-bit random strings, not
    passwords, so there is no dictionary to slow down, and a slow KDF would cost every request."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def fingerprint(digest_hex: str) -> str:
    """A short, public id of a stored key (for listings and the audit trail)."""
    return digest_hex[:8]


@dataclass(frozen=True)
class IngressKey:
    name: str
    digest: bytes  # sha256 of the key
    scopes: tuple[str, ...] = ("*",)
    created: str = ""

    def allows(self, scope: str) -> bool:
        return "*" in self.scopes or scope in self.scopes or (
            scope.startswith("generic:") and "generic" in self.scopes)

    def line(self) -> str:
        return f"{self.name} sha256:{self.digest.hex()} {','.join(self.scopes)} {self.created}".rstrip()


def _scope_ok(s: str) -> bool:
    return s == "*" or s in SCOPES or (s.startswith("generic:") and bool(_KEY_NAME.match(s[8:])))


def parse_key_file(text: str) -> tuple[list[IngressKey], list[str]]:
    """(keys, problems). A problem names the line number only: the file is credentials material."""
    keys: list[IngressKey] = []
    problems: list[str] = []
    names: set[str] = set()
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        m = _HASH.match(parts[1]) if len(parts) >= 2 else None
        if len(parts) > 4 or not _KEY_NAME.match(parts[0]) or m is None:
            problems.append(f"line {n}: {KEY_FILE_FORMAT}")
            continue
        scopes = tuple(parts[2].split(",")) if len(parts) >= 3 else ("*",)
        if not all(_scope_ok(s) for s in scopes):
            problems.append(f"line {n}: unknown scope; expected * or {', '.join(SCOPES)}, generic:<name>")
            continue
        if parts[0] in names:
            problems.append(f"line {n}: the name {parts[0]!r} is used twice")
            continue
        names.add(parts[0])
        keys.append(IngressKey(parts[0], bytes.fromhex(m.group(1)), scopes, parts[3] if len(parts) == 4 else ""))
    return keys, problems


def key_file_problem(path: str) -> str | None:
    """For load_settings: the file may be missing (no key created yet) but its folder must exist,
    and an existing file must parse."""
    p = Path(path)
    if p.exists():
        if not p.is_file():
            return f"expected a key file; {path!r} is not a regular file"
        try:
            _, problems = parse_key_file(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return f"expected a readable key file; {path!r} cannot be read"
        return f"expected a valid key file: {problems[0]}" if problems else None
    if not p.parent.is_dir():
        return f"expected a key file in an existing directory; {str(p.parent)!r} does not exist"
    return None


class IngressKeyStore:
    """The hashed keys of PAGERSTREAM_INGRESS_KEYS, re-read when the file changes (keys created or
    revoked by `pagerstream auth ingress-key` apply without a restart). A file that stops parsing
    keeps the last good set and says so in the log."""

    def __init__(self, path: str, *, recheck_s: float = 1.0) -> None:
        self.path = Path(path)
        self.recheck_s = recheck_s
        self.keys: list[IngressKey] = []
        self._stamp: tuple[int, int, int] | None = None
        self._checked = -math.inf
        self.reload(force=True)

    def reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.recheck_s:
            return
        self._checked = now
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and not force:
            return
        if stamp is None:
            self.keys, self._stamp = [], None
            return
        try:
            keys, problems = parse_key_file(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            log.error("ingress key file unreadable (%s); keeping the %d keys loaded before", type(e).__name__,
                      len(self.keys))
            return
        if problems:
            log.error("ingress key file has problems (%s); keeping the %d keys loaded before", problems[0],
                      len(self.keys))
            return
        self.keys, self._stamp = keys, stamp

    def __len__(self) -> int:
        return len(self.keys)

    def match(self, presented: str) -> IngressKey | None:
        """The key whose hash equals the presented key's, comparing against every stored hash in
        constant time (no early exit), so timing says nothing about which entry was close."""
        self.reload()
        if not presented or len(presented) > 256:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
        found: IngressKey | None = None
        for k in self.keys:
            if hmac.compare_digest(digest, k.digest) and found is None:
                found = k
        return found


def add_key_to_file(path: str, name: str, key: str, scopes: tuple[str, ...] = ("*",)) -> IngressKey:
    """Append a key's hash to the key file (created 0600); refuse a name already used."""
    if not _KEY_NAME.match(name):
        raise ValueError("a key name is 1-64 characters of [A-Za-z0-9._-], starting with a letter or digit")
    if not all(_scope_ok(s) for s in scopes):
        raise ValueError(f"scopes are * or {', '.join(SCOPES)}, generic:<name>")
    p = Path(path)
    text = p.read_text(encoding="utf-8") if p.exists() else ""
    keys, problems = parse_key_file(text)
    if problems:
        raise ValueError(f"{path}: {problems[0]}")
    if any(k.name == name for k in keys):
        raise ValueError(f"a key named {name!r} exists; revoke it first or choose another name")
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    if any(hmac.compare_digest(digest, k.digest) for k in keys):
        raise ValueError("this key is registered already under another name")
    entry = IngressKey(name, digest, tuple(scopes), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if not text:
        text = "# pagerstream ingress keys: name sha256:<hash of the key> scopes created. Keys are never stored.\n"
    _write_private(p, text.rstrip("\n") + "\n" + entry.line() + "\n")
    return entry


def remove_key_from_file(path: str, name: str) -> bool:
    p = Path(path)
    if not p.exists():
        return False
    lines = p.read_text(encoding="utf-8").splitlines()
    kept = [ln for ln in lines if not (ln.split() and ln.split()[0] == name and not ln.lstrip().startswith("#"))]
    if len(kept) == len(lines):
        return False
    _write_private(p, "\n".join(kept) + "\n")
    return True


def _write_private(p: Path, text: str) -> None:
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, p)


# --- signed webhooks --------------------------------------------------------------------------------
SIGNATURE_HEADER = "X-Pagerstream-Signature"
TIMESTAMP_HEADER = "X-Pagerstream-Timestamp"
REPLAY_WINDOW_S = 300


def sign_webhook(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Pagerstream-Signature value for `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), str(int(timestamp)).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def check_webhook_signature(secret: str, body: bytes, signature: str | None, timestamp: str | None, *,
                            now: float | None = None, window_s: int = REPLAY_WINDOW_S) -> str | None:
    """None when the signature is good and fresh, else the reason. The timestamp is inside the signed
    bytes, so it cannot be moved forward to replay an old request."""
    if not signature:
        return f"missing {SIGNATURE_HEADER}"
    if not timestamp or not timestamp.strip().isdigit() or len(timestamp.strip()) > 12:
        return f"missing or bad {TIMESTAMP_HEADER} (unix seconds)"
    want = sign_webhook(secret, body, int(timestamp.strip()))
    if not hmac.compare_digest(signature.strip().lower().encode(), want.encode()):
        return "bad signature"
    now = time.time() if now is None else now
    if abs(now - int(timestamp.strip())) > window_s:
        return f"signature timestamp outside the {window_s // 60} minute window"
    return None


class ReplayGuard:
    """Each good signature is accepted once while it is fresh: SET NX in Redis (shared by the
    workers), a local memory while Redis is away."""

    def __init__(self, redis_getter: Callable[[], Any], namespace: str, ttl_s: int = 2 * REPLAY_WINDOW_S) -> None:
        self.redis_getter = redis_getter
        self.namespace = namespace
        self.ttl_s = ttl_s
        self._local: dict[str, float] = {}

    def _key(self, signature: str) -> str:
        return f"pagerstream:{self.namespace}webhook-sig:{hashlib.sha256(signature.encode()).hexdigest()[:40]}"

    async def first_use(self, signature: str) -> bool:
        key = self._key(signature)
        r = self.redis_getter()
        if r is not None:
            try:
                return bool(await r.set(key, b"1", nx=True, ex=self.ttl_s))
            except Exception as e:  # noqa: BLE001 - Redis away: remember locally
                log.warning("replay guard: Redis unavailable (%s); remembering locally", type(e).__name__)
        now = time.monotonic()
        if len(self._local) > 100_000:
            self._local = {k: t for k, t in self._local.items() if t > now}
        if self._local.get(key, 0) > now:
            return False
        self._local[key] = now + self.ttl_s
        return True

    async def release(self, signature: str) -> None:
        """The request failed after it was checked (bad payload, Kafka away): let a retry through."""
        key = self._key(signature)
        self._local.pop(key, None)
        r = self.redis_getter()
        if r is not None:
            try:
                await r.delete(key)
            except Exception:  # noqa: BLE001
                pass


# --- rate limiting -----------------------------------------------------------------------------------
# The forwarder's bucket (streams/forwarder.py) with one change: a worker takes up to `want` tokens in
# one call and spends them locally. Measured here, one EVALSHA costs ~0.6 ms of a worker's time (redis-py
# asyncio, idle 2-core machine) and a burst of concurrent calls far more: a call per request would cost
# the ingress more than the rest of the request. With leases of 1/20 of the burst, one call per ~50
# requests at the defaults; tokens are still taken atomically from the one shared bucket, so workers
# never admit more than the rate together (a lease not spent within a second is dropped: a little less).
_LEASE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(s[1])
local ts = tonumber(s[2])
if tokens == nil then tokens = burst; ts = now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000.0); ts = now end
local got = math.min(want, math.floor(tokens))
local wait = 0
if got >= 1 then
  tokens = tokens - got
else
  got = 0
  wait = math.max(1, math.ceil((1 - tokens) * 1000.0 / rate))
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000.0 / rate) + 60000)
return {got, wait}
"""
LEASE_TTL_S = 1.0


class LeasedLimiter:
    """A token bucket per caller, shared by the workers through Redis, spent locally in leases; a
    local bucket per worker while Redis is away."""

    def __init__(self, redis_getter: Callable[[], Any], rate: float, burst: int, namespace: str) -> None:
        self.redis_getter = redis_getter
        self.rate, self.burst = rate, burst
        self.lease = max(1, min(burst // 20, int(rate)))
        self.namespace = namespace
        self._leases: dict[str, tuple[int, float]] = {}
        self._scripts: dict[int, Any] = {}
        self._local: dict[str, Any] = {}
        self._inflight: dict[str, Any] = {}

    async def take(self, who: str) -> int:
        """0 when the caller may go on, else the ms to wait. Concurrent requests of one caller share
        one refill call (no herd of Redis calls when a lease runs out under load)."""
        while True:
            left, until = self._leases.get(who, (0, 0.0))
            if left > 0 and time.monotonic() < until:
                self._leases[who] = (left - 1, until)
                return 0
            task = self._inflight.get(who)
            if task is None:
                task = self._inflight[who] = asyncio.ensure_future(self._refill(who))
                task.add_done_callback(lambda _t, w=who: self._inflight.pop(w, None))
            wait = await asyncio.shield(task)
            if wait:
                return wait

    async def _refill(self, who: str) -> int:
        """Lease tokens for `who` (then 0), or the ms until one is due."""
        key = f"pagerstream:{self.namespace}auth-bucket:{hashlib.sha256(who.encode()).hexdigest()[:24]}"
        until = time.monotonic() + LEASE_TTL_S
        r = self.redis_getter()
        if r is not None:
            try:
                script = self._scripts.get(id(r))
                if script is None:
                    script = self._scripts[id(r)] = r.register_script(_LEASE_LUA)
                got, wait = await script(keys=[key], args=[self.rate, self.burst, self.lease])
                if int(got) >= 1:
                    self._leases[who] = (int(got), until)
                    return 0
                self._leases.pop(who, None)
                return max(1, int(wait))
            except Exception as e:  # noqa: BLE001 - Redis away: this worker's own bucket
                log.warning("rate limiter: Redis unavailable (%s); using a local bucket", type(e).__name__)
        from pagerstream.processors.delivery import TokenBucket

        ms = int(time.time() * 1000)
        b = self._local.get(key) or TokenBucket.full(self.burst, ms)
        ok, wait, self._local[key] = b.take(ms, self.rate, self.burst)
        if ok:
            self._leases[who] = (1, until)
            return 0
        return max(1, wait)


# --- principals and route policy --------------------------------------------------------------------
@dataclass(frozen=True)
class Principal:
    kind: str  # key | user | signature | anonymous
    id: str  # key name, token subject, "webhook-secret", routing key fingerprint...
    role: str | None = None  # users only

    @property
    def actor(self) -> str:
        """For logs and the audit trail: never a secret."""
        return f"{self.kind}:{self.id}" + (f"({self.role})" if self.role else "")


PRINCIPAL = web.RequestKey("pagerstream.principal", Principal)  # request[PRINCIPAL]: who sent it
_SIGNATURE = web.RequestKey("pagerstream.signature", str)  # a signed webhook's signature (replay guard)

OPEN_ROUTES = frozenset({"/metrics", "/healthz", "/readyz"})
PD_ROUTES = {"/v2/enqueue": "events", "/v2/change/enqueue": "events"}
WEBHOOK_ROUTES = {"/ingest/alertmanager": "alertmanager", "/ingest/grafana": "grafana",
                  "/ingest/generic/{mapping}": "generic"}
# Routes that verify their own signatures (docs/security.md says which).
SELF_SIGNED_ROUTES = frozenset({"/pagerduty/webhooks/{subscription}", "/slack/interactions",
                                "/jira/webhook/{destination}", "/act"})
# (method, route) -> least role. Other /api/ routes: GET/HEAD viewer, anything else admin.
API_ROLES = {("POST", "/api/v1/feedback"): "responder", ("GET", "/api/v1/analytics"): "viewer",
             ("GET", "/api/v1/auth/whoami"): "viewer"}


def route_policy(method: str, route: str) -> tuple[str, str]:
    """(kind, detail): open | pd <scope> | webhook <scope> | signed | api <least role>."""
    if route in OPEN_ROUTES:
        return "open", ""
    if route in PD_ROUTES:
        return "pd", PD_ROUTES[route]
    if route in WEBHOOK_ROUTES:
        return "webhook", WEBHOOK_ROUTES[route]
    if route in SELF_SIGNED_ROUTES:
        return "signed", ""
    m = "GET" if method == "HEAD" else method
    if (m, route) in API_ROLES:
        return "api", API_ROLES[(m, route)]
    if route.startswith("/api/"):
        return "api", "viewer" if m == "GET" else "admin"
    return "api", "admin"  # Faust's /router and /table views, and any route not classified above


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def _www_authenticate(realm: str, error: str | None = None, description: str | None = None) -> str:
    v = f'Bearer realm="{realm}"'
    if error:
        v += f', error="{error}"'
    if description:
        v += ', error_description="' + description.replace('"', "'").replace("\\", "/")[:200] + '"'
    return v


def pd_unauthorized(message: str, errors: list[str]) -> web.Response:
    return web.json_response({"status": "unauthorized", "message": message, "errors": errors}, status=401,
                             headers={"WWW-Authenticate": _www_authenticate("pagerstream-events")})


PD_THROTTLE_BODY = {"status": "throttle exceeded",
                    "message": "Requests for this service are arriving too quickly.  Please retry later.",
                    "errors": ["Enhance Your Calm."]}


class AuthMetrics:
    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        r = registry or CollectorRegistry()
        self.denied = Counter("pagerstream_auth_denied", "Requests refused by authentication/authorization",
                              ["route_kind", "status"], registry=r)
        self.limited = Counter("pagerstream_auth_rate_limited", "Requests answered 429 by the per-key limit",
                               ["route_kind"], registry=r)
        self.open = Gauge("pagerstream_ingress_auth_open",
                          "1 when PAGERSTREAM_INGRESS_AUTH=open: the ingress accepts anyone", registry=r)
        self.keys = Gauge("pagerstream_ingress_keys", "Ingress keys loaded from PAGERSTREAM_INGRESS_KEYS",
                          registry=r)


class Auth:
    """The worker's gatekeeper: an aiohttp middleware plus the checks it runs."""

    def __init__(self, settings: "Settings", *, redis_getter: Callable[[], Any] = lambda: None,
                 registry: Any = None) -> None:
        self.s = settings
        self.mode = settings.ingress_auth
        self.keys = IngressKeyStore(settings.ingress_keys_path) if settings.ingress_keys_path else None
        self.redis_getter = redis_getter
        self.namespace = settings.topic_prefix
        self.replay = ReplayGuard(redis_getter, settings.topic_prefix)
        self.limiter = LeasedLimiter(redis_getter, settings.ingress_rate_per_second, settings.ingress_burst,
                                     settings.topic_prefix)
        self._metrics(registry)
        # (client, route, status, kind, reason) of every refusal: the audit trail's DenialDigest
        self.on_denied: Callable[[str, str, int, str, str], None] | None = None

    def _denied(self, request: web.Request, route: str, kind: str, resp: web.StreamResponse) -> None:
        if resp.status != 429:  # throttling has its own counter (m_limited, in _limit)
            self.m_denied.labels(kind, str(resp.status)).inc()
        if self.on_denied is None:
            return
        reason = ""
        try:
            reason = str(json.loads(getattr(resp, "body", b"") or b"{}").get("message", ""))
        except (ValueError, AttributeError):
            pass
        try:
            self.on_denied(request.remote or "unknown", route, resp.status, kind, reason)
        except Exception:  # noqa: BLE001 - auditing a refusal must never turn it into a 500
            log.exception("recording a refused request failed")

    def _metrics(self, registry: Any) -> None:
        m = AuthMetrics(registry)
        self.m_denied, self.m_limited, self.m_open = m.denied, m.limited, m.open
        self.m_open.set(1 if self.mode == "open" else 0)
        if self.keys is not None:
            store = self.keys
            m.keys.set_function(lambda: len(store.keys))

    # --- start-up ---------------------------------------------------------------------------------
    def startup_problems(self) -> list[tuple[str, str]]:
        """Why this worker must not start (secure by default: no keys, no ingress)."""
        if self.mode == "open":
            return []
        if self.keys is None:
            return [("PAGERSTREAM_INGRESS_KEYS", "expected the ingress key file: without keys the ingress would "
                     "accept anyone. Create one with `pagerstream auth ingress-key create NAME`, or set "
                     "PAGERSTREAM_INGRESS_AUTH=open to run without ingress authentication (not for production)")]
        if not len(self.keys):
            return [("PAGERSTREAM_INGRESS_KEYS", f"expected at least one key in {str(self.keys.path)!r}; create one "
                     "with `pagerstream auth ingress-key create NAME`")]
        return []

    def posture(self) -> dict[str, Any]:
        return {"ingress_auth": self.mode, "ingress_keys": len(self.keys) if self.keys else 0,
                "operator_tokens": "HS256" if self.s.jwt_secret else "not configured (operator API refuses all)",
                "audience": self.s.jwt_audience or None, "issuer": self.s.jwt_issuer or None,
                "webhook_signatures": bool(self.s.webhook_secret)}

    def warn_at_start(self) -> None:
        if self.mode == "open":
            for _ in range(3):
                log.warning("!!! PAGERSTREAM_INGRESS_AUTH=open: the ingress accepts alerts from ANYONE who can reach "
                            "this port (they can page people and resolve incidents). Set PAGERSTREAM_INGRESS_KEYS. !!!")
        if not self.s.jwt_secret:
            log.warning("JWT_SECRET is not set: the operator API (/api/v1/*) refuses every request")

    # --- rate limiting ----------------------------------------------------------------------------
    async def _limit(self, request: web.Request, p: Principal, kind: str) -> web.Response | None:
        wait_ms = await self.limiter.take(p.actor)
        if not wait_ms:
            return None
        self.m_limited.labels(kind).inc()
        retry = str(max(1, math.ceil(wait_ms / 1000)))
        if kind == "pd":
            return web.json_response(PD_THROTTLE_BODY, status=429, headers={"Retry-After": retry})
        return web.json_response({"status": "throttled", "message": "rate limit exceeded for this key",
                                  "errors": [f"retry after {retry} s"]}, status=429, headers={"Retry-After": retry})

    # --- the checks -------------------------------------------------------------------------------
    def _key(self, presented: str | None, scope: str) -> tuple[IngressKey | None, bool]:
        """(key, wrong_scope)."""
        if not presented or self.keys is None:
            return None, False
        k = self.keys.match(presented)
        if k is None:
            return None, False
        return (k, False) if k.allows(scope) else (None, True)

    async def _pd(self, request: web.Request) -> web.Response | Principal | None:
        """PagerDuty-shaped: the routing_key authenticates. A body that does not parse or has no
        well-formed routing_key goes on to the handler, which answers PagerDuty's 400."""
        body = await request.read()
        if self.mode == "open":
            rk = _routing_key_of(body)
            return Principal("anonymous", "rk-" + hashlib.sha256((rk or "").encode()).hexdigest()[:8])
        bearer = _bearer(request)
        if bearer:
            k, wrong = self._key(bearer, "events")
            if k is not None:
                return Principal("key", k.name)
            return pd_unauthorized("Invalid credentials", ["the bearer key is not accepted" +
                                                           (" for events" if wrong else "")])
        rk = _routing_key_of(body)
        if rk is None:
            return None
        k, wrong = self._key(rk, "events")
        if k is None:
            return pd_unauthorized("Invalid routing key", [
                "routing_key is not an integration key of this pagerstream" + (" (not for events)" if wrong else "")])
        return Principal("key", k.name)

    async def _webhook(self, request: web.Request, scope: str) -> web.Response | Principal:
        if scope == "generic":
            scope = f"generic:{request.match_info.get('mapping', '')}"
        if self.mode == "open":
            return Principal("anonymous", request.remote or "unknown")
        body = await request.read()
        secret = self.s.webhook_secret.get()
        sig = request.headers.get(SIGNATURE_HEADER)
        if sig is not None:
            if not secret:
                return self._401("ingest", "signed webhooks need WEBHOOK_SECRET on the worker")
            bad = check_webhook_signature(secret, body, sig, request.headers.get(TIMESTAMP_HEADER))
            if bad:
                return self._401("ingest", bad)
            if not await self.replay.first_use(sig.strip().lower()):
                return self._401("ingest", "signature already used (replay)")
            request[_SIGNATURE] = sig.strip().lower()
            return Principal("signature", "webhook-secret")
        if scope == "grafana" and secret and request.headers.get("X-Grafana-Alerting-Signature"):
            from pagerstream.streams.ingress import _check_grafana_hmac

            bad = _check_grafana_hmac(request, body, secret)
            if bad:
                return self._401("ingest", bad)
            return Principal("signature", "grafana")
        wrong = False
        for presented in (_bearer(request), request.query.get("key"), request.query.get("routing_key")):
            if presented:
                k, w = self._key(presented, scope)
                if k is not None:
                    return Principal("key", k.name)
                wrong = wrong or w
        if wrong:
            return self._401("ingest", f"this key is not allowed to send to {scope}")
        return self._401("ingest", "an ingress key is required: Authorization: Bearer <key>, ?key=<key>, or a "
                                   f"signed body ({SIGNATURE_HEADER})")

    def _401(self, realm: str, why: str, error: str | None = None) -> web.Response:
        return web.json_response({"status": "unauthorized", "message": why, "errors": [why]}, status=401,
                                 headers={"WWW-Authenticate": _www_authenticate(f"pagerstream-{realm}", error, why)})

    def _operator(self, request: web.Request, need: str) -> web.Response | Principal:
        token = _bearer(request)
        if not token:
            return web.json_response({"status": "unauthorized", "message": "an operator token is required",
                                      "errors": ["Authorization: Bearer <JWT> (pagerstream auth token)"]},
                                     status=401, headers={"WWW-Authenticate": _www_authenticate("pagerstream-operators")})
        try:
            c = verify_token(token, self.s.jwt_secret.get(), audience=self.s.jwt_audience, issuer=self.s.jwt_issuer,
                             leeway_s=self.s.jwt_leeway_seconds)
        except AuthError as e:
            return self._401("operators", e.reason, e.error)
        p = Principal("user", c.sub, c.role)
        if not role_allows(c.role, need):
            why = f"role {c.role} may not do this; it needs {need}"
            return web.json_response({"status": "forbidden", "message": why, "errors": [why]}, status=403,
                                     headers={"WWW-Authenticate": _www_authenticate(
                                         "pagerstream-operators", "insufficient_scope", why)})
        return p

    async def check(self, request: web.Request) -> web.Response | None:
        """None: let the request through (request[PRINCIPAL] set when someone was identified)."""
        info = request.match_info
        if info.http_exception is not None:  # no such route / method: aiohttp answers 404/405
            return None
        route = info.route.resource.canonical if info.route.resource is not None else request.path
        kind, detail = route_policy(request.method, route)
        if kind in ("open", "signed"):
            return None
        if kind == "pd":
            out: Any = await self._pd(request)
        elif kind == "webhook":
            out = await self._webhook(request, detail)
        else:
            out = self._operator(request, detail)
        if out is None:
            return None
        if isinstance(out, web.StreamResponse):
            self._denied(request, route, kind, out)
            return out
        request[PRINCIPAL] = out
        limited = await self._limit(request, out, kind)
        if limited is not None:
            self._denied(request, route, kind, limited)
        return limited

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def auth_middleware(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]
                                  ) -> web.StreamResponse:
            denied = await self.check(request)
            sig = request.get(_SIGNATURE)
            if denied is not None:
                if sig:  # throttled after the signature was checked: the retry may reuse it
                    await self.replay.release(sig)
                return denied
            try:
                resp = await handler(request)
            except BaseException:
                if sig:
                    await self.replay.release(sig)
                raise
            if sig and resp.status >= 300:  # not accepted: a corrected retry may reuse the signature
                await self.replay.release(sig)
            return resp

        return auth_middleware

    async def whoami(self, request: web.Request) -> web.Response:
        p: Principal = request[PRINCIPAL]
        return web.json_response({"sub": p.id, "role": p.role, "auth": self.posture()})


def _routing_key_of(body: bytes) -> str | None:
    if len(body) > 512_000:
        return None
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    rk = obj.get("routing_key") if isinstance(obj, dict) else None
    return rk if isinstance(rk, str) and len(rk) == KEY_LENGTH else None


def install_auth(pipeline: Any, app: Any) -> Auth:
    """Called once from Pipeline._build_app: the middleware in front of every route. A worker that
    would run an unauthenticated ingress without being told to does not start (exit 2)."""
    auth = Auth(pipeline.settings, redis_getter=lambda: pipeline.redis, registry=pipeline.metrics.registry)
    problems = auth.startup_problems()
    if problems:
        print("pagerstream: configuration error, not starting:", file=sys.stderr)
        for var, why in problems:
            print(f"  {var}: {why}", file=sys.stderr)
        raise SystemExit(2)
    web_app = app.web.web_app
    web_app.middlewares.append(auth.middleware())
    web_app.router.add_get("/api/v1/auth/whoami", auth.whoami)

    async def _started(_: Any) -> None:
        auth.warn_at_start()

    web_app.on_startup.append(_started)
    return auth


# --- CLI: pagerstream auth ... ------------------------------------------------------------------------
_TTL = re.compile(r"^(\d+)([smhd]?)$")
MAX_TTL_S = 30 * 86_400


def parse_ttl(s: str) -> int:
    m = _TTL.match(s.strip().lower())
    if not m:
        raise ValueError("expected a duration like 90s, 15m, 1h or 7d")
    n = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}[m.group(2)]
    if not 1 <= n <= MAX_TTL_S:
        raise ValueError("a token lives between 1 second and 30 days")
    return n


def _settings_or_exit() -> "Settings":
    from pagerstream.config import load_settings_or_exit

    return load_settings_or_exit()


def _audit(s: "Settings", action: str, obj: str | None, details: dict[str, Any]) -> None:
    from pagerstream.audit import submit_from_cli

    submit_from_cli(s, action, obj, details)


@click.group("auth")
def auth_group() -> None:
    """Operator tokens and ingress keys (docs/security.md)."""


@auth_group.command("token")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--sub", required=True, help="Who the token is for (shows in the audit trail)")
@click.option("--ttl", default="1h", show_default=True, help="Lifetime: 90s, 15m, 1h, 7d (30d at most)")
def auth_token(role: str, sub: str, ttl: str) -> None:
    """Print a signed operator JWT (HS256 with JWT_SECRET; aud/iss from PAGERSTREAM_JWT_AUDIENCE/_ISSUER)."""
    s = _settings_or_exit()
    if not s.jwt_secret:
        click.echo("pagerstream: JWT_SECRET is not set; cannot sign tokens", err=True)
        sys.exit(2)
    try:
        ttl_s = parse_ttl(ttl)
        token = issue_token(s.jwt_secret.get(), sub=sub, role=role, ttl_s=ttl_s, audience=s.jwt_audience,
                            issuer=s.jwt_issuer)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    c = verify_token(token, s.jwt_secret.get(), audience=s.jwt_audience, issuer=s.jwt_issuer)
    _audit(s, "auth.token_issued", sub, {"role": role, "jti": c.jti, "exp": int(c.exp)})
    click.echo(token)


@auth_group.command("status")
def auth_status() -> None:
    """Show how this configuration authenticates; exit 1 when a worker would refuse to start or the
    ingress is open (a deploy check)."""
    s = _settings_or_exit()
    a = Auth(s)
    click.echo(json.dumps(a.posture()))
    problems = a.startup_problems()
    for var, why in problems:
        click.echo(f"{var}: {why}", err=True)
    if problems or a.mode == "open":
        sys.exit(1)


@auth_group.group("ingress-key")
def ingress_key_group() -> None:
    """Keys for alert senders, stored hashed in PAGERSTREAM_INGRESS_KEYS."""


def _key_file(s: "Settings", path: str | None) -> str:
    p = path or s.ingress_keys_path
    if not p:
        click.echo("pagerstream: set PAGERSTREAM_INGRESS_KEYS (the key file) or pass --file", err=True)
        sys.exit(2)
    return p


_FILE = click.option("--file", "path", type=click.Path(dir_okay=False), help="Key file (default PAGERSTREAM_INGRESS_KEYS)")
_SCOPE = click.option("--scope", "scopes", multiple=True,
                      help="Where the key may send: events, alertmanager, grafana, generic, generic:<name> "
                           "(repeatable; default everywhere)")


@ingress_key_group.command("create")
@click.argument("name")
@_FILE
@_SCOPE
def ingress_key_create(name: str, path: str | None, scopes: tuple[str, ...]) -> None:
    """Make a new key for NAME, store its hash, print the key once (it cannot be shown again)."""
    s = _settings_or_exit()
    p = _key_file(s, path)
    key = generate_ingress_key()
    try:
        entry = add_key_to_file(p, name, key, scopes or ("*",))
    except ValueError as e:
        click.echo(f"pagerstream: {e}", err=True)
        sys.exit(1)
    _audit(s, "auth.ingress_key_created", name, {"fingerprint": fingerprint(entry.digest.hex()),
                                                 "scopes": list(entry.scopes)})
    click.echo(key)
    click.echo(f"# key {name!r} stored as sha256:{fingerprint(entry.digest.hex())}… in {p}; this is the only "
               "time it is shown", err=True)


@ingress_key_group.command("add")
@click.argument("name")
@_FILE
@_SCOPE
def ingress_key_add(name: str, path: str | None, scopes: tuple[str, ...]) -> None:
    """Register an existing key read from standard input (e.g. a PagerDuty integration key your senders
    already use as routing_key); never pass keys as arguments, they show in `ps` and shell history."""
    s = _settings_or_exit()
    p = _key_file(s, path)
    key = click.get_text_stream("stdin").readline().strip()
    if len(key) < 20 or any(c.isspace() for c in key):
        click.echo("pagerstream: expected the key (20+ characters, no spaces) on standard input", err=True)
        sys.exit(1)
    try:
        entry = add_key_to_file(p, name, key, scopes or ("*",))
    except ValueError as e:
        click.echo(f"pagerstream: {e}", err=True)
        sys.exit(1)
    _audit(s, "auth.ingress_key_added", name, {"fingerprint": fingerprint(entry.digest.hex()),
                                               "scopes": list(entry.scopes)})
    click.echo(f"key {name!r} registered (sha256:{fingerprint(entry.digest.hex())}…)")


@ingress_key_group.command("list")
@_FILE
def ingress_key_list(path: str | None) -> None:
    """Names, scopes, fingerprints and creation times (never keys)."""
    s = _settings_or_exit()
    p = Path(_key_file(s, path))
    keys, problems = parse_key_file(p.read_text(encoding="utf-8")) if p.exists() else ([], [])
    for k in keys:
        click.echo(f"{k.name:24} sha256:{fingerprint(k.digest.hex())}…  {','.join(k.scopes):24} {k.created}")
    for pr in problems:
        click.echo(pr, err=True)


@ingress_key_group.command("revoke")
@click.argument("name")
@_FILE
def ingress_key_revoke(name: str, path: str | None) -> None:
    """Remove NAME's key; running workers stop accepting it within a second."""
    s = _settings_or_exit()
    if not remove_key_from_file(_key_file(s, path), name):
        click.echo(f"pagerstream: no key named {name!r}", err=True)
        sys.exit(1)
    _audit(s, "auth.ingress_key_revoked", name, {})
    click.echo(f"key {name!r} revoked")
