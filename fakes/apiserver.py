"""A small stand-in for kube-apiserver's list/watch protocol, on 127.0.0.1.

What it reproduces, because the reflector depends on it:
- LIST with limit/continue; every page carries the snapshot's
  resourceVersion; a continue token can be expired (410, reason Expired).
- WATCH (watch=true) from a resourceVersion: history after it is replayed,
  then live events stream one JSON object per line; a resourceVersion older
  than the compaction point answers 200 plus an ERROR event with code 410,
  as the real apiserver does; the server ends the watch at timeoutSeconds.
- BOOKMARK events (only if allowWatchBookmarks=true), connection drops,
  Warning headers, namespaced paths and equality labelSelectors.
- LIST pages written compact and gzipped above 128 KiB, as the real
  server does when the client accepts gzip.
- Pods in the Table form (`Accept: ...;as=Table;...`), shaped like the real
  server's captures in tests/fixtures/captured/kubernetes/pod_forms: every
  LIST page with columnDefinitions, watch events one-row Tables with
  columnDefinitions in the first only, bookmarks as Tables of an empty pod.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

LOOPBACK = "127.0.0.1"
_CAPTURED = Path(__file__).parent.parent / "fixtures/captured/kubernetes/pod_forms"
POD_COLUMNS: list[dict[str, Any]] = json.loads((_CAPTURED / "list_pods_table.json").read_text())[
    "columnDefinitions"
]

# resource name -> (list kind, object kind, namespaced)
RESOURCES = {
    "nodes": ("NodeList", "Node", False),
    "services": ("ServiceList", "Service", True),
    "endpoints": ("EndpointsList", "Endpoints", True),
    "endpointslices": ("EndpointSliceList", "EndpointSlice", True),
    "daemonsets": ("DaemonSetList", "DaemonSet", True),
    "pods": ("PodList", "Pod", True),
}


@dataclass
class Request:
    resource: str
    verb: str  # "list" | "watch"
    params: dict[str, str]
    namespace: str | None
    authorization: str | None = None
    accept: str | None = None


@dataclass(eq=False)
class _Watch:
    resource: str
    namespace: str | None
    selector: dict[str, str]
    bookmarks: bool
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    table: bool = False
    columns_sent: bool = False

    def line(self, kind: str, obj: dict[str, Any]) -> bytes:
        if not self.table:
            return _line(kind, obj)
        table = pod_table([obj] if kind != "BOOKMARK" else [{}], obj["metadata"])
        if self.columns_sent:
            table["columnDefinitions"] = None  # as the real server: first event only
        self.columns_sent = True
        return _line(kind, table)


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeApiServer:
    def __init__(self) -> None:
        self.rv = 100
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {r: {} for r in RESOURCES}
        # (rv, resource, event type, object) for watch replay
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.compacted_rv = 0
        self.requests: list[Request] = []
        self.warnings: dict[str, str] = {}
        """resource -> Warning header value sent on every request."""
        self.expire_continue = 0
        """Answer the next N continue requests with 410 Expired."""
        self.page_gate: asyncio.Event | None = None
        """When set to an unset Event, pages after the first wait for it."""
        self.fail_status: int | None = None
        """Answer every request with this HTTP status (500, 403, ...)."""
        self.watch_gone_http = False
        """Answer watches with HTTP 410 instead of an ERROR event."""
        self.watch_ends_at_once = False
        """End every watch right after its headers (a proxy cutting them)."""
        self.forbidden_namespaces: set[str] = set()
        """Namespaces whose requests get 403 Forbidden (RBAC)."""
        self.table_status: int | None = None
        """Answer pod Table requests with this status (406: form not served);
        None serves Tables."""
        self.overrides: dict[tuple[str, str], Callable[[web.Request], Awaitable[Any]]] = {}
        """(resource, "list" | "watch") -> handler, for hostile answers."""
        self._snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._watches: set[_Watch] = set()
        self._responses: set[web.StreamResponse] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle ----------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        # handler_cancellation: a client closing its watch ends the handler,
        # so open_watches counts what the client really holds open.
        self._runner = web.AppRunner(app, shutdown_timeout=0.1, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening and cut every open connection (an apiserver crash)."""
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    # --- state changes ---------------------------------------------------------------

    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    def _emit(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        self.history.append((self.rv, resource, kind, copy.deepcopy(obj)))
        for watch in self._watches:
            if watch.resource == resource and _matches(watch, obj):
                watch.queue.put_nowait(watch.line(kind, obj))

    def put(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace; returns the stored object with its new RV."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace", ""), meta["name"])
        kind = "MODIFIED" if key in self.objects[resource] else "ADDED"
        meta["resourceVersion"] = str(self._bump())
        self.objects[resource][key] = obj
        self._emit(resource, kind, obj)
        return obj

    def put_raw_event(self, resource: str, line: bytes) -> None:
        """Send a hand-made line to the watches of resource (bad objects)."""
        for watch in self._watches:
            if watch.resource == resource:
                watch.queue.put_nowait(line)

    def delete(self, resource: str, name: str, namespace: str = "") -> None:
        obj = self.objects[resource].pop((namespace, name))
        obj["metadata"]["resourceVersion"] = str(self._bump())
        self._emit(resource, "DELETED", obj)

    def bookmark(self) -> None:
        """A BOOKMARK at the current RV to every watch that asked for them."""
        for watch in self._watches:
            if watch.bookmarks:
                kind = RESOURCES[watch.resource][1]
                obj = {
                    "kind": kind,
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self.rv)},
                }
                watch.queue.put_nowait(watch.line("BOOKMARK", obj))

    def compact(self) -> None:
        """Forget history: watches from older RVs get 410, continue tokens expire."""
        self.compacted_rv = self.rv
        self.history.clear()
        self._snapshots.clear()

    def drop_watches(self) -> None:
        """Cut every open watch connection without a proper end of stream."""
        for watch in self._watches:
            watch.queue.put_nowait(None)

    def lists(self, resource: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.verb == "list" and resource in (None, r.resource)]

    def watches(self, resource: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.verb == "watch" and resource in (None, r.resource)]

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    # --- HTTP -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        resource, namespace = _route(request.path)
        params = dict(request.query)
        verb = "watch" if params.get("watch") in ("true", "1") else "list"
        if resource not in RESOURCES:
            return web.json_response(
                status(404, "NotFound", "the server could not find the requested resource"),
                status=404,
            )
        accept = request.headers.get("Accept")
        self.requests.append(
            Request(resource, verb, params, namespace, request.headers.get("Authorization"), accept)
        )
        table = resource == "pods" and "as=Table" in (accept or "")
        if table and self.table_status is not None:
            return web.json_response(
                status(self.table_status, "NotAcceptable", "only application/json is served"),
                status=self.table_status,
            )
        headers = {"Warning": self.warnings[resource]} if resource in self.warnings else {}
        override = self.overrides.get((resource, verb))
        if override is not None:
            return await override(request)
        if namespace in self.forbidden_namespaces:
            return web.json_response(
                status(403, "Forbidden", f'pods is forbidden in the namespace "{namespace}"'),
                status=403,
            )
        if self.fail_status is not None:
            return web.json_response(
                status(self.fail_status, "InternalError", "injected failure"),
                status=self.fail_status,
                headers=headers,
            )
        if verb == "watch":
            return await self._watch(request, resource, namespace, params, headers, table)
        gzip = "gzip" in request.headers.get("Accept-Encoding", "")
        return await self._list(resource, namespace, params, headers, table, gzip)

    async def _list(
        self,
        resource: str,
        namespace: str | None,
        params: dict[str, str],
        headers: dict[str, str],
        table: bool = False,
        gzip: bool = False,
    ) -> web.StreamResponse:
        limit = int(params.get("limit", "0")) or 1 << 30
        selector = _parse_selector(params.get("labelSelector", ""))
        token = params.get("continue")
        if token:
            if self.expire_continue:
                self.expire_continue -= 1
                return _gone(
                    "The provided continue parameter is too old to display a consistent list"
                    " result.",
                    headers,
                )
            snap_id, offset_s = base64.b64decode(token).decode().split(":")
            if snap_id not in self._snapshots:
                return _gone("continue token expired", headers)
            rv, items = self._snapshots[snap_id]
            offset = int(offset_s)
            if self.page_gate is not None:
                await self.page_gate.wait()
        else:
            rv = self.rv
            items = [
                copy.deepcopy(o)
                for (ns, _), o in sorted(self.objects[resource].items())
                if namespace in (None, ns) and _labels_match(o, selector)
            ]
            snap_id = str(len(self._snapshots) + 1)
            self._snapshots[snap_id] = (rv, items)
            offset = 0
        page = items[offset : offset + limit]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if offset + limit < len(items):
            meta["continue"] = base64.b64encode(f"{snap_id}:{offset + limit}".encode()).decode()
            meta["remainingItemCount"] = len(items) - offset - limit
        if table:
            return _list_response(pod_table(page, meta, columns=True), headers, gzip)
        body = {"kind": RESOURCES[resource][0], "apiVersion": "v1", "metadata": meta, "items": page}
        return _list_response(body, headers, gzip)

    async def _watch(
        self,
        request: web.Request,
        resource: str,
        namespace: str | None,
        params: dict[str, str],
        headers: dict[str, str],
        table: bool = False,
    ) -> web.StreamResponse:
        since = int(params.get("resourceVersion") or self.rv)
        if since < self.compacted_rv and self.watch_gone_http:
            return _gone(f"too old resource version: {since} ({self.compacted_rv})", headers)
        response = web.StreamResponse(headers={"Content-Type": "application/json", **headers})
        await response.prepare(request)
        if self.watch_ends_at_once:
            await response.write_eof()
            return response
        if since < self.compacted_rv:
            msg = f"too old resource version: {since} ({self.compacted_rv})"
            await response.write(_line("ERROR", status(410, "Expired", msg)))
            return response
        watch = _Watch(
            resource,
            namespace,
            _parse_selector(params.get("labelSelector", "")),
            params.get("allowWatchBookmarks") == "true",
            table=table,
        )
        for rv, res, kind, obj in self.history:
            if rv > since and res == resource and _matches(watch, obj):
                watch.queue.put_nowait(watch.line(kind, obj))
        self._watches.add(watch)
        timeout = float(params.get("timeoutSeconds", "1800"))
        try:
            async with asyncio.timeout(timeout):
                while (line := await watch.queue.get()) is not None:
                    await response.write(line)
        except TimeoutError:
            # Clean end of stream at timeoutSeconds, as the apiserver does.
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response
        finally:
            self._watches.discard(watch)
        # Dropped: abort the TCP connection, no terminating chunk.
        if request.transport is not None:
            request.transport.abort()
        return response


