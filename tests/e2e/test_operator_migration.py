"""The kubelet migration on the real Prometheus Operator v0.85.0, with the
exporter watching.

One testbed for this module (``operator_testbed``): the Operator owns
``kube-system/kubelet``, CR ``monitoring/k8s`` runs 2 shards x 2 replicas of
Prometheus 3.16 from the Secret the Operator writes, 1200 nodes. Tests run in
file order and share it: first the unsafe variants, each undone at its end,
then the safe path (dual-write, check the slices, switch-role,
endpoints-off, add nodes).

At every step the truth is computed here, independently of the exporter:
expected nodes from the Node list (the DaemonSet runs everywhere, the
Operator's kubelet object lists every node), what the Endpoints and
EndpointSlices hold from the objects, and what each replica discovers from
the union of its shards' ``/api/v1/targets``. testbed.migration has already
checked that those targets are what the objects and the controllers' rules
imply. The exporter's ``audit --output json`` must equal it, pool by pool
and replica by replica.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed import migration as mg
from testbed import operator as op
from testbed import scenarios as s
from testbed.cluster import Cluster
from testbed.kube import Kube
from testbed.prometheus import active_targets
from tests.e2e.waiting import eventually

N = s.DEFAULT_NODES
GROWN = 1300
FROZEN_EXTRA = 10  # nodes added while the Endpoints is frozen (endpoints-off first)
EXPORTER = Path(sys.executable).parent / "coverage-exporter"
NE = (s.MONITORING, s.NODE_EXPORTER)
KUBELET = (s.KUBE_SYSTEM, s.KUBELET)
SERVICE_POOLS = {NE: [op.NODE_EXPORTER_POOL], KUBELET: op.KUBELET_POOLS}



# ---- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def okube(operator_testbed: Cluster) -> Iterator[Kube]:
    k = Kube(operator_testbed.kubeconfig)
    yield k
    k.close()


class Exporter:
    def __init__(self, address: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = f"http://{address}"
        self.process = process
        self.log = log

    def samples(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return out


def url_flags(cluster: Cluster) -> list[str]:
    flags = ["--kubeconfig", str(cluster.kubeconfig), "--log.level", "warn"]
    for name, url in cluster.operator_prometheus_urls.items():
        flags += ["--prometheus-url", f"{name}={url}"]
    return flags


@pytest.fixture(scope="module")
def exporter(operator_testbed: Cluster, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Exporter]:
    """`serve` on the four servers, scraped by the rules Prometheus."""
    log = tmp_path_factory.mktemp("operator-exporter") / "exporter.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(EXPORTER), "serve", *url_flags(operator_testbed),
             "--web.listen-address", operator_testbed.exporter_address,
             "--interval", "3", "--prometheus-full-refresh-interval", "0",
             # Each step changes the CR; the default re-reads it every 300 s.
             "--operator-refresh-interval", "3"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    exp = Exporter(operator_testbed.exporter_address, process, log)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(exp.url + "/-/ready", timeout=5) as r:
                return r.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    try:
        eventually(ready, "the exporter to be ready", 180)
        yield exp
    finally:
        process.terminate()
        process.wait(timeout=30)


def audit(cluster: Cluster) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [str(EXPORTER), "audit", *url_flags(cluster), "--output", "json"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


# ---- the truth, from the objects and the servers ------------------------------------------


@dataclass
class Truth:
    nodes: dict[str, str]  # name -> InternalIP
    endpoints: dict[tuple[str, str], set[str] | None]  # nodes in the Endpoints object
    slices: dict[tuple[str, str], dict[str, set[str]]]  # managed-by -> nodes in slices
    replicas: dict[str, dict[int, set[str]]]  # pool -> replica -> nodes discovered
    per_pod: dict[str, dict[str, int]]  # pod -> pool -> active targets

    def missing(self, found: set[str]) -> set[str]:
        return set(self.nodes) - found


def truth(kube: Kube, targets: mg.Targets) -> Truth:
    nodes = {n["metadata"]["name"]: a["address"] for n in kube.list("/api/v1/nodes")
             for a in n["status"]["addresses"] if a["type"] == "InternalIP"}
    by_ip = {ip: name for name, ip in nodes.items()}
    endpoints: dict[tuple[str, str], set[str] | None] = {}
    slices: dict[tuple[str, str], dict[str, set[str]]] = {}
    for ns, name in SERVICE_POOLS:
        ep = s.get_endpoints(kube, ns, name)
        endpoints[(ns, name)] = (
            None if ep is None else {by_ip[a["ip"]] for a in s.endpoints_addresses(ep)})
        per: dict[str, set[str]] = {}
        for sl in s.list_endpointslices(kube, ns, name):
            owner = sl["metadata"]["labels"].get(s.MANAGED_BY, "")
            per.setdefault(owner, set()).update(
                by_ip[a] for e in sl.get("endpoints") or [] for a in e["addresses"])
        slices[(ns, name)] = per
    replicas = {
        pool: {r: {by_ip[a.rsplit(":", 1)[0]] for a in mg.replica_union(targets, r)[pool]}
               for r in range(op.REPLICAS)}
        for pool in op.POOLS
    }
    per_pod = {pod: {pool: len(a) for pool, a in pools.items()} for pod, pools in targets.items()}
    return Truth(nodes, endpoints, slices, replicas, per_pod)


def names(missing: list[dict[str, str]]) -> set[str]:
    return {m["node"] for m in missing}


def service(doc: dict[str, Any], ns: str, name: str) -> dict[str, Any]:
    (svc,) = [x for x in doc["services"] if (x["namespace"], x["service"]) == (ns, name)]
    return svc


def replica_names(doc: dict[str, Any]) -> dict[int, str]:
    """The audit's name of each replica, checked against the topology the
    Operator's pods imply: 2 replicas of the CR, each the union of 2 shards."""
    by_servers = {frozenset(sv["server"] for sv in r["servers"]): r for r in doc["replicas"]}
    out = {}
    for r in range(op.REPLICAS):
        members = frozenset(p.name for p in op.replica_pods(r))
        entry = by_servers.get(members)
        assert entry is not None, (r, doc["replicas"])
        assert entry["scraper"] == f"{op.MONITORING}/{op.NAME}" and entry["shards"] == op.SHARDS
        assert {sv["server"]: sv["shard"] for sv in entry["servers"]} == {
            p.name: p.shard for p in op.replica_pods(r)}
        out[r] = entry["replica"]
    assert len(doc["replicas"]) == op.REPLICAS
    return out


