"""Channel `email`: one message per incident change over SMTP, threaded per incident.

Destination config (non-secret):
  to            address or list of addresses (required)
  from          sender address (required)
  host, port    SMTP server (port 587 by default; 465 with security "tls")
  security      "starttls" (default: STARTTLS is required, a server that does not offer it is a
                permanent failure), "tls" (implicit TLS, SMTPS) or "none" (plain text; only when the
                destination says so explicitly)
  verify_tls    default true; ca_file: extra CA bundle for a private relay
  subject_prefix  default "[pagerstream]"
  message_id_domain  right-hand side of Message-IDs (default: the sender's domain)
  timeout_s     default 10 (below the delivery stage's per-call timeout)
Secret (destination.secret_ref): {"username": ..., "password": ...}; AUTH is used when present and
refused unless the connection is encrypted (security "none" excepted).

`ctx.smtp` may be None, a dict or an `SmtpSettings`: process-wide defaults (relay host, an
ssl.SSLContext, local_hostname) that the destination's config overrides.

Message: multipart/alternative with the text part (template "email.txt.j2") then the HTML part
("email.html.j2"); subject from "email_subject.txt.j2" (optional `subject_prefix` in front). While the
incident is open, signed Acknowledge (triggered only) / Resolve links from `ctx.action_link` are
passed to the templates as `action_links` ([{title, url}]) when the renderer takes extra variables,
and appended to any part that does not show them. `Message-ID` is derived from the notification key
(a replay produces the same Message-ID); `In-Reply-To`/`References` point at the incident's first
message, kept in `ctx.refs` as {"message_id", "subject"}. With `subject_mode: thread` (default) later
messages reuse the first subject with "Re: ", so clients that thread by subject (Gmail) keep one
thread per incident; `subject_mode: per_change` renders the subject for every message.

SMTP answers: 4xx -> transient, 5xx -> permanent, connection errors and timeouts -> transient,
TLS certificate failures / missing STARTTLS / missing AUTH support -> permanent (configuration).
smtplib runs in a worker thread; nothing here logs credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html as _html
import inspect
import json
import logging
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from pagerstream.notify.base import ChannelContext, DeliveryResult, Notification

log = logging.getLogger("pagerstream.notify.email")

kind = "email"

CLOSED_CHANGES = {"resolved", "auto_resolved", "dropped"}
TEXT_TEMPLATE, HTML_TEMPLATE, SUBJECT_TEMPLATE = "email.txt.j2", "email.html.j2", "email_subject.txt.j2"


@dataclass(frozen=True)
class SmtpSettings:
    host: str | None = None
    port: int | None = None
    security: str = "starttls"  # starttls | tls | none
    ssl_context: ssl.SSLContext | None = None
    verify_tls: bool = True
    ca_file: str | None = None
    timeout_s: float = 10.0
    local_hostname: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class EmailConfigError(ValueError):
    pass


def _settings(dest_cfg: dict[str, Any], base: Any) -> SmtpSettings:
    if isinstance(base, SmtpSettings):
        s = base
    elif isinstance(base, dict):
        s = SmtpSettings(**{k: v for k, v in base.items() if k in SmtpSettings.__dataclass_fields__})
    else:
        s = SmtpSettings()
    over = {
        k: dest_cfg[k]
        for k in ("host", "port", "security", "verify_tls", "ca_file", "timeout_s", "local_hostname")
        if k in dest_cfg
    }
    if dest_cfg.get("starttls") is False and "security" not in dest_cfg:
        over["security"] = "none"
    s = replace(s, **over)
    if s.security not in ("starttls", "tls", "none"):
        raise EmailConfigError("security must be starttls, tls or none")
    if not s.host:
        raise EmailConfigError("no SMTP host (destination config 'host' or ctx.smtp)")
    if s.port is None:
        s = replace(s, port=465 if s.security == "tls" else 587)
    return s


def _ssl_context(s: SmtpSettings) -> ssl.SSLContext:
    if s.ssl_context is not None:
        return s.ssl_context
    ctx = ssl.create_default_context(cafile=s.ca_file)
    if not s.verify_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _addresses(v: Any) -> list[str]:
    if isinstance(v, str):
        v = [a for a in re.split(r"[,;]\s*", v) if a.strip()]
    out = [str(a).strip() for a in (v or []) if str(a).strip()]
    for a in out:
        if "\n" in a or "\r" in a or "@" not in a:
            raise EmailConfigError(f"not an email address: {a!r}")
    return out


def message_id_for(key: str, domain: str) -> str:
    """Message-ID of the notification with idempotency key `key` (stable across replays)."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:40]}@{domain}>"


def _domain(cfg: dict[str, Any], sender: str) -> str:
    d = cfg.get("message_id_domain") or sender.rsplit("@", 1)[-1].strip(" >")
    if not re.fullmatch(r"[A-Za-z0-9.-]+", d or ""):
        d = "pagerstream.invalid"
    return d


