"""The jsonnet mixin (mixin/): generated from the single sources, rendered
by go-jsonnet (testbed/build.sh jsonnet), equal to the plain rules and
dashboard with its defaults, tunable through _config, and clean under
mixtool's lint rules (tools/mixtool_lint.py: mixtool itself cannot be had
from the Go module proxy here)."""

from __future__ import annotations

import copy
import json
import subprocess
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import generate
from alerts.rules import NORMAL, Tuning
from dashboards import generate as dashboards
from tools import mixin, mixtool_lint
from tools.contract import check_expressions
from tools.contract import promtool as promtool_run

LINT_FILE = mixin.MIXIN / ".lint"


def rules_of(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for g in doc["groups"] for r in g["rules"] if kind in r]


def test_jsonnet_is_go_jsonnet_of_the_pinned_version() -> None:
    from tools.chart import versions

    done = subprocess.run([str(mixin.jsonnet_bin()), "--version"], capture_output=True, text=True)
    version = versions()["JSONNET_VERSION"]
    assert f"interpreter (Go implementation) {version}" in done.stdout + done.stderr


def test_mixin_files_are_committed_and_generated() -> None:
    paths = [str(p) for p in mixin.mixin_files()] + [str(mixin.MIXIN / "mixin.libsonnet")]
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", *paths],
        cwd=mixin.REPO,
        capture_output=True,
        text=True,
    )
    assert tracked.returncode == 0, tracked.stderr
    assert mixin.stale_files() == [], "run python -m tools.mixin"
    assert mixin.main(["--check"]) == 0


def test_check_catches_a_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy_dir = tmp_path / "mixin"
    copy_dir.mkdir()
    for path in mixin.mixin_files():
        (copy_dir / path.name).write_text(path.read_text())
    (copy_dir / "config.libsonnet").write_text(
        (copy_dir / "config.libsonnet").read_text().replace('"6h"', '"7h"')
    )
    monkeypatch.setattr(mixin, "MIXIN", copy_dir)
    assert mixin.stale_files() == [copy_dir / "config.libsonnet"]
    assert mixin.main(["--check"]) == 1


def test_defaults_render_the_plain_rules_and_dashboard() -> None:
    plain = generate.render_rules()
    alerts, recording = mixin.render("prometheusAlerts"), mixin.render("prometheusRules")
    assert rules_of(alerts, "alert") == rules_of(plain, "alert")
    assert rules_of(alerts, "record") == []
    assert rules_of(recording, "record") == rules_of(plain, "record")
    assert [g["name"] for g in alerts["groups"]] == [g["name"] for g in plain["groups"]]
    (name,) = mixin.render("grafanaDashboards")
    assert name == "coverage-exporter.json"
    assert mixin.render("grafanaDashboards")[name] == json.loads(
        dashboards.DASHBOARD_FILE.read_text()
    )


def test_config_tunes_every_figure() -> None:
    tuned = replace(
        NORMAL,
        cluster_label="k8s_cluster",
        exporter_selector='job="monitoring/ce"',
        runbook_base_url="https://runbooks.example.com/ce/",
        critical_missing_share=0.25,
        near_capacity_addresses=800,
        forecast_horizon_days=7,
        forecast_window="12h",
        stale_after_seconds=1800,
        truncated_for="5m",
        missing_warning_for="1h",
        missing_critical_for="20m",
        mirroring_for="6m",
        unreached_for="40m",
        near_capacity_for="2h",
        forecast_for="3h",
        exporter_down_for="7m",
        exporter_absent_for="8m",
        source_down_for="9m",
        stale_for="11m",
        show_multi_cluster=True,
    )
    changed = {f.name for f in fields(Tuning) if getattr(tuned, f.name) != getattr(NORMAL, f.name)}
    assert changed == {f.name for f in fields(Tuning)}
    config = {f.metadata["mixin"]: getattr(tuned, f.name) for f in fields(Tuning)}
    expected = generate.render_rules(tuning=tuned)
    assert rules_of(mixin.render("prometheusAlerts", config), "alert") == rules_of(
        expected, "alert"
    )
    assert rules_of(mixin.render("prometheusRules", config), "record") == rules_of(
        expected, "record"
    )
    board = mixin.render("grafanaDashboards", config)["coverage-exporter.json"]
    assert board == json.loads(dashboards.render(tuned))
    assert board["templating"]["list"][1]["hide"] == 0


def _parse(tmp_path: Path):
    def parse(exprs: list[str]) -> list[str]:
        done = check_expressions(exprs, tmp_path)
        return [] if done.returncode == 0 else [done.stdout + done.stderr]

    return parse


def test_mixtool_lint_is_clean(tmp_path: Path) -> None:
    alerts = mixin.render("prometheusAlerts")
    assert [f for a in rules_of(alerts, "alert") for f in mixtool_lint.alert_findings(a)] == []
    # mixtool parses the rule groups with Prometheus's rulefmt; promtool does
    # the same, with every lint it has, fatal.
    path = tmp_path / "mixin.rules.yml"
    groups = mixin.render("prometheusRules")["groups"] + alerts["groups"]
    path.write_text(yaml.safe_dump({"groups": groups}))
    done = promtool_run("check", "rules", "--lint=all", "--lint-fatal", path)
    assert done.returncode == 0, done.stdout + done.stderr
    for name, board in mixin.render("grafanaDashboards").items():
        assert mixtool_lint.dashboard_findings(name, board, _parse(tmp_path), LINT_FILE) == []


def test_every_exclusion_says_why() -> None:
    excluded = mixtool_lint.exclusions(LINT_FILE)
    assert set(excluded) == {
        "template-job-rule",
        "template-instance-rule",
        "target-job-rule",
        "target-instance-rule",
    }
    assert all(rule["reason"] for rule in excluded.values())


def test_dashboard_lint_catches_what_dashboard_linter_reports(tmp_path: Path) -> None:
    board = copy.deepcopy(json.loads(dashboards.DASHBOARD_FILE.read_text()))
    panels = [p for p in board["panels"] if p["type"] != "row"]
    stat, table, series = (
        next(p for p in panels if p["type"] == kind) for kind in ("stat", "table", "timeseries")
    )
    del table["fieldConfig"]["defaults"]["unit"]
    stat["description"] = ""
    series["datasource"] = {"type": "prometheus", "uid": "prometheus"}
    series["targets"][0]["expr"] = (
        "sum(rate(scrape_coverage_source_errors_total[5m])) + scrape_coverage_cycles_total"
    )
    stat["targets"][0]["expr"] = "sum(up{"
    board["templating"]["list"][2]["refresh"] = 1
    del board["uid"]
    found = mixtool_lint.dashboard_findings("x.json", board, _parse(tmp_path), LINT_FILE)
    rules = sorted({f.split("]")[0].lstrip("[") for f in found if f.startswith("[")})
    assert rules == [
        "panel-datasource-rule",
        "panel-title-description-rule",
        "panel-units-rule",
        "target-counter-agg-rule",
        "target-promql-rule",
        "target-rate-interval-rule",
        "template-on-time-change-reload",
    ]
    assert "dashboard has no UID, please set one for links to work: x.json" in found
    # Without the exclusions, the job/instance rules speak too.
    found = mixtool_lint.dashboard_findings("x.json", board, _parse(tmp_path), tmp_path / "none")
    assert any(f.startswith("[template-job-rule]") for f in found)
