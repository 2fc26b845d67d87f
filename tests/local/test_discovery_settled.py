"""When a fresh server's discovery counts as delivered, from its own
/metrics (PrometheusSource.discovery_settled): on the real Prometheus 3.16
and 2.53, then on the fake (fakes/prometheus.py) for the cases a real server does
not show on demand (a restart, counts that move)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from coverage_exporter.sources.prometheus import source as prometheus
from coverage_exporter.sources.prometheus.source import (
    PrometheusEndpoint,
    PrometheusSource,
    parse_discovered_target_counts,
)
from fakes.prometheus import V3_POOL_FILES, FakePrometheus
from tests.fixtures import capture_settle

K8S_POOL = "serviceMonitor/monitoring/node-exporter/0"


@pytest.fixture
def silent_apiserver() -> Iterator[int]:
    with capture_settle.silent_apiserver() as port:
        yield port


@pytest.mark.parametrize("version", ["3", "2"])
async def test_a_real_prometheus_settles_with_a_pool_its_rules_keep_none_of(
    tmp_path: Path, silent_apiserver: int, version: str
) -> None:
    """The real Prometheus 3.16 and 2.53, each run twice: with a pool whose
    hashmod shard keeps none of what its discovery delivered, it settles
    (well before the grace period: its counts hold still 10 s after the
    first sends); with a Kubernetes SD whose API never answers, it never
    settles (discovered zero: nothing tells "nothing there" from "not
    listed yet"), however long it runs. Before the discovered count was
    read, the first server waited the grace period out too."""
    keeps_none = capture_settle.keeps_none_job(capture_settle.KEEPS_NONE, "10.0.0.1:9100")
    waiting_job = capture_settle.kubernetes_job(K8S_POOL, f"http://127.0.0.1:{silent_apiserver}")
    waiting, waiting_url = capture_settle.start_prometheus(
        tmp_path / "waiting", version, keeps_none + waiting_job
    )
    delivered, delivered_url = capture_settle.start_prometheus(
        tmp_path / "delivered", version, keeps_none
    )
    try:
        waiting_source = PrometheusSource(PrometheusEndpoint(url=waiting_url))
        delivered_source = PrometheusSource(PrometheusEndpoint(url=delivered_url))
        async with waiting_source, delivered_source:
            discovered_at_zero = settled_at = None
            deadline = time.monotonic() + 90
            # Until the delivering server is settled and the other has run
            # long past the first sends (22 s of uptime).
            while time.monotonic() < deadline:
                await waiting_source.pool_target_counts()
                counts = await delivered_source.pool_target_counts()
                discovered = parse_discovered_target_counts(
                    await asyncio.to_thread(capture_settle.discovery_lines, waiting_url)
                )
                if discovered and discovered.get(K8S_POOL) == 0:
                    discovered_at_zero = discovered  # the last: the other pool delivered
                assert not waiting_source.discovery_settled, discovered
                if settled_at is None and delivered_source.discovery_settled:
                    settled_at = time.time()
                    assert counts is not None and counts[capture_settle.KEEPS_NONE] == 0
                started = waiting_source._started
                if settled_at is not None and started and time.time() - started > 22:
                    break
                await asyncio.sleep(1)
            assert settled_at is not None, "a server whose pools delivered never settled"
            assert not waiting_source.discovery_settled
            assert discovered_at_zero is not None
            assert discovered_at_zero[capture_settle.KEEPS_NONE] == 1
            started = delivered_source._started
            assert started is not None
            # A figure, not a bound (bench/analysis.md).
            print(f"prometheus {version}: settled {settled_at - started:.1f} s after its start")
    finally:
        for process in (waiting, delivered):
            process.terminate()
        for process in (waiting, delivered):
            process.wait(timeout=30)


# --- on the fake: counts that move, a restart -----------------------------------------

START_HELP = b"# TYPE process_start_time_seconds gauge\n"
COUNTS_HELP = b"# TYPE prometheus_target_scrape_pool_targets gauge\n"
DISCOVERED_HELP = b"# TYPE prometheus_sd_discovered_targets gauge\n"


class Metrics:
    """The fake's /metrics, as the real server writes these two metrics."""

    def __init__(self, counts: dict[str, int], start: float) -> None:
        self.counts, self.start = counts, start
        self.discovered: dict[str, int] = {}

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        body = START_HELP + f"process_start_time_seconds {self.start}\n".encode() + COUNTS_HELP
        for pool, count in self.counts.items():
            line = f'prometheus_target_scrape_pool_targets{{scrape_job="{pool}"}} {count}\n'
            body += line.encode()
        body += DISCOVERED_HELP if self.discovered else b""
        for pool, count in self.discovered.items():
            line = f'prometheus_sd_discovered_targets{{config="{pool}",name="scrape"}} {count}\n'
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


async def test_a_pool_at_zero_that_discovered_targets_settles(
    fake: tuple[Metrics, PrometheusSource],
) -> None:
    """Its rules keep none of what its discovery delivered."""
    metrics, source = fake
    keeps_none = next(iter(metrics.counts))
    metrics.counts = {**metrics.counts, keeps_none: 0}
    metrics.discovered = {**metrics.counts, keeps_none: 4}
    assert await held_still(source)


async def test_a_discovered_count_that_moves_starts_over(
    fake: tuple[Metrics, PrometheusSource],
) -> None:
    metrics, source = fake
    metrics.discovered = dict.fromkeys(metrics.counts, 5)
    assert await held_still(source)
    metrics.discovered = dict.fromkeys(metrics.counts, 6)
    await source.pool_target_counts()
    assert not source.discovery_settled


async def test_a_pool_discovered_at_zero_and_not_counted_never_settles(
    fake: tuple[Metrics, PrometheusSource],
) -> None:
    """Prometheus 2.53 counts after relabelling no pool whose discovery never
    sent, but counts it discovered at zero: a pool it runs all the same."""
    metrics, source = fake
    metrics.discovered = {**dict.fromkeys(metrics.counts, 2), "never-listed": 0}
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
