"""The benchmark's servers: the project's fake kube-apiserver
(fakes/apiserver.py) and one fake Prometheus (fakes/prometheus.py) per
server of a Prometheus Operator fleet (shards x replicas), in one aiohttp
process on 127.0.0.1, serving the cluster of `dataset.py` pre-rendered to
bytes.

Each Prometheus server listens on a port of its own (the Kubernetes API on
another).

Kubernetes (shapes as kube-apiserver v1.33 serves them):
  GET /api/v1/{nodes,services,endpoints,pods,namespaces}
  GET /api/v1/namespaces/{ns}/{services,endpoints,pods}[/{name}]
  GET /apis/discovery.k8s.io/v1/[namespaces/{ns}/]endpointslices
  GET /apis/apps/v1/[namespaces/{ns}/]daemonsets
  list: limit/continue (opaque base64 tokens, 410 Expired once compacted),
        resourceVersion (+resourceVersionMatch), remainingItemCount,
        labelSelector (=, ==, !=, in, notin, exists, !exists), fieldSelector,
        Accept: ...;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,
        pods also Accept: ...;as=Table;g=meta.k8s.io;v=v1 (fakes/pod_table.py)
  watch=1: newline-delimited {"type","object"} events, timeoutSeconds,
        allowWatchBookmarks (BOOKMARK every --bookmark-interval s),
        resourceVersion (too old -> ERROR event with a 410 Status),
        unset/"0" resourceVersion or sendInitialEvents=true -> ADDED events
        for the current state first (and the initial-events-end bookmark).
  gzip when the client accepts it and the body is over 128 KiB (as the
  apiserver does, level 1); watches are never compressed.
  Endpoints responses carry the v1.33 deprecation Warning header.

Prometheus (each server, shaped like Prometheus 3.16's answers):
  GET /api/v1/scrape_pools, /api/v1/targets[?state=..&scrapePool=..] (its
      shard's targets only; replicas of a shard answer the same),
  GET /api/v1/status/config (the Operator-generated config, loaded),
  GET /metrics, /-/ready, /-/healthy, /api/v1/status/buildinfo
  gzip when the client accepts it.

Benchmark control (not logged):
  GET  /_bench/requests?since=I  the request log from entry I (each entry
                                 names the server and port it hit)
  GET  /_bench/info              sizes, resourceVersion, the servers
  POST /_bench/compact           every resourceVersion and continue token
                                 issued so far becomes too old (410)
  POST /_bench/touch-nodes?count=K  emit K Node MODIFIED watch events

Every response is pre-rendered (or rendered once and cached), so the server
spends its time copying bytes to the socket. The process exits by itself
after --max-lifetime seconds.

The Kubernetes port also answers the control paths; Prometheus paths
answer 404 there, and Kubernetes paths 404 on a Prometheus port.

Usage: python -m bench.fake_api --nodes 1000 [--port 0] [--ready-file F]
       [--role endpoints|endpointslice] [--shards S] [--replicas R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web
from fakes.apiserver import GZIP_ABOVE, Entry, FakeApiServer
from fakes.http import Request, Sender
from fakes.prometheus import Body, FakePrometheus

from bench import dataset as ds_mod

ENDPOINTS_WARNING = (
    '299 - "v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice"'
)
GZIP_PROMETHEUS_ABOVE = 1024
"""Prometheus gzips any answer the client accepts gzip for."""


def _flip_health(blob: bytes) -> bytes:
    """One health in 100 flipped, up to down and down to up."""
    parts = blob.split(b'"health":"')
    for i in range(1, len(parts), 100):
        if parts[i].startswith(b"up"):
            parts[i] = b"down" + parts[i][2:]
        elif parts[i].startswith(b"down"):
            parts[i] = b"up" + parts[i][4:]
    return b'"health":"'.join(parts)


@dataclass
class Shard:
    """What every server of one shard answers: its share of each pool."""

    blobs: dict[str, bytes]
    """pool -> that shard's active targets, joined."""
    counts: dict[str, int]
    churned: dict[str, bytes] = field(default_factory=dict)


