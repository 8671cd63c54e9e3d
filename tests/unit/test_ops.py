"""Pure parts of the ops commands: topic migration rules, the schema set, secret checks, metric math
(quantiles from real prometheus_client output), health verdicts from /metrics, changelog compaction and
discovery, and the JSON log format with its secret masking."""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
from pagerstream.streams.topics import DAY_MS, TopicSpec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pagerstream.config import Secret, load_settings
from pagerstream.logging_json import JsonFormatter, SecretMasker, SecretMaskFilter, log_context
from pagerstream.ops import FAIL, OK, WARN
from pagerstream.ops.deploy import (
    DeployReport,
    LiveTopic,
    ops_topic_specs,
    plan_topic,
    schema_records,
    secret_findings,
    weak_reason,
)
from pagerstream.ops.health import HealthOptions, metrics_checks
from pagerstream.ops.migrate import changelog_tables, latest_per_key, related_app_ids
from pagerstream.ops.perf import Snapshot, bucket_quantile, quantiles, rates, render_frame

STRONG = "q8Zr2LxV0pTn5WcYb7KdJm3HsFgE1uAy"  # 32 random-looking characters
FERNET = "7Wq3mZ1xKc9LbV2nR8tYh4Jf6Gd0Ps5Ae1Uo3Ii7Kk0="  # 32 bytes, url-safe base64


# --- topics ----------------------------------------------------------------------------------------------
def live(name: str, parts: int, configs: dict[str, str], dynamic: dict[str, str] | None = None,
         rf: int = 1) -> LiveTopic:
    base = {"retention.ms": "604800000", "cleanup.policy": "delete", "max.message.bytes": "1048588"}
    return LiveTopic(name, parts, rf, {**base, **configs}, dynamic or {})


def test_missing_topic_is_created_with_its_spec():
    spec = TopicSpec("p.alerts.raw", 0, 7 * DAY_MS)
    a = plan_topic(spec, None, partitions=6, replication=3)
    assert a.kind == "create" and a.create_partitions == 6 and a.create_configs == spec.config()


def test_differing_managed_configs_are_altered_keeping_other_dynamic_configs():
    spec = TopicSpec("cp", 1, -1, compact=True, max_message_bytes=16 * 2**20)
    lt = live("cp", 1, {"retention.ms": "86400000", "cleanup.policy": "delete"},
              dynamic={"retention.ms": "86400000", "segment.ms": "3600000", "min.insync.replicas": "2"})
    a = plan_topic(spec, lt, partitions=4, replication=1)
    assert a.kind == "alter"
    assert a.config_changes == {"retention.ms": ("86400000", "-1"), "cleanup.policy": ("delete", "compact"),
                                "max.message.bytes": ("1048588", str(16 * 2**20))}
    # AlterConfigs replaces the whole dynamic set: the operator's segment.ms and min.insync.replicas survive
    assert a.new_dynamic == {"retention.ms": "-1", "segment.ms": "3600000", "min.insync.replicas": "2",
                             "cleanup.policy": "compact", "max.message.bytes": str(16 * 2**20)}


def test_equal_configs_need_nothing_and_unset_max_message_bytes_is_not_compared():
    spec = TopicSpec("t", 0, 7 * DAY_MS, compact=True)
    lt = live("t", 4, {"cleanup.policy": "compact", "max.message.bytes": "5000000"})
    assert plan_topic(spec, lt, partitions=4, replication=1).kind == "ok"
    both = TopicSpec("t", 0, 7 * DAY_MS, compact=True)
    lt2 = live("t", 4, {"cleanup.policy": "delete,compact"})
    assert plan_topic(both, lt2, partitions=4, replication=1).config_changes["cleanup.policy"] == ("delete,compact",
                                                                                                   "compact")


