"""Issue #19 items 3 and 4 on the real testbed: the real kube-apiserver and
EndpointSlice mirroring controller, the real Prometheus 3.16 (and 2.53 for
contrast), the audit JSON.

Item 3, address families (prometheus #18192, prometheus-operator #8681): a
kubelet Service as the Operator writes it (headless, selector-less), made
dual-stack IPv6-primary (ipFamilyPolicy PreferDualStack, ipFamilies [IPv6,
IPv4]) and given IPv4-only Endpoints, as Operator releases before 0.93
write them. The real mirroring controller writes the IPv4 slices; 3.16
reads only the IPv6 ones and discovers nothing. Why selector-less: this
apiserver serves one service CIDR (IPv4, testbed/cluster.py), and it takes
an IPv6-primary Service without an IPv6 range only when it is headless and
selector-less (pkg/registry/core/service/storage/alloc.go: "with one
exception on a single stack cluster the user is allowed to create headless
services that has multi families"); a Service with a selector is refused
("ipFamilies[0]: not configured on this cluster", checked below). That is
the shape of #8681 (the kubelet Service) anyway.

Item 4, duplicates and ghosts: the Operator 0.93.0 wrote both address
families of each node into the kubelet Endpoints, so a pool of role
endpoints discovers each kubelet twice (prometheus-operator #8682); stale
Operator slices keep a node that has been deleted (prometheus-operator
#7678). Both are written here as those Operators write them, and read by a
real Prometheus 3.16.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from testbed import scenarios as s
from testbed.cluster import Cluster
from testbed.kube import Kube
from tests.e2e.extra_prometheus import ExtraPrometheus, sd_job

N = s.DEFAULT_NODES
NS = "kube-system"
V6_PRIMARY = "kubelet-ipv6-primary"
TWICE = "kubelet-twice"
STALE = "kubelet-stale"
GHOST = "ghost-0001"
PORT = "https-metrics"
BINARY = Path(sys.executable).parent / "coverage-exporter"
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
ENDPOINTS = f"/api/v1/namespaces/{NS}/endpoints"
SERVICES = f"/api/v1/namespaces/{NS}/services"


def _ipv6(i: int) -> str:
    """A made-up IPv6 address per node (nothing connects to it: every
    scrape goes through the testbed's closed loopback proxy)."""
    return f"fd00:19::{i:x}"


def _service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS, "labels": dict(s.OPERATOR_LABELS)},
        "spec": {
            "clusterIP": "None",
            "ports": [{"name": n, "port": p, "targetPort": p} for n, p in s.KUBELET_PORTS],
            **spec,
        },
    }


def _endpoints(name: str, addresses: list[dict[str, Any]], skip_mirror: bool) -> dict[str, Any]:
    labels = dict(s.OPERATOR_LABELS)
    if skip_mirror:
        labels[s.SKIP_MIRROR] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "subsets": [
            {"addresses": addresses, "ports": [{"name": n, "port": p} for n, p in s.KUBELET_PORTS]}
        ],
    }


def _address(ip: str, node: str, uid: str) -> dict[str, Any]:
    return {"ip": ip, "nodeName": node, "targetRef": {"kind": "Node", "name": node, "uid": uid}}


def _operator_slices(name: str, nodes: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """The Operator's kubelet slices (at most 512 endpoints each)."""
    out = []
    for at in range(0, len(nodes), s.OPERATOR_SLICE_SIZE):
        out.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-{at // s.OPERATOR_SLICE_SIZE}",
                    "namespace": NS,
                    "labels": {
                        **s.OPERATOR_LABELS,
                        s.SERVICE_NAME: name,
                        s.MANAGED_BY: s.BY_OPERATOR,
                    },
                },
                "addressType": "IPv4",
                "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in s.KUBELET_PORTS],
                "endpoints": [
                    {
                        "addresses": [ip],
                        "conditions": {"ready": True},
                        "nodeName": node,
                        "targetRef": {"kind": "Node", "name": node, "uid": uid},
                    }
                    for node, ip, uid in nodes[at : at + s.OPERATOR_SLICE_SIZE]
                ],
            }
        )
    return out


def _nodes(kube: Kube) -> list[tuple[str, str, str]]:
    """(name, InternalIP, uid) of every Node, by name."""
    return s._node_triples(kube.list("/api/v1/nodes"))


