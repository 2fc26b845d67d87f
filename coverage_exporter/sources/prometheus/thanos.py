"""Thanos Query: the targets of every Prometheus behind it, each judged as
the server it is, where Query's answer says which one a target came from.

What Query answers (thanos v0.42.5: `pkg/api/query/v1.go`
NewTargetsHandler, `pkg/targets/{proxy,targets,prometheus}.go`,
`pkg/query/endpointset.go`):
- `/api/v1/targets` fans out to every store that serves the targets API
  and is queryable (healthy at its last Info check, run every 5 s, or
  given with `--endpoint-strict`). Each sidecar adds its Prometheus's
  external labels to both `discoveredLabels` and `labels`; an external
  label wins over a target label of the same name.
- Query then removes every `--query.replica-label` from both label sets
  and merges the targets that are equal after that: with replica labels
  set, its answer cannot say which replica a target came from, and the
  union of the replicas is not the coverage of each.
- Only `state` is read from the request. Whether a store that fails turns
  into a warning (its targets simply absent) or fails the whole answer is
  Query's `--target.partial-response` (default on), not the request's
  `partial_response`. A store Query already found unhealthy is not asked
  at all: no warning, its targets are absent. `/api/v1/stores` lists it,
  with its `lastError`, until `--store.unhealthy-timeout` (5 m).

So the stores are read first: their external label sets name the
servers behind Query, and each target goes to the store whose label set
its labels carry. A store whose targets cannot be told apart from
another's, that Query marks unhealthy, that left no target in an answer
with warnings, or that vanished from the stores, is a server whose
coverage is unknown, never covered and never missing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from coverage_exporter import untrusted
from coverage_exporter.flagtypes import format_seconds
from coverage_exporter.logs import fields
from coverage_exporter.model.objects import KIND_THANOS_QUERY, PrometheusSnapshot, Target
from coverage_exporter.model.topology import identify
from coverage_exporter.sources.errors import DEFAULT_LIMITS, SourceError
from coverage_exporter.sources.prometheus.targets_json import (
    STREAM_PIECE_BYTES,
    TargetStream,
    _DiscoveredLabels,
    _status_error,
    _to_target,
)

log = logging.getLogger("coverage_exporter.sources.prometheus")

STORES_PATH = "/api/v1/stores"
TARGET_COMPONENTS = frozenset({"sidecar", "query"})
"""Store kinds that serve the targets API (a sidecar, or a Query behind
this one); store gateways, rulers and receivers hold no targets."""
FORGET_AFTER_SECONDS = 3600.0
"""A store gone from Query's stores stays a server of unknown coverage
this long: Query drops an unhealthy store after 5 minutes, and a replica
that fell silent must not vanish from the fleet with it. A replica that
was scaled away is forgotten after that."""

LabelSet = tuple[tuple[str, str], ...]
"""A store's external labels, sorted by name."""


@dataclass(frozen=True, slots=True)
class Store:
    address: str
    labels: LabelSet
    error: str = ""
    """Query's lastError for it; "" while healthy."""


class _StoreStatus(msgspec.Struct):
    name: str = ""
    last_error: str | None = msgspec.field(name="lastError", default=None)
    label_sets: list[dict[str, str]] | None = msgspec.field(name="labelSets", default=None)


class _StoresResponse(msgspec.Struct):
    status: str
    data: dict[str, list[_StoreStatus]] | None = None
    error_type: str = msgspec.field(name="errorType", default="")
    error: str = ""


_STORES = untrusted.Decoder(_StoresResponse)


def parse_stores(body: bytes) -> list[Store]:
    """One Store per external label set of each store that serves targets."""
    try:
        answer = _STORES.decode(body)
    except msgspec.DecodeError as exc:
        raise SourceError(f"undecodable stores answer: {exc}") from None
    if answer.status != "success" or answer.data is None:
        raise SourceError(_status_error(answer.status, answer.error_type, answer.error))
    out = []
    for component, statuses in answer.data.items():
        if component not in TARGET_COMPONENTS:
            continue
        for status in statuses:
            error = untrusted.printable(status.last_error or "")
            for label_set in status.label_sets or ():
                out.append(Store(status.name, tuple(sorted(label_set.items())), error))
    return out


class _LabelledTarget(msgspec.Struct, gc=False):
    discovered: _DiscoveredLabels | None = msgspec.field(name="discoveredLabels", default=None)
    labels: dict[str, str] | None = None
    scrape_pool: str | None = msgspec.field(name="scrapePool", default=None)
    health: str | None = None


class _LabelledData(msgspec.Struct, gc=False):
    active: list[_LabelledTarget] | None = msgspec.field(name="activeTargets")


class _LabelledResponse(msgspec.Struct, gc=False):
    status: str
    data: _LabelledData | None = None
    error_type: str = msgspec.field(name="errorType", default="")
    error: str = ""
    warnings: list[str] | None = None


