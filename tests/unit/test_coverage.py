"""The comparison logic on realistic plain data."""

from __future__ import annotations

import dataclasses
import gc

import msgspec
import pytest

from coverage_exporter.model.coverage import MissingTarget, targets_by_service
from coverage_exporter.model.fleet import ServerState
from coverage_exporter.model.objects import (
    ClusterSnapshot,
    EndpointAddress,
    Endpoints,
    EndpointSlice,
    Pod,
    PrometheusSnapshot,
    ScrapeJob,
    ServerIdentity,
    Service,
    SliceEndpoint,
    Target,
)
from coverage_exporter.model.report import build_report
from coverage_exporter.model.scope import Scope, parse_label_selector, parse_service_key
from coverage_exporter.model.stages import service_gaps
from fakes import controllers
from tests.unit import clusters

NE = ("monitoring", "node-exporter")
KUBELET = ("kube-system", "kubelet")


def dropped_by_truncation(count: int) -> list[str]:
    """Independent truth: the nodes whose IPs sort last as strings."""
    by_ip = sorted(range(count), key=clusters.node_ip)
    return sorted(clusters.node_name(i) for i in by_ip[controllers.ENDPOINTS_MAX_CAPACITY :])


def report_for(snapshot: ClusterSnapshot, *prometheus: PrometheusSnapshot, **kw):
    return build_report(Scope(**kw), snapshot, list(prometheus))


def only(report, key):
    (svc,) = [s for s in report.services if s.key == key]
    return svc


def test_truncated_daemonset_service_names_the_dropped_nodes() -> None:
    cluster = clusters.node_exporter(1200)
    prom = PrometheusSnapshot(
        "prom",
        [
            *clusters.endpoints_targets(cluster, "ne-endpoints", *NE),
            *clusters.slice_targets(cluster, "ne-slices", *NE),
        ],
    )
    svc = only(report_for(cluster, prom), NE)

    assert (svc.source, svc.expected) == ("daemonset", 1200)
    assert svc.endpoints is not None
    assert (svc.endpoints.ready, svc.endpoints.not_ready) == (1000, 0)
    assert svc.endpoints.truncated is True
    assert svc.endpoints.skip_mirror is None
    assert [m.node for m in svc.endpoints.missing] == dropped_by_truncation(1200)
    assert svc.slices.missing == ()
    assert svc.slices.endpoints == {("endpointslice-controller.k8s.io", True): 1200}
    assert svc.slices.mirroring_skipped is None

    pools = {p.scrape_pool: p for p in svc.pools}
    assert pools["ne-endpoints"].role == "endpoints"
    assert [m.node for m in pools["ne-endpoints"].missing] == dropped_by_truncation(1200)
    assert pools["ne-endpoints"].missing_count == 200
    assert pools["ne-endpoints"].discovered == 1000
    assert pools["ne-slices"].missing == () and pools["ne-slices"].missing_count == 0
    assert {(p.scraper, p.replica) for p in svc.pools} == {("prom", "prom")}
    assert svc.target_counts == {
        ("prom", "ne-endpoints", "endpoints", "down"): 1000,
        ("prom", "ne-slices", "endpointslice", "up"): 1200,
    }


def test_the_big_results_are_out_of_the_garbage_collectors_walk() -> None:
    """At 100k nodes the targets and the missing lists are millions of
    references: as lists or tracked tuples each full collection walked
    them, a 107 ms stall of /metrics. Tuples of untracked records are
    untracked by the collector's first pass over them."""
    cluster = clusters.node_exporter(1200)
    prom = PrometheusSnapshot("prom", tuple(clusters.endpoints_targets(cluster, "ne", *NE)))
    grouped = targets_by_service([prom])
    svc = only(build_report(Scope(), cluster, [prom], grouped=grouped), NE)
    gc.collect()
    ((_, held),) = grouped[NE]
    pool = svc.pools[0]
    assert pool.missing is not None and svc.endpoints is not None
    assert len(held) == 1000 and len(pool.missing) == 200
    assert not gc.is_tracked(held)
    assert not gc.is_tracked(pool.missing) and not gc.is_tracked(pool.missing[0])
    # One object per missing node, shared by every stage that misses it.
    assert svc.endpoints.missing[0] is pool.missing[0]


def test_under_capacity_has_no_gap() -> None:
    cluster = clusters.node_exporter(900)
    prom = PrometheusSnapshot("prom", clusters.endpoints_targets(cluster, "ne", *NE))
    report = report_for(cluster, prom)
    svc = only(report, NE)
    assert svc.endpoints is not None and not svc.endpoints.truncated
    assert svc.endpoints.missing == () and svc.pools[0].missing == ()
    assert not report.has_gaps


