"""Bookkeeping that every data source keeps about itself.

node_exporter's rule, taken here: "no data" is kept apart from "failed".
A source that fails keeps its last good data elsewhere; this records that
it failed, when it last succeeded and what it cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from coverage_exporter import untrusted

SOURCE_KUBERNETES = "kubernetes"
SOURCE_PROMETHEUS = "prometheus"


class SourceError(Exception):
    """A source could not deliver data; the message says why, for the log.

    The message is made printable here, once for every source: it often
    quotes the server (an error body, a pool name from its answer), and it
    reaches log lines, the audit table and its JSON."""

    def __init__(self, message: str = "") -> None:
        super().__init__(untrusted.printable(message, ERROR_MESSAGE_CHARS))


ERROR_MESSAGE_CHARS = 1000


@dataclass(slots=True)
class SourceHealth:
    source: str
    """SOURCE_KUBERNETES or SOURCE_PROMETHEUS."""
    prometheus: str = ""
    """The Prometheus's name; empty for Kubernetes."""
    up: bool = False
    last_error: str = ""
    duration_seconds: float = 0.0
    last_success_timestamp: float = 0.0
    errors_total: int = 0
    requests_total: int = 0
    response_bytes_total: int = 0
    pod_watches: int = 0
    """Kubernetes only: pod watches running (one per pod scope)."""
    pod_scopes_unwatched: int = 0
    """Kubernetes only: pod scopes left out by the pod watch cap."""

    def record_request(self, response_bytes: int) -> None:
        self.requests_total += 1
        self.response_bytes_total += response_bytes

    def record_error(self, message: str) -> None:
        self.errors_total += 1
        self.last_error = untrusted.printable(message, ERROR_MESSAGE_CHARS)

    def mark(self, up: bool, duration_seconds: float, error: str = "") -> None:
        """Close one collection of this source."""
        self.up = up
        self.duration_seconds = duration_seconds
        if up:
            self.last_success_timestamp = time.time()
            self.last_error = ""
        elif error:
            self.last_error = untrusted.printable(error, ERROR_MESSAGE_CHARS)


# --- how much one answer may cost (shared by the HTTP sources and the
# target decoding worker, which must not import aiohttp) ---------------------

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one answer may cost; exceeding a limit is a source error.

    Sizes count bytes AFTER decompression: a 260 KB gzip body can inflate
    to gigabytes, so the compressed size bounds nothing.
    """

    max_body_bytes: int = 256 * MiB
    """One body held whole: a LIST page, one watch event, scrape_pools,
    /metrics, an error answer. A page of 500 Endpoints objects of 1000
    addresses each is ~80 MB."""
    max_stream_bytes: int = 8192 * MiB
    """One target list decoded while it arrives (memory stays at a few
    pieces of 4 MB): 100k targets are ~500 MB, so the cap is generous."""

    def __post_init__(self) -> None:
        if self.max_body_bytes <= 0 or self.max_stream_bytes <= 0:
            raise ValueError("response size limits must be positive")


DEFAULT_LIMITS = Limits()


class BodyTooLarge(SourceError):
    """An answer passed its size limit; it was cut off, not read further."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"answer larger than {limit} bytes (after decompression); cut off")
        self.limit = limit

    def __reduce__(self) -> tuple[type[BodyTooLarge], tuple[int]]:
        # Raised in the target decoding worker too, and pickled back.
        return (BodyTooLarge, (self.limit,))