def assert_audit_equals(doc: dict[str, Any], t: Truth, role: str) -> None:
    """Every number and missing-node name of the audit against the truth:
    the Kubernetes stages per Service, and each pool per replica (replicas
    judged on their own, the shards of one replica as a union)."""
    assert doc["complete"], doc["sources"]
    assert doc["nodes"]["ready"] == len(t.nodes)
    replica = replica_names(doc)
    for (ns, name), pools in SERVICE_POOLS.items():
        svc = service(doc, ns, name)
        assert svc["expected"] == len(t.nodes), (name, svc["source"])
        ep = t.endpoints[(ns, name)]
        if ep is not None:
            assert svc["endpoints"]["ready"] == len(ep), name
            assert names(svc["endpoints"]["missing"]) == t.missing(ep), name
        counts = {e["managed_by"]: e["count"] for e in svc["endpointslices"]["endpoints"]}
        assert counts == {m: len(n) for m, n in t.slices[(ns, name)].items()}, name
        in_slices = set().union(*t.slices[(ns, name)].values())
        assert names(svc["endpointslices"]["missing"]) == t.missing(in_slices), name
        per_server = {
            (x["server"], x["scrape_pool"]): 0 for x in svc["prometheus"]["targets"]}
        for x in svc["prometheus"]["targets"]:
            per_server[(x["server"], x["scrape_pool"])] += x["count"]
        entries = {(p["scrape_pool"], p["replica"]): p for p in svc["prometheus"]["pools"]}
        for pool in pools:
            for pod in op.POD_NAMES:
                assert per_server.get((pod, pool), 0) == t.per_pod[pod][pool], (pod, pool)
            for r in range(op.REPLICAS):
                p = entries.get((pool, replica[r]))
                assert p is not None, f"no verdict for {pool} on replica {replica[r]}"
                found = t.replicas[pool][r]
                assert (p["role"], p["meant"], p["known"], p["unknown"]) == (
                    role, True, True, 0), (pool, r, p)
                assert p["discovered"] == len(found), (pool, r)
                assert names(p["missing"]) == t.missing(found), (pool, r)
                assert p["missing_count"] == len(t.missing(found)), (pool, r)


