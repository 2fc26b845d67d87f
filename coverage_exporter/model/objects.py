"""Slim, immutable views of the Kubernetes and Prometheus objects the
coverage model compares.

The sources parse raw API responses straight into these types and keep
nothing else: at 100,000 nodes a full Node object is ~15 KB, a slim one a
few hundred bytes. Every field here is read by `model.coverage`; a field
nobody reads does not belong here.

The types made by the hundred thousand (Node, addresses, endpoints, Pod,
Target) are msgspec Structs with gc=False, not dataclasses: their __init__
is C (55 ns against 262 ns for a slotted dataclass with ten keyword
fields; a frozen dataclass costs ~6x more again), they are 16 bytes
smaller, and the cyclic garbage collector does not track them, so its full
collections do not walk a million targets at 100k nodes. They hold only
strings, numbers, tuples and shared dicts, never a cycle, which is what
gc=False requires. Treat them as read-only all the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

ServiceKey = tuple[str, str]
"""(namespace, name) of a Service, and of its Endpoints object."""

# Where the expected set of targets of a Service comes from.
SOURCE_DAEMONSET = "daemonset"
SOURCE_NODES = "nodes"
SOURCE_PODS = "pods"
SOURCE_LISTED = "listed"
"""Hand-made (selector-less) Endpoints not written by the Prometheus
Operator: the addresses they list are what is expected (etcd, control
plane), not every Node."""

# Prometheus kubernetes_sd roles that discover a Service's endpoints.
ROLE_ENDPOINTS = "endpoints"
ROLE_ENDPOINTSLICE = "endpointslice"
ROLE_UNKNOWN = "unknown"
"""A target that came without its discovered labels (vmagent), where no
loaded configuration names its job's role either."""

# What answers on a server's URL (docs/scrapers.md): each serves the
# Prometheus targets API in its own way.
KIND_PROMETHEUS = "prometheus"
KIND_PROMETHEUS_AGENT = "prometheus_agent"
"""Prometheus run with --agent: targets, pools and configuration as a
server; no query API, which nothing here uses."""
KIND_VMAGENT = "vmagent"
"""VictoriaMetrics' vmagent: no /api/v1/scrape_pools, and with
-promscrape.dropOriginalLabels no discovered labels."""
KIND_THANOS_QUERY = "thanos_query"
"""Thanos Query: the targets of every Prometheus behind it, each with its
sidecar's external labels; split into one server per store where the
answer says which store a target came from."""
KIND_UNKNOWN = "unknown"
"""Not recognised yet (never answered) and not declared."""
SERVER_KINDS = (KIND_PROMETHEUS, KIND_PROMETHEUS_AGENT, KIND_VMAGENT, KIND_THANOS_QUERY)

OVER_CAPACITY_ANNOTATION = "endpoints.kubernetes.io/over-capacity"
SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY_MIRRORING = "endpointslicemirroring-controller.k8s.io"
MANAGED_BY_CONTROLLER = "endpointslice-controller.k8s.io"
"""The EndpointSlice controller's slices of selector-backed Services."""
MANAGED_BY_OPERATOR = "prometheus-operator"
APP_MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

POD_PHASES_DONE = frozenset({"Failed", "Succeeded"})
DUAL_STACK_POLICIES = frozenset({"PreferDualStack", "RequireDualStack"})
"""spec.ipFamilyPolicy values under which Prometheus 3.11+ reads only the
slices of the Service's primary family (Service.read_family)."""
"""Pods in these phases never run again (evicted, completed): never expected."""


Taint = tuple[str, str, str]
"""(key, value, effect) of a Node taint."""


