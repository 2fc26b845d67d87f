"""`audit` as a user runs it from a laptop, against the real testbed: progress
on a terminal, the verdict's exit code, and an API server reached through
HTTPS_PROXY as kubectl would reach it."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from testbed.cluster import Cluster

BINARY = Path(sys.executable).parent / "coverage-exporter"


def audit_args(testbed: Cluster, kubeconfig: Path | None = None) -> list[str]:
    url = testbed.prometheus_urls["prometheus-3"]
    return [
        str(BINARY), "audit", "--kubeconfig", str(kubeconfig or testbed.kubeconfig),
        "--prometheus-url", f"prometheus-3={url}", "--output", "json",
    ]  # fmt: skip


def test_progress_on_a_terminal_never_touches_the_output(testbed: Cluster, tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    # The JSON goes to a file: through a pipe read only after the terminal
    # closes, the audit blocked on the full pipe (64 KiB) and the loop below
    # waited its whole 120 s for a terminal that never closed.
    output = tmp_path / "audit.json"
    try:
        with output.open("w") as out_file:
            process = subprocess.Popen(
                audit_args(testbed), stdout=out_file, stderr=terminal, text=True
            )
        os.close(terminal)
        seen = b""
        while True:
            ready, _, _ = select.select([controller], [], [], 120)
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            seen += chunk
        process.wait(timeout=120)
        out = output.read_text()
    finally:
        os.close(controller)
    text = seen.decode("utf-8", "replace")
    assert process.returncode == 1, text  # the testbed has gaps
    assert "audit: kubernetes:" in text and "prometheus-3:" in text
    assert "\r\x1b[K" in text  # rewritten in place, cleared at the end
    assert json.loads(out)["verdict"] == "gaps found"
    # Not on a terminal (a CI log, a pipe): no progress at all.
    piped = subprocess.run(audit_args(testbed), capture_output=True, text=True, timeout=180)
    assert piped.returncode == 1
    assert "audit: kubernetes" not in piped.stderr and "\x1b" not in piped.stderr


class ConnectProxy:
    """An HTTP CONNECT proxy on loopback that tunnels every CONNECT to one
    address and records what it was asked for. Not a real proxy: a real one
    would resolve the asked name through DNS, which this machine must not
    query; the name is the point here, the tunnel is plain bytes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.asked: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()
        server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        self.asked.append(f"{method} {target}")
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                             return_exceptions=True)  # fmt: skip

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def proxy(testbed: Cluster) -> Iterator[ConnectProxy]:
    host, port = testbed.api_url.removeprefix("https://").rsplit(":", 1)
    p = ConnectProxy((host, int(port)))
    yield p
    p.close()


def test_the_api_server_is_reached_through_https_proxy(
    testbed: Cluster, proxy: ConnectProxy, tmp_path: Path
) -> None:
    # The API server under a name only the proxy can reach, as behind a
    # corporate proxy; its certificate names "kubernetes".
    port = testbed.api_url.rsplit(":", 1)[1]
    kubeconfig = testbed.write_kubeconfig(tmp_path / "kubeconfig")
    config = yaml.safe_load(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://kube.example.invalid:{port}"
    config["clusters"][0]["cluster"]["tls-server-name"] = "kubernetes"
    kubeconfig.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HTTPS_PROXY": f"127.0.0.1:{proxy.port}", "NO_PROXY": "localhost"}
    done = subprocess.run(
        audit_args(testbed, kubeconfig), capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 1, done.stderr  # judged: the testbed's gaps
    assert json.loads(done.stdout)["verdict"] == "gaps found"
    assert f"CONNECT kube.example.invalid:{port}" in proxy.asked
    assert all(a.startswith("CONNECT kube.example.invalid:") for a in proxy.asked)


def test_a_kubeconfig_that_is_not_one_is_a_usage_error(testbed: Cluster, tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("clusters: [unclosed\n")
    done = subprocess.run(audit_args(testbed, bad), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"kubeconfig {bad}: not YAML at line 2" in done.stderr
    doc = json.loads(done.stdout)  # the document all the same
    assert doc["version"] == 1 and doc["sources"][0]["up"] is False
