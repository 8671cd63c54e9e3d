"""`pagerstream health`: is this deployment working, and if not, what exactly is wrong.

Without --full-check only the worker is asked (/healthz, /readyz). With it, in order:

  transport security  TLS/SASL of the Kafka and Redis connections; with --env production, plaintext
                   Kafka (PLAINTEXT, SASL_PLAINTEXT) or a Redis URL that is not rediss:// is a warning
  kafka            the bootstrap servers answer (metadata round trip, in ms)
  topics           every topic exists with TopicSpec's partitions and managed configs (see deploy)
  schemas          the schema set is registered on <prefix>pagerstream.schemas (warning when not)
  consumer lag     committed offsets of the app's consumer group (= PAGERSTREAM_APP_ID) vs end offsets
  dead-letter topics  records retained in alerts/pagerduty/notifications dead-letter topics
  redis            PING, median of 3 round trips
  pagerduty events an HTTPS GET of PAGERDUTY_EVENTS_URL's root: reachable and TLS valid; no event is sent
  pagerduty rest   with credentials: GET /users/me (OAuth user token) or GET /users?limit=1 (API key)
  worker           /healthz, /readyz (each readiness check), /metrics: circuit breakers, dead letters
                   since start, catalog services, model checkpoint age

Every check is a `Check` (ok / warn / fail / skip); any fail makes the exit code 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Any

from pagerstream.config import Settings
from pagerstream.connections import (
    describe_security,
    kafka_admin,
    kafka_consumer,
    kafka_probe,
    redis_client,
    transport_findings,
)
from pagerstream.ops import FAIL, OK, SKIP, WARN, Check, topic_sizes
from pagerstream.ops.perf import Snapshot

DEAD_LETTER_TOPICS = ("alerts.dead-letter", "pagerduty.dead-letter", "notifications.dead-letter")


@dataclass
class HealthOptions:
    url: str = "http://127.0.0.1:6066"
    full: bool = False
    timeout_s: float = 5.0
    max_lag: int = 10_000
    max_model_age_s: float = 7 * 86_400.0
    redis_slow_ms: float = 50.0
    verify: bool | str = True  # TLS verification for the worker URL (a CA file for self-signed certs)
    environment: str | None = None  # --env: production turns plaintext Kafka/Redis into a warning


# --- Kafka -----------------------------------------------------------------------------------------------
async def kafka_checks(s: Settings, o: HealthOptions) -> list[Check]:
    from pagerstream.ops.deploy import SCHEMAS_TOPIC, fetch_live, ops_topic_specs, plan_topics, schema_plan

    out: list[Check] = []
    admin = kafka_admin(s, request_timeout_ms=int(o.timeout_s * 1000))
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(admin.start(), timeout=o.timeout_s + 1)
        names = await admin.list_topics()
    except Exception as e:  # noqa: BLE001
        with contextlib.suppress(Exception):
            await admin.close()
        # aiokafka says only "Unable to bootstrap"; one direct connection tells TLS, SASL and network apart
        try:
            why = await kafka_probe(s, timeout_s=o.timeout_s) or type(e).__name__
        except Exception as pe:  # noqa: BLE001
            why = f"{type(e).__name__} ({type(pe).__name__} while probing)"
        return [Check("kafka", FAIL, f"{s.kafka_bootstrap_servers} unreachable: {why}"),
                Check("topics", SKIP, "kafka unreachable"), Check("consumer lag", SKIP, "kafka unreachable")]
    ms = (time.perf_counter() - t0) * 1000
    try:
        out.append(Check("kafka", OK, f"{s.kafka_bootstrap_servers} answered in {ms:.0f} ms ({len(names)} topics)",
                         {"ms": round(ms, 1), "topics": len(names)}))
        specs = ops_topic_specs(s.topic_prefix)
        pipeline = {k: v for k, v in specs.items() if k != SCHEMAS_TOPIC}
        live = await fetch_live(admin, [sp.name for sp in pipeline.values()])
        actions = plan_topics(pipeline, live, partitions=s.partitions, replication=s.replication_factor)
        bad = 0
        for a in actions:
            if a.kind == "create":
                bad += 1
                out.append(Check(f"topic {a.topic}", FAIL, "missing (pagerstream deploy creates it)"))
            elif a.kind == "alter":
                bad += 1
                ch = ", ".join(f"{k}={live_v} (want {want})" for k, (live_v, want) in sorted(a.config_changes.items()))
                out.append(Check(f"topic {a.topic}", FAIL, f"config differs: {ch} (pagerstream deploy fixes it)"))
            if a.partitions:
                bad += 1
                out.append(Check(f"topic {a.topic}", FAIL, a.problems[0]))
            for w in a.warnings:
                out.append(Check(f"topic {a.topic}", WARN, w))
        if not bad:
            out.append(Check("topics", OK, f"{len(actions)} topics with the configured partitions and configs"))
        group = await lag_check(admin, s, o)
        out.append(group)
    finally:
        await admin.close()
    try:
        sp = await schema_plan(s)
        if not sp.topic_exists:
            out.append(Check("schemas", WARN, f"{SCHEMAS_TOPIC} missing: schemas not registered (pagerstream deploy)"))
        elif sp.unknown_fingerprints:
            out.append(Check("schemas", FAIL, f"{len(sp.unknown_fingerprints)} registered fingerprints unknown to this "
                             "release (a newer release was deployed)"))
        elif sp.to_write:
            out.append(Check("schemas", WARN, f"{len(sp.to_write)} schema versions not registered yet "
                             "(pagerstream deploy)"))
        else:
            out.append(Check("schemas", OK, f"{sp.unchanged} schema versions registered"))
    except Exception as e:  # noqa: BLE001
        out.append(Check("schemas", WARN, f"could not read {SCHEMAS_TOPIC}: {type(e).__name__}"))
    try:
        dl_names = {n: specs[n].name for n in DEAD_LETTER_TOPICS if n in specs}
        sizes = await topic_sizes(s, list(dl_names.values()))
        txt = ", ".join(f"{n} {sizes.get(t, 0)}" for n, t in dl_names.items())
        total = sum(sizes.values())
        out.append(Check("dead-letter topics", WARN if sizes.get(dl_names.get("pagerduty.dead-letter", "")) else OK,
                         f"records retained: {txt}", {"sizes": {n: sizes.get(t, 0) for n, t in dl_names.items()},
                                                      "total": total}))
    except Exception as e:  # noqa: BLE001
        out.append(Check("dead-letter topics", WARN, f"sizes unavailable: {type(e).__name__}"))
    return out


async def lag_check(admin: Any, s: Settings, o: HealthOptions) -> Check:
    """Lag of the app's consumer group: committed offsets vs end offsets, per topic."""
    try:
        committed = await admin.list_consumer_group_offsets(s.app_id)
    except Exception as e:  # noqa: BLE001
        return Check("consumer lag", WARN, f"group {s.app_id}: offsets unavailable ({type(e).__name__})")
    committed = {tp: om.offset for tp, om in committed.items() if om.offset is not None and om.offset >= 0}
    if not committed:
        return Check("consumer lag", WARN, f"group {s.app_id} has no committed offsets (no worker ran yet?)")
    c = kafka_consumer(s, group_id=None, enable_auto_commit=False)
    await c.start()
    try:
        ends = await c.end_offsets(list(committed))
    finally:
        await c.stop()
    per_topic: dict[str, int] = {}
    for tp, off in committed.items():
        per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, ends.get(tp, off) - off)
    total = sum(per_topic.values())
    worst = sorted(per_topic.items(), key=lambda x: -x[1])[:3]
    detail = f"group {s.app_id}: {total} records behind" + (
        " (" + ", ".join(f"{t} {n}" for t, n in worst if n) + ")" if any(n for _, n in worst) else "")
    status = FAIL if total > o.max_lag else OK
    if status == FAIL:
        detail += f" > --max-lag {o.max_lag}"
    return Check("consumer lag", status, detail, {"total": total, "per_topic": per_topic})


