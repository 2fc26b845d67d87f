"""Kubernetes' own events as evidence (issue #19 item 7), on the real
testbed: the real kube-controller-manager's EndpointSlice mirroring
controller caps the 1200-address selector-less kube-system/kubelet
Endpoints and records `TooManyAddressesToMirror` on it; `audit` shows that
event beside its mirroring_capped finding. With the shipped ClusterRole
less its optional `events` rule, the audit says the events were not read
and judges exactly as before.

The truth comes from the objects: the Endpoints' addresses (what the
controller skipped is what is past 1000 in its one subset) and the event
as the apiserver serves it to an admin.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from coverage_exporter.model.evidence import MIRRORING_CONTROLLER
from testbed import scenarios as s
from testbed.cluster import Cluster
from testbed.kube import Kube
from tests.e2e.waiting import eventually

BINARY = Path(sys.executable).parent / "coverage-exporter"
DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy" / "kubernetes.yaml"
KUBELET = f"{s.KUBE_SYSTEM}/{s.KUBELET}"
REASON = "TooManyAddressesToMirror"
ACCOUNT = "evidence-no-events"


def audit(testbed: Cluster, kubeconfig: Path) -> dict[str, Any]:
    url = testbed.prometheus_urls["prometheus-3"]
    done = subprocess.run(
        [str(BINARY), "audit", "--kubeconfig", str(kubeconfig), "--log.level", "warn",
         "--prometheus-url", f"prometheus-3={url}", "--service", KUBELET, "--output", "json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1, 3), done.stderr  # judged, gaps, or a source unknown
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


def kubelet_of(doc: dict[str, Any]) -> dict[str, Any]:
    (svc,) = [x for x in doc["services"] if f"{x['namespace']}/{x['service']}" == KUBELET]
    return svc


def skipped_by_the_controller(kube: Kube) -> int:
    """Addresses past the mirroring cap, per subset, from the object."""
    e = kube.get(f"/api/v1/namespaces/{s.KUBE_SYSTEM}/endpoints/{s.KUBELET}")
    sizes = [
        len(sub.get("addresses") or []) + len(sub.get("notReadyAddresses") or [])
        for sub in e.get("subsets") or []
    ]
    return sum(max(0, n - s.MIRROR_CAP) for n in sizes)


def the_events(kube: Kube) -> list[dict[str, Any]]:
    """The controller's events on the kubelet Endpoints, as an admin reads
    them (one, unless the object changed size while it was written)."""
    selector = f"involvedObject.kind=Endpoints,involvedObject.name={s.KUBELET},reason={REASON}"
    events: list[dict[str, Any]] = []

    def recorded() -> bool:
        events[:] = kube.list(f"/api/v1/namespaces/{s.KUBE_SYSTEM}/events", fieldSelector=selector)
        return bool(events)

    eventually(recorded, "the mirroring controller's event", 120)
    return events


def test_the_controllers_event_is_shown_with_the_mirroring_finding(
    testbed: Cluster, kube: Kube
) -> None:
    skipped = skipped_by_the_controller(kube)
    assert skipped == s.DEFAULT_NODES - s.MIRROR_CAP  # 1200 addresses in one subset
    events = the_events(kube)
    assert any(f"{skipped} addresses were skipped" in e["message"] for e in events)

    doc = audit(testbed, testbed.kubeconfig)
    assert doc["events"] == {"read": "read", "detail": None}
    svc = kubelet_of(doc)
    assert svc["endpointslices"]["mirroring_skipped"] == skipped
    said = svc["evidence"]
    assert len(said) == min(len(events), 3)
    assert {e["message"] for e in said} <= {e["message"] for e in events}
    assert {e["component"] for e in said} == {MIRRORING_CONTROLLER}
    assert {e["component"] for e in said} <= {e["source"]["component"] for e in events}
    assert {(e["finding"], e["reason"]) for e in said} == {("mirroring_capped", REASON)}
    assert skipped in {e["skipped"] for e in said}
    assert all(e["count"] >= 1 and e["last_seen"] for e in said)
    (line,) = [f for f in svc["findings"] if "mirroring controller left" in f]
    assert f"left {skipped} addresses out" in line
    assert f"Kubernetes says so: Warning {REASON}" in line
    assert f"{skipped} addresses were skipped" in line


def test_without_permission_to_list_events_the_audit_says_so(
    testbed: Cluster, kube: Kube, tmp_path: Path
) -> None:
    """The shipped ClusterRole (deploy/kubernetes.yaml) less its optional
    events rule, bound to a ServiceAccount whose token the audit uses."""
    docs = list(yaml.safe_load_all(DEPLOY.read_text()))
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    rules = [r for r in role["rules"] if "events" not in r["resources"]]
    assert len(rules) == len(role["rules"]) - 1
    kube.create(
        f"/api/v1/namespaces/{s.KUBE_SYSTEM}/serviceaccounts",
        {"metadata": {"name": ACCOUNT, "namespace": s.KUBE_SYSTEM}},
    )
    crs = "/apis/rbac.authorization.k8s.io/v1/clusterroles"
    bindings = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    kube.put_or_create(crs, ACCOUNT, {"metadata": {"name": ACCOUNT}, "rules": rules})
    kube.put_or_create(
        bindings,
        ACCOUNT,
        {
            "metadata": {"name": ACCOUNT},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": ACCOUNT},
            "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT,
                          "namespace": s.KUBE_SYSTEM}],
        },
    )  # fmt: skip
    try:
        token = kube.request(
            "POST",
            f"/api/v1/namespaces/{s.KUBE_SYSTEM}/serviceaccounts/{ACCOUNT}/token",
            body={"spec": {"expirationSeconds": 3600}},
        )["status"]["token"]
        kubeconfig = testbed.write_kubeconfig(tmp_path / "kubeconfig")
        config = yaml.safe_load(kubeconfig.read_text())
        config["users"][0]["user"]["token"] = token
        kubeconfig.write_text(yaml.safe_dump(config))

        full = audit(testbed, testbed.kubeconfig)
        limited = audit(testbed, kubeconfig)
        assert limited["events"]["read"] == "forbidden"
        assert "no permission to list events" in limited["events"]["detail"]
        svc, before = kubelet_of(limited), kubelet_of(full)
        assert svc["evidence"] == [] and before["evidence"]
        # Judged exactly as with every permission: the events are evidence only.
        assert (limited["verdict"], limited["gaps"]) == (full["verdict"], full["gaps"])
        for key in ("expected", "endpointslices", "gaps"):
            assert svc[key] == before[key], key
        (line,) = [f for f in svc["findings"] if "mirroring controller left" in f]
        assert line.endswith(f"(Kubernetes events not read: {limited['events']['detail']})")
    finally:
        kube.delete(f"{bindings}/{ACCOUNT}")
        kube.delete(f"{crs}/{ACCOUNT}")
        kube.delete(f"/api/v1/namespaces/{s.KUBE_SYSTEM}/serviceaccounts/{ACCOUNT}")
