"""Owners that the pod name does not show (issue #19 item 8), on the real
testbed: a DaemonSet placed on 40 labelled nodes whose 25 pods are named
`agent-on-<node>` (not `agent-` + 5 random characters, as its controller
would name them: pods it adopted, or renamed). Their ownerReferences name
the DaemonSet. The pods are read in the Table form (the default), whose
rows carry no owner: the audit must read their owners from their metadata
on the real kube-apiserver and expect the DaemonSet's 40 nodes, naming the
15 without a pod, as it does from the full objects; before issue #19 item
8 it expected "the selected pods" (25) and saw no gap.

The testbed runs no DaemonSet controller: the DaemonSet's status and pods
are written here, as testbed/scenarios.py does for node-exporter. The
truth comes from the nodes labelled and the pods created here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from coverage_exporter.sources.kubernetes.pod_table import OWNER_PARAMS, TABLE_ACCEPT, owner_of
from testbed import scenarios as s
from testbed.cluster import Cluster
from testbed.kube import Kube
from tests.e2e.waiting import eventually

BINARY = Path(sys.executable).parent / "coverage-exporter"
NS = "renamed-owners"
NAME = "agent"
LABELS = {"app": "renamed-agent"}
PLACE = "coverage-exporter.test/renamed-agent"
PLACED, WITH_POD = 40, 25


def audit(testbed: Cluster, *extra: str) -> dict[str, Any]:
    url = testbed.prometheus_urls["prometheus-3"]
    done = subprocess.run(
        [str(BINARY), "audit", "--kubeconfig", str(testbed.kubeconfig), "--log.level", "warn",
         "--prometheus-url", f"prometheus-3={url}", "--service", f"{NS}/{NAME}",
         "--output", "json", *extra],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1, 3), done.stderr  # judged, gaps, or a source unknown
    assert "Traceback" not in done.stderr, done.stderr
    assert "pod owners not confirmed" not in done.stderr, done.stderr
    doc = json.loads(done.stdout)
    (svc,) = [x for x in doc["services"] if (x["namespace"], x["service"]) == (NS, NAME)]
    return svc


@pytest.fixture(scope="module")
def renamed(kube: Kube) -> Iterator[dict[str, list[str]]]:
    """Nodes placed (labelled) and the pods' nodes."""
    placed = list(s.nodes(s.DEFAULT_NODES))[:PLACED]
    with_pod = placed[:WITH_POD]
    kube.parallel(
        lambda n: kube.patch(f"/api/v1/nodes/{n}", {"metadata": {"labels": {PLACE: "yes"}}}),
        placed,
    )
    kube.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    spec = {
        "nodeSelector": {PLACE: "yes"},
        "hostNetwork": True,
        "tolerations": [{"operator": "Exists"}],
        "containers": [{"name": NAME, "image": "registry.example/agent:1",
                        "ports": [{"name": "metrics", "containerPort": 9109,
                                   "hostPort": 9109, "protocol": "TCP"}]}],
    }  # fmt: skip
    ds = kube.create(
        f"/apis/apps/v1/namespaces/{NS}/daemonsets",
        {
            "metadata": {"name": NAME, "namespace": NS, "labels": LABELS},
            "spec": {
                "selector": {"matchLabels": LABELS},
                "template": {"metadata": {"labels": LABELS}, "spec": spec},
            },
        },
    )
    kube.patch(
        f"/apis/apps/v1/namespaces/{NS}/daemonsets/{NAME}/status",
        {"status": {"currentNumberScheduled": WITH_POD, "desiredNumberScheduled": PLACED,
                    "numberAvailable": WITH_POD, "numberReady": WITH_POD,
                    "numberMisscheduled": 0, "updatedNumberScheduled": WITH_POD}},
    )  # fmt: skip
    kube.create(
        f"/api/v1/namespaces/{NS}/services",
        {
            "metadata": {"name": NAME, "namespace": NS, "labels": LABELS},
            "spec": {"selector": LABELS, "clusterIP": "None",
                     "ports": [{"name": "metrics", "port": 9109, "targetPort": "metrics"}]},
        },
    )  # fmt: skip
    owner = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "name": NAME,
        "uid": ds["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }

    def make(node: str) -> None:
        meta = {"name": f"{NAME}-on-{node}", "namespace": NS, "labels": LABELS,
                "ownerReferences": [owner]}  # fmt: skip
        kube.create(f"/api/v1/namespaces/{NS}/pods", {"metadata": meta,
                    "spec": {**spec, "nodeName": node}})  # fmt: skip

    kube.parallel(make, with_pod)

    def addresses() -> int:
        e = kube.get_or_none(f"/api/v1/namespaces/{NS}/endpoints/{NAME}") or {}
        return sum(len(sub.get("addresses") or []) for sub in e.get("subsets") or [])

    eventually(lambda: addresses() == WITH_POD, "the renamed pods Ready in the Endpoints", 180)
    try:
        yield {"placed": placed, "with_pod": with_pod}
    finally:
        kube.delete(f"/api/v1/namespaces/{NS}")
        kube.parallel(
            lambda n: kube.patch(f"/api/v1/nodes/{n}", {"metadata": {"labels": {PLACE: None}}}),
            placed,
        )


def test_the_real_table_with_metadata_carries_the_owner(
    kube: Kube, renamed: dict[str, list[str]]
) -> None:
    """The exporter's one-pod read, as the real apiserver answers it."""
    pod = f"{NAME}-on-{renamed['with_pod'][0]}"
    method, url, headers, _, _ = kube.api.param_serialize(
        "GET", f"/api/v1/namespaces/{NS}/pods",
        query_params=[*OWNER_PARAMS.items(), ("fieldSelector", f"metadata.name={pod}")],
        header_params={"Accept": TABLE_ACCEPT}, auth_settings=["BearerToken"],
    )  # fmt: skip
    answer = kube.api.call_api(method, url, header_params=headers, _request_timeout=60)
    body = answer.read()
    assert answer.status == 200, body
    table = msgspec.json.decode(body)
    assert table["kind"] == "Table" and len(table["rows"]) == 1
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    assert owner_of(body, pod) == ("DaemonSet", NAME)
    assert owner_of(body, "another-pod") is None


def test_pods_named_by_no_daemonset_pattern_still_expect_the_daemonsets_nodes(
    testbed: Cluster, renamed: dict[str, list[str]]
) -> None:
    without_pod = sorted(set(renamed["placed"]) - set(renamed["with_pod"]))
    table = audit(testbed)  # the default pod form: Table rows, owners from metadata
    full = audit(testbed, "--kubernetes-pod-form", "full")  # owners in the objects
    for svc in (table, full):
        assert (svc["source"], svc["expected"]) == ("daemonset", PLACED)
        endpoints = svc["endpoints"]
        assert endpoints["ready"] == WITH_POD
        assert sorted(m["node"] for m in endpoints["missing"]) == without_pod
        assert {m["cause"] for m in endpoints["missing"]} == {"pod_not_scheduled"}
        assert endpoints["causes"] == {"pod_not_scheduled": PLACED - WITH_POD}
    assert table["endpoints"] == full["endpoints"]
