"""Build the coverage-exporter Grafana dashboard with grafana-foundation-sdk.

    python -m dashboards.generate           # rewrite dashboards/coverage-exporter.json
    python -m dashboards.generate --check   # exit 1 when the JSON is out of date

`panel_queries()` hands every panel's PromQL to tests that run it against a
real Prometheus. The dashboard is built once with a placeholder for the
cluster label, the exporter's selector and whether the cluster variable
shows (alerts.rules.Tuning): `render()` fills in the defaults for the plain
JSON, tools/chart.py and tools/mixin.py their own references.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, common, dashboard, stat, table, timeseries
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    VariableHide,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from alerts.rules import NORMAL, Tuning, fill, placeholder
from dashboards import queries as q

DASHBOARD_FILE = Path(__file__).resolve().parent / "coverage-exporter.json"
UID = "coverage-exporter"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# What a test substitutes for the dashboard's variables to get plain PromQL.
# One cluster: its series carry no cluster label, and the hidden variable
# is empty (cluster="" matches a missing label), as in the mixins.
VARIABLE_VALUES = {
    "$cluster": "",
    "$namespace": ".*",
    "$service": ".*",
    "$__rate_interval": "5m",
    "${datasource}": "prometheus",
}


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    column: str = ""
    """Column title in a table; table queries are instant."""
    unit: str = ""
    """A table column's unit, where it is not the table's (short)."""


def _targets(queries: list[Query], instant: bool) -> list[Dataquery]:
    out = []
    for i, query in enumerate(queries):
        target = Dataquery().expr(query.expr).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        if instant:
            target = target.instant().format(PromQueryFormat.TABLE)
        else:
            target = target.range().legend_format(query.legend or "__auto")
        out.append(target)
    return out


def _last_value() -> common.ReduceDataOptions:
    return common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def _ts(title: str, desc: str, queries: list[Query], unit: str = "short", w: int = 12):
    legend = (
        common.VizLegendOptions().display_mode(LegendDisplayMode.TABLE)
        .placement(LegendPlacement.BOTTOM).show_legend(True).calcs(["lastNotNull", "max"])
    )
    panel = timeseries.Panel().title(title).description(desc).unit(unit).min(0).legend(legend)
    return panel.targets(_targets(queries, False)).datasource(DATASOURCE).span(w).height(8)


def _stat(title: str, desc: str, expr: str, unit: str = "short"):
    panel = stat.Panel().title(title).description(desc).unit(unit).reduce_options(_last_value())
    return panel.targets(_targets([Query(expr)], False)).datasource(DATASOURCE).span(4).height(4)


def _table(title: str, desc: str, queries: list[Query], w: int = 24, h: int = 9):
    # One instant query per column, merged on their labels into one row per key.
    rename = {f"Value #{chr(ord('A') + i)}": qu.column for i, qu in enumerate(queries)}
    if len(queries) == 1:  # Grafana suffixes the query's refId only when there are several
        rename = {"Value": queries[0].column}
    organize = {"excludeByName": {"Time": True}, "renameByName": rename}
    # mixtool's dashboard lint (panel-units-rule) wants a unit on every table.
    panel = table.Panel().title(title).description(desc).show_header(True).unit("short")
    for qu in queries:
        if qu.unit:
            unit = DynamicConfigValue(id_val="unit", value=qu.unit)
            panel = panel.override_by_name(qu.column, [unit])
    panel = panel.targets(_targets(queries, True))
    panel = panel.with_transformation(DataTransformerConfig(id_val="merge", options={}))
    panel = panel.with_transformation(DataTransformerConfig(id_val="organize", options=organize))
    return panel.datasource(DATASOURCE).span(w).height(h)


def _rows() -> list[tuple[str, list]]:
    funnel = [
        Query(q.expected(), "expected", "Expected"),
        Query(q.present_at_stage("endpoints"), "in Endpoints", "In Endpoints"),
        Query(q.present_at_stage("endpointslices"), "in EndpointSlices", "In EndpointSlices"),
        Query(q.discovered_by_worst_pool(), "discovered by Prometheus", "Discovered by Prometheus"),
    ]
    return [
        ("Overview", [
            _stat("Services in scope", "Services checked in the last cycle.",
                  f"max(scrape_coverage_services{{{q.CL}}})"),
            _stat("Nodes", "Nodes in the cluster.",
                  f"sum(max by (ready) (scrape_coverage_nodes{{{q.CL}}}))"),
            _stat("Targets missing from Prometheus",
                  "Expected targets the worst replica of each scrape pool does not discover.",
                  q.MISSING_TOTAL),
            _stat("Targets of unknown coverage",
                  "Expected targets whose coverage cannot be told: a shard has not answered.",
                  q.UNKNOWN_TOTAL),
            _stat("Truncated Endpoints read with role endpoints",
                  "Services whose truncated Endpoints a Prometheus reads with role endpoints.",
                  q.TRUNCATED_READ),
            _stat("Lowest scrape pool coverage", "Worst scrape pool, share of expected found.",
                  q.LOWEST_COVERAGE, "percentunit"),
            _stat("Exporter targets up", "coverage-exporter targets Prometheus scrapes.",
                  q.EXPORTER_UP),
        ]),
        ("Coverage funnel", [
            _table("Coverage funnel per Service",
                   "Expected targets found at each stage; the Prometheus column is the "
                   "least complete scrape pool of the Service.", funnel),
            _ts("Coverage funnel over time", "The funnel summed over the selected Services.",
                [Query(f"sum({x.expr})", x.legend) for x in funnel]),
            _ts("Targets missing from Prometheus",
                "Expected targets each replica's scrape pool does not discover.",
                [Query(q.POOL_GAP,
                       "{{namespace}}/{{service}} {{scrape_pool}} ({{role}}) "
                       "{{scraper_replica}}")]),
            _ts("Missing targets by reason",
                "Named missing targets per cause (the reason label; what to do for each: "
                "docs/runbooks/causes.md), over every stage, pool and replica.",
                [Query(q.MISSING_BY_REASON_SUM, "{{reason}}")]),
            _ts("Targets missing per Kubernetes stage",
                "Expected targets absent from the Endpoints object or the EndpointSlices.",
                [Query(f"{q.STAGE_MISSING}{{{q.SEL}}}", "{{namespace}}/{{service}} {{stage}}")]),
            _table("Missing targets",
                   "One row per missing target, up to the exporter's "
                   "--missing-target-series-limit.",
                   [Query("max by (namespace, service, stage, scrape_pool, scraper_replica, "
                          f"node, pod) (scrape_coverage_missing_target{{{q.SEL}}})",
                          column="Missing")],
                   w=12),
        ]),
        ("Endpoints at scale", [
            _table("Truncated Endpoints",
                   "Endpoints objects the endpoints controller cut to 1000 addresses.",
                   [Query(q.truncated_only(f"{q.ENDPOINTS_ADDRESSES}{{{q.SEL}}}"),
                          column="Addresses in Endpoints"),
                    Query(q.truncated_only(q.expected()), column="Expected"),
                    Query(q.truncated_only(f'sum by (namespace, service) ({q.STAGE_MISSING}'
                                           f'{{{q.SEL}, stage="endpoints"}})'),
                          column="Missing from Endpoints")], w=12),
            _table("Scrape pools using role endpoints at scale",
                   f"Pools that read a Service's Endpoints (role endpoints) holding more than "
                   f"{q.AT_SCALE_ADDRESSES} addresses: they lose targets at 1000.",
                   [Query(q.endpoints_role_pools_at_scale(f"{q.ENDPOINTS_ADDRESSES}{{{q.SEL}}}"),
                          column="Addresses in Endpoints"),
                    Query(q.endpoints_role_pools_at_scale(
                        f"{q.ENDPOINTS_CAPACITY} - {q.ENDPOINTS_ADDRESSES}{{{q.SEL}}}"),
                          column="Headroom to 1000")],
                   w=12),
            _ts("Endpoints addresses against the 1000 limit",
                "The 20 largest Endpoints objects of the selected Services.",
                [Query(f"topk(20, {q.ENDPOINTS_ADDRESSES}{{{q.SEL}}})",
                       "{{namespace}}/{{service}}"),
                 Query(q.CAPACITY, "limit")]),
            _table("EndpointSlice mirroring of selector-less Endpoints",
                   "Addresses the mirroring controller left out (it mirrors at most 1000 "
                   "per subset), and whether the Endpoints carries skip-mirror.",
                   [Query(q.selector_less_only(f"{q.ENDPOINTS_ADDRESSES}{{{q.SEL}}}"),
                          column="Addresses in Endpoints"),
                    Query(q.selector_less_only(f"{q.SLICE_ENDPOINTS}{{{q.SEL}}}"),
                          column="Endpoints in slices"),
                    Query("max by (namespace, service) "
                          f"(scrape_coverage_endpointslice_mirroring_skipped{{{q.SEL}}})",
                          column="Not mirrored"),
                    Query("max by (namespace, service) "
                          f"(scrape_coverage_endpoints_skip_mirror{{{q.SEL}}})",
                          column="skip-mirror")], w=12),
        ]),
        ("Per Prometheus", [
            _ts("Targets discovered per Prometheus",
                "Active targets each Prometheus discovered from the selected Services.",
                [Query(f"sum by (server, scrape_pool, role) ({q.POOL_TARGETS}{{{q.SEL}}})",
                       "{{server}} {{scrape_pool}} ({{role}})")]),
            _ts("Target health per Prometheus", "Discovered targets by scrape health.",
                [Query("sum by (server, health) (max by (namespace, service, server, "
                       "scrape_pool, role, health) "
                       f"(scrape_coverage_prometheus_targets{{{q.SEL}}}))",
                       "{{server}} {{health}}")]),
            _table("Coverage per replica and scrape pool",
                   "Share of the expected targets each replica's scrape pool discovered.",
                   [Query(f"1 - {q.GAP_RATIO}{{{q.SEL}, stage=\"prometheus\"}}",
                          column="Coverage", unit="percentunit"),
                    Query(q.POOL_GAP, column="Missing")]),
        ]),
        ("Prometheus Operator migration", [
            _table("Migration readiness per Prometheus CR",
                   "Where each Prometheus Operator CR stands on the safe path to EndpointSlice "
                   "discovery, and its next safe step (coverage-exporter audit prints the exact "
                   "patch or flag).",
                   [Query("max by (namespace, name, kind, service_discovery_role, "
                          "kubelet_state, next_step) "
                          f"(scrape_coverage_operator_migration_info{{{q.CL}}})",
                          column="Info"),
                    Query("max by (namespace, name, kind) "
                          f"(scrape_coverage_operator_migration_safe{{{q.CL}}})",
                          column="Safe now"),
                    Query("max by (namespace, name, kind) "
                          f'(scrape_coverage_operator_services_over_capacity{{{q.CL}, '
                          'capacity="reached"})',
                          column="Services over 1000"),
                    Query("max by (namespace, name, kind) "
                          f"(scrape_coverage_operator_endpointslice_rbac{{{q.CL}}})",
                          column="EndpointSlice RBAC")], w=24),
        ]),
        ("Exporter health", [
            _ts("Source up", "1 when the source's last collection succeeded.",
                [Query(q.per_source("scrape_coverage_source_up"), "{{source}} {{server}}")],
                w=8),
            _ts("Collection duration", "Time the last collection of each source and cycle took.",
                [Query(q.per_source("scrape_coverage_source_duration_seconds"),
                       "{{source}} {{server}}"),
                 Query(f"max(scrape_coverage_cycle_duration_seconds{{{q.CL}}})", "cycle")],
                "s", w=8),
            _ts("Time since last success", "Age of the data the exporter computes from.",
                [Query("time() - "
                       + q.per_source("scrape_coverage_source_last_success_timestamp_seconds"),
                       "{{source}} {{server}}"),
                 Query(f"time() - max(scrape_coverage_last_cycle_timestamp_seconds{{{q.CL}}})",
                       "last cycle")], "s", w=8),
            _ts("Source errors and requests", "Failed and total requests to each source.",
                [Query(q.source_rate("scrape_coverage_source_errors_total"),
                       "errors {{source}} {{server}}"),
                 Query(q.source_rate("scrape_coverage_source_requests_total"),
                       "requests {{source}} {{server}}")], "reqps", w=8),
            _ts("Response bytes", "Bytes read from each source.",
                [Query(q.source_rate("scrape_coverage_source_response_bytes_total"),
                       "{{source}} {{server}}")], "Bps", w=8),
            bargauge.Panel().title("Missing-target rows").description(
                "Rows of scrape_coverage_missing_target left out by the cap.")
            .reduce_options(_last_value())
            .targets(_targets([Query("sum(max by (namespace, service, stage, scrape_pool, "
                                     "scraper, scraper_replica) "
                                     f"(scrape_coverage_missing_target_series_omitted{{{q.CL}}}))",
                                     "omitted"),
                               Query("max(scrape_coverage_missing_target_series_limit"
                                     f"{{{q.CL}}})",
                                     "limit")],
                              False)).datasource(DATASOURCE).span(8).height(8),
        ]),
    ]


# The cluster variable's `hide`: 2 (hidden) unless Tuning.show_multi_cluster.
CLUSTER_VARIABLE_HIDE = placeholder("cluster_variable_hide")


def _variables() -> list:
    datasource = dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
    # The cluster label of each exporter's series, as Thanos or Mimir adds it
    # (an external label); hidden, and empty, where there is one cluster.
    cluster = (
        dashboard.QueryVariable("cluster").label("Cluster")
        .query(f"label_values(scrape_coverage_build_info, {q.C})")
        .datasource(DATASOURCE).refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC).hide(VariableHide.HIDE_VARIABLE)
    )
    out = [datasource, cluster]
    for name, query in (
        ("namespace", f"label_values(scrape_coverage_expected_targets{{{q.CL}}}, namespace)"),
        ("service",
         f'label_values(scrape_coverage_expected_targets{{{q.CL}, namespace=~"$namespace"}}, '
         "service)"),
    ):
        out.append(
            dashboard.QueryVariable(name).label(name.capitalize()).query(query)
            .datasource(DATASOURCE).refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True).all_value(".*")
        )
    return out


def build() -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard("Scrape coverage")
        .uid(UID)
        .description("Nodes and pods Prometheus does not scrape: Endpoints truncation, "
                     "EndpointSlice mirroring caps, per scrape pool coverage.")
        .tags(["coverage-exporter", "prometheus", "kubernetes"])
        .time("now-6h", "now")
        .refresh("1m")
        .variables(_variables())
    )
    panel_id = 0
    for title, panels in _rows():
        panel_id += 1
        board = board.with_row(dashboard.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board = board.with_panel(panel.id(panel_id))
    return board


def board() -> dict[str, Any]:
    """The dashboard as JSON data, with placeholders (alerts.rules.PLACEHOLDERS)."""
    doc = json.loads(JSONEncoder(sort_keys=True).encode(build().build()))
    for variable in doc["templating"]["list"]:
        if variable["name"] == "cluster":
            variable["hide"] = CLUSTER_VARIABLE_HIDE
    return doc


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, indent=2) + "\n"


def render(tuning: Tuning = NORMAL) -> str:
    return to_json(fill(board(), tuning))


def panel_queries(
    substitute: bool = False, tuning: Tuning = NORMAL
) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel.

    With `substitute`, dashboard variables are replaced by VARIABLE_VALUES so
    the expressions run as they are against a Prometheus.
    """
    out = []
    for _, panels in _rows():
        for panel in panels:
            built = panel.build()
            for target in built.targets or []:
                expr = fill(target.expr, tuning)
                out.append((built.title, substitute_variables(expr) if substitute else expr))
    return out


def substitute_variables(expr: str) -> str:
    return re.sub(
        "|".join(re.escape(k) for k in VARIABLE_VALUES), lambda m: VARIABLE_VALUES[m[0]], expr
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is stale")
    args = parser.parse_args(argv)
    content = render()
    if args.check:
        if not DASHBOARD_FILE.exists() or DASHBOARD_FILE.read_text() != content:
            print("out of date, run python -m dashboards.generate", file=sys.stderr)
            return 1
        return 0
    DASHBOARD_FILE.write_text(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
