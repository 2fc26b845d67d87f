"""The single source of the recording and alerting rules.

`generate.py` renders these into the plain rule file and the PrometheusRule
manifest; tests render them again with the fast timing. Every figure an
operator may want to tune is a field of `Timing` or `Thresholds`.
"""

from __future__ import annotations

from dataclasses import dataclass

from coverage_exporter.runbooks import DEFAULT_BASE_URL as RUNBOOK_BASE_URL

DEFAULT_EXPORTER_SELECTOR = 'job=~".*coverage-exporter.*"'

# The endpoints controller's maxCapacity, the mirroring controller's cap per subset.
ENDPOINTS_CAPACITY = 1000


@dataclass(frozen=True)
class Timing:
    """`for:` durations and range windows; the fast copy serves end-to-end tests."""

    truncated_for: str
    missing_warning_for: str
    missing_critical_for: str
    mirroring_for: str
    near_capacity_for: str
    forecast_for: str
    forecast_window: str
    exporter_down_for: str
    exporter_absent_for: str
    source_down_for: str
    stale_for: str
    stale_after_seconds: int


NORMAL = Timing(
    truncated_for="15m",
    # Node churn makes single targets go missing for a refresh or two; only a
    # gap that outlives that is worth a ticket.
    missing_warning_for="30m",
    missing_critical_for="15m",
    mirroring_for="15m",
    near_capacity_for="1h",
    forecast_for="1h",
    forecast_window="6h",
    exporter_down_for="15m",
    exporter_absent_for="15m",
    source_down_for="15m",
    # Long enough for the first cycle of a restarted exporter on a large cluster.
    stale_for="10m",
    stale_after_seconds=900,
)

FAST = Timing(
    truncated_for="15s",
    missing_warning_for="30s",
    missing_critical_for="15s",
    mirroring_for="15s",
    near_capacity_for="30s",
    forecast_for="30s",
    forecast_window="5m",
    exporter_down_for="15s",
    exporter_absent_for="15s",
    source_down_for="15s",
    stale_for="10s",
    stale_after_seconds=120,
)


@dataclass(frozen=True)
class Thresholds:
    critical_missing_share: float = 0.10
    near_capacity_addresses: int = 900
    forecast_horizon_days: int = 4


# Recorded series. Every aggregation lists the labels it keeps, which drops
# the exporter's own target labels (job, instance, pod), and takes `max`
# first, so two exporter replicas never double a count.
EXPECTED = "namespace_service:scrape_coverage_expected_targets:max"
STAGE_MISSING = "namespace_service_stage:scrape_coverage_missing_targets:max"
GAP = "namespace_service_stage_scrape_pool_replica:scrape_coverage_gap_targets:max"
GAP_RATIO = "namespace_service_stage_scrape_pool_replica:scrape_coverage_gap_targets:ratio"
POOL_UNKNOWN = (
    "namespace_service_scrape_pool_replica:scrape_coverage_prometheus_unknown_targets:max"
)
POOL_TARGETS = "namespace_service_server_scrape_pool:scrape_coverage_prometheus_targets:sum"
ENDPOINTS_ADDRESSES = "namespace_service:scrape_coverage_endpoints_addresses:sum"
ENDPOINTS_TRUNCATED = "namespace_service:scrape_coverage_endpoints_truncated:max"
SLICE_ENDPOINTS = "namespace_service:scrape_coverage_endpointslice_endpoints:sum"

GAP_LABELS = "namespace, service, stage, scrape_pool, role, scraper, scraper_replica"
UNKNOWN_LABELS = "namespace, service, scrape_pool, role, scraper, scraper_replica"
PROM_POOL_LABELS = "namespace, service, server, scrape_pool, role"