# --- Redis -----------------------------------------------------------------------------------------------
async def redis_check(s: Settings, o: HealthOptions) -> Check:
    r = redis_client(s, socket_connect_timeout=o.timeout_s, socket_timeout=o.timeout_s)
    try:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            await r.ping()
            times.append((time.perf_counter() - t0) * 1000)
        ms = statistics.median(times)
        status = WARN if ms > o.redis_slow_ms else OK
        return Check("redis", status, f"PING {ms:.1f} ms (median of 3)", {"ms": round(ms, 2)})
    except Exception as e:  # noqa: BLE001 - never print the URL's password: the URL was scrubbed by config
        return Check("redis", FAIL, f"{s.redis_url} unreachable: {type(e).__name__}")
    finally:
        with contextlib.suppress(Exception):
            await r.aclose()


# --- TLS / SASL ------------------------------------------------------------------------------------------
def security_check(s: Settings, o: HealthOptions) -> Check:
    """How the Kafka and Redis connections are protected. Pure: the settings only, no network. In
    production (--env production) anything crossing the network in clear is a warning."""
    findings = transport_findings(s)
    data = {"kafka_security_protocol": s.kafka_security_protocol, "redis_tls": s.redis_url.startswith("rediss://"),
            "findings": [{"var": v, "message": m, "fix": f} for v, m, f in findings]}
    detail = describe_security(s)
    if not findings:
        return Check("transport security", OK, detail, data)
    names = ", ".join(dict.fromkeys(v for v, _, _ in findings))
    if o.environment == "production":
        return Check("transport security", WARN, f"{detail}; in production: " + "; ".join(
            f"{v}: {m} (set {f})" for v, m, f in findings), data)
    return Check("transport security", OK, f"{detail} (not for production: {names}; a warning with "
                 "--env production)", data)


