"""`pagerstream` command line: worker, topics, produce, tail, catalog, pd-sandbox."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click

from pagerstream.config import ConfigError, Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as e:
        click.echo("pagerstream: configuration error, not starting:", err=True)
        for var, why in e.problems:
            click.echo(f"  {var}: {why}", err=True)
        sys.exit(2)


@click.group()
def main() -> None:
    """pagerstream: Kafka-native alert pipeline in front of PagerDuty."""


# --- worker ----------------------------------------------------------------------------------------
@main.command()
@click.option("--web-port", default=6066, show_default=True, help="HTTP ingress, /metrics, /healthz, /readyz")
@click.option("--web-host", default="127.0.0.1", show_default=True)
@click.option("--catalog", "catalog_path", type=click.Path(exists=True, dir_okay=False),
              help="Validate and publish this services catalog before starting")
@click.option("--create-topics/--no-create-topics", default=True, show_default=True)
@click.option("--session-timeout", default=30.0, show_default=True, help="Kafka group session timeout (s)")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="PEM certificate: serve HTTPS")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="PEM private key for --tls-cert")
@click.option("--forwarder/--no-forwarder", default=True, show_default=True,
              help="Run the PagerDuty forwarder agents in this worker")
@click.option("--loglevel", default="info", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one object per line (ts, level, logger, message, ids), secrets masked")
def worker(web_port: int, web_host: str, catalog_path: str | None, create_topics: bool, session_timeout: float,
           tls_cert: str | None, tls_key: str | None, forwarder: bool, loglevel: str, log_format: str) -> None:
    """Run a Faust worker: pipeline agents, PagerDuty forwarder and the HTTP ingress."""
    s = _settings()
    log_config = None
    if log_format == "json":  # before anything logs; handed to Faust's worker below as well
        from pagerstream import logging_json

        log_config = logging_json.install(loglevel, logging_json.SecretMasker.from_settings(s))
    os.makedirs(s.datadir, exist_ok=True)  # Faust creates only the last path component
    catalog_path = catalog_path or s.catalog_path or None
    if create_topics:
        _create_topics_or_exit(s)
    if catalog_path:
        _publish_catalog(s, catalog_path)
    import faust

    from pagerstream.streams.app import Pipeline, RuntimeOptions

    # Client libraries log every request at DEBUG; building those records cost ~5% of a busy worker.
    for noisy in ("aiokafka", "kafka", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(loglevel.upper())
                                              if isinstance(logging.getLevelName(loglevel.upper()), int)
                                              else logging.WARNING))
    pipeline = Pipeline(s, RuntimeOptions(web_port=web_port, web_host=web_host, session_timeout_s=session_timeout,
                                                 tls_cert=tls_cert, tls_key=tls_key, enable_forwarder=forwarder))
    if log_config is not None:  # quiet: no banner, so stdout is JSON lines only
        faust.Worker(pipeline.app, loglevel=loglevel, logging_config=log_config, quiet=True).execute_from_commandline()
        return
    faust.Worker(pipeline.app, loglevel=loglevel).execute_from_commandline()


def _create_topics_or_exit(s: Settings) -> None:
    from aiokafka.errors import KafkaConnectionError

    try:
        asyncio.run(_create_topics(s))
    except KafkaConnectionError:  # "Unable to bootstrap": say why (TLS, SASL, network) and stop
        from pagerstream.connections import kafka_probe

        why = asyncio.run(kafka_probe(s)) or "unreachable"
        click.echo(f"pagerstream: Kafka {s.kafka_bootstrap_servers}: {why}", err=True)
        sys.exit(1)


async def _create_topics(s: Settings) -> list[str]:
    from pagerstream.streams.topics import create_topics

    return await create_topics(s, s.topic_prefix, s.partitions, s.replication_factor)


# --- topics ----------------------------------------------------------------------------------------
@main.group()
def topics() -> None:
    """Manage pagerstream's Kafka topics."""