def readiness(doc: dict[str, Any]) -> dict[str, Any]:
    (cr,) = [m for m in doc["migration"] if (m["namespace"], m["name"]) == (op.MONITORING,
                                                                           op.NAME)]
    return cr


# ---- alerts through the real Alertmanager ------------------------------------------------


def alert_states(cluster: Cluster, alertname: str) -> dict[tuple[tuple[str, str], ...], str]:
    """Latest status per label set, as the webhook received them."""
    out: dict[tuple[tuple[str, str], ...], str] = {}
    if not cluster.webhook_log.exists():
        return out
    for line in cluster.webhook_log.read_text().splitlines():
        for a in json.loads(line).get("alerts", []):
            if a["labels"].get("alertname") == alertname:
                out[tuple(sorted(a["labels"].items()))] = a["status"]
    return out


def firing(cluster: Cluster, alertname: str, **match: str) -> list[dict[str, str]]:
    return [dict(k) for k, st in alert_states(cluster, alertname).items()
            if st == "firing" and all(dict(k).get(x) == v for x, v in match.items())]


def cr_firing(cluster: Cluster, alertname: str) -> list[dict[str, str]]:
    """Firing migration alerts of the CR monitoring/k8s."""
    return firing(cluster, alertname, namespace=op.MONITORING, name=op.NAME)


def all_resolved(cluster: Cluster, alertname: str) -> bool:
    return set(alert_states(cluster, alertname).values()) <= {"resolved"}


# ---- the scenario --------------------------------------------------------------------------


def test_start_operator_defaults(operator_testbed: Cluster, okube: Kube, exporter: Exporter
                                 ) -> None:
    """--kubelet-endpoints=true alone, role Endpoints: node-exporter is cut
    to 1000 by the endpoints controller, the kubelet's full Endpoints is
    mirrored into one capped slice no pool reads yet."""
    c = operator_testbed
    targets = mg.settle(c, okube)
    ep = s.get_endpoints(okube, *KUBELET)
    assert s.SKIP_MIRROR not in (ep["metadata"].get("labels") or {})
    assert len(s.endpoints_addresses(ep)) == N
    mirrored = s.list_endpointslices(okube, *KUBELET, s.BY_MIRRORING)
    assert len(s.slice_addresses(mirrored)) == s.MIRROR_CAP
    t = truth(okube, targets)
    for r in range(op.REPLICAS):
        assert t.replicas[op.NODE_EXPORTER_POOL][r] == s.endpoints_kept_nodes(N)
        assert all(t.replicas[p][r] == set(s.nodes(N)) for p in op.KUBELET_POOLS)
    # Shards split each pool; neither is empty.
    assert all(0 < t.per_pod[p][op.NODE_EXPORTER_POOL] < 1000 for p in op.POD_NAMES)
    rc, doc = audit(c)
    assert rc == 1
    assert_audit_equals(doc, t, "endpoints")
    r = readiness(doc)
    assert (r["service_discovery_role"], r["kubelet_state"], r["next_step"],
            r["endpointslice_rbac"]) == ("Endpoints", "mirrored_capped", "dual-write", True)
    # The Endpoints stage's gap (no scrape_pool label), and each replica's.
    eventually(lambda: firing(c, "ScrapeCoverageEndpointsTruncated", service=s.NODE_EXPORTER,
                              stage="endpoints"),
               "ScrapeCoverageEndpointsTruncated for node-exporter", 120)
    eventually(
        lambda: {a.get("scraper_replica") for a in firing(
            c, "ScrapeCoverageTargetsMissing", severity="critical",
            scrape_pool=op.NODE_EXPORTER_POOL)} == set(replica_names(doc).values()),
        "ScrapeCoverageTargetsMissing for node-exporter on each replica", 60)
    eventually(lambda: cr_firing(c, "ScrapeCoverageMigrationUnsafeToSwitch"),
               "ScrapeCoverageMigrationUnsafeToSwitch for monitoring/k8s", 60)
    # The capped mirror is a finding, not a gap, while no pool reads it
    # (same `for:` as the two above, which have fired by now).
    assert not firing(c, "ScrapeCoverageEndpointSliceMirroringCapped")
    assert not firing(c, "ScrapeCoverageTargetsMissing", service=s.KUBELET)


