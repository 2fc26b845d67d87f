"""Issue 19 item 1 on plain data: one cause per missing target, per stage,
from model.causes, with the funnel's precedence."""

from __future__ import annotations

import dataclasses
import re

import msgspec

from coverage_exporter.model.causes import UNKNOWN_CAUSES, Cause, target_state
from coverage_exporter.model.coverage import Expected, MissingTarget
from coverage_exporter.model.fleet import ServerState
from coverage_exporter.model.objects import (
    ClusterSnapshot,
    DaemonSet,
    EndpointAddress,
    Endpoints,
    Node,
    Pod,
    PodPlacement,
    PrometheusSnapshot,
    RelabelRule,
    ScrapeJob,
    ServerIdentity,
    Service,
    Toleration,
)
from coverage_exporter.model.report import build_report
from coverage_exporter.model.scope import Scope
from coverage_exporter.model.stages import service_stages
from fakes import controllers
from tests.unit import clusters

NE = ("monitoring", "node-exporter")
KUBELET = ("kube-system", "kubelet")
META = "__meta_kubernetes_"


def dropped_by_truncation(count: int) -> list[str]:
    """Independent truth: the nodes whose IPs sort last as strings."""
    by_ip = sorted(range(count), key=clusters.node_ip)
    return sorted(clusters.node_name(i) for i in by_ip[controllers.ENDPOINTS_MAX_CAPACITY :])


def stages_of(report, key):
    (svc,) = [s for s in report.services if s.key == key]
    return {(st.kind, st.pool, st.replica): st for st in service_stages(svc)}


def names(st, cause: Cause) -> list[str]:
    return [m.pod or m.node for m in st.causes.named.get(cause, ())]


def test_a_node_cut_from_truncated_endpoints_is_missing_for_the_cut_everywhere_it_is_read() -> None:
    cluster = clusters.node_exporter(1200)
    prom = PrometheusSnapshot(
        "prom",
        [
            *clusters.endpoints_targets(cluster, "ne-endpoints", *NE),
            *clusters.slice_targets(cluster, "ne-slices", *NE),
        ],
    )
    st = stages_of(build_report(Scope(), cluster, [prom]), NE)
    cut = dropped_by_truncation(1200)
    endpoints = st[("endpoints", "", "")]
    assert endpoints.causes.counts == {Cause.ENDPOINTS_TRUNCATED: 200}
    assert names(endpoints, Cause.ENDPOINTS_TRUNCATED) == cut
    pool = st[("prometheus", "ne-endpoints", "prom")]
    assert pool.causes.counts == {Cause.ENDPOINTS_TRUNCATED: 200}
    assert names(pool, Cause.ENDPOINTS_TRUNCATED) == cut
    assert st[("prometheus", "ne-slices", "prom")].causes.counts == {}


def test_the_earliest_loss_wins_a_terminating_pod_among_the_cut_is_terminating() -> None:
    """Precedence: the target's own state, then the stage read, then the
    pool's own cause."""
    cluster = clusters.node_exporter(1200)
    cut = dropped_by_truncation(1200)
    pods = [
        msgspec.structs.replace(p, terminating=True) if p.node_name == cut[0] else p
        for p in cluster.pods[NE]
    ]
    cluster.pods = {NE: pods}
    prom = PrometheusSnapshot("prom", clusters.endpoints_targets(cluster, "ne-endpoints", *NE))
    st = stages_of(build_report(Scope(), cluster, [prom]), NE)
    for stage in (st[("endpoints", "", "")], st[("prometheus", "ne-endpoints", "prom")]):
        assert stage.causes.counts == {Cause.ENDPOINTS_TRUNCATED: 199, Cause.POD_TERMINATING: 1}
        assert names(stage, Cause.POD_TERMINATING) == [cut[0]]
        assert stage.causes.of(MissingTarget(cut[0])) == Cause.POD_TERMINATING
        assert stage.causes.of(MissingTarget(cut[1])) == Cause.ENDPOINTS_TRUNCATED


