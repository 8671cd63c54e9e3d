"""Authentication in a running worker (pagerstream/auth.py): PagerDuty-shaped senders by routing key,
webhook senders by ingress key or signature, operators by JWT role, per-key rate limits, keys created
and revoked with the CLI while the worker runs, and a worker that will not start without keys."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from pagerstream.auth import issue_token, sign_webhook
from tests.conftest import JWT_SECRET, ROUTING_KEY, TEST_ROUTING_KEYS, api_headers, ingress_key_file
from tests.integration.helpers import eventually, read_topic

pytestmark = pytest.mark.integration
WEBHOOK_SECRET = "integration-webhook-secret-0123456789abcdef"
UNKNOWN_KEY = "UNKNOWNROUTINGKEY000000000000001"


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pagerstream.cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def _trigger(rk: str, dedup: str) -> dict:
    return {"routing_key": rk, "event_action": "trigger", "dedup_key": dedup,
            "payload": {"summary": f"auth test {dedup}", "source": "host-1", "severity": "error"}}


def _raw_dedups(env: dict[str, str]) -> list[dict]:
    recs = read_topic(env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), env["PAGERSTREAM_TOPIC_PREFIX"] + "alerts.raw",
                      idle=0.7)
    out = []
    for r in recs:
        v = r["value"]
        try:
            body = json.loads(v["body"])
        except (ValueError, TypeError):
            continue
        out.append({"dedup_key": body.get("dedup_key") if isinstance(body, dict) else None,
                    "attributes": v["attributes"]})
    return out


def test_credentials_roles_and_rate_limits_on_a_real_worker(workers, sandbox, tmp_path):
    keys = tmp_path / "ingress-keys"
    shutil.copy(ingress_key_file(), keys)
    env = workers.env({"PAGERSTREAM_INGRESS_KEYS": str(keys), "WEBHOOK_SECRET": WEBHOOK_SECRET,
                       "PAGERSTREAM_INGRESS_RATE": "0.05", "PAGERSTREAM_INGRESS_BURST": "6"})
    w = workers.start(env, name="auth")
    run = uuid.uuid4().hex[:6]

    # --- PagerDuty-shaped: the routing key is the credential, errors keep PagerDuty's shape ---------
    good = f"auth-{run}-good"
    r = httpx.post(w.url + "/v2/enqueue", json=_trigger(ROUTING_KEY, good))
    assert r.status_code == 202 and r.json()["status"] == "success"
    bad = f"auth-{run}-bad"
    r = httpx.post(w.url + "/v2/enqueue", json=_trigger(UNKNOWN_KEY, bad))
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert set(r.json()) == {"status", "message", "errors"} and r.json()["errors"]
    r = httpx.post(w.url + "/v2/change/enqueue", json={"routing_key": UNKNOWN_KEY, "payload": {
        "summary": "deploy", "source": "ci"}})
    assert r.status_code == 401 and set(r.json()) == {"status", "message", "errors"}
    r = httpx.post(w.url + "/v2/enqueue", json={"routing_key": "short", "event_action": "trigger"})
    assert r.status_code == 400 and r.json()["status"] == "invalid event"  # validation first, as PagerDuty does
    r = httpx.post(w.url + "/v2/enqueue", json=_trigger(UNKNOWN_KEY, bad),
                   headers={"Authorization": f"Bearer {TEST_ROUTING_KEYS['bearer']}"})
    assert r.status_code == 202  # a sender may present its key as a bearer instead
    eventually(lambda: len([x for x in _raw_dedups(env) if x["dedup_key"] in (good, bad)]) == 2, what="both")
    raw = {x["dedup_key"]: x["attributes"] for x in _raw_dedups(env) if x["dedup_key"] in (good, bad)}
    assert raw[good]["ingress_principal"] == "key:default" and raw[bad]["ingress_principal"] == "key:bearer"
    assert ROUTING_KEY not in json.dumps(raw)
    eventually(lambda: sandbox.state("requests", dedup_key=good), what="the accepted trigger reached PagerDuty")

    # --- webhooks: key in a header or the query, or a signed body (once) -----------------------------
    r = httpx.post(w.url + "/ingest/alertmanager", json={})
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers and r.json()["status"] == "unauthorized"
    created = _cli(env, "auth", "ingress-key", "create", "am-test", "--scope", "alertmanager")
    assert created.returncode == 0, created.stderr
    am_key = created.stdout.strip()
    assert am_key not in keys.read_text()
    am = {"version": "4", "groupKey": f"g-{run}", "status": "firing", "receiver": "ps", "alerts": [
        {"status": "firing", "labels": {"alertname": f"AuthTest{run}", "service": "checkout"},
         "annotations": {"summary": "s"}, "startsAt": "2024-01-01T00:00:00Z", "fingerprint": run}]}
    # (the service label maps the alerts to the catalog's checkout service, which has a routing key)
    eventually(lambda: httpx.post(w.url + "/ingest/alertmanager", json=am, headers={"Authorization": f"Bearer {am_key}"}
                                  ).status_code == 200, what="the new key accepted without a restart")
    assert httpx.post(w.url + f"/ingest/alertmanager?key={am_key}", json=am).status_code == 200
    r = httpx.post(w.url + "/v2/enqueue", json=_trigger(am_key, f"auth-{run}-scope"))
    assert r.status_code == 401  # that key may only send Alertmanager webhooks
    body = json.dumps({"checks": [{"id": run, "name": "api", "state": "down", "url": "https://x.example", "host": "h1",
                                   "tier": 1, "component": "api", "service": "checkout",
                                   "checked_at": "2024-01-01T00:00:00Z"}]}).encode()
    ts = int(time.time())
    signed = {"X-Pagerstream-Signature": sign_webhook(WEBHOOK_SECRET, body, ts), "X-Pagerstream-Timestamp": str(ts),
              "Content-Type": "application/json"}
    url = w.url + f"/ingest/generic/uptimebot?routing_key={ROUTING_KEY}"
    assert httpx.post(url, content=body, headers=signed).status_code == 200
    r = httpx.post(url, content=body, headers=signed)
    assert r.status_code == 401 and "replay" in r.json()["message"]
    old = ts - 600
    stale = {**signed, "X-Pagerstream-Signature": sign_webhook(WEBHOOK_SECRET, body, old),
             "X-Pagerstream-Timestamp": str(old)}
    assert httpx.post(url, content=body, headers=stale).status_code == 401
    assert httpx.post(url, content=body + b" ", headers={**signed, "X-Pagerstream-Timestamp": str(ts + 1)}
                      ).status_code == 401

    # --- operators: JWT roles -----------------------------------------------------------------------
    fb = {"incident_id": f"inc-{run}", "category": "business", "by": "alice"}
    r = httpx.post(w.url + "/api/v1/feedback", json=fb)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith('Bearer realm="pagerstream-operators"')
    r = httpx.post(w.url + "/api/v1/feedback", json=fb, headers=api_headers("viewer", sub="vera"))
    assert r.status_code == 403 and "insufficient_scope" in r.headers["WWW-Authenticate"]
    r = httpx.post(w.url + "/api/v1/feedback", json=fb, headers=api_headers("responder", sub="alice"))
    assert r.status_code == 202, r.text
    assert httpx.get(w.url + "/api/v1/analytics", headers=api_headers("viewer", sub="vera")).status_code == 200
    expired = issue_token(JWT_SECRET, sub="old", role="admin", ttl_s=60, now=time.time() - 3600)
    r = httpx.get(w.url + "/api/v1/analytics", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and r.json()["message"] == "token expired"
    forged = issue_token("another-secret-0123456789abcdef0123", sub="eve", role="admin", ttl_s=60)
    assert httpx.get(w.url + "/api/v1/analytics", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    assert httpx.get(w.url + "/table/", headers=api_headers("responder", sub="rick")).status_code == 403
    assert httpx.get(w.url + "/table/", headers=api_headers("admin", sub="ada")).status_code == 200
    cli_token = _cli(env, "auth", "token", "--role", "viewer", "--sub", "cli-user", "--ttl", "5m")
    assert cli_token.returncode == 0, cli_token.stderr
    r = httpx.get(w.url + "/api/v1/auth/whoami", headers={"Authorization": f"Bearer {cli_token.stdout.strip()}"})
    assert r.status_code == 200 and r.json()["sub"] == "cli-user" and r.json()["auth"]["ingress_auth"] == "keys"
    for path in ("/metrics", "/healthz", "/readyz"):
        assert httpx.get(w.url + path).status_code == 200, path

    # --- rate limits: per key, 429 + Retry-After (PagerDuty's throttle body on PagerDuty endpoints) --
    storm = TEST_ROUTING_KEYS["storm"]
    codes = [httpx.post(w.url + "/v2/enqueue", json={"routing_key": storm, "event_action": "explode"}).status_code
             for _ in range(8)]
    assert codes[:6] == [400] * 6 and codes[6:] == [429, 429], codes  # burst 6, then throttled
    r = httpx.post(w.url + "/v2/enqueue", json={"routing_key": storm, "event_action": "explode"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["status"] == "throttle exceeded" and set(r.json()) == {"status", "message", "errors"}
    # another key still has its own bucket
    assert httpx.post(w.url + "/v2/enqueue", json=_trigger(TEST_ROUTING_KEYS["crash"], f"auth-{run}-c")).status_code == 202
    codes = [httpx.post(w.url + "/ingest/alertmanager", json={}, headers={"Authorization": f"Bearer {am_key}"}
                        ).status_code for _ in range(8)]
    assert 429 in codes and set(codes) <= {400, 429}
    r = httpx.post(w.url + "/ingest/alertmanager", json={}, headers={"Authorization": f"Bearer {am_key}"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert 'pagerstream_auth_rate_limited_total{route_kind="pd"}' in w.metrics()

    # --- revoked while running ----------------------------------------------------------------------
    assert _cli(env, "auth", "ingress-key", "revoke", "am-test").returncode == 0
    eventually(lambda: httpx.post(w.url + "/ingest/alertmanager", json=am,
                                  headers={"Authorization": f"Bearer {am_key}"}).status_code == 401,
               what="the revoked key refused")


def test_a_worker_without_ingress_keys_does_not_start(workers):
    env = workers.env({"PAGERSTREAM_INGRESS_KEYS": ""})
    with pytest.raises(RuntimeError) as e:
        workers.start(env, name="no-keys", ready_timeout=60)
    assert "PAGERSTREAM_INGRESS_KEYS" in str(e.value) and "not starting" in str(e.value)
    status = _cli(env, "auth", "status")
    assert status.returncode == 1 and "PAGERSTREAM_INGRESS_KEYS" in status.stderr


def test_open_ingress_must_be_asked_for_and_shows(workers):
    env = workers.env({"PAGERSTREAM_INGRESS_KEYS": "", "PAGERSTREAM_INGRESS_AUTH": "open"})
    w = workers.start(env, name="open")
    r = httpx.post(w.url + "/v2/enqueue", json=_trigger(UNKNOWN_KEY, f"open-{uuid.uuid4().hex[:6]}"))
    assert r.status_code == 202
    assert "pagerstream_ingress_auth_open 1.0" in w.metrics()
    assert "PAGERSTREAM_INGRESS_AUTH=open" in Path(w.proc.log_path).read_text(errors="replace")
    # the operator API stays closed: open applies to the ingress only
    assert httpx.get(w.url + "/api/v1/analytics").status_code == 401
    assert _cli(env, "auth", "status").returncode == 1


def test_rate_limit_is_shared_by_workers_through_redis(stack):
    """Two limiters (two workers) on one Redis admit the one bucket's tokens between them, in leases."""
    import asyncio

    import redis.asyncio as aioredis

    from pagerstream.auth import LeasedLimiter

    async def go() -> tuple[int, float, int]:
        r1, r2 = aioredis.from_url("redis://127.0.0.1:6379/0"), aioredis.from_url("redis://127.0.0.1:6379/0")
        ns = f"it-{uuid.uuid4().hex[:8]}."
        a, b = LeasedLimiter(lambda: r1, 10.0, 200, ns), LeasedLimiter(lambda: r2, 10.0, 200, ns)
        calls = 0
        for lim in (a, b):
            inner = lim._refill

            async def counted(who: str, inner=inner) -> int:
                nonlocal calls
                calls += 1
                return await inner(who)

            lim._refill = counted
        t0 = time.monotonic()
        waits = await asyncio.gather(*[lim.take("key:shared") for _ in range(300) for lim in (a, b)])
        elapsed = time.monotonic() - t0
        await r1.aclose()
        await r2.aclose()
        return sum(1 for w in waits if w == 0), elapsed, calls

    admitted, elapsed, calls = asyncio.run(go())
    assert 200 - 20 <= admitted <= 200 + 10 * elapsed + 1  # the shared burst (a lease may expire unspent)
    assert calls < 600 // 5  # leases of 10: far fewer Redis calls than requests
