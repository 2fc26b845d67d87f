"""Chart settings that must keep working when a security control is on
(issue 21 item 16): probes under TLS and basic auth, DNS under an egress
NetworkPolicy, and RBAC no wider than the namespaces the exporter reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from tools import chart

FULL = chart.CHART / "ci" / "full-values.yaml"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
# Namespaced resources the Kubernetes source watches per --namespace
# (sources/kubernetes/source.py); nodes are cluster-scoped.
NAMESPACED = {
    ("", "services"),
    ("", "endpoints"),
    ("", "pods"),
    ("discovery.k8s.io", "endpointslices"),
    ("apps", "daemonsets"),
    # Kubernetes' events as evidence (rbac.events, default on): list only.
    ("", "events"),
}


def render(*args: str, values: tuple[Path, ...] = ()) -> list[dict]:
    text = chart.template(list(values), "kps", "monitoring", *args)
    return [d for d in yaml.safe_load_all(text) if d]


def container(docs: list[dict]) -> dict:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def granted(rules: list[dict]) -> set[tuple[str, str]]:
    return {
        (group, resource)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_probes_use_https_when_the_web_config_turns_tls_on() -> None:
    plain = container(render())
    assert {plain[p]["httpGet"].get("scheme", "HTTP") for p in PROBES} == {"HTTP"}
    tls = container(render("--set", "webConfig.secretName=w", "--set", "webConfig.tls=true"))
    assert {tls[p]["httpGet"]["scheme"] for p in PROBES} == {"HTTPS"}
    assert [tls[p]["httpGet"]["path"] for p in PROBES] == ["/-/healthy", "/-/ready", "/-/healthy"]


def test_service_monitor_scrapes_https_when_tls_is_on() -> None:
    docs = render("--set", "webConfig.secretName=w", "--set", "webConfig.tls=true")
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0]["scheme"] == "https"


def test_egress_policy_lets_the_exporter_resolve_names() -> None:
    (policy,) = [d for d in render(values=(FULL,)) if d["kind"] == "NetworkPolicy"]
    assert "Egress" in policy["spec"]["policyTypes"]
    dns = [
        rule
        for rule in policy["spec"]["egress"]
        if {(p["port"], p["protocol"]) for p in rule.get("ports", [])} >= {(53, "UDP"), (53, "TCP")}
    ]
    assert dns, policy["spec"]["egress"]
    (to,) = dns[0]["to"]
    assert to["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    assert to["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


def test_namespace_scope_grants_namespaced_reads_per_namespace_only() -> None:
    docs = render(values=(FULL,))  # scope.namespaces: [monitoring, kube-system]
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert ("", "nodes") in granted(cluster_role["rules"])
    assert not granted(cluster_role["rules"]) & NAMESPACED
    # Discovery's own Roles (-discovery, prometheus.discovery.namespaces) are
    # apart: test_chart.py checks them.
    scoped = [
        d for d in docs
        if d["kind"] in ("Role", "RoleBinding") and not d["metadata"]["name"].endswith("-discovery")
    ]
    roles = {d["metadata"]["namespace"]: d for d in scoped if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"]: d for d in scoped if d["kind"] == "RoleBinding"}
    assert len(scoped) == 4
    assert roles.keys() == bindings.keys() == {"monitoring", "kube-system"}
    for ns, role in roles.items():
        assert granted(role["rules"]) == NAMESPACED
        assert {v for r in role["rules"] for v in r["verbs"]} == {"list", "watch"}
        binding = bindings[ns]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        (subject,) = binding["subjects"]
        assert (subject["kind"], subject["namespace"]) == ("ServiceAccount", "monitoring")


def test_whole_cluster_scope_keeps_one_cluster_role() -> None:
    docs = render()
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert granted(cluster_role["rules"]) >= NAMESPACED | {("", "nodes")}
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