def test_unsafe_switch_role_before_operator_slices(operator_testbed: Cluster, okube: Kube,
                                                   exporter: Exporter) -> None:
    """Role EndpointSlice while the kubelet has only mirrored slices: every
    kubelet pool loses exactly what the mirroring controller cut."""
    c = operator_testbed
    targets = mg.set_role(c, okube, "EndpointSlice")
    try:
        t = truth(okube, targets)
        for r in range(op.REPLICAS):
            for pool in op.KUBELET_POOLS:
                assert t.missing(t.replicas[pool][r]) == s.mirroring_dropped_nodes(N), pool
            assert t.replicas[op.NODE_EXPORTER_POOL][r] == set(s.nodes(N))
        rc, doc = audit(c)
        assert rc == 1
        assert_audit_equals(doc, t, "endpointslice")
        r = readiness(doc)
        assert (r["service_discovery_role"], r["next_step"], r["safe_now"]) == (
            "EndpointSlice", "dual-write", False)
        eventually(
            lambda: {a["scrape_pool"] for a in firing(c, "ScrapeCoverageTargetsMissing",
                                                      severity="critical")}
            >= set(op.KUBELET_POOLS),
            "ScrapeCoverageTargetsMissing (critical) for every kubelet pool", 120)
        eventually(lambda: firing(c, "ScrapeCoverageEndpointSliceMirroringCapped",
                                  service=s.KUBELET), "mirroring capped for kubelet", 60)
        eventually(lambda: cr_firing(c, "ScrapeCoverageMigrationSwitchedUnsafely"),
                   "ScrapeCoverageMigrationSwitchedUnsafely for monitoring/k8s", 60)
    finally:
        mg.set_role(c, okube, "Endpoints")


def test_unsafe_prometheus_without_endpointslice_rbac(operator_testbed: Cluster, okube: Kube,
                                                      exporter: Exporter) -> None:
    """The CR's ServiceAccount loses its endpointslices rule: nothing changes
    under role Endpoints, and after the switch every pool discovers
    nothing; Prometheus says why only in its log."""
    c = operator_testbed
    targets = mg.set_endpointslice_rbac(c, okube, allowed=False)
    try:
        t = truth(okube, targets)
        assert all(t.replicas[p][0] == set(s.nodes(N)) for p in op.KUBELET_POOLS)
        targets = mg.set_role(c, okube, "EndpointSlice")
        t = truth(okube, targets)
        assert all(not t.replicas[p][r] for p in op.POOLS for r in range(op.REPLICAS))
        log = c.log_file(op.POD_NAMES[0]).read_text()
        assert "endpointslices.discovery.k8s.io is forbidden" in log
        rc, doc = audit(c)
        assert rc == 1
        assert readiness(doc)["endpointslice_rbac"] is False
        assert readiness(doc)["safe_now"] is False
        assert_audit_equals(doc, t, "endpointslice")
        eventually(
            lambda: {a["scrape_pool"] for a in firing(c, "ScrapeCoverageTargetsMissing",
                                                      severity="critical")} >= set(op.POOLS),
            "ScrapeCoverageTargetsMissing (critical) for every pool", 120)
        eventually(lambda: cr_firing(c, "ScrapeCoverageMigrationSwitchedUnsafely"),
                   "ScrapeCoverageMigrationSwitchedUnsafely for monitoring/k8s", 60)
    finally:
        mg.set_role(c, okube, "Endpoints")
        mg.set_endpointslice_rbac(c, okube, allowed=True)


