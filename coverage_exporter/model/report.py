"""One cycle's result: the coverage of every in-scope Service and the
cluster-wide counts, computed from the sources' snapshots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from coverage_exporter.model.coverage import (
    ServiceCoverage,
    node_index,
    service_coverage,
    targets_by_service,
)
from coverage_exporter.model.objects import (
    ClusterSnapshot,
    PrometheusSnapshot,
    ServiceKey,
    Target,
)
from coverage_exporter.model.scope import Scope, services_in_scope


@dataclass(slots=True)
class CoverageReport:
    services: Sequence[ServiceCoverage] = ()
    nodes_ready: int = 0
    nodes_not_ready: int = 0
    prometheus_known: bool = False
    unresolved: Sequence[str] = field(default_factory=list)
    """In-scope Services whose expected targets could not be determined."""

    @property
    def has_gaps(self) -> bool:
        return any(_service_has_gap(s) for s in self.services)


def _service_has_gap(s: ServiceCoverage) -> bool:
    if s.endpoints is not None and (s.endpoints.missing or s.endpoints.truncated):
        return True
    if s.endpoints is None and s.expected:
        return True
    if s.slices.missing or s.slices.mirroring_skipped:
        return True
    return any(p.missing for p in s.pools)


def build_report(
    scope: Scope,
    cluster: ClusterSnapshot,
    prometheus: Sequence[PrometheusSnapshot],
    prometheus_known: bool = True,
    grouped: Mapping[ServiceKey, Sequence[tuple[str, Target]]] | None = None,
) -> CoverageReport:
    """`prometheus` holds the last good snapshot of every Prometheus that
    ever answered; `prometheus_known` is False when none ever did, so that
    pool figures are withheld instead of reported as zero coverage.
    `grouped` is targets_by_service(prometheus), for a caller that has it."""
    if grouped is None:
        grouped = targets_by_service(prometheus)
    node_by_ip = node_index(cluster)
    services: list[ServiceCoverage] = []
    unresolved: list[str] = []
    for service in services_in_scope(scope, cluster, grouped):
        coverage = service_coverage(
            service, cluster, grouped.get(service.key, ()), node_by_ip, prometheus_known
        )
        if coverage is None:
            reason = (
                "selector-less, and its addresses are not Nodes"
                if service.selector is None
                else "its pods are not listed yet"
            )
            unresolved.append(f"{service.namespace}/{service.name}: {reason}")
        else:
            services.append(coverage)
    ready = sum(1 for n in cluster.nodes.values() if n.ready)
    return CoverageReport(
        services=services,
        nodes_ready=ready,
        nodes_not_ready=len(cluster.nodes) - ready,
        prometheus_known=prometheus_known,
        unresolved=unresolved,
    )