def _action_url(ctx: ChannelContext, n: Notification, action: str) -> str | None:
    """ctx.action_link(incident_id, action[, pd_incident_key]) (the third argument when it takes one)."""
    fn = ctx.action_link
    if fn is None:
        return None
    pd_key = n.incident.get("pd_dedup_key")
    return fn(n.incident_id, action, pd_key) if pd_key and _takes(fn, 3) else fn(n.incident_id, action)


def _takes(fn: Any, positional: int = 0, keyword: str | None = None) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if keyword is not None:
        return any(
            p.kind == p.VAR_KEYWORD or (p.name == keyword and p.kind != p.POSITIONAL_ONLY) for p in params
        )
    return len(
        [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    ) >= positional or any(p.kind == p.VAR_POSITIONAL for p in params)


def _links(ctx: ChannelContext, n: Notification) -> list[tuple[str, str]]:
    inc = n.incident
    state = inc.get("state")
    if (
        ctx.action_link is None
        or state not in ("triggered", "acknowledged")
        or inc.get("change") in CLOSED_CHANGES
        or inc.get("change_detail") == "paused"
    ):
        return []
    wanted = [("Acknowledge", "acknowledge")] if state == "triggered" else []
    wanted.append(("Resolve", "resolve"))
    return [(label, url) for label, action in wanted if (url := _action_url(ctx, n, action))]


def _with_links_html(html_body: str, links: list[tuple[str, str]]) -> str:
    missing = [(t, u) for t, u in links if _html.escape(u) not in html_body and u not in html_body]
    if not missing:
        return html_body
    block = (
        '<p class="pagerstream-actions">'
        + " &nbsp; ".join(
            f'<a href="{_html.escape(url)}">{_html.escape(label)}</a>' for label, url in missing
        )
        + "<br><small>Each link asks for confirmation and works once.</small></p>"
    )
    i = html_body.lower().rfind("</body>")
    return html_body[:i] + block + html_body[i:] if i >= 0 else html_body + block


def _with_links_text(text: str, links: list[tuple[str, str]]) -> str:
    missing = [(t, u) for t, u in links if u not in text]
    if not missing:
        return text
    lines = "\n".join(f"{label}: {url}" for label, url in missing)
    return f"{text.rstrip()}\n\n{lines}\n(Each link asks for confirmation and works once.)\n"


def _render(ctx: ChannelContext, name: str, n: Notification, links: list[tuple[str, str]]) -> str:
    """Render with the links as the `action_links` template variable when the renderer takes extra
    variables (pagerstream.notify.templates.render does); links the output lacks are appended after."""
    if links and _takes(ctx.render, keyword="action_links"):
        extra = {"action_links": [{"title": t, "url": u} for t, u in links]}
        return ctx.render(name, n, **extra)  # type: ignore[call-arg]
    return ctx.render(name, n)


def _thread_ref(raw: str | None) -> tuple[str | None, str | None]:
    """(Message-ID, subject) of the incident's first message from its ref (JSON, or a bare Message-ID)."""
    if not raw:
        return None, None
    try:
        d = json.loads(raw)
        return str(d.get("message_id") or "") or None, d.get("subject")
    except (ValueError, AttributeError):
        return raw, None


def _one_line(s: str, limit: int = 250) -> str:
    return " ".join(str(s).split())[:limit]


def build_message(n: Notification, ctx: ChannelContext, *, thread_ref: str | None) -> EmailMessage:
    cfg = n.destination.config
    sender = str(cfg.get("from") or "").strip()
    to = _addresses(cfg.get("to"))
    if not sender or not to:
        raise EmailConfigError("destination needs 'from' and 'to'")
    _addresses([sender])
    root, root_subject = _thread_ref(thread_ref)
    mid = message_id_for(n.key, _domain(cfg, sender))
    reply = bool(root and root != mid)
    subject = _one_line(ctx.render(SUBJECT_TEMPLATE, n)) or f"pagerstream incident {n.incident_id}"
    if cfg.get("subject_prefix"):
        subject = f"{_one_line(cfg['subject_prefix'], 40)} {subject}"
    if reply and cfg.get("subject_mode", "thread") == "thread" and root_subject:
        subject = root_subject  # clients that thread by subject (Gmail) keep one thread per incident
    links = _links(ctx, n)
    msg = EmailMessage()
    msg["Subject"] = f"Re: {subject}" if reply else subject
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = mid
    if reply:
        msg["In-Reply-To"] = root
        msg["References"] = root
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
    msg["X-Pagerstream-Incident"] = n.incident_id
    msg.set_content(_with_links_text(_render(ctx, TEXT_TEMPLATE, n, links), links))
    msg.add_alternative(_with_links_html(_render(ctx, HTML_TEMPLATE, n, links), links), subtype="html")
    return msg


def _send_blocking(s: SmtpSettings, creds: dict[str, Any] | None, msg: EmailMessage) -> dict:
    context = _ssl_context(s) if s.security != "none" else None
    if s.security == "tls":
        conn: smtplib.SMTP = smtplib.SMTP_SSL(
            s.host, s.port, timeout=s.timeout_s, local_hostname=s.local_hostname, context=context
        )
    else:
        conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s, local_hostname=s.local_hostname)
    try:
        conn.ehlo()
        if s.security == "starttls":
            if not conn.has_extn("starttls"):
                raise _Permanent("the server does not offer STARTTLS and the destination requires it")
            conn.starttls(context=context)
            conn.ehlo()
        if creds and (creds.get("username") or creds.get("password")):
            if not conn.has_extn("auth"):
                raise _Permanent("the server does not offer AUTH but credentials are configured")
            conn.login(str(creds.get("username", "")), str(creds.get("password", "")))
        refused = conn.send_message(msg)
        try:
            conn.quit()
        except smtplib.SMTPException:
            pass
        return refused
    finally:
        with contextlib.suppress(Exception):
            conn.close()


