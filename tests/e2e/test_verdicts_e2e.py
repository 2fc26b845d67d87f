"""Verdicts in the topologies and failure modes of real clusters, against
the real testbed and extra real Prometheus servers (issue 8):

- a pool that discovers nothing still speaks: RBAC refused for
  endpointslices from the start, and a reload that switches the role;
- replicas are judged one by one, the shards of one replica as a union;
- a shard down longer than --prometheus-stale-after, or never up, makes
  its replica's share unknown, never covered and never missing;
- after the safe migration the audit exits 0 at 1,200 nodes;
- selector-less Services: hand-made Endpoints expect what they list;
- DaemonSets: nodes without a pod are named, Failed pods never expected.

The truth is computed from the scenario (testbed.scenarios) and the
relabel rules written here, never from the exporter's code.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed import procs
from testbed import scenarios as s
from testbed.cluster import Cluster
from testbed.kube import Kube
from tests.e2e.extra_prometheus import (
    META,
    ExtraPrometheus,
    sd_job,
    shard_rules,
    token_without_endpointslices,
)
from tests.e2e.waiting import eventually

N = s.DEFAULT_NODES
NE = "monitoring/node-exporter"
BINARY = Path(sys.executable).parent / "coverage-exporter"
# Replica 1 drops the nodes whose number ends in 0, 1 or 2: 30% of them.
DROP_REGEX = r"node-\d\d\d[0-2]"


def dropped_by_regex(n: int) -> set[str]:
    return {name for name in s.nodes(n) if re.fullmatch(DROP_REGEX, name)}


def audit(testbed: Cluster, *args: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [
            str(BINARY),
            "audit",
            "--kubeconfig",
            str(testbed.kubeconfig),
            "--log.level",
            "warn",
            "--output",
            "json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode in (0, 1, 3), out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, json.loads(out.stdout)


# For a server whose pool rightly discovers nothing (test 1's RBAC refusal).
FAST_GRACE = ("--prometheus-discovery-grace", "30s")


def urls(*servers: ExtraPrometheus) -> list[str]:
    return [arg for p in servers for arg in ("--prometheus-url", f"{p.name}={p.url}")]


def service(doc: dict[str, Any], key: str) -> dict[str, Any]:
    ns, name = key.split("/")
    (svc,) = [x for x in doc["services"] if (x["namespace"], x["service"]) == (ns, name)]
    return svc


def pools(doc: dict[str, Any], key: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p["replica"], p["scrape_pool"]): p for p in service(doc, key)["prometheus"]["pools"]}


def names(missing: list[dict[str, str]] | None) -> set[str]:
    assert missing is not None
    return {m["node"] for m in missing}


@pytest.fixture(scope="module")
def extras(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ExtraPrometheus]]:
    root = tmp_path_factory.mktemp("extra-prometheus")
    made: list[ExtraPrometheus] = []

    def make(name: str, version: str = "3") -> ExtraPrometheus:
        p = ExtraPrometheus(root, name, version)
        made.append(p)
        return p

    try:
        yield make
    finally:
        for p in made:
            p.stop()


@pytest.fixture(scope="module")
def refused_token(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(token_without_endpointslices(kube, "monitoring", "prometheus-no-slices"))
    return path


# --- 1. a pool that discovers nothing still speaks ------------------------------


def test_pool_refused_endpointslices_reports_every_target_missing_from_the_start(
    testbed: Cluster, extras: Callable[..., ExtraPrometheus], refused_token: Path
) -> None:
    prom = extras("no-slices-rbac")
    prom.write([sd_job(testbed, "ne", NE, "metrics", "endpointslice", refused_token)], {})
    prom.start()
    # Give discovery time to fail: the apiserver answers 403 to its watch.
    time.sleep(10)
    assert prom.active("ne") == []
    # Its one pool discovers nothing, rightly: a just-started server is then
    # judged only when its discovery grace ends (the default 2 min; this test
    # is about the verdict, not the wait).
    rc, doc = audit(testbed, *urls(prom), *FAST_GRACE)
    assert rc == 1
    pool = pools(doc, NE)[("no-slices-rbac", "ne")]
    assert pool["meant"] and pool["known"] and pool["discovered"] == 0
    assert pool["role"] == "endpointslice"
    assert names(pool["missing"]) == set(s.nodes(N))
    # The slices hold every node: nothing earlier explains the loss.
    assert pool["causes"] == {"pool_discovers_nothing": N}
    assert {m["cause"] for m in pool["missing"]} == {"pool_discovers_nothing"}
    assert {g["stage"] for g in service(doc, NE)["gaps"]} == {"prometheus"}


def test_reload_that_switches_the_role_starts_from_nothing_and_is_reported(
    testbed: Cluster, extras: Callable[..., ExtraPrometheus], refused_token: Path
) -> None:
    prom = extras("role-switch")
    prom.write([sd_job(testbed, "ne", NE, "metrics", "endpoints", refused_token)], {})
    prom.start()
    prom.wait_targets("ne", 1000)
    rc, doc = audit(testbed, *urls(prom))
    before = pools(doc, NE)[("role-switch", "ne")]
    assert rc == 1 and before["role"] == "endpoints"
    assert names(before["missing"]) == s.endpoints_dropped_nodes(N)
    assert before["causes"] == {"endpoints_truncated": len(s.endpoints_dropped_nodes(N))}

    # The migration's own step, without the RBAC it needs.
    prom.write([sd_job(testbed, "ne", NE, "metrics", "endpointslice", refused_token)], {})
    prom.reload()
    prom.wait_targets("ne", 0)
    rc, doc = audit(testbed, *urls(prom), *FAST_GRACE)
    after = pools(doc, NE)[("role-switch", "ne")]
    assert rc == 1
    assert (after["role"], after["meant"], after["discovered"]) == ("endpointslice", True, 0)
    assert names(after["missing"]) == set(s.nodes(N))
    # Role endpointslice reads the slices, which hold every node.
    assert after["causes"] == {"pool_discovers_nothing": N}


# --- 2. replicas are not shards ------------------------------------------------


@pytest.fixture(scope="module")
def operator_fleet(
    testbed: Cluster, extras: Callable[..., ExtraPrometheus]
) -> dict[tuple[int, int], ExtraPrometheus]:
    """Two replicas of two shards each, labelled and sharded as the
    Operator does it; replica 1 drops a third of the nodes by relabeling."""
    fleet = {}
    for replica in (0, 1):
        for shard in (0, 1):
            pod = (
                f"prometheus-k8s-{replica}"
                if shard == 0
                else f"prometheus-k8s-shard-{shard}-{replica}"
            )
            drop = (
                [
                    {
                        "source_labels": [META + "endpointslice_endpoint_node_name"],
                        "regex": DROP_REGEX,
                        "action": "drop",
                    }
                ]
                if replica == 1
                else []
            )
            prom = extras(pod)
            job = sd_job(
                testbed,
                "serviceMonitor/monitoring/node-exporter/0",
                NE,
                "metrics",
                "endpointslice",
                extra_relabel=[*drop, *shard_rules(2, shard)],
            )
            prom.write([job], {"prometheus": "monitoring/k8s", "prometheus_replica": pod})
            prom.start()
            fleet[(replica, shard)] = prom
    pool = "serviceMonitor/monitoring/node-exporter/0"
    eventually(
        lambda: sum(len(p.active(pool)) for (r, _), p in fleet.items() if r == 0) == N,
        "replica 0's shards to discover every node",
    )
    want = N - len(dropped_by_regex(N))
    eventually(
        lambda: sum(len(p.active(pool)) for (r, _), p in fleet.items() if r == 1) == want,
        "replica 1's shards to discover their share",
    )
    return fleet


def test_each_replica_is_judged_on_its_own_and_shards_are_a_union(
    testbed: Cluster, operator_fleet: dict[tuple[int, int], ExtraPrometheus]
) -> None:
    rc, doc = audit(testbed, *urls(*operator_fleet.values()))
    assert rc == 1
    replicas = {r["replica"]: r for r in doc["replicas"]}
    assert set(replicas) == {"prometheus-k8s-0", "prometheus-k8s-1"}
    for r in replicas.values():
        assert (r["scraper"], r["shards"], r["known"]) == ("monitoring/k8s", 2, True)
        assert sorted(sv["shard"] for sv in r["servers"]) == [0, 1]
        assert {sv["topology"] for sv in r["servers"]} == {"operator"}
    by = pools(doc, NE)
    pool = "serviceMonitor/monitoring/node-exporter/0"
    assert by[("prometheus-k8s-0", pool)]["missing"] == []
    diverged = by[("prometheus-k8s-1", pool)]
    assert names(diverged["missing"]) == dropped_by_regex(N)
    gaps = service(doc, NE)["gaps"]
    assert [(g["replica"], g["missing"]) for g in gaps] == [
        ("prometheus-k8s-1", len(dropped_by_regex(N)))
    ]


def test_a_shard_that_never_answered_makes_its_share_unknown_not_missing(
    testbed: Cluster, operator_fleet: dict[tuple[int, int], ExtraPrometheus], tmp_path: Path
) -> None:
    """Replica 0's second shard is declared in a fleet file but nothing
    listens there: half the cluster is unknown, not a critical gap."""
    shard0 = operator_fleet[(0, 0)]
    dead = procs.free_ports(1)[0]
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "servers:\n"
        f"  - {{name: {shard0.name}, url: '{shard0.url}'}}\n"
        f"  - {{name: prometheus-k8s-shard-1-0, url: 'http://127.0.0.1:{dead}', timeout: 2,\n"
        "      scraper: monitoring/k8s, replica: prometheus-k8s-0, shard: 1, shards: 2}\n"
    )
    rc, doc = audit(testbed, "--prometheus-fleet-file", str(fleet))
    assert rc == 3  # could not judge (coverage_exporter/exit_codes.py)
    assert doc["verdict"].startswith("coverage unknown")
    (pool,) = service(doc, NE)["prometheus"]["pools"]
    assert (pool["known"], pool["missing"], pool["missing_count"]) == (False, None, None)
    assert pool["discovered"] == len(shard0.active("serviceMonitor/monitoring/node-exporter/0"))
    assert pool["discovered"] + pool["unknown"] == N
    assert service(doc, NE)["gaps"] == []


def samples(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def replica_series(m: dict[str, Any], name: str, replica: str) -> list[float]:
    return [v for k, v in m.get(name, {}).items() if dict(k).get("scraper_replica") == replica]


def test_a_shard_down_longer_than_stale_after_stops_covering(
    testbed: Cluster,
    operator_fleet: dict[tuple[int, int], ExtraPrometheus],
    tmp_path: Path,
) -> None:
    port = procs.free_ports(1)[0]
    log = tmp_path / "exporter.log"
    with log.open("wb") as out:
        exporter = subprocess.Popen(
            [
                str(BINARY),
                "serve",
                "--kubeconfig",
                str(testbed.kubeconfig),
                *urls(*operator_fleet.values()),
                "--web.listen-address",
                f"127.0.0.1:{port}",
                "--interval",
                "2",
                "--prometheus-stale-after",
                "8",
                "--prometheus-timeout",
                "5",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    missing, unknown = (
        "scrape_coverage_prometheus_missing_targets",
        "scrape_coverage_prometheus_unknown_targets",
    )
    down = operator_fleet[(0, 1)]
    try:
        eventually(
            lambda: replica_series(samples(url), missing, "prometheus-k8s-0") == [0.0], "coverage"
        )
        down.stop()
        # Within the bound the last good answer still counts...
        m = samples(url)
        assert replica_series(m, missing, "prometheus-k8s-0") == [0.0]
        # ...after it, the replica's share is unknown: no missing figure at all.
        eventually(lambda: replica_series(samples(url), unknown, "prometheus-k8s-0"), "unknown", 60)
        m = samples(url)
        assert replica_series(m, missing, "prometheus-k8s-0") == []
        (value,) = replica_series(m, unknown, "prometheus-k8s-0")
        assert 0 < value < N
        known = m["scrape_coverage_replica_coverage_known"]
        assert known[(("scraper", "monitoring/k8s"), ("scraper_replica", "prometheus-k8s-0"))] == 0
        assert known[(("scraper", "monitoring/k8s"), ("scraper_replica", "prometheus-k8s-1"))] == 1
        # The other replica is still judged, and still diverged.
        assert replica_series(m, missing, "prometheus-k8s-1") == [len(dropped_by_regex(N))]
    finally:
        down.start()
    eventually(
        lambda: replica_series(samples(url), missing, "prometheus-k8s-0") == [0.0],
        "the replica to be known again",
        90,
    )
    exporter.terminate()
    exporter.wait(timeout=30)
    assert "Traceback" not in log.read_text()


# --- 4. after the safe migration: exit 0 ---------------------------------------


def test_after_the_safe_migration_audit_exits_0_at_1200_nodes(
    testbed: Cluster, extras: Callable[..., ExtraPrometheus]
) -> None:
    """Every pool on role endpointslice, the kubelet on Operator-written
    slices: the truncated node-exporter Endpoints is a finding, no gap."""
    prom = extras("migrated")
    prom.write(
        [
            sd_job(testbed, "node-exporter", NE, "metrics", "endpointslice"),
            sd_job(
                testbed,
                "kubelet",
                "kube-system/kubelet-skip-mirror",
                "https-metrics",
                "endpointslice",
            ),
        ],
        {},
    )
    prom.start()
    prom.wait_targets("node-exporter", N)
    prom.wait_targets("kubelet", N)
    rc, doc = audit(testbed, *urls(prom))
    assert rc == 0, [(x["service"], x["gaps"]) for x in doc["services"]]
    assert doc["verdict"] == "full coverage" and doc["gaps"] is False
    ne = service(doc, NE)
    assert ne["endpoints"]["truncated"] is True and ne["gaps"] == []
    assert any("nothing is lost" in f for f in ne["findings"])


# --- 5, 6. selector-less Services and DaemonSet placement ------------------------


@pytest.fixture
def hand_made_etcd(kube: Kube) -> Iterator[list[str]]:
    """kube-system/etcd-members: selector-less, hand-made Endpoints of 3 nodes."""
    members = ["node-0001", "node-0002", "node-0003"]
    ips = s.nodes(N)
    kube.create(
        "/api/v1/namespaces/kube-system/services",
        {
            "metadata": {"name": "etcd-members", "namespace": "kube-system"},
            "spec": {"clusterIP": "None", "ports": [{"name": "metrics", "port": 2381}]},
        },
    )
    kube.put_or_create(
        "/api/v1/namespaces/kube-system/endpoints",
        "etcd-members",
        {
            "metadata": {"name": "etcd-members", "namespace": "kube-system"},
            "subsets": [
                {
                    "addresses": [
                        {"ip": ips[m], "nodeName": m, "targetRef": {"kind": "Node", "name": m}}
                        for m in members
                    ],
                    "ports": [{"name": "metrics", "port": 2381}],
                }
            ],
        },
    )
    yield members
    kube.delete("/api/v1/namespaces/kube-system/services/etcd-members")
    kube.delete("/api/v1/namespaces/kube-system/endpoints/etcd-members")


def test_hand_made_endpoints_expect_the_nodes_they_list(
    testbed: Cluster, hand_made_etcd: list[str]
) -> None:
    def listed() -> dict[str, Any] | None:
        _rc, doc = audit(testbed, "--service", "kube-system/etcd-members")
        etcd = service(doc, "kube-system/etcd-members")
        return etcd if etcd["endpointslices"]["missing_count"] == 0 else None

    etcd = eventually(listed, "the mirrored slices of etcd-members", 60)
    assert (etcd["source"], etcd["expected"]) == ("listed", len(hand_made_etcd))
    assert etcd["endpoints"]["missing_count"] == 0 and etcd["gaps"] == []


def _ds_pod(daemonset: str, node: str) -> str:
    """A pod name as the DaemonSet controller makes them (generateName
    `<name>-` and 5 characters of [a-z0-9]; node-0013 -> edge-agent-n0013):
    pods listed in Table form carry no owner, and the exporter infers it from
    this naming (coverage_exporter/model/owners.py)."""
    return f"{daemonset}-n{node.removeprefix('node-')}"


@pytest.fixture
def edge_daemonset(kube: Kube) -> Iterator[dict[str, Any]]:
    """monitoring/edge-agent: a DaemonSet for the 5 nodes labelled
    pool=edge, with a running pod on 3, a Failed (evicted) pod on the
    4th and none on the 5th."""
    ns, name = "monitoring", "edge-agent"
    edge = [s.node_name(i) for i in range(10, 15)]
    for node in edge:
        kube.patch(f"/api/v1/nodes/{node}", {"metadata": {"labels": {"pool": "edge"}}})
    labels = {"app": name}
    ds = kube.create(
        f"/apis/apps/v1/namespaces/{ns}/daemonsets",
        {
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {"pool": "edge"},
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{"name": "agent", "image": "agent:1"}],
                    },
                },
            },
        },
    ) or kube.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets/{name}")
    kube.request(
        "PATCH",
        f"/apis/apps/v1/namespaces/{ns}/daemonsets/{name}/status",
        {
            "status": {
                "desiredNumberScheduled": 5,
                "currentNumberScheduled": 3,
                "numberMisscheduled": 0,
                "numberReady": 3,
            }
        },
        content_type="application/merge-patch+json",
    )
    owner = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "name": name,
        "uid": ds["metadata"]["uid"],
        "controller": True,
    }
    for node in edge[:4]:
        kube.create(
            f"/api/v1/namespaces/{ns}/pods",
            {
                "metadata": {
                    "name": _ds_pod(name, node),
                    "namespace": ns,
                    "labels": labels,
                    "ownerReferences": [owner],
                },
                "spec": {
                    "nodeName": node,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "agent", "image": "agent:1"}],
                },
            },
        )
    kube.create(
        f"/api/v1/namespaces/{ns}/services",
        {
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": labels, "ports": [{"name": "metrics", "port": 9100}]},
        },
    )
    yield {"edge": edge, "failed": edge[3], "without_pod": edge[4], "ns": ns, "name": name}
    kube.delete(f"/api/v1/namespaces/{ns}/services/{name}")
    for node in edge[:4]:
        kube.delete(f"/api/v1/namespaces/{ns}/pods/{_ds_pod(name, node)}", grace=0)
    kube.delete(f"/apis/apps/v1/namespaces/{ns}/daemonsets/{name}")
    for node in edge:
        kube.patch(f"/api/v1/nodes/{node}", {"metadata": {"labels": {"pool": None}}})


def test_daemonset_nodes_without_a_running_pod_are_named(
    testbed: Cluster, kube: Kube, edge_daemonset: dict[str, Any]
) -> None:
    d = edge_daemonset
    pod = f"/api/v1/namespaces/{d['ns']}/pods/{_ds_pod(d['name'], d['failed'])}"
    eventually(lambda: kube.get(pod)["status"].get("phase") == "Running", "the pods to run", 60)
    # Evicted: the kubelet's own way of failing a pod.
    kube.request(
        "PATCH",
        pod + "/status",
        {"status": {"phase": "Failed", "reason": "Evicted", "conditions": None}},
        content_type="application/merge-patch+json",
    )
    key = f"{d['ns']}/{d['name']}"

    def settled() -> dict[str, Any] | None:
        if kube.get(pod)["status"].get("phase") != "Failed":
            return None
        _rc, doc = audit(testbed, "--service", key)
        svc = service(doc, key)
        return svc if svc["endpoints"] and svc["endpoints"]["ready"] == 3 else None

    svc = eventually(settled, "the Endpoints of the 3 running pods", 90)
    assert (svc["source"], svc["expected"], svc["expected_unnamed"]) == ("daemonset", 5, 0)
    assert names(svc["endpoints"]["missing"]) == {d["failed"], d["without_pod"]}
    # Evicted or never created: no running pod where the DaemonSet should run one.
    assert svc["endpoints"]["causes"] == {"pod_not_scheduled": 2}
