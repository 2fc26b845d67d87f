"""The HTTP face of `serve`: /metrics, /report, /-/healthy, /-/ready and a landing page.

/metrics returns bytes rendered at the end of the last cycle (plus the
process's own runtime metrics): a scrape never reaches Kubernetes or
Prometheus, so it costs the same at 1,000 nodes as at 100,000. /report is
the HTML coverage report of the last cycle, never a new collection.

The server is a small HTTP/1.1 server of its own on asyncio streams, not
aiohttp's: aiohttp's has no deadline for receiving a request's headers, so
clients that open a connection and send half a request hold it for ever,
and a few hundred of them starve the scrapes that matter. Here every
connection must deliver its request head within `header_timeout`, its
body (only GETs are served: bodies are read and dropped) within
`body_timeout`, and read its answer within `write_timeout`; an idle
keep-alive connection is closed after `idle_timeout`; and at
`max_connections` the connection that has been waiting longest for a
request is dropped to admit the new one, so a scraper always gets in.
`serve` runs it in a process of its own (`front.py`); `view.py` holds
the collector's side (the report page).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from coverage_exporter import __version__, defaults
from coverage_exporter.flagtypes import parse_seconds
from coverage_exporter.web.config import WebConfigFile

log = logging.getLogger("coverage_exporter.http")

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


class ServingState:
    """What /metrics, /-/healthy, /-/ready and the landing page answer from:
    all that the front process (`front.py`) holds. The collector's side,
    with the report, is view.ExporterView."""

    def __init__(self) -> None:
        self.ready = False
        self.status = "starting: the first collection cycle has not completed"
        self._progress_deadline = float("inf")
        self._waiting_for = ""
        self.on_change: Callable[[], None] | None = None
        """Called after each change (the front publishes it)."""

    def metrics(self) -> bytes:
        raise NotImplementedError

    async def answer(self, path: str, headers: Mapping[str, str]) -> Response:
        """Every other path: the /report page of view.ExporterView; the
        front process asks the collector."""
        return Response(404, b"404 page not found\n")

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def expect_progress(self, within_seconds: float, what: str) -> None:
        """The serve loop promises its next step (`what`) within this many
        seconds; /-/healthy fails once the promise is broken, so that a
        wedged collection loop gets the pod restarted."""
        self._progress_deadline = time.monotonic() + within_seconds
        self._waiting_for = what
        self.changed()

    @property
    def progress(self) -> tuple[float, str]:
        """The promised deadline (time.monotonic()) and what it is for."""
        return self._progress_deadline, self._waiting_for

    def wedged(self) -> str | None:
        """Why the collection loop looks stuck, or None."""
        late = time.monotonic() - self._progress_deadline
        if late <= 0:
            return None
        return f"{self._waiting_for} is {late:.0f}s overdue"


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client may cost the server; flags in cli.py."""

    header_timeout: float = parse_seconds(defaults.WEB_HEADER_TIMEOUT)
    body_timeout: float = 10.0
    write_timeout: float = 30.0
    idle_timeout: float = 75.0
    """Keep-alive: Prometheus reuses its connection every scrape interval;
    Go's idle timeout is 90s, so 75s lets the client close first."""
    max_connections: int = defaults.WEB_MAX_CONNECTIONS
    max_header_bytes: int = 16 << 10
    max_body_bytes: int = 64 << 10
    max_large_answers: int = 8
    """Answers over LARGE_ANSWER_BYTES (a /report page) being written at
    once; more are shed with 503. Each is written in pieces, so one costs
    a piece and the socket's buffer, not a copy of the page."""

    def __post_init__(self) -> None:
        if min(self.header_timeout, self.body_timeout, self.write_timeout) <= 0:
            raise ValueError("HTTP timeouts must be positive")
        if self.max_connections < 1:
            raise ValueError("--web.max-connections must be 1 or more")


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


