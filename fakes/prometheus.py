"""One Prometheus server's HTTP API on 127.0.0.1: the one fake Prometheus of
the tests (tests/local) and of the benchmark (bench/fake_api.py, a fleet
of shards and replicas at 100k nodes). Used only where no real server
serves it: the answers recorded from real servers (tests/fixtures), a
fleet the size of a 100k-node cluster, and hostile answers (`overrides`).

The server routes; what it answers comes from an `Answers`:
- `Recorded`: the answers recorded from Prometheus 3.x, 2.53 and Thanos
  Query (tests/fixtures/prometheus);
- the benchmark's data set (bench/fake_api.py).
A path it has no answer for gets Prometheus's own 404.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiohttp import web

from fakes.http import Request, Sender, recorder

LOOPBACK = "127.0.0.1"
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "prometheus"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Body:
    chunks: list[bytes]
    status: int = 200
    content_type: str = "application/json"
    cache_key: object = None
    """Set for a body worth gzipping once (the benchmark's target lists)."""


class Answers(Protocol):
    def scrape_pools(self) -> Body | None: ...

    def targets(self, state: str, pool: str) -> Body | None: ...

    def config(self) -> Body | None: ...

    def metrics(self) -> Body | None: ...

    def buildinfo(self) -> Body | None: ...


NE_POOL = "serviceMonitor/monitoring/node-exporter/0"
KUBELET_POOL = "serviceMonitor/monitoring/kubelet/0"
KSM_POOL = "serviceMonitor/monitoring/kube-state-metrics/0"
AM_POOL = "serviceMonitor/monitoring/alertmanager-main/0"
POD_POOL = "podMonitor/monitoring/fluent-bit/0"

V3_POOL_FILES = {
    NE_POOL: "v3_targets_node_exporter.json",
    KUBELET_POOL: "v3_targets_kubelet.json",
    KSM_POOL: "v3_targets_kube_state_metrics.json",
    AM_POOL: "v3_targets_alertmanager_empty.json",
    POD_POOL: "v3_targets_fluent_bit.json",
}


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def json_response(body: bytes, status: int = 200) -> web.Response:
    """A hand-made answer, for an override."""
    return web.Response(body=body, status=status, content_type="application/json")


@dataclass
class Recorded:
    """Answers recorded from real servers: `flavour` "v3" (Prometheus 3.x,
    a file per pool), "v2.53" or "thanos" (Thanos Query: no scrape_pools)."""

    flavour: str = "v3"
    pool_files: dict[str, str] = field(default_factory=lambda: dict(V3_POOL_FILES))

    def scrape_pools(self) -> Body | None:
        if self.flavour == "thanos":
            return Body([fixture_bytes("thanos_scrape_pools_404.txt")], 404)
        if self.flavour == "v2.53":
            return Body([fixture_bytes("v2_53_scrape_pools.json")])
        body = {"status": "success", "data": {"scrapePools": list(self.pool_files)}}
        return Body([json.dumps(body).encode()])

    def targets(self, state: str, pool: str) -> Body | None:
        if self.flavour == "thanos":
            return Body([fixture_bytes("thanos_targets.json")])
        if self.flavour == "v2.53":
            return Body([fixture_bytes("v2_53_targets_kubelet.json")])
        return Body([fixture_bytes(self.pool_files[pool])])

    def config(self) -> Body | None:
        return None

    def metrics(self) -> Body | None:
        if self.flavour != "v3":
            return None
        return Body([fixture_bytes("v3_metrics.txt")], content_type="text/plain")

    def buildinfo(self) -> Body | None:
        return None


class FakePrometheus:
    def __init__(
        self,
        answers: Answers | str = "v3",
        *,
        name: str = "prometheus",
        log: list[Request] | None = None,
        sender: Sender | None = None,
    ) -> None:
        """answers: an Answers, or the flavour of the Recorded ones; log:
        the request log to append to (shared with other fakes of one
        process); sender: how bodies are sent (the benchmark's gzips)."""
        self.answers: Answers = Recorded(answers) if isinstance(answers, str) else answers
        self.name = name
        self.requests: list[Request] = log if log is not None else []
        self.overrides: dict[str, Handler] = {}
        """path -> handler, for hostile answers."""
        self._sender = sender or Sender(gzip_above=None)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def app(self) -> web.Application:
        app = web.Application(middlewares=[recorder(self.requests, "prometheus", self.name)])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    async def start(self, port: int = 0, host: str = LOOPBACK) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.requests if r.server == self.name]

    def target_requests(self) -> list[dict[str, str]]:
        return [dict(r.query) for r in self.requests if r.path == "/api/v1/targets"]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        override = self.overrides.get(request.path)
        if override is not None:
            return await override(request)
        path = request.path
        answers = self.answers
        body: Body | None = None
        if path == "/api/v1/scrape_pools":
            body = answers.scrape_pools()
        elif path == "/api/v1/targets":
            state = request.query.get("state", "any") or "any"
            body = answers.targets(state, request.query.get("scrapePool", ""))
        elif path == "/api/v1/status/config":
            body = answers.config()
        elif path == "/api/v1/status/buildinfo":
            body = answers.buildinfo()
        elif path == "/metrics":
            body = answers.metrics()
        elif path in ("/-/ready", "/-/healthy"):
            body = Body([b"Prometheus Server is Ready.\n"], content_type="text/plain")
        if body is None:
            body = Body([b"404 page not found\n"], 404, "text/plain")
        return await self._sender.send(
            request, body.chunks, body.cache_key, body.status, content_type=body.content_type
        )