class Node(msgspec.Struct, gc=False):
    name: str
    addresses: tuple[str, ...]
    """status.addresses of type InternalIP and ExternalIP."""
    ready: bool
    labels: Mapping[str, str] = msgspec.field(default_factory=dict)
    """Shared between Nodes with equal labels (see sources.k8s_parse): one
    dict per distinct label set, not per Node."""
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    selector: Mapping[str, str] | None
    """None for selector-less Services (hand-made Endpoints)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    port_names: tuple[str, ...] = ()
    """spec.ports[].name: what the port keep rules of scrape jobs match."""
    ip_family_policy: str = ""
    ip_families: tuple[str, ...] = ()
    """spec.ipFamilyPolicy and spec.ipFamilies (primary first), as the
    apiserver defaulted them."""

    @property
    def key(self) -> ServiceKey:
        return (self.namespace, self.name)

    @property
    def read_family(self) -> str | None:
        """The only address family whose EndpointSlices Prometheus 3.11+
        reads for this Service, or None when it reads every slice. It
        skips the slices of any other family of a Prefer/RequireDualStack
        Service (prometheus #18192, discovery/kubernetes/endpointslice.go
        nonPrimaryIPFamilySlice): on IPv6-primary clusters the Operator's
        IPv4-only kubelet slices then yield nothing (operator #8681)."""
        if self.ip_family_policy not in DUAL_STACK_POLICIES or not self.ip_families:
            return None
        return self.ip_families[0]

    @property
    def operator_managed(self) -> bool:
        """Written by the Prometheus Operator's kubelet controller."""
        return self.labels.get(APP_MANAGED_BY_LABEL) == MANAGED_BY_OPERATOR


class EndpointAddress(msgspec.Struct, gc=False):
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
    operator_managed: bool = False
    """Labelled app.kubernetes.io/managed-by=prometheus-operator."""

    @property
    def key(self) -> ServiceKey:
        return (self.namespace, self.name)


class SliceEndpoint(msgspec.Struct, gc=False):
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


class Pod(msgspec.Struct, gc=False):
    namespace: str
    name: str
    node_name: str | None
    ip: str | None
    owner_kind: str | None = None
    owner_name: str | None = None
    terminating: bool = False
    phase: str | None = None


@dataclass(frozen=True, slots=True)
class NodeSelectorRequirement:
    key: str
    operator: str
    """In, NotIn, Exists, DoesNotExist, Gt, Lt (nodeAffinity matchExpressions)."""
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str | None
    operator: str
    """Equal or Exists."""
    value: str | None
    effect: str | None


@dataclass(frozen=True, slots=True)
class PodPlacement:
    """What decides the Nodes a DaemonSet's pods go to. `terms` are the
    required node affinity's nodeSelectorTerms (ORed); None when the
    template uses something not modelled here (matchFields on other
    fields than metadata.name), and the Nodes can then only be counted."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    terms: tuple[tuple[NodeSelectorRequirement, ...], ...] | None = ()
    tolerations: tuple[Toleration, ...] = ()
    host_network: bool = False


@dataclass(frozen=True, slots=True)
class DaemonSet:
    namespace: str
    name: str
    desired_number_scheduled: int
    placement: PodPlacement | None = None
    """None when the object carried no pod template (old fixtures)."""
    template_labels: Mapping[str, str] | None = None
    """spec.template.metadata.labels: the labels its pods are created with;
    None when unknown (old fixtures). Owner inference (model.owners) needs it."""


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


class Target(msgspec.Struct, gc=False):
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


@dataclass(frozen=True, slots=True)
class RelabelRule:
    """One relabel_configs entry, as Prometheus reads it (defaults filled)."""

    action: str
    source_labels: tuple[str, ...] = ()
    separator: str = ";"
    regex: str = "(.*)"
    target_label: str = ""
    replacement: str = "$1"
    modulus: int = 0
    conditional: bool = False
    """vmagent's `if:` series selector: the rule acts only on targets that
    match it, which the exporter does not evaluate."""


@dataclass(frozen=True, slots=True)
class ScrapeJob:
    """A scrape job with Kubernetes service discovery of role endpoints or
    endpointslice, from the Prometheus's loaded configuration."""

    name: str
    role: str
    namespaces: tuple[str, ...] | None
    """None: every namespace."""
    relabel: tuple[RelabelRule, ...] = ()
    service_label_selectors: tuple[str, ...] = ()
    """label selectors of `selectors: [{role: service, label: ...}]`."""


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """Where one Prometheus server stands in its fleet (model.topology)."""

    scraper: str
    """The logical Prometheus: shards and replicas of it share this name."""
    replica: str
    """The copy of the whole target set this server belongs to. Every
    replica evaluates the alert rules itself, so each must cover every
    expected target; only the shards of one replica form a union."""
    shard: int = 0
    shards: int = 1
    how: str = "independent"
    """How it was recognised: declared, operator, external_labels, hashmod, independent."""
    kind: str = KIND_UNKNOWN
    """What answers on its URL (KIND_*), recognised from its answers or declared."""

    @classmethod
    def alone(cls, name: str) -> ServerIdentity:
        """A server judged on its own: its own scraper and its own replica,
        of one shard (model.topology, the last rule)."""
        return cls(scraper=name, replica=name)


@dataclass(slots=True)
class PrometheusSnapshot:
    """The active targets one Prometheus (or Thanos Query) reported."""

    name: str
    targets: Sequence[Target]
    identity: ServerIdentity | None = None
    """None: judged on its own (ServerIdentity.alone)."""
    jobs: Sequence[ScrapeJob] | None = None
    """None when the configuration could not be read (Thanos, vmagent):
    then only the pools that discovered something are known."""
    pools: Sequence[str] = ()
    """Every scrape pool the server runs, targets or not."""
    pools_listed: bool = True
    """False when `pools` are only those with targets (no scrape_pools API:
    Thanos Query, Prometheus < 2.42)."""
    discovered_labels: bool = True
    """False when the server sent no discoveredLabels (vmagent with
    -promscrape.dropOriginalLabels): targets were matched by their final
    labels, and their discovery role is the configuration's, or unknown."""
    unjudged_pools: Mapping[str, str] = field(default_factory=dict)
    """Pool -> why its coverage cannot be judged: it holds targets that
    came without discovered labels and whose final labels do not name
    their namespace and Service (vmagent with -promscrape.dropOriginalLabels
    and a job that does not copy them), so that any Service the pool is
    meant for may be among them."""
    unknown_reason: str = ""
    """Set when none of this server's targets can be judged (a store that
    Thanos Query's answer left out, or whose targets it merged with another
    replica's): its replica's coverage is then unknown. Its targets, if any,
    only list its pools."""
    members: Sequence[PrometheusSnapshot] = ()
    """Thanos Query: one snapshot per store behind it, each a server of the
    fleet in its own right; the Query's own snapshot then holds no target."""
    started: float | None = None
    """When the server started, on this exporter's wall clock (its own
    uptime, from its /metrics `process_start_time_seconds` and the Date of
    that answer, so that a skewed clock on either side does not count);
    None when not told (Thanos Query, a /metrics that is not served)."""

    @property
    def server_identity(self) -> ServerIdentity:
        return self.identity or ServerIdentity.alone(self.name)


def each_server(snapshots: Sequence[PrometheusSnapshot]) -> list[PrometheusSnapshot]:
    """The servers of the fleet: a Thanos Query's stores in its place."""
    return [m for snap in snapshots for m in (snap.members or (snap,))]
