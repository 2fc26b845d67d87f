"""Every child process of the exporter, started the way the code starts it.

The children are started by module path (`python -m <module> --fd N`),
which no import checks: a module moved or renamed without its starter
would fail only at run time, in `serve`. Each is started here through the
code's own starter and must answer its first request.
"""

from __future__ import annotations

import ast
import gzip
from pathlib import Path

import aiohttp

from coverage_exporter.sources.kubernetes import node_decoder
from coverage_exporter.sources.kubernetes.node_worker import NodePage, NodePageRequest
from coverage_exporter.sources.prometheus import target_decoder
from coverage_exporter.sources.prometheus.target_worker import Decoded, Request
from coverage_exporter.web.front import Front
from coverage_exporter.web.server import ServerLimits
from coverage_exporter.web.view import ExporterView

PACKAGE = Path(__file__).resolve().parents[2] / "coverage_exporter"
TARGETS = b'{"status":"success","data":{"activeTargets":[]}}'
NODES = b'{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":[]}'


def test_the_target_worker_starts_and_answers() -> None:
    worker = target_decoder._start_worker()
    try:
        request = Request(gzip.compress(TARGETS), "gzip", None, 1 << 20, 1 << 20, 1 << 20)
        answer = worker.submit(request).result(timeout=60)
        assert isinstance(answer, Decoded) and answer.pools == []
    finally:
        worker.stop()
    assert worker.process.returncode is not None


def test_the_node_worker_starts_and_answers() -> None:
    worker = node_decoder._start_worker()
    try:
        answer = worker.submit(NodePageRequest(NODES, "identity", 1 << 20)).result(timeout=60)
        assert isinstance(answer, NodePage) and answer.resource_version == "7"
    finally:
        worker.stop()


async def test_the_front_starts_and_answers() -> None:
    front = Front(ExporterView(lambda: b"scrape_coverage_cycles_total 0.0\n"), ServerLimits(),
                  None, "info", "logfmt")
    port = await front.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/metrics"
        ) as response:
            assert response.status == 200
            assert "scrape_coverage_cycles_total" in await response.text()
    finally:
        await front.close()


def _programs() -> set[str]:
    """Modules of the package that run as a program (`if __name__ == ...`)."""
    out = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                out.add(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
    return out


def test_no_other_program_is_started_by_module_path() -> None:
    """A new child program needs its test above: this list says which exist."""
    assert _programs() == {
        "coverage_exporter.cli",  # the exporter itself (python -m coverage_exporter.cli)
        "coverage_exporter.web.front",
        "coverage_exporter.sources.prometheus.target_worker",
        "coverage_exporter.sources.kubernetes.node_worker",
    }
