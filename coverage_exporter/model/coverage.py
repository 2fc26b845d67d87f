"""The comparison itself: for one Service, which expected targets are
absent from the Endpoints object, from the EndpointSlices and from each
Prometheus scrape pool.

Pure functions on the slim objects of `model.objects`; no I/O, no clock.
Every number the exporter publishes about a Service is computed here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from coverage_exporter.model.objects import (
    MANAGED_BY_MIRRORING,
    ROLE_ENDPOINTS,
    ROLE_ENDPOINTSLICE,
    SOURCE_DAEMONSET,
    SOURCE_NODES,
    SOURCE_PODS,
    ClusterSnapshot,
    EndpointAddress,
    Endpoints,
    EndpointSlice,
    Pod,
    PrometheusSnapshot,
    Service,
    ServiceKey,
    SliceEndpoint,
    Target,
)

STAGE_ENDPOINTS = "endpoints"
STAGE_ENDPOINTSLICES = "endpointslices"
STAGE_PROMETHEUS = "prometheus"

DISCOVERY_ROLES = (ROLE_ENDPOINTS, ROLE_ENDPOINTSLICE)


class MissingTarget(NamedTuple):
    """An expected target absent from a stage. For node-wide Services `pod`
    is empty; for pod-backed ones `node` is where the pod runs (may be "").
    A named tuple: made by the hundred thousand when a large Service is cut,
    and cheaper to build and sort than a dataclass."""

    node: str
    pod: str = ""


@dataclass(slots=True)
class EndpointsStage:
    ready: int
    not_ready: int
    truncated: bool
    skip_mirror: bool | None
    """None for Services with a selector, where mirroring does not apply."""
    missing: tuple[MissingTarget, ...]


@dataclass(slots=True)
class SlicesStage:
    endpoints: Mapping[tuple[str, bool], int]
    """Distinct endpoints by (managed_by, ready)."""
    terminating: Mapping[str, int]
    """Terminating endpoints by managed_by."""
    mirroring_skipped: int | None
    """Addresses the mirroring controller left out; None where it does not apply."""
    missing: tuple[MissingTarget, ...]


@dataclass(slots=True)
class PoolCoverage:
    scrape_pool: str
    role: str
    discovered: int
    """Expected targets that at least one Prometheus discovered in this pool."""
    missing: tuple[MissingTarget, ...]
    ratio: float


@dataclass(slots=True)
class ServiceCoverage:
    namespace: str
    service: str
    source: str
    expected: int
    endpoints: EndpointsStage | None
    """None when the Service has no Endpoints object."""
    slices: SlicesStage
    target_counts: Mapping[tuple[str, str, str, str], int] = field(default_factory=dict)
    """Active targets by (prometheus, scrape_pool, role, health)."""
    pools: Sequence[PoolCoverage] = ()
    prometheus_known: bool = True
    """False when no Prometheus has ever answered: pool figures are unknown."""

    @property
    def key(self) -> ServiceKey:
        return (self.namespace, self.service)


@dataclass(slots=True)
class Expected:
    source: str
    count: int
    keys: Mapping[str, str]
    """Identity -> node: node name -> itself for node-wide sources, pod
    name -> the pod's node ("" if unscheduled) for SOURCE_PODS. Plain
    strings: MissingTarget objects are made only for what is missing."""

    @property
    def node_wide(self) -> bool:
        return self.source != SOURCE_PODS


class Resolver:
    """Maps what a stage carries (node names, target refs, bare IPs) to the
    identity used by the expected set. Labels that name a node win; a bare
    IP is matched against the Nodes' (or selected pods') addresses."""

    def __init__(self, node_by_ip: Mapping[str, str], pods: Sequence[Pod]) -> None:
        self._node_by_ip = node_by_ip
        # hostNetwork pods share the node's IP, so an IP cannot name a pod
        # reliably; it is only a last resort for pod-backed Services.
        self._pod_by_ip = {p.ip: p.name for p in pods if p.ip}

    def node(
        self, node_name: str | None, kind: str | None, name: str | None, ip: str
    ) -> str | None:
        if node_name:
            return node_name
        if kind == "Node" and name:
            return name
        return self._node_by_ip.get(ip)

    def pod(self, pod_name: str | None, kind: str | None, name: str | None, ip: str) -> str | None:
        if pod_name:
            return pod_name
        if kind == "Pod" and name:
            return name
        return self._pod_by_ip.get(ip)

    def identity(
        self,
        node_wide: bool,
        node_name: str | None,
        kind: str | None,
        name: str | None,
        ip: str,
        pod_name: str | None = None,
    ) -> str | None:
        if node_wide:
            return self.node(node_name, kind, name, ip)
        return self.pod(pod_name, kind, name, ip)


def expected_targets(
    service: Service, snapshot: ClusterSnapshot, endpoints: Endpoints | None
) -> Expected | None:
    """The targets that should exist, or None when nothing says what they
    are (a selector-less Service whose addresses are not Nodes, or a Service
    whose pods are not listed yet)."""
    if service.selector is None:
        addresses = endpoints.ready + endpoints.not_ready if endpoints else ()
        if not any(a.target_kind == "Node" for a in addresses):
            return None
        keys = {name: name for name in snapshot.nodes}
        return Expected(SOURCE_NODES, len(keys), keys)

    pods = snapshot.pods.get(service.key)
    if pods is None:
        # Pods not listed yet: an empty expected set would read as "no gap".
        return None
    daemonset = _owning_daemonset(service, pods, snapshot)
    if daemonset is not None:
        # Every node that runs a pod of the DaemonSet is expected; the count
        # is the controller's own desiredNumberScheduled, which also covers
        # nodes whose pod is not created yet.
        keys = {
            p.node_name: p.node_name
            for p in pods
            if p.node_name and p.owner_kind == "DaemonSet" and p.owner_name == daemonset[0]
        }
        return Expected(SOURCE_DAEMONSET, max(daemonset[1], len(keys)), keys)

    # Terminating pods are left out of Endpoints by design; expecting them
    # would report every rollout as a gap.
    keys = {p.name: p.node_name or "" for p in pods if not p.terminating}
    return Expected(SOURCE_PODS, len(keys), keys)


def _owning_daemonset(
    service: Service, pods: Sequence[Pod], snapshot: ClusterSnapshot
) -> tuple[str, int] | None:
    """(name, desiredNumberScheduled) of the DaemonSet owning most selected pods."""
    owners: dict[str, int] = defaultdict(int)
    for p in pods:
        if p.owner_kind == "DaemonSet" and p.owner_name:
            owners[p.owner_name] += 1
    if not owners:
        return None
    name = max(owners, key=lambda n: (owners[n], n))
    daemonset = snapshot.daemonsets.get((service.namespace, name))
    desired = daemonset.desired_number_scheduled if daemonset else owners[name]
    return (name, desired)


def _missing(expected: Expected, present: Iterable[str | None]) -> tuple[MissingTarget, ...]:
    # Set difference and a sort of plain strings: this runs over every
    # expected target of every stage, 100k at a time.
    absent = sorted(expected.keys.keys() - set(present))
    if expected.node_wide:
        return tuple(MissingTarget(node=k) for k in absent)
    missing = [MissingTarget(node=expected.keys[k], pod=k) for k in absent]
    missing.sort()
    return tuple(missing)


def endpoints_stage(
    service: Service, endpoints: Endpoints | None, expected: Expected, resolver: Resolver
) -> EndpointsStage | None:
    if endpoints is None:
        return None
    present = (
        _address_identity(a, expected, resolver) for a in endpoints.ready + endpoints.not_ready
    )
    return EndpointsStage(
        ready=len(endpoints.ready),
        not_ready=len(endpoints.not_ready),
        truncated=endpoints.over_capacity is not None,
        skip_mirror=endpoints.skip_mirror if service.selector is None else None,
        missing=_missing(expected, present),
    )


def _address_identity(a: EndpointAddress, expected: Expected, resolver: Resolver) -> str | None:
    return resolver.identity(expected.node_wide, a.node_name, a.target_kind, a.target_name, a.ip)


def _slice_endpoint_identity(e: SliceEndpoint) -> tuple[str, str]:
    if e.target_kind and e.target_name:
        return (e.target_kind, e.target_name)
    return ("", e.address)


def slices_stage(
    service: Service,
    slices: Sequence[EndpointSlice],
    endpoints: Endpoints | None,
    expected: Expected,
    resolver: Resolver,
) -> SlicesStage:
    # A dual-stack Service has one set of slices per family, each holding
    # every endpoint: count within the family that holds the most.
    by_family: dict[str, list[EndpointSlice]] = defaultdict(list)
    for s in slices:
        by_family[s.address_type].append(s)
    primary = max(by_family.values(), key=_distinct_endpoints, default=[])

    counted: dict[tuple[str, bool], set[tuple[str, str]]] = defaultdict(set)
    terminating: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for s in primary:
        for e in s.endpoints:
            ident = _slice_endpoint_identity(e)
            counted[(s.managed_by, e.ready)].add(ident)
            if e.terminating:
                terminating[s.managed_by].add(ident)

    present = (
        resolver.identity(expected.node_wide, e.node_name, e.target_kind, e.target_name, e.address)
        for s in slices
        for e in s.endpoints
    )
    return SlicesStage(
        endpoints={k: len(v) for k, v in counted.items()},
        terminating={k: len(v) for k, v in terminating.items()},
        mirroring_skipped=_mirroring_skipped(service, endpoints, primary),
        missing=_missing(expected, present),
    )


def _distinct_endpoints(slices: Sequence[EndpointSlice]) -> int:
    return len({_slice_endpoint_identity(e) for s in slices for e in s.endpoints})


def _mirroring_skipped(
    service: Service, endpoints: Endpoints | None, slices: Sequence[EndpointSlice]
) -> int | None:
    """Addresses of selector-less Endpoints that have no mirrored endpoint.

    The mirroring controller copies at most 1000 addresses per subset and
    drops the rest with only an Event; comparing counts is the only way to
    see it from the API."""
    if service.selector is not None or endpoints is None or endpoints.skip_mirror:
        return None
    mirrored = _distinct_endpoints([s for s in slices if s.managed_by == MANAGED_BY_MIRRORING])
    return max(0, sum(endpoints.subset_sizes) - mirrored)


def prometheus_stage(
    targets: Sequence[tuple[str, Target]], expected: Expected, resolver: Resolver
) -> tuple[dict[tuple[str, str, str, str], int], list[PoolCoverage]]:
    """Target counts per Prometheus and coverage per scrape pool.

    `targets` are (prometheus name, target) pairs of this Service. A pool
    is covered by the union over every Prometheus that runs it: shards
    each discover a share, HA replicas discover the same target twice."""
    counts: dict[tuple[str, str, str, str], int] = defaultdict(int)
    found: dict[tuple[str, str], set[str | None]] = defaultdict(set)
    for prometheus, t in targets:
        counts[(prometheus, t.scrape_pool, t.role, t.health)] += 1
        found[(t.scrape_pool, t.role)].add(
            resolver.identity(
                expected.node_wide,
                t.node_name,
                t.target_kind,
                t.target_name,
                t.address_host,
                t.pod_name,
            )
        )
    pools = []
    for (pool, role), present in sorted(found.items()):
        missing = _missing(expected, present)
        discovered = len(expected.keys) - len(missing)
        ratio = min(1.0, discovered / expected.count) if expected.count else 1.0
        pools.append(PoolCoverage(pool, role, discovered, missing, ratio))
    return dict(counts), pools


def targets_by_service(
    prometheus: Sequence[PrometheusSnapshot],
) -> dict[ServiceKey, list[tuple[str, Target]]]:
    grouped: dict[ServiceKey, list[tuple[str, Target]]] = defaultdict(list)
    for snap in prometheus:
        for t in snap.targets:
            if t.role in DISCOVERY_ROLES and t.namespace and t.service:
                grouped[(t.namespace, t.service)].append((snap.name, t))
    return grouped


def node_index(snapshot: ClusterSnapshot) -> dict[str, str]:
    """Node name by address; built once per cycle, shared by every Service."""
    return {ip: n.name for n in snapshot.nodes.values() for ip in n.addresses}


def service_coverage(
    service: Service,
    snapshot: ClusterSnapshot,
    targets: Sequence[tuple[str, Target]],
    node_by_ip: Mapping[str, str],
    prometheus_known: bool = True,
) -> ServiceCoverage | None:
    endpoints = snapshot.endpoints.get(service.key)
    expected = expected_targets(service, snapshot, endpoints)
    if expected is None:
        return None
    resolver = Resolver(node_by_ip, snapshot.pods.get(service.key, ()))
    counts, pools = prometheus_stage(targets, expected, resolver)
    return ServiceCoverage(
        namespace=service.namespace,
        service=service.name,
        source=expected.source,
        expected=expected.count,
        endpoints=endpoints_stage(service, endpoints, expected, resolver),
        slices=slices_stage(
            service, snapshot.endpointslices.get(service.key, ()), endpoints, expected, resolver
        ),
        target_counts=counts,
        pools=pools,
        prometheus_known=prometheus_known,
    )