def _route(path: str) -> tuple[str, str | None]:
    parts = [p for p in path.split("/") if p]
    # /api/v1/... or /apis/group/version/...
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        return rest[2], rest[1]
    return (rest[0] if rest else ""), None


def _parse_selector(text: str) -> dict[str, str]:
    return dict(term.split("=", 1) for term in text.split(",") if term)


def _labels_match(obj: dict[str, Any], selector: dict[str, str]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _matches(watch: _Watch, obj: dict[str, Any]) -> bool:
    ns = obj.get("metadata", {}).get("namespace", "")
    return watch.namespace in (None, ns) and _labels_match(obj, watch.selector)


def _line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


def pod_table(
    pods: list[dict[str, Any]], meta: dict[str, Any], *, columns: bool = True
) -> dict[str, Any]:
    """Pods as the real apiserver prints them into a Table (includeObject=None)."""
    rows = []
    for pod in pods:
        m, spec, st = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
        phase = st.get("phase") or ("Running" if st.get("podIP") else "Pending")
        status = phase
        if m.get("deletionTimestamp") and phase not in ("Succeeded", "Failed"):
            status = "Terminating"
        row: dict[str, Any] = {
            "cells": [
                m.get("name", ""),
                "1/1" if pod else "0/0",
                status if pod else "",
                "0",
                "1m" if pod else "<unknown>",
                st.get("podIP") or "<none>",
                spec.get("nodeName") or "<none>",
                "<none>",
                "<none>",
            ],
            "object": None,
        }
        if phase in ("Succeeded", "Failed"):
            row["conditions"] = [{"type": "Completed", "status": "True", "reason": phase}]
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {k: v for k, v in meta.items() if k in ("resourceVersion", "continue")},
        "columnDefinitions": POD_COLUMNS if columns else None,
        "rows": rows,
    }


GZIP_ABOVE = 128 << 10
"""kube-apiserver gzips an answer above 128 KiB when the client accepts it."""


def _list_response(body: dict[str, Any], headers: dict[str, str], gzip: bool) -> web.Response:
    # Compact, in the fields' order, as the apiserver's encoder writes it
    # (sources.k8s_parse.peek_list_meta reads the head of a page as such).
    data = json.dumps(body, separators=(",", ":")).encode()
    response = web.Response(body=data, content_type="application/json", headers=headers)
    if gzip and len(data) > GZIP_ABOVE:
        response.enable_compression(web.ContentCoding.gzip)
    return response


def _gone(message: str, headers: dict[str, str]) -> web.Response:
    return web.json_response(status(410, "Expired", message), status=410, headers=headers)


# --- object builders -----------------------------------------------------------------


def node(name: str, ip: str = "10.0.0.1", ready: bool = True) -> dict[str, Any]:
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "images": [{"names": [f"img-{i}"], "sizeBytes": i} for i in range(5)],
        },
    }


def nodes(count: int, prefix: str = "node") -> Iterator[dict[str, Any]]:
    for i in range(count):
        yield node(f"{prefix}-{i:05d}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
