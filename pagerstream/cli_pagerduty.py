"""`pagerstream pagerduty ...`: commands that talk to the PagerDuty REST API or its webhooks."""

from __future__ import annotations

import click


@click.group()
def pagerduty() -> None:
    """PagerDuty REST API: webhooks subscriptions, on-call, account as code."""


# --- REST API v2: webhook subscriptions and who is on call (pagerstream/pagerduty/rest.py) -----------------
# Settings come from the environment via RestSettings.from_env(): PAGERDUTY_API_KEY or PAGERDUTY_USER_TOKEN,
# PAGERDUTY_REGION (us|eu) or PAGERDUTY_API_URL (SSRF-guarded), PAGERDUTY_FROM_EMAIL.

# The incident events of the webhook-subscription example in PagerDuty's REST OpenAPI spec.
DEFAULT_WEBHOOK_EVENTS = (
    "incident.acknowledged", "incident.annotated", "incident.delegated", "incident.escalated",
    "incident.priority_updated", "incident.reassigned", "incident.reopened", "incident.resolved",
    "incident.responder.added", "incident.responder.replied", "incident.triggered", "incident.unacknowledged",
)


def _rest_call(fn):  # type: ignore[no-untyped-def]
    """Run `await fn(client)` with a REST client built from the environment; exit 2 on bad settings,
    1 on PagerDuty errors (whose messages never contain the token)."""
    import asyncio
    import sys

    from pagerstream.config import ConfigError
    from pagerstream.pagerduty.rest import PagerDutyError, PagerDutyREST, RestSettings

    try:
        settings = RestSettings.from_env()
    except ConfigError as e:
        click.echo("pagerstream: configuration error:", err=True)
        for var, why in e.problems:
            click.echo(f"  {var}: {why}", err=True)
        sys.exit(2)
    if not settings.has_credentials:
        click.echo("pagerstream: set PAGERDUTY_API_KEY (or PAGERDUTY_USER_TOKEN) to use the REST API", err=True)
        sys.exit(2)

    async def main():  # type: ignore[no-untyped-def]
        async with PagerDutyREST.from_settings(settings) as client:
            return await fn(client)

    try:
        return asyncio.run(main())
    except PagerDutyError as e:
        click.echo(f"pagerstream: {e}", err=True)
        sys.exit(1)


@pagerduty.group()
def webhooks() -> None:
    """V3 webhook subscriptions (create, list, delete)."""


@webhooks.command("create")
@click.option("--url", required=True, help="Where PagerDuty delivers the webhooks (http(s)://...)")
@click.option("--type", "filter_type", required=True, type=click.Choice(["account", "service", "team"]),
              help="Scope of the subscription")
@click.option("--filter-id", default=None, help="Service or team id (required for --type service|team)")
@click.option("--events", default=",".join(DEFAULT_WEBHOOK_EVENTS),
              help="Comma-separated event types [default: the 12 core incident.* events]")
