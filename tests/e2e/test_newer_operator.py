"""Operators newer than the v0.85.0 binary (issue 19 item 6), on the real
testbed. The only Prometheus Operator binary available here is v0.85.0 (the
Go module proxy serves no newer main module), and no Operator runs in these
tests: nothing of v0.86+ or v0.92+ is executed. What runs is what can run
of them:

- the CRDs of v0.95.2 (testbed/build.sh operator_crds) on the real
  kube-apiserver, with a ServiceMonitor that sets `serviceDiscoveryRole:
  EndpointSlice` under a Prometheus CR on Endpoints: migration readiness
  counts the Services over capacity only through the ServiceMonitors that
  read Endpoints, and lists each one's effective role;
- four real Prometheus 3.16 shards loaded with the topology-sharding rules
  that v0.92+ writes (testbed.operator_shapes), 2 zones, over nodes of
  which a quarter carry a zone outside the list and a quarter none: the
  exporter names those `no_shard_keeps`, each.

Not run: a v0.86+ Operator reconciling these objects (the StatefulSets,
the config it would generate from them, its reloader filling in
$(TOPOLOGY_ZONE)); the shapes stand in for its generator, read from its
source. The truth comes from the objects and the zone labels written here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from testbed import operator_shapes as shapes
from testbed import scenarios as s
from testbed.cluster import Cluster
from testbed.kube import Kube
from tests.e2e.extra_prometheus import ExtraPrometheus, sd_job
from tests.e2e.waiting import eventually

N = s.DEFAULT_NODES
BINARY = Path(sys.executable).parent / "coverage-exporter"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
GROUP = "/apis/monitoring.coreos.com/v1"
NS = "newer-operator"
POOL = "serviceMonitor/monitoring/node-exporter/0"
ZONES = ["zone-a", "zone-b"]
SHARDS = 4
ZONE_LABEL = "topology.kubernetes.io/zone"


def zone_of(i: int) -> str | None:
    return ("zone-a", "zone-b", "zone-c", None)[i % 4]


def audit(testbed: Cluster, *urls: str) -> dict[str, Any]:
    out = subprocess.run(
        [str(BINARY), "audit", "--kubeconfig", str(testbed.kubeconfig), "--log.level", "warn",
         "--output", "json", *(a for u in urls for a in ("--prometheus-url", u))],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode in (0, 1, 3), out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def newer_crds(kube: Kube) -> Iterator[None]:
    """The v0.95.2 CRDs in place of whatever is there; put back after."""
    bodies = shapes.crd_bodies(("prometheuses", "servicemonitors"))
    before = {
        b["metadata"]["name"]: kube.get_or_none(f"{CRDS}/{b['metadata']['name']}") for b in bodies
    }
    for body in bodies:
        name = body["metadata"]["name"]
        if before[name] is not None:
            body = {
                **body,
                "metadata": {
                    **body["metadata"],
                    "resourceVersion": before[name]["metadata"]["resourceVersion"],
                },
            }
        kube.put_or_create(CRDS, name, body)

    def established() -> bool:
        for body in bodies:
            got = kube.get(f"{CRDS}/{body['metadata']['name']}")
            status = got.get("status") or {}
            conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
            if conds.get("Established") != "True":
                return False
        return True

    eventually(established, "the v0.95.2 CRDs to be established", 60)
    kube.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    try:
        yield
    finally:
        kube.delete(f"/api/v1/namespaces/{NS}")
        for name, old in before.items():
            if old is None:
                kube.delete(f"{CRDS}/{name}")
            else:
                now = kube.get(f"{CRDS}/{name}")
                old = {k: v for k, v in old.items() if k != "status"}
                old["metadata"] = {
                    "name": name,
                    "resourceVersion": now["metadata"]["resourceVersion"],
                    **{k: v for k, v in old["metadata"].items() if k in ("labels", "annotations")},
                }
                kube.put_or_create(CRDS, name, old)


def servicemonitor(
    name: str, selector: dict[str, str], namespace: str, role: str | None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "namespaceSelector": {"matchNames": [namespace]},
        "endpoints": [{"port": "metrics"}],
    }
    if role is not None:
        spec["serviceDiscoveryRole"] = role
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": name, "namespace": NS, "labels": {"team": "newer"}},
        "spec": spec,
    }


def migration(doc: dict[str, Any]) -> dict[str, Any]:
    (cr,) = [m for m in doc["migration"] if (m["namespace"], m["name"]) == (NS, "k8s")]
    return cr


def endpoints_size(kube: Kube, ns: str, name: str) -> int:
    e = kube.get_or_none(f"/api/v1/namespaces/{ns}/endpoints/{name}")
    return sum(
        len(sub.get("addresses") or []) + len(sub.get("notReadyAddresses") or [])
        for sub in (e or {}).get("subsets") or []
    )


def over_capacity(kube: Kube, ns: str, selector: dict[str, str]) -> list[str]:
    """ns/name of the Services the selector takes whose Endpoints reach
    1000 addresses, sorted, as the audit lists them."""
    query = ",".join(f"{k}={v}" for k, v in selector.items())
    services = kube.list(f"/api/v1/namespaces/{ns}/services", labelSelector=query)
    names = [svc["metadata"]["name"] for svc in services]
    return sorted(f"{ns}/{n}" for n in names if endpoints_size(kube, ns, n) >= s.ENDPOINTS_CAP)


def test_the_v0952_crds_validate_what_v086_and_v092_added(kube: Kube, newer_crds: None) -> None:
    """The CRDs in force are the newer ones: their enum and CEL rules refuse
    what v0.85.0's would not know."""
    bad_role = servicemonitor("bad", {"app": "x"}, NS, "Pods")
    with pytest.raises(ApiException) as refused:
        kube.create(f"{GROUP}/namespaces/{NS}/servicemonitors", bad_role, exist_ok=False)
    assert refused.value.status == 422 and "serviceDiscoveryRole" in str(refused.value.body)
    too_few = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "Prometheus",
        "metadata": {"name": "too-few", "namespace": NS},
        "spec": {
            "shards": 1,
            "shardingStrategy": {"mode": "Topology", "topology": {"values": ZONES}},
        },
    }
    with pytest.raises(ApiException) as refused:
        kube.create(f"{GROUP}/namespaces/{NS}/prometheuses", too_few, exist_ok=False)
    assert refused.value.status == 422 and "shards must be greater" in str(refused.value.body)


