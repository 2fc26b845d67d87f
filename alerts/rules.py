"""The single source of the recording and alerting rules.

`generate.py` renders these into the plain rule file and the PrometheusRule
manifest; `tools/chart.py` into the Helm chart's rule template and
`tools/mixin.py` into the jsonnet mixin; tests render them again with the
fast timing. Every figure a team may want to tune is a field of `Tuning`,
and the chart value and mixin `_config` key that set it are written next
to it, so the three outputs cannot name them differently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from coverage_exporter.runbooks import DEFAULT_BASE_URL as RUNBOOK_BASE_URL

DEFAULT_EXPORTER_SELECTOR = 'job=~".*coverage-exporter.*"'

# The endpoints controller's maxCapacity, the mirroring controller's cap per subset.
ENDPOINTS_CAPACITY = 1000


def _tunable(default: Any, chart: str, mixin: str, doc: str) -> Any:
    """A Tuning field: its default, the chart value that sets it (a path
    under .Values) and the mixin's _config key."""
    return field(default=default, metadata={"chart": chart, "mixin": mixin, "doc": doc})


@dataclass(frozen=True)
class Tuning:
    """What a team tunes without forking: the label that tells clusters
    apart, the exporter's scrape job, where runbooks live, thresholds and
    `for:` durations. The fast copy (FAST) serves end-to-end tests."""

    cluster_label: str = _tunable(
        "cluster",
        "clusterLabel",
        "clusterLabel",
        "label that tells clusters apart where one Thanos or Mimir holds several; kept in "
        "every by() and on() of the rules and in the dashboard's cluster variable",
    )
    exporter_selector: str = _tunable(
        DEFAULT_EXPORTER_SELECTOR,
        "prometheusRule.exporterSelector",
        "exporterSelector",
        "label matchers that select the exporter's own scrape job",
    )
    runbook_base_url: str = _tunable(
        RUNBOOK_BASE_URL, "runbookBaseUrl", "runbookBaseUrl", "base of every runbook_url"
    )
    critical_missing_share: float = _tunable(
        0.1,
        "prometheusRule.thresholds.criticalMissingShare",
        "criticalMissingShare",
        "share of a Service's expected targets a replica's pool may miss before "
        "ScrapeCoverageTargetsMissing turns critical",
    )
    near_capacity_addresses: int = _tunable(
        900,
        "prometheusRule.thresholds.nearCapacityAddresses",
        "nearCapacityAddresses",
        "addresses in an Endpoints object read with role endpoints that fire "
        "ScrapeCoverageEndpointsNearCapacity",
    )
    forecast_horizon_days: int = _tunable(
        4,
        "prometheusRule.thresholds.forecastHorizonDays",
        "forecastHorizonDays",
        "ScrapeCoverageEndpointsCapacityForecast: days ahead",
    )
    forecast_window: str = _tunable(
        "6h",
        "prometheusRule.thresholds.forecastWindow",
        "forecastWindow",
        "ScrapeCoverageEndpointsCapacityForecast: the growth window predict_linear reads",
    )
    stale_after_seconds: int = _tunable(
        900,
        "prometheusRule.thresholds.staleAfterSeconds",
        "staleAfterSeconds",
        "ScrapeCoverageExporterStale: age of the last completed cycle",
    )
    truncated_for: str = _tunable(
        "15m",
        "prometheusRule.for.endpointsTruncated",
        "endpointsTruncatedFor",
        "ScrapeCoverageEndpointsTruncated, ScrapeCoverageMigrationUnsafeToSwitch",
    )
    # Node churn makes single targets go missing for a refresh or two; only a
    # gap that outlives that is worth a ticket.
    missing_warning_for: str = _tunable(
        "30m",
        "prometheusRule.for.targetsMissingWarning",
        "targetsMissingWarningFor",
        "ScrapeCoverageTargetsMissing (warning)",
    )
    missing_critical_for: str = _tunable(
        "15m",
        "prometheusRule.for.targetsMissingCritical",
        "targetsMissingCriticalFor",
        "ScrapeCoverageTargetsMissing (critical), ScrapeCoverageMigrationSwitchedUnsafely",
    )
    mirroring_for: str = _tunable(
        "15m",
        "prometheusRule.for.mirroringCapped",
        "mirroringCappedFor",
        "ScrapeCoverageEndpointSliceMirroringCapped",
    )
    # A taint is set and lifted by hand or by a node pool's rollout: long
    # enough that a pool being drained or replaced does not warn.
    unreached_for: str = _tunable(
        "30m",
        "prometheusRule.for.daemonSetUnreachedNodes",
        "daemonSetUnreachedNodesFor",
        "ScrapeCoverageDaemonSetUnreachedNodes",
    )
    near_capacity_for: str = _tunable(
        "1h",
        "prometheusRule.for.nearCapacity",
        "nearCapacityFor",
        "ScrapeCoverageEndpointsNearCapacity",
    )
    forecast_for: str = _tunable(
        "1h",
        "prometheusRule.for.capacityForecast",
        "capacityForecastFor",
        "ScrapeCoverageEndpointsCapacityForecast",
    )
    exporter_down_for: str = _tunable(
        "15m",
        "prometheusRule.for.exporterDown",
        "exporterDownFor",
        "ScrapeCoverageExporterDown",
    )
    exporter_absent_for: str = _tunable(
        "15m",
        "prometheusRule.for.exporterAbsent",
        "exporterAbsentFor",
        "ScrapeCoverageExporterAbsent",
    )
    source_down_for: str = _tunable(
        "15m",
        "prometheusRule.for.sourceDown",
        "sourceDownFor",
        "ScrapeCoverageSourceDown, ScrapeCoverageUnknown",
    )
    # Long enough for the first cycle of a restarted exporter on a large cluster.
    stale_for: str = _tunable(
        "10m", "prometheusRule.for.exporterStale", "exporterStaleFor", "ScrapeCoverageExporterStale"
    )
    show_multi_cluster: bool = _tunable(
        False,
        "dashboard.multiCluster",
        "showMultiCluster",
        "show the dashboard's cluster variable (hidden for one cluster, as in the mixins)",
    )

    def values(self) -> dict[str, Any]:
        """Field name -> value."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


NORMAL = Tuning()
FAST = replace(
    NORMAL,
    truncated_for="15s",
    missing_warning_for="30s",
    missing_critical_for="15s",
    mirroring_for="15s",
    unreached_for="15s",
    near_capacity_for="30s",
    forecast_for="30s",
    forecast_window="5m",
    exporter_down_for="15s",
    exporter_absent_for="15s",
    source_down_for="15s",
    stale_for="10s",
    stale_after_seconds=120,
)

# A placeholder stands for a field's value in text (an expression, an
# annotation); `fill` puts values in, the chart and the mixin their own
# references to the value (Helm's `.Values...`, jsonnet's `$._config...`).
PLACEHOLDER = re.compile(r"@@([a-z_]+)@@")


def placeholder(name: str) -> str:
    return f"@@{name}@@"


PLACEHOLDERS = Tuning(**{f.name: placeholder(f.name) for f in fields(Tuning)})


def fill(doc: Any, tuning: Tuning) -> Any:
    """`doc` (rules or a dashboard rendered with PLACEHOLDERS) with the
    values of `tuning` in place of every placeholder."""
    return substitute(doc, lambda name: _text(getattr(tuning, name)), whole=_whole(tuning))


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _whole(tuning: Tuning):
    def typed(name: str) -> Any:
        if name == "cluster_variable_hide":
            return 0 if tuning.show_multi_cluster else 2
        return getattr(tuning, name)

    return typed


def substitute(doc: Any, text, whole=None) -> Any:
    """Walks `doc`: a string that is one placeholder becomes `whole(name)`
    (keeping the value's type); placeholders inside text become `text(name)`."""
    if isinstance(doc, dict):
        return {k: substitute(v, text, whole) for k, v in doc.items()}
    if isinstance(doc, list):
        return [substitute(v, text, whole) for v in doc]
    if isinstance(doc, str):
        m = PLACEHOLDER.fullmatch(doc)
        if m and whole is not None:
            return whole(m.group(1))
        return PLACEHOLDER.sub(lambda m: text(m.group(1)), doc)
    return doc


def placeholders_in(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


# Recorded series. Every aggregation lists the labels it keeps, which drops
# the exporter's own target labels (job, instance, pod), and takes `max`
# first, so two exporter replicas never double a count. The cluster label
# is kept too (absent on a single cluster's Prometheus, set as an external
# label in Thanos or Mimir), so that rules evaluated centrally never merge
# two clusters' Services; the names stay those of one cluster, as the
# kubernetes-mixin's do.
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
MISSING_BY_REASON = (
    "namespace_service_stage_scrape_pool_replica_reason:scrape_coverage_missing_target:count"
)
"""Named missing targets per cause (the `reason` label, a closed set):
bounded by the stages times the causes, not by the nodes."""


def labels(t: Tuning, *names: str) -> str:
    """A by()/on() list: the cluster label, then `names`."""
    return ", ".join((t.cluster_label, *names))


def recording_rules(t: Tuning = PLACEHOLDERS) -> list[dict]:
    svc = labels(t, "namespace", "service")
    gap = labels(t, "namespace", "service", "stage", "scrape_pool", "role", "scraper")
    gap += ", scraper_replica"
    unknown = labels(t, "namespace", "service", "scrape_pool", "role", "scraper", "scraper_replica")
    pool = labels(t, "namespace", "service", "server", "scrape_pool", "role")
    stage_pool = labels(
        t, "namespace", "service", "stage", "scrape_pool", "scraper", "scraper_replica"
    )
    return [
        _record(EXPECTED, f"max by ({svc}) (scrape_coverage_expected_targets)"),
        _record(
            STAGE_MISSING,
            f"max by ({svc}, stage) (scrape_coverage_missing_targets)",
        ),
        # The one definition of a gap (coverage_exporter/model/gaps.py).
        _record(GAP, f"max by ({gap}) (scrape_coverage_gap_targets)"),
        # clamp_min keeps a Service with no expected targets at 0, not NaN.
        _record(
            GAP_RATIO,
            f"{GAP}\n/ on ({svc}) group_left ()\nclamp_min({EXPECTED}, 1)",
        ),
        _record(POOL_UNKNOWN, f"max by ({unknown}) (scrape_coverage_prometheus_unknown_targets)"),
        _record(
            POOL_TARGETS,
            f"sum by ({pool}) (\n"
            f"  max by ({pool}, health) (scrape_coverage_prometheus_targets)\n)",
        ),
        _record(
            ENDPOINTS_ADDRESSES,
            f"sum by ({svc}) (\n"
            f"  max by ({svc}, ready) (scrape_coverage_endpoints_addresses)\n)",
        ),
        _record(
            ENDPOINTS_TRUNCATED,
            f"max by ({svc}) (scrape_coverage_endpoints_truncated)",
        ),
        # max over the exporter replicas first, so two never double a count.
        _record(
            MISSING_BY_REASON,
            f"count by ({stage_pool}, reason) (\n"
            f"  max by ({stage_pool}, node, pod, reason) (scrape_coverage_missing_target)\n)",
        ),
        _record(
            SLICE_ENDPOINTS,
            f"sum by ({svc}) (\n"
            f"  max by ({svc}, managed_by, ready)"
            " (scrape_coverage_endpointslice_endpoints)\n)",
        ),
    ]


def coverage_alerts(t: Tuning = PLACEHOLDERS) -> list[dict]:
    c = t.cluster_label
    on_svc = f"on ({labels(t, 'namespace', 'service')})"
    endpoints_role = f'({POOL_TARGETS}{{role="endpoints"}} > 0)'
    svc = "{{ $labels.namespace }}/{{ $labels.service }}"
    pool = (
        "scrape pool {{ $labels.scrape_pool }} (role {{ $labels.role }}) of "
        "{{ $labels.scraper }} replica {{ $labels.scraper_replica }}"
    )
    gap_args = (
        f"$labels.{c} $labels.namespace $labels.service $labels.stage $labels.scrape_pool "
        "$labels.role $labels.scraper $labels.scraper_replica"
    )
    svc_args = f"$labels.{c} $labels.namespace $labels.service"
    gap_fmt = (
        GAP + f"{{{c}=%q,namespace=%q,service=%q,stage=%q,scrape_pool=%q,role=%q,scraper=%q,"
        "scraper_replica=%q}"
    )
    svc_fmt = EXPECTED + f"{{{c}=%q,namespace=%q,service=%q}}"
    # The cause most of the pool's named missing targets share (at most one
    # series: topk over a closed set of reasons).
    reason_args = (
        f"$labels.{c} $labels.namespace $labels.service $labels.stage $labels.scrape_pool "
        "$labels.scraper $labels.scraper_replica"
    )
    reason_fmt = (
        f"topk(1, {MISSING_BY_REASON}{{{c}=%q,namespace=%q,service=%q,stage=%q,"
        "scrape_pool=%q,scraper=%q,scraper_replica=%q})"
    )
    top_reason = (
        f'{{{{ with printf "{reason_fmt}" {reason_args} | query }}}}'
        '; most named ones are missing for reason {{ . | first | label "reason" }} '
        "({{ . | first | value }}, docs/runbooks/causes.md){{ end }}"
    )
    horizon = t.forecast_horizon_days
    return [
        _alert(
            t,
            "ScrapeCoverageEndpointsTruncated",
            f'({GAP}{{stage="endpoints"}} > 0)\n'
            f"and {on_svc} ({ENDPOINTS_TRUNCATED} == 1)",
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
            t,
            "ScrapeCoverageTargetsMissing",
            f'{GAP}{{stage="prometheus"}} > 0',
            t.missing_warning_for,
            "warning",
            "A Prometheus replica does not discover every expected target of a Service.",
            "{{ $value }} expected targets"
            + _with_query(svc_fmt, svc_args, " (of VALUE)")
            + f" of Service {svc} are not discovered by {pool}, so that replica does not "
            "scrape them and its alerts cannot see them"
            + top_reason
            + ".",
        ),
        _alert(
            t,
            "ScrapeCoverageTargetsMissing",
            f'{GAP_RATIO}{{stage="prometheus"}} > {t.critical_missing_share}',
            t.missing_critical_for,
            "critical",
            "A Prometheus replica misses a large share of a Service's expected targets.",
            "{{ $value | humanizePercentage }} of the expected targets of Service "
            + svc
            + _with_query(gap_fmt, gap_args, " (VALUE")
            + _with_query(svc_fmt, svc_args, " of VALUE)")
            + f" are not discovered by {pool}, so that replica does not scrape them"
            + top_reason
            + ".",
        ),
        _alert(
            t,
            "ScrapeCoverageEndpointSliceMirroringCapped",
            f'({GAP}{{stage="endpointslices"}} > 0)\n'
            f"and {on_svc}\n"
            f"(max by ({labels(t, 'namespace', 'service')})"
            " (scrape_coverage_endpointslice_mirroring_skipped) > 0)",
            t.mirroring_for,
            "warning",
            "EndpointSlice mirroring left out addresses that a Prometheus reads.",
            f"{{{{ $value }}}} expected targets of the selector-less Service {svc} are in no "
            "EndpointSlice: the mirroring controller copies at most "
            f"{ENDPOINTS_CAPACITY} addresses per subset, and a scrape pool reads the slices "
            "with role endpointslice, so it misses them.",
        ),
        # A warning, never a page: those Nodes are a finding, not a gap
        # (model/unreached.py says why); route or silence it per DaemonSet
        # and taint_key.
        _alert(
            t,
            "ScrapeCoverageDaemonSetUnreachedNodes",
            f"max by ({labels(t, 'namespace', 'daemonset', 'taint_key', 'taint_effect')})"
            " (scrape_coverage_daemonset_unreached_nodes) > 0",
            t.unreached_for,
            "warning",
            "A DaemonSet meant for every node is kept off some nodes by a taint.",
            "{{ $value }} nodes have no pod of DaemonSet {{ $labels.namespace }}/"
            "{{ $labels.daemonset }}: it selects no nodes, yet does not tolerate their "
            "taint {{ $labels.taint_key }}:{{ $labels.taint_effect }}, so nothing there is "
            "scraped and no ScrapeCoverageTargetsMissing alert can fire for them.",
        ),
        _alert(
            t,
            "ScrapeCoverageUnknown",
            f"max by ({labels(t, 'scraper', 'scraper_replica')})"
            " (scrape_coverage_replica_coverage_known) == 0",
            t.source_down_for,
            "warning",
            "The scrape coverage of a Prometheus replica cannot be told.",
            "A shard of {{ $labels.scraper }} replica {{ $labels.scraper_replica }} has not "
            "answered coverage-exporter recently: what that replica scrapes is unknown, and "
            "no ScrapeCoverageTargetsMissing alert can fire for it.",
        ),
        _alert(
            t,
            "ScrapeCoverageEndpointsNearCapacity",
            f"{ENDPOINTS_ADDRESSES} > {t.near_capacity_addresses}\n"
            f"and {on_svc} ({ENDPOINTS_TRUNCATED} == 0)\n"
            f"and {on_svc} {endpoints_role}",
            t.near_capacity_for,
            "warning",
            "Endpoints discovered with role endpoints is close to the 1000-address limit.",
            f"The Endpoints object of Service {svc} holds {{{{ $value }}}} addresses; at "
            f"{ENDPOINTS_CAPACITY} the endpoints controller truncates it and a Prometheus "
            "using role endpoints silently loses targets. Migrate to EndpointSlice "
            "discovery before then.",
        ),
        _alert(
            t,
            "ScrapeCoverageEndpointsCapacityForecast",
            f"{ENDPOINTS_ADDRESSES} <= {t.near_capacity_addresses}\n"
            f"and {on_svc}\n"
            f"predict_linear({ENDPOINTS_ADDRESSES}[{t.forecast_window}], "
            f"{horizon} * 86400) >= {ENDPOINTS_CAPACITY}\n"
            f"and {on_svc} ({ENDPOINTS_TRUNCATED} == 0)\n"
            f"and {on_svc} {endpoints_role}",
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


def migration_alerts(t: Tuning = PLACEHOLDERS) -> list[dict]:
    """From the migration readiness of Prometheus Operator CRs
    (coverage_exporter/model/readiness.py)."""
    c = t.cluster_label
    cr_labels = labels(t, "namespace", "name", "kind")
    cr = "{{ $labels.kind }} {{ $labels.namespace }}/{{ $labels.name }}"
    info = "scrape_coverage_operator_migration_info"
    return [
        _alert(
            t,
            "ScrapeCoverageMigrationUnsafeToSwitch",
            f"max by ({cr_labels}) ({info}{{service_discovery_role=\"Endpoints\","
            'next_step=~"dual-write|grant-endpointslice-rbac"})\n'
            f"and on ({cr_labels})\n"
            f"(max by ({cr_labels})"
            " (scrape_coverage_operator_services_over_capacity) > 0)",
            t.truncated_for,
            "warning",
            "Switching this Prometheus to EndpointSlice discovery now would lose targets.",
            f"{cr} discovers with role Endpoints and scrapes Services at or near 1000 addresses, "
            "so it needs role EndpointSlice; but switching now would lose targets: "
            + _with_query(
                info + f"{{{c}=%q,namespace=%q,name=%q,kind=%q}}",
                f"$labels.{c} $labels.namespace $labels.name $labels.kind",
                "the next safe step is {{ . | first | label \"next_step\" }}",
            )
            + " (the Operator's own kubelet slices, or EndpointSlice RBAC, come first).",
        ),
        _alert(
            t,
            "ScrapeCoverageMigrationSwitchedUnsafely",
            f"max by ({cr_labels}) ({info}{{service_discovery_role=\"EndpointSlice\"}})\n"
            f"and on ({cr_labels})\n"
            f"(max by ({cr_labels}) (scrape_coverage_operator_migration_safe) == 0)",
            t.missing_critical_for,
            "critical",
            "A Prometheus switched to EndpointSlice discovery loses targets.",
            f"{cr} discovers with role EndpointSlice, but the kubelet Service has only the "
            "mirroring controller's slices (capped at 1000) or its ServiceAccount may not list "
            "EndpointSlices: its pools miss targets that role Endpoints found.",
        ),
    ]


def exporter_alerts(t: Tuning = PLACEHOLDERS) -> list[dict]:
    selector = t.exporter_selector
    source = (
        "{{ $labels.source }}{{ if $labels.server }} "
        "({{ $labels.server }}){{ end }}"
    )
    return [
        _alert(
            t,
            "ScrapeCoverageExporterDown",
            f"up{{{selector}}} == 0",
            t.exporter_down_for,
            "warning",
            "Prometheus cannot scrape coverage-exporter.",
            "Prometheus cannot scrape coverage-exporter {{ $labels.instance }} "
            "(job {{ $labels.job }}). Scrape coverage is not being checked: no other "
            "ScrapeCoverage alert can fire.",
        ),
        # Without this, losing the exporter would quietly silence every other
        # alert. absent() sees every cluster at once: evaluated centrally, it
        # fires only when no cluster's exporter answers, so each cluster's
        # Prometheus should load it (the chart's PrometheusRule does).
        _alert(
            t,
            "ScrapeCoverageExporterAbsent",
            f"absent(scrape_coverage_build_info{{{selector}}})\n"
            f"unless on () (up{{{selector}}} == 0)",
            t.exporter_absent_for,
            "warning",
            "The metrics of coverage-exporter are absent.",
            f"No Prometheus target matching {{{selector}}} serves "
            "scrape_coverage_build_info: "
            # A raw (backquoted) Go string: the selector holds double quotes.
            f"{{{{ with query `count(up{{{selector}}} == 1)` }}}}"
            "{{ . | first | value }} targets match and are up, but serve other metrics "
            "(does the selector name the right job?)"
            "{{ else }}no target matches{{ end }}. Scrape coverage is not being checked: no "
            "other ScrapeCoverage alert can fire.",
        ),
        _alert(
            t,
            "ScrapeCoverageSourceDown",
            "(time() - scrape_coverage_source_last_success_timestamp_seconds)\n"
            "and (scrape_coverage_source_up == 0)",
            t.source_down_for,
            "warning",
            "A source of coverage-exporter cannot be read.",
            f"coverage-exporter {{{{ $labels.instance }}}} fails to collect from {source}; "
            "its last success was {{ $value | humanizeDuration }} ago. Coverage is "
            "computed from that source's last good data for up to --prometheus-stale-after, "
            "then reported as unknown.",
        ),
        # Nothing judged is not green: with no server no other alert can fire.
        _alert(
            t,
            "ScrapeCoverageNoPrometheus",
            "scrape_coverage_servers == 0",
            t.source_down_for,
            "warning",
            "No Prometheus server is found or given to coverage-exporter.",
            "coverage-exporter {{ $labels.instance }} found no Prometheus server (no Prometheus "
            "Operator object with servers, no pod matching --prometheus-pod-selector) and was "
            "given none: scrape coverage is not being checked, and no ScrapeCoverageTargetsMissing "
            "alert can fire.",
        ),
        _alert(
            t,
            "ScrapeCoverageExporterStale",
            "time() - scrape_coverage_last_cycle_timestamp_seconds"
            f" > {t.stale_after_seconds}",
            t.stale_for,
            "warning",
            "No collection cycle of coverage-exporter completed recently.",
            "coverage-exporter {{ $labels.instance }} completed its last collection "
            "cycle {{ $value | humanizeDuration }} ago: every coverage figure it "
            "serves is that old.",
        ),
    ]


def _record(name: str, expr: str) -> dict:
    return {"record": name, "expr": expr}


def _alert(
    t: Tuning, name: str, expr: str, for_: Any, severity: str, summary: str, description: str
) -> dict:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{t.runbook_base_url}{name}.md",
        },
    }


def _with_query(promql_format: str, args: str, text: str) -> str:
    """Alert template text shown only when a query at alert time returns a value.

    `promql_format` is a Go printf format (label values filled in with %q);
    `VALUE` in `text` stands for the first value returned.
    """
    shown = text.replace("VALUE", "{{ . | first | value }}")
    return f'{{{{ with printf "{promql_format}" {args} | query }}}}{shown}{{{{ end }}}}'
