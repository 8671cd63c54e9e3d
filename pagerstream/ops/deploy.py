"""`pagerstream deploy`: topics and their configs, the schema set, and the secrets a production needs.

Topics. What the code expects is `streams.topics.topic_specs` (plus this module's `pagerstream.schemas`
topic). Missing topics are created; the configs pagerstream owns (`MANAGED_KEYS`: retention.ms,
cleanup.policy, max.message.bytes) are altered when the live value differs. Kafka's AlterConfigs
replaces *all* dynamic configs of a topic, so the request carries the topic's other dynamic configs
unchanged (an operator's `segment.ms` or `min.insync.replicas` survives). Partition counts are only
reported: Kafka cannot shrink a topic, and adding partitions moves keys to other partitions, which breaks
per-key ordering and the co-partitioning of Faust tables with their source topics.

Schemas. The choice made here: every schema version the release knows (`schemas/*.avsc` and
`schemas/history/*.avsc`) is written to the compacted topic `<prefix>pagerstream.schemas`, keyed by the
hex CRC-64-AVRO fingerprint, as JSON {schema, name, version, fingerprint, canonical_form, current,
release}. Non-Python consumers can resolve a record's fingerprint from Kafka itself, and the next deploy
sees fingerprints that this release does not know (a newer release ran here: its records would be
dead-lettered by this one). The codec registry is verified first: each current schema must be published
in history (schemas/history/README.md).

Secrets. `secret_findings` checks values (never printing them): in production missing or weak secrets
are problems (exit 1), in staging warnings, in dev notes. Kafka or Redis connections in clear (Kafka
PLAINTEXT / SASL_PLAINTEXT, a Redis URL that is not rediss://) are warnings in production, notes elsewhere.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pagerstream.config import Settings
from pagerstream.connections import kafka_admin, kafka_producer, transport_findings
from pagerstream.streams.topics import DAY_MS, TopicSpec, topic_specs

SCHEMAS_TOPIC = "pagerstream.schemas"
# The configs deploy/migrate keep equal to TopicSpec. min.insync.replicas is left to the cluster's
# operators on purpose (TopicSpec's "1" suits one broker, not a 3-broker production cluster).
MANAGED_KEYS = ("retention.ms", "cleanup.policy", "max.message.bytes")
CONFIG_SOURCE_DYNAMIC_TOPIC = 1
ENVIRONMENTS = ("production", "staging", "dev")


def ops_topic_specs(prefix: str = "") -> dict[str, TopicSpec]:
    """Every topic pagerstream needs: the pipeline's plus the schema registry topic deploy writes."""
    specs = dict(topic_specs(prefix))
    specs[SCHEMAS_TOPIC] = TopicSpec(f"{prefix}{SCHEMAS_TOPIC}", 1, -1, compact=True,
                                     doc="JSON: every Avro schema version by fingerprint (pagerstream deploy)")
    return specs


# --- topics: plan ----------------------------------------------------------------------------------------
@dataclass
class LiveTopic:
    name: str
    partitions: int
    replication: int
    configs: dict[str, str]  # every config the broker reports
    dynamic: dict[str, str]  # the topic-level (dynamic) ones: what AlterConfigs replaces


@dataclass
class TopicAction:
    """What deploy/migrate would do to (or only report about) one topic."""

    topic: str
    kind: str  # create | alter | ok
    config_changes: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # key -> (live, want)
    partitions: tuple[int, int] | None = None  # (live, want) when they differ: reported, never changed
    replication: tuple[int, int] | None = None  # (live, want) when live is lower: reported
    new_dynamic: dict[str, str] = field(default_factory=dict)  # full dynamic config set to send (alter)
    create_configs: dict[str, str] = field(default_factory=dict)
    create_partitions: int = 0

    @property
    def problems(self) -> list[str]:
        out = []
        if self.partitions:
            live, want = self.partitions
            if live > want:
                out.append(f"{self.topic}: {live} partitions, the configuration says {want}; Kafka cannot shrink "
                           f"a topic: set PAGERSTREAM_PARTITIONS={live} (or recreate the topic)")
            else:
                out.append(f"{self.topic}: {live} partitions, the configuration says {want}; not changed "
                           "(adding partitions moves keys: per-key order and table state would break); see "
                           "docs/operations.md, 'Partition counts'")
        return out

    @property
    def warnings(self) -> list[str]:
        if self.replication:
            live, want = self.replication
            return [(f"{self.topic}: replication factor {live} < PAGERSTREAM_REPLICATION_FACTOR={want} "
                     "(reassign partitions with kafka-reassign-partitions.sh)")]
        return []

    def describe(self) -> str:
        if self.kind == "create":
            return f"create {self.topic} partitions={self.create_partitions} {self.create_configs}"
        if self.kind == "alter":
            ch = ", ".join(f"{k}: {live if live is not None else '(default)'} -> {want}"
                           for k, (live, want) in sorted(self.config_changes.items()))
            return f"alter  {self.topic} {ch}"
        return f"ok     {self.topic}"


