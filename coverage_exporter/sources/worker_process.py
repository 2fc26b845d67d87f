"""The collector's side of one decoding worker process (the worker itself
is `decoder_worker.py`): requests go out in order, answers come back in
the same order, and the worker's tables of strings and label sets are
mirrored here, interned. Shared by the target decoder and the Node page
decoder, which run one worker process each.

A worker that dies (OOM-killed, crashed) fails the requests it holds as
source errors; the next request starts a new worker.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future

import msgspec

from coverage_exporter import link
from coverage_exporter.model.objects import Taint
from coverage_exporter.sources.errors import BodyTooLarge, SourceError
from coverage_exporter.sources.prometheus.target_worker import (
    ANSWER_DECODER,
    REQUEST_ENCODER,
    Answer,
    Decoded,
    Failed,
    NodePage,
    NodePageRequest,
    Request,
)

ENDED = "decoding worker process ended; retried next cycle"


class Mirror:
    """The collector's copy of one worker's tables, interned: strings
    (targets) and label sets and taints (Nodes). Extended by the reader
    thread for every answer, in the worker's order (see WorkerProcess._read)."""

    def __init__(self) -> None:
        self.table: list[str | None] = [None]
        self.label_sets: list[dict[str, str]] = []
        self.taint_sets: list[tuple[Taint, ...]] = []
        self.broken = False

    def follow(self, answer: Answer) -> None:
        if isinstance(answer, Decoded):
            self._extend(self.table, answer.table_start, map(sys.intern, answer.strings))
        elif isinstance(answer, NodePage):
            self._extend(
                self.label_sets,
                answer.label_sets_start,
                ({sys.intern(k): sys.intern(v) for k, v in s.items()} for s in answer.label_sets),
            )
            self._extend(
                self.taint_sets,
                answer.taint_sets_start,
                (tuple(tuple(map(sys.intern, t)) for t in ts) for ts in answer.taint_sets),  # type: ignore[misc]
            )

    def _extend(self, table: list, start: int, values: Iterable[object]) -> None:  # type: ignore[type-arg]
        if start != len(table):
            self.broken = True  # never expected; the owner then restarts the worker
            return
        table.extend(values)


class WorkerProcess:
    """One worker process and the two threads that talk to it. Threads
    rather than the event loop, so that a worker serves every loop of the
    process (the tests run many) and a busy worker never blocks one."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                link.child_command("coverage_exporter.sources.prometheus.target_worker", theirs),
                pass_fds=(theirs.fileno(),),
            )
        self._sock = mine
        self.mirror = Mirror()
        self.alive = True
        self._lock = threading.Lock()
        self._pending: deque[Future[Answer]] = deque()
        self._outbox: queue.SimpleQueue[Request | NodePageRequest | None] = queue.SimpleQueue()
        """Encoded one at a time by the writer: the bodies waiting for the
        worker are held once, by their requests."""
        for target, name in ((self._write, "decoder writer"), (self._read, "decoder reader")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def submit(self, request: Request | NodePageRequest) -> Future[Answer]:
        """The answer, or a SourceError (BodyTooLarge) for a Failed one."""
        future: Future[Answer] = Future()
        with self._lock:
            if not self.alive:
                future.set_exception(SourceError(ENDED))
                return future
            self._pending.append(future)
            self._outbox.put(request)
        return future

    @property
    def idle(self) -> bool:
        return not self._pending

    def _write(self) -> None:
        while (request := self._outbox.get()) is not None:
            try:
                link.send_frame(self._sock, REQUEST_ENCODER.encode(request))
            except OSError:
                self._end()
                return
            del request

    def _read(self) -> None:
        try:
            while (payload := link.recv_frame(self._sock)) is not None:
                answer = ANSWER_DECODER.decode(payload)
                with self._lock:
                    future = self._pending.popleft()
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


def _error(failed: Failed) -> SourceError:
    if failed.too_large_limit is not None:
        return BodyTooLarge(failed.too_large_limit)
    return SourceError(failed.message)


class WorkerSlot:
    """At most one worker process: started on first use, and again after
    it ended."""

    def __init__(self) -> None:
        self._worker: WorkerProcess | None = None
        self._lock = threading.Lock()

    def get(self) -> tuple[WorkerProcess, bool]:
        """The worker, and whether it is a new one (with empty tables)."""
        with self._lock:
            worker = self._worker
            if worker is not None and worker.alive:
                return worker, False
            if worker is not None:
                worker.stop()
            worker = self._worker = WorkerProcess()
            return worker, True

    def stop(self) -> None:
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
