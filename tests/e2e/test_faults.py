"""Faults against the real testbed: what the exporter shows while a part of
the world is broken, and that it comes back by itself.

For each fault: no crash; `scrape_coverage_source_up 0` for the failed
source within a cycle or two; never a false zero (the gaps keep their last
known values); one clear log line; recovery after the fault ends; memory
bounded (RSS printed at each step, and checked against the start).

One exporter process (`serve`, interval 3s, source deadline 15s) for the
module, reading Kubernetes through a kubeconfig whose `tokenFile` the
tests rewrite, and two Prometheus: prometheus-2 directly, prometheus-3
through a loopback proxy that can be told to delay every byte. The etcd
compaction test drives the Kubernetes source in-process against a second,
uncached kube-apiserver on the testbed's etcd (tests/fixtures/capture.py
says why), compacting etcd through its own API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from coverage_exporter import logs
from coverage_exporter.sources.kubernetes.source import KubernetesSource
from testbed import scenarios as s
from testbed.cluster import Cluster
from testbed.kube import Kube
from testbed.procs import free_ports, port_refuses
from tests.e2e.test_exporter_e2e import Exporter, eventually, prometheus_sees
from tests.fixtures.capture import compact_etcd, uncached_apiserver

N = s.DEFAULT_NODES
INTERVAL = "3"
DEADLINE = "15"
GAP = {"namespace": "monitoring", "service": "node-exporter", "stage": "endpoints"}
KUBE = {"source": "kubernetes", "server": ""}
PROM_DIRECT = "prom-2"
PROM_PROXIED = "prom-3-via-proxy"


class DelayingProxy:
    """A TCP proxy on 127.0.0.1 that holds every chunk from the server for
    `delay` seconds: a Prometheus on a congested link. Threads, bounded by
    the few connections the exporter opens."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.delay = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, delay: float | None) -> None:
        src.settimeout(None)
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if delay is None and self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()


def rss_mib(exporter: Exporter) -> float:
    value = exporter.value("process_resident_memory_bytes")
    assert value is not None
    return value / (1 << 20)


def up(exporter: Exporter, **labels: str) -> float | None:
    return exporter.value("scrape_coverage_source_up", **labels)


def prom(name: str) -> dict[str, str]:
    return {"source": "prometheus", "server": name}


