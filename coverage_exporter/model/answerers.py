"""Whether one URL is answered by one Prometheus, or by several behind it.

The Prometheus Operator's headless Service `prometheus-operated` (the
chart's old default URL) and any load-balanced Service put every replica and
shard of a namespace behind one name. Requests then land on different pods:
the exporter would compare one pod's targets with another's configuration
and judge a random union of shards as one server. kube-proxy balances per
TCP connection, so even one cycle's requests (a few connections at once) may
come from different pods.

What tells two servers apart, read on each answer:
- the process: `startTime` (nanoseconds) and, from Prometheus 3.x, the
  `hostname` (the pod's name) of `/api/v1/status/runtimeinfo`;
- the loaded configuration's external labels (the Operator's
  `prometheus_replica` differs per pod) and its hashmod shard.

Two different values within one cycle mean several servers. Across cycles a
new value alone is a restart or a reload; a value seen before coming back
after another one means the URL alternates between servers. Once seen, the
verdict holds until `clear_after` cycles in a row show one server only.
Pure: the tokens come from sources.prometheus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_CLEAR_AFTER = 10
"""Cycles in a row with one server before a URL is trusted again: one
cycle whose few connections all reached one pod proves little."""


@dataclass(slots=True)
class _Track:
    """One kind of token (process, or external labels) of one URL."""

    history: list[str] = field(default_factory=list)
    """Distinct tokens in the order they were last seen, the latest last."""

    def observe(self, tokens: Sequence[str]) -> tuple[str, str] | None:
        """Two tokens that cannot come from one server, or None."""
        distinct = list(dict.fromkeys(t for t in tokens if t))
        if len(distinct) > 1:
            return distinct[0], distinct[1]
        if not distinct:
            return None
        token = distinct[0]
        found = None
        if token in self.history and self.history[-1] != token:
            found = (self.history[-1], token)
            self.history.remove(token)
        self.history.append(token)
        del self.history[:-8]
        return found


@dataclass(slots=True)
class AnswererCheck:
    """Follows who answers one URL, cycle after cycle."""

    clear_after: int = DEFAULT_CLEAR_AFTER
    reason: str = ""
    """Why the URL is held to be several servers; empty while it is not."""
    _processes: _Track = field(default_factory=_Track)
    _labels: _Track = field(default_factory=_Track)
    _clean: int = 0

    def observe(self, processes: Sequence[str], labels: Sequence[str]) -> str:
        """One cycle's tokens; returns `reason` (empty: one server)."""
        seen = self._processes.observe(processes) or self._labels.observe(labels)
        if seen is not None:
            self.reason = (
                f"answers come from different servers ({seen[0]}; then {seen[1]}): the URL is in "
                "front of several Prometheus pods (a Service such as prometheus-operated), so "
                "it cannot be judged as one server. Give each server its own URL, or leave "
                "it out and let discovery read every pod"
            )
            self._clean = 0
        elif self.reason:
            self._clean += 1
            if self._clean >= self.clear_after:
                self.reason = ""
                self._clean = 0
        return self.reason


def process_token(start_time: str, hostname: str = "") -> str:
    """What tells one Prometheus process from another."""
    return f"host {hostname} started {start_time}" if hostname else f"started {start_time}"


def labels_token(external_labels: dict[str, str], shard: tuple[int, int] | None) -> str:
    """What tells one server's configuration from another's."""
    text = ",".join(f"{k}={v}" for k, v in sorted(external_labels.items()))
    if shard is not None:
        text += f" shard {shard[0]} of {shard[1]}"
    return f"external labels {{{text}}}" if text else ""
