"""The HTTP front of `serve`: a small process of its own that answers.

Why a process: the collector compares up to 100k nodes in a thread beside
its event loop. A thread that runs Python holds the GIL, and the event
loop waits for it at every socket call: at 100k nodes /metrics took up to
150-200 ms during each full re-read of the targets, whatever was split or
chunked (bench/analysis.md). The front holds only what it serves and runs
nothing else, so a scrape never waits on a comparison.

- /metrics, /-/healthy, /-/ready and / are answered here, from the state
  the collector publishes: on every change, and every second for the
  collector process's own runtime metrics.
- Every other path (the /report page) is asked of the collector, which
  answers it with the same `http.route`, on its `view.ExporterView`.
- web-config (TLS, basic auth, headers) and the client limits apply here,
  where the connections are.

The two talk over one socketpair (`link.py`), in the messages `Start` to
`Answer`. The front ends when the collector closes its end or
dies; the collector ends `serve` with an error when the front dies.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import itertools
import logging
import signal
import socket
import sys
from collections.abc import Mapping

import msgspec

from coverage_exporter import link
from coverage_exporter.logs import fields
from coverage_exporter.web.server import (
    TLS_READ_BUFFER_BYTES,
    MetricsServer,
    Response,
    ServerLimits,
    ServingState,
    route,
)

log = logging.getLogger("coverage_exporter.front")

PUBLISH_EVERY_SECONDS = 1.0
"""How often the collector re-publishes /metrics unprompted: its process
metrics (CPU, memory) are then at most this old."""

ASK_TIMEOUT_SECONDS = 60.0
"""How long a forwarded request (a /report page at 100k nodes is rendered
in seconds) may take before the front answers 503."""

MAX_ASKS = 4
"""Forwarded requests waiting for the collector at once; more are answered
503 at once. The collector renders a page once per cycle anyway."""

_MAX_UNREAD = 64 << 20

_MODULE = __spec__.name if __spec__ is not None else __name__
"""This module's dotted path, in the collector and in the front alike
(run with -m, its __name__ is "__main__"): what the front is started as."""


class State(msgspec.Struct, tag=True):
    metrics: bytes
    ready: bool
    status: str
    progress_deadline: float
    """time.monotonic() of the collector: CLOCK_MONOTONIC is one clock for
    every process of the machine."""
    waiting_for: str


class Start(msgspec.Struct, tag=True):
    host: str | None
    port: int
    limits: ServerLimits
    web_config_file: str | None
    log_level: str
    log_format: str
    state: State
    """Known before the front listens: it never answers from nothing."""


class Listening(msgspec.Struct, tag=True):
    port: int


class Failed(msgspec.Struct, tag=True):
    error: str


class Ask(msgspec.Struct, tag=True):
    id: int
    path: str
    headers: dict[str, str]


class Answer(msgspec.Struct, tag=True):
    id: int
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]


Message = Start | Listening | Failed | State | Ask | Answer
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Message)


def _frame(message: Message) -> bytes:
    return link.frame(_ENCODER.encode(message))


async def _read(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None at the end of the stream."""
    payload = await link.read_frame(reader)
    return None if payload is None else _DECODER.decode(payload)


# --- the front process ---------------------------------------------------------


class _Published(ServingState):
    """What the collector last published; other paths are asked of it."""

    def __init__(self, state: State, asking: _Asking) -> None:
        super().__init__()
        self.body = b""
        self._asking = asking
        self.update(state)

    def metrics(self) -> bytes:
        return self.body

    async def answer(self, path: str, headers: Mapping[str, str]) -> Response:
        return await self._asking.ask(path, headers)

    def update(self, state: State) -> None:
        self.body, self.ready, self.status = state.metrics, state.ready, state.status
        self._progress_deadline, self._waiting_for = state.progress_deadline, state.waiting_for


