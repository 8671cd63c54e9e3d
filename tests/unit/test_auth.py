"""pagerstream/auth.py without a worker: operator JWTs (HS256 only, exp/nbf/iat/aud/iss, roles), ingress
keys (stored hashed, compared in constant time, reloaded), signed generic webhooks and their replay
window, and the middleware's answers (401 + WWW-Authenticate, 403, 429 + Retry-After, PagerDuty's shape)
on an in-process aiohttp app."""

from __future__ import annotations

import base64
import hashlib
import hmac as hmac_mod
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pagerstream import auth
from pagerstream.auth import (
    Auth,
    AuthError,
    IngressKeyStore,
    ReplayGuard,
    add_key_to_file,
    check_webhook_signature,
    generate_ingress_key,
    hash_key,
    issue_token,
    key_file_problem,
    parse_key_file,
    parse_ttl,
    remove_key_from_file,
    role_allows,
    route_policy,
    sign_webhook,
    verify_token,
)
from pagerstream.config import load_settings

SECRET = "unit-test-jwt-secret-0123456789abcdef"
WEBHOOK_SECRET = "unit-test-webhook-secret-0123456789abcdef"
NOW = 1_750_000_000.0


def _b64(obj: object) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _forge(header: dict, claims: dict, secret: str | None = SECRET) -> str:
    """A token built by hand (what an attacker or another library would send)."""
    h, p = _b64(header), _b64(claims)
    sig = b"" if secret is None else hmac_mod.new(secret.encode(), f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{_b64(sig)}"


def _claims(**kw: object) -> dict:
    c = {"sub": "alice", "role": "responder", "iat": int(NOW), "nbf": int(NOW), "exp": int(NOW) + 600}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


# --- JWT ---------------------------------------------------------------------------------------------
def test_issued_token_verifies_with_its_claims():
    tok = issue_token(SECRET, sub="alice", role="responder", ttl_s=600, now=NOW)
    c = verify_token(tok, SECRET, now=NOW + 1)
    assert (c.sub, c.role, c.exp) == ("alice", "responder", NOW + 600)
    assert c.jti and len(c.jti) == 32
    header = json.loads(base64.urlsafe_b64decode(tok.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}


def test_expired_token_is_refused_after_the_leeway_only():
    tok = issue_token(SECRET, sub="alice", role="viewer", ttl_s=60, now=NOW)
    verify_token(tok, SECRET, now=NOW + 60 + 29, leeway_s=30)  # inside the leeway
    with pytest.raises(AuthError, match="expired"):
        verify_token(tok, SECRET, now=NOW + 60 + 31, leeway_s=30)
    with pytest.raises(AuthError, match="expired"):
        verify_token(tok, SECRET, now=NOW + 61, leeway_s=0)


def test_wrong_signature_and_tampered_claims_are_refused():
    tok = issue_token(SECRET, sub="alice", role="viewer", ttl_s=600, now=NOW)
    with pytest.raises(AuthError, match="bad signature"):
        verify_token(tok, SECRET + "x", now=NOW)
    h, p, s = tok.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=="))
    claims["role"] = "admin"  # privilege escalation with the original signature
    with pytest.raises(AuthError, match="bad signature"):
        verify_token(f"{h}.{_b64(claims)}.{s}", SECRET, now=NOW)
    with pytest.raises(AuthError, match="bad signature"):
        verify_token(f"{h}.{p}.{s[:-2]}AA", SECRET, now=NOW)


def test_signature_is_compared_in_constant_time(monkeypatch):
    calls = []
    real = hmac_mod.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    tok = issue_token(SECRET, sub="alice", role="viewer", ttl_s=600, now=NOW)
    verify_token(tok, SECRET, now=NOW)
    with pytest.raises(AuthError):
        verify_token(tok, "another-secret-0123456789abcdefghij", now=NOW)
    assert calls == [(32, 32), (32, 32)]


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "HS512", "RS256", "ES256", "hs256", None])
def test_only_hs256_is_accepted(alg):
    header = {"typ": "JWT"} if alg is None else {"alg": alg, "typ": "JWT"}
    for secret in (None, SECRET):  # unsigned, and even correctly HMAC-signed under the wrong name
        with pytest.raises(AuthError, match="algorithm"):
            verify_token(_forge(header, _claims(), secret), SECRET, now=NOW)


