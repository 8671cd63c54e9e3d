"""Guard for outbound URLs taken from configuration (SSRF): no loopback, private, link-local,
multicast or reserved targets unless the operator allowed private targets explicitly."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse


def _blocked(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
            or ip.is_unspecified)


def outbound_url_problem(url: str, *, allow_private: bool, resolve: bool = True) -> str | None:
    """None when the URL may be called, else why not. Names that do not resolve are allowed (the
    call will fail on its own); names that resolve to a blocked address are not."""
    u = urlparse(url)
    if u.scheme not in ("https", "http") or not u.hostname:
        return "expected an http(s) URL with a host"
    if u.username or u.password:
        return "credentials in the URL are not allowed"
    if allow_private:
        return None
    if u.scheme != "https":
        return "plain http is only allowed with PAGERSTREAM_ALLOW_PRIVATE_PD_URL=true"
    host = u.hostname
    try:
        addrs = [ipaddress.ip_address(host)]
    except ValueError:
        if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
            return f"{host} is a loopback name; set PAGERSTREAM_ALLOW_PRIVATE_PD_URL=true for local targets"
        if not resolve:
            return None
        try:
            infos = socket.getaddrinfo(host, u.port or 443, proto=socket.IPPROTO_TCP)
        except OSError:
            return None
        addrs = [ipaddress.ip_address(i[4][0]) for i in infos]
    bad = [str(a) for a in addrs if _blocked(a)]
    if bad:
        return (f"{host} points at a non-public address ({', '.join(sorted(set(bad)))}); "
                "set PAGERSTREAM_ALLOW_PRIVATE_PD_URL=true to allow it")
    return None
