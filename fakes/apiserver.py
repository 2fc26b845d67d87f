"""A stand-in for kube-apiserver's list/watch protocol on 127.0.0.1: the one
fake apiserver of the tests (tests/local) and of the benchmark
(bench/fake_api.py, up to 100k nodes). Used only for what the real
kube-apiserver of the testbed cannot give: a cluster of that size, and
answers a healthy server never sends.

What it reproduces, because the reflector depends on it (shapes as
kube-apiserver v1.33-1.36 serves them):
- LIST with limit/continue from a consistent snapshot: every page carries
  the snapshot's resourceVersion; continue tokens in the real server's
  format expire with a compaction (410, reason Expired); resourceVersion
  too old (410) or newer than the server's (504); remainingItemCount;
  label selectors (=, ==, !=, in, notin, exists, !exists) and field
  selectors (metadata.name, metadata.namespace, and the fields an object
  is given); PartialObjectMetadataList; GET of one object.
- WATCH (watch=true) from a resourceVersion: history after it replayed,
  then live events, one JSON object per line; from "" or "0", or with
  sendInitialEvents=true, an ADDED event per object first (and the
  initial-events-end bookmark); a resourceVersion older than the
  compaction answers 200 and an ERROR event with code 410, as the real
  apiserver does; the watch ends cleanly at timeoutSeconds.
- BOOKMARK events, to watches that allow them: on demand (`bookmark()`)
  or every `bookmark_every` seconds.
- Pods in the Table form (`Accept: ...;as=Table;...`, fakes/pod_table.py):
  every LIST page with columnDefinitions, watch events one-row Tables
  with columnDefinitions in the first only, bookmarks as the Table of an
  empty pod.
- Bodies compact, in the fields' order (the reflector peeks at a page's
  head), gzipped above 128 KiB when the client accepts gzip.
- A hostile or failing server, on demand: the attributes under "what a
  test may change" below.

Objects are kept as the bytes a LIST carries them (no kind, no apiVersion,
as the real server writes list items), so that 100k Nodes cost what their
JSON costs and a page is a join of bytes.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import copy
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from fakes import pod_table, selectors
from fakes.http import KEY, Request, Sender, recorder

LOOPBACK = "127.0.0.1"
GZIP_ABOVE = 128 << 10
"""kube-apiserver gzips an answer above 128 KiB when the client accepts it."""
PARTIAL = "as=partialobjectmetadatalist"
TABLE = "as=table;g=meta.k8s.io;v=v1"
SNAPSHOTS_KEPT = 64
"""LIST snapshots kept for their continue tokens (the oldest expire first)."""


@dataclass(frozen=True)
class Kind:
    kind: str
    group_version: str
    namespaced: bool

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def prefix(self) -> str:
        """The API path its collection is under: /api/v1 or /apis/<group>/<version>."""
        return "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"


KINDS = {
    "nodes": Kind("Node", "v1", False),
    "namespaces": Kind("Namespace", "v1", False),
    "services": Kind("Service", "v1", True),
    "endpoints": Kind("Endpoints", "v1", True),
    "pods": Kind("Pod", "v1", True),
    "endpointslices": Kind("EndpointSlice", "discovery.k8s.io/v1", True),
    "daemonsets": Kind("DaemonSet", "apps/v1", True),
}


@dataclass(slots=True)
class Entry:
    """One stored object."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    body: bytes
    """The object as a LIST item: compact JSON without kind and apiVersion."""
    rv: int
    fields: Mapping[str, str] = field(default_factory=dict)
    """What field selectors match besides metadata.name and metadata.namespace."""

    @property
    def key(self) -> str:
        """The object's etcd key order: namespace/name, or name."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


class _Store:
    """One resource's objects, handed out in key order."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self._sorted: list[Entry] | None = None

    def set(self, entry: Entry) -> bool:
        """True if the object is new."""
        new = entry.key not in self.entries
        self.entries[entry.key] = entry
        if new:
            self._sorted = None
        elif self._sorted is not None:
            i = bisect.bisect_left(self._sorted, entry.key, key=_key)
            self._sorted[i] = entry
        return new

    def remove(self, key: str) -> Entry:
        self._sorted = None
        return self.entries.pop(key)

    def sorted(self) -> list[Entry]:
        if self._sorted is None:
            self._sorted = sorted(self.entries.values(), key=_key)
        return self._sorted


