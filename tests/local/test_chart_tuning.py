"""The rules and dashboard tuned from the chart's values, as a team tunes
kube-prometheus-stack's defaultRules: labels for routing, alerts turned off
by name, the runbook base, the exporter's job selector, thresholds, `for:`
durations and the cluster label. Each is rendered by the real helm."""

from __future__ import annotations

import json
import re
from dataclasses import fields, replace
from pathlib import Path

import pytest
import yaml

from alerts import generate
from alerts.rules import NORMAL, Tuning
from dashboards import generate as dashboards
from tools import chart

RELEASE, NAMESPACE = "kps", "monitoring"


def render(*args: str) -> dict[str, dict]:
    text = chart.template([], RELEASE, NAMESPACE, *args)
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


def rules(*args: str) -> dict:
    return render(*args)["PrometheusRule"]["spec"]


def alerts(doc: dict) -> list[dict]:
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def dashboard(*args: str) -> dict:
    (content,) = render(*args)["ConfigMap"]["data"].values()
    return json.loads(content)


def test_values_defaults_are_the_rules_defaults() -> None:
    # One default per figure: values.yaml states each, and equals alerts/rules.py.
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    for f in fields(Tuning):
        node = values
        for key in f.metadata["chart"].split("."):
            node = node[key]
        if f.name == "runbook_base_url":
            assert node == "", "empty: the exporter's own default"
            continue
        assert node == getattr(NORMAL, f.name), f.metadata["chart"]


def test_every_tunable_reaches_the_rendered_rules() -> None:
    tuned = {
        "clusterLabel": "k8s_cluster",
        "prometheusRule.exporterSelector": 'job="monitoring/ce", namespace="monitoring"',
        "prometheusRule.thresholds.criticalMissingShare": 0.25,
        "prometheusRule.thresholds.nearCapacityAddresses": 800,
        "prometheusRule.thresholds.forecastHorizonDays": 7,
        "prometheusRule.thresholds.forecastWindow": "12h",
        "prometheusRule.thresholds.staleAfterSeconds": 1800,
        "prometheusRule.for.endpointsTruncated": "5m",
        "prometheusRule.for.targetsMissingWarning": "1h",
        "prometheusRule.for.targetsMissingCritical": "20m",
        "prometheusRule.for.mirroringCapped": "6m",
        "prometheusRule.for.daemonSetUnreachedNodes": "40m",
        "prometheusRule.for.nearCapacity": "2h",
        "prometheusRule.for.capacityForecast": "3h",
        "prometheusRule.for.exporterDown": "7m",
        "prometheusRule.for.exporterAbsent": "8m",
        "prometheusRule.for.sourceDown": "9m",
        "prometheusRule.for.exporterStale": "11m",
        "runbookBaseUrl": "https://runbooks.example.com/ce",
    }
    args = [a for k, v in tuned.items() for a in ("--set-json", f"{k}={json.dumps(v)}")]
    by_chart = {f.metadata["chart"]: f.name for f in fields(Tuning)}
    # Every field of Tuning but the dashboard's is set above.
    assert set(by_chart) - set(tuned) == {"dashboard.multiCluster"}
    expected = replace(
        NORMAL,
        **{by_chart[k]: v for k, v in tuned.items() if k != "runbookBaseUrl"},
        runbook_base_url="https://runbooks.example.com/ce/",
    )
    # The chart renders exactly what the generator makes of the same figures.
    assert rules(*args) == generate.render_rules(tuning=expected)


def test_cluster_label_is_in_every_by_and_on_of_the_chart_rules() -> None:
    doc = rules("--set", "clusterLabel=k8s_cluster")
    groupings = [
        (r.get("alert") or r["record"], m)
        for g in doc["groups"]
        for r in g["rules"]
        for m in re.findall(r"\b(?:by|on) \(([^)]*)\)", r["expr"])
    ]
    assert len(groupings) >= 25
    for rule, labels in groupings:
        # `unless on ()` of ScrapeCoverageExporterAbsent matches anything.
        assert labels == "" or labels.split(", ")[0] == "k8s_cluster", (rule, labels)
    # Nowhere the default name is left: not in a grouping, a matcher, a template.
    assert not re.search(r"[(, ]cluster[,=)]|\$labels\.cluster\b", json.dumps(doc))


