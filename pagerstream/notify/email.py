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
  timeout_s     default 30
Secret (destination.secret_ref): {"username": ..., "password": ...}; AUTH is used when present and
refused unless the connection is encrypted (security "none" excepted).

`ctx.smtp` may be None, a dict or an `SmtpSettings`: process-wide defaults (relay host, an
ssl.SSLContext, local_hostname) that the destination's config overrides.

Message: multipart/alternative with the text part (template "email.txt") then the HTML part
("email.html"), signed Acknowledge/Resolve links appended to both when `ctx.action_link` is set,
`Message-ID` derived from the notification key (a replay produces the same Message-ID), and
`In-Reply-To`/`References` pointing at the incident's first message, whose Message-ID is kept in
`ctx.refs`. The subject stays the same for the whole incident (later messages get "Re: ") so that
clients which thread by subject keep one thread too.

SMTP answers: 4xx -> transient, 5xx -> permanent, connection errors and timeouts -> transient,
TLS certificate failures / missing STARTTLS / missing AUTH support -> permanent (configuration).
smtplib runs in a worker thread; nothing here logs credentials.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass, field, replace
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from pagerstream.notify.base import ChannelContext, DeliveryResult, Notification

log = logging.getLogger("pagerstream.notify.email")

kind = "email"

RESOLVED_CHANGES = {"resolved", "auto_resolved"}


@dataclass(frozen=True)
class SmtpSettings:
    host: str | None = None
    port: int | None = None
    security: str = "starttls"  # starttls | tls | none
    ssl_context: ssl.SSLContext | None = None
    verify_tls: bool = True
    ca_file: str | None = None
    timeout_s: float = 30.0
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
    over = {k: dest_cfg[k] for k in ("host", "port", "security", "verify_tls", "ca_file", "timeout_s",
                                     "local_hostname") if k in dest_cfg}
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
    """ctx.action_link(incident_id, action[, pd_incident_key])."""
    fn = ctx.action_link
    if fn is None:
        return None
    pd_key = n.incident.get("pd_dedup_key")
    try:
        params = inspect.signature(fn).parameters
        takes_three = len(params) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params.values())
    except (TypeError, ValueError):
        takes_three = False
    return fn(n.incident_id, action, pd_key) if takes_three and pd_key else fn(n.incident_id, action)


def _links(ctx: ChannelContext, n: Notification) -> list[tuple[str, str]]:
    state = n.incident.get("state")
    if state == "resolved" or n.incident.get("change") in RESOLVED_CHANGES or ctx.action_link is None:
        return []
    wanted = [("Acknowledge", "acknowledge")] if state == "triggered" else []
    wanted.append(("Resolve", "resolve"))
    return [(label, url) for label, action in wanted if (url := _action_url(ctx, n, action))]


def _with_links_html(html_body: str, links: list[tuple[str, str]]) -> str:
    if not links:
        return html_body
    import html as _html

    block = ('<p class="pagerstream-actions">' + " &nbsp; ".join(
        f'<a href="{_html.escape(url)}">{_html.escape(label)}</a>' for label, url in links)
        + '<br><small>Each link asks for confirmation and works once.</small></p>')
    i = html_body.lower().rfind("</body>")
    return html_body[:i] + block + html_body[i:] if i >= 0 else html_body + block


def _with_links_text(text: str, links: list[tuple[str, str]]) -> str:
    if not links:
        return text
    lines = "\n".join(f"{label}: {url}" for label, url in links)
    return f"{text.rstrip()}\n\n{lines}\n(Each link asks for confirmation and works once.)\n"


def build_message(n: Notification, ctx: ChannelContext, *, thread_root: str | None) -> EmailMessage:
    cfg = n.destination.config
    sender = str(cfg.get("from") or "").strip()
    to = _addresses(cfg.get("to"))
    if not sender or not to:
        raise EmailConfigError("destination needs 'from' and 'to'")
    _addresses([sender])
    inc = n.incident
    prefix = str(cfg.get("subject_prefix", "[pagerstream]")).strip()
    summary = " ".join(str(inc.get("summary") or "incident").split())[:180]
    subject = f"{prefix} {summary} [{n.incident_id}]".strip()
    mid = message_id_for(n.key, _domain(cfg, sender))
    links = _links(ctx, n)
    msg = EmailMessage()
    msg["Subject"] = f"Re: {subject}" if thread_root and thread_root != mid else subject
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = mid
    if thread_root and thread_root != mid:
        msg["In-Reply-To"] = thread_root
        msg["References"] = thread_root
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
    msg["X-Pagerstream-Incident"] = n.incident_id
    msg.set_content(_with_links_text(ctx.render("email.txt", n), links))
    msg.add_alternative(_with_links_html(ctx.render("email.html", n), links), subtype="html")
    return msg