class _Permanent(Exception):
    pass


def _smtp_text(e: smtplib.SMTPResponseException) -> str:
    m = e.smtp_error
    return (m.decode("utf-8", "replace") if isinstance(m, bytes) else str(m))[:300]


def _result_for(e: BaseException) -> DeliveryResult:
    if isinstance(e, _Permanent | EmailConfigError):
        return DeliveryResult(ok=False, permanent=True, answer=str(e))
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        codes = {a: c for a, (c, _m) in e.recipients.items()}
        transient = all(400 <= c < 500 for c in codes.values())
        first = next(iter(e.recipients.values()), (None, b""))
        text = "; ".join(
            f"{a}: {c} {m.decode('utf-8', 'replace') if isinstance(m, bytes) else m}"
            for a, (c, m) in e.recipients.items()
        )[:500]
        return DeliveryResult(
            ok=False, status=first[0], permanent=not transient, answer=f"all recipients refused: {text}"
        )
    if isinstance(e, smtplib.SMTPNotSupportedError):
        return DeliveryResult(ok=False, permanent=True, answer=f"SMTP server does not support: {e}")
    if isinstance(e, smtplib.SMTPResponseException):
        code = int(e.smtp_code)
        what = "authentication failed" if isinstance(e, smtplib.SMTPAuthenticationError) else "SMTP error"
        return DeliveryResult(
            ok=False, status=code, permanent=code >= 500, answer=f"{what}: {code} {_smtp_text(e)}"
        )
    if isinstance(e, ssl.SSLCertVerificationError):
        return DeliveryResult(
            ok=False,
            permanent=True,
            answer=f"TLS certificate of the SMTP server not trusted: {e.verify_message}",
        )
    if isinstance(e, ssl.SSLError):
        return DeliveryResult(ok=False, permanent=False, answer=f"TLS error: {e.reason or type(e).__name__}")
    if isinstance(
        e, smtplib.SMTPServerDisconnected | ConnectionError | socket.timeout | TimeoutError | OSError
    ):
        return DeliveryResult(
            ok=False, permanent=False, answer=f"connection error: {type(e).__name__}: {e}"[:300]
        )
    if isinstance(e, smtplib.SMTPException):
        return DeliveryResult(ok=False, permanent=False, answer=f"SMTP error: {type(e).__name__}")
    raise e


async def send(n: Notification, ctx: ChannelContext) -> DeliveryResult:
    cfg = n.destination.config
    try:
        s = _settings(cfg, ctx.smtp)
        ref = await ctx.refs.get(n.incident_id, n.destination.name)
        msg = build_message(n, ctx, thread_ref=ref)
        creds = ctx.secret(n.destination.secret_ref) if n.destination.secret_ref else None
        if creds and s.security == "none" and not cfg.get("allow_plaintext_auth"):
            raise EmailConfigError(
                "refusing to send SMTP credentials over an unencrypted connection "
                "(set allow_plaintext_auth to override)"
            )
    except EmailConfigError as e:
        return DeliveryResult(ok=False, permanent=True, answer=f"email configuration: {e}")
    except Exception as e:
        if type(e).__name__ == "TemplateRenderError":  # pagerstream.notify.templates: the template is wrong
            return DeliveryResult(ok=False, permanent=True, answer=str(e)[:500])
        raise
    mid = str(msg["Message-ID"])
    try:
        refused = await asyncio.to_thread(_send_blocking, s, creds, msg)
    except BaseException as e:
        if isinstance(e, asyncio.CancelledError):
            raise
        r = _result_for(e)
        log.info("email %s -> %s: not sent (%s)", n.key, n.destination.name, r.answer)
        return r
    if ref is None:
        await ctx.refs.set(
            n.incident_id, n.destination.name, json.dumps({"message_id": mid, "subject": str(msg["Subject"])})
        )
    answer = "accepted"
    if refused:
        answer = "accepted; refused: " + "; ".join(f"{a}: {c}" for a, (c, _m) in refused.items())
    return DeliveryResult(ok=True, status=250, answer=answer[:500], external_ref=mid)


class EmailChannel:
    kind = kind

    async def send(self, n: Notification, ctx: ChannelContext) -> DeliveryResult:
        return await send(n, ctx)
