"""Decoding Prometheus target lists in a worker process.

At 100k nodes with HA replicas the exporter reads ~800k active targets,
~1.8 GB of JSON, in its first cycle and again at every full re-read.
Inflating and decoding that is CPU-bound Python/C work that holds the GIL:
in the serving process it took one core for seconds, delayed `/metrics`
(up to 439 ms measured during re-reads) and held the pieces in flight in
the serving process's memory. Here the HTTP stays in the serving process
(credentials, TLS, limits, errors are unchanged) but the gzip body is
handed over still compressed (~20x smaller) to one worker process, which
inflates it piece by piece, decodes it with the very same `TargetStream`,
and sends the targets back as a string table and one array of indices.
The serving process rebuilds the Targets with C-level loops and interns
only the distinct strings, so they are the same objects as the Nodes'.
Figures: bench/analysis.md.

A worker that dies (OOM-killed, crashed) fails that one read as a source
error, and the next read starts a new worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import multiprocessing
import os
import sys
from array import array
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import chain, starmap

import msgspec

from coverage_exporter.model.objects import Target
from coverage_exporter.sources.health import BodyTooLarge, SourceError

log = logging.getLogger("coverage_exporter.sources.prometheus")

try:
    from isal import isal_zlib as _zlib
except ImportError:  # same fallback as sources.httpclient
    import zlib as _zlib

INFLATE_PIECE_BYTES = 1 << 20
_FIELDS = len(Target.__struct_fields__)


@dataclass(frozen=True, slots=True)
class EncodedPool:
    """One pool's targets as they cross the process boundary."""

    name: str
    active: int
    indices: bytes
    """array('I'): len(Target fields) indices per target, in field order,
    into the worker's string table (index 0 is None); targets in the
    order of these bytes (see _canonical)."""
    digest: bytes
    """Of `indices`: equal digests from one worker are equal targets."""


@dataclass(frozen=True, slots=True)
class Decoded:
    worker: int
    """The worker's pid: a new worker starts a new string table."""
    table_start: int
    strings: list[str]
    """The worker's table entries from table_start on, new in this answer."""
    pools: list[EncodedPool]
    body_bytes: int
    """Bytes after decompression (what `response_bytes_total` counts)."""
    final_labels_only: int


