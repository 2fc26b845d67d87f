"""The HTTP side of the Kubernetes source: one aiohttp session, plain GETs
for LIST pages and streamed GETs for WATCHes.

Every request is counted in the shared SourceHealth (requests, bytes after
decompression, errors). API `Warning` headers (the v1 Endpoints deprecation
arrives on every Endpoints request) are logged once per distinct text.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiohttp

from coverage_exporter import untrusted
from coverage_exporter.health import SourceHealth
from coverage_exporter.logs import fields
from coverage_exporter.sources import httpclient
from coverage_exporter.sources.errors import DEFAULT_LIMITS, BodyTooLarge, Limits
from coverage_exporter.sources.kubernetes.kubeconfig import KubeAuth
from coverage_exporter.sources.kubernetes.parse import decode_status

log = logging.getLogger("coverage_exporter.kubernetes")

USER_AGENT = "coverage-exporter/0.1"


class ApiError(Exception):
    """The apiserver answered with an error status (or a watch ERROR event)."""

    def __init__(self, code: int, message: str, reason: str = "", retry_after: float = 0.0) -> None:
        # The server's words are untrusted: escaped and cut before any log.
        message, reason = untrusted.printable(message), untrusted.printable(reason, 40)
        super().__init__(f"HTTP {code} {reason}: {message}".replace(" :", ":"))
        self.code = code
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        """Seconds the server asked us to wait (Retry-After), 0 if none."""


class GoneError(ApiError):
    """410: the resourceVersion or continue token is too old; relist."""


MAX_RETRY_AFTER_SECONDS = 60.0


def api_error(
    code: int, body: bytes | bytearray | memoryview, retry_after: str | None = None
) -> ApiError:
    status = decode_status(body)
    message = (status.message if status else None) or untrusted.printable(body)
    reason = (status.reason if status else None) or ""
    code = (status.code if status and status.code else None) or code
    cls = GoneError if code == 410 else ApiError
    return cls(code, message, reason, parse_retry_after(retry_after))


def parse_retry_after(value: str | None) -> float:
    """Retry-After in seconds (the apiserver sends delta-seconds), capped:
    a hostile 'Retry-After: 1e9' must not park a watch for good."""
    try:
        seconds = float(value) if value else 0.0
    except ValueError:
        return 0.0
    if not seconds > 0:  # also NaN
        return 0.0
    return min(seconds, MAX_RETRY_AFTER_SECONDS)


class ApiClient:
    def __init__(
        self,
        auth: KubeAuth,
        health: SourceHealth,
        *,
        request_timeout_seconds: float = 60.0,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._auth = auth
        self._limits = limits
        self._health = health
        self._request_timeout = request_timeout_seconds
        self._session: aiohttp.ClientSession | None = None
        self._warnings_seen: set[str] = set()

    async def open(self) -> None:
        if self._session is None:
            # limit=0: every watch holds one HTTP/1.1 connection for minutes;
            # aiohttp's default pool of 100 would block the 101st reflector.
            # TLS is given per request: the context changes when the
            # credentials rotate (KubeAuth).
            connector = aiohttp.TCPConnector(limit=0)
            # trust_env stays False: proxies come from the kubeconfig only.
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _headers(self, accept: str | None = None) -> dict[str, str]:
        token = await self._auth.authorization()
        headers = {"Authorization": token} if token else {}
        if accept:
            # Per request, not per session: one session serves full objects
            # to most reflectors and Tables to the pod scopes.
            headers["Accept"] = accept
        return headers

    def _note_warnings(self, response: aiohttp.ClientResponse) -> None:
        for warning in response.headers.getall("Warning", ()):
            if warning not in self._warnings_seen:
                self._warnings_seen.add(warning)
                log.warning(
                    "the Kubernetes API warns",
                    extra=fields(path=response.url.path, warning=untrusted.printable(warning)),
                )

    @property
    def max_body_bytes(self) -> int:
        """The largest answer read, once inflated."""
        return self._limits.max_body_bytes

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ApiClient used before open()")
        return self._session

    @asynccontextmanager
    async def _open(
        self,
        path: str,
        params: Mapping[str, str],
        limits: aiohttp.ClientTimeout,
        accept: str | None = None,
        encoded: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A GET whose status is 200; ApiError/GoneError otherwise. encoded:
        the body is read as sent (gzip asked for), not inflated."""
        self._health.requests_total += 1
        headers = await self._headers(accept)
        if encoded:
            # Only what the decoding worker inflates (aiohttp would also
            # offer deflate, and br where brotli is installed).
            headers["Accept-Encoding"] = "gzip"
        async with self.session.get(
            self._auth.host + path,
            params=params,
            headers=headers,
            timeout=limits,
            auto_decompress=not encoded,
            ssl=self._auth.ssl,
            server_hostname=self._auth.server_hostname or None,
            proxy=self._auth.proxy or None,
        ) as response:
            self._note_warnings(response)
            if response.status != 200:
                body = await httpclient.read_excerpt(response)
                self._health.response_bytes_total += len(body)
                if response.status == 401:
                    self._auth.invalidate()
                raise api_error(response.status, body, response.headers.get("Retry-After"))
            yield response

    async def get(
        self, path: str, params: Mapping[str, str], accept: str | None = None
    ) -> bytearray:
        """GET and return the body; ApiError/GoneError on error statuses.
        accept: the Accept header of this request (default: the session's
        application/json)."""
        timeout = aiohttp.ClientTimeout(total=self._request_timeout)
        async with self._open(path, params, timeout, accept) as response:
            body = await self._read_body(response)
            self._health.response_bytes_total += len(body)
            return body

    async def get_encoded(
        self, path: str, params: Mapping[str, str], accept: str | None = None
    ) -> tuple[bytearray, str]:
        """GET and return the body as sent and its Content-Encoding ("" for
        none), for a decoding worker to inflate (sources.node_decoder). The
        caller counts its bytes, once inflated, in the source's health."""
        timeout = aiohttp.ClientTimeout(total=self._request_timeout)
        async with self._open(path, params, timeout, accept, encoded=True) as response:
            body = await self._read_body(response)
            return body, response.headers.get("Content-Encoding", "").lower()

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytearray:
        """The body up to the limit; one that is larger counts as the limit."""
        try:
            return await httpclient.read_body(response, self._limits.max_body_bytes)
        except BodyTooLarge as exc:
            self._health.response_bytes_total += exc.limit
            raise

    async def post(self, path: str, body: bytes) -> bytearray:
        """POST a JSON body (a SubjectAccessReview); ApiError on error statuses."""
        self._health.requests_total += 1
        headers = {**(await self._headers()), "Content-Type": "application/json"}
        async with self.session.post(
            self._auth.host + path,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self._request_timeout),
            ssl=self._auth.ssl,
            server_hostname=self._auth.server_hostname or None,
            proxy=self._auth.proxy or None,
        ) as response:
            data = await self._read_body(response)
            self._health.response_bytes_total += len(data)
            if response.status not in (200, 201):
                raise api_error(response.status, data)
            return data

    @asynccontextmanager
    async def stream_lines(
        self,
        path: str,
        params: Mapping[str, str],
        read_timeout_seconds: float,
        accept: str | None = None,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open a streaming GET (a watch) and yield an iterator over its lines.

        sock_read bounds silence on the stream: the server sends at least a
        bookmark or closes the watch at timeoutSeconds, so longer silence
        means a dead connection.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._request_timeout, sock_read=read_timeout_seconds
        )
        async with self._open(path, params, timeout, accept) as response:
            yield self._lines(response)

    async def _lines(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        # Own framing instead of StreamReader.readline(): aiohttp refuses
        # lines above its buffer high-water mark (128 KiB), and one watch
        # event of a 1000-address Endpoints is larger than that.
        buffer = bytearray()
        scanned = 0
        limit = self._limits.max_body_bytes
        async for chunk in response.content.iter_any():
            self._health.response_bytes_total += len(chunk)
            buffer += chunk
            if len(buffer) > limit:
                # One event that never ends (or a stream without newlines).
                response.close()
                raise BodyTooLarge(limit)
            start = 0
            while (end := buffer.find(b"\n", scanned)) >= 0:
                line = bytes(buffer[start:end])
                start = scanned = end + 1
                if line.strip():
                    yield line
            if start:
                del buffer[:start]
            scanned = len(buffer)
        if buffer.strip():
            yield bytes(buffer)
