"""Issue 19 item 5 on the real kube-controller-manager: restarted without
the Endpoints and EndpointSlice mirroring controllers (KEP-4974), after
they had written the 1200-node scenario. The truncated node-exporter
Endpoints and the capped kubelet mirror are then frozen; a Service and a
selector-less Endpoints created afterwards show that the two controllers
do not run. The audit must name what nothing maintains and claim neither
truncation nor the mirroring cap."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from testbed import scenarios
from testbed.cluster import Cluster
from testbed.kube import Kube
from tests.e2e.test_cli_e2e import audit_args

OFF = ("endpoints-controller", "endpointslice-mirroring-controller")
WITNESS = "node-exporter-kep4974"
"""A selector-backed Service created while the Endpoints controller is off."""
UNMIRRORED = "etcd-kep4974"
"""Selector-less Endpoints created while the mirroring controller is off."""


def _witness_service() -> dict:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": WITNESS, "namespace": scenarios.MONITORING},
        "spec": {"clusterIP": "None", "selector": scenarios.NODE_EXPORTER_LABELS,
                 "ports": [{"name": "metrics", "port": 9100, "targetPort": "metrics"}]},
    }  # fmt: skip


def _unmirrored_objects() -> tuple[dict, dict]:
    # Never connected to: the apiserver rejects loopback addresses here,
    # and no scrape job selects this Service.
    meta = {"name": UNMIRRORED, "namespace": scenarios.KUBE_SYSTEM}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"clusterIP": "None", "ports": [{"name": "metrics", "port": 2381}]},
    }
    endpoints = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": meta,
        "subsets": [
            {"addresses": [{"ip": "10.255.0.1"}], "ports": [{"name": "metrics", "port": 2381}]}
        ],
    }
    return service, endpoints  # fmt: skip


@pytest.fixture(scope="module")
def without_controllers(testbed: Cluster, kube: Kube) -> Iterator[None]:
    ne_svcs = f"/api/v1/namespaces/{scenarios.MONITORING}/services"
    ks = f"/api/v1/namespaces/{scenarios.KUBE_SYSTEM}"
    testbed.set_without_controllers(OFF)
    try:
        kube.create(ne_svcs, _witness_service())
        service, endpoints = _unmirrored_objects()
        kube.create(f"{ks}/services", service)
        kube.create(f"{ks}/endpoints", endpoints)

        def slices_written() -> str | None:
            slices = scenarios.list_endpointslices(kube, scenarios.MONITORING, WITNESS)
            have = len(scenarios.slice_addresses(slices))
            return None if have == scenarios.DEFAULT_NODES else f"{have} slice endpoints"

        scenarios.poll(slices_written, "the EndpointSlice controller's slices", 120)
        yield
    finally:
        kube.delete(f"{ne_svcs}/{WITNESS}")
        kube.delete(f"{ks}/endpoints/{UNMIRRORED}")
        kube.delete(f"{ks}/services/{UNMIRRORED}")
        testbed.set_without_controllers(())
        scenarios.wait_converged(kube, scenarios.DEFAULT_NODES)  # for the next modules


def _audit(testbed: Cluster) -> dict:
    run = subprocess.run(audit_args(testbed), capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr  # gaps: the frozen objects lose nodes
    return json.loads(run.stdout)


def test_the_real_controller_manager_without_two_controllers(
    testbed: Cluster, kube: Kube, without_controllers: None
) -> None:
    # The objects as the real controllers left them: still marked.
    ne = scenarios.get_endpoints(kube, scenarios.MONITORING, scenarios.NODE_EXPORTER)
    assert scenarios.is_truncated(ne)
    assert scenarios.get_endpoints(kube, scenarios.MONITORING, WITNESS) is None
    assert not scenarios.list_endpointslices(kube, scenarios.KUBE_SYSTEM, UNMIRRORED)

    doc = _audit(testbed)
    assert doc["controllers"] == {
        "endpoints_down": True,
        "endpoints_witnesses": [f"{scenarios.MONITORING}/{WITNESS}"],
        "mirroring_down": True,
        "mirroring_witnesses": [f"{scenarios.KUBE_SYSTEM}/{UNMIRRORED}"],
    }
    services = {(s["namespace"], s["service"]): s for s in doc["services"]}

    # The frozen, truncated node-exporter Endpoints: no truncation claimed,
    # the 200 nodes it lacks are read from an object no controller maintains.
    svc = services[(scenarios.MONITORING, scenarios.NODE_EXPORTER)]
    dropped = sorted(scenarios.endpoints_dropped_nodes(scenarios.DEFAULT_NODES))
    assert svc["endpoints_unmaintained"] is True
    assert svc["endpoints"]["truncated"] is False
    assert svc["endpoints"]["causes"] == {"unmaintained": len(dropped)}
    assert sorted(m["node"] for m in svc["endpoints"]["missing"]) == dropped
    endpoints_pools = [p for p in svc["prometheus"]["pools"] if p["role"] == "endpoints"]
    assert endpoints_pools
    for pool in endpoints_pools:
        assert pool["causes"] == {"unmaintained": len(dropped)}, pool
    text = " ".join(svc["findings"])
    assert "no Endpoints controller maintains its Endpoints object" in text
    assert "which no controller updates" in text
    assert "Endpoints truncated" not in text and "truncated Endpoints" not in text

    # The kubelet mirror, capped at 1000 before the controller stopped:
    # no cap claimed, the 200 left out are unmaintained.
    kubelet = services[(scenarios.KUBE_SYSTEM, scenarios.KUBELET)]
    left_out = sorted(scenarios.mirroring_dropped_nodes(scenarios.DEFAULT_NODES))
    assert kubelet["slices_unmirrored"] is True
    assert kubelet["endpointslices"]["mirroring_skipped"] is None
    assert kubelet["endpointslices"]["causes"] == {"unmaintained": len(left_out)}
    assert sorted(m["node"] for m in kubelet["endpointslices"]["missing"]) == left_out
    kubelet_text = " ".join(kubelet["findings"])
    assert "no EndpointSlice mirroring controller mirrors" in kubelet_text
    assert "left " not in kubelet_text  # "...controller left N addresses out" (the cap)
    # The Operator-written (here: scenario-written) Endpoints are maintained
    # by their owner, not by the Endpoints controller.
    assert kubelet["endpoints_unmaintained"] is False