@topics.command("create")
def topics_create() -> None:
    """Create every topic (partitions, retention, compaction set on purpose); existing ones are kept."""
    s = _settings()
    created = asyncio.run(_create_topics(s))
    from pagerstream.streams.topics import topic_specs

    for spec in topic_specs(s.topic_prefix).values():
        state = "created" if spec.name in created else "exists"
        parts = spec.partitions or s.partitions
        click.echo(f"{state:8} {spec.name:32} partitions={parts} rf={s.replication_factor} {spec.config()}")


@topics.command("list")
def topics_list() -> None:
    """Show the topics and what they carry."""
    s = _settings()
    from pagerstream.streams.topics import topic_specs

    for spec in topic_specs(s.topic_prefix).values():
        click.echo(f"{spec.name:32} {spec.doc}")


# --- catalog ---------------------------------------------------------------------------------------
@main.group()
def catalog() -> None:
    """Validate and publish the services catalog."""


@catalog.command("validate")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def catalog_validate(path: str) -> None:
    """Check a catalog file; print every problem with file, path and reason."""
    c = _load_catalog_or_exit(path)
    click.echo(f"{path}: ok, {len(c.services)} services, version {c.version[:12]}")


@catalog.command("publish")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def catalog_publish(path: str) -> None:
    """Validate the catalog and publish it to the compacted catalog topic."""
    _publish_catalog(_settings(), path)


def _load_catalog_or_exit(path: str) -> Any:
    from pagerstream.processors.catalog import load_catalog
    from pagerstream.processors.errors import CatalogError

    try:
        return load_catalog(path)
    except CatalogError as e:
        for p, why in e.problems:
            click.echo(f"{e.file}: {p}: {why}", err=True)
        sys.exit(1)


def _publish_catalog(s: Settings, path: str) -> None:
    from pagerstream.streams.catalog_view import publish_catalog
    from pagerstream.streams.topics import topic_specs

    c = _load_catalog_or_exit(path)
    asyncio.run(_create_topics(s))
    res = asyncio.run(publish_catalog(s, topic_specs(s.topic_prefix)["pagerstream.catalog"].name, c))
    click.echo(f"catalog {c.version[:12]}: published {res['published']} services, removed {res['removed']}")


# --- produce ---------------------------------------------------------------------------------------
SAMPLE_SERVICES = ["checkout", "payments", "search", "auth"]


def sample_pd_event(i: int, routing_key: str, *, resolve: bool = False, dedup_key: str | None = None) -> dict[str, Any]:
    svc = SAMPLE_SERVICES[i % len(SAMPLE_SERVICES)]
    key = dedup_key or f"sample-{svc}-{i}"
    if resolve:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": key}
    return {
        "routing_key": routing_key, "event_action": "trigger", "dedup_key": key,
        "payload": {"summary": f"High error rate on {svc} (sample {i})", "source": f"{svc}-{i % 3}.prod",
                    "severity": ["critical", "error", "warning"][i % 3], "component": svc,
                    "custom_details": {"error_rate": 0.05 + (i % 10) / 100, "service": svc}},
    }


@main.command()
@click.option("--count", default=10, show_default=True, help="Number of sample alerts")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False),
              help="JSON file (object or array of objects) to publish instead of samples")
@click.option("--source", default="pagerduty_events_v2", show_default=True,
              help="Source of --file bodies: pagerduty_events_v2, alertmanager, grafana, generic:<name>")
