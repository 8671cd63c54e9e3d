"""The SSRF-guarded outbound client (pagerstream/notify/outbound.py), against real servers on loopback.

Loopback is refused like any private target, so every test that reaches a server allow-lists it
explicitly. Names are resolved by the real getaddrinfo ("localhost"), or by an injected resolver for
names that must point at a private or metadata address (no DNS server is involved in the tests).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Self

import httpx
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pagerstream.notify.outbound import (
    Allowlist,
    GuardedTransport,
    OutboundBlocked,
    address_problem,
    outbound_client,
    result_for_exception,
)


class Server:
    """A real aiohttp server recording what reached it."""

    def __init__(self, host: str = "127.0.0.1", *, redirect_to: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.redirect_to = redirect_to
        self.ssl_context = ssl_context
        self.seen: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append({"host": request.headers.get("Host", ""), "path": request.path})
        if self.redirect_to:
            raise web.HTTPFound(self.redirect_to)
        return web.json_response({"ok": True})

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"


def fixed_resolver(table: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        answer = table[host]
        return answer.pop(0) if answer and isinstance(answer[0], list) else answer  # type: ignore[return-value]

    return resolve


# --- the address policy (pure) ----------------------------------------------------------------------
@pytest.mark.parametrize("address, why", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.10", "private"),
    ("172.16.5.4", "private"), ("fd12::1", "private"), ("169.254.10.1", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.251", "multicast"), ("ff02::1", "multicast"), ("240.0.0.1", "reserved"), ("0.0.0.0", "unspecified"),
    ("100.64.0.1", "shared"), ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"),
    ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "metadata"), ("64:ff9b::a00:1", "private"),
])
def test_non_public_addresses_are_refused(address: str, why: str):
    problem = address_problem("example.test", 443, address, Allowlist())
    assert problem is not None and why in problem


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "8.8.8.8"])
def test_public_addresses_pass(address: str):
    assert address_problem("example.test", 443, address, Allowlist()) is None


def test_allowlist_forms():
    a = Allowlist.parse(" hooks.internal , relay.internal:8443, 10.20.0.0/16, 127.0.0.1:9000, [::1]:9001, "
                        "*.corp.test, 169.254.169.254")
    assert address_problem("hooks.internal", 1, "10.9.9.9", a) is None  # host: any address, any port
    assert address_problem("HOOKS.internal.", 1, "10.9.9.9", a) is None
    assert address_problem("relay.internal", 8443, "192.168.1.1", a) is None
    assert address_problem("relay.internal", 443, "192.168.1.1", a) is not None  # wrong port
    assert address_problem("x.test", 1, "10.20.3.4", a) is None  # CIDR, whatever the name
    assert address_problem("x.test", 1, "10.21.3.4", a) is not None
    assert address_problem("x.test", 9000, "127.0.0.1", a) is None
    assert address_problem("x.test", 9002, "127.0.0.1", a) is not None
    assert address_problem("x.test", 9001, "::1", a) is None
    assert address_problem("a.b.corp.test", 1, "10.0.0.1", a) is None
    assert address_problem("corp.test.evil", 1, "10.0.0.1", a) is not None
    assert address_problem("x.test", 80, "169.254.169.254", a) is None  # listed exactly


def test_metadata_needs_its_exact_address_in_the_allowlist():
    wide = Allowlist.parse("metadata.internal, 169.254.0.0/16, fd00:ec2::/32")
    assert "metadata" in address_problem("metadata.internal", 80, "169.254.169.254", wide)
    assert "metadata" in address_problem("x", 80, "fd00:ec2::254", wide)
    assert address_problem("x", 80, "169.254.1.1", wide) is None  # the rest of the network is open


@pytest.mark.parametrize("bad", ["exa mple.com", "host:port", "10.0.0.1:99999", "[::1]:x", "a..b"])
def test_bad_allowlist_entries_are_reported(bad: str):
    with pytest.raises(ValueError, match="OUTBOUND_URL_ALLOWLIST: entry 2"):
        Allowlist.parse(f"ok.example, {bad}")


# --- (a) loopback is refused unless allow-listed -----------------------------------------------------
async def test_loopback_refused_without_allowlist_and_reached_with_it():
    async with Server() as srv:
        async with outbound_client(allowlist="") as c:
            with pytest.raises(OutboundBlocked, match="loopback") as ei:
                await c.post(srv.url, json={"x": 1})
            assert ei.value.request.url == httpx.URL(srv.url)
        async with outbound_client(allowlist=f"127.0.0.1:{srv.port + 1 if srv.port < 65535 else 1}") as c:
            with pytest.raises(OutboundBlocked):  # another port only
                await c.post(srv.url, json={"x": 1})
        assert srv.seen == []
        async with outbound_client(allowlist=f"127.0.0.1:{srv.port}") as c:
            r = await c.post(srv.url, json={"x": 1})
        assert r.status_code == 200 and len(srv.seen) == 1


async def test_allowlist_read_from_the_environment(monkeypatch):
    async with Server() as srv:
        monkeypatch.setenv("OUTBOUND_URL_ALLOWLIST", "")
        async with outbound_client() as c:
            with pytest.raises(OutboundBlocked):
                await c.get(srv.url)
        monkeypatch.setenv("OUTBOUND_URL_ALLOWLIST", "127.0.0.0/8")
        async with outbound_client() as c:
            assert (await c.get(srv.url)).status_code == 200


async def test_environment_proxies_do_not_bypass_the_check(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    async with Server() as srv:
        async with outbound_client(allowlist="") as c:
            with pytest.raises(OutboundBlocked):
                await c.get(srv.url)
        async with outbound_client(allowlist="127.0.0.1") as c:
            assert (await c.get(srv.url)).status_code == 200  # direct, not through the (dead) proxy


# --- (b) names that resolve to non-public addresses ------------------------------------------------------
async def test_localhost_name_is_refused_by_its_resolved_address():
    async with Server() as srv:
        url = f"http://localhost:{srv.port}/hook"
        async with outbound_client(allowlist="") as c:
            with pytest.raises(OutboundBlocked, match=r"localhost:\d+ resolves to .*loopback"):
                await c.get(url)
        assert srv.seen == []
        async with outbound_client(allowlist="localhost") as c:  # the name allow-listed
            r = await c.get(url)
        assert r.status_code == 200 and srv.seen[-1]["host"] == f"localhost:{srv.port}"


@pytest.mark.parametrize("answer, why", [
    (["10.0.0.7"], "private"),
    (["169.254.169.254"], "metadata"),
    (["93.184.215.14", "192.168.1.20"], "private"),  # one bad address spoils the answer
    (["::ffff:127.0.0.1"], "loopback"),
])
async def test_name_resolving_to_a_private_address_is_refused(answer: list[str], why: str):
    calls: list[str] = []
    resolver = fixed_resolver({"hooks.example.test": answer}, calls)
    async with outbound_client(allowlist="203.0.113.0/24, other.example.test", resolver=resolver) as c:
        with pytest.raises(OutboundBlocked, match=why):
            await c.post("https://hooks.example.test/x", json={})
    assert calls == ["hooks.example.test"]


async def test_allowlisted_host_still_cannot_reach_metadata():
    resolver = fixed_resolver({"hooks.example.test": ["169.254.169.254"]})
    async with outbound_client(allowlist="hooks.example.test", resolver=resolver) as c:
        with pytest.raises(OutboundBlocked, match="metadata"):
            await c.get("http://hooks.example.test/latest/meta-data/")


async def test_connection_is_pinned_to_the_checked_address():
    """The only lookup is the checked one; the socket goes to that address while Host stays the name.
    A second connection looks up again (and a rebound answer is refused)."""
    calls: list[str] = []
    async with Server() as srv:
        answers: dict[str, list] = {"svc.example.test": [["127.0.0.1"], ["10.66.0.1"]]}
        transport = GuardedTransport(allowlist="127.0.0.1", resolver=fixed_resolver(answers, calls))
        async with httpx.AsyncClient(transport=transport) as c:
            for _ in range(3):
                r = await c.get(f"http://svc.example.test:{srv.port}/a")
                assert r.status_code == 200
        assert calls == ["svc.example.test"]  # three requests, one keep-alive connection, one lookup
        assert {s["host"] for s in srv.seen} == {f"svc.example.test:{srv.port}"}
        transport = GuardedTransport(allowlist="127.0.0.1", resolver=fixed_resolver(answers, calls))
        async with httpx.AsyncClient(transport=transport) as c:
            with pytest.raises(OutboundBlocked, match="10.66.0.1"):
                await c.get(f"http://svc.example.test:{srv.port}/a")
        assert len(srv.seen) == 3


def _cert_for(name: str, directory: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    c, k = directory / "cert.pem", directory / "key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return str(c), str(k)


async def test_tls_to_the_pinned_address_uses_the_name_for_sni_and_certificate(tmp_path: Path):
    cert, key = _cert_for("svc.example.test", tmp_path)  # no IP in the certificate: only the name verifies
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni.append(name)  # type: ignore[assignment,misc]
    client_ctx = ssl.create_default_context(cafile=cert)
    async with Server(ssl_context=server_ctx) as srv:
        resolver = fixed_resolver({"svc.example.test": ["127.0.0.1"]})
        async with outbound_client(allowlist=f"127.0.0.1:{srv.port}", resolver=resolver, verify=client_ctx) as c:
            r = await c.get(f"https://svc.example.test:{srv.port}/tls")
        assert r.status_code == 200
        assert sni == ["svc.example.test"] and srv.seen[0]["host"] == f"svc.example.test:{srv.port}"
        # the same server by its IP: the certificate does not cover it, so verification fails
        async with outbound_client(allowlist=f"127.0.0.1:{srv.port}", verify=client_ctx) as c:
            with pytest.raises(httpx.ConnectError):
                await c.get(f"https://127.0.0.1:{srv.port}/tls")


# --- (c) redirects -----------------------------------------------------------------------------------
async def test_redirect_to_a_refused_target_is_not_followed():
    async with contextlib.AsyncExitStack() as stack:
        inner = await stack.enter_async_context(Server("127.0.0.2"))
        to_metadata = await stack.enter_async_context(Server(redirect_to="http://169.254.169.254/latest/meta-data/"))
        to_inner = await stack.enter_async_context(Server(redirect_to=inner.url))
        allow = f"127.0.0.1:{to_inner.port},127.0.0.1:{to_metadata.port}"
        async with outbound_client(allowlist=allow) as c:  # default: redirects not followed at all
            r = await c.get(to_inner.url)
            assert r.status_code == 302 and r.headers["location"] == inner.url
        async with outbound_client(allowlist=allow, follow_redirects=True) as c:
            with pytest.raises(OutboundBlocked, match="127.0.0.2"):
                await c.get(to_inner.url)
            with pytest.raises(OutboundBlocked, match="metadata"):
                await c.get(to_metadata.url)
        assert inner.seen == []  # listening, but never reached
        assert len(to_inner.seen) == 2 and len(to_metadata.seen) == 1
        # allow-listed too: then the redirect is followed (the check is per hop, not "never follow")
        async with outbound_client(allowlist=allow + f",127.0.0.2:{inner.port}", follow_redirects=True) as c:
            assert (await c.get(to_inner.url)).status_code == 200
        assert len(inner.seen) == 1


async def test_unresolvable_name_is_a_network_error_not_a_refusal():
    async def nx(host: str, port: int) -> list[str]:
        raise OSError(-2, "Name or service not known")

    async with outbound_client(allowlist="", resolver=nx) as c:
        with pytest.raises(httpx.ConnectError) as ei:
            await c.get("https://does-not-exist.example.test/")
    assert not isinstance(ei.value, OutboundBlocked)
    r = result_for_exception(ei.value)
    assert not r.permanent and "network error" in r.answer


def test_result_for_exception():
    blocked = result_for_exception(OutboundBlocked("outbound call refused: x"))
    assert blocked.permanent and not blocked.ok and "refused" in blocked.answer
    assert not result_for_exception(httpx.ReadTimeout("t")).permanent
    assert "timeout" in result_for_exception(httpx.ConnectTimeout("t")).answer
    assert not result_for_exception(httpx.RemoteProtocolError("x")).permanent
    assert result_for_exception(httpx.UnsupportedProtocol("x")).permanent


def test_ipaddress_module_knows_the_addresses_we_rely_on():
    # guards against a Python upgrade changing the classification under us
    assert ipaddress.ip_address("100.64.0.1").is_global is False
    assert ipaddress.ip_address("fd00:ec2::254").is_private
