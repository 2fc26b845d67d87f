"""HTTPS_PROXY, HTTP_PROXY and NO_PROXY for the Kubernetes API, as
client-go (and so kubectl) reads them: Go's net/http ProxyFromEnvironment,
golang.org/x/net/http/httpproxy.

- HTTPS_PROXY (or https_proxy) for an https:// server, HTTP_PROXY (or
  http_proxy) for http://; the upper-case name wins when both are set; a
  value without a scheme is taken as http://host:port.
- Never for "localhost" or a loopback IP written as such.
- NO_PROXY (or no_proxy), comma-separated: "*" (nothing is proxied), an IP
  or CIDR (10.0.0.0/8), a domain that matches itself and its subdomains
  (example.com), a leading "." or "*." for subdomains only, each with an
  optional :port that must then match too.

A kubeconfig cluster's proxy-url wins over the environment (client-go does
the same). Prometheus servers are not proxied: their flags say where they
are, and the variables are often set for other tools.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": "80", "https": "443", "socks5": "1080"}


def _env(environ: Mapping[str, str], *names: str) -> str:
    for name in names:
        if environ.get(name):
            return environ[name]
    return ""


def _parse_proxy(value: str) -> str | None:
    """httpproxy.parseProxy (Go 1.26): a URL with a scheme and a host as it
    is, anything else taken as http://<value>; None when neither parses."""
    if not value:
        return None
    try:
        parts = urlsplit(value)
        if parts.scheme and parts.netloc:
            parts.port  # noqa: B018  (a bad port fails url.Parse too)
            return value
    except ValueError:
        pass
    try:
        urlsplit("http://" + value).port  # noqa: B018
    except ValueError:
        return None
    return "http://" + value


def _split_host_port(text: str) -> tuple[str, str] | None:
    """net.SplitHostPort for the forms NO_PROXY entries take."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            return None
        return text[1:end], text[end + 2 :]
    if text.count(":") != 1:
        return None
    host, port = text.split(":")
    return host, port


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """net.ParseIP, with an IPv4-mapped IPv6 address taken as the IPv4 one
    (Go compares them as equal, and IPv4 networks contain them)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class _Domain:
    suffix: str  # always with its leading "."
    port: str
    match_host: bool  # the entry had no leading ".": the domain itself matches too

    def matches(self, host: str, port: str) -> bool:
        if host.endswith(self.suffix) or (self.match_host and host == self.suffix[1:]):
            return not self.port or self.port == port
        return False


@dataclass(frozen=True)
class NoProxy:
    everything: bool = False
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    ips: tuple[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str], ...] = ()
    domains: tuple[_Domain, ...] = ()

    @classmethod
    def parse(cls, text: str) -> NoProxy:
        networks, ips, domains = [], [], []
        for raw in text.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                return cls(everything=True)
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                    continue
                except ValueError:
                    pass
            split = _split_host_port(entry)
            if split is not None:
                host, port = split
                if not host:
                    continue  # no host part: malformed, ignored
            else:
                host, port = entry, ""
            ip = _ip(host)
            if ip is not None:
                ips.append((ip, port))
                continue
            if host.startswith("*."):
                host = host[1:]
            match_host = not host.startswith(".")
            domains.append(_Domain("." + host if match_host else host, port, match_host))
        return cls(False, tuple(networks), tuple(ips), tuple(domains))

    def bypasses(self, host: str, port: str) -> bool:
        if self.everything:
            return True
        ip = _ip(host)
        if ip is not None:
            # An IP never matches a domain entry.
            return any(ip in net for net in self.networks) or any(
                ip == known and (not p or p == port) for known, p in self.ips
            )
        return any(domain.matches(host, port) for domain in self.domains)


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy to reach `url` through, or None: ProxyFromEnvironment."""
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    if parts.scheme == "https":
        proxy = _parse_proxy(_env(env, "HTTPS_PROXY", "https_proxy"))
    elif parts.scheme == "http":
        proxy = _parse_proxy(_env(env, "HTTP_PROXY", "http_proxy"))
    else:
        proxy = None
    if proxy is None:
        return None
    # url.Hostname(): the host as written (Go does not lower its case, so
    # only "localhost" itself is exempt), brackets of an IPv6 address removed.
    netloc = parts.netloc.rpartition("@")[2]
    if netloc.startswith("["):
        raw = netloc[1 : netloc.find("]")]
    else:
        raw = netloc.rpartition(":")[0] if ":" in netloc else netloc
    port = str(parts.port) if parts.port else _DEFAULT_PORTS.get(parts.scheme, "")
    if not raw or raw == "localhost":
        return None
    host = raw.lower()
    ip = _ip(host)
    if ip is not None and ip.is_loopback:
        return None
    if NoProxy.parse(_env(env, "NO_PROXY", "no_proxy")).bypasses(host, port):
        return None
    return proxy