def _send_blocking(s: SmtpSettings, creds: dict[str, Any] | None, msg: EmailMessage) -> dict:
    context = _ssl_context(s) if s.security != "none" else None
    if s.security == "tls":
        conn: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s,
                                              local_hostname=s.local_hostname, context=context)
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
        try:
            conn.close()
        except Exception:  # pragma: no cover
            pass


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
        text = "; ".join(f"{a}: {c} {m.decode('utf-8', 'replace') if isinstance(m, bytes) else m}"
                         for a, (c, m) in e.recipients.items())[:500]
        return DeliveryResult(ok=False, status=first[0], permanent=not transient,
                              answer=f"all recipients refused: {text}")
    if isinstance(e, smtplib.SMTPNotSupportedError):
        return DeliveryResult(ok=False, permanent=True, answer=f"SMTP server does not support: {e}")
    if isinstance(e, smtplib.SMTPResponseException):
        code = int(e.smtp_code)
        what = "authentication failed" if isinstance(e, smtplib.SMTPAuthenticationError) else "SMTP error"
        return DeliveryResult(ok=False, status=code, permanent=code >= 500,
                              answer=f"{what}: {code} {_smtp_text(e)}")
    if isinstance(e, ssl.SSLCertVerificationError):
        return DeliveryResult(ok=False, permanent=True,
                              answer=f"TLS certificate of the SMTP server not trusted: {e.verify_message}")
    if isinstance(e, ssl.SSLError):
        return DeliveryResult(ok=False, permanent=False, answer=f"TLS error: {e.reason or type(e).__name__}")
    if isinstance(e, smtplib.SMTPServerDisconnected | ConnectionError | socket.timeout | TimeoutError | OSError):
        return DeliveryResult(ok=False, permanent=False, answer=f"connection error: {type(e).__name__}: {e}"[:300])
    if isinstance(e, smtplib.SMTPException):
        return DeliveryResult(ok=False, permanent=False, answer=f"SMTP error: {type(e).__name__}")
    raise e


async def send(n: Notification, ctx: ChannelContext) -> DeliveryResult:
    cfg = n.destination.config
    try:
        s = _settings(cfg, ctx.smtp)
        root = await ctx.refs.get(n.incident_id, n.destination.name)
        msg = build_message(n, ctx, thread_root=root)
        creds = ctx.secret(n.destination.secret_ref) if n.destination.secret_ref else None
        if creds and s.security == "none" and not cfg.get("allow_plaintext_auth"):
            raise EmailConfigError("refusing to send SMTP credentials over an unencrypted connection "
                                   "(set allow_plaintext_auth to override)")
    except EmailConfigError as e:
        return DeliveryResult(ok=False, permanent=True, answer=f"email configuration: {e}")
    mid = str(msg["Message-ID"])
    try:
        refused = await asyncio.to_thread(_send_blocking, s, creds, msg)
    except BaseException as e:  # noqa: BLE001 - mapped below; CancelledError re-raised
        if isinstance(e, asyncio.CancelledError):
            raise
        r = _result_for(e)
        log.info("email %s -> %s: not sent (%s)", n.key, n.destination.name, r.answer)
        return r
    if root is None:
        await ctx.refs.set(n.incident_id, n.destination.name, mid)
    answer = "accepted"
    if refused:
        answer = "accepted; refused: " + "; ".join(f"{a}: {c}" for a, (c, _m) in refused.items())
    return DeliveryResult(ok=True, status=250, answer=answer[:500], external_ref=mid)


class EmailChannel:
    kind = kind

    async def send(self, n: Notification, ctx: ChannelContext) -> DeliveryResult:
        return await send(n, ctx)