def recording_rules() -> list[dict]:
    return [
        _record(EXPECTED, "max by (namespace, service) (scrape_coverage_expected_targets)"),
        _record(
            STAGE_MISSING,
            "max by (namespace, service, stage) (scrape_coverage_missing_targets)",
        ),
        # The one definition of a gap (coverage_exporter/model/gaps.py).
        _record(GAP, f"max by ({GAP_LABELS}) (scrape_coverage_gap_targets)"),
        # clamp_min keeps a Service with no expected targets at 0, not NaN.
        _record(
            GAP_RATIO,
            f"{GAP}\n/ on (namespace, service) group_left ()\nclamp_min({EXPECTED}, 1)",
        ),
        _record(
            POOL_UNKNOWN, f"max by ({UNKNOWN_LABELS}) (scrape_coverage_prometheus_unknown_targets)"
        ),
        _record(
            POOL_TARGETS,
            f"sum by ({PROM_POOL_LABELS}) (\n"
            f"  max by ({PROM_POOL_LABELS}, health) (scrape_coverage_prometheus_targets)\n)",
        ),
        _record(
            ENDPOINTS_ADDRESSES,
            "sum by (namespace, service) (\n"
            "  max by (namespace, service, ready) (scrape_coverage_endpoints_addresses)\n)",
        ),
        _record(
            ENDPOINTS_TRUNCATED,
            "max by (namespace, service) (scrape_coverage_endpoints_truncated)",
        ),
        _record(
            SLICE_ENDPOINTS,
            "sum by (namespace, service) (\n"
            "  max by (namespace, service, managed_by, ready)"
            " (scrape_coverage_endpointslice_endpoints)\n)",
        ),
    ]


def coverage_alerts(t: Timing, th: Thresholds) -> list[dict]:
    endpoints_role = f'({POOL_TARGETS}{{role="endpoints"}} > 0)'
    svc = "{{ $labels.namespace }}/{{ $labels.service }}"
    pool = (
        "scrape pool {{ $labels.scrape_pool }} (role {{ $labels.role }}) of "
        "{{ $labels.scraper }} replica {{ $labels.scraper_replica }}"
    )
    gap_args = (
        "$labels.namespace $labels.service $labels.stage $labels.scrape_pool $labels.role "
        "$labels.scraper $labels.scraper_replica"
    )
    svc_args = "$labels.namespace $labels.service"
    gap_fmt = (
        GAP + "{namespace=%q,service=%q,stage=%q,scrape_pool=%q,role=%q,scraper=%q,"
        "scraper_replica=%q}"
    )
    svc_fmt = EXPECTED + "{namespace=%q,service=%q}"
    horizon = th.forecast_horizon_days
    return [
        _alert(
            "ScrapeCoverageEndpointsTruncated",
            f'({GAP}{{stage="endpoints"}} > 0)\n'
            f"and on (namespace, service) ({ENDPOINTS_TRUNCATED} == 1)",
            t.truncated_for,
            "warning",
            "Truncated Endpoints hide targets from a Prometheus using role endpoints.",
            f"The Endpoints object of Service {svc} is over capacity "
            "(annotation endpoints.kubernetes.io/over-capacity): the endpoints controller "
            f"keeps {ENDPOINTS_CAPACITY} addresses and drops the rest, and a scrape pool reads "
            "it with role endpoints: {{ $value }} expected targets"
            + _with_query(svc_fmt, svc_args, " (of VALUE)")
            + " are missing from it.",
        ),
        _alert(
            "ScrapeCoverageTargetsMissing",
            f'{GAP}{{stage="prometheus"}} > 0',
            t.missing_warning_for,
            "warning",
            "A Prometheus replica does not discover every expected target of a Service.",
            "{{ $value }} expected targets"
            + _with_query(svc_fmt, svc_args, " (of VALUE)")
            + f" of Service {svc} are not discovered by {pool}, so that replica does not "
            "scrape them and its alerts cannot see them.",
        ),
        _alert(
            "ScrapeCoverageTargetsMissing",
            f'{GAP_RATIO}{{stage="prometheus"}} > {th.critical_missing_share}',
            t.missing_critical_for,
            "critical",
            "A Prometheus replica misses a large share of a Service's expected targets.",
            "{{ $value | humanizePercentage }} of the expected targets of Service "
            + svc
            + _with_query(gap_fmt, gap_args, " (VALUE")
            + _with_query(svc_fmt, svc_args, " of VALUE)")
            + f" are not discovered by {pool}, so that replica does not scrape them.",
        ),
        _alert(
            "ScrapeCoverageEndpointSliceMirroringCapped",
            f'({GAP}{{stage="endpointslices"}} > 0)\n'
            "and on (namespace, service)\n"
            "(max by (namespace, service) (scrape_coverage_endpointslice_mirroring_skipped) > 0)",
            t.mirroring_for,
            "warning",
            "EndpointSlice mirroring left out addresses that a Prometheus reads.",
            f"{{{{ $value }}}} expected targets of the selector-less Service {svc} are in no "
            "EndpointSlice: the mirroring controller copies at most "
            f"{ENDPOINTS_CAPACITY} addresses per subset, and a scrape pool reads the slices "
            "with role endpointslice, so it misses them.",
        ),
        _alert(
            "ScrapeCoverageUnknown",
            "max by (scraper, scraper_replica) (scrape_coverage_replica_coverage_known) == 0",
            t.source_down_for,
            "warning",
            "The scrape coverage of a Prometheus replica cannot be told.",
            "A shard of {{ $labels.scraper }} replica {{ $labels.scraper_replica }} has not "
            "answered coverage-exporter recently: what that replica scrapes is unknown, and "
            "no ScrapeCoverageTargetsMissing alert can fire for it.",
        ),
        _alert(
            "ScrapeCoverageEndpointsNearCapacity",
            f"{ENDPOINTS_ADDRESSES} > {th.near_capacity_addresses}\n"
            f"and on (namespace, service) ({ENDPOINTS_TRUNCATED} == 0)\n"
            f"and on (namespace, service) {endpoints_role}",
            t.near_capacity_for,
            "warning",
            "Endpoints discovered with role endpoints is close to the 1000-address limit.",
            f"The Endpoints object of Service {svc} holds {{{{ $value }}}} addresses; at "
            f"{ENDPOINTS_CAPACITY} the endpoints controller truncates it and a Prometheus "
            "using role endpoints silently loses targets. Migrate to EndpointSlice "
            "discovery before then.",
        ),
        _alert(
            "ScrapeCoverageEndpointsCapacityForecast",
            f"{ENDPOINTS_ADDRESSES} <= {th.near_capacity_addresses}\n"
            "and on (namespace, service)\n"
            f"predict_linear({ENDPOINTS_ADDRESSES}[{t.forecast_window}], "
            f"{horizon} * 86400) >= {ENDPOINTS_CAPACITY}\n"
            f"and on (namespace, service) ({ENDPOINTS_TRUNCATED} == 0)\n"
            f"and on (namespace, service) {endpoints_role}",
            t.forecast_for,
            "warning",
            "Endpoints discovered with role endpoints will reach 1000 addresses within "
            f"{horizon} days.",
            f"The Endpoints object of Service {svc} holds {{{{ $value }}}} addresses and, "
            f"at the growth of the last {t.forecast_window}, reaches {ENDPOINTS_CAPACITY} "
            f"within {horizon} days, when a Prometheus using role endpoints starts "
            "losing targets. Migrate to EndpointSlice discovery first.",
        ),
    ]


