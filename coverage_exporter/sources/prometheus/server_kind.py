"""What answers on a server's URL (model.objects KIND_*), told from its
answers, or declared where they cannot tell (docs/scrapers.md).

Read in the servers' sources:
- Prometheus (v0.316.0 `web/api/v1/api.go`) serves `/api/v1/status/flags`
  with every flag, `agent` among them: "true" when run with `--agent`.
  Agent mode serves the targets, scrape pools and configuration as a
  server does and refuses only the query API ("unavailable with
  Prometheus Agent"), which the exporter never asks.
- Thanos Query (v0.42.5 `pkg/api/api.go`) serves the same path with its
  own flags (`query.replica-label`, `endpoint`, ...).
- vmagent (v1.151.0 `app/vmagent/main.go`) does not: every path it lacks
  answers 400 "unsupported path requested". Its `/metrics` carries
  `vm_app_version{version="vmagent-..."}`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

import msgspec

from coverage_exporter import untrusted
from coverage_exporter.model.objects import (
    KIND_PROMETHEUS,
    KIND_PROMETHEUS_AGENT,
    KIND_THANOS_QUERY,
    KIND_VMAGENT,
    SERVER_KINDS,
)

if TYPE_CHECKING:
    from coverage_exporter.sources.prometheus.source import PrometheusEndpoint

    E = TypeVar("E", bound=PrometheusEndpoint)
else:
    E = TypeVar("E")

FLAGS_PATH = "/api/v1/status/flags"

NOT_SERVED = frozenset({400, 404, 405, 501})
"""What servers answer for an API path they do not have: Prometheus and
Thanos 404, vmagent 400 ("unsupported path requested"), proxies 405 or
501. Such a path is optional, never a failure of the server."""


class _FlagsResponse(msgspec.Struct):
    status: str
    data: dict[str, str] | None = None


_FLAGS = untrusted.Decoder(_FlagsResponse)
_VM_APP_VERSION = re.compile(r'^vm_app_version\{[^}\n]*\bversion="([a-z-]+?)-', re.MULTILINE)


def kind_from_flags(body: bytes) -> str | None:
    """From an answer of /api/v1/status/flags; None when it tells nothing."""
    try:
        answer = _FLAGS.decode(body)
    except msgspec.DecodeError:
        return None
    if answer.status != "success" or not answer.data:
        return None
    flags = answer.data
    if "query.replica-label" in flags:
        # Every flag is listed, set or not.
        return KIND_THANOS_QUERY
    if "agent" in flags:
        return KIND_PROMETHEUS_AGENT if flags["agent"] == "true" else KIND_PROMETHEUS
    if "storage.tsdb.path" in flags or "config.file" in flags:
        # Prometheus before the agent flag (< 2.32).
        return KIND_PROMETHEUS
    return None


def kind_from_metrics(text: str) -> str | None:
    """From a server's own /metrics: vmagent's build info metric."""
    m = _VM_APP_VERSION.search(text)
    if m and m.group(1) == "vmagent":
        return KIND_VMAGENT
    return None


def replica_labels(body: bytes) -> tuple[str, ...]:
    """Thanos Query's --query.replica-label values from its flags answer
    (kingpin prints a repeated flag as "[a b]")."""
    try:
        answer = _FLAGS.decode(body)
    except msgspec.DecodeError:
        return ()
    raw = (answer.data or {}).get("query.replica-label", "")
    return tuple(x for x in re.split(r"[\s,\[\]]+", raw) if x)


def parse_kind(text: str) -> str:
    """A declared kind (flag or fleet file); ValueError names the choices."""
    kind = text.strip().lower().replace("-", "_")
    if kind not in SERVER_KINDS:
        raise ValueError(f"unknown server kind {text!r}: one of {', '.join(SERVER_KINDS)}")
    return kind


def declare_kinds(endpoints: Sequence[E], specs: Iterable[str]) -> list[E]:
    """--prometheus-kind NAME=KIND given to the servers so named; ValueError
    for a name no server has or a kind that does not exist."""
    kinds: dict[str, str] = {}
    for spec in specs:
        name, sep, kind = spec.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--prometheus-kind {spec!r}: expected NAME=KIND")
        kinds[name.strip()] = parse_kind(kind)
    unknown = sorted(kinds.keys() - {e.name for e in endpoints})
    if unknown:
        raise ValueError(f"--prometheus-kind names no configured server: {', '.join(unknown)}")
    return [
        replace(e, declared=replace(e.declared, kind=kinds[e.name])) if e.name in kinds else e
        for e in endpoints
    ]