_REASONS = {
    200: "OK",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


async def route(view: ServingState, path: str, headers: Mapping[str, str]) -> Response:
    """The answer to a GET of `path`; `headers` by lower-case name. One
    routing for every server (the front process and MetricsServer)."""
    if path == "/metrics":
        return Response(200, view.metrics(), CONTENT_TYPE)
    if path == "/-/healthy":
        why = view.wedged()
        if why:
            return Response(503, f"coverage-exporter is not healthy: {why}\n".encode())
        return Response(200, b"coverage-exporter is healthy.\n")
    if path == "/-/ready":
        if view.ready:
            return Response(200, b"coverage-exporter is ready.\n")
        return Response(503, f"coverage-exporter is not ready: {view.status}\n".encode())
    if path == "/":
        page = LANDING.format(
            version=__version__,
            ready="yes" if view.ready else "not yet",
            status=html.escape(view.status),
        )
        return Response(200, page.encode(), "text/html; charset=utf-8")
    return await view.answer(path, headers)


class _Idle(Exception):
    """No byte of a request arrived: close without an answer."""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    socket_transport: asyncio.WriteTransport | None = None
    """The TCP transport under TLS: what is aborted when the TLS one is
    gone (a handshake cut short)."""
    waiting_since: float = field(default_factory=time.monotonic)
    answering: bool = False
    """Between a complete, authorized request and the end of its answer:
    the last to be evicted. A connection still in its TLS handshake, its
    head, its body or its authentication holds nothing anyone waits for."""

    def abort(self) -> None:
        for transport in (self.writer.transport, self.socket_transport):
            if transport is not None:
                transport.abort()


LARGE_ANSWER_BYTES = 1 << 20
WRITE_PIECE_BYTES = 256 << 10
CLOSE_GRACE_SECONDS = 1.0
"""After the answer, how long a closing connection may take to finish
(the last bytes, the peer's TLS close_notify) before it is aborted:
asyncio would otherwise keep a TLS connection for its 30 s shutdown
timeout. A closing connection is the first evicted at the cap."""
TLS_READ_BUFFER_BYTES = 16 << 10
"""asyncio allocates 256 KiB per TLS connection to read into; a request
head is at most 16 KiB, and 600 silent handshakes cost 180 MiB that way.
Set for the front process only (front.py), which serves nothing else."""


class MetricsServer:
    def __init__(
        self,
        view: ServingState,
        limits: ServerLimits | None = None,
        web_config: WebConfigFile | None = None,
    ) -> None:
        self.view = view
        self.limits = limits or ServerLimits()
        # --web.config.file: TLS on the listener, basic auth and headers per request.
        self.web_config = web_config
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._large_answers = 0
        self.evicted_total = 0
        self.shed_total = 0

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self, host: str | None, port: int) -> int:
        """Listen; returns the port (useful with port 0). TLS is not done by
        the listener but per connection (_handshake), so that a connection
        counts and its deadline runs from accept."""
        self._server = await asyncio.start_server(
            self._serve_connection,
            host,
            port,
            limit=self.limits.max_header_bytes,
            backlog=1024,
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and drop every connection at once: on SIGTERM
        nothing a client does may hold the exit."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
            self._server = None

    def _admit(self, conn: _Connection) -> None:
        """Count the connection from its accept. At the cap the connection
        that waited longest is dropped for it, one being answered only when
        every other is: a scrape always gets in."""
        if len(self._connections) >= self.limits.max_connections:
            oldest = min(self._connections, key=lambda c: (c.answering, c.waiting_since))
            oldest.abort()
            self._connections.discard(oldest)
            self.evicted_total += 1
        self._connections.add(conn)

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """TLS within the header timeout, with the web config as it is now:
        every field of a re-read file applies to the next handshake."""
        assert self.web_config is not None
        context = self.web_config.handshake_context()
        if context is None:  # the file is broken: fail closed
            return False
        timeout = self.limits.header_timeout
        transport = writer.transport
        try:
            async with asyncio.timeout(timeout):
                await writer.start_tls(context, ssl_handshake_timeout=timeout)
        except (TimeoutError, ssl.SSLError, OSError, AttributeError):
            # AttributeError: asyncio's start_tls on a connection closed
            # mid-handshake (evicted, or EOF) returns no transport and
            # leaves the writer without one, which its __del__ trips on.
            if writer.transport is None:
                writer._transport = transport
            return False
        return True

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = _Connection(writer, writer.transport)
        self._admit(conn)
        try:
            tls = self.web_config is not None and self.web_config.tls_enabled
            if tls and not await self._handshake(reader, writer):
                return
            first = True
            while True:
                conn.answering = False
                conn.waiting_since = time.monotonic()
                # The first request must come quickly; a kept-alive
                # connection may rest until idle_timeout, but once a byte of
                # the next request arrives the head is due like the first.
                wait = self.limits.header_timeout if first else self.limits.idle_timeout
                try:
                    keep_alive = await self._one_request(reader, writer, conn, wait)
                except _Idle:
                    return
                except (TimeoutError, _BadRequest) as exc:
                    status = exc.status if isinstance(exc, _BadRequest) else 408
                    answer = Response(status, f"{_REASONS[status]}\n".encode())
                    with contextlib.suppress(Exception):
                        await self._write(writer, answer, keep_alive=False)
                    return
                if not keep_alive:
                    return
                first = False
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            conn.answering = False
            await self._close(conn)

    async def _close(self, conn: _Connection) -> None:
        """Flush and close, then let go at once: counted until gone, and
        aborted past CLOSE_GRACE_SECONDS (a peer that never reads, a TLS
        close_notify never answered)."""
        writer = conn.writer
        try:
            if writer.transport is None:
                return
            writer.close()
            async with asyncio.timeout(CLOSE_GRACE_SECONDS):
                await writer.wait_closed()
        except (Exception, asyncio.CancelledError):
            pass
        finally:
            conn.abort()
            self._connections.discard(conn)

    async def _one_request(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: _Connection,
        wait: float,
    ) -> bool:
        """Serve one request; False when the connection must close."""
        limits = self.limits
        try:
            async with asyncio.timeout(wait):
                first_byte = await reader.read(1)
        except TimeoutError:
            raise _Idle from None
        if not first_byte:
            raise _Idle
        async with asyncio.timeout(limits.header_timeout):
            try:
                head = first_byte + await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise _BadRequest(431, "request head too large") from None
        if len(head) > limits.max_header_bytes:
            raise _BadRequest(431, "request head too large")
        method, path, version, headers = _parse_head(head)
        if "transfer-encoding" in headers:
            raise _BadRequest(411, "chunked request bodies are not accepted")
        length = _content_length(headers)
        if length > limits.max_body_bytes:
            raise _BadRequest(413, "request body too large")
        path = path.partition("?")[0]
        response: Response | None = None
        if method not in ("GET", "HEAD"):
            response = Response(405, b"only GET and HEAD\n")
        elif self.web_config and (denied := await self.web_config.deny(headers, path)):
            response = Response(denied[0], denied[1], headers=denied[2])
        if response is not None:
            # Refused before its body is read: an unauthorized client holds
            # no slot while it trickles one in.
            await self._write(writer, self._with_config_headers(response), keep_alive=False)
            return False
        if length:
            async with asyncio.timeout(limits.body_timeout):
                await reader.readexactly(length)
        keep_alive = _keep_alive(version, headers)
        conn.answering = True
        response = await route(self.view, path, headers)
        large = len(response.body) > LARGE_ANSWER_BYTES and method == "GET"
        if large and self._large_answers >= limits.max_large_answers:
            self.shed_total += 1
            response = Response(
                503, b"too many large answers in flight; retry\n", headers={"Retry-After": "5"}
            )
            large = False
        self._large_answers += large
        try:
            await self._write(
                writer, self._with_config_headers(response), keep_alive, head_only=method == "HEAD"
            )
        finally:
            self._large_answers -= large
        return keep_alive

    def _with_config_headers(self, response: Response) -> Response:
        if self.web_config:
            response.headers.update(self.web_config.response_headers())
        return response

    async def _write(
        self,
        writer: asyncio.StreamWriter,
        response: Response,
        keep_alive: bool,
        head_only: bool = False,
    ) -> None:
        lines = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}"]
        if response.content_type:
            lines.append(f"Content-Type: {response.content_type}")
        lines += [f"{name}: {value}" for name, value in response.headers.items()]
        lines.append(f"Content-Length: {len(response.body)}")
        lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        # A client that does not read its answer is dropped, not waited for.
        async with asyncio.timeout(self.limits.write_timeout):
            writer.write(head.encode("ascii"))
            if head_only:
                await writer.drain()
                return
            # In pieces: what the socket does not take at once is copied
            # into the transport's buffer, so a body written whole is one
            # copy per client that does not read (a 16 MB page, 12 times).
            with memoryview(response.body) as body:
                for start in range(0, max(len(body), 1), WRITE_PIECE_BYTES):
                    writer.write(body[start : start + WRITE_PIECE_BYTES])
                    await writer.drain()


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
        request_line, *lines = text[:-4].split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise _BadRequest(400, "malformed request line") from None
    if not version.startswith("HTTP/1.") or not target.startswith("/"):
        raise _BadRequest(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "malformed header")
        headers[name.lower()] = value.strip()
    return method, target, version, headers


def _content_length(headers: dict[str, str]) -> int:
    raw = headers.get("content-length", "0")
    # ASCII digits only (str.isdigit takes '²'), and few of them: int()
    # refuses over 4,300 digits, and a body over 64 KiB is refused anyway.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise _BadRequest(400, "bad Content-Length")
    return int(raw)


def _keep_alive(version: str, headers: dict[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return connection == "keep-alive"
    return connection != "close"


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """`:9842` (every interface), `127.0.0.1:9842` or `[::1]:9842`."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected [HOST]:PORT, got {address!r}")
    host = host.strip("[]")
    return (host or None, int(port))
