"""Bookkeeping that every data source keeps about itself.

node_exporter's rule, taken here: "no data" is kept apart from "failed".
A source that fails keeps its last good data elsewhere; this records that
it failed, when it last succeeded and what it cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

SOURCE_KUBERNETES = "kubernetes"
SOURCE_PROMETHEUS = "prometheus"


class SourceError(Exception):
    """A source could not deliver data; the message says why, for the log."""


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

    def record_request(self, response_bytes: int) -> None:
        self.requests_total += 1
        self.response_bytes_total += response_bytes

    def record_error(self, message: str) -> None:
        self.errors_total += 1
        self.last_error = message

    def mark(self, up: bool, duration_seconds: float, error: str = "") -> None:
        """Close one collection of this source."""
        self.up = up
        self.duration_seconds = duration_seconds
        if up:
            self.last_success_timestamp = time.time()
            self.last_error = ""
        elif error:
            self.last_error = error
