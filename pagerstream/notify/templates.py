"""Sandboxed Jinja2 rendering of notifications, one default template set per channel.

Every channel renders its message text through `render(template_name, notification)` (it is what
`ChannelContext.render` points at). The defaults live in pagerstream/notify/templates/; a destination
can replace any of them:

    config:
      template: {path: /etc/pagerstream/slack-payments.json.j2}   # replaces the channel's main template
      templates:                                                   # or any template by name
        slack_thread.txt.j2: {inline: "{{ change_text }}: {{ reason }}"}

A plain string works too: it is inline source when it contains ``{{`` or ``{%``, a file path otherwise
(relative paths are taken from PAGERSTREAM_TEMPLATES_DIR, else the working directory).

Safety:
* `ImmutableSandboxedEnvironment`: no attribute starting with "_", no method that mutates a list or
  dict, no `range()` over 100,000; an unsafe access raises at once (it does not quietly print "").
* `*` and `**` on big operands are refused, and a template's output is cut off at MAX_OUTPUT_CHARS,
  so a template cannot exhaust memory. (CPU is not bounded: templates are operator configuration.)
* HTML outputs (*.html, *.html.j2, *.htm, *.xml) are autoescaped. JSON outputs (*.json, *.json.j2)
  are not escaped but must parse as JSON after rendering; templates write values with `| json`.
* Every failure is a `TemplateRenderError` whose message names the template, never a value.

Functions: `render`, `template_context`, `preview`, and `preview_command` (click) for
`pagerstream notifications preview --channel slack --incident-file rec.json`.
"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

from jinja2 import FileSystemLoader, TemplateError, Undefined
from jinja2.exceptions import SecurityError, TemplateNotFound
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pagerstream.notify.base import Destination, Notification

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATES_DIR_ENV = "PAGERSTREAM_TEMPLATES_DIR"
MAX_OUTPUT_CHARS = 512_000
MAX_TEMPLATE_CHARS = 200_000

# The template a destination's `config.template` replaces, per channel kind.
PRIMARY_TEMPLATE: dict[str, str] = {
    "slack_webhook": "slack.json.j2",
    "slack_api": "slack.json.j2",
    "teams": "teams.json.j2",
    "email": "email.html.j2",
    "webhook": "webhook.json.j2",
    "jira": "jira.txt.j2",
}
# `--channel` values of the preview command -> template names (the first is the main one).
CHANNEL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "slack": ("slack.json.j2", "slack_thread.txt.j2"),
    "slack_webhook": ("slack.json.j2",),
    "slack_api": ("slack.json.j2", "slack_thread.txt.j2"),
    "teams": ("teams.json.j2",),
    "email": ("email_subject.txt.j2", "email.txt.j2", "email.html.j2"),
    "webhook": ("webhook.json.j2",),
    "jira": ("jira_summary.txt.j2", "jira.txt.j2"),
}

OPEN_STATES = ("triggered", "acknowledged")
CLOSED_CHANGES = ("resolved", "auto_resolved", "dropped")
HIGH_URGENCY_SEVERITIES = ("critical", "error")

CHANGE_TEXT = {
    "opened": "Opened",
    "alert_added": "Another alert joined",
    "duplicate": "Duplicate alert",
    "acknowledged": "Acknowledged",
    "alert_resolved": "An alert cleared",
    "resolved": "Resolved",
    "auto_resolved": "Auto-resolved",
    "dropped": "Dropped",
}
DETAIL_TEXT = {
    "paused": "Held back: likely transient",
    "paged_after_pause": "Paged after the pause (still open)",
    "resolved_while_paused": "Cleared during the pause (PagerDuty never paged)",
    "predicted": "Predicted",
}


class TemplateRenderError(Exception):
    """A template could not be found, loaded, rendered, or produced unusable output."""


# ------------------------------------------------------------------------------------------------
# filters and globals
# ------------------------------------------------------------------------------------------------

def _json_filter(value: Any, indent: int | None = None) -> str:
    """A JSON literal for any value: `"text": {{ summary | json }}` is safe whatever summary holds."""
    if isinstance(value, Undefined):
        value = None
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


_MRKDWN = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def _mrkdwn(value: Any) -> str:
    """Slack mrkdwn escaping: the three control characters &, <, > become entities."""
    return "" if value is None or isinstance(value, Undefined) else str(value).translate(_MRKDWN)


def _clip(value: Any, length: int = 255, end: str = "…") -> str:
    """At most `length` characters, marking a cut with `end`."""
    s = "" if value is None or isinstance(value, Undefined) else str(value)
    if len(s) <= length:
        return s
    return s[: max(0, length - len(end))] + end


def _pct(value: Any, digits: int = 0) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    if math.isnan(v):
        return ""
    return f"{v * 100:.{digits}f}%"


def _ms_to_dt(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value) / 1000.0, tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _datetime(value: Any, fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    """Epoch milliseconds -> UTC text."""
    dt = _ms_to_dt(value)
    return dt.strftime(fmt) if dt else ""


def _isotime(value: Any) -> str:
    dt = _ms_to_dt(value)
    return dt.isoformat().replace("+00:00", "Z") if dt else ""


def _duration(ms: Any) -> str:
    try:
        s = int(int(ms) / 1000)
    except (TypeError, ValueError):
        return ""
    if s < 0:
        return ""
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    parts = [f"{d}d"] if d else []
    if h:
        parts.append(f"{h}h")
    if m:
        parts.append(f"{m}m")
    if sec or not parts:
        parts.append(f"{sec}s")
    return " ".join(parts[:2])


_SAFE_SCHEMES = ("https://", "http://")


def _safe_url(value: Any) -> str:
    """The URL when it is http(s) without whitespace or control characters, else "" (no javascript:)."""
    s = "" if value is None or isinstance(value, Undefined) else str(value).strip()
    if not s.lower().startswith(_SAFE_SCHEMES) or any(c.isspace() or ord(c) < 32 for c in s):
        return ""
    return s


def _slack_link(url: Any, text: Any = None) -> str:
    """A Slack mrkdwn link `<url|text>`; plain (escaped) text when the URL is not http(s)."""
    u = _safe_url(url)
    label = _mrkdwn(text if text not in (None, "") else url).replace("|", "¦")
    if not u:
        return label
    return f"<{u.replace('|', '%7C').replace('>', '%3E')}|{label}>"


def _md_escape(value: Any) -> str:
    """Escape the characters Teams/Markdown TextBlocks would read as formatting."""
    s = "" if value is None or isinstance(value, Undefined) else str(value)
    return re.sub(r"([\\*_`\[\]])", r"\\\1", s)


FILTERS: dict[str, Callable[..., Any]] = {
    "json": _json_filter,
    "mrkdwn": _mrkdwn,
    "clip": _clip,
    "pct": _pct,
    "datetime": _datetime,
    "isotime": _isotime,
    "duration": _duration,
    "safe_url": _safe_url,
    "md_escape": _md_escape,
}
GLOBALS: dict[str, Any] = {"slack_link": _slack_link}


# ------------------------------------------------------------------------------------------------
# the sandbox
# ------------------------------------------------------------------------------------------------

class _Sandbox(ImmutableSandboxedEnvironment):
    """Immutable sandbox that raises on unsafe access and refuses huge `*` / `**` results."""

    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj: Any, attribute: Any) -> Undefined:  # type: ignore[override]
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT_CHARS:
                    raise SecurityError("the result of '*' would be too large")
        elif operator == "**":
            if isinstance(right, (int, float)) and isinstance(left, (int, float)) \
                    and abs(right) > 100 and abs(left) > 1:
                raise SecurityError("the result of '**' would be too large")
        return super().call_binop(context, operator, left, right)


def _autoescape_for(name: str | None) -> bool:
    n = (name or "").lower()
    return n.endswith((".html", ".htm", ".xml", ".html.j2", ".htm.j2", ".xml.j2"))


def is_json_template(name: str | None) -> bool:
    return (name or "").lower().endswith((".json", ".json.j2"))


def _make_env(autoescape: bool) -> _Sandbox:
    env = _Sandbox(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=autoescape,
                   undefined=Undefined, keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True,
                   auto_reload=False)
    env.filters.update(FILTERS)
    env.globals.update(GLOBALS)
    return env


_ENVS = {True: _make_env(True), False: _make_env(False)}


@lru_cache(maxsize=256)
def _compile_inline(source: str, autoescape: bool) -> Any:
    return _ENVS[autoescape].from_string(source)


@lru_cache(maxsize=256)
def _compile_file(path: str, mtime: float, autoescape: bool) -> Any:
    return _ENVS[autoescape].from_string(Path(path).read_text(encoding="utf-8"))


def _resolve_path(raw: str) -> Path:
    p = Path(raw).expanduser()
    if not p.is_absolute():
        p = Path(os.environ.get(TEMPLATES_DIR_ENV) or os.getcwd()) / p
    return p


def _override_spec(destination: Destination | None, name: str) -> Any:
    if destination is None:
        return None
    cfg = destination.config or {}
    named = cfg.get("templates")
    if isinstance(named, Mapping) and named.get(name) is not None:
        return named[name]
    if cfg.get("template") is not None and PRIMARY_TEMPLATE.get(destination.channel) == name:
        return cfg["template"]
    return None


def _load(name: str, spec: Any = None) -> Any:
    """The compiled template for `name`, replaced by `spec` ({path}|{inline}|str) when given."""
    escape = _autoescape_for(name)
    try:
        if spec is None:
            return _ENVS[escape].get_template(name)
        if isinstance(spec, str):
            spec = {"inline": spec} if ("{{" in spec or "{%" in spec) else {"path": spec}
        if not isinstance(spec, Mapping) or len({"inline", "path"} & set(spec)) != 1:
            raise TemplateRenderError(f"template override for {name}: give exactly one of 'path' or 'inline'")
        if "inline" in spec:
            source = str(spec["inline"])
            if len(source) > MAX_TEMPLATE_CHARS:
                raise TemplateRenderError(f"inline template for {name} is too long")
            return _compile_inline(source, escape)
        p = _resolve_path(str(spec["path"]))
        if not p.is_file():
            raise TemplateRenderError(f"template file for {name} not found: {p}")
        if p.stat().st_size > MAX_TEMPLATE_CHARS:
            raise TemplateRenderError(f"template file for {name} is too long: {p}")
        return _compile_file(str(p), p.stat().st_mtime, escape)
    except TemplateNotFound:
        raise TemplateRenderError(f"no template named {name!r}") from None
    except TemplateError as e:
        raise TemplateRenderError(f"template {name} does not compile: {type(e).__name__}: {e}") from None
    except OSError as e:
        raise TemplateRenderError(f"template {name} cannot be read: {type(e).__name__}") from None


def validate_template_config(config: Mapping[str, Any]) -> list[str]:
    """Problems with a destination's `template` / `templates` settings (for config validation)."""
    problems: list[str] = []

    def check(where: str, spec: Any) -> None:
        if isinstance(spec, str):
            if not spec.strip():
                problems.append(f"{where}: empty")
            return
        if not isinstance(spec, Mapping) or len({"inline", "path"} & set(spec)) != 1 or set(spec) - {"inline", "path"}:
            problems.append(f"{where}: expected a string, {{path: ...}} or {{inline: ...}}")
        elif not isinstance(next(iter(spec.values())), str):
            problems.append(f"{where}: must be a string")

    if config.get("template") is not None:
        check("template", config["template"])
    named = config.get("templates")
    if named is not None:
        if not isinstance(named, Mapping):
            problems.append("templates: expected a mapping of template name -> template")
        else:
            for name, spec in named.items():
                check(f"templates.{name}", spec)
    links = config.get("links")
    if links is not None and (not isinstance(links, list)
                              or not all(isinstance(x, Mapping) and isinstance(x.get("url"), str) for x in links)):
        problems.append("links: expected a list of {title, url}")
    return problems