@click.option("--description", default="pagerstream", show_default=True)
def webhooks_create(url: str, filter_type: str, filter_id: str | None, events: str, description: str) -> None:
    """Create a subscription; prints its id and, once, its signing secret."""
    import re
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise click.BadParameter("expected an http(s) URL with a host", param_hint="--url")
    if filter_type == "account" and filter_id:
        raise click.BadParameter("an account subscription takes no --filter-id", param_hint="--filter-id")
    if filter_type != "account" and not filter_id:
        raise click.BadParameter(f"--type {filter_type} needs --filter-id", param_hint="--filter-id")
    evs = [e.strip() for e in events.split(",") if e.strip()]
    bad = [e for e in evs if not re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", e)]
    if not evs or bad:
        raise click.BadParameter(f"expected event types like incident.triggered; bad: {', '.join(bad) or '(none)'}",
                                 param_hint="--events")

    async def create(client):  # type: ignore[no-untyped-def]
        return await client.create_webhook_subscription(url, filter_type=filter_type, filter_id=filter_id,
                                                        events=evs, description=description)

    created = _rest_call(create)
    scope = "account" if filter_type == "account" else f"{filter_type} {filter_id}"
    click.echo(f"Created webhook subscription {created.id} ({scope}, {len(evs)} event types) -> {url}")
    if created.secret:
        click.echo("Signing secret (shown only this once; store it now, e.g. in PAGERDUTY_WEBHOOK_SECRETS as "
                   f"name=secret):\n{created.secret.get()}")
    else:
        click.echo("PagerDuty returned no signing secret; delete and re-create the subscription to get one.",
                   err=True)


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the subscriptions as JSON")
def webhooks_list(as_json: bool) -> None:
    """List webhook subscriptions."""
    import json

    subs = _rest_call(lambda client: client.list_webhook_subscriptions())
    if as_json:
        click.echo(json.dumps(subs, indent=2))
        return
    if not subs:
        click.echo("No webhook subscriptions.")
        return
    click.echo(f"{'ID':<10} {'ACTIVE':<6} {'FILTER':<28} {'EVENTS':>6}  URL")
    for s in subs:
        flt = s.get("filter") or {}
        scope = str(flt.get("type", "")).replace("_reference", "") + (f" {flt['id']}" if flt.get("id") else "")
        click.echo(f"{s.get('id', ''):<10} {'yes' if s.get('active', True) else 'no':<6} {scope:<28} "
                   f"{len(s.get('events') or []):>6}  {(s.get('delivery_method') or {}).get('url', '')}")


@webhooks.command("delete")
@click.argument("subscription_id")
def webhooks_delete(subscription_id: str) -> None:
    """Delete a webhook subscription."""
    _rest_call(lambda client: client.delete_webhook_subscription(subscription_id))
    click.echo(f"Deleted webhook subscription {subscription_id}")


@pagerduty.command("oncalls")
@click.option("--escalation-policy", "policies", multiple=True, help="Only this escalation policy (repeatable)")
@click.option("--schedule", "schedules", multiple=True, help="Only this schedule (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="Print the on-call entries as JSON")
def oncalls(policies: tuple[str, ...], schedules: tuple[str, ...], as_json: bool) -> None:
    """Who is on call now, per escalation policy and level."""
    import json

    entries = _rest_call(lambda client: client.list_oncalls(escalation_policy_ids=list(policies) or None,
                                                            schedule_ids=list(schedules) or None))
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("Nobody is on call for that selection.")
        return

    def name(ref):  # type: ignore[no-untyped-def]
        return (ref or {}).get("summary") or (ref or {}).get("id") or "-"

    rows = sorted(entries, key=lambda e: (name(e.get("escalation_policy")), e.get("escalation_level") or 0))
    click.echo(f"{'ESCALATION POLICY':<32} {'LEVEL':>5}  {'ON CALL':<24} {'SCHEDULE':<28} UNTIL")
    for e in rows:
        click.echo(f"{name(e.get('escalation_policy'))[:32]:<32} {e.get('escalation_level') or '-':>5}  "
                   f"{name(e.get('user'))[:24]:<24} {name(e.get('schedule'))[:28]:<28} {e.get('end') or 'permanent'}")


# --- routing dry run (pagerstream/pagerduty/routing.py, oncall_store.py) ----------------------------------

@pagerduty.command("route")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Routing rules (YAML, see docs/routing.md)")
@click.option("--alert", "alert_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The incident to route: JSON/YAML with service, team, tier, severity, labels, scores...")
@click.option("--at", "at_text", default=None, help="ISO-8601 time with offset [default: now]")
@click.option("--oncall-from", "oncall_from", default=None,
              help="'rest' (PagerDuty REST API, settings from the environment) or a schedules-as-code YAML file")
@click.option("--secrets", "secrets_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Routing keys by name (YAML) [default: PAGERSTREAM_ROUTING_KEYS]")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON (routing key: last 4 only)")
def route_cmd(config_path: str, alert_path: str, at_text: str | None, oncall_from: str | None,
              secrets_path: str | None, as_json: bool) -> None:
    """Dry run: which routing key, escalation policy and person an incident would get, and why."""
    import asyncio
    import json
    import sys
    from datetime import UTC, datetime
    from pathlib import Path

    import yaml

    from pagerstream.pagerduty.oncall_store import OnCallStore, SchedulesAsCode, SchedulesError
    from pagerstream.pagerduty.routing import (
        IncidentContext,
        RoutingConfigError,
        load_routing_config,
        load_routing_secrets,
        routing_secrets_from_env,
    )

    def fail(title: str, problems: list[tuple[str, str]]) -> None:
        click.echo(f"pagerstream: {title}:", err=True)
        for where, what in problems:
            click.echo(f"  {where}: {what}", err=True)
        sys.exit(2)

    try:
        secrets = load_routing_secrets(secrets_path) if secrets_path else routing_secrets_from_env()
        config = load_routing_config(config_path).with_secrets(secrets, strict=False)
    except RoutingConfigError as e:
        fail(f"invalid routing config ({e.file})", e.problems)
    try:
        ctx = IncidentContext.from_dict(yaml.safe_load(Path(alert_path).read_text(encoding="utf-8")))
    except (ValueError, yaml.YAMLError) as e:
        fail("invalid --alert file", [(alert_path, str(e))])
    try:
        at = datetime.fromisoformat(at_text) if at_text else datetime.now(UTC)
        if at.tzinfo is None:
            raise ValueError
    except ValueError:
        raise click.BadParameter("expected an ISO-8601 time with a UTC offset, e.g. 2026-11-28T03:00:00+01:00",
                                 param_hint="--at") from None

    sel = config.select(ctx, at)
    ep = sel.target.escalation_policy

    async def view_with(store: OnCallStore):  # type: ignore[no-untyped-def]
        return await store.view([ep], at) if ep else None

    view = None
    if oncall_from == "rest":
        view = _rest_call(lambda client: view_with(OnCallStore(None, rest=client)))
    elif oncall_from:
        if not Path(oncall_from).is_file():
            raise click.BadParameter("expected 'rest' or a schedules-as-code YAML file", param_hint="--oncall-from")
        try:
            sched = SchedulesAsCode.load(oncall_from)
        except SchedulesError as e:
            fail(f"invalid schedules file ({oncall_from})", e.problems)
        view = asyncio.run(view_with(OnCallStore(None, schedules=sched)))
    decision = config.finish(ctx, at, sel, view)

    if as_json:
        click.echo(json.dumps({"at": at.isoformat(), **decision.to_dict()}, indent=2, ensure_ascii=False))
        return
    snap = view.policy(ep) if view is not None and ep else None
    ep_text = "(none: the service's own policy)" if not ep else \
        f"{ep} ({snap.policy_name})" if snap is not None and snap.policy_name else ep
    r = decision.responder
    if r is not None:
        load = "load unknown" if r.open_incidents is None else f"{r.open_incidents} open incident(s)"
        page = f"{r.label}, level {r.level}, {load}"
    elif view is None:
        page = "(on-call not consulted: use --oncall-from rest|schedules.yaml)"
    else:
        page = "nobody on call: PagerDuty escalates by its policy"
    click.echo(f"Routing decision at {at.isoformat()}: rule '{decision.rule}'")
    click.echo(f"  routing key:       {decision.routing_key_name} {decision.routing_key_hint}")
    click.echo(f"  escalation policy: {ep_text}")
    click.echo(f"  urgency:           {decision.urgency or '(service default)'}")
    click.echo(f"  would page:        {page}")
    click.echo("Why:")
    for i, line in enumerate(decision.reason, start=1):
        click.echo(f"  {i}. {line}")


# --- account as code (pagerstream/pagerduty/account*.py, docs/account-as-code.md) -------------------------

def _account_doc(path: str):  # type: ignore[no-untyped-def]
    """The canonical document of a YAML file; exit 2 when it cannot be read."""
    import sys

    from pagerstream.pagerduty.account import AccountError, load_file

    try:
        return load_file(path)
    except (OSError, AccountError) as e:
        click.echo(f"pagerstream: cannot read {path}: {e}", err=True)
        sys.exit(2)


def _account_start(start: str | None):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    if not start:
        return datetime.now(UTC).replace(second=0, microsecond=0)
    try:
        at = datetime.fromisoformat(start)
        if at.tzinfo is None:
            raise ValueError
        return at
    except ValueError:
        raise click.BadParameter("expected an ISO-8601 time with a UTC offset", param_hint="--start") from None


def _account_scope(doc, tenant_id: str | None):  # type: ignore[no-untyped-def]
    from pagerstream.pagerduty.account import AccountError
    from pagerstream.pagerduty.account_plan import resolve_scope

    try:
        return resolve_scope(doc, tenant_id)
    except (ValueError, AccountError) as e:
        raise click.BadParameter(str(e), param_hint="--tenant-id") from None


_DAYS = click.option("--days", default=14, show_default=True, type=click.IntRange(1, 366),
                     help="Check on-call coverage and show on-call changes over this many days")
_START = click.option("--start", default=None, help="Start of the on-call window (ISO-8601 with offset) [default: now]")
_TENANT = click.option("--tenant-id", default=None,
                       help="Manage only this tenant's resources: names '[T] name', see docs/account-as-code.md")


@pagerduty.command("import")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False, writable=True),
              help="Write the YAML here [default: stdout; the fidelity report then goes to stderr]")