# --- authentication ---------------------------------------------------------------------------------------
def auth_check(s: Settings, o: HealthOptions) -> Check:
    """What `pagerstream auth status` reports, as a check: a worker with this configuration would refuse
    to start (FAIL), or would accept alerts from anyone (FAIL in production, WARN elsewhere)."""
    from pagerstream.auth import Auth

    a = Auth(s)
    posture = a.posture()
    problems = a.startup_problems()
    if problems:
        return Check("ingress auth", FAIL, "; ".join(f"{v}: {w}" for v, w in problems), posture)
    if a.mode == "open":
        return Check("ingress auth", FAIL if o.environment == "production" else WARN,
                     "PAGERSTREAM_INGRESS_AUTH=open: anyone who reaches the port can page", posture)
    detail = f"{posture['ingress_keys']} ingress key(s); operator tokens {posture['operator_tokens']}"
    if not s.jwt_secret:
        return Check("ingress auth", WARN, detail + ": the operator API refuses every request", posture)
    return Check("ingress auth", OK, detail, posture)


# --- PagerDuty -------------------------------------------------------------------------------------------
async def pagerduty_checks(s: Settings, o: HealthOptions) -> list[Check]:
    import httpx

    out: list[Check] = []
    url = s.pagerduty_events_url.rstrip("/") + "/"
    try:
        async with httpx.AsyncClient(timeout=o.timeout_s, follow_redirects=False) as http:
            t0 = time.perf_counter()
            r = await http.get(url)
            ms = (time.perf_counter() - t0) * 1000
        out.append(Check("pagerduty events", OK, f"{s.pagerduty_events_url} reachable: HTTP {r.status_code} in "
                         f"{ms:.0f} ms (GET /, no event sent)", {"status": r.status_code, "ms": round(ms, 1)}))
    except Exception as e:  # noqa: BLE001
        out.append(Check("pagerduty events", FAIL, f"{s.pagerduty_events_url} unreachable: {type(e).__name__}"))
    out.append(await rest_check(o))
    return out


