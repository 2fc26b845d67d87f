"""The front process of `serve` (coverage_exporter.front): the real child
process on 127.0.0.1, driven from this test's event loop as the collector."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from coverage_exporter.exposition.html import PageInfo
from coverage_exporter.model.report import CoverageReport
from coverage_exporter.web.front import Front, ListenError
from coverage_exporter.web.server import ServerLimits
from coverage_exporter.web.view import ExporterView


@pytest.fixture
async def front():
    view = ExporterView(lambda: b"# starting\nscrape_coverage_source_up 0\n")
    link = Front(view, ServerLimits(), None, "info", "logfmt")
    port = await link.start("127.0.0.1", 0)
    view.on_change = link.publish
    async with aiohttp.ClientSession() as session:
        yield view, link, session, f"http://127.0.0.1:{port}"
    await link.close()


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def _eventually(session: aiohttp.ClientSession, url: str, status: int, text: str) -> str:
    """The body once the front answers `status` with `text` in it (the
    collector's publish crosses a socket)."""
    deadline = time.monotonic() + 10
    while True:
        got, body = await _get(session, url)
        if got == status and text in body:
            return body
        assert time.monotonic() < deadline, (got, body)
        await asyncio.sleep(0.02)


async def test_it_serves_what_the_collector_publishes(front) -> None:
    view, _, session, base = front
    assert "scrape_coverage_source_up 0" in (await _get(session, base + "/metrics"))[1]
    assert (await _get(session, base + "/-/ready"))[0] == 503

    view.exposition = b"scrape_coverage_cycles_total 3.0\n"
    view.ready = True
    view.status = "last cycle complete"
    view.changed()
    body = await _eventually(session, base + "/metrics", 200, "scrape_coverage_cycles_total 3.0")
    # The collector's own runtime metrics come with it.
    assert "python_info" in body or "process_resident_memory_bytes" in body
    await _eventually(session, base + "/-/ready", 200, "ready")
    assert "last cycle complete" in (await _get(session, base + "/"))[1]


async def test_other_paths_are_asked_of_the_collector(front) -> None:
    view, _, session, base = front
    status, body = await _get(session, base + "/report")
    assert status == 503 and "No report yet" in body
    view.publish_report(CoverageReport(), PageInfo(cluster="c", collected_at=time.time()))
    status, body = await _get(session, base + "/report")
    assert status == 200 and "<html" in body.lower()
    assert (await _get(session, base + "/nope"))[0] == 404


async def test_metrics_answer_while_the_collector_is_busy(front) -> None:
    """What the front is for: the collector's loop (and GIL) held for 2 s,
    the scrape answered all the same."""
    _, _, _, base = front

    def scrape() -> int:
        with urllib.request.urlopen(base + "/metrics", timeout=1.0) as response:
            return response.status

    scraped = asyncio.get_running_loop().run_in_executor(None, scrape)
    time.sleep(0.5)  # noqa: ASYNC251  (holding this loop is the point: the thread has sent its request)
    started = time.monotonic()
    while time.monotonic() - started < 1.5:
        pass  # busy, holding the GIL in slices, like a comparison
    assert await scraped == 200


async def test_a_wedged_collector_is_unhealthy_in_the_front(front) -> None:
    view, _, session, base = front
    assert (await _get(session, base + "/-/healthy"))[0] == 200
    view.expect_progress(-1.0, "the running collection cycle")
    body = await _eventually(session, base + "/-/healthy", 503, "overdue")
    assert "the running collection cycle" in body


async def test_the_front_ends_with_its_collector_and_says_when_it_dies(front) -> None:
    _, link, _, _ = front
    pid = link._process.pid
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(link.ended.wait(), 10)


async def test_a_taken_port_fails_the_start() -> None:
    view = ExporterView(lambda: b"")
    first = Front(view, ServerLimits(), None, "info", "logfmt")
    port = await first.start("127.0.0.1", 0)
    try:
        second = Front(view, ServerLimits(), None, "info", "logfmt")
        with pytest.raises(ListenError, match=rf"cannot serve on 127.0.0.1:{port}: .*in use"):
            await second.start("127.0.0.1", port)
    finally:
        await first.close()
    process = first._process
    assert process is not None and process.returncode is not None


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _front_of(serve: subprocess.Popen[bytes]) -> int:
    for child in _children(serve.pid):
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"coverage_exporter.web.front" in f.read():
                return child
    raise AssertionError("serve has no front process")


def _closed_port_kubeconfig(tmp_path: Path) -> Path:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: x}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    return kubeconfig


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `coverage-exporter serve` whose Kubernetes is a closed port:
    it serves while its source is down."""
    kubeconfig = _closed_port_kubeconfig(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "coverage_exporter.cli", "serve",
            f"--kubeconfig={kubeconfig}", f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("w"),
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                if b"scrape_coverage_source_up" in r.read():
                    break
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (
            tmp_path / "serve.log"
        ).read_text()
        time.sleep(0.1)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_serve_on_a_taken_port_says_so_and_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable, "-m", "coverage_exporter.cli", "serve",
                f"--kubeconfig={_closed_port_kubeconfig(tmp_path)}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_exits_1_when_its_front_dies(serve: subprocess.Popen[bytes]) -> None:
    os.kill(_front_of(serve), signal.SIGKILL)
    assert serve.wait(timeout=20) == 1


def test_sigterm_to_serve_ends_the_front_too(serve: subprocess.Popen[bytes]) -> None:
    front_pid = _front_of(serve)
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=20) == 0
    # serve waits for its front (and reaps it) before it exits.
    assert not os.path.exists(f"/proc/{front_pid}")