def test_mirroring_cap_is_the_cause_in_the_slices_and_in_pools_that_read_them() -> None:
    cluster = clusters.kubelet(1100)
    prom = PrometheusSnapshot(
        "prom",
        [
            *clusters.slice_targets(cluster, "kubelet-slices", *KUBELET),
            *clusters.endpoints_targets(cluster, "kubelet-endpoints", *KUBELET),
        ],
    )
    st = stages_of(build_report(Scope(), cluster, [prom]), KUBELET)
    left_out = sorted(
        clusters.node_name(i)
        for i in range(1100)
        if clusters.node_name(i)
        not in {a.node_name for a in controllers.mirrored(cluster.endpoints[KUBELET].ready)}
    )
    assert len(left_out) == 100
    slices = st[("endpointslices", "", "")]
    assert slices.causes.counts == {Cause.MIRRORING_CAPPED: 100}
    assert names(slices, Cause.MIRRORING_CAPPED) == left_out
    pool = st[("prometheus", "kubelet-slices", "prom")]
    assert names(pool, Cause.MIRRORING_CAPPED) == left_out
    assert st[("endpoints", "", "")].causes.counts == {}
    assert st[("prometheus", "kubelet-endpoints", "prom")].causes.counts == {}


def tainted_cluster() -> tuple[ClusterSnapshot, Expected]:
    """Four nodes: a pod on n0; n1 tainted NoExecute; n2 outside the
    selector; n3 fits but has no pod yet; n4's pod has no IP."""
    ns = "monitoring"
    nodes = {
        "n0": Node("n0", ("10.0.0.0",), True, {"os": "linux"}),
        "n1": Node("n1", ("10.0.0.1",), True, {"os": "linux"}, (("pool", "batch", "NoExecute"),)),
        "n2": Node("n2", ("10.0.0.2",), True, {"os": "windows"}),
        "n3": Node("n3", ("10.0.0.3",), True, {"os": "linux"}),
        "n4": Node("n4", ("10.0.0.4",), True, {"os": "linux"}),
    }
    placement = PodPlacement(
        {"os": "linux"}, (), (Toleration(None, "Exists", None, "NoSchedule"),), True
    )
    daemonset = DaemonSet(ns, "ne", 3, placement)
    pods = [
        Pod(ns, "ne-a", "n0", "10.0.0.0", "DaemonSet", "ne", phase="Running"),
        Pod(ns, "ne-b", "n4", None, "DaemonSet", "ne", phase="Pending"),
    ]
    cluster = ClusterSnapshot(
        nodes=nodes,
        services={NE: Service(*NE, {"app": "ne"})},
        pods={NE: pods},
        daemonsets={(ns, "ne"): daemonset},
    )
    # Every node as expected (what item 2 makes of a DaemonSet that selects
    # no node and is kept off by taints): each absent one for its reason.
    keys = {n: n for n in nodes}
    expected = Expected("daemonset", 5, keys, daemonsets=(daemonset,))
    # As the stages leave it: one target object per node they miss.
    expected.made.update((n, MissingTarget(n)) for n in keys)
    return cluster, expected


def test_no_pod_on_the_node_says_why_taint_selector_or_not_scheduled_and_no_ip() -> None:
    cluster, expected = tainted_cluster()
    state = target_state(cluster.services[NE], cluster, expected)
    assert {cause: [t.node for t in ts] for cause, ts in state.items()} == {
        Cause.NO_POD_TAINT: ["n1"],
        Cause.NO_POD_PLACEMENT: ["n2"],
        Cause.POD_NOT_SCHEDULED: ["n3"],
        Cause.POD_NOT_READY: ["n4"],
    }


def test_daemonset_nodes_without_a_pod_and_nodes_known_by_count_are_not_scheduled() -> None:
    cluster, _ = tainted_cluster()
    endpoints = Endpoints(*NE, (EndpointAddress("10.0.0.0", "n0", "Pod", "ne-a"),), (), (1,))
    cluster.endpoints = {NE: endpoints}
    st = stages_of(build_report(Scope(frozenset({NE})), cluster, []), NE)
    # Placement names n0, n3 and n4 (3 = desiredNumberScheduled).
    assert st[("endpoints", "", "")].causes.counts == {
        Cause.POD_NOT_SCHEDULED: 1,
        Cause.POD_NOT_READY: 1,
    }
    # Placement not modelled: the nodes are known by count only.
    ds = cluster.daemonsets[("monitoring", "ne")]
    cluster.daemonsets = {("monitoring", "ne"): dataclasses.replace(ds, placement=None)}
    st = stages_of(build_report(Scope(frozenset({NE})), cluster, []), NE)
    assert st[("endpoints", "", "")].causes.counts == {
        Cause.POD_NOT_SCHEDULED: 1,
        Cause.POD_NOT_READY: 1,
    }
    assert st[("endpoints", "", "")].causes.named == {Cause.POD_NOT_READY: (MissingTarget("n4"),)}


