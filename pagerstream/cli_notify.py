"""`pagerstream notifications ...`: channel secrets, the destinations config, dead-letter replay.

Hooks for the integrator (module attributes, set before the command runs):

* ``dead_letter_source(settings) -> Iterable[str] | AsyncIterable[str]``: the dead-letter list (JSON
  lines, `DeadLetter.to_json`) when ``replay`` is given no ``--file`` (e.g. a Kafka topic reader);
* ``dead_letter_sink(notification, result)``: where dead letters of the replay itself go (default:
  ``--failed-out`` file, else only counted);
* ``context_factory(settings, redis) -> ChannelContext``: the channel context (templates, action links,
  SMTP); the default has the SSRF-guarded client, the secrets store and Redis refs, and no templates.

Channels are found through `pagerstream.notify.config.channel_for` (CHANNEL_MODULES).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from typing import Any

import click

from pagerstream.notify.base import Channel, ChannelContext

dead_letter_source: Callable[[Any], Iterable[str] | AsyncIterable[str]] | None = None
dead_letter_sink: Callable[[Any, Any], Awaitable[None] | None] | None = None
context_factory: Callable[[Any, Any], ChannelContext] | None = None


@click.group()
def notifications() -> None:
    """Notifications: channel secrets, destinations config, dead-letter replay."""


def _fail(msg: str, code: int = 2) -> None:
    click.echo(f"pagerstream: {msg}", err=True)
    sys.exit(code)


def _store() -> Any:
    from pagerstream.crypto import NoKey
    from pagerstream.notify.secrets import SecretStore

    try:
        return SecretStore.from_env()
    except NoKey as e:
        _fail(str(e))
    except ValueError:
        _fail("ENCRYPTION_KEY: expected Fernet keys (url-safe base64 of 32 bytes), newest first, comma-separated")


# --- secrets ---------------------------------------------------------------------------------------
@notifications.command("set-secret")
@click.argument("name")
@click.option("--from-file", "src", type=click.File("r"), default="-", show_default=True,
              help="JSON object with the credentials (default: read from stdin, never from the command line)")
def set_secret(name: str, src: Any) -> None:
    """Store (encrypted) the credentials of one destination, e.g. {"signing_secret": "..."}."""
    from pagerstream.notify.secrets import SecretError

    try:
        value = json.loads(src.read())
    except ValueError:
        _fail("expected a JSON object on the input")
    if not isinstance(value, dict):
        _fail("expected a JSON object on the input")
    try:
        _store().put(name, value)
    except SecretError as e:
        _fail(str(e))
    click.echo(f"stored secret {name!r} (fields: {', '.join(sorted(value))})")


@notifications.command("list-secrets")
def list_secrets() -> None:
    """Names of the stored secrets (never their values)."""
    for n in _store().names():
        click.echo(n)


@notifications.command("rotate-secrets")
def rotate_secrets() -> None:
    """Re-encrypt every secret under the newest key (the first of ENCRYPTION_KEY).

    Rotation: prepend a new key to ENCRYPTION_KEY (new,old), run this, then remove the old key."""
    from pagerstream.notify.secrets import SecretError

    store = _store()
    try:
        n = store.rotate()
    except SecretError as e:
        _fail(str(e), 1)
    click.echo(f"re-encrypted {n} secret(s) in {store.path} under the newest key; "
               "older keys can now be removed from ENCRYPTION_KEY")


# --- config ----------------------------------------------------------------------------------------
def _config(path: str | None, *, check_secrets: bool) -> Any:
    from pagerstream.notify.config import NotifyConfigError, load_notify_config
    from pagerstream.notify.secrets import SecretError

    names = None
    if check_secrets:
        try:
            names = _store().names()
        except SecretError as e:
            _fail(str(e))
    try:
        return load_notify_config(path, secret_names=names)
    except NotifyConfigError as e:
        click.echo(f"pagerstream: {e.source}: invalid notifications config:", err=True)
        for p in e.problems:
            click.echo(f"  {p}", err=True)
        sys.exit(2)


@notifications.command("check-config")
@click.option("--config", "path", type=click.Path(dir_okay=False), help="default: $PAGERSTREAM_NOTIFY_CONFIG")
@click.option("--check-secrets/--no-check-secrets", default=True, show_default=True,
              help="every secret_ref must exist in the secrets file")
def check_config(path: str | None, check_secrets: bool) -> None:
    """Validate the destinations and routing rules."""
    cfg = _config(path, check_secrets=check_secrets)
    for d in cfg.destinations.values():
        click.echo(f"destination {d.name:24} {d.channel:14} rate={d.rate_per_second:g}/s burst={d.burst}"
                   f"{' secret=' + d.secret_ref if d.secret_ref else ''}")
    for r in cfg.rules:
        m = " ".join(f"{k}={'|'.join(v)}" for k, v in r.match.items()) or "(everything)"
        click.echo(f"rule {r.name:24} {m} -> {', '.join(r.to)}{' (stop)' if r.stop else ''}")
    if cfg.default:
        click.echo(f"default -> {', '.join(cfg.default)}")


# --- dead letters ----------------------------------------------------------------------------------
def load_channels(kinds: Iterable[str]) -> dict[str, Channel]:
    """A Channel object for each kind whose module is there (pagerstream.notify.config.channel_for)."""
    from pagerstream.notify.config import channel_for

    out: dict[str, Channel] = {}
    for k in set(kinds):
        ch = channel_for(k)
        if ch is not None:
            out[k] = ch
    return out


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _file_lines(path: str) -> Iterable[str]:
    if path == "-":
        yield from sys.stdin
        return
    with open(path, encoding="utf-8") as f:
        yield from f


async def run_replay(source: Iterable[str] | AsyncIterable[str], *, destinations: Mapping[str, Any],
                     channels: Mapping[str, Channel], delivery: Any, destination: str | None, since: str | None,
                     dry_run: bool, now: float | None = None) -> Any:
    """The command's core (testable without click): filter, rebuild, deliver; returns a ReplayReport."""
    from pagerstream.notify.delivery import parse_since, replay

    if destination is not None and destination not in destinations:
        raise click.UsageError(f"--destination {destination!r} is not in the notifications config")
    return await replay(source, delivery=delivery, channels=channels, destinations=destinations,
                        destination=destination, since_ms=parse_since(since, now=now), dry_run=dry_run)


