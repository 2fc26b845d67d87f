"""The alerting and recording rules: generated, valid, tested, documented."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from alerts import generate
from alerts.rules import RUNBOOK_BASE_URL
from tools.contract import (
    PROMETHEUS_BUILTINS,
    REPO,
    check_expressions,
    documented_metrics,
    metric_names,
    promtool,
)

RULE_TESTS = sorted((REPO / "tests" / "rules").glob("*.test.yml"))
RUNBOOKS = REPO / "docs" / "runbooks"


def _rules(doc: dict) -> list[dict]:
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alerts(doc: dict) -> list[dict]:
    return [r for r in _rules(doc) if "alert" in r]


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", duration))


def test_committed_files_are_generated() -> None:
    for name, content in generate.rendered_files().items():
        committed = (generate.ALERTS_DIR / name).read_text()
        assert committed == content, f"{name} is stale: run python -m alerts.generate"


def test_check_mode_reports_stale_files(tmp_path: Path) -> None:
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1
    assert generate.main(["--out", str(tmp_path)]) == 0
    assert generate.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / generate.RULES_FILE).write_text("groups: []\n")
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1


def test_prometheus_rule_holds_the_same_rules() -> None:
    rule_file = yaml.safe_load((generate.ALERTS_DIR / generate.RULES_FILE).read_text())
    manifest = yaml.safe_load((generate.ALERTS_DIR / generate.PROMETHEUS_RULE_FILE).read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["name"]
    assert manifest["spec"] == rule_file


def test_promtool_checks_rules(tmp_path: Path) -> None:
    fast = tmp_path / generate.FAST_RULES_FILE
    fast.write_text(generate.to_yaml(generate.render_rules(fast=True)))
    result = promtool("check", "rules", generate.ALERTS_DIR / generate.RULES_FILE, fast)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool tests in tests/rules"
    result = promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    # Guards the guard: a wrong expected annotation must make promtool fail.
    source = RULE_TESTS[0]
    broken = yaml.safe_load(source.read_text())
    broken["rule_files"] = [str((source.parent / f).resolve()) for f in broken["rule_files"]]
    for test in broken["tests"]:
        for case in test.get("alert_rule_test", []):
            for alert in case["exp_alerts"]:
                alert["exp_annotations"]["summary"] += " (wrong)"
    path = tmp_path / "broken.test.yml"
    path.write_text(yaml.safe_dump(broken))
    result = promtool("test", "rules", path)
    assert result.returncode != 0
    assert "(wrong)" in result.stdout + result.stderr


def test_every_alert_fires_and_stays_quiet_in_promtool_tests() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case["exp_alerts"] else quiet).add(case["alertname"])
                for alert in case["exp_alerts"]:
                    # Exact labels and annotations, not just "something fired".
                    assert "severity" in alert["exp_labels"]
                    assert set(alert["exp_annotations"]) == {
                        "summary",
                        "description",
                        "runbook_url",
                    }
    names = {a["alert"] for a in _alerts(generate.render_rules())}
    assert names - firing == set(), "alerts never seen firing"
    assert names - quiet == set(), "alerts never seen staying quiet"


def test_every_severity_of_every_alert_is_tested() -> None:
    tested = set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                for alert in case["exp_alerts"]:
                    tested.add((case["alertname"], alert["exp_labels"]["severity"]))
    rules = {(a["alert"], a["labels"]["severity"]) for a in _alerts(generate.render_rules())}
    assert rules - tested == set()


@pytest.mark.parametrize("alert", _alerts(generate.render_rules()), ids=lambda a: a["alert"])
def test_alert_has_severity_annotations_and_runbook(alert: dict) -> None:
    assert alert["alert"].startswith("ScrapeCoverage")
    assert alert["labels"]["severity"] in {"info", "warning", "critical"}
    annotations = alert["annotations"]
    assert annotations["summary"].strip()
    if alert["expr"].startswith("absent("):
        # absent() has no series to quote: the description names what is missing.
        assert generate.DEFAULT_EXPORTER_SELECTOR in annotations["description"]
    assert "{{" in annotations["description"], "description should carry values"
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE_URL}{alert['alert']}.md"
    runbook = RUNBOOKS / f"{alert['alert']}.md"
    assert runbook.is_file(), f"missing runbook {runbook}"
    assert alert["alert"] in (RUNBOOKS / "README.md").read_text()


def test_fast_rules_differ_only_in_timing() -> None:
    normal, fast = _alerts(generate.render_rules()), _alerts(generate.render_rules(fast=True))
    assert [a["alert"] for a in normal] == [a["alert"] for a in fast]
    for n, f in zip(normal, fast, strict=True):
        assert _seconds(f["for"]) < _seconds(n["for"]), n["alert"]
        assert f["labels"] == n["labels"]
        assert f["annotations"]["runbook_url"] == n["annotations"]["runbook_url"]
    records = [r for r in _rules(generate.render_rules()) if "record" in r]
    assert records == [r for r in _rules(generate.render_rules(fast=True)) if "record" in r]


def test_fast_rules_written_by_cli(tmp_path: Path) -> None:
    assert generate.main(["--fast", "--out", str(tmp_path)]) == 0
    written = yaml.safe_load((tmp_path / generate.FAST_RULES_FILE).read_text())
    assert written == generate.render_rules(fast=True)


def test_exporter_selector_is_configurable() -> None:
    selector = 'job="monitoring/ce", cluster="a"'
    doc = generate.render_rules(exporter_selector=selector)
    by_job = {"ScrapeCoverageExporterDown", "ScrapeCoverageExporterAbsent"}
    exporter_exprs = [a["expr"] for a in _alerts(doc) if a["alert"] in by_job]
    assert len(exporter_exprs) == 2
    assert all(f"{{{selector}}}" in e for e in exporter_exprs)
    assert all("coverage-exporter.*" not in e for e in exporter_exprs)


def test_rules_read_only_documented_metrics() -> None:
    documented = documented_metrics()
    known = documented["exporter"] | documented["recorded"] | PROMETHEUS_BUILTINS
    for rule in _rules(generate.render_rules()):
        unknown = metric_names(rule["expr"]) - known
        assert unknown == set(), f"{rule.get('alert') or rule.get('record')}: {unknown}"


def test_recorded_names_follow_convention_and_are_documented() -> None:
    recorded = [r["record"] for r in _rules(generate.render_rules()) if "record" in r]
    assert len(recorded) == len(set(recorded))
    for name in recorded:
        level, metric, operation = name.split(":")
        assert metric.startswith("scrape_coverage_")
        assert metric in documented_metrics()["exporter"], name
        assert level and operation
    assert set(recorded) == documented_metrics()["recorded"]


def test_metric_name_parser_sees_through_promql() -> None:
    # The contract checks rely on this parser; make sure it neither misses
    # names nor takes label names, functions or strings for metrics.
    expr = (
        'sum by (namespace, service) (rate(scrape_coverage_cycles_total{job=~"a:b"}[5m]))\n'
        "/ on (namespace) group_left () foo:bar:max > 0 and up == 0"
    )
    assert metric_names(expr) == {"scrape_coverage_cycles_total", "foo:bar:max", "up"}


# Target labels Prometheus puts on the exporter's series (the rules drop
# them), and the external label that tells clusters apart in a central
# Thanos or Mimir (the rules keep it).
_EXPORTER_TARGET_LABELS = {"job", "instance", "cluster"}


def _documented_labels(part: str = "exporter") -> dict[str, set[str]]:
    """Metric name -> its labels, from the `part` tables of docs/metrics.md
    ("exporter" or "recorded")."""
    labels: dict[str, set[str]] = {}
    names = documented_metrics()[part]
    for line in (REPO / "docs" / "metrics.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", cells[0])
        if m and len(cells) >= 3 and m.group(1) in names:
            labels[m.group(1)] = set(re.findall(r"`([a-zA-Z_][a-zA-Z0-9_]*)`", cells[2]))
    return labels


def test_rule_test_inputs_follow_the_metric_contract() -> None:
    # Rule tests prove nothing if they feed series the exporter never serves.
    documented = _documented_labels() | {"up": set()}
    assert "scrape_coverage_gap_targets" in documented
    seen = 0
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for series in test.get("input_series", []):
                m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}", series["series"])
                assert m, f"{path.name}: {series['series']}"
                name, body = m.groups()
                assert name in documented, f"{path.name}: {name} is not in docs/metrics.md"
                used = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', body))
                unknown = used - documented[name] - _EXPORTER_TARGET_LABELS
                assert unknown == set(), f"{path.name}: {name} has undocumented labels {unknown}"
                seen += 1
    assert seen > 50


def _runbook_queries() -> list[tuple[str, str]]:
    """(page, expression) for every line of the runbooks' promql blocks;
    indented lines continue the one above, `# ...` is a comment."""
    found = []
    for page in sorted(RUNBOOKS.glob("*.md")):
        for block in re.findall(r"```promql\n(.*?)```", page.read_text(), re.S):
            exprs: list[str] = []
            for line in textwrap.dedent(block).splitlines():
                line = re.sub(r"\s+#.*$", "", line)
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line.startswith(" ") and exprs:
                    exprs[-1] += " " + line.strip()
                else:
                    exprs.append(line.strip())
            found += [(page.name, e) for e in exprs]
    return found


def test_runbook_queries_follow_the_metric_contract(tmp_path: Path) -> None:
    # A runbook query on a renamed metric or label returns nothing, which
    # reads as "all clear" to the person on call.
    documented = _documented_labels() | _documented_labels("recorded")
    queries = _runbook_queries()
    assert len(queries) > 20
    for page, expr in queries:
        for name, body in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr):
            if name.startswith("scrape_coverage_") or ":scrape_coverage_" in name:
                assert name in documented, f"{page}: {name} is not in docs/metrics.md"
                used = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=|!=|=~|!~)", body))
                assert used <= documented[name], f"{page}: {name} {used - documented[name]}"
        names = {n for n in metric_names(expr) if "scrape_coverage_" in n}
        assert names <= set(documented), f"{page}: {names - set(documented)}"
    result = check_expressions([e for _, e in queries], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_runbook_links_resolve() -> None:
    pages = sorted(RUNBOOKS.glob("*.md"))
    assert len(pages) >= 10
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (RUNBOOKS / target).is_file(), f"{page.name} links to missing {target}"