def test_additional_labels_and_annotations_reach_every_alert() -> None:
    doc = rules(
        "--set", "prometheusRule.additionalRuleLabels.team=sre",
        "--set", "prometheusRule.additionalRuleLabels.severity=page",
        "--set", "prometheusRule.additionalRuleAnnotations.dashboard=https://grafana/d/ce",
    )  # fmt: skip
    found = alerts(doc)
    assert len(found) == len(alerts(generate.render_rules()))
    for alert in found:
        assert alert["labels"]["team"] == "sre"
        # An alert's own severity is not overridden by a routing label.
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["dashboard"] == "https://grafana/d/ce"
        assert alert["annotations"]["summary"]
    records = [r for g in doc["groups"] for r in g["rules"] if "record" in r]
    assert records and all("labels" not in r for r in records)


def test_one_alert_is_disabled_by_name() -> None:
    name = "ScrapeCoverageEndpointsCapacityForecast"
    doc = rules("--set", f"prometheusRule.disabled.{name}=true")
    names = [a["alert"] for a in alerts(doc)]
    assert name not in names
    assert len(names) == len(alerts(generate.render_rules())) - 1
    # The recording rules it read stay: the dashboard reads them too.
    assert len([r for g in doc["groups"] for r in g["rules"] if "record" in r]) == 10
    # Both severities of one alert go together; a group left empty is dropped.
    doc = rules(
        "--set", "prometheusRule.disabled.ScrapeCoverageMigrationUnsafeToSwitch=true",
        "--set", "prometheusRule.disabled.ScrapeCoverageMigrationSwitchedUnsafely=true",
        "--set", "prometheusRule.disabled.ScrapeCoverageTargetsMissing=true",
    )  # fmt: skip
    assert "coverage-exporter.migration" not in [g["name"] for g in doc["groups"]]
    assert "ScrapeCoverageTargetsMissing" not in [a["alert"] for a in alerts(doc)]
    # `false` keeps it.
    kept = rules("--set", f"prometheusRule.disabled.{name}=false")
    assert name in [a["alert"] for a in alerts(kept)]


def test_a_typo_in_disabled_fails_the_render() -> None:
    with pytest.raises(RuntimeError, match="ScrapeCoverageTargetMissing is not an alert"):
        rules("--set", "prometheusRule.disabled.ScrapeCoverageTargetMissing=true")


@pytest.mark.parametrize("base", ["https://runbooks.example.com/ce", "https://x.example/rb/"])
def test_runbook_base_reaches_alerts_and_the_exporter(base: str) -> None:
    docs = render("--set", f"runbookBaseUrl={base}")
    for alert in alerts(docs["PrometheusRule"]["spec"]):
        assert alert["annotations"]["runbook_url"] == (
            f"{base.rstrip('/')}/{alert['alert']}.md"
        )
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert f"--runbook-base-url={base}" in container["args"]


def test_dashboard_follows_cluster_label_selector_and_multi_cluster() -> None:
    plain = dashboard()
    variables = {v["name"]: v for v in plain["templating"]["list"]}
    assert variables["cluster"]["hide"] == 2
    selector = 'job="monitoring/ce"'
    tuned = dashboard(
        "--set", "clusterLabel=k8s_cluster",
        "--set", "dashboard.multiCluster=true",
        "--set-string", f"prometheusRule.exporterSelector={selector}",
    )  # fmt: skip
    variables = {v["name"]: v for v in tuned["templating"]["list"]}
    assert variables["cluster"]["hide"] == 0
    assert variables["cluster"]["query"] == "label_values(scrape_coverage_build_info, k8s_cluster)"
    exprs = [t["expr"] for p in tuned["panels"] for t in p.get("targets", [])]
    assert all('k8s_cluster="$cluster"' in e for e in exprs if not e.startswith("vector("))
    assert f'sum(up{{k8s_cluster="$cluster", {selector}}})' in exprs
    # The generator gives the same dashboard for the same figures.
    assert tuned == json.loads(
        dashboards.render(
            replace(
                NORMAL,
                cluster_label="k8s_cluster",
                show_multi_cluster=True,
                exporter_selector=selector,
            )
        )
    )


def test_the_tuned_rules_pass_promtool(tmp_path: Path) -> None:
    from tests.local.test_rules_lint import run

    doc = rules(
        "--set", "clusterLabel=k8s_cluster",
        "--set", "prometheusRule.thresholds.criticalMissingShare=0.3",
        "--set", "prometheusRule.for.exporterStale=1h",
        "--set", "prometheusRule.additionalRuleLabels.team=sre",
        "--set", "prometheusRule.disabled.ScrapeCoverageUnknown=true",
    )  # fmt: skip
    path = tmp_path / "tuned.rules.yml"
    path.write_text(yaml.safe_dump(doc))
    done = run("check", "rules", "--lint=all", "--lint-fatal", path)
    assert done.returncode == 0, done.stdout + done.stderr