@click.option("--resolve/--no-resolve", default=False, help="Also publish a resolve for each sample trigger")
@click.option("--rate", default=0.0, help="Alerts per second (0 = as fast as possible)")
def produce(count: int, file_: str | None, source: str, resolve: bool, rate: float) -> None:
    """Publish sample or given alerts straight to alerts.raw (acks=all)."""
    s = _settings()
    rk = s.pagerduty_routing_key.get() or "R0UTINGKEYSAMPLE0000000000000001"[:32]
    bodies: list[tuple[str, bytes, bytes]] = []
    if file_:
        data = json.loads(Path(file_).read_text())
        for obj in data if isinstance(data, list) else [data]:
            b = json.dumps(obj).encode()
            key = str(obj.get("dedup_key") or obj.get("groupKey") or uuid.uuid4().hex).encode()
            bodies.append((source, b, key))
    else:
        from pagerstream.processors.incident import short_hash

        for i in range(count):
            ev = sample_pd_event(i, rk)
            bodies.append(("pagerduty_events_v2", json.dumps(ev).encode(), f"{short_hash(rk)}:{ev['dedup_key']}".encode()))
        if resolve:
            for i in range(count):
                ev = sample_pd_event(i, rk, resolve=True)
                bodies.append(("pagerduty_events_v2", json.dumps(ev).encode(),
                               f"{short_hash(rk)}:{ev['dedup_key']}".encode()))
    n = asyncio.run(_produce(s, bodies, rate))
    click.echo(f"produced {n} raw alerts to {s.topic_prefix}alerts.raw")


async def _produce(s: Settings, bodies: list[tuple[str, bytes, bytes]], rate: float) -> int:
    from pagerstream.connections import kafka_producer
    from pagerstream.schemas import AvroCodec
    from pagerstream.streams.topics import topic_specs

    codec = AvroCodec("raw_alert")
    topic = topic_specs(s.topic_prefix)["alerts.raw"].name
    p = kafka_producer(s, acks="all", enable_idempotence=True, linger_ms=5)
    await p.start()
    try:
        futs = []
        t0 = time.monotonic()
        for i, (source, body, key) in enumerate(bodies):
            rec = {"id": uuid.uuid4().hex, "source": source, "received_at": int(time.time() * 1000),
                   "content_type": "application/json", "body": body, "attributes": {}}
            futs.append(await p.send(topic, codec.encode(rec), key=key))
            if rate > 0:
                delay = t0 + (i + 1) / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        await asyncio.gather(*futs)
        return len(futs)
    finally:
        await p.stop()


# --- tail ------------------------------------------------------------------------------------------
@main.command()
@click.argument("topic")
@click.option("--from-beginning/--latest", default=True, show_default=True)
@click.option("--max", "max_", default=0, help="Stop after this many records (0 = no limit)")
@click.option("--follow/--no-follow", default=False, show_default=True, help="Keep waiting for new records")
@click.option("--timeout", default=2.0, show_default=True, help="Without --follow: stop after this idle time (s)")
def tail(topic: str, from_beginning: bool, max_: int, follow: bool, timeout: float) -> None:
    """Decode and print a topic as JSON lines (prefix is added to short names like `incidents`)."""
    s = _settings()
    from pagerstream.streams.topics import topic_specs

    specs = topic_specs(s.topic_prefix)
    name = specs[topic].name if topic in specs else topic
    asyncio.run(_tail(s, name, from_beginning, max_, follow, timeout))


async def _tail(s: Settings, topic: str, from_beginning: bool, max_: int, follow: bool, timeout: float) -> None:
    from pagerstream.connections import kafka_consumer
    from pagerstream.schemas.codec import decode_any

    c = kafka_consumer(s, topic, enable_auto_commit=False, auto_offset_reset="earliest" if from_beginning else "latest",
                       group_id=None)
    await c.start()
    n = 0
    try:
        idle_since = time.monotonic()
        while True:
            batch = await c.getmany(timeout_ms=500)
            if not batch:
                if not follow and time.monotonic() - idle_since > timeout:
                    return
                continue
            idle_since = time.monotonic()
            for msgs in batch.values():
                for m in msgs:
                    out = {"partition": m.partition, "offset": m.offset,
                           "key": m.key.decode("utf-8", "replace") if m.key else None,
                           "value": decode_any(m.value)}
                    click.echo(json.dumps(out, default=_jsonable))
                    n += 1
                    if max_ and n >= max_:
                        return
    finally:
        await c.stop()


