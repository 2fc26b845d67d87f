"""The HTTP endpoints of `serve`, through the real server on 127.0.0.1 and
aiohttp's client (an HTTP/1.1 client with keep-alive, like Prometheus's)."""

from __future__ import annotations

import aiohttp
import pytest

from coverage_exporter.web.server import MetricsServer, parse_listen_address
from coverage_exporter.web.view import ExporterView


class _Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self._session = session
        self._base = base

    async def get(self, path: str) -> aiohttp.ClientResponse:
        response = await self._session.get(self._base + path)
        await response.read()
        return response


@pytest.fixture
async def client_and_view():
    view = ExporterView(lambda: b"# starting\nscrape_coverage_source_up 0\n")
    server = MetricsServer(view)
    port = await server.start("127.0.0.1", 0)
    async with aiohttp.ClientSession() as session:
        yield _Client(session, f"http://127.0.0.1:{port}"), view
    await server.close()


async def test_metrics_serves_the_stored_snapshot_and_runtime_metrics(client_and_view) -> None:
    client, view = client_and_view
    before = await (await client.get("/metrics")).text()
    assert "scrape_coverage_source_up 0" in before
    view.exposition = b"scrape_coverage_cycles_total 7.0\n"
    response = await client.get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await response.text()
    assert text.startswith("scrape_coverage_cycles_total 7.0\n")
    assert "process_resident_memory_bytes" in text or "python_info" in text


async def test_ready_only_after_the_first_cycle(client_and_view) -> None:
    client, view = client_and_view
    assert (await client.get("/-/healthy")).status == 200
    not_ready = await client.get("/-/ready")
    assert not_ready.status == 503
    assert "first collection cycle" in await not_ready.text()
    view.ready = True
    assert (await client.get("/-/ready")).status == 200


async def test_landing_page_links_and_escapes_status(client_and_view) -> None:
    client, view = client_and_view
    view.status = "<b>down</b>"
    page = await (await client.get("/")).text()
    assert 'href="metrics"' in page and 'href="-/ready"' in page
    assert "&lt;b&gt;down&lt;/b&gt;" in page


@pytest.mark.parametrize(
    ("address", "expected"),
    [(":9842", (None, 9842)), ("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:9842", ("::1", 9842))],
)
def test_listen_address(address: str, expected: tuple[str | None, int]) -> None:
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize("bad", ["9842", "host:", "host:port", ":0", ":70000"])
def test_listen_address_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="HOST"):
        parse_listen_address(bad)