def test_unsafe_endpoints_off_first(operator_testbed: Cluster, okube: Kube,
                                    exporter: Exporter) -> None:
    """Straight to the last step's flags: the Endpoints is frozen without
    skip-mirror, so role Endpoints never sees a node added afterwards."""
    c = operator_testbed
    mg.set_kubelet_flags(c, okube, *op.KUBELET_FLAGS["endpoints-off"])
    try:
        targets = mg.scale(c, okube, N + FROZEN_EXTRA)
        new = set(s.nodes(N + FROZEN_EXTRA)) - set(s.nodes(N))
        ep = s.get_endpoints(okube, *KUBELET)
        assert s.SKIP_MIRROR not in (ep["metadata"].get("labels") or {})
        t = truth(okube, targets)
        assert t.missing(t.endpoints[KUBELET] or set()) == new
        # No fight (seen here; the notes expected one by code reading): the
        # operator adopts the mirrored slice, rewrites it identically, and
        # puts every other node into slices of its own.
        mirrored = set(s.nodes(N)) - s.mirroring_dropped_nodes(N)
        assert t.slices[KUBELET] == {s.BY_MIRRORING: mirrored,
                                     s.BY_OPERATOR: set(s.nodes(N + FROZEN_EXTRA)) - mirrored}
        for r in range(op.REPLICAS):
            for pool in op.KUBELET_POOLS:
                assert t.missing(t.replicas[pool][r]) == new, pool
        rc, doc = audit(c)
        assert rc == 1
        assert_audit_equals(doc, t, "endpoints")
        assert readiness(doc)["kubelet_state"] == "endpoints_frozen"
    finally:
        mg.set_kubelet_flags(c, okube, *op.KUBELET_FLAGS["start"])
        # The operator's slices (adopted from the mirror, or its own) stay
        # behind when slices are turned off; remove them as a person would.
        for sl in s.list_endpointslices(okube, *KUBELET, s.BY_OPERATOR):
            okube.delete(f"/apis/discovery.k8s.io/v1/namespaces/{s.KUBE_SYSTEM}/endpointslices/"
                         f"{sl['metadata']['name']}")
        mg.scale(c, okube, N)


def test_safe_dual_write_then_check_the_slices(operator_testbed: Cluster, okube: Kube,
                                               exporter: Exporter) -> None:
    c = operator_testbed
    targets = mg.migrate(c, okube, "dual-write")
    ep = s.get_endpoints(okube, *KUBELET)
    assert ep["metadata"]["labels"][s.SKIP_MIRROR] == "true"
    assert len(s.endpoints_addresses(ep)) == N
    slices = s.list_endpointslices(okube, *KUBELET)
    assert {x["metadata"]["labels"][s.MANAGED_BY] for x in slices} == {s.BY_OPERATOR}
    assert s.slice_addresses(slices) == set(s.nodes(N).values())
    assert sorted(len(x["endpoints"]) for x in slices) == [176, 512, 512]
    failed = op.metric(op.metrics(c.operator_port), "prometheus_operator_node_syncs_failed_total",
                       resource="endpointslice") or 0
    time.sleep(2 * 5)  # two --kubelet-sync-period
    assert (op.metric(op.metrics(c.operator_port), "prometheus_operator_node_syncs_failed_total",
                      resource="endpointslice") or 0) == failed
    t = truth(okube, targets)
    # Prometheus, still on role Endpoints, is unaffected.
    for r in range(op.REPLICAS):
        assert all(t.replicas[p][r] == set(s.nodes(N)) for p in op.KUBELET_POOLS)
    rc, doc = audit(c)
    assert rc == 1  # node-exporter is still read through its truncated Endpoints
    assert_audit_equals(doc, t, "endpoints")
    r = readiness(doc)
    assert (r["kubelet_state"], r["next_step"]) == ("operator_slices", "switch-role")