async def rest_check(o: HealthOptions) -> Check:
    from pagerstream.config import ConfigError
    from pagerstream.pagerduty.rest import (
        AuthenticationError,
        ForbiddenError,
        PagerDutyAPIError,
        PagerDutyREST,
        RestSettings,
        RetryPolicy,
    )

    try:
        rs = RestSettings.from_env()
    except ConfigError as e:
        return Check("pagerduty rest", FAIL, "; ".join(f"{v}: {w}" for v, w in e.problems))
    if not rs.has_credentials:
        return Check("pagerduty rest", SKIP, "no PAGERDUTY_API_KEY / PAGERDUTY_USER_TOKEN configured")
    pd = PagerDutyREST(api_key=rs.api_key, user_token=rs.user_token,
                       base_url=rs.api_url if rs.url_overridden else None, region=rs.region,
                       allow_private=rs.allow_private, timeout_s=o.timeout_s,
                       retry=RetryPolicy(max_attempts=2, max_total_wait_s=o.timeout_s))
    path = "/users/me" if pd.auth_kind == "bearer" else "/users"
    try:
        t0 = time.perf_counter()
        body = await pd.get(path, params=None if path == "/users/me" else {"limit": 1})
        ms = (time.perf_counter() - t0) * 1000
        who = (body or {}).get("user", {}).get("email") if path == "/users/me" else None
        return Check("pagerduty rest", OK, f"{pd.base_url}: credentials accepted (GET {path}, {ms:.0f} ms"
                     + (f", user {who}" if who else "") + ")")
    except AuthenticationError:
        return Check("pagerduty rest", FAIL, f"{pd.base_url}: credentials rejected (401 on GET {path})")
    except ForbiddenError:
        return Check("pagerduty rest", FAIL, f"{pd.base_url}: credentials lack read access (403 on GET {path})")
    except PagerDutyAPIError as e:
        return Check("pagerduty rest", FAIL, f"{pd.base_url}: GET {path} -> HTTP {e.status}")
    except Exception as e:  # noqa: BLE001
        return Check("pagerduty rest", FAIL, f"{pd.base_url}: unreachable ({type(e).__name__})")
    finally:
        await pd.aclose()


# --- worker ----------------------------------------------------------------------------------------------
def metrics_checks(snap: Snapshot, o: HealthOptions, now: float | None = None) -> list[Check]:
    """What /metrics says about breakers, dead letters, the catalog and model freshness. Pure."""
    now = time.time() if now is None else now
    out: list[Check] = []
    br = snap.get("pagerstream_pagerduty_breaker_open")
    open_ = sorted(lb.get("routing_key_hint", "?") for lb, v in br if v >= 2)
    half = sorted(lb.get("routing_key_hint", "?") for lb, v in br if 1 <= v < 2)
    if open_:
        out.append(Check("pagerduty breakers", FAIL, f"{len(open_)} of {len(br)} open: "
                         + ", ".join("…" + h for h in open_) + (f"; half-open: {', '.join('…' + h for h in half)}"
                                                               if half else ""),
                         {"open": open_, "half_open": half}))
    elif half:
        out.append(Check("pagerduty breakers", WARN, f"{len(half)} of {len(br)} half-open (probing): "
                         + ", ".join("…" + h for h in half), {"half_open": half}))
    else:
        out.append(Check("pagerduty breakers", OK, f"{len(br)} routing keys, all closed"))
    nb = snap.get("pagerstream_notify_breaker_state")
    n_open = sorted(lb.get("destination", "?") for lb, v in nb if v >= 2)
    if n_open:
        out.append(Check("notify breakers", WARN, "open: " + ", ".join(n_open)))
    dl = snap.by("pagerstream_dead_letters_total", "stage")
    total = sum(dl.values())
    out.append(Check("dead letters (since start)", WARN if total else OK,
                     ", ".join(f"{k} {v:.0f}" for k, v in sorted(dl.items()) if v) or "none",
                     {"by_stage": dl, "total": total}))
    ooo = snap.by("pagerstream_consumer_out_of_order_total", "action")  # streams/consumer_guard.py
    if ooo.get("retention"):
        out.append(Check("consumer offsets", FAIL, f"{ooo['retention']:.0f} time(s) records were deleted by "
                         "retention before this worker processed them (consumer far behind)", {"by_action": ooo}))
    else:
        repaired = ooo.get("ahead", 0) + ooo.get("reseek", 0)
        out.append(Check("consumer offsets", OK, f"in order; {repaired:.0f} stale record(s) held back after "
                         "rebalances" if repaired else "in order", {"by_action": ooo}))
    services = snap.total("pagerstream_catalog_services")
    out.append(Check("catalog", OK if services > 0 else WARN,
                     f"{services:.0f} services loaded" if services > 0 else "no services in the loaded catalog "
                     "(pagerstream catalog publish FILE)", {"services": services}))
    ck = snap.get("pagerstream_model_checkpoint_timestamp_seconds")
    loaded = [(lb.get("model", "?"), v) for lb, v in ck if v > 0]
    if not loaded:
        out.append(Check("model checkpoints", WARN, "none loaded: the classifier abstains until one is published "
                         "(pagerstream models train classify --data F --publish)"))
    for model, ts in loaded:
        age = now - ts
        txt = f"{model}: written {_age(age)} ago"
        out.append(Check(f"model {model}", WARN if age > o.max_model_age_s else OK,
                         txt + (f" (> {_age(o.max_model_age_s)})" if age > o.max_model_age_s else ""),
                         {"age_s": round(age, 1)}))
    return out


