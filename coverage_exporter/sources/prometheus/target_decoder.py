"""Decoding Prometheus target lists in a worker process.

At 100k nodes with HA replicas the exporter reads ~800k active targets,
~1.8 GB of JSON, in its first cycle and again at every full re-read.
Inflating and decoding that is CPU-bound Python/C work that holds the GIL:
in the collector process it took one core for seconds, delayed `/metrics`
(up to 439 ms measured during re-reads) and held the pieces in flight in
the collector's memory. Here the HTTP stays in the collector process
(credentials, TLS, limits, errors are unchanged) but the gzip body is
handed over still compressed (~20x smaller) to one worker process, which
inflates it piece by piece, decodes it with the very same `TargetStream`,
and sends the targets back as a string table and one array of indices.
The collector rebuilds the Targets with C-level loops and interns
only the distinct strings, so they are the same objects as the Nodes'.
Figures: bench/analysis.md.

A worker that dies (OOM-killed, crashed) fails the reads it holds as
source errors, and the next read starts a new worker. The worker itself is
`target_worker.py`, a plain child process on a socketpair, and
`sources/worker_process.py` talks to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import weakref
from array import array
from collections.abc import Callable, Mapping, Sequence
from itertools import chain, starmap
from typing import Any, cast

import msgspec

from coverage_exporter.model.objects import Target
from coverage_exporter.sources.errors import DEFAULT_LIMITS, SourceError
from coverage_exporter.sources.prometheus import target_worker
from coverage_exporter.sources.prometheus.target_worker import FIELDS, Decoded, EncodedPool, Request
from coverage_exporter.sources.worker_child import Failed
from coverage_exporter.sources.worker_process import (
    DEADLINE_SECONDS,
    Mirror,
    WorkerProcess,
    WorkerSlot,
    answer,
)

REBUILD_CHUNK = 10_000
"""Targets rebuilt per step (~4 ms): one C-level call holds the GIL for
its whole length, and a 50k-target pool rebuilt in one call held the
event loop, and /metrics, for tens of milliseconds."""


async def rebuild(
    table: list[str | None], pool: EncodedPool, previous: Sequence[Target] = ()
) -> tuple[Target, ...]:
    """The pool's Targets in the collector process: C-level loops, ~0.4 us a
    target, and every string is the mirror's interned one. In steps of
    REBUILD_CHUNK with the event loop served in between. A tuple, which
    the garbage collector stops tracking (see PoolTargets).

    `previous`: the pool's targets as last read. A target equal to one of
    them is that very object, and only the changed ones are new: a re-read
    where a few targets changed health (a changed digest, so not shared
    whole) would otherwise hold every target of the pool twice until the
    old answer is let go, and leave the heap fragmented after it (bench/
    analysis.md, "Re-reads that change every pool")."""
    indices = array("I")
    indices.frombytes(pool.indices)
    step = REBUILD_CHUNK * FIELDS
    # Tuples of the very strings of the table: their hashes are cached.
    known = (
        dict(zip(map(msgspec.structs.astuple, previous), previous, strict=True))
        if previous
        else None
    )
    chunks: list[tuple[Target, ...]] = []
    for start in range(0, len(indices), step):
        if chunks:
            await asyncio.sleep(0)
        values = map(table.__getitem__, indices[start : start + step])
        rows = zip(*[values] * FIELDS, strict=True)
        if known is None:
            chunks.append(tuple(starmap(_TARGET, rows)))
        else:
            chunks.append(_reusing(known, list(rows)))
    return chunks[0] if len(chunks) == 1 else tuple(chain.from_iterable(chunks))


def _reusing(
    known: dict[tuple[object, ...], Target], rows: list[tuple[object, ...]]
) -> tuple[Target, ...]:
    out: list[Target | None] = list(map(known.get, rows))
    # list.index scans in C: Python runs only for the targets that changed.
    missing = -1
    with contextlib.suppress(ValueError):
        while True:
            missing = out.index(None, missing + 1)
            out[missing] = _TARGET(*rows[missing])
    return cast("tuple[Target, ...]", tuple(out))  # no None is left


class TargetMirror(Mirror):
    """The worker's string table, interned: a string crosses once."""

    def __init__(self) -> None:
        super().__init__()
        self.table: list[str | None] = [None]

    def follow(self, answer: Any) -> None:
        if isinstance(answer, Decoded):
            self._extend(self.table, answer.table_start, map(sys.intern, answer.strings))


