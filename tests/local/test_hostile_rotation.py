"""Credentials that change under a running exporter: a kubeconfig tokenFile
rewritten, an exec plugin whose token the API stopped taking, a CA bundle
and a server certificate rotated under a Prometheus. None may need a
restart. (The real apiserver version is in tests/e2e/test_faults.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from coverage_exporter.sources import httpclient
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.kubernetes.source import KubernetesSource
from coverage_exporter.sources.prometheus.source import PrometheusEndpoint, PrometheusSource
from fakes.apiserver import FakeApiServer, node
from fakes.prometheus import FakePrometheus
from tests.local.test_reflector import until
from tests.unit.test_kubeconfig import write_kubeconfig


@pytest.fixture
async def apiserver():
    fake = FakeApiServer()
    await fake.start()
    yield fake
    await fake.stop()


async def test_a_rotated_token_file_is_used_without_a_restart(
    tmp_path: Path, apiserver: FakeApiServer
) -> None:
    """The client reads tokenFile once at load; a projected token that the
    kubelet rewrites would have been sent stale until it expired."""
    token = tmp_path / "token"
    token.write_text("first\n")
    kubeconfig = write_kubeconfig(
        tmp_path / "kc", {"tokenFile": str(token)}, {"server": apiserver.url}
    )
    apiserver.put("nodes", node("a"))
    source = KubernetesSource(kubeconfig=str(kubeconfig))
    await source.start()
    try:
        assert await source.wait_synced(5)
        assert source._api is not None
        auth = source._api._auth
        assert str(token) in auth.files
        auth.check_seconds = 0.0
        assert apiserver.requests[-1].authorization == "Bearer first"
        token.write_text("second\n")
        apiserver.drop_watches()  # the next requests are new watches
        await until(lambda: apiserver.requests[-1].authorization == "Bearer second")
        assert auth.reloads_total == 1
    finally:
        await source.stop()


async def test_a_refused_exec_token_runs_the_plugin_again(
    tmp_path: Path, apiserver: FakeApiServer
) -> None:
    """An exec plugin without expirationTimestamp was run once for good; a
    token the API then refuses (401) kept being sent."""
    counter = tmp_path / "count"
    counter.write_text("0")
    script = tmp_path / "plugin.py"
    script.write_text(
        "import json, pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) + 1\n"
        "p.write_text(str(n))\n"
        "json.dump({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',"
        " 'status': {'token': f'exec-{n}'}}, sys.stdout)\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script)],
            "interactiveMode": "Never",
        }
    }
    kubeconfig = write_kubeconfig(tmp_path / "kc", user, {"server": apiserver.url})
    refused = 0

    async def unauthorized(request: web.Request) -> web.Response:
        nonlocal refused
        if request.headers.get("Authorization") == "Bearer exec-1":
            refused += 1
            return web.json_response(
                {
                    "kind": "Status",
                    "code": 401,
                    "reason": "Unauthorized",
                    "message": "Unauthorized",
                },
                status=401,
            )
        apiserver.overrides.pop(("nodes", "list"))
        return await apiserver._handle(request)

    apiserver.overrides[("nodes", "list")] = unauthorized
    source = KubernetesSource(kubeconfig=str(kubeconfig))
    await source.start()
    try:
        assert await source.wait_synced(10)
        assert refused == 1
        assert apiserver.requests[-1].authorization == "Bearer exec-2"
    finally:
        await source.stop()


async def test_a_hung_exec_plugin_fails_within_its_timeout(
    tmp_path: Path, apiserver: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the plugin ran with no timeout (holding the auth lock on a
    refresh): the source waited on it for as long as it hung."""
    from coverage_exporter.sources.kubernetes import kubeconfig

    monkeypatch.setattr(kubeconfig, "EXEC_TIMEOUT_SECONDS", 1.0)
    pid_file = tmp_path / "pid"
    script = tmp_path / "plugin.py"
    script.write_text(
        "import os, pathlib, time\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(60)\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script)],
            "interactiveMode": "Never",
        }
    }
    kubeconfig_path = write_kubeconfig(tmp_path / "kc", user, {"server": apiserver.url})
    source = KubernetesSource(kubeconfig=str(kubeconfig_path))
    try:
        with pytest.raises(SourceError, match="did not finish within 1s"):
            await asyncio.wait_for(source.start(), 30)
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        await source.stop()


# --- TLS files -------------------------------------------------------------------------


def make_ca_and_cert(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / f"{name}-ca.pem", directory / f"{name}-ca.key"
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    csr = directory / f"{name}.csr"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}-ca",
        "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key),
        "-out", str(csr))  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "1", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return ca, cert, key


@pytest.fixture(scope="module")
def two_pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[Path, ...], ...]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed (scripts/setup.sh installs it)")
    directory = tmp_path_factory.mktemp("pki")
    return make_ca_and_cert(directory, "old"), make_ca_and_cert(directory, "new")


async def test_a_rotated_ca_bundle_is_picked_up_by_a_running_prometheus_source(
    tmp_path: Path, two_pkis: tuple[tuple[Path, ...], ...]
) -> None:
    """The TLS context was built once at start: after the server moved to a
    certificate from a new CA, only a restart could follow it."""
    (old_ca, _, _), (new_ca, new_cert, new_key) = two_pkis
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(new_cert, new_key)
    ca_file = tmp_path / "ca.pem"
    shutil.copy(old_ca, ca_file)
    fake = FakePrometheus()
    srv = TestServer(fake.app, host="127.0.0.1")
    await srv.start_server(ssl=server_ctx)
    if True:
        url = f"https://127.0.0.1:{srv.port}"
        source = PrometheusSource(PrometheusEndpoint(url=url, ca_file=str(ca_file)))
        source._tls._check_seconds = 0.0
        try:
            not_trusted = r"TLS certificate of 127\.0\.0\.1:[0-9]+ not accepted"
            with pytest.raises(SourceError, match=not_trusted):
                await source.collect()
            # A rotation caught half-written keeps the old context.
            ca_file.write_text("-----BEGIN CERTIFICATE-----\ntrunc")
            with pytest.raises(SourceError):
                await source.collect()
            assert source._tls.reloads_total == 0
            shutil.copy(new_ca, ca_file)
            assert len((await source.collect()).targets) == 6
            assert source.health.up and source._tls.reloads_total == 1
        finally:
            await source.close()
            await srv.close()


def test_reloading_tls_rebuilds_only_when_a_file_changed(
    tmp_path: Path, two_pkis: tuple[tuple[Path, ...], ...]
) -> None:
    (old_ca, old_cert, old_key), (new_ca, _, _) = two_pkis
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    shutil.copy(old_cert, cert)
    shutil.copy(old_key, key)
    tls = httpclient.ReloadingTLS(
        ca_file=str(old_ca), cert_file=str(cert), key_file=str(key), check_seconds=0.0
    )
    first = tls.context()
    assert tls.context() is first
    shutil.copy(new_ca, cert)  # a certificate without its key: does not load
    assert tls.context() is first
    shutil.copy(old_cert, cert)
    assert tls.context() is not first and tls.reloads_total == 1