def test_safe_switch_role(operator_testbed: Cluster, okube: Kube, exporter: Exporter) -> None:
    c = operator_testbed
    targets = mg.migrate(c, okube, "switch-role")
    t = truth(okube, targets)
    for r in range(op.REPLICAS):
        assert all(t.replicas[p][r] == set(s.nodes(N)) for p in op.POOLS)
    rc, doc = audit(c)
    assert_audit_equals(doc, t, "endpointslice")
    assert rc == 0, [svc["findings"] for svc in doc["services"]]
    assert readiness(doc)["next_step"] == "endpoints-off"


def test_safe_endpoints_off_is_green_at_1200(operator_testbed: Cluster, okube: Kube,
                                             exporter: Exporter) -> None:
    c = operator_testbed
    targets = mg.migrate(c, okube, "endpoints-off")
    ep = s.get_endpoints(okube, *KUBELET)
    assert ep is not None and ep["metadata"]["labels"][s.SKIP_MIRROR] == "true"  # frozen
    t = truth(okube, targets)
    rc, doc = audit(c)
    assert_audit_equals(doc, t, "endpointslice")
    for alert in ("ScrapeCoverageEndpointsTruncated", "ScrapeCoverageTargetsMissing",
                  "ScrapeCoverageEndpointSliceMirroringCapped",
                  "ScrapeCoverageMigrationUnsafeToSwitch",
                  "ScrapeCoverageMigrationSwitchedUnsafely"):
        eventually(lambda alert=alert: all_resolved(c, alert), f"{alert} to resolve", 120)
    assert rc == 0, [svc["findings"] for svc in doc["services"]]


def test_safe_nodes_added_after_the_migration(operator_testbed: Cluster, okube: Kube,
                                              exporter: Exporter) -> None:
    c = operator_testbed
    frozen = s.get_endpoints(okube, *KUBELET)
    targets = mg.scale(c, okube, GROWN)
    ep = s.get_endpoints(okube, *KUBELET)
    assert ep["metadata"]["resourceVersion"] == frozen["metadata"]["resourceVersion"]
    slices = s.list_endpointslices(okube, *KUBELET)
    assert s.slice_addresses(slices) == set(s.nodes(GROWN).values())
    # No rebalancing: new nodes fill the slice with room, then a new one.
    assert sorted(len(x["endpoints"]) for x in slices) == [276, 512, 512]
    t = truth(okube, targets)
    for r in range(op.REPLICAS):
        assert all(t.replicas[p][r] == set(s.nodes(GROWN)) for p in op.POOLS)
    rc, doc = audit(c)
    assert_audit_equals(doc, t, "endpointslice")
    assert rc == 0, [svc["findings"] for svc in doc["services"]]
    r = readiness(doc)
    assert (r["kubelet_state"], r["next_step"]) == ("endpoints_frozen", "done")


def test_nothing_leaves_loopback(operator_testbed: Cluster) -> None:
    """Every operator-generated job scrapes through the loopback sink, and no
    process (the supervised operator included) holds a non-loopback peer."""
    c = operator_testbed
    for url in c.operator_prometheus_urls.values():
        for pool in (op.NODE_EXPORTER_POOL, op.KUBELET_POOLS[0]):
            errors = eventually(
                lambda url=url, pool=pool: {t["lastError"] for t in active_targets(url, pool)
                                            if t["lastError"]}, f"{pool} scraped once", 90)
            assert all("proxyconnect" in e and "127.0.0.1:1" in e for e in errors), errors
    for _ in range(3):
        assert c.non_loopback_peers() == {}
        time.sleep(1)