def migration_alerts(t: Timing) -> list[dict]:
    """From the migration readiness of Prometheus Operator CRs
    (coverage_exporter/model/readiness.py)."""
    cr = "{{ $labels.kind }} {{ $labels.namespace }}/{{ $labels.name }}"
    info = "scrape_coverage_operator_migration_info"
    return [
        _alert(
            "ScrapeCoverageMigrationUnsafeToSwitch",
            f"max by (namespace, name, kind) ({info}{{service_discovery_role=\"Endpoints\","
            'next_step=~"dual-write|grant-endpointslice-rbac"})\n'
            "and on (namespace, name, kind)\n"
            "(max by (namespace, name, kind)"
            " (scrape_coverage_operator_services_over_capacity) > 0)",
            t.truncated_for,
            "warning",
            "Switching this Prometheus to EndpointSlice discovery now would lose targets.",
            f"{cr} discovers with role Endpoints and scrapes Services at or near 1000 addresses, "
            "so it needs role EndpointSlice; but switching now would lose targets: "
            + _with_query(
                info + "{namespace=%q,name=%q,kind=%q}",
                "$labels.namespace $labels.name $labels.kind",
                "the next safe step is {{ . | first | label \"next_step\" }}",
            )
            + " (the Operator's own kubelet slices, or EndpointSlice RBAC, come first).",
        ),
        _alert(
            "ScrapeCoverageMigrationSwitchedUnsafely",
            f'max by (namespace, name, kind) ({info}{{service_discovery_role="EndpointSlice"}})\n'
            "and on (namespace, name, kind)\n"
            "(max by (namespace, name, kind) (scrape_coverage_operator_migration_safe) == 0)",
            t.missing_critical_for,
            "critical",
            "A Prometheus switched to EndpointSlice discovery loses targets.",
            f"{cr} discovers with role EndpointSlice, but the kubelet Service has only the "
            "mirroring controller's slices (capped at 1000) or its ServiceAccount may not list "
            "EndpointSlices: its pools miss targets that role Endpoints found.",
        ),
    ]


