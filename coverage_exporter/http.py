"""The HTTP face of `serve`: /metrics, /report, /-/healthy, /-/ready and a landing page.

/metrics returns bytes rendered at the end of the last cycle (plus the
process's own runtime metrics): a scrape never reaches Kubernetes or
Prometheus, so it costs the same at 1,000 nodes as at 100,000. /report is
the HTML coverage report of the last cycle, never a new collection.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import html
from collections.abc import Callable

from aiohttp import web
from prometheus_client import REGISTRY, generate_latest

from coverage_exporter import __version__
from coverage_exporter.exposition.html import (
    CONTENT_SECURITY_POLICY,
    PageInfo,
    ServicesPart,
    render_page,
    render_services,
)
from coverage_exporter.model.report import CoverageReport

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
<li><a href="report">coverage report</a>: every Service, where targets are lost, every
missing node</li>
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
        self.report: CoverageReport | None = None
        self.page_info: PageInfo | None = None
        """Set with `report` at the end of each cycle; None before the first."""
        self.report_page = ReportPage()

    def publish_report(self, report: CoverageReport | None, info: PageInfo) -> None:
        self.report, self.page_info = report, info

    def metrics(self) -> bytes:
        # Until the first cycle, render the sources' state so that a
        # failing start shows up as source_up 0 rather than as nothing.
        coverage = self.exposition if self.exposition is not None else self._initial()
        return coverage + generate_latest(REGISTRY)


class ReportPage:
    """The /report page of the last cycle, rendered on request and at most
    once per cycle; its heavy part (every missing target) at most once per
    report object. The collector hands out the very same report while no
    source changed, so a refresh at 100k nodes re-renders only the header.
    Rendering runs off the event loop, one at a time."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._part: tuple[CoverageReport, ServicesPart] | None = None
        self._page: tuple[CoverageReport | None, PageInfo, bytes, str] | None = None
        self._gzipped: tuple[str, bytes] | None = None
        self.services_renders = 0

    async def get(self, report: CoverageReport | None, info: PageInfo) -> tuple[bytes, str]:
        """(page, ETag)."""
        async with self._lock:
            if self._page is not None and self._page[0] is report and self._page[1] is info:
                return self._page[2], self._page[3]
            part = None
            if report is not None:
                if self._part is None or self._part[0] is not report:
                    self._part = (report, await asyncio.to_thread(render_services, report))
                    self.services_renders += 1
                part = self._part[1]
            body = await asyncio.to_thread(render_page, report, info, part)
            etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
            self._page = (report, info, body, etag)
            return body, etag

    async def gzipped(self, body: bytes, etag: str) -> bytes:
        """The page gzipped, once per ETag (~10x smaller for the node lists)."""
        async with self._lock:
            if self._gzipped is None or self._gzipped[0] != etag:
                data = await asyncio.to_thread(gzip.compress, body, 6)
                self._gzipped = (etag, data)
            return self._gzipped[1]


def _etag_matches(header: str, etag: str) -> bool:
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or etag in tags


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

    async def report(request: web.Request) -> web.Response:
        info = view.page_info
        if info is None:
            return web.Response(
                status=503,
                text=f"<!doctype html><title>coverage-exporter</title><p>No report yet: "
                f"{html.escape(view.status)}</p>\n",
                content_type="text/html",
                headers={"Retry-After": "10", "Cache-Control": "no-store"},
            )
        body, etag = await view.report_page.get(view.report, info)
        headers = {
            "ETag": etag,
            # Revalidate on every load: the ETag makes that a 304 until the next cycle.
            "Cache-Control": "no-cache",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Vary": "Accept-Encoding",
        }
        gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
        if gzipped:
            # Another representation, so another strong ETag (RFC 9110 8.8.3).
            headers["ETag"] = etag[:-1] + '-gzip"'
        if _etag_matches(request.headers.get("If-None-Match", ""), headers["ETag"]):
            return web.Response(status=304, headers=headers)
        if gzipped:
            body = await view.report_page.gzipped(body, etag)
            headers["Content-Encoding"] = "gzip"
        headers["Content-Type"] = "text/html; charset=utf-8"
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/", landing)
    app.router.add_get("/report", report)
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