def _key(entry: Entry) -> str:
    return entry.key


def status(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A metav1.Status, as the apiserver answers errors."""
    body: dict[str, Any] = {
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
    """A continue token as the real server makes it."""
    raw = json.dumps(
        {"v": "meta.k8s.io/v1", "rv": rv, "start": key + "\x00"}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def decode_continue(token: str) -> tuple[int, str]:
    """(resourceVersion, start key); ValueError as the real server's 400."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        version, start = data.get("v"), data["start"]
        rv = int(data["rv"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"continue key is not valid: {exc}") from None
    if version != "meta.k8s.io/v1":
        raise ValueError(
            "continue key is not valid: incorrect encoded start resourceVersion "
            "(version meta.k8s.io/v1)"
        )
    if not start.endswith("\x00"):
        raise ValueError("continue key is not valid")
    return rv, start[:-1]


@dataclass(eq=False)
class _Watch:
    resource: str
    namespace: str | None
    labels: selectors.Selector
    fields: selectors.Selector
    bookmarks: bool
    table: bool
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    columns_sent: bool = False

    def wants(self, resource: str, entry: Entry) -> bool:
        return (
            self.resource == resource
            and self.namespace in (None, entry.namespace)
            and selectors.matches(self.labels, entry.labels)
            and selectors.matches(self.fields, _fields(entry))
        )

    def line(self, kind: Kind, event: str, entry: Entry | None, rv: int) -> bytes:
        """One event; entry None: a BOOKMARK at rv."""
        if self.table:
            pod = {} if entry is None else json.loads(entry.body)
            line = pod_table.event(event, pod, str(rv), first=not self.columns_sent)
            self.columns_sent = True
            return line
        obj = _with_kind(kind, entry.body) if entry is not None else _bookmark(kind, rv)
        return b'{"type":"' + event.encode() + b'","object":' + obj + b"}\n"


def _fields(entry: Entry) -> Mapping[str, str]:
    return {"metadata.name": entry.name, "metadata.namespace": entry.namespace, **entry.fields}


def _with_kind(kind: Kind, body: bytes) -> bytes:
    """A LIST item as a watch event or a GET carries it: kind and apiVersion first."""
    head = b'{"kind":"' + kind.kind.encode() + b'","apiVersion":"' + kind.group_version.encode()
    return head + (b'",' + body[1:] if body != b"{}" else b'"}')


def _bookmark(kind: Kind, rv: int, initial_end: bool = False) -> bytes:
    meta: dict[str, Any] = {"resourceVersion": str(rv), "creationTimestamp": None}
    if initial_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    obj = {"kind": kind.kind, "apiVersion": kind.group_version, "metadata": meta}
    return json.dumps(obj, separators=(",", ":")).encode()


def _render(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(
        {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}, separators=(",", ":")
    ).encode()


_META = msgspec.json.Decoder(dict[str, Any])


class FakeApiServer:
    def __init__(
        self,
        *,
        bookmark_every: float | None = None,
        log: list[Request] | None = None,
        gzip_above: int | None = GZIP_ABOVE,
        gzip_cache_bytes: int = 256 << 20,
    ) -> None:
        """bookmark_every: seconds between bookmarks to a quiet watch (None:
        only on `bookmark()`); log: the request log to append to (shared
        with other fakes of one process); gzip_above: None never gzips."""
        self.rv = 100
        self.compacted_rv = 0
        """resourceVersions below it are too old (410)."""
        self.requests: list[Request] = log if log is not None else []
        self.bookmark_every = bookmark_every
        self.history_kept = 100_000
        """Watch events kept for replay, the oldest dropped first."""
        # --- what a test may change ----------------------------------------
        self.warnings: dict[str, str] = {}
        """resource -> Warning header value sent on every request."""
        self.expire_continue = 0
        """Answer the next N continue requests with 410 Expired."""
        self.page_gate: asyncio.Event | None = None
        """When set to an unset Event, pages after the first wait for it."""
        self.fail_status: int | None = None
        """Answer every request with this HTTP status (500, 403, ...)."""
        self.watch_gone_http = False
        """Answer watches from a compacted resourceVersion with HTTP 410
        instead of an ERROR event."""
        self.watch_ends_at_once = False
        """End every watch right after its headers (a proxy cutting them)."""
        self.forbidden_namespaces: set[str] = set()
        """Namespaces whose requests get 403 Forbidden (RBAC)."""
        self.table_status: int | None = None
        """Answer pod Table requests with this status (406: form not served);
        None serves Tables."""
        self.overrides: dict[tuple[str, str], Callable[[web.Request], Awaitable[Any]]] = {}
        """(resource, "list" | "watch") -> handler, for hostile answers."""
        # ---------------------------------------------------------------------
        self._stores = {resource: _Store() for resource in KINDS}
        self._history: list[tuple[int, str, str, Entry]] = []
        self._snapshots: OrderedDict[tuple[object, ...], list[Entry]] = OrderedDict()
        self._watches: set[_Watch] = set()
        self._rows: dict[tuple[str, int], bytes] = {}
        self._partial: dict[tuple[str, str, int], bytes] = {}
        self._sender = Sender(gzip_above, gzip_cache_bytes)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle ------------------------------------------------------------------

    def app(self, *extra: Callable[[web.Application], None]) -> web.Application:
        """The server as an aiohttp application; `extra` add routes (the
        benchmark's control paths)."""
        app = web.Application(middlewares=[recorder(self.requests, "kubernetes", "kubernetes")])
        for add in extra:
            add(app)
        for path in ("/healthz", "/readyz", "/livez"):
            app.router.add_get(path, _ok)
        app.router.add_get("/version", _version)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def start(self, port: int = 0, host: str = LOOPBACK) -> None:
        # handler_cancellation: a client closing its watch ends the handler,
        # so open_watches counts what the client really holds open.
        self._runner = web.AppRunner(
            self.app(), shutdown_timeout=0.1, handler_cancellation=True, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
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

    # --- state changes -----------------------------------------------------------------

    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    def _emit(self, resource: str, event: str, entry: Entry) -> None:
        self._history.append((entry.rv, resource, event, entry))
        if len(self._history) > self.history_kept:
            del self._history[: len(self._history) - self.history_kept]
        kind = KINDS[resource]
        for watch in self._watches:
            if watch.wants(resource, entry):
                watch.queue.put_nowait(watch.line(kind, event, entry, entry.rv))

    def put(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace; returns the stored object with its new RV."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self._bump())
        entry = Entry(
            meta.get("namespace", ""), meta["name"], meta.get("labels") or {}, _render(obj), self.rv
        )
        new = self._stores[resource].set(entry)
        self._emit(resource, "ADDED" if new else "MODIFIED", entry)
        return obj

    def load(self, resource: str, entries: Iterable[Entry]) -> None:
        """Objects rendered elsewhere (the benchmark's data set), as they are
        now: no watch event, no history."""
        store = self._stores[resource]
        for entry in entries:
            store.set(entry)
            self.rv = max(self.rv, entry.rv)

    def touch(self, resource: str, key: str) -> None:
        """The object written again unchanged (a Node's heartbeat): a new
        resourceVersion and a MODIFIED event."""
        store = self._stores[resource]
        old = store.entries[key]
        rv = self._bump()
        body = old.body.replace(
            f'"resourceVersion":"{old.rv}"'.encode(), f'"resourceVersion":"{rv}"'.encode(), 1
        )
        entry = Entry(old.namespace, old.name, old.labels, body, rv, old.fields)
        store.set(entry)
        self._emit(resource, "MODIFIED", entry)

    def keys(self, resource: str) -> list[str]:
        return [e.key for e in self._stores[resource].sorted()]

    def put_raw_event(self, resource: str, line: bytes) -> None:
        """Send a hand-made line to the watches of resource (bad objects)."""
        for watch in self._watches:
            if watch.resource == resource:
                watch.queue.put_nowait(line)

    def delete(self, resource: str, name: str, namespace: str = "") -> None:
        old = self._stores[resource].remove(f"{namespace}/{name}" if namespace else name)
        obj = _META.decode(old.body)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._bump())
        entry = Entry(old.namespace, old.name, old.labels, _render(obj), self.rv, old.fields)
        self._emit(resource, "DELETED", entry)

    def bookmark(self) -> None:
        """A BOOKMARK at the current RV to every watch that asked for them."""
        for watch in self._watches:
            if watch.bookmarks:
                watch.queue.put_nowait(watch.line(KINDS[watch.resource], "BOOKMARK", None, self.rv))

    def compact(self) -> None:
        """Forget history: watches from older RVs get 410, continue tokens expire."""
        self.compacted_rv = self.rv
        self._history.clear()
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

    # --- HTTP ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route = _route(request.path)
        if route is None:
            return _json(
                status(404, "NotFound", "the server could not find the requested resource"), 404
            )
        resource, namespace, name = route
        params = request.query
        verb = "get" if name else "watch" if params.get("watch") in ("true", "1") else "list"
        entry = request.get(KEY)
        if entry is not None:
            entry.resource, entry.verb, entry.namespace = resource, verb, namespace
        accept = request.headers.get("Accept", "").lower().replace(" ", "")
        table = resource == "pods" and TABLE in accept
        if table and self.table_status is not None:
            return _json(
                status(self.table_status, "NotAcceptable", "only application/json is served"),
                self.table_status,
            )
        headers = {"Warning": self.warnings[resource]} if resource in self.warnings else {}
        override = self.overrides.get((resource, verb))
        if override is not None:
            return await override(request)
        if namespace in self.forbidden_namespaces:
            message = f'{resource} is forbidden in the namespace "{namespace}"'
            return _json(status(403, "Forbidden", message), 403)
        if self.fail_status is not None:
            failure = status(self.fail_status, "InternalError", "injected failure")
            return _json(failure, self.fail_status, headers)
        if request.method != "GET":
            message = f"{request.method} is not supported by the fake apiserver"
            return _json(status(405, "MethodNotAllowed", message), 405, headers)
        if name:
            return await self._get(request, resource, namespace, name, headers)
        try:
            labels = selectors.parse(params.get("labelSelector", ""))
            fields = selectors.parse(params.get("fieldSelector", ""))
        except ValueError as exc:
            return _json(status(400, "BadRequest", str(exc)), 400, headers)
        if verb == "watch":
            watch = _Watch(
                resource,
                namespace,
                labels,
                fields,
                params.get("allowWatchBookmarks") in ("true", "1"),
                table,
            )
            return await self._watch(request, watch, headers)
        partial = PARTIAL in accept
        return await self._list(
            request, resource, namespace, labels, fields, headers, table, partial
        )

    def _too_old_or_new(self, value: str) -> tuple[int, str] | None:
        if value in ("", "0"):
            return None
        try:
            rv = int(value)
        except ValueError:
            return 400, f"invalid resource version {value!r}"
        if rv < self.compacted_rv:
            return 410, f"too old resource version: {rv} ({self.compacted_rv})"
        if rv > self.rv:
            return 504, f"Too large resource version: {rv}, current: {self.rv}"
        return None

    def _select(
        self,
        resource: str,
        namespace: str | None,
        labels: selectors.Selector,
        fields: selectors.Selector,
    ) -> list[Entry]:
        return [
            e
            for e in self._stores[resource].sorted()
            if namespace in (None, e.namespace)
            and selectors.matches(labels, e.labels)
            and (not fields or selectors.matches(fields, _fields(e)))
        ]

    async def _list(
        self,
        request: web.Request,
        resource: str,
        namespace: str | None,
        labels: selectors.Selector,
        fields: selectors.Selector,
        headers: dict[str, str],
        table: bool,
        partial: bool,
    ) -> web.StreamResponse:
        params = request.query
        selection = (
            resource,
            namespace,
            params.get("labelSelector", ""),
            params.get("fieldSelector", ""),
        )
        token = params.get("continue")
        if token:
            if self.expire_continue:
                self.expire_continue -= 1
                return _expired(headers, "")
            try:
                rv, start_key = decode_continue(token)
            except ValueError as exc:
                return _json(status(400, "BadRequest", str(exc)), 400, headers)
            snapshot = self._snapshots.get((*selection, rv))
            if snapshot is None or rv < self.compacted_rv:
                return _expired(headers, encode_continue(-1, start_key))
            if self.page_gate is not None:
                await self.page_gate.wait()
            offset = bisect.bisect_right(snapshot, start_key, key=_key)
        else:
            problem = self._too_old_or_new(params.get("resourceVersion", ""))
            if problem is not None:
                code, message = problem
                reason = {400: "BadRequest", 410: "Expired", 504: "Timeout"}[code]
                return _json(status(code, reason, message), code, headers)
            rv, offset = self.rv, 0
            snapshot = self._select(resource, namespace, labels, fields)
            self._snapshots[(*selection, rv)] = snapshot
            while len(self._snapshots) > SNAPSHOTS_KEPT:
                self._snapshots.popitem(last=False)
        limit = int(params.get("limit") or 0)
        end = len(snapshot) if not limit else min(len(snapshot), offset + limit)
        page = snapshot[offset:end]
        more = encode_continue(rv, page[-1].key) if end < len(snapshot) and page else None
        # includeObject=Metadata: each row carries its PartialObjectMetadata
        # (the exporter reads owners so, model/owners.py).
        metadata = table and params.get("includeObject") == "Metadata"
        key = (*selection, rv, offset, end, table, partial, metadata)
        return await self._sender.send(
            request,
            self._page(resource, page, rv, more, len(snapshot) - end, table, partial, metadata),
            key,
            headers=headers,
        )

    def _page(
        self,
        resource: str,
        page: list[Entry],
        rv: int,
        more: str | None,
        remaining: int,
        table: bool,
        partial: bool,
        metadata: bool = False,
    ) -> list[bytes]:
        if table:
            if metadata:
                rows = [self._row_with_metadata(resource, e) for e in page]
            else:
                rows = [self._row(e) for e in page]
            # The real server: no remainingItemCount on a Table.
            return [pod_table.head(str(rv), more), b",".join(rows), b"]}"]
        kind = KINDS[resource]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if more:
            meta["continue"] = more
            meta["remainingItemCount"] = remaining
        head = (
            {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
            if partial
            else {"kind": kind.list_kind, "apiVersion": kind.group_version, "metadata": meta}
        )
        items = (
            [self._partial_item(resource, e) for e in page] if partial else [e.body for e in page]
        )
        prefix = json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"items":['
        return [prefix, b",".join(items), b"]}"]

    def _row(self, entry: Entry) -> bytes:
        key = (entry.key, entry.rv)
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = pod_table.row_bytes(entry.body)
        return row

    def _row_with_metadata(self, resource: str, entry: Entry) -> bytes:
        row = self._row(entry)
        assert row.endswith(b'"object":null}')
        return row[: -len(b"null}")] + self._partial_item(resource, entry) + b"}"

    def _partial_item(self, resource: str, entry: Entry) -> bytes:
        key = (resource, entry.key, entry.rv)
        item = self._partial.get(key)
        if item is None:
            meta = msgspec.json.encode(_META.decode(entry.body).get("metadata", {}))
            item = self._partial[key] = (
                b'{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":'
                + meta
                + b"}"
            )
        return item

    async def _get(
        self,
        request: web.Request,
        resource: str,
        namespace: str | None,
        name: str,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        kind = KINDS[resource]
        found = self._stores[resource].entries.get(f"{namespace}/{name}" if namespace else name)
        if found is None:
            group = kind.group_version.partition("/")[0] if "/" in kind.group_version else ""
            message = f'{resource}{"." + group if group else ""} "{name}" not found'
            details = {"name": name, "kind": resource, **({"group": group} if group else {})}
            return _json(status(404, "NotFound", message, details), 404, headers)
        return await self._sender.send(request, [_with_kind(kind, found.body)], headers=headers)

    async def _watch(
        self, request: web.Request, watch: _Watch, headers: dict[str, str]
    ) -> web.StreamResponse:
        params = request.query
        kind = KINDS[watch.resource]
        since = params.get("resourceVersion", "")
        initial = params.get("sendInitialEvents") in ("true", "1")
        problem = None if initial else self._too_old_or_new(since)
        if problem is not None and problem[0] == 410 and self.watch_gone_http:
            return _json(status(410, "Expired", problem[1]), 410, headers)
        response = web.StreamResponse(headers={"Content-Type": "application/json", **headers})
        response.enable_chunked_encoding()
        await response.prepare(request)
        entry = request.get(KEY)
        written = 0

        async def write(data: bytes) -> None:
            nonlocal written
            await response.write(data)
            written += len(data)
            if entry is not None:
                entry.bytes = entry.body_bytes = written

        if self.watch_ends_at_once:
            await response.write_eof()
            return response
        if problem is not None:
            code, message = problem
            reason = {400: "BadRequest", 410: "Expired", 504: "Timeout"}[code]
            error = {"type": "ERROR", "object": status(code, reason, message)}
            await write(json.dumps(error, separators=(",", ":")).encode() + b"\n")
            await response.write_eof()
            return response
        start_rv = self.rv
        if initial or since in ("", "0"):
            for chunk in _chunks(
                watch.line(kind, "ADDED", e, e.rv)
                for e in self._select(watch.resource, watch.namespace, watch.labels, watch.fields)
            ):
                await write(chunk)
            if initial and watch.bookmarks:
                await write(
                    b'{"type":"BOOKMARK","object":' + _bookmark(kind, start_rv, True) + b"}\n"
                )
        else:
            for rv, resource, event, e in self._history:
                if rv > int(since) and watch.wants(resource, e):
                    watch.queue.put_nowait(watch.line(kind, event, e, rv))
        self._watches.add(watch)
        timeout = float(params.get("timeoutSeconds") or 1800)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while (left := deadline - loop.time()) > 0:
                wait = left if self.bookmark_every is None else min(left, self.bookmark_every)
                try:
                    line = await asyncio.wait_for(watch.queue.get(), wait)
                except TimeoutError:
                    if (
                        watch.bookmarks
                        and self.bookmark_every is not None
                        and deadline > loop.time()
                    ):
                        await write(watch.line(kind, "BOOKMARK", None, self.rv))
                    continue
                if line is None:
                    # Dropped: abort the TCP connection, no terminating chunk.
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                await write(line)
            # Clean end of stream at timeoutSeconds, as the apiserver does.
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response
        finally:
            self._watches.discard(watch)

    # --- the benchmark's pages made ahead ----------------------------------------------

    def render_rows(self) -> None:
        """Every pod's Table row now, so that a measured client's first Table
        LIST does not wait for the fake to print 100k rows."""
        for entry in self._stores["pods"].sorted():
            self._row(entry)

    def warm(self, resource: str, namespace: str | None, label_selector: str, limit: int) -> None:
        """Gzip the pages of one LIST now, so that a measured client does not
        wait for the compression (a 100k-node LIST is gigabytes)."""
        labels = selectors.parse(label_selector)
        selection = self._select(resource, namespace, labels, ())
        for start in range(0, len(selection), limit):
            end = min(len(selection), start + limit)
            page = selection[start:end]
            if sum(len(e.body) for e in page) <= GZIP_ABOVE:
                continue
            more = encode_continue(self.rv, page[-1].key) if end < len(selection) else None
            key = (resource, namespace, label_selector, "", self.rv, start, end, False, False)
            chunks = self._page(resource, page, self.rv, more, len(selection) - end, False, False)
            self._sender.gzipped(key, lambda c=chunks: c)


def _chunks(lines: Iterable[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    buffered: list[bytes] = []
    held = 0
    for line in lines:
        buffered.append(line)
        held += len(line)
        if held >= size:
            yield b"".join(buffered)
            buffered, held = [], 0
    if buffered:
        yield b"".join(buffered)


def _route(path: str) -> tuple[str, str | None, str | None] | None:
    """(resource, namespace, name) of /api/v1/... or /apis/<group>/<version>/...,
    or None for a path that names no known resource."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and parts[1:2] == ["v1"]:
        version, rest = "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        return None
    namespace = name = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, resource = rest[1], rest[2]
        name = rest[3] if len(rest) == 4 else None
        if len(rest) > 4:
            return None
    elif len(rest) == 2 and rest[0] == "namespaces":
        resource, name = "namespaces", rest[1]
    elif len(rest) in (1, 2):
        resource = rest[0]
        name = rest[1] if len(rest) == 2 else None
    else:
        return None
    kind = KINDS.get(resource)
    if kind is None or kind.group_version != version or (namespace and not kind.namespaced):
        return None
    return resource, namespace, name


def _json(body: dict[str, Any], code: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=code, headers=headers)


def _expired(headers: dict[str, str], token: str) -> web.Response:
    body = status(
        410,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. "
        "You can start a new list without the continue parameter, or use the continue token "
        "in this response to retrieve the remainder of the results. Continuing with the "
        "provided token results in an inconsistent list - objects that were created, "
        "modified, or deleted between the time the first chunk was returned and now may "
        "show up in the list.",
    )
    if token:
        body["metadata"] = {"continue": token}
    return _json(body, 410, headers)


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _version(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.4",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "goVersion": "go1.24.5",
            "compiler": "gc",
            "platform": "linux/amd64",
        }
    )


# --- object builders ----------------------------------------------------------------------


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
