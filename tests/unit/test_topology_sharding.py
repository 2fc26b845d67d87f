"""Topology-aware sharding (Operator v0.92+, `shardingStrategy.mode:
Topology`) on plain data: the zone rules recognised in a configuration
shaped as the v0.92+ generator writes it (testbed.operator_shapes), each
shard placed in its replica from the Operator's pod name, and the targets
with no zone or a zone outside the list named `no_shard_keeps` with the
zone rule. Issue 19 item 6."""

from __future__ import annotations

import dataclasses

import msgspec
import yaml

from coverage_exporter.model.causes import Cause
from coverage_exporter.model.objects import PrometheusSnapshot
from coverage_exporter.model.report import build_report
from coverage_exporter.model.scope import Scope
from coverage_exporter.model.stages import service_stages
from coverage_exporter.model.topology import (
    ZONE_FROM_NODE,
    ZONE_FROM_POD,
    ZONE_FROM_SLICE,
    identify,
    job_zone,
)
from coverage_exporter.sources.prometheus.config import parse_config_yaml
from testbed import operator_shapes as shapes
from tests.unit import clusters

NE = ("monitoring", "node-exporter")
POOL = "serviceMonitor/monitoring/node-exporter/0"
ZONES = ["zone-a", "zone-b"]
SHARDS = 4
N = 40
META = "__meta_kubernetes_"


def zone_of_node(i: int) -> str | None:
    """A quarter in each listed zone, a quarter in zone-c (not listed), a
    quarter without the label."""
    return ("zone-a", "zone-b", "zone-c", None)[i % 4]


def pod_name(shard: int, replica: int = 0) -> str:
    return f"prometheus-k8s-{replica}" if shard == 0 else f"prometheus-k8s-shard-{shard}-{replica}"


