"""The Helm chart: lint, render per ci values file, schema-valid, one source of truth.

CI's order (issue 11): helm lint, helm template per ci/*-values.yaml, then
kubeconform on the rendered objects; the server-side dry-run and the real
apply onto the testbed are in tests/e2e/test_helm_testbed.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tools import chart

CI_VALUES = sorted((chart.CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "kps", "monitoring"


def render(*values: Path, release: str = RELEASE, extra: tuple[str, ...] = ()) -> list[dict]:
    text = chart.template(list(values), release, NAMESPACE, *extra)
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    # A Role and RoleBinding per scoped namespace (test_chart_fail_closed.py).
    kinds = [d["kind"] for d in docs if d["kind"] not in ("Role", "RoleBinding")]
    assert len(kinds) == len(set(kinds)), kinds
    return {d["kind"]: d for d in docs}


def test_there_are_ci_values_files() -> None:
    assert {p.name for p in CI_VALUES} >= {
        "default-values.yaml",
        "full-values.yaml",
        "no-operator-values.yaml",
    }


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_helm_lint_strict(values: Path | None) -> None:
    cmd = [str(chart.helm()), "lint", "--strict", str(chart.CHART)]
    if values:
        cmd += ["--values", str(values)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rendered_objects_pass_kubeconform(values: Path, tmp_path: Path) -> None:
    text = chart.template([values], RELEASE, NAMESPACE)
    done = chart.kubeconform(text, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    count = len([d for d in yaml.safe_load_all(text) if d])
    assert f"Valid: {count}, Invalid: 0, Errors: 0, Skipped: 0" in done.stdout


def test_kubeconform_rejects_unknown_fields_and_kinds(tmp_path: Path) -> None:
    # Guards the guard: a typo in a Deployment, in a ServiceMonitor, or a
    # kind with no schema must fail, not pass silently.
    text = chart.template(CI_VALUES[:1], RELEASE, NAMESPACE)
    broken = text.replace("readOnlyRootFilesystem: true", "readOnlyRootFilesytem: true")
    broken = broken.replace("honorLabels: true", "honorLabel: true")
    broken += "---\napiVersion: example.com/v1\nkind: Unknown\nmetadata: {name: x}\n"
    done = chart.kubeconform(broken, tmp_path)
    assert done.returncode != 0
    assert "readOnlyRootFilesytem" in done.stdout
    assert "honorLabel" in done.stdout
    assert "could not find schema for Unknown" in done.stdout


def test_deploy_manifests_are_rendered_from_the_chart() -> None:
    assert chart.DEPLOY.read_text() == chart.render_deploy(), (
        "deploy/kubernetes.yaml is stale: run python -m tools.chart deploy"
    )
    assert chart.main(["deploy", "--check"]) == 0


def test_prometheus_rule_and_dashboard_are_the_generated_files() -> None:
    # With the default values the chart renders exactly the plain files.
    docs = by_kind(render(CI_VALUES[0]))
    rule_file = yaml.safe_load((chart.REPO / "alerts" / "coverage-exporter.rules.yml").read_text())
    assert docs["PrometheusRule"]["spec"] == rule_file
    dashboard = docs["ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = dashboard["data"].values()
    source = (chart.REPO / "dashboards" / "coverage-exporter.json").read_text()
    assert content == source.rstrip("\n")


def test_chart_files_are_committed_and_generated() -> None:
    # The chart renders from git (helm install ./charts/..., Argo CD, Flux):
    # its files/ are committed, and fail this test when they drift from
    # alerts/rules.py and dashboards/generate.py.
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", *map(str, chart.chart_files())],
        cwd=chart.REPO,
        capture_output=True,
        text=True,
    )
    assert tracked.returncode == 0, tracked.stderr
    assert chart.stale_files() == [], "run python -m tools.chart files"
    assert chart.main(["files", "--check"]) == 0


def test_files_check_catches_a_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drifted = tmp_path / chart.RULES_TEMPLATE.name
    drifted.write_text(chart.RULES_TEMPLATE.read_text().replace("for: ", "for:  ", 1))
    monkeypatch.setattr(chart, "RULES_TEMPLATE", drifted)
    assert chart.stale_files() == [drifted]
    assert chart.main(["files", "--check"]) == 1


def test_missing_source_files_fail_the_render(tmp_path: Path) -> None:
    copy = tmp_path / "coverage-exporter"
    shutil.copytree(chart.CHART, copy, ignore=shutil.ignore_patterns("files"))
    done = subprocess.run(
        [str(chart.helm()), "template", "x", str(copy), "--kube-version", "1.36.3"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "python -m tools.chart files" in done.stderr


def test_release_label_reaches_service_monitor_and_rule() -> None:
    docs = by_kind(render(chart.CHART / "ci" / "default-values.yaml"))
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert docs[kind]["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind
    # Without the values, the label is absent: it is the user's to set.
    plain = by_kind(render())
    assert "release" not in plain["ServiceMonitor"]["metadata"]["labels"]


def test_service_monitor_selects_the_service_and_honors_labels() -> None:
    docs = by_kind(render())
    monitor, service = docs["ServiceMonitor"], docs["Service"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    deployment = docs["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_pod_runs_least_privileged() -> None:
    pod = by_kind(render())["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert container["startupProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["resources"]["limits"]["memory"]


def _args(docs: dict[str, dict]) -> list[str]:
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container["args"]


def _mounted(docs: dict[str, dict], path: str) -> str:
    """The Secret a file path in the container comes from."""
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for mount in container["volumeMounts"]:
        if path.startswith(mount["mountPath"] + "/"):
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            return volume["secret"]["secretName"]
    raise AssertionError(f"{path} is on no mounted volume")


def test_servers_and_credentials_become_flags_on_mounted_secrets() -> None:
    docs = by_kind(render(chart.CHART / "ci" / "full-values.yaml"))
    args = _args(docs)
    urls = [a.split("=", 1)[1] for a in args if a.startswith("--prometheus-url=")]
    assert [u.split("=", 1)[0] for u in urls] == ["prom-0", "prom-1", "thanos"]
    flags = dict(a.split("=", 1) for a in args if "=" in a)
    assert _mounted(docs, flags["--prometheus-bearer-token-file"]) == "prometheus-token"
    for flag in ("--prometheus-ca-file", "--prometheus-cert-file", "--prometheus-key-file"):
        assert _mounted(docs, flags[flag]) == "prometheus-tls"
    assert _mounted(docs, flags["--web.config.file"]) == "coverage-exporter-web"
    assert flags["--log.format"] == "json"
    assert flags["--runbook-base-url"] == "https://runbooks.example.com/coverage-exporter/"
    assert "--service=monitoring/node-exporter" in args
    assert {"NetworkPolicy", "PodDisruptionBudget"} <= docs.keys()


def test_every_rendered_flag_is_a_flag_of_serve() -> None:
    from coverage_exporter.cli import build_parser

    for values in CI_VALUES:
        args = _args(by_kind(render(values)))
        assert args[0] == "serve"
        build_parser().parse_args(args)  # exits (SystemExit) on an unknown flag
    # Durations in Prometheus's spelling, read as the exporter reads them.
    args = _args(by_kind(render()))
    assert {"--interval=1m", "--prometheus-timeout=2m"} <= set(args)
    parsed = build_parser().parse_args(args)
    assert (parsed.interval, parsed.prometheus_timeout) == (60.0, 120.0)
    assert parsed.prometheus_full_refresh_interval == 600.0


def test_no_operator_values_render_no_operator_objects() -> None:
    docs = by_kind(render(chart.CHART / "ci" / "no-operator-values.yaml"))
    assert docs.keys() == {"Deployment", "Service"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "coverage-exporter-sa"
    flags = dict(a.split("=", 1) for a in _args(docs) if "=" in a)
    assert flags["--prometheus-basic-auth-user"] == "coverage-exporter"
    assert _mounted(docs, flags["--prometheus-basic-auth-password-file"]) == "prometheus-basic-auth"


def test_basic_auth_without_password_secret_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"passwordSecret\.name is required"):
        chart.template([], RELEASE, NAMESPACE, "--set", "prometheus.basicAuth.username=u")


def test_packaged_chart_carries_the_generated_files(tmp_path: Path) -> None:
    assert chart.main(["package", str(tmp_path)]) == 0
    (package,) = tmp_path.glob("coverage-exporter-*.tgz")
    done = subprocess.run(
        [str(chart.helm()), "template", "x", str(package), "--kube-version", "1.36.3"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    docs = by_kind([d for d in yaml.safe_load_all(done.stdout) if d])
    assert docs["PrometheusRule"]["spec"]["groups"]
    assert json.loads(next(iter(docs["ConfigMap"]["data"].values())))["panels"]


def test_discovery_is_on_by_default_with_no_server_named() -> None:
    docs = render()
    args = _args(by_kind(docs))
    assert "--prometheus-discovery=on" in args
    assert not [a for a in args if a.startswith("--prometheus-url")]
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    watched = [r for r in role["rules"] if "watch" in r["verbs"]
               and r["apiGroups"] == ["monitoring.coreos.com"]]
    assert [r["resources"] for r in watched] == [["prometheuses", "prometheusagents"]]
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]


def test_cluster_wide_discovery_keeps_its_pods_when_the_scope_is_narrowed() -> None:
    """scope.namespaces moves Services, Endpoints and pods to Roles there; the
    servers' pods live elsewhere (monitoring), so discovery's grant stays in
    the ClusterRole."""
    docs = render(extra=("--set", "scope.namespaces={team-a}"))
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                granted.setdefault((g, r), set()).update(rule["verbs"])
    assert granted[("", "pods")] == {"list", "watch"}
    assert granted[("monitoring.coreos.com", "prometheuses")] >= {"list", "watch"}
    assert granted[("monitoring.coreos.com", "prometheusagents")] >= {"list", "watch"}
    assert ("", "services") not in granted
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] == "Role"} == {"team-a"}


def test_discovery_scoped_to_namespaces_gets_roles_there_only() -> None:
    docs = render(chart.CHART / "ci" / "full-values.yaml")
    args = _args(by_kind(docs))
    assert "--prometheus-discovery-namespace=monitoring" in args
    assert "--prometheus-pod-port=9090" in args
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert not [r for r in role["rules"] if r["apiGroups"] == ["monitoring.coreos.com"]
                and "watch" in r["verbs"]]
    assert not [r for r in role["rules"] if "pods" in r["resources"]]  # scope.namespaces too
    roles = [d for d in docs
             if d["kind"] == "Role" and d["metadata"]["name"].endswith("-discovery")]
    assert [(r["metadata"]["namespace"], r["rules"]) for r in roles] == [
        ("monitoring", [{"apiGroups": ["monitoring.coreos.com"],
                         "resources": ["prometheuses", "prometheusagents"],
                         "verbs": ["list", "watch"]},
                        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}])]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"
                  and d["metadata"]["name"].endswith("-discovery")]
    assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]


def test_discovery_off_renders_no_discovery_rbac() -> None:
    docs = by_kind(render(chart.CHART / "ci" / "no-operator-values.yaml"))
    assert "--prometheus-discovery=off" in _args(docs)