@dataclass
class ServerAnswers:
    """One Prometheus server's answers (fakes.prometheus.Answers)."""

    data: ds_mod.Dataset
    server: ds_mod.PromServer
    shard: Shard
    config_body: bytes
    reads: dict[str, int] = field(default_factory=dict)

    def scrape_pools(self) -> Body:
        pools = sorted(p.name for p in self.data.pools)
        return Body([json.dumps({"status": "success", "data": {"scrapePools": pools}}).encode()])

    def targets(self, state: str, pool: str) -> Body:
        churned = False
        if self.shard.churned and pool:
            # --target-churn: every other read of a pool from one server.
            seen = self.reads.get(pool, 0)
            self.reads[pool] = seen + 1
            churned = seen % 2 == 1
        names = [pool] if pool in self.shard.blobs else [] if pool else list(self.shard.blobs)
        chunks = [b'{"status":"success","data":{"activeTargets":[']
        if state in ("active", "any", ""):
            blobs = self.shard.churned if churned else self.shard.blobs
            chunks.append(b",".join(blobs[n] for n in names if self.shard.counts[n]))
        chunks.append(b'],"droppedTargets":[]')
        if state in ("dropped", "any", ""):
            # every target of another shard is a dropped target of this one
            discovered = {p.name: p.discovered for p in self.data.pools}
            counts = {n: max(0, discovered[n] - self.shard.counts[n]) for n in names}
            chunks.append(b',"droppedTargetCounts":' + json.dumps(counts, separators=(",", ":")).encode())
        else:
            # Prometheus 3.16 with state=active: the key is there, null
            chunks.append(b',"droppedTargetCounts":null')
        chunks.append(b"}}")
        return Body(chunks, cache_key=("targets", self.server.shard, state, pool, churned))

    def config(self) -> Body:
        return Body([self.config_body])

    def metrics(self) -> Body:
        return Body(
            [self.data.metrics_by_shard[self.server.shard]],
            content_type="text/plain",
            cache_key=("metrics", self.server.shard),
        )

    def buildinfo(self) -> Body:
        info = {
            "version": ds_mod.PROM_VERSION,
            "revision": ds_mod.PROM_REVISION,
            "branch": "HEAD",
            "buildUser": "root@bench",
            "buildDate": "20251119-10:02:11",
            "goVersion": "go1.26.8",
        }
        return Body([json.dumps({"status": "success", "data": info}).encode()])


class Bench:
    """The fake apiserver and the fake Prometheus fleet of one data set,
    with the benchmark's control paths (/_bench/...) on the apiserver's port."""

    def __init__(self, data: ds_mod.Dataset, args: argparse.Namespace) -> None:
        self.data = data
        self.args = args
        self.log: list[Request] = []
        self.api = FakeApiServer(
            bookmark_every=args.bookmark_interval,
            log=self.log,
            gzip_above=GZIP_ABOVE if args.gzip else None,
            gzip_cache_bytes=args.gzip_cache_mb << 20,
        )
        self.api.warnings["endpoints"] = ENDPOINTS_WARNING
        for (_gv, plural), res in data.resources.items():
            self.api.load(
                plural,
                (
                    Entry(ns if res.namespaced else "", name, labels, item, rv, fields)
                    for ns, name, labels, item, rv, fields in zip(
                        res.namespaces, res.names, res.labels, res.items, res.rvs, res.fields,
                        strict=True,
                    )
                ),
            )
            res.items = []  # the fake holds them now
        self.api.rv = data.resource_version
        # Rendered at start like every other answer, so that the first Table
        # request measures the client, not the fake's rendering.
        self.api.render_rows()
        self.summary = data.summary()
        self.started = time.time()
        sender = Sender(GZIP_PROMETHEUS_ABOVE if args.gzip else None, args.gzip_cache_mb << 20)
        shards = []
        for shard in range(data.shards):
            blobs, counts = {}, {}
            for p in data.pools:
                mine = p.on_shard(shard)
                blobs[p.name], counts[p.name] = b",".join(mine), len(mine)
            churned = {k: _flip_health(v) for k, v in blobs.items()} if args.target_churn else {}
            shards.append(Shard(blobs, counts, churned))
        for p in data.pools:
            p.targets = []  # the joined blobs are all we serve; halve the memory
        self.prometheus = [
            FakePrometheus(
                ServerAnswers(
                    data,
                    srv,
                    shards[srv.shard],
                    json.dumps(
                        {"status": "success", "data": {"yaml": data.config_yaml(srv)}},
                        separators=(",", ":"),
                    ).encode(),
                ),
                name=srv.name,
                log=self.log,
                sender=sender,
            )
            for srv in data.servers
        ]
        self.shards = shards
        self.flowschema = str(uuid.uuid4())

    # --- control ----------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/_bench/requests", self.bench_requests)
        r.add_get("/_bench/info", self.bench_info)
        r.add_post("/_bench/compact", self.bench_compact)
        r.add_post("/_bench/touch-nodes", self.bench_touch)

    async def bench_requests(self, request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        entries = [r.as_dict() for r in self.log[since:] if not r.path.startswith("/_bench/")]
        return web.json_response({"next": len(self.log), "requests": entries})

    async def bench_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "nodes": self.data.nodes_count,
                "resourceVersion": self.api.rv,
                "compacted": self.api.compacted_rv,
                "pid": os.getpid(),
                "summary": self.summary,
                "scrape_pools": sorted(p.name for p in self.data.pools),
                "role": self.data.role,
                "shards": self.data.shards,
                "replicas": self.data.replicas,
                "servers": self.servers_info(),
            }
        )

    async def bench_compact(self, request: web.Request) -> web.Response:
        """Every resourceVersion and continue token issued so far becomes too old."""
        self.api.rv += 1
        self.api.compact()
        return web.json_response(
            {"compacted": self.api.compacted_rv - 1, "resourceVersion": self.api.rv}
        )

    async def bench_touch(self, request: web.Request) -> web.Response:
        count = int(request.query.get("count", "1"))
        keys = self.api.keys("nodes")
        for k in range(min(count, len(keys))):
            self.api.touch("nodes", keys[(self.api.rv + k * 7919) % len(keys)])
        return web.json_response({"touched": count, "resourceVersion": self.api.rv})

    def servers_info(self) -> list[dict]:
        return [
            {
                "name": srv.name,
                "shard": srv.shard,
                "replica": srv.replica,
                "pod": srv.pod,
                "port": prom.port or None,
                "targets": sum(self.shards[srv.shard].counts.values()),
            }
            for srv, prom in zip(self.data.servers, self.prometheus, strict=True)
        ]

    def warm(self) -> None:
        """Render the gzip bodies a client is most likely to ask for, so that
        the first measured cycle does not pay for compression."""
        if not self.args.gzip:
            return
        for (_gv, plural) in self.data.resources:
            self.api.warm(plural, None, "", 500)
        for (ns, _name), selector in self.data.service_selectors.items():
            label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
            self.api.warm("pods", ns, label_selector, 500)