@pytest.mark.parametrize("have,want,word", [(8, 4, "cannot shrink"), (2, 4, "not changed")])
def test_partition_differences_are_reported_never_changed(have, want, word):
    spec = TopicSpec("t", 0, 7 * DAY_MS)
    a = plan_topic(spec, live("t", have, {}), partitions=want, replication=1)
    assert a.kind == "ok" and a.partitions == (have, want)
    assert len(a.problems) == 1 and word in a.problems[0]


def test_lower_replication_is_a_warning():
    a = plan_topic(TopicSpec("t", 0, 7 * DAY_MS), live("t", 4, {}, rf=1), partitions=4, replication=3)
    assert a.replication == (1, 3) and a.warnings and not a.problems


def test_ops_specs_add_the_compacted_schema_topic():
    specs = ops_topic_specs("x.")
    s = specs["pagerstream.schemas"]
    assert s.name == "x.pagerstream.schemas" and s.compact and s.partitions == 1 and s.retention_ms == -1
    assert "alerts.raw" in specs


# --- schemas ---------------------------------------------------------------------------------------------
def test_schema_set_has_every_published_version_and_marks_the_current_ones():
    from pagerstream.schemas import registry

    recs, problems = schema_records(release="9.9")
    assert problems == []
    hist = sorted(p.name for p in (Path(__file__).resolve().parents[2] / "schemas" / "history").glob("*.avsc"))
    assert sorted(f"{r['schema']}.v{r['version']}.avsc" for r in recs) == hist
    reg = registry()
    assert {bytes.fromhex(r["fingerprint"]) for r in recs} == set(reg.by_fingerprint)
    current = {r["fingerprint"] for r in recs if r["current"]}
    assert current == {fp.hex() for fp in reg.fingerprints.values()}
    assert all(r["release"] == "9.9" and r["canonical_form"].startswith("{") for r in recs)


def test_unpublished_current_schema_and_version_gaps_are_problems(tmp_path):
    src = Path(__file__).resolve().parents[2] / "schemas"
    d = tmp_path / "schemas"
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    tick = json.loads((d / "tick.avsc").read_text())
    tick["fields"].append({"name": "extra", "type": ["null", "string"], "default": None})
    (d / "tick.avsc").write_text(json.dumps(tick))
    (d / "history" / "alert.v2.avsc").rename(d / "history" / "alert.v3.avsc")
    recs, problems = schema_records(d)
    assert any("tick.avsc is not published" in p and "tick.v2.avsc" in p for p in problems)
    assert any("alert versions [1, 3] have gaps" in p for p in problems)
    assert [r for r in recs if r["schema"] == "tick" and r["version"] is None and r["current"]]


# --- secrets ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0123456789abcdef0123456789abcdef", "TESTROUTINGKEY00000000000000000A",
                                   "changeme-changeme-changeme-changeme", "a" * 40, "abababababababababababababababab",
                                   "my-super-secret-jwt-key-for-prod-2026"])
def test_example_and_weak_values_are_recognised(value):
    assert weak_reason(value)


@pytest.mark.parametrize("value", [STRONG, "e93facc04764012d7bfb002500d5d1a6", "R3xQ9vLm2Zp8Tn4Ws7Yk1Hd6Jf0Gb5Ca"])
def test_random_values_pass(value):
    assert weak_reason(value) is None


def _key_file() -> str:
    """An ingress key file with one key (a worker refuses to start without one: docs/security.md)."""
    import tempfile

    from pagerstream.auth import add_key_to_file, generate_ingress_key

    path = Path(tempfile.mkdtemp(prefix="ops-keys-")) / "ingress-keys"
    add_key_to_file(str(path), "alertmanager", generate_ingress_key())
    return str(path)


KEY_FILE = _key_file()


