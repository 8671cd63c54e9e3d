"""Channel `email` against a real SMTP server: aiosmtpd on 127.0.0.1 with STARTTLS (a throwaway
self-signed certificate made with `cryptography`, trusted by the client through its CA file) and AUTH
(aiosmtpd's authenticator, required, offered only after STARTTLS). The server records, per message,
whether the session was encrypted and authenticated when DATA arrived, so "STARTTLS actually
negotiated" and "AUTH used" are facts observed on the server side.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
import logging
import socket
import ssl
from email import policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from pagerstream.notify import email as email_channel
from pagerstream.notify.base import ChannelContext, Destination, Notification
from pagerstream.notify.email import SmtpSettings, message_id_for
from pagerstream.notify.links import ActionLinks, parse_link, verify_link
from tests.tls import self_signed

USER, PASSWORD = "alerts@example.com", "s3cret-smtp-password"
LINK_KEY = b"L" * 32


class Recorder:
    """aiosmtpd handler: records messages with the session's TLS/AUTH state; replies can be forced."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply:
            return self.data_reply
        self.messages.append(
            {
                "tls": session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
                "starttls": session.ssl is not None,  # aiosmtpd sets session.ssl when STARTTLS completes
                "cipher": (session.ssl or {}).get("cipher"),
                "authenticated": bool(session.authenticated),
                "login": getattr(session.auth_data, "login", None),
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "msg": email.message_from_bytes(envelope.original_content, policy=policy.default),
            }
        )
        return "250 2.0.0 queued"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USER.encode()
        and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[str, str]:
    return self_signed(Path(tmp_path_factory.mktemp("smtp-tls")))


def server_tls(cert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*cert)
    return ctx


@contextlib.contextmanager
def smtp_server(cert, *, starttls=True, auth=True, implicit_tls=False):
    rec = Recorder()
    kw: dict = {}
    if implicit_tls:
        kw["ssl_context"] = server_tls(cert)
    elif starttls:
        kw.update(tls_context=server_tls(cert), require_starttls=True)
    if auth:
        # aiosmtpd's auth_require_tls only knows STARTTLS; with implicit TLS the socket is encrypted anyway
        kw.update(
            authenticator=authenticator, auth_required=True, auth_require_tls=starttls and not implicit_tls
        )
    ctl = Controller(rec, hostname="127.0.0.1", port=free_port(), server_hostname="mx.test", **kw)
    ctl.start()
    try:
        yield rec, ctl.port
    finally:
        ctl.stop()


class DictRefs:
    def __init__(self) -> None:
        self.d: dict[tuple[str, str], str] = {}

    async def get(self, incident_id, destination):
        return self.d.get((incident_id, destination))

    async def set(self, incident_id, destination, ref):
        self.d[(incident_id, destination)] = ref


def render(name: str, n: Notification) -> str:
    """A stand-in for pagerstream.notify.templates.render with the same template names."""
    inc = n.incident
    if name == "email_subject.txt.j2":
        return f"[{inc['severity'].upper()}] {inc['state']}: {inc['summary']}\n"
    if name == "email.txt.j2":
        return f"{inc['summary']}\nstate: {inc['state']} ({inc['change']})\n"
    if name == "email.html.j2":
        return f"<html><body><h1>{inc['summary']}</h1><p>state: {inc['state']}</p></body></html>"
    raise KeyError(name)


def incident(version=1, change="opened", state="triggered") -> dict:
    return {
        "event_id": f"abc123-1#{version}",
        "incident_id": "abc123-1",
        "version": version,
        "change": change,
        "reason": "test",
        "state": state,
        "pd_dedup_key": "pagerstream-abc123-1",
        "routing_key_hint": "000A",
        "summary": "payments-api 5xx above 5%",
        "severity": "critical",
        "open_alerts": 1,
        "total_alerts": 1,
        "duplicates": 0,
        "opened_at": 1,
        "at": version,
    }


def dest(port, *, secret=True, **cfg) -> Destination:
    base = {
        "to": ["oncall@example.com", "lead@example.com"],
        "from": "pagerstream@example.com",
        "host": "127.0.0.1",
        "port": port,
        "timeout_s": 10,
    }
    return Destination(
        name="mail-oncall",
        channel="email",
        config={**base, **cfg},
        secret_ref="smtp-cred" if secret else None,
    )


def note(d: Destination, **kw) -> Notification:
    inc = incident(**kw)
    return Notification(key=f"{inc['incident_id']}#{inc['version']}@{d.name}", incident=inc, destination=d)