def test_mirrored_kubelet_slices_are_capped() -> None:
    cluster = clusters.kubelet(1200)
    prom = PrometheusSnapshot("prom", clusters.slice_targets(cluster, "kubelet", *KUBELET))
    svc = only(report_for(cluster, prom), KUBELET)
    assert (svc.source, svc.expected) == ("nodes", 1200)
    assert svc.endpoints is not None and svc.endpoints.missing == ()
    assert svc.endpoints.skip_mirror is False and not svc.endpoints.truncated
    assert svc.slices.mirroring_skipped == 200
    assert len(svc.slices.missing) == 200
    assert svc.slices.missing[0] == MissingTarget(node=clusters.node_name(1000))
    assert len(svc.pools[0].missing) == 200


def test_skip_mirror_kubelet_with_operator_slices_is_complete() -> None:
    cluster = clusters.kubelet(1200, skip_mirror=True)
    svc = only(report_for(cluster, services=frozenset({KUBELET})), KUBELET)
    assert svc.endpoints is not None and svc.endpoints.skip_mirror is True
    assert svc.slices.mirroring_skipped is None
    assert svc.slices.endpoints == {("prometheus-operator", True): 1200}
    assert svc.slices.missing == ()
    assert svc.pools == []


def test_dual_stack_slices_are_not_counted_twice() -> None:
    cluster = clusters.node_exporter(300)
    v4 = list(cluster.endpointslices[NE])
    v6 = [
        dataclasses.replace(
            s,
            name=s.name + "-v6",
            address_type="IPv6",
            endpoints=tuple(
                msgspec.structs.replace(e, address=f"fd00::{i:x}")
                for i, e in enumerate(s.endpoints)
            ),
        )
        for s in v4
    ]
    cluster.endpointslices = {NE: v4 + v6}
    svc = only(report_for(cluster, services=frozenset({NE})), NE)
    assert svc.slices.endpoints == {("endpointslice-controller.k8s.io", True): 300}
    assert svc.slices.missing == ()


def deployment_cluster() -> ClusterSnapshot:
    """A pod-backed Service: 3 pods, one terminating, one not ready."""
    ns, name = "shop", "api"
    nodes = clusters.nodes(3)
    pods = [
        Pod(ns, "api-a", "node-0000", "10.244.0.1", "ReplicaSet", "api-1"),
        Pod(ns, "api-b", "node-0001", "10.244.0.2", "ReplicaSet", "api-1"),
        Pod(ns, "api-c", "node-0002", "10.244.0.3", "ReplicaSet", "api-1", terminating=True),
    ]
    endpoints = Endpoints(
        ns,
        name,
        ready=(EndpointAddress("10.244.0.1", "node-0000", "Pod", "api-a"),),
        not_ready=(EndpointAddress("10.244.0.2", "node-0001", "Pod", "api-b"),),
        subset_sizes=(2,),
    )
    slices = [
        EndpointSlice(
            ns,
            "api-x",
            name,
            "endpointslice-controller.k8s.io",
            "IPv4",
            (
                SliceEndpoint("10.244.0.1", "node-0000", "Pod", "api-a"),
                SliceEndpoint(
                    "10.244.0.2", "node-0001", "Pod", "api-b", ready=False, serving=False
                ),
                SliceEndpoint(
                    "10.244.0.3",
                    "node-0002",
                    "Pod",
                    "api-c",
                    ready=False,
                    serving=True,
                    terminating=True,
                ),
            ),
        )
    ]
    return ClusterSnapshot(
        nodes=nodes,
        services={(ns, name): Service(ns, name, {"app": "api"})},
        endpoints={(ns, name): endpoints},
        endpointslices={(ns, name): slices},
        pods={(ns, name): pods},
    )


def test_pod_backed_service_ignores_terminating_pods_and_counts_not_ready() -> None:
    cluster = deployment_cluster()
    target = Target(
        "api", "up", "endpoints", "shop", "api", "node-0000", "Pod", "api-a", "api-a", "10.244.0.1"
    )
    svc = only(report_for(cluster, PrometheusSnapshot("p", [target])), ("shop", "api"))
    assert (svc.source, svc.expected) == ("pods", 2)
    assert svc.endpoints is not None
    assert (svc.endpoints.ready, svc.endpoints.not_ready, svc.endpoints.missing) == (1, 1, ())
    assert svc.slices.endpoints == {
        ("endpointslice-controller.k8s.io", True): 1,
        ("endpointslice-controller.k8s.io", False): 2,
    }
    assert svc.slices.terminating == {"endpointslice-controller.k8s.io": 1}
    assert svc.pools[0].missing == (MissingTarget(node="node-0001", pod="api-b"),)