class StoreTargetStream(TargetStream):
    """Query's answer, each target filed under the values its labels carry
    for the stores' external label names. The labels are decoded whole,
    piece by piece as the answer arrives, and dropped with the piece."""

    _list_decoder = untrusted.Decoder(list[_LabelledTarget])
    _envelope_decoder = untrusted.Decoder(_LabelledResponse)

    def __init__(
        self, label_names: Iterable[str], max_buffered: int = DEFAULT_LIMITS.max_body_bytes
    ) -> None:
        super().__init__(None, STREAM_PIECE_BYTES, max_buffered)
        self._names = sorted(set(label_names))
        self.by_labels: dict[LabelSet, dict[str, list[Target]]] = {}
        self.warnings: list[str] = []

    def _envelope(self, response: _LabelledResponse) -> list:  # type: ignore[override]
        if response.status != "success":
            raise SourceError(_status_error(response.status, response.error_type, response.error))
        if response.data is None:
            raise SourceError("status 'success' without data")
        self.warnings = [untrusted.printable(w) for w in response.warnings or ()]
        return response.data.active or []

    def _add(self, raw_targets: list) -> None:
        names = self._names
        self._total += len(raw_targets)
        for raw in raw_targets:
            found, pool = raw.discovered, raw.scrape_pool
            if found is None or found.address is None or pool is None:
                self._malformed += 1
                continue
            labels = raw.labels or {}
            key = tuple((n, labels[n]) for n in names if n in labels)
            pool = sys.intern(pool)
            kept = self.by_labels.setdefault(key, {}).setdefault(pool, [])
            target = _to_target(found, found.address, raw.health, pool)
            if target is not None:
                kept.append(target)


class StoreMembers:
    """The stores one Thanos Query has shown, as servers of the fleet."""

    def __init__(self, query: str, forget_after: float = FORGET_AFTER_SECONDS) -> None:
        self._query = query
        self._forget_after = forget_after
        self._seen: dict[LabelSet, float] = {}
        """Each store's label set -> when it was last among the stores."""
        self._last: dict[LabelSet, dict[str, list[Target]]] = {}
        """Each store's targets when they were last told apart: a store
        that drops out keeps listing its pools (as a Prometheus that stops
        answering keeps its last answer), its coverage unknown."""

    def snapshots(
        self,
        stores: Sequence[Store],
        by_labels: Mapping[LabelSet, Mapping[str, Sequence[Target]]],
        warnings: Sequence[str],
        now: float,
    ) -> list[PrometheusSnapshot]:
        """One snapshot per store, known or remembered, sorted by name."""
        listed = {s.labels: s for s in stores}
        for labels in listed:
            self._seen[labels] = now
        for labels, seen in list(self._seen.items()):
            if labels not in listed and now - seen > self._forget_after:
                log.info(
                    "forgetting a store gone from Query's list",
                    extra=fields(
                        server=self._query,
                        store=_render(labels),
                        gone_for=format_seconds(now - seen),
                    ),
                )
                del self._seen[labels]
                self._last.pop(labels, None)
        healthy = [labels for labels, s in listed.items() if not s.error]
        held: dict[LabelSet, dict[str, list[Target]]] = {labels: {} for labels in self._seen}
        merged: set[LabelSet] = set()
        unmatched = 0
        for key, pools in by_labels.items():
            owners = _owners(key, listed, healthy)
            if not owners:
                unmatched += sum(map(len, pools.values()))
                continue
            if len(owners) > 1:
                merged.update(owners)
            for owner in owners:
                for pool, targets in pools.items():
                    held[owner].setdefault(pool, []).extend(targets)
        if unmatched:
            log.warning(
                "targets carry the external labels of no store Query lists; left out",
                extra=fields(server=self._query, targets=unmatched),
            )
        out = []
        for labels, pools in held.items():
            why = _why_unknown(labels, listed.get(labels), merged, bool(pools), warnings)
            if not why:
                self._last[labels] = pools
            elif not pools:
                pools = self._last.get(labels, {})
            name = f"{self._query}/{_render(labels)}"
            out.append(
                PrometheusSnapshot(
                    name=name,
                    targets=tuple(t for targets in pools.values() for t in targets),
                    identity=identify(name, dict(labels), (), None, KIND_THANOS_QUERY),
                    jobs=None,
                    pools=tuple(pools),
                    pools_listed=False,
                    unknown_reason=why,
                )
            )
        out.sort(key=lambda s: s.name)
        return out


def _owners(
    key: LabelSet, listed: Mapping[LabelSet, Store], healthy: Sequence[LabelSet]
) -> list[LabelSet]:
    """The stores a target with these external label values can have come
    from: the one whose label set it carries whole, else (Query removed
    its replica labels) every healthy store whose label set holds it."""
    if key in listed:
        return [key]
    values = set(key)
    return [labels for labels in healthy if values <= set(labels)]


def _why_unknown(
    labels: LabelSet,
    store: Store | None,
    merged: set[LabelSet],
    has_targets: bool,
    warnings: Sequence[str],
) -> str:
    if labels in merged:
        return (
            "Thanos Query merges this replica's targets with another's (--query.replica-label): "
            "its answer cannot say which replica a target came from; point the exporter at "
            "each Prometheus instead"
        )
    if store is None:
        return "no longer among Thanos Query's stores"
    if store.error:
        return f"Thanos Query leaves this store out of its answers: {store.error[:200]}"
    if not has_targets and warnings:
        return f"Thanos Query's answer was partial ({'; '.join(warnings)[:200]})"
    return ""


def _render(labels: LabelSet) -> str:
    return ",".join(f"{k}={v}" for k, v in labels) or "{}"


def label_names(stores: Iterable[Store]) -> set[str]:
    return {name for s in stores for name, _ in s.labels}