def _jsonable(x: Any) -> Any:
    if isinstance(x, (bytes, bytearray)):
        try:
            return x.decode()
        except UnicodeDecodeError:
            return x.hex()
    return str(x)


# --- models ----------------------------------------------------------------------------------------
MODELS = {
    "anomaly": ("pagerstream.models.eval.anomaly", "NAB-layout directory (data/<category>/*.csv, labels/)"),
    "classify": ("pagerstream.models.eval.classify", "JSONL of alert rules (rules_flat.jsonl shape)"),
    "transient": ("pagerstream.models.eval.transient", "NAB-layout directory"),
    "correlate": ("pagerstream.models.eval.correlate", "AIT alert data (folder, zip or CSV)"),
    "templates": ("pagerstream.models.eval.templates", "loghub 2k layout directory"),
    "similar": ("pagerstream.models.eval.similar", "post-mortem corpus + retrieval_pairs*.jsonl directory"),
}


@main.group()
def models() -> None:
    """Evaluate, train and correct the online models."""


@models.command("evaluate")
@click.argument("model", type=click.Choice(sorted(MODELS)))
@click.option("--data", "data", required=True, type=click.Path(exists=True), help="Data in the model's layout")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Write predictions here")
@click.option("--quick", is_flag=True, help="A fast deterministic subset (what CI runs)")
def models_evaluate(model: str, data: str, out: str | None, quick: bool) -> None:
    """Run MODEL on DATA, print its metrics next to their goals, and how to reproduce them."""
    import importlib

    mod = importlib.import_module(MODELS[model][0])
    cmd = f"pagerstream models evaluate {model} --data {data}" + (f" --out {out}" if out else "") + (
        " --quick" if quick else "")
    click.echo(f"$ {cmd}")
    metrics = mod.evaluate(Path(data), Path(out) if out else None, quick=quick)
    click.echo(json.dumps({"model": model, "metrics": metrics}, default=str))


@models.command("train")
@click.argument("model", type=click.Choice(["classify"]))
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSONL of labelled alert rules (rules_flat.jsonl shape: name, description, query, for, "
                   "severity, category4 or category)")
@click.option("--publish/--no-publish", default=False, show_default=True,
              help="Publish the trained model to models.checkpoints: every worker loads it")
