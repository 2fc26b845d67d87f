"""KubernetesSource against a real kube-apiserver (and etcd) of the testbed.

A private control plane in a temporary directory: only etcd and
kube-apiserver, because this test restarts the apiserver and must not
disturb a testbed someone else is using. Objects are created by hand; no
controller runs, so what the source sees is exactly what the test wrote.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from coverage_exporter import logs
from coverage_exporter.model.scope import over_capacity_services
from coverage_exporter.sources.kubernetes.source import KubernetesSource
from testbed.cluster import Cluster, find_binaries
from testbed.kube import Kube

pytestmark = pytest.mark.e2e

NODES = 620  # > 500: the node LIST takes two pages
NS = "monitoring"
SELECTOR = {"app.kubernetes.io/name": "node-exporter"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("k8s-source"))
    # No Prometheus, kwok or controller-manager needed here. The testbed has
    # no public "control plane only" entry point yet, hence the two private
    # calls: binaries checked without Prometheus, then ports/PKI/token/kubeconfig.
    c._binaries = find_binaries(prometheus=())  # type: ignore[attr-defined]
    c._prepare()
    try:
        for name in ("etcd", "kube-apiserver"):
            c.start(name)
        yield c
    finally:
        c.down()


@pytest.fixture(scope="module")
def kube(cluster: Cluster) -> Iterator[Kube]:
    k = Kube(cluster.kubeconfig)
    yield k
    k.close()


async def until(check: Callable[[], Any], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _lines(caplog: pytest.LogCaptureFixture) -> str:
    """The log as the exporter writes it: message and fields."""
    return "\n".join(logs.LogfmtFormatter().format(r) for r in caplog.records)


def node_body(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


def pod_body(name: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": SELECTOR},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "node-exporter:1"}]},
    }


def populate(kube: Kube) -> None:
    kube.parallel(lambda i: kube.create("/api/v1/nodes", node_body(f"node-{i:04d}")), range(NODES))
    kube.request(
        "PATCH",
        "/api/v1/nodes/node-0000/status",
        {
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "10.0.0.1"},
                    {"type": "Hostname", "address": "node-0000"},
                ],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": "2025-11-26T05:00:00Z",
                        "lastTransitionTime": "2025-11-26T05:00:00Z",
                    }
                ],
            }
        },
        content_type="application/strategic-merge-patch+json",
    )
    kube.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    kube.create(
        f"/api/v1/namespaces/{NS}/services",
        {
            "metadata": {"name": "node-exporter", "namespace": NS},
            "spec": {"selector": SELECTOR, "ports": [{"port": 9100}]},
        },
    )
    kube.create(
        f"/api/v1/namespaces/{NS}/endpoints",
        {
            "metadata": {
                "name": "node-exporter",
                "namespace": NS,
                "annotations": {"endpoints.kubernetes.io/over-capacity": "truncated"},
            },
            "subsets": [
                {
                    "addresses": [
                        {"ip": "10.0.0.1", "nodeName": "node-0000"},
                        {"ip": "10.0.0.2", "nodeName": "node-0001"},
                    ],
                    "notReadyAddresses": [{"ip": "10.0.0.3", "nodeName": "node-0002"}],
                    "ports": [{"port": 9100}],
                }
            ],
        },
    )
    kube.create(
        f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices",
        {
            "metadata": {
                "name": "node-exporter-abcde",
                "namespace": NS,
                "labels": {
                    "kubernetes.io/service-name": "node-exporter",
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
            },
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "nodeName": "node-0000", "conditions": {"ready": True}},
                {
                    "addresses": ["10.0.0.9"],
                    "nodeName": "node-0009",
                    "conditions": {"ready": False, "serving": True, "terminating": True},
                },
            ],
            "ports": [{"port": 9100}],
        },
    )
    labels = {"app": "ne"}
    kube.create(
        f"/apis/apps/v1/namespaces/{NS}/daemonsets",
        {
            "metadata": {"name": "node-exporter", "namespace": NS},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": "node-exporter:1"}]},
                },
            },
        },
    )
    kube.request(
        "PATCH",
        f"/apis/apps/v1/namespaces/{NS}/daemonsets/node-exporter/status",
        {
            "status": {
                "desiredNumberScheduled": NODES,
                "currentNumberScheduled": 0,
                "numberMisscheduled": 0,
                "numberReady": 0,
            }
        },
        content_type="application/merge-patch+json",
    )
    for i in range(3):
        kube.create(f"/api/v1/namespaces/{NS}/pods", pod_body(f"ne-{i}", f"node-{i:04d}"))


async def test_list_watch_and_apiserver_restart(
    cluster: Cluster, kube: Kube, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coverage_exporter.kubernetes")
    await asyncio.to_thread(populate, kube)

    # Real config loading: kubeconfig with CA data and a bearer token.
    source = KubernetesSource(kubeconfig=str(cluster.kubeconfig), watch_timeout_seconds=300)
    await source.start()
    try:
        assert await source.wait_synced(60)
        await until(lambda: source.health.up, "source up")

        # Initial LIST: paginated, parsed from real API objects.
        assert source.nodes is not None and source.nodes.last_list_pages == 2
        snap = source.snapshot()
        assert len(snap.nodes) == NODES
        assert snap.nodes["node-0000"].addresses == ("10.0.0.1",)
        assert snap.nodes["node-0000"].ready and not snap.nodes["node-0001"].ready
        key = (NS, "node-exporter")
        assert snap.services[key].selector == SELECTOR
        assert over_capacity_services(snap) == [key]
        ep = snap.endpoints[key]
        assert [a.ip for a in ep.ready] == ["10.0.0.1", "10.0.0.2"]
        assert [a.node_name for a in ep.not_ready] == ["node-0002"]
        (es,) = snap.endpointslices[key]
        terminating = es.endpoints[1]
        assert (terminating.ready, terminating.serving, terminating.terminating) == (
            False,
            True,
            True,
        )
        assert snap.daemonsets[key].desired_number_scheduled == NODES
        # The v1 Endpoints deprecation warning (Kubernetes v1.33+): logged once.
        assert _lines(caplog).count("v1 Endpoints is deprecated") == 1

        # Pods of the in-scope Service, through a labelSelector watch.
        source.set_pod_scope([snap.services[key]])
        await source.ensure_pods_synced(30)
        pods = source.snapshot().pods[key]
        assert sorted(p.name for p in pods) == ["ne-0", "ne-1", "ne-2"]
        assert {p.node_name for p in pods} == {"node-0000", "node-0001", "node-0002"}

        # Steady state: changes arrive through the watches, no LIST.
        lists_before = [r.lists_total for r in source.reflectors()]
        await asyncio.to_thread(kube.create, "/api/v1/nodes", node_body("late-node"))
        await asyncio.to_thread(kube.delete, "/api/v1/nodes/node-0619")
        await asyncio.to_thread(
            kube.create, f"/api/v1/namespaces/{NS}/pods", pod_body("ne-late", "late-node")
        )
        await asyncio.to_thread(kube.delete, f"/api/v1/namespaces/{NS}/pods/ne-0", grace=0)
        await until(
            lambda: (
                "late-node" in source.snapshot().nodes
                and "node-0619" not in source.snapshot().nodes
            ),
            "node changes",
        )
        await until(
            lambda: (
                sorted(p.name for p in source.snapshot().pods[key]) == ["ne-1", "ne-2", "ne-late"]
            ),
            "pod changes",
        )
        assert [r.lists_total for r in source.reflectors()] == lists_before
        assert _lines(caplog).count("v1 Endpoints is deprecated") == 1

        # The apiserver goes away: unhealthy, cache kept.
        await asyncio.to_thread(cluster.stop, "kube-apiserver")
        await until(lambda: not source.health.up, "source down")
        assert source.health.errors_total > 0 and source.health.last_error
        down = source.snapshot()
        assert len(down.nodes) == NODES  # 620 - 1 + 1
        assert key in down.endpoints and key in down.pods

        # ... and comes back: the source recovers by itself.
        await asyncio.to_thread(cluster.start, "kube-apiserver")
        await until(lambda: source.health.up, "source up again", seconds=120)
        await asyncio.to_thread(kube.create, "/api/v1/nodes", node_body("after-restart"))
        await until(lambda: "after-restart" in source.snapshot().nodes, "watch after restart")
        assert len(source.snapshot().nodes) == NODES + 1
    finally:
        await source.stop()