def split_shards(
    targets: list[Target], shards: int, replica: str = "r0"
) -> list[PrometheusSnapshot]:
    """Each shard keeps hashmod(__address__) == its number; a stable stand-in."""
    return [
        PrometheusSnapshot(
            f"{replica}-shard-{n}",
            [t for t in targets if sum(map(ord, t.address_host)) % shards == n],
            identity=ServerIdentity("k8s", replica, n, shards, "operator"),
        )
        for n in range(shards)
    ]


def test_shards_of_one_replica_are_a_union() -> None:
    cluster = clusters.node_exporter(1200)
    targets = clusters.slice_targets(cluster, "ne", *NE)
    shards = split_shards(targets, 2)
    assert all(0 < len(s.targets) < 1200 for s in shards)
    svc = only(report_for(cluster, *shards), NE)
    (pool,) = svc.pools
    assert (pool.scraper, pool.replica, pool.missing) == ("k8s", "r0", ())
    assert sum(svc.target_counts.values()) == 1200
    assert {k[0] for k in svc.target_counts} == {"r0-shard-0", "r0-shard-1"}


def test_a_shard_that_never_answered_makes_the_share_unknown_not_missing() -> None:
    cluster = clusters.node_exporter(1200)
    shards = split_shards(clusters.slice_targets(cluster, "ne", *NE), 2)
    servers = [
        ServerState(shards[0].name, shards[0].identity, True),
        ServerState("r0-shard-1", ServerIdentity("k8s", "r0", 1, 2, "declared"), False),
    ]
    report = build_report(Scope(), cluster, [shards[0]], servers)
    (pool,) = only(report, NE).pools
    assert not pool.known and pool.missing is None and pool.missing_count is None
    assert pool.discovered == len(shards[0].targets)
    assert pool.unknown == 1200 - len(shards[0].targets)
    assert not report.has_gaps and report.unknown_pools == 1


def test_each_ha_replica_is_judged_on_its_own() -> None:
    """A replica that sees 500 of 900 is blind in its own alerts, whatever
    the other replica sees: the union must not hide it."""
    cluster = clusters.node_exporter(900)
    targets = clusters.slice_targets(cluster, "ne", *NE)
    a = split_shards(targets, 2, "prometheus-k8s-0")
    b = split_shards(targets[:500], 2, "prometheus-k8s-1")
    svc = only(report_for(cluster, *a, *b), NE)
    pools = {p.replica: p for p in svc.pools}
    assert pools["prometheus-k8s-0"].missing == ()
    assert pools["prometheus-k8s-1"].missing_count == 400
    assert [m.node for m in pools["prometheus-k8s-1"].missing] == sorted(
        t.node_name for t in targets[500:]
    )
    (gap,) = service_gaps(svc)
    assert (gap.kind, gap.replica, gap.count) == ("prometheus", "prometheus-k8s-1", 400)


def test_independent_servers_are_never_a_union() -> None:
    """Two servers without topology (the demo's 3.16 and 2.53) each miss
    200 and 300: each must say its own, never the union's 200 for both."""
    cluster = clusters.node_exporter(1200)
    targets = clusters.endpoints_targets(cluster, "ne", *NE)
    svc = only(
        report_for(
            cluster, PrometheusSnapshot("p3", targets), PrometheusSnapshot("p2", targets[:900])
        ),
        NE,
    )
    assert {p.replica: p.missing_count for p in svc.pools} == {"p3": 200, "p2": 300}


def test_thanos_view_with_duplicates_counts_each_node_once() -> None:
    cluster = clusters.node_exporter(1200)
    targets = clusters.endpoints_targets(cluster, "ne", *NE)
    svc = only(report_for(cluster, PrometheusSnapshot("thanos", targets + targets)), NE)
    assert svc.pools[0].discovered == 1000
    assert svc.target_counts[("thanos", "ne", "endpoints", "down")] == 2000


def test_second_job_with_another_role_does_not_hide_a_gap() -> None:
    cluster = clusters.node_exporter(1200)
    prom = PrometheusSnapshot(
        "p",
        [
            *clusters.endpoints_targets(cluster, "a", *NE),
            *clusters.slice_targets(cluster, "b", *NE),
        ],
    )
    report = report_for(cluster, prom)
    pools = {p.scrape_pool: len(p.missing) for p in only(report, NE).pools}
    assert pools == {"a": 200, "b": 0}
    assert report.has_gaps


def test_targets_without_node_labels_are_matched_by_address() -> None:
    cluster = clusters.kubelet(50, skip_mirror=True)
    bare = [
        msgspec.structs.replace(t, node_name=None, target_kind=None, target_name=None)
        for t in clusters.slice_targets(cluster, "kubelet", *KUBELET)
    ]
    svc = only(report_for(cluster, PrometheusSnapshot("p", bare[:40])), KUBELET)
    assert svc.pools[0].discovered == 40
    assert [m.node for m in svc.pools[0].missing] == [clusters.node_name(i) for i in range(40, 50)]