def context(cert, refs=None, *, trusted=True, password=PASSWORD, render=render) -> ChannelContext:
    client = ssl.create_default_context(cafile=cert[0]) if trusted else ssl.create_default_context()
    return ChannelContext(
        http=None,
        secret=lambda ref: {"username": USER, "password": password},
        render=render,
        refs=refs or DictRefs(),
        action_link=ActionLinks("https://ps.example.com/act", LINK_KEY, ttl_s=3600),
        smtp=SmtpSettings(ssl_context=client),
    )


def send(n, ctx):
    return asyncio.run(email_channel.send(n, ctx))


def parts(msg) -> list[tuple[str, str]]:
    return [(p.get_content_type(), p.get_content()) for p in msg.iter_parts()]


def test_first_message_has_both_parts_over_starttls_with_auth(cert):
    with smtp_server(cert) as (rec, port):
        d = dest(port)
        refs = DictRefs()
        n = note(d)
        r = send(n, context(cert, refs))
        assert r.ok and r.status == 250 and not r.permanent, r
        assert len(rec.messages) == 1
        got = rec.messages[0]
        assert got["starttls"] and got["cipher"], "STARTTLS was not negotiated"
        assert got["authenticated"] and got["login"] == USER.encode()
        assert got["mail_from"] == "pagerstream@example.com"
        assert got["rcpt_tos"] == ["oncall@example.com", "lead@example.com"]
        msg = got["msg"]
        assert msg.get_content_type() == "multipart/alternative"
        (t1, text), (t2, html) = parts(msg)
        assert (t1, t2) == ("text/plain", "text/html")
        assert "payments-api 5xx above 5%" in text and "<h1>payments-api 5xx above 5%</h1>" in html
        mid = message_id_for(n.key, "example.com")
        assert msg["Message-ID"] == mid == r.external_ref
        assert msg["In-Reply-To"] is None and msg["References"] is None
        assert msg["Subject"] == "[CRITICAL] triggered: payments-api 5xx above 5%"
        assert msg["Auto-Submitted"] == "auto-generated"
        assert json.loads(refs.d[("abc123-1", "mail-oncall")]) == {
            "message_id": mid,
            "subject": msg["Subject"],
        }
        # signed links in both parts: acknowledge + resolve for a triggered incident
        urls = [
            line.split(": ", 1)[1]
            for line in text.splitlines()
            if line.startswith(("Acknowledge: ", "Resolve: "))
        ]
        assert len(urls) == 2
        claims = [verify_link(parse_link(u), LINK_KEY) for u in urls]
        assert [c.action for c in claims] == ["acknowledge", "resolve"]
        assert {c.pd_incident_key for c in claims} == {"pagerstream-abc123-1"}
        for u in urls:
            assert u.replace("&", "&amp;") in html


def test_later_changes_thread_under_the_first_message(cert):
    with smtp_server(cert) as (rec, port):
        d = dest(port)
        ctx = context(cert)
        first = note(d)
        assert send(first, ctx).ok
        ack = note(d, version=2, change="acknowledged", state="acknowledged")
        assert send(ack, ctx).ok
        res = note(d, version=3, change="resolved", state="resolved")
        assert send(res, ctx).ok
        assert send(ack, ctx).ok  # a replay of the same notification
        m1, m2, m3, m2_again = (x["msg"] for x in rec.messages)
        root = m1["Message-ID"]
        for m in (m2, m3):
            assert m["In-Reply-To"] == root and m["References"] == root
            assert m["Subject"] == "Re: " + m1["Subject"]
            assert m["Message-ID"] != root
        assert m1["Subject"] == "[CRITICAL] triggered: payments-api 5xx above 5%"
        assert m2_again["Message-ID"] == m2["Message-ID"]  # derived from the notification key
        text2 = parts(m2)[0][1]
        assert "Resolve: " in text2 and "Acknowledge: " not in text2  # already acknowledged
        text3, html3 = (c for _t, c in parts(m3))
        assert "Resolve: " not in text3 and "/act?" not in html3  # resolved: no action links


def test_wrong_password_is_permanent_and_not_leaked(cert, caplog):
    caplog.set_level(logging.DEBUG)
    with smtp_server(cert) as (rec, port):
        r = send(note(dest(port)), context(cert, password="wrong-password-123"))
        assert not r.ok and r.permanent and r.status == 535, r
        assert "authentication failed" in r.answer
        assert rec.messages == []
    assert "wrong-password-123" not in caplog.text and "wrong-password-123" not in r.answer