def exporter_alerts(t: Timing, selector: str) -> list[dict]:
    source = (
        "{{ $labels.source }}{{ if $labels.server }} "
        "({{ $labels.server }}){{ end }}"
    )
    return [
        _alert(
            "ScrapeCoverageExporterDown",
            f"up{{{selector}}} == 0",
            t.exporter_down_for,
            "warning",
            "coverage-exporter cannot be scraped.",
            "Prometheus cannot scrape coverage-exporter {{ $labels.instance }} "
            "(job {{ $labels.job }}). Scrape coverage is not being checked: no other "
            "ScrapeCoverage alert can fire.",
        ),
        # Without this, losing the exporter would quietly silence every other alert.
        _alert(
            "ScrapeCoverageExporterAbsent",
            f"absent(scrape_coverage_build_info{{{selector}}})\n"
            f"unless on () (up{{{selector}}} == 0)",
            t.exporter_absent_for,
            "warning",
            "coverage-exporter metrics are absent.",
            f"No Prometheus target matching {{{selector}}} serves "
            "scrape_coverage_build_info. Scrape coverage is not being checked: no "
            "other ScrapeCoverage alert can fire.",
        ),
        _alert(
            "ScrapeCoverageSourceDown",
            "(time() - scrape_coverage_source_last_success_timestamp_seconds)\n"
            "and (scrape_coverage_source_up == 0)",
            t.source_down_for,
            "warning",
            "coverage-exporter cannot collect from one of its sources.",
            f"coverage-exporter {{{{ $labels.instance }}}} fails to collect from {source}; "
            "its last success was {{ $value | humanizeDuration }} ago. Coverage is "
            "computed from that source's last good data for up to --prometheus-stale-after, "
            "then reported as unknown.",
        ),
        # Nothing judged is not green: with no server no other alert can fire.
        _alert(
            "ScrapeCoverageNoPrometheus",
            "scrape_coverage_servers == 0",
            t.source_down_for,
            "warning",
            "coverage-exporter has no Prometheus server to judge.",
            "coverage-exporter {{ $labels.instance }} found no Prometheus server (no Prometheus "
            "Operator object with servers, no pod matching --prometheus-pod-selector) and was "
            "given none: scrape coverage is not being checked, and no ScrapeCoverageTargetsMissing "
            "alert can fire.",
        ),
        _alert(
            "ScrapeCoverageExporterStale",
            "time() - scrape_coverage_last_cycle_timestamp_seconds"
            f" > {t.stale_after_seconds}",
            t.stale_for,
            "warning",
            "coverage-exporter has not completed a collection cycle recently.",
            "coverage-exporter {{ $labels.instance }} completed its last collection "
            "cycle {{ $value | humanizeDuration }} ago: every coverage figure it "
            "serves is that old.",
        ),
    ]


def _record(name: str, expr: str) -> dict:
    return {"record": name, "expr": expr}


def _alert(
    name: str, expr: str, for_: str, severity: str, summary: str, description: str
) -> dict:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{RUNBOOK_BASE_URL}{name}.md",
        },
    }


def _with_query(promql_format: str, args: str, text: str) -> str:
    """Alert template text shown only when a query at alert time returns a value.

    `promql_format` is a Go printf format (label values filled in with %q);
    `VALUE` in `text` stands for the first value returned.
    """
    shown = text.replace("VALUE", "{{ . | first | value }}")
    return f'{{{{ with printf "{promql_format}" {args} | query }}}}{shown}{{{{ end }}}}'
