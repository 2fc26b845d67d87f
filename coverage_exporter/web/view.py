"""The collector's side of the HTTP face: what `serve` publishes after each
cycle (the /metrics body, readiness) and the /report page, rendered on
request from the last report.

The server itself is `server.MetricsServer`, run in the front process
(`front.py`), which answers /metrics and the health paths from what this
view publishes and asks this process for the rest (`server.route`).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import html
from collections.abc import Callable, Mapping

from prometheus_client import REGISTRY, generate_latest

from coverage_exporter.exposition.html import (
    CONTENT_SECURITY_POLICY,
    PageInfo,
    ServicesPart,
    render_page,
    render_services,
)
from coverage_exporter.model.evidence import Evidence
from coverage_exporter.model.report import CoverageReport
from coverage_exporter.web.server import Response, ServingState


class ExporterView(ServingState):
    """What the HTTP handlers read; the serve loop writes it."""

    def __init__(self, initial_exposition: Callable[[], bytes]) -> None:
        super().__init__()
        self._initial = initial_exposition
        self.exposition: bytes | None = None
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

    async def answer(self, path: str, headers: Mapping[str, str]) -> Response:
        if path == "/report":
            return await _report(self, headers)
        return await super().answer(path, headers)


class ReportPage:
    """The /report page of the last cycle, rendered on request and at most
    once per cycle; its heavy part (every missing target) at most once per
    report object. The collector hands out the very same report while no
    source changed, so a refresh at 100k nodes re-renders only the header.
    Rendering runs off the event loop, one at a time."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._part: tuple[CoverageReport, Evidence, ServicesPart] | None = None
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
                # By identity: the same objects while nothing changed (a
                # report compared by value would walk every missing target).
                kept = self._part
                if kept is None or kept[0] is not report or kept[1] is not info.evidence:
                    rendered = await asyncio.to_thread(render_services, report, info.evidence)
                    kept = self._part = (report, info.evidence, rendered)
                    self.services_renders += 1
                part = kept[2]
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


async def _report(view: ExporterView, request_headers: Mapping[str, str]) -> Response:
    info = view.page_info
    if info is None:
        return Response(
            503,
            f"<!doctype html><title>coverage-exporter</title><p>No report yet: "
            f"{html.escape(view.status)}</p>\n".encode(),
            "text/html; charset=utf-8",
            {"Retry-After": "10", "Cache-Control": "no-store"},
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
    gzipped = "gzip" in request_headers.get("accept-encoding", "")
    if gzipped:
        # Another representation, so another strong ETag (RFC 9110 8.8.3).
        headers["ETag"] = etag[:-1] + '-gzip"'
    if _etag_matches(request_headers.get("if-none-match", ""), headers["ETag"]):
        return Response(304, b"", "", headers)
    if gzipped:
        body = await view.report_page.gzipped(body, etag)
        headers["Content-Encoding"] = "gzip"
    return Response(200, body, "text/html; charset=utf-8", headers)
