"""Outbound HTTP for notification channels, guarded against SSRF.

Destination URLs come from configuration that many people can edit (a webhook URL, a Jira base URL),
so every connection a channel opens is checked: the host is resolved (getaddrinfo) and the call is
refused when an address is loopback, private, link-local, multicast, reserved, unspecified, shared
(100.64.0.0/10) or a cloud metadata endpoint (169.254.169.254, fd00:ec2::254), unless the operator
allow-listed it in ``OUTBOUND_URL_ALLOWLIST``.

How the check is pinned to the connection (no DNS rebinding between check and connect)
-------------------------------------------------------------------------------------
The check does not run before the request on a separate lookup. It runs *inside* the connection
pool's network backend: httpcore asks the backend to ``connect_tcp(host, port)`` when (and only when)
it opens a new connection; `_GuardedBackend` resolves the name once, checks every address it got, and
then opens the socket to one of those checked IP literals. There is no second lookup that a
short-TTL DNS answer could change. TLS still uses the *name*: httpcore starts TLS on that socket with
``server_hostname=<the URL's host>``, so SNI is the name and the certificate is verified against the
name, and httpx sends ``Host: <name>``. A pooled keep-alive connection stays bound to the address it
was opened to. Redirects are not followed by default; when a caller asks for them, every hop is a new
request through the same transport and is checked the same way. Environment proxies are ignored
(``trust_env=False``): a proxy would do its own resolution and bypass the check.

``OUTBOUND_URL_ALLOWLIST`` (comma-separated):

* ``hooks.internal`` - a host name (``*.corp.example`` for a domain and its sub-domains): any address
  it resolves to is allowed (except metadata addresses, see below), on any port;
* ``hooks.internal:8443`` - the same, on that port only;
* ``10.1.2.3``, ``10.20.0.0/16``, ``fd00::/8`` - addresses/networks allowed whatever name led there;
* ``127.0.0.1:8080``, ``[::1]:8080`` - an address on one port.

Metadata endpoints are only reachable when their exact address is listed (``169.254.169.254``); a
host entry or a wider network (``169.254.0.0/16``) does not open them.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from pagerstream.notify.base import DeliveryResult

__all__ = [
    "ALLOWLIST_ENV", "METADATA_ADDRESSES", "Allowlist", "GuardedTransport", "OutboundBlocked",
    "address_problem", "outbound_client", "result_for_exception",
]

ALLOWLIST_ENV = "OUTBOUND_URL_ALLOWLIST"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset({
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, DigitalOcean...
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
})
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class OutboundBlocked(httpx.RequestError):
    """The target is not allowed by the outbound policy. Permanent: retrying cannot help."""


# --- allow-list -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Allowlist:
    hosts: tuple[tuple[str, int | None], ...] = ()  # (lowercase name or "*.domain", port or None)
    networks: tuple[tuple[IPNetwork, int | None], ...] = ()

    @classmethod
    def parse(cls, value: str | None) -> Allowlist:
        hosts: list[tuple[str, int | None]] = []
        nets: list[tuple[IPNetwork, int | None]] = []
        for i, raw in enumerate((value or "").split(","), start=1):
            entry = raw.strip()
            if not entry:
                continue
            target, port = _split_port(entry, i)
            try:
                nets.append((ipaddress.ip_network(target, strict=False), port))
                continue
            except ValueError:
                pass
            name = target.lower().rstrip(".")
            check = name.removeprefix("*.")
            if not check or not all(part and len(part) <= 63 and all(c.isalnum() or c in "-_" for c in part)
                                    for part in check.split(".")):
                raise ValueError(f"{ALLOWLIST_ENV}: entry {i} ({entry[:80]!r}) is not a host, host:port, "
                                 "IP, IP:port or CIDR")
            hosts.append((name, port))
        return cls(tuple(hosts), tuple(nets))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Allowlist:
        return cls.parse((os.environ if env is None else env).get(ALLOWLIST_ENV, ""))

    def allows_host(self, host: str, port: int | None) -> bool:
        h = host.lower().rstrip(".")
        for name, p in self.hosts:
            if p is not None and p != port:
                continue
            if name == h or (name.startswith("*.") and (h == name[2:] or fnmatch.fnmatchcase(h, name))):
                return True
        return False

    def allows_ip(self, ip: IPAddress, port: int | None, *, exact: bool = False) -> bool:
        for net, p in self.networks:
            if p is not None and p != port:
                continue
            if net.version != ip.version or ip not in net:
                continue
            if exact and net.num_addresses != 1:
                continue
            return True
        return False


def _split_port(entry: str, i: int) -> tuple[str, int | None]:
    def port_of(s: str) -> int:
        if not s.isdigit() or not 0 < int(s) < 65536:
            raise ValueError(f"{ALLOWLIST_ENV}: entry {i} ({entry[:80]!r}) has a bad port")
        return int(s)

    if entry.startswith("["):  # [v6]:port
        addr, _, rest = entry[1:].partition("]")
        return addr, (port_of(rest[1:]) if rest.startswith(":") else None)
    if entry.count(":") == 1:  # host:port or v4:port (a bare v6 address has several colons)
        host, _, p = entry.partition(":")
        return host, port_of(p)
    return entry, None


# --- the address check ----------------------------------------------------------------------------
def _unwrap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _kind(ip: IPAddress) -> str | None:
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _SHARED:
        return "shared (carrier-grade NAT)"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-global"
    return None


def address_problem(host: str, port: int | None, address: str, allow: Allowlist) -> str | None:
    """None when `host` (resolved to `address`) may be called on `port`, else why not."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    inner = _unwrap(ip)
    if ip in METADATA_ADDRESSES or inner in METADATA_ADDRESSES:
        if allow.allows_ip(ip, port, exact=True) or allow.allows_ip(inner, port, exact=True):
            return None
        return "a cloud metadata address"
    if allow.allows_ip(ip, port) or (inner is not ip and allow.allows_ip(inner, port)):
        return None
    if allow.allows_host(host, port):
        return None
    kind = _kind(inner) or _kind(ip)
    if not kind:
        return None
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(i[4][0]) for i in infos))


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolve once, check every address, connect to a checked address (see the module docstring)."""

    def __init__(self, allow: Allowlist, resolver: Resolver | None, inner: httpcore.AsyncNetworkBackend) -> None:
        self.allow = allow
        self.resolver = resolver or _getaddrinfo
        self.inner = inner

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        try:
            addrs = await asyncio.wait_for(self.resolver(host, port), timeout)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as e:
            raise httpcore.ConnectError(f"cannot resolve {host}: {e.strerror or type(e).__name__}") from None
        if not addrs:
            raise httpcore.ConnectError(f"{host} has no address")
        for a in addrs:  # every address, not only the first: a mixed answer is refused as a whole
            why = address_problem(host, port, a, self.allow)
            if why:
                shown = " is" if a == host else f" resolves to {a}, which is"
                raise OutboundBlocked(f"outbound call refused: {host}:{port}{shown} {why} "
                                      f"(not allowed by {ALLOWLIST_ENV})")
        last: Exception | None = None
        for a in addrs:
            try:
                return await self.inner.connect_tcp(a, port, timeout=timeout, local_address=local_address,
                                                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
        assert last is not None
        raise last

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise OutboundBlocked("outbound call refused: unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx.AsyncHTTPTransport whose connection pool connects only to checked addresses."""

    def __init__(self, *, allowlist: Allowlist | str | None = None, resolver: Resolver | None = None,
                 verify: Any = True, limits: httpx.Limits | None = None, http2: bool = False) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(verify=verify, trust_env=False, limits=limits, http2=http2)
        allow = (Allowlist.from_env() if allowlist is None
                 else Allowlist.parse(allowlist) if isinstance(allowlist, str) else allowlist)
        self.allowlist = allow
        # Same settings as httpx's own pool, plus our network backend (the only change).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True, http2=http2,
            network_backend=_GuardedBackend(allow, resolver, httpcore.AnyIOBackend()),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme not in ("http", "https"):
            raise OutboundBlocked(f"outbound call refused: scheme {request.url.scheme!r}", request=request)
        try:
            return await super().handle_async_request(request)
        except OutboundBlocked as e:
            e.request = request
            raise