def config(shard: int, role: str = "endpoints", pod_labels: bool = False) -> str:
    """One shard's loaded configuration, in the golden file's shape."""
    port = META + ("endpoint_port_name" if role == "endpoints" else "endpointslice_port_name")
    job = {
        "job_name": POOL,
        "honor_labels": False,
        "kubernetes_sd_configs": [
            {
                "role": role,
                "namespaces": {"names": ["monitoring"]},
                "attach_metadata": {"node": True},
            }
        ],
        "relabel_configs": [
            {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
            {
                "action": "keep",
                "source_labels": [META + "service_label_app", META + "service_labelpresent_app"],
                "regex": "(node-exporter);true",
            },
            {"action": "keep", "source_labels": [port], "regex": "metrics"},
            *shapes.topology_rules(shard, SHARDS, ZONES, pod_labels),
        ],
    }
    return yaml.safe_dump(
        {
            "global": {
                "external_labels": {
                    "prometheus": "monitoring/k8s",
                    "prometheus_replica": pod_name(shard),
                    "zone": shapes.zone_of_shard(shard, ZONES),
                }
            },
            "scrape_configs": [job],
        }
    )


def zoned_cluster():
    cluster = clusters.node_exporter(N)
    cluster.nodes = {
        name: msgspec.structs.replace(
            n, labels={"topology.kubernetes.io/zone": z} if (z := zone_of_node(i)) else {}
        )
        for i, (name, n) in enumerate(sorted(cluster.nodes.items()))
    }
    cluster.services = {
        NE: type(cluster.services[NE])(*NE, {"app": "node-exporter"}, {"app": "node-exporter"})
    }
    return cluster


def shard_servers(cluster, role: str = "endpoints", pod_labels: bool = False):
    """Each shard discovers what it keeps: the nodes of its zone, split
    between the zone's shards (which half does not matter to the model)."""
    targets = clusters.slice_targets(cluster, POOL, *NE)
    targets = [msgspec.structs.replace(t, role=role) for t in targets]
    zone = {clusters.node_name(i): zone_of_node(i) for i in range(N)}
    servers = []
    for shard in range(SHARDS):
        loaded = parse_config_yaml(config(shard, role, pod_labels))
        mine = [t for t in targets if zone[t.node_name] == shapes.zone_of_shard(shard, ZONES)]
        inzone = shard // len(ZONES)
        ident = identify(pod_name(shard), loaded.external_labels, loaded.jobs)
        servers.append(
            PrometheusSnapshot(
                pod_name(shard),
                mine[inzone::2],
                identity=ident,
                jobs=list(loaded.jobs),
                pools=[POOL],
            )
        )
    return servers


def pool_stage(servers, cluster):
    report = build_report(Scope(), cluster, servers)
    (svc,) = [s for s in report.services if s.key == NE]
    (st,) = [st for st in service_stages(svc) if st.pool == POOL]
    return st


def test_the_zone_rule_of_the_generated_shape_is_recognised() -> None:
    (job,) = parse_config_yaml(config(3)).jobs
    zone = job_zone(job.relabel)
    assert zone is not None
    assert (zone.zone, zone.rule) == ("zone-b", 5)
    assert zone.sources == frozenset({ZONE_FROM_SLICE, ZONE_FROM_NODE})
    (job,) = parse_config_yaml(config(0, pod_labels=True)).jobs
    assert job_zone(job.relabel).sources == frozenset({ZONE_FROM_SLICE, ZONE_FROM_POD})


def test_the_unexpanded_zone_variable_is_not_a_zone() -> None:
    """The Secret before the reloader fills $(TOPOLOGY_ZONE) in."""
    text = config(0).replace("zone-a;|.+;.+", "$(TOPOLOGY_ZONE);|.+;.+")
    (job,) = parse_config_yaml(text).jobs
    assert job_zone(job.relabel) is None


def test_plain_hashmod_sharding_has_no_zone() -> None:
    text = config(0)
    doc = yaml.safe_load(text)
    rules = doc["scrape_configs"][0]["relabel_configs"]
    doc["scrape_configs"][0]["relabel_configs"] = [
        r for r in rules if "__tmp_topology" not in str(r)
    ]
    (job,) = parse_config_yaml(yaml.safe_dump(doc)).jobs
    assert job_zone(job.relabel) is None


def test_each_topology_shard_takes_its_shard_from_the_pod_name() -> None:
    """The hashmod gives the in-zone share (0 or 1 of 2); shards 0-3 of one
    replica, not two replicas of shards 0 and 1."""
    idents = [s.identity for s in shard_servers(zoned_cluster())]
    assert [(i.scraper, i.replica, i.shard) for i in idents] == [
        ("monitoring/k8s", "prometheus-k8s-0", n) for n in range(SHARDS)
    ]
    assert max(i.shards for i in idents) == SHARDS


def test_targets_without_a_zone_or_outside_the_list_are_kept_by_no_shard() -> None:
    cluster = zoned_cluster()
    st = pool_stage(shard_servers(cluster), cluster)
    dropped = sorted(clusters.node_name(i) for i in range(N) if zone_of_node(i) not in ZONES)
    assert len(dropped) == N // 2
    assert st.causes.counts == {Cause.NO_SHARD_KEEPS: N // 2}
    assert sorted(t.node for t in st.causes.named[Cause.NO_SHARD_KEEPS]) == dropped
    assert st.causes.rule == (5, "keep")


def test_with_pod_zone_labels_pod_backed_targets_keep_their_nodes_zone() -> None:
    """WithPodTopologyLabelsSupport: the zone comes from the slice or the
    pod (copied from its node by PodTopologyLabelsAdmission)."""
    cluster = zoned_cluster()
    st = pool_stage(shard_servers(cluster, pod_labels=True), cluster)
    assert st.causes.counts == {Cause.NO_SHARD_KEEPS: N // 2}


def test_with_pod_zone_labels_the_kubelet_through_endpoints_has_no_zone() -> None:
    """Node-wide targets (the kubelet's, no pod) read through Endpoints: no
    slice zone, no pod label; every shard drops every one of them."""
    cluster = clusters.kubelet(8)
    key = ("kube-system", "kubelet")
    svc = cluster.services[key]
    cluster.services = {key: dataclasses.replace(svc, port_names=("https-metrics",))}
    # Every node in a listed zone: it is the missing pod label that drops them.
    cluster.nodes = {
        k: msgspec.structs.replace(n, labels={"topology.kubernetes.io/zone": "zone-a"})
        for k, n in cluster.nodes.items()
    }
    servers = []
    for shard in range(SHARDS):
        loaded = parse_config_yaml(
            config(shard, pod_labels=True)
            .replace(POOL, "serviceMonitor/kube-system/kubelet/0")
            .replace("(node-exporter);true", "(kubelet);true")
            .replace("service_label_app", "service_label_k8s_app")
            .replace("service_labelpresent_app", "service_labelpresent_k8s_app")
            .replace("regex: metrics", "regex: https-metrics")
            .replace("- monitoring", "- kube-system")
        )
        servers.append(
            PrometheusSnapshot(
                pod_name(shard),
                [],
                identity=identify(pod_name(shard), loaded.external_labels, loaded.jobs),
                jobs=list(loaded.jobs),
                pools=["serviceMonitor/kube-system/kubelet/0"],
            )
        )
    report = build_report(Scope(), cluster, servers)
    (svc,) = [s for s in report.services if s.key == key]
    pools = [st for st in service_stages(svc) if st.pool]
    assert pools, "the kubelet pool is meant for the Service"
    for st in pools:
        assert st.causes.counts.get(Cause.NO_SHARD_KEEPS) == 8, st.causes.counts


def test_an_in_zone_share_no_shard_keeps_is_no_shard_keeps_too() -> None:
    """Shard 3 keeps in-zone share 0 instead of 1 (a wrong INZONE_SHARD):
    zone-b's share 1 is kept by no shard, on top of the targets without a
    listed zone."""
    cluster = zoned_cluster()
    servers = shard_servers(cluster)
    lost = len(servers[3].targets)
    bad = parse_config_yaml(config(3).replace("1;|.+;.+", "0;|.+;.+"))
    assert bad.jobs[0].relabel[-1].regex == "0;|.+;.+"
    servers[3].jobs = list(bad.jobs)
    servers[3].targets = []
    st = pool_stage(servers, cluster)
    assert st.causes.counts == {Cause.NO_SHARD_KEEPS: N // 2 + lost}
