"""mixtool's lint rules, for where mixtool itself cannot be built.

The Go module proxy reachable from this project's machines answers 403 for
github.com/monitoring-mixins/mixtool and for github.com/grafana/dashboard-linter
(the linter `mixtool lint` runs on dashboards). These are their rules as
their sources write them (mixtool pkg/mixer/lint.go; dashboard-linter
lint/rules.go and lint/rule_*.go), applied to the rendered mixin:

- alerts (lintPrometheusAlertsGuidelines): camel-case names, severity
  warning/critical/info, a description that uses templates, a summary that
  does not and is a sentence;
- dashboards: a title and a uid; then dashboard-linter's default rule set.
  Its rules on PromQL syntax run through promtool (`parse`); the rules that
  walk PromQL's syntax tree (rate interval, counter aggregation) look at
  the same things with patterns, enough for this dashboard's queries.

Exclusions are read from mixin/.lint, dashboard-linter's own config file,
which says why each is excluded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

# mixtool pkg/mixer/lint.go
CAMEL_CASE = re.compile(r"^([A-Z]+[a-z0-9]+)+$")
GO_TEMPLATE = re.compile(r"\{\{.+}\}")
SENTENCE = re.compile(r"^[A-Z].+\.$")

# Units of dashboard-linter's list (lint/rule_panel_units.go, the units
# Grafana knows) that a dashboard of counts, shares, durations and rates
# uses: a unit outside these is reported even where Grafana knows it,
# stricter than the linter, never laxer.
VALID_UNITS = frozenset(
    {"none", "short", "percent", "percentunit", "bytes", "decbytes", "Bps", "binBps"}
    | {"ns", "ms", "s", "m", "h", "d", "dtdurations", "dateTimeAsIso", "dateTimeFromNow"}
    | {"cps", "ops", "reqps", "rps", "wps", "iops", "bool", "bool_yes_no", "bool_on_off"}
)
# Panels each rule looks at (dashboard-linter's panelType* constants).
UNIT_PANELS = {"stat", "singlestat", "graph", "table", "timeseries", "gauge"}
TITLE_PANELS = UNIT_PANELS
DATASOURCE_PANELS = {"singlestat", "graph", "table", "timeseries"}
# The magic value dashboard-linter expands $__rate_interval and friends to.
TEMPLATE_VALUES = {"$__rate_interval": "8869990787ms", "$__interval": "4867856611ms"}


def alert_findings(rule: dict[str, Any]) -> list[str]:
    """lintPrometheusAlertsGuidelines on one rule of prometheusAlerts."""
    name = rule.get("alert", "")
    labels, annotations = rule.get("labels") or {}, rule.get("annotations") or {}
    out = []
    if not CAMEL_CASE.search(name):
        out.append(f"[alert-name-camelcase] Alert '{name}' name is not in camel case")
    if labels.get("severity") not in ("warning", "critical", "info"):
        out.append(
            f"[alert-severity-rule] Alert '{name}' severity must be 'warning', 'critical' or 'info'"
        )
    if "description" not in annotations:
        out.append(
            f"[alert-description-missing-rule] Alert '{name}' must have annotation 'description'"
        )
    elif not GO_TEMPLATE.search(annotations["description"]):
        out.append(
            f"[alert-description-templating] Alert {name} annotation 'description' "
            "must use templates"
        )
    if "summary" not in annotations:
        out.append(f"[alert-summary-missing-rule] Alert '{name}' must have annotation 'summary'")
    else:
        if GO_TEMPLATE.search(annotations["summary"]):
            out.append(
                f"[alert-summary-templating] Alert {name} annotation 'summary' must "
                "not use templates"
            )
        if not SENTENCE.search(annotations["summary"]):
            out.append(
                f"[alert-summary-style] Alert {name} annotation 'summary' must start "
                "with capital letter and end with period"
            )
    return out


def exclusions(lint_file: Path) -> dict[str, Any]:
    """dashboard-linter's .lint: {exclusions: {rule-name: {reason, entries}}}."""
    if not lint_file.exists():
        return {}
    return (yaml.safe_load(lint_file.read_text()) or {}).get("exclusions") or {}


def substitute(expr: str, variables: list[dict[str, Any]]) -> str:
    """Variables expanded as dashboard-linter's parsePromQL does: the
    interval ones to fixed durations, every other to its name."""
    for key, value in TEMPLATE_VALUES.items():
        expr = expr.replace(key, value)
    for variable in variables:
        for form in ("${" + variable["name"] + "}", "$" + variable["name"]):
            expr = expr.replace(form, variable["name"])
    return expr