def write_ready_file(path: str, info: dict) -> None:
    """Atomically: the harness polls for the file and reads it at once."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready-file", help="write {port, pid} JSON here once listening")
    ap.add_argument(
        "--max-lifetime", type=float, default=3600.0, help="exit after this many seconds"
    )
    ap.add_argument("--bookmark-interval", type=float, default=60.0)
    ap.add_argument("--no-gzip", dest="gzip", action="store_false")
    ap.add_argument("--no-warm", dest="warm", action="store_false")
    ap.add_argument("--gzip-cache-mb", type=int, default=2048)
    ap.add_argument(
        "--target-churn",
        action="store_true",
        help="every other read of a pool from one server flips one health in 100",
    )
    ap.add_argument(
        "--role",
        choices=("endpoints", "endpointslice"),
        default="endpoints",
        help="the Prometheus CR's serviceDiscoveryRole (the Operator's default: endpoints)",
    )
    ap.add_argument("--shards", type=int, help="default: 2 from 15k nodes up, else 1")
    ap.add_argument("--replicas", type=int, help="default: 2 from 15k nodes up, else 1")
    args = ap.parse_args(argv)
    if not args.host.startswith("127.") and args.host != "localhost":
        ap.error("the benchmark server listens on the loopback only")

    t0 = time.perf_counter()
    data = ds_mod.build(args.nodes, args.role, args.shards, args.replicas)
    t_build = time.perf_counter() - t0
    bench = Bench(data, args)
    t1 = time.perf_counter()
    if args.warm:
        bench.warm()
    t_warm = time.perf_counter() - t1

    async def run():
        runner = web.AppRunner(bench.api.app(bench.routes), access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port, backlog=256)
        await site.start()
        port = runner.addresses[0][1]
        bench.api.port = port
        # one listening port per Prometheus server; --port P gives P+1, P+2, ...
        for k, prom in enumerate(bench.prometheus):
            await prom.start(args.port + 1 + k if args.port else 0, args.host)
        info = {
            "port": port,
            "pid": os.getpid(),
            "build_s": round(t_build, 3),
            "warm_s": round(t_warm, 3),
            "role": data.role,
            "shards": data.shards,
            "replicas": data.replicas,
            "prometheus": bench.servers_info(),
        }
        print(json.dumps(info), flush=True)
        if args.ready_file:
            write_ready_file(args.ready_file, info)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await asyncio.wait_for(stop.wait(), timeout=args.max_lifetime)
        except TimeoutError:
            print("max lifetime reached, exiting", file=sys.stderr)
        for prom in bench.prometheus:
            await prom.stop()
        await runner.cleanup()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
