"""A long `audit` on a terminal shows what it is waiting for, on stderr:
the Kubernetes lists (objects so far) and each Prometheus (requests and
bytes so far), one line rewritten twice a second, cleared at the end.
Nothing when stderr is not a terminal (CI logs, pipes), and the findings
on stdout are never touched."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from coverage_exporter.app import Exporter

INTERVAL_SECONDS = 0.5
_CLEAR = "\r\x1b[K"


class _ClearingStream(io.TextIOBase):
    """The log handler's stream: a log line first clears the progress line."""

    def __init__(self, stream: TextIO, progress: Progress) -> None:
        self._stream, self._progress = stream, progress

    def write(self, text: str) -> int:
        self._progress.clear()
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()


class Progress:
    def __init__(self, exporter: Exporter, stream: TextIO) -> None:
        self._exporter = exporter
        self._stream = stream
        self._shown = False
        self._task: asyncio.Task[None] | None = None
        self._handlers: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []

    @classmethod
    def on_terminal(cls, exporter: Exporter, stream: TextIO | None = None) -> Progress | None:
        """Started, when `stream` (stderr) is a terminal; else None."""
        stream = stream or sys.stderr
        if not stream.isatty():
            return None
        progress = cls(exporter, stream)
        progress.start()
        return progress

    def start(self) -> None:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self._stream:
                self._handlers.append((handler, handler.stream))
                handler.setStream(_ClearingStream(self._stream, self))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="progress")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers.clear()
        self.clear()

    def clear(self) -> None:
        if self._shown:
            self._stream.write(_CLEAR)
            self._stream.flush()
            self._shown = False

    async def _run(self) -> None:
        while True:
            self.show(self.line())
            await asyncio.sleep(INTERVAL_SECONDS)

    def show(self, line: str) -> None:
        try:
            width = os.get_terminal_size(self._stream.fileno()).columns - 1
        except (OSError, ValueError):
            width = 99
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(_CLEAR + line[:width])
            self._stream.flush()
            self._shown = True

    def line(self) -> str:
        kubernetes = self._exporter.kubernetes
        listing = []
        for reflector in kubernetes.reflectors():
            if reflector.synced:
                continue
            listing.append(f"{reflector.name} {reflector.listing_objects}")
        if kubernetes.api is None:
            parts = ["kubernetes: connecting"]
        elif listing:
            parts = ["kubernetes: listing " + ", ".join(listing)]
        else:
            parts = ["kubernetes: listed"]
        for source in self._exporter.prometheus:
            h = source.health
            state = "read" if h.last_success_timestamp else "reading"
            parts.append(
                f"{h.prometheus}: {state}, {h.requests_total} requests, "
                f"{h.response_bytes_total / 1e6:.0f} MB"
            )
        return "audit: " + " | ".join(parts)
