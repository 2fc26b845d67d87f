"""The shipped manifests grant exactly what the Kubernetes source reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from coverage_exporter.sources.kubernetes import discovery, events, operator
from coverage_exporter.sources.kubernetes import source as kubernetes

DEPLOY = Path(__file__).parent.parent.parent / "deploy" / "kubernetes.yaml"


def resource_of(path: str) -> tuple[str, str]:
    """(API group, resource) of a collection path like /apis/apps/v1/daemonsets."""
    parts = path.strip("/").split("/")
    return ("", parts[-1]) if parts[0] == "api" else (parts[1], parts[-1])


def test_cluster_role_grants_list_and_watch_on_every_watched_resource() -> None:
    docs = list(yaml.safe_load_all(DEPLOY.read_text()))
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    paths = [f"{api}/{resource}" for resource, api in kubernetes.API.items()]
    watched = {resource_of(p): {"list", "watch"} for p in paths}
    # Migration readiness lists the Operator's objects each cycle and asks
    # SubjectAccessReviews (sources/operator.py); nothing else, no Secrets.
    listed = {
        resource_of(p): {"list"}
        for p in (operator.PROMETHEUSES, operator.PROMETHEUS_AGENTS, operator.SERVICE_MONITORS)
    }
    listed[("", "namespaces")] = {"list"}
    asked = {resource_of(operator.SAR): {"create"}}
    # Kubernetes' events as evidence (sources/kubernetes/events.py).
    listed[resource_of(events.EVENTS)] = {"list"}
    # Discovery (on by default) lists and watches the Operator's servers'
    # objects and their pods (sources/discovery.py).
    found = {(discovery.GROUP, r): {"list", "watch"} for r in discovery.RESOURCES}
    found[("", "pods")] = {"list", "watch"}
    assert granted == watched | listed | asked | found


def test_exporter_is_scraped_with_honor_labels_and_probed() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all(DEPLOY.read_text())}
    (endpoint,) = docs["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert docs["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