def test_pod_backed_service_pod_without_node_is_not_scheduled() -> None:
    ns, name = "shop", "api"
    pods = [
        Pod(ns, "api-a", "node-0000", "10.244.0.1", "ReplicaSet", "api-1"),
        Pod(ns, "api-b", None, None, "ReplicaSet", "api-1", phase="Pending"),
    ]
    cluster = ClusterSnapshot(
        nodes=clusters.nodes(1),
        services={(ns, name): Service(ns, name, {"app": "api"})},
        endpoints={
            (ns, name): Endpoints(
                ns, name, (EndpointAddress("10.244.0.1", "node-0000", "Pod", "api-a"),), (), (1,)
            )
        },
        pods={(ns, name): pods},
    )
    st = stages_of(build_report(Scope(frozenset({(ns, name)})), cluster, []), (ns, name))
    assert names(st[("endpoints", "", "")], Cause.POD_NOT_SCHEDULED) == ["api-b"]


OPERATOR_JOB = ScrapeJob(
    "serviceMonitor/monitoring/node-exporter/0",
    "endpointslice",
    ("monitoring",),
    (
        RelabelRule("keep", (META + "service_label_app",), regex="node-exporter"),
        RelabelRule("keep", (META + "endpointslice_port_name",), regex="metrics"),
    ),
)


def ne_cluster(ports: tuple[str, ...] = ("metrics",)) -> ClusterSnapshot:
    cluster = clusters.node_exporter(20)
    cluster.services = {
        NE: Service(*NE, {"app": "node-exporter"}, {"app": "node-exporter"}, {}, ports)
    }
    return cluster


def test_a_pool_whose_port_rule_keeps_no_port_names_the_rule() -> None:
    cluster = ne_cluster(ports=("http-metrics",))
    prom = PrometheusSnapshot("prom", [], jobs=[OPERATOR_JOB], pools=[OPERATOR_JOB.name])
    st = stages_of(build_report(Scope(), cluster, [prom]), NE)
    pool = st[("prometheus", OPERATOR_JOB.name, "prom")]
    assert pool.causes.counts == {Cause.RELABEL_DROPPED: 20}
    assert pool.causes.rule == (1, "keep")


def test_a_remembered_pool_whose_service_rule_now_drops_it_names_the_rule() -> None:
    cluster = ne_cluster()
    job = dataclasses.replace(
        OPERATOR_JOB,
        relabel=(
            RelabelRule("replace", ("job",), target_label="__tmp"),
            RelabelRule("keep", (META + "service_label_app",), regex="node-exporter-v2"),
        ),
    )
    prom = PrometheusSnapshot("prom", [], jobs=[job], pools=[job.name])
    remembered = {"prom": {NE: {job.name: "endpointslice"}}}
    st = stages_of(build_report(Scope(), cluster, [prom], remembered=remembered), NE)
    pool = st[("prometheus", job.name, "prom")]
    assert pool.causes.counts == {Cause.RELABEL_DROPPED: 20}
    assert pool.causes.rule == (1, "keep")


def test_a_meant_pool_that_discovers_nothing() -> None:
    cluster = ne_cluster()
    prom = PrometheusSnapshot("prom", [], jobs=[OPERATOR_JOB], pools=[OPERATOR_JOB.name])
    st = stages_of(build_report(Scope(), cluster, [prom]), NE)
    pool = st[("prometheus", OPERATOR_JOB.name, "prom")]
    assert pool.causes.counts == {Cause.POOL_DISCOVERS_NOTHING: 20}
    assert pool.causes.rule is None


def sharded_job(keep_share: int, modulus: int) -> ScrapeJob:
    return dataclasses.replace(
        OPERATOR_JOB,
        relabel=(
            *OPERATOR_JOB.relabel,
            RelabelRule("hashmod", ("__address__",), target_label="__tmp_hash", modulus=modulus),
            RelabelRule(
                "keep", ("__tmp_hash", "__tmp_disable_sharding"), regex=f"{keep_share};|.+;.+"
            ),
        ),
    )


