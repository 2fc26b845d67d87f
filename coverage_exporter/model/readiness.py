"""Migration readiness of each Prometheus Operator `Prometheus` and
`PrometheusAgent`: where it stands on the safe path from role Endpoints to
role EndpointSlice, and the one next step that is safe now.

The safe path (docs/runbooks/migrate-to-endpointslice.md):
1. dual-write: the Operator writes its own kubelet EndpointSlices
   (`--kubelet-endpoints=true --kubelet-endpointslice=true`), so the
   mirroring controller's 1000-address cap no longer applies;
2. check the slices are complete, and that the Prometheus ServiceAccount
   may list and watch `discovery.k8s.io` EndpointSlices;
3. switch-role: `spec.serviceDiscoveryRole: EndpointSlice`;
4. endpoints-off: `--kubelet-endpoints=false` (optional; the Endpoints
   object is then left frozen).

Since Operator v0.86 a ServiceMonitor may set its own
`spec.serviceDiscoveryRole` (prometheus-operator #7982): its jobs then use
it whatever the CR says (pkg/prometheus/promcfg.go: the ServiceMonitor's
role where set, else the CR's). So the role is judged per ServiceMonitor
(`effective_role`): a Service over capacity loses targets only through the
ServiceMonitors that still read Endpoints, and a CR switched to
EndpointSlice is not migrated while one of its ServiceMonitors pins
Endpoints.

Pure functions on plain data: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from coverage_exporter.model.objects import (
    MANAGED_BY_MIRRORING,
    MANAGED_BY_OPERATOR,
    ClusterSnapshot,
    Service,
    ServiceKey,
)
from coverage_exporter.model.scope import LabelRequirement

ENDPOINTS_CAPACITY = 1000
ROLE_ENDPOINTS_CR = "Endpoints"
ROLE_ENDPOINTSLICE_CR = "EndpointSlice"

# Where a Service's Endpoints object reaches the cap within this many days
# at its recent growth, switching before it does is the next step too.
FORECAST_DAYS = 4.0

KUBELET_OPERATOR_SLICES = "operator_slices"
"""The Operator writes complete EndpointSlices of its own."""
KUBELET_MIRRORED_CAPPED = "mirrored_capped"
"""Only the mirroring controller's slices, which left addresses out."""
KUBELET_MIRRORED = "mirrored"
"""Only mirrored slices, complete for now (under 1000 addresses)."""
KUBELET_ENDPOINTS_FROZEN = "endpoints_frozen"
"""Operator slices; the Endpoints object is no longer written."""
KUBELET_NONE = "none"
"""No kubelet Service of the Operator's."""

STEP_DUAL_WRITE = "dual-write"
STEP_GRANT_RBAC = "grant-endpointslice-rbac"
STEP_SWITCH_ROLE = "switch-role"
STEP_ENDPOINTS_OFF = "endpoints-off"
STEP_DONE = "done"
STEP_NOT_NEEDED = "not-needed"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A metav1.LabelSelector; `None` fields of the CRs mean "select nothing"
    or "own namespace" as documented on each use."""

    requirements: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


@dataclass(frozen=True, slots=True)
class ServiceMonitor:
    namespace: str
    name: str
    selector: LabelSelector
    labels: Mapping[str, str] = field(default_factory=dict)
    any_namespace: bool = False
    namespaces: tuple[str, ...] = ()
    """namespaceSelector.matchNames; empty with any_namespace False: its own."""
    service_discovery_role: str | None = None
    """Its own spec.serviceDiscoveryRole (Operator v0.86+); None: the CR's."""

    def selects(self, service: Service) -> bool:
        if self.any_namespace:
            pass
        elif self.namespaces:
            if service.namespace not in self.namespaces:
                return False
        elif service.namespace != self.namespace:
            return False
        return self.selector.matches(service.labels)


