"""Slim, immutable views of the Kubernetes and Prometheus objects the
coverage model compares.

The sources parse raw API responses straight into these types and keep
nothing else: at 100,000 nodes a full Node object is ~15 KB, a slim one a
few hundred bytes. Every field here is read by `model.coverage`; a field
nobody reads does not belong here.

The types made by the hundred thousand (Node, addresses, endpoints, Pod,
Target) are plain slotted dataclasses, not frozen ones: a frozen
dataclass's __init__ goes through object.__setattr__ and costs ~6x more,
0.5 s per 100k targets. Treat them as read-only all the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ServiceKey = tuple[str, str]
"""(namespace, name) of a Service, and of its Endpoints object."""

# Where the expected set of targets of a Service comes from.
SOURCE_DAEMONSET = "daemonset"
SOURCE_NODES = "nodes"
SOURCE_PODS = "pods"

# Prometheus kubernetes_sd roles that discover a Service's endpoints.
ROLE_ENDPOINTS = "endpoints"
ROLE_ENDPOINTSLICE = "endpointslice"

OVER_CAPACITY_ANNOTATION = "endpoints.kubernetes.io/over-capacity"
SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY_MIRRORING = "endpointslicemirroring-controller.k8s.io"


@dataclass(slots=True)
class Node:
    name: str
    addresses: tuple[str, ...]
    """status.addresses of type InternalIP and ExternalIP."""
    ready: bool


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    selector: Mapping[str, str] | None
    """None for selector-less Services (hand-made Endpoints)."""
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> ServiceKey:
        return (self.namespace, self.name)


@dataclass(slots=True)
class EndpointAddress:
    """One address of an Endpoints subset, or one endpoint of a slice."""

    ip: str
    node_name: str | None = None
    target_kind: str | None = None
    target_name: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoints:
    namespace: str
    name: str
    ready: tuple[EndpointAddress, ...]
    not_ready: tuple[EndpointAddress, ...]
    subset_sizes: tuple[int, ...]
    """Addresses (ready + not ready) per subset: the mirroring cap is per subset."""
    over_capacity: str | None = None
    """Value of the over-capacity annotation ("truncated"; "warning" on v1.21)."""
    skip_mirror: bool = False
    """Labelled endpointslice.kubernetes.io/skip-mirror=true."""

    @property
    def key(self) -> ServiceKey:
        return (self.namespace, self.name)


@dataclass(slots=True)
class SliceEndpoint:
    address: str
    """The first address: Kubernetes requires every address of one endpoint
    to belong to the same Pod/Node, so one is enough to identify it."""
    node_name: str | None = None
    target_kind: str | None = None
    target_name: str | None = None
    ready: bool = True
    """conditions.ready, where nil means ready."""
    serving: bool = True
    terminating: bool = False


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    managed_by: str
    address_type: str
    endpoints: tuple[SliceEndpoint, ...]


@dataclass(slots=True)
class Pod:
    namespace: str
    name: str
    node_name: str | None
    ip: str | None
    owner_kind: str | None = None
    owner_name: str | None = None
    terminating: bool = False


@dataclass(frozen=True, slots=True)
class DaemonSet:
    namespace: str
    name: str
    desired_number_scheduled: int


@dataclass(slots=True)
class ClusterSnapshot:
    """What the Kubernetes source knew at one instant."""

    nodes: Mapping[str, Node] = field(default_factory=dict)
    services: Mapping[ServiceKey, Service] = field(default_factory=dict)
    endpoints: Mapping[ServiceKey, Endpoints] = field(default_factory=dict)
    endpointslices: Mapping[ServiceKey, Sequence[EndpointSlice]] = field(default_factory=dict)
    """Slices grouped by their kubernetes.io/service-name label."""
    pods: Mapping[ServiceKey, Sequence[Pod]] = field(default_factory=dict)
    """Pods selected by each in-scope Service with a selector."""
    daemonsets: Mapping[ServiceKey, DaemonSet] = field(default_factory=dict)


@dataclass(slots=True)
class Target:
    """One active target of a Prometheus, reduced to what identifies it."""

    scrape_pool: str
    health: str
    role: str
    """Discovery role read from the discovered labels (see sources.prometheus)."""
    namespace: str | None
    service: str | None
    node_name: str | None
    """Node named by the discovered labels (endpoint, slice or pod node name)."""
    target_kind: str | None
    target_name: str | None
    pod_name: str | None
    address_host: str
    """Host part of the discovered __address__."""


@dataclass(slots=True)
class PrometheusSnapshot:
    """The active targets one Prometheus (or Thanos Query) reported."""

    name: str
    targets: Sequence[Target]