def test_none_algorithm_with_an_empty_signature_is_refused():
    tok = _b64({"alg": "none"}) + "." + _b64(_claims(role="admin")) + "."
    with pytest.raises(AuthError, match="algorithm 'none' is not accepted"):
        verify_token(tok, SECRET, now=NOW)


def test_audience_is_checked_both_ways():
    with_aud = issue_token(SECRET, sub="a", role="viewer", ttl_s=600, audience="pagerstream-prod", now=NOW)
    verify_token(with_aud, SECRET, audience="pagerstream-prod", now=NOW)
    with pytest.raises(AuthError, match="not for this audience"):
        verify_token(with_aud, SECRET, audience="pagerstream-staging", now=NOW)
    with pytest.raises(AuthError, match="another audience"):  # meant for someone, and we named no audience
        verify_token(with_aud, SECRET, now=NOW)
    without = issue_token(SECRET, sub="a", role="viewer", ttl_s=600, now=NOW)
    with pytest.raises(AuthError, match="not for this audience"):
        verify_token(without, SECRET, audience="pagerstream-prod", now=NOW)
    in_list = _forge({"alg": "HS256"}, _claims(aud=["grafana", "pagerstream-prod"]))
    verify_token(in_list, SECRET, audience="pagerstream-prod", now=NOW)


def test_issuer_is_checked_when_configured():
    tok = issue_token(SECRET, sub="a", role="viewer", ttl_s=600, issuer="https://sso.example", now=NOW)
    verify_token(tok, SECRET, issuer="https://sso.example", now=NOW)
    verify_token(tok, SECRET, now=NOW)
    with pytest.raises(AuthError, match="another issuer"):
        verify_token(tok, SECRET, issuer="https://evil.example", now=NOW)


@pytest.mark.parametrize("claims, reason", [
    (_claims(exp=None), "no expiry"),
    (_claims(exp="tomorrow"), "no expiry"),
    (_claims(exp=True), "no expiry"),
    (_claims(nbf=int(NOW) + 120), "not valid yet"),
    (_claims(iat=int(NOW) + 120), "issued in the future"),
    (_claims(sub=None), "no subject"),
    (_claims(sub=""), "no subject"),
    (_claims(role=None), "no valid role"),
    (_claims(role="root"), "no valid role"),
    (_claims(role=["admin"]), "no valid role"),
])
def test_claims_are_checked(claims, reason):
    with pytest.raises(AuthError, match=reason):
        verify_token(_forge({"alg": "HS256", "typ": "JWT"}, claims), SECRET, now=NOW, leeway_s=30)


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "!!!.e30.", "e30.e30", "x" * 9000,
                                   _b64([1]) + "." + _b64({}) + ".", _b64(b"\xff\xfe") + ".e30.AAAA"])
def test_malformed_tokens_are_refused(token):
    with pytest.raises(AuthError):
        verify_token(token, SECRET, now=NOW)


def test_no_secret_no_tokens():
    tok = issue_token(SECRET, sub="a", role="admin", ttl_s=60, now=NOW)
    with pytest.raises(AuthError, match="JWT_SECRET is not configured"):
        verify_token(tok, "", now=NOW)


def test_roles_are_ordered():
    assert role_allows("admin", "responder") and role_allows("admin", "viewer") and role_allows("responder", "viewer")
    assert role_allows("viewer", "viewer")
    assert not role_allows("viewer", "responder") and not role_allows("responder", "admin")
    assert not role_allows("root", "viewer")