@click.option("--limit", type=int, default=0, help="Learn at most this many rules (0 = all)")
def models_train(model: str, data: str, publish: bool, limit: int) -> None:
    """Train MODEL from labelled data (a cold start for the stream's classifier)."""
    from pagerstream.models.classify import AlertClassifier, features_from_rule

    clf = AlertClassifier()
    skipped = 0
    with open(data, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if limit and i >= limit:
                break
            if not line.strip():
                continue
            r = json.loads(line)
            try:
                clf.learn(features_from_rule(r), severity=r.get("severity"),
                          category=r.get("category4") or r.get("category"))
            except ValueError:
                skipped += 1
    click.echo(json.dumps({"model": model, "learned": clf.n_learned, "skipped": skipped}))
    if publish:
        s = _settings()
        from pagerstream.crypto import NoKey
        from pagerstream.streams.model_hub import publish_checkpoint
        from pagerstream.streams.topics import topic_specs

        asyncio.run(_create_topics(s))
        topic = topic_specs(s.topic_prefix)["models.checkpoints"].name
        try:
            asyncio.run(publish_checkpoint(s, topic, s.encryption_key, "classify",
                                           clf.to_state(), n_learned=clf.n_learned, trained_from=Path(data).name))
        except NoKey as e:
            click.echo(f"pagerstream: {e}", err=True)
            sys.exit(2)
        click.echo(f"published to {topic}")


@models.command("feedback")
@click.option("--incident", "incident_id", required=True, help="incident_id from the incidents topic")
@click.option("--category", type=click.Choice(["infrastructure", "application", "security", "business"]))
@click.option("--severity", type=click.Choice(["critical", "error", "warning", "info"]))
@click.option("--by", default=None, help="who is correcting (recorded)")
def models_feedback(incident_id: str, category: str | None, severity: str | None, by: str | None) -> None:
    """Correct an incident's category/severity: the classifier learns from it (models.feedback)."""
    if not category and not severity:
        raise click.UsageError("give --category and/or --severity")
    s = _settings()
    from pagerstream.schemas import AvroCodec
    from pagerstream.streams.topics import topic_specs

    now = int(time.time() * 1000)
    rec = {"feedback_id": f"human:{incident_id}:{now}:{uuid.uuid4().hex[:6]}", "kind": "human",
           "incident_id": incident_id, "features_json": None, "category": category, "severity": severity,
           "by": by, "at": now}
    topic = topic_specs(s.topic_prefix)["models.feedback"].name
    async def go() -> None:
        from pagerstream.connections import kafka_producer

        p = kafka_producer(s, acks="all", enable_idempotence=True)
        await p.start()
        try:
            await p.send_and_wait(topic, AvroCodec("model_feedback").encode(rec), key=incident_id.encode())
        finally:
            await p.stop()

    asyncio.run(go())
    click.echo(json.dumps({"feedback_id": rec["feedback_id"], "topic": topic}))


# --- sandbox ---------------------------------------------------------------------------------------
@main.command("pd-sandbox")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8787, show_default=True)
@click.option("--spec", type=click.Path(exists=True, dir_okay=False), help="Events v2 OpenAPI spec (default: contracts)")
def pd_sandbox(host: str, port: int, spec: str | None) -> None:
    """Run the local PagerDuty Events API v2 stand-in (validates against the official spec)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from pagerstream.streams.pd_sandbox import run

    run(host, port, spec_path=spec)



from pagerstream.cli_pagerduty import pagerduty as _pagerduty_group  # noqa: E402

main.add_command(_pagerduty_group)


def _notify_hooks() -> None:
    """The notifications commands read dead letters from Kafka and use the worker's channel context."""
    import pagerstream.cli_notify as cn

    def dead_letter_source(s: Settings) -> Any:
        from pagerstream.streams.topics import topic_specs

        topic = topic_specs(s.topic_prefix)["notifications.dead-letter"].name
        return _read_all_values(s, topic)

    def context_factory(s: Settings, r: Any) -> Any:
        from pagerstream.notify import templates
        from pagerstream.notify.base import ChannelContext
        from pagerstream.notify.delivery import RedisRefStore
        from pagerstream.notify.links import ActionLinks, link_keys
        from pagerstream.notify.outbound import outbound_client
        from pagerstream.notify.secrets import SecretStore

        public = os.environ.get("PAGERSTREAM_PUBLIC_URL", "http://127.0.0.1:6066")
        return ChannelContext(http=outbound_client(allowlist=os.environ.get("OUTBOUND_URL_ALLOWLIST")),
                              secret=SecretStore.from_env().get, render=templates.render,
                              refs=RedisRefStore(r, namespace=s.topic_prefix),
                              action_link=ActionLinks(public.rstrip("/") + "/act", link_keys(), ttl_s=86_400))

    cn.dead_letter_source = dead_letter_source
    cn.context_factory = context_factory


async def _read_all_values_async(bootstrap: str | Settings, topic: str) -> list[bytes]:
    from pagerstream.connections import kafka_consumer

    c = kafka_consumer(bootstrap, topic, enable_auto_commit=False, auto_offset_reset="earliest", group_id=None)
    await c.start()
    out: list[bytes] = []
    try:
        idle = 0
        while idle < 3:
            batch = await c.getmany(timeout_ms=500)
            idle = 0 if batch else idle + 1
            out.extend(m.value for msgs in batch.values() for m in msgs if m.value)
    finally:
        await c.stop()
    return out