def _inflated(body: bytes | bytearray, encoding: str, limit: int) -> Iterator[bytes]:
    """The body decompressed, in pieces of at most INFLATE_PIECE_BYTES made
    as they are consumed (memory stays at a piece; a gzip bomb is stopped
    one piece past `limit`)."""
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise BodyTooLarge(limit)
        yield bytes(body)
        return
    if encoding == "gzip":
        inflater = _zlib.decompressobj(16 + _zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = _zlib.decompressobj()
    else:
        raise SourceError(f"unsupported Content-Encoding {encoding!r}")
    total = 0
    data: bytes | bytearray = body
    try:
        while data:
            piece = inflater.decompress(data, INFLATE_PIECE_BYTES)
            total += len(piece)
            if total > limit:
                raise BodyTooLarge(limit)
            data = inflater.unconsumed_tail
            yield piece
        piece = inflater.flush()
    except _zlib.error as exc:
        raise SourceError(f"undecodable {encoding} body: {exc}") from None
    if total + len(piece) > limit:
        raise BodyTooLarge(limit)
    yield piece


# The worker's string table, kept for its lifetime: the serving process
# holds the mirror, so a string crosses (and is interned there) once, not
# once per pool and read. Node names, IPs and pod names are what it holds;
# past _TABLE_MAX (node and pod churn over months) the worker exits and a
# new one starts a fresh table.
_TABLE: dict[str | None, int] = {None: 0}
_TABLE_MAX = 4_000_000


def _encode(name: str, active: int, targets: Sequence[Target], new: list[str]) -> EncodedPool:
    # C-level loops only: the worker has a million targets to go through.
    flat = list(chain.from_iterable(map(msgspec.structs.astuple, targets)))
    table = _TABLE
    unseen = [s for s in dict.fromkeys(flat) if s not in table]
    base = len(table)
    table.update(zip(unseen, range(base, base + len(unseen)), strict=True))
    new.extend(unseen)  # type: ignore[arg-type]  # None is always in the table
    indices = _canonical(array("I", map(table.__getitem__, flat)).tobytes())
    return EncodedPool(name, active, indices, hashlib.blake2b(indices, digest_size=16).digest())


_ROW = _FIELDS * 4


def _canonical(indices: bytes) -> bytes:
    """The pool's targets in one order, whatever order the server sent:
    Prometheus lists a pool's targets from a Go map, in a new order on
    every read, and an unchanged pool must give the same bytes (~25 ms of
    the worker's time for 50k targets)."""
    rows = [indices[i : i + _ROW] for i in range(0, len(indices), _ROW)]
    rows.sort()
    return b"".join(rows)


def decode_in_worker(
    body: bytes | bytearray, encoding: str, only_pool: str | None, limit: int, piece_bytes: int
) -> Decoded:
    """Runs in the worker: inflate, decode, encode for the trip back."""
    from coverage_exporter.sources.targets_json import TargetStream

    if len(_TABLE) > _TABLE_MAX:
        os._exit(0)  # BrokenProcessPool for this read; the next one starts afresh
    stream = TargetStream(only_pool, piece_bytes=piece_bytes, max_buffered=limit)
    total = 0
    pending = bytearray()
    for piece in _inflated(body, encoding, limit):
        total += len(piece)
        pending += piece
        if len(pending) >= piece_bytes:
            stream.feed(pending)
            pending = bytearray()
    del body
    stream.feed(pending)
    pools = stream.finish()
    start = len(_TABLE)
    new: list[str] = []
    encoded = [_encode(name, p.active, p.targets, new) for name, p in pools.items()]
    final_labels_only = stream.final_labels_only
    del pools, stream
    _release_free_memory()
    return Decoded(os.getpid(), start, new, encoded, total, final_labels_only)


def _release_free_memory() -> None:
    # The decoded pieces leave glibc's heap fragmented; hand it back so the
    # worker's RSS falls to its string table between reads.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _Mirror:
    """The serving process's copy of one worker's string table, interned.

    Extended from the executor's result callback, which runs for every
    answer in the worker's order, even when the read that asked for it was
    cancelled meanwhile (a deadline): a lost answer would leave a hole in
    the table and wrong strings in every later pool."""

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.table: list[str | None] = [None]
        self.broken = False

    def extend(self, start: int, strings: list[str]) -> None:
        if start != len(self.table):
            self.broken = True  # never expected; the pool then restarts the worker
            return
        self.table.extend(map(sys.intern, strings))


REBUILD_CHUNK = 10_000
"""Targets rebuilt per step (~4 ms): one C-level call holds the GIL for
its whole length, and a 50k-target pool rebuilt in one call held the
event loop, and /metrics, for tens of milliseconds."""


async def rebuild(table: list[str | None], pool: EncodedPool) -> tuple[Target, ...]:
    """The pool's Targets in the serving process: C-level loops, ~0.4 us a
    target, and every string is the mirror's interned one. In steps of
    REBUILD_CHUNK with the event loop served in between. A tuple, which
    the garbage collector stops tracking (see PoolTargets)."""
    indices = array("I")
    indices.frombytes(pool.indices)
    step = REBUILD_CHUNK * _FIELDS
    chunks: list[tuple[Target, ...]] = []
    for start in range(0, len(indices), step):
        if chunks:
            await asyncio.sleep(0)
        values = map(table.__getitem__, indices[start : start + step])
        chunks.append(tuple(starmap(Target, zip(*[values] * _FIELDS, strict=True))))
    return chunks[0] if len(chunks) == 1 else tuple(chain.from_iterable(chunks))


def _warm() -> None:
    # Imports what decode_in_worker needs while the serving process is busy
    # listing the cluster, so the first read does not pay for it.
    from coverage_exporter.sources import targets_json  # noqa: F401


class DecoderPool:
    """One worker process, started on first use, shared by every
    Prometheus source of the process (they take turns: one core is what
    the decoding needs, and the serving process keeps the other)."""

    def __init__(self) -> None:
        self._executor: ProcessPoolExecutor | None = None
        self._mirror: _Mirror | None = None
        self._rebuilt: dict[tuple[int, bytes], tuple[Target, ...]] = {}
        """Targets by (worker, digest): a pool read again
        unchanged, or the same pool of the other replica, is the very same
        tuple, neither rebuilt nor held twice."""

    def _get(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn, not fork: the serving process runs threads and an
            # event loop, which a forked child must not inherit.
            self._executor = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
        return self._executor

    def warm(self) -> None:
        self._get().submit(_warm)

    async def decode(
        self,
        body: bytes | bytearray,
        encoding: str,
        only_pool: str | None,
        limit: int,
        piece_bytes: int,
    ) -> tuple[Decoded, dict[str, tuple[Target, ...]]]:
        """The answer and each pool's rebuilt Targets."""
        executor = self._get()
        future = executor.submit(decode_in_worker, body, encoding, only_pool, limit, piece_bytes)
        future.add_done_callback(self._extend_mirror)
        try:
            decoded: Decoded = await asyncio.wrap_future(future)
        except BrokenProcessPool:
            # The worker died (OOM kill, or its table was full): this read
            # fails, the next one gets a new worker.
            self._restart(executor)
            raise SourceError("target decoding worker process ended; retried next cycle") from None
        mirror = self._mirror
        if mirror is None or mirror.worker != decoded.worker or mirror.broken:
            self._restart(executor)
            raise SourceError("target decoding worker's string table out of step; restarted")
        self._forget_unused()
        table = mirror.table
        out: dict[str, tuple[Target, ...]] = {}
        for pool in decoded.pools:
            key = (decoded.worker, pool.digest)
            targets = self._rebuilt.get(key)
            if targets is None:
                built = await rebuild(table, pool)
                # Another read may have rebuilt the same meanwhile: share its.
                targets = self._rebuilt.setdefault(key, built)
            out[pool.name] = targets
        return decoded, out

    def _forget_unused(self) -> None:
        """Drop the tuples nothing but this cache holds (a pool's previous
        targets once its source moved on). CPython's reference count says
        so: the dict's reference and getrefcount's own."""
        rebuilt = self._rebuilt
        for key in [k for k in rebuilt if sys.getrefcount(rebuilt[k]) <= 2]:
            del rebuilt[key]

    def _extend_mirror(self, future: Future[Decoded]) -> None:
        # The executor's result thread, in the worker's order.
        if future.cancelled() or future.exception() is not None:
            return
        decoded = future.result()
        mirror = self._mirror
        if mirror is None or mirror.worker != decoded.worker:
            mirror = self._mirror = _Mirror(decoded.worker)
        mirror.extend(decoded.table_start, decoded.strings)

    def _restart(self, executor: ProcessPoolExecutor) -> None:
        if self._executor is executor:
            self._executor = None
            self._mirror = None
            self._rebuilt.clear()  # digests of the old worker's table
        executor.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


POOL = DecoderPool()
"""The process's one decoder pool."""
