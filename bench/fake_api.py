"""A synthetic Kubernetes API server and the Prometheus servers of a
Prometheus Operator fleet (shards x replicas) in one aiohttp process on
127.0.0.1, serving the cluster of `dataset.py` pre-rendered to bytes.

Each Prometheus server listens on a port of its own (the Kubernetes API on
another); a handler knows which server it is by the port the request came
in on.

Kubernetes (shapes as kube-apiserver v1.33 serves them):
  GET /api/v1/{nodes,services,endpoints,pods,namespaces}
  GET /api/v1/namespaces/{ns}/{services,endpoints,pods}[/{name}]
  GET /apis/discovery.k8s.io/v1/[namespaces/{ns}/]endpointslices
  GET /apis/apps/v1/[namespaces/{ns}/]daemonsets
  list: limit/continue (opaque base64 tokens, 410 Expired once compacted),
        resourceVersion (+resourceVersionMatch), remainingItemCount,
        labelSelector (=, ==, !=, in, notin, exists, !exists), fieldSelector,
        Accept: ...;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,
        pods also Accept: ...;as=Table;g=meta.k8s.io;v=v1 (bench/pod_table.py)
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

Usage: python bench/fake_api.py --nodes 1000 [--port 0] [--ready-file F]
       [--role endpoints|endpointslice] [--shards S] [--replicas R]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import os
import re
import signal
import sys
import time
import uuid
import zlib
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataset as ds_mod
import pod_table

CHUNK = 1 << 20
GZIP_THRESHOLD = 128 * 1024
ENDPOINTS_WARNING = (
    '299 - "v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice"'
)
PARTIAL_META = "as=partialobjectmetadatalist"


# ---------------------------------------------------------------------------
# selectors


@dataclass(frozen=True)
class Req:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op in ("=", "in"):
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values


_SET_RX = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def parse_selector(text: str) -> tuple[Req, ...]:
    """Kubernetes label selector syntax. Raises ValueError (-> 400)."""
    parts: list[str] = []
    depth = 0
    cur = ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for raw in parts:
        p = raw.strip()
        if not p:
            continue
        m = _SET_RX.match(p)
        if m:
            vals = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            out.append(Req(m.group(1), m.group(2), vals))
        elif "!=" in p:
            k, v = p.split("!=", 1)
            out.append(Req(k.strip(), "!=", (v.strip(),)))
        elif "==" in p:
            k, v = p.split("==", 1)
            out.append(Req(k.strip(), "=", (v.strip(),)))
        elif "=" in p:
            k, v = p.split("=", 1)
            out.append(Req(k.strip(), "=", (v.strip(),)))
        elif p.startswith("!"):
            out.append(Req(p[1:].strip(), "!exists"))
        else:
            out.append(Req(p, "exists"))
    for r in out:
        if not r.key or " " in r.key:
            raise ValueError(f"unable to parse requirement: {text!r}")
    return tuple(out)


# ---------------------------------------------------------------------------


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def encode_continue(rv: int, key: str) -> str:
    raw = json.dumps(
        {"v": "meta.k8s.io/v1", "rv": rv, "start": key + "\x00"}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def decode_continue(token: str) -> tuple[int, str]:
    pad = "=" * (-len(token) % 4)
    data = json.loads(base64.urlsafe_b64decode(token + pad))
    if data.get("v") != "meta.k8s.io/v1":
        raise ValueError(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        )
    start = data["start"]
    if not start.endswith("\x00"):
        raise ValueError("continue key is not valid")
    return int(data["rv"]), start[:-1]


class Server:
    def __init__(self, data: ds_mod.Dataset, args: argparse.Namespace):
        self.data = data
        self.args = args
        self.rv = data.resource_version
        self.compacted_rv = 0  # resourceVersions <= this are too old
        self.log: list[dict] = []
        self.gz_cache: OrderedDict = OrderedDict()
        self.selection_cache: dict = {}
        self.meta_items: dict[tuple[str, str], list[bytes]] = {}
        # Rendered at start like every other answer, so that the first Table
        # request measures the client, not the fake's rendering.
        pods = data.resources.get(("v1", "pods"))
        self.table_rows: list[bytes] | None = (
            [pod_table.row_bytes(item) for item in pods.items] if pods else None
        )
        self.watchers: dict[tuple[str, str], set[asyncio.Queue]] = {}
        self.history: dict[tuple[str, str], list[tuple[int, bytes]]] = {}
        self.started = time.time()
        self.pools = {p.name: p for p in data.pools}
        self.summary = data.summary()
        # (pool, shard) -> that shard's active targets, joined
        self.pool_blobs: dict[tuple[str, int], bytes] = {}
        self.pool_counts: dict[tuple[str, int], int] = {}
        for p in data.pools:
            for shard in range(data.shards):
                mine = p.on_shard(shard)
                self.pool_blobs[(p.name, shard)] = b",".join(mine)
                self.pool_counts[(p.name, shard)] = len(mine)
            p.targets = []  # the joined blobs are all we serve; halve the memory
        # --target-churn: each read of a pool from one server alternates
        # between its targets and the same targets with one health in 100
        # flipped (counts unchanged, as when nodes flap), so that every full
        # re-read finds every pool changed: the exporter's worst case.
        self.churned: dict[tuple[str, int], bytes] = {}
        self.reads: dict[tuple[str, str], int] = {}
        if args.target_churn:
            self.churned = {key: _flip_health(blob) for key, blob in self.pool_blobs.items()}
        self.configs = {
            srv.name: json.dumps(
                {"status": "success", "data": {"yaml": data.config_yaml(srv)}},
                separators=(",", ":"),
            ).encode()
            for srv in data.servers
        }
        self.port_server: dict[int, ds_mod.PromServer] = {}  # filled once listening
        self.flowschema = str(uuid.uuid4())
        self.prioritylevel = str(uuid.uuid4())

    # ---------------------------------------------------------------- logging
    @web.middleware
    async def log_mw(self, request: web.Request, handler):
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        port = sock[1] if sock else 0
        prom = self.port_server.get(port)
        request["prom"] = prom
        if request.path.startswith("/_bench/"):
            return await handler(request)
        entry = {
            "t": time.time(),
            "method": request.method,
            "path": request.path_qs,
            "api": "prometheus" if prom is not None else "kubernetes",
            "server": prom.name if prom is not None else "kubernetes",
            "port": port,
            "accept": request.headers.get("Accept", ""),
            "accept_encoding": request.headers.get("Accept-Encoding", ""),
            "status": 0,
            "bytes": 0,  # body bytes on the wire
            "body_bytes": 0,  # uncompressed body bytes
            "watch": False,
            "duration": 0.0,
            "done": False,
        }
        self.log.append(entry)
        request["log"] = entry
        t0 = time.perf_counter()
        try:
            resp = await handler(request)
            entry["status"] = resp.status
            return resp
        except web.HTTPException as e:
            entry["status"] = e.status
            raise
        finally:
            entry["duration"] = time.perf_counter() - t0
            entry["done"] = True

    # ---------------------------------------------------------------- sending
    def _common_headers(self, request: web.Request) -> dict:
        return {
            "Audit-Id": str(uuid.uuid4()),
            "Cache-Control": "no-cache, private",
            "X-Kubernetes-Pf-Flowschema-Uid": self.flowschema,
            "X-Kubernetes-Pf-Prioritylevel-Uid": self.prioritylevel,
        }

    def _gzip(self, key, chunks_fn) -> bytes:
        hit = self.gz_cache.get(key)
        if hit is not None:
            self.gz_cache.move_to_end(key)
            return hit
        comp = zlib.compressobj(1, zlib.DEFLATED, 31)
        out = []
        for c in chunks_fn():
            out.append(comp.compress(c))
        out.append(comp.flush())
        gz = b"".join(out)
        self.gz_cache[key] = gz
        budget = self.args.gzip_cache_mb * 1024 * 1024
        total = sum(len(v) for v in self.gz_cache.values())
        while total > budget and len(self.gz_cache) > 1:
            _, old = self.gz_cache.popitem(last=False)
            total -= len(old)
        return gz

    async def send(
        self,
        request: web.Request,
        chunks: list[bytes],
        cache_key=None,
        status: int = 200,
        headers: dict | None = None,
        content_type: str = "application/json",
        threshold: int = GZIP_THRESHOLD,
    ) -> web.StreamResponse:
        """Write a body given as a list of byte chunks; gzip (cached by
        cache_key) when the client accepts it and the body is large."""
        size = sum(len(c) for c in chunks)
        entry = request.get("log")
        hdrs = dict(headers or {})
        body_parts = chunks
        wire = size
        accept_enc = request.headers.get("Accept-Encoding", "")
        if self.args.gzip and "gzip" in accept_enc and size > threshold:
            gz = (
                self._gzip(cache_key, lambda: chunks)
                if cache_key is not None
                else gzip.compress(b"".join(chunks), 1)
            )
            body_parts = [gz]
            wire = len(gz)
            hdrs["Content-Encoding"] = "gzip"
            hdrs["Vary"] = "Accept-Encoding"
        resp = web.StreamResponse(status=status, headers=hdrs)
        resp.content_type = content_type
        resp.content_length = wire
        await resp.prepare(request)
        for part in body_parts:
            mv = memoryview(part)
            for off in range(0, len(mv), CHUNK):
                await resp.write(mv[off : off + CHUNK])
        await resp.write_eof()
        if entry is not None:
            entry["bytes"] = wire
            entry["body_bytes"] = size
        return resp

    async def send_json(self, request, obj, status=200, headers=None) -> web.StreamResponse:
        return await self.send(
            request, [json.dumps(obj, separators=(",", ":")).encode()], None, status, headers
        )

    # ---------------------------------------------------------------- routing
    async def k8s(self, request: web.Request) -> web.StreamResponse:
        if request["prom"] is not None:
            return await self.not_found(request)
        path = request.path
        if path.startswith("/api/v1/"):
            gv, rest = "v1", path[len("/api/v1/") :]
        elif path.startswith("/apis/"):
            parts = path[len("/apis/") :].split("/", 2)
            if len(parts) < 3:
                return await self.not_found(request)
            gv, rest = f"{parts[0]}/{parts[1]}", parts[2]
        else:
            return await self.not_found(request)
        segs = [s for s in rest.split("/") if s]
        ns = None
        name = None
        if len(segs) >= 3 and segs[0] == "namespaces":
            ns, plural = segs[1], segs[2]
            if len(segs) == 4:
                name = segs[3]
            elif len(segs) > 4:
                return await self.not_found(request)
        elif len(segs) == 2 and segs[0] == "namespaces":
            plural, name = "namespaces", segs[1]
        elif len(segs) in (1, 2):
            plural = segs[0]
            name = segs[1] if len(segs) == 2 else None
        else:
            return await self.not_found(request)
        res = self.data.resources.get((gv, plural))
        if res is None:
            return await self.not_found(request)
        if ns is not None and not res.namespaced:
            return await self.not_found(request)
        headers = self._common_headers(request)
        if plural == "endpoints" and gv == "v1":
            headers["Warning"] = ENDPOINTS_WARNING
        if request.method != "GET":
            return await self.send_json(
                request,
                status_body(
                    405,
                    "MethodNotAllowed",
                    f"{request.method} is not supported by the benchmark server",
                ),
                405,
                headers,
            )
        q = request.query
        if name is not None:
            return await self.get_one(request, res, ns, name, headers)
        if q.get("watch") in ("1", "true"):
            return await self.watch(request, res, ns, headers)
        return await self.list(request, res, ns, headers)

    async def not_found(self, request):
        return await self.send_json(
            request,
            status_body(404, "NotFound", "the server could not find the requested resource"),
            404,
        )

    def selection(
        self, res: ds_mod.Resource, ns: str | None, label_sel: str, field_sel: str
    ) -> list[int]:
        key = (res.group_version, res.plural, ns, label_sel, field_sel)
        hit = self.selection_cache.get(key)
        if hit is not None:
            return hit
        reqs = parse_selector(label_sel) if label_sel else ()
        freqs = parse_selector(field_sel) if field_sel else ()
        out = []
        for i in range(len(res.items)):
            if ns is not None and res.namespaces[i] != ns:
                continue
            if reqs and not all(r.matches(res.labels[i]) for r in reqs):
                continue
            if freqs:
                f = res.fields[i] or {
                    "metadata.name": res.names[i],
                    "metadata.namespace": res.namespaces[i],
                }
                if not all(r.matches(f) for r in freqs):
                    continue
            out.append(i)
        self.selection_cache[key] = out
        return out

    @staticmethod
    def _wants_table(request: web.Request, res: ds_mod.Resource) -> bool:
        accept = request.headers.get("Accept", "").lower().replace(" ", "")
        return res.plural == "pods" and pod_table.ACCEPT in accept

    def table_chunks(self, res, sel, start, end, list_rv, continue_token):
        """A pod LIST page in Table form; rows rendered once per pod."""
        if self.table_rows is None:
            self.table_rows = [pod_table.row_bytes(item) for item in res.items]
        rows = self.table_rows
        return [
            pod_table.head(str(list_rv), continue_token),
            b",".join(rows[i] for i in sel[start:end]),
            b"]}",
        ]

    def items_of(self, res: ds_mod.Resource, partial: bool) -> list[bytes]:
        if not partial:
            return res.items
        k = (res.group_version, res.plural)
        if k not in self.meta_items:
            import msgspec

            dec = msgspec.json.Decoder()
            enc = msgspec.json.Encoder()
            self.meta_items[k] = [
                b'{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":'
                + enc.encode(dec.decode(item)["metadata"])
                + b"}"
                for item in res.items
            ]
        return self.meta_items[k]

    def _check_rv(self, rv_param: str) -> tuple[int, str] | None:
        if rv_param in ("", "0"):
            return None
        try:
            v = int(rv_param)
        except ValueError:
            return 400, f"invalid resource version {rv_param!r}"
        if v <= self.compacted_rv:
            return 410, f"too old resource version: {v} ({self.compacted_rv + 1})"
        if v > self.rv:
            return 504, f"Too large resource version: {v}, current: {self.rv}"
        return None

    async def list(self, request, res: ds_mod.Resource, ns, headers):
        q = request.query
        partial = PARTIAL_META in request.headers.get("Accept", "").lower().replace(" ", "")
        try:
            sel = self.selection(res, ns, q.get("labelSelector", ""), q.get("fieldSelector", ""))
        except ValueError as e:
            return await self.send_json(
                request, status_body(400, "BadRequest", str(e)), 400, headers
            )
        list_rv = self.rv
        start = 0
        cont = q.get("continue", "")
        if cont:
            try:
                token_rv, start_key = decode_continue(cont)
            except (ValueError, KeyError, json.JSONDecodeError) as e:
                return await self.send_json(
                    request, status_body(400, "BadRequest", str(e)), 400, headers
                )
            if token_rv <= self.compacted_rv:
                body = status_body(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. "
                    "You can start a new list without the continue parameter, or use the continue token "
                    "in this response to retrieve the remainder of the results. Continuing with the provided "
                    "token results in an inconsistent list - objects that were created, modified, or deleted "
                    "between the time the first chunk was returned and now may show up in the list.",
                )
                body["metadata"] = {"continue": encode_continue(-1, start_key)}
                return await self.send_json(request, body, 410, headers)
            list_rv = token_rv
            start = res.position_after(sel, start_key)
        else:
            err = self._check_rv(q.get("resourceVersion", ""))
            if err:
                code, msg = err
                reason = {400: "BadRequest", 410: "Expired", 504: "Timeout"}[code]
                details = (
                    {
                        "causes": [
                            {
                                "reason": "ResourceVersionTooLarge",
                                "message": "Too large resource version",
                            }
                        ],
                        "retryAfterSeconds": 1,
                    }
                    if code == 504
                    else None
                )
                return await self.send_json(
                    request, status_body(code, reason, msg, details), code, headers
                )
        limit = 0
        if q.get("limit"):
            try:
                limit = max(0, int(q["limit"]))
            except ValueError:
                limit = 0
        end = len(sel) if not limit else min(len(sel), start + limit)
        chunks, cache_key = self.list_chunks(
            res,
            ns,
            sel,
            start,
            end,
            partial,
            list_rv,
            q.get("labelSelector", ""),
            q.get("fieldSelector", ""),
        )
        if self._wants_table(request, res):
            # Real apiserver: no remainingItemCount on a label-selected Table.
            token = encode_continue(list_rv, res.keys[sel[end - 1]]) if end < len(sel) else None
            chunks = self.table_chunks(res, sel, start, end, list_rv, token)
            cache_key = (*cache_key, "table")
        return await self.send(request, chunks, cache_key, 200, headers)

    def list_chunks(self, res, ns, sel, start, end, partial, list_rv, label_sel, field_sel):
        meta = {"resourceVersion": str(list_rv)}
        if end < len(sel):
            meta["continue"] = encode_continue(list_rv, res.keys[sel[end - 1]])
            meta["remainingItemCount"] = len(sel) - end
        if partial:
            head = {
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
            }
        else:
            head = {"kind": res.list_kind, "apiVersion": res.group_version, "metadata": meta}
        items = self.items_of(res, partial)
        prefix = json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"items":['
        chunks = [prefix]
        # join items in groups so that writes stay large but memory bounded
        for g in range(start, end, 500):
            idx = sel[g : min(end, g + 500)]
            if g > start:
                chunks.append(b",")
            chunks.append(b",".join([items[i] for i in idx]))
        chunks.append(b"]}")
        cache_key = (
            "list",
            res.group_version,
            res.plural,
            ns,
            label_sel,
            field_sel,
            start,
            end,
            partial,
            list_rv,
        )
        return chunks, cache_key

    async def get_one(self, request, res, ns, name, headers):
        key = f"{ns}/{name}" if res.namespaced else name
        i = self._index_of(res, key)
        if i is None:
            group = res.group_version.split("/")[0] if "/" in res.group_version else ""
            body = status_body(
                404,
                "NotFound",
                f'{res.plural}{"." + group if group else ""} "{name}" not found',
                {"name": name, "kind": res.plural, **({"group": group} if group else {})},
            )
            return await self.send_json(request, body, 404, headers)
        body = self._with_kind(res, res.items[i])
        return await self.send(request, [body], None, 200, headers)

    def _index_of(self, res, key):
        import bisect

        i = bisect.bisect_left(res.keys, key)
        if i < len(res.keys) and res.keys[i] == key:
            return i
        return None

    @staticmethod
    def _with_kind(res: ds_mod.Resource, item: bytes) -> bytes:
        return (
            b'{"kind":"'
            + res.kind.encode()
            + b'","apiVersion":"'
            + res.group_version.encode()
            + b'",'
            + item[1:]
        )

    def _event(self, res, etype: str, item: bytes) -> bytes:
        return b'{"type":"' + etype.encode() + b'","object":' + self._with_kind(res, item) + b"}\n"

    def _bookmark(self, res, rv: int, initial_end: bool = False) -> bytes:
        meta: dict = {"resourceVersion": str(rv), "creationTimestamp": None}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": res.kind, "apiVersion": res.group_version, "metadata": meta}
        return (
            json.dumps({"type": "BOOKMARK", "object": obj}, separators=(",", ":")).encode() + b"\n"
        )

    async def watch(self, request, res: ds_mod.Resource, ns, headers):
        q = request.query
        entry = request["log"]
        entry["watch"] = True
        try:
            sel = self.selection(res, ns, q.get("labelSelector", ""), q.get("fieldSelector", ""))
        except ValueError as e:
            return await self.send_json(
                request, status_body(400, "BadRequest", str(e)), 400, headers
            )
        sel_set = None  # filter for live events by key
        bookmarks = q.get("allowWatchBookmarks") in ("1", "true")
        send_initial = q.get("sendInitialEvents") in ("1", "true")
        rv_param = q.get("resourceVersion", "")
        try:
            timeout = (
                float(q.get("timeoutSeconds", ""))
                if q.get("timeoutSeconds")
                else 1800 + (hash(entry["t"]) % 1800)
            )
        except ValueError:
            timeout = 1800
        timeout = min(timeout, self.args.max_lifetime)
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_type = "application/json"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        entry["status"] = 200
        written = 0

        table = self._wants_table(request, res)
        first = True

        async def put(b: bytes):
            nonlocal written, first
            if table:
                events = []
                for line in b.splitlines():
                    if line:
                        events.append(pod_table.event_from_line(line, first))
                        first = False
                b = b"".join(events)
            await resp.write(b)
            written += len(b)
            entry["bytes"] = written
            entry["body_bytes"] = written

        key = (res.group_version, res.plural)
        queue: asyncio.Queue = asyncio.Queue()
        self.watchers.setdefault(key, set()).add(queue)
        try:
            err = self._check_rv(rv_param) if not send_initial else None
            if err and err[0] == 410:
                body = status_body(410, "Expired", err[1])
                await put(
                    json.dumps({"type": "ERROR", "object": body}, separators=(",", ":")).encode()
                    + b"\n"
                )
                await resp.write_eof()
                return resp
            if err:
                body = status_body(err[0], "BadRequest" if err[0] == 400 else "Timeout", err[1])
                await put(
                    json.dumps({"type": "ERROR", "object": body}, separators=(",", ":")).encode()
                    + b"\n"
                )
                await resp.write_eof()
                return resp
            start_rv = self.rv
            if send_initial or rv_param in ("", "0"):
                buf = []
                size = 0
                for i in sel:
                    ev = self._event(res, "ADDED", res.items[i])
                    buf.append(ev)
                    size += len(ev)
                    if size >= CHUNK:
                        await put(b"".join(buf))
                        buf, size = [], 0
                if buf:
                    await put(b"".join(buf))
                if send_initial and bookmarks:
                    await put(self._bookmark(res, start_rv, initial_end=True))
            else:
                since = int(rv_param)
                for ev_rv, ev in self.history.get(key, []):
                    if ev_rv > since:
                        await put(ev)
            sel_set = {res.keys[i] for i in sel} if len(sel) != len(res.items) else None
            deadline = time.monotonic() + timeout
            interval = self.args.bookmark_interval
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    ev_key, ev_rv, ev = await asyncio.wait_for(
                        queue.get(), timeout=min(remaining, interval)
                    )
                    if sel_set is None or ev_key in sel_set:
                        await put(ev)
                except TimeoutError:
                    if bookmarks and deadline - time.monotonic() > 0:
                        await put(self._bookmark(res, self.rv))
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        finally:
            self.watchers[key].discard(queue)
        return resp

    # ---------------------------------------------------------------- churn
    def touch_nodes(self, count: int) -> int:
        res = self.data.resources[("v1", "nodes")]
        key = ("v1", "nodes")
        hist = self.history.setdefault(key, [])
        n = len(res.items)
        for k in range(min(count, n)):
            i = (self.rv + k * 7919) % n
            self.rv += 1
            item = res.items[i]
            old = f'"resourceVersion":"{res.rvs[i]}"'.encode()
            item = item.replace(old, f'"resourceVersion":"{self.rv}"'.encode(), 1)
            res.items[i] = item
            res.rvs[i] = self.rv
            ev = self._event(res, "MODIFIED", item)
            hist.append((self.rv, ev))
            for qu in self.watchers.get(key, ()):
                qu.put_nowait((res.keys[i], self.rv, ev))
        del hist[:-10000]
        self.gz_cache.clear()
        return count

    # ---------------------------------------------------------------- prometheus
    def targets_chunks(
        self, state: str, pool: str, shard: int, churned: bool = False
    ) -> list[bytes]:
        if pool and pool not in self.pools:
            names = []
        elif pool:
            names = [pool]
        else:
            names = list(self.pools)
        show_active = state in ("active", "any", "")
        show_dropped = state in ("dropped", "any", "")
        chunks = [b'{"status":"success","data":{"activeTargets":[']
        if show_active:
            first = True
            for n in names:
                if not self.pool_counts[(n, shard)]:
                    continue
                if not first:
                    chunks.append(b",")
                blobs = self.churned if churned else self.pool_blobs
                chunks.append(blobs[(n, shard)])
                first = False
        chunks.append(b'],"droppedTargets":[]')
        if show_dropped:
            # every target of another shard is a dropped target of this one
            counts = {
                n: max(0, self.pools[n].discovered - self.pool_counts[(n, shard)]) for n in names
            }
            chunks.append(
                b',"droppedTargetCounts":' + json.dumps(counts, separators=(",", ":")).encode()
            )
        else:
            # Prometheus 3.16 with state=active: the key is there, null
            chunks.append(b',"droppedTargetCounts":null')
        chunks.append(b"}}")
        return chunks

    async def prom_targets(self, request):
        prom = request["prom"]
        if prom is None:
            return await self.not_found(request)
        q = request.query
        state = q.get("state", "any") or "any"
        pool = q.get("scrapePool", "")
        churned = False
        if self.churned and pool:
            seen = self.reads.get((prom.name, pool), 0)
            self.reads[(prom.name, pool)] = seen + 1
            churned = seen % 2 == 1
        chunks = self.targets_chunks(state, pool, prom.shard, churned)
        return await self.send(
            request, chunks, ("targets", prom.shard, state, pool, churned), threshold=1024
        )

    async def prom_pools(self, request):
        if request["prom"] is None:
            return await self.not_found(request)
        body = {"status": "success", "data": {"scrapePools": sorted(self.pools)}}
        return await self.send_json(request, body)

    async def prom_config(self, request):
        prom = request["prom"]
        if prom is None:
            return await self.not_found(request)
        return await self.send(request, [self.configs[prom.name]], None)

    async def prom_buildinfo(self, request):
        if request["prom"] is None:
            return await self.not_found(request)
        return await self.send_json(
            request,
            {
                "status": "success",
                "data": {
                    "version": ds_mod.PROM_VERSION,
                    "revision": ds_mod.PROM_REVISION,
                    "branch": "HEAD",
                    "buildUser": "root@bench",
                    "buildDate": "20251119-10:02:11",
                    "goVersion": "go1.26.8",
                },
            },
        )

    async def prom_metrics(self, request):
        prom = request["prom"]
        if prom is None:
            return await self.not_found(request)
        return await self.send(
            request,
            [self.data.metrics_by_shard[prom.shard]],
            ("metrics", prom.shard),
            content_type="text/plain",
            threshold=1024,
        )

    async def ok(self, request):
        return await self.send(request, [b"ok"], None, content_type="text/plain")

    async def version(self, request):
        return await self.send_json(
            request,
            {
                "major": "1",
                "minor": "33",
                "emulationMajor": "1",
                "emulationMinor": "33",
                "minCompatibilityMajor": "1",
                "minCompatibilityMinor": "32",
                "gitVersion": ds_mod.KUBE_VERSION,
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2025-08-12T00:00:00Z",
                "goVersion": "go1.24.5",
                "compiler": "gc",
                "platform": "linux/amd64",
            },
        )

    # ---------------------------------------------------------------- bench control
    async def bench_requests(self, request):
        since = int(request.query.get("since", "0"))
        return web.json_response({"next": len(self.log), "requests": self.log[since:]})

    async def bench_info(self, request):
        return web.json_response(
            {
                "nodes": self.data.nodes_count,
                "resourceVersion": self.rv,
                "compacted": self.compacted_rv,
                "pid": os.getpid(),
                "summary": self.summary,
                "scrape_pools": sorted(self.pools),
                "role": self.data.role,
                "shards": self.data.shards,
                "replicas": self.data.replicas,
                "servers": self.servers_info(),
            }
        )

    async def bench_compact(self, request):
        self.compacted_rv = self.rv
        self.rv += 1
        for h in self.history.values():
            h.clear()
        return web.json_response({"compacted": self.compacted_rv, "resourceVersion": self.rv})

    async def bench_touch(self, request):
        n = self.touch_nodes(int(request.query.get("count", "1")))
        return web.json_response({"touched": n, "resourceVersion": self.rv})

    def servers_info(self) -> list[dict]:
        by_name = {srv.name: port for port, srv in self.port_server.items()}
        return [
            {
                "name": srv.name,
                "shard": srv.shard,
                "replica": srv.replica,
                "pod": srv.pod,
                "port": by_name.get(srv.name),
                "targets": sum(self.pool_counts[(p, srv.shard)] for p in self.pools),
            }
            for srv in self.data.servers
        ]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.log_mw], client_max_size=1 << 20)
        r = app.router
        r.add_get("/_bench/requests", self.bench_requests)
        r.add_get("/_bench/info", self.bench_info)
        r.add_post("/_bench/compact", self.bench_compact)
        r.add_post("/_bench/touch-nodes", self.bench_touch)
        r.add_get("/api/v1/targets", self.prom_targets)
        r.add_get("/api/v1/scrape_pools", self.prom_pools)
        r.add_get("/api/v1/status/buildinfo", self.prom_buildinfo)
        r.add_get("/api/v1/status/config", self.prom_config)
        r.add_get("/metrics", self.prom_metrics)
        r.add_get("/-/ready", self.ok)
        r.add_get("/-/healthy", self.ok)
        r.add_get("/healthz", self.ok)
        r.add_get("/readyz", self.ok)
        r.add_get("/livez", self.ok)
        r.add_get("/version", self.version)
        r.add_route("*", "/api/{tail:.*}", self.k8s)
        r.add_route("*", "/apis/{tail:.*}", self.k8s)
        return app

    def warm(self) -> None:
        """Render the gzip bodies a client is most likely to ask for, so that
        the first measured cycle does not pay for compression."""
        if not self.args.gzip:
            return
        limits = (500,)
        for (_gv, plural), res in self.data.resources.items():
            sels = [("", None)]
            if plural == "pods":
                for (ns, _name), selector in self.data.service_selectors.items():
                    sel = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
                    sels.append((sel, ns))
            for label_sel, ns in sels:
                idx = self.selection(res, ns, label_sel, "")
                for limit in limits:
                    for start in range(0, len(idx), limit):
                        end = min(len(idx), start + limit)
                        size = sum(len(res.items[i]) for i in idx[start:end])
                        if size <= GZIP_THRESHOLD:
                            continue
                        chunks, key = self.list_chunks(
                            res, ns, idx, start, end, False, self.rv, label_sel, ""
                        )
                        self._gzip(key, lambda c=chunks: c)
        for shard in range(self.data.shards):
            for name in self.pools:
                for churned in (False, True) if self.churned else (False,):
                    self._gzip(
                        ("targets", shard, "active", name, churned),
                        lambda name=name, shard=shard, c=churned: self.targets_chunks(
                            "active", name, shard, c
                        ),
                    )
            self._gzip(
                ("targets", shard, "any", "", False),
                lambda shard=shard: self.targets_chunks("any", "", shard),
            )


def _flip_health(blob: bytes) -> bytes:
    """One health in 100 flipped, up to down and down to up."""
    parts = blob.split(b'"health":"')
    for i in range(1, len(parts), 100):
        if parts[i].startswith(b"up"):
            parts[i] = b"down" + parts[i][2:]
        elif parts[i].startswith(b"down"):
            parts[i] = b"up" + parts[i][4:]
    return b'"health":"'.join(parts)


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
    server = Server(data, args)
    t1 = time.perf_counter()
    if args.warm:
        server.warm()
    t_warm = time.perf_counter() - t1

    async def run():
        runner = web.AppRunner(server.app(), access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port, backlog=256)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        # one listening port per Prometheus server; --port P gives P+1, P+2, ...
        for k, srv in enumerate(data.servers):
            psite = web.TCPSite(runner, args.host, args.port + 1 + k if args.port else 0)
            await psite.start()
            server.port_server[psite._server.sockets[0].getsockname()[1]] = srv
        info = {
            "port": port,
            "pid": os.getpid(),
            "build_s": round(t_build, 3),
            "warm_s": round(t_warm, 3),
            "role": data.role,
            "shards": data.shards,
            "replicas": data.replicas,
            "prometheus": server.servers_info(),
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
        await runner.cleanup()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