def per_pool(
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]],
    prometheus: str,
    by_health: bool = False,
) -> dict[tuple[tuple[str, str], ...], float]:
    """scrape_coverage_prometheus_targets of one Prometheus, per pool."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for labels, value in samples["scrape_coverage_prometheus_targets"].items():
        if dict(labels)["server"] == prometheus:
            kept = tuple(kv for kv in labels if by_health or kv[0] != "health")
            out[kept] = out.get(kept, 0.0) + value
    assert out, f"no targets of {prometheus}"
    return out


def restart_apiserver(testbed: Cluster) -> None:
    """SIGKILL, then start on the same port once the old one let it go (a
    start right after the kill can lose the race for the port)."""
    port = int(testbed.api_url.rsplit(":", 1)[1])
    testbed.stop("kube-apiserver", force=True)
    eventually(lambda: port_refuses(port), "the old apiserver to release its port", 30, 0.2)
    try:
        testbed.start("kube-apiserver")
    except RuntimeError:
        time.sleep(2)
        testbed.start("kube-apiserver")


def log_since(exporter: Exporter, offset: int) -> str:
    return exporter.log.read_bytes()[offset:].decode(errors="replace")


@pytest.fixture(scope="module")
def token_file(testbed: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("credentials") / "token"
    path.write_text(testbed.token + "\n")
    return path


@pytest.fixture(scope="module")
def proxy(testbed: Cluster) -> Iterator[DelayingProxy]:
    port = int(testbed.prometheus_urls["prometheus-3"].rsplit(":", 1)[1])
    p = DelayingProxy(port)
    yield p
    p.close()


@pytest.fixture(scope="module")
def exporter(
    testbed: Cluster,
    token_file: Path,
    proxy: DelayingProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Exporter]:
    # Start from a settled world: both Prometheus discovered the scenario.
    for url in testbed.prometheus_urls.values():
        eventually(lambda url=url: prometheus_sees(url, N), "Prometheus to discover the scenario")
    directory = tmp_path_factory.mktemp("faults")
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "t",
                        "cluster": {
                            "server": testbed.api_url,
                            "certificate-authority": str(testbed.ca_file),
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"tokenFile": str(token_file)}}],
                "contexts": [{"name": "t", "context": {"cluster": "t", "user": "u"}}],
                "current-context": "t",
            }
        )
    )
    log = directory / "exporter.log"
    address = f"127.0.0.1:{free_ports(1)[0]}"
    binary = Path(sys.executable).parent / "coverage-exporter"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--kubeconfig",
                str(kubeconfig),
                "--prometheus-url",
                f"{PROM_DIRECT}={testbed.prometheus_urls['prometheus-2']}",
                "--prometheus-url",
                f"{PROM_PROXIED}=http://127.0.0.1:{proxy.port}",
                "--prometheus-timeout",
                "30",
                "--source-deadline",
                DEADLINE,
                "--interval",
                INTERVAL,
                "--prometheus-full-refresh-interval",
                "0",
                "--web.listen-address",
                address,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    exp = Exporter(address, process, log)
    try:
        eventually(lambda: exp.get("/-/ready")[0] == 200, "the exporter to be ready", 180)
        eventually(
            lambda: exp.value("scrape_coverage_missing_targets", **GAP) == N - 1000,
            "the first complete comparison",
            120,
        )
        # Each Prometheus judged, its pools counted: on a testbed started
        # moments ago they are still discovering for up to the discovery
        # grace (2 min) and have no per-pool series yet, and the faults
        # below compare those series before and after.
        eventually(
            lambda: all(per_pool(exp.samples(), name) for name in (PROM_DIRECT, PROM_PROXIED)),
            "both Prometheus judged",
            180,
        )
        yield exp
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def baseline_rss(exporter: Exporter) -> float:
    rss = rss_mib(exporter)
    print(f"exporter RSS before the faults: {rss:.0f} MiB")
    return rss


def test_all_sources_up_before_the_faults(exporter: Exporter, baseline_rss: float) -> None:
    assert up(exporter, **KUBE) == 1
    assert up(exporter, **prom(PROM_DIRECT)) == 1
    assert up(exporter, **prom(PROM_PROXIED)) == 1
    assert baseline_rss > 0


def test_one_of_two_prometheus_killed_and_restarted(
    testbed: Cluster, exporter: Exporter, baseline_rss: float
) -> None:
    before = exporter.samples()
    offset = exporter.log.stat().st_size
    testbed.stop("prometheus-2", force=True)
    try:
        eventually(lambda: up(exporter, **prom(PROM_DIRECT)) == 0, "prom-2 down", 30)
        at_down = exporter.samples()
        start = exporter.cycles()
        eventually(lambda: exporter.cycles() >= start + 2, "two cycles with prom-2 down", 60)
        now = exporter.samples()
        # The other Prometheus is unaffected, and nothing turned into zero:
        # prom-2's targets keep their last known values, health split and all.
        assert up(exporter, **prom(PROM_PROXIED)) == 1
        assert per_pool(now, PROM_DIRECT, by_health=True) == per_pool(
            at_down, PROM_DIRECT, by_health=True
        )
        # (The split by health moves as Prometheus scrapes; the totals do not.)
        assert per_pool(now, PROM_DIRECT) == per_pool(before, PROM_DIRECT)
        assert per_pool(now, PROM_PROXIED) == per_pool(before, PROM_PROXIED)
        assert (
            now["scrape_coverage_prometheus_missing_targets"]
            == before["scrape_coverage_prometheus_missing_targets"]
        )
        assert exporter.value("scrape_coverage_missing_targets", **GAP) == N - 1000
        text = log_since(exporter, offset)
        assert any(
            f"server={PROM_DIRECT}" in line and "GET /api/v1/" in line
            for line in text.splitlines()
        ), text[-2000:]
        assert "Traceback" not in text
    finally:
        testbed.start("prometheus-2")
    started = time.monotonic()
    eventually(lambda: up(exporter, **prom(PROM_DIRECT)) == 1, "prom-2 back up", 60)
    print(
        f"prom-2 killed: recovered {time.monotonic() - started:.1f}s after its restart; "
        f"RSS {rss_mib(exporter):.0f} MiB"
    )


def test_a_slow_prometheus_is_cut_off_and_does_not_delay_the_other(
    exporter: Exporter, proxy: DelayingProxy
) -> None:
    offset = exporter.log.stat().st_size
    proxy.delay = 30.0
    try:
        eventually(lambda: up(exporter, **prom(PROM_PROXIED)) == 0, "the slow one down", 60)
        start = exporter.cycles()
        durations = []
        for _ in range(2):
            eventually(lambda last=start: exporter.cycles() > last, "a cycle", 30, every=0.5)
            start = exporter.cycles()
            durations.append(exporter.value("scrape_coverage_cycle_duration_seconds"))
        print(f"cycle durations with one Prometheus delayed 30s per chunk: {durations}")
        # The cycles are bounded by the deadline, not by the 20s delay or
        # the 30s request timeout; the other source stays fresh.
        assert all(d is not None and d < 2 * float(DEADLINE) for d in durations)
        assert up(exporter, **prom(PROM_DIRECT)) == 1
        assert up(exporter, **KUBE) == 1
        assert exporter.value("scrape_coverage_missing_targets", **GAP) == N - 1000
        text = log_since(exporter, offset)
        assert any(
            f"server={PROM_PROXIED}" in line
            and f"not done within the {DEADLINE}s source deadline" in line
            for line in text.splitlines()
        ), text[-2000:]
    finally:
        proxy.delay = 0.0
    eventually(lambda: up(exporter, **prom(PROM_PROXIED)) == 1, "the slow one back", 90)


def test_a_rotated_token_file_is_read_again(
    testbed: Cluster, exporter: Exporter, token_file: Path
) -> None:
    """The exporter follows its tokenFile: a revoked token written there
    shows as source_up 0 (401) once the connections are new, and the valid
    token written back brings it up, all without a restart. (The client
    library read tokenFile once: the old exporter kept the first token.)"""
    offset = exporter.log.stat().st_size
    token_file.write_text("revoked-token\n")
    try:
        # New connections only: the running watches were authenticated when
        # they opened. An apiserver restart makes every client reconnect.
        restart_apiserver(testbed)
        eventually(lambda: up(exporter, **KUBE) == 0, "kubernetes down, token revoked", 120)
        assert exporter.value("scrape_coverage_missing_targets", **GAP) == N - 1000
        text = log_since(exporter, offset)
        assert "401" in text and "Traceback" not in text, text[-2000:]
    finally:
        token_file.write_text(testbed.token + "\n")
        if not testbed.is_running("kube-apiserver"):
            testbed.start("kube-apiserver")
    started = time.monotonic()
    eventually(lambda: up(exporter, **KUBE) == 1, "kubernetes up with the rotated token", 120)
    print(f"token rotated back: kubernetes up again after {time.monotonic() - started:.1f}s")
    assert "credentials reloaded" in log_since(exporter, offset)


def test_memory_stayed_bounded_and_the_log_clean(exporter: Exporter, baseline_rss: float) -> None:
    rss = rss_mib(exporter)
    print(f"exporter RSS after the faults: {rss:.0f} MiB (before: {baseline_rss:.0f} MiB)")
    assert rss < baseline_rss * 1.5 + 64
    assert exporter.process.poll() is None
    assert "Traceback" not in exporter.log.read_text()


# --- etcd compaction: 410 on a continue token and on a watch ------------------------


def test_etcd_compaction_forces_410_on_continue_and_on_watch(
    testbed: Cluster, kube: Kube, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with uncached_apiserver(testbed, tmp_path / "uncached") as url:
        kubeconfig = tmp_path / "kubeconfig"
        testbed.write_kubeconfig(kubeconfig)
        config = yaml.safe_load(kubeconfig.read_text())
        config["clusters"][0]["cluster"]["server"] = url
        kubeconfig.write_text(yaml.safe_dump(config))
        with caplog.at_level(logging.INFO, logger="coverage_exporter.kubernetes"):
            asyncio.run(_compaction_scenario(testbed, kube, kubeconfig, url))
    messages = [logs.LogfmtFormatter().format(r) for r in caplog.records]
    assert any("continue token expired mid-list" in m for m in messages), messages
    # etcd answers a watch from a compacted revision with 410 Expired, or
    # now and then (the compaction raced the changes) with a 500 "PrevKv=nil"
    # ERROR event for the first event it lost: both are real, both relist.
    gone = any("too old" in m and "relisting" in m for m in messages)
    prevkv = any("PrevKv=nil" in m for m in messages) and any(
        "watch failed repeatedly; relisting" in m and "failures=3" in m for m in messages
    )
    print(f"watch after compaction: {'410 Expired' if gone else '500 PrevKv=nil'}, relisted")
    assert gone or prevkv, messages
    assert all(r.exc_info is None for r in caplog.records)


async def _compaction_scenario(testbed: Cluster, kube: Kube, kubeconfig: Path, url: str) -> None:
    source = KubernetesSource(kubeconfig=str(kubeconfig), page_size=100)
    await source.start()
    nodes = source.nodes
    assert nodes is not None
    api = nodes.api
    real_get = api.get
    compacted = asyncio.Event()

    async def get_then_compact(
        path: str, params: dict[str, str], accept: str | None = None
    ) -> bytes:
        # The server's answers stay real: between the first and second
        # page of the first nodes LIST, etcd is compacted through its API.
        body = await real_get(path, params, accept)
        if path == "/api/v1/nodes" and "continue" not in params and not compacted.is_set():
            compacted.set()
            await asyncio.to_thread(_patch_and_compact, testbed, kube, "first")
        return body

    api.get = get_then_compact  # type: ignore[method-assign]
    try:
        assert await source.wait_synced(120)
        assert compacted.is_set()
        # Never a partial list: the restarted LIST holds every node.
        assert len(nodes.cache) == N
        assert nodes.lists_total == 1
        # Now the watch: the exporter's connection is interrupted (its
        # reflector stopped, keeping its resourceVersion), etcd is compacted
        # past that resourceVersion, and the watch it resumes with gets the
        # real 410 Expired ERROR event: the reflector must relist.
        lists_before = nodes.lists_total
        phase_two = _Messages()
        logging.getLogger("coverage_exporter.kubernetes").addHandler(phase_two)
        await nodes.stop()
        await asyncio.to_thread(_patch_and_compact, testbed, kube, "second")
        nodes.start()
        await _eventually_async(lambda: nodes.lists_total > lists_before and nodes.healthy, 120)
        logging.getLogger("coverage_exporter.kubernetes").removeHandler(phase_two)
        # The resumed watch itself was refused as too old, and relisted.
        assert any("too old" in m and "relisting" in m for m in phase_two.messages) or any(
            "PrevKv=nil" in m for m in phase_two.messages
        ), phase_two.messages
        assert len(nodes.cache) == N
        labels = json.loads(await real_get("/api/v1/nodes/node-0001", {}))["metadata"]["labels"]
        assert labels.get("fault") == "second"
        source.snapshot()
        assert source.health.up
    finally:
        await source.stop()


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # The whole line: the error is a field of its own, not in msg.
        self.messages.append(logs.LogfmtFormatter().format(record))


def _patch_and_compact(testbed: Cluster, kube: Kube, value: str) -> None:
    for _ in range(3):
        kube.patch("/api/v1/nodes/node-0001", {"metadata": {"labels": {"fault": value}}})
    compact_etcd(testbed)


async def _eventually_async(check: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)
