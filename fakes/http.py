"""The fakes' HTTP plumbing: the log of what they were asked (one record a
request, in the order asked: the tests read it, and the benchmark serves
it at /_bench/requests to replay a cycle's requests and count their
bytes), and how they send a body (gzipped, as the real servers do, when
the client accepts it and the body is large enough)."""

from __future__ import annotations

import gzip
import time
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Request:
    method: str
    path: str
    """Without the query."""
    query: dict[str, str]
    api: str
    """"kubernetes" or "prometheus"."""
    server: str
    """"kubernetes", or the Prometheus server's name."""
    port: int
    target: str = ""
    """The path and query as sent (encoded), for a replay."""
    accept: str | None = None
    accept_encoding: str = ""
    authorization: str | None = None
    resource: str = ""
    """Kubernetes: the resource (nodes, pods, ...)."""
    verb: str = ""
    """Kubernetes: list, watch or get."""
    namespace: str | None = None
    t: float = field(default_factory=time.time)
    status: int = 0
    bytes: int = 0
    """Body bytes on the wire."""
    body_bytes: int = 0
    """Body bytes before compression."""
    duration: float = 0.0
    done: bool = False

    @property
    def params(self) -> dict[str, str]:
        return self.query

    @property
    def watch(self) -> bool:
        return self.verb == "watch"

    def as_dict(self) -> dict[str, Any]:
        """As /_bench/requests serves it (bench/run.py, bench/raw.py)."""
        return {
            "t": self.t,
            "method": self.method,
            "path": self.target or self.path,
            "api": self.api,
            "server": self.server,
            "port": self.port,
            "accept": self.accept or "",
            "accept_encoding": self.accept_encoding,
            "status": self.status,
            "bytes": self.bytes,
            "body_bytes": self.body_bytes,
            "watch": self.watch,
            "duration": self.duration,
            "done": self.done,
        }


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

KEY = web.RequestKey("fake request", Request)


def recorder(log: list[Request], api: str, server: str) -> Any:
    """aiohttp middleware: one Request in `log` per request, its status and
    duration filled in when answered; handlers find it as request[KEY]."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        entry = Request(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            api=api,
            server=server,
            port=sock[1] if sock else 0,
            target=request.raw_path,
            accept=request.headers.get("Accept"),
            accept_encoding=request.headers.get("Accept-Encoding", ""),
            authorization=request.headers.get("Authorization"),
        )
        log.append(entry)
        request[KEY] = entry
        started = time.perf_counter()
        try:
            response = await handler(request)
            entry.status = response.status
            body = response.body if isinstance(response, web.Response) else None
            if not entry.bytes and isinstance(body, bytes):
                # A whole answer (an error, a hand-made one): its size as sent.
                entry.bytes = entry.body_bytes = len(body)
            return response
        except web.HTTPException as exc:
            entry.status = exc.status
            raise
        finally:
            entry.duration = time.perf_counter() - started
            entry.done = True

    return record


CHUNK = 1 << 20


class Sender:
    """Writes bodies given as lists of byte chunks, gzipped (level 1, as
    kube-apiserver does) when the client accepts gzip and the body is over
    `gzip_above` bytes; a body sent under a cache key is compressed once
    (the benchmark's 100k-node pages), within `cache_bytes`."""

    def __init__(self, gzip_above: int | None, cache_bytes: int = 256 << 20) -> None:
        self.gzip_above = gzip_above
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[object, bytes] = OrderedDict()
        self._cached = 0

    def gzipped(self, key: object, chunks: Callable[[], list[bytes]]) -> bytes:
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)
        body = b"".join([*(packer.compress(c) for c in chunks()), packer.flush()])
        self._cache[key] = body
        self._cached += len(body)
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)
        return body

    def clear(self) -> None:
        self._cache.clear()
        self._cached = 0

    async def send(
        self,
        request: web.Request,
        chunks: list[bytes],
        cache_key: object = None,
        status: int = 200,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> web.StreamResponse:
        size = sum(map(len, chunks))
        out = dict(headers or {})
        parts = chunks
        accepts = "gzip" in request.headers.get("Accept-Encoding", "")
        if self.gzip_above is not None and accepts and size > self.gzip_above:
            body = (
                self.gzipped(cache_key, lambda: chunks)
                if cache_key is not None
                else gzip.compress(b"".join(chunks), 1)
            )
            parts = [body]
            out["Content-Encoding"] = "gzip"
            out["Vary"] = "Accept-Encoding"
        response = web.StreamResponse(status=status, headers=out)
        response.content_type = content_type
        response.content_length = sum(map(len, parts))
        await response.prepare(request)
        for part in parts:
            view = memoryview(part)
            for offset in range(0, len(view), CHUNK):
                await response.write(view[offset : offset + CHUNK])
        await response.write_eof()
        entry = request.get(KEY)
        if entry is not None:
            entry.bytes, entry.body_bytes = response.content_length or 0, size
        return response
