"""The decoding worker process: target lists (the collector's side is
`target_decoder.py`) and Node list pages (`node_decoder.py`).

Run as `python -m coverage_exporter.sources.decoder_worker --fd N`: one
socketpair to the collector (`link.py`), one request at a time, each
answered in order: a `Request` with a `Decoded`, a `NodePageRequest` with
a `NodePage`, either with a `Failed`. The collector runs one such process
for targets and another for Node lists, so the two decode side by side.
It imports msgspec, the model and the parsers only, and no
multiprocessing: a worker of `ProcessPoolExecutor` needed a resource
tracker process (13 MB) and a writable /dev/shm for its queues'
semaphores.
"""

from __future__ import annotations

import hashlib
import os
import sys
from array import array
from collections.abc import Iterator
from itertools import chain, filterfalse
from typing import Any

import msgspec

from coverage_exporter import heap, link
from coverage_exporter.model.objects import Taint, Target
from coverage_exporter.sources import k8s_parse
from coverage_exporter.sources.health import BodyTooLarge, SourceError
from coverage_exporter.sources.targets_json import PoolTargets, TargetStream

try:
    from isal import isal_zlib as _zlib
except ImportError:  # same fallback as sources.httpclient
    import zlib as _zlib

INFLATE_PIECE_BYTES = 1 << 20
FIELDS = len(Target.__struct_fields__)


class Request(msgspec.Struct, frozen=True, tag=True):
    """One target list to decode."""

    body: bytes
    """The answer's body as it came (gzip, mostly); the collector hands
    over its bytearray, which msgspec encodes as it is, not copied."""
    encoding: str
    only_pool: str | None
    limit: int
    """The whole list once inflated (Limits.max_stream_bytes)."""
    piece_bytes: int
    max_held: int
    """What may be held whole once inflated (Limits.max_body_bytes, the
    --max-response-bytes flag): a list that does not split between
    targets is buffered whole, and this bounds it in the worker as in the
    collector process."""


class EncodedPool(msgspec.Struct, frozen=True):
    """One pool's targets as they cross the process boundary."""

    name: str
    active: int
    indices: bytes
    """array('I'): len(Target fields) indices per target, in field order,
    into the worker's string table (index 0 is None); targets in the
    order of these bytes (see _canonical)."""
    digest: bytes
    """Of `indices`: equal digests from one worker are equal targets."""


class Decoded(msgspec.Struct, frozen=True, tag=True):
    worker: int
    """The worker's pid: a new worker starts a new string table."""
    table_start: int
    strings: list[str]
    """The worker's table entries from table_start on, new in this answer."""
    pools: list[EncodedPool]
    body_bytes: int
    """Bytes after decompression (what `response_bytes_total` counts)."""
    final_labels_only: int


class Failed(msgspec.Struct, frozen=True, tag=True):
    """The read's SourceError (or BodyTooLarge, with its limit)."""

    message: str
    too_large_limit: int | None = None


class NodePageRequest(msgspec.Struct, frozen=True, tag=True):
    """One page of a Node LIST to decode, as it came (gzip, mostly)."""

    body: bytes
    encoding: str
    limit: int


class WireNode(msgspec.Struct, array_like=True, gc=False):
    """A model.objects.Node as it crosses: its label set and taints are
    indices into the worker's tables of them (NodePage), so that Nodes
    with equal labels share one dict in the collector process too."""

    name: str
    addresses: tuple[str, ...]
    ready: bool
    labels: int
    taints: int
    unschedulable: bool


class NodePage(msgspec.Struct, frozen=True, tag=True):
    label_sets_start: int
    label_sets: list[dict[str, str]]
    """The worker's label sets from label_sets_start on, new in this page."""
    taint_sets_start: int
    taint_sets: list[tuple[Taint, ...]]
    nodes: list[WireNode]
    errors: list[str]
    """One message per object that did not parse (see ObjectParser)."""
    resource_version: str | None
    continue_: str | None
    body_bytes: int
    """Bytes after decompression."""


Answer = Decoded | NodePage | Failed
REQUEST_ENCODER = msgspec.msgpack.Encoder()
ANSWER_DECODER = msgspec.msgpack.Decoder(Answer)


def _inflater(encoding: str) -> Any:
    """A decompressor (zlib's or isal's) for a Content-Encoding other than
    identity."""
    if encoding == "gzip":
        return _zlib.decompressobj(16 + _zlib.MAX_WBITS)
    if encoding == "deflate":
        return _zlib.decompressobj()
    raise SourceError(f"unsupported Content-Encoding {encoding!r}")


def _inflated(body: bytes | bytearray, encoding: str, limit: int) -> Iterator[bytes]:
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


# The worker's string table, kept for its lifetime: the collector process
# holds the mirror, so a string crosses (and is interned there) once, not
# once per pool and read. Node names, IPs and pod names are what it holds;
# past _TABLE_MAX (node and pod churn over months) the worker exits and a
# new one starts a fresh table.
_TABLE: dict[str | None, int] = {None: 0}
_TABLE_MAX = 4_000_000