def test_a_servicemonitor_on_endpointslice_under_a_cr_on_endpoints(
    testbed: Cluster, kube: Kube, newer_crds: None, prometheus_urls: dict[str, str]
) -> None:
    cr = {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
        "metadata": {"name": "k8s", "namespace": NS},
        "spec": {
            "serviceDiscoveryRole": "Endpoints",
            "serviceMonitorSelector": {"matchLabels": {"team": "newer"}},
            "shards": SHARDS,
            "shardingStrategy": {"mode": "Topology", "topology": {"values": ZONES}},
        },
    }  # fmt: skip
    kube.create(f"{GROUP}/namespaces/{NS}/prometheuses", cr, exist_ok=False)
    sms = f"{GROUP}/namespaces/{NS}/servicemonitors"
    kubelet_selector = {"k8s-app": s.OPERATOR_LABELS["k8s-app"]}
    kube.create(
        sms, servicemonitor("ne", s.NODE_EXPORTER_LABELS, s.MONITORING, "EndpointSlice")
    )  # fmt: skip
    kube.create(sms, servicemonitor("kubelet", kubelet_selector, s.KUBE_SYSTEM, None))
    got = kube.get(f"{sms}/ne")
    assert got["spec"]["serviceDiscoveryRole"] == "EndpointSlice"  # kept, not pruned

    # Truth from the objects: the Services each ServiceMonitor selects whose
    # Endpoints reach 1000 addresses (the kubelet selector takes both
    # kube-system/kubelet and kubelet-skip-mirror).
    ne_over = over_capacity(kube, s.MONITORING, s.NODE_EXPORTER_LABELS)
    kubelet_over = over_capacity(kube, s.KUBE_SYSTEM, kubelet_selector)
    assert ne_over == [f"{s.MONITORING}/{s.NODE_EXPORTER}"], "1200 nodes truncate node-exporter"
    assert f"{s.KUBE_SYSTEM}/{s.KUBELET}" in kubelet_over

    m = migration(audit(testbed, *prometheus_urls.values()))
    assert m["service_discovery_role"] == "Endpoints"
    roles = {(x["namespace"], x["name"]): (x["role"], x["own_role"]) for x in m["service_monitors"]}
    assert roles == {(NS, "ne"): ("EndpointSlice", True), (NS, "kubelet"): ("Endpoints", False)}
    # node-exporter is read through slices by its own ServiceMonitor.
    assert m["services_over_capacity"] == kubelet_over

    # Without its own role the same ServiceMonitor reads the truncated Endpoints.
    kube.patch(f"{sms}/ne", {"spec": {"serviceDiscoveryRole": None}})
    m = migration(audit(testbed, *prometheus_urls.values()))
    assert m["services_over_capacity"] == sorted(ne_over + kubelet_over)
    assert {x["name"]: x["role"] for x in m["service_monitors"]}["ne"] == "Endpoints"


