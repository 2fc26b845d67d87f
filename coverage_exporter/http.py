"""The HTTP face of `serve`: /metrics, /-/healthy, /-/ready and a landing page.

/metrics returns bytes rendered at the end of the last cycle (plus the
process's own runtime metrics): a scrape never reaches Kubernetes or
Prometheus, so it costs the same at 1,000 nodes as at 100,000.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from aiohttp import web
from prometheus_client import REGISTRY, generate_latest

from coverage_exporter import __version__

# The classic text format, which is what generate_latest() writes; newer
# client libraries default the header to 1.0.0, which Prometheus 2.x does
# not know.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LANDING = """<!doctype html>
<html><head><title>coverage-exporter</title></head>
<body>
<h1>coverage-exporter {version}</h1>
<p>Finds the nodes Prometheus does not scrape: truncated Endpoints,
capped EndpointSlice mirroring, scrape pools that miss targets.</p>
<ul>
<li><a href="metrics">metrics</a></li>
<li><a href="-/healthy">healthy</a></li>
<li><a href="-/ready">ready</a> ({ready})</li>
</ul>
<p>{status}</p>
</body></html>
"""


class ExporterView:
    """What the HTTP handlers read; the serve loop writes it."""

    def __init__(self, initial_exposition: Callable[[], bytes]) -> None:
        self._initial = initial_exposition
        self.exposition: bytes | None = None
        self.ready = False
        self.status = "starting: the first collection cycle has not completed"

    def metrics(self) -> bytes:
        # Until the first cycle, render the sources' state so that a
        # failing start shows up as source_up 0 rather than as nothing.
        coverage = self.exposition if self.exposition is not None else self._initial()
        return coverage + generate_latest(REGISTRY)


def make_app(view: ExporterView) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=view.metrics(), headers={"Content-Type": CONTENT_TYPE})

    async def healthy(_: web.Request) -> web.Response:
        return web.Response(text="coverage-exporter is healthy.\n")

    async def ready(_: web.Request) -> web.Response:
        if view.ready:
            return web.Response(text="coverage-exporter is ready.\n")
        return web.Response(status=503, text=f"coverage-exporter is not ready: {view.status}\n")

    async def landing(_: web.Request) -> web.Response:
        page = LANDING.format(
            version=__version__,
            ready="yes" if view.ready else "not yet",
            status=html.escape(view.status),
        )
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    return app


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """`:9842` (every interface), `127.0.0.1:9842` or `[::1]:9842`."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected [HOST]:PORT, got {address!r}")
    host = host.strip("[]")
    return (host or None, int(port))
