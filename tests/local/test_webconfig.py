"""--web.config.file against real TLS clients and a real `serve` process.

Certificates are made with the openssl CLI; clients are Python's ssl module
(http.client) and aiohttp, as a Prometheus scrape would connect: server
verification on, client certificates for mTLS, basic auth.
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import yaml

from coverage_exporter.web.config import WebConfigError, parse

HASH_COST = 4  # bcrypt's minimum: the format is what matters here, not the cost


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
        "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=d,
    )  # fmt: skip


def make_leaf(d: Path, name: str, ca: str, usage: str) -> None:
    (d / f"{name}.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", f"/CN={name}", cwd=d,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_ca(d, "new-ca")
    make_leaf(d, "server", "ca", "serverAuth")
    make_leaf(d, "new-server", "new-ca", "serverAuth")
    make_leaf(d, "client", "ca", "clientAuth")
    make_leaf(d, "stranger", "other-ca", "clientAuth")
    return d


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(HASH_COST)).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Exporter:
    """A real `coverage-exporter serve`; Kubernetes points at a closed
    loopback port, so the process serves while its source is down."""

    def __init__(self, workdir: Path, config: dict) -> None:
        self.config_path = workdir / "web-config.yml"
        self.write(config)
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
                    "users": [{"name": "u", "user": {"token": "x"}}],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "c",
                }
            )
        )
        self.port = free_port()
        self.log = workdir / "exporter.log"
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "coverage_exporter.cli", "serve",
                f"--kubeconfig={kubeconfig}", f"--web.listen-address=127.0.0.1:{self.port}",
                f"--web.config.file={self.config_path}", "--log.level=debug",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise AssertionError("exporter did not listen: " + self.log.read_text())

    def write(self, config: dict) -> None:
        # Replace atomically with a new mtime, as a Secret volume update does.
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config))
        os.replace(tmp, self.config_path)
        stamp = time.time() + 1 if not hasattr(self, "_stamp") else self._stamp + 1
        self._stamp = stamp
        os.utime(self.config_path, (stamp, stamp))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[callable]:
    started: list[Exporter] = []

    def start(config: dict) -> Exporter:
        e = Exporter(tmp_path, config)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()


def client_context(pki: Path, ca: str = "ca", cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / f"{ca}.crt"))
    if cert:
        ctx.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    return ctx


def get(
    port: int,
    path: str = "/-/healthy",
    ctx: ssl.SSLContext | None = None,
    auth: tuple[str, str] | None = None,
) -> tuple[int, str]:
    conn = (
        http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        if ctx
        else http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    )
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def tls(pki: Path, **extra: str) -> dict:
    return {"cert_file": str(pki / "server.crt"), "key_file": str(pki / "server.key"), **extra}


def test_tls_serves_https_only(pki: Path, exporter) -> None:
    e = exporter({"tls_server_config": tls(pki)})
    status, body = get(e.port, ctx=client_context(pki))
    assert status == 200 and "healthy" in body
    status, body = get(e.port, "/metrics", ctx=client_context(pki))
    assert "scrape_coverage_source_up" in body
    # A plain-HTTP client gets no answer it can use.
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        status, _ = get(e.port)
        assert status == 400  # aiohttp never sees plain HTTP on a TLS socket
        raise ConnectionError
    # A client that does not trust the server's CA refuses it.
    with pytest.raises(ssl.SSLCertVerificationError):
        get(e.port, ctx=client_context(pki, ca="other-ca"))


def test_client_certificates_required_and_verified(pki: Path, exporter) -> None:
    e = exporter(
        {
            "tls_server_config": tls(
                pki,
                client_auth_type="RequireAndVerifyClientCert",
                client_ca_file=str(pki / "ca.crt"),
            )
        }
    )
    assert get(e.port, ctx=client_context(pki, cert="client"))[0] == 200
    for cert in (None, "stranger"):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get(e.port, ctx=client_context(pki, cert=cert))


def test_basic_auth_with_bcrypt_hashes(pki: Path, exporter) -> None:
    e = exporter(
        {"tls_server_config": tls(pki), "basic_auth_users": {"prometheus": hashed("s3cret")}}
    )
    ctx = client_context(pki)
    for path in ("/metrics", "/", "/report"):
        assert get(e.port, path, ctx=ctx)[0] == 401, path
        assert get(e.port, path, ctx=ctx, auth=("prometheus", "wrong"))[0] == 401, path
        assert get(e.port, path, ctx=ctx, auth=("nobody", "s3cret"))[0] == 401, path
    assert get(e.port, "/metrics", ctx=ctx, auth=("prometheus", "s3cret"))[0] == 200


def test_probe_paths_answer_without_credentials(pki: Path, exporter) -> None:
    """A kubelet probe cannot read a Secret: credentials would have to sit in
    the pod spec in clear. /-/healthy and /-/ready answer without them (as
    kube-apiserver's /livez and /readyz do for system:unauthenticated);
    their bodies are fixed phrases. Everything else still needs them."""
    e = exporter(
        {"tls_server_config": tls(pki), "basic_auth_users": {"prometheus": hashed("s3cret")}}
    )
    ctx = client_context(pki)
    status, body = get(e.port, "/-/healthy", ctx=ctx)
    assert (status, body) == (200, "coverage-exporter is healthy.\n")
    status, body = get(e.port, "/-/ready", ctx=ctx, auth=("prometheus", "wrong"))
    assert status in (200, 503) and body.startswith("coverage-exporter is "), body
    # Exact paths only: no prefix, suffix or case variant slips through.
    for path in ("/-/healthy/", "/-/healthyx", "/-/HEALTHY", "/-/healthy/../metrics"):
        assert get(e.port, path, ctx=ctx)[0] == 401, path


def test_users_and_certificates_are_re_read_when_the_file_changes(pki: Path, exporter) -> None:
    e = exporter({"tls_server_config": tls(pki), "basic_auth_users": {"old": hashed("a")}})
    ctx = client_context(pki)
    assert get(e.port, "/metrics", ctx=ctx, auth=("old", "a"))[0] == 200
    e.write(
        {
            "tls_server_config": {
                "cert_file": str(pki / "new-server.crt"),
                "key_file": str(pki / "new-server.key"),
            },
            "basic_auth_users": {"new": hashed("b")},
        }
    )
    # The next handshake presents the new certificate: the old CA no longer
    # verifies it, the new one does; the user list changed with it.
    with pytest.raises(ssl.SSLCertVerificationError):
        get(e.port, ctx=ctx)
    new_ctx = client_context(pki, ca="new-ca")
    assert get(e.port, "/metrics", ctx=new_ctx, auth=("old", "a"))[0] == 401
    assert get(e.port, "/metrics", ctx=new_ctx, auth=("new", "b"))[0] == 200
    assert "re-read" in e.log.read_text()


def test_a_broken_file_fails_closed_until_fixed(exporter) -> None:
    e = exporter({"basic_auth_users": {"u": hashed("p")}})
    assert get(e.port, auth=("u", "p"))[0] == 200
    e.write({"basic_auth_users": {"u": "not-a-hash"}})
    status, body = get(e.port, auth=("u", "p"))
    assert status == 500 and "invalid" in body
    e.write({"basic_auth_users": {"u": hashed("p")}})
    assert get(e.port, auth=("u", "p"))[0] == 200


async def test_aiohttp_client_with_mtls_and_basic_auth(pki: Path, exporter) -> None:
    e = exporter(
        {
            "tls_server_config": tls(
                pki,
                client_auth_type="VerifyClientCertIfGiven",
                client_ca_file=str(pki / "ca.crt"),
                min_version="TLS13",
            ),
            "basic_auth_users": {"prometheus": hashed("pw")},
            "http_server_config": {"headers": {"X-Frame-Options": "deny"}},
        }
    )
    url = f"https://127.0.0.1:{e.port}/metrics"
    auth = {"Authorization": "Basic " + base64.b64encode(b"prometheus:pw").decode()}
    async with aiohttp.ClientSession() as session:
        ctx = client_context(pki, cert="client")
        async with session.get(url, ssl=ctx, headers=auth) as response:
            assert response.status == 200
            assert response.headers["X-Frame-Options"] == "deny"
            assert "scrape_coverage_build_info" in await response.text()
        # min_version TLS13: a TLS 1.2 client is refused.
        old = client_context(pki)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(aiohttp.ClientError):
            async with session.get(url, ssl=old, headers=auth):
                pass


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"tls_server_config": {"cert_file": "a.crt"}}, "go together"),
        ({"tls_server_config": {"cert_file": "a", "key_file": "b", "ciphers": []}}, "unknown"),
        (
            {"tls_server_config": {"cert_file": "a", "key_file": "b", "cipher_suites": []}},
            "not supported",
        ),
        (
            {
                "tls_server_config": {
                    "cert_file": "a",
                    "key_file": "b",
                    "client_auth_type": "RequireAnyClientCert",
                    "client_ca_file": "c",
                }
            },
            "not supported",
        ),
        (
            {"tls_server_config": {"cert_file": "a", "key_file": "b", "client_ca_file": "c"}},
            "client_auth_type",
        ),
        ({"basic_auth_users": {"u": "plain"}}, "bcrypt"),
        ({"basic_auth_user": {}}, "unknown"),
        ({"tls_server_config": {"cert_file": "a", "key_file": "b", "min_version": "1.2"}}, "TLS1"),
        # Header values: a CR or LF injects headers, a non-ASCII value broke
        # every answer; names and enumerated values as the exporter-toolkit.
        (
            {"http_server_config": {"headers": {"Content-Security-Policy": "a\r\nX-Evil: 1"}}},
            "printable ASCII",
        ),
        (
            {"http_server_config": {"headers": {"Strict-Transport-Security": "max-age=1\n"}}},
            "printable ASCII",
        ),
        ({"http_server_config": {"headers": {"X-XSS-Protection": "bl\u00e5"}}}, "printable ASCII"),
        ({"http_server_config": {"headers": {"X-Frame-Options": "allow"}}}, "one of"),
        ({"http_server_config": {"headers": {"Set-Cookie": "a=b"}}}, "can not be configured"),
        ({"http_server_config": {"headers": {"X-Content-Type-Options": 1}}}, "printable"),
    ],
)
def test_invalid_configs_are_refused_with_the_field(config: dict, message: str) -> None:
    with pytest.raises(WebConfigError, match=message):
        parse(yaml.safe_dump(config), Path("/etc/web"))


def test_relative_paths_are_relative_to_the_file() -> None:
    config = parse("tls_server_config: {cert_file: tls.crt, key_file: tls.key}\n", Path("/etc/w"))
    assert config.tls is not None
    assert config.tls.cert_file == Path("/etc/w/tls.crt")


def test_serve_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "web.yml"
    bad.write_text("tls_server_config: {cert_file: missing.crt, key_file: missing.key}\n")
    done = subprocess.run(
        [
            sys.executable, "-m", "coverage_exporter.cli", "serve",
            f"--web.config.file={bad}", f"--web.listen-address=127.0.0.1:{free_port()}",
            "--kubeconfig=/nonexistent",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot load certificates" in done.stderr


def test_allowed_headers_are_kept() -> None:
    config = parse(
        yaml.safe_dump(
            {
                "http_server_config": {
                    "headers": {
                        "X-Frame-Options": "deny",
                        "Content-Security-Policy": "default-src 'none'",
                    }
                }
            }
        ),
        Path("/etc/web"),
    )
    assert config.headers == {
        "X-Frame-Options": "deny",
        "Content-Security-Policy": "default-src 'none'",
    }


async def test_wrong_passwords_never_grow_the_cache_past_its_size(tmp_path: Path) -> None:
    """Before: one cache entry per wrong password, for ever."""
    from coverage_exporter.web.config import PASSWORD_CACHE_SIZE, WebConfigFile

    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": hashed("right")}}))
    config = WebConfigFile(path)
    assert await config.password_ok("prometheus", "right")
    for i in range(300):
        assert await config.password_ok("prometheus", f"wrong-{i}") is False
    assert len(config._passwords) <= PASSWORD_CACHE_SIZE
    # The scraper's good entry is kept apart: guesses never evict it.
    assert len(config._good) == 1
    assert await config.password_ok("prometheus", "right")
