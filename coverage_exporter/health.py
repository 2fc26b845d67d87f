"""Bookkeeping that every data source keeps about itself.

Read by the sources, which write it, and by the exposition (metrics,
audit, report), which shows it: it lives beside both, not in either.

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
