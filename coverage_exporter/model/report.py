"""One cycle's result: the coverage of every in-scope Service and the
cluster-wide counts, computed from the sources' snapshots."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from coverage_exporter.model.coverage import (
    ServiceCoverage,
    node_index,
    service_coverage,
    targets_by_service,
)
from coverage_exporter.model.fleet import Fleet, ServerState
from coverage_exporter.model.gaps import Gap, service_gaps
from coverage_exporter.model.intent import job_selects
from coverage_exporter.model.objects import (
    ClusterSnapshot,
    PrometheusSnapshot,
    Service,
    ServiceKey,
    Target,
)
from coverage_exporter.model.scope import Scope, services_in_scope

Remembered = Mapping[str, Mapping[ServiceKey, Mapping[str, str]]]
"""server -> Service -> {scrape pool: role} that discovered targets of the
Service in an earlier cycle (see Collector): a pool whose targets vanish
during a run stays meant for the Service."""


@dataclass(frozen=True, slots=True)
class Unresolved:
    namespace: str
    service: str
    reason: str


@dataclass(slots=True)
class CoverageReport:
    services: Sequence[ServiceCoverage] = ()
    nodes_ready: int = 0
    nodes_not_ready: int = 0
    fleet: Fleet = field(default_factory=Fleet)
    unresolved: Sequence[Unresolved] = field(default_factory=list)
    """In-scope Services whose expected targets could not be determined."""

    @property
    def gaps(self) -> list[Gap]:
        return [g for s in self.services for g in service_gaps(s)]

    @property
    def has_gaps(self) -> bool:
        return any(service_gaps(s) for s in self.services)

    @property
    def unknown_pools(self) -> int:
        return sum(1 for s in self.services for p in s.pools if not p.known)


def meant_pools(
    service: Service,
    prometheus: Sequence[PrometheusSnapshot],
    remembered: Remembered,
) -> dict[str, dict[str, str]]:
    """server -> {pool: role} of the pools meant to scrape the Service: the
    jobs of its configuration that select it, and the pools that discovered
    it earlier and are still configured (the role then comes from the
    configuration when it has the job)."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for snap in prometheus:
        jobs = {j.name: j for j in snap.jobs or ()}
        for name, job in jobs.items():
            if job_selects(job, service):
                out[snap.name][name] = job.role
        for pool, role in remembered.get(snap.name, {}).get(service.key, {}).items():
            out[snap.name].setdefault(pool, jobs[pool].role if pool in jobs else role)
    return out


def services_meant(
    snapshot: ClusterSnapshot, prometheus: Sequence[PrometheusSnapshot]
) -> set[ServiceKey]:
    """Services some configured job is meant to scrape."""
    jobs = [j for p in prometheus for j in p.jobs or ()]
    if not jobs:
        return set()
    return {key for key, svc in snapshot.services.items() if any(job_selects(j, svc) for j in jobs)}


def build_report(
    scope: Scope,
    cluster: ClusterSnapshot,
    prometheus: Sequence[PrometheusSnapshot],
    servers: Sequence[ServerState] | None = None,
    grouped: Mapping[ServiceKey, Sequence[tuple[str, Target]]] | None = None,
    remembered: Remembered | None = None,
) -> CoverageReport:
    """`prometheus` holds the last good snapshot of every Prometheus that
    ever answered; `servers` says which are still known (answered within
    the expiry bound) and where each stands in its fleet; None: every
    snapshot is known and judged on its own. `grouped` is
    targets_by_service(prometheus), for a caller that has it."""
    if grouped is None:
        grouped = targets_by_service(prometheus)
    if servers is None:
        servers = [ServerState(p.name, p.server_identity, True) for p in prometheus]
    remembered = remembered or {}
    fleet = Fleet.build(servers)
    node_by_ip = node_index(cluster)
    services: list[ServiceCoverage] = []
    unresolved: list[Unresolved] = []
    discovered = set(grouped) | services_meant(cluster, prometheus)
    for server_pools in remembered.values():
        discovered.update(server_pools)
    for service in services_in_scope(scope, cluster, discovered):
        coverage = service_coverage(
            service,
            cluster,
            grouped.get(service.key, ()),
            node_by_ip,
            fleet,
            meant_pools(service, prometheus, remembered),
        )
        if coverage is None:
            reason = (
                "selector-less, with no addresses in Endpoints or EndpointSlices"
                if service.selector is None
                else "its pods are not listed yet"
            )
            unresolved.append(Unresolved(service.namespace, service.name, reason))
        else:
            services.append(coverage)
    ready = sum(1 for n in cluster.nodes.values() if n.ready)
    return CoverageReport(
        services=services,
        nodes_ready=ready,
        nodes_not_ready=len(cluster.nodes) - ready,
        fleet=fleet,
        unresolved=unresolved,
    )