@dataclass(frozen=True, slots=True)
class PrometheusCR:
    kind: str
    """Prometheus or PrometheusAgent."""
    namespace: str
    name: str
    service_discovery_role: str
    """Endpoints (also when unset) or EndpointSlice."""
    service_account: str
    service_monitor_selector: LabelSelector | None
    """None: selects no ServiceMonitor."""
    service_monitor_namespace_selector: LabelSelector | None
    """None: only the CR's own namespace."""


def effective_role(sm: ServiceMonitor, cr: PrometheusCR) -> str:
    """The role the Operator writes into the ServiceMonitor's jobs: its own
    where set, else the CR's (Endpoints when neither is)."""
    return sm.service_discovery_role or cr.service_discovery_role or ROLE_ENDPOINTS_CR


@dataclass(frozen=True, slots=True)
class MonitorRole:
    """One ServiceMonitor the CR selects, and the role of its jobs."""

    namespace: str
    name: str
    role: str
    own: bool
    """True: the ServiceMonitor sets the role; False: the CR's."""


@dataclass(frozen=True, slots=True)
class ServiceGrowth:
    addresses: int
    days_to_capacity: float | None
    """At the recent growth; None when not growing."""


@dataclass(frozen=True, slots=True)
class Readiness:
    cr: PrometheusCR
    role: str
    over_capacity: tuple[ServiceKey, ...]
    """Services of its ServiceMonitors whose Endpoints reach 1000 addresses."""
    soon_over_capacity: tuple[ServiceKey, ...]
    """...or will within FORECAST_DAYS at their recent growth."""
    endpointslice_rbac: bool | None
    """Its ServiceAccount may list and watch EndpointSlices; None: unknown."""
    kubelet_state: str
    next_step: str
    safe_now: bool
    """False when the role in force loses targets (switched unsafely), or
    when switching now would (unsafe to switch)."""
    advice: str
    action: str
    """The exact patch or flag of the next step."""
    monitors: tuple[MonitorRole, ...] = ()
    """Each selected ServiceMonitor's effective role."""


def kubelet_state(cluster: ClusterSnapshot) -> tuple[str, ServiceKey | None]:
    """The state of the Operator's kubelet Service (the first one found)."""
    for key, service in sorted(cluster.services.items()):
        if service.selector is not None or not service.operator_managed:
            continue
        if service.labels.get("app.kubernetes.io/name") != "kubelet":
            continue
        slices = cluster.endpointslices.get(key, ())
        endpoints = cluster.endpoints.get(key)
        by_operator = {
            e.address for s in slices if s.managed_by == MANAGED_BY_OPERATOR for e in s.endpoints
        }
        mirrored = {
            e.address for s in slices if s.managed_by == MANAGED_BY_MIRRORING for e in s.endpoints
        }
        nodes = {n.addresses[0] for n in cluster.nodes.values() if n.addresses}
        if by_operator:
            stale = (
                endpoints is None or {a.ip for a in endpoints.ready + endpoints.not_ready} != nodes
            )
            return (KUBELET_ENDPOINTS_FROZEN if stale else KUBELET_OPERATOR_SLICES), key
        if endpoints is not None:
            listed = sum(endpoints.subset_sizes)
            if listed > len(mirrored):
                return KUBELET_MIRRORED_CAPPED, key
        return KUBELET_MIRRORED, key
    return KUBELET_NONE, None


def selected_services(
    cr: PrometheusCR,
    monitors: Sequence[ServiceMonitor],
    namespace_labels: Mapping[str, Mapping[str, str]],
    services: Mapping[ServiceKey, Service],
) -> list[ServiceKey]:
    """Services the CR scrapes through its ServiceMonitors."""
    chosen = selected_monitors(cr, monitors, namespace_labels)
    return sorted({k for k, s in services.items() for sm in chosen if sm.selects(s)})


