"""The target decoding worker process (sources/target_decoder.py): the same
Targets as decoding in this process, strings crossing once, and a worker
that dies costs one read, never wrong data."""

from __future__ import annotations

import gc
import gzip
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from coverage_exporter.sources.errors import BodyTooLarge, SourceError
from coverage_exporter.sources.prometheus.source import parse_targets
from coverage_exporter.sources.prometheus.target_decoder import TargetDecoder

CAPTURED = sorted(
    (Path(__file__).parents[1] / "fixtures/captured/prometheus-3").glob("targets_*.json")
)
BODIES = {p.name: p.read_bytes() for p in CAPTURED}
# The pools whose targets belong to a Service (the exporter's own pool and
# static jobs keep none).
SERVICE_POOLS = sorted(
    n for n, b in BODIES.items() if any(p.targets for p in parse_targets(b).values())
)
POOL_BODY = BODIES["targets_01.json"]
LIMIT = 64 << 20


@pytest.fixture
def pool() -> Iterator[TargetDecoder]:
    decoder = TargetDecoder()
    yield decoder
    decoder.shutdown()


def test_the_captures_hold_service_pools() -> None:
    assert len(SERVICE_POOLS) >= 3 and "targets_01.json" in SERVICE_POOLS


@pytest.mark.parametrize("name", SERVICE_POOLS)
async def test_worker_decodes_real_answers_like_this_process(
    pool: TargetDecoder, name: str
) -> None:
    body = BODIES[name]
    here = parse_targets(body)
    decoded, shared = await pool.decode(gzip.compress(body), "gzip", None, LIMIT, 1 << 10)
    targets = {name: s.targets for name, s in shared.items()}
    assert decoded.body_bytes == len(body)
    assert {p.name: p.active for p in decoded.pools} == {n: p.active for n, p in here.items()}
    # The same targets; the worker puts each pool in one canonical order.
    assert {n: _unordered(t) for n, t in targets.items()} == {
        n: _unordered(p.targets) for n, p in here.items()
    }
    assert any(targets.values())


def _unordered(targets) -> list[tuple]:
    return sorted(map(msgspec.structs.astuple, targets), key=repr)


def _reordered(body: bytes) -> bytes:
    """The same answer with its targets in the reverse order, as a
    Prometheus lists them anew on every read (from a Go map)."""
    document = json.loads(body)
    document["data"]["activeTargets"].reverse()
    return json.dumps(document).encode()


async def test_a_pool_read_again_unchanged_is_the_very_same_tuple(pool: TargetDecoder) -> None:
    """An unchanged pool (or the other replica's copy of it) is neither
    rebuilt nor held twice, whatever order its targets come in; the tuple
    goes as soon as its last holder lets it go."""
    _, first = await pool.decode(POOL_BODY, "identity", None, LIMIT, 1 << 10)
    _, again = await pool.decode(_reordered(POOL_BODY), "identity", None, LIMIT, 1 << 10)
    assert first.keys() == again.keys() and any(s.targets for s in first.values())
    assert all(again[name] is first[name] for name in first)
    assert len(pool._rebuilt) == len({id(s) for s in first.values()})
    del first
    assert pool._rebuilt  # the second read holds them still
    del again
    gc.collect()
    assert len(pool._rebuilt) == 0


def _one_health_flipped(body: bytes) -> tuple[bytes, str]:
    """The same answer with its first target's health changed (a target
    going down between two reads), and that target's address."""
    document = json.loads(body)
    target = document["data"]["activeTargets"][0]
    target["health"] = "down" if target["health"] == "up" else "up"
    return json.dumps(document).encode(), target["discoveredLabels"]["__address__"]


async def test_a_changed_pool_reuses_its_unchanged_targets(pool: TargetDecoder) -> None:
    """A pool where one target changed is rebuilt (its digest changed), but
    every unchanged target is the very object read before: a re-read holds
    one new Target, not the whole pool twice."""
    _, first = await pool.decode(POOL_BODY, "identity", None, LIMIT, 1 << 10)
    name = next(n for n, s in first.items() if len(s.targets) >= 2)
    before = first[name].targets
    body, flipped = _one_health_flipped(POOL_BODY)
    previous = {n: s.targets for n, s in first.items()}
    _, second = await pool.decode(body, "identity", None, LIMIT, 1 << 10, previous)
    after = second[name].targets
    assert after is not before and len(after) == len(before)
    old = {id(t) for t in before}
    new = [t for t in after if id(t) not in old]
    assert len(new) == 1 and flipped.startswith(new[0].address_host)
    # The same targets as a read that had nothing to reuse.
    fresh_pool = TargetDecoder()
    try:
        _, fresh = await fresh_pool.decode(body, "identity", None, LIMIT, 1 << 10)
    finally:
        fresh_pool.shutdown()
    assert _unordered(after) == _unordered(fresh[name].targets)


async def test_strings_cross_once_and_are_interned(pool: TargetDecoder) -> None:
    body = POOL_BODY
    first, a = await pool.decode(gzip.compress(body), "gzip", None, LIMIT, 1 << 10)
    again, b = await pool.decode(body, "identity", None, LIMIT, 1 << 10)
    assert first.strings and again.strings == []
    assert again.table_start == first.table_start + len(first.strings)
    assert a == b
    for shared in b.values():
        for t in shared.targets:
            assert t.address_host is sys.intern(t.address_host)
            assert t.node_name is None or t.node_name is sys.intern(t.node_name)


async def test_a_gzip_bomb_is_cut_off_in_the_worker(pool: TargetDecoder) -> None:
    bomb = gzip.compress(b" " * (32 << 20))
    with pytest.raises(BodyTooLarge) as exc:
        await pool.decode(bomb, "gzip", None, 4 << 20, 1 << 20)
    assert exc.value.limit == 4 << 20


@pytest.mark.parametrize(
    ("body", "encoding", "why"),
    [
        (b"not gzip at all", "gzip", "undecodable gzip body"),
        (b"{}", "br", "unsupported Content-Encoding 'br'"),
        (b'{"status":"error","errorType":"bad_data","error":"nope"}', "identity", "nope"),
    ],
)
async def test_bad_answers_are_source_errors(
    pool: TargetDecoder, body: bytes, encoding: str, why: str
) -> None:
    with pytest.raises(SourceError, match=why):
        await pool.decode(body, encoding, None, LIMIT, 1 << 10)


async def test_a_worker_that_dies_fails_one_read_and_the_next_starts_afresh(
    pool: TargetDecoder,
) -> None:
    body = POOL_BODY
    first, before = await pool.decode(body, "identity", None, LIMIT, 1 << 10)
    expected = {name: s.targets for name, s in before.items()}
    os.kill(first.worker, signal.SIGKILL)
    with pytest.raises(SourceError, match="worker process ended"):
        await pool.decode(body, "identity", None, LIMIT, 1 << 10)
    second, after = await pool.decode(body, "identity", None, LIMIT, 1 << 10)
    assert second.worker != first.worker
    assert second.table_start == 1 and second.strings
    assert {name: s.targets for name, s in after.items()} == expected