_ANSWERS = msgspec.msgpack.Decoder(Decoded | Failed)


def _start_worker() -> WorkerProcess:
    return WorkerProcess(target_worker.__name__, _ANSWERS, TargetMirror())


_TARGET: Callable[..., Target] = Target
"""Targets made from the worker's rows: its table holds each field's value
(None only where the field allows it), which nothing here checks again."""

READS_AHEAD = 8
"""Target reads in flight at once: one in the worker, the next ones
downloading meanwhile."""


class SharedTargets:
    """One pool's rebuilt Targets, shared by every holder of an equal answer
    (the other replica, the next unchanged read). The pool's holders keep
    it alive (PoolTargets.keep); the decoder's cache only refers to it
    weakly, so the targets go as soon as the last holder moves on."""

    __slots__ = ("__weakref__", "targets")

    def __init__(self, targets: tuple[Target, ...]) -> None:
        self.targets = targets


class TargetDecoder:
    """Target lists decoded in one worker process, started on first use,
    shared by every Prometheus source of the process (they take turns: one core is what
    the decoding needs, and the collector keeps the other)."""

    def __init__(self, deadline_seconds: float = DEADLINE_SECONDS) -> None:
        self._slot = WorkerSlot(_start_worker, deadline_seconds)
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        """One per event loop (the process has one; the tests many)."""
        self._rebuilt: weakref.WeakValueDictionary[tuple[int, bytes], SharedTargets] = (
            weakref.WeakValueDictionary()
        )
        """Targets by (worker, digest): a pool read again unchanged, or the
        same pool of the other replica, is the very same tuple, neither
        rebuilt nor held twice."""

    def _get(self) -> WorkerProcess:
        worker, new = self._slot.get()
        if new:
            self._rebuilt.clear()  # digests of the old worker's table
        return worker

    def turn(self) -> asyncio.Semaphore:
        """Held from the start of a read until its targets are rebuilt:
        READS_AHEAD reads at a time, one of them in the worker."""
        loop = asyncio.get_running_loop()
        turns = self._turns.get(loop)
        if turns is None:
            turns = self._turns[loop] = asyncio.Semaphore(READS_AHEAD)
        return turns

    def warm(self) -> None:
        """Start the worker now, so its start-up overlaps the cluster's lists."""
        self._get()

    async def decode(
        self,
        body: bytes | bytearray,
        encoding: str,
        only_pool: str | None,
        limit: int,
        piece_bytes: int,
        previous: Mapping[str, Sequence[Target]] | None = None,
        max_held: int = DEFAULT_LIMITS.max_body_bytes,
    ) -> tuple[Decoded, dict[str, SharedTargets]]:
        """The answer and each pool's rebuilt Targets; `previous`: each
        pool's targets as last read, reused where unchanged (see rebuild)."""
        worker = self._get()
        mirror = worker.mirror
        assert isinstance(mirror, TargetMirror)
        # The bytearray itself (msgspec encodes it as bytes, as is): no copy
        # while it waits.
        request = Request(body, encoding, only_pool, limit, piece_bytes, max_held)  # type: ignore[arg-type]  # a bytearray crosses as bytes
        decoded = await answer(worker, request, self._slot.deadline, "target decoding worker")
        if not isinstance(decoded, Decoded) or mirror.broken:
            worker.stop()
            raise SourceError("target decoding worker out of step; restarted")
        table = mirror.table
        out: dict[str, SharedTargets] = {}
        for pool in decoded.pools:
            key = (decoded.worker, pool.digest)
            shared = self._rebuilt.get(key)
            if shared is None:
                before = previous.get(pool.name, ()) if previous else ()
                built = SharedTargets(await rebuild(table, pool, before))
                # Another read may have rebuilt the same meanwhile: share its.
                shared = self._rebuilt.setdefault(key, built)
            out[pool.name] = shared
        return decoded, out

    def shutdown(self) -> None:
        self._slot.stop()


SHARED = TargetDecoder()
"""The process's one target decoder (one worker process), shared by every
Prometheus source."""