# ------------------------------------------------------------------------------------------------
# what templates see
# ------------------------------------------------------------------------------------------------

def is_open(incident: Mapping[str, Any]) -> bool:
    """Open = PagerDuty-actionable: triggered or acknowledged, and not dropped."""
    return incident.get("state") in OPEN_STATES and incident.get("change") not in CLOSED_CHANGES


def urgency_of(incident: Mapping[str, Any]) -> str:
    """The record's urgency when it carries one, else PagerDuty's severity-based rule
    (critical/error -> high, warning/info -> low), as routing's `urgency: auto` does."""
    u = incident.get("urgency")
    if u in ("high", "low"):
        return str(u)
    return "high" if str(incident.get("severity") or "").lower() in HIGH_URGENCY_SEVERITIES else "low"


def _links(incident: Mapping[str, Any], destination: Destination | None) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    if _safe_url(incident.get("runbook_url")):
        out.append({"title": "Runbook", "url": _safe_url(incident["runbook_url"])})
    configured = (destination.config or {}).get("links") if destination else None
    if isinstance(configured, list):
        fields = {k: str(incident.get(k) or "") for k in ("incident_id", "pd_dedup_key", "service", "team")}
        for item in configured:
            if not isinstance(item, Mapping) or not item.get("url"):
                continue
            try:
                url = str(item["url"]).format(**fields)
            except (KeyError, IndexError, ValueError):
                continue
            if _safe_url(url):
                out.append({"title": str(item.get("title") or "Link"), "url": url})
    return out