def outbound_client(*, allowlist: Allowlist | str | None = None, timeout: float = 10.0,
                    resolver: Resolver | None = None, verify: Any = True, follow_redirects: bool = False,
                    headers: Mapping[str, str] | None = None, max_connections: int = 100) -> httpx.AsyncClient:
    """The httpx client for `ChannelContext.http`. `allowlist` defaults to $OUTBOUND_URL_ALLOWLIST;
    `resolver` (host, port) -> addresses is for tests; redirects are not followed unless asked."""
    transport = GuardedTransport(allowlist=allowlist, resolver=resolver, verify=verify,
                                 limits=httpx.Limits(max_connections=max_connections,
                                                     max_keepalive_connections=min(20, max_connections)))
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(timeout), follow_redirects=follow_redirects,
                             trust_env=False, headers={"User-Agent": "pagerstream-notify/0.1", **(headers or {})})


def result_for_exception(exc: BaseException) -> DeliveryResult:
    """What a channel (or the delivery stage) reports when the call raised instead of answering:
    refused by policy -> permanent; timeouts and network errors -> retry. No URL or secret in `answer`."""
    if isinstance(exc, OutboundBlocked):
        return DeliveryResult(ok=False, permanent=True, answer=str(exc)[:500])
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return DeliveryResult(ok=False, answer=f"timeout ({type(exc).__name__})")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return DeliveryResult(ok=False, permanent=True, answer="unsupported URL scheme")
    if isinstance(exc, httpx.InvalidURL):
        return DeliveryResult(ok=False, permanent=True, answer="invalid URL")
    if isinstance(exc, (httpx.TransportError, OSError)):
        return DeliveryResult(ok=False, answer=f"network error ({type(exc).__name__})")
    return DeliveryResult(ok=False, answer=f"channel error ({type(exc).__name__})")