def test_auth_is_required_by_the_server(cert):
    with smtp_server(cert) as (rec, port):
        r = send(note(dest(port, secret=False)), context(cert))
        assert not r.ok and r.permanent and r.status == 530, r
        assert rec.messages == []


def test_starttls_required_unless_the_destination_says_otherwise(cert):
    with smtp_server(cert, starttls=False, auth=False) as (rec, port):
        r = send(note(dest(port, secret=False)), context(cert))
        assert not r.ok and r.permanent and "STARTTLS" in r.answer
        assert rec.messages == []
        # credentials are never sent in the clear, even when plain SMTP is allowed
        r = send(note(dest(port, secret=True, security="none")), context(cert))
        assert not r.ok and r.permanent and "unencrypted" in r.answer
        assert rec.messages == []
        r = send(note(dest(port, secret=False, security="none")), context(cert))
        assert r.ok, r
        assert rec.messages[0]["tls"] is False


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls(cert):
    with smtp_server(cert, starttls=False, implicit_tls=True) as (rec, port):
        r = send(note(dest(port, security="tls")), context(cert))
        assert r.ok, r
        assert rec.messages[0]["tls"] and not rec.messages[0]["starttls"] and rec.messages[0]["authenticated"]


def test_untrusted_certificate_is_permanent(cert):
    with smtp_server(cert) as (rec, port):
        r = send(note(dest(port)), context(cert, trusted=False))
        assert not r.ok and r.permanent and "certificate" in r.answer
        assert rec.messages == []


@pytest.mark.parametrize(
    "where, reply, permanent",
    [
        ("rcpt", "450 4.2.1 mailbox busy", False),
        ("rcpt", "550 5.1.1 no such user", True),
        ("data", "451 4.3.0 try again later", False),
        ("data", "554 5.7.1 message rejected", True),
    ],
)
def test_smtp_replies_4xx_transient_5xx_permanent(cert, where, reply, permanent):
    with smtp_server(cert) as (rec, port):
        setattr(rec, f"{where}_reply", reply)
        r = send(note(dest(port)), context(cert))
        assert not r.ok
        assert r.status == int(reply[:3])
        assert r.permanent is permanent
        assert reply[4:] in r.answer


def test_connection_refused_is_transient(cert):
    port = free_port()  # nothing listens there
    r = send(note(dest(port)), context(cert))
    assert not r.ok and not r.permanent and r.status is None
    assert "connection" in r.answer


def test_bad_configuration_is_permanent(cert):
    d = Destination(
        name="m", channel="email", config={"to": [], "from": "a@example.com", "host": "127.0.0.1"}
    )
    r = send(note(d), context(cert))
    assert not r.ok and r.permanent and "configuration" in r.answer


def test_subject_per_change_when_configured(cert):
    with smtp_server(cert) as (rec, port):
        d = dest(port, subject_mode="per_change", subject_prefix="[ops]")
        ctx = context(cert)
        assert send(note(d), ctx).ok
        assert send(note(d, version=2, change="acknowledged", state="acknowledged"), ctx).ok
        m1, m2 = (x["msg"] for x in rec.messages)
        assert m1["Subject"] == "[ops] [CRITICAL] triggered: payments-api 5xx above 5%"
        assert m2["Subject"] == "Re: [ops] [CRITICAL] acknowledged: payments-api 5xx above 5%"
        assert m2["In-Reply-To"] == m1["Message-ID"]


def test_with_the_real_templates_links_are_rendered_once(cert):
    from pagerstream.notify.templates import render as real_render

    with smtp_server(cert) as (rec, port):
        r = send(note(dest(port)), context(cert, render=real_render))
        assert r.ok, r
        msg = rec.messages[0]["msg"]
        (_t, text), (_h, html) = parts(msg)
        urls = [w for w in text.split() if w.startswith("https://ps.example.com/act?")]
        assert len(urls) == 2, text  # rendered by the template, not appended a second time
        assert [verify_link(parse_link(u), LINK_KEY).action for u in urls] == ["acknowledge", "resolve"]
        for u in urls:
            assert f'href="{u.replace("&", "&amp;")}"' in html
        assert "Each link asks for confirmation" not in text
        assert "payments-api 5xx above 5%" in msg["Subject"]


def test_template_errors_are_permanent(cert):
    from pagerstream.notify.templates import render as real_render

    with smtp_server(cert) as (rec, port):
        d = dest(port, templates={"email.txt.j2": {"inline": "{{ incident.__class__ }}"}})
        r = send(note(d), context(cert, render=real_render))
        assert not r.ok and r.permanent and "email.txt.j2" in r.answer, r
        assert rec.messages == []