def selected_monitors(
    cr: PrometheusCR,
    monitors: Sequence[ServiceMonitor],
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> list[ServiceMonitor]:
    """The ServiceMonitors the CR selects."""
    if cr.service_monitor_selector is None:
        return []
    chosen = []
    for sm in monitors:
        if cr.service_monitor_namespace_selector is None:
            if sm.namespace != cr.namespace:
                continue
        elif not cr.service_monitor_namespace_selector.matches(
            namespace_labels.get(sm.namespace, {})
        ):
            continue
        if cr.service_monitor_selector.matches(sm.labels):
            chosen.append(sm)
    return chosen


def assess(
    cr: PrometheusCR,
    monitors: Sequence[ServiceMonitor],
    namespace_labels: Mapping[str, Mapping[str, str]],
    cluster: ClusterSnapshot,
    growth: Mapping[ServiceKey, ServiceGrowth],
    endpointslice_rbac: bool | None,
) -> Readiness:
    chosen = selected_monitors(cr, monitors, namespace_labels)
    roles = tuple(
        MonitorRole(sm.namespace, sm.name, effective_role(sm, cr), bool(sm.service_discovery_role))
        for sm in chosen
    )
    # Only the ServiceMonitors that read Endpoints lose what it cuts.
    on_endpoints = [
        sm for sm, r in zip(chosen, roles, strict=True) if r.role != ROLE_ENDPOINTSLICE_CR
    ]
    services = sorted(
        {k for k, s in cluster.services.items() for sm in on_endpoints if sm.selects(s)}
    )
    over = tuple(k for k in services if k in growth and growth[k].addresses >= ENDPOINTS_CAPACITY)
    soon = tuple(
        k
        for k in services
        if k in growth
        and k not in over
        and (days := growth[k].days_to_capacity) is not None
        and days <= FORECAST_DAYS
    )
    state, kubelet = kubelet_state(cluster)
    kubelet_name = f"{kubelet[0]}/{kubelet[1]}" if kubelet else "kube-system/kubelet"
    role = cr.service_discovery_role or ROLE_ENDPOINTS_CR
    # Mirrored slices under 1000 addresses are complete for now.
    slices_ready = state != KUBELET_MIRRORED_CAPPED
    rbac_ok = endpointslice_rbac is not False
    patch = (
        f"kubectl -n {cr.namespace} patch {cr.kind.lower()} {cr.name} --type merge "
        '-p \'{"spec":{"serviceDiscoveryRole":"EndpointSlice"}}\''
    )
    rbac_action = (
        f"grant ServiceAccount {cr.namespace}/{cr.service_account} get, list and watch on "
        "discovery.k8s.io endpointslices (a ClusterRole rule: apiGroups [discovery.k8s.io], "
        "resources [endpointslices], verbs [get, list, watch])"
    )
    dual = "restart the Operator with --kubelet-endpoints=true --kubelet-endpointslice=true"

    def decide(step: str, safe: bool, advice: str, action: str) -> Readiness:
        return Readiness(
            cr, role, over, soon, endpointslice_rbac, state, step, safe, advice, action, roles
        )

    pinned = [r for r in roles if r.own and r.role != ROLE_ENDPOINTSLICE_CR]
    if role == ROLE_ENDPOINTSLICE_CR and pinned:
        # The CR switched, but ServiceMonitors of its own keep Endpoints.
        names = ", ".join(f"{r.namespace}/{r.name}" for r in pinned)
        first = pinned[0]
        return decide(
            STEP_SWITCH_ROLE,
            not over,
            f"role EndpointSlice, but ServiceMonitor {names} sets serviceDiscoveryRole "
            "Endpoints: its jobs still read the Endpoints object"
            + (", which cuts Services over 1000 addresses." if over else "."),
            f"kubectl -n {first.namespace} patch servicemonitor {first.name} --type json "
            '-p \'[{"op":"remove","path":"/spec/serviceDiscoveryRole"}]\'',
        )
    if role == ROLE_ENDPOINTSLICE_CR:
        if state == KUBELET_MIRRORED_CAPPED:
            return decide(
                STEP_DUAL_WRITE,
                False,
                f"switched unsafely: {kubelet_name} has only mirrored slices, capped "
                "at 1000 addresses; every kubelet pool misses what the mirroring "
                "controller left out. Let the Operator write its own slices.",
                dual,
            )
        if not rbac_ok:
            return decide(
                STEP_GRANT_RBAC,
                False,
                "switched unsafely: the ServiceAccount may not list EndpointSlices, "
                "so every pool of this Prometheus discovers nothing.",
                rbac_action,
            )
        if state == KUBELET_OPERATOR_SLICES:
            return decide(
                STEP_ENDPOINTS_OFF,
                True,
                f"on role EndpointSlice; {kubelet_name} Endpoints are still written "
                "and nothing needs them now (optional last step).",
                "restart the Operator with --kubelet-endpoints=false --kubelet-endpointslice=true",
            )
        return decide(
            STEP_DONE,
            True,
            "migrated: role EndpointSlice, kubelet slices written by the Operator.",
            "",
        )
    # Still on role Endpoints; ServiceMonitors that set EndpointSlice
    # already read slices, and lose targets as a switched CR would.
    early = [(sm, r) for sm, r in zip(chosen, roles, strict=True) if r.own and r.role != role]
    if early:
        names = ", ".join(f"{r.namespace}/{r.name}" for _, r in early)
        reads_kubelet = kubelet is not None and any(
            sm.selects(cluster.services[kubelet]) for sm, _ in early
        )
        if state == KUBELET_MIRRORED_CAPPED and reads_kubelet:
            return decide(
                STEP_DUAL_WRITE,
                False,
                f"ServiceMonitor {names} sets serviceDiscoveryRole EndpointSlice: it reads "
                f"{kubelet_name}'s mirrored slices, capped at 1000 addresses, and misses what "
                "the mirroring controller left out. Let the Operator write its own slices.",
                dual,
            )
        if not rbac_ok:
            return decide(
                STEP_GRANT_RBAC,
                False,
                f"ServiceMonitor {names} sets serviceDiscoveryRole EndpointSlice, and the "
                "ServiceAccount may not list EndpointSlices: its jobs discover nothing.",
                rbac_action,
            )
    # Still on role Endpoints.
    losing = bool(over)
    if not over and not soon and state not in (KUBELET_MIRRORED_CAPPED,):
        step, advice, action = (
            STEP_NOT_NEEDED,
            "no Service of its ServiceMonitors is near 1000 addresses; migrating is still "
            "advised before one is.",
            "",
        )
        if state in (KUBELET_OPERATOR_SLICES, KUBELET_ENDPOINTS_FROZEN) and rbac_ok:
            step, action = STEP_SWITCH_ROLE, patch
        return decide(step, True, advice, action)
    if not slices_ready:
        return decide(
            STEP_DUAL_WRITE,
            not losing,
            f"unsafe to switch yet: {kubelet_name} has only mirrored slices, capped "
            "at 1000; switching now would lose those kubelet targets. First let the "
            "Operator write its own slices.",
            dual,
        )
    if not rbac_ok:
        return decide(
            STEP_GRANT_RBAC,
            not losing,
            "unsafe to switch yet: its ServiceAccount may not list EndpointSlices; "
            "after the switch every pool would discover nothing.",
            rbac_action,
        )
    return decide(
        STEP_SWITCH_ROLE,
        not losing,
        "ready to switch: the kubelet slices are complete and the ServiceAccount "
        "may read EndpointSlices.",
        patch,
    )


def days_to_capacity(
    samples: Sequence[tuple[float, int]], capacity: int = ENDPOINTS_CAPACITY
) -> float | None:
    """Days until `capacity` at the growth between the first and last
    (time, count) sample; None when not growing or too few samples."""
    if len(samples) < 2:
        return None
    (t0, c0), (t1, c1) = samples[0], samples[-1]
    if t1 <= t0 or c1 <= c0:
        return None
    if c1 >= capacity:
        return 0.0
    per_day = (c1 - c0) / ((t1 - t0) / 86400)
    return (capacity - c1) / per_day