@_TENANT
def account_import(output: str | None, tenant_id: str | None) -> None:
    """Read the account (users, teams, schedules, escalation policies, services, integrations, open
    maintenance windows) into an account-as-code YAML document, and report what it cannot hold."""
    from pagerstream.pagerduty.account import AccountError, Scope, dump_yaml, import_account

    try:
        scope = Scope(tenant_id)
    except AccountError as e:
        raise click.BadParameter(str(e), param_hint="--tenant-id") from None
    doc, fidelity = _rest_call(lambda client: import_account(client, scope))
    text = dump_yaml(doc)
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
        counts = ", ".join(f"{len(doc[k])} {k.replace('_', ' ')}" for k in
                           ("users", "teams", "schedules", "escalation_policies", "services", "maintenance_windows"))
        click.echo(f"Wrote {output}: {counts}")
        click.echo(fidelity.report())
    else:
        click.echo(text, nl=False)
        click.echo(fidelity.report(), err=True)


@pagerduty.command("export")
@click.option("-f", "--file", "path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Account document (YAML)")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False, writable=True),
              help="Write the canonical YAML here [default: stdout]")
def account_export(path: str, output: str | None) -> None:
    """Print a document in canonical form (what import writes); no PagerDuty call."""
    from pagerstream.pagerduty.account import dump_yaml

    text = dump_yaml(_account_doc(path))
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        click.echo(text, nl=False)


