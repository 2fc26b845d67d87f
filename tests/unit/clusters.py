"""Plain-data clusters for the model tests, built the way the real
controllers build them (their rules: fakes/controllers.py, written
independently of the exporter)."""

from __future__ import annotations

from coverage_exporter.model.objects import (
    MANAGED_BY_MIRRORING,
    ClusterSnapshot,
    DaemonSet,
    EndpointAddress,
    Endpoints,
    EndpointSlice,
    Node,
    Pod,
    Service,
    SliceEndpoint,
    Target,
)
from fakes import controllers

# What the Prometheus Operator's kubelet controller puts on its Service.
OPERATOR_LABELS = {
    "k8s-app": "kubelet",
    "app.kubernetes.io/name": "kubelet",
    "app.kubernetes.io/managed-by": "prometheus-operator",
}


def node_name(i: int) -> str:
    return f"node-{i:04d}"


def node_ip(i: int) -> str:
    return f"10.{i // 250}.{i % 250}.10"


def nodes(count: int) -> dict[str, Node]:
    return {node_name(i): Node(node_name(i), (node_ip(i),), True) for i in range(count)}


def node_exporter(count: int, slice_size: int = 100) -> ClusterSnapshot:
    """A DaemonSet-backed hostNetwork Service on `count` nodes."""
    ns, name = "monitoring", "node-exporter"
    pods = [
        Pod(ns, f"node-exporter-{i:04d}", node_name(i), node_ip(i), "DaemonSet", "node-exporter")
        for i in range(count)
    ]
    addresses = [EndpointAddress(p.ip or "", p.node_name, "Pod", p.name) for p in pods]
    kept, _, truncated = controllers.truncate_endpoints(addresses, [], lambda a: a.ip)
    endpoints = Endpoints(
        ns,
        name,
        ready=tuple(kept),
        not_ready=(),
        subset_sizes=(len(kept),),
        over_capacity="truncated" if truncated else None,
    )
    slice_endpoints = [SliceEndpoint(a.ip, a.node_name, "Pod", a.target_name) for a in addresses]
    slices = [
        EndpointSlice(
            ns,
            f"{name}-{j}",
            name,
            "endpointslice-controller.k8s.io",
            "IPv4",
            tuple(slice_endpoints[j : j + slice_size]),
        )
        for j in range(0, len(slice_endpoints), slice_size)
    ]
    return ClusterSnapshot(
        nodes=nodes(count),
        services={(ns, name): Service(ns, name, {"app": "node-exporter"})},
        endpoints={(ns, name): endpoints},
        endpointslices={(ns, name): slices},
        pods={(ns, name): pods},
        daemonsets={(ns, name): DaemonSet(ns, name, count)},
    )


def kubelet(count: int, skip_mirror: bool = False) -> ClusterSnapshot:
    """The Prometheus Operator's selector-less kubelet Endpoints; without
    skip-mirror the mirroring controller copies at most 1000 per subset."""
    ns, name = "kube-system", "kubelet"
    addresses = tuple(
        EndpointAddress(node_ip(i), node_name(i), "Node", node_name(i)) for i in range(count)
    )
    endpoints = Endpoints(
        ns, name, addresses, (), (count,), skip_mirror=skip_mirror, operator_managed=True
    )
    if skip_mirror:
        managed_by, size, mirrored = "prometheus-operator", 512, addresses
    else:
        managed_by, size, mirrored = MANAGED_BY_MIRRORING, 1000, controllers.mirrored(addresses)
    slice_endpoints = [SliceEndpoint(a.ip, a.node_name, "Node", a.target_name) for a in mirrored]
    slices = [
        EndpointSlice(
            ns, f"{name}-{j}", name, managed_by, "IPv4", tuple(slice_endpoints[j : j + size])
        )
        for j in range(0, len(slice_endpoints), size)
    ]
    return ClusterSnapshot(
        nodes=nodes(count),
        services={(ns, name): Service(ns, name, None, OPERATOR_LABELS)},
        endpoints={(ns, name): endpoints},
        endpointslices={(ns, name): slices},
    )


def endpoints_targets(snapshot: ClusterSnapshot, pool: str, ns: str, name: str) -> list[Target]:
    """What role `endpoints` discovers: one target per address of Endpoints."""
    e = snapshot.endpoints[(ns, name)]
    return [
        Target(
            pool,
            "down",
            "endpoints",
            ns,
            name,
            a.node_name,
            a.target_kind,
            a.target_name,
            a.target_name if a.target_kind == "Pod" else None,
            a.ip,
        )
        for a in e.ready + e.not_ready
    ]


def slice_targets(
    snapshot: ClusterSnapshot, pool: str, ns: str, name: str, primary_only: bool = False
) -> list[Target]:
    """What role `endpointslice` discovers: one target per slice endpoint.
    `primary_only`: as Prometheus 3.11+ does, nothing from the slices whose
    addressType is not spec.ipFamilies[0] of a Prefer/RequireDualStack
    Service (discovery/kubernetes/endpointslice.go, nonPrimaryIPFamilySlice)."""
    svc = snapshot.services[(ns, name)]
    skipped = (
        primary_only
        and svc.ip_family_policy in ("PreferDualStack", "RequireDualStack")
        and bool(svc.ip_families)
    )
    return [
        Target(
            pool,
            "up",
            "endpointslice",
            ns,
            name,
            e.node_name,
            e.target_kind,
            e.target_name,
            e.target_name if e.target_kind == "Pod" else None,
            e.address,
        )
        for s in snapshot.endpointslices[(ns, name)]
        if not (skipped and s.address_type != svc.ip_families[0])
        for e in s.endpoints
    ]
