"""The Grafana dashboard: generated, well-formed, and within the metric contract."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from alerts.rules import NORMAL
from dashboards import generate
from tools.contract import (
    PROMETHEUS_BUILTINS,
    check_expressions,
    documented_metrics,
    metric_names,
)


@pytest.fixture(scope="module")
def board() -> dict:
    return json.loads(generate.DASHBOARD_FILE.read_text())


def _panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_committed_json_is_generated() -> None:
    assert generate.DASHBOARD_FILE.read_text() == generate.render(), (
        "dashboards/coverage-exporter.json is stale: run python -m dashboards.generate"
    )
    assert generate.main(["--check"]) == 0


def test_panel_ids_are_unique(board: dict) -> None:
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) and i > 0 for i in ids)


def test_panels_do_not_overlap(board: dict) -> None:
    taken: set[tuple[int, int]] = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells


def test_required_views_are_there(board: dict) -> None:
    titles = {p["title"] for p in board["panels"]}
    for title in (
        "Coverage funnel per Service",
        "Targets missing from Prometheus",
        "Truncated Endpoints",
        "Scrape pools using role endpoints at scale",
        "Targets discovered per Prometheus",
        "Source up",
        "Collection duration",
        "Source errors and requests",
    ):
        assert title in titles


def test_variables_for_datasource_cluster_namespace_service(board: dict) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", "cluster", "namespace", "service"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # One cluster per variable value, hidden where there is one cluster
    # (the mixins' showMultiCluster; the chart's dashboard.multiCluster).
    cluster = variables["cluster"]
    assert cluster["hide"] == 2 and not cluster.get("multi") and not cluster.get("includeAll")
    assert cluster["query"] == "label_values(scrape_coverage_build_info, cluster)"
    assert (
        json.loads(generate.render(replace(NORMAL, show_multi_cluster=True)))["templating"]["list"][
            1
        ]["hide"]
        == 0
    )
    for name in ("namespace", "service"):
        assert 'cluster="$cluster"' in variables[name]["query"]
    for name in ("namespace", "service"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    assert "$namespace" in variables["service"]["query"]


def test_every_panel_queries_the_chosen_datasource(board: dict) -> None:
    for panel in _panels(board):
        assert panel["targets"], panel["title"]
        assert panel["options"], f"{panel['title']}: Grafana expects panel options"
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip()


def test_coverage_panels_follow_the_variables(board: dict) -> None:
    exporter_row = False
    for p in board["panels"]:
        if p["type"] == "row":
            # Rows about the exporter, the whole cluster, or Prometheus CRs
            # (not Services) are not narrowed by $namespace/$service.
            exporter_row = p["title"] in (
                "Exporter health",
                "Overview",
                "Prometheus Operator migration",
            )
            continue
        if exporter_row:
            continue
        for target in p["targets"]:
            if target["expr"].startswith("vector("):
                continue
            assert "$namespace" in target["expr"] and "$service" in target["expr"], p["title"]


def test_every_series_selector_selects_one_cluster(board: dict) -> None:
    # Two clusters' series in one Thanos or Mimir never mix in a panel: every
    # selector carries the cluster matcher, in every panel, every row.
    exprs = [(p["title"], t["expr"]) for p in _panels(board) for t in p["targets"]]
    selectors = 0
    for title, expr in exprs:
        for name, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?", expr):
            if name in metric_names(expr):
                selectors += 1
                assert 'cluster="$cluster"' in matchers, f"{title}: {name} in {expr}"
    assert selectors > 50


def test_table_columns_are_named(board: dict) -> None:
    for panel in _panels(board):
        if panel["type"] != "table":
            continue
        organize = next(t for t in panel["transformations"] if t["id"] == "organize")
        renames = organize["options"]["renameByName"]
        assert len(renames) == len(panel["targets"]), panel["title"]
        assert all(renames.values())
        assert all(t["instant"] and t["format"] == "table" for t in panel["targets"])


def test_panel_queries_cover_every_target(board: dict) -> None:
    from_json = [(p["title"], t["expr"]) for p in _panels(board) for t in p["targets"]]
    assert generate.panel_queries() == from_json
    substituted = generate.panel_queries(substitute=True)
    assert all("$" not in expr for _, expr in substituted)


def test_queries_read_only_documented_metrics(board: dict) -> None:
    documented = documented_metrics()
    known = documented["exporter"] | documented["recorded"] | PROMETHEUS_BUILTINS
    for title, expr in generate.panel_queries():
        unknown = metric_names(expr) - known
        assert unknown == set(), f"{title}: {unknown}"
    wanted = {"cluster": "scrape_coverage_build_info"}
    for variable in board["templating"]["list"][1:]:
        # label_values(<series selector>, <label>)
        selector = variable["query"].split("(", 1)[1].rsplit(",", 1)[0]
        metric = wanted.get(variable["name"], "scrape_coverage_expected_targets")
        assert metric_names(selector) == {metric}


def test_queries_parse(tmp_path: Path) -> None:
    exprs = [expr for _, expr in generate.panel_queries(substitute=True)]
    result = check_expressions(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_query_check_catches_bad_promql(tmp_path: Path) -> None:
    result = check_expressions(["sum(rate(scrape_coverage_cycles_total[5m])"], tmp_path)
    assert result.returncode != 0
