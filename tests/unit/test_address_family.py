"""Issue 19 item 3 on plain data: Prometheus 3.11+ reads only the primary
family's slices of a dual-stack Service (prometheus #18192); the Operator's
IPv4-only kubelet slices on an IPv6-primary cluster lose every kubelet
(prometheus-operator #8681). The pool's cause is `address_family`, the
slices stage counts each family."""

from __future__ import annotations

import dataclasses

from coverage_exporter.model.causes import Cause
from coverage_exporter.model.objects import (
    ClusterSnapshot,
    EndpointSlice,
    PrometheusSnapshot,
    RelabelRule,
    ScrapeJob,
    SliceEndpoint,
)
from coverage_exporter.model.report import build_report
from coverage_exporter.model.scope import Scope
from coverage_exporter.model.stages import service_stages
from tests.unit import clusters

KUBELET = ("kube-system", "kubelet")
NE = ("monitoring", "node-exporter")
# The Operator's kubelet job, reduced to the rule that picks the Service.
KUBELET_JOB = ScrapeJob(
    "serviceMonitor/monitoring/kubelet/0",
    "endpointslice",
    ("kube-system",),
    (RelabelRule("keep", ("__meta_kubernetes_service_label_k8s_app",), regex="kubelet"),),
)


def dual_stack(snapshot: ClusterSnapshot, key: tuple[str, str], families: tuple[str, ...]) -> None:
    svc = snapshot.services[key]
    snapshot.services[key] = dataclasses.replace(
        svc, ip_family_policy="RequireDualStack", ip_families=families
    )


def stages(snapshot: ClusterSnapshot, prom: PrometheusSnapshot, key: tuple[str, str]):
    (svc,) = [s for s in build_report(Scope(), snapshot, [prom]).services if s.key == key]
    return svc, {(st.kind, st.pool): st for st in service_stages(svc)}


def test_ipv4_only_kubelet_slices_on_an_ipv6_primary_service_vanish_for_the_family() -> None:
    cluster = clusters.kubelet(30, skip_mirror=True)
    dual_stack(cluster, KUBELET, ("IPv6", "IPv4"))
    name = KUBELET_JOB.name
    targets = clusters.slice_targets(cluster, name, *KUBELET, primary_only=True)
    assert targets == []  # what 3.11+ discovers from IPv4-only slices
    prom = PrometheusSnapshot("prom", targets, jobs=[KUBELET_JOB], pools=[name])
    svc, st = stages(cluster, prom, KUBELET)
    assert svc.slices.families == {"IPv4": 30}
    assert svc.slices.missing == ()  # the slices do hold every node
    pool = st[("prometheus", name)]
    assert pool.count == 30
    assert pool.causes.counts == {Cause.ADDRESS_FAMILY: 30}
    assert [m.node for m in pool.causes.named[Cause.ADDRESS_FAMILY]] == [
        clusters.node_name(i) for i in range(30)
    ]


def test_a_server_that_reads_every_family_is_not_blamed_on_the_family() -> None:
    """Prometheus before 3.11 (2.53 here) reads the IPv4 slices too: a node
    it misses is not the family's doing."""
    cluster = clusters.kubelet(30, skip_mirror=True)
    dual_stack(cluster, KUBELET, ("IPv6", "IPv4"))
    targets = clusters.slice_targets(cluster, "kubelet", *KUBELET)[1:]
    _, st = stages(cluster, PrometheusSnapshot("prom", targets), KUBELET)
    assert st[("prometheus", "kubelet")].causes.counts == {Cause.UNEXPLAINED: 1}


def test_both_families_counted_apart_and_only_the_secondary_only_part_is_the_family() -> None:
    """The controller writes both families for pods with two IPs; 5 nodes
    whose pods have only an IPv4 address are in the IPv4 slices alone."""
    cluster = clusters.node_exporter(20)
    dual_stack(cluster, NE, ("IPv6", "IPv4"))
    v4 = cluster.endpointslices[NE]
    v6 = [
        EndpointSlice(
            s.namespace,
            s.name + "-v6",
            s.service_name,
            s.managed_by,
            "IPv6",
            tuple(
                SliceEndpoint(f"fd00::{i:x}", e.node_name, e.target_kind, e.target_name)
                for i, e in enumerate(s.endpoints)
                if e.node_name not in {clusters.node_name(n) for n in range(5)}
            ),
        )
        for s in v4
    ]
    cluster.endpointslices[NE] = [*v4, *v6]
    prom = PrometheusSnapshot("prom", clusters.slice_targets(cluster, "ne", *NE, primary_only=True))
    svc, st = stages(cluster, prom, NE)
    assert svc.slices.families == {"IPv4": 20, "IPv6": 15}
    assert sum(svc.slices.endpoints.values()) == 20  # the family holding most
    pool = st[("prometheus", "ne")]
    assert pool.causes.counts == {Cause.ADDRESS_FAMILY: 5}
    assert [m.node for m in pool.causes.named[Cause.ADDRESS_FAMILY]] == [
        clusters.node_name(i) for i in range(5)
    ]


def test_a_single_stack_service_reads_every_slice() -> None:
    cluster = clusters.kubelet(10, skip_mirror=True)
    svc = cluster.services[KUBELET]
    cluster.services[KUBELET] = dataclasses.replace(
        svc, ip_family_policy="SingleStack", ip_families=("IPv6",)
    )
    assert cluster.services[KUBELET].read_family is None
    prom = PrometheusSnapshot(
        "prom", clusters.slice_targets(cluster, "kubelet", *KUBELET, primary_only=True)
    )
    _, st = stages(cluster, prom, KUBELET)
    assert st[("prometheus", "kubelet")].count == 0


def test_the_finding_names_the_family_not_the_discovery() -> None:
    """A pool that discovers nothing because its slices are all of the
    skipped family: the audit says so, rather than send the user to check
    RBAC and selectors; a pool that misses for another cause keeps that
    advice."""
    from coverage_exporter.exposition.audit import findings

    cluster = clusters.kubelet(30, skip_mirror=True)
    dual_stack(cluster, KUBELET, ("IPv6", "IPv4"))
    prom = PrometheusSnapshot("prom", [], jobs=[KUBELET_JOB], pools=[KUBELET_JOB.name])
    svc, _ = stages(cluster, prom, KUBELET)
    (line,) = [w for w in findings(svc) if KUBELET_JOB.name in w]
    assert "misses 30 of 30" in line
    assert "All of them are only in the slices of an address family" in line
    assert "prometheus #18192" in line and "RBAC" not in line

    single = clusters.kubelet(30, skip_mirror=True)
    svc, _ = stages(single, prom, KUBELET)
    (line,) = [w for w in findings(svc) if KUBELET_JOB.name in w]
    assert "address family" not in line and "RBAC" in line
