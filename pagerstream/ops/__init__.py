"""Operations: deploy, health, perf and migrate (docs/operations.md).

Shared here: the result type every check returns and how a list of them is printed, and two small Kafka
helpers (read a topic up to the end offsets seen when reading started; topic sizes).

Exit codes of the ops commands (the same everywhere):
    0  everything is fine (warnings allowed)
    1  a check failed / a problem was found / an action failed
    2  the configuration itself is invalid (pagerstream.config refused it)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pagerstream.connections import KafkaTarget

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
MARKS = {OK: "✓", WARN: "!", FAIL: "✗", SKIP: "-"}

EXIT_OK, EXIT_PROBLEM, EXIT_CONFIG = 0, 1, 2


@dataclass
class Check:
    """One line of a report: what was checked, the verdict, the numbers behind it."""

    name: str
    status: str  # ok | warn | fail | skip
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def render_checks(checks: Iterable[Check], *, width: int = 28) -> str:
    lines = []
    for c in checks:
        lines.append(f"{MARKS.get(c.status, '?')} {c.name:<{width}} {c.detail}".rstrip())
    return "\n".join(lines)


def summary_line(checks: list[Check]) -> str:
    n = {s: sum(1 for c in checks if c.status == s) for s in (OK, WARN, FAIL, SKIP)}
    verdict = "FAILED" if n[FAIL] else "OK"
    return f"{verdict}: {n[OK]} ok, {n[WARN]} warnings, {n[FAIL]} failed, {n[SKIP]} skipped"


def checks_json(checks: list[Check], **extra: Any) -> str:
    return json.dumps({"ok": not any(c.failed for c in checks), **extra,
                       "checks": [asdict(c) for c in checks]}, default=str)


def exit_code(checks: list[Check]) -> int:
    return EXIT_PROBLEM if any(c.failed for c in checks) else EXIT_OK


# --- Kafka helpers -------------------------------------------------------------------------------------
async def read_to_end(bootstrap: KafkaTarget, topic: str, *, timeout_s: float = 60.0) -> list[Any]:
    """Every record of `topic` up to the end offsets seen when reading started, in partition/offset
    order. Deterministic (no idle timeout): stops when every partition reached its end offset."""
    import asyncio
    import time

    from aiokafka import TopicPartition

    from pagerstream.connections import kafka_consumer

    parts = (await partitions_of(bootstrap, [topic])).get(topic, [])
    c = kafka_consumer(bootstrap, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest",
                       max_partition_fetch_bytes=32 * 2**20, fetch_max_bytes=64 * 2**20)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return []
        c.assign(tps)
        ends = await c.end_offsets(tps)
        starts = await c.beginning_offsets(tps)
        todo = {tp for tp in tps if ends[tp] > starts[tp]}
        for tp in tps:
            c.seek(tp, starts[tp])
        out: dict[int, list[Any]] = {tp.partition: [] for tp in tps}
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: {len(todo)} partitions did not reach their end offset")
            batch = await c.getmany(*todo, timeout_ms=500)
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.offset < ends[tp]:
                        out[tp.partition].append(m)
            for tp in list(todo):
                if await c.position(tp) >= ends[tp]:
                    todo.discard(tp)
            await asyncio.sleep(0)
        return [m for p in sorted(out) for m in out[p]]
    finally:
        await c.stop()


async def partitions_of(bootstrap: KafkaTarget, topics: list[str]) -> dict[str, list[int]]:
    """Partition numbers of those `topics` that exist (admin metadata: a consumer's cached metadata may
    not know a topic created a moment ago)."""
    from pagerstream.connections import kafka_admin

    admin = kafka_admin(bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [t for t in topics if t in existing]
        if not present:
            return {}
        return {t["topic"]: sorted(p["partition"] for p in t["partitions"])
                for t in await admin.describe_topics(present) if t.get("error_code", 0) == 0}
    finally:
        await admin.close()


async def topic_sizes(bootstrap: KafkaTarget, topics: list[str]) -> dict[str, int]:
    """Records currently retained per topic (end minus beginning offsets, summed over partitions);
    topics that do not exist are left out."""
    from aiokafka import TopicPartition

    from pagerstream.connections import kafka_consumer

    parts = await partitions_of(bootstrap, topics)
    if not parts:
        return {}
    c = kafka_consumer(bootstrap, enable_auto_commit=False, group_id=None)
    await c.start()
    try:
        out: dict[str, int] = {}
        for t, ps in parts.items():
            tps = [TopicPartition(t, p) for p in ps]
            ends = await c.end_offsets(tps)
            starts = await c.beginning_offsets(tps)
            out[t] = sum(ends[tp] - starts[tp] for tp in tps)
        return out
    finally:
        await c.stop()


# --- click commands (registered in pagerstream/cli.py) ---------------------------------------------------
def _settings_or_exit() -> Any:
    from pagerstream.config import load_settings_or_exit

    return load_settings_or_exit()


def _kafka_failure(e: BaseException) -> None:
    import sys

    import click

    click.echo(f"✗ Kafka: {type(e).__name__}: {e}", err=True)
    sys.exit(EXIT_PROBLEM)


def commands() -> list[Any]:
    """The click commands of this package: deploy, health, perf, migrate."""
    import asyncio
    import os
    import sys

    import click

    @click.command("deploy")
    @click.option("--env", "environment", required=True, type=click.Choice(["production", "staging", "dev"]),
                  help="How strict the secret checks are: problems fail only a production deploy")
    @click.option("--dry-run", is_flag=True, help="Show what would change; change nothing")
    def deploy(environment: str, dry_run: bool) -> None:
        """Create/migrate topics and configs, register schemas, check secrets; print what to set next."""
        from pagerstream.ops.deploy import render_deploy, run_deploy

        s = _settings_or_exit()
        try:
            rep = asyncio.run(run_deploy(s, os.environ, environment, dry_run=dry_run))
        except Exception as e:  # noqa: BLE001 - Kafka unreachable or refused the admin calls
            _kafka_failure(e)
        click.echo(render_deploy(rep, s))
        sys.exit(rep.exit_code())

    @click.command("health")
    @click.option("--full-check", "full", is_flag=True,
                  help="Also check Kafka, topics, lag, Redis, PagerDuty, and the worker's metrics")
    @click.option("--url", default="http://127.0.0.1:6066", show_default=True, help="A worker's web address")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines")
    @click.option("--timeout", default=5.0, show_default=True, help="Seconds per network call")
    @click.option("--max-lag", default=10_000, show_default=True, help="Consumer lag above this fails")
    @click.option("--max-model-age-hours", default=168.0, show_default=True,
                  help="A model checkpoint older than this is a warning")
    @click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="CA file for an https worker URL")
    @click.option("--env", "environment", type=click.Choice(["production", "staging", "dev"]), default=None,
                  help="production: plaintext Kafka (PLAINTEXT, SASL_PLAINTEXT) or Redis (not rediss://) is a warning")
    def health(full: bool, url: str, as_json: bool, timeout: float, max_lag: int, max_model_age_hours: float,
               ca: str | None, environment: str | None) -> None:
        """Check a deployment; exit 1 when something is wrong."""
        from pagerstream.ops.health import HealthOptions, run_health

        s = _settings_or_exit()
        o = HealthOptions(url=url, full=full, timeout_s=timeout, max_lag=max_lag,
                          max_model_age_s=max_model_age_hours * 3600, verify=ca or True, environment=environment)
        checks = asyncio.run(run_health(s, o))
        if as_json:
            click.echo(checks_json(checks, url=url, full=full))
        else:
            click.echo(render_checks(checks))
            click.echo(summary_line(checks))
        sys.exit(exit_code(checks))

    @click.command("perf")
    @click.option("--url", default="http://127.0.0.1:6066", show_default=True, help="A worker's web address")
    @click.option("--interval", default=2.0, show_default=True, help="Seconds between scrapes (rates use it)")
    @click.option("--once", is_flag=True, help="Print one frame (two scrapes --interval apart) and exit")
    @click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="CA file for an https worker URL")
    def perf(url: str, interval: float, once: bool, ca: str | None) -> None:
        """Live view of a worker: ingest, lag, stage latencies, PagerDuty calls, breakers, models."""
        from pagerstream.ops.perf import run

        sys.exit(run(url, interval, once, verify=ca or True))

    @click.group("migrate", invoke_without_command=True)
    @click.option("--check", is_flag=True, help="Only report; exit 1 when a migration is pending")
    @click.pass_context
    def migrate(ctx: click.Context, check: bool) -> None:
        """Bring topics and schemas to this release (see also: migrate state)."""
        if ctx.invoked_subcommand is not None:
            return
        from pagerstream.ops import migrate as m

        s = _settings_or_exit()
        try:
            p = asyncio.run(m.plan(s))
            errors = [] if check else asyncio.run(m.apply(s, p))
        except Exception as e:  # noqa: BLE001
            _kafka_failure(e)
        click.echo(m.render_plan(p, check=check, errors=errors))
        if errors or p.problems or (check and p.pending):
            sys.exit(EXIT_PROBLEM)

    @migrate.command("state")
    @click.option("--from-app-id", required=True, help="The old PAGERSTREAM_APP_ID (its changelogs are read)")
    @click.option("--to-app-id", required=True, help="The new PAGERSTREAM_APP_ID (its changelogs are written)")
    @click.option("--table", "tables", multiple=True, help="Only these tables (default: every changelog found)")
    @click.option("--dry-run", is_flag=True, help="Read and count; write nothing")
    @click.option("--force", is_flag=True, help="Copy even into non-empty changelogs / over existing offsets")
    @click.option("--offsets/--no-offsets", default=True, show_default=True,
                  help="Also copy the old group's committed input offsets to the new group")
    def migrate_state(from_app_id: str, to_app_id: str, tables: tuple[str, ...], dry_run: bool, force: bool,
                      offsets: bool) -> None:
        """Copy Faust table state (latest value per key of each changelog) from one app id to another."""
        from pagerstream.ops import migrate as m

        s = _settings_or_exit()
        try:
            rep = asyncio.run(m.migrate_state(s, from_app_id, to_app_id, list(tables) or None, dry_run=dry_run,
                                              force=force, offsets=offsets))
        except m.StateMigrationError as e:
            click.echo(f"✗ {e}", err=True)
            sys.exit(EXIT_PROBLEM)
        except Exception as e:  # noqa: BLE001
            _kafka_failure(e)
        click.echo(m.render_state(rep))

    return [deploy, health, perf, migrate]