@pytest.mark.parametrize("method, route, want", [
    ("POST", "/api/v1/feedback", ("api", "responder")),
    ("GET", "/api/v1/analytics", ("api", "viewer")),
    ("HEAD", "/api/v1/analytics", ("api", "viewer")),
    ("DELETE", "/api/v1/incidents/{id}", ("api", "admin")),  # destructive and undeclared: admin
    ("GET", "/api/v2/new-thing", ("api", "viewer")),
    ("GET", "/table/{name}/{key}/", ("api", "admin")),  # Faust's table view shows incident state
    ("GET", "/router/", ("api", "admin")),
    ("GET", "/some/new/route", ("api", "admin")),  # not classified yet: closed
    ("GET", "/metrics", ("open", "")),
    ("GET", "/healthz", ("open", "")),
    ("GET", "/readyz", ("open", "")),
    ("POST", "/v2/enqueue", ("pd", "events")),
    ("POST", "/v2/change/enqueue", ("pd", "events")),
    ("POST", "/ingest/generic/{mapping}", ("webhook", "generic")),
    ("POST", "/act", ("signed", "")),
    ("POST", "/slack/interactions", ("signed", "")),
    ("POST", "/pagerduty/webhooks/{subscription}", ("signed", "")),
])
def test_route_policy(method, route, want):
    assert route_policy(method, route) == want


def test_ttl_parsing():
    assert [parse_ttl(x) for x in ("90s", "15m", "1h", "7d", "30")] == [90, 900, 3600, 7 * 86400, 30]
    for bad in ("", "1w", "-1h", "0s", "31d", "1.5h"):
        with pytest.raises(ValueError):
            parse_ttl(bad)