class _Asking:
    """Requests forwarded to the collector, by id, and the last answer of
    each page kept once here: a page with an ETag is asked for again with
    If-None-Match, so while it is unchanged the collector answers 304
    (nothing copied there or across the link) and every client is served
    the one copy this process holds."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Answer]] = {}
        self._pages: dict[tuple[str, bool], Answer] = {}

    async def ask(self, path: str, headers: Mapping[str, str]) -> Response:
        if len(self.pending) >= MAX_ASKS:
            return Response(503, b"busy; retry\n", headers={"Retry-After": "5"})
        variant = (path, "gzip" in headers.get("accept-encoding", ""))
        kept = self._pages.get(variant)
        asking = {k: v for k, v in headers.items() if k != "if-none-match"}
        if kept is not None:
            asking["if-none-match"] = kept.headers["ETag"]
        answer = await self._ask(path, asking)
        if answer is None:
            return Response(503, b"the collector did not answer in time\n")
        if answer.status == 304 and kept is not None:
            answer = kept
        elif answer.status == 200 and "ETag" in answer.headers:
            self._pages[variant] = answer
        else:
            self._pages.pop(variant, None)
        etag = answer.headers.get("ETag")
        if answer.status == 200 and etag and _etag_listed(headers.get("if-none-match", ""), etag):
            return Response(304, b"", "", answer.headers)
        return Response(answer.status, answer.body, answer.content_type, answer.headers)

    async def _ask(self, path: str, headers: Mapping[str, str]) -> Answer | None:
        ask_id = next(self._ids)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.pending[ask_id] = future
        try:
            self._writer.write(_frame(Ask(ask_id, path, dict(headers))))
            async with asyncio.timeout(ASK_TIMEOUT_SECONDS):
                return await future
        except TimeoutError:
            return None
        finally:
            self.pending.pop(ask_id, None)


def _etag_listed(header: str, etag: str) -> bool:
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or etag in tags


async def _run_front(sock: socket.socket) -> int:
    reader, writer = await asyncio.open_connection(sock=sock)
    start = await _read(reader)
    if not isinstance(start, Start):
        return 2
    from coverage_exporter import logs
    from coverage_exporter.web.config import WebConfigFile

    logs.configure(start.log_level, start.log_format)
    # This process serves nothing but HTTP: asyncio's 256 KiB read buffer
    # per TLS connection is cut to what a request head needs.
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER_BYTES
    asking = _Asking(writer)
    published = _Published(start.state, asking)
    try:
        limits = start.limits
        web_config = WebConfigFile(start.web_config_file) if start.web_config_file else None
        server = MetricsServer(published, limits, web_config)
        port = await server.start(start.host, start.port)
    except (OSError, ValueError) as err:
        writer.write(_frame(Failed(str(err))))
        await writer.drain()
        return 1
    writer.write(_frame(Listening(port)))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # The collector ends the front by closing the link; a signal to the
        # whole process group (Ctrl-C) must not end it first.
        loop.add_signal_handler(sig, lambda: None)
    try:
        while (message := await _read(reader)) is not None:
            if isinstance(message, State):
                published.update(message)
            elif isinstance(message, Answer):
                future = asking.pending.get(message.id)
                if future is not None and not future.done():
                    future.set_result(message)
    finally:
        await server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_run_front(link.inherited_socket(argv, "HTTP front")))


# --- the collector's side ------------------------------------------------------


class ListenError(OSError):
    """The front could not listen (the port is taken, a bad certificate)."""


def _address(host: str | None, port: int) -> str:
    return f"[{host}]:{port}" if host and ":" in host else f"{host or ''}:{port}"


class Front:
    """Starts the front process and keeps it informed (the collector's side)."""

    def __init__(
        self,
        view: ServingState,
        limits: ServerLimits,
        web_config_file: str | None,
        log_level: str,
        log_format: str,
    ) -> None:
        self._view = view
        self._start = (limits, web_config_file, log_level, log_format)
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ended = asyncio.Event()
        """Set when the front process is gone while it should be serving."""
        self._closing = False

    async def start(self, host: str | None, port: int) -> int:
        """Start the front, listening on host:port; returns the port. Raises
        ListenError."""
        mine, theirs = socket.socketpair()
        with theirs:
            self._process = await asyncio.create_subprocess_exec(
                *link.child_command(_MODULE, theirs),
                pass_fds=(theirs.fileno(),),
            )
        reader, self._writer = await asyncio.open_connection(sock=mine)
        limits, web_config_file, log_level, log_format = self._start
        self._writer.write(
            _frame(
                Start(
                    host,
                    port,
                    limits,
                    web_config_file,
                    log_level,
                    log_format,
                    self._state(),
                )
            )
        )
        async with asyncio.timeout(60.0):
            reply = await _read(reader)
        if isinstance(reply, Failed):
            await self.close()
            raise ListenError(f"cannot serve on {_address(host, port)}: {reply.error}")
        if not isinstance(reply, Listening):
            await self.close()
            raise ListenError("the HTTP front process ended before listening")
        self._tasks = [
            asyncio.create_task(self._answer(reader), name="front answers"),
            asyncio.create_task(self._republish(), name="front publish"),
        ]
        return reply.port

    def publish(self) -> None:
        """Send the current state; cheap (one /metrics body, ~270 KB at
        100k nodes), so it is sent whole."""
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        if writer.transport.get_write_buffer_size() > _MAX_UNREAD:
            # A front that stopped reading must not grow this process by a
            # body a second; what it serves by then is moot.
            return
        writer.write(_frame(self._state()))

    def _state(self) -> State:
        view = self._view
        deadline, waiting_for = view.progress
        return State(view.metrics(), view.ready, view.status, deadline, waiting_for)

    async def _republish(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_EVERY_SECONDS)
            self.publish()

    async def _answer(self, reader: asyncio.StreamReader) -> None:
        try:
            while (message := await _read(reader)) is not None:
                if isinstance(message, Ask):
                    task = asyncio.create_task(self._answer_one(message))
                    self._tasks.append(task)
                    task.add_done_callback(self._tasks.remove)
        finally:
            if not self._closing:
                log.error("the HTTP front process ended; stopping")
                self.ended.set()

    async def _answer_one(self, ask: Ask) -> None:
        try:
            response = await route(self._view, ask.path, ask.headers)
        except Exception:
            log.exception("answering for the front failed", extra=fields(path=ask.path))
            response = Response(500, b"internal error; see the exporter's log\n")
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(
                _frame(
                    Answer(
                        ask.id,
                        response.status,
                        response.body,
                        response.content_type,
                        response.headers,
                    )
                )
            )

    async def close(self) -> None:
        """Stop the front: it stops listening as soon as its link closes."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        process = self._process
        if process is not None and process.returncode is None:
            try:
                async with asyncio.timeout(5.0):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


if __name__ == "__main__":
    sys.exit(main())
