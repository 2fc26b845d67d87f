"""The child's side of a decoding worker process, shared by the target
worker (`prometheus/target_worker.py`) and the Node page worker
(`kubernetes/node_worker.py`); the collector's side is `worker_process.py`.

A worker is run as `python -m <its module> --fd N`: one socketpair to the
collector (`link.py`), one request at a time, each answered in order with
the worker's answer or a `Failed`. It imports msgspec, the model and the
parsers only, and no multiprocessing: a worker of `ProcessPoolExecutor`
needed a resource tracker process (13 MB) and a writable /dev/shm for its
queues' semaphores.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import msgspec

from coverage_exporter import heap, link
from coverage_exporter.sources.errors import BodyTooLarge, SourceError


def _inflate_module() -> ModuleType:
    """ISA-L's zlib where it has a wheel (~2.4x faster, see
    sources.httpclient), else zlib's: the same API."""
    try:
        return importlib.import_module("isal.isal_zlib")
    except ImportError:
        return zlib


_zlib = _inflate_module()

INFLATE_PIECE_BYTES = 1 << 20


class Failed(msgspec.Struct, frozen=True, tag=True):
    """The read's SourceError (or BodyTooLarge, with its limit)."""

    message: str
    too_large_limit: int | None = None


def _inflater(encoding: str) -> Any:
    """A decompressor (zlib's or isal's) for a Content-Encoding other than
    identity."""
    if encoding == "gzip":
        return _zlib.decompressobj(16 + _zlib.MAX_WBITS)
    if encoding == "deflate":
        return _zlib.decompressobj()
    raise SourceError(f"unsupported Content-Encoding {encoding!r}")


def inflated(body: bytes | bytearray, encoding: str, limit: int) -> Iterator[bytes]:
    """The body decompressed, in pieces of at most INFLATE_PIECE_BYTES made
    as they are consumed (memory stays at a piece; a gzip bomb is stopped
    one piece past `limit`)."""
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise BodyTooLarge(limit)
        yield bytes(body)
        return
    inflater = _inflater(encoding)
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


def inflated_whole(body: bytes, encoding: str, limit: int) -> bytes:
    """The body decompressed into one buffer, for a page that is parsed
    whole: no pieces joined afterwards (a copy of 7.5 MB a Node page, and
    twice the page in memory meanwhile), and never more than `limit` + 1
    bytes made, so a gzip bomb costs no more than that."""
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise BodyTooLarge(limit)
        return body
    inflater = _inflater(encoding)
    try:
        data = inflater.decompress(body, limit + 1)
        if len(data) > limit or inflater.unconsumed_tail:
            raise BodyTooLarge(limit)
        rest = inflater.flush()
    except _zlib.error as exc:
        raise SourceError(f"undecodable {encoding} body: {exc}") from None
    if rest:
        if len(data) + len(rest) > limit:
            raise BodyTooLarge(limit)
        data += rest
    return data


def _answer(
    request: Any, decode: Callable[[Any], msgspec.Struct], failures: tuple[type[Exception], ...]
) -> msgspec.Struct:
    try:
        return decode(request)
    except BodyTooLarge as exc:
        return Failed(str(exc), exc.limit)
    except failures as exc:
        return Failed(str(exc))
    except Exception as exc:  # a bug: this read fails, the worker goes on
        return Failed(f"decoding worker: {type(exc).__name__}: {exc}")


def serve(
    argv: list[str] | None,
    what: str,
    request_type: type[msgspec.Struct],
    decode: Callable[[Any], msgspec.Struct],
    failures: tuple[type[Exception], ...] = (SourceError,),
) -> int:
    """The worker's loop: each request decoded by `decode`, answered in
    order; `failures` are what a bad answer from the server raises, sent
    back as their message (anything else is a bug, sent back named)."""
    heap.reuse_buffers()
    sock = link.inherited_socket(argv, what)
    requests = msgspec.msgpack.Decoder(request_type)
    answers = msgspec.msgpack.Encoder()
    while (payload := link.recv_frame(sock)) is not None:
        answer = _answer(requests.decode(payload), decode, failures)
        del payload
        link.send_frame(sock, answers.encode(answer))
    return 0