def _norm(key: str, value: str | None) -> str | None:
    if value is None:
        return None
    if key == "cleanup.policy":
        return ",".join(sorted(p.strip() for p in value.split(",") if p.strip()))
    return value.strip()


def wanted_configs(spec: TopicSpec) -> dict[str, str]:
    """The managed part of a TopicSpec's config (max.message.bytes only when the spec sets it)."""
    c = spec.config()
    return {k: c[k] for k in MANAGED_KEYS if k in c}


def plan_topic(spec: TopicSpec, live: LiveTopic | None, *, partitions: int, replication: int) -> TopicAction:
    """Compare one topic with its spec. Pure: the test of every migration rule is here."""
    want_parts = spec.partitions or partitions
    if live is None:
        return TopicAction(spec.name, "create", create_configs=spec.config(), create_partitions=want_parts)
    changes: dict[str, tuple[str | None, str]] = {}
    for k, want in wanted_configs(spec).items():
        have = live.configs.get(k)
        if _norm(k, have) != _norm(k, want):
            changes[k] = (have, want)
    act = TopicAction(spec.name, "alter" if changes else "ok", config_changes=changes)
    if changes:
        act.new_dynamic = {**live.dynamic, **{k: want for k, (_, want) in changes.items()}}
    if live.partitions != want_parts:
        act.partitions = (live.partitions, want_parts)
    if live.replication < replication:
        act.replication = (live.replication, replication)
    return act


def plan_topics(specs: Mapping[str, TopicSpec], live: Mapping[str, LiveTopic], *, partitions: int,
                replication: int) -> list[TopicAction]:
    return [plan_topic(s, live.get(s.name), partitions=partitions, replication=replication)
            for s in specs.values()]