def _print_report(rep: Any, dry_run: bool) -> None:
    click.echo(f"read {rep.read} dead letter(s), {rep.matched} selected")
    for key, why in rep.skipped:
        click.echo(f"  skipped {key}: {why}")
    if dry_run:
        for k in rep.would_send:
            click.echo(f"  would send {k}")
    for kind, n in sorted(rep.outcomes.items()):
        click.echo(f"  {kind}: {n}")


@notifications.command("replay")
@click.option("--from-dead-letter", "from_dead_letter", is_flag=True, required=True,
              help="replay the dead-letter list (the only source for now)")
@click.option("--destination", help="only this destination")
@click.option("--since", help="only dead letters from then on: 90m, 2h, 7d, ISO 8601 or epoch ms")
@click.option("--file", "file_", type=click.Path(dir_okay=False, allow_dash=True),
              help="dead letters as JSON lines ('-': stdin); default: the configured dead-letter source")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="default: $PAGERSTREAM_NOTIFY_CONFIG")
@click.option("--failed-out", type=click.Path(dir_okay=False), help="append what fails again here (JSON lines)")
@click.option("--dry-run", is_flag=True, help="show what would be sent")
def replay_cmd(from_dead_letter: bool, destination: str | None, since: str | None, file_: str | None,
               config_path: str | None, failed_out: str | None, dry_run: bool) -> None:
    """Send dead-lettered notifications again, to the destinations' current configuration."""
    from pagerstream.cli import _settings

    s = _settings()
    cfg = _config(config_path, check_secrets=False)
    if file_ is not None:
        source: Iterable[str] | AsyncIterable[str] = _file_lines(file_)
    elif dead_letter_source is not None:
        source = dead_letter_source(s)
    else:
        raise click.UsageError("no dead-letter source: give --file")
    channels = load_channels(d.channel for d in cfg.destinations.values())
    try:
        rep = asyncio.run(_replay_live(s, cfg, channels, source, destination, since, dry_run, failed_out))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    _print_report(rep, dry_run)
    if rep.outcomes.get("dead_letter") or rep.outcomes.get("deferred"):
        sys.exit(1)


async def _replay_live(s: Any, cfg: Any, channels: Mapping[str, Channel], source: Any, destination: str | None,
                       since: str | None, dry_run: bool, failed_out: str | None) -> Any:
    if dry_run:
        return await run_replay(source, destinations=cfg.destinations, channels=channels, delivery=None,
                                destination=destination, since=since, dry_run=True)
    from prometheus_client import CollectorRegistry

    from pagerstream.connections import redis_client
    from pagerstream.notify.delivery import DeadLetter, Delivery, RedisRefStore
    from pagerstream.notify.outbound import outbound_client

    r = redis_client(s, socket_timeout=5, socket_connect_timeout=5)
    if context_factory is not None:
        ctx = context_factory(s, r)
    else:
        def no_templates(name: str, n: Any) -> str:
            raise RuntimeError("templates are not wired into this command")

        ctx = ChannelContext(http=outbound_client(), secret=_store(), render=no_templates,
                             refs=RedisRefStore(r, namespace=s.topic_prefix))

    async def sink(n: Any, result: Any) -> None:
        if dead_letter_sink is not None:
            res = dead_letter_sink(n, result)
            if res is not None:
                await res
        elif failed_out:
            await asyncio.to_thread(_append, failed_out, DeadLetter.of(n, result).to_json())

    d = Delivery(r, ctx, registry=CollectorRegistry(), namespace=s.topic_prefix, on_dead_letter=sink)
    try:
        return await run_replay(source, destinations=cfg.destinations, channels=channels, delivery=d,
                                destination=destination, since=since, dry_run=False)
    finally:
        await d.close()
        await ctx.http.aclose()
        await r.aclose()
