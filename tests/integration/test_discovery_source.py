"""sources.kubernetes.discovery against a real kube-apiserver (and etcd): the
Prometheus Operator's own CRDs (its module's jsonnet JSON) appearing and
going while the source runs, the captured CR and pods of the real Operator
(tests/fixtures/captured/operator/discovery) written back, pods changing.

A private control plane (etcd and kube-apiserver only, as
test_kubernetes_source.py): the CRDs are installed and deleted here, which
must not disturb a testbed someone else uses; no controller runs, so what
the source sees is what the test wrote.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coverage_exporter.model.discovery import Discovery
from coverage_exporter.sources.kubernetes.discovery import DiscoverySource
from coverage_exporter.sources.kubernetes.source import KubernetesSource
from testbed import operator as op
from testbed.cluster import Cluster, _versions, find_binaries
from testbed.kube import Kube

pytestmark = pytest.mark.e2e

CAPTURED = Path(__file__).parents[1] / "fixtures" / "captured" / "operator" / "discovery"
NS = "monitoring"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
PROMETHEUSES = f"/apis/monitoring.coreos.com/v1/namespaces/{NS}/prometheuses"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("discovery-source"))
    # Only etcd and kube-apiserver (see test_kubernetes_source.py).
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
    k.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    yield k
    k.close()


@pytest.fixture(scope="module")
def crds() -> dict[str, dict[str, Any]]:
    bodies = op.crd_bodies(_versions()["OPERATOR_VERSION"])
    return {b["spec"]["names"]["plural"]: b for b in bodies}


@pytest.fixture
async def sources(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[DiscoverySource]:
    caplog.set_level(logging.INFO, logger="coverage_exporter.discovery")
    kubernetes = KubernetesSource(kubeconfig=str(cluster.kubeconfig))
    await kubernetes.start()
    assert kubernetes.api is not None
    source = DiscoverySource(crd_check_seconds=0, namespaces=(NS,))
    await source.start(kubernetes.api)
    try:
        yield source
    finally:
        await source.stop()
        await kubernetes.stop()


async def until(source: DiscoverySource, check: Callable[[Discovery], Any], what: str) -> Discovery:
    deadline = time.monotonic() + 30
    while True:
        await source.refresh()
        found = source.discovery()
        if source.synced() and check(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {found}")
        await asyncio.sleep(0.1)


def captured(name: str) -> Any:
    return json.loads((CAPTURED / name).read_text())


def fresh(obj: dict[str, Any]) -> dict[str, Any]:
    """A captured object as a client would create it."""
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    for key in ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation"):
        meta.pop(key, None)
    # The owner (a StatefulSet) does not exist here; no garbage collector runs.
    return obj


def delete_crd(kube: Kube) -> None:
    """Deleted and gone (its finalizer removes the objects first)."""
    path = f"{CRDS}/prometheuses.monitoring.coreos.com"
    kube.delete(path)
    deadline = time.monotonic() + 60
    while kube.get_or_none(path) is not None:
        assert time.monotonic() < deadline, "CRD not deleted"
        time.sleep(0.2)


def write_pod(kube: Kube, pod: dict[str, Any]) -> None:
    status = pod.get("status") or {}
    kube.create(f"/api/v1/namespaces/{NS}/pods", {**fresh(pod), "status": {}})
    name = pod["metadata"]["name"]
    kube.request(
        "PATCH",
        f"/api/v1/namespaces/{NS}/pods/{name}/status",
        {"status": status},
        content_type="application/merge-patch+json",
    )


async def test_crds_appear_and_go_while_running(
    kube: Kube,
    crds: dict[str, dict[str, Any]],
    sources: DiscoverySource,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = sources
    # No CRD: nothing to follow, and nothing wrong.
    found = await until(source, lambda f: True, "first check")
    assert found == Discovery() and source.health.up
    assert source.installed() == {"prometheuses": False, "prometheusagents": False}
    said = [
        r.getMessage() + str(getattr(r, "_log_fields", {})) for r in caplog.get_records("setup")
    ]
    assert any("not installed" in m and "prometheuses.monitoring.coreos.com" in m for m in said)

    # The CRD appears, then the CR and its four pods as the real Operator's were.
    op.install_crds(kube, [crds["prometheuses"]])
    cr = captured("prometheus-k8s.json")
    kube.create(PROMETHEUSES, {**fresh(cr), "status": None})
    pods = captured("pods-k8s.json")["items"]
    for pod in pods:
        write_pod(kube, pod)
    found = await until(source, lambda f: sum(s.readable for s in f.servers) == 4, "four servers")
    assert any(
        "a CRD appeared" in r.getMessage()
        and r._log_fields["crd"] == "prometheuses.monitoring.coreos.com"  # type: ignore[attr-defined]
        for r in caplog.records
    )
    ips = {f"{NS}/{p['metadata']['name']}": p["status"]["podIP"] for p in pods}
    assert {s.name: s.url for s in found.servers} == {
        n: f"http://{ip}:9090" for n, ip in ips.items()
    }
    assert source.health.up

    # A pod goes: its server stays, unknown; a new pod at a new IP is read there.
    victim = pods[1]
    name = victim["metadata"]["name"]
    kube.delete(f"/api/v1/namespaces/{NS}/pods/{name}", grace=0)
    found = await until(
        source, lambda f: any(s.unreadable == "no pod yet" for s in f.servers), "the pod gone"
    )
    assert [s.name for s in found.servers if not s.readable] == [f"{NS}/{name}"]
    moved = copy.deepcopy(victim)
    moved["status"]["podIP"] = moved["status"]["podIPs"][0]["ip"] = "127.255.0.7"
    write_pod(kube, moved)
    found = await until(
        source,
        lambda f: {s.name: s.url for s in f.servers}[f"{NS}/{name}"].startswith(
            "http://127.255.0.7"
        ),
        "the new pod",
    )
    assert all(s.readable for s in found.servers)

    # Scaled to one shard: shard 1's pods leave, not reported as servers.
    kube.patch(f"{PROMETHEUSES}/k8s", {"spec": {"shards": 1}})
    found = await until(source, lambda f: len(f.servers) == 2, "one shard")
    assert len(found.leaving) == 2

    # The CRD goes (and its objects with it): nothing left to judge.
    await asyncio.to_thread(delete_crd, kube)
    found = await until(
        source, lambda f: not source.installed()["prometheuses"], "the CRD noticed gone"
    )
    assert found.servers == ()
    assert "a CRD is no longer served (removed)" in caplog.text
    assert source.health.up
    for pod in pods:
        kube.delete(f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}", grace=0)


async def test_a_malformed_spec_and_a_pod_without_ip(
    kube: Kube, crds: dict[str, dict[str, Any]], sources: DiscoverySource
) -> None:
    """The Operator's CRD schema makes the apiserver refuse `routePrefix: 7`;
    an edited CRD that keeps unknown fields lets it through, and then it is
    one finding, not a crash. (`spec.shards` stays checked even then: the
    CRD's scale subresource reads it.)"""
    crd = copy.deepcopy(crds["prometheuses"])
    for version in crd["spec"]["versions"]:
        version["schema"]["openAPIV3Schema"]["properties"]["spec"] = {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
        }
    op.install_crds(kube, [crd])
    try:
        bad = fresh(captured("prometheus-k8s.json"))
        bad["spec"]["routePrefix"] = 7
        bad["metadata"]["name"] = "bad"
        kube.create(PROMETHEUSES, {**bad, "status": None})
        good = fresh(captured("prometheus-k8s.json"))
        good["spec"].update(shards=1, replicas=1)
        kube.create(PROMETHEUSES, {**good, "status": None})
        pod = fresh(captured("pods-k8s.json")["items"][0])
        kube.create(f"/api/v1/namespaces/{NS}/pods", {**pod, "status": {}})
        found = await until(source := sources, lambda f: f.findings and f.servers, "both CRs")
        assert [f.reason for f in found.findings] == ["malformed_spec"]
        assert "spec.routePrefix is 7, not a string" in found.findings[0].message
        (server,) = found.servers
        assert server.unreadable.startswith("pod has no IP")
        assert source.health.up
    finally:
        delete_crd(kube)
        kube.delete(f"/api/v1/namespaces/{NS}/pods/prometheus-k8s-0", grace=0)
