"""HTTPS_PROXY and NO_PROXY for the Kubernetes API as client-go reads them:
the cases of Go's own golang.org/x/net/http/httpproxy tests (proxy_test.go:
proxyForURLTests, UseProxyTests, TestInvalidNoProxy, TestAllNoProxy), run
against coverage_exporter/sources/kubernetes/proxy_env.py. IDN cases are left out:
the exporter does not convert internationalized names to punycode."""

from __future__ import annotations

import pytest

from coverage_exporter.sources.kubernetes.proxy_env import proxy_for


@pytest.mark.parametrize(
    ("env", "url", "want"),
    [
        ({"HTTP_PROXY": "127.0.0.1:8080"}, "http://example.com", "http://127.0.0.1:8080"),
        ({"HTTP_PROXY": "cache.corp.example.com:1234"}, "http://example.com",
         "http://cache.corp.example.com:1234"),
        ({"HTTP_PROXY": "cache.corp.example.com"}, "http://example.com",
         "http://cache.corp.example.com"),
        ({"HTTP_PROXY": "localhost"}, "http://example.com", "http://localhost"),
        ({"HTTP_PROXY": "https://cache.corp.example.com"}, "http://example.com",
         "https://cache.corp.example.com"),
        ({"HTTP_PROXY": "http://127.0.0.1:8080"}, "http://example.com", "http://127.0.0.1:8080"),
        ({"HTTP_PROXY": "https://127.0.0.1:8080"}, "http://example.com",
         "https://127.0.0.1:8080"),
        ({"HTTP_PROXY": "socks5://127.0.0.1"}, "http://example.com", "socks5://127.0.0.1"),
        ({"HTTP_PROXY": "foo://host"}, "http://example.com", "foo://host"),
        ({"HTTP_PROXY": "http.proxy.tld", "HTTPS_PROXY": "secure.proxy.tld"},
         "http://insecure.tld/", "http://http.proxy.tld"),
        ({"HTTP_PROXY": "http.proxy.tld", "HTTPS_PROXY": "secure.proxy.tld"},
         "https://secure.tld/", "http://secure.proxy.tld"),
        ({"HTTP_PROXY": "http.proxy.tld", "HTTPS_PROXY": "https://secure.proxy.tld"},
         "https://secure.tld/", "https://secure.proxy.tld"),
        ({"HTTP_PROXY": "http.proxy.tld"}, "https://secure.tld/", None),
        ({"HTTP_PROXY": "http.proxy.tld"}, "ftp://insecure.tld/", None),
        ({}, "http://example.com", None),
        ({"NO_PROXY": "example.com", "HTTP_PROXY": "proxy"}, "http://example.com/", None),
        ({"NO_PROXY": ".example.com", "HTTP_PROXY": "proxy"}, "http://example.com/",
         "http://proxy"),
        ({"NO_PROXY": "ample.com", "HTTP_PROXY": "proxy"}, "http://example.com/", "http://proxy"),
        ({"NO_PROXY": "example.com", "HTTP_PROXY": "proxy"}, "http://foo.example.com/", None),
        ({"NO_PROXY": ".foo.com", "HTTP_PROXY": "proxy"}, "http://example.com/", "http://proxy"),
        # Lower-case names are read too; the upper-case one wins.
        ({"https_proxy": "lower:1"}, "https://kube.example:6443", "http://lower:1"),
        ({"HTTPS_PROXY": "upper:1", "https_proxy": "lower:1"}, "https://kube.example:6443",
         "http://upper:1"),
        ({"HTTPS_PROXY": "p:1", "no_proxy": "kube.example"}, "https://kube.example:6443", None),
        # Only "localhost" itself and loopback IPs are exempt, as Go has it.
        ({"HTTPS_PROXY": "p:1"}, "https://localhost:6443", None),
        ({"HTTPS_PROXY": "p:1"}, "https://127.0.0.1:6443", None),
        ({"HTTPS_PROXY": "p:1"}, "https://[::1]:6443", None),
        ({"HTTPS_PROXY": "p:1"}, "https://[::ffff:127.0.0.1]:6443", None),
        ({"HTTPS_PROXY": "p:1"}, "https://LOCALHOST:6443", "http://p:1"),
        ({"HTTPS_PROXY": "p:1"}, "https://localhost.localdomain:6443", "http://p:1"),
    ],
)  # fmt: skip
def test_proxy_for_url(env: dict[str, str], url: str, want: str | None) -> None:
    assert proxy_for(url, env) == want


NO_PROXY = (
    "foobar.com, .barbaz.net, *.wildcard.io, 192.168.1.1, 192.168.1.2:81, 192.168.1.3:80, "
    "10.0.0.0/30, 2001:db8::52:0:1, [2001:db8::52:0:2]:443, [2001:db8::52:0:3]:80, "
    "2002:db8:a::45/64"
)
USE_PROXY = [
    ("localhost", False), ("127.0.0.1", False), ("127.0.0.2", False), ("[::1]", False),
    ("[::2]", True), ("192.168.1.1", False), ("192.168.1.2", True), ("192.168.1.3", False),
    ("192.168.1.4", True), ("10.0.0.2", False), ("[2001:db8::52:0:1]", False),
    ("[2001:db8::52:0:2]", True), ("[2001:db8::52:0:3]", False), ("[2002:db8:a::123]", False),
    ("[fe80::424b:c8be:1643:a1b6]", True), ("barbaz.net", True), ("www.barbaz.net", False),
    ("foobar.com", False), ("www.foobar.com", False), ("foofoobar.com", True),
    ("baz.com", True), ("localhost.net", True), ("local.localhost", True),
    ("barbarbaz.net", True), ("wildcard.io", True), ("nested.wildcard.io", False),
    ("awildcard.io", True),
]  # fmt: skip


@pytest.mark.parametrize(("host", "proxied"), USE_PROXY)
def test_no_proxy_matching(host: str, proxied: bool) -> None:
    env = {"HTTP_PROXY": "proxy:3128", "NO_PROXY": NO_PROXY}
    assert (proxy_for(f"http://{host}:80", env) is not None) is proxied


@pytest.mark.parametrize(("host", "proxied"), USE_PROXY)
def test_no_proxy_star_matches_everything(host: str, proxied: bool) -> None:
    assert proxy_for(f"http://{host}:80", {"HTTP_PROXY": "p:1", "NO_PROXY": "*"}) is None


def test_an_entry_without_a_host_is_ignored() -> None:
    assert proxy_for("http://example.com:80", {"HTTP_PROXY": "p:1", "NO_PROXY": ":1"}) == (
        "http://p:1"
    )
