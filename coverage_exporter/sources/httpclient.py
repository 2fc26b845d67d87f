"""HTTP plumbing shared by the sources: TLS contexts, credentials, sessions.

Generic on purpose: nothing here knows about Prometheus or Kubernetes.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator

import aiohttp

from coverage_exporter import untrusted
from coverage_exporter.logs import fields
from coverage_exporter.sources.errors import BodyTooLarge, MiB, SourceError

log = logging.getLogger("coverage_exporter.tls")

try:
    # Both kube-apiserver and Prometheus gzip their answers, and inflating
    # them was a quarter of the exporter's CPU at 100k nodes (about 4 GB of
    # JSON in the first cycle). ISA-L's inflate is ~2.4x faster than zlib's
    # on that JSON (bench/analysis.md); aiohttp supports it as a backend.
    from isal import isal_zlib

    aiohttp.set_zlib_backend(isal_zlib)
except ImportError:  # no wheel for this platform: zlib, slower but the same
    pass


async def iter_body(response: aiohttp.ClientResponse, limit: int) -> AsyncIterator[bytes]:
    """The (decompressed) body chunk by chunk; BodyTooLarge past `limit`."""
    received = 0
    # iter_chunked inflates at most one network read at a time, so a gzip
    # bomb is stopped a chunk past the limit, not after it has inflated.
    async for chunk in response.content.iter_chunked(1 * MiB):
        received += len(chunk)
        if received > limit:
            response.close()
            raise BodyTooLarge(limit)
        yield chunk


async def read_excerpt(response: aiohttp.ClientResponse, limit: int = 64 << 10) -> bytes:
    """At most `limit` bytes of a body (an error answer: only its start is
    ever shown), then the connection is dropped rather than drained."""
    parts = bytearray()
    async for chunk in response.content.iter_chunked(limit):
        parts += chunk
        if len(parts) >= limit:
            response.close()
            break
    return bytes(parts[:limit])


async def read_body(response: aiohttp.ClientResponse, limit: int) -> bytearray:
    """The whole (decompressed) body; BodyTooLarge past `limit`. Content-Length
    is checked first so that an honest big answer is refused unread. The
    bytearray it was read into, not a bytes copy of it: that copy held an
    answer near the limit twice (a 250 MiB Node page took 503 MiB)."""
    if (
        response.content_length is not None
        and response.content_length > limit
        and (not response.headers.get("Content-Encoding"))
    ):
        response.close()
        raise BodyTooLarge(limit)
    parts = bytearray()
    async for chunk in iter_body(response, limit):
        parts += chunk
    return parts


def ssl_context(
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    insecure_skip_verify: bool = False,
) -> ssl.SSLContext:
    """A client TLS context; verification stays on unless explicitly skipped.

    Built once per source: loading CA bundles is blocking file I/O.
    """
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
        if insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert_file:
            ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise SourceError(f"cannot build TLS context: {exc}") from exc
    return ctx


def _fingerprint(paths: tuple[str, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class ReloadingTLS:
    """A client TLS context that follows its files: when the CA bundle or
    the client certificate/key change on disk (cert-manager, a Secret
    volume's atomic symlink swap), the next request gets a context built
    from the new files. A half-written rotation that does not load keeps
    the previous context and is reported once per change.

    Connections already open keep the context they were made with; aiohttp
    keys its pool on the context, so new connections use the new one.
    """

    def __init__(
        self,
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        insecure_skip_verify: bool = False,
        check_seconds: float = 10.0,
    ) -> None:
        self._build = functools.partial(
            ssl_context,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            insecure_skip_verify=insecure_skip_verify,
        )
        self._paths = tuple(p for p in (ca_file, cert_file, key_file) if p)
        self._check_seconds = check_seconds
        self._checked = time.monotonic()
        self._stamp = _fingerprint(self._paths)
        # Files are checked now, so that a bad CA path fails at start-up;
        # a context without files (loading the system CAs costs ~25 ms,
        # once per server) is built only when a first https request needs it.
        self._context: ssl.SSLContext | None = self._build() if self._paths else None
        self.reloads_total = 0

    def context(self) -> ssl.SSLContext:
        if not self._paths:
            if self._context is None:
                self._context = self._build()
            return self._context
        now = time.monotonic()
        if now - self._checked < self._check_seconds:
            assert self._context is not None  # built in __init__ when there are files
            return self._context
        self._checked = now
        stamp = _fingerprint(self._paths)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._context = self._build()
            except SourceError as exc:
                log.warning(
                    "TLS files changed but do not load; keeping the old ones", extra=fields(err=exc)
                )
            else:
                self.reloads_total += 1
                log.info("TLS files changed: reloaded", extra=fields(files=",".join(self._paths)))
        assert self._context is not None  # built in __init__ when there are files
        return self._context


def read_secret_file(path: str) -> str:
    """A token or password from a file, read again at every call so that a
    rotated secret is picked up; surrounding whitespace is dropped, as
    Prometheus does for its own credentials files."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read secret file {path}: {exc}") from exc


def auth_headers(
    *,
    bearer_token_file: str | None = None,
    basic_auth_user: str | None = None,
    basic_auth_password_file: str | None = None,
) -> dict[str, str]:
    """The Authorization header for one round of requests (files re-read)."""
    if bearer_token_file:
        return {"Authorization": f"Bearer {read_secret_file(bearer_token_file)}"}
    if basic_auth_user is not None:
        password = read_secret_file(basic_auth_password_file) if basic_auth_password_file else ""
        # UTF-8 like Go's SetBasicAuth (aiohttp's BasicAuth defaults to latin-1).
        credentials = f"{basic_auth_user}:{password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(credentials).decode("ascii")}
    return {}


def new_session(*, connection_limit: int = 8) -> aiohttp.ClientSession:
    """A session for one source. Must be called inside a running event loop.

    trust_env stays off: proxy variables meant for other tools must not
    silently reroute requests that carry credentials.
    """
    connector = aiohttp.TCPConnector(limit=connection_limit)
    return aiohttp.ClientSession(connector=connector, trust_env=False)


def describe(exc: BaseException) -> str:
    """A transport failure in words, as kubectl gives them ("dial tcp
    127.0.0.1:6443: connect: connection refused"): what could not be
    reached and why, never aiohttp's repr of an SSL context."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "connection lost mid-response"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection before answering"
    if isinstance(exc, aiohttp.ClientConnectorError):
        where = f"{exc.host}:{exc.port}"
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return f"TLS certificate of {where} not accepted: {_reason(exc.certificate_error)}"
        if isinstance(exc, aiohttp.ClientConnectorSSLError):
            return f"TLS handshake with {where} failed: {_reason(exc.os_error)}"
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            return f"cannot connect to the proxy {where}: {_reason(exc.os_error)}"
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return f"cannot resolve {exc.host}: {_reason(exc.os_error)}"
        return f"cannot connect to {where}: {_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return f"the proxy refused: HTTP {exc.status} {exc.message}"
    return untrusted.printable(str(exc)) or type(exc).__name__


def _reason(error: BaseException) -> str:
    """The OS's words for an errno (connection refused), else the message."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return error.verify_message or str(error)
    if isinstance(error, OSError) and error.errno and error.errno > 0:
        return os.strerror(error.errno).lower()
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return untrusted.printable(str(error)) or type(error).__name__
