"""One cycle's result: the coverage of every in-scope Service and the
cluster-wide counts, computed from the sources' snapshots."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from coverage_exporter.model.controllers import RUNNING, Controllers, controllers
from coverage_exporter.model.coverage import (
    ServiceCoverage,
    ServiceTargets,
    node_index,
    service_coverage,
    targets_by_service,
)
from coverage_exporter.model.fleet import Fleet, ServerState
from coverage_exporter.model.intent import job_selects
from coverage_exporter.model.objects import (
    ClusterSnapshot,
    PrometheusSnapshot,
    ScrapeJob,
    Service,
    ServiceKey,
    each_server,
)
from coverage_exporter.model.scope import Scope, services_in_scope
from coverage_exporter.model.stages import Stage, service_gaps
from coverage_exporter.model.unreached import Unreached, unreached_nodes

Remembered = Mapping[str, Mapping[ServiceKey, Mapping[str, str]]]
"""server -> Service -> {scrape pool: role} that discovered targets of the
Service in an earlier cycle (see CycleRunner): a pool whose targets vanish
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
    unreached: Sequence[Unreached] = ()
    """Nodes a node-level DaemonSet behind a compared Service never
    reaches, kept off by a taint (model.unreached): findings, not gaps."""
    controllers: Controllers = RUNNING
    """What the cluster's objects say of the Endpoints and mirroring
    controllers (model.controllers)."""

    @property
    def gaps(self) -> list[Stage]:
        return [g for s in self.services for g in service_gaps(s)]

    @property
    def has_gaps(self) -> bool:
        return any(service_gaps(s) for s in self.services)

    @property
    def unknown_pools(self) -> int:
        return sum(1 for s in self.services for p in s.pools if not p.known)


class SelectionMemo:
    """job_selects results kept between reports while neither the job nor
    the Service object changed: the caches hand out the same objects while
    nothing changed, and every Service times every job is too many regex
    evaluations to redo each cycle in a large cluster. Keyed by identity,
    holding the objects so that an id cannot be reused while cached."""

    def __init__(self) -> None:
        self._previous: dict[tuple[int, int], tuple[ScrapeJob, Service, bool]] = {}
        self._current: dict[tuple[int, int], tuple[ScrapeJob, Service, bool]] = {}

    def selects(self, job: ScrapeJob, service: Service) -> bool:
        key = (id(job), id(service))
        hit = self._current.get(key) or self._previous.get(key)
        if hit is None or hit[0] is not job or hit[1] is not service:
            hit = (job, service, job_selects(job, service))
        self._current[key] = hit
        return hit[2]

    def rotate(self) -> None:
        """After a report: forget what it did not use."""
        self._previous, self._current = self._current, {}


def meant_pools(
    service: Service,
    prometheus: Sequence[PrometheusSnapshot],
    remembered: Remembered,
    memo: SelectionMemo | None = None,
) -> dict[str, dict[str, str]]:
    """server -> {pool: role} of the pools meant to scrape the Service: the
    jobs of its configuration that select it, and the pools that discovered
    it earlier and are still configured (the role then comes from the
    configuration when it has the job)."""
    selects = memo.selects if memo is not None else job_selects
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for snap in prometheus:
        jobs = {j.name: j for j in snap.jobs or ()}
        for name, job in jobs.items():
            if selects(job, service):
                out[snap.name][name] = job.role
        for pool, role in remembered.get(snap.name, {}).get(service.key, {}).items():
            out[snap.name].setdefault(pool, jobs[pool].role if pool in jobs else role)
    return out