def _prod_env(**over: str) -> dict[str, str]:
    env = {"PAGERSTREAM_INGRESS_KEYS": KEY_FILE, "ENCRYPTION_KEY": FERNET, "WEBHOOK_SECRET": STRONG, "JWT_SECRET": STRONG[::-1] + "Q",
           "PAGERDUTY_ROUTING_KEY": "e93facc04764012d7bfb002500d5d1a6", "REDIS_PASSWORD": "x" * 8 + STRONG,
           "PAGERSTREAM_REPLICATION_FACTOR": "3", "PAGERSTREAM_APP_ID": "pagerstream-v2",
           # TLS and SASL (docs/security.md): plaintext Kafka or Redis is a production warning
           "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "KAFKA_SASL_USERNAME": "pagerstream", "KAFKA_SASL_PASSWORD": "y" * 8 + STRONG,
           "REDIS_URL": "rediss://redis.internal:6380/0"}
    env.update(over)
    return {k: v for k, v in env.items() if v}


def test_strong_production_settings_have_no_problem():
    env = _prod_env()
    findings = secret_findings(env, load_settings(env), "production")
    assert [f for f in findings if f.level in ("problem", "warning")] == []


def test_production_problems_name_the_variable_never_the_value():
    env = _prod_env(ENCRYPTION_KEY="", JWT_SECRET="changeme-changeme-changeme-changeme-1",
                    PAGERDUTY_ROUTING_KEY="0123456789abcdef0123456789abcdef",
                    PAGERSTREAM_ALLOW_PRIVATE_PD_URL="true")
    findings = secret_findings(env, load_settings(env), "production")
    problems = {f.var for f in findings if f.level == "problem"}
    assert problems == {"ENCRYPTION_KEY", "JWT_SECRET", "PAGERDUTY_ROUTING_KEY", "PAGERSTREAM_ALLOW_PRIVATE_PD_URL"}
    text = json.dumps([f.__dict__ for f in findings])
    for v in env.values():
        if len(v) >= 16:
            assert v not in text
    assert all(f.fix for f in findings if f.level == "problem")
    rep = DeployReport("production", False, [], None, findings)
    assert rep.exit_code() == 1 and len(rep.problems) == 4
    dev = secret_findings(env, load_settings(env), "dev")
    assert {f.level for f in dev} <= {"note"} and DeployReport("dev", False, [], None, dev).exit_code() == 0
    staging = secret_findings(env, load_settings(env), "staging")
    assert {f.var for f in staging if f.level == "warning"} >= problems


def test_weak_fernet_key_is_a_problem():
    env = _prod_env(ENCRYPTION_KEY="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    f = [x for x in secret_findings(env, load_settings(env), "production") if x.var == "ENCRYPTION_KEY"]
    assert f and f[0].level == "problem" and "distinct bytes" in f[0].message


# --- metrics: quantiles, rates, frames -------------------------------------------------------------------
def test_bucket_quantile_interpolates_like_prometheus():
    b = [(0.1, 10.0), (0.2, 20.0), (0.4, 40.0), (float("inf"), 40.0)]
    assert bucket_quantile(0.5, b) == pytest.approx(0.2)
    assert bucket_quantile(0.25, b) == pytest.approx(0.1)
    assert bucket_quantile(0.3, b) == pytest.approx(0.12)
    assert bucket_quantile(0.99, [(1.0, 1.0), (float("inf"), 100.0)]) == 1.0  # rank in +Inf: highest bound
    assert bucket_quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None


def _registry():
    r = CollectorRegistry()
    lat = Histogram("pagerstream_stage_latency_seconds", "x", ["stage"],
                    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1), registry=r)
    rec = Counter("pagerstream_stage_records", "x", ["stage", "outcome"], registry=r)
    pd = Counter("pagerstream_pagerduty_requests", "x", ["outcome", "status"], registry=r)
    br = Gauge("pagerstream_pagerduty_breaker_open", "x", ["routing_key_hint"], registry=r)
    ck = Gauge("pagerstream_model_checkpoint_timestamp_seconds", "x", ["model"], registry=r)
    dl = Counter("pagerstream_dead_letters", "x", ["stage"], registry=r)
    cat = Gauge("pagerstream_catalog_services", "x", registry=r)
    return r, lat, rec, pd, br, ck, dl, cat