@pagerduty.command("validate")
@click.option("-f", "--file", "path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Account document (YAML)")
@_DAYS
@_START
def account_validate(path: str, days: int, start: str | None) -> None:
    """Check a document offline: services without escalation policy, escalation levels without targets,
    schedule coverage gaps in the next N days, bad references and values. Exit 1 on problems."""
    import sys

    from pagerstream.pagerduty.account_validate import validate

    doc = _account_doc(path)
    problems = validate(doc, now=_account_start(start), days=days)
    for p in problems:
        click.echo(str(p))
    if problems:
        click.echo(f"{len(problems)} problem(s); fix them before plan/apply.", err=True)
        sys.exit(1)
    click.echo(f"{path}: valid (on-call coverage checked for {days} days)")


def _account_plan(path: str, tenant_id: str | None, days: int, start: str | None, reset_rotations: bool,
                  then=None):  # type: ignore[no-untyped-def]
    import sys

    from pagerstream.pagerduty.account_plan import PlanRefused, plan_account

    doc = _account_doc(path)
    scope = _account_scope(doc, tenant_id)
    now = _account_start(start)

    async def run(client):  # type: ignore[no-untyped-def]
        try:
            plan = await plan_account(client, doc, scope=scope, now=now, days=days, reset_rotations=reset_rotations)
        except PlanRefused as e:
            return e
        click.echo(plan.render())
        return await then(client, plan) if then else plan

    out = _rest_call(run)
    if isinstance(out, PlanRefused):
        for p in out.problems:
            click.echo(str(p), err=True)
        click.echo(f"Refused: {len(out.problems)} problem(s) in {path}; nothing was changed.", err=True)
        sys.exit(1)
    return out


@pagerduty.command("plan")
@click.option("-f", "--file", "path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Desired account document (YAML)")
@_TENANT
@_DAYS
@_START
@click.option("--reset-rotations", is_flag=True, help="Preview with the document's rotation_virtual_start values")
def account_plan(path: str, tenant_id: str | None, days: int, start: str | None, reset_rotations: bool) -> None:
    """Show what apply would change: creates, field-level updates, deletes, and on-call changes of
    schedules over the next N days. Read-only."""
    _account_plan(path, tenant_id, days, start, reset_rotations)


@pagerduty.command("apply")
@click.option("-f", "--file", "path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Desired account document (YAML)")
@_TENANT
@_DAYS
@_START
@click.option("--yes", is_flag=True, help="Apply without asking")
@click.option("--reset-rotations", is_flag=True,
              help="Write the document's rotation_virtual_start for existing layers (default: keep the live one)")
def account_apply(path: str, tenant_id: str | None, days: int, start: str | None, yes: bool,
                  reset_rotations: bool) -> None:
    """Make the account match the document: creates and updates in dependency order, deletes in reverse."""
    from pagerstream.pagerduty.account_plan import apply_plan

    async def then(client, plan):  # type: ignore[no-untyped-def]
        if plan.empty:
            return None
        if not yes and not click.confirm("Apply these changes?", default=False):
            click.echo("Nothing changed.")
            return None
        result = await apply_plan(client, plan, echo=lambda line: click.echo(f"  {line}"))
        for s in result.skipped:
            click.echo(f"  skipped: {s}")
        click.echo(f"Applied: {len(result.writes)} write call(s).")
        return result

    _account_plan(path, tenant_id, days, start, reset_rotations, then)