def _encode(name: str, pool: PoolTargets, new: list[str]) -> EncodedPool:
    # C-level loops only: the worker has a million targets to go through.
    flat = list(chain.from_iterable(map(msgspec.structs.astuple, pool.targets)))
    pool.targets = ()  # the Targets go now, before the copies below are made
    table = _TABLE
    # In first-seen order: the same answer gets the same indices in any
    # worker, so a restarted one hands out its targets in the same order.
    unseen = list(dict.fromkeys(filterfalse(table.__contains__, flat)))
    base = len(table)
    table.update(zip(unseen, range(base, base + len(unseen)), strict=True))
    new.extend(unseen)  # type: ignore[arg-type]  # None is always in the table
    indices = _canonical(array("I", map(table.__getitem__, flat)).tobytes())
    return EncodedPool(
        name, pool.active, indices, hashlib.blake2b(indices, digest_size=16).digest()
    )


_ROW = FIELDS * 4


def _canonical(indices: bytes) -> bytes:
    """The pool's targets in one order, whatever order the server sent:
    Prometheus lists a pool's targets from a Go map, in a new order on
    every read, and an unchanged pool must give the same bytes (~25 ms of
    the worker's time for 50k targets)."""
    rows = [indices[i : i + _ROW] for i in range(0, len(indices), _ROW)]
    rows.sort()
    return b"".join(rows)


def decode_in_worker(
    body: bytes | bytearray,
    encoding: str,
    only_pool: str | None,
    limit: int,
    piece_bytes: int,
    max_held: int,
) -> Decoded:
    """Inflate, decode, encode for the trip back."""
    if len(_TABLE) > _TABLE_MAX:
        os._exit(0)  # this read fails in the collector; the next one starts afresh
    stream = TargetStream(only_pool, piece_bytes=piece_bytes, max_buffered=max_held)
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
    encoded = [_encode(name, p, new) for name, p in pools.items()]
    final_labels_only = stream.final_labels_only
    del pools, stream
    # The decoded pieces leave the heap fragmented; handed back, the
    # worker's RSS falls to its string table between reads.
    heap.trim()
    return Decoded(os.getpid(), start, new, encoded, total, final_labels_only)


class _Sets:
    """Label sets (or taint lists) by identity: k8s_parse hands out one
    shared object per distinct set, and each gets an index the collector's
    mirror follows. The objects are held here, so their ids stay theirs.
    The Node worker lives for one LIST (node_decoder), which bounds it."""

    def __init__(self) -> None:
        self.index: dict[int, int] = {}
        self.held: list[object] = []

    def ref(self, value: object, new: list[object]) -> int:
        found = self.index.get(id(value))
        if found is None:
            found = self.index[id(value)] = len(self.held)
            self.held.append(value)
            new.append(value)
        return found


_LABEL_SETS = _Sets()
_TAINT_SETS = _Sets()


def _inflated_whole(body: bytes, encoding: str, limit: int) -> bytes:
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


def decode_node_page(body: bytes, encoding: str, limit: int) -> NodePage:
    """Inflate and parse one Node LIST page with the very parser the
    collector process uses for watch events (k8s_parse.NODES)."""
    data = _inflated_whole(body, encoding, limit)
    del body
    page = k8s_parse.NODES.parse_page(data)
    labels_start, taints_start = len(_LABEL_SETS.held), len(_TAINT_SETS.held)
    new_labels: list[dict[str, str]] = []
    new_taints: list[tuple[Taint, ...]] = []
    nodes = []
    for parsed in page.items:
        node = parsed.obj
        nodes.append(
            WireNode(
                node.name,
                node.addresses,
                node.ready,
                _LABEL_SETS.ref(node.labels, new_labels),  # type: ignore[arg-type]
                _TAINT_SETS.ref(node.taints, new_taints),  # type: ignore[arg-type]
                node.unschedulable,
            )
        )
    meta = page.metadata
    return NodePage(
        labels_start,
        new_labels,
        taints_start,
        new_taints,
        nodes,
        page.errors,
        meta.resource_version if meta else None,
        meta.continue_ if meta else None,
        len(data),
    )


def _answer(request: Request | NodePageRequest) -> Answer:
    try:
        if isinstance(request, NodePageRequest):
            return decode_node_page(request.body, request.encoding, request.limit)
        return decode_in_worker(
            request.body,
            request.encoding,
            request.only_pool,
            request.limit,
            request.piece_bytes,
            request.max_held,
        )
    except BodyTooLarge as exc:
        return Failed(str(exc), exc.limit)
    except (SourceError, k8s_parse.ParseError) as exc:
        return Failed(str(exc))
    except Exception as exc:  # a bug: this read fails, the worker goes on
        return Failed(f"decoding worker: {type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    heap.reuse_buffers()
    sock = link.inherited_socket(argv, "decoding worker")
    requests = msgspec.msgpack.Decoder(Request | NodePageRequest)
    answers = msgspec.msgpack.Encoder()
    while (payload := link.recv_frame(sock)) is not None:
        answer = _answer(requests.decode(payload))
        del payload
        link.send_frame(sock, answers.encode(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
