"""The real front process of `serve` (coverage_exporter.front) for hostile
client tests: started as `serve` starts it, with a real web config (TLS
made with the openssl CLI, bcrypt users), driven from the test's event
loop as the collector. Clients are raw sockets and Python's ssl on
127.0.0.1 only, bounded in count and time."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from coverage_exporter.web.front import Front
from coverage_exporter.web.server import Response, ServerLimits, ServingState


class StaticView(ServingState):
    """The collector's side: a /metrics body, and other paths answered
    from `pages` with an ETag (and a 304 for it), as view.ExporterView
    answers /report."""

    def __init__(self, pages: Mapping[str, bytes] | None = None) -> None:
        super().__init__()
        self.ready = True
        self.pages = dict(pages or {})
        self.asked = 0

    def metrics(self) -> bytes:
        return b"scrape_coverage_cycles_total 3.0\n"

    async def answer(self, path: str, headers: Mapping[str, str]) -> Response:
        self.asked += 1
        page = self.pages.get(path)
        if page is None:
            return Response(404, b"404 page not found\n")
        etag = f'"{len(page)}-{hash(page) & 0xFFFF}"'
        if headers.get("if-none-match") == etag:
            return Response(304, b"", "", {"ETag": etag})
        return Response(200, page, "text/html; charset=utf-8", {"ETag": etag})


@dataclass
class RunningFront:
    view: StaticView
    link: Front
    port: int
    config_path: Path | None

    @property
    def pid(self) -> int:
        assert self.link._process is not None
        return self.link._process.pid

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def hwm_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")


@contextlib.asynccontextmanager
async def running_front(
    tmp_path: Path,
    web_config: dict | None,
    limits: ServerLimits | None = None,
    pages: Mapping[str, bytes] | None = None,
) -> AsyncIterator[RunningFront]:
    config_path = None
    if web_config is not None:
        config_path = tmp_path / "web-config.yml"
        write_config(config_path, web_config)
    view = StaticView(pages)
    link = Front(
        view, limits or ServerLimits(), str(config_path) if config_path else None, "info", "logfmt"
    )
    port = await link.start("127.0.0.1", 0)
    view.on_change = link.publish
    try:
        yield RunningFront(view, link, port, config_path)
    finally:
        await link.close()


def write_config(path: Path, config: dict) -> None:
    """Replaced at once with a new mtime, as a Secret volume update does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config))
    stamp = time.time() + 2
    tmp.replace(path)
    import os

    os.utime(path, (stamp, stamp))


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def request(
    port: int,
    path: str = "/metrics",
    ctx: ssl.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 20.0,  # noqa: ASYNC109
) -> tuple[int, dict[str, str], bytes, float]:
    """One GET on a new connection: status, headers, body, seconds taken.
    Status 0: the server closed without an answer."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None
        )
        lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            data = await reader.read()
        except (ConnectionError, ssl.SSLError):
            data = b""
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    seconds = time.monotonic() - started
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        return 0, {}, b"", seconds
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), parsed, body, seconds
