"""The collector's side of one decoding worker process (the worker's own
side is `worker_child.py`): requests go out in order, answers come back in
the same order, and the worker's tables (of strings, of label sets) are
mirrored here, by the `Mirror` of its kind. Shared by the target decoder
(`prometheus/target_decoder.py`) and the Node page decoder
(`kubernetes/node_decoder.py`), which run one worker process each.

A worker that dies (OOM-killed, crashed) fails the requests it holds as
source errors; the next request starts a new worker. So does a worker that
hangs: one that has not answered its oldest request within its deadline
is killed (`answer`, `WorkerSlot.get`).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

import msgspec

from coverage_exporter import link
from coverage_exporter.sources.errors import BodyTooLarge, SourceError
from coverage_exporter.sources.worker_child import Failed

ENDED = "decoding worker process ended; retried next cycle"
DEADLINE_SECONDS = 60.0
"""Longest a worker may take over one request before it is taken for hung,
killed and replaced. The largest request is a target list (one pool, 1.8 GB
in all at 100k nodes, decoded in seconds) or a Node page of at most
--max-response-bytes (~1 s): 60 s leaves a margin of tens on a loaded
machine. Counted from when the request reached the head of the queue."""
MAX_BODY = link.MAX_FRAME - (1 << 20)
"""Largest body a request may carry: the frame's limit, less room for the
request's other fields. A body of 4 GiB or more does not even fit the
frame's length field."""


_REQUESTS = msgspec.msgpack.Encoder()


class Mirror:
    """The collector's copy of one worker's tables, extended by the reader
    thread for every answer, in the worker's order (see WorkerProcess._read).
    Each kind of worker has its own (target_decoder, node_decoder)."""

    def __init__(self) -> None:
        self.broken = False

    def follow(self, answer: Any) -> None:
        """Take in the new table entries an answer carries."""

    def _extend(self, table: list[Any], start: int, values: Iterable[object]) -> None:
        if start != len(table):
            self.broken = True  # never expected; the owner then restarts the worker
            return
        table.extend(values)


class WorkerProcess:
    """One worker process and the two threads that talk to it. Threads
    rather than the event loop, so that a worker serves every loop of the
    process (the tests run many) and a busy worker never blocks one."""

    def __init__(self, module: str, answers: msgspec.msgpack.Decoder[Any], mirror: Mirror) -> None:
        """module: the worker's program (its `__name__`, so that a move
        shows as an import error); answers: a decoder of its answers and
        of `Failed`."""
        mine, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                link.child_command(module, theirs), pass_fds=(theirs.fileno(),)
            )
        self._sock = mine
        self._answers = answers
        self.mirror = mirror
        self.alive = True
        self._lock = threading.Lock()
        self._pending: deque[Future[Any]] = deque()
        self._progress = time.monotonic()
        """When the worker last answered, or took up a request while idle:
        the oldest pending request has been in its hands since then."""
        self._outbox: queue.SimpleQueue[msgspec.Struct | None] = queue.SimpleQueue()
        """Encoded one at a time by the writer: the bodies waiting for the
        worker are held once, by their requests."""
        for target, name in ((self._write, "decoder writer"), (self._read, "decoder reader")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def submit(self, request: msgspec.Struct) -> Future[Any]:
        """The answer, or a SourceError (BodyTooLarge) for a Failed one."""
        future: Future[Any] = Future()
        size = len(getattr(request, "body", b""))  # every request kind carries a body
        if size > MAX_BODY:
            # Refused here, in order: the writer thread could only fail
            # every request with it (msgspec or struct refuse the length).
            future.set_exception(
                SourceError(
                    f"a body of {size} bytes is too large for the decoding "
                    f"worker (at most {MAX_BODY})"
                )
            )
            return future
        with self._lock:
            if not self.alive:
                future.set_exception(SourceError(ENDED))
                return future
            if not self._pending:
                self._progress = time.monotonic()
            self._pending.append(future)
            self._outbox.put(request)
        return future

    def overdue_in(self, deadline: float) -> float:
        """Seconds until the oldest pending request is past `deadline`
        (0 or less: the worker is hung); infinite while nothing is pending."""
        with self._lock:
            if not self._pending or not self.alive:
                return float("inf")
            return self._progress + deadline - time.monotonic()

    def _write(self) -> None:
        while (request := self._outbox.get()) is not None:
            try:
                link.send_frame(self._sock, _REQUESTS.encode(request))
            except (OSError, ValueError, OverflowError, msgspec.EncodeError, struct.error):
                # Never a dead writer under a live slot: every request held
                # fails as a source error and the next starts a new worker.
                self._end()
                return
            del request

    def _read(self) -> None:
        try:
            while (payload := link.recv_frame(self._sock)) is not None:
                answer = self._answers.decode(payload)
                with self._lock:
                    future = self._pending.popleft()
                    self._progress = time.monotonic()
                # Always, in the worker's order, even for a request that was
                # cancelled meanwhile (a deadline): a lost answer would leave
                # a hole in the tables and wrong strings after it.
                self.mirror.follow(answer)
                if not future.set_running_or_notify_cancel():
                    continue
                if isinstance(answer, Failed):
                    future.set_exception(_error(answer))
                else:
                    future.set_result(answer)
        except (OSError, link.FrameError, msgspec.DecodeError, IndexError):
            pass
        self._end()

    def _end(self) -> None:
        with self._lock:
            if not self.alive:
                return
            self.alive = False
            pending = list(self._pending)
            self._pending.clear()
        self._outbox.put(None)
        for future in pending:
            if future.set_running_or_notify_cancel():
                future.set_exception(SourceError(ENDED))

    def stop(self) -> None:
        self._end()
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self.process.wait()
        self._sock.close()


async def answer(worker: WorkerProcess, request: msgspec.Struct, deadline: float, what: str) -> Any:
    """The worker's answer to `request`; a worker that holds its oldest
    request past `deadline` is killed (every request it held fails) and
    this one fails as a source error: the source is down for the cycle."""
    waiting = asyncio.wrap_future(worker.submit(request))
    try:
        while True:
            wait = min(deadline, max(0.01, worker.overdue_in(deadline)))
            done, _ = await asyncio.wait({waiting}, timeout=wait)
            if done:
                return waiting.result()
            if worker.overdue_in(deadline) <= 0:
                worker.stop()
                raise SourceError(
                    f"{what} did not answer within {deadline:g}s; killed, a new one "
                    "starts with the next request"
                )
    except BaseException:
        waiting.cancel()  # the worker's answer to it is then only mirrored
        raise


def _error(failed: Failed) -> SourceError:
    if failed.too_large_limit is not None:
        return BodyTooLarge(failed.too_large_limit)
    return SourceError(failed.message)


class WorkerSlot:
    """At most one worker process: started on first use, and again after
    it ended or hung."""

    def __init__(
        self, start: Callable[[], WorkerProcess], deadline: float = DEADLINE_SECONDS
    ) -> None:
        self._start = start
        self._worker: WorkerProcess | None = None
        self._lock = threading.Lock()
        self.deadline = deadline

    def get(self) -> tuple[WorkerProcess, bool]:
        """The worker, and whether it is a new one (with empty tables). A
        worker past its deadline is replaced even when no one waited for it
        (the source deadline cancelled the read): a new request must not
        queue behind a hung one."""
        with self._lock:
            worker = self._worker
            if worker is not None and worker.alive and worker.overdue_in(self.deadline) > 0:
                return worker, False
            if worker is not None:
                worker.stop()
            worker = self._worker = self._start()
            return worker, True

    def stop(self) -> None:
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