# ---- topology sharding, v0.92+ shapes, real Prometheus 3.16 --------------------------


@pytest.fixture(scope="module")
def zoned_nodes(kube: Kube) -> Iterator[dict[str, str | None]]:
    zones = {name: zone_of(i) for i, name in enumerate(s.nodes(N))}
    kube.parallel(
        lambda nz: kube.patch(
            f"/api/v1/nodes/{nz[0]}", {"metadata": {"labels": {ZONE_LABEL: nz[1]}}}
        ),
        [(n, z) for n, z in zones.items() if z],
    )
    try:
        yield zones
    finally:
        kube.parallel(
            lambda n: kube.patch(
                f"/api/v1/nodes/{n}", {"metadata": {"labels": {ZONE_LABEL: None}}}
            ),
            [n for n, z in zones.items() if z],
        )


@pytest.fixture(scope="module")
def topology_shards(
    testbed: Cluster, zoned_nodes: dict[str, str | None], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ExtraPrometheus]]:
    root = tmp_path_factory.mktemp("topology")
    made = []
    try:
        for shard in range(SHARDS):
            pod = f"prometheus-k8s-{0}" if shard == 0 else f"prometheus-k8s-shard-{shard}-0"
            prom = ExtraPrometheus(root, pod)
            made.append(prom)
            # Role endpoints: the zone comes from the node's label, as the
            # Operator forces attach_metadata node for topology sharding.
            job = sd_job(
                testbed, POOL, f"{s.MONITORING}/{s.NODE_EXPORTER}", "metrics", "endpoints",
                extra_relabel=shapes.topology_rules(shard, SHARDS, ZONES),
            )  # fmt: skip
            job["kubernetes_sd_configs"][0]["attach_metadata"] = {"node": True}
            labels = {
                "prometheus": "monitoring/k8s",
                "prometheus_replica": pod,
                "zone": shapes.zone_of_shard(shard, ZONES),
            }
            prom.write([job], labels)
            prom.start()
        yield made
    finally:
        for p in made:
            p.stop()


def test_topology_shards_keep_no_target_without_a_listed_zone(
    testbed: Cluster,
    zoned_nodes: dict[str, str | None],
    topology_shards: list[ExtraPrometheus],
) -> None:
    # Role endpoints reads the truncated Endpoints: the first 1000 addresses.
    in_endpoints = {
        a["nodeName"] for sub in endpoints_subsets(testbed) for a in sub.get("addresses") or []
    }
    kept = {n for n in in_endpoints if zoned_nodes[n] in ZONES}
    dropped = {n for n in in_endpoints if zoned_nodes[n] not in ZONES}
    assert kept and dropped

    def discovered() -> set[str]:
        return {
            t["discoveredLabels"].get("__meta_kubernetes_endpoint_node_name", "")
            for p in topology_shards
            for t in p.active(POOL)
        }

    eventually(lambda: discovered() == kept, "the shards to keep their zones' nodes", 120)
    doc = audit(testbed, *(f"{p.name}={p.url}" for p in topology_shards))
    (svc,) = [
        x
        for x in doc["services"]
        if (x["namespace"], x["service"]) == (s.MONITORING, s.NODE_EXPORTER)
    ]
    (pool,) = [p for p in svc["prometheus"]["pools"] if p["scrape_pool"] == POOL]
    assert pool["replica"] == "prometheus-k8s-0"
    by_cause: dict[str, set[str]] = {}
    for t in pool["missing"]:
        by_cause.setdefault(t["cause"], set()).add(t["node"])
    assert by_cause["no_shard_keeps"] == dropped
    # The rest is what the truncated Endpoints cut, not the shards.
    assert set(by_cause) <= {"no_shard_keeps", "endpoints_truncated"}
    assert pool["causes"]["no_shard_keeps"] == len(dropped)
    zone_rule = shapes_zone_rule_index()
    assert pool["cause_rule"] == {"index": zone_rule, "action": "keep"}


def endpoints_subsets(testbed: Cluster) -> list[dict[str, Any]]:
    kube = Kube(testbed.kubeconfig)
    try:
        e = kube.get(f"/api/v1/namespaces/{s.MONITORING}/endpoints/{s.NODE_EXPORTER}")
    finally:
        kube.close()
    return e.get("subsets") or []


def shapes_zone_rule_index() -> int:
    """sd_job's two rules, then the zone keep is the third of the shapes'."""
    return 2 + 2