def services_meant(
    snapshot: ClusterSnapshot,
    prometheus: Sequence[PrometheusSnapshot],
    memo: SelectionMemo | None = None,
) -> set[ServiceKey]:
    """Services some configured job is meant to scrape."""
    jobs = {
        (j.name, j.role, j.namespaces, j.relabel, j.service_label_selectors): j
        for p in prometheus
        for j in p.jobs or ()
    }
    if not jobs:
        return set()
    selects = memo.selects if memo is not None else job_selects
    # Most jobs are confined to a few namespaces (an Operator job to its
    # ServiceMonitor's): look only at the Services there.
    by_namespace: dict[str, list[tuple[ServiceKey, Service]]] = defaultdict(list)
    for key, svc in snapshot.services.items():
        by_namespace[key[0]].append((key, svc))
    every = list(snapshot.services.items())
    out: set[ServiceKey] = set()
    for job in jobs.values():
        candidates = (
            every
            if job.namespaces is None
            else [item for ns in job.namespaces for item in by_namespace.get(ns, ())]
        )
        out.update(key for key, svc in candidates if key not in out and selects(job, svc))
    return out


def services_scraped(
    cluster: ClusterSnapshot,
    prometheus: Sequence[PrometheusSnapshot],
    grouped: Mapping[ServiceKey, object],
    remembered: Remembered | None = None,
    memo: SelectionMemo | None = None,
) -> set[ServiceKey]:
    """The Services some pool scrapes or is meant to: those it discovered
    targets of, those a configured job selects, those a pool discovered in
    an earlier cycle. Their pods are listed (cycle.py) and they are compared
    here: a Service that only a pool which discovers nothing is meant for
    must come out missing, not unresolved for want of its pods."""
    out = set(grouped) | services_meant(cluster, prometheus, memo)
    for server_pools in (remembered or {}).values():
        out.update(server_pools)
    return out


def build_report(
    scope: Scope,
    cluster: ClusterSnapshot,
    prometheus: Sequence[PrometheusSnapshot],
    servers: Sequence[ServerState] | None = None,
    grouped: Mapping[ServiceKey, ServiceTargets] | None = None,
    remembered: Remembered | None = None,
    memo: SelectionMemo | None = None,
) -> CoverageReport:
    """`prometheus` holds the last good snapshot of every Prometheus that
    ever answered; `servers` says which are still known (answered within
    the expiry bound) and where each stands in its fleet; None: every
    snapshot is known and judged on its own. `grouped` is
    targets_by_service(prometheus), for a caller that has it."""
    prometheus = each_server(prometheus)
    if grouped is None:
        grouped = targets_by_service(prometheus)
    if servers is None:
        servers = [
            ServerState(p.name, p.server_identity, not p.unknown_reason, p.unknown_reason)
            for p in prometheus
        ]
    unjudged = {p.name: p.unjudged_pools for p in prometheus if p.unjudged_pools}
    remembered = remembered or {}
    fleet = Fleet.build(servers)
    node_by_ip = node_index(cluster)
    jobs = {p.name: {j.name: j for j in p.jobs or ()} for p in prometheus}
    services: list[ServiceCoverage] = []
    unresolved: list[Unresolved] = []
    discovered = services_scraped(cluster, prometheus, grouped, remembered, memo)
    found = controllers(cluster)
    for service in services_in_scope(scope, cluster, discovered):
        coverage = service_coverage(
            service,
            cluster,
            grouped.get(service.key, []),
            node_by_ip,
            fleet,
            meant_pools(service, prometheus, remembered, memo),
            unjudged,
            jobs,
            found,
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
    if memo is not None:
        memo.rotate()
    ready = sum(1 for n in cluster.nodes.values() if n.ready)
    return CoverageReport(
        services=services,
        nodes_ready=ready,
        nodes_not_ready=len(cluster.nodes) - ready,
        fleet=fleet,
        unresolved=unresolved,
        unreached=_unreached(services, cluster),
        controllers=found,
    )


def _unreached(services: Sequence[ServiceCoverage], cluster: ClusterSnapshot) -> list[Unreached]:
    """model.unreached for the DaemonSets behind the compared Services,
    with the Nodes where their pods are."""
    daemonsets = [d for s in services for d in s.daemonsets]
    if not daemonsets:
        return []
    running: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in services:
        if s.daemonsets:
            for p in cluster.pods.get(s.key, ()):
                if p.owner_kind == "DaemonSet" and p.owner_name and p.node_name:
                    running[(s.namespace, p.owner_name)].add(p.node_name)
    return unreached_nodes(daemonsets, cluster.nodes, running)