# --- topics: Kafka ---------------------------------------------------------------------------------------
async def fetch_live(admin: Any, names: list[str]) -> dict[str, LiveTopic]:
    """Partitions, replication and configs of those of `names` that exist."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    existing = set(await admin.list_topics())
    present = [n for n in names if n in existing]
    if not present:
        return {}
    meta = {t["topic"]: t for t in await admin.describe_topics(present) if t.get("error_code", 0) == 0}
    out: dict[str, LiveTopic] = {}
    for i in range(0, len(present), 50):
        chunk = present[i:i + 50]
        resps = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in chunk])
        for resp in resps:
            for res in resp.to_object()["resources"]:
                name = res["resource_name"]
                if res["error_code"] or name not in meta:
                    continue
                configs, dynamic = {}, {}
                for e in res["config_entries"]:
                    configs[e["config_names"]] = e["config_value"]
                    if e.get("config_source") == CONFIG_SOURCE_DYNAMIC_TOPIC and e["config_value"] is not None:
                        dynamic[e["config_names"]] = e["config_value"]
                parts = meta[name]["partitions"]
                out[name] = LiveTopic(name, len(parts), min((len(p["replicas"]) for p in parts), default=0),
                                      configs, dynamic)
    return out


async def apply_topic_actions(admin: Any, actions: list[TopicAction], replication: int) -> list[str]:
    """Create and alter; return errors (empty when everything went through)."""
    from aiokafka.admin import NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import TopicAlreadyExistsError

    errors: list[str] = []
    for a in actions:
        if a.kind == "create":
            try:
                await admin.create_topics([NewTopic(a.topic, a.create_partitions, replication,
                                                    topic_configs=a.create_configs)])
            except TopicAlreadyExistsError:
                pass  # a worker created it meanwhile; the next run compares its configs
            except Exception as e:  # noqa: BLE001 - reported, the others still go
                errors.append(f"{a.topic}: create failed: {type(e).__name__}: {e}")
        elif a.kind == "alter":
            try:
                resps = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, a.topic, a.new_dynamic)])
                for resp in resps:
                    for r in resp.to_object().get("resources", []):
                        if r["error_code"]:
                            errors.append(f"{a.topic}: alter refused: error {r['error_code']} {r['error_message']}")
            except Exception as e:  # noqa: BLE001
                errors.append(f"{a.topic}: alter failed: {type(e).__name__}: {e}")
    return errors


async def topic_plan(s: Settings, specs: Mapping[str, TopicSpec] | None = None) -> list[TopicAction]:
    specs = specs or ops_topic_specs(s.topic_prefix)
    admin = kafka_admin(s, request_timeout_ms=15000)
    await admin.start()
    try:
        live = await fetch_live(admin, [sp.name for sp in specs.values()])
        return plan_topics(specs, live, partitions=s.partitions, replication=s.replication_factor)
    finally:
        await admin.close()


async def apply_topics(s: Settings, actions: list[TopicAction]) -> list[str]:
    admin = kafka_admin(s, request_timeout_ms=30000)
    await admin.start()
    try:
        return await apply_topic_actions(admin, actions, s.replication_factor)
    finally:
        await admin.close()


# --- schemas ---------------------------------------------------------------------------------------------
_HIST = re.compile(r"^(?P<stem>[a-z0-9_]+)\.v(?P<v>\d+)\.avsc$")


def schema_records(directory: Path | None = None, release: str = "") -> tuple[list[dict[str, Any]], list[str]]:
    """(records to register, problems of the codec registry). One record per known fingerprint."""
    from fastavro.schema import parse_schema, to_parsing_canonical_form

    from pagerstream.schemas.codec import SCHEMA_DIR, SCHEMA_NAMES, _fingerprint

    directory = directory or SCHEMA_DIR
    problems: list[str] = []
    current: dict[str, str] = {}  # stem -> fp hex
    by_fp: dict[str, dict[str, Any]] = {}
    for stem in SCHEMA_NAMES.values():
        parsed = parse_schema(json.loads((directory / f"{stem}.avsc").read_text()))
        current[stem] = _fingerprint(parsed).hex()
    versions: dict[str, list[int]] = {}
    for f in sorted((directory / "history").glob("*.avsc")):
        m = _HIST.match(f.name)
        if not m:
            problems.append(f"schemas/history/{f.name}: not named <stem>.v<N>.avsc")
            continue
        stem, v = m["stem"], int(m["v"])
        parsed = parse_schema(json.loads(f.read_text()))
        fp = _fingerprint(parsed).hex()
        versions.setdefault(stem, []).append(v)
        if fp in by_fp:  # an identical republished version: keep the first
            continue
        by_fp[fp] = {"schema": stem, "name": parsed.get("name"), "version": v, "fingerprint": fp,
                     "canonical_form": to_parsing_canonical_form(parsed), "current": current.get(stem) == fp,
                     "release": release}
    for stem, fp in current.items():
        if fp not in by_fp:
            problems.append(f"schemas/{stem}.avsc is not published in schemas/history (copy it to "
                            f"{stem}.v{max(versions.get(stem, [0])) + 1}.avsc)")
            parsed = parse_schema(json.loads((directory / f"{stem}.avsc").read_text()))
            by_fp[fp] = {"schema": stem, "name": parsed.get("name"), "version": None, "fingerprint": fp,
                         "canonical_form": to_parsing_canonical_form(parsed), "current": True, "release": release}
    for stem, vs in versions.items():
        if sorted(vs) != list(range(1, len(vs) + 1)):
            problems.append(f"schemas/history: {stem} versions {sorted(vs)} have gaps (expected 1..{len(vs)})")
    return sorted(by_fp.values(), key=lambda r: (r["schema"], r["version"] or 0)), problems


def _comparable(rec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k != "release"}


@dataclass
class SchemaPlan:
    to_write: list[dict[str, Any]]
    unchanged: int
    unknown_fingerprints: list[str]  # on the topic, unknown to this release (a newer one was deployed)
    registry_problems: list[str]
    topic_exists: bool


async def schema_plan(s: Settings, release: str = "") -> SchemaPlan:
    from pagerstream.ops import read_to_end

    records, problems = schema_records(release=release)
    topic = ops_topic_specs(s.topic_prefix)[SCHEMAS_TOPIC].name
    admin = kafka_admin(s, request_timeout_ms=15000)
    await admin.start()
    try:
        exists = topic in set(await admin.list_topics())
    finally:
        await admin.close()
    stored: dict[str, dict[str, Any] | None] = {}
    if exists:
        for m in await read_to_end(s, topic):
            k = (m.key or b"").decode()
            try:
                stored[k] = json.loads(m.value) if m.value is not None else None
            except ValueError:
                stored[k] = None
    known = {r["fingerprint"] for r in records}
    to_write = [r for r in records if stored.get(r["fingerprint"]) is None
                or _comparable(stored[r["fingerprint"]]) != _comparable(r)]  # type: ignore[arg-type]
    unknown = sorted(k for k, v in stored.items() if v is not None and k not in known)
    return SchemaPlan(to_write, len(records) - len(to_write), unknown, problems, exists)


async def register_schemas(s: Settings, plan: SchemaPlan) -> int:
    topic = ops_topic_specs(s.topic_prefix)[SCHEMAS_TOPIC].name
    p = kafka_producer(s, acks="all", enable_idempotence=True)
    await p.start()
    try:
        for r in plan.to_write:
            await p.send_and_wait(topic, json.dumps(r, sort_keys=True).encode(), key=r["fingerprint"].encode())
    finally:
        await p.stop()
    return len(plan.to_write)


# --- secrets ---------------------------------------------------------------------------------------------
@dataclass
class Finding:
    level: str  # problem | warning | note
    var: str
    message: str
    fix: str = ""


_EXAMPLE_WORDS = ("example", "changeme", "change-me", "change_me", "secret", "password", "passw0rd", "test",
                  "sample", "dummy", "default", "placeholder", "xxxxxx", "todo", "insecure", "0000", "1234",
                  "abcd", "qwerty", "letmein", "pagerstream")
GEN_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
GEN_FERNET = "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"


def weak_reason(value: str, *, min_len: int = 32) -> str | None:
    """Why a secret looks like a default, an example or a typed-in string; None when it looks random.
    The reason never contains the value."""
    v = value.strip()
    if len(v) < min_len:
        return f"shorter than {min_len} characters"
    low = v.lower()
    for w in _EXAMPLE_WORDS:
        if w in low:
            return f"contains {w!r}: looks like an example or default value"
    if len(set(v)) < 8:
        return f"only {len(set(v))} distinct characters"
    run = best = 1
    for a, b in itertools.pairwise(low):
        run = run + 1 if ord(b) - ord(a) in (0, 1) else 1
        best = max(best, run)
    if best >= 6:
        return f"has a run of {best} repeated or consecutive characters"
    bits = len(v) * math.log2(len(set(v)))
    if bits < 100:
        return "too little variety for a random secret"
    return None


def _fernet_weak(value: str) -> str | None:
    import base64

    for i, part in enumerate(value.split(",")):
        part = part.strip()
        try:
            raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except ValueError:
            return f"key {i + 1} is not url-safe base64"
        if len(set(raw)) < 12:
            return f"key {i + 1} has only {len(set(raw))} distinct bytes: not a generated key"
    return None


def secret_findings(env: Mapping[str, str], s: Settings, environment: str) -> list[Finding]:
    """What is missing or weak, graded by environment. Messages name variables, never values."""
    if environment not in ENVIRONMENTS:
        raise ValueError(f"environment must be one of {ENVIRONMENTS}")
    prod = environment == "production"
    must = "problem" if prod else ("warning" if environment == "staging" else "note")
    out: list[Finding] = []

    def get(name: str) -> str:
        return (env.get(name) or "").strip()

    if not s.encryption_key:
        out.append(Finding(must, "ENCRYPTION_KEY", "not set: model checkpoints can be neither published nor loaded",
                           f"ENCRYPTION_KEY=$({GEN_FERNET})"))
    elif why := _fernet_weak(s.encryption_key.get()):
        out.append(Finding(must, "ENCRYPTION_KEY", why, f"ENCRYPTION_KEY=$({GEN_FERNET})"))
    for var, attr, purpose in (("WEBHOOK_SECRET", "webhook_secret", "Grafana webhooks are accepted unsigned"),
                               ("JWT_SECRET", "jwt_secret", "operator tokens for /api/v1 cannot be verified")):
        sec = getattr(s, attr)
        if not sec:
            out.append(Finding(must, var, f"not set: {purpose}", f"{var}=$({GEN_SECRET})"))
        elif why := weak_reason(sec.get()):
            out.append(Finding(must, var, why, f"{var}=$({GEN_SECRET})"))
    if s.webhook_secret and s.jwt_secret and s.webhook_secret == s.jwt_secret:
        out.append(Finding("warning" if prod else "note", "JWT_SECRET",
                           "equals WEBHOOK_SECRET: one leak exposes both", f"JWT_SECRET=$({GEN_SECRET})"))
    if not s.pagerduty_routing_key:
        out.append(Finding(must, "PAGERDUTY_ROUTING_KEY", "not set: alerts that carry no routing key (and no "
                           "catalog routing key) cannot be paged",
                           "PAGERDUTY_ROUTING_KEY=<the 32-character integration key of an Events API v2 integration>"))
    elif why := weak_reason(s.pagerduty_routing_key.get()):
        out.append(Finding(must, "PAGERDUTY_ROUTING_KEY", why + " (example keys page nobody)",
                           "PAGERDUTY_ROUTING_KEY=<the integration key from PagerDuty: Service > Integrations>"))
    for name, secrets in s.pagerduty_webhook_secrets:
        for i, sec in enumerate(secrets, 1):
            if why := weak_reason(sec.get()):
                out.append(Finding(must, "PAGERDUTY_WEBHOOK_SECRETS", f"{name} secret {i}: {why}",
                                   "use the signing secret PagerDuty showed when the subscription was created"))
    if s.pagerduty_api_key and (why := weak_reason(s.pagerduty_api_key.get(), min_len=20)):
        out.append(Finding("warning" if prod else "note", "PAGERDUTY_API_KEY", why,
                           "PAGERDUTY_API_KEY=<a REST API key from PagerDuty: Integrations > API Access Keys>"))
    if s.allow_private_pd_url:
        out.append(Finding(must, "PAGERSTREAM_ALLOW_PRIVATE_PD_URL", "true: the SSRF guard is off (loopback, "
                           "private and plain-http PagerDuty URLs are accepted)", "PAGERSTREAM_ALLOW_PRIVATE_PD_URL=false"))
    from pagerstream.auth import Auth  # what `pagerstream auth status` checks: would a worker start?

    for var, why in Auth(s).startup_problems():
        out.append(Finding("problem", var, why, "pagerstream auth ingress-key create NAME (docs/security.md)"))
    if getattr(s, "ingress_auth", "keys") == "open":
        out.append(Finding(must, "PAGERSTREAM_INGRESS_AUTH", "open: anyone who reaches the port can page",
                           "PAGERSTREAM_INGRESS_AUTH=keys with PAGERSTREAM_INGRESS_KEYS=<key file> (docs/security.md)"))
    if not s.pagerduty_events_url.startswith("https://"):
        out.append(Finding(must, "PAGERDUTY_EVENTS_URL", "not https: routing keys would cross the network in "
                           "clear", "PAGERDUTY_EVENTS_URL=https://events.pagerduty.com (or events.eu.pagerduty.com)"))
    if not s.redis_password and not s.redis_url.startswith(("rediss://", "unix://")):
        out.append(Finding("warning" if prod else "note", "REDIS_PASSWORD", "Redis without a password over plain TCP",
                           "REDIS_PASSWORD=<the requirepass / ACL password>, or a rediss:// REDIS_URL"))
    # Connections in clear (docs/security.md, "TLS and SASL"): a warning in production, a note elsewhere.
    for var, message, fix in transport_findings(s):
        out.append(Finding("warning" if prod else "note", var, message, fix))
    if prod and s.replication_factor < 3:
        out.append(Finding("warning", "PAGERSTREAM_REPLICATION_FACTOR",
                           f"{s.replication_factor}: one broker's disk holds the only copy of accepted alerts",
                           "PAGERSTREAM_REPLICATION_FACTOR=3 (before the topics are created)"))
    if prod and get("PAGERSTREAM_APP_ID") in ("", "pagerstream"):
        out.append(Finding("note", "PAGERSTREAM_APP_ID", "default app id: fine, but give it a version suffix "
                           "(e.g. pagerstream-v1) so that a state migration has somewhere to go",
                           "PAGERSTREAM_APP_ID=pagerstream-v1"))
    return out


# --- the whole deploy -----------------------------------------------------------------------------------
@dataclass
class DeployReport:
    environment: str
    dry_run: bool
    actions: list[TopicAction]
    schemas: SchemaPlan | None
    findings: list[Finding]
    errors: list[str] = field(default_factory=list)
    schemas_written: int = 0

    @property
    def problems(self) -> list[str]:
        p = [x for a in self.actions for x in a.problems]
        if self.schemas:
            p += self.schemas.registry_problems
            if self.schemas.unknown_fingerprints:
                p.append(f"{len(self.schemas.unknown_fingerprints)} schema fingerprints on {SCHEMAS_TOPIC} are "
                         "unknown to this release: a newer release was deployed here; this one would "
                         "dead-letter records written with them (deploy the newer release or add its schemas)")
        p += [f"{f.var}: {f.message}" for f in self.findings if f.level == "problem"]
        return p

    def exit_code(self) -> int:
        if self.errors:
            return 1
        return 1 if self.environment == "production" and self.problems else 0


def release() -> str:
    try:
        from importlib.metadata import version

        return version("pagerstream")
    except Exception:  # noqa: BLE001
        return "unknown"


async def run_deploy(s: Settings, env: Mapping[str, str], environment: str, *, dry_run: bool) -> DeployReport:
    findings = secret_findings(env, s, environment)
    actions = await topic_plan(s)
    rep = DeployReport(environment, dry_run, actions, None, findings)
    if not dry_run:
        rep.errors += await apply_topics(s, [a for a in actions if a.kind in ("create", "alter")])
    rep.schemas = await schema_plan(s, release())
    if not dry_run and rep.schemas.to_write:
        try:
            rep.schemas_written = await register_schemas(s, rep.schemas)
        except Exception as e:  # noqa: BLE001
            rep.errors.append(f"schema registration failed: {type(e).__name__}: {e}")
    return rep


def render_deploy(rep: DeployReport, s: Settings) -> str:
    verb = "would" if rep.dry_run else "did"
    lines = [f"pagerstream deploy --env {rep.environment}{' --dry-run' if rep.dry_run else ''}",
             (f"kafka {s.kafka_bootstrap_servers}, topic prefix {s.topic_prefix or '(none)'}, "
              f"partitions {s.partitions}, replication {s.replication_factor}"), "", "topics:"]
    for a in rep.actions:
        if a.kind != "ok":
            lines.append(f"  {verb} {a.describe()}")
    n_ok = sum(1 for a in rep.actions if a.kind == "ok")
    lines.append(f"  {n_ok} of {len(rep.actions)} topics already as configured")
    for a in rep.actions:
        for p in a.problems:
            lines.append(f"  ✗ {p}")
        for w in a.warnings:
            lines.append(f"  ! {w}")
    if rep.schemas:
        sp = rep.schemas
        lines += ["", "schemas:"]
        for p in sp.registry_problems:
            lines.append(f"  ✗ {p}")
        if sp.to_write:
            names = sorted({f"{r['schema']}.v{r['version']}" for r in sp.to_write})
            lines.append(f"  {verb} register {len(sp.to_write)} schema versions on {s.topic_prefix}{SCHEMAS_TOPIC}: "
                         + ", ".join(names[:12]) + (" …" if len(names) > 12 else ""))
        lines.append(f"  {sp.unchanged} schema versions already registered")
        if sp.unknown_fingerprints:
            lines.append(f"  ✗ unknown fingerprints on the topic: {', '.join(sp.unknown_fingerprints[:5])}")
    lines += ["", f"secrets and settings ({rep.environment}):"]
    if not rep.findings:
        lines.append("  ✓ nothing to report")
    mark = {"problem": "✗", "warning": "!", "note": "-"}
    for f in rep.findings:
        lines.append(f"  {mark[f.level]} {f.var}: {f.message}")
    for e in rep.errors:
        lines.append(f"✗ {e}")
    fixes = [f for f in rep.findings if f.fix and f.level in ("problem", "warning")]
    lines += ["", "next:"]
    for f in fixes:
        lines.append(f"  set {f.fix}")
    if rep.dry_run:
        lines.append(f"  pagerstream deploy --env {rep.environment}            # apply the plan above")
    lines.append("  pagerstream catalog publish catalog.yaml        # the services catalog")
    lines.append("  pagerstream worker --log-format json            # (or the Helm chart / systemd unit)")
    lines.append("  pagerstream health --full-check --url http://<worker>:6066")
    problems = rep.problems
    verdict = ("FAILED" if rep.exit_code() else "OK") + (f" ({len(problems)} problems)" if problems else "")
    lines += ["", verdict]
    return "\n".join(lines)


__all__ = [
    "DAY_MS",
    "ENVIRONMENTS",
    "SCHEMAS_TOPIC",
    "Finding",
    "LiveTopic",
    "TopicAction",
    "ops_topic_specs",
    "plan_topic",
    "plan_topics",
    "run_deploy",
    "schema_records",
    "secret_findings",
    "weak_reason",
]
