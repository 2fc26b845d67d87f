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
import logging
import multiprocessing
import sys
from array import array
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import chain, starmap

import msgspec

from coverage_exporter.model.objects import Target
from coverage_exporter.sources import httpclient
from coverage_exporter.sources.health import SourceError

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
    strings: list[str | None]
    """Distinct strings of the pool's targets; index 0 is None."""
    indices: bytes
    """array('I'): len(Target fields) indices per target, in field order."""


@dataclass(frozen=True, slots=True)
class Decoded:
    pools: list[EncodedPool]
    body_bytes: int
    """Bytes after decompression (what `response_bytes_total` counts)."""
    final_labels_only: int


def _inflated(body: bytes | bytearray, encoding: str, limit: int) -> list[bytes] | bytes:
    """The body decompressed, in pieces of at most INFLATE_PIECE_BYTES
    (bounded memory, and a gzip bomb is stopped one piece past `limit`)."""
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise httpclient.BodyTooLarge(limit)
        return bytes(body)
    if encoding == "gzip":
        inflater = _zlib.decompressobj(16 + _zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = _zlib.decompressobj()
    else:
        raise SourceError(f"unsupported Content-Encoding {encoding!r}")
    pieces: list[bytes] = []
    total = 0
    data = body
    try:
        while data:
            piece = inflater.decompress(data, INFLATE_PIECE_BYTES)
            total += len(piece)
            if total > limit:
                raise httpclient.BodyTooLarge(limit)
            pieces.append(piece)
            data = inflater.unconsumed_tail
        piece = inflater.flush()
    except _zlib.error as exc:
        raise SourceError(f"undecodable {encoding} body: {exc}") from None
    if total + len(piece) > limit:
        raise httpclient.BodyTooLarge(limit)
    pieces.append(piece)
    return pieces


def _encode(name: str, active: int, targets: list[Target]) -> EncodedPool:
    # C-level loops only: the worker has a million targets to go through.
    flat = list(chain.from_iterable(map(msgspec.structs.astuple, targets)))
    distinct = dict.fromkeys(flat)
    distinct.pop(None, None)
    strings: list[str | None] = [None, *distinct]
    index = {s: i for i, s in enumerate(strings)}
    return EncodedPool(name, active, strings, array("I", map(index.__getitem__, flat)).tobytes())


def decode_in_worker(
    body: bytes | bytearray, encoding: str, only_pool: str | None, limit: int, piece_bytes: int
) -> Decoded:
    """Runs in the worker: inflate, decode, encode for the trip back."""
    from coverage_exporter.sources.prometheus import TargetStream

    stream = TargetStream(only_pool, piece_bytes=piece_bytes, max_buffered=limit)
    pieces = _inflated(body, encoding, limit)
    del body
    total = 0
    if isinstance(pieces, bytes):
        total = len(pieces)
        stream.feed(pieces)
    else:
        pending = bytearray()
        for piece in pieces:
            total += len(piece)
            pending += piece
            if len(pending) >= piece_bytes:
                stream.feed(pending)
                pending = bytearray()
        stream.feed(pending)
        del pieces
    pools = stream.finish()
    return Decoded(
        [_encode(name, p.active, p.targets) for name, p in pools.items()],
        total,
        stream.final_labels_only,
    )


def rebuild(pool: EncodedPool) -> list[Target]:
    """The pool's Targets in the serving process."""
    intern = sys.intern
    table = [None if s is None else intern(s) for s in pool.strings]
    indices = array("I")
    indices.frombytes(pool.indices)
    values = map(table.__getitem__, indices)
    return list(starmap(Target, zip(*[values] * _FIELDS, strict=True)))


def _warm() -> None:
    # Imports what decode_in_worker needs while the serving process is busy
    # listing the cluster, so the first read does not pay for it.
    from coverage_exporter.sources import prometheus  # noqa: F401


class DecoderPool:
    """One worker process, started on first use, shared by every
    Prometheus source of the process (they take turns: one core is what
    the decoding needs, and the serving process keeps the other)."""

    def __init__(self) -> None:
        self._executor: ProcessPoolExecutor | None = None

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
        self, body: bytes, encoding: str, only_pool: str | None, limit: int, piece_bytes: int
    ) -> Decoded:
        executor = self._get()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                executor, decode_in_worker, body, encoding, only_pool, limit, piece_bytes
            )
        except BrokenProcessPool:
            # The worker died (OOM kill?): this read fails, the next one
            # gets a new worker.
            self._executor = None
            executor.shutdown(wait=False, cancel_futures=True)
            raise SourceError("target decoding worker process died") from None

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


POOL = DecoderPool()
"""The process's one decoder pool."""
