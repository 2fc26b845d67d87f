"""A Prometheus that trickles its answer, one byte a second: with the
defaults of `serve`, the source is down for the cycle and the cycle
completes; the other Prometheus's news does not wait for it.

Served by a real aiohttp server on 127.0.0.1 to the real PrometheusSource
and Collector, with the source deadline that `serve`'s own flags give.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestServer

from coverage_exporter import app, cli
from coverage_exporter.cycle import CycleRunner
from coverage_exporter.model.scope import Scope
from coverage_exporter.sources.prometheus.source import PrometheusEndpoint, PrometheusSource
from fakes.prometheus import FakePrometheus
from tests.unit import clusters
from tests.unit.test_cycle import StaticCluster, samples

HANG_GUARD_SECONDS = 60.0
"""Not a speed assertion: a guard that turns a held cycle into a failure
instead of a hang (before the fix the cycle waited the 120 s request
timeout). The deadline under test is 5 s."""


def serve_guards(*flags: str) -> app.Guards:
    args = cli.build_parser().parse_args(["serve", "--prometheus-url=http://p:9090", *flags])
    return app.Guards.from_args(args)


def test_the_default_source_deadline_is_three_quarters_of_the_interval_at_least_5s() -> None:
    assert serve_guards().source_deadline == 45.0
    assert serve_guards("--interval=20").source_deadline == 15.0
    # Not below 5 s: a healthy read on a loaded machine is not cut off.
    assert serve_guards("--interval=2").source_deadline == 5.0
    # Given, it wins, even above the interval.
    assert serve_guards("--interval=2", "--source-deadline=300").source_deadline == 300.0
    # audit has no interval: one collection, bounded like one request.
    args = cli.build_parser().parse_args(["audit", "--prometheus-url=http://p:9090"])
    assert app.Guards.from_args(args).source_deadline == 120.0


class Trickle:
    """Sends the headers of a targets answer at once, then one byte a
    second, forever: the body never ends within --prometheus-timeout."""

    def __init__(self) -> None:
        self.cut_off = asyncio.Event()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            for byte in b'{"status":"success","data":{"activeTargets":[' + b" " * 100_000:
                await response.write(bytes([byte]))
                await asyncio.sleep(1.0)
        except (ConnectionError, asyncio.CancelledError):
            # The client hung up: the exporter let go of the slow answer.
            self.cut_off.set()
            raise
        return response


async def test_a_trickling_prometheus_is_down_and_the_cycle_completes() -> None:
    guards = serve_guards("--interval=2")
    trickling, healthy = FakePrometheus(), FakePrometheus()
    trickle = Trickle()
    trickling.overrides["/api/v1/targets"] = trickle
    async with (
        TestServer(trickling.app, host="127.0.0.1") as slow_srv,
        TestServer(healthy.app, host="127.0.0.1") as good_srv,
    ):

        def source(srv: TestServer, name: str) -> PrometheusSource:
            # The request timeout stays at its default of 120 s: only the
            # source deadline can end the trickle within the cycle.
            url = str(srv.make_url("")).rstrip("/")
            return PrometheusSource(PrometheusEndpoint(url=url, name=name, timeout_seconds=120))

        slow, good = source(slow_srv, "slow"), source(good_srv, "good")
        collector = CycleRunner(
            StaticCluster(clusters.node_exporter(10)),
            [slow, good],
            Scope(),
            source_deadline=guards.source_deadline,
        )
        try:
            started = asyncio.get_running_loop().time()
            result = await asyncio.wait_for(collector.run_cycle(), HANG_GUARD_SECONDS)
            took = asyncio.get_running_loop().time() - started
            print(f"cycle with a trickling Prometheus took {took:.2f}s")
            await asyncio.wait_for(trickle.cut_off.wait(), HANG_GUARD_SECONDS)
        finally:
            await slow.close()
            await good.close()
    assert result.exposition, "the cycle completed and was rendered"
    up = samples(result.exposition, "scrape_coverage_source_up")
    assert up[(("server", "slow"), ("source", "prometheus"))] == 0.0
    assert up[(("server", "good"), ("source", "prometheus"))] == 1.0
    assert "5s source deadline" in slow.health.last_error
    # The healthy server's targets were read and compared in that cycle.
    assert any(r.path == "/api/v1/targets" for r in healthy.requests)