def test_a_hashmod_share_that_no_shard_keeps() -> None:
    """Two shards declared, a modulus of 3: share 2 is kept by nobody."""
    cluster = ne_cluster()
    targets = clusters.slice_targets(cluster, OPERATOR_JOB.name, *NE)
    kept = targets[:15]
    servers = [
        PrometheusSnapshot(
            f"shard-{n}",
            kept[n::2],
            identity=ServerIdentity("k8s", "r0", n, 2, "declared"),
            jobs=[sharded_job(n, 3)],
            pools=[OPERATOR_JOB.name],
        )
        for n in range(2)
    ]
    st = stages_of(build_report(Scope(), cluster, servers), NE)
    pool = st[("prometheus", OPERATOR_JOB.name, "r0")]
    assert pool.causes.counts == {Cause.NO_SHARD_KEEPS: 5}
    assert pool.causes.rule == (2, "hashmod")
    assert names(pool, Cause.NO_SHARD_KEEPS) == sorted(t.node_name for t in targets[15:])


def test_a_pool_missing_what_its_stage_holds_is_unexplained() -> None:
    cluster = ne_cluster()
    targets = clusters.slice_targets(cluster, OPERATOR_JOB.name, *NE)[1:]
    st = stages_of(build_report(Scope(), cluster, [PrometheusSnapshot("prom", targets)]), NE)
    pool = st[("prometheus", OPERATOR_JOB.name, "prom")]
    assert pool.causes.counts == {Cause.UNEXPLAINED: 1}


def test_no_endpoints_object_is_the_cause_for_the_stage_and_its_pools() -> None:
    cluster = ne_cluster()
    cluster.endpoints = {}
    targets = clusters.slice_targets(cluster, "ne-endpoints", *NE)[:5]
    targets = [msgspec.structs.replace(t, role="endpoints") for t in targets]
    # No slices either: with the EndpointSlice controller's slices and no
    # Endpoints object, the Endpoints controller is the one missing
    # (tests/unit/test_controllers.py).
    cluster.endpointslices = {}
    st = stages_of(build_report(Scope(), cluster, [PrometheusSnapshot("prom", targets)]), NE)
    assert st[("endpoints", "", "")].causes.counts == {Cause.ENDPOINTS_ABSENT: 20}
    assert st[("prometheus", "ne-endpoints", "prom")].causes.counts == {Cause.ENDPOINTS_ABSENT: 15}


def test_unknown_shares_say_why_down_or_still_discovering() -> None:
    cluster = ne_cluster()
    targets = clusters.slice_targets(cluster, "ne", *NE)
    shard0 = PrometheusSnapshot(
        "s0", targets[:10], identity=ServerIdentity("k8s", "r0", 0, 2, "declared")
    )
    down = ServerState("s1", ServerIdentity("k8s", "r0", 1, 2, "declared"), False)
    starting = dataclasses.replace(down, why_unknown="started 3s ago", discovering=True)
    for server, cause in ((down, Cause.SHARE_UNKNOWN), (starting, Cause.STILL_DISCOVERING)):
        servers = [ServerState("s0", shard0.server_identity, True), server]
        report = build_report(Scope(), cluster, [shard0], servers)
        pool = stages_of(report, NE)[("prometheus", "ne", "r0")]
        assert not pool.known and pool.causes.counts == {cause: 10}
        assert not report.has_gaps


def test_every_cause_has_words_a_runbook_section_and_a_documented_reason() -> None:
    """Adding a cause without its runbook or its docs line fails here."""
    from pathlib import Path

    from coverage_exporter.exposition.audit import CAUSE_WORDS

    root = Path(__file__).resolve().parents[2]
    runbook = (root / "docs/runbooks/causes.md").read_text()
    metrics = (root / "docs/metrics.md").read_text()
    sections = re.findall(r"^## (\w+)$", runbook, re.M)
    assert sections == [c.value for c in Cause]
    assert set(CAUSE_WORDS) == set(Cause)
    for cause in Cause:
        documented = f"| `{cause.value}` |" in metrics
        assert documented == (cause not in UNKNOWN_CAUSES), cause
