"""What the exporter's reads cost a real Prometheus 3.16 (issue #24): its
API gzips each answer with a compressor made for that answer, so the small
API answers are asked plain and the target lists gzipped
(PrometheusSource._request). The figures are in bench/analysis.md, "The
full re-read's heap, round two"; here only what the choice rests on."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from coverage_exporter.sources.prometheus.source import PrometheusEndpoint, PrometheusSource
from tests.fixtures.capture_settle import KEPT as STATIC_POOL
from tests.fixtures.capture_settle import start_prometheus


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    process, url = start_prometheus(tmp_path / "p", "3", "")  # returns once ready
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_small_api_answers_come_plain_and_target_lists_gzipped(prometheus: str) -> None:
    encodings: dict[str, str] = {}

    async def on_end(
        _s: aiohttp.ClientSession, _c: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        encodings[params.url.path] = params.response.headers.get("Content-Encoding", "")

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        source = PrometheusSource(PrometheusEndpoint(url=prometheus), session=session)
        config = await source.read_config()
        deadline = time.monotonic() + 60
        while True:
            snapshot = await source.collect()
            if STATIC_POOL in snapshot.pools or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
    assert config is not None  # read plain, and parsed
    assert STATIC_POOL in snapshot.pools
    assert encodings["/api/v1/status/config"] == ""
    assert encodings["/api/v1/scrape_pools"] == ""
    assert encodings["/api/v1/targets"] == "gzip"


def test_a_gzipped_api_answer_costs_prometheus_a_compressor(prometheus: str) -> None:
    """The reason the small answers are asked plain: a gzipped one of a
    few hundred bytes allocates ~1 MB more in Prometheus 3.16 (measured
    1.26 against 0.16 MB). Should a release pool its compressors, this
    fails, and the plain requests have lost their reason."""

    def get(path: str, encoding: str) -> bytes:
        request = urllib.request.Request(prometheus + path, headers={"Accept-Encoding": encoding})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return bytes(answer.read())

    def allocated() -> float:
        text = get("/metrics", "identity").decode()
        found = re.search(r"^go_memstats_alloc_bytes_total (\S+)$", text, re.M)
        assert found, "no go_memstats_alloc_bytes_total"
        return float(found.group(1))

    def cost(encoding: str) -> float:
        # around one read, less what one /metrics read itself allocates
        before = allocated()
        get("/api/v1/scrape_pools", encoding)
        after = allocated()
        return (after - before) - (allocated() - after)

    gzipped = statistics.median(cost("gzip") for _ in range(7))
    plain = statistics.median(cost("identity") for _ in range(7))
    assert gzipped - plain > 0.4 * 2**20, (gzipped, plain)
