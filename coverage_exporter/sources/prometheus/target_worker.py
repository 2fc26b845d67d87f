"""The target decoding worker process (the collector's side is
`target_decoder.py`): each `Request` is a target list as it came, answered
with a `Decoded` (or a `worker_child.Failed`).

Run as `python -m coverage_exporter.sources.prometheus.target_worker --fd
N`, over `worker_child.serve`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from array import array
from itertools import chain, filterfalse

import msgspec

from coverage_exporter import heap
from coverage_exporter.model.objects import Target
from coverage_exporter.sources import worker_child
from coverage_exporter.sources.prometheus.targets_json import PoolTargets, TargetStream

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
    unattributed: int = 0
    """See targets_json.PoolTargets."""


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
    new.extend(unseen)  # None is in the table from the start: these are strings
    indices = _canonical(array("I", map(table.__getitem__, flat)).tobytes())
    return EncodedPool(
        name,
        pool.active,
        indices,
        hashlib.blake2b(indices, digest_size=16).digest(),
        pool.unattributed,
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
    for piece in worker_child.inflated(body, encoding, limit):
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


def main(argv: list[str] | None = None) -> int:
    return worker_child.serve(argv, "target decoding worker", Request, _decode)


def _decode(request: Request) -> Decoded:
    return decode_in_worker(
        request.body,
        request.encoding,
        request.only_pool,
        request.limit,
        request.piece_bytes,
        request.max_held,
    )


if __name__ == "__main__":
    sys.exit(main())
