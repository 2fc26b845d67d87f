"""Issue 19 item 4 on plain data: a target discovered twice for one node in
one pool (prometheus-operator #8682: v0.93.0 wrote both address families of
each node into the kubelet Endpoints), and targets of nodes or pods that no
longer exist (stale slices, operator #7678), are findings per pool with
counts and names, never merged away."""

from __future__ import annotations

import dataclasses

from coverage_exporter.exposition.audit import findings, service_json
from coverage_exporter.exposition.metrics import ExporterState, render_coverage
from coverage_exporter.model.findings import FindingKind, service_findings
from coverage_exporter.model.objects import (
    EndpointAddress,
    EndpointSlice,
    PrometheusSnapshot,
    ServerIdentity,
    SliceEndpoint,
)
from coverage_exporter.model.report import build_report
from coverage_exporter.model.scope import Scope
from coverage_exporter.model.stages import service_stages
from tests.unit import clusters

KUBELET = ("kube-system", "kubelet")
NE = ("monitoring", "node-exporter")


def kubelet_with_both_families(count: int):
    """The kubelet Endpoints of v0.93.0 on a dual-stack cluster: one IPv4
    and one IPv6 address per node, both naming the node."""
    cluster = clusters.kubelet(count, skip_mirror=True)
    e = cluster.endpoints[KUBELET]
    v6 = tuple(
        EndpointAddress(f"fd00::{i + 1:x}", a.node_name, "Node", a.target_name)
        for i, a in enumerate(e.ready)
    )
    cluster.endpoints[KUBELET] = dataclasses.replace(
        e, ready=e.ready + v6, subset_sizes=(2 * count,)
    )
    return cluster


def pool_stage(report, key, pool):
    (svc,) = [s for s in report.services if s.key == key]
    (st,) = [st for st in service_stages(svc) if st.pool == pool]
    return svc, st


def test_every_kubelet_discovered_twice_is_a_finding_with_the_names() -> None:
    cluster = kubelet_with_both_families(12)
    targets = clusters.endpoints_targets(cluster, "kubelet", *KUBELET)
    assert len(targets) == 24
    report = build_report(Scope(), cluster, [PrometheusSnapshot("prom", targets)])
    svc, st = pool_stage(report, KUBELET, "kubelet")
    names = tuple(clusters.node_name(i) for i in range(12))
    assert st.duplicated == names
    assert st.count == 0 and st.ghosts == ()
    found = [f for f in service_findings(svc) if f.kind is FindingKind.POOL_DUPLICATES]
    assert [(f.count, f.gap) for f in found] == [(12, False)]
    (line,) = [w for w in findings(svc) if "more than once" in w]
    assert "discovers 12 targets more than once" in line and names[0] in line
    pools = service_json(svc)["prometheus"]["pools"]  # type: ignore[index]
    assert pools[0]["duplicated"] == list(names)
    text = render_coverage_of(report)
    assert 'scrape_coverage_prometheus_duplicate_targets{namespace="kube-system"' in text
    assert any(
        line.startswith("scrape_coverage_prometheus_duplicate_targets{") and line.endswith(" 12.0")
        for line in text.splitlines()
    )


def test_one_server_seen_twice_through_two_routes_is_no_duplicate() -> None:
    """The same Prometheus read directly and through Thanos Query lists each
    target once per route: one replica, two servers, no duplicate."""
    cluster = clusters.kubelet(5, skip_mirror=True)
    targets = clusters.slice_targets(cluster, "kubelet", *KUBELET)
    ident = ServerIdentity(scraper="prom", replica="prom-0")
    snaps = [
        PrometheusSnapshot("direct", targets, identity=ident),
        PrometheusSnapshot("via-thanos", targets, identity=ident),
    ]
    svc, st = pool_stage(build_report(Scope(), cluster, snaps), KUBELET, "kubelet")
    assert (st.scraper, st.replica, len(svc.pools)) == ("prom", "prom-0", 1)  # one union
    assert st.duplicated == ()


def test_a_stale_slice_of_deleted_nodes_is_a_ghost_finding_per_pool() -> None:
    cluster = clusters.kubelet(10, skip_mirror=True)
    stale = EndpointSlice(
        "kube-system",
        "kubelet-stale",
        "kubelet",
        "prometheus-operator",
        "IPv4",
        (
            SliceEndpoint("10.99.0.1", "gone-a", "Node", "gone-a"),
            SliceEndpoint("10.99.0.2", "gone-b", "Node", "gone-b"),
        ),
    )
    cluster.endpointslices[KUBELET] = [*cluster.endpointslices[KUBELET], stale]
    targets = clusters.slice_targets(cluster, "kubelet", *KUBELET)
    report = build_report(Scope(), cluster, [PrometheusSnapshot("prom", targets)])
    svc, st = pool_stage(report, KUBELET, "kubelet")
    assert st.ghosts == ("gone-a", "gone-b")
    assert st.count == 0 and st.duplicated == ()
    found = [f for f in service_findings(svc) if f.kind is FindingKind.POOL_GHOSTS]
    assert [(f.count, f.gap) for f in found] == [(2, False)]
    (line,) = [w for w in findings(svc) if "no longer exist" in w]
    assert "gone-a, gone-b" in line
    assert any(
        line.startswith("scrape_coverage_prometheus_ghost_targets{") and line.endswith(" 2.0")
        for line in render_coverage_of(report).splitlines()
    )


def test_a_node_that_exists_but_is_not_expected_is_no_ghost_and_a_deleted_pod_is() -> None:
    cluster = clusters.node_exporter(6)
    pods = cluster.pods[NE]
    # node-0005's pod deleted; its target is still discovered (stale object).
    cluster.pods[NE] = pods[:5]
    targets = clusters.slice_targets(cluster, "ne", *NE)
    _, st = pool_stage(
        build_report(Scope(), cluster, [PrometheusSnapshot("prom", targets)]), NE, "ne"
    )
    # Node-wide (DaemonSet): node-0005 still exists, so it is no ghost.
    assert st.ghosts == ()
    cluster.nodes = {n: v for n, v in cluster.nodes.items() if n != "node-0005"}
    _, st = pool_stage(
        build_report(Scope(), cluster, [PrometheusSnapshot("prom", targets)]), NE, "ne"
    )
    assert st.ghosts == ("node-0005",)


def test_no_node_listed_makes_no_ghosts() -> None:
    """A Node list that failed must not turn every target into a ghost."""
    cluster = clusters.kubelet(4, skip_mirror=True)
    targets = clusters.slice_targets(cluster, "kubelet", *KUBELET)
    cluster.nodes = {}
    report = build_report(Scope(), cluster, [PrometheusSnapshot("prom", targets)])
    for s in report.services:
        for st in service_stages(s):
            assert st.ghosts == ()


def render_coverage_of(report) -> str:
    return render_coverage(ExporterState(report)).decode()