def template_context(n: Notification, **extra: Any) -> dict[str, Any]:
    """The variables every template sees (see docs/notifications.md, "Templates")."""
    inc = dict(n.incident)
    scores = []
    for s in inc.get("scores") or []:
        s = dict(s)
        s.setdefault("label", None)
        s.setdefault("best", None)
        s.setdefault("abstained", False)
        s.setdefault("explanation", "")
        s["shown_label"] = s["label"] if s.get("label") else (f"{s['best']}?" if s.get("best") else "—")
        scores.append(s)
    similar = [dict(x) for x in inc.get("similar") or []]
    change = inc.get("change") or ""
    ctx: dict[str, Any] = {
        "incident": inc,
        "incident_id": inc.get("incident_id"),
        "version": inc.get("version"),
        "change": change,
        "change_detail": inc.get("change_detail"),
        "change_text": DETAIL_TEXT.get(inc.get("change_detail") or "") or CHANGE_TEXT.get(change, change),
        "reason": inc.get("reason") or "",
        "state": inc.get("state"),
        "is_open": is_open(inc),
        "summary": inc.get("summary") or "",
        "severity": inc.get("severity") or "",
        "urgency": urgency_of(inc),
        "service": inc.get("service"),
        "team": inc.get("team"),
        "tier": inc.get("tier"),
        "runbook_url": _safe_url(inc.get("runbook_url")) or None,
        "pd_dedup_key": inc.get("pd_dedup_key"),
        "open_alerts": inc.get("open_alerts"),
        "total_alerts": inc.get("total_alerts"),
        "duplicates": inc.get("duplicates"),
        "opened_at": inc.get("opened_at"),
        "acknowledged_at": inc.get("acknowledged_at"),
        "resolved_at": inc.get("resolved_at"),
        "at": inc.get("at"),
        "scores": scores,
        "similar": similar,
        "recurrence": inc.get("recurrence"),
        "pause": dict(inc["pause"]) if inc.get("pause") else None,
        "bundled": [dict(b) for b in n.bundled],
        "bundled_count": len(n.bundled),
        "links": _links(inc, n.destination),
        "destination": {"name": n.destination.name, "channel": n.destination.channel},
    }
    ctx.update(extra)
    return ctx