# --- ingress keys ------------------------------------------------------------------------------------
def test_generated_keys_are_random_32_alnum():
    keys = {generate_ingress_key() for _ in range(200)}
    assert len(keys) == 200
    assert all(len(k) == 32 and k.isalnum() and k.isascii() for k in keys)
    assert hash_key("abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()


def test_key_file_stores_hashes_only_and_privately(tmp_path):
    path = tmp_path / "keys"
    key = generate_ingress_key()
    entry = add_key_to_file(str(path), "alertmanager-prod", key, ("alertmanager",))
    text = path.read_text()
    assert key not in text and hashlib.sha256(key.encode()).hexdigest() in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    keys, problems = parse_key_file(text)
    assert problems == [] and keys == [entry] and keys[0].scopes == ("alertmanager",)
    with pytest.raises(ValueError, match="exists"):
        add_key_to_file(str(path), "alertmanager-prod", generate_ingress_key())
    with pytest.raises(ValueError, match="registered already"):
        add_key_to_file(str(path), "other-name", key)
    with pytest.raises(ValueError, match="key name"):
        add_key_to_file(str(path), "bad name", generate_ingress_key())
    assert remove_key_from_file(str(path), "alertmanager-prod")
    assert not remove_key_from_file(str(path), "alertmanager-prod")
    assert parse_key_file(path.read_text()) == ([], [])


def test_key_file_problems_name_the_line_not_its_content(tmp_path):
    secretish = "sha256:" + "Z" * 64
    text = f"# comment\nok sha256:{'a' * 64}\nbroken {secretish}\n"
    keys, problems = parse_key_file(text)
    assert [k.name for k in keys] == ["ok"]
    assert problems == [f"line 3: {auth.KEY_FILE_FORMAT}"] and "ZZZZ" not in problems[0]
    assert parse_key_file(f"a sha256:{'a' * 64} events,bogus")[1][0].startswith("line 1: unknown scope")
    assert "used twice" in parse_key_file(f"a sha256:{'a' * 64}\na sha256:{'b' * 64}")[1][0]
    f = tmp_path / "keys"
    f.write_text(text)
    assert "line 3" in key_file_problem(str(f))
    assert key_file_problem(str(tmp_path / "not-yet")) is None  # created by the first `ingress-key create`
    assert "existing directory" in key_file_problem(str(tmp_path / "nodir" / "keys"))
    assert "not a regular file" in key_file_problem(str(tmp_path))
    with pytest.raises(Exception) as e:
        load_settings({"PAGERSTREAM_INGRESS_KEYS": str(f)})
    assert "PAGERSTREAM_INGRESS_KEYS" in str(e.value) and "ZZZZ" not in str(e.value)


def test_store_matches_against_every_entry_without_early_exit(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    keys = [generate_ingress_key() for _ in range(5)]
    for i, k in enumerate(keys):
        add_key_to_file(str(path), f"k{i}", k)
    store = IngressKeyStore(str(path))
    calls = []
    real = hmac_mod.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert store.match(keys[0]).name == "k0"
    assert len(calls) == 5  # the first entry matched and all five were still compared
    calls.clear()
    assert store.match(keys[0][:-1] + ("a" if keys[0][-1] != "a" else "b")) is None
    assert len(calls) == 5
    assert store.match("") is None and store.match("x" * 1000) is None


def test_store_follows_the_file(tmp_path):
    path = tmp_path / "keys"
    first, second = generate_ingress_key(), generate_ingress_key()
    add_key_to_file(str(path), "first", first)
    store = IngressKeyStore(str(path), recheck_s=0)
    assert store.match(first) and not store.match(second)
    add_key_to_file(str(path), "second", second)
    assert store.match(second).name == "second"
    remove_key_from_file(str(path), "first")
    assert store.match(first) is None and len(store) == 1
    path.write_text("garbage line\n")  # a broken edit keeps the last good keys
    assert store.match(second).name == "second"


def test_scopes_restrict_where_a_key_may_send():
    k = auth.IngressKey("am", b"\0" * 32, ("alertmanager", "generic:uptimebot"))
    assert k.allows("alertmanager") and k.allows("generic:uptimebot")
    assert not k.allows("events") and not k.allows("grafana") and not k.allows("generic:other")
    assert auth.IngressKey("all", b"\0" * 32).allows("events")
    assert auth.IngressKey("g", b"\0" * 32, ("generic",)).allows("generic:anything")


# --- signed webhooks ---------------------------------------------------------------------------------
def test_webhook_signature_round_trip_and_tampering():
    body = b'{"title":"disk full"}'
    ts = int(NOW)
    sig = sign_webhook(WEBHOOK_SECRET, body, ts)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert check_webhook_signature(WEBHOOK_SECRET, body, sig, str(ts), now=NOW) is None
    assert check_webhook_signature(WEBHOOK_SECRET, body, sig.upper().replace("SHA256", "sha256"), str(ts), now=NOW) is None
    assert check_webhook_signature(WEBHOOK_SECRET, body + b" ", sig, str(ts), now=NOW) == "bad signature"
    assert check_webhook_signature("other-secret-0123456789abcdef0123456789", body, sig, str(ts), now=NOW) == "bad signature"
    # moving the timestamp forward to get past the window breaks the signature
    assert check_webhook_signature(WEBHOOK_SECRET, body, sig, str(ts + 600), now=NOW + 600) == "bad signature"
    assert "missing" in check_webhook_signature(WEBHOOK_SECRET, body, None, str(ts), now=NOW)
    assert "Timestamp" in check_webhook_signature(WEBHOOK_SECRET, body, sig, None, now=NOW)
    assert "Timestamp" in check_webhook_signature(WEBHOOK_SECRET, body, sig, "yesterday", now=NOW)


def test_webhook_replay_window():
    body = b"{}"
    ts = int(NOW)
    sig = sign_webhook(WEBHOOK_SECRET, body, ts)
    assert check_webhook_signature(WEBHOOK_SECRET, body, sig, str(ts), now=NOW + 300) is None
    assert check_webhook_signature(WEBHOOK_SECRET, body, sig, str(ts), now=NOW - 300) is None
    assert "window" in check_webhook_signature(WEBHOOK_SECRET, body, sig, str(ts), now=NOW + 301)
    assert "window" in check_webhook_signature(WEBHOOK_SECRET, body, sig, str(ts), now=NOW - 301)


async def test_replay_guard_accepts_a_signature_once_until_released():
    g = ReplayGuard(lambda: None, "unit.")
    assert await g.first_use("sha256=ab") is True
    assert await g.first_use("sha256=ab") is False
    assert await g.first_use("sha256=cd") is True
    await g.release("sha256=ab")
    assert await g.first_use("sha256=ab") is True


# --- the middleware on an in-process app -------------------------------------------------------------
@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys"
    keys = {"events-key": "EVENTSKEY0000000000000000000001X", "am-key": "AMKEY00000000000000000000000001X"}
    add_key_to_file(str(path), "events-key", keys["events-key"], ("events",))
    add_key_to_file(str(path), "am-key", keys["am-key"], ("alertmanager",))
    return str(path), keys


async def _client(env: dict[str, str]) -> TestClient:
    s = load_settings(env)
    a = Auth(s)
    app = web.Application(middlewares=[a.middleware()])

    async def ok(request: web.Request) -> web.Response:
        p = request.get(auth.PRINCIPAL)
        return web.json_response({"ok": True, "who": p.actor if p else None})

    for path in ("/v2/enqueue", "/ingest/alertmanager", "/ingest/generic/{mapping}", "/api/v1/feedback"):
        app.router.add_post(path, ok)
    for path in ("/api/v1/analytics", "/metrics", "/table/"):
        app.router.add_get(path, ok)
    c = TestClient(TestServer(app))
    await c.start_server()
    c.auth = a  # type: ignore[attr-defined]
    return c


def _pd_event(rk: str) -> dict:
    return {"routing_key": rk, "event_action": "trigger", "payload": {"summary": "s", "source": "h", "severity": "info"}}


async def test_middleware_answers(key_file):
    path, keys = key_file
    c = await _client({"PAGERSTREAM_INGRESS_KEYS": path, "JWT_SECRET": SECRET, "WEBHOOK_SECRET": WEBHOOK_SECRET})
    try:
        r = await c.post("/v2/enqueue", json=_pd_event(keys["events-key"]))
        assert r.status == 200 and (await r.json())["who"] == "key:events-key"
        r = await c.post("/v2/enqueue", json=_pd_event("UNKNOWNKEY0000000000000000000001"))
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer realm=")
        assert set(await r.json()) == {"status", "message", "errors"}
        r = await c.post("/v2/enqueue", json=_pd_event(keys["am-key"]))  # a real key, but not for events
        assert r.status == 401 and "not for events" in (await r.json())["errors"][0]
        r = await c.post("/v2/enqueue", json={"routing_key": "short"})  # the handler answers PagerDuty's 400
        assert r.status == 200
        r = await c.post("/ingest/alertmanager", json={})
        assert r.status == 401 and "WWW-Authenticate" in r.headers
        r = await c.post("/ingest/alertmanager", json={}, headers={"Authorization": f"Bearer {keys['am-key']}"})
        assert r.status == 200 and (await r.json())["who"] == "key:am-key"
        r = await c.post(f"/ingest/alertmanager?key={keys['am-key']}", json={})
        assert r.status == 200
        r = await c.post(f"/ingest/alertmanager?routing_key={keys['events-key']}", json={})
        assert r.status == 401 and "not allowed" in (await r.json())["message"]
        body = b'{"title":"x"}'
        ts = str(int(time.time()))
        signed = {auth.SIGNATURE_HEADER: sign_webhook(WEBHOOK_SECRET, body, int(ts)), auth.TIMESTAMP_HEADER: ts}
        r = await c.post("/ingest/generic/uptimebot", data=body, headers=signed)
        assert r.status == 200 and (await r.json())["who"] == "signature:webhook-secret"
        r = await c.post("/ingest/generic/uptimebot", data=body, headers=signed)
        assert r.status == 401 and "replay" in (await r.json())["message"]
        r = await c.get("/api/v1/analytics")
        assert r.status == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="pagerstream-operators"'
        r = await c.get("/api/v1/analytics", headers={"Authorization": "Bearer nope"})
        assert r.status == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        viewer = {"Authorization": "Bearer " + issue_token(SECRET, sub="v", role="viewer", ttl_s=60)}
        responder = {"Authorization": "Bearer " + issue_token(SECRET, sub="r", role="responder", ttl_s=60)}
        assert (await c.get("/api/v1/analytics", headers=viewer)).status == 200
        r = await c.post("/api/v1/feedback", json={}, headers=viewer)
        assert r.status == 403 and 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
        r = await c.post("/api/v1/feedback", json={}, headers=responder)
        assert r.status == 200 and (await r.json())["who"] == "user:r(responder)"
        assert (await c.get("/table/", headers=responder)).status == 403
        assert (await c.get("/metrics")).status == 200
        assert (await c.get("/nope")).status == 404
    finally:
        await c.close()


async def test_rate_limit_per_key_answers_429_with_retry_after(key_file):
    path, keys = key_file
    c = await _client({"PAGERSTREAM_INGRESS_KEYS": path, "PAGERSTREAM_INGRESS_RATE": "0.01",
                       "PAGERSTREAM_INGRESS_BURST": "2"})
    try:
        codes = [(await c.post("/v2/enqueue", json=_pd_event(keys["events-key"]))).status for _ in range(2)]
        assert codes == [200, 200]
        r = await c.post("/v2/enqueue", json=_pd_event(keys["events-key"]))
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["status"] == "throttle exceeded"  # PagerDuty's own 429 body
        r = await c.post("/ingest/alertmanager", json={}, headers={"Authorization": f"Bearer {keys['am-key']}"})
        assert r.status == 200  # another key has its own bucket
    finally:
        await c.close()


def test_a_worker_without_keys_refuses_to_start_unless_told_open(tmp_path):
    s = load_settings({})
    assert [v for v, _ in Auth(s).startup_problems()] == ["PAGERSTREAM_INGRESS_KEYS"]
    assert Auth(load_settings({"PAGERSTREAM_INGRESS_AUTH": "open"})).startup_problems() == []
    empty = tmp_path / "keys"
    assert "at least one key" in Auth(load_settings({"PAGERSTREAM_INGRESS_KEYS": str(empty)})).startup_problems()[0][1]


def test_cli_token_and_keys(tmp_path):
    env = {**os.environ, "JWT_SECRET": SECRET, "PAGERSTREAM_INGRESS_KEYS": str(tmp_path / "keys"),
           "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}  # no Kafka: the audit entry is reported missing, not fatal
    run = lambda *a, **kw: subprocess.run([sys.executable, "-m", "pagerstream.cli", *a], env=env, capture_output=True,
                                          text=True, timeout=60, **kw)
    r = run("auth", "token", "--role", "responder", "--sub", "alice", "--ttl", "15m")
    assert r.returncode == 0, r.stderr
    c = verify_token(r.stdout.strip(), SECRET)
    assert (c.sub, c.role) == ("alice", "responder") and 890 < c.exp - time.time() <= 900
    assert "not recorded in the audit trail" in r.stderr
    r = run("auth", "ingress-key", "create", "am-prod", "--scope", "alertmanager")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert len(key) == 32 and key not in (tmp_path / "keys").read_text()
    assert IngressKeyStore(str(tmp_path / "keys")).match(key).name == "am-prod"
    r = run("auth", "ingress-key", "add", "pd-int", input="PDINTEGRATIONKEY0000000000000001\n")
    assert r.returncode == 0 and "PDINTEGRATIONKEY" not in r.stdout + r.stderr
    r = run("auth", "ingress-key", "list")
    assert "am-prod" in r.stdout and "pd-int" in r.stdout and key not in r.stdout
    assert run("auth", "ingress-key", "revoke", "am-prod").returncode == 0
    assert IngressKeyStore(str(tmp_path / "keys")).match(key) is None
    assert run("auth", "status").returncode == 0
    assert run("auth", "token", "--role", "root", "--sub", "x").returncode == 2
    env.pop("JWT_SECRET")
    assert run("auth", "token", "--role", "viewer", "--sub", "x").returncode == 2


async def test_a_throttled_signed_webhook_can_be_retried_with_its_signature():
    c = await _client({"WEBHOOK_SECRET": WEBHOOK_SECRET, "PAGERSTREAM_INGRESS_AUTH": "keys",
                       "PAGERSTREAM_INGRESS_RATE": "0.01", "PAGERSTREAM_INGRESS_BURST": "1"})
    try:
        ts = int(time.time())
        first, second = b'{"n":1}', b'{"n":2}'
        h1 = {auth.SIGNATURE_HEADER: sign_webhook(WEBHOOK_SECRET, first, ts), auth.TIMESTAMP_HEADER: str(ts)}
        h2 = {auth.SIGNATURE_HEADER: sign_webhook(WEBHOOK_SECRET, second, ts), auth.TIMESTAMP_HEADER: str(ts)}
        assert (await c.post("/ingest/generic/x", data=first, headers=h1)).status == 200
        r = await c.post("/ingest/generic/x", data=second, headers=h2)
        assert r.status == 429 and "Retry-After" in r.headers
        assert await c.auth.replay.first_use(h2[auth.SIGNATURE_HEADER]) is True  # released for the retry
        assert await c.auth.replay.first_use(h1[auth.SIGNATURE_HEADER]) is False  # the accepted one is spent
    finally:
        await c.close()
