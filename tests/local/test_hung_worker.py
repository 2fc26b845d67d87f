"""A decoding worker that stops answering (stopped with SIGSTOP: a real
hang of the real worker process), and a request too large for the link:
each ends as one source error, the hung worker is killed and replaced,
and the next request is answered by a new one."""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from coverage_exporter import link
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.kubernetes.node_decoder import NodePageDecoder
from coverage_exporter.sources.prometheus.target_decoder import TargetDecoder

PROMETHEUS = Path(__file__).parents[1] / "fixtures/captured/prometheus-3"
POOL_BODY = (PROMETHEUS / "targets_01.json").read_bytes()
NODE_PAGE = (
    Path(__file__).parents[1] / "fixtures/captured/kubernetes/list_nodes.json"
).read_bytes()
LIMIT = 64 << 20
DEADLINE = 5.0
"""The worker deadline under test (60 s in the exporter). It counts a new
worker's start-up too: 1 s was not enough for the replacement's start and
first answer on a loaded machine."""
HANG_GUARD_SECONDS = 60.0
"""Not a speed assertion: turns a request that never ends into a failure."""


@pytest.fixture
def pool() -> Iterator[TargetDecoder]:
    decoder = TargetDecoder(deadline_seconds=DEADLINE)
    yield decoder
    decoder.shutdown()


@pytest.fixture
def pages() -> Iterator[NodePageDecoder]:
    decoder = NodePageDecoder(deadline_seconds=DEADLINE)
    yield decoder
    decoder.release()


async def test_a_hung_target_worker_is_killed_and_replaced(pool: TargetDecoder) -> None:
    first, _ = await pool.decode(POOL_BODY, "identity", None, LIMIT, 1 << 10)
    os.kill(first.worker, signal.SIGSTOP)
    try:
        with pytest.raises(SourceError, match="did not answer within 5s"):
            await asyncio.wait_for(
                pool.decode(POOL_BODY, "identity", None, LIMIT, 1 << 10), HANG_GUARD_SECONDS
            )
    finally:
        _resume(first.worker)
    _gone(first.worker)
    second, shared = await pool.decode(POOL_BODY, "identity", None, LIMIT, 1 << 10)
    assert second.worker != first.worker and shared


async def test_a_read_cut_by_the_source_deadline_still_replaces_a_hung_worker(
    pool: TargetDecoder,
) -> None:
    """The source deadline cancels the read before the worker's deadline
    is reached: the next read must not queue behind the hung worker."""
    first, _ = await pool.decode(POOL_BODY, "identity", None, LIMIT, 1 << 10)
    os.kill(first.worker, signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                pool.decode(POOL_BODY, "identity", None, LIMIT, 1 << 10), DEADLINE / 4
            )
        await asyncio.sleep(DEADLINE * 1.5)  # past the worker deadline, no one waiting
        second, _ = await asyncio.wait_for(
            pool.decode(POOL_BODY, "identity", None, LIMIT, 1 << 10), HANG_GUARD_SECONDS
        )
    finally:
        _resume(first.worker)
    assert second.worker != first.worker
    _gone(first.worker)


async def test_a_hung_node_worker_is_killed_and_replaced(pages: NodePageDecoder) -> None:
    await pages.decode(NODE_PAGE, "", LIMIT)
    worker = pages._slot._worker
    assert worker is not None
    pid = worker.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(SourceError, match="did not answer within 5s"):
            await asyncio.wait_for(pages.decode(NODE_PAGE, "", LIMIT), HANG_GUARD_SECONDS)
    finally:
        _resume(pid)
    _gone(pid)
    page, _ = await pages.decode(NODE_PAGE, "", LIMIT)
    assert len(page.items) == 3 and pages._slot._worker is not worker


async def test_a_body_of_4_gib_is_refused_and_the_worker_lives_on(pool: TargetDecoder) -> None:
    """A 4 GiB length does not fit the link's 4-byte header: the writer
    thread died (msgspec's EncodeError, or struct.error) and every later
    read waited forever. Never touched: no memory is used."""
    first, _ = await pool.decode(POOL_BODY, "identity", None, LIMIT, 1 << 10)
    huge = untouched(4 << 30)
    with pytest.raises(SourceError, match="too large for the decoding worker"):
        await asyncio.wait_for(pool.decode(huge, "gzip", None, LIMIT, 1 << 10), HANG_GUARD_SECONDS)
    huge.close()
    over_the_frame_limit = untouched(link.MAX_FRAME + 1)
    with pytest.raises(SourceError, match="too large for the decoding worker"):
        await asyncio.wait_for(
            pool.decode(over_the_frame_limit, "gzip", None, LIMIT, 1 << 10), HANG_GUARD_SECONDS
        )
    over_the_frame_limit.close()
    again, _ = await asyncio.wait_for(
        pool.decode(POOL_BODY, "identity", None, LIMIT, 1 << 10), HANG_GUARD_SECONDS
    )
    assert again.worker == first.worker, "the worker was not lost for it"


def untouched(size: int) -> bytearray:
    """`size` zero bytes that take no memory until touched (an anonymous
    mapping; a bytearray would be zeroed, 4 GiB of RSS), with a short repr
    for a failing test's traceback."""
    return mmap.mmap(-1, size)  # type: ignore[return-value]  # a buffer, as decode takes


def _resume(pid: int) -> None:
    """Lets a worker the test stopped go on, if it was not killed (a failure)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def _gone(pid: int) -> None:
    """The hung worker was killed and reaped: no process has its pid (or,
    if the pid was reused at once, it is not a stopped worker of ours)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return
    assert state not in ("T", "t", "Z"), f"worker {pid} left behind in state {state}"