# ------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------

def _run(template: Any, name: str, ctx: Mapping[str, Any]) -> str:
    parts: list[str] = []
    size = 0
    try:
        for chunk in template.generate(ctx):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise TemplateRenderError(f"template {name} produced more than {MAX_OUTPUT_CHARS} characters")
            parts.append(chunk)
    except TemplateRenderError:
        raise
    except SecurityError as e:
        raise TemplateRenderError(f"template {name} was stopped by the sandbox: {e}") from None
    except TemplateError as e:
        raise TemplateRenderError(f"template {name} failed: {type(e).__name__}: {e}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError, RecursionError) as e:
        raise TemplateRenderError(f"template {name} failed: {type(e).__name__}") from None
    out = "".join(parts)
    if is_json_template(name):
        try:
            json.loads(out)
        except ValueError as e:
            raise TemplateRenderError(f"template {name} did not produce valid JSON ({e.msg} at line "
                                      f"{getattr(e, 'lineno', '?')} column {getattr(e, 'colno', '?')})") from None
    return out


def render(name: str, notification: Notification, **extra: Any) -> str:
    """Render template `name` for this notification (the destination's override when it has one).
    Matches `ChannelContext.render`; `extra` adds variables (e.g. action links)."""
    template = _load(name, _override_spec(notification.destination, name))
    return _run(template, name, template_context(notification, **extra))


def render_json(name: str, notification: Notification, **extra: Any) -> Any:
    return json.loads(render(name, notification, **extra))


def default_template_names() -> list[str]:
    return sorted(p.name for p in TEMPLATE_DIR.iterdir() if p.is_file() and not p.name.startswith("."))


# ------------------------------------------------------------------------------------------------
# preview (CLI)
# ------------------------------------------------------------------------------------------------

def _schema_fields() -> list[dict[str, Any]]:
    path = Path(__file__).resolve().parents[2] / "schemas" / "incident_event.avsc"
    if not path.is_file():  # installed layout: the schemas package
        import pagerstream.schemas as pkg

        path = Path(pkg.__file__).resolve().parent / "incident_event.avsc"
    return json.loads(path.read_text(encoding="utf-8"))["fields"]


def complete_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record with the schema's defaults filled in; ValueError naming required fields missing."""
    if not isinstance(record, Mapping):
        raise ValueError("an incident record must be a JSON object")
    out = dict(record)
    missing = []
    for f in _schema_fields():
        if f["name"] in out:
            continue
        if "default" in f:
            out[f["name"]] = f["default"]
        else:
            missing.append(f["name"])
    if missing:
        raise ValueError("the incident record lacks required fields: " + ", ".join(missing))
    return out


def _preview_destination(channel: str, template: str | None) -> Destination:
    kind = {"slack": "slack_api"}.get(channel, channel)
    cfg: dict[str, Any] = {}
    if template:
        cfg["template"] = template
    return Destination(name="preview", channel=kind, config=cfg)


def preview(template: str, incident_record: Mapping[str, Any], *,
            destination: Destination | None = None, **extra: Any) -> str:
    """Render one template against an incident record, for a human to look at.

    `template` is a default template's name ("slack.json.j2"), a channel ("slack" -> its main
    template), a file path, or inline source (contains "{{" or "{%"). JSON output is pretty-printed.
    """
    record = complete_record(incident_record)
    name, spec = template, None
    if template in CHANNEL_TEMPLATES:
        name = CHANNEL_TEMPLATES[template][0]
    elif (TEMPLATE_DIR / template).is_file() and "/" not in template:
        name = template
    elif "{{" in template or "{%" in template:
        name, spec = "inline.txt", {"inline": template}
    else:
        name, spec = Path(template).name, {"path": template}
    dest = destination or Destination(name="preview", channel="preview")
    n = Notification(key=f"{record['incident_id']}#{record['version']}@{dest.name}", incident=record,
                     destination=dest)
    if spec is None:
        spec = _override_spec(dest, name)
    out = _run(_load(name, spec), name, template_context(n, **extra))
    if is_json_template(name):
        return json.dumps(json.loads(out), indent=2, ensure_ascii=False)
    return out


def _channel_payload(channel: str, n: Notification) -> Any | None:
    """What the channel would send, when the channel builds more than the template (buttons, cards)."""
    if channel in ("slack", "slack_api", "slack_webhook"):
        from pagerstream.notify import slack

        buttons = channel != "slack_webhook" or bool(n.destination.config.get("buttons"))
        return slack.build_message(n, render, buttons=buttons)
    if channel == "teams":
        from pagerstream.notify import teams

        return teams.build_payload(n, render, lambda iid, action: f"https://pagerstream.invalid/a/{iid}/{action}")
    return None


def _preview_cli(channel: str, incident_file: str, template: str | None, raw: bool) -> str:
    import click

    try:
        text = click.open_file(incident_file, "r", encoding="utf-8").read()
        record = complete_record(json.loads(text))
    except (OSError, ValueError) as e:
        raise click.ClickException(f"{incident_file}: {e}") from None
    dest = _preview_destination(channel, template)
    n = Notification(key=f"{record['incident_id']}#{record['version']}@preview", incident=record, destination=dest)
    out: list[str] = []
    try:
        payload = None if raw else _channel_payload(channel, n)
        if payload is not None:
            out.append(json.dumps(payload, indent=2, ensure_ascii=False))
            names = [x for x in CHANNEL_TEMPLATES.get(channel, ())[1:]]
        else:
            names = list(CHANNEL_TEMPLATES.get(channel, ()))
        for name in names:
            body = render(name, n)
            if is_json_template(name):
                body = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
            out.append(f"--- {name} ---\n{body}" if len(names) > 1 or payload is not None else body)
    except TemplateRenderError as e:
        raise click.ClickException(str(e)) from None
    return "\n".join(out)


def _make_preview_command() -> Any:
    import click

    @click.command("preview")
    @click.option("--channel", required=True, type=click.Choice(sorted(CHANNEL_TEMPLATES)),
                  help="Channel whose message to show (slack = the Web API channel).")
    @click.option("--incident-file", required=True, type=click.Path(dir_okay=False, allow_dash=True),
                  help="An IncidentEvent record as JSON ('-' for stdin).")
    @click.option("--template", "template", default=None,
                  help="Replace the channel's main template: a file path or inline Jinja2 source.")
    @click.option("--raw", is_flag=True, help="Only the rendered templates, not the channel's full payload.")
    def preview_cmd(channel: str, incident_file: str, template: str | None, raw: bool) -> None:
        """Render a channel's notification for an incident record, as the channel would send it."""
        click.echo(_preview_cli(channel, incident_file, template, raw))

    return preview_cmd


preview_command = _make_preview_command()

__all__ = [
    "CHANNEL_TEMPLATES", "PRIMARY_TEMPLATE", "TEMPLATE_DIR", "TemplateRenderError", "complete_record",
    "default_template_names", "is_json_template", "is_open", "preview", "preview_command", "render",
    "render_json", "template_context", "urgency_of", "validate_template_config",
]