def _read_all_values(bootstrap: str | Settings, topic: str) -> list[bytes]:
    return asyncio.run(_read_all_values_async(bootstrap, topic))


from pagerstream.cli_notify import notifications as _notifications_group  # noqa: E402
from pagerstream.notify.templates import preview_command as _preview_command  # noqa: E402

_notifications_group.add_command(_preview_command)
main.add_command(_notifications_group)
_notify_hooks()


# --- operations: deploy, health, perf, migrate (pagerstream/ops, docs/operations.md) -----------------
from pagerstream.ops import commands as _ops_commands  # noqa: E402

for _cmd in _ops_commands():
    main.add_command(_cmd)


# --- security: operator tokens, ingress keys, the audit trail (pagerstream/auth.py, pagerstream/audit.py) --
from pagerstream.audit import audit_cli_command as _audit_cli_command  # noqa: E402
from pagerstream.audit import audit_group as _audit_group  # noqa: E402
from pagerstream.auth import auth_group as _auth_group  # noqa: E402

main.add_command(_auth_group)
main.add_command(_audit_group)
_audit_cli_command(_pagerduty_group.commands["apply"], "account.apply")  # every apply lands in the audit trail


# --- GDPR: one person's data in Redis, tables and topics (pagerstream/gdpr.py, docs/compliance.md) -------
@main.group("gdpr")
def gdpr_group() -> None:
    """Export (right of access) or erase (right to erasure) one person's data."""


def _gdpr_subject(emails: tuple[str, ...], user_ids: tuple[str, ...]) -> Any:
    from pagerstream.gdpr import Subject

    try:
        return Subject(emails=emails, user_ids=user_ids)
    except ValueError as e:
        raise click.UsageError(str(e)) from e


_gdpr_who = [click.option("--email", "emails", multiple=True, help="The person's email address (repeatable)"),
             click.option("--user-id", "user_ids", multiple=True, help="A user id, e.g. PagerDuty's (repeatable)")]


def _gdpr_options(f: Any) -> Any:
    for opt in reversed(_gdpr_who):
        f = opt(f)
    return f


@gdpr_group.command("export")
@_gdpr_options
@click.option("--out", type=click.Path(dir_okay=False), help="Write the JSON report here (default: stdout)")
def gdpr_export(emails: tuple[str, ...], user_ids: tuple[str, ...], out: str | None) -> None:
    """What Redis keys, table entries (changelogs) and topic records mention the person, as JSON."""
    from pagerstream import gdpr

    report = gdpr.export(_settings(), _gdpr_subject(emails, user_ids))
    text = json.dumps(report, indent=2, default=str)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
        click.echo(f"{out}: {json.dumps(report['summary'])}")
    else:
        click.echo(text)


@gdpr_group.command("erase")
@_gdpr_options
@click.option("--dry-run", is_flag=True, help="Say what would be deleted, tombstoned and rewritten; change nothing")
@click.option("--yes", is_flag=True, help="Confirm the erasure (required unless --dry-run)")
@click.option("--allow-running", is_flag=True,
              help="Erase although workers are running (their tables may write the old values back)")
def gdpr_erase(emails: tuple[str, ...], user_ids: tuple[str, ...], dry_run: bool, yes: bool,
               allow_running: bool) -> None:
    """Delete Redis keys and tombstone/rewrite table entries and compacted records that mention the person.

    Stop the workers first: they re-read the rewritten changelogs when they start. Records on topics
    with time retention are reported with the time they expire (docs/compliance.md)."""
    from pagerstream import gdpr

    if not dry_run and not yes:
        raise click.UsageError("erasure changes Redis and Kafka: pass --yes (or --dry-run to preview)")
    try:
        result = gdpr.erase(_settings(), _gdpr_subject(emails, user_ids), allow_running=allow_running,
                            dry_run=dry_run)
    except gdpr.WorkersRunning as e:
        click.echo(f"pagerstream: {e}", err=True)
        sys.exit(3)
    click.echo(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
