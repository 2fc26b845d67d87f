"""A load balancer in front of the apiserver that ends every watch right
after its headers (issue #21 item 14): the Kubernetes source goes down, and
once the watches stay open again it is back within one cycle, without a
restart.

A small HTTP proxy on 127.0.0.1 (CuttingProxy) stands in front of the shared
fake apiserver (fakes/apiserver.py); the real KubernetesSource reads through
it and the real CycleRunner publishes source_up, cycle after cycle.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from coverage_exporter.cycle import CycleRunner
from coverage_exporter.model.scope import Scope
from coverage_exporter.sources.kubernetes.source import KubernetesSource
from fakes.apiserver import FakeApiServer, node
from tests.local.test_reflector import configuration
from tests.unit.test_cycle import samples

INTERVAL = 2.0
"""Seconds between cycles, as `serve --interval=2` (the shortest the tests
use): the recovery is counted in cycles, never timed."""
MAX_CYCLES = 40
"""A hang guard for each phase, not a speed bound."""
KUBERNETES_UP = (("server", ""), ("source", "kubernetes"))
PASSED_HEADERS = ("Content-Type", "Content-Encoding", "Warning", "Retry-After")


class CuttingProxy:
    """A reverse proxy (what a load balancer is to the client): LISTs pass;
    WATCHes pass too, unless `cutting`, when the upstream's status and
    headers are sent and the stream is ended at once, cleanly."""

    def __init__(self, upstream: str, upstream_tls: ssl.SSLContext | bool = True) -> None:
        """upstream_tls: how to check an https upstream (the testbed's CA)."""
        self.upstream = upstream
        self._upstream_tls = upstream_tls
        self.cutting = False
        self.passed: list[str] = []
        """The path of every watch passed through, in order."""
        self.cut = 0
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        watch = request.query.get("watch") in ("true", "1")
        asked = ("Authorization", "Accept", "Accept-Encoding")
        headers = {k: v for k, v in request.headers.items() if k in asked}
        timeout = aiohttp.ClientTimeout(total=None if watch else 60)
        async with self._session.get(
            self.upstream + request.path_qs,
            headers=headers,
            timeout=timeout,
            ssl=self._upstream_tls,
        ) as upstream:
            out = {k: v for k, v in upstream.headers.items() if k in PASSED_HEADERS}
            if not watch or upstream.status != 200:
                return web.Response(status=upstream.status, body=await upstream.read(), headers=out)
            response = web.StreamResponse(status=200, headers=out)
            response.enable_chunked_encoding()
            await response.prepare(request)
            if self.cutting:
                self.cut += 1
                await response.write_eof()
                return response
            self.passed.append(request.path)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


@pytest.fixture
async def proxy(server: FakeApiServer) -> AsyncIterator[CuttingProxy]:
    front = CuttingProxy(server.url)
    await front.start()
    yield front
    await front.stop()


async def test_the_source_is_back_within_one_cycle_of_the_first_watch_that_stays_open(
    server: FakeApiServer, proxy: CuttingProxy
) -> None:
    """Before the fix: after the cuts, a watch that stayed open did not
    count until it delivered an event or a bookmark, and a quiet cluster
    sends a bookmark about once a minute (the apiserver's
    bookmarkFrequency, as the fake here): 31 cycles of 2 s."""
    server.bookmark_every = 60.0
    server.put("nodes", node("a"))
    source = KubernetesSource(configuration(proxy.url))
    counted = await cut_then_pass(source, proxy, INTERVAL)
    assert counted <= 2


async def cut_then_pass(source: KubernetesSource, proxy: CuttingProxy, interval: float) -> int:
    """Cuts every watch until the source is down, then lets the watches
    through: the cycles (one every `interval`) counted until source_up is 1
    again, from the first that starts once every reflector's first good
    watch is open. That one may start a moment after a watch opened, before
    the watch could prove it stays open; the next starts a whole interval
    later: so at most 2. Starts and stops the source."""
    proxy.cutting = True
    await source.start()
    collector = CycleRunner(source, [], Scope())

    async def cycle() -> float:
        result = await collector.run_cycle()
        await asyncio.sleep(interval)
        return samples(result.exposition, "scrape_coverage_source_up")[KUBERNETES_UP]

    try:
        assert await source.wait_synced(120), "LISTs pass the proxy"
        # Every watch ends at once: the source goes down, as it should.
        for _ in range(MAX_CYCLES):
            if await cycle() == 0.0:
                break
        else:
            raise AssertionError("the source stayed up while every watch was cut")
        assert proxy.cut >= 3
        assert "without an event or bookmark" in source.health.last_error
        # The balancer behaves again.
        proxy.cutting = False
        counted = 0
        for _ in range(MAX_CYCLES):
            watching = {r.path for r in source.reflectors()}
            counting = watching <= set(proxy.passed)
            up = await cycle()
            counted += counting
            if up == 1.0 and counting:
                break
            assert counted < 2, "not back within one cycle of the first watch that stays open"
        else:
            raise AssertionError("no watch got through the proxy once it passed them")
        print(f"source_up back {counted} cycle(s) after the first good watches; {proxy.cut} cut")
        assert source.health.last_error == ""
        return counted
    finally:
        await source.stop()