def _age(sec: float) -> str:
    if sec < 120:
        return f"{sec:.0f} s"
    if sec < 7200:
        return f"{sec / 60:.0f} min"
    if sec < 172800:
        return f"{sec / 3600:.1f} h"
    return f"{sec / 86400:.1f} d"


async def worker_checks(o: HealthOptions) -> list[Check]:
    import httpx

    base = o.url.rstrip("/")
    out: list[Check] = []
    async with httpx.AsyncClient(timeout=o.timeout_s, verify=o.verify) as http:
        try:
            r = await http.get(base + "/healthz")
            out.append(Check("worker /healthz", OK if r.status_code == 200 else FAIL, f"{base}: HTTP {r.status_code}"))
        except Exception as e:  # noqa: BLE001
            return [Check("worker /healthz", FAIL, f"{base} unreachable: {type(e).__name__}")]
        try:
            r = await http.get(base + "/readyz")
            body = r.json()
            checks = body.get("checks", {}) if isinstance(body, dict) else {}
            not_ok = [k for k, v in checks.items() if not v]
            out.append(Check("worker /readyz", OK if r.status_code == 200 else FAIL,
                             f"HTTP {r.status_code}: " + (", ".join(f"{k}=false" for k in not_ok) if not_ok
                                                          else "all of " + ", ".join(checks) + " true"),
                             {"checks": checks}))
        except Exception as e:  # noqa: BLE001
            out.append(Check("worker /readyz", FAIL, f"{type(e).__name__}"))
        if not o.full:
            return out
        try:
            r = await http.get(base + "/metrics")
            r.raise_for_status()
            out += metrics_checks(Snapshot.parse(r.text), o)
        except Exception as e:  # noqa: BLE001
            out.append(Check("worker /metrics", FAIL, f"{type(e).__name__}"))
    return out


async def run_health(s: Settings, o: HealthOptions) -> list[Check]:
    if not o.full:
        return await worker_checks(o)
    # Redis first and alone: its round-trip time is only meaningful on an otherwise idle event loop.
    redis_ = await redis_check(s, o)
    kafka, pd, worker = await asyncio.gather(kafka_checks(s, o), pagerduty_checks(s, o), worker_checks(o))
    return [security_check(s, o), auth_check(s, o), *kafka, redis_, *pd, *worker]