def audit(testbed: Cluster, *servers: ExtraPrometheus) -> tuple[int, dict[str, Any]]:
    urls = [a for p in servers for a in ("--prometheus-url", f"{p.name}={p.url}")]
    args = ["audit", "--kubeconfig", str(testbed.kubeconfig), "--log.level", "warn"]
    # Every pool was waited for above (wait_targets), and v3's v6-primary
    # rightly discovers nothing: its server is judged once 30 s old, not 2 min.
    args += ["--prometheus-discovery-grace", "30s"]
    done = subprocess.run(
        [str(BINARY), *args, "--output", "json", *urls],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)


def service(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (svc,) = [x for x in doc["services"] if (x["namespace"], x["service"]) == (NS, name)]
    return svc


def pool(doc: dict[str, Any], name: str, replica: str, scrape_pool: str) -> dict[str, Any]:
    (p,) = [
        p
        for p in service(doc, name)["prometheus"]["pools"]
        if (p["replica"], p["scrape_pool"]) == (replica, scrape_pool)
    ]
    return p


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


@pytest.fixture(scope="module")
def world(
    testbed: Cluster, kube: Kube, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Writes the three Services, starts a Prometheus 3.16 and a 2.53 on
    them, audits once; everything written is removed afterwards."""
    root = tmp_path_factory.mktemp("extra-targets")
    servers = [ExtraPrometheus(root, "v3", "3"), ExtraPrometheus(root, "v2", "2")]
    try:
        nodes = _nodes(kube)
        assert len(nodes) == N
        # Item 3: IPv6-primary, IPv4-only Endpoints, mirrored for real.
        kube.create(
            SERVICES,
            _service(V6_PRIMARY, ipFamilyPolicy="PreferDualStack", ipFamilies=["IPv6", "IPv4"]),
        )
        kube.put_or_create(
            ENDPOINTS,
            V6_PRIMARY,
            _endpoints(V6_PRIMARY, [_address(ip, n, uid) for n, ip, uid in nodes], False),
        )
        # Item 4: each node twice (both families), as Operator 0.93.0 wrote.
        kube.create(SERVICES, _service(TWICE))
        twice = [
            a
            for i, (n, ip, uid) in enumerate(nodes, 1)
            for a in (_address(ip, n, uid), _address(_ipv6(i), n, uid))
        ]
        kube.put_or_create(ENDPOINTS, TWICE, _endpoints(TWICE, twice, True))
        # Item 4: the Operator's slices of a node since deleted, left behind.
        ghost_ip = "10.19.0.1"
        kube.create("/api/v1/nodes", s._node_body(GHOST, ghost_ip))
        ghost = kube.get(f"/api/v1/nodes/{GHOST}")
        stale = [*nodes, (GHOST, ghost_ip, ghost["metadata"]["uid"])]
        kube.create(SERVICES, _service(STALE))
        kube.put_or_create(
            ENDPOINTS,
            STALE,
            _endpoints(STALE, [_address(ip, n, uid) for n, ip, uid in stale], True),
        )
        for body in _operator_slices(STALE, stale):
            kube.create(SLICES, body)
        kube.delete(f"/api/v1/nodes/{GHOST}")
        wait_for("the ghost Node gone", lambda: kube.get_or_none(f"/api/v1/nodes/{GHOST}") is None)

        jobs = [
            sd_job(testbed, "v6-primary", f"{NS}/{V6_PRIMARY}", PORT, "endpointslice"),
            sd_job(testbed, "twice", f"{NS}/{TWICE}", PORT, "endpoints"),
            sd_job(testbed, "stale", f"{NS}/{STALE}", PORT, "endpointslice"),
        ]
        for prom in servers:
            prom.write(jobs, {})
            prom.start()
        v3, v2 = servers
        # 2.53 reads the mirrored IPv4 slices: once it has all of them (the
        # mirroring controller caps at 1000), so has 3.16's informer, which
        # serves "stale" from the same discovery.
        mirrored = N - len(s.mirroring_dropped_nodes(N))
        v2.wait_targets("v6-primary", mirrored, timeout=180)
        v3.wait_targets("stale", N + 1, timeout=180)
        v3.wait_targets("twice", 2 * N, timeout=180)
        assert v3.active("v6-primary") == []
        slices = kube.list(SLICES, labelSelector=f"{s.SERVICE_NAME}={V6_PRIMARY}")
        rc, doc = audit(testbed, *servers)
        figures = {
            (name, p["replica"], p["scrape_pool"]): (
                p["discovered"],
                p["causes"],
                len(p["duplicated"]),
                p["ghosts"],
            )
            for name in (V6_PRIMARY, TWICE, STALE)
            for p in service(doc, name)["prometheus"]["pools"]
        }
        print(f"\naudit exit {rc}; (discovered, causes, duplicated, ghosts) per pool:")
        for key, value in sorted(figures.items()):
            print(f"  {key}: {value}")
        yield doc, {"slices": slices}
    finally:
        for prom in servers:
            prom.stop()
        for name in (V6_PRIMARY, TWICE, STALE):
            kube.delete(f"{SERVICES}/{name}")
            kube.delete(f"{ENDPOINTS}/{name}")
        for body in kube.list(SLICES, labelSelector=f"{s.MANAGED_BY}={s.BY_OPERATOR}"):
            if body["metadata"]["labels"].get(s.SERVICE_NAME) == STALE:
                kube.delete(f"{SLICES}/{body['metadata']['name']}")
        kube.delete(f"/api/v1/nodes/{GHOST}")


def test_the_apiserver_refuses_an_ipv6_primary_service_with_a_selector(kube: Kube) -> None:
    """Why item 3 is tested on a selector-less Service (module docstring)."""
    body = _service("refused", ipFamilyPolicy="PreferDualStack", ipFamilies=["IPv6", "IPv4"])
    body["spec"]["selector"] = {"app": "nothing"}
    with pytest.raises(ApiException) as refused:
        kube.create(SERVICES, body, exist_ok=False)
    assert refused.value.status == 422
    assert "not configured on this cluster" in str(refused.value.body)


def test_ipv4_only_slices_of_an_ipv6_primary_service_are_the_address_family(
    world: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    doc, seen = world
    families = {x["addressType"] for x in seen["slices"] if x.get("endpoints")}
    assert families == {"IPv4"}  # what the real mirroring controller wrote
    in_slices = {e["nodeName"] for x in seen["slices"] for e in x.get("endpoints") or ()}
    capped = s.mirroring_dropped_nodes(N)
    assert in_slices == set(s.nodes(N)) - capped

    svc = service(doc, V6_PRIMARY)
    assert svc["endpointslices"]["families"] == {"IPv4": len(in_slices)}
    # 3.16: nothing discovered; the mirrored nodes are the family's doing,
    # the rest the mirroring cap's.
    v3 = pool(doc, V6_PRIMARY, "v3", "v6-primary")
    assert v3["known"] and v3["discovered"] == 0 and v3["missing_count"] == N
    assert v3["causes"] == {"address_family": len(in_slices), "mirroring_capped": len(capped)}
    by_cause: dict[str, set[str]] = {}
    for m in v3["missing"]:
        by_cause.setdefault(m["cause"], set()).add(m["node"])
    assert by_cause == {"address_family": in_slices, "mirroring_capped": capped}
    # 2.53 reads every family: it misses only what the slices lack.
    v2 = pool(doc, V6_PRIMARY, "v2", "v6-primary")
    assert v2["discovered"] == len(in_slices)
    assert v2["causes"] == {"mirroring_capped": len(capped)}
    assert any("address family" in f for f in svc["findings"]), svc["findings"]


def test_a_kubelet_discovered_twice_in_one_pool_is_named(
    world: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    doc, _ = world
    twice = pool(doc, TWICE, "v3", "twice")
    assert twice["known"] and twice["missing_count"] == 0
    assert twice["duplicated"] == sorted(s.nodes(N))
    assert twice["ghosts"] == []
    assert any("more than once" in f for f in service(doc, TWICE)["findings"])


def test_a_stale_slice_of_a_deleted_node_is_a_ghost(
    world: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    doc, _ = world
    stale = pool(doc, STALE, "v3", "stale")
    assert stale["known"] and stale["missing_count"] == 0
    assert stale["discovered"] == N
    assert stale["ghosts"] == [GHOST]
    assert stale["duplicated"] == []
    assert any(GHOST in f for f in service(doc, STALE)["findings"]), service(doc, STALE)["findings"]