def test_quantiles_and_rates_from_real_prometheus_output():
    r, lat, rec, pd, br, *_ = _registry()
    for _ in range(90):
        lat.labels("normalize").observe(0.003)  # bucket (0.001, 0.005]
    for _ in range(10):
        lat.labels("normalize").observe(0.3)  # bucket (0.1, 0.5]
    rec.labels("normalize", "ok").inc(100)
    prev = Snapshot.parse(generate_latest(r).decode(), at=1000.0)
    for _ in range(50):
        lat.labels("normalize").observe(0.7)  # only slow ones in the window
    rec.labels("normalize", "ok").inc(50)
    pd.labels("delivered", "202").inc(4)
    br.labels("ab12").set(2)
    cur = Snapshot.parse(generate_latest(r).decode(), at=1010.0)
    since_start = quantiles(cur, None, "pagerstream_stage_latency_seconds", "stage")["normalize"]
    assert not since_start.window and since_start.count == 150
    assert 0.001 < since_start.p50 <= 0.005 and 0.5 < since_start.p99 <= 1.0
    window = quantiles(cur, prev, "pagerstream_stage_latency_seconds", "stage")["normalize"]
    assert window.window and window.count == 50 and 0.5 < window.p50 <= 1.0
    assert rates(cur, prev, "pagerstream_stage_records_total", "stage") == {"normalize": pytest.approx(5.0)}
    frame = render_frame(cur, prev, url="http://w:6066")
    assert "normalize" in frame and "5.0" in frame and "…ab12 OPEN" in frame
    assert "delivered 0.4 (total 4)" in frame and "window 10.0s" in frame


# --- health verdicts from /metrics -----------------------------------------------------------------------
def test_metrics_checks_fail_on_an_open_breaker_and_warn_on_old_models():
    r, _lat, _rec, _pd, br, ck, dl, cat = _registry()
    br.labels("ab12").set(0)
    cat.set(3)
    ck.labels("classify").set(1_000_000)
    checks = {c.name: c for c in metrics_checks(Snapshot.parse(generate_latest(r).decode()),
                                                HealthOptions(max_model_age_s=3600), now=1_000_000 + 60)}
    assert checks["pagerduty breakers"].status == OK and checks["catalog"].status == OK
    assert checks["model classify"].status == OK and checks["dead letters (since start)"].status == OK
    br.labels("cd34").set(2)
    br.labels("ef56").set(1)
    dl.labels("normalize").inc(2)
    checks = {c.name: c for c in metrics_checks(Snapshot.parse(generate_latest(r).decode()),
                                                HealthOptions(max_model_age_s=3600), now=1_000_000 + 7200)}
    assert checks["pagerduty breakers"].status == FAIL and "…cd34" in checks["pagerduty breakers"].detail
    assert "…ef56" in checks["pagerduty breakers"].detail
    assert checks["model classify"].status == WARN and checks["dead letters (since start)"].status == WARN
    assert "normalize 2" in checks["dead letters (since start)"].detail


def test_metrics_checks_warn_without_catalog_or_checkpoint():
    r, *_ = _registry()
    names = {c.name: c.status for c in metrics_checks(Snapshot.parse(generate_latest(r).decode()), HealthOptions())}
    assert names["catalog"] == WARN and names["model checkpoints"] == WARN


# --- migrate: discovery and compaction ------------------------------------------------------------------
def test_changelog_discovery_does_not_take_a_longer_app_ids_tables():
    topics = ["ps-__assignor-__leader", "ps-groups-changelog", "ps-pd-delivered-changelog",
              "ps-2-__assignor-__leader", "ps-2-groups-changelog", "alerts.raw", "ps-groups-repartition"]
    assert changelog_tables(topics, "ps") == {"groups": "ps-groups-changelog", "pd-delivered": "ps-pd-delivered-changelog"}
    assert changelog_tables(topics, "ps-2") == {"groups": "ps-2-groups-changelog"}
    # the target of a migration has not run yet (no leader topic): named explicitly, it is not a table of "a"
    copied = ["a-__assignor-__leader", "a-groups-changelog", "a-v2-groups-changelog"]
    assert changelog_tables(copied, "a") == {"groups": "a-groups-changelog", "v2-groups": "a-v2-groups-changelog"}
    assert changelog_tables(copied, "a", others=["a-v2"]) == {"groups": "a-groups-changelog"}
    rel = ["pagerstream-v1-__assignor-__leader", "pagerstream-v1-groups-changelog", "other-__assignor-__leader",
           "other-groups-changelog"]
    assert related_app_ids(rel, "pagerstream-v2") == {"pagerstream-v1": 1}