def dashboard_findings(
    name: str, board: dict[str, Any], parse: Callable[[list[str]], list[str]], lint_file: Path
) -> list[str]:
    """mixtool's dashboard checks, then dashboard-linter's default rules.
    `parse` takes PromQL expressions and returns one error per bad one."""
    excluded = exclusions(lint_file)
    variables = board.get("templating", {}).get("list", [])
    panels = [p for p in board.get("panels", []) if p.get("type") != "row"]
    out: list[str] = []

    def report(rule: str, message: str) -> None:
        if rule not in excluded:
            out.append(f"[{rule}] '{board.get('title')}': {message}")

    if not board.get("title"):
        out.append(f"dashboard has no title: {name}")
    if not board.get("uid"):
        out.append(f"dashboard has no UID, please set one for links to work: {name}")

    datasources = [v for v in variables if v.get("type") == "datasource"]
    if not datasources:
        report("template-datasource-rule", "does not have a templated data source")
    for ds in datasources:
        query = ds.get("query", "")
        single = len(datasources) == 1
        names = {f"{query.lower()}_datasource"} | ({"datasource"} if single else set())
        labels = {f"{query.title()} data source"} | ({"Data source"} if single else set())
        if ds["name"] not in names:
            report("template-datasource-rule", f"data source variable named '{ds['name']}'")
        elif ds.get("label") not in labels:
            report("template-datasource-rule", f"data source variable labeled '{ds.get('label')}'")
    prometheus = any(ds.get("query") == "prometheus" for ds in datasources)
    names = {v["name"] for v in variables}
    for required in ("job", "instance"):
        if prometheus and required not in names:
            report(f"template-{required}-rule", f"is missing the {required} template")

    queries = [v for v in variables if v.get("type") == "query"]
    label_queries = []
    for variable in queries:
        m = re.fullmatch(r"(?s)label_values\((.+),\s*(.+)\)", variable.get("query", ""))
        if not m:
            report("template-label-promql-rule", f"template '{variable['name']}' invalid query")
        else:
            label_queries.append(substitute(m.group(1), variables))
        if variable.get("refresh") != 2:
            report(
                "template-on-time-change-reload",
                f"variable '{variable['name']}' is not refreshed on time range change",
            )
    for error in parse(label_queries):
        report("template-label-promql-rule", error)

    targets: list[tuple[dict[str, Any], str]] = []
    for panel in panels:
        kind, title = panel.get("type"), panel.get("title", "")
        if kind in DATASOURCE_PANELS:
            uid = (panel.get("datasource") or {}).get("uid")
            templated = {f"${v['name']}" for v in datasources}
            templated |= {"${" + v["name"] + "}" for v in datasources}
            if uid not in templated:
                report("panel-datasource-rule", f"panel '{title}' uses data source '{uid}'")
        if kind in TITLE_PANELS and not (title and panel.get("description")):
            report("panel-title-description-rule", f"panel '{title}' has no title or description")
        if kind in UNIT_PANELS:
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
            if unit not in VALID_UNITS:
                report("panel-units-rule", f"panel '{title}' has no or invalid units: '{unit}'")
        if not panel.get("targets"):
            report("panel-no-targets-rule", f"panel '{title}' has no targets")
        targets += [(panel, t["expr"]) for t in panel.get("targets", []) if t.get("expr")]

    for error in parse([substitute(e, variables) for _, e in targets]):
        report("target-promql-rule", error)
    for panel, expr in targets:
        title = panel.get("title", "")
        for function, window in re.findall(r"\b(i?rate)\([^\[]*\[([^\]]+)\]", expr):
            if window != "$__rate_interval":
                report(
                    "target-rate-interval-rule",
                    f"panel '{title}': {function} over [{window}] should use $__rate_interval",
                )
        for counter in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*_total\b", expr):
            before = expr[: counter.start()]
            if not re.search(r"\b(rate|irate|increase)\(\s*$", before):
                report(
                    "target-counter-agg-rule",
                    f"panel '{title}': counter "
                    f"'{counter.group(0)}' is not aggregated with rate, irate, or increase",
                )
        for required in ("job", "instance"):
            matcher = f'{required}=~"${required}"'
            if prometheus and matcher not in expr:
                report(f"target-{required}-rule", f"panel '{title}': no {matcher}")
    return out
