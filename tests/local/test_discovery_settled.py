"""When a fresh server's discovery counts as delivered, from its own
/metrics (PrometheusSource.discovery_settled): on the real Prometheus 3.16,
then on the fake (fakes/prometheus.py) for the cases a real server does
not show on demand (a restart, counts that move)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from coverage_exporter.sources.prometheus import source as prometheus
from coverage_exporter.sources.prometheus.source import PrometheusEndpoint, PrometheusSource
from fakes.prometheus import V3_POOL_FILES, FakePrometheus
from testbed.cluster import find_binaries

K8S_POOL = "serviceMonitor/monitoring/node-exporter/0"
STATIC_POOL = "self"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_apiserver() -> Iterator[int]:
    """A Kubernetes API that accepts connections and never answers: the
    informers of a Kubernetes SD never list anything."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        yield int(s.getsockname()[1])


def start_prometheus(tmp: Path, name: str, jobs: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    directory = tmp / name
    directory.mkdir()
    config = directory / "prometheus.yml"
    static = f"- job_name: {STATIC_POOL}\n  static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    config.write_text("global: {scrape_interval: 5s}\nscrape_configs:\n" + static + jobs)
    binary = find_binaries(("3",)).prometheus["3"]
    process = subprocess.Popen(
        [
            str(binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(directory / "log").open("wb"),
    )
    return process, f"http://127.0.0.1:{port}"


async def test_a_real_prometheus_counts_a_pool_at_zero_before_discovery_lists_anything(
    tmp_path: Path, silent_apiserver: int
) -> None:
    """Prometheus 3.16 counts every pool on its /metrics from its first
    discovery send, at zero for a Kubernetes SD whose API never answered:
    a pool that is counted has not therefore been discovered. So a server
    with such a pool is never settled, however long it runs (it waits the
    grace period out), while the same server with only pools that deliver
    is settled once their counts hold still."""
    k8s_job = (
        f"- job_name: {K8S_POOL}\n"
        "  kubernetes_sd_configs:\n"
        f"  - {{role: endpointslice, api_server: 'http://127.0.0.1:{silent_apiserver}'}}\n"
    )
    waiting, waiting_url = start_prometheus(tmp_path, "waiting", k8s_job)
    delivered, delivered_url = start_prometheus(tmp_path, "delivered", "")
    try:
        waiting_source = PrometheusSource(PrometheusEndpoint(url=waiting_url))
        delivered_source = PrometheusSource(PrometheusEndpoint(url=delivered_url))
        async with waiting_source, delivered_source:
            counted_at_zero = settled_at = None
            deadline = time.monotonic() + 90
            # Until the delivering server is settled and the other has run
            # long past the first sends (20 s of uptime: what the first
            # draft of this rule took as "every pool has synced").
            while time.monotonic() < deadline:
                waiting_counts = await waiting_source.pool_target_counts()
                await delivered_source.pool_target_counts()
                if waiting_counts and waiting_counts.get(K8S_POOL) == 0:
                    counted_at_zero = counted_at_zero or waiting_counts
                assert not waiting_source.discovery_settled, waiting_counts
                if settled_at is None and delivered_source.discovery_settled:
                    settled_at = time.monotonic()
                started = waiting_source._started
                if settled_at is not None and started and time.time() - started > 22:
                    break
                await asyncio.sleep(1)
            assert counted_at_zero is not None and counted_at_zero[STATIC_POOL] == 1
            assert settled_at is not None, "a server whose pools deliver never settled"
            assert not waiting_source.discovery_settled
    finally:
        for process in (waiting, delivered):
            process.terminate()
        for process in (waiting, delivered):
            process.wait(timeout=30)


# --- on the fake: counts that move, a restart -----------------------------------------

START_HELP = b"# TYPE process_start_time_seconds gauge\n"
COUNTS_HELP = b"# TYPE prometheus_target_scrape_pool_targets gauge\n"


class Metrics:
    """The fake's /metrics, as the real server writes these two metrics."""

    def __init__(self, counts: dict[str, int], start: float) -> None:
        self.counts, self.start = counts, start

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        body = START_HELP + f"process_start_time_seconds {self.start}\n".encode() + COUNTS_HELP
        for pool, count in self.counts.items():
            line = f'prometheus_target_scrape_pool_targets{{scrape_job="{pool}"}} {count}\n'
            body += line.encode()
        return web.Response(body=body, content_type="text/plain")


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Metrics, PrometheusSource]]:
    monkeypatch.setattr(prometheus, "_SETTLE_SECONDS", 0.3)
    server = FakePrometheus()
    metrics = Metrics(dict.fromkeys(V3_POOL_FILES, 2), time.time() - 5)
    server.overrides["/metrics"] = metrics
    async with TestServer(server.app, host="127.0.0.1") as srv:
        url = str(srv.make_url("")).rstrip("/")
        async with PrometheusSource(PrometheusEndpoint(url=url)) as source:
            yield metrics, source


async def held_still(source: PrometheusSource) -> bool:
    await source.pool_target_counts()
    await asyncio.sleep(0.4)
    await source.pool_target_counts()
    return source.discovery_settled


async def test_counts_above_zero_held_still_settle(fake: tuple[Metrics, PrometheusSource]) -> None:
    _, source = fake
    await source.pool_target_counts()
    assert not source.discovery_settled  # just told: not yet seen holding still
    assert await held_still(source)


async def test_counts_that_move_start_over(fake: tuple[Metrics, PrometheusSource]) -> None:
    metrics, source = fake
    assert await held_still(source)
    metrics.counts = {**metrics.counts, next(iter(metrics.counts)): 3}
    await source.pool_target_counts()
    assert not source.discovery_settled
    assert await held_still(source)


async def test_a_restart_starts_over(fake: tuple[Metrics, PrometheusSource]) -> None:
    metrics, source = fake
    assert await held_still(source)
    metrics.start = time.time()  # the same counts, from a new process
    await source.pool_target_counts()
    assert not source.discovery_settled


async def test_a_pool_at_zero_never_settles(fake: tuple[Metrics, PrometheusSource]) -> None:
    metrics, source = fake
    metrics.counts = {**metrics.counts, next(iter(metrics.counts)): 0}
    assert not await held_still(source)


async def test_a_listed_pool_that_is_not_counted_never_settles(
    fake: tuple[Metrics, PrometheusSource],
) -> None:
    """vmagent counts no pool without targets; Prometheus none before its
    first reload: a pool the server lists but does not count is not taken
    as delivered."""
    metrics, source = fake
    await source.collect()  # lists every pool of the fake
    metrics.counts = dict(list(metrics.counts.items())[1:])
    assert not await held_still(source)


async def test_no_metrics_never_settles(fake: tuple[Metrics, PrometheusSource]) -> None:
    metrics, source = fake
    assert await held_still(source)
    metrics.counts = {}
    assert not await held_still(source)