def test_latest_per_key_keeps_the_last_value_and_drops_tombstones():
    R = namedtuple("R", "partition key value offset")
    recs = [R(0, b"a", b"1", 0), R(0, b"b", b"1", 1), R(0, b"a", b"2", 2), R(1, b"a", b"x", 0),
            R(0, b"b", None, 3), R(1, b"c", None, 1), R(1, b"c", b"back", 2)]
    live_, n, dropped = latest_per_key(recs)
    assert n == 7 and dropped == 1
    assert {k: m.value for k, m in live_.items()} == {(0, b"a"): b"2", (1, b"a"): b"x", (1, b"c"): b"back"}


# --- JSON logs -------------------------------------------------------------------------------------------
RK = "R7xQ2vLm9Zp4Tn8Ws3Yk6Hd1Jf5Gb0Cz"


def _logger(masker: SecretMasker, fmt: logging.Formatter | None = None) -> tuple[logging.Logger, io.StringIO]:
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(fmt or JsonFormatter(masker))
    h.addFilter(SecretMaskFilter(masker))
    lg = logging.getLogger(f"test.ops.{id(buf)}")
    lg.handlers[:] = [h]
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    return lg, buf


def _lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in buf.getvalue().splitlines()]


def test_a_routing_key_in_a_log_line_shows_only_its_last_4_characters():
    s = load_settings({"PAGERDUTY_ROUTING_KEY": RK})
    lg, buf = _logger(SecretMasker.from_settings(s, env={}))
    lg.info("paging %s for checkout", RK)  # known key, no context
    lg.info("body %s", json.dumps({"routing_key": "e93facc04764012d7bfb002500d5d1a6", "event_action": "trigger"}))
    lg.warning("ingest /ingest/grafana?routing_key=Zq1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h&x=1 refused")
    out = buf.getvalue()
    assert RK not in out and "e93facc04764012d7bfb002500d5d1a6" not in out and "Zq1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h" not in out
    msgs = [x["message"] for x in _lines(buf)]
    assert msgs[0] == f"paging ****{RK[-4:]} for checkout"
    assert '"routing_key": "****d1a6"' in msgs[1]
    assert msgs[2] == "ingest /ingest/grafana?routing_key=****4g5h&x=1 refused"


def test_json_fields_context_and_extras():
    lg, buf = _logger(SecretMasker())
    lg.info("opened", extra={"alert_id": "a-1", "service": "checkout", "count": 3})
    with log_context(incident_id="inc-7", trace_id="tr-9"):
        lg.warning("paged", extra={"alert_id": "a-2"})
    lg.error("after")
    a, b, c = _lines(buf)
    assert set(a) >= {"ts", "level", "logger", "message"} and a["ts"].endswith("Z") and a["level"] == "INFO"
    assert a["alert_id"] == "a-1" and a["service"] == "checkout" and a["count"] == 3 and "incident_id" not in a
    assert (b["alert_id"], b["incident_id"], b["trace_id"]) == ("a-2", "inc-7", "tr-9")
    assert "incident_id" not in c and c["level"] == "ERROR"
    with pytest.raises(ValueError), log_context(tenant="x"):
        pass