def test_hand_made_endpoints_expect_what_they_list() -> None:
    ns, name = "default", "external-db"
    cluster = ClusterSnapshot(
        nodes=clusters.nodes(2),
        services={(ns, name): Service(ns, name, None)},
        endpoints={(ns, name): Endpoints(ns, name, (EndpointAddress("192.0.2.1"),), (), (1,))},
    )
    report = report_for(cluster, services=frozenset({(ns, name)}))
    svc = only(report, (ns, name))
    assert (svc.source, svc.expected) == ("listed", 1)


def test_selector_less_service_without_any_address_is_unresolved() -> None:
    ns, name = "default", "nothing"
    cluster = ClusterSnapshot(
        nodes=clusters.nodes(2), services={(ns, name): Service(ns, name, None)}
    )
    report = report_for(cluster, services=frozenset({(ns, name)}))
    assert report.services == []
    assert [(u.namespace, u.service) for u in report.unresolved] == [(ns, name)]
    assert "no addresses" in report.unresolved[0].reason


def test_service_whose_pods_are_not_listed_yet_is_withheld_not_zero() -> None:
    cluster = clusters.node_exporter(10)
    cluster.pods = {}
    report = report_for(cluster, services=frozenset({NE}))
    assert report.services == []
    assert [u.reason for u in report.unresolved] == ["its pods are not listed yet"]


def test_a_service_without_endpoints_object_is_a_gap_only_where_a_pool_reads_it() -> None:
    cluster = clusters.node_exporter(10)
    cluster.endpoints = {}
    cluster.endpointslices = {}
    report = report_for(cluster, services=frozenset({NE}))
    svc = only(report, NE)
    assert svc.endpoints is None and len(svc.slices.missing) == 10
    assert not report.has_gaps  # nobody reads it: nothing is lost
    job = ScrapeJob("ne", "endpoints", None)
    prom = PrometheusSnapshot("p", [], jobs=[job], pools=("ne",))
    report = report_for(cluster, prom, services=frozenset({NE}))
    gaps = {(g.kind, g.count) for g in report.gaps}
    assert gaps == {("endpoints", 10), ("prometheus", 10)}


def test_scope_takes_discovered_truncated_and_explicit_services_and_filters() -> None:
    truncated = clusters.node_exporter(1200)
    kubelet = clusters.kubelet(1200)
    extra = Service("other", "svc", {"a": "b"}, {"team": "x"})
    cluster = ClusterSnapshot(
        nodes=truncated.nodes,
        services={**truncated.services, **kubelet.services, extra.key: extra},
        endpoints={**truncated.endpoints, **kubelet.endpoints},
        endpointslices={**truncated.endpointslices, **kubelet.endpointslices},
        pods=truncated.pods,
        daemonsets=truncated.daemonsets,
    )
    nothing_scraped = report_for(cluster)
    assert [s.key for s in nothing_scraped.services] == [NE]  # over capacity, unscraped

    prom = PrometheusSnapshot("p", clusters.slice_targets(kubelet, "kubelet", *KUBELET))
    both = report_for(cluster, prom)
    assert [s.key for s in both.services] == [KUBELET, NE]
    narrowed = report_for(cluster, prom, namespaces=frozenset({"kube-system"}))
    assert [s.key for s in narrowed.services] == [KUBELET]

    cluster.pods = {**cluster.pods, extra.key: []}
    explicit = report_for(
        cluster, services=frozenset({extra.key}), label_selector=parse_label_selector("team=x")
    )
    # The label filter drops node-exporter; svc selects no pods: expected 0.
    assert [(s.key, s.source, s.expected) for s in explicit.services] == [(extra.key, "pods", 0)]
    assert not explicit.has_gaps


@pytest.mark.parametrize(
    ("text", "labels", "matches"),
    [
        ("team=x", {"team": "x"}, True),
        ("team=x", {"team": "y"}, False),
        ("team!=x", {}, True),
        ("team", {"team": ""}, True),
        ("!team", {"team": "x"}, False),
        ("a=b, c==d", {"a": "b", "c": "d"}, True),
    ],
)
def test_label_selector(text: str, labels: dict[str, str], matches: bool) -> None:
    assert all(r.matches(labels) for r in parse_label_selector(text)) is matches


@pytest.mark.parametrize("bad", ["noslash", "/x", "x/", "a/b/c"])
def test_service_key_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match="NAMESPACE/NAME"):
        parse_service_key(bad)
