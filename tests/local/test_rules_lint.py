"""Rule lint in the spirit of pint and mixtool, with what can be had here.

pint cannot be installed (the module proxy refuses it), so:
- promtool from the Prometheus 3 build (testbed/build.sh promtool) checks the
  rule files with every lint it has, fatal, and runs the rule unit tests
  under Prometheus 3's PromQL;
- mixtool cannot be installed either (the proxy answers 403 for
  github.com/monitoring-mixins/mixtool, and for grafana/dashboard-linter it
  runs): its alert guidelines are applied here with its own regular
  expressions (pkg/mixer/lint.go), on the plain rules and on the mixin
  (tests/local/test_mixin.py);
- pint's online checks (does each selector return series?) are the e2e
  tests that run every rule and panel query against the testbed's real
  Prometheus (tests/e2e/test_exporter_e2e.py, test_multicluster_e2e.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from alerts import generate
from alerts.rules import RUNBOOK_BASE_URL
from coverage_exporter import runbooks
from tools import chart, mixtool_lint

REPO = chart.REPO
RUNBOOKS = REPO / "docs" / "runbooks"
RULE_TESTS = sorted((REPO / "tests" / "rules").glob("*.test.yml"))


def promtool3() -> Path:
    return chart.tool("promtool", "PROMETHEUS3_VERSION")


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool3()), *map(str, args)], capture_output=True, text=True, timeout=300
    )


def alerts(doc: dict | None = None) -> list[dict]:
    doc = doc or generate.render_rules()
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_is_prometheus_3() -> None:
    done = run("--version")
    version = chart.versions()["PROMETHEUS3_VERSION"]
    assert f"promtool, version {version}" in done.stdout + done.stderr


def test_rule_files_pass_every_lint_fatally(tmp_path: Path) -> None:
    fast = tmp_path / "fast.rules.yml"
    fast.write_text(generate.to_yaml(generate.render_rules(fast=True)))
    # The chart's PrometheusRule, as the Operator would write it to a rule file.
    docs = yaml.safe_load_all(chart.template([], "kps", "monitoring"))
    (rule,) = [d for d in docs if d and d["kind"] == "PrometheusRule"]
    from_chart = tmp_path / "chart.rules.yml"
    from_chart.write_text(yaml.safe_dump(rule["spec"]))
    files = [generate.ALERTS_DIR / generate.RULES_FILE, fast, from_chart]
    done = run("check", "rules", "--lint=all", "--lint-fatal", *files)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(files)


def test_lint_fatal_catches_a_duplicate_rule(tmp_path: Path) -> None:
    doc = generate.render_rules()
    doc["groups"][0]["rules"].append(dict(doc["groups"][0]["rules"][0]))
    path = tmp_path / "dup.rules.yml"
    path.write_text(yaml.safe_dump(doc))
    done = run("check", "rules", "--lint=all", "--lint-fatal", path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "duplicate" in (done.stdout + done.stderr).lower()


def test_rule_unit_tests_pass_under_prometheus_3() -> None:
    done = run("test", "rules", *RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_mixtool_guidelines_hold() -> None:
    assert [f for a in alerts() for f in mixtool_lint.alert_findings(a)] == []


def test_mixtool_guidelines_catch_what_mixtool_reports() -> None:
    # Two of the five findings mixtool made before they were fixed, and a
    # rule that breaks every guideline.
    before = [
        {"alert": "ScrapeCoverageExporterDown", "labels": {"severity": "warning"},
         "annotations": {"summary": "coverage-exporter cannot be scraped.",
                         "description": "Prometheus cannot scrape {{ $labels.instance }}."}},
        {"alert": "ScrapeCoverageExporterAbsent", "labels": {"severity": "warning"},
         "annotations": {"summary": "The metrics of coverage-exporter are absent.",
                         "description": "No target serves scrape_coverage_build_info."}},
        {"alert": "scrape_coverage", "labels": {"severity": "page"},
         "annotations": {"summary": "Value {{ $value }}"}},
    ]
    found = [f.split("]")[0] + "] " + r["alert"] for r in before
             for f in mixtool_lint.alert_findings(r)]
    assert found == [
        "[alert-summary-style] ScrapeCoverageExporterDown",
        "[alert-description-templating] ScrapeCoverageExporterAbsent",
        "[alert-name-camelcase] scrape_coverage",
        "[alert-severity-rule] scrape_coverage",
        "[alert-description-missing-rule] scrape_coverage",
        "[alert-summary-templating] scrape_coverage",
        "[alert-summary-style] scrape_coverage",
    ]


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: f"{a['alert']}-{a['labels']['severity']}")
def test_alert_style(alert: dict) -> None:
    name, annotations = alert["alert"], alert["annotations"]
    assert re.fullmatch(r"ScrapeCoverage(?:[A-Z][a-z0-9]+|[A-Z]+(?=[A-Z]|$))+", name), name
    summary = annotations["summary"]
    # The summary is one short, static sentence; the values go in the
    # description (an alert list groups by summary).
    assert summary.count(". ") == 0, summary
    assert len(summary) <= 100, summary
    description = annotations["description"]
    assert description.rstrip().endswith("."), description
    assert re.search(r"\{\{[^}]*\$(labels|value)|query", description), "description has no values"
    # Every label the templates read is one the alert's result carries: the
    # promtool tests (tests/rules) state the exact labels of each firing alert.
    carried = labels_in_rule_tests().get(name, set())
    assert carried, f"{name} never fires in tests/rules"
    for label in re.findall(r"\$labels\.([a-zA-Z_]+)", description):
        assert label in carried, f"{name}: description reads $labels.{label}, never carried"
    assert set(annotations) == {"summary", "description", "runbook_url"}


def labels_in_rule_tests() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                for fired in case["exp_alerts"]:
                    out.setdefault(case["alertname"], set()).update(fired["exp_labels"])
    return out


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: f"{a['alert']}-{a['labels']['severity']}")
def test_runbook_url_resolves_to_a_shipped_page(alert: dict) -> None:
    url = alert["annotations"]["runbook_url"]
    assert url.startswith(RUNBOOK_BASE_URL)
    page = RUNBOOKS / url.removeprefix(RUNBOOK_BASE_URL)
    assert page.is_file(), f"{url} points at no file under docs/runbooks/"
    text = page.read_text()
    assert text.startswith(f"# {alert['alert']}\n")
    # A kubernetes-mixin runbook says what the alert means, how to confirm
    # it, and what to do (this project's pages: Meaning, Confirm, then Fix
    # or the steps by name).
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings[0] == "Meaning", page.name
    assert {"Confirm", "Diagnosis"} & set(headings), page.name
    assert len(headings) >= 3, page.name


def test_audit_links_use_the_same_base_as_the_rules() -> None:
    # The exporter's own links (coverage_exporter/runbooks.py) and the
    # alerts' runbook_url point at the same pages.
    assert runbooks.DEFAULT_BASE_URL == RUNBOOK_BASE_URL
    for alert in alerts():
        assert runbooks.runbook_url(alert["alert"]) == alert["annotations"]["runbook_url"]


def test_every_runbook_a_finding_names_ships() -> None:
    # Findings carry their runbook page as data (model/findings.py); each
    # must be a page that ships, and its link must use the configured base.
    from coverage_exporter.model import findings

    pages = {v for k, v in vars(findings).items() if k.startswith("RUNBOOK_")}
    assert len(pages) >= 6
    for entry in pages:
        page, _, anchor = entry.partition("#")
        path = RUNBOOKS / f"{page.removesuffix('.md')}.md"
        assert path.is_file(), entry
        # A section link ("causes.md#unmaintained") must name a heading.
        assert not anchor or f"\n## {anchor}\n" in path.read_text(), entry
    try:
        runbooks.set_base_url("https://runbooks.example.com/ce")
        assert runbooks.runbook_url("ScrapeCoverageUnknown") == (
            "https://runbooks.example.com/ce/ScrapeCoverageUnknown.md"
        )
    finally:
        runbooks.set_base_url(None)
    assert runbooks.runbook_url("x").startswith(RUNBOOK_BASE_URL)