def test_tokens_passwords_urls_and_exceptions_are_masked():
    s = load_settings({"WEBHOOK_SECRET": STRONG, "REDIS_URL": "redis://:hunter2hunter2@redis:6379/0"})
    lg, buf = _logger(SecretMasker.from_settings(s, env={"PAGERSTREAM_ROUTING_KEYS": f"pay={RK}"}))
    lg.info("GET https://api.example.com Authorization: Token token=y_NbAkKc66ryYTWUXYEu")
    lg.info("oauth Bearer abcdefghijklmnopqrstuv123 ok")
    lg.info("connecting to https://svc:pa55w0rd-xyz@hooks.example.com/x password=hunter2hunter2")
    lg.info("secret object %s and value %s", Secret(STRONG), STRONG)
    try:
        raise RuntimeError(f"send failed for key {RK}")
    except RuntimeError:
        lg.exception("delivery failed")
    out = buf.getvalue()
    for leaked in ("y_NbAkKc66ryYTWUXYEu", "abcdefghijklmnopqrstuv123", "pa55w0rd-xyz", "hunter2hunter2", STRONG, RK):
        assert leaked not in out, leaked
    lines = _lines(buf)
    assert "token=****XYEu" in lines[0]["message"] and "Bearer ****v123" in lines[1]["message"]
    assert "https://svc:****@hooks.example.com/x" in lines[2]["message"] and "password=****" in lines[2]["message"]
    assert lines[3]["message"] == "secret object Secret('****') and value ****"
    assert "RuntimeError" in lines[4]["exc"] and f"****{RK[-4:]}" in lines[4]["exc"]


def test_mask_filter_works_on_a_plain_text_handler_too():
    lg, buf = _logger(SecretMasker([(RK, True)]), logging.Formatter("%(levelname)s %(message)s"))
    lg.info("key %s", RK)
    assert buf.getvalue().strip() == f"INFO key ****{RK[-4:]}"


def test_deploy_and_health_refuse_a_configuration_whose_worker_would_not_start(tmp_path):
    from pagerstream.ops.health import auth_check

    empty = tmp_path / "no-keys"
    empty.write_text("")
    for env in (_prod_env(PAGERSTREAM_INGRESS_KEYS=""), _prod_env(PAGERSTREAM_INGRESS_KEYS=str(empty))):
        s = load_settings(env)
        for environment in ("production", "dev"):  # a worker would refuse to start anywhere
            f = [x for x in secret_findings(env, s, environment) if x.var == "PAGERSTREAM_INGRESS_KEYS"]
            assert f and f[0].level == "problem" and "ingress-key create" in f[0].fix
        c = auth_check(s, HealthOptions(full=True, environment="production"))
        assert c.status == FAIL and "PAGERSTREAM_INGRESS_KEYS" in c.detail
    good = load_settings(_prod_env())
    c = auth_check(good, HealthOptions(full=True, environment="production"))
    assert c.status == OK and "1 ingress key(s)" in c.detail
    opened = load_settings(_prod_env(PAGERSTREAM_INGRESS_KEYS="", PAGERSTREAM_INGRESS_AUTH="open"))
    assert auth_check(opened, HealthOptions(full=True, environment="production")).status == FAIL
    assert auth_check(opened, HealthOptions(full=True, environment="dev")).status == WARN


def test_metrics_checks_report_the_consumer_guard():
    from pagerstream.streams.metrics import Metrics

    m = Metrics()  # the worker's own metric names
    snap = lambda: {c.name: c for c in metrics_checks(Snapshot.parse(generate_latest(m.registry).decode()),
                                                      HealthOptions())}
    assert snap()["consumer offsets"].status == OK and snap()["consumer offsets"].detail == "in order"
    m.consumer_out_of_order.labels("alerts.normalized", "ahead").inc(3)
    m.consumer_out_of_order.labels("alerts.normalized", "reseek").inc()
    c = snap()["consumer offsets"]
    assert c.status == OK and "4 stale record(s) held back" in c.detail
    m.consumer_out_of_order.labels("alerts.raw", "retention").inc()
    c = snap()["consumer offsets"]
    assert c.status == FAIL and "deleted by retention" in c.detail
